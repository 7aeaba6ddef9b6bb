//! `backup-push`, `create-restore-point`, `restore`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::cluster::topology::{Topology, COORDINATOR};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pg::conn::ConnParams;
use crate::pg::Lsn;
use crate::physical::backup::{backup_push, BackupOptions, PART_TARGET};
use crate::physical::restore::{restore, RecoveryTarget, RestoreOptions, TargetAction};
use crate::physical::restore_point::create_restore_point;
use crate::repo::Repo;

/// Connection settings; libpq's environment variables (PGHOST, PGPORT,
/// PGUSER, PGPASSWORD, ~/.pgpass, PGSSLMODE) apply too.
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// Host name, IP address or unix-socket directory of the server.
    #[arg(long, short = 'H')]
    pub host: Option<String>,
    #[arg(long, short = 'p')]
    pub port: Option<u16>,
    #[arg(long, short = 'U')]
    pub user: Option<String>,
}

impl ConnArgs {
    pub(super) fn params(&self) -> Result<ConnParams> {
        let mut p = ConnParams::try_from_env().map_err(Error::Usage)?;
        if let Some(h) = &self.host {
            p.host = h.clone();
        }
        if let Some(port) = self.port {
            p.port = port;
        }
        if let Some(u) = &self.user {
            p.user = u.clone();
        }
        Ok(p)
    }
}

#[derive(Debug, Args)]
pub struct BackupPushArgs {
    /// Back up this one instance (-1: the coordinator or a single server).
    /// Left out with a [cluster] configured: every instance, through the agents.
    #[arg(long, allow_negative_numbers = true)]
    pub content_id: Option<i32>,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Seconds to wait for the backup's WAL to reach the archive.
    #[arg(long, default_value_t = 300)]
    pub wal_wait: u64,
}

