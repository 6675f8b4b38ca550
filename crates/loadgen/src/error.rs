//! Errors that stop a scenario before it can measure anything. Failures
//! during a run are counted in the result instead (see `result.rs`).

use std::path::PathBuf;

use crate::imap::ImapError;
use crate::message::SizeError;
use crate::pop3::Pop3Error;
use crate::smtp::SmtpError;
use crate::target::TargetError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Size(#[from] SizeError),
    #[error(transparent)]
    Smtp(#[from] SmtpError),
    #[error(transparent)]
    Imap(#[from] ImapError),
    #[error(transparent)]
    Pop3(#[from] Pop3Error),
    #[error("{0}")]
    Usage(String),
    #[error("the {0} s deadline passed while {1}")]
    Deadline(u64, &'static str),
    #[error("reading /proc: {0}")]
    Proc(std::io::Error),
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, source: std::io::Error },
    #[error("{}: not loadgen JSON: {source}", path.display())]
    Json { path: PathBuf, source: serde_json::Error },
}
