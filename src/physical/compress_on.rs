//! Where a base backup is compressed: by PostgreSQL (`BASE_BACKUP
//! (COMPRESSION ...)`, 15 and later, lz4 or zstd) or by cbdr.
//!
//! Compressing on the server sends several times fewer bytes over the
//! connection, and reading and sending them costs the server about as much
//! CPU as compressing them (pgbench data, 1.6 GB: 0.86 s to send it plain,
//! 0.83 s to compress and send it with lz4), so a backup of data that
//! compresses well takes about one core instead of two. Data that compresses
//! poorly makes the server's single process the bottleneck, where cbdr
//! compresses on every core. `auto` decides from the data: a sample of the
//! largest relation files, compressed here, else the last backup's ratio.

use crate::codec::{Codec, Compression};
use crate::config::CompressOn;
use crate::error::{Error, PgResultExt, Result};
use crate::pg::conn::{ConnParams, PgConn, Replication};
use crate::repo::Repo;

/// `auto` lets the server compress data that compresses at least this well.
pub const AUTO_MIN_RATIO: f64 = 3.0;
/// Relation files sampled, the largest first.
const SAMPLE_FILES: usize = 8;
/// Samples per file, spread from its start to its end.
const SAMPLES_PER_FILE: usize = 3;
/// Bytes per sample (4 pages).
const SAMPLE_BYTES: u64 = 32 * 1024;

/// The compression PostgreSQL applies to the backup, if any.
pub async fn server_compression(
    repo: &Repo,
    conn: &ConnParams,
    content_id: i32,
    compress_on: CompressOn,
    server_version: u32,
) -> Result<Option<Compression>> {
    let method = repo.codec.compression;
    let version_ok = server_version >= 150000;
    let method_ok = matches!(method, Compression::Lz4 | Compression::Zstd);
    match compress_on {
        CompressOn::Client => Ok(None),
        CompressOn::Server if !version_ok => Err(Error::Usage(format!(
            "compress_on = \"server\" needs PostgreSQL 15 or later (this server is {}): set [compression] compress_on = \"auto\" or \"client\"",
            server_version / 10000
        ))),
        CompressOn::Server if !method_ok => Err(Error::Usage(format!(
            "compress_on = \"server\" needs method lz4 or zstd, not {method}: set [compression] compress_on = \"auto\" or \"client\""
        ))),
        CompressOn::Server => Ok(Some(method)),
        CompressOn::Auto if !(version_ok && method_ok) => Ok(None),
        CompressOn::Auto => {
            let codec = Codec::new(method, Some(repo.codec.level), None);
            let (ratio, from) = match sample_ratio(conn, &codec).await {
                Ok(Some(r)) => (Some(r), "a sample of the largest relation files"),
                other => {
                    if let Err(e) = other {
                        tracing::debug!("no sample of the data to compress: {e}");
                    }
                    (last_ratio(repo, content_id).await?, "the last backup")
                }
            };
            Ok(match ratio {
                Some(r) if r < AUTO_MIN_RATIO => {
                    tracing::info!(
                        "compressing with {method} on cbdr's cores: {from} compresses {r:.1}x, under {AUTO_MIN_RATIO}x"
                    );
                    None
                }
                Some(r) => {
                    tracing::info!(
                        "PostgreSQL compresses with {method}: {from} compresses {r:.1}x"
                    );
                    Some(method)
                }
                None => {
                    tracing::info!("PostgreSQL compresses with {method} (nothing is known of the data yet)");
                    Some(method)
                }
            })
        }
    }
}

/// The ratio of the last complete backup of `content_id`.
async fn last_ratio(repo: &Repo, content_id: i32) -> Result<Option<f64>> {
    let backups = repo.backups(content_id).await?;
    Ok(backups
        .last()
        .and_then(|b| ratio(b.plain_bytes(), b.stored_bytes())))
}

fn ratio(plain: u64, stored: u64) -> Option<f64> {
    (plain > 0 && stored > 0).then(|| plain as f64 / stored as f64)
}

