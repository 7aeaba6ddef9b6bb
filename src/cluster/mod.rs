//! The cluster: topology, per-segment agents and their control protocol,
//! the coordinator's cluster-wide backups, restore points and restores.

pub mod agent;
pub mod auth;
pub mod backup;
pub mod catalog;
pub mod check;
pub mod citus;
pub mod client;
pub mod configure;
pub mod greenplum;
pub mod greenplum_start;
pub mod proto;
pub mod restore;
pub mod restore_point;
pub mod standby;
pub mod streaming;
pub mod topology;
