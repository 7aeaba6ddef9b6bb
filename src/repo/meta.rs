//! `cbdr-repo.json`: the repository's identity, written once by
//! `cbdr repo-init`. Plain JSON (not encrypted): it holds the passphrase
//! salt, needed before anything can be decrypted, and what identifies the
//! repository's key (its kind and check value, never the key), so that a
//! writer with another key is refused before it writes anything.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout::REPO_META_KEY;
use crate::codec::KeyIdentity;
use crate::error::{Error, Result};
use crate::storage::{body_from_bytes, get_bytes, Storage};

/// 1: format, created, kdf_salt. 2: adds `encryption` and `key_check`.
pub const REPO_FORMAT: u32 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoMeta {
    pub format: u32,
    pub created: DateTime<Utc>,
    /// Hex salt of passphrase stretching for new objects. Each object header
    /// records its own salt too.
    pub kdf_salt: String,
    /// "none", "raw" or "passphrase" (format 2 on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    /// Hex check value of the key (format 2 on, when encrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check: Option<String>,
}

impl RepoMeta {
    pub fn new(salt: [u8; 16], identity: KeyIdentity) -> RepoMeta {
        let mut meta = RepoMeta {
            format: REPO_FORMAT,
            created: Utc::now(),
            kdf_salt: hex::encode(salt),
            encryption: None,
            key_check: None,
        };
        meta.set_identity(identity);
        meta
    }

    pub fn set_identity(&mut self, identity: KeyIdentity) {
        self.format = REPO_FORMAT;
        let (kind, check) = match identity {
            KeyIdentity::None => ("none", None),
            KeyIdentity::Raw { check } => ("raw", Some(check)),
            KeyIdentity::Passphrase { check } => ("passphrase", Some(check)),
        };
        self.encryption = Some(kind.to_string());
        self.key_check = check.map(hex::encode);
    }

    pub fn kdf_salt(&self) -> Result<[u8; 16]> {
        let mut salt = [0u8; 16];
        hex::decode_to_slice(&self.kdf_salt, &mut salt)
            .map_err(|_| Error::Usage(format!("{REPO_META_KEY}: kdf_salt is not 32 hex digits")))?;
        Ok(salt)
    }

    /// The recorded key identity; `None` in a format-1 repository, which
    /// did not record one.
    pub fn identity(&self) -> Result<Option<KeyIdentity>> {
        let bad = || {
            Error::Usage(format!(
                "{REPO_META_KEY}: encryption {:?} with key_check {:?} is not valid: the file was edited or damaged",
                self.encryption, self.key_check
            ))
        };
        let check = || -> Result<[u8; 8]> {
            let mut c = [0u8; 8];
            hex::decode_to_slice(self.key_check.as_deref().ok_or_else(bad)?, &mut c)
                .map_err(|_| bad())?;
            Ok(c)
        };
        Ok(match self.encryption.as_deref() {
            None => None,
            Some("none") if self.key_check.is_none() => Some(KeyIdentity::None),
            Some("raw") => Some(KeyIdentity::Raw { check: check()? }),
            Some("passphrase") => Some(KeyIdentity::Passphrase { check: check()? }),
            Some(_) => return Err(bad()),
        })
    }
}

/// The repository's description, or `None` when there is none.
pub async fn load(storage: &dyn Storage) -> Result<Option<RepoMeta>> {
    match get_bytes(storage, REPO_META_KEY).await {
        Ok(bytes) => {
            let meta: RepoMeta = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Usage(format!(
                    "{REPO_META_KEY} in {} is not a cbdr repository description ({e}): is the storage path right?",
                    storage.location()
                ))
            })?;
            if meta.format > REPO_FORMAT {
                return Err(Error::Usage(format!(
                    "the repository in {} has format {}, newer than this cbdr understands ({REPO_FORMAT}): upgrade cbdr",
                    storage.location(),
                    meta.format
                )));
            }
            Ok(Some(meta))
        }
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Writes the description of a new repository (never over an existing
/// one), then reads it back: on a storage that does not honour conditional
/// creates, a racing `repo-init` with another key is caught here.
pub async fn create(storage: &dyn Storage, meta: &RepoMeta) -> Result<()> {
    storage.put_new(REPO_META_KEY, body(meta)).await?;
    confirm(storage, meta).await
}

/// Replaces the description (`repo-init --upgrade`).
pub async fn replace(storage: &dyn Storage, meta: &RepoMeta) -> Result<()> {
    storage.put(REPO_META_KEY, body(meta)).await?;
    confirm(storage, meta).await
}

fn body(meta: &RepoMeta) -> crate::storage::ByteStream {
    body_from_bytes(serde_json::to_vec_pretty(meta).expect("serializable"))
}

async fn confirm(storage: &dyn Storage, meta: &RepoMeta) -> Result<()> {
    match load(storage).await? {
        Some(stored) if stored == *meta => Ok(()),
        _ => Err(Error::Usage(format!(
            "another cbdr wrote {REPO_META_KEY} in {} at the same time: run `cbdr repo-init` again to see which key the repository now has",
            storage.location()
        ))),
    }
}
