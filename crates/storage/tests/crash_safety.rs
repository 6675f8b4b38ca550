//! Crash safety of the blob/metadata split: a blob without metadata is
//! harmless and swept; metadata never points at a missing blob.

mod common;

use common::*;
use mailfleet_proto::storage::v1 as pb;
use pb::delivery_result::Status as D;
use tonic::Code;

async fn sweep(ctx: &Ctx) -> pb::SweepBlobsResponse {
    ctx.env.admin().await.sweep_blobs(pb::SweepBlobsRequest { min_age_seconds: 0 }).await.unwrap().into_inner()
}

/// Every message row's blob is present in the blob store.
async fn every_message_has_its_blob(ctx: &Ctx) {
    let store = ctx.env.store();
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT blob_id FROM messages").fetch_all(&store.pool).await.unwrap();
    for id in ids {
        assert!(store.blobs.exists(&id).await.unwrap(), "message points at missing blob {id}");
    }
}

#[tokio::test]
async fn orphan_blob_is_harmless_and_swept() {
    let mut ctx = setup().await;
    let kept = ctx.append("INBOX", &message(1), &[]).await;
    // A crash after the blob write but before any metadata commit leaves a
    // file nobody refers to.
    let mut w = ctx.env.store().blobs.writer().await.unwrap();
    w.write(b"Subject: orphan\r\n\r\nnever committed\r\n").await.unwrap();
    let (orphan, _) = w.finish().await.unwrap();
    assert!(ctx.env.store().blobs.exists(&orphan).await.unwrap());
    // It is invisible to the mailbox.
    let inbox = ctx.mailbox("INBOX").await;
    assert_eq!(inbox.messages, 1);

    let r = sweep(&ctx).await;
    assert_eq!((r.removed, r.kept), (1, 1));
    assert!(!ctx.env.store().blobs.exists(&orphan).await.unwrap());
    let (data, _) = ctx.fetch(kept.mailbox_id, kept.uid, 0, None).await;
    assert_eq!(data, message(1));
    every_message_has_its_blob(&ctx).await;
}

#[tokio::test]
async fn swept_queued_blob_cannot_be_delivered() {
    let mut ctx = setup().await;
    let blob = ctx.put_blob(&message(5)).await;
    // Unreferenced (never delivered) and old enough: swept, row and file.
    assert_eq!(sweep(&ctx).await.removed, 1);
    let e = ctx
        .queue
        .deliver(pb::DeliverRequest {
            blob_id: blob.blob_id,
            targets: vec![pb::DeliveryTarget {
                account_id: ctx.account.id,
                mailbox: String::new(),
                delivery_key: "late:alice".into(),
                header_prefix: vec![],
                flags: vec![],
            }],
            internal_date: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let inbox = ctx.mailbox("INBOX").await;
    assert_eq!(inbox.messages, 0);
    every_message_has_its_blob(&ctx).await;
}

#[tokio::test]
async fn shared_blob_survives_until_its_last_message_goes() {
    let mut ctx = setup().await;
    let a = ctx.append("INBOX", &message(1), &[]).await;
    ctx.messages
        .copy(pb::CopyRequest {
            account_id: ctx.account.id,
            mailbox_id: a.mailbox_id,
            uids: vec![range(1, 1)],
            destination: "Archive".into(),
            r#move: false,
        })
        .await
        .unwrap();
    ctx.messages
        .expunge(pb::ExpungeRequest {
            account_id: ctx.account.id,
            mailbox_id: a.mailbox_id,
            uids: vec![range(1, 1)],
            ignore_deleted_flag: true,
        })
        .await
        .unwrap();
    assert_eq!(sweep(&ctx).await.removed, 0, "the Archive copy still refers to the blob");
    let archive = ctx.mailbox("Archive").await;
    let (data, _) = ctx.fetch(archive.id, 1, 0, None).await;
    assert_eq!(data, message(1));
    ctx.mailboxes
        .delete_mailbox(pb::DeleteMailboxRequest { account_id: ctx.account.id, name: "Archive".into() })
        .await
        .unwrap();
    assert_eq!(sweep(&ctx).await.removed, 1);
    every_message_has_its_blob(&ctx).await;
}

#[tokio::test]
async fn committed_mail_survives_a_restart() {
    let mut ctx = setup().await;
    let blob = ctx.put_blob(&message(1)).await;
    let target = pb::DeliveryTarget {
        account_id: ctx.account.id,
        mailbox: "INBOX".into(),
        delivery_key: "restart:alice".into(),
        header_prefix: b"Delivered-To: alice@example.com\r\n".to_vec(),
        flags: vec![],
    };
    let req = pb::DeliverRequest { blob_id: blob.blob_id, targets: vec![target], internal_date: None };
    let r = ctx.queue.deliver(req.clone()).await.unwrap().into_inner();
    assert_eq!(r.results[0].status(), D::Delivered);
    ctx.env.stop_storage().await;
    ctx.env.start_storage().await;
    let channel = ctx.env.session_channel(ctx.account.id).await;
    ctx.messages = pb::messages_client::MessagesClient::new(channel.clone()).max_decoding_message_size(MAX);
    ctx.mailboxes = pb::mailboxes_client::MailboxesClient::new(channel);
    ctx.queue = pb::messages_client::MessagesClient::new(ctx.env.channel_as("delivery-queue").await);
    // The queue redelivers after the restart: still one message.
    let again = ctx.queue.deliver(req).await.unwrap().into_inner();
    assert_eq!(again.results[0].status(), D::Duplicate);
    let inbox = ctx.mailbox("INBOX").await;
    assert_eq!(inbox.messages, 1);
    let (data, _) = ctx.fetch(inbox.id, 1, 0, None).await;
    assert!(data.starts_with(b"Delivered-To: alice@example.com\r\n"));
}
