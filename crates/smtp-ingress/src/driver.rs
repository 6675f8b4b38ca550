//! The SMTP side of the connection layer (`mailfleet_runtime::listener`,
//! which binds, reads PROXY headers, caps connections, runs TLS handshakes,
//! bounds writes and drains on shutdown): command and data timeouts,
//! STARTTLS, the pause after a failed AUTH. Bytes in, the session decides,
//! replies out.
//!
//! Shutdown has two stages. `Drain::stopping` (SIGTERM): a session waiting
//! for a command is told `421 4.3.2` (RFC 5321 §3.8) and closed, but a
//! message already in DATA or between BDAT chunks keeps being read and gets
//! its real reply (then the 421). `Drain::cut_off` (the grace period ran
//! out): reads of message text stop too, with the same 421; the client
//! retries the message.

use std::sync::Arc;
use std::time::Duration;

use smtp_proto::request::receiver::DataReceiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use mailfleet_runtime::listener::{self, Connection, ConnectionMetrics, Drain, Refusal, Stream};
use mailfleet_runtime::proxy;

use crate::codec::{CommandReader, LineReader, Parsed, Reply};
use crate::config::IngressConfig;
use crate::metrics::Metrics;
use crate::session::{Backend, Body, Next, Policy, Port, Session, Step};

/// Which listener accepted the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Mx,
    /// STARTTLS submission (587).
    Submission,
    /// Implicit TLS submission (465, RFC 8314 §3.3).
    Submissions,
}

/// Longest SASL response line (RFC 4954 §4 sets no limit; 12 KiB is plenty
/// for PLAIN/LOGIN).
const MAX_AUTH_LINE: usize = 12 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// The SMTP protocol for the connection layer: what every session shares.
pub struct Shared<B> {
    pub config: Arc<IngressConfig>,
    pub backend: B,
    pub metrics: Metrics,
}

impl<B: Backend + Clone + 'static> listener::Protocol for Shared<B> {
    type Listener = Listener;
    const NAME: &'static str = "smtp";
    const SPAN_NAME: &'static str = "smtp session";

    fn refusal(&self, why: Refusal) -> &'static [u8] {
        // RFC 5321 §3.1: 421 instead of the greeting; the client retries.
        match why {
            Refusal::Busy => b"421 4.3.2 Too many connections, try again later\r\n",
            Refusal::TooManyFromClient => b"421 4.7.0 Too many connections from your address\r\n",
        }
    }

    async fn serve(&self, conn: Connection<Listener>) {
        connection(self, conn).await;
    }
}

/// Buffered connection: input not yet consumed, output not yet written.
struct Conn {
    io: Stream,
    inbuf: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
}

enum Input {
    More,
    Eof,
    Timeout,
    Shutdown,
}

impl Conn {
    fn pending(&self) -> &[u8] {
        &self.inbuf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.inbuf.len() {
            self.inbuf.clear();
            self.pos = 0;
        }
    }

    fn push(&mut self, replies: &[Reply]) {
        for r in replies {
            r.write_to(&mut self.out);
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let out = std::mem::take(&mut self.out);
            self.io.write_all(&out).await?;
            self.io.flush().await?;
        }
        Ok(())
    }

    /// RFC 2920 §3.2: replies may wait until the server would block on
    /// input, so a pipelined group is answered in one write.
    async fn fill(&mut self, timeout: Duration, shutdown: &CancellationToken) -> std::io::Result<Input> {
        self.flush().await?;
        if self.pos > 0 {
            self.inbuf.drain(..self.pos);
            self.pos = 0;
        }
        let len = self.inbuf.len();
        self.inbuf.resize(len + READ_CHUNK, 0);
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, self.io.read(&mut self.inbuf[len..])) => Some(r),
            _ = shutdown.cancelled() => None,
        };
        let Some(result) = result else {
            self.inbuf.truncate(len);
            return Ok(Input::Shutdown);
        };
        match result {
            Ok(Ok(0)) => {
                self.inbuf.truncate(len);
                Ok(Input::Eof)
            }
            Ok(Ok(n)) => {
                self.inbuf.truncate(len + n);
                Ok(Input::More)
            }
            Ok(Err(e)) => {
                self.inbuf.truncate(len);
                Err(e)
            }
            Err(_) => {
                self.inbuf.truncate(len);
                Ok(Input::Timeout)
            }
        }
    }
}

