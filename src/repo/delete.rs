//! Carrying out a [`Plan`]: crash-safe, in this order:
//! 1. the plan itself is stored as an intent (`deleting/{ID}.json`);
//! 2. the records go: cluster backups, cluster restore points, then each
//!    instance's backups and restore points (so `list` and `restore` stop
//!    offering a backup before any of its data goes);
//! 3. the data goes: each backup's prefix, the WAL runs, history files;
//! 4. the intent goes.
//!
//! Killed anywhere, the repository holds at worst objects no record
//! references, and the intent that names them: `delete garbage` finishes
//! every pending intent, so it leaves exactly what a clean delete would.

use futures_util::{stream, StreamExt, TryStreamExt};
use serde::Serialize;

use super::retention::{InstanceInventory, Inventory, Plan, WalObject};
use super::{layout, Repo};
use crate::error::Result;
use crate::storage::ObjectInfo;

/// Objects deleted at once.
const DELETE_CONCURRENCY: usize = 16;

/// What a delete removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Deleted {
    pub records: u64,
    pub objects: u64,
    /// Bytes of the data objects removed (as stored).
    pub bytes: u64,
}

impl std::ops::AddAssign for Deleted {
    fn add_assign(&mut self, o: Deleted) {
        self.records += o.records;
        self.objects += o.objects;
        self.bytes += o.bytes;
    }
}

/// Reads what deletion plans from: every record and the WAL listing.
/// `default_segment_size` for instances without a backup.
pub async fn inventory(repo: &Repo, default_segment_size: u64) -> Result<Inventory> {
    let mut inv = Inventory::default();
    for id in repo.content_ids().await? {
        let backups = repo.backups(id).await?;
        let points = repo.restore_points(id).await?;
        let wal = repo
            .storage
            .list(&layout::wal_prefix(id))
            .await?
            .into_iter()
            .map(wal_object)
            .collect();
        let segment_size = backups
            .last()
            .map(|b| b.wal_segment_size)
            .unwrap_or(default_segment_size);
        inv.instances.insert(
            id,
            InstanceInventory {
                backups,
                points,
                wal,
                segment_size,
            },
        );
    }
    inv.cluster_backups = repo.cluster_backups().await?;
    inv.cluster_points = repo.cluster_restore_points().await?;
    Ok(inv)
}

fn wal_object(o: ObjectInfo) -> WalObject {
    WalObject {
        name: o.key.rsplit('/').next().unwrap_or_default().to_string(),
        size: o.size,
        modified: o.modified,
    }
}

/// Carries out `plan` (see the module documentation).
pub async fn execute(repo: &Repo, plan: &Plan) -> Result<Deleted> {
    if plan.is_empty() {
        return Ok(Deleted::default());
    }
    repo.prepare_write().await?;
    let key = layout::deletion_intent_key(&super::catalog::new_backup_name("delete"));
    repo.put_json(&key, plan).await?;
    crate::fault::point("delete-intent");
    let done = run(repo, plan).await?;
    repo.storage.delete(&key).await?;
    Ok(done)
}

/// The intents of deletes that did not finish (killed, or failed), oldest
/// first, with their plans. An intent that cannot be read is logged and
/// left (`verify` reports it).
pub async fn pending(repo: &Repo) -> Result<Vec<(String, Plan)>> {
    let mut out = Vec::new();
    for o in repo.storage.list(layout::DELETION_INTENTS_PREFIX).await? {
        match repo.get_json::<Plan>(&o.key).await {
            Ok(p) => out.push((o.key, p)),
            Err(e) => tracing::warn!("skipping the unreadable delete intent {}: {e}", o.key),
        }
    }
    Ok(out)
}

/// Finishes one pending delete, then removes its intent.
pub async fn resume(repo: &Repo, key: &str, plan: &Plan) -> Result<Deleted> {
    let done = run(repo, plan).await?;
    repo.storage.delete(key).await?;
    Ok(done)
}

/// Steps 2 and 3 of the module documentation; deleting what is gone
/// already is not an error, so a run may be repeated.
pub async fn run(repo: &Repo, plan: &Plan) -> Result<Deleted> {
    let mut done = Deleted::default();
    let storage = repo.storage.as_ref();
    let mut records: Vec<String> = Vec::new();
    records.extend(
        plan.cluster_backups
            .iter()
            .map(|b| layout::cluster_backup_key(&b.name)),
    );
    records.extend(
        plan.cluster_restore_points
            .iter()
            .map(|p| layout::cluster_restore_point_key(p)),
    );
    for i in &plan.instances {
        records.extend(
            i.backups
                .iter()
                .map(|b| layout::backup_record_key(i.content_id, &b.name)),
        );
        records.extend(
            i.restore_points
                .iter()
                .map(|p| layout::restore_point_key(i.content_id, p)),
        );
    }
    for key in &records {
        storage.delete(key).await?;
        done.records += 1;
        crate::fault::point("delete-record");
    }
    // The catalogues follow the records (a stale one is never believed:
    // `repo::index`).
    if !plan.cluster_restore_points.is_empty() {
        super::index::refresh::<crate::cluster::catalog::ClusterRestorePoint>(
            repo,
            layout::CLUSTER_RESTORE_POINTS_PREFIX,
        )
        .await;
    }
    for i in plan
        .instances
        .iter()
        .filter(|i| !i.restore_points.is_empty())
    {
        super::index::refresh::<super::catalog::RestorePointRecord>(
            repo,
            &layout::restore_points_prefix(i.content_id),
        )
        .await;
    }
    // The WAL runs about to go are noted first (see
    // `layout::wal_removed_prefix`).
    for i in &plan.instances {
        for r in &i.wal {
            repo.put_json(&layout::wal_removed_key(i.content_id, &r.first, &r.last), r)
                .await?;
        }
    }
    // The data: nothing refers to it any more.
    let mut objects: Vec<ObjectInfo> = Vec::new();
    for i in &plan.instances {
        for b in &i.backups {
            objects.extend(
                storage
                    .list(&layout::backup_prefix(i.content_id, &b.name))
                    .await?,
            );
        }
        if !i.wal.is_empty() || !i.history.is_empty() {
            for o in storage.list(&layout::wal_prefix(i.content_id)).await? {
                let name = o.key.rsplit('/').next().unwrap_or_default();
                if i.history.iter().any(|h| h == name) || i.wal.iter().any(|r| r.contains(name)) {
                    objects.push(o);
                }
            }
        }
    }
    done += delete_objects(repo, objects).await?;
    Ok(done)
}

