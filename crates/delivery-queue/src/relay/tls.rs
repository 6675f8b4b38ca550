//! Which TLS the relay uses towards a destination, and how certificates are
//! checked.
//!
//! - Opportunistic (an MX with no policy): STARTTLS when offered, any
//!   certificate accepted. RFC 7435: encryption without authentication
//!   beats plain text, and MX certificates are often self-signed.
//! - Verified, wherever policy demands TLS: a `require_tls` domain, the
//!   global `tls = "required"`, the smarthost (its certificate must also be
//!   valid before the password is sent), and a domain whose MTA-STS policy
//!   is `enforce` (RFC 8461 §4.2). The certificate must chain to a trust
//!   anchor (the system's, plus `tls_extra_roots`) and name the host we
//!   connect to (the MX host name, or the smarthost's).
//! - Reported: an MTA-STS policy in `testing` mode is checked the same way,
//!   but a failure is only logged (RFC 8461 §5) and the mail goes on.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("reading trust anchors from {path}: {message}")]
    ExtraRoots { path: String, message: String },
    #[error("no trust anchors: the system has none and tls_extra_roots is not set")]
    NoRoots,
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// How the far side's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Not at all (RFC 7435 opportunistic TLS).
    None,
    /// Checked; a failure is logged and the connection goes on (MTA-STS testing).
    Report,
    /// Checked; a failure ends the connection before anything is sent.
    Enforce,
}

/// The TLS client side of one connection: its rustls configuration, and
/// whether a completed handshake proves the server's identity.
#[derive(Clone)]
pub struct TlsChecks {
    pub config: Arc<ClientConfig>,
    pub verify: Verify,
}

impl std::fmt::Debug for TlsChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsChecks({:?})", self.verify)
    }
}

/// The trust anchors and the three client configurations built on them,
/// made once when the relay starts.
pub struct TlsTrust {
    roots: Arc<RootCertStore>,
    opportunistic: TlsChecks,
    report: TlsChecks,
    enforce: TlsChecks,
}

impl TlsTrust {
    /// The system's trust anchors (rustls-native-certs: the OpenSSL
    /// locations, `SSL_CERT_FILE`/`SSL_CERT_DIR`), plus the PEM
    /// certificates in `extra_roots` (a private CA, or a test's).
    pub fn load(extra_roots: Option<&Path>) -> Result<TlsTrust, TrustError> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!(error = %e, "reading the system's trust anchors");
        }
        let (system, _) = roots.add_parsable_certificates(native.certs);
        if let Some(path) = extra_roots {
            let err = |message: String| TrustError::ExtraRoots { path: path.display().to_string(), message };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            if certs.is_empty() {
                return Err(err("no certificate in the file".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| err(e.to_string()))?;
            }
        }
        if roots.is_empty() {
            return Err(TrustError::NoRoots);
        }
        tracing::debug!(system, total = roots.len(), "relay trust anchors loaded");
        TlsTrust::with_roots(roots)
    }

    /// Exactly these trust anchors (tests).
    pub fn with_roots(roots: RootCertStore) -> Result<TlsTrust, TrustError> {
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TrustError::Config(e.to_string()))?;
        let checks = |verify: Verify| -> Result<TlsChecks, TrustError> {
            let verifier = Arc::new(mailfleet_runtime::tls::WebPkiWith { webpki: webpki.clone(), policy: verify });
            let config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| TrustError::Config(e.to_string()))?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            Ok(TlsChecks { config: Arc::new(config), verify })
        };
        Ok(TlsTrust {
            opportunistic: checks(Verify::None)?,
            report: checks(Verify::Report)?,
            enforce: checks(Verify::Enforce)?,
            roots,
        })
    }

    pub fn checks(&self, verify: Verify) -> TlsChecks {
        match verify {
            Verify::None => self.opportunistic.clone(),
            Verify::Report => self.report.clone(),
            Verify::Enforce => self.enforce.clone(),
        }
    }

    /// The trust anchors (the MTA-STS policy fetch uses the same).
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }
}

/// The certificate check of one [`Verify`] level. The handshake's
/// signatures are always checked against the presented certificate, so the
/// session key belongs to whoever holds it; what differs is whether the
/// certificate itself must chain to a trust anchor and name the server:
/// not at all (RFC 7435), logged only (MTA-STS testing, RFC 8461 §5), or
/// required.
impl mailfleet_runtime::tls::ServerCertPolicy for Verify {
    fn verify_server_cert(
        &self,
        webpki: &WebPkiServerVerifier,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if *self == Verify::None {
            return Ok(ServerCertVerified::assertion());
        }
        let checked = webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        match (checked, *self) {
            (Err(e), Verify::Report) => {
                tracing::warn!(
                    server = ?server_name,
                    error = %e,
                    "certificate fails the check an MTA-STS policy in testing mode asks for; delivering anyway"
                );
                Ok(ServerCertVerified::assertion())
            }
            (checked, _) => checked,
        }
    }
}
