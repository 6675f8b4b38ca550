//! SORT and THREAD (RFC 5256 §3, RFC 5957): the SEARCH criteria select the
//! messages (`search::matching`), Postgres orders them by the sort fields
//! stored per blob (`sortkeys`), and the threading algorithms run here, in
//! storage, over those fields (`threading`). No message is read from the
//! blob store.

use mailfleet_proto::storage::v1 as pb;
use pb::sort_criterion::Key as SortKey;
use pb::thread_request::Algorithm;
use sqlx::{PgConnection, Row};

use super::append::pg_text;
use super::search::matching;
use super::{mailbox_by_id, u32_of, u64_of};
use crate::Store;
use crate::error::{StorageError, StorageResult};
use crate::sortkeys::{SORT_VERSION, SortFields};
use crate::threading::{self, ThreadMsg};

/// Sort keys in one SORT at most (RFC 5256 has nine; a repeat is useless).
const MAX_SORT_KEYS: usize = 16;

/// Blobs given their sort fields per statement when filling lazily.
const FILL_BATCH: i64 = 500;

/// The SQL expression one key orders by (RFC 5256 §3 SORT keys). Strings
/// are stored already mapped for i;ascii-casemap and compare as octets.
fn order_expr(key: SortKey) -> StorageResult<&'static str> {
    Ok(match key {
        SortKey::Arrival => "m.internal_date",
        // RFC 5256 §2.2: the internal date when the sent date is unknown.
        SortKey::Date => "coalesce(b.sent_at, m.internal_date)",
        SortKey::Size => "m.size",
        SortKey::Subject => "coalesce(b.base_subject, '') COLLATE \"C\"",
        SortKey::From => "coalesce(b.sort_from, '') COLLATE \"C\"",
        SortKey::To => "coalesce(b.sort_to, '') COLLATE \"C\"",
        SortKey::Cc => "coalesce(b.sort_cc, '') COLLATE \"C\"",
        SortKey::DisplayFrom => "coalesce(b.display_from, '') COLLATE \"C\"",
        SortKey::DisplayTo => "coalesce(b.display_to, '') COLLATE \"C\"",
        SortKey::Unspecified => return Err(StorageError::InvalidArgument("unspecified sort key".into())),
    })
}

fn thread_msg(row: &sqlx::postgres::PgRow) -> ThreadMsg {
    let sent: time::OffsetDateTime = row.get("sent");
    let refs: Option<String> = row.get("thread_refs");
    ThreadMsg {
        uid: u32_of(row.get("uid")),
        base_subject: row.get::<Option<String>, _>("base_subject").unwrap_or_default(),
        subject_is_reply: row.get::<Option<bool>, _>("subject_is_reply").unwrap_or(false),
        sent: i64::try_from(sent.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX),
        message_id: row.get("message_id"),
        references: refs
            .map(|r| r.split(' ').filter(|s| !s.is_empty()).map(String::from).collect())
            .unwrap_or_default(),
    }
}

impl Store {
    pub(crate) async fn sort(&self, req: &pb::SortRequest) -> StorageResult<pb::SortResponse> {
        if req.order.is_empty() || req.order.len() > MAX_SORT_KEYS {
            return Err(StorageError::InvalidArgument(format!("1 to {MAX_SORT_KEYS} sort keys")));
        }
        let mut order = Vec::with_capacity(req.order.len());
        for c in &req.order {
            let key = SortKey::try_from(c.key).map_err(|_| StorageError::InvalidArgument("unknown sort key".into()))?;
            order.push((order_expr(key)?, c.reverse));
        }
        let mut conn = self.pool.acquire().await?;
        let mailbox = mailbox_by_id(&mut conn, req.account_id, req.mailbox_id, false).await?;
        fill_sort_fields(&mut conn, mailbox.id).await?;
        let mut qb = matching(&mut conn, mailbox.id, "m.uid, m.modseq", req.criteria.as_ref()).await?;
        qb.push(" ORDER BY ");
        for (expr, reverse) in order {
            qb.push(expr);
            qb.push(if reverse { " DESC, " } else { " ASC, " });
        }
        // RFC 5256 §3: messages the keys do not tell apart are in mailbox
        // (sequence number) order, which is UID order, whatever REVERSE.
        qb.push("m.uid ASC");
        let rows = qb.build().fetch_all(&mut *conn).await?;
        let mut uids = Vec::with_capacity(rows.len());
        let mut highest = 0;
        for r in &rows {
            uids.push(u32_of(r.get("uid")));
            highest = highest.max(u64_of(r.get("modseq")));
        }
        Ok(pb::SortResponse { uids, highest_modseq: highest })
    }

