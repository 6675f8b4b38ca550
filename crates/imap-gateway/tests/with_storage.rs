//! The gateway against the real storage service (Postgres + NATS via
//! `mailfleet_testkit::TestEnv`), with raw IMAP, Python's imaplib and curl.

mod common;

use common::{Client, Gateway, glob};
use mailfleet_testkit::TestEnv;

const MSG: &str = "From: Bob <bob@example.org>\r\nTo: alice@example.org\r\nSubject: Hello there\r\nMessage-ID: <m1@example.org>\r\nDate: Sun, 22 Nov 2026 05:00:00 +0000\r\n\r\nHi Alice,\r\nlunch?\r\n";

fn assert_lines(got: &[String], expected: &[&str]) {
    let ok = got.len() == expected.len() && expected.iter().zip(got).all(|(e, g)| glob(e, g));
    assert!(ok, "expected:\n  {}\ngot:\n  {}", expected.join("\n  "), got.join("\n  "));
}

async fn login(addr: std::net::SocketAddr) -> Client {
    let mut c = Client::connect(addr).await;
    assert!(c.line().await.starts_with("* OK"));
    assert_lines(&c.cmd("l", "LOGIN alice@example.org secret-pw").await, &["l OK [CAPABILITY ...] Logged in"]);
    c
}

async fn append(c: &mut Client, tag: &str, mailbox: &str, flags: &str, msg: &str) -> Vec<String> {
    c.send(format!("{tag} APPEND {mailbox} {flags} {{{}}}\r\n", msg.len()).as_bytes()).await;
    assert_lines(&c.until(tag).await, &["+ Ready for literal data"]);
    c.send(format!("{msg}\r\n").as_bytes()).await;
    c.until(tag).await
}

/// `MSG` delivered to INBOX the way delivery-queue does it (PutBlob, then
/// Deliver with a per-recipient header prefix).
async fn deliver(env: &TestEnv, account_id: i64, header_prefix: &[u8]) {
    use mailfleet_proto::storage::v1 as pb;
    let mut messages = pb::messages_client::MessagesClient::new(env.channel_as("delivery-queue").await);
    let chunk = pb::PutBlobRequest { chunk: MSG.as_bytes().to_vec() };
    let blob = messages.put_blob(futures::stream::iter(vec![chunk])).await.expect("put blob").into_inner();
    let target = pb::DeliveryTarget {
        account_id,
        mailbox: String::new(),
        delivery_key: "job-1:alice".into(),
        header_prefix: header_prefix.to_vec(),
        flags: vec![],
    };
    let req = pb::DeliverRequest { blob_id: blob.blob_id, targets: vec![target], internal_date: None };
    messages.deliver(req).await.expect("deliver");
}

#[tokio::test]
async fn mailbox_and_message_lifecycle() {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let mut c = login(gw.addr).await;

    assert_lines(&c.cmd("a1", "CREATE Projects").await, &["a1 OK CREATE completed"]);
    assert_lines(&c.cmd("a2", "CREATE Projects").await, &["a2 NO [ALREADYEXISTS] Mailbox already exists"]);
    assert_lines(
        &append(&mut c, "a3", "INBOX", "(\\Flagged)", MSG).await,
        &["a3 OK [APPENDUID ... 1] APPEND completed"],
    );
    assert_lines(&append(&mut c, "a4", "Nowhere", "()", MSG).await, &["a4 NO [TRYCREATE] No such mailbox"]);
    let list = c.cmd("a5", "LIST \"\" *").await;
    assert!(list.iter().any(|l| l.starts_with("* LIST (") && l.ends_with("\"/\" Projects")), "{list:?}");
    assert!(list.iter().any(|l| l.ends_with("\"/\" INBOX")), "{list:?}");
    assert_lines(
        &c.cmd("a6", "STATUS INBOX (MESSAGES UNSEEN)").await,
        &["* STATUS INBOX (MESSAGES 1 UNSEEN 1)", "a6 OK STATUS completed"],
    );

    let sel = c.cmd("b1", "SELECT INBOX").await;
    assert!(sel.contains(&"* 1 EXISTS".to_string()), "{sel:?}");
    assert!(sel.contains(&"* 1 RECENT".to_string()), "{sel:?}");
    assert!(sel.last().is_some_and(|l| l == "b1 OK [READ-WRITE] SELECT completed"), "{sel:?}");

    let f = c.cmd("b2", "FETCH 1 (FLAGS RFC822.SIZE ENVELOPE)").await;
    assert_lines(
        &f,
        &[
            &format!(
                "* 1 FETCH (FLAGS (\\Flagged \\Recent) RFC822.SIZE {} ENVELOPE (\"Sun, 22 Nov 2026 05:00:00 +0000\" \"Hello there\" ((\"Bob\" NIL \"bob\" \"example.org\")) ((\"Bob\" NIL \"bob\" \"example.org\")) ((\"Bob\" NIL \"bob\" \"example.org\")) ((NIL NIL \"alice\" \"example.org\")) NIL NIL NIL \"<m1@example.org>\"))",
                MSG.len()
            ),
            "b2 OK FETCH completed",
        ],
    );
    let body = c.cmd("b3", "FETCH 1 BODY[TEXT]").await;
    assert_lines(
        &body,
        &[
            "* 1 FETCH (BODY[TEXT] {19}",
            "Hi Alice,",
            "lunch?",
            " FLAGS (\\Flagged \\Seen \\Recent))",
            "b3 OK FETCH completed",
        ],
    );
    assert_lines(&c.cmd("b4", "SEARCH SUBJECT hello").await, &["* SEARCH 1", "b4 OK SEARCH completed"]);
    assert_lines(&c.cmd("b5", "SEARCH UNSEEN").await, &["* SEARCH", "b5 OK SEARCH completed"]);
    assert_lines(&c.cmd("b6", "UID COPY 1 Projects").await, &["b6 OK [COPYUID ... 1 1] COPY completed"]);
    assert_lines(
        &c.cmd("b7", "STORE 1 +FLAGS (\\Deleted)").await,
        &["* 1 FETCH (FLAGS (\\Seen \\Flagged \\Deleted \\Recent))", "b7 OK STORE completed"],
    );
    assert_lines(&c.cmd("b8", "EXPUNGE").await, &["* 1 EXPUNGE", "b8 OK EXPUNGE completed"]);
    assert_lines(
        &c.cmd("b9", "STATUS Projects (MESSAGES SIZE)").await,
        &[&format!("* STATUS Projects (MESSAGES 1 SIZE {})", MSG.len()), "b9 OK STATUS completed"],
    );

    // MOVE back from Projects (RFC 6851): COPYUID first, then EXPUNGE.
    let ex = c.cmd("c1", "SELECT Projects").await;
    assert!(ex.contains(&"* 1 EXISTS".to_string()), "{ex:?}");
    assert_lines(
        &c.cmd("c2", "MOVE 1 INBOX").await,
        &["* OK [COPYUID ... 1 2] Moved UIDs", "* 1 EXPUNGE", "c2 OK MOVE completed"],
    );
    assert_lines(&c.cmd("c3", "CLOSE").await, &["c3 OK CLOSE completed"]);
    assert_lines(&c.cmd("c4", "RENAME Projects Old").await, &["c4 OK RENAME completed"]);
    assert_lines(&c.cmd("c5", "DELETE Old").await, &["c5 OK DELETE completed"]);
    assert_lines(&c.cmd("c6", "DELETE Old").await, &["c6 NO [NONEXISTENT] No such mailbox"]);
    assert_lines(&c.cmd("c8", "GETQUOTAROOT INBOX").await, &["* QUOTAROOT INBOX", "c8 OK GETQUOTAROOT completed"]);
    assert_lines(&c.cmd("c7", "LOGOUT").await, &["* BYE ...", "c7 OK LOGOUT completed"]);
}

