//! Cluster `restore`: every instance restored by its agent, in parallel,
//! into the directories of a restore config, each recovering to the same
//! cluster restore point; then, with `--start`, the prepared transactions
//! left in doubt at the point (committed nowhere, by the barrier) are
//! reported and can be rolled back on every instance.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, FixedOffset};
use futures_util::future::try_join_all;
use serde::{Deserialize, Serialize};

use super::catalog::ClusterRestorePoint;
use super::client::AgentClient;
use super::proto::{Progress, RecoveryAction, RecoveryTargetSpec, RestoreDone, RestoreRequest};
use super::restore_point::in_segment;
use super::topology::{Segment, Topology};
use crate::config::{ClusterConfig, Config};
use crate::error::{Error, PgResultExt, Result};
use crate::pg::conn::{ConnParams, PgConn, Replication};
use crate::pg::quote::quote_literal;
use crate::repo::{layout, Repo};

/// Where each instance of the restored cluster goes (`cbdr restore-config`
/// prints one for the current topology).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreConfig {
    pub segments: Vec<RestoreTarget>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreTarget {
    pub content_id: i32,
    pub host: String,
    /// The port the restored instance starts on.
    pub port: u16,
    pub data_dir: PathBuf,
    /// The agent that restores it (absent: the topology's agent of this
    /// content id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Greenplum/Cloudberry: the dbid the restored instance takes (absent:
    /// the backed-up instance's own, which BASE_BACKUP copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dbid: Option<i32>,
    /// Where the instance's tablespaces go: the tablespace directory the
    /// backup recorded (as `cbdr list` shows it) to its new directory.
    /// Absent ones stay where they were; on Greenplum/Cloudberry a
    /// directory ending in the old dbid follows the new `dbid`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tablespace_map: BTreeMap<String, String>,
}

impl RestoreConfig {
    pub fn from_topology(topo: &Topology) -> RestoreConfig {
        RestoreConfig {
            segments: topo
                .segments()
                .iter()
                .map(|s| RestoreTarget {
                    content_id: s.content_id,
                    host: s.host.clone(),
                    port: s.port,
                    data_dir: s.data_dir.clone(),
                    agent: Some(s.agent.clone()),
                    dbid: None,
                    tablespace_map: BTreeMap::new(),
                })
                .collect(),
        }
    }

    /// Lists, in each instance's `tablespace_map`, every tablespace its
    /// backups hold, mapped to itself (where it was): the entries a DBA
    /// edits to move them. Entries already there are kept.
    pub async fn add_tablespaces(&mut self, repo: &Repo) -> Result<()> {
        for s in &mut self.segments {
            for b in repo.backups(s.content_id).await? {
                for p in b.archives.iter().filter_map(|a| a.tablespace_path.as_ref()) {
                    s.tablespace_map
                        .entry(p.clone())
                        .or_insert_with(|| p.clone());
                }
            }
        }
        Ok(())
    }

