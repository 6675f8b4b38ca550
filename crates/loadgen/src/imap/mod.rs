//! IMAP client side (RFC 9051, RFC 3501): response codec and a session.

pub mod client;
pub mod codec;

pub use client::{Completion, Idling, ImapClient, Selected};
pub use codec::{FetchData, Response, Untagged};

#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("IMAP connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("IMAP syntax: {0}")]
    Syntax(String),
    /// Tagged NO (RFC 9051 §7.1.2): the command failed.
    #[error("IMAP {command} failed: NO {text}")]
    No { command: String, text: String },
    /// Tagged BAD (§7.1.3): the server did not understand the command.
    #[error("IMAP {command} rejected: BAD {text}")]
    Bad { command: String, text: String },
    /// Untagged BYE (§7.1.5) outside LOGOUT.
    #[error("IMAP server closed the session: BYE {0}")]
    Bye(String),
    #[error("IMAP server did not send the continuation request")]
    NoContinuation,
    #[error("a user name, password or mailbox with CR, LF or NUL cannot be a quoted string")]
    Unquotable,
    #[error("server lacks the {0} capability")]
    Missing(&'static str),
}

impl ImapError {
    /// A short key for counting errors by kind in a result.
    pub fn key(&self) -> String {
        match self {
            ImapError::Io(_) => "io".into(),
            ImapError::Syntax(_) => "syntax".into(),
            ImapError::No { command, .. } => format!("{command} NO"),
            ImapError::Bad { command, .. } => format!("{command} BAD"),
            ImapError::Bye(_) => "BYE".into(),
            ImapError::NoContinuation => "no continuation".into(),
            ImapError::Unquotable => "unquotable".into(),
            ImapError::Missing(c) => format!("missing {c}"),
        }
    }
}
