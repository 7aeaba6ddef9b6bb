//! `list`: backups, restore points and WAL coverage, for people or as JSON.

use clap::Args;
use serde::Serialize;

use crate::cluster::catalog::{ClusterBackup, ClusterRestorePoint};
use crate::config::Config;
use crate::error::Result;
use crate::repo::catalog::{BackupRecord, RestorePointRecord, Unreadable};
use crate::repo::coverage::{coverage, TimelineCoverage};
use crate::repo::{layout, Repo};

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Only this content id (default: all in the repository).
    #[arg(long, allow_negative_numbers = true)]
    pub content_id: Option<i32>,
    /// Print the report of logical backup TIMESTAMP and of its restores.
    #[arg(long, value_name = "TIMESTAMP")]
    pub report: Option<String>,
}

#[derive(Debug, Serialize)]
struct SegmentListing {
    content_id: i32,
    backups: Vec<BackupRecord>,
    restore_points: Vec<RestorePointRecord>,
    wal: Vec<TimelineCoverage>,
}

/// The whole listing (`--json` prints it as is).
#[derive(Debug, Serialize)]
struct Listing {
    /// Cluster backups and cluster restore points.
    cluster: ClusterListing,
    /// Per content id: base backups, restore points, WAL coverage.
    segments: Vec<SegmentListing>,
    /// Logical backups (gpbackup), oldest first.
    logical: Vec<LogicalListing>,
    /// Standby (DR) clusters restored with `restore --standby`: where each
    /// was sent (`cbdr standby status` asks the instances themselves).
    standbys: Vec<crate::cluster::standby::StandbyRecord>,
    /// Records that could not be read (damaged, not JSON), left out of the
    /// lists above: each object's key and why.
    unreadable: Vec<Unreadable>,
}

/// One logical backup, summed up.
#[derive(Debug, Serialize)]
struct LogicalListing {
    timestamp: String,
    database: String,
    finished: chrono::DateTime<chrono::Utc>,
    /// "all", "metadata-only" or "data-only".
    sections: &'static str,
    /// Tables whose rows the backup set holds.
    tables: usize,
    /// Of them, copied by this backup (the rest is kept from its base).
    tables_copied: usize,
    rows: u64,
    plain_bytes: u64,
    stored_bytes: u64,
    incremental_of: Option<String>,
    single_data_file: bool,
    compression: String,
    encrypted: bool,
}

impl LogicalListing {
    fn of(r: &crate::logical::record::LogicalBackupRecord) -> LogicalListing {
        LogicalListing {
            timestamp: r.timestamp.clone(),
            database: r.database.clone(),
            finished: r.end_time,
            sections: if r.options.metadata_only {
                "metadata-only"
            } else if r.options.data_only {
                "data-only"
            } else {
                "all"
            },
            tables: r.tables.len(),
            tables_copied: r.own_tables().count(),
            rows: r.rows(),
            plain_bytes: r.plain_bytes(),
            stored_bytes: r.stored_bytes(),
            incremental_of: r.incremental_of.clone(),
            single_data_file: r.options.single_data_file,
            compression: r.options.compression.clone(),
            encrypted: r.encrypted,
        }
    }
}

