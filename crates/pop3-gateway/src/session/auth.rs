//! AUTHORIZATION state (RFC 1939 §4, §7): USER/PASS, APOP, and SASL AUTH
//! with PLAIN and LOGIN (RFC 5034, RFC 4616), then the maildrop lock and
//! snapshot that open the TRANSACTION state.

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;

use mailfleet_runtime::sasl::{self, Credentials, Exchange, Mechanism, SaslError, Step};
use tokio::io::AsyncWrite;

use super::{Flow, Lease, Maildrop, Session, State, store_error, write, write_flow};
use crate::codec::{self, RespCode};
use crate::store::{Account, MailStore, StoreError};

const PLAINTEXT_REFUSED: &str = "plaintext authentication disallowed on non-secure connections; use STLS";

impl Session {
    /// RFC 1939 §7 USER. Always `+OK`: whether the name exists is only
    /// revealed by PASS failing, so names cannot be probed one by one.
    pub(super) async fn user_cmd<W: AsyncWrite + Unpin + Send>(
        &mut self,
        name: String,
        out: &mut W,
    ) -> io::Result<Flow> {
        if !self.plaintext_ok() {
            return write_flow(out, codec::err(Some(RespCode::Auth), PLAINTEXT_REFUSED)).await;
        }
        if let State::Authorization { user, .. } = &mut self.state {
            *user = Some(name);
        }
        write_flow(out, codec::ok("send PASS")).await
    }

    /// RFC 1939 §7 PASS: only right after a successful USER.
    pub(super) async fn pass<S: MailStore, W: AsyncWrite + Unpin + Send>(
        &mut self,
        password: String,
        store: &S,
        out: &mut W,
    ) -> io::Result<Flow> {
        let State::Authorization { user, .. } = &mut self.state else {
            return write_flow(out, codec::err(None, "PASS not allowed now")).await;
        };
        let Some(name) = user.take() else {
            return write_flow(out, codec::err(None, "USER first")).await;
        };
        if !self.plaintext_ok() {
            return write_flow(out, codec::err(Some(RespCode::Auth), PLAINTEXT_REFUSED)).await;
        }
        let credentials = Credentials::new(name.as_bytes(), password.as_bytes());
        self.check(credentials, store, out).await
    }

