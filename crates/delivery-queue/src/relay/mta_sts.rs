//! MTA-STS (RFC 8461): a domain publishes that mail to it must go over
//! verified TLS to MX hosts it names.
//!
//! Discovery is a TXT record at `_mta-sts.<domain>` (`v=STSv1; id=...`,
//! §3.1); the policy itself is fetched over HTTPS from
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt` (§3.3), with the
//! certificate verified against our trust anchors and no redirect followed.
//! Policies are cached for their `max_age` (capped at a year, §3.2) in
//! this process; the TXT record is asked on every delivery and a policy is
//! fetched again only when its `id` changed (§5.1). When the TXT record
//! is gone or the fetch fails, a cached policy that has not expired still
//! applies (§5.1), so blocking the fetch does not downgrade a domain we
//! already know.
//!
//! DNS goes through the relay's [`Resolver`] and the HTTPS fetch through a
//! [`PolicyFetcher`]; the production fetcher resolves host names through
//! the same resolver, so a test's table reaches a local HTTPS server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::RootCertStore;

use super::route::{BoxFuture, DnsError, SharedResolver};

/// RFC 8461 §3.2: `max_age` is at most 31557600 seconds (about a year).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;
/// Policy bodies larger than this are refused (RFC 8461 §3.3 suggests 64 KiB).
pub const MAX_POLICY_SIZE: usize = 64 * 1024;
/// Most domains whose policy is remembered at once.
const MAX_CACHED: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StsError {
    #[error("malformed MTA-STS policy: {0}")]
    Policy(&'static str),
    #[error("fetching the MTA-STS policy: {0}")]
    Fetch(String),
}

/// RFC 8461 §5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only MX hosts matching the policy, only over verified TLS.
    Enforce,
    /// Deliver as without a policy, but report what would have failed.
    Testing,
    /// The domain withdrew its policy.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The `id` of the TXT record the policy was fetched for.
    pub id: String,
    pub mode: Mode,
    /// MX host patterns, lower case: `mail.example.com` or `*.example.com`.
    pub mx: Vec<String>,
    pub max_age: Duration,
}

impl Policy {
    /// Parse a policy body (RFC 8461 §3.2): `key: value` lines ending in
    /// LF or CRLF; `version: STSv1`, `mode`, `max_age` once each, `mx` at
    /// least once unless the mode is `none`; unknown keys are ignored.
    pub fn parse(id: &str, body: &str) -> Result<Policy, StsError> {
        let (mut version, mut mode, mut max_age) = (None, None, None);
        let mut mx = Vec::new();
        for line in body.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            let (key, value) = line.split_once(':').ok_or(StsError::Policy("a line without a colon"))?;
            let value = value.trim();
            let once = |slot: &mut Option<String>| match slot.replace(value.to_string()) {
                None => Ok(()),
                Some(_) => Err(StsError::Policy("a field given twice")),
            };
            match key.trim() {
                "version" => once(&mut version)?,
                "mode" => once(&mut mode)?,
                "max_age" => once(&mut max_age)?,
                "mx" => mx.push(parse_pattern(value)?),
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err(StsError::Policy("version is not STSv1"));
        }
        let mode = match mode.as_deref() {
            Some("enforce") => Mode::Enforce,
            Some("testing") => Mode::Testing,
            Some("none") => Mode::None,
            _ => return Err(StsError::Policy("mode is not enforce, testing or none")),
        };
        let max_age = max_age
            .filter(|v| !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(StsError::Policy("max_age is not a number of seconds"))?;
        if mx.is_empty() && mode != Mode::None {
            return Err(StsError::Policy("no mx"));
        }
        Ok(Policy { id: id.to_string(), mode, mx, max_age: Duration::from_secs(max_age.min(MAX_AGE_LIMIT)) })
    }

    /// RFC 8461 §4.1: an MX host matches a pattern exactly, or `*.rest`
    /// when it is one more label in front of `rest` (the wildcard stands
    /// for exactly one label). Case and a trailing dot do not count.
    pub fn matches(&self, mx_host: &str) -> bool {
        let host = mx_host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|pattern| match pattern.strip_prefix("*.") {
            Some(rest) => host.split_once('.').is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
            None => host == *pattern,
        })
    }
}

/// An `mx` value: a host name, possibly with `*.` in front.
fn parse_pattern(value: &str) -> Result<String, StsError> {
    let pattern = value.trim_end_matches('.').to_ascii_lowercase();
    let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
    let ok = !name.is_empty()
        && name.split('.').all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if ok { Ok(pattern) } else { Err(StsError::Policy("an mx value is no host name pattern")) }
}

/// The policy id of a domain's `_mta-sts` TXT records (RFC 8461 §3.1):
/// records not starting with `v=STSv1` are ignored; unless exactly one
/// remains, and it carries a valid `id` (1-32 letters and digits), the
/// domain has no policy available.
pub fn txt_policy_id(records: &[String]) -> Option<String> {
    let mut sts = records.iter().filter(|r| {
        let r = r.trim_start();
        r.strip_prefix("v=STSv1").is_some_and(|rest| rest.trim_start().is_empty() || rest.trim_start().starts_with(';'))
    });
    let record = sts.next()?;
    if sts.next().is_some() {
        return None;
    }
    record.split(';').skip(1).find_map(|field| {
        let (key, value) = field.trim().split_once('=')?;
        let ok = key.trim() == "id"
            && (1..=32).contains(&value.trim().len())
            && value.trim().bytes().all(|b| b.is_ascii_alphanumeric());
        ok.then(|| value.trim().to_string())
    })
}

/// Fetches the policy body of a domain (RFC 8461 §3.3).
pub trait PolicyFetcher: Send + Sync {
    fn fetch<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<String, StsError>>;
}

/// The production fetcher: HTTPS with our trust anchors, HTTP/1.1, no
/// redirects, a timeout, at most [`MAX_POLICY_SIZE`] octets of text/plain.
pub struct HttpsFetcher {
    client: reqwest::Client,
}

impl HttpsFetcher {
    pub fn new(
        roots: Arc<RootCertStore>,
        resolver: SharedResolver,
        timeout: Duration,
    ) -> Result<HttpsFetcher, StsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StsError::Fetch(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .dns_resolver(Arc::new(ViaResolver(resolver)))
            // §3.3: "HTTP 3xx redirects MUST NOT be followed".
            .redirect(reqwest::redirect::Policy::none())
            .https_only(true)
            .no_proxy()
            .timeout(timeout)
            .build()
            .map_err(|e| StsError::Fetch(e.to_string()))?;
        Ok(HttpsFetcher { client })
    }
}

impl PolicyFetcher for HttpsFetcher {
    fn fetch<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<String, StsError>> {
        Box::pin(async move {
            let err = |e: reqwest::Error| StsError::Fetch(e.to_string());
            let url = format!("https://mta-sts.{domain}/.well-known/mta-sts.txt");
            let mut response = self.client.get(&url).send().await.map_err(err)?;
            if response.status() != reqwest::StatusCode::OK {
                return Err(StsError::Fetch(format!("{url}: HTTP status {}", response.status())));
            }
            // §3.2: the policy is served as text/plain.
            let content_type =
                response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
            if !content_type.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain")) {
                return Err(StsError::Fetch(format!("{url}: content type {content_type:?}, not text/plain")));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(err)? {
                if body.len() + chunk.len() > MAX_POLICY_SIZE {
                    return Err(StsError::Fetch(format!("{url}: larger than {MAX_POLICY_SIZE} octets")));
                }
                body.extend_from_slice(&chunk);
            }
            String::from_utf8(body).map_err(|_| StsError::Fetch(format!("{url}: not UTF-8")))
        })
    }
}

/// reqwest's host name lookups through the relay's resolver (port 0: the
/// scheme's port, unless the resolver has its own, as a test table does).
struct ViaResolver(SharedResolver);

impl reqwest::dns::Resolve for ViaResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.0.clone();
        Box::pin(async move {
            let addrs = resolver.addrs(name.as_str(), 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

struct Cached {
    policy: Arc<Policy>,
    expires: Instant,
}

/// The policies of the domains mail went to, looked up and cached.
pub struct MtaSts {
    resolver: SharedResolver,
    fetcher: Arc<dyn PolicyFetcher>,
    cache: Mutex<HashMap<String, Cached>>,
}

impl MtaSts {
    pub fn new(resolver: SharedResolver, fetcher: Arc<dyn PolicyFetcher>) -> MtaSts {
        MtaSts { resolver, fetcher, cache: Mutex::new(HashMap::new()) }
    }

    fn cached(&self, domain: &str) -> Option<Arc<Policy>> {
        let cache = self.cache.lock().ok()?;
        cache.get(domain).filter(|c| c.expires > Instant::now()).map(|c| c.policy.clone())
    }

    /// The policy that applies to mail for `domain` now, if any (§5.1).
    pub async fn policy(&self, domain: &str) -> Option<Arc<Policy>> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let cached = self.cached(&domain);
        let id = match self.resolver.txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) => txt_policy_id(&records),
            Err(DnsError::NotFound) => None,
            Err(DnsError::Temporary(e)) => {
                tracing::debug!(%domain, error = %e, "MTA-STS TXT lookup failed; a cached policy still applies");
                None
            }
        };
        let Some(id) = id else { return cached };
        if let Some(policy) = cached.as_ref().filter(|p| p.id == id) {
            return Some(policy.clone());
        }
        let fetched = match self.fetcher.fetch(&domain).await {
            Ok(body) => Policy::parse(&id, &body),
            Err(e) => Err(e),
        };
        match fetched {
            Ok(policy) => {
                let policy = Arc::new(policy);
                tracing::info!(%domain, id = %policy.id, mode = ?policy.mode, "MTA-STS policy fetched");
                if let Ok(mut cache) = self.cache.lock() {
                    if cache.len() >= MAX_CACHED {
                        let now = Instant::now();
                        cache.retain(|_, c| c.expires > now);
                        if cache.len() >= MAX_CACHED {
                            cache.clear();
                        }
                    }
                    let expires = Instant::now() + policy.max_age;
                    cache.insert(domain, Cached { policy: policy.clone(), expires });
                }
                Some(policy)
            }
            Err(e) => {
                tracing::warn!(%domain, error = %e, "MTA-STS policy not available; a cached one still applies");
                cached
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_files() {
        let p = Policy::parse(
            "abc",
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 604800\r\nfuture: x\r\n",
        )
        .expect("valid");
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.mx, vec!["mail.example.com", "*.example.net"]);
        assert_eq!(p.max_age, Duration::from_secs(604_800));
        assert!(p.matches("mail.example.com") && p.matches("MAIL.example.com."));
        assert!(p.matches("mx1.example.net"));
        // §4.1: the wildcard is one label, and not the bare domain.
        assert!(!p.matches("example.net") && !p.matches("a.b.example.net") && !p.matches("evil-example.net"));
        assert!(!p.matches("mail.example.com.evil.test"));
        let none = Policy::parse("x", "version: STSv1\nmode: none\nmax_age: 9999999999\n").expect("mode none");
        assert_eq!(none.max_age, Duration::from_secs(MAX_AGE_LIMIT), "capped at a year");
        for bad in [
            "mode: enforce\nmx: a.test\nmax_age: 1\n",
            "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
            "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
            "version: STSv1\nmode: enforce\nmode: none\nmx: a.test\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a b.test\nmax_age: 1\n",
            "<html>not a policy</html>",
        ] {
            assert!(Policy::parse("x", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn txt_records() {
        let id = |records: &[&str]| txt_policy_id(&records.iter().map(|r| r.to_string()).collect::<Vec<_>>());
        assert_eq!(id(&["v=STSv1; id=20160831085700Z;"]).as_deref(), Some("20160831085700Z"));
        assert_eq!(id(&["v=spf1 -all", "v=STSv1;id=abc"]).as_deref(), Some("abc"));
        assert_eq!(id(&["v=STSv1; id=a", "v=STSv1; id=b"]), None, "two records: no policy");
        assert_eq!(id(&["v=STSv1; id=not-alnum"]), None);
        assert_eq!(id(&["v=STSv1;"]), None);
        assert_eq!(id(&["v=STSv10; id=a"]), None);
        assert_eq!(id(&[]), None);
    }
}
