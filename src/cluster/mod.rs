//! The cluster: topology, per-segment agents and their control protocol,
//! the coordinator's cluster-wide backups, restore points and restores.

pub mod catalog;
pub mod restore_point;
pub mod topology;
