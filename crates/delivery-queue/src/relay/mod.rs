//! Outbound relay: delivers remote recipients by SMTP.
//!
//! The delivery worker hands remote recipients to the `MAIL_RELAY` stream
//! (one `DeliveryJob` with only those recipients). The relay consumes that
//! stream with a durable pull consumer shared by every replica:
//!
//! 1. group the pending recipients by domain and route each domain
//!    ([`route`]: smarthost, MX by preference, implicit MX, null MX);
//! 2. send one transaction per domain (several recipients at once) over a
//!    pooled connection ([`client`]), limited per destination;
//! 3. recipients accepted or refused for good are recorded as done in the
//!    queue-state bucket (so a retry never sends to them again); a
//!    temporary failure naks the job with the next delay of the [`schedule`];
//!    once the message is older than `max_age` it fails with 4.4.7;
//! 4. failures (and successes when NOTIFY=SUCCESS asks) are reported to the
//!    sender with a DSN ([`dsn`]) stored through storage and queued on the
//!    main queue subject from the null sender, so local delivery (or the
//!    relay again, for a remote sender) takes it from there. Mail from the
//!    null sender never gets a DSN (RFC 3461 §6.2, RFC 5321 §4.5.5).
//!
//! Outgoing mail is DKIM-signed ([`dkim`]) when storage has a key for the
//! author's domain and the sender may send as the author.

pub mod client;
mod destination;
pub mod dkim;
pub mod dsn;
pub mod metrics;
pub mod mta_sts;
pub mod route;
pub mod schedule;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, kv};
use chrono::{DateTime, Utc};
use mailfleet_proto::queue::v1 as qpb;
use mailfleet_proto::storage::v1 as pb;
use pb::messages_client::MessagesClient;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::QueueError;
use crate::config::QueueConfig;
use crate::state::JobState;
use client::{ClientError, ClientOptions, Envelope, RcptTo, Reply, SmtpConnection, TlsMode};
use dsn::Action;
use route::{Hop, RouteError, SharedResolver};
use schedule::Schedule;

/// What to do with an 8-bit body when the far side lacks 8BITMIME.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EightBitPolicy {
    /// RFC 6152 §3: the client must not send 8-bit data to a server that
    /// did not announce 8BITMIME; without a converter that means a bounce
    /// (5.6.3, conversion required but not supported).
    Bounce,
    /// Send it anyway, as many MTAs do (most 7-bit servers pass it through).
    Send,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RelayConfig {
    /// Run the relay inside delivery-queue. Off by default so that a
    /// development machine never sends mail to the internet unless asked
    /// (`MAILFLEET_QUEUE_RELAY__ENABLED=true`); remote jobs wait in the
    /// relay stream meanwhile.
    pub enabled: bool,
    /// Durable consumer on the relay stream, shared by every replica.
    pub consumer: String,
    /// Our host name: EHLO argument, Reporting-MTA and MAILER-DAEMON domain.
    pub hostname: String,
    /// SMTP port of mail exchangers (RFC 5321 §4.5.4: 25).
    pub port: u16,
    /// Jobs relayed at once by this replica.
    pub concurrency: usize,
    /// Simultaneous connections per destination domain (be a polite client).
    pub per_destination: usize,
    /// Recipients per transaction (RFC 5321 §4.5.3.1.8: servers must take 100).
    pub max_recipients: usize,
    /// Send everything through this host (`host` or `host:port`).
    pub smarthost: Option<String>,
    /// Per-domain smarthosts, e.g. `{"example.org" = "relay.example.net:587"}`.
    pub smarthosts: BTreeMap<String, String>,
    /// Login for smarthosts (AUTH PLAIN, only over TLS or loopback).
    pub smarthost_auth: Option<client::Credentials>,
    /// TLS for every destination: opportunistic (default; certificates not
    /// checked, RFC 7435), required (verified certificates), disabled.
    pub tls: TlsMode,
    /// Domains for which TLS with a verified certificate is required (no
    /// plain-text fallback).
    pub require_tls: Vec<String>,
    /// PEM certificates trusted besides the system's trust anchors (a
    /// private CA of a smarthost or of `require_tls` destinations).
    pub tls_extra_roots: Option<std::path::PathBuf>,
    /// Honour MTA-STS policies (RFC 8461) of destination domains.
    pub mta_sts: bool,
    /// How long fetching one MTA-STS policy over HTTPS may take.
    #[serde(with = "humantime_serde")]
    pub mta_sts_fetch_timeout: Duration,
    pub schedule: Schedule,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// RFC 5321 §4.5.3.2: 5 minutes for replies.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// RFC 5321 §4.5.3.2.6: 10 minutes for the reply to the final dot.
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// How long an idle connection is kept for reuse.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// JetStream redelivers a job that neither finished nor said it is
    /// still in progress within this time (a dead relay); a long SMTP
    /// session says so every quarter of it. At most 30 s
    /// ([`crate::redelivery`]).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Send a "delayed" DSN (only to recipients that asked with NOTIFY=DELAY)
    /// once a message has waited this long; unset = never.
    #[serde(with = "humantime_serde::option")]
    pub delay_notice_after: Option<Duration>,
    pub eight_bit_without_8bitmime: EightBitPolicy,
    /// Sign outgoing mail when storage has a DKIM key for the author's domain.
    pub dkim: bool,
    /// Originals larger than this are returned as headers only in DSNs.
    pub max_return_size: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            enabled: false,
            consumer: "relay".into(),
            hostname: "localhost".into(),
            port: 25,
            concurrency: 16,
            per_destination: 4,
            max_recipients: 100,
            smarthost: None,
            smarthosts: BTreeMap::new(),
            smarthost_auth: None,
            tls: TlsMode::Opportunistic,
            require_tls: Vec::new(),
            tls_extra_roots: None,
            mta_sts: true,
            mta_sts_fetch_timeout: Duration::from_secs(30),
            schedule: Schedule::default(),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(30),
            ack_wait: Duration::from_secs(20),
            delay_notice_after: None,
            eight_bit_without_8bitmime: EightBitPolicy::Bounce,
            dkim: true,
            max_return_size: 10 << 20,
        }
    }
}

