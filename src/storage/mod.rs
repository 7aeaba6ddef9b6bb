//! Object storage: one trait, with a filesystem backend and an S3 backend.
//!
//! Keys are relative, `/`-separated paths (`seg-1/wal/0000000100000000/...`).
//! Every backend promises the same things:
//! - `put` is atomic and durable: when it returns `Ok`, the whole object is
//!   stored (fsync + rename on a filesystem, a completed upload on S3); when
//!   it fails, no object (and no partial object) is visible under the key.
//! - `put_new` never replaces an object that is there when it starts
//!   (`StorageError::AlreadyExists`); on a filesystem not even one that
//!   appears during the upload (the final step is a link(2), which fails
//!   if the name exists). S3 sends `If-None-Match: *`, which AWS honours
//!   and Garage ignores: see `S3Storage::put_new`.
//! - `get` of a missing key is `StorageError::NotFound`.
//! - `list` is recursive under a prefix and returns keys relative to the
//!   storage root, in lexicographic order.

pub mod config;
mod fs;
mod s3;

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

pub use fs::FsStorage;
pub use s3::S3Storage;

/// A stream of object bytes, as uploaded or downloaded.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// When the object was stored, when the backend says (garbage
    /// collection spares objects younger than its grace period).
    pub modified: Option<std::time::SystemTime>,
}

/// An upload that was started and never finished: an S3 multipart upload
/// neither completed nor aborted, or a filesystem temp file left by a
/// killed writer. It is not an object (`list` never shows it), but it
/// takes space until `delete garbage` aborts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incomplete {
    /// The key the upload was for (a filesystem temp file: its own key).
    pub key: String,
    /// The backend's handle (the S3 upload id; empty on a filesystem).
    pub id: String,
    pub started: Option<std::time::SystemTime>,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {key} not found in {location}")]
    NotFound { key: String, location: String },
    #[error("{op} {key} in {location}: {source}")]
    Io {
        op: &'static str,
        key: String,
        location: String,
        #[source]
        source: io::Error,
    },
    #[error("{op} {key} in {location}: {message}")]
    Remote {
        op: &'static str,
        key: String,
        location: String,
        message: String,
    },
    #[error("object {key} already exists in {location}")]
    AlreadyExists { key: String, location: String },
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("storage configuration: {0}")]
    Config(String),
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }
}

