//! The clients and scenarios against the in-process fake servers of
//! `fake/`: what loadgen sends must arrive intact, and what it reports
//! must match what happened.

mod fake;

use std::sync::Arc;

use loadgen::cli::{Common, IdleArgs, ImapArgs, Pop3Args, PopulateArgs, SizeArgs, SmtpArgs};
use loadgen::imap::{ImapClient, ImapError};
use loadgen::pop3::{MsgNum, Pop3Client};
use loadgen::scenario::{self, Context};
use loadgen::smtp::codec::dot_stuff;
use loadgen::smtp::{Outcome, SmtpClient, Stage};

use fake::{Fake, ImapOptions, PASSWORD};

const FULL: ImapOptions = ImapOptions { idle: true, literal_plus: false, idle_silent: false };

/// SMTP scenario arguments: watched over IMAP, one command per round
/// trip, one pass.
fn smtp_args(messages: u64, concurrency: u32) -> SmtpArgs {
    SmtpArgs {
        messages,
        concurrency,
        sizes: sizes(),
        watch: true,
        no_watch: false,
        watch_poll: false,
        pipelining: false,
        mail_from: "loadgen@bench.test".into(),
        ehlo: "loadgen.test".into(),
        passes: 1,
    }
}

fn common(fake: &Fake, users: u32) -> Common {
    Common {
        host: "127.0.0.1".into(),
        smtp_port: fake.smtp.port(),
        imap_port: fake.imap.port(),
        pop3_port: fake.pop3.port(),
        user_format: "load{}@bench.test".into(),
        users,
        password: PASSWORD.into(),
        max_seconds: 30,
        seed: Some(42),
        label: None,
        cpu_pids: vec![],
    }
}

fn sizes() -> SizeArgs {
    SizeArgs { size_min: 2048, size_max: 40_000 }
}

fn figure(r: &loadgen::result::ScenarioResult, name: &str) -> f64 {
    r.figures.get(name).and_then(|f| f.value).unwrap_or_else(|| panic!("no figure {name}: {:?}", r.figures.keys()))
}

#[tokio::test]
async fn smtp_client_sends_content_intact_and_survives_a_refusal() {
    let fake = Fake::start(FULL).await;
    let mut client = SmtpClient::connect(fake.smtp).await.expect("connect");
    client.ehlo("test.example").await.expect("ehlo");
    assert!(client.supports("PIPELINING"));
    let content = b"Subject: dots\r\n\r\n.leading\r\n..two\r\n.\r\nlast\r\n";
    for pipelining in [false, true] {
        let t = client.send_mail("a@b.test", "u1@bench.test", &dot_stuff(content), pipelining).await.expect("send");
        assert_eq!(t.outcome, Outcome::Accepted);
        assert!(t.end_of_data_sent.is_some() && t.finished >= t.started);
        let t = client.send_mail("a@b.test", "reject@bench.test", &dot_stuff(content), pipelining).await.expect("send");
        assert_eq!(t.outcome, Outcome::Rejected { stage: Stage::Rcpt, code: 550 });
    }
    client.quit().await.expect("quit");
    let got = fake.store.messages("u1@bench.test");
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m == content));
}

#[tokio::test]
async fn imap_client_appends_and_fetches_with_both_literal_kinds() {
    for literal_plus in [false, true] {
        let fake = Fake::start(ImapOptions { idle: true, literal_plus, idle_silent: false }).await;
        let mut c = ImapClient::connect(fake.imap).await.expect("connect");
        // The fake sends no CAPABILITY code after LOGIN, so the client asks.
        c.login("u1", PASSWORD).await.expect("login");
        assert!(c.has_capability("IDLE"));
        assert_eq!(c.has_capability("LITERAL+"), literal_plus);
        let message = b"Subject: x\r\nX-Bench-Id: r-1\r\n\r\nbody line\r\n* 9 EXISTS\r\nA1 OK not a tag\r\n";
        c.append("INBOX", &["\\Seen"], message).await.expect("append");
        let selected = c.select("INBOX").await.expect("select");
        assert_eq!(selected.exists, 1);
        assert_eq!(selected.uid_next, Some(2));
        let mut bodies = Vec::new();
        c.run_with("UID FETCH 1 BODY.PEEK[]", |r| {
            let f = r.fetch()?;
            bodies.push((f.uid, f.sections[0].1.as_deref().map(<[u8]>::to_vec)));
            Ok(())
        })
        .await
        .expect("fetch");
        assert_eq!(bodies, [(Some(1), Some(message.to_vec()))]);
        let err = c.run_with("FROB", |_| Ok(())).await.expect_err("BAD");
        assert!(matches!(err, ImapError::Bad { .. }), "{err}");
        c.logout().await.expect("logout");
    }
    let fake = Fake::start(FULL).await;
    let mut c = ImapClient::connect(fake.imap).await.expect("connect");
    let err = c.login("u1", "wrong").await.expect_err("NO");
    assert!(matches!(err, ImapError::No { ref command, .. } if command == "LOGIN"), "{err}");
    assert!(!err.to_string().contains("wrong"), "the password must not appear in errors");
}

