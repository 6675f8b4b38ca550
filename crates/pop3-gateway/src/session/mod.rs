//! The RFC 1939 state machine: AUTHORIZATION → TRANSACTION → UPDATE.
//! It takes one input line and a [`MailStore`], writes the reply to any
//! `AsyncWrite` (RETR streams, so replies are not collected in memory) and
//! tells the driver what to do next. It never sees a socket.
//!
//! Commands live by state: `auth.rs` (USER, PASS, APOP, AUTH),
//! `transaction.rs` (STAT, LIST, RETR, TOP, DELE, RSET, UIDL, NOOP),
//! `update.rs` (QUIT in TRANSACTION, RFC 1939 §6).

mod auth;
mod lease;
mod transaction;
mod update;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::codec::{self, Command, MsgNum, RespCode};
use crate::config::Pop3Config;
use crate::store::{Account, MailStore, MessageInfo, StoreError};
use mailfleet_runtime::sasl::Exchange;

pub use lease::{Lease, Renewal};

/// What the driver does after a line was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Flush and close the connection (QUIT, abuse, lost lock).
    Close,
    /// `+OK` to STLS was written: flush, then start the TLS handshake (RFC 2595 §4).
    StartTls,
}

/// The parts of [`Pop3Config`] a session needs, shared by every connection.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    pub apop_enabled: bool,
    pub allow_plaintext_auth: bool,
    pub allow_plaintext_auth_on_loopback: bool,
    pub auth_failure_delay: Duration,
    pub max_auth_failures: u32,
    pub max_bad_commands: u32,
    pub lock_ttl_secs: u32,
    /// A certificate is configured, so STLS can be offered.
    pub tls_available: bool,
    pub capa_expire: Option<String>,
    pub capa_login_delay: Option<u32>,
}

impl SessionConfig {
    pub fn from_config(c: &Pop3Config) -> SessionConfig {
        SessionConfig {
            hostname: c.hostname.clone(),
            apop_enabled: c.apop_enabled,
            allow_plaintext_auth: c.allow_plaintext_auth,
            allow_plaintext_auth_on_loopback: c.allow_plaintext_auth_on_loopback,
            auth_failure_delay: c.connection.auth_failure_delay,
            max_auth_failures: c.connection.max_auth_failures.max(1),
            max_bad_commands: c.max_bad_commands.max(1),
            lock_ttl_secs: c.lock_ttl.as_secs().clamp(3, 3600) as u32,
            tls_available: c.tls_enabled,
            capa_expire: c.capa_expire.clone(),
            capa_login_delay: c.capa_login_delay,
        }
    }
}

/// RFC 1939 §4: the maildrop as it was at login, numbered 1..n, with the
/// messages marked by DELE.
#[derive(Debug)]
pub struct Maildrop {
    pub mailbox_id: i64,
    pub uid_validity: u32,
    pub messages: Vec<MessageInfo>,
    pub marked: BTreeSet<MsgNum>,
    /// UIDs retrieved with RETR that were not `\Seen`: flagged at QUIT.
    pub retrieved: BTreeSet<u32>,
    /// Messages read ahead of sequential RETRs.
    pub ahead: ReadAhead,
}

/// Clients mostly RETR every message in order (fetchmail, Outlook, phone
/// apps downloading a maildrop). After a RETR that follows the previous one
/// the next messages are asked from storage in one call, the batch doubling
/// up to `READ_AHEAD_MESSAGES` (like a file system's read-ahead), and held
/// here until retrieved: a round trip to storage per batch, not per message.
/// Once half of what is held has been sent, the batch after it is already
/// asked for in the background, so a client reading on never waits for one.
#[derive(Debug, Default)]
pub struct ReadAhead {
    /// Message index → octets.
    pub held: std::collections::BTreeMap<usize, bytes::Bytes>,
    /// Messages the next batch asks for (0: none yet, no sequence seen).
    pub window: usize,
    /// The index of the last RETR.
    pub last: Option<usize>,
    /// The batch being read in the background, if any.
    pub pending: Option<PendingBatch>,
}

/// A read-ahead batch on its way from storage (the task ends with the
/// session: dropping this aborts it).
#[derive(Debug)]
pub struct PendingBatch {
    /// The message indexes asked for, in order.
    pub indexes: Vec<usize>,
    pub task: tokio_util::task::AbortOnDropHandle<Result<Vec<Option<bytes::Bytes>>, crate::store::StoreError>>,
}

#[derive(Debug)]
pub enum State {
    Authorization {
        user: Option<String>,
        /// A SASL exchange in progress (RFC 5034 §4): the next line is a response.
        sasl: Option<Exchange>,
    },
    Transaction {
        /// Shared with the lease (which renews with the account's token).
        account: Arc<Account>,
        drop: Maildrop,
        lease: Lease,
    },
    /// After QUIT: nothing more is read.
    Done,
}

