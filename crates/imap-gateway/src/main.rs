//! `imap-gateway`: the Mailfleet IMAP service.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use imap_gateway::ImapConfig;

mailfleet_runtime::service_allocator!();

#[derive(Parser)]
#[command(name = "imap-gateway", about = "Mailfleet IMAP gateway")]
struct Cli {
    /// TOML configuration file; every key can also be set as MAILFLEET_IMAP_<KEY>.
    #[arg(long, short, env = "MAILFLEET_IMAP_CONFIG")]
    config: Option<PathBuf>,
    /// Once serving, write the bound addresses here (see mailfleet_runtime::ready).
    #[arg(long, env = "MAILFLEET_READY_FILE")]
    ready_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mailfleet_runtime::init_crypto();
    let _telemetry = mailfleet_runtime::telemetry::init("imap-gateway");
    let cli = Cli::parse();
    let config: ImapConfig = mailfleet_runtime::config::load_service(cli.config.as_deref(), "MAILFLEET_IMAP_")
        .context("loading configuration")?;
    let shutdown = mailfleet_runtime::shutdown::on_signal();
    let running = imap_gateway::serve(config, shutdown).await.context("starting imap-gateway")?;
    if let Some(path) = &cli.ready_file {
        mailfleet_runtime::ready::announce(
            path,
            &[("listen", Some(running.addr)), ("tls_listen", running.tls_addr), ("health_listen", running.health_addr)],
        )
        .context("writing the ready file")?;
    }
    running.task.await.context("imap-gateway task")?;
    Ok(())
}