/// Key of a relay job's entry in the queue-state bucket. Kept apart from the
/// delivery worker's `<queue_id>` entry, which it removes when it is done.
pub fn state_key(queue_id: &str) -> String {
    format!("{queue_id}.relay")
}

/// How one recipient fared in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// Accepted by the far side; `dsn_passed` when it speaks DSN (RFC 3461),
    /// so it reports success itself.
    Delivered {
        reply: String,
        remote: String,
        dsn_passed: bool,
    },
    Failed {
        status: String,
        diagnostic: String,
        remote: Option<String>,
    },
    Deferred {
        diagnostic: String,
        remote: Option<String>,
    },
}

/// Idle connections by address, for reuse.
#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<(SmtpConnection, Instant)>>>,
}

impl Pool {
    fn take(&self, addr: SocketAddr, max_idle: Duration) -> Option<SmtpConnection> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(&addr)?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < max_idle {
                return Some(conn);
            }
        }
        None
    }
    /// Keep `conn` for reuse; connections idle longer than `max_idle` are
    /// dropped here too, so the pool does not grow with every destination.
    fn put(&self, conn: SmtpConnection, max_idle: Duration) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|_, list| {
                list.retain(|(_, since)| since.elapsed() < max_idle);
                !list.is_empty()
            });
            idle.entry(conn.addr).or_default().push((conn, Instant::now()));
        }
    }
}

/// The relay worker (cheap to share between concurrent jobs).
pub struct Relay {
    config: RelayConfig,
    relay_stream: String,
    resolver: SharedResolver,
    messages: MessagesClient<Channel>,
    kv: kv::Store,
    pool: Pool,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
    dkim: dkim::DkimKeys,
    dsn: DsnSender,
    metrics: metrics::Metrics,
    /// Trust anchors and TLS client configurations.
    trust: tls::TlsTrust,
    sts: mta_sts::MtaSts,
    /// What message ages (expiry, delay notices) and retry times are
    /// measured against: the system clock, or one a test moves.
    clock: crate::worker::Clock,
}

