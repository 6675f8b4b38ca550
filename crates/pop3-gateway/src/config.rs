//! `Pop3Config`: the gateway's only configuration (`pop3-gateway.toml`,
//! every key overridable as `MAILFLEET_POP3_<KEY>`, nested keys with `__`).

use std::net::SocketAddr;
use std::time::Duration;

use mailfleet_runtime::listener::ConnectionConfig;
use mailfleet_runtime::tls::TlsSettings;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Pop3Config {
    /// Plain POP3 with STLS. Dev port 1110 (production 110, mapped by compose).
    pub listen: SocketAddr,
    /// POP3S, implicit TLS (RFC 8314). Dev port 9995 (production 995); unset: none.
    pub tls_listen: Option<SocketAddr>,
    /// Turn TLS off entirely: no STLS, no POP3S listener (tests without a certificate).
    pub tls_enabled: bool,
    /// Certificate; without files a self-signed one is generated in `var/tls`.
    pub tls: TlsSettings,
    /// The storage service's gRPC endpoint.
    pub storage_url: String,
    /// This service's fleet certificate for its calls to storage, which
    /// accepts mutual TLS only (`mailctl pki init`; README "Security model").
    pub identity: mailfleet_runtime::grpc::FleetIdentity,
    /// Not used by POP3 today (it needs no change events); kept so one
    /// deployment file can configure every service the same way.
    pub nats_url: String,
    /// Host name in the greeting's APOP timestamp banner (RFC 1939 §7).
    pub hostname: String,
    /// Offer APOP: the greeting carries a timestamp banner (RFC 1939 §7).
    pub apop_enabled: bool,
    /// Accept USER/PASS and AUTH PLAIN/LOGIN without TLS from anyone. Off:
    /// passwords must not cross the network in clear (RFC 2595 §2.2).
    pub allow_plaintext_auth: bool,
    /// ... but do accept them from a loopback peer (development, tests).
    pub allow_plaintext_auth_on_loopback: bool,
    /// Maildrop lease length; renewed every third of it while the session lives.
    #[serde(with = "humantime_serde")]
    pub lock_ttl: Duration,
    /// RFC 2449 §4: a command line is at most 255 octets including CRLF.
    pub max_command_line: usize,
    /// SASL continuation lines (RFC 5034 §4) carry base64; allow more room.
    pub max_sasl_line: usize,
    /// Over-long or unparsable lines tolerated before the connection is closed.
    pub max_bad_commands: u32,
    /// Advertise `EXPIRE <value>` in CAPA (RFC 2449 §6.7), e.g. "NEVER". Advisory only.
    pub capa_expire: Option<String>,
    /// Advertise `LOGIN-DELAY <seconds>` in CAPA (RFC 2449 §6.8). Advisory only.
    pub capa_login_delay: Option<u32>,
    /// The connection settings every gateway shares (caps, timeouts, auth
    /// failures, PROXY protocol, health, shutdown); `idle_timeout` is the
    /// autologout timer, at least 10 minutes (RFC 1939 §3).
    #[serde(flatten)]
    pub connection: ConnectionConfig,
}

impl Default for Pop3Config {
    fn default() -> Self {
        Pop3Config {
            listen: "127.0.0.1:1110".parse().expect("static address"),
            tls_listen: Some("127.0.0.1:9995".parse().expect("static address")),
            tls_enabled: true,
            tls: TlsSettings::default(),
            storage_url: "https://127.0.0.1:50051".into(),
            identity: Default::default(),
            nats_url: "nats://127.0.0.1:4222".into(),
            hostname: "localhost".into(),
            // Most clients never use it, but it costs nothing to offer.
            apop_enabled: true,
            allow_plaintext_auth: false,
            // A dev machine and the tests talk over loopback without TLS.
            allow_plaintext_auth_on_loopback: true,
            lock_ttl: Duration::from_secs(60),
            max_command_line: 255,
            max_sasl_line: 2048,
            max_bad_commands: 10,
            capa_expire: None,
            capa_login_delay: None,
            connection: ConnectionConfig {
                // RFC 1939 §3: the autologout timer is at least 10 minutes.
                idle_timeout: Duration::from_secs(10 * 60),
                ..ConnectionConfig::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn defaults_follow_the_rfcs() {
        let c = Pop3Config::default();
        assert!(c.connection.idle_timeout >= Duration::from_secs(600), "RFC 1939 §3");
        assert_eq!(c.max_command_line, 255, "RFC 2449 §4");
        assert_eq!(c.listen.port(), 1110);
    }

    #[test]
    fn example_file_and_environment_load() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pop3-gateway.example.toml");
        let from_file: Pop3Config = mailfleet_runtime::config::load_service(Some(&path), "MF_POP3_TEST_NONE_").unwrap();
        assert_eq!(from_file.connection.idle_timeout, Duration::from_secs(600));
        assert_eq!(from_file.tls_listen, Some("127.0.0.1:9995".parse().unwrap()));
        assert_eq!(from_file.capa_expire, None);

        // SAFETY: the variable names are unique to this test.
        unsafe {
            std::env::set_var("MF_POP3_TEST_A_IDLE_TIMEOUT", "15m");
            std::env::set_var("MF_POP3_TEST_A_CAPA_EXPIRE", "NEVER");
        }
        let from_env: Pop3Config = mailfleet_runtime::config::load_service(None, "MF_POP3_TEST_A_").unwrap();
        assert_eq!(from_env.connection.idle_timeout, Duration::from_secs(900));
        assert_eq!(from_env.capa_expire.as_deref(), Some("NEVER"));
        assert!(!from_env.connection.proxy_protocol.enabled);
        assert!(from_file.connection.proxy_protocol.trusted_networks().unwrap().is_empty());
    }

    #[test]
    fn proxy_protocol_from_the_environment_as_compose_sets_it() {
        // SAFETY: the variable names are unique to this test.
        unsafe {
            std::env::set_var("MF_POP3_TEST_B_PROXY_PROTOCOL__ENABLED", "true");
            std::env::set_var("MF_POP3_TEST_B_PROXY_PROTOCOL__TRUSTED", "172.29.0.0/24,10.0.0.0/8");
            std::env::set_var("MF_POP3_TEST_B_HEALTH_LISTEN", "0.0.0.0:8110");
        }
        let c: Pop3Config = mailfleet_runtime::config::load_service(None, "MF_POP3_TEST_B_").unwrap();
        assert!(c.connection.proxy_protocol.enabled);
        assert_eq!(c.connection.proxy_protocol.trusted, ["172.29.0.0/24", "10.0.0.0/8"]);
        assert_eq!(c.connection.proxy_protocol.trusted_networks().unwrap().len(), 2);
        assert_eq!(c.connection.health_listen, Some("0.0.0.0:8110".parse().unwrap()));
    }
}
