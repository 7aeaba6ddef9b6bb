//! The unpacking half of a restore of a block backup (full or delta): the
//! newest backup's file maps read in order, each file cut into chunks
//! restored on every core, each block read from the backup of the chain
//! that holds it (ranged reads of its extents, adjacent extents in one
//! read), checked against its hash in the map, and written in place. No
//! chain is replayed: every block is written once.
//!
//! `verify` runs the same assembly without writing ([`verify_blocks`]):
//! every block read, authenticated and hash-checked, every file's size and
//! CRC32C checked against the manifest.

#[allow(unused_imports)]
use super::*;

use crate::physical::blocks::{
    block_count, block_len, decode_map, hash, object_name, pack_objects, read_range, ExtentRef,
    FileMap, Kind, BLOCK_SIZE, CHUNK_BLOCKS,
};
use crate::repo::catalog::BackupRecord;

/// Bytes between two extents of one pack below which they are read in one
/// request (the bytes between are read and dropped).
const READ_GAP: u64 = 256 * 1024;
/// Bytes read in one request at most: below the allocator's mmap
/// threshold (8 MiB, `main.rs`), so that read buffers are reused from the
/// heap rather than mapped and faulted in at every read.
const READ_MAX: u64 = 7 * 1024 * 1024 + 512 * 1024;
/// Reads of a chunk job in flight beside the one being decoded: the next
/// extents arrive while the current ones are decoded and written.
const READ_AHEAD: usize = 1;
/// Chunk jobs at once at most. Most files of a cluster are small: each is
/// one job that makes one small ranged read, which costs an S3 round trip
/// (tens of milliseconds) and almost no CPU; with only `--parallel` jobs
/// at once a restore from S3 waited on round trips one after the other.
/// What bounds memory is [`JOB_BYTES`], not this count.
const MAX_JOBS: usize = 64;
/// Plain bytes of the chunks being restored at once, per `--parallel`
/// (16 MiB: one full chunk; a chunk job holds its reads and one extent).
const JOB_BYTES: u64 = CHUNK_BLOCKS * BLOCK_SIZE as u64;

/// Reads the records of the backup's chain (itself first) and checks that
/// every pack they list is in the repository, before anything is written.
pub(super) async fn check_chain(repo: &Repo, backup: &BackupRecord) -> Result<Vec<BackupRecord>> {
    if backup.chain.first() != Some(&backup.name) {
        return Err(Error::Integrity(format!(
            "backup {}: its record is damaged (its chain does not start with itself)",
            backup.name
        )));
    }
    let mut chain = vec![backup.clone()];
    for (i, name) in backup.chain.iter().enumerate().skip(1) {
        let b = match repo.backup(backup.content_id, name).await {
            Ok(b) => b,
            Err(Error::NotFound(_)) => {
                return Err(Error::Integrity(format!(
                    "backup {} is a delta that needs backup {name} (its chain: {}), which is not in the repository: it cannot be restored; restore another backup (`cbdr list` shows them)",
                    backup.name,
                    backup.chain.join(" <- ")
                )))
            }
            Err(e) => return Err(e),
        };
        if b.chain[..] != backup.chain[i..] || b.system_identifier != backup.system_identifier {
            return Err(Error::Integrity(format!(
                "backup {} needs backup {name}, whose record does not match (another chain or another server): it cannot be restored",
                backup.name
            )));
        }
        chain.push(b);
    }
    let location = repo.storage.location();
    for (i, b) in chain.iter().enumerate() {
        let stored: HashSet<String> = repo
            .storage
            .list(&layout::backup_prefix(b.content_id, &b.name))
            .await?
            .into_iter()
            .map(|o| o.key)
            .collect();
        for a in &b.archives {
            let blocks =
                (0..a.parts).map(|n| layout::block_pack_key(b.content_id, &b.name, &a.name, n));
            let maps = (0..if i == 0 { a.map_parts } else { 0 })
                .map(|n| layout::map_pack_key(b.content_id, &b.name, &a.name, n));
            if let Some(key) = blocks.chain(maps).find(|k| !stored.contains(k)) {
                return Err(Error::Integrity(format!(
                    "backup {} is damaged: its object {key} is missing from {location}; {}: restore another backup (`cbdr list` shows them) and take a new full one",
                    b.name,
                    if i == 0 {
                        "it cannot be restored".to_string()
                    } else {
                        format!("backup {}, a delta of it, cannot be restored", backup.name)
                    }
                )));
            }
        }
    }
    Ok(chain)
}