/// Connect to NATS and storage and start the relay (used by tests and by
/// anyone running the relay alone); stops pulling when `shutdown` fires.
pub async fn run(
    config: QueueConfig,
    resolver: SharedResolver,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, QueueError> {
    run_with_clock(config, resolver, crate::worker::Clock::system(), shutdown).await
}

/// [`run`], with message ages measured against `clock` (tests).
pub async fn run_with_clock(
    config: QueueConfig,
    resolver: SharedResolver,
    clock: crate::worker::Clock,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, QueueError> {
    let channel =
        mailfleet_runtime::grpc::storage_channel(&config.storage_url, &config.identity, Some(Duration::from_secs(120)))
            .map_err(|e| QueueError::StorageUrl(config.storage_url.clone(), e.to_string()))?;
    let js = crate::connect_nats(&config).await?;
    let kv = crate::ensure_streams(&js, &config).await?;
    start(&config, js, channel, kv, resolver, clock, shutdown).await
}

/// Start the relay consumer on existing connections.
pub async fn start(
    config: &QueueConfig,
    js: jetstream::Context,
    channel: Channel,
    kv: kv::Store,
    resolver: SharedResolver,
    clock: crate::worker::Clock,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, QueueError> {
    let rc = config.relay.clone();
    let trust = tls::TlsTrust::load(rc.tls_extra_roots.as_deref())?;
    let fetcher = mta_sts::HttpsFetcher::new(trust.roots(), resolver.clone(), rc.mta_sts_fetch_timeout)
        .map_err(|e| tls::TrustError::Config(e.to_string()))?;
    let sts = mta_sts::MtaSts::new(resolver.clone(), Arc::new(fetcher));
    let consumer = crate::ensure_consumer(&js, &config.relay_stream, &rc.consumer, rc.ack_wait).await?;
    let relay = Arc::new(Relay {
        trust,
        sts,
        dkim: dkim::DkimKeys::new(channel.clone(), rc.dkim, &rc.hostname),
        dsn: DsnSender::new(channel.clone(), js.clone(), config),
        relay_stream: config.relay_stream.clone(),
        metrics: metrics::Metrics::new(),
        messages: MessagesClient::new(channel),
        config: rc,
        resolver,
        kv,
        pool: Pool::default(),
        limits: Mutex::new(HashMap::new()),
        clock,
    });
    Ok(tokio::spawn(consume(consumer, relay, config.shutdown_grace, shutdown)))
}

async fn consume(consumer: PullConsumer, relay: Arc<Relay>, grace: Duration, shutdown: CancellationToken) {
    let concurrency = relay.config.concurrency.max(1);
    let heartbeat = crate::redelivery::heartbeat(relay.config.ack_wait);
    crate::pull::consume(consumer, concurrency, heartbeat, grace, shutdown, "relay", move |msg| {
        let relay = relay.clone();
        async move { relay.handle(msg).await }
    })
    .await;
}

/// Now, from the system clock (chrono's `clock` feature is not enabled).
fn utc_now() -> DateTime<Utc> {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    DateTime::from_timestamp(d.as_secs() as i64, d.subsec_nanos()).unwrap_or_default()
}

fn domain_of(address: &str) -> String {
    address.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default()
}

/// RFC 6531: does this message need SMTPUTF8 (non-ASCII envelope or header)?
pub fn needs_smtputf8(job: &qpb::DeliveryJob, message: &[u8]) -> bool {
    !job.mail_from.is_ascii()
        || job.recipients.iter().any(|r| !r.address.is_ascii())
        || (job.smtputf8 && !dsn::header_part(message).is_ascii())
}

impl Relay {
    /// Now in Unix seconds by the relay's clock.
    fn now_unix(&self) -> i64 {
        self.clock.now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
    }

    async fn handle(&self, msg: jetstream::Message) {
        let (attempts, seq) = match msg.info() {
            Ok(info) => (info.delivered.max(1) as u64, info.stream_sequence),
            Err(_) => (1, 0),
        };
        let span = tracing::info_span!("relay", queue_id = tracing::field::Empty, attempts);
        if let Some(headers) = &msg.headers {
            mailfleet_runtime::telemetry::link_nats(&span, headers);
        }
        async {
            let job = match qpb::DeliveryJob::decode(msg.payload.clone()) {
                Ok(job) => job,
                Err(err) => {
                    tracing::error!(error = %err, seq, "undecodable relay job removed");
                    let _ = msg.ack_with(AckKind::Term).await;
                    return;
                }
            };
            tracing::Span::current().record("queue_id", job.queue_id.as_str());
            let key = state_key(&job.queue_id);
            let mut state = match crate::state::load(&self.kv, &key, crate::state::resumed(&msg, attempts)).await {
                Ok(state) => state,
                Err(err) => {
                    let delay = self.config.schedule.delay(attempts);
                    tracing::warn!(error = %err, delay = ?delay, "cannot read the relay state; will retry");
                    let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                    return;
                }
            };
            // A long attempt (slow far side, waiting for a destination
            // slot) is kept alive by the pull loop's heartbeat, so it is
            // not redelivered to another replica meanwhile (a duplicate).
            match self.attempt(&job, attempts, &mut state).await {
                None => {
                    if let Err(err) = msg.double_ack().await {
                        tracing::warn!(error = %err, "relay ack failed; the job may be redelivered");
                    }
                    if attempts > 1 {
                        crate::state::forget(&self.kv, &key).await;
                    }
                }
                Some(delay) => {
                    state.queue_id = job.queue_id.clone();
                    state.stream_seq = seq;
                    state.attempts = attempts;
                    state.next_retry = (self.now_unix().max(0) as u64) + delay.as_secs();
                    state.mail_from = job.mail_from.clone();
                    state.remote = true;
                    state.stream = self.relay_stream.clone();
                    // Unsaved, the next attempt would not know who got the
                    // message already; it comes while the DSNs it may
                    // repeat are still deduplicated.
                    let delay = match crate::state::save(&self.kv, &key, &state).await {
                        Ok(()) => delay,
                        Err(_) => delay.min(crate::redelivery::UNSAVED_STATE_RETRY),
                    };
                    // RFC 5321 §4.5.4.1: keep it and retry later.
                    let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    /// One attempt; `Some(delay)` when recipients remain for a retry.
    async fn attempt(&self, job: &qpb::DeliveryJob, attempts: u64, state: &mut JobState) -> Option<Duration> {
        let delay = self.config.schedule.delay(attempts);
        let pending: Vec<&qpb::Recipient> =
            job.recipients.iter().filter(|r| !state.done.contains(&r.address)).collect();
        if pending.is_empty() {
            return None;
        }
        let message = match self.fetch(&job.blob_id).await {
            Ok(m) => m,
            Err(e) => {
                state.last_error = format!("reading the message from storage: {e}");
                state.recipients = pending.iter().map(|r| r.address.clone()).collect();
                tracing::warn!(error = %state.last_error, "relay attempt postponed");
                return Some(delay);
            }
        };
        // DKIM-sign what goes out, with the line ends it goes out with
        // (bare CR/LF become CRLF on the wire, RFC 5321 §2.3.8); DSNs attach
        // the message as it was sent to us.
        let original = message;
        let normalized = client::normalize_line_ends(&original);
        let signed;
        let message: &[u8] = match self.dkim.signature_for(job, &normalized).await {
            Some(header) => {
                signed = [header.as_bytes(), &normalized].concat();
                &signed
            }
            None => &normalized,
        };

        // One group (and transaction) per destination domain.
        let mut groups: BTreeMap<String, Vec<&qpb::Recipient>> = BTreeMap::new();
        for r in &pending {
            groups.entry(domain_of(&r.address)).or_default().push(r);
        }
        let results = futures::future::join_all(
            groups.iter().map(|(domain, rcpts)| self.deliver_domain(domain, rcpts, job, message)),
        )
        .await;

        let received = job.received_at.as_ref().map(|t| t.seconds).unwrap_or_else(|| self.now_unix());
        let expired = self.config.schedule.expired(received, self.now_unix());
        let mut reports: Vec<(dsn::RecipientReport, u32)> = Vec::new();
        let mut deferred: Vec<String> = Vec::new();
        let mut last = String::new();
        let now = utc_now();
        for (rcpt, outcome) in results.into_iter().flatten() {
            let report =
                |action, status: String, remote: Option<String>, diagnostic: Option<String>| dsn::RecipientReport {
                    final_recipient: rcpt.address.clone(),
                    original_recipient: rcpt.orcpt.clone(),
                    action,
                    status,
                    remote_mta: remote,
                    diagnostic,
                    last_attempt: Some(now),
                };
            match outcome {
                RcptOutcome::Delivered { reply, remote, dsn_passed } => {
                    tracing::info!(recipient = %rcpt.address, %remote, %reply, "relayed");
                    self.metrics.recipient("delivered");
                    state.done.push(rcpt.address.clone());
                    if !dsn_passed {
                        // RFC 3464 §2.3.3: "relayed" = handed to a system
                        // that will not send further DSNs.
                        let status = reply_status(&reply);
                        reports.push((report(Action::Relayed, status, Some(remote), Some(reply)), rcpt.notify));
                    }
                }
                RcptOutcome::Failed { status, diagnostic, remote } => {
                    tracing::warn!(recipient = %rcpt.address, %diagnostic, "relay failed permanently");
                    self.metrics.recipient("failed");
                    last = diagnostic.clone();
                    state.done.push(rcpt.address.clone());
                    reports.push((report(Action::Failed, status, remote, Some(diagnostic)), rcpt.notify));
                }
                RcptOutcome::Deferred { diagnostic, remote } if expired => {
                    // RFC 3463 4.4.7: delivery time expired.
                    tracing::warn!(recipient = %rcpt.address, %diagnostic, "giving up: message expired");
                    self.metrics.recipient("expired");
                    last = diagnostic.clone();
                    state.done.push(rcpt.address.clone());
                    // The status says "expired"; the diagnostic stays the
                    // far side's last answer.
                    reports.push((report(Action::Failed, "4.4.7".into(), remote, Some(diagnostic)), rcpt.notify));
                }
                RcptOutcome::Deferred { diagnostic, remote } => {
                    tracing::info!(recipient = %rcpt.address, %diagnostic, "relay deferred");
                    self.metrics.recipient("deferred");
                    last = diagnostic.clone();
                    deferred.push(rcpt.address.clone());
                    if let Some(after) = self.config.delay_notice_after
                        && !state.delay_notified
                        && self.now_unix().saturating_sub(received) >= after.as_secs() as i64
                    {
                        let status =
                            status_in(&diagnostic).filter(|s| s.starts_with('4')).unwrap_or_else(|| "4.0.0".into());
                        reports.push((report(Action::Delayed, status, remote, Some(diagnostic)), rcpt.notify));
                    }
                }
            }
        }
        if !last.is_empty() {
            state.last_error = last;
        }
        let delay_notified_before = state.delay_notified;
        if reports.iter().any(|(r, n)| r.action == Action::Delayed && dsn::wanted(*n, Action::Delayed)) {
            state.delay_notified = true;
        }
        let failed_now: Vec<String> = reports
            .iter()
            .filter(|(r, _)| r.action == Action::Failed)
            .map(|(r, _)| r.final_recipient.clone())
            .collect();
        if let Err(e) = self.notify(job, &original, reports).await {
            // The DSN is not queued: keep the failed recipients pending so the
            // next attempt reports them again (a bounce must not be lost);
            // the recipients already delivered stay done.
            tracing::warn!(error = %e, "cannot queue the DSN; the job will be retried");
            state.last_error = format!("queueing DSN: {e}");
            state.delay_notified = delay_notified_before;
            state.done.retain(|a| !failed_now.contains(a));
            state.recipients =
                job.recipients.iter().filter(|r| !state.done.contains(&r.address)).map(|r| r.address.clone()).collect();
            return Some(delay);
        }
        state.recipients = deferred;
        if state.recipients.is_empty() { None } else { Some(delay) }
    }

    async fn fetch(&self, blob_id: &str) -> Result<Vec<u8>, tonic::Status> {
        let mut req = tonic::Request::new(pb::FetchBlobRequest { blob_id: blob_id.to_string() });
        mailfleet_runtime::telemetry::inject_grpc(req.metadata_mut());
        let mut stream = self.messages.clone().fetch_blob(req).await?.into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if data.is_empty() && chunk.total_size > 0 {
                data.reserve(chunk.total_size as usize);
            }
            data.extend_from_slice(&chunk.data);
        }
        Ok(data)
    }

    fn limit(&self, domain: &str) -> Arc<Semaphore> {
        let mut limits = match self.limits.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        limits
            .entry(domain.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_destination.max(1))))
            .clone()
    }

    /// Deliver to every recipient of one domain.
    async fn deliver_domain<'r>(
        &self,
        domain: &str,
        rcpts: &[&'r qpb::Recipient],
        job: &qpb::DeliveryJob,
        message: &[u8],
    ) -> Vec<(&'r qpb::Recipient, RcptOutcome)> {
        let all = |o: RcptOutcome| rcpts.iter().map(|r| (*r, o.clone())).collect::<Vec<_>>();
        let smarthost = self.config.smarthosts.get(domain).or(self.config.smarthost.as_ref());
        let hops = match route::route(domain, smarthost.map(|s| s.as_str()), self.config.port, &*self.resolver).await {
            Ok(h) => h,
            Err(e @ RouteError::Temporary(_)) => {
                return all(RcptOutcome::Deferred { diagnostic: e.to_string(), remote: None });
            }
            Err(e) => {
                return all(RcptOutcome::Failed { status: e.status().into(), diagnostic: e.to_string(), remote: None });
            }
        };
        let (hops, options) = match self.destination(domain, smarthost.is_some(), hops).await {
            Ok(destination) => destination,
            Err(outcome) => return all(outcome),
        };
        let _permit = self.limit(domain).acquire_owned().await;
        let eight_bit = job.body_type != "7BIT" && message.iter().any(|b| *b >= 0x80);
        let smtputf8 = needs_smtputf8(job, message);
        let mut results = Vec::with_capacity(rcpts.len());
        for chunk in rcpts.chunks(self.config.max_recipients.max(1)) {
            let envelope = Envelope {
                mail_from: job.mail_from.clone(),
                rcpts: chunk
                    .iter()
                    .map(|r| RcptTo { address: r.address.clone(), notify: r.notify, orcpt: r.orcpt.clone() })
                    .collect(),
                eight_bit,
                smtputf8,
                ret: job.ret.clone(),
                envid: job.envid.clone(),
            };
            let outcomes = self.transaction(&hops, &options, &envelope, message).await;
            results.extend(chunk.iter().copied().zip(outcomes));
        }
        results
    }

    /// Try the hops in order (RFC 5321 §5.1: on a connection failure or a
    /// temporary refusal of the session, the next MX) until one decides.
    async fn transaction(
        &self,
        hops: &[Hop],
        options: &ClientOptions,
        env: &Envelope,
        message: &[u8],
    ) -> Vec<RcptOutcome> {
        let n = env.rcpts.len();
        let mut last_error = String::from("no mail exchanger reachable");
        let mut last_remote = None;
        for hop in hops {
            let addrs = match self.resolver.addrs(&hop.host, hop.port).await {
                Ok(a) if !a.is_empty() => a,
                Ok(_) | Err(route::DnsError::NotFound) => {
                    last_error = format!("{}: no address", hop.host);
                    continue;
                }
                Err(e) => {
                    last_error = format!("{}: {e}", hop.host);
                    continue;
                }
            };
            for addr in addrs {
                let mut conn = match self.connection(addr, &hop.host, options).await {
                    Ok(c) => c,
                    Err(e) => {
                        last_remote = Some(hop.host.clone());
                        if let Some(reply) = e.permanent_reply() {
                            return vec![failed(reply, &hop.host); n];
                        }
                        last_error = format!("{}: {e}", hop.host);
                        continue;
                    }
                };
                // Checks that need the far side's capabilities.
                if env.smtputf8 && !conn.caps.smtputf8 {
                    self.pool.put(conn, self.config.idle_timeout);
                    // RFC 6531 §3.2: must not be sent to a server without SMTPUTF8.
                    let r = Reply::new(553, "5.6.7 recipient's server does not support SMTPUTF8 (RFC 6531)");
                    return vec![failed(&r, &hop.host); n];
                }
                if env.eight_bit
                    && !conn.caps.eight_bit_mime
                    && self.config.eight_bit_without_8bitmime == EightBitPolicy::Bounce
                {
                    self.pool.put(conn, self.config.idle_timeout);
                    let r = Reply::new(554, "5.6.3 8-bit message, but the server does not support 8BITMIME (RFC 6152)");
                    return vec![failed(&r, &hop.host); n];
                }
                if let Some(max) = conn.caps.size
                    && max > 0
                    && message.len() as u64 > max
                {
                    self.pool.put(conn, self.config.idle_timeout);
                    // RFC 1870 §6: larger than the fixed maximum: permanent.
                    let r = Reply::new(
                        552,
                        format!("5.3.4 message size {} exceeds the server's limit {max}", message.len()),
                    );
                    return vec![failed(&r, &hop.host); n];
                }
                match conn.send(env, message).await {
                    Ok(results) => {
                        let dsn_passed = conn.caps.dsn;
                        self.pool.put(conn, self.config.idle_timeout);
                        return results
                            .into_iter()
                            .map(|r| {
                                if r.reply.is_positive() {
                                    RcptOutcome::Delivered {
                                        reply: r.reply.to_string(),
                                        remote: hop.host.clone(),
                                        dsn_passed,
                                    }
                                } else if r.reply.is_transient() {
                                    RcptOutcome::Deferred {
                                        diagnostic: r.reply.to_string(),
                                        remote: Some(hop.host.clone()),
                                    }
                                } else {
                                    failed(&r.reply, &hop.host)
                                }
                            })
                            .collect();
                    }
                    Err(e) => {
                        last_remote = Some(hop.host.clone());
                        if let Some(reply) = e.permanent_reply() {
                            // MAIL FROM refused for good: every recipient fails.
                            self.pool.put(conn, self.config.idle_timeout);
                            return vec![failed(reply, &hop.host); n];
                        }
                        if matches!(e, ClientError::Rejected { .. }) {
                            self.pool.put(conn, self.config.idle_timeout);
                        }
                        last_error = format!("{}: {e}", hop.host);
                    }
                }
            }
        }
        vec![RcptOutcome::Deferred { diagnostic: last_error, remote: last_remote }; n]
    }

    /// A pooled connection (checked with RSET) or a new one.
    async fn connection(
        &self,
        addr: SocketAddr,
        host: &str,
        options: &ClientOptions,
    ) -> Result<SmtpConnection, ClientError> {
        while let Some(mut conn) = self.pool.take(addr, self.config.idle_timeout) {
            // A connection made under a weaker TLS policy, or verified for
            // another host name at the same address, is not reused.
            let verified = options.tls_checks.verify != tls::Verify::Enforce || (conn.verified && conn.host == host);
            let usable = (conn.tls || options.tls != TlsMode::Required)
                && (conn.authenticated || options.auth.is_none())
                && verified;
            if usable && conn.reset().await.is_ok() {
                return Ok(conn);
            }
        }
        let conn = SmtpConnection::connect(addr, host, options).await?;
        self.metrics.connection(conn.tls);
        Ok(conn)
    }

    /// Queue the DSNs this attempt calls for (one per kind of action).
    async fn notify(
        &self,
        job: &qpb::DeliveryJob,
        original: &[u8],
        reports: Vec<(dsn::RecipientReport, u32)>,
    ) -> Result<(), String> {
        if job.mail_from.is_empty() {
            // RFC 3461 §6.2 / RFC 5321 §4.5.5: never a DSN for a DSN.
            return Ok(());
        }
        let wanted: Vec<dsn::RecipientReport> =
            reports.into_iter().filter(|(r, notify)| dsn::wanted(*notify, r.action)).map(|(r, _)| r).collect();
        for action in [Action::Failed, Action::Delayed, Action::Relayed] {
            let recipients: Vec<dsn::RecipientReport> = wanted.iter().filter(|r| r.action == action).cloned().collect();
            if recipients.is_empty() {
                continue;
            }
            self.dsn.send(job, original, action, recipients).await?;
            self.metrics.dsn(action.as_str());
        }
        Ok(())
    }
}

/// Queues delivery status notifications: stores the report through storage
/// and publishes a job from the null sender on the main queue subject, so the
/// ordinary delivery path takes it to the sender (locally or by relay).
/// Usable by the local delivery worker for its own permanent failures.
#[derive(Clone)]
pub struct DsnSender {
    messages: MessagesClient<Channel>,
    jetstream: jetstream::Context,
    subject: String,
    hostname: String,
    max_return: usize,
}

impl DsnSender {
    pub fn new(channel: Channel, jetstream: jetstream::Context, config: &QueueConfig) -> DsnSender {
        DsnSender {
            messages: MessagesClient::new(channel),
            jetstream,
            subject: config.subject.clone(),
            hostname: config.relay.hostname.clone(),
            max_return: config.relay.max_return_size,
        }
    }

    /// Report permanent failures of local delivery: `failures` are
    /// (recipient, RFC 3463 status, diagnostic). Honours NOTIFY and never
    /// reports on mail from the null sender (RFC 3461 §6.2).
    pub async fn bounce_failures(
        &self,
        job: &qpb::DeliveryJob,
        failures: &[(String, String, String)],
    ) -> Result<(), String> {
        if job.mail_from.is_empty() {
            return Ok(());
        }
        let now = utc_now();
        let recipients: Vec<dsn::RecipientReport> = failures
            .iter()
            .filter_map(|(address, status, diagnostic)| {
                let r = job.recipients.iter().find(|r| r.address.eq_ignore_ascii_case(address));
                let notify = r.map(|r| r.notify).unwrap_or(0);
                dsn::wanted(notify, Action::Failed).then(|| dsn::RecipientReport {
                    final_recipient: address.clone(),
                    original_recipient: r.map(|r| r.orcpt.clone()).unwrap_or_default(),
                    action: Action::Failed,
                    status: status.clone(),
                    remote_mta: None,
                    diagnostic: Some(diagnostic.clone()),
                    last_attempt: Some(now),
                })
            })
            .collect();
        if recipients.is_empty() {
            return Ok(());
        }
        let mut req = tonic::Request::new(pb::FetchBlobRequest { blob_id: job.blob_id.clone() });
        mailfleet_runtime::telemetry::inject_grpc(req.metadata_mut());
        let mut stream =
            self.messages.clone().fetch_blob(req).await.map_err(|e| format!("reading the original: {e}"))?.into_inner();
        let mut original = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(|e| format!("reading the original: {e}"))? {
            original.extend_from_slice(&chunk.data);
        }
        self.send(job, &original, Action::Failed, recipients).await
    }

    /// Build the DSN for `recipients` of `job`, store it and queue it from
    /// the null sender to the job's sender, with the queue id and
    /// JetStream message id [`dsn_id`]: a job that comes back after its
    /// worker died and reports the same recipients again queues nothing
    /// new (the stream drops the repeat), while a later report on other
    /// recipients is a DSN of its own.
    pub async fn send(
        &self,
        job: &qpb::DeliveryJob,
        original: &[u8],
        action: Action,
        recipients: Vec<dsn::RecipientReport>,
    ) -> Result<(), String> {
        let arrival = job
            .received_at
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
            .unwrap_or_else(utc_now);
        let dsn_id = dsn_id(&job.queue_id, action, &recipients);
        let bytes = dsn::build(
            &dsn::Report {
                reporting_mta: &self.hostname,
                to: &job.mail_from,
                envid: &job.envid,
                arrival,
                ret: &job.ret,
                original,
                recipients,
                max_return: self.max_return,
            },
            utc_now(),
            &format!("{dsn_id}@{}", self.hostname),
        );
        let size = bytes.len() as u64;
        let eight_bit = bytes.iter().any(|b| *b >= 0x80);
        let chunks: Vec<pb::PutBlobRequest> =
            bytes.chunks(1 << 20).map(|c| pb::PutBlobRequest { chunk: c.to_vec() }).collect();
        let mut req = tonic::Request::new(futures::stream::iter(chunks));
        mailfleet_runtime::telemetry::inject_grpc(req.metadata_mut());
        let blob = self.messages.clone().put_blob(req).await.map_err(|e| format!("storing the DSN: {e}"))?.into_inner();
        let now = utc_now();
        let bounce = qpb::DeliveryJob {
            queue_id: dsn_id.clone(),
            blob_id: blob.blob_id,
            size,
            // RFC 3461 §6.2 / RFC 5321 §4.5.5: DSNs come from the null sender.
            mail_from: String::new(),
            recipients: vec![qpb::Recipient {
                address: job.mail_from.clone(),
                notify: dsn::NOTIFY_NEVER,
                orcpt: String::new(),
                accounts: Vec::new(),
            }],
            ret: String::new(),
            envid: String::new(),
            received_at: Some(prost_types::Timestamp { seconds: now.timestamp(), nanos: 0 }),
            auth_user: String::new(),
            client_ip: String::new(),
            helo: self.hostname.clone(),
            smtputf8: false,
            body_type: if eight_bit { "8BITMIME".into() } else { "7BIT".into() },
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", dsn_id.as_str());
        mailfleet_runtime::telemetry::inject_nats(&mut headers);
        let ack = self
            .jetstream
            .publish_with_headers(self.subject.clone(), headers, bounce.encode_to_vec().into())
            .await
            .map_err(|e| format!("publishing the DSN: {e}"))?;
        ack.await.map_err(|e| format!("publishing the DSN: {e}"))?;
        tracing::info!(dsn = %dsn_id, action = action.as_str(), to = %job.mail_from, "DSN queued");
        Ok(())
    }
}

/// `<queue id>.<action>.<digest of the recipients reported on>`: the same
/// report on the same job always gets the same id.
pub fn dsn_id(queue_id: &str, action: Action, recipients: &[dsn::RecipientReport]) -> String {
    let mut addresses: Vec<String> = recipients.iter().map(|r| r.final_recipient.to_ascii_lowercase()).collect();
    addresses.sort();
    addresses.dedup();
    // FNV-1a: stable across builds and versions, unlike std's hasher (a
    // job may come back to a newer delivery-queue).
    let mut digest: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in addresses.join("\n").bytes() {
        digest = (digest ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{queue_id}.{}.{digest:016x}", action.as_str())
}

fn failed(reply: &Reply, host: &str) -> RcptOutcome {
    RcptOutcome::Failed { status: reply.status(), diagnostic: reply.to_string(), remote: Some(host.to_string()) }
}

/// The RFC 3463 status in a reply string like "250 2.0.0 Ok", if any.
fn status_in(reply: &str) -> Option<String> {
    reply
        .split_whitespace()
        .nth(1)
        .filter(|s| s.split('.').count() == 3 && s.starts_with(['2', '4', '5']))
        .map(str::to_string)
}

fn reply_status(reply: &str) -> String {
    status_in(reply).unwrap_or_else(|| "2.0.0".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_nests_in_the_queue_config_with_defaults() {
        let c: QueueConfig = serde_json::from_str(
            r#"{"relay": {"enabled": true, "hostname": "mail.example.org",
                "smarthosts": {"example.net": "relay.example.net:2525"},
                "smarthost_auth": {"username": "u", "password": "p"},
                "schedule": {"intervals": ["2m", "10m"]}, "delay_notice_after": "4h"}}"#,
        )
        .expect("config parses");
        assert!(c.relay.enabled);
        assert_eq!(c.relay.port, 25);
        assert_eq!(c.relay.schedule.intervals, vec![Duration::from_secs(120), Duration::from_secs(600)]);
        assert_eq!(c.relay.schedule.max_age, Duration::from_secs(5 * 24 * 3600));
        assert_eq!(c.relay.delay_notice_after, Some(Duration::from_secs(4 * 3600)));
        assert_eq!(c.relay.smarthosts.get("example.net").map(String::as_str), Some("relay.example.net:2525"));
        assert_eq!(c.relay.tls, TlsMode::Opportunistic);
        assert!(!RelayConfig::default().enabled, "off unless asked for");
    }

    #[test]
    fn statuses_from_replies() {
        assert_eq!(reply_status("250 2.1.5 ok"), "2.1.5");
        assert_eq!(reply_status("250 ok"), "2.0.0");
        assert_eq!(status_in("451 4.7.1 greylisted").as_deref(), Some("4.7.1"));
        assert_eq!(status_in("mx: connection refused"), None);
        assert_eq!(state_key("Q1"), "Q1.relay");
    }

    #[test]
    fn a_repeated_report_has_the_same_dsn_id_and_another_report_another() {
        let report = |address: &str| dsn::RecipientReport {
            final_recipient: address.into(),
            original_recipient: String::new(),
            action: Action::Failed,
            status: "5.1.1".into(),
            remote_mta: None,
            diagnostic: None,
            last_attempt: None,
        };
        let first = dsn_id("Q1", Action::Failed, &[report("a@x.test"), report("b@x.test")]);
        assert!(first.starts_with("Q1.failed."), "{first}");
        // The job came back and reports the same recipients (in any order).
        assert_eq!(first, dsn_id("Q1", Action::Failed, &[report("B@x.test"), report("a@x.test")]));
        // A later failure of another recipient of the same job.
        assert_ne!(first, dsn_id("Q1", Action::Failed, &[report("c@x.test")]));
        assert_ne!(first, dsn_id("Q1", Action::Delayed, &[report("a@x.test"), report("b@x.test")]));
        assert_ne!(first, dsn_id("Q2", Action::Failed, &[report("a@x.test"), report("b@x.test")]));
    }
}
