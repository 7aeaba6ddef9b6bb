//! Logical backups in the manner of gpbackup/gprestore: per-object DDL from
//! the catalogs, per-table COPY data, filters, redirects and incrementals.

pub mod backup;
pub mod copy_format;
pub mod data;
pub mod flags;
pub mod incremental;
pub mod large_objects;
pub mod layout;
pub mod metadata;
pub mod record;
pub mod report;
pub mod restore;
pub mod schedule;
pub mod toc;
