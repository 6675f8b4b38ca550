//! Password guessing, slowed and then refused where every gateway replica
//! and protocol meets it: failed logins are rows in Postgres (per client
//! address and per account), so IMAP, POP3 and SMTP on any replica count
//! together.
//!
//! An attempt first takes its address's turn: one attempt per address at a
//! time in this storage process. The password-hashing slots are shared
//! fairly that way — one address with a thousand connections still has at
//! most one hash waiting, so a login from anywhere else waits behind at most
//! one per other address, never behind the flood. Holding the turn, the
//! attempt reads the address's recent failures: past `refuse_after` it is
//! refused unchecked (no hash at all); past `delay_after` it first waits,
//! the wait doubling per failure up to `max_delay`, which, with one attempt
//! per address at a time, is a rate limit. An account guessed from many
//! addresses is refused, past `account_refuse_after`, to the addresses that
//! already failed on it; its owner, logging in from elsewhere, is not.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;
use sqlx::PgPool;
use sqlx::postgres::types::PgInterval;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::AuthThrottleConfig;
use crate::error::{StorageError, StorageResult};

/// How long an attempt waits for its address's turn before it is refused.
const TURN_WAIT: Duration = Duration::from_secs(20);
/// The longest user name counted as it is (longer ones are cut: no address is that long).
const MAX_ACCOUNT_KEY: usize = 320;

/// Each address's turn; an entry goes when nobody holds or waits for it.
type Turns = Arc<Mutex<HashMap<IpAddr, Arc<Semaphore>>>>;

pub struct AuthThrottle {
    config: AuthThrottleConfig,
    turns: Turns,
    refused: Counter<u64>,
}

/// An attempt that may go ahead: it holds its address's turn until dropped.
pub struct Admitted {
    /// The address as Postgres `inet` text.
    source: Option<String>,
    account: String,
    turn: Option<(IpAddr, OwnedSemaphorePermit, Turns)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Some((ip, permit, turns)) = self.turn.take() else { return };
        drop(permit);
        let mut turns = turns.lock().unwrap_or_else(|e| e.into_inner());
        if turns.get(&ip).is_some_and(|s| Arc::strong_count(s) == 1) {
            turns.remove(&ip);
        }
    }
}

/// The key an account's failures count under.
fn account_key(username: &str) -> String {
    let mut key = username.trim().to_lowercase();
    if key.len() > MAX_ACCOUNT_KEY {
        let mut cut = MAX_ACCOUNT_KEY;
        while !key.is_char_boundary(cut) {
            cut -= 1;
        }
        key.truncate(cut);
    }
    key
}

/// The wait before an attempt from an address with `failures` recent failures.
fn delay(config: &AuthThrottleConfig, failures: u32) -> Duration {
    match failures.checked_sub(config.delay_after) {
        None => Duration::ZERO,
        Some(extra) => config.delay.saturating_mul(1u32 << extra.min(16)).min(config.max_delay),
    }
}

fn interval(d: Duration) -> PgInterval {
    PgInterval { months: 0, days: 0, microseconds: i64::try_from(d.as_micros()).unwrap_or(i64::MAX) }
}

impl AuthThrottle {
    pub fn new(config: AuthThrottleConfig) -> AuthThrottle {
        let refused = opentelemetry::global::meter("storage")
            .u64_counter("mailfleet.auth.refused")
            .with_unit("{attempt}")
            .with_description("Logins refused unchecked because their address or account failed too often")
            .build();
        AuthThrottle { config, turns: Turns::default(), refused }
    }

