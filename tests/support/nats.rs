//! NATS of this test's own, configured as the system runs it: TLS with the
//! fleet's certificates, every client a user by its certificate
//! (`verify_and_map`), each user's permissions from the shipped
//! `deploy/nats/auth.conf`. One server ([`NatsCluster::single`], what every
//! [`System`](crate::System) gets), or a cluster of three `nats-server`
//! processes for tests that kill a server (JetStream, a store directory
//! each under the test's temporary directory). Every server binds port 0
//! and reports its ports (`ports_file_dir`); one started again comes back
//! on the same ports with routes to the other two, as a server of a real
//! cluster does after a crash.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// How long a server gets to come up, and the cluster to be ready.
const WAIT: Duration = Duration::from_secs(60);

/// Debian's nats-server (scripts/test.sh installs it), or one on the PATH.
pub fn nats_server() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("nats-server")).find(|p| p.is_file()));
    let path = on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"));
    assert!(path.is_file(), "nats-server is not installed (scripts/test.sh installs Debian's package)");
    path
}

struct Node {
    name: String,
    dir: PathBuf,
    child: Option<Child>,
    /// Client, cluster and monitoring addresses, known after the first start.
    client: Option<SocketAddr>,
    route: Option<SocketAddr>,
    monitor: Option<SocketAddr>,
}

/// The identities of the fleet (as `mailctl pki init` makes them).
pub const IDENTITIES: [&str; 7] =
    ["storage", "smtp-ingress", "delivery-queue", "imap-gateway", "pop3-gateway", "mailctl", "nats"];

/// A fleet CA and a certificate for every identity, in the layout of
/// `mailctl pki init DIR`: `DIR/ca.crt`, `DIR/NAME.crt`, `DIR/NAME.key`
/// (subject and DNS names NAME, localhost, 127.0.0.1).
pub struct Pki {
    pub dir: PathBuf,
    pub ca: mailfleet_testkit::tls::TestCa,
}

impl Pki {
    pub fn create(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).expect("pki dir");
        let ca = mailfleet_testkit::tls::TestCa::new();
        std::fs::write(dir.join("ca.crt"), &ca.cert_pem).expect("write ca.crt");
        let pki = Pki { dir: dir.to_path_buf(), ca };
        for name in IDENTITIES {
            pki.issue(name);
        }
        pki
    }

    /// (Another) certificate for `name` from this CA, written as NAME.crt/.key.
    pub fn issue(&self, name: &str) {
        let (cert, key) = self.ca.issue(&[name, "localhost", "127.0.0.1"]);
        std::fs::write(self.dir.join(format!("{name}.crt")), cert).expect("write certificate");
        std::fs::write(self.dir.join(format!("{name}.key")), key).expect("write key");
    }

    /// A service's `nats_tls` settings for identity `name`.
    pub fn nats_tls(&self, name: &str) -> mailfleet_runtime::nats::NatsTls {
        mailfleet_runtime::nats::NatsTls {
            ca_file: Some(self.dir.join("ca.crt")),
            cert_file: Some(self.dir.join(format!("{name}.crt"))),
            key_file: Some(self.dir.join(format!("{name}.key"))),
            ..Default::default()
        }
    }

    /// The same as environment variables of a service (`prefix` e.g.
    /// `MAILFLEET_SMTP_`).
    pub fn nats_tls_env(&self, prefix: &str, name: &str) -> Vec<(String, String)> {
        let tls = self.nats_tls(name);
        let path = |p: Option<PathBuf>| p.expect("set").display().to_string();
        vec![
            (format!("{prefix}NATS_TLS__CA_FILE"), path(tls.ca_file)),
            (format!("{prefix}NATS_TLS__CERT_FILE"), path(tls.cert_file)),
            (format!("{prefix}NATS_TLS__KEY_FILE"), path(tls.key_file)),
        ]
    }

    /// A client connected to `url` as identity `name`.
    pub async fn connect(&self, url: &str, name: &str) -> Result<async_nats::Client, String> {
        let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(10));
        mailfleet_runtime::nats::connect(url, &self.nats_tls(name), name, options).await.map_err(|e| e.to_string())
    }

    /// The server side: TLS with the `nats` certificate, client
    /// certificates required and mapped to users, the shipped users and
    /// permissions (`auth.conf` is copied next to the configuration, since
    /// an include is relative to the including file).
    fn server_config(&self, conf_dir: &Path) -> String {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/auth.conf");
        std::fs::copy(&shipped, conf_dir.join("auth.conf")).expect("copy deploy/nats/auth.conf");
        let file = |name: &str| self.dir.join(name).display().to_string();
        // A handshake on a loaded 2-core machine can take longer than the
        // default half second.
        format!(
            "tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify_and_map: true, timeout: 10 }}\n\
             include ./auth.conf\n",
            file("nats.crt"),
            file("nats.key"),
            file("ca.crt"),
        )
    }
}

