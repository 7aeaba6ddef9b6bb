//! Where things live in the repository.
//!
//! ```text
//! cbdr-repo.json                          repository identity (format, passphrase salt)
//! seg{ID}/wal/{TLI}{LOG}/{segment}        WAL segments, .partial and .backup files
//! seg{ID}/wal/history/{TLI}.history       timeline history files
//! seg{ID}/basebackups/{NAME}/parts/{ARCHIVE}/{N}.tar
//!                                         a base backup's tar stream, cut at file
//!                                         boundaries (ARCHIVE: "base" or a tablespace OID)
//! seg{ID}/basebackups/{NAME}/parts/{ARCHIVE}/{N}.tar.lz4 (or .tar.zst)
//!                                         the tar stream as the server compressed
//!                                         it, cut anywhere (compress_on = server)
//! seg{ID}/basebackups/{NAME}/blocks/{ARCHIVE}/{N}.pack
//!                                         block backups (format 4): extents of the
//!                                         blocks this backup stores
//! seg{ID}/basebackups/{NAME}/maps/{ARCHIVE}/{N}.pack
//!                                         block backups: each entry's block map
//! seg{ID}/basebackups/{NAME}/maps/{ARCHIVE}/index.json
//!                                         block backups: where the large files' maps are
//! seg{ID}/basebackups/{NAME}/backup_manifest   the server's backup manifest
//! seg{ID}/basebackups/{NAME}/backup.json  the backup's record, written last:
//!                                         a backup without it is incomplete
//! seg{ID}/restore_points/{NAME}.json      a named restore point
//! seg{ID}/verified.json                   `verify`'s WAL watermark: the last
//!                                         segment per timeline it re-read
//!                                         without fault (not a record:
//!                                         losing it only means re-reading)
//! cluster/restore_points/{NAME}.json      a cluster-wide restore point (each
//!                                         segment's point recorded first)
//! cluster/backups/{NAME}.json             a cluster backup, written after every
//!                                         segment's backup and its restore point
//! seg{ID}/wal_removed/{FIRST}-{LAST}.json  a WAL run a delete removed (wal-fetch:
//!                                         the end of the archive, not a hole)
//! deleting/{ID}.json                      a delete's plan while it runs (records
//!                                         first, then data); `delete garbage`
//!                                         finishes one a killed delete left
//! leases/{ID}.json                        a restore in progress: what it uses,
//!                                         until when (delete leaves that alone)
//! standby/{NAME}.json                     a standby cluster restored with
//!                                         `restore --standby`: where its instances
//!                                         are and at which restore point
//! ```
//! `ID` is the content id: `seg-1` is the coordinator (or a single server),
//! `seg0`..`segN-1` the segments. Object names do not depend on the
//! compression method (the object header records it), so a WAL file keeps
//! its name when the config changes.

use crate::codec::Compression;
use crate::pg::WalFile;

pub const REPO_META_KEY: &str = "cbdr-repo.json";

/// The prefix of one content id's objects.
/// The content id whose objects live under the top-level directory
/// `name` (`seg-1`, `seg0`, ...), if it is one.
pub fn content_id_of_dir(name: &str) -> Option<i32> {
    let id: i32 = name.strip_prefix("seg")?.parse().ok()?;
    (segment_prefix(id) == name).then_some(id)
}

pub fn segment_prefix(content_id: i32) -> String {
    format!("seg{content_id}")
}

/// The prefix of one content id's WAL archive.
pub fn wal_prefix(content_id: i32) -> String {
    format!("{}/wal/", segment_prefix(content_id))
}

/// The object of one WAL file.
pub fn wal_key(content_id: i32, file: &WalFile) -> String {
    match file.segment() {
        Some(seg) => format!("{}{}/{file}", wal_prefix(content_id), seg.group()),
        None => format!("{}history/{file}", wal_prefix(content_id)),
    }
}

/// The prefix of one content id's base backups.
pub fn backups_prefix(content_id: i32) -> String {
    format!("{}/basebackups/", segment_prefix(content_id))
}

pub fn backup_prefix(content_id: i32, backup: &str) -> String {
    format!("{}{backup}/", backups_prefix(content_id))
}

/// The record whose presence makes a backup complete.
pub fn backup_record_key(content_id: i32, backup: &str) -> String {
    format!("{}backup.json", backup_prefix(content_id, backup))
}

pub fn backup_manifest_key(content_id: i32, backup: &str) -> String {
    format!("{}backup_manifest", backup_prefix(content_id, backup))
}

/// A part of an archive: a tar (`000000.tar`), or a piece of the tar
/// stream the server compressed (`000000.tar.lz4`, `000000.tar.zst`).
pub fn backup_part_key(
    content_id: i32,
    backup: &str,
    archive: &str,
    part: u32,
    server_compression: Option<Compression>,
) -> String {
    let ext = match server_compression {
        None => String::new(),
        Some(Compression::Zstd) => ".zst".into(),
        Some(c) => format!(".{c}"),
    };
    format!(
        "{}parts/{archive}/{part:06}.tar{ext}",
        backup_prefix(content_id, backup)
    )
}

