//! cbdr: WAL-level physical backup and point-in-time recovery for PostgreSQL
//! and PostgreSQL-based MPP clusters (Apache Cloudberry, Greenplum).

pub mod cli;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod error;
pub mod fault;
pub mod fsutil;
pub mod logical;
pub mod pg;
pub mod physical;
pub mod repo;
pub mod storage;
pub mod task;
pub mod wal;

pub use error::{Error, ExitCode, Result};

#[doc(hidden)]
pub mod fuzz_api;
