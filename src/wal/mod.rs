//! Continuous WAL archiving: `wal-push` (archive_command) and `wal-fetch`
//! (restore_command).

mod fetch;
mod push;
pub mod receive;

pub use fetch::{wal_fetch, FetchOptions, FetchOutcome, PREFETCH_DIR};
pub use push::{wal_push, PushOptions, PushOutcome, MEMO_DIR};

use std::path::Path;

use crate::error::{Error, Result};
use crate::pg::WalFile;

/// True when an earlier `wal-push` uploaded this file ahead and it has not
/// changed since (the memo is consumed): nothing else to do, not even open
/// the repository.
pub fn uploaded_ahead(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    push::Memo::new(crate::fsutil::parent_dir(path)).take_if_matches(name, path)
}

/// The WAL file a path names.
fn wal_file_of(path: &Path) -> Result<(String, WalFile)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Usage(format!("{} does not name a file", path.display())))?;
    parse_wal_name(name).map(|f| (name.to_string(), f))
}

fn parse_wal_name(name: &str) -> Result<WalFile> {
    WalFile::parse(name).ok_or_else(|| {
        Error::Usage(format!(
            "{name:?} is not a WAL file name (a segment like 000000010000000000000001, a .history, .partial or .backup file): check the %p/%f in archive_command/restore_command"
        ))
    })
}
