//! How every service connects to storage over gRPC, and how storage
//! proves itself to them: mutual TLS with the fleet's certificates
//! (`mailctl pki init`, [`crate::pki`]). Storage accepts no other kind of
//! connection, so a storage URL is always `https://`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The name storage's certificate must carry, whatever host was dialled
/// (`storage`, 127.0.0.1, a load balancer's name). Every fleet certificate
/// also names `localhost` and 127.0.0.1, so checking the dialled address
/// would let any service's certificate pose as storage; the fixed name
/// lets only storage's.
pub const STORAGE_NAME: &str = "storage";

/// How long a TLS handshake with storage may take, either way: a peer
/// that connects and says nothing holds no task for longer.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error(
        "identity.{0} is not set: every service proves who it is to storage with its certificate \
         from the fleet CA (`mailctl pki init DIR`, then identity.ca_file = DIR/ca.crt, \
         identity.cert_file = DIR/NAME.crt, identity.key_file = DIR/NAME.key)"
    )]
    Missing(&'static str),
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}: no certificate in it")]
    NoCertificate(PathBuf),
    #[error("storage URL {0:?}: storage accepts mutual TLS only, so the URL starts with https://")]
    NotHttps(String),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// Who a service is inside the fleet: its certificate and key from the
/// fleet CA and the CA it trusts for its peers. Clients of storage present
/// it and check storage's certificate against the CA; storage presents its
/// own and requires one from every caller. The Subject CN is the identity
/// storage authorises by (`storage::auth::identity`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetIdentity {
    /// The fleet CA certificate (PEM), `ca.crt` of `mailctl pki init`.
    pub ca_file: Option<PathBuf>,
    /// This service's certificate (PEM), e.g. `imap-gateway.crt`.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
}

impl FleetIdentity {
    /// Identity `name` in a PKI directory of `mailctl pki init`'s layout.
    pub fn in_dir(dir: &Path, name: &str) -> FleetIdentity {
        FleetIdentity {
            ca_file: Some(crate::pki::cert_path(dir, crate::pki::CA)),
            cert_file: Some(crate::pki::cert_path(dir, name)),
            key_file: Some(crate::pki::key_path(dir, name)),
        }
    }

    fn read(&self) -> Result<(Certificate, Identity), GrpcError> {
        let ca = read(self.ca_file.as_deref().ok_or(GrpcError::Missing("ca_file"))?)?;
        let cert = read(self.cert_file.as_deref().ok_or(GrpcError::Missing("cert_file"))?)?;
        let key = read(self.key_file.as_deref().ok_or(GrpcError::Missing("key_file"))?)?;
        Ok((Certificate::from_pem(ca), Identity::from_pem(cert, key)))
    }

    /// TLS for a client of storage: present this identity, trust only the
    /// fleet CA, and require storage's name ([`STORAGE_NAME`]).
    pub fn client_tls(&self) -> Result<ClientTlsConfig, GrpcError> {
        let (ca, identity) = self.read()?;
        Ok(ClientTlsConfig::new()
            .ca_certificate(ca)
            .identity(identity)
            .domain_name(STORAGE_NAME)
            .timeout(HANDSHAKE_TIMEOUT))
    }

    /// TLS for storage's listeners: present this identity and require a
    /// client certificate chaining to the fleet CA.
    pub fn server_tls(&self) -> Result<ServerTlsConfig, GrpcError> {
        let (ca, identity) = self.read()?;
        Ok(ServerTlsConfig::new().identity(identity).client_ca_root(ca).timeout(HANDSHAKE_TIMEOUT))
    }

    /// When this identity's certificate stops being valid: services report
    /// it ahead of time (`/healthz`, the `mailfleet_certificate_expiry`
    /// metric) so that rotation happens before calls start failing.
    pub fn not_after(&self) -> Result<SystemTime, GrpcError> {
        let path = self.cert_file.as_deref().ok_or(GrpcError::Missing("cert_file"))?;
        crate::pki::not_after(&read(path)?).ok_or_else(|| GrpcError::NoCertificate(path.to_path_buf()))
    }
}

/// A certificate this close to its end is reported (a warning in the log,
/// `/healthz` degraded), so that it is renewed before calls fail.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

impl FleetIdentity {
    /// Report this identity's certificate end for service `name`: the
    /// `mailfleet.certificate.expires_in` gauge (seconds left, attribute
    /// `identity`), and, within [`EXPIRY_WARNING`] of it, a warning in the
    /// log and `/healthz` degraded. Called once at start: a renewed
    /// certificate is used from the next start on anyway.
    pub fn report_expiry(&self, name: &'static str) {
        let Ok(not_after) = self.not_after() else { return };
        let left = not_after.duration_since(SystemTime::now()).unwrap_or_default();
        if left < EXPIRY_WARNING {
            let days = left.as_secs() / 86_400;
            tracing::warn!(
                identity = name,
                days_left = days,
                "fleet certificate expires soon; renew it (mailctl pki init)"
            );
            crate::health::report_degraded(format!("certificate {name} expires in {days} days"));
        }
        opentelemetry::global::meter("mailfleet")
            .f64_observable_gauge("mailfleet.certificate.expires_in")
            .with_unit("s")
            .with_description("Time until the service's fleet certificate expires")
            .with_callback(move |gauge| {
                let left = not_after.duration_since(SystemTime::now()).map_or(0.0, |d| d.as_secs_f64());
                gauge.observe(left, &[opentelemetry::KeyValue::new("identity", name)]);
            })
            .build();
    }
}

fn read(path: &Path) -> Result<Vec<u8>, GrpcError> {
    std::fs::read(path).map_err(|source| GrpcError::Read { path: path.to_path_buf(), source })
}

/// HTTP/2 flow-control windows of calls to and from storage. With the
/// protocol's default of 64 KiB a streamed message stalls for a round trip
/// every 64 KiB while the sender waits for WINDOW_UPDATE; messages are
/// mostly bigger than that, and storage is one hop away.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// The largest HTTP/2 DATA frame either side of a storage call accepts.
/// With the protocol's default of 16 KiB a message of 40 KB crossed as
/// three frames, each its own write and read; with this, one.
pub const MAX_FRAME: u32 = 256 * 1024;

/// A lazily connected channel to storage (a service starts, and answers
/// with temporary errors, while storage is still down): see
/// [`storage_endpoint`].
pub fn storage_channel(url: &str, identity: &FleetIdentity, timeout: Option<Duration>) -> Result<Channel, GrpcError> {
    Ok(storage_endpoint(url, identity, timeout)?.connect_lazy())
}

/// Storage at `url`, reached as `identity`: mutual TLS, a 5 s connect
/// timeout, TCP_NODELAY, the windows and frame size above, and `timeout`
/// per call when set.
pub fn storage_endpoint(url: &str, identity: &FleetIdentity, timeout: Option<Duration>) -> Result<Endpoint, GrpcError> {
    if !url.starts_with("https://") {
        return Err(GrpcError::NotHttps(url.to_string()));
    }
    let mut endpoint = Endpoint::from_shared(url.to_string())?
        .tls_config(identity.client_tls()?)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME);
    if let Some(timeout) = timeout {
        endpoint = endpoint.timeout(timeout);
    }
    Ok(endpoint)
}
