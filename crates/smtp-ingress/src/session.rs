//! The SMTP session state machine (RFC 5321 §3, §4.1.4), without sockets.
//!
//! The driver feeds it parsed commands, SASL lines and completed message
//! data; the session answers with replies and tells the driver what to read
//! next ([`Next`]). Everything it needs from the outside world goes through
//! the [`Backend`] trait, so the tests below run it against an in-memory fake.

use std::future::Future;
use std::net::IpAddr;
use std::time::SystemTime;

use mailfleet_runtime::sasl::{self, Credentials, Exchange, Mechanism, SaslError};
use smtp_proto::*;

use crate::codec::{Command, Reply};

/// Which listener the client connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// Port 25: mail for local recipients from anywhere.
    Mx,
    /// Ports 587/465 (RFC 6409, RFC 8314): authenticated users send mail.
    Submission,
}

/// Negotiated TLS parameters, written into the `Received:` header.
pub use mailfleet_runtime::listener::TlsInfo;

/// The account behind a successful AUTH, and the session token storage
/// scopes calls for it with (CanSendAs).
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub account_id: i64,
    pub address: String,
    pub session: mailfleet_runtime::session::SessionToken,
}

/// Where a recipient goes, per storage's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The accounts the address leads to (aliases expanded).
    Local(Vec<LocalAccount>),
    UnknownUser,
    NotLocal,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Storage or NATS is down or failed: a temporary failure (4xx).
    #[error("temporarily unavailable: {0}")]
    Unavailable(String),
    /// The request was refused for good (e.g. malformed address).
    #[error("rejected: {0}")]
    Rejected(String),
    /// Authenticate refused unchecked: the client's address (or the account)
    /// failed too often lately.
    #[error("too many failed logins")]
    Throttled,
}

/// A recipient accepted at RCPT, with its RFC 3461 parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardPath {
    pub address: String,
    /// RFC 3461 NOTIFY bit set as in `queue.proto`: NEVER=1, SUCCESS=2, FAILURE=4, DELAY=8.
    pub notify: u32,
    pub orcpt: String,
    /// Where the address led at RCPT time; empty when it is not local.
    pub accounts: Vec<LocalAccount>,
}

/// A local account a recipient address resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAccount {
    pub id: i64,
    pub address: String,
}

/// Everything about one accepted message, handed to the backend at the end
/// of DATA/BDAT. `header` (trace fields) and `body` are stored back to back.
#[derive(Debug)]
pub struct Envelope {
    pub queue_id: String,
    pub mail_from: String,
    pub recipients: Vec<ForwardPath>,
    /// RFC 3461 RET: "FULL", "HDRS" or "".
    pub ret: String,
    pub envid: String,
    pub auth_user: String,
    pub client_ip: IpAddr,
    pub helo: String,
    pub smtputf8: bool,
    pub body_type: &'static str,
    pub received_at: SystemTime,
}

/// Result of SPF/DKIM/DMARC checks on an incoming message (port 25).
#[derive(Debug, Default, Clone)]
pub struct InboundVerdict {
    /// A complete `Authentication-Results: ...\r\n` field, or empty.
    pub header: String,
    /// Set when policy says to refuse the message (DMARC p=reject).
    pub reject: Option<Reply>,
}

/// What the session needs from storage and the queue.
pub trait Backend: Send + Sync {
    /// `Ok(None)` means bad credentials.
    /// `client` is the real client: storage counts failed logins per address.
    fn authenticate(
        &self,
        username: &str,
        password: &str,
        client: IpAddr,
    ) -> impl Future<Output = Result<Option<AuthUser>, BackendError>> + Send;
    fn resolve_recipient(&self, address: &str) -> impl Future<Output = Result<Resolution, BackendError>> + Send;
    fn can_send_as(&self, user: &AuthUser, address: &str) -> impl Future<Output = Result<bool, BackendError>> + Send;
    /// Store the message and publish its delivery job; returns only when both
    /// are durable (RFC 5321 §4.2.5, §6.1).
    fn enqueue(
        &self,
        envelope: Envelope,
        header: Vec<u8>,
        body: Vec<u8>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
    /// SPF, DKIM, DMARC (and ARC) for mail arriving on port 25.
    fn verify_inbound(
        &self,
        client_ip: IpAddr,
        helo: &str,
        mail_from: &str,
        message: &[u8],
    ) -> impl Future<Output = InboundVerdict> + Send;
}

/// Per-connection policy, derived from the configuration by the driver.
#[derive(Debug, Clone)]
pub struct Policy {
    pub hostname: String,
    pub port: Port,
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_auth_failures: u32,
    /// STARTTLS can be offered (a certificate is configured, not yet in TLS).
    pub starttls_available: bool,
    /// AUTH PLAIN/LOGIN allowed without TLS (development on loopback only).
    pub plaintext_auth_allowed: bool,
    /// Submission: MAIL FROM must be an address the user owns.
    pub enforce_sender_ownership: bool,
    /// Submission: every header From: author must be an address the user owns.
    pub enforce_header_from: bool,
    /// Run SPF/DKIM/DMARC on unauthenticated port-25 mail.
    pub verify_inbound: bool,
    /// Where `RCPT TO:<Postmaster>` (no domain) goes.
    pub postmaster: String,
}

/// What the driver reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Command,
    /// Message text up to `<CRLF>.<CRLF>` (RFC 5321 §4.1.1.4).
    Data,
    /// Exactly `size` octets of a BDAT chunk (RFC 3030 §2).
    Bdat {
        size: usize,
        last: bool,
    },
    /// A BDAT chunk that must be read and thrown away.
    DiscardBdat {
        size: usize,
    },
    /// One SASL response line (RFC 4954 §4).
    AuthLine,
    /// Reply written, now do the TLS handshake (RFC 3207 §4).
    StartTls,
    Close,
}

#[derive(Debug)]
pub struct Step {
    pub replies: Vec<Reply>,
    pub next: Next,
}

impl Step {
    fn reply(r: Reply) -> Step {
        Step { replies: vec![r], next: Next::Command }
    }
    fn then(r: Reply, next: Next) -> Step {
        Step { replies: vec![r], next }
    }
}

