//! Records of what the repository holds: base backups and restore points.
//! Stored through the codec (authenticated, and encrypted when a key is
//! configured) as JSON.

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{layout, Repo};
use crate::codec::Compression;
use crate::error::{Error, Result};
use crate::pg::{Lsn, TimelineId};

/// One archive (tar stream) of a base backup: the data directory or a
/// tablespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRecord {
    /// "base" for the data directory, else the tablespace OID.
    pub name: String,
    /// The tablespace's location on the server backed up.
    pub tablespace_path: Option<String>,
    pub parts: u32,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    /// Set when the server compressed the archive: its parts are then
    /// pieces of one compressed stream, to decode in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_compression: Option<Compression>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub format: u32,
    pub name: String,
    pub content_id: i32,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub timeline: TimelineId,
    pub stop_timeline: TimelineId,
    pub start_time: DateTime<Utc>,
    pub stop_time: DateTime<Utc>,
    pub server_version: u32,
    pub system_identifier: String,
    pub wal_segment_size: u64,
    pub archives: Vec<ArchiveRecord>,
    pub compression: String,
    pub encrypted: bool,
    pub manifest_bytes: u64,
}

impl BackupRecord {
    /// (Sums saturate: the sizes come from a record read from storage.)
    pub fn plain_bytes(&self) -> u64 {
        self.archives
            .iter()
            .map(|a| a.plain_bytes)
            .fold(0, u64::saturating_add)
    }
    pub fn stored_bytes(&self) -> u64 {
        self.archives
            .iter()
            .map(|a| a.stored_bytes)
            .fold(0, u64::saturating_add)
    }
    /// Whether PostgreSQL compressed (some of) its archives.
    pub fn server_compressed(&self) -> bool {
        self.archives.iter().any(|a| a.server_compression.is_some())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePointRecord {
    pub name: String,
    pub content_id: i32,
    pub lsn: Lsn,
    pub timeline: TimelineId,
    pub time: DateTime<Utc>,
}

/// Restore point names: what PostgreSQL accepts, kept to characters that
/// are safe in object names and shells.
pub fn validate_restore_point_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid restore point name {name:?}: use 1 to 63 letters, digits, '_', '-' or '.', not starting with '.'"
        )))
    }
}

impl Repo {
    pub async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let json = serde_json::to_vec_pretty(value).expect("records serialize");
        self.put_bytes(key, json).await.map(|_| ())
    }

    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        let bytes = self.get_bytes(key).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Internal(format!("{key} is not a valid record: {e}")))
    }

    /// Every complete base backup of a content id, oldest first.
    pub async fn backups(&self, content_id: i32) -> Result<Vec<BackupRecord>> {
        let mut out = Vec::new();
        for obj in self
            .storage
            .list(&layout::backups_prefix(content_id))
            .await?
        {
            if obj.key.ends_with("/backup.json") {
                out.push(self.get_json::<BackupRecord>(&obj.key).await?);
            }
        }
        out.sort_by_key(|b| (b.stop_lsn, b.stop_time));
        Ok(out)
    }

    pub async fn backup(&self, content_id: i32, name: &str) -> Result<BackupRecord> {
        self.get_json(&layout::backup_record_key(content_id, name))
            .await
            .map_err(|e| match e {
                Error::Storage(s) if s.is_not_found() => {
                    Error::NotFound(format!("backup {name} of content id {content_id} is not in the repository (or not complete): `cbdr list` shows the backups"))
                }
                other => other,
            })
    }

    /// Every restore point of a content id, by LSN.
    pub async fn restore_points(&self, content_id: i32) -> Result<Vec<RestorePointRecord>> {
        let mut out = Vec::new();
        for obj in self
            .storage
            .list(&layout::restore_points_prefix(content_id))
            .await?
        {
            if obj.key.ends_with(".json") {
                out.push(self.get_json::<RestorePointRecord>(&obj.key).await?);
            }
        }
        out.sort_by_key(|r| (r.lsn, r.time));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_point_names() {
        for ok in ["before_etl", "rp-2026.11.25", "A"] {
            validate_restore_point_name(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "with space",
            "quote'",
            &"x".repeat(64),
        ] {
            assert!(validate_restore_point_name(bad).is_err(), "{bad:?}");
        }
    }
}
