//! Helpers shared by the storage integration tests: a TestEnv with one
//! account, gRPC clients, and small wrappers around the streaming RPCs.
#![allow(dead_code)]

use futures::StreamExt;
use mailfleet_proto::storage::v1 as pb;
use mailfleet_testkit::{Scoped, TestEnv};
use pb::mailboxes_client::MailboxesClient;
use pb::messages_client::MessagesClient;

/// `mailboxes` and `messages` call as imap-gateway and carry a session
/// token for `account` (storage refuses account calls without one); a
/// call made for another account brings its own (`env.as_account`).
/// `queue` calls as delivery-queue: the only identity that may store
/// blobs for delivery, deliver them and read them back.
pub struct Ctx {
    pub env: TestEnv,
    pub account: pb::Account,
    pub mailboxes: MailboxesClient<Scoped>,
    pub messages: MessagesClient<Scoped>,
    pub queue: MessagesClient<tonic::transport::Channel>,
}

pub const MAX: usize = 64 * 1024 * 1024;

pub async fn setup() -> Ctx {
    let env = TestEnv::start().await;
    let account = env.add_account(&format!("alice@{}.test", env.id), "correct horse battery").await;
    let channel = env.session_channel(account.id).await;
    let queue = MessagesClient::new(env.channel_as("delivery-queue").await)
        .max_decoding_message_size(MAX)
        .max_encoding_message_size(MAX);
    Ctx {
        account,
        queue,
        mailboxes: MailboxesClient::new(channel.clone()),
        messages: MessagesClient::new(channel).max_decoding_message_size(MAX).max_encoding_message_size(MAX),
        env,
    }
}

impl Ctx {
    pub async fn add_account(&self, local: &str) -> pb::Account {
        self.env.add_account(&format!("{local}@{}.test", self.env.id), "correct horse battery").await
    }

    pub async fn mailbox(&mut self, name: &str) -> pb::MailboxInfo {
        self.mailbox_of(self.account.id, name).await
    }

    pub async fn mailbox_of(&mut self, account_id: i64, name: &str) -> pb::MailboxInfo {
        self.mailboxes
            .get_mailbox(pb::GetMailboxRequest { account_id, name: name.into(), select: false })
            .await
            .expect("get mailbox")
            .into_inner()
    }

    pub async fn append(&mut self, mailbox: &str, raw: &[u8], flags: &[&str]) -> pb::AppendResponse {
        self.try_append(self.account.id, mailbox, raw, flags).await.expect("append")
    }

    pub async fn try_append(
        &mut self,
        account_id: i64,
        mailbox: &str,
        raw: &[u8],
        flags: &[&str],
    ) -> Result<pb::AppendResponse, tonic::Status> {
        let request =
            self.env.as_account(account_id, tokio_stream::iter(append_parts(account_id, mailbox, raw, flags, None)));
        self.messages.append(request).await.map(|r| r.into_inner())
    }

    pub async fn fetch(&mut self, mailbox_id: i64, uid: u32, offset: u64, length: Option<u64>) -> (Vec<u8>, u64) {
        self.try_fetch(self.account.id, mailbox_id, uid, offset, length).await.expect("fetch")
    }

