//! delivery-queue: consumes delivery jobs from JetStream and delivers them.
//!
//! A durable pull consumer on the work-queue stream `MAIL_QUEUE` is shared
//! by every replica. A job is acked only after storage confirmed every local
//! delivery (delivery keys make a redelivered job harmless); a temporary
//! failure naks it with a growing delay, so nothing is dropped and nothing
//! busy-loops. Remote recipients go to the `MAIL_RELAY` stream for the relay.
//!
//! On shutdown ([`pull`]) no new job is pulled, jobs already started finish
//! within `shutdown_grace`, and anything else is handed back for redelivery.

// Tests set environment variables (unsafe since Rust 2024); the code itself needs none.
#![cfg_attr(not(test), forbid(unsafe_code))]

pub mod config;
pub mod metrics;
pub mod pull;
pub mod redelivery;
pub mod relay;
pub mod state;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, kv};
use mailfleet_proto::queue::v1 as qpb;
use mailfleet_runtime::health::{self, Health};
use prost::Message;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use tracing::Instrument;

pub use config::QueueConfig;
use worker::{Outcome, Worker};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("storage URL {0}: {1}")]
    StorageUrl(String, String),
    #[error("NATS: {0}")]
    Nats(String),
    #[error(transparent)]
    Connect(#[from] mailfleet_runtime::nats::NatsError),
    #[error("configuration: {0}")]
    Config(#[from] redelivery::RuleError),
    #[error("DNS resolver: {0}")]
    Resolver(String),
    #[error("relay TLS: {0}")]
    Tls(#[from] relay::tls::TrustError),
    #[error("binding the health endpoint {addr}: {source}")]
    HealthBind { addr: SocketAddr, source: std::io::Error },
}

/// How often the queue depth gauge is sampled from the consumers.
const DEPTH_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

fn nats_err(e: impl std::fmt::Display) -> QueueError {
    QueueError::Nats(e.to_string())
}

/// Create the queue and relay streams and the state bucket, or bring
/// existing ones to this configuration (replica count, duplicate window).
pub async fn ensure_streams(js: &jetstream::Context, config: &QueueConfig) -> Result<kv::Store, QueueError> {
    use mailfleet_runtime::nats::{ensure_stream, work_queue};
    let replicas = config.stream_replicas;
    ensure_stream(js, work_queue(&config.stream, &config.subject, replicas)).await?;
    ensure_stream(js, work_queue(&config.relay_stream, &config.relay_subject, replicas)).await?;
    // The bucket's stream is created directly with the settings
    // `create_key_value` would use: that call first queries account info,
    // which async-nats 0.51 cannot parse from nats-server 2.9.
    let bucket = &config.state_bucket;
    ensure_stream(
        js,
        jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas.max(1),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            ..Default::default()
        },
    )
    .await?;
    js.get_key_value(bucket.clone()).await.map_err(|e| QueueError::Nats(format!("key-value bucket {bucket}: {e}")))
}

/// The durable pull consumer `name` on `stream`, created or brought to
/// these settings (a consumer made by an older version keeps its
/// undelivered jobs and gets the new `ack_wait`).
pub async fn ensure_consumer(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    ack_wait: Duration,
) -> Result<PullConsumer, QueueError> {
    let stream = js.get_stream(stream).await.map_err(|e| QueueError::Nats(format!("stream {stream}: {e}")))?;
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(name.to_string()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait,
            // Never give up on a job (-1 = unlimited deliveries): local
            // delivery's max_age and the relay's schedule decide that.
            max_deliver: -1,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await
        .map_err(|e| QueueError::Nats(format!("consumer {name}: {e}")))
}

/// Connect to the configured NATS server(s).
pub async fn connect_nats(config: &QueueConfig) -> Result<jetstream::Context, QueueError> {
    let options = async_nats::ConnectOptions::new().retry_on_initial_connect();
    Ok(jetstream::new(
        mailfleet_runtime::nats::connect(&config.nats_url, &config.nats_tls, "delivery-queue", options).await?,
    ))
}

/// A running delivery-queue; `task` ends after shutdown once in-flight jobs
/// are finished (or given back after the grace period).
pub struct RunningQueue {
    /// `GET /healthz` endpoint, when configured.
    pub health_addr: Option<SocketAddr>,
    pub task: JoinHandle<()>,
}

/// Start consuming; stops pulling when `shutdown` fires.
pub async fn run(config: QueueConfig, shutdown: CancellationToken) -> Result<RunningQueue, QueueError> {
    run_with_clock(config, worker::Clock::system(), shutdown).await
}

/// [`run`], with message ages measured against `clock` (tests).
pub async fn run_with_clock(
    config: QueueConfig,
    clock: worker::Clock,
    shutdown: CancellationToken,
) -> Result<RunningQueue, QueueError> {
    redelivery::check(&config)?;
    let channel =
        mailfleet_runtime::grpc::storage_channel(&config.storage_url, &config.identity, Some(Duration::from_secs(120)))
            .map_err(|e| QueueError::StorageUrl(config.storage_url.clone(), e.to_string()))?;
    config.identity.report_expiry("delivery-queue");
    let js = connect_nats(&config).await?;
    let kv = ensure_streams(&js, &config).await?;
    let consumer = ensure_consumer(&js, &config.stream, &config.consumer, config.ack_wait).await?;
    // Bound before the relay starts, so a failure leaves nothing running.
    let health = Health::new();
    let health_addr = match config.health_listen {
        Some(addr) => Some(
            health::serve(addr, health.clone(), shutdown.clone())
                .await
                .map_err(|source| QueueError::HealthBind { addr, source })?
                .addr,
        ),
        None => None,
    };
    let relay = match config.relay.enabled {
        true => {
            let resolver =
                relay::route::HickoryResolver::from_system_conf().map_err(|e| QueueError::Resolver(e.to_string()))?;
            Some(
                relay::start(
                    &config,
                    js.clone(),
                    channel.clone(),
                    kv.clone(),
                    std::sync::Arc::new(resolver),
                    clock.clone(),
                    shutdown.clone(),
                )
                .await?,
            )
        }
        false => None,
    };
    let worker = Worker::new(channel, js.clone(), &config, clock);
    let sampler = tokio::spawn(sample_depth(js, config.clone(), worker.metrics.clone(), shutdown.clone()));
    health.set_serving(true);
    tracing::info!(health_addr = ?health_addr, stream = %config.stream, "delivery-queue consuming");
    let task = tokio::spawn(async move {
        let (concurrency, grace) = (config.concurrency, config.shutdown_grace);
        let heartbeat = redelivery::heartbeat(config.ack_wait);
        let ctx = Arc::new(Ctx { worker, kv, config });
        pull::consume(consumer, concurrency, heartbeat, grace, shutdown, "queue", move |msg| {
            let ctx = ctx.clone();
            async move { handle(&ctx.worker, &ctx.kv, &ctx.config, msg).await }
        })
        .await;
        health.set_serving(false);
        if let Some(relay) = relay {
            let _ = relay.await;
        }
        let _ = sampler.await;
        tracing::info!("delivery-queue stopped");
    });
    Ok(RunningQueue { health_addr, task })
}

struct Ctx {
    worker: Worker,
    kv: kv::Store,
    config: QueueConfig,
}

/// Every few seconds, record how many jobs each consumer has not yet
/// acknowledged (waiting plus in flight) as `mailfleet.queue.depth`.
async fn sample_depth(
    js: jetstream::Context,
    config: QueueConfig,
    metrics: metrics::Metrics,
    shutdown: CancellationToken,
) {
    let mut targets = vec![(config.stream.clone(), config.consumer.clone())];
    if config.relay.enabled {
        targets.push((config.relay_stream.clone(), config.relay.consumer.clone()));
    }
    let mut tick = tokio::time::interval(DEPTH_SAMPLE_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (stream, consumer) in &targets {
            match consumer_depth(&js, stream, consumer).await {
                Ok(depth) => metrics.depth(stream, depth),
                Err(err) => tracing::debug!(error = %err, %stream, "cannot sample the queue depth"),
            }
        }
    }
}

async fn consumer_depth(js: &jetstream::Context, stream: &str, consumer: &str) -> Result<u64, QueueError> {
    let stream = js.get_stream(stream).await.map_err(nats_err)?;
    let mut consumer: PullConsumer = stream.get_consumer(consumer).await.map_err(nats_err)?;
    let info = consumer.info().await.map_err(nats_err)?;
    Ok(info.num_pending + info.num_ack_pending as u64)
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

async fn handle(worker: &Worker, kv: &kv::Store, config: &QueueConfig, msg: jetstream::Message) {
    let (attempts, seq) = match msg.info() {
        Ok(info) => (info.delivered.max(1) as u64, info.stream_sequence),
        Err(_) => (1, 0),
    };
    // A consumer span (OTel messaging conventions), child of the publish
    // in smtp-ingress through the trace context in the message headers.
    let span = tracing::info_span!(
        "job",
        otel.name = %format!("process {}", config.subject),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.destination.name = %config.subject,
        queue_id = tracing::field::Empty,
        attempts
    );
    if let Some(headers) = &msg.headers {
        mailfleet_runtime::telemetry::link_nats(&span, headers);
    }
    async {
        let job = match qpb::DeliveryJob::decode(msg.payload.clone()) {
            Ok(job) => job,
            Err(err) => {
                // Not a job: keeping it would only block the queue.
                tracing::error!(error = %err, seq, "undecodable job removed from the queue");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        tracing::Span::current().record("queue_id", job.queue_id.as_str());
        // Earlier attempts may have handed remote recipients to the relay.
        let mut state = match state::load(kv, &job.queue_id, state::resumed(&msg, attempts)).await {
            Ok(state) => state,
            Err(err) => {
                worker.metrics.nats_unavailable();
                let delay = worker::backoff(attempts, config.retry_initial, config.retry_max);
                tracing::warn!(error = %err, delay = ?delay, "cannot read the job's state; will retry");
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                return;
            }
        };
        // A first attempt may use the resolution made at receipt.
        let first = !state::resumed(&msg, attempts);
        match worker.attempt(&job, &mut state, first).await {
            Outcome::Done => {
                if let Some(at) = &job.received_at {
                    let received = UNIX_EPOCH
                        + Duration::from_secs(u64::try_from(at.seconds).unwrap_or(0))
                        + Duration::from_nanos(u64::try_from(at.nanos).unwrap_or(0));
                    worker.metrics.job_done(SystemTime::now().duration_since(received).unwrap_or_default());
                }
                if let Err(err) = msg.double_ack().await {
                    // Redelivery is harmless (delivery keys), so just log.
                    tracing::warn!(error = %err, "ack failed; the job may be redelivered");
                }
                if attempts > 1 || !state.failed.is_empty() || state.relayed {
                    state::forget(kv, &job.queue_id).await;
                }
                tracing::info!(recipients = job.recipients.len(), failed = state.failed.len(), "job done");
            }
            Outcome::Retry(error) => {
                let delay = worker::backoff(attempts, config.retry_initial, config.retry_max);
                tracing::warn!(%error, delay = ?delay, "delivery failed temporarily; will retry");
                state.queue_id = job.queue_id.clone();
                state.stream_seq = seq;
                state.attempts = attempts;
                state.next_retry = now_unix() + delay.as_secs();
                state.last_error = error;
                state.mail_from = job.mail_from.clone();
                state.recipients = job.recipients.iter().map(|r| r.address.clone()).collect();
                // Unsaved, the next attempt would not know that remote
                // recipients went to the relay or who was bounced: it must
                // come while its publishes are still deduplicated.
                let delay = match state::save(kv, &job.queue_id, &state).await {
                    Ok(()) => delay,
                    Err(_) => delay.min(redelivery::UNSAVED_STATE_RETRY),
                };
                // RFC 5321 §4.5.4.1: retry later, never drop.
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }
    .instrument(span)
    .await
}
