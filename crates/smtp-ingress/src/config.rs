//! smtp-ingress configuration (`smtp-ingress.toml`, env `MAILFLEET_SMTP_*`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use mailfleet_runtime::listener::ConnectionConfig;
use mailfleet_runtime::tls::TlsSettings;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct IngressConfig {
    /// Name in the greeting, EHLO reply and Received: fields.
    pub hostname: String,
    /// Where `RCPT TO:<Postmaster>` without a domain is delivered (RFC 5321
    /// §4.5.1); empty means `postmaster@<hostname>`.
    pub postmaster: String,
    /// MX listener (production port 25). `None` disables it.
    pub mx_listen: Option<SocketAddr>,
    /// Submission with STARTTLS (RFC 6409, production port 587).
    pub submission_listen: Option<SocketAddr>,
    /// Submission over implicit TLS (RFC 8314, production port 465).
    pub submissions_listen: Option<SocketAddr>,
    /// Certificate; without files a self-signed one is generated.
    pub tls: TlsSettings,
    /// Storage gRPC (Directory and Messages).
    pub storage_url: String,
    /// This service's fleet certificate for its calls to storage, which
    /// accepts mutual TLS only (`mailctl pki init`; README "Security model").
    pub identity: mailfleet_runtime::grpc::FleetIdentity,
    /// NATS server, or every server of a cluster, comma-separated.
    pub nats_url: String,
    /// smtp-ingress's NATS identity (docs/nats.md).
    pub nats_tls: mailfleet_runtime::nats::NatsTls,
    pub queue: QueueNames,
    /// SIZE (RFC 1870); 25 MiB like common providers, below storage's 50 MiB.
    pub max_message_size: usize,
    /// RFC 5321 §4.5.3.1.8 asks for at least 100.
    pub max_recipients: usize,
    /// Development: AUTH PLAIN/LOGIN without TLS when the client is on loopback.
    pub allow_plaintext_auth_on_loopback: bool,
    /// Submission: MAIL FROM must be one of the user's addresses (Directory.CanSendAs).
    pub enforce_sender_ownership: bool,
    /// Submission: every author in the header From: must be one of the
    /// user's addresses (Directory.CanSendAs); refused with 550 5.7.1.
    pub enforce_header_from: bool,
    pub timeouts: Timeouts,
    pub inbound_auth: InboundAuthConfig,
    /// How long where a local recipient address leads (its accounts,
    /// aliases expanded) is remembered instead of asking the directory at
    /// every RCPT; a change to the directory shows within this time.
    /// `0s` asks every time.
    #[serde(with = "humantime_serde")]
    pub recipient_cache_ttl: Duration,
    /// Addresses remembered at most.
    pub recipient_cache_size: usize,
    /// The connection settings every gateway shares (caps, timeouts, auth
    /// failures, PROXY protocol, health, shutdown). `idle_timeout` is the
    /// wait for the next command (RFC 5321 §4.5.3.2.7, at least 5 minutes);
    /// `shutdown_grace` is how long a transaction already in DATA/BDAT
    /// gets to finish and receive its real reply before it is cut off with 421.
    #[serde(flatten)]
    pub connection: ConnectionConfig,
}

/// JetStream names shared with delivery-queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueNames {
    pub stream: String,
    /// Jobs are published here; the stream captures it.
    pub subject: String,
    /// Servers holding the stream: 1 on one NATS server (development), 3 on
    /// a 3-node cluster (compose), where a `250` then means two servers
    /// have the job. Same value as delivery-queue's `stream_replicas`.
    pub replicas: usize,
}

impl Default for QueueNames {
    fn default() -> Self {
        QueueNames { stream: "MAIL_QUEUE".into(), subject: "mail.queue.jobs".into(), replicas: 1 }
    }
}

