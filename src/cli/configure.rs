//! `cbdr configure backup`: every instance archives through cbdr.

use std::path::PathBuf;

use super::Scope;
use crate::cluster::configure::{
    archive_command, configure, distribute, failures, restart, InstanceReport, Target,
};
use crate::cluster::topology::{Segment, COORDINATOR};
use crate::config::{ClusterKind, Config};
use crate::error::{Error, Result};
use crate::pg::conn::ConnParams;

#[derive(Debug, clap::Subcommand)]
pub enum ConfigureCommand {
    /// Make every instance (a single server, or the coordinator and every
    /// segment) archive its WAL through cbdr: archive_mode, archive_command
    /// with its --content-id, wal_level, max_wal_senders, set with ALTER
    /// SYSTEM over each instance's connection and reloaded.
    Backup(ConfigureBackupArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConfigureBackupArgs {
    /// Show what would change on each instance; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The report as JSON.
    #[arg(long)]
    pub json: bool,
    /// One instance only.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub content_id: Option<i32>,
    /// The cbdr executable on the instances' hosts (default: this one's path).
    #[arg(long, value_name = "PATH")]
    pub cbdr_path: Option<PathBuf>,
    /// The config file on the instances' hosts (default: this config's path).
    #[arg(long, value_name = "PATH")]
    pub config_path: Option<PathBuf>,
    /// Cluster: restart, through their agents, the instances that need it
    /// (archive_mode, wal_level, max_wal_senders); not on Greenplum/Cloudberry
    /// (use `gpstop -ar`).
    #[arg(long)]
    pub restart: bool,
    /// Cluster: do not send the config (and the key and token files it
    /// names) to the agents.
    #[arg(long)]
    pub no_distribute: bool,
    /// Do not end with `cbdr check`.
    #[arg(long)]
    pub skip_check: bool,
}

pub async fn run(config: &Config, cmd: ConfigureCommand) -> Result<()> {
    match cmd {
        ConfigureCommand::Backup(args) => backup(config, args).await,
    }
}

async fn backup(config: &Config, args: ConfigureBackupArgs) -> Result<()> {
    let cbdr = match &args.cbdr_path {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|e| Error::io("finding the cbdr executable", e))?,
    };
    let config_path = match (&args.config_path, &config.source) {
        (Some(p), _) => p.clone(),
        (None, Some(src)) => std::fs::canonicalize(src).unwrap_or(src.clone()),
        (None, None) => {
            return Err(Error::Usage(
                "no config file was read: give --config PATH (or --config-path, the config's path on the instances' hosts), so archive_command can name it".into(),
            ))
        }
    };
    let (cbdr, config_path) = (
        cbdr.display().to_string(),
        config_path.display().to_string(),
    );
    let scope = Scope::of(config, args.content_id).await?;
    let cluster = match &scope {
        Scope::Cluster(topo) => Some(topo.clone()),
        Scope::One(_) => None,
    };
    if args.restart && cluster.is_none() {
        return Err(Error::Usage(
            "--restart restarts instances through their agents: it needs a [cluster] (restart a single server with pg_ctl restart)".into(),
        ));
    }
    if args.restart && config.cluster.kind == ClusterKind::Greenplum {
        return Err(Error::Usage(
            "--restart is for a generic cluster: restart Greenplum/Cloudberry as a whole with `gpstop -ar` on the coordinator".into(),
        ));
    }
    let mut distributed = Vec::new();
    if let (Some(topo), false) = (&cluster, args.no_distribute) {
        let files = files_to_distribute(config, &config_path)?;
        let mut agents: Vec<String> = topo.segments().iter().map(|s| s.agent.clone()).collect();
        agents.sort();
        agents.dedup();
        if args.dry_run {
            if !args.json {
                println!(
                    "would send to {} agents, sealed with each session's key (mode 0600): {}",
                    agents.len(),
                    files
                        .iter()
                        .map(|(p, _)| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        } else {
            distributed = distribute(
                &agents,
                &config.agent,
                &files,
                std::time::Duration::from_secs(config.cluster.agent_timeout.max(15)),
            )
            .await;
            if !args.json {
                for d in &distributed {
                    match &d.error {
                        Some(e) => println!("agent {}: FILES NOT SENT: {e}", d.agent),
                        None => println!(
                            "agent {}: {}",
                            d.agent,
                            d.written
                                .iter()
                                .map(|(p, changed)| format!(
                                    "{p} {}",
                                    if *changed {
                                        "written (0600)"
                                    } else {
                                        "unchanged"
                                    }
                                ))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    }
                }
            }
        }
    }
    let targets = match scope {
        Scope::Cluster(topo) => topo
            .segments()
            .iter()
            .map(|s| {
                Ok(Target {
                    segment: s.clone(),
                    params: topo.conn_params(s, &config.cluster)?,
                    archive_command: archive_command(&cbdr, &config_path, Some(s.content_id)),
                })
            })
            .collect::<Result<Vec<_>>>()?,
        Scope::One(id) => {
            let params = ConnParams::try_from_env().map_err(Error::Usage)?;
            let single = id == COORDINATOR && config.cluster.segments.is_empty();
            vec![Target {
                segment: Segment {
                    content_id: id,
                    host: params.host.clone(),
                    port: params.port,
                    data_dir: PathBuf::new(),
                    agent: String::new(),
                },
                archive_command: archive_command(&cbdr, &config_path, (!single).then_some(id)),
                params,
            }]
        }
    };
    let reports = configure(&targets, args.dry_run).await;
    let mut restarted = Vec::new();
    if args.restart && !args.dry_run {
        let segments: Vec<Segment> = targets.iter().map(|t| t.segment.clone()).collect();
        restarted = restart(
            &reports,
            &segments,
            &config.agent,
            std::time::Duration::from_secs(600),
        )
        .await;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "instances": reports,
                "files": distributed,
                "restarted": restarted
                    .iter()
                    .map(|(i, r)| serde_json::json!({
                        "instance": i,
                        "result": r.as_ref().map_err(|e| e.to_string()),
                    }))
                    .collect::<Vec<_>>(),
            }))
            .expect("reports serialize")
        );
    } else {
        print_reports(&reports, args.dry_run, config.cluster.kind, args.restart);
        for (i, r) in &restarted {
            match r {
                Ok(report) => println!("{i}: {report}"),
                Err(e) => println!("{i}: RESTART FAILED: {e}"),
            }
        }
    }
    if let Some(e) = failures(&reports) {
        return Err(e);
    }
    let unsent: Vec<String> = distributed
        .iter()
        .filter_map(|d| d.error.as_ref().map(|e| format!("{}: {e}", d.agent)))
        .collect();
    if !unsent.is_empty() {
        return Err(Error::Summary {
            message: format!(
                "the config did not reach {} agents (every instance was configured): {}; fix them and run `cbdr configure backup` again",
                unsent.len(),
                unsent.join("; ")
            ),
            exit_code: crate::error::ExitCode::Agent,
        });
    }
    let failed_restarts: Vec<String> = restarted
        .iter()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("{i}: {e}")))
        .collect();
    if !failed_restarts.is_empty() {
        return Err(Error::Summary {
            message: format!(
                "{} instances were not restarted: {}",
                failed_restarts.len(),
                failed_restarts.join("; ")
            ),
            exit_code: crate::error::ExitCode::Agent,
        });
    }
    let pending = reports.iter().any(|r| r.needs_restart()) && !args.restart;
    if args.dry_run || args.skip_check || pending {
        return Ok(());
    }
    // Prove it: every instance archives (a WAL switch that reaches the
    // repository), as `cbdr check` does.
    if !args.json {
        println!("checking every instance (cbdr check):");
    }
    super::check::check(
        config,
        super::check::CheckArgs {
            content_id: args.content_id,
            conn: super::args::ConnArgs {
                host: None,
                port: None,
                user: None,
            },
            wal_timeout: 60,
            json: args.json,
        },
    )
    .await
}

