//! Where mail for a domain goes: smarthost, MX records by preference, the
//! implicit MX (A/AAAA of the domain itself), or nowhere (null MX).
//!
//! DNS goes through the [`Resolver`] trait: production uses hickory-resolver,
//! tests a [`TableResolver`] that answers from a table and never leaves
//! loopback. A resolver returns socket addresses, so a table can point a
//! host at `127.0.0.1:<scripted port>`; hickory adds the configured SMTP port.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One MX record (RFC 5321 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    pub preference: u16,
    /// Exchange host name, without the trailing dot; "" or "." is the null MX.
    pub exchange: String,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DnsError {
    /// NXDOMAIN or no records of the type asked for.
    #[error("no such record")]
    NotFound,
    /// Timeout, SERVFAIL, network: try again later.
    #[error("DNS lookup failed: {0}")]
    Temporary(String),
}

pub trait Resolver: Send + Sync {
    /// MX records of `domain`, any order.
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<Mx>, DnsError>>;
    /// Addresses (A and AAAA) of `host`; `port` is the SMTP port to use when
    /// the resolver has no port of its own.
    fn addrs<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, Result<Vec<SocketAddr>, DnsError>>;
    /// TXT records of `name`, each one's character-strings joined (MTA-STS
    /// discovery, RFC 8461 §3.1).
    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, DnsError>>;
}

/// Production resolver (system configuration, `/etc/resolv.conf`).
pub struct HickoryResolver(hickory_resolver::TokioResolver);

impl HickoryResolver {
    pub fn from_system_conf() -> Result<HickoryResolver, DnsError> {
        let builder =
            hickory_resolver::TokioResolver::builder_tokio().map_err(|e| DnsError::Temporary(e.to_string()))?;
        Ok(HickoryResolver(builder.build().map_err(|e| DnsError::Temporary(e.to_string()))?))
    }
}

/// The name as an absolute DNS name (a trailing dot: no search domains).
fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

fn hickory_err(e: hickory_resolver::net::NetError) -> DnsError {
    if e.is_no_records_found() || e.is_nx_domain() { DnsError::NotFound } else { DnsError::Temporary(e.to_string()) }
}

impl Resolver for HickoryResolver {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<Mx>, DnsError>> {
        Box::pin(async move {
            let lookup = self.0.mx_lookup(fqdn(domain).as_str()).await.map_err(hickory_err)?;
            Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::MX(mx) => Some(Mx {
                        preference: mx.preference,
                        exchange: mx.exchange.to_lowercase().to_ascii().trim_end_matches('.').to_string(),
                    }),
                    _ => None,
                })
                .collect())
        })
    }

    fn addrs<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, Result<Vec<SocketAddr>, DnsError>> {
        Box::pin(async move {
            if let Ok(ip) = host.parse::<IpAddr>() {
                return Ok(vec![SocketAddr::new(ip, port)]);
            }
            let lookup = self.0.lookup_ip(fqdn(host).as_str()).await.map_err(hickory_err)?;
            Ok(lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect())
        })
    }

    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, DnsError>> {
        Box::pin(async move {
            let lookup = self.0.txt_lookup(fqdn(name).as_str()).await.map_err(hickory_err)?;
            Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::TXT(txt) => {
                        Some(txt.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect::<String>())
                    }
                    _ => None,
                })
                .collect())
        })
    }
}

/// A resolver answering from tables (tests, and hosts without DNS).
/// Names are matched case-insensitively; anything absent is `NotFound`.
#[derive(Default, Clone)]
pub struct TableResolver {
    mx: HashMap<String, Vec<Mx>>,
    hosts: HashMap<String, Vec<SocketAddr>>,
    txt: HashMap<String, Vec<String>>,
    failing: Vec<String>,
}

