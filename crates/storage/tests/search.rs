//! Search evaluated in Postgres (RFC 3501 §6.4.4) through gRPC.

mod common;

use common::*;
use mailfleet_proto::storage::v1 as pb;
use pb::date_key::Relation;
use pb::search_key::Key;
use pb::store_flags_request::Operation::Add;
use tonic::Code;

fn k(key: Key) -> pb::SearchKey {
    pb::SearchKey { key: Some(key) }
}

fn header(field: &str, value: &str) -> pb::SearchKey {
    k(Key::Header(pb::HeaderMatch { field: field.into(), value: value.into() }))
}

fn date(rel: Relation, d: &str) -> pb::DateKey {
    pb::DateKey { relation: rel as i32, date: d.into() }
}

fn and(keys: Vec<pb::SearchKey>) -> pb::SearchKey {
    k(Key::And(pb::SearchKeyList { keys }))
}

fn or(keys: Vec<pb::SearchKey>) -> pb::SearchKey {
    k(Key::Or(pb::SearchKeyList { keys }))
}

struct Fixture {
    ctx: Ctx,
    mailbox_id: i64,
}

impl Fixture {
    async fn search(&mut self, key: pb::SearchKey) -> Vec<u32> {
        self.try_search(key).await.expect("search").uids
    }

    async fn try_search(&mut self, key: pb::SearchKey) -> Result<pb::SearchResponse, tonic::Status> {
        self.ctx
            .messages
            .search(pb::SearchRequest {
                account_id: self.ctx.account.id,
                mailbox_id: self.mailbox_id,
                criteria: Some(key),
            })
            .await
            .map(|r| r.into_inner())
    }
}

async fn fixture() -> Fixture {
    let mut ctx = setup().await;
    let msgs: [(&str, &str, &str, &str, &str); 4] = [
        (
            "Alice <alice@example.com>",
            "Quarterly report",
            "Mon, 7 Feb 1994 21:52:25 -0800",
            "text/plain",
            "The numbers look great.\r\n",
        ),
        (
            "Bob <bob@example.org>",
            "=?UTF-8?Q?Caf=C3=A9_meeting?=",
            "Tue, 8 Feb 1994 09:00:00 +0000",
            "text/plain",
            "See you at 100% of the time_ and 50_ percent.\r\n",
        ),
        (
            "Carol <carol@example.net>",
            "Holiday photos",
            "Wed, 9 Feb 1994 10:00:00 +0000",
            "text/html",
            "<p>Beach <b>sunset</b></p>\r\n",
        ),
        (
            "bob@example.org",
            "Re: Quarterly report",
            "Thu, 10 Feb 1994 10:00:00 +0000",
            "text/plain",
            &"padding line\r\n".repeat(200),
        ),
    ];
    for (i, (from, subject, date, ctype, body)) in msgs.iter().enumerate() {
        let raw = format!(
            "From: {from}\r\nTo: team@example.com\r\nSubject: {subject}\r\nDate: {date}\r\nX-Priority: {}\r\nContent-Type: {ctype}; charset=utf-8\r\n\r\n{body}",
            i + 1
        );
        // Internal dates: 2026-01-0{i+1} 23:30 UTC.
        let when = prost_types::Timestamp { seconds: 1_767_225_600 + i as i64 * 86_400 + 84_600, nanos: 0 };
        let id = ctx.account.id;
        append_with(&mut ctx.messages, id, "INBOX", raw.as_bytes(), &[], Some(when)).await.unwrap();
    }
    let mailbox_id = ctx.mailbox("INBOX").await.id;
    ctx.store(mailbox_id, vec![range(1, 2)], Add, &["\\Seen"], None).await.unwrap();
    ctx.store(mailbox_id, vec![range(2, 2)], Add, &["$Important"], None).await.unwrap();
    Fixture { ctx, mailbox_id }
}

