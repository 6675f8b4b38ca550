//! Command line (clap derive). Common options are global: they may come
//! before or after the subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Measures a mail system on loopback over SMTP, IMAP and POP3",
    long_about = "Measures a mail system on loopback over SMTP, IMAP and POP3.\n\n\
                  Human-readable progress and a summary go to stderr; one JSON document \
                  (schema mailfleet-loadgen/1) always goes to stdout."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Common options (any subcommand)")]
pub struct Common {
    /// Target address: an IP literal on loopback (127.0.0.0/8, ::1) or `localhost`.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    pub host: String,
    /// SMTP port (Mailfleet's dev port by default).
    #[arg(long, global = true, default_value_t = 2525)]
    pub smtp_port: u16,
    /// IMAP port.
    #[arg(long, global = true, default_value_t = 1143)]
    pub imap_port: u16,
    /// POP3 port.
    #[arg(long, global = true, default_value_t = 1110)]
    pub pop3_port: u16,
    /// User names (and addresses); `{}` becomes 1..=N.
    #[arg(long, global = true, default_value = "load{}@bench.test")]
    pub user_format: String,
    /// Number of users N.
    #[arg(long, global = true, default_value_t = 5)]
    pub users: u32,
    /// Password of every user.
    #[arg(long, global = true, env = "LOADGEN_PASSWORD", default_value = "bench-password", hide_env_values = true)]
    pub password: String,
    /// Deadline of the scenario: after this it stops and reports what it has
    /// (with "complete": false).
    #[arg(long, global = true, default_value_t = 120)]
    pub max_seconds: u64,
    /// Seed for the random choices (message shapes and sizes, which
    /// messages to fetch, …); random if not given, and reported either way.
    #[arg(long, global = true)]
    pub seed: Option<u64>,
    /// Name of the result in the JSON (what `report` matches on); defaults
    /// to the scenario.
    #[arg(long, global = true)]
    pub label: Option<String>,
    /// Root PIDs of the measured system: the CPU time of each one's whole
    /// process tree is read before and after the measured phase.
    #[arg(long, global = true, value_delimiter = ',')]
    pub cpu_pids: Vec<u32>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// IMAP APPEND M messages to each user's INBOX.
    Populate(PopulateArgs),
    /// SMTP ingest, and (by default) time until each message is visible over IMAP.
    Smtp(SmtpArgs),
    /// Concurrent IMAP clients doing rounds of typical commands.
    Imap(ImapArgs),
    /// Concurrent POP3 clients retrieving every message.
    Pop3(Pop3Args),
    /// Many idle IMAP connections: memory per connection on the server.
    Idle(IdleArgs),
    /// Compares the JSON of two systems.
    Report(ReportArgs),
}

#[derive(Debug, Clone, Copy, Args)]
pub struct SizeArgs {
    /// Smallest message in octets.
    #[arg(long, default_value_t = 2048)]
    pub size_min: usize,
    /// Largest message in octets (sizes are log-uniform in between).
    #[arg(long, default_value_t = 204_800)]
    pub size_max: usize,
}

#[derive(Debug, Clone, Args)]
pub struct PopulateArgs {
    /// Messages per user.
    #[arg(long)]
    pub messages: u32,
    /// IMAP connections at once (each works on one user at a time).
    #[arg(long, default_value_t = 4)]
    pub concurrency: u32,
    #[command(flatten)]
    pub sizes: SizeArgs,
}

#[derive(Debug, Clone, Args)]
pub struct SmtpArgs {
    /// Messages in all, round-robin over the users.
    #[arg(long)]
    pub messages: u64,
    /// SMTP connections at once.
    #[arg(long, default_value_t = 10)]
    pub concurrency: u32,
    #[command(flatten)]
    pub sizes: SizeArgs,
    /// Watch each recipient's INBOX over IMAP (IDLE) and time delivery (the default).
    #[arg(long, overrides_with = "no_watch")]
    pub watch: bool,
    /// Watch by NOOP every 20 ms instead of IDLE, even if the server has
    /// IDLE: visibility without the server's notification policy (Dovecot
    /// holds IDLE notifications back about half a second).
    #[arg(long)]
    pub watch_poll: bool,
    /// Only measure SMTP acceptance.
    #[arg(long, overrides_with = "watch")]
    pub no_watch: bool,
    /// Send MAIL, RCPT and DATA in one write if the server advertises
    /// PIPELINING (RFC 2920). Off by default: one command per round trip.
    #[arg(long)]
    pub pipelining: bool,
    /// Envelope sender (MAIL FROM).
    #[arg(long, default_value = "loadgen@bench.test")]
    pub mail_from: String,
    /// EHLO domain.
    #[arg(long, default_value = "loadgen.bench.test")]
    pub ehlo: String,
    /// Times the whole scenario runs (watchers set up anew each time): its
    /// rates and latencies are the median pass's, its counts the sums.
    #[arg(long, default_value_t = 1)]
    pub passes: u32,
}

