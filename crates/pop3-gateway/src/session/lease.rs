//! The maildrop lease (RFC 1939 §8: one session per maildrop; storage's
//! `Locks`). Renewed from a task of its own so that a long RETR to a slow
//! client cannot let it lapse; renewal and release are serialised, so a
//! renewal in flight can never take the lock back after QUIT released it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Mutex;

use crate::store::{Account, MailStore};

/// A held lease; clones share it.
#[derive(Clone, Debug)]
pub struct Lease {
    pub account: Arc<Account>,
    holder: Arc<str>,
    ttl_secs: u32,
    /// True once released: renewals stop.
    released: Arc<Mutex<bool>>,
    /// Another session took the maildrop after our lease lapsed.
    lost: Arc<AtomicBool>,
}

/// What a renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Held,
    /// Another session holds the maildrop now.
    Lost,
    /// The session released it; stop renewing.
    Released,
}

impl Lease {
    pub(super) fn new(account: Arc<Account>, holder: &str, ttl_secs: u32) -> Lease {
        Lease {
            account,
            holder: holder.into(),
            ttl_secs,
            released: Arc::new(Mutex::new(false)),
            lost: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Extend the lease by its TTL.
    pub async fn renew<S: MailStore>(&self, store: &S) -> Renewal {
        let released = self.released.lock().await;
        if *released {
            return Renewal::Released;
        }
        match store.renew(&self.account, &self.holder, self.ttl_secs).await {
            Ok(true) => Renewal::Held,
            Ok(false) => {
                self.lost.store(true, Ordering::SeqCst);
                Renewal::Lost
            }
            Err(e) => {
                // Still ours until it runs out; the next tick tries again.
                tracing::warn!(error = %e, "renewing the maildrop lease failed");
                Renewal::Held
            }
        }
    }

    /// Give the maildrop back. Failure is harmless: the lease expires.
    pub async fn release<S: MailStore>(&self, store: &S) {
        let mut released = self.released.lock().await;
        if *released {
            return;
        }
        *released = true;
        if let Err(e) = store.unlock(&self.account, &self.holder).await {
            tracing::warn!(error = %e, "releasing the maildrop lease failed; it will expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fake::FakeStore;

    #[tokio::test]
    async fn renew_release_and_loss() {
        let store = FakeStore::alice(1);
        let alice = store.authenticate("alice", "pw", std::net::Ipv4Addr::LOCALHOST.into()).await.unwrap();
        assert!(store.lock(&alice, "me", 60).await.unwrap());
        let alice = Arc::new(alice);
        let lease = Lease::new(alice.clone(), "me", 60);
        assert_eq!(lease.renew(&store).await, Renewal::Held);
        lease.release(&store).await;
        assert!(store.locks.lock().unwrap().is_empty());
        // After release a renewal must not take the lock again.
        assert_eq!(lease.renew(&store).await, Renewal::Released);
        assert!(store.locks.lock().unwrap().is_empty());

        let lease = Lease::new(alice, "me", 60);
        store.locks.lock().unwrap().insert(1, "other".into());
        assert_eq!(lease.renew(&store).await, Renewal::Lost);
        assert!(lease.is_lost());
    }
}
