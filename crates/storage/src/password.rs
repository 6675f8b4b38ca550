//! Password hashing with argon2id (PHC strings); plaintext is never stored.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::{PasswordHasher, PasswordVerifier};

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

    #[test]
    fn weak_passwords_are_refused() {
        assert!(check_strength("", 8).is_err());
        assert!(check_strength("   ", 8).is_err());
        assert!(check_strength("short", 8).is_err());
        assert!(check_strength("long enough", 8).is_ok());
    }
}
