//! EXPUNGE (RFC 3501 §6.4.3), UID EXPUNGE (RFC 4315 §2.1) and the POP3
//! UPDATE state (RFC 1939 §6), which removes exactly the listed messages.

use mailfleet_proto::storage::v1 as pb;
use pb::mail_event::Kind;
use sqlx::{PgConnection, Row};

use super::{UidSet, add_usage, bump_modseq, lock_account, mailbox_by_id, u32_of, u64_of};
use crate::Store;
use crate::error::{StorageError, StorageResult};

/// Delete the given UIDs of a locked mailbox, record them in `expunged` with
/// one new MODSEQ (QRESYNC VANISHED, RFC 7162 §3.2.10) and lower the
/// account's usage (its row must be locked). Returns the new modseq, or None
/// when nothing matched.
pub(crate) async fn remove_messages(
    conn: &mut PgConnection,
    account_id: i64,
    mailbox_id: i64,
    uids: &[i64],
) -> StorageResult<Option<i64>> {
    if uids.is_empty() {
        return Ok(None);
    }
    let freed: (i64, i64) = sqlx::query_as(
        "WITH gone AS (DELETE FROM messages WHERE mailbox_id = $1 AND uid = ANY($2) RETURNING size)
         SELECT coalesce(sum(size), 0)::bigint, count(*) FROM gone",
    )
    .bind(mailbox_id)
    .bind(uids)
    .fetch_one(&mut *conn)
    .await?;
    let modseq = bump_modseq(&mut *conn, mailbox_id).await?;
    sqlx::query(
        "INSERT INTO expunged (mailbox_id, uid, modseq) SELECT $1, u, $3 FROM unnest($2::bigint[]) AS u
         ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = EXCLUDED.modseq",
    )
    .bind(mailbox_id)
    .bind(uids)
    .bind(modseq)
    .execute(&mut *conn)
    .await?;
    add_usage(conn, account_id, -freed.0, -freed.1).await?;
    Ok(Some(modseq))
}

impl Store {
    pub(crate) async fn expunge(&self, req: &pb::ExpungeRequest) -> StorageResult<pb::ExpungeResponse> {
        let mut set = UidSet::parse(&req.uids)?;
        let mut tx = self.pool.begin().await?;
        // Lock order: account (usage changes), then the mailbox.
        lock_account(&mut tx, req.account_id)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("no account {}", req.account_id)))?;
        let mailbox = mailbox_by_id(&mut tx, req.account_id, req.mailbox_id, true).await?;
        let uids: Vec<i64> = if req.ignore_deleted_flag && set.is_empty() {
            // POP3 UPDATE with nothing marked: nothing to remove (never "all").
            Vec::new()
        } else if set.is_empty() {
            sqlx::query_scalar(
                "SELECT uid FROM messages WHERE mailbox_id = $1 AND '\\Deleted' = ANY(flags) ORDER BY uid",
            )
            .bind(mailbox.id)
            .fetch_all(&mut *tx)
            .await?
        } else {
            // POP3's UPDATE state removes exactly the listed messages.
            let only_deleted = if req.ignore_deleted_flag { "" } else { "AND '\\Deleted' = ANY(m.flags)" };
            set.select_messages(&mut tx, mailbox.id, "m.uid", only_deleted)
                .await?
                .iter()
                .map(|r| r.get::<i64, _>("uid"))
                .collect()
        };
        let Some(modseq) = remove_messages(&mut tx, req.account_id, mailbox.id, &uids).await? else {
            tx.rollback().await?;
            return Ok(pb::ExpungeResponse { expunged_uids: vec![], highest_modseq: u64_of(mailbox.highest_modseq) });
        };
        tx.commit().await?;
        let expunged_uids: Vec<u32> = uids.into_iter().map(u32_of).collect();
        self.events
            .publish(
                req.account_id,
                u64_of(modseq),
                Kind::Expunged(pb::MessagesExpunged { mailbox_id: mailbox.id, uids: expunged_uids.clone() }),
            )
            .await;
        Ok(pb::ExpungeResponse { expunged_uids, highest_modseq: u64_of(modseq) })
    }
}
