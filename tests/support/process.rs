//! Service processes: start, SIGTERM, restart, with logs kept per process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mailfleet_proto::storage::v1::admin_client::AdminClient;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long a process gets to come up or to exit.
pub const WAIT: Duration = Duration::from_secs(60);

/// The directory holding the workspace's binaries: this test runs from
/// `target/<profile>/deps/`, the binaries sit in `target/<profile>/`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf()
}

/// A service binary, built by this run. `cargo test` builds the binaries
/// of the package under test only; these tests start other packages'
/// binaries, which without this would be whatever an earlier build left in
/// target/ — and a test would pass or fail on stale code. Once per test
/// process, the same build as `cargo test --workspace` (so the same
/// features, and no work at all under scripts/test.sh, which just ran it).
fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = bin_dir();
    BUILT.get_or_init(|| build_workspace(&dir));
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing after the build", path.display());
    path
}

fn build_workspace(bin_dir: &Path) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo.args(["test", "--workspace", "--no-run", "--locked", "--quiet", "--manifest-path"]).arg(&manifest);
    match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cargo.arg("--release");
        }
        Some(profile) => {
            cargo.args(["--profile", profile]);
        }
        None => panic!("no profile directory in {}", bin_dir.display()),
    }
    let started = Instant::now();
    let out = cargo.output().expect("run cargo");
    assert!(
        out.status.success(),
        "building the workspace's binaries failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("workspace binaries checked/built in {:?}", started.elapsed());
}

/// Wait until `GET /healthz` on `addr` answers 200.
pub async fn wait_healthy(addr: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await;
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer).await;
            if answer.starts_with(b"HTTP/1.0 200") {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr} never became healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One service process. It binds port 0 at its first start and reports
/// the ports it got in its ready file; from then on its configuration
/// names those ports, so a restart comes back on the same ones.
pub struct Service {
    pub name: String,
    binary: &'static str,
    env: BTreeMap<String, String>,
    child: Option<Child>,
    log: PathBuf,
    ready_file: PathBuf,
    /// Every listener: port name, the environment variable setting it,
    /// and its key in the ready file.
    listeners: Vec<(&'static str, String, String)>,
    /// Named listening addresses ("mx", "imap", "health", ...), known
    /// after the first start.
    pub ports: BTreeMap<&'static str, SocketAddr>,
}

impl Service {
    pub fn port(&self, name: &str) -> SocketAddr {
        *self.ports.get(name).unwrap_or_else(|| panic!("{} has no port {name}", self.name))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    /// Start the process and wait until it serves.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "{} already runs", self.name);
        match std::fs::remove_file(&self.ready_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("removing {}: {e}", self.ready_file.display()),
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        let mut child = Command::new(binary(self.binary))
            .envs(&self.env)
            .env_remove("MAILFLEET_STORAGE_CONFIG")
            .env("MAILFLEET_READY_FILE", &self.ready_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.name));
        let bound = mailfleet_testkit::process::wait_ready(&mut child, &self.ready_file, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}; log:\n{}", self.name, self.log_tail()));
        self.child = Some(child);
        for (port, variable, config_key) in &self.listeners {
            let addr = mailfleet_testkit::process::listener(&bound, config_key);
            match self.ports.insert(port, addr) {
                None => {
                    self.env.insert(variable.clone(), addr.to_string());
                }
                Some(before) => assert_eq!(before, addr, "{} came back on another {port} port", self.name),
            }
        }
        if let Some(health) = self.ports.get("health") {
            wait_healthy(*health).await;
        }
    }

    /// SIGTERM (what `docker compose stop` sends) and wait for exit status 0.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = child.id().expect("running child has a pid");
        let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
        assert!(status.success(), "kill -TERM {pid}");
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {WAIT:?} of SIGTERM", self.name))
            .expect("wait");
        assert!(status.success(), "{} exited with {status}; log:\n{}", self.name, self.log_tail());
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }

    /// SIGKILL: a crash or a power cut of the process — nothing is
    /// finished, flushed or handed back.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap_or_else(|e| panic!("SIGKILL {}: {e}", self.name));
        }
    }

    /// The last lines the process wrote (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// One test's system: a database of its own, and a NATS of its own
/// (started with storage unless a test set `nats_url` to a cluster it
/// started) run as deployed — TLS, one user per service with the shipped
/// permissions — so the JetStream names are the default ones and every
/// service connects with its own certificate from `pki`.
pub struct System {
    pub id: String,
    pub dir: tempfile::TempDir,
    pub database_url: String,
    db_name: String,
    /// The fleet certificates (`dir/pki`, `mailctl pki init`'s layout).
    pub pki: crate::nats::Pki,
    /// Empty until NATS runs.
    pub nats_url: String,
    nats: Option<crate::nats::NatsCluster>,
    pub events_prefix: String,
    /// OTLP/gRPC endpoint every service exports to, when set.
    pub otlp: Option<String>,
    pub storage: Option<Service>,
    /// Settings every service with a matching prefix starts with (`set_env`).
    extra_env: BTreeMap<String, String>,
}

