//! The contents of large objects, between the database and one data
//! object of the backup, in bounded chunks whatever an object's size.
//!
//! Backup: one `COPY (SELECT oid, offset, lo_get(oid, offset, chunk) ...)
//! TO STDOUT (FORMAT binary)` in the backup's snapshot, the server reading
//! one chunk per row (each object's size from `lo_lseek64` on a descriptor
//! opened and closed at once), through the same path as a table's rows
//! ([`data::dump_to_object`]: codec, encryption, storage).
//!
//! Restore: the rows decoded and parsed on a blocking thread, each chunk
//! written with `lo_put` in one transaction. The objects themselves (with
//! owner, comment and grants) are metadata entries replayed before; a
//! restore without them (data-only, incremental) creates an object that is
//! missing and empties one that is there before writing it again.

use std::io::{self, Read};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::data;
use super::layout::{self, Timestamp};
use super::record::{DataLocation, LargeObjectData};
use crate::codec::CodecError;
use crate::error::{Error, PgResultExt, Result};
use crate::pg::conn::PgConn;
use crate::pg::quote::dollar_quote;
use crate::repo::Repo;

/// Bytes per chunk unless `[logical] large_object_chunk` says otherwise.
pub const DEFAULT_CHUNK: u64 = 256 * 1024;
/// Bounds of `[logical] large_object_chunk`.
pub const MIN_CHUNK: u64 = 1024;
pub const MAX_CHUNK: u64 = 64 * 1024 * 1024;

/// `lo_open`'s read mode (INV_READ).
const INV_READ: u32 = 0x40000;

/// The COPY that reads every large object in chunks of `chunk` bytes, by
/// OID then offset. An empty object is one row of no bytes.
pub fn copy_out_sql(chunk: u64) -> String {
    // The descriptor is closed in the same row that measured the object
    // (target lists are evaluated in order; volatile columns are kept).
    format!(
        "COPY (SELECT l.oid, c.off, pg_catalog.lo_get(l.oid, c.off, {chunk}) \
         FROM (SELECT m.oid, pg_catalog.lo_lseek64(d.fd, 0, 2) AS size, pg_catalog.lo_close(d.fd) AS closed \
               FROM pg_catalog.pg_largeobject_metadata m, \
                    LATERAL (SELECT pg_catalog.lo_open(m.oid, {INV_READ}) AS fd OFFSET 0) d \
               ORDER BY m.oid) l, \
              LATERAL pg_catalog.generate_series(0::int8, GREATEST(l.size - 1, 0), {chunk}::int8) AS c(off)) \
         TO STDOUT (FORMAT binary)"
    )
}

/// Copies the contents of every large object into the backup's object.
/// `None` when the database has none.
pub async fn dump(
    repo: &Repo,
    conn: &mut PgConn,
    ts: &Timestamp,
    chunk: u64,
    queue: usize,
) -> Result<Option<LargeObjectData>> {
    let count: u64 = conn
        .query_one("SELECT count(*) AS n FROM pg_catalog.pg_largeobject_metadata")
        .await
        .and_then(|r| r.parse("n"))
        .context("counting the large objects")?;
    if count == 0 {
        return Ok(None);
    }
    let key = layout::large_objects_key(ts);
    let (chunks, stats) = data::dump_to_object(
        repo,
        conn,
        &copy_out_sql(chunk),
        &key,
        "copying the large objects",
        queue,
    )
    .await?;
    Ok(Some(LargeObjectData {
        objects: count,
        chunks,
        chunk_size: chunk,
        plain_bytes: stats.plain,
        stored_bytes: stats.stored,
        location: DataLocation::Object { key },
    }))
}

/// One row of the stored stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub oid: u32,
    pub offset: i64,
    pub data: Bytes,
}

/// Reads the rows of a binary COPY stream of `(oid, int8, bytea)`,
/// refusing a chunk longer than `max` (a damaged or forged stream must not
/// make the restore allocate without bound).
pub struct ChunkReader<R> {
    r: R,
    max: u64,
    started: bool,
    done: bool,
}

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

fn bad(why: impl std::fmt::Display) -> Error {
    Error::Integrity(format!(
        "the large objects' data is not the stream a backup writes ({why}): the backup is damaged"
    ))
}

