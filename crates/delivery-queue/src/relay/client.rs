//! SMTP client session for relaying (RFC 5321), on tokio.
//!
//! Greeting, EHLO with a HELO fallback (RFC 5321 §3.2), STARTTLS (RFC 3207)
//! when offered or required, PIPELINING (RFC 2920), SIZE (RFC 1870), DSN
//! parameters passed on (RFC 3461), and one transaction for several
//! recipients with a result per recipient. A connection can carry several
//! transactions (connection reuse); the caller decides.
//!
//! TLS: the caller decides per destination ([`super::tls`]) whether
//! STARTTLS is optional or required and how the certificate is checked;
//! a handshake that fails the check ends the connection before MAIL or
//! AUTH. AUTH is sent only over TLS whose certificate was verified (or in
//! plain text to a loopback address, for development).

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::tls::{TlsChecks, Verify};

/// Longest reply line we accept (RFC 5321 §4.5.3.1.5 says 512; be lenient).
const MAX_REPLY_LINE: u64 = 8192;
/// Most lines in one multi-line reply.
const MAX_REPLY_LINES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Use STARTTLS when offered, plain text otherwise.
    Opportunistic,
    /// Fail (temporarily) unless STARTTLS succeeds.
    Required,
    /// Never use TLS.
    Disabled,
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Our name in EHLO/HELO (RFC 5321 §4.1.1.1: the FQDN of the client).
    pub helo_name: String,
    pub tls: TlsMode,
    /// How the certificate is checked when TLS is used.
    pub tls_checks: TlsChecks,
    pub connect_timeout: Duration,
    /// RFC 5321 §4.5.3.2: 5 min for the greeting, MAIL, RCPT; we use one value.
    pub command_timeout: Duration,
    /// RFC 5321 §4.5.3.2.6: 10 min for the reply to the final dot.
    pub data_timeout: Duration,
    /// Log in with AUTH PLAIN (RFC 4954, RFC 4616) after STARTTLS; used
    /// for smarthosts. Credentials never go over plain text off loopback.
    pub auth: Option<Credentials>,
}

#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ username: {:?}, password: <hidden> }}", self.username)
    }
}

/// An SMTP reply: code and text lines (without the code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, text: impl Into<String>) -> Reply {
        Reply { code, lines: vec![text.into()] }
    }
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500 || self.code < 200
    }
    /// RFC 3463 enhanced status from the text (RFC 2034), if any.
    pub fn enhanced(&self) -> Option<String> {
        let first = self.lines.first()?.split_whitespace().next()?;
        let parts: Vec<&str> = first.split('.').collect();
        let ok = parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..].iter().all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        ok.then(|| first.to_string())
    }
    /// The RFC 3463 status for a DSN: the enhanced code, or one derived
    /// from the basic code's class.
    pub fn status(&self) -> String {
        self.enhanced().unwrap_or_else(|| match self.code {
            200..=399 => "2.0.0".into(),
            400..=499 => "4.0.0".into(),
            _ => "5.0.0".into(),
        })
    }
}

impl std::fmt::Display for Reply {
    /// One line: `550 5.1.1 no such user` (continuation lines joined).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" "))
    }
}

/// Parse one reply line: `code[-| ]text`. Returns (code, is_last, text).
pub fn parse_reply_line(line: &str) -> Option<(u16, bool, &str)> {
    let line = line.trim_end_matches(['\r', '\n']);
    let code_str = line.get(..3)?;
    if !code_str.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = code_str.parse().ok()?;
    match line.as_bytes().get(3) {
        None => Some((code, true, "")),
        Some(b' ') => Some((code, true, &line[4..])),
        Some(b'-') => Some((code, false, &line[4..])),
        Some(_) => None,
    }
}

/// What the server offered in its EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub esmtp: bool,
    pub pipelining: bool,
    /// RFC 1870: the fixed maximum, 0 = no limit announced.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub dsn: bool,
    pub enhanced_status_codes: bool,
    /// RFC 4954 SASL mechanisms, uppercase.
    pub auth: Vec<String>,
}

