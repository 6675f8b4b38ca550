//! `mailctl pki`: the fleet's private CA and one key pair per service
//! (see `mailfleet_runtime::pki` for the layout).

use std::path::PathBuf;

use clap::Subcommand;

use crate::output::out;

#[derive(Subcommand)]
pub enum PkiCmd {
    /// Create DIR/ca.{crt,key} and DIR/NAME.{crt,key} for every service
    /// identity. What exists is kept (safe at every start); --force issues
    /// a new CA and new certificates for everyone (rotation).
    Init {
        dir: PathBuf,
        #[arg(long)]
        force: bool,
    },
}

pub fn run(cmd: PkiCmd) -> anyhow::Result<()> {
    match cmd {
        PkiCmd::Init { dir, force } => {
            let report = mailfleet_runtime::pki::init(&dir, force)?;
            for name in &report.created {
                out!("created\t{}", mailfleet_runtime::pki::cert_path(&dir, name).display());
            }
            for name in &report.kept {
                out!("kept\t{}", mailfleet_runtime::pki::cert_path(&dir, name).display());
            }
        }
    }
    Ok(())
}
