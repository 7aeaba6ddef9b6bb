//! What a `delete` removes and what it must keep: a pure function of the
//! repository's records and WAL listing ([`Inventory`]) and of what the
//! DBA asked ([`Selection`]), giving a [`Plan`] that `repo::delete`
//! carries out (records first, then data).
//!
//! The rules (docs/retention.md says the same for DBAs):
//! - Backups come in *series*: the cluster backups, and on each instance
//!   the backups that belong to no cluster backup. `retain N` keeps the N
//!   newest full backups of each series and everything newer; `before`
//!   removes what finished before a time or a named backup.
//! - A kept backup keeps its chain (its `base`, the base's base...).
//!   Permanent backups (`backup-mark`) and backups a live lease covers are
//!   never removed by `retain`/`before` (and refused by `target` and
//!   `everything` without `--force`). A cluster backup is removed as a
//!   whole, with its instances' backups.
//! - A restore point no kept backup can reach (none ends at or before it
//!   on its timeline or an earlier one) is removed; a cluster backup's own
//!   restore point stays while the cluster backup does.
//! - WAL: a kept backup keeps the WAL from its start to its stop (and the
//!   segment after, where recovery reads the record after the end); a kept
//!   backup that is not permanent (and the newest kept backup) keeps every
//!   WAL file from its start on (point-in-time recovery to any later
//!   moment); a kept point keeps the WAL from the backup that serves it
//!   to the point. A WAL segment of timeline T is needed by a range from
//!   timeline A to timeline B when A <= T <= B (the timelines a recovery
//!   from A to B can follow are numbered between them) and the segment
//!   overlaps the range's LSNs. History files stay (they are tiny and
//!   every later timeline's recovery reads them) unless everything goes.
//!   An instance with no kept backup keeps all its WAL, unless
//!   `everything` is asked.

use std::collections::{BTreeMap, BTreeSet};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cluster::catalog::{ClusterBackup, ClusterRestorePoint};
use crate::error::{Error, Result};
use crate::pg::{Lsn, TimelineId, WalFile, WalSegmentName};
use crate::repo::catalog::{BackupRecord, RestorePointRecord};

/// What the repository holds, as far as deletion is concerned.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub instances: BTreeMap<i32, InstanceInventory>,
    pub cluster_backups: Vec<ClusterBackup>,
    pub cluster_points: Vec<ClusterRestorePoint>,
}

#[derive(Debug, Clone, Default)]
pub struct InstanceInventory {
    pub backups: Vec<BackupRecord>,
    pub points: Vec<RestorePointRecord>,
    /// Every object under the instance's WAL prefix.
    pub wal: Vec<WalObject>,
    /// The WAL segment size (of its newest backup, else the configured).
    pub segment_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalObject {
    /// The file name (the key's last component).
    pub name: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

/// What the DBA asked to delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Keep the `full` newest full backups of each series (and what is
    /// newer), and/or every backup that finished at or after `since`;
    /// with both, a backup goes only when neither keeps it.
    Retain {
        full: Option<u32>,
        since: Option<DateTime<Utc>>,
    },
    /// Backups that finished before a time.
    BeforeTime(DateTime<Utc>),
    /// The backups of the named backup's series that are older than it.
    BeforeName(String),
    /// One backup (cluster or instance); with `cascade`, the backups that
    /// depend on it too.
    Target { name: String, cascade: bool },
    /// One restore point (a cluster point with its instances' points).
    RestorePoint(String),
    /// Everything in scope; `force` removes permanent backups too.
    Everything { force: bool },
    /// Nothing a record references: only WAL no kept backup or point needs
    /// (the rest of garbage collection is in `repo::garbage`).
    Garbage { grace: std::time::Duration },
}

/// What a live lease protects (see `repo::lease`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Protected {
    /// Cluster backup names, with who holds them.
    pub cluster_backups: BTreeMap<String, String>,
    /// (content id, backup name).
    pub backups: BTreeMap<(i32, String), String>,
    pub cluster_points: BTreeMap<String, String>,
    pub points: BTreeMap<(i32, String), String>,
}

