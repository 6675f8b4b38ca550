//! How the relay talks to one destination domain: which of its routed
//! hosts may be used and with which TLS (see [`super::tls`] for the
//! levels and [`super::mta_sts`] for published policies).

use super::client::{ClientOptions, TlsMode};
use super::mta_sts::Mode;
use super::route::Hop;
use super::tls::Verify;
use super::{RcptOutcome, Relay};

impl Relay {
    /// The hops to try for `domain` and the client options to use. A
    /// domain whose MTA-STS policy (`enforce`) names none of its MX hosts
    /// is not delivered to (RFC 8461 §4.1, §5): the attempt is deferred.
    pub(super) async fn destination(
        &self,
        domain: &str,
        smarthost: bool,
        hops: Vec<Hop>,
    ) -> Result<(Vec<Hop>, ClientOptions), RcptOutcome> {
        let required = self.config.tls == TlsMode::Required
            || self.config.require_tls.iter().any(|d| d.eq_ignore_ascii_case(domain));
        let (tls, verify, hops) = if smarthost {
            // Our own relay host, named in the configuration: its certificate
            // must be valid whenever TLS is used (and before any password).
            (if required { TlsMode::Required } else { self.config.tls }, Verify::Enforce, hops)
        } else {
            let is_name = !domain.starts_with('[');
            let policy = if self.config.mta_sts && is_name { self.sts.policy(domain).await } else { None };
            match policy {
                Some(p) if p.mode == Mode::Enforce => {
                    let (allowed, refused): (Vec<Hop>, Vec<Hop>) = hops.into_iter().partition(|h| p.matches(&h.host));
                    if !refused.is_empty() {
                        let names: Vec<&str> = refused.iter().map(|h| h.host.as_str()).collect();
                        tracing::warn!(domain, refused = ?names, "MX hosts outside the domain's MTA-STS policy skipped");
                    }
                    if allowed.is_empty() {
                        return Err(RcptOutcome::Deferred {
                            diagnostic: format!(
                                "MTA-STS policy of {domain} (enforce, id {}) allows none of its MX hosts",
                                p.id
                            ),
                            remote: None,
                        });
                    }
                    (TlsMode::Required, Verify::Enforce, allowed)
                }
                Some(p) if p.mode == Mode::Testing => {
                    for h in hops.iter().filter(|h| !p.matches(&h.host)) {
                        tracing::warn!(domain, mx = %h.host, "MX host outside the domain's MTA-STS policy (testing mode)");
                    }
                    if required {
                        (TlsMode::Required, Verify::Enforce, hops)
                    } else {
                        (self.config.tls, Verify::Report, hops)
                    }
                }
                _ if required => (TlsMode::Required, Verify::Enforce, hops),
                _ => (self.config.tls, Verify::None, hops),
            }
        };
        let options = ClientOptions {
            helo_name: self.config.hostname.clone(),
            tls,
            tls_checks: self.trust.checks(verify),
            connect_timeout: self.config.connect_timeout,
            command_timeout: self.config.command_timeout,
            data_timeout: self.config.data_timeout,
            auth: if smarthost { self.config.smarthost_auth.clone() } else { None },
        };
        Ok((hops, options))
    }
}
