//! What the POP3 session needs from storage, as a small trait: the gRPC
//! implementation talks to the storage service; a fake serves unit tests.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use std::net::IpAddr;

pub mod grpc;

#[cfg(test)]
pub mod fake;

pub use grpc::GrpcStore;
pub use mailfleet_runtime::session::SessionToken;

/// Storage failures, sorted by what the client is told.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// UNAUTHENTICATED: wrong user name, password or digest.
    #[error("authentication failed")]
    BadCredentials,
    /// PERMISSION_DENIED: the account is disabled.
    #[error("account disabled")]
    Disabled,
    /// RESOURCE_EXHAUSTED from Authenticate: the client's address (or the
    /// account) failed too often lately; refused unchecked (`-ERR [SYS/TEMP]`).
    #[error("too many failed logins")]
    Throttled,
    /// UNAVAILABLE and friends: try again later (`-ERR [SYS/TEMP]`, RFC 3206).
    #[error("storage temporarily unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a permanent problem (`-ERR [SYS/PERM]`).
    #[error("storage error: {0}")]
    Permanent(String),
}

/// The authenticated account, and the session token storage scopes every
/// call for it with (each store method below that takes it sends it).
#[derive(Debug, Clone)]
pub struct Account {
    pub id: i64,
    pub address: String,
    pub session: SessionToken,
}

/// One message of the maildrop snapshot taken at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    pub uid: u32,
    /// Octets RETR sends (RFC 1939 §5 "exact size" as stored).
    pub size: u64,
    /// Octets of the header including the blank line (0 if unknown).
    pub header_size: u64,
    pub seen: bool,
}

/// INBOX as it is at login (RFC 1939 §4: the maildrop), in UID order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub mailbox_id: i64,
    pub uid_validity: u32,
    pub messages: Vec<MessageInfo>,
}

/// Raw message bytes, in chunks, as storage streams them.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;

/// The storage operations a POP3 session uses.
pub trait MailStore: Send + Sync + 'static {
    /// A password login from `client` (storage counts failures per address).
    fn authenticate(
        &self,
        user: &str,
        password: &str,
        client: IpAddr,
    ) -> impl Future<Output = Result<Account, StoreError>> + Send;
    /// RFC 1939 §7: storage checks MD5(timestamp + secret) == digest.
    fn authenticate_apop(
        &self,
        user: &str,
        timestamp: &str,
        digest: &str,
        client: IpAddr,
    ) -> impl Future<Output = Result<Account, StoreError>> + Send;
    /// Take the maildrop lease; false when another session holds it.
    fn lock(
        &self,
        account: &Account,
        holder: &str,
        ttl_secs: u32,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Extend the lease; false when it lapsed and somebody else took it.
    fn renew(
        &self,
        account: &Account,
        holder: &str,
        ttl_secs: u32,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn unlock(&self, account: &Account, holder: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn snapshot(&self, account: &Account) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;
    /// The raw message from its start, `length` octets at most (all when None).
    fn fetch(
        &self,
        account: &Account,
        mailbox_id: i64,
        uid: u32,
        length: Option<u64>,
    ) -> impl Future<Output = Result<ByteStream, StoreError>> + Send;
    /// Whole messages at once, in order (`None`: gone), for read-ahead.
    /// The future owns what it needs, so read-ahead can run it as a task
    /// of its own while earlier messages are being sent.
    fn fetch_many(
        &self,
        account: &Account,
        mailbox_id: i64,
        uids: Vec<u32>,
    ) -> impl Future<Output = Result<Vec<Option<Bytes>>, StoreError>> + Send + 'static;
    /// Add `\Seen` to these messages (what RETR does to the IMAP view).
    fn mark_seen(
        &self,
        account: &Account,
        mailbox_id: i64,
        uids: &[u32],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Remove these messages for good (the UPDATE state).
    fn expunge(
        &self,
        account: &Account,
        mailbox_id: i64,
        uids: &[u32],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