/// What every chunk job shares.
pub(super) struct Shared {
    pub(super) repo: Repo,
    pub(super) chain: Vec<BackupRecord>,
    /// The newest backup's manifest, where restored files are checked off.
    pub(super) check: Arc<FileCheck>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) progress: Option<Arc<Progress>>,
    /// False for `verify`: every block read and checked, nothing written.
    pub(super) write: bool,
    /// Plain bytes of the files assembled.
    pub(super) bytes: AtomicU64,
}

/// Assembles every file of a block backup from its chain as a restore
/// would, without writing anything: the chain's records and packs checked,
/// every map read and checked, every block read (authenticated by the
/// codec, checked against its hash in the map), every file's size and
/// CRC32C checked off in `check`. Returns the plain bytes assembled. The
/// first fault ends it (its message names the backup and the object).
pub(crate) async fn verify_blocks(
    repo: &Repo,
    backup: &BackupRecord,
    check: Arc<FileCheck>,
    parallel: usize,
) -> Result<u64> {
    let chain = check_chain(repo, backup).await?;
    let shared = Arc::new(Shared {
        repo: repo.clone(),
        chain,
        check,
        stop: Arc::default(),
        progress: None,
        write: false,
        bytes: AtomicU64::new(0),
    });
    let dirs = backup
        .archives
        .iter()
        .map(|a| {
            let prefix = if a.name == "base" {
                String::new()
            } else {
                format!("pg_tblspc/{}/", a.name)
            };
            (a.name.clone(), (PathBuf::new(), prefix))
        })
        .collect();
    unpack_blocks(shared.clone(), &dirs, parallel).await?;
    Ok(shared.bytes.load(Ordering::Relaxed))
}

