//! Many writers at once: UIDs stay unique and strictly ascending, MODSEQs
//! strictly ascending with them (RFC 3501 §2.3.1.1, RFC 7162 §3).

mod common;

use common::*;
use mailfleet_proto::storage::v1 as pb;

#[tokio::test]
async fn concurrent_appends_get_unique_ascending_uids_and_modseqs() {
    let mut ctx = setup().await;
    let (tasks, per_task) = (8usize, 25usize);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mut client = ctx.messages.clone();
        let account_id = ctx.account.id;
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..per_task {
                let r = append_with(&mut client, account_id, "INBOX", &message(t * 1000 + i), &[], None).await.unwrap();
                got.push((r.uid, r.modseq));
            }
            got
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        let got = h.await.unwrap();
        // Within one client, later appends get higher UIDs and MODSEQs.
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1), "{got:?}");
        all.extend(got);
    }
    all.sort_unstable();
    let uids: Vec<u32> = all.iter().map(|(u, _)| *u).collect();
    assert_eq!(uids, (1..=(tasks * per_task) as u32).collect::<Vec<_>>(), "no duplicate or skipped UID");
    // Ordered by UID, the MODSEQs ascend strictly too.
    assert!(all.windows(2).all(|w| w[0].1 < w[1].1));

    let inbox = ctx.mailbox("INBOX").await;
    let listed = ctx.uids(inbox.id).await;
    assert_eq!(listed.uids, uids);
    assert_eq!(listed.uid_next, (tasks * per_task) as u32 + 1);
    assert_eq!(listed.highest_modseq, all.last().unwrap().1);
    let q = ctx.quota(ctx.account.id).await;
    assert_eq!(q.message_count, (tasks * per_task) as u64);
}

#[tokio::test]
async fn concurrent_appends_respect_the_quota() {
    let mut ctx = setup().await;
    let size = message(1000).len() as u64;
    let account = ctx.account.clone();
    // Room for exactly 10 messages of this size.
    ctx.set_quota(&account, size * 10).await;
    let mut handles = Vec::new();
    for t in 0..4usize {
        let mut client = ctx.messages.clone();
        handles.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..6usize {
                match append_with(&mut client, account.id, "INBOX", &message(1000 + t * 10 + i), &[], None).await {
                    Ok(_) => ok += 1,
                    Err(e) => assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}"),
                }
            }
            ok
        }));
    }
    let mut stored = 0;
    for h in handles {
        stored += h.await.unwrap();
    }
    assert_eq!(stored, 10);
    let q = ctx.quota(ctx.account.id).await;
    assert_eq!((q.message_count, q.used_bytes), (10, size * 10));
}

/// What the account's counters say equals what its messages hold.
async fn counters_match_the_messages(ctx: &mut Ctx) -> (u64, u64) {
    let (bytes, count): (i64, i64) =
        sqlx::query_as("SELECT coalesce(sum(size), 0)::bigint, count(*) FROM messages WHERE account_id = $1")
            .bind(ctx.account.id)
            .fetch_one(&ctx.env.store().pool)
            .await
            .expect("sum the messages");
    let q = ctx.quota(ctx.account.id).await;
    assert_eq!((q.used_bytes, q.message_count), (bytes as u64, count as u64), "counters vs messages");
    (q.used_bytes, q.message_count)
}

/// Many deliveries at once (one per queued job, as delivery-queue's
/// workers make them) into an account with room for exactly 10: exactly
/// 10 are DELIVERED, every other answer is OVER_QUOTA, and the usage
/// never exceeds the limit.
#[tokio::test]
async fn concurrent_deliveries_respect_the_quota() {
    use pb::delivery_result::Status as D;
    let mut ctx = setup().await;
    let raw = message(2000);
    let blob = ctx.put_blob(&raw).await.blob_id;
    let prefix = b"Delivered-To: alice\r\n".to_vec();
    let size = (raw.len() + prefix.len()) as u64;
    let account = ctx.account.clone();
    ctx.set_quota(&account, size * 10).await;
    let mut handles = Vec::new();
    for job in 0..24usize {
        let mut queue = ctx.queue.clone();
        let target = pb::DeliveryTarget {
            account_id: account.id,
            mailbox: String::new(),
            delivery_key: format!("job-{job}:alice"),
            header_prefix: prefix.clone(),
            flags: vec![],
        };
        let req = pb::DeliverRequest { blob_id: blob.clone(), targets: vec![target], internal_date: None };
        handles.push(tokio::spawn(async move { queue.deliver(req).await.expect("deliver").into_inner().results }));
    }
    let mut statuses = Vec::new();
    for h in handles {
        let results = h.await.expect("delivery task");
        assert_eq!(results.len(), 1, "{results:?}");
        statuses.push(results[0].status());
    }
    let delivered = statuses.iter().filter(|s| **s == D::Delivered).count();
    let over = statuses.iter().filter(|s| **s == D::OverQuota).count();
    assert_eq!((delivered, over), (10, 14), "{statuses:?}");
    assert_eq!(counters_match_the_messages(&mut ctx).await, (size * 10, 10));
    let inbox = ctx.mailbox("INBOX").await;
    assert_eq!(ctx.uids(inbox.id).await.uids, (1..=10).collect::<Vec<u32>>());
}