/// Outcome of reading DATA or a BDAT chunk.
#[derive(Debug)]
pub enum Body {
    Complete(Vec<u8>),
    /// More than `max_message_size` octets arrived (RFC 1870 §6: 552).
    TooLarge,
}

/// A mail transaction (RFC 5321 §3.3), from MAIL to the end of data.
#[derive(Debug)]
pub struct Transaction {
    mail_from: String,
    smtputf8: bool,
    body_type: &'static str,
    ret: String,
    envid: String,
    recipients: Vec<ForwardPath>,
    /// BDAT was used in this transaction; DATA is then out of sequence.
    chunking: bool,
}

/// RFC 5321 §4.1.4 command order.
#[derive(Debug)]
enum State {
    /// Greeting sent; EHLO or HELO first.
    Connected,
    /// After EHLO/HELO, no transaction.
    Ready,
    /// After MAIL.
    Mail(Transaction),
    /// Inside an AUTH exchange.
    Authenticating(Exchange),
}

pub struct Session<B> {
    pub policy: Policy,
    backend: B,
    peer: IpAddr,
    state: State,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    user: Option<AuthUser>,
    auth_failures: u32,
}

impl<B: Backend> Session<B> {
    pub fn new(policy: Policy, backend: B, peer: IpAddr, tls: Option<TlsInfo>) -> Session<B> {
        Session {
            policy,
            backend,
            peer,
            state: State::Connected,
            helo: None,
            esmtp: false,
            tls,
            user: None,
            auth_failures: 0,
        }
    }

    /// Inside a mail transaction (after MAIL, before the end of data or RSET).
    pub fn in_transaction(&self) -> bool {
        matches!(self.state, State::Mail(_))
    }

    /// A BDAT transfer has begun (RFC 3030 §2): the chunks that follow
    /// belong to a message in progress, which shutdown lets finish.
    pub fn in_chunked_transfer(&self) -> bool {
        matches!(&self.state, State::Mail(txn) if txn.chunking)
    }

    /// Failed AUTH attempts on this connection so far.
    pub fn auth_failures(&self) -> u32 {
        self.auth_failures
    }

    pub fn user(&self) -> Option<&AuthUser> {
        self.user.as_ref()
    }

    /// RFC 5321 §4.2: the 220 greeting. No enhanced code (RFC 2034 §3).
    pub fn greeting(&self) -> Reply {
        Reply::plain(220, format!("{} ESMTP Mailfleet", self.policy.hostname))
    }

    /// RFC 5321 §4.5.3.2: the server may close an idle connection, with 421.
    pub fn timeout_reply(&self) -> Reply {
        Reply::new(421, [4, 4, 2], format!("{} Timeout, closing connection", self.policy.hostname))
    }

    pub fn shutdown_reply(&self) -> Reply {
        Reply::new(421, [4, 3, 2], format!("{} Service shutting down", self.policy.hostname))
    }

    /// RFC 3207 §4.2: after the handshake the client knows nothing and the
    /// server forgets everything it learned (EHLO, AUTH) before TLS.
    pub fn tls_started(&mut self, info: TlsInfo) {
        self.tls = Some(info);
        self.policy.starttls_available = false;
        self.state = State::Connected;
        self.helo = None;
        self.esmtp = false;
        self.user = None;
    }

    fn reset_transaction(&mut self) {
        if matches!(self.state, State::Mail(_)) {
            self.state = State::Ready;
        }
    }

    fn auth_offered(&self) -> bool {
        self.tls.is_some() || self.policy.plaintext_auth_allowed
    }

