//! Cluster-wide consistent restore points.
//!
//! No distributed transaction may be committed on some segments and not on
//! others at the point:
//! * Greenplum/Cloudberry: `gp_create_restore_point(name)` holds the
//!   two-phase commit lock while every segment writes the point.
//! * Citus: `citus_create_restore_point(name)` blocks distributed commit
//!   decisions while every node writes the point (see [`super::citus`]).
//! * A group of plain PostgreSQL servers: the coordinator takes an exclusive
//!   advisory lock (`[cluster] barrier_lock_key`) while every server writes
//!   its point; writers hold `pg_advisory_xact_lock_shared(K)` on the
//!   coordinator around their `COMMIT PREPARED` phase, so at the point each
//!   distributed transaction is committed everywhere or nowhere.
//!
//! Then `pg_switch_wal()` everywhere, each segment's point recorded once its
//! WAL is archived, and the cluster record written last.

use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::try_join_all;

use super::catalog::{Barrier, ClusterRestorePoint, SegmentPoint};
use super::topology::{Segment, Topology};
use crate::config::{ClusterConfig, ClusterKind};
use crate::error::{Error, PgResultExt, Result};
use crate::pg::conn::{PgConn, Replication};
use crate::pg::quote::quote_literal;
use crate::pg::{Lsn, WalSegmentName};
use crate::physical::backup::parse_size_setting;
use crate::physical::restore_point::{
    check_new_name, create_point, record_point, switch_wal, PointPosition,
};
use crate::repo::catalog::validate_restore_point_name;
use crate::repo::{layout, Repo};

/// How long the barrier waits for writers in their commit phase.
pub const BARRIER_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

pub async fn create_cluster_restore_point(
    repo: &Repo,
    topo: &Topology,
    cfg: &ClusterConfig,
    name: &str,
    wal_wait: Duration,
) -> Result<ClusterRestorePoint> {
    validate_restore_point_name(name)?;
    if repo
        .exists(&layout::cluster_restore_point_key(name))
        .await?
    {
        return Err(Error::Usage(format!(
            "a cluster restore point named {name:?} already exists: choose another name (restore point names are unique, so a restore can name exactly one point)"
        )));
    }
    try_join_all(topo.segments().iter().map(|seg| async move {
        check_new_name(repo, seg.content_id, name)
            .await
            .map_err(|e| in_segment(seg, e))
    }))
    .await?;
    repo.prepare_write().await?;

    let mut coordinator = connect(topo, cfg, topo.coordinator()).await?;
    let kind = resolve_kind(&mut coordinator, cfg).await?;
    let (points, barrier, held) = match kind {
        ClusterKind::Greenplum => {
            if !has_gp_create_restore_point(&mut coordinator).await? {
                return Err(Error::Usage(
                    "[cluster] kind = \"greenplum\", but the coordinator has no gp_create_restore_point(): this is not a Greenplum/Cloudberry coordinator; fix `kind`".into(),
                ));
            }
            let r = greenplum_point(&mut coordinator, name).await?;
            coordinator.close().await;
            r
        }
        ClusterKind::Citus => {
            if !super::citus::is_citus(&mut coordinator).await? {
                return Err(Error::Usage(format!(
                    "[cluster] kind = \"citus\", but the coordinator's database {:?} has no citus extension: set [cluster] database to the Citus database, or fix `kind`",
                    cfg.database
                )));
            }
            coordinator.close().await;
            let conns = try_join_all(
                topo.segments()
                    .iter()
                    .map(|s| async move { connect(topo, cfg, s).await.map(|c| (s, c)) }),
            )
            .await?;
            super::citus::citus_point(repo, topo, conns, name, wal_wait).await?
        }
        _ => {
            let r = barrier_point(topo, cfg, &mut coordinator, name).await?;
            coordinator.close().await;
            r
        }
    };

    let mut segments = Vec::new();
    for seg in topo.segments() {
        let point = points
            .iter()
            .find(|(id, _)| *id == seg.content_id)
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                Error::Server(format!(
                    "no restore point was reported for content id {}: the cluster's segments differ from the configured ones",
                    seg.content_id
                ))
            })?;
        segments.push((seg, point));
    }
    let recorded = try_join_all(segments.iter().map(|(seg, point)| async move {
        record_point(repo, seg.content_id, name, *point, wal_wait)
            .await
            .map_err(|e| in_segment(seg, e))
    }))
    .await?;
    let record = ClusterRestorePoint {
        name: name.to_string(),
        time: Utc::now(),
        barrier,
        barrier_millis: held.as_millis() as u64,
        segments: recorded
            .iter()
            .map(|r| SegmentPoint {
                content_id: r.content_id,
                lsn: r.lsn,
                timeline: r.timeline,
            })
            .collect(),
    };
    repo.put_json(&layout::cluster_restore_point_key(name), &record)
        .await?;
    crate::repo::index::refresh::<ClusterRestorePoint>(repo, layout::CLUSTER_RESTORE_POINTS_PREFIX)
        .await;
    Ok(record)
}

