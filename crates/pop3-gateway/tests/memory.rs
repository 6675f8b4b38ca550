//! Before login a POP3 client can make the gateway hold only a few KiB,
//! whatever it sends. Measured with a counting allocator (this binary holds
//! one test: the count is process-wide).

mod common;

use std::time::Duration;

use common::*;
use mailfleet_runtime::listener::ConnectionConfig;
use mailfleet_testkit::alloc::{Counting, live, peak, reset_peak};
use pop3_gateway::Pop3Config;
use tokio::io::AsyncWriteExt;

#[global_allocator]
static ALLOC: Counting = Counting;

#[tokio::test]
async fn a_megabyte_line_before_login_is_cut_off_with_memory_bounded() {
    // No storage is needed before login.
    let config = Pop3Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_listen: None,
        tls_enabled: false,
        storage_url: "https://127.0.0.1:1".into(),
        identity: mailfleet_testkit::identity("pop3-gateway"),
        connection: ConnectionConfig { auth_failure_delay: Duration::ZERO, ..ConnectionConfig::default() },
        ..Pop3Config::default()
    };
    let gw = Gateway::start(config).await;
    let chunk = vec![b'A'; 16 * 1024];
    // A first connection warms up what is allocated once.
    let (mut warm, _) = connect(gw.port()).await;
    assert!(warm.cmd("CAPA").await.starts_with("+OK"));
    warm.body().await;

    let (mut c, _) = connect(gw.port()).await;
    let before = live();
    reset_peak();
    let mut sent = 0;
    let mut cut_off = false;
    while sent < 1 << 20 {
        if c.io.get_mut().write_all(&chunk).await.is_err() {
            cut_off = true;
            break;
        }
        sent += chunk.len();
    }
    let grew = peak() - before;
    if !cut_off {
        assert_eq!(c.line().await, "-ERR line too long, closing connection\r\n");
    }
    println!("heap growth while 1 MiB arrived in one line: {grew} bytes");
    assert!(grew < 64 * 1024, "the gateway held {grew} bytes for one pre-login line");
    assert!(c.eof().await, "and closed the connection");
}
