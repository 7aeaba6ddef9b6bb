//! Block-format backups (format 4), the ground of delta backups.
//!
//! Each file the server sends is cut into [`BLOCK_SIZE`] blocks, and each
//! block is hashed (SHA-256). A backup stores, per archive:
//!
//! - block packs (`blocks/{ARCHIVE}/{N}.pack`): the blocks this backup
//!   stores, in *extents* (up to [`EXTENT_BLOCKS`] blocks of one file, each
//!   an object of the codec, so authenticated and compressed on its own);
//! - map packs (`maps/{ARCHIVE}/{N}.pack`): one *file map* per entry of the
//!   server's tar stream, in its order: the file's path, size and, for each
//!   block, its hash and the extent that holds it, in this backup or in one
//!   of its chain ([`BackupRecord::chain`](crate::repo::catalog::BackupRecord));
//! - an index (`maps/{ARCHIVE}/index.json`) of every file: the map itself
//!   for a file up to [`SMALL_FILE`], else where its map lies, so that the
//!   next delta finds a file's map by its path (with one ranged read for a
//!   large one), whatever the order the server sends files in.
//!
//! A full backup stores every block. A delta stores a block only when its
//! hash differs from the base's block at the same position of the same
//! file: the decision is the
//! content's, never page LSNs, modification times or append-only counters,
//! so every file of every server comes out right. A restore reads each
//! block from the backup that holds it (see `physical::restore::blocks`).
//!
//! A pack is a sequence of `[u32 LE length][codec object]`; the object at
//! position `seq` of pack `KEY` is encoded under the name `KEY#seq`, so an
//! extent cannot be swapped for another. [`verify_pack`] reads every
//! object of a pack.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::repo::Repo;

pub mod base;
pub mod write;

/// The backup format of block backups (see [`super::backup::BACKUP_FORMAT`]).
pub const BLOCK_FORMAT: u32 = 4;
/// Bytes per block: one PostgreSQL page, so that a delta stores the pages
/// that changed and little else.
pub const BLOCK_SIZE: usize = 8192;
/// Blocks per extent at most (1 MiB).
pub const EXTENT_BLOCKS: usize = 128;
/// Blocks per restore job (16 MiB of a file): an extent never holds blocks
/// of two chunks, so each job reads its own extents.
pub const CHUNK_BLOCKS: u64 = 2048;
/// The maps of files up to this size are in the index itself (the next
/// delta reads them with the index); larger files' maps are read one by
/// one.
pub const SMALL_FILE: u64 = 32 * 1024;
/// Bytes of a pack before the next one is started.
pub const PACK_TARGET: usize = 16 * 1024 * 1024;

pub type Hash = [u8; 32];

pub fn hash(block: &[u8]) -> Hash {
    Sha256::digest(block).into()
}

/// One extent: object `seq` of block pack `pack` of the backup at index
/// `backup` of the chain, `len` bytes from `offset` in the pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExtentRef {
    #[serde(rename = "b")]
    pub backup: u16,
    #[serde(rename = "p")]
    pub pack: u32,
    #[serde(rename = "o")]
    pub offset: u64,
    #[serde(rename = "q")]
    pub seq: u32,
    #[serde(rename = "l")]
    pub len: u32,
}

/// Blocks `first..first + count` of a file are the blocks at positions
/// `at..at + count` of an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    #[serde(rename = "e")]
    pub extent: ExtentRef,
    #[serde(rename = "a")]
    pub at: u32,
    #[serde(rename = "f")]
    pub first: u64,
    #[serde(rename = "n")]
    pub count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Dir,
    File,
    Link,
}

/// One entry of an archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMap {
    pub path: String,
    pub kind: Kind,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// In block order, covering every block once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<Run>,
    /// Each block's SHA-256, in block order.
    #[serde(default, with = "hex_hashes", skip_serializing_if = "Vec::is_empty")]
    pub hashes: Vec<Hash>,
}

mod hex_hashes {
    use super::Hash;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[Hash], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h.concat()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Hash>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(text).map_err(serde::de::Error::custom)?;
        if bytes.len() % 32 != 0 {
            return Err(serde::de::Error::custom("hashes are not 32-byte values"));
        }
        Ok(bytes
            .chunks(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect())
    }
}

