//! Server TLS with rustls: certificates from PEM files, or a self-signed one
//! generated on first start (and kept on disk) so TLS works in development.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing PEM in {path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where a service finds its certificate. With neither file set, a
/// self-signed certificate for `hostname` is created under `self_signed_dir`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsSettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub self_signed_dir: PathBuf,
    pub hostname: String,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            cert_file: None,
            key_file: None,
            // Relative to the working directory: `./var/tls` in a checkout.
            self_signed_dir: PathBuf::from("var/tls"),
            hostname: "localhost".into(),
        }
    }
}

/// Build a rustls server configuration from the settings.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert_path, key_path) = match (&settings.cert_file, &settings.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => ensure_self_signed(&settings.self_signed_dir, &settings.hostname)?,
    };
    let certs = read_certs(&cert_path)?;
    let key = read_key(&key_path)?;
    let config = ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// Build a server configuration straight from PEM text (tests).
pub fn server_config_from_pem(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: "<memory>".into(), message: e.to_string() })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Pem { path: "<memory>".into(), message: e.to_string() })?;
    Ok(Arc::new(ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key)?))
}

/// A fresh self-signed certificate and key, as PEM (for tests and first start).
pub fn generate_self_signed(hostname: &str) -> Result<(String, String), TlsError> {
    let names = vec![hostname.to_string(), "localhost".to_string(), "127.0.0.1".to_string()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

fn ensure_self_signed(dir: &Path, hostname: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = dir.join("self-signed.crt");
    let key = dir.join("self-signed.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| TlsError::Read { path: dir.into(), source: e })?;
    let (cert_pem, key_pem) = generate_self_signed(hostname)?;
    std::fs::write(&cert, cert_pem).map_err(|e| TlsError::Read { path: cert.clone(), source: e })?;
    std::fs::write(&key, key_pem).map_err(|e| TlsError::Read { path: key.clone(), source: e })?;
    tracing::warn!(cert = %cert.display(), "no TLS certificate configured; generated a self-signed one");
    Ok((cert, key))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| TlsError::Read { path: path.into(), source: e })?;
    CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.into(), message: e.to_string() })
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|e| TlsError::Read { path: path.into(), source: e })?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| TlsError::Pem { path: path.into(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_generated_once_and_reused() {
        crate::init_crypto();
        let dir = tempfile::tempdir().unwrap();
        let settings = TlsSettings { self_signed_dir: dir.path().into(), ..Default::default() };
        server_config(&settings).unwrap();
        let first = std::fs::read(dir.path().join("self-signed.crt")).unwrap();
        server_config(&settings).unwrap();
        let second = std::fs::read(dir.path().join("self-signed.crt")).unwrap();
        assert_eq!(first, second);
    }
}
