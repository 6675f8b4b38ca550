//! `idle`: K logged-in IMAP connections in IDLE (RFC 2177), and what they
//! cost the server in memory: the unshared memory (Private_Clean +
//! Private_Dirty of smaps_rollup) and RSS of the named processes, before
//! opening and once all K idle, divided by K.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream;

use crate::cli::IdleArgs;
use crate::error::Error;
use crate::imap::{Idling, ImapClient, ImapError};
use crate::procfs::{self, Memory};
use crate::result::{Better, ScenarioResult};
use crate::stats::{Samples, rate};

use super::{Context, latency_figures, until};

/// How long closing all connections may take beyond the deadline.
const CLOSE_GRACE: Duration = Duration::from_secs(30);

pub async fn run(ctx: Arc<Context>, args: &IdleArgs) -> Result<ScenarioResult, Error> {
    if args.connections == 0 || args.ramp == 0 {
        return Err(Error::Usage("--connections and --ramp must be at least 1".into()));
    }
    let mut result = ctx.result("idle");
    result.param("connections", args.connections);
    result.param("process_name", &args.process_name);
    if !args.process_root.is_empty() {
        result.param("process_root", &args.process_root);
    }
    result.param("ramp", args.ramp);
    result.param("settle_seconds", args.settle_seconds);
    let limit = procfs::raise_open_file_limit().map_err(Error::Proc)?;
    result.param("open_file_limit", limit);
    if let Some(limit) = limit
        && limit < u64::from(args.connections) + 64
    {
        result.note(format!("open file limit {limit} is below --connections; some connections will fail"));
    }
    let deadline = ctx.deadline();
    let within = (!args.process_root.is_empty()).then_some(args.process_root.as_slice());
    let memory = |what| {
        procfs::memory_by_name(&ctx.proc_root, &args.process_name, within).map_err(Error::Proc).inspect(|m| {
            eprintln!(
                "idle: {what}: {} processes, {} unshared, {} RSS",
                m.processes,
                mib(m.private_bytes),
                mib(m.rss_bytes)
            );
        })
    };
    let before = memory("before")?;

    eprintln!("idle: opening {} connections, {} at a time", args.connections, args.ramp);
    let started = Instant::now();
    let opened: Vec<_> = stream::iter(0..args.connections)
        .map(|i| {
            let user = ctx.users.address(ctx.users.round_robin(u64::from(i)));
            let (addr, password) = (ctx.imap, ctx.password.clone());
            async move { until(deadline, open(addr, user, password)).await }
        })
        .buffer_unordered(args.ramp as usize)
        .collect()
        .await;
    let open_seconds = started.elapsed().as_secs_f64();
    let mut sessions = Vec::new();
    let mut logins = Samples::default();
    for outcome in opened {
        match outcome {
            Some(Ok((session, login))) => {
                sessions.push(session);
                logins.push_ms(login);
            }
            Some(Err(e)) => result.error(e.key()),
            None => result.error("deadline"),
        }
    }
    let idling = sessions.len() as u64;
    eprintln!("idle: {idling} idling after {open_seconds:.2} s; settling {} s", args.settle_seconds);
    // No protocol signal tells when the server's memory has settled.
    tokio::time::sleep(Duration::from_secs_f64(args.settle_seconds.max(0.0))).await;
    let after = memory("after")?;

    result.count("connections_idling", idling, "connections");
    result.figure("open_seconds", open_seconds, "s", Better::Lower);
    result.figure("logins_per_s", rate(idling as f64, open_seconds), "logins/s", Better::Higher);
    latency_figures(&mut result, "login", &logins);
    memory_figures(&mut result, &before, &after, idling);

    eprintln!("idle: closing");
    let closing = stream::iter(sessions)
        .map(|(client, idling)| close(client, idling))
        .buffer_unordered(args.ramp as usize)
        .collect::<Vec<_>>();
    match until(deadline.max(Instant::now()) + CLOSE_GRACE, closing).await {
        Some(outcomes) => {
            for e in outcomes.into_iter().filter_map(Result::err) {
                result.error(format!("close {}", e.key()));
            }
        }
        None => result.error("close timeout"),
    }
    result.complete = idling == u64::from(args.connections);
    result.elapsed_s = started.elapsed().as_secs_f64();
    Ok(result)
}

fn memory_figures(result: &mut ScenarioResult, before: &Memory, after: &Memory, connections: u64) {
    let per = |a: u64, b: u64| rate(a as f64 - b as f64, connections as f64);
    result.figure("unshared_bytes_per_conn", per(after.private_bytes, before.private_bytes), "bytes", Better::Lower);
    result.figure("rss_bytes_per_conn", per(after.rss_bytes, before.rss_bytes), "bytes", Better::Lower);
    result.figure("pss_bytes_per_conn", per(after.pss_bytes, before.pss_bytes), "bytes", Better::Lower);
    result.count("processes_before", before.processes, "processes");
    result.count("processes_after", after.processes, "processes");
    result.count("unshared_bytes_before", before.private_bytes, "bytes");
    result.count("unshared_bytes_after", after.private_bytes, "bytes");
    result.count("rss_bytes_before", before.rss_bytes, "bytes");
    result.count("rss_bytes_after", after.rss_bytes, "bytes");
}

/// Connect, LOGIN, SELECT INBOX, IDLE; the login time covers connect
/// and LOGIN.
async fn open(
    addr: std::net::SocketAddr,
    user: String,
    password: String,
) -> Result<((ImapClient, Idling), Duration), ImapError> {
    let started = Instant::now();
    let mut client = ImapClient::connect(addr).await?;
    client.login(&user, &password).await?;
    let login = started.elapsed();
    if !client.has_capability("IDLE") {
        return Err(ImapError::Missing("IDLE"));
    }
    client.select("INBOX").await?;
    let idling = client.idle(|_| Ok(())).await?;
    Ok(((client, idling), login))
}

async fn close(mut client: ImapClient, idling: Idling) -> Result<(), ImapError> {
    client.done(idling, |_| Ok(())).await?;
    client.logout().await
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
