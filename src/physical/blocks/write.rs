//! The receiving half of a block backup: the server's tar stream of one
//! archive cut into files and blocks as it passes; each block hashed and
//! compared with the base's block at its position; the new blocks and the
//! maps written by a thread of their own.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::*;
use crate::physical::tar_split::{Step, TarSplitter};
use crate::repo::catalog::{ArchiveRecord, BackupRecord};
use crate::repo::layout;
use crate::storage::StorageError;

/// A run's extent not yet stored: `seq` is its number within the file.
const PENDING: u16 = u16::MAX;
/// Messages queued for the writer (extents are up to 1 MiB).
const QUEUE: usize = 8;
/// Pack uploads in flight per pack writer.
const UPLOADS: usize = 2;
/// Extents encoded at once (on the blocking pool), appended in order.
const ENCODING: usize = 3;

/// How far past a map it needs a read of the base's map packs goes: the
/// maps of the files that follow in the base's order come with it (a new
/// backup meets the files in much the same order), one round trip for
/// many maps instead of one each.
const MAP_READ_AHEAD: u64 = 2 << 20;

/// The base of one archive: its backup and the index of its large files.
pub struct BaseArchive {
    pub record: BackupRecord,
    pub archive: String,
    pub index: HashMap<String, IndexEntry>,
    /// Where each map pack's last map ends (no read goes past it).
    pack_ends: HashMap<u32, u64>,
    /// The last read of a map pack: (pack, offset, bytes).
    window: std::sync::Mutex<Option<(u32, u64, Bytes)>>,
}

impl BaseArchive {
    /// Reads the index of `archive` of the base; `None` when the base has
    /// no such archive (a tablespace created since).
    pub async fn load(
        repo: &Repo,
        base: &BackupRecord,
        archive: &str,
    ) -> Result<Option<BaseArchive>> {
        if !base.archives.iter().any(|a| a.name == archive) {
            return Ok(None);
        }
        let key = layout::map_index_key(base.content_id, &base.name, archive);
        let entries: Vec<IndexEntry> = repo
            .get_json(&key)
            .await
            .map_err(|e| base_damaged(base, e))?;
        let mut pack_ends: HashMap<u32, u64> = HashMap::new();
        for e in entries.iter().filter(|e| e.map.is_none()) {
            let end = pack_ends.entry(e.pack).or_default();
            *end = (*end).max(e.offset + e.len as u64);
        }
        Ok(Some(BaseArchive {
            record: base.clone(),
            archive: archive.to_string(),
            index: entries.into_iter().map(|e| (e.path.clone(), e)).collect(),
            pack_ends,
            window: std::sync::Mutex::new(None),
        }))
    }

    /// The stored bytes of the map `e` points at: from the last read when
    /// it holds them, else from a read that also takes up to
    /// [`MAP_READ_AHEAD`] bytes after them (never past the pack's last map).
    async fn map_bytes(&self, repo: &Repo, key: &str, e: &IndexEntry) -> Result<Vec<u8>> {
        let (start, len) = (e.offset, e.len as u64);
        let held = |w: &Option<(u32, u64, Bytes)>| match w {
            Some((pack, at, bytes))
                if *pack == e.pack && *at <= start && start + len <= at + bytes.len() as u64 =>
            {
                let from = (start - at) as usize;
                Some(bytes[from..from + len as usize].to_vec())
            }
            _ => None,
        };
        if let Some(b) = held(&self.window.lock().expect("map window")) {
            return Ok(b);
        }
        let pack_end = self.pack_ends.get(&e.pack).copied().unwrap_or(start + len);
        let read = (start + len.max(MAP_READ_AHEAD))
            .min(pack_end)
            .max(start + len)
            - start;
        let bytes = Bytes::from(read_range(repo, key, start, read).await?);
        let mut w = self.window.lock().expect("map window");
        *w = Some((e.pack, start, bytes));
        Ok(held(&w).expect("the read holds the map"))
    }

