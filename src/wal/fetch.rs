//! `wal-fetch`: restore one WAL file for recovery, prefetching the next ones.
//!
//! PostgreSQL runs restore_command once per file, one at a time. When the
//! file asked for is not prefetched, this call downloads it together with
//! the next `archive.fetch_concurrency - 1` segments, in parallel, keeping
//! those in `pg_wal/cbdr_prefetch/`; the following calls are then served by
//! a rename. Every file is verified (authenticated, checksummed) before it
//! is renamed into place.

use std::fs;
use std::path::{Path, PathBuf};

use futures_util::future::join_all;

use super::parse_wal_name;
use crate::error::{Error, Result};
use crate::fsutil::{parent_dir, sync_dir, AtomicFile};
use crate::pg::{WalFile, WalSegmentName};
use crate::repo::{layout, Repo};

pub const PREFETCH_DIR: &str = "cbdr_prefetch";

#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub content_id: i32,
    /// Files downloaded at once, this one included.
    pub concurrency: usize,
    pub segment_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    Downloaded,
    Prefetched,
}

/// Restores WAL file `name` (restore_command's `%f`) to `dest` (`%p`).
/// `Error::NotFound` when the archive does not have it.
pub async fn wal_fetch(
    repo: &Repo,
    name: &str,
    dest: &Path,
    opts: &FetchOptions,
) -> Result<FetchOutcome> {
    let file = parse_wal_name(name)?;
    let dest_dir = parent_dir(dest).to_path_buf();
    let prefetch_dir = dest_dir.join(PREFETCH_DIR);
    let prefetched = prefetch_dir.join(name);
    if prefetched.is_file() {
        fs::rename(&prefetched, dest).map_err(|e| {
            Error::io(
                format!("moving {} to {}", prefetched.display(), dest.display()),
                e,
            )
        })?;
        sync_dir(&dest_dir).map_err(|e| Error::io(format!("syncing {}", dest_dir.display()), e))?;
        tracing::debug!("{name}: served from the prefetch directory");
        return Ok(FetchOutcome::Prefetched);
    }

    let ahead: Vec<WalSegmentName> = match file {
        WalFile::Segment(seg) if opts.concurrency > 1 => {
            let mut names = Vec::new();
            let mut next = seg;
            for _ in 1..opts.concurrency {
                next = next.next(opts.segment_size);
                names.push(next);
            }
            names
        }
        _ => Vec::new(),
    };
    if !ahead.is_empty() {
        clear_stale(&prefetch_dir, &ahead);
        if let Err(e) = fs::create_dir_all(&prefetch_dir) {
            tracing::warn!(
                "cannot create {}: {e}; not prefetching",
                prefetch_dir.display()
            );
        }
    }

    let main = download(
        repo,
        layout::wal_key(opts.content_id, &file),
        dest.to_path_buf(),
    );
    let others = ahead
        .iter()
        .filter(|s| prefetch_dir.is_dir() && !prefetch_dir.join(s.to_string()).exists())
        .map(|seg| {
            let key = layout::wal_key(opts.content_id, &WalFile::Segment(*seg));
            let path = prefetch_dir.join(seg.to_string());
            async move {
                match download(repo, key, path).await {
                    Ok(()) => {}
                    Err(e) if e.exit_code() == crate::ExitCode::NotFound => {}
                    Err(e) => tracing::warn!("{seg}: prefetching failed: {e}"),
                }
            }
        });
    let (result, _) = futures_util::join!(main, join_all(others));
    result.map(|()| FetchOutcome::Downloaded)
}

/// Downloads and verifies an object into a temp file, then renames it.
async fn download(repo: &Repo, key: String, dest: PathBuf) -> Result<()> {
    let file = AtomicFile::create(&dest)
        .map_err(|e| Error::io(format!("creating a file next to {}", dest.display()), e))?;
    let (file, _) = repo.get_into(&key, file).await.map_err(|e| match e {
        Error::Storage(s) if s.is_not_found() => {
            Error::NotFound(format!("{key} is not in the repository"))
        }
        other => other,
    })?;
    file.commit()
        .map_err(|e| Error::io(format!("writing {}", dest.display()), e))
}

/// Removes prefetched files that are not among the next ones (left by a
/// timeline switch or an earlier recovery).
fn clear_stale(prefetch_dir: &Path, keep: &[WalSegmentName]) {
    let Ok(entries) = fs::read_dir(prefetch_dir) else {
        return;
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let keep_it = name
            .to_str()
            .and_then(WalSegmentName::parse)
            .is_some_and(|s| keep.contains(&s));
        if !keep_it {
            let _ = fs::remove_file(entry.path());
        }
    }
}