impl Capabilities {
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities { esmtp: true, ..Default::default() };
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "STARTTLS" => caps.starttls = true,
                "DSN" => caps.dsn = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "AUTH" => caps.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
                _ => {}
            }
        }
        caps
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("timeout waiting for {0}")]
    Timeout(&'static str),
    #[error("connection: {0}")]
    Io(String),
    #[error("{stage} rejected: {reply}")]
    Rejected { stage: &'static str, reply: Reply },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("TLS required but the server does not offer STARTTLS")]
    TlsRequired,
    #[error("cannot log in: {0}")]
    Auth(String),
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// A 5xx greeting/EHLO/MAIL rejection is permanent for the whole
    /// transaction; everything else (network, TLS, 4xx) is temporary.
    /// A refused login is our configuration's fault, not the message's:
    /// it stays temporary (the mail waits until the credentials are fixed).
    pub fn permanent_reply(&self) -> Option<&Reply> {
        match self {
            ClientError::Rejected { stage, reply } if reply.is_permanent() && *stage != "AUTH" => Some(reply),
            _ => None,
        }
    }
}

fn io_err(e: std::io::Error) -> ClientError {
    ClientError::Io(e.to_string())
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One recipient of a transaction, with its RFC 3461 parameters.
#[derive(Debug, Clone)]
pub struct RcptTo {
    pub address: String,
    /// Bit set NEVER=1, SUCCESS=2, FAILURE=4, DELAY=8 (0 = not given).
    pub notify: u32,
    pub orcpt: String,
}

/// The envelope of one transaction.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub mail_from: String,
    pub rcpts: Vec<RcptTo>,
    /// Body has octets ≥ 0x80 (RFC 6152 8BITMIME).
    pub eight_bit: bool,
    /// The message needs SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    pub ret: String,
    pub envid: String,
}

/// The outcome for one recipient: the reply that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptResult {
    pub address: String,
    pub reply: Reply,
}

pub struct SmtpConnection {
    stream: BufReader<Box<dyn Io>>,
    pub caps: Capabilities,
    pub tls: bool,
    /// The host name we connected to (Remote-MTA in DSNs).
    pub host: String,
    pub addr: SocketAddr,
    pub greeting: Reply,
    options: ClientOptions,
    /// Transactions sent on this connection.
    pub transactions: u32,
    /// Logged in with AUTH.
    pub authenticated: bool,
    /// TLS with a certificate verified for `host` (not merely encrypted).
    pub verified: bool,
}

/// RFC 3461 §4.2 NOTIFY value from the bit set; None when not given.
pub fn notify_param(bits: u32) -> Option<String> {
    if bits == 0 {
        return None;
    }
    if bits & 1 != 0 {
        return Some("NEVER".into());
    }
    let names: Vec<&str> =
        [(2, "SUCCESS"), (4, "FAILURE"), (8, "DELAY")].iter().filter(|(b, _)| bits & b != 0).map(|(_, n)| *n).collect();
    Some(names.join(","))
}