    /// The base's map of `path`, if it has one.
    async fn map(&self, repo: &Repo, path: &str) -> Result<Option<FileMap>> {
        let Some(e) = self.index.get(path) else {
            return Ok(None);
        };
        let b = &self.record;
        let index = || layout::map_index_key(b.content_id, &b.name, &self.archive);
        if let Some(map) = &e.map {
            map.check(b.chain.len())
                .map_err(|m| base_damaged(b, Error::Integrity(format!("{}: {m}", index()))))?;
            if map.path != path || map.kind != Kind::File {
                return Err(base_damaged(
                    b,
                    Error::Integrity(format!("{}: a map of another file", index())),
                ));
            }
            return Ok(Some(map.clone()));
        }
        let key = layout::map_pack_key(b.content_id, &b.name, &self.archive, e.pack);
        let bytes = self
            .map_bytes(repo, &key, e)
            .await
            .map_err(|e| base_damaged(b, e))?;
        let (repo2, key2, seq) = (repo.clone(), key.clone(), e.seq);
        let map = tokio::task::spawn_blocking(move || decode_map(&repo2, &key2, seq, bytes))
            .await
            .map_err(|e| Error::Internal(format!("map decoder: {e}")))?
            .map_err(|e| base_damaged(b, e))?;
        map.check(b.chain.len())
            .map_err(|m| base_damaged(b, Error::Integrity(format!("{key}: {m}"))))?;
        if map.path != path || map.kind != Kind::File {
            return Err(base_damaged(
                b,
                Error::Integrity(format!("{key}: the index points at another file's map")),
            ));
        }
        Ok(Some(map))
    }
}

fn base_damaged(base: &BackupRecord, e: Error) -> Error {
    match e {
        Error::Storage(StorageError::NotFound { key, .. }) => Error::Integrity(format!(
            "the base backup {} is damaged: {key} is missing; take a full backup (`backup-push --full`)",
            base.name
        )),
        Error::Storage(s) => Error::Storage(s),
        other => Error::Integrity(format!(
            "the base backup {} is damaged: {other}; take a full backup (`backup-push --full`)",
            base.name
        )),
    }
}

enum Msg {
    /// The plain bytes of the next extent of the current file.
    Extent(Vec<u8>),
    /// A finished entry (its pending runs refer to the extents sent since
    /// the previous entry).
    Entry(FileMap),
    /// Everything was sent.
    End,
}

/// What the writer stored for an archive.
struct Stored {
    block_packs: u32,
    map_packs: u32,
    stored: u64,
}

struct CurrentFile {
    path: String,
    size: u64,
    got: u64,
    block: Vec<u8>,
    index: u64,
    base: Option<FileMap>,
    runs: Vec<Run>,
    hashes: Vec<Hash>,
    extent: Vec<u8>,
    extent_blocks: u32,
    extent_seq: u32,
    extent_chunk: u64,
}

enum Body {
    /// Between entries.
    None,
    File(Box<CurrentFile>),
    /// A GNU long name or pax header's data, for the next entry.
    Ext {
        pax: bool,
        left: u64,
        data: Vec<u8>,
    },
    /// Data of an entry that is not kept (global pax header...).
    Skip {
        left: u64,
    },
}

/// One archive being received in the block format.
pub struct BlockArchive {
    repo: Repo,
    pub record: ArchiveRecord,
    splitter: TarSplitter,
    body: Body,
    long_path: Option<String>,
    base: Option<BaseArchive>,
    tx: mpsc::Sender<Msg>,
    writer: Option<JoinHandle<Result<Stored>>>,
    /// New blocks and blocks taken from the base (for the log).
    pub new_blocks: u64,
    pub base_blocks: u64,
}

impl BlockArchive {
    pub fn start(
        repo: &Repo,
        content_id: i32,
        backup: &str,
        archive: String,
        tablespace_path: Option<String>,
        base: Option<BaseArchive>,
    ) -> BlockArchive {
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer_repo = repo.clone();
        let (backup_name, archive_name) = (backup.to_string(), archive.clone());
        let handle = tokio::runtime::Handle::current();
        let writer = tokio::task::spawn_blocking(move || {
            write_archive(
                writer_repo,
                content_id,
                backup_name,
                archive_name,
                rx,
                handle,
            )
        });
        BlockArchive {
            repo: repo.clone(),
            record: ArchiveRecord {
                name: archive,
                tablespace_path,
                parts: 0,
                plain_bytes: 0,
                stored_bytes: 0,
                server_compression: None,
                map_parts: 0,
            },
            splitter: TarSplitter::new(0),
            body: Body::None,
            long_path: None,
            base,
            tx,
            writer: Some(writer),
            new_blocks: 0,
            base_blocks: 0,
        }
    }

    /// Takes bytes of the archive's tar stream.
    pub async fn write(&mut self, mut data: Bytes) -> Result<()> {
        while !data.is_empty() {
            let step = self
                .splitter
                .next(&mut data)
                .map_err(|e| Error::Server(format!("the server's tar stream: {e}")))?;
            match step {
                None => {}
                Some(Step::Header(h)) => self.header(&h).await?,
                Some(Step::Pass(bytes)) => self.body(bytes).await?,
            }
        }
        Ok(())
    }

