//! `imap-gateway`: the Mailfleet IMAP service.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use imap_gateway::ImapConfig;

/// mimalloc instead of the system allocator: a service allocates and frees
/// buffers per message on several threads, where glibc's malloc spent a
/// few per cent of the CPU (and, for buffers over its mmap threshold, page
/// faults on every message). Built without transparent huge pages
/// (`no_thp`): with them every fresh arena region cost a 2 MiB page zeroed
/// in the page fault, about a tenth of storage's CPU under SMTP load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "imap-gateway", about = "Mailfleet IMAP gateway")]
struct Cli {
    /// TOML configuration file; every key can also be set as MAILFLEET_IMAP_<KEY>.
    #[arg(long, short, env = "MAILFLEET_IMAP_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mailfleet_runtime::init_crypto();
    let _telemetry = mailfleet_runtime::telemetry::init("imap-gateway");
    let cli = Cli::parse();
    let config: ImapConfig =
        mailfleet_runtime::config::load(cli.config.as_deref(), "MAILFLEET_IMAP_").context("loading configuration")?;
    let shutdown = mailfleet_runtime::shutdown::on_signal();
    let running = imap_gateway::serve(config, shutdown).await.context("starting imap-gateway")?;
    running.task.await.context("imap-gateway task")?;
    Ok(())
}
