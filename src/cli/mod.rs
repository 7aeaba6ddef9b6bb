//! The command line: parses arguments, runs a command, prints errors well
//! and maps them to documented exit codes.

mod agent;
mod args;
mod check;
mod cluster;
mod configure;
mod delete;
mod list;
mod logical;
mod physical;
mod repo;
mod standby;
mod verify;
mod wal;
mod wal_receive;

use std::path::PathBuf;
use std::process::ExitCode as ProcessExitCode;

use clap::{Parser, Subcommand};

use crate::cluster::topology::{Topology, COORDINATOR};
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
    /// Create the repository the config names, once, with its key (every
    /// other command refuses a missing repository).
    RepoInit(repo::RepoInitArgs),
    /// Archive a WAL file: use as archive_command = 'cbdr wal-push %p'.
    WalPush(wal::WalPushArgs),
    /// Restore a WAL file: use as restore_command = 'cbdr wal-fetch %f %p'.
    WalFetch(wal::WalFetchArgs),
    /// Stream WAL into the repository through a replication slot (instead
    /// of, or alongside, archive_command); runs until SIGINT/SIGTERM.
    WalReceive(wal_receive::WalReceiveArgs),
    /// Take a base backup over the replication protocol.
    BackupPush(args::BackupPushArgs),
    /// Create a named restore point (and record it in the repository).
    CreateRestorePoint(args::RestorePointArgs),
    /// Restore a base backup and set up recovery to a target.
    Restore(args::RestoreArgs),
    /// Show backups, restore points and WAL coverage.
    List(list::ListArgs),
    /// Re-read backups and the WAL archive: authentication, checksums,
    /// each file against the backup manifest, WAL continuity; exits
    /// non-zero naming every fault.
    Verify(verify::VerifyArgs),
    /// Check on every instance that archiving and backups work: settings,
    /// a replication connection, the storage, the key, and a WAL switch
    /// that reaches the archive; exits non-zero naming each problem.
    Check(check::CheckArgs),
    /// Delete backups, restore points and WAL (dry run unless --confirm):
    /// retain N, before TIME|NAME, target NAME, restore-point NAME,
    /// everything, garbage.
    Delete(delete::DeleteArgs),
    /// Mark a backup permanent (retention never deletes it), or not.
    BackupMark(delete::BackupMarkArgs),
    /// Set up every instance for cbdr (`configure backup`: archiving).
    #[command(subcommand)]
    Configure(configure::ConfigureCommand),
    /// A disaster-recovery standby cluster (`restore --standby`): status,
    /// advance, follow, promote.
    #[command(subcommand)]
    Standby(standby::StandbyCommand),
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // A bad restore_command line must stop recovery too, not read
            // as "not in the archive" (clap's usual exit status is 2).
            let wal_fetch = std::env::args_os().any(|a| a == "wal-fetch");
            return ProcessExitCode::from(if wal_fetch && e.use_stderr() {
                wal_fetch_status(Err(ExitCode::Usage))
            } else {
                e.exit_code() as u8
            });
        }
    };
    // The agent is a daemon: its INFO lines (jobs, refusals) are its log.
    let daemon = matches!(
        cli.command,
        Command::Agent(_)
            | Command::WalReceive(_)
            | Command::Standby(standby::StandbyCommand::Follow(_))
    );
    // gpbackup's and gprestore's --debug.
    let debug = match &cli.command {
        Command::Gpbackup(a) => a.debug(),
        Command::Gprestore(a) => a.debug(),
        _ => false,
    };
    init_logging(if debug { 2 } else { cli.verbose }, cli.quiet, daemon);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the async runtime", e));
    if let Command::WalFetch(args) = &cli.command {
        return ProcessExitCode::from(run_wal_fetch(cli.config.as_deref(), args, runtime));
    }
    match runtime.and_then(|rt| rt.block_on(dispatch(cli))) {
        Ok(()) => ProcessExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cbdr: error: {}", e.render());
            ProcessExitCode::from(e.exit_code() as u8)
        }
    }
}

/// `wal-fetch` as restore_command: exit 0 restored, 1 the end of the
/// archive, above 125 for everything else (see [`wal_fetch_status`]).
fn run_wal_fetch(
    config: Option<&std::path::Path>,
    args: &wal::WalFetchArgs,
    runtime: Result<tokio::runtime::Runtime, Error>,
) -> u8 {
    let mut budget = None;
    let result = runtime.and_then(|rt| {
        rt.block_on(async {
            let config = Config::discover(config)?;
            budget = Some(config.archive.fetch_retry_budget);
            wal::fetch(&config, args).await
        })
    });
    match &result {
        Ok(crate::wal::FetchOutcome::NotInArchive) => {
            // The normal end of recovery: PostgreSQL asks for the next file
            // until one is missing.
            tracing::debug!("{}: not in the archive", args.name);
        }
        Ok(_) => {}
        Err(e) => {
            let status = wal_fetch_status(Err(e.exit_code()));
            eprintln!("cbdr: error: {}", e.render());
            eprintln!(
                "cbdr: wal-fetch {}: exit status {status} stops recovery (PostgreSQL: FATAL) rather than \
                 ending it here and promoting on a partial archive. {}",
                args.name,
                wal_fetch_fix(e.exit_code(), budget)
            );
        }
    }
    wal_fetch_status(result.map_err(|e| e.exit_code()))
}

