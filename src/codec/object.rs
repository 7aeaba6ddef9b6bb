//! The streaming object writer and reader.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use super::header::{Encryption, Header};
use super::key::{self, Key};
use super::stream::Stream;
use super::{Codec, CodecError, FinishWrite};

pub(super) const LAST: u32 = 1 << 31;
pub(super) const TAG_LEN: usize = 16;
pub(super) const CRC_LEN: usize = 4;

/// Writes one object: `Write` the plain bytes, then [`ObjectWriter::finish`].
/// Dropping it without `finish` leaves an object without its last chunk,
/// which every reader refuses as truncated.
pub struct ObjectWriter<W: Write + Send + 'static> {
    inner: Box<dyn FinishWrite<Sealer<W>> + Send>,
    name: String,
    plain_bytes: u64,
}

impl<W: Write + Send + 'static> ObjectWriter<W> {
    pub(super) fn new(mut out: W, name: &str, codec: &Codec) -> Result<Self, CodecError> {
        let (header, cipher) = match &codec.key {
            None => (
                Header {
                    compression: codec.compression,
                    chunk_log2: codec.chunk_log2,
                    encryption: None,
                },
                None,
            ),
            Some(k) => {
                let kdf = k.writer_spec()?;
                let master = k.master(&kdf)?;
                let enc = Encryption {
                    kdf,
                    object_salt: key::random(),
                    nonce_prefix: key::random(),
                    key_check: key::key_check(&master),
                };
                let object_key = key::object_key(&master, &enc.object_salt, name);
                let cipher = Stream::new(&object_key, &enc.nonce_prefix);
                (
                    Header {
                        compression: codec.compression,
                        chunk_log2: codec.chunk_log2,
                        encryption: Some(enc),
                    },
                    Some(cipher),
                )
            }
        };
        let header_bytes = header.encode();
        out.write_all(&header_bytes)
            .map_err(|e| CodecError::io(name, e))?;
        let chunk = header.chunk_size();
        let sealer = Sealer {
            out,
            buf: Vec::with_capacity(chunk + TAG_LEN),
            chunk,
            cipher,
            aad: header_bytes,
            index: 0,
            name: name.to_string(),
        };
        let inner = codec
            .compression
            .encoder(sealer, codec.level)
            .map_err(|e| CodecError::io(name, e))?;
        Ok(ObjectWriter {
            inner,
            name: name.to_string(),
            plain_bytes: 0,
        })
    }

    /// Plain bytes written so far.
    pub fn plain_bytes(&self) -> u64 {
        self.plain_bytes
    }

    /// Flushes the compressor and seals the last chunk; returns the output.
    pub fn finish(self) -> Result<W, CodecError> {
        let name = self.name;
        let sealer = self
            .inner
            .finish()
            .map_err(|e| CodecError::from_io(e, &name))?;
        sealer.finish()
    }
}

impl<W: Write + Send + 'static> Write for ObjectWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.plain_bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Cuts the compressed stream into chunks and seals each.
pub(super) struct Sealer<W: Write> {
    out: W,
    buf: Vec<u8>,
    chunk: usize,
    cipher: Option<Stream>,
    aad: Vec<u8>,
    index: u64,
    name: String,
}

impl<W: Write> Sealer<W> {
    fn seal(&mut self, last: bool) -> Result<(), CodecError> {
        let failed = |name: &str| CodecError::io(name, io::Error::other("encryption failed"));
        if let Some(cipher) = self.cipher.as_mut() {
            cipher
                .seal(&self.aad, &mut self.buf, last)
                .map_err(|_| failed(&self.name))?;
        } else {
            let crc = chunk_crc(self.index, last, &self.buf);
            self.buf.extend_from_slice(&crc.to_le_bytes());
        }
        let frame = self.buf.len() as u32 | if last { LAST } else { 0 };
        self.out
            .write_all(&frame.to_le_bytes())
            .and_then(|_| self.out.write_all(&self.buf))
            .map_err(|e| CodecError::io(&self.name, e))?;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }

    fn finish(mut self) -> Result<W, CodecError> {
        self.seal(true)?;
        self.out
            .flush()
            .map_err(|e| CodecError::io(&self.name, e))?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let take = (self.chunk - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == self.chunk {
                self.seal(false).map_err(CodecError::into_io)?;
            }
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

pub(super) fn chunk_crc(index: u64, last: bool, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(&[u8::from(last)]);
    h.update(data);
    h.finalize()
}

/// Reads one object's plain bytes. Every error is a [`CodecError`] carried
/// in the `io::Error` (see [`CodecError::from_io`]). End of stream is only
/// reported after the last chunk was authenticated and nothing follows it.
pub struct ObjectReader {
    inner: Box<dyn Read + Send>,
    opener: Arc<Mutex<Opener>>,
    header: Header,
    name: String,
}

impl ObjectReader {
    pub(super) fn new<R: Read + Send + 'static>(
        mut input: R,
        name: &str,
        key: Option<Arc<Key>>,
    ) -> Result<ObjectReader, CodecError> {
        let (header, header_bytes) = Header::read(&mut input, name)?;
        let cipher = open_cipher(&header, key, name)?;
        let chunk = header.chunk_size();
        let opener = Arc::new(Mutex::new(Opener {
            input: Box::new(input),
            buf: Vec::with_capacity(chunk + TAG_LEN),
            pos: 0,
            done: false,
            max_payload: chunk + TAG_LEN.max(CRC_LEN),
            cipher,
            bytes: header_bytes.len() as u64,
            aad: header_bytes,
            index: 0,
            name: name.to_string(),
        }));
        let inner = header
            .compression
            .decoder(SharedOpener(opener.clone()))
            .map_err(|e| CodecError::from_io(e, name))?;
        Ok(ObjectReader {
            inner,
            opener,
            header,
            name: name.to_string(),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    fn corrupt(&self, detail: String) -> io::Error {
        let chunk = self.opener.lock().unwrap().index;
        CodecError::Corrupt {
            name: self.name.clone(),
            chunk,
            detail,
        }
        .into_io()
    }
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.get_ref().is_some_and(|i| i.is::<CodecError>()) => return Err(e),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => return Err(self.corrupt(format!("does not decompress: {e}"))),
        };
        if n == 0 && !buf.is_empty() {
            // The decompressor is at its end: the chunk stream must be too,
            // with its last chunk authenticated.
            let mut scratch = [0u8; 64];
            let extra = self.opener.lock().unwrap().read(&mut scratch)?;
            if extra != 0 {
                return Err(
                    self.corrupt("holds data after the end of the compressed stream".into())
                );
            }
        }
        Ok(n)
    }
}

struct Opener {
    input: Box<dyn Read + Send>,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
    max_payload: usize,
    cipher: Option<Stream>,
    aad: Vec<u8>,
    index: u64,
    bytes: u64,
    name: String,
}

impl Opener {
    /// Fills `buf` completely; `Ok(false)` at a clean end of input before
    /// any byte was read.
    fn fill(&mut self, len: usize) -> Result<bool, CodecError> {
        let start = self.buf.len();
        self.buf.resize(start + len, 0);
        let mut filled = 0;
        while filled < len {
            match self.input.read(&mut self.buf[start + filled..]) {
                Ok(0) if filled == 0 => {
                    self.buf.truncate(start);
                    return Ok(false);
                }
                Ok(0) => {
                    return Err(CodecError::Truncated {
                        name: self.name.clone(),
                        bytes: self.bytes + filled as u64,
                    })
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CodecError::from_io(e, &self.name)),
            }
        }
        self.bytes += len as u64;
        Ok(true)
    }

    fn next_chunk(&mut self) -> Result<(), CodecError> {
        self.buf.clear();
        self.pos = 0;
        let truncated = |s: &Self| CodecError::Truncated {
            name: s.name.clone(),
            bytes: s.bytes,
        };
        if !self.fill(4)? {
            return Err(truncated(self));
        }
        let frame = u32::from_le_bytes(self.buf[..4].try_into().unwrap());
        self.buf.clear();
        let last = frame & LAST != 0;
        let len = (frame & !LAST) as usize;
        let corrupt = |s: &Self, detail: String| CodecError::Corrupt {
            name: s.name.clone(),
            chunk: s.index,
            detail,
        };
        if len > self.max_payload {
            return Err(corrupt(self, format!("has an impossible length {len}")));
        }
        if len > 0 && !self.fill(len)? {
            return Err(truncated(self));
        }
        match self.cipher.as_mut() {
            Some(cipher) => {
                if cipher.open(&self.aad, &mut self.buf, last).is_err() {
                    return Err(corrupt(self, "fails authentication".into()));
                }
            }
            None => {
                if self.buf.len() < CRC_LEN {
                    return Err(corrupt(self, "is shorter than its checksum".into()));
                }
                let data_len = self.buf.len() - CRC_LEN;
                let stored = u32::from_le_bytes(self.buf[data_len..].try_into().unwrap());
                self.buf.truncate(data_len);
                if chunk_crc(self.index, last, &self.buf) != stored {
                    return Err(corrupt(self, "fails its CRC32 checksum".into()));
                }
            }
        }
        self.index += 1;
        if last {
            self.done = true;
            // Nothing may follow the last chunk.
            let mut probe = [0u8; 1];
            loop {
                match self.input.read(&mut probe) {
                    Ok(0) => break,
                    Ok(_) => return Err(corrupt(self, "is followed by unexpected data".into())),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(CodecError::from_io(e, &self.name)),
                }
            }
        }
        Ok(())
    }

    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.buf.len() {
                let n = out.len().min(self.buf.len() - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done || out.is_empty() {
                return Ok(0);
            }
            self.next_chunk().map_err(CodecError::into_io)?;
        }
    }
}

struct SharedOpener(Arc<Mutex<Opener>>);

impl Read for SharedOpener {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.0.lock().unwrap().read(out)
    }
}

/// The cipher that opens the chunks of an object with `header`, checked
/// against the configured key.
pub(super) fn open_cipher(
    header: &Header,
    key: Option<Arc<Key>>,
    name: &str,
) -> Result<Option<Stream>, CodecError> {
    Ok(match (&header.encryption, key) {
        (None, None) => None,
        (Some(_), None) => return Err(CodecError::KeyRequired { name: name.into() }),
        (None, Some(_)) => return Err(CodecError::NotEncrypted { name: name.into() }),
        (Some(enc), Some(k)) => {
            let master = k.master(&enc.kdf).map_err(|e| match e {
                CodecError::WrongKeyKind {
                    written_with,
                    given,
                    ..
                } => CodecError::WrongKeyKind {
                    name: name.into(),
                    written_with,
                    given,
                },
                other => other,
            })?;
            if key::key_check(&master) != enc.key_check {
                return Err(CodecError::WrongKey { name: name.into() });
            }
            let object_key = key::object_key(&master, &enc.object_salt, name);
            Some(Stream::new(&object_key, &enc.nonce_prefix))
        }
    })
}
