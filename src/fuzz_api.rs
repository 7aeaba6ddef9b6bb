//! Entry points of the parsers that read bytes from storage or the network,
//! one per fuzz target (`fuzz/fuzz_targets/`), also replayed over the
//! committed corpus by `tests/fuzz_corpus.rs`. Each takes arbitrary bytes
//! and drives the real parser as cbdr uses it; none may panic. Not an API.

use std::io::{Cursor, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::cluster::proto::{read_frame, AgentMessage, ClientMessage};
use crate::codec::{Codec, Compression, Header, Key};
use crate::logical::record::{rebuild_entries, LogicalBackupRecord, StoredStats, StoredToc};
use crate::pg::replication::{parse_next_timeline, parse_wal_message, TimelineHistory, WalMessage};
use crate::pg::{Lsn, TimelineId, WalFile};
use crate::physical::backup::{parse_copy_data, parse_size_setting, BaseBackupMessage};
use crate::physical::manifest::Manifest;
use crate::physical::tar_split::{piece_of, Step, TarSplitter};
use crate::repo::catalog::{validate_restore_point_name, BackupRecord, RestorePointRecord};

/// The name objects are read under (and the corpus's were written under:
/// with a key, the name is bound to the object).
pub const OBJECT_NAME: &str = "fuzz/object";
/// The raw key of [`codec_keyed`] (and of its corpus).
pub const RAW_KEY: &str = "4242424242424242424242424242424242424242424242424242424242424242";
/// Plain bytes read from one object at most: a small input may decompress
/// to far more, and a restore streams it rather than holding it.
const MAX_PLAIN: u64 = 64 << 20;
/// WAL segment size the names are checked with.
const SEGMENT: u64 = 16 << 20;

/// The codec [`codec_keyed`] reads with.
pub fn keyed_codec() -> &'static Codec {
    static CODEC: OnceLock<Codec> = OnceLock::new();
    CODEC.get_or_init(|| {
        let key = Key::from_text(RAW_KEY).expect("a valid raw key");
        Codec::new(Compression::None, None, Some(Arc::new(key)))
    })
}

/// Reads an object to its end as a restore does: streamed, in 64 KiB reads.
fn read_object(codec: &Codec, data: &[u8]) {
    let Ok(mut r) = codec.reader(Cursor::new(data.to_vec()), OBJECT_NAME) else {
        return;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    while let Ok(n) = r.read(&mut buf) {
        total += n as u64;
        if n == 0 || total > MAX_PLAIN {
            return;
        }
    }
}

/// An object read without a key: header, CRC32 chunk frames, decompressor.
pub fn codec_plain(data: &[u8]) {
    let _ = Header::read(data, OBJECT_NAME);
    read_object(&Codec::new(Compression::None, None, None), data);
}

/// An object read with [`RAW_KEY`]: the header's encryption fields, the key
/// check, XChaCha20-Poly1305 STREAM chunks.
pub fn codec_keyed(data: &[u8]) {
    read_object(keyed_codec(), data);
}

/// JSON records read back from the repository, and the server's
/// `backup_manifest`, with what `list` and a restore compute from them.
pub fn records(data: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<BackupRecord>(data) {
        let _ = (r.plain_bytes(), r.stored_bytes(), r.server_compressed());
    }
    if let Ok(r) = serde_json::from_slice::<RestorePointRecord>(data) {
        let _ = validate_restore_point_name(&r.name);
    }
    if let Ok(r) = serde_json::from_slice::<LogicalBackupRecord>(data) {
        // As the repository reads it: checked, then used.
        if r.check("fuzz").is_ok() {
            let _ = r.ts();
        }
        let _ = (r.plain_bytes(), r.stored_bytes(), r.rows());
        let _ = r.own_tables().count();
    }
    let _ = serde_json::from_slice::<StoredStats>(data);
    let _ = Manifest::parse(data);
}

/// A logical backup's TOC and `metadata.sql`: the TOC's JSON, a NUL byte,
/// the SQL.
pub fn logical_toc(data: &[u8]) {
    let (toc, sql) = split_at_nul(data);
    if let Ok(toc) = serde_json::from_slice::<StoredToc>(toc) {
        let _ = rebuild_entries(sql, &toc, "fuzz");
    }
}

/// Agent protocol frames, read as the agent reads a client's and as the
/// coordinator reads an agent's, until the first error.
pub fn agent_frames(data: &[u8]) {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
    });
    rt.block_on(async {
        let mut input = data;
        while let Ok(m) = read_frame::<_, ClientMessage>(&mut input).await {
            let _ = m.kind();
            if let ClientMessage::Restore(r) = &m {
                let _ = r.target.to_target();
            }
        }
        let mut input = data;
        while read_frame::<_, AgentMessage>(&mut input).await.is_ok() {}
    });
}