impl<R: Read> ChunkReader<R> {
    pub fn new(r: R, max: u64) -> ChunkReader<R> {
        ChunkReader {
            r,
            max,
            started: false,
            done: false,
        }
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.r.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => bad("it ends in the middle of a row"),
            _ => Error::Codec(CodecError::from_io(e, "large object data")),
        })
    }

    fn int(&mut self, n: usize) -> Result<i64> {
        let mut b = [0u8; 8];
        self.exact(&mut b[8 - n..])?;
        let v = i64::from_be_bytes(b);
        // Sign-extend 2- and 4-byte fields.
        let shift = 64 - 8 * n as u32;
        Ok((v << shift) >> shift)
    }

    fn field_len(&mut self, want: Option<i64>, what: &str) -> Result<u64> {
        let len = self.int(4)?;
        if len < 0 {
            return Err(bad(format!("{what} is NULL")));
        }
        if want.is_some_and(|w| w != len) {
            return Err(bad(format!("{what} has {len} bytes")));
        }
        Ok(len as u64)
    }

    /// The next chunk; `None` after the trailer.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        if self.done {
            return Ok(None);
        }
        if !self.started {
            let mut sig = [0u8; 11];
            self.exact(&mut sig)?;
            if &sig != SIGNATURE {
                return Err(bad("no binary COPY signature"));
            }
            let _flags = self.int(4)?;
            let ext = self.int(4)?;
            if !(0..=1024).contains(&ext) {
                return Err(bad(format!("a header extension of {ext} bytes")));
            }
            let mut skip = vec![0u8; ext as usize];
            self.exact(&mut skip)?;
            self.started = true;
        }
        let fields = self.int(2)?;
        if fields == -1 {
            self.done = true;
            return Ok(None);
        }
        if fields != 3 {
            return Err(bad(format!("a row of {fields} fields")));
        }
        self.field_len(Some(4), "an OID")?;
        let oid = self.int(4)? as u32;
        self.field_len(Some(8), "an offset")?;
        let offset = self.int(8)?;
        let len = self.field_len(None, "a chunk")?;
        if len > self.max {
            return Err(bad(format!(
                "a chunk of {len} bytes, more than the {} the backup wrote",
                self.max
            )));
        }
        let mut buf = vec![0u8; len as usize];
        self.exact(&mut buf)?;
        Ok(Some(Chunk {
            oid,
            offset,
            data: Bytes::from(buf),
        }))
    }
}

/// What [`restore`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub objects: u64,
    pub bytes: u64,
}

/// The statement that prepares object `oid` before its first chunk when
/// the metadata entries did not create it: created if missing, emptied if
/// there (its owner and grants stay).
fn prepare_sql(oid: u32) -> String {
    let body = format!(
        "DECLARE fd integer;\nBEGIN\n    \
         IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_largeobject_metadata WHERE oid = {oid}) THEN\n        \
         PERFORM pg_catalog.lo_create({oid});\n    END IF;\n    \
         fd := pg_catalog.lo_open({oid}, 131072);\n    \
         PERFORM pg_catalog.lo_truncate64(fd, 0);\n    \
         PERFORM pg_catalog.lo_close(fd);\nEND"
    );
    format!("DO {};", dollar_quote(&body))
}

fn put_sql(c: &Chunk) -> String {
    format!(
        "SELECT pg_catalog.lo_put('{}', {}, '\\x{}'::pg_catalog.bytea)",
        c.oid,
        c.offset,
        hex::encode(&c.data)
    )
}

/// Writes the stored contents into the database on `conn`, in one
/// transaction (rolled back on any error). `created`: the restore's
/// metadata entries created every object (else each is created or emptied
/// first). At most `queue` chunks are held at once.
pub async fn restore(
    repo: &Repo,
    conn: &mut PgConn,
    lo: &LargeObjectData,
    created: bool,
    queue: usize,
) -> Result<Restored> {
    conn.run("starting the large objects' transaction", "BEGIN")
        .await?;
    let result = write_all(repo, conn, lo, created, queue).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = conn.run("ending the large objects' transaction", end).await;
    let restored = result?;
    ended?;
    if restored.objects != lo.objects {
        return Err(bad(format!(
            "it holds {} objects, the record says {}",
            restored.objects, lo.objects
        )));
    }
    Ok(restored)
}

