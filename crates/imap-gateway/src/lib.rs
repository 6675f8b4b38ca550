//! `imap-gateway`: IMAP4rev1 (RFC 3501) in front of the storage service.
//!
//! - [`codec`]: bytes ↔ commands/responses (imap-codec), no I/O;
//! - [`session`] + [`cmd`]: the RFC state machine over a [`store::MailStore`];
//! - [`driver`]: sockets, PROXY protocol, TLS, timeouts, limits, shutdown;
//! - [`config`]: the `ImapConfig`;
//! - [`metrics`]: OpenTelemetry instruments.

pub mod cmd;
pub mod codec;
pub mod compress;
pub mod config;
pub mod driver;
pub mod events;
pub mod metrics;
pub mod session;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

pub use config::ImapConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::driver::Shared;
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::store::grpc::GrpcStore;
use mailfleet_runtime::health::{self, Health};
use mailfleet_runtime::proxy::{self, ProxyError};

/// After the grace period, sessions cut off still get this long to finish a
/// storage call already under way and write their BYE.
const CUT_OFF_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] mailfleet_runtime::tls::TlsError),
    #[error("storage URL: {0}")]
    Storage(#[from] tonic::transport::Error),
    #[error("proxy_protocol: {0}")]
    Proxy(#[from] ProxyError),
}

/// A running gateway: where it listens, and the task that ends after shutdown.
pub struct RunningImap {
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    /// `GET /healthz` endpoint, when configured.
    pub health_addr: Option<SocketAddr>,
    /// Ends after shutdown, once sessions said BYE (or the grace period ran out).
    pub task: JoinHandle<()>,
}

/// Start the gateway against the storage service at `config.storage_url`.
pub async fn serve(config: ImapConfig, shutdown: CancellationToken) -> Result<RunningImap, ServeError> {
    let store = Arc::new(GrpcStore::connect_lazy(&config.storage_url)?);
    let events = Arc::new(EventHub::connect(&config.nats_url, &config.events_prefix).await);
    serve_with_store(config, store, events, shutdown).await
}

/// Start the gateway over any store (tests use the in-memory fake).
pub async fn serve_with_store<S: store::MailStore>(
    config: ImapConfig,
    store: Arc<S>,
    events: Arc<EventHub>,
    shutdown: CancellationToken,
) -> Result<RunningImap, ServeError> {
    let proxy = proxy::Acceptor::new(&config.proxy_protocol, config.proxy_header_timeout)?;
    let tls = TlsAcceptor::from(mailfleet_runtime::tls::server_config(&config.tls)?);
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
    };
    let listener = bind(config.listen).await?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let tls_listener = match config.tls_listen {
        Some(a) => Some(bind(a).await?),
        None => None,
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
    let grace = config.shutdown_grace;
    let proxy_enabled = config.proxy_protocol.enabled;
    let hard = CancellationToken::new();
    let shared =
        Arc::new(Shared { config, store, tls: Some(tls), events, proxy, metrics: Metrics::new(), hard: hard.clone() });
    let tracker = TaskTracker::new();
    let mut loops =
        vec![tokio::spawn(driver::accept_loop(listener, false, shared.clone(), shutdown.clone(), tracker.clone()))];
    if let Some(l) = tls_listener {
        loops.push(tokio::spawn(driver::accept_loop(l, true, shared, shutdown.clone(), tracker.clone())));
    }
    health.set_serving(true);
    tracing::info!(%addr, ?tls_addr, ?health_addr, proxy_protocol = proxy_enabled, "imap-gateway listening");
    let task = tokio::spawn(async move {
        for l in loops {
            let _ = l.await;
        }
        health.set_serving(false);
        // Sessions finish their command and say BYE.
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(?grace, "sessions still busy after the shutdown grace period; cutting them off");
            hard.cancel();
            if tokio::time::timeout(CUT_OFF_WAIT, tracker.wait()).await.is_err() {
                tracing::warn!("sessions still busy; stopping anyway");
            }
        }
        tracing::info!("imap-gateway stopped");
    });
    Ok(RunningImap { addr, tls_addr, health_addr, task })
}
