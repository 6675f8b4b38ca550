//! SORT and THREAD (RFC 5256, RFC 5957) computed by storage through gRPC:
//! every sort key, REVERSE, ties by sequence number, SEARCH criteria,
//! both threading algorithms, and the sort fields of blobs stored before
//! they existed (filled on first use).

mod common;

use common::*;
use mailfleet_proto::storage::v1 as pb;
use pb::sort_criterion::Key as SortKey;
use pb::thread_request::Algorithm;

/// 1999-12-01 00:00 UTC plus `days`.
fn day(days: f64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: 943_920_000 + (days * 86_400.0) as i64, nanos: 0 }
}

struct Fixture {
    ctx: Ctx,
    mailbox_id: i64,
}

impl Fixture {
    async fn append(&mut self, raw: &str, internal: prost_types::Timestamp) -> u32 {
        let id = self.ctx.account.id;
        append_with(&mut self.ctx.messages, id, "INBOX", raw.as_bytes(), &[], Some(internal)).await.expect("append").uid
    }

    async fn sort(&mut self, keys: &[(SortKey, bool)], criteria: Option<pb::SearchKey>) -> Vec<u32> {
        let order = keys.iter().map(|&(k, reverse)| pb::SortCriterion { key: k as i32, reverse }).collect();
        let req = pb::SortRequest { account_id: self.ctx.account.id, mailbox_id: self.mailbox_id, criteria, order };
        self.ctx.messages.sort(req).await.expect("sort").into_inner().uids
    }

    async fn thread(&mut self, algorithm: Algorithm, criteria: Option<pb::SearchKey>) -> String {
        let req = pb::ThreadRequest {
            account_id: self.ctx.account.id,
            mailbox_id: self.mailbox_id,
            criteria,
            algorithm: algorithm as i32,
        };
        show(&self.ctx.messages.thread(req).await.expect("thread").into_inner().nodes)
    }
}

/// The pre-order nodes in RFC 5256 §4 form (UIDs), for readable assertions.
fn show(nodes: &[pb::ThreadNode]) -> String {
    fn members(nodes: &[pb::ThreadNode], at: &mut usize, out: &mut String) {
        let n = &nodes[*at];
        *at += 1;
        if n.uid != 0 {
            out.push_str(&n.uid.to_string());
        }
        match n.children {
            0 => {}
            1 => {
                if n.uid != 0 {
                    out.push(' ');
                }
                members(nodes, at, out);
            }
            k => {
                if n.uid != 0 {
                    out.push(' ');
                }
                for _ in 0..k {
                    out.push('(');
                    members(nodes, at, out);
                    out.push(')');
                }
            }
        }
    }
    let mut out = String::new();
    let mut at = 0;
    while at < nodes.len() {
        out.push('(');
        members(nodes, &mut at, &mut out);
        out.push(')');
    }
    out
}

fn message(from: &str, to: &str, cc: Option<&str>, subject: &str, date: Option<&str>, body_len: usize) -> String {
    let mut raw = format!("From: {from}\r\nTo: {to}\r\n");
    if let Some(cc) = cc {
        raw.push_str(&format!("Cc: {cc}\r\n"));
    }
    raw.push_str(&format!("Subject: {subject}\r\n"));
    if let Some(date) = date {
        raw.push_str(&format!("Date: {date}\r\n"));
    }
    raw.push_str("\r\n");
    raw.push_str(&"x".repeat(body_len));
    raw.push_str("\r\n");
    raw
}

/// Four messages whose keys order them differently (see each assertion).
async fn fixture() -> Fixture {
    let ctx = setup().await;
    let mut f = Fixture { ctx, mailbox_id: 0 };
    f.mailbox_id = f.ctx.mailbox("INBOX").await.id;
    let msgs = [
        (
            message(
                "Zed <mia@x.org>",
                "Bob <tom@x.org>",
                Some("c2@x.org"),
                "Re: beta",
                Some("Mon, 3 Jan 2000 10:00:00 +0000"),
                4000,
            ),
            day(4.0),
        ),
        (message("bob@x.org", "zz@x.org", None, "alpha", Some("Sat, 1 Jan 2000 09:00:00 +0000"), 2000), day(0.0)),
        (
            message("=?UTF-8?Q?Anna?= <zoe@x.org>", "Carl <al@x.org>", Some("c1@x.org"), "[list] Gamma", None, 100),
            day(32.5),
        ),
        // Same sent instant as 2, written in another zone.
        (
            message(
                "Anna <zoe@x.org>",
                "Carl <al@x.org>",
                Some("c1@x.org"),
                "Fwd: alpha",
                Some("Sat, 1 Jan 2000 10:00:00 +0100"),
                3000,
            ),
            day(2.0),
        ),
    ];
    for (i, (raw, internal)) in msgs.into_iter().enumerate() {
        assert_eq!(f.append(&raw, internal).await, i as u32 + 1);
    }
    f
}

