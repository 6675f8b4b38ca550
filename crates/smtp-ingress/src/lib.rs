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

// Tests set environment variables (unsafe since Rust 2024); the code itself needs none.
#![cfg_attr(not(test), forbid(unsafe_code))]

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

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::IngressConfig;
use driver::{Listener, Shared};
use mailfleet_runtime::listener::{self, ListenError, ListenerSpec};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] mailfleet_runtime::tls::TlsError),
    #[error(transparent)]
    Connect(#[from] backend::ConnectError),
    #[error(transparent)]
    Inbound(#[from] inbound::InboundError),
    #[error(transparent)]
    Listen(#[from] ListenError),
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
/// `shutdown_grace` to finish; then `task` ends.
pub async fn serve(config: IngressConfig, shutdown: CancellationToken) -> Result<RunningIngress, ServeError> {
    let tls = tokio_rustls::TlsAcceptor::from(mailfleet_runtime::tls::server_config(&config.tls)?);
    let inbound = if config.inbound_auth.enabled {
        Some(inbound::InboundVerifier::new(&config.inbound_auth, &config.hostname)?)
    } else {
        None
    };
    let backend = backend::GrpcBackend::connect(&config, inbound).await?;
    let mut listeners = Vec::new();
    for (addr, kind, implicit_tls) in [
        (config.mx_listen, Listener::Mx, false),
        (config.submission_listen, Listener::Submission, false),
        (config.submissions_listen, Listener::Submissions, true),
    ] {
        if let Some(addr) = addr {
            listeners.push(ListenerSpec { addr, listener: kind, name: metrics::listener_name(kind), implicit_tls });
        }
    }
    let config = Arc::new(config);
    let shared = Arc::new(Shared { config: config.clone(), backend, metrics: metrics::Metrics::new() });
    let running = listener::serve(shared, listeners, &config.connection, Some(tls), shutdown).await?;
    Ok(RunningIngress {
        mx_addr: running.addr(Listener::Mx),
        submission_addr: running.addr(Listener::Submission),
        submissions_addr: running.addr(Listener::Submissions),
        health_addr: running.health_addr,
        task: running.task,
    })
}
