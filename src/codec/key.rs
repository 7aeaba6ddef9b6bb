//! Encryption keys: a raw 256-bit key or a passphrase stretched with Argon2id,
//! and the per-object keys derived from them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::CodecError;

/// Argon2id cost of passphrase stretching (stored in each object header so it
/// can change without breaking old objects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl KdfParams {
    /// OWASP's recommended minimum for Argon2id (19 MiB, 2 passes): about
    /// 30 ms, paid once per process and repository salt.
    pub const DEFAULT: KdfParams = KdfParams {
        m_cost_kib: 19 * 1024,
        t_cost: 2,
        p_cost: 1,
    };
}

/// Where the master key comes from.
enum Source {
    Raw(Zeroizing<[u8; 32]>),
    Passphrase(Zeroizing<Vec<u8>>),
}

/// Master keys by (salt, Argon2id costs).
type DerivedKeys = HashMap<([u8; 16], [u32; 3]), Zeroizing<[u8; 32]>>;

/// The user's key. Holds the secret; never printed.
pub struct Key {
    source: Source,
    /// Salt used to stretch a passphrase for new objects (the repository's).
    writer_salt: Mutex<Option<[u8; 16]>>,
    /// Master keys derived so far, by (salt, params): reading objects written
    /// with the same salt costs one Argon2id run per process.
    derived: Mutex<DerivedKeys>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.source {
            Source::Raw(_) => "raw",
            Source::Passphrase(_) => "passphrase",
        };
        write!(f, "Key({kind}, <redacted>)")
    }
}

/// How a master key was obtained, as recorded in an object header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KdfSpec {
    Raw,
    Argon2id { salt: [u8; 16], params: KdfParams },
}

impl Key {
    /// Parses key text: 64 hex characters are a raw 256-bit key; anything
    /// else (trimmed of its final newline) is a passphrase.
    pub fn from_text(text: &str) -> Result<Key, CodecError> {
        let text = text.strip_suffix('\n').unwrap_or(text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.is_empty() {
            return Err(CodecError::BadKey("the key is empty".into()));
        }
        let source = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut raw = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(text, &mut raw[..]).expect("64 hex digits decode");
            Source::Raw(raw)
        } else {
            if text.len() < 8 {
                return Err(CodecError::BadKey(
                    "a passphrase must have at least 8 characters (or give 64 hex characters for a raw key)".into(),
                ));
            }
            Source::Passphrase(Zeroizing::new(text.as_bytes().to_vec()))
        };
        Ok(Key {
            source,
            writer_salt: Mutex::new(None),
            derived: Mutex::new(HashMap::new()),
        })
    }

    /// Reads the key from a file (which should be readable by its owner only).
    pub fn from_file(path: &Path) -> Result<Key, CodecError> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            CodecError::BadKey(format!("cannot read key file {}: {e}", path.display()))
        })?);
        Key::from_text(&text)
            .map_err(|e| CodecError::BadKey(format!("key file {}: {e}", path.display())))
    }

    pub fn is_passphrase(&self) -> bool {
        matches!(self.source, Source::Passphrase(_))
    }

    /// Sets the salt used to stretch the passphrase for new objects.
    pub fn set_writer_salt(&self, salt: [u8; 16]) {
        *self.writer_salt.lock().unwrap() = Some(salt);
    }

    /// How new objects' master key is obtained.
    pub(crate) fn writer_spec(&self) -> Result<KdfSpec, CodecError> {
        match self.source {
            Source::Raw(_) => Ok(KdfSpec::Raw),
            Source::Passphrase(_) => {
                let salt = self.writer_salt.lock().unwrap().ok_or_else(|| {
                    CodecError::BadKey(
                        "internal: passphrase salt not loaded from repository".into(),
                    )
                })?;
                Ok(KdfSpec::Argon2id {
                    salt,
                    params: KdfParams::DEFAULT,
                })
            }
        }
    }

    /// The master key for a header's KDF spec. `Err(WrongKeyKind)` when the
    /// object was written with the other kind of key.
    pub(crate) fn master(&self, spec: &KdfSpec) -> Result<Zeroizing<[u8; 32]>, CodecError> {
        match (&self.source, spec) {
            (Source::Raw(raw), KdfSpec::Raw) => Ok(raw.clone()),
            (Source::Passphrase(pass), KdfSpec::Argon2id { salt, params }) => {
                let cache_key = (*salt, [params.m_cost_kib, params.t_cost, params.p_cost]);
                if let Some(k) = self.derived.lock().unwrap().get(&cache_key) {
                    return Ok(k.clone());
                }
                // Refuse absurd costs from a forged header before allocating.
                if params.m_cost_kib > 4 * 1024 * 1024 || params.t_cost > 100 || params.p_cost > 64
                {
                    return Err(CodecError::BadKey(format!(
                        "object header asks for unreasonable Argon2id costs {params:?}"
                    )));
                }
                let p =
                    argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
                        .map_err(|e| CodecError::BadKey(format!("Argon2id parameters: {e}")))?;
                let argon =
                    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
                let mut out = Zeroizing::new([0u8; 32]);
                argon
                    .hash_password_into(pass, salt, &mut out[..])
                    .map_err(|e| CodecError::BadKey(format!("Argon2id: {e}")))?;
                self.derived.lock().unwrap().insert(cache_key, out.clone());
                Ok(out)
            }
            (Source::Raw(_), KdfSpec::Argon2id { .. }) => Err(CodecError::WrongKeyKind {
                name: String::new(),
                written_with: "a passphrase",
                given: "a raw 256-bit key",
            }),
            (Source::Passphrase(_), KdfSpec::Raw) => Err(CodecError::WrongKeyKind {
                name: String::new(),
                written_with: "a raw 256-bit key",
                given: "a passphrase",
            }),
        }
    }
}

