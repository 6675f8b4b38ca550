//! The POP3 side of the connection layer (`mailfleet_runtime::listener`,
//! which binds, reads PROXY headers, caps connections, runs TLS handshakes,
//! bounds writes and drains on shutdown): the autologout timer, line
//! limits, STLS, the maildrop lease renewal tick. Bytes go to
//! [`Session::handle_line`]; replies come back through a `BufWriter` that is
//! flushed once the pipelined input is used up (RFC 2449 §6.6).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span};

use crate::codec::{self, Line, RespCode};
use crate::config::Pop3Config;
use crate::metrics::Metrics;
use crate::session::{Flow, Lease, Renewal, Session, SessionConfig};
use crate::store::{GrpcStore, MailStore};
use mailfleet_runtime::listener::{
    self, Connection, ConnectionMetrics, Drain, ListenError, ListenerSpec, Refusal, Stream,
};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Tls(#[from] mailfleet_runtime::tls::TlsError),
    #[error("storage URL: {0}")]
    StorageUrl(#[from] mailfleet_runtime::grpc::GrpcError),
}

/// A gateway serving on real sockets.
pub struct RunningPop3 {
    /// Plain POP3 (STLS) listener.
    pub addr: std::net::SocketAddr,
    /// POP3S listener, when configured.
    pub tls_addr: Option<std::net::SocketAddr>,
    /// `GET /healthz` endpoint, when configured.
    pub health_addr: Option<std::net::SocketAddr>,
    /// Ends after shutdown, once sessions finished (or the grace period ran out).
    pub task: JoinHandle<()>,
}

/// Which listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// POP3 with STLS (110).
    Pop3,
    /// POP3 over implicit TLS (995, RFC 8314).
    Pop3s,
}

/// Start the gateway against the storage service at `config.storage_url`.
pub async fn serve(config: Pop3Config, shutdown: CancellationToken) -> Result<RunningPop3, ServeError> {
    let store = Arc::new(GrpcStore::new(&config.storage_url, &config.identity)?);
    config.identity.report_expiry("pop3-gateway");
    serve_with_store(config, store, shutdown).await
}

/// Start the gateway with any [`MailStore`]. Returns once the listeners are bound.
pub async fn serve_with_store<S: MailStore>(
    config: Pop3Config,
    store: Arc<S>,
    shutdown: CancellationToken,
) -> Result<RunningPop3, ServeError> {
    let idle_timeout = config.connection.idle_timeout;
    if idle_timeout < Duration::from_secs(600) {
        tracing::warn!(?idle_timeout, "autologout below the 10 minutes RFC 1939 §3 requires");
    }
    let tls = if config.tls_enabled {
        Some(TlsAcceptor::from(mailfleet_runtime::tls::server_config(&config.tls)?))
    } else {
        None
    };
    let mut listeners =
        vec![ListenerSpec { addr: config.listen, listener: Port::Pop3, name: "pop3", implicit_tls: false }];
    if let (Some(addr), Some(_)) = (config.tls_listen, &tls) {
        listeners.push(ListenerSpec { addr, listener: Port::Pop3s, name: "pop3s", implicit_tls: true });
    }
    let protocol = Arc::new(Pop3 {
        session: Arc::new(SessionConfig::from_config(&config)),
        store,
        idle_timeout,
        max_command_line: config.max_command_line.max(8),
        max_sasl_line: config.max_sasl_line.max(config.max_command_line),
        renew_every: (config.lock_ttl / 3).max(Duration::from_secs(1)),
        metrics: Metrics::new(),
    });
    let running = listener::serve(protocol, listeners, &config.connection, tls, shutdown).await?;
    tracing::info!(storage = %config.storage_url, "pop3-gateway serving");
    Ok(RunningPop3 {
        addr: running.addr(Port::Pop3).ok_or(ListenError::NoTls(config.listen))?,
        tls_addr: running.addr(Port::Pop3s),
        health_addr: running.health_addr,
        task: running.task,
    })
}

/// The POP3 protocol for the connection layer: what every session shares.
struct Pop3<S> {
    session: Arc<SessionConfig>,
    store: Arc<S>,
    idle_timeout: Duration,
    max_command_line: usize,
    max_sasl_line: usize,
    renew_every: Duration,
    metrics: Metrics,
}

impl<S: MailStore> listener::Protocol for Pop3<S> {
    type Listener = Port;
    const NAME: &'static str = "pop3";
    const SPAN_NAME: &'static str = "pop3 session";

    fn refusal(&self, why: Refusal) -> &'static [u8] {
        // RFC 3206 §4: [SYS/TEMP], a temporary problem; try again later.
        match why {
            Refusal::Busy => b"-ERR [SYS/TEMP] too many connections, try again later\r\n",
            Refusal::TooManyFromClient => b"-ERR [SYS/TEMP] too many connections from your address\r\n",
        }
    }

    async fn serve(&self, conn: Connection<Port>) {
        let Connection { stream, client, drain, metrics, .. } = conn;
        // RFC 2595 §2.2 exception for loopback: judged on the real client, so a
        // load balancer on loopback does not make remote clients "local".
        let mut session = Session::new(self.session.clone(), stream.is_tls(), client.ip());
        if let Err(e) = run(stream, &mut session, self, &drain, &metrics).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        // Whatever happened (QUIT, EOF, a write that timed out), no UPDATE
        // without QUIT: just let go of the maildrop.
        session.abort(self.store.as_ref()).await;
    }
}

