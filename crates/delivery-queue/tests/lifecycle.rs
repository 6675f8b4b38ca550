//! A job's life when things go wrong. A delivery-queue process killed with
//! SIGKILL while a job is in progress (its storage call or its SMTP session
//! hangs) — local delivery and relay alike — leaves the job to another
//! worker within `ack_wait`, and that worker delivers it once; while the
//! job was in progress, longer than `ack_wait`, nobody else got it. A local
//! recipient that keeps failing is given up once the message is `max_age`
//! old, with a DSN to the sender (a test clock moves the time).

mod relay_common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use delivery_queue::QueueConfig;
use delivery_queue::relay::route::TableResolver;
use delivery_queue::worker::Clock;
use mailfleet_proto::queue::v1 as qpb;
use mailfleet_proto::storage::v1 as pb;
use mailfleet_testkit::TestEnv;
use prost::Message;
use relay_common::{Script, ScriptedMx, inbox_of, rcpt, text, wait_for};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Short, so the test is quick; the defaults (20 s, at most 30 s) are
/// checked by `delivery_queue::redelivery`'s unit tests.
const ACK_WAIT: Duration = Duration::from_secs(3);
/// Redelivery after a kill is due `ACK_WAIT` after the last heartbeat;
/// this much more is allowed for a loaded machine.
const SLACK: Duration = Duration::from_secs(12);

fn config(env: &TestEnv) -> QueueConfig {
    let id = &env.id;
    let mut c = QueueConfig {
        storage_url: env.storage_url(),
        identity: mailfleet_testkit::identity("delivery-queue"),
        nats_url: env.nats_url.clone(),
        stream: format!("LQ_{id}"),
        subject: format!("t{id}.lq"),
        consumer: "delivery".into(),
        relay_stream: format!("LR_{id}"),
        relay_subject: format!("t{id}.lr"),
        state_bucket: format!("LS_{id}"),
        ack_wait: ACK_WAIT,
        retry_initial: Duration::from_millis(200),
        retry_max: Duration::from_secs(1),
        ..QueueConfig::default()
    };
    c.relay.ack_wait = ACK_WAIT;
    c.relay.hostname = "mx.local.test".into();
    c.relay.connect_timeout = Duration::from_secs(5);
    c
}

/// A TCP server that accepts connections and never says a word: a storage
/// or a far side that hangs. Counts the connections it holds.
async fn black_hole() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let held = Arc::new(AtomicU64::new(0));
    let count = held.clone();
    tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            sockets.push(socket);
        }
    });
    (addr, held)
}

/// The delivery-queue binary with `config` (as environment variables).
async fn start_binary(config: &QueueConfig, relay_smarthost: Option<SocketAddr>) -> Child {
    // It binds port 0 and says which port it got in its ready file.
    let tmp = tempfile::tempdir().expect("tempdir");
    let ready_file = tmp.path().join("ready");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_delivery-queue"));
    cmd.arg("--ready-file")
        .arg(&ready_file)
        .env("MAILFLEET_QUEUE_STORAGE_URL", &config.storage_url)
        .envs(mailfleet_testkit::identity_env("MAILFLEET_QUEUE_", "delivery-queue"))
        .env("MAILFLEET_QUEUE_NATS_URL", &config.nats_url)
        .env("MAILFLEET_QUEUE_STREAM", &config.stream)
        .env("MAILFLEET_QUEUE_SUBJECT", &config.subject)
        .env("MAILFLEET_QUEUE_CONSUMER", &config.consumer)
        .env("MAILFLEET_QUEUE_RELAY_STREAM", &config.relay_stream)
        .env("MAILFLEET_QUEUE_RELAY_SUBJECT", &config.relay_subject)
        .env("MAILFLEET_QUEUE_STATE_BUCKET", &config.state_bucket)
        .env("MAILFLEET_QUEUE_ACK_WAIT", format!("{}s", ACK_WAIT.as_secs()))
        .env("MAILFLEET_QUEUE_RELAY__ACK_WAIT", format!("{}s", ACK_WAIT.as_secs()))
        .env("MAILFLEET_QUEUE_HEALTH_LISTEN", "127.0.0.1:0")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(smarthost) = relay_smarthost {
        cmd.env("MAILFLEET_QUEUE_RELAY__ENABLED", "true")
            .env("MAILFLEET_QUEUE_RELAY__HOSTNAME", "mx.local.test")
            .env("MAILFLEET_QUEUE_RELAY__SMARTHOST", smarthost.to_string());
    }
    let mut child = cmd.spawn().expect("delivery-queue starts");
    mailfleet_testkit::process::wait_ready(&mut child, &ready_file, Duration::from_secs(60))
        .await
        .expect("delivery-queue ready");
    child
}