/// Lists the largest relation files and reads samples of them (needs the
/// rights of `pg_ls_dir` and `pg_read_binary_file`: a superuser, or
/// grants); `None` when there is nothing to sample.
const SAMPLE_SQL: &str = "WITH f AS ( \
  SELECT 'base/' || d || '/' || n AS path \
  FROM pg_catalog.pg_ls_dir('base', true, false) d, \
       LATERAL pg_catalog.pg_ls_dir('base/' || d, true, false) n \
  WHERE d ~ '^[0-9]+$' AND n ~ '^[0-9]+(\\.[0-9]+)?$'), \
 s AS (SELECT path, (pg_catalog.pg_stat_file(path, true)).size AS size FROM f), \
 big AS (SELECT path, size FROM s WHERE size >= {bytes} ORDER BY size DESC LIMIT {files}) \
SELECT path, size, pg_catalog.pg_read_binary_file(path, (size - {bytes}) * k / {last}, {bytes}, true) AS data \
FROM big, pg_catalog.generate_series(0, {last}) k";

/// Compresses samples of the largest relation files; their overall ratio,
/// each file weighted by its size.
async fn sample_ratio(conn: &ConnParams, codec: &Codec) -> Result<Option<f64>> {
    let mut c = PgConn::connect(conn, Replication::Off)
        .await
        .context("connecting to sample the data files")?;
    let sql = SAMPLE_SQL
        .replace("{bytes}", &SAMPLE_BYTES.to_string())
        .replace("{files}", &SAMPLE_FILES.to_string())
        .replace("{last}", &(SAMPLES_PER_FILE - 1).to_string());
    let rows = c.simple_query(&sql).await;
    c.close().await;
    let rows = rows.context("sampling the data files")?;
    let mut files: Vec<FileSample> = Vec::new();
    for row in &rows {
        // A file removed meanwhile reads as NULL (missing_ok).
        let what = "sampling the data files";
        let (Some(path), Some(size), Some(data)) = (
            row.get_opt("path").context(what)?,
            row.parse_opt::<u64>("size").context(what)?,
            row.get_opt("data").context(what)?,
        ) else {
            continue;
        };
        let Some(data) = data.strip_prefix("\\x").and_then(|h| hex::decode(h).ok()) else {
            continue;
        };
        let compressed = codec
            .encode("sample", &data)
            .map_err(|e| Error::Internal(format!("compressing a sample: {e}")))?
            .len() as u64;
        match files.iter_mut().find(|f| f.path == path) {
            Some(f) => f.add(data.len() as u64, compressed),
            None => {
                let mut f = FileSample::new(path, size);
                f.add(data.len() as u64, compressed);
                files.push(f);
            }
        }
    }
    Ok(weighted_ratio(&files))
}

#[derive(Debug)]
struct FileSample {
    path: String,
    size: u64,
    plain: u64,
    compressed: u64,
}

impl FileSample {
    fn new(path: &str, size: u64) -> FileSample {
        FileSample {
            path: path.to_string(),
            size,
            plain: 0,
            compressed: 0,
        }
    }

    fn add(&mut self, plain: u64, compressed: u64) {
        self.plain += plain;
        self.compressed += compressed;
    }
}

/// The whole files' size over their estimated compressed size.
fn weighted_ratio(files: &[FileSample]) -> Option<f64> {
    let (mut size, mut stored) = (0f64, 0f64);
    for f in files.iter().filter(|f| f.plain > 0 && f.size > 0) {
        size += f.size as f64;
        stored += f.size as f64 * f.compressed as f64 / f.plain as f64;
    }
    (stored > 0.0).then(|| size / stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(size: u64, plain: u64, compressed: u64) -> FileSample {
        let mut f = FileSample::new("base/1/2", size);
        f.add(plain, compressed);
        f
    }

    #[test]
    fn each_file_counts_by_its_size() {
        // A 900 MB file compressing 9x and a 100 MB one not at all:
        // 1000 MB stored as 100 + 100 MB.
        let files = [sample(900, 64, 64 / 9), sample(100, 64, 64)];
        let r = weighted_ratio(&files).unwrap();
        assert!(
            (r - 1000.0 / (900.0 * (7.0 / 64.0) + 100.0)).abs() < 1e-9,
            "{r}"
        );
        assert!(r > AUTO_MIN_RATIO);
        let files = [sample(100, 64, 7), sample(900, 64, 64)];
        assert!(weighted_ratio(&files).unwrap() < AUTO_MIN_RATIO);
    }

    #[test]
    fn nothing_sampled_is_no_ratio() {
        assert_eq!(weighted_ratio(&[]), None);
        assert_eq!(weighted_ratio(&[sample(100, 0, 0)]), None);
        assert_eq!(ratio(0, 10), None);
        assert_eq!(ratio(90, 10), Some(9.0));
    }
}
