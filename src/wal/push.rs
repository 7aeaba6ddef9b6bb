//! `wal-push`: archive one WAL file, and the next ones already waiting.
//!
//! PostgreSQL runs archive_command once per file, one at a time. To keep up
//! with busy servers, each call also uploads (in parallel, up to
//! `archive.push_concurrency` files) the files that `archive_status/*.ready`
//! lists, and remembers each one it stored in `pg_wal/cbdr_archived/`; the
//! call PostgreSQL then makes for such a file checks the memo (the file's
//! size, modification time and inode) and returns at once, without opening
//! the repository. A memo is written only after the upload completed, so
//! nothing is reported archived before it is durable.
//!
//! A file already archived is read back and compared: the same content is
//! success, other content an error that overwrites nothing. The object is
//! stored with a no-clobber put (link(2) on the filesystem, `If-None-Match`
//! on S3, which Garage ignores), so two racing pushes of one segment cannot
//! replace each other where the storage honours it. A file whose lz4 sample
//! saves less than 10% is stored uncompressed (still authenticated, and
//! encrypted when a key is configured). `wal-receive` stores its segments
//! through the same `store_wal_file`.

use std::fs;
use std::io::{self, Read, Write};

use std::path::{Path, PathBuf};

use futures_util::future::join_all;

use super::wal_file_of;
use crate::error::{Error, Result};
use crate::fsutil::parent_dir;
use crate::pg::WalFile;
use crate::repo::{layout, Repo, TransferStats};
use crate::storage::StorageError;

pub const MEMO_DIR: &str = "cbdr_archived";

#[derive(Debug, Clone)]
pub struct PushOptions {
    pub content_id: i32,
    /// Files uploaded at once, this one included.
    pub concurrency: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Uploaded now.
    Uploaded(TransferStats),
    /// Already in the archive with the same content.
    AlreadyArchived,
    /// Uploaded ahead by an earlier call (its memo matched).
    UploadedAhead,
}

/// Archives the WAL file at `path` (archive_command's `%p`).
pub async fn wal_push(repo: &Repo, path: &Path, opts: &PushOptions) -> Result<PushOutcome> {
    let (name, file) = wal_file_of(path)?;
    let wal_dir = parent_dir(path).to_path_buf();
    let memo = Memo::new(&wal_dir);
    if memo.take_if_matches(&name, path) {
        tracing::debug!("{name}: uploaded ahead by an earlier call");
        return Ok(PushOutcome::UploadedAhead);
    }
    if !path.is_file() {
        return Err(Error::Usage(format!(
            "{} does not exist or is not a file",
            path.display()
        )));
    }
    repo.prepare_write().await?;

    let ahead = ready_files(&wal_dir, &name, opts.concurrency.saturating_sub(1), &memo);
    let main = push_one(repo, opts.content_id, &file, path);
    let others = ahead.iter().map(|(ahead_name, ahead_file)| {
        let p = wal_dir.join(ahead_name);
        let memo = &memo;
        async move {
            match push_one(repo, opts.content_id, ahead_file, &p).await {
                Ok(_) => {
                    if let Err(e) = memo.record(ahead_name, &p) {
                        tracing::warn!("{ahead_name}: archived, but could not remember it: {e}");
                    }
                }
                // PostgreSQL will ask for it again, and the error then
                // reaches it: here it is only a warning.
                Err(e) => tracing::warn!("{ahead_name}: uploading ahead failed: {e}"),
            }
        }
    });
    let (result, _) = futures_util::join!(main, join_all(others));
    result
}

/// Uploads one file unless the archive has it; the same content already
/// archived is success, different content an error that overwrites nothing.
async fn push_one(
    repo: &Repo,
    content_id: i32,
    file: &WalFile,
    path: &Path,
) -> Result<PushOutcome> {
    store_wal_file(repo, content_id, file, WalSource::File(path)).await
}

