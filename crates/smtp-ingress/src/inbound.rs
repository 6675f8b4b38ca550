//! Inbound message authentication on port 25: SPF (RFC 7208), DKIM
//! (RFC 6376), ARC (RFC 8617) and DMARC (RFC 7489), reported in an
//! `Authentication-Results:` field (RFC 8601) by mail-auth.
//!
//! DNS is injectable: `nameservers` picks the servers (tests point it at a
//! closed loopback port, so every real lookup is a temperror and nothing
//! leaves the machine), and `static_txt` answers TXT queries from the
//! configuration before any DNS query is made.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::Dmarc;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::spf::Spf;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{AuthenticatedMessage, AuthenticationResults, DmarcResult, MessageAuthenticator, ResolverCache, Txt};

use crate::codec::Reply;
use crate::config::InboundAuthConfig;
use crate::session::InboundVerdict;

#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("DNS resolver: {0}")]
    Resolver(String),
    #[error("static TXT record for {name}: {message}")]
    Record { name: String, message: String },
}

/// TXT answers fixed by configuration, consulted before DNS.
#[derive(Default)]
pub struct StaticTxt(HashMap<Box<str>, Txt>);

impl ResolverCache<Box<str>, Txt> for StaticTxt {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.get(name).cloned()
    }
    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }
    fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
}

impl StaticTxt {
    /// `name` → record text; the kind of record follows from the name
    /// (`_dmarc.` → DMARC, `._domainkey.` → DKIM key, otherwise SPF).
    pub fn parse<'a>(records: impl IntoIterator<Item = (&'a String, &'a String)>) -> Result<StaticTxt, InboundError> {
        let mut map = HashMap::new();
        for (name, text) in records {
            let mut fqdn = name.to_ascii_lowercase();
            if !fqdn.ends_with('.') {
                fqdn.push('.');
            }
            let err = |e: mail_auth::Error| InboundError::Record { name: name.clone(), message: e.to_string() };
            let txt = if fqdn.starts_with("_dmarc.") {
                Txt::Dmarc(Arc::new(Dmarc::parse(text.as_bytes()).map_err(err)?))
            } else if fqdn.contains("._domainkey.") {
                Txt::DomainKey(Arc::new(DomainKey::parse(text.as_bytes()).map_err(err)?))
            } else {
                Txt::Spf(Arc::new(Spf::parse(text.as_bytes()).map_err(err)?))
            };
            map.insert(fqdn.into_boxed_str(), txt);
        }
        // DMARC's tree walk (RFC 9989 §4.10.1) also asks the parent names;
        // for a pinned policy those answer "no record" instead of going to DNS.
        let parents: Vec<String> = map
            .keys()
            .filter_map(|k| k.strip_prefix("_dmarc."))
            .flat_map(|domain| {
                let labels: Vec<&str> = domain.trim_end_matches('.').split('.').collect();
                (1..labels.len()).map(move |i| format!("_dmarc.{}.", labels[i..].join(".")))
            })
            .collect();
        for parent in parents {
            map.entry(parent.into_boxed_str()).or_insert_with(|| {
                Txt::Error(mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(ResponseCode::NXDomain)))
            });
        }
        Ok(StaticTxt(map))
    }
}

/// Shared by all connections (the resolver is cheap to clone internally).
#[derive(Clone)]
pub struct InboundVerifier {
    authenticator: Arc<MessageAuthenticator>,
    static_txt: Arc<StaticTxt>,
    hostname: Arc<str>,
    reject_on_dmarc_reject: bool,
}

impl InboundVerifier {
    pub fn new(config: &InboundAuthConfig, hostname: &str) -> Result<InboundVerifier, InboundError> {
        let mut opts = ResolverOpts::default();
        opts.timeout = config.dns_timeout;
        opts.attempts = 1;
        let authenticator = if config.nameservers.is_empty() {
            MessageAuthenticator::new_system_conf().map_err(|e| InboundError::Resolver(e.to_string()))?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            MessageAuthenticator::new(ResolverConfig::from_name_servers(servers), opts)
                .map_err(|e| InboundError::Resolver(e.to_string()))?
        };
        Ok(InboundVerifier {
            authenticator: Arc::new(authenticator),
            static_txt: Arc::new(StaticTxt::parse(&config.static_txt)?),
            hostname: hostname.into(),
            reject_on_dmarc_reject: config.reject_on_dmarc_reject,
        })
    }

