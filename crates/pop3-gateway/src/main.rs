//! `pop3-gateway`: the Mailfleet POP3 server.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use pop3_gateway::Pop3Config;

mailfleet_runtime::service_allocator!();

#[derive(Parser)]
#[command(name = "pop3-gateway", about = "Mailfleet POP3 gateway (RFC 1939, STLS, SASL, APOP)")]
struct Cli {
    /// TOML configuration file; every key can also be set as MAILFLEET_POP3_<KEY>.
    #[arg(long, short, env = "MAILFLEET_POP3_CONFIG")]
    config: Option<PathBuf>,
    /// Once serving, write the bound addresses here (see mailfleet_runtime::ready).
    #[arg(long, env = "MAILFLEET_READY_FILE")]
    ready_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mailfleet_runtime::init_crypto();
    let _telemetry = mailfleet_runtime::telemetry::init("pop3-gateway");
    let cli = Cli::parse();
    let config: Pop3Config = mailfleet_runtime::config::load_service(cli.config.as_deref(), "MAILFLEET_POP3_")
        .context("loading configuration")?;
    let shutdown = mailfleet_runtime::shutdown::on_signal();
    let running = pop3_gateway::serve(config, shutdown).await.context("starting pop3-gateway")?;
    if let Some(path) = &cli.ready_file {
        mailfleet_runtime::ready::announce(
            path,
            &[("listen", Some(running.addr)), ("tls_listen", running.tls_addr), ("health_listen", running.health_addr)],
        )
        .context("writing the ready file")?;
    }
    running.task.await.context("pop3-gateway task")?;
    Ok(())
}
