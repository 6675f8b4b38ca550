//! The connection layer with a toy line protocol: caps, PROXY, write and
//! handshake timeouts, implicit TLS and STARTTLS, the two-phase drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::*;
use crate::proxy::{ProxyProtocol, encode_v2};

/// Greets, echoes lines; `big` writes 64 MiB, `tls` upgrades, `slow`
/// keeps working through `stopping` until `cut_off`. Reports what its last
/// write returned.
struct Toy {
    events: mpsc::UnboundedSender<String>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Port {
    Plain,
    Tls,
}

impl Protocol for Toy {
    type Listener = Port;
    const NAME: &'static str = "toy";
    const SPAN_NAME: &'static str = "toy session";

    fn refusal(&self, why: Refusal) -> &'static [u8] {
        match why {
            Refusal::Busy => b"busy\r\n",
            Refusal::TooManyFromClient => b"too many from you\r\n",
        }
    }

    async fn serve(&self, conn: Connection<Port>) {
        let result = session(conn, &self.events).await;
        let _ = self.events.send(match result {
            Ok(()) => "ended".into(),
            Err(e) => format!("error {:?}", e.kind()),
        });
    }
}

async fn send(stream: &mut (impl AsyncWrite + Unpin), line: &str) -> std::io::Result<()> {
    stream.write_all(line.as_bytes()).await?;
    stream.flush().await
}

async fn session(conn: Connection<Port>, events: &mpsc::UnboundedSender<String>) -> std::io::Result<()> {
    let Connection { mut stream, client, drain, .. } = conn;
    let greeting = format!("hello {client} tls={}\r\n", stream.is_tls());
    send(&mut stream, &greeting).await?;
    loop {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            tokio::select! {
                n = stream.read(&mut byte) => if n? == 0 { return Ok(()) } else { line.push(byte[0]) },
                _ = drain.stopping().cancelled() => return send(&mut stream, "bye\r\n").await,
            }
        }
        match line.as_slice() {
            b"big\r\n" => {
                let chunk = vec![b'x'; 1 << 20];
                for _ in 0..64 {
                    stream.write_all(&chunk).await?;
                }
            }
            b"tls\r\n" => {
                send(&mut stream, "go\r\n").await?;
                stream = stream.start_tls().await?;
                let reply = format!("tls={}\r\n", stream.is_tls());
                send(&mut stream, &reply).await?;
            }
            b"slow\r\n" => {
                let _ = events.send("slow started".into());
                drain.cut_off().cancelled().await;
                return send(&mut stream, "cut off\r\n").await;
            }
            other => stream.write_all(other).await?,
        }
    }
}

struct Server {
    running: Running<Port>,
    events: mpsc::UnboundedReceiver<String>,
    shutdown: CancellationToken,
    cert_pem: String,
}

impl Server {
    async fn start(config: ConnectionConfig) -> Server {
        crate::init_crypto();
        let (cert_pem, key_pem) = crate::tls::generate_self_signed("localhost").unwrap();
        let tls = TlsAcceptor::from(crate::tls::server_config_from_pem(&cert_pem, &key_pem).unwrap());
        let (tx, events) = mpsc::unbounded_channel();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let specs = vec![
            ListenerSpec { addr: any, listener: Port::Plain, name: "plain", implicit_tls: false },
            ListenerSpec { addr: any, listener: Port::Tls, name: "tls", implicit_tls: true },
        ];
        let shutdown = CancellationToken::new();
        let running = serve(Arc::new(Toy { events: tx }), specs, &config, Some(tls), shutdown.clone()).await.unwrap();
        Server { running, events, shutdown, cert_pem }
    }

    fn plain(&self) -> SocketAddr {
        self.running.addr(Port::Plain).unwrap()
    }

    async fn event(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(30), self.events.recv()).await.expect("an event").expect("open")
    }

    fn tls_connector(&self) -> tokio_rustls::TlsConnector {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.cert_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// A client whose PROXY header (from trusted loopback) names `source`.
async fn proxied(addr: SocketAddr, source: &str) -> BufReader<TcpStream> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&encode_v2(source.parse().unwrap(), addr)).await.unwrap();
    BufReader::new(tcp)
}

/// The next line; "" once the server closed (a reset counts: closing with
/// unread input sends RST).
async fn line(r: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    match tokio::time::timeout(Duration::from_secs(30), r.read_line(&mut l)).await.expect("a line in time") {
        Ok(_) => l,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => String::new(),
        Err(e) => panic!("{e}"),
    }
}

fn behind_balancer() -> ConnectionConfig {
    ConnectionConfig {
        proxy_protocol: ProxyProtocol { enabled: true, trusted: vec!["127.0.0.1".into()] },
        ..ConnectionConfig::default()
    }
}

