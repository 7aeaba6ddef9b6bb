//! The cluster: topology, per-segment agents and their control protocol,
//! the coordinator's cluster-wide backups, restore points and restores.
