//! The connection layer's limits as POP3 clients meet them: connection caps
//! on both listeners, and a client that stops reading while it holds the
//! maildrop lock.

mod common;

use std::time::Duration;

use common::*;
use mailfleet_testkit::TestEnv;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_its_maildrop_released() {
    let env = TestEnv::start().await;
    let acct = env.add_account(USER, PASS).await;
    // More than any socket buffers between us and a client that reads nothing.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    while big.len() < 16 << 20 {
        big.extend_from_slice(&[b'x'; 98]);
        big.extend_from_slice(b"\r\n");
    }
    append(&env, acct.id, &big).await;
    let mut cfg = config(&env);
    cfg.connection.write_timeout = Duration::from_millis(500);
    let gw = Gateway::start(cfg).await;

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = Client::new(socket.connect(gw.running.addr).await.unwrap());
    assert!(stuck.line().await.starts_with("+OK "));
    assert_eq!(stuck.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n");
    assert!(stuck.cmd(&format!("PASS {PASS}")).await.starts_with("+OK"));
    stuck.send("RETR 1").await;
    // It never reads again. Another session finds the maildrop in use
    // until the stuck one is dropped, then gets it.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (mut other, _) = connect(gw.port()).await;
        assert_eq!(other.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n");
        let reply = other.cmd(&format!("PASS {PASS}")).await;
        if reply.starts_with("+OK") {
            break;
        }
        assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}");
        assert!(tokio::time::Instant::now() < deadline, "the maildrop stayed locked by a client that reads nothing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stuck);
}

#[tokio::test]
async fn connection_caps_count_both_listeners() {
    let env = TestEnv::start().await;
    let mut cfg = proxied_config(&env);
    let _certificate = with_test_certificate(&mut cfg);
    cfg.connection.max_connections = 2;
    cfg.connection.max_connections_per_ip = 1;
    let gw = Gateway::start(cfg).await;
    let tls_port = gw.running.tls_addr.expect("POP3S listener").port();

    // Client A on the implicit-TLS port (mid-handshake holds its slot) ...
    let mut a_tls = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    let header = mailfleet_runtime::proxy::encode_v2(
        "198.51.100.1:1000".parse().unwrap(),
        format!("127.0.0.1:{tls_port}").parse().unwrap(),
    );
    a_tls.write_all(&header).await.unwrap();
    // ... so A is refused on the plain port,
    let mut a_plain = connect_proxied(gw.port(), "198.51.100.1:1001").await;
    assert_eq!(a_plain.line().await, "-ERR [SYS/TEMP] too many connections from your address\r\n");
    assert!(a_plain.eof().await);
    // B is served, and with two connections open the service is full.
    let mut b = connect_proxied(gw.port(), "198.51.100.2:1000").await;
    assert!(b.line().await.starts_with("+OK "));
    let mut c = connect_proxied(gw.port(), "198.51.100.3:1000").await;
    assert_eq!(c.line().await, "-ERR [SYS/TEMP] too many connections, try again later\r\n");
    assert!(c.eof().await);
    drop(a_tls);
}
