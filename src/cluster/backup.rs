//! Cluster `backup-push`: every instance's agent takes its base backup at
//! once, straight to storage; then a cluster restore point named after the
//! backup, then the cluster record, written last. If any instance fails or
//! its agent goes silent, the others are cancelled (their connections
//! close, so their agents abort) and no cluster record is written.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::future::try_join_all;

use super::catalog::{ClusterBackup, SegmentBackup};
use super::client::AgentClient;
use super::proto::{BackupRequest, Progress};
use super::restore_point::{create_cluster_restore_point, in_segment};
use super::topology::{Segment, Topology};
use crate::config::Config;
use crate::error::Result;
use crate::repo::{layout, Repo};

#[derive(Debug, Clone)]
pub struct ClusterBackupOptions {
    /// How long each instance waits for its backup's WAL in the archive.
    pub wal_wait: Duration,
    /// Silence from an agent after which the backup is aborted.
    pub agent_timeout: Duration,
    /// Connecting and authenticating to an agent.
    pub connect_timeout: Duration,
}

/// Per-instance progress, shared with whoever displays it.
pub type ProgressBoard = Arc<Mutex<BTreeMap<i32, Progress>>>;

pub async fn cluster_backup_push(
    repo: &Repo,
    topo: &Topology,
    config: &Config,
    opts: &ClusterBackupOptions,
    board: ProgressBoard,
) -> Result<ClusterBackup> {
    repo.prepare_write().await?;
    super::restore_point::preflight(topo, &config.cluster).await?;
    // Unique by construction (its restore point takes the same name).
    let name = crate::repo::catalog::new_backup_name("cluster");
    let start_time = Utc::now();
    let started = Instant::now();
    tracing::info!("cluster backup {name}: {} instances", topo.segments().len());
    let records = try_join_all(
        topo.segments()
            .iter()
            .map(|seg| backup_one(seg, config, opts, board.clone())),
    )
    .await?;
    tracing::info!(
        "cluster backup {name}: every instance done in {:.1} s; creating its restore point",
        started.elapsed().as_secs_f64()
    );
    let point =
        create_cluster_restore_point(repo, topo, &config.cluster, &name, opts.wal_wait).await?;
    let record = ClusterBackup {
        name: name.clone(),
        start_time,
        stop_time: Utc::now(),
        restore_point: point.name,
        segments: records
            .iter()
            .map(|b| SegmentBackup {
                content_id: b.content_id,
                backup: b.name.clone(),
                start_lsn: b.start_lsn,
                stop_lsn: b.stop_lsn,
                plain_bytes: b.plain_bytes(),
                stored_bytes: b.stored_bytes(),
            })
            .collect(),
        base: None,
        permanent: false,
    };
    repo.put_json(&layout::cluster_backup_key(&name), &record)
        .await?;
    Ok(record)
}

async fn backup_one(
    seg: &Segment,
    config: &Config,
    opts: &ClusterBackupOptions,
    board: ProgressBoard,
) -> Result<crate::repo::catalog::BackupRecord> {
    let client = AgentClient::connect(&seg.agent, &config.agent, opts.connect_timeout)
        .await
        .map_err(|e| in_segment(seg, e))?;
    let req = BackupRequest {
        content_id: seg.content_id,
        host: seg.host.clone(),
        port: seg.port,
        user: config.cluster.user.clone(),
        database: Some(config.cluster.database.clone()),
        wal_wait_secs: opts.wal_wait.as_secs(),
    };
    let id = seg.content_id;
    let record = client
        .backup(req, opts.agent_timeout, move |p| {
            board.lock().unwrap().insert(id, p.clone());
        })
        .await
        .map_err(|e| in_segment(seg, e))?;
    tracing::info!(
        "content {id}: backup {} done ({} MB, stored {} MB)",
        record.name,
        record.plain_bytes() / 1_000_000,
        record.stored_bytes() / 1_000_000
    );
    Ok(record)
}
