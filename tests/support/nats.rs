//! A NATS cluster of three `nats-server` processes of this test's own
//! (JetStream, a store directory each under the test's temporary
//! directory), for tests that kill a server. Every server binds port 0 and
//! reports its ports (`ports_file_dir`); one started again comes back on
//! the same ports with routes to the other two, as a server of a real
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

pub struct NatsCluster {
    nodes: Vec<Node>,
}

impl NatsCluster {
    /// Three servers `n1`..`n3` under `dir`, ready for JetStream.
    pub async fn start(dir: &Path) -> NatsCluster {
        let mut cluster = NatsCluster {
            nodes: (1..=3)
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
        for name in ["n1", "n2", "n3"] {
            cluster.start_node(name).await;
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
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "{} already runs", node.name);
        let at = |addr: Option<SocketAddr>| addr.map(|a| a.to_string()).unwrap_or_else(|| "127.0.0.1:-1".into());
        let ports_dir = node.dir.join("ports");
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        for old in std::fs::read_dir(&ports_dir).expect("ports dir") {
            let _ = std::fs::remove_file(old.expect("entry").path());
        }
        let config = format!(
            "server_name: {name}\nlisten: {client}\nhttp: {monitor}\nports_file_dir: \"{ports}\"\n\
             jetstream {{ store_dir: \"{store}\" }}\n\
             cluster {{ name: mailfleet-test, listen: {route}, routes: [{routes}] }}\n",
            name = node.name,
            client = at(node.client),
            monitor = at(node.monitor),
            route = at(node.route),
            ports = ports_dir.display(),
            store = node.dir.join("store").display(),
            routes = routes.join(", "),
        );
        let conf = node.dir.join("nats.conf");
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
        node.route = Some(addr("cluster"));
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
