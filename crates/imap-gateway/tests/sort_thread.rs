//! SORT, THREAD and ESORT (RFC 5256, RFC 5957, RFC 5267) over IMAP
//! against the real storage service (Postgres + NATS via
//! `mailfleet_testkit::TestEnv`): exact response lines.

mod common;

use common::{Gateway, transcript};
use mailfleet_proto::storage::v1 as pb;
use mailfleet_testkit::TestEnv;
use pb::mailboxes_client::MailboxesClient;
use pb::messages_client::MessagesClient;

/// Append `raw` to `mailbox` through storage; internal date day `n` of 2025.
async fn append(env: &TestEnv, account_id: i64, mailbox: &str, raw: String, n: i64) -> u32 {
    use pb::append_request::Part;
    let mut messages = MessagesClient::new(env.session_channel(account_id).await);
    let internal_date = Some(prost_types::Timestamp { seconds: 1_735_689_600 + n * 86_400, nanos: 0 });
    let header = pb::AppendHeader { account_id, mailbox: mailbox.into(), flags: vec![], internal_date };
    let parts = vec![
        pb::AppendRequest { part: Some(Part::Header(header)) },
        pb::AppendRequest { part: Some(Part::Chunk(raw.into_bytes())) },
    ];
    messages.append(tokio_stream::iter(parts)).await.expect("append").into_inner().uid
}

/// The RFC 5256 §4 example thread, `(2)(3 6 (4 23)(44 7 96))`, as the
/// messages with those numbers among 96: the others are "filler", left
/// out by the search criteria. The sent date grows with the number.
fn example_message(n: u32) -> String {
    let refs: &[u32] = match n {
        6 | 44 => &[3, 6],
        4 => &[3, 6],
        23 => &[3, 6, 4],
        7 => &[3, 6, 44],
        96 => &[3, 6, 44, 7],
        _ => &[],
    };
    let refs: Vec<u32> = refs.iter().copied().filter(|r| *r != n).collect();
    let subject = match n {
        2 => "Lunch?".to_string(),
        3 | 4 | 6 | 7 | 23 | 44 | 96 => {
            if refs.is_empty() {
                "Plans".into()
            } else {
                "Re: Plans".into()
            }
        }
        _ => format!("filler {n}"),
    };
    let mut raw =
        format!("From: a@example.org\r\nSubject: {subject}\r\nMessage-ID: <m{n}@example.org>\r\nDate: {}\r\n", date(n));
    if !refs.is_empty() {
        let refs: Vec<String> = refs.iter().map(|r| format!("<m{r}@example.org>")).collect();
        raw.push_str(&format!("References: {}\r\n", refs.join(" ")));
    }
    raw.push_str("\r\nbody\r\n");
    raw
}

/// Sent dates: minute `n` of 1 March 2025, UTC.
fn date(n: u32) -> String {
    format!("Sat, 1 Mar 2025 {:02}:{:02}:00 +0000", n / 60, n % 60)
}

const CAPS: &str = "IMAP4REV1 IMAP4rev2 LITERAL+ SASL-IR IDLE ID NAMESPACE UNSELECT UIDPLUS MOVE ENABLE CONDSTORE QRESYNC STATUS=SIZE COMPRESS=DEFLATE QUOTA QUOTA=RES-STORAGE CHILDREN UTF8=ACCEPT BINARY LIST-EXTENDED LIST-STATUS SPECIAL-USE CREATE-SPECIAL-USE ESEARCH SEARCHRES SORT SORT=DISPLAY THREAD=ORDEREDSUBJECT THREAD=REFERENCES ESORT";