/// Store `message` and publish its job on `subject`, as smtp-ingress (or
/// local delivery, for the relay stream) does.
async fn publish_job(env: &TestEnv, js: &jetstream::Context, subject: &str, job: qpb::DeliveryJob, message: &[u8]) {
    let mut messages = pb::messages_client::MessagesClient::new(env.channel_as("smtp-ingress").await);
    let chunks = vec![pb::PutBlobRequest { chunk: message.to_vec() }];
    let blob = messages.put_blob(futures::stream::iter(chunks)).await.expect("put blob").into_inner();
    let job = qpb::DeliveryJob { blob_id: blob.blob_id, size: message.len() as u64, ..job };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", job.queue_id.as_str());
    js.publish_with_headers(subject.to_string(), headers, job.encode_to_vec().into())
        .await
        .expect("publish")
        .await
        .expect("publish ack");
}

fn job(queue_id: &str, mail_from: &str, to: &str) -> qpb::DeliveryJob {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock");
    qpb::DeliveryJob {
        queue_id: queue_id.into(),
        mail_from: mail_from.into(),
        recipients: vec![rcpt(to)],
        received_at: Some(prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: 0 }),
        body_type: "7BIT".into(),
        ..Default::default()
    }
}

/// (jobs handed out and not acknowledged, jobs handed out again).
async fn consumer_state(js: &jetstream::Context, stream: &str, consumer: &str) -> (usize, usize) {
    let stream = js.get_stream(stream).await.expect("stream");
    let info = stream.consumer_info(consumer).await.expect("consumer info");
    (info.num_ack_pending, info.num_redelivered)
}

/// The test's streams and bucket go when it ends.
async fn remove_streams(js: &jetstream::Context, config: &QueueConfig) {
    for s in [&config.stream, &config.relay_stream, &format!("KV_{}", config.state_bucket)] {
        let _ = js.delete_stream(s).await;
    }
}

/// Every job of `stream` finished (a work queue removes acknowledged jobs).
async fn wait_drained(js: &jetstream::Context, stream: &str) {
    wait_for(Duration::from_secs(10), "the stream to drain", || async { stream_len(js, stream).await == 0 }).await;
}

async fn stream_len(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream).await.expect("stream").info().await.expect("info").state.messages
}

