//! A short-lived memory of where local recipient addresses led, so that
//! the steady mail to the same mailboxes does not ask the directory at
//! every RCPT (one storage call and one Postgres statement each).
//!
//! Only addresses that resolved to local accounts are kept, for `ttl`:
//! a newly added account, alias or domain is found at once, and a change
//! that sends an address elsewhere (or nowhere) is seen at most `ttl`
//! later. Mail accepted in that window goes where the address led when it
//! was remembered; delivery checks the account again (a deleted or
//! disabled account makes a bounce, as for any mail accepted just before
//! such a change).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::session::LocalAccount;

pub struct RecipientCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, (Instant, Vec<LocalAccount>)>>,
}

impl RecipientCache {
    /// `ttl` zero keeps nothing.
    pub fn new(ttl: Duration, capacity: usize) -> RecipientCache {
        RecipientCache { ttl, capacity, entries: Mutex::new(HashMap::new()) }
    }

    /// The accounts `address` led to, if remembered less than `ttl` ago.
    pub fn get(&self, address: &str) -> Option<Vec<LocalAccount>> {
        self.get_at(address, Instant::now())
    }

    /// Remember that `address` leads to `accounts` (local, resolved now).
    pub fn put(&self, address: &str, accounts: &[LocalAccount]) {
        self.put_at(address, accounts, Instant::now());
    }

    // The clock is a parameter so that the tests can say what time it is
    // instead of racing a short TTL.
    fn get_at(&self, address: &str, now: Instant) -> Option<Vec<LocalAccount>> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (at, accounts) = entries.get(address)?;
        (now.saturating_duration_since(*at) < self.ttl).then(|| accounts.clone())
    }

    fn put_at(&self, address: &str, accounts: &[LocalAccount], now: Instant) {
        if self.ttl.is_zero() || self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(address) {
            // Full: drop what has expired; if that frees nothing, start over
            // (the cache only saves lookups, it never decides anything).
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(address.to_string(), (now, accounts.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Vec<LocalAccount> {
        vec![LocalAccount { id: 7, address: "alice@example.org".into() }]
    }

    #[test]
    fn remembers_for_the_ttl_only() {
        let ttl = Duration::from_secs(10);
        let cache = RecipientCache::new(ttl, 10);
        let t0 = Instant::now();
        assert_eq!(cache.get_at("alice@example.org", t0), None);
        cache.put_at("alice@example.org", &alice(), t0);
        assert_eq!(cache.get_at("alice@example.org", t0), Some(alice()));
        assert_eq!(cache.get_at("alice@example.org", t0 + ttl - Duration::from_millis(1)), Some(alice()));
        assert_eq!(cache.get_at("bob@example.org", t0), None);
        assert_eq!(cache.get_at("alice@example.org", t0 + ttl), None, "expired");
        // Remembered again: the TTL counts from then.
        cache.put_at("alice@example.org", &alice(), t0 + ttl);
        assert_eq!(cache.get_at("alice@example.org", t0 + ttl * 2 - Duration::from_millis(1)), Some(alice()));
    }

    #[test]
    fn zero_ttl_keeps_nothing_and_capacity_bounds_it() {
        let off = RecipientCache::new(Duration::ZERO, 10);
        off.put("alice@example.org", &alice());
        assert_eq!(off.get("alice@example.org"), None);

        let small = RecipientCache::new(Duration::from_secs(60), 2);
        for n in 0..5 {
            small.put(&format!("u{n}@example.org"), &alice());
            assert!(small.entries.lock().expect("lock").len() <= 2);
        }
        assert_eq!(small.get("u4@example.org"), Some(alice()), "the newest is kept");
    }
}
