//! Conformance failures Dovecot's imaptest found (issue 19), each as the
//! conversation a client has, over loopback TCP with the in-memory store.

mod common;

use std::sync::Arc;

use common::{Client, Gateway, transcript};
use imap_gateway::store::fake::FakeStore;

async fn gateway() -> (Gateway, Arc<FakeStore>) {
    let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    (Gateway::start_with(store.clone(), |_| {}).await, store)
}

fn msg(n: u32) -> Vec<u8> {
    format!("From: bob@example.org\r\nSubject: note {n}\r\n\r\nbody {n}\r\n").into_bytes()
}

/// RFC 3501 §9: every one of these characters is an ATOM-CHAR, so the
/// argument is an astring: a mailbox that does not exist (NO), and for
/// LIST a pattern (which may add `%` and `*`) that matches nothing. The
/// `&` starts text that is not valid modified UTF-7 (§5.1.3), which names
/// no mailbox but is no syntax error. A BAD does not end the session.
#[tokio::test]
async fn every_atom_char_is_a_mailbox_name() {
    let (gw, _) = gateway().await;
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 LIST "" ~foo
        S: a1 OK LIST completed
        C: a2 SELECT ~foo
        S: a2 NO [NONEXISTENT] No such mailbox
        C: a3 SELECT !#$&'+,-.0123456789:;<=>?@^_`|[}
        S: a3 NO [NONEXISTENT] Mailbox name is not valid modified UTF-7
        C: a4 LIST "" !#$&'+,-.0123456789:;<=>?@^_`|[}%*
        S: a4 OK LIST completed
        C: a5 LSUB "" !#$&'+,-.0123456789:;<=>?@^_`|[}%*
        S: a5 OK LSUB completed
        C: a6 SELECT !#$'+,-.0123456789:;<=>?@^_`|[]}
        S: a6 NO [NONEXISTENT] No such mailbox
        C: a7 FROB
        S: a7 BAD Syntax error
        C: a8 NOOP
        S: a8 OK NOOP completed
        "#,
    )
    .await;
}