/// Many COPYs of one message at once, with room for exactly 4 more
/// copies: 4 succeed, the others are RESOURCE_EXHAUSTED, and the usage
/// is exactly 5 messages, never above the limit.
#[tokio::test]
async fn concurrent_copies_respect_the_quota() {
    let mut ctx = setup().await;
    let raw = message(3000);
    let size = raw.len() as u64;
    ctx.append("INBOX", &raw, &[]).await;
    let inbox = ctx.mailbox("INBOX").await.id;
    let account = ctx.account.clone();
    ctx.set_quota(&account, size * 5).await;
    let mut handles = Vec::new();
    for t in 0..12usize {
        let mut c = ctx.messages.clone();
        let req = pb::CopyRequest {
            account_id: account.id,
            mailbox_id: inbox,
            uids: vec![range(1, 1)],
            destination: if t % 2 == 0 { "Archive" } else { "INBOX" }.into(),
            r#move: false,
        };
        handles.push(tokio::spawn(async move { c.copy(req).await.map(drop) }));
    }
    let mut copied = 0;
    for h in handles {
        match h.await.expect("copy task") {
            Ok(()) => copied += 1,
            Err(e) => assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}"),
        }
    }
    assert_eq!(copied, 4);
    assert_eq!(counters_match_the_messages(&mut ctx).await, (size * 5, 5));
    let archive = ctx.mailbox("Archive").await.id;
    let stored = ctx.uids(inbox).await.uids.len() + ctx.uids(archive).await.uids.len();
    assert_eq!(stored, 5);
}

/// Appends, flag changes, copies, moves and expunges racing on two
/// mailboxes: no deadlock or error, and the account's usage counters still
/// equal what is stored.
#[tokio::test]
async fn mixed_writers_keep_usage_counters_exact() {
    use mailfleet_proto::storage::v1 as pb;
    use pb::store_flags_request::Operation::Add;
    let mut ctx = setup().await;
    let inbox = ctx.mailbox("INBOX").await.id;
    let archive = ctx.mailbox("Archive").await.id;
    let account_id = ctx.account.id;
    let mut handles = Vec::new();
    for t in 0..4usize {
        let mut c = ctx.messages.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..12usize {
                let (from, to, from_name) =
                    if (t + i) % 2 == 0 { (inbox, archive, "INBOX") } else { (archive, inbox, "Archive") };
                let to_name = if from_name == "INBOX" { "Archive" } else { "INBOX" };
                append_with(&mut c, account_id, from_name, &message(t * 100 + i), &[], None).await.unwrap();
                let all = vec![range(1, STAR)];
                match i % 4 {
                    0 => {
                        c.copy(pb::CopyRequest {
                            account_id,
                            mailbox_id: from,
                            uids: all,
                            destination: to_name.into(),
                            r#move: false,
                        })
                        .await
                        .unwrap();
                    }
                    1 => {
                        c.copy(pb::CopyRequest {
                            account_id,
                            mailbox_id: from,
                            uids: all,
                            destination: to_name.into(),
                            r#move: true,
                        })
                        .await
                        .unwrap();
                    }
                    2 => {
                        c.store_flags(pb::StoreFlagsRequest {
                            account_id,
                            mailbox_id: to,
                            uids: all,
                            operation: Add as i32,
                            flags: vec!["\\Deleted".into()],
                            unchanged_since: None,
                        })
                        .await
                        .unwrap();
                    }
                    _ => {
                        c.expunge(pb::ExpungeRequest {
                            account_id,
                            mailbox_id: to,
                            uids: vec![],
                            ignore_deleted_flag: false,
                        })
                        .await
                        .unwrap();
                    }
                }
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let store = ctx.env.store();
    let (bytes, count): (i64, i64) =
        sqlx::query_as("SELECT coalesce(sum(size), 0)::bigint, count(*) FROM messages WHERE account_id = $1")
            .bind(account_id)
            .fetch_one(&store.pool)
            .await
            .unwrap();
    let q = ctx.quota(account_id).await;
    assert_eq!((q.used_bytes, q.message_count), (bytes as u64, count as u64));
    // UIDs below UIDNEXT, never duplicated.
    for id in [inbox, archive] {
        let u = ctx.uids(id).await;
        assert!(u.uids.windows(2).all(|w| w[0] < w[1]));
        assert!(u.uids.last().is_none_or(|l| *l < u.uid_next));
    }
}

/// Many sessions SELECT one mailbox at once (a user's phone, laptop and
/// webmail, or a reconnect storm): every SELECT answers, and each new
/// message is \Recent for exactly one of them (RFC 3501 §2.3.2), while the
/// mailbox is appended to at the same time.
#[tokio::test]
async fn concurrent_selects_claim_each_recent_message_once() {
    let mut ctx = setup().await;
    for i in 0..5 {
        ctx.append("INBOX", &message(i), &[]).await;
    }
    let mut handles = Vec::new();
    for _ in 0..60 {
        let mut mailboxes = ctx.mailboxes.clone();
        let account_id = ctx.account.id;
        handles.push(tokio::spawn(async move {
            let req = pb::GetMailboxRequest { account_id, name: "INBOX".into(), select: true };
            mailboxes.get_mailbox(req).await.map(|r| r.into_inner().recent_uids)
        }));
    }
    for i in 5..10 {
        ctx.append("INBOX", &message(i), &[]).await;
    }
    let mut claimed: Vec<u32> = Vec::new();
    for h in handles {
        claimed.extend(h.await.expect("task").expect("SELECT answers"));
    }
    // What the SELECTs did not claim, the next one does.
    let last = ctx
        .mailboxes
        .get_mailbox(pb::GetMailboxRequest { account_id: ctx.account.id, name: "INBOX".into(), select: true })
        .await
        .expect("select")
        .into_inner();
    claimed.extend(last.recent_uids);
    claimed.sort_unstable();
    assert_eq!(claimed, (1..=10).collect::<Vec<u32>>(), "each message recent for exactly one SELECT");
}