    pub async fn verify(&self, ip: IpAddr, helo: &str, mail_from: &str, message: &[u8]) -> InboundVerdict {
        let auth = &self.authenticator;
        let txt = self.static_txt.as_ref();
        let results = AuthenticationResults::new(&self.hostname);
        // RFC 7208 §2.4: with a null reverse-path, check the HELO identity.
        let spf_params = if mail_from.is_empty() {
            SpfParameters::verify_ehlo(ip, helo, &self.hostname)
        } else {
            SpfParameters::verify_mail_from(ip, helo, &self.hostname, mail_from)
        };
        let spf = auth.verify_spf(mail_auth::Parameters::new(spf_params).with_txt_cache(txt)).await;
        let results = if mail_from.is_empty() {
            results.with_spf_ehlo_result(&spf, ip, helo)
        } else {
            results.with_spf_mailfrom_result(&spf, ip, mail_from, helo)
        };
        let Some(parsed) = AuthenticatedMessage::parse(message) else {
            // Not even a header block: report SPF only.
            return InboundVerdict { header: format!("Authentication-Results: {results}\r\n"), reject: None };
        };
        let dkim = auth.verify_dkim(mail_auth::Parameters::new(&parsed).with_txt_cache(txt)).await;
        let arc = auth.verify_arc(mail_auth::Parameters::new(&parsed).with_txt_cache(txt)).await;
        let from_domain = mail_from.rsplit_once('@').map(|(_, d)| d).unwrap_or(helo);
        let dmarc = auth
            .verify_dmarc(
                mail_auth::Parameters::new(DmarcParameters::new(&parsed, &dkim, from_domain, &spf)).with_txt_cache(txt),
            )
            .await;
        let header_from = parsed.from.first().map(String::as_str).unwrap_or_default();
        let results = results.with_dkim_results(&dkim, header_from).with_arc_result(&arc, ip).with_dmarc_result(&dmarc);
        let failed =
            !matches!(dmarc.dkim_result(), DmarcResult::Pass) && !matches!(dmarc.spf_result(), DmarcResult::Pass);
        // RFC 7489 §6.6.2 step 6 / §10.3: refusing p=reject failures is the receiver's choice.
        let reject = (self.reject_on_dmarc_reject && failed && dmarc.policy() == mail_auth::dmarc::Policy::Reject)
            .then(|| Reply::new(550, [5, 7, 1], "Message rejected by the sender domain's DMARC policy"));
        InboundVerdict { header: format!("Authentication-Results: {results}\r\n"), reject }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(reject: bool) -> InboundVerifier {
        let mut config = InboundAuthConfig {
            // Nothing listens there: lookups not answered below are temperrors.
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            dns_timeout: std::time::Duration::from_millis(200),
            reject_on_dmarc_reject: reject,
            ..Default::default()
        };
        for (name, txt) in [
            ("remote.test", "v=spf1 ip4:127.0.0.1 -all"),
            ("_dmarc.remote.test", "v=DMARC1; p=reject"),
            ("evil.test", "v=spf1 -all"),
            ("_dmarc.evil.test", "v=DMARC1; p=reject"),
        ] {
            config.static_txt.insert(name.into(), txt.into());
        }
        InboundVerifier::new(&config, "mx.example.org").unwrap()
    }

    #[tokio::test]
    async fn aligned_spf_pass_gives_dmarc_pass() {
        let v = verifier(true);
        let ip = "127.0.0.1".parse().unwrap();
        let verdict =
            v.verify(ip, "client.test", "x@remote.test", b"From: x@remote.test\r\nSubject: a\r\n\r\nok\r\n").await;
        assert!(verdict.reject.is_none());
        assert!(
            verdict.header.starts_with("Authentication-Results: mx.example.org;\r\n\tspf=pass "),
            "{}",
            verdict.header
        );
        assert!(verdict.header.contains("dmarc=pass header.from=remote.test"), "{}", verdict.header);
    }

    #[tokio::test]
    async fn dmarc_reject_is_refused_only_when_configured() {
        let ip = "127.0.0.1".parse().unwrap();
        let msg = b"From: y@evil.test\r\nSubject: forged\r\n\r\nno\r\n";
        let verdict = verifier(true).verify(ip, "client.test", "y@evil.test", msg).await;
        assert!(verdict.header.contains("spf=fail"), "{}", verdict.header);
        assert!(verdict.header.contains("dmarc=fail"), "{}", verdict.header);
        assert_eq!(verdict.reject.map(|r| r.code()), Some(550), "{}", verdict.header);
        let verdict = verifier(false).verify(ip, "client.test", "y@evil.test", msg).await;
        assert!(verdict.reject.is_none());
    }
}
