//! `smtp`: SMTP ingest over C connections, and, with the watch on, the
//! time from each 250 until the message is visible over IMAP.
//!
//! Watchers are set up first: one IMAP connection per recipient user,
//! LOGIN, SELECT INBOX (remembering UIDNEXT), IDLE (RFC 2177). Only when
//! every watcher has its `+` does sending begin. On `* n EXISTS` a watcher
//! leaves IDLE with DONE, fetches the X-Bench-Id of every message above
//! the last UID it knows, and idles again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli::SmtpArgs;
use crate::error::Error;
use crate::imap::{Idling, ImapClient, ImapError, Response, Untagged};
use crate::message::{Corpus, Fields, SizeRange};
use crate::result::{Better, ScenarioResult};
use crate::smtp::{Outcome, SmtpClient};
use crate::stats::{Samples, rate};

use super::{Context, Tally, latency_figures, run_id, until};

/// NOOP polling interval for a server without IDLE.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long watchers get to say DONE and LOGOUT after the run.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// An idling watcher that has heard nothing for this long looks for new
/// messages itself (DONE, FETCH, IDLE again; RFC 2177 lets a client restart
/// IDLE whenever it likes). While mail flows every watcher hears something
/// far more often; this only ends a wait for a notification the server
/// never sent (seen with Dovecot: one message of 6,000, announced to no
/// IDLE client for 15 minutes), and such a message counts as visible when
/// the watcher found it.
const QUIET_RECHECK: Duration = Duration::from_secs(5);

/// `--passes` runs of [`one_pass`], combined (median rates and latencies).
pub async fn run(ctx: Arc<Context>, args: &SmtpArgs) -> Result<ScenarioResult, Error> {
    super::require_passes(args.passes)?;
    let mut passes = Vec::new();
    for pass in 1..=args.passes {
        if args.passes > 1 {
            eprintln!("smtp: pass {pass} of {}", args.passes);
        }
        passes.push(one_pass(ctx.clone(), args).await?);
    }
    ScenarioResult::median_of(passes).ok_or_else(|| Error::Usage("no pass ran".into()))
}

