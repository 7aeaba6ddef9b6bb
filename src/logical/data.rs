//! Table rows between PostgreSQL's COPY and the repository, streaming.
//!
//! Backup: `COPY ... TO STDOUT` → ~1 MiB pieces on a bounded channel → the
//! codec (compression + encryption) on a blocking thread → storage. Either
//! one object per table, or one object for all tables made of frames, each
//! a complete codec object of its own (own header, own key derivation
//! bound to `key#frame`), so a restore can read one table's frame with a
//! ranged read and decode it without touching the others.
//!
//! Restore: the object (or frame) decoded on a blocking thread → bounded
//! channel → `COPY ... FROM STDIN`. Rows are counted by the server on both
//! sides (the `COPY n` command tags) and compared.

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::copy_format::{BinaryCutter, CopyFormat, Malformed, TRAILER};
use super::layout::frame_name;
use super::record::DataLocation;
use crate::codec::{CodecError, ObjectReader};
use crate::error::{Error, Result};
use crate::pg::conn::{BackendMessage, PgConn, PgError};
use crate::repo::{Repo, TransferStats};
use crate::storage::ByteStream;

/// Plain bytes per piece on the channels.
pub const PIECE: usize = 1 << 20;

/// What flows from a producer to a consumer: the stream must end with
/// `End`; a channel closed without it means the producer died.
#[derive(Debug)]
pub enum Piece {
    Data(Bytes),
    End,
    Fail(String),
}

/// A blocking `Read` over a channel of [`Piece`]s.
pub struct ChannelReader {
    rx: mpsc::Receiver<Piece>,
    cur: Bytes,
    done: bool,
}

