//! Mailfleet load generator: SMTP, IMAP and POP3 clients, and scenarios
//! that measure a mail system on loopback (see README.md).
//!
//! Protocol code is split like the gateways: a pure codec per protocol
//! (`*/codec.rs`, bytes in, items out) and a client session over
//! [`conn::Conn`], the only socket code.

#![forbid(unsafe_code)]

pub mod cli;
pub mod conn;
pub mod error;
pub mod imap;
pub mod message;
pub mod pop3;
pub mod procfs;
pub mod report;
pub mod result;
pub mod scenario;
pub mod smtp;
pub mod stats;
pub mod target;
