//! POP3 client side (RFC 1939): response codec and a session.

pub mod client;
pub mod codec;

pub use client::{MsgNum, Pop3Client};

#[derive(Debug, thiserror::Error)]
pub enum Pop3Error {
    #[error("POP3 connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("POP3 syntax: {0}")]
    Syntax(String),
    /// `-ERR` (RFC 1939 §3); the text may carry a RFC 2449 response code.
    #[error("POP3 {command} failed: -ERR {text}")]
    Err { command: &'static str, text: String },
    #[error("a user name or password with CR or LF cannot be sent")]
    Unsendable,
}

impl Pop3Error {
    pub fn key(&self) -> String {
        match self {
            Pop3Error::Io(_) => "io".into(),
            Pop3Error::Syntax(_) => "syntax".into(),
            Pop3Error::Err { command, .. } => format!("{command} -ERR"),
            Pop3Error::Unsendable => "unsendable".into(),
        }
    }
}
