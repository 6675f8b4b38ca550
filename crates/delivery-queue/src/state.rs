//! Queue state in a JetStream key-value bucket: one entry per job that
//! failed temporarily at least once, keyed by queue id. Written by the
//! workers, read and changed by `mailctl queue`. Removed once delivered.

use serde::{Deserialize, Serialize};

/// The value stored under `<queue_id>` (JSON). Missing fields take their
/// defaults, so entries written by older versions still read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct JobState {
    pub queue_id: String,
    /// Sequence of the job's message in the queue stream.
    pub stream_seq: u64,
    pub attempts: u64,
    /// Unix seconds of the next attempt.
    pub next_retry: u64,
    pub last_error: String,
    pub mail_from: String,
    pub recipients: Vec<String>,
    /// Remote recipients already handed to the relay stream.
    pub relayed: bool,
    /// Recipients that failed permanently.
    pub failed: Vec<String>,
    /// Local recipients whose permanent failure was already reported to the
    /// sender by a DSN (so a retried job does not bounce twice).
    #[serde(default)]
    pub bounced: Vec<String>,
    /// Relay jobs (key `<queue_id>.relay`): the entry belongs to the
    /// outbound relay; `recipients` are the remote ones still pending and
    /// `last_error` is the far side's last response.
    #[serde(default)]
    pub remote: bool,
    /// Relay: recipients already delivered or failed for good (never sent again).
    #[serde(default)]
    pub done: Vec<String>,
    /// Relay: a "delayed" DSN was sent already.
    #[serde(default)]
    pub delay_notified: bool,
    /// The stream `stream_seq` refers to when it is not the queue stream
    /// (relay entries: the relay stream). Empty = the queue stream.
    #[serde(default)]
    pub stream: String,
}

impl JobState {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    pub fn from_json(data: &[u8]) -> Option<JobState> {
        serde_json::from_slice(data).ok()
    }
}

/// Header on a job that `mailctl queue retry` republished: its delivery
/// count starts again at 1, but earlier attempts left state to resume from.
pub const RESUME_HEADER: &str = "Mailfleet-Resume";

/// Did earlier attempts of this message's job leave state behind?
pub fn resumed(msg: &async_nats::jetstream::Message, attempts: u64) -> bool {
    attempts > 1 || msg.headers.as_ref().is_some_and(|h| h.get(RESUME_HEADER).is_some())
}

/// The state earlier attempts of a job left under `key` (none unless
/// `resumed`). `Err` when the bucket cannot be read: the caller must retry
/// the job later, because acting on an empty state would send again to
/// recipients already done, hand them to the relay again or bounce twice.
pub async fn load(kv: &async_nats::jetstream::kv::Store, key: &str, resumed: bool) -> Result<JobState, String> {
    if !resumed {
        return Ok(JobState::default());
    }
    match kv.get(key).await {
        Ok(Some(v)) => Ok(JobState::from_json(&v).unwrap_or_default()),
        Ok(None) => Ok(JobState::default()),
        Err(err) => Err(err.to_string()),
    }
}

/// Record the state of a job that will be tried again; a failed write is
/// tried again a few times (a busy server can time a request out).
pub async fn save(kv: &async_nats::jetstream::kv::Store, key: &str, state: &JobState) -> Result<(), String> {
    const TRIES: u32 = 3;
    for attempt in 1..=TRIES {
        match kv.put(key, state.to_json().into()).await {
            Ok(_) => return Ok(()),
            Err(err) if attempt == TRIES => {
                tracing::warn!(error = %err, key, "cannot record the job's state");
                return Err(err.to_string());
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await,
        }
    }
    Ok(())
}

/// Remove the state of a finished job. The job is acked by now, so nothing
/// would retry this later: a failed purge is tried again a few times (a
/// busy server can time a request out), and a state left behind only shows
/// up in `mailctl queue list` until `mailctl queue delete` removes it.
pub async fn forget(kv: &async_nats::jetstream::kv::Store, key: &str) {
    const TRIES: u32 = 4;
    for attempt in 1..=TRIES {
        match kv.purge(key).await {
            Ok(()) => return,
            Err(err) if attempt == TRIES => {
                tracing::warn!(error = %err, key, "cannot remove the state of a finished job");
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await,
        }
    }
}
