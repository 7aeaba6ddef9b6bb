//! The restore-point catalogue: one object per prefix of records
//! (`seg{ID}/catalog/restore_points.json`, `cluster/catalog/restore_points.json`)
//! holding a copy of every record, so that `list`, restore by time and
//! `delete` read the points in one LIST page per 1,000 points plus one GET,
//! not one GET per point (WAL-G slows to a crawl at 10,000 points, wal-g
//! #1793).
//!
//! The records stay the source of truth: the LIST of the record objects
//! says which points exist, and an entry is used only when its record
//! object is listed with the size and time the entry noted; any other
//! listed record (new, rewritten, written by an older cbdr, lost by two
//! writers racing on the catalogue) is read from its own object. Writers
//! (`create-restore-point`, `delete`) rewrite the catalogue after their
//! record; a catalogue that is missing, damaged or stale costs requests,
//! never a wrong answer. Repositories without catalogues (made before it)
//! read as before; the first new point writes one. Nothing older cbdr
//! versions read changes (the catalogue is outside the records' prefix).

use std::collections::HashMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::catalog::{Records, RestorePointRecord, Unreadable};
use super::Repo;
use crate::cluster::catalog::ClusterRestorePoint;
use crate::error::{ExitCode, Result};
use crate::storage::ObjectInfo;

/// A record the catalogue holds: named by its key.
pub trait Named {
    fn name(&self) -> &str;
}

impl Named for RestorePointRecord {
    fn name(&self) -> &str {
        &self.name
    }
}

impl Named for ClusterRestorePoint {
    fn name(&self) -> &str {
        &self.name
    }
}