    pub async fn try_fetch(
        &mut self,
        account_id: i64,
        mailbox_id: i64,
        uid: u32,
        offset: u64,
        length: Option<u64>,
    ) -> Result<(Vec<u8>, u64), tonic::Status> {
        let mut stream = self
            .messages
            .fetch(self.env.as_account(account_id, pb::FetchRequest { account_id, mailbox_id, uid, offset, length }))
            .await?
            .into_inner();
        let mut data = Vec::new();
        let mut total = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if total.is_none() {
                total = Some(chunk.total_size);
            }
            data.extend_from_slice(&chunk.data);
        }
        Ok((data, total.unwrap_or(0)))
    }

    pub async fn list(&mut self, mailbox_id: i64, uids: Vec<pb::UidRange>, changed_since: u64) -> Vec<pb::MessageMeta> {
        self.try_list(self.account.id, mailbox_id, uids, changed_since).await.expect("list")
    }

    pub async fn try_list(
        &mut self,
        account_id: i64,
        mailbox_id: i64,
        uids: Vec<pb::UidRange>,
        changed_since: u64,
    ) -> Result<Vec<pb::MessageMeta>, tonic::Status> {
        let mut stream = self
            .messages
            .list_messages(self.env.as_account(
                account_id,
                pb::ListMessagesRequest {
                    account_id,
                    mailbox_id,
                    uids,
                    with_envelope: true,
                    with_body_structure: true,
                    changed_since,
                },
            ))
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(m) = stream.next().await {
            out.push(m?);
        }
        Ok(out)
    }

    pub async fn uids(&mut self, mailbox_id: i64) -> pb::ListUidsResponse {
        self.messages
            .list_uids(pb::ListUidsRequest { account_id: self.account.id, mailbox_id })
            .await
            .expect("list uids")
            .into_inner()
    }

    pub async fn put_blob(&mut self, raw: &[u8]) -> pb::PutBlobResponse {
        let chunks: Vec<pb::PutBlobRequest> =
            raw.chunks(64 * 1024).map(|c| pb::PutBlobRequest { chunk: c.to_vec() }).collect();
        self.queue.put_blob(tokio_stream::iter(chunks)).await.expect("put blob").into_inner()
    }

    pub async fn quota(&mut self, account_id: i64) -> pb::QuotaInfo {
        let request = self.env.as_account(account_id, pb::GetQuotaRequest { account_id });
        self.mailboxes.get_quota(request).await.expect("quota").into_inner()
    }

    pub async fn set_quota(&self, account: &pb::Account, bytes: u64) {
        self.env
            .admin()
            .await
            .set_quota(pb::SetQuotaRequest { address: account.address.clone(), quota_bytes: bytes })
            .await
            .expect("set quota");
    }

    pub async fn store(
        &mut self,
        mailbox_id: i64,
        uids: Vec<pb::UidRange>,
        op: pb::store_flags_request::Operation,
        flags: &[&str],
        unchanged_since: Option<u64>,
    ) -> Result<pb::StoreFlagsResponse, tonic::Status> {
        self.messages
            .store_flags(pb::StoreFlagsRequest {
                account_id: self.account.id,
                mailbox_id,
                uids,
                operation: op as i32,
                flags: flags.iter().map(|f| f.to_string()).collect(),
                unchanged_since,
            })
            .await
            .map(|r| r.into_inner())
    }
}

/// Append through `client`, whose session is `account_id`'s.
pub async fn append_with(
    client: &mut MessagesClient<Scoped>,
    account_id: i64,
    mailbox: &str,
    raw: &[u8],
    flags: &[&str],
    internal_date: Option<prost_types::Timestamp>,
) -> Result<pb::AppendResponse, tonic::Status> {
    let reqs = append_parts(account_id, mailbox, raw, flags, internal_date);
    client.append(tokio_stream::iter(reqs)).await.map(|r| r.into_inner())
}

/// The header and the chunks of an Append stream.
pub fn append_parts(
    account_id: i64,
    mailbox: &str,
    raw: &[u8],
    flags: &[&str],
    internal_date: Option<prost_types::Timestamp>,
) -> Vec<pb::AppendRequest> {
    let mut reqs = vec![pb::AppendRequest {
        part: Some(pb::append_request::Part::Header(pb::AppendHeader {
            account_id,
            mailbox: mailbox.into(),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            internal_date,
        })),
    }];
    for c in raw.chunks(64 * 1024) {
        reqs.push(pb::AppendRequest { part: Some(pb::append_request::Part::Chunk(c.to_vec())) });
    }
    reqs
}

pub fn range(start: u32, end: u32) -> pb::UidRange {
    pb::UidRange { start, end }
}

pub const STAR: u32 = u32::MAX;

/// A small RFC 5322 message; `n` makes each one distinct.
pub fn message(n: usize) -> Vec<u8> {
    format!(
        "From: Bob <bob@example.org>\r\nTo: alice@example.com\r\nSubject: test {n}\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <{n}@example.org>\r\n\r\nHello number {n}.\r\n"
    )
    .into_bytes()
}

/// Subscribe to the account's event subject; returns the subscriber.
pub async fn events(ctx: &Ctx, account_id: i64) -> async_nats::Subscriber {
    let client = ctx.env.nats().await;
    let sub = client.subscribe(format!("{}.{}", ctx.env.events_prefix, account_id)).await.expect("subscribe");
    client.flush().await.expect("flush");
    sub
}

/// The next event, within a deadline.
pub async fn next_event(sub: &mut async_nats::Subscriber) -> pb::MailEvent {
    use prost::Message;
    let msg = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next())
        .await
        .expect("an event within 10 s")
        .expect("subscription open");
    pb::MailEvent::decode(msg.payload.as_ref()).expect("MailEvent")
}