#[tokio::test]
async fn two_gateways_see_each_others_changes() {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw1 = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let gw2 = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let mut a = login(gw1.addr).await;
    let mut b = login(gw2.addr).await;
    append(&mut a, "a0", "INBOX", "()", MSG).await;
    assert!(a.cmd("a1", "SELECT INBOX").await.contains(&"* 1 EXISTS".to_string()));
    assert!(b.cmd("b1", "SELECT INBOX").await.contains(&"* 1 EXISTS".to_string()));

    // B appends and flags through its gateway; A's NOOP reports both.
    assert_lines(
        &append(&mut b, "b2", "INBOX", "()", MSG).await,
        &["* 2 EXISTS", "* 1 RECENT", "b2 OK [APPENDUID ... 2] APPEND completed"],
    );
    assert_lines(&b.cmd("b3", "STORE 1 +FLAGS.SILENT (\\Answered)").await, &["b3 OK STORE completed"]);
    let noop = a.cmd("a2", "NOOP").await;
    assert_lines(&noop, &["* 2 EXISTS", "* 1 FETCH (FLAGS (\\Answered \\Recent))", "a2 OK NOOP completed"]);

    // B expunges: A hears of it on NOOP, but not during FETCH (RFC 3501 §7.4.1).
    b.cmd("b4", "STORE 2 +FLAGS.SILENT (\\Deleted)").await;
    assert_lines(&b.cmd("b5", "EXPUNGE").await, &["* 2 EXPUNGE", "b5 OK EXPUNGE completed"]);
    let f = a.cmd("a3", "FETCH 1:2 UID").await;
    // RFC 2180 §4.1.2: the message expunged elsewhere is simply not returned.
    assert_lines(&f, &["* 1 FETCH (UID 1)", "a3 OK FETCH completed"]);
    assert_lines(&a.cmd("a4", "NOOP").await, &["* 2 EXPUNGE", "a4 OK NOOP completed"]);

    // Without a NOOP: a FETCH hears of a flag changed elsewhere once
    // storage's event for the change reached A's gateway.
    assert_lines(&b.cmd("b6", "STORE 1 +FLAGS.SILENT (\\Flagged)").await, &["b6 OK STORE completed"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let f = a.cmd("a5", "FETCH 1 (UID)").await;
        if f.iter().any(|l| l.contains("\\Flagged")) {
            assert!(f.contains(&"* 1 FETCH (FLAGS (\\Answered \\Flagged \\Recent))".to_string()), "{f:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the change never reached A: {f:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn storage_outage_is_a_temporary_no() {
    let mut env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let mut c = login(gw.addr).await;
    env.stop_storage().await;
    assert_lines(&c.cmd("a1", "LIST \"\" *").await, &["a1 NO [UNAVAILABLE] Storage is unavailable, try again later"]);
    // The session goes on.
    assert_lines(&c.cmd("a2", "NOOP").await, &["a2 OK NOOP completed"]);
    let mut fresh = Client::connect(gw.addr).await;
    fresh.line().await;
    assert_lines(
        &fresh.cmd("b1", "LOGIN alice@example.org secret-pw").await,
        &["b1 NO [UNAVAILABLE] Storage is unavailable, try again later"],
    );
}

/// Run a Python client script (its first argument: the gateway's port) on
/// a blocking thread; its standard output.
async fn python(script: &'static str, port: u16) -> String {
    let port = port.to_string();
    tokio::task::spawn_blocking(move || run(std::process::Command::new("python3").args(["-c", script, &port])))
        .await
        .expect("join")
}

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("run client");
    assert!(
        out.status.success(),
        "client failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test]
async fn python_imaplib_end_to_end() {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let script = r#"
import imaplib, ssl, sys
port, tls_port = int(sys.argv[1]), int(sys.argv[2])
m = imaplib.IMAP4("127.0.0.1", port)
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
m.starttls(ssl_context=ctx)
m.login("alice@example.org", "secret-pw")
m.create("Work")
msg = b"From: bob@example.org\r\nSubject: imaplib test\r\n\r\nbody line\r\n"
typ, data = m.append("INBOX", r"(\Flagged)", imaplib.Time2Internaldate(1700000000), msg)
assert typ == "OK", data
typ, data = m.select("INBOX")
assert data == [b"1"], data
typ, data = m.search(None, "FLAGGED")
assert data == [b"1"], data
typ, data = m.fetch("1", "(RFC822)")
assert data[0][1] == msg, data
typ, data = m.uid("FETCH", "1", "(FLAGS INTERNALDATE)")
assert b"\\Seen" in data[0] and b"14-Nov-2023" in data[0], data
typ, data = m.copy("1", "Work")
assert typ == "OK", data
m.store("1", "+FLAGS", r"(\Deleted)")
typ, data = m.expunge()
assert data == [b"1"], data
typ, data = m.status("Work", "(MESSAGES)")
assert data == [b'Work (MESSAGES 1)'], data
m.logout()
s = imaplib.IMAP4_SSL("127.0.0.1", tls_port, ssl_context=ctx)
s.login("alice@example.org", "secret-pw")
typ, data = s.list()
assert any(b'"/" Work' in d for d in data), data
s.logout()
print("imaplib ok")
"#;
    let (port, tls_port) = (gw.addr.port().to_string(), gw.tls_addr.port().to_string());
    let out = tokio::task::spawn_blocking(move || {
        run(std::process::Command::new("python3").args(["-c", script, &port, &tls_port]))
    })
    .await
    .expect("join");
    assert!(out.contains("imaplib ok"), "{out}");
}

#[tokio::test]
async fn curl_end_to_end() {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let mut c = login(gw.addr).await;
    append(&mut c, "a1", "INBOX", "()", MSG).await;
    let url = format!("imap://127.0.0.1:{}/INBOX/;UID=1", gw.addr.port());
    let out = tokio::task::spawn_blocking(move || {
        run(std::process::Command::new("curl").args([
            "-s",
            "--max-time",
            "20",
            "-u",
            "alice@example.org:secret-pw",
            &url,
        ]))
    })
    .await
    .expect("join");
    assert_eq!(out, MSG);
    // Listing mailboxes over implicit TLS.
    let url = format!("imaps://127.0.0.1:{}/", gw.tls_addr.port());
    let out = tokio::task::spawn_blocking(move || {
        run(std::process::Command::new("curl").args([
            "-s",
            "-k",
            "--max-time",
            "20",
            "-u",
            "alice@example.org:secret-pw",
            &url,
        ]))
    })
    .await
    .expect("join");
    assert!(out.contains("\"/\" INBOX"), "{out}");
}

#[tokio::test]
async fn idle_hears_mail_appended_through_another_gateway() {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw1 = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let gw2 = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let mut a = login(gw1.addr).await;
    let mut b = login(gw2.addr).await;
    assert!(a.cmd("a1", "SELECT INBOX").await.contains(&"* 0 EXISTS".to_string()));
    assert_eq!(a.cmd("a2", "IDLE").await, vec!["+ idling"]);
    let started = std::time::Instant::now();
    append(&mut b, "b1", "INBOX", "()", MSG).await;
    // Pushed by the NATS event (the fallback check runs only every minute).
    assert_eq!(a.line().await, "* 1 EXISTS");
    assert_eq!(a.line().await, "* 1 RECENT");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    b.cmd("b2", "SELECT INBOX").await;
    b.cmd("b3", "STORE 1 +FLAGS.SILENT (\\Flagged)").await;
    assert_eq!(a.line().await, "* 1 FETCH (FLAGS (\\Flagged \\Recent))");
    a.send(b"DONE\r\n").await;
    assert_eq!(a.until("a2").await, vec!["a2 OK IDLE terminated"]);
}

const MULTIPART: &str = "From: Bob <bob@example.org>\r\nTo: alice@example.org\r\nSubject: Report\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attached.\r\n--b1\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Disposition: attachment; filename=\"r.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nFrom: carol@example.org\r\nSubject: Inner\r\n\r\nInner body\r\n--b1--\r\n";

#[tokio::test]
async fn bodystructure_and_mime_sections() {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let mut c = login(gw.addr).await;
    append(&mut c, "a0", "INBOX", "()", MULTIPART).await;
    c.cmd("a1", "EXAMINE INBOX").await;
    // RFC 3501 §7.4.2: nested multipart, attachment with disposition, message/rfc822.
    let inner_env = r#"(NIL "Inner" ((NIL NIL "carol" "example.org")) ((NIL NIL "carol" "example.org")) ((NIL NIL "carol" "example.org")) NIL NIL NIL NIL NIL)"#;
    assert_lines(
        &c.cmd("a2", "FETCH 1 BODYSTRUCTURE").await,
        &[
            &format!(
                r#"* 1 FETCH (BODYSTRUCTURE (("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 13 1 NIL NIL NIL NIL)("APPLICATION" "PDF" ("NAME" "r.pdf") NIL NIL "BASE64" 12 NIL ("ATTACHMENT" ("FILENAME" "r.pdf")) NIL NIL)("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 53 {inner_env} ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 10 1 NIL NIL NIL NIL) 4 NIL NIL NIL NIL) "MIXED" ("BOUNDARY" "b1") NIL NIL NIL))"#
            ),
            "a2 OK FETCH completed",
        ],
    );
    assert_lines(
        &c.cmd("a3", "FETCH 1 BODY").await,
        &[
            &format!(
                r#"* 1 FETCH (BODY (("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 13 1)("APPLICATION" "PDF" ("NAME" "r.pdf") NIL NIL "BASE64" 12)("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 53 {inner_env} ("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" 10 1) 4) "MIXED"))"#
            ),
            "a3 OK FETCH completed",
        ],
    );
    assert_lines(
        &c.cmd("a4", "FETCH 1 BODY[1]").await,
        &["* 1 FETCH (BODY[1] {13}", "See attached.)", "a4 OK FETCH completed"],
    );
    assert_lines(
        &c.cmd("a5", "FETCH 1 BODY[2]").await,
        &["* 1 FETCH (BODY[2] {12}", "JVBERi0xLjQK)", "a5 OK FETCH completed"],
    );
    assert_lines(
        &c.cmd("a6", "FETCH 1 BODY[2.MIME]").await,
        &[
            "* 1 FETCH (BODY[2.MIME] {133}",
            "Content-Type: application/pdf; name=\"r.pdf\"",
            "Content-Disposition: attachment; filename=\"r.pdf\"",
            "Content-Transfer-Encoding: base64",
            "",
            ")",
            "a6 OK FETCH completed",
        ],
    );
    assert_lines(
        &c.cmd("a7", "FETCH 1 (BODY[3.HEADER] BODY[3.TEXT] BODY[3.1] BODY[3.HEADER.FIELDS (SUBJECT)])").await,
        &[
            "* 1 FETCH (BODY[3.HEADER] {43}",
            "From: carol@example.org",
            "Subject: Inner",
            "",
            " BODY[3.TEXT] {10}",
            "Inner body BODY[3.1] {10}",
            "Inner body BODY[3.HEADER.FIELDS (SUBJECT)] {18}",
            "Subject: Inner",
            "",
            ")",
            "a7 OK FETCH completed",
        ],
    );
    let partial = c.cmd("a8", "FETCH 1 BODY[1]<4.4>").await;
    assert_lines(&partial, &["* 1 FETCH (BODY[1]<4> {4}", "atta)", "a8 OK FETCH completed"]);
    assert_lines(&c.cmd("a9", "FETCH 1 BODY[4]").await, &["a9 NO No such body part"]);
    assert_lines(&c.cmd("b1", "FETCH 1 BODY[1.HEADER]").await, &["b1 NO Part is not a message/rfc822"]);
    // EXAMINE: no \Seen was set by these fetches (RFC 3501 §6.3.2).
    assert_lines(&c.cmd("b2", "FETCH 1 FLAGS").await, &["* 1 FETCH (FLAGS (\\Recent))", "b2 OK FETCH completed"]);
}

#[tokio::test]
async fn condstore_against_storage() {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw1 = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let gw2 = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let mut a = login(gw1.addr).await;
    let mut b = login(gw2.addr).await;
    append(&mut a, "a0", "INBOX", "()", MSG).await;
    append(&mut a, "a1", "INBOX", "()", MSG).await;
    let sel = a.cmd("a2", "SELECT INBOX (CONDSTORE)").await;
    let highest: u64 = sel
        .iter()
        .find_map(|l| l.strip_prefix("* OK [HIGHESTMODSEQ ")?.split(']').next()?.parse().ok())
        .unwrap_or_else(|| panic!("HIGHESTMODSEQ in {sel:?}"));
    b.cmd("b1", "SELECT INBOX").await;
    b.cmd("b2", "STORE 2 +FLAGS.SILENT (\\Flagged)").await;
    // A hears of B's change with its MODSEQ (RFC 7162 §3.1.4).
    let noop = a.cmd("a3", "NOOP").await;
    assert_lines(&noop, &["* 2 FETCH (FLAGS (\\Flagged \\Recent) MODSEQ (...))", "a3 OK NOOP completed"]);
    let changed = a.cmd("a4", &format!("FETCH 1:* (UID) (CHANGEDSINCE {highest})")).await;
    assert_lines(&changed, &["* 2 FETCH (UID 2 MODSEQ (...))", "a4 OK FETCH completed"]);
    // UNCHANGEDSINCE older than message 2's change fails for it only.
    assert_lines(
        &a.cmd("a5", &format!("STORE 1:2 (UNCHANGEDSINCE {highest}) +FLAGS.SILENT (\\Answered)")).await,
        &["* 1 FETCH (MODSEQ (...))", "a5 OK [MODIFIED 2] Conditional STORE failed for some messages"],
    );
    let search = a.cmd("a6", &format!("SEARCH MODSEQ {}", highest + 1)).await;
    assert_lines(&search, &["* SEARCH 1 2 (MODSEQ ...)", "a6 OK SEARCH completed"]);
}

/// The delivery path (what delivery-queue does for mail received by SMTP:
/// PutBlob, then Deliver) wakes a client idling on the gateway.
#[tokio::test]
async fn idle_hears_delivered_mail() {
    let env = TestEnv::start().await;
    let account = env.add_account("alice@example.org", "secret-pw").await;
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let mut a = login(gw.addr).await;
    a.cmd("a1", "SELECT INBOX").await;
    assert_eq!(a.cmd("a2", "IDLE").await, vec!["+ idling"]);

    deliver(&env, account.id, b"Delivered-To: alice@example.org\r\n").await;

    assert_eq!(a.line().await, "* 1 EXISTS");
    assert_eq!(a.line().await, "* 1 RECENT");
    a.send(b"DONE\r\n").await;
    assert_eq!(a.until("a2").await, vec!["a2 OK IDLE terminated"]);
    let f = a.cmd("a3", "FETCH 1 BODY.PEEK[HEADER.FIELDS (DELIVERED-TO SUBJECT)]").await;
    assert_lines(
        &f,
        &[
            "* 1 FETCH (BODY[HEADER.FIELDS (DELIVERED-TO SUBJECT)] {57}",
            "Delivered-To: alice@example.org",
            "Subject: Hello there",
            "",
            ")",
            "a3 OK FETCH completed",
        ],
    );
}

/// QRESYNC (RFC 7162 §3.2): a client coming back learns what vanished and
/// what changed while it was away; an idling one sees VANISHED.
#[tokio::test]
async fn qresync_against_storage() {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw1 = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let gw2 = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let mut b = login(gw2.addr).await;
    for t in ["b1", "b2", "b3"] {
        append(&mut b, t, "INBOX", "()", MSG).await;
    }
    let mut a = login(gw1.addr).await;
    assert_lines(&a.cmd("a1", "ENABLE QRESYNC").await, &["* ENABLED QRESYNC", "a1 OK ENABLE completed"]);
    let sel = a.cmd("a2", "SELECT INBOX").await;
    let find = |prefix: &str| -> u64 {
        sel.iter()
            .find_map(|l| l.strip_prefix(prefix)?.split(']').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} in {sel:?}"))
    };
    let (validity, highest) = (find("* OK [UIDVALIDITY "), find("* OK [HIGHESTMODSEQ "));
    a.cmd("a3", "LOGOUT").await;

    b.cmd("b4", "SELECT INBOX").await;
    b.cmd("b5", "STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    b.cmd("b6", "STORE 3 +FLAGS.SILENT (\\Flagged)").await;
    b.cmd("b7", "EXPUNGE").await;

    let mut a = login(gw1.addr).await;
    a.cmd("a4", "ENABLE QRESYNC").await;
    let back = a.cmd("a5", &format!("SELECT INBOX (QRESYNC ({validity} {highest} 1:3))")).await;
    assert!(back.contains(&"* 2 EXISTS".to_string()), "{back:?}");
    let tail = &back[back.len() - 3..];
    assert_lines(
        tail,
        &[
            "* VANISHED (EARLIER) 1",
            "* 2 FETCH (UID 3 FLAGS (\\Flagged) MODSEQ (...))",
            "a5 OK [READ-WRITE] SELECT completed",
        ],
    );

    assert_eq!(a.cmd("a6", "IDLE").await, vec!["+ idling"]);
    b.cmd("b8", "STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    b.cmd("b9", "EXPUNGE").await;
    // The flag change may arrive first (UID 2 is message 1 here).
    let mut line = a.line().await;
    if line.starts_with("* 1 FETCH") {
        line = a.line().await;
    }
    assert_eq!(line, "* VANISHED 2");
    a.send(b"DONE\r\n").await;
    assert_eq!(a.until("a6").await.last().map(String::as_str), Some("a6 OK IDLE terminated"));
}

/// A body above the streaming threshold (here 3 MB, in a multipart message
/// with a big attachment) is written to the client as it comes from
/// storage; imaplib must get exactly the octets, with the other items of
/// the response (before and after the literal) intact, and a non-PEEK fetch
/// still reports the \Seen it set.
#[tokio::test]
async fn big_bodies_stream_through_with_the_other_items_intact() {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let script = r#"
import imaplib, sys, base64
port = int(sys.argv[1])
att = base64.encodebytes(bytes(range(256)) * 9000)
msg = (b"From: bob@example.org\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
       b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
       + att.replace(b"\n", b"\r\n") + b"--XX--\r\n")
assert len(msg) > 3_000_000
m = imaplib.IMAP4("127.0.0.1", port)
m.login("alice@example.org", "secret-pw")
typ, data = m.append("INBOX", None, None, msg)
assert typ == "OK", data
m.select("INBOX")
typ, data = m.uid("FETCH", "1", "(UID RFC822.SIZE BODY.PEEK[] FLAGS)")
assert typ == "OK", typ
head, body = data[0]
assert body == msg, (len(body), len(msg))
assert b"UID 1" in head and b"RFC822.SIZE %d" % len(msg) in head, head
assert data[1] == b" FLAGS (\\Recent))", data[1]
typ, data = m.fetch("1", "(BODY[2])")
head, part = data[0]
# RFC 2046 §5.1.1: the CRLF before a boundary belongs to the boundary.
assert part == att.replace(b"\n", b"\r\n")[:-2], len(part)
assert b"\\Seen" in data[1], data[1]
typ, data = m.fetch("1", "(BODY[1])")
assert data[0][1] == b"hello", data[0][0]
m.logout()
print("big ok")
"#;
    let out = python(script, gw.addr.port()).await;
    assert!(out.contains("big ok"), "{out}");
}

/// A FETCH of UID and one section (whole message, header, header fields,
/// text, with or without a partial) goes to storage by section, with no
/// metadata read first; it must answer exactly what the metadata path
/// answers for the same section (a delivered message with a per-recipient
/// prefix, a small appended one and a 2 MB one that streams).
#[tokio::test]
async fn sections_without_metadata_match_the_metadata_path() {
    let env = TestEnv::start().await;
    let account = env.add_account("alice@example.org", "secret-pw").await;
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    deliver(&env, account.id, b"Return-Path: <bob@example.org>\r\nDelivered-To: alice@example.org\r\n").await;

    let script = r#"
import imaplib, sys
port = int(sys.argv[1])
m = imaplib.IMAP4("127.0.0.1", port)
m.login("alice@example.org", "secret-pw")
small = b"Subject: two\r\nX-Folded: a\r\n b\r\n\r\nsecond body\r\n"
big = b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 131072 + b"\r\n"
for msg in (small, big):
    typ, data = m.append("INBOX", None, None, msg)
    assert typ == "OK", data

def literals(data):
    return [(d[0].split(b" (", 1)[1].rsplit(b" {", 1)[0].split(b" INTERNALDATE")[0], d[1])
            for d in data if isinstance(d, tuple)]

items = ["BODY.PEEK[]", "BODY.PEEK[HEADER]", "BODY.PEEK[TEXT]", "RFC822.HEADER",
         "BODY.PEEK[HEADER.FIELDS (Subject Delivered-To X-Folded)]",
         "BODY.PEEK[HEADER.FIELDS.NOT (Subject)]", "BODY.PEEK[TEXT]<3.10>",
         "BODY.PEEK[]<0.40>", "BODY.PEEK[HEADER]<5.20>", "BODY.PEEK[TEXT]<100000000.5>",
         "BODY.PEEK[HEADER.FIELDS (Subject)]<2.4>"]
m.select("INBOX")
for item in items:
    typ, direct = m.uid("FETCH", "1:*", "(UID %s)" % item)
    assert typ == "OK", (item, direct)
    typ, slow = m.uid("FETCH", "1:*", "(UID %s INTERNALDATE)" % item)
    assert typ == "OK", (item, slow)
    d, s = literals(direct), literals(slow)
    assert len(d) == 3, (item, [x[0] for x in d])
    assert d == s, (item, [(a[0], len(a[1])) for a in d], [(a[0], len(a[1])) for a in s])
typ, data = m.uid("FETCH", "1", "(UID BODY.PEEK[])")
assert data[0][1].startswith(b"Return-Path: <bob@example.org>\r\nDelivered-To:"), data[0][1][:80]
typ, data = m.uid("FETCH", "3", "(UID BODY.PEEK[])")
assert data[0][1] == big, len(data[0][1])
# Read-only: BODY[] and RFC822 set no \Seen, so they go direct too.
m.select("INBOX", readonly=True)
for item in ["BODY[]", "RFC822", "RFC822.TEXT"]:
    typ, direct = m.uid("FETCH", "1:*", "(UID %s)" % item)
    typ, slow = m.uid("FETCH", "1:*", "(UID %s INTERNALDATE)" % item)
    assert literals(direct) == literals(slow), item
typ, flags = m.fetch("1:*", "(FLAGS)")
assert all(b"\\Seen" not in f for f in flags), flags
m.logout()
print("sections ok")
"#;
    let out = python(script, gw.addr.port()).await;
    assert!(out.contains("sections ok"), "{out}");
}

/// The gateway's own connection to storage, with nobody logged in, reads
/// no account's mail: storage serves an account only to a call carrying a
/// login's session token for it (README "Security model").
#[tokio::test]
async fn the_gateways_own_credentials_alone_read_no_mailbox() {
    use imap_gateway::store::grpc::GrpcStore;
    use imap_gateway::store::{MailStore, StoreError};
    use mailfleet_proto::storage::v1 as pb;
    let env = TestEnv::start().await;
    let alice = env.add_account("alice@example.org", "secret-pw").await;
    deliver(&env, alice.id, b"").await;
    let inbox = pb::mailboxes_client::MailboxesClient::new(env.session_channel(alice.id).await)
        .get_mailbox(pb::GetMailboxRequest { account_id: alice.id, name: "INBOX".into(), select: false })
        .await
        .expect("INBOX")
        .into_inner()
        .id;

    let store =
        GrpcStore::connect_lazy(&env.storage_url(), &mailfleet_testkit::identity("imap-gateway")).expect("store");
    let refused = |r: Result<(), StoreError>| matches!(r, Err(StoreError::SessionEnded(_)));
    assert!(refused(store.list_mailboxes(alice.id, true).await.map(drop)));
    assert!(refused(store.list_uids(alice.id, inbox).await.map(drop)));
    let fetch = pb::FetchRequest { account_id: alice.id, mailbox_id: inbox, uid: 1, offset: 0, length: None };
    assert!(refused(store.fetch(fetch).await.map(drop)));
    let list = pb::ListMessagesRequest {
        account_id: alice.id,
        mailbox_id: inbox,
        uids: vec![pb::UidRange { start: 1, end: u32::MAX }],
        with_envelope: true,
        ..Default::default()
    };
    assert!(refused(store.list_messages(list).await.map(drop)));
    let search = pb::SearchRequest { account_id: alice.id, mailbox_id: inbox, criteria: None };
    assert!(refused(store.search(search).await.map(drop)));

    // The same store, once alice logged in through it, reads her INBOX.
    let client = std::net::Ipv4Addr::LOCALHOST.into();
    let (account, session) = store.authenticate("alice@example.org", "secret-pw", client).await.expect("login");
    assert_eq!(account.id, alice.id);
    let hers = GrpcStore::for_session(&std::sync::Arc::new(store), session);
    assert!(hers.fetch(fetch).await.expect("alice's session reads").ends_with(b"lunch?\r\n"));
}

/// An IMAP session lasts many token lifetimes (a client in IDLE for hours):
/// the gateway renews the session's token before it expires.
#[tokio::test]
async fn a_session_outlives_its_token() {
    let env = TestEnv::start_with(|c| c.session_ttl = std::time::Duration::from_millis(1200)).await;
    let alice = env.add_account("alice@example.org", "secret-pw").await;
    deliver(&env, alice.id, b"").await;
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let mut c = login(gw.addr).await;
    let sel = c.cmd("a1", "SELECT INBOX").await;
    assert!(sel.contains(&"* 1 EXISTS".to_string()), "{sel:?}");
    assert_eq!(c.cmd("a2", "IDLE").await, vec!["+ idling"]);
    // Three lifetimes of the login's token go by in IDLE.
    tokio::time::sleep(std::time::Duration::from_millis(3600)).await;
    c.send(b"DONE\r\n").await;
    assert_lines(&c.until("a2").await, &["a2 OK IDLE terminated"]);
    assert_lines(
        &c.cmd("a3", "FETCH 1 (BODY.PEEK[TEXT])").await,
        &["* 1 FETCH (BODY[TEXT] {19}", "Hi Alice,", "lunch?", ")", "a3 OK FETCH completed"],
    );
}

/// A message of exactly `size` octets (headers, then a body of `fill`).
fn sized_message(size: usize, fill: u8) -> String {
    let head = "From: bob@example.org\r\nSubject: sized\r\n\r\n";
    let mut msg = head.to_string();
    msg.extend(std::iter::repeat_n(fill as char, size - head.len() - 2));
    msg.push_str("\r\n");
    assert_eq!(msg.len(), size);
    msg
}

/// QUOTA (RFC 9208) against real storage: the limit the administrator
/// sets and the usage storage counts, in units of 1024 octets rounded up
/// (§5.1), rising with APPEND and falling with EXPUNGE; an APPEND past
/// the limit is NO [OVERQUOTA] and stores nothing.
#[tokio::test]
async fn quota_against_storage() {
    use mailfleet_proto::storage::v1 as pb;
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let mut c = login(gw.addr).await;

    // No limit set: INBOX has no quota root, and there is no quota "".
    assert_lines(&c.cmd("a1", "GETQUOTAROOT INBOX").await, &["* QUOTAROOT INBOX", "a1 OK GETQUOTAROOT completed"]);
    assert_lines(&c.cmd("a2", "GETQUOTA \"\"").await, &["a2 NO [NONEXISTENT] No quota is set"]);

    // mailctl account quota alice@example.org 8K, while she is logged in.
    let quota = pb::SetQuotaRequest { address: "alice@example.org".into(), quota_bytes: 8 * 1024 };
    env.admin().await.set_quota(quota).await.expect("set quota");
    assert_lines(
        &c.cmd("a3", "GETQUOTAROOT INBOX").await,
        &["* QUOTAROOT INBOX \"\"", "* QUOTA \"\" (STORAGE 0 8)", "a3 OK GETQUOTAROOT completed"],
    );

    // 3000 octets stored: 3 units (2.93 rounded up); 6000: 6 (5.86).
    let msg = sized_message(3000, b'x');
    assert_lines(&append(&mut c, "b1", "INBOX", "()", &msg).await, &["b1 OK [APPENDUID ... 1] APPEND completed"]);
    assert_lines(&c.cmd("b2", "GETQUOTA \"\"").await, &["* QUOTA \"\" (STORAGE 3 8)", "b2 OK GETQUOTA completed"]);
    assert_lines(&append(&mut c, "b3", "INBOX", "()", &msg).await, &["b3 OK [APPENDUID ... 2] APPEND completed"]);
    assert_lines(&c.cmd("b4", "GETQUOTA \"\"").await, &["* QUOTA \"\" (STORAGE 6 8)", "b4 OK GETQUOTA completed"]);

    // 9000 octets would exceed 8192: refused, nothing stored.
    assert_lines(&append(&mut c, "b5", "INBOX", "()", &msg).await, &["b5 NO [OVERQUOTA] Over quota"]);
    assert_lines(
        &c.cmd("b6", "STATUS INBOX (MESSAGES SIZE)").await,
        &["* STATUS INBOX (MESSAGES 2 SIZE 6000)", "b6 OK STATUS completed"],
    );
    assert_lines(&c.cmd("b7", "GETQUOTA \"\"").await, &["* QUOTA \"\" (STORAGE 6 8)", "b7 OK GETQUOTA completed"]);

    // Expunging one frees its room, and the APPEND refused before fits.
    assert!(c.cmd("c1", "SELECT INBOX").await.contains(&"* 2 EXISTS".to_string()));
    c.cmd("c2", "STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    assert_lines(&c.cmd("c3", "EXPUNGE").await, &["* 1 EXPUNGE", "c3 OK EXPUNGE completed"]);
    assert_lines(
        &c.cmd("c4", "GETQUOTAROOT INBOX").await,
        &["* QUOTAROOT INBOX \"\"", "* QUOTA \"\" (STORAGE 3 8)", "c4 OK GETQUOTAROOT completed"],
    );
    assert_lines(
        &append(&mut c, "c5", "INBOX", "()", &msg).await,
        &["* 2 EXISTS", "* 2 RECENT", "c5 OK [APPENDUID ... 3] APPEND completed"],
    );
    assert_lines(&c.cmd("c6", "GETQUOTA \"\"").await, &["* QUOTA \"\" (STORAGE 6 8)", "c6 OK GETQUOTA completed"]);
    assert_lines(&c.cmd("c7", "GETQUOTA \"other\"").await, &["c7 NO [NONEXISTENT] No such quota root"]);
}

/// UID EXPUNGE (RFC 4315 §2.1) against real storage: only the named
/// UIDs that are \Deleted go; a \Deleted message outside the set stays,
/// and so does a named one without \Deleted. Another session sees the
/// same mailbox afterwards.
#[tokio::test]
async fn uid_expunge_against_storage() {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    let mut c = login(gw.addr).await;
    for (i, tag) in ["a1", "a2", "a3", "a4"].iter().enumerate() {
        let reply = append(&mut c, tag, "INBOX", "()", MSG).await;
        assert_lines(&reply, &[&format!("{tag} OK [APPENDUID ... {}] APPEND completed", i + 1)]);
    }
    assert!(c.cmd("b1", "SELECT INBOX").await.contains(&"* 4 EXISTS".to_string()));
    assert_lines(&c.cmd("b2", "UID STORE 1,3,4 +FLAGS.SILENT (\\Deleted)").await, &["b2 OK STORE completed"]);

    // UIDs 2 (not \Deleted) and 3 (\Deleted) named: only 3 goes.
    assert_lines(&c.cmd("b3", "UID EXPUNGE 2:3").await, &["* 3 EXPUNGE", "b3 OK EXPUNGE completed"]);
    assert_lines(
        &c.cmd("b4", "UID FETCH 1:* (FLAGS)").await,
        &[
            "* 1 FETCH (UID 1 FLAGS (\\Deleted \\Recent))",
            "* 2 FETCH (UID 2 FLAGS (\\Recent))",
            "* 3 FETCH (UID 4 FLAGS (\\Deleted \\Recent))",
            "b4 OK FETCH completed",
        ],
    );
    // A UID already gone: nothing happens.
    assert_lines(&c.cmd("b5", "UID EXPUNGE 3").await, &["b5 OK UID EXPUNGE completed"]);

    // Another session: three messages, UIDs 1, 2 and 4, as stored.
    let mut other = login(gw.addr).await;
    assert_lines(
        &other.cmd("d1", "STATUS INBOX (MESSAGES)").await,
        &["* STATUS INBOX (MESSAGES 3)", "d1 OK STATUS completed"],
    );
    assert!(other.cmd("d2", "EXAMINE INBOX").await.contains(&"* 3 EXISTS".to_string()));
    assert_lines(&other.cmd("d3", "UID SEARCH ALL").await, &["* SEARCH 1 2 4", "d3 OK SEARCH completed"]);

    // UID EXPUNGE 4 in the first session; the rest of \Deleted (UID 1) stays.
    assert_lines(&c.cmd("b6", "UID EXPUNGE 4").await, &["* 3 EXPUNGE", "b6 OK EXPUNGE completed"]);
    assert_lines(&other.cmd("d4", "UID SEARCH ALL").await, &["* SEARCH 1 2", "d4 OK SEARCH completed"]);
    assert_lines(&other.cmd("d5", "NOOP").await, &["* 3 EXPUNGE", "d5 OK NOOP completed"]);
}

/// Pseudo-random octets (xorshift), which DEFLATE cannot shrink.
fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

/// COMPRESS=DEFLATE (RFC 4978) against real storage: after the OK both
/// directions are raw DEFLATE; an APPEND sent compressed is stored as
/// sent, and a large incompressible body streamed from storage arrives
/// complete through the compressor.
#[tokio::test]
async fn compress_deflate_against_storage() {
    use base64::Engine;
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;

    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    let mut buf = vec![0u8; 65536];
    let mut plain = Vec::new();
    tcp.write_all(b"a1 LOGIN alice@example.org secret-pw\r\na2 COMPRESS DEFLATE\r\n").await.expect("write");
    while !plain.ends_with(b"a2 OK DEFLATE active\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(20), tcp.read(&mut buf))
            .await
            .expect("the gateway answers")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&plain));
        plain.extend_from_slice(&buf[..n]);
    }
    let (mut tx, mut rx) = (Compress::new(Compression::fast(), false), Decompress::new(false));
    // Send `cmd` compressed; the decompressed answer through the line tagged `tag`.
    let mut exchange = async |tcp: &mut tokio::net::TcpStream, cmd: &[u8], tag: &str| -> Vec<u8> {
        let mut out = Vec::with_capacity(cmd.len() + 1024);
        tx.compress_vec(cmd, &mut out, FlushCompress::Sync).expect("deflate");
        tcp.write_all(&out).await.expect("write");
        let mut text: Vec<u8> = Vec::new();
        let tagged = format!("{tag} ");
        loop {
            let last_line = text.strip_suffix(b"\r\n").map(|t| match t.iter().rposition(|&b| b == b'\n') {
                Some(at) => &t[at + 1..],
                None => t,
            });
            if last_line.is_some_and(|l| l.starts_with(tagged.as_bytes())) {
                return text;
            }
            let n = tokio::time::timeout(std::time::Duration::from_secs(20), tcp.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no tagged answer; so far: {}", String::from_utf8_lossy(&text)))
                .expect("read");
            assert!(n > 0, "closed; so far: {}", String::from_utf8_lossy(&text));
            let mut input = &buf[..n];
            while !input.is_empty() {
                text.reserve(64 * 1024);
                let before = rx.total_in();
                rx.decompress_vec(input, &mut text, FlushDecompress::Sync).expect("inflate");
                input = &input[(rx.total_in() - before) as usize..];
            }
        }
    };
    assert_eq!(exchange(&mut tcp, b"b1 NOOP\r\n", "b1").await, b"b1 OK NOOP completed\r\n");

    // 300 KB of base64 noise appended through the compressed stream (LITERAL+).
    let body = base64::engine::general_purpose::STANDARD.encode(noise(225_000, 0x9e37_79b9_7f4a_7c15));
    let msg = format!("From: bob@example.org\r\nSubject: noise\r\n\r\n{body}\r\n");
    let mut cmd = format!("b2 APPEND INBOX {{{}+}}\r\n", msg.len()).into_bytes();
    cmd.extend_from_slice(msg.as_bytes());
    cmd.extend_from_slice(b"\r\n");
    let appended = exchange(&mut tcp, &cmd, "b2").await;
    assert!(glob("b2 OK [APPENDUID ... 1] APPEND completed\r\n", &String::from_utf8_lossy(&appended)), "{appended:?}");

    let sel = String::from_utf8_lossy(&exchange(&mut tcp, b"b3 EXAMINE INBOX\r\n", "b3").await).to_string();
    assert!(sel.contains("* 1 EXISTS\r\n") && sel.ends_with("b3 OK [READ-ONLY] EXAMINE completed\r\n"), "{sel}");
    let fetched = exchange(&mut tcp, b"b4 UID FETCH 1 (BODY.PEEK[])\r\n", "b4").await;
    let mut expected = format!("* 1 FETCH (UID 1 BODY[] {{{}}}\r\n", msg.len()).into_bytes();
    expected.extend_from_slice(msg.as_bytes());
    expected.extend_from_slice(b")\r\nb4 OK FETCH completed\r\n");
    assert!(fetched == expected, "got {} octets, expected {}", fetched.len(), expected.len());

    // Storage holds the octets sent: an uncompressed session reads them back.
    let mut c = login(gw.addr).await;
    c.cmd("c1", "EXAMINE INBOX").await;
    let size = c.cmd("c2", "FETCH 1 (RFC822.SIZE)").await;
    assert_lines(&size, &[&format!("* 1 FETCH (RFC822.SIZE {})", msg.len()), "c2 OK FETCH completed"]);

    let again = exchange(&mut tcp, b"b5 COMPRESS DEFLATE\r\n", "b5").await;
    assert_eq!(String::from_utf8_lossy(&again), "b5 NO [COMPRESSIONACTIVE] Compression is already active\r\n");
    assert_eq!(
        exchange(&mut tcp, b"b6 LOGOUT\r\n", "b6").await,
        b"* BYE Mailfleet IMAP logging out\r\nb6 OK LOGOUT completed\r\n"
    );
}