#[tokio::test]
async fn search_criteria() {
    let mut f = fixture().await;
    assert_eq!(f.search(k(Key::All(true))).await, vec![1, 2, 3, 4]);
    // Flags, system and keyword (keywords case-insensitively).
    assert_eq!(f.search(k(Key::HasFlag("\\seen".into()))).await, vec![1, 2]);
    assert_eq!(f.search(k(Key::LacksFlag("\\Seen".into()))).await, vec![3, 4]);
    assert_eq!(f.search(k(Key::HasFlag("$important".into()))).await, vec![2]);
    // Header fields: case-insensitive substring, decoded encoded words,
    // empty value = field present.
    assert_eq!(f.search(header("from", "BOB@")).await, vec![2, 4]);
    assert_eq!(f.search(header("Subject", "quarterly")).await, vec![1, 4]);
    assert_eq!(f.search(header("subject", "café")).await, vec![2]);
    assert_eq!(f.search(header("X-Priority", "")).await, vec![1, 2, 3, 4]);
    assert_eq!(f.search(header("X-Missing", "")).await, Vec::<u32>::new());
    // BODY and TEXT; LIKE wildcards in the needle are literal.
    assert_eq!(f.search(k(Key::Body("NUMBERS".into()))).await, vec![1]);
    assert_eq!(f.search(k(Key::Body("100%".into()))).await, vec![2]);
    assert_eq!(f.search(k(Key::Body("%".into()))).await, vec![2]);
    assert_eq!(f.search(k(Key::Body("e_ and".into()))).await, vec![2]);
    assert_eq!(f.search(k(Key::Body("quarterly".into()))).await, Vec::<u32>::new());
    assert_eq!(f.search(k(Key::Text("quarterly".into()))).await, vec![1, 4]);
    assert_eq!(f.search(k(Key::Text("sunset".into()))).await, vec![3]);
    // Sizes.
    assert_eq!(f.search(k(Key::Larger(1000))).await, vec![4]);
    assert_eq!(f.search(k(Key::Smaller(1000))).await, vec![1, 2, 3]);
    // Sent dates (Date: field's date as written) and internal dates (UTC date).
    assert_eq!(f.search(k(Key::SentDate(date(Relation::On, "1994-02-08")))).await, vec![2]);
    assert_eq!(f.search(k(Key::SentDate(date(Relation::Before, "1994-02-09")))).await, vec![1, 2]);
    assert_eq!(f.search(k(Key::SentDate(date(Relation::Since, "1994-02-09")))).await, vec![3, 4]);
    assert_eq!(f.search(k(Key::InternalDate(date(Relation::On, "2026-01-02")))).await, vec![2]);
    assert_eq!(f.search(k(Key::InternalDate(date(Relation::Since, "2026-01-03")))).await, vec![3, 4]);
    assert_eq!(f.search(k(Key::InternalDate(date(Relation::Before, "2026-01-01")))).await, Vec::<u32>::new());
    // Boolean structure and UID sets ("5:*" names the last message).
    assert_eq!(f.search(k(Key::Not(Box::new(header("from", "bob"))))).await, vec![1, 3]);
    assert_eq!(f.search(or(vec![header("from", "carol"), k(Key::HasFlag("$Important".into()))])).await, vec![2, 3]);
    assert_eq!(f.search(and(vec![header("from", "bob"), k(Key::LacksFlag("\\Seen".into()))])).await, vec![4]);
    assert_eq!(f.search(k(Key::UidSet(pb::UidSet { ranges: vec![range(2, 3)] }))).await, vec![2, 3]);
    assert_eq!(f.search(k(Key::UidSet(pb::UidSet { ranges: vec![range(5, STAR)] }))).await, vec![4]);
}

#[tokio::test]
async fn search_modseq_and_highest() {
    let mut f = fixture().await;
    let mailbox = f.ctx.mailbox("INBOX").await;
    // Message 2 got the last change ($Important).
    let r = f.try_search(k(Key::ModseqAtLeast(mailbox.highest_modseq))).await.unwrap();
    assert_eq!(r.uids, vec![2]);
    assert_eq!(r.highest_modseq, mailbox.highest_modseq);
    let r = f.try_search(header("from", "nobody-at-all")).await.unwrap();
    assert_eq!((r.uids.len(), r.highest_modseq), (0, 0));
}

#[tokio::test]
async fn search_errors_and_isolation() {
    let mut f = fixture().await;
    let e = f.try_search(k(Key::SentDate(date(Relation::On, "7-Feb-1994")))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = f.try_search(k(Key::HasFlag("\\Recent".into()))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = f.try_search(header("bad field", "x")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = f.try_search(pb::SearchKey { key: None }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = f.try_search(k(Key::UidSet(pb::UidSet { ranges: vec![range(0, 2)] }))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // SQL-looking input is just a string to match.
    assert!(f.search(k(Key::Text("'); DROP TABLE messages; --".into()))).await.is_empty());
    assert_eq!(f.search(k(Key::All(true))).await.len(), 4);
    // Absurd nesting is refused, not recursed into.
    let mut deep = k(Key::All(true));
    for _ in 0..80 {
        deep = k(Key::Not(Box::new(deep)));
    }
    let e = f.try_search(deep).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Another account's session cannot search this mailbox.
    let mallory = f.ctx.add_account("mallory").await;
    let request = f
        .ctx
        .env
        .as_account(mallory.id, pb::SearchRequest { account_id: mallory.id, mailbox_id: f.mailbox_id, criteria: None });
    let e = f.ctx.messages.search(request).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn header_search_sees_the_delivery_prefix() {
    let mut ctx = setup().await;
    let blob = ctx.put_blob(&message(1)).await;
    let res = ctx
        .queue
        .deliver(pb::DeliverRequest {
            blob_id: blob.blob_id,
            targets: vec![pb::DeliveryTarget {
                account_id: ctx.account.id,
                mailbox: String::new(),
                delivery_key: "search:prefix".into(),
                header_prefix: b"Return-Path: <bounce@lists.example.org>\r\nDelivered-To: alice+news@example.com\r\n"
                    .to_vec(),
                flags: vec![],
            }],
            internal_date: None,
        })
        .await
        .unwrap()
        .into_inner();
    ctx.append("INBOX", &message(2), &[]).await;
    let mut f = Fixture { mailbox_id: res.results[0].mailbox_id, ctx };
    assert_eq!(f.search(header("Delivered-To", "alice+news")).await, vec![1]);
    assert_eq!(f.search(header("return-path", "LISTS.example")).await, vec![1]);
    assert_eq!(f.search(header("subject", "test 2")).await, vec![2]);
    assert_eq!(f.search(k(Key::Text("bounce@lists".into()))).await, vec![1]);
}
