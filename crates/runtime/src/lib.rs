//! Mechanisms every Mailfleet service needs and nothing else: configuration
//! loading, telemetry, TLS, graceful shutdown, PROXY protocol, a health
//! endpoint, the connection layer every listening service uses, NATS
//! connections, the shared work-queue streams and a gateway's storage
//! session token. No service's config
//! lives here.

// Tests set environment variables (unsafe since Rust 2024); the code itself needs none.
#![cfg_attr(not(test), forbid(unsafe_code))]

pub mod config;
pub mod grpc;
pub mod health;
pub mod listener;
pub mod nats;
pub mod pki;
pub mod proxy;
pub mod ready;
pub mod sasl;
pub mod session;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

#[doc(hidden)]
pub use mimalloc;

/// Make mimalloc the global allocator; every service's `main.rs` says
/// `mailfleet_runtime::service_allocator!();` once. A service allocates
/// and frees buffers per message on several threads, where glibc's malloc
/// spent a few per cent of the CPU (and, for buffers over its mmap
/// threshold, page faults on every message). Built without transparent
/// huge pages (`no_thp`): with them every fresh arena region cost a 2 MiB
/// page zeroed in the page fault, about a tenth of storage's CPU under
/// SMTP load. A macro, not a static here: the allocator is the binary's
/// choice, and tests that count allocations set their own.
#[macro_export]
macro_rules! service_allocator {
    () => {
        #[global_allocator]
        static ALLOCATOR: $crate::mimalloc::MiMalloc = $crate::mimalloc::MiMalloc;
    };
}

/// Install aws-lc-rs as the process-wide rustls provider. Call first thing in
/// `main` (and in tests): if any dependency ever enables `ring` too, rustls
/// would otherwise refuse to pick one at run time.
pub fn init_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
