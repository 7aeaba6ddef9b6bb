//! `restore`: a base backup unpacked into a new data directory, every file
//! checked against the server's manifest, and the recovery settings written
//! so that PostgreSQL replays the archived WAL up to the target.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, FixedOffset, Timelike};
use tokio::task::JoinSet;

use super::file_check::{check_entry_path, codec_error, FileCheck, Run};
use super::manifest::Manifest;
use super::progress::{report, Progress};
use super::tar_split::piece_of;
use crate::error::{Error, Result};
use crate::pg::conf::quote_value;
use crate::pg::{Lsn, WalFile, WalSegmentName};
use crate::repo::catalog::BackupRecord;
use crate::repo::{layout, Repo};

mod blocks;
mod checks;
mod unpack;

pub(crate) use blocks::verify_blocks;
use checks::*;
use unpack::*;
pub(crate) use unpack::{unpack_stream, STREAM_PREFETCH};

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
    /// More settings written to postgresql.auto.conf (name, value).
    pub settings: Vec<(String, String)>,
    /// Bytes written and the phase, for callers that report progress.
    pub progress: Option<Arc<Progress>>,
    /// Greenplum/Cloudberry: the dbid the restored instance takes. Its
    /// tablespaces live in `<location>/<dbid>`: one linked at
    /// `<location>/<old dbid>` is restored to `<location>/<new dbid>`
    /// (unless `tablespace_map` moves it).
    pub gp_dbid: Option<i32>,
}

/// Where a tablespace archive goes: `tablespace_map`'s new directory for its
/// old one (else where it was). For a Greenplum/Cloudberry instance taking
/// dbid `gp_dbid`, a directory that ends in the old dbid (the layout
/// `<location>/<dbid>`) follows the new dbid: `/ts/a/3` becomes `/ts/a/7`,
/// and a map entry `/ts/a/3 = /new/3` becomes `/new/7`; a map entry whose
/// new directory does not end in the old dbid is taken as written.
fn tablespace_dir(old: &str, map: &[(String, String)], gp_dbid: Option<i32>) -> Result<String> {
    let mapped = map.iter().find(|(o, _)| o == old).map(|(_, n)| n.as_str());
    let dir = mapped.unwrap_or(old);
    let old_dbid = Path::new(old)
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse::<i32>().ok());
    let ends_in_old_dbid = |d: &str| {
        old_dbid.is_some_and(|o| {
            Path::new(d).file_name().and_then(|n| n.to_str()) == Some(o.to_string().as_str())
        })
    };
    match (gp_dbid, old_dbid) {
        (Some(new), Some(o)) if new != o && ends_in_old_dbid(dir) => Ok(
            crate::cluster::greenplum::tablespace_link(Path::new(dir), o, None, new)?
                .display()
                .to_string(),
        ),
        _ => Ok(dir.to_string()),
    }
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

/// Restores a backup and prepares recovery. Returns the backup restored.
pub async fn restore(repo: &Repo, opts: &RestoreOptions) -> Result<BackupRecord> {
    check_no_live_server(&opts.target_dir)?;
    let (backup, target_lsn) = choose_backup(repo, opts).await?;
    // While it runs, `delete` leaves the backup (and the point) alone. A
    // repository this user cannot write to (a read-only copy) still
    // restores, unprotected.
    let point = match &opts.target {
        RecoveryTarget::RestorePoint(n) => Some(n.as_str()),
        _ => None,
    };
    let lease = match crate::repo::lease::take(
        repo,
        opts.content_id,
        &backup.name,
        point,
        crate::repo::lease::RESTORE_LEASE,
    )
    .await
    {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(
                "restoring without a lease (a concurrent delete could remove the backup): {e}"
            );
            None
        }
    };
    let result = restore_chosen(repo, opts, backup, target_lsn).await;
    if let Some(l) = lease {
        l.release(repo).await;
    }
    result
}