/// Restores every archive of `shared.chain[0]` into its directory.
pub(super) async fn unpack_blocks(
    shared: Arc<Shared>,
    dirs: &HashMap<String, (PathBuf, String)>,
    parallel: usize,
) -> Result<()> {
    let newest = &shared.chain[0];
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    // KiB of chunks in flight.
    let budget = Arc::new(tokio::sync::Semaphore::new(
        (parallel.max(1) as u64 * JOB_BYTES / KIB) as usize,
    ));
    let mut failure: Option<Error> = None;
    let early_sync = shared
        .write
        .then(|| EarlySync::start(dirs.values().map(|(d, _)| d.clone()).collect()));
    'archives: for a in &newest.archives {
        let (dir, prefix) = dirs[&a.name].clone();
        // Small files whose extents lie next to each other, read at once.
        let mut batch: Option<Batch> = None;
        for n in 0..a.map_parts {
            let key = layout::map_pack_key(newest.content_id, &newest.name, &a.name, n);
            let pack = match crate::storage::get_bytes(shared.repo.storage.as_ref(), &key).await {
                Ok(p) => p,
                Err(e) => {
                    failure = Some(e.into());
                    break 'archives;
                }
            };
            let objects = match pack_objects(&key, &pack) {
                Ok(o) => o,
                Err(e) => {
                    failure = Some(e);
                    break 'archives;
                }
            };
            for (seq, _, range) in objects {
                let map = decode_map(&shared.repo, &key, seq, pack[range].to_vec()).and_then(|m| {
                    m.check(shared.chain.len())
                        .map_err(|e| Error::Integrity(format!("{key}: {e}")))?;
                    Ok(m)
                });
                let map = match map {
                    Ok(m) => m,
                    Err(e) => {
                        failure = Some(e);
                        break 'archives;
                    }
                };
                let jobs = match place(&map, &dir, &prefix, &shared) {
                    Ok(Some(out)) => out,
                    Ok(None) => continue,
                    Err(e) => {
                        failure = Some(e);
                        break 'archives;
                    }
                };
                let map = Arc::new(map);
                let (out, manifest_path) = jobs;
                if let Some(span) = small_span(&map) {
                    if !batch.as_ref().is_some_and(|b| b.takes(&span, map.size)) {
                        if let Some(b) = batch.take() {
                            if let Err(e) =
                                spawn_batch(&mut tasks, &budget, &shared, &a.name, b).await
                            {
                                failure = Some(e);
                                break 'archives;
                            }
                        }
                        batch = Some(Batch::new(&span));
                    }
                    let b = batch.as_mut().expect("just made");
                    b.end = span.3;
                    b.plain += map.size;
                    b.files.push((map, out, manifest_path));
                    continue;
                }
                if let Some(b) = batch.take() {
                    if let Err(e) = spawn_batch(&mut tasks, &budget, &shared, &a.name, b).await {
                        failure = Some(e);
                        break 'archives;
                    }
                }
                let writing = Arc::new(std::sync::Mutex::new(()));
                for chunk in 0..block_count(map.size).div_ceil(CHUNK_BLOCKS) {
                    let first = chunk * CHUNK_BLOCKS * BLOCK_SIZE as u64;
                    let bytes = (map.size - first).min(JOB_BYTES);
                    let (shared, map, archive) = (shared.clone(), map.clone(), a.name.clone());
                    let (out, manifest_path) = (out.clone(), manifest_path.clone());
                    let writing = writing.clone();
                    let handle = tokio::runtime::Handle::current();
                    let job = move || {
                        restore_chunk(
                            &shared,
                            &handle,
                            &archive,
                            &map,
                            chunk,
                            (&out, &manifest_path, &writing),
                            None,
                        )
                    };
                    if let Err(e) = spawn_job(&mut tasks, &budget, bytes, job).await {
                        failure = Some(e);
                        break 'archives;
                    }
                }
            }
        }
        if let Some(b) = batch.take() {
            if let Err(e) = spawn_batch(&mut tasks, &budget, &shared, &a.name, b).await {
                failure = Some(e);
                break 'archives;
            }
        }
    }
    if failure.is_some() {
        shared.stop.store(true, Ordering::Relaxed);
    }
    while let Some(r) = join(&mut tasks).await {
        if let Err(e) = r {
            failure.get_or_insert(e);
            shared.stop.store(true, Ordering::Relaxed);
        }
    }
    if let Some(s) = early_sync {
        s.stop();
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

const KIB: u64 = 1024;
/// Bytes of one write(2) at most.
const WRITE_MAX: usize = 128 * 1024;
/// Files up to this size are restored in batches (see [`Batch`]).
const BATCH_FILE: u64 = 256 * 1024;

/// Small files next to each other in one block pack of one backup: one
/// job, one ranged read (on S3 a request per small file was most of a
/// restore's time, and most of the server's CPU).
struct Batch {
    backup: u16,
    pack: u32,
    start: u64,
    end: u64,
    /// Plain bytes of its files.
    plain: u64,
    files: Vec<(Arc<FileMap>, PathBuf, String)>,
}

/// `(backup, pack, start, end)`: where a small file's extents lie, when
/// they are all in one pack.
type Span = (u16, u32, u64, u64);

fn small_span(map: &FileMap) -> Option<Span> {
    if map.size > BATCH_FILE {
        return None;
    }
    let e = map.runs.first()?.extent;
    let mut span = (e.backup, e.pack, e.offset, e.offset + e.len as u64);
    for r in &map.runs[1..] {
        let e = r.extent;
        if (e.backup, e.pack) != (span.0, span.1) {
            return None;
        }
        span.2 = span.2.min(e.offset);
        span.3 = span.3.max(e.offset + e.len as u64);
    }
    Some(span)
}

impl Batch {
    fn new(span: &Span) -> Batch {
        Batch {
            backup: span.0,
            pack: span.1,
            start: span.2,
            end: span.2,
            plain: 0,
            files: Vec::new(),
        }
    }

    /// Whether a file of `size` bytes at `span` joins this batch's read.
    fn takes(&self, span: &Span, size: u64) -> bool {
        (span.0, span.1) == (self.backup, self.pack)
            && span.2 >= self.end
            && span.2 - self.end <= READ_GAP
            && span.3 - self.start <= READ_MAX
            && self.plain + size <= JOB_BYTES
    }
}

/// Spawns `job` once fewer than [`MAX_JOBS`] run and `bytes` of the budget
/// are free; a finished job's fault is returned first.
async fn spawn_job(
    tasks: &mut JoinSet<Result<()>>,
    budget: &Arc<tokio::sync::Semaphore>,
    bytes: u64,
    job: impl FnOnce() -> Result<()> + Send + 'static,
) -> Result<()> {
    while tasks.len() >= MAX_JOBS {
        if let Some(Err(e)) = join(tasks).await {
            return Err(e);
        }
    }
    while let Some(r) = tasks.try_join_next() {
        flatten(r)?;
    }
    let permit = budget
        .clone()
        .acquire_many_owned(bytes.min(JOB_BYTES).div_ceil(KIB) as u32)
        .await
        .expect("the budget is never closed");
    tasks.spawn_blocking(move || {
        let _permit = permit;
        job()
    });
    Ok(())
}

/// Restores the files of `batch` from one read.
async fn spawn_batch(
    tasks: &mut JoinSet<Result<()>>,
    budget: &Arc<tokio::sync::Semaphore>,
    shared: &Arc<Shared>,
    archive: &str,
    batch: Batch,
) -> Result<()> {
    let (shared, archive) = (shared.clone(), archive.to_string());
    let handle = tokio::runtime::Handle::current();
    let bytes = batch.plain;
    spawn_job(tasks, budget, bytes, move || {
        let b = &shared.chain[batch.backup as usize];
        let key = layout::block_pack_key(b.content_id, &b.name, &archive, batch.pack);
        let read = handle
            .block_on(read_range(
                &shared.repo,
                &key,
                batch.start,
                batch.end - batch.start,
            ))
            .map_err(|e| match e {
                Error::Storage(s) if s.is_not_found() => Error::Integrity(format!(
                    "backup {} is damaged: {key} is missing; backup {} cannot be restored: restore another backup (`cbdr list` shows them) and take a new full one",
                    b.name, shared.chain[0].name
                )),
                other => other,
            })?;
        let writing = std::sync::Mutex::new(());
        for (map, out, manifest_path) in &batch.files {
            restore_chunk(
                &shared,
                &handle,
                &archive,
                map,
                0,
                (out, manifest_path, &writing),
                Some((batch.start, &read)),
            )?;
        }
        Ok(())
    })
    .await
}

async fn join(tasks: &mut JoinSet<Result<()>>) -> Option<Result<()>> {
    tasks.join_next().await.map(flatten)
}

fn flatten(j: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    j.map_err(|e| Error::Internal(format!("restore task: {e}")))
        .and_then(|r| r)
}

/// Makes a directory or link, or creates (empty) the file of a map;
/// returns the file to fill and its manifest path when it has data.
fn place(
    map: &FileMap,
    dir: &Path,
    prefix: &str,
    shared: &Shared,
) -> Result<Option<(PathBuf, String)>> {
    let bad = |what: String| Error::Integrity(format!("backup {}: {what}", shared.chain[0].name));
    let rel = Path::new(&map.path);
    if map.path.is_empty()
        || rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad(format!("refusing the path {:?}", map.path)));
    }
    if !shared.write {
        if map.kind == Kind::Link && map.link.is_none() {
            return Err(bad(format!("link {} without a target", map.path)));
        }
        if map.kind != Kind::File {
            return Ok(None);
        }
        let manifest_path = format!("{prefix}{}", map.path);
        if map.size == 0 {
            shared.done().check.file(manifest_path, 0, 0).map_err(bad)?;
            return Ok(None);
        }
        return Ok(Some((PathBuf::new(), manifest_path)));
    }
    if through_link(dir, rel) {
        return Err(bad(format!(
            "refusing {}: it goes through a symbolic link of the archive",
            map.path
        )));
    }
    let dest = dir.join(rel);
    let mkdir = |d: &Path| {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(|e| Error::io(format!("creating {}", d.display()), e))
    };
    match map.kind {
        Kind::Dir => {
            mkdir(&dest)?;
            Ok(None)
        }
        Kind::Link => {
            let target = map
                .link
                .as_deref()
                .ok_or_else(|| bad(format!("link {} without a target", map.path)))?;
            std::os::unix::fs::symlink(target, &dest)
                .map_err(|e| Error::io(format!("creating link {}", dest.display()), e))?;
            Ok(None)
        }
        Kind::File => {
            if let Some(parent) = dest.parent() {
                mkdir(parent)?;
            }
            let manifest_path = format!("{prefix}{}", map.path);
            let out = if manifest_path == "global/pg_control" {
                dest.with_extension(PARTIAL_EXT)
            } else {
                dest
            };
            OutFile::open(&out, 0, true)
                .map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
            if map.size == 0 {
                let done = shared.done();
                done.check.file(manifest_path, 0, 0).map_err(bad)?;
                return Ok(None);
            }
            Ok(Some((out, manifest_path)))
        }
    }
}

