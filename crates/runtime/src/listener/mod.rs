//! One connection layer for every listening service (SMTP, IMAP, POP3, and
//! their implicit-TLS ports). It binds the listeners, reads the PROXY header
//! of a trusted load balancer, applies the connection caps (service-wide
//! and per client address), runs implicit TLS handshakes with a time limit,
//! bounds every write with the write timeout, counts connections, serves
//! the health endpoint and drains in two phases on shutdown. A protocol
//! plugs in with [`Protocol`]: it gets a [`Connection`] (the stream, the
//! real client's address, the drain signals) and runs its session on it.
//!
//! Shutdown: when the `shutdown` token fires the listeners close, health
//! answers 503 and [`Drain::stopping`] fires — sessions finish what they
//! are doing and say goodbye. After `shutdown_grace`, [`Drain::cut_off`]
//! fires: whatever is still running is told to stop now. A last
//! [`CUT_OFF_WAIT`] later the service stops waiting.

mod config;
mod metrics;
mod slots;
mod stream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, field};

pub use config::{ConnectionConfig, RENAMED};
pub use metrics::ConnectionMetrics;
pub use slots::source_of;
pub use stream::{Stream, TlsInfo};

use crate::health::{self, Health};
use crate::proxy::{self, ProxyError};
use slots::Slots;
use stream::TlsUpgrade;

/// After the grace period, sessions that were cut off still get this long
/// to finish a storage call already under way and say goodbye.
pub const CUT_OFF_WAIT: Duration = Duration::from_secs(10);

/// Why a connection is turned away before its session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` are open on the service.
    Busy,
    /// `max_connections_per_ip` are open from this client.
    TooManyFromClient,
}

/// A protocol served by the connection layer.
pub trait Protocol: Send + Sync + 'static {
    /// Which of the protocol's listeners accepted a connection.
    type Listener: Copy + Send + Sync + 'static;
    /// `smtp`, `imap`, `pop3`: in spans, logs and metrics.
    const NAME: &'static str;
    /// The connection span's name in traces (`smtp session`).
    const SPAN_NAME: &'static str;

    /// The one line a plaintext client turned away is told before the
    /// connection closes (on an implicit-TLS port it is just closed).
    fn refusal(&self, why: Refusal) -> &'static [u8];

    /// Run one session to its end.
    fn serve(&self, conn: Connection<Self::Listener>) -> impl Future<Output = ()> + Send;
}

/// One listening socket of a protocol.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSpec<L> {
    pub addr: SocketAddr,
    pub listener: L,
    /// e.g. `submissions`: the `listener` attribute of the metrics.
    pub name: &'static str,
    /// TLS from the first byte (RFC 8314).
    pub implicit_tls: bool,
}

/// A client connection handed to the protocol.
pub struct Connection<L> {
    /// TLS already running on an implicit-TLS port; STARTTLS through
    /// [`Stream::start_tls`].
    pub stream: Stream,
    /// The real client (from the PROXY header behind a load balancer).
    pub client: SocketAddr,
    pub listener: L,
    pub drain: Drain,
    /// Auth failures and timeouts are counted here.
    pub metrics: ConnectionMetrics,
}

/// The two shutdown signals a session watches.
#[derive(Clone)]
pub struct Drain {
    stopping: CancellationToken,
    cut_off: CancellationToken,
}

impl Drain {
    /// SIGTERM: finish the command in progress, then say goodbye.
    pub fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }
    /// The grace period is over: stop whatever is still going on.
    pub fn cut_off(&self) -> &CancellationToken {
        &self.cut_off
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("proxy_protocol: {0}")]
    Proxy(#[from] ProxyError),
    #[error("{0}: an implicit-TLS listener needs a certificate")]
    NoTls(SocketAddr),
}

/// The bound listeners, and the task that ends after shutdown once the
/// sessions are done (or the grace period and the cut-off wait ran out).
pub struct Running<L> {
    pub bound: Vec<(L, SocketAddr)>,
    pub health_addr: Option<SocketAddr>,
    pub task: JoinHandle<()>,
}

impl<L: Copy + PartialEq> Running<L> {
    /// Where `listener` is bound, if it is.
    pub fn addr(&self, listener: L) -> Option<SocketAddr> {
        self.bound.iter().find(|(l, _)| *l == listener).map(|(_, a)| *a)
    }
}

struct Shared<P: Protocol> {
    protocol: Arc<P>,
    proxy: proxy::Acceptor,
    tls: Option<Arc<TlsUpgrade>>,
    slots: Slots,
    write_timeout: Duration,
    drain: Drain,
    metrics: ConnectionMetrics,
    tracker: TaskTracker,
}

