//! Test helpers: a line-oriented IMAP client and the C:/S: transcript runner.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imap_gateway::ImapConfig;
use imap_gateway::store::MailStore;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::CancellationToken;

/// A gateway on 127.0.0.1:0 (TLS on another free port, self-signed
/// certificate in a temp dir) over `store`.
pub struct Gateway {
    pub addr: SocketAddr,
    pub tls_addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    _tmp: tempfile::TempDir,
}

pub fn test_config(storage_url: &str, tmp: &tempfile::TempDir) -> ImapConfig {
    let mut config = ImapConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls_listen: Some("127.0.0.1:0".parse().expect("addr")),
        storage_url: storage_url.into(),
        identity: mailfleet_testkit::identity("imap-gateway"),
        ..ImapConfig::default()
    };
    config.connection.auth_failure_delay = Duration::ZERO;
    config.tls.self_signed_dir = tmp.path().join("tls");
    config
}

impl Gateway {
    pub async fn start_with<S: MailStore>(store: Arc<S>, edit: impl FnOnce(&mut ImapConfig)) -> Gateway {
        mailfleet_runtime::init_crypto();
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut config = test_config("https://127.0.0.1:1", &tmp);
        edit(&mut config);
        let shutdown = CancellationToken::new();
        let events = Arc::new(imap_gateway::events::EventHub::disconnected());
        let running =
            imap_gateway::serve_with_store(config, store, events, shutdown.clone()).await.expect("gateway starts");
        Gateway {
            addr: running.addr,
            tls_addr: running.tls_addr.expect("tls listener"),
            shutdown,
            task: running.task,
            _tmp: tmp,
        }
    }

    /// Against a real storage service; events from `nats_url` under `events_prefix`.
    pub async fn start_grpc(storage_url: &str, nats_url: &str, events_prefix: &str) -> Gateway {
        mailfleet_runtime::init_crypto();
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(storage_url, &tmp);
        config.nats_url = nats_url.into();
        config.events_prefix = events_prefix.into();
        let shutdown = CancellationToken::new();
        let running = imap_gateway::serve(config, shutdown.clone()).await.expect("gateway starts");
        Gateway {
            addr: running.addr,
            tls_addr: running.tls_addr.expect("tls listener"),
            shutdown,
            task: running.task,
            _tmp: tmp,
        }
    }
}

impl Gateway {
    /// A TLS client configuration trusting this gateway's self-signed certificate.
    pub fn tls_client(&self) -> tokio_rustls::TlsConnector {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let pem = std::fs::read(self._tmp.path().join("tls").join("self-signed.crt")).expect("certificate");
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.expect("PEM")).expect("root");
        }
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A raw IMAP client reading CRLF lines.
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

const TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (r, w) = tcp.into_split();
        Client { reader: BufReader::new(r), writer: w }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// One line without CRLF; "<EOF>" when the server closed, "<TIMEOUT>"
    /// when it said nothing for 10 s.
    pub async fn line(&mut self) -> String {
        let mut buf = Vec::new();
        let Ok(read) = tokio::time::timeout(TIMEOUT, self.reader.read_until(b'\n', &mut buf)).await else {
            return "<TIMEOUT>".into();
        };
        let n = read.expect("read");
        if n == 0 {
            return "<EOF>".into();
        }
        String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_string()
    }

    /// Lines up to and including the one starting with `tag ` (or `+`).
    pub async fn until(&mut self, tag: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let l = self.line().await;
            let end = l.starts_with(&format!("{tag} ")) || l.starts_with('+') || l == "<EOF>" || l == "<TIMEOUT>";
            out.push(l);
            if end {
                return out;
            }
        }
    }

    /// Send `tag command` and return every line through the tagged one.
    pub async fn cmd(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        self.until(tag).await
    }
}

fn escape(s: &str) -> String {
    s.escape_debug().to_string()
}

/// `...` in an expected line matches any text.
pub fn glob(pattern: &str, line: &str) -> bool {
    let mut parts = pattern.split("...");
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = line.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    for (i, p) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(p);
        }
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// Replay a transcript: `C:` lines are sent, `S:` lines are the exact
/// responses expected (a trailing `...` matches by prefix). Each `C:` line
/// is answered up to its tagged response or a continuation request;
/// `C+:` lines are sent without waiting (LITERAL+).
pub async fn transcript(addr: SocketAddr, script: &str) {
    let mut client = Client::connect(addr).await;
    let mut exchange: Vec<String> = Vec::new();
    let mut expected: Vec<String> = Vec::new();
    let mut got: Vec<String> = vec![client.line().await];
    let mut tag = String::new();
    let mut continuation = false;
    let check = |expected: &mut Vec<String>, got: &mut Vec<String>, exchange: &mut Vec<String>| {
        for g in got.iter() {
            exchange.push(format!("S: {}", escape(g)));
        }
        let ok = expected.len() == got.len() && expected.iter().zip(got.iter()).all(|(e, g)| glob(e, g));
        if !ok {
            panic!(
                "transcript mismatch\nexpected:\n  {}\ngot:\n  {}\nexchange so far:\n  {}",
                expected.iter().map(|s| escape(s)).collect::<Vec<_>>().join("\n  "),
                got.iter().map(|s| escape(s)).collect::<Vec<_>>().join("\n  "),
                exchange.join("\n  ")
            );
        }
        expected.clear();
        got.clear();
    };
    for raw in script.lines() {
        let line = raw.trim();
        if let Some(s) = line.strip_prefix("S:") {
            expected.push(s.strip_prefix(' ').unwrap_or(s).to_string());
        } else if let Some(c) = line.strip_prefix("C+:") {
            // Sent without waiting: the server answers only after the next line.
            let c = c.strip_prefix(' ').unwrap_or(c);
            more(&mut client, &expected, &mut got).await;
            check(&mut expected, &mut got, &mut exchange);
            exchange.push(format!("C: {}", escape(c)));
            tag = c.split(' ').next().unwrap_or_default().to_string();
            continuation = true;
            client.send(format!("{c}\r\n").as_bytes()).await;
        } else if let Some(c) = line.strip_prefix("C:") {
            let c = c.strip_prefix(' ').unwrap_or(c);
            more(&mut client, &expected, &mut got).await;
            check(&mut expected, &mut got, &mut exchange);
            exchange.push(format!("C: {}", escape(c)));
            if !continuation {
                tag = c.split(' ').next().unwrap_or_default().to_string();
            }
            client.send(format!("{c}\r\n").as_bytes()).await;
            got = client.until(&tag).await;
            continuation = got.last().is_some_and(|l| l.starts_with('+'));
        }
    }
    more(&mut client, &expected, &mut got).await;
    check(&mut expected, &mut got, &mut exchange);
}

/// Untagged lines after a tagged one (e.g. BYE): read as many as expected.
async fn more(client: &mut Client, expected: &[String], got: &mut Vec<String>) {
    while got.len() < expected.len() && got.last().is_none_or(|l| l != "<EOF>" && l != "<TIMEOUT>") {
        got.push(client.line().await);
    }
}