impl TableResolver {
    pub fn new() -> TableResolver {
        TableResolver::default()
    }
    pub fn with_mx(mut self, domain: &str, preference: u16, exchange: &str) -> TableResolver {
        self.mx
            .entry(domain.to_ascii_lowercase())
            .or_default()
            .push(Mx { preference, exchange: exchange.trim_end_matches('.').to_ascii_lowercase() });
        self
    }
    /// RFC 7505: a single MX of preference 0 with the root as exchange.
    pub fn with_null_mx(self, domain: &str) -> TableResolver {
        self.with_mx(domain, 0, ".")
    }
    pub fn with_host(mut self, host: &str, addr: SocketAddr) -> TableResolver {
        self.hosts.entry(host.to_ascii_lowercase()).or_default().push(addr);
        self
    }
    pub fn with_txt(mut self, name: &str, record: &str) -> TableResolver {
        self.txt.entry(name.to_ascii_lowercase()).or_default().push(record.to_string());
        self
    }
    /// Lookups of `name` fail temporarily (SERVFAIL).
    pub fn with_failure(mut self, name: &str) -> TableResolver {
        self.failing.push(name.to_ascii_lowercase());
        self
    }
}

impl Resolver for TableResolver {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<Mx>, DnsError>> {
        let key = domain.to_ascii_lowercase();
        Box::pin(async move {
            if self.failing.contains(&key) {
                return Err(DnsError::Temporary(format!("SERVFAIL for {key}")));
            }
            self.mx.get(&key).cloned().ok_or(DnsError::NotFound)
        })
    }
    fn addrs<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, Result<Vec<SocketAddr>, DnsError>> {
        let key = host.to_ascii_lowercase();
        Box::pin(async move {
            if let Ok(ip) = key.parse::<IpAddr>() {
                return Ok(vec![SocketAddr::new(ip, port)]);
            }
            if self.failing.contains(&key) {
                return Err(DnsError::Temporary(format!("SERVFAIL for {key}")));
            }
            self.hosts.get(&key).cloned().ok_or(DnsError::NotFound)
        })
    }
    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, DnsError>> {
        let key = name.to_ascii_lowercase();
        Box::pin(async move {
            if self.failing.contains(&key) {
                return Err(DnsError::Temporary(format!("SERVFAIL for {key}")));
            }
            self.txt.get(&key).cloned().ok_or(DnsError::NotFound)
        })
    }
}

/// A host to try, in order; `port` is used unless the resolver has its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    /// RFC 7505 §3: a domain with a null MX accepts no mail: 550 5.1.10.
    #[error("domain {0} does not accept mail (null MX, RFC 7505)")]
    NullMx(String),
    /// NXDOMAIN / no MX and no address: 5.1.2 (RFC 3463 bad destination system).
    #[error("domain {0} has no mail exchanger and no address")]
    NoSuchDomain(String),
    #[error("{0}")]
    Temporary(String),
}

impl RouteError {
    pub fn is_permanent(&self) -> bool {
        !matches!(self, RouteError::Temporary(_))
    }
    /// RFC 3463 status code for a DSN.
    pub fn status(&self) -> &'static str {
        match self {
            RouteError::NullMx(_) => "5.1.10",
            RouteError::NoSuchDomain(_) => "5.1.2",
            RouteError::Temporary(_) => "4.4.3",
        }
    }
}

/// Parse `host` or `host:port` (`[v6]:port` for IPv6 literals).
pub fn parse_hostport(s: &str, default_port: u16) -> Hop {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[')
        && let Some((host, tail)) = rest.split_once(']')
    {
        let port = tail.strip_prefix(':').and_then(|p| p.parse().ok()).unwrap_or(default_port);
        return Hop { host: host.to_string(), port };
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            Hop { host: host.to_string(), port: port.parse().unwrap_or(default_port) }
        }
        _ => Hop { host: s.to_string(), port: default_port },
    }
}

