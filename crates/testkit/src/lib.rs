//! Test harness shared by every crate's integration tests.
//!
//! Each `TestEnv` gets its own Postgres database (`mf_t_<uuid>`, dropped at
//! the end), its own NATS subject prefix and JetStream names, its own blob
//! directory and an in-process storage service on `127.0.0.1:0`. Tests can
//! therefore run in parallel, and runs never see each other's data.
//!
//! Postgres and NATS must be reachable (the test command, `scripts/test.sh`,
//! starts or installs them). Override with `MAILFLEET_TEST_PG` (a URL of any
//! database on the server, used to create the test database) and
//! `MAILFLEET_TEST_NATS`.

pub mod alloc;
pub mod process;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mailfleet_proto::storage::v1 as pb;
use mailfleet_runtime::grpc::FleetIdentity;
use mailfleet_runtime::session::SessionToken;
use pb::admin_client::AdminClient;
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use storage::{RunningStorage, StorageConfig};
use tokio_util::sync::CancellationToken;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

/// A channel whose calls carry an account's session token.
pub type Scoped = InterceptedService<Channel, SessionToken>;

pub fn pg_base_url() -> String {
    std::env::var("MAILFLEET_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn nats_url() -> String {
    std::env::var("MAILFLEET_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// The fleet PKI every test of this process uses (`mailctl pki init`'s
/// layout, made once, in a directory removed with the process's temp
/// files): storage requires mutual TLS, so every test client and service
/// is some fleet identity.
pub fn fleet_pki() -> &'static Path {
    static PKI: OnceLock<tempfile::TempDir> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("mailfleet-pki-").tempdir().expect("temp dir");
        mailfleet_runtime::pki::init(dir.path(), false).expect("create the test PKI");
        dir
    })
    .path()
}

/// Identity `name` (`storage`, `smtp-ingress`, `delivery-queue`,
/// `imap-gateway`, `pop3-gateway`, `mailctl`) of [`fleet_pki`].
pub fn identity(name: &str) -> FleetIdentity {
    FleetIdentity::in_dir(fleet_pki(), name)
}

/// The settings that give a service process identity `name`: its
/// `identity.*` keys as environment variables under `prefix`
/// (`MAILFLEET_SMTP_`).
pub fn identity_env(prefix: &str, name: &str) -> Vec<(String, String)> {
    let id = identity(name);
    let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string()).unwrap_or_default();
    vec![
        (format!("{prefix}IDENTITY__CA_FILE"), path(id.ca_file)),
        (format!("{prefix}IDENTITY__CERT_FILE"), path(id.cert_file)),
        (format!("{prefix}IDENTITY__KEY_FILE"), path(id.key_file)),
    ]
}

/// A channel to storage at `url` as identity `name`.
pub async fn channel_as(url: &str, name: &str) -> Channel {
    mailfleet_runtime::grpc::storage_endpoint(url, &identity(name), None)
        .expect("storage endpoint")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to storage at {url} as {name}: {e}"))
}

/// A short unique token for names (databases, subjects, streams).
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

pub struct TestEnv {
    /// Unique to this test: use it in stream, consumer and subject names.
    pub id: String,
    pub database_url: String,
    pub nats_url: String,
    /// Storage publishes events on `<events_prefix>.<account_id>`.
    pub events_prefix: String,
    pub blob_dir: PathBuf,
    db_name: String,
    storage: Option<(RunningStorage, CancellationToken)>,
    /// Changes this test makes to storage's configuration.
    storage_tweak: fn(&mut StorageConfig),
    _tmp: tempfile::TempDir,
}

impl TestEnv {
    /// A fresh database and a storage service serving on loopback.
    pub async fn start() -> TestEnv {
        TestEnv::start_with(|_| {}).await
    }