async fn one_pass(ctx: Arc<Context>, args: &SmtpArgs) -> Result<ScenarioResult, Error> {
    let sizes = SizeRange::new(args.sizes.size_min, args.sizes.size_max)?;
    if args.concurrency == 0 || args.messages == 0 {
        return Err(Error::Usage("--messages and --concurrency must be at least 1".into()));
    }
    let mut result = ctx.result("smtp");
    result.param("messages", args.messages);
    result.param("concurrency", args.concurrency);
    result.param("size_min", sizes.min);
    result.param("size_max", sizes.max);
    result.param("watch", args.watching());
    result.param("pipelining", args.pipelining);
    if args.watching() {
        result.param("watch_poll", args.watch_poll);
    }
    let run = run_id();
    let longest_id = format!("{run}-{}", args.messages).len();
    let corpus = Arc::new(Corpus::new(&mut ctx.rng(0), sizes, &run, ctx.users.longest_address(), Some(longest_id)));
    let deadline = ctx.deadline();

    // Watchers first, all idling before the first MAIL FROM.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let recipients = u32::try_from(args.messages).unwrap_or(u32::MAX).min(ctx.users.count());
    let mut watchers = Vec::new();
    if args.watching() {
        eprintln!("smtp: setting up {recipients} IMAP watchers");
        let setups = (1..=recipients)
            .map(|u| Watcher::setup(ctx.imap, ctx.users.address(u), &ctx.password, &run, args.watch_poll));
        let Some(setups) = until(deadline, join_all(setups)).await else {
            return Err(Error::Deadline(ctx.max_seconds, "setting up the IMAP watchers"));
        };
        for setup in setups {
            let watcher = setup?;
            if watcher.polling && !args.watch_poll {
                result.note("server lacks IDLE: watching by NOOP every 20 ms");
            }
            watchers.push(tokio::spawn(watcher.run(seen_tx.clone(), cancel.clone())));
        }
    }
    drop(seen_tx);
    result.notes.dedup();

    let cpu_before = ctx.cpu()?;
    eprintln!("smtp: sending {} messages over {} connections", args.messages, args.concurrency);
    let spawned = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let (ctx, corpus, next, run) = (ctx.clone(), corpus.clone(), next.clone(), run.clone());
            let args = args.clone();
            tokio::spawn(async move {
                let mut tally = SendTally::default();
                let work = send_loop(&ctx, &corpus, &run, &next, &args, w, &mut tally);
                if until(deadline, work).await.is_none() {
                    tally.tally.incomplete = true;
                    tally.tally.error("deadline");
                }
                tally
            })
        })
        .collect();
    let mut sent = SendTally::default();
    for task in senders {
        match task.await {
            Ok(t) => sent.merge(t),
            Err(e) => {
                sent.tally.error(format!("task failed: {e}"));
                sent.tally.incomplete = true;
            }
        }
    }
    // The first MAIL FROM written, on any connection.
    let first_send = sent.tally.began.unwrap_or(spawned);
    let send_seconds = sent.accepted.iter().map(|(_, t)| *t).max().unwrap_or(first_send).duration_since(first_send);
    let accepted = sent.accepted.len() as u64;
    let refused: u64 = sent.tally.done("refused");
    eprintln!("smtp: {accepted} accepted, {refused} refused in {:.2} s", send_seconds.as_secs_f64());

    result.count("messages_accepted", accepted, "messages");
    result.count("messages_refused", refused, "messages");
    result.figure("send_seconds", send_seconds.as_secs_f64(), "s", Better::Lower);
    result.figure("accepted_msg_per_s", rate(accepted as f64, send_seconds.as_secs_f64()), "msg/s", Better::Higher);
    latency_figures(&mut result, "accept", &sent.tally.samples("transaction"));
    latency_figures(&mut result, "end_of_data", &sent.tally.samples("end_of_data"));
    let mut complete = !sent.tally.incomplete && accepted + refused == args.messages;

    if args.watching() {
        let accepted_at: HashMap<u64, Instant> = sent.accepted.iter().copied().collect();
        let mut seen: HashMap<u64, Instant> = HashMap::new();
        let mut seen_accepted = 0usize;
        eprintln!("smtp: waiting until all {accepted} are visible over IMAP");
        while seen_accepted < accepted_at.len() {
            match until(deadline, seen_rx.recv()).await {
                Some(Some((seq, at))) => {
                    if let std::collections::hash_map::Entry::Vacant(e) = seen.entry(seq) {
                        e.insert(at);
                        seen_accepted += usize::from(accepted_at.contains_key(&seq));
                    }
                }
                // Every watcher has ended (errors are counted below).
                Some(None) => break,
                None => {
                    result.note("deadline passed before every accepted message was visible");
                    break;
                }
            }
        }
        cancel.cancel();
        let mut visible = Samples::default();
        let mut last_seen = None::<Instant>;
        for (seq, accepted) in &accepted_at {
            if let Some(at) = seen.get(seq) {
                // Signed: a message may be visible before its 250 was read.
                let ms = if at >= accepted {
                    at.duration_since(*accepted).as_secs_f64() * 1000.0
                } else {
                    -(accepted.duration_since(*at).as_secs_f64() * 1000.0)
                };
                visible.push(ms);
                last_seen = last_seen.max(Some(*at));
            }
        }
        let delivered = visible.len() as u64;
        let deliver_seconds = last_seen.map_or(0.0, |t| t.duration_since(first_send).as_secs_f64());
        result.count("messages_visible", delivered, "messages");
        result.figure("never_seen", (accepted - delivered) as f64, "messages", Better::Lower);
        result.figure("deliver_seconds", deliver_seconds, "s", Better::Lower);
        result.figure("delivered_msg_per_s", rate(delivered as f64, deliver_seconds), "msg/s", Better::Higher);
        latency_figures(&mut result, "visible", &visible);
        complete &= delivered == accepted;
        ctx.cpu_figures(&mut result, cpu_before, accepted, "msg");
        for w in watchers {
            match tokio::time::timeout(CLOSE_GRACE, w).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => {
                    result.error(format!("watch {}", e.key()));
                    complete = false;
                }
                Ok(Err(e)) => result.error(format!("watch task failed: {e}")),
                Err(_) => result.error("watch close timeout"),
            }
        }
        result.elapsed_s = first_send.elapsed().as_secs_f64();
    } else {
        ctx.cpu_figures(&mut result, cpu_before, accepted, "msg");
        result.elapsed_s = send_seconds.as_secs_f64();
    }
    result.complete = complete;
    result.merge_errors(sent.tally.errors);
    Ok(result)
}

