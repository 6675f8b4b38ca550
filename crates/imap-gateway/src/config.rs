//! IMAP gateway configuration (`imap-gateway.toml`, env `MAILFLEET_IMAP_*`).

use std::net::SocketAddr;
use std::time::Duration;

use mailfleet_runtime::listener::ConnectionConfig;
use mailfleet_runtime::tls::TlsSettings;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ImapConfig {
    /// Cleartext IMAP with STARTTLS; dev port 1143 (production 143).
    pub listen: SocketAddr,
    /// Implicit TLS (RFC 8314 §3.3); dev port 9993 (production 993). `None` disables it.
    pub tls_listen: Option<SocketAddr>,
    pub storage_url: String,
    /// This service's fleet certificate for its calls to storage, which
    /// accepts mutual TLS only (`mailctl pki init`; README "Security model").
    pub identity: mailfleet_runtime::grpc::FleetIdentity,
    pub nats_url: String,
    /// imap-gateway's NATS identity (docs/nats.md).
    pub nats_tls: mailfleet_runtime::nats::NatsTls,
    /// Storage publishes change events on `<events_prefix>.<account_id>`.
    pub events_prefix: String,
    /// Allow LOGIN/AUTHENTICATE without TLS when the client is on loopback.
    /// Otherwise LOGINDISABLED is advertised until STARTTLS (RFC 3501 §6.2.3).
    pub allow_plaintext_auth_on_loopback: bool,
    /// Allow cleartext authentication from any address (tests behind a TLS proxy only).
    pub allow_plaintext_auth: bool,
    pub tls: TlsSettings,
    /// While idling, check the mailbox this often even without a NATS
    /// event (a safety net if NATS is down or an event was lost).
    #[serde(with = "humantime_serde")]
    pub idle_poll_interval: Duration,
    /// Autologout before login; RFC 3501 §5.4 allows a shorter one here.
    #[serde(with = "humantime_serde")]
    pub login_timeout: Duration,
    /// Longest command line (without literals). RFC 7162 §4 asks clients to
    /// keep lines under 8192 octets, so 64 KiB leaves room for big UID sets.
    pub max_line: u32,
    /// Largest literal (APPEND message) accepted; over it: `NO [TOOBIG]`.
    pub max_literal: u32,
    /// Before login: the longest command line, and the literal octets of
    /// one command together (LOGIN's arguments only). A client that has not
    /// logged in cannot make the gateway hold more than their sum. The line
    /// limit fits the largest ID command RFC 2971 §3.3 allows (30 pairs of
    /// a 30-octet field and a 1024-octet value: about 31.8 KB), which
    /// clients may send before they log in.
    pub max_line_unauthenticated: u32,
    pub max_literal_unauthenticated: u32,
    /// Commands per second a connection may sustain; beyond it the
    /// connection is slowed down (not dropped). Bursts up to `command_burst`.
    pub commands_per_second: u32,
    pub command_burst: u32,
    /// The connection settings every gateway shares (caps, timeouts, auth
    /// failures, PROXY protocol, health, shutdown); `idle_timeout` is the
    /// autologout timer once logged in, at least 30 minutes (RFC 3501 §5.4).
    #[serde(flatten)]
    pub connection: ConnectionConfig,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            listen: "127.0.0.1:1143".parse().expect("static address"),
            tls_listen: Some("127.0.0.1:9993".parse().expect("static address")),
            storage_url: "https://127.0.0.1:50051".into(),
            identity: Default::default(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_tls: Default::default(),
            events_prefix: "mail.events".into(),
            allow_plaintext_auth_on_loopback: true,
            allow_plaintext_auth: false,
            tls: TlsSettings::default(),
            login_timeout: Duration::from_secs(60),
            idle_poll_interval: Duration::from_secs(60),
            max_line: 64 * 1024,
            // Matches storage's default message limit (50 MiB).
            max_literal: 50 * 1024 * 1024,
            max_line_unauthenticated: 32 * 1024,
            max_literal_unauthenticated: 8 * 1024,
            // Generous for pipelining clients, fatal for a flood.
            commands_per_second: 200,
            command_burst: 400,
            connection: ConnectionConfig {
                // IMAP clients keep several connections each (one IDLEs per
                // watched mailbox), and an idle one costs little.
                max_connections: 5000,
                max_connections_per_ip: 100,
                auth_failure_delay: Duration::from_secs(1),
                // RFC 3501 §5.4: at least 30 minutes.
                idle_timeout: Duration::from_secs(31 * 60),
                ..ConnectionConfig::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn defaults_follow_the_rfcs() {
        let c = ImapConfig::default();
        assert!(c.connection.idle_timeout >= Duration::from_secs(30 * 60), "RFC 3501 §5.4");
        assert_eq!(c.listen.port(), 1143);
        assert_eq!(c.tls_listen.map(|a| a.port()), Some(9993));
        assert!(c.allow_plaintext_auth_on_loopback);
    }

    #[test]
    fn example_file_and_environment_load() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("imap-gateway.example.toml");
        let from_file: ImapConfig = mailfleet_runtime::config::load_service(Some(&path), "MF_IMAP_TEST_NONE_").unwrap();
        assert_eq!(from_file.connection.idle_timeout, Duration::from_secs(31 * 60));
        assert_eq!(from_file.max_literal, 50 * 1024 * 1024);
        assert_eq!(from_file.tls.hostname, "localhost");

        // SAFETY: the variable names are unique to this test.
        unsafe {
            std::env::set_var("MF_IMAP_TEST_A_IDLE_TIMEOUT", "45m");
            std::env::set_var("MF_IMAP_TEST_A_STORAGE_URL", "https://10.0.0.1:50051");
        }
        let from_env: ImapConfig = mailfleet_runtime::config::load_service(Some(&path), "MF_IMAP_TEST_A_").unwrap();
        assert_eq!(from_env.connection.idle_timeout, Duration::from_secs(45 * 60));
        assert_eq!(from_env.storage_url, "https://10.0.0.1:50051");
    }

    #[test]
    fn proxy_protocol_and_health_from_the_environment_as_compose_sets_them() {
        // SAFETY: the variable names are unique to this test.
        unsafe {
            std::env::set_var("MF_IMAP_TEST_B_PROXY_PROTOCOL__ENABLED", "true");
            std::env::set_var("MF_IMAP_TEST_B_PROXY_PROTOCOL__TRUSTED", "172.29.0.0/24,10.0.0.0/8");
            std::env::set_var("MF_IMAP_TEST_B_HEALTH_LISTEN", "0.0.0.0:8143");
            std::env::set_var("MF_IMAP_TEST_B_SHUTDOWN_GRACE", "20s");
        }
        let c: ImapConfig = mailfleet_runtime::config::load_service(None, "MF_IMAP_TEST_B_").unwrap();
        assert_eq!(c.connection.proxy_protocol.trusted_networks().unwrap().len(), 2);
        assert_eq!(c.connection.health_listen, Some("0.0.0.0:8143".parse().unwrap()));
        assert_eq!(c.connection.shutdown_grace, Duration::from_secs(20));
        assert!(!ImapConfig::default().connection.proxy_protocol.enabled);
    }
}