pub struct Session {
    cfg: Arc<SessionConfig>,
    state: State,
    tls_active: bool,
    /// The real client (after PROXY): the loopback exception, and the
    /// address failed logins count under in storage.
    client: IpAddr,
    /// RFC 1939 §7: `<pid.clock@host>`, unique per greeting.
    timestamp: String,
    /// Lock holder id, unique per session.
    holder: String,
    bad_auths: u32,
    bad_commands: u32,
}

impl Session {
    pub fn new(cfg: Arc<SessionConfig>, tls_active: bool, client: IpAddr) -> Session {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let timestamp = format!("<{}.{}@{}>", std::process::id(), &id[..16], cfg.hostname);
        Session {
            cfg,
            state: State::Authorization { user: None, sasl: None },
            tls_active,
            client,
            timestamp,
            holder: id,
            bad_auths: 0,
            bad_commands: 0,
        }
    }

    /// RFC 1939 §4 greeting; with APOP on, it carries the timestamp banner (§7).
    pub fn greeting(&self) -> String {
        if self.cfg.apop_enabled {
            codec::ok(&format!("Mailfleet POP3 ready {}", self.timestamp))
        } else {
            codec::ok("Mailfleet POP3 ready")
        }
    }

    /// The APOP timestamp banner of this session's greeting.
    pub fn timestamp(&self) -> &str {
        &self.timestamp
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The logged-in account, for the connection span.
    pub fn user(&self) -> Option<&str> {
        match &self.state {
            State::Transaction { account, .. } => Some(&account.address),
            _ => None,
        }
    }

    /// Failed authentications so far on this connection (for metrics).
    pub fn bad_auths(&self) -> u32 {
        self.bad_auths
    }

    /// The next line answers a SASL challenge (longer lines allowed).
    pub fn in_sasl(&self) -> bool {
        matches!(self.state, State::Authorization { sasl: Some(_), .. })
    }

    /// The driver finished the STLS handshake.
    pub fn tls_started(&mut self) {
        self.tls_active = true;
    }

    /// Plaintext passwords are acceptable on this connection (RFC 2595 §2.2).
    fn plaintext_ok(&self) -> bool {
        self.tls_active
            || self.cfg.allow_plaintext_auth
            || (self.cfg.allow_plaintext_auth_on_loopback && self.client.is_loopback())
    }

    /// Handle one line from the client (terminator included or not).
    pub async fn handle_line<S: MailStore, W: AsyncWrite + Unpin + Send>(
        &mut self,
        line: &[u8],
        store: &S,
        out: &mut W,
    ) -> io::Result<Flow> {
        if self.in_sasl() {
            return self.sasl_response(line, store, out).await;
        }
        match codec::parse_command(line) {
            Ok(cmd) => self.handle(cmd, store, out).await,
            Err(e) => self.bad_command(&e.to_string(), out).await,
        }
    }

    /// A line over the limit (RFC 2449 §4) was discarded.
    /// RFC 2449 §4 sets 255 octets for a command line. Before login no
    /// client has a reason to send more (SASL lines have their own, larger
    /// limit), so an over-long line there closes the connection; after
    /// login it is one more bad command.
    pub async fn line_too_long<W: AsyncWrite + Unpin + Send>(&mut self, out: &mut W) -> io::Result<Flow> {
        if let State::Authorization { .. } = &self.state {
            out.write_all(codec::err(None, "line too long, closing connection").as_bytes()).await?;
            return Ok(Flow::Close);
        }
        self.bad_command("line too long", out).await
    }

    async fn bad_command<W: AsyncWrite + Unpin + Send>(&mut self, text: &str, out: &mut W) -> io::Result<Flow> {
        self.bad_commands += 1;
        if self.bad_commands >= self.cfg.max_bad_commands {
            out.write_all(codec::err(None, &format!("{text}; too many errors, closing connection")).as_bytes()).await?;
            return Ok(Flow::Close);
        }
        out.write_all(codec::err(None, text).as_bytes()).await?;
        Ok(Flow::Continue)
    }

    /// Dispatch: one line per (state, command).
    pub async fn handle<S: MailStore, W: AsyncWrite + Unpin + Send>(
        &mut self,
        cmd: Command,
        store: &S,
        out: &mut W,
    ) -> io::Result<Flow> {
        let in_auth = matches!(self.state, State::Authorization { .. });
        match cmd {
            Command::Capa => self.capa(out).await,
            Command::Quit if in_auth => {
                self.state = State::Done;
                write(out, codec::ok("Mailfleet POP3 server signing off")).await?;
                Ok(Flow::Close)
            }
            Command::Quit => self.quit(store, out).await,
            Command::Noop if !in_auth => write_flow(out, codec::ok("")).await,
            Command::Stls if in_auth => self.stls(out).await,
            Command::User(u) if in_auth => self.user_cmd(u, out).await,
            Command::Pass(p) if in_auth => self.pass(p, store, out).await,
            Command::Apop { name, digest } if in_auth => self.apop(name, digest, store, out).await,
            Command::Auth { mechanism, initial } if in_auth => self.auth(mechanism, initial, store, out).await,
            Command::Stat if !in_auth => self.stat(out).await,
            Command::List(n) if !in_auth => self.list(n, out).await,
            Command::Uidl(n) if !in_auth => self.uidl(n, out).await,
            Command::Retr(n) if !in_auth => self.retr(n, store, out).await,
            Command::Top(n, lines) if !in_auth => self.top(n, lines, store, out).await,
            Command::Dele(n) if !in_auth => self.dele(n, out).await,
            Command::Rset if !in_auth => self.rset(out).await,
            other => {
                let state = if in_auth { "AUTHORIZATION" } else { "TRANSACTION" };
                write_flow(out, codec::err(None, &format!("{} not allowed in the {state} state", other.verb()))).await
            }
        }
    }

    /// RFC 2449 §5 CAPA; the list depends on the state and on TLS.
    async fn capa<W: AsyncWrite + Unpin + Send>(&mut self, out: &mut W) -> io::Result<Flow> {
        let in_auth = matches!(self.state, State::Authorization { .. });
        let mut caps: Vec<String> =
            ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"].map(String::from).into();
        if in_auth && self.plaintext_ok() {
            caps.push("USER".into());
            caps.push("SASL PLAIN LOGIN".into());
        }
        if in_auth && self.cfg.tls_available && !self.tls_active {
            caps.push("STLS".into());
        }
        if let Some(expire) = &self.cfg.capa_expire {
            caps.push(format!("EXPIRE {expire}"));
        }
        if let Some(delay) = self.cfg.capa_login_delay {
            caps.push(format!("LOGIN-DELAY {delay}"));
        }
        caps.push("IMPLEMENTATION Mailfleet".into());
        write_flow(out, codec::multiline("Capability list follows", caps)).await
    }

    /// RFC 2595 §4: STLS only in AUTHORIZATION, once, when TLS is configured.
    async fn stls<W: AsyncWrite + Unpin + Send>(&mut self, out: &mut W) -> io::Result<Flow> {
        if self.tls_active {
            return write_flow(out, codec::err(None, "already using TLS")).await;
        }
        if !self.cfg.tls_available {
            return write_flow(out, codec::err(None, "TLS is not available")).await;
        }
        if let State::Authorization { user, .. } = &mut self.state {
            // Nothing learned before the handshake survives it.
            *user = None;
        }
        write(out, codec::ok("Begin TLS negotiation")).await?;
        Ok(Flow::StartTls)
    }

    /// Release the maildrop lock without entering UPDATE: a dropped or timed
    /// out connection deletes nothing (RFC 1939 §6, last paragraph of §3).
    pub async fn abort<S: MailStore>(&mut self, store: &S) {
        if let State::Transaction { lease, .. } = &self.state {
            lease.release(store).await;
        }
        self.state = State::Done;
    }

    /// The maildrop lease while in TRANSACTION, for the driver to renew.
    pub fn lease(&self) -> Option<Lease> {
        match &self.state {
            State::Transaction { lease, .. } => Some(lease.clone()),
            _ => None,
        }
    }
}

/// The reply for a storage failure (RFC 3206 codes).
fn store_error(e: &StoreError) -> String {
    match e {
        StoreError::BadCredentials => codec::err(Some(RespCode::Auth), "authentication failed"),
        StoreError::Disabled => codec::err(Some(RespCode::Auth), "account disabled"),
        // RFC 3206 §4: a temporary condition; the client may try later.
        StoreError::Throttled => {
            codec::err(Some(RespCode::SysTemp), "too many failed logins from your address, try again later")
        }
        StoreError::Unavailable(why) => {
            tracing::warn!(error = %why, "storage unavailable");
            codec::err(Some(RespCode::SysTemp), "storage temporarily unavailable, try again later")
        }
        StoreError::Permanent(why) => {
            tracing::error!(error = %why, "storage error");
            codec::err(Some(RespCode::SysPerm), "internal error")
        }
    }
}

async fn write<W: AsyncWrite + Unpin + Send>(out: &mut W, reply: String) -> io::Result<()> {
    out.write_all(reply.as_bytes()).await
}

async fn write_flow<W: AsyncWrite + Unpin + Send>(out: &mut W, reply: String) -> io::Result<Flow> {
    out.write_all(reply.as_bytes()).await?;
    Ok(Flow::Continue)
}
