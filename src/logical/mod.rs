//! Logical backups in the manner of gpbackup/gprestore: per-object DDL from
//! the catalogs, per-table COPY data, filters, redirects and incrementals.

pub mod metadata;
pub mod toc;
pub mod data;
pub mod flags;
pub mod layout;
pub mod record;
pub mod incremental;
pub mod report;
pub mod backup;
pub mod restore;
