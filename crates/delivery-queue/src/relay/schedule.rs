//! Retry schedule for relayed mail.
//!
//! RFC 5321 §4.5.4.1: the retry interval should be at least 30 minutes, and
//! give-up time at least 4–5 days. Like common MTAs we start faster (a
//! greylisting server typically accepts the second try after a few minutes)
//! and grow to 30 minutes. The schedule survives restarts because the job
//! itself stays in JetStream: a temporary failure naks it with the next
//! delay (`AckKind::Nak(Some(delay))`), the attempt count is the message's
//! delivery count, and the expiry is computed from the job's `received_at`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Schedule {
    /// Delay after the 1st, 2nd, … failed attempt; the last one repeats.
    #[serde(with = "duration_list")]
    pub intervals: Vec<Duration>,
    /// Give up (bounce with 4.4.7) once the message is older than this.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        let m = |n: u64| Duration::from_secs(60 * n);
        Schedule {
            // 1, 5, 10, 15 minutes, then every 30 minutes.
            intervals: vec![m(1), m(5), m(10), m(15), m(30)],
            // RFC 5321 §4.5.4.1: "at least 4-5 days".
            max_age: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

impl Schedule {
    /// The delay before the next attempt after `attempts` failed attempts (≥ 1).
    pub fn delay(&self, attempts: u64) -> Duration {
        let idx = (attempts.max(1) - 1) as usize;
        self.intervals.get(idx).or(self.intervals.last()).copied().unwrap_or(Duration::from_secs(1800))
    }

    /// Has a message received at `received_unix` (seconds) expired at `now_unix`?
    pub fn expired(&self, received_unix: i64, now_unix: i64) -> bool {
        now_unix.saturating_sub(received_unix) >= self.max_age.as_secs() as i64
    }
}

/// A list of durations in humantime form (`["1m", "5m"]`).
mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let wrapped: Vec<humantime_serde::Serde<Duration>> = list.iter().map(|d| (*d).into()).collect();
        wrapped.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let wrapped: Vec<humantime_serde::Serde<Duration>> = Vec::deserialize(d)?;
        Ok(wrapped.into_iter().map(|w| w.into_inner()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_repeats_and_expires() {
        let s = Schedule::default();
        assert_eq!(s.delay(1), Duration::from_secs(60));
        assert_eq!(s.delay(5), Duration::from_secs(1800));
        assert_eq!(s.delay(500), Duration::from_secs(1800));
        assert!(!s.expired(0, 4 * 24 * 3600));
        assert!(s.expired(0, 5 * 24 * 3600));
        let empty = Schedule { intervals: vec![], ..Schedule::default() };
        assert_eq!(empty.delay(1), Duration::from_secs(1800));
    }

    #[test]
    fn configurable_in_toml_style() {
        let s: Schedule = serde_json::from_str(r#"{"intervals":["100ms","2s"],"max_age":"1h"}"#).expect("parse");
        assert_eq!(s.intervals, vec![Duration::from_millis(100), Duration::from_secs(2)]);
        assert_eq!(s.max_age, Duration::from_secs(3600));
    }
}
