//! End-to-end: the gateway in-process against a real storage service
//! (Postgres, blob store, NATS via TestEnv), driven over TCP by a small
//! client, by Python's poplib and by curl.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use mailfleet_proto::storage::v1 as pb;
use mailfleet_testkit::TestEnv;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn read_leave_delete_and_quit() {
    let env = TestEnv::start().await;
    let acct = env.add_account(USER, PASS).await;
    let a1 = append(&env, acct.id, &message(1)).await;
    let a2 = append(&env, acct.id, &message(2)).await;
    let gw = Gateway::start(config(&env)).await;
    let (m1, m2) = (message(1), message(2));

    let mut c = login(gw.port()).await;
    assert_eq!(c.cmd("STAT").await, format!("+OK 2 {}\r\n", m1.len() + m2.len()));
    assert_eq!(c.cmd("LIST").await, format!("+OK 2 messages ({} octets)\r\n", m1.len() + m2.len()));
    assert_eq!(c.body().await, format!("1 {}\r\n2 {}\r\n", m1.len(), m2.len()).into_bytes());
    assert_eq!(c.cmd("LIST 2").await, format!("+OK 2 {}\r\n", m2.len()));
    assert_eq!(c.cmd("UIDL").await, "+OK unique-id listing follows\r\n");
    let uidl = format!("1 {}.{}\r\n2 {}.{}\r\n", a1.uid_validity, a1.uid, a2.uid_validity, a2.uid);
    assert_eq!(String::from_utf8(c.body().await).unwrap(), uidl);

    // TOP leaves the message unseen; RETR sends exactly LIST's octets and sets \Seen.
    assert_eq!(c.cmd("TOP 1 1").await, "+OK top of message follows\r\n");
    let top = String::from_utf8(c.body().await).unwrap();
    assert!(top.ends_with("Subject: test 1\r\n\r\nHello 1\r\n"), "{top:?}");
    assert_eq!(c.cmd("TOP 1 0").await, "+OK top of message follows\r\n");
    let header = format!("From: bob@example.com\r\nTo: {USER}\r\nSubject: test 1\r\n\r\n");
    assert_eq!(String::from_utf8(c.body().await).unwrap(), header);
    assert!(!flags(&env, acct.id, a1.mailbox_id, a1.uid).await.contains(&"\\Seen".to_string()));
    assert_eq!(c.cmd("RETR 1").await, format!("+OK {} octets\r\n", m1.len()));
    assert_eq!(c.body().await, m1);
    assert_eq!(c.cmd("RETR 2").await, format!("+OK {} octets\r\n", m2.len()));
    assert_eq!(c.body().await, m2);

    assert_eq!(c.cmd("DELE 1").await, "+OK message 1 deleted\r\n");
    assert_eq!(c.cmd("RETR 1").await, "-ERR message 1 already deleted\r\n");
    assert_eq!(c.cmd("RETR 3").await, "-ERR no such message, only 2 messages in maildrop\r\n");
    assert_eq!(inbox_uids(&env, acct.id, a1.mailbox_id).await, vec![a1.uid, a2.uid], "nothing removed before QUIT");
    assert_eq!(c.cmd("QUIT").await, "+OK Mailfleet POP3 server signing off (1 messages left)\r\n");
    assert!(c.eof().await);
    // What RETR retrieved is \Seen for IMAP clients once the session ended.
    assert!(flags(&env, acct.id, a2.mailbox_id, a2.uid).await.contains(&"\\Seen".to_string()));
    // Gone in IMAP's view too.
    assert_eq!(inbox_uids(&env, acct.id, a1.mailbox_id).await, vec![a2.uid]);

    // The next session sees the rest, with the same unique id.
    let mut c = login(gw.port()).await;
    assert_eq!(c.cmd("UIDL 1").await, format!("+OK 1 {}.{}\r\n", a2.uid_validity, a2.uid));
    assert_eq!(c.cmd("QUIT").await, "+OK Mailfleet POP3 server signing off (1 messages left)\r\n");
}

