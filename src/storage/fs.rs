//! Filesystem backend (placeholder, being written).
#[derive(Debug)]
pub struct FsStorage;