    async fn header(&mut self, block: &[u8]) -> Result<()> {
        if block.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let bad = |what: String| Error::Server(format!("the server's tar stream: {what}"));
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(&block[..512]);
        let size = h.entry_size().map_err(|e| bad(format!("bad size: {e}")))?;
        let kind = h.entry_type();
        let path = match self.long_path.take() {
            Some(p) => p,
            None => h
                .path()
                .map_err(|e| bad(format!("bad file name: {e}")))?
                .to_string_lossy()
                .into_owned(),
        };
        let path = path.trim_end_matches('/').to_string();
        let entry = |kind, link| FileMap {
            path: path.clone(),
            kind,
            size: 0,
            link,
            runs: Vec::new(),
            hashes: Vec::new(),
        };
        match kind {
            tar::EntryType::GNULongName | tar::EntryType::XHeader => {
                self.body = Body::Ext {
                    pax: kind == tar::EntryType::XHeader,
                    left: size,
                    data: Vec::new(),
                };
            }
            tar::EntryType::Directory => self.send(Msg::Entry(entry(Kind::Dir, None))).await?,
            tar::EntryType::Symlink => {
                let link = h
                    .link_name()
                    .map_err(|e| bad(format!("bad link of {path}: {e}")))?
                    .map(|l| l.to_string_lossy().into_owned())
                    .ok_or_else(|| bad(format!("link {path} without a target")))?;
                self.send(Msg::Entry(entry(Kind::Link, Some(link)))).await?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let base = match &self.base {
                    Some(b) if size > 0 => b.map(&self.repo, &path).await?,
                    _ => None,
                };
                self.record.plain_bytes += size;
                self.body = Body::File(Box::new(CurrentFile {
                    path,
                    size,
                    got: 0,
                    block: Vec::with_capacity(BLOCK_SIZE),
                    index: 0,
                    base,
                    runs: Vec::new(),
                    hashes: Vec::new(),
                    extent: Vec::new(),
                    extent_blocks: 0,
                    extent_seq: 0,
                    extent_chunk: 0,
                }));
                if size == 0 {
                    self.end_file().await?;
                }
            }
            other => {
                tracing::debug!("skipping the tar entry {path} of type {other:?}");
                self.body = Body::Skip { left: size };
            }
        }
        Ok(())
    }

    async fn body(&mut self, bytes: Bytes) -> Result<()> {
        match &mut self.body {
            Body::None => Ok(()), // padding
            Body::Skip { left } => {
                *left = left.saturating_sub(bytes.len() as u64);
                if *left == 0 {
                    self.body = Body::None;
                }
                Ok(())
            }
            Body::Ext { pax, left, data } => {
                let take = (*left).min(bytes.len() as u64) as usize;
                data.extend_from_slice(&bytes[..take]);
                *left -= take as u64;
                if *left == 0 {
                    let path = if *pax {
                        pax_path(data)
                    } else {
                        Some(
                            String::from_utf8_lossy(data)
                                .trim_end_matches('\0')
                                .to_string(),
                        )
                    };
                    self.long_path = path;
                    self.body = Body::None;
                }
                Ok(())
            }
            Body::File(_) => self.file_data(bytes).await,
        }
    }

    async fn file_data(&mut self, mut rest: Bytes) -> Result<()> {
        loop {
            let Body::File(f) = &mut self.body else {
                // The padding after the file's end.
                return Ok(());
            };
            let take =
                ((f.size - f.got).min(rest.len() as u64) as usize).min(BLOCK_SIZE - f.block.len());
            if take == 0 {
                return Ok(());
            }
            f.block.extend_from_slice(&rest.split_to(take));
            f.got += take as u64;
            if f.got == f.size {
                self.end_file().await?;
            } else if f.block.len() == BLOCK_SIZE {
                self.block().await?;
            }
        }
    }

