//! The blob sweep: removes blob files (and their rows) that nothing needs
//! any more — no message refers to them, no job waiting in the queue
//! refers to them, and they were not stored (or stored again) for
//! `min_age`. It runs by itself every `sweep.interval` on whichever storage
//! replica gets to it first (a Postgres advisory lock lets one run at a
//! time; the time of the last run is shared in the `maintenance` table),
//! and on demand (`mailctl blobs sweep`).
//!
//! Why the queue is asked: a message waits there for as long as delivery
//! takes (a mailbox over quota for days, the relay retrying for 5 days, the
//! relay switched off), with nothing in Postgres pointing at its blob yet.
//! The sweep reads every job in the queue streams (`sweep.queue_streams`,
//! in the order a job moves between them, so a job moving on while they are
//! read is seen in one or the other) and keeps their blobs. A stream it
//! cannot read means no sweep at all, never a sweep that guesses. (With
//! NATS permissions, storage needs `$JS.API.STREAM.INFO.<stream>` and
//! `$JS.API.STREAM.MSG.GET.<stream>` for each of these streams.)
//!
//! Against a blob stored again while the sweep decides (a new message with
//! the same content): such a write refreshes the file's age first, then
//! upserts the blob row; the sweep locks that row (creating a placeholder
//! when there is none, so a file without a row is covered too) and reads
//! the age again before it deletes. A writer that refreshed after that
//! read waits for the lock and then finds the file gone, and writes it
//! again (`Store::store_blob`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use mailfleet_proto::queue::v1 as qpb;
use prost::Message;
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use crate::Store;
use crate::error::{StorageError, StorageResult};

/// `pg_advisory_lock` key of the sweep (any replica, any trigger).
pub const SWEEP_LOCK: i64 = 0x4d46_5357_4545_5000; // "MFSWEEP"
/// Row of the `maintenance` table that records the last scheduled run.
const SWEEP_TASK: &str = "blob_sweep";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct SweepConfig {
    /// How often the sweep runs by itself (one replica at a time); `0s`
    /// turns it off (`mailctl blobs sweep` still works).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A blob nothing needs is removed once it was not stored, or stored
    /// again, for this long. Longer than the time between a blob's write
    /// and its job appearing in the queue (seconds).
    #[serde(with = "humantime_serde")]
    pub min_age: Duration,
    /// JetStream streams whose jobs' blobs are kept, in the order a job
    /// moves between them (the mail queue, then the relay queue). Empty:
    /// no queue is consulted (a storage without delivery-queue).
    pub queue_streams: Vec<String>,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            interval: Duration::from_secs(3600),
            min_age: Duration::from_secs(24 * 3600),
            queue_streams: vec!["MAIL_QUEUE".into(), "MAIL_RELAY".into()],
        }
    }
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub removed: u64,
    pub kept: u64,
    /// Of the kept ones: blobs of jobs waiting in the queue.
    pub queued: u64,
}

impl Store {
    /// One sweep now (`mailctl blobs sweep`), unless another replica is
    /// sweeping (`ABORTED`).
    pub async fn sweep_blobs(&self, min_age_seconds: u64) -> StorageResult<SweepReport> {
        self.exclusively(None, min_age_seconds).await?.ok_or_else(|| {
            StorageError::Locked("a blob sweep is running already (on this or another storage replica)".into())
        })
    }

    /// The scheduled sweep: runs when the last run (by any replica) is at
    /// least `interval` ago; `None` when it was not due or another replica
    /// is at it.
    pub async fn scheduled_sweep(&self) -> StorageResult<Option<SweepReport>> {
        let sweep = &self.config.sweep;
        self.exclusively(Some(sweep.interval), sweep.min_age.as_secs()).await
    }

