//! `cbdr configure backup`: every instance archives through cbdr.

use std::path::PathBuf;

use super::Scope;
use crate::cluster::configure::{archive_command, configure, failures, InstanceReport, Target};
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
    let targets = match Scope::of(config, args.content_id).await? {
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
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).expect("reports serialize")
        );
    } else {
        print_reports(&reports, args.dry_run, config.cluster.kind);
    }
    match failures(&reports) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn print_reports(reports: &[InstanceReport], dry_run: bool, kind: ClusterKind) {
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
