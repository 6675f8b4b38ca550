//! `smtp-ingress`: the Mailfleet SMTP receiver.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use smtp_ingress::IngressConfig;

/// mimalloc instead of the system allocator: a service allocates and frees
/// buffers per message on several threads, where glibc's malloc spent a
/// few per cent of the CPU (and, for buffers over its mmap threshold, page
/// faults on every message). Built without transparent huge pages
/// (`no_thp`): with them every fresh arena region cost a 2 MiB page zeroed
/// in the page fault, about a tenth of storage's CPU under SMTP load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "smtp-ingress", about = "Mailfleet SMTP receiver (MX and submission)")]
struct Cli {
    /// TOML configuration file; every key can also be set as MAILFLEET_SMTP_<KEY>
    /// (nested keys joined with `__`, e.g. MAILFLEET_SMTP_QUEUE__STREAM).
    #[arg(long, short, env = "MAILFLEET_SMTP_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mailfleet_runtime::init_crypto();
    let _telemetry = mailfleet_runtime::telemetry::init("smtp-ingress");
    let cli = Cli::parse();
    let config: IngressConfig =
        mailfleet_runtime::config::load(cli.config.as_deref(), "MAILFLEET_SMTP_").context("loading configuration")?;
    let shutdown = mailfleet_runtime::shutdown::on_signal();
    let running = smtp_ingress::serve(config, shutdown).await.context("starting smtp-ingress")?;
    running.task.await.context("smtp-ingress task")?;
    Ok(())
}
