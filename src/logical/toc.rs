//! The table of contents of a logical backup: one entry per object, with
//! the DDL that creates it, so a restore can take any subset of objects and
//! the objects that belong to them, in dependency order.
//!
//! `metadata` (catalog queries → DDL) produces these entries; the backup
//! writes the statements to the metadata object and the entries to the TOC;
//! the restore filters, redirects and replays them.

use serde::{Deserialize, Serialize};

/// Where an entry is replayed: globals first, then everything a table's data
/// needs (pre-data), then the data, then indexes, constraints, triggers and
/// other objects that are cheaper to build after the rows are in (post-data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    Globals,
    PreData,
    PostData,
}

/// A schema-qualified name (unquoted, as in the catalogs).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    /// `schema.name` as SQL (and gpbackup's messages) write it, each part
    /// quoted as needed.
    pub fn quoted(&self) -> String {
        crate::pg::quote::qualified(&self.schema, &self.name)
    }
}

/// One object of the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TocEntry {
    /// Position in replay order (unique within a backup).
    pub id: u32,
    pub section: Section,
    /// Object kind in gpbackup's spelling: "SCHEMA", "TABLE", "VIEW",
    /// "MATERIALIZED VIEW", "SEQUENCE", "SEQUENCE OWNER", "INDEX",
    /// "CONSTRAINT", "TRIGGER", "FUNCTION", "PROCEDURE", "TYPE", "DOMAIN",
    /// "COMMENT", "ACL", "ROLE", "TABLESPACE", ...
    pub kind: String,
    /// Schema of the object ("" for globals and schemas themselves).
    pub schema: String,
    /// Name of the object (for functions, with the argument types).
    pub name: String,
    /// The table this object belongs to (its index, constraint, trigger,
    /// owned sequence, comment...): a filter on tables takes it along, a
    /// schema redirect moves it along.
    pub owner_table: Option<QualifiedName>,
    /// Ids of the entries that must be replayed before this one.
    pub depends_on: Vec<u32>,
    /// The SQL, one or more complete statements each ending in ';'.
    pub statement: String,
}