#[tokio::test]
async fn sort_and_thread_transcript() {
    let env = TestEnv::start().await;
    let alice = env.add_account("alice@example.org", "secret-pw").await;
    for n in 1..=96 {
        assert_eq!(append(&env, alice.id, "INBOX", example_message(n), i64::from(n)).await, n);
    }
    let mut mailboxes = MailboxesClient::new(env.session_channel(alice.id).await);
    let create = pb::CreateMailboxRequest { account_id: alice.id, name: "Sorted".into(), special_use: vec![] };
    mailboxes.create_mailbox(create).await.expect("create");
    // Subjects APPLE (2) < MANGO (3) < ZEBRA (1); dates 3 < 1 < 2; sizes
    // 1 < 3 < 2 (bodies); From (display) Zoe, bob@…, Anna.
    let sorted = [
        ("Zoe <zoe@example.org>", "Re: zebra", "Tue, 4 Mar 2025 10:00:00 +0000", 10),
        ("bob@example.org", "apple", "Wed, 5 Mar 2025 10:00:00 +0000", 300),
        ("Anna <anna@example.org>", "[list] Fwd: mango", "Mon, 3 Mar 2025 10:00:00 +0000", 100),
    ];
    for (i, (from, subject, date, body)) in sorted.into_iter().enumerate() {
        let raw = format!("From: {from}\r\nSubject: {subject}\r\nDate: {date}\r\n\r\n{}\r\n", "x".repeat(body));
        append(&env, alice.id, "Sorted", raw, i as i64).await;
    }
    let gw = Gateway::start_grpc(&env.storage_url(), &env.nats_url, &env.events_prefix).await;
    transcript(
        gw.addr,
        &format!(
            r#"
        S: * OK ...
        C: a1 LOGIN alice@example.org secret-pw
        S: a1 OK [CAPABILITY {CAPS}] Logged in
        C: a2 SELECT Sorted
        S: * ...
        S: * ...
        S: * ...
        S: * ...
        S: * ...
        S: * ...
        S: * ...
        S: * ...
        S: a2 OK [READ-WRITE] SELECT completed
        C: a3 SORT (SUBJECT) UTF-8 ALL
        S: * SORT 2 3 1
        S: a3 OK SORT completed
        C: a4 SORT (REVERSE SUBJECT) US-ASCII ALL
        S: * SORT 1 3 2
        S: a4 OK SORT completed
        C: a5 UID SORT (DATE) UTF-8 ALL
        S: * SORT 3 1 2
        S: a5 OK SORT completed
        C: a6 SORT (SIZE) UTF-8 ALL
        S: * SORT 1 3 2
        S: a6 OK SORT completed
        C: a7 SORT (DISPLAYFROM) UTF-8 ALL
        S: * SORT 3 2 1
        S: a7 OK SORT completed
        C: a8 SORT (FROM) UTF-8 NOT FROM zoe
        S: * SORT 3 2
        S: a8 OK SORT completed
        C: a9 SORT (SUBJECT) UTF-8 SUBJECT nothing-like-this
        S: * SORT
        S: a9 OK SORT completed
        C: b1 SORT RETURN (MIN MAX COUNT ALL) (SUBJECT) UTF-8 ALL
        S: * ESEARCH (TAG "b1") MIN 2 MAX 1 COUNT 3 ALL 2:3,1
        S: b1 OK SORT completed
        C: b2 UID SORT RETURN (COUNT) (ARRIVAL) UTF-8 ALL
        S: * ESEARCH (TAG "b2") UID COUNT 3
        S: b2 OK SORT completed
        C: b3 SORT (SUBJECT) KOI8-R ALL
        S: b3 NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset
        C: b4 SORT RETURN (PARTIAL 1:2) (SUBJECT) UTF-8 ALL
        S: b4 BAD ...
        C: b5 THREAD ORDEREDSUBJECT UTF-8 ALL
        S: * THREAD (3)(1)(2)
        S: b5 OK THREAD completed
        C: b6 THREAD FOO UTF-8 ALL
        S: b6 BAD Unsupported threading algorithm
        C: c1 SELECT INBOX
        S: * OK [CLOSED] ...
        S: * ...
        S: * ...
        S: * ...
        S: * ...
        S: * ...
        S: * ...
        S: * ...
        S: * ...
        S: c1 OK [READ-WRITE] SELECT completed
        C: c2 THREAD REFERENCES UTF-8 NOT SUBJECT filler
        S: * THREAD (2)(3 6 (4 23)(44 7 96))
        S: c2 OK THREAD completed
        C: c3 UID THREAD REFERENCES US-ASCII NOT SUBJECT filler
        S: * THREAD (2)(3 6 (4 23)(44 7 96))
        S: c3 OK THREAD completed
        C: c4 THREAD ORDEREDSUBJECT UTF-8 NOT SUBJECT filler
        S: * THREAD (2)(3 (4)(6)(7)(23)(44)(96))
        S: c4 OK THREAD completed
        C: c5 SORT (REVERSE ARRIVAL) UTF-8 3:6 NOT SUBJECT filler
        S: * SORT 6 4 3
        S: c5 OK SORT completed
        C: c6 LOGOUT
        S: * BYE ...
        S: c6 OK LOGOUT completed
        "#
        ),
    )
    .await;
}

/// The in-memory store answers SORT and THREAD too (roughly: its THREAD
/// groups by subject for every algorithm), so protocol tests can use them.
#[tokio::test]
async fn sort_and_thread_with_the_fake_store() {
    use imap_gateway::store::fake::FakeStore;
    let store = std::sync::Arc::new(FakeStore::with_account("alice@example.org", "pw"));
    for (from, subject, date) in [
        ("Zoe <zoe@example.org>", "Re: zebra", "Tue, 4 Mar 2025 10:00:00 +0000"),
        ("bob@example.org", "apple", "Wed, 5 Mar 2025 10:00:00 +0000"),
        ("Anna <anna@example.org>", "Fwd: mango", "Mon, 3 Mar 2025 10:00:00 +0000"),
        ("Zoe <zoe@example.org>", "Re: apple", "Thu, 6 Mar 2025 10:00:00 +0000"),
    ] {
        let raw = format!("From: {from}\r\nSubject: {subject}\r\nDate: {date}\r\n\r\nbody\r\n");
        store.add_message(1, "INBOX", raw.as_bytes(), &[]);
    }
    let gw = Gateway::start_with(store, |_| {}).await;
    transcript(
        gw.addr,
        r#"
        S: * OK ...
        C: a1 LOGIN alice@example.org pw
        S: a1 OK ...
        C: a2 SELECT INBOX
        S: * ...
        S: * ...
        S: * ...
        S: * ...
        S: * ...
        S: * ...
        S: * ...
        S: * ...
        S: a2 OK [READ-WRITE] SELECT completed
        C: a3 SORT (SUBJECT REVERSE DATE) UTF-8 ALL
        S: * SORT 4 2 3 1
        S: a3 OK SORT completed
        C: a4 UID SORT (DISPLAYFROM) UTF-8 NOT FROM bob
        S: * SORT 3 1 4
        S: a4 OK SORT completed
        C: a5 THREAD REFERENCES UTF-8 ALL
        S: * THREAD (3)(1)(2 4)
        S: a5 OK THREAD completed
        "#,
    )
    .await;
}
