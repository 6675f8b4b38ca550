//! Service identity: who may call which storage RPC (issue 15, "every
//! service proves who it is").
//!
//! Both of storage's listeners require mutual TLS with a client
//! certificate from the fleet CA (`FleetIdentity::server_tls`); the
//! certificate's Subject CN is the caller's identity (`mailctl pki init`
//! issues one per service). [`Guarded`] wraps every gRPC service storage
//! serves and lets a call through only when [`ROLES`] allows that identity
//! that method; anything else is refused with PERMISSION_DENIED and a log
//! line naming the peer, before the handler runs. A method missing from the
//! table is refused to everyone: a new RPC is closed until it is given its
//! callers here.
//!
//! The table is what each service needs and nothing more: smtp-ingress
//! resolves recipients, checks logins and stores what it accepted but
//! reads no message; delivery-queue delivers and reads the blobs it
//! relays, and is the only one given DKIM keys; the gateways read and
//! change mailboxes (and storage still requires the session token of the
//! account for every such call, `auth::session`); only mailctl reaches
//! the Admin API.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Mutex;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

pub const SMTP_INGRESS: &str = "smtp-ingress";
pub const DELIVERY_QUEUE: &str = "delivery-queue";
pub const IMAP_GATEWAY: &str = "imap-gateway";
pub const POP3_GATEWAY: &str = "pop3-gateway";
pub const MAILCTL: &str = "mailctl";

const GATEWAYS: &[&str] = &[IMAP_GATEWAY, POP3_GATEWAY];
const LOGINS: &[&str] = &[SMTP_INGRESS, IMAP_GATEWAY, POP3_GATEWAY];
const ADMIN: &[&str] = &[MAILCTL];