    /// Handle one command.
    pub async fn command(&mut self, cmd: Command) -> Step {
        match cmd {
            Request::Ehlo { host } => self.ehlo(host, true),
            Request::Helo { host } => self.ehlo(host, false),
            Request::Lhlo { .. } => Step::reply(Reply::new(500, [5, 5, 1], "This is not an LMTP server")),
            Request::Mail { from } => self.mail(from).await,
            Request::Rcpt { to } => self.rcpt(to).await,
            Request::Data => self.data(),
            Request::Bdat { chunk_size, is_last } => self.bdat(chunk_size, is_last),
            Request::Auth { mechanism, initial_response } => self.auth(mechanism, initial_response).await,
            Request::StartTls => self.starttls(),
            // RFC 5321 §4.1.1.5: RSET aborts the transaction, keeps EHLO.
            Request::Rset => {
                self.reset_transaction();
                Step::reply(Reply::ok())
            }
            // RFC 5321 §4.1.1.9.
            Request::Noop { .. } => Step::reply(Reply::ok()),
            // RFC 5321 §3.5.3: 252 when we will not verify but will try.
            Request::Vrfy { .. } => Step::reply(Reply::new(
                252,
                [2, 5, 0],
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            // RFC 5321 §3.5.2: EXPN may be disabled for security.
            Request::Expn { .. } => Step::reply(Reply::new(502, [5, 5, 1], "EXPN not available")),
            Request::Help { .. } => Step::reply(Reply::new(
                214,
                [2, 0, 0],
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY STARTTLS AUTH HELP QUIT",
            )),
            // RFC 5321 §4.1.1.10.
            Request::Quit => Step::then(Reply::new(221, [2, 0, 0], "Bye"), Next::Close),
            Request::Etrn { .. } | Request::Atrn { .. } | Request::Burl { .. } => {
                Step::reply(Reply::new(502, [5, 5, 1], "Command not implemented"))
            }
        }
    }

    /// RFC 5321 §4.1.1.1: EHLO/HELO (also an implicit RSET).
    fn ehlo(&mut self, host: String, esmtp: bool) -> Step {
        if matches!(self.state, State::Authenticating(_)) {
            return Step::reply(Reply::bad_sequence("AUTH exchange in progress"));
        }
        // RFC 5321 §4.1.1.1: a domain or address literal. The name goes into
        // the Received: and Authentication-Results: fields and the job, so
        // control characters (and spaces) are refused, not carried.
        if host.is_empty() || host.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Step::reply(Reply::syntax("Invalid domain name in EHLO/HELO"));
        }
        self.state = State::Ready;
        self.helo = Some(host);
        self.esmtp = esmtp;
        if !esmtp {
            return Step::reply(Reply::plain(250, self.policy.hostname.clone()));
        }
        let mut ehlo = EhloResponse::new(self.policy.hostname.clone());
        // Advertised only what arrives intact in the mailbox: storage keeps
        // bytes as they are, so 8-bit and UTF-8 content are safe; BINARYMIME
        // is not offered (RFC 3030 §3 would need binary-clean delivery).
        ehlo.capabilities = EXT_PIPELINING
            | EXT_SIZE
            | EXT_8BIT_MIME
            | EXT_SMTP_UTF8
            | EXT_ENHANCED_STATUS_CODES
            | EXT_CHUNKING
            | EXT_DSN
            | EXT_HELP;
        ehlo.size = self.policy.max_message_size;
        if self.policy.starttls_available {
            ehlo.capabilities |= EXT_START_TLS;
        }
        // RFC 4954 §4 / RFC 8314: offer PLAIN/LOGIN only under TLS (or on
        // loopback when configured for development).
        if self.auth_offered() && self.user.is_none() {
            ehlo.capabilities |= EXT_AUTH;
            ehlo.auth_mechanisms = AUTH_PLAIN | AUTH_LOGIN;
        }
        Step::reply(Reply::Ehlo(ehlo))
    }

    fn starttls(&mut self) -> Step {
        if self.tls.is_some() {
            return Step::reply(Reply::bad_sequence("TLS already active"));
        }
        if !self.policy.starttls_available {
            return Step::reply(Reply::new(502, [5, 5, 1], "STARTTLS not available"));
        }
        if !matches!(self.state, State::Ready | State::Connected) {
            return Step::reply(Reply::bad_sequence("STARTTLS not allowed during a mail transaction"));
        }
        Step::then(Reply::new(220, [2, 0, 0], "Ready to start TLS"), Next::StartTls)
    }

    /// RFC 5321 §4.1.1.2 MAIL, with the SIZE (RFC 1870), BODY (RFC 6152),
    /// SMTPUTF8 (RFC 6531) and RET/ENVID (RFC 3461) parameters.
    async fn mail(&mut self, from: MailFrom<String>) -> Step {
        match self.state {
            State::Connected => return Step::reply(Reply::bad_sequence("Send EHLO or HELO first")),
            State::Mail(_) => return Step::reply(Reply::bad_sequence("Nested MAIL command")),
            State::Authenticating(_) => return Step::reply(Reply::bad_sequence("AUTH exchange in progress")),
            State::Ready => {}
        }
        if self.policy.port == Port::Submission {
            if self.tls.is_none() {
                return Step::reply(Reply::new(530, [5, 7, 0], "Must issue a STARTTLS command first"));
            }
            if self.user.is_none() {
                return Step::reply(Reply::new(530, [5, 7, 0], "Authentication required"));
            }
        }
        if from.size > self.policy.max_message_size {
            return Step::reply(Reply::new(552, [5, 3, 4], "Message size exceeds fixed maximum message size"));
        }
        if from.flags & MAIL_BODY_BINARYMIME != 0 {
            return Step::reply(Reply::new(555, [5, 5, 4], "BODY=BINARYMIME not supported"));
        }
        if !from.address.is_empty() && mail_types::EmailAddress::parse(&from.address).is_err() {
            return Step::reply(Reply::new(553, [5, 1, 7], "Malformed sender address"));
        }
        if let Some(user) = &self.user
            && self.policy.enforce_sender_ownership
        {
            let allowed =
                if from.address.is_empty() { Ok(false) } else { self.backend.can_send_as(user, &from.address).await };
            match allowed {
                Ok(true) => {}
                Ok(false) => {
                    return Step::reply(Reply::new(
                        553,
                        [5, 7, 1],
                        "Sender address not owned by the authenticated user",
                    ));
                }
                Err(_) => return Step::reply(Reply::unavailable()),
            }
        }
        let body_type = if from.flags & MAIL_BODY_8BITMIME != 0 { "8BITMIME" } else { "7BIT" };
        let ret = if from.flags & MAIL_RET_FULL != 0 {
            "FULL"
        } else if from.flags & MAIL_RET_HDRS != 0 {
            "HDRS"
        } else {
            ""
        };
        self.state = State::Mail(Transaction {
            mail_from: from.address,
            smtputf8: from.flags & MAIL_SMTPUTF8 != 0,
            body_type,
            ret: ret.into(),
            envid: from.env_id.unwrap_or_default(),
            recipients: Vec::new(),
            chunking: false,
        });
        Step::reply(Reply::ok())
    }

    /// RFC 5321 §4.1.1.3 RCPT, with NOTIFY/ORCPT (RFC 3461 §4).
    async fn rcpt(&mut self, to: RcptTo<String>) -> Step {
        let max = self.policy.max_recipients;
        let authenticated = self.user.is_some();
        let State::Mail(txn) = &mut self.state else {
            return Step::reply(Reply::bad_sequence("Need MAIL before RCPT"));
        };
        // RFC 5321 §4.5.3.1.8: at least 100 must be accepted; past our
        // limit, 452 so the client sends the rest in another transaction.
        if txn.recipients.len() >= max {
            return Step::reply(Reply::new(452, [4, 5, 3], "Too many recipients"));
        }
        // RFC 5321 §4.5.1: bare "Postmaster" is this host's postmaster, and
        // it MUST be accepted, wherever the configured address leads.
        let mut to = to;
        let bare_postmaster = to.address == "postmaster";
        if bare_postmaster {
            to.address = self.policy.postmaster.clone();
        }
        let address = match mail_types::EmailAddress::parse(&to.address) {
            Ok(a) => a,
            Err(_) => return Step::reply(Reply::new(501, [5, 1, 3], "Bad recipient address syntax")),
        };
        let resolution = match self.backend.resolve_recipient(&to.address).await {
            Ok(r) => r,
            Err(BackendError::Rejected(_)) => Resolution::UnknownUser,
            Err(BackendError::Unavailable(_) | BackendError::Throttled) => return Step::reply(Reply::unavailable()),
        };
        let mut accounts = Vec::new();
        let accepted = match resolution {
            Resolution::Local(found) => {
                accounts = found;
                true
            }
            // RFC 5321 §4.5.1: postmaster of every served domain is accepted.
            Resolution::UnknownUser if address.is_postmaster() => true,
            Resolution::UnknownUser => {
                return Step::reply(Reply::new(550, [5, 1, 1], "Mailbox unavailable: no such user here"));
            }
            // Relay (RFC 5321 §3.6.1) only for authenticated users.
            Resolution::NotLocal if authenticated || bare_postmaster => true,
            Resolution::NotLocal => return Step::reply(Reply::new(554, [5, 7, 1], "Relay access denied")),
        };
        debug_assert!(accepted);
        let mut notify = 0;
        if to.flags & RCPT_NOTIFY_NEVER != 0 {
            notify |= 1;
        }
        if to.flags & RCPT_NOTIFY_SUCCESS != 0 {
            notify |= 2;
        }
        if to.flags & RCPT_NOTIFY_FAILURE != 0 {
            notify |= 4;
        }
        if to.flags & RCPT_NOTIFY_DELAY != 0 {
            notify |= 8;
        }
        txn.recipients.push(ForwardPath { address: to.address, notify, orcpt: to.orcpt.unwrap_or_default(), accounts });
        Step::reply(Reply::ok())
    }

    /// RFC 5321 §4.1.1.4 DATA.
    fn data(&mut self) -> Step {
        match &self.state {
            State::Mail(txn) if txn.chunking => {
                Step::reply(Reply::bad_sequence("DATA not allowed after BDAT (RFC 3030 §2)"))
            }
            // RFC 5321 §3.3: DATA without an accepted recipient → 554 (or 503).
            State::Mail(txn) if txn.recipients.is_empty() => {
                Step::reply(Reply::new(554, [5, 5, 1], "No valid recipients"))
            }
            State::Mail(_) => Step::then(Reply::plain(354, "Start mail input; end with <CRLF>.<CRLF>"), Next::Data),
            _ => Step::reply(Reply::bad_sequence("Need MAIL and RCPT before DATA")),
        }
    }

    /// RFC 3030 §2 BDAT: the chunk follows the command whatever we answer, so
    /// a refused chunk is still read (and discarded).
    fn bdat(&mut self, size: usize, last: bool) -> Step {
        match &mut self.state {
            State::Mail(txn) if !txn.recipients.is_empty() => {
                txn.chunking = true;
                Step { replies: vec![], next: Next::Bdat { size, last } }
            }
            State::Mail(_) => Step::then(Reply::new(554, [5, 5, 1], "No valid recipients"), Next::DiscardBdat { size }),
            _ => Step::then(Reply::bad_sequence("Need MAIL and RCPT before BDAT"), Next::DiscardBdat { size }),
        }
    }

    /// Reply to a BDAT chunk that is not the last (RFC 3030 §2).
    pub fn bdat_chunk_received(&self, size: usize) -> Reply {
        Reply::new(250, [2, 0, 0], format!("{size} octets received"))
    }

    /// The data of the transaction is complete (DATA end, or BDAT LAST).
    pub async fn end_of_data(&mut self, body: Body) -> Step {
        let State::Mail(txn) = std::mem::replace(&mut self.state, State::Ready) else {
            return Step::reply(Reply::bad_sequence("No mail transaction"));
        };
        let body = match body {
            Body::Complete(b) => b,
            Body::TooLarge => {
                return Step::reply(Reply::new(552, [5, 3, 4], "Message size exceeds fixed maximum message size"));
            }
        };
        // RFC 8601 §5: results under our name were not made by us.
        let body = mail_types::header::strip_authentication_results(&body, &self.policy.hostname).unwrap_or(body);
        if let Some(refusal) = self.check_header_from(&body).await {
            return Step::reply(refusal);
        }
        let queue_id = uuid::Uuid::now_v7().simple().to_string().to_uppercase();
        let received_at = SystemTime::now();
        let helo = self.helo.clone().unwrap_or_default();
        let mut header = String::new();
        if self.policy.port == Port::Mx && self.user.is_none() && self.policy.verify_inbound {
            let verdict = self.backend.verify_inbound(self.peer, &helo, &txn.mail_from, &body).await;
            if let Some(reject) = verdict.reject {
                return Step::reply(reject);
            }
            header.push_str(&verdict.header);
        }
        let received = self.received_header(&queue_id, &txn, received_at);
        // RFC 5321 §4.4: the Received: field goes on top.
        let header = format!("{received}{header}").into_bytes();
        let envelope = Envelope {
            queue_id: queue_id.clone(),
            mail_from: txn.mail_from,
            recipients: txn.recipients,
            ret: txn.ret,
            envid: txn.envid,
            auth_user: self.user.as_ref().map(|u| u.address.clone()).unwrap_or_default(),
            client_ip: self.peer,
            helo,
            smtputf8: txn.smtputf8,
            body_type: txn.body_type,
            received_at,
        };
        // RFC 5321 §4.2.5 / §6.1: 250 only once the message is durable.
        match self.backend.enqueue(envelope, header, body).await {
            Ok(()) => Step::reply(Reply::new(250, [2, 0, 0], format!("Ok: queued as {queue_id}"))),
            Err(err) => {
                tracing::warn!(error = %err, "enqueue failed");
                Step::reply(Reply::unavailable())
            }
        }
    }

    /// An authenticated user's message names only authors the user may
    /// send as (Directory.CanSendAs), so mail is never DKIM-signed for a
    /// domain the user does not own. RFC 6409 §6.1 lets the MSA enforce
    /// submission rights; the refusal is 550 with RFC 3463 X.7.1 (delivery
    /// not authorized). A message without From: passes (it is not signed).
    async fn check_header_from(&self, message: &[u8]) -> Option<Reply> {
        let user = self.user.as_ref().filter(|_| self.policy.enforce_header_from)?;
        let refuse = |text: &str| Some(Reply::new(550, [5, 7, 1], text));
        let from = match mail_types::HeaderFrom::parse(message) {
            Ok(from) => from,
            Err(mail_types::HeaderFromError::Missing) => return None,
            Err(mail_types::HeaderFromError::Multiple) => return refuse("More than one From: header field"),
            Err(mail_types::HeaderFromError::NoAddress) => return refuse("From: header field has no usable address"),
        };
        for author in from.authors() {
            match self.backend.can_send_as(user, &author.to_string()).await {
                Ok(true) => {}
                Ok(false) => return refuse("From: header address not owned by the authenticated user"),
                Err(_) => return Some(Reply::unavailable()),
            }
        }
        None
    }

    /// RFC 5321 §4.4 trace field, with the RFC 3848 protocol keyword.
    fn received_header(&self, queue_id: &str, txn: &Transaction, at: SystemTime) -> String {
        let with = match (self.esmtp, self.tls.is_some(), self.user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let with = if txn.smtputf8 { format!("UTF8{with}") } else { with.to_string() };
        let helo = sanitize(self.helo.as_deref().unwrap_or("unknown"));
        let mut h = format!(
            "Received: from {helo} ([{}])\r\n\tby {} (Mailfleet) with {with} id {queue_id}",
            self.peer, self.policy.hostname
        );
        if let Some(tls) = &self.tls {
            h.push_str(&format!("\r\n\t(version={} cipher={})", tls.version, tls.cipher));
        }
        if let Some(user) = &self.user {
            h.push_str(&format!("\r\n\t(authenticated user {})", sanitize(&user.address)));
        }
        // One recipient only: naming several would leak Bcc recipients.
        if let [only] = txn.recipients.as_slice() {
            h.push_str(&format!("\r\n\tfor <{}>", sanitize(&only.address)));
        }
        let date =
            time::OffsetDateTime::from(at).format(&time::format_description::well_known::Rfc2822).unwrap_or_default();
        h.push_str(&format!(";\r\n\t{date}\r\n"));
        h
    }

    /// RFC 4954 §4 AUTH. Only PLAIN (RFC 4616) and LOGIN are offered.
    async fn auth(&mut self, mechanism: u64, initial: String) -> Step {
        if !matches!(self.state, State::Ready) {
            return Step::reply(match self.state {
                State::Connected => Reply::bad_sequence("Send EHLO first"),
                _ => Reply::bad_sequence("AUTH not allowed now"),
            });
        }
        if self.user.is_some() {
            return Step::reply(Reply::bad_sequence("Already authenticated"));
        }
        if !self.auth_offered() {
            // RFC 4954 §6.
            return Step::reply(Reply::new(
                538,
                [5, 7, 11],
                "Encryption required for requested authentication mechanism",
            ));
        }
        let mechanism = match mechanism {
            AUTH_PLAIN => Mechanism::Plain,
            AUTH_LOGIN => Mechanism::Login,
            _ => return Step::reply(Reply::new(504, [5, 5, 4], "Unrecognized authentication type")),
        };
        let exchange = Exchange::new(mechanism);
        if initial.is_empty() {
            return self.challenge(exchange);
        }
        // RFC 4954 §4: an initial response ("=" when empty) saves a round trip.
        match sasl::decode_response(initial.as_bytes()) {
            Ok(response) => self.respond(exchange, &response).await,
            Err(e) => sasl_error_reply(&e),
        }
    }

    /// One SASL response line.
    pub async fn auth_line(&mut self, line: Result<String, ()>) -> Step {
        let State::Authenticating(exchange) = std::mem::replace(&mut self.state, State::Ready) else {
            return Step::reply(Reply::bad_sequence("No AUTH in progress"));
        };
        let Ok(line) = line else {
            return Step::reply(Reply::new(500, [5, 5, 6], "Authentication exchange line is too long"));
        };
        // RFC 4954 §4: "*" cancels.
        match sasl::decode_response(line.as_bytes()) {
            Ok(response) => self.respond(exchange, &response).await,
            Err(e) => sasl_error_reply(&e),
        }
    }

    /// RFC 4954 §4: 334 with the base64 challenge, then wait for the response.
    fn challenge(&mut self, exchange: Exchange) -> Step {
        let reply = Reply::plain(334, sasl::encode_challenge(exchange.challenge()));
        self.state = State::Authenticating(exchange);
        Step::then(reply, Next::AuthLine)
    }

    async fn respond(&mut self, mut exchange: Exchange, response: &[u8]) -> Step {
        match exchange.respond(response) {
            Ok(sasl::Step::Challenge(_)) => self.challenge(exchange),
            Ok(sasl::Step::Done(credentials)) => self.check_credentials(&credentials).await,
            Err(SaslError::Malformed) => Step::reply(Reply::new(501, [5, 5, 2], "Malformed PLAIN response")),
            // Invalid credentials, or acting as somebody else: a failed login.
            Err(_) => self.auth_failed(),
        }
    }

    async fn check_credentials(&mut self, credentials: &Credentials) -> Step {
        match self.backend.authenticate(&credentials.username, &credentials.password, self.peer).await {
            Ok(Some(account)) => {
                self.user = Some(account);
                Step::reply(Reply::new(235, [2, 7, 0], "Authentication successful"))
            }
            Ok(None) => self.auth_failed(),
            // The address failed too often lately (storage's auth throttle):
            // 421 and close; the client may come back later.
            Err(BackendError::Throttled) => {
                self.auth_failures += 1;
                Step {
                    replies: vec![Reply::new(
                        421,
                        [4, 7, 0],
                        "Too many failed logins from your address, try again later",
                    )],
                    next: Next::Close,
                }
            }
            // RFC 4954 §6: 454 4.7.0 temporary authentication failure.
            Err(_) => Step::reply(Reply::new(454, [4, 7, 0], "Temporary authentication failure")),
        }
    }

    fn auth_failed(&mut self) -> Step {
        self.auth_failures += 1;
        if self.auth_failures >= self.policy.max_auth_failures {
            return Step {
                replies: vec![
                    Reply::new(535, [5, 7, 8], "Authentication credentials invalid"),
                    Reply::new(421, [4, 7, 0], "Too many failed authentication attempts"),
                ],
                next: Next::Close,
            };
        }
        Step::reply(Reply::new(535, [5, 7, 8], "Authentication credentials invalid"))
    }
}

/// A response line that is no answer: cancelled, or not base64.
fn sasl_error_reply(e: &SaslError) -> Step {
    Step::reply(match e {
        SaslError::Cancelled => Reply::new(501, [5, 0, 0], "Authentication cancelled"),
        _ => Reply::new(501, [5, 5, 2], "Invalid base64"),
    })
}

/// Keep header text on one line and free of characters that would end it.
fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control() && *c != '(' && *c != ')').take(255).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::codec::{CommandReader, Parsed};