#[tokio::test]
async fn dele_then_disconnect_keeps_the_mail() {
    let env = TestEnv::start().await;
    let acct = env.add_account(USER, PASS).await;
    let a1 = append(&env, acct.id, &message(1)).await;
    let gw = Gateway::start(config(&env)).await;

    let mut c = login(gw.port()).await;
    assert_eq!(c.cmd("DELE 1").await, "+OK message 1 deleted\r\n");
    drop(c); // no QUIT: RFC 1939 §6, no UPDATE state.

    // The gateway releases the lock when it sees the connection end; that
    // happens in the background, so poll until the maildrop is free.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut c = loop {
        let (mut c, _) = connect(gw.port()).await;
        assert_eq!(c.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n");
        let reply = c.cmd(&format!("PASS {PASS}")).await;
        if reply.starts_with("+OK") {
            break c;
        }
        assert_eq!(reply, "-ERR [IN-USE] maildrop already locked\r\n");
        assert!(tokio::time::Instant::now() < deadline, "the lock was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(c.cmd("STAT").await, format!("+OK 1 {}\r\n", message(1).len()));
    assert_eq!(inbox_uids(&env, acct.id, a1.mailbox_id).await, vec![a1.uid]);
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let env = TestEnv::start().await;
    let acct = env.add_account(USER, PASS).await;
    append(&env, acct.id, &message(1)).await;
    append(&env, acct.id, &message(2)).await;
    let gw = Gateway::start(config(&env)).await;

    let (mut c, _) = connect(gw.port()).await;
    assert!(c.cmd("CAPA").await.starts_with("+OK"));
    assert!(String::from_utf8(c.body().await).unwrap().contains("PIPELINING\r\n"));
    // RFC 2449 §6.6: the whole batch in one write.
    let batch = format!("USER {USER}\r\nPASS {PASS}\r\nSTAT\r\nRETR 2\r\nDELE 1\r\nLIST\r\nNOOP\r\nRSET\r\nQUIT\r\n");
    c.io.get_mut().write_all(batch.as_bytes()).await.unwrap();
    assert_eq!(c.line().await, "+OK send PASS\r\n");
    assert!(c.line().await.starts_with("+OK alice@example.com has 2 messages"));
    assert!(c.line().await.starts_with("+OK 2 "));
    assert!(c.line().await.starts_with("+OK "));
    assert_eq!(c.body().await, message(2));
    assert_eq!(c.line().await, "+OK message 1 deleted\r\n");
    assert_eq!(c.line().await, format!("+OK 1 messages ({} octets)\r\n", message(2).len()));
    assert_eq!(c.body().await, format!("2 {}\r\n", message(2).len()).into_bytes());
    assert_eq!(c.line().await, "+OK\r\n");
    assert!(c.line().await.starts_with("+OK maildrop has 2 messages"));
    assert_eq!(c.line().await, "+OK Mailfleet POP3 server signing off (2 messages left)\r\n");
    assert!(c.eof().await);
}

#[tokio::test]
async fn apop_and_sasl_plain_logins() {
    let env = TestEnv::start().await;
    let acct = env.add_account(USER, PASS).await;
    env.admin()
        .await
        .set_apop_secret(pb::SetApopSecretRequest { address: USER.into(), secret: "tanstaaf".into() })
        .await
        .expect("set apop secret");
    let gw = Gateway::start(config(&env)).await;

    let (mut c, greeting) = connect(gw.port()).await;
    let timestamp = &greeting[greeting.find('<').unwrap()..=greeting.find('>').unwrap()];
    use md5::{Digest, Md5};
    let wrong = hex::encode(Md5::digest(format!("{timestamp}wrong")));
    assert_eq!(c.cmd(&format!("APOP {USER} {wrong}")).await, "-ERR [AUTH] authentication failed\r\n");
    let digest = hex::encode(Md5::digest(format!("{timestamp}tanstaaf")));
    assert_eq!(c.cmd(&format!("APOP {USER} {digest}")).await, format!("+OK {USER} has 0 messages (0 octets)\r\n"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));

    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (mut c, _) = connect(gw.port()).await;
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64(&format!("\0{USER}\0nope")))).await,
        "-ERR [AUTH] authentication failed\r\n"
    );
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ \r\n");
    assert_eq!(c.cmd(&b64(&format!("\0{USER}\0{PASS}"))).await, format!("+OK {USER} has 0 messages (0 octets)\r\n"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));

    // AUTH LOGIN too.
    let (mut c, _) = connect(gw.port()).await;
    assert_eq!(c.cmd("AUTH LOGIN").await, "+ VXNlcm5hbWU6\r\n");
    assert_eq!(c.cmd(&b64(USER)).await, "+ UGFzc3dvcmQ6\r\n");
    assert!(c.cmd(&b64(PASS)).await.starts_with("+OK"));
    let _ = acct;
}

