//! What an idle, logged-in IMAP connection costs the gateway in heap
//! (issue: target ≤ 64 KiB per IDLE client). Measured with a counting
//! allocator: open many connections, put each in IDLE, compare.

mod common;

use std::sync::Arc;

use common::Gateway;
use imap_gateway::store::fake::FakeStore;
use mailfleet_testkit::alloc::{Counting, live};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[global_allocator]
static ALLOC: Counting = Counting;

const CONNECTIONS: usize = 200;

#[tokio::test]
async fn idle_connection_costs_little() {
    let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    for i in 0..50 {
        store.add_message(1, "INBOX", format!("Subject: {i}\r\n\r\nbody\r\n").as_bytes(), &[]);
    }
    let gw = Gateway::start_with(store, |c| c.connection.max_connections_per_ip = 0).await;
    let mut buf = vec![0u8; 64 * 1024];
    // Warm up once so one-time allocations (TLS config, runtime) are not counted.
    let mut conns = Vec::with_capacity(CONNECTIONS + 1);
    conns.push(idle_client(gw.addr, &mut buf).await);
    let before = live();
    for _ in 0..CONNECTIONS {
        conns.push(idle_client(gw.addr, &mut buf).await);
    }
    let per_connection = (live() - before) / CONNECTIONS as isize;
    println!("heap per idle connection (server + test client): {per_connection} bytes");
    assert!(per_connection < 64 * 1024, "{per_connection} bytes per idle connection");
    drop(conns);
    idle_tls_connection_costs_little().await;
}

async fn idle_client(addr: std::net::SocketAddr, buf: &mut [u8]) -> tokio::net::TcpStream {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"a LOGIN alice@example.org pw\r\nb SELECT INBOX\r\nc IDLE\r\n").await.expect("write");
    let mut seen = Vec::new();
    while !seen.ends_with(b"+ idling\r\n") {
        let n = tcp.read(buf).await.expect("read");
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    tcp
}

/// The same over implicit TLS. The test's own TLS client state is counted
/// too, so the server's share is lower than the figure printed. Called from
/// the test above: both read one process-wide counter, so they must not
/// run in parallel.
async fn idle_tls_connection_costs_little() {
    let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    let gw = Gateway::start_with(store, |c| c.connection.max_connections_per_ip = 0).await;
    let connector = gw.tls_client();
    let mut buf = vec![0u8; 64 * 1024];
    let mut conns = Vec::with_capacity(CONNECTIONS / 4 + 1);
    let open = async |buf: &mut [u8]| {
        let tcp = tokio::net::TcpStream::connect(gw.tls_addr).await.expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        tls.write_all(b"a LOGIN alice@example.org pw\r\nb SELECT INBOX\r\nc IDLE\r\n").await.expect("write");
        let mut seen = Vec::new();
        while !seen.ends_with(b"+ idling\r\n") {
            let n = tls.read(buf).await.expect("read");
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
        tls
    };
    conns.push(open(&mut buf).await);
    let before = live();
    for _ in 0..CONNECTIONS / 4 {
        conns.push(open(&mut buf).await);
    }
    let per_connection = (live() - before) / (CONNECTIONS / 4) as isize;
    println!("heap per idle TLS connection (server + test client): {per_connection} bytes");
    assert!(per_connection < 2 * 64 * 1024, "{per_connection} bytes per idle TLS connection");
    drop(conns);
}