    /// In-memory storage + queue.
    #[derive(Default)]
    struct Fake {
        queued: Mutex<Vec<(Envelope, Vec<u8>)>>,
        down: bool,
    }

    impl Backend for &Fake {
        async fn authenticate(
            &self,
            username: &str,
            password: &str,
            _: IpAddr,
        ) -> Result<Option<AuthUser>, BackendError> {
            Ok((username == "alice@example.org" && password == "secret").then(|| AuthUser {
                account_id: 1,
                address: "alice@example.org".into(),
                session: Default::default(),
            }))
        }
        async fn resolve_recipient(&self, address: &str) -> Result<Resolution, BackendError> {
            if self.down {
                return Err(BackendError::Unavailable("down".into()));
            }
            let (_, domain) = address.rsplit_once('@').unwrap_or(("", ""));
            Ok(match (address.to_ascii_lowercase().as_str(), domain) {
                ("alice@example.org" | "bob@example.org", _) => {
                    Resolution::Local(vec![LocalAccount { id: 1, address: address.to_ascii_lowercase() }])
                }
                (_, "example.org") => Resolution::UnknownUser,
                _ => Resolution::NotLocal,
            })
        }
        async fn can_send_as(&self, _: &AuthUser, address: &str) -> Result<bool, BackendError> {
            Ok(address == "alice@example.org")
        }
        async fn enqueue(&self, envelope: Envelope, header: Vec<u8>, body: Vec<u8>) -> Result<(), BackendError> {
            let mut full = header;
            full.extend_from_slice(&body);
            self.queued.lock().unwrap().push((envelope, full));
            Ok(())
        }
        async fn verify_inbound(&self, _: IpAddr, _: &str, _: &str, _: &[u8]) -> InboundVerdict {
            InboundVerdict { header: "Authentication-Results: test; none\r\n".into(), reject: None }
        }
    }

