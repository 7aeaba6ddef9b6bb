//! What a logical backup stores about itself: `backup.json` (written last),
//! `toc.json` (where each statement is in `metadata.sql`) and
//! `statistics.json`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::copy_format::CopyFormat;
use super::layout::{self, Timestamp};
use super::metadata::ServerFlavor;
use super::toc::{ObjectKind, QualifiedName, Section, TocEntry};
use crate::error::{Error, Result};
use crate::repo::Repo;

/// The newest record format this cbdr reads and writes. 2: tables may be
/// stored in COPY's binary format ([`TableData::format`]). 3: the backup
/// holds large objects ([`LogicalBackupRecord::large_objects`]), which an
/// older cbdr would not restore: a backup without them is still written
/// as 2 ([`record_format`]).
pub const RECORD_FORMAT: u32 = 3;

/// The format a record is written with: the oldest that holds what it has.
pub fn record_format(large_objects: bool) -> u32 {
    if large_objects {
        3
    } else {
        2
    }
}

/// The options a backup was taken with (gpbackup's config.yaml).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupOptionsRecord {
    pub data_only: bool,
    pub metadata_only: bool,
    pub leaf_partition_data: bool,
    pub single_data_file: bool,
    pub with_stats: bool,
    /// Roles, tablespaces and database settings were backed up.
    pub globals: bool,
    pub include_schemas: Vec<String>,
    pub exclude_schemas: Vec<String>,
    pub include_tables: Vec<QualifiedName>,
    pub exclude_tables: Vec<QualifiedName>,
    pub compression: String,
    pub compression_level: Option<i32>,
    pub jobs: u32,
    pub incremental: bool,
    /// The command line, for the report.
    pub command_line: String,
}

impl BackupOptionsRecord {
    /// gpbackup's "IncludeTableFiltered": a backup of chosen tables.
    pub fn table_filtered(&self) -> bool {
        !self.include_tables.is_empty()
    }

    pub fn filtered(&self) -> bool {
        !(self.include_schemas.is_empty()
            && self.exclude_schemas.is_empty()
            && self.include_tables.is_empty()
            && self.exclude_tables.is_empty())
    }
}

/// Where one table's rows are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataLocation {
    /// An object of its own.
    Object { key: String },
    /// A frame of a single data file: `length` stored bytes from `offset`,
    /// an object of its own sealed under `frame_name(key, frame)`.
    Frame {
        key: String,
        frame: u32,
        offset: u64,
        length: u64,
    },
}

impl DataLocation {
    pub fn key(&self) -> &str {
        match self {
            DataLocation::Object { key } | DataLocation::Frame { key, .. } => key,
        }
    }
}

/// The contents of the database's large objects: one object of binary
/// COPY rows `(oid, offset, chunk)` (see `logical::large_objects`). Their
/// owners, comments and grants are metadata entries (`BLOB`, `OWNER`...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LargeObjectData {
    /// Large objects copied.
    pub objects: u64,
    /// Rows (chunks) stored.
    pub chunks: u64,
    /// The largest chunk a row holds: a restore refuses a longer one.
    pub chunk_size: u64,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    pub location: DataLocation,
}

/// What says a table's data may have changed (see `incremental`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSignals {
    pub relfilenode: u32,
    pub toast_relfilenode: u32,
    pub main_bytes: u64,
    pub toast_bytes: u64,
    pub n_tup_ins: i64,
    pub n_tup_upd: i64,
    pub n_tup_del: i64,
    pub n_tup_hot_upd: i64,
    /// The columns and their types (and missing values), as COPY sees them.
    pub shape: String,
}

/// One table whose rows are in the backup set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableData {
    pub table: QualifiedName,
    pub oid: u32,
    pub relkind: String,
    /// For a leaf partition: its root partitioned table (filters on the
    /// root take it along).
    pub root: Option<QualifiedName>,
    /// The COPY column list, each quoted.
    pub columns: Vec<String>,
    pub rows: u64,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
    /// The backup whose object holds the rows: this one, or for a table an
    /// incremental did not copy again, an earlier one of its chain.
    pub backup: String,
    pub location: DataLocation,
    /// Change signals when the rows were copied (absent: always copy).
    pub signals: Option<TableSignals>,
    /// How the rows are stored (text in backups of record format 1).
    #[serde(default)]
    pub format: CopyFormat,
    /// For binary rows: the columns' type OIDs (built-in types, the same
    /// on every server), which a restore compares with the target's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<u32>,
}

/// Server-wide signals: a change means every table must be copied again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSignals {
    pub postmaster_start: String,
    pub stats_reset: Option<String>,
    pub system_identifier: String,
    pub database_oid: u32,
    pub track_counts: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStats {
    pub key: String,
    pub plain_bytes: u64,
    pub stored_bytes: u64,
}

