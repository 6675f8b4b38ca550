//! Storage errors and their one mapping to gRPC status codes (the codes are
//! documented at the top of proto/mailfleet/storage/v1/storage.proto).

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    OverQuota(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("authentication failed")]
    AuthFailed,
    #[error("account disabled")]
    Disabled,
    /// The auth throttle refused the attempt unchecked.
    #[error("too many failed logins; try again later")]
    Throttled,
    #[error("{0}")]
    Locked(String),
    /// The call's session token does not allow it (PERMISSION_DENIED).
    #[error(transparent)]
    Session(#[from] crate::auth::session::TokenError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("blob store: {0}")]
    Blob(#[from] std::io::Error),
    #[error("internal: {0}")]
    Internal(String),
    #[error("{0}")]
    Unavailable(String),
}

pub type StorageResult<T> = Result<T, StorageError>;

impl From<StorageError> for Status {
    fn from(err: StorageError) -> Status {
        let code = match &err {
            StorageError::NotFound(_) => Code::NotFound,
            StorageError::AlreadyExists(_) => Code::AlreadyExists,
            StorageError::InvalidArgument(_) => Code::InvalidArgument,
            StorageError::OverQuota(_) => Code::ResourceExhausted,
            StorageError::FailedPrecondition(_) => Code::FailedPrecondition,
            StorageError::AuthFailed => Code::Unauthenticated,
            StorageError::Disabled => Code::PermissionDenied,
            StorageError::Throttled => Code::ResourceExhausted,
            StorageError::Locked(_) => Code::Aborted,
            StorageError::Session(_) => Code::PermissionDenied,
            StorageError::Database(e) => match e {
                sqlx::Error::RowNotFound => Code::NotFound,
                // A broken or exhausted pool, I/O and protocol trouble are all
                // temporary from the client's point of view.
                _ => Code::Unavailable,
            },
            StorageError::Blob(_) => Code::Unavailable,
            StorageError::Internal(_) => Code::Internal,
            StorageError::Unavailable(_) => Code::Unavailable,
        };
        if matches!(code, Code::Unavailable | Code::Internal) {
            tracing::error!(error = %err, "storage failure");
        }
        Status::new(code, err.to_string())
    }
}

impl From<mail_types::AddressError> for StorageError {
    fn from(e: mail_types::AddressError) -> Self {
        StorageError::InvalidArgument(e.to_string())
    }
}

impl From<mail_types::MailboxNameError> for StorageError {
    fn from(e: mail_types::MailboxNameError) -> Self {
        StorageError::InvalidArgument(e.to_string())
    }
}

/// Postgres unique violation (SQLSTATE 23505).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}