/// `list --report TS`: the stored reports of a logical backup.
async fn print_logical_reports(repo: &Repo, ts: &str) -> Result<()> {
    use crate::logical::layout;
    let ts = layout::Timestamp::parse(ts)?;
    let record = repo.logical_backup(&ts).await?;
    if let Some(r) = &record.report {
        print!(
            "{}",
            String::from_utf8_lossy(&repo.get_bytes(&r.key).await?)
        );
    }
    let prefix = format!("{}restores/", layout::backup_prefix(&ts));
    for o in repo.storage.list(&prefix).await? {
        if o.key.ends_with("/report") || o.key.ends_with("/errors") {
            println!("\n== {} ==", o.key);
            print!(
                "{}",
                String::from_utf8_lossy(&repo.get_bytes(&o.key).await?)
            );
        }
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct ClusterListing {
    backups: Vec<ClusterBackup>,
    restore_points: Vec<ClusterRestorePoint>,
}

pub async fn list(config: &Config, args: ListArgs) -> Result<()> {
    let repo = Repo::open(config).await?;
    if let Some(ts) = &args.report {
        return print_logical_reports(&repo, ts).await;
    }
    let mut ids: Vec<i32> = match args.content_id {
        Some(id) => vec![id],
        None => repo.content_ids().await?,
    };
    ids.sort();
    let mut out = Vec::new();
    let mut unreadable = Vec::new();
    for id in ids {
        let backups = repo.backups_checked(id).await?;
        let restore_points = repo.restore_points_checked(id).await?;
        unreadable.extend(backups.unreadable);
        unreadable.extend(restore_points.unreadable);
        let (backups, restore_points) = (backups.records, restore_points.records);
        let segment_size = backups
            .last()
            .map(|b| b.wal_segment_size)
            .unwrap_or(config.archive.wal_segment_size);
        let wal_objects = repo.storage.list(&layout::wal_prefix(id)).await?;
        let wal = coverage(
            wal_objects.iter().filter_map(|o| o.key.rsplit('/').next()),
            segment_size,
        );
        out.push(SegmentListing {
            content_id: id,
            backups,
            restore_points,
            wal,
        });
    }
    let cluster_backups = repo.cluster_backups_checked().await?;
    let cluster_points = repo.cluster_restore_points_checked().await?;
    unreadable.extend(cluster_backups.unreadable);
    unreadable.extend(cluster_points.unreadable);
    let listing = Listing {
        cluster: ClusterListing {
            backups: cluster_backups.records,
            restore_points: cluster_points.records,
        },
        segments: out,
        logical: if args.content_id.is_none_or(|id| id == -1) {
            repo.logical_backups()
                .await?
                .iter()
                .map(LogicalListing::of)
                .collect()
        } else {
            Vec::new()
        },
        standbys: crate::cluster::standby::list(&repo).await?,
        unreadable,
    };
    // On stderr, with --json too: a damaged record is never silent.
    for u in &listing.unreadable {
        eprintln!("warning: {u}");
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&listing).expect("serializable")
        );
        return Ok(());
    }
    if listing.segments.is_empty() && listing.logical.is_empty() {
        println!("The repository at {} is empty.", repo.storage.location());
    }
    print_cluster(&listing.cluster);
    for s in &listing.standbys {
        println!(
            "Standby cluster {}: {} ({} instances, updated {})",
            s.name,
            match &s.state {
                crate::cluster::standby::StandbyState::AtPoint { point } => format!("at {point}"),
                crate::cluster::standby::StandbyState::Moving { from, to } =>
                    format!("moving from {from} to {to}"),
                crate::cluster::standby::StandbyState::Promoted { point, .. } =>
                    format!("promoted at {point}"),
            },
            s.instances.len(),
            s.updated.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    print_logical(&listing.logical);
    for s in &listing.segments {
        println!("== content id {} ==", s.content_id);
        println!("Backups:");
        if s.backups.is_empty() {
            println!("  (none)");
        } else {
            println!(
                "  {:<24} {:<20} {:>12} {:>12} {:>4} {:<8} {:>10} {:>10} {:>6}  COMPRESSED",
                "NAME",
                "FINISHED (UTC)",
                "START LSN",
                "STOP LSN",
                "TLI",
                "TYPE",
                "SIZE",
                "STORED",
                "RATIO"
            );
            for b in &s.backups {
                let ratio = b.plain_bytes() as f64 / b.stored_bytes().max(1) as f64;
                // Full or delta, and the chain a delta needs (SIZE: the
                // bytes it stands for; STORED: what it stored itself).
                let kind = match b.base {
                    Some(_) => format!("delta/{}", b.chain_len()),
                    None => "full".to_string(),
                };
                println!(
                    "  {:<24} {:<20} {:>12} {:>12} {:>4} {:<8} {:>10} {:>10} {:>5.1}x  {} by {}{}{}",
                    b.name,
                    b.stop_time.format("%Y-%m-%d %H:%M:%S"),
                    b.start_lsn.to_string(),
                    b.stop_lsn.to_string(),
                    b.timeline.0,
                    kind,
                    human(b.plain_bytes()),
                    human(b.stored_bytes()),
                    ratio,
                    b.compression,
                    if b.server_compressed() {
                        "the server"
                    } else {
                        "cbdr"
                    },
                    b.base
                        .as_deref()
                        .map(|base| format!(", base {base}"))
                        .unwrap_or_default(),
                    if b.permanent { ", permanent" } else { "" }
                );
            }
        }
        println!("Restore points:");
        if s.restore_points.is_empty() {
            println!("  (none)");
        }
        for r in &s.restore_points {
            println!(
                "  {:<24} {:<20} {:>12} {:>4}",
                r.name,
                r.time.format("%Y-%m-%d %H:%M:%S"),
                r.lsn.to_string(),
                r.timeline.0
            );
        }
        println!("WAL archive:");
        if s.wal.is_empty() {
            println!("  (none)");
        }
        for w in &s.wal {
            let gaps = if w.gaps.is_empty() {
                "no gaps".to_string()
            } else {
                w.gaps
                    .iter()
                    .map(|g| format!("missing {}..{}", g.from, g.to))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!(
                "  timeline {}: {} .. {} ({} segments, {gaps})",
                w.timeline.0, w.first, w.last, w.segments
            );
        }
    }
    Ok(())
}

fn print_logical(l: &[LogicalListing]) {
    if l.is_empty() {
        return;
    }
    println!("== logical backups (gpbackup) ==");
    println!(
        "  {:<15} {:<16} {:<13} {:>7} {:>12} {:>10} {:>10}  INCREMENTAL OF",
        "TIMESTAMP", "DATABASE", "SECTIONS", "TABLES", "ROWS", "SIZE", "STORED"
    );
    for b in l {
        println!(
            "  {:<15} {:<16} {:<13} {:>7} {:>12} {:>10} {:>10}  {}",
            b.timestamp,
            b.database,
            b.sections,
            if b.tables_copied == b.tables {
                b.tables.to_string()
            } else {
                format!("{}/{}", b.tables_copied, b.tables)
            },
            b.rows,
            human(b.plain_bytes),
            human(b.stored_bytes),
            b.incremental_of.as_deref().unwrap_or("-")
        );
    }
}

fn print_cluster(c: &ClusterListing) {
    if c.backups.is_empty() && c.restore_points.is_empty() {
        return;
    }
    println!("== cluster ==");
    println!("Cluster backups:");
    if c.backups.is_empty() {
        println!("  (none)");
    } else {
        println!(
            "  {:<24} {:<20} {:>8} {:>10} {:>10}  RESTORE POINT",
            "NAME", "FINISHED (UTC)", "SEGMENTS", "SIZE", "STORED"
        );
    }
    for b in &c.backups {
        println!(
            "  {:<24} {:<20} {:>8} {:>10} {:>10}  {}{}{}",
            b.name,
            b.stop_time.format("%Y-%m-%d %H:%M:%S"),
            b.segments.len(),
            human(b.plain_bytes()),
            human(b.stored_bytes()),
            b.restore_point,
            b.base
                .as_deref()
                .map(|base| format!(" (delta of {base})"))
                .unwrap_or_default(),
            if b.permanent { " (permanent)" } else { "" }
        );
    }
    println!("Cluster restore points:");
    if c.restore_points.is_empty() {
        println!("  (none)");
    }
    for r in &c.restore_points {
        let lsns = r
            .segments
            .iter()
            .map(|s| format!("{}:{}", s.content_id, s.lsn))
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "  {:<24} {:<20} held {} ms  {lsns}",
            r.name,
            r.time.format("%Y-%m-%d %H:%M:%S"),
            r.barrier_millis
        );
    }
}

pub(super) fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}