#[tokio::test]
async fn pop3_client_unstuffs() {
    let fake = Fake::start(FULL).await;
    let message = b"Subject: p\r\n\r\n.dot\r\n.\r\nend\r\n".to_vec();
    fake.store.deliver("u1", message.clone(), vec![]);
    let mut c = Pop3Client::connect(fake.pop3).await.expect("connect");
    c.login("u1", PASSWORD).await.expect("login");
    assert_eq!(c.stat().await.expect("stat"), (1, message.len() as u64));
    assert_eq!(c.list().await.expect("list"), [(MsgNum(1), message.len() as u64)]);
    assert_eq!(c.uidl().await.expect("uidl")[0].1, "uid1");
    assert_eq!(c.retr(MsgNum(1)).await.expect("retr"), message);
    assert!(c.retr(MsgNum(5)).await.is_err());
    c.quit().await.expect("quit");
}

#[tokio::test]
async fn smtp_scenario_sees_every_message_over_idle() {
    let fake = Fake::start(FULL).await;
    // An old message: the watchers must only look above UIDNEXT.
    fake.store.deliver("load1@bench.test", b"X-Bench-Id: old-1\r\n\r\nx\r\n".to_vec(), vec![]);
    let ctx = Arc::new(Context::new(&common(&fake, 3)).expect("context"));
    let args = SmtpArgs { watch: false, passes: 2, ..smtp_args(60, 4) };
    let r = scenario::smtp::run(ctx, &args).await.expect("smtp");
    assert!(r.complete, "{}", r.human());
    // Two passes: counts add up, the rest is the median pass's.
    assert_eq!(figure(&r, "messages_accepted"), 120.0);
    assert_eq!(figure(&r, "messages_visible"), 120.0);
    assert_eq!(figure(&r, "never_seen"), 0.0);
    assert!(figure(&r, "accept_p99_ms") >= figure(&r, "accept_p50_ms"));
    assert!(figure(&r, "accepted_msg_per_s") > 0.0 && figure(&r, "delivered_msg_per_s") > 0.0);
    // Round-robin over 3 users, and every message carries its id.
    for u in 1..=3 {
        let msgs = fake.store.messages(&format!("load{u}@bench.test"));
        let extra = usize::from(u == 1);
        assert_eq!(msgs.len(), 40 + extra);
        for m in &msgs[extra..] {
            assert!(String::from_utf8_lossy(m).contains("\r\nX-Bench-Id: "));
            assert!((2048..=40_000).contains(&m.len()));
        }
    }
}

/// A server that takes IDLE but never announces new mail: the watchers
/// look for themselves after a quiet spell, so the run still ends with
/// every message seen.
#[tokio::test]
async fn smtp_scenario_ends_when_idle_announces_nothing() {
    let fake = Fake::start(ImapOptions { idle: true, literal_plus: false, idle_silent: true }).await;
    let ctx = Arc::new(Context::new(&common(&fake, 2)).expect("context"));
    let args = smtp_args(4, 2);
    let r = scenario::smtp::run(ctx, &args).await.expect("smtp");
    assert!(r.complete, "{}", r.human());
    assert_eq!(figure(&r, "messages_visible"), 4.0);
    assert!(figure(&r, "visible_p50_ms") >= 1000.0, "found by looking, not announced");
}

#[tokio::test]
async fn smtp_scenario_polls_without_idle() {
    let fake = Fake::start(ImapOptions { idle: false, literal_plus: false, idle_silent: false }).await;
    let ctx = Arc::new(Context::new(&common(&fake, 2)).expect("context"));
    let args = SmtpArgs { pipelining: true, ..smtp_args(10, 2) };
    let r = scenario::smtp::run(ctx, &args).await.expect("smtp");
    assert!(r.complete, "{}", r.human());
    assert_eq!(figure(&r, "messages_visible"), 10.0);
    assert!(r.notes.iter().any(|n| n.contains("NOOP")));
}

