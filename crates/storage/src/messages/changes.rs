//! CONDSTORE/QRESYNC (RFC 7162 §3.1.4, §3.2.5): what changed after a MODSEQ.

use mailfleet_proto::storage::v1 as pb;
use sqlx::Row;

use super::{mailbox_by_id, u32_of, u64_of};
use crate::Store;
use crate::error::StorageResult;

impl Store {
    pub(crate) async fn changes(&self, req: &pb::ChangesRequest) -> StorageResult<pb::ChangesResponse> {
        let since = i64::try_from(req.since_modseq).unwrap_or(i64::MAX);
        // The common case after an IMAP command: nothing changed. One
        // indexed row answers it, without a transaction.
        let mut conn = self.pool.acquire().await?;
        let current = mailbox_by_id(&mut conn, req.account_id, req.mailbox_id, false).await?;
        drop(conn);
        if current.highest_modseq <= since {
            return Ok(pb::ChangesResponse {
                changed: Vec::new(),
                vanished: Vec::new(),
                highest_modseq: u64_of(current.highest_modseq),
            });
        }
        // One snapshot: the changes and the HIGHESTMODSEQ agree.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY").execute(&mut *tx).await?;
        let mailbox = mailbox_by_id(&mut tx, req.account_id, req.mailbox_id, false).await?;
        let changed =
            sqlx::query("SELECT uid, flags, modseq FROM messages WHERE mailbox_id = $1 AND modseq > $2 ORDER BY uid")
                .bind(mailbox.id)
                .bind(since)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| pb::MessageFlags {
                    uid: u32_of(r.get("uid")),
                    flags: r.get("flags"),
                    modseq: u64_of(r.get("modseq")),
                })
                .collect();
        let vanished: Vec<i64> = if req.include_vanished {
            sqlx::query_scalar("SELECT uid FROM expunged WHERE mailbox_id = $1 AND modseq > $2 ORDER BY uid")
                .bind(mailbox.id)
                .bind(since)
                .fetch_all(&mut *tx)
                .await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        Ok(pb::ChangesResponse {
            changed,
            vanished: vanished.into_iter().map(u32_of).collect(),
            highest_modseq: u64_of(mailbox.highest_modseq),
        })
    }
}
