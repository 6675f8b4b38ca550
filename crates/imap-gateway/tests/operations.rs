//! Running imap-gateway behind a load balancer and restarting it: PROXY
//! protocol, the health endpoint, connection caps, the write timeout and
//! graceful shutdown, against the real storage service and NATS
//! (`mailfleet_testkit::TestEnv`).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use imap_gateway::{ImapConfig, RunningImap};
use mailfleet_runtime::proxy::{ProxyProtocol, encode_v2};
use mailfleet_testkit::TestEnv;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);
const USER: &str = "ops@example.org";
const PASS: &str = "ops-password";

struct Gw {
    running: RunningImap,
    shutdown: CancellationToken,
    _tmp: tempfile::TempDir,
}

async fn start(env: &TestEnv, edit: impl FnOnce(&mut ImapConfig)) -> Gw {
    mailfleet_runtime::init_crypto();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut config = common::test_config(&env.storage_url(), &tmp);
    config.nats_url = env.nats_url.clone();
    config.events_prefix = env.events_prefix.clone();
    edit(&mut config);
    let shutdown = CancellationToken::new();
    let running = imap_gateway::serve(config, shutdown.clone()).await.expect("gateway starts");
    Gw { running, shutdown, _tmp: tmp }
}

/// A line-reading client over a connection that may have sent a PROXY header.
struct Imap(BufReader<TcpStream>);

impl Imap {
    async fn connect(addr: SocketAddr) -> Imap {
        Imap(BufReader::new(TcpStream::connect(addr).await.expect("connect")))
    }

    async fn proxied(addr: SocketAddr, client: &str) -> Imap {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(&encode_v2(client.parse().expect("client"), addr)).await.expect("header");
        Imap(BufReader::new(tcp))
    }

    async fn send(&mut self, data: &[u8]) {
        self.0.get_mut().write_all(data).await.expect("write");
    }

    /// One line without CRLF; "<EOF>" once the server closed (or reset).
    async fn line(&mut self) -> String {
        let mut buf = Vec::new();
        match tokio::time::timeout(WAIT, self.0.read_until(b'\n', &mut buf)).await.expect("server answers in time") {
            Ok(0) | Err(_) => "<EOF>".into(),
            Ok(_) => String::from_utf8_lossy(&buf).trim_end().to_string(),
        }
    }

    /// Lines through the tagged reply (or a `+` continuation).
    async fn cmd(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        let mut out = Vec::new();
        loop {
            let l = self.line().await;
            let end = l.starts_with(&format!("{tag} ")) || l.starts_with('+') || l == "<EOF>";
            out.push(l);
            if end {
                return out;
            }
        }
    }

    async fn login(&mut self) {
        let greeting = self.line().await;
        assert!(greeting.starts_with("* OK"), "{greeting}");
        let reply = self.cmd("l", &format!("LOGIN {USER} {PASS}")).await;
        assert!(reply.last().is_some_and(|l| l.starts_with("l OK")), "{reply:?}");
    }
}

#[tokio::test]
async fn shutdown_says_bye_to_idling_and_waiting_sessions() {
    let env = TestEnv::start().await;
    env.add_account(USER, PASS).await;
    let gw = start(&env, |c| c.connection.health_listen = Some("127.0.0.1:0".parse().expect("addr"))).await;
    let health = gw.running.health_addr.expect("health endpoint");

    let mut idler = Imap::connect(gw.running.addr).await;
    idler.login().await;
    let select = idler.cmd("s", "SELECT INBOX").await;
    assert!(select.last().is_some_and(|l| l.starts_with("s OK")), "{select:?}");
    assert_eq!(idler.cmd("i", "IDLE").await.last().map(String::as_str), Some("+ idling"));
    let mut waiting = Imap::connect(gw.running.addr).await;
    waiting.login().await;

    gw.shutdown.cancel();
    // RFC 3501 §7.1.5: an untagged BYE, then the connection closes; the
    // IDLE session does not wait for DONE.
    for session in [&mut idler, &mut waiting] {
        let bye = session.line().await;
        assert!(bye.starts_with("* BYE "), "{bye}");
        assert_eq!(session.line().await, "<EOF>");
    }
    tokio::time::timeout(WAIT, gw.running.task).await.expect("gateway stops").expect("task");
    assert!(TcpStream::connect(gw.running.addr).await.is_err(), "listener closed");
    assert!(TcpStream::connect(health).await.is_err(), "health endpoint closed");
}

