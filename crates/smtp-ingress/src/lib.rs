//! smtp-ingress: receives mail by SMTP (RFC 5321) on the MX port and by
//! submission (RFC 6409 with STARTTLS, RFC 8314 implicit TLS), stores it
//! through storage and hands a delivery job to JetStream.
//!
//! - [`codec`]: commands in, replies out (smtp-proto), no I/O;
//! - [`session`]: the RFC 5321 state machine over a [`session::Backend`];
//! - [`driver`]: sockets, PROXY protocol, TLS, timeouts, limits, shutdown;
//! - [`backend`]: the real backend (storage gRPC + NATS JetStream);
//! - [`inbound`]: SPF/DKIM/ARC/DMARC for port 25;
//! - [`recipients`]: where local recipients led, remembered briefly;
//! - [`metrics`]: OpenTelemetry instruments.

pub mod backend;
pub mod codec;
pub mod config;
pub mod driver;
pub mod inbound;
pub mod metrics;
pub mod recipients;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::IngressConfig;
use driver::{Listener, Shared};
use mailfleet_runtime::health::{self, Health};
use mailfleet_runtime::proxy::{self, ProxyError};

/// After the grace period, sessions cut off with 421 still get this long to
/// finish a storage or queue call already under way.
const CUT_OFF_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] mailfleet_runtime::tls::TlsError),
    #[error(transparent)]
    Connect(#[from] backend::ConnectError),
    #[error(transparent)]
    Inbound(#[from] inbound::InboundError),
    #[error("proxy_protocol: {0}")]
    Proxy(#[from] ProxyError),
}

/// A running smtp-ingress: the bound addresses and the task that ends after
/// shutdown, once every connection has finished.
pub struct RunningIngress {
    pub mx_addr: Option<SocketAddr>,
    pub submission_addr: Option<SocketAddr>,
    pub submissions_addr: Option<SocketAddr>,
    /// `GET /healthz` endpoint, when configured.
    pub health_addr: Option<SocketAddr>,
    pub task: JoinHandle<()>,
}

/// Start the listeners configured in `config`. When `shutdown` fires the
/// listeners close and idle sessions get 421; messages being received get
/// `config.shutdown_grace` to finish; then `task` ends.
pub async fn serve(config: IngressConfig, shutdown: CancellationToken) -> Result<RunningIngress, ServeError> {
    let proxy = proxy::Acceptor::new(&config.proxy_protocol, config.proxy_header_timeout)?;
    let tls = tokio_rustls::TlsAcceptor::from(mailfleet_runtime::tls::server_config(&config.tls)?);
    let inbound = if config.inbound_auth.enabled {
        Some(inbound::InboundVerifier::new(&config.inbound_auth, &config.hostname)?)
    } else {
        None
    };
    let backend = backend::GrpcBackend::connect(&config, inbound).await?;
    let config = Arc::new(config);
    let shared = Arc::new(Shared::new(config.clone(), backend, tls, proxy, shutdown.clone()));

    let mut running = RunningIngress {
        mx_addr: None,
        submission_addr: None,
        submissions_addr: None,
        health_addr: None,
        task: tokio::spawn(async {}),
    };
    // Everything is bound before anything runs, so a failure leaves nothing behind.
    let mut listeners = Vec::new();
    for (addr, kind) in [
        (config.mx_listen, Listener::Mx),
        (config.submission_listen, Listener::Submission),
        (config.submissions_listen, Listener::Submissions),
    ] {
        let Some(addr) = addr else { continue };
        let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
        let bound = listener.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
        match kind {
            Listener::Mx => running.mx_addr = Some(bound),
            Listener::Submission => running.submission_addr = Some(bound),
            Listener::Submissions => running.submissions_addr = Some(bound),
        }
        listeners.push((listener, kind, bound));
    }
    let health = Health::new();
    if let Some(addr) = config.health_listen {
        let server = health::serve(addr, health.clone(), shutdown.clone())
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        running.health_addr = Some(server.addr);
    }
    let mut loops = Vec::new();
    for (listener, kind, bound) in listeners {
        tracing::info!(%bound, listener = ?kind, "smtp-ingress listening");
        loops.push(tokio::spawn(driver::accept_loop(listener, kind, shared.clone())));
    }
    health.set_serving(true);
    tracing::info!(
        health_addr = ?running.health_addr, proxy_protocol = config.proxy_protocol.enabled, "smtp-ingress serving"
    );
    let grace = config.shutdown_grace;
    running.task = tokio::spawn(async move {
        for l in loops {
            let _ = l.await;
        }
        // Listeners are closed; idle sessions say 421 and go, messages in
        // DATA/BDAT finish and get their reply (RFC 5321 §3.8, STYLE §9).
        health.set_serving(false);
        shared.tracker.close();
        if tokio::time::timeout(grace, shared.tracker.wait()).await.is_err() {
            tracing::warn!(
                ?grace,
                "messages still arriving after the shutdown grace period; cutting them off with 421"
            );
            shared.hard.cancel();
            if tokio::time::timeout(CUT_OFF_WAIT, shared.tracker.wait()).await.is_err() {
                tracing::warn!("sessions still busy; exiting anyway");
            }
        }
        tracing::info!("smtp-ingress stopped");
    });
    Ok(running)
}
