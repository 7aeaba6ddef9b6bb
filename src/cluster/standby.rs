//! A disaster-recovery (standby) cluster that follows the primary from
//! cluster restore point to cluster restore point.
//!
//! `restore --standby` restores every instance to a cluster restore point
//! with `recovery_target_action = pause` and `hot_standby = on`: each
//! instance replays its own WAL from the primary's archive and pauses at
//! the same point, where the barrier made the cluster consistent, so
//! read-only queries see exactly the primary's committed state there.
//! [`advance`] moves every instance to a later point (a target rewrite
//! and a restart through each agent, in parallel: PostgreSQL reads the
//! target only at start), refusing a point whose WAL is not archived on
//! every instance or that some instance has replayed past. [`promote`]
//! ends recovery at the common point, segments before the coordinator,
//! then settles the prepared transactions left in doubt.
//!
//! The standby's record (`standby/{NAME}.json` in the primary's
//! repository) says where its instances are and where they were sent;
//! leases (`leases/standby-{NAME}-seg{ID}.json`) keep retention on the
//! primary from deleting the backups and WAL it still needs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

use super::catalog::{ClusterRestorePoint, SegmentPoint};
use super::client::AgentClient;
use super::proto::StandbyRequest;
use super::restore::RestoreTarget;
use super::restore_point::in_segment;
use super::topology::Segment;
use crate::config::{ClusterConfig, Config};
use crate::error::{Error, PgResultExt, Result};
use crate::pg::conn::{ConnParams, PgConn, Replication};
use crate::pg::recovery::{replay_state, resume_replay, ReplayState};
use crate::pg::{Lsn, TimelineId, WalFile, WalSegmentName};
use crate::repo::catalog::validate_restore_point_name;
use crate::repo::{layout, lease, Repo};

/// How long a standby's lease lasts: renewed by every `advance` (and so
/// by `follow`); a standby left alone longer is no longer protected from
/// retention on the primary.
pub const STANDBY_LEASE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The standby name when none is given.
pub const DEFAULT_NAME: &str = "dr";

/// Where a standby cluster is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StandbyState {
    /// Every instance was sent to this point (and, once running, pauses
    /// there).
    AtPoint { point: String },
    /// An advance from one point to another started and has not finished
    /// on every instance (it failed, or is running): instances may be at
    /// either point, or replaying between them.
    Moving { from: String, to: String },
    /// Recovery ended at this point on every instance.
    Promoted { point: String, time: DateTime<Utc> },
}

impl StandbyState {
    /// The point instances are at or going to.
    pub fn point(&self) -> &str {
        match self {
            StandbyState::AtPoint { point } | StandbyState::Promoted { point, .. } => point,
            StandbyState::Moving { to, .. } => to,
        }
    }
}

/// One instance of a standby cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyInstance {
    pub content_id: i32,
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// The `cbdr agent` on its host.
    pub agent: String,
    /// The primary's backup it was restored from.
    pub backup: String,
    pub wal_segment_size: u64,
}

impl StandbyInstance {
    fn segment(&self) -> Segment {
        Segment {
            content_id: self.content_id,
            host: self.host.clone(),
            port: self.port,
            data_dir: self.data_dir.clone(),
            agent: self.agent.clone(),
        }
    }

    fn target(&self) -> RestoreTarget {
        RestoreTarget {
            content_id: self.content_id,
            host: self.host.clone(),
            port: self.port,
            data_dir: self.data_dir.clone(),
            agent: Some(self.agent.clone()),
            dbid: None,
            tablespace_map: Default::default(),
        }
    }
}

/// `standby/{NAME}.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyRecord {
    pub name: String,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    #[serde(flatten)]
    pub state: StandbyState,
    /// Coordinator first, then by content id.
    pub instances: Vec<StandbyInstance>,
}

/// The standby name, checked like a restore point name (it is part of
/// object names).
pub fn validate_name(name: &str) -> Result<()> {
    validate_restore_point_name(name).map_err(|_| {
        Error::Usage(format!(
            "invalid standby name {name:?}: use 1 to 63 letters, digits, '_', '-' or '.', not starting with '.'"
        ))
    })
}

