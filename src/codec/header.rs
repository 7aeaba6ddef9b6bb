//! The header every stored object starts with: enough to read the object
//! back with only the key, and bound (as associated data) to every chunk.
//!
//! ```text
//! 0   4  magic "CBDR"
//! 4   1  format version (1)
//! 5   1  compression id (codec::Compression::id)
//! 6   1  encryption: 0 = none (CRC32 per chunk), 1 = XChaCha20-Poly1305 STREAM
//! 7   1  log2 of the chunk size
//! -- encryption 1 only:
//! 8   1  KDF: 0 = raw key, 1 = Argon2id passphrase
//! 9  12  Argon2id m_cost (KiB), t_cost, p_cost (u32 LE each; zero for raw)
//! 21 16  KDF salt (zero for raw)
//! 37 16  object salt (HKDF salt of the per-object key)
//! 53 19  STREAM nonce prefix
//! 72  8  key check
//! ```

use super::key::{KdfParams, KdfSpec};
use super::{CodecError, Compression};

pub const MAGIC: &[u8; 4] = b"CBDR";
pub const VERSION: u8 = 1;
pub const BASE_LEN: usize = 8;
pub const ENCRYPTED_LEN: usize = 80;
pub const MIN_CHUNK_LOG2: u8 = 12;
pub const MAX_CHUNK_LOG2: u8 = 24;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encryption {
    pub kdf: KdfSpec,
    pub object_salt: [u8; 16],
    pub nonce_prefix: [u8; 19],
    pub key_check: [u8; 8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub compression: Compression,
    pub chunk_log2: u8,
    pub encryption: Option<Encryption>,
}

impl Header {
    pub fn chunk_size(&self) -> usize {
        1usize << self.chunk_log2
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCRYPTED_LEN);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.compression.id());
        out.push(u8::from(self.encryption.is_some()));
        out.push(self.chunk_log2);
        if let Some(enc) = &self.encryption {
            let (kdf, params, salt) = match enc.kdf {
                KdfSpec::Raw => (0u8, [0u32; 3], [0u8; 16]),
                KdfSpec::Argon2id { salt, params } => {
                    (1u8, [params.m_cost_kib, params.t_cost, params.p_cost], salt)
                }
            };
            out.push(kdf);
            for p in params {
                out.extend_from_slice(&p.to_le_bytes());
            }
            out.extend_from_slice(&salt);
            out.extend_from_slice(&enc.object_salt);
            out.extend_from_slice(&enc.nonce_prefix);
            out.extend_from_slice(&enc.key_check);
        }
        debug_assert_eq!(out.len(), self.encoded_len());
        out
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        if self.encryption.is_some() {
            ENCRYPTED_LEN
        } else {
            BASE_LEN
        }
    }

    /// Reads a header from the start of an object; returns it with its bytes
    /// as stored (the associated data every chunk is authenticated with).
    pub fn read(
        mut input: impl std::io::Read,
        name: &str,
    ) -> Result<(Header, Vec<u8>), CodecError> {
        let mut base = [0u8; BASE_LEN];
        read_exact(&mut input, &mut base, name)?;
        if &base[0..4] != MAGIC {
            return Err(CodecError::NotAnObject { name: name.into() });
        }
        if base[4] != VERSION {
            return Err(CodecError::UnsupportedVersion {
                name: name.into(),
                version: base[4],
            });
        }
        let compression = Compression::from_id(base[5]).ok_or_else(|| CodecError::UnknownId {
            name: name.into(),
            what: "compression",
            id: base[5],
        })?;
        let chunk_log2 = base[7];
        if !(MIN_CHUNK_LOG2..=MAX_CHUNK_LOG2).contains(&chunk_log2) {
            return Err(CodecError::UnknownId {
                name: name.into(),
                what: "chunk size",
                id: chunk_log2,
            });
        }
        let mut stored = base.to_vec();
        let encryption = match base[6] {
            0 => None,
            1 => {
                let mut rest = [0u8; ENCRYPTED_LEN - BASE_LEN];
                read_exact(&mut input, &mut rest, name)?;
                stored.extend_from_slice(&rest);
                let u32_at = |i: usize| u32::from_le_bytes(rest[i..i + 4].try_into().unwrap());
                let kdf_salt: [u8; 16] = rest[13..29].try_into().unwrap();
                let kdf = match rest[0] {
                    0 => KdfSpec::Raw,
                    1 => KdfSpec::Argon2id {
                        salt: kdf_salt,
                        params: KdfParams {
                            m_cost_kib: u32_at(1),
                            t_cost: u32_at(5),
                            p_cost: u32_at(9),
                        },
                    },
                    id => {
                        return Err(CodecError::UnknownId {
                            name: name.into(),
                            what: "key derivation",
                            id,
                        })
                    }
                };
                Some(Encryption {
                    kdf,
                    object_salt: rest[29..45].try_into().unwrap(),
                    nonce_prefix: rest[45..64].try_into().unwrap(),
                    key_check: rest[64..72].try_into().unwrap(),
                })
            }
            id => {
                return Err(CodecError::UnknownId {
                    name: name.into(),
                    what: "encryption",
                    id,
                })
            }
        };
        Ok((
            Header {
                compression,
                chunk_log2,
                encryption,
            },
            stored,
        ))
    }
}

fn read_exact(
    input: &mut impl std::io::Read,
    buf: &mut [u8],
    name: &str,
) -> Result<(), CodecError> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) if filled == 0 && buf.len() == BASE_LEN => {
                return Err(CodecError::Truncated {
                    name: name.into(),
                    bytes: 0,
                })
            }
            Ok(0) => {
                return Err(CodecError::Truncated {
                    name: name.into(),
                    bytes: filled as u64,
                })
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(CodecError::io(name, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let plain = Header {
            compression: Compression::Zstd,
            chunk_log2: 18,
            encryption: None,
        };
        let enc = Header {
            compression: Compression::Lz4,
            chunk_log2: 16,
            encryption: Some(Encryption {
                kdf: KdfSpec::Argon2id {
                    salt: [3; 16],
                    params: KdfParams::DEFAULT,
                },
                object_salt: [4; 16],
                nonce_prefix: [5; 19],
                key_check: [6; 8],
            }),
        };
        for h in [plain, enc] {
            let bytes = h.encode();
            assert_eq!(bytes.len(), h.encoded_len());
            assert_eq!(Header::read(&bytes[..], "x").unwrap(), (h, bytes));
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        assert!(matches!(
            Header::read(&b"NOPE\x01\x01\x00\x12"[..], "x"),
            Err(CodecError::NotAnObject { .. })
        ));
        assert!(matches!(
            Header::read(&b"CBDR\x09\x01\x00\x12"[..], "x"),
            Err(CodecError::UnsupportedVersion { version: 9, .. })
        ));
        assert!(matches!(
            Header::read(&b"CBDR\x01\x77\x00\x12"[..], "x"),
            Err(CodecError::UnknownId {
                what: "compression",
                ..
            })
        ));
        assert!(matches!(
            Header::read(&b"CBDR\x01\x01\x00"[..], "x"),
            Err(CodecError::Truncated { .. })
        ));
        assert!(matches!(
            Header::read(&b"CBDR\x01\x01\x01\x12\x00"[..], "x"),
            Err(CodecError::Truncated { .. })
        ));
    }
}
