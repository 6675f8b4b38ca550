//! Before login an IMAP client can make the gateway hold only tens of KiB,
//! whatever it sends: a megabyte line and chained `{8000+}` literals are
//! cut off with the connection closed. Measured with a counting allocator
//! (this binary holds one test: the count is process-wide).

mod common;

use std::sync::Arc;

use common::Gateway;
use imap_gateway::store::fake::FakeStore;
use mailfleet_testkit::alloc::{Counting, live, peak, reset_peak};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static ALLOC: Counting = Counting;

/// Send `parts` (repeated `times`) before login; the gateway must close
/// the connection with a BYE. Returns the heap growth meanwhile.
async fn abuse(addr: std::net::SocketAddr, head: &[u8], part: &[u8], times: usize) -> isize {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut greeting = [0u8; 4];
    tcp.read_exact(&mut greeting).await.expect("greeting");
    let before = live();
    reset_peak();
    let _ = tcp.write_all(head).await;
    for _ in 0..times {
        if tcp.write_all(part).await.is_err() {
            break; // closed by the gateway
        }
    }
    // Measured once the gateway is done with it (it closed the connection).
    let mut answer = Vec::with_capacity(4096);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), tcp.read_to_end(&mut answer)).await;
    let grew = peak() - before;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("* BYE [TOOBIG]"), "{text:?}");
    grew
}

#[tokio::test]
async fn a_megabyte_line_and_chained_literals_before_login_are_cut_off() {
    let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    let gw = Gateway::start_with(store, |_| {}).await;
    // Warm up what is allocated once per process.
    abuse(gw.addr, b"a LOGIN ", &[b'x'; 16 * 1024], 4).await;

    let line = abuse(gw.addr, b"a LOGIN ", &[b'x'; 16 * 1024], 64).await;
    println!("heap growth while a 1 MiB line arrived: {line} bytes");
    // The line limit before login is 32 KiB (RFC 2971's largest ID fits);
    // the buffer that held it may have doubled once past it.
    assert!(line < 128 * 1024, "{line} bytes held for one pre-login line");

    let mut literal = vec![b'y'; 8000];
    literal.extend_from_slice(b" {8000+}\r\n");
    let literals = abuse(gw.addr, b"a LOGIN {8000+}\r\n", &literal, 128).await;
    println!("heap growth while chained {{8000+}} literals arrived: {literals} bytes");
    assert!(literals < 64 * 1024, "{literals} bytes held for chained pre-login literals");
}
