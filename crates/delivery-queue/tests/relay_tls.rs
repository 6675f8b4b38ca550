//! Verified TLS in the relay and MTA-STS (RFC 8461), against scripted MX
//! hosts and a local HTTPS server for policies, with a test CA as the only
//! extra trust anchor; the table resolver answers every DNS question, so
//! nothing leaves the machine.

mod relay_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use delivery_queue::relay::client::Credentials;
use delivery_queue::relay::route::TableResolver;
use mailfleet_testkit::tls::TestCa;
use relay_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MSG: &[u8] = b"From: Alice <alice@local.test>\r\nTo: bob@remote.test\r\nSubject: tls\r\n\r\nHello.\r\n";
const WAIT: Duration = Duration::from_secs(20);

/// An MX with STARTTLS whose certificate the test CA issued for `names`.
async fn mx_with_cert(ca: &TestCa, names: &[&str], tune: impl FnOnce(&mut Script)) -> ScriptedMx {
    let mut script = Script { starttls: true, pipelining: true, cert: Some(ca.issue(names)), ..Script::default() };
    tune(&mut script);
    ScriptedMx::start(script).await
}

/// A resolver with one MX record per domain: (domain, MX host, its address).
fn routes(table: &[(&str, &str, SocketAddr)]) -> TableResolver {
    table.iter().fold(TableResolver::new(), |r, (domain, mx, addr)| r.with_mx(domain, 10, mx).with_host(mx, *addr))
}

/// The relay with `roots` as an extra trust anchor and retries far apart
/// (one attempt per test), tuned further by `tune`.
async fn start_trusting(
    resolver: TableResolver,
    roots: std::path::PathBuf,
    tune: impl FnOnce(&mut delivery_queue::QueueConfig),
) -> Ctx {
    Ctx::start(resolver, move |c| {
        c.relay.tls_extra_roots = Some(roots);
        c.relay.schedule.intervals = vec![Duration::from_secs(600)];
        tune(c);
    })
    .await
}

/// Wait until the relay recorded a failed attempt for `queue_id`; its error.
async fn deferred(ctx: &Ctx, queue_id: &str) -> String {
    wait_for(WAIT, "a deferred attempt", || async { ctx.relay_state(queue_id).await.is_some() }).await;
    ctx.relay_state(queue_id).await.expect("state").last_error
}

#[tokio::test]
async fn require_tls_needs_a_certificate_that_verifies_before_anything_is_sent() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("dir");
    let roots = ca.write_cert(dir.path());
    // Self-signed (untrusted), issued for another name, and valid.
    let untrusted = ScriptedMx::start(Script { starttls: true, ..Script::default() }).await;
    let wrong_name = mx_with_cert(&ca, &["mx.elsewhere.test"], |_| {}).await;
    let good = mx_with_cert(&ca, &["mx.good.test"], |_| {}).await;
    let opportunistic = ScriptedMx::start(Script { starttls: true, ..Script::default() }).await;
    let resolver = routes(&[
        ("remote.test", "mx.remote.test", untrusted.addr),
        ("wrong.test", "mx.wrong.test", wrong_name.addr),
        ("good.test", "mx.good.test", good.addr),
        ("plain.test", "mx.plain.test", opportunistic.addr),
    ]);
    let ctx = start_trusting(resolver, roots, |c| {
        c.relay.require_tls = vec!["remote.test".into(), "wrong.test".into(), "good.test".into()];
    })
    .await;
    ctx.queue("T1", SENDER, vec![rcpt("bob@remote.test")], MSG, |_| {}).await;
    ctx.queue("T2", SENDER, vec![rcpt("bob@wrong.test")], MSG, |_| {}).await;
    ctx.queue("T3", SENDER, vec![rcpt("bob@good.test")], MSG, |_| {}).await;
    ctx.queue("T4", SENDER, vec![rcpt("bob@plain.test")], MSG, |_| {}).await;

    let error = deferred(&ctx, "T1").await;
    assert!(error.contains("TLS") && error.contains("certificate"), "{error}");
    let error = deferred(&ctx, "T2").await;
    assert!(error.contains("certificate"), "{error}");
    for mx in [&untrusted, &wrong_name] {
        assert!(mx.saw("STARTTLS"), "TLS was tried");
        assert!(!mx.saw("MAIL") && !mx.saw("RCPT"), "nothing after a failed check: {:?}", mx.commands);
        assert!(mx.received().is_empty());
    }
    wait_for(WAIT, "delivery over verified TLS", || async { good.received().len() == 1 }).await;
    assert!(good.received()[0].tls);
    // Without a policy, TLS to an MX stays opportunistic (RFC 7435).
    wait_for(WAIT, "opportunistic delivery", || async { opportunistic.received().len() == 1 }).await;
    assert!(opportunistic.received()[0].tls, "encrypted, certificate unchecked");
    // Every attempt above ended (deferred or delivered); a bounce is queued
    // before an attempt ends, so none was.
    assert_eq!(ctx.stream_published(&ctx.config.stream).await, 0, "deferred, not bounced");
    ctx.stop().await;
}

