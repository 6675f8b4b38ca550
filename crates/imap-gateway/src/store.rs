//! What the session needs from storage, as a small trait: the gRPC client
//! implements it for production, an in-memory fake for protocol tests.

pub mod fake;
pub mod grpc;

use std::future::Future;

use mailfleet_proto::storage::v1 as pb;
pub use mailfleet_runtime::session::SessionToken;

/// A storage failure, sorted by what the client should be told
/// (storage.proto's error conventions → IMAP response codes, RFC 5530).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("no such mailbox or message: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("over quota: {0}")]
    OverQuota(String),
    #[error("not allowed: {0}")]
    NotAllowed(String),
    #[error("authentication failed")]
    BadCredentials,
    #[error("account disabled")]
    Disabled,
    /// PERMISSION_DENIED after login: storage no longer accepts the
    /// session's token (it expired unrenewed, or the account was disabled).
    #[error("session ended: {0}")]
    SessionEnded(String),
    /// The auth throttle refused the login unchecked (RESOURCE_EXHAUSTED
    /// from Authenticate): the address or account failed too often lately.
    #[error("too many failed logins")]
    Throttled,
    /// Storage (or Postgres behind it) is down: a temporary failure.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl From<tonic::Status> for StoreError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        let msg = s.message().to_string();
        match s.code() {
            Code::NotFound => StoreError::NotFound(msg),
            Code::AlreadyExists => StoreError::AlreadyExists(msg),
            Code::InvalidArgument | Code::OutOfRange => StoreError::Invalid(msg),
            Code::ResourceExhausted => StoreError::OverQuota(msg),
            Code::FailedPrecondition | Code::Aborted => StoreError::NotAllowed(msg),
            Code::Unauthenticated => StoreError::BadCredentials,
            Code::PermissionDenied => StoreError::SessionEnded(msg),
            _ => StoreError::Unavailable(format!("{:?}: {msg}", s.code())),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The chunks of a `fetch_ranges` answer, in request order.
pub type RangeStream = futures::stream::BoxStream<'static, StoreResult<pb::RangeChunk>>;

/// An authenticated account as the session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: i64,
    pub address: String,
}

/// Storage operations used by IMAP, one per storage RPC.
pub trait MailStore: Send + Sync + 'static {
    /// A password login from `client` (storage counts failures per address):
    /// the account and the session token storage scopes its calls with.
    fn authenticate(
        &self,
        username: &str,
        password: &str,
        client: std::net::IpAddr,
    ) -> impl Future<Output = StoreResult<(Account, SessionToken)>> + Send;
    /// The store a logged-in session uses from then on: every call carries
    /// `session` (storage serves an account only to its own session).
    fn for_session(store: &std::sync::Arc<Self>, session: SessionToken) -> std::sync::Arc<Self>;
    fn list_mailboxes(
        &self,
        account: i64,
        with_status: bool,
    ) -> impl Future<Output = StoreResult<pb::ListMailboxesResponse>> + Send;
    fn get_mailbox(
        &self,
        account: i64,
        name: &str,
        select: bool,
    ) -> impl Future<Output = StoreResult<pb::MailboxInfo>> + Send;
    /// `special_use`: RFC 6154 attributes such as "\\Sent" (CREATE … USE).
    fn create_mailbox(
        &self,
        account: i64,
        name: &str,
        special_use: &[String],
    ) -> impl Future<Output = StoreResult<pb::MailboxInfo>> + Send;
    fn rename_mailbox(
        &self,
        account: i64,
        from: &str,
        to: &str,
    ) -> impl Future<Output = StoreResult<pb::MailboxInfo>> + Send;
    fn delete_mailbox(&self, account: i64, name: &str) -> impl Future<Output = StoreResult<()>> + Send;
    fn set_subscribed(
        &self,
        account: i64,
        name: &str,
        subscribed: bool,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    fn append(
        &self,
        header: pb::AppendHeader,
        message: Vec<u8>,
    ) -> impl Future<Output = StoreResult<pb::AppendResponse>> + Send;
    fn list_uids(&self, account: i64, mailbox: i64) -> impl Future<Output = StoreResult<pb::ListUidsResponse>> + Send;
    fn list_messages(
        &self,
        req: pb::ListMessagesRequest,
    ) -> impl Future<Output = StoreResult<Vec<pb::MessageMeta>>> + Send;
    /// Raw bytes `offset..offset+length` (to the end when `length` is None).
    fn fetch(&self, req: pb::FetchRequest) -> impl Future<Output = StoreResult<Vec<u8>>> + Send;
    /// Byte ranges of many messages in one call, answered in order.
    fn fetch_ranges(&self, req: pb::FetchRangesRequest) -> impl Future<Output = StoreResult<RangeStream>> + Send;
    fn store_flags(
        &self,
        req: pb::StoreFlagsRequest,
    ) -> impl Future<Output = StoreResult<pb::StoreFlagsResponse>> + Send;
    fn copy(&self, req: pb::CopyRequest) -> impl Future<Output = StoreResult<pb::CopyResponse>> + Send;
    fn expunge(&self, req: pb::ExpungeRequest) -> impl Future<Output = StoreResult<pb::ExpungeResponse>> + Send;
    fn search(&self, req: pb::SearchRequest) -> impl Future<Output = StoreResult<pb::SearchResponse>> + Send;
    /// SORT (RFC 5256): the matching UIDs in sort order, ordered by storage.
    fn sort(&self, req: pb::SortRequest) -> impl Future<Output = StoreResult<pb::SortResponse>> + Send;
    /// THREAD (RFC 5256): the matching messages as threads, built by storage.
    fn thread(&self, req: pb::ThreadRequest) -> impl Future<Output = StoreResult<pb::ThreadResponse>> + Send;
    fn get_quota(&self, account: i64) -> impl Future<Output = StoreResult<pb::QuotaInfo>> + Send;
    fn changes(&self, req: pb::ChangesRequest) -> impl Future<Output = StoreResult<pb::ChangesResponse>> + Send;
}

/// Compress ascending UIDs into ranges for the wire.
pub fn uid_ranges(uids: &[u32]) -> Vec<pb::UidRange> {
    let mut out: Vec<pb::UidRange> = Vec::new();
    for &uid in uids {
        match out.last_mut() {
            Some(r) if r.end.checked_add(1) == Some(uid) => r.end = uid,
            _ => out.push(pb::UidRange { start: uid, end: uid }),
        }
    }
    out
}

/// Does `uid` fall in any of `ranges`?
pub fn in_ranges(uid: u32, ranges: &[pb::UidRange]) -> bool {
    ranges.iter().any(|r| r.start.min(r.end) <= uid && uid <= r.start.max(r.end))
}
