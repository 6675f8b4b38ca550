//! Many writers at once: UIDs stay unique and strictly ascending, MODSEQs
//! strictly ascending with them (RFC 3501 §2.3.1.1, RFC 7162 §3).

mod common;

use common::*;

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