    /// Wait for `source`'s turn, then refuse the attempt or let it go ahead
    /// (after its delay). `source` is the client's address (IPv6 by /64).
    pub async fn admit(&self, pool: &PgPool, source: Option<IpAddr>, username: &str) -> StorageResult<Admitted> {
        let account = account_key(username);
        let turn = match source {
            Some(ip) => {
                let semaphore = {
                    let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
                    turns.entry(ip).or_insert_with(|| Arc::new(Semaphore::new(1))).clone()
                };
                match tokio::time::timeout(TURN_WAIT, semaphore.acquire_owned()).await {
                    Ok(Ok(permit)) => Some(permit),
                    // Waited too long behind the same address's attempts.
                    _ => return Err(self.refuse(source, "busy")),
                }
            }
            None => None,
        };
        let admitted = Admitted {
            source: source.map(|ip| ip.to_string()),
            account,
            turn: source.zip(turn).map(|(ip, permit)| (ip, permit, self.turns.clone())),
        };
        let (by_source, by_account, source_failed_account): (i64, i64, bool) = sqlx::query_as(
            "SELECT
               (SELECT count(*) FROM (SELECT 1 FROM auth_failures
                  WHERE source = $1::inet AND at > now() - $3 LIMIT $4) s),
               (SELECT count(*) FROM (SELECT 1 FROM auth_failures
                  WHERE account = $2 AND at > now() - $3 LIMIT $5) a),
               EXISTS (SELECT 1 FROM auth_failures WHERE account = $2 AND source = $1::inet AND at > now() - $3)",
        )
        .bind(&admitted.source)
        .bind(&admitted.account)
        .bind(interval(self.config.window))
        .bind(i64::from(self.config.refuse_after))
        .bind(i64::from(self.config.account_refuse_after))
        .fetch_one(pool)
        .await?;
        let by_source = u32::try_from(by_source).unwrap_or(u32::MAX);
        if source.is_some() && by_source >= self.config.refuse_after {
            return Err(self.refuse(source, "source"));
        }
        if source_failed_account && by_account >= i64::from(self.config.account_refuse_after) {
            return Err(self.refuse(source, "account"));
        }
        let wait = delay(&self.config, by_source);
        if !wait.is_zero() {
            tracing::info!(client = ?source, failures = by_source, ?wait, "slowing down a guessing address");
            tokio::time::sleep(wait).await;
        }
        Ok(admitted)
    }

    fn refuse(&self, source: Option<IpAddr>, reason: &'static str) -> StorageError {
        tracing::warn!(client = ?source, reason, "login refused: too many failures");
        self.refused.add(1, &[KeyValue::new("reason", reason)]);
        StorageError::Throttled
    }

    /// The attempt failed: count it.
    pub async fn failed(&self, pool: &PgPool, attempt: Admitted) -> StorageResult<()> {
        sqlx::query("INSERT INTO auth_failures (source, account) VALUES ($1::inet, $2)")
            .bind(&attempt.source)
            .bind(&attempt.account)
            .execute(pool)
            .await?;
        Ok(())
    }

    /// The attempt succeeded: this address's failures on this account are
    /// forgiven (a mistyped password, corrected). Its failures on other
    /// accounts still count: a valid login of one's own does not reset a
    /// guessing record.
    pub async fn succeeded(&self, pool: &PgPool, attempt: Admitted) -> StorageResult<()> {
        if attempt.source.is_some() {
            sqlx::query("DELETE FROM auth_failures WHERE source = $1::inet AND account = $2")
                .bind(&attempt.source)
                .bind(&attempt.account)
                .execute(pool)
                .await?;
        }
        Ok(())
    }

    /// Delete failures older than the window (every replica may; it is idempotent).
    pub async fn forget_old(&self, pool: &PgPool) -> StorageResult<u64> {
        let done = sqlx::query("DELETE FROM auth_failures WHERE at < now() - $1")
            .bind(interval(self.config.window))
            .execute(pool)
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_from_the_threshold_up_to_the_cap() {
        let c = AuthThrottleConfig {
            delay_after: 5,
            delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(15),
            ..AuthThrottleConfig::default()
        };
        assert_eq!(delay(&c, 4), Duration::ZERO);
        assert_eq!(delay(&c, 5), Duration::from_millis(500));
        assert_eq!(delay(&c, 6), Duration::from_secs(1));
        assert_eq!(delay(&c, 9), Duration::from_secs(8));
        assert_eq!(delay(&c, 10), Duration::from_secs(15));
        assert_eq!(delay(&c, u32::MAX), Duration::from_secs(15));
    }

    #[test]
    fn accounts_count_case_blind_and_bounded() {
        assert_eq!(account_key(" Alice@Example.ORG "), "alice@example.org");
        assert_eq!(account_key(&"é".repeat(400)).len(), 320);
    }
}