    pub fn load(path: &Path) -> Result<RestoreConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading restore config {}", path.display()), e))?;
        let rc: RestoreConfig = toml::from_str(&text).map_err(|e| {
            Error::Usage(format!(
                "restore config {}: {} (`cbdr restore-config` prints a valid one to edit)",
                path.display(),
                e.to_string().trim_end()
            ))
        })?;
        Ok(rc)
    }

    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# Where `cbdr restore --restore-config FILE` puts each instance of the\n# restored cluster: edit hosts, ports and data directories. Each data\n# directory must be empty or absent (or use --force). `agent` is the\n# `cbdr agent` on that host that restores it.\n",
        );
        for s in &self.segments {
            out.push_str(&format!(
                "\n[[segments]]\ncontent_id = {}\nhost = {}\nport = {}\ndata_dir = {}\n",
                s.content_id,
                toml_str(&s.host),
                s.port,
                toml_str(&s.data_dir.display().to_string())
            ));
            if let Some(a) = &s.agent {
                out.push_str(&format!("agent = {}\n", toml_str(a)));
            }
            if let Some(d) = s.dbid {
                out.push_str(&format!("dbid = {d}\n"));
            }
            if !s.tablespace_map.is_empty() {
                out.push_str(
                    "# each tablespace: its directory in the backup = where it is restored\n",
                );
                out.push_str("[segments.tablespace_map]\n");
                for (old, new) in &s.tablespace_map {
                    out.push_str(&format!("{} = {}\n", toml_str(old), toml_str(new)));
                }
            }
        }
        out
    }

    /// The target of every instance of the topology, with its agent.
    fn targets(&self, topo: &Topology) -> Result<Vec<(Segment, RestoreTarget)>> {
        let mut out = Vec::new();
        for seg in topo.segments() {
            let t = self
                .segments
                .iter()
                .find(|t| t.content_id == seg.content_id)
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "the restore config has no [[segments]] entry for content id {}: every instance of the cluster must be restored (`cbdr restore-config` lists them all)",
                        seg.content_id
                    ))
                })?;
            let mut agent_seg = seg.clone();
            if let Some(a) = &t.agent {
                agent_seg.agent = a.clone();
            }
            agent_seg.host = t.host.clone();
            agent_seg.port = t.port;
            out.push((agent_seg, t.clone()));
        }
        if let Some(extra) = self
            .segments
            .iter()
            .find(|t| topo.segment(t.content_id).is_none())
        {
            return Err(Error::Usage(format!(
                "the restore config names content id {}, which the cluster does not have",
                extra.content_id
            )));
        }
        Ok(out)
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// Which cluster restore point to recover to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterTarget {
    /// The newest cluster restore point.
    Latest,
    RestorePoint(String),
    /// The newest cluster restore point at or before this time.
    Time(DateTime<FixedOffset>),
    /// The restore point of a cluster backup.
    Backup(String),
}

/// What to do with prepared transactions in doubt at the point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InDoubt {
    /// Roll them back on every instance.
    Rollback,
    /// Leave them, and report how to roll them back.
    Report,
}

#[derive(Debug, Clone)]
pub struct ClusterRestoreOptions {
    pub target: ClusterTarget,
    pub force: bool,
    pub archive_off: bool,
    pub start: bool,
    pub start_timeout: Duration,
    pub agent_timeout: Duration,
    pub connect_timeout: Duration,
    pub in_doubt: InDoubt,
    /// `restore --standby`: restore a standby cluster of this name, every
    /// instance paused at the point with hot_standby on (archiving off),
    /// recorded for `cbdr standby`.
    pub standby: Option<String>,
}

#[derive(Debug)]
pub struct ClusterRestoreOutcome {
    pub point: ClusterRestorePoint,
    /// Per content id: the backup restored and the start report.
    pub restored: Vec<(i32, RestoreDone)>,
    /// Prepared transactions found in doubt: (content id, gid).
    pub in_doubt: Vec<(i32, String)>,
    pub rolled_back: bool,
    /// For a Citus cluster: what the fix-up did, or what is left to run.
    pub citus: Option<CitusRestore>,
    /// For Greenplum/Cloudberry: with `--start`, the catalog fixed and
    /// the cluster started by `gpstart`; else what to run (untested without
    /// a Greenplum build).
    pub greenplum: Option<super::greenplum_start::GreenplumRestore>,
    /// `--standby`: the standby's record.
    pub standby: Option<super::standby::StandbyRecord>,
}

/// The Citus fix-up of a restored cluster.
#[derive(Debug)]
pub enum CitusRestore {
    /// Done (`--start`): `pg_dist_node` rewritten, 2PC recovery run,
    /// background jobs back on.
    Fixed(super::citus::Fixup),
    /// Without `--start`: the statements to run on every node once all are up.
    Pending(Vec<String>),
}