/// START_REPLICATION's CopyData (XLogData, keepalive), and the row ending
/// a historic timeline (its fields separated by NUL; a lone 0xFF is NULL).
pub fn replication(data: &[u8]) {
    if let Ok(WalMessage::XLogData(x)) = parse_wal_message(Bytes::copy_from_slice(data)) {
        let _ = x.end();
    }
    let values: Vec<Option<Bytes>> = data
        .split(|&b| b == 0)
        .map(|v| (v != [0xff]).then(|| Bytes::copy_from_slice(v)))
        .collect();
    let _ = parse_next_timeline(&values);
}

/// BASE_BACKUP's reply: CopyData messages, each a u16 big-endian length and
/// its payload; archive bytes go through the tar splitter as a backup's do.
/// The whole input is also read as a size setting (`SHOW wal_segment_size`).
pub fn base_backup(data: &[u8]) {
    let _ = parse_size_setting(&String::from_utf8_lossy(data));
    let mut splitter: Option<TarSplitter> = None;
    let mut rest = data;
    while rest.len() >= 2 {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize;
        let end = (2 + len).min(rest.len());
        let message = Bytes::copy_from_slice(&rest[2..end]);
        rest = &rest[end..];
        match parse_copy_data(message) {
            BaseBackupMessage::NewArchive { .. } => splitter = Some(TarSplitter::new(1024)),
            BaseBackupMessage::Data(mut bytes) => {
                let Some(s) = splitter.as_mut() else {
                    continue;
                };
                while !bytes.is_empty() {
                    if s.next(&mut bytes).is_err() {
                        return;
                    }
                    let _ = s.at_boundary();
                }
            }
            BaseBackupMessage::Manifest => splitter = None,
            BaseBackupMessage::Progress(_) | BaseBackupMessage::Ignored => {}
        }
    }
}

/// A tar stream split as a backup splits it: the first byte picks the piece
/// size (a multiple of 512, 0: never cut), the second how the stream is cut
/// into messages; each part is then read as a restore reads it.
pub fn tar_split(data: &[u8]) {
    let [piece, step, tar @ ..] = data else {
        return;
    };
    let piece_size = u64::from(piece % 8) * 512;
    let step = usize::from(*step).max(1) * 7;
    let mut splitter = TarSplitter::new(piece_size);
    let mut parts = vec![Vec::new()];
    for chunk in tar.chunks(step) {
        let mut bytes = Bytes::copy_from_slice(chunk);
        while !bytes.is_empty() {
            let part = parts.last_mut().expect("one part at least");
            match splitter.next(&mut bytes) {
                Ok(Some(Step::Pass(b))) => part.extend_from_slice(&b),
                Ok(Some(Step::Header(h))) => part.extend_from_slice(&h),
                Ok(None) => {}
                Err(_) => return,
            }
            if splitter.at_boundary() && part.len() >= 2048 {
                parts.push(Vec::new());
            }
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    for part in parts {
        let mut archive = tar::Archive::new(&part[..]);
        let Ok(entries) = archive.entries() else {
            continue;
        };
        for entry in entries {
            let Ok(mut entry) = entry else {
                break;
            };
            let _ = entry.path();
            if let Ok(ext) = entry.pax_extensions() {
                let _ = piece_of(ext);
            }
            while matches!(entry.read(&mut buf), Ok(n) if n > 0) {}
        }
    }
}

/// A restore unpacking one decoded part into an empty directory: an
/// optional `backup_manifest` JSON (when the input starts with `{`) and a
/// NUL byte, then the tar stream. The directory is made under
/// `$CBDR_FUZZ_DIR` (else the temporary directory) and removed after.
pub fn restore_tar(data: &[u8]) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (manifest, tar) = if data.first() == Some(&b'{') {
        split_at_nul(data)
    } else {
        (&br#"{"Files":[]}"#[..], data)
    };
    let base = std::env::var_os("CBDR_FUZZ_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!(
        "cbdr-fuzz-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    let _ = crate::physical::restore::unpack_one(tar, &dir, manifest);
    let _ = std::fs::remove_dir_all(&dir);
}

/// WAL file names (as archive_command gives them and a listing of the
/// repository returns them), and timeline history files: the first four
/// bytes are the history's timeline (big-endian), the rest its text.
pub fn wal_names(data: &[u8]) {
    let name = String::from_utf8_lossy(data);
    if let Some(f) = WalFile::parse(&name) {
        assert_eq!(
            WalFile::parse(&f.to_string()).as_ref(),
            Some(&f),
            "a parsed name prints back"
        );
        if let Some(seg) = f.segment() {
            let _ = (seg.next(SEGMENT), seg.start_lsn(SEGMENT), seg.group());
        }
    }
    if let [a, b, c, d, text @ ..] = data {
        let current = TimelineId(u32::from_be_bytes([*a, *b, *c, *d]));
        if let Ok(h) = TimelineHistory::parse(current, text) {
            for e in &h.entries {
                let _ = (h.switchpoint(e.tli), h.timeline_of(e.switchpoint));
                let seg_start = e.switchpoint.segment_start(SEGMENT);
                let _ = h.segment_timeline(seg_start, SEGMENT);
            }
            let _ = h.timeline_of(Lsn(u64::MAX));
        }
    }
}

fn split_at_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}
