//! Idempotent delivery of a stored blob to local accounts. Delivery is
//! at-least-once on the bus; a delivery key per (job, recipient) makes a
//! redelivered job store nothing twice.

use mailfleet_proto::storage::v1 as pb;
use pb::delivery_result::Status as DeliveryStatus;
use pb::mail_event::Kind;
use sqlx::{PgConnection, Row};
use time::OffsetDateTime;

use super::append::{NewMessage, insert_message};
use super::flags::normalize_flags;
use super::{internal_date, lock_account, mailbox_by_name, u32_of, u64_of};
use crate::Store;
use crate::error::{StorageError, StorageResult, is_unique_violation};

/// Longest header prefix we accept (a few Return-Path / Delivered-To lines).
const MAX_PREFIX: usize = 16 * 1024;

/// Outcome of one target, plus the event to publish after commit.
struct Outcome {
    result: pb::DeliveryResult,
    added: Option<(i64, i64)>,
}

fn result(key: &str, status: DeliveryStatus, mailbox_id: i64, uid: i64) -> pb::DeliveryResult {
    pb::DeliveryResult { delivery_key: key.to_string(), status: status as i32, mailbox_id, uid: u32_of(uid) }
}

impl Store {
    pub(crate) async fn deliver(&self, req: pb::DeliverRequest) -> StorageResult<pb::DeliverResponse> {
        // Validate the whole request before storing anything.
        let date = internal_date(req.internal_date.as_ref())?;
        let mut targets = Vec::with_capacity(req.targets.len());
        for t in &req.targets {
            if t.delivery_key.is_empty() || t.delivery_key.len() > 512 {
                return Err(StorageError::InvalidArgument("every target needs a delivery_key (1..512 bytes)".into()));
            }
            if t.header_prefix.len() > MAX_PREFIX || !(t.header_prefix.is_empty() || t.header_prefix.ends_with(b"\n")) {
                return Err(StorageError::InvalidArgument("header_prefix must be complete header lines".into()));
            }
            let mailbox = if t.mailbox.is_empty() {
                mail_types::MailboxName::inbox()
            } else {
                mail_types::MailboxName::parse(&t.mailbox)?
            };
            targets.push((t, mailbox, normalize_flags(&t.flags)?));
        }
        // NOT_FOUND for an unknown blob: nothing is stored for anybody.
        let blob_size = self.ensure_blob_metadata(&req.blob_id).await?;

        let mut results = Vec::with_capacity(targets.len());
        for (target, mailbox, flags) in targets {
            let outcome = self.deliver_one(&req.blob_id, blob_size, date, target, mailbox.as_str(), &flags).await?;
            if let Some((mailbox_id, modseq)) = outcome.added {
                self.events
                    .publish(
                        target.account_id,
                        u64_of(modseq),
                        Kind::Added(pb::MessagesAdded { mailbox_id, uids: vec![outcome.result.uid] }),
                    )
                    .await;
            }
            results.push(outcome.result);
        }
        Ok(pb::DeliverResponse { results })
    }

    /// One target in its own transaction: the message row and the delivery
    /// key commit together, or neither does.
    async fn deliver_one(
        &self,
        blob_id: &str,
        blob_size: i64,
        date: OffsetDateTime,
        target: &pb::DeliveryTarget,
        mailbox_name: &str,
        flags: &[String],
    ) -> StorageResult<Outcome> {
        let key = target.delivery_key.as_str();
        if let Some(done) = previous_delivery(&mut *self.pool.acquire().await?, key).await? {
            return Ok(done);
        }
        let mut tx = self.pool.begin().await?;
        let size = blob_size + target.header_prefix.len() as i64;
        self.pin_blob(&mut tx, blob_id, blob_size).await?;
        let refused = |status| Ok(Outcome { result: result(key, status, 0, 0), added: None });
        let Some(account) = lock_account(&mut tx, target.account_id).await? else {
            return refused(DeliveryStatus::NoSuchAccount);
        };
        // Same-key deliveries to one account serialise on the account lock:
        // look again now that a concurrent one may have committed.
        if let Some(done) = previous_delivery(&mut tx, key).await? {
            return Ok(done);
        }
        if account.disabled {
            return refused(DeliveryStatus::AccountDisabled);
        }
        if account.check_quota(size).is_err() {
            return refused(DeliveryStatus::OverQuota);
        }
        let Some(mailbox) = mailbox_by_name(&mut tx, target.account_id, mailbox_name, true).await? else {
            return refused(DeliveryStatus::NoSuchMailbox);
        };
        let new = NewMessage { blob_id, header_prefix: &target.header_prefix, size, internal_date: date, flags };
        let (uid, modseq) = insert_message(&mut tx, target.account_id, mailbox.id, &new).await?;
        let recorded =
            sqlx::query("INSERT INTO deliveries (delivery_key, account_id, mailbox_id, uid) VALUES ($1, $2, $3, $4)")
                .bind(key)
                .bind(target.account_id)
                .bind(mailbox.id)
                .bind(uid)
                .execute(&mut *tx)
                .await;
        match recorded {
            Ok(_) => {}
            // A concurrent delivery with the same key committed first.
            Err(e) if is_unique_violation(&e) => {
                drop(tx);
                return previous_delivery(&mut *self.pool.acquire().await?, key)
                    .await?
                    .ok_or_else(|| StorageError::Internal("delivery key vanished".into()));
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        Ok(Outcome {
            result: result(key, DeliveryStatus::Delivered, mailbox.id, uid),
            added: Some((mailbox.id, modseq)),
        })
    }
}

async fn previous_delivery(conn: &mut PgConnection, key: &str) -> StorageResult<Option<Outcome>> {
    let row = sqlx::query("SELECT mailbox_id, uid FROM deliveries WHERE delivery_key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(|r| Outcome {
        result: result(key, DeliveryStatus::Duplicate, r.get("mailbox_id"), r.get("uid")),
        added: None,
    }))
}