/// Bind every listener (all or none), then serve `protocol` on them until
/// `shutdown` fires.
pub async fn serve<P: Protocol>(
    protocol: Arc<P>,
    listeners: Vec<ListenerSpec<P::Listener>>,
    config: &ConnectionConfig,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
) -> Result<Running<P::Listener>, ListenError> {
    let proxy = proxy::Acceptor::new(&config.proxy_protocol, config.proxy_header_timeout)?;
    let mut bound_listeners = Vec::new();
    for spec in listeners {
        if spec.implicit_tls && tls.is_none() {
            return Err(ListenError::NoTls(spec.addr));
        }
        let bind = |source| ListenError::Bind { addr: spec.addr, source };
        let listener = TcpListener::bind(spec.addr).await.map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        bound_listeners.push((listener, spec, addr));
    }
    let health = Health::new();
    let health_addr = match config.health_listen {
        Some(addr) => Some(
            health::serve(addr, health.clone(), shutdown.clone())
                .await
                .map_err(|source| ListenError::Bind { addr, source })?
                .addr,
        ),
        None => None,
    };
    let shared = Arc::new(Shared {
        protocol,
        proxy,
        tls: tls.map(|acceptor| Arc::new(TlsUpgrade { acceptor, timeout: config.tls_handshake_timeout })),
        slots: Slots::new(config.max_connections, config.max_connections_per_ip),
        write_timeout: config.write_timeout,
        // The service's shutdown token itself: sessions see it at once.
        drain: Drain { stopping: shutdown.clone(), cut_off: CancellationToken::new() },
        metrics: ConnectionMetrics::new(P::NAME),
        tracker: TaskTracker::new(),
    });
    let mut bound = Vec::new();
    let mut loops = Vec::new();
    for (listener, spec, addr) in bound_listeners {
        tracing::info!(protocol = P::NAME, listener = spec.name, %addr, "listening");
        bound.push((spec.listener, addr));
        loops.push(tokio::spawn(accept_loop(listener, spec, shared.clone(), shutdown.clone())));
    }
    health.set_serving(true);
    let grace = config.shutdown_grace;
    let task = tokio::spawn(async move {
        for l in loops {
            let _ = l.await;
        }
        health.set_serving(false);
        shared.tracker.close();
        if tokio::time::timeout(grace, shared.tracker.wait()).await.is_err() {
            tracing::warn!(
                ?grace,
                protocol = P::NAME,
                "sessions still busy after the shutdown grace period; cutting them off"
            );
            shared.drain.cut_off.cancel();
            if tokio::time::timeout(CUT_OFF_WAIT, shared.tracker.wait()).await.is_err() {
                tracing::warn!(protocol = P::NAME, "sessions still busy; stopping anyway");
            }
        }
        tracing::info!(protocol = P::NAME, "stopped");
    });
    Ok(Running { bound, health_addr, task })
}

async fn accept_loop<P: Protocol>(
    listener: TcpListener,
    spec: ListenerSpec<P::Listener>,
    shared: Arc<Shared<P>>,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // `peer` is the TCP peer (the load balancer, when there is one);
        // `client` the real client, from the PROXY header.
        let span = tracing::info_span!(
            "conn", otel.name = P::SPAN_NAME, otel.kind = "server", proto = P::NAME, listener = spec.name,
            %peer, client = field::Empty, user = field::Empty
        );
        let shared2 = shared.clone();
        shared.tracker.spawn(handle(shared2, tcp, peer, spec).instrument(span));
    }
}

async fn handle<P: Protocol>(
    shared: Arc<Shared<P>>,
    tcp: TcpStream,
    peer: SocketAddr,
    spec: ListenerSpec<P::Listener>,
) {
    let Some(_total) = shared.slots.take_total() else {
        tracing::info!("max_connections reached; refusing");
        shared.metrics.rejected("max_connections");
        refuse(&shared, tcp, &spec, Refusal::Busy).await;
        return;
    };
    let (tcp, client) = match shared.proxy.accept(tcp, peer).await {
        Ok(x) => x,
        Err(e) => {
            // A trusted balancer that sends no valid header: close without
            // a greeting (there is no client to talk to).
            tracing::warn!(error = %e, "PROXY header refused; closing");
            shared.metrics.rejected("proxy_header");
            return;
        }
    };
    tracing::Span::current().record("client", field::display(client));
    // Limits count real clients, not the balancer.
    let Some(_per_ip) = shared.slots.take_ip(client.ip()) else {
        tracing::info!("max_connections_per_ip reached; refusing");
        shared.metrics.rejected("max_connections_per_ip");
        refuse(&shared, tcp, &spec, Refusal::TooManyFromClient).await;
        return;
    };
    let mut stream = Stream::plain(tcp, shared.write_timeout, shared.tls.clone(), shared.metrics.clone());
    if spec.implicit_tls {
        stream = match stream.start_tls().await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(error = %e, "TLS handshake failed");
                return;
            }
        };
    }
    shared.metrics.opened(spec.name);
    let conn = Connection {
        stream,
        client,
        listener: spec.listener,
        drain: shared.drain.clone(),
        metrics: shared.metrics.clone(),
    };
    shared.protocol.serve(conn).await;
    shared.metrics.closed();
}

/// Tell a plaintext client why it is turned away; close either way.
async fn refuse<P: Protocol>(shared: &Shared<P>, mut tcp: TcpStream, spec: &ListenerSpec<P::Listener>, why: Refusal) {
    if !spec.implicit_tls {
        let line = shared.protocol.refusal(why);
        let _ = tokio::time::timeout(shared.write_timeout, async {
            tcp.write_all(line).await?;
            tcp.shutdown().await
        })
        .await;
    }
}

#[cfg(test)]
mod tests;
