//! Password guessing meets one count, whatever replica and protocol it
//! goes through: failures spread over two IMAP replicas, POP3 and SMTP
//! submission from one client address add up in storage, and then that
//! address is refused on every protocol with its "try later" — while
//! another address logs in as usual. The gateways sit behind a balancer
//! (PROXY headers from loopback), so the tests can speak as several clients.

use std::net::SocketAddr;

use base64::Engine;
use system::System;
use system::client::Lines;

const USER: &str = "alice@example.org";
const PASS: &str = "alice password 1";
const ATTACKER: &str = "127.0.0.66:40000";
const SOMEONE_ELSE: &str = "127.0.0.77:40000";

fn client(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

/// IMAP LOGIN from `from`: the tagged answer.
async fn imap_login(addr: SocketAddr, from: &str, password: &str) -> String {
    let mut c = Lines::connect_as(addr, client(from)).await.expect("connect");
    assert!(c.line().await.expect("greeting").starts_with("* OK"));
    c.send(format!("a LOGIN {USER} \"{password}\"\r\n").as_bytes()).await.expect("send");
    loop {
        let line = c.line().await.expect("answer");
        if line.starts_with("a ") {
            return line;
        }
    }
}

/// POP3 USER/PASS from `from`: the answer to PASS.
async fn pop3_login(addr: SocketAddr, from: &str, password: &str) -> String {
    let mut c = Lines::connect_as(addr, client(from)).await.expect("connect");
    assert!(c.line().await.expect("greeting").starts_with("+OK"));
    c.send(format!("USER {USER}\r\n").as_bytes()).await.expect("send");
    assert!(c.line().await.expect("USER").starts_with("+OK"));
    c.send(format!("PASS {password}\r\n").as_bytes()).await.expect("send");
    c.line().await.expect("PASS")
}

/// SMTP AUTH PLAIN on the submission port from `from`: the last reply line.
async fn smtp_login(addr: SocketAddr, from: &str, password: &str) -> String {
    let mut c = Lines::connect_as(addr, client(from)).await.expect("connect");
    assert!(c.line().await.expect("greeting").starts_with("220"));
    c.send(b"EHLO client.test\r\n").await.expect("send");
    while c.line().await.expect("EHLO").starts_with("250-") {}
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{password}"));
    c.send(format!("AUTH PLAIN {plain}\r\n").as_bytes()).await.expect("send");
    c.line().await.expect("AUTH")
}

#[tokio::test]
async fn failed_logins_count_across_replicas_and_protocols() {
    let mut sys = System::new(None);
    for (key, value) in [
        ("MAILFLEET_STORAGE_AUTH_THROTTLE__DELAY_AFTER", "4"),
        ("MAILFLEET_STORAGE_AUTH_THROTTLE__DELAY", "20ms"),
        ("MAILFLEET_STORAGE_AUTH_THROTTLE__MAX_DELAY", "100ms"),
        ("MAILFLEET_STORAGE_AUTH_THROTTLE__REFUSE_AFTER", "12"),
        ("MAILFLEET_STORAGE_AUTH_THROTTLE__ACCOUNT_REFUSE_AFTER", "1000"),
    ] {
        sys.set_env(key, value);
    }
    for service in ["IMAP", "POP3", "SMTP"] {
        sys.set_env(&format!("MAILFLEET_{service}_PROXY_PROTOCOL__ENABLED"), "true");
        sys.set_env(&format!("MAILFLEET_{service}_PROXY_PROTOCOL__TRUSTED"), "127.0.0.1");
        sys.set_env(&format!("MAILFLEET_{service}_AUTH_FAILURE_DELAY"), "0s");
    }
    sys.start_storage().await;
    sys.add_account(USER, PASS).await;
    let imap_a = sys.start_imap("imap-a").await;
    let imap_b = sys.start_imap("imap-b").await;
    let pop3 = sys.start_pop3("pop3").await;
    let smtp = sys.start_smtp("smtp").await;
    let (imap_a, imap_b) = (imap_a.port("imap"), imap_b.port("imap"));
    let (pop3, submission) = (pop3.port("pop3"), smtp.port("submission"));

    // Twelve wrong passwords from one address, three through each gateway:
    // each one alone is below every limit.
    for round in 0..3 {
        let guess = format!("guess {round}");
        assert!(imap_login(imap_a, ATTACKER, &guess).await.starts_with("a NO [AUTHENTICATIONFAILED]"));
        assert!(imap_login(imap_b, ATTACKER, &guess).await.starts_with("a NO [AUTHENTICATIONFAILED]"));
        assert!(pop3_login(pop3, ATTACKER, &guess).await.starts_with("-ERR [AUTH]"));
        assert!(smtp_login(submission, ATTACKER, &guess).await.starts_with("535 "));
    }

    // Together they reach the limit: the address is refused everywhere,
    // even with the right password, each protocol saying "try later".
    let imap = imap_login(imap_b, ATTACKER, PASS).await;
    assert!(imap.starts_with("a NO [UNAVAILABLE]"), "{imap}");
    let pop = pop3_login(pop3, ATTACKER, PASS).await;
    assert!(pop.starts_with("-ERR [SYS/TEMP]"), "{pop}");
    let smtp_reply = smtp_login(submission, ATTACKER, PASS).await;
    assert!(smtp_reply.starts_with("421 4.7.0"), "{smtp_reply}");

    // Another address is not affected, on any gateway.
    assert!(imap_login(imap_a, SOMEONE_ELSE, PASS).await.starts_with("a OK"));
    assert!(pop3_login(pop3, SOMEONE_ELSE, PASS).await.starts_with("+OK"));
    assert!(smtp_login(submission, SOMEONE_ELSE, PASS).await.starts_with("235 "));
}
