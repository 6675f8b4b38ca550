//! NATS: connecting to one server or to every server of a cluster — as the
//! service's own NATS user, proven by its client certificate from the fleet
//! CA (`nats_tls`) — and creating (or bringing up to date) the JetStream
//! work-queue streams that smtp-ingress and delivery-queue share.
//!
//! Which user may publish and subscribe to what is the server's
//! configuration (`deploy/nats/auth.conf`); docs/nats.md explains it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::ServerAddr;
use async_nats::jetstream::{self, stream};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("NATS URL {0:?}: {1}")]
    Url(String, String),
    #[error("connecting to NATS at {0}: {1}")]
    Connect(String, String),
    #[error("JetStream stream {0}: {1}")]
    Stream(String, String),
    #[error("nats_tls: {0}")]
    Tls(String),
}

/// How a service proves itself to NATS (the `nats_tls` settings of every
/// service, and mailctl's `--nats-tls-*` options). With `cert_file` set the
/// connection is TLS: the server's certificate must chain to `ca_file` and
/// carry `server_name`, and the service presents its own certificate, which
/// the server maps to the NATS user named like the certificate
/// (`verify_and_map`). With nothing set the connection is plain and
/// anonymous — only a NATS without users (the test suite's shared server)
/// accepts that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsTls {
    /// The fleet CA certificate (PEM), `ca.crt` of `mailctl pki init`.
    pub ca_file: Option<PathBuf>,
    /// This service's certificate (PEM), e.g. `smtp-ingress.crt`.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The name the NATS server's certificate must carry. Every fleet
    /// certificate also names `localhost` and 127.0.0.1, so checking the
    /// address dialled would let any service's certificate pose as NATS;
    /// this checks for the NATS server's own name instead, whatever host
    /// (nats-1, 127.0.0.1) was dialled.
    pub server_name: String,
}

impl Default for NatsTls {
    fn default() -> Self {
        NatsTls { ca_file: None, cert_file: None, key_file: None, server_name: "nats".into() }
    }
}

impl NatsTls {
    /// The client TLS configuration, or `None` for a plain connection.
    pub fn client_config(&self) -> Result<Option<rustls::ClientConfig>, NatsError> {
        let (ca, cert, key) = match (&self.ca_file, &self.cert_file, &self.key_file) {
            (None, None, None) => return Ok(None),
            (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
            _ => return Err(NatsError::Tls("ca_file, cert_file and key_file are set together or not at all".into())),
        };
        let tls_err = |e: &dyn std::fmt::Display| NatsError::Tls(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for c in crate::tls::read_certs(ca).map_err(|e| tls_err(&e))? {
            roots.add(c).map_err(|e| tls_err(&format!("CA certificate in {}: {e}", ca.display())))?;
        }
        let name = ServerName::try_from(self.server_name.clone())
            .map_err(|e| tls_err(&format!("server_name {:?}: {e}", self.server_name)))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| tls_err(&e))?;
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::tls::WebPkiWith { webpki, policy: NamedServer(name) }))
            .with_client_auth_cert(
                crate::tls::read_certs(cert).map_err(|e| tls_err(&e))?,
                crate::tls::read_key(key).map_err(|e| tls_err(&e))?,
            )
            .map_err(|e| tls_err(&format!("{}: {e}", cert.display())))?;
        Ok(Some(config))
    }
}

