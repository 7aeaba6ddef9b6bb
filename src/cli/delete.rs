//! `delete` (retain, before, target, restore-point, everything, garbage)
//! and `backup-mark`: flags and printing. The rules are in
//! `repo::retention`, the order of removal in `repo::delete`, garbage in
//! `repo::garbage`.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::args::parse_time;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::repo::delete::{self, Deleted, Marked};
use crate::repo::garbage::{self, GarbagePlan};
use crate::repo::retention::{Plan, Selection};
use crate::repo::Repo;

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(subcommand)]
    pub what: DeleteWhat,
    /// Delete (without it: print what would be deleted, delete nothing).
    #[arg(long, global = true)]
    pub confirm: bool,
    /// The plan (and with --confirm what was deleted) as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Only this instance's own backups, restore points and WAL (a cluster
    /// backup's parts are deleted with it, without --content-id).
    #[arg(long, global = true, allow_negative_numbers = true)]
    pub content_id: Option<i32>,
}

#[derive(Debug, Subcommand)]
pub enum DeleteWhat {
    /// Keep the N newest full backups (and the deltas, WAL and restore
    /// points they need); delete the older ones.
    Retain {
        /// How many full backups to keep (at least 1).
        full: u32,
    },
    /// Delete the backups that finished before TIME (with its zone, e.g.
    /// 2026-11-01T00:00:00Z) or before backup NAME.
    Before {
        #[arg(value_name = "TIME|NAME")]
        boundary: String,
    },
    /// Delete one backup (refused while a kept delta depends on it).
    Target {
        name: String,
        /// Delete the backups that depend on it too.
        #[arg(long)]
        cascade: bool,
    },
    /// Delete one restore point (a cluster point with its instances' points).
    RestorePoint { name: String },
    /// Delete every backup, restore point and WAL file.
    Everything {
        /// Permanent backups too.
        #[arg(long)]
        force: bool,
    },
    /// Delete what no record references: objects of killed backups,
    /// unfinished uploads, unneeded WAL, and finish interrupted deletes.
    Garbage {
        /// Spare objects younger than this many seconds (a backup being
        /// written now is never garbage).
        #[arg(long, value_name = "SECONDS", default_value_t = garbage::DEFAULT_GRACE.as_secs())]
        grace: u64,
    },
}

#[derive(Debug, Serialize)]
struct Report<'a, P: Serialize> {
    dry_run: bool,
    plan: &'a P,
    bytes: u64,
    deleted: Option<Deleted>,
}

pub async fn delete(config: &Config, args: DeleteArgs) -> Result<()> {
    let repo = Repo::open(config).await?;
    let segment_size = config.archive.wal_segment_size;
    if let DeleteWhat::Garbage { grace } = args.what {
        if args.content_id.is_some() {
            return Err(Error::Usage(
                "delete garbage works on the whole repository: leave out --content-id".into(),
            ));
        }
        let plan = garbage::plan(
            &repo,
            segment_size,
            Duration::from_secs(grace),
            &delete::protected_now(&repo).await?,
        )
        .await?;
        let deleted = if args.confirm {
            Some(garbage::execute(&repo, &plan).await?)
        } else {
            None
        };
        return report(&args, &plan, plan.bytes(), deleted, print_garbage);
    }
    let sel = selection(&args.what)?;
    let plan = delete::plan_now(&repo, &sel, args.content_id, segment_size).await?;
    let deleted = if args.confirm {
        Some(delete::execute(&repo, &plan).await?)
    } else {
        None
    };
    report(&args, &plan, plan.bytes(), deleted, print_plan)
}

fn report<P: Serialize>(
    args: &DeleteArgs,
    plan: &P,
    bytes: u64,
    deleted: Option<Deleted>,
    print: fn(&P),
) -> Result<()> {
    if args.json {
        let r = Report {
            dry_run: !args.confirm,
            plan,
            bytes,
            deleted,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&r).expect("serializable")
        );
        return Ok(());
    }
    print(plan);
    match deleted {
        None => println!("Dry run: nothing was deleted. Add --confirm to delete this."),
        Some(d) => println!(
            "Deleted {} records and {} objects ({}).",
            d.records,
            d.objects,
            super::list::human(d.bytes)
        ),
    }
    Ok(())
}

/// The selection the subcommand names (exit 2 for what cannot be one).
fn selection(what: &DeleteWhat) -> Result<Selection> {
    Ok(match what {
        DeleteWhat::Retain { full } => Selection::Retain {
            full: Some(*full),
            since: None,
        },
        DeleteWhat::Before { boundary } => {
            let looks_like_time = boundary.len() >= 10
                && boundary.as_bytes()[4] == b'-'
                && boundary[..4].bytes().all(|b| b.is_ascii_digit());
            if looks_like_time {
                let t = parse_time(boundary).map_err(|_| {
                    Error::Usage(format!(
                        "delete before {boundary:?}: use a time with its zone, e.g. 2026-11-01T00:00:00Z, or a backup name"
                    ))
                })?;
                Selection::BeforeTime(t.to_utc())
            } else {
                Selection::BeforeName(boundary.clone())
            }
        }
        DeleteWhat::Target { name, cascade } => Selection::Target {
            name: name.clone(),
            cascade: *cascade,
        },
        DeleteWhat::RestorePoint { name } => Selection::RestorePoint(name.clone()),
        DeleteWhat::Everything { force } => Selection::Everything { force: *force },
        DeleteWhat::Garbage { .. } => unreachable!("garbage is planned apart"),
    })
}

