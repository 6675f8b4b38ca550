//! Mechanisms every Mailfleet service needs and nothing else: configuration
//! loading, telemetry, TLS, graceful shutdown, PROXY protocol, a health
//! endpoint. No service's config lives here.

pub mod config;
pub mod grpc;
pub mod health;
pub mod proxy;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

/// Install aws-lc-rs as the process-wide rustls provider. Call first thing in
/// `main` (and in tests): if any dependency ever enables `ring` too, rustls
/// would otherwise refuse to pick one at run time.
pub fn init_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