    fn policy(port: Port) -> Policy {
        Policy {
            hostname: "mx.test".into(),
            port,
            max_message_size: 1000,
            max_recipients: 2,
            max_auth_failures: 2,
            starttls_available: true,
            plaintext_auth_allowed: false,
            enforce_sender_ownership: true,
            enforce_header_from: true,
            verify_inbound: true,
            postmaster: "postmaster@example.org".into(),
        }
    }

    /// Replays `C:`/`S:` lines. Each `S:` is the first reply line expected
    /// (prefix match); `D:` lines are message data (ending with a lone ".").
    async fn transcript(session: &mut Session<&Fake>, script: &str) {
        let mut reader = CommandReader::default();
        let mut replies: std::collections::VecDeque<String> = Default::default();
        let mut data = String::new();
        let mut in_data = false;
        let mut log = String::new();
        // `C: ... S: ...` on one line is a command and its reply.
        let lines: Vec<String> = script
            .lines()
            .flat_map(|l| match l.split_once(" S: ") {
                Some((c, s)) => vec![c.trim().to_string(), format!("S: {}", s.trim())],
                None => vec![l.trim().to_string()],
            })
            .filter(|l| !l.is_empty())
            .collect();
        for line in lines.iter().map(|l| l.trim()) {
            if let Some(c) = line.strip_prefix("C: ") {
                log.push_str(&format!("C: {c}\n"));
                let bytes = format!("{c}\r\n");
                let mut it = bytes.as_bytes().iter();
                let step = if in_data {
                    panic!("command during data");
                } else {
                    match reader.next(&mut it) {
                        Some(Parsed::Command(cmd)) => session.command(cmd).await,
                        Some(Parsed::Error(r)) => Step::reply(r),
                        None => panic!("incomplete: {c}"),
                    }
                };
                for r in &step.replies {
                    replies.push_back(r.to_string());
                }
                if step.next == Next::Data {
                    in_data = true;
                }
            } else if let Some(a) = line.strip_prefix("A: ") {
                log.push_str(&format!("A: {a}\n"));
                let step = session.auth_line(Ok(a.to_string())).await;
                for r in &step.replies {
                    replies.push_back(r.to_string());
                }
            } else if let Some(d) = line.strip_prefix("D:") {
                let d = d.strip_prefix(' ').unwrap_or(d);
                if d == "." {
                    in_data = false;
                    let step = session.end_of_data(Body::Complete(std::mem::take(&mut data).into_bytes())).await;
                    for r in &step.replies {
                        replies.push_back(r.to_string());
                    }
                } else {
                    data.push_str(d);
                    data.push_str("\r\n");
                }
            } else if let Some(s) = line.strip_prefix("S: ") {
                let got = replies.pop_front().unwrap_or_default();
                log.push_str(&format!("S: {}", got.escape_debug()));
                log.push('\n');
                assert!(got.starts_with(s), "expected `{s}`, exchange so far:\n{log}");
            }
        }
        assert!(replies.is_empty(), "unexpected replies {replies:?}\n{log}");
    }