#[tokio::test]
async fn sort_by_every_key_with_reverse_and_ties() {
    let mut f = fixture().await;
    use SortKey::*;
    // Internal dates: 2 (Dec 1), 4 (Dec 3), 1 (Dec 5), 3 (Jan 2).
    assert_eq!(f.sort(&[(Arrival, false)], None).await, vec![2, 4, 1, 3]);
    assert_eq!(f.sort(&[(Arrival, true)], None).await, vec![3, 1, 4, 2]);
    // Sent dates in UTC: 2 and 4 the same instant (tie: sequence order),
    // 3 has no Date: and sorts by its internal date (Jan 2), then 1 (Jan 3).
    assert_eq!(f.sort(&[(Date, false)], None).await, vec![2, 4, 3, 1]);
    // REVERSE reverses the key, not the tie-break.
    assert_eq!(f.sort(&[(Date, true)], None).await, vec![1, 3, 2, 4]);
    assert_eq!(f.sort(&[(Size, false)], None).await, vec![3, 2, 4, 1]);
    assert_eq!(f.sort(&[(Size, true)], None).await, vec![1, 4, 2, 3]);
    // Base subjects: ALPHA (2, 4: a tie), BETA (1), GAMMA (3).
    assert_eq!(f.sort(&[(Subject, false)], None).await, vec![2, 4, 1, 3]);
    assert_eq!(f.sort(&[(Subject, true)], None).await, vec![3, 1, 2, 4]);
    // addr-mailbox of the first address: bob, mia, zoe, zoe.
    assert_eq!(f.sort(&[(From, false)], None).await, vec![2, 1, 3, 4]);
    // al, al, tom, zz.
    assert_eq!(f.sort(&[(To, false)], None).await, vec![3, 4, 1, 2]);
    // No Cc sorts first (empty string): "", c1, c1, c2.
    assert_eq!(f.sort(&[(Cc, false)], None).await, vec![2, 3, 4, 1]);
    // RFC 5957: display names (decoded), the address without one:
    // Anna, Anna, bob@x.org, Zed — compared case-insensitively.
    assert_eq!(f.sort(&[(DisplayFrom, false)], None).await, vec![3, 4, 2, 1]);
    // Bob, Carl, Carl, zz@x.org.
    assert_eq!(f.sort(&[(DisplayTo, false)], None).await, vec![1, 3, 4, 2]);
    // Several keys: the second decides among equals of the first.
    assert_eq!(f.sort(&[(From, false), (Arrival, false)], None).await, vec![2, 1, 4, 3]);
    assert_eq!(f.sort(&[(From, false), (Arrival, true)], None).await, vec![2, 1, 3, 4]);
    assert_eq!(f.sort(&[(Subject, false), (Size, true)], None).await, vec![4, 2, 1, 3]);
    // SEARCH criteria select what is sorted.
    let zoe = pb::SearchKey {
        key: Some(pb::search_key::Key::Header(pb::HeaderMatch { field: "from".into(), value: "ZOE@".into() })),
    };
    assert_eq!(f.sort(&[(Subject, false)], Some(zoe)).await, vec![4, 3]);
    // No key, an unknown key: refused.
    let req = pb::SortRequest { account_id: f.ctx.account.id, mailbox_id: f.mailbox_id, criteria: None, order: vec![] };
    assert_eq!(f.ctx.messages.sort(req).await.expect_err("no key").code(), tonic::Code::InvalidArgument);
    let order = vec![pb::SortCriterion { key: 99, reverse: false }];
    let req = pb::SortRequest { account_id: f.ctx.account.id, mailbox_id: f.mailbox_id, criteria: None, order };
    assert_eq!(f.ctx.messages.sort(req).await.expect_err("bad key").code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn blobs_stored_before_the_sort_fields_get_them_on_first_use() {
    let mut f = fixture().await;
    // As if stored before migration 0010: no sort fields at all.
    sqlx::query(
        "UPDATE blobs SET sort_version = NULL, base_subject = NULL, subject_is_reply = NULL, sort_from = NULL,
            sort_to = NULL, sort_cc = NULL, display_from = NULL, display_to = NULL, sent_at = NULL,
            message_id = NULL, thread_refs = NULL",
    )
    .execute(&f.ctx.env.store().pool)
    .await
    .expect("clear");
    assert_eq!(f.sort(&[(SortKey::Date, false)], None).await, vec![2, 4, 3, 1]);
    assert_eq!(f.sort(&[(SortKey::DisplayFrom, false)], None).await, vec![3, 4, 2, 1]);
    let missing: i64 = sqlx::query_scalar("SELECT count(*) FROM blobs WHERE sort_version IS NULL")
        .fetch_one(&f.ctx.env.store().pool)
        .await
        .expect("count");
    assert_eq!(missing, 0);
}

fn threaded(id: &str, subject: &str, date: &str, refs: &[&str], in_reply_to: Option<&str>) -> String {
    let mut raw = format!("From: a@x.org\r\nSubject: {subject}\r\nDate: {date}\r\n");
    if !id.is_empty() {
        raw.push_str(&format!("Message-ID: <{id}>\r\n"));
    }
    if !refs.is_empty() {
        let refs: Vec<String> = refs.iter().map(|r| format!("<{r}>")).collect();
        raw.push_str(&format!("References: {}\r\n", refs.join("\r\n ")));
    }
    if let Some(r) = in_reply_to {
        raw.push_str(&format!("In-Reply-To: <{r}>\r\n"));
    }
    raw.push_str("\r\nbody\r\n");
    raw
}

#[tokio::test]
async fn threads_by_references_and_ordered_subject() {
    let ctx = setup().await;
    let mut f = Fixture { ctx, mailbox_id: 0 };
    f.mailbox_id = f.ctx.mailbox("INBOX").await.id;
    let d = |n: u32| format!("Mon, {n} Mar 2025 10:00:00 +0000");
    let msgs = [
        // 1: a thread start; 2 answers it (References folded over lines).
        threaded("a@x", "Plans", &d(1), &[], None),
        threaded("b@x", "Re: Plans", &d(2), &["a@x"], None),
        // 3: the thread goes on under a new subject.
        threaded("c@x", "Budget", &d(3), &["a@x", "b@x"], None),
        // 4: answers a message that is not here, as does 6: a dummy parent.
        threaded("d@x", "Lost", &d(4), &["gone@x"], None),
        // 5: In-Reply-To only; and a duplicate Message-ID of 1.
        threaded("e@x", "Re: Plans", &d(5), &[], Some("b@x")),
        threaded("f@x", "Lost too", &d(6), &["gone@x"], None),
        threaded("a@x", "Plans", &d(7), &[], None),
        // 8: no Message-ID, same base subject as 9 (a reply without links).
        threaded("", "News", &d(8), &[], None),
        threaded("i@x", "Re: [list] News", &d(9), &[], None),
    ];
    for (i, raw) in msgs.iter().enumerate() {
        assert_eq!(f.append(raw, day(i as f64)).await, i as u32 + 1);
    }
    // 7 repeats 1's Message-ID: a message of its own, which joins 1 by
    // subject under a dummy (neither is a reply); 3 changed the subject
    // but stays under 2 by References; 4 and 6 share a missing parent (a
    // dummy); 9 has no links but answers 8 by subject.
    assert_eq!(f.thread(Algorithm::References, None).await, "((1 2 (3)(5))(7))((4)(6))(8 9)");
    assert_eq!(f.thread(Algorithm::OrderedSubject, None).await, "(1 (2)(5)(7))(3)(4)(6)(8 9)");
    // The criteria decide which messages take part: without 1, the first
    // message with id a@x is 7, which becomes the parent of 2.
    let not_1 = pb::SearchKey {
        key: Some(pb::search_key::Key::UidSet(pb::UidSet { ranges: vec![pb::UidRange { start: 2, end: 9 }] })),
    };
    assert_eq!(f.thread(Algorithm::References, Some(not_1)).await, "((4)(6))(7 2 (3)(5))(8 9)");
    let req =
        pb::ThreadRequest { account_id: f.ctx.account.id, mailbox_id: f.mailbox_id, criteria: None, algorithm: 0 };
    assert_eq!(f.ctx.messages.thread(req).await.expect_err("no algorithm").code(), tonic::Code::InvalidArgument);
}