#[tokio::test]
async fn caps_count_real_clients_and_refuse_with_the_protocols_line() {
    let server =
        Server::start(ConnectionConfig { max_connections: 3, max_connections_per_ip: 2, ..behind_balancer() }).await;
    let mut a1 = proxied(server.plain(), "192.0.2.1:1000").await;
    assert_eq!(line(&mut a1).await, "hello 192.0.2.1:1000 tls=false\r\n");
    let mut a2 = proxied(server.plain(), "192.0.2.1:1001").await;
    line(&mut a2).await;
    let mut a3 = proxied(server.plain(), "192.0.2.1:1002").await;
    assert_eq!(line(&mut a3).await, "too many from you\r\n");
    assert_eq!(line(&mut a3).await, "", "then closed");
    let mut b1 = proxied(server.plain(), "192.0.2.2:1000").await;
    assert!(line(&mut b1).await.starts_with("hello 192.0.2.2"), "another client is not affected");
    let mut c1 = proxied(server.plain(), "192.0.2.3:1000").await;
    assert_eq!(line(&mut c1).await, "busy\r\n", "max_connections for the whole service");
    // On the implicit-TLS port a refused client is closed without a word.
    let mut t = TcpStream::connect(server.running.addr(Port::Tls).unwrap()).await.unwrap();
    t.write_all(&encode_v2("192.0.2.4:1".parse().unwrap(), server.plain())).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(30), t.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // A slot comes back when its connection ends.
    drop(a1);
    let mut c2 = proxied(server.plain(), "192.0.2.3:1001").await;
    let mut greeting = line(&mut c2).await;
    for _ in 0..100 {
        if greeting.starts_with("hello") {
            break;
        }
        // The server may not have seen a1's close yet.
        tokio::time::sleep(Duration::from_millis(50)).await;
        c2 = proxied(server.plain(), "192.0.2.3:1001").await;
        greeting = line(&mut c2).await;
    }
    assert!(greeting.starts_with("hello 192.0.2.3"), "{greeting}");
}

#[tokio::test]
async fn an_untrusted_peer_is_its_own_client_and_a_trusted_one_must_send_a_header() {
    let server = Server::start(ConnectionConfig::default()).await;
    let mut c = BufReader::new(TcpStream::connect(server.plain()).await.unwrap());
    assert!(line(&mut c).await.starts_with("hello 127.0.0.1:"), "no header read from an untrusted peer");

    let server = Server::start(behind_balancer()).await;
    let mut c = BufReader::new(TcpStream::connect(server.plain()).await.unwrap());
    c.get_mut().write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    assert_eq!(line(&mut c).await, "", "closed without a greeting");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let mut server = Server::start(ConnectionConfig {
        write_timeout: Duration::from_millis(300),
        max_connections_per_ip: 1,
        ..ConnectionConfig::default()
    })
    .await;
    let mut c = BufReader::new(TcpStream::connect(server.plain()).await.unwrap());
    line(&mut c).await;
    c.get_mut().write_all(b"big\r\n").await.unwrap();
    // The client reads nothing more; the server's write gives up.
    assert_eq!(server.event().await, "error TimedOut");
    // And its slot is free again (per-IP cap of 1).
    let mut again = BufReader::new(TcpStream::connect(server.plain()).await.unwrap());
    assert!(line(&mut again).await.starts_with("hello"));
    drop(c);
}

#[tokio::test]
async fn a_client_that_reads_gets_everything() {
    let server = Server::start(ConnectionConfig { write_timeout: Duration::from_secs(5), ..Default::default() }).await;
    let mut c = BufReader::new(TcpStream::connect(server.plain()).await.unwrap());
    line(&mut c).await;
    c.get_mut().write_all(b"big\r\n").await.unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    while got < 64 << 20 {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got += n;
    }
}

#[tokio::test]
async fn tls_implicit_and_after_starttls_with_a_handshake_timeout() {
    let mut server =
        Server::start(ConnectionConfig { tls_handshake_timeout: Duration::from_millis(300), ..Default::default() })
            .await;
    let connector = server.tls_connector();
    let name = || rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(server.running.addr(Port::Tls).unwrap()).await.unwrap();
    let mut tls = BufReader::new(connector.connect(name(), tcp).await.unwrap());
    let mut l = String::new();
    tls.read_line(&mut l).await.unwrap();
    assert!(l.ends_with("tls=true\r\n"), "{l}");

    let mut c = BufReader::new(TcpStream::connect(server.plain()).await.unwrap());
    line(&mut c).await;
    c.get_mut().write_all(b"tls\r\n").await.unwrap();
    assert_eq!(line(&mut c).await, "go\r\n");
    let mut tls = BufReader::new(connector.connect(name(), c.into_inner()).await.unwrap());
    let mut l = String::new();
    tls.read_line(&mut l).await.unwrap();
    assert_eq!(l, "tls=true\r\n");

    // A client that never completes a handshake is dropped.
    let mut silent = TcpStream::connect(server.running.addr(Port::Tls).unwrap()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)));
    let mut c = BufReader::new(TcpStream::connect(server.plain()).await.unwrap());
    line(&mut c).await;
    c.get_mut().write_all(b"tls\r\n").await.unwrap();
    assert_eq!(line(&mut c).await, "go\r\n");
    assert_eq!(server.event().await, "error TimedOut", "STARTTLS without a handshake");
}

#[tokio::test]
async fn shutdown_drains_in_two_phases() {
    let mut server = Server::start(ConnectionConfig {
        shutdown_grace: Duration::from_millis(500),
        health_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await;
    let mut idle = BufReader::new(TcpStream::connect(server.plain()).await.unwrap());
    line(&mut idle).await;
    let mut busy = BufReader::new(TcpStream::connect(server.plain()).await.unwrap());
    line(&mut busy).await;
    busy.get_mut().write_all(b"slow\r\n").await.unwrap();
    assert_eq!(server.event().await, "slow started");

    server.shutdown.cancel();
    assert_eq!(line(&mut idle).await, "bye\r\n", "an idle session says goodbye at once");
    assert_eq!(line(&mut busy).await, "cut off\r\n", "a busy one is cut off after the grace period");
    tokio::time::timeout(Duration::from_secs(30), server.running.task).await.unwrap().unwrap();
    assert!(TcpStream::connect(server.running.bound[0].1).await.is_err(), "no longer listening");
}
