//! A gateway's half of storage's session tokens (storage.proto, "Session
//! tokens"): keep the token a login returned, attach it to every call made
//! for that account, and renew it before it expires for as long as the
//! session lives — an IMAP IDLE lasts hours, a token minutes.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use mailfleet_proto::storage::v1 as pb;
use pb::directory_client::DirectoryClient;
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Storage returned a token that cannot be sent as a header value.
#[derive(Debug, thiserror::Error)]
#[error("storage returned an unusable session token")]
pub struct BadToken;

/// A session's token. Clones share it (and its renewal); the renewal stops
/// when the last clone is dropped. As a tonic interceptor it adds
/// `authorization: Bearer <token>` to every call of the client it wraps.
/// The default is no token at all (a client not logged in yet): nothing
/// is attached.
#[derive(Clone, Default)]
pub struct SessionToken {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    header: RwLock<AsciiMetadataValue>,
    renewal: Option<tokio::task::AbortHandle>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = &self.renewal {
            task.abort();
        }
    }
}

fn bearer(token: &str) -> Result<AsciiMetadataValue, BadToken> {
    format!("Bearer {token}").parse().map_err(|_| BadToken)
}

impl SessionToken {
    /// A token used as it is, never renewed (fakes and tests).
    pub fn fixed(token: &str) -> Result<SessionToken, BadToken> {
        let shared = Shared { header: RwLock::new(bearer(token)?), renewal: None };
        Ok(SessionToken { shared: Some(Arc::new(shared)) })
    }

    /// `grant`'s token, renewed through `directory` at half of each
    /// token's lifetime. Must be called within a Tokio runtime.
    pub fn renewed(grant: &pb::SessionToken, directory: DirectoryClient<Channel>) -> Result<SessionToken, BadToken> {
        let header = bearer(&grant.token)?;
        let valid_for = Duration::from_millis(grant.valid_for_ms);
        if valid_for.is_zero() {
            return SessionToken::fixed(&grant.token);
        }
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| {
            let task = tokio::spawn(renew(weak.clone(), directory, valid_for));
            Shared { header: RwLock::new(header), renewal: Some(task.abort_handle()) }
        });
        Ok(SessionToken { shared: Some(shared) })
    }

    /// The `authorization` header value; `None` without a token.
    pub fn header(&self) -> Option<AsciiMetadataValue> {
        self.shared.as_deref().map(header_of)
    }

    /// `request` with the token attached (unchanged without one, or when
    /// it carries a token already).
    pub fn attach<T>(&self, mut request: Request<T>) -> Request<T> {
        if let Some(header) = self.header()
            && !request.metadata().contains_key("authorization")
        {
            request.metadata_mut().insert("authorization", header);
        }
        request
    }
}

/// Never prints the token itself.
impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.shared.is_some() { "SessionToken(..)" } else { "SessionToken(none)" })
    }
}

fn header_of(shared: &Shared) -> AsciiMetadataValue {
    match shared.header.read() {
        Ok(h) => h.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

impl tonic::service::Interceptor for SessionToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        Ok(self.attach(request))
    }
}

/// Renew at half of each token's lifetime. When storage cannot be reached,
/// try again every few seconds while the current token lasts; when it
/// refuses (the account was disabled or deleted, the key rotated), stop:
/// the session's next call is refused and it ends.
async fn renew(shared: Weak<Shared>, mut directory: DirectoryClient<Channel>, mut valid_for: Duration) {
    let mut expires = Instant::now() + valid_for;
    let mut wait = valid_for / 2;
    loop {
        tokio::time::sleep(wait).await;
        let Some(header) = shared.upgrade().map(|s| header_of(&s)) else { return };
        let mut request = crate::telemetry::grpc_request(pb::RenewSessionRequest {});
        request.metadata_mut().insert("authorization", header);
        let sent = Instant::now();
        match directory.renew_session(request).await {
            Ok(grant) => {
                let grant = grant.into_inner();
                let Some(shared) = shared.upgrade() else { return };
                let Ok(header) = bearer(&grant.token) else { return };
                match shared.header.write() {
                    Ok(mut h) => *h = header,
                    Err(poisoned) => *poisoned.into_inner() = header,
                }
                valid_for = Duration::from_millis(grant.valid_for_ms).max(Duration::from_millis(10));
                expires = sent + valid_for;
                wait = valid_for / 2;
            }
            Err(status) if matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated) => {
                tracing::info!(reason = %status.message(), "storage refused to renew the session token");
                return;
            }
            Err(status) => {
                let left = expires.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::warn!(error = %status, "session token expired while storage was unreachable");
                    return;
                }
                tracing::debug!(error = %status, "renewing the session token; trying again");
                wait = (left / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn the_token_rides_in_the_authorization_header() {
        let mut token = SessionToken::fixed("v1.1.2.n.mac").expect("ascii");
        let request = token.call(Request::new(())).expect("attached");
        assert_eq!(request.metadata().get("authorization").and_then(|v| v.to_str().ok()), Some("Bearer v1.1.2.n.mac"));
        assert!(SessionToken::fixed("bad\ntoken").is_err());
        let request = SessionToken::default().call(Request::new(())).expect("passed through");
        assert!(request.metadata().get("authorization").is_none());
    }
}
