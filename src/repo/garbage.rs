//! `delete garbage`: what no record references.
//!
//! - deletes that did not finish (their intents, `repo::delete`): finished;
//! - the objects of base backups without a record (killed or failed
//!   backups: `seg{ID}/basebackups/{NAME}/` without `backup.json`) and of
//!   logical backups without a record (`logical/{TS}/` without
//!   `backup.json`);
//! - unfinished uploads: S3 multipart uploads never completed, temp files
//!   a killed writer left on a filesystem repository;
//! - leases that expired (their restore died without removing them);
//! - WAL no backup or restore point needs (the planner's rules,
//!   `repo::retention`).
//!
//! Nothing younger than the grace period is touched: a backup prefix is
//! garbage only when its *newest* object is older, so a backup being
//! written now (however long it runs) is never taken for a dead one.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::delete::{self, Deleted};
use super::retention::{self, Plan, Protected, Selection};
use super::{layout, Repo};
use crate::error::Result;
use crate::storage::{Incomplete, ObjectInfo};

/// The default grace period.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// Objects of one backup that has no record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Orphan {
    pub prefix: String,
    pub objects: u64,
    pub bytes: u64,
    /// When its newest object was stored.
    pub newest: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GarbagePlan {
    /// Deletes that did not finish: their intent's key and plan.
    pub pending: Vec<PendingDelete>,
    pub orphans: Vec<Orphan>,
    pub incomplete_uploads: Vec<IncompleteUpload>,
    /// Leases whose restore ended without removing them (expired).
    pub expired_leases: Vec<String>,
    /// WAL no kept backup or point needs.
    pub wal: Plan,
}

#[derive(Debug, Clone, Serialize)]
pub struct PendingDelete {
    pub intent: String,
    pub plan: Plan,
}

#[derive(Debug, Clone, Serialize)]
pub struct IncompleteUpload {
    pub key: String,
    pub started: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub upload: Incomplete,
}

impl GarbagePlan {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
            && self.orphans.is_empty()
            && self.incomplete_uploads.is_empty()
            && self.expired_leases.is_empty()
            && self.wal.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.orphans.iter().map(|o| o.bytes).sum::<u64>()
            + self.wal.bytes()
            + self.pending.iter().map(|p| p.plan.bytes()).sum::<u64>()
    }
}

/// The prefixes of records-less backups among `objects`: groups keys by
/// the prefix `group` gives, keeps groups without a key `record` names,
/// whose newest object is older than `now - grace`.
fn orphans(
    objects: &[ObjectInfo],
    group: impl Fn(&str) -> Option<String>,
    is_record: impl Fn(&str) -> bool,
    now: SystemTime,
    grace: Duration,
) -> Vec<Orphan> {
    let mut groups: BTreeMap<String, (bool, Orphan)> = BTreeMap::new();
    for o in objects {
        let Some(prefix) = group(&o.key) else {
            continue;
        };
        let entry = groups.entry(prefix.clone()).or_insert_with(|| {
            (
                false,
                Orphan {
                    prefix,
                    objects: 0,
                    bytes: 0,
                    newest: None,
                },
            )
        });
        entry.0 |= is_record(&o.key);
        entry.1.objects += 1;
        entry.1.bytes += o.size;
        // An object without a time counts as new: never removed.
        let m: DateTime<Utc> = o.modified.unwrap_or(now).into();
        entry.1.newest = Some(entry.1.newest.map_or(m, |n| n.max(m)));
    }
    let limit: DateTime<Utc> = (now - grace).into();
    groups
        .into_values()
        .filter(|(has_record, o)| !has_record && o.newest.is_some_and(|n| n < limit))
        .map(|(_, o)| o)
        .collect()
}

/// The backup prefix (`seg{ID}/basebackups/{NAME}/`) of a key.
fn backup_group(key: &str) -> Option<String> {
    let mut parts = key.splitn(4, '/');
    let (seg, dir, name) = (parts.next()?, parts.next()?, parts.next()?);
    parts.next()?;
    (seg.starts_with("seg") && dir == "basebackups").then(|| format!("{seg}/{dir}/{name}/"))
}

/// The logical backup prefix (`logical/{TS}/`) of a key.
fn logical_group(key: &str) -> Option<String> {
    let ts = crate::logical::layout::timestamp_of_key(key)?;
    Some(crate::logical::layout::backup_prefix(&ts))
}