#[derive(Debug, Default)]
struct SendTally {
    tally: Tally,
    /// (sequence number, instant of the 250 after the final dot).
    accepted: Vec<(u64, Instant)>,
}

impl SendTally {
    fn merge(&mut self, other: SendTally) {
        self.tally.merge(other.tally);
        self.accepted.extend(other.accepted);
    }
}

/// One connection: EHLO, then transactions until the shared counter
/// passes `--messages`, then QUIT. A broken connection ends the task;
/// the other connections take the remaining messages.
async fn send_loop(
    ctx: &Context,
    corpus: &Corpus,
    run: &str,
    next: &AtomicU64,
    args: &SmtpArgs,
    worker: u32,
    out: &mut SendTally,
) {
    let mut rng = ctx.rng(1000 + u64::from(worker));
    let mut client = match connect(ctx.smtp, &args.ehlo).await {
        Ok(c) => c,
        Err(e) => {
            out.tally.error(format!("connect {}", e.key()));
            out.tally.incomplete = true;
            return;
        }
    };
    loop {
        let seq = next.fetch_add(1, Ordering::Relaxed);
        if seq >= args.messages {
            break;
        }
        let to = ctx.users.address(ctx.users.round_robin(seq));
        let bench_id = format!("{run}-{seq}");
        let data = corpus.message(&mut rng, &Fields { to: &to, seq, bench_id: Some(&bench_id) }, true);
        let sent = client.send_mail(&args.mail_from, &to, &data, args.pipelining).await;
        if let Ok(t) = &sent {
            // This connection's first MAIL FROM; merging keeps the earliest.
            out.tally.began.get_or_insert(t.started);
        }
        match sent {
            Ok(t) => match t.outcome {
                Outcome::Accepted => {
                    out.tally.ops.entry("transaction").or_default().push_ms(t.finished - t.started);
                    if let Some(eod) = t.end_of_data_sent {
                        out.tally.ops.entry("end_of_data").or_default().push_ms(t.finished - eod);
                    }
                    out.accepted.push((seq, t.finished));
                }
                Outcome::Rejected { stage, code } => {
                    out.tally.error(format!("{} {code}", stage.name()));
                    out.tally.add("refused", 1);
                }
            },
            Err(e) => {
                out.tally.error(e.key());
                out.tally.incomplete = true;
                return;
            }
        }
    }
    if let Err(e) = client.quit().await {
        out.tally.error(format!("QUIT {}", e.key()));
    }
}

async fn connect(addr: SocketAddr, ehlo: &str) -> Result<SmtpClient, crate::smtp::SmtpError> {
    let mut client = SmtpClient::connect(addr).await?;
    client.ehlo(ehlo).await?;
    Ok(client)
}

/// One recipient's INBOX, watched for new messages of this run.
struct Watcher {
    client: ImapClient,
    /// Highest UID looked at; new messages have larger ones.
    last_uid: u32,
    /// `Some` while an IDLE is in progress.
    idling: Option<Idling>,
    /// An EXISTS came that has not been followed by a fetch yet.
    dirty: bool,
    /// No IDLE: poll with NOOP.
    polling: bool,
    /// `X-Bench-Id` values of this run start with this.
    prefix: String,
}

type Seen = mpsc::UnboundedSender<(u64, Instant)>;

impl Watcher {
    async fn setup(addr: SocketAddr, user: String, password: &str, run: &str, poll: bool) -> Result<Self, ImapError> {
        let mut client = ImapClient::connect(addr).await?;
        client.login(&user, password).await?;
        let selected = client.select("INBOX").await?;
        // RFC 9051 §2.3.1.1: UIDs only grow, and UIDNEXT is the next one.
        let last_uid = match selected.uid_next {
            Some(next) => next.saturating_sub(1),
            None => last_uid(&mut client, selected.exists).await?,
        };
        let polling = poll || !client.has_capability("IDLE");
        let mut watcher = Self { client, last_uid, idling: None, dirty: false, polling, prefix: format!("{run}-") };
        if !polling {
            watcher.start_idle().await?;
        }
        Ok(watcher)
    }

    async fn start_idle(&mut self) -> Result<(), ImapError> {
        let mut dirty = false;
        self.idling = Some(
            self.client
                .idle(|r| {
                    dirty |= is_exists(r);
                    Ok(())
                })
                .await?,
        );
        self.dirty |= dirty;
        Ok(())
    }