/// Chooses the cluster restore point for a target.
pub async fn choose_point(repo: &Repo, target: &ClusterTarget) -> Result<ClusterRestorePoint> {
    let points = repo.cluster_restore_points().await?;
    let none = || {
        Error::NotFound(
            "the repository holds no cluster restore point: run `cbdr backup-push` (which makes one) or `cbdr create-restore-point NAME` on the coordinator".to_string(),
        )
    };
    match target {
        ClusterTarget::RestorePoint(name) => repo.cluster_restore_point(name).await,
        ClusterTarget::Latest => points.last().cloned().ok_or_else(none),
        ClusterTarget::Time(t) => {
            if points.is_empty() {
                return Err(none());
            }
            points
                .iter()
                .rev()
                .find(|p| p.time <= *t)
                .cloned()
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "no cluster restore point is at or before {t}: the oldest, {}, is from {}. A cluster can only be restored consistently to a restore point",
                        points[0].name, points[0].time
                    ))
                })
        }
        ClusterTarget::Backup(name) => {
            // Read by its key: a damaged record is then named (exit 4),
            // not reported missing.
            let b: super::catalog::ClusterBackup = repo
                .get_json(&layout::cluster_backup_key(name))
                .await
                .map_err(|e| match e {
                    Error::Storage(s) if s.is_not_found() => Error::NotFound(format!(
                        "cluster backup {name} is not in the repository (or not complete): `cbdr list` shows the cluster backups"
                    )),
                    other => other,
                })?;
            repo.cluster_restore_point(&b.restore_point).await
        }
    }
}

