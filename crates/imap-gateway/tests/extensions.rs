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
        S: b1 OK SEARCH completed
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
        S: * 1 RECENT
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

#[tokio::test]
async fn binary_fetch() {
    let (gw, store) = gateway().await;
    let b64 = b"Subject: b64\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8g\r\nd29ybGQ=\r\n";
    let qp = b"Subject: qp\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9=\r\n au lait\r\n";
    let nul = b"Subject: nul\r\nContent-Transfer-Encoding: BASE64\r\n\r\nAAEC\r\n";
    let odd = b"Subject: odd\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin\r\n";
    for m in [&b64[..], &qp[..], &nul[..], &odd[..]] {
        store.add_message(1, "INBOX", m, &[]);
    }
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 EXAMINE INBOX
        S: * FLAGS ...
        S: * 4 EXISTS
        S: * 4 RECENT
        S: * OK [UNSEEN 1] ...
        S: * OK [PERMANENTFLAGS ()] ...
        S: * OK [UIDVALIDITY ...
        S: * OK [UIDNEXT 5] ...
        S: * OK [HIGHESTMODSEQ ...
        S: a1 OK [READ-ONLY] EXAMINE completed
        C: a2 FETCH 1:2 (BINARY.SIZE[1] BINARY.PEEK[1])
        S: * 1 FETCH (BINARY.SIZE[1] 11 BINARY[1] {11}
        S: hello world)
        S: * 2 FETCH (BINARY.SIZE[1] 15 BINARY[1] {15}
        S: café au lait
        S: )
        S: a2 OK FETCH completed
        C: a3 FETCH 3 BINARY.PEEK[1]
        S: * 3 FETCH (BINARY[1] ~{3}
        S: ...
        S: a3 OK FETCH completed
        C: a4 FETCH 4 BINARY.PEEK[1]
        S: a4 NO [UNKNOWN-CTE] Cannot decode x-uuencode
        C: a5 FETCH 1 (UID BINARY.PEEK[1]<6.100> BINARY.SIZE[1])
        S: * 1 FETCH (UID 1 BINARY[1]<6> {5}
        S: world BINARY.SIZE[1] 11)
        S: a5 OK FETCH completed
        C: a51 FETCH 1:2 BINARY.PEEK[1]<0.5>
        S: * 1 FETCH (BINARY[1]<0> {5}
        S: hello)
        S: * 2 FETCH (BINARY[1]<0> {5}
        S: café)
        S: a51 OK FETCH completed
        C: a6 FETCH 3 BINARY.SIZE[]
        S: * 3 FETCH (BINARY.SIZE[] 57)
        S: a6 OK FETCH completed
        C: a7 FETCH 1 BINARY[1.2]
        S: a7 NO [UNAVAILABLE] Body structure not available
        C: a8 FETCH 1 BINARY[HEADER]
        S: a8 BAD Syntax error
        "#,
    )
    .await;
    // BINARY (not .PEEK) sets \Seen like BODY[] (RFC 3516 §4.2).
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
        S: * OK [HIGHESTMODSEQ ...
        S: a1 OK [READ-WRITE] SELECT completed
        C: a2 FETCH 1 BINARY[1]
        S: * 1 FETCH (BINARY[1] {11}
        S: hello world FLAGS (\Seen \Recent))
        S: a2 OK FETCH completed
        C+: a3 APPEND INBOX ~{2+}
        C: ab
        S: * 5 EXISTS
        S: * 5 RECENT
        S: a3 OK [APPENDUID ...] APPEND completed
        "#,
    )
    .await;
}

#[tokio::test]
async fn searchres_saved_result() {
    let (gw, store) = gateway().await;
    for n in 1..=5 {
        let flags: &[&str] = if n % 2 == 0 { &["\\Seen"] } else { &[] };
        store.add_message(1, "INBOX", &msg(n), flags);
    }
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 FETCH $ FLAGS
        S: a1 BAD $ needs a selected mailbox
        C: a2 EXAMINE INBOX
        S: * FLAGS ...
        S: * 5 EXISTS
        S: * 5 RECENT
        S: * OK [UNSEEN 1] ...
        S: * OK [PERMANENTFLAGS ()] ...
        S: * OK [UIDVALIDITY ...
        S: * OK [UIDNEXT 6] ...
        S: * OK [HIGHESTMODSEQ ...
        S: a2 OK [READ-ONLY] EXAMINE completed
        C: a3 FETCH $ FLAGS
        S: a3 OK FETCH completed (no messages)
        C: a4 SEARCH $
        S: * SEARCH
        S: a4 OK SEARCH completed
        C: a5 SEARCH RETURN (SAVE) UNSEEN
        S: a5 OK SEARCH completed
        C: a6 FETCH $ (FLAGS)
        S: * 1 FETCH (FLAGS (\Recent))
        S: * 3 FETCH (FLAGS (\Recent))
        S: * 5 FETCH (FLAGS (\Recent))
        S: a6 OK FETCH completed
        C: a7 UID SEARCH $ SUBJECT "note 3"
        S: * SEARCH 3
        S: a7 OK SEARCH completed
        C: a8 SEARCH RETURN (SAVE MAX) SEEN
        S: * ESEARCH (TAG "a8") MAX 4
        S: a8 OK SEARCH completed
        C: a9 UID FETCH $ UID
        S: * 4 FETCH (UID 4)
        S: a9 OK FETCH completed
        C: b1 SEARCH OR $ 1 NOT SUBJECT $
        S: * SEARCH 1 4
        S: b1 OK SEARCH completed
        C: b2 SEARCH RETURN (SAVE) CHARSET KOI8-R ALL
        S: b2 NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset
        C: b3 FETCH $ FLAGS
        S: b3 OK FETCH completed (no messages)
        C: b4 SEARCH RETURN (SAVE) ALL
        S: b4 OK SEARCH completed
        C: b5 EXAMINE INBOX
        S: * OK [CLOSED] ...
        S: * FLAGS ...
        S: * 5 EXISTS
        S: * 5 RECENT
        S: * OK [UNSEEN 1] ...
        S: * OK [PERMANENTFLAGS ()] ...
        S: * OK [UIDVALIDITY ...
        S: * OK [UIDNEXT 6] ...
        S: * OK [HIGHESTMODSEQ ...
        S: b5 OK [READ-ONLY] EXAMINE completed
        C: b6 SEARCH $
        S: * SEARCH
        S: b6 OK SEARCH completed
        "#,
    )
    .await;
}

#[tokio::test]
async fn imap4rev2_session() {
    let (gw, store) = gateway().await;
    store.add_message(1, "INBOX", &msg(1), &[]);
    store.add_message(1, "INBOX", &msg(2), &["\\Seen"]);
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a0 LOGIN alice@example.org pw
        S: a0 OK ...
        C: a1 ENABLE IMAP4rev2
        S: * ENABLED IMAP4rev2
        S: a1 OK ENABLE completed
        C: a2 CREATE "Données/été"
        S: a2 OK CREATE completed
        C: a3 LIST "" %
        S: * LIST (\NonExistent \HasChildren) "/" "Données"
        S: * LIST (\HasNoChildren) "/" INBOX
        S: a3 OK LIST completed
        C: a4 SELECT INBOX
        S: * FLAGS ...
        S: * 2 EXISTS
        S: * LIST (\HasNoChildren) "/" INBOX
        S: * OK [PERMANENTFLAGS ...
        S: * OK [UIDVALIDITY ...
        S: * OK [UIDNEXT 3] ...
        S: * OK [HIGHESTMODSEQ ...
        S: a4 OK [READ-WRITE] SELECT completed
        C: a5 FETCH 1:* FLAGS
        S: * 1 FETCH (FLAGS ())
        S: * 2 FETCH (FLAGS (\Seen))
        S: a5 OK FETCH completed
        C: a6 SEARCH UNSEEN
        S: * ESEARCH (TAG "a6") ALL 1
        S: a6 OK SEARCH completed
        C: a7 UID SEARCH RETURN (COUNT) ALL
        S: * ESEARCH (TAG "a7") UID COUNT 2
        S: a7 OK SEARCH completed
        C: a8 SEARCH DELETED
        S: * ESEARCH (TAG "a8")
        S: a8 OK SEARCH completed
        C: a9 STATUS INBOX (MESSAGES DELETED SIZE)
        S: * STATUS INBOX (MESSAGES 2 DELETED 0 SIZE ...)
        S: a9 OK STATUS completed
        C: b1 NOOP
        S: b1 OK NOOP completed
        "#,
    )
    .await;
}