    fn cmd(line: &str) -> Command {
        let bytes = format!("{line}\r\n");
        match CommandReader::default().next(&mut bytes.as_bytes().iter()) {
            Some(Parsed::Command(c)) => c,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn session(fake: &Fake, port: Port, tls: bool) -> Session<&Fake> {
        let tls = tls.then(|| TlsInfo { version: "TLSv1_3".into(), cipher: "TLS13_AES_256_GCM_SHA384".into() });
        Session::new(policy(port), fake, "192.0.2.1".parse().unwrap(), tls)
    }

    #[tokio::test]
    async fn mx_accepts_local_refuses_unknown_and_relay() {
        let fake = Fake::default();
        let mut s = session(&fake, Port::Mx, false);
        transcript(
            &mut s,
            "
            C: MAIL FROM:<x@remote.test>      S: 503 5.5.1
            C: EHLO client.test               S: 250-mx.test
            C: RCPT TO:<alice@example.org>    S: 503 5.5.1
            C: MAIL FROM:<x@remote.test> SIZE=100 BODY=8BITMIME  S: 250 2.0.0
            C: MAIL FROM:<x@remote.test>      S: 503 5.5.1
            C: RCPT TO:<nobody@example.org>   S: 550 5.1.1
            C: RCPT TO:<Postmaster@example.org>  S: 250 2.0.0
            C: RSET                           S: 250
            C: MAIL FROM:<x@remote.test> SIZE=100 BODY=8BITMIME  S: 250 2.0.0
            C: RCPT TO:<postmaster>           S: 250 2.0.0
            C: RCPT TO:<someone@elsewhere.test>  S: 554 5.7.1 Relay access denied
            C: RCPT TO:<alice@example.org>    S: 250 2.0.0
            C: RCPT TO:<bob@example.org>      S: 452 4.5.3
            C: DATA                           S: 354
            D: Subject: hi
            D:
            D: hello
            D: .                              S: 250 2.0.0 Ok: queued as
            C: QUIT                           S: 221 2.0.0
            ",
        )
        .await;
        let queued = fake.queued.lock().unwrap();
        assert_eq!(queued.len(), 1);
        let (env, msg) = &queued[0];
        assert_eq!(env.mail_from, "x@remote.test");
        assert_eq!(env.body_type, "8BITMIME");
        assert_eq!(
            env.recipients.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(),
            ["postmaster@example.org", "alice@example.org"]
        );
        let text = String::from_utf8_lossy(msg);
        assert!(
            text.starts_with("Received: from client.test ([192.0.2.1])\r\n\tby mx.test (Mailfleet) with ESMTP id "),
            "{text}"
        );
        assert!(text.contains("Authentication-Results: test; none\r\nSubject: hi\r\n\r\nhello\r\n"), "{text}");
    }

    #[tokio::test]
    async fn submission_requires_tls_then_auth_and_owned_sender() {
        let fake = Fake::default();
        let mut s = session(&fake, Port::Submission, false);
        transcript(
            &mut s,
            "
            C: EHLO c
            S: 250-mx.test
            C: AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==
            S: 538 5.7.11
            C: MAIL FROM:<alice@example.org>
            S: 530 5.7.0 Must issue a STARTTLS command first
            C: STARTTLS
            S: 220 2.0.0
            ",
        )
        .await;
        s.tls_started(TlsInfo { version: "TLSv1_3".into(), cipher: "X".into() });
        transcript(
            &mut s,
            "
            C: MAIL FROM:<alice@example.org>
            S: 503 5.5.1
            C: EHLO c
            S: 250-mx.test
            C: MAIL FROM:<alice@example.org>
            S: 530 5.7.0 Authentication required
            C: AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHdyb25n
            S: 535 5.7.8
            C: AUTH LOGIN
            S: 334 VXNlcm5hbWU6
            A: YWxpY2VAZXhhbXBsZS5vcmc=
            S: 334 UGFzc3dvcmQ6
            A: c2VjcmV0
            S: 235 2.7.0
            C: MAIL FROM:<bob@example.org>
            S: 553 5.7.1
            C: MAIL FROM:<alice@example.org>
            S: 250
            C: RCPT TO:<friend@elsewhere.test>
            S: 250
            C: BDAT 5 LAST
            ",
        )
        .await;
        let step = s.end_of_data(Body::Complete(b"Hi\r\n\r\n".to_vec())).await;
        assert!(step.replies[0].to_string().starts_with("250 2.0.0 Ok: queued as"));
        let queued = fake.queued.lock().unwrap();
        let text = String::from_utf8_lossy(&queued[0].1);
        assert!(text.contains("with ESMTPSA id"), "{text}");
        assert!(text.contains("(authenticated user alice@example.org)"), "{text}");
        assert!(!text.contains("Authentication-Results"), "{text}");
        assert_eq!(queued[0].0.auth_user, "alice@example.org");
    }

    /// alice, logged in on the submission port, in a transaction for a
    /// remote recipient; `message` is sent with DATA and the reply returned.
    async fn submit_as_alice(fake: &Fake, policy: impl FnOnce(&mut Policy), message: &str) -> String {
        let mut s = session(fake, Port::Submission, true);
        policy(&mut s.policy);
        transcript(
            &mut s,
            "
            C: EHLO c                                       S: 250-mx.test
            C: AUTH PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHNlY3JldA==  S: 235
            C: MAIL FROM:<alice@example.org>                S: 250
            C: RCPT TO:<friend@elsewhere.test>              S: 250
            ",
        )
        .await;
        s.command(Request::Data).await;
        s.end_of_data(Body::Complete(message.as_bytes().to_vec())).await.replies[0].to_string()
    }

    #[tokio::test]
    async fn a_header_from_the_user_does_not_own_is_refused() {
        let fake = Fake::default();
        let refused = "550 5.7.1 ";
        let accepted = "250 2.0.0 ";
        for (message, expected) in [
            ("From: CEO <ceo@b.test>\r\nSubject: pay\r\n\r\nx\r\n", refused),
            ("From: alice@example.org, ceo@b.test\r\n\r\nx\r\n", refused),
            ("From: alice@example.org\r\nSubject: s\r\nFrom: ceo@b.test\r\n\r\nx\r\n", refused),
            ("From: undisclosed:;\r\n\r\nx\r\n", refused),
            ("From: Alice <Alice@Example.ORG>\r\nSubject: hi\r\n\r\nx\r\n", accepted),
            // Display names and comments name no author.
            ("From: \"ceo@b.test\" <alice@example.org>\r\n\r\nx\r\n", accepted),
            ("From: alice@example.org (ceo@b.test)\r\n\r\nx\r\n", accepted),
            // No From: at all is not signed for anyone.
            ("Subject: no author\r\n\r\nx\r\n", accepted),
        ] {
            let reply = submit_as_alice(&fake, |_| {}, message).await;
            assert!(reply.starts_with(expected), "{message:?}: {reply}");
        }
        assert_eq!(fake.queued.lock().unwrap().len(), 4, "only the accepted ones are queued");
        let reply = submit_as_alice(&fake, |p| p.enforce_header_from = false, "From: ceo@b.test\r\n\r\nx\r\n").await;
        assert!(reply.starts_with("250 2.0.0"), "switched off: {reply}");
    }

    #[tokio::test]
    async fn our_own_authentication_results_are_replaced_and_bare_postmaster_is_accepted() {
        let fake = Fake::default();
        let mut s = session(&fake, Port::Mx, false);
        // The configured postmaster is not a local address here.
        s.policy.postmaster = "postmaster@mx.test".into();
        transcript(
            &mut s,
            "
            C: EHLO c                           S: 250-mx.test
            C: MAIL FROM:<x@remote.test>        S: 250
            C: RCPT TO:<Postmaster> NOTIFY=NEVER  S: 250
            C: RCPT TO:<alice@example.org>      S: 250
            C: DATA                             S: 354
            D: Authentication-Results: MX.test; dkim=pass header.d=bank.test
            D: Authentication-Results: elsewhere.test; spf=pass
            D: Subject: hi
            D:
            D: body
            D: .                                S: 250 2.0.0
            ",
        )
        .await;
        let queued = fake.queued.lock().unwrap();
        let text = String::from_utf8_lossy(&queued[0].1);
        assert!(!text.contains("bank.test"), "{text}");
        assert!(
            text.contains("Authentication-Results: test; none\r\nAuthentication-Results: elsewhere.test; spf=pass\r\n"),
            "{text}"
        );
        assert_eq!(queued[0].0.recipients[0].address, "postmaster@mx.test");
    }

    #[tokio::test]
    async fn too_many_auth_failures_close_the_connection() {
        let fake = Fake::default();
        let mut s = session(&fake, Port::Submission, true);
        s.command(Request::Ehlo { host: "c".into() }).await;
        let bad = "AGFsaWNlQGV4YW1wbGUub3JnAHdyb25n".to_string();
        let step = s.command(Request::Auth { mechanism: AUTH_PLAIN, initial_response: bad.clone() }).await;
        assert_eq!(step.next, Next::Command);
        let step = s.command(Request::Auth { mechanism: AUTH_PLAIN, initial_response: bad }).await;
        assert_eq!(step.next, Next::Close);
        assert_eq!(step.replies.last().map(Reply::code), Some(421));
    }

    #[tokio::test]
    async fn storage_down_is_a_temporary_failure_and_size_is_enforced() {
        let fake = Fake { down: true, ..Default::default() };
        let mut s = session(&fake, Port::Mx, false);
        transcript(
            &mut s,
            "
            C: EHLO c
            S: 250-mx.test
            C: MAIL FROM:<> SIZE=5000
            S: 552 5.3.4
            C: MAIL FROM:<>
            S: 250
            C: RCPT TO:<alice@example.org>
            S: 451 4.3.0
            C: DATA
            S: 554 5.5.1
            C: BDAT 10 LAST
            S: 554 5.5.1
            C: RSET
            S: 250
            C: VRFY alice
            S: 252 2.5.0
            C: NOOP
            S: 250
            C: HELP
            S: 214
            C: EXPN list
            S: 502
            ",
        )
        .await;
        let fake = Fake::default();
        let mut s = session(&fake, Port::Mx, false);
        s.command(Request::Ehlo { host: "c".into() }).await;
        s.command(cmd("MAIL FROM:<a@b.test>")).await;
        s.command(cmd("RCPT TO:<alice@example.org>")).await;
        assert_eq!(s.command(Request::Data).await.next, Next::Data);
        let step = s.end_of_data(Body::TooLarge).await;
        assert_eq!(step.replies[0].to_string(), "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
        assert!(fake.queued.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn dsn_parameters_are_carried_in_the_job() {
        let fake = Fake::default();
        let mut s = session(&fake, Port::Mx, false);
        transcript(
            &mut s,
            "
            C: EHLO c                                                         S: 250-mx.test
            C: MAIL FROM:<x@remote.test> RET=HDRS ENVID=QQ314159 SMTPUTF8      S: 250
            C: RCPT TO:<alice@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;alice@example.org  S: 250
            C: RCPT TO:<bob@example.org> NOTIFY=NEVER                          S: 250
            C: RCPT TO:<bob@example.org> ORCPT=rfc822;bob@example.org+0D+0ADATA  S: 501 5.5.4
            C: DATA                                                           S: 354
            D: x
            D: .                                                              S: 250 2.0.0
            ",
        )
        .await;
        let queued = fake.queued.lock().unwrap();
        let env = &queued[0].0;
        assert_eq!((env.ret.as_str(), env.envid.as_str(), env.smtputf8), ("HDRS", "QQ314159", true));
        assert_eq!(env.recipients[0].notify, 2 | 4);
        assert_eq!(env.recipients[0].orcpt, "rfc822;alice@example.org");
        assert_eq!(env.recipients.len(), 2, "the refused RCPT added nothing");
        assert_eq!(env.recipients[1].notify, 1);
        assert_eq!(env.recipients[1].orcpt, "");
    }

    #[tokio::test]
    async fn ehlo_advertises_extensions() {
        let fake = Fake::default();
        let mut s = session(&fake, Port::Mx, false);
        for bad in ["a\u{1}b", "a\u{1b}[2Jb", "client\u{7f}"] {
            let step = s.command(Request::Ehlo { host: bad.into() }).await;
            assert!(step.replies[0].to_string().starts_with("501 5.5.4"), "{bad:?}");
        }
        let step = s.command(cmd("EHLO a\x0bb")).await;
        assert!(step.replies[0].to_string().starts_with("501 5.5.4"), "{:?}", step.replies);
        let step = s.command(Request::Ehlo { host: "c".into() }).await;
        let text = step.replies[0].to_string();
        for ext in
            ["PIPELINING", "SIZE 1000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN", "STARTTLS"]
        {
            assert!(
                text.contains(&format!("250-{ext}\r\n")) || text.contains(&format!("250 {ext}\r\n")),
                "{ext} in {text}"
            );
        }
        assert!(!text.contains("AUTH"), "{text}");
        s.tls_started(TlsInfo { version: "v".into(), cipher: "c".into() });
        let text = s.command(Request::Ehlo { host: "c".into() }).await.replies[0].to_string();
        assert!(text.contains("AUTH PLAIN LOGIN") || text.contains("AUTH LOGIN PLAIN"), "{text}");
        assert!(!text.contains("STARTTLS"), "{text}");
    }
}
