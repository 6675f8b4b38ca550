//! Password hashing with argon2id (PHC strings); plaintext is never stored.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::{PasswordHasher, PasswordVerifier};

use std::sync::OnceLock;

use tokio::sync::Semaphore;

use crate::error::{StorageError, StorageResult};

/// Reject passwords a mail administrator would not accept.
pub fn check_strength(password: &str, min_len: usize) -> StorageResult<()> {
    if password.trim().is_empty() {
        return Err(StorageError::InvalidArgument("password is empty".into()));
    }
    if password.chars().count() < min_len {
        return Err(StorageError::InvalidArgument(format!("password is too weak: use at least {min_len} characters")));
    }
    if password.chars().any(|c| c.is_control()) {
        return Err(StorageError::InvalidArgument("password contains control characters".into()));
    }
    Ok(())
}

pub fn hash(password: &str) -> StorageResult<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| StorageError::Internal(format!("hashing password: {e}")))
}

pub fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Hashes computed at once. argon2 is deliberately CPU-bound: a login storm
/// (a thousand IMAP clients reconnecting after a restart) with a blocking
/// thread each would crowd out every other request on the machine until
/// database connections time out in the pool. Beyond one hash per core the
/// rest wait their turn, in order, holding nothing.
fn hashing_slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get())))
}

/// Run one argon2 computation off the async workers, in a hashing slot.
async fn in_hashing_slot<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> StorageResult<T> {
    let _slot = hashing_slots().acquire().await.map_err(|e| StorageError::Internal(e.to_string()))?;
    tokio::task::spawn_blocking(work).await.map_err(|e| StorageError::Internal(e.to_string()))
}

/// `hash`, off the async workers.
pub async fn hash_async(password: String) -> StorageResult<String> {
    in_hashing_slot(move || hash(&password)).await?
}

/// `verify`, off the async workers.
pub async fn verify_async(password: String, phc: String) -> StorageResult<bool> {
    in_hashing_slot(move || verify(&password, &phc)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse", &h));
        assert!(!verify("wrong horse", &h));
        assert!(!verify("x", "not a phc string"));
    }

    /// More verifications than hashing slots all finish, each with its
    /// own answer.
    #[tokio::test]
    async fn verifications_beyond_the_slots_wait_their_turn() {
        let h = hash_async("correct horse".into()).await.unwrap();
        let checks: Vec<_> = (0..6)
            .map(|i| verify_async(if i % 2 == 0 { "correct horse" } else { "wrong" }.into(), h.clone()))
            .collect();
        let answers: Vec<bool> = futures::future::join_all(checks).await.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, [true, false, true, false, true, false]);
    }

    #[test]
    fn weak_passwords_are_refused() {
        assert!(check_strength("", 8).is_err());
        assert!(check_strength("   ", 8).is_err());
        assert!(check_strength("short", 8).is_err());
        assert!(check_strength("long enough", 8).is_ok());
    }
}
