//! The storage service: the only owner of Postgres and the blob store.
//! Gateways, the queue and mailctl reach it over gRPC (see `proto/`).

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod auth_throttle;
pub mod blob;
pub mod config;
pub mod directory;
pub mod dkim;
pub mod error;
pub mod events;
pub mod locks;
pub mod mailboxes;
pub mod messages;
pub mod mime;
pub mod password;
pub mod server;
pub mod sortkeys;
pub mod sweep;
pub mod threading;

use std::sync::Arc;

use sqlx::PgPool;

pub use config::StorageConfig;
pub use error::{StorageError, StorageResult};
pub use server::{RunningStorage, serve};

/// Everything a request handler needs; cloned cheaply into each service.
pub struct Store {
    pub pool: PgPool,
    pub blobs: Arc<dyn blob::BlobStore>,
    pub events: events::EventPublisher,
    /// For the sweep's look at the queue; `None` without NATS.
    pub jetstream: Option<async_nats::jetstream::Context>,
    pub config: Arc<StorageConfig>,
    /// Failed logins per client address and account (shared through Postgres).
    pub auth_throttle: auth_throttle::AuthThrottle,
    /// Signs and checks session tokens (see `auth::session`).
    pub sessions: auth::session::SessionKeys,
    /// Scheduled sweeps that found another sweep (another replica's, an
    /// operator's) holding the sweep lock and so did nothing.
    pub sweeps_deferred: std::sync::atomic::AtomicU64,
}

/// Embedded migrations (crates/storage/migrations).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