    pub(crate) async fn thread(&self, req: &pb::ThreadRequest) -> StorageResult<pb::ThreadResponse> {
        let algorithm = match Algorithm::try_from(req.algorithm) {
            Ok(a @ (Algorithm::OrderedSubject | Algorithm::References)) => a,
            _ => return Err(StorageError::InvalidArgument("unknown threading algorithm".into())),
        };
        let mut conn = self.pool.acquire().await?;
        let mailbox = mailbox_by_id(&mut conn, req.account_id, req.mailbox_id, false).await?;
        fill_sort_fields(&mut conn, mailbox.id).await?;
        let columns = "m.uid, b.base_subject, b.subject_is_reply, coalesce(b.sent_at, m.internal_date) AS sent, \
                       b.message_id, b.thread_refs";
        let mut qb = matching(&mut conn, mailbox.id, columns, req.criteria.as_ref()).await?;
        qb.push(" ORDER BY m.uid");
        let rows = qb.build().fetch_all(&mut *conn).await?;
        let msgs: Vec<ThreadMsg> = rows.iter().map(thread_msg).collect();
        let algorithm = match algorithm {
            Algorithm::OrderedSubject => threading::Algorithm::OrderedSubject,
            _ => threading::Algorithm::References,
        };
        // CPU work over the whole result: off the async workers, on a
        // thread with room for deep threads (see `threading`).
        let nodes = tokio::task::spawn_blocking(move || threading::thread(algorithm, msgs))
            .await
            .map_err(|e| StorageError::Internal(format!("threading task: {e}")))?
            .map_err(|e| StorageError::Internal(format!("threading: {e}")))?;
        Ok(pb::ThreadResponse { nodes })
    }
}

/// Give the blobs of the mailbox that lack them (stored before migration
/// 0010, or by an older `SORT_VERSION`) their sort fields, computed from
/// the envelope and header text in their row. Idempotent: replicas doing
/// it at the same time write the same values.
async fn fill_sort_fields(conn: &mut PgConnection, mailbox_id: i64) -> StorageResult<()> {
    loop {
        let rows = sqlx::query(
            "SELECT b.id, b.envelope, b.header_text FROM blobs b
             WHERE b.id IN (SELECT blob_id FROM messages WHERE mailbox_id = $1)
               AND b.sort_version IS DISTINCT FROM $2 AND b.envelope IS NOT NULL
             LIMIT $3",
        )
        .bind(mailbox_id)
        .bind(SORT_VERSION)
        .bind(FILL_BATCH)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            return Ok(());
        }
        let mut batch = FieldBatch::default();
        for r in &rows {
            let envelope: Vec<u8> = r.get("envelope");
            let envelope = <pb::Envelope as prost::Message>::decode(envelope.as_slice()).unwrap_or_default();
            let header_text: Option<String> = r.get("header_text");
            batch.push(r.get("id"), SortFields::compute(&envelope, header_text.as_deref().unwrap_or("")));
        }
        batch.write(&mut *conn).await?;
        if (rows.len() as i64) < FILL_BATCH {
            return Ok(());
        }
    }
}

/// Sort fields of many blobs, column by column for one UPDATE … FROM unnest.
#[derive(Default)]
struct FieldBatch {
    id: Vec<String>,
    base_subject: Vec<String>,
    subject_is_reply: Vec<bool>,
    from: Vec<String>,
    to: Vec<String>,
    cc: Vec<String>,
    display_from: Vec<String>,
    display_to: Vec<String>,
    sent_at: Vec<Option<time::OffsetDateTime>>,
    message_id: Vec<Option<String>>,
    refs: Vec<String>,
}

impl FieldBatch {
    fn push(&mut self, id: String, f: SortFields) {
        self.id.push(id);
        self.base_subject.push(pg_text(f.base_subject));
        self.subject_is_reply.push(f.subject_is_reply);
        self.from.push(pg_text(f.from_mailbox));
        self.to.push(pg_text(f.to_mailbox));
        self.cc.push(pg_text(f.cc_mailbox));
        self.display_from.push(pg_text(f.display_from));
        self.display_to.push(pg_text(f.display_to));
        self.sent_at.push(f.sent_at);
        self.message_id.push(f.message_id.map(pg_text));
        self.refs.push(pg_text(f.references.join(" ")));
    }

    async fn write(self, conn: &mut PgConnection) -> StorageResult<()> {
        sqlx::query(
            "UPDATE blobs SET sort_version = $1, base_subject = u.base_subject, subject_is_reply = u.reply,
                sort_from = u.sort_from, sort_to = u.sort_to, sort_cc = u.sort_cc,
                display_from = u.display_from, display_to = u.display_to, sent_at = u.sent_at,
                message_id = u.message_id, thread_refs = u.refs
             FROM unnest($2::text[], $3::text[], $4::bool[], $5::text[], $6::text[], $7::text[], $8::text[],
                         $9::text[], $10::timestamptz[], $11::text[], $12::text[])
                  AS u(id, base_subject, reply, sort_from, sort_to, sort_cc, display_from, display_to, sent_at,
                       message_id, refs)
             WHERE blobs.id = u.id",
        )
        .bind(SORT_VERSION)
        .bind(self.id)
        .bind(self.base_subject)
        .bind(self.subject_is_reply)
        .bind(self.from)
        .bind(self.to)
        .bind(self.cc)
        .bind(self.display_from)
        .bind(self.display_to)
        .bind(self.sent_at)
        .bind(self.message_id)
        .bind(self.refs)
        .execute(conn)
        .await?;
        Ok(())
    }
}
