//! `delivery-queue`: delivers queued mail to local mailboxes.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use delivery_queue::QueueConfig;

/// mimalloc instead of the system allocator: a service allocates and frees
/// buffers per message on several threads, where glibc's malloc spent a
/// few per cent of the CPU (and, for buffers over its mmap threshold, page
/// faults on every message). Built without transparent huge pages
/// (`no_thp`): with them every fresh arena region cost a 2 MiB page zeroed
/// in the page fault, about a tenth of storage's CPU under SMTP load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "delivery-queue", about = "Mailfleet delivery worker (JetStream consumer)")]
struct Cli {
    /// TOML configuration file; every key can also be set as MAILFLEET_QUEUE_<KEY>.
    #[arg(long, short, env = "MAILFLEET_QUEUE_CONFIG")]
    config: Option<PathBuf>,
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
    running.task.await.context("delivery-queue task")?;
    Ok(())
}
