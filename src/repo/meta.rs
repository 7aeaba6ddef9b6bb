//! `cbdr-repo.json`: the repository's identity, written once at first use.
//! Plain JSON (not encrypted): it holds the passphrase salt, needed before
//! anything can be decrypted.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::layout::REPO_META_KEY;
use crate::error::{Error, Result};
use crate::storage::{body_from_bytes, get_bytes, Storage};

pub const REPO_FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoMeta {
    pub format: u32,
    pub created: DateTime<Utc>,
    /// Hex salt of passphrase stretching for new objects. Each object header
    /// records its own salt too, so objects stay readable if two first
    /// writers raced and this changed.
    pub kdf_salt: String,
}

impl RepoMeta {
    pub fn kdf_salt(&self) -> Result<[u8; 16]> {
        let mut salt = [0u8; 16];
        hex::decode_to_slice(&self.kdf_salt, &mut salt)
            .map_err(|_| Error::Usage(format!("{REPO_META_KEY}: kdf_salt is not 32 hex digits")))?;
        Ok(salt)
    }
}

pub async fn load_or_create(storage: &dyn Storage) -> Result<RepoMeta> {
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
            Ok(meta)
        }
        Err(e) if e.is_not_found() => {
            let meta = RepoMeta {
                format: REPO_FORMAT,
                created: Utc::now(),
                kdf_salt: hex::encode(crate::codec::random_bytes::<16>()),
            };
            let json = serde_json::to_vec_pretty(&meta).expect("serializable");
            storage.put(REPO_META_KEY, body_from_bytes(json)).await?;
            tracing::info!("created a new repository in {}", storage.location());
            Ok(meta)
        }
        Err(e) => Err(e.into()),
    }
}
