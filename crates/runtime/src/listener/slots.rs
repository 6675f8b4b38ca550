//! The connection caps: all listeners of a service together, and per
//! client address. A slot is given back when its guard is dropped.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The address a limit counts under: IPv4 (also IPv4-mapped IPv6) as it
/// is, IPv6 by its /64, the smallest network one subscriber gets (RFC 6177),
/// so an attacker cannot take a fresh address per connection.
pub fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

pub(crate) struct Slots {
    total: Arc<Semaphore>,
    /// 0: no limit.
    max_per_ip: usize,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in the service-wide count.
pub(crate) struct TotalSlot(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

/// One connection's place in its client's count.
pub(crate) struct IpSlot {
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    source: IpAddr,
}

impl Slots {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Slots {
        let permits = if max_total == 0 { Semaphore::MAX_PERMITS } else { max_total };
        Slots { total: Arc::new(Semaphore::new(permits)), max_per_ip, per_ip: Arc::default() }
    }

    pub(crate) fn take_total(&self) -> Option<TotalSlot> {
        self.total.clone().try_acquire_owned().ok().map(|p| TotalSlot(Some(p)))
    }

    pub(crate) fn take_ip(&self, ip: IpAddr) -> Option<IpSlot> {
        let source = source_of(ip);
        let mut open = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(source).or_insert(0);
        if self.max_per_ip != 0 && *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        Some(IpSlot { per_ip: self.per_ip.clone(), source })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_service_and_per_source() {
        let slots = Slots::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t1 = slots.take_total().unwrap();
        let a1 = slots.take_ip(a).unwrap();
        let a2 = slots.take_ip("::ffff:192.0.2.1".parse().unwrap()).expect("mapped address is the same client");
        assert!(slots.take_ip(a).is_none(), "third from one client");
        assert!(slots.take_ip(b).is_some(), "another client is not affected");
        drop(a1);
        assert!(slots.take_ip(a).is_some(), "a slot comes back when its connection ends");
        let (_t2, _t3) = (slots.take_total().unwrap(), slots.take_total().unwrap());
        assert!(slots.take_total().is_none());
        drop(t1);
        assert!(slots.take_total().is_some());
        drop(a2);
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        let slots = Slots::new(0, 1);
        let _one = slots.take_ip("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(slots.take_ip("2001:db8:1:2:ffff::9".parse().unwrap()).is_none(), "same /64");
        assert!(slots.take_ip("2001:db8:1:3::1".parse().unwrap()).is_some(), "another /64");
        assert_eq!(source_of("::ffff:10.1.2.3".parse().unwrap()), "10.1.2.3".parse::<IpAddr>().unwrap());
    }
}
