//! Idempotent delivery of a stored blob to local accounts. Delivery is
//! at-least-once on the bus; a delivery key per (job, recipient) makes a
//! redelivered job store nothing twice.

use mailfleet_proto::storage::v1 as pb;
use pb::delivery_result::Status as DeliveryStatus;
use pb::mail_event::Kind;
use sqlx::{PgConnection, Row};
use time::OffsetDateTime;

use super::append::check_blob_id;
use super::flags::normalize_flags;
use super::{internal_date, u32_of, u64_of};
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
        check_blob_id(&req.blob_id)?;
        if !self.blobs.exists(&req.blob_id).await? {
            return Err(StorageError::NotFound(format!("unknown blob {}", req.blob_id)));
        }

        let mut results = Vec::with_capacity(targets.len());
        for (target, mailbox, flags) in targets {
            let outcome = self.deliver_one(&req.blob_id, date, target, mailbox.as_str(), &flags).await?;
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

    /// One target in one statement: `mailfleet_deliver` (migration 0005)
    /// checks the key, the blob, the account and the mailbox and stores the
    /// message and its delivery key in one transaction, one round trip.
    async fn deliver_one(
        &self,
        blob_id: &str,
        date: OffsetDateTime,
        target: &pb::DeliveryTarget,
        mailbox_name: &str,
        flags: &[String],
    ) -> StorageResult<Outcome> {
        let key = target.delivery_key.as_str();
        let call = || {
            sqlx::query(
                "SELECT o_status, o_mailbox_id, o_uid, o_modseq FROM mailfleet_deliver($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(key)
            .bind(target.account_id)
            .bind(mailbox_name)
            .bind(blob_id)
            .bind(&target.header_prefix)
            .bind(date)
            .bind(flags)
            .fetch_one(&self.pool)
        };
        let mut row = call().await;
        if row.as_ref().is_ok_and(|r| matches!(r.get::<String, _>("o_status").as_str(), "unparsed" | "no_blob")) {
            // A blob stored before metadata was recorded at arrival, or
            // whose row a crash took (PutBlob commits it without waiting
            // for the WAL flush): parse the file again. No file: NOT_FOUND.
            self.ensure_blob_metadata(blob_id).await?;
            row = call().await;
        }
        let row = match row {
            Ok(row) => row,
            // A concurrent delivery with the same key committed first.
            Err(e) if is_unique_violation(&e) => {
                return previous_delivery(&mut *self.pool.acquire().await?, key)
                    .await?
                    .ok_or_else(|| StorageError::Internal("delivery key vanished".into()));
            }
            Err(e) if out_of_uids(&e) => {
                return Err(StorageError::FailedPrecondition("mailbox has run out of UIDs; recreate it".into()));
            }
            Err(e) => return Err(e.into()),
        };
        let (status, mailbox_id, uid, modseq): (String, Option<i64>, Option<i64>, Option<i64>) =
            (row.get("o_status"), row.get("o_mailbox_id"), row.get("o_uid"), row.get("o_modseq"));
        let (mailbox_id, uid) = (mailbox_id.unwrap_or(0), uid.unwrap_or(0));
        let status = match status.as_str() {
            "delivered" => {
                return Ok(Outcome {
                    result: result(key, DeliveryStatus::Delivered, mailbox_id, uid),
                    added: Some((mailbox_id, modseq.unwrap_or(0))),
                });
            }
            "duplicate" => DeliveryStatus::Duplicate,
            "no_account" => DeliveryStatus::NoSuchAccount,
            "disabled" => DeliveryStatus::AccountDisabled,
            "over_quota" => DeliveryStatus::OverQuota,
            "no_mailbox" => DeliveryStatus::NoSuchMailbox,
            // Swept between the request's check and this target.
            "no_blob" => return Err(StorageError::NotFound(format!("blob {blob_id} is gone"))),
            other => return Err(StorageError::Internal(format!("mailfleet_deliver answered {other:?}"))),
        };
        let (mailbox_id, uid) = if status == DeliveryStatus::Duplicate { (mailbox_id, uid) } else { (0, 0) };
        Ok(Outcome { result: result(key, status, mailbox_id, uid), added: None })
    }
}

/// The SQLSTATE `mailfleet_deliver` raises when a mailbox has no UID left.
fn out_of_uids(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("MF001"))
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
