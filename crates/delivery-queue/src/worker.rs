//! One delivery attempt of one job: resolve recipients (alias expansion),
//! deliver to each account once through storage, hand remote recipients to
//! the relay stream. Pure decisions live in small functions tested below.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use mailfleet_proto::queue::v1 as qpb;
use mailfleet_proto::storage::v1 as pb;
use pb::delivery_result::Status as DeliveryStatus;
use pb::directory_client::DirectoryClient;
use pb::messages_client::MessagesClient;
use pb::resolve_recipient_response::Kind;
use prost::Message;
use tonic::transport::Channel;

use crate::config::{OverQuota, QueueConfig};
use crate::metrics::{DeliveryOutcome, Metrics};
use crate::relay::DsnSender;
use crate::state::JobState;

/// The result of one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every recipient is delivered, handed to the relay, or failed for good.
    Done,
    /// Something failed temporarily; the job is kept and retried.
    Retry(String),
}

/// The time a message's age is measured against: the system clock, or one
/// a test sets.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(SystemTime::now))
    }
    pub fn new(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }
    pub fn now(&self) -> SystemTime {
        (self.0)()
    }
}

#[derive(Clone)]
pub struct Worker {
    directory: DirectoryClient<Channel>,
    messages: MessagesClient<Channel>,
    jetstream: jetstream::Context,
    relay_subject: String,
    over_quota: OverQuota,
    max_age: Duration,
    clock: Clock,
    dsn: DsnSender,
    pub metrics: Metrics,
}

/// A permanent local failure: (recipient, RFC 3463 status, diagnostic).
type Failure = (String, String, String);

/// RFC 5321 §4.4 / RFC 9228: per-recipient trace fields, prepended by storage.
pub fn header_prefix(mail_from: &str, recipient: &str) -> Vec<u8> {
    format!("Return-Path: <{mail_from}>\r\nDelivered-To: {recipient}\r\n").into_bytes()
}

/// The idempotency key of one (job, final recipient) pair.
pub fn delivery_key(queue_id: &str, recipient: &str) -> String {
    format!("{queue_id}:{recipient}")
}

/// Has a message received at `received_at` been in the queue for
/// `max_age` at `now`? A job without its time of receipt never expires.
pub fn expired(received_at: Option<&prost_types::Timestamp>, now: SystemTime, max_age: Duration) -> bool {
    let Some(at) = received_at else { return false };
    let Ok(seconds) = u64::try_from(at.seconds) else { return false };
    now.duration_since(UNIX_EPOCH + Duration::from_secs(seconds)).is_ok_and(|age| age >= max_age)
}

/// Retry delay after `attempts` failed attempts: doubling from `initial`, capped.
pub fn backoff(attempts: u64, initial: Duration, max: Duration) -> Duration {
    let exp = attempts.saturating_sub(1).min(20) as u32;
    initial.saturating_mul(2u32.saturating_pow(exp)).min(max)
}

impl Worker {
    pub fn new(channel: Channel, jetstream: jetstream::Context, config: &QueueConfig, clock: Clock) -> Worker {
        Worker {
            directory: DirectoryClient::new(channel.clone()),
            messages: MessagesClient::new(channel.clone()),
            dsn: DsnSender::new(channel, jetstream.clone(), config),
            jetstream,
            relay_subject: config.relay_subject.clone(),
            over_quota: config.over_quota,
            max_age: config.max_age,
            clock,
            metrics: Metrics::new(),
        }
    }