/// A backup to delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedBackup {
    pub name: String,
    pub stop_time: DateTime<Utc>,
    pub stored_bytes: u64,
}

/// A run of WAL files of one timeline to delete: every file whose segment
/// is between `first` and `last` (inclusive; `.partial` and `.backup`
/// files by their segment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalRange {
    pub timeline: TimelineId,
    pub first: String,
    pub last: String,
    pub files: u64,
    pub bytes: u64,
}

impl WalRange {
    /// Whether the WAL file `name` is in this range.
    pub fn contains(&self, name: &str) -> bool {
        match WalFile::parse(name).and_then(|f| f.segment()) {
            Some(s) => {
                let s = s.to_string();
                s[..8] == self.first[..8] && *s >= *self.first && *s <= *self.last
            }
            None => false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstancePlan {
    pub content_id: i32,
    pub backups: Vec<PlannedBackup>,
    pub restore_points: Vec<String>,
    pub wal: Vec<WalRange>,
    /// History files to delete (only when everything goes).
    pub history: Vec<String>,
}

impl InstancePlan {
    fn is_empty(&self) -> bool {
        self.backups.is_empty()
            && self.restore_points.is_empty()
            && self.wal.is_empty()
            && self.history.is_empty()
    }
}

/// What a delete removes, and why some things it could have removed stay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub cluster_backups: Vec<PlannedBackup>,
    pub cluster_restore_points: Vec<String>,
    pub instances: Vec<InstancePlan>,
    /// Why backups or WAL that the selection named stay (permanent, the
    /// base of a kept delta, leased, an instance without backups).
    pub kept: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.cluster_backups.is_empty()
            && self.cluster_restore_points.is_empty()
            && self.instances.iter().all(InstancePlan::is_empty)
    }

    /// Bytes the deleted backups and WAL take (as stored).
    pub fn bytes(&self) -> u64 {
        let instances: u64 = self
            .instances
            .iter()
            .map(|i| {
                i.backups.iter().map(|b| b.stored_bytes).sum::<u64>()
                    + i.wal.iter().map(|w| w.bytes).sum::<u64>()
            })
            .sum();
        instances
    }

    pub fn wal_files(&self) -> u64 {
        self.instances
            .iter()
            .flat_map(|i| &i.wal)
            .map(|w| w.files)
            .sum()
    }
}

/// One backup retention counts: a cluster backup or an instance's own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Unit {
    Cluster(String),
    Instance(i32, String),
}

impl Unit {
    fn name(&self) -> &str {
        match self {
            Unit::Cluster(n) | Unit::Instance(_, n) => n,
        }
    }
    fn describe(&self) -> String {
        match self {
            Unit::Cluster(n) => format!("cluster backup {n}"),
            Unit::Instance(id, n) => format!("backup {n} (content id {id})"),
        }
    }
}

#[derive(Debug, Clone)]
struct UnitInfo {
    unit: Unit,
    stop_time: DateTime<Utc>,
    base: Option<Unit>,
    permanent: bool,
    stored_bytes: u64,
}

/// The series in scope, each oldest first.
fn series(inv: &Inventory, scope: Option<i32>) -> Vec<Vec<UnitInfo>> {
    let mut out = Vec::new();
    let members = members(inv);
    if scope.is_none() {
        let mut c: Vec<UnitInfo> = inv
            .cluster_backups
            .iter()
            .map(|b| UnitInfo {
                unit: Unit::Cluster(b.name.clone()),
                stop_time: b.stop_time,
                base: b.base.clone().map(Unit::Cluster),
                permanent: b.permanent,
                stored_bytes: b.stored_bytes(),
            })
            .collect();
        c.sort_by_key(|u| u.stop_time);
        out.push(c);
    }
    for (id, i) in &inv.instances {
        if scope.is_some_and(|s| s != *id) {
            continue;
        }
        let mut own: Vec<&BackupRecord> = i
            .backups
            .iter()
            .filter(|b| !members.contains_key(&(*id, b.name.clone())))
            .collect();
        own.sort_by_key(|b| (b.stop_lsn, b.stop_time));
        out.push(
            own.into_iter()
                .map(|b| UnitInfo {
                    unit: Unit::Instance(*id, b.name.clone()),
                    stop_time: b.stop_time,
                    base: b.base.clone().map(|n| Unit::Instance(*id, n)),
                    permanent: b.permanent,
                    stored_bytes: b.stored_bytes(),
                })
                .collect(),
        );
    }
    out.retain(|s| !s.is_empty());
    out
}

