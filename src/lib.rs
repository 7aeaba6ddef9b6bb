//! cbdr: WAL-level physical backup and point-in-time recovery for PostgreSQL
//! and PostgreSQL-based MPP clusters (Apache Cloudberry, Greenplum).

pub mod codec;
pub mod config;
pub mod storage;