fn print_plan(p: &Plan) {
    if p.is_empty() {
        println!("Nothing to delete.");
    } else {
        println!("To delete:");
    }
    for b in &p.cluster_backups {
        println!(
            "  cluster backup {} (finished {})",
            b.name,
            b.stop_time.format("%Y-%m-%d %H:%M:%S")
        );
    }
    if !p.cluster_restore_points.is_empty() {
        println!(
            "  cluster restore points: {}",
            p.cluster_restore_points.join(", ")
        );
    }
    for i in &p.instances {
        let id = i.content_id;
        for b in &i.backups {
            println!(
                "  content id {id}: backup {} (finished {}, {})",
                b.name,
                b.stop_time.format("%Y-%m-%d %H:%M:%S"),
                super::list::human(b.stored_bytes)
            );
        }
        if !i.restore_points.is_empty() {
            println!(
                "  content id {id}: restore points {}",
                i.restore_points.join(", ")
            );
        }
        for w in &i.wal {
            println!(
                "  content id {id}: WAL timeline {}: {} .. {} ({} files, {})",
                w.timeline.0,
                w.first,
                w.last,
                w.files,
                super::list::human(w.bytes)
            );
        }
        if !i.history.is_empty() {
            println!("  content id {id}: history files {}", i.history.join(", "));
        }
    }
    for k in &p.kept {
        println!("  kept: {k}");
    }
    let backups: usize =
        p.cluster_backups.len() + p.instances.iter().map(|i| i.backups.len()).sum::<usize>();
    let points: usize = p.cluster_restore_points.len()
        + p.instances
            .iter()
            .map(|i| i.restore_points.len())
            .sum::<usize>();
    if !p.is_empty() {
        println!(
            "Total: {backups} backups, {points} restore points, {} WAL files, {}",
            p.wal_files(),
            super::list::human(p.bytes())
        );
    }
}

fn print_garbage(g: &GarbagePlan) {
    if g.is_empty() {
        println!("No garbage.");
    }
    for p in &g.pending {
        println!("Interrupted delete {} (to finish):", p.intent);
        print_plan(&p.plan);
    }
    for o in &g.orphans {
        println!(
            "  {}: no record ({} objects, {}, newest {})",
            o.prefix,
            o.objects,
            super::list::human(o.bytes),
            o.newest
                .map(|n| n.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default()
        );
    }
    for u in &g.incomplete_uploads {
        println!(
            "  unfinished upload of {} (started {})",
            u.key,
            u.started
                .map(|n| n.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default()
        );
    }
    for l in &g.expired_leases {
        println!("  expired lease {l}");
    }
    if !g.wal.is_empty() {
        println!("Unneeded WAL:");
        print_plan(&g.wal);
    }
}

#[derive(Debug, Args)]
pub struct BackupMarkArgs {
    /// A backup from `cbdr list` (a cluster backup's name marks it whole).
    pub name: String,
    /// Clear the mark: retention may delete the backup again.
    #[arg(long)]
    pub impermanent: bool,
    /// The instance of the backup, when the name is on several.
    #[arg(long, allow_negative_numbers = true)]
    pub content_id: Option<i32>,
}

pub async fn backup_mark(config: &Config, args: BackupMarkArgs) -> Result<()> {
    let repo = Repo::open(config).await?;
    let marked = delete::mark(&repo, &args.name, args.content_id, !args.impermanent).await?;
    let what = match marked {
        Marked::Cluster(n) => format!("cluster backup {n}"),
        Marked::Instance(id, n) => format!("backup {n} of content id {id}"),
    };
    if args.impermanent {
        println!("{what} is no longer permanent: retention may delete it");
    } else {
        println!(
            "{what} is permanent: retention never deletes it (nor the backups it is a delta of)"
        );
    }
    Ok(())
}

/// `[retention]` after a successful `backup-push`: logged, never fatal.
pub async fn after_backup(repo: &Repo, config: &Config, scope: Option<i32>) {
    match delete::apply_retention(repo, config, scope).await {
        Ok(None) => {}
        Ok(Some((plan, done))) => {
            if plan.is_empty() {
                tracing::info!("retention: nothing to delete");
            } else {
                println!(
                    "retention: deleted {} backups, {} restore points, {} WAL files ({} records, {} objects, {})",
                    plan.cluster_backups.len()
                        + plan.instances.iter().map(|i| i.backups.len()).sum::<usize>(),
                    plan.cluster_restore_points.len()
                        + plan.instances.iter().map(|i| i.restore_points.len()).sum::<usize>(),
                    plan.wal_files(),
                    done.records,
                    done.objects,
                    super::list::human(done.bytes)
                );
            }
        }
        Err(e) => tracing::error!(
            "retention after the backup failed (the backup itself is complete): {}; run `cbdr delete retain N` by hand to see why",
            e.render()
        ),
    }
}