impl Shared {
    fn done(&self) -> Done<'_> {
        Done {
            check: &self.check,
            stop: &self.stop,
        }
    }
}

/// The extents one request reads: `(extent, [(position, block)])`, all in
/// one pack of one backup.
type Read1 = Vec<(ExtentRef, Vec<(u32, u64)>)>;

/// Groups the blocks of a chunk by extent, and adjacent extents into reads.
fn plan_reads(map: &FileMap, first: u64, end: u64) -> Vec<Read1> {
    let mut wanted: Vec<(ExtentRef, u32, u64)> = Vec::new();
    for r in &map.runs {
        let (lo, hi) = (r.first.max(first), (r.first + r.count as u64).min(end));
        for i in lo..hi {
            wanted.push((r.extent, r.at + (i - r.first) as u32, i));
        }
    }
    wanted.sort_unstable_by_key(|&(e, at, _)| (e.backup, e.pack, e.offset, at));
    let mut reads: Vec<Read1> = Vec::new();
    for (e, at, i) in wanted {
        let Some(read) = reads.last_mut() else {
            reads.push(vec![(e, vec![(at, i)])]);
            continue;
        };
        let start = read[0].0.offset;
        let (last, blocks) = read.last_mut().expect("never empty");
        if *last == e {
            blocks.push((at, i));
            continue;
        }
        let prev_end = last.offset + last.len as u64;
        let joins = last.backup == e.backup
            && last.pack == e.pack
            && e.offset >= prev_end
            && e.offset - prev_end <= READ_GAP
            && e.offset + e.len as u64 - start <= READ_MAX;
        if joins {
            read.push((e, vec![(at, i)]));
        } else {
            reads.push(vec![(e, vec![(at, i)])]);
        }
    }
    reads
}

