//! `backup-push`: a base backup over the replication protocol, streamed
//! through the codec into the repository.
//!
//! The server's tar streams (the data directory and each tablespace) are cut
//! between entries into parts of about `PART_TARGET` plain bytes, each a
//! valid tar, encoded and uploaded while the next part is received (up to
//! `PARTS_IN_FLIGHT` at once). Files larger than `PART_TARGET` are cut into
//! pieces of that size (see [`super::tar_split`]), so that a 1 GB relation
//! segment is encoded on every core, and restored on every core. The server's backup manifest is kept. The
//! backup's record (`backup.json`) is written last, after every part and
//! after the WAL from start to stop LSN is in the archive: without it the
//! backup does not exist for `list` or `restore`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::progress::{report, Progress};
use super::tar_split::{Step, TarSplitter};
use crate::codec::{Codec, Compression};
pub use crate::config::CompressOn;
use crate::error::{Error, PgResultExt, Result};
use crate::pg::conn::{BackendMessage, ConnParams, PgConn, Replication};
use crate::pg::{Lsn, TimelineId, WalFile, WalSegmentName};
use crate::repo::catalog::{ArchiveRecord, BackupRecord};
use crate::repo::{layout, Repo, TransferStats};
use crate::task::AbortOnDrop;

/// The newest backup format this cbdr reads: 3 = some archive is a
/// stream the server compressed, cut into parts anywhere (see
/// [`super::compress_on`]); 2 = files larger than a part may be cut into
/// pieces (see [`super::tar_split`]); 1 = every file whole. A backup is
/// written with the oldest format that describes it.
pub const BACKUP_FORMAT: u32 = 3;
/// The format of a backup whose archives cbdr compressed.
const FORMAT_PIECES: u32 = 2;

/// Plain bytes per part before it is cut at the next file boundary.
pub const PART_TARGET: u64 = 16 * 1024 * 1024;
/// A part of a stream the server compressed holds `PART_TARGET /
/// STREAM_PART_DIVISOR` compressed bytes: its restore holds a few parts
/// decrypted ahead of the decoder, and each already holds several times
/// more data than a part of plain tar.
const STREAM_PART_DIVISOR: u64 = 2;
/// Bytes handed to a part's encoder at once: PostgreSQL sends ~32 KiB
/// messages, and waking the encoder for each costs more than encoding it.
const BATCH: usize = 1024 * 1024;
/// Batches a part may hold queued for its encoder: about a whole part, so
/// the receiver moves on to the next part while this one is still encoded,
/// and the parts in flight use every core.
const PART_QUEUE: usize = 20;
/// Parts received and encoded at once.
pub const PARTS_IN_FLIGHT: usize = 3;
/// Parts not yet stored at once: encoded parts whose storage is still
/// writing or syncing them no longer hold an encoding slot, so a slow
/// fsync does not stall the stream.
const PARTS_STORING: usize = 2 * PARTS_IN_FLIGHT;

#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub content_id: i32,
    pub conn: ConnParams,
    /// How long to wait for the backup's WAL to reach the archive.
    pub wal_wait: Duration,
    pub part_target: u64,
    /// Where the backup is compressed.
    pub compress_on: CompressOn,
    /// Bytes received and the phase, for callers that report progress.
    pub progress: Option<Arc<Progress>>,
}

