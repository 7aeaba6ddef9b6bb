//! The restore's checks before it writes: the WAL and the parts the backup
//! needs, the target, the free space, no live server in the directory.

#[allow(unused_imports)]
use super::*;

/// A time as messages give it: RFC 3339, to the second, in UTC.
pub(super) fn seconds(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Checks that the archive holds the WAL from the backup's start to `upto`
/// (or the backup's end), before anything is written.
pub(super) async fn check_wal(repo: &Repo, backup: &BackupRecord, upto: Option<Lsn>) -> Result<()> {
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
pub(super) fn damaged(backup: &BackupRecord, e: Error) -> Error {
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
pub(super) async fn check_parts(repo: &Repo, backup: &BackupRecord) -> Result<()> {
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
pub(super) async fn check_target(
    repo: &Repo,
    opts: &RestoreOptions,
    backup: &BackupRecord,
) -> Result<()> {
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
pub(super) async fn check_lsn_archived(repo: &Repo, backup: &BackupRecord, lsn: Lsn) -> Result<()> {
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
pub(super) fn check_no_live_server(dir: &Path) -> Result<()> {
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

/// The PID on the first line of a `postmaster.pid` (negative for a
/// single-user backend), if any.
pub(super) fn postmaster_pid(text: &str) -> Option<i32> {
    let pid: i64 = text.lines().next()?.trim().parse().ok()?;
    i32::try_from(pid.abs()).ok().filter(|p| *p > 0)
}

/// Whether a process with this PID exists (owned by anyone).
pub(super) fn process_alive(pid: i32) -> bool {
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

/// Refuses (exit 3, before anything is written) a restore whose files do
/// not fit: the manifest gives every file's size, each rounded up to the
/// filesystem's block size; locations on one filesystem add up.
pub(super) fn check_free_space(
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
pub(super) fn free_space(path: &Path) -> io::Result<(u64, u64)> {
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

/// Refuses a non-empty directory unless `force`.
pub(super) fn check_dir(dir: &Path, force: bool) -> Result<()> {
    let non_empty = fs::read_dir(dir).is_ok_and(|mut e| e.next().is_some());
    if non_empty && !force {
        return Err(Error::Usage(format!(
            "{} is not empty: restore into a new or empty directory, or add --force to replace its contents",
            dir.display()
        )));
    }
    Ok(())
}