    /// RFC 1939 §7 APOP name digest: MD5 over the greeting's timestamp and
    /// the shared secret, checked by storage.
    pub(super) async fn apop<S: MailStore, W: AsyncWrite + Unpin + Send>(
        &mut self,
        name: String,
        digest: String,
        store: &S,
        out: &mut W,
    ) -> io::Result<Flow> {
        if !self.cfg.apop_enabled {
            return write_flow(out, codec::err(None, "APOP not available")).await;
        }
        if digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return write_flow(out, codec::err(None, "APOP digest must be 32 hex digits")).await;
        }
        let result = store.authenticate_apop(&name, &self.timestamp, &digest, self.client).await;
        self.login(result, store, out).await
    }

    /// RFC 5034 §4 AUTH. Without a mechanism, list them (the RFC 1734 form
    /// that some clients still probe with).
    pub(super) async fn auth<S: MailStore, W: AsyncWrite + Unpin + Send>(
        &mut self,
        mechanism: Option<String>,
        initial: Option<String>,
        store: &S,
        out: &mut W,
    ) -> io::Result<Flow> {
        let Some(mechanism) = mechanism else {
            let names = Mechanism::ALL.map(|m| m.name().to_string());
            return write_flow(out, codec::multiline("SASL mechanisms follow", names)).await;
        };
        let Some(mechanism) = Mechanism::from_name(&mechanism) else {
            return write_flow(out, codec::err(None, "unsupported SASL mechanism")).await;
        };
        if !self.plaintext_ok() {
            return write_flow(out, codec::err(Some(RespCode::Auth), PLAINTEXT_REFUSED)).await;
        }
        let exchange = Exchange::new(mechanism);
        let challenge = exchange.challenge();
        if let State::Authorization { sasl, .. } = &mut self.state {
            *sasl = Some(exchange);
        }
        match initial {
            // RFC 5034 §4: an initial response saves a round trip.
            Some(initial) => self.sasl_response(initial.as_bytes(), store, out).await,
            None => {
                write(out, format!("+ {}\r\n", sasl::encode_challenge(challenge))).await?;
                Ok(Flow::Continue)
            }
        }
    }

    /// One client line in a SASL exchange: base64, or "*" to cancel (RFC 5034 §4).
    pub(super) async fn sasl_response<S: MailStore, W: AsyncWrite + Unpin + Send>(
        &mut self,
        line: &[u8],
        store: &S,
        out: &mut W,
    ) -> io::Result<Flow> {
        let State::Authorization { sasl, .. } = &mut self.state else { return Ok(Flow::Continue) };
        let Some(mut exchange) = sasl.take() else { return Ok(Flow::Continue) };
        let response = match sasl::decode_response(codec::trim_eol(line)) {
            Ok(r) => r,
            Err(SaslError::Cancelled) => return write_flow(out, codec::err(None, "authentication cancelled")).await,
            Err(e) => return write_flow(out, codec::err(None, &e.to_string())).await,
        };
        match exchange.respond(&response) {
            Ok(Step::Challenge(challenge)) => {
                *sasl = Some(exchange);
                write(out, format!("+ {}\r\n", sasl::encode_challenge(challenge))).await?;
                Ok(Flow::Continue)
            }
            Ok(Step::Done(credentials)) => self.check(Ok(credentials), store, out).await,
            Err(e) => self.check(Err(e), store, out).await,
        }
    }

    /// Credentials that passed the SASL policy go to storage; any that did
    /// not are a failed login without asking it.
    async fn check<S: MailStore, W: AsyncWrite + Unpin + Send>(
        &mut self,
        credentials: Result<Credentials, SaslError>,
        store: &S,
        out: &mut W,
    ) -> io::Result<Flow> {
        let result = match credentials {
            Ok(c) => store.authenticate(&c.username, &c.password, self.client).await,
            Err(_) => Err(StoreError::BadCredentials),
        };
        self.login(result, store, out).await
    }

    /// After the credentials were checked: lock the maildrop (RFC 1939 §8:
    /// one session per maildrop), take its snapshot, enter TRANSACTION.
    async fn login<S: MailStore, W: AsyncWrite + Unpin + Send>(
        &mut self,
        result: Result<Account, StoreError>,
        store: &S,
        out: &mut W,
    ) -> io::Result<Flow> {
        let account = match result {
            Ok(account) => account,
            Err(e @ (StoreError::BadCredentials | StoreError::Disabled | StoreError::Throttled)) => {
                self.bad_auths += 1;
                tracing::info!(failures = self.bad_auths, "authentication failed");
                // Slow down guessing; then give up on this connection.
                tokio::time::sleep(self.cfg.auth_failure_delay).await;
                if self.bad_auths >= self.cfg.max_auth_failures {
                    write(out, codec::err(Some(RespCode::Auth), "too many authentication failures, closing")).await?;
                    return Ok(Flow::Close);
                }
                return write_flow(out, store_error(&e)).await;
            }
            Err(e) => return write_flow(out, store_error(&e)).await,
        };
        match store.lock(&account, &self.holder, self.cfg.lock_ttl_secs).await {
            Ok(true) => {}
            // RFC 2449 §8.1.1 / RFC 3206: the maildrop is in use elsewhere.
            Ok(false) => return write_flow(out, codec::err(Some(RespCode::InUse), "maildrop already locked")).await,
            Err(e) => return write_flow(out, store_error(&e)).await,
        }
        let account = Arc::new(account);
        let lease = Lease::new(account.clone(), &self.holder, self.cfg.lock_ttl_secs);
        let snapshot = match store.snapshot(&account).await {
            Ok(s) => s,
            Err(e) => {
                lease.release(store).await;
                return write_flow(out, store_error(&e)).await;
            }
        };
        let count = snapshot.messages.len();
        let octets: u64 = snapshot.messages.iter().map(|m| m.size).sum();
        let reply = codec::ok(&format!("{} has {count} messages ({octets} octets)", account.address));
        self.state = State::Transaction {
            account,
            drop: Maildrop {
                mailbox_id: snapshot.mailbox_id,
                uid_validity: snapshot.uid_validity,
                messages: snapshot.messages,
                marked: BTreeSet::new(),
                retrieved: BTreeSet::new(),
                ahead: Default::default(),
            },
            lease,
        };
        write_flow(out, reply).await
    }
}
