//! `imap`: C clients doing rounds of what a mail client does, timed per
//! command; then, with `--full-fetch`, one client reading a whole INBOX.

use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use tokio::sync::Barrier;

use crate::cli::ImapArgs;
use crate::error::Error;
use crate::imap::{ImapClient, ImapError, Untagged, client::quoted};
use crate::message::{sender_word, subject_word};
use crate::result::{Better, ScenarioResult};
use crate::stats::{median_by, rate};

use super::{Context, MB, Tally, join_tallies, latency_figures, until};

/// The operations of a round, in order, as named in the result.
pub const OPS: &[&str] = &["select", "fetch_envelope", "fetch_body", "store", "search_unseen", "search_text"];

pub async fn run(ctx: Arc<Context>, args: &ImapArgs) -> Result<ScenarioResult, Error> {
    if args.concurrency == 0 && args.rounds > 0 {
        return Err(Error::Usage("--concurrency must be at least 1".into()));
    }
    let mut result = ctx.result("imap");
    result.param("concurrency", args.concurrency);
    result.param("rounds", args.rounds);
    result.param("body_fetches", args.body_fetches);
    result.param("full_fetch", args.full_fetch);
    let deadline = ctx.deadline();
    let mut complete = true;

    if args.rounds > 0 {
        let cpu_before = ctx.cpu()?;
        let barrier = Arc::new(Barrier::new(args.concurrency as usize));
        let tasks = (0..args.concurrency)
            .map(|i| {
                let (ctx, barrier, args) = (ctx.clone(), barrier.clone(), args.clone());
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    let work = client(&ctx, i, &args, &barrier, &mut tally);
                    if until(deadline, work).await.is_none() {
                        tally.incomplete = true;
                        tally.error("deadline");
                    }
                    tally
                })
            })
            .collect();
        let total = join_tallies(tasks).await;
        let wall = total.wall_seconds();
        let mut ops = 0u64;
        for op in OPS {
            let samples = total.samples(op);
            ops += samples.len() as u64;
            result.count(&format!("{op}_count"), samples.len() as u64, "ops");
            result.figure(&format!("{op}_ops_per_s"), rate(samples.len() as f64, wall), "ops/s", Better::Higher);
            latency_figures(&mut result, op, &samples);
        }
        latency_figures(&mut result, "login", &total.samples("login"));
        result.count("ops", ops, "ops");
        result.figure("ops_per_s", rate(ops as f64, wall), "ops/s", Better::Higher);
        result.count("rounds_done", total.done("rounds"), "rounds");
        result.count("bytes_received", total.bytes_in, "bytes");
        result.figure("mb_per_s_received", rate(total.bytes_in as f64 / MB, wall), "MB/s", Better::Higher);
        result.figure("rounds_seconds", wall, "s", Better::Lower);
        ctx.cpu_figures(&mut result, cpu_before, ops, "ops");
        result.elapsed_s = wall;
        complete &= !total.incomplete && total.done("rounds") == u64::from(args.concurrency) * u64::from(args.rounds);
        result.merge_errors(total.errors);
    }

    if args.full_fetch {
        super::require_passes(args.passes)?;
        result.param("passes", args.passes);
        let cpu_before = ctx.cpu()?;
        match until(deadline, full_fetch(&ctx, args.passes)).await {
            Some(Ok(passes)) => {
                // A pass lasts well under a second: one is a noisy sample,
                // so the rates are those of the median pass.
                let first = &passes[0];
                result.count("full_fetch_messages", first.messages, "messages");
                result.count("full_fetch_bytes", first.bytes, "bytes");
                result.figure("full_fetch_seconds", median_by(&passes, |p| Some(p.seconds)), "s", Better::Lower);
                let msg_rate = |p: &FullFetch| rate(p.messages as f64, p.seconds);
                result.figure("full_fetch_msg_per_s", median_by(&passes, msg_rate), "msg/s", Better::Higher);
                let mb_rate = |p: &FullFetch| rate(p.bytes as f64 / MB, p.seconds);
                result.figure("full_fetch_mb_per_s", median_by(&passes, mb_rate), "MB/s", Better::Higher);
                result.figure("full_fetch_first_pass_msg_per_s", msg_rate(first), "msg/s", Better::Higher);
                if let (Some(before), Ok(Some(after))) = (cpu_before, ctx.cpu()) {
                    let per_pass = after.seconds_since(&before) / passes.len() as f64;
                    result.figure("full_fetch_cpu_seconds", per_pass, "s", Better::Lower);
                }
                result.elapsed_s += passes.iter().map(|p| p.seconds).sum::<f64>();
            }
            Some(Err(e)) => {
                result.error(format!("full fetch {}", e.key()));
                complete = false;
            }
            None => {
                result.error("full fetch deadline");
                complete = false;
            }
        }
    }
    result.complete = complete;
    Ok(result)
}

