//! `loadgen`: see `loadgen --help` and README.md.

#![forbid(unsafe_code)]

use std::io::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;

use loadgen::cli::{Cli, Command};
use loadgen::result::RunDocument;
use loadgen::scenario::{self, Context};
use loadgen::{procfs, report};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Report(args) = &cli.command {
        let rep = report::compare(report::load(&args.mailfleet)?, report::load(&args.reference)?);
        eprint!("{}", report::table(&rep));
        let json = serde_json::to_string_pretty(&rep)?;
        match &args.out {
            Some(path) => std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?,
            None => println!("{json}"),
        }
        return Ok(());
    }

    let ctx = Arc::new(Context::new(&cli.common)?);
    // Many connections need many descriptors; a failure only matters to
    // `idle`, which checks the limit itself.
    if let Err(e) = procfs::raise_open_file_limit() {
        eprintln!("loadgen: could not raise the open file limit: {e}");
    }
    eprintln!("loadgen: target {} (seed {})", ctx.target.ip(), ctx.seed);
    let result = match &cli.command {
        Command::Populate(args) => scenario::populate::run(ctx.clone(), args).await?,
        Command::Smtp(args) => scenario::smtp::run(ctx.clone(), args).await?,
        Command::Imap(args) => scenario::imap::run(ctx.clone(), args).await?,
        Command::Pop3(args) => scenario::pop3::run(ctx.clone(), args).await?,
        Command::Idle(args) => scenario::idle::run(ctx.clone(), args).await?,
        Command::Report(_) => unreachable!("handled above"),
    };
    eprint!("{}", result.human());
    let doc = RunDocument::new(ctx.target_info(), vec![result]);
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &doc)?;
    writeln!(out)?;
    Ok(())
}
