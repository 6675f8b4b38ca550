//! COPY (RFC 3501 §6.4.7) with the UIDPLUS mapping (RFC 4315 §3, COPYUID)
//! and MOVE (RFC 6851): a copy plus an expunge of the sources, atomically.

use mailfleet_proto::storage::v1 as pb;
use pb::mail_event::Kind;
use sqlx::Row;

use super::expunge::remove_messages;
use super::{
    MAILBOX_COLUMNS, UidSet, add_usage, allocate_uids, lock_account, mailbox_by_id, mailbox_by_name, u32_of, u64_of,
};
use crate::Store;
use crate::error::{StorageError, StorageResult};

impl Store {
    pub(crate) async fn copy_messages(&self, req: &pb::CopyRequest) -> StorageResult<pb::CopyResponse> {
        let mut set = UidSet::parse(&req.uids)?;
        if set.is_empty() {
            return Err(StorageError::InvalidArgument("bad UID set: empty".into()));
        }
        let dest_name = mail_types::MailboxName::parse(&req.destination)?;

        let mut tx = self.pool.begin().await?;
        // Lock order: account (quota and usage), then mailboxes by ascending id.
        let account = lock_account(&mut tx, req.account_id)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("no account {}", req.account_id)))?;
        let source = mailbox_by_id(&mut tx, req.account_id, req.mailbox_id, false).await?;
        // NOT_FOUND lets IMAP answer `NO [TRYCREATE]` (RFC 3501 §6.4.7).
        let dest = mailbox_by_name(&mut tx, req.account_id, dest_name.as_str(), false)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("no mailbox {dest_name}")))?;
        let mut ids = vec![source.id, dest.id];
        ids.sort_unstable();
        ids.dedup();
        let sql = format!("SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE id = ANY($1) ORDER BY id FOR UPDATE");
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&ids).fetch_all(&mut *tx).await?;

        let rows = set.select_messages(&mut tx, source.id, "m.uid, m.size", "").await?;
        let uids: Vec<i64> = rows.iter().map(|r| r.get("uid")).collect();
        let bytes: i64 = rows.iter().map(|r| r.get::<i64, _>("size")).sum();
        let mut response = pb::CopyResponse {
            destination_uid_validity: u32_of(dest.uid_validity),
            destination_mailbox_id: dest.id,
            ..Default::default()
        };
        if uids.is_empty() {
            tx.rollback().await?;
            return Ok(response);
        }
        // A copy needs room for a second instance; a move does not.
        if !req.r#move {
            account.check_quota(bytes)?;
        }
        let n = uids.len() as i64;
        let (first_uid, dest_modseq) = allocate_uids(&mut tx, dest.id, n).await?;
        // Flags and internal date travel with the message (RFC 3501 §6.4.7);
        // the blob is shared, only the row is new.
        sqlx::query(
            "INSERT INTO messages (account_id, mailbox_id, uid, modseq, blob_id, header_prefix, size, internal_date, flags)
             SELECT account_id, $2, $3 + row_number() OVER (ORDER BY uid) - 1, $4,
                    blob_id, header_prefix, size, internal_date, flags
             FROM messages WHERE mailbox_id = $1 AND uid = ANY($5)",
        )
        .bind(source.id)
        .bind(dest.id)
        .bind(first_uid)
        .bind(dest_modseq)
        .bind(&uids)
        .execute(&mut *tx)
        .await?;
        add_usage(&mut tx, req.account_id, bytes, n).await?;
        let source_modseq =
            if req.r#move { remove_messages(&mut tx, req.account_id, source.id, &uids).await? } else { None };
        tx.commit().await?;

        response.source_uids = uids.iter().map(|u| u32_of(*u)).collect();
        response.destination_uids = (0..n).map(|i| u32_of(first_uid + i)).collect();
        self.events
            .publish(
                req.account_id,
                u64_of(dest_modseq),
                Kind::Added(pb::MessagesAdded { mailbox_id: dest.id, uids: response.destination_uids.clone() }),
            )
            .await;
        if let Some(modseq) = source_modseq {
            self.events
                .publish(
                    req.account_id,
                    u64_of(modseq),
                    Kind::Expunged(pb::MessagesExpunged { mailbox_id: source.id, uids: response.source_uids.clone() }),
                )
                .await;
        }
        Ok(response)
    }
}