pub async fn backup(config: &Config, args: BackupPushArgs) -> Result<()> {
    if args.content_id.is_none() {
        if let Some(topo) = Topology::resolve(&config.cluster).await? {
            return super::cluster::backup(config, &topo, &args).await;
        }
    }
    let repo = Repo::open(config).await?;
    let opts = BackupOptions {
        content_id: args.content_id.unwrap_or(COORDINATOR),
        conn: args.conn.params()?,
        wal_wait: Duration::from_secs(args.wal_wait),
        part_target: PART_TARGET,
        compress_on: config.compression.compress_on,
        progress: None,
    };
    let b = backup_push(&repo, &opts).await?;
    println!(
        "backup {} complete: {} to {}, {} MB, stored {} MB",
        b.name,
        b.start_lsn,
        b.stop_lsn,
        b.plain_bytes() / 1_000_000,
        b.stored_bytes() / 1_000_000
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct RestorePointArgs {
    /// The restore point's name (letters, digits, '_', '-', '.').
    pub name: String,
    /// One server's content id. Left out with a [cluster] configured: a
    /// cluster-wide consistent point on every instance; else -1.
    #[arg(long, allow_negative_numbers = true)]
    pub content_id: Option<i32>,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Seconds to wait for the point's WAL to reach the archive.
    #[arg(long, default_value_t = 300)]
    pub wal_wait: u64,
}

pub async fn restore_point(config: &Config, args: RestorePointArgs) -> Result<()> {
    if args.content_id.is_none() {
        if let Some(topo) = Topology::resolve(&config.cluster).await? {
            return super::cluster::restore_point(config, &topo, &args).await;
        }
    }
    let repo = Repo::open(config).await?;
    let rp = create_restore_point(
        &repo,
        args.content_id.unwrap_or(COORDINATOR),
        &args.name,
        &args.conn.params()?,
        Duration::from_secs(args.wal_wait),
    )
    .await?;
    println!(
        "restore point {} at {} (timeline {})",
        rp.name, rp.lsn, rp.timeline
    );
    Ok(())
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").args(["restore_point", "target_time", "target_lsn", "target_xid", "immediate"])))]
pub struct RestoreArgs {
    /// The new data directory (must be empty or absent, unless --force).
    /// Required for one server; a cluster takes its directories from
    /// --restore-config.
    #[arg(long)]
    pub target_dir: Option<PathBuf>,
    /// The backup to restore: a name from `cbdr list`, or LATEST (the
    /// newest that ends before the target; the default). For a cluster: a
    /// cluster backup, restored to its own restore point.
    #[arg(long)]
    pub backup: Option<String>,
    /// Cluster: where each instance goes (`cbdr restore-config` prints one
    /// to edit). Default: the configured instances' own directories.
    #[arg(long, value_name = "FILE")]
    pub restore_config: Option<PathBuf>,
    /// Cluster, with --start: roll back the prepared transactions left in
    /// doubt at the point (by the commit barrier they were committed
    /// nowhere). Without it they are listed, with the SQL to roll them back.
    #[arg(long, requires = "start")]
    pub rollback_prepared: bool,
    /// Recover to this restore point.
    #[arg(long)]
    pub restore_point: Option<String>,
    /// Recover to this time, e.g. '2026-11-25 10:00:00+00'.
    #[arg(long)]
    pub target_time: Option<String>,
    /// Recover to this LSN, e.g. 0/5000028.
    #[arg(long)]
    pub target_lsn: Option<String>,
    /// Recover to the end of this transaction.
    #[arg(long)]
    pub target_xid: Option<String>,
    /// Stop as soon as the backup is consistent.
    #[arg(long)]
    pub immediate: bool,
    /// What the server does at the target.
    #[arg(long, value_enum, default_value = "promote")]
    pub target_action: TargetAction,
    /// Move a tablespace: OLD=NEW (repeatable).
    #[arg(long, value_name = "OLD=NEW")]
    pub tablespace_map: Vec<String>,
    /// Replace the contents of a non-empty target directory.
    #[arg(long)]
    pub force: bool,
    /// Restore this one instance (-1: the coordinator or a single server).
    /// Left out with a [cluster] configured: every instance, through the agents.
    #[arg(long, allow_negative_numbers = true)]
    pub content_id: Option<i32>,
    /// Parts downloaded at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Archiving in the restored server: "preserve" its setting (a promoted
    /// copy then archives a new timeline into the repository, as pgBackRest
    /// does by default) or "off" (for a copy that must not archive).
    #[arg(long, value_parser = ["preserve", "off"], default_value = "preserve")]
    pub archive_mode: String,
    /// Start the restored server and wait until recovery reaches the target.
    #[arg(long)]
    pub start: bool,
    /// With --start: the port to start the server on (else its config's).
    #[arg(long, requires = "start")]
    pub port: Option<u16>,
    /// With --start: the directory of pg_ctl (else /usr/lib/postgresql/VERSION/bin, else PATH).
    #[arg(long, requires = "start")]
    pub pg_bin: Option<PathBuf>,
    /// With --start: seconds to wait for recovery.
    #[arg(long, default_value_t = 3600, requires = "start")]
    pub start_timeout: u64,
}

pub fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::FixedOffset>> {
    let t = text.trim();
    chrono::DateTime::parse_from_rfc3339(t)
        .or_else(|_| chrono::DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .or_else(|_| chrono::DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%#z"))
        .map_err(|_| {
            Error::Usage(format!(
                "--target-time {text:?}: use a time with its zone, e.g. '2026-11-25 10:00:00+00'"
            ))
        })
}

pub async fn restore_cmd(config: &Config, args: RestoreArgs) -> Result<()> {
    if args.content_id.is_none() {
        if let Some(topo) = Topology::resolve(&config.cluster).await? {
            return super::cluster::restore(config, &topo, args).await;
        }
    }
    let content_id = args.content_id.unwrap_or(COORDINATOR);
    let Some(target_dir) = args.target_dir.clone() else {
        return Err(Error::Usage(
            "--target-dir is required: the directory to restore into (empty or absent)".into(),
        ));
    };
    if args.restore_config.is_some() || args.rollback_prepared {
        return Err(Error::Usage(
            "--restore-config and --rollback-prepared are for clusters: configure [[cluster.segments]] and leave out --content-id".into(),
        ));
    }
    let target = if let Some(n) = args.restore_point {
        RecoveryTarget::RestorePoint(n)
    } else if let Some(t) = args.target_time {
        RecoveryTarget::Time(parse_time(&t)?)
    } else if let Some(l) = args.target_lsn {
        RecoveryTarget::Lsn(
            l.parse::<Lsn>()
                .map_err(|e| Error::Usage(format!("--target-lsn: {e}")))?,
        )
    } else if let Some(x) = args.target_xid {
        RecoveryTarget::Xid(x)
    } else if args.immediate {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::Latest
    };
    let mut map = Vec::new();
    for m in &args.tablespace_map {
        let (old, new) = m
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--tablespace-map {m:?}: use OLD=NEW")))?;
        map.push((old.to_string(), new.to_string()));
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the cbdr executable", e))?;
    let mut restore_command = format!("{}", exe.display());
    if let Some(src) = &config.source {
        let abs = std::fs::canonicalize(src).unwrap_or(src.clone());
        restore_command.push_str(&format!(" --config {}", abs.display()));
    }
    restore_command.push_str(&format!(" wal-fetch %f %p --content-id {content_id}"));
    let repo = Repo::open(config).await?;
    let target_dir = std::path::absolute(&target_dir).unwrap_or(target_dir);
    let opts = RestoreOptions {
        content_id,
        target_dir: target_dir.clone(),
        backup: args.backup,
        target,
        action: args.target_action,
        tablespace_map: map,
        force: args.force,
        restore_command,
        parallel: args.parallel,
        archive_off: args.archive_mode == "off",
        progress: None,
    };
    let b = restore(&repo, &opts).await?;
    if args.start {
        use crate::physical::start;
        // To the latest WAL: replay must reach the end of what is archived
        // now (read before the server starts and can archive anything).
        let to_latest =
            opts.target == RecoveryTarget::Latest && args.target_action == TargetAction::Promote;
        let ends = if to_latest {
            Some(start::archive_ends(&repo, content_id).await?)
        } else {
            None
        };
        let (dir, action) = (target_dir.clone(), args.target_action);
        let (port, bin, timeout) = (
            args.port,
            args.pg_bin.clone(),
            Duration::from_secs(args.start_timeout),
        );
        let outcome = tokio::task::spawn_blocking(move || {
            start::start_and_wait(&dir, bin.as_deref(), port, action, timeout)
        })
        .await
        .map_err(|e| Error::Internal(format!("start task: {e}")))??;
        if let Some(ends) = ends {
            let (timeline, end) = start::end_of_recovery(&target_dir)?;
            let last = ends.get(&timeline).copied();
            if let Err(gap) = start::check_reached_archive_end(
                timeline,
                end,
                last,
                config.archive.wal_segment_size,
            ) {
                // It promoted: stop it before it takes writes on a branch
                // that lacks committed data.
                let stopped = match start::stop_fast(&target_dir, args.pg_bin.as_deref()) {
                    Ok(()) => {
                        "the server was stopped so that nothing is written on its new timeline"
                            .to_string()
                    }
                    Err(e) => {
                        format!("stopping the server failed ({e}): stop it before it takes writes")
                    }
                };
                return Err(Error::Integrity(format!(
                    "{gap}; {stopped}. Find why replay stopped in {} (the WAL file named there is damaged), repair it in the repository, and restore again",
                    target_dir.join("cbdr-start.log").display()
                )));
            }
        }
        println!(
            "restored backup {} into {}: {outcome}",
            b.name,
            target_dir.display()
        );
        return Ok(());
    }
    println!(
        "restored backup {} into {}: start the server to recover (to {})",
        b.name,
        target_dir.display(),
        opts.target
    );
    Ok(())
}