/// One session; `client` is the real client (PROXY header applied), used
/// for the loopback exception, SPF and the `Received:` field.
async fn connection<B: Backend + Clone>(shared: &Shared<B>, conn: Connection<Listener>) {
    let Connection { stream, client, listener: kind, drain, metrics } = conn;
    let tls = stream.tls_info();
    let config = &shared.config;
    let policy = Policy {
        hostname: config.hostname.clone(),
        port: if kind == Listener::Mx { Port::Mx } else { Port::Submission },
        max_message_size: config.max_message_size,
        max_recipients: config.max_recipients,
        max_auth_failures: config.connection.max_auth_failures,
        starttls_available: stream.can_start_tls(),
        plaintext_auth_allowed: config.allow_plaintext_auth_on_loopback && client.ip().is_loopback(),
        enforce_sender_ownership: config.enforce_sender_ownership,
        enforce_header_from: config.enforce_header_from,
        verify_inbound: config.inbound_auth.enabled,
        postmaster: if config.postmaster.is_empty() {
            format!("postmaster@{}", config.hostname)
        } else {
            config.postmaster.clone()
        },
    };
    let session = Session::new(policy, shared.backend.clone(), client.ip(), tls);
    let conn = Conn { io: stream, inbuf: Vec::with_capacity(READ_CHUNK), pos: 0, out: Vec::new() };
    if let Err(err) = run(shared, session, conn, kind, &drain, &metrics).await {
        tracing::debug!(error = %err, "connection ended with an I/O error");
    }
}

async fn run<B: Backend>(
    shared: &Shared<B>,
    mut session: Session<B>,
    mut conn: Conn,
    kind: Listener,
    drain: &Drain,
    conn_metrics: &ConnectionMetrics,
) -> std::io::Result<()> {
    let config = &shared.config;
    let idle_timeout = config.connection.idle_timeout;
    let mut commands = CommandReader::default();
    let mut lines = LineReader::default();
    // The message being received (DATA, or BDAT chunks so far).
    let mut message: Vec<u8> = Vec::new();
    let mut first_command = true;
    let mut auth_failures_reported = 0;
    conn.push(&[session.greeting()]);
    let mut next = Next::Command;
    loop {
        let step: Step = match next {
            Next::Command => {
                // A BDAT transfer in progress is a message being received:
                // its remaining chunks are read until the grace period ends.
                let stop = if session.in_chunked_transfer() { drain.cut_off() } else { drain.stopping() };
                if stop.is_cancelled() {
                    // RFC 5321 §3.8: tell the client before closing.
                    conn.push(&[session.shutdown_reply()]);
                    return conn.flush().await;
                }
                if first_command && proxy::looks_like_header(conn.pending()) {
                    // Only configured load balancers may name another client.
                    tracing::info!("PROXY header from an untrusted peer; closing");
                    conn_metrics.rejected("proxy_header");
                    conn.push(&[Reply::new(554, [5, 7, 0], "PROXY header not accepted from your address")]);
                    return conn.flush().await;
                }
                let mut it = conn.pending().iter();
                let before = it.len();
                let parsed = commands.next(&mut it);
                let used = before - it.len();
                conn.consume(used);
                match parsed {
                    Some(Parsed::Command(cmd)) => {
                        first_command = false;
                        let verb = cmd.name();
                        let step = session.command(cmd).instrument(tracing::debug_span!("cmd", verb)).await;
                        if !session.in_transaction() {
                            message = Vec::new();
                        }
                        if let Some(user) = session.user() {
                            tracing::Span::current().record("user", user.address.as_str());
                        }
                        step
                    }
                    Some(Parsed::Error(reply)) => {
                        first_command = false;
                        Step { replies: vec![reply], next: Next::Command }
                    }
                    None => {
                        match conn.fill(idle_timeout, stop).await? {
                            Input::More => {}
                            Input::Eof => return Ok(()),
                            Input::Timeout => {
                                conn_metrics.timed_out("idle");
                                conn.push(&[session.timeout_reply()]);
                                return conn.flush().await;
                            }
                            Input::Shutdown => {
                                conn.push(&[session.shutdown_reply()]);
                                return conn.flush().await;
                            }
                        }
                        continue;
                    }
                }
            }
            Next::AuthLine => {
                let mut it = conn.pending().iter();
                let before = it.len();
                let line = lines.next(&mut it, MAX_AUTH_LINE);
                let used = before - it.len();
                conn.consume(used);
                match line {
                    Some(line) => session.auth_line(line).await,
                    None => {
                        match conn.fill(idle_timeout, drain.stopping()).await? {
                            Input::More => {}
                            Input::Eof => return Ok(()),
                            Input::Timeout => {
                                conn_metrics.timed_out("idle");
                                conn.push(&[session.timeout_reply()]);
                                return conn.flush().await;
                            }
                            Input::Shutdown => {
                                conn.push(&[session.shutdown_reply()]);
                                return conn.flush().await;
                            }
                        }
                        continue;
                    }
                }
            }
            Next::Data => {
                conn.flush().await?;
                // Shutdown does not interrupt a message being received; only
                // the end of the grace period does.
                let body = match read_data(&mut conn, config, drain.cut_off(), std::mem::take(&mut message)).await? {
                    Some(body) => body,
                    None => {
                        conn.push(&[cut_off_reply(drain, &session)]);
                        return conn.flush().await;
                    }
                };
                let step = session.end_of_data(body).await;
                if step.replies.first().map(Reply::code) == Some(250) {
                    shared.metrics.message_received(kind);
                }
                step
            }
            Next::Bdat { size, last } => {
                let max = config.max_message_size;
                let too_large = message.len().saturating_add(size) > max;
                let keep = if too_large { None } else { Some(&mut message) };
                if !read_exact(&mut conn, config, drain.cut_off(), size, keep).await? {
                    conn.push(&[cut_off_reply(drain, &session)]);
                    return conn.flush().await;
                }
                if too_large {
                    // RFC 1870 §6 / RFC 3030 §2: refuse now; the transaction is over.
                    message = Vec::new();
                    session.end_of_data(Body::TooLarge).await
                } else if last {
                    let step = session.end_of_data(Body::Complete(std::mem::take(&mut message))).await;
                    if step.replies.first().map(Reply::code) == Some(250) {
                        shared.metrics.message_received(kind);
                    }
                    step
                } else {
                    Step { replies: vec![session.bdat_chunk_received(size)], next: Next::Command }
                }
            }
            Next::DiscardBdat { size } => {
                if !read_exact(&mut conn, config, drain.cut_off(), size, None).await? {
                    conn.push(&[cut_off_reply(drain, &session)]);
                    return conn.flush().await;
                }
                Step { replies: vec![], next: Next::Command }
            }
            Next::StartTls => {
                conn.flush().await?;
                // RFC 3207 §5 / CVE-2011-0411: nothing sent before the
                // handshake may be taken as a command after it.
                let io = conn.io.start_tls().await?;
                if let Some(info) = io.tls_info() {
                    session.tls_started(info);
                }
                conn = Conn { io, inbuf: Vec::with_capacity(READ_CHUNK), pos: 0, out: Vec::new() };
                commands = CommandReader::default();
                Step { replies: vec![], next: Next::Command }
            }
            Next::Close => {
                return conn.flush().await;
            }
        };
        let failures = session.auth_failures();
        if failures > auth_failures_reported {
            conn_metrics.auth_failed(failures - auth_failures_reported);
            auth_failures_reported = failures;
            // Slow guessing down before the client hears the answer.
            tokio::time::sleep(config.connection.auth_failure_delay).await;
        }
        if step.replies.iter().any(|r| r.code() == 451) {
            // 451 4.3.0: storage or the queue did not answer.
            shared.metrics.dependency_unavailable();
        }
        conn.push(&step.replies);
        next = step.next;
        if next == Next::Close {
            return conn.flush().await;
        }
    }
}