/// What identifies a key in the repository's description (`cbdr-repo.json`):
/// its kind and its check value, never the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyIdentity {
    /// The repository is not encrypted.
    None,
    Raw {
        check: [u8; 8],
    },
    Passphrase {
        check: [u8; 8],
    },
}

impl KeyIdentity {
    /// The identity of `key` (none: no encryption). A passphrase is
    /// stretched with `salt`, the repository's, at today's costs.
    pub fn of(key: Option<&Key>, salt: [u8; 16]) -> Result<KeyIdentity, CodecError> {
        let Some(key) = key else {
            return Ok(KeyIdentity::None);
        };
        Ok(match key.source {
            Source::Raw(_) => KeyIdentity::Raw {
                check: key_check(&*key.master(&KdfSpec::Raw)?),
            },
            Source::Passphrase(_) => KeyIdentity::Passphrase {
                check: key_check(&*key.master(&KdfSpec::Argon2id {
                    salt,
                    params: KdfParams::DEFAULT,
                })?),
            },
        })
    }

    /// How a DBA would name it: "no encryption", "a raw 256-bit key"...
    pub fn describe(&self) -> &'static str {
        match self {
            KeyIdentity::None => "no encryption",
            KeyIdentity::Raw { .. } => "a raw 256-bit key",
            KeyIdentity::Passphrase { .. } => "a passphrase",
        }
    }
}

/// An 8-byte value stored in headers that tells a wrong key from corruption
/// without revealing anything about the key.
pub(crate) fn key_check(master: &[u8; 32]) -> [u8; 8] {
    let hk = Hkdf::<Sha256>::new(None, master);
    let mut out = [0u8; 8];
    hk.expand(b"cbdr key check v1", &mut out)
        .expect("8 bytes is a valid HKDF length");
    out
}

/// The key of one object: bound to the object's name and its random salt, so
/// an object moved or copied under another name does not authenticate.
pub(crate) fn object_key(
    master: &[u8; 32],
    object_salt: &[u8; 16],
    name: &str,
) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(object_salt), master);
    let mut out = Zeroizing::new([0u8; 32]);
    hk.expand_multi_info(&[b"cbdr object key v1\0", name.as_bytes()], &mut out[..])
        .expect("32 bytes is a valid HKDF length");
    out
}

pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).expect("the OS random number generator failed");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_passphrase_keys_are_told_apart() {
        let raw = Key::from_text(&"ab".repeat(32)).unwrap();
        assert!(!raw.is_passphrase());
        let pass = Key::from_text("correct horse battery staple\n").unwrap();
        assert!(pass.is_passphrase());
        assert!(Key::from_text("").is_err());
        assert!(Key::from_text("short").is_err());
        assert!(!format!("{raw:?}").contains("abab"));
    }

    #[test]
    fn object_keys_depend_on_name_and_salt() {
        let m = [7u8; 32];
        let a = object_key(&m, &[1; 16], "seg-1/wal/a");
        assert_ne!(*a, *object_key(&m, &[1; 16], "seg-1/wal/b"));
        assert_ne!(*a, *object_key(&m, &[2; 16], "seg-1/wal/a"));
        assert_eq!(*a, *object_key(&m, &[1; 16], "seg-1/wal/a"));
        assert_ne!(key_check(&m), key_check(&[8u8; 32]));
    }

    #[test]
    fn passphrase_derivation_is_cached_and_salted() {
        let k = Key::from_text("a long passphrase").unwrap();
        let p = KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        };
        let s1 = KdfSpec::Argon2id {
            salt: [1; 16],
            params: p,
        };
        let s2 = KdfSpec::Argon2id {
            salt: [2; 16],
            params: p,
        };
        let a = k.master(&s1).unwrap();
        assert_eq!(*a, *k.master(&s1).unwrap());
        assert_ne!(*a, *k.master(&s2).unwrap());
        assert!(matches!(
            k.master(&KdfSpec::Raw),
            Err(CodecError::WrongKeyKind { .. })
        ));
    }
}
