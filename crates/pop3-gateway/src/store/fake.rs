//! In-memory [`MailStore`] for the session's transcript tests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};

use super::{Account, ByteStream, MailStore, MessageInfo, SessionToken, Snapshot, StoreError};

pub struct FakeMessage {
    pub uid: u32,
    pub data: Vec<u8>,
    pub seen: bool,
}

#[derive(Default)]
pub struct FakeStore {
    /// user -> (account id, password, APOP secret)
    pub accounts: HashMap<String, (i64, String, Option<String>)>,
    pub messages: Mutex<Vec<FakeMessage>>,
    /// account id -> lock holder
    pub locks: Mutex<HashMap<i64, String>>,
    /// Simulate an outage: every call fails with UNAVAILABLE.
    pub down: AtomicBool,
    /// Fail only expunge (storage dies between DELE and QUIT).
    pub expunge_down: AtomicBool,
    /// Fetch streams one chunk, then never ends (proves RETR streams).
    pub stall_fetch: AtomicBool,
    /// The `length` of every fetch, in order.
    pub fetch_lengths: Mutex<Vec<Option<u64>>>,
    /// The UIDs of every read-ahead call, in order.
    pub fetch_many_calls: Mutex<Vec<Vec<u32>>>,
}

pub const UID_VALIDITY: u32 = 1700;

impl FakeStore {
    /// alice/pw (APOP secret "tanstaaf") with `n` messages, UIDs 10, 20, ...
    pub fn alice(n: u32) -> FakeStore {
        let mut store = FakeStore::default();
        store.accounts.insert("alice".into(), (1, "pw".into(), Some("tanstaaf".into())));
        store.accounts.insert("bob".into(), (2, "pw".into(), None));
        let msgs = (1..=n).map(|i| FakeMessage { uid: i * 10, data: message(i), seen: false }).collect();
        store.messages = Mutex::new(msgs);
        store
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) { Err(StoreError::Unavailable("fake outage".into())) } else { Ok(()) }
    }

    pub fn uids(&self) -> Vec<u32> {
        self.messages.lock().unwrap().iter().map(|m| m.uid).collect()
    }

    pub fn seen(&self) -> Vec<u32> {
        self.messages.lock().unwrap().iter().filter(|m| m.seen).map(|m| m.uid).collect()
    }
}

/// Message `i`: two header lines, a blank line, three body lines, one dot-led.
pub fn message(i: u32) -> Vec<u8> {
    format!("Subject: msg {i}\r\nFrom: a@b\r\n\r\nline 1\r\n.dot line\r\nline 3\r\n").into_bytes()
}

/// Octets up to and including the first empty line.
fn header_size(data: &[u8]) -> u64 {
    data.windows(4).position(|w| w == b"\r\n\r\n").map_or(data.len(), |i| i + 4) as u64
}

/// A fake session token: nothing checks it in memory.
fn account(id: i64, user: &str) -> Account {
    let session = SessionToken::fixed(&format!("fake.{id}")).unwrap_or_default();
    Account { id, address: user.into(), session }
}

impl MailStore for FakeStore {
    async fn authenticate(&self, user: &str, password: &str, _client: IpAddr) -> Result<Account, StoreError> {
        self.check()?;
        match self.accounts.get(user) {
            Some((id, pw, _)) if pw == password => Ok(account(*id, user)),
            _ => Err(StoreError::BadCredentials),
        }
    }

    async fn authenticate_apop(
        &self,
        user: &str,
        timestamp: &str,
        digest: &str,
        _client: IpAddr,
    ) -> Result<Account, StoreError> {
        self.check()?;
        match self.accounts.get(user) {
            Some((id, _, Some(secret))) if hex::encode(Md5::digest(format!("{timestamp}{secret}"))) == digest => {
                Ok(account(*id, user))
            }
            _ => Err(StoreError::BadCredentials),
        }
    }

    async fn lock(&self, account: &Account, holder: &str, _ttl: u32) -> Result<bool, StoreError> {
        self.check()?;
        let mut locks = self.locks.lock().unwrap();
        match locks.get(&account.id) {
            Some(h) if h != holder => Ok(false),
            _ => {
                locks.insert(account.id, holder.into());
                Ok(true)
            }
        }
    }

    async fn renew(&self, account: &Account, holder: &str, ttl: u32) -> Result<bool, StoreError> {
        self.lock(account, holder, ttl).await
    }

    async fn unlock(&self, account: &Account, holder: &str) -> Result<(), StoreError> {
        self.check()?;
        let mut locks = self.locks.lock().unwrap();
        if locks.get(&account.id).is_some_and(|h| h == holder) {
            locks.remove(&account.id);
        }
        Ok(())
    }

    async fn snapshot(&self, _account: &Account) -> Result<Snapshot, StoreError> {
        self.check()?;
        let messages = self
            .messages
            .lock()
            .unwrap()
            .iter()
            .map(|m| MessageInfo {
                uid: m.uid,
                size: m.data.len() as u64,
                header_size: header_size(&m.data),
                seen: m.seen,
            })
            .collect();
        Ok(Snapshot { mailbox_id: 5, uid_validity: UID_VALIDITY, messages })
    }

    async fn fetch(&self, _a: &Account, _m: i64, uid: u32, length: Option<u64>) -> Result<ByteStream, StoreError> {
        self.check()?;
        self.fetch_lengths.lock().unwrap().push(length);
        let msgs = self.messages.lock().unwrap();
        let msg = msgs.iter().find(|m| m.uid == uid).ok_or(StoreError::Permanent("no such message".into()))?;
        let end = length.map_or(msg.data.len(), |l| (l as usize).min(msg.data.len()));
        // Three-byte chunks exercise the streaming state machines.
        let chunks: Vec<Result<Bytes, StoreError>> =
            msg.data[..end].chunks(3).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        if self.stall_fetch.load(Ordering::SeqCst) {
            let first = chunks.into_iter().take(1);
            return Ok(Box::pin(futures::stream::iter(first).chain(futures::stream::pending())));
        }
        Ok(Box::pin(futures::stream::iter(chunks)))
    }

    fn fetch_many(
        &self,
        _a: &Account,
        _m: i64,
        uids: Vec<u32>,
    ) -> impl Future<Output = Result<Vec<Option<Bytes>>, StoreError>> + Send + 'static {
        // Answered at call time: the fake has nothing to wait for.
        let answer = self.check().map(|()| {
            self.fetch_many_calls.lock().unwrap().push(uids.clone());
            let msgs = self.messages.lock().unwrap();
            uids.iter()
                .map(|uid| msgs.iter().find(|m| m.uid == *uid).map(|m| Bytes::copy_from_slice(&m.data)))
                .collect()
        });
        std::future::ready(answer)
    }

    async fn mark_seen(&self, _a: &Account, _m: i64, uids: &[u32]) -> Result<(), StoreError> {
        self.check()?;
        for m in self.messages.lock().unwrap().iter_mut().filter(|m| uids.contains(&m.uid)) {
            m.seen = true;
        }
        Ok(())
    }

    async fn expunge(&self, _a: &Account, _m: i64, uids: &[u32]) -> Result<(), StoreError> {
        self.check()?;
        if self.expunge_down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("fake outage".into()));
        }
        self.messages.lock().unwrap().retain(|m| !uids.contains(&m.uid));
        Ok(())
    }
}