#[tokio::test]
async fn the_smarthost_password_goes_only_to_a_verified_certificate() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("dir");
    let roots = ca.write_cert(dir.path());
    let auth = Some(("relay-user".to_string(), "s3cret".to_string()));
    let impostor = ScriptedMx::start(Script { starttls: true, auth: auth.clone(), ..Script::default() }).await;
    let isp = mx_with_cert(&ca, &["smtp.isp.test"], |s| s.auth = auth.clone()).await;
    let credentials = Credentials { username: "relay-user".into(), password: "s3cret".into() };

    let start = |addr: SocketAddr, roots: std::path::PathBuf, credentials: Credentials| async move {
        let resolver = TableResolver::new().with_host("smtp.isp.test", addr);
        start_trusting(resolver, roots, move |c| {
            c.relay.smarthost = Some(format!("smtp.isp.test:{}", addr.port()));
            c.relay.smarthost_auth = Some(credentials);
        })
        .await
    };
    let ctx = start(impostor.addr, roots.clone(), credentials.clone()).await;
    ctx.queue("S1", SENDER, vec![rcpt("anyone@anywhere.test")], MSG, |_| {}).await;
    let error = deferred(&ctx, "S1").await;
    assert!(error.contains("certificate"), "{error}");
    assert!(impostor.saw("STARTTLS"));
    assert!(!impostor.saw("AUTH"), "the password never reached it: {:?}", impostor.commands);
    assert!(!impostor.saw("MAIL") && impostor.received().is_empty());
    ctx.stop().await;

    let ctx = start(isp.addr, roots, credentials).await;
    ctx.queue("S2", SENDER, vec![rcpt("anyone@anywhere.test")], MSG, |_| {}).await;
    wait_for(WAIT, "delivery through the smarthost", || async { isp.received().len() == 1 }).await;
    let got = &isp.received()[0];
    assert!(got.tls);
    assert_eq!(got.user.as_deref(), Some("relay-user"));
    ctx.stop().await;
}