/// The verb of a command line, for the command span (never its arguments).
fn verb_of(line: &[u8], sasl: bool) -> String {
    if sasl {
        return "SASL".into();
    }
    let word = line.split(|&b| b == b' ' || b == b'\r' || b == b'\n').next().unwrap_or_default();
    if (1..=4).contains(&word.len()) && word.iter().all(u8::is_ascii_alphabetic) {
        String::from_utf8_lossy(word).to_ascii_uppercase()
    } else {
        "?".into()
    }
}

async fn run<S: MailStore>(
    stream: Stream,
    session: &mut Session,
    ctx: &Pop3<S>,
    drain: &Drain,
    conn_metrics: &ConnectionMetrics,
) -> io::Result<()> {
    let store = ctx.store.as_ref();
    let mut io = BufWriter::with_capacity(64 * 1024, stream);
    let mut input = BytesMut::with_capacity(1024);
    // Skipping the rest of an over-long line (RFC 2449 §4).
    let mut discarding = false;
    let mut deadline = Instant::now() + ctx.idle_timeout;
    let mut renewer: Option<Renewer> = None;

    io.write_all(session.greeting().as_bytes()).await?;
    io.flush().await?;
    loop {
        // Answer every complete line already received, in order (pipelining).
        loop {
            if discarding {
                match input.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        input.advance(i + 1);
                        discarding = false;
                    }
                    None => {
                        input.clear();
                        break;
                    }
                }
            }
            let limit = if session.in_sasl() { ctx.max_sasl_line } else { ctx.max_command_line };
            let flow = match codec::next_line(&input, limit) {
                Line::NeedMore => break,
                Line::TooLong => {
                    discarding = true;
                    session.line_too_long(&mut io).await?
                }
                Line::Complete(n) => {
                    let line = input.split_to(n);
                    let verb = verb_of(&line, session.in_sasl());
                    ctx.metrics.command(&verb);
                    let failures_before = session.bad_auths();
                    let flow = session.handle_line(&line, store, &mut io).instrument(info_span!("cmd", verb)).await?;
                    conn_metrics.auth_failed(session.bad_auths() - failures_before);
                    if let Some(user) = session.user() {
                        tracing::Span::current().record("user", user);
                    }
                    flow
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Close => {
                    io.flush().await?;
                    let _ = io.shutdown().await;
                    return Ok(());
                }
                Flow::StartTls => {
                    io.flush().await?;
                    // RFC 2595 §4 / CVE-2011-0411: nothing sent before the
                    // handshake may be treated as sent under TLS.
                    input.clear();
                    io = BufWriter::with_capacity(64 * 1024, io.into_inner().start_tls().await?);
                    session.tls_started();
                    break;
                }
            }
        }
        io.flush().await?;

        if renewer.is_none()
            && let Some(lease) = session.lease()
        {
            renewer = Some(Renewer::spawn(ctx.store.clone(), lease, ctx.renew_every));
        }
        let lost = async {
            match &renewer {
                Some(r) => r.lost.cancelled().await,
                None => std::future::pending().await,
            }
        };
        input.reserve(4096);
        tokio::select! {
            _ = drain.stopping().cancelled() => {
                // Close without UPDATE: marked messages stay (RFC 1939 §6).
                let _ = io.write_all(codec::err(Some(RespCode::SysTemp), "server shutting down").as_bytes()).await;
                let _ = io.flush().await;
                return Ok(());
            }
            _ = sleep_until(deadline) => {
                // RFC 1939 §3: autologout closes without entering UPDATE.
                tracing::info!("autologout");
                conn_metrics.timed_out("idle");
                let _ = io.write_all(codec::err(None, "autologout timer expired, closing").as_bytes()).await;
                let _ = io.flush().await;
                return Ok(());
            }
            _ = lost => {
                tracing::warn!("maildrop lease lost to another session; closing");
                let _ = io.write_all(codec::err(Some(RespCode::InUse), "maildrop lock lost, closing").as_bytes()).await;
                let _ = io.flush().await;
                return Ok(());
            }
            read = io.read_buf(&mut input) => {
                if read? == 0 {
                    return Ok(()); // EOF without QUIT: no UPDATE.
                }
                deadline = Instant::now() + ctx.idle_timeout;
            }
        }
    }
}

/// Renews the maildrop lease every `every` while the session lives, in its
/// own task so a long RETR cannot let it lapse. Stops when dropped.
struct Renewer {
    task: JoinHandle<()>,
    /// Cancelled when another session took the maildrop.
    lost: CancellationToken,
}

impl Renewer {
    fn spawn<S: MailStore>(store: Arc<S>, lease: Lease, every: Duration) -> Renewer {
        let lost = CancellationToken::new();
        let signal = lost.clone();
        let task = tokio::spawn(
            async move {
                loop {
                    tokio::time::sleep(every).await;
                    match lease.renew(store.as_ref()).await {
                        Renewal::Held => {}
                        Renewal::Released => return,
                        Renewal::Lost => {
                            signal.cancel();
                            return;
                        }
                    }
                }
            }
            .in_current_span(),
        );
        Renewer { task, lost }
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