impl ChannelReader {
    pub fn new(rx: mpsc::Receiver<Piece>) -> ChannelReader {
        ChannelReader {
            rx,
            cur: Bytes::new(),
            done: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Piece::Data(b)) => self.cur = b,
                Some(Piece::End) => self.done = true,
                Some(Piece::Fail(m)) => return Err(io::Error::other(m)),
                None => {
                    return Err(io::Error::other(
                        "the data source stopped before the end of the table",
                    ))
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// Why a COPY out did not complete.
#[derive(Debug)]
pub enum CopyOutError {
    /// PostgreSQL failed the COPY (or the connection broke).
    Pg(PgError),
    /// The consumer went away (its own error says why).
    SinkClosed,
}

/// The row count of a `COPY n` command tag.
pub fn copy_tag_rows(tag: &str) -> Option<u64> {
    tag.strip_prefix("COPY ")?.trim().parse().ok()
}

/// Runs `sql` (a `COPY ... TO STDOUT`) and sends its bytes in ~1 MiB
/// pieces, then `End`. Returns the row count the server reported. On an
/// error nothing more is sent: the caller sends `Fail`.
pub async fn copy_out(
    conn: &mut PgConn,
    sql: &str,
    tx: &mpsc::Sender<Piece>,
) -> std::result::Result<u64, CopyOutError> {
    conn.send_query(sql).await.map_err(CopyOutError::Pg)?;
    let mut batch = BytesMut::with_capacity(PIECE + 64 * 1024);
    let mut rows = None;
    let mut error = None;
    loop {
        match conn.next_message().await {
            Ok(BackendMessage::CopyData(d)) => {
                batch.extend_from_slice(&d);
                if batch.len() >= PIECE {
                    let piece = batch.split().freeze();
                    batch.reserve(PIECE + 64 * 1024);
                    if tx.send(Piece::Data(piece)).await.is_err() {
                        return Err(CopyOutError::SinkClosed);
                    }
                }
            }
            Ok(BackendMessage::CommandComplete(tag)) => rows = copy_tag_rows(&tag),
            Ok(BackendMessage::ReadyForQuery) => break,
            Ok(_) => {}
            Err(e @ PgError::Server(_)) => {
                error.get_or_insert(e);
            }
            Err(e) => return Err(CopyOutError::Pg(error.unwrap_or(e))),
        }
    }
    if let Some(e) = error {
        return Err(CopyOutError::Pg(e));
    }
    let rows = rows.ok_or_else(|| {
        CopyOutError::Pg(PgError::Protocol(format!(
            "`{sql}` ended without a COPY command tag"
        )))
    })?;
    if !batch.is_empty() && tx.send(Piece::Data(batch.freeze())).await.is_err() {
        return Err(CopyOutError::SinkClosed);
    }
    if tx.send(Piece::End).await.is_err() {
        return Err(CopyOutError::SinkClosed);
    }
    Ok(rows)
}

/// Copies one table (`copy_sql`: its COPY TO STDOUT) into the object `key`.
/// Returns the row count and the bytes moved; the object exists only if
/// everything succeeded.
pub async fn dump_to_object(
    repo: &Repo,
    conn: &mut PgConn,
    copy_sql: &str,
    key: &str,
    what: &str,
    queue: usize,
) -> Result<(u64, TransferStats)> {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let put = repo.put_reader(key, ChannelReader::new(rx));
    let copy = async move {
        let r = copy_out(conn, copy_sql, &tx).await;
        if let Err(e) = &r {
            let m = match e {
                CopyOutError::Pg(e) => format!("{what}: {e}"),
                CopyOutError::SinkClosed => "the upload stopped".to_string(),
            };
            let _ = tx.send(Piece::Fail(m)).await;
        }
        r
    };
    let (copied, stored) = tokio::join!(copy, put);
    match (copied, stored) {
        (Ok(rows), Ok(stats)) => Ok((rows, stats)),
        (Err(CopyOutError::Pg(e)), _) => Err(Error::postgres(what, e)),
        (_, Err(e)) => Err(e),
        (Err(CopyOutError::SinkClosed), Ok(_)) => Err(Error::Internal(format!(
            "{what}: the upload stopped without an error"
        ))),
    }
}

/// One frame of a single data file, once written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    pub frame: u32,
    pub offset: u64,
    pub length: u64,
    pub plain: u64,
}

/// Writes the frames of one single-data-file object. Feed each table with
/// [`SingleFileWriter::dump`]; [`SingleFileWriter::finish`] completes the
/// object (it exists only then).
pub struct SingleFileWriter {
    key: String,
    tx: Option<mpsc::Sender<Piece>>,
    done_rx: mpsc::UnboundedReceiver<FrameInfo>,
    encoder: tokio::task::JoinHandle<Result<()>>,
    put: tokio::task::JoinHandle<Result<u64, crate::storage::StorageError>>,
    next_frame: u32,
}

impl SingleFileWriter {
    pub fn start(repo: &Repo, key: &str, queue: usize) -> SingleFileWriter {
        let (tx, rx) = mpsc::channel::<Piece>(queue.max(1));
        let (body_tx, body_rx) = mpsc::channel::<io::Result<Bytes>>(4);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let codec = repo.codec.clone();
        let name = key.to_string();
        let encoder = tokio::task::spawn_blocking(move || -> Result<()> {
            let mut sink = CountingSink::new(body_tx);
            let mut rx = rx;
            let mut frame = 0u32;
            loop {
                // A frame starts with its first piece: none means the end.
                let first = match rx.blocking_recv() {
                    None => break,
                    Some(p) => p,
                };
                let offset = sink.total;
                let fname = frame_name(&name, frame);
                let mut w = codec.writer(sink, &fname)?;
                let mut piece = Some(first);
                loop {
                    match piece.take().or_else(|| rx.blocking_recv()) {
                        Some(Piece::Data(b)) => w
                            .write_all(&b)
                            .map_err(|e| Error::Codec(CodecError::from_io(e, &fname)))?,
                        Some(Piece::End) => break,
                        Some(Piece::Fail(m)) => {
                            return Err(Error::Internal(format!("aborted: {m}")))
                        }
                        None => {
                            return Err(Error::Internal(format!(
                                "{fname}: the table's data stopped before its end"
                            )))
                        }
                    }
                }
                let plain = w.plain_bytes();
                sink = w.finish()?;
                let _ = done_tx.send(FrameInfo {
                    frame,
                    offset,
                    length: sink.total - offset,
                    plain,
                });
                frame += 1;
            }
            sink.close();
            Ok(())
        });
        let storage = repo.storage.clone();
        let key_owned = key.to_string();
        let put = tokio::spawn(async move {
            let body: ByteStream =
                Box::pin(futures_util::stream::unfold(body_rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                }));
            storage.put(&key_owned, body).await
        });
        SingleFileWriter {
            key: key.to_string(),
            tx: Some(tx),
            done_rx,
            encoder,
            put,
            next_frame: 0,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// Copies one table into the next frame.
    pub async fn dump(
        &mut self,
        conn: &mut PgConn,
        copy_sql: &str,
        what: &str,
    ) -> Result<(u64, FrameInfo)> {
        let tx = self.tx.as_ref().expect("not finished");
        let rows = match copy_out(conn, copy_sql, tx).await {
            Ok(rows) => rows,
            Err(e) => {
                let m = match &e {
                    CopyOutError::Pg(e) => format!("{what}: {e}"),
                    CopyOutError::SinkClosed => "the upload stopped".into(),
                };
                let _ = tx.send(Piece::Fail(m)).await;
                return Err(match e {
                    CopyOutError::Pg(e) => Error::postgres(what, e),
                    CopyOutError::SinkClosed => self.failure().await,
                });
            }
        };
        match self.done_rx.recv().await {
            Some(info) if info.frame == self.next_frame => {
                self.next_frame += 1;
                Ok((rows, info))
            }
            Some(info) => Err(Error::Internal(format!(
                "single data file: frame {} reported, {} expected",
                info.frame, self.next_frame
            ))),
            None => Err(self.failure().await),
        }
    }

    /// The error that stopped the encoder or the upload.
    async fn failure(&mut self) -> Error {
        self.tx = None;
        let enc = (&mut self.encoder).await;
        let put = (&mut self.put).await;
        match (enc, put) {
            (Ok(Err(e)), _) => e,
            (_, Ok(Err(e))) => e.into(),
            (Err(e), _) | (_, Err(e)) => Error::Internal(format!("single data file task: {e}")),
            _ => Error::Internal("the single data file's upload stopped".into()),
        }
    }

    /// Completes the object; returns its stored size.
    pub async fn finish(mut self) -> Result<u64> {
        self.tx = None;
        let enc = (&mut self.encoder)
            .await
            .map_err(|e| Error::Internal(format!("single data file encoder: {e}")))?;
        let put = (&mut self.put)
            .await
            .map_err(|e| Error::Internal(format!("single data file upload: {e}")))?;
        enc?;
        Ok(put?)
    }
}

/// A `Write` that forwards ~1 MiB pieces to an upload body and counts
/// what it was given. Dropped without [`CountingSink::close`], it aborts
/// the upload.
struct CountingSink {
    tx: Option<mpsc::Sender<io::Result<Bytes>>>,
    buf: BytesMut,
    total: u64,
}

impl CountingSink {
    fn new(tx: mpsc::Sender<io::Result<Bytes>>) -> CountingSink {
        CountingSink {
            tx: Some(tx),
            buf: BytesMut::with_capacity(PIECE),
            total: 0,
        }
    }

    fn send(&mut self, item: io::Result<Bytes>) -> io::Result<()> {
        self.tx
            .as_ref()
            .expect("open")
            .blocking_send(item)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    fn close(mut self) {
        if !self.buf.is_empty() {
            let piece = self.buf.split().freeze();
            let _ = self.send(Ok(piece));
        }
        self.tx = None;
    }
}

impl Write for CountingSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.total += data.len() as u64;
        if self.buf.len() >= PIECE {
            let piece = self.buf.split().freeze();
            self.buf.reserve(PIECE);
            self.send(Ok(piece))?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for CountingSink {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.blocking_send(Err(io::Error::other(
                "the single data file stopped before its end",
            )));
        }
    }
}

/// Runs `f` on a blocking thread with the decoded bytes of one table's
/// rows, wherever they are stored.
pub async fn read_location<T: Send + 'static>(
    repo: &Repo,
    loc: &DataLocation,
    f: impl FnOnce(&mut ObjectReader) -> Result<T> + Send + 'static,
) -> Result<T> {
    match loc {
        DataLocation::Object { key } => repo.read_with(key, f).await,
        DataLocation::Frame {
            key,
            frame,
            offset,
            length,
        } => {
            let stream = repo.storage.get_range(key, *offset, *length).await?;
            let reader =
                tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
            let codec = repo.codec.clone();
            let name = frame_name(key, *frame);
            tokio::task::spawn_blocking(move || -> Result<T> {
                let mut r = codec.reader(reader, &name)?;
                f(&mut r)
            })
            .await
            .map_err(|e| Error::Internal(format!("decoder task: {e}")))?
        }
    }
}

/// Reads the rest of a reply up to ReadyForQuery; the first server error,
/// and the last command tag.
pub async fn finish_reply(conn: &mut PgConn) -> std::result::Result<Option<String>, PgError> {
    let mut error = None;
    let mut tag = None;
    loop {
        match conn.next_message().await {
            Ok(BackendMessage::ReadyForQuery) => break,
            Ok(BackendMessage::CommandComplete(t)) => tag = Some(t),
            Ok(_) => {}
            Err(e @ PgError::Server(_)) => {
                error.get_or_insert(e);
            }
            Err(e) => return Err(error.unwrap_or(e)),
        }
    }
    match error {
        Some(e) => Err(e),
        None => Ok(tag),
    }
}

/// Why a COPY in did not complete.
#[derive(Debug)]
pub enum CopyInError {
    /// PostgreSQL refused the COPY or the rows (the connection is usable,
    /// its transaction failed).
    Pg(PgError),
    /// The stored rows could not be read (the COPY was ended and its rows
    /// must be rolled back by the caller).
    Source(Error),
}

/// Loads the rows stored at `loc` with `copy_sql` (a `COPY ... FROM
/// STDIN`). Returns the row count the server reported and the plain bytes
/// sent.
pub async fn copy_in(
    repo: &Repo,
    conn: &mut PgConn,
    copy_sql: &str,
    loc: &DataLocation,
    queue: usize,
) -> std::result::Result<(u64, u64), CopyInError> {
    conn.send_query(copy_sql).await.map_err(CopyInError::Pg)?;
    loop {
        match conn.next_message().await {
            Ok(BackendMessage::CopyInResponse) => break,
            Ok(BackendMessage::ReadyForQuery) => {
                return Err(CopyInError::Pg(PgError::Protocol(format!(
                    "`{copy_sql}` did not start a COPY"
                ))))
            }
            Ok(_) => {}
            Err(e @ PgError::Server(_)) => {
                let _ = finish_reply(conn).await;
                return Err(CopyInError::Pg(e));
            }
            Err(e) => return Err(CopyInError::Pg(e)),
        }
    }
    let (tx, mut rx) = mpsc::channel::<Piece>(queue.max(1));
    let reader = read_location(repo, loc, move |r| {
        let mut buf = vec![0u8; PIECE];
        loop {
            let mut filled = 0;
            while filled < buf.len() {
                match r.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let e = Error::Codec(CodecError::from_io(e, "table data"));
                        let _ = tx.blocking_send(Piece::Fail(e.to_string()));
                        return Err(e);
                    }
                }
            }
            if filled == 0 {
                let _ = tx.blocking_send(Piece::End);
                return Ok(());
            }
            if tx
                .blocking_send(Piece::Data(Bytes::copy_from_slice(&buf[..filled])))
                .is_err()
            {
                return Ok(());
            }
            if filled < buf.len() {
                let _ = tx.blocking_send(Piece::End);
                return Ok(());
            }
        }
    });
    let send = async {
        let mut sent = 0u64;
        let mut source_failed = false;
        let mut send_error = None;
        while let Some(p) = rx.recv().await {
            match p {
                Piece::Data(b) => {
                    if let Err(e) = conn.send_copy_data(&b).await {
                        send_error = Some(e);
                        break;
                    }
                    sent += b.len() as u64;
                    crate::fault::point("gprestore-table");
                }
                Piece::End => break,
                Piece::Fail(_) => {
                    source_failed = true;
                    break;
                }
            }
        }
        drop(rx);
        if let Some(e) = send_error {
            return (sent, source_failed, Err(e));
        }
        // Ends the COPY either way: after a source failure its rows are
        // rolled back by the caller's transaction.
        let done = match conn.send_copy_done().await {
            Ok(()) => finish_reply(conn).await,
            Err(e) => Err(e),
        };
        (sent, source_failed, done)
    };
    let (read, (sent, source_failed, done)) = tokio::join!(reader, send);
    if let Err(e) = read {
        return Err(CopyInError::Source(e));
    }
    if source_failed {
        return Err(CopyInError::Source(Error::Internal(
            "the table's data stopped before its end".into(),
        )));
    }
    let tag = done.map_err(CopyInError::Pg)?;
    let rows = tag.as_deref().and_then(copy_tag_rows).ok_or_else(|| {
        CopyInError::Pg(PgError::Protocol(format!(
            "`{copy_sql}` ended without a COPY command tag"
        )))
    })?;
    Ok((rows, sent))
}

