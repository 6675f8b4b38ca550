//! Harness for the end-to-end tests: the real service binaries run as
//! processes (what an operator runs), against the real Postgres and NATS,
//! isolated by a database, NATS subject prefix and JetStream names of their
//! own. Tests drive them with small line-protocol clients (`client`).
//!
//! The binaries are the ones `cargo test --workspace` (scripts/test.sh)
//! builds into the same target directory as this test.

pub mod client;
pub mod nats;
pub mod process;
pub mod sink;

pub use process::{Service, System};
