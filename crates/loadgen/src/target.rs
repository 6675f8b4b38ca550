//! Where the load goes: loopback only, and which mailbox users exist.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0:?} is not an IP address (give a loopback address such as 127.0.0.1 or ::1)")]
    NotAnAddress(String),
    #[error("{0} is not a loopback address: loadgen only sends to 127.0.0.0/8 or ::1")]
    NotLoopback(IpAddr),
    #[error("--user-format {0:?} has no `{{}}` for the user number")]
    NoPlaceholder(String),
    #[error("--users must be at least 1")]
    NoUsers,
}

/// The host the scenarios talk to; only constructible for loopback.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    ip: IpAddr,
}

impl Target {
    /// Accepts an IP literal or `localhost` (taken as 127.0.0.1 without
    /// asking a resolver, so no name can lead anywhere but loopback).
    pub fn parse(host: &str) -> Result<Self, TargetError> {
        let ip = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
            literal.parse::<IpAddr>().map_err(|_| TargetError::NotAnAddress(host.to_owned()))?
        };
        if !is_loopback(ip) {
            return Err(TargetError::NotLoopback(ip));
        }
        Ok(Self { ip })
    }

    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip, port)
    }

    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

/// 127.0.0.0/8, ::1, and 127.0.0.0/8 written as an IPv4-mapped IPv6 address.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// Users 1..=count, named by a format such as `load{}@bench.test`.
#[derive(Debug, Clone)]
pub struct Users {
    format: String,
    count: u32,
}

impl Users {
    pub fn new(format: &str, count: u32) -> Result<Self, TargetError> {
        if !format.contains("{}") {
            return Err(TargetError::NoPlaceholder(format.to_owned()));
        }
        if count == 0 {
            return Err(TargetError::NoUsers);
        }
        Ok(Self { format: format.to_owned(), count })
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn format(&self) -> &str {
        &self.format
    }

    /// The address of user `n` (1-based).
    pub fn address(&self, n: u32) -> String {
        self.format.replace("{}", &n.to_string())
    }

    /// The user that item `i` (0-based) goes to, round-robin: 1, 2, …, count, 1, …
    pub fn round_robin(&self, i: u64) -> u32 {
        (i % u64::from(self.count)) as u32 + 1
    }

    /// Longest address of any user, for sizing headers.
    pub fn longest_address(&self) -> usize {
        self.address(self.count).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        assert!(Target::parse("127.0.0.1").is_ok());
        assert!(Target::parse("127.3.2.1").is_ok());
        assert!(Target::parse("::1").is_ok());
        assert!(Target::parse("[::1]").is_ok());
        assert!(Target::parse("localhost").is_ok());
        assert!(Target::parse("::ffff:127.0.0.1").is_ok());
        for bad in ["10.0.0.1", "192.168.1.1", "0.0.0.0", "8.8.8.8", "::", "::ffff:10.0.0.1", "fe80::1"] {
            assert!(matches!(Target::parse(bad), Err(TargetError::NotLoopback(_))), "{bad}");
        }
        assert!(matches!(Target::parse("mail.example.org"), Err(TargetError::NotAnAddress(_))));
    }

    #[test]
    fn users_round_robin() {
        let u = Users::new("load{}@bench.test", 3).expect("users");
        assert_eq!(u.address(2), "load2@bench.test");
        assert_eq!((0..5).map(|i| u.round_robin(i)).collect::<Vec<_>>(), [1, 2, 3, 1, 2]);
        assert!(Users::new("nobody@bench.test", 3).is_err());
        assert!(Users::new("u{}", 0).is_err());
    }
}
