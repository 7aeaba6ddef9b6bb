//! `restore`: a base backup unpacked into a new data directory, every file
//! checked against the server's manifest, and the recovery settings written
//! so that PostgreSQL replays the archived WAL up to the target.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, FixedOffset, Timelike};
use tokio::task::JoinSet;

use super::manifest::{Manifest, ManifestFile};
use super::progress::{report, Progress};
use super::tar_split::piece_of;
use crate::error::{Error, Result};
use crate::pg::conf::quote_value;
use crate::pg::{Lsn, WalFile, WalSegmentName};
use crate::repo::catalog::BackupRecord;
use crate::repo::{layout, Repo};

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// The end of the archived WAL.
    Latest,
    /// As soon as the backup is consistent.
    Immediate,
    RestorePoint(String),
    Time(DateTime<FixedOffset>),
    Lsn(Lsn),
    Xid(String),
}

/// How a DBA writes the target: `0/C500000`, an RFC 3339 time, the
/// restore point's name.
impl std::fmt::Display for RecoveryTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecoveryTarget::Latest => f.write_str("the end of the archived WAL"),
            RecoveryTarget::Immediate => f.write_str("the end of the backup (immediate)"),
            RecoveryTarget::RestorePoint(n) => write!(f, "restore point {n:?}"),
            RecoveryTarget::Time(t) => write!(f, "time {}", t.to_rfc3339()),
            RecoveryTarget::Lsn(l) => write!(f, "LSN {l}"),
            RecoveryTarget::Xid(x) => write!(f, "transaction {x}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetAction {
    Promote,
    Pause,
    Shutdown,
}