/// RFC 3501 §6.4.4: a sequence number above EXISTS as a SEARCH key matches
/// no message (FETCH of it stays BAD); RFC 4731 §3.1: ESEARCH then carries
/// no MIN, MAX or ALL, and COUNT 0.
#[tokio::test]
async fn search_for_a_sequence_number_beyond_exists_finds_nothing() {
    let (gw, store) = gateway().await;
    for n in 1..=3 {
        store.add_message(1, "INBOX", &msg(n), &[]);
    }
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 SELECT INBOX
        S: * FLAGS ...
        S: * 3 EXISTS
        S: * 3 RECENT
        S: * OK [UNSEEN 1] ...
        S: * OK [PERMANENTFLAGS ...
        S: * OK [UIDVALIDITY ...
        S: * OK [UIDNEXT 4] ...
        S: * OK [HIGHESTMODSEQ ...
        S: a1 OK [READ-WRITE] SELECT completed
        C: a2 SEARCH RETURN () 1000
        S: * ESEARCH (TAG "a2")
        S: a2 OK SEARCH completed
        C: a3 SEARCH RETURN (MIN) 1000
        S: * ESEARCH (TAG "a3")
        S: a3 OK SEARCH completed
        C: a4 SEARCH RETURN (COUNT) 1000
        S: * ESEARCH (TAG "a4") COUNT 0
        S: a4 OK SEARCH completed
        C: a5 UID SEARCH RETURN (COUNT) 1000
        S: * ESEARCH (TAG "a5") UID COUNT 0
        S: a5 OK SEARCH completed
        C: a6 SEARCH 2:1000
        S: * SEARCH 2 3
        S: a6 OK SEARCH completed
        C: a7 FETCH 1000 FLAGS
        S: a7 BAD Invalid sequence number
        "#,
    )
    .await;
}

/// RFC 7162 §3.1: FETCH … MODSEQ enables CONDSTORE in a selected mailbox,
/// and the client is told its HIGHESTMODSEQ; RFC 7162 §3.1.5 / RFC 4731:
/// ESEARCH with MIN or MAX alone reports the MODSEQ of the message
/// returned, with both the higher of the two, with ALL the highest match.
#[tokio::test]
async fn condstore_enabled_by_fetch_and_esearch_modseq_of_the_returned_message() {
    let (gw, store) = gateway().await;
    for n in 1..=4 {
        store.add_message(1, "INBOX", &msg(n), &[]); // modseq 2..=5
    }
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 SELECT INBOX
        S: * FLAGS ...
        S: * 4 EXISTS
        S: * 4 RECENT
        S: * OK [UNSEEN 1] ...
        S: * OK [PERMANENTFLAGS ...
        S: * OK [UIDVALIDITY ...
        S: * OK [UIDNEXT 5] ...
        S: * OK [HIGHESTMODSEQ 5] Highest
        S: a1 OK [READ-WRITE] SELECT completed
        C: a2 FETCH 1 MODSEQ
        S: * 1 FETCH (MODSEQ (2))
        S: * OK [HIGHESTMODSEQ 5] Highest
        S: a2 OK FETCH completed
        C: a3 FETCH 1 MODSEQ
        S: * 1 FETCH (MODSEQ (2))
        S: a3 OK FETCH completed
        C: a4 STORE 1 +FLAGS.SILENT (\Seen)
        S: * 1 FETCH (MODSEQ (6))
        S: a4 OK STORE completed
        C: a5 STORE 3 +FLAGS.SILENT (\Seen)
        S: * 3 FETCH (MODSEQ (7))
        S: a5 OK STORE completed
        C: a6 STORE 2 +FLAGS.SILENT (\Seen)
        S: * 2 FETCH (MODSEQ (8))
        S: a6 OK STORE completed
        C: a7 STORE 4 +FLAGS.SILENT (\Seen)
        S: * 4 FETCH (MODSEQ (9))
        S: a7 OK STORE completed
        C: b1 SEARCH RETURN (MIN) 1:3 MODSEQ "/flags/\\seen" all 1
        S: * ESEARCH (TAG "b1") MIN 1 MODSEQ 6
        S: b1 OK SEARCH completed
        C: b2 SEARCH RETURN (MAX) 1:3 MODSEQ "/flags/\\seen" all 1
        S: * ESEARCH (TAG "b2") MAX 3 MODSEQ 7
        S: b2 OK SEARCH completed
        C: b3 SEARCH RETURN () 1:3 MODSEQ "/flags/\\seen" all 1
        S: * ESEARCH (TAG "b3") ALL 1:3 MODSEQ 8
        S: b3 OK SEARCH completed
        C: b4 SEARCH RETURN (MIN MAX) 2:3 MODSEQ "/flags/\\seen" all 1
        S: * ESEARCH (TAG "b4") MIN 2 MAX 3 MODSEQ 8
        S: b4 OK SEARCH completed
        C: b5 SEARCH RETURN (ALL) 2:3 MODSEQ "/flags/\\seen" all 9
        S: * ESEARCH (TAG "b5")
        S: b5 OK SEARCH completed
        "#,
    )
    .await;
}

/// The same when a SEARCH with a MODSEQ key is what enables CONDSTORE.
#[tokio::test]
async fn condstore_enabled_by_esearch_reports_highestmodseq() {
    let (gw, store) = gateway().await;
    store.add_message(1, "INBOX", &msg(1), &[]); // modseq 2
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 SELECT INBOX
        S: * FLAGS ...
        S: * 1 EXISTS
        S: * 1 RECENT
        S: * OK [UNSEEN 1] ...
        S: * OK [PERMANENTFLAGS ...
        S: * OK [UIDVALIDITY ...
        S: * OK [UIDNEXT 2] ...
        S: * OK [HIGHESTMODSEQ 2] Highest
        S: a1 OK [READ-WRITE] SELECT completed
        C: a2 SEARCH RETURN (COUNT) MODSEQ 1
        S: * ESEARCH (TAG "a2") COUNT 1 MODSEQ 2
        S: * OK [HIGHESTMODSEQ 2] Highest
        S: a2 OK SEARCH completed
        "#,
    )
    .await;
}

/// RFC 3501 §6.3.2: EXAMINE reports the \Recent messages and leaves them
/// \Recent; the SELECT after it claims them (§6.3.1), STATUS counts them
/// until then (§6.3.10).
#[tokio::test]
async fn examine_reports_recent_without_claiming_it() {
    let (gw, store) = gateway().await;
    store.add_message(1, "INBOX", &msg(1), &[]);
    store.add_message(1, "INBOX", &msg(2), &[]);
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 EXAMINE INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft)
        S: * 2 EXISTS
        S: * 2 RECENT
        S: * OK [UNSEEN 1] Message 1 is first unseen
        S: * OK [PERMANENTFLAGS ()] Flags permitted
        S: * OK [UIDVALIDITY ...
        S: * OK [UIDNEXT 3] ...
        S: * OK [HIGHESTMODSEQ ...
        S: a1 OK [READ-ONLY] EXAMINE completed
        C: a2 FETCH 1:* FLAGS
        S: * 1 FETCH (FLAGS (\Recent))
        S: * 2 FETCH (FLAGS (\Recent))
        S: a2 OK FETCH completed
        C: a3 CLOSE
        S: a3 OK CLOSE completed
        C: a4 STATUS INBOX (MESSAGES RECENT)
        S: * STATUS INBOX (MESSAGES 2 RECENT 2)
        S: a4 OK STATUS completed
        C: a5 SELECT INBOX
        S: * FLAGS ...
        S: * 2 EXISTS
        S: * 2 RECENT
        S: * OK [UNSEEN 1] ...
        S: * OK [PERMANENTFLAGS ...
        S: * OK [UIDVALIDITY ...
        S: * OK [UIDNEXT 3] ...
        S: * OK [HIGHESTMODSEQ ...
        S: a5 OK [READ-WRITE] SELECT completed
        C: a6 CLOSE
        S: a6 OK CLOSE completed
        C: a7 STATUS INBOX (RECENT)
        S: * STATUS INBOX (RECENT 0)
        S: a7 OK STATUS completed
        "#,
    )
    .await;
}

/// RFC 5258 §3.5: with RECURSIVEMATCH a parent that does not meet the
/// selection criteria is listed with CHILDINFO for a descendant that does
/// but that the pattern hides; a descendant the pattern matches is listed
/// itself, and its parent is not listed for it.
#[tokio::test]
async fn recursivematch_childinfo_only_for_descendants_the_pattern_hides() {
    let (gw, _) = gateway().await;
    let mut setup = String::from("S: * OK ...\nC: a0 LOGIN alice@example.org pw\nS: a0 OK ...\n");
    for (i, name) in
        ["t", "t/test2", "t/test2/test1", "t/test7", "t/test7/test7", "t/test8", "t/test8/test8", "t/test8/test9"]
            .iter()
            .enumerate()
    {
        setup.push_str(&format!("C: c{i} CREATE {name}\nS: c{i} OK CREATE completed\n"));
    }
    for (i, name) in ["t/test2/test1", "t/test7/test7", "t/test8/test8", "t/test8/test9"].iter().enumerate() {
        setup.push_str(&format!("C: s{i} SUBSCRIBE {name}\nS: s{i} OK SUBSCRIBE completed\n"));
    }
    let script = setup
        + r#"
        C: a1 LIST (SUBSCRIBED RECURSIVEMATCH) "" t/test2% RETURN (CHILDREN)
        S: * LIST (\HasChildren) "/" t/test2 ("CHILDINFO" ("SUBSCRIBED"))
        S: a1 OK LIST completed
        C: a2 LIST (SUBSCRIBED RECURSIVEMATCH) "" t*test7
        S: * LIST (\HasNoChildren \Subscribed) "/" t/test7/test7
        S: a2 OK LIST completed
        C: a3 LIST (SUBSCRIBED RECURSIVEMATCH) "" t*test8
        S: * LIST (\HasChildren) "/" t/test8 ("CHILDINFO" ("SUBSCRIBED"))
        S: * LIST (\HasNoChildren \Subscribed) "/" t/test8/test8
        S: a3 OK LIST completed
        C: a4 LIST (SUBSCRIBED RECURSIVEMATCH) "" (t/test2)
        S: * LIST (\HasChildren) "/" t/test2 ("CHILDINFO" ("SUBSCRIBED"))
        S: a4 OK LIST completed
        C: a5 LIST (SUBSCRIBED RECURSIVEMATCH) "" (t/test2 t/test2/test1)
        S: * LIST (\HasNoChildren \Subscribed) "/" t/test2/test1
        S: a5 OK LIST completed
        "#;
    transcript(gw.addr, &script).await;
}

/// RFC 3501 §7.2.6: a keyword the client was not told of in FLAGS (and
/// PERMANENTFLAGS) is announced before the first FETCH that shows it:
/// stored by this session, or by another one. A keyword named NIL is an
/// atom like any other (RFC 3501 §9 `flag-keyword = atom`).
#[tokio::test]
async fn new_keywords_are_announced_before_a_fetch_shows_them() {
    let (gw, store) = gateway().await;
    store.add_message(1, "INBOX", &msg(1), &["$Known"]);
    store.add_message(1, "INBOX", &msg(2), &[]);
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 SELECT INBOX
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft $Known)
        S: * 2 EXISTS
        S: * 2 RECENT
        S: * OK [UNSEEN 1] ...
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft $Known \*)] Flags permitted
        S: * OK [UIDVALIDITY ...
        S: * OK [UIDNEXT 3] ...
        S: * OK [HIGHESTMODSEQ ...
        S: a1 OK [READ-WRITE] SELECT completed
        C: a2 STORE 1,2 +FLAGS ($hello)
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft $Known $hello)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft $Known $hello \*)] Flags permitted
        S: * 1 FETCH (FLAGS ($Known $hello \Recent))
        S: * 2 FETCH (FLAGS ($hello \Recent))
        S: a2 OK STORE completed
        C: a3 STORE 1 +FLAGS.SILENT (NIL)
        S: * FLAGS (\Answered \Flagged \Deleted \Seen \Draft $Known $hello NIL)
        S: * OK [PERMANENTFLAGS (\Answered \Flagged \Deleted \Seen \Draft $Known $hello NIL \*)] Flags permitted
        S: a3 OK STORE completed
        C: a4 FETCH 1 FLAGS
        S: * 1 FETCH (FLAGS ($Known $hello NIL \Recent))
        S: a4 OK FETCH completed
        "#,
    )
    .await;
}

/// Another session's keyword reaches this one with FLAGS first.
#[tokio::test]
async fn a_keyword_set_by_another_session_is_announced_first() {
    let (gw, store) = gateway().await;
    store.add_message(1, "INBOX", &msg(1), &[]);
    let mut a = Client::connect(gw.addr).await;
    let mut b = Client::connect(gw.addr).await;
    for c in [&mut a, &mut b] {
        c.line().await;
        c.cmd("x1", "LOGIN alice@example.org pw").await;
        c.cmd("x2", "SELECT INBOX").await;
    }
    assert_eq!(
        b.cmd("b1", "STORE 1 +FLAGS.SILENT ($world)").await.last().map(String::as_str),
        Some("b1 OK STORE completed")
    );
    assert_eq!(
        a.cmd("a1", "NOOP").await,
        vec![
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $world)",
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $world \\*)] Flags permitted",
            "* 1 FETCH (FLAGS ($world \\Recent))",
            "a1 OK NOOP completed",
        ]
    );
    // Told once: the next change of that keyword needs no new FLAGS.
    b.cmd("b2", "STORE 1 -FLAGS.SILENT ($world)").await;
    assert_eq!(a.cmd("a2", "NOOP").await, vec!["* 1 FETCH (FLAGS (\\Recent))", "a2 OK NOOP completed"]);
    // An APPEND with a new keyword, seen through the sync.
    let message = msg(2);
    b.send(format!("b3 APPEND INBOX ($fresh) {{{}+}}\r\n", message.len()).as_bytes()).await;
    b.send(&message).await;
    b.send(b"\r\n").await;
    assert!(b.until("b3").await.last().is_some_and(|l| l.starts_with("b3 OK")));
    assert_eq!(
        a.cmd("a3", "NOOP").await,
        vec![
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $world $fresh)",
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $world $fresh \\*)] Flags permitted",
            "* 2 EXISTS",
            "a3 OK NOOP completed",
        ]
    );
}