/// Takes a base backup; returns its record once it is complete.
pub async fn backup_push(repo: &Repo, opts: &BackupOptions) -> Result<BackupRecord> {
    report(&opts.progress, |p| p.set_phase("connecting"));
    repo.prepare_write().await?;
    let mut conn = PgConn::connect(&opts.conn, Replication::Physical)
        .await
        .context("connecting for a base backup")?;
    let version = conn.server_version_num();
    if version < 130000 {
        return Err(Error::Usage(format!(
            "PostgreSQL {} is too old: cbdr backs up PostgreSQL 13 and later (Cloudberry, Greenplum 7)",
            version / 10000
        )));
    }
    let ident = conn
        .query_one("IDENTIFY_SYSTEM")
        .await
        .context("IDENTIFY_SYSTEM")?;
    let system_identifier = ident
        .get_str("systemid")
        .context("IDENTIFY_SYSTEM")?
        .to_string();
    let segment_size = parse_size_setting(
        conn.query_one("SHOW wal_segment_size")
            .await
            .and_then(|r| r.get_str("wal_segment_size").map(str::to_string))
            .context("SHOW wal_segment_size")?
            .as_str(),
    )?;

    let server_compression = super::compress_on::server_compression(
        repo,
        &opts.conn,
        opts.content_id,
        opts.compress_on,
        version,
    )
    .await?;

    // Unique by construction: see new_backup_name.
    let name = crate::repo::catalog::new_backup_name("base");
    tracing::info!("backup {name}: starting (PostgreSQL {version}, system {system_identifier})");
    let start_time = Utc::now();
    let label = format!("cbdr {name}");
    let compression = match server_compression {
        Some(Compression::Zstd) => Some(format!(
            "COMPRESSION 'zstd', COMPRESSION_DETAIL 'level={}'",
            repo.codec.level
        )),
        Some(m) => Some(format!("COMPRESSION '{m}'")),
        None => None,
    };
    // Greenplum/Cloudberry have gp_dbid; plain PostgreSQL refuses the SHOW.
    let greenplum = version < 150000 && conn.query_one("SHOW gp_dbid").await.is_ok();
    let command = crate::pg::replication::base_backup_command(
        &label,
        version,
        compression.as_deref(),
        greenplum,
    );
    conn.send_query(&command)
        .await
        .context("starting BASE_BACKUP")?;

    let mut stream = BackupStream::new(
        repo.clone(),
        opts.content_id,
        name.clone(),
        opts.part_target,
    );
    stream.server_compression = server_compression;
    stream.progress = opts.progress.clone();
    report(&opts.progress, |p| p.set_phase("streaming"));
    // The receiver runs as a task of its own: on a runtime worker, where
    // the socket's readiness is seen, rather than on the caller's thread,
    // which every message would have to wake.
    let mut receiver = AbortOnDrop(tokio::spawn(async move {
        let result = stream.run(&mut conn, version >= 150000).await;
        (stream, conn, result)
    }));
    let (mut stream, conn, result) = (&mut receiver.0)
        .await
        .map_err(|e| Error::Internal(format!("backup receiver task: {e}")))?;
    let (start, stop, archives, manifest_bytes) = match result {
        Ok(r) => r,
        Err(e) => {
            stream.abort().await;
            discard(repo, opts.content_id, &name).await;
            return Err(e);
        }
    };
    conn.close().await;
    let stop_time = Utc::now();
    tracing::debug!(
        "backup {name}: every part stored after {:.2}s; waiting for the WAL up to {}",
        (stop_time - start_time).as_seconds_f64(),
        stop.0
    );

    report(&opts.progress, |p| p.set_phase("waiting for WAL"));
    if let Err(e) = wait_for_wal(
        repo,
        opts.content_id,
        start,
        stop,
        segment_size,
        opts.wal_wait,
    )
    .await
    {
        discard(repo, opts.content_id, &name).await;
        return Err(e);
    }

    let mut record = BackupRecord {
        format: FORMAT_PIECES,
        name: name.clone(),
        content_id: opts.content_id,
        start_lsn: start.0,
        stop_lsn: stop.0,
        timeline: start.1,
        stop_timeline: stop.1,
        start_time,
        stop_time,
        server_version: version,
        system_identifier,
        wal_segment_size: segment_size,
        archives,
        compression: repo.codec.compression.name().to_string(),
        encrypted: repo.codec.key.is_some(),
        manifest_bytes,
        base: None,
        permanent: false,
    };
    if record.server_compressed() {
        record.format = BACKUP_FORMAT;
    }
    crate::fault::point("backup-record");
    if let Err(e) = repo
        .put_json(&layout::backup_record_key(opts.content_id, &name), &record)
        .await
    {
        discard(repo, opts.content_id, &name).await;
        return Err(e);
    }
    tracing::debug!(
        "backup {name}: WAL archived and record written after {:.2}s",
        (Utc::now() - start_time).as_seconds_f64()
    );
    tracing::info!(
        "backup {name}: complete, {} bytes stored as {} ({}..{})",
        record.plain_bytes(),
        record.stored_bytes(),
        record.start_lsn,
        record.stop_lsn
    );
    Ok(record)
}