/// Cuts a COPY text stream into pieces of about [`PIECE`] bytes that end
/// at a row boundary (COPY text format escapes newlines inside values, so
/// every raw `\n` ends a row).
pub fn cut_rows(buf: &mut BytesMut, at_end: bool) -> Option<Bytes> {
    if at_end {
        return (!buf.is_empty()).then(|| buf.split().freeze());
    }
    if buf.len() < PIECE {
        return None;
    }
    let cut = buf.iter().rposition(|&b| b == b'\n')?;
    Some(buf.split_to(cut + 1).freeze())
}

/// Loads the rows stored at `loc` through every connection of `conns` at
/// once (each in COPY FROM STDIN with `copy_sql`, taking the next piece of
/// whole rows when it is free): for a table much bigger than the others,
/// which would otherwise keep one connection busy while the rest idle.
/// Text rows are cut at newlines; a binary stream is cut at row
/// boundaries, and each connection's COPY gets the stream's header first
/// and the trailer last. The caller holds each connection in a
/// transaction and commits them all only if this succeeds. Returns the
/// rows the server reported (summed) and the plain bytes sent.
pub async fn copy_in_split(
    repo: &Repo,
    conns: &mut [PgConn],
    copy_sql: &str,
    loc: &DataLocation,
    format: CopyFormat,
    queue: usize,
) -> std::result::Result<(u64, u64), CopyInError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // Every connection enters COPY first.
    let mut first_error = None;
    let mut entered = vec![false; conns.len()];
    for (i, conn) in conns.iter_mut().enumerate() {
        if let Err(e) = conn.send_query(copy_sql).await {
            first_error = Some(e);
            break;
        }
        loop {
            match conn.next_message().await {
                Ok(BackendMessage::CopyInResponse) => {
                    entered[i] = true;
                    break;
                }
                Ok(BackendMessage::ReadyForQuery) => {
                    first_error = Some(PgError::Protocol(format!(
                        "`{copy_sql}` did not start a COPY"
                    )));
                    break;
                }
                Ok(_) => {}
                Err(e @ PgError::Server(_)) => {
                    let _ = finish_reply(conn).await;
                    first_error = Some(e);
                    break;
                }
                Err(e) => {
                    first_error = Some(e);
                    break;
                }
            }
        }
        if first_error.is_some() {
            break;
        }
    }
    if let Some(e) = first_error {
        for (i, conn) in conns.iter_mut().enumerate() {
            if entered[i] && conn.send_copy_done().await.is_ok() {
                let _ = finish_reply(conn).await;
            }
        }
        return Err(CopyInError::Pg(e));
    }

    let complete = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Piece>(queue.max(1) * conns.len());
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let done_flag = complete.clone();
    // A binary stream's header starts every connection's COPY.
    let (header_tx, header_rx) = tokio::sync::watch::channel::<Option<Bytes>>(None);
    let reader = read_location(repo, loc, move |r| {
        let mut buf = BytesMut::with_capacity(PIECE * 2);
        let mut chunk = vec![0u8; PIECE];
        let mut binary = format.is_binary().then(BinaryCutter::new);
        let mut header_sent = false;
        loop {
            let n = match r.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let e = Error::Codec(CodecError::from_io(e, "table data"));
                    let _ = tx.blocking_send(Piece::Fail(e.to_string()));
                    return Err(e);
                }
            };
            buf.extend_from_slice(&chunk[..n]);
            loop {
                let piece = match &mut binary {
                    None => cut_rows(&mut buf, n == 0),
                    Some(cutter) => {
                        let piece = cutter.cut(&mut buf, PIECE, n == 0);
                        if !header_sent {
                            if let Some(h) = cutter.header() {
                                header_sent = true;
                                let _ = header_tx.send(Some(h.clone()));
                            }
                        }
                        match piece {
                            Ok(p) => p,
                            Err(Malformed(why)) => {
                                let e = Error::Integrity(format!(
                                    "the table's data is not a valid binary COPY stream: {why}"
                                ));
                                let _ = tx.blocking_send(Piece::Fail(e.to_string()));
                                return Err(e);
                            }
                        }
                    }
                };
                let Some(piece) = piece else { break };
                if tx.blocking_send(Piece::Data(piece)).is_err() {
                    return Ok(());
                }
            }
            if n == 0 {
                done_flag.store(true, Ordering::SeqCst);
                let _ = tx.blocking_send(Piece::End);
                return Ok(());
            }
        }
    });
    let failed = AtomicBool::new(false);
    let sends = conns.iter_mut().map(|conn| {
        let rx = rx.clone();
        let mut header_rx = header_rx.clone();
        let (complete, failed) = (&complete, &failed);
        async move {
            let mut sent = 0u64;
            if format.is_binary() {
                let header = header_rx
                    .wait_for(|h| h.is_some())
                    .await
                    .ok()
                    .and_then(|h| h.clone());
                match header {
                    Some(h) => {
                        if let Err(e) = conn.send_copy_data(&h).await {
                            failed.store(true, Ordering::SeqCst);
                            return (sent, Err(e));
                        }
                    }
                    // The source failed before its header.
                    None => failed.store(true, Ordering::SeqCst),
                }
            }
            while !failed.load(Ordering::SeqCst) {
                let p = rx.lock().await.recv().await;
                match p {
                    Some(Piece::Data(b)) => {
                        if let Err(e) = conn.send_copy_data(&b).await {
                            failed.store(true, Ordering::SeqCst);
                            return (sent, Err(e));
                        }
                        sent += b.len() as u64;
                    }
                    Some(Piece::End) => break,
                    Some(Piece::Fail(_)) => {
                        failed.store(true, Ordering::SeqCst);
                        break;
                    }
                    None => {
                        if !complete.load(Ordering::SeqCst) {
                            failed.store(true, Ordering::SeqCst);
                        }
                        break;
                    }
                }
            }
            // The others stop at the closed channel.
            rx.lock().await.close();
            if format.is_binary() && !failed.load(Ordering::SeqCst) {
                if let Err(e) = conn.send_copy_data(&TRAILER).await {
                    failed.store(true, Ordering::SeqCst);
                    return (sent, Err(e));
                }
            }
            let done = match conn.send_copy_done().await {
                Ok(()) => finish_reply(conn).await,
                Err(e) => Err(e),
            };
            (sent, done)
        }
    });
    let (read, results) = tokio::join!(reader, futures_util::future::join_all(sends));
    if let Err(e) = read {
        return Err(CopyInError::Source(e));
    }
    if failed.load(Ordering::SeqCst) {
        // A send failed (its error below) or the source stopped short.
        for (_, r) in &results {
            if let Err(e) = r {
                return Err(CopyInError::Pg(PgError::Protocol(e.to_string())));
            }
        }
        return Err(CopyInError::Source(Error::Internal(
            "the table's data stopped before its end".into(),
        )));
    }
    let mut rows = 0;
    let mut bytes = 0;
    for (sent, r) in results {
        let tag = r.map_err(CopyInError::Pg)?;
        rows += tag.as_deref().and_then(copy_tag_rows).ok_or_else(|| {
            CopyInError::Pg(PgError::Protocol(format!(
                "`{copy_sql}` ended without a COPY command tag"
            )))
        })?;
        bytes += sent;
    }
    Ok((rows, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_end_at_row_boundaries() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"1\ta\n2\tb\n");
        assert_eq!(cut_rows(&mut buf, false), None, "short: wait for more");
        let row = vec![b'x'; PIECE / 3];
        for _ in 0..4 {
            buf.extend_from_slice(&row);
            buf.extend_from_slice(b"\n");
        }
        buf.extend_from_slice(b"partial");
        let piece = cut_rows(&mut buf, false).unwrap();
        assert!(piece.ends_with(b"\n"));
        assert_eq!(&buf[..], b"partial");
        // A row longer than a piece stays whole.
        let mut big = BytesMut::new();
        big.extend_from_slice(&vec![b'y'; PIECE * 2]);
        assert_eq!(cut_rows(&mut big, false), None);
        big.extend_from_slice(b"\nz");
        assert_eq!(cut_rows(&mut big, false).unwrap().len(), PIECE * 2 + 1);
        assert_eq!(cut_rows(&mut big, true).unwrap(), Bytes::from_static(b"z"));
        assert_eq!(cut_rows(&mut big, true), None);
    }

    #[test]
    fn tags() {
        assert_eq!(copy_tag_rows("COPY 0"), Some(0));
        assert_eq!(copy_tag_rows("COPY 12345678901"), Some(12_345_678_901));
        assert_eq!(copy_tag_rows("INSERT 0 1"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn channel_reader_needs_an_end() {
        let (tx, rx) = mpsc::channel(2);
        let h = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let r = ChannelReader::new(rx).read_to_end(&mut out);
            (r.map_err(|e| e.to_string()), out)
        });
        tx.send(Piece::Data(Bytes::from_static(b"abc")))
            .await
            .unwrap();
        drop(tx);
        let (r, out) = h.await.unwrap();
        assert_eq!(out, b"abc");
        assert!(r.unwrap_err().contains("stopped before the end"));

        let (tx, rx) = mpsc::channel(2);
        let h = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            ChannelReader::new(rx).read_to_end(&mut out).unwrap();
            out
        });
        tx.send(Piece::Data(Bytes::from_static(b"abc")))
            .await
            .unwrap();
        tx.send(Piece::Data(Bytes::from_static(b"def")))
            .await
            .unwrap();
        tx.send(Piece::End).await.unwrap();
        assert_eq!(h.await.unwrap(), b"abcdef");
    }

    /// Frames written by the single-file writer decode one by one through
    /// ranged reads, under their own names only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn single_file_frames_decode_alone() {
        use crate::codec::{Codec, Compression, Key};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::storage::FsStorage::new(dir.path()).unwrap());
        let key = Arc::new(Key::from_text(&"ab".repeat(32)).unwrap());
        let repo = Repo::new(storage, Codec::new(Compression::Lz4, None, Some(key)));
        let tables: Vec<Vec<u8>> = vec![
            b"1\tone\n2\ttwo\n".to_vec(),
            Vec::new(),
            (0..300_000u32)
                .flat_map(|i| format!("{i}\t{}\n", i * 7).into_bytes())
                .collect(),
        ];
        let mut w = SingleFileWriter::start(&repo, "logical/x/data/all", 4);
        let mut frames = Vec::new();
        for t in &tables {
            let tx = w.tx.clone().unwrap();
            for piece in t.chunks(PIECE) {
                tx.send(Piece::Data(Bytes::copy_from_slice(piece)))
                    .await
                    .unwrap();
            }
            tx.send(Piece::End).await.unwrap();
            let info = w.done_rx.recv().await.unwrap();
            w.next_frame += 1;
            assert_eq!(info.plain, t.len() as u64);
            frames.push(info);
        }
        let stored = w.finish().await.unwrap();
        assert_eq!(frames.last().map(|f| f.offset + f.length), Some(stored));
        for (i, f) in frames.iter().enumerate().rev() {
            let loc = DataLocation::Frame {
                key: "logical/x/data/all".into(),
                frame: f.frame,
                offset: f.offset,
                length: f.length,
            };
            let got = read_location(&repo, &loc, |r| {
                let mut v = Vec::new();
                r.read_to_end(&mut v)
                    .map_err(|e| Error::Codec(CodecError::from_io(e, "t")))?;
                Ok(v)
            })
            .await
            .unwrap();
            assert_eq!(got, tables[i]);
        }
        // A frame read under another frame's position does not verify.
        let swapped = DataLocation::Frame {
            key: "logical/x/data/all".into(),
            frame: 1,
            offset: frames[0].offset,
            length: frames[0].length,
        };
        let e = read_location(&repo, &swapped, |r| {
            let mut v = Vec::new();
            r.read_to_end(&mut v)
                .map_err(|e| Error::Codec(CodecError::from_io(e, "t")))?;
            Ok(v)
        })
        .await
        .unwrap_err();
        assert_eq!(e.exit_code(), crate::error::ExitCode::Integrity, "{e}");
    }
}