#[tokio::test]
async fn populate_then_pop3_and_imap_read_it_back() {
    let fake = Fake::start(FULL).await;
    let ctx = Arc::new(Context::new(&common(&fake, 3)).expect("context"));
    let populate = PopulateArgs { messages: 8, concurrency: 2, sizes: sizes() };
    let r = scenario::populate::run(ctx.clone(), &populate).await.expect("populate");
    assert!(r.complete, "{}", r.human());
    assert_eq!(figure(&r, "messages_appended"), 24.0);
    let appended = figure(&r, "bytes_appended");

    // Two passes: every maildrop is read twice, in new sessions.
    let r = scenario::pop3::run(ctx.clone(), &Pop3Args { concurrency: 3, passes: 2 }).await.expect("pop3");
    assert!(r.complete, "{}", r.human());
    assert_eq!(figure(&r, "sessions"), 6.0);
    assert_eq!(figure(&r, "messages_retrieved"), 48.0);
    assert_eq!(figure(&r, "bytes_retrieved"), 2.0 * appended);
    assert!(figure(&r, "messages_per_s") > 0.0 && figure(&r, "first_pass_messages_per_s") > 0.0);
    assert!(scenario::pop3::run(ctx.clone(), &Pop3Args { concurrency: 4, passes: 1 }).await.is_err(), "C > users");
    assert!(scenario::pop3::run(ctx.clone(), &Pop3Args { concurrency: 3, passes: 0 }).await.is_err(), "no pass");

    let imap = ImapArgs { concurrency: 4, rounds: 3, body_fetches: 5, full_fetch: true, passes: 3 };
    let r = scenario::imap::run(ctx.clone(), &imap).await.expect("imap");
    assert!(r.complete, "{}", r.human());
    assert_eq!(figure(&r, "rounds_done"), 12.0);
    assert_eq!(figure(&r, "fetch_body_count"), 60.0);
    assert_eq!(figure(&r, "store_count"), 24.0);
    assert_eq!(figure(&r, "search_text_count"), 12.0);
    // Figures of one pass (three were made).
    assert_eq!(figure(&r, "full_fetch_messages"), 8.0);
    let user1: usize = fake.store.messages("load1@bench.test").iter().map(Vec::len).sum();
    assert_eq!(figure(&r, "full_fetch_bytes"), user1 as f64);
    assert!(figure(&r, "full_fetch_msg_per_s") > 0.0 && figure(&r, "full_fetch_first_pass_msg_per_s") > 0.0);
}

#[tokio::test]
async fn idle_scenario_holds_connections() {
    let fake = Fake::start(FULL).await;
    let ctx = Arc::new(Context::new(&common(&fake, 3)).expect("context"));
    // The fake runs in this process, so measure this process.
    let comm = std::fs::read_to_string("/proc/self/comm").expect("comm").trim().to_owned();
    let args = IdleArgs {
        connections: 30,
        process_name: vec![comm],
        process_root: vec![std::process::id()],
        ramp: 7,
        settle_seconds: 0.0,
    };
    let r = scenario::idle::run(ctx, &args).await.expect("idle");
    assert!(r.complete, "{}", r.human());
    assert_eq!(figure(&r, "connections_idling"), 30.0);
    assert_eq!(figure(&r, "processes_after"), 1.0);
    assert!(r.figures.contains_key("unshared_bytes_per_conn"));
}

#[tokio::test]
async fn refuses_targets_off_loopback() {
    let fake = Fake::start(FULL).await;
    for host in ["10.1.2.3", "192.168.0.1", "example.org", "0.0.0.0"] {
        let mut c = common(&fake, 1);
        c.host = host.into();
        assert!(Context::new(&c).is_err(), "{host} accepted");
    }
}

#[tokio::test]
async fn deadline_marks_the_run_incomplete() {
    // A server that accepts and then never speaks.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let fake = Fake::start(FULL).await;
    let mut c = common(&fake, 2);
    c.pop3_port = port;
    c.max_seconds = 1;
    let ctx = Arc::new(Context::new(&c).expect("context"));
    let r = scenario::pop3::run(ctx, &Pop3Args { concurrency: 2, passes: 1 }).await.expect("pop3");
    assert!(!r.complete);
    assert_eq!(r.errors.get("deadline"), Some(&2));
    hold.abort();
}