pub async fn cluster_restore(
    repo: &Repo,
    topo: &Topology,
    config: &Config,
    restore_config: &RestoreConfig,
    opts: &ClusterRestoreOptions,
    board: Arc<Mutex<BTreeMap<i32, Progress>>>,
) -> Result<ClusterRestoreOutcome> {
    let point = choose_point(repo, &opts.target).await?;
    let targets = restore_config.targets(topo)?;
    for (seg, _) in &targets {
        if !point
            .segments
            .iter()
            .any(|p| p.content_id == seg.content_id)
        {
            return Err(Error::Usage(format!(
                "cluster restore point {} has no point on content id {}: it was made on another topology",
                point.name, seg.content_id
            )));
        }
    }
    let citus = point.barrier == super::catalog::Barrier::Citus
        || config.cluster.kind == crate::config::ClusterKind::Citus;
    let mut settings: Vec<(String, String)> = if citus {
        super::citus::RESTORE_SETTINGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    } else {
        Vec::new()
    };
    if let Some(name) = &opts.standby {
        check_standby(repo, name, citus, opts.force).await?;
        settings.push(("hot_standby".into(), "on".into()));
    }
    let settings = &settings;
    let action = if opts.standby.is_some() {
        RecoveryAction::Pause
    } else {
        RecoveryAction::Promote
    };
    let archive_off = opts.archive_off || opts.standby.is_some();
    let greenplum = point.barrier == super::catalog::Barrier::Greenplum;
    tracing::info!(
        "restoring {} instances to cluster restore point {}",
        targets.len(),
        point.name
    );
    let restored = try_join_all(targets.iter().map(|(seg, t)| {
        let board = board.clone();
        let name = point.name.clone();
        async move {
            let client = AgentClient::connect(&seg.agent, &config.agent, opts.connect_timeout)
                .await
                .map_err(|e| in_segment(seg, e))?;
            let req = RestoreRequest {
                content_id: seg.content_id,
                target_dir: t.data_dir.display().to_string(),
                backup: None,
                target: RecoveryTargetSpec::RestorePoint(name),
                action,
                tablespace_map: t
                    .tablespace_map
                    .iter()
                    .map(|(o, n)| (o.clone(), n.clone()))
                    .collect(),
                force: opts.force,
                port: Some(t.port),
                restore_command: None,
                archive_off,
                start: opts.start,
                start_timeout_secs: opts.start_timeout.as_secs(),
                settings: settings.clone(),
                dbid: t.dbid,
                greenplum_utility: greenplum && opts.start,
            };
            let id = seg.content_id;
            // Recovery replays WAL without progress messages for a while.
            let silence = opts.agent_timeout.max(if opts.start {
                opts.start_timeout
            } else {
                Duration::ZERO
            });
            let done = client
                .restore(req, silence, move |p| {
                    board.lock().unwrap().insert(id, p.clone());
                })
                .await
                .map_err(|e| in_segment(seg, e))?;
            Ok::<_, Error>((id, done))
        }
    }))
    .await?;
    let mut outcome = ClusterRestoreOutcome {
        point,
        restored,
        in_doubt: Vec::new(),
        rolled_back: false,
        citus: None,
        greenplum: None,
        standby: None,
    };
    if let Some(name) = &opts.standby {
        let instances = targets
            .iter()
            .map(|(seg, t)| {
                let done = &outcome
                    .restored
                    .iter()
                    .find(|(id, _)| *id == seg.content_id)
                    .expect("every target was restored")
                    .1;
                super::standby::StandbyInstance {
                    content_id: seg.content_id,
                    host: t.host.clone(),
                    port: t.port,
                    data_dir: t.data_dir.clone(),
                    agent: seg.agent.clone(),
                    backup: done.backup.name.clone(),
                    wal_segment_size: done.backup.wal_segment_size,
                }
            })
            .collect();
        outcome.standby =
            Some(super::standby::create(repo, name, &outcome.point.name, instances).await?);
        // In-doubt transactions are settled at promotion: a standby is
        // read-only.
        return Ok(outcome);
    }
    if greenplum && !opts.start {
        outcome.greenplum = Some(super::greenplum_start::pending(&targets)?);
    }
    if citus {
        let placement: super::citus::Placement = targets
            .iter()
            .map(|(seg, t)| (seg.content_id, (t.host.clone(), t.port)))
            .collect();
        outcome.citus = Some(if opts.start {
            let nodes = targets
                .iter()
                .map(|(seg, t)| Ok((seg.content_id, params(t, &config.cluster)?)))
                .collect::<Result<Vec<_>>>()?;
            CitusRestore::Fixed(super::citus::fix_restored(&nodes).await?)
        } else {
            let mut sql: Vec<String> = super::citus::rewrite_nodes_sql(&placement)
                .into_iter()
                .collect();
            sql.push("select recover_prepared_transactions()".into());
            sql.extend(super::citus::reset_settings_sql());
            sql.push("select pg_reload_conf()".into());
            CitusRestore::Pending(sql)
        });
    }
    if opts.start {
        outcome.in_doubt = in_doubt(&targets, &config.cluster).await?;
        if !outcome.in_doubt.is_empty() && opts.in_doubt == InDoubt::Rollback {
            rollback(&targets, &config.cluster, &outcome.in_doubt).await?;
            outcome.rolled_back = true;
        }
        if greenplum {
            // In-doubt transactions left are settled by gpstart: the
            // coordinator's distributed transaction recovery commits on
            // the segments what its log committed and aborts the rest.
            outcome.greenplum = Some(super::greenplum_start::GreenplumRestore::Started(
                super::greenplum_start::fix_and_start(
                    &targets,
                    &config.cluster,
                    &config.agent,
                    opts.connect_timeout,
                    opts.start_timeout,
                )
                .await?,
            ));
        }
    }
    Ok(outcome)
}