#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Stores `body` under `key`, atomically and durably; returns the number
    /// of bytes stored. An error in `body` aborts the upload and leaves
    /// nothing under `key`. Overwrites an existing object.
    async fn put(&self, key: &str, body: ByteStream) -> Result<u64, StorageError>;

    /// Stores `body` under `key` like `put`, unless an object is there:
    /// then `StorageError::AlreadyExists` and the object is left as it is
    /// (see the module documentation for what each backend guarantees
    /// when two uploads race).
    async fn put_new(&self, key: &str, body: ByteStream) -> Result<u64, StorageError>;

    /// Streams the object's bytes.
    async fn get(&self, key: &str) -> Result<ByteStream, StorageError>;

    /// Streams `length` bytes of the object from `offset` (a ranged read).
    /// A range beyond the object's end yields fewer bytes. The default reads
    /// from the start and skips; backends override it with a real ranged
    /// read.
    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream, StorageError> {
        let stream = self.get(key).await?;
        Ok(slice_stream(stream, offset, length))
    }

    /// The object's size, or `None` when it does not exist.
    async fn head(&self, key: &str) -> Result<Option<u64>, StorageError>;

    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError>;

    /// The names one level below `prefix` (empty or ending in '/') that
    /// hold at least one object, sorted: `seg0` for `seg0/wal/...`. This
    /// default lists every object below `prefix`; the storages override it
    /// with a listing whose size does not grow with the objects.
    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Ok(dirs_of(
            prefix,
            self.list(prefix).await?.iter().map(|o| o.key.as_str()),
        ))
    }

    /// Removes the object; removing a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// Where this storage is, for messages (no secrets).
    fn location(&self) -> String;

    /// The unfinished uploads under `prefix` (see [`Incomplete`]).
    async fn list_incomplete(&self, _prefix: &str) -> Result<Vec<Incomplete>, StorageError> {
        Ok(Vec::new())
    }

    /// Aborts an unfinished upload (gone already is not an error).
    async fn abort_incomplete(&self, _upload: &Incomplete) -> Result<(), StorageError> {
        Ok(())
    }

    /// Makes the place a new repository goes (`repo-init`): the
    /// directory on a filesystem; nothing on S3, whose bucket must exist.
    async fn create_root(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

pub type DynStorage = Arc<dyn Storage>;

/// Wraps an in-memory buffer as a one-item body stream.
pub fn body_from_bytes(data: impl Into<Bytes>) -> ByteStream {
    let data = data.into();
    Box::pin(futures_util::stream::once(async move { Ok(data) }))
}

/// The bytes `offset..offset + length` of a stream.
pub fn slice_stream(stream: ByteStream, offset: u64, length: u64) -> ByteStream {
    use futures_util::StreamExt;
    let mut skip = offset;
    let mut left = length;
    Box::pin(stream.filter_map(move |item| {
        let out = match item {
            Err(e) => Some(Err(e)),
            Ok(mut chunk) => {
                let n = chunk.len() as u64;
                if skip >= n {
                    skip -= n;
                    None
                } else {
                    let _ = chunk.split_to(skip as usize);
                    skip = 0;
                    if left == 0 {
                        None
                    } else {
                        if chunk.len() as u64 > left {
                            chunk.truncate(left as usize);
                        }
                        left -= chunk.len() as u64;
                        Some(Ok(chunk))
                    }
                }
            }
        };
        std::future::ready(out)
    }))
}

/// Reads a whole object into memory (for small objects: metadata, manifests).
pub async fn get_bytes(storage: &dyn Storage, key: &str) -> Result<Vec<u8>, StorageError> {
    use futures_util::TryStreamExt;
    let mut stream = storage.get(key).await?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.try_next().await.map_err(|e| StorageError::Io {
        op: "read",
        key: key.to_string(),
        location: storage.location(),
        source: e,
    })? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// Checks that a key is a clean relative path: no empty, `.` or `..`
/// components, no leading `/`, no backslashes or NUL bytes.
/// The distinct names one level below `prefix` among `keys` (keys with a
/// '/' after the prefix), sorted.
pub fn dirs_of<'a>(prefix: &str, keys: impl Iterator<Item = &'a str>) -> Vec<String> {
    let dirs: std::collections::BTreeSet<&str> = keys
        .filter_map(|k| k.strip_prefix(prefix)?.split_once('/').map(|(d, _)| d))
        .filter(|d| !d.is_empty())
        .collect();
    dirs.into_iter().map(str::to_string).collect()
}

/// A prefix for [`Storage::list_dirs`]: empty, or a valid key followed
/// by '/'.
pub fn validate_dir_prefix(prefix: &str) -> Result<(), StorageError> {
    if prefix.is_empty() {
        return Ok(());
    }
    match prefix.strip_suffix('/') {
        Some(dir) => validate_key(dir),
        None => Err(StorageError::InvalidKey {
            key: prefix.to_string(),
            reason: "a directory prefix must end with '/'",
        }),
    }
}

pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let bad = |reason| {
        Err(StorageError::InvalidKey {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.contains('\\') || key.contains('\0') {
        return bad("contains a backslash or NUL byte");
    }
    for part in key.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return bad("has an empty, '.' or '..' component");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        assert!(validate_key("seg-1/wal/0000000100000000/000000010000000000000001").is_ok());
        for bad in ["", "/abs", "a//b", "a/../b", "a/./b", "a/", "a\\b", "a\0b"] {
            assert!(validate_key(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