/// A block pack of a block backup (see `physical::blocks`).
pub fn block_pack_key(content_id: i32, backup: &str, archive: &str, pack: u32) -> String {
    format!(
        "{}blocks/{archive}/{pack:06}.pack",
        backup_prefix(content_id, backup)
    )
}

/// A map pack of a block backup.
pub fn map_pack_key(content_id: i32, backup: &str, archive: &str, pack: u32) -> String {
    format!(
        "{}maps/{archive}/{pack:06}.pack",
        backup_prefix(content_id, backup)
    )
}

/// The index of a block backup's large files' maps.
pub fn map_index_key(content_id: i32, backup: &str, archive: &str) -> String {
    format!(
        "{}maps/{archive}/index.json",
        backup_prefix(content_id, backup)
    )
}

pub fn restore_points_prefix(content_id: i32) -> String {
    format!("{}/restore_points/", segment_prefix(content_id))
}

pub fn restore_point_key(content_id: i32, name: &str) -> String {
    format!("{}{name}.json", restore_points_prefix(content_id))
}

/// `verify`'s WAL watermark of one content id.
pub fn verify_watermark_key(content_id: i32) -> String {
    format!("{}/verified.json", segment_prefix(content_id))
}

pub const CLUSTER_BACKUPS_PREFIX: &str = "cluster/backups/";
pub const CLUSTER_RESTORE_POINTS_PREFIX: &str = "cluster/restore_points/";

pub fn cluster_backup_key(name: &str) -> String {
    format!("{CLUSTER_BACKUPS_PREFIX}{name}.json")
}

pub fn cluster_restore_point_key(name: &str) -> String {
    format!("{CLUSTER_RESTORE_POINTS_PREFIX}{name}.json")
}

/// Where `delete` notes the WAL runs it removed (`{FIRST}-{LAST}.json`):
/// `wal-fetch` reads a segment missing there as the end of the archive,
/// not as a hole (the WAL was not needed by anything kept).
pub fn wal_removed_prefix(content_id: i32) -> String {
    format!("{}/wal_removed/", segment_prefix(content_id))
}

pub fn wal_removed_key(content_id: i32, first: &str, last: &str) -> String {
    format!("{}{first}-{last}.json", wal_removed_prefix(content_id))
}

/// The run a key of [`wal_removed_prefix`] names.
pub fn parse_wal_removed(
    key: &str,
) -> Option<(crate::pg::WalSegmentName, crate::pg::WalSegmentName)> {
    let name = key.rsplit('/').next()?.strip_suffix(".json")?;
    let (a, b) = name.split_once('-')?;
    Some((
        crate::pg::WalSegmentName::parse(a)?,
        crate::pg::WalSegmentName::parse(b)?,
    ))
}

/// Where the plans of running (or killed) deletes are.
pub const DELETION_INTENTS_PREFIX: &str = "deleting/";

pub fn deletion_intent_key(id: &str) -> String {
    format!("{DELETION_INTENTS_PREFIX}{id}.json")
}

/// Where the leases of running restores are.
pub const LEASES_PREFIX: &str = "leases/";

pub fn lease_key(id: &str) -> String {
    format!("{LEASES_PREFIX}{id}.json")
}

/// Where the records of standby (DR) clusters are.
pub const STANDBYS_PREFIX: &str = "standby/";

pub fn standby_key(name: &str) -> String {
    format!("{STANDBYS_PREFIX}{name}.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ids_from_directory_names() {
        assert_eq!(content_id_of_dir("seg-1"), Some(-1));
        assert_eq!(content_id_of_dir("seg0"), Some(0));
        assert_eq!(content_id_of_dir("seg12"), Some(12));
        for not in ["seg01", "seg+1", "segx", "seg", "cluster", "logical"] {
            assert_eq!(content_id_of_dir(not), None, "{not}");
        }
    }

    #[test]
    fn wal_keys() {
        let f = |n: &str| WalFile::parse(n).unwrap();
        assert_eq!(
            wal_key(-1, &f("000000010000000A000000FF")),
            "seg-1/wal/000000010000000A/000000010000000A000000FF"
        );
        assert_eq!(
            wal_key(3, &f("00000002.history")),
            "seg3/wal/history/00000002.history"
        );
        assert_eq!(
            wal_key(0, &f("000000010000000000000002.00000028.backup")),
            "seg0/wal/0000000100000000/000000010000000000000002.00000028.backup"
        );
        for key in [
            wal_key(-1, &f("00000002.history")),
            wal_key(7, &f("000000030000000000000005.partial")),
        ] {
            crate::storage::validate_key(&key).unwrap();
        }
    }
}
