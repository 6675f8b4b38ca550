//! smtp-ingress: receives mail by SMTP (RFC 5321) on the MX port and by
//! submission (RFC 6409 with STARTTLS, RFC 8314 implicit TLS), stores it
//! through storage and hands a delivery job to JetStream.
//!
//! - [`codec`]: commands in, replies out (smtp-proto), no I/O;
//! - [`session`]: the RFC 5321 state machine over a [`session::Backend`];
//! - [`driver`]: sockets, TLS, timeouts, limits;
//! - [`backend`]: the real backend (storage gRPC + NATS JetStream);
//! - [`inbound`]: SPF/DKIM/ARC/DMARC for port 25.

pub mod backend;
pub mod codec;
pub mod config;
pub mod driver;
pub mod inbound;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::IngressConfig;
use driver::{Listener, Shared};

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
}

/// A running smtp-ingress: the bound addresses and the task that ends after
/// shutdown, once every connection has finished.
pub struct RunningIngress {
    pub mx_addr: Option<SocketAddr>,
    pub submission_addr: Option<SocketAddr>,
    pub submissions_addr: Option<SocketAddr>,
    pub task: JoinHandle<()>,
}

/// Start the listeners configured in `config`; stops when `shutdown` fires.
pub async fn serve(config: IngressConfig, shutdown: CancellationToken) -> Result<RunningIngress, ServeError> {
    let tls = tokio_rustls::TlsAcceptor::from(mailfleet_runtime::tls::server_config(&config.tls)?);
    let inbound = if config.inbound_auth.enabled {
        Some(inbound::InboundVerifier::new(&config.inbound_auth, &config.hostname)?)
    } else {
        None
    };
    let backend = backend::GrpcBackend::connect(&config, inbound).await?;
    let config = Arc::new(config);
    let shared = Arc::new(Shared::new(config.clone(), backend, tls, shutdown.clone()));

    let mut running =
        RunningIngress { mx_addr: None, submission_addr: None, submissions_addr: None, task: tokio::spawn(async {}) };
    let mut loops = Vec::new();
    for (addr, kind) in [
        (config.mx_listen, Listener::Mx),
        (config.submission_listen, Listener::Submission),
        (config.submissions_listen, Listener::Submissions),
    ] {
        let Some(addr) = addr else { continue };
        let listener = TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })?;
        let bound = listener.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
        tracing::info!(%bound, listener = ?kind, "smtp-ingress listening");
        match kind {
            Listener::Mx => running.mx_addr = Some(bound),
            Listener::Submission => running.submission_addr = Some(bound),
            Listener::Submissions => running.submissions_addr = Some(bound),
        }
        loops.push(tokio::spawn(driver::accept_loop(listener, kind, shared.clone())));
    }
    running.task = tokio::spawn(async move {
        for l in loops {
            let _ = l.await;
        }
        // Connections finish their command and say 421 (STYLE §9).
        shared.tracker.close();
        shared.tracker.wait().await;
    });
    Ok(running)
}
