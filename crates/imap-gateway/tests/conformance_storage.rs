//! Conformance failures Dovecot's imaptest found (issue 19) that depend on
//! the real storage service (Postgres + NATS via `mailfleet_testkit`):
//! address search, binary APPEND, \Recent under EXAMINE, keyword FLAGS.

mod common;

use common::{Client, Gateway, transcript};
use mailfleet_testkit::TestEnv;

async fn start() -> (TestEnv, Gateway) {
    let env = TestEnv::start().await;
    env.add_account("alice@example.org", "secret-pw").await;
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    (env, gw)
}

async fn login(gw: &Gateway) -> Client {
    let mut c = Client::connect(gw.addr).await;
    assert!(c.line().await.starts_with("* OK"));
    let reply = c.cmd("l", "LOGIN alice@example.org secret-pw").await;
    assert!(reply.last().is_some_and(|l| l.starts_with("l OK")), "{reply:?}");
    c
}

/// APPEND with a synchronising literal (`~` for a literal8).
async fn append(c: &mut Client, tag: &str, prefix: &str, message: &[u8]) {
    c.send(format!("{tag} APPEND INBOX {prefix}{{{}}}\r\n", message.len()).as_bytes()).await;
    assert_eq!(c.until(tag).await, vec!["+ Ready for literal data"]);
    c.send(message).await;
    c.send(b"\r\n").await;
    let reply = c.until(tag).await;
    assert!(reply.last().is_some_and(|l| l.starts_with(&format!("{tag} OK"))), "{reply:?}");
}

/// RFC 3501 §7.2.6 with storage's keyword list: a keyword already in the
/// mailbox is in SELECT's FLAGS; a new one is announced before the FETCH.
#[tokio::test]
async fn keywords_are_announced_against_storage() {
    let (_env, gw) = start().await;
    let mut c = login(&gw).await;
    append(&mut c, "p1", "($old) ", b"Subject: x\r\n\r\nbody\r\n").await;
    drop(c);
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org secret-pw
        S: a0 OK ...
        C: a1 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft $old)
        S: * 1 EXISTS
        S: * 1 RECENT
        S: * OK [UNSEEN 1] ...
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft $old \*)] Flags permitted
        S: * OK [UIDVALIDITY ...
        S: * OK [UIDNEXT 2] ...
        S: * OK [HIGHESTMODSEQ ...
        S: a1 OK [READ-WRITE] SELECT completed
        C: a2 STORE 1 +FLAGS ($new)
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft $old $new)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft $old $new \*)] Flags permitted
        S: * 1 FETCH (FLAGS ($old $new \Recent))
        S: a2 OK STORE completed
        "#,
    )
    .await;
}
