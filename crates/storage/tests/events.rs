//! Every kind of committed change publishes a MailEvent on NATS subject
//! `<events_prefix>.<account_id>` (proto/mailfleet/storage/v1/events.proto).

mod common;

use common::*;
use mailfleet_proto::storage::v1 as pb;
use pb::mail_event::Kind;
use pb::store_flags_request::Operation::Add;

#[tokio::test]
async fn each_kind_of_change_publishes_an_event() {
    let mut ctx = setup().await;
    let id = ctx.account.id;
    let mut sub = events(&ctx, id).await;
    let inbox = ctx.mailbox("INBOX").await;

    let a = ctx.append("INBOX", &message(1), &[]).await;
    let ev = next_event(&mut sub).await;
    assert_eq!(ev.account_id, id);
    assert_eq!(ev.modseq, a.modseq);
    assert_eq!(ev.kind, Some(Kind::Added(pb::MessagesAdded { mailbox_id: inbox.id, uids: vec![1] })));

    let s = ctx.store(inbox.id, vec![range(1, 1)], Add, &["\\Deleted"], None).await.unwrap();
    let ev = next_event(&mut sub).await;
    assert_eq!(ev.modseq, s.highest_modseq);
    match ev.kind {
        Some(Kind::Flags(f)) => {
            assert_eq!(f.mailbox_id, inbox.id);
            assert_eq!(f.changes.len(), 1);
            assert_eq!((f.changes[0].uid, f.changes[0].flags.clone()), (1, vec!["\\Deleted".to_string()]));
        }
        other => panic!("expected flags event, got {other:?}"),
    }

    let x = ctx
        .messages
        .expunge(pb::ExpungeRequest { account_id: id, mailbox_id: inbox.id, uids: vec![], ignore_deleted_flag: false })
        .await
        .unwrap()
        .into_inner();
    let ev = next_event(&mut sub).await;
    assert_eq!(ev.modseq, x.highest_modseq);
    assert_eq!(ev.kind, Some(Kind::Expunged(pb::MessagesExpunged { mailbox_id: inbox.id, uids: vec![1] })));

    let c = ctx
        .mailboxes
        .create_mailbox(pb::CreateMailboxRequest { account_id: id, name: "Lists".into(), special_use: vec![] })
        .await
        .unwrap()
        .into_inner();
    let ev = next_event(&mut sub).await;
    assert_eq!(ev.kind, Some(Kind::MailboxCreated(pb::MailboxCreated { mailbox_id: c.id, name: "Lists".into() })));

    ctx.mailboxes
        .rename_mailbox(pb::RenameMailboxRequest { account_id: id, from: "Lists".into(), to: "Groups".into() })
        .await
        .unwrap();
    let ev = next_event(&mut sub).await;
    assert_eq!(
        ev.kind,
        Some(Kind::MailboxRenamed(pb::MailboxRenamed {
            mailbox_id: c.id,
            old_name: "Lists".into(),
            new_name: "Groups".into()
        }))
    );

    let blob = ctx.put_blob(&message(2)).await;
    ctx.queue
        .deliver(pb::DeliverRequest {
            blob_id: blob.blob_id,
            targets: vec![pb::DeliveryTarget {
                account_id: id,
                mailbox: "Groups".into(),
                delivery_key: "ev-job:1".into(),
                header_prefix: vec![],
                flags: vec![],
            }],
            internal_date: None,
        })
        .await
        .unwrap();
    let ev = next_event(&mut sub).await;
    assert_eq!(ev.kind, Some(Kind::Added(pb::MessagesAdded { mailbox_id: c.id, uids: vec![1] })));

    // MOVE: added in the destination, expunged in the source.
    ctx.messages
        .copy(pb::CopyRequest {
            account_id: id,
            mailbox_id: c.id,
            uids: vec![range(1, 1)],
            destination: "INBOX".into(),
            r#move: true,
        })
        .await
        .unwrap();
    let ev = next_event(&mut sub).await;
    assert_eq!(ev.kind, Some(Kind::Added(pb::MessagesAdded { mailbox_id: inbox.id, uids: vec![2] })));
    let ev = next_event(&mut sub).await;
    assert_eq!(ev.kind, Some(Kind::Expunged(pb::MessagesExpunged { mailbox_id: c.id, uids: vec![1] })));

    ctx.mailboxes.delete_mailbox(pb::DeleteMailboxRequest { account_id: id, name: "Groups".into() }).await.unwrap();
    let ev = next_event(&mut sub).await;
    assert_eq!(ev.kind, Some(Kind::MailboxDeleted(pb::MailboxDeleted { mailbox_id: c.id, name: "Groups".into() })));
}

#[tokio::test]
async fn events_go_to_the_owning_account_only() {
    let mut ctx = setup().await;
    let bob = ctx.add_account("bob").await;
    let mut alice_sub = events(&ctx, ctx.account.id).await;
    let mut bob_sub = events(&ctx, bob.id).await;
    ctx.try_append(bob.id, "INBOX", &message(1), &[]).await.unwrap();
    let ev = next_event(&mut bob_sub).await;
    assert_eq!(ev.account_id, bob.id);
    ctx.append("INBOX", &message(2), &[]).await;
    // Alice's first event is her own append, not Bob's.
    let ev = next_event(&mut alice_sub).await;
    assert_eq!(ev.account_id, ctx.account.id);
}
