//! `verify`: re-reads what the repository holds and proves that it still
//! restores, without restoring it. For each chosen base backup: every
//! object under its prefix decoded through the codec (decryption,
//! authentication, the codec's checksums), its server manifest checked,
//! and every file of its tar stream hashed against that manifest (streamed
//! through a fixed buffer, as a restore reads it, nothing written); for a
//! block backup (full or delta), every file assembled from the blocks of
//! its chain as a restore would, each block authenticated and checked
//! against its map, each file against the manifest. For each instance: the WAL each backup needs, from its start to the newest
//! restore point, following timeline switches through the history files
//! (missing segments named as ranges), and the archived WAL objects
//! decoded and their first page header checked (from a stored watermark
//! or `--wal-since`, so a daily run does not re-read the whole archive).
//!
//! Faults are collected, never fatal to the run: the report names every
//! one, and the command exits non-zero when there is any. This module
//! only reports; `cli/verify.rs` prints.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Read;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::catalog::BackupRecord;
use super::coverage::{coverage, TimelineCoverage};
use super::{layout, Repo};
use crate::error::{Error, ExitCode, Result};
use crate::pg::history::parse_history;
use crate::pg::{Lsn, TimelineId, WalFile, WalSegmentName};
use crate::physical::file_check::{scan, FileCheck};
use crate::physical::manifest::Manifest;
use crate::storage::ObjectInfo;

/// The newest backup format whose parts are tar streams (1 to 3). Block
/// backups (a chain in their record) are assembled from their chain; a
/// later format without a chain is of no layout this cbdr knows: only its
/// record and manifest are verified (`manifest_checked: false`).
const TAR_FORMAT_MAX: u32 = 3;

/// Which WAL objects are decoded again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalSince {
    /// Those after the instance's stored watermark (all the first time).
    Watermark,
    /// Every one.
    All,
    /// Those whose segment starts at or after this one's start (any
    /// timeline).
    From(WalSegmentName),
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// One instance; `None`: every instance the repository holds.
    pub content_id: Option<i32>,
    /// One backup (a base backup's name, or a cluster backup's: then each
    /// instance's backup of it); `None`: every backup.
    pub backup: Option<String>,
    /// Only the WAL archive: the backups' records are read (they say which
    /// WAL is needed), their parts are not.
    pub wal_only: bool,
    pub wal_since: WalSince,
    /// Objects read at once.
    pub parallel: usize,
    /// The WAL segment size when no backup record gives it.
    pub default_segment_size: u64,
}

/// One problem found, with the object it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    pub content_id: Option<i32>,
    /// The base (or cluster) backup concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// The object's key, or a WAL range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    pub problem: String,
    /// The storage failed (unreachable, refusing) rather than the data:
    /// the object may be fine.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub storage: bool,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(id) = self.content_id {
            write!(f, "content {id}: ")?;
        }
        if let Some(b) = &self.backup {
            write!(f, "backup {b}: ")?;
        }
        if let Some(o) = &self.object {
            // The error text usually names the object already.
            if !self.problem.contains(o.as_str()) {
                write!(f, "{o}: ")?;
            }
        }
        f.write_str(&self.problem)
    }
}

/// What was verified of one base backup.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackupReport {
    pub content_id: i32,
    pub name: String,
    /// Objects decoded (manifest, parts, record, others under its prefix).
    pub objects: u64,
    /// Their bytes as stored.
    pub stored_bytes: u64,
    /// Files of the manifest checked (size and CRC32C).
    pub files: u64,
    /// Plain bytes of the files hashed.
    pub plain_bytes: u64,
    /// Whether the files were checked against the manifest (false when
    /// there was none to check against, or a block backup's pack is
    /// missing: its objects are then only authenticated one by one).
    pub manifest_checked: bool,
    pub faults: usize,
}

/// What was verified of one instance's WAL archive.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalReport {
    pub content_id: i32,
    /// The archive's segments per timeline (gaps anywhere, not only in the
    /// needed ranges, which [`Fault`]s name).
    pub timelines: Vec<TimelineCoverage>,
    /// Segments the backups need, up to the newest restore point.
    pub needed_segments: u64,
    /// Objects decoded again (the rest was verified by an earlier run:
    /// see `since`).
    pub objects_read: u64,
    pub stored_bytes_read: u64,
    /// "all", "watermark", or the segment given.
    pub since: String,
    /// The watermark stored after this run (per timeline: the last segment
    /// verified), when it moved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watermark: Option<BTreeMap<u32, String>>,
    pub faults: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub backups: Vec<BackupReport>,
    /// Cluster backups whose every instance's backup was found.
    pub cluster_backups: Vec<String>,
    pub wal: Vec<WalReport>,
    pub faults: Vec<Fault>,
    pub seconds: f64,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.faults.is_empty()
    }

    /// The error the command ends with when there are faults: exit 4 when
    /// the data is at fault, exit 3 when only the storage failed.
    pub fn error(&self) -> Option<Error> {
        if self.faults.is_empty() {
            return None;
        }
        let n = self.faults.len();
        let message = format!(
            "verify found {n} fault{} (each listed above), the first: {}. Repair or replace the objects named (or take a new backup), then run `cbdr verify` again",
            if n == 1 { "" } else { "s" },
            self.faults[0]
        );
        let exit_code = if self.faults.iter().all(|f| f.storage) {
            ExitCode::Storage
        } else {
            ExitCode::Integrity
        };
        Some(Error::Summary { message, exit_code })
    }
}

