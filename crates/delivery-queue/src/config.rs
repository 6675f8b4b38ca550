//! delivery-queue configuration (`delivery-queue.toml`, env `MAILFLEET_QUEUE_*`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueConfig {
    pub storage_url: String,
    /// This service's fleet certificate for its calls to storage, which
    /// accepts mutual TLS only (`mailctl pki init`; README "Security model").
    pub identity: mailfleet_runtime::grpc::FleetIdentity,
    /// NATS server, or every server of a cluster, comma-separated.
    pub nats_url: String,
    /// delivery-queue's NATS identity (docs/nats.md).
    pub nats_tls: mailfleet_runtime::nats::NatsTls,
    /// Work-queue stream smtp-ingress publishes to (same names in both services).
    pub stream: String,
    pub subject: String,
    /// Durable pull consumer shared by every replica.
    pub consumer: String,
    /// Remote recipients are handed to the relay (issue 4) on this stream.
    pub relay_stream: String,
    pub relay_subject: String,
    /// Key-value bucket with the state of jobs that failed at least once
    /// (read by `mailctl queue`).
    pub state_bucket: String,
    /// Servers holding the queue and relay streams and the state bucket:
    /// 1 on one NATS server (development), 3 on a 3-node cluster
    /// (compose). Same value as smtp-ingress's `queue.replicas`.
    pub stream_replicas: usize,
    /// Jobs processed at once by this replica.
    pub concurrency: usize,
    /// JetStream redelivers a job that neither finished nor said it is
    /// still in progress within this time (a dead worker); a job in
    /// progress says so every quarter of it. At most 30 s
    /// ([`crate::redelivery`]).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// First retry delay after a temporary failure; doubles each attempt.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    pub over_quota: OverQuota,
    /// Local delivery gives up on a recipient still failing temporarily
    /// (over quota, storage unreachable) once the message is this old, and
    /// tells the sender with a DSN (RFC 5321 §4.5.4.1: 4–5 days; RFC 3463
    /// 4.4.7).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Outbound relay of remote recipients (issue 4).
    pub relay: crate::relay::RelayConfig,
    /// Plain-HTTP `GET /healthz` endpoint (200 while consuming); unset: none.
    pub health_listen: Option<SocketAddr>,
    /// On shutdown, how long jobs already started get to finish (ack after
    /// storage committed) before they are given back for redelivery.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// What an over-quota mailbox means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverQuota {
    /// Keep the job and retry (RFC 3463 4.2.2): the user may free space.
    Temporary,
    /// Give up for this recipient (RFC 3463 5.2.2).
    Permanent,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            storage_url: "https://127.0.0.1:50051".into(),
            identity: Default::default(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_tls: Default::default(),
            stream: "MAIL_QUEUE".into(),
            subject: "mail.queue.jobs".into(),
            consumer: "delivery".into(),
            relay_stream: "MAIL_RELAY".into(),
            relay_subject: "mail.relay.jobs".into(),
            state_bucket: "MAIL_QUEUE_STATE".into(),
            stream_replicas: 1,
            concurrency: 32,
            ack_wait: Duration::from_secs(20),
            retry_initial: Duration::from_secs(30),
            // RFC 5321 §4.5.4.1: retry intervals of at least 30 minutes are
            // usual; an hour caps the backoff.
            retry_max: Duration::from_secs(3600),
            over_quota: OverQuota::Temporary,
            // As the relay's schedule: RFC 5321 §4.5.4.1 "at least 4-5 days".
            max_age: Duration::from_secs(5 * 24 * 3600),
            relay: crate::relay::RelayConfig::default(),
            health_listen: None,
            // Local deliveries take milliseconds; relay attempts may take
            // longer and are given back (redelivered) when they do.
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_keys_from_the_environment_as_compose_sets_them() {
        // SAFETY: the variable names are unique to this test.
        unsafe {
            std::env::set_var("MF_QUEUE_TEST_OPS_HEALTH_LISTEN", "0.0.0.0:8026");
            std::env::set_var("MF_QUEUE_TEST_OPS_SHUTDOWN_GRACE", "1m");
        }
        let c: QueueConfig = mailfleet_runtime::config::load(None, "MF_QUEUE_TEST_OPS_").expect("config loads");
        assert_eq!(c.health_listen, Some("0.0.0.0:8026".parse().expect("addr")));
        assert_eq!(c.shutdown_grace, Duration::from_secs(60));
        assert_eq!(QueueConfig::default().health_listen, None);
    }
}
