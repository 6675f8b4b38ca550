//! The fleet's private PKI: one certificate authority and one key pair per
//! service identity, so every call between services can be authenticated
//! with mutual TLS (issue 15: "every service proves who it is").
//!
//! Layout of a PKI directory (fixed: compose, scripts/up.sh, the test
//! harnesses and NATS rely on it):
//!
//! ```text
//! DIR/ca.crt  DIR/ca.key                 the fleet's CA
//! DIR/NAME.crt  DIR/NAME.key             one per NAME in IDENTITIES
//! ```
//!
//! Private keys are written mode 0600 from the moment they exist. A
//! service certificate's Subject CN is its identity (what storage
//! authorises by) and its DNS SAN is the same name (the host name it has in
//! compose), plus `localhost` and 127.0.0.1 so a development fleet on one
//! machine verifies too. Every certificate may be used as a client and as a
//! server certificate (RFC 5280 §4.2.1.12: id-kp-serverAuth and
//! id-kp-clientAuth).

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};

/// Every service identity the fleet has. The names are the certificates'
/// CNs, the file names in a PKI directory and the compose host names.
pub const IDENTITIES: &[&str] =
    &["storage", "smtp-ingress", "delivery-queue", "imap-gateway", "pop3-gateway", "mailctl", "nats"];

/// The CA's file stem (`ca.crt`, `ca.key`).
pub const CA: &str = "ca";

/// How long the CA is valid. Long: replacing it means replacing every
/// certificate at once (`mailctl pki init --force`).
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// How long a service certificate is valid. Services report when theirs
/// is within 14 days of its end (`/healthz` degraded, a metric).
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What `init` did, per file stem (`ca`, then each identity).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InitReport {
    pub created: Vec<String>,
    pub kept: Vec<String>,
}

/// The certificate and key paths of `name` in `dir`.
pub fn cert_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.crt"))
}

pub fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.key"))
}

/// Create the CA and a key pair for every identity in `dir`. What exists
/// (both files of a pair) is kept, so running it at every start is safe;
/// with `force`, or when the CA itself is new, everything is issued anew
/// (rotation: the old certificates are no longer trusted once every
/// service has restarted with the new CA).
pub fn init(dir: &Path, force: bool) -> Result<InitReport, PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io { path: dir.to_path_buf(), source })?;
    let mut report = InitReport::default();
    let ca_present = present(dir, CA);
    if cert_path(dir, CA).exists() && !key_path(dir, CA).exists() && !force {
        // Issuing under a new CA would silently break every service that
        // still trusts the old one.
        return Err(PkiError::Invalid {
            path: key_path(dir, CA),
            message: "missing while ca.crt exists; run with --force to rotate the whole PKI".into(),
        });
    }
    let rotate = force || !ca_present;
    let issuer = if rotate {
        let (params, key) = ca_params()?;
        let cert = params.self_signed(&key)?;
        write_pair(dir, CA, &cert.pem(), &key.serialize_pem())?;
        report.created.push(CA.to_string());
        Issuer::new(params, key)
    } else {
        report.kept.push(CA.to_string());
        load_issuer(dir)?
    };
    for name in IDENTITIES {
        if !rotate && present(dir, name) {
            report.kept.push(name.to_string());
            continue;
        }
        let (cert, key) = issue(&issuer, name)?;
        write_pair(dir, name, &cert, &key)?;
        report.created.push(name.to_string());
    }
    Ok(report)
}

fn present(dir: &Path, name: &str) -> bool {
    cert_path(dir, name).exists() && key_path(dir, name).exists()
}

fn ca_params() -> Result<(CertificateParams, KeyPair), PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, "Mailfleet fleet CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, CA_VALIDITY);
    Ok((params, KeyPair::generate()?))
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let read =
        |path: PathBuf| std::fs::read_to_string(&path).map_err(|source| PkiError::Io { path: path.clone(), source });
    let key_file = key_path(dir, CA);
    let key = KeyPair::from_pem(&read(key_file.clone())?)
        .map_err(|e| PkiError::Invalid { path: key_file, message: e.to_string() })?;
    let cert_file = cert_path(dir, CA);
    Issuer::from_ca_cert_pem(&read(cert_file.clone())?, key)
        .map_err(|e| PkiError::Invalid { path: cert_file, message: e.to_string() })
}

