//! [`MailStore`] over the storage service's gRPC API
//! (proto/mailfleet/storage/v1/storage.proto).

use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use mailfleet_proto::storage::v1 as pb;
use pb::directory_client::DirectoryClient;
use pb::locks_client::LocksClient;
use pb::mailboxes_client::MailboxesClient;
use pb::messages_client::MessagesClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use bytes::Bytes;

use super::{Account, ByteStream, MailStore, MessageInfo, SessionToken, Snapshot, StoreError};

/// The lock name in `Locks` for POP3 maildrops.
const LOCK_NAME: &str = "pop3";

#[derive(Clone)]
pub struct GrpcStore {
    channel: Channel,
}

impl GrpcStore {
    /// Connects lazily, so the gateway starts (and answers `-ERR [SYS/TEMP]`)
    /// while storage is still down.
    pub fn new(
        url: &str,
        identity: &mailfleet_runtime::grpc::FleetIdentity,
    ) -> Result<GrpcStore, mailfleet_runtime::grpc::GrpcError> {
        let channel = mailfleet_runtime::grpc::storage_channel(url, identity, None)?;
        Ok(GrpcStore { channel })
    }
}

/// One place where gRPC codes become client-visible classes (storage.proto header).
fn map_status(status: Status) -> StoreError {
    match status.code() {
        Code::Unauthenticated => StoreError::BadCredentials,
        Code::PermissionDenied => StoreError::Disabled,
        Code::NotFound | Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists | Code::OutOfRange => {
            StoreError::Permanent(status.message().to_string())
        }
        // Unavailable, DeadlineExceeded, Aborted, ResourceExhausted, Internal,
        // Unknown, Unimplemented (an older storage): all worth a retry.
        _ => StoreError::Unavailable(format!("{:?}: {}", status.code(), status.message())),
    }
}

/// Unary calls that take longer than this fail as temporary errors instead
/// of hanging the session (sent as `grpc-timeout`).
const RPC_TIMEOUT: Duration = Duration::from_secs(30);

/// A request carrying the current trace context and the call deadline.
fn req<T>(msg: T) -> Request<T> {
    let mut r = stream_req(msg);
    r.set_timeout(RPC_TIMEOUT);
    r
}

/// A request for a streaming call: no overall deadline, since a large
/// message to a slow client may legitimately take long.
fn stream_req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    mailfleet_runtime::telemetry::inject_grpc(r.metadata_mut());
    r
}

/// For Authenticate: RESOURCE_EXHAUSTED is the auth throttle's refusal.
fn auth_status(status: Status) -> StoreError {
    match status.code() {
        Code::ResourceExhausted => StoreError::Throttled,
        _ => map_status(status),
    }
}

fn lock_request(account_id: i64, holder: &str, ttl_seconds: u32) -> pb::LockRequest {
    pb::LockRequest { account_id, name: LOCK_NAME.into(), holder: holder.into(), ttl_seconds }
}

impl GrpcStore {
    /// The account of a login, its token renewed for as long as the session
    /// keeps the account.
    fn logged_in(&self, grant: pb::SessionToken) -> Result<Account, StoreError> {
        let session = SessionToken::renewed(&grant, DirectoryClient::new(self.channel.clone()))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let a = grant.account.unwrap_or_default();
        Ok(Account { id: a.id, address: a.address, session })
    }
}

fn uid_range(start: u32, end: u32) -> pb::UidRange {
    pb::UidRange { start, end }
}

impl MailStore for GrpcStore {
    async fn authenticate(&self, user: &str, password: &str, client: IpAddr) -> Result<Account, StoreError> {
        let request =
            pb::AuthenticateRequest { username: user.into(), password: password.into(), client_ip: client.to_string() };
        let r = DirectoryClient::new(self.channel.clone()).authenticate(req(request)).await.map_err(auth_status)?;
        self.logged_in(r.into_inner())
    }

    async fn authenticate_apop(
        &self,
        user: &str,
        timestamp: &str,
        digest: &str,
        client: IpAddr,
    ) -> Result<Account, StoreError> {
        let r = DirectoryClient::new(self.channel.clone())
            .authenticate_apop(req(pb::AuthenticateApopRequest {
                username: user.into(),
                timestamp: timestamp.into(),
                digest: digest.to_ascii_lowercase(),
                client_ip: client.to_string(),
            }))
            .await
            .map_err(auth_status)?;
        self.logged_in(r.into_inner())
    }

    async fn lock(&self, account: &Account, holder: &str, ttl: u32) -> Result<bool, StoreError> {
        let r = LocksClient::new(self.channel.clone())
            .acquire(account.session.attach(req(lock_request(account.id, holder, ttl))))
            .await
            .map_err(map_status)?;
        Ok(r.into_inner().held)
    }

    async fn renew(&self, account: &Account, holder: &str, ttl: u32) -> Result<bool, StoreError> {
        let r = LocksClient::new(self.channel.clone())
            .renew(account.session.attach(req(lock_request(account.id, holder, ttl))))
            .await
            .map_err(map_status)?;
        Ok(r.into_inner().held)
    }

