//! `imap-gateway`: IMAP4rev1 (RFC 3501) in front of the storage service.
//!
//! - [`codec`]: bytes ↔ commands/responses (imap-codec), no I/O;
//! - [`session`] + [`cmd`]: the RFC state machine over a [`store::MailStore`];
//! - [`driver`]: sockets, TLS, timeouts, limits;
//! - [`config`]: the `ImapConfig`.

pub mod cmd;
pub mod codec;
pub mod compress;
pub mod config;
pub mod driver;
pub mod events;
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
use crate::store::grpc::GrpcStore;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] mailfleet_runtime::tls::TlsError),
    #[error("storage URL: {0}")]
    Storage(#[from] tonic::transport::Error),
}

/// A running gateway: where it listens, and the task that ends after shutdown.
pub struct RunningImap {
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
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
    let shared = Arc::new(Shared { config, store, tls: Some(tls), events });
    let tracker = TaskTracker::new();
    let mut loops =
        vec![tokio::spawn(driver::accept_loop(listener, false, shared.clone(), shutdown.clone(), tracker.clone()))];
    if let Some(l) = tls_listener {
        loops.push(tokio::spawn(driver::accept_loop(l, true, shared, shutdown.clone(), tracker.clone())));
    }
    tracing::info!(%addr, ?tls_addr, "imap-gateway listening");
    let task = tokio::spawn(async move {
        for l in loops {
            let _ = l.await;
        }
        tracker.close();
        tracker.wait().await;
    });
    Ok(RunningImap { addr, tls_addr, task })
}
