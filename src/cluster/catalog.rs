//! The cluster's records in the repository: cluster restore points and
//! cluster backups (each refers to per-segment records).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pg::{Lsn, TimelineId};
use crate::repo::catalog::Records;
use crate::repo::{layout, Repo};

/// How a cluster restore point was made consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Barrier {
    /// `gp_create_restore_point`, under Greenplum's two-phase commit lock.
    Greenplum,
    /// The coordinator's exclusive advisory lock (key recorded).
    AdvisoryLock { key: i64 },
    /// `citus_create_restore_point`, which blocks Citus's distributed
    /// commit decisions while every node writes the point.
    Citus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentPoint {
    pub content_id: i32,
    pub lsn: Lsn,
    pub timeline: TimelineId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRestorePoint {
    pub name: String,
    pub time: DateTime<Utc>,
    pub barrier: Barrier,
    /// How long writers were held at the barrier, in milliseconds.
    pub barrier_millis: u64,
    pub segments: Vec<SegmentPoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentBackup {
    pub content_id: i32,
    /// The segment's base backup (`seg{ID}/basebackups/{NAME}`).
    pub backup: String,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterBackup {
    pub name: String,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    /// The cluster restore point taken once every segment had finished: a
    /// restore of this backup recovers to it.
    pub restore_point: String,
    pub segments: Vec<SegmentBackup>,
    /// The cluster backup this one is a delta of; `None`: a full backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Set by `cbdr backup-mark`: never deleted by retention.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
}

impl ClusterBackup {
    pub fn plain_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.plain_bytes).sum()
    }
    pub fn stored_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.stored_bytes).sum()
    }
}

impl Repo {
    /// Every cluster restore point, oldest first, with the records that
    /// could not be read.
    pub async fn cluster_restore_points_checked(&self) -> Result<Records<ClusterRestorePoint>> {
        let mut r: Records<ClusterRestorePoint> =
            crate::repo::index::read(self, layout::CLUSTER_RESTORE_POINTS_PREFIX).await?;
        r.records.sort_by_key(|p| p.time);
        Ok(r)
    }

    /// [`Repo::cluster_restore_points_checked`], the unreadable logged.
    pub async fn cluster_restore_points(&self) -> Result<Vec<ClusterRestorePoint>> {
        Ok(self.cluster_restore_points_checked().await?.warn())
    }

    pub async fn cluster_restore_point(&self, name: &str) -> Result<ClusterRestorePoint> {
        self.get_json(&layout::cluster_restore_point_key(name))
            .await
            .map_err(|e| match e {
                Error::Storage(s) if s.is_not_found() => Error::NotFound(format!(
                    "cluster restore point {name:?} is not in the repository: `cbdr list` shows the cluster restore points"
                )),
                other => other,
            })
    }

    /// Every complete cluster backup, oldest first, with the records that
    /// could not be read.
    pub async fn cluster_backups_checked(&self) -> Result<Records<ClusterBackup>> {
        let mut r: Records<ClusterBackup> = self
            .records(layout::CLUSTER_BACKUPS_PREFIX, ".json")
            .await?;
        r.records.sort_by_key(|b| b.stop_time);
        Ok(r)
    }

    /// [`Repo::cluster_backups_checked`], the unreadable logged.
    pub async fn cluster_backups(&self) -> Result<Vec<ClusterBackup>> {
        Ok(self.cluster_backups_checked().await?.warn())
    }
}
