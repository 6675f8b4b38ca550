//! The scenarios, and what they share: where to connect, who the users
//! are, the deadline, the seed, and per-task tallies.

pub mod idle;
pub mod imap;
pub mod pop3;
pub mod populate;
pub mod smtp;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::cli::Common;
use crate::error::Error;
use crate::procfs::{self, Cpu};
use crate::result::{Better, ScenarioResult, TargetInfo};
use crate::stats::{Samples, rate};
use crate::target::{Target, Users};

/// Everything a scenario needs from the common options, checked.
#[derive(Debug, Clone)]
pub struct Context {
    pub target: Target,
    pub smtp: SocketAddr,
    pub imap: SocketAddr,
    pub pop3: SocketAddr,
    pub users: Users,
    pub password: String,
    pub max_seconds: u64,
    pub seed: u64,
    pub label: Option<String>,
    pub cpu_pids: Vec<u32>,
    /// `/proc`, or a stand-in in tests.
    pub proc_root: PathBuf,
}

impl Context {
    pub fn new(common: &Common) -> Result<Self, Error> {
        let target = Target::parse(&common.host)?;
        Ok(Self {
            target,
            smtp: target.addr(common.smtp_port),
            imap: target.addr(common.imap_port),
            pop3: target.addr(common.pop3_port),
            users: Users::new(&common.user_format, common.users)?,
            password: common.password.clone(),
            max_seconds: common.max_seconds,
            seed: common.seed.unwrap_or_else(rand::random),
            label: common.label.clone(),
            cpu_pids: common.cpu_pids.clone(),
            proc_root: PathBuf::from("/proc"),
        })
    }

    pub fn target_info(&self) -> TargetInfo {
        TargetInfo {
            host: self.target.ip().to_string(),
            smtp_port: self.smtp.port(),
            imap_port: self.imap.port(),
            pop3_port: self.pop3.port(),
        }
    }

    /// When the scenario must stop, counted from now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.max_seconds)
    }

    /// An independent, reproducible random stream per task.
    pub fn rng(&self, stream: u64) -> StdRng {
        StdRng::seed_from_u64(self.seed ^ stream.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// A result with the common parameters filled in.
    pub fn result(&self, scenario: &str) -> ScenarioResult {
        let mut r = ScenarioResult::new(scenario, self.label.as_deref());
        r.param("users", self.users.count());
        r.param("user_format", self.users.format());
        r.param("seed", self.seed);
        r.param("max_seconds", self.max_seconds);
        if !self.cpu_pids.is_empty() {
            r.param("cpu_pids", &self.cpu_pids);
        }
        r
    }

    /// CPU of the `--cpu-pids` trees now, if any were given.
    pub fn cpu(&self) -> Result<Option<Cpu>, Error> {
        if self.cpu_pids.is_empty() {
            return Ok(None);
        }
        procfs::tree_cpu(&self.proc_root, &self.cpu_pids).map(Some).map_err(Error::Proc)
    }

    /// Adds `cpu_seconds` and `cpu_seconds_per_1000_<unit>` for the phase
    /// that began with `before`.
    pub fn cpu_figures(&self, result: &mut ScenarioResult, before: Option<Cpu>, units: u64, unit: &str) {
        let Some(before) = before else { return };
        match self.cpu() {
            Ok(Some(after)) => {
                let seconds = after.seconds_since(&before);
                result.figure("cpu_seconds", seconds, "s", Better::Lower);
                let per = rate(seconds * 1000.0, units as f64);
                result.figure(&format!("cpu_seconds_per_1000_{unit}"), per, "s", Better::Lower);
                result.count("cpu_processes_after", after.processes, "processes");
            }
            Ok(None) => {}
            Err(e) => result.note(format!("CPU after the run not read: {e}")),
        }
    }
}

/// What one task measured; tallies of all tasks are merged.
#[derive(Debug, Default)]
pub struct Tally {
    /// Latency samples (ms) by operation.
    pub ops: BTreeMap<&'static str, Samples>,
    pub errors: BTreeMap<String, u64>,
    /// Octets of message content moved (appended, retrieved, fetched).
    pub content_bytes: u64,
    /// Octets received on the sockets, protocol included.
    pub bytes_in: u64,
    /// Units of work done (messages, rounds), by kind.
    pub done: BTreeMap<&'static str, u64>,
    /// The task stopped before doing all it was asked to.
    pub incomplete: bool,
    /// When the measured phase began and ended in this task.
    pub began: Option<Instant>,
    pub ended: Option<Instant>,
}

impl Tally {
    pub fn time(&mut self, op: &'static str, since: Instant) {
        self.ops.entry(op).or_default().push_ms(since.elapsed());
    }

    pub fn error(&mut self, key: impl Into<String>) {
        *self.errors.entry(key.into()).or_default() += 1;
    }

    pub fn add(&mut self, what: &'static str, n: u64) {
        *self.done.entry(what).or_default() += n;
    }

    pub fn done(&self, what: &str) -> u64 {
        self.done.get(what).copied().unwrap_or(0)
    }

    pub fn samples(&self, op: &str) -> Samples {
        self.ops.get(op).cloned().unwrap_or_default()
    }

    pub fn merge(&mut self, other: Tally) {
        for (op, s) in other.ops {
            self.ops.entry(op).or_default().extend(s);
        }
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for (k, n) in other.done {
            *self.done.entry(k).or_default() += n;
        }
        self.content_bytes += other.content_bytes;
        self.bytes_in += other.bytes_in;
        self.incomplete |= other.incomplete;
        self.began = min_some(self.began, other.began);
        self.ended = self.ended.max(other.ended);
    }

    /// Seconds from the earliest start to the latest end.
    pub fn wall_seconds(&self) -> f64 {
        match (self.began, self.ended) {
            (Some(b), Some(e)) => e.saturating_duration_since(b).as_secs_f64(),
            _ => 0.0,
        }
    }
}

fn min_some(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Adds `<op>_p50_ms` and `<op>_p99_ms`.
pub fn latency_figures(result: &mut ScenarioResult, prefix: &str, samples: &Samples) {
    result.figure(&format!("{prefix}_p50_ms"), samples.percentile(50.0), "ms", Better::Lower);
    result.figure(&format!("{prefix}_p99_ms"), samples.percentile(99.0), "ms", Better::Lower);
}

/// Runs `fut` until `deadline`; `None` if the deadline came first.
/// `--passes` of a scenario: at least one.
pub fn require_passes(passes: u32) -> Result<(), crate::error::Error> {
    if passes == 0 {
        return Err(crate::error::Error::Usage("--passes must be at least 1".into()));
    }
    Ok(())
}

pub async fn until<F: Future>(deadline: Instant, fut: F) -> Option<F::Output> {
    tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), fut).await.ok()
}

/// Waits for every task; a task that panicked counts as an error.
pub async fn join_tallies(tasks: Vec<tokio::task::JoinHandle<Tally>>) -> Tally {
    let mut total = Tally::default();
    for task in tasks {
        match task.await {
            Ok(t) => total.merge(t),
            Err(e) => {
                total.error(format!("task failed: {e}"));
                total.incomplete = true;
            }
        }
    }
    total
}

/// A run identifier for X-Bench-Id and Message-IDs: unique per run, not
/// derived from the seed (two runs with one seed must not be confused).
pub fn run_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{:08x}", (nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)) as u32)
}

pub const MB: f64 = 1_000_000.0;