    /// One attempt. On the `first` attempt, recipients that smtp-ingress
    /// resolved when it accepted them are not looked up again; retries
    /// resolve every address afresh (the directory may have changed).
    ///
    /// Recipients that fail temporarily are kept for a later attempt until
    /// the message is `max_age` old; then they fail for good (RFC 3463
    /// 4.4.7) and the sender gets a DSN (RFC 5321 §4.5.4.1).
    pub async fn attempt(&self, job: &qpb::DeliveryJob, state: &mut JobState, first: bool) -> Outcome {
        // Recipients left for a later attempt, with why.
        let mut deferred: Vec<(String, String)> = Vec::new();
        let mut targets: Vec<pb::DeliveryTarget> = Vec::new();
        let mut target_rcpt: Vec<String> = Vec::new();
        let mut seen_accounts = HashSet::new();
        let mut remote: Vec<qpb::Recipient> = Vec::new();
        let mut failures: Vec<Failure> = Vec::new();
        for rcpt in &job.recipients {
            let resolved = match self.resolve(rcpt, first).await {
                Ok(r) => r,
                Err(s) if s.code() == tonic::Code::InvalidArgument => {
                    fail(state, &mut failures, &rcpt.address, "5.1.3", "malformed address");
                    continue;
                }
                Err(s) => {
                    self.metrics.storage_unavailable();
                    deferred.push((rcpt.address.clone(), format!("resolving {}: {}", rcpt.address, s.message())));
                    continue;
                }
            };
            match resolved.kind() {
                Kind::Local => {
                    // Alias expansion: each account gets the message once,
                    // even when several recipients lead to it.
                    for account in resolved.accounts {
                        if !seen_accounts.insert(account.id) {
                            continue;
                        }
                        targets.push(pb::DeliveryTarget {
                            account_id: account.id,
                            mailbox: String::new(),
                            delivery_key: delivery_key(&job.queue_id, &account.address),
                            header_prefix: header_prefix(&job.mail_from, &account.address),
                            flags: Vec::new(),
                        });
                        target_rcpt.push(account.address);
                    }
                }
                Kind::NotLocal => remote.push(rcpt.clone()),
                Kind::UnknownUser | Kind::Unspecified => {
                    fail(state, &mut failures, &rcpt.address, "5.1.1", "no such user")
                }
            }
        }

        if !targets.is_empty() {
            let mut req = tonic::Request::new(pb::DeliverRequest {
                blob_id: job.blob_id.clone(),
                targets,
                internal_date: job.received_at,
            });
            mailfleet_runtime::telemetry::inject_grpc(req.metadata_mut());
            match self.messages.clone().deliver(req).await {
                Ok(resp) => {
                    for (result, rcpt) in resp.into_inner().results.iter().zip(&target_rcpt) {
                        match result.status() {
                            DeliveryStatus::Delivered => self.metrics.outcome(DeliveryOutcome::Delivered, 1),
                            // Delivered by an earlier attempt; counted then.
                            DeliveryStatus::Duplicate => {}
                            DeliveryStatus::OverQuota if self.over_quota == OverQuota::Temporary => {
                                deferred.push((rcpt.clone(), format!("{rcpt}: over quota")));
                            }
                            DeliveryStatus::OverQuota => fail(state, &mut failures, rcpt, "5.2.2", "over quota"),
                            DeliveryStatus::NoSuchAccount => {
                                fail(state, &mut failures, rcpt, "5.1.1", "no such account")
                            }
                            DeliveryStatus::NoSuchMailbox => {
                                fail(state, &mut failures, rcpt, "5.2.0", "no such mailbox")
                            }
                            DeliveryStatus::AccountDisabled => {
                                fail(state, &mut failures, rcpt, "5.2.1", "account disabled")
                            }
                            DeliveryStatus::Unspecified => {
                                deferred.push((rcpt.clone(), format!("{rcpt}: unknown result")));
                            }
                        }
                    }
                }
                // Storage down or failing: keep everything for a retry.
                Err(s) => {
                    self.metrics.storage_unavailable();
                    let why = format!("deliver: {}: {}", s.code(), s.message());
                    deferred.extend(target_rcpt.iter().map(|r| (r.clone(), why.clone())));
                }
            }
        }

        if !remote.is_empty() && !state.relayed {
            let addresses: Vec<String> = remote.iter().map(|r| r.address.clone()).collect();
            match self.hand_to_relay(job, remote).await {
                Ok(()) => {
                    state.relayed = true;
                    self.metrics.outcome(DeliveryOutcome::Relayed, addresses.len());
                }
                Err(e) => {
                    self.metrics.nats_unavailable();
                    deferred.extend(addresses.into_iter().map(|a| (a, e.clone())));
                }
            }
        }

        // RFC 5321 §4.5.4.1: give up on what still fails once the message
        // is too old, and say so (RFC 3463 4.4.7, delivery time expired).
        if !deferred.is_empty() && expired(job.received_at.as_ref(), self.clock.now(), self.max_age) {
            let days = self.max_age.as_secs() / 86_400;
            for (rcpt, why) in std::mem::take(&mut deferred) {
                let why = format!("delivery time expired ({days} days in the queue); last error: {why}");
                tracing::warn!(recipient = %rcpt, reason = %why, "giving up: message expired");
                record_failure(state, &mut failures, &rcpt, "4.4.7", format!("450 4.4.7 {why}"), &why);
            }
        }
        let mut temporary: Vec<String> = deferred.iter().map(|(_, why)| why.clone()).collect();
        temporary.dedup();

        // RFC 3464 / RFC 3461: tell the sender about recipients that failed
        // for good (NOTIFY and the null sender are honoured by DsnSender).
        // Only once per recipient, even if the job is retried for others.
        let unreported: Vec<Failure> = failures.into_iter().filter(|(r, _, _)| !state.bounced.contains(r)).collect();
        if !unreported.is_empty() {
            match self.dsn.bounce_failures(job, &unreported).await {
                Ok(()) => {
                    self.metrics.outcome(DeliveryOutcome::Bounced, unreported.len());
                    state.bounced.extend(unreported.into_iter().map(|(r, _, _)| r));
                }
                // The DSN could not be queued: retry the job; delivered
                // recipients are skipped by their delivery keys.
                Err(e) => temporary.push(format!("bounce: {e}")),
            }
        }

        self.metrics.outcome(DeliveryOutcome::Deferred, deferred.len());
        if temporary.is_empty() { Outcome::Done } else { Outcome::Retry(temporary.join("; ")) }
    }