    /// Sweep under the advisory lock, on a connection of its own that is
    /// closed afterwards (so a lock can never outlive the sweep on a pooled
    /// connection). With `every`, only when due, and the run is recorded.
    async fn exclusively(&self, every: Option<Duration>, min_age: u64) -> StorageResult<Option<SweepReport>> {
        let mut lock = self.pool.acquire().await?.detach();
        let held: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(SWEEP_LOCK).fetch_one(&mut lock).await?;
        if !held {
            let _ = lock.close().await;
            if every.is_some() {
                self.sweeps_deferred.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!("blob sweep due here, but another one holds the lock");
            }
            return Ok(None);
        }
        let outcome = async {
            if let Some(every) = every {
                let due: bool = sqlx::query_scalar(
                    "SELECT NOT EXISTS (SELECT 1 FROM maintenance
                                         WHERE name = $1 AND last_run > now() - make_interval(secs => $2))",
                )
                .bind(SWEEP_TASK)
                .bind(every.as_secs_f64())
                .fetch_one(&mut lock)
                .await?;
                if !due {
                    return Ok(None);
                }
            }
            let report = self.sweep_now(min_age).await?;
            if every.is_some() {
                sqlx::query(
                    "INSERT INTO maintenance (name, last_run) VALUES ($1, now())
                     ON CONFLICT (name) DO UPDATE SET last_run = EXCLUDED.last_run",
                )
                .bind(SWEEP_TASK)
                .execute(&mut lock)
                .await?;
            }
            Ok(Some(report))
        }
        .await;
        // Closing the session releases the lock.
        let _ = lock.close().await;
        outcome
    }

    async fn sweep_now(&self, min_age: u64) -> StorageResult<SweepReport> {
        let mut report = SweepReport::default();
        let mut candidates = Vec::new();
        for (id, age) in self.blobs.list().await? {
            if age < min_age {
                report.kept += 1;
            } else {
                candidates.push(id);
            }
        }
        if candidates.is_empty() {
            return Ok(report);
        }
        let queued = self.queued_blobs().await?;
        for id in candidates {
            if queued.contains(&id) {
                report.kept += 1;
                report.queued += 1;
            } else if self.remove_if_unneeded(&id, min_age).await? {
                report.removed += 1;
            } else {
                report.kept += 1;
            }
        }
        tracing::info!(removed = report.removed, kept = report.kept, queued = report.queued, "blob sweep done");
        Ok(report)
    }

    /// Remove `id` unless a message refers to it or it was stored again;
    /// see the module doc for why the row lock and the second look at the
    /// age make this safe against a concurrent write of the same content.
    async fn remove_if_unneeded(&self, id: &str, min_age: u64) -> StorageResult<bool> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO blobs (id, size) VALUES ($1, 0) ON CONFLICT (id) DO NOTHING")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT 1 FROM blobs WHERE id = $1 FOR UPDATE").bind(id).execute(&mut *tx).await?;
        let referenced: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM messages WHERE blob_id = $1)")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        if referenced {
            tx.rollback().await?;
            return Ok(false);
        }
        match self.blobs.age(id).await? {
            Some(age) if age < min_age => {
                tx.rollback().await?;
                return Ok(false);
            }
            Some(_) => self.blobs.delete(id).await?,
            None => {}
        }
        sqlx::query("DELETE FROM blobs WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The blob ids of every job in the queue streams.
    async fn queued_blobs(&self) -> StorageResult<HashSet<String>> {
        let streams = &self.config.sweep.queue_streams;
        let mut held = HashSet::new();
        if streams.is_empty() {
            return Ok(held);
        }
        let js = self.jetstream.as_ref().ok_or_else(|| unreadable("no NATS connection"))?;
        for name in streams {
            read_stream(js, name, &mut held).await.map_err(|e| unreadable(&format!("stream {name}: {e}")))?;
        }
        Ok(held)
    }
}

fn unreadable(why: &str) -> StorageError {
    StorageError::Unavailable(format!("cannot read the queue ({why}); no blob was swept"))
}

/// Add the blob id of every job in `stream` to `held`, oldest first, until
/// the last one (including jobs published while it is read).
async fn read_stream(js: &jetstream::Context, name: &str, held: &mut HashSet<String>) -> Result<(), String> {
    use jetstream::stream::RawMessageErrorKind;
    let stream = js.get_stream(name).await.map_err(|e| e.to_string())?;
    let mut seq = stream.cached_info().state.first_sequence.max(1);
    loop {
        match stream.raw_message_builder().sequence(seq).next_by_subject(">").send().await {
            Ok(message) => {
                if let Ok(job) = qpb::DeliveryJob::decode(message.payload) {
                    held.insert(job.blob_id);
                }
                seq = message.sequence + 1;
            }
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Run the scheduled sweep until `shutdown`: every replica looks every
/// quarter of the interval (at most every 5 minutes) whether a run is due.
pub fn schedule(store: Arc<Store>, shutdown: CancellationToken) {
    let interval = store.config.sweep.interval;
    if interval.is_zero() {
        return;
    }
    let look_every = (interval / 4).clamp(Duration::from_millis(100), Duration::from_secs(300));
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(look_every) => {}
            }
            if let Err(err) = store.scheduled_sweep().await {
                tracing::warn!(error = %err, "scheduled blob sweep failed; trying again later");
            }
        }
    });
}
