//! `imap-gateway`: IMAP4rev1 (RFC 3501) in front of the storage service.
//!
//! - [`codec`]: bytes ↔ commands/responses (imap-codec), no I/O;
//! - [`session`] + [`cmd`]: the RFC state machine over a [`store::MailStore`];
//! - [`driver`]: sockets, PROXY protocol, TLS, timeouts, limits, shutdown;
//! - [`config`]: the `ImapConfig`;
//! - [`metrics`]: OpenTelemetry instruments.

// Tests set environment variables (unsafe since Rust 2024); the code itself needs none.
#![cfg_attr(not(test), forbid(unsafe_code))]

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
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::driver::{Port, Shared};
use crate::events::EventHub;
use crate::metrics::Metrics;
use crate::store::grpc::GrpcStore;
use mailfleet_runtime::listener::{self, ListenError, ListenerSpec};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("TLS: {0}")]
    Tls(#[from] mailfleet_runtime::tls::TlsError),
    #[error("storage URL: {0}")]
    Storage(#[from] mailfleet_runtime::grpc::GrpcError),
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
    let store = Arc::new(GrpcStore::connect_lazy(&config.storage_url, &config.identity)?);
    config.identity.report_expiry("imap-gateway");
    let events = Arc::new(EventHub::connect(&config.nats_url, &config.nats_tls, &config.events_prefix).await);
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
    let mut listeners =
        vec![ListenerSpec { addr: config.listen, listener: Port::Imap, name: "imap", implicit_tls: false }];
    if let Some(addr) = config.tls_listen {
        listeners.push(ListenerSpec { addr, listener: Port::Imaps, name: "imaps", implicit_tls: true });
    }
    let connection = config.connection.clone();
    let listen = config.listen;
    let shared = Arc::new(Shared { config, store, events, metrics: Metrics::new() });
    let running = listener::serve(shared, listeners, &connection, Some(tls), shutdown).await?;
    Ok(RunningImap {
        addr: running.addr(Port::Imap).ok_or(ListenError::NoTls(listen))?,
        tls_addr: running.addr(Port::Imaps),
        health_addr: running.health_addr,
        task: running.task,
    })
}
