//! `populate`: IMAP APPEND (RFC 9051 §6.3.12) M messages to every user's
//! INBOX, about half of them with \Seen.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use rand::Rng;

use crate::cli::PopulateArgs;
use crate::error::Error;
use crate::imap::ImapClient;
use crate::message::{Corpus, Fields, SizeRange};
use crate::result::{Better, ScenarioResult};
use crate::stats::rate;

use super::{Context, MB, Tally, join_tallies, latency_figures, run_id, until};

pub async fn run(ctx: Arc<Context>, args: &PopulateArgs) -> Result<ScenarioResult, Error> {
    let sizes = SizeRange::new(args.sizes.size_min, args.sizes.size_max)?;
    if args.concurrency == 0 {
        return Err(Error::Usage("--concurrency must be at least 1".into()));
    }
    let mut result = ctx.result("populate");
    result.param("messages_per_user", args.messages);
    result.param("concurrency", args.concurrency);
    result.param("size_min", sizes.min);
    result.param("size_max", sizes.max);
    let run = run_id();
    let corpus = Arc::new(Corpus::new(&mut ctx.rng(0), sizes, &run, ctx.users.longest_address(), None));

    let deadline = ctx.deadline();
    let next_user = Arc::new(AtomicU32::new(1));
    let cpu_before = ctx.cpu()?;
    let workers = args.concurrency.min(ctx.users.count());
    let tasks = (0..workers)
        .map(|w| {
            let (ctx, corpus, next_user) = (ctx.clone(), corpus.clone(), next_user.clone());
            let messages = args.messages;
            tokio::spawn(async move {
                let mut tally = Tally { began: Some(Instant::now()), ..Tally::default() };
                let mut rng = ctx.rng(100 + u64::from(w));
                loop {
                    let user = next_user.fetch_add(1, Ordering::Relaxed);
                    if user > ctx.users.count() {
                        break;
                    }
                    let work = append_user(&ctx, &corpus, &mut rng, user, messages, &mut tally);
                    if until(deadline, work).await.is_none() {
                        tally.incomplete = true;
                        tally.error("deadline");
                        break;
                    }
                }
                tally.ended = Some(Instant::now());
                tally
            })
        })
        .collect();
    let total = join_tallies(tasks).await;

    let appended = total.done("messages");
    let wall = total.wall_seconds();
    result.complete = !total.incomplete && appended == u64::from(args.messages) * u64::from(ctx.users.count());
    result.elapsed_s = wall;
    result.count("messages_appended", appended, "messages");
    result.count("bytes_appended", total.content_bytes, "bytes");
    result.figure("messages_per_s", rate(appended as f64, wall), "msg/s", Better::Higher);
    result.figure("mb_per_s", rate(total.content_bytes as f64 / MB, wall), "MB/s", Better::Higher);
    latency_figures(&mut result, "append", &total.samples("append"));
    ctx.cpu_figures(&mut result, cpu_before, appended, "msg");
    result.merge_errors(total.errors);
    Ok(result)
}

/// One user's messages over one connection. Errors are tallied; the
/// remaining messages of that user are then skipped.
async fn append_user(ctx: &Context, corpus: &Corpus, rng: &mut impl Rng, user: u32, messages: u32, tally: &mut Tally) {
    let address = ctx.users.address(user);
    let session = async {
        let mut client = ImapClient::connect(ctx.imap).await?;
        client.login(&address, &ctx.password).await?;
        for i in 0..messages {
            let seq = u64::from(user) * 1_000_000 + u64::from(i);
            let message = corpus.message(rng, &Fields { to: &address, seq, bench_id: None }, false);
            let flags: &[&str] = if rng.random_bool(0.5) { &["\\Seen"] } else { &[] };
            let started = Instant::now();
            client.append("INBOX", flags, &message).await?;
            tally.time("append", started);
            tally.add("messages", 1);
            tally.content_bytes += message.len() as u64;
        }
        tally.bytes_in += client.bytes_in();
        client.logout().await
    };
    if let Err(e) = session.await {
        tally.error(e.key());
        tally.incomplete = true;
    }
}
