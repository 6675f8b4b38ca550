//! Mailboxes service through gRPC against real Postgres (TestEnv).

mod common;

use common::*;
use mailfleet_proto::storage::v1 as pb;
use tonic::Code;

fn names(list: &pb::ListMailboxesResponse) -> Vec<&str> {
    list.mailboxes.iter().map(|m| m.name.as_str()).collect()
}

#[tokio::test]
async fn new_account_lists_default_mailboxes_with_special_use() {
    let mut ctx = setup().await;
    let list = ctx
        .mailboxes
        .list_mailboxes(pb::ListMailboxesRequest { account_id: ctx.account.id, with_status: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&list), vec!["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]);
    let sent = list.mailboxes.iter().find(|m| m.name == "Sent").unwrap();
    assert_eq!(sent.special_use, vec!["\\Sent"]);
    assert!(sent.subscribed);
    assert_eq!(sent.uid_next, 1);
    assert!(list.subscriptions.contains(&"INBOX".to_string()));
    // UIDVALIDITY differs per mailbox (one global sequence).
    let mut v: Vec<u32> = list.mailboxes.iter().map(|m| m.uid_validity).collect();
    v.dedup();
    assert_eq!(v.len(), 6);

    let e = ctx
        .mailboxes
        .list_mailboxes(
            ctx.env.as_account(9_999_999, pb::ListMailboxesRequest { account_id: 9_999_999, with_status: false }),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn status_counts_and_select_claims_recent() {
    use pb::store_flags_request::Operation::Add;
    let mut ctx = setup().await;
    for n in 1..=3 {
        ctx.append("INBOX", &message(n), &[]).await;
    }
    let inbox = ctx.mailbox("INBOX").await;
    ctx.store(inbox.id, vec![range(1, 1)], Add, &["\\Seen", "$Important"], None).await.unwrap();

    let list = ctx
        .mailboxes
        .list_mailboxes(pb::ListMailboxesRequest { account_id: ctx.account.id, with_status: true })
        .await
        .unwrap()
        .into_inner();
    let i = list.mailboxes.iter().find(|m| m.name == "INBOX").unwrap();
    assert_eq!((i.messages, i.unseen, i.recent, i.first_unseen_uid), (3, 2, 3, 2));
    let size: usize = (1..=3).map(|n| message(n).len()).sum();
    assert_eq!(i.size, size as u64);
    assert_eq!(i.keywords, vec!["$Important", "\\Seen"]);

    // SELECT claims the \Recent messages: the first selector sees them, the
    // next one does not (RFC 3501 §2.3.2).
    let account_id = ctx.account.id;
    let sel = |select| pb::GetMailboxRequest { account_id, name: "inbox".into(), select };
    let first = ctx.mailboxes.get_mailbox(sel(true)).await.unwrap().into_inner();
    assert_eq!(first.recent_uids, vec![1, 2, 3]);
    assert_eq!(first.recent, 3);
    let second = ctx.mailboxes.get_mailbox(sel(true)).await.unwrap().into_inner();
    assert!(second.recent_uids.is_empty());
    assert_eq!(second.recent, 0);
    ctx.append("INBOX", &message(4), &[]).await;
    // EXAMINE (select = false) reports but does not claim.
    let examine = ctx.mailboxes.get_mailbox(sel(false)).await.unwrap().into_inner();
    assert_eq!((examine.recent, examine.recent_uids.len()), (1, 0));
    let third = ctx.mailboxes.get_mailbox(sel(true)).await.unwrap().into_inner();
    assert_eq!(third.recent_uids, vec![4]);
    assert_eq!(third.uid_next, 5);
    assert_eq!(third.messages, 4);

    let e = ctx
        .mailboxes
        .get_mailbox(pb::GetMailboxRequest { account_id: ctx.account.id, name: "Nope".into(), select: false })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn create_makes_parents_and_refuses_duplicates() {
    let mut ctx = setup().await;
    let id = ctx.account.id;
    let create = |name: &str, special: &[&str]| pb::CreateMailboxRequest {
        account_id: id,
        name: name.into(),
        special_use: special.iter().map(|s| s.to_string()).collect(),
    };
    let c = ctx.mailboxes.create_mailbox(create("Projects/2026/Q1", &[])).await.unwrap().into_inner();
    assert_eq!(c.name, "Projects/2026/Q1");
    assert_eq!(c.uid_next, 1);
    assert!(!c.subscribed);
    let parent = ctx.mailbox("Projects/2026").await;
    assert!(parent.has_children);
    let e = ctx.mailboxes.create_mailbox(create("Projects/2026/Q1", &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = ctx.mailboxes.create_mailbox(create("inbox", &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = ctx.mailboxes.create_mailbox(create("a//b", &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = ctx.mailboxes.create_mailbox(create("Stuff", &["\\Bogus"])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let all = ctx.mailboxes.create_mailbox(create("All Mail", &["\\all"])).await.unwrap().into_inner();
    assert_eq!(all.special_use, vec!["\\All"]);
    let e = ctx
        .mailboxes
        .create_mailbox(ctx.env.as_account(
            9_999_999,
            pb::CreateMailboxRequest { account_id: 9_999_999, name: "X".into(), special_use: vec![] },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // A deleted and recreated mailbox gets a new UIDVALIDITY (RFC 3501 §2.3.1.1).
    let before = ctx.mailbox("All Mail").await.uid_validity;
    ctx.mailboxes.delete_mailbox(pb::DeleteMailboxRequest { account_id: id, name: "All Mail".into() }).await.unwrap();
    let again = ctx.mailboxes.create_mailbox(create("All Mail", &[])).await.unwrap().into_inner();
    assert_ne!(again.uid_validity, before);
}

#[tokio::test]
async fn rename_moves_children_and_keeps_uidvalidity() {
    let mut ctx = setup().await;
    let id = ctx.account.id;
    for name in ["Work", "Work/Reports", "Work/Reports/2026", "Workshop"] {
        ctx.mailboxes
            .create_mailbox(pb::CreateMailboxRequest { account_id: id, name: name.into(), special_use: vec![] })
            .await
            .unwrap();
    }
    ctx.mailboxes
        .set_subscribed(pb::SetSubscribedRequest { account_id: id, name: "Work/Reports".into(), subscribed: true })
        .await
        .unwrap();
    let a = ctx.append("Work/Reports", &message(1), &[]).await;
    let before = ctx.mailbox("Work/Reports").await;
    let rename = |from: &str, to: &str| pb::RenameMailboxRequest { account_id: id, from: from.into(), to: to.into() };
    let r = ctx.mailboxes.rename_mailbox(rename("Work", "Archive/Old Work")).await.unwrap().into_inner();
    assert_eq!(r.name, "Archive/Old Work");
    let moved = ctx.mailbox("Archive/Old Work/Reports").await;
    assert_eq!(moved.id, before.id);
    assert_eq!(moved.uid_validity, before.uid_validity);
    assert!(moved.subscribed, "subscriptions follow the rename");
    ctx.mailbox("Archive/Old Work/Reports/2026").await;
    ctx.mailbox("Workshop").await; // a sibling with a common prefix is untouched
    let (data, _) = ctx.fetch(moved.id, a.uid, 0, None).await;
    assert_eq!(data, message(1));
    let e =
        ctx.mailboxes.get_mailbox(pb::GetMailboxRequest { account_id: id, name: "Work".into(), select: false }).await;
    assert_eq!(e.unwrap_err().code(), Code::NotFound);

    let e = ctx.mailboxes.rename_mailbox(rename("Nope", "Other")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = ctx.mailboxes.rename_mailbox(rename("Workshop", "Sent")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = ctx.mailboxes.rename_mailbox(rename("Workshop", "Workshop/Inner")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn renaming_inbox_moves_its_messages_and_leaves_it_empty() {
    let mut ctx = setup().await;
    let id = ctx.account.id;
    ctx.append("INBOX", &message(1), &["\\Seen"]).await;
    ctx.append("INBOX", &message(2), &[]).await;
    let inbox = ctx.mailbox("INBOX").await;
    let r = ctx
        .mailboxes
        .rename_mailbox(pb::RenameMailboxRequest { account_id: id, from: "INBOX".into(), to: "Old Mail".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.messages, 2);
    assert_ne!(r.uid_validity, inbox.uid_validity);
    let metas = ctx.list(r.id, vec![], 0).await;
    assert_eq!(metas.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(metas[0].flags, vec!["\\Seen"]);
    let (data, _) = ctx.fetch(r.id, 2, 0, None).await;
    assert_eq!(data, message(2));
    let after = ctx.mailbox("INBOX").await;
    assert_eq!(after.messages, 0);
    assert_eq!(after.uid_validity, inbox.uid_validity);
    assert_eq!(after.uid_next, 3, "INBOX never reuses UIDs");
    assert_eq!(ctx.quota(id).await.message_count, 2);
}

#[tokio::test]
async fn delete_rules_and_quota() {
    let mut ctx = setup().await;
    let id = ctx.account.id;
    let del = |name: &str| pb::DeleteMailboxRequest { account_id: id, name: name.into() };
    let e = ctx.mailboxes.delete_mailbox(del("inbox")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = ctx.mailboxes.delete_mailbox(del("Nope")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    ctx.mailboxes
        .create_mailbox(pb::CreateMailboxRequest { account_id: id, name: "Lists/rust".into(), special_use: vec![] })
        .await
        .unwrap();
    let e = ctx.mailboxes.delete_mailbox(del("Lists")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("children"), "{e}");

    ctx.append("INBOX", &message(1), &[]).await;
    ctx.append("Lists/rust", &message(2), &[]).await;
    ctx.append("Lists/rust", &message(3), &[]).await;
    ctx.mailboxes.delete_mailbox(del("Lists/rust")).await.unwrap();
    ctx.mailboxes.delete_mailbox(del("Lists")).await.unwrap();
    let q = ctx.quota(id).await;
    assert_eq!(q.message_count, 1);
    assert_eq!(q.used_bytes, message(1).len() as u64);
    assert_eq!(q.limit_bytes, 0);
}

#[tokio::test]
async fn subscriptions_may_name_missing_mailboxes() {
    let mut ctx = setup().await;
    let id = ctx.account.id;
    let sub = |name: &str, subscribed| pb::SetSubscribedRequest { account_id: id, name: name.into(), subscribed };
    ctx.mailboxes.set_subscribed(sub("Not/There", true)).await.unwrap();
    ctx.mailboxes.set_subscribed(sub("Not/There", true)).await.unwrap();
    ctx.mailboxes.set_subscribed(sub("Junk", false)).await.unwrap();
    let list = ctx
        .mailboxes
        .list_mailboxes(pb::ListMailboxesRequest { account_id: id, with_status: false })
        .await
        .unwrap()
        .into_inner();
    assert!(list.subscriptions.contains(&"Not/There".to_string()));
    assert!(!list.subscriptions.contains(&"Junk".to_string()));
    assert!(!list.mailboxes.iter().find(|m| m.name == "Junk").unwrap().subscribed);
    let e = ctx.mailboxes.set_subscribed(sub("bad*name", true)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn quota_is_reported() {
    let mut ctx = setup().await;
    let account = ctx.account.clone();
    ctx.set_quota(&account, 1_000_000).await;
    ctx.append("INBOX", &message(1), &[]).await;
    let q = ctx.quota(account.id).await;
    assert_eq!((q.limit_bytes, q.used_bytes, q.message_count), (1_000_000, message(1).len() as u64, 1));
    let request = ctx.env.as_account(9_999_999, pb::GetQuotaRequest { account_id: 9_999_999 });
    let e = ctx.mailboxes.get_quota(request).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}