/// Where the catalogue of a prefix of records is.
pub fn index_key(records_prefix: &str) -> String {
    // "seg-1/restore_points/" -> "seg-1/catalog/restore_points.json"
    let trimmed = records_prefix.trim_end_matches('/');
    match trimmed.rsplit_once('/') {
        Some((parent, leaf)) => format!("{parent}/catalog/{leaf}.json"),
        None => format!("catalog/{trimmed}.json"),
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Catalogue<T> {
    format: u32,
    entries: Vec<Entry<T>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry<T> {
    /// The record object's size and time as listed when the entry was made.
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    modified: Option<i64>,
    record: T,
}

fn stamp(o: &ObjectInfo) -> (u64, Option<i64>) {
    (
        o.size,
        o.modified.and_then(|m| {
            m.duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_millis() as i64)
        }),
    )
}

/// Every record under `prefix` (keys `{prefix}{NAME}.json`), through the
/// catalogue (see the module documentation), with the unreadable ones.
pub async fn read<T>(repo: &Repo, prefix: &str) -> Result<Records<T>>
where
    T: DeserializeOwned + Serialize + Named + Clone,
{
    Ok(read_stamped(repo, prefix).await?.0)
}

type Stamped<T> = (Records<T>, Vec<(u64, Option<i64>)>);

async fn read_stamped<T>(repo: &Repo, prefix: &str) -> Result<Stamped<T>>
where
    T: DeserializeOwned + Serialize + Named + Clone,
{
    let listed: Vec<ObjectInfo> = repo
        .storage
        .list(prefix)
        .await?
        .into_iter()
        .filter(|o| o.key.ends_with(".json") && !o.key[prefix.len()..].contains('/'))
        .collect();
    let mut known: HashMap<String, Entry<T>> = HashMap::new();
    if !listed.is_empty() {
        match repo.get_json::<Catalogue<T>>(&index_key(prefix)).await {
            Ok(c) => {
                for e in c.entries {
                    known.insert(e.record.name().to_string(), e);
                }
            }
            Err(crate::error::Error::Storage(s)) if s.is_not_found() => {}
            Err(e) if e.exit_code() == ExitCode::Storage => return Err(e),
            Err(e) => tracing::warn!(
                "the restore point catalogue {} cannot be used ({e}): reading each point instead",
                index_key(prefix)
            ),
        }
    }
    let mut out = Records {
        records: Vec::new(),
        unreadable: Vec::new(),
    };
    let mut stamps = Vec::new();
    for o in &listed {
        let name = &o.key[prefix.len()..o.key.len() - ".json".len()];
        let stamp = stamp(o);
        if let Some(e) = known.remove(name) {
            if (e.size, e.modified) == stamp {
                out.records.push(e.record);
                stamps.push(stamp);
                continue;
            }
        }
        match repo.get_json::<T>(&o.key).await {
            Ok(r) if r.name() == name => {
                out.records.push(r);
                stamps.push(stamp);
            }
            Ok(_) => out.unreadable.push(Unreadable {
                key: o.key.clone(),
                error: "the record names another point than its key".into(),
            }),
            Err(e) if e.exit_code() == ExitCode::Storage => {
                // Gone since the listing (a delete): not an error.
                if matches!(&e, crate::error::Error::Storage(s) if s.is_not_found()) {
                    continue;
                }
                return Err(e);
            }
            Err(e) => out.unreadable.push(Unreadable {
                key: o.key.clone(),
                error: e.to_string(),
            }),
        }
    }
    Ok((out, stamps))
}

/// Rewrites the catalogue of `prefix` from what is there now (writers
/// call it after writing or deleting records). Best effort: a failure is
/// logged (readers then read the points one by one).
pub async fn refresh<T>(repo: &Repo, prefix: &str)
where
    T: DeserializeOwned + Serialize + Named + Clone,
{
    let result = async {
        let (records, stamps) = read_stamped::<T>(repo, prefix).await?;
        let entries: Vec<Entry<T>> = records
            .records
            .into_iter()
            .zip(stamps)
            .map(|(record, (size, modified))| Entry {
                size,
                modified,
                record,
            })
            .collect();
        if entries.is_empty() {
            repo.storage.delete(&index_key(prefix)).await?;
            return Ok::<(), crate::error::Error>(());
        }
        repo.put_json(&index_key(prefix), &Catalogue { format: 1, entries })
            .await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(
            "could not update the restore point catalogue {} ({e}): listing reads each point instead until the next update",
            index_key(prefix)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Codec, Compression};
    use crate::pg::{Lsn, TimelineId};
    use crate::repo::layout;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Counts GETs on top of a filesystem storage.
    #[derive(Debug)]
    struct Counting {
        inner: crate::storage::FsStorage,
        gets: AtomicU64,
    }

    #[async_trait::async_trait]
    impl crate::storage::Storage for Counting {
        async fn put(
            &self,
            key: &str,
            body: crate::storage::ByteStream,
        ) -> std::result::Result<u64, crate::storage::StorageError> {
            self.inner.put(key, body).await
        }
        async fn put_new(
            &self,
            key: &str,
            body: crate::storage::ByteStream,
        ) -> std::result::Result<u64, crate::storage::StorageError> {
            self.inner.put_new(key, body).await
        }
        async fn get(
            &self,
            key: &str,
        ) -> std::result::Result<crate::storage::ByteStream, crate::storage::StorageError> {
            self.gets.fetch_add(1, Ordering::Relaxed);
            self.inner.get(key).await
        }
        async fn head(
            &self,
            key: &str,
        ) -> std::result::Result<Option<u64>, crate::storage::StorageError> {
            self.inner.head(key).await
        }
        async fn list(
            &self,
            prefix: &str,
        ) -> std::result::Result<Vec<ObjectInfo>, crate::storage::StorageError> {
            self.inner.list(prefix).await
        }
        async fn delete(&self, key: &str) -> std::result::Result<(), crate::storage::StorageError> {
            self.inner.delete(key).await
        }
        fn location(&self) -> String {
            self.inner.location()
        }
    }

    fn rp(name: &str, lsn: u64) -> RestorePointRecord {
        RestorePointRecord {
            name: name.into(),
            content_id: -1,
            lsn: Lsn(lsn),
            timeline: TimelineId(1),
            time: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn the_catalogue_saves_gets_and_never_hides_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Counting {
            inner: crate::storage::FsStorage::new(dir.path()).unwrap(),
            gets: AtomicU64::new(0),
        });
        let repo = Repo::new(storage.clone(), Codec::new(Compression::Lz4, None, None));
        let prefix = layout::restore_points_prefix(-1);
        for i in 0..20 {
            let n = format!("p{i:02}");
            repo.put_json(&layout::restore_point_key(-1, &n), &rp(&n, i))
                .await
                .unwrap();
        }
        // No catalogue yet: one GET per point (and the missing catalogue).
        let gets = || storage.gets.load(Ordering::Relaxed);
        let g0 = gets();
        let r: Records<RestorePointRecord> = read(&repo, &prefix).await.unwrap();
        assert_eq!(r.records.len(), 20);
        assert_eq!(gets() - g0, 21);
        refresh::<RestorePointRecord>(&repo, &prefix).await;
        assert!(repo
            .exists("seg-1/catalog/restore_points.json")
            .await
            .unwrap());
        let g0 = gets();
        let r: Records<RestorePointRecord> = read(&repo, &prefix).await.unwrap();
        assert_eq!(r.records.len(), 20);
        assert_eq!(gets() - g0, 1, "the catalogue alone");
        // A point added without a refresh is read from its record; a
        // deleted one is not shown though the catalogue has it.
        repo.put_json(&layout::restore_point_key(-1, "new"), &rp("new", 99))
            .await
            .unwrap();
        repo.storage
            .delete(&layout::restore_point_key(-1, "p03"))
            .await
            .unwrap();
        let g0 = gets();
        let r: Records<RestorePointRecord> = read(&repo, &prefix).await.unwrap();
        let names: Vec<&str> = r.records.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), 20);
        assert!(names.contains(&"new") && !names.contains(&"p03"));
        assert_eq!(gets() - g0, 2);
        // A record rewritten (another size) is read again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        repo.put_json(
            &layout::restore_point_key(-1, "p05"),
            &rp("p05", 123_456_789),
        )
        .await
        .unwrap();
        let r: Records<RestorePointRecord> = read(&repo, &prefix).await.unwrap();
        let p5 = r.records.iter().find(|p| p.name == "p05").unwrap();
        assert_eq!(p5.lsn, Lsn(123_456_789));
        // A damaged catalogue: the records are read one by one.
        refresh::<RestorePointRecord>(&repo, &prefix).await;
        std::fs::write(
            dir.path().join("seg-1/catalog/restore_points.json"),
            b"junk",
        )
        .unwrap();
        let r: Records<RestorePointRecord> = read(&repo, &prefix).await.unwrap();
        assert_eq!(r.records.len(), 20);
        assert!(r.unreadable.is_empty());
        assert_eq!(
            index_key("cluster/restore_points/"),
            "cluster/catalog/restore_points.json"
        );
    }
}
