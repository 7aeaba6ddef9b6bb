//! Records of what the repository holds: base backups and restore points.
//! Stored through the codec (authenticated, and encrypted when a key is
//! configured) as JSON.

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{layout, Repo};
use crate::codec::Compression;
use crate::error::{Error, ExitCode, Result};
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
    /// The backup (same content id) this delta was taken against; `None`:
    /// a full backup. A backup needs its base, and its base's base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Set by `cbdr backup-mark`: never deleted by retention.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
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

/// A new backup name: `{prefix}_{YYYYMMDDTHHMMSSZ}_{16 hex digits}`, the
/// start time (UTC) then 64 random bits. Unique by construction (two
/// backups started in the same second, even on two hosts, get different
/// names without asking the storage, which may not honour a conditional
/// create), and names of one prefix sort by start time. Nothing reads the
/// time back from a name: LATEST and "the backup for a target" are chosen
/// by the records' LSNs and times, so older names (`base_20261125T100000Z`,
/// `..._1`) stay valid.
pub fn new_backup_name(prefix: &str) -> String {
    backup_name(
        prefix,
        Utc::now(),
        u64::from_be_bytes(crate::codec::random_bytes()),
    )
}

fn backup_name(prefix: &str, at: DateTime<Utc>, random: u64) -> String {
    format!("{prefix}_{}_{random:016x}", at.format("%Y%m%dT%H%M%SZ"))
}

impl Repo {
    pub async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        let json = serde_json::to_vec_pretty(value).expect("records serialize");
        self.put_bytes(key, json).await.map(|_| ())
    }

    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<T> {
        let bytes = self.get_bytes(key).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Integrity(format!("{key} is not a valid record: {e}")))
    }

    /// Every record under `prefix` whose key ends with `suffix`. A record
    /// that cannot be read (damaged, not JSON, gone since the listing) is
    /// reported in `unreadable` and skipped: one bad record does not hide
    /// the others. The storage failing (unreachable, refusing) is an error.
    pub async fn records<T: DeserializeOwned>(
        &self,
        prefix: &str,
        suffix: &str,
    ) -> Result<Records<T>> {
        let mut out = Records {
            records: Vec::new(),
            unreadable: Vec::new(),
        };
        for obj in self.storage.list(prefix).await? {
            if !obj.key.ends_with(suffix) {
                continue;
            }
            match self.get_json::<T>(&obj.key).await {
                Ok(r) => out.records.push(r),
                Err(e) if e.exit_code() == ExitCode::Storage => return Err(e),
                Err(e) => out.unreadable.push(Unreadable {
                    key: obj.key.clone(),
                    error: e.to_string(),
                }),
            }
        }
        Ok(out)
    }

    /// Every complete base backup of a content id, oldest first (by stop
    /// LSN, then time), with the records that could not be read.
    pub async fn backups_checked(&self, content_id: i32) -> Result<Records<BackupRecord>> {
        let mut r: Records<BackupRecord> = self
            .records(&layout::backups_prefix(content_id), "/backup.json")
            .await?;
        r.records.sort_by_key(|b| (b.stop_lsn, b.stop_time));
        Ok(r)
    }

    /// [`Repo::backups_checked`], the unreadable records logged as warnings.
    pub async fn backups(&self, content_id: i32) -> Result<Vec<BackupRecord>> {
        Ok(self.backups_checked(content_id).await?.warn())
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

    /// Every restore point of a content id, by LSN, with the records that
    /// could not be read.
    pub async fn restore_points_checked(
        &self,
        content_id: i32,
    ) -> Result<Records<RestorePointRecord>> {
        let mut r: Records<RestorePointRecord> =
            super::index::read(self, &layout::restore_points_prefix(content_id)).await?;
        r.records.sort_by_key(|r| (r.lsn, r.time));
        Ok(r)
    }

    /// [`Repo::restore_points_checked`], the unreadable records logged.
    pub async fn restore_points(&self, content_id: i32) -> Result<Vec<RestorePointRecord>> {
        Ok(self.restore_points_checked(content_id).await?.warn())
    }
}

/// A record the catalogue could not read, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    /// The object's key.
    pub key: String,
    pub error: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "skipping the unreadable record {}: {} (the other records are used; repair or remove that object)",
            self.key, self.error
        )
    }
}

/// Records read from the repository, and those that could not be.
#[derive(Debug, Clone)]
pub struct Records<T> {
    pub records: Vec<T>,
    pub unreadable: Vec<Unreadable>,
}

impl<T> Records<T> {
    /// The records read; each unreadable one logged as a warning.
    pub fn warn(self) -> Vec<T> {
        for u in &self.unreadable {
            tracing::warn!("{u}");
        }
        self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_names_are_unique_and_sort_by_time() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let a = backup_name("base", t("2026-12-02T18:05:20Z"), 0xdead_beef);
        assert_eq!(a, "base_20261202T180520Z_00000000deadbeef");
        let b = backup_name("base", t("2026-12-02T18:05:20Z"), u64::MAX);
        let c = backup_name("base", t("2026-12-02T18:05:21Z"), 0);
        assert!(a < b && b < c, "{a} {b} {c}");
        // Fresh names in the same second differ; each is a valid restore
        // point name too (a cluster backup names its restore point so).
        let names: std::collections::HashSet<String> =
            (0..1000).map(|_| new_backup_name("cluster")).collect();
        assert_eq!(names.len(), 1000);
        for n in &names {
            validate_restore_point_name(n).unwrap();
            assert_eq!(n.len(), "cluster_20261202T180520Z_".len() + 16, "{n}");
        }
    }

    #[tokio::test]
    async fn an_unreadable_record_is_skipped_and_named() {
        use crate::codec::{Codec, Compression};
        let dir = tempfile::tempdir().unwrap();
        let storage = std::sync::Arc::new(crate::storage::FsStorage::new(dir.path()).unwrap());
        let repo = Repo::new(storage, Codec::new(Compression::Lz4, None, None));
        let rp = |name: &str, lsn| RestorePointRecord {
            name: name.into(),
            content_id: -1,
            lsn: Lsn(lsn),
            timeline: TimelineId(1),
            time: Utc::now(),
        };
        for (n, l) in [("good", 10), ("bad", 20), ("not_json", 30)] {
            repo.put_json(&layout::restore_point_key(-1, n), &rp(n, l))
                .await
                .unwrap();
        }
        let bad = dir.path().join(layout::restore_point_key(-1, "bad"));
        let mut bytes = std::fs::read(&bad).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        std::fs::write(&bad, bytes).unwrap();
        repo.put_bytes(&layout::restore_point_key(-1, "not_json"), b"{".to_vec())
            .await
            .unwrap();
        let r = repo.restore_points_checked(-1).await.unwrap();
        let names: Vec<&str> = r.records.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["good"]);
        let keys: Vec<&str> = r.unreadable.iter().map(|u| u.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "seg-1/restore_points/bad.json",
                "seg-1/restore_points/not_json.json"
            ]
        );
        assert!(r.unreadable[0].to_string().contains("bad.json"));
        // Named, the damaged one is an integrity error naming it.
        let e = repo
            .get_json::<RestorePointRecord>(&layout::restore_point_key(-1, "bad"))
            .await
            .unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::Integrity);
        assert!(e.to_string().contains("bad.json"), "{e}");
    }

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
