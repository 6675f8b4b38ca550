//! Session tokens: storage serves an account's mail only to a session that
//! logged in to it (issue 15, "account scoping by session, not by trust").
//!
//! `Authenticate`/`AuthenticateApop` (and so every SASL mechanism, which the
//! gateways turn into a password check) mint a token bound to the account
//! id and an expiry; every token-scoped RPC (see storage.proto, "Session
//! tokens") carries it as `authorization: Bearer <token>` and is refused
//! with PERMISSION_DENIED when the token is missing, malformed, forged,
//! expired, or names another account than the request.
//!
//! A token is `v1.<account id>.<expiry, Unix ms>.<nonce>.<MAC>` where MAC is
//! HMAC-SHA256 (RFC 2104) over everything before it, keyed with a 256-bit
//! secret only storage holds, base64url (RFC 4648 §5) without padding. The
//! MAC is checked with aws-lc-rs' constant-time comparison. The key is
//! generated at the first start and kept in Postgres (`session_key`), so
//! every storage replica, sharing the database, accepts every other's
//! tokens; `session_key_file` gives one instead (the same file for every
//! replica). Anybody who can read that row or file can mint tokens; they
//! could read the mail in the same database directly anyway.
//!
//! Tokens are short-lived (`session_ttl`, 15 minutes by default); a live
//! session renews its token with `RenewSession` while it is still valid,
//! which also ends the session of an account disabled or deleted since.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mailfleet_proto::storage::v1 as pb;
use tonic::{Request, Status};

/// Format tag of the tokens minted here; a new format gets a new tag.
const VERSION: &str = "v1";

/// Octets of the signing key (HMAC-SHA256's block-size-independent
/// recommendation, RFC 2104 §3: at least the hash's output length).
pub const KEY_LEN: usize = 32;

/// Longer "tokens" are refused before any parsing or MAC work.
const MAX_TOKEN_LEN: usize = 200;

/// Why a call's token was refused. The message is what the caller sees (and
/// what the log line says); none of them tells a forger more than "no".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("session token required")]
    Missing,
    #[error("malformed session token")]
    Malformed,
    #[error("invalid session token")]
    BadSignature,
    #[error("session token expired")]
    Expired,
    #[error("session token is for another account")]
    OtherAccount,
}

/// Errors loading or creating the signing key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("session key file {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("session key file {0}: expected at least {KEY_LEN} octets of base64 or hex")]
    FileContent(String),
    #[error("session key in Postgres: {0}")]
    Database(#[from] sqlx::Error),
}

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub account_id: i64,
    pub expires_at: SystemTime,
}

impl Claims {
    /// The token names `account_id` (every account-bearing field of a
    /// request goes through here).
    pub fn require(&self, account_id: i64) -> Result<(), TokenError> {
        if self.account_id == account_id { Ok(()) } else { Err(TokenError::OtherAccount) }
    }
}

impl TokenError {
    /// The metric attribute.
    fn reason(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::OtherAccount => "other_account",
        }
    }
}

/// Mints and checks session tokens.
pub struct SessionKeys {
    key: hmac::Key,
    ttl: Duration,
    refused: opentelemetry::metrics::Counter<u64>,
}

impl SessionKeys {
    pub fn new(secret: &[u8], ttl: Duration) -> SessionKeys {
        let refused = opentelemetry::global::meter("storage")
            .u64_counter("mailfleet.session.refused")
            .with_unit("{call}")
            .with_description("Account calls refused for their session token, by reason")
            .build();
        SessionKeys { key: hmac::Key::new(hmac::HMAC_SHA256, secret), ttl, refused }
    }