/// The ordered hops for `domain`.
///
/// RFC 5321 §5.1: MX records sorted by preference (lowest first; equal
/// preferences are shuffled to spread load); with no MX records, the domain
/// itself is the implicit MX if it has an address. RFC 7505: a single MX
/// with the root as exchange means the domain accepts no mail.
pub async fn route(
    domain: &str,
    smarthost: Option<&str>,
    port: u16,
    resolver: &dyn Resolver,
) -> Result<Vec<Hop>, RouteError> {
    if let Some(sh) = smarthost {
        return Ok(vec![parse_hostport(sh, port)]);
    }
    // An address literal (RFC 5321 §4.1.3) needs no lookup.
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        let lit = lit.strip_prefix("IPv6:").unwrap_or(lit);
        return Ok(vec![Hop { host: lit.to_string(), port }]);
    }
    match resolver.mx(domain).await {
        Ok(mut mxs) if !mxs.is_empty() => {
            if mxs.iter().any(|m| m.exchange.is_empty() || m.exchange == ".") {
                // RFC 7505 §3: null MX (a domain publishing it must not
                // publish other MX records; treat any mix as null too).
                return Err(RouteError::NullMx(domain.to_string()));
            }
            shuffle_equal(&mut mxs);
            mxs.sort_by_key(|m| m.preference);
            Ok(mxs.into_iter().map(|m| Hop { host: m.exchange, port }).collect())
        }
        Ok(_) | Err(DnsError::NotFound) => {
            // RFC 5321 §5.1: implicit MX when the domain has an address.
            match resolver.addrs(domain, port).await {
                Ok(a) if !a.is_empty() => Ok(vec![Hop { host: domain.to_string(), port }]),
                Ok(_) | Err(DnsError::NotFound) => Err(RouteError::NoSuchDomain(domain.to_string())),
                Err(DnsError::Temporary(e)) => Err(RouteError::Temporary(e)),
            }
        }
        Err(DnsError::Temporary(e)) => Err(RouteError::Temporary(e)),
    }
}

/// Randomise the order of MX records of equal preference (RFC 5321 §5.1);
/// the sort afterwards is stable, so only ties are affected.
fn shuffle_equal(mxs: &mut [Mx]) {
    use std::hash::{BuildHasher, Hasher};
    let seed = std::collections::hash_map::RandomState::new();
    mxs.sort_by_cached_key(|m| {
        let mut h = seed.build_hasher();
        h.write(m.exchange.as_bytes());
        h.finish()
    });
}

pub type SharedResolver = Arc<dyn Resolver>;

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime")
    }

    #[test]
    fn mx_by_preference_then_implicit_then_null() {
        let r = TableResolver::new()
            .with_mx("example.test", 20, "b.example.test")
            .with_mx("example.test", 10, "A.example.test.")
            .with_host("plain.test", "127.0.0.1:25".parse().expect("addr"))
            .with_null_mx("null.test")
            .with_failure("broken.test");
        rt().block_on(async {
            let hops = route("example.test", None, 25, &r).await.expect("route");
            assert_eq!(hops.iter().map(|h| h.host.as_str()).collect::<Vec<_>>(), ["a.example.test", "b.example.test"]);
            let hops = route("plain.test", None, 25, &r).await.expect("implicit MX");
            assert_eq!(hops, vec![Hop { host: "plain.test".into(), port: 25 }]);
            let err = route("null.test", None, 25, &r).await.expect_err("null MX");
            assert!(err.is_permanent());
            assert_eq!(err.status(), "5.1.10");
            let err = route("nowhere.test", None, 25, &r).await.expect_err("no domain");
            assert_eq!(err.status(), "5.1.2");
            let err = route("broken.test", None, 25, &r).await.expect_err("servfail");
            assert!(!err.is_permanent());
            let hops = route("example.test", Some("relay.isp.test:587"), 25, &r).await.expect("smarthost");
            assert_eq!(hops, vec![Hop { host: "relay.isp.test".into(), port: 587 }]);
            let hops = route("[192.0.2.1]", None, 25, &r).await.expect("literal");
            assert_eq!(hops, vec![Hop { host: "192.0.2.1".into(), port: 25 }]);
        });
    }

    #[test]
    fn hostport() {
        assert_eq!(parse_hostport("h", 25), Hop { host: "h".into(), port: 25 });
        assert_eq!(parse_hostport("h:2525", 25), Hop { host: "h".into(), port: 2525 });
        assert_eq!(parse_hostport("[::1]:26", 25), Hop { host: "::1".into(), port: 26 });
        assert_eq!(parse_hostport("::1", 25), Hop { host: "::1".into(), port: 25 });
    }
}
