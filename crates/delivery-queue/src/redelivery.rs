//! When a job comes back, and why nothing is done twice when it does.
//!
//! A job in progress is kept alive with progress acknowledgements every
//! [`heartbeat`] (a quarter of `ack_wait`); a worker that dies (SIGKILL,
//! power loss, a network partition) stops sending them, and JetStream hands
//! the job to another worker `ack_wait` after the last one. So a dead
//! worker's jobs come back within [`REDELIVERY_LIMIT`], for local delivery
//! and for the relay alike, however long a healthy attempt takes.
//!
//! A job that comes back may repeat what the first try did before it
//! died. Each step is made harmless by a duplicate-detection window that
//! must outlast the longest time before the repeat ([`check`]):
//!
//! - storage's delivery keys (`<queue id>:<account>`) are kept for good;
//! - the hand-over of remote recipients to the relay stream and every DSN
//!   are published with a `Nats-Msg-Id` that a repeat uses again, and the
//!   streams drop a repeat within `mailfleet_runtime::nats::DUPLICATE_WINDOW`;
//! - the relay records recipients it is done with in the queue-state
//!   bucket before a job is given back for a later attempt.

use std::time::Duration;

use mailfleet_runtime::nats::DUPLICATE_WINDOW;

use crate::config::QueueConfig;

/// The promise: a dead worker's job is delivered again within this time.
pub const REDELIVERY_LIMIT: Duration = Duration::from_secs(30);

/// A job whose state could not be written to the queue-state bucket is
/// given back with at most this delay (not its usual backoff), so that a
/// repeat of its publishes falls within the duplicate window.
pub const UNSAVED_STATE_RETRY: Duration = Duration::from_secs(10);

/// What [`check`] adds on top of the longest repeat: a loaded machine, a
/// server timer that fires late, a publish retried by the client.
pub const WINDOW_MARGIN: Duration = Duration::from_secs(30);

/// How often a job in progress tells JetStream it is alive.
pub fn heartbeat(ack_wait: Duration) -> Duration {
    (ack_wait / 4).max(Duration::from_millis(100))
}

/// The longest time between two publishes of one message id by this
/// service: a job that comes back after a dead worker's `ack_wait`, or
/// after [`UNSAVED_STATE_RETRY`].
pub fn longest_repeat(config: &QueueConfig) -> Duration {
    config.ack_wait.max(config.relay.ack_wait).max(UNSAVED_STATE_RETRY)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    #[error("{what} ack_wait {ack_wait:?} is longer than {REDELIVERY_LIMIT:?}: a dead worker's jobs would wait longer")]
    AckWaitTooLong { what: &'static str, ack_wait: Duration },
    #[error(
        "a job can be published again after {repeat:?}, which with a margin of {WINDOW_MARGIN:?} \
         exceeds the streams' duplicate window of {window:?}: a repeat would be stored twice"
    )]
    WindowTooShort { repeat: Duration, window: Duration },
}

/// The rules above, for `config` and a duplicate window of `window`.
pub fn check_with_window(config: &QueueConfig, window: Duration) -> Result<(), RuleError> {
    for (what, ack_wait) in [("queue", config.ack_wait), ("relay", config.relay.ack_wait)] {
        if ack_wait > REDELIVERY_LIMIT {
            return Err(RuleError::AckWaitTooLong { what, ack_wait });
        }
    }
    let repeat = longest_repeat(config);
    if repeat + WINDOW_MARGIN > window {
        return Err(RuleError::WindowTooShort { repeat, window });
    }
    Ok(())
}

/// Checked at start: delivery-queue refuses a configuration that breaks them.
pub fn check(config: &QueueConfig) -> Result<(), RuleError> {
    check_with_window(config, DUPLICATE_WINDOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_redeliver_within_the_limit_and_inside_every_window() {
        let config = QueueConfig::default();
        assert_eq!(check(&config), Ok(()));
        assert!(config.ack_wait <= REDELIVERY_LIMIT && config.relay.ack_wait <= REDELIVERY_LIMIT);
        // A heartbeat is sent several times within ack_wait, so one that
        // is late on a busy machine does not let a live job be redelivered.
        assert!(heartbeat(config.ack_wait) * 3 < config.ack_wait);
        assert!(longest_repeat(&config) + WINDOW_MARGIN <= DUPLICATE_WINDOW);
    }

    #[test]
    fn a_long_ack_wait_is_refused() {
        // What it was before: a killed worker's jobs waited five minutes.
        let config = QueueConfig { ack_wait: Duration::from_secs(300), ..QueueConfig::default() };
        assert!(matches!(check(&config), Err(RuleError::AckWaitTooLong { what: "queue", .. })));
        let mut config = QueueConfig::default();
        config.relay.ack_wait = Duration::from_secs(1800);
        assert!(matches!(check(&config), Err(RuleError::AckWaitTooLong { what: "relay", .. })));
    }

    #[test]
    fn a_duplicate_window_shorter_than_the_longest_repeat_is_refused() {
        let config = QueueConfig::default();
        let repeat = longest_repeat(&config);
        assert!(matches!(check_with_window(&config, repeat), Err(RuleError::WindowTooShort { .. })));
        assert_eq!(check_with_window(&config, repeat + WINDOW_MARGIN), Ok(()));
    }

    #[test]
    fn a_job_whose_state_was_not_saved_comes_back_within_the_window() {
        assert!(UNSAVED_STATE_RETRY + WINDOW_MARGIN <= DUPLICATE_WINDOW);
    }
}