/// Whether a standby of this name may be restored.
async fn check_standby(repo: &Repo, name: &str, citus: bool, force: bool) -> Result<()> {
    super::standby::validate_name(name)?;
    if citus {
        return Err(Error::Usage(
            "--standby is not supported on Citus: a standby coordinator's pg_dist_node names the primary's workers and cannot be rewritten while it is in recovery, so its queries would read the primary cluster. Restore without --standby (a promoted copy), or query the standby's workers directly".into(),
        ));
    }
    match super::standby::load(repo, name).await {
        Ok(r) if !force && !matches!(r.state, super::standby::StandbyState::Promoted { .. }) => {
            Err(Error::Usage(format!(
                "a standby cluster named {name} is recorded already (at restore point {}, instances on {}): give another --standby-name, promote it first, or pass --force to replace its record",
                r.state.point(),
                r.instances
                    .iter()
                    .map(|i| format!("{}:{}", i.host, i.port))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        Ok(_) => Ok(()),
        Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

pub(super) fn params(t: &RestoreTarget, cfg: &ClusterConfig) -> Result<ConnParams> {
    let mut p = ConnParams::try_from_env().map_err(Error::Usage)?;
    p.host = t.host.clone();
    p.port = t.port;
    if let Some(u) = &cfg.user {
        p.user = u.clone();
    }
    p.dbname = cfg.database.clone();
    Ok(p)
}

pub(super) async fn in_doubt(
    targets: &[(Segment, RestoreTarget)],
    cfg: &ClusterConfig,
) -> Result<Vec<(i32, String)>> {
    let per_instance = try_join_all(targets.iter().map(|(seg, t)| async move {
        let mut c = PgConn::connect(&params(t, cfg)?, Replication::Off)
            .await
            .context("connecting to look for prepared transactions")
            .map_err(|e| in_segment(seg, e))?;
        let rows = c
            .simple_query("select gid from pg_prepared_xacts order by prepared")
            .await
            .context("reading pg_prepared_xacts")
            .map_err(|e| in_segment(seg, e))?;
        c.close().await;
        rows.iter()
            .map(|r| {
                let gid = r.get_str("gid").context("reading pg_prepared_xacts");
                Ok((
                    seg.content_id,
                    gid.map_err(|e| in_segment(seg, e))?.to_string(),
                ))
            })
            .collect::<Result<Vec<_>>>()
    }))
    .await?;
    Ok(per_instance.into_iter().flatten().collect())
}

pub(super) async fn rollback(
    targets: &[(Segment, RestoreTarget)],
    cfg: &ClusterConfig,
    gids: &[(i32, String)],
) -> Result<()> {
    try_join_all(targets.iter().map(|(seg, t)| async move {
        let mine: Vec<&String> = gids
            .iter()
            .filter(|(id, _)| *id == seg.content_id)
            .map(|(_, g)| g)
            .collect();
        if mine.is_empty() {
            return Ok(());
        }
        let mut c = PgConn::connect(&params(t, cfg)?, Replication::Off)
            .await
            .context("connecting to roll back prepared transactions")
            .map_err(|e| in_segment(seg, e))?;
        for gid in mine {
            c.simple_query(&format!("rollback prepared {}", quote_literal(gid)))
                .await
                .with_context(|| format!("rolling back prepared transaction {gid}"))
                .map_err(|e| in_segment(seg, e))?;
        }
        c.close().await;
        Ok::<_, Error>(())
    }))
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo() -> Topology {
        let seg = |id: i32| Segment {
            content_id: id,
            host: "h".into(),
            port: (6000 + id) as u16,
            data_dir: PathBuf::from(format!("/d/{id}")),
            agent: format!("h:{}", 7000 + id),
        };
        Topology::new(vec![seg(-1), seg(0), seg(1)], false).unwrap()
    }

    #[test]
    fn restore_config_round_trips_and_must_cover_every_instance() {
        let mut rc = RestoreConfig::from_topology(&topo());
        // Tablespace maps (with a quote and a space in a path) survive the
        // round trip, on one instance and not the others.
        rc.segments[1]
            .tablespace_map
            .insert("/ts/a \"x\"/3".into(), "/new/ts/3".into());
        rc.segments[1]
            .tablespace_map
            .insert("/ts/b/3".into(), "/ts/b/3".into());
        let text = rc.to_toml();
        assert!(text.contains("[segments.tablespace_map]"), "{text}");
        let back: RestoreConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, rc);
        assert_eq!(back.segments[1].tablespace_map.len(), 2);
        assert!(back.segments[2].tablespace_map.is_empty());
        assert_eq!(rc.targets(&topo()).unwrap().len(), 3);

        let mut missing = rc.clone();
        missing.segments.retain(|s| s.content_id != 1);
        let e = missing.targets(&topo()).unwrap_err();
        assert!(e.to_string().contains("content id 1"), "{e}");

        let mut extra = rc.clone();
        extra.segments.push(RestoreTarget {
            content_id: 9,
            host: "x".into(),
            port: 1,
            data_dir: "/x".into(),
            agent: None,
            dbid: None,
            tablespace_map: BTreeMap::new(),
        });
        let e = extra.targets(&topo()).unwrap_err();
        assert!(e.to_string().contains("content id 9"), "{e}");
    }

    #[test]
    fn targets_take_the_restore_hosts_and_default_agents() {
        let mut rc = RestoreConfig::from_topology(&topo());
        for s in &mut rc.segments {
            s.agent = None;
            s.port += 100;
        }
        let t = rc.targets(&topo()).unwrap();
        assert_eq!(t[1].0.agent, "h:7000");
        assert_eq!(t[1].0.port, 6100);
    }

    fn point(name: &str, minute: u32) -> ClusterRestorePoint {
        use chrono::TimeZone;
        ClusterRestorePoint {
            name: name.into(),
            time: chrono::Utc
                .with_ymd_and_hms(2026, 11, 25, 10, minute, 0)
                .unwrap(),
            barrier: super::super::catalog::Barrier::AdvisoryLock { key: 7300 },
            barrier_millis: 3,
            segments: vec![],
        }
    }

    #[tokio::test]
    async fn choosing_a_point_by_name_time_backup_or_latest() {
        use super::super::catalog::ClusterBackup;
        use crate::codec::{Codec, Compression};
        use crate::repo::layout;
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::storage::FsStorage::new(dir.path()).unwrap());
        let repo = Repo::new(storage, Codec::new(Compression::Lz4, None, None));
        let e = choose_point(&repo, &ClusterTarget::Latest)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no cluster restore point"), "{e}");
        for (n, m) in [("early", 0), ("mid", 10), ("late", 20)] {
            repo.put_json(&layout::cluster_restore_point_key(n), &point(n, m))
                .await
                .unwrap();
        }
        let b = ClusterBackup {
            name: "cluster_x".into(),
            start_time: point("x", 9).time,
            stop_time: point("x", 10).time,
            restore_point: "mid".into(),
            segments: vec![],
            base: None,
            permanent: false,
        };
        repo.put_json(&layout::cluster_backup_key("cluster_x"), &b)
            .await
            .unwrap();
        let name = |t: ClusterTarget| {
            let repo = &repo;
            async move { choose_point(repo, &t).await.map(|p| p.name) }
        };
        assert_eq!(name(ClusterTarget::Latest).await.unwrap(), "late");
        assert_eq!(
            name(ClusterTarget::RestorePoint("early".into()))
                .await
                .unwrap(),
            "early"
        );
        let at = |m: u32| {
            chrono::DateTime::parse_from_rfc3339(&format!("2026-11-25T10:{m:02}:30+00:00")).unwrap()
        };
        assert_eq!(name(ClusterTarget::Time(at(15))).await.unwrap(), "mid");
        assert_eq!(name(ClusterTarget::Time(at(10))).await.unwrap(), "mid");
        let before = chrono::DateTime::parse_from_rfc3339("2026-11-25T09:59:00+00:00").unwrap();
        let e = name(ClusterTarget::Time(before)).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("no cluster restore point is at or before"),
            "{e}"
        );
        assert_eq!(
            name(ClusterTarget::Backup("cluster_x".into()))
                .await
                .unwrap(),
            "mid"
        );
        let e = name(ClusterTarget::Backup("nope".into()))
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), crate::error::ExitCode::NotFound, "{e}");
        let e = name(ClusterTarget::RestorePoint("nope".into()))
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), crate::error::ExitCode::NotFound, "{e}");
    }
}