/// The watermark of one instance: per timeline, the last WAL segment whose
/// object, and every one before it, a verify run decoded without fault.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    pub timelines: BTreeMap<u32, String>,
    pub time: Option<chrono::DateTime<chrono::Utc>>,
}

/// Collects faults from concurrent checks.
#[derive(Debug, Default, Clone)]
struct Faults(Arc<Mutex<Vec<Fault>>>);

impl Faults {
    fn add(&self, content_id: i32, backup: Option<&str>, object: Option<&str>, e: &Error) {
        self.push(Fault {
            content_id: Some(content_id),
            backup: backup.map(String::from),
            object: object.map(String::from),
            problem: render(e),
            storage: is_storage(e),
        });
    }

    fn note(&self, content_id: i32, backup: Option<&str>, object: Option<&str>, problem: String) {
        self.push(Fault {
            content_id: Some(content_id),
            backup: backup.map(String::from),
            object: object.map(String::from),
            problem,
            storage: false,
        });
    }

    fn push(&self, f: Fault) {
        tracing::debug!("fault: {f}");
        self.0.lock().unwrap().push(f);
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn take(&self) -> Vec<Fault> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// A storage failure, not a fault of the data (a missing object is a
/// fault of the data: the record lists it).
fn is_storage(e: &Error) -> bool {
    e.exit_code() == ExitCode::Storage
}

fn render(e: &Error) -> String {
    // Not "the restored data does not verify": nothing is restored here.
    match e {
        Error::Integrity(m) => crate::error::with_causes(m.clone(), e),
        e => e.render(),
    }
}

/// Runs the verification; storage failures while listing end it (exit 3),
/// everything else is a fault in the report.
pub async fn verify(repo: &Repo, opts: &VerifyOptions) -> Result<VerifyReport> {
    let started = std::time::Instant::now();
    let faults = Faults::default();
    let ids = match opts.content_id {
        Some(id) => vec![id],
        None => repo.content_ids().await?,
    };
    let mut report = VerifyReport::default();

    // The backups chosen, per instance, and the cluster backups.
    let mut chosen: BTreeMap<i32, Vec<BackupRecord>> = BTreeMap::new();
    let mut all: BTreeMap<i32, Vec<BackupRecord>> = BTreeMap::new();
    for &id in &ids {
        let r = repo.backups_checked(id).await?;
        for u in &r.unreadable {
            faults.note(
                id,
                None,
                Some(&u.key),
                format!(
                    "the backup record cannot be read: {} (the backup cannot be listed or restored)",
                    u.error
                ),
            );
        }
        all.insert(id, r.records);
    }
    let clusters = repo.cluster_backups_checked().await?;
    for u in &clusters.unreadable {
        faults.push(Fault {
            content_id: None,
            backup: None,
            object: Some(u.key.clone()),
            problem: format!("the cluster backup record cannot be read: {}", u.error),
            storage: false,
        });
    }
    match &opts.backup {
        None => {
            chosen = all.clone();
            for c in &clusters.records {
                if check_cluster_backup(c, &all, opts.content_id, &faults) {
                    report.cluster_backups.push(c.name.clone());
                }
            }
        }
        Some(name) => {
            if let Some(c) = clusters.records.iter().find(|c| &c.name == name) {
                if check_cluster_backup(c, &all, opts.content_id, &faults) {
                    report.cluster_backups.push(c.name.clone());
                }
                for s in &c.segments {
                    if let Some(b) = all
                        .get(&s.content_id)
                        .and_then(|v| v.iter().find(|b| b.name == s.backup))
                    {
                        chosen.entry(s.content_id).or_default().push(b.clone());
                    }
                }
            } else {
                for (id, backups) in &all {
                    if let Some(b) = backups.iter().find(|b| &b.name == name) {
                        chosen.entry(*id).or_default().push(b.clone());
                    }
                }
            }
            if chosen.is_empty() && faults.len() == 0 {
                return Err(Error::NotFound(format!(
                    "backup {name} is not in the repository{}: `cbdr list` shows the backups and cluster backups",
                    opts.content_id
                        .map(|id| format!(" for content id {id}"))
                        .unwrap_or_default()
                )));
            }
        }
    }

    if !opts.wal_only {
        // Backups side by side (a cluster's instances, each often one
        // compressed stream), the objects read at once shared among them:
        // at most `parallel` reads in flight whatever the number of backups.
        let all_chosen: Vec<&BackupRecord> = chosen.values().flatten().collect();
        let parallel = opts.parallel.max(1);
        let at_once = parallel.min(all_chosen.len()).max(1);
        let per_backup = (parallel / at_once).max(1);
        let mut reports: Vec<(usize, BackupReport)> =
            futures_util::stream::iter(all_chosen.into_iter().enumerate())
                .map(|(i, b)| {
                    let faults = &faults;
                    async move { (i, verify_backup(repo, b, per_backup, faults).await) }
                })
                .buffer_unordered(at_once)
                .collect()
                .await;
        reports.sort_by_key(|(i, _)| *i);
        report.backups = reports.into_iter().map(|(_, r)| r).collect();
    }

    for &id in &ids {
        // With --backup, only the instances it has.
        if opts.backup.is_some() && !chosen.contains_key(&id) {
            continue;
        }
        let needed = chosen.get(&id).cloned().unwrap_or_default();
        let r = verify_wal(repo, id, &needed, opts, &faults).await?;
        report.wal.push(r);
    }
    report.faults = faults.take();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Checks that a cluster backup's every instance backup is there; true
/// when it is complete.
fn check_cluster_backup(
    c: &crate::cluster::catalog::ClusterBackup,
    all: &BTreeMap<i32, Vec<BackupRecord>>,
    only: Option<i32>,
    faults: &Faults,
) -> bool {
    let mut ok = true;
    for s in &c.segments {
        if only.is_some_and(|id| id != s.content_id) {
            continue;
        }
        let found = all
            .get(&s.content_id)
            .is_some_and(|v| v.iter().any(|b| b.name == s.backup));
        if !found {
            ok = false;
            faults.push(Fault {
                content_id: Some(s.content_id),
                backup: Some(c.name.clone()),
                object: Some(layout::backup_record_key(s.content_id, &s.backup)),
                problem: format!(
                    "the cluster backup lists backup {} of content id {}, which is not in the repository: the cluster backup cannot be restored",
                    s.backup, s.content_id
                ),
                storage: false,
            });
        }
    }
    ok
}

/// Verifies one base backup: every object under its prefix decoded, the
/// manifest checked, every file of the tar streams against it.
async fn verify_backup(
    repo: &Repo,
    b: &BackupRecord,
    parallel: usize,
    global: &Faults,
) -> BackupReport {
    // This backup's faults, counted in its report, then added to the run's
    // (backups are verified side by side).
    let faults = &Faults::default();
    let mut r = BackupReport {
        content_id: b.content_id,
        name: b.name.clone(),
        manifest_checked: true,
        ..BackupReport::default()
    };
    let id = b.content_id;
    let name = b.name.as_str();
    let fault = |object: &str, e: &Error| faults.add(id, Some(name), Some(object), e);
    if b.format > crate::physical::backup::BACKUP_FORMAT {
        faults.note(
            id,
            Some(name),
            None,
            format!(
                "the backup has format {}, newer than this cbdr reads ({}): verify it with a newer cbdr",
                b.format,
                crate::physical::backup::BACKUP_FORMAT
            ),
        );
        return finish(r, faults, global);
    }
    let objects: Vec<ObjectInfo> = match repo.storage.list(&layout::backup_prefix(id, name)).await {
        Ok(o) => o,
        Err(e) => {
            fault(&layout::backup_prefix(id, name), &e.into());
            return finish(r, faults, global);
        }
    };
    let stored: BTreeMap<&str, u64> = objects.iter().map(|o| (o.key.as_str(), o.size)).collect();
    let mut known: HashSet<String> = HashSet::new();
    let missing = |key: &str| {
        faults.note(
            id,
            Some(name),
            Some(key),
            format!(
                "{key} is missing although the backup's record lists it: the backup cannot be restored"
            ),
        )
    };

    // The record itself was decoded when the backups were listed.
    let record_key = layout::backup_record_key(id, name);
    known.insert(record_key.clone());
    r.objects += 1;
    r.stored_bytes += stored.get(record_key.as_str()).copied().unwrap_or(0);

    // The manifest.
    let manifest_key = layout::backup_manifest_key(id, name);
    known.insert(manifest_key.clone());
    let check: Option<Arc<FileCheck>> = if !stored.contains_key(manifest_key.as_str()) {
        missing(&manifest_key);
        None
    } else {
        r.objects += 1;
        r.stored_bytes += stored[manifest_key.as_str()];
        match repo.get_bytes(&manifest_key).await {
            Err(e) => {
                fault(&manifest_key, &e);
                None
            }
            Ok(bytes) => match Manifest::parse(&bytes) {
                Ok(m) => Some(Arc::new(FileCheck::new(m))),
                Err(e) => {
                    faults.note(id, Some(name), Some(&manifest_key), e);
                    None
                }
            },
        }
    };

    if !b.chain.is_empty() {
        verify_block_backup(
            repo, b, check, &objects, &mut known, parallel, &mut r, faults,
        )
        .await;
        return finish(r, faults, global);
    }
    if b.format > TAR_FORMAT_MAX {
        // A format after the tar formats that is not a block backup: its
        // objects are of a layout this cbdr does not know.
        r.manifest_checked = false;
        return finish(r, faults, global);
    }

    // The parts: each plain tar on its own, each stream the server
    // compressed as one (its parts decoded in order).
    let part_faults_before = faults.len();
    let mut jobs: Vec<(Vec<String>, Option<crate::codec::Compression>, String)> = Vec::new();
    for a in &b.archives {
        let prefix = if a.name == "base" {
            String::new()
        } else {
            format!("pg_tblspc/{}/", a.name)
        };
        let keys: Vec<String> = (0..a.parts)
            .map(|p| layout::backup_part_key(id, name, &a.name, p, a.server_compression))
            .collect();
        let mut all_there = true;
        for k in &keys {
            known.insert(k.clone());
            match stored.get(k.as_str()) {
                Some(size) => {
                    r.objects += 1;
                    r.stored_bytes += size;
                }
                None => {
                    missing(k);
                    all_there = false;
                }
            }
        }
        match a.server_compression {
            Some(c) if all_there => jobs.push((keys, Some(c), prefix)),
            // A stream with a part missing cannot be decoded past it: its
            // parts present are still authenticated one by one.
            Some(_) => {
                for k in keys.into_iter().filter(|k| stored.contains_key(k.as_str())) {
                    if let Err(e) = decode_to_sink(repo, &k).await {
                        fault(&k, &e);
                    }
                }
            }
            None => {
                for k in keys.into_iter().filter(|k| stored.contains_key(k.as_str())) {
                    jobs.push((vec![k], None, prefix.clone()));
                }
            }
        }
    }
    let scanned: Vec<(String, Result<crate::physical::file_check::ScanStats>)> =
        futures_util::stream::iter(jobs)
            .map(|(keys, compression, prefix)| {
                let repo = repo.clone();
                let check = check.clone();
                async move {
                    let label = keys[0].clone();
                    let result = scan_part(repo, keys, compression, prefix, check).await;
                    (label, result)
                }
            })
            .buffer_unordered(parallel)
            .collect()
            .await;
    for (label, result) in scanned {
        match result {
            Ok(s) => {
                r.files += s.entries;
                r.plain_bytes += s.bytes;
            }
            Err(e) => fault(&label, &e),
        }
    }
    if let Some(check) = &check {
        // Files missing only because a part failed are not named again.
        if faults.len() == part_faults_before {
            note_unchecked(check, b, faults);
        }
        r.files = check.checked() as u64;
    }

    // Anything else under the prefix (a delta's blocks and block maps) is
    // authenticated too.
    let others: Vec<String> = objects
        .iter()
        .filter(|o| !known.contains(&o.key))
        .map(|o| o.key.clone())
        .collect();
    decode_others(repo, others, &stored, parallel, &mut r, &fault).await;
    finish(r, faults, global)
}

/// Names the files of the manifest that were not (all) checked off.
fn note_unchecked(check: &FileCheck, b: &BackupRecord, faults: &Faults) {
    let (id, name) = (b.content_id, b.name.as_str());
    if let Some((path, have)) = check.incomplete() {
        faults.note(
            id,
            Some(name),
            None,
            format!(
                "pieces of {path} are missing from the backup (only {have} bytes of it are there)"
            ),
        );
    }
    let gone = check.missing();
    if !gone.is_empty() {
        faults.note(
            id,
            Some(name),
            None,
            format!(
                "{} files of the backup manifest are not in the backup{}, e.g. {}",
                gone.len(),
                if b.chain.is_empty() {
                    "'s parts"
                } else {
                    "'s block maps"
                },
                gone[0]
            ),
        );
    }
}

/// A block backup (full or delta): every file assembled from its chain as
/// a restore would (each block read from the backup that holds it,
/// authenticated, checked against its map's hash), nothing written, each
/// file checked against the manifest. Without a readable manifest, its
/// packs are still decoded object by object.
#[allow(clippy::too_many_arguments)]
async fn verify_block_backup(
    repo: &Repo,
    b: &BackupRecord,
    check: Option<Arc<FileCheck>>,
    objects: &[ObjectInfo],
    known: &mut HashSet<String>,
    parallel: usize,
    r: &mut BackupReport,
    faults: &Faults,
) {
    let (id, name) = (b.content_id, b.name.as_str());
    let stored: BTreeMap<&str, u64> = objects.iter().map(|o| (o.key.as_str(), o.size)).collect();
    let mut packs: Vec<String> = Vec::new();
    let mut all_there = true;
    for a in &b.archives {
        let keys = (0..a.parts)
            .map(|n| layout::block_pack_key(id, name, &a.name, n))
            .chain((0..a.map_parts).map(|n| layout::map_pack_key(id, name, &a.name, n)));
        for k in keys {
            known.insert(k.clone());
            match stored.get(k.as_str()) {
                Some(size) => {
                    r.objects += 1;
                    r.stored_bytes += size;
                    packs.push(k);
                }
                None => {
                    all_there = false;
                    faults.note(
                        id,
                        Some(name),
                        Some(&k),
                        format!("{k} is missing although the backup's record lists it: the backup cannot be restored"),
                    );
                }
            }
        }
    }
    match check {
        Some(check) if all_there => {
            let before = faults.len();
            match crate::physical::restore::verify_blocks(repo, b, check.clone(), parallel).await {
                Ok(bytes) => r.plain_bytes = bytes,
                Err(e) => faults.add(id, Some(name), None, &e),
            }
            if faults.len() == before {
                note_unchecked(&check, b, faults);
            }
            r.files = check.checked() as u64;
        }
        _ => {
            // Nothing to check the files against (or a pack is missing):
            // each object of its packs is still authenticated.
            r.manifest_checked = false;
            let decoded: Vec<(String, Result<(u64, u64)>)> = futures_util::stream::iter(packs)
                .map(|k| async move {
                    let result = crate::physical::blocks::verify_pack(repo, &k).await;
                    (k, result)
                })
                .buffer_unordered(parallel)
                .collect()
                .await;
            for (k, result) in decoded {
                if let Err(e) = result {
                    faults.add(id, Some(name), Some(&k), &e);
                }
            }
        }
    }
    // The index (and anything else under the prefix): ordinary objects.
    let others: Vec<String> = objects
        .iter()
        .filter(|o| !known.contains(&o.key))
        .map(|o| o.key.clone())
        .collect();
    let fault = |object: &str, e: &Error| faults.add(id, Some(name), Some(object), e);
    decode_others(repo, others, &stored, parallel, r, &fault).await;
}

/// Decodes objects to nowhere, `parallel` at once, counting them in `r`.
async fn decode_others(
    repo: &Repo,
    keys: Vec<String>,
    stored: &BTreeMap<&str, u64>,
    parallel: usize,
    r: &mut BackupReport,
    fault: &impl Fn(&str, &Error),
) {
    let decoded: Vec<(String, Result<u64>)> = futures_util::stream::iter(keys)
        .map(|k| {
            let repo = repo.clone();
            async move {
                let result = decode_to_sink(&repo, &k).await;
                (k, result)
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    for (k, result) in decoded {
        match result {
            Ok(_) => {
                r.objects += 1;
                r.stored_bytes += stored.get(k.as_str()).copied().unwrap_or(0);
            }
            Err(e) => fault(&k, &e),
        }
    }
}

fn finish(mut r: BackupReport, local: &Faults, global: &Faults) -> BackupReport {
    let found = local.take();
    r.faults = found.len();
    for f in found {
        global.push(f);
    }
    r
}

/// Decodes one part (or the parts of one compressed stream) and scans its
/// tar stream against the manifest; without a manifest, only decodes.
async fn scan_part(
    repo: Repo,
    keys: Vec<String>,
    compression: Option<crate::codec::Compression>,
    prefix: String,
    check: Option<Arc<FileCheck>>,
) -> Result<crate::physical::file_check::ScanStats> {
    use crate::physical::file_check::ScanStats;
    let stats: Arc<Mutex<ScanStats>> = Arc::default();
    let out = stats.clone();
    let run = move |r: &mut dyn Read, label: &str| -> Result<()> {
        let s = match &check {
            Some(check) => scan(r, &prefix, check, label)?,
            None => {
                std::io::copy(r, &mut std::io::sink())
                    .map_err(|e| Error::Codec(crate::codec::CodecError::from_io(e, label)))?;
                ScanStats::default()
            }
        };
        *out.lock().unwrap() = s;
        Ok(())
    };
    match compression {
        Some(c) => {
            crate::physical::restore::unpack_stream(
                repo,
                keys,
                c,
                crate::physical::restore::STREAM_PREFETCH,
                run,
            )
            .await?
        }
        None => {
            let key = keys[0].clone();
            repo.read_with(&keys[0], move |r| {
                run(r, &key)?;
                // The tar's end and the codec's last chunk, read too.
                std::io::copy(r, &mut std::io::sink())
                    .map_err(|e| Error::Codec(crate::codec::CodecError::from_io(e, &key)))?;
                Ok(())
            })
            .await?
        }
    }
    let s = *stats.lock().unwrap();
    Ok(s)
}

/// Decodes an object to nowhere (every chunk authenticated); its plain size.
async fn decode_to_sink(repo: &Repo, key: &str) -> Result<u64> {
    Ok(repo.get_into(key, std::io::sink()).await?.1)
}

/// Verifies one instance's WAL: the segments each backup needs up to the
/// newest restore point, the history files, and the objects decoded.
async fn verify_wal(
    repo: &Repo,
    id: i32,
    backups: &[BackupRecord],
    opts: &VerifyOptions,
    faults: &Faults,
) -> Result<WalReport> {
    let before = faults.len();
    let objects = repo.storage.list(&layout::wal_prefix(id)).await?;
    let size = backups
        .last()
        .map(|b| b.wal_segment_size)
        .unwrap_or(opts.default_segment_size);
    let names: HashSet<&str> = objects
        .iter()
        .filter_map(|o| o.key.rsplit('/').next())
        .collect();
    let mut report = WalReport {
        content_id: id,
        timelines: coverage(names.iter().copied(), size),
        ..WalReport::default()
    };

    // History files: readable, and one for every timeline after the first
    // that holds WAL or that a backup or point is on.
    let points = repo.restore_points_checked(id).await?;
    for u in &points.unreadable {
        faults.note(
            id,
            None,
            Some(&u.key),
            format!("the restore point record cannot be read: {}", u.error),
        );
    }
    let mut timelines: BTreeSet<TimelineId> = report.timelines.iter().map(|t| t.timeline).collect();
    timelines.extend(backups.iter().flat_map(|b| [b.timeline, b.stop_timeline]));
    timelines.extend(points.records.iter().map(|p| p.timeline));
    let mut histories: BTreeMap<TimelineId, Vec<crate::pg::history::HistoryEntry>> =
        BTreeMap::new();
    for &t in timelines.iter().filter(|t| t.0 > 1) {
        let file = WalFile::History(t);
        let key = layout::wal_key(id, &file);
        if !names.contains(file.to_string().as_str()) {
            faults.note(
                id,
                None,
                Some(&key),
                format!(
                    "the history file of timeline {t} is missing: recovery cannot follow timeline {t} (archive it from the server's pg_wal/{file} with `cbdr wal-push`)"
                ),
            );
            continue;
        }
        match repo.get_bytes(&key).await {
            Err(e) => faults.add(id, None, Some(&key), &e),
            Ok(bytes) => match parse_history(&String::from_utf8_lossy(&bytes)) {
                Ok(h) => {
                    histories.insert(t, h);
                }
                Err(e) => faults.note(
                    id,
                    None,
                    Some(&key),
                    format!("not a valid timeline history file: {e}"),
                ),
            },
        }
    }

    // Continuity: from each backup's start to the newest restore point it
    // can reach (on its timeline, or on a later one that branched off
    // after the backup started), else to its own end.
    let mut by_lsn: Vec<&super::catalog::RestorePointRecord> = points.records.iter().collect();
    by_lsn.sort_by_key(|p| std::cmp::Reverse((p.lsn, p.time)));
    let mut missing: BTreeMap<WalSegmentName, String> = BTreeMap::new();
    let mut needed: HashSet<WalSegmentName> = HashSet::new();
    for b in backups {
        let reachable = by_lsn.iter().find_map(|p| {
            if p.lsn < b.stop_lsn {
                return None;
            }
            timeline_path(b.timeline, b.start_lsn, p.timeline, &histories)
                .map(|path| (path, p.lsn, format!("restore point {}", p.name)))
        });
        let (path, end, upto) = match reachable {
            Some(r) => r,
            None => match timeline_path(b.timeline, b.start_lsn, b.stop_timeline, &histories) {
                Some(path) => (path, b.stop_lsn, "its end".to_string()),
                // The history file's fault is named above.
                None => continue,
            },
        };
        for seg in needed_segments(&path, b.start_lsn, end, size) {
            if needed.insert(seg) && !names.contains(WalFile::Segment(seg).to_string().as_str()) {
                missing
                    .entry(seg)
                    .or_insert_with(|| format!("backup {} needs it to reach {upto}", b.name));
            }
        }
    }
    report.needed_segments = needed.len() as u64;
    for (from, to, why) in ranges(&missing, size) {
        let object = if from == to {
            from.to_string()
        } else {
            format!("{from}..{to}")
        };
        faults.note(
            id,
            None,
            Some(&object),
            format!(
                "WAL {} missing from the archive ({why}): recovery cannot pass it; check archiving on the server (pg_stat_archiver, `cbdr check`), and take a new backup",
                if from == to { format!("segment {from} is") } else { format!("segments {from} to {to} are") }
            ),
        );
    }

    // The objects, decoded again from the watermark.
    let key = layout::verify_watermark_key(id);
    let mark: Watermark = match opts.wal_since {
        WalSince::Watermark => match repo.get_json::<Watermark>(&key).await {
            Ok(m) => m,
            Err(Error::Storage(e)) if e.is_not_found() => Watermark::default(),
            Err(e) => {
                tracing::warn!("the verify watermark {key} cannot be read ({e}): re-reading the whole WAL archive of content id {id}");
                Watermark::default()
            }
        },
        _ => Watermark::default(),
    };
    report.since = match &opts.wal_since {
        WalSince::All => "all".into(),
        WalSince::From(s) => s.to_string(),
        WalSince::Watermark if mark.timelines.is_empty() => "all".into(),
        WalSince::Watermark => "watermark".into(),
    };
    let wanted = |f: &WalFile| -> bool {
        let Some(seg) = f.segment() else {
            // History files were read above.
            return false;
        };
        match &opts.wal_since {
            WalSince::All => true,
            WalSince::From(from) => seg.start_lsn(size) >= from.start_lsn(size),
            WalSince::Watermark => mark
                .timelines
                .get(&seg.timeline.0)
                .and_then(|m| WalSegmentName::parse(m))
                .is_none_or(|m| seg > m),
        }
    };
    let to_read: Vec<(String, WalFile, u64)> = objects
        .iter()
        .filter_map(|o| {
            let f = WalFile::parse(o.key.rsplit('/').next()?)?;
            wanted(&f).then(|| (o.key.clone(), f, o.size))
        })
        .collect();
    let read_faults_before = faults.len();
    let results: Vec<(String, WalFile, u64, Result<()>)> = futures_util::stream::iter(to_read)
        .map(|(key, file, stored)| {
            let repo = repo.clone();
            async move {
                let r = check_wal_object(&repo, &key, file.clone(), size).await;
                (key, file, stored, r)
            }
        })
        .buffer_unordered(opts.parallel.max(1))
        .collect()
        .await;
    let mut newest: BTreeMap<u32, WalSegmentName> = BTreeMap::new();
    for (key, file, stored, r) in results {
        match r {
            Ok(()) => {
                report.objects_read += 1;
                report.stored_bytes_read += stored;
                if let WalFile::Segment(s) = file {
                    let e = newest.entry(s.timeline.0).or_insert(s);
                    if s > *e {
                        *e = s;
                    }
                }
            }
            Err(e) => faults.add(id, None, Some(&key), &e),
        }
    }
    // The watermark moves only after a run that found every object it
    // read sound (a watermark past a bad object would hide it), and never
    // to or past a timeline's first gap (a segment a repair puts there
    // later is read by the next run).
    if faults.len() == read_faults_before {
        let mut next = mark.clone();
        let tlis: BTreeSet<u32> = newest
            .keys()
            .chain(mark.timelines.keys())
            .copied()
            .collect();
        for t in tlis {
            let first_gap = report
                .timelines
                .iter()
                .find(|c| c.timeline.0 == t)
                .and_then(|c| c.gaps.first())
                .and_then(|g| WalSegmentName::parse(&g.from));
            let old = mark
                .timelines
                .get(&t)
                .and_then(|m| WalSegmentName::parse(m));
            match next_mark(old, newest.get(&t).copied(), first_gap, size) {
                Some(m) => {
                    next.timelines.insert(t, m.to_string());
                }
                None => {
                    next.timelines.remove(&t);
                }
            }
        }
        if next.timelines != mark.timelines {
            next.time = Some(chrono::Utc::now());
            match store_watermark(repo, &key, &next).await {
                Ok(()) => report.watermark = Some(next.timelines),
                Err(e) => tracing::warn!(
                    "the verify watermark {key} could not be stored ({e}): the next run re-reads this WAL again"
                ),
            }
        }
    }
    report.faults = faults.len() - before;
    Ok(report)
}

/// One timeline's next watermark: the later of the old one and the newest
/// segment read, but before the timeline's first missing segment.
fn next_mark(
    old: Option<WalSegmentName>,
    newest: Option<WalSegmentName>,
    first_gap: Option<WalSegmentName>,
    size: u64,
) -> Option<WalSegmentName> {
    let mark = old.max(newest)?;
    match first_gap {
        Some(gap) if mark >= gap => {
            let start = gap.start_lsn(size);
            (start.0 >= size)
                .then(|| WalSegmentName::from_lsn(gap.timeline, Lsn(start.0 - size), size))
        }
        _ => Some(mark),
    }
}

async fn store_watermark(repo: &Repo, key: &str, mark: &Watermark) -> Result<()> {
    repo.prepare_write().await?;
    repo.put_json(key, mark).await
}

/// Decodes a WAL object; a whole segment must also be the segment its
/// name says (its first page header) and of the segment size.
async fn check_wal_object(repo: &Repo, key: &str, file: WalFile, size: u64) -> Result<()> {
    let name = key.to_string();
    repo.read_with(key, move |r| {
        let mut head = Vec::with_capacity(64);
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Codec(crate::codec::CodecError::from_io(e, &name))),
            };
            if head.len() < 64 {
                let take = (64 - head.len()).min(n);
                head.extend_from_slice(&buf[..take]);
            }
            total += n as u64;
        }
        if let WalFile::Segment(seg) = file {
            if total != size {
                return Err(Error::Integrity(format!(
                    "{name}: {total} bytes, a WAL segment has {size}"
                )));
            }
            crate::pg::wal_page::check_segment_start(seg, &head)
                .map_err(|e| Error::Integrity(format!("{name} is not the segment {seg}: {e}")))?;
        }
        Ok(())
    })
    .await
}

/// The timelines recovery follows from `start` on `from` to `to`: each
/// with the LSN where it ends (`None` for the last). `None` when `to`'s
/// history is unknown or `from` is not its ancestor.
fn timeline_path(
    from: TimelineId,
    start: Lsn,
    to: TimelineId,
    histories: &BTreeMap<TimelineId, Vec<crate::pg::history::HistoryEntry>>,
) -> Option<Vec<(TimelineId, Option<Lsn>)>> {
    if to == from {
        return Some(vec![(from, None)]);
    }
    if to < from {
        return None;
    }
    let history = histories.get(&to)?;
    let mut path = Vec::new();
    let mut on = false;
    for e in history {
        if e.timeline == from {
            on = true;
        }
        if on {
            path.push((e.timeline, Some(e.end)));
        }
    }
    if !on {
        return None;
    }
    // A backup that started after its timeline ended is not on the path.
    if path
        .first()
        .is_some_and(|(_, end)| end.is_some_and(|e| e < start))
    {
        return None;
    }
    path.push((to, None));
    Some(path)
}

/// The segments of a path from `start` to `end` (the segment holding the
/// byte before `end`): on each timeline up to the segment before the one
/// holding its switch point (that segment is read from the next timeline,
/// as PostgreSQL reads it).
fn needed_segments(
    path: &[(TimelineId, Option<Lsn>)],
    start: Lsn,
    end: Lsn,
    size: u64,
) -> Vec<WalSegmentName> {
    let mut out = Vec::new();
    let last_no = end.saturating_sub(1).max(start).segment_no(size);
    let mut no = start.segment_no(size);
    for (tli, switch) in path {
        let until = match switch {
            // Segments before the one holding the switch point.
            Some(s) => s.segment_no(size).min(last_no + 1),
            None => last_no + 1,
        };
        while no < until {
            out.push(WalSegmentName::from_lsn(*tli, Lsn(no * size), size));
            no += 1;
        }
    }
    out
}

/// Consecutive missing segments as ranges, each with the first reason.
fn ranges(
    missing: &BTreeMap<WalSegmentName, String>,
    size: u64,
) -> Vec<(WalSegmentName, WalSegmentName, String)> {
    let mut out: Vec<(WalSegmentName, WalSegmentName, String)> = Vec::new();
    for (seg, why) in missing {
        if let Some(last) = out.last_mut() {
            if last.1.next(size) == *seg {
                last.1 = *seg;
                continue;
            }
        }
        out.push((*seg, *seg, why.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::history::HistoryEntry;

    const MB: u64 = 1 << 20;

    fn names(segs: &[WalSegmentName]) -> Vec<String> {
        segs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_timeline_from_start_to_end() {
        let path = timeline_path(
            TimelineId(1),
            Lsn(0x20_0028),
            TimelineId(1),
            &BTreeMap::new(),
        )
        .unwrap();
        let segs = needed_segments(&path, Lsn(0x20_0028), Lsn(0x50_0000), MB);
        // The end at a segment's start does not need that segment.
        assert_eq!(
            names(&segs),
            [
                "000000010000000000000002",
                "000000010000000000000003",
                "000000010000000000000004"
            ]
        );
    }

    #[test]
    fn a_timeline_switch_reads_the_switch_segment_from_the_new_timeline() {
        let mut h = BTreeMap::new();
        h.insert(
            TimelineId(2),
            vec![HistoryEntry {
                timeline: TimelineId(1),
                end: Lsn(0x30_1000),
            }],
        );
        let path = timeline_path(TimelineId(1), Lsn(0x10_0028), TimelineId(2), &h).unwrap();
        let segs = needed_segments(&path, Lsn(0x10_0028), Lsn(0x40_0100), MB);
        assert_eq!(
            names(&segs),
            [
                "000000010000000000000001",
                "000000010000000000000002",
                "000000020000000000000003",
                "000000020000000000000004"
            ]
        );
        // No history for timeline 3; timeline 2 does not lead to 1.
        assert!(timeline_path(TimelineId(1), Lsn(0), TimelineId(3), &h).is_none());
        assert!(timeline_path(TimelineId(2), Lsn(0), TimelineId(1), &h).is_none());
        // A backup taken on timeline 1 after it ended is not an ancestor.
        assert!(timeline_path(TimelineId(1), Lsn(0x50_0000), TimelineId(2), &h).is_none());
    }

    #[test]
    fn missing_segments_become_ranges() {
        let seg = |n: &str| WalSegmentName::parse(n).unwrap();
        let mut m = BTreeMap::new();
        for n in [
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "000000010000000000000009",
            "000000020000000000000009",
        ] {
            m.insert(seg(n), format!("why {n}"));
        }
        let r = ranges(&m, MB);
        let shown: Vec<(String, String)> = r
            .iter()
            .map(|(a, b, _)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(
            shown,
            [
                (
                    "000000010000000000000003".into(),
                    "000000010000000000000005".into()
                ),
                (
                    "000000010000000000000009".into(),
                    "000000010000000000000009".into()
                ),
                (
                    "000000020000000000000009".into(),
                    "000000020000000000000009".into()
                ),
            ]
        );
        assert_eq!(r[0].2, "why 000000010000000000000003");
    }

    #[test]
    fn the_watermark_stops_before_the_first_gap() {
        let seg = |n: &str| WalSegmentName::parse(n).unwrap();
        let (a, b, gap, d) = (
            seg("000000010000000000000003"),
            seg("000000010000000000000005"),
            seg("000000010000000000000007"),
            seg("000000010000000000000009"),
        );
        assert_eq!(next_mark(None, Some(b), None, MB), Some(b));
        assert_eq!(next_mark(Some(b), Some(a), None, MB), Some(b));
        assert_eq!(next_mark(Some(a), None, Some(gap), MB), Some(a));
        // Past the gap: back to the segment before it.
        assert_eq!(
            next_mark(Some(a), Some(d), Some(gap), MB),
            Some(seg("000000010000000000000006"))
        );
        assert_eq!(next_mark(None, None, None, MB), None);
    }

    #[test]
    fn faults_name_their_object_once() {
        let f = Fault {
            content_id: Some(2),
            backup: Some("b1".into()),
            object: Some("seg2/x".into()),
            problem: "seg2/x: authentication failed".into(),
            storage: false,
        };
        assert_eq!(
            f.to_string(),
            "content 2: backup b1: seg2/x: authentication failed"
        );
        let f = Fault {
            object: Some("seg2/y".into()),
            problem: "missing".into(),
            ..f
        };
        assert_eq!(f.to_string(), "content 2: backup b1: seg2/y: missing");
        let report = VerifyReport {
            faults: vec![f],
            ..VerifyReport::default()
        };
        assert_eq!(report.error().unwrap().exit_code(), ExitCode::Integrity);
        assert!(VerifyReport::default().error().is_none());
    }
}
