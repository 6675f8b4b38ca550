//! The real [`Backend`]: storage over gRPC, the queue on NATS JetStream.
//!
//! One gRPC channel (HTTP/2, multiplexed) and one NATS connection per
//! process, shared by every SMTP connection: no per-message set-up.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use mailfleet_proto::queue::v1 as qpb;
use mailfleet_proto::storage::v1 as pb;
use mailfleet_runtime::session::SessionToken;
use pb::directory_client::DirectoryClient;
use pb::messages_client::MessagesClient;
use prost::Message;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::config::{IngressConfig, QueueNames};
use crate::inbound::InboundVerifier;
use crate::recipients::RecipientCache;
use crate::session::{AuthUser, Backend, BackendError, Envelope, InboundVerdict, LocalAccount, Resolution};

/// Chunk size of the PutBlob stream.
const CHUNK: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("storage URL {0}: {1}")]
    StorageUrl(String, String),
    #[error(transparent)]
    Nats(#[from] mailfleet_runtime::nats::NatsError),
}

/// How long a job's publish is retried (same `Nats-Msg-Id`) before the
/// client gets `451`. A publish whose acknowledgement was lost may have
/// been stored: retried within the stream's duplicate window it is stored
/// once, and a NATS leader election (seconds on a cluster) delays a `250`
/// instead of turning it into a `451` for a job that then arrives anyway.
pub const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(30);
/// How long one publish waits for its acknowledgement.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct GrpcBackend {
    directory: DirectoryClient<Channel>,
    messages: MessagesClient<Channel>,
    jetstream: jetstream::Context,
    subject: String,
    inbound: Option<InboundVerifier>,
    recipients: Arc<RecipientCache>,
}

impl GrpcBackend {
    pub async fn connect(
        config: &IngressConfig,
        inbound: Option<InboundVerifier>,
    ) -> Result<GrpcBackend, ConnectError> {
        // Lazy: storage may be down at start; calls fail (→ 451) until it is back.
        let channel = mailfleet_runtime::grpc::storage_channel(
            &config.storage_url,
            &config.identity,
            Some(Duration::from_secs(60)),
        )
        .map_err(|e| ConnectError::StorageUrl(config.storage_url.clone(), e.to_string()))?;
        config.identity.report_expiry("smtp-ingress");
        let options =
            async_nats::ConnectOptions::new().retry_on_initial_connect().connection_timeout(Duration::from_secs(5));
        let client =
            mailfleet_runtime::nats::connect(&config.nats_url, &config.nats_tls, "smtp-ingress", options).await?;
        let js = jetstream::new(client);
        // In the background: with NATS down at start, the answer waits
        // for the JetStream timeout, and mail gets 451 meanwhile anyway.
        tokio::spawn(check_stream(js.clone(), config.queue.clone()));
        Ok(GrpcBackend {
            directory: DirectoryClient::new(channel.clone()),
            // The 10 MB+ messages go through one stream; lift tonic's 4 MB decode limit.
            messages: MessagesClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
            jetstream: js,
            subject: config.queue.subject.clone(),
            inbound,
            recipients: Arc::new(RecipientCache::new(config.recipient_cache_ttl, config.recipient_cache_size)),
        })
    }

    async fn put_blob(&self, header: Vec<u8>, body: Vec<u8>) -> Result<pb::PutBlobResponse, tonic::Status> {
        // The generated messages own a Vec<u8>: each 256 KiB chunk is copied
        // lazily as tonic pulls it, so at most one chunk exists besides the message.
        let body = Bytes::from(body);
        let header = std::iter::once(pb::PutBlobRequest { chunk: header });
        let chunks = (0..body.len().div_ceil(CHUNK)).map(move |i| {
            let end = ((i + 1) * CHUNK).min(body.len());
            pb::PutBlobRequest { chunk: body[i * CHUNK..end].to_vec() }
        });
        let mut request = tonic::Request::new(futures::stream::iter(header.chain(chunks)));
        mailfleet_runtime::telemetry::inject_grpc(request.metadata_mut());
        Ok(self.messages.clone().put_blob(request).await?.into_inner())
    }
}

