//! Restore points at scale: the storage requests (and time) that listing
//! the restore points and choosing a cluster restore target by time cost
//! with 10,000 points, read one object per point (as before the
//! catalogue, and as WAL-G does: wal-g #1793) and through the catalogue
//! (`repo::index`), on the filesystem repository and on Garage.
//!
//! ```text
//! cargo bench --bench restore_points
//! CBDR_BENCH_POINTS=2000 cargo bench --bench restore_points   # a quick run
//! ```
//!
//! Requests are counted by a wrapper around the storage: every GET, HEAD,
//! PUT and DELETE is one request; a listing counts as the pages S3 returns
//! (1,000 keys a page, at least 1; on the filesystem this is the same
//! count of directory scans' worth, for comparison). The report goes to
//! `target/restore-points.json` and docs/benchmarks.md.

#[path = "common.rs"]
mod bench_common;
#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use cbdr::cluster::catalog::{Barrier, ClusterRestorePoint, SegmentPoint};
use cbdr::cluster::restore::{choose_point, ClusterTarget};
use cbdr::codec::{Codec, Compression};
use cbdr::pg::{Lsn, TimelineId};
use cbdr::repo::catalog::RestorePointRecord;
use cbdr::repo::{index, layout, Repo};
use cbdr::storage::{ByteStream, DynStorage, ObjectInfo, Storage, StorageError};
use futures_util::{stream, StreamExt};

#[derive(Debug)]
struct Counting {
    inner: DynStorage,
    requests: AtomicU64,
}

