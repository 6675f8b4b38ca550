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

/// RFC 3501 §6.4.4: FROM searches the addresses, so an address written
/// with comments inside it (RFC 5322 §3.4.1 CFWS) is found by its plain
/// `mailbox@host` form; display names and substrings still match.
#[tokio::test]
async fn search_from_matches_an_address_written_with_comments() {
    let (_env, gw) = start().await;
    let mut c = login(&gw).await;
    append(&mut c, "p1", "", b"From: <user-from (comment)@ (comment) domain.org>\r\nSubject: 1\r\n\r\nbody\r\n").await;
    append(&mut c, "p2", "", b"From: RealFrom <user-from@domain.org>\r\nSubject: 2\r\n\r\nbody\r\n").await;
    append(&mut c, "p3", "", b"From: user-from1@domain.org, user-from2@domain.org\r\nSubject: 3\r\n\r\nbody\r\n").await;
    drop(c);
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org secret-pw
        S: a0 OK ...
        C: a1 EXAMINE INBOX
        S: * FLAGS ...
        S: * 3 EXISTS
        S: * 3 RECENT
        S: * OK [UNSEEN 1] ...
        S: * OK [PERMANENTFLAGS ()] Flags permitted
        S: * OK [UIDVALIDITY ...
        S: * OK [UIDNEXT 4] ...
        S: * OK [HIGHESTMODSEQ ...
        S: a1 OK [READ-ONLY] EXAMINE completed
        C: a2 SEARCH FROM user-from@domain.org
        S: * SEARCH 1 2
        S: a2 OK SEARCH completed
        C: a3 SEARCH FROM realfrom
        S: * SEARCH 2
        S: a3 OK SEARCH completed
        C: a4 SEARCH FROM ser-fro
        S: * SEARCH 1 2 3
        S: a4 OK SEARCH completed
        C: a5 SEARCH FROM user-from2
        S: * SEARCH 3
        S: a5 OK SEARCH completed
        C: a6 UNSELECT
        S: a6 OK UNSELECT completed
        C: a7 STATUS INBOX (RECENT)
        S: * STATUS INBOX (RECENT 3)
        S: a7 OK STATUS completed
        "#,
    )
    .await;
}

/// RFC 3516 §4.4: a `binary` part appended in a literal8 keeps its octets:
/// BINARY.SIZE and BINARY give exactly what was sent (storage keeps text,
/// so the part is stored base64-encoded and BODY[1] shows that).
#[tokio::test]
async fn binary_append_keeps_the_octets_of_a_binary_part() {
    let (_env, gw) = start().await;
    let mut c = login(&gw).await;
    let message = b"From: user@domain.org\r\nDate: Sat, 24 Mar 2007 23:00:00 +0200\r\nMime-Version: 1.0\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\0-\xe4\n\r\n\n";
    append(&mut c, "p1", "~", message).await;
    assert!(c.cmd("s", "SELECT INBOX").await.last().is_some_and(|l| l.starts_with("s OK")));
    assert_eq!(
        c.cmd("f1", "FETCH 1 (BINARY.SIZE[1])").await,
        vec!["* 1 FETCH (BINARY.SIZE[1] 7)", "f1 OK FETCH completed"]
    );
    assert_eq!(
        c.cmd("f2", "FETCH 1 (BINARY.PEEK[1])").await,
        vec!["* 1 FETCH (BINARY[1] ~{7}", "\0-\u{fffd}", "", "", ")", "f2 OK FETCH completed"]
    );
    assert_eq!(
        c.cmd("f3", "FETCH 1 (BODY.PEEK[1])").await,
        vec!["* 1 FETCH (BODY[1] {14}", "AC3kCg0KCg==", ")", "f3 OK FETCH completed"]
    );
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
