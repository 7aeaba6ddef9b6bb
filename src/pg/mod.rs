//! PostgreSQL concepts: LSNs, timelines, WAL file names, timeline history
//! files and WAL page headers.

pub mod conn;
pub mod history;
mod lsn;
pub mod replication;
mod wal_name;
pub mod wal_page;

pub use lsn::Lsn;
pub use wal_name::{TimelineId, WalFile, WalSegmentName, DEFAULT_WAL_SEGMENT_SIZE};
