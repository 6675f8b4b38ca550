//! Messages service through gRPC against real Postgres (TestEnv):
//! append, fetch with ranges, list, UIDs, deliver, expunge and their errors.

mod common;

use common::*;
use mailfleet_proto::storage::v1 as pb;
use pb::delivery_result::Status as D;
use tonic::Code;

#[tokio::test]
async fn append_then_fetch_list_and_uids() {
    let mut ctx = setup().await;
    let inbox = ctx.mailbox("INBOX").await;
    let raw = message(1);
    let a = ctx.append("inbox", &raw, &["\\seen", "$Work", "\\SEEN"]).await;
    assert_eq!(a.uid, 1);
    assert_eq!(a.mailbox_id, inbox.id);
    assert_eq!(a.uid_validity, inbox.uid_validity);
    assert!(a.modseq > inbox.highest_modseq);
    let b = ctx.append("INBOX", &message(2), &[]).await;
    assert_eq!(b.uid, 2);
    assert!(b.modseq > a.modseq);

    let (data, total) = ctx.fetch(inbox.id, 1, 0, None).await;
    assert_eq!(data, raw);
    assert_eq!(total, raw.len() as u64);
    let (part, total) = ctx.fetch(inbox.id, 1, 6, Some(3)).await;
    assert_eq!(part, &raw[6..9]);
    assert_eq!(total, raw.len() as u64);
    let (past_end, _) = ctx.fetch(inbox.id, 1, 10_000, Some(5)).await;
    assert!(past_end.is_empty());

    let metas = ctx.list(inbox.id, vec![], 0).await;
    assert_eq!(metas.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(metas[0].flags, vec!["\\Seen", "$Work"]);
    assert_eq!(metas[0].size, raw.len() as u64);
    let hdr = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() as u64 + 4;
    assert_eq!(metas[0].header_size, hdr);
    assert!(metas[0].body_structure.is_some());

    // CHANGEDSINCE: only the second append is newer than the first's modseq.
    let newer = ctx.list(inbox.id, vec![range(1, STAR)], a.modseq).await;
    assert_eq!(newer.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![2]);
    // "5:*" with 5 above every UID still names the last message (RFC 3501 §6.4.8).
    let star = ctx.list(inbox.id, vec![range(5, STAR)], 0).await;
    assert_eq!(star.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![2]);

    let uids = ctx.uids(inbox.id).await;
    assert_eq!(uids.uids, vec![1, 2]);
    assert_eq!(uids.uid_next, 3);
    assert_eq!(uids.highest_modseq, b.modseq);
    assert_eq!(uids.uid_validity, inbox.uid_validity);

    let q = ctx.quota(ctx.account.id).await;
    assert_eq!(q.message_count, 2);
    assert_eq!(q.used_bytes, (raw.len() + message(2).len()) as u64);
}

#[tokio::test]
async fn append_keeps_the_internal_date() {
    let mut ctx = setup().await;
    let when = prost_types::Timestamp { seconds: 760_000_000, nanos: 0 };
    let id = ctx.account.id;
    append_with(&mut ctx.messages, id, "INBOX", &message(1), &[], Some(when)).await.unwrap();
    let inbox = ctx.mailbox("INBOX").await;
    let metas = ctx.list(inbox.id, vec![range(1, 1)], 0).await;
    assert_eq!(metas[0].internal_date, Some(when));
}

#[tokio::test]
async fn append_errors() {
    let mut ctx = setup().await;
    let id = ctx.account.id;
    let e = ctx.try_append(id, "Nope", &message(1), &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = ctx.try_append(id, "INBOX", &message(1), &["\\Recent"]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = ctx.try_append(id, "INBOX", &message(1), &["bad flag"]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = ctx.try_append(id, "INBOX", &message(1), &["\\Bogus"]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = ctx.try_append(9_999_999, "INBOX", &message(1), &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");

    // Over quota: clear RESOURCE_EXHAUSTED, nothing stored.
    let account = ctx.account.clone();
    ctx.set_quota(&account, 100).await;
    let e = ctx.try_append(id, "INBOX", &[b'x'; 200], &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.message().contains("quota"), "{e}");
    assert_eq!(ctx.quota(id).await.message_count, 0);
    ctx.set_quota(&account, 0).await;

    // Larger than max_message_size (50 MiB default) is refused while streaming.
    let big = vec![b'a'; 50 * 1024 * 1024 + 1];
    let e = ctx.try_append(id, "INBOX", &big, &[]).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    let inbox = ctx.mailbox("INBOX").await;
    assert_eq!(ctx.uids(inbox.id).await.uids, Vec::<u32>::new());
}

#[tokio::test]
async fn twenty_megabytes_round_trip_with_ranges() {
    let mut ctx = setup().await;
    let mut raw = b"Subject: big\r\n\r\n".to_vec();
    // 20 MiB of 78-octet CRLF lines (8-bit content included), so the bytes
    // are stored exactly as sent.
    let mut i = 0u32;
    while raw.len() < 20 * 1024 * 1024 {
        raw.extend((0..76).map(|k| 32 + ((i + k) % 220) as u8));
        raw.extend_from_slice(b"\r\n");
        i += 1;
    }
    let a = ctx.append("INBOX", &raw, &[]).await;
    let (data, total) = ctx.fetch(a.mailbox_id, a.uid, 0, None).await;
    assert_eq!(total, raw.len() as u64);
    assert!(data == raw, "20 MB message differs after the round trip");
    let (mid, _) = ctx.fetch(a.mailbox_id, a.uid, 10_000_000, Some(1_000_000)).await;
    assert!(mid == raw[10_000_000..11_000_000]);
    let (tail, _) = ctx.fetch(a.mailbox_id, a.uid, raw.len() as u64 - 10, None).await;
    assert_eq!(tail, &raw[raw.len() - 10..]);
}

#[tokio::test]
async fn bare_line_feeds_are_stored_as_crlf_so_sizes_match_what_is_served() {
    let mut ctx = setup().await;
    let a = ctx.append("INBOX", b"Subject: unix\n\nline one\nline two\n", &[]).await;
    let (data, total) = ctx.fetch(a.mailbox_id, a.uid, 0, None).await;
    assert_eq!(data, b"Subject: unix\r\n\r\nline one\r\nline two\r\n");
    assert_eq!(total, data.len() as u64);
}

#[tokio::test]
async fn bad_uid_sets_and_cross_account_access() {
    let mut ctx = setup().await;
    let a = ctx.append("INBOX", &message(1), &[]).await;
    let e = ctx.try_list(ctx.account.id, a.mailbox_id, vec![range(0, 3)], 0).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = ctx.try_fetch(ctx.account.id, a.mailbox_id, 42, 0, None).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");

    // Another account's session can neither read nor list nor change
    // alice's mailbox: mailbox ids are looked up within the account.
    let mallory = ctx.add_account("mallory").await;
    let e = ctx.try_fetch(mallory.id, a.mailbox_id, a.uid, 0, None).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = ctx.try_list(mallory.id, a.mailbox_id, vec![], 0).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = ctx
        .messages
        .list_uids(
            ctx.env.as_account(mallory.id, pb::ListUidsRequest { account_id: mallory.id, mailbox_id: a.mailbox_id }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = ctx
        .messages
        .expunge(ctx.env.as_account(
            mallory.id,
            pb::ExpungeRequest {
                account_id: mallory.id,
                mailbox_id: a.mailbox_id,
                uids: vec![range(1, 1)],
                ignore_deleted_flag: true,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = ctx
        .messages
        .store_flags(ctx.env.as_account(
            mallory.id,
            pb::StoreFlagsRequest {
                account_id: mallory.id,
                mailbox_id: a.mailbox_id,
                uids: vec![range(1, 1)],
                operation: pb::store_flags_request::Operation::Add as i32,
                flags: vec!["\\Deleted".into()],
                unchanged_since: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = ctx
        .messages
        .copy(ctx.env.as_account(
            mallory.id,
            pb::CopyRequest {
                account_id: mallory.id,
                mailbox_id: a.mailbox_id,
                uids: vec![range(1, 1)],
                destination: "INBOX".into(),
                r#move: true,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = ctx
        .messages
        .changes(ctx.env.as_account(
            mallory.id,
            pb::ChangesRequest {
                account_id: mallory.id,
                mailbox_id: a.mailbox_id,
                since_modseq: 0,
                include_vanished: true,
                claim_recent: true,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(ctx.uids(a.mailbox_id).await.uids, vec![1]);
    assert_eq!(ctx.list(a.mailbox_id, vec![], 0).await[0].flags, Vec::<String>::new());
}

fn target(account_id: i64, key: &str, mailbox: &str, prefix: &[u8]) -> pb::DeliveryTarget {
    pb::DeliveryTarget {
        account_id,
        mailbox: mailbox.into(),
        delivery_key: key.into(),
        header_prefix: prefix.to_vec(),
        flags: vec![],
    }
}

#[tokio::test]
async fn put_blob_then_deliver_is_idempotent_and_reports_each_target() {
    let mut ctx = setup().await;
    let bob = ctx.add_account("bob").await;
    let carol = ctx.add_account("carol").await;
    let dave = ctx.add_account("dave").await;
    ctx.env
        .admin()
        .await
        .set_disabled(pb::SetDisabledRequest { address: carol.address.clone(), disabled: true })
        .await
        .unwrap();
    ctx.set_quota(&dave, 10).await;

    let raw = message(7);
    let blob = ctx.put_blob(&raw).await;
    assert_eq!(blob.size, raw.len() as u64);
    assert_eq!(blob.blob_id.len(), 64);

    let prefix = b"Return-Path: <bob@example.org>\r\nDelivered-To: alice@example.com\r\n".to_vec();
    let req = pb::DeliverRequest {
        blob_id: blob.blob_id.clone(),
        targets: vec![
            target(ctx.account.id, "job1:alice", "", &prefix),
            target(bob.id, "job1:bob", "Archive", b""),
            target(carol.id, "job1:carol", "", b""),
            target(dave.id, "job1:dave", "", b""),
            target(9_999_999, "job1:ghost", "", b""),
            target(bob.id, "job1:bob-missing", "Nope", b""),
        ],
        internal_date: None,
    };
    let res = ctx.queue.deliver(req.clone()).await.unwrap().into_inner().results;
    let statuses: Vec<D> = res.iter().map(|r| r.status()).collect();
    assert_eq!(
        statuses,
        vec![D::Delivered, D::Delivered, D::AccountDisabled, D::OverQuota, D::NoSuchAccount, D::NoSuchMailbox]
    );
    assert_eq!(res[0].uid, 1);
    let inbox = ctx.mailbox("INBOX").await;
    assert_eq!(res[0].mailbox_id, inbox.id);

    // The per-recipient prefix comes first and counts in the size.
    let (data, total) = ctx.fetch(inbox.id, 1, 0, None).await;
    assert_eq!(data, [prefix.clone(), raw.clone()].concat());
    assert_eq!(total, (prefix.len() + raw.len()) as u64);
    let (straddle, _) = ctx.fetch(inbox.id, 1, prefix.len() as u64 - 4, Some(8)).await;
    assert_eq!(straddle, [&prefix[prefix.len() - 4..], &raw[..4]].concat());
    let meta = &ctx.list(inbox.id, vec![range(1, 1)], 0).await[0];
    let hdr = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(meta.header_size, (prefix.len() + hdr) as u64);
    let body = meta.body_structure.as_ref().unwrap();
    assert_eq!(body.header_offset, 0);
    assert_eq!(body.body_offset, (prefix.len() + hdr) as u64);

    // Retried delivery: DUPLICATE with the original location, nothing stored.
    let again = ctx.queue.deliver(req).await.unwrap().into_inner().results;
    assert_eq!(again[0].status(), D::Duplicate);
    assert_eq!((again[0].mailbox_id, again[0].uid), (inbox.id, 1));
    assert_eq!(again[1].status(), D::Duplicate);
    assert_eq!(ctx.uids(inbox.id).await.uids, vec![1]);
    assert_eq!(ctx.quota(ctx.account.id).await.message_count, 1);
    assert_eq!(ctx.quota(bob.id).await.message_count, 1);
}

#[tokio::test]
async fn concurrent_duplicate_deliveries_store_one_message() {
    let ctx = setup().await;
    let mut c = ctx;
    let blob = c.put_blob(&message(3)).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut client = c.queue.clone();
        let req = pb::DeliverRequest {
            blob_id: blob.blob_id.clone(),
            targets: vec![target(c.account.id, "job-same:alice", "INBOX", b"")],
            internal_date: None,
        };
        tasks.push(tokio::spawn(async move { client.deliver(req).await.unwrap().into_inner().results[0].status() }));
    }
    let mut delivered = 0;
    for t in tasks {
        match t.await.unwrap() {
            D::Delivered => delivered += 1,
            D::Duplicate => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delivered, 1);
    let inbox = c.mailbox("INBOX").await;
    assert_eq!(c.uids(inbox.id).await.uids, vec![1]);
}

#[tokio::test]
async fn deliver_unknown_or_malformed_blob_stores_nothing() {
    let mut ctx = setup().await;
    let req = |blob_id: &str, id| pb::DeliverRequest {
        blob_id: blob_id.into(),
        targets: vec![target(id, "k1", "", b"")],
        internal_date: None,
    };
    let e = ctx.queue.deliver(req(&"ab".repeat(32), ctx.account.id)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let e = ctx.queue.deliver(req("../../etc/passwd", ctx.account.id)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let inbox = ctx.mailbox("INBOX").await;
    assert!(ctx.uids(inbox.id).await.uids.is_empty());
    // The key was not consumed: a later delivery with a real blob works.
    let blob = ctx.put_blob(&message(1)).await;
    let res = ctx.queue.deliver(req(&blob.blob_id, ctx.account.id)).await.unwrap().into_inner();
    assert_eq!(res.results[0].status(), D::Delivered);
}

#[tokio::test]
async fn fetch_blob_streams_the_raw_bytes() {
    use futures::StreamExt;
    let mut ctx = setup().await;
    let raw: Vec<u8> = (0..300_000u32).map(|i| (i % 7) as u8 + b'a').collect();
    let blob = ctx.put_blob(&raw).await;
    let mut s = ctx.queue.fetch_blob(pb::FetchBlobRequest { blob_id: blob.blob_id }).await.unwrap().into_inner();
    let mut data = Vec::new();
    let mut first = true;
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        if first {
            assert_eq!(c.total_size, raw.len() as u64);
            first = false;
        }
        data.extend(c.data);
    }
    assert!(data == raw);
    let e = ctx.queue.fetch_blob(pb::FetchBlobRequest { blob_id: "0".repeat(64) }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn expunge_deleted_uid_expunge_and_pop3_removal() {
    use pb::store_flags_request::Operation::Add;
    let mut ctx = setup().await;
    for n in 1..=6 {
        ctx.append("INBOX", &message(n), &[]).await;
    }
    let inbox = ctx.mailbox("INBOX").await;
    let before = ctx.quota(ctx.account.id).await;
    ctx.store(inbox.id, vec![range(1, 2), range(5, 5)], Add, &["\\Deleted"], None).await.unwrap();

    // UID EXPUNGE 2:6 → only the \Deleted ones inside the set.
    let ex = |uids, ignore| pb::ExpungeRequest {
        account_id: ctx.account.id,
        mailbox_id: inbox.id,
        uids,
        ignore_deleted_flag: ignore,
    };
    let r = ctx.messages.expunge(ex(vec![range(2, 6)], false)).await.unwrap().into_inner();
    assert_eq!(r.expunged_uids, vec![2, 5]);
    // Plain EXPUNGE → the remaining \Deleted one.
    let r2 = ctx.messages.expunge(ex(vec![], false)).await.unwrap().into_inner();
    assert_eq!(r2.expunged_uids, vec![1]);
    assert!(r2.highest_modseq > r.highest_modseq);
    // POP3 UPDATE: exactly the listed UIDs, \Deleted or not.
    let r3 = ctx.messages.expunge(ex(vec![range(3, 3), range(6, 6)], true)).await.unwrap().into_inner();
    assert_eq!(r3.expunged_uids, vec![3, 6]);
    // Nothing left to do: no error, nothing removed.
    let r4 = ctx.messages.expunge(ex(vec![], false)).await.unwrap().into_inner();
    assert!(r4.expunged_uids.is_empty());
    assert_eq!(r4.highest_modseq, r3.highest_modseq);

    assert_eq!(ctx.uids(inbox.id).await.uids, vec![4]);
    let after = ctx.quota(ctx.account.id).await;
    assert_eq!(after.message_count, 1);
    assert_eq!(after.used_bytes, message(4).len() as u64);
    assert!(before.used_bytes > after.used_bytes);
    // UIDs are never reused (RFC 3501 §2.3.1.1).
    assert_eq!(ctx.append("INBOX", &message(9), &[]).await.uid, 7);
}

#[tokio::test]
async fn ten_thousand_messages_stream_in_uid_order() {
    let mut ctx = setup().await;
    let first = ctx.append("INBOX", &message(0), &[]).await;
    // Fill the mailbox directly in Postgres (10,000 APPENDs would only test
    // patience): rows 2..=10000 share the first message's blob.
    let store = ctx.env.store();
    sqlx::query(
        "INSERT INTO messages (account_id, mailbox_id, uid, modseq, blob_id, header_prefix, size, internal_date, flags)
         SELECT account_id, mailbox_id, g, modseq + g, blob_id, header_prefix, size, internal_date, flags
         FROM messages, generate_series(2, 10000) AS g WHERE mailbox_id = $1 AND uid = 1",
    )
    .bind(first.mailbox_id)
    .execute(&store.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE mailboxes SET uid_next = 10001, highest_modseq = highest_modseq + 10000 WHERE id = $1")
        .bind(first.mailbox_id)
        .execute(&store.pool)
        .await
        .unwrap();

    let metas = ctx.list(first.mailbox_id, vec![range(1, STAR)], 0).await;
    assert_eq!(metas.len(), 10_000);
    assert!(metas.windows(2).all(|w| w[0].uid + 1 == w[1].uid));
    assert!(metas.iter().all(|m| m.envelope.is_some() && m.size == message(0).len() as u64));
    let some = ctx.list(first.mailbox_id, vec![range(9_990, STAR), range(3, 5)], 0).await;
    assert_eq!(
        some.iter().map(|m| m.uid).collect::<Vec<_>>(),
        vec![3, 4, 5, 9990, 9991, 9992, 9993, 9994, 9995, 9996, 9997, 9998, 9999, 10000]
    );
    let uids = ctx.uids(first.mailbox_id).await;
    assert_eq!(uids.uids.len(), 10_000);
    assert_eq!(uids.uid_next, 10_001);
}

#[tokio::test]
async fn append_stream_must_start_with_its_header() {
    let mut ctx = setup().await;
    let only_data = vec![pb::AppendRequest { part: Some(pb::append_request::Part::Chunk(message(1))) }];
    let e = ctx.messages.append(tokio_stream::iter(only_data)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let header = pb::AppendRequest {
        part: Some(pb::append_request::Part::Header(pb::AppendHeader {
            account_id: ctx.account.id,
            mailbox: "INBOX".into(),
            flags: vec![],
            internal_date: None,
        })),
    };
    let two_headers =
        vec![header.clone(), pb::AppendRequest { part: Some(pb::append_request::Part::Chunk(message(1))) }, header];
    let e = ctx.messages.append(tokio_stream::iter(two_headers)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let inbox = ctx.mailbox("INBOX").await;
    assert_eq!(inbox.messages, 0);
}

/// FetchRanges: the octets of many messages in one call, in request order;
/// a range over the per-recipient prefix and the blob; a big range in
/// several chunks; an expunged message marked missing; another account's
/// mailbox refused.
#[tokio::test]
async fn fetch_ranges_answers_many_messages_in_order() {
    let mut ctx = setup().await;
    let inbox = ctx.mailbox("INBOX").await;
    let small: Vec<Vec<u8>> = (1..=300).map(message).collect();
    for raw in &small {
        ctx.append("INBOX", raw, &[]).await;
    }
    let big: Vec<u8> = [b"Subject: big\r\n\r\n".to_vec(), vec![b'x'; 3 * 1024 * 1024], b"\r\n".to_vec()].concat();
    let big_uid = ctx.append("INBOX", &big, &[]).await.uid;
    let prefix = b"Return-Path: <a@b.example>\r\nDelivered-To: alice@example.com\r\n".to_vec();
    let blob = ctx.put_blob(&small[0]).await;
    let delivered = ctx
        .queue
        .deliver(pb::DeliverRequest {
            blob_id: blob.blob_id,
            targets: vec![target(ctx.account.id, "ranges:alice", "", &prefix)],
            internal_date: None,
        })
        .await
        .expect("deliver")
        .into_inner()
        .results[0]
        .uid;
    // Message 2 goes away before the call.
    ctx.messages
        .expunge(pb::ExpungeRequest {
            account_id: ctx.account.id,
            mailbox_id: inbox.id,
            uids: vec![range(2, 2)],
            ignore_deleted_flag: true,
        })
        .await
        .expect("expunge");

    let r = |uid: u32, offset: u64, length: Option<u64>| pb::ByteRange { uid, offset, length, ..Default::default() };
    let mut ranges: Vec<pb::ByteRange> = (1..=300).map(|uid| r(uid, 0, None)).collect();
    ranges.push(r(big_uid, 10, None));
    ranges.push(r(delivered, prefix.len() as u64 - 4, Some(8)));
    ranges.push(r(1, 5, Some(7)));
    ranges.push(r(1, 1_000_000, Some(5)));
    // By section: the header counts the prefix, the text is what follows.
    let section = |uid: u32, section: pb::byte_range::Section, offset: u64, length: Option<u64>| pb::ByteRange {
        uid,
        offset,
        length,
        section: section as i32,
    };
    use pb::byte_range::Section;
    ranges.push(section(delivered, Section::Header, 0, None));
    ranges.push(section(delivered, Section::Text, 0, None));
    ranges.push(section(delivered, Section::Text, 6, Some(6)));
    ranges.push(section(big_uid, Section::Header, 0, None));
    let req = pb::FetchRangesRequest { account_id: ctx.account.id, mailbox_id: inbox.id, ranges: ranges.clone() };
    let mut stream = ctx.messages.fetch_ranges(req.clone()).await.expect("fetch_ranges").into_inner();
    let mut got: Vec<Option<Vec<u8>>> = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let mut chunks_of_big = 0;
    let mut announced = Vec::new();
    while let Some(chunk) = stream.message().await.expect("chunk") {
        assert_eq!(chunk.index as usize, got.len(), "ranges come in request order");
        if chunk.index == 300 {
            chunks_of_big += 1;
        }
        if current.is_empty() && !chunk.missing {
            announced.push(chunk.size);
        }
        if chunk.missing {
            assert!(chunk.last && chunk.data.is_empty());
            got.push(None);
            continue;
        }
        current.extend_from_slice(&chunk.data);
        if chunk.last {
            got.push(Some(std::mem::take(&mut current)));
        }
    }
    assert_eq!(got.len(), ranges.len());
    for (i, raw) in small.iter().enumerate() {
        if i == 1 {
            assert_eq!(got[i], None, "the expunged message is marked missing");
        } else {
            assert_eq!(got[i].as_deref(), Some(raw.as_slice()), "message {}", i + 1);
        }
    }
    assert_eq!(got[300].as_deref(), Some(&big[10..]));
    assert!(chunks_of_big > 1, "a big range streams in several chunks");
    assert_eq!(got[301].as_deref(), Some([&prefix[prefix.len() - 4..], &small[0][..4]].concat().as_slice()));
    assert_eq!(got[302].as_deref(), Some(&small[0][5..12]));
    assert_eq!(got[303].as_deref(), Some(&b""[..]), "a range past the end is empty");
    let split = small[0].windows(4).position(|w| w == b"\r\n\r\n").expect("header end") + 4;
    assert_eq!(got[304].as_deref(), Some([&prefix[..], &small[0][..split]].concat().as_slice()));
    assert_eq!(got[305].as_deref(), Some(&small[0][split..]));
    assert_eq!(got[306].as_deref(), Some(&small[0][split + 6..split + 12]));
    assert_eq!(got[307].as_deref(), Some(&b"Subject: big\r\n\r\n"[..]));
    // The first chunk of every range announces its size.
    let sizes: Vec<u64> = got.iter().flatten().map(|d| d.len() as u64).collect();
    assert_eq!(announced, sizes);

    // Someone else's mailbox: refused before anything is read.
    let mallory = ctx.add_account("mallory").await;
    let refused = ctx
        .messages
        .fetch_ranges(ctx.env.as_account(mallory.id, pb::FetchRangesRequest { account_id: mallory.id, ..req }))
        .await;
    assert_eq!(refused.expect_err("cross-account").code(), Code::NotFound);
}

/// PutBlob records the MIME metadata when the blob arrives; a blob whose
/// row has none (stored before that was done) is parsed at its first
/// delivery, and the message then has its envelope like any other.
#[tokio::test]
async fn deliver_parses_a_blob_recorded_without_metadata() {
    let mut ctx = setup().await;
    let raw = message(9);
    let blob = ctx.put_blob(&raw).await;
    let pool = &ctx.env.store().pool;
    let parsed: bool = sqlx::query_scalar("SELECT header_size IS NOT NULL FROM blobs WHERE id = $1")
        .bind(&blob.blob_id)
        .fetch_one(pool)
        .await
        .expect("blob row");
    assert!(parsed, "PutBlob recorded the metadata");
    sqlx::query("UPDATE blobs SET envelope = NULL, body_structure = NULL, header_size = NULL WHERE id = $1")
        .bind(&blob.blob_id)
        .execute(pool)
        .await
        .expect("forget metadata");
    let res = ctx
        .queue
        .deliver(pb::DeliverRequest {
            blob_id: blob.blob_id.clone(),
            targets: vec![target(ctx.account.id, "legacy:alice", "", b"")],
            internal_date: None,
        })
        .await
        .expect("deliver")
        .into_inner()
        .results;
    assert_eq!(res[0].status(), D::Delivered);
    let inbox = ctx.mailbox("INBOX").await;
    let meta = &ctx.list(inbox.id, vec![range(res[0].uid, res[0].uid)], 0).await[0];
    assert!(meta.envelope.as_ref().is_some_and(|e| e.subject.is_some()), "{meta:?}");
    assert!(meta.header_size > 0);
}

/// PutBlob commits the blob's row without waiting for the WAL flush, so a
/// crash may take the row while the (fsynced) file stays: the delivery
/// that comes after finds no row, parses the file again and delivers; a
/// blob whose file is gone as well is still NOT_FOUND.
#[tokio::test]
async fn deliver_recovers_a_blob_row_lost_in_a_crash() {
    let mut ctx = setup().await;
    let raw = message(11);
    let blob = ctx.put_blob(&raw).await;
    let pool = &ctx.env.store().pool;
    sqlx::query("DELETE FROM blobs WHERE id = $1").bind(&blob.blob_id).execute(pool).await.expect("lose the row");
    let account_id = ctx.account.id;
    let deliver = |key: &str, blob_id: &str| pb::DeliverRequest {
        blob_id: blob_id.to_string(),
        targets: vec![target(account_id, key, "", b"")],
        internal_date: None,
    };
    let res = ctx.queue.deliver(deliver("lost:alice", &blob.blob_id)).await.expect("deliver").into_inner().results;
    assert_eq!(res[0].status(), D::Delivered);
    let inbox = ctx.mailbox("INBOX").await;
    let meta = &ctx.list(inbox.id, vec![range(res[0].uid, res[0].uid)], 0).await[0];
    assert!(meta.envelope.as_ref().is_some_and(|e| e.subject.as_deref() == Some("test 11")), "{meta:?}");
    assert_eq!(meta.size, raw.len() as u64);

    let missing = "0".repeat(64);
    let refused = ctx.queue.deliver(deliver("missing:alice", &missing)).await;
    assert_eq!(refused.expect_err("no such blob").code(), Code::NotFound);
}

/// Changes with claim_recent: new messages are \Recent for the first
/// session that asks (RFC 3501 §2.3.2), once; an unchanged mailbox answers
/// with its HIGHESTMODSEQ and nothing else.
#[tokio::test]
async fn changes_claims_recent_messages_once() {
    let mut ctx = setup().await;
    let inbox = ctx.mailbox("INBOX").await;
    ctx.append("INBOX", &message(1), &[]).await;
    // SELECT claims what is there now.
    let selected = ctx
        .mailboxes
        .get_mailbox(pb::GetMailboxRequest { account_id: ctx.account.id, name: "INBOX".into(), select: true })
        .await
        .expect("select")
        .into_inner();
    assert_eq!(selected.recent_uids, vec![1]);
    let since = selected.highest_modseq;
    let ask = |claim_recent| pb::ChangesRequest {
        account_id: ctx.account.id,
        mailbox_id: inbox.id,
        since_modseq: since,
        include_vanished: true,
        claim_recent,
    };
    let (ask_read_only, ask_claiming) = (ask(false), ask(true));
    let quiet = ctx.messages.changes(ask_claiming).await.expect("changes").into_inner();
    assert!(quiet.changed.is_empty() && quiet.vanished.is_empty() && quiet.recent_uids.is_empty());
    assert_eq!(quiet.highest_modseq, since);

    ctx.append("INBOX", &message(2), &[]).await;
    ctx.append("INBOX", &message(3), &[]).await;
    // A read-only session (EXAMINE) sees them but claims nothing.
    let seen = ctx.messages.changes(ask_read_only).await.expect("changes").into_inner();
    assert_eq!(seen.changed.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![2, 3]);
    assert!(seen.recent_uids.is_empty());
    let first = ctx.messages.changes(ask_claiming).await.expect("changes").into_inner();
    assert_eq!(first.changed.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(first.recent_uids, vec![2, 3]);
    assert!(first.highest_modseq > since);
    let second = ctx.messages.changes(ask_claiming).await.expect("changes").into_inner();
    assert_eq!(second.changed.len(), 2, "the changes are still there for this MODSEQ");
    assert!(second.recent_uids.is_empty(), "claimed once");
}