impl TargetAction {
    fn as_str(self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub content_id: i32,
    pub target_dir: PathBuf,
    /// A backup name; `None` or "LATEST" = the newest that ends before the target.
    pub backup: Option<String>,
    pub target: RecoveryTarget,
    pub action: TargetAction,
    /// Tablespace locations: old → new.
    pub tablespace_map: Vec<(String, String)>,
    /// Restore into a non-empty directory (its contents are removed first).
    pub force: bool,
    /// The restore_command written into the restored server's settings.
    pub restore_command: String,
    /// Parts downloaded at once.
    pub parallel: usize,
    /// Turn archiving off in the restored server (else its setting is kept,
    /// and a promoted copy archives a new timeline into the repository).
    pub archive_off: bool,
    /// Bytes written and the phase, for callers that report progress.
    pub progress: Option<Arc<Progress>>,
}

/// Chooses the backup for a target: the newest complete backup that ends
/// before the target; errors when none does.
pub async fn choose_backup(
    repo: &Repo,
    opts: &RestoreOptions,
) -> Result<(BackupRecord, Option<Lsn>)> {
    let target_lsn = match &opts.target {
        RecoveryTarget::RestorePoint(name) => {
            let key = layout::restore_point_key(opts.content_id, name);
            match repo.get_json::<crate::repo::catalog::RestorePointRecord>(&key).await {
                Ok(rp) => Some(rp.lsn),
                Err(Error::Storage(e)) if e.is_not_found() => {
                    return Err(Error::NotFound(format!(
                        "restore point {name:?} is not in the repository of content id {}: `cbdr list` shows the restore points; give one of them (points made with plain pg_create_restore_point() are not recorded: give --backup and --target-lsn instead)",
                        opts.content_id
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        RecoveryTarget::Lsn(l) => Some(*l),
        _ => None,
    };
    if let Some(name) = opts
        .backup
        .as_deref()
        .filter(|n| !n.eq_ignore_ascii_case("LATEST"))
    {
        let b = repo.backup(opts.content_id, name).await?;
        if let Some(lsn) = target_lsn {
            if b.stop_lsn > lsn {
                return Err(Error::Usage(format!(
                    "backup {name} ends at LSN {}, after the target LSN {lsn}: recovery cannot go back in time; choose an older backup",
                    b.stop_lsn
                )));
            }
        }
        if let RecoveryTarget::Time(t) = &opts.target {
            if b.stop_time > *t {
                return Err(Error::Usage(format!(
                    "backup {name} ends at {}, after the target time {}: recovery cannot go back in time; choose an older backup or a later time",
                    seconds(b.stop_time),
                    t.to_rfc3339()
                )));
            }
        }
        return Ok((b, target_lsn));
    }
    let checked = repo.backups_checked(opts.content_id).await?;
    if checked.records.is_empty() && !checked.unreadable.is_empty() {
        let names: Vec<&str> = checked.unreadable.iter().map(|u| u.key.as_str()).collect();
        return Err(Error::Integrity(format!(
            "no backup record of content id {} can be read ({}): {}",
            opts.content_id,
            names.join(", "),
            checked.unreadable[0].error
        )));
    }
    let backups = checked.warn();
    if backups.is_empty() {
        return Err(Error::NotFound(format!(
            "the repository holds no complete base backup of content id {}: run `cbdr backup-push` first",
            opts.content_id
        )));
    }
    let fits = |b: &&BackupRecord| match (&opts.target, target_lsn) {
        (_, Some(lsn)) => b.stop_lsn <= lsn,
        (RecoveryTarget::Time(t), _) => b.stop_time <= *t,
        _ => true,
    };
    match backups.iter().rev().find(fits) {
        Some(b) => Ok((b.clone(), target_lsn)),
        None => Err(Error::Usage(format!(
            "no backup ends before the target {}: the oldest, {}, ends at LSN {} ({}); nothing can be restored to that point: choose a target after {}",
            opts.target,
            backups[0].name,
            backups[0].stop_lsn,
            seconds(backups[0].stop_time),
            match opts.target {
                // The next whole second: a target at the end's second
                // itself may be before the end.
                RecoveryTarget::Time(_) => seconds(
                    backups[0].stop_time.with_nanosecond(0).unwrap_or(backups[0].stop_time)
                        + chrono::Duration::seconds(1)
                ),
                _ => backups[0].stop_lsn.to_string(),
            }
        ))),
    }
}

/// A time as messages give it: RFC 3339, to the second, in UTC.
fn seconds(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Checks that the archive holds the WAL from the backup's start to `upto`
/// (or the backup's end), before anything is written.
async fn check_wal(repo: &Repo, backup: &BackupRecord, upto: Option<Lsn>) -> Result<()> {
    let size = backup.wal_segment_size;
    let first = WalSegmentName::from_lsn(backup.timeline, backup.start_lsn, size);
    let end = upto.unwrap_or(backup.stop_lsn).max(backup.stop_lsn);
    let last = WalSegmentName::from_lsn(
        backup.stop_timeline,
        end.saturating_sub(1).max(backup.start_lsn),
        size,
    );
    let archived: HashSet<String> = repo
        .storage
        .list(&layout::wal_prefix(backup.content_id))
        .await?
        .into_iter()
        .filter_map(|o| o.key.rsplit('/').next().map(String::from))
        .collect();
    let mut seg = first;
    loop {
        if !archived.contains(&WalFile::Segment(seg).to_string()) {
            let what = if seg.start_lsn(size) < backup.stop_lsn {
                "the backup needs it to become consistent"
            } else {
                "it lies between the backup and the target"
            };
            return Err(Error::Usage(format!(
                "WAL segment {seg} is not in the archive and {what}: restoring to that target is impossible (check archiving on the server, or choose an earlier target)"
            )));
        }
        if seg >= last {
            return Ok(());
        }
        seg = seg.next(size);
    }
}

/// A backup object that is gone although the backup's record lists it:
/// the backup is damaged (exit 4), not merely "not found".
fn damaged(backup: &BackupRecord, e: Error) -> Error {
    match e {
        Error::Storage(crate::storage::StorageError::NotFound { key, location }) => {
            Error::Integrity(format!(
                "backup {} is damaged: its object {key} is missing from {location}; it cannot be restored: restore another backup (`cbdr list` shows them) and take a new one",
                backup.name
            ))
        }
        other => other,
    }
}

/// Checks that every part the backup's record lists is in the repository,
/// before anything is written (their contents are verified as they are
/// unpacked).
async fn check_parts(repo: &Repo, backup: &BackupRecord) -> Result<()> {
    let stored: HashSet<String> = repo
        .storage
        .list(&layout::backup_prefix(backup.content_id, &backup.name))
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    let location = repo.storage.location();
    let keys = std::iter::once(layout::backup_manifest_key(backup.content_id, &backup.name)).chain(
        backup.archives.iter().flat_map(|a| {
            (0..a.parts).map(|part| {
                layout::backup_part_key(
                    backup.content_id,
                    &backup.name,
                    &a.name,
                    part,
                    a.server_compression,
                )
            })
        }),
    );
    for key in keys {
        if !stored.contains(&key) {
            let location = location.clone();
            return Err(damaged(
                backup,
                Error::Storage(crate::storage::StorageError::NotFound { key, location }),
            ));
        }
    }
    Ok(())
}

/// Refuses a target that recovery certainly cannot reach, before anything
/// is copied:
/// * an LSN at or after the end of the archived WAL (no record starts
///   there, so PostgreSQL would stop with "recovery ended before configured
///   recovery target was reached");
/// * a time after now (WAL is not indexed by time: a time between the last
///   archived commit and now cannot be told from one after the archive's
///   end, and is left to PostgreSQL);
/// * an xid that is not a transaction id.
async fn check_target(repo: &Repo, opts: &RestoreOptions, backup: &BackupRecord) -> Result<()> {
    match &opts.target {
        RecoveryTarget::Lsn(lsn) => check_lsn_archived(repo, backup, *lsn).await,
        RecoveryTarget::Time(t) => {
            let now = chrono::Utc::now();
            if *t > now {
                return Err(Error::Usage(format!(
                    "the target time {} is in the future (now is {}): recovery can only reach commits already archived; choose a time up to now",
                    t.to_rfc3339(),
                    now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )));
            }
            Ok(())
        }
        RecoveryTarget::Xid(x) => {
            let t = x.trim();
            let ok = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16).is_ok(),
                None => t.parse::<u64>().is_ok(),
            };
            if ok {
                Ok(())
            } else {
                Err(Error::Usage(format!(
                    "--target-xid {x:?} is not a transaction id: give the number, e.g. 1234 (txid_current() or pg_current_xact_id() tells it)"
                )))
            }
        }
        _ => Ok(()),
    }
}

/// Refuses a target LSN at or after the end of the WAL archived on the
/// backup's timeline or a later one.
async fn check_lsn_archived(repo: &Repo, backup: &BackupRecord, lsn: Lsn) -> Result<()> {
    use crate::repo::coverage::{end_of_written_wal, last_segment};
    let size = backup.wal_segment_size;
    let objects = repo
        .storage
        .list(&layout::wal_prefix(backup.content_id))
        .await?;
    let Some(last) = last_segment(
        objects.iter().filter_map(|o| o.key.rsplit('/').next()),
        backup.timeline,
        size,
    ) else {
        // No WAL at all: check_wal names the first missing segment.
        return Ok(());
    };
    if lsn.segment_no(size) < last.start_lsn(size).segment_no(size) {
        return Ok(());
    }
    let key = layout::wal_key(backup.content_id, &WalFile::Segment(last));
    let end = end_of_written_wal(last, &repo.get_bytes(&key).await?, size);
    if lsn < end {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "the target LSN {lsn} is past the end of the archived WAL: the archive of content id {} ends at LSN {end} (segment {last}), so recovery could not reach it (PostgreSQL would stop with \"recovery ended before configured recovery target was reached\"). Choose a target before {end}, or archive more WAL first (on the server: SELECT pg_switch_wal(); then wait until `cbdr list` shows the segment)",
        backup.content_id
    )))
}

/// Refuses a data directory a running server uses: its `postmaster.pid`
/// names a live process (a stale one, left by a crash, is no obstacle).
fn check_no_live_server(dir: &Path) -> Result<()> {
    let pid_file = dir.join("postmaster.pid");
    let text = match fs::read_to_string(&pid_file) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("reading {}", pid_file.display()), e)),
    };
    let Some(pid) = postmaster_pid(&text) else {
        return Ok(());
    };
    if process_alive(pid) {
        return Err(Error::Usage(format!(
            "{} is the data directory of a running server (postmaster.pid names the live process {pid}): refusing to restore over it, --force or not. Stop the server first (pg_ctl stop -D {}); if process {pid} is not a PostgreSQL server of this directory, remove the stale postmaster.pid",
            dir.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// Reads and checks the server's manifest of the backup (its bytes, kept
/// for the restored directory, and its files).
async fn read_manifest(repo: &Repo, backup: &BackupRecord) -> Result<(Vec<u8>, Manifest)> {
    let key = layout::backup_manifest_key(backup.content_id, &backup.name);
    let bytes = repo.get_bytes(&key).await.map_err(|e| damaged(backup, e))?;
    let manifest = Manifest::parse(&bytes).map_err(|e| {
        Error::Integrity(format!(
            "backup {} is damaged: its manifest {key}: {e}; restore another backup (`cbdr list` shows them)",
            backup.name
        ))
    })?;
    Ok((bytes, manifest))
}

/// The PID on the first line of a `postmaster.pid` (negative for a
/// single-user backend), if any.
fn postmaster_pid(text: &str) -> Option<i32> {
    let pid: i64 = text.lines().next()?.trim().parse().ok()?;
    i32::try_from(pid.abs()).ok().filter(|p| *p > 0)
}

/// Whether a process with this PID exists (owned by anyone).
fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    let exists = rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    // A zombie (dead, not yet reaped) is no server.
    let zombie = fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next())
            .is_some_and(|c| c == 'Z' || c == 'X')
    });
    exists && !zombie
}

/// Restores a backup and prepares recovery. Returns the backup restored.
pub async fn restore(repo: &Repo, opts: &RestoreOptions) -> Result<BackupRecord> {
    check_no_live_server(&opts.target_dir)?;
    let (backup, target_lsn) = choose_backup(repo, opts).await?;
    if backup.format > super::backup::BACKUP_FORMAT {
        return Err(Error::Usage(format!(
            "backup {} has format {}, newer than this cbdr reads ({}): restore it with a newer cbdr",
            backup.name,
            backup.format,
            super::backup::BACKUP_FORMAT
        )));
    }
    check_target(repo, opts, &backup).await?;
    check_wal(repo, &backup, target_lsn).await?;
    check_parts(repo, &backup).await?;
    // A restore point is on a known timeline: follow that one, not the
    // latest (a copy restored and promoted earlier may have archived a
    // newer timeline that branched off before the point).
    let target_timeline = match &opts.target {
        RecoveryTarget::RestorePoint(name) => Some(
            repo.get_json::<crate::repo::catalog::RestorePointRecord>(&layout::restore_point_key(
                opts.content_id,
                name,
            ))
            .await?
            .timeline,
        ),
        _ => None,
    };
    tracing::info!(
        "restoring backup {} into {}",
        backup.name,
        opts.target_dir.display()
    );

    report(&opts.progress, |p| {
        p.set_total(backup.plain_bytes());
        p.set_phase("downloading");
    });
    let (manifest_bytes, manifest) = read_manifest(repo, &backup).await?;
    let manifest = Arc::new(manifest);

    // Where each archive goes: the data directory, or its tablespace's
    // (possibly remapped) location.
    let mut dirs: HashMap<String, (PathBuf, String)> = HashMap::new();
    for a in &backup.archives {
        if a.name == "base" {
            dirs.insert(a.name.clone(), (opts.target_dir.clone(), String::new()));
        } else {
            let old = a.tablespace_path.clone().unwrap_or_default();
            let new = opts
                .tablespace_map
                .iter()
                .find(|(o, _)| *o == old)
                .map(|(_, n)| n.clone())
                .unwrap_or(old.clone());
            dirs.insert(
                a.name.clone(),
                (PathBuf::from(new), format!("pg_tblspc/{}/", a.name)),
            );
        }
    }
    // Every location is checked before any is written.
    for (dir, _) in dirs.values() {
        check_dir(dir, opts.force)?;
    }
    check_free_space(&backup.name, &manifest, &dirs, &opts.target_dir)?;
    for (dir, _) in dirs.values() {
        prepare_dir(dir, opts.force)?;
    }

    let started = std::time::Instant::now();
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let pieces: Arc<Mutex<Pieces>> = Arc::default();
    let stop: Arc<AtomicBool> = Arc::default();
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    // Part keys are made as they are needed: nothing grows with the
    // number of parts. A stream the server compressed is one job (decoded
    // in order), started first: it takes the longest.
    let mut archives: Vec<&crate::repo::catalog::ArchiveRecord> = backup.archives.iter().collect();
    archives.sort_by_key(|a| a.server_compression.is_none());
    let mut queue = archives.into_iter().flat_map(|a| {
        let (dir, manifest_prefix) = dirs[&a.name].clone();
        let (content_id, name, archive) = (opts.content_id, backup.name.clone(), a.name.clone());
        let key = move |part, compression| {
            layout::backup_part_key(content_id, &name, &archive, part, compression)
        };
        let jobs: Box<dyn Iterator<Item = Job> + Send> = match a.server_compression {
            Some(compression) => Box::new(std::iter::once(Job::Stream {
                keys: (0..a.parts)
                    .map(|part| key(part, Some(compression)))
                    .collect(),
                compression,
            })),
            None => Box::new((0..a.parts).map(move |part| Job::Part(key(part, None)))),
        };
        jobs.map(move |job| (job, dir.clone(), manifest_prefix.clone()))
    });
    // The disk persists what is written while the rest is decoded, rather
    // than all of it in the final sync.
    let early_sync = EarlySync::start(dirs.values().map(|(d, _)| d.clone()).collect());
    let mut failure: Option<Error> = None;
    loop {
        while failure.is_none() && tasks.len() < opts.parallel.max(1) {
            let Some((job, dir, prefix)) = queue.next() else {
                break;
            };
            let repo = repo.clone();
            let manifest = manifest.clone();
            let seen = seen.clone();
            let pieces = pieces.clone();
            let stop = stop.clone();
            let progress = opts.progress.clone();
            let unpack_into = move |r: &mut dyn Read, label: &str| {
                let done = Done {
                    manifest: &manifest,
                    seen: &seen,
                    pieces: &pieces,
                    stop: &stop,
                };
                unpack(r, &dir, &prefix, &done, label, progress.as_deref())
            };
            match job {
                Job::Part(key) => {
                    tasks.spawn(async move {
                        let part = key.clone();
                        repo.read_with(&key, move |r| unpack_into(r, &part)).await
                    });
                }
                Job::Stream { keys, compression } => {
                    let prefetch = opts.parallel.clamp(1, STREAM_PREFETCH);
                    tasks.spawn(unpack_stream(
                        repo,
                        keys,
                        compression,
                        prefetch,
                        unpack_into,
                    ));
                }
            }
        }
        match tasks.join_next().await {
            None => break,
            // After a failure the other tasks are told to stop, and waited
            // for (their unpacking threads still read from the storage:
            // aborted, they would outlive the runtime); the first failure
            // is the one reported.
            Some(joined) => {
                let r = joined
                    .map_err(|e| Error::Internal(format!("restore task: {e}")))
                    .and_then(|r| r);
                if let Err(e) = r {
                    failure.get_or_insert(damaged(&backup, e));
                    stop.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    early_sync.stop();
    if let Some(e) = failure {
        return Err(incomplete(&opts.target_dir, e));
    }

    tracing::debug!(
        "restore of {}: every part unpacked after {:.2}s",
        backup.name,
        started.elapsed().as_secs_f64()
    );
    // Every file cut into pieces got all of them.
    if let Some((path, have)) = pieces.lock().unwrap().incomplete() {
        return Err(incomplete(
            &opts.target_dir,
            Error::Integrity(format!(
                "pieces of {path} are missing from the backup ({have} bytes of it restored)"
            )),
        ));
    }
    // Every file of the manifest arrived, with its checksum.
    let seen = seen.lock().unwrap();
    let mut missing: Vec<&String> = manifest
        .files
        .keys()
        .filter(|p| !seen.contains(*p))
        .collect();
    if !missing.is_empty() {
        missing.sort();
        return Err(incomplete(
            &opts.target_dir,
            Error::Integrity(format!(
                "{} files of the backup manifest are missing from the backup, e.g. {}",
                missing.len(),
                missing[0]
            )),
        ));
    }

    // Remapped tablespaces: tablespace_map points recovery at them.
    if !opts.tablespace_map.is_empty() {
        rewrite_tablespace_map(&opts.target_dir, &backup, &dirs)?;
    }
    fs::write(opts.target_dir.join("backup_manifest"), &manifest_bytes)
        .map_err(|e| Error::io("writing backup_manifest", e))?;
    report(&opts.progress, |p| p.set_phase("syncing"));
    write_recovery_settings(&opts.target_dir, opts, target_timeline)?;
    // Everything on disk, then pg_control: until it is there, the directory
    // cannot start.
    sync_tree(&opts.target_dir)?;
    for (dir, _) in dirs.values() {
        sync_tree(dir)?;
    }
    let control = opts.target_dir.join("global/pg_control");
    fs::rename(control.with_extension(PARTIAL_EXT), &control)
        .map_err(|e| Error::io("putting global/pg_control in place", e))?;
    sync_dir(&opts.target_dir.join("global"))?;
    tracing::debug!(
        "restore of {}: on disk after {:.2}s",
        backup.name,
        started.elapsed().as_secs_f64()
    );
    Ok(backup)
}

const PARTIAL_EXT: &str = "cbdr-restoring";

/// Refuses (exit 3, before anything is written) a restore whose files do
/// not fit: the manifest gives every file's size, each rounded up to the
/// filesystem's block size; locations on one filesystem add up.
fn check_free_space(
    backup: &str,
    manifest: &Manifest,
    dirs: &HashMap<String, (PathBuf, String)>,
    target_dir: &Path,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // device -> (a directory on it, bytes needed, bytes free, block size)
    let mut by_device: HashMap<u64, (PathBuf, u64, u64, u64)> = HashMap::new();
    for (path, file) in &manifest.files {
        let dir = dirs
            .values()
            .find(|(_, prefix)| !prefix.is_empty() && path.starts_with(prefix.as_str()))
            .map(|(d, _)| d.as_path())
            .unwrap_or(target_dir);
        let existing = dir
            .ancestors()
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"));
        let dev = fs::metadata(existing)
            .map_err(|e| Error::io(format!("checking {}", existing.display()), e))?
            .dev();
        let entry = match by_device.entry(dev) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let (free, block) = free_space(existing).map_err(|e| {
                    Error::io(format!("checking free space in {}", existing.display()), e)
                })?;
                v.insert((dir.to_path_buf(), 0, free, block.max(1)))
            }
        };
        entry.1 += file.size.div_ceil(entry.3) * entry.3;
    }
    for (dir, need, free, _) in by_device.values() {
        if need > free {
            return Err(Error::io(
                format!(
                    "not enough free space for backup {backup} in {}: its files need {need} bytes ({} MiB), the filesystem has {free} bytes ({} MiB) free: free {} MiB there, or restore somewhere else (--target-dir, --tablespace-map)",
                    dir.display(),
                    need.div_ceil(1 << 20),
                    free >> 20,
                    (need - free).div_ceil(1 << 20)
                ),
                io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
    }
    Ok(())
}

/// Bytes an unprivileged writer may still use on the filesystem of
/// `path`, and its block size.
fn free_space(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid C string; `st` is written by statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_bavail as u64 * frsize, (st.f_bsize as u64).max(frsize)))
}

/// What one restore task unpacks.
enum Job {
    /// A part that is a tar of its own.
    Part(String),
    /// The parts of a stream the server compressed, in order.
    Stream {
        keys: Vec<String>,
        compression: crate::codec::Compression,
    },
}

/// Parts of a compressed stream fetched and decrypted ahead of its decoder.
const STREAM_PREFETCH: usize = 3;

/// Unpacks a stream the server compressed: its parts fetched and
/// decrypted `prefetch` at a time, in order, into one decoder.
async fn unpack_stream(
    repo: Repo,
    keys: Vec<String>,
    compression: crate::codec::Compression,
    prefetch: usize,
    unpack_into: impl FnOnce(&mut dyn Read, &str) -> Result<()> + Send + 'static,
) -> Result<()> {
    use futures_util::StreamExt;
    let label = match (keys.first(), keys.last()) {
        (Some(first), Some(last)) if keys.len() > 1 => format!("{first} to {last}"),
        (Some(first), _) => first.clone(),
        _ => return Ok(()),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>>>(1);
    let fetch = tokio::spawn(async move {
        let mut parts = futures_util::stream::iter(keys)
            .map(|key| {
                let repo = repo.clone();
                async move { repo.get_bytes(&key).await }
            })
            .buffered(prefetch);
        while let Some(part) = parts.next().await {
            let failed = part.is_err();
            if tx.send(part).await.is_err() || failed {
                return;
            }
        }
    });
    let failure: Arc<Mutex<Option<Error>>> = Arc::default();
    let reader = PartsReader {
        rx,
        buf: Vec::new(),
        at: 0,
        failure: failure.clone(),
    };
    let unpacked = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut decoder = compression
            .decoder(reader)
            .map_err(|e| Error::Integrity(format!("{label}: {e}")))?;
        unpack_into(&mut decoder, &label)?;
        // The rest of the stream (the tar's end, the compressor's trailer)
        // is read too, so that every part is checked, to the last.
        io::copy(&mut decoder, &mut io::sink())
            .map_err(|e| Error::Integrity(format!("{label}: after the tar's end: {e}")))?;
        Ok(())
    })
    .await
    .map_err(|e| Error::Internal(format!("restore task: {e}")));
    fetch.abort();
    // A part that could not be read explains the decoder's failure.
    if let Some(e) = failure.lock().unwrap().take() {
        return Err(e);
    }
    unpacked?
}

/// The decrypted parts of a stream, read as one.
struct PartsReader {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>>>,
    buf: Vec<u8>,
    at: usize,
    /// Why a part could not be read.
    failure: Arc<Mutex<Option<Error>>>,
}

impl Read for PartsReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.buf.len() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(part)) => {
                    self.buf = part;
                    self.at = 0;
                }
                Some(Err(e)) => {
                    let text = e.to_string();
                    *self.failure.lock().unwrap() = Some(e);
                    return Err(io::Error::other(text));
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn incomplete(dir: &Path, e: Error) -> Error {
    tracing::error!(
        "the restore into {} did not complete: the directory holds no pg_control and cannot start; remove it or restore again with --force",
        dir.display()
    );
    e
}

/// Refuses a non-empty directory unless `force`.
fn check_dir(dir: &Path, force: bool) -> Result<()> {
    let non_empty = fs::read_dir(dir).is_ok_and(|mut e| e.next().is_some());
    if non_empty && !force {
        return Err(Error::Usage(format!(
            "{} is not empty: restore into a new or empty directory, or add --force to replace its contents",
            dir.display()
        )));
    }
    Ok(())
}

/// Creates the directory (mode 0700), or empties it when `force`.
fn prepare_dir(dir: &Path, force: bool) -> Result<()> {
    check_dir(dir, force)?;
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                for e in fs::read_dir(dir)
                    .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
                {
                    let p = e.map_err(|e| Error::io("reading directory", e))?.path();
                    let r = if p.is_dir() && !p.is_symlink() {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                    r.map_err(|e| Error::io(format!("removing {}", p.display()), e))?;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("setting permissions of {}", dir.display()), e))
}

fn rewrite_tablespace_map(
    data_dir: &Path,
    backup: &BackupRecord,
    dirs: &HashMap<String, (PathBuf, String)>,
) -> Result<()> {
    let mut text = String::new();
    for a in backup.archives.iter().filter(|a| a.name != "base") {
        text.push_str(&format!("{} {}\n", a.name, dirs[&a.name].0.display()));
    }
    fs::write(data_dir.join("tablespace_map"), text)
        .map_err(|e| Error::io("writing tablespace_map", e))
}

fn write_recovery_settings(
    dir: &Path,
    opts: &RestoreOptions,
    timeline: Option<crate::pg::TimelineId>,
) -> Result<()> {
    let mut conf = String::from("\n# Added by cbdr restore\n");
    conf.push_str(&format!(
        "restore_command = {}\n",
        quote_value(&opts.restore_command)
    ));
    match &opts.target {
        RecoveryTarget::Latest => {}
        RecoveryTarget::Immediate => conf.push_str("recovery_target = 'immediate'\n"),
        RecoveryTarget::RestorePoint(n) => {
            conf.push_str(&format!("recovery_target_name = {}\n", quote_value(n)))
        }
        RecoveryTarget::Time(t) => conf.push_str(&format!(
            "recovery_target_time = {}\n",
            quote_value(&t.to_rfc3339())
        )),
        RecoveryTarget::Lsn(l) => conf.push_str(&format!(
            "recovery_target_lsn = {}\n",
            quote_value(&l.to_string())
        )),
        RecoveryTarget::Xid(x) => {
            conf.push_str(&format!("recovery_target_xid = {}\n", quote_value(x)))
        }
    }
    if opts.target != RecoveryTarget::Latest {
        conf.push_str(&format!(
            "recovery_target_action = {}\n",
            quote_value(opts.action.as_str())
        ));
    }
    match timeline {
        Some(t) => conf.push_str(&format!("recovery_target_timeline = '{}'\n", t.0)),
        None => conf.push_str("recovery_target_timeline = 'latest'\n"),
    }
    if opts.archive_off {
        conf.push_str("archive_mode = 'off'\n");
    }
    let auto = dir.join("postgresql.auto.conf");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&auto)
        .map_err(|e| Error::io("opening postgresql.auto.conf", e))?;
    f.write_all(conf.as_bytes())
        .map_err(|e| Error::io("writing postgresql.auto.conf", e))?;
    fs::write(dir.join("recovery.signal"), "").map_err(|e| Error::io("writing recovery.signal", e))
}

/// fsync of a whole file system tree, in one call (syncfs).
fn sync_tree(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
    // SAFETY: syncfs takes a valid open file descriptor.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc != 0 {
        return Err(Error::io(
            format!("syncing {}", dir.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Syncs the restore's file systems over and over while files are written
/// (a thread), so that the disk persists them as they come: the final sync,
/// which alone guarantees durability, then finds little left to do. A
/// failure here is left for the final sync to report.
struct EarlySync {
    stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Pause between two early syncs: short, as the disk persists data best
/// when always asked to (a 1.6 GB restore measured: 3.0-3.3 s with 0-20 ms
/// pauses, 3.4 s with 100 ms, 3.7-4.1 s with 1 s).
const EARLY_SYNC_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

impl EarlySync {
    fn start(mut dirs: Vec<PathBuf>) -> EarlySync {
        // One directory per file system is enough for syncfs.
        let mut devices = HashSet::new();
        dirs.retain(|d| {
            fs::metadata(d).is_ok_and(|m| devices.insert(std::os::unix::fs::MetadataExt::dev(&m)))
        });
        let stop: Arc<(Mutex<bool>, std::sync::Condvar)> = Arc::default();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cbdr-early-sync".into())
            .spawn(move || loop {
                let (lock, wake) = &*flag;
                let stopped = wake
                    .wait_timeout_while(lock.lock().unwrap(), EARLY_SYNC_PAUSE, |s| !*s)
                    .unwrap()
                    .0;
                if *stopped {
                    return;
                }
                drop(stopped);
                for d in &dirs {
                    let _ = sync_tree(d);
                }
            })
            .ok();
        EarlySync { stop, thread }
    }

    /// Stops (and waits for) the syncing thread.
    fn stop(self) {}
}

impl Drop for EarlySync {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap() = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// fsync of a directory (a rename in it made durable).
fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
}

/// Where restored files are checked off.
struct Done<'a> {
    manifest: &'a Manifest,
    /// Manifest paths restored whole and checked.
    seen: &'a Mutex<HashSet<String>>,
    pieces: &'a Mutex<Pieces>,
    /// Set when another part failed: unpacking stops.
    stop: &'a AtomicBool,
}

impl Done<'_> {
    fn check_stop(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(Error::Internal(
                "stopped: another part of the restore failed".into(),
            ));
        }
        Ok(())
    }

    /// Checks a whole file against the manifest and checks it off.
    /// A file the manifest does not list is refused, as pg_verifybackup
    /// refuses it: the server lists every file it sends.
    fn file(&self, path: String, size: u64, crc: u32) -> std::result::Result<(), String> {
        let Some(ManifestFile { size: want, crc32c }) = self.manifest.files.get(&path) else {
            return Err(format!(
                "{path} is not in the backup manifest: the parts and the manifest are not of the same backup"
            ));
        };
        if *want != size {
            return Err(format!(
                "{path} does not match the backup manifest: {size} bytes, the manifest says {want}"
            ));
        }
        if let Some(want) = crc32c.filter(|c| *c != crc) {
            return Err(format!(
                "{path} does not match the backup manifest: CRC32C {crc:08x}, the manifest says {want:08x}"
            ));
        }
        self.seen.lock().unwrap().insert(path);
        Ok(())
    }
}

/// Files restored in pieces (see [`super::tar_split`]): the runs of each
/// written so far, merged with their neighbours as they arrive (their
/// CRC32Cs combined), so that memory stays small; a file is checked against
/// the manifest once its runs cover it.
#[derive(Debug, Default)]
struct Pieces {
    files: HashMap<String, FileRuns>,
}

#[derive(Debug)]
struct FileRuns {
    size: u64,
    /// Disjoint, sorted by start.
    runs: Vec<Run>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    start: u64,
    len: u64,
    crc: u32,
}

impl Run {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

impl Pieces {
    /// Adds a piece of the file `path` of `size` bytes; returns the file's
    /// CRC32C once all its pieces are in.
    fn add(
        &mut self,
        path: &str,
        size: u64,
        piece: Run,
    ) -> std::result::Result<Option<u32>, String> {
        if piece
            .start
            .checked_add(piece.len)
            .is_none_or(|end| end > size)
        {
            return Err(format!(
                "a piece of {path} at {} of {} bytes ends after the file's end {size}",
                piece.start, piece.len
            ));
        }
        let f = self
            .files
            .entry(path.to_string())
            .or_insert_with(|| FileRuns {
                size,
                runs: Vec::new(),
            });
        if f.size != size {
            return Err(format!(
                "pieces of {path} disagree on its size ({} and {size})",
                f.size
            ));
        }
        let at = f.runs.partition_point(|r| r.start < piece.start);
        let overlaps = (at > 0 && f.runs[at - 1].end() > piece.start)
            || f.runs.get(at).is_some_and(|r| r.start < piece.end());
        if overlaps {
            return Err(format!("pieces of {path} overlap at {}", piece.start));
        }
        f.runs.insert(at, piece);
        // Merge with the next run, then with the previous one.
        if at + 1 < f.runs.len() && f.runs[at].end() == f.runs[at + 1].start {
            let next = f.runs.remove(at + 1);
            let r = &mut f.runs[at];
            r.crc = crc32c::crc32c_combine(r.crc, next.crc, next.len as usize);
            r.len += next.len;
        }
        if at > 0 && f.runs[at - 1].end() == f.runs[at].start {
            let this = f.runs.remove(at);
            let r = &mut f.runs[at - 1];
            r.crc = crc32c::crc32c_combine(r.crc, this.crc, this.len as usize);
            r.len += this.len;
        }
        if let [whole] = f.runs[..] {
            if whole.start == 0 && whole.len == size {
                self.files.remove(path);
                return Ok(Some(whole.crc));
            }
        }
        Ok(None)
    }

    /// A file some of whose pieces never came: its path and bytes restored.
    fn incomplete(&self) -> Option<(String, u64)> {
        let mut paths: Vec<&String> = self.files.keys().collect();
        paths.sort();
        paths.first().map(|p| {
            let have = self.files[*p].runs.iter().map(|r| r.len).sum();
            ((*p).clone(), have)
        })
    }
}

/// Bytes written to a file before its writeback is started: the disk then
/// works from the start of the restore, not only at the final sync.
const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;
/// Bytes per write.
const WRITE_SIZE: usize = 1024 * 1024;

/// A file being restored, or a piece of one, written from `start` through
/// the page cache, its writeback started every [`WRITEBACK_STEP`] bytes.
/// (Direct I/O was measured slower here: its synchronous 1 MiB writes wait
/// on the disk one by one, where the writeback sends large requests.)
struct OutFile {
    file: fs::File,
    start: u64,
    written: u64,
    /// Bytes whose writeback was started.
    flushed: u64,
}

impl OutFile {
    fn open(path: &Path, start: u64, truncate: bool) -> io::Result<OutFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(truncate)
            .mode(0o600)
            .open(path)?;
        Ok(OutFile {
            file,
            start,
            written: 0,
            flushed: 0,
        })
    }

    fn write(&mut self, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(data, self.start + self.written)?;
        self.written += data.len() as u64;
        if self.written - self.flushed >= WRITEBACK_STEP {
            self.writeback();
        }
        Ok(())
    }

    fn writeback(&mut self) {
        if self.written > self.flushed {
            start_writeback(
                &self.file,
                self.start + self.flushed,
                self.written - self.flushed,
            );
            self.flushed = self.written;
        }
    }

    /// Starts the writeback of the rest, so the final sync has little left
    /// to do.
    fn finish(mut self) {
        self.writeback();
    }
}

/// Starts writing back `len` bytes of `file` from `offset` (no wait).
fn start_writeback(file: &fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range on an open file descriptor; a failure only
    // means the final sync does all the work.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// True when `rel` under `dir` is or goes through a symbolic link (one an
/// earlier entry of the archive made, such as `pg_tblspc/16384`): what is
/// written there would land outside the directory restored into.
fn through_link(dir: &Path, rel: &Path) -> bool {
    let mut path = dir.to_path_buf();
    for c in rel.components() {
        path.push(c);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => return true,
            Ok(_) => {}
            // Not there yet: nothing under it is either.
            Err(_) => return false,
        }
    }
    false
}

/// Unpacks one decoded tar stream into `dir` as a restore does, its files
/// checked against `manifest`; returns the first file some of whose pieces
/// did not come. The fuzz targets' entry point (see `crate::fuzz_api`): the manifest is
/// JSON, as stored.
pub(crate) fn unpack_one(
    tar: &[u8],
    dir: &Path,
    manifest_json: &[u8],
) -> Result<Option<(String, u64)>> {
    let manifest =
        &Manifest::parse(manifest_json).map_err(|e| Error::Integrity(format!("manifest: {e}")))?;
    let seen = Mutex::new(HashSet::new());
    let pieces = Mutex::new(Pieces::default());
    let stop = AtomicBool::new(false);
    let done = Done {
        manifest,
        seen: &seen,
        pieces: &pieces,
        stop: &stop,
    };
    unpack(tar, dir, "", &done, "part", None)?;
    let incomplete = pieces.lock().unwrap().incomplete();
    Ok(incomplete)
}

/// Unpacks one part's decoded tar stream, checking each file against the
/// manifest (a file cut into pieces once all its pieces are in). Runs on a
/// blocking thread.
fn unpack(
    reader: impl Read,
    dir: &Path,
    manifest_prefix: &str,
    done: &Done<'_>,
    part: &str,
    progress: Option<&Progress>,
) -> Result<()> {
    let bad = |what: String| Error::Integrity(format!("{part}: {what}"));
    let codec_error = |e: &io::Error| {
        e.get_ref()
            .is_some_and(|i| i.is::<crate::codec::CodecError>())
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar stream: {e}")))?;
    let mut buf = vec![0u8; WRITE_SIZE];
    for entry in entries {
        done.check_stop()?;
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) if codec_error(&e) => {
                return Err(Error::Codec(crate::codec::CodecError::from_io(e, part)))
            }
            Err(e) => return Err(bad(format!("damaged tar stream: {e}"))),
        };
        let rel = entry
            .path()
            .map_err(|e| bad(format!("bad file name: {e}")))?
            .into_owned();
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(bad(format!("refusing the path {}", rel.display())));
        }
        if through_link(dir, &rel) {
            return Err(bad(format!(
                "refusing {}: it goes through a symbolic link of the archive",
                rel.display()
            )));
        }
        let rel_str = rel.to_string_lossy().trim_end_matches('/').to_string();
        let dest = dir.join(&rel);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dest)
                .map_err(|e| Error::io(format!("creating {}", dest.display()), e))?;
            continue;
        }
        if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(|e| bad(format!("bad link: {e}")))?
                .ok_or_else(|| bad(format!("link {rel_str} without a target")))?;
            std::os::unix::fs::symlink(&*target, &dest)
                .map_err(|e| Error::io(format!("creating link {}", dest.display()), e))?;
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let piece = piece_of(
            entry
                .pax_extensions()
                .map_err(|e| bad(format!("{rel_str}: bad pax header: {e}")))?,
        )
        .map_err(|e| bad(format!("{rel_str}: {e}")))?;
        if let Some(parent) = dest.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        let manifest_path = format!("{manifest_prefix}{rel_str}");
        let out_path = if manifest_path == "global/pg_control" {
            dest.with_extension(PARTIAL_EXT)
        } else {
            dest.clone()
        };
        // A piece goes into its place in a file other pieces may be writing
        // at the same time; a whole file replaces what is there.
        let start = piece.map_or(0, |(offset, _)| offset);
        let write_err = |e| Error::io(format!("writing {}", out_path.display()), e);
        let mut out = OutFile::open(&out_path, start, piece.is_none())
            .map_err(|e| Error::io(format!("creating {}", out_path.display()), e))?;
        let mut crc = 0u32;
        let mut size = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(n) => n,
                Err(e) if codec_error(&e) => {
                    return Err(Error::Codec(crate::codec::CodecError::from_io(e, part)))
                }
                Err(e) => return Err(bad(format!("reading {rel_str}: {e}"))),
            };
            if n == 0 {
                break;
            }
            done.check_stop()?;
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            size += n as u64;
            if let Some(p) = progress {
                p.add_done(n as u64);
            }
            out.write(&buf[..n]).map_err(write_err)?;
        }
        out.finish();
        crate::fault::point("restore-unpack");
        match piece {
            None => done.file(manifest_path, size, crc).map_err(bad)?,
            Some((offset, whole)) => {
                let run = Run {
                    start: offset,
                    len: size,
                    crc,
                };
                let complete = done
                    .pieces
                    .lock()
                    .unwrap()
                    .add(&manifest_path, whole, run)
                    .map_err(bad)?;
                if let Some(crc) = complete {
                    done.file(manifest_path, whole, crc).map_err(bad)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(data: &[u8], start: usize, len: usize) -> Run {
        Run {
            start: start as u64,
            len: len as u64,
            crc: crc32c::crc32c(&data[start..start + len]),
        }
    }

    #[test]
    fn a_live_postmaster_pid_is_refused_and_a_stale_one_is_not() {
        assert_eq!(postmaster_pid("4242\n/data\n1700000000\n"), Some(4242));
        assert_eq!(postmaster_pid("-77\n"), Some(77));
        assert_eq!(postmaster_pid(""), None);
        assert_eq!(postmaster_pid("garbage\n"), None);
        assert_eq!(postmaster_pid("0\n"), None);
        let dir = tempfile::tempdir().unwrap();
        check_no_live_server(dir.path()).unwrap();
        // This process is alive.
        fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        let e = check_no_live_server(dir.path()).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::ExitCode::Usage);
        assert!(e.to_string().contains("Stop the server first"), "{e}");
        // A process that ended (and was reaped).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        fs::write(dir.path().join("postmaster.pid"), format!("{dead}\n")).unwrap();
        check_no_live_server(dir.path()).unwrap();
    }

    #[test]
    fn targets_are_shown_as_a_dba_writes_them() {
        let t = RecoveryTarget::Lsn(Lsn(206569472));
        assert_eq!(t.to_string(), "LSN 0/C500000");
        let t = RecoveryTarget::Time(
            DateTime::parse_from_rfc3339("2026-11-25T10:00:00+01:00").unwrap(),
        );
        assert_eq!(t.to_string(), "time 2026-11-25T10:00:00+01:00");
        assert_eq!(
            RecoveryTarget::RestorePoint("rp".into()).to_string(),
            "restore point \"rp\""
        );
        assert_eq!(
            RecoveryTarget::Xid("12".into()).to_string(),
            "transaction 12"
        );
    }

    #[test]
    fn out_files_write_pieces_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 * WRITE_SIZE + 1234)
            .map(|i| (i % 253) as u8)
            .collect();
        // Two pieces, the second first.
        let cut = 2 * WRITE_SIZE;
        for (start, end) in [(cut, data.len()), (0, cut)] {
            let mut out = OutFile::open(&path, start as u64, false).unwrap();
            for chunk in data[start..end].chunks(100_000) {
                out.write(chunk).unwrap();
            }
            out.finish();
        }
        assert_eq!(fs::read(&path).unwrap(), data);
        // A whole file replaces what is there.
        let mut out = OutFile::open(&path, 0, true).unwrap();
        out.write(b"hello").unwrap();
        out.finish();
        assert_eq!(fs::read(&path).unwrap(), b"hello");
    }