/// Blocks of a file of `size` bytes.
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE as u64)
}

/// Length of block `i` of a file of `size` bytes.
pub fn block_len(size: u64, i: u64) -> usize {
    (size - i * BLOCK_SIZE as u64).min(BLOCK_SIZE as u64) as usize
}

impl FileMap {
    /// Checks that the map describes the file consistently: one hash per
    /// block, runs in order covering every block once, each inside its
    /// extent's blocks, backups inside the chain.
    pub fn check(&self, chain_len: usize) -> std::result::Result<(), String> {
        let blocks = block_count(self.size);
        if self.kind != Kind::File {
            if self.size != 0 || !self.runs.is_empty() || !self.hashes.is_empty() {
                return Err(format!("{}: a {:?} with data", self.path, self.kind));
            }
            return Ok(());
        }
        if self.hashes.len() as u64 != blocks {
            return Err(format!(
                "{}: {} hashes for {blocks} blocks",
                self.path,
                self.hashes.len()
            ));
        }
        let mut next = 0u64;
        for r in &self.runs {
            if r.first != next
                || r.count == 0
                || r.at as usize + r.count as usize > EXTENT_BLOCKS
                || r.extent.backup as usize >= chain_len
            {
                return Err(format!("{}: bad block run at block {}", self.path, r.first));
            }
            next += r.count as u64;
        }
        if next != blocks {
            return Err(format!(
                "{}: its runs cover {next} of its {blocks} blocks",
                self.path
            ));
        }
        Ok(())
    }

    /// Where block `i` is: its extent and position there.
    pub fn locate(&self, i: u64) -> Option<(ExtentRef, u32)> {
        let at = self.runs.partition_point(|r| r.first <= i);
        let r = self.runs.get(at.checked_sub(1)?)?;
        (i < r.first + r.count as u64).then(|| (r.extent, r.at + (i - r.first) as u32))
    }
}

/// Where the map of a file lies: object `seq` of map pack `pack`; for a
/// small file, the map itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub path: String,
    #[serde(default)]
    pub pack: u32,
    #[serde(default)]
    pub seq: u32,
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub len: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<FileMap>,
}

/// The name an object of a pack is encoded under.
pub fn object_name(pack_key: &str, seq: u32) -> String {
    format!("{pack_key}#{seq}")
}

/// Splits a pack into its objects: `(seq, offset, bytes)`.
pub fn pack_objects(key: &str, pack: &[u8]) -> Result<Vec<(u32, u64, std::ops::Range<usize>)>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < pack.len() {
        let len = pack
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| Error::Integrity(format!("{key}: truncated at byte {at}")))?;
        let start = at + 4;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= pack.len())
            .ok_or_else(|| Error::Integrity(format!("{key}: truncated at byte {at}")))?;
        out.push((out.len() as u32, start as u64, start..end));
        at = end;
    }
    Ok(out)
}

/// Reads `len` bytes of `key` from `offset`; fewer is an integrity error.
pub async fn read_range(repo: &Repo, key: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
    use futures_util::TryStreamExt;
    let mut stream = repo.storage.get_range(key, offset, len).await?;
    let mut out = Vec::with_capacity(len as usize);
    while let Some(chunk) = stream.try_next().await.map_err(|e| {
        Error::Storage(crate::storage::StorageError::Io {
            op: "read",
            key: key.to_string(),
            location: repo.storage.location(),
            source: e,
        })
    })? {
        out.extend_from_slice(&chunk);
    }
    if out.len() as u64 != len {
        return Err(Error::Integrity(format!(
            "{key} is truncated: {} bytes at {offset}, {len} expected",
            out.len()
        )));
    }
    Ok(out)
}

/// A file map as a map pack stores it: `[u32 LE length][JSON without the
/// hashes][32 bytes per block]` (hex would double the hashes, which do not
/// compress).
pub fn encode_map(map: &FileMap) -> Vec<u8> {
    let header = FileMap {
        hashes: Vec::new(),
        ..map.clone()
    };
    let json = serde_json::to_vec(&header).expect("maps serialize");
    let mut out = Vec::with_capacity(4 + json.len() + 32 * map.hashes.len());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    for h in &map.hashes {
        out.extend_from_slice(h);
    }
    out
}

