//! `wal-fetch`: restore one WAL file for recovery, prefetching the next ones.
//!
//! PostgreSQL runs restore_command once per file, one at a time. When the
//! file asked for is not prefetched, this call downloads it together with
//! the next `archive.fetch_concurrency - 1` segments, in parallel, keeping
//! those in `pg_wal/cbdr_prefetch/`; the following calls are then served by
//! a rename. Every file is verified (authenticated, checksummed, and for a
//! segment its first page header against its name) before it is renamed
//! into place.
//!
//! PostgreSQL ends recovery (and promotes) at the first file restore_command
//! does not deliver with an exit status of 1 to 125, so only the end of the
//! archive may look like "not found" ([`FetchOutcome::NotInArchive`]):
//! - a storage failure is retried with exponential back-off within
//!   `archive.fetch_retry_budget`, then is an error;
//! - a segment missing while a later one of its timeline is archived is a
//!   hole ([`Error::NotFound`]), unless a later timeline's history says the
//!   timeline ended before it (PostgreSQL then probes older timelines for
//!   segments past their end, which is normal); it too is waited for within
//!   the budget, as a concurrent `wal-push` may still be uploading it;
//! - anything else (damage, wrong key, bad config) is an error at once.
//!
//! The CLI maps every error to an exit status PostgreSQL treats as fatal.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::parse_wal_name;
use crate::error::{Error, ExitCode, Result};
use crate::fsutil::{parent_dir, sync_dir, AtomicFile};
use crate::pg::history::{end_of, parse_history};
use crate::pg::wal_page::{check_segment_start, LONG_HEADER_LEN};
use crate::pg::{Lsn, TimelineId, WalFile, WalSegmentName};
use crate::repo::{layout, Repo};

pub const PREFETCH_DIR: &str = "cbdr_prefetch";

/// The first wait between two attempts; it doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub content_id: i32,
    /// Files downloaded at once, this one included.
    pub concurrency: usize,
    pub segment_size: u64,
    /// How long storage failures (and a segment missing before a later
    /// one) are retried before the call fails.
    pub retry_budget: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    Downloaded,
    Prefetched,
    /// The file is not in the archive, and for a segment no later one of
    /// its timeline is either: the end of the archive.
    NotInArchive,
}