use super::citus::Points;

/// The kind of cluster: the config's, or (`auto`) what the coordinator has.
async fn resolve_kind(coordinator: &mut PgConn, cfg: &ClusterConfig) -> Result<ClusterKind> {
    Ok(match cfg.kind {
        ClusterKind::Auto => {
            if has_gp_create_restore_point(coordinator).await? {
                ClusterKind::Greenplum
            } else if super::citus::is_citus(coordinator).await? {
                ClusterKind::Citus
            } else {
                ClusterKind::Postgres
            }
        }
        k => k,
    })
}

/// Before a cluster backup: on Citus, the configured instances must be the
/// cluster's nodes (else the restore point at its end would be refused,
/// after every instance was copied).
pub async fn preflight(topo: &Topology, cfg: &ClusterConfig) -> Result<()> {
    let mut coordinator = connect(topo, cfg, topo.coordinator()).await?;
    if resolve_kind(&mut coordinator, cfg).await? != ClusterKind::Citus {
        coordinator.close().await;
        return Ok(());
    }
    let nodes = super::citus::read_nodes(&mut coordinator).await;
    coordinator.close().await;
    super::citus::check_nodes(topo, &nodes?)?;
    let mut conns = try_join_all(
        topo.segments()
            .iter()
            .map(|s| async move { connect(topo, cfg, s).await.map(|c| (s, c)) }),
    )
    .await?;
    super::citus::check_local_groups(&mut conns).await?;
    for (_, c) in conns {
        c.close().await;
    }
    Ok(())
}

async fn has_gp_create_restore_point(coordinator: &mut PgConn) -> Result<bool> {
    Ok(coordinator
        .simple_query("select 1 from pg_proc where proname = 'gp_create_restore_point'")
        .await
        .context("looking for gp_create_restore_point on the coordinator")?
        .len()
        == 1)
}

/// A restore point asked for by the user (not the one a cluster backup
/// ends with): refused when the instances are not those of the newest
/// cluster backup, whose restore could not reach it.
pub async fn create_user_restore_point(
    repo: &Repo,
    topo: &Topology,
    cfg: &ClusterConfig,
    name: &str,
    wal_wait: Duration,
) -> Result<ClusterRestorePoint> {
    if let Some(newest) = repo.cluster_backups().await?.last() {
        let backed: Vec<i32> = newest.segments.iter().map(|s| s.content_id).collect();
        let now: Vec<i32> = topo.segments().iter().map(|s| s.content_id).collect();
        let mut sorted = backed.clone();
        sorted.sort_unstable();
        if sorted != now {
            return Err(Error::Usage(format!(
                "the cluster's instances (content ids {now:?}) are not those of the newest cluster backup {} (content ids {sorted:?}): a restore to this point would have no base backup for some of them. Run `cbdr backup-push` first",
                newest.name
            )));
        }
    }
    create_cluster_restore_point(repo, topo, cfg, name, wal_wait).await
}