/// Removes what a failed backup stored (its parts and manifest; it has no
/// record, so it was never listed), best effort: dead parts would keep a
/// full repository full. What cannot be removed is only logged.
async fn discard(repo: &Repo, content_id: i32, name: &str) {
    let prefix = layout::backup_prefix(content_id, name);
    let objects = match repo.storage.list(&prefix).await {
        Ok(objects) => objects,
        Err(e) => {
            tracing::warn!("backup {name} failed; its parts stay in the repository: {e}");
            return;
        }
    };
    let mut left = 0;
    for object in &objects {
        if let Err(e) = repo.storage.delete(&object.key).await {
            tracing::debug!("removing {}: {e}", object.key);
            left += 1;
        }
    }
    if left > 0 {
        tracing::warn!(
            "backup {name} failed; {left} of its {} objects could not be removed (under {prefix})",
            objects.len()
        );
    } else {
        tracing::info!(
            "backup {name} failed; its {} stored objects were removed",
            objects.len()
        );
    }
}

/// The archive's name in the repository: "base" or the tablespace's OID,
/// from the server's "base.tar", "base.tar.lz4", "16384.tar.zst"...
fn archive_name(sent: &str) -> String {
    let name = [".lz4", ".zst", ".gz"]
        .iter()
        .find_map(|ext| sent.strip_suffix(ext))
        .unwrap_or(sent);
    name.trim_end_matches(".tar").to_string()
}

/// "16MB", "64MB", "1GB" → bytes.
pub fn parse_size_setting(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| Error::Server(format!("unexpected size setting {text:?}")))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1024,
        "MB" => 1024 * 1024,
        "GB" => 1024 * 1024 * 1024,
        other => return Err(Error::Server(format!("unexpected size unit {other:?}"))),
    };
    n.checked_mul(mult)
        .ok_or_else(|| Error::Server(format!("size setting {text:?} is impossibly large")))
}

/// One CopyData message of BASE_BACKUP's reply (PostgreSQL 15's protocol).
#[derive(Debug, PartialEq, Eq)]
pub enum BaseBackupMessage {
    /// `n`: a new archive begins: its name in the repository ("base" or
    /// the tablespace OID) and the tablespace's location.
    NewArchive {
        archive: String,
        location: Option<String>,
    },
    /// `d`: bytes of the current archive or of the manifest.
    Data(Bytes),
    /// `p`: plain bytes the server has sent so far.
    Progress(u64),
    /// `m`: the manifest follows.
    Manifest,
    /// Empty, unknown, or a short progress message: skipped.
    Ignored,
}

/// Parses one CopyData payload of BASE_BACKUP's reply.
pub fn parse_copy_data(data: Bytes) -> BaseBackupMessage {
    let Some((&kind, rest)) = data.split_first() else {
        return BaseBackupMessage::Ignored;
    };
    match kind {
        b'n' => {
            let mut fields = rest.split(|&b| b == 0);
            let archive = archive_name(&String::from_utf8_lossy(fields.next().unwrap_or_default()));
            let location = fields
                .next()
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .filter(|l| !l.is_empty());
            BaseBackupMessage::NewArchive { archive, location }
        }
        b'd' => BaseBackupMessage::Data(data.slice(1..)),
        b'p' if rest.len() >= 8 => {
            BaseBackupMessage::Progress(u64::from_be_bytes(rest[..8].try_into().unwrap()))
        }
        b'm' => BaseBackupMessage::Manifest,
        _ => BaseBackupMessage::Ignored,
    }
}

type Position = (Lsn, TimelineId);

struct BackupStream {
    repo: Repo,
    server_compression: Option<Compression>,
    /// Plain bytes the server has sent so far (its progress reports).
    plain_sent: u64,
    content_id: i32,
    name: String,
    part_target: u64,
    slots: Arc<Semaphore>,
    storing: Arc<Semaphore>,
    current: Option<ArchiveWriter>,
    done: Vec<ArchiveRecord>,
    manifest: Option<PartSink>,
    progress: Option<Arc<Progress>>,
    /// Where the receiver waited: for the server, for a free part slot,
    /// for room in a part's queue (debug log: which stage limits).
    waited: Waits,
}