/// Restores WAL file `name` (restore_command's `%f`) to `dest` (`%p`) from
/// the repository `open` opens (reopened for each attempt).
pub async fn wal_fetch<F, Fut>(
    open: F,
    name: &str,
    dest: &Path,
    opts: &FetchOptions,
) -> Result<FetchOutcome>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Repo>>,
{
    let file = parse_wal_name(name)?;
    if let Some(done) = serve_prefetched(name, dest)? {
        return Ok(done);
    }
    let started = Instant::now();
    let mut backoff = Backoff::new(opts.retry_budget);
    let mut attempt = 1u32;
    loop {
        let result = match open().await {
            Ok(repo) => fetch_once(&repo, &file, dest, opts).await,
            Err(e) => Err(e),
        };
        let (cause, last_error) = match result {
            Ok(Attempt::Done(outcome)) => return Ok(outcome),
            Ok(Attempt::Hole { missing, next }) => {
                let e = hole_error(missing, next, opts.segment_size);
                (format!("{missing} is missing although {next} is archived (a wal-push may still be uploading it)"), e)
            }
            Err(e) if e.exit_code() == ExitCode::Storage => (e.to_string(), e),
            Err(e) => return Err(e),
        };
        let elapsed = started.elapsed();
        match backoff.delay_after_failure(elapsed) {
            Some(delay) => {
                tracing::warn!(
                    "wal-fetch {name}: {cause}; retrying in {} s (attempt {attempt}, {} s of archive.fetch_retry_budget left)",
                    delay.as_secs_f32(),
                    opts.retry_budget.saturating_sub(elapsed).as_secs()
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            None => {
                tracing::warn!(
                    "wal-fetch {name}: giving up after {attempt} attempts in {} s (archive.fetch_retry_budget = {} s)",
                    elapsed.as_secs(),
                    opts.retry_budget.as_secs()
                );
                return Err(last_error);
            }
        }
    }
}

/// The schedule of retries: waits of 1, 2, 4... s, at most 30 s, for as
/// long as the budget lasts (the last wait is cut to end with it).
#[derive(Debug, Clone)]
pub struct Backoff {
    budget: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(budget: Duration) -> Backoff {
        Backoff {
            budget,
            next: FIRST_DELAY,
        }
    }

    /// The wait before the next attempt, given the time spent since the
    /// first one began; `None` once the budget is spent.
    pub fn delay_after_failure(&mut self, elapsed: Duration) -> Option<Duration> {
        if elapsed >= self.budget {
            return None;
        }
        let delay = self.next.min(self.budget - elapsed);
        self.next = (self.next * 2).min(MAX_DELAY);
        Some(delay)
    }
}

/// What one attempt found.
#[derive(Debug)]
enum Attempt {
    Done(FetchOutcome),
    /// `missing` is not archived but `next`, later on its timeline, is.
    Hole {
        missing: WalSegmentName,
        next: WalSegmentName,
    },
}

/// A prefetched file is moved into place without touching the storage.
fn serve_prefetched(name: &str, dest: &Path) -> Result<Option<FetchOutcome>> {
    let dest_dir = parent_dir(dest);
    let prefetched = dest_dir.join(PREFETCH_DIR).join(name);
    if !prefetched.is_file() {
        return Ok(None);
    }
    fs::rename(&prefetched, dest).map_err(|e| {
        Error::io(
            format!("moving {} to {}", prefetched.display(), dest.display()),
            e,
        )
    })?;
    sync_dir(dest_dir).map_err(|e| Error::io(format!("syncing {}", dest_dir.display()), e))?;
    tracing::debug!("{name}: served from the prefetch directory");
    Ok(Some(FetchOutcome::Prefetched))
}

async fn fetch_once(
    repo: &Repo,
    file: &WalFile,
    dest: &Path,
    opts: &FetchOptions,
) -> Result<Attempt> {
    let prefetch_dir = parent_dir(dest).join(PREFETCH_DIR);
    let ahead: Vec<WalSegmentName> = match file {
        WalFile::Segment(seg) if opts.concurrency > 1 => {
            let mut names = Vec::new();
            let mut next = *seg;
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
        layout::wal_key(opts.content_id, file),
        file.clone(),
        dest.to_path_buf(),
    );
    let others = ahead
        .iter()
        .filter(|s| prefetch_dir.is_dir() && !prefetch_dir.join(s.to_string()).exists())
        .map(|seg| {
            let file = WalFile::Segment(*seg);
            let key = layout::wal_key(opts.content_id, &file);
            let path = prefetch_dir.join(seg.to_string());
            async move {
                match download(repo, key, file, path).await {
                    Ok(()) => {}
                    Err(e) if e.exit_code() == ExitCode::NotFound => {}
                    Err(e) => tracing::warn!("{seg}: prefetching failed: {e}"),
                }
            }
        });
    let (result, _) = futures_util::join!(main, join_all(others));
    match result {
        Ok(()) => Ok(Attempt::Done(FetchOutcome::Downloaded)),
        Err(Error::NotFound(_)) => match file {
            WalFile::Segment(seg) => absence(repo, *seg, opts).await,
            _ => Ok(Attempt::Done(FetchOutcome::NotInArchive)),
        },
        Err(e) => Err(e),
    }
}

/// Downloads and verifies an object into a temp file, then renames it.
/// `Error::NotFound` when the object does not exist.
async fn download(repo: &Repo, key: String, file: WalFile, dest: PathBuf) -> Result<()> {
    let out = AtomicFile::create(&dest)
        .map_err(|e| Error::io(format!("creating a file next to {}", dest.display()), e))?;
    let (out, _) = repo
        .get_into(&key, HeadCapture::new(out))
        .await
        .map_err(|e| match e {
            Error::Storage(s) if s.is_not_found() => {
                Error::NotFound(format!("{key} is not in the repository"))
            }
            other => other,
        })?;
    if let WalFile::Segment(seg) = file {
        if let Err(m) = check_segment_start(seg, &out.head) {
            return Err(Error::Integrity(format!(
                "{key}: {m}: the object is not the WAL segment {seg} its name says \
                 (objects swapped or renamed in the repository?); nothing was restored. \
                 Put the right file under this name (e.g. from the old server's pg_wal: \
                 remove the object, then cbdr wal-push the file), or restore to a target before {seg}"
            )));
        }
    }
    out.inner
        .commit()
        .map_err(|e| Error::io(format!("writing {}", dest.display()), e))
}

/// A writer that keeps a copy of the first bytes written through it.
struct HeadCapture<W> {
    inner: W,
    head: Vec<u8>,
}

impl<W> HeadCapture<W> {
    fn new(inner: W) -> HeadCapture<W> {
        HeadCapture {
            inner,
            head: Vec::with_capacity(LONG_HEADER_LEN),
        }
    }
}

impl<W: Write> Write for HeadCapture<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let room = LONG_HEADER_LEN - self.head.len();
        self.head.extend_from_slice(&buf[..n.min(room)]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Segment `missing` is not archived: the end of the archive, or a hole?
async fn absence(repo: &Repo, missing: WalSegmentName, opts: &FetchOptions) -> Result<Attempt> {
    let size = opts.segment_size;
    let prefix = layout::wal_prefix(opts.content_id);
    // The group of `missing`, then the next one (a hole across the end of
    // a group).
    let next_group = WalSegmentName::from_lsn(
        missing.timeline,
        missing.start_lsn(size).next_log_start(),
        size,
    );
    let mut later = None;
    for group in [missing.group(), next_group.group()] {
        let listed = repo.storage.list(&format!("{prefix}{group}/")).await?;
        later = first_later_segment(missing, listed.iter().map(|o| o.key.as_str()));
        if later.is_some() {
            break;
        }
    }
    let Some(next) = later else {
        return Ok(Attempt::Done(FetchOutcome::NotInArchive));
    };
    // Removed by `delete` (nothing kept needed it): the end of what this
    // recovery can replay, not a hole.
    for o in repo
        .storage
        .list(&layout::wal_removed_prefix(opts.content_id))
        .await?
    {
        if let Some((first, last)) = layout::parse_wal_removed(&o.key) {
            if first.timeline == missing.timeline && first <= missing && missing <= last {
                tracing::info!("{missing} was removed by `cbdr delete`: the archive ends here for this recovery");
                return Ok(Attempt::Done(FetchOutcome::NotInArchive));
            }
        }
    }
    let ended = timeline_end(repo, opts.content_id, missing.timeline).await?;
    Ok(match classify_absence(missing, Some(next), ended, size) {
        Absence::EndOfArchive => Attempt::Done(FetchOutcome::NotInArchive),
        Absence::Hole { missing, next } => Attempt::Hole { missing, next },
    })
}

/// The decision on a missing segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absence {
    /// Nothing later to replay on this timeline: recovery may end here (or
    /// go on to a newer timeline).
    EndOfArchive,
    /// A later segment of the same timeline is archived and the timeline
    /// did not end before `missing`: replay cannot go on, and must not stop
    /// here as if the archive ended.
    Hole {
        missing: WalSegmentName,
        next: WalSegmentName,
    },
}

/// `later`: the first archived full segment of `missing`'s timeline after
/// it, if any; `timeline_ended`: where a later timeline's history says
/// `missing`'s timeline ended, if one does.
pub fn classify_absence(
    missing: WalSegmentName,
    later: Option<WalSegmentName>,
    timeline_ended: Option<Lsn>,
    segment_size: u64,
) -> Absence {
    let Some(next) = later else {
        return Absence::EndOfArchive;
    };
    // The timeline needs nothing from `missing` if it ended at or before
    // its start; the later segments are then another server's WAL on the
    // old timeline (the old primary went on writing after a standby was
    // promoted), which this recovery does not follow.
    if timeline_ended.is_some_and(|end| end <= missing.start_lsn(segment_size)) {
        return Absence::EndOfArchive;
    }
    Absence::Hole { missing, next }
}

/// The first full segment after `missing` on its timeline among the keys
/// (`.partial`, `.backup`, `.history` and other names ignored).
pub fn first_later_segment<'a>(
    missing: WalSegmentName,
    keys: impl IntoIterator<Item = &'a str>,
) -> Option<WalSegmentName> {
    keys.into_iter()
        .filter_map(|k| WalFile::parse(k.rsplit('/').next().unwrap_or(k)))
        .filter_map(|f| match f {
            WalFile::Segment(s) if s.timeline == missing.timeline && s > missing => Some(s),
            _ => None,
        })
        .min()
}

/// Where `timeline` ended, by the history of the newest later timeline in
/// the archive that has it as an ancestor (the one recovery to 'latest'
/// follows).
async fn timeline_end(repo: &Repo, content_id: i32, timeline: TimelineId) -> Result<Option<Lsn>> {
    let prefix = format!("{}history/", layout::wal_prefix(content_id));
    let mut later: Vec<TimelineId> = repo
        .storage
        .list(&prefix)
        .await?
        .iter()
        .filter_map(|o| WalFile::parse(o.key.rsplit('/').next().unwrap_or(&o.key)))
        .filter_map(|f| match f {
            WalFile::History(t) if t > timeline => Some(t),
            _ => None,
        })
        .collect();
    later.sort_unstable_by(|a, b| b.cmp(a));
    for tli in later {
        let key = layout::wal_key(content_id, &WalFile::History(tli));
        let bytes = repo.get_bytes(&key).await?;
        let history = parse_history(&String::from_utf8_lossy(&bytes))
            .map_err(|e| Error::Integrity(format!("{key}: not a timeline history file: {e}")))?;
        if let Some(end) = end_of(&history, timeline) {
            return Ok(Some(end));
        }
    }
    Ok(None)
}

fn hole_error(missing: WalSegmentName, next: WalSegmentName, segment_size: u64) -> Error {
    Error::NotFound(format!(
        "WAL segment {missing} is missing from the archive, but {next} (later on timeline {}) is archived: \
         the archive has a hole at {}, and recovery must not end there as if the archive ended. \
         Find {missing} (e.g. in the old server's pg_wal, or another copy of the archive) and archive it \
         with cbdr wal-push, then start the server again: recovery resumes; or restore to a target before {}",
        missing.timeline,
        missing.start_lsn(segment_size),
        missing.start_lsn(segment_size),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: u64 = 16 << 20;

    fn seg(name: &str) -> WalSegmentName {
        WalSegmentName::parse(name).unwrap()
    }

    #[test]
    fn backoff_doubles_to_30_s_and_ends_with_the_budget() {
        let mut b = Backoff::new(Duration::from_secs(300));
        let mut elapsed = Duration::ZERO;
        let mut waits = Vec::new();
        while let Some(d) = b.delay_after_failure(elapsed) {
            waits.push(d.as_secs());
            elapsed += d;
        }
        assert_eq!(
            waits,
            vec![1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30, 30, 30, 29]
        );
        assert_eq!(elapsed, Duration::from_secs(300));
        // A small budget: the last wait is cut short; attempts that took
        // time themselves count against it.
        let mut b = Backoff::new(Duration::from_secs(2));
        assert_eq!(
            b.delay_after_failure(Duration::ZERO),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            b.delay_after_failure(Duration::from_millis(1500)),
            Some(Duration::from_millis(500))
        );
        assert_eq!(b.delay_after_failure(Duration::from_secs(2)), None);
        assert_eq!(
            Backoff::new(Duration::from_secs(5)).delay_after_failure(Duration::from_secs(9)),
            None
        );
    }

    #[test]
    fn later_segments_are_found_on_the_same_timeline_only() {
        let missing = seg("000000010000000000000005");
        let keys = [
            "seg-1/wal/0000000100000000/000000010000000000000004",
            "seg-1/wal/0000000100000000/000000010000000000000006.partial",
            "seg-1/wal/0000000100000000/000000010000000000000006.00000028.backup",
            "seg-1/wal/0000000200000000/000000020000000000000007",
            "seg-1/wal/0000000100000000/00000001000000000000000A",
            "seg-1/wal/0000000100000000/000000010000000000000009",
            "seg-1/wal/0000000100000000/.000000010000000000000008.cbdr-tmp.1.ff",
        ];
        assert_eq!(
            first_later_segment(missing, keys),
            Some(seg("000000010000000000000009"))
        );
        assert_eq!(
            first_later_segment(missing, keys[..4].iter().copied()),
            None
        );
        // Across a group boundary.
        assert_eq!(
            first_later_segment(
                seg("0000000100000000000000FF"),
                ["seg-1/wal/0000000100000001/000000010000000100000000"]
            ),
            Some(seg("000000010000000100000000"))
        );
    }

    #[test]
    fn a_missing_segment_before_a_later_one_is_a_hole() {
        let missing = seg("000000010000000000000005");
        let next = seg("000000010000000000000007");
        assert_eq!(
            classify_absence(missing, None, None, MB16),
            Absence::EndOfArchive
        );
        assert_eq!(
            classify_absence(missing, Some(next), None, MB16),
            Absence::Hole { missing, next }
        );
    }

    #[test]
    fn past_the_end_of_its_timeline_a_missing_segment_is_normal() {
        // Timeline 1 ended in segment 3 (timeline 2's history says so): the
        // old primary's later segments on timeline 1 do not make segment 5
        // a hole; PostgreSQL probes timeline 1 for it when timeline 2 lacks
        // it.
        let missing = seg("000000010000000000000005");
        let next = seg("000000010000000000000007");
        let in_3: Lsn = "0/3000148".parse().unwrap();
        assert_eq!(
            classify_absence(missing, Some(next), Some(in_3), MB16),
            Absence::EndOfArchive
        );
        // Ended exactly where segment 5 starts: it needs nothing from it.
        assert_eq!(
            classify_absence(missing, Some(next), Some(Lsn(5 * MB16)), MB16),
            Absence::EndOfArchive
        );
        // Ended inside segment 5 or later: segment 5 holds WAL of the
        // timeline that recovery needs.
        for end in [Lsn(5 * MB16 + 0x28), Lsn(9 * MB16)] {
            assert_eq!(
                classify_absence(missing, Some(next), Some(end), MB16),
                Absence::Hole { missing, next },
                "{end}"
            );
        }
    }

    #[test]
    fn the_hole_message_names_both_segments_and_the_fix() {
        let e = hole_error(
            seg("000000010000000000000005"),
            seg("000000010000000000000006"),
            MB16,
        );
        assert_eq!(e.exit_code(), ExitCode::NotFound);
        let text = e.to_string();
        for needle in [
            "000000010000000000000005 is missing",
            "000000010000000000000006",
            "0/5000000",
            "cbdr wal-push",
            "target before",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
    }

    #[test]
    fn the_head_is_captured_across_small_writes() {
        let mut w = HeadCapture::new(Vec::new());
        for chunk in [&[1u8; 7][..], &[2u8; 30], &[3u8; 100]] {
            w.write_all(chunk).unwrap();
        }
        assert_eq!(w.head.len(), LONG_HEADER_LEN);
        assert_eq!(&w.head[..7], &[1; 7]);
        assert_eq!(&w.head[37..], &[3; 3]);
        assert_eq!(w.inner.len(), 137);
    }
}