/// RFC 5321 §4.5.3.2 server timeouts beyond the shared ones (the wait for
/// a command is `idle_timeout`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Timeouts {
    /// §4.5.3.2.5/§4.5.3.2.6: between data blocks (3 min for the client;
    /// the server waits at least as long). Applies to each read during DATA/BDAT.
    #[serde(with = "humantime_serde")]
    pub data_block: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { data_block: Duration::from_secs(180) }
    }
}

/// SPF/DKIM/DMARC on port 25.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct InboundAuthConfig {
    pub enabled: bool,
    /// Refuse (550 5.7.1) mail that fails DMARC with policy p=reject.
    pub reject_on_dmarc_reject: bool,
    /// DNS servers (`ip:port`); empty = the system resolver configuration.
    pub nameservers: Vec<SocketAddr>,
    /// Per-lookup timeout.
    #[serde(with = "humantime_serde")]
    pub dns_timeout: Duration,
    /// TXT answers fixed here instead of DNS (`"_dmarc.example.org" = "v=DMARC1; p=reject"`):
    /// for tests and for pinning records; everything else goes to DNS.
    pub static_txt: BTreeMap<String, String>,
}

impl Default for InboundAuthConfig {
    fn default() -> Self {
        InboundAuthConfig {
            enabled: true,
            reject_on_dmarc_reject: false,
            nameservers: Vec::new(),
            dns_timeout: Duration::from_secs(5),
            static_txt: BTreeMap::new(),
        }
    }
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            hostname: "localhost".into(),
            postmaster: String::new(),
            // Unprivileged development ports (docker-compose maps 25/587/465).
            mx_listen: Some("127.0.0.1:2525".parse().expect("static address")),
            submission_listen: Some("127.0.0.1:5587".parse().expect("static address")),
            submissions_listen: Some("127.0.0.1:4465".parse().expect("static address")),
            tls: TlsSettings::default(),
            storage_url: "https://127.0.0.1:50051".into(),
            identity: Default::default(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_tls: Default::default(),
            queue: QueueNames::default(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            allow_plaintext_auth_on_loopback: true,
            enforce_sender_ownership: true,
            enforce_header_from: true,
            timeouts: Timeouts::default(),
            inbound_auth: InboundAuthConfig::default(),
            recipient_cache_ttl: Duration::from_secs(10),
            recipient_cache_size: 10_000,
            connection: ConnectionConfig {
                // A mail server sends a few messages at a time; 20 from one
                // address is already a busy relay.
                max_connections_per_ip: 20,
                auth_failure_delay: Duration::from_secs(1),
                // RFC 5321 §4.5.3.2.7: at least 5 minutes for the next command.
                idle_timeout: Duration::from_secs(300),
                // A 25 MiB message over a slow link needs a while; compose's
                // stop_grace_period must be longer than this.
                shutdown_grace: Duration::from_secs(30),
                ..ConnectionConfig::default()
            },
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
            std::env::set_var("MF_SMTP_TEST_OPS_PROXY_PROTOCOL__ENABLED", "true");
            std::env::set_var("MF_SMTP_TEST_OPS_PROXY_PROTOCOL__TRUSTED", "172.29.0.0/24,10.0.0.0/8");
            std::env::set_var("MF_SMTP_TEST_OPS_HEALTH_LISTEN", "0.0.0.0:8025");
            std::env::set_var("MF_SMTP_TEST_OPS_SHUTDOWN_GRACE", "45s");
        }
        let c: IngressConfig =
            mailfleet_runtime::config::load_service(None, "MF_SMTP_TEST_OPS_").expect("config loads");
        assert_eq!(c.connection.proxy_protocol.trusted_networks().expect("CIDRs").len(), 2);
        assert_eq!(c.connection.health_listen, Some("0.0.0.0:8025".parse().expect("addr")));
        assert_eq!(c.connection.shutdown_grace, Duration::from_secs(45));
        let defaults = IngressConfig::default();
        assert!(!defaults.connection.proxy_protocol.enabled && defaults.connection.health_listen.is_none());
    }
}