#[tokio::test]
async fn pipelined_commands_at_shutdown_end_with_one_bye_after_a_complete_reply() {
    let env = TestEnv::start().await;
    env.add_account(USER, PASS).await;
    let gw = start(&env, |_| {}).await;
    let mut c = Imap::connect(gw.running.addr).await;
    c.login().await;
    let pipelined: String = (0..200).map(|n| format!("t{n} NOOP\r\n")).collect();
    c.send(pipelined.as_bytes()).await;
    gw.shutdown.cancel();
    let mut lines = Vec::new();
    loop {
        let l = c.line().await;
        if l == "<EOF>" {
            break;
        }
        lines.push(l);
    }
    // Commands answered before the shutdown are answered completely and in
    // order; then exactly one BYE, and nothing after it.
    let (bye, answered) = lines.split_last().expect("some output");
    assert!(bye.starts_with("* BYE "), "{lines:?}");
    for (n, line) in answered.iter().enumerate() {
        assert!(line.starts_with(&format!("t{n} OK ")), "reply {n}: {lines:?}");
    }
}

#[tokio::test]
async fn proxy_v2_from_a_trusted_balancer_names_the_client() {
    let env = TestEnv::start().await;
    env.add_account(USER, PASS).await;
    let gw = start(&env, |c| {
        c.connection.proxy_protocol = ProxyProtocol { enabled: true, trusted: vec!["127.0.0.0/8".into()] };
        c.connection.proxy_header_timeout = Duration::from_millis(500);
        c.connection.health_listen = Some("127.0.0.1:0".parse().expect("addr"));
    })
    .await;
    let addr = gw.running.addr;

    // A remote client behind the balancer on loopback is remote: no
    // passwords in clear before STARTTLS (RFC 3501 §6.2.3, LOGINDISABLED).
    let mut remote = Imap::proxied(addr, "203.0.113.5:40000").await;
    let greeting = remote.line().await;
    assert!(greeting.starts_with("* OK") && greeting.contains("LOGINDISABLED"), "{greeting}");
    let refused = remote.cmd("l", &format!("LOGIN {USER} {PASS}")).await;
    assert!(refused.last().is_some_and(|l| l.starts_with("l NO") || l.starts_with("l BAD")), "{refused:?}");

    // A loopback client behind the same balancer keeps the loopback exception.
    let mut local = Imap::proxied(addr, "127.0.0.1:40001").await;
    local.login().await;

    // A trusted peer must send a header: a bare command or silence is
    // closed without a greeting.
    let mut bare = Imap::connect(addr).await;
    bare.send(b"a CAPABILITY\r\n").await;
    assert_eq!(bare.line().await, "<EOF>");
    let mut silent = Imap::connect(addr).await;
    assert_eq!(silent.line().await, "<EOF>");

    // The health endpoint answers the balancer's checks.
    let health = gw.running.health_addr.expect("health endpoint");
    let mut h = TcpStream::connect(health).await.expect("connect health");
    h.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await.expect("write");
    let mut answer = String::new();
    h.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.0 200 OK\r\n"), "{answer}");
}

#[tokio::test]
async fn proxy_header_from_an_untrusted_peer_is_refused() {
    let env = TestEnv::start().await;
    env.add_account(USER, PASS).await;
    let gw = start(&env, |c| {
        c.connection.proxy_protocol = ProxyProtocol { enabled: true, trusted: vec!["192.0.2.0/24".into()] };
    })
    .await;
    let addr = gw.running.addr;
    for header in [
        encode_v2("203.0.113.7:1".parse().expect("addr"), addr),
        b"PROXY TCP4 203.0.113.7 127.0.0.1 1 143\r\n".to_vec(),
    ] {
        let mut c = Imap::connect(addr).await;
        assert!(c.line().await.starts_with("* OK"));
        c.send(&header).await;
        let bye = c.line().await;
        assert!(bye.starts_with("* BYE ") && bye.contains("PROXY"), "{bye}");
        assert_eq!(c.line().await, "<EOF>");
    }
    // The same peer without a header is an ordinary (loopback) client.
    let mut c = Imap::connect(addr).await;
    c.login().await;
}