    #[test]
    fn pieces_in_any_order_give_the_whole_file_crc() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let cuts = [(0, 4096), (4096, 4096), (8192, 1808)];
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1], [2, 0, 1]] {
            let mut p = Pieces::default();
            let mut result = None;
            for (i, &k) in order.iter().enumerate() {
                let (start, len) = cuts[k];
                let r = p.add("base/5/1", 10_000, piece(&data, start, len)).unwrap();
                if i < 2 {
                    assert_eq!(r, None, "{order:?}");
                    assert!(p.incomplete().is_some());
                } else {
                    result = r;
                }
            }
            assert_eq!(result, Some(crc32c::crc32c(&data)), "{order:?}");
            assert_eq!(p.incomplete(), None, "{order:?}");
        }
    }

    #[test]
    fn bad_or_missing_pieces_are_caught() {
        let data = vec![7u8; 8192];
        let mut p = Pieces::default();
        p.add("f", 8192, piece(&data, 0, 4096)).unwrap();
        // Overlapping, past the end, or disagreeing on the size.
        assert!(p.add("f", 8192, piece(&data, 2048, 4096)).is_err());
        assert!(p.add("f", 4096 * 3, piece(&data, 4096, 4096)).is_err());
        let mut q = Pieces::default();
        assert!(q.add("g", 4096, piece(&data, 2048, 4096)).is_err());
        // A missing piece leaves the file incomplete.
        assert_eq!(p.incomplete(), Some(("f".to_string(), 4096)));
    }

    #[test]
    fn a_file_is_checked_against_the_manifest() {
        let mut manifest = Manifest::default();
        manifest.files.insert(
            "base/5/1".into(),
            ManifestFile {
                size: 3,
                crc32c: Some(crc32c::crc32c(b"abc")),
            },
        );
        let seen = Mutex::default();
        let pieces = Mutex::default();
        let stop = AtomicBool::new(false);
        let done = Done {
            manifest: &manifest,
            seen: &seen,
            pieces: &pieces,
            stop: &stop,
        };
        assert!(done
            .file("base/5/1".into(), 3, crc32c::crc32c(b"abd"))
            .is_err());
        assert!(done
            .file("base/5/1".into(), 4, crc32c::crc32c(b"abc"))
            .is_err());
        assert!(seen.lock().unwrap().is_empty());
        done.file("base/5/1".into(), 3, crc32c::crc32c(b"abc"))
            .unwrap();
        // A file the manifest does not list is refused.
        assert!(done
            .file("other".into(), 1, 0)
            .unwrap_err()
            .contains("not in the backup manifest"));
        assert_eq!(
            seen.lock().unwrap().iter().collect::<Vec<_>>(),
            [&"base/5/1".to_string()]
        );
    }
}