pub struct NatsCluster {
    nodes: Vec<Node>,
    /// The TLS and users block every server's configuration ends with.
    auth: String,
}

impl NatsCluster {
    /// Three servers `n1`..`n3` under `dir`, ready for JetStream.
    pub async fn start(dir: &Path, pki: &Pki) -> NatsCluster {
        NatsCluster::start_n(dir, pki, 3).await
    }

    /// One server, no cluster.
    pub async fn single(dir: &Path, pki: &Pki) -> NatsCluster {
        NatsCluster::start_n(dir, pki, 1).await
    }

    async fn start_n(dir: &Path, pki: &Pki, n: usize) -> NatsCluster {
        std::fs::create_dir_all(dir).expect("nats dir");
        let mut cluster = NatsCluster {
            auth: pki.server_config(dir),
            nodes: (1..=n)
                .map(|i| Node {
                    name: format!("n{i}"),
                    dir: dir.join(format!("nats-n{i}")),
                    child: None,
                    client: None,
                    route: None,
                    monitor: None,
                })
                .collect(),
        };
        // The first server's route ports are not known before it runs, and
        // JetStream wants a route configured: it gets one to a port nobody
        // listens on, and learns the others when they connect to it.
        for name in cluster.names() {
            cluster.start_node(&name).await;
        }
        cluster.wait_ready().await;
        cluster
    }

    /// Every server, comma-separated, as the services take it.
    pub fn url(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://{}", n.client.expect("started once"))).collect::<Vec<_>>().join(",")
    }

    fn index(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap_or_else(|| panic!("no NATS server {name}"))
    }

    /// (Re)start server `name` and wait until it listens.
    pub async fn start_node(&mut self, name: &str) {
        let i = self.index(name);
        let known_routes: Vec<String> =
            self.nodes.iter().filter_map(|n| n.route).map(|r| format!("nats-route://{r}")).collect();
        let routes = if known_routes.is_empty() { vec!["nats-route://127.0.0.1:1".to_string()] } else { known_routes };
        let single = self.nodes.len() == 1;
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "{} already runs", node.name);
        let at = |addr: Option<SocketAddr>| addr.map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1:-1".into());
        let ports_dir = node.dir.join("ports");
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        for old in std::fs::read_dir(&ports_dir).expect("ports dir") {
            let _ = std::fs::remove_file(old.expect("entry").path());
        }
        let cluster = match single {
            true => String::new(),
            false => format!(
                "cluster {{ name: mailfleet-test, listen: {route}, routes: [{routes}] }}\n",
                route = at(node.route),
                routes = routes.join(", ")
            ),
        };
        let config = format!(
            "server_name: {name}\nlisten: {client}\nhttp: {monitor}\nports_file_dir: \"{ports}\"\n\
             jetstream {{ store_dir: \"{store}\" }}\n{cluster}{auth}",
            name = node.name,
            client = at(node.client),
            monitor = at(node.monitor),
            ports = ports_dir.display(),
            store = node.dir.join("store").display(),
            auth = self.auth,
        );
        // Next to the cluster's copy of auth.conf (the include is relative).
        let conf = self.nodes[i].dir.parent().expect("cluster dir").join(format!("{}.conf", self.nodes[i].name));
        let node = &mut self.nodes[i];
        std::fs::write(&conf, config).expect("write nats.conf");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(node.dir.join("nats.log")).expect("log");
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts");
        node.child = Some(child);
        // The ports file appears once every listener is bound.
        let deadline = Instant::now() + WAIT;
        let ports = loop {
            let file = std::fs::read_dir(&ports_dir).expect("ports dir").flatten().next();
            if let Some(text) = file.and_then(|f| std::fs::read_to_string(f.path()).ok())
                && let Ok(ports) = serde_json::from_str::<serde_json::Value>(&text)
            {
                break ports;
            }
            assert!(Instant::now() < deadline, "NATS server {} did not start:\n{}", node.name, node.log_tail());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let addr = |key: &str| -> SocketAddr {
            let url = ports[key][0].as_str().unwrap_or_else(|| panic!("no {key} port in {ports}"));
            url.rsplit("//").next().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("bad address {url}"))
        };
        node.client = Some(addr("nats"));
        node.route = (!single).then(|| addr("cluster"));
        node.monitor = Some(addr("monitoring"));
    }

    /// SIGKILL server `name` (a crash: nothing written out, nothing said).
    pub async fn kill(&mut self, name: &str) {
        let i = self.index(name);
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().await.expect("SIGKILL nats-server");
        }
    }

    /// Until every running server says JetStream is healthy (`/healthz`:
    /// it has a metadata leader and is current).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let monitor = node.monitor.expect("started");
            while !healthy(monitor).await {
                assert!(
                    Instant::now() < deadline,
                    "NATS server {} never became healthy:\n{}",
                    node.name,
                    node.log_tail()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// The server names, for `leader_of` answers.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }
}

impl Node {
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("nats.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

async fn healthy(monitor: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(monitor).await else { return false };
    if s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200")
}
