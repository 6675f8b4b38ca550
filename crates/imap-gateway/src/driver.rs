//! The IMAP side of the connection layer (`mailfleet_runtime::listener`,
//! which binds, reads PROXY headers, caps connections, runs TLS handshakes,
//! bounds writes and drains on shutdown): framing limits, STARTTLS,
//! COMPRESS, IDLE, autologout, pacing. Bytes go to the codec, commands to
//! the session.
//!
//! Shutdown: each session finishes the command it is running — including
//! one still arriving, such as an APPEND literal being uploaded — then gets
//! `* BYE` (RFC 3501 §7.1.5) instead of its next command; an idling session
//! (IDLE, or waiting for a command) gets it at once. When the grace period
//! ends (`Drain::cut_off`), whatever is left gets the BYE too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imap_codec::imap_types::auth::AuthenticateData;
use imap_codec::imap_types::response::{Code, Response, Status, StatusKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info_span};

use mailfleet_runtime::listener::{self, Connection, ConnectionMetrics, Drain, Refusal};
use mailfleet_runtime::proxy;

use crate::codec::{self, Framer, Input, Limits, Mode, StatusKindArg};
use crate::compress::Deflate;
use crate::config::ImapConfig;
use crate::events::{AccountFeed, EventHub, Signal};
use crate::metrics::Metrics;
use crate::session::{Context, Reply, Session, Then};
use crate::store::MailStore;

/// Read buffer per connection.
const READ_CHUNK: usize = 8 * 1024;

/// Which listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// IMAP with STARTTLS (143).
    Imap,
    /// IMAP over implicit TLS (993, RFC 8314).
    Imaps,
}

/// The connection's byte stream, deflated after COMPRESS (RFC 4978).
struct Stream {
    io: listener::Stream,
    deflate: Option<Box<Deflate>>,
}

impl Stream {
    fn new(io: listener::Stream) -> Stream {
        Stream { io, deflate: None }
    }

    /// Read once and hand the (inflated) bytes to the framer; 0 at EOF.
    async fn read_into(&mut self, buf: &mut [u8], framer: &mut Framer) -> std::io::Result<usize> {
        let n = self.io.read(buf).await?;
        let raw = buf.get(..n).unwrap_or_default();
        match &mut self.deflate {
            Some(d) => framer.push(&d.inflate(raw).map_err(std::io::Error::other)?),
            None => framer.push(raw),
        }
        Ok(n)
    }

    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.deflate {
            Some(d) => {
                let compressed = d.deflate(data).map_err(std::io::Error::other)?;
                self.io.write_all(&compressed).await?;
            }
            None => self.io.write_all(data).await?,
        }
        self.io.flush().await
    }
}

/// Token bucket pacing a connection's commands (ARCHITECTURE: command
/// rate limit): over the rate, commands wait instead of failing.
struct Pace {
    tokens: f64,
    last: std::time::Instant,
    rate: f64,
    burst: f64,
}

impl Pace {
    fn new(rate: u32, burst: u32) -> Pace {
        let burst = f64::from(burst.max(1));
        Pace { tokens: burst, last: std::time::Instant::now(), rate: f64::from(rate.max(1)), burst }
    }

