//! PostgreSQL concepts: LSNs, timelines and WAL file names.

pub mod conn;
mod lsn;
pub mod replication;
mod wal_name;

pub use lsn::Lsn;
pub use wal_name::{TimelineId, WalFile, WalSegmentName, DEFAULT_WAL_SEGMENT_SIZE};