#[tokio::test]
async fn an_append_being_uploaded_at_shutdown_completes_and_is_stored() {
    let env = TestEnv::start().await;
    env.add_account(USER, PASS).await;
    let gw = start(&env, |_| {}).await;
    let mut c = Imap::connect(gw.running.addr).await;
    c.login().await;
    let message = b"Subject: uploaded across a restart\r\n\r\nhello\r\n";
    let started = c.cmd("a", &format!("APPEND INBOX {{{}}}", message.len())).await;
    assert!(started.last().is_some_and(|l| l.starts_with('+')), "{started:?}");
    c.send(&message[..10]).await;

    gw.shutdown.cancel();
    // Shutdown is under way once the listener is gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(gw.running.addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "listener still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The upload goes on: the tagged OK (the message is committed), then BYE.
    c.send(&message[10..]).await;
    c.send(b"\r\n").await;
    let ok = c.line().await;
    assert!(ok.starts_with("a OK"), "{ok}");
    let bye = c.line().await;
    assert!(bye.starts_with("* BYE "), "{bye}");
    assert_eq!(c.line().await, "<EOF>");
    tokio::time::timeout(WAIT, gw.running.task).await.expect("gateway stops").expect("task");

    // The next gateway sees it.
    let gw2 = start(&env, |_| {}).await;
    let mut c = Imap::connect(gw2.running.addr).await;
    c.login().await;
    let select = c.cmd("s", "SELECT INBOX").await;
    assert!(select.iter().any(|l| l == "* 1 EXISTS"), "{select:?}");
}

#[tokio::test]
async fn an_upload_still_running_after_the_grace_period_gets_bye_and_is_not_stored() {
    let env = TestEnv::start().await;
    env.add_account(USER, PASS).await;
    let gw = start(&env, |c| c.connection.shutdown_grace = Duration::from_millis(300)).await;
    let mut c = Imap::connect(gw.running.addr).await;
    c.login().await;
    let started = c.cmd("a", "APPEND INBOX {100}").await;
    assert!(started.last().is_some_and(|l| l.starts_with('+')), "{started:?}");
    c.send(b"Subject: never finished\r\n").await;
    gw.shutdown.cancel();
    let bye = c.line().await;
    assert!(bye.starts_with("* BYE "), "{bye}");
    assert_eq!(c.line().await, "<EOF>");
    tokio::time::timeout(WAIT, gw.running.task).await.expect("gateway stops").expect("task");

    let gw2 = start(&env, |_| {}).await;
    let mut c = Imap::connect(gw2.running.addr).await;
    c.login().await;
    let select = c.cmd("s", "SELECT INBOX").await;
    assert!(select.iter().any(|l| l == "* 0 EXISTS"), "{select:?}");
}

#[tokio::test]
async fn connection_caps_count_both_listeners() {
    let env = TestEnv::start().await;
    let gw = start(&env, |c| {
        c.connection.proxy_protocol = ProxyProtocol { enabled: true, trusted: vec!["127.0.0.0/8".into()] };
        c.connection.max_connections = 2;
        c.connection.max_connections_per_ip = 1;
    })
    .await;
    let (addr, tls_addr) = (gw.running.addr, gw.running.tls_addr.expect("IMAPS listener"));
    // Client A on the implicit-TLS port (mid-handshake, it holds its slot) ...
    let mut a_tls = TcpStream::connect(tls_addr).await.expect("connect");
    a_tls.write_all(&encode_v2("198.51.100.1:1000".parse().expect("addr"), tls_addr)).await.expect("header");
    // ... so A is turned away on the plain port,
    let mut a = Imap::proxied(addr, "198.51.100.1:1001").await;
    assert_eq!(a.line().await, "* BYE [UNAVAILABLE] Too many connections from your address");
    assert_eq!(a.line().await, "<EOF>");
    // B is served, and with two connections open the service is full.
    let mut b = Imap::proxied(addr, "198.51.100.2:1000").await;
    assert!(b.line().await.starts_with("* OK"));
    let mut c = Imap::proxied(addr, "198.51.100.3:1000").await;
    assert_eq!(c.line().await, "* BYE [UNAVAILABLE] Too many connections, try again later");
    drop(a_tls);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let env = TestEnv::start().await;
    env.add_account(USER, PASS).await;
    let gw = start(&env, |c| {
        c.connection.write_timeout = Duration::from_millis(500);
        c.connection.max_connections_per_ip = 1;
    })
    .await;
    let addr = gw.running.addr;
    // A message bigger than every socket buffer between us.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    while big.len() < 16 << 20 {
        big.extend_from_slice(&[b'x'; 98]);
        big.extend_from_slice(b"\r\n");
    }
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stuck = Imap(BufReader::new(socket.connect(addr).await.expect("connect")));
    stuck.login().await;
    stuck.send(format!("a APPEND INBOX {{{}+}}\r\n", big.len()).as_bytes()).await;
    stuck.send(&big).await;
    stuck.send(b"\r\n").await;
    assert!(stuck.cmd("b", "SELECT INBOX").await.last().is_some_and(|l| l.starts_with("b OK")));
    // Fetch it and read nothing more: the gateway gives up on the write and
    // closes, which frees the client's one connection slot.
    stuck.send(b"c FETCH 1 BODY.PEEK[]\r\n").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut next = Imap::connect(addr).await;
        if next.line().await.starts_with("* OK") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "a client that reads nothing kept its connection");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stuck);
}