/// The files `configure backup` sends to every agent: the config (at its
/// path on the hosts) and the key and token files it names (at their
/// paths), each read here.
fn files_to_distribute(config: &Config, config_path: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let source = config.source.as_ref().ok_or_else(|| {
        Error::Usage("no config file was read here: give --config PATH (or --no-distribute)".into())
    })?;
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| {
            Error::io(
                format!("reading {} to send it to the agents", p.display()),
                e,
            )
        })
    };
    let mut files = vec![(config_path.to_string(), read(source)?)];
    for p in [&config.encryption.key_file, &config.agent.token_file]
        .into_iter()
        .flatten()
    {
        let abs = std::fs::canonicalize(p).unwrap_or(p.clone());
        if !abs.is_absolute() {
            return Err(Error::Usage(format!(
                "{} is a relative path: the agents' hosts need an absolute one in the config to receive it",
                p.display()
            )));
        }
        files.push((abs.display().to_string(), read(p)?));
    }
    Ok(files)
}

fn print_reports(reports: &[InstanceReport], dry_run: bool, kind: ClusterKind, restarting: bool) {
    let verb = if dry_run { "would set" } else { "set" };
    for r in reports {
        println!("{}:", r.instance);
        if let Some(e) = &r.error {
            println!("  NOT CONFIGURED: {e}");
            continue;
        }
        for c in r.changes.iter().filter(|c| c.set_to.is_some()) {
            println!(
                "  {verb} {} = {:?} (was {:?}){}",
                c.name,
                c.set_to.as_deref().unwrap_or_default(),
                c.configured,
                if c.restart { ", takes a restart" } else { "" }
            );
        }
        if !r.changed() {
            println!("  nothing to change");
        }
        for c in r.changes.iter().filter(|c| c.set_to.is_none() && c.restart) {
            println!(
                "  {} = {:?} is waiting for a restart (running: {:?})",
                c.name, c.configured, c.running
            );
        }
    }
    let restart: Vec<&InstanceReport> = reports.iter().filter(|r| r.needs_restart()).collect();
    if restart.is_empty() {
        if !dry_run && reports.iter().all(|r| r.error.is_none()) {
            println!("every instance runs with what cbdr needs");
        }
        return;
    }
    let when = if dry_run { "would then need" } else { "need" };
    if restarting && !dry_run {
        println!(
            "{} of {} instances need a restart: restarting them through their agents",
            restart_count(reports),
            reports.len()
        );
        return;
    }
    println!(
        "{} of {} instances {when} a restart to apply archive_mode/wal_level/max_wal_senders:",
        restart.len(),
        reports.len()
    );
    if kind == ClusterKind::Greenplum {
        println!("  on the coordinator: gpstop -ar");
    } else {
        for r in restart {
            println!(
                "  {}: pg_ctl restart -D {} -m fast",
                r.instance,
                if r.data_dir.is_empty() {
                    "DATA_DIR"
                } else {
                    &r.data_dir
                }
            );
        }
    }
}

fn restart_count(reports: &[InstanceReport]) -> usize {
    reports.iter().filter(|r| r.needs_restart()).count()
}