    async fn unlock(&self, account: &Account, holder: &str) -> Result<(), StoreError> {
        LocksClient::new(self.channel.clone())
            .release(account.session.attach(req(lock_request(account.id, holder, 1))))
            .await
            .map_err(map_status)?;
        Ok(())
    }

    async fn snapshot(&self, account: &Account) -> Result<Snapshot, StoreError> {
        let mailbox = MailboxesClient::new(self.channel.clone())
            .get_mailbox(account.session.attach(req(pb::GetMailboxRequest {
                account_id: account.id,
                name: "INBOX".into(),
                select: false,
            })))
            .await
            .map_err(map_status)?
            .into_inner();
        let mut stream = MessagesClient::new(self.channel.clone())
            .list_messages(account.session.attach(stream_req(pb::ListMessagesRequest {
                account_id: account.id,
                mailbox_id: mailbox.id,
                uids: vec![uid_range(1, u32::MAX)],
                ..Default::default()
            })))
            .await
            .map_err(map_status)?
            .into_inner();
        let mut messages = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(map_status)?;
            messages.push(MessageInfo {
                uid: meta.uid,
                size: meta.size,
                header_size: meta.header_size,
                seen: meta.flags.iter().any(|f| f.eq_ignore_ascii_case("\\Seen")),
            });
        }
        // The contract says ascending; the numbering depends on it.
        messages.sort_by_key(|m| m.uid);
        Ok(Snapshot { mailbox_id: mailbox.id, uid_validity: mailbox.uid_validity, messages })
    }

    async fn fetch(
        &self,
        account: &Account,
        mailbox_id: i64,
        uid: u32,
        length: Option<u64>,
    ) -> Result<ByteStream, StoreError> {
        let stream = MessagesClient::new(self.channel.clone())
            .fetch(account.session.attach(stream_req(pb::FetchRequest {
                account_id: account.id,
                mailbox_id,
                uid,
                offset: 0,
                length,
            })))
            .await
            .map_err(map_status)?
            .into_inner();
        Ok(Box::pin(stream.map(|chunk| chunk.map(|c| c.data).map_err(map_status))))
    }

    fn fetch_many(
        &self,
        account: &Account,
        mailbox_id: i64,
        uids: Vec<u32>,
    ) -> impl Future<Output = Result<Vec<Option<Bytes>>, StoreError>> + Send + 'static {
        let ranges = uids.iter().map(|uid| pb::ByteRange { uid: *uid, ..Default::default() }).collect();
        // Built now, in the caller's span, so the trace context goes along
        // even when the future runs as a task of its own.
        let request =
            account.session.attach(req(pb::FetchRangesRequest { account_id: account.id, mailbox_id, ranges }));
        let mut client = MessagesClient::new(self.channel.clone());
        async move {
            let mut stream = client.fetch_ranges(request).await.map_err(map_status)?.into_inner();
            // Ranges come in request order, each in one or more chunks.
            let mut out: Vec<Option<Bytes>> = Vec::with_capacity(uids.len());
            let mut current = Vec::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(map_status)?;
                if chunk.index as usize != out.len() {
                    return Err(StoreError::Unavailable(format!("range {} answered out of order", chunk.index)));
                }
                if chunk.missing {
                    out.push(None);
                    continue;
                }
                if chunk.last && current.is_empty() {
                    // A message in one chunk, as most are: no copy.
                    out.push(Some(chunk.data));
                    continue;
                }
                current.extend_from_slice(&chunk.data);
                if chunk.last {
                    out.push(Some(Bytes::from(std::mem::take(&mut current))));
                }
            }
            if out.len() != uids.len() {
                return Err(StoreError::Unavailable("read-ahead answer ended early".into()));
            }
            Ok(out)
        }
    }

    async fn mark_seen(&self, account: &Account, mailbox_id: i64, uids: &[u32]) -> Result<(), StoreError> {
        MessagesClient::new(self.channel.clone())
            .store_flags(account.session.attach(req(pb::StoreFlagsRequest {
                account_id: account.id,
                mailbox_id,
                uids: uids.iter().map(|u| uid_range(*u, *u)).collect(),
                operation: pb::store_flags_request::Operation::Add as i32,
                flags: vec!["\\Seen".into()],
                unchanged_since: None,
            })))
            .await
            .map_err(map_status)?;
        Ok(())
    }

    async fn expunge(&self, account: &Account, mailbox_id: i64, uids: &[u32]) -> Result<(), StoreError> {
        MessagesClient::new(self.channel.clone())
            .expunge(account.session.attach(req(pb::ExpungeRequest {
                account_id: account.id,
                mailbox_id,
                uids: uids.iter().map(|&u| uid_range(u, u)).collect(),
                ignore_deleted_flag: true,
            })))
            .await
            .map_err(map_status)?;
        Ok(())
    }
}