/// Where the bytes of a WAL file come from: a file in pg_wal (`wal-push`)
/// or a segment received over streaming replication (`wal-receive`).
pub(crate) enum WalSource<'a> {
    File(&'a Path),
    Bytes(bytes::Bytes),
}

trait ReadSeek: Read + io::Seek + Send {}
impl<T: Read + io::Seek + Send> ReadSeek for T {}

impl WalSource<'_> {
    fn open(&self) -> Result<Box<dyn ReadSeek>> {
        match self {
            WalSource::File(path) => fs::File::open(path)
                .map(|f| Box::new(f) as Box<dyn ReadSeek>)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e)),
            WalSource::Bytes(b) => Ok(Box::new(io::Cursor::new(b.clone()))),
        }
    }

    fn describe(&self, file: &WalFile) -> String {
        match self {
            WalSource::File(path) => path.display().to_string(),
            WalSource::Bytes(_) => format!("received {file}"),
        }
    }
}

/// Stores one WAL file under the name `wal-push` uses, unless the archive
/// has it: the same content already archived is success
/// ([`PushOutcome::AlreadyArchived`]), different content
/// [`Error::WalConflict`] and nothing is overwritten. `wal-push` and
/// `wal-receive` both store through here, so they can run side by side.
pub(crate) async fn store_wal_file(
    repo: &Repo,
    content_id: i32,
    file: &WalFile,
    source: WalSource<'_>,
) -> Result<PushOutcome> {
    let key = layout::wal_key(content_id, file);
    if repo.exists(&key).await? {
        return if same_content(repo, &key, &source, file).await? {
            tracing::info!("{file}: already archived with the same content");
            Ok(PushOutcome::AlreadyArchived)
        } else {
            Err(Error::WalConflict {
                name: file.to_string(),
                key,
            })
        };
    }
    let mut input = source.open()?;
    let put = if worth_compressing(repo, &mut input)
        .map_err(|e| Error::io(format!("reading {}", source.describe(file)), e))?
    {
        put_new_reader(repo, &key, input).await
    } else {
        // Incompressible WAL (e.g. compressed or encrypted data in the
        // database) is stored as it is: the header says so.
        let mut plain = repo.clone();
        plain.codec.compression = crate::codec::Compression::None;
        put_new_reader(&plain, &key, input).await
    };
    let stats = match put {
        // Another push of this file got there first (two archivers, or a
        // retry racing the first try): the same content is success.
        Err(Error::Storage(StorageError::AlreadyExists { .. })) => {
            return if same_content(repo, &key, &source, file).await? {
                tracing::info!("{file}: archived meanwhile by another push, with the same content");
                Ok(PushOutcome::AlreadyArchived)
            } else {
                Err(Error::WalConflict {
                    name: file.to_string(),
                    key,
                })
            };
        }
        other => other?,
    };
    tracing::info!(
        "{file}: archived ({} bytes, stored {} bytes)",
        stats.plain,
        stats.stored
    );
    Ok(PushOutcome::Uploaded(stats))
}

/// Stores what `input` yields under `key` unless an object is there
/// ([`StorageError::AlreadyExists`]).
async fn put_new_reader(repo: &Repo, key: &str, input: Box<dyn ReadSeek>) -> Result<TransferStats> {
    let name = key.to_string();
    repo.put_new_with(key, move |w| crate::repo::copy_input(input, w, &name))
        .await
}

/// Whether the configured compression gains anything on this file: lz4 on
/// its first 256 KiB must save at least 10%. The input is rewound.
fn worth_compressing(repo: &Repo, input: &mut dyn ReadSeek) -> io::Result<bool> {
    if repo.codec.compression == crate::codec::Compression::None {
        return Ok(true);
    }
    let mut sample = Vec::with_capacity(256 * 1024);
    Read::take(&mut *input, 256 * 1024).read_to_end(&mut sample)?;
    input.rewind()?;
    if sample.len() < 4096 {
        return Ok(true);
    }
    let compressed = lz4_flex::block::compress(&sample);
    Ok(compressed.len() * 10 < sample.len() * 9)
}

