//! `storage`: the Mailfleet storage service.

#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use storage::StorageConfig;

mailfleet_runtime::service_allocator!();

#[derive(Parser)]
#[command(name = "storage", about = "Mailfleet storage service (Postgres + blob store, gRPC)")]
struct Cli {
    /// TOML configuration file; every key can also be set as MAILFLEET_STORAGE_<KEY>.
    #[arg(long, short, env = "MAILFLEET_STORAGE_CONFIG")]
    config: Option<PathBuf>,
    /// Once serving, write the bound addresses here (see mailfleet_runtime::ready).
    #[arg(long, env = "MAILFLEET_READY_FILE")]
    ready_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Create the database if needed, apply migrations, and exit.
    Migrate,
    /// Ask a running storage for its gRPC health (grpc.health.v1); exit 0
    /// when it is SERVING. The compose healthcheck runs this; it connects
    /// with storage's own certificate (`identity` of the configuration).
    Health {
        #[arg(long, default_value = "https://127.0.0.1:50051")]
        url: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mailfleet_runtime::init_crypto();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        // No telemetry for a probe that compose runs every few seconds.
        Command::Health { url } => {
            let config: StorageConfig = mailfleet_runtime::config::load(cli.config.as_deref(), "MAILFLEET_STORAGE_")
                .context("loading configuration")?;
            health(&url, &config.identity).await
        }
        command => run(cli.config, cli.ready_file, command).await,
    }
}

async fn run(config: Option<PathBuf>, ready_file: Option<PathBuf>, command: Command) -> anyhow::Result<()> {
    let _telemetry = mailfleet_runtime::telemetry::init("storage");
    let config: StorageConfig =
        mailfleet_runtime::config::load(config.as_deref(), "MAILFLEET_STORAGE_").context("loading configuration")?;
    match command {
        Command::Migrate => {
            storage::server::ensure_database(&config.database_url).await.context("creating database")?;
            let options = storage::server::connect_options(&config.database_url).context("database_url")?;
            let pool = sqlx::PgPool::connect_with(options).await.context("connecting to Postgres")?;
            storage::MIGRATOR.run(&pool).await.context("applying migrations")?;
            println!("migrations applied to {}", config.database_url);
        }
        Command::Serve | Command::Health { .. } => {
            let shutdown = mailfleet_runtime::shutdown::on_signal();
            let running = storage::serve(config, shutdown).await.context("starting storage")?;
            if let Some(path) = &ready_file {
                let listeners = [("listen", Some(running.addr)), ("admin_listen", Some(running.admin_addr))];
                mailfleet_runtime::ready::announce(path, &listeners).context("writing the ready file")?;
            }
            running.task.await.context("storage task")??;
        }
    }
    Ok(())
}

/// One health check with a short deadline: a hung storage is unhealthy too.
async fn health(url: &str, identity: &mailfleet_runtime::grpc::FleetIdentity) -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let check = async {
        let channel = mailfleet_runtime::grpc::storage_channel(url, identity, None)?;
        let reply = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await?;
        anyhow::Ok(reply.into_inner().status())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(3), check).await {
        Ok(Ok(ServingStatus::Serving)) => {
            println!("SERVING");
            Ok(())
        }
        Ok(Ok(status)) => anyhow::bail!("storage at {url} is {}", status.as_str_name()),
        Ok(Err(e)) => Err(e.context(format!("asking {url}"))),
        Err(_) => anyhow::bail!("storage at {url} did not answer within 3 s"),
    }
}