/// restore_command's exit status for what `wal-fetch` did. PostgreSQL reads
/// 0 as restored, 1 to 125 as "not in the archive" (recovery may end there
/// and the server promote) and above 125 as fatal (recovery stops with
/// FATAL). So only the end of the archive exits 1; every error exits 128 +
/// its ordinary exit code (130 usage or config, 131 storage, 132 integrity,
/// 129 a hole in the archive, 198 internal...).
fn wal_fetch_status(result: Result<crate::wal::FetchOutcome, ExitCode>) -> u8 {
    match result {
        Ok(crate::wal::FetchOutcome::NotInArchive) => 1,
        Ok(crate::wal::FetchOutcome::Downloaded | crate::wal::FetchOutcome::Prefetched) => 0,
        Err(code) => 128u8.saturating_add(code as u8),
    }
}

/// What to do after a fatal `wal-fetch`, by the kind of failure.
fn wal_fetch_fix(code: ExitCode, budget: Option<u64>) -> String {
    let resume = "start the server again: recovery resumes where it stopped";
    match code {
        ExitCode::Storage => format!(
            "The storage was retried for {} (archive.fetch_retry_budget). Fix the storage (or the local disk), then {resume}.",
            budget.map_or("the retry budget".to_string(), |b| format!("{b} s"))
        ),
        ExitCode::Integrity => format!(
            "Put a good copy of the object back (another copy of the repository, or the file from the old server's pg_wal: remove the damaged object, then cbdr wal-push the file), then {resume}; or restore to a target before this file."
        ),
        ExitCode::Usage => format!("Fix the configuration or the restore_command line, then {resume}."),
        ExitCode::NotFound => format!("See above; then {resume}."),
        _ => format!("Fix the cause above, then {resume}."),
    }
}

async fn dispatch(cli: Cli) -> Result<(), Error> {
    let config = Config::discover(cli.config.as_deref())?;
    match cli.command {
        Command::RepoInit(args) => repo::init(&config, args).await,
        Command::WalPush(args) => wal::push(&config, args).await,
        Command::WalFetch(_) => Err(Error::Internal(
            "wal-fetch runs through run_wal_fetch, for its exit statuses".into(),
        )),
        Command::WalReceive(args) => wal_receive::receive(&config, args).await,
        Command::BackupPush(args) => match Scope::of(&config, args.content_id).await? {
            Scope::Cluster(topo) => cluster::backup(&config, &topo, &args).await,
            Scope::One(id) => physical::backup(&config, id, args).await,
        },
        Command::CreateRestorePoint(args) => match Scope::of(&config, args.content_id).await? {
            Scope::Cluster(topo) => cluster::restore_point(&config, &topo, &args).await,
            Scope::One(id) => physical::restore_point(&config, id, args).await,
        },
        Command::Restore(args) => match Scope::of(&config, args.content_id).await? {
            Scope::Cluster(topo) => cluster::restore(&config, &topo, args).await,
            Scope::One(id) => physical::restore_cmd(&config, id, args).await,
        },
        Command::List(args) => list::list(&config, args).await,
        Command::Verify(args) => verify::verify(&config, args).await,
        Command::Check(args) => check::check(&config, args).await,
        Command::Delete(args) => delete::delete(&config, args).await,
        Command::BackupMark(args) => delete::backup_mark(&config, args).await,
        Command::RestoreConfig(args) => cluster::restore_config(&config, args).await,
        Command::Standby(cmd) => standby::run(&config, cmd).await,
        Command::Configure(cmd) => configure::run(&config, cmd).await,
        Command::Agent(args) => agent::run(&config, args).await,
        Command::Gpbackup(args) => logical::backup(&config, args, cli.verbose, cli.quiet).await,
        Command::Gprestore(args) => logical::restore(&config, args, cli.verbose, cli.quiet).await,
    }
}

/// What a physical command acts on, decided once for both cli modules:
/// without --content-id and with a [cluster] configured, every instance
/// through the agents; else the one instance (-1: a single server).
enum Scope {
    Cluster(Topology),
    One(i32),
}

impl Scope {
    async fn of(config: &Config, content_id: Option<i32>) -> Result<Scope, Error> {
        if let Some(id) = content_id {
            return Ok(Scope::One(id));
        }
        Ok(match Topology::resolve(&config.cluster).await? {
            Some(topo) => Scope::Cluster(topo),
            None => Scope::One(COORDINATOR),
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::FetchOutcome;

    #[test]
    fn wal_fetch_exits_1_only_at_the_end_of_the_archive_and_fatally_otherwise() {
        assert_eq!(wal_fetch_status(Ok(FetchOutcome::Downloaded)), 0);
        assert_eq!(wal_fetch_status(Ok(FetchOutcome::Prefetched)), 0);
        assert_eq!(wal_fetch_status(Ok(FetchOutcome::NotInArchive)), 1);
        let expected = [
            (ExitCode::NotFound, 129),
            (ExitCode::Usage, 130),
            (ExitCode::Storage, 131),
            (ExitCode::Integrity, 132),
            (ExitCode::Conflict, 133),
            (ExitCode::Postgres, 134),
            (ExitCode::Agent, 135),
            (ExitCode::Internal, 198),
        ];
        for (code, status) in expected {
            let got = wal_fetch_status(Err(code));
            assert_eq!(got, status, "{code:?}");
            // PostgreSQL: above 125 is fatal (and not a signal number
            // confusion: 128 + N < 256).
            assert!(got > 125, "{code:?}");
        }
    }

    #[test]
    fn the_fatal_hint_says_how_recovery_resumes() {
        let storage = wal_fetch_fix(ExitCode::Storage, Some(300));
        assert!(
            storage.contains("300 s") && storage.contains("recovery resumes"),
            "{storage}"
        );
        for code in [
            ExitCode::Integrity,
            ExitCode::Usage,
            ExitCode::NotFound,
            ExitCode::Internal,
        ] {
            assert!(
                wal_fetch_fix(code, None).contains("recovery resumes"),
                "{code:?}"
            );
        }
    }
}