impl Counting {
    fn take(&self) -> u64 {
        self.requests.swap(0, Ordering::Relaxed)
    }
    fn one(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Storage for Counting {
    async fn put(&self, key: &str, body: ByteStream) -> Result<u64, StorageError> {
        self.one();
        self.inner.put(key, body).await
    }
    async fn put_new(&self, key: &str, body: ByteStream) -> Result<u64, StorageError> {
        self.one();
        self.inner.put_new(key, body).await
    }
    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        self.one();
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> Result<Option<u64>, StorageError> {
        self.one();
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        let out = self.inner.list(prefix).await?;
        self.requests
            .fetch_add((out.len() as u64).div_ceil(1000).max(1), Ordering::Relaxed);
        Ok(out)
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.one();
        self.inner.delete(key).await
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}

#[derive(Debug, serde::Serialize)]
struct Row {
    storage: &'static str,
    points: usize,
    operation: &'static str,
    requests: u64,
    seconds: f64,
}

fn point_name(i: usize) -> String {
    format!("rp{i:06}")
}

async fn measure<T>(
    rows: &mut Vec<Row>,
    storage: &'static str,
    points: usize,
    counter: &Counting,
    operation: &'static str,
    f: impl std::future::Future<Output = T>,
) -> T {
    counter.take();
    let t = Instant::now();
    let out = f.await;
    let row = Row {
        storage,
        points,
        operation,
        requests: counter.take(),
        seconds: t.elapsed().as_secs_f64(),
    };
    println!(
        "{:<7} {:>6} points  {:<44} {:>7} requests {:>8.2} s",
        row.storage, row.points, row.operation, row.requests, row.seconds
    );
    rows.push(row);
    out
}

async fn run(storage: &'static str, inner: DynStorage, n: usize, rows: &mut Vec<Row>) {
    let counter = Arc::new(Counting {
        inner,
        requests: AtomicU64::new(0),
    });
    let repo = Repo::new(counter.clone(), Codec::new(Compression::Lz4, None, None));
    let t0 = chrono::Utc::now() - chrono::Duration::days(30);
    let write = async {
        stream::iter(0..n)
            .map(|i| {
                let repo = repo.clone();
                async move {
                    let name = point_name(i);
                    let time = t0 + chrono::Duration::seconds(i as i64 * 60);
                    let lsn = Lsn(0x100_0000 + i as u64 * 0x1000);
                    let rp = RestorePointRecord {
                        name: name.clone(),
                        content_id: -1,
                        lsn,
                        timeline: TimelineId(1),
                        time,
                    };
                    repo.put_json(&layout::restore_point_key(-1, &name), &rp)
                        .await
                        .unwrap();
                    let cp = ClusterRestorePoint {
                        name: name.clone(),
                        time,
                        barrier: Barrier::AdvisoryLock { key: 1 },
                        barrier_millis: 1,
                        segments: vec![SegmentPoint {
                            content_id: -1,
                            lsn,
                            timeline: TimelineId(1),
                        }],
                    };
                    repo.put_json(&layout::cluster_restore_point_key(&name), &cp)
                        .await
                        .unwrap();
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<()>>()
            .await
    };
    measure(
        rows,
        storage,
        n,
        &counter,
        "write the points (instance + cluster)",
        write,
    )
    .await;
    let target =
        ClusterTarget::Time((t0 + chrono::Duration::seconds(n as i64 * 30)).fixed_offset());

    // Before the catalogue: one GET per point.
    let old = measure(
        rows,
        storage,
        n,
        &counter,
        "list points, one GET each (before)",
        async {
            repo.records::<RestorePointRecord>(&layout::restore_points_prefix(-1), ".json")
                .await
                .unwrap()
                .records
                .len()
        },
    )
    .await;
    assert_eq!(old, n);
    let old = measure(
        rows,
        storage,
        n,
        &counter,
        "list cluster points, one GET each (before)",
        async {
            repo.records::<ClusterRestorePoint>(layout::CLUSTER_RESTORE_POINTS_PREFIX, ".json")
                .await
                .unwrap()
                .records
                .len()
        },
    )
    .await;
    assert_eq!(old, n);
    let chosen_old = measure(
        rows,
        storage,
        n,
        &counter,
        "choose --target-time, one GET each (before)",
        async {
            // What choose_point did: every cluster point, then the newest at or
            // before the time.
            let mut all = repo
                .records::<ClusterRestorePoint>(layout::CLUSTER_RESTORE_POINTS_PREFIX, ".json")
                .await
                .unwrap()
                .records;
            all.sort_by_key(|p| p.time);
            let ClusterTarget::Time(t) = &target else {
                unreachable!()
            };
            all.iter()
                .rev()
                .find(|p| p.time <= *t)
                .unwrap()
                .name
                .clone()
        },
    )
    .await;

    // The catalogue: written once from every record (what the first new
    // point in an older repository pays), then what each new point costs.
    measure(
        rows,
        storage,
        n,
        &counter,
        "first catalogue write (every record read)",
        async {
            index::refresh::<RestorePointRecord>(&repo, &layout::restore_points_prefix(-1)).await;
        },
    )
    .await;
    index::refresh::<ClusterRestorePoint>(&repo, layout::CLUSTER_RESTORE_POINTS_PREFIX).await;
    let extra = RestorePointRecord {
        name: "rp_extra".into(),
        content_id: -1,
        lsn: Lsn(0x100_0000 + n as u64 * 0x1000),
        timeline: TimelineId(1),
        time: t0 + chrono::Duration::seconds(n as i64 * 60),
    };
    measure(
        rows,
        storage,
        n,
        &counter,
        "a new point: record + catalogue update",
        async {
            repo.put_json(&layout::restore_point_key(-1, "rp_extra"), &extra)
                .await
                .unwrap();
            index::refresh::<RestorePointRecord>(&repo, &layout::restore_points_prefix(-1)).await;
        },
    )
    .await;
    repo.storage
        .delete(&layout::restore_point_key(-1, "rp_extra"))
        .await
        .unwrap();
    index::refresh::<RestorePointRecord>(&repo, &layout::restore_points_prefix(-1)).await;
    let new = measure(
        rows,
        storage,
        n,
        &counter,
        "list points (catalogue)",
        async { repo.restore_points(-1).await.unwrap().len() },
    )
    .await;
    assert_eq!(new, n);
    let new = measure(
        rows,
        storage,
        n,
        &counter,
        "list cluster points (catalogue)",
        async { repo.cluster_restore_points().await.unwrap().len() },
    )
    .await;
    assert_eq!(new, n);
    let chosen = measure(
        rows,
        storage,
        n,
        &counter,
        "choose --target-time (catalogue)",
        async { choose_point(&repo, &target).await.unwrap().name },
    )
    .await;
    assert_eq!(chosen, chosen_old);
}

fn main() {
    let n = bench_common::env_num("CBDR_BENCH_POINTS", "10000");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rows = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let fs: DynStorage =
            Arc::new(cbdr::storage::FsStorage::new(&dir.path().join("repo")).unwrap());
        run("fs", fs, n, &mut rows).await;
        if common::garage::garage_bin().is_some() {
            let target = common::garage::bucket("rpbench");
            let cfg = cbdr::config::Config::parse(&target.config_toml("")).unwrap();
            let s3: DynStorage =
                Arc::new(cbdr::storage::S3Storage::new(&cfg.storage).await.unwrap());
            run("garage", s3, n, &mut rows).await;
        } else {
            println!("garage: skipped (garage not found, see .ci/run)");
        }
    });
    let path = bench_common::report_path("restore-points.json");
    std::fs::write(&path, serde_json::to_string_pretty(&rows).unwrap()).unwrap();
    println!("report: {}", path.display());
}