/// Serves `https://mta-sts.<domain>/.well-known/mta-sts.txt` for each
/// domain given, with a certificate from `ca`; counts requests.
struct PolicyServer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl PolicyServer {
    async fn start(ca: &TestCa, policies: &[(&str, &str)]) -> PolicyServer {
        let names: Vec<String> = policies.iter().map(|(d, _)| format!("mta-sts.{d}")).collect();
        let (cert, key) = ca.issue(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let tls = mailfleet_runtime::tls::server_config_from_pem(&cert, &key).expect("server TLS");
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let bodies: Arc<Vec<(String, String)>> =
            Arc::new(policies.iter().map(|(d, b)| (format!("mta-sts.{d}"), b.to_string())).collect());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (acceptor, bodies, counter) = (acceptor.clone(), bodies.clone(), counter.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else { return };
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let request = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    let found = request
                        .starts_with("get /.well-known/mta-sts.txt http/1.1")
                        .then(|| bodies.iter().find(|(host, _)| request.contains(&format!("\r\nhost: {host}\r\n"))))
                        .flatten();
                    let response = match found {
                        Some((_, body)) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                    };
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        PolicyServer { addr, requests }
    }
}

#[tokio::test]
async fn an_mta_sts_enforce_policy_decides_which_mx_and_what_tls() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("dir");
    let roots = ca.write_cert(dir.path());
    let enforce = "version: STSv1\r\nmode: enforce\r\nmx: *.sts.test\r\nmax_age: 86400\r\n";
    let testing = "version: STSv1\r\nmode: testing\r\nmx: mx.listed.test\r\nmax_age: 86400\r\n";
    let policies = PolicyServer::start(
        &ca,
        &[("sts.test", enforce), ("rogue.test", enforce), ("badcert.test", enforce), ("try.test", testing)],
    )
    .await;
    // sts.test: its MX matches the policy and has a valid certificate.
    let good = mx_with_cert(&ca, &["mx1.sts.test"], |_| {}).await;
    // rogue.test: its MX record points outside the policy's patterns (an
    // attacker who can change DNS, but not the HTTPS policy).
    let rogue = mx_with_cert(&ca, &["mx.attacker.test"], |_| {}).await;
    // badcert.test: the MX matches, but its certificate is self-signed.
    let badcert = ScriptedMx::start(Script { starttls: true, ..Script::default() }).await;
    // try.test: testing mode; nothing is refused.
    let trying = ScriptedMx::start(Script { starttls: true, ..Script::default() }).await;
    let resolver = routes(&[
        ("sts.test", "mx1.sts.test", good.addr),
        ("rogue.test", "mx.attacker.test", rogue.addr),
        ("badcert.test", "mx.sts.test", badcert.addr),
        ("try.test", "mx.unlisted.test", trying.addr),
    ]);
    let resolver = ["sts.test", "rogue.test", "badcert.test", "try.test"].iter().fold(resolver, |r, d| {
        r.with_txt(&format!("_mta-sts.{d}"), "v=STSv1; id=20261207T1").with_host(&format!("mta-sts.{d}"), policies.addr)
    });
    let ctx = start_trusting(resolver, roots, |_| {}).await;
    ctx.queue("M1", SENDER, vec![rcpt("bob@sts.test")], MSG, |_| {}).await;
    ctx.queue("M2", SENDER, vec![rcpt("bob@rogue.test")], MSG, |_| {}).await;
    ctx.queue("M3", SENDER, vec![rcpt("bob@badcert.test")], MSG, |_| {}).await;
    ctx.queue("M4", SENDER, vec![rcpt("bob@try.test")], MSG, |_| {}).await;

    wait_for(WAIT, "delivery to the listed MX", || async { good.received().len() == 1 }).await;
    assert!(good.received()[0].tls);
    let error = deferred(&ctx, "M2").await;
    assert!(error.contains("MTA-STS") && error.contains("allows none of its MX hosts"), "{error}");
    assert!(rogue.commands.lock().expect("lock").is_empty(), "the unlisted MX is never contacted");
    let error = deferred(&ctx, "M3").await;
    assert!(error.contains("certificate"), "{error}");
    assert!(!badcert.saw("MAIL") && badcert.received().is_empty());
    wait_for(WAIT, "testing mode delivers", || async { trying.received().len() == 1 }).await;

    // The policy is cached for max_age: mail for the same id fetches nothing.
    let fetched = policies.requests.load(Ordering::SeqCst);
    assert_eq!(fetched, 4, "one fetch per domain");
    ctx.queue("M5", SENDER, vec![rcpt("carol@sts.test")], MSG, |_| {}).await;
    wait_for(WAIT, "second delivery", || async { good.received().len() == 2 }).await;
    assert_eq!(policies.requests.load(Ordering::SeqCst), fetched, "served from the cache");
    ctx.stop().await;
}
