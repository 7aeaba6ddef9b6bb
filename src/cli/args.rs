//! The arguments the one-server and the cluster forms of a command share
//! (`backup-push`, `create-restore-point`, `restore`): both cli modules
//! read them, neither owns them.

use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::pg::conn::ConnParams;
use crate::physical::restore::TargetAction;

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
    pub fn params(&self) -> Result<ConnParams> {
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
    /// Store only the blocks that changed since the newest backup (a full
    /// backup when none can serve as the base; see docs/backup-restore.md).
    #[arg(long, conflicts_with = "full")]
    pub delta: bool,
    /// A full backup, whatever `[backup] delta_max_steps` says.
    #[arg(long)]
    pub full: bool,
}

impl BackupPushArgs {
    pub fn mode(&self) -> crate::physical::blocks::base::BackupMode {
        use crate::physical::blocks::base::BackupMode;
        match (self.delta, self.full) {
            (true, _) => BackupMode::Delta,
            (_, true) => BackupMode::Full,
            _ => BackupMode::Auto,
        }
    }
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
    /// Cluster: restore a disaster-recovery standby: every instance pauses
    /// at the point with hot_standby on (read-only queries), archiving
    /// off, recorded for `cbdr standby status|advance|follow|promote`.
    #[arg(long)]
    pub standby: bool,
    /// With --standby: the standby's name (for several standbys of one
    /// primary).
    #[arg(long, requires = "standby", default_value = crate::cluster::standby::DEFAULT_NAME)]
    pub standby_name: String,
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