/// A certificate for identity `name` signed by `issuer`: (certificate PEM,
/// key PEM).
/// The host names of compose's NATS servers. The `nats` certificate names
/// them too: a server dialling a route to `nats-2` checks the answering
/// certificate against that name (nats-server has no setting for an
/// expected name), so the cluster's routes are verified both ways.
pub const NATS_SERVERS: &[&str] = &["nats-1", "nats-2", "nats-3"];

pub fn issue(issuer: &Issuer<'_, KeyPair>, name: &str) -> Result<(String, String), PkiError> {
    let mut names = vec![name.to_string(), "localhost".to_string()];
    if name == "nats" {
        names.extend(NATS_SERVERS.iter().map(|s| s.to_string()));
    }
    let mut params = CertificateParams::new(names)?;
    params.subject_alt_names.push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    set_validity(&mut params, LEAF_VALIDITY);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    // A little in the past: clocks across a fleet are not exactly equal.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + validity;
}

/// Write the key (0600, never readable by others even for a moment), then
/// the certificate, each through a temporary file renamed into place so a
/// service starting meanwhile never reads half a file.
fn write_pair(dir: &Path, name: &str, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
    write_atomic(&key_path(dir, name), key_pem, 0o600)?;
    write_atomic(&cert_path(dir, name), cert_pem, 0o644)
}

fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<(), PkiError> {
    let io = |source| PkiError::Io { path: path.to_path_buf(), source };
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("pki");
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, contents.as_bytes()))
        // The umask may have narrowed the mode of a certificate.
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

/// The Subject CN of a DER certificate: the identity a peer proved.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// When the first certificate in `pem` stops being valid.
pub fn not_after(pem: &[u8]) -> Option<SystemTime> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let seconds = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn der(path: &Path) -> Vec<u8> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        CertificateDer::from_pem_file(path).unwrap().to_vec()
    }

    #[test]
    fn init_writes_the_fixed_layout_with_private_keys_for_the_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let report = init(dir.path(), false).unwrap();
        assert_eq!(report.created.len(), 1 + IDENTITIES.len());
        for name in std::iter::once(&CA).chain(IDENTITIES) {
            assert_eq!(mode(&key_path(dir.path(), name)), 0o600, "{name}.key");
            assert_eq!(mode(&cert_path(dir.path(), name)), 0o644, "{name}.crt");
        }
        for name in IDENTITIES {
            assert_eq!(common_name(&der(&cert_path(dir.path(), name))).as_deref(), Some(*name));
        }
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"));
        assert_eq!(leftovers.count(), 0);
        let expires = not_after(&std::fs::read(cert_path(dir.path(), "storage")).unwrap()).unwrap();
        let left = expires.duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(360 * 86_400) && left <= LEAF_VALIDITY, "{left:?}");
    }

    /// The DNS names a certificate is valid for.
    fn dns_names(der: &[u8]) -> Vec<String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        let san = cert.subject_alternative_name().unwrap().expect("SAN extension");
        san.value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn only_the_nats_certificate_names_the_nats_servers() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false).unwrap();
        assert_eq!(
            dns_names(&der(&cert_path(dir.path(), "nats"))),
            ["nats", "localhost", "nats-1", "nats-2", "nats-3"]
        );
        // A service's certificate cannot answer for a NATS server's name.
        assert_eq!(dns_names(&der(&cert_path(dir.path(), "imap-gateway"))), ["imap-gateway", "localhost"]);
    }

    #[test]
    fn init_keeps_what_exists_and_force_rotates_everything() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false).unwrap();
        let read = |name: &str| std::fs::read(cert_path(dir.path(), name)).unwrap();
        let (ca, storage) = (read(CA), read("storage"));
        // A lost pair is issued again, by the same CA; the rest is kept.
        std::fs::remove_file(key_path(dir.path(), "mailctl")).unwrap();
        let mailctl = read("mailctl");
        let report = init(dir.path(), false).unwrap();
        assert_eq!(report.created, vec!["mailctl".to_string()]);
        assert_eq!((read(CA), read("storage")), (ca.clone(), storage.clone()));
        assert_ne!(read("mailctl"), mailctl);

        let report = init(dir.path(), true).unwrap();
        assert_eq!(report.kept, Vec::<String>::new());
        assert_ne!(read(CA), ca);
        assert_ne!(read("storage"), storage);
    }

    #[test]
    fn a_ca_certificate_without_its_key_is_not_silently_replaced() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false).unwrap();
        std::fs::remove_file(key_path(dir.path(), CA)).unwrap();
        let err = init(dir.path(), false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        init(dir.path(), true).unwrap();
    }
}
