//! PostgreSQL's vocabulary, in one place: LSNs, timelines, WAL file names,
//! timeline history files, WAL page headers, the client, identifier and
//! literal quoting, and `postgresql.conf` syntax.

pub mod conf;
pub mod conn;
pub mod history;
mod lsn;
pub mod quote;
pub mod recovery;
pub mod replication;
pub mod settings;
mod wal_name;
pub mod wal_page;

pub use lsn::{Lsn, LsnParseError};
pub use wal_name::{
    TimelineId, TimelineParseError, WalFile, WalSegmentName, DEFAULT_WAL_SEGMENT_SIZE,
};