/// (content id, instance backup) → the cluster backup it belongs to.
fn members(inv: &Inventory) -> BTreeMap<(i32, String), String> {
    let mut m = BTreeMap::new();
    for c in &inv.cluster_backups {
        for s in &c.segments {
            m.insert((s.content_id, s.backup.clone()), c.name.clone());
        }
    }
    m
}

/// The plan for `sel` on the instances of `scope` (`None`: the whole
/// repository, cluster backups included). Errors (exit 2) when the
/// selection names nothing that exists or would remove what it must not.
pub fn plan(
    inv: &Inventory,
    sel: &Selection,
    scope: Option<i32>,
    protected: &Protected,
    now: DateTime<Utc>,
) -> Result<Plan> {
    let all_series = series(inv, scope);
    let by_unit: BTreeMap<Unit, &UnitInfo> = all_series
        .iter()
        .flatten()
        .map(|u| (u.unit.clone(), u))
        .collect();
    let mut kept_notes: Vec<String> = Vec::new();
    // A cluster backup is in use when one of its instances' backups is
    // (each instance's restore takes its own lease).
    let leased = |u: &Unit| -> Option<&String> {
        match u {
            Unit::Cluster(n) => protected.cluster_backups.get(n).or_else(|| {
                inv.cluster_backups
                    .iter()
                    .filter(|c| c.name == *n)
                    .flat_map(|c| &c.segments)
                    .find_map(|s| protected.backups.get(&(s.content_id, s.backup.clone())))
            }),
            Unit::Instance(id, n) => protected.backups.get(&(*id, n.clone())),
        }
    };
    let point_leased = |cp: &ClusterRestorePoint| -> Option<&String> {
        protected.cluster_points.get(&cp.name).or_else(|| {
            cp.segments
                .iter()
                .find_map(|s| protected.points.get(&(s.content_id, cp.name.clone())))
        })
    };

    // 1. What the selection asks for.
    let mut delete: BTreeSet<Unit> = BTreeSet::new();
    match sel {
        Selection::Retain { full, since } => {
            if *full == Some(0) {
                return Err(Error::Usage(
                    "retain 0 would delete every backup: give at least 1 (or use `delete everything`)"
                        .into(),
                ));
            }
            if full.is_none() && since.is_none() {
                return Err(Error::Usage(
                    "retention needs a number of full backups or a number of days".into(),
                ));
            }
            for s in &all_series {
                let mut keep: BTreeSet<usize> = BTreeSet::new();
                if let Some(n) = full {
                    let fulls: Vec<usize> = (0..s.len()).filter(|&i| s[i].base.is_none()).collect();
                    let from = if fulls.len() <= *n as usize {
                        0
                    } else {
                        fulls[fulls.len() - *n as usize]
                    };
                    keep.extend(from..s.len());
                }
                if let Some(t) = since {
                    keep.extend((0..s.len()).filter(|&i| s[i].stop_time >= *t));
                }
                delete.extend(
                    (0..s.len())
                        .filter(|i| !keep.contains(i))
                        .map(|i| s[i].unit.clone()),
                );
            }
        }
        Selection::BeforeTime(t) => {
            if *t > now {
                return Err(Error::Usage(format!(
                    "delete before {}: that time is in the future; give a past time (or a backup name)",
                    t.to_rfc3339()
                )));
            }
            for s in &all_series {
                delete.extend(
                    s.iter()
                        .filter(|u| u.stop_time < *t)
                        .map(|u| u.unit.clone()),
                );
            }
        }
        Selection::BeforeName(name) => {
            let (s, i) = find_unit(&all_series, name)?;
            delete.extend(all_series[s][..i].iter().map(|u| u.unit.clone()));
        }
        Selection::Target { name, cascade } => {
            let (s, i) = find_unit(&all_series, name)?;
            let unit = all_series[s][i].unit.clone();
            let dependents: Vec<Unit> = by_unit
                .values()
                .filter(|u| u.unit != unit && chain(&by_unit, &u.unit).contains(&unit))
                .map(|u| u.unit.clone())
                .collect();
            if !dependents.is_empty() && !cascade {
                return Err(Error::Usage(format!(
                    "{} is the base of {}: delete them too with --cascade, or keep it",
                    unit.describe(),
                    dependents
                        .iter()
                        .map(|d| d.name().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            delete.insert(unit);
            delete.extend(dependents);
            for u in &delete {
                if by_unit[u].permanent {
                    return Err(Error::Usage(format!(
                        "{} is permanent: run `cbdr backup-mark {} --impermanent` first",
                        u.describe(),
                        u.name()
                    )));
                }
            }
        }
        Selection::RestorePoint(_) | Selection::Garbage { .. } => {}
        Selection::Everything { force } => {
            delete.extend(by_unit.keys().cloned());
            let permanent: Vec<&str> = by_unit
                .values()
                .filter(|u| u.permanent)
                .map(|u| u.unit.name())
                .collect();
            if !permanent.is_empty() && !force {
                return Err(Error::Usage(format!(
                    "permanent backups would be deleted ({}): add --force to delete them too, or mark them with `cbdr backup-mark NAME --impermanent`",
                    permanent.join(", ")
                )));
            }
        }
    }

    // 2. What must stay anyway: permanent (unless forced), leased, and the
    // chain of everything kept.
    let forced = matches!(sel, Selection::Everything { force: true });
    let explicit = matches!(sel, Selection::Target { .. } | Selection::Everything { .. });
    for u in delete.clone() {
        if let Some(holder) = leased(&u) {
            if explicit {
                return Err(Error::Usage(format!(
                    "{} is in use ({holder}): wait until that finishes (or its lease expires), then retry",
                    u.describe()
                )));
            }
            delete.remove(&u);
            kept_notes.push(format!("{} stays: in use ({holder})", u.describe()));
        } else if by_unit[&u].permanent && !forced {
            delete.remove(&u);
            kept_notes.push(format!("{} stays: permanent", u.describe()));
        }
    }
    let kept_units: Vec<Unit> = by_unit
        .keys()
        .filter(|u| !delete.contains(u))
        .cloned()
        .collect();
    for k in &kept_units {
        for base in chain(&by_unit, k) {
            if delete.remove(&base) {
                kept_notes.push(format!(
                    "{} stays: {} is a delta of it",
                    base.describe(),
                    k.name()
                ));
            }
        }
    }
    if matches!(sel, Selection::BeforeTime(_) | Selection::BeforeName(_)) {
        for s in &all_series {
            if s.iter().all(|u| delete.contains(&u.unit)) {
                return Err(Error::Usage(format!(
                    "this would delete every backup of its series, the newest being {}: give an earlier time or name, or use `delete everything`",
                    s.last().expect("non-empty series").unit.describe()
                )));
            }
        }
    }

    // 3. The instance backups that go, and those that stay.
    let members = members(inv);
    let mut plan = Plan::default();
    for u in &delete {
        if let Unit::Cluster(n) = u {
            let info = by_unit[u];
            plan.cluster_backups.push(PlannedBackup {
                name: n.clone(),
                stop_time: info.stop_time,
                stored_bytes: info.stored_bytes,
            });
        }
    }
    let unit_of = |id: i32, name: &str| -> Unit {
        match members.get(&(id, name.to_string())) {
            Some(c) => Unit::Cluster(c.clone()),
            None => Unit::Instance(id, name.to_string()),
        }
    };
    let goes = |id: i32, b: &BackupRecord| delete.contains(&unit_of(id, &b.name));
    let permanent_unit = |id: i32, b: &BackupRecord| match unit_of(id, &b.name) {
        u @ Unit::Cluster(_) => by_unit.get(&u).map(|i| i.permanent).unwrap_or(false),
        Unit::Instance(..) => b.permanent,
    };

    // 4. Restore points: one stays while a kept backup that keeps WAL
    // after itself (not permanent, or the newest) ends before it.
    let newest_kept = |id: i32| -> Option<&BackupRecord> {
        inv.instances.get(&id).and_then(|i| {
            i.backups
                .iter()
                .filter(|b| !goes(id, b))
                .max_by_key(|b| (b.stop_lsn, b.stop_time))
        })
    };
    let keeps_tail = |id: i32, b: &BackupRecord| {
        !permanent_unit(id, b) || newest_kept(id).map(|n| &n.name) == Some(&b.name)
    };
    let kept_backups = |id: i32| -> Vec<&BackupRecord> {
        inv.instances
            .get(&id)
            .map(|i| {
                i.backups
                    .iter()
                    .filter(|b| !goes(id, b) && keeps_tail(id, b))
                    .collect()
            })
            .unwrap_or_default()
    };
    let serves = |b: &BackupRecord, lsn: Lsn, tli: TimelineId| {
        b.stop_lsn <= lsn && b.stop_timeline <= tli && b.timeline <= tli
    };
    let kept_cluster_points: BTreeSet<String> = inv
        .cluster_backups
        .iter()
        .filter(|c| !delete.contains(&Unit::Cluster(c.name.clone())))
        .map(|c| c.restore_point.clone())
        .collect();
    let mut deleted_cluster_points: BTreeSet<String> = BTreeSet::new();
    let mut deleted_points: BTreeSet<(i32, String)> = BTreeSet::new();
    match sel {
        Selection::Garbage { .. } => {}
        Selection::RestorePoint(name) => {
            if let Some(cp) = inv.cluster_points.iter().find(|p| p.name == *name) {
                if scope.is_some() {
                    return Err(Error::Usage(format!(
                        "{name:?} is a cluster restore point: delete it without --content-id (its instances' points go with it)"
                    )));
                }
                if let Some(c) = inv.cluster_backups.iter().find(|c| {
                    c.restore_point == *name && !delete.contains(&Unit::Cluster(c.name.clone()))
                }) {
                    return Err(Error::Usage(format!(
                        "restore point {name:?} is where cluster backup {} is restored to: delete that backup (`cbdr delete target {}`) instead",
                        c.name, c.name
                    )));
                }
                if let Some(holder) = point_leased(cp) {
                    return Err(Error::Usage(format!(
                        "restore point {name:?} is in use ({holder}): wait until that finishes, then retry"
                    )));
                }
                deleted_cluster_points.insert(name.clone());
                for s in &cp.segments {
                    deleted_points.insert((s.content_id, name.clone()));
                }
            } else {
                for (id, i) in &inv.instances {
                    if scope.is_some_and(|s| s != *id) {
                        continue;
                    }
                    if i.points.iter().any(|p| p.name == *name) {
                        if let Some(holder) = protected.points.get(&(*id, name.clone())) {
                            return Err(Error::Usage(format!(
                                "restore point {name:?} of content id {id} is in use ({holder}): wait until that finishes, then retry"
                            )));
                        }
                        deleted_points.insert((*id, name.clone()));
                    }
                }
                if deleted_points.is_empty() {
                    return Err(Error::Usage(format!(
                        "there is no restore point {name:?}{}: `cbdr list` shows the restore points",
                        scope.map(|s| format!(" on content id {s}")).unwrap_or_default()
                    )));
                }
            }
        }
        _ => {
            if scope.is_none() {
                for cp in &inv.cluster_points {
                    if kept_cluster_points.contains(&cp.name) || point_leased(cp).is_some() {
                        continue;
                    }
                    let served = !cp.segments.is_empty()
                        && cp.segments.iter().all(|s| {
                            kept_backups(s.content_id)
                                .iter()
                                .any(|b| serves(b, s.lsn, s.timeline))
                        });
                    if !served {
                        deleted_cluster_points.insert(cp.name.clone());
                        for s in &cp.segments {
                            deleted_points.insert((s.content_id, cp.name.clone()));
                        }
                    }
                }
            }
            let cluster_names: BTreeSet<&str> =
                inv.cluster_points.iter().map(|p| p.name.as_str()).collect();
            for (id, i) in &inv.instances {
                if scope.is_some_and(|s| s != *id) {
                    continue;
                }
                let kept = kept_backups(*id);
                for p in &i.points {
                    // A cluster point's instance points go with it.
                    if cluster_names.contains(p.name.as_str())
                        || protected.points.contains_key(&(*id, p.name.clone()))
                    {
                        continue;
                    }
                    if !kept.iter().any(|b| serves(b, p.lsn, p.timeline)) {
                        deleted_points.insert((*id, p.name.clone()));
                    }
                }
            }
        }
    }
    plan.cluster_restore_points = deleted_cluster_points.into_iter().collect();

    // 5. Per instance: backups, points, WAL.
    for (id, i) in &inv.instances {
        if scope.is_some_and(|s| s != *id) {
            continue;
        }
        let mut ip = InstancePlan {
            content_id: *id,
            ..InstancePlan::default()
        };
        let mut backups: Vec<&BackupRecord> = i.backups.iter().collect();
        backups.sort_by_key(|b| (b.stop_lsn, b.stop_time));
        for b in &backups {
            if goes(*id, b) {
                ip.backups.push(PlannedBackup {
                    name: b.name.clone(),
                    stop_time: b.stop_time,
                    stored_bytes: b.stored_bytes(),
                });
            }
        }
        let kept: Vec<&BackupRecord> = backups.iter().copied().filter(|b| !goes(*id, b)).collect();
        let kept_points: Vec<&RestorePointRecord> = i
            .points
            .iter()
            .filter(|p| !deleted_points.contains(&(*id, p.name.clone())))
            .collect();
        ip.restore_points = i
            .points
            .iter()
            .filter(|p| deleted_points.contains(&(*id, p.name.clone())))
            .map(|p| p.name.clone())
            .collect();
        ip.restore_points.sort();
        let everything = matches!(sel, Selection::Everything { .. });
        if kept.is_empty() {
            if everything {
                let (wal, history) = wal_to_delete(&i.wal, i.segment_size, None, None);
                ip.wal = wal;
                ip.history = history;
            } else if !i.wal.is_empty() && !matches!(sel, Selection::RestorePoint(_)) {
                kept_notes.push(format!(
                    "the WAL of content id {id} stays: no backup of it is kept, so nothing tells which WAL is old"
                ));
            }
        } else {
            let mut ranges: Vec<Range> = Vec::new();
            for b in &kept {
                let tail = keeps_tail(*id, b);
                ranges.push(Range {
                    from: (b.timeline, b.start_lsn),
                    // Not a tail: to the segment after the stop's, where
                    // recovery reads the record that follows the backup's
                    // end (after the stop's WAL switch).
                    to: if tail {
                        (TimelineId(u32::MAX), Lsn(u64::MAX))
                    } else {
                        (b.stop_timeline.max(b.timeline), b.stop_lsn + i.segment_size)
                    },
                });
            }
            for p in &kept_points {
                if let Some(b) = kept.iter().rev().find(|b| serves(b, p.lsn, p.timeline)) {
                    ranges.push(Range {
                        from: (b.timeline, b.start_lsn),
                        to: (p.timeline, p.lsn),
                    });
                }
            }
            let grace = match sel {
                Selection::Garbage { grace } => Some((now, *grace)),
                _ => None,
            };
            ip.wal = wal_to_delete(&i.wal, i.segment_size, Some(&ranges), grace).0;
        }
        if !ip.is_empty() {
            plan.instances.push(ip);
        }
    }
    kept_notes.sort();
    kept_notes.dedup();
    plan.kept = kept_notes;
    Ok(plan)
}

/// The WAL one recovery may read: from its start to its end, each a
/// (timeline, LSN).
#[derive(Debug, Clone, Copy)]
struct Range {
    from: (TimelineId, Lsn),
    to: (TimelineId, Lsn),
}

impl Range {
    fn needs(&self, s: WalSegmentName, size: u64) -> bool {
        let start = s.start_lsn(size);
        let end = start.0.saturating_add(size);
        self.from.0 <= s.timeline
            && s.timeline <= self.to.0
            && end > self.from.1 .0
            && start <= self.to.1
    }
}

/// The WAL files not needed by any of `ranges` (`None`: none is needed),
/// in runs per timeline, and the history files (only when nothing is
/// needed). Files younger than `grace` (and every file run they split)
/// stay; so do names that are not WAL.
fn wal_to_delete(
    wal: &[WalObject],
    size: u64,
    ranges: Option<&[Range]>,
    grace: Option<(DateTime<Utc>, std::time::Duration)>,
) -> (Vec<WalRange>, Vec<String>) {
    let young = |o: &WalObject| match (grace, o.modified) {
        (Some((now, g)), Some(m)) => DateTime::<Utc>::from(m) + g > now,
        (Some(_), None) => false,
        (None, _) => false,
    };
    let mut by_tli: BTreeMap<TimelineId, Vec<(WalSegmentName, &WalObject)>> = BTreeMap::new();
    let mut history = Vec::new();
    for o in wal {
        match WalFile::parse(&o.name) {
            Some(WalFile::History(_)) if ranges.is_none() && !young(o) => {
                history.push(o.name.clone());
            }
            Some(WalFile::History(_)) => {}
            Some(f) => {
                let s = f.segment().expect("not a history file");
                by_tli.entry(s.timeline).or_default().push((s, o));
            }
            None => {}
        }
    }
    let mut out = Vec::new();
    for (tli, mut files) in by_tli {
        files.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.name.cmp(&b.1.name)));
        let mut run: Option<WalRange> = None;
        for (s, o) in files {
            let needed = young(o) || ranges.is_some_and(|rs| rs.iter().any(|r| r.needs(s, size)));
            if needed {
                out.extend(run.take());
                continue;
            }
            let name = s.to_string();
            match &mut run {
                Some(r) => {
                    r.last = name;
                    r.files += 1;
                    r.bytes += o.size;
                }
                None => {
                    run = Some(WalRange {
                        timeline: tli,
                        first: name.clone(),
                        last: name,
                        files: 1,
                        bytes: o.size,
                    })
                }
            }
        }
        out.extend(run);
    }
    history.sort();
    (out, history)
}

/// The chain of `u`: its base, the base's base... (not `u` itself); stops
/// at a base the repository does not hold, and at a loop.
fn chain(by_unit: &BTreeMap<Unit, &UnitInfo>, u: &Unit) -> Vec<Unit> {
    let mut out = Vec::new();
    let mut at = by_unit.get(u).and_then(|i| i.base.clone());
    while let Some(b) = at {
        if out.contains(&b) || &b == u {
            break;
        }
        at = by_unit.get(&b).and_then(|i| i.base.clone());
        if by_unit.contains_key(&b) {
            out.push(b);
        }
    }
    out
}

/// The series and position of the backup `name`.
fn find_unit(series: &[Vec<UnitInfo>], name: &str) -> Result<(usize, usize)> {
    let found: Vec<(usize, usize)> = series
        .iter()
        .enumerate()
        .flat_map(|(s, v)| {
            v.iter()
                .enumerate()
                .filter(|(_, u)| u.unit.name() == name)
                .map(move |(i, _)| (s, i))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::Usage(format!(
            "there is no backup {name:?} here: `cbdr list` shows the backups (a backup that belongs to a cluster backup is deleted with it: name the cluster backup, without --content-id)"
        ))),
        _ => Err(Error::Usage(format!(
            "backup name {name:?} is on several instances: give --content-id N"
        ))),
    }
}

#[cfg(test)]
mod tests;
