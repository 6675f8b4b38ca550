//! Transcripts for ESEARCH (RFC 4731), LIST-EXTENDED (RFC 5258),
//! LIST-STATUS (RFC 5819), SPECIAL-USE / CREATE-SPECIAL-USE (RFC 6154) and
//! UTF8=ACCEPT (RFC 6855), over loopback TCP with the in-memory store.

mod common;

use std::sync::Arc;

use common::{Gateway, transcript};
use imap_gateway::store::fake::FakeStore;

async fn gateway() -> (Gateway, Arc<FakeStore>) {
    let store = Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    (Gateway::start_with(store.clone(), |_| {}).await, store)
}

fn msg(n: u32) -> Vec<u8> {
    format!("From: bob@example.org\r\nSubject: note {n}\r\n\r\nbody {n}\r\n").into_bytes()
}

#[tokio::test]
async fn esearch_return_options() {
    let (gw, store) = gateway().await;
    for n in 1..=6 {
        let flags: &[&str] = if n % 3 == 0 { &["\\Seen"] } else { &[] };
        store.add_message(1, "INBOX", &msg(n), flags);
    }
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 SEARCH RETURN (MIN) ALL
        S: a1 BAD No mailbox selected
        C: a2 SELECT INBOX
        S: * FLAGS ...
        S: * 6 EXISTS
        S: * 6 RECENT
        S: * OK [UNSEEN 1] ...
        S: * OK [PERMANENTFLAGS ...
        S: * OK [UIDVALIDITY ...
        S: * OK [UIDNEXT 7] ...
        S: * OK [HIGHESTMODSEQ ...
        S: a2 OK [READ-WRITE] SELECT completed
        C: a3 UID SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN
        S: * ESEARCH (TAG "a3") UID MIN 1 MAX 5 COUNT 4 ALL 1:2,4:5
        S: a3 OK SEARCH completed
        C: a4 SEARCH RETURN () SEEN
        S: * ESEARCH (TAG "a4") ALL 3,6
        S: a4 OK SEARCH completed
        C: a5 SEARCH RETURN (COUNT MIN) DELETED
        S: * ESEARCH (TAG "a5") COUNT 0
        S: a5 OK SEARCH completed
        C: a6 SEARCH RETURN (MAX) CHARSET UTF-8 SUBJECT "note 2"
        S: * ESEARCH (TAG "a6") MAX 2
        S: a6 OK SEARCH completed
        C: a7 SEARCH RETURN (FOO) ALL
        S: a7 BAD Unknown SEARCH return option
        C: a8 SEARCH RETURN (MIN) NOSUCHKEY
        S: a8 BAD Syntax error in search criteria
        C: a9 SEARCH RETURN (MIN
        S: a9 BAD Syntax error in option list
        C: b1 SEARCH RETURN (SAVE) ALL
        S: b1 BAD SEARCH RETURN (SAVE) is not supported
        C: b2 SEARCH RETURN (COUNT) CHARSET KOI8-R ALL
        S: b2 NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset
        C: b3 SEARCH UNSEEN
        S: * SEARCH 1 2 4 5
        S: b3 OK SEARCH completed
        "#,
    )
    .await;
}

#[tokio::test]
async fn list_extended_and_status() {
    let (gw, store) = gateway().await;
    store.add_message(1, "INBOX", &msg(1), &[]);
    store.add_message(1, "INBOX", &msg(2), &["\\Seen"]);
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 CREATE Work/A
        S: a1 OK CREATE completed
        C: a2 CREATE Work/B
        S: a2 OK CREATE completed
        C: a3 CREATE Sent (USE (\Sent))
        S: a3 OK CREATE completed
        C: a4 SUBSCRIBE Work/A
        S: a4 OK SUBSCRIBE completed
        C: a5 SUBSCRIBE INBOX
        S: a5 OK SUBSCRIBE completed
        C: b1 LIST (SUBSCRIBED) "" *
        S: * LIST (\HasNoChildren \Subscribed) "/" INBOX
        S: * LIST (\HasNoChildren \Subscribed) "/" Work/A
        S: b1 OK LIST completed
        C: b2 LIST (SUBSCRIBED RECURSIVEMATCH) "" %
        S: * LIST (\HasNoChildren \Subscribed) "/" INBOX
        S: * LIST (\NonExistent \HasChildren) "/" Work ("CHILDINFO" ("SUBSCRIBED"))
        S: b2 OK LIST completed
        C: b3 LIST (SUBSCRIBED) "" %
        S: * LIST (\HasNoChildren \Subscribed) "/" INBOX
        S: b3 OK LIST completed
        C: b4 LIST "" (INBOX "Work/*") RETURN (SUBSCRIBED)
        S: * LIST (\HasNoChildren \Subscribed) "/" INBOX
        S: * LIST (\HasNoChildren \Subscribed) "/" Work/A
        S: * LIST (\HasNoChildren) "/" Work/B
        S: b4 OK LIST completed
        C: b5 LIST "" % RETURN (CHILDREN SPECIAL-USE)
        S: * LIST (\HasNoChildren) "/" INBOX
        S: * LIST (\Sent \HasNoChildren) "/" Sent
        S: * LIST (\NonExistent \HasChildren) "/" Work
        S: b5 OK LIST completed
        C: b6 LIST (SPECIAL-USE) "" *
        S: * LIST (\Sent \HasNoChildren) "/" Sent
        S: b6 OK LIST completed
        C: b7 LIST "" (INBOX Sent) RETURN (STATUS (MESSAGES UNSEEN))
        S: * LIST (\HasNoChildren) "/" INBOX
        S: * STATUS INBOX (MESSAGES 2 UNSEEN 1)
        S: * LIST (\Sent \HasNoChildren) "/" Sent
        S: * STATUS Sent (MESSAGES 0 UNSEEN 0)
        S: b7 OK LIST completed
        C: b8 LIST (REMOTE) "" Work/%
        S: * LIST (\HasNoChildren) "/" Work/A
        S: * LIST (\HasNoChildren) "/" Work/B
        S: b8 OK LIST completed
        C: b9 LIST "Work/" ("A" "B" "C")
        S: * LIST (\HasNoChildren) "/" Work/A
        S: * LIST (\HasNoChildren) "/" Work/B
        S: b9 OK LIST completed
        C: c1 LIST (RECURSIVEMATCH) "" *
        S: c1 BAD RECURSIVEMATCH needs another selection option
        C: c2 LIST (BOGUS) "" *
        S: c2 BAD Unknown LIST selection option
        C: c3 LIST "" * RETURN (BOGUS)
        S: c3 BAD Unknown LIST return option
        C: c4 LIST "" * RETURN (STATUS (MESSAGES NOPE))
        S: c4 BAD Unknown STATUS item
        C: c5 LIST "" ()
        S: c5 BAD Bad pattern list
        C: c6 LIST "" * RETURN
        S: c6 BAD RETURN needs a list
        C: c7 LIST "" *
        S: * LIST (\HasNoChildren) "/" INBOX
        S: * LIST (\Sent \HasNoChildren) "/" Sent
        S: * LIST (\HasNoChildren) "/" Work/A
        S: * LIST (\HasNoChildren) "/" Work/B
        S: c7 OK LIST completed
        "#,
    )
    .await;
}

#[tokio::test]
async fn create_special_use() {
    let (gw, _) = gateway().await;
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 CREATE Archive (USE (\archive))
        S: a1 OK CREATE completed
        C: a2 CREATE Junk (USE (\Junk \Trash))
        S: a2 OK CREATE completed
        C: a3 CREATE Stuff (USE (\Important))
        S: a3 NO [USEATTR] Unknown special-use attribute \Important
        C: a4 CREATE Other (FOO (\Sent))
        S: a4 BAD Unknown CREATE parameter
        C: a5 CREATE Other (USE \Sent)
        S: a5 BAD Syntax error in option list
        C: a6 CREATE Archive (USE (\Archive))
        S: a6 NO [ALREADYEXISTS] Mailbox already exists
        C: a7 LIST "" * RETURN (SPECIAL-USE)
        S: * LIST (\Archive \HasNoChildren) "/" Archive
        S: * LIST (\HasNoChildren) "/" INBOX
        S: * LIST (\Junk \Trash \HasNoChildren) "/" Junk
        S: a7 OK LIST completed
        C: a8 CREATE Plain ()
        S: a8 BAD Unknown CREATE parameter
        "#,
    )
    .await;
}

#[tokio::test]
async fn utf8_accept() {
    let (gw, _) = gateway().await;
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 CREATE &ZeVnLIqe-
        S: a1 OK CREATE completed
        C+: a2 APPEND INBOX UTF8 (~{5+}
        C: hello)
        S: a2 BAD ENABLE UTF8=ACCEPT first
        C: a3 ENABLE UTF8=ACCEPT
        S: * ENABLED UTF8=ACCEPT
        S: a3 OK ENABLE completed
        C: a4 LIST "" *
        S: * LIST (\HasNoChildren) "/" INBOX
        S: * LIST (\HasNoChildren) "/" "日本語"
        S: a4 OK LIST completed
        C: a5 CREATE "Données/été"
        S: a5 OK CREATE completed
        C: a6 STATUS "Données/été" (MESSAGES)
        S: * STATUS "Données/été" (MESSAGES 0)
        S: a6 OK STATUS completed
        C+: a7 APPEND "Données/été" (\Seen) UTF8 (~{16+}
        C: Subject: Grüße)
        S: a7 OK [APPENDUID ...] APPEND completed
        C: a8 EXAMINE "Données/été"
        S: * FLAGS ...
        S: * 1 EXISTS
        S: * 0 RECENT
        S: * OK [PERMANENTFLAGS ()] ...
        S: * OK [UIDVALIDITY ...
        S: * OK [UIDNEXT 2] ...
        S: * OK [HIGHESTMODSEQ ...
        S: a8 OK [READ-ONLY] EXAMINE completed
        C: a9 FETCH 1 BODY.PEEK[]
        S: * 1 FETCH (BODY[] {16}
        S: Subject: Grüße)
        S: a9 OK FETCH completed
        C+: b1 APPEND INBOX UTF8 ({2+}
        C: hi)
        S: b1 BAD Syntax error in APPEND UTF8
        C: b2 CREATE &-weird
        S: b2 OK CREATE completed
        C: b3 LIST "" &-weird
        S: * LIST (\HasNoChildren) "/" &-weird
        S: b3 OK LIST completed
        "#,
    )
    .await;
}
