//! Server TLS with rustls: certificates from PEM files, or a self-signed one
//! generated on first start (and kept on disk) so TLS works in development.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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

/// The development certificate and its key live in one PEM file, created
/// atomically: several services started at once (scripts/up.sh) share it,
/// and none may read a half-written file or a key that belongs to another
/// process's certificate.
fn ensure_self_signed(dir: &Path, hostname: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let pair = dir.join("self-signed.crt");
    let io = |path: &Path, e: std::io::Error| TlsError::Read { path: path.into(), source: e };
    if pair.exists() {
        // A pair written by an older version may be readable by others.
        owner_only(&pair).map_err(|e| io(&pair, e))?;
        return Ok((pair.clone(), pair));
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io(dir, e))?;
    let (cert_pem, key_pem) = generate_self_signed(hostname)?;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".self-signed.{}.{n}.tmp", std::process::id()));
    // The file holds the private key: the owner alone reads it, from the
    // moment it exists (never written first and restricted afterwards).
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{cert_pem}{key_pem}").as_bytes()))
        .map_err(|e| io(&tmp, e))?;
    // hard_link fails if the file exists: the first writer wins, the others
    // use its pair.
    match std::fs::hard_link(&tmp, &pair) {
        Ok(()) => tracing::warn!(cert = %pair.display(), "no TLS certificate configured; generated a self-signed one"),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&pair, e));
        }
    }
    let _ = std::fs::remove_file(&tmp);
    Ok((pair.clone(), pair))
}

/// Mode 0600 unless it is already no wider.
fn owner_only(path: &Path) -> std::io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| TlsError::Read { path: path.into(), source: e })?;
    CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.into(), message: e.to_string() })
}

pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|e| TlsError::Read { path: path.into(), source: e })?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| TlsError::Pem { path: path.into(), message: e.to_string() })
}

/// What a client decides about a server's certificate, given webpki's
/// verifier to ask (or not): the relay's policy levels, NATS's fixed
/// expected name. Signatures are always webpki's ([`WebPkiWith`]).
pub trait ServerCertPolicy: std::fmt::Debug + Send + Sync {
    fn verify_server_cert(
        &self,
        webpki: &rustls::client::WebPkiServerVerifier,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error>;
}

/// A rustls server-certificate verifier: `policy` decides about the
/// certificate, webpki checks the handshake signatures against it, so the
/// session key belongs to whoever holds the certificate in every case.
#[derive(Debug)]
pub struct WebPkiWith<P> {
    pub webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pub policy: P,
}

impl<P: ServerCertPolicy> rustls::client::danger::ServerCertVerifier for WebPkiWith<P> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.policy.verify_server_cert(&self.webpki, end_entity, intermediates, server_name, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_starting_together_share_one_consistent_pair() {
        crate::init_crypto();
        let dir = tempfile::tempdir().unwrap();
        let settings = TlsSettings { self_signed_dir: dir.path().into(), ..Default::default() };
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let s = settings.clone();
                std::thread::spawn(move || server_config(&s).map(|_| ()))
            })
            .collect();
        for h in handles {
            h.join().unwrap().expect("every concurrent start gets a usable certificate");
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("self-signed.crt")]);
    }

    #[test]
    fn the_generated_key_is_readable_by_its_owner_only() {
        crate::init_crypto();
        let dir = tempfile::tempdir().unwrap();
        let tls_dir = dir.path().join("tls");
        let settings = TlsSettings { self_signed_dir: tls_dir.clone(), ..Default::default() };
        server_config(&settings).unwrap();
        let pair = tls_dir.join("self-signed.crt");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pair), 0o600);
        assert_eq!(mode(&tls_dir), 0o700);
        // One left by an older version, readable by all, is restricted at start.
        std::fs::set_permissions(&pair, std::fs::Permissions::from_mode(0o644)).unwrap();
        server_config(&settings).unwrap();
        assert_eq!(mode(&pair), 0o600);
    }

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
