//! Mailfleet POP3 gateway: a stateless RFC 1939 front-end (with CAPA,
//! STLS, SASL PLAIN/LOGIN, APOP) over the storage service.
//!
//! - [`codec`]: lines in, [`codec::Command`] out; replies and byte-stuffing. No I/O.
//! - [`session`]: the AUTHORIZATION / TRANSACTION / UPDATE state machine. No sockets.
//! - [`store`]: the [`store::MailStore`] trait the session uses, and its gRPC implementation.
//! - [`driver`]: listeners, TLS, timeouts, limits, shutdown.
//! - [`config`]: the [`Pop3Config`] type.
//! - [`metrics`]: OpenTelemetry instruments (connections, commands, auth failures).

// Tests set environment variables (unsafe since Rust 2024); the code itself needs none.
#![cfg_attr(not(test), forbid(unsafe_code))]

pub mod codec;
pub mod config;
pub mod driver;
pub mod metrics;
pub mod session;
pub mod store;

pub use config::Pop3Config;
pub use driver::{RunningPop3, ServeError, serve, serve_with_store};
