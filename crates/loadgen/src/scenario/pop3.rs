//! `pop3`: C clients, each its own user (RFC 1939 §8: the server locks
//! the maildrop per session), read their whole maildrop: USER/PASS, STAT,
//! LIST, UIDL, RETR of every message, QUIT. No DELE, so it is repeatable.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Barrier;

use crate::cli::Pop3Args;
use crate::error::Error;
use crate::pop3::{Pop3Client, Pop3Error};
use crate::result::{Better, ScenarioResult};
use crate::stats::{median_by, rate};

use super::{Context, MB, Tally, join_tallies, latency_figures, until};

pub async fn run(ctx: Arc<Context>, args: &Pop3Args) -> Result<ScenarioResult, Error> {
    if args.concurrency == 0 || args.concurrency > ctx.users.count() {
        return Err(Error::Usage(format!(
            "--concurrency must be between 1 and --users ({}): each POP3 client needs its own maildrop",
            ctx.users.count()
        )));
    }
    super::require_passes(args.passes)?;
    let mut result = ctx.result("pop3");
    result.param("concurrency", args.concurrency);
    result.param("passes", args.passes);
    let deadline = ctx.deadline();
    let cpu_before = ctx.cpu()?;
    let mut total = Tally::default();
    let mut passes: Vec<Pass> = Vec::new();
    for _ in 0..args.passes {
        let pass = one_pass(&ctx, args.concurrency, deadline).await;
        passes.push(Pass { messages: pass.done("messages"), octets: pass.content_bytes, seconds: pass.wall_seconds() });
        let stop = pass.incomplete;
        total.merge(pass);
        if stop {
            break;
        }
    }
    let messages = total.done("messages");
    result.complete = !total.incomplete && total.done("sessions") == u64::from(args.concurrency * args.passes);
    result.elapsed_s = passes.iter().map(|p| p.seconds).sum();
    result.count("sessions", total.done("sessions"), "sessions");
    result.count("messages_retrieved", messages, "messages");
    result.count("bytes_retrieved", total.content_bytes, "bytes");
    // One pass is short (well under a second on loopback): the rates are
    // those of the median pass.
    let msg_rate = |p: &Pass| rate(p.messages as f64, p.seconds);
    result.figure("messages_per_s", median_by(&passes, msg_rate), "msg/s", Better::Higher);
    let mb_rate = |p: &Pass| rate(p.octets as f64 / MB, p.seconds);
    result.figure("mb_per_s", median_by(&passes, mb_rate), "MB/s", Better::Higher);
    if let Some(first) = passes.first() {
        result.figure("first_pass_messages_per_s", msg_rate(first), "msg/s", Better::Higher);
    }
    latency_figures(&mut result, "retr", &total.samples("retr"));
    latency_figures(&mut result, "login", &total.samples("login"));
    ctx.cpu_figures(&mut result, cpu_before, messages, "msg");
    result.merge_errors(total.errors);
    Ok(result)
}

/// What one pass retrieved, and in how long.
struct Pass {
    messages: u64,
    octets: u64,
    seconds: f64,
}

/// Every client logs in, then all read their maildrops at once.
async fn one_pass(ctx: &Arc<Context>, concurrency: u32, deadline: Instant) -> Tally {
    let barrier = Arc::new(Barrier::new(concurrency as usize));
    let tasks = (1..=concurrency)
        .map(|user| {
            let (ctx, barrier) = (ctx.clone(), barrier.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                if until(deadline, client(&ctx, user, &barrier, &mut tally)).await.is_none() {
                    tally.incomplete = true;
                    tally.error("deadline");
                }
                tally
            })
        })
        .collect();
    join_tallies(tasks).await
}

/// One session. All clients log in, then start together at the barrier.
async fn client(ctx: &Context, user: u32, barrier: &Barrier, tally: &mut Tally) {
    let login = async {
        let started = Instant::now();
        let mut client = Pop3Client::connect(ctx.pop3).await?;
        client.login(&ctx.users.address(user), &ctx.password).await?;
        tally.time("login", started);
        Ok::<_, Pop3Error>(client)
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
    let session = async {
        let (count, _octets) = client.stat().await?;
        let listing = client.list().await?;
        client.uidl().await?;
        if listing.len() != count as usize {
            tally.error("LIST count differs from STAT");
        }
        for (msg, _) in listing {
            let started = Instant::now();
            let message = client.retr(msg).await?;
            tally.time("retr", started);
            tally.add("messages", 1);
            tally.content_bytes += message.len() as u64;
        }
        Ok::<_, Pop3Error>(())
    };
    let outcome = session.await;
    tally.ended = Some(Instant::now());
    tally.bytes_in += client.bytes_in();
    match outcome {
        Ok(()) => match client.quit().await {
            Ok(()) => tally.add("sessions", 1),
            Err(e) => tally.error(format!("QUIT {}", e.key())),
        },
        Err(e) => {
            tally.error(e.key());
            tally.incomplete = true;
        }
    }
}