/// Restores blocks `chunk * CHUNK_BLOCKS..` of a file (a blocking thread).
fn restore_chunk(
    shared: &Shared,
    handle: &tokio::runtime::Handle,
    archive: &str,
    map: &FileMap,
    chunk: u64,
    (out, manifest_path, writing): (&Path, &str, &std::sync::Mutex<()>),
    batch_read: Option<(u64, &[u8])>,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let blocks = block_count(map.size);
    let first = chunk * CHUNK_BLOCKS;
    let end = (first + CHUNK_BLOCKS).min(blocks);
    let file = if shared.write {
        Some(
            fs::OpenOptions::new()
                .write(true)
                .open(out)
                .map_err(|e| Error::io(format!("opening {}", out.display()), e))?,
        )
    } else {
        None
    };
    // (first block, bytes, CRC32C) of each run written, to combine in
    // file order.
    let mut written: Vec<(u64, u64, u32)> = Vec::new();
    let done = shared.done();
    // A restore trusts each extent because the codec authenticates it
    // under its pack and position (`KEY#seq`), the map because it is
    // authenticated too, and the assembled file because its CRC32C must
    // match the manifest: the SHA-256 of each block is checked by verify
    // only (the next delta compares against those hashes).
    let check_hashes = !shared.write;
    let fetch = |read: &Read1| {
        let e0 = read[0].0;
        let last = read.last().expect("never empty").0;
        let b = &shared.chain[e0.backup as usize];
        let key = layout::block_pack_key(b.content_id, &b.name, archive, e0.pack);
        let span = last.offset + last.len as u64 - e0.offset;
        if let Some((at, buf)) = batch_read {
            // A batch's read holds it.
            let part = e0
                .offset
                .checked_sub(at)
                .and_then(|s| buf.get(s as usize..(s + span) as usize))
                .map(<[u8]>::to_vec);
            let k = key.clone();
            let job = handle.spawn(async move {
                part.ok_or_else(|| Error::Internal(format!("{k}: outside its batch's read")))
            });
            return (key, job);
        }
        let repo = shared.repo.clone();
        let k = key.clone();
        let job = handle.spawn(async move { read_range(&repo, &k, e0.offset, span).await });
        (key, job)
    };
    let mut reads = plan_reads(map, first, end).into_iter();
    let mut ahead = std::collections::VecDeque::new();
    let mut plain: Vec<u8> = Vec::new();
    loop {
        while ahead.len() <= READ_AHEAD {
            let Some(read) = reads.next() else { break };
            let f = fetch(&read);
            ahead.push_back((read, f));
        }
        let Some((read, (key, job))) = ahead.pop_front() else {
            break;
        };
        done.check_stop()?;
        let e0 = read[0].0;
        let b = &shared.chain[e0.backup as usize];
        let damaged = |what: String| {
            Error::Integrity(format!(
                "backup {} is damaged: {manifest_path}: {what}; backup {} cannot be restored: restore another backup (`cbdr list` shows them) and take a new full one",
                b.name, shared.chain[0].name
            ))
        };
        let bytes = handle
            .block_on(job)
            .map_err(|e| Error::Internal(format!("restore read: {e}")))?
            .map_err(|e| match e {
                Error::Storage(s) if s.is_not_found() => damaged(format!("{key} is missing")),
                Error::Storage(s) => Error::Storage(s),
                other => damaged(other.to_string()),
            })?;
        let mut bytes = bytes;
        for (e, wanted) in read {
            let at = (e.offset - e0.offset) as usize;
            let name = object_name(&key, e.seq);
            // Decoded in the read buffer itself, into the job's buffer.
            let object = bytes
                .get_mut(at..at + e.len as usize)
                .ok_or_else(|| damaged(format!("{name} lies outside its read")))?;
            let plain_len = shared
                .repo
                .codec
                .decode_in_place(&name, object, &mut plain)
                .map_err(|err| damaged(err.to_string()))?;
            let plain = &plain[..plain_len];
            // Blocks that follow each other in the extent and in the file
            // are written at once.
            let mut k = 0;
            while k < wanted.len() {
                let (pos, i) = wanted[k];
                let mut n = 1;
                while wanted
                    .get(k + n)
                    .is_some_and(|&(p, j)| p == pos + n as u32 && j == i + n as u64)
                {
                    n += 1;
                }
                let start = pos as usize * BLOCK_SIZE;
                let mut len = 0usize;
                for j in 0..n as u64 {
                    let block_len = block_len(map.size, i + j);
                    let data =
                        plain
                            .get(start + len..start + len + block_len)
                            .ok_or_else(|| {
                                damaged(format!(
                                    "block {} is missing from the extent {name}",
                                    i + j
                                ))
                            })?;
                    if check_hashes && hash(data) != map.hashes[(i + j) as usize] {
                        return Err(damaged(format!(
                            "block {} (from {name}) does not match its hash in the block map",
                            i + j
                        )));
                    }
                    len += block_len;
                }
                let data = &plain[start..start + len];
                if let Some(file) = &file {
                    // One writer per file at a time: the kernel takes the
                    // file's lock for each write anyway, and several jobs
                    // writing one large file spun on it (on a 1 GB segment
                    // file that was most of a restore's CPU time).
                    let _one = writing.lock().unwrap_or_else(|e| e.into_inner());
                    // In pieces: one 1 MiB write cost far more kernel time
                    // than the same bytes in 128 KiB writes (measured).
                    let mut at = i * BLOCK_SIZE as u64;
                    for piece in data.chunks(WRITE_MAX) {
                        file.write_all_at(piece, at)
                            .map_err(|e| Error::io(format!("writing {}", out.display()), e))?;
                        at += piece.len() as u64;
                    }
                }
                written.push((i, len as u64, crc32c::crc32c(data)));
                shared.bytes.fetch_add(len as u64, Ordering::Relaxed);
                if let Some(p) = &shared.progress {
                    p.add_done(len as u64);
                }
                k += n;
            }
        }
    }
    let start = first * BLOCK_SIZE as u64;
    let len = (end * BLOCK_SIZE as u64).min(map.size) - start;
    if let Some(file) = &file {
        start_writeback(file, start, len);
    }
    written.sort_unstable_by_key(|w| w.0);
    let mut crc = 0u32;
    let mut at = start;
    for (i, bytes, c) in written {
        if i * BLOCK_SIZE as u64 != at {
            return Err(Error::Internal(format!(
                "{manifest_path}: the chunk at {start} was not written whole"
            )));
        }
        crc = crate::physical::file_check::crc_combine(crc, c, bytes);
        at += bytes;
    }
    if at != start + len {
        return Err(Error::Internal(format!(
            "{manifest_path}: the chunk at {start} was not written whole"
        )));
    }
    crate::fault::point("restore-unpack");
    let bad = |m: String| Error::Integrity(format!("backup {}: {m}", shared.chain[0].name));
    if blocks <= CHUNK_BLOCKS {
        return done
            .check
            .file(manifest_path.to_string(), map.size, crc)
            .map_err(bad);
    }
    done.check
        .piece(manifest_path.to_string(), map.size, Run { start, len, crc })
        .map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::physical::blocks::Run as BlockRun;

    fn ext(backup: u16, offset: u64, len: u32) -> ExtentRef {
        ExtentRef {
            backup,
            pack: 0,
            offset,
            seq: 0,
            len,
        }
    }

    #[test]
    fn reads_join_adjacent_extents_of_one_pack_only() {
        let run = |e, at, first, count| BlockRun {
            extent: e,
            at,
            first,
            count,
        };
        let base = ext(1, 4, 1000);
        let base2 = ext(1, 1008, 1000);
        let new = ext(0, 4, 100);
        let far = ext(1, 4 + 100 * READ_MAX, 10);
        let m = FileMap {
            path: "f".into(),
            kind: Kind::File,
            size: 6 * BLOCK_SIZE as u64,
            link: None,
            runs: vec![
                run(base, 0, 0, 2),
                run(new, 0, 2, 1),
                run(base2, 0, 3, 2),
                run(far, 0, 5, 1),
            ],
            hashes: vec![[0; 32]; 6],
        };
        let reads = plan_reads(&m, 0, 6);
        let shape: Vec<Vec<(u64, Vec<u64>)>> = reads
            .iter()
            .map(|r| {
                r.iter()
                    .map(|(e, b)| (e.offset, b.iter().map(|x| x.1).collect()))
                    .collect()
            })
            .collect();
        // The delta's extent alone; the base's two adjacent extents in one
        // read; the far one alone.
        assert_eq!(
            shape,
            vec![
                vec![(4, vec![2])],
                vec![(4, vec![0, 1]), (1008, vec![3, 4])],
                vec![(far.offset, vec![5])],
            ]
        );
        // A chunk takes only its blocks.
        let reads = plan_reads(&m, 3, 5);
        assert_eq!(reads.len(), 1);
        assert_eq!(reads[0][0].1, vec![(0, 3), (1, 4)]);
    }

    #[test]
    fn small_files_next_to_each_other_share_a_read() {
        let file = |size: u64, extents: &[ExtentRef]| FileMap {
            path: "f".into(),
            kind: Kind::File,
            size,
            link: None,
            runs: extents
                .iter()
                .enumerate()
                .map(|(i, e)| BlockRun {
                    extent: *e,
                    at: 0,
                    first: i as u64,
                    count: 1,
                })
                .collect(),
            hashes: vec![[0; 32]; extents.len()],
        };
        let a = file(8192, &[ext(1, 4, 100)]);
        let span = small_span(&a).unwrap();
        assert_eq!(span, (1, 0, 4, 104));
        let mut batch = Batch::new(&span);
        batch.end = span.3;
        batch.plain = a.size;
        // The next extent of the pack joins; one of another backup, one
        // before the batch's end, one past the read's limit and a large
        // file do not.
        assert!(batch.takes(&small_span(&file(100, &[ext(1, 108, 50)])).unwrap(), 100));
        assert!(!batch.takes(&small_span(&file(100, &[ext(0, 108, 50)])).unwrap(), 100));
        assert!(!batch.takes(&small_span(&file(100, &[ext(1, 50, 10)])).unwrap(), 100));
        let far = small_span(&file(100, &[ext(1, READ_MAX, 10)])).unwrap();
        assert!(!batch.takes(&far, 100));
        assert!(small_span(&file(BATCH_FILE + 1, &[ext(1, 108, 50)])).is_none());
        // A file with blocks in two backups is not batched.
        let two = file(16384, &[ext(1, 4, 100), ext(0, 4, 10)]);
        assert!(small_span(&two).is_none());
    }
}