    /// The current file's block is complete (or is its last).
    async fn block(&mut self) -> Result<()> {
        let Body::File(f) = &mut self.body else {
            return Ok(());
        };
        let data = std::mem::replace(&mut f.block, Vec::with_capacity(BLOCK_SIZE));
        let h = hash(&data);
        let i = f.index;
        f.index += 1;
        f.hashes.push(h);
        let reuse = f
            .base
            .as_ref()
            .filter(|b| b.hashes.get(i as usize) == Some(&h))
            .and_then(|b| b.locate(i));
        if let Some((mut extent, at)) = reuse {
            extent.backup += 1;
            push_run(&mut f.runs, extent, at, i);
            self.base_blocks += 1;
            return Ok(());
        }
        self.new_blocks += 1;
        let chunk = i / CHUNK_BLOCKS;
        if f.extent_blocks > 0
            && (f.extent_blocks as usize == EXTENT_BLOCKS || chunk != f.extent_chunk)
        {
            let extent = std::mem::take(&mut f.extent);
            f.extent_blocks = 0;
            f.extent_seq += 1;
            self.send(Msg::Extent(extent)).await?;
        }
        let Body::File(f) = &mut self.body else {
            unreachable!("still the file")
        };
        if f.extent_blocks == 0 {
            f.extent_chunk = chunk;
        }
        let pending = ExtentRef {
            backup: PENDING,
            pack: 0,
            offset: 0,
            seq: f.extent_seq,
            len: 0,
        };
        push_run(&mut f.runs, pending, f.extent_blocks, i);
        f.extent.extend_from_slice(&data);
        f.extent_blocks += 1;
        Ok(())
    }

    async fn end_file(&mut self) -> Result<()> {
        if matches!(&self.body, Body::File(f) if !f.block.is_empty()) {
            self.block().await?;
        }
        let Body::File(f) = std::mem::replace(&mut self.body, Body::None) else {
            return Ok(());
        };
        let mut f = *f;
        if f.extent_blocks > 0 {
            self.send(Msg::Extent(std::mem::take(&mut f.extent)))
                .await?;
        }
        self.send(Msg::Entry(FileMap {
            path: f.path,
            kind: Kind::File,
            size: f.size,
            link: None,
            runs: f.runs,
            hashes: f.hashes,
        }))
        .await
    }

    async fn send(&mut self, msg: Msg) -> Result<()> {
        if self.tx.send(msg).await.is_ok() {
            return Ok(());
        }
        // The writer stopped: its error says why.
        Err(match self.writer.take() {
            Some(w) => match w.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => Error::Internal("the block writer stopped early".into()),
                Err(e) => Error::Internal(format!("block writer: {e}")),
            },
            None => Error::Internal("the block writer stopped early".into()),
        })
    }

    /// Ends the archive once the writer stored everything.
    pub async fn finish(mut self) -> Result<ArchiveRecord> {
        if !matches!(self.body, Body::None) || self.long_path.is_some() {
            return Err(Error::Server(
                "the server's tar stream ended inside an entry".into(),
            ));
        }
        self.send(Msg::End).await?;
        let stored = self
            .writer
            .take()
            .expect("present until finished")
            .await
            .map_err(|e| Error::Internal(format!("block writer: {e}")))??;
        tracing::debug!(
            "archive {}: {} blocks stored, {} taken from the base",
            self.record.name,
            self.new_blocks,
            self.base_blocks
        );
        self.record.parts = stored.block_packs;
        self.record.map_parts = stored.map_packs;
        self.record.stored_bytes = stored.stored;
        Ok(self.record)
    }

    /// Stops the writer and waits for it (nothing it stored is complete).
    pub async fn abort(mut self) {
        drop(self.tx);
        if let Some(w) = self.writer.take() {
            let _ = w.await;
        }
    }
}

/// Extends the last run when block `i` follows it in the same extent.
fn push_run(runs: &mut Vec<Run>, extent: ExtentRef, at: u32, i: u64) {
    if let Some(last) = runs.last_mut() {
        if last.extent == extent
            && last.at + last.count == at
            && last.first + last.count as u64 == i
        {
            last.count += 1;
            return;
        }
    }
    runs.push(Run {
        extent,
        at,
        first: i,
        count: 1,
    });
}

/// The `path` record of a pax header's data.
fn pax_path(data: &[u8]) -> Option<String> {
    let mut path = None;
    for ext in tar::PaxExtensions::new(data).flatten() {
        if ext.key() == Ok("path") {
            path = ext.value().ok().map(str::to_string);
        }
    }
    path
}

/// Packs of one kind being written by the writer thread.
struct PackWriter {
    repo: Repo,
    handle: tokio::runtime::Handle,
    key_of: Box<dyn Fn(u32) -> String + Send>,
    pack: u32,
    seq: u32,
    buf: Vec<u8>,
    uploads: VecDeque<JoinHandle<std::result::Result<u64, StorageError>>>,
    stored: u64,
    /// [`PackWriter::reserve`]: the place of the next object, and the plain
    /// bytes reserved in its pack.
    next: (u32, u32),
    reserved: usize,
}

