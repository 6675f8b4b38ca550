//! Listing a mailbox: message metadata by UID set (streamed in keyset-paged
//! batches, so large mailboxes never sit in memory at once) and the cheap
//! list of every UID (the gateway's sequence-number map, RFC 3501 §2.3.1.2).

use std::sync::Arc;

use mailfleet_proto::storage::v1 as pb;
use prost::Message;
use sqlx::Row;
use sqlx::postgres::PgRow;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    BoxStream, UID_STAR, UidSet, mailbox_by_id, shift_body_structure, to_timestamp, u32_of, u64_of, uid_set_condition,
};
use crate::Store;
use crate::error::{StorageError, StorageResult};

const BATCH: i64 = 500;

fn meta_from_row(row: &PgRow, with_envelope: bool, with_body: bool) -> StorageResult<pb::MessageMeta> {
    let prefix_len = u64_of(row.get("prefix_len"));
    let envelope = if with_envelope {
        let bytes: Option<Vec<u8>> = row.get("envelope");
        match bytes {
            Some(b) => Some(
                pb::Envelope::decode(b.as_slice())
                    .map_err(|e| StorageError::Internal(format!("stored envelope is corrupt: {e}")))?,
            ),
            None => Some(pb::Envelope::default()),
        }
    } else {
        None
    };
    let body_structure = if with_body {
        let bytes: Option<Vec<u8>> = row.get("body_structure");
        let mut part = match bytes {
            Some(b) => pb::BodyPart::decode(b.as_slice())
                .map_err(|e| StorageError::Internal(format!("stored body structure is corrupt: {e}")))?,
            None => pb::BodyPart::default(),
        };
        shift_body_structure(&mut part, prefix_len);
        Some(part)
    } else {
        None
    };
    let header_size: Option<i64> = row.get("header_size");
    Ok(pb::MessageMeta {
        uid: u32_of(row.get("uid")),
        modseq: u64_of(row.get("modseq")),
        flags: row.get("flags"),
        internal_date: Some(to_timestamp(row.get("internal_date"))),
        size: u64_of(row.get("size")),
        envelope,
        body_structure,
        header_size: header_size.map(u64_of).unwrap_or(0) + prefix_len,
    })
}

/// The keyset-paged statement of one ListMessages call.
struct MetaPages {
    sql: String,
    set: UidSet,
    account_id: i64,
    mailbox_id: i64,
    changed_since: i64,
}

impl MetaPages {
    /// The next page: up to BATCH messages with a UID above `after`.
    async fn after(&self, pool: &sqlx::PgPool, after: i64) -> Result<Vec<PgRow>, sqlx::Error> {
        self.set
            .bind(sqlx::query(sqlx::AssertSqlSafe(self.sql.as_str())).bind(self.mailbox_id))
            .bind(after)
            .bind(self.changed_since)
            .bind(self.account_id)
            .fetch_all(pool)
            .await
    }
}

impl Store {
    pub(crate) async fn list_messages(
        self: Arc<Self>,
        req: pb::ListMessagesRequest,
    ) -> StorageResult<BoxStream<pb::MessageMeta>> {
        let mut set = if req.uids.is_empty() {
            // No UID set: the whole mailbox.
            UidSet { starts: vec![1], ends: vec![i64::from(UID_STAR)] }
        } else {
            UidSet::parse(&req.uids)?
        };
        if set.ends.contains(&i64::from(UID_STAR)) {
            // `n:*` needs the largest UID first (rare: gateways send UIDs).
            let mut conn = self.pool.acquire().await?;
            let mailbox = mailbox_by_id(&mut conn, req.account_id, req.mailbox_id, false).await?;
            set.resolve_star(&mut conn, mailbox.id).await?;
        }
        let changed_since = i64::try_from(req.changed_since).unwrap_or(i64::MAX);
        let (with_env, with_body) = (req.with_envelope, req.with_body_structure);
        // The account's ownership of the mailbox is checked by the same
        // statement (the join), so a page costs one round trip.
        let sql = format!(
            "SELECT m.uid, m.modseq, m.flags, m.internal_date, m.size, length(m.header_prefix)::bigint AS prefix_len,
                    b.header_size, {}, {}
             FROM messages m JOIN blobs b ON b.id = m.blob_id JOIN mailboxes x ON x.id = m.mailbox_id
             WHERE m.mailbox_id = $1 AND x.account_id = $8 AND m.uid > $6 AND m.modseq > $7 AND {}
             ORDER BY m.uid LIMIT {BATCH}",
            if with_env { "b.envelope" } else { "NULL::bytea AS envelope" },
            if with_body { "b.body_structure" } else { "NULL::bytea AS body_structure" },
            uid_set_condition(2, 3, 4, 5),
        );
        let pages = MetaPages { sql, set, account_id: req.account_id, mailbox_id: req.mailbox_id, changed_since };
        // The first page before answering, so that someone else's (or no)
        // mailbox is an error status rather than a broken stream.
        let first = pages.after(&self.pool, 0).await?;
        if first.is_empty() {
            mailbox_by_id(&mut *self.pool.acquire().await?, req.account_id, req.mailbox_id, false).await?;
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut rows = first;
            loop {
                let done = (rows.len() as i64) < BATCH;
                let mut after = 0;
                for row in &rows {
                    after = row.get("uid");
                    let item = meta_from_row(row, with_env, with_body).map_err(Into::into);
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
                if done {
                    return;
                }
                rows = match pages.after(&self.pool, after).await {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(StorageError::from(e).into())).await;
                        return;
                    }
                };
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    pub(crate) async fn list_uids(&self, req: &pb::ListUidsRequest) -> StorageResult<pb::ListUidsResponse> {
        // One snapshot, so the UIDs and the counters agree.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let mailbox = mailbox_by_id(&mut tx, req.account_id, req.mailbox_id, false).await?;
        let uids: Vec<i64> = sqlx::query_scalar("SELECT uid FROM messages WHERE mailbox_id = $1 ORDER BY uid")
            .bind(mailbox.id)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(pb::ListUidsResponse {
            uids: uids.into_iter().map(u32_of).collect(),
            highest_modseq: u64_of(mailbox.highest_modseq),
            uid_next: u32_of(mailbox.uid_next),
            uid_validity: u32_of(mailbox.uid_validity),
        })
    }
}