/// Deletes `objects`, several at once.
pub async fn delete_objects(repo: &Repo, objects: Vec<ObjectInfo>) -> Result<Deleted> {
    let storage = repo.storage.clone();
    let counts: Vec<u64> = stream::iter(objects.into_iter().map(|o| {
        let storage = storage.clone();
        async move {
            storage.delete(&o.key).await?;
            crate::fault::point("delete-object");
            Ok::<u64, crate::error::Error>(o.size)
        }
    }))
    .buffer_unordered(DELETE_CONCURRENCY)
    .try_collect()
    .await?;
    Ok(Deleted {
        records: 0,
        objects: counts.len() as u64,
        bytes: counts.iter().sum(),
    })
}

/// What the live leases protect now.
pub async fn protected_now(repo: &Repo) -> Result<super::retention::Protected> {
    let leases = super::lease::live(repo, chrono::Utc::now()).await?;
    Ok(super::lease::protected(&leases))
}

/// Plans `sel` on the repository as it is now (leases read).
pub async fn plan_now(
    repo: &Repo,
    sel: &super::retention::Selection,
    scope: Option<i32>,
    default_segment_size: u64,
) -> Result<Plan> {
    let inv = inventory(repo, default_segment_size).await?;
    let protected = protected_now(repo).await?;
    super::retention::plan(&inv, sel, scope, &protected, chrono::Utc::now())
}

/// `[retention]` after a successful backup: `None` when none is
/// configured.
pub async fn apply_retention(
    repo: &Repo,
    config: &crate::config::Config,
    scope: Option<i32>,
) -> Result<Option<(Plan, Deleted)>> {
    let r = &config.retention;
    if r.full.is_none() && r.days.is_none() {
        return Ok(None);
    }
    let sel = super::retention::Selection::Retain {
        full: r.full,
        since: r
            .days
            .map(|d| chrono::Utc::now() - chrono::Duration::days(i64::from(d))),
    };
    let plan = plan_now(repo, &sel, scope, config.archive.wal_segment_size).await?;
    let done = execute(repo, &plan).await?;
    Ok(Some((plan, done)))
}

/// Where `backup-mark` found a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marked {
    Cluster(String),
    Instance(i32, String),
}

/// `backup-mark`: sets (or with `permanent` false clears) a backup's
/// permanent flag by rewriting its record (an atomic replace). A cluster
/// backup's name marks the cluster backup; an instance backup that belongs
/// to one is refused (mark the cluster backup).
pub async fn mark(
    repo: &Repo,
    name: &str,
    content_id: Option<i32>,
    permanent: bool,
) -> Result<Marked> {
    use crate::error::Error;
    repo.prepare_write().await?;
    if content_id.is_none() {
        let key = layout::cluster_backup_key(name);
        if repo.exists(&key).await? {
            let mut c: crate::cluster::catalog::ClusterBackup = repo.get_json(&key).await?;
            c.permanent = permanent;
            repo.put_json(&key, &c).await?;
            return Ok(Marked::Cluster(name.to_string()));
        }
    }
    let ids = match content_id {
        Some(id) => vec![id],
        None => repo.content_ids().await?,
    };
    let mut found = Vec::new();
    for id in ids {
        if repo.exists(&layout::backup_record_key(id, name)).await? {
            found.push(id);
        }
    }
    let id = match found.as_slice() {
        [id] => *id,
        [] => {
            return Err(Error::Usage(format!(
                "there is no backup {name:?}{}: `cbdr list` shows the backups",
                content_id
                    .map(|i| format!(" of content id {i}"))
                    .unwrap_or_default()
            )))
        }
        _ => {
            return Err(Error::Usage(format!(
                "backup name {name:?} is on several instances: give --content-id N"
            )))
        }
    };
    for c in repo.cluster_backups().await? {
        if c.segments
            .iter()
            .any(|s| s.content_id == id && s.backup == name)
        {
            return Err(Error::Usage(format!(
                "backup {name} belongs to cluster backup {}: mark the cluster backup (`cbdr backup-mark {}`)",
                c.name, c.name
            )));
        }
    }
    let key = layout::backup_record_key(id, name);
    let mut b: super::catalog::BackupRecord = repo.get_json(&key).await?;
    b.permanent = permanent;
    repo.put_json(&key, &b).await?;
    Ok(Marked::Instance(id, name.to_string()))
}
