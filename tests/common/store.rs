//! Raw and decoded access to a repository from a test, through the
//! library's storage and codec ([`Store`]): to damage an object exactly
//! where cbdr reads it, and to put it back.

use std::path::{Path, PathBuf};

use super::pg::chown_to_pg;

/// Raw and decoded access to the repository, through the library (the
/// same code paths cbdr uses, so that a damaged object is damaged exactly
/// where cbdr reads it).
pub struct Store {
    pub rt: tokio::runtime::Runtime,
    pub repo: cbdr::repo::Repo,
    /// An fs repository's directory (its files go back to PostgreSQL's user).
    pub fs_root: Option<PathBuf>,
}

impl Store {
    pub fn open(config: &Path) -> Store {
        let config = cbdr::config::Config::load(config).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let repo = rt.block_on(cbdr::repo::Repo::open(&config)).unwrap();
        let fs_root = (config.storage.kind == cbdr::config::StorageType::Fs)
            .then(|| config.storage.path.clone());
        Store { rt, repo, fs_root }
    }

    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let list = self.rt.block_on(self.repo.storage.list(prefix)).unwrap();
        list.into_iter().map(|o| o.key).collect()
    }

    pub fn raw(&self, key: &str) -> Vec<u8> {
        use futures_util::StreamExt;
        self.rt.block_on(async {
            let mut s = self.repo.storage.get(key).await.unwrap();
            let mut out = Vec::new();
            while let Some(chunk) = s.next().await {
                out.extend_from_slice(&chunk.unwrap());
            }
            out
        })
    }

    pub fn put_raw(&self, key: &str, bytes: Vec<u8>) {
        self.rt
            .block_on(
                self.repo
                    .storage
                    .put(key, cbdr::storage::body_from_bytes(bytes)),
            )
            .unwrap();
        self.give_back();
    }

    pub fn delete(&self, key: &str) {
        self.rt.block_on(self.repo.storage.delete(key)).unwrap();
    }

    pub fn decoded(&self, key: &str) -> Vec<u8> {
        self.rt.block_on(self.repo.get_bytes(key)).unwrap()
    }

    /// Stores `bytes` as a valid object under `key`: authenticated, but not
    /// what the backup wrote there.
    pub fn put_decoded(&self, key: &str, bytes: Vec<u8>) {
        self.rt.block_on(self.repo.put_bytes(key, bytes)).unwrap();
        self.give_back();
    }

    pub fn give_back(&self) {
        if let Some(root) = &self.fs_root {
            chown_to_pg(root);
        }
    }
}
