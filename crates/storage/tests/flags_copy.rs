//! StoreFlags (with UNCHANGEDSINCE), Copy/Move with the UIDPLUS mapping, and
//! Changes (CONDSTORE/QRESYNC) through gRPC against real Postgres.

mod common;

use common::*;
use mailfleet_proto::storage::v1 as pb;
use pb::store_flags_request::Operation::{Add, Remove, Replace};
use tonic::Code;

#[tokio::test]
async fn store_flags_add_remove_replace_and_modseq() {
    let mut ctx = setup().await;
    for n in 1..=3 {
        ctx.append("INBOX", &message(n), &[]).await;
    }
    let inbox = ctx.mailbox("INBOX").await;
    let m0 = inbox.highest_modseq;

    let r = ctx.store(inbox.id, vec![range(1, 2)], Add, &["\\seen", "$Work"], None).await.unwrap();
    assert_eq!(r.updated.iter().map(|u| u.uid).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(r.updated[0].flags, vec!["\\Seen", "$Work"]);
    assert!(r.highest_modseq > m0);
    assert!(r.updated.iter().all(|u| u.modseq == r.highest_modseq));

    // Adding what is already there changes nothing and bumps no modseq.
    let same = ctx.store(inbox.id, vec![range(1, 2)], Add, &["\\Seen"], None).await.unwrap();
    assert!(same.updated.is_empty());
    assert_eq!(same.highest_modseq, r.highest_modseq);

    let rm = ctx.store(inbox.id, vec![range(1, STAR)], Remove, &["$work"], None).await.unwrap();
    assert_eq!(rm.updated.iter().map(|u| u.uid).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(rm.updated[0].flags, vec!["\\Seen"]);
    let rep = ctx.store(inbox.id, vec![range(2, 3)], Replace, &["\\Flagged", "\\Draft"], None).await.unwrap();
    assert_eq!(rep.updated.len(), 2);
    assert_eq!(rep.updated[0].flags, vec!["\\Flagged", "\\Draft"]);

    let metas = ctx.list(inbox.id, vec![], 0).await;
    let flags: Vec<Vec<String>> = metas.iter().map(|m| m.flags.clone()).collect();
    assert_eq!(
        flags,
        vec![
            vec!["\\Seen".to_string()],
            vec!["\\Flagged".into(), "\\Draft".into()],
            vec!["\\Flagged".into(), "\\Draft".into()]
        ]
    );
    assert_eq!(metas[1].modseq, rep.highest_modseq);
    assert_eq!(ctx.mailbox("INBOX").await.highest_modseq, rep.highest_modseq);

    // Errors: bad flags, bad UID set, missing operation, unknown mailbox.
    let e = ctx.store(inbox.id, vec![range(1, 1)], Add, &["\\Recent"], None).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = ctx.store(inbox.id, vec![range(0, 1)], Add, &["\\Seen"], None).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = ctx.store(inbox.id, vec![], Add, &["\\Seen"], None).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = ctx
        .messages
        .store_flags(pb::StoreFlagsRequest {
            account_id: ctx.account.id,
            mailbox_id: inbox.id,
            uids: vec![range(1, 1)],
            operation: 0,
            flags: vec![],
            unchanged_since: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = ctx.store(9_999_999, vec![range(1, 1)], Add, &["\\Seen"], None).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn unchangedsince_reports_modified_and_leaves_them_alone() {
    let mut ctx = setup().await;
    for n in 1..=3 {
        ctx.append("INBOX", &message(n), &[]).await;
    }
    let inbox = ctx.mailbox("INBOX").await;
    let base = inbox.highest_modseq;
    // Another client changes message 2 after we read `base`.
    ctx.store(inbox.id, vec![range(2, 2)], Add, &["\\Answered"], None).await.unwrap();
    // RFC 7162 §3.1.3: STORE (UNCHANGEDSINCE base) fails for 2 only.
    let r = ctx.store(inbox.id, vec![range(1, 3)], Add, &["\\Seen"], Some(base)).await.unwrap();
    assert_eq!(r.modified, vec![2]);
    assert_eq!(r.updated.iter().map(|u| u.uid).collect::<Vec<_>>(), vec![1, 3]);
    let metas = ctx.list(inbox.id, vec![range(2, 2)], 0).await;
    assert_eq!(metas[0].flags, vec!["\\Answered"]);
}

#[tokio::test]
async fn concurrent_flag_updates_keep_modseqs_unique_and_ascending() {
    let mut ctx = setup().await;
    for n in 1..=20 {
        ctx.append("INBOX", &message(n), &[]).await;
    }
    let inbox = ctx.mailbox("INBOX").await;
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let mut client = ctx.messages.clone();
        let (account_id, mailbox_id) = (ctx.account.id, inbox.id);
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..10u32 {
                let uid = (t * 10 + i) % 20 + 1;
                let r = client
                    .store_flags(pb::StoreFlagsRequest {
                        account_id,
                        mailbox_id,
                        uids: vec![range(uid, uid)],
                        operation: Add as i32,
                        flags: vec![format!("kw{t}_{i}")],
                        unchanged_since: None,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                seen.push(r.highest_modseq);
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seen = t.await.unwrap();
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "per client, modseqs ascend: {seen:?}");
        all.extend(seen);
    }
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "every STORE got its own MODSEQ");
    // Every keyword landed: no lost update.
    let metas = ctx.list(inbox.id, vec![], 0).await;
    let total: usize = metas.iter().map(|m| m.flags.len()).sum();
    assert_eq!(total, 80);
    assert_eq!(ctx.mailbox("INBOX").await.highest_modseq, *all.last().unwrap());
}

#[tokio::test]
async fn copy_returns_uidplus_mapping_and_counts_quota() {
    let mut ctx = setup().await;
    for n in 1..=4 {
        ctx.append("INBOX", &message(n), if n == 2 { &["\\Flagged"] } else { &[] }).await;
    }
    ctx.append("Archive", &message(99), &[]).await;
    let inbox = ctx.mailbox("INBOX").await;
    let archive = ctx.mailbox("Archive").await;
    let account_id = ctx.account.id;
    let copy = |uids, dest: &str, mv| pb::CopyRequest {
        account_id,
        mailbox_id: inbox.id,
        uids,
        destination: dest.into(),
        r#move: mv,
    };
    let r = ctx.messages.copy(copy(vec![range(2, 3)], "Archive", false)).await.unwrap().into_inner();
    assert_eq!(r.source_uids, vec![2, 3]);
    assert_eq!(r.destination_uids, vec![2, 3]);
    assert_eq!(r.destination_uid_validity, archive.uid_validity);
    assert_eq!(r.destination_mailbox_id, archive.id);
    let metas = ctx.list(archive.id, vec![range(2, 3)], 0).await;
    assert_eq!(metas[0].flags, vec!["\\Flagged"]);
    let (data, _) = ctx.fetch(archive.id, 3, 0, None).await;
    assert_eq!(data, message(3));
    assert_eq!(ctx.uids(inbox.id).await.uids, vec![1, 2, 3, 4]);
    let q = ctx.quota(ctx.account.id).await;
    assert_eq!(q.message_count, 7);

    // Destination missing → NOT_FOUND (IMAP: NO [TRYCREATE]).
    let e = ctx.messages.copy(copy(vec![range(1, 1)], "Nope", false)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = ctx.messages.copy(copy(vec![range(0, 1)], "Archive", false)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Nothing matches: OK with an empty mapping.
    let r = ctx.messages.copy(copy(vec![range(50, 60)], "Archive", false)).await.unwrap().into_inner();
    assert!(r.source_uids.is_empty());

    // Quota applies to copies.
    let account = ctx.account.clone();
    ctx.set_quota(&account, q.used_bytes + 10).await;
    let e = ctx.messages.copy(copy(vec![range(1, 4)], "Archive", false)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    // ...but a move needs no extra room.
    let r = ctx.messages.copy(copy(vec![range(1, 4)], "Archive", true)).await.unwrap().into_inner();
    assert_eq!(r.destination_uids, vec![4, 5, 6, 7]);
    assert_eq!(ctx.quota(ctx.account.id).await.used_bytes, q.used_bytes);
}

#[tokio::test]
async fn move_expunges_sources_and_changes_report_vanished() {
    let mut ctx = setup().await;
    for n in 1..=3 {
        ctx.append("INBOX", &message(n), &[]).await;
    }
    let inbox = ctx.mailbox("INBOX").await;
    let trash = ctx.mailbox("Trash").await;
    let since = inbox.highest_modseq;
    ctx.store(inbox.id, vec![range(3, 3)], Add, &["\\Seen"], None).await.unwrap();
    let r = ctx
        .messages
        .copy(pb::CopyRequest {
            account_id: ctx.account.id,
            mailbox_id: inbox.id,
            uids: vec![range(1, 2)],
            destination: "Trash".into(),
            r#move: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.source_uids, r.destination_uids), (vec![1, 2], vec![1, 2]));
    assert_eq!(ctx.uids(inbox.id).await.uids, vec![3]);
    assert_eq!(ctx.uids(trash.id).await.uids, vec![1, 2]);
    assert_eq!(ctx.quota(ctx.account.id).await.message_count, 3);

    let account_id = ctx.account.id;
    let changes = |since, vanished| pb::ChangesRequest {
        account_id,
        mailbox_id: inbox.id,
        since_modseq: since,
        include_vanished: vanished,
        claim_recent: false,
    };
    let c = ctx.messages.changes(changes(since, true)).await.unwrap().into_inner();
    assert_eq!(c.changed.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![3]);
    assert_eq!(c.changed[0].flags, vec!["\\Seen"]);
    assert_eq!(c.vanished, vec![1, 2]);
    assert_eq!(c.highest_modseq, ctx.mailbox("INBOX").await.highest_modseq);
    let c = ctx.messages.changes(changes(since, false)).await.unwrap().into_inner();
    assert!(c.vanished.is_empty());
    let c = ctx.messages.changes(changes(c.highest_modseq, true)).await.unwrap().into_inner();
    assert!(c.changed.is_empty() && c.vanished.is_empty());
}