pub async fn load(repo: &Repo, name: &str) -> Result<StandbyRecord> {
    validate_name(name)?;
    repo.get_json(&layout::standby_key(name))
        .await
        .map_err(|e| match e {
            Error::Storage(s) if s.is_not_found() => Error::NotFound(format!(
                "no standby cluster named {name:?} in the repository: restore one with `cbdr restore --restore-config FILE --restore-point NAME --standby --start` (or give --name)"
            )),
            other => other,
        })
}

/// Every standby record (for `list --json`); unreadable ones are logged.
pub async fn list(repo: &Repo) -> Result<Vec<StandbyRecord>> {
    let mut out = Vec::new();
    for o in repo.storage.list(layout::STANDBYS_PREFIX).await? {
        match repo.get_json::<StandbyRecord>(&o.key).await {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("skipping the unreadable standby record {}: {e}", o.key),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

async fn save(repo: &Repo, record: &mut StandbyRecord) -> Result<()> {
    record.updated = Utc::now();
    repo.put_json(&layout::standby_key(&record.name), record)
        .await
}

fn lease_id(name: &str, content_id: i32) -> String {
    format!("standby-{name}-seg{content_id}")
}

/// Takes or renews the standby's leases: each instance's backup and the
/// point it is at (retention then keeps the WAL from that backup on).
async fn renew_leases(repo: &Repo, record: &StandbyRecord) -> Result<()> {
    for i in &record.instances {
        lease::hold(
            repo,
            &lease_id(&record.name, i.content_id),
            format!("standby cluster {} (on {})", record.name, lease::hostname()),
            i.content_id,
            &i.backup,
            Some(record.state.point()),
            STANDBY_LEASE,
        )
        .await?;
    }
    Ok(())
}

async fn release_leases(repo: &Repo, record: &StandbyRecord) {
    for i in &record.instances {
        let key = layout::lease_key(&lease_id(&record.name, i.content_id));
        if let Err(e) = repo.storage.delete(&key).await {
            tracing::warn!("could not remove the lease {key} (it expires by itself): {e}");
        }
    }
}

/// Records a standby restored by `restore --standby` and takes its leases.
pub async fn create(
    repo: &Repo,
    name: &str,
    point: &str,
    instances: Vec<StandbyInstance>,
) -> Result<StandbyRecord> {
    let now = Utc::now();
    let mut record = StandbyRecord {
        name: name.to_string(),
        created: now,
        updated: now,
        state: StandbyState::AtPoint {
            point: point.to_string(),
        },
        instances,
    };
    save(repo, &mut record).await?;
    renew_leases(repo, &record).await?;
    Ok(record)
}

/// How cbdr reaches the standby's instances.
#[derive(Debug, Clone)]
pub struct StandbyOptions {
    pub connect_timeout: Duration,
    /// How long an instance may take to replay to the next point.
    pub replay_timeout: Duration,
}

/// One instance as `status` sees it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceStatus {
    pub content_id: i32,
    pub host: String,
    pub port: u16,
    /// Why it could not be asked (down, refusing connections...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
    pub in_recovery: Option<bool>,
    pub paused: Option<bool>,
    pub replay_lsn: Option<Lsn>,
    pub replay_time: Option<String>,
    /// The restore point it is paused at (paused, told to stop there, and
    /// replayed up to it).
    pub at_point: Option<String>,
    /// WAL bytes the archive holds beyond its replay position.
    pub lag_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StandbyStatus {
    pub record: StandbyRecord,
    pub instances: Vec<InstanceStatus>,
    /// The point every instance is paused at (queries see the primary's
    /// committed state there); `None` while they differ or move.
    pub common_point: Option<String>,
    /// The newest cluster restore point whose WAL every instance's archive
    /// holds: where `advance --latest` goes.
    pub newest_ready: Option<String>,
}

fn params(i: &StandbyInstance, cfg: &ClusterConfig, timeout: Duration) -> Result<ConnParams> {
    let mut p = super::restore::params(&i.target(), cfg)?;
    p.connect_timeout = timeout;
    Ok(p)
}

/// [`read_state`] of every instance of the standby, at once, in the
/// record's order.
async fn read_states(
    record: &StandbyRecord,
    cfg: &ClusterConfig,
    timeout: Duration,
) -> Vec<Result<ReplayState>> {
    join_all(record.instances.iter().map(|i| read_state(i, cfg, timeout))).await
}

async fn read_state(
    i: &StandbyInstance,
    cfg: &ClusterConfig,
    timeout: Duration,
) -> Result<ReplayState> {
    let mut c = PgConn::connect(&params(i, cfg, timeout)?, Replication::Off)
        .await
        .context("connecting to the standby instance")
        .map_err(|e| in_segment(&i.segment(), e))?;
    let s = replay_state(&mut c)
        .await
        .context("reading where replay is")
        .map_err(|e| in_segment(&i.segment(), e));
    c.close().await;
    s
}

/// The archive's last segment per timeline of every instance.
async fn archive_ends(
    repo: &Repo,
    record: &StandbyRecord,
) -> Result<BTreeMap<i32, BTreeMap<TimelineId, WalSegmentName>>> {
    let mut out = BTreeMap::new();
    for i in &record.instances {
        out.insert(
            i.content_id,
            crate::physical::start::archive_ends(repo, i.content_id).await?,
        );
    }
    Ok(out)
}

fn point_of(point: &ClusterRestorePoint, content_id: i32) -> Option<&SegmentPoint> {
    point.segments.iter().find(|s| s.content_id == content_id)
}

/// Whether the archive holds the segment of every instance's point (the
/// points before it are checked segment by segment by [`advance`]).
fn archived_everywhere(
    point: &ClusterRestorePoint,
    record: &StandbyRecord,
    ends: &BTreeMap<i32, BTreeMap<TimelineId, WalSegmentName>>,
) -> bool {
    record.instances.iter().all(|i| {
        let Some(p) = point_of(point, i.content_id) else {
            return false;
        };
        let need = WalSegmentName::from_lsn(p.timeline, p.lsn, i.wal_segment_size);
        ends.get(&i.content_id)
            .and_then(|e| e.get(&p.timeline))
            .is_some_and(|last| *last >= need)
    })
}

pub async fn status(
    repo: &Repo,
    config: &Config,
    name: &str,
    opts: &StandbyOptions,
) -> Result<StandbyStatus> {
    let record = load(repo, name).await?;
    let points = repo.cluster_restore_points().await?;
    let by_name: BTreeMap<&str, &ClusterRestorePoint> =
        points.iter().map(|p| (p.name.as_str(), p)).collect();
    let ends = archive_ends(repo, &record).await?;
    let states = read_states(&record, &config.cluster, opts.connect_timeout).await;
    let mut instances = Vec::new();
    for (i, state) in record.instances.iter().zip(states) {
        let mut s = InstanceStatus {
            content_id: i.content_id,
            host: i.host.clone(),
            port: i.port,
            unreachable: None,
            in_recovery: None,
            paused: None,
            replay_lsn: None,
            replay_time: None,
            at_point: None,
            lag_bytes: None,
        };
        match state {
            Err(e) => s.unreachable = Some(e.to_string()),
            Ok(r) => {
                s.at_point = at_point(&r, i.content_id, &by_name);
                s.lag_bytes = r.replay_lsn.and_then(|lsn| {
                    let tl = by_name
                        .get(record.state.point())
                        .and_then(|p| point_of(p, i.content_id))
                        .map(|p| p.timeline)?;
                    let last = ends.get(&i.content_id)?.get(&tl)?;
                    let end = last.start_lsn(i.wal_segment_size).0 + i.wal_segment_size;
                    Some(end.saturating_sub(lsn.0))
                });
                s.in_recovery = Some(r.in_recovery);
                s.paused = Some(r.paused);
                s.replay_lsn = r.replay_lsn;
                s.replay_time = r.replay_time;
            }
        }
        instances.push(s);
    }
    let first = instances.first().and_then(|s| s.at_point.clone());
    let common_point = first.filter(|p| {
        instances
            .iter()
            .all(|s| s.at_point.as_deref() == Some(p.as_str()))
    });
    let newest_ready = points
        .iter()
        .rev()
        .find(|p| archived_everywhere(p, &record, &ends))
        .map(|p| p.name.clone());
    Ok(StandbyStatus {
        record,
        instances,
        common_point,
        newest_ready,
    })
}

/// The point an instance is paused at: paused in recovery, told to stop
/// at a known point, and replayed up to it.
fn at_point(
    r: &ReplayState,
    content_id: i32,
    points: &BTreeMap<&str, &ClusterRestorePoint>,
) -> Option<String> {
    if !(r.in_recovery && r.paused) {
        return None;
    }
    let p = points.get(r.target_name.as_str())?;
    let sp = point_of(p, content_id)?;
    (r.replay_lsn? >= sp.lsn).then(|| p.name.clone())
}

/// Where `advance` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdvanceTarget {
    /// The newest cluster restore point whose WAL every instance's archive
    /// holds.
    Latest,
    RestorePoint(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advanced {
    /// Every instance is now paused at this point.
    Moved {
        from: String,
        to: String,
        /// Instances that were restarted (the others were there already).
        restarted: usize,
        elapsed: Duration,
    },
    /// Every instance was at the point already.
    AlreadyThere(String),
}

/// Moves every instance of the standby to a later cluster restore point
/// and waits until all are paused there.
pub async fn advance(
    repo: &Repo,
    config: &Config,
    name: &str,
    target: &AdvanceTarget,
    opts: &StandbyOptions,
) -> Result<Advanced> {
    let started = Instant::now();
    let mut record = load(repo, name).await?;
    if let StandbyState::Promoted { point, .. } = &record.state {
        return Err(Error::Usage(format!(
            "standby cluster {name} was promoted at restore point {point}: it no longer follows the primary (restore a new standby to follow again)"
        )));
    }
    let points = repo.cluster_restore_points().await?;
    let ends = archive_ends(repo, &record).await?;
    let to = match target {
        AdvanceTarget::RestorePoint(n) => repo.cluster_restore_point(n).await?,
        AdvanceTarget::Latest => match points
            .iter()
            .rev()
            .find(|p| archived_everywhere(p, &record, &ends))
        {
            Some(p) => p.clone(),
            None => return Ok(Advanced::AlreadyThere(record.state.point().to_string())),
        },
    };
    let from_name = match &record.state {
        StandbyState::Moving { from, .. } => from.clone(),
        s => s.point().to_string(),
    };
    let from = repo.cluster_restore_point(&from_name).await.ok();
    // Where each instance is now (an unreachable one is started by its
    // agent, and replays from where it stopped).
    let states = read_states(&record, &config.cluster, opts.connect_timeout).await;
    let mut moving = Vec::new();
    for (i, state) in record.instances.iter().zip(&states) {
        let p = point_of(&to, i.content_id).ok_or_else(|| {
            Error::Usage(format!(
                "cluster restore point {} has no point on content id {}: it was made on another topology",
                to.name, i.content_id
            ))
        })?;
        if let Some(f) = from.as_ref().and_then(|f| point_of(f, i.content_id)) {
            if f.timeline != p.timeline {
                return Err(Error::Usage(format!(
                    "cluster restore point {} is on timeline {} of content id {}, the standby on timeline {}: a standby follows one timeline; restore a new standby from a backup of the new timeline",
                    to.name, p.timeline, i.content_id, f.timeline
                )));
            }
        }
        if let Ok(s) = state {
            if let Some(lsn) = s.replay_lsn.filter(|l| *l > p.lsn) {
                return Err(Error::Usage(format!(
                    "content id {} has replayed to {lsn}, past restore point {} (at {} there): a standby cannot go back; pick a later point (`cbdr standby status` shows where it is), or restore again to go to an older one",
                    i.content_id, to.name, p.lsn
                )));
            }
            if at_point_named(s, p, &to.name) {
                continue;
            }
        }
        moving.push(i.clone());
    }
    // Never move an instance unless every one can reach the point.
    let mut missing = Vec::new();
    for i in &record.instances {
        let p = point_of(&to, i.content_id).expect("checked above");
        let first = from
            .as_ref()
            .and_then(|f| point_of(f, i.content_id))
            .map(|f| f.lsn)
            .unwrap_or(p.lsn);
        if let Some(seg) = missing_segment(repo, i, p.timeline, first, p.lsn).await? {
            missing.push(format!(
                "content id {} lacks WAL segment {seg} (needed to reach {} at {})",
                i.content_id, to.name, p.lsn
            ));
        }
    }
    if !missing.is_empty() {
        return Err(Error::NotFound(format!(
            "refusing to advance standby cluster {name} to {}: {}. No instance was moved. Wait until that WAL is archived (archive_timeout on the primary), or check archiving there (`cbdr check`)",
            to.name,
            missing.join("; ")
        )));
    }
    if moving.is_empty() {
        if record.state
            != (StandbyState::AtPoint {
                point: to.name.clone(),
            })
        {
            record.state = StandbyState::AtPoint {
                point: to.name.clone(),
            };
            save(repo, &mut record).await?;
        }
        renew_leases(repo, &record).await?;
        return Ok(Advanced::AlreadyThere(to.name.clone()));
    }
    record.state = StandbyState::Moving {
        from: from_name.clone(),
        to: to.name.clone(),
    };
    save(repo, &mut record).await?;
    renew_leases(repo, &record).await?;
    tracing::info!(
        "advancing standby cluster {name} from {from_name} to {} ({} instances to restart)",
        to.name,
        moving.len()
    );
    let results = join_all(moving.iter().map(|i| {
        let point = to.name.clone();
        async move {
            let seg = i.segment();
            let client = AgentClient::connect(&i.agent, &config.agent, opts.connect_timeout)
                .await
                .map_err(|e| in_segment(&seg, e))?;
            let req = StandbyRequest {
                content_id: i.content_id,
                data_dir: i.data_dir.display().to_string(),
                restore_point: point,
                timeout_secs: opts.replay_timeout.as_secs(),
            };
            let silence = opts.replay_timeout + Duration::from_secs(30);
            client
                .standby(req, silence, |_| {})
                .await
                .map_err(|e| in_segment(&seg, e))
        }
    }))
    .await;
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    if !failed.is_empty() {
        let exit_code = results
            .iter()
            .find_map(|r| r.as_ref().err().map(Error::exit_code))
            .expect("one failed");
        return Err(Error::Summary {
            message: format!(
                "advancing standby cluster {name} to {} failed on {} of the {} instances it moved ({}). The others are paused at {}; queries may now see different points on different instances. Run `cbdr standby advance --restore-point {}` again once the cause is fixed: instances already there are left alone",
                to.name,
                failed.len(),
                moving.len(),
                failed.join("; "),
                to.name,
                to.name
            ),
            exit_code,
        });
    }
    // Check what the servers say, not only what the agents said.
    for i in &record.instances {
        let p = point_of(&to, i.content_id).expect("checked above");
        let s = read_state(i, &config.cluster, opts.connect_timeout).await?;
        if !at_point_named(&s, p, &to.name) {
            return Err(in_segment(
                &i.segment(),
                Error::Server(format!(
                    "after the move it is not paused at {} (in recovery: {}, paused: {}, replayed to {:?}, target {:?})",
                    to.name, s.in_recovery, s.paused, s.replay_lsn, s.target_name
                )),
            ));
        }
    }
    record.state = StandbyState::AtPoint {
        point: to.name.clone(),
    };
    save(repo, &mut record).await?;
    renew_leases(repo, &record).await?;
    Ok(Advanced::Moved {
        from: from_name,
        to: to.name.clone(),
        restarted: moving.len(),
        elapsed: started.elapsed(),
    })
}

fn at_point_named(s: &ReplayState, p: &SegmentPoint, name: &str) -> bool {
    s.in_recovery && s.paused && s.target_name == name && s.replay_lsn.is_some_and(|l| l >= p.lsn)
}

/// The first WAL segment from the one holding `from` to the one holding
/// `to` (on `timeline`) that the instance's archive lacks.
async fn missing_segment(
    repo: &Repo,
    i: &StandbyInstance,
    timeline: TimelineId,
    from: Lsn,
    to: Lsn,
) -> Result<Option<WalSegmentName>> {
    let size = i.wal_segment_size;
    let first = WalSegmentName::from_lsn(timeline, from.min(to), size);
    let last = WalSegmentName::from_lsn(timeline, to, size);
    let mut have = std::collections::BTreeSet::new();
    let mut group = None;
    let mut seg = first;
    loop {
        // One listing per group of segments (a WAL "log" directory).
        if group.as_deref() != Some(seg.group().as_str()) {
            let g = seg.group();
            let prefix = format!("{}{g}/", layout::wal_prefix(i.content_id));
            for o in repo.storage.list(&prefix).await? {
                if let Some(WalFile::Segment(s)) =
                    WalFile::parse(o.key.rsplit('/').next().unwrap_or(""))
                {
                    if s >= first && s <= last {
                        have.insert(s);
                    }
                }
            }
            group = Some(g);
        }
        if !have.contains(&seg) {
            return Ok(Some(seg));
        }
        if seg >= last {
            return Ok(None);
        }
        seg = seg.next(size);
    }
}

#[derive(Debug)]
pub struct Promoted {
    pub point: String,
    /// Prepared transactions found in doubt: (content id, gid).
    pub in_doubt: Vec<(i32, String)>,
    pub rolled_back: bool,
}

/// Ends recovery on every instance at the common point (segments first,
/// then the coordinator), then finds the prepared transactions left in
/// doubt and, with `rollback`, rolls them back.
pub async fn promote(
    repo: &Repo,
    config: &Config,
    name: &str,
    point: Option<&str>,
    rollback: bool,
    opts: &StandbyOptions,
) -> Result<Promoted> {
    if let Some(p) = point {
        advance(
            repo,
            config,
            name,
            &AdvanceTarget::RestorePoint(p.to_string()),
            opts,
        )
        .await?;
    }
    let st = status(repo, config, name, opts).await?;
    let mut record = st.record;
    if let StandbyState::Promoted { point, .. } = &record.state {
        return Err(Error::Usage(format!(
            "standby cluster {name} was promoted already, at restore point {point}"
        )));
    }
    let Some(common) = st.common_point else {
        let where_: Vec<String> = st
            .instances
            .iter()
            .map(|s| {
                format!(
                    "content {}: {}",
                    s.content_id,
                    s.at_point
                        .clone()
                        .or(s.unreachable.clone())
                        .unwrap_or_else(|| "not paused at a restore point".into())
                )
            })
            .collect();
        return Err(Error::Usage(format!(
            "the instances of standby cluster {name} are not all paused at one restore point ({}): run `cbdr standby advance --restore-point {}` first, so that every instance ends recovery at the same point",
            where_.join(", "),
            record.state.point()
        )));
    };
    let (segments, coordinator): (Vec<&StandbyInstance>, Vec<&StandbyInstance>) = record
        .instances
        .iter()
        .partition(|i| i.content_id != super::topology::COORDINATOR);
    for group in [segments, coordinator] {
        let done = join_all(group.iter().map(|i| end_recovery(i, config, opts))).await;
        done.into_iter().collect::<Result<Vec<()>>>()?;
    }
    let pairs: Vec<(Segment, RestoreTarget)> = record
        .instances
        .iter()
        .map(|i| (i.segment(), i.target()))
        .collect();
    let in_doubt = super::restore::in_doubt(&pairs, &config.cluster).await?;
    let mut rolled_back = false;
    if rollback && !in_doubt.is_empty() {
        super::restore::rollback(&pairs, &config.cluster, &in_doubt).await?;
        rolled_back = true;
    }
    record.state = StandbyState::Promoted {
        point: common.clone(),
        time: Utc::now(),
    };
    save(repo, &mut record).await?;
    release_leases(repo, &record).await;
    Ok(Promoted {
        point: common,
        in_doubt,
        rolled_back,
    })
}

/// `pg_wal_replay_resume()` on an instance paused at its target, then
/// waits until it is out of recovery.
async fn end_recovery(i: &StandbyInstance, config: &Config, opts: &StandbyOptions) -> Result<()> {
    let seg = i.segment();
    let p = params(i, &config.cluster, opts.connect_timeout)?;
    let mut c = PgConn::connect(&p, Replication::Off)
        .await
        .context("connecting to end recovery")
        .map_err(|e| in_segment(&seg, e))?;
    resume_replay(&mut c)
        .await
        .context("ending recovery (pg_wal_replay_resume)")
        .map_err(|e| in_segment(&seg, e))?;
    c.close().await;
    let deadline = Instant::now() + opts.replay_timeout;
    loop {
        // The promotion ends every connection's snapshot: ask anew.
        match read_state(i, &config.cluster, opts.connect_timeout).await {
            Ok(s) if !s.in_recovery => return Ok(()),
            Ok(_) | Err(_) if Instant::now() < deadline => {}
            Ok(s) => {
                return Err(in_segment(
                    &seg,
                    Error::Server(format!(
                        "still in recovery {} s after pg_wal_replay_resume() (replayed to {:?})",
                        opts.replay_timeout.as_secs(),
                        s.replay_lsn
                    )),
                ))
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What one round of [`follow`] did.
#[derive(Debug)]
pub enum FollowEvent {
    Advanced(Advanced),
    /// The advance failed; the next round tries again.
    Failed(Error),
}

/// Advances to every new cluster restore point as it appears, every
/// `interval`, until `stop` is set (checked between rounds: an advance
/// under way is finished first, so the instances are never left at
/// different points by a stop). A failed round (an agent or instance
/// down, the primary's archive behind) is reported and retried.
pub async fn follow(
    repo: &Repo,
    config: &Config,
    name: &str,
    interval: Duration,
    opts: &StandbyOptions,
    stop: &AtomicBool,
    mut on_event: impl FnMut(&FollowEvent),
) -> Result<()> {
    // Refuse a missing or promoted standby at once.
    let record = load(repo, name).await?;
    if let StandbyState::Promoted { point, .. } = &record.state {
        return Err(Error::Usage(format!(
            "standby cluster {name} was promoted at restore point {point}: there is nothing to follow"
        )));
    }
    while !stop.load(Ordering::SeqCst) {
        let event = match advance(repo, config, name, &AdvanceTarget::Latest, opts).await {
            Ok(a) => FollowEvent::Advanced(a),
            Err(e) => FollowEvent::Failed(e),
        };
        on_event(&event);
        let deadline = Instant::now() + interval;
        while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100).min(interval)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(paused: bool, lsn: u64, target: &str) -> ReplayState {
        ReplayState {
            in_recovery: true,
            paused,
            replay_lsn: Some(Lsn(lsn)),
            replay_time: None,
            target_name: target.into(),
        }
    }

    fn point(name: &str, lsn: u64) -> ClusterRestorePoint {
        ClusterRestorePoint {
            name: name.into(),
            time: Utc::now(),
            barrier: super::super::catalog::Barrier::AdvisoryLock { key: 1 },
            barrier_millis: 0,
            segments: vec![SegmentPoint {
                content_id: -1,
                lsn: Lsn(lsn),
                timeline: TimelineId(1),
            }],
        }
    }

    #[test]
    fn an_instance_is_at_a_point_once_paused_there() {
        let p1 = point("p1", 100);
        let points: BTreeMap<&str, &ClusterRestorePoint> = [("p1", &p1)].into_iter().collect();
        assert_eq!(
            at_point(&state(true, 100, "p1"), -1, &points),
            Some("p1".into())
        );
        // Replaying towards it, or paused short of it: not there.
        assert_eq!(at_point(&state(false, 100, "p1"), -1, &points), None);
        assert_eq!(at_point(&state(true, 99, "p1"), -1, &points), None);
        // A target nobody recorded, or another instance's point.
        assert_eq!(at_point(&state(true, 100, "p9"), -1, &points), None);
        assert_eq!(at_point(&state(true, 100, "p1"), 3, &points), None);
        let mut promoted = state(true, 100, "p1");
        promoted.in_recovery = false;
        assert_eq!(at_point(&promoted, -1, &points), None);
    }

    #[test]
    fn a_point_is_ready_once_every_archive_holds_its_segment() {
        let mb = 1u64 << 20;
        let record = StandbyRecord {
            name: "dr".into(),
            created: Utc::now(),
            updated: Utc::now(),
            state: StandbyState::AtPoint { point: "p0".into() },
            instances: vec![StandbyInstance {
                content_id: -1,
                host: "h".into(),
                port: 1,
                data_dir: "/d".into(),
                agent: "h:2".into(),
                backup: "b".into(),
                wal_segment_size: mb,
            }],
        };
        let p = point("p1", 5 * mb + 10);
        let ends = |last: u64| {
            let seg = WalSegmentName::from_lsn(TimelineId(1), Lsn(last * mb), mb);
            [(-1, [(TimelineId(1), seg)].into_iter().collect())]
                .into_iter()
                .collect()
        };
        assert!(!archived_everywhere(&p, &record, &ends(4)));
        assert!(archived_everywhere(&p, &record, &ends(5)));
        assert!(archived_everywhere(&p, &record, &ends(9)));
        let other_topology = ClusterRestorePoint {
            segments: vec![],
            ..p.clone()
        };
        assert!(!archived_everywhere(&other_topology, &record, &ends(9)));
    }

    #[test]
    fn the_record_reads_back_with_its_state() {
        let r = StandbyRecord {
            name: "dr".into(),
            created: Utc::now(),
            updated: Utc::now(),
            state: StandbyState::Moving {
                from: "a".into(),
                to: "b".into(),
            },
            instances: vec![],
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""state":"moving""#), "{text}");
        let back: StandbyRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.state.point(), "b");
        assert!(validate_name("dr-east.1").is_ok());
        assert!(validate_name("../x").is_err());
    }
}
