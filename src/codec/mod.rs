//! Compression + authenticated encryption as one streaming pipeline.
//!
//! Writing: plain bytes → compressor → chunker/sealer → output. Each object
//! starts with a [`header::Header`]; the body is a sequence of chunks, each
//! framed as a `u32` (payload length, top bit set on the last chunk) and its
//! payload: XChaCha20-Poly1305 STREAM ciphertext when encrypted, else the
//! data and a CRC32. The per-object key is derived from the master key, a
//! random salt and the object's name, so objects cannot be swapped; the
//! header is the associated data of every chunk. Reading tells a wrong key,
//! a damaged chunk and a missing last chunk apart.

mod compression;
mod header;
mod key;
mod object;
mod slice;
mod stream;

use std::io;
use std::sync::Arc;

pub use compression::{Compression, FinishWrite};
pub use header::Header;
pub use key::{KdfParams, Key, KeyIdentity};
pub use object::{ObjectReader, ObjectWriter};

/// Default plain bytes per chunk (256 KiB).
pub const DEFAULT_CHUNK_LOG2: u8 = 18;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{name}: not a cbdr object (bad magic bytes): it was not written by cbdr, or its start is damaged")]
    NotAnObject { name: String },
    #[error("{name}: object format {version} is newer than this cbdr understands: upgrade cbdr to read it")]
    UnsupportedVersion { name: String, version: u8 },
    #[error("{name}: unknown {what} id {id} in the object header: the header is damaged, or a newer cbdr wrote it")]
    UnknownId {
        name: String,
        what: &'static str,
        id: u8,
    },
    #[error("{name}: the object is encrypted but no key is configured: set [encryption] key_file in the config or CBDR_ENCRYPTION_KEY")]
    KeyRequired { name: String },
    #[error("{name}: the object is not encrypted but an encryption key is configured: refusing it, as it may have been replaced; if the repository was written before encryption was turned on, read it without a key")]
    NotEncrypted { name: String },
    #[error("{name}: wrong encryption key: the object was written with a different key (check [encryption] key_file / CBDR_ENCRYPTION_KEY)")]
    WrongKey { name: String },
    #[error("{name}: wrong kind of key: the object was written with {written_with}, the configured key is {given}")]
    WrongKeyKind {
        name: String,
        written_with: &'static str,
        given: &'static str,
    },
    #[error("{name}: corrupted: chunk {chunk} {detail}; the stored object is damaged or was tampered with (restore it from another copy)")]
    Corrupt {
        name: String,
        chunk: u64,
        detail: String,
    },
    #[error("{name}: truncated: the object ends after {bytes} bytes, before its last chunk; it was cut short in storage or in transfer")]
    Truncated { name: String, bytes: u64 },
    #[error("encryption key: {0}")]
    BadKey(String),
    /// The configured key is not the one the repository records.
    #[error("{location}: {detail}; nothing was written. Use the repository's key ([encryption] key_file or CBDR_ENCRYPTION_KEY), or check the storage settings if this is not the repository you meant")]
    KeyMismatch { location: String, detail: String },
    #[error("{name}: {source}")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
}

impl CodecError {
    pub(crate) fn io(name: &str, source: io::Error) -> CodecError {
        CodecError::Io {
            name: name.to_string(),
            source,
        }
    }

    /// Recovers a `CodecError` carried through an `io::Error` (the pipeline's
    /// `Read`/`Write` impls carry theirs that way), or wraps a plain I/O error.
    pub fn from_io(e: io::Error, name: &str) -> CodecError {
        if e.get_ref().is_some_and(|inner| inner.is::<CodecError>()) {
            return *e.into_inner().unwrap().downcast::<CodecError>().unwrap();
        }
        CodecError::io(name, e)
    }

    pub(crate) fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    /// True for errors that mean the stored data cannot be trusted (as
    /// opposed to a missing key or an I/O failure).
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            CodecError::NotAnObject { .. }
                | CodecError::UnknownId { .. }
                | CodecError::NotEncrypted { .. }
                | CodecError::WrongKey { .. }
                | CodecError::WrongKeyKind { .. }
                | CodecError::Corrupt { .. }
                | CodecError::Truncated { .. }
        )
    }
}

/// What new objects are written with, and the key to read them.
#[derive(Debug, Clone)]
pub struct Codec {
    pub compression: Compression,
    pub level: i32,
    pub key: Option<Arc<Key>>,
    pub chunk_log2: u8,
}

impl Codec {
    pub fn new(compression: Compression, level: Option<i32>, key: Option<Arc<Key>>) -> Codec {
        Codec {
            compression,
            level: level.unwrap_or_else(|| compression.default_level()),
            key,
            chunk_log2: DEFAULT_CHUNK_LOG2,
        }
    }

    /// Starts writing the object `name` into `out`.
    pub fn writer<W: io::Write + Send + 'static>(
        &self,
        out: W,
        name: &str,
    ) -> Result<ObjectWriter<W>, CodecError> {
        ObjectWriter::new(out, name, self)
    }

    /// Starts reading the object `name` from `input`.
    pub fn reader<R: io::Read + Send + 'static>(
        &self,
        input: R,
        name: &str,
    ) -> Result<ObjectReader, CodecError> {
        ObjectReader::new(input, name, self.key.clone())
    }

    /// Encodes a whole buffer (small objects).
    pub fn encode(&self, name: &str, data: &[u8]) -> Result<Vec<u8>, CodecError> {
        let mut w = self.writer(Vec::with_capacity(data.len() / 2 + 128), name)?;
        io::Write::write_all(&mut w, data).map_err(|e| CodecError::from_io(e, name))?;
        w.finish()
    }

    /// Decodes a whole buffer (small objects).
    pub fn decode(&self, name: &str, data: Vec<u8>) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        self.decode_into(name, data, &mut out)?;
        Ok(out)
    }

    /// Decodes a whole buffer into `out` (cleared first): a caller that
    /// decodes many objects reuses one buffer rather than growing a new
    /// one each time.
    pub fn decode_into(
        &self,
        name: &str,
        data: Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        out.clear();
        let mut r = self.reader(io::Cursor::new(data), name)?;
        io::Read::read_to_end(&mut r, out).map_err(|e| CodecError::from_io(e, name))?;
        Ok(())
    }

    /// Decodes the object `name` held whole in `input`, in place (`input`
    /// is overwritten): the same checks as [`Codec::decode`] without its
    /// copies and allocations. The plain bytes are `out[..n]` for the
    /// returned `n`; `out` may be left longer (it is reused, not zeroed
    /// again, by the next call).
    pub fn decode_in_place(
        &self,
        name: &str,
        input: &mut [u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, CodecError> {
        slice::decode_in_place(input, name, self.key.clone(), out)
    }
}

#[cfg(test)]
mod tests;

/// Random bytes from the OS.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    key::random()
}