/// The inverse of [`encode_map`].
pub fn parse_map(bytes: &[u8]) -> std::result::Result<FileMap, String> {
    let len = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or("truncated")?;
    let json = bytes.get(4..4 + len).ok_or("truncated")?;
    let mut map: FileMap = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let hashes = &bytes[4 + len..];
    if !map.hashes.is_empty() || hashes.len() % 32 != 0 {
        return Err("bad hashes".into());
    }
    map.hashes = hashes
        .chunks(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect();
    Ok(map)
}

/// Reads and decodes one file map (`bytes`: the object at `seq` of the
/// map pack `key`).
pub fn decode_map(repo: &Repo, key: &str, seq: u32, bytes: Vec<u8>) -> Result<FileMap> {
    let name = object_name(key, seq);
    let plain = repo.codec.decode(&name, bytes)?;
    parse_map(&plain).map_err(|e| Error::Integrity(format!("{name} is not a valid file map: {e}")))
}

/// Decodes every object of a pack (the codec authenticates each); returns
/// the objects and plain bytes. For `verify`: a pack is not one object.
pub async fn verify_pack(repo: &Repo, key: &str) -> Result<(u64, u64)> {
    let pack = crate::storage::get_bytes(repo.storage.as_ref(), key).await?;
    let codec = repo.codec.clone();
    let key = key.to_string();
    tokio::task::spawn_blocking(move || -> Result<(u64, u64)> {
        let mut plain = 0u64;
        let objects = pack_objects(&key, &pack)?;
        for (seq, _, range) in &objects {
            plain += codec
                .decode(&object_name(&key, *seq), pack[range.clone()].to_vec())?
                .len() as u64;
        }
        Ok((objects.len() as u64, plain))
    })
    .await
    .map_err(|e| Error::Internal(format!("verify task: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(backup: u16, seq: u32) -> ExtentRef {
        ExtentRef {
            backup,
            pack: 0,
            offset: 4,
            seq,
            len: 10,
        }
    }

    #[test]
    fn maps_round_trip_and_locate_blocks() {
        let m = FileMap {
            path: "base/5/1".into(),
            kind: Kind::File,
            size: 3 * BLOCK_SIZE as u64 + 1,
            link: None,
            runs: vec![
                Run {
                    extent: ext(1, 0),
                    at: 0,
                    first: 0,
                    count: 2,
                },
                Run {
                    extent: ext(0, 3),
                    at: 5,
                    first: 2,
                    count: 2,
                },
            ],
            hashes: vec![hash(b"a"), hash(b"b"), hash(b"c"), hash(b"d")],
        };
        m.check(2).unwrap();
        assert!(m.check(1).is_err(), "backup 1 outside a chain of 1");
        let json = serde_json::to_vec(&m).unwrap();
        let back: FileMap = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, m);
        let stored = encode_map(&m);
        assert_eq!(parse_map(&stored).unwrap(), m);
        assert!(parse_map(&stored[..stored.len() - 1]).is_err());
        assert_eq!(m.locate(0), Some((ext(1, 0), 0)));
        assert_eq!(m.locate(1), Some((ext(1, 0), 1)));
        assert_eq!(m.locate(3), Some((ext(0, 3), 6)));
        assert_eq!(m.locate(4), None);
        assert_eq!(block_len(m.size, 3), 1);
        let mut gap = m.clone();
        gap.runs[1].first = 3;
        assert!(gap.check(2).is_err());
        let mut short = m.clone();
        short.hashes.pop();
        assert!(short.check(2).is_err());
    }

    #[test]
    fn packs_split_into_their_objects() {
        let mut pack = Vec::new();
        for obj in [&b"abc"[..], b"", b"defgh"] {
            pack.extend_from_slice(&(obj.len() as u32).to_le_bytes());
            pack.extend_from_slice(obj);
        }
        let objs = pack_objects("k", &pack).unwrap();
        let got: Vec<&[u8]> = objs.iter().map(|(_, _, r)| &pack[r.clone()]).collect();
        assert_eq!(got, [&b"abc"[..], b"", b"defgh"]);
        assert_eq!(objs[2].0, 2);
        assert_eq!(objs[2].1, 4 + 3 + 4 + 4);
        assert!(pack_objects("k", &pack[..pack.len() - 1]).is_err());
    }
}