impl PackWriter {
    fn new(
        repo: &Repo,
        handle: &tokio::runtime::Handle,
        key_of: Box<dyn Fn(u32) -> String + Send>,
    ) -> PackWriter {
        PackWriter {
            repo: repo.clone(),
            handle: handle.clone(),
            key_of,
            pack: 0,
            seq: 0,
            buf: Vec::new(),
            uploads: VecDeque::new(),
            stored: 0,
            next: (0, 0),
            reserved: 0,
        }
    }

    /// The place (pack, seq) and name of the next object of `plain_len`
    /// plain bytes, to encode it before it is appended (a pack holds about
    /// [`PACK_TARGET`] plain bytes).
    fn reserve(&mut self, plain_len: usize) -> (u32, u32, String) {
        if self.next.1 > 0 && self.reserved + plain_len > PACK_TARGET {
            self.next = (self.next.0 + 1, 0);
            self.reserved = 0;
        }
        let (pack, seq) = self.next;
        self.next.1 += 1;
        self.reserved += plain_len;
        (pack, seq, object_name(&(self.key_of)(pack), seq))
    }

    /// Appends an object encoded at the place [`PackWriter::reserve`] gave.
    fn append(&mut self, pack: u32, seq: u32, object: Vec<u8>) -> Result<ExtentRef> {
        if pack != self.pack {
            self.flush()?;
        }
        if (pack, seq) != (self.pack, self.seq) {
            return Err(Error::Internal(format!(
                "an extent out of order: {pack}/{seq}, expected {}/{}",
                self.pack, self.seq
            )));
        }
        let len = u32::try_from(object.len())
            .map_err(|_| Error::Internal("an extent larger than 4 GiB".into()))?;
        self.buf.extend_from_slice(&len.to_le_bytes());
        let at = ExtentRef {
            backup: 0,
            pack,
            offset: self.buf.len() as u64,
            seq,
            len,
        };
        self.buf.extend_from_slice(&object);
        self.seq += 1;
        Ok(at)
    }

    /// Encodes an object into the current pack; returns where it lies.
    fn add(&mut self, plain: &[u8]) -> Result<ExtentRef> {
        let key = (self.key_of)(self.pack);
        let object = self
            .repo
            .codec
            .encode(&object_name(&key, self.seq), plain)?;
        let len = u32::try_from(object.len())
            .map_err(|_| Error::Internal("an extent larger than 4 GiB".into()))?;
        self.buf.extend_from_slice(&len.to_le_bytes());
        let at = ExtentRef {
            backup: 0,
            pack: self.pack,
            offset: self.buf.len() as u64,
            seq: self.seq,
            len,
        };
        self.buf.extend_from_slice(&object);
        self.seq += 1;
        if self.buf.len() >= PACK_TARGET {
            self.flush()?;
        }
        Ok(at)
    }

    /// Uploads the current pack, if it holds anything.
    fn flush(&mut self) -> Result<()> {
        if self.seq == 0 {
            return Ok(());
        }
        let key = (self.key_of)(self.pack);
        let body = std::mem::take(&mut self.buf);
        let storage = self.repo.storage.clone();
        crate::fault::point("backup-part");
        self.uploads.push_back(self.handle.spawn(async move {
            storage
                .put(&key, crate::storage::body_from_bytes(body))
                .await
        }));
        self.pack += 1;
        self.seq = 0;
        while self.uploads.len() > UPLOADS {
            self.join_one()?;
        }
        Ok(())
    }

    fn join_one(&mut self) -> Result<()> {
        if let Some(u) = self.uploads.pop_front() {
            self.stored += self
                .handle
                .block_on(u)
                .map_err(|e| Error::Internal(format!("pack upload: {e}")))??;
        }
        Ok(())
    }

    /// Stores the last pack; returns the packs written.
    fn finish(&mut self) -> Result<u32> {
        self.flush()?;
        while !self.uploads.is_empty() {
            self.join_one()?;
        }
        Ok(self.pack)
    }

    /// Waits for the uploads in flight (after a failure).
    fn drain(&mut self) {
        while let Some(u) = self.uploads.pop_front() {
            let _ = self.handle.block_on(u);
        }
    }
}