/// The job stays with its live worker for longer than `ack_wait` (the
/// heartbeat keeps it), then the worker is killed.
async fn hold_then_kill(js: &jetstream::Context, stream: &str, consumer: &str, mut worker: Child) -> Instant {
    wait_for(Duration::from_secs(30), "the job to be in progress", || async {
        consumer_state(js, stream, consumer).await.0 == 1
    })
    .await;
    let watched = Instant::now();
    while watched.elapsed() < ACK_WAIT * 5 / 2 {
        let (pending, redelivered) = consumer_state(js, stream, consumer).await;
        assert_eq!((pending, redelivered), (1, 0), "a job in progress was handed out again");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    worker.kill().await.expect("SIGKILL");
    Instant::now()
}

#[tokio::test]
async fn a_killed_workers_local_job_is_delivered_once_within_ack_wait() {
    let env = TestEnv::start().await;
    let bob = env.add_account("bob@local.test", "bob-password").await;
    let mut config = config(&env);
    let js = jetstream::new(env.nats().await);
    // The process's storage hangs: its Deliver call never returns.
    let (hanging_storage, held) = black_hole().await;
    let worker =
        start_binary(&QueueConfig { storage_url: format!("https://{hanging_storage}"), ..config.clone() }, None).await;
    publish_job(
        &env,
        &js,
        &config.subject,
        job("KILLED1", "x@remote.test", "bob@local.test"),
        b"Subject: once\r\n\r\nbody\r\n",
    )
    .await;
    wait_for(Duration::from_secs(30), "the worker to call storage", || async { held.load(Ordering::SeqCst) > 0 }).await;
    let killed = hold_then_kill(&js, &config.stream, &config.consumer, worker).await;

    // Another worker, with a working storage.
    config.storage_url = env.storage_url();
    let shutdown = CancellationToken::new();
    delivery_queue::run(config.clone(), shutdown.clone()).await.expect("second worker starts");
    wait_for(ACK_WAIT + SLACK, "the job to reach bob", || async { !inbox_of(&env, bob.id).await.is_empty() }).await;
    let took = killed.elapsed();
    wait_drained(&js, &config.stream).await;
    let inbox = inbox_of(&env, bob.id).await;
    assert_eq!(inbox.len(), 1, "delivered once");
    assert!(text(&inbox[0]).ends_with("Subject: once\r\n\r\nbody\r\n"), "{}", text(&inbox[0]));
    eprintln!("delivered {took:?} after the kill (ack_wait {ACK_WAIT:?})");
    shutdown.cancel();
    remove_streams(&js, &config).await;
}

#[tokio::test]
async fn a_killed_relays_job_is_sent_once_within_ack_wait() {
    let env = TestEnv::start().await;
    let config = config(&env);
    let js = jetstream::new(env.nats().await);
    // The process's far side accepts the connection and never greets.
    let (hanging_mx, held) = black_hole().await;
    let worker = start_binary(&config, Some(hanging_mx)).await;
    publish_job(
        &env,
        &js,
        &config.relay_subject,
        job("KILLED2", "alice@local.test", "carol@remote.test"),
        b"Subject: relayed once\r\n\r\nbody\r\n",
    )
    .await;
    wait_for(Duration::from_secs(30), "the relay to connect", || async { held.load(Ordering::SeqCst) > 0 }).await;
    let killed = hold_then_kill(&js, &config.relay_stream, &config.relay.consumer, worker).await;

    // Another relay, with a far side that answers.
    let mx = ScriptedMx::start(Script::default()).await;
    let mut relay_config = config.clone();
    relay_config.relay.enabled = true;
    relay_config.relay.smarthost = Some(mx.addr.to_string());
    let shutdown = CancellationToken::new();
    let relay = delivery_queue::relay::run(relay_config, Arc::new(TableResolver::new()), shutdown.clone())
        .await
        .expect("second relay starts");
    wait_for(ACK_WAIT + SLACK, "the job to reach the far side", || async { mx.count_for("carol@remote.test") > 0 })
        .await;
    let took = killed.elapsed();
    wait_drained(&js, &config.relay_stream).await;
    assert_eq!(mx.count_for("carol@remote.test"), 1, "sent once");
    assert!(text(&mx.received()[0].data).contains("Subject: relayed once"));
    eprintln!("relayed {took:?} after the kill (ack_wait {ACK_WAIT:?})");
    shutdown.cancel();
    let _ = relay.await;
    remove_streams(&js, &config).await;
}

#[tokio::test]
async fn a_local_recipient_failing_past_max_age_is_bounced_with_4_4_7() {
    let env = TestEnv::start().await;
    let alice = env.add_account("alice@local.test", "alice-password").await;
    let bob = env.add_account("bob@local.test", "bob-password").await;
    let mut admin = env.admin().await;
    admin.set_quota(pb::SetQuotaRequest { address: "bob@local.test".into(), quota_bytes: 10 }).await.expect("quota");
    let config = config(&env);
    let js = jetstream::new(env.nats().await);
    // The clock the worker measures ages with; moved forward below.
    let skip = Arc::new(AtomicU64::new(0));
    let ahead = skip.clone();
    let clock = Clock::new(move || SystemTime::now() + Duration::from_secs(ahead.load(Ordering::SeqCst)));
    let shutdown = CancellationToken::new();
    delivery_queue::run_with_clock(config.clone(), clock, shutdown.clone()).await.expect("worker starts");

    publish_job(
        &env,
        &js,
        &config.subject,
        job("OLD1", "alice@local.test", "bob@local.test"),
        b"Subject: never fits\r\n\r\nbody\r\n",
    )
    .await;
    let kv = js.get_key_value(config.state_bucket.clone()).await.expect("bucket");
    wait_for(Duration::from_secs(30), "two over-quota attempts", || async {
        let state = kv.get("OLD1").await.ok().flatten().and_then(|v| delivery_queue::state::JobState::from_json(&v));
        state.is_some_and(|s| s.attempts >= 2 && s.last_error.contains("over quota"))
    })
    .await;
    // Younger than max_age: kept, retried, nobody told.
    assert!(inbox_of(&env, alice.id).await.is_empty(), "no DSN before max_age");
    assert_eq!(stream_len(&js, &config.stream).await, 1);

    skip.store(config.max_age.as_secs(), Ordering::SeqCst);
    wait_for(Duration::from_secs(30), "the DSN to reach alice", || async {
        !inbox_of(&env, alice.id).await.is_empty()
    })
    .await;
    let inbox = inbox_of(&env, alice.id).await;
    let dsn = text(&inbox[0]);
    for expected in [
        "Return-Path: <>",
        "report-type=delivery-status",
        "Final-Recipient: rfc822; bob@local.test",
        "Action: failed",
        "Status: 4.4.7",
        "over quota",
        "Subject: never fits",
    ] {
        assert!(dsn.contains(expected), "DSN lacks {expected:?}:\n{dsn}");
    }
    wait_drained(&js, &config.stream).await;
    assert!(inbox_of(&env, bob.id).await.is_empty());
    assert_eq!(inbox_of(&env, alice.id).await.len(), 1, "one DSN");
    shutdown.cancel();
    remove_streams(&js, &config).await;
}

/// Streams and consumers an older version made (a 10 s duplicate window, a
/// 5-minute ack_wait) are brought to this version's settings at start,
/// keeping the jobs they hold.
#[tokio::test]
async fn streams_and_consumers_of_an_older_version_are_brought_up_to_date() {
    let env = TestEnv::start().await;
    let bob = env.add_account("bob@local.test", "bob-password").await;
    let config = config(&env);
    let js = jetstream::new(env.nats().await);
    js.create_stream(jetstream::stream::Config {
        name: config.stream.clone(),
        subjects: vec![config.subject.clone()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        duplicate_window: Duration::from_secs(10),
        ..Default::default()
    })
    .await
    .expect("old stream");
    let stream = js.get_stream(&config.stream).await.expect("stream");
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(config.consumer.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(300),
            max_deliver: -1,
            ..Default::default()
        })
        .await
        .expect("old consumer");
    publish_job(
        &env,
        &js,
        &config.subject,
        job("WAITING1", "x@remote.test", "bob@local.test"),
        b"Subject: kept\r\n\r\nbody\r\n",
    )
    .await;

    let shutdown = CancellationToken::new();
    delivery_queue::run(config.clone(), shutdown.clone()).await.expect("worker starts");
    let mut stream = js.get_stream(&config.stream).await.expect("stream");
    let info = stream.info().await.expect("info").config.clone();
    assert_eq!(info.duplicate_window, mailfleet_runtime::nats::DUPLICATE_WINDOW);
    let consumer = stream.consumer_info(&config.consumer).await.expect("consumer");
    assert_eq!(consumer.config.ack_wait, ACK_WAIT);
    // The job the old stream held is delivered.
    wait_for(Duration::from_secs(30), "the waiting job to reach bob", || async {
        inbox_of(&env, bob.id).await.len() == 1
    })
    .await;
    shutdown.cancel();
    remove_streams(&js, &config).await;
}