/// Compares the archived object with the local bytes, streaming.
async fn same_content(
    repo: &Repo,
    key: &str,
    source: &WalSource<'_>,
    file: &WalFile,
) -> Result<bool> {
    let local = source.open()?;
    let cmp = Comparer {
        local: io::BufReader::with_capacity(256 * 1024, local),
        same: true,
        scratch: Vec::new(),
    };
    let (mut cmp, _) = repo.get_into(key, cmp).await?;
    // The local file must not be longer than the archived one.
    let mut probe = [0u8; 1];
    let longer = cmp
        .local
        .read(&mut probe)
        .map_err(|e| Error::io(format!("reading {}", source.describe(file)), e))?
        > 0;
    Ok(cmp.same && !longer)
}

struct Comparer<R: Read> {
    local: R,
    same: bool,
    scratch: Vec<u8>,
}

impl<R: Read> Write for Comparer<R> {
    fn write(&mut self, archived: &[u8]) -> io::Result<usize> {
        if self.same {
            self.scratch.resize(archived.len(), 0);
            let mut filled = 0;
            while filled < archived.len() {
                match self.local.read(&mut self.scratch[filled..])? {
                    0 => break,
                    n => filled += n,
                }
            }
            self.same = filled == archived.len() && self.scratch[..filled] == *archived;
        }
        Ok(archived.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Files waiting to be archived (`archive_status/*.ready`), other than
/// `current`: history files first, then oldest first, at most `limit`.
fn ready_files(wal_dir: &Path, current: &str, limit: usize, memo: &Memo) -> Vec<(String, WalFile)> {
    if limit == 0 {
        return Vec::new();
    }
    let Ok(entries) = fs::read_dir(wal_dir.join("archive_status")) else {
        return Vec::new();
    };
    let mut ready: Vec<(String, WalFile)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_str()?.strip_suffix(".ready")?.to_string();
            let f = WalFile::parse(&n)?;
            // Already uploaded ahead: PostgreSQL's own call will find the memo.
            (n != current && !memo.has(&n)).then_some((n, f))
        })
        .collect();
    ready.sort_by_key(|(n, f)| (!matches!(f, WalFile::History(_)), n.clone()));
    ready.truncate(limit);
    ready
}

/// Remembers files uploaded ahead: `pg_wal/cbdr_archived/<name>` holds the
/// file's size, modification time and inode when it was uploaded. A file
/// PostgreSQL has marked `.ready` is complete and is not rewritten until it
/// is archived, so these identify it without reading it again. Memos are
/// not fsynced: a lost memo only costs a check of the archive.
pub(super) struct Memo {
    dir: PathBuf,
}

impl Memo {
    pub(super) fn new(wal_dir: &Path) -> Memo {
        Memo {
            dir: wal_dir.join(MEMO_DIR),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.dir.join(name).exists()
    }

    fn record(&self, name: &str, path: &Path) -> io::Result<()> {
        let fingerprint = fingerprint(path)?;
        fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, fingerprint.as_bytes())?;
        fs::rename(&tmp, self.dir.join(name))
    }

    /// True (and the memo removed) when `name` was uploaded ahead with the
    /// content `path` has now.
    pub(super) fn take_if_matches(&self, name: &str, path: &Path) -> bool {
        let memo_path = self.dir.join(name);
        let Ok(recorded) = fs::read_to_string(&memo_path) else {
            return false;
        };
        let matches = fingerprint(path).is_ok_and(|now| now == recorded);
        let _ = fs::remove_file(&memo_path);
        if !matches {
            tracing::warn!(
                "{name}: uploaded ahead, but the file changed since: checking the archive again"
            );
        }
        matches
    }
}

fn fingerprint(path: &Path) -> io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(path)?;
    Ok(format!(
        "{} {} {} {}\n",
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino()
    ))
}
