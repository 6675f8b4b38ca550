//! `delivery-queue`: delivers queued mail to local mailboxes.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use delivery_queue::QueueConfig;

mailfleet_runtime::service_allocator!();

#[derive(Parser)]
#[command(name = "delivery-queue", about = "Mailfleet delivery worker (JetStream consumer)")]
struct Cli {
    /// TOML configuration file; every key can also be set as MAILFLEET_QUEUE_<KEY>.
    #[arg(long, short, env = "MAILFLEET_QUEUE_CONFIG")]
    config: Option<PathBuf>,
    /// Once serving, write the bound addresses here (see mailfleet_runtime::ready).
    #[arg(long, env = "MAILFLEET_READY_FILE")]
    ready_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mailfleet_runtime::init_crypto();
    let _telemetry = mailfleet_runtime::telemetry::init("delivery-queue");
    let cli = Cli::parse();
    let config: QueueConfig =
        mailfleet_runtime::config::load(cli.config.as_deref(), "MAILFLEET_QUEUE_").context("loading configuration")?;
    let shutdown = mailfleet_runtime::shutdown::on_signal();
    let running = delivery_queue::run(config, shutdown).await.context("starting delivery-queue")?;
    if let Some(path) = &cli.ready_file {
        mailfleet_runtime::ready::announce(path, &[("health_listen", running.health_addr)])
            .context("writing the ready file")?;
    }
    running.task.await.context("delivery-queue task")?;
    Ok(())
}