#[derive(Debug, Default)]
struct Waits {
    server: Duration,
    slot: Duration,
    queue: Duration,
}

impl BackupStream {
    fn new(repo: Repo, content_id: i32, name: String, part_target: u64) -> BackupStream {
        BackupStream {
            repo,
            server_compression: None,
            plain_sent: 0,
            content_id,
            name,
            part_target,
            slots: Arc::new(Semaphore::new(PARTS_IN_FLIGHT)),
            storing: Arc::new(Semaphore::new(PARTS_STORING)),
            current: None,
            done: Vec::new(),
            manifest: None,
            progress: None,
            waited: Waits::default(),
        }
    }

    /// Reads the server's reply to BASE_BACKUP to the end.
    async fn run(
        &mut self,
        conn: &mut PgConn,
        new_protocol: bool,
    ) -> Result<(Position, Position, Vec<ArchiveRecord>, u64)> {
        let mut start: Option<Position> = None;
        let mut stop: Option<Position> = None;
        // Legacy protocol: (oid, location) of each tablespace, in the order
        // their COPY streams come; the data directory has no oid.
        let mut tablespaces: Vec<(String, Option<String>)> = Vec::new();
        let mut copies = 0;
        let mut columns: Vec<String> = Vec::new();
        let mut last_log = Instant::now();
        let mut progress: u64 = 0;
        let mut total: u64 = 0;
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(format!("backup {}", self.name));
            bar
        });
        loop {
            let t = Instant::now();
            let message = conn
                .next_message()
                .await
                .context("receiving the base backup")?;
            self.waited.server += t.elapsed();
            match message {
                BackendMessage::RowDescription(cols) => columns = cols.to_vec(),
                BackendMessage::DataRow(values) => {
                    let text = |i: usize| {
                        values
                            .get(i)
                            .and_then(|v| v.as_ref())
                            .map(|b| String::from_utf8_lossy(b).into_owned())
                    };
                    if columns.first().map(String::as_str) == Some("spcoid") {
                        // size is in kB, with PROGRESS.
                        // NULL without PROGRESS.
                        let kb = match text(2) {
                            None => 0,
                            Some(t) => t.parse::<u64>().map_err(|_| {
                                Error::Server(format!(
                                    "the server sent a bad tablespace size {t:?}"
                                ))
                            })?,
                        };
                        total = total.saturating_add(kb.saturating_mul(1024));
                        if let Some(b) = &bar {
                            b.set_length(total);
                        }
                        report(&self.progress, |p| p.set_total(total));
                        tablespaces.push((text(0).unwrap_or_default(), text(1)));
                    } else if columns.first().map(String::as_str) == Some("recptr") {
                        let bad = |e: &dyn std::fmt::Display| {
                            Error::Server(format!("the server sent a bad position: {e}"))
                        };
                        let pos: (Lsn, TimelineId) = (
                            text(0).unwrap_or_default().parse().map_err(|e| bad(&e))?,
                            text(1).unwrap_or_default().parse().map_err(|e| bad(&e))?,
                        );
                        if start.is_none() {
                            start = Some(pos);
                        } else {
                            stop = Some(pos);
                        }
                    }
                }
                BackendMessage::CommandComplete(_) => {}
                // Legacy protocol: one COPY per tablespace (data directory
                // last), then one for the manifest.
                BackendMessage::CopyOutResponse | BackendMessage::CopyBothResponse
                    if !new_protocol =>
                {
                    self.finish_archive().await?;
                    if copies < tablespaces.len() {
                        let (oid, location) = tablespaces[copies].clone();
                        let archive = if oid.is_empty() {
                            "base".to_string()
                        } else {
                            oid
                        };
                        self.start_archive(archive, location.filter(|l| !l.is_empty()));
                    } else {
                        self.start_manifest();
                    }
                    copies += 1;
                }
                BackendMessage::CopyData(data) => {
                    if !new_protocol {
                        progress += data.len() as u64;
                        self.write(data).await?;
                        continue;
                    }
                    match parse_copy_data(data) {
                        BaseBackupMessage::NewArchive { archive, location } => {
                            self.finish_archive().await?;
                            self.start_archive(archive, location);
                        }
                        BaseBackupMessage::Data(bytes) => self.write(bytes).await?,
                        BaseBackupMessage::Progress(sent) => {
                            progress = sent;
                            self.plain_sent = progress;
                        }
                        BaseBackupMessage::Manifest => {
                            self.finish_archive().await?;
                            self.start_manifest();
                        }
                        BaseBackupMessage::Ignored => {}
                    }
                }
                BackendMessage::CopyDone => {}
                BackendMessage::ReadyForQuery => break,
                _ => {}
            }
            report(&self.progress, |p| p.set_done(progress));
            if let Some(b) = &bar {
                b.set_position(progress);
            } else if last_log.elapsed() > Duration::from_secs(10) {
                tracing::info!(
                    "backup {}: {} of about {} MB received",
                    self.name,
                    progress / 1_000_000,
                    total / 1_000_000
                );
                last_log = Instant::now();
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let t = Instant::now();
        self.finish_archive().await?;
        tracing::debug!(
            "backup {}: the receiver waited {:.2}s for the server, {:.2}s for a free part slot, {:.2}s on full part queues, {:.2}s for the last parts",
            self.name,
            self.waited.server.as_secs_f64(),
            self.waited.slot.as_secs_f64(),
            self.waited.queue.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        let manifest_bytes = match self.manifest.take() {
            Some(m) => m.finish().await?.plain,
            None => return Err(Error::Server("the server sent no backup manifest".into())),
        };
        let start =
            start.ok_or_else(|| Error::Server("the server sent no start position".into()))?;
        let stop = stop.ok_or_else(|| Error::Server("the server sent no stop position".into()))?;
        Ok((start, stop, std::mem::take(&mut self.done), manifest_bytes))
    }

    fn start_archive(&mut self, archive: String, location: Option<String>) {
        tracing::debug!("backup {}: archive {archive} ({location:?})", self.name);
        // A stream the server compressed is stored without compressing it
        // again, in parts that end anywhere.
        let (repo, part_target) = match self.server_compression {
            Some(_) => (
                Repo::new(
                    self.repo.storage.clone(),
                    Codec {
                        compression: Compression::None,
                        ..self.repo.codec.clone()
                    },
                ),
                self.part_target / STREAM_PART_DIVISOR,
            ),
            None => (self.repo.clone(), self.part_target),
        };
        self.current = Some(ArchiveWriter {
            repo,
            part_target,
            record: ArchiveRecord {
                name: archive,
                tablespace_path: location,
                parts: 0,
                plain_bytes: 0,
                stored_bytes: 0,
                server_compression: self.server_compression,
            },
            plain_at_start: self.plain_sent,
            splitter: TarSplitter::new(self.part_target),
            part: None,
            uploads: VecDeque::new(),
        });
    }

    fn start_manifest(&mut self) {
        let key = layout::backup_manifest_key(self.content_id, &self.name);
        self.manifest = Some(PartSink::start(&self.repo, key, None));
    }

    async fn write(&mut self, mut data: Bytes) -> Result<()> {
        if let Some(m) = self.manifest.as_mut() {
            return m.send(data).await;
        }
        let Some(a) = self.current.as_mut() else {
            return Err(Error::Server(
                "the server sent data before an archive header".into(),
            ));
        };
        let server = a.record.server_compression;
        let target = a.part_target;
        while !data.is_empty() {
            let piece = if server.is_some() {
                // A compressed stream: parts end anywhere.
                let room = target
                    .saturating_sub(a.part.as_ref().map_or(0, |p| p.plain))
                    .max(1);
                data.split_to(data.len().min(room as usize))
            } else {
                let step = a
                    .splitter
                    .next(&mut data)
                    .map_err(|e| Error::Server(format!("the server's tar stream: {e}")))?;
                match step {
                    None => continue,
                    Some(Step::Pass(bytes)) => bytes,
                    Some(Step::Header(header)) => Bytes::from(header),
                }
            };
            if a.part.is_none() {
                let t = Instant::now();
                let store = self
                    .storing
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                let encode = self
                    .slots
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("never closed");
                self.waited.slot += t.elapsed();
                let key = layout::backup_part_key(
                    self.content_id,
                    &self.name,
                    &a.record.name,
                    a.record.parts,
                    server,
                );
                a.record.parts += 1;
                a.part = Some(PartSink::start(&a.repo, key, Some((encode, store))));
            }
            let part = a.part.as_mut().expect("started above");
            let t = Instant::now();
            part.send(piece).await?;
            self.waited.queue += t.elapsed();
            if (server.is_some() || a.splitter.at_boundary()) && part.plain >= target {
                a.uploads
                    .push_back(a.part.take().expect("present").close().await);
                // Parts stored so far are counted (and their errors seen)
                // now: the list stays short however large the backup.
                while a.uploads.front().is_some_and(|u| u.is_finished()) {
                    let upload = a.uploads.pop_front().expect("checked");
                    a.add(join_part(upload).await?);
                }
            }
        }
        Ok(())
    }

    async fn finish_archive(&mut self) -> Result<()> {
        let Some(mut a) = self.current.take() else {
            return Ok(());
        };
        if a.part.is_none() && a.record.parts == 0 {
            let key = layout::backup_part_key(
                self.content_id,
                &self.name,
                &a.record.name,
                0,
                a.record.server_compression,
            );
            a.record.parts = 1;
            a.part = Some(PartSink::start(&a.repo, key, None));
        }
        if let Some(p) = a.part.take() {
            a.uploads.push_back(p.close().await);
        }
        while let Some(upload) = a.uploads.pop_front() {
            a.add(join_part(upload).await?);
        }
        if a.record.server_compression.is_some() {
            // The server's last progress report of the archive came before
            // the next archive's header (or the manifest).
            a.record.plain_bytes = self.plain_sent.saturating_sub(a.plain_at_start);
        }
        self.done.push(a.record);
        Ok(())
    }

    /// Stops every upload in flight (nothing of this backup becomes
    /// complete: its record is never written).
    async fn abort(&mut self) {
        if let Some(a) = self.current.take() {
            for u in a.uploads {
                u.abort();
            }
            if let Some(p) = a.part {
                p.task.abort();
            }
        }
        if let Some(m) = self.manifest.take() {
            m.task.abort();
        }
    }
}

struct ArchiveWriter {
    /// Where its parts go: the backup's repository, or for a stream the
    /// server compressed, the same storage without compression.
    repo: Repo,
    /// Bytes per part.
    part_target: u64,
    record: ArchiveRecord,
    /// `plain_sent` when the archive started.
    plain_at_start: u64,
    splitter: TarSplitter,
    part: Option<PartSink>,
    uploads: VecDeque<JoinHandle<Result<TransferStats>>>,
}

impl ArchiveWriter {
    fn add(&mut self, stats: TransferStats) {
        // A compressed stream's plain size is the server's to tell.
        if self.record.server_compression.is_none() {
            self.record.plain_bytes += stats.plain;
        }
        self.record.stored_bytes += stats.stored;
    }
}

/// One object being encoded and uploaded from data sent to it.
struct PartSink {
    tx: mpsc::Sender<Option<Vec<Bytes>>>,
    batch: Vec<Bytes>,
    batched: usize,
    plain: u64,
    task: JoinHandle<Result<TransferStats>>,
}

impl PartSink {
    /// `permits`: the encoding slot, released once the part is encoded,
    /// and the storing slot, released once it is stored.
    fn start(
        repo: &Repo,
        key: String,
        permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    ) -> PartSink {
        let (tx, rx) = mpsc::channel::<Option<Vec<Bytes>>>(PART_QUEUE);
        let repo = repo.clone();
        let (encode, store) = permits.unzip();
        let task = tokio::spawn(async move {
            let name = key.clone();
            let r = repo
                .put_with(&key, move |w| {
                    let mut rx = rx;
                    let _encode = encode;
                    // Each message goes straight into the encoder.
                    while let Some(item) = rx.blocking_recv() {
                        let Some(batch) = item else {
                            return Ok(());
                        };
                        for data in batch {
                            w.write_all(&data).map_err(|e| match e.get_ref() {
                                Some(i) if i.is::<crate::codec::CodecError>() => {
                                    Error::Codec(crate::codec::CodecError::from_io(e, &name))
                                }
                                _ => Error::io(format!("encoding {name}"), e),
                            })?;
                        }
                        crate::fault::point("backup-part");
                    }
                    // The sender went away without the end marker.
                    Err(Error::io(
                        format!("reading the data for {name}"),
                        std::io::Error::other("the backup was interrupted"),
                    ))
                })
                .await;
            drop(store);
            r
        });
        PartSink {
            tx,
            batch: Vec::new(),
            batched: 0,
            plain: 0,
            task,
        }
    }

    async fn send(&mut self, data: Bytes) -> Result<()> {
        self.plain += data.len() as u64;
        self.batched += data.len();
        self.batch.push(data);
        if self.batched >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batched = 0;
        if self.tx.send(Some(batch)).await.is_err() {
            // The upload ended early: its error says why.
            let task = std::mem::replace(
                &mut self.task,
                tokio::spawn(async { Ok(TransferStats::default()) }),
            );
            return Err(join_part(task)
                .await
                .err()
                .unwrap_or_else(|| Error::Internal("a part upload stopped early".into())));
        }
        Ok(())
    }

    /// Ends the data; the upload completes in the background.
    async fn close(mut self) -> JoinHandle<Result<TransferStats>> {
        // The end marker: without it the encoder reports an error, so a
        // part cut short by an abort is never stored as complete. (If the
        // upload already failed, the handle returns its error.)
        match self.flush().await {
            Ok(()) => {
                let _ = self.tx.send(None).await;
                self.task
            }
            Err(e) => tokio::spawn(async move { Err(e) }),
        }
    }

    async fn finish(self) -> Result<TransferStats> {
        join_part(self.close().await).await
    }
}

async fn join_part(task: JoinHandle<Result<TransferStats>>) -> Result<TransferStats> {
    task.await
        .map_err(|e| Error::Internal(format!("part upload task: {e}")))?
}

/// Waits until every WAL segment from `start` to `stop` is in the archive.
pub(crate) async fn wait_for_wal(
    repo: &Repo,
    content_id: i32,
    start: Position,
    stop: Position,
    segment_size: u64,
    timeout: Duration,
) -> Result<()> {
    let first = WalSegmentName::from_lsn(start.1, start.0, segment_size);
    // The stop LSN may sit at the very start of a segment it does not need.
    let stop_lsn = stop.0.saturating_sub(1).max(start.0);
    let last = WalSegmentName::from_lsn(stop.1, stop_lsn, segment_size);
    let deadline = Instant::now() + timeout;
    let mut next = first;
    loop {
        let key = layout::wal_key(content_id, &WalFile::Segment(next));
        if repo.exists(&key).await? {
            if next >= last {
                return Ok(());
            }
            next = next.next(segment_size);
            continue;
        }
        if Instant::now() >= deadline {
            return Err(Error::Usage(format!(
                "the backup's WAL is not in the archive: {next} was still missing after {}s (the backup needs {first} to {last}). Check that archive_command = 'cbdr wal-push %p{}' works (pg_stat_archiver, the server log); the backup is not complete",
                timeout.as_secs(),
                if content_id == -1 { String::new() } else { format!(" --content-id {content_id}") }
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names() {
        assert_eq!(archive_name("base.tar"), "base");
        assert_eq!(archive_name("base.tar.lz4"), "base");
        assert_eq!(archive_name("16384.tar.zst"), "16384");
    }

    #[test]
    fn size_settings() {
        assert_eq!(parse_size_setting("16MB").unwrap(), 16 << 20);
        assert_eq!(parse_size_setting("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_size_setting("8192").unwrap(), 8192);
        assert!(parse_size_setting("16XB").is_err());
    }
}