    async fn run(mut self, seen: Seen, cancel: CancellationToken) -> Result<(), ImapError> {
        loop {
            if self.polling {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(POLL_INTERVAL) => {}
                }
                let mut dirty = false;
                // RFC 9051 §6.1.2: NOOP lets the server report new messages.
                self.client
                    .run_with("NOOP", |r| {
                        dirty |= is_exists(r);
                        Ok(())
                    })
                    .await?;
                if dirty || self.dirty {
                    self.fetch_new(&seen).await?;
                }
                continue;
            }
            if self.dirty {
                if let Some(idling) = self.idling.take() {
                    self.client.done(idling, |_| Ok(())).await?;
                }
                self.fetch_new(&seen).await?;
                self.start_idle().await?;
                continue;
            }
            let event = tokio::select! {
                _ = cancel.cancelled() => None,
                r = self.client.read_response() => Some(Some(r)),
                _ = tokio::time::sleep(QUIET_RECHECK) => Some(None),
            };
            match event {
                None => break,
                Some(Some(r)) => self.dirty |= is_exists(&r?),
                Some(None) => self.dirty = true,
            }
        }
        if let Some(idling) = self.idling.take() {
            self.client.done(idling, |_| Ok(())).await?;
        }
        self.client.logout().await
    }

    /// `UID FETCH last+1:* (UID BODY.PEEK[HEADER.FIELDS (X-Bench-Id)])`,
    /// repeated while EXISTS arrives during the fetch. RFC 9051 §6.4.8
    /// (note on `n:*`): with no UID above `last`, the range is `*:last+1`
    /// and returns the last message, so UIDs are checked.
    async fn fetch_new(&mut self, seen: &Seen) -> Result<(), ImapError> {
        loop {
            self.dirty = false;
            let last = self.last_uid;
            let mut found = Vec::new();
            let mut dirty = false;
            let command = format!("UID FETCH {}:* (UID BODY.PEEK[HEADER.FIELDS (X-Bench-Id)])", last + 1);
            self.client
                .run_with(&command, |r| {
                    dirty |= is_exists(r);
                    if let Some(Untagged::Fetch(_)) = r.untagged() {
                        let at = Instant::now();
                        let data = r.fetch()?;
                        if let Some(uid) = data.uid.filter(|&u| u > last) {
                            let header = data.sections.first().and_then(|(_, v)| v.as_deref()).unwrap_or_default();
                            found.push((uid, bench_id(header, &self.prefix), at));
                        }
                    }
                    Ok(())
                })
                .await?;
            for (uid, seq, at) in found {
                self.last_uid = self.last_uid.max(uid);
                if let Some(seq) = seq {
                    // The receiver is gone only once the run is over.
                    let _ = seen.send((seq, at));
                }
            }
            if !dirty {
                return Ok(());
            }
        }
    }
}

fn is_exists(r: &Response) -> bool {
    matches!(r.untagged(), Some(Untagged::Exists(_)))
}

/// Without UIDNEXT: the UID of the last message (`UID FETCH * (UID)`).
async fn last_uid(client: &mut ImapClient, exists: u32) -> Result<u32, ImapError> {
    if exists == 0 {
        return Ok(0);
    }
    let mut uid = 0;
    client
        .run_with("UID FETCH * (UID)", |r| {
            if let Some(Untagged::Fetch(_)) = r.untagged() {
                uid = uid.max(r.fetch()?.uid.unwrap_or(0));
            }
            Ok(())
        })
        .await?;
    Ok(uid)
}

/// The sequence number in `X-Bench-Id: <run>-<seq>` if the header block
/// has one of this run (field names are case-insensitive, RFC 5322 §1.2.2).
fn bench_id(header: &[u8], prefix: &str) -> Option<u64> {
    let text = String::from_utf8_lossy(header);
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        if !name.trim().eq_ignore_ascii_case("X-Bench-Id") {
            return None;
        }
        value.trim().strip_prefix(prefix)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_ids() {
        assert_eq!(bench_id(b"X-Bench-Id: ab12-42\r\n\r\n", "ab12-"), Some(42));
        assert_eq!(bench_id(b"x-bench-id:ab12-7\r\n\r\n", "ab12-"), Some(7));
        assert_eq!(bench_id(b"X-Bench-Id: other-7\r\n\r\n", "ab12-"), None);
        assert_eq!(bench_id(b"\r\n", "ab12-"), None);
    }
}
