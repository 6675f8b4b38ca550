//! Shared pieces of the relay tests: a scripted remote MX on loopback, the
//! test environment (storage, NATS names unique per test, relay and local
//! delivery running in-process) and helpers to queue jobs and read INBOXes.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use delivery_queue::QueueConfig;
use delivery_queue::relay::route::{SharedResolver, TableResolver};
use delivery_queue::state::JobState;
use mailfleet_proto::queue::v1 as qpb;
use mailfleet_proto::storage::v1 as pb;
use mailfleet_testkit::TestEnv;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the scripted MX does.
#[derive(Clone, Default)]
pub struct Script {
    pub starttls: bool,
    pub pipelining: bool,
    pub dsn: bool,
    pub eight_bit: bool,
    pub size: Option<u64>,
    /// RCPT of these addresses gets `550 5.1.1`.
    pub reject_rcpt: Vec<String>,
    /// The first N transactions get `451 4.7.1` at RCPT (greylisting).
    pub tempfail_rcpt: usize,
    /// The first N transactions lose the connection in the middle of DATA.
    pub drop_mid_data: usize,
    /// Answer EHLO with 502 (an old HELO-only server).
    pub helo_only: bool,
    /// Wait this long before answering the final dot (a slow server).
    pub data_delay: Option<Duration>,
    /// Require AUTH PLAIN with this user and password before MAIL.
    pub auth: Option<(String, String)>,
    /// Certificate and key (PEM) for STARTTLS; default: self-signed for
    /// mx.remote.test, which no relay trusts.
    pub cert: Option<(String, String)>,
}

/// One message the MX accepted.
#[derive(Clone, Debug)]
pub struct Received {
    pub mail_from: String,
    pub mail_params: String,
    pub rcpts: Vec<String>,
    pub rcpt_lines: Vec<String>,
    pub data: Vec<u8>,
    pub tls: bool,
    /// The user logged in with AUTH, if any.
    pub user: Option<String>,
}