impl SmtpArgs {
    pub fn watching(&self) -> bool {
        !self.no_watch
    }
}

#[derive(Debug, Clone, Args)]
pub struct ImapArgs {
    /// Clients at once; client i logs in as user (i mod users) + 1.
    #[arg(long, default_value_t = 5)]
    pub concurrency: u32,
    /// Rounds per client (0: only --full-fetch).
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Random `UID FETCH uid BODY.PEEK[]` per round.
    #[arg(long, default_value_t = 10)]
    pub body_fetches: u32,
    /// Afterwards, one client fetches user 1's whole INBOX with
    /// `UID FETCH 1:* BODY.PEEK[]`.
    #[arg(long)]
    pub full_fetch: bool,
    /// Times the full fetch is repeated in the one session: its figures are
    /// the median pass (and the first pass, cold, reported apart).
    #[arg(long, default_value_t = 1)]
    pub passes: u32,
}

#[derive(Debug, Clone, Args)]
pub struct Pop3Args {
    /// Clients at once, each a different user (POP3 locks the maildrop).
    #[arg(long, default_value_t = 5)]
    pub concurrency: u32,
    /// Times the whole scenario is repeated (new sessions each time): its
    /// rates are the median pass (and the first pass reported apart).
    #[arg(long, default_value_t = 1)]
    pub passes: u32,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// IMAP connections to hold open in IDLE, logins round-robin over the users.
    #[arg(long)]
    pub connections: u32,
    /// Server processes to measure, by /proc/<pid>/comm (e.g. imap-gateway,
    /// or imap,imap-login for Dovecot).
    #[arg(long, value_delimiter = ',', required = true)]
    pub process_name: Vec<String>,
    /// Only count processes that are these PIDs or descend from them (e.g.
    /// the Dovecot master), when another instance runs under the same names.
    #[arg(long, value_delimiter = ',')]
    pub process_root: Vec<u32>,
    /// Connections being opened at once during the ramp-up.
    #[arg(long, default_value_t = 200)]
    pub ramp: u32,
    /// Seconds between the last connection idling and the memory reading,
    /// for the server to settle (there is no protocol signal for that).
    #[arg(long, default_value_t = 2.0)]
    pub settle_seconds: f64,
}

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Run files of Mailfleet (each: a run document, an array of them, or
    /// several concatenated).
    #[arg(long, num_args = 1.., required = true)]
    pub mailfleet: Vec<PathBuf>,
    /// Run files of the reference system.
    #[arg(long, num_args = 1.., required = true)]
    pub reference: Vec<PathBuf>,
    /// Write the combined JSON here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_after_subcommand() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "smtp",
            "--messages",
            "10",
            "--no-watch",
            "--users",
            "7",
            "--cpu-pids",
            "1,2",
        ])
        .expect("parse");
        assert_eq!(cli.common.users, 7);
        assert_eq!(cli.common.cpu_pids, [1, 2]);
        let Command::Smtp(s) = cli.command else { panic!("not smtp") };
        assert!(!s.watching());
        let cli = Cli::try_parse_from(["loadgen", "smtp", "--messages", "1"]).expect("parse");
        let Command::Smtp(s) = cli.command else { panic!("not smtp") };
        assert!(s.watching());
        let cli = Cli::try_parse_from(["loadgen", "idle", "--connections", "3", "--process-name", "imap,imap-login"])
            .expect("parse");
        let Command::Idle(i) = cli.command else { panic!("not idle") };
        assert_eq!(i.process_name, ["imap", "imap-login"]);
    }
}