    /// The key from `file` when given, else the one in Postgres, created
    /// by whichever replica starts first.
    pub async fn load(pool: &sqlx::PgPool, file: Option<&Path>, ttl: Duration) -> Result<SessionKeys, KeyError> {
        let secret = match file {
            Some(path) => read_key_file(path)?,
            None => shared_key(pool).await?,
        };
        Ok(SessionKeys::new(&secret, ttl))
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A token for `account`, valid for the configured lifetime from now.
    pub fn issue(&self, account: pb::Account) -> pb::SessionToken {
        let now = SystemTime::now();
        let expires_at = now + self.ttl;
        pb::SessionToken {
            token: self.mint(account.id, expires_at),
            account: Some(account),
            expires_at: Some(prost_types::Timestamp::from(expires_at)),
            valid_for_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// A token for `account_id` expiring at `expires_at` (tests mint
    /// expired ones with it).
    pub fn mint(&self, account_id: i64, expires_at: SystemTime) -> String {
        let expires_ms = expires_at.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let nonce: [u8; 9] = rand::random();
        let payload = format!("{VERSION}.{account_id}.{expires_ms}.{}", URL_SAFE_NO_PAD.encode(nonce));
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// Check a token's MAC (in constant time) and expiry.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let (payload, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| TokenError::Malformed)?;
        hmac::verify(&self.key, payload.as_bytes(), &mac).map_err(|_| TokenError::BadSignature)?;
        // Signed by us: the fields are ours, but parse them carefully anyway.
        let mut fields = payload.split('.');
        let (Some(VERSION), Some(id), Some(expires_ms)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(TokenError::Malformed);
        };
        let account_id: i64 = id.parse().map_err(|_| TokenError::Malformed)?;
        let expires_ms: u64 = expires_ms.parse().map_err(|_| TokenError::Malformed)?;
        let expires_at = UNIX_EPOCH + Duration::from_millis(expires_ms);
        if expires_at <= now {
            return Err(TokenError::Expired);
        }
        Ok(Claims { account_id, expires_at })
    }

    /// The claims of the token a call carries (`authorization: Bearer …`).
    /// A refusal is logged with the caller's address and is PERMISSION_DENIED.
    pub fn claims<T>(&self, req: &Request<T>) -> Result<Claims, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(TokenError::Missing);
        token.and_then(|t| self.verify(t.trim(), SystemTime::now())).map_err(|e| self.refuse(req, e))
    }

    /// The call carries a valid token for `account_id`.
    pub fn check<T>(&self, req: &Request<T>, account_id: i64) -> Result<Claims, Status> {
        let claims = self.claims(req)?;
        claims.require(account_id).map_err(|e| self.refuse(req, e))?;
        Ok(claims)
    }

    /// PERMISSION_DENIED for `err`, counted, with a log line naming the peer.
    pub fn refuse<T>(&self, req: &Request<T>, err: TokenError) -> Status {
        self.refuse_from(req.remote_addr(), err)
    }

    /// `refuse`, for a call whose request was taken apart already.
    pub fn refuse_from(&self, peer: Option<std::net::SocketAddr>, err: TokenError) -> Status {
        let peer = peer.map(|a| a.to_string()).unwrap_or_default();
        tracing::warn!(%peer, reason = %err, "call refused: session token");
        self.refused.add(1, &[opentelemetry::KeyValue::new("reason", err.reason())]);
        Status::permission_denied(err.to_string())
    }
}

/// The key in Postgres: one row, written by the first replica to start
/// (`ON CONFLICT DO NOTHING` settles a race), read by all.
async fn shared_key(pool: &sqlx::PgPool) -> Result<Vec<u8>, KeyError> {
    let fresh: [u8; KEY_LEN] = rand::random();
    sqlx::query("INSERT INTO session_key (id, secret) VALUES (true, $1) ON CONFLICT (id) DO NOTHING")
        .bind(fresh.as_slice())
        .execute(pool)
        .await?;
    Ok(sqlx::query_scalar("SELECT secret FROM session_key WHERE id").fetch_one(pool).await?)
}

/// A key file holds base64 or hex (whitespace around it ignored).
fn read_key_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::File { path: name.clone(), source })?;
    let text = text.trim();
    let secret = hex::decode(text)
        .ok()
        .or_else(|| base64::engine::general_purpose::STANDARD.decode(text).ok())
        .ok_or_else(|| KeyError::FileContent(name.clone()))?;
    if secret.len() < KEY_LEN {
        return Err(KeyError::FileContent(name));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys::new(&[7; KEY_LEN], Duration::from_secs(60))
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let keys = keys();
        let now = SystemTime::now();
        let token = keys.mint(42, now + Duration::from_secs(60));
        let claims = keys.verify(&token, now).expect("valid");
        assert_eq!(claims.account_id, 42);
        assert_eq!(claims.require(42), Ok(()));
        assert_eq!(claims.require(43), Err(TokenError::OtherAccount));
        assert_eq!(keys.verify(&token, now + Duration::from_secs(61)), Err(TokenError::Expired));
    }

    #[test]
    fn tampered_forged_and_garbage_tokens_are_refused() {
        let keys = keys();
        let now = SystemTime::now();
        let token = keys.mint(42, now + Duration::from_secs(60));
        // Another account id under the same MAC.
        let other = token.replacen(".42.", ".43.", 1);
        assert_eq!(keys.verify(&other, now), Err(TokenError::BadSignature));
        // A later expiry under the same MAC.
        let (payload, mac) = token.rsplit_once('.').expect("has a MAC");
        let mut fields: Vec<&str> = payload.split('.').collect();
        let later = (now + Duration::from_secs(3600)).duration_since(UNIX_EPOCH).expect("after 1970").as_millis();
        let later = later.to_string();
        fields[2] = &later;
        assert_eq!(keys.verify(&format!("{}.{mac}", fields.join(".")), now), Err(TokenError::BadSignature));
        // Signed with another key.
        let forged = SessionKeys::new(&[8; KEY_LEN], Duration::from_secs(60)).mint(42, now + Duration::from_secs(60));
        assert_eq!(keys.verify(&forged, now), Err(TokenError::BadSignature));
        for garbage in ["", "v1", "v1.42.1.x.", "....", "v1.42.1.x.!!!", &"a".repeat(5000)] {
            assert!(keys.verify(garbage, now).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn key_files_take_hex_or_base64_of_at_least_32_octets() {
        let dir = tempfile::tempdir().expect("temp dir");
        let hex_file = dir.path().join("hex");
        std::fs::write(&hex_file, format!("{}\n", "ab".repeat(32))).expect("write");
        assert_eq!(read_key_file(&hex_file).expect("hex"), vec![0xab; 32]);
        let b64_file = dir.path().join("b64");
        std::fs::write(&b64_file, base64::engine::general_purpose::STANDARD.encode([1u8; 48])).expect("write");
        assert_eq!(read_key_file(&b64_file).expect("base64"), vec![1; 48]);
        let short = dir.path().join("short");
        std::fs::write(&short, "abcd").expect("write");
        assert!(matches!(read_key_file(&short), Err(KeyError::FileContent(_))));
    }
}