/// RFC 2971 §3.3 allows 30 field-value pairs, fields of 30 octets and
/// values of 1024: an ID that large is legitimate before login (imaptest's
/// `id` group sends one) and is answered, where a longer line still ends
/// the connection with BYE [TOOBIG].
#[tokio::test]
async fn the_largest_id_rfc_2971_allows_is_answered_before_login() {
    let (gw, _) = gateway().await;
    let pairs: Vec<String> = (0..30).map(|i| format!("\"{:0>30}\" \"{}\"", i, "v".repeat(1024))).collect();
    let mut c = Client::connect(gw.addr).await;
    let id = c.cmd("a1", &format!("ID ({})", pairs.join(" "))).await;
    assert_eq!(id.last().map(String::as_str), Some("a1 OK ID completed"), "{id:?}");
    assert!(id.iter().any(|l| l.starts_with("* ID (")), "{id:?}");
    drop(c);
    // 40 KiB: over the limit. The gateway answers BYE and closes; the rest
    // of the line may still be unread then, so the close can be a reset
    // that loses the BYE on its way: the connection must end either way.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    let _ = tcp.write_all(format!("a2 ID (\"x\" \"{}\")\r\n", "v".repeat(40 * 1024)).as_bytes()).await;
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(ended.is_ok(), "the connection stays open after a 40 KiB line: {text:?}");
    assert!(!text.contains("a2 OK"), "{text:?}");
}