async fn write_all(
    repo: &Repo,
    conn: &mut PgConn,
    lo: &LargeObjectData,
    created: bool,
    queue: usize,
) -> Result<Restored> {
    let (tx, mut rx) = mpsc::channel::<Chunk>(queue.max(1));
    let max = lo.chunk_size;
    let reader = data::read_location(repo, &lo.location, move |r| {
        let mut rows = ChunkReader::new(r, max);
        let mut n = 0u64;
        while let Some(c) = rows.next_chunk()? {
            n += 1;
            if tx.blocking_send(c).is_err() {
                break;
            }
        }
        Ok(n)
    });
    let write = async move {
        let mut done = Restored::default();
        let mut last: Option<u32> = None;
        while let Some(c) = rx.recv().await {
            if last != Some(c.oid) {
                if last.is_some_and(|l| l > c.oid) {
                    return Err(bad("the objects are out of order"));
                }
                last = Some(c.oid);
                done.objects += 1;
                if !created {
                    conn.run(
                        &format!("preparing large object {}", c.oid),
                        &prepare_sql(c.oid),
                    )
                    .await?;
                }
            }
            conn.run(&format!("writing large object {}", c.oid), &put_sql(&c))
                .await?;
            done.bytes += c.data.len() as u64;
        }
        Ok(done)
    };
    let (read, written) = tokio::join!(reader, write);
    // A stream error says why the writes stopped; else the write's error.
    let rows = read?;
    let done = written?;
    if rows != lo.chunks {
        return Err(bad(format!(
            "it holds {rows} chunks, the record says {}",
            lo.chunks
        )));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(rows: &[(u32, i64, &[u8])]) -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend_from_slice(&0i32.to_be_bytes());
        v.extend_from_slice(&0i32.to_be_bytes());
        for (oid, off, data) in rows {
            v.extend_from_slice(&3i16.to_be_bytes());
            v.extend_from_slice(&4i32.to_be_bytes());
            v.extend_from_slice(&oid.to_be_bytes());
            v.extend_from_slice(&8i32.to_be_bytes());
            v.extend_from_slice(&off.to_be_bytes());
            v.extend_from_slice(&(data.len() as i32).to_be_bytes());
            v.extend_from_slice(data);
        }
        v.extend_from_slice(&(-1i16).to_be_bytes());
        v
    }

    fn read_all(bytes: &[u8], max: u64) -> Result<Vec<Chunk>> {
        let mut r = ChunkReader::new(bytes, max);
        let mut out = Vec::new();
        while let Some(c) = r.next_chunk()? {
            out.push(c);
        }
        Ok(out)
    }

    #[test]
    fn rows_parse_back() {
        let s = stream(&[
            (16401, 0, b"hello"),
            (16401, 5, b""),
            (3_000_000_000, 0, b"x"),
        ]);
        let rows = read_all(&s, 8).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].oid, 16401);
        assert_eq!(&rows[0].data[..], b"hello");
        assert_eq!(rows[1].offset, 5);
        assert_eq!(rows[2].oid, 3_000_000_000, "OIDs above 2^31 stay unsigned");
        assert_eq!(read_all(&stream(&[]), 8).unwrap(), vec![]);
    }

    #[test]
    fn damaged_streams_are_refused() {
        let s = stream(&[(16401, 0, b"hello")]);
        let integrity = |r: Result<Vec<Chunk>>| {
            let e = r.unwrap_err();
            assert_eq!(e.exit_code(), crate::error::ExitCode::Integrity, "{e}");
            e.to_string()
        };
        assert!(integrity(read_all(&s, 4)).contains("more than the 4"));
        assert!(integrity(read_all(&s[..s.len() - 4], 8)).contains("ends in the middle"));
        let mut wrong = s.clone();
        wrong[0] = b'X';
        assert!(integrity(read_all(&wrong, 8)).contains("signature"));
        let mut null = s.clone();
        // The OID's length (after signature, flags, extension, field count).
        null[21..25].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(integrity(read_all(&null, 8)).contains("NULL"));
    }

    #[test]
    fn statements_quote_what_they_write() {
        let c = Chunk {
            oid: 42,
            offset: 262144,
            data: Bytes::from_static(b"\x00'\\"),
        };
        assert_eq!(
            put_sql(&c),
            "SELECT pg_catalog.lo_put('42', 262144, '\\x00275c'::pg_catalog.bytea)"
        );
        assert!(prepare_sql(42).starts_with("DO $"));
        assert!(copy_out_sql(1024).contains("lo_get(l.oid, c.off, 1024)"));
    }
}
