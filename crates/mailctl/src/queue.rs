//! `mailctl queue`: the delivery queue as delivery-queue records it in the
//! JetStream key-value bucket `MAIL_QUEUE_STATE` (jobs that failed at least
//! once), plus the number of jobs waiting in the `MAIL_QUEUE` stream.

use crate::output::out;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use async_nats::jetstream::{self, kv};
use clap::{Args, Subcommand};
use delivery_queue::state::{JobState, RESUME_HEADER};
use futures::TryStreamExt;

#[derive(Args)]
pub struct QueueArgs {
    /// NATS server delivery-queue uses.
    #[arg(long, env = "MAILCTL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// The fleet CA certificate the NATS server's certificate must chain to.
    #[arg(long, env = "MAILCTL_NATS_CA_FILE")]
    pub nats_ca_file: Option<std::path::PathBuf>,
    /// mailctl's certificate from the fleet CA (`mailctl.crt`): the NATS
    /// user `mailctl`, the only one allowed to change the queue.
    #[arg(long, env = "MAILCTL_NATS_CERT_FILE")]
    pub nats_cert_file: Option<std::path::PathBuf>,
    /// Its private key (`mailctl.key`).
    #[arg(long, env = "MAILCTL_NATS_KEY_FILE")]
    pub nats_key_file: Option<std::path::PathBuf>,
    /// Queue stream (delivery-queue `stream`).
    #[arg(long, default_value = "MAIL_QUEUE")]
    pub stream: String,
    /// State bucket (delivery-queue `state_bucket`).
    #[arg(long, default_value = "MAIL_QUEUE_STATE")]
    pub bucket: String,
    #[command(subcommand)]
    pub command: QueueCmd,
}

#[derive(Subcommand)]
pub enum QueueCmd {
    /// Jobs waiting for a retry: attempts, next retry, last error.
    List,
    /// Retry a job now instead of at its next scheduled time.
    Retry { queue_id: String },
    /// Remove a job from the queue (it will not be delivered).
    Delete { queue_id: String },
}

struct Queue {
    stream: jetstream::stream::Stream,
    kv: kv::Store,
    js: jetstream::Context,
}

impl Queue {
    /// The stream holding the job of `s` (relay entries name theirs).
    async fn stream_of(&self, s: &JobState) -> anyhow::Result<jetstream::stream::Stream> {
        if s.stream.is_empty() {
            return Ok(self.stream.clone());
        }
        self.js.get_stream(&s.stream).await.with_context(|| format!("stream {}", s.stream))
    }
}

async fn open(args: &QueueArgs) -> anyhow::Result<Queue> {
    // One server, or every server of a cluster, comma-separated.
    let tls = mailfleet_runtime::nats::NatsTls {
        ca_file: args.nats_ca_file.clone(),
        cert_file: args.nats_cert_file.clone(),
        key_file: args.nats_key_file.clone(),
        ..Default::default()
    };
    let client = mailfleet_runtime::nats::connect(&args.nats_url, &tls, "mailctl", async_nats::ConnectOptions::new())
        .await
        .with_context(|| format!("cannot reach NATS at {}", args.nats_url))?;
    let js = jetstream::new(client);
    let stream = js.get_stream(&args.stream).await.with_context(|| format!("queue stream {}", args.stream))?;
    let kv = js.get_key_value(args.bucket.clone()).await.with_context(|| format!("state bucket {}", args.bucket))?;
    Ok(Queue { stream, kv, js })
}

async fn state(q: &Queue, queue_id: &str) -> anyhow::Result<JobState> {
    let value =
        q.kv.get(queue_id).await?.with_context(|| format!("no queued job {queue_id} with a recorded failure"))?;
    JobState::from_json(&value).with_context(|| format!("unreadable state for {queue_id}"))
}

fn when(unix: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if unix <= now { "now".into() } else { format!("in {}s", unix - now) }
}

pub async fn run(args: QueueArgs) -> anyhow::Result<()> {
    let mut q = open(&args).await?;
    match &args.command {
        QueueCmd::List => {
            let waiting = q.stream.info().await?.state.messages;
            let keys: Vec<String> = q.kv.keys().await?.try_collect().await?;
            out!("{waiting} job(s) in {}; {} with failed attempts:", args.stream, keys.len());
            for key in keys {
                let Ok(s) = state(&q, &key).await else { continue };
                out!(
                    "{}{}\tfrom=<{}>\tto={}\tattempts={}\tnext={}\terror={}",
                    key,
                    if s.remote { "\t(relay)" } else { "" },
                    s.mail_from,
                    s.recipients.join(","),
                    s.attempts,
                    when(s.next_retry),
                    s.last_error
                );
            }
        }
        QueueCmd::Retry { queue_id } => {
            let mut s = state(&q, queue_id).await?;
            // A job waiting out its backoff cannot be woken in place:
            // publish a copy (picked up at once) and remove the waiting one.
            let stream = q.stream_of(&s).await?;
            let old = stream.get_raw_message(s.stream_seq).await.context("the job is no longer in the stream")?;
            let mut headers = old.headers.clone();
            headers.insert("Nats-Msg-Id", format!("{queue_id}.retry.{}", s.attempts).as_str());
            // The copy starts at delivery count 1: tell the worker to resume
            // from the recorded state (recipients already done, bounced...).
            headers.insert(RESUME_HEADER, "1");
            let ack = q.js.publish_with_headers(old.subject.to_string(), headers, old.payload.clone()).await?.await?;
            stream.delete_message(s.stream_seq).await.context("removing the waiting copy")?;
            s.stream_seq = ack.sequence;
            s.next_retry = 0;
            q.kv.put(queue_id, s.to_json().into()).await?;
            out!("retrying {queue_id} now");
        }
        QueueCmd::Delete { queue_id } => {
            let s = state(&q, queue_id).await?;
            q.stream_of(&s).await?.delete_message(s.stream_seq).await.context("the job is no longer in the stream")?;
            q.kv.purge(queue_id).await?;
            out!("deleted {queue_id}");
        }
    }
    Ok(())
}