/// Every RPC storage serves, with the identities that may call it.
pub const ROLES: &[(&str, &[&str])] = &[
    // Directory: logins mint session tokens (SMTP AUTH, IMAP, POP3).
    ("/mailfleet.storage.v1.Directory/Authenticate", LOGINS),
    ("/mailfleet.storage.v1.Directory/AuthenticateApop", &[POP3_GATEWAY]),
    ("/mailfleet.storage.v1.Directory/RenewSession", LOGINS),
    ("/mailfleet.storage.v1.Directory/ResolveRecipient", &[SMTP_INGRESS, DELIVERY_QUEUE]),
    ("/mailfleet.storage.v1.Directory/GetAccount", GATEWAYS),
    ("/mailfleet.storage.v1.Directory/CanSendAs", &[SMTP_INGRESS, DELIVERY_QUEUE]),
    // The private key signs outgoing mail; only the relay signs.
    ("/mailfleet.storage.v1.Directory/GetDkimKey", &[DELIVERY_QUEUE]),
    // Mailboxes: IMAP manages them; POP3 opens INBOX.
    ("/mailfleet.storage.v1.Mailboxes/ListMailboxes", &[IMAP_GATEWAY]),
    ("/mailfleet.storage.v1.Mailboxes/GetMailbox", GATEWAYS),
    ("/mailfleet.storage.v1.Mailboxes/CreateMailbox", &[IMAP_GATEWAY]),
    ("/mailfleet.storage.v1.Mailboxes/RenameMailbox", &[IMAP_GATEWAY]),
    ("/mailfleet.storage.v1.Mailboxes/DeleteMailbox", &[IMAP_GATEWAY]),
    ("/mailfleet.storage.v1.Mailboxes/SetSubscribed", &[IMAP_GATEWAY]),
    ("/mailfleet.storage.v1.Mailboxes/GetQuota", &[IMAP_GATEWAY]),
    // Messages: accepted mail is stored as a blob by who accepted it
    // (smtp-ingress; delivery-queue for its DSNs) and delivered by the
    // queue; users' messages are read and changed by the gateways.
    ("/mailfleet.storage.v1.Messages/Append", &[IMAP_GATEWAY]),
    ("/mailfleet.storage.v1.Messages/PutBlob", &[SMTP_INGRESS, DELIVERY_QUEUE]),
    ("/mailfleet.storage.v1.Messages/Deliver", &[DELIVERY_QUEUE]),
    ("/mailfleet.storage.v1.Messages/FetchBlob", &[DELIVERY_QUEUE]),
    ("/mailfleet.storage.v1.Messages/Fetch", GATEWAYS),
    ("/mailfleet.storage.v1.Messages/FetchRanges", GATEWAYS),
    ("/mailfleet.storage.v1.Messages/ListMessages", GATEWAYS),
    ("/mailfleet.storage.v1.Messages/ListUids", GATEWAYS),
    ("/mailfleet.storage.v1.Messages/StoreFlags", GATEWAYS),
    ("/mailfleet.storage.v1.Messages/Copy", &[IMAP_GATEWAY]),
    ("/mailfleet.storage.v1.Messages/Expunge", GATEWAYS),
    ("/mailfleet.storage.v1.Messages/Changes", &[IMAP_GATEWAY]),
    ("/mailfleet.storage.v1.Messages/Search", &[IMAP_GATEWAY]),
    // SORT and THREAD are IMAP commands (RFC 5256).
    ("/mailfleet.storage.v1.Messages/Sort", &[IMAP_GATEWAY]),
    ("/mailfleet.storage.v1.Messages/Thread", &[IMAP_GATEWAY]),
    // Locks: POP3's maildrop lock (RFC 1939 §8).
    ("/mailfleet.storage.v1.Locks/Acquire", &[POP3_GATEWAY]),
    ("/mailfleet.storage.v1.Locks/Renew", &[POP3_GATEWAY]),
    ("/mailfleet.storage.v1.Locks/Release", &[POP3_GATEWAY]),
    // Admin: the operator's tool only.
    ("/mailfleet.storage.v1.Admin/AddDomain", ADMIN),
    ("/mailfleet.storage.v1.Admin/ListDomains", ADMIN),
    ("/mailfleet.storage.v1.Admin/DeleteDomain", ADMIN),
    ("/mailfleet.storage.v1.Admin/SetCatchAll", ADMIN),
    ("/mailfleet.storage.v1.Admin/AddAccount", ADMIN),
    ("/mailfleet.storage.v1.Admin/ListAccounts", ADMIN),
    ("/mailfleet.storage.v1.Admin/DeleteAccount", ADMIN),
    ("/mailfleet.storage.v1.Admin/SetPassword", ADMIN),
    ("/mailfleet.storage.v1.Admin/SetQuota", ADMIN),
    ("/mailfleet.storage.v1.Admin/SetDisabled", ADMIN),
    ("/mailfleet.storage.v1.Admin/SetApopSecret", ADMIN),
    ("/mailfleet.storage.v1.Admin/AddAlias", ADMIN),
    ("/mailfleet.storage.v1.Admin/ListAliases", ADMIN),
    ("/mailfleet.storage.v1.Admin/DeleteAlias", ADMIN),
    ("/mailfleet.storage.v1.Admin/SweepBlobs", ADMIN),
    ("/mailfleet.storage.v1.Admin/GenerateDkimKey", ADMIN),
    ("/mailfleet.storage.v1.Admin/ListDkimKeys", ADMIN),
];

/// May `identity` call `method` (`/package.Service/Method`)?
pub fn allowed(identity: &str, method: &str) -> bool {
    ROLES.iter().any(|(m, who)| *m == method && who.contains(&identity))
}

/// The identity a caller proved: its certificate's Subject CN. Put into the
/// request's extensions for the handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// Why a call was refused before reaching its handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no client certificate")]
    NoCertificate,
    #[error("{identity} may not call {method}")]
    NotAllowed { identity: String, method: String },
}

