//! mailctl: administration of a Mailfleet installation through storage's
//! Admin API.

#![forbid(unsafe_code)]

mod dkim;
mod output;
mod pki;
mod queue;

use crate::output::out;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailfleet_proto::storage::v1 as pb;
use pb::admin_client::AdminClient;
use tonic::transport::Channel;

#[derive(Parser)]
#[command(name = "mailctl", about = "Administer Mailfleet: domains, accounts, aliases, quotas")]
struct Cli {
    /// Storage admin API (mutual TLS only).
    #[arg(long, env = "MAILCTL_ADMIN_URL", default_value = "https://127.0.0.1:50052")]
    admin_url: String,
    /// The fleet PKI directory (`mailctl pki init`): mailctl proves who it
    /// is to storage with DIR/mailctl.crt and DIR/mailctl.key and trusts
    /// DIR/ca.crt; only the `mailctl` identity may call the Admin API.
    #[arg(long, env = "MAILCTL_PKI", default_value = "var/pki")]
    pki: PathBuf,
    /// Bearer token, when storage is configured with `admin_token`.
    #[arg(long, env = "MAILCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mail domains served here.
    #[command(subcommand)]
    Domain(DomainCmd),
    /// Mail accounts (login = full address).
    #[command(subcommand)]
    Account(AccountCmd),
    /// Addresses that deliver to one or more accounts.
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Blob store maintenance.
    #[command(subcommand)]
    Blobs(BlobsCmd),
    /// DKIM signing keys for outgoing mail.
    #[command(subcommand)]
    Dkim(dkim::DkimCmd),
    /// The delivery queue (NATS JetStream): list, retry, delete.
    Queue(queue::QueueArgs),
    /// The fleet's private CA and service certificates (mutual TLS).
    #[command(subcommand)]
    Pki(pki::PkiCmd),
}

#[derive(Subcommand)]
enum DomainCmd {
    Add {
        name: String,
    },
    List,
    Delete {
        name: String,
    },
    /// Send mail for unknown users of DOMAIN to TARGET; no TARGET clears it.
    CatchAll {
        domain: String,
        target: Option<String>,
    },
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Add an account; the password is read from stdin unless --password is given.
    Add {
        address: String,
        #[arg(long)]
        password: Option<String>,
        /// Quota such as 500M or 2G; 0 = unlimited.
        #[arg(long, default_value = "0")]
        quota: String,
    },
    List {
        domain: Option<String>,
    },
    Delete {
        address: String,
    },
    /// Set a new password (read from stdin unless --password is given).
    Password {
        address: String,
        #[arg(long)]
        password: Option<String>,
    },
    /// Set the quota (500M, 2G, 0 = unlimited).
    Quota {
        address: String,
        quota: String,
    },
    Disable {
        address: String,
    },
    Enable {
        address: String,
    },
    /// Set the POP3 APOP shared secret (RFC 1939 §7); --clear removes it.
    Apop {
        address: String,
        secret: Option<String>,
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Subcommand)]
enum AliasCmd {
    Add {
        address: String,
        #[arg(required = true)]
        targets: Vec<String>,
    },
    List {
        domain: Option<String>,
    },
    Delete {
        address: String,
    },
}