/// `backup.json`: a complete logical backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogicalBackupRecord {
    pub format: u32,
    pub timestamp: String,
    pub database: String,
    pub database_encoding: String,
    pub database_collate: String,
    pub database_ctype: String,
    pub server_version: String,
    pub server_version_num: u32,
    /// PostgreSQL, Greenplum or Cloudberry (records written before it was
    /// kept read as PostgreSQL).
    #[serde(default)]
    pub server_flavor: ServerFlavor,
    pub cbdr_version: String,
    pub start_time: DateTime<Utc>,
    pub end_time: DateTime<Utc>,
    pub options: BackupOptionsRecord,
    /// The base this incremental was taken against.
    pub incremental_of: Option<String>,
    pub metadata: Option<ObjectStats>,
    pub toc: Option<ObjectStats>,
    pub statistics: Option<ObjectStats>,
    pub report: Option<ObjectStats>,
    /// Every table whose rows the backup set holds.
    pub tables: Vec<TableData>,
    /// The large objects' contents (absent: the database had none, or the
    /// backup was filtered to schemas or tables, which leaves them out as
    /// pg_dump does). Always this backup's own: an incremental copies them
    /// again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub large_objects: Option<LargeObjectData>,
    /// How many TOC entries of each kind.
    pub object_counts: std::collections::BTreeMap<String, u64>,
    /// Objects the backup does not carry, left out at the user's request
    /// (`--skip-unsupported`), one description each.
    #[serde(default)]
    pub skipped_objects: Vec<String>,
    pub server_signals: Option<ServerSignals>,
    /// Segments of the cluster backed up (0: a single PostgreSQL server).
    pub segment_count: u32,
    pub encrypted: bool,
}

impl LogicalBackupRecord {
    /// The backup's timestamp; records are [`LogicalBackupRecord::check`]ed
    /// when they are read, so it is valid.
    pub fn ts(&self) -> Timestamp {
        Timestamp::parse(&self.timestamp).expect("records hold valid timestamps")
    }

    /// Refuses a record read from `key` whose timestamp is not one (a
    /// damaged or forged record): [`LogicalBackupRecord::ts`] relies on it.
    pub fn check(&self, key: &str) -> Result<()> {
        Timestamp::parse(&self.timestamp).map_err(|_| {
            Error::Integrity(format!(
                "{key}: the record's timestamp {:?} is not a backup timestamp: the record is damaged",
                self.timestamp
            ))
        })?;
        Ok(())
    }

    /// Rows this backup copied itself (not carried from its base).
    pub fn own_tables(&self) -> impl Iterator<Item = &TableData> {
        self.tables.iter().filter(|t| t.backup == self.timestamp)
    }

    /// Bytes of this backup's own objects.
    /// (Sums saturate: the counts come from a record read from storage.)
    pub fn plain_bytes(&self) -> u64 {
        self.own_tables()
            .map(|t| t.plain_bytes)
            .chain(self.objects().map(|o| o.plain_bytes))
            .chain(self.large_objects.iter().map(|l| l.plain_bytes))
            .fold(0, u64::saturating_add)
    }

    pub fn stored_bytes(&self) -> u64 {
        self.own_tables()
            .map(|t| t.stored_bytes)
            .chain(self.objects().map(|o| o.stored_bytes))
            .chain(self.large_objects.iter().map(|l| l.stored_bytes))
            .fold(0, u64::saturating_add)
    }

    fn objects(&self) -> impl Iterator<Item = &ObjectStats> {
        [&self.metadata, &self.toc, &self.statistics]
            .into_iter()
            .filter_map(|o| o.as_ref())
    }

    pub fn rows(&self) -> u64 {
        self.tables
            .iter()
            .map(|t| t.rows)
            .fold(0, u64::saturating_add)
    }
}

/// One TOC entry as stored: the statement is in `metadata.sql` at
/// `offset..offset + length` (bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredTocEntry {
    pub id: u32,
    pub section: Section,
    pub kind: ObjectKind,
    pub schema: String,
    pub name: String,
    pub owner_table: Option<QualifiedName>,
    pub depends_on: Vec<u32>,
    pub offset: u64,
    pub length: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToc {
    pub format: u32,
    pub entries: Vec<StoredTocEntry>,
}