    /// `start`, with storage's configuration changed by `tweak` (also on restarts).
    pub async fn start_with(tweak: fn(&mut StorageConfig)) -> TestEnv {
        mailfleet_runtime::init_crypto();
        let id = unique();
        let db_name = format!("mf_t_{id}");
        let base: PgConnectOptions = pg_base_url().parse().expect("MAILFLEET_TEST_PG is a Postgres URL");
        let mut conn = base.connect().await.expect("Postgres is reachable (run scripts/test.sh, which starts it)");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db_name}\"")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let database_url = base.database(&db_name).to_url_lossy().to_string();
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut env = TestEnv {
            events_prefix: format!("t{id}.events"),
            id,
            database_url,
            nats_url: nats_url(),
            blob_dir: tmp.path().join("blobs"),
            db_name,
            storage: None,
            storage_tweak: tweak,
            _tmp: tmp,
        };
        env.start_storage().await;
        env
    }

    /// The configuration the in-process storage runs with.
    pub fn storage_config(&self) -> StorageConfig {
        let mut config = StorageConfig {
            listen: "127.0.0.1:0".parse().expect("static"),
            admin_listen: "127.0.0.1:0".parse().expect("static"),
            database_url: self.database_url.clone(),
            database_max_connections: 8,
            blob_dir: self.blob_dir.clone(),
            nats_url: self.nats_url.clone(),
            events_prefix: self.events_prefix.clone(),
            identity: identity("storage"),
            // `stop_storage` simulates an outage: no need to wait long for
            // connections a test keeps open.
            shutdown_grace: std::time::Duration::from_secs(2),
            // No queue of its own: a test that sweeps with jobs waiting
            // names its streams here.
            sweep: storage::sweep::SweepConfig { queue_streams: Vec::new(), ..Default::default() },
            ..StorageConfig::default()
        };
        (self.storage_tweak)(&mut config);
        config
    }

    /// (Re)start storage; after a restart it listens on a new port.
    pub async fn start_storage(&mut self) {
        let token = CancellationToken::new();
        let running = storage::serve(self.storage_config(), token.clone()).await.expect("storage starts");
        self.storage = Some((running, token));
    }

    /// Stop storage (simulates an outage); `storage_addr` keeps the old port.
    pub async fn stop_storage(&mut self) {
        if let Some((running, token)) = self.storage.take() {
            token.cancel();
            let _ = running.task.await;
            self.storage = Some((
                RunningStorage {
                    addr: running.addr,
                    admin_addr: running.admin_addr,
                    store: running.store,
                    task: tokio::spawn(async { Ok(()) }),
                },
                token,
            ));
        }
    }

    fn running(&self) -> &RunningStorage {
        &self.storage.as_ref().expect("storage started").0
    }

    pub fn storage_addr(&self) -> SocketAddr {
        self.running().addr
    }

    /// `https://127.0.0.1:port` for gRPC clients (with a fleet identity:
    /// [`identity`]).
    pub fn storage_url(&self) -> String {
        format!("https://{}", self.storage_addr())
    }

    pub fn admin_url(&self) -> String {
        format!("https://{}", self.running().admin_addr)
    }

    /// Direct access to the store (for assertions on Postgres state).
    pub fn store(&self) -> &storage::Store {
        &self.running().store
    }

    /// A channel to storage's service listener as identity `name`: what
    /// that service may call is what the test may call.
    pub async fn channel_as(&self, name: &str) -> Channel {
        channel_as(&self.storage_url(), name).await
    }

    /// The Admin API, as mailctl.
    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(channel_as(&self.admin_url(), "mailctl").await)
    }

    pub async fn nats(&self) -> async_nats::Client {
        async_nats::connect(self.nats_url.as_str()).await.expect("NATS is reachable (run scripts/test.sh)")
    }

    /// A session token for `account_id`, minted with storage's own key:
    /// what a login to that account returns.
    pub fn session_token(&self, account_id: i64) -> SessionToken {
        let store = self.store();
        let token = store.sessions.mint(account_id, std::time::SystemTime::now() + store.sessions.ttl());
        SessionToken::fixed(&token).expect("storage mints ASCII tokens")
    }

    /// `message` as a call of `account_id`'s session.
    pub fn as_account<T>(&self, account_id: i64, message: T) -> tonic::Request<T> {
        self.session_token(account_id).attach(tonic::Request::new(message))
    }

    /// A channel to storage as imap-gateway (which may call every mailbox
    /// and message RPC a session makes) whose calls carry a session token
    /// for `account_id` (unless a call brings its own, see `as_account`).
    pub async fn session_channel(&self, account_id: i64) -> Scoped {
        self.session_channel_as("imap-gateway", account_id).await
    }

    /// [`Self::session_channel`] as identity `name`.
    pub async fn session_channel_as(&self, name: &str, account_id: i64) -> Scoped {
        InterceptedService::new(self.channel_as(name).await, self.session_token(account_id))
    }

    /// Create the domain if needed, then the account.
    pub async fn add_account(&self, address: &str, password: &str) -> pb::Account {
        add_account(&mut self.admin().await, address, password).await
    }
}

/// Through the Admin API: create the domain if needed, then the account.
pub async fn add_account(admin: &mut AdminClient<Channel>, address: &str, password: &str) -> pb::Account {
    let domain = address.rsplit_once('@').map(|(_, d)| d).expect("address has a domain");
    match admin.add_domain(pb::AddDomainRequest { name: domain.into() }).await {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::AlreadyExists => {}
        Err(s) => panic!("add domain: {s}"),
    }
    admin
        .add_account(pb::AddAccountRequest { address: address.into(), password: password.into(), quota_bytes: 0 })
        .await
        .expect("add account")
        .into_inner()
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some((_, token)) = &self.storage {
            token.cancel();
        }
        drop_database(&self.db_name);
    }
}

/// Drop a test database (and end its connections). Runs on a thread and
/// runtime of its own, so it can be called from `Drop`, which cannot await
/// and may run while the test's runtime shuts down.
pub fn drop_database(db: &str) {
    let db = db.to_string();
    let base = pg_base_url();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async move {
            let Ok(opts) = base.parse::<PgConnectOptions>() else {
                return;
            };
            if let Ok(mut conn) = opts.connect().await {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)")))
                    .execute(&mut conn)
                    .await;
            }
        });
    })
    .join();
}
