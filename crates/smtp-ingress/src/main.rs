//! `smtp-ingress`: the Mailfleet SMTP receiver.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use smtp_ingress::IngressConfig;

mailfleet_runtime::service_allocator!();

#[derive(Parser)]
#[command(name = "smtp-ingress", about = "Mailfleet SMTP receiver (MX and submission)")]
struct Cli {
    /// TOML configuration file; every key can also be set as MAILFLEET_SMTP_<KEY>
    /// (nested keys joined with `__`, e.g. MAILFLEET_SMTP_QUEUE__STREAM).
    #[arg(long, short, env = "MAILFLEET_SMTP_CONFIG")]
    config: Option<PathBuf>,
    /// Once serving, write the bound addresses here (see mailfleet_runtime::ready).
    #[arg(long, env = "MAILFLEET_READY_FILE")]
    ready_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mailfleet_runtime::init_crypto();
    let _telemetry = mailfleet_runtime::telemetry::init("smtp-ingress");
    let cli = Cli::parse();
    let config: IngressConfig = mailfleet_runtime::config::load_service(cli.config.as_deref(), "MAILFLEET_SMTP_")
        .context("loading configuration")?;
    let shutdown = mailfleet_runtime::shutdown::on_signal();
    let running = smtp_ingress::serve(config, shutdown).await.context("starting smtp-ingress")?;
    if let Some(path) = &cli.ready_file {
        mailfleet_runtime::ready::announce(
            path,
            &[
                ("mx_listen", running.mx_addr),
                ("submission_listen", running.submission_addr),
                ("submissions_listen", running.submissions_addr),
                ("health_listen", running.health_addr),
            ],
        )
        .context("writing the ready file")?;
    }
    running.task.await.context("smtp-ingress task")?;
    Ok(())
}
