//! What the POP3 tests share: a gateway in-process against a real storage
//! service (TestEnv), and a small client that shows the exact bytes.
#![allow(dead_code)] // each test binary uses its own part

use std::time::Duration;

use mailfleet_proto::storage::v1 as pb;
use mailfleet_runtime::listener::ConnectionConfig;
use mailfleet_testkit::TestEnv;
use pb::messages_client::MessagesClient;
use pop3_gateway::{Pop3Config, RunningPop3};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub const USER: &str = "alice@example.com";
pub const PASS: &str = "correct horse";

/// Limits on every read, so a broken server fails the test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn config(env: &TestEnv) -> Pop3Config {
    Pop3Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_listen: None,
        tls_enabled: false,
        storage_url: env.storage_url(),
        identity: mailfleet_testkit::identity("pop3-gateway"),
        connection: ConnectionConfig { auth_failure_delay: Duration::from_millis(10), ..ConnectionConfig::default() },
        ..Pop3Config::default()
    }
}

pub struct Gateway {
    pub running: RunningPop3,
    pub shutdown: CancellationToken,
}

impl Gateway {
    pub async fn start(config: Pop3Config) -> Gateway {
        let shutdown = CancellationToken::new();
        let running = pop3_gateway::serve(config, shutdown.clone()).await.expect("gateway starts");
        Gateway { running, shutdown }
    }
    pub fn port(&self) -> u16 {
        self.running.addr.port()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Put a message into the account's INBOX through storage's gRPC Append.
pub async fn append(env: &TestEnv, account_id: i64, data: &[u8]) -> pb::AppendResponse {
    let mut parts = vec![pb::AppendRequest {
        part: Some(pb::append_request::Part::Header(pb::AppendHeader {
            account_id,
            mailbox: "INBOX".into(),
            flags: vec![],
            internal_date: None,
        })),
    }];
    for chunk in data.chunks(1 << 20) {
        parts.push(pb::AppendRequest { part: Some(pb::append_request::Part::Chunk(chunk.to_vec())) });
    }
    MessagesClient::new(env.session_channel(account_id).await)
        .append(futures::stream::iter(parts))
        .await
        .expect("append")
        .into_inner()
}

pub async fn inbox_uids(env: &TestEnv, account_id: i64, mailbox_id: i64) -> Vec<u32> {
    MessagesClient::new(env.session_channel(account_id).await)
        .list_uids(pb::ListUidsRequest { account_id, mailbox_id })
        .await
        .expect("list uids")
        .into_inner()
        .uids
}

pub async fn flags(env: &TestEnv, account_id: i64, mailbox_id: i64, uid: u32) -> Vec<String> {
    use futures::StreamExt;
    let mut stream = MessagesClient::new(env.session_channel(account_id).await)
        .list_messages(pb::ListMessagesRequest {
            account_id,
            mailbox_id,
            uids: vec![pb::UidRange { start: uid, end: uid }],
            ..Default::default()
        })
        .await
        .expect("list messages")
        .into_inner();
    stream.next().await.expect("one message").expect("meta").flags
}

pub fn message(i: u32) -> Vec<u8> {
    format!(
        "From: bob@example.com\r\nTo: {USER}\r\nSubject: test {i}\r\n\r\nHello {i}\r\n.leading dot\r\n..two dots\r\nlast line\r\n"
    )
    .into_bytes()
}

/// A minimal POP3 client: exact bytes, so tests see what a client sees.
pub struct Client<S> {
    pub io: BufReader<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    pub fn new(stream: S) -> Client<S> {
        Client { io: BufReader::new(stream) }
    }

    pub async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(WAIT, self.io.read_line(&mut line)).await.expect("reply in time").expect("read");
        line
    }

    pub async fn send(&mut self, cmd: &str) {
        self.io.get_mut().write_all(format!("{cmd}\r\n").as_bytes()).await.unwrap();
    }

    pub async fn cmd(&mut self, cmd: &str) -> String {
        self.send(cmd).await;
        self.line().await
    }

    /// The rest of a multi-line response, un-stuffed, terminator removed.
    pub async fn body(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = tokio::time::timeout(WAIT, self.io.read_until(b'\n', &mut line)).await.unwrap().unwrap();
            assert!(n > 0, "EOF inside a multi-line response");
            if line == b".\r\n" {
                return out;
            }
            assert!(line.ends_with(b"\r\n"), "every line ends with CRLF");
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
        }
    }

    pub async fn eof(&mut self) -> bool {
        let mut rest = Vec::new();
        // A server closing with unread input sends a reset: closed as well.
        match tokio::time::timeout(WAIT, self.io.read_to_end(&mut rest)).await {
            Ok(Ok(0)) => true,
            Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionReset,
            _ => false,
        }
    }
}

pub async fn connect(port: u16) -> (Client<TcpStream>, String) {
    let mut c = Client::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    let greeting = c.line().await;
    assert!(greeting.starts_with("+OK "), "{greeting}");
    (c, greeting)
}

pub async fn login(port: u16) -> Client<TcpStream> {
    let (mut c, _) = connect(port).await;
    assert_eq!(c.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n");
    let reply = c.cmd(&format!("PASS {PASS}")).await;
    assert!(reply.starts_with(&format!("+OK {USER} has ")), "{reply}");
    c
}

pub async fn connect_proxied(port: u16, client: &str) -> Client<TcpStream> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let header =
        mailfleet_runtime::proxy::encode_v2(client.parse().unwrap(), format!("127.0.0.1:{port}").parse().unwrap());
    tcp.write_all(&header).await.unwrap();
    Client::new(tcp)
}

pub fn proxied_config(env: &TestEnv) -> Pop3Config {
    let mut cfg = config(env);
    cfg.connection.proxy_protocol =
        mailfleet_runtime::proxy::ProxyProtocol { enabled: true, trusted: vec!["127.0.0.0/8".into()] };
    cfg.connection.proxy_header_timeout = Duration::from_millis(500);
    cfg.connection.health_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg
}

/// Turn TLS on (STLS and a POP3S listener) with a fresh self-signed
/// certificate; its PEM, and the directory holding the files (keep it).
pub fn with_test_certificate(cfg: &mut Pop3Config) -> (String, tempfile::TempDir) {
    let (cert, key) = mailfleet_runtime::tls::generate_self_signed("localhost").unwrap();
    // The PEM must parse the way the gateway loads it.
    mailfleet_runtime::tls::server_config_from_pem(&cert, &key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("k.pem"), &key).unwrap();
    cfg.tls_enabled = true;
    cfg.tls_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.tls.cert_file = Some(dir.path().join("c.pem"));
    cfg.tls.key_file = Some(dir.path().join("k.pem"));
    (cert, dir)
}
