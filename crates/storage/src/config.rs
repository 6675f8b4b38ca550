//! Storage service configuration (`storage.toml`, env `MAILFLEET_STORAGE_*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    /// gRPC for gateways and the queue (Directory, Mailboxes, Messages, Locks).
    pub listen: SocketAddr,
    /// gRPC Admin API for mailctl; loopback by default so it is not exposed.
    pub admin_listen: SocketAddr,
    /// When set, mailctl must also send `authorization: Bearer <token>`
    /// (on top of its `mailctl` certificate, which the Admin API always
    /// requires).
    pub admin_token: Option<String>,
    /// Storage's own fleet certificate and the CA every caller's must chain
    /// to (`mailctl pki init`): both listeners accept mutual TLS only, and
    /// the caller's certificate decides which calls it may make
    /// (`auth::identity`). Required: storage does not start without it.
    pub identity: mailfleet_runtime::grpc::FleetIdentity,
    pub database_url: String,
    /// Postgres connections; each append or delivery holds one briefly.
    pub database_max_connections: u32,
    /// Root of the content-addressed blob store.
    pub blob_dir: PathBuf,
    /// NATS server, or every server of a cluster, comma-separated.
    pub nats_url: String,
    /// Storage's NATS identity (docs/nats.md).
    pub nats_tls: mailfleet_runtime::nats::NatsTls,
    /// Events go to `<events_prefix>.<account_id>`.
    pub events_prefix: String,
    /// Largest message accepted by Append/PutBlob, in octets.
    pub max_message_size: u64,
    /// Minimum argon2id-checked password length for new passwords.
    pub min_password_length: usize,
    /// On shutdown, how long calls in progress get to finish; connections
    /// still open after it are closed (a client that never closes its
    /// connection must not keep storage from stopping).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The blob sweep (see `crate::sweep`).
    pub sweep: crate::sweep::SweepConfig,
    /// Password guessing: failed logins counted per client address and
    /// per account, for every gateway replica and protocol.
    pub auth_throttle: AuthThrottleConfig,
    /// How long a session token from Authenticate stays valid; sessions
    /// renew theirs (RenewSession) well before it runs out.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// The key that signs session tokens, as hex or base64 (at least 32
    /// octets), the same file for every replica. Unset: a key generated at
    /// the first start and kept in Postgres, shared by every replica.
    pub session_key_file: Option<PathBuf>,
}

/// When failed logins slow down, and then refuse, further attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthThrottleConfig {
    /// How long a failure counts.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Failures from one address in the window after which each further
    /// attempt from it waits, and its attempts are taken one at a time.
    pub delay_after: u32,
    /// The first wait; it doubles with every further failure ...
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// ... up to this.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Failures from one address in the window after which its attempts
    /// are refused unchecked (the gateways answer "try later").
    pub refuse_after: u32,
    /// Failures against one account in the window (from any address) after
    /// which addresses that failed on it are refused for it; an address
    /// with no failure on it (its owner, elsewhere) still logs in.
    pub account_refuse_after: u32,
}

impl Default for AuthThrottleConfig {
    fn default() -> Self {
        AuthThrottleConfig {
            window: Duration::from_secs(15 * 60),
            // A user mistyping a few times is not slowed; a phone with an
            // old password retrying every few minutes is, a little.
            delay_after: 5,
            delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(15),
            // A big NAT can hold many users with stale passwords: generous.
            refuse_after: 50,
            account_refuse_after: 10,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            listen: "127.0.0.1:50051".parse().expect("static address"),
            admin_listen: "127.0.0.1:50052".parse().expect("static address"),
            admin_token: None,
            identity: Default::default(),
            database_url: "postgres://postgres@127.0.0.1:5432/mailfleet".into(),
            database_max_connections: 16,
            blob_dir: PathBuf::from("var/blobs"),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_tls: Default::default(),
            events_prefix: "mail.events".into(),
            // 50 MiB, a little above common provider limits (Gmail 25 MB, M365 35 MB).
            max_message_size: 50 * 1024 * 1024,
            min_password_length: 8,
            // Within compose's 45 s stop grace period.
            shutdown_grace: Duration::from_secs(30),
            sweep: crate::sweep::SweepConfig::default(),
            auth_throttle: AuthThrottleConfig::default(),
            // Short enough that a token read off a gateway is soon useless
            // and a disabled account's sessions end within it; a session
            // renews at half of it.
            session_ttl: Duration::from_secs(15 * 60),
            session_key_file: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example file an operator starts from loads, durations included.
    #[test]
    fn the_example_file_loads() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/config/storage.toml");
        let c: StorageConfig =
            mailfleet_runtime::config::load(Some(&file), "MF_STORAGE_TEST_EXAMPLE_").expect("example loads");
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.max_message_size, 50 * 1024 * 1024);
        assert_eq!(c.sweep, crate::sweep::SweepConfig::default());
        assert_eq!(c.auth_throttle, AuthThrottleConfig::default());
        assert_eq!(c.session_ttl, Duration::from_secs(15 * 60));
    }
}