/// The work-queue stream is delivery-queue's: it creates the stream and
/// keeps its settings, and smtp-ingress's NATS user may only publish jobs
/// and read the stream's description (docs/nats.md) — a compromised
/// smtp-ingress cannot reconfigure the queue and drop what it holds. So at
/// start smtp-ingress only says what is wrong: a job published before the
/// stream exists gets no acknowledgement, and its sender a 451.
async fn check_stream(js: jetstream::Context, names: QueueNames) {
    match js.get_stream(&names.stream).await {
        Ok(stream) => {
            let config = &stream.cached_info().config;
            if !config.subjects.contains(&names.subject) {
                tracing::warn!(stream = %names.stream, subject = %names.subject, subjects = ?config.subjects,
                    "the queue stream does not capture the job subject: every message gets 451");
            } else if config.num_replicas != names.replicas.max(1) {
                tracing::warn!(stream = %names.stream, replicas = config.num_replicas, configured = names.replicas,
                    "the queue stream has another replica count than queue.replicas (delivery-queue sets it)");
            }
        }
        Err(e) => tracing::warn!(stream = %names.stream, error = %e,
            "the queue stream is not there yet (delivery-queue creates it): mail gets 451 until it is"),
    }
}

/// Publish `job` until JetStream acknowledges it, for up to
/// [`PUBLISH_RETRY_FOR`]; every try carries the same `Nats-Msg-Id`, so a
/// try whose acknowledgement was lost and the one after it store one job.
async fn publish_job(
    js: &jetstream::Context,
    subject: &str,
    headers: async_nats::HeaderMap,
    job: Bytes,
) -> Result<(), BackendError> {
    let deadline = tokio::time::Instant::now() + PUBLISH_RETRY_FOR;
    let mut pause = Duration::from_millis(100);
    loop {
        let tried = async {
            let ack = js
                .publish_with_headers(subject.to_string(), headers.clone(), job.clone())
                .await
                .map_err(|e| format!("publish: {e}"))?;
            match tokio::time::timeout(PUBLISH_ACK_TIMEOUT, ack).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("publish ack: {e}")),
                Err(_) => Err("publish ack timed out".to_string()),
            }
        }
        .await;
        let error = match tried {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        if tokio::time::Instant::now() + pause >= deadline {
            return Err(BackendError::Unavailable(error));
        }
        tracing::warn!(%error, retry_in = ?pause, "job not acknowledged by JetStream; publishing it again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

fn unavailable(status: tonic::Status) -> BackendError {
    match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound => BackendError::Rejected(status.message().to_string()),
        _ => BackendError::Unavailable(format!("{}: {}", status.code(), status.message())),
    }
}

impl Backend for GrpcBackend {
    async fn authenticate(
        &self,
        username: &str,
        password: &str,
        client: std::net::IpAddr,
    ) -> Result<Option<AuthUser>, BackendError> {
        let mut req = tonic::Request::new(pb::AuthenticateRequest {
            username: username.into(),
            password: password.into(),
            client_ip: client.to_string(),
        });
        mailfleet_runtime::telemetry::inject_grpc(req.metadata_mut());
        match self.directory.clone().authenticate(req).await {
            Ok(grant) => {
                let grant = grant.into_inner();
                let session = SessionToken::renewed(&grant, self.directory.clone())
                    .map_err(|e| BackendError::Unavailable(e.to_string()))?;
                let a = grant.account.unwrap_or_default();
                Ok(Some(AuthUser { account_id: a.id, address: a.address, session }))
            }
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unauthenticated
                        | tonic::Code::PermissionDenied
                        | tonic::Code::NotFound
                        | tonic::Code::InvalidArgument
                ) =>
            {
                Ok(None)
            }
            // Authenticate's RESOURCE_EXHAUSTED is the auth throttle.
            Err(s) if s.code() == tonic::Code::ResourceExhausted => Err(BackendError::Throttled),
            Err(s) => Err(unavailable(s)),
        }
    }

    async fn resolve_recipient(&self, address: &str) -> Result<Resolution, BackendError> {
        if let Some(accounts) = self.recipients.get(address) {
            return Ok(Resolution::Local(accounts));
        }
        let mut req = tonic::Request::new(pb::ResolveRecipientRequest { address: address.into() });
        mailfleet_runtime::telemetry::inject_grpc(req.metadata_mut());
        let resp = self.directory.clone().resolve_recipient(req).await.map_err(unavailable)?.into_inner();
        use pb::resolve_recipient_response::Kind;
        Ok(match resp.kind() {
            Kind::Local => {
                let accounts: Vec<LocalAccount> =
                    resp.accounts.into_iter().map(|a| LocalAccount { id: a.id, address: a.address }).collect();
                self.recipients.put(address, &accounts);
                Resolution::Local(accounts)
            }
            Kind::NotLocal => Resolution::NotLocal,
            Kind::UnknownUser | Kind::Unspecified => Resolution::UnknownUser,
        })
    }

    async fn can_send_as(&self, user: &AuthUser, address: &str) -> Result<bool, BackendError> {
        let mut req =
            tonic::Request::new(pb::CanSendAsRequest { account_id: user.account_id, address: address.into() });
        mailfleet_runtime::telemetry::inject_grpc(req.metadata_mut());
        // The submitter's own session: storage refuses a question about
        // another account.
        let req = user.session.attach(req);
        match self.directory.clone().can_send_as(req).await {
            Ok(r) => Ok(r.into_inner().allowed),
            Err(s) if s.code() == tonic::Code::InvalidArgument => Ok(false),
            Err(s) => Err(unavailable(s)),
        }
    }

    async fn enqueue(&self, envelope: Envelope, header: Vec<u8>, body: Vec<u8>) -> Result<(), BackendError> {
        // 1. The blob, durable (fsynced) when PutBlob returns.
        let blob = self.put_blob(header, body).await.map_err(|s| BackendError::Unavailable(s.to_string()))?;
        // 2. The job; acknowledged by JetStream once stored.
        let job = qpb::DeliveryJob {
            queue_id: envelope.queue_id.clone(),
            blob_id: blob.blob_id,
            size: blob.size,
            mail_from: envelope.mail_from,
            recipients: envelope
                .recipients
                .into_iter()
                .map(|r| qpb::Recipient {
                    address: r.address,
                    notify: r.notify,
                    orcpt: r.orcpt,
                    accounts: r
                        .accounts
                        .into_iter()
                        .map(|a| qpb::LocalAccount { id: a.id, address: a.address })
                        .collect(),
                })
                .collect(),
            ret: envelope.ret,
            envid: envelope.envid,
            received_at: Some(prost_types::Timestamp::from(envelope.received_at)),
            auth_user: envelope.auth_user,
            client_ip: envelope.client_ip.to_string(),
            helo: envelope.helo,
            smtputf8: envelope.smtputf8,
            body_type: envelope.body_type.into(),
        };
        // A producer span (OTel messaging conventions): the job's consumer
        // in delivery-queue becomes its child through the headers.
        let span = tracing::info_span!(
            "publish",
            otel.name = %format!("publish {}", self.subject),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.destination.name = %self.subject,
            messaging.message.id = %envelope.queue_id,
        );
        async {
            let mut headers = async_nats::HeaderMap::new();
            // Deduplicates a retried publish (JetStream duplicate window).
            headers.insert("Nats-Msg-Id", envelope.queue_id.as_str());
            mailfleet_runtime::telemetry::inject_nats(&mut headers);
            publish_job(&self.jetstream, &self.subject, headers, job.encode_to_vec().into()).await
        }
        .instrument(span)
        .await?;
        // The blob is now referenced by a durable job (storage's sweep
        // keeps the blobs of queued jobs). If step 2 failed the blob stays
        // unreferenced and the sweep removes it later.
        Ok(())
    }

    async fn verify_inbound(&self, client_ip: IpAddr, helo: &str, mail_from: &str, message: &[u8]) -> InboundVerdict {
        match &self.inbound {
            Some(v) => v.verify(client_ip, helo, mail_from, message).await,
            None => InboundVerdict::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every try of one job's publish, the last one's acknowledgement
    /// included, falls within the stream's duplicate window: the job is
    /// stored once however many tries it took.
    #[test]
    fn publish_retries_stay_within_the_duplicate_window() {
        assert!(PUBLISH_RETRY_FOR + PUBLISH_ACK_TIMEOUT < mailfleet_runtime::nats::DUPLICATE_WINDOW);
    }
}
