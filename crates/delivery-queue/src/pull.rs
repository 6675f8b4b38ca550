//! The pull loop shared by the delivery worker and the relay: take jobs from
//! a durable JetStream pull consumer, never more than there are free worker
//! slots, and stop cleanly.
//!
//! Why not `consumer.stream()`: it keeps pull requests outstanding and
//! buffers messages the worker has not started. At shutdown those would sit
//! unacknowledged until `ack_wait` (minutes) before another replica got them.
//! Here each pull request asks for exactly as many jobs as there are free
//! slots, so every job received is either started or, once shutdown began,
//! handed straight back with a NAK (immediate redelivery to another replica).
//!
//! A job in progress sends a progress acknowledgement every `heartbeat`
//! (see [`crate::redelivery`]): JetStream leaves it alone however long it
//! takes, and hands it to another worker soon after its worker died.
//!
//! Shutdown: no new pull; the outstanding one is drained (it ends within
//! [`PULL_EXPIRES`]); jobs already started run to completion — they ack only
//! after storage committed — for up to `grace`; after that the rest are
//! abandoned and NAKed. Abandoning is safe because a redelivered job is
//! harmless (storage's delivery keys; relay state in the key-value bucket).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long one pull request waits on the server for jobs. Also about the
/// longest shutdown waits for an idle consumer's outstanding request to end.
pub const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// After shutdown, a pull request is taken as over this long after its
/// expiry even if the server's 408 status never reaches us (lost in a
/// reconnect); the server delivers nothing for an expired request.
const EXPIRY_MARGIN: Duration = Duration::from_millis(500);

/// Pull and run jobs until `shutdown`, `concurrency` at a time, each kept
/// alive every `heartbeat`; returns once every started job finished or was
/// given back (see the module doc).
pub async fn consume<H, F>(
    consumer: PullConsumer,
    concurrency: usize,
    heartbeat: Duration,
    grace: Duration,
    shutdown: CancellationToken,
    what: &'static str,
    handle: H,
) where
    H: Fn(jetstream::Message) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let running = TaskTracker::new();
    let abandon = CancellationToken::new();
    loop {
        let first = tokio::select! {
            // Checked first: a free slot must not win over shutdown.
            biased;
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let request_over = tokio::time::Instant::now() + PULL_EXPIRES + EXPIRY_MARGIN;
        let mut batch = match consumer.batch().max_messages(permits.len()).expires(PULL_EXPIRES).messages().await {
            Ok(batch) => batch,
            Err(err) => {
                tracing::warn!(error = %err, what, "cannot pull jobs; retrying");
                drop(permits);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.cancelled() => break,
                }
            }
        };
        // Read the batch to its end even after shutdown: a job the server
        // already sent us must not wait out ack_wait.
        let request_expired = async {
            shutdown.cancelled().await;
            tokio::time::sleep_until(request_over).await;
        };
        tokio::pin!(request_expired);
        loop {
            let msg = tokio::select! {
                msg = batch.next() => msg,
                _ = &mut request_expired => None,
            };
            let Some(msg) = msg else { break };
            let msg = match msg {
                Ok(msg) => msg,
                Err(err) => {
                    tracing::debug!(error = %err, what, "pull error");
                    continue;
                }
            };
            let permit = match permits.pop() {
                Some(permit) if !shutdown.is_cancelled() => permit,
                _ => {
                    give_back(&msg, what).await;
                    continue;
                }
            };
            let copy = msg.clone();
            let abandon = abandon.clone();
            let job = handle(msg);
            running.spawn(async move {
                tokio::select! {
                    _ = keep_alive(&copy, heartbeat, job) => {}
                    _ = abandon.cancelled() => give_back(&copy, what).await,
                }
                drop(permit);
            });
        }
    }
    running.close();
    if tokio::time::timeout(grace, running.wait()).await.is_err() {
        tracing::warn!(?grace, what, "jobs still running after the shutdown grace period; giving them back");
        abandon.cancel();
        running.wait().await;
    }
    tracing::info!(what, "consumer stopped");
}

/// Run `job`, telling JetStream every `every` that it is still in progress
/// (`+WPI`, which restarts its ack_wait): a slow far side or a storage call
/// that waits does not make the job look abandoned, and a dead worker
/// stops telling.
async fn keep_alive<F: Future<Output = ()>>(msg: &jetstream::Message, every: Duration, job: F) {
    tokio::pin!(job);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut job => return,
            _ = tick.tick() => {
                if let Err(err) = msg.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %err, "progress acknowledgement failed");
                }
            }
        }
    }
}

/// NAK without delay: JetStream redelivers the job at once, to any replica.
/// Flushed, because the process may exit right after (a NAK still in the
/// client's buffer would leave the job waiting out ack_wait).
async fn give_back(msg: &jetstream::Message, what: &'static str) {
    let sent = match msg.ack_with(AckKind::Nak(None)).await {
        Ok(()) => msg.context.client().flush().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(err) = sent {
        // It will still come back, after ack_wait.
        tracing::debug!(error = %err, what, "NAK failed");
    }
}