/// The generic barrier: exclusive advisory lock on the coordinator, a point
/// on every server at once, unlock, then WAL switches.
async fn barrier_point(
    topo: &Topology,
    cfg: &ClusterConfig,
    coordinator: &mut PgConn,
    name: &str,
) -> Result<(Points, Barrier, Duration)> {
    // Connect first, so the barrier is held only for the points themselves.
    let mut conns = try_join_all(topo.segments().iter().map(|s| connect(topo, cfg, s))).await?;
    let key = cfg.barrier_lock_key;
    coordinator
        .simple_query(&format!(
            "set lock_timeout = '{}s'",
            BARRIER_LOCK_TIMEOUT.as_secs()
        ))
        .await
        .context("setting lock_timeout on the coordinator")?;
    let asked = Instant::now();
    coordinator
        .simple_query(&format!("select pg_advisory_lock({key})"))
        .await
        .with_context(|| {
            format!(
                "taking the commit barrier (advisory lock {key}) on the coordinator (if the lock timed out: a writer held pg_advisory_xact_lock_shared({key}) for over {}s; look for long COMMIT PREPARED phases in pg_locks)",
                BARRIER_LOCK_TIMEOUT.as_secs()
            )
        })?;
    let locked = Instant::now();
    tracing::debug!(
        "commit barrier taken after {} ms",
        asked.elapsed().as_millis()
    );
    let created = try_join_all(topo.segments().iter().zip(conns.iter_mut()).map(
        |(seg, conn)| async move {
            create_point(conn, name)
                .await
                .map(|p| (seg.content_id, p))
                .map_err(|e| in_segment(seg, e))
        },
    ))
    .await;
    let unlocked = coordinator
        .simple_query(&format!("select pg_advisory_unlock({key})"))
        .await
        .context("releasing the commit barrier on the coordinator");
    let held = locked.elapsed();
    let points = created?;
    unlocked?;
    try_join_all(
        topo.segments()
            .iter()
            .zip(conns.iter_mut())
            .map(
                |(seg, conn)| async move { switch_wal(conn).await.map_err(|e| in_segment(seg, e)) },
            ),
    )
    .await?;
    for c in conns {
        c.close().await;
    }
    Ok((points, Barrier::AdvisoryLock { key }, held))
}

/// Greenplum/Cloudberry: the server does the barrier.
async fn greenplum_point(
    coordinator: &mut PgConn,
    name: &str,
) -> Result<(Points, Barrier, Duration)> {
    let started = Instant::now();
    let rows = coordinator
        .simple_query(&format!(
            "select segment_id::text as segment_id, restore_lsn::text as restore_lsn from gp_create_restore_point({})",
            quote_literal(name)
        ))
        .await
        .context("gp_create_restore_point")?;
    let held = started.elapsed();
    let switched = coordinator
        .simple_query(
            "select gp_segment_id::text as gp_segment_id, pg_walfile_name, current_setting('wal_segment_size') as wal_segment_size from gp_switch_wal()",
        )
        .await
        .context("gp_switch_wal")?;
    let mut points = Vec::new();
    for r in &rows {
        let id: i32 = r.parse("segment_id").context("gp_create_restore_point")?;
        let lsn: Lsn = r.parse("restore_lsn").context("gp_create_restore_point")?;
        let mut sw = None;
        for s in &switched {
            if s.parse::<i32>("gp_segment_id").context("gp_switch_wal")? == id {
                sw = Some(s);
                break;
            }
        }
        let sw = sw.ok_or_else(|| {
            Error::Server(format!("gp_switch_wal returned no row for segment {id}"))
        })?;
        let walfile = sw.get_str("pg_walfile_name").context("gp_switch_wal")?;
        let segment = WalSegmentName::parse(walfile).ok_or_else(|| {
            Error::Server(format!("gp_switch_wal: bad WAL file name {walfile:?}"))
        })?;
        points.push((
            id,
            PointPosition {
                lsn,
                timeline: segment.timeline,
                wal_segment_size: parse_size_setting(
                    sw.get_str("wal_segment_size").context("gp_switch_wal")?,
                )?,
            },
        ));
    }
    Ok((points, Barrier::Greenplum, held))
}

pub(super) async fn connect(topo: &Topology, cfg: &ClusterConfig, seg: &Segment) -> Result<PgConn> {
    let params = topo.conn_params(seg, cfg)?;
    PgConn::connect(&params, Replication::Off)
        .await
        .context("connecting")
        .map_err(|e| in_segment(seg, e))
}

/// Names the instance in an error.
pub(super) fn in_segment(seg: &Segment, e: Error) -> Error {
    let instance = if seg.content_id == -1 {
        format!("coordinator ({}:{})", seg.host, seg.port)
    } else {
        format!("segment {} ({}:{})", seg.content_id, seg.host, seg.port)
    };
    Error::Instance {
        instance,
        source: Box::new(e),
    }
}
