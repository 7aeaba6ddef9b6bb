//! Physical base backups and restores of one server (or segment).

pub mod backup;
pub mod blocks;
pub mod check;
pub mod compress_on;
pub mod file_check;
pub mod manifest;
pub mod progress;
pub mod restore;
pub mod restore_point;
pub mod standby;
pub mod start;
pub mod tar_split;
