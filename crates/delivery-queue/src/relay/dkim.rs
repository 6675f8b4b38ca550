//! DKIM signing of outgoing mail (RFC 6376) with mail-auth's signer.
//!
//! The signing domain is the domain of the author (`From:`, read by
//! [`mail_types::HeaderFrom`] as smtp-ingress reads it), so the signature
//! aligns for DMARC (RFC 7489 §3.1.1). A signature vouches for the author,
//! so it is made only when the author is one the sender may send as: for
//! mail from an authenticated user every author must pass
//! `Directory.CanSendAs` for that user (smtp-ingress refuses other mail at
//! submission; this holds even when that check is switched off); our own
//! DSNs are signed for the relay's host name only; anything else goes out
//! unsigned. Keys live in storage (`Directory.GetDkimKey`, generated with
//! `mailctl dkim generate`) and are cached here for a few minutes; a domain
//! without a key is sent unsigned.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mailfleet_proto::queue::v1 as qpb;
use mailfleet_proto::storage::v1 as pb;
use pb::directory_client::DirectoryClient;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tonic::transport::Channel;

/// RFC 6376 §5.4.1: the header fields worth signing (only those present
/// are signed by mail-auth).
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
];

/// How long a key (or the absence of one) is cached.
const CACHE_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("unknown DKIM algorithm {0}")]
    Algorithm(String),
    #[error("bad private key: {0}")]
    Key(String),
    #[error("signing: {0}")]
    Sign(String),
}

/// A parsed signing key.
pub struct SigningKey {
    pub domain: String,
    pub selector: String,
    key: DkimKey,
}

impl SigningKey {
    pub fn from_pem(domain: &str, selector: &str, algorithm: &str, pem: &str) -> Result<SigningKey, DkimError> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| DkimError::Key(e.to_string()))?;
        let key = match algorithm {
            "rsa-sha256" => {
                DkimKey::from(RsaKey::<Sha256>::from_key_der(der).map_err(|e| DkimError::Key(e.to_string()))?)
            }
            "ed25519-sha256" => DkimKey::from(
                Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_der())
                    .map_err(|e| DkimError::Key(e.to_string()))?,
            ),
            other => return Err(DkimError::Algorithm(other.to_string())),
        };
        Ok(SigningKey { domain: domain.to_string(), selector: selector.to_string(), key })
    }

    /// The `DKIM-Signature:` header field (CRLF terminated) for `message`.
    pub fn signature_header(&self, message: &[u8]) -> Result<String, DkimError> {
        let signer = DkimSigner::from_key(KeyRef(&self.key))
            .domain(self.domain.clone())
            .selector(self.selector.clone())
            .headers(SIGNED_HEADERS.iter().copied());
        let sig = signer.sign(message).map_err(|e| DkimError::Sign(e.to_string()))?;
        Ok(sig.to_header())
    }

    /// The message with a signature prepended.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, DkimError> {
        let header = self.signature_header(message)?;
        let mut out = Vec::with_capacity(header.len() + message.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(message);
        Ok(out)
    }
}

/// mail-auth's signer takes its key by value; this lends a cached one.
struct KeyRef<'a>(&'a DkimKey);

impl mail_auth::common::crypto::SigningKey for KeyRef<'_> {
    type Hasher = Sha256;
    fn sign(&self, input: impl mail_auth::common::headers::Writable) -> mail_auth::Result<Vec<u8>> {
        mail_auth::common::crypto::SigningKey::sign(self.0, input)
    }
    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        mail_auth::common::crypto::SigningKey::algorithm(self.0)
    }
}

/// A cached lookup: when it was made and the key, if the domain has one.
type CachedKey = (Instant, Option<Arc<SigningKey>>);

/// Most (sender, author) answers of the directory remembered at once.
const MAX_OWNERSHIP_ENTRIES: usize = 10_000;

/// Keys fetched from storage, cached per domain.
pub struct DkimKeys {
    directory: DirectoryClient<Channel>,
    enabled: bool,
    /// The relay's host name: our DSNs come from MAILER-DAEMON@ it.
    hostname: String,
    cache: Mutex<HashMap<String, CachedKey>>,
    /// (authenticated user, author) → may send as, when asked.
    ownership: Mutex<HashMap<(String, String), (Instant, bool)>>,
}

impl DkimKeys {
    pub fn new(channel: Channel, enabled: bool, hostname: &str) -> DkimKeys {
        DkimKeys {
            directory: DirectoryClient::new(channel),
            enabled,
            hostname: hostname.to_ascii_lowercase(),
            cache: Mutex::new(HashMap::new()),
            ownership: Mutex::new(HashMap::new()),
        }
    }

