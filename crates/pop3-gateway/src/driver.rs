//! The only I/O code: listeners, implicit TLS and STLS, the autologout
//! timer, line limits, the maildrop lease renewal tick and shutdown. Bytes
//! go to [`Session::handle_line`]; replies come back through a `BufWriter`
//! that is flushed once the pipelined input is used up (RFC 2449 §6.6).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
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
use crate::session::{Flow, Lease, Renewal, Session, SessionConfig};
use crate::store::{GrpcStore, MailStore};

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
}

/// A gateway serving on real sockets.
pub struct RunningPop3 {
    /// Plain POP3 (STLS) listener.
    pub addr: SocketAddr,
    /// POP3S listener, when configured.
    pub tls_addr: Option<SocketAddr>,
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

    let ctx = Arc::new(Ctx {
        session: Arc::new(SessionConfig::from_config(&config)),
        store,
        tls: tls.clone(),
        autologout: config.autologout,
        max_command_line: config.max_command_line.max(8),
        max_sasl_line: config.max_sasl_line.max(config.max_command_line),
        renew_every: (config.lock_ttl / 3).max(Duration::from_secs(1)),
        shutdown: shutdown.clone(),
    });
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    tracker.spawn(accept_loop(listener, false, ctx.clone(), tracker.clone(), slots.clone()));
    if let Some(l) = tls_listener {
        tracker.spawn(accept_loop(l, true, ctx.clone(), tracker.clone(), slots));
    }
    tracing::info!(%addr, tls_addr = ?tls_addr, storage = %config.storage_url, "pop3-gateway listening");
    let grace = config.shutdown_grace;
    let task = tokio::spawn(async move {
        shutdown.cancelled().await;
        tracker.close();
        if timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("sessions still open after the shutdown grace period");
        }
    });
    Ok(RunningPop3 { addr, tls_addr, task })
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
        let span = info_span!("conn", proto = "pop3", %peer, tls = implicit_tls, user = field::Empty);
        tracker.spawn(
            async move {
                if let Err(e) = connection(tcp, peer, implicit_tls, &ctx).await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn connection<S: MailStore>(
    tcp: TcpStream,
    peer: SocketAddr,
    implicit_tls: bool,
    ctx: &Ctx<S>,
) -> io::Result<()> {
    let conn = match (&ctx.tls, implicit_tls) {
        (Some(tls), true) => Conn::Tls(Box::new(handshake(tls, tcp).await?)),
        _ => Conn::Plain(tcp),
    };
    let mut session = Session::new(ctx.session.clone(), implicit_tls, peer.ip().is_loopback());
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
                    let flow = session.handle_line(&line, store, &mut io).instrument(info_span!("cmd", verb)).await?;
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