pub struct ScriptedMx {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub transactions: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    /// Arrival time of each transaction's first RCPT.
    pub attempts_at: Arc<Mutex<Vec<Instant>>>,
    /// Sessions open right now, and the most ever open at once.
    pub active: Arc<AtomicUsize>,
    pub max_active: Arc<AtomicUsize>,
    /// Every command line received, in order, across sessions.
    pub commands: Arc<Mutex<Vec<String>>>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl ScriptedMx {
    pub async fn start(script: Script) -> ScriptedMx {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind scripted MX");
        let addr = listener.local_addr().expect("addr");
        let (cert, key) = match &script.cert {
            Some(pair) => pair.clone(),
            None => mailfleet_runtime::tls::generate_self_signed("mx.remote.test").expect("cert"),
        };
        let tls = mailfleet_runtime::tls::server_config_from_pem(&cert, &key).expect("tls config");
        let mx = ScriptedMx {
            addr,
            received: Arc::default(),
            transactions: Arc::default(),
            connections: Arc::default(),
            attempts_at: Arc::default(),
            active: Arc::default(),
            max_active: Arc::default(),
            commands: Arc::default(),
        };
        let shared = Shared {
            script: Arc::new(script),
            received: mx.received.clone(),
            transactions: mx.transactions.clone(),
            attempts_at: mx.attempts_at.clone(),
            commands: mx.commands.clone(),
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
        };
        let connections = mx.connections.clone();
        let (active, max_active) = (mx.active.clone(), mx.max_active.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                max_active.fetch_max(now, Ordering::SeqCst);
                let shared = shared.clone();
                let active = active.clone();
                tokio::spawn(async move {
                    let _ = session(Box::new(sock), shared).await;
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        mx
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// Whether any command line received so far starts with `verb`.
    pub fn saw(&self, verb: &str) -> bool {
        self.commands.lock().expect("lock").iter().any(|c| c.to_ascii_uppercase().starts_with(verb))
    }

    /// How many accepted messages list `rcpt`.
    pub fn count_for(&self, rcpt: &str) -> usize {
        self.received().iter().filter(|r| r.rcpts.iter().any(|x| x == rcpt)).count()
    }
}

#[derive(Clone)]
struct Shared {
    script: Arc<Script>,
    received: Arc<Mutex<Vec<Received>>>,
    transactions: Arc<AtomicUsize>,
    attempts_at: Arc<Mutex<Vec<Instant>>>,
    commands: Arc<Mutex<Vec<String>>>,
    acceptor: tokio_rustls::TlsAcceptor,
}

async fn session(stream: Box<dyn Io>, sh: Shared) -> std::io::Result<()> {
    let s = &sh.script;
    let mut io = BufReader::new(stream);
    let mut tls = false;
    io.get_mut().write_all(b"220 mx.remote.test ESMTP scripted\r\n").await?;
    let mut mail_from: Option<(String, String)> = None;
    let mut rcpts: Vec<String> = Vec::new();
    let mut rcpt_lines: Vec<String> = Vec::new();
    let mut tx_index = 0usize;
    let mut user: Option<String> = None;
    loop {
        let mut line = String::new();
        if io.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.trim_end().to_ascii_uppercase();
        sh.commands.lock().expect("lock").push(line.trim_end().to_string());
        let reply: String = if upper.starts_with("EHLO") {
            if s.helo_only {
                "502 5.5.1 EHLO not implemented\r\n".into()
            } else {
                let mut caps = vec!["mx.remote.test".to_string()];
                if s.pipelining {
                    caps.push("PIPELINING".into());
                }
                if let Some(n) = s.size {
                    caps.push(format!("SIZE {n}"));
                }
                if s.eight_bit {
                    caps.push("8BITMIME".into());
                }
                if s.dsn {
                    caps.push("DSN".into());
                }
                if s.starttls && !tls {
                    caps.push("STARTTLS".into());
                }
                if s.auth.is_some() && tls {
                    caps.push("AUTH PLAIN LOGIN".into());
                }
                caps.push("ENHANCEDSTATUSCODES".into());
                let n = caps.len();
                caps.iter()
                    .enumerate()
                    .map(|(i, c)| format!("250{}{c}\r\n", if i + 1 == n { ' ' } else { '-' }))
                    .collect()
            }
        } else if upper.starts_with("HELO") {
            "250 mx.remote.test\r\n".into()
        } else if upper == "STARTTLS" && s.starttls && !tls {
            io.get_mut().write_all(b"220 2.0.0 go ahead\r\n").await?;
            let inner = io.into_inner();
            let stream = sh.acceptor.accept(inner).await?;
            io = BufReader::new(Box::new(stream));
            tls = true;
            mail_from = None;
            rcpts.clear();
            continue;
        } else if upper.starts_with("AUTH PLAIN ") {
            use base64::Engine;
            let token = line.trim_end()[11..].to_string();
            let decoded = base64::engine::general_purpose::STANDARD.decode(token).unwrap_or_default();
            let parts: Vec<String> =
                decoded.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
            match (&s.auth, parts.as_slice()) {
                (Some((u, p)), [_, got_u, got_p]) if got_u == u && got_p == p => {
                    user = Some(u.clone());
                    "235 2.7.0 authenticated\r\n".into()
                }
                _ => "535 5.7.8 authentication credentials invalid\r\n".into(),
            }
        } else if upper.starts_with("MAIL FROM:") && s.auth.is_some() && user.is_none() {
            "530 5.7.0 authentication required\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            let rest = line.trim_end()[10..].to_string();
            let (addr, params) = match rest.find('>') {
                Some(i) => (rest[..=i].trim_matches(['<', '>']).to_string(), rest[i + 1..].trim().to_string()),
                None => (rest.clone(), String::new()),
            };
            mail_from = Some((addr, params));
            rcpts.clear();
            rcpt_lines.clear();
            tx_index = sh.transactions.fetch_add(1, Ordering::SeqCst);
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let rest = line.trim_end()[8..].to_string();
            let addr = rest.split('>').next().unwrap_or("").trim_start_matches('<').to_string();
            if rcpts.is_empty() && rcpt_lines.is_empty() {
                sh.attempts_at.lock().expect("lock").push(Instant::now());
            }
            rcpt_lines.push(line.trim_end().to_string());
            if mail_from.is_none() {
                "503 5.5.1 MAIL first\r\n".into()
            } else if tx_index < s.tempfail_rcpt {
                "451 4.7.1 greylisted, try again later\r\n".into()
            } else if s.reject_rcpt.iter().any(|r| r.eq_ignore_ascii_case(&addr)) {
                format!("550 5.1.1 <{addr}>: no such user here\r\n")
            } else {
                rcpts.push(addr);
                "250 2.1.5 ok\r\n".into()
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                "554 5.5.1 no valid recipients\r\n".into()
            } else {
                io.get_mut().write_all(b"354 go ahead\r\n").await?;
                let mut data = Vec::new();
                let mut lines = 0usize;
                loop {
                    let mut l = Vec::new();
                    if io.read_until(b'\n', &mut l).await? == 0 {
                        return Ok(());
                    }
                    lines += 1;
                    if tx_index < s.drop_mid_data && lines == 3 {
                        // Connection lost in the middle of DATA.
                        return Ok(());
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    // RFC 5321 §4.5.2: remove the stuffed dot.
                    let l = if l.starts_with(b"..") { l[1..].to_vec() } else { l };
                    data.extend_from_slice(&l);
                }
                if let Some(d) = s.data_delay {
                    tokio::time::sleep(d).await;
                }
                let (from, params) = mail_from.take().unwrap_or_default();
                sh.received.lock().expect("lock").push(Received {
                    mail_from: from,
                    mail_params: params,
                    rcpts: std::mem::take(&mut rcpts),
                    rcpt_lines: std::mem::take(&mut rcpt_lines),
                    data,
                    tls,
                    user: user.clone(),
                });
                "250 2.0.0 queued as SCRIPTED\r\n".into()
            }
        } else if upper == "RSET" {
            mail_from = None;
            rcpts.clear();
            rcpt_lines.clear();
            "250 2.0.0 ok\r\n".into()
        } else if upper == "QUIT" {
            io.get_mut().write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else if upper == "NOOP" {
            "250 2.0.0 ok\r\n".into()
        } else {
            "500 5.5.2 unknown command\r\n".into()
        };
        io.get_mut().write_all(reply.as_bytes()).await?;
    }
}

/// Storage, NATS names and configuration of one test.
pub struct Ctx {
    pub env: TestEnv,
    pub config: QueueConfig,
    pub shutdown: CancellationToken,
    relay: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    resolver: SharedResolver,
    pub js: jetstream::Context,
    pub alice: pb::Account,
    /// Seconds the services' clock runs ahead of the system clock: a test
    /// ages its messages by moving it instead of waiting.
    pub clock_ahead: Arc<AtomicU64>,
}

pub const SENDER: &str = "alice@local.test";

impl Ctx {
    /// Storage with the local account `alice@local.test`, local delivery
    /// (for bounces) and the relay with `resolver`, on names unique to this test.
    pub async fn start(resolver: TableResolver, tune: impl FnOnce(&mut QueueConfig)) -> Ctx {
        let env = TestEnv::start().await;
        let alice = env.add_account(SENDER, "alice-password").await;
        let id = env.id.clone();
        let mut config = QueueConfig {
            storage_url: env.storage_url(),
            identity: mailfleet_testkit::identity("delivery-queue"),
            nats_url: env.nats_url.clone(),
            stream: format!("RQ_{id}"),
            subject: format!("t{id}.queue"),
            consumer: "delivery".into(),
            relay_stream: format!("RR_{id}"),
            relay_subject: format!("t{id}.relay"),
            state_bucket: format!("RS_{id}"),
            concurrency: 8,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(1),
            ..QueueConfig::default()
        };
        config.relay.enabled = false; // started below with the table resolver
        config.relay.hostname = "mx.local.test".into();
        config.relay.schedule.intervals = vec![Duration::from_millis(300)];
        config.relay.schedule.max_age = Duration::from_secs(3600);
        config.relay.connect_timeout = Duration::from_secs(5);
        config.relay.command_timeout = Duration::from_secs(10);
        config.relay.data_timeout = Duration::from_secs(10);
        tune(&mut config);
        let shutdown = CancellationToken::new();
        let clock_ahead = Arc::new(AtomicU64::new(0));
        delivery_queue::run_with_clock(config.clone(), clock(&clock_ahead), shutdown.clone())
            .await
            .expect("local delivery starts");
        let resolver: SharedResolver = Arc::new(resolver);
        let js = jetstream::new(env.nats().await);
        let mut ctx = Ctx { env, config, shutdown, relay: None, resolver, js, alice, clock_ahead };
        ctx.start_relay().await;
        ctx
    }

    pub async fn start_relay(&mut self) {
        let token = self.shutdown.child_token();
        let clock = clock(&self.clock_ahead);
        let task =
            delivery_queue::relay::run_with_clock(self.config.clone(), self.resolver.clone(), clock, token.clone())
                .await
                .expect("relay starts");
        self.relay = Some((token, task));
    }

    /// Stop the relay (as if its process ended) and wait for it.
    pub async fn stop_relay(&mut self) {
        if let Some((token, task)) = self.relay.take() {
            token.cancel();
            // A relay that panicked must fail the test, not pass as stopped.
            task.await.expect("the relay task ends without panicking");
        }
    }

    /// Store `message` and queue a relay job for `recipients`.
    pub async fn queue(
        &self,
        queue_id: &str,
        mail_from: &str,
        recipients: Vec<qpb::Recipient>,
        message: &[u8],
        tune: impl FnOnce(&mut qpb::DeliveryJob),
    ) {
        let mut messages = pb::messages_client::MessagesClient::new(self.env.channel_as("smtp-ingress").await);
        let chunks = vec![pb::PutBlobRequest { chunk: message.to_vec() }];
        let blob = messages.put_blob(futures::stream::iter(chunks)).await.expect("put blob").into_inner();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
        let mut job = qpb::DeliveryJob {
            queue_id: queue_id.into(),
            blob_id: blob.blob_id,
            size: message.len() as u64,
            mail_from: mail_from.into(),
            recipients,
            received_at: Some(prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: 0 }),
            body_type: "7BIT".into(),
            ..Default::default()
        };
        tune(&mut job);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("{queue_id}.relay").as_str());
        self.js
            .publish_with_headers(self.config.relay_subject.clone(), headers, job.encode_to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("publish ack");
    }

    /// Store `message` and queue a job on the main queue subject, as
    /// smtp-ingress does: local delivery runs first and hands remote
    /// recipients to the relay.
    pub async fn submit(&self, queue_id: &str, mail_from: &str, recipients: Vec<qpb::Recipient>, message: &[u8]) {
        let mut messages = pb::messages_client::MessagesClient::new(self.env.channel_as("smtp-ingress").await);
        let chunks = vec![pb::PutBlobRequest { chunk: message.to_vec() }];
        let blob = messages.put_blob(futures::stream::iter(chunks)).await.expect("put blob").into_inner();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
        let job = qpb::DeliveryJob {
            queue_id: queue_id.into(),
            blob_id: blob.blob_id,
            size: message.len() as u64,
            mail_from: mail_from.into(),
            recipients,
            received_at: Some(prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: 0 }),
            body_type: "7BIT".into(),
            ..Default::default()
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", queue_id);
        self.js
            .publish_with_headers(self.config.subject.clone(), headers, job.encode_to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("publish ack");
    }

    /// Messages currently in a stream (work queue: acked jobs are removed).
    pub async fn stream_len(&self, stream: &str) -> u64 {
        let mut s = self.js.get_stream(stream).await.expect("stream");
        s.info().await.expect("stream info").state.messages
    }

    /// Messages ever published to a stream.
    pub async fn stream_published(&self, stream: &str) -> u64 {
        let mut s = self.js.get_stream(stream).await.expect("stream");
        s.info().await.expect("stream info").state.last_sequence
    }

    /// Wait until the relay has finished every job (stream empty, nothing in flight).
    pub async fn relay_idle(&self, within: Duration) {
        let stream = self.config.relay_stream.clone();
        wait_for(within, "relay stream to drain", || async { self.stream_len(&stream).await == 0 }).await;
    }

    /// The relay's state entry for a job (what `mailctl queue` lists).
    /// `None` only when the bucket says there is no entry: a read that
    /// fails or an entry that does not parse fails the test, so "state
    /// removed" cannot pass because NATS was unreachable.
    pub async fn relay_state(&self, queue_id: &str) -> Option<JobState> {
        let kv = self.js.get_key_value(self.config.state_bucket.clone()).await.expect("state bucket");
        let v = kv.get(delivery_queue::relay::state_key(queue_id)).await.expect("read the relay state")?;
        Some(JobState::from_json(&v).unwrap_or_else(|| panic!("unparseable relay state: {}", text(&v))))
    }

    /// Wait until every job of this test is finished: the relay stream and
    /// the main queue are both empty (work queues: a job leaves only when it
    /// is acked or terminated; a retry is a delayed nak and stays). Whatever
    /// a job produces (a DSN, a hand-over to the relay) is published before
    /// its ack, so once this returns nothing more can be delivered, bounced
    /// or notified: absence checked after it is final, not a guess.
    pub async fn settled(&self, within: Duration) {
        let (main, relay) = (self.config.stream.clone(), self.config.relay_stream.clone());
        wait_for(within, "every job finished", || async {
            self.stream_len(&relay).await == 0
                && self.stream_len(&main).await == 0
                && self.stream_len(&relay).await == 0
        })
        .await;
    }

    /// How many times JetStream handed relay jobs out (first deliveries
    /// and redeliveries together).
    pub async fn relay_deliveries(&self) -> u64 {
        let stream = self.js.get_stream(&self.config.relay_stream).await.expect("relay stream");
        let mut consumer: jetstream::consumer::PullConsumer =
            stream.get_consumer(&self.config.relay.consumer).await.expect("relay consumer");
        consumer.info().await.expect("consumer info").delivered.consumer_sequence
    }

    /// Raw messages in alice's INBOX.
    pub async fn inbox(&self) -> Vec<Vec<u8>> {
        inbox_of(&self.env, self.alice.id).await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for s in [&self.config.stream, &self.config.relay_stream, &format!("KV_{}", self.config.state_bucket)] {
            let _ = self.js.delete_stream(s).await;
        }
    }
}

/// The system clock, `ahead` seconds later.
fn clock(ahead: &Arc<AtomicU64>) -> delivery_queue::worker::Clock {
    let ahead = ahead.clone();
    delivery_queue::worker::Clock::new(move || {
        std::time::SystemTime::now() + Duration::from_secs(ahead.load(Ordering::SeqCst))
    })
}

pub async fn inbox_of(env: &TestEnv, account_id: i64) -> Vec<Vec<u8>> {
    let channel = env.session_channel(account_id).await;
    let mut mailboxes = pb::mailboxes_client::MailboxesClient::new(channel.clone());
    let mut messages = pb::messages_client::MessagesClient::new(channel);
    // Every account has an INBOX from its creation: an error here is
    // storage failing, which must fail the test rather than read as "no
    // mail" (every "no DSN" check would pass with storage down).
    let mb = mailboxes
        .get_mailbox(pb::GetMailboxRequest { account_id, name: "INBOX".into(), select: false })
        .await
        .expect("GetMailbox INBOX")
        .into_inner();
    let uids = messages
        .list_uids(pb::ListUidsRequest { account_id, mailbox_id: mb.id })
        .await
        .expect("list uids")
        .into_inner()
        .uids;
    let mut out = Vec::new();
    for uid in uids {
        let mut stream = messages
            .fetch(pb::FetchRequest { account_id, mailbox_id: mb.id, uid, offset: 0, length: None })
            .await
            .expect("fetch")
            .into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await.expect("chunk") {
            data.extend_from_slice(&chunk.data);
        }
        out.push(data);
    }
    out
}

/// MIME structure of every message in the INBOX as storage parsed it:
/// "type/subtype" of the message and of its top-level parts.
pub async fn inbox_structure(env: &TestEnv, account_id: i64) -> Vec<(String, Vec<String>)> {
    let channel = env.session_channel(account_id).await;
    let mut mailboxes = pb::mailboxes_client::MailboxesClient::new(channel.clone());
    let mut messages = pb::messages_client::MessagesClient::new(channel);
    let mb = mailboxes
        .get_mailbox(pb::GetMailboxRequest { account_id, name: "INBOX".into(), select: false })
        .await
        .expect("INBOX")
        .into_inner();
    let mut stream = messages
        .list_messages(pb::ListMessagesRequest {
            account_id,
            mailbox_id: mb.id,
            uids: vec![pb::UidRange { start: 1, end: u32::MAX }],
            with_envelope: false,
            with_body_structure: true,
            changed_since: 0,
        })
        .await
        .expect("list messages")
        .into_inner();
    let mut out = Vec::new();
    while let Some(meta) = stream.message().await.expect("meta") {
        let b = meta.body_structure.unwrap_or_default();
        let parts = b.parts.iter().map(|p| format!("{}/{}", p.media_type, p.media_subtype)).collect();
        out.push((format!("{}/{}", b.media_type, b.media_subtype), parts));
    }
    out
}

/// Poll `cond` every 25 ms until it holds; panic after `within`.
pub async fn wait_for<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn rcpt(address: &str) -> qpb::Recipient {
    qpb::Recipient { address: address.into(), notify: 0, orcpt: String::new(), accounts: Vec::new() }
}

/// A resolver sending `domain` to the scripted MX at `addr` through an MX record.
pub fn resolver_for(domain: &str, addr: SocketAddr) -> TableResolver {
    let host = format!("mx.{domain}");
    TableResolver::new().with_mx(domain, 10, &host).with_host(&host, addr)
}

pub fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}
