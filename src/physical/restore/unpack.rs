//! The unpacking half of a restore: parts streamed from the repository,
//! unpacked into files (pieces of one file reassembled), written back and
//! synced as they land.

#[allow(unused_imports)]
use super::*;

/// What one restore task unpacks.
pub(super) enum Job {
    /// A part that is a tar of its own.
    Part(String),
    /// The parts of a stream the server compressed, in order.
    Stream {
        keys: Vec<String>,
        compression: crate::codec::Compression,
    },
}

/// Parts of a compressed stream fetched and decrypted ahead of its decoder.
pub(crate) const STREAM_PREFETCH: usize = 3;

/// Unpacks a stream the server compressed: its parts fetched and
/// decrypted `prefetch` at a time, in order, into one decoder.
pub(crate) async fn unpack_stream(
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
pub(crate) struct PartsReader {
    pub(super) rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>>>,
    pub(super) buf: Vec<u8>,
    pub(super) at: usize,
    /// Why a part could not be read.
    pub(super) failure: Arc<Mutex<Option<Error>>>,
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

/// Syncs the restore's file systems over and over while files are written
/// (a thread), so that the disk persists them as they come: the final sync,
/// which alone guarantees durability, then finds little left to do. A
/// failure here is left for the final sync to report.
pub(super) struct EarlySync {
    pub(super) stop: Arc<(Mutex<bool>, std::sync::Condvar)>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

/// Pause between two early syncs: short, as the disk persists data best
/// when always asked to (a 1.6 GB restore measured: 3.0-3.3 s with 0-20 ms
/// pauses, 3.4 s with 100 ms, 3.7-4.1 s with 1 s).
pub(super) const EARLY_SYNC_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

impl EarlySync {
    pub(super) fn start(mut dirs: Vec<PathBuf>) -> EarlySync {
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
    pub(super) fn stop(self) {}
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

/// Where restored files are checked off.
pub(super) struct Done<'a> {
    pub(super) check: &'a FileCheck,
    /// Set when another part failed: unpacking stops.
    pub(super) stop: &'a AtomicBool,
}

impl Done<'_> {
    pub(super) fn check_stop(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(Error::Internal(
                "stopped: another part of the restore failed".into(),
            ));
        }
        Ok(())
    }
}

/// Bytes written to a file before its writeback is started: the disk then
/// works from the start of the restore, not only at the final sync.
pub(super) const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;
/// Bytes per write.
pub(super) const WRITE_SIZE: usize = 1024 * 1024;

/// A file being restored, or a piece of one, written from `start` through
/// the page cache, its writeback started every [`WRITEBACK_STEP`] bytes.
/// (Direct I/O was measured slower here: its synchronous 1 MiB writes wait
/// on the disk one by one, where the writeback sends large requests.)
pub(super) struct OutFile {
    pub(super) file: fs::File,
    pub(super) start: u64,
    pub(super) written: u64,
    /// Bytes whose writeback was started.
    pub(super) flushed: u64,
}

impl OutFile {
    pub(super) fn open(path: &Path, start: u64, truncate: bool) -> io::Result<OutFile> {
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

    pub(super) fn write(&mut self, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(data, self.start + self.written)?;
        self.written += data.len() as u64;
        if self.written - self.flushed >= WRITEBACK_STEP {
            self.writeback();
        }
        Ok(())
    }

    pub(super) fn writeback(&mut self) {
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
    pub(super) fn finish(mut self) {
        self.writeback();
    }
}

/// Starts writing back `len` bytes of `file` from `offset` (no wait).
pub(super) fn start_writeback(file: &fs::File, offset: u64, len: u64) {
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
pub(super) fn through_link(dir: &Path, rel: &Path) -> bool {
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

/// Unpacks one part's decoded tar stream, checking each file against the
/// manifest (a file cut into pieces once all its pieces are in). Runs on a
/// blocking thread.
pub(super) fn unpack(
    reader: impl Read,
    dir: &Path,
    manifest_prefix: &str,
    done: &Done<'_>,
    part: &str,
    progress: Option<&Progress>,
) -> Result<()> {
    let bad = |what: String| Error::Integrity(format!("{part}: {what}"));
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
        check_entry_path(&rel).map_err(bad)?;
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
            None => done.check.file(manifest_path, size, crc).map_err(bad)?,
            Some((offset, whole)) => done
                .check
                .piece(
                    manifest_path,
                    whole,
                    Run {
                        start: offset,
                        len: size,
                        crc,
                    },
                )
                .map_err(bad)?,
        }
    }
    Ok(())
}