    /// May `user` (an account's login address) send as `author`?
    /// Directory.CanSendAs, remembered like keys; a failed call is "no".
    async fn may_send_as(&self, user: &str, author: &str) -> bool {
        let key = (user.to_ascii_lowercase(), author.to_string());
        if let Ok(cache) = self.ownership.lock()
            && let Some((at, allowed)) = cache.get(&key)
            && at.elapsed() < CACHE_TTL
        {
            return *allowed;
        }
        let Some(account_id) = self.account_of(user).await else { return false };
        let mut req = tonic::Request::new(pb::CanSendAsRequest { account_id, address: author.to_string() });
        mailfleet_runtime::telemetry::inject_grpc(req.metadata_mut());
        let allowed = match self.directory.clone().can_send_as(req).await {
            Ok(r) => r.into_inner().allowed,
            Err(s) => {
                tracing::warn!(user, author, error = %s, "cannot check the author; sending unsigned");
                return false;
            }
        };
        if let Ok(mut cache) = self.ownership.lock() {
            if cache.len() >= MAX_OWNERSHIP_ENTRIES {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), allowed));
        }
        allowed
    }

    /// The account whose login address is `user`.
    async fn account_of(&self, user: &str) -> Option<i64> {
        let mut req = tonic::Request::new(pb::ResolveRecipientRequest { address: user.to_string() });
        mailfleet_runtime::telemetry::inject_grpc(req.metadata_mut());
        let resolved = self.directory.clone().resolve_recipient(req).await.ok()?.into_inner();
        match resolved.accounts.as_slice() {
            [only] => Some(only.id),
            several => several.iter().find(|a| a.address.eq_ignore_ascii_case(user)).map(|a| a.id),
        }
    }

    /// The domain `job`'s message may be signed for: its one author domain,
    /// when the sender may send as every author (see the module docs).
    async fn signing_domain(&self, job: &qpb::DeliveryJob, message: &[u8]) -> Option<String> {
        let from = mail_types::HeaderFrom::parse(message).ok()?;
        let domain = from.domain()?.to_string();
        if job.auth_user.is_empty() {
            // Our own DSNs: from the null sender, published by the relay
            // itself (no client), From: MAILER-DAEMON@<hostname>.
            let ours = job.mail_from.is_empty() && job.client_ip.is_empty() && domain == self.hostname;
            return ours.then_some(domain);
        }
        for author in from.authors() {
            if !self.may_send_as(&job.auth_user, &author.to_string()).await {
                tracing::warn!(user = %job.auth_user, %author, "author not owned by the sender; sending unsigned");
                return None;
            }
        }
        Some(domain)
    }

    async fn key(&self, domain: &str) -> Option<Arc<SigningKey>> {
        if let Ok(cache) = self.cache.lock()
            && let Some((at, key)) = cache.get(domain)
            && at.elapsed() < CACHE_TTL
        {
            return key.clone();
        }
        let mut req = tonic::Request::new(pb::GetDkimKeyRequest { domain: domain.to_string() });
        mailfleet_runtime::telemetry::inject_grpc(req.metadata_mut());
        let key = match self.directory.clone().get_dkim_key(req).await {
            Ok(k) => {
                let k = k.into_inner();
                match SigningKey::from_pem(&k.domain, &k.selector, &k.algorithm, &k.private_key_pem) {
                    Ok(key) => Some(Arc::new(key)),
                    Err(e) => {
                        tracing::warn!(domain, error = %e, "unusable DKIM key; sending unsigned");
                        None
                    }
                }
            }
            Err(s) if s.code() == tonic::Code::NotFound => None,
            Err(s) => {
                // Not cached: try again with the next message.
                tracing::warn!(domain, error = %s, "cannot fetch the DKIM key; sending unsigned");
                return None;
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(domain.to_string(), (Instant::now(), key.clone()));
        }
        key
    }

    /// The `DKIM-Signature:` field for `message`, signed for its author's
    /// domain when the sender may use it and a key exists.
    pub async fn signature_for(&self, job: &qpb::DeliveryJob, message: &[u8]) -> Option<String> {
        if !self.enabled {
            return None;
        }
        let domain = self.signing_domain(job, message).await?;
        let key = self.key(&domain).await?;
        match key.signature_header(message) {
            Ok(header) => Some(header),
            Err(e) => {
                tracing::warn!(domain, error = %e, "DKIM signing failed; sending unsigned");
                None
            }
        }
    }
}

#[cfg(test)]
mod robustness {
    use crate::relay::client::{dot_stuff, parse_reply_line};

    /// Arbitrary bytes (a small xorshift generator, no extra dependency)
    /// never make the parsers of far-side or client data panic.
    #[test]
    fn parsers_never_panic_on_arbitrary_input() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let alphabet: &[u8] = b"From:<>@ \r\n\t.-0123456789abc\xc3\xb6\xff";
        for _ in 0..5000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| alphabet[((x >> (i % 56)) as usize + i) % alphabet.len()]).collect();
            let _ = parse_reply_line(&String::from_utf8_lossy(&bytes));
            let _ = mail_types::HeaderFrom::parse(&bytes);
            let stuffed = dot_stuff(&bytes);
            assert!(stuffed.ends_with(b".\r\n"));
        }
    }
}
