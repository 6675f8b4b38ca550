//! DKIM keys (RFC 6376): generated and kept here, the only owner of
//! Postgres; the relay fetches the private key to sign outgoing mail.

use base64::Engine;
use mailfleet_proto::storage::v1 as pb;
use rcgen::PublicKeyData;
use sqlx::Row;

use crate::Store;
use crate::error::{StorageError, StorageResult};

/// Selector used when none is given.
pub const DEFAULT_SELECTOR: &str = "mailfleet";

fn key_from_row(row: &sqlx::postgres::PgRow, with_private: bool) -> pb::DkimKey {
    let domain: String = row.get("domain");
    let selector: String = row.get("selector");
    let algorithm: String = row.get("algorithm");
    let public_key: String = row.get("public_key");
    let created: time::OffsetDateTime = row.get("created_at");
    pb::DkimKey {
        dns_name: format!("{selector}._domainkey.{domain}"),
        dns_value: dns_value(&algorithm, &public_key),
        private_key_pem: if with_private { row.get("private_key_pem") } else { String::new() },
        created_at: Some(prost_types::Timestamp { seconds: created.unix_timestamp(), nanos: 0 }),
        domain,
        selector,
        algorithm,
    }
}

/// RFC 6376 §3.6.1 key record; `k=ed25519` per RFC 8463.
pub fn dns_value(algorithm: &str, public_key_b64: &str) -> String {
    let k = if algorithm.starts_with("ed25519") { "ed25519" } else { "rsa" };
    format!("v=DKIM1; k={k}; p={public_key_b64}")
}

/// RFC 6376 §3.1: a selector is dot-separated sub-domain labels.
fn valid_selector(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') && !l.starts_with('-'))
}

/// A new key pair: (PKCS#8 PEM, base64 public key for p=).
pub fn generate(algorithm: &str) -> StorageResult<(String, String)> {
    let gen_err = |e: rcgen::Error| StorageError::Internal(format!("key generation: {e}"));
    let b64 = base64::engine::general_purpose::STANDARD;
    match algorithm {
        "rsa-sha256" => {
            // RFC 8301 §3.2: at least 1024 bits, 2048 recommended.
            let kp =
                rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).map_err(gen_err)?;
            // p= is the DER SubjectPublicKeyInfo (RFC 6376 §3.6.1).
            Ok((kp.serialize_pem(), b64.encode(kp.subject_public_key_info())))
        }
        "ed25519-sha256" => {
            let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(gen_err)?;
            // RFC 8463 §4: p= is the raw 32-byte public key.
            Ok((kp.serialize_pem(), b64.encode(kp.der_bytes())))
        }
        other => Err(StorageError::InvalidArgument(format!(
            "unknown DKIM algorithm `{other}` (rsa-sha256 or ed25519-sha256)"
        ))),
    }
}

impl Store {
    pub async fn generate_dkim_key(&self, domain: &str, selector: &str, algorithm: &str) -> StorageResult<pb::DkimKey> {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let selector = if selector.is_empty() { DEFAULT_SELECTOR.to_string() } else { selector.to_ascii_lowercase() };
        if !valid_selector(&selector) {
            return Err(StorageError::InvalidArgument(format!("malformed selector `{selector}`")));
        }
        let algorithm = match algorithm.to_ascii_lowercase().as_str() {
            "" | "rsa" | "rsa-sha256" => "rsa-sha256",
            "ed25519" | "ed25519-sha256" => "ed25519-sha256",
            other => {
                return Err(StorageError::InvalidArgument(format!(
                    "unknown DKIM algorithm `{other}` (rsa-sha256 or ed25519-sha256)"
                )));
            }
        };
        let served: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM domains WHERE name = $1)")
            .bind(&domain)
            .fetch_one(&self.pool)
            .await?;
        if !served {
            return Err(StorageError::NotFound(format!("no domain {domain}")));
        }
        let alg = algorithm.to_string();
        let (private_pem, public_b64) = tokio::task::spawn_blocking(move || generate(&alg))
            .await
            .map_err(|e| StorageError::Internal(format!("key generation task: {e}")))??;
        let row = sqlx::query(
            "INSERT INTO dkim_keys (domain, selector, algorithm, private_key_pem, public_key) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (domain, selector) DO UPDATE SET algorithm = EXCLUDED.algorithm, \
               private_key_pem = EXCLUDED.private_key_pem, public_key = EXCLUDED.public_key, created_at = now() \
             RETURNING domain, selector, algorithm, private_key_pem, public_key, created_at",
        )
        .bind(&domain)
        .bind(&selector)
        .bind(algorithm)
        .bind(&private_pem)
        .bind(&public_b64)
        .fetch_one(&self.pool)
        .await?;
        Ok(key_from_row(&row, false))
    }

    pub async fn list_dkim_keys(&self, domain: &str) -> StorageResult<Vec<pb::DkimKey>> {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let rows = sqlx::query(
            "SELECT domain, selector, algorithm, private_key_pem, public_key, created_at FROM dkim_keys \
             WHERE $1 = '' OR domain = $1 ORDER BY domain, created_at DESC, selector",
        )
        .bind(&domain)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| key_from_row(r, false)).collect())
    }

    /// The newest key of `domain`, private key included (for signing).
    pub async fn get_dkim_key(&self, domain: &str) -> StorageResult<pb::DkimKey> {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let row = sqlx::query(
            "SELECT domain, selector, algorithm, private_key_pem, public_key, created_at FROM dkim_keys \
             WHERE domain = $1 ORDER BY created_at DESC, selector LIMIT 1",
        )
        .bind(&domain)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StorageError::NotFound(format!("no DKIM key for {domain}")))?;
        Ok(key_from_row(&row, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_records() {
        assert!(valid_selector("mailfleet"));
        assert!(valid_selector("s2024.eu"));
        assert!(!valid_selector("bad_sel"));
        assert!(!valid_selector(""));
        assert_eq!(dns_value("ed25519-sha256", "AAA"), "v=DKIM1; k=ed25519; p=AAA");
        assert_eq!(dns_value("rsa-sha256", "BBB"), "v=DKIM1; k=rsa; p=BBB");
    }

    #[test]
    fn generates_both_kinds() {
        let (pem, p) = generate("ed25519-sha256").expect("ed25519");
        assert!(pem.contains("PRIVATE KEY"));
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(p).expect("b64").len(), 32);
        assert!(generate("dsa").is_err());
    }
}
