//! The only I/O code: listeners, the PROXY protocol header from a trusted
//! load balancer, implicit TLS and STLS, the autologout timer, connection and
//! line limits, the maildrop lease renewal tick, the health endpoint and
//! shutdown. Bytes
//! go to [`Session::handle_line`]; replies come back through a `BufWriter`
//! that is flushed once the pipelined input is used up (RFC 2449 §6.6).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, field, info_span};

use crate::codec::{self, Line, RespCode};
use crate::config::Pop3Config;
use crate::metrics::Metrics;
use crate::session::{Flow, Lease, Renewal, Session, SessionConfig};
use crate::store::{GrpcStore, MailStore};
use mailfleet_runtime::health::{self, Health};
use mailfleet_runtime::proxy::{self, ProxyError};

/// A TLS handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(transparent)]
    Tls(#[from] mailfleet_runtime::tls::TlsError),
    #[error("storage URL: {0}")]
    StorageUrl(#[from] tonic::transport::Error),
    #[error("proxy_protocol: {0}")]
    Proxy(#[from] ProxyError),
}

/// A gateway serving on real sockets.
pub struct RunningPop3 {
    /// Plain POP3 (STLS) listener.
    pub addr: SocketAddr,
    /// POP3S listener, when configured.
    pub tls_addr: Option<SocketAddr>,
    /// `GET /healthz` endpoint, when configured.
    pub health_addr: Option<SocketAddr>,
    /// Ends after shutdown, once sessions finished (or the grace period ran out).
    pub task: JoinHandle<()>,
}

/// Start the gateway against the storage service at `config.storage_url`.
pub async fn serve(config: Pop3Config, shutdown: CancellationToken) -> Result<RunningPop3, ServeError> {
    let store = Arc::new(GrpcStore::new(&config.storage_url)?);
    serve_with_store(config, store, shutdown).await
}

/// Start the gateway with any [`MailStore`]. Returns once the listeners are bound.
pub async fn serve_with_store<S: MailStore>(
    config: Pop3Config,
    store: Arc<S>,
    shutdown: CancellationToken,
) -> Result<RunningPop3, ServeError> {
    if config.autologout < Duration::from_secs(600) {
        tracing::warn!(autologout = ?config.autologout, "autologout below the 10 minutes RFC 1939 §3 requires");
    }
    let proxy = proxy::Acceptor::new(&config.proxy_protocol, config.proxy_header_timeout)?;
    let tls = if config.tls_enabled {
        Some(TlsAcceptor::from(mailfleet_runtime::tls::server_config(&config.tls)?))
    } else {
        None
    };
    let listener =
        TcpListener::bind(config.listen).await.map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let tls_listener = match (config.tls_listen, &tls) {
        (Some(a), Some(_)) => Some(TcpListener::bind(a).await.map_err(|source| ServeError::Bind { addr: a, source })?),
        _ => None,
    };
    let tls_addr = tls_listener.as_ref().and_then(|l| l.local_addr().ok());
    let health = Health::new();
    let health_addr = match config.health_listen {
        Some(a) => Some(
            health::serve(a, health.clone(), shutdown.clone())
                .await
                .map_err(|source| ServeError::Bind { addr: a, source })?
                .addr,
        ),
        None => None,
    };

    let ctx = Arc::new(Ctx {
        session: Arc::new(SessionConfig::from_config(&config)),
        store,
        tls: tls.clone(),
        autologout: config.autologout,
        max_command_line: config.max_command_line.max(8),
        max_sasl_line: config.max_sasl_line.max(config.max_command_line),
        renew_every: (config.lock_ttl / 3).max(Duration::from_secs(1)),
        shutdown: shutdown.clone(),
        proxy,
        per_client: Arc::new(ClientSlots { max: config.max_connections_per_client, open: Mutex::default() }),
        metrics: Metrics::new(),
    });
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    tracker.spawn(accept_loop(listener, false, ctx.clone(), tracker.clone(), slots.clone()));
    if let Some(l) = tls_listener {
        tracker.spawn(accept_loop(l, true, ctx.clone(), tracker.clone(), slots));
    }
    health.set_serving(true);
    tracing::info!(
        %addr, tls_addr = ?tls_addr, health_addr = ?health_addr, proxy_protocol = config.proxy_protocol.enabled,
        storage = %config.storage_url, "pop3-gateway listening"
    );
    let grace = config.shutdown_grace;
    let task = tokio::spawn(async move {
        shutdown.cancelled().await;
        tracker.close();
        if timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("sessions still open after the shutdown grace period");
        }
    });
    Ok(RunningPop3 { addr, tls_addr, health_addr, task })
}

struct Ctx<S> {
    session: Arc<SessionConfig>,
    store: Arc<S>,
    tls: Option<TlsAcceptor>,
    autologout: Duration,
    max_command_line: usize,
    max_sasl_line: usize,
    renew_every: Duration,
    shutdown: CancellationToken,
    /// Reads the PROXY header from trusted load balancers.
    proxy: proxy::Acceptor,
    per_client: Arc<ClientSlots>,
    metrics: Metrics,
}

/// Open connections per real client address.
struct ClientSlots {
    /// 0: no limit.
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One client's connection slot; given back when dropped.
struct ClientSlot {
    slots: Arc<ClientSlots>,
    ip: IpAddr,
}

impl ClientSlots {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if self.max != 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientSlot { slots: self.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

async fn accept_loop<S: MailStore>(
    listener: TcpListener,
    implicit_tls: bool,
    ctx: Arc<Ctx<S>>,
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
) {
    loop {
        let permit = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (tcp, peer) = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        // `peer` is the TCP peer (the load balancer, when there is one);
        // `client` the real client, after the PROXY header.
        let span = info_span!(
            "conn", proto = "pop3", %peer, client = field::Empty, tls = implicit_tls, user = field::Empty
        );
        tracker.spawn(
            async move {
                let (tcp, client) = match ctx.proxy.accept(tcp, peer).await {
                    Ok(x) => x,
                    Err(e) => {
                        // A trusted balancer that sends no valid header: close.
                        tracing::warn!(error = %e, "PROXY header refused; closing");
                        ctx.metrics.rejected("proxy_header");
                        return;
                    }
                };
                tracing::Span::current().record("client", field::display(client));
                let Some(slot) = ctx.per_client.take(client.ip()) else {
                    tracing::info!(limit = ctx.per_client.max, "too many connections from this client");
                    ctx.metrics.rejected("per_client_limit");
                    if !implicit_tls {
                        let mut tcp = tcp;
                        let reply = codec::err(Some(RespCode::SysTemp), "too many connections from your address");
                        let _ = tcp.write_all(reply.as_bytes()).await;
                        let _ = tcp.shutdown().await;
                    }
                    return;
                };
                ctx.metrics.connection_opened(implicit_tls);
                if let Err(e) = connection(tcp, client, implicit_tls, &ctx).await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                ctx.metrics.connection_closed();
                drop(slot);
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// One session; `client` is the real client (PROXY protocol applied).
async fn connection<S: MailStore>(
    tcp: TcpStream,
    client: SocketAddr,
    implicit_tls: bool,
    ctx: &Ctx<S>,
) -> io::Result<()> {
    let conn = match (&ctx.tls, implicit_tls) {
        (Some(tls), true) => Conn::Tls(Box::new(handshake(tls, tcp).await?)),
        _ => Conn::Plain(tcp),
    };
    // RFC 2595 §2.2 exception for loopback: judged on the real client, so a
    // load balancer on loopback does not make remote clients "local".
    let mut session = Session::new(ctx.session.clone(), implicit_tls, client.ip().is_loopback());
    let result = run(conn, &mut session, ctx).await;
    // Whatever happened, no UPDATE without QUIT: just let go of the maildrop.
    session.abort(ctx.store.as_ref()).await;
    result
}

async fn handshake(tls: &TlsAcceptor, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
    timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
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

async fn run<S: MailStore>(conn: Conn, session: &mut Session, ctx: &Ctx<S>) -> io::Result<()> {
    let store = ctx.store.as_ref();
    let mut io = BufWriter::with_capacity(64 * 1024, conn);
    let mut input = BytesMut::with_capacity(1024);
    // Skipping the rest of an over-long line (RFC 2449 §4).
    let mut discarding = false;
    let mut deadline = Instant::now() + ctx.autologout;
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
                    if session.bad_auths() > failures_before {
                        ctx.metrics.auth_failed(session.bad_auths() - failures_before);
                    }
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
                    let (Some(tls), Conn::Plain(tcp)) = (&ctx.tls, io.into_inner()) else {
                        return Ok(());
                    };
                    io = BufWriter::with_capacity(64 * 1024, Conn::Tls(Box::new(handshake(tls, tcp).await?)));
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
            _ = ctx.shutdown.cancelled() => {
                // Close without UPDATE: marked messages stay (RFC 1939 §6).
                let _ = io.write_all(codec::err(Some(RespCode::SysTemp), "server shutting down").as_bytes()).await;
                let _ = io.flush().await;
                return Ok(());
            }
            _ = sleep_until(deadline) => {
                // RFC 1939 §3: autologout closes without entering UPDATE.
                tracing::info!("autologout");
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
                deadline = Instant::now() + ctx.autologout;
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

/// A client connection, before or after TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