/// Message text stopped arriving in time, or the shutdown grace period ran out.
fn cut_off_reply<B: Backend>(drain: &Drain, session: &Session<B>) -> Reply {
    if drain.cut_off().is_cancelled() { session.shutdown_reply() } else { session.timeout_reply() }
}

/// Read message text up to `<CRLF>.<CRLF>` (dot-unstuffed by smtp-proto's
/// `DataReceiver`, RFC 5321 §4.5.2). Past the size limit the rest is read and
/// dropped (RFC 1870 §6). `None` on timeout or shutdown.
async fn read_data(
    conn: &mut Conn,
    config: &IngressConfig,
    shutdown: &CancellationToken,
    mut message: Vec<u8>,
) -> std::io::Result<Option<Body>> {
    let max = config.max_message_size;
    let mut receiver = DataReceiver::new();
    let mut too_large = false;
    message.clear();
    loop {
        let mut it = conn.pending().iter();
        let before = it.len();
        let done = receiver.ingest(&mut it, &mut message);
        let used = before - it.len();
        conn.consume(used);
        if message.len() > max {
            too_large = true;
        }
        if too_large {
            message.clear();
        }
        if done {
            return Ok(Some(if too_large { Body::TooLarge } else { Body::Complete(message) }));
        }
        match conn.fill(config.timeouts.data_block, shutdown).await? {
            Input::More => {}
            Input::Eof => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Input::Timeout | Input::Shutdown => return Ok(None),
        }
    }
}

/// Read exactly `size` octets (a BDAT chunk), appending them to `keep`
/// or dropping them. `false` on timeout or shutdown.
async fn read_exact(
    conn: &mut Conn,
    config: &IngressConfig,
    shutdown: &CancellationToken,
    mut size: usize,
    mut keep: Option<&mut Vec<u8>>,
) -> std::io::Result<bool> {
    if let Some(buf) = keep.as_deref_mut() {
        buf.reserve(size.min(config.max_message_size));
    }
    loop {
        let take = size.min(conn.pending().len());
        if let Some(buf) = keep.as_deref_mut() {
            buf.extend_from_slice(&conn.pending()[..take]);
        }
        conn.consume(take);
        size -= take;
        if size == 0 {
            return Ok(true);
        }
        match conn.fill(config.timeouts.data_block, shutdown).await? {
            Input::More => {}
            Input::Eof => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Input::Timeout | Input::Shutdown => return Ok(false),
        }
    }
}