/// Who sent `req`, and may they call what they called?
pub fn authorize<B>(req: &Request<B>) -> Result<Caller, Refusal> {
    let identity = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|info| info.peer_certs())
        .and_then(|certs| certs.first().and_then(|leaf| common_name(leaf)))
        .ok_or(Refusal::NoCertificate)?;
    let method = req.uri().path();
    if allowed(&identity, method) {
        Ok(Caller(identity))
    } else {
        Err(Refusal::NotAllowed { identity, method: method.to_string() })
    }
}

/// Most distinct certificates whose CN is remembered; the fleet has a
/// handful, and only certificates from its CA get this far.
const MAX_REMEMBERED: usize = 64;

/// The CN of a peer's (already verified) certificate. Every call asks, so
/// the answer per certificate is remembered rather than parsed from DER
/// on every RPC.
fn common_name(leaf: &[u8]) -> Option<String> {
    static SEEN: Mutex<Option<HashMap<Vec<u8>, String>>> = Mutex::new(None);
    if let Ok(seen) = SEEN.lock()
        && let Some(cn) = seen.as_ref().and_then(|m| m.get(leaf))
    {
        return Some(cn.clone());
    }
    let cn = mailfleet_runtime::pki::common_name(leaf)?;
    if let Ok(mut seen) = SEEN.lock() {
        let map = seen.get_or_insert_with(HashMap::new);
        if map.len() >= MAX_REMEMBERED {
            map.clear();
        }
        map.insert(leaf.to_vec(), cn.clone());
    }
    Some(cn)
}

/// A gRPC service that only callers allowed by [`ROLES`] reach.
#[derive(Debug, Clone)]
pub struct Guarded<S>(pub S);

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<Request<Body>> for Guarded<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Response<Body>, Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        match authorize(&req) {
            Ok(caller) => {
                req.extensions_mut().insert(caller);
                Box::pin(self.0.call(req))
            }
            Err(refusal) => {
                let peer = req
                    .extensions()
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .and_then(|info| info.get_ref().remote_addr());
                tracing::warn!(peer = ?peer, reason = %refusal, "storage call refused");
                let status = match refusal {
                    Refusal::NoCertificate => tonic::Status::unauthenticated(refusal.to_string()),
                    Refusal::NotAllowed { .. } => tonic::Status::permission_denied(refusal.to_string()),
                };
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_callers_and_appears_once() {
        let mut seen = std::collections::HashSet::new();
        for (method, who) in ROLES {
            assert!(!who.is_empty(), "{method}");
            assert!(seen.insert(*method), "{method} twice");
        }
    }

    #[test]
    fn roles_are_what_each_service_needs() {
        assert!(allowed(DELIVERY_QUEUE, "/mailfleet.storage.v1.Messages/Deliver"));
        assert!(!allowed(SMTP_INGRESS, "/mailfleet.storage.v1.Messages/Deliver"));
        assert!(!allowed(SMTP_INGRESS, "/mailfleet.storage.v1.Messages/Fetch"));
        assert!(!allowed(IMAP_GATEWAY, "/mailfleet.storage.v1.Directory/GetDkimKey"));
        assert!(!allowed(IMAP_GATEWAY, "/mailfleet.storage.v1.Admin/AddAccount"));
        assert!(allowed(MAILCTL, "/mailfleet.storage.v1.Admin/AddAccount"));
        assert!(!allowed(MAILCTL, "/mailfleet.storage.v1.Messages/Fetch"));
        assert!(!allowed("storage", "/mailfleet.storage.v1.Messages/Fetch"));
        assert!(!allowed(IMAP_GATEWAY, "/mailfleet.storage.v1.Messages/NotYetWritten"));
        for method in ["Sort", "Thread"] {
            let method = format!("/mailfleet.storage.v1.Messages/{method}");
            assert!(allowed(IMAP_GATEWAY, &method));
            assert!(!allowed(POP3_GATEWAY, &method), "POP3 has no SORT");
            assert!(!allowed(SMTP_INGRESS, &method));
        }
    }
}