/// Client `i`: LOGIN as user (i mod users)+1, wait for all clients, then
/// the rounds, then LOGOUT. The barrier is always reached once, even on
/// a failed login, so that the others are not held up.
async fn client(ctx: &Context, i: u32, args: &ImapArgs, barrier: &Barrier, tally: &mut Tally) {
    let user = ctx.users.address(ctx.users.round_robin(u64::from(i)));
    let mut rng = ctx.rng(2000 + u64::from(i));
    let login = async {
        let started = Instant::now();
        let mut client = ImapClient::connect(ctx.imap).await?;
        client.login(&user, &ctx.password).await?;
        tally.time("login", started);
        Ok::<_, ImapError>(client)
    };
    let client = login.await;
    barrier.wait().await;
    let mut client = match client {
        Ok(c) => c,
        Err(e) => {
            tally.error(format!("login {}", e.key()));
            tally.incomplete = true;
            return;
        }
    };
    tally.began = Some(Instant::now());
    for round in 0..args.rounds {
        if let Err(e) = one_round(&mut client, &mut rng, args, round, tally).await {
            tally.error(e.key());
            tally.incomplete = true;
            break;
        }
        tally.add("rounds", 1);
    }
    tally.ended = Some(Instant::now());
    tally.bytes_in += client.bytes_in();
    if let Err(e) = client.logout().await {
        tally.error(format!("LOGOUT {}", e.key()));
    }
}

/// SELECT; UID FETCH 1:* (FLAGS ENVELOPE); K × UID FETCH uid BODY.PEEK[];
/// UID STORE +FLAGS then -FLAGS (\Flagged); UID SEARCH UNSEEN; one text
/// UID SEARCH (SUBJECT or FROM).
async fn one_round(
    client: &mut ImapClient,
    rng: &mut impl Rng,
    args: &ImapArgs,
    round: u32,
    tally: &mut Tally,
) -> Result<(), ImapError> {
    let started = Instant::now();
    client.select("INBOX").await?;
    tally.time("select", started);

    let started = Instant::now();
    let mut uids = Vec::new();
    client
        .run_with("UID FETCH 1:* (FLAGS ENVELOPE)", |r| {
            if let Some(Untagged::Fetch(_)) = r.untagged()
                && let Some(uid) = r.fetch()?.uid
            {
                uids.push(uid);
            }
            Ok(())
        })
        .await?;
    tally.time("fetch_envelope", started);

    if !uids.is_empty() {
        for _ in 0..args.body_fetches {
            let uid = uids.get(rng.random_range(0..uids.len())).copied().unwrap_or(1);
            let started = Instant::now();
            let mut octets = 0;
            client
                .run_with(&format!("UID FETCH {uid} BODY.PEEK[]"), |r| {
                    octets += r.literal_bytes();
                    Ok(())
                })
                .await?;
            tally.time("fetch_body", started);
            tally.content_bytes += octets as u64;
        }
        let uid = uids.get(rng.random_range(0..uids.len())).copied().unwrap_or(1);
        for sign in ['+', '-'] {
            let started = Instant::now();
            client.run_with(&format!("UID STORE {uid} {sign}FLAGS (\\Flagged)"), |_| Ok(())).await?;
            tally.time("store", started);
        }
    }

    let started = Instant::now();
    client.run_with("UID SEARCH UNSEEN", |_| Ok(())).await?;
    tally.time("search_unseen", started);

    let search = if round.is_multiple_of(2) {
        format!("UID SEARCH SUBJECT {}", quoted(subject_word(rng))?)
    } else {
        format!("UID SEARCH FROM {}", quoted(sender_word(rng))?)
    };
    let started = Instant::now();
    client.run_with(&search, |_| Ok(())).await?;
    tally.time("search_text", started);
    Ok(())
}

struct FullFetch {
    messages: u64,
    bytes: u64,
    seconds: f64,
}

/// User 1: SELECT INBOX, then `passes` times `UID FETCH 1:* BODY.PEEK[]`,
/// each timed from sending the command to its tagged OK.
async fn full_fetch(ctx: &Context, passes: u32) -> Result<Vec<FullFetch>, ImapError> {
    let mut client = ImapClient::connect(ctx.imap).await?;
    client.login(&ctx.users.address(1), &ctx.password).await?;
    client.select("INBOX").await?;
    let mut done = Vec::new();
    for _ in 0..passes {
        let (mut messages, mut bytes) = (0u64, 0u64);
        let started = Instant::now();
        client
            .run_with("UID FETCH 1:* BODY.PEEK[]", |r| {
                if let Some(Untagged::Fetch(_)) = r.untagged() {
                    messages += 1;
                    bytes += r.literal_bytes() as u64;
                }
                Ok(())
            })
            .await?;
        done.push(FullFetch { messages, bytes, seconds: started.elapsed().as_secs_f64() });
    }
    client.logout().await?;
    Ok(done)
}