#[tokio::test]
async fn two_gateways_compete_for_one_maildrop() {
    let env = TestEnv::start().await;
    let acct = env.add_account(USER, PASS).await;
    append(&env, acct.id, &message(1)).await;
    let gw1 = Gateway::start(config(&env)).await;
    let gw2 = Gateway::start(config(&env)).await;

    let mut first = login(gw1.port()).await;
    let (mut second, _) = connect(gw2.port()).await;
    assert_eq!(second.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n");
    assert_eq!(second.cmd(&format!("PASS {PASS}")).await, "-ERR [IN-USE] maildrop already locked\r\n");
    // Still in AUTHORIZATION: it may try again once the first session ends.
    assert!(first.cmd("QUIT").await.starts_with("+OK"));
    assert!(first.eof().await);
    assert_eq!(second.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n");
    assert!(second.cmd(&format!("PASS {PASS}")).await.starts_with("+OK"));
}

#[tokio::test]
async fn retr_of_a_20_mb_message_streams() {
    let env = TestEnv::start().await;
    let acct = env.add_account(USER, PASS).await;
    // 20 MiB of 100-octet lines, some starting with a dot.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    let mut i = 0u32;
    while big.len() < 20 << 20 {
        let lead = if i.is_multiple_of(7) { "." } else { "x" };
        big.extend_from_slice(format!("{lead}{i:0>96}\r\n").as_bytes());
        i += 1;
    }
    append(&env, acct.id, &big).await;
    let gw = Gateway::start(config(&env)).await;

    let mut c = login(gw.port()).await;
    assert_eq!(c.cmd("LIST 1").await, format!("+OK 1 {}\r\n", big.len()));
    assert_eq!(c.cmd("RETR 1").await, format!("+OK {} octets\r\n", big.len()));
    let got = c.body().await;
    assert_eq!(got.len(), big.len());
    assert!(got == big, "RETR returns the message unchanged after un-stuffing");
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
}

/// A rustls client that trusts exactly the test certificate.
fn tls_connector(cert_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn stls_and_implicit_tls_with_a_test_certificate() {
    let env = TestEnv::start().await;
    let acct = env.add_account(USER, PASS).await;
    append(&env, acct.id, &message(1)).await;
    let mut cfg = config(&env);
    let (cert, _dir) = with_test_certificate(&mut cfg);
    // As in production: no passwords in clear, even on loopback.
    cfg.allow_plaintext_auth_on_loopback = false;
    let gw = Gateway::start(cfg).await;
    let connector = tls_connector(&cert);
    let name = ServerName::try_from("localhost").unwrap();

    let (mut c, _) = connect(gw.port()).await;
    assert!(c.cmd("CAPA").await.starts_with("+OK"));
    let caps = String::from_utf8(c.body().await).unwrap();
    assert!(caps.contains("STLS\r\n") && !caps.contains("USER\r\n"), "{caps}");
    assert!(c.cmd(&format!("USER {USER}")).await.starts_with("-ERR [AUTH] plaintext authentication disallowed"));
    // Pipelined input after STLS must be discarded (RFC 2595 §4).
    c.send("STLS\r\nNOOP").await;
    assert_eq!(c.line().await, "+OK Begin TLS negotiation\r\n");
    let tcp = c.io.into_inner();
    let tls = connector.connect(name.clone(), tcp).await.expect("TLS handshake");
    let mut c = Client::new(tls);
    assert!(c.cmd("CAPA").await.starts_with("+OK"));
    let caps = String::from_utf8(c.body().await).unwrap();
    assert!(!caps.contains("STLS") && caps.contains("USER\r\n"), "{caps}");
    assert_eq!(c.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n");
    assert!(c.cmd(&format!("PASS {PASS}")).await.starts_with("+OK"));
    assert_eq!(c.cmd("RETR 1").await, format!("+OK {} octets\r\n", message(1).len()));
    assert_eq!(c.body().await, message(1));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));

    // POP3S: TLS from the first byte.
    let tls_port = gw.running.tls_addr.expect("POP3S listener").port();
    let tcp = TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
    let mut c = Client::new(connector.connect(name, tcp).await.expect("TLS handshake"));
    assert!(c.line().await.starts_with("+OK Mailfleet POP3 ready"));
    assert_eq!(c.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n");
    assert!(c.cmd(&format!("PASS {PASS}")).await.starts_with("+OK"));
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
}

#[tokio::test]
async fn limits_and_storage_outage() {
    let mut env = TestEnv::start().await;
    env.add_account(USER, PASS).await;
    let mut cfg = config(&env);
    cfg.connection.idle_timeout = Duration::from_millis(400);
    cfg.connection.max_auth_failures = 2;
    let gw = Gateway::start(cfg).await;

    // RFC 2449 §4: an over-long line before login closes the connection.
    let (mut c, _) = connect(gw.port()).await;
    assert_eq!(c.cmd(&"X".repeat(1000)).await, "-ERR line too long, closing connection\r\n");
    assert!(c.eof().await);
    let (mut c, _) = connect(gw.port()).await;
    // Repeated bad passwords close the connection.
    assert_eq!(c.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n");
    assert_eq!(c.cmd("PASS wrong").await, "-ERR [AUTH] authentication failed\r\n");
    assert_eq!(c.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n");
    assert_eq!(c.cmd("PASS wrong").await, "-ERR [AUTH] too many authentication failures, closing\r\n");
    assert!(c.eof().await);

    // Autologout (RFC 1939 §3), here shortened for the test.
    let mut c = login(gw.port()).await;
    assert_eq!(c.line().await, "-ERR autologout timer expired, closing\r\n");
    assert!(c.eof().await);

    // Storage down: a temporary error, and the session goes on.
    env.stop_storage().await;
    let (mut c, _) = connect(gw.port()).await;
    assert_eq!(c.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n");
    assert_eq!(
        c.cmd(&format!("PASS {PASS}")).await,
        "-ERR [SYS/TEMP] storage temporarily unavailable, try again later\r\n"
    );
    assert_eq!(c.cmd("QUIT").await, "+OK Mailfleet POP3 server signing off\r\n");
}

#[tokio::test]
async fn python_poplib_and_curl_as_real_clients() {
    let env = TestEnv::start().await;
    let acct = env.add_account(USER, PASS).await;
    let a1 = append(&env, acct.id, &message(1)).await;
    append(&env, acct.id, &message(2)).await;
    let gw = Gateway::start(config(&env)).await;
    let port = gw.port();

    let script = format!(
        r#"
import poplib
p = poplib.POP3("127.0.0.1", {port}, timeout=20)
caps = p.capa()
assert "UIDL" in caps and "TOP" in caps, caps
p.user("{USER}")
p.pass_("{PASS}")
count, size = p.stat()
print("stat", count, size)
resp, lines, octets = p.retr(1)
print("retr", b"\n".join(lines).decode())
print("uidl", p.uidl(2).decode())
p.dele(1)
print("quit", p.quit().decode())
"#
    );
    let out = tokio::process::Command::new("python3").arg("-c").arg(&script).output().await.expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "poplib failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let m1 = message(1);
    assert!(stdout.contains(&format!("stat 2 {}", m1.len() + message(2).len())), "{stdout}");
    // poplib un-stuffs: the dot lines arrive as sent.
    assert!(stdout.contains("Hello 1\n.leading dot\n..two dots\nlast line"), "{stdout}");
    assert!(stdout.contains("+OK 2 "), "{stdout}");
    assert!(stdout.contains("quit +OK"), "{stdout}");
    assert!(!inbox_uids(&env, acct.id, a1.mailbox_id).await.contains(&a1.uid), "poplib's DELE + QUIT removed it");

    // curl: list, then retrieve message 1 (now the former message 2).
    let url = format!("pop3://127.0.0.1:{port}/");
    let list = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "20", "--list-only", "-u", &format!("{USER}:{PASS}"), &url])
        .output()
        .await
        .expect("curl runs");
    assert!(list.status.success(), "curl --list-only: {:?}", list);
    assert_eq!(String::from_utf8_lossy(&list.stdout), format!("1 {}\r\n", message(2).len()));
    let retr = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "20", "-u", &format!("{USER}:{PASS}"), &format!("{url}1")])
        .output()
        .await
        .expect("curl runs");
    assert!(retr.status.success(), "curl RETR: {:?}", retr);
    assert_eq!(retr.stdout, message(2));
}

#[tokio::test]
async fn lease_is_renewed_while_the_session_lives_and_expires_after_a_crash() {
    use pb::locks_client::LocksClient;
    let env = TestEnv::start().await;
    let acct = env.add_account(USER, PASS).await;
    let mut cfg = config(&env);
    cfg.lock_ttl = Duration::from_secs(3); // renewed every second
    let gw1 = Gateway::start(cfg.clone()).await;
    let gw2 = Gateway::start(cfg).await;

    // A gateway that crashed while holding the maildrop: its lease is never
    // renewed nor released, yet it lapses by itself.
    let crashed =
        pb::LockRequest { account_id: acct.id, name: "pop3".into(), holder: "crashed".into(), ttl_seconds: 1 };
    assert!(
        LocksClient::new(env.session_channel_as("pop3-gateway", acct.id).await)
            .acquire(crashed)
            .await
            .unwrap()
            .into_inner()
            .held
    );
    let (mut c, _) = connect(gw1.port()).await;
    assert_eq!(c.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n");
    assert_eq!(c.cmd(&format!("PASS {PASS}")).await, "-ERR [IN-USE] maildrop already locked\r\n");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert_eq!(c.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n");
        let reply = c.cmd(&format!("PASS {PASS}")).await;
        if reply.starts_with("+OK") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the crashed holder's lease never lapsed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Alive past its TTL, the session still holds the maildrop: it renews.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (mut other, _) = connect(gw2.port()).await;
    assert_eq!(other.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n");
    assert_eq!(other.cmd(&format!("PASS {PASS}")).await, "-ERR [IN-USE] maildrop already locked\r\n");
    assert_eq!(c.cmd("NOOP").await, "+OK\r\n");
}

#[tokio::test]
async fn shutdown_closes_sessions_without_update() {
    let env = TestEnv::start().await;
    let acct = env.add_account(USER, PASS).await;
    let a1 = append(&env, acct.id, &message(1)).await;
    let mut gw = Gateway::start(config(&env)).await;

    let mut c = login(gw.port()).await;
    assert_eq!(c.cmd("DELE 1").await, "+OK message 1 deleted\r\n");
    gw.shutdown.cancel();
    assert_eq!(c.line().await, "-ERR [SYS/TEMP] server shutting down\r\n");
    assert!(c.eof().await);
    tokio::time::timeout(WAIT, &mut gw.running.task).await.expect("gateway stops").unwrap();
    assert_eq!(inbox_uids(&env, acct.id, a1.mailbox_id).await, vec![a1.uid], "no UPDATE on shutdown");
}

/// Connect as a load balancer would: a PROXY v2 header naming `client` first.
#[tokio::test]
async fn proxy_v2_from_a_trusted_balancer_names_the_client() {
    let env = TestEnv::start().await;
    env.add_account(USER, PASS).await;
    let gw = Gateway::start(proxied_config(&env)).await;

    // The balancer is on loopback but the client is not: no passwords in
    // clear (RFC 2595 §2.2), as for any remote client.
    let mut remote = connect_proxied(gw.port(), "203.0.113.5:40000").await;
    assert!(remote.line().await.starts_with("+OK "));
    assert!(remote.cmd(&format!("USER {USER}")).await.starts_with("-ERR [AUTH] plaintext authentication disallowed"));
    assert!(remote.cmd("QUIT").await.starts_with("+OK"));

    // A loopback client behind the same balancer keeps the loopback exception.
    let mut local = connect_proxied(gw.port(), "127.0.0.1:40001").await;
    assert!(local.line().await.starts_with("+OK "));
    assert_eq!(local.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n");
    assert!(local.cmd(&format!("PASS {PASS}")).await.starts_with("+OK"));
    assert!(local.cmd("QUIT").await.starts_with("+OK"));

    // A trusted peer must send a header: a bare client line is refused, and
    // so is silence (closed after proxy_header_timeout), both before any greeting.
    let mut bare = Client::new(TcpStream::connect(("127.0.0.1", gw.port())).await.unwrap());
    bare.send("CAPA").await;
    assert!(bare.eof().await, "no greeting without a PROXY header");
    let mut silent = Client::new(TcpStream::connect(("127.0.0.1", gw.port())).await.unwrap());
    assert!(silent.eof().await);
}

#[tokio::test]
async fn untrusted_peers_cannot_claim_an_address_and_limits_use_the_real_client() {
    let env = TestEnv::start().await;
    env.add_account(USER, PASS).await;

    // Balancer elsewhere: a loopback peer is then just a client, and its
    // PROXY header is not honoured (it is a bad command to POP3).
    let mut cfg = proxied_config(&env);
    cfg.connection.proxy_protocol.trusted = vec!["192.0.2.0/24".into()];
    let gw = Gateway::start(cfg).await;
    let mut c = Client::new(TcpStream::connect(("127.0.0.1", gw.port())).await.unwrap());
    assert!(c.line().await.starts_with("+OK "));
    assert_eq!(c.cmd(&format!("USER {USER}")).await, "+OK send PASS\r\n", "still the loopback exception");
    assert!(c.cmd("QUIT").await.starts_with("+OK"));
    drop(gw);

    // One connection per client address: a second one from the same client
    // (through the same balancer) is refused, another client is served.
    let mut cfg = proxied_config(&env);
    cfg.connection.max_connections_per_ip = 1;
    let gw = Gateway::start(cfg).await;
    let mut first = connect_proxied(gw.port(), "198.51.100.1:1000").await;
    assert!(first.line().await.starts_with("+OK "));
    let mut second = connect_proxied(gw.port(), "198.51.100.1:1001").await;
    assert_eq!(second.line().await, "-ERR [SYS/TEMP] too many connections from your address\r\n");
    assert!(second.eof().await);
    let mut other = connect_proxied(gw.port(), "198.51.100.2:1000").await;
    assert!(other.line().await.starts_with("+OK "));
    // The slot is given back when the first one leaves (the server may
    // still be ending that session when the client sees it close).
    assert!(first.cmd("QUIT").await.starts_with("+OK"));
    assert!(first.eof().await);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut again = connect_proxied(gw.port(), "198.51.100.1:1002").await;
        if again.line().await.starts_with("+OK ") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn health_endpoint_serves_until_shutdown() {
    let env = TestEnv::start().await;
    let gw = Gateway::start(proxied_config(&env)).await;
    let health = gw.running.health_addr.expect("health endpoint configured");
    let get = || async move {
        let mut s = TcpStream::connect(health).await?;
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    assert!(get().await.unwrap().starts_with("HTTP/1.0 200 OK\r\n"));
    gw.shutdown.cancel();
    let deadline = tokio::time::Instant::now() + WAIT;
    while get().await.is_ok_and(|r| r.starts_with("HTTP/1.0 200")) {
        assert!(tokio::time::Instant::now() < deadline, "health still 200 after shutdown");
        tokio::task::yield_now().await;
    }
}