    /// How long to wait before the next command may run.
    fn take(&mut self) -> Option<Duration> {
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        self.tokens -= 1.0;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

/// The IMAP protocol for the connection layer: what every session shares.
pub struct Shared<S: MailStore> {
    pub config: ImapConfig,
    pub store: Arc<S>,
    pub events: Arc<EventHub>,
    pub metrics: Metrics,
}

impl<S: MailStore> listener::Protocol for Shared<S> {
    type Listener = Port;
    const NAME: &'static str = "imap";
    const SPAN_NAME: &'static str = "imap session";

    fn refusal(&self, why: Refusal) -> &'static [u8] {
        // RFC 3501 §7.1.5: BYE instead of a greeting; RFC 5530 §3 UNAVAILABLE.
        match why {
            Refusal::Busy => b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
            Refusal::TooManyFromClient => b"* BYE [UNAVAILABLE] Too many connections from your address\r\n",
        }
    }

    async fn serve(&self, conn: Connection<Port>) {
        let Connection { stream, client, drain, metrics, .. } = conn;
        if let Err(e) = connection(Stream::new(stream), client, self, &drain, &metrics).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
    }
}

/// Resolves when the account's feed has news; never without a feed.
/// Quiet: the NATS feed is live and announced no change to this account
/// since the previous look (a change announced from now on counts for the
/// next one).
fn quiet_since_last_look(hub: &EventHub, events: &mut Option<watch::Receiver<Signal>>) -> bool {
    hub.live()
        && events.as_mut().is_some_and(|rx| {
            let changed = rx.has_changed().unwrap_or(true);
            rx.borrow_and_update();
            !changed
        })
}

async fn changed(rx: &mut Option<watch::Receiver<Signal>>) {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// A tagged `NO [UNAVAILABLE]` (RFC 5530 §3): storage did not answer.
fn is_unavailable(response: &Response<'static>) -> bool {
    matches!(response, Response::Status(Status::Tagged(t))
        if t.body.kind == StatusKind::No && t.body.code == Some(codec::code("UNAVAILABLE")))
}

async fn send(stream: &mut Stream, responses: &[Response<'static>]) -> std::io::Result<()> {
    let mut buf = Vec::new();
    for r in responses {
        buf.extend(codec::encode(r));
    }
    stream.write_all(&buf).await
}

/// One session; `peer` is the real client (PROXY header applied).
async fn connection<S: MailStore>(
    mut stream: Stream,
    peer: SocketAddr,
    shared: &Shared<S>,
    drain: &Drain,
    conn_metrics: &ConnectionMetrics,
) -> std::io::Result<()> {
    let config = &shared.config;
    let (shutdown, cut_off) = (drain.stopping(), drain.cut_off());
    let ctx = Context {
        tls: stream.io.is_tls(),
        starttls_available: stream.io.can_start_tls(),
        plaintext_auth_allowed: config.allow_plaintext_auth
            || (config.allow_plaintext_auth_on_loopback && peer.ip().is_loopback()),
        max_auth_failures: config.connection.max_auth_failures,
        client: peer.ip(),
    };
    let mut session = Session::new(shared.store.clone(), ctx);
    let mut framer = Framer::new(config.max_line.saturating_add(config.max_literal));
    let mut mode = Mode::Command;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut user_recorded = false;
    let mut pace = Pace::new(config.commands_per_second, config.command_burst);
    // The autologout clock runs from the client's last input, whatever we
    // sent meanwhile (IDLE updates do not keep a dead client alive).
    let mut last_input = tokio::time::Instant::now();
    let mut first_input = true;
    // A command is being received (e.g. an APPEND literal): shutdown lets it finish.
    let mut in_flight = false;
    // Held while logged in: keeps the account's NATS subscription alive.
    let mut _feed: Option<Arc<AccountFeed>> = None;
    let mut events: Option<watch::Receiver<Signal>> = None;

    // RFC 3501 §7.1.1 greeting, with capabilities to save a round trip.
    let caps = Code::Capability(session.capabilities().try_into().map_err(|_| std::io::Error::other("capabilities"))?);
    stream.write_all(&codec::encode_greeting(Some(caps), "Mailfleet IMAP ready")).await?;

    loop {
        let authenticated = session.account().is_some();
        let limits = if authenticated {
            Limits { line: config.max_line, literals: config.max_literal }
        } else {
            Limits { line: config.max_line_unauthenticated, literals: config.max_literal_unauthenticated }
        };
        let input = framer.next(mode, limits);
        // Shutdown: no new command after the one that just finished, even
        // if the client pipelined more (RFC 3501 §7.1.5 BYE); only one whose
        // upload began before shutdown may still complete.
        if shutdown.is_cancelled() && !in_flight && matches!(input, Input::Command(_) | Input::ContinueLiteral) {
            send(&mut stream, &[codec::bye(None, "Server shutting down")]).await?;
            return Ok(());
        }
        let reply: Reply = match input {
            Input::NeedMore => {
                // Part of a command is buffered: it was sent before shutdown
                // if shutdown has not happened yet.
                if !framer.is_idle() && !shutdown.is_cancelled() {
                    in_flight = true;
                }
                // RFC 3501 §5.4: autologout after at least 30 minutes idle.
                let timeout = if authenticated { config.connection.idle_timeout } else { config.login_timeout };
                let idling = mode == Mode::IdleDone;
                tokio::select! {
                    _ = changed(&mut events), if idling => {
                        // A consumer span in the trace of the change that
                        // storage announced (OTel messaging conventions).
                        let span = info_span!("mail.events process", otel.kind = "consumer", messaging.system = "nats");
                        if let Some(headers) = events.as_ref().and_then(|rx| rx.borrow().headers.clone()) {
                            mailfleet_runtime::telemetry::link_nats(&span, &headers);
                        }
                        let updates = session.idle_update().instrument(span.clone()).await;
                        send(&mut stream, &updates).instrument(span).await?;
                    }
                    _ = tokio::time::sleep(config.idle_poll_interval), if idling => {
                        let updates = session.idle_update().await;
                        send(&mut stream, &updates).await?;
                    }
                    read = tokio::time::timeout_at(last_input + timeout, stream.read_into(&mut buf, &mut framer)) => match read {
                        Err(_) => {
                            conn_metrics.timed_out("idle");
                            send(&mut stream, &[codec::bye(None, "Autologout; idle for too long")]).await?;
                            return Ok(());
                        }
                        Ok(Ok(0)) => return Ok(()),
                        Ok(Ok(n)) => {
                            if first_input && proxy::looks_like_header(buf.get(..n).unwrap_or_default()) {
                                // Only configured load balancers may name another client.
                                tracing::info!("PROXY header from an untrusted peer; closing");
                                conn_metrics.rejected("proxy_header");
                                send(&mut stream, &[codec::bye(None, "PROXY header not accepted from your address")]).await?;
                                return Ok(());
                            }
                            first_input = false;
                            last_input = tokio::time::Instant::now();
                        }
                        Ok(Err(e)) => return Err(e),
                    },
                    // A command partly received (an APPEND upload) is in
                    // flight: it may finish until the grace period ends.
                    _ = shutdown.cancelled(), if !in_flight || idling => {
                        send(&mut stream, &[codec::bye(None, "Server shutting down")]).await?;
                        return Ok(());
                    }
                    _ = cut_off.cancelled() => {
                        send(&mut stream, &[codec::bye(None, "Server shutting down")]).await?;
                        return Ok(());
                    }
                }
                continue;
            }
            Input::ContinueLiteral => {
                in_flight = true;
                send(&mut stream, &[codec::continuation("Ready for literal data")]).await?;
                continue;
            }
            Input::LiteralTooBig { tag, sync: true } => {
                // RFC 7888 §4 / RFC 4469: refuse before the client sends it.
                let r = codec::status(tag, StatusKindArg::No, Some(codec::code("TOOBIG")), "Literal too large");
                send(&mut stream, &[r]).await?;
                continue;
            }
            Input::LiteralTooBig { sync: false, .. } => {
                send(&mut stream, &[codec::bye(Some(codec::code("TOOBIG")), "Literal too large")]).await?;
                return Ok(());
            }
            Input::LineTooLong => {
                tracing::info!(authenticated, "command over its length limit; closing");
                send(&mut stream, &[codec::bye(Some(codec::code("TOOBIG")), "Command too long")]).await?;
                return Ok(());
            }
            Input::Malformed { tag, too_long } => match mode {
                Mode::AuthData => session.auth_data(AuthenticateData::Cancel).await,
                Mode::IdleDone => session.idle_abort(),
                Mode::Command => session.malformed(tag, too_long),
            },
            Input::Command(cmd) => {
                if let Some(wait) = pace.take() {
                    tokio::time::sleep(wait).await;
                }
                let name = cmd.body.name();
                let started = std::time::Instant::now();
                let span = info_span!("cmd", verb = name, tag = cmd.tag.inner());
                // Large outputs are written while the command still runs;
                // the bounded channel holds the session back to the
                // client's pace.
                let (tx, rx) = mpsc::channel::<Vec<u8>>(2);
                let drain = async {
                    // Owned here: a failed write (the client went away or
                    // stopped reading past the write timeout) drops the
                    // receiver, and the command stops producing output.
                    let mut rx = rx;
                    while let Some(chunk) = rx.recv().await {
                        stream.write_all(&chunk).await?;
                    }
                    Ok::<(), std::io::Error>(())
                };
                session.set_quiet(quiet_since_last_look(&shared.events, &mut events));
                let (reply, written) = tokio::join!(session.handle_streaming(cmd, Some(tx)).instrument(span), drain);
                written?;
                shared.metrics.command(name, started.elapsed());
                reply
            }
            Input::AuthData(data) => session.auth_data(data).await,
            Input::IdleDone => {
                session.set_quiet(quiet_since_last_look(&shared.events, &mut events));
                session.idle_done().await
            }
        };
        if reply.delay {
            // The session asks for the pause exactly after a failed login.
            conn_metrics.auth_failed(1);
            tokio::time::sleep(config.connection.auth_failure_delay).await;
        }
        framer.shrink();
        if reply.responses.iter().any(is_unavailable) {
            shared.metrics.dependency_unavailable();
        }
        send(&mut stream, &reply.responses).await?;
        in_flight = false;
        if !user_recorded && let Some(account) = session.account() {
            tracing::Span::current().record("user", account.address.as_str());
            user_recorded = true;
            _feed = shared.events.subscribe(account.id);
            events = _feed.as_ref().map(|f| f.receiver());
        }
        mode = match reply.then {
            Then::Command => Mode::Command,
            Then::AuthData => Mode::AuthData,
            Then::Compress => {
                // RFC 4978 §3: compression starts right after the tagged OK.
                stream.deflate = Some(Box::default());
                Mode::Command
            }
            // A change announced while the IDLE command ran is still
            // unseen on `events`, so the idle loop reports it at once.
            Then::Idle => Mode::IdleDone,
            Then::Close => return Ok(()),
            Then::StartTls => {
                stream = Stream::new(stream.io.start_tls().await?);
                session.tls_started();
                // RFC 3501 §6.2.1 / RFC 7817 §3: anything the client sent
                // before the handshake is discarded (no command injection).
                framer = Framer::new(config.max_line.saturating_add(config.max_literal));
                Mode::Command
            }
        };
    }
}