/// The writer thread of one archive: extents into block packs, maps into
/// map packs, then the index of the large files' maps.
fn write_archive(
    repo: Repo,
    content_id: i32,
    backup: String,
    archive: String,
    mut rx: mpsc::Receiver<Msg>,
    handle: tokio::runtime::Handle,
) -> Result<Stored> {
    let (b, a) = (backup.clone(), archive.clone());
    let mut blocks = PackWriter::new(
        &repo,
        &handle,
        Box::new(move |n| layout::block_pack_key(content_id, &b, &a, n)),
    );
    let (b, a) = (backup.clone(), archive.clone());
    let mut maps = PackWriter::new(
        &repo,
        &handle,
        Box::new(move |n| layout::map_pack_key(content_id, &b, &a, n)),
    );
    /// An extent being encoded, or an entry waiting for its extents.
    enum Pending {
        Extent(u32, u32, JoinHandle<Result<Vec<u8>>>),
        Entry(FileMap),
    }
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let r = (|| -> Result<Stored> {
        let mut index = Vec::new();
        let mut extents: Vec<ExtentRef> = Vec::new();
        let mut ended = false;
        loop {
            if !ended {
                match rx.blocking_recv() {
                    None => {
                        return Err(Error::io(
                            format!("writing archive {archive} of backup {backup}"),
                            std::io::Error::other("the backup was interrupted"),
                        ))
                    }
                    Some(Msg::End) => ended = true,
                    Some(Msg::Extent(data)) => {
                        let (pack, seq, name) = blocks.reserve(data.len());
                        let codec = repo.codec.clone();
                        let job = handle.spawn_blocking(move || -> Result<Vec<u8>> {
                            Ok(codec.encode(&name, &data)?)
                        });
                        pending.push_back(Pending::Extent(pack, seq, job));
                    }
                    Some(Msg::Entry(map)) => pending.push_back(Pending::Entry(map)),
                }
            }
            // The oldest pending item is completed when it is an entry
            // (its extents are all appended), when too many extents are
            // being encoded, or at the end.
            while let Some(front) = pending.front() {
                let ready = ended || pending.len() > ENCODING || matches!(front, Pending::Entry(_));
                if !ready {
                    break;
                }
                match pending.pop_front().expect("present") {
                    Pending::Extent(pack, seq, job) => {
                        let object = handle
                            .block_on(job)
                            .map_err(|e| Error::Internal(format!("extent encoder: {e}")))??;
                        extents.push(blocks.append(pack, seq, object)?);
                    }
                    Pending::Entry(map) => {
                        let map = resolve(map, &extents)?;
                        extents.clear();
                        let at = maps.add(&encode_map(&map))?;
                        if map.kind == Kind::File && map.size > 0 {
                            let small = map.size <= SMALL_FILE;
                            index.push(IndexEntry {
                                path: map.path.clone(),
                                pack: at.pack,
                                seq: at.seq,
                                offset: at.offset,
                                len: at.len,
                                map: small.then_some(map),
                            });
                        }
                    }
                }
            }
            if ended && pending.is_empty() {
                break;
            }
        }
        let block_packs = blocks.finish()?;
        let map_packs = maps.finish()?;
        let key = layout::map_index_key(content_id, &backup, &archive);
        let json = serde_json::to_vec(&index).expect("index serializes");
        let index_stored = handle.block_on(repo.put_bytes(&key, json))?.stored;
        Ok(Stored {
            block_packs,
            map_packs,
            stored: blocks.stored + maps.stored + index_stored,
        })
    })();
    if r.is_err() {
        for p in pending {
            if let Pending::Extent(_, _, job) = p {
                let _ = handle.block_on(job);
            }
        }
        blocks.drain();
        maps.drain();
    }
    r
}