impl System {
    pub fn new(otlp: Option<String>) -> System {
        let id = mailfleet_testkit::unique();
        let db_name = format!("mf_sys_{id}");
        let base = mailfleet_testkit::pg_base_url();
        let database_url = match base.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{db_name}"),
            None => panic!("MAILFLEET_TEST_PG must be a URL with a database"),
        };
        let dir = tempfile::tempdir().expect("temp dir");
        System {
            events_prefix: "mail.events".into(),
            database_url,
            db_name,
            pki: crate::nats::Pki::create(&dir.path().join("pki")),
            nats_url: String::new(),
            nats: None,
            dir,
            otlp,
            id,
            storage: None,
            extra_env: BTreeMap::new(),
        }
    }

    /// A setting for every service started from now on whose variables
    /// share its prefix (`MAILFLEET_IMAP_MAX_AUTH_FAILURES`: imap-gateway).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.insert(key.to_string(), value.to_string());
    }

    fn service(&self, name: &str, binary: &'static str, prefix: &str, ports: &[(&'static str, &str)]) -> Service {
        let mut env = BTreeMap::new();
        let mut listeners = Vec::new();
        for (port, key) in ports {
            // The kernel picks the port; the ready file tells which.
            let variable = format!("{prefix}{key}");
            env.insert(variable.clone(), "127.0.0.1:0".to_string());
            listeners.push((*port, variable, key.to_ascii_lowercase()));
        }
        env.insert("RUST_LOG".into(), "info".into());
        env.extend(self.extra_env.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(k, v)| (k.clone(), v.clone())));
        match &self.otlp {
            Some(endpoint) => {
                env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone());
                // Spans leave quickly; metrics are not what these tests read.
                env.insert("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into());
                env.insert("OTEL_METRIC_EXPORT_INTERVAL".into(), "600000".into());
                env.insert("OTEL_SERVICE_INSTANCE_ID".into(), name.into());
            }
            None => {
                env.insert("OTEL_EXPORTER_OTLP_ENDPOINT".into(), String::new());
            }
        }
        Service {
            name: name.to_string(),
            binary,
            env,
            child: None,
            log: self.dir.path().join(format!("{name}.log")),
            ready_file: self.dir.path().join(format!("{name}.ready")),
            listeners,
            ports: BTreeMap::new(),
        }
    }

    /// The NATS address and identity (certificate) of service `binary`.
    fn connect_to_nats(&self, s: &mut Service, prefix: &str) {
        assert!(!self.nats_url.is_empty(), "NATS runs once storage does");
        s.env.insert(format!("{prefix}NATS_URL"), self.nats_url.clone());
        s.env.extend(self.pki.nats_tls_env(prefix, s.binary));
    }

    /// A service's storage address, and where its development certificate
    /// goes (shared by the gateways of one test).
    fn connect_to_storage(&self, s: &mut Service, prefix: &str) {
        s.env.insert(format!("{prefix}STORAGE_URL"), self.storage_url());
        s.env.extend(self.identity_env(prefix, s.binary));
        s.env.insert(format!("{prefix}TLS__SELF_SIGNED_DIR"), self.dir.path().join("tls").display().to_string());
    }

    /// A NATS client connected as identity `name` (`mailctl` may read the
    /// queue).
    pub async fn nats_as(&self, name: &str) -> async_nats::Client {
        self.pki.connect(&self.nats_url, name).await.unwrap_or_else(|e| panic!("NATS as {name}: {e}"))
    }

    pub fn storage_url(&self) -> String {
        format!("https://{}", self.storage.as_ref().expect("storage started").port("grpc"))
    }

    pub fn admin_url(&self) -> String {
        format!("https://{}", self.storage.as_ref().expect("storage started").port("admin"))
    }

    /// A service's fleet identity `name` (its certificate in `pki`) as
    /// its `identity.*` settings.
    fn identity_env(&self, prefix: &str, name: &str) -> Vec<(String, String)> {
        let id = mailfleet_runtime::grpc::FleetIdentity::in_dir(&self.pki.dir, name);
        let path = |p: Option<std::path::PathBuf>| p.expect("set").display().to_string();
        vec![
            (format!("{prefix}IDENTITY__CA_FILE"), path(id.ca_file)),
            (format!("{prefix}IDENTITY__CERT_FILE"), path(id.cert_file)),
            (format!("{prefix}IDENTITY__KEY_FILE"), path(id.key_file)),
        ]
    }

    /// The Admin API, as mailctl.
    pub async fn admin(&self) -> AdminClient<tonic::transport::Channel> {
        let identity = mailfleet_runtime::grpc::FleetIdentity::in_dir(&self.pki.dir, "mailctl");
        let endpoint =
            mailfleet_runtime::grpc::storage_endpoint(&self.admin_url(), &identity, None).expect("admin URL");
        AdminClient::new(endpoint.connect().await.expect("admin API"))
    }

    /// Storage with a database of its own (it creates it and migrates).
    pub async fn start_storage(&mut self) {
        if self.nats_url.is_empty() {
            let nats = crate::nats::NatsCluster::single(&self.dir.path().join("nats"), &self.pki).await;
            self.nats_url = nats.url();
            self.nats = Some(nats);
        }
        let mut s =
            self.service("storage", "storage", "MAILFLEET_STORAGE_", &[("grpc", "LISTEN"), ("admin", "ADMIN_LISTEN")]);
        s.env.insert("MAILFLEET_STORAGE_DATABASE_URL".into(), self.database_url.clone());
        self.connect_to_nats(&mut s, "MAILFLEET_STORAGE_");
        s.env.extend(self.identity_env("MAILFLEET_STORAGE_", "storage"));
        s.env.insert("MAILFLEET_STORAGE_EVENTS_PREFIX".into(), self.events_prefix.clone());
        s.env.insert("MAILFLEET_STORAGE_BLOB_DIR".into(), self.dir.path().join("blobs").display().to_string());
        s.start().await;
        self.storage = Some(s);
    }

    pub fn storage(&mut self) -> &mut Service {
        self.storage.as_mut().expect("storage started")
    }

    /// A delivery-queue replica (replicas share the durable consumer).
    pub async fn start_queue(&self, name: &str) -> Service {
        let mut s = self.service(name, "delivery-queue", "MAILFLEET_QUEUE_", &[("health", "HEALTH_LISTEN")]);
        s.env.insert("MAILFLEET_QUEUE_STORAGE_URL".into(), self.storage_url());
        s.env.extend(self.identity_env("MAILFLEET_QUEUE_", "delivery-queue"));
        self.connect_to_nats(&mut s, "MAILFLEET_QUEUE_");
        // Retries come quickly in a test (storage restarts).
        s.env.insert("MAILFLEET_QUEUE_RETRY_INITIAL".into(), "1s".into());
        s.env.insert("MAILFLEET_QUEUE_RETRY_MAX".into(), "2s".into());
        s.start().await;
        s
    }

    pub async fn start_smtp(&self, name: &str) -> Service {
        let mut s = self.service(
            name,
            "smtp-ingress",
            "MAILFLEET_SMTP_",
            &[
                ("mx", "MX_LISTEN"),
                ("submission", "SUBMISSION_LISTEN"),
                ("submissions", "SUBMISSIONS_LISTEN"),
                ("health", "HEALTH_LISTEN"),
            ],
        );
        s.env.insert("MAILFLEET_SMTP_HOSTNAME".into(), format!("{name}.mailfleet.test"));
        // No DNS on a test machine: SPF/DKIM/DMARC lookups would only wait.
        s.env.insert("MAILFLEET_SMTP_INBOUND_AUTH__ENABLED".into(), "false".into());
        self.connect_to_storage(&mut s, "MAILFLEET_SMTP_");
        self.connect_to_nats(&mut s, "MAILFLEET_SMTP_");
        s.start().await;
        s
    }

    pub async fn start_imap(&self, name: &str) -> Service {
        let mut s = self.service(
            name,
            "imap-gateway",
            "MAILFLEET_IMAP_",
            &[("imap", "LISTEN"), ("imaps", "TLS_LISTEN"), ("health", "HEALTH_LISTEN")],
        );
        s.env.insert("MAILFLEET_IMAP_EVENTS_PREFIX".into(), self.events_prefix.clone());
        self.connect_to_storage(&mut s, "MAILFLEET_IMAP_");
        self.connect_to_nats(&mut s, "MAILFLEET_IMAP_");
        s.start().await;
        s
    }

    pub async fn start_pop3(&self, name: &str) -> Service {
        let mut s = self.service(
            name,
            "pop3-gateway",
            "MAILFLEET_POP3_",
            &[("pop3", "LISTEN"), ("pop3s", "TLS_LISTEN"), ("health", "HEALTH_LISTEN")],
        );
        s.env.insert("MAILFLEET_POP3_HOSTNAME".into(), format!("{name}.mailfleet.test"));
        // pop3-gateway does not use NATS.
        self.connect_to_storage(&mut s, "MAILFLEET_POP3_");
        s.start().await;
        s
    }

    /// Create the domain if needed, then the account, through the Admin API.
    pub async fn add_account(&self, address: &str, password: &str) {
        let mut admin = self.admin().await;
        mailfleet_testkit::add_account(&mut admin, address, password).await;
    }
}

impl Drop for System {
    fn drop(&mut self) {
        // Processes die with their handles (kill_on_drop); storage first
        // goes so that the database can be dropped.
        self.storage = None;
        mailfleet_testkit::drop_database(&self.db_name);
    }
}
