//! SMTP client side (RFC 5321): reply codec and a session that sends mail.

pub mod client;
pub mod codec;

pub use client::{Outcome, SmtpClient, Stage, Transaction};
pub use codec::Reply;

#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    #[error("SMTP connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("SMTP syntax: {0}")]
    Syntax(String),
    /// A reply that ends the session (not a per-message refusal).
    #[error("SMTP {command} refused: {} {}", reply.code, reply.text())]
    Refused { command: &'static str, reply: Reply },
    /// RFC 5321 §3.8: 421, the server is closing the channel.
    #[error("SMTP server closing: 421 {}", .0.text())]
    Closing(Reply),
}

impl SmtpError {
    /// A short key for counting errors by kind in a result.
    pub fn key(&self) -> String {
        match self {
            SmtpError::Io(_) => "io".into(),
            SmtpError::Syntax(_) => "syntax".into(),
            SmtpError::Refused { command, reply } => format!("{command} {}", reply.code),
            SmtpError::Closing(_) => "421".into(),
        }
    }
}