/// The entry's runs with the extents of this backup it refers to.
fn resolve(mut map: FileMap, extents: &[ExtentRef]) -> Result<FileMap> {
    for r in &mut map.runs {
        if r.extent.backup == PENDING {
            r.extent = *extents
                .get(r.extent.seq as usize)
                .ok_or_else(|| Error::Internal(format!("{}: an extent was not sent", map.path)))?;
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Codec, Compression};
    use crate::pg::{Lsn, TimelineId};

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        h.set_mode(0o700);
        h.set_cksum();
        b.append_data(&mut h, "base", &[][..]).unwrap();
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn record(name: &str, archive: ArchiveRecord, chain: Vec<String>) -> BackupRecord {
        BackupRecord {
            format: BLOCK_FORMAT,
            name: name.into(),
            content_id: -1,
            start_lsn: Lsn(0),
            stop_lsn: Lsn(0),
            timeline: TimelineId(1),
            stop_timeline: TimelineId(1),
            start_time: chrono::Utc::now(),
            stop_time: chrono::Utc::now(),
            server_version: 150000,
            system_identifier: "1".into(),
            wal_segment_size: 16 << 20,
            archives: vec![archive],
            compression: "lz4".into(),
            encrypted: false,
            manifest_bytes: 0,
            base: chain.get(1).cloned(),
            chain,
            permanent: false,
        }
    }

    /// Receives `tar` as backup `name` (a delta of `base`); returns its
    /// record and (new blocks, blocks taken from the base).
    async fn take(
        repo: &Repo,
        name: &str,
        tar: &[u8],
        base: Option<&BackupRecord>,
    ) -> (BackupRecord, u64, u64) {
        let base_archive = match base {
            Some(b) => BaseArchive::load(repo, b, "base").await.unwrap(),
            None => None,
        };
        let mut a = BlockArchive::start(repo, -1, name, "base".into(), None, base_archive);
        for piece in tar.chunks(1000) {
            a.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        let (new, old) = (a.new_blocks, a.base_blocks);
        let archive = a.finish().await.unwrap();
        let mut chain = vec![name.to_string()];
        chain.extend(base.iter().flat_map(|b| b.chain.clone()));
        (record(name, archive, chain), new, old)
    }

    /// Every file of a backup rebuilt from its maps and the extents they
    /// point at, in any backup of its chain.
    async fn rebuild(repo: &Repo, chain: &[&BackupRecord]) -> Vec<(String, Vec<u8>)> {
        let b = chain[0];
        let mut out = Vec::new();
        for n in 0..b.archives[0].map_parts {
            let key = layout::map_pack_key(-1, &b.name, "base", n);
            let pack = crate::storage::get_bytes(repo.storage.as_ref(), &key)
                .await
                .unwrap();
            for (seq, _, range) in pack_objects(&key, &pack).unwrap() {
                let map = decode_map(repo, &key, seq, pack[range].to_vec()).unwrap();
                map.check(chain.len()).unwrap();
                if map.kind != Kind::File {
                    continue;
                }
                let mut data = vec![0u8; map.size as usize];
                for i in 0..block_count(map.size) {
                    let (e, at) = map.locate(i).unwrap();
                    let owner = chain[e.backup as usize];
                    let pack_key = layout::block_pack_key(-1, &owner.name, "base", e.pack);
                    let bytes = read_range(repo, &pack_key, e.offset, e.len as u64)
                        .await
                        .unwrap();
                    let plain = repo
                        .codec
                        .decode(&object_name(&pack_key, e.seq), bytes)
                        .unwrap();
                    let len = block_len(map.size, i);
                    let block = &plain[at as usize * BLOCK_SIZE..][..len];
                    assert_eq!(hash(block), map.hashes[i as usize], "{}: {i}", map.path);
                    data[i as usize * BLOCK_SIZE..][..len].copy_from_slice(block);
                }
                out.push((map.path, data));
            }
        }
        out
    }

    #[tokio::test]
    async fn base_maps_are_read_ahead_within_their_pack() {
        let dir = tempfile::tempdir().unwrap();
        let storage = std::sync::Arc::new(crate::storage::FsStorage::new(dir.path()).unwrap());
        let repo = Repo::new(storage, Codec::new(Compression::Lz4, None, None));
        let pack: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
        let key = "pack";
        repo.storage
            .put(key, crate::storage::body_from_bytes(pack.clone()))
            .await
            .unwrap();
        let entry = |path: &str, offset: u64, len: u32| IndexEntry {
            path: path.into(),
            pack: 0,
            seq: 0,
            offset,
            len,
            map: None,
        };
        let entries = [
            entry("a", 10, 100),
            entry("b", 1000, 200),
            entry("c", 3 << 20, 50),
            entry("d", (5 << 20) - 10, 10),
        ];
        let archive = ArchiveRecord {
            name: "base".into(),
            tablespace_path: None,
            parts: 0,
            plain_bytes: 0,
            stored_bytes: 0,
            server_compression: None,
            map_parts: 1,
        };
        let base = BaseArchive {
            record: record("b", archive, vec!["b".into()]),
            archive: "base".into(),
            index: HashMap::new(),
            pack_ends: HashMap::from([(0, 5 << 20)]),
            window: std::sync::Mutex::new(None),
        };
        let want =
            |e: &IndexEntry| pack[e.offset as usize..(e.offset + e.len as u64) as usize].to_vec();
        assert_eq!(
            base.map_bytes(&repo, key, &entries[0]).await.unwrap(),
            want(&entries[0])
        );
        // The pack is gone: the next map is served from the read ahead.
        repo.storage.delete(key).await.unwrap();
        assert_eq!(
            base.map_bytes(&repo, key, &entries[1]).await.unwrap(),
            want(&entries[1])
        );
        assert_eq!(
            base.map_bytes(&repo, key, &entries[0]).await.unwrap(),
            want(&entries[0])
        );
        // Beyond the window: a new read (which fails now, naming the pack).
        let e = base.map_bytes(&repo, key, &entries[2]).await.unwrap_err();
        assert!(e.to_string().contains(key), "{e}");
        // A read near the pack's end stops at it.
        repo.storage
            .put(key, crate::storage::body_from_bytes(pack.clone()))
            .await
            .unwrap();
        assert_eq!(
            base.map_bytes(&repo, key, &entries[2]).await.unwrap(),
            want(&entries[2])
        );
        assert_eq!(
            base.map_bytes(&repo, key, &entries[3]).await.unwrap(),
            want(&entries[3])
        );
        let w = base.window.lock().unwrap();
        let (_, at, bytes) = w.as_ref().unwrap();
        assert!(at + bytes.len() as u64 <= 5 << 20);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delta_stores_the_blocks_whose_content_changed() {
        let dir = tempfile::tempdir().unwrap();
        let storage = std::sync::Arc::new(crate::storage::FsStorage::new(dir.path()).unwrap());
        let repo = Repo::new(storage, Codec::new(Compression::Lz4, None, None));
        // 10 distinct blocks and 100 bytes; a small file of 2 blocks; one
        // that will shrink; pg_control.
        let blocks = |n: u8, seed: u8| -> Vec<u8> {
            (0..n)
                .flat_map(|i| vec![i.wrapping_mul(31).wrapping_add(seed); BLOCK_SIZE])
                .collect()
        };
        let mut big = blocks(10, 1);
        big.extend_from_slice(&[7u8; 100]);
        let small = blocks(2, 50);
        let shrink = blocks(8, 90);
        let control = vec![3u8; 8192];
        let t1 = tar_of(&[
            ("base/big", &big),
            ("base/small", &small),
            ("base/shrink", &shrink),
            ("base/empty", &[]),
            ("global/pg_control", &control),
        ]);
        let (full, new, old) = take(&repo, "b1", &t1, None).await;
        assert_eq!((new, old), (11 + 2 + 8 + 1, 0));

        // Block 3 changed, the partial last block grew by appending; the
        // small file is the same; `shrink` lost its last 3 blocks; a new
        // file; `empty` dropped.
        let mut big2 = big.clone();
        big2[3 * BLOCK_SIZE + 17] ^= 1;
        big2.extend_from_slice(&[8u8; 5000]);
        let shrink2 = shrink[..5 * BLOCK_SIZE].to_vec();
        let new_file = blocks(1, 200);
        let t2 = tar_of(&[
            ("base/big", &big2),
            ("base/small", &small),
            ("base/shrink", &shrink2),
            ("base/new", &new_file),
            ("global/pg_control", &control),
        ]);
        let (d1, new, old) = take(&repo, "b2", &t2, Some(&full)).await;
        // big: block 3 and the grown last block; new: 1 block.
        assert_eq!((new, old), (3, 9 + 2 + 5 + 1));
        assert!(d1.archives[0].stored_bytes < full.archives[0].stored_bytes);

        // A delta of the delta: only the small file changes.
        let mut small3 = small.clone();
        small3[0] ^= 1;
        let t3 = tar_of(&[
            ("base/big", &big2),
            ("base/small", &small3),
            ("base/shrink", &shrink2),
            ("base/new", &new_file),
            ("global/pg_control", &control),
        ]);
        let (d2, new, old) = take(&repo, "b3", &t3, Some(&d1)).await;
        assert_eq!((new, old), (1, 11 + 1 + 5 + 1 + 1));

        let want = |files: &[(&str, &Vec<u8>)]| -> Vec<(String, Vec<u8>)> {
            files
                .iter()
                .map(|(n, d)| (n.to_string(), (*d).clone()))
                .collect()
        };
        let empty = Vec::new();
        assert_eq!(
            rebuild(&repo, &[&full]).await,
            want(&[
                ("base/big", &big),
                ("base/small", &small),
                ("base/shrink", &shrink),
                ("base/empty", &empty),
                ("global/pg_control", &control)
            ])
        );
        assert_eq!(
            rebuild(&repo, &[&d2, &d1, &full]).await,
            want(&[
                ("base/big", &big2),
                ("base/small", &small3),
                ("base/shrink", &shrink2),
                ("base/new", &new_file),
                ("global/pg_control", &control)
            ])
        );
    }
}
