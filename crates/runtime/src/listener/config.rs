//! The connection settings every listening service shares, under the same
//! names (documented once, in the README's "Connection limits" table).
//! Each service flattens [`ConnectionConfig`] into its own configuration, so
//! the keys sit at its top level (`MAILFLEET_IMAP_MAX_CONNECTIONS_PER_IP`),
//! and sets its own defaults (an IMAP client may idle 30 minutes, an SMTP
//! client 5).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proxy::ProxyProtocol;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConnectionConfig {
    /// Connections open at once on all the service's listeners together;
    /// beyond it new ones are refused with the protocol's "try later".
    /// 0: no limit.
    pub max_connections: usize,
    /// Connections open at once from one client address (the real client,
    /// after the PROXY header). 0: no limit.
    pub max_connections_per_ip: usize,
    /// Failed authentications on one connection before it is closed.
    pub max_auth_failures: u32,
    /// Pause before answering a failed authentication.
    #[serde(with = "humantime_serde")]
    pub auth_failure_delay: Duration,
    /// How long a client may stay silent before the session ends (the
    /// protocol's autologout; each RFC sets a minimum).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a write may wait for a client that does not read.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// How long a TLS handshake (implicit TLS or after STARTTLS) may take.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// PROXY protocol v1/v2 from a load balancer, on every listener: which
    /// peers may (and then must) send it. Off by default.
    pub proxy_protocol: ProxyProtocol,
    /// How long a trusted load balancer gets to send its PROXY header.
    #[serde(with = "humantime_serde")]
    pub proxy_header_timeout: Duration,
    /// Plain-HTTP `GET /healthz` endpoint (200 while serving); unset: none.
    pub health_listen: Option<SocketAddr>,
    /// On SIGTERM, how long sessions get to finish what they are doing
    /// before they are cut off.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ConnectionConfig {
    /// Values a service overrides where its RFC says otherwise.
    fn default() -> Self {
        ConnectionConfig {
            max_connections: 1000,
            // Generous for a NAT'd office, small enough that one host
            // cannot take every slot.
            max_connections_per_ip: 50,
            max_auth_failures: 3,
            auth_failure_delay: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10 * 60),
            // A client on a slow link reads a 64 KiB buffer in far less;
            // one that reads nothing for this long is not coming back.
            write_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(30),
            proxy_protocol: ProxyProtocol::default(),
            proxy_header_timeout: crate::proxy::DEFAULT_HEADER_TIMEOUT,
            health_listen: None,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Keys renamed when the three gateways' settings got one set of names;
/// `config::load_service` still reads the old ones (and logs the new name).
pub const RENAMED: &[(&str, &str)] = &[
    // pop3-gateway
    ("autologout", "idle_timeout"),
    ("bad_auth_delay", "auth_failure_delay"),
    ("max_bad_auth", "max_auth_failures"),
    ("max_connections_per_client", "max_connections_per_ip"),
    // imap-gateway
    ("max_bad_logins", "max_auth_failures"),
    ("bad_login_delay", "auth_failure_delay"),
    // smtp-ingress
    ("timeouts.command", "idle_timeout"),
    ("timeouts.tls_handshake", "tls_handshake_timeout"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    #[serde(default)]
    struct Service {
        listen: String,
        #[serde(flatten)]
        connection: ConnectionConfig,
    }

    impl Default for Service {
        fn default() -> Self {
            Service {
                listen: "127.0.0.1:1".into(),
                connection: ConnectionConfig { idle_timeout: Duration::from_secs(31 * 60), ..Default::default() },
            }
        }
    }

    #[test]
    fn flattened_keys_come_from_file_and_environment_with_service_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "max_connections = 7\nwrite_timeout = \"5s\"\n[proxy_protocol]\nenabled = true\n")
            .unwrap();
        // SAFETY: the variable names are unique to this test.
        unsafe {
            std::env::set_var("MF_LISTENER_TEST_A_MAX_CONNECTIONS_PER_IP", "3");
            std::env::set_var("MF_LISTENER_TEST_A_PROXY_PROTOCOL__TRUSTED", "10.0.0.0/8,::1");
            std::env::set_var("MF_LISTENER_TEST_A_HEALTH_LISTEN", "127.0.0.1:8110");
        }
        let c: Service = crate::config::load(Some(&path), "MF_LISTENER_TEST_A_").unwrap();
        assert_eq!(c.connection.max_connections, 7);
        assert_eq!(c.connection.max_connections_per_ip, 3);
        assert_eq!(c.connection.write_timeout, Duration::from_secs(5));
        assert_eq!(c.connection.idle_timeout, Duration::from_secs(31 * 60), "the service's default");
        assert_eq!(c.connection.proxy_protocol.trusted_networks().unwrap().len(), 2);
        assert_eq!(c.connection.health_listen, Some("127.0.0.1:8110".parse().unwrap()));
    }

    #[test]
    fn old_names_still_work() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "autologout = \"15m\"\n[timeouts]\ntls_handshake = \"9s\"\n").unwrap();
        // SAFETY: the variable names are unique to this test.
        unsafe { std::env::set_var("MF_LISTENER_TEST_B_MAX_CONNECTIONS_PER_CLIENT", "4") };
        let c: Service = crate::config::load_service(Some(&path), "MF_LISTENER_TEST_B_").unwrap();
        assert_eq!(c.connection.idle_timeout, Duration::from_secs(15 * 60));
        assert_eq!(c.connection.tls_handshake_timeout, Duration::from_secs(9));
        assert_eq!(c.connection.max_connections_per_ip, 4);
    }
}