async fn restore_chosen(
    repo: &Repo,
    opts: &RestoreOptions,
    backup: BackupRecord,
    target_lsn: Option<Lsn>,
) -> Result<BackupRecord> {
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
    // A block backup (full or delta) needs its chain: every record and
    // pack is checked before anything is written.
    let chain = if backup.chain.is_empty() {
        check_parts(repo, &backup).await?;
        None
    } else {
        Some(blocks::check_chain(repo, &backup).await?)
    };
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
    let check = Arc::new(FileCheck::new(manifest));

    // Where each archive goes: the data directory, or its tablespace's
    // (possibly remapped) location.
    let mut dirs: HashMap<String, (PathBuf, String)> = HashMap::new();
    for a in &backup.archives {
        if a.name == "base" {
            dirs.insert(a.name.clone(), (opts.target_dir.clone(), String::new()));
        } else {
            let old = a.tablespace_path.clone().unwrap_or_default();
            let new = tablespace_dir(&old, &opts.tablespace_map, opts.gp_dbid)?;
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
    check_free_space(&backup.name, check.manifest(), &dirs, &opts.target_dir)?;
    for (dir, _) in dirs.values() {
        prepare_dir(dir, opts.force)?;
    }

    let started = std::time::Instant::now();
    let stop: Arc<AtomicBool> = Arc::default();
    if let Some(chain) = chain {
        let shared = Arc::new(blocks::Shared {
            repo: repo.clone(),
            chain,
            check: check.clone(),
            stop: stop.clone(),
            progress: opts.progress.clone(),
            write: true,
            bytes: AtomicU64::new(0),
        });
        if let Err(e) = blocks::unpack_blocks(shared, &dirs, opts.parallel).await {
            return Err(incomplete(&opts.target_dir, damaged(&backup, e)));
        }
    }
    let block_backup = !backup.chain.is_empty();
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    // Part keys are made as they are needed: nothing grows with the
    // number of parts. A stream the server compressed is one job (decoded
    // in order), started first: it takes the longest.
    let mut archives: Vec<&crate::repo::catalog::ArchiveRecord> = backup.archives.iter().collect();
    archives.sort_by_key(|a| a.server_compression.is_none());
    if block_backup {
        archives.clear();
    }
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
            let check = check.clone();
            let stop = stop.clone();
            let progress = opts.progress.clone();
            let unpack_into = move |r: &mut dyn Read, label: &str| {
                let done = Done {
                    check: &check,
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
    if let Some((path, have)) = check.incomplete() {
        return Err(incomplete(
            &opts.target_dir,
            Error::Integrity(format!(
                "pieces of {path} are missing from the backup ({have} bytes of it restored)"
            )),
        ));
    }
    // Every file of the manifest arrived, with its checksum.
    let missing = check.missing();
    if !missing.is_empty() {
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
    let moved = backup.archives.iter().any(|a| {
        a.name != "base"
            && a.tablespace_path
                .as_deref()
                .is_some_and(|p| Path::new(p) != dirs[&a.name].0.as_path())
    });
    if moved {
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

fn incomplete(dir: &Path, e: Error) -> Error {
    tracing::error!(
        "the restore into {} did not complete: the directory holds no pg_control and cannot start; remove it or restore again with --force",
        dir.display()
    );
    e
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
    for (name, value) in &opts.settings {
        conf.push_str(&format!(
            "{} = {}\n",
            setting_name(name)?,
            quote_value(value)
        ));
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

/// A setting's name, checked: letters, digits, `_` and `.` (a custom
/// setting's prefix), starting with a letter or `_`.
fn setting_name(name: &str) -> Result<&str> {
    let mut bytes = name.bytes();
    let ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if ok {
        Ok(name)
    } else {
        Err(Error::Usage(format!(
            "{name:?} is not a setting name: use letters, digits, '_' and '.'"
        )))
    }
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

/// fsync of a directory (a rename in it made durable).
fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
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
        Manifest::parse(manifest_json).map_err(|e| Error::Integrity(format!("manifest: {e}")))?;
    let check = FileCheck::new(manifest);
    let stop = AtomicBool::new(false);
    let done = Done {
        check: &check,
        stop: &stop,
    };
    unpack(tar, dir, "", &done, "part", None)?;
    Ok(check.incomplete())
}

#[cfg(test)]
mod tablespace_tests {
    use super::*;

    #[test]
    fn greenplum_tablespaces_follow_the_new_dbid() {
        let map = vec![("/ts/b/3".to_string(), "/elsewhere".to_string())];
        assert_eq!(tablespace_dir("/ts/a/3", &map, Some(7)).unwrap(), "/ts/a/7");
        assert_eq!(
            tablespace_dir("/ts/b/3", &map, Some(7)).unwrap(),
            "/elsewhere"
        );
        assert_eq!(tablespace_dir("/ts/a/3", &map, Some(3)).unwrap(), "/ts/a/3");
        assert_eq!(tablespace_dir("/ts/a/3", &map, None).unwrap(), "/ts/a/3");
        // Not a Greenplum layout (no dbid at the end): left where it was.
        assert_eq!(
            tablespace_dir("/ts/plain", &map, Some(7)).unwrap(),
            "/ts/plain"
        );
        // A new location written in the same layout follows the new dbid.
        let map = vec![("/ts/a/3".to_string(), "/new/ts/3".to_string())];
        assert_eq!(
            tablespace_dir("/ts/a/3", &map, Some(7)).unwrap(),
            "/new/ts/7"
        );
        assert_eq!(
            tablespace_dir("/ts/a/3", &map, Some(3)).unwrap(),
            "/new/ts/3"
        );
        // An identity entry (what `cbdr restore-config` writes) changes nothing.
        let map = vec![("/ts/a/3".to_string(), "/ts/a/3".to_string())];
        assert_eq!(tablespace_dir("/ts/a/3", &map, Some(7)).unwrap(), "/ts/a/7");
        // Plain PostgreSQL: the map as written.
        let map = vec![("/ts/12".to_string(), "/new/12".to_string())];
        assert_eq!(tablespace_dir("/ts/12", &map, None).unwrap(), "/new/12");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