/// What `delete garbage` would remove now.
pub async fn plan(
    repo: &Repo,
    default_segment_size: u64,
    grace: Duration,
    protected: &Protected,
) -> Result<GarbagePlan> {
    let now = SystemTime::now();
    let pending = delete::pending(repo)
        .await?
        .into_iter()
        .map(|(intent, plan)| PendingDelete { intent, plan })
        .collect();
    let mut objects = Vec::new();
    for id in repo.content_ids().await? {
        objects.extend(repo.storage.list(&layout::backups_prefix(id)).await?);
    }
    let mut orphans_found = orphans(
        &objects,
        backup_group,
        |k| {
            k.ends_with("/backup.json")
                && backup_group(k).is_some_and(|g| k == format!("{g}backup.json"))
        },
        now,
        grace,
    );
    let logical = repo
        .storage
        .list(crate::logical::layout::LOGICAL_PREFIX)
        .await?;
    orphans_found.extend(orphans(
        &logical,
        logical_group,
        |k| {
            crate::logical::layout::timestamp_of_key(k)
                .is_some_and(|ts| k == crate::logical::layout::record_key(&ts))
        },
        now,
        grace,
    ));
    let limit: DateTime<Utc> = (now - grace).into();
    let incomplete_uploads = repo
        .storage
        .list_incomplete("")
        .await?
        .into_iter()
        .filter(|u| u.started.is_some_and(|s| DateTime::<Utc>::from(s) < limit))
        .map(|u| IncompleteUpload {
            key: u.key.clone(),
            started: u.started.map(DateTime::<Utc>::from),
            upload: u,
        })
        .collect();
    let mut expired_leases = Vec::new();
    for o in repo.storage.list(layout::LEASES_PREFIX).await? {
        if let Ok(l) = repo.get_json::<super::lease::Lease>(&o.key).await {
            if l.expires <= DateTime::<Utc>::from(now) {
                expired_leases.push(o.key);
            }
        }
    }
    let inv = delete::inventory(repo, default_segment_size).await?;
    let wal = retention::plan(
        &inv,
        &Selection::Garbage { grace },
        None,
        protected,
        now.into(),
    )?;
    Ok(GarbagePlan {
        pending,
        orphans: orphans_found,
        incomplete_uploads,
        expired_leases,
        wal,
    })
}

/// Removes what `plan` found: pending deletes first, then orphaned
/// backups, unfinished uploads and unneeded WAL.
pub async fn execute(repo: &Repo, plan: &GarbagePlan) -> Result<Deleted> {
    repo.prepare_write().await?;
    let mut done = Deleted::default();
    for p in &plan.pending {
        done += delete::resume(repo, &p.intent, &p.plan).await?;
    }
    for o in &plan.orphans {
        // Listed again: only what is there now, and only if the backup
        // still has no record (it cannot get one: its writer is gone).
        let objects = repo.storage.list(&o.prefix).await?;
        if objects
            .iter()
            .any(|x| x.key == format!("{}backup.json", o.prefix))
        {
            continue;
        }
        done += delete::delete_objects(repo, objects).await?;
    }
    for u in &plan.incomplete_uploads {
        repo.storage.abort_incomplete(&u.upload).await?;
        done.objects += 1;
    }
    for key in &plan.expired_leases {
        repo.storage.delete(key).await?;
        done.records += 1;
    }
    done += delete::run(repo, &plan.wal).await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, age_s: u64, now: SystemTime) -> ObjectInfo {
        ObjectInfo {
            key: key.into(),
            size: 10,
            modified: Some(now - Duration::from_secs(age_s)),
        }
    }

    #[test]
    fn orphans_are_old_backups_without_a_record() {
        let now = SystemTime::now();
        let objects = vec![
            obj("seg-1/basebackups/done/backup.json", 9000, now),
            obj("seg-1/basebackups/done/parts/base/000000.tar", 9000, now),
            obj("seg-1/basebackups/dead/parts/base/000000.tar", 9000, now),
            obj("seg-1/basebackups/dead/backup_manifest", 8000, now),
            obj("seg-1/basebackups/running/parts/base/000000.tar", 9000, now),
            obj("seg-1/basebackups/running/parts/base/000001.tar", 10, now),
            obj("seg0/basebackups/x/parts/base/backup.json", 9000, now),
        ];
        let is_record = |k: &str| backup_group(k).is_some_and(|g| k == format!("{g}backup.json"));
        let found = orphans(&objects, backup_group, is_record, now, DEFAULT_GRACE);
        let prefixes: Vec<&str> = found.iter().map(|o| o.prefix.as_str()).collect();
        // A backup.json deeper in the prefix is not a record.
        assert_eq!(prefixes, ["seg-1/basebackups/dead/", "seg0/basebackups/x/"]);
        assert_eq!(found[0].objects, 2);
        assert_eq!(found[0].bytes, 20);
        assert_eq!(
            backup_group("seg-1/basebackups/n/backup.json").as_deref(),
            Some("seg-1/basebackups/n/")
        );
        assert_eq!(backup_group("seg-1/wal/x/y"), None);
        assert_eq!(
            logical_group("logical/20261101000000/data/5").as_deref(),
            Some("logical/20261101000000/")
        );
    }
}
