//! The command line: parses arguments, runs a command, prints errors well
//! and maps them to documented exit codes.

mod agent;
mod cluster;
mod list;
mod logical;
mod physical;
mod wal;
mod wal_receive;

use std::path::PathBuf;
use std::process::ExitCode as ProcessExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::error::{Error, ExitCode};

#[derive(Debug, Parser)]
#[command(
    name = "cbdr",
    version,
    about = "WAL-level backup and point-in-time recovery for PostgreSQL and MPP clusters",
    long_about = None
)]
pub struct Cli {
    /// Config file (else $CBDR_CONFIG, ./cbdr.toml, /etc/cbdr/cbdr.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// More log output (-v: debug, -vv: trace). $CBDR_LOG takes a filter too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors in the log.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Archive a WAL file: use as archive_command = 'cbdr wal-push %p'.
    WalPush(wal::WalPushArgs),
    /// Restore a WAL file: use as restore_command = 'cbdr wal-fetch %f %p'.
    WalFetch(wal::WalFetchArgs),
    /// Stream WAL into the repository through a replication slot (instead
    /// of, or alongside, archive_command); runs until SIGINT/SIGTERM.
    WalReceive(wal_receive::WalReceiveArgs),
    /// Take a base backup over the replication protocol.
    BackupPush(physical::BackupPushArgs),
    /// Create a named restore point (and record it in the repository).
    CreateRestorePoint(physical::RestorePointArgs),
    /// Restore a base backup and set up recovery to a target.
    Restore(physical::RestoreArgs),
    /// Show backups, restore points and WAL coverage.
    List(list::ListArgs),
    /// Print a restore config for the configured cluster, to edit for
    /// `restore --restore-config`.
    RestoreConfig(cluster::RestoreConfigArgs),
    /// Run the cluster agent of this host (backs up and restores its
    /// instances on the coordinator's authenticated requests).
    Agent(agent::AgentArgs),
    /// Logical backup of one database, with gpbackup's flags.
    Gpbackup(logical::GpbackupArgs),
    /// Restore a logical backup, with gprestore's flags.
    Gprestore(logical::GprestoreArgs),
}

/// Runs the command line; returns the process exit code.
pub fn run() -> ProcessExitCode {
    let cli = Cli::parse();
    // The agent is a daemon: its INFO lines (jobs, refusals) are its log.
    let daemon = matches!(cli.command, Command::Agent(_) | Command::WalReceive(_));
    // gpbackup's and gprestore's --debug.
    let debug = match &cli.command {
        Command::Gpbackup(a) => a.debug(),
        Command::Gprestore(a) => a.debug(),
        _ => false,
    };
    init_logging(if debug { 2 } else { cli.verbose }, cli.quiet, daemon);
    let quiet_not_found = matches!(cli.command, Command::WalFetch(_));
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e))
        .and_then(|rt| rt.block_on(dispatch(cli)));
    match result {
        Ok(()) => ProcessExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            if code == ExitCode::NotFound && quiet_not_found {
                // The normal end of recovery: PostgreSQL asks for the next
                // file until one is missing.
                tracing::debug!("{e}");
            } else {
                eprintln!("cbdr: error: {}", render(&e));
            }
            ProcessExitCode::from(code as u8)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), Error> {
    let config = Config::discover(cli.config.as_deref())?;
    match cli.command {
        Command::WalPush(args) => wal::push(&config, args).await,
        Command::WalFetch(args) => wal::fetch(&config, args).await,
        Command::WalReceive(args) => wal_receive::receive(&config, args).await,
        Command::BackupPush(args) => physical::backup(&config, args).await,
        Command::CreateRestorePoint(args) => physical::restore_point(&config, args).await,
        Command::Restore(args) => physical::restore_cmd(&config, args).await,
        Command::List(args) => list::list(&config, args).await,
        Command::RestoreConfig(args) => cluster::restore_config(&config, args).await,
        Command::Agent(args) => agent::run(&config, args).await,
        Command::Gpbackup(args) => logical::backup(&config, args, cli.verbose, cli.quiet).await,
        Command::Gprestore(args) => logical::restore(&config, args, cli.verbose, cli.quiet).await,
    }
}

/// The error and its causes, each once.
fn render(e: &Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn init_logging(verbose: u8, quiet: bool, daemon: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) if daemon => "info",
        (false, 0) => "warn",
        (false, 1) => "info,cbdr=debug",
        (false, _) => "debug,cbdr=trace",
    };
    let filter = std::env::var("CBDR_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