/// The server's certificate must chain to the fleet CA and carry one fixed
/// name (`NatsTls::server_name`), whatever host was dialled.
#[derive(Debug)]
struct NamedServer(ServerName<'static>);

impl crate::tls::ServerCertPolicy for NamedServer {
    fn verify_server_cert(
        &self,
        webpki: &WebPkiServerVerifier,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        webpki.verify_server_cert(end_entity, intermediates, &self.0, ocsp_response, now)
    }
}

/// The servers of `urls`, a comma-separated list
/// (`nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222`): with every
/// member of a cluster listed, a service starts while any one of them is up
/// (once connected, the client also learns the others from the server).
pub fn server_addrs(urls: &str) -> Result<Vec<ServerAddr>, NatsError> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<ServerAddr>().map_err(|e| NatsError::Url(u.to_string(), e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(NatsError::Url(urls.to_string(), "no server given".into()));
    }
    Ok(addrs)
}

/// Connect with `options` to the servers of `urls` (see [`server_addrs`])
/// as `identity` (the service's name, which is also its NATS user's name),
/// authenticated by `tls`. Replies (JetStream API answers, publish acks,
/// pulled jobs) come to inboxes under `_INBOX.<identity>.`, the only
/// inboxes its user may subscribe to: no service can read another's.
pub async fn connect(
    urls: &str,
    tls: &NatsTls,
    identity: &str,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, NatsError> {
    let user = identity.to_string();
    let mut options = options.custom_inbox_prefix(format!("_INBOX.{identity}")).event_callback(move |event| {
        let user = user.clone();
        async move {
            match event {
                // A refused login or a denied subject: the server says which
                // (`Authorization Violation`, `Permissions Violation for
                // Publish to "…"`); the operator needs to see it.
                async_nats::Event::ServerError(e) => tracing::warn!(nats_user = %user, error = %e, "NATS refused"),
                async_nats::Event::ClientError(e) => tracing::warn!(nats_user = %user, error = %e, "NATS client error"),
                async_nats::Event::Disconnected => tracing::info!(nats_user = %user, "NATS disconnected"),
                async_nats::Event::Connected => tracing::info!(nats_user = %user, "NATS connected"),
                _ => {}
            }
        }
    });
    if let Some(config) = tls.client_config()? {
        options = options.require_tls(true).tls_client_config(config);
    }
    options.connect(server_addrs(urls)?).await.map_err(|e| NatsError::Connect(urls.to_string(), e.to_string()))
}

/// Duplicate-detection window of the work-queue streams: a job published
/// again with the same `Nats-Msg-Id` within this time is stored once. It
/// must be longer than the longest time after which the queue can publish
/// the same job again — delivery-queue checks that rule at start
/// (`delivery_queue::redelivery`), smtp-ingress's publish retries stay
/// within it. A longer window costs server memory per message id.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The settings of a work-queue stream (the mail queue, the relay queue):
/// a message is removed once acknowledged, kept on disk, and stored on
/// `replicas` servers (R3 on a 3-node cluster: a publish is acknowledged
/// once two of them have it).
pub fn work_queue(name: &str, subject: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        subjects: vec![subject.to_string()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// How often [`ensure_stream`] tries before it reports a failure (about
/// 3 s of pauses between the tries, beside the requests' own timeouts).
const STREAM_TRIES: u32 = 5;

/// Create the stream, or bring an existing one to `config`: a stream made
/// by an older version (another duplicate window) or with another replica
/// count (a deployment scaled to R3) is updated in place, keeping its
/// messages. The services own these streams' settings; changes made by
/// hand are overwritten at the next start.
pub async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> Result<(), NatsError> {
    let name = config.name.clone();
    let err = |e: &dyn std::fmt::Display| NatsError::Stream(name.clone(), e.to_string());
    // A busy server (many streams made at once, a cluster electing its
    // leader) can time a create out and then not have the stream yet:
    // try again a few times before giving up. Other failures (a refused
    // look-up) are reported at once.
    let mut pause = std::time::Duration::from_millis(200);
    let mut tries = 0;
    let current = loop {
        tries += 1;
        match js.get_stream(&name).await {
            Ok(stream) => break stream.cached_info().config.clone(),
            Err(e) if is_not_found(&e.kind()) => {
                // Another service may create it at the same moment: then
                // bring that one to our settings.
                let created = match js.create_stream(config.clone()).await {
                    Ok(_) => return Ok(()),
                    Err(e) => e,
                };
                match js.get_stream(&name).await {
                    Ok(stream) => break stream.cached_info().config.clone(),
                    Err(_) if tries < STREAM_TRIES => {}
                    Err(e) => return Err(err(&format!("{e} (creating it: {created})"))),
                }
            }
            Err(e) => return Err(err(&e)),
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    };
    if current.num_replicas == config.num_replicas.max(1)
        && current.duplicate_window == config.duplicate_window
        && current.subjects == config.subjects
    {
        return Ok(());
    }
    tracing::info!(
        stream = %name,
        replicas = %format!("{} -> {}", current.num_replicas, config.num_replicas),
        duplicate_window = ?config.duplicate_window,
        "bringing the stream to this version's settings"
    );
    js.update_stream(config).await.map_err(|e| err(&e))?;
    Ok(())
}

/// JetStream's "stream not found" answer.
fn is_not_found(kind: &jetstream::context::GetStreamErrorKind) -> bool {
    matches!(kind, jetstream::context::GetStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_a_comma_separated_list() {
        let addrs = server_addrs("nats://nats-1:4222, nats://nats-2:4222,nats://nats-3:4222").expect("parses");
        assert_eq!(addrs.len(), 3);
        assert_eq!(server_addrs("nats://127.0.0.1:4222").expect("parses").len(), 1);
        assert!(server_addrs("").is_err());
        assert!(server_addrs("nats://a:4222,,").is_ok_and(|a| a.len() == 1));
        assert!(server_addrs("nats://[bad").is_err());
    }

    #[test]
    fn work_queues_keep_at_least_one_replica() {
        assert_eq!(work_queue("Q", "q.jobs", 0).num_replicas, 1);
        assert_eq!(work_queue("Q", "q.jobs", 3).num_replicas, 3);
        assert_eq!(work_queue("Q", "q.jobs", 3).duplicate_window, DUPLICATE_WINDOW);
    }
}