    /// Where a recipient's address leads: as resolved at receipt (first
    /// attempt), or asked from the directory.
    async fn resolve(&self, rcpt: &qpb::Recipient, first: bool) -> Result<pb::ResolveRecipientResponse, tonic::Status> {
        if first && !rcpt.accounts.is_empty() {
            let accounts = rcpt
                .accounts
                .iter()
                .map(|a| pb::Account { id: a.id, address: a.address.clone(), ..Default::default() })
                .collect();
            return Ok(pb::ResolveRecipientResponse { kind: Kind::Local as i32, accounts, canonical: String::new() });
        }
        let mut req = tonic::Request::new(pb::ResolveRecipientRequest { address: rcpt.address.clone() });
        mailfleet_runtime::telemetry::inject_grpc(req.metadata_mut());
        Ok(self.directory.clone().resolve_recipient(req).await?.into_inner())
    }

    /// Remote recipients go to the relay stream (consumed by the relay of
    /// issue 4) as a job of their own, deduplicated by message id.
    async fn hand_to_relay(&self, job: &qpb::DeliveryJob, remote: Vec<qpb::Recipient>) -> Result<(), String> {
        let relay_job = qpb::DeliveryJob { recipients: remote, ..job.clone() };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{}.relay", job.queue_id).as_str());
        mailfleet_runtime::telemetry::inject_nats(&mut headers);
        let ack = self
            .jetstream
            .publish_with_headers(self.relay_subject.clone(), headers, relay_job.encode_to_vec().into())
            .await
            .map_err(|e| format!("relay publish: {e}"))?;
        ack.await.map_err(|e| format!("relay publish ack: {e}"))?;
        Ok(())
    }
}

fn fail(state: &mut JobState, failures: &mut Vec<Failure>, recipient: &str, status: &str, why: &str) {
    tracing::warn!(recipient, reason = why, "recipient failed permanently");
    record_failure(state, failures, recipient, status, format!("550 {status} {why}"), why);
}

fn record_failure(
    state: &mut JobState,
    failures: &mut Vec<Failure>,
    recipient: &str,
    status: &str,
    diagnostic: String,
    why: &str,
) {
    failures.push((recipient.to_string(), status.to_string(), diagnostic));
    let entry = format!("{recipient}: {why}");
    if !state.failed.contains(&entry) {
        state.failed.push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(1, s(30), s(3600)), s(30));
        assert_eq!(backoff(2, s(30), s(3600)), s(60));
        assert_eq!(backoff(4, s(30), s(3600)), s(240));
        assert_eq!(backoff(30, s(30), s(3600)), s(3600));
        assert_eq!(backoff(u64::MAX, s(30), s(3600)), s(3600));
    }

    #[test]
    fn a_message_expires_at_its_max_age_measured_from_receipt() {
        let day = Duration::from_secs(86_400);
        let received = prost_types::Timestamp { seconds: 1_000_000, nanos: 0 };
        let at = |after: Duration| UNIX_EPOCH + Duration::from_secs(1_000_000) + after;
        assert!(!expired(Some(&received), at(Duration::ZERO), 5 * day));
        assert!(!expired(Some(&received), at(5 * day - Duration::from_secs(1)), 5 * day));
        assert!(expired(Some(&received), at(5 * day), 5 * day));
        assert!(expired(Some(&received), at(30 * day), 5 * day));
        // A clock behind the time of receipt, or no time of receipt: not expired.
        assert!(!expired(Some(&received), UNIX_EPOCH, 5 * day));
        assert!(!expired(None, at(30 * day), 5 * day));
    }

    #[test]
    fn trace_fields() {
        assert_eq!(
            header_prefix("a@x.test", "bob@example.org"),
            b"Return-Path: <a@x.test>\r\nDelivered-To: bob@example.org\r\n"
        );
        assert_eq!(header_prefix("", "b@e.org"), b"Return-Path: <>\r\nDelivered-To: b@e.org\r\n");
        assert_eq!(delivery_key("Q1", "b@e.org"), "Q1:b@e.org");
    }
}
