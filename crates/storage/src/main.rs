//! `storage`: the Mailfleet storage service.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use storage::StorageConfig;

#[derive(Parser)]
#[command(name = "storage", about = "Mailfleet storage service (Postgres + blob store, gRPC)")]
struct Cli {
    /// TOML configuration file; every key can also be set as MAILFLEET_STORAGE_<KEY>.
    #[arg(long, short, env = "MAILFLEET_STORAGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Create the database if needed, apply migrations, and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mailfleet_runtime::init_crypto();
    let _telemetry = mailfleet_runtime::telemetry::init("storage");
    let cli = Cli::parse();
    let config: StorageConfig = mailfleet_runtime::config::load(cli.config.as_deref(), "MAILFLEET_STORAGE_")
        .context("loading configuration")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            storage::server::ensure_database(&config.database_url).await.context("creating database")?;
            let pool = sqlx::PgPool::connect(&config.database_url).await.context("connecting to Postgres")?;
            storage::MIGRATOR.run(&pool).await.context("applying migrations")?;
            println!("migrations applied to {}", config.database_url);
        }
        Command::Serve => {
            let shutdown = mailfleet_runtime::shutdown::on_signal();
            let running = storage::serve(config, shutdown).await.context("starting storage")?;
            running.task.await.context("storage task")??;
        }
    }
    Ok(())
}