/// Lays the statements out one after another (each followed by a blank
/// line) and records where each is.
pub fn build_metadata(entries: &[TocEntry]) -> (Vec<u8>, StoredToc) {
    let mut sql = Vec::new();
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let offset = sql.len() as u64;
        sql.extend_from_slice(e.statement.as_bytes());
        let length = e.statement.len() as u64;
        sql.extend_from_slice(b"\n\n");
        out.push(StoredTocEntry {
            id: e.id,
            section: e.section,
            kind: e.kind.clone(),
            schema: e.schema.clone(),
            name: e.name.clone(),
            owner_table: e.owner_table.clone(),
            depends_on: e.depends_on.clone(),
            offset,
            length,
        });
    }
    (
        sql,
        StoredToc {
            format: RECORD_FORMAT,
            entries: out,
        },
    )
}

/// The entries back, with their statements cut out of `metadata.sql`.
pub fn rebuild_entries(sql: &[u8], toc: &StoredToc, key: &str) -> Result<Vec<TocEntry>> {
    toc.entries
        .iter()
        .map(|e| {
            let start = e.offset as usize;
            let end = start.saturating_add(e.length as usize);
            let bytes = sql.get(start..end).ok_or_else(|| {
                Error::Integrity(format!(
                    "{key}: the TOC places entry {} ({} {}) at bytes {start}..{end}, beyond the metadata's {} bytes",
                    e.id,
                    e.kind,
                    e.name,
                    sql.len()
                ))
            })?;
            let statement = String::from_utf8(bytes.to_vec()).map_err(|_| {
                Error::Integrity(format!(
                    "{key}: the statement of TOC entry {} is not UTF-8",
                    e.id
                ))
            })?;
            Ok(TocEntry {
                id: e.id,
                section: e.section,
                kind: e.kind.clone(),
                schema: e.schema.clone(),
                name: e.name.clone(),
                owner_table: e.owner_table.clone(),
                depends_on: e.depends_on.clone(),
                statement,
            })
        })
        .collect()
}

/// `statistics.json`: pg_class's counts per table (gpbackup --with-stats).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableStats {
    pub table: QualifiedName,
    pub reltuples: f64,
    pub relpages: i64,
    pub relallvisible: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredStats {
    pub format: u32,
    pub tables: Vec<TableStats>,
}

impl Repo {
    /// Every complete logical backup, oldest first.
    pub async fn logical_backups(&self) -> Result<Vec<LogicalBackupRecord>> {
        let mut out = Vec::new();
        for obj in self.storage.list(layout::LOGICAL_PREFIX).await? {
            let Some(ts) = layout::timestamp_of_key(&obj.key) else {
                continue;
            };
            if obj.key == layout::record_key(&ts) {
                let record = self.get_json::<LogicalBackupRecord>(&obj.key).await?;
                record.check(&obj.key)?;
                out.push(record);
            }
        }
        out.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
        Ok(out)
    }

    /// One complete logical backup.
    pub async fn logical_backup(&self, ts: &Timestamp) -> Result<LogicalBackupRecord> {
        let record: LogicalBackupRecord = self
            .get_json(&layout::record_key(ts))
            .await
            .map_err(|e| match e {
                Error::Storage(s) if s.is_not_found() => Error::NotFound(format!(
                    "there is no complete logical backup with timestamp {ts} in the repository at {}: `cbdr list` shows the backups (an interrupted backup is never complete)",
                    self.storage.location()
                )),
                other => other,
            })?;
        record.check(&layout::record_key(ts))?;
        if record.format > RECORD_FORMAT {
            return Err(Error::Usage(format!(
                "logical backup {ts} has record format {}, newer than this cbdr {} reads ({RECORD_FORMAT}): restore it with a newer cbdr",
                record.format,
                env!("CARGO_PKG_VERSION")
            )));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32, stmt: &str) -> TocEntry {
        TocEntry {
            id,
            section: Section::PreData,
            kind: "TABLE".into(),
            schema: "public".into(),
            name: format!("t{id}"),
            owner_table: None,
            depends_on: vec![],
            statement: stmt.into(),
        }
    }

    #[test]
    fn metadata_round_trip() {
        let entries = vec![
            entry(1, "CREATE TABLE t1 (a int);"),
            entry(2, "CREATE TABLE \"ü\" (a text DEFAULT 'x;y');"),
            entry(3, ""),
        ];
        let (sql, toc) = build_metadata(&entries);
        let text = String::from_utf8(sql.clone()).unwrap();
        assert!(text.starts_with("CREATE TABLE t1 (a int);\n\nCREATE TABLE"));
        assert_eq!(rebuild_entries(&sql, &toc, "k").unwrap(), entries);
        let mut bad = toc.clone();
        bad.entries[1].length = 10_000;
        assert!(matches!(
            rebuild_entries(&sql, &bad, "k"),
            Err(Error::Integrity(_))
        ));
    }
}