/// RFC 5321 §2.3.8: CR and LF only as CRLF. A bare LF or a bare CR in the
/// message becomes CRLF (a bare CR would otherwise reach a far side that
/// takes it for a line end, or not, differently from its DKIM verifier).
/// Borrowed when there is nothing to change.
pub fn normalize_line_ends(message: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let bare = |i: usize, b: u8| match b {
        b'\r' => message.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || message[i - 1] != b'\r',
        _ => false,
    };
    if !message.iter().enumerate().any(|(i, &b)| bare(i, b)) {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut out = Vec::with_capacity(message.len() + message.len() / 50 + 2);
    for (i, &b) in message.iter().enumerate() {
        if bare(i, b) {
            out.extend_from_slice(b"\r\n");
        } else {
            out.push(b);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// RFC 5321 §4.5.2: dot-stuffing; lines end in CRLF (bare CR and LF
/// normalised as in [`normalize_line_ends`]); ends with `.CRLF`.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let message = normalize_line_ends(message);
    let mut out = Vec::with_capacity(message.len() + message.len() / 50 + 5);
    let mut at_line_start = true;
    for &b in message.iter() {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// A path (RFC 5321 §4.1.2) goes into a command line only when nothing in
/// it can end the line or the `<…>`: every address in a job was checked
/// by smtp-ingress, and this checks again whatever reached the queue.
fn sendable_path(address: &str) -> bool {
    !address.chars().any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
}

/// Refusal of an envelope that cannot be sent safely (see [`sendable_path`]).
fn unsendable(what: &str) -> ClientError {
    ClientError::Rejected {
        stage: "envelope",
        reply: Reply::new(553, format!("5.1.3 {what} cannot be put in an SMTP command")),
    }
}

impl SmtpConnection {
    /// Connect, read the greeting, EHLO (HELO fallback), STARTTLS per mode.
    pub async fn connect(addr: SocketAddr, host: &str, options: &ClientOptions) -> Result<SmtpConnection, ClientError> {
        let tcp = timeout(options.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout("connect"))?
            .map_err(|e| ClientError::Connect(addr, e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let boxed: Box<dyn Io> = Box::new(tcp);
        let mut conn = SmtpConnection {
            stream: BufReader::new(boxed),
            caps: Capabilities::default(),
            tls: false,
            host: host.to_string(),
            addr,
            greeting: Reply::new(0, ""),
            options: options.clone(),
            transactions: 0,
            authenticated: false,
            verified: false,
        };
        // RFC 5321 §3.1: the 220 greeting; 554 means "no service here".
        let greeting = conn.read_reply("greeting").await?;
        if greeting.code != 220 {
            return Err(ClientError::Rejected { stage: "greeting", reply: greeting });
        }
        conn.greeting = greeting;
        conn.hello().await?;
        if options.tls != TlsMode::Disabled && conn.caps.starttls {
            conn.starttls().await?;
        } else if options.tls == TlsMode::Required {
            let _ = conn.quit().await;
            return Err(ClientError::TlsRequired);
        }
        if let Some(creds) = &options.auth {
            conn.login(creds).await?;
        }
        Ok(conn)
    }

    /// RFC 4954 AUTH with the PLAIN mechanism (RFC 4616): one round trip.
    async fn login(&mut self, creds: &Credentials) -> Result<(), ClientError> {
        use base64::Engine;
        if !self.tls && !self.addr.ip().is_loopback() {
            // RFC 4954 §4 / RFC 8314: no clear-text passwords on the wire.
            return Err(ClientError::Auth("the server offers no TLS; refusing to send the password".into()));
        }
        if self.tls && !self.verified {
            // Encrypted to whom? Only a verified certificate says.
            return Err(ClientError::Auth(
                "the server's certificate was not verified; refusing to send the password".into(),
            ));
        }
        if !self.caps.auth.iter().any(|m| m == "PLAIN") {
            return Err(ClientError::Auth(format!("the server offers no AUTH PLAIN ({:?})", self.caps.auth)));
        }
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{}\0{}", creds.username, creds.password));
        let reply = self.command(&format!("AUTH PLAIN {token}\r\n"), "AUTH").await?;
        if reply.code != 235 {
            return Err(ClientError::Rejected { stage: "AUTH", reply });
        }
        self.authenticated = true;
        Ok(())
    }

    /// EHLO, or HELO when EHLO is not recognised (RFC 5321 §3.2).
    async fn hello(&mut self) -> Result<(), ClientError> {
        let ehlo = self.command(&format!("EHLO {}\r\n", self.options.helo_name), "EHLO").await?;
        if ehlo.code == 250 {
            self.caps = Capabilities::from_ehlo(&ehlo);
            return Ok(());
        }
        if ehlo.code == 421 {
            return Err(ClientError::Rejected { stage: "EHLO", reply: ehlo });
        }
        let helo = self.command(&format!("HELO {}\r\n", self.options.helo_name), "HELO").await?;
        if helo.code != 250 {
            return Err(ClientError::Rejected { stage: "HELO", reply: helo });
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    /// RFC 3207: STARTTLS, handshake, then forget everything and EHLO again.
    async fn starttls(&mut self) -> Result<(), ClientError> {
        let reply = self.command("STARTTLS\r\n", "STARTTLS").await?;
        if reply.code != 220 {
            if self.options.tls == TlsMode::Required {
                return Err(ClientError::Rejected { stage: "STARTTLS", reply });
            }
            // Opportunistic: go on in plain text (RFC 3207 §4.1 allows it).
            tracing::info!(host = %self.host, %reply, "STARTTLS refused; continuing without TLS");
            return Ok(());
        }
        if !self.stream.buffer().is_empty() {
            // RFC 3207 §5: data after the 220 would be injected plaintext.
            return Err(ClientError::Protocol("data pipelined after STARTTLS reply".into()));
        }
        let name = ServerName::try_from(self.host.clone())
            .or_else(|_| ServerName::try_from(self.addr.ip().to_string()))
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let placeholder: Box<dyn Io> = Box::new(placeholder_stream());
        let inner = std::mem::replace(&mut self.stream, BufReader::new(placeholder)).into_inner();
        let connector = tokio_rustls::TlsConnector::from(self.options.tls_checks.config.clone());
        let tls = timeout(self.options.command_timeout, connector.connect(name, inner))
            .await
            .map_err(|_| ClientError::Timeout("TLS handshake"))?
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let boxed: Box<dyn Io> = Box::new(tls);
        self.stream = BufReader::new(boxed);
        self.tls = true;
        self.verified = self.options.tls_checks.verify == Verify::Enforce;
        self.caps = Capabilities::default();
        self.hello().await
    }

    async fn read_reply(&mut self, stage: &'static str) -> Result<Reply, ClientError> {
        let wait = if stage == "end of data" { self.options.data_timeout } else { self.options.command_timeout };
        timeout(wait, self.read_reply_inner()).await.map_err(|_| ClientError::Timeout(stage))?
    }

    async fn read_reply_inner(&mut self) -> Result<Reply, ClientError> {
        let mut lines = Vec::new();
        loop {
            let mut buf = Vec::new();
            let n = (&mut self.stream).take(MAX_REPLY_LINE).read_until(b'\n', &mut buf).await.map_err(io_err)?;
            if n == 0 {
                return Err(ClientError::Io("connection closed by the server".into()));
            }
            let line = String::from_utf8_lossy(&buf);
            let (code, last, text) =
                parse_reply_line(&line).ok_or_else(|| ClientError::Protocol(format!("bad reply line {line:?}")))?;
            // The far side's words end up in DSNs, logs and `mailctl queue
            // list`: its control characters (a bare CR, terminal escapes)
            // do not come along.
            lines.push(text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect());
            if last || lines.len() >= MAX_REPLY_LINES {
                return Ok(Reply { code, lines });
            }
        }
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), ClientError> {
        let w = self.stream.get_mut();
        timeout(self.options.command_timeout, async {
            w.write_all(data).await?;
            w.flush().await
        })
        .await
        .map_err(|_| ClientError::Timeout("write"))?
        .map_err(io_err)
    }

    async fn command(&mut self, line: &str, stage: &'static str) -> Result<Reply, ClientError> {
        self.write(line.as_bytes()).await?;
        self.read_reply(stage).await
    }

    /// Is the connection still usable for another transaction? (RSET probe.)
    pub async fn reset(&mut self) -> Result<(), ClientError> {
        let reply = self.command("RSET\r\n", "RSET").await?;
        if reply.code == 250 { Ok(()) } else { Err(ClientError::Rejected { stage: "RSET", reply }) }
    }

    pub async fn quit(&mut self) -> Result<(), ClientError> {
        let _ = self.command("QUIT\r\n", "QUIT").await?;
        Ok(())
    }

    /// MAIL with the parameters the far side announced. DSN parameters are
    /// encoded again from their decoded form (RFC 3461 §4), never copied;
    /// one that does not check out is left off (with a warning), since the
    /// message can go without it.
    fn mail_command(caps: &Capabilities, env: &Envelope, size: usize) -> Result<String, ClientError> {
        if !sendable_path(&env.mail_from) {
            return Err(unsendable("the sender address"));
        }
        let mut cmd = format!("MAIL FROM:<{}>", env.mail_from);
        if caps.size.is_some() {
            cmd.push_str(&format!(" SIZE={size}"));
        }
        if env.eight_bit && caps.eight_bit_mime {
            cmd.push_str(" BODY=8BITMIME");
        }
        if env.smtputf8 && caps.smtputf8 {
            cmd.push_str(" SMTPUTF8");
        }
        if caps.dsn {
            // RFC 3461 §4.3.
            if env.ret == "FULL" || env.ret == "HDRS" {
                cmd.push_str(&format!(" RET={}", env.ret));
            }
            if !env.envid.is_empty() {
                match mail_types::Envid::new(env.envid.clone()) {
                    Ok(envid) => cmd.push_str(&format!(" ENVID={}", envid.to_param())),
                    Err(e) => tracing::warn!(envid = ?env.envid, error = %e, "ENVID left off"),
                }
            }
        }
        cmd.push_str("\r\n");
        Ok(cmd)
    }

    fn rcpt_command(caps: &Capabilities, r: &RcptTo) -> Result<String, ClientError> {
        if r.address.is_empty() || !sendable_path(&r.address) {
            return Err(unsendable("a recipient address"));
        }
        let mut cmd = format!("RCPT TO:<{}>", r.address);
        if caps.dsn {
            if let Some(n) = notify_param(r.notify) {
                cmd.push_str(&format!(" NOTIFY={n}"));
            }
            if !r.orcpt.is_empty() {
                match mail_types::OriginalRecipient::parse_stored(&r.orcpt) {
                    Ok(orcpt) => cmd.push_str(&format!(" ORCPT={}", orcpt.to_param())),
                    Err(e) => tracing::warn!(orcpt = ?r.orcpt, error = %e, "ORCPT left off"),
                }
            }
        }
        cmd.push_str("\r\n");
        Ok(cmd)
    }

    /// One mail transaction. Recipients refused at RCPT get that reply; the
    /// others get the reply to the final dot. Errors before any per-recipient
    /// decision (MAIL refused, connection lost) are returned as `Err`; a lost
    /// connection after the data was sent but before the reply is `Err` too,
    /// so the whole message is retried (RFC 5321 §4.1.1.4: no reply, no
    /// responsibility taken; a duplicate is possible, a loss is not).
    pub async fn send(&mut self, env: &Envelope, message: &[u8]) -> Result<Vec<RcptResult>, ClientError> {
        self.transactions += 1;
        // Every command is built (and checked) before anything is sent.
        let mail = Self::mail_command(&self.caps, env, message.len())?;
        let rcpts = env.rcpts.iter().map(|r| Self::rcpt_command(&self.caps, r)).collect::<Result<Vec<_>, _>>()?;
        let data = dot_stuff(message);
        let mut rcpt_replies = Vec::with_capacity(env.rcpts.len());
        let mail_reply;
        let data_reply;
        if self.caps.pipelining {
            // RFC 2920 §3.1: MAIL, RCPTs and DATA in one group, DATA last.
            let mut batch = mail;
            for line in &rcpts {
                batch.push_str(line);
            }
            batch.push_str("DATA\r\n");
            self.write(batch.as_bytes()).await?;
            mail_reply = self.read_reply("MAIL").await?;
            for _ in &env.rcpts {
                rcpt_replies.push(self.read_reply("RCPT").await?);
            }
            data_reply = self.read_reply("DATA").await?;
        } else {
            mail_reply = self.command(&mail, "MAIL").await?;
            if mail_reply.code != 250 {
                let _ = self.reset().await;
                return Err(ClientError::Rejected { stage: "MAIL FROM", reply: mail_reply });
            }
            for line in &rcpts {
                rcpt_replies.push(self.command(line, "RCPT").await?);
            }
            if !rcpt_replies.iter().any(|r| r.code == 250 || r.code == 251) {
                let _ = self.reset().await;
                return Ok(rcpt_results(env, &rcpt_replies, None));
            }
            data_reply = self.command("DATA\r\n", "DATA").await?;
        }
        let any_rcpt = rcpt_replies.iter().any(|r| r.code == 250 || r.code == 251);
        if data_reply.code == 354 && (mail_reply.code != 250 || !any_rcpt) {
            // RFC 2920 §3.1: the server took DATA although nothing is valid;
            // end the (empty) data so the session stays in sync.
            self.write(b".\r\n").await?;
            let _ = self.read_reply("end of data").await?;
        }
        if mail_reply.code != 250 {
            let _ = self.reset().await;
            return Err(ClientError::Rejected { stage: "MAIL FROM", reply: mail_reply });
        }
        if !any_rcpt {
            if data_reply.code == 354 {
                return Ok(rcpt_results(env, &rcpt_replies, None));
            }
            let _ = self.reset().await;
            return Ok(rcpt_results(env, &rcpt_replies, None));
        }
        if data_reply.code != 354 {
            let _ = self.reset().await;
            return Ok(rcpt_results(env, &rcpt_replies, Some(&data_reply)));
        }
        self.write(&data).await?;
        let final_reply = self.read_reply("end of data").await?;
        Ok(rcpt_results(env, &rcpt_replies, Some(&final_reply)))
    }
}

fn rcpt_results(env: &Envelope, rcpt_replies: &[Reply], data: Option<&Reply>) -> Vec<RcptResult> {
    env.rcpts
        .iter()
        .zip(rcpt_replies)
        .map(|(r, reply)| {
            let accepted = reply.code == 250 || reply.code == 251;
            let reply = match (accepted, data) {
                (true, Some(d)) => d.clone(),
                // Accepted at RCPT but no data reply: cannot happen with a
                // result; treat as temporary.
                (true, None) => Reply::new(451, "4.3.0 transaction not completed"),
                (false, _) => reply.clone(),
            };
            RcptResult { address: r.address.clone(), reply }
        })
        .collect()
}

/// A closed in-memory stream: a placeholder while the TCP stream is moved
/// into the TLS handshake.
fn placeholder_stream() -> tokio::io::DuplexStream {
    tokio::io::duplex(1).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        assert_eq!(parse_reply_line("250-PIPELINING\r\n"), Some((250, false, "PIPELINING")));
        assert_eq!(parse_reply_line("250 OK\r\n"), Some((250, true, "OK")));
        assert_eq!(parse_reply_line("354\r\n"), Some((354, true, "")));
        assert_eq!(parse_reply_line("25 x"), None);
        assert_eq!(parse_reply_line("abc x"), None);
        let r = Reply::new(550, "5.1.1 <x@y> no such user");
        assert_eq!(r.enhanced().as_deref(), Some("5.1.1"));
        assert_eq!(Reply::new(451, "try later").status(), "4.0.0");
        assert_eq!(r.to_string(), "550 5.1.1 <x@y> no such user");
    }

    #[tokio::test]
    async fn control_characters_in_replies_are_not_kept() {
        let (mut server, client) = tokio::io::duplex(1024);
        let io: Box<dyn Io> = Box::new(client);
        let mut conn = SmtpConnection {
            stream: BufReader::new(io),
            caps: Capabilities::default(),
            tls: false,
            host: "mx.test".into(),
            addr: "127.0.0.1:25".parse().expect("addr"),
            greeting: Reply::new(0, ""),
            options: ClientOptions {
                helo_name: "me.test".into(),
                tls: TlsMode::Disabled,
                tls_checks: crate::relay::tls::TlsTrust::with_roots(test_roots()).expect("trust").checks(Verify::None),
                connect_timeout: std::time::Duration::from_secs(5),
                command_timeout: std::time::Duration::from_secs(5),
                data_timeout: std::time::Duration::from_secs(5),
                auth: None,
            },
            transactions: 0,
            authenticated: false,
            verified: false,
        };
        server.write_all(b"550-5.1.1 gone\x1b[2J\r\n550 5.1.1 really\rX-Evil: 1\r\n").await.expect("write");
        let reply = conn.read_reply("RCPT").await.expect("reply");
        assert_eq!(reply.lines, vec!["5.1.1 gone [2J", "5.1.1 really X-Evil: 1"]);
    }

    /// One self-signed certificate as the only trust anchor.
    fn test_roots() -> rustls::RootCertStore {
        use rustls::pki_types::pem::PemObject;
        let (cert, _) = mailfleet_runtime::tls::generate_self_signed("ca.test").expect("cert");
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes()).flatten());
        roots
    }

    #[test]
    fn ehlo_capabilities() {
        let r = Reply {
            code: 250,
            lines: vec![
                "mx.example".into(),
                "PIPELINING".into(),
                "SIZE 1000".into(),
                "8BITMIME".into(),
                "starttls".into(),
                "DSN".into(),
                "AUTH plain LOGIN".into(),
            ],
        };
        let c = Capabilities::from_ehlo(&r);
        assert_eq!(c.auth, vec!["PLAIN", "LOGIN"]);
        let creds = Credentials { username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{creds:?}").contains("hunter2"), "passwords stay out of logs");
        assert!(c.pipelining && c.eight_bit_mime && c.starttls && c.dsn && !c.smtputf8);
        assert_eq!(c.size, Some(1000));
    }

    #[test]
    fn dsn_parameters_are_encoded_again_and_nothing_breaks_a_command_line() {
        let caps = Capabilities { dsn: true, ..Capabilities::default() };
        let rcpt = |address: &str, orcpt: &str| RcptTo { address: address.into(), notify: 4, orcpt: orcpt.into() };
        let line = |r: RcptTo| SmtpConnection::rcpt_command(&caps, &r).expect("sendable");
        assert_eq!(
            line(rcpt("b@r.test", "rfc822;B+x@R.test")),
            "RCPT TO:<b@r.test> NOTIFY=FAILURE ORCPT=rfc822;B+2Bx@R.test\r\n"
        );
        assert_eq!(
            line(rcpt("b@r.test", "utf-8;jörg@r.test")),
            "RCPT TO:<b@r.test> NOTIFY=FAILURE ORCPT=utf-8;j\\x{F6}rg@r.test\r\n"
        );
        // A job carrying a line break (or a type that is no atom) loses the
        // parameter; it never reaches the far side raw.
        for orcpt in ["rfc822;b@r.test\r\nRCPT TO:<x@evil.test>", "rfc822\r\nDATA;b@r.test", "b@r.test"] {
            assert_eq!(line(rcpt("b@r.test", orcpt)), "RCPT TO:<b@r.test> NOTIFY=FAILURE\r\n", "{orcpt:?}");
        }
        for address in ["b@r.test>\r\nDATA", "b@r.test\n", "a b@r.test", ""] {
            let err = SmtpConnection::rcpt_command(&caps, &rcpt(address, "")).expect_err(address);
            assert!(err.permanent_reply().is_some(), "{err}");
        }
        let env = |mail_from: &str, envid: &str| Envelope {
            mail_from: mail_from.into(),
            rcpts: vec![],
            eight_bit: false,
            smtputf8: false,
            ret: "HDRS".into(),
            envid: envid.into(),
        };
        let mail = |e: Envelope| SmtpConnection::mail_command(&caps, &e, 10);
        assert_eq!(mail(env("a@l.test", "id 1+x")).expect("ok"), "MAIL FROM:<a@l.test> RET=HDRS ENVID=id+201+2Bx\r\n");
        assert_eq!(mail(env("a@l.test", "x\r\nQUIT")).expect("ok"), "MAIL FROM:<a@l.test> RET=HDRS\r\n");
        assert_eq!(mail(env("", "")).expect("null sender"), "MAIL FROM:<> RET=HDRS\r\n");
        assert!(mail(env("a@l.test>\r\nRSET", "")).is_err());
    }

    #[test]
    fn stuffing_and_params() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n..\r\n"), b"a\r\n..b\r\n...\r\n.\r\n");
        assert_eq!(dot_stuff(b".x\nlast"), b"..x\r\nlast\r\n.\r\n");
        // A bare CR ends a line like a bare LF; a dot after it is stuffed too.
        assert_eq!(dot_stuff(b"a\r.b\rc\r\r\nd"), b"a\r\n..b\r\nc\r\n\r\nd\r\n.\r\n");
        assert_eq!(dot_stuff(b"end\r"), b"end\r\n.\r\n");
        assert!(matches!(normalize_line_ends(b"a\r\nb\r\n"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(&*normalize_line_ends(b"\na\rb"), b"\r\na\r\nb");
        assert_eq!(notify_param(0), None);
        assert_eq!(notify_param(1).as_deref(), Some("NEVER"));
        assert_eq!(notify_param(2 | 4).as_deref(), Some("SUCCESS,FAILURE"));
    }
}