#[derive(Subcommand)]
enum BlobsCmd {
    /// Remove blobs that no message and no queued job refers to and are older than
    /// --min-age-days (storage also sweeps by itself, see sweep.interval).
    Sweep {
        #[arg(long, default_value_t = 7)]
        min_age_days: u64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // `queue` talks to NATS, not to the storage admin API; `pki` only
    // writes files.
    let result = match cli.command {
        Command::Queue(args) => queue::run(args).await,
        Command::Pki(cmd) => pki::run(cmd),
        _ => run(cli).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// "500M", "2G", "1024", "0" → bytes.
fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim().to_ascii_uppercase();
    let t = t.strip_suffix('B').unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| anyhow::anyhow!("malformed size `{s}` (use e.g. 500M or 2G)"))?;
    n.checked_mul(mult).ok_or_else(|| anyhow::anyhow!("size `{s}` is too large"))
}

fn human(bytes: u64) -> String {
    match bytes {
        0 => "unlimited".into(),
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b => format!("{b}B"),
    }
}

fn password_or_stdin(given: Option<String>) -> anyhow::Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn print_account(a: &pb::Account) {
    out!(
        "{}\tquota={}\tused={}\tmessages={}\t{}{}",
        a.address,
        human(a.quota_bytes),
        a.used_bytes,
        a.message_count,
        if a.disabled { "disabled" } else { "enabled" },
        if a.has_apop_secret { "\tapop" } else { "" }
    );
}

/// Attaches the bearer token to every admin call.
#[derive(Clone)]
struct Token(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Admin = AdminClient<tonic::service::interceptor::InterceptedService<Channel, Token>>;

async fn connect(cli: &Cli) -> anyhow::Result<Admin> {
    let identity = mailfleet_runtime::grpc::FleetIdentity::in_dir(&cli.pki, "mailctl");
    let channel = mailfleet_runtime::grpc::storage_endpoint(&cli.admin_url, &identity, None)?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach storage admin API at {}: {e}", cli.admin_url))?;
    let token = match &cli.token {
        Some(t) => Some(format!("Bearer {t}").parse()?),
        None => None,
    };
    Ok(AdminClient::with_interceptor(channel, Token(token)))
}

/// Turn a gRPC status into the message the administrator should read.
fn explain(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut admin = connect(&cli).await?;
    match cli.command {
        Command::Domain(cmd) => match cmd {
            DomainCmd::Add { name } => {
                let d = admin.add_domain(pb::AddDomainRequest { name }).await.map_err(explain)?.into_inner();
                out!("added domain {}", d.name);
            }
            DomainCmd::List => {
                let list = admin.list_domains(pb::ListDomainsRequest {}).await.map_err(explain)?.into_inner();
                for d in list.domains {
                    let catch_all =
                        if d.catch_all.is_empty() { String::new() } else { format!("\tcatch-all={}", d.catch_all) };
                    out!("{}\taccounts={}{}", d.name, d.accounts, catch_all);
                }
            }
            DomainCmd::Delete { name } => {
                admin.delete_domain(pb::DeleteDomainRequest { name: name.clone() }).await.map_err(explain)?;
                out!("deleted domain {name}");
            }
            DomainCmd::CatchAll { domain, target } => {
                let d = admin
                    .set_catch_all(pb::SetCatchAllRequest { domain, target: target.unwrap_or_default() })
                    .await
                    .map_err(explain)?
                    .into_inner();
                if d.catch_all.is_empty() {
                    out!("{}: no catch-all", d.name);
                } else {
                    out!("{}: catch-all -> {}", d.name, d.catch_all);
                }
            }
        },
        Command::Account(cmd) => match cmd {
            AccountCmd::Add { address, password, quota } => {
                let quota_bytes = parse_size(&quota)?;
                let password = password_or_stdin(password)?;
                let a = admin
                    .add_account(pb::AddAccountRequest { address, password, quota_bytes })
                    .await
                    .map_err(explain)?
                    .into_inner();
                out!("added account {}", a.address);
            }
            AccountCmd::List { domain } => {
                let list = admin
                    .list_accounts(pb::ListAccountsRequest { domain: domain.unwrap_or_default() })
                    .await
                    .map_err(explain)?
                    .into_inner();
                for a in &list.accounts {
                    print_account(a);
                }
            }
            AccountCmd::Delete { address } => {
                admin.delete_account(pb::DeleteAccountRequest { address: address.clone() }).await.map_err(explain)?;
                out!("deleted account {address}");
            }
            AccountCmd::Password { address, password } => {
                let password = password_or_stdin(password)?;
                let a = admin
                    .set_password(pb::SetPasswordRequest { address, password })
                    .await
                    .map_err(explain)?
                    .into_inner();
                out!("password changed for {}", a.address);
            }
            AccountCmd::Quota { address, quota } => {
                let quota_bytes = parse_size(&quota)?;
                let a =
                    admin.set_quota(pb::SetQuotaRequest { address, quota_bytes }).await.map_err(explain)?.into_inner();
                print_account(&a);
            }
            AccountCmd::Disable { address } => {
                let a = admin
                    .set_disabled(pb::SetDisabledRequest { address, disabled: true })
                    .await
                    .map_err(explain)?
                    .into_inner();
                print_account(&a);
            }
            AccountCmd::Enable { address } => {
                let a = admin
                    .set_disabled(pb::SetDisabledRequest { address, disabled: false })
                    .await
                    .map_err(explain)?
                    .into_inner();
                print_account(&a);
            }
            AccountCmd::Apop { address, secret, clear } => {
                let secret = match (secret, clear) {
                    (_, true) => String::new(),
                    (Some(s), false) => s,
                    (None, false) => password_or_stdin(None)?,
                };
                let a = admin
                    .set_apop_secret(pb::SetApopSecretRequest { address, secret })
                    .await
                    .map_err(explain)?
                    .into_inner();
                print_account(&a);
            }
        },
        Command::Alias(cmd) => match cmd {
            AliasCmd::Add { address, targets } => {
                let a = admin.add_alias(pb::AddAliasRequest { address, targets }).await.map_err(explain)?.into_inner();
                out!("added alias {} -> {}", a.address, a.targets.join(", "));
            }
            AliasCmd::List { domain } => {
                let list = admin
                    .list_aliases(pb::ListAliasesRequest { domain: domain.unwrap_or_default() })
                    .await
                    .map_err(explain)?
                    .into_inner();
                for a in list.aliases {
                    out!("{}\t-> {}", a.address, a.targets.join(", "));
                }
            }
            AliasCmd::Delete { address } => {
                admin.delete_alias(pb::DeleteAliasRequest { address: address.clone() }).await.map_err(explain)?;
                out!("deleted alias {address}");
            }
        },
        Command::Blobs(BlobsCmd::Sweep { min_age_days }) => {
            let r = admin
                .sweep_blobs(pb::SweepBlobsRequest { min_age_seconds: min_age_days * 86_400 })
                .await
                .map_err(explain)?
                .into_inner();
            out!("removed {} blob(s), kept {} ({} for queued jobs)", r.removed, r.kept, r.queued);
        }
        Command::Dkim(cmd) => dkim::run(&mut admin, cmd).await?,
        Command::Queue(args) => queue::run(args).await?,
        Command::Pki(cmd) => pki::run(cmd)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("lots").is_err());
        assert_eq!(human(2 << 30), "2G");
        assert_eq!(human(0), "unlimited");
    }
}
