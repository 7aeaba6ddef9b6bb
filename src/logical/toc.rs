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

/// The kind of a TOC entry, stored under gpbackup's spelling ("TABLE",
/// "MATERIALIZED VIEW", "SEQUENCE OWNED BY"...). A kind this version does
/// not know (a TOC written by a newer one) is kept as [`ObjectKind::Other`],
/// so every stored TOC stays readable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ObjectKind {
    Role,
    RoleGrant,
    Tablespace,
    Schema,
    Extension,
    Collation,
    Type,
    Domain,
    Function,
    Procedure,
    Aggregate,
    Sequence,
    Table,
    ForeignTable,
    TableAttach,
    SequenceOwnedBy,
    Default,
    SequenceSet,
    View,
    MaterializedView,
    Index,
    Constraint,
    IndexAttach,
    FkConstraint,
    Trigger,
    Rule,
    Policy,
    RowSecurity,
    Statistics,
    MaterializedViewData,
    DefaultAcl,
    Owner,
    Comment,
    Acl,
    AccessMethod,
    ShellType,
    Operator,
    OperatorFamily,
    OperatorClass,
    Cast,
    Transform,
    TextSearchParser,
    TextSearchTemplate,
    TextSearchDictionary,
    TextSearchConfiguration,
    ForeignDataWrapper,
    Server,
    UserMapping,
    Publication,
    PublicationTable,
    PublicationTablesInSchema,
    EventTrigger,
    ProceduralLanguage,
    Conversion,
    DatabaseProperties,
    Other(String),
}

impl ObjectKind {
    /// Every known kind (not [`ObjectKind::Other`]).
    pub const KNOWN: &'static [ObjectKind] = &[
        ObjectKind::Role,
        ObjectKind::RoleGrant,
        ObjectKind::Tablespace,
        ObjectKind::Schema,
        ObjectKind::Extension,
        ObjectKind::Collation,
        ObjectKind::Type,
        ObjectKind::Domain,
        ObjectKind::Function,
        ObjectKind::Procedure,
        ObjectKind::Aggregate,
        ObjectKind::Sequence,
        ObjectKind::Table,
        ObjectKind::ForeignTable,
        ObjectKind::TableAttach,
        ObjectKind::SequenceOwnedBy,
        ObjectKind::Default,
        ObjectKind::SequenceSet,
        ObjectKind::View,
        ObjectKind::MaterializedView,
        ObjectKind::Index,
        ObjectKind::Constraint,
        ObjectKind::IndexAttach,
        ObjectKind::FkConstraint,
        ObjectKind::Trigger,
        ObjectKind::Rule,
        ObjectKind::Policy,
        ObjectKind::RowSecurity,
        ObjectKind::Statistics,
        ObjectKind::MaterializedViewData,
        ObjectKind::DefaultAcl,
        ObjectKind::Owner,
        ObjectKind::Comment,
        ObjectKind::Acl,
        ObjectKind::AccessMethod,
        ObjectKind::ShellType,
        ObjectKind::Operator,
        ObjectKind::OperatorFamily,
        ObjectKind::OperatorClass,
        ObjectKind::Cast,
        ObjectKind::Transform,
        ObjectKind::TextSearchParser,
        ObjectKind::TextSearchTemplate,
        ObjectKind::TextSearchDictionary,
        ObjectKind::TextSearchConfiguration,
        ObjectKind::ForeignDataWrapper,
        ObjectKind::Server,
        ObjectKind::UserMapping,
        ObjectKind::Publication,
        ObjectKind::PublicationTable,
        ObjectKind::PublicationTablesInSchema,
        ObjectKind::EventTrigger,
        ObjectKind::ProceduralLanguage,
        ObjectKind::Conversion,
        ObjectKind::DatabaseProperties,
    ];

    /// gpbackup's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            ObjectKind::Role => "ROLE",
            ObjectKind::RoleGrant => "ROLE GRANT",
            ObjectKind::Tablespace => "TABLESPACE",
            ObjectKind::Schema => "SCHEMA",
            ObjectKind::Extension => "EXTENSION",
            ObjectKind::Collation => "COLLATION",
            ObjectKind::Type => "TYPE",
            ObjectKind::Domain => "DOMAIN",
            ObjectKind::Function => "FUNCTION",
            ObjectKind::Procedure => "PROCEDURE",
            ObjectKind::Aggregate => "AGGREGATE",
            ObjectKind::Sequence => "SEQUENCE",
            ObjectKind::Table => "TABLE",
            ObjectKind::ForeignTable => "FOREIGN TABLE",
            ObjectKind::TableAttach => "TABLE ATTACH",
            ObjectKind::SequenceOwnedBy => "SEQUENCE OWNED BY",
            ObjectKind::Default => "DEFAULT",
            ObjectKind::SequenceSet => "SEQUENCE SET",
            ObjectKind::View => "VIEW",
            ObjectKind::MaterializedView => "MATERIALIZED VIEW",
            ObjectKind::Index => "INDEX",
            ObjectKind::Constraint => "CONSTRAINT",
            ObjectKind::IndexAttach => "INDEX ATTACH",
            ObjectKind::FkConstraint => "FK CONSTRAINT",
            ObjectKind::Trigger => "TRIGGER",
            ObjectKind::Rule => "RULE",
            ObjectKind::Policy => "POLICY",
            ObjectKind::RowSecurity => "ROW SECURITY",
            ObjectKind::Statistics => "STATISTICS",
            ObjectKind::MaterializedViewData => "MATERIALIZED VIEW DATA",
            ObjectKind::DefaultAcl => "DEFAULT ACL",
            ObjectKind::Owner => "OWNER",
            ObjectKind::Comment => "COMMENT",
            ObjectKind::Acl => "ACL",
            ObjectKind::AccessMethod => "ACCESS METHOD",
            ObjectKind::ShellType => "SHELL TYPE",
            ObjectKind::Operator => "OPERATOR",
            ObjectKind::OperatorFamily => "OPERATOR FAMILY",
            ObjectKind::OperatorClass => "OPERATOR CLASS",
            ObjectKind::Cast => "CAST",
            ObjectKind::Transform => "TRANSFORM",
            ObjectKind::TextSearchParser => "TEXT SEARCH PARSER",
            ObjectKind::TextSearchTemplate => "TEXT SEARCH TEMPLATE",
            ObjectKind::TextSearchDictionary => "TEXT SEARCH DICTIONARY",
            ObjectKind::TextSearchConfiguration => "TEXT SEARCH CONFIGURATION",
            ObjectKind::ForeignDataWrapper => "FOREIGN DATA WRAPPER",
            ObjectKind::Server => "SERVER",
            ObjectKind::UserMapping => "USER MAPPING",
            ObjectKind::Publication => "PUBLICATION",
            ObjectKind::PublicationTable => "PUBLICATION TABLE",
            ObjectKind::PublicationTablesInSchema => "PUBLICATION TABLES IN SCHEMA",
            ObjectKind::EventTrigger => "EVENT TRIGGER",
            ObjectKind::ProceduralLanguage => "PROCEDURAL LANGUAGE",
            ObjectKind::Conversion => "CONVERSION",
            ObjectKind::DatabaseProperties => "DATABASE PROPERTIES",
            ObjectKind::Other(s) => s,
        }
    }
}

impl From<&str> for ObjectKind {
    fn from(s: &str) -> ObjectKind {
        match s {
            "ROLE" => ObjectKind::Role,
            "ROLE GRANT" => ObjectKind::RoleGrant,
            "TABLESPACE" => ObjectKind::Tablespace,
            "SCHEMA" => ObjectKind::Schema,
            "EXTENSION" => ObjectKind::Extension,
            "COLLATION" => ObjectKind::Collation,
            "TYPE" => ObjectKind::Type,
            "DOMAIN" => ObjectKind::Domain,
            "FUNCTION" => ObjectKind::Function,
            "PROCEDURE" => ObjectKind::Procedure,
            "AGGREGATE" => ObjectKind::Aggregate,
            "SEQUENCE" => ObjectKind::Sequence,
            "TABLE" => ObjectKind::Table,
            "FOREIGN TABLE" => ObjectKind::ForeignTable,
            "TABLE ATTACH" => ObjectKind::TableAttach,
            "SEQUENCE OWNED BY" => ObjectKind::SequenceOwnedBy,
            "DEFAULT" => ObjectKind::Default,
            "SEQUENCE SET" => ObjectKind::SequenceSet,
            "VIEW" => ObjectKind::View,
            "MATERIALIZED VIEW" => ObjectKind::MaterializedView,
            "INDEX" => ObjectKind::Index,
            "CONSTRAINT" => ObjectKind::Constraint,
            "INDEX ATTACH" => ObjectKind::IndexAttach,
            "FK CONSTRAINT" => ObjectKind::FkConstraint,
            "TRIGGER" => ObjectKind::Trigger,
            "RULE" => ObjectKind::Rule,
            "POLICY" => ObjectKind::Policy,
            "ROW SECURITY" => ObjectKind::RowSecurity,
            "STATISTICS" => ObjectKind::Statistics,
            "MATERIALIZED VIEW DATA" => ObjectKind::MaterializedViewData,
            "DEFAULT ACL" => ObjectKind::DefaultAcl,
            "OWNER" => ObjectKind::Owner,
            "COMMENT" => ObjectKind::Comment,
            "ACL" => ObjectKind::Acl,
            "ACCESS METHOD" => ObjectKind::AccessMethod,
            "SHELL TYPE" => ObjectKind::ShellType,
            "OPERATOR" => ObjectKind::Operator,
            "OPERATOR FAMILY" => ObjectKind::OperatorFamily,
            "OPERATOR CLASS" => ObjectKind::OperatorClass,
            "CAST" => ObjectKind::Cast,
            "TRANSFORM" => ObjectKind::Transform,
            "TEXT SEARCH PARSER" => ObjectKind::TextSearchParser,
            "TEXT SEARCH TEMPLATE" => ObjectKind::TextSearchTemplate,
            "TEXT SEARCH DICTIONARY" => ObjectKind::TextSearchDictionary,
            "TEXT SEARCH CONFIGURATION" => ObjectKind::TextSearchConfiguration,
            "FOREIGN DATA WRAPPER" => ObjectKind::ForeignDataWrapper,
            "SERVER" => ObjectKind::Server,
            "USER MAPPING" => ObjectKind::UserMapping,
            "PUBLICATION" => ObjectKind::Publication,
            "PUBLICATION TABLE" => ObjectKind::PublicationTable,
            "PUBLICATION TABLES IN SCHEMA" => ObjectKind::PublicationTablesInSchema,
            "EVENT TRIGGER" => ObjectKind::EventTrigger,
            "PROCEDURAL LANGUAGE" => ObjectKind::ProceduralLanguage,
            "CONVERSION" => ObjectKind::Conversion,
            "DATABASE PROPERTIES" => ObjectKind::DatabaseProperties,
            other => ObjectKind::Other(other.to_string()),
        }
    }
}

impl From<String> for ObjectKind {
    fn from(s: String) -> ObjectKind {
        match ObjectKind::from(s.as_str()) {
            ObjectKind::Other(_) => ObjectKind::Other(s),
            known => known,
        }
    }
}

impl From<ObjectKind> for String {
    fn from(k: ObjectKind) -> String {
        match k {
            ObjectKind::Other(s) => s,
            known => known.as_str().to_string(),
        }
    }
}

/// Compares with gpbackup's spelling (`kind == "TABLE"`).
impl PartialEq<str> for ObjectKind {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ObjectKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object of the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TocEntry {
    /// Position in replay order (unique within a backup).
    pub id: u32,
    pub section: Section,
    /// Object kind, stored in gpbackup's spelling.
    pub kind: ObjectKind,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_their_stored_spelling() {
        for k in ObjectKind::KNOWN {
            assert_eq!(&ObjectKind::from(k.as_str()), k);
            let json = serde_json::to_string(k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(&serde_json::from_str::<ObjectKind>(&json).unwrap(), k);
        }
        assert_eq!(
            serde_json::to_string(&ObjectKind::MaterializedViewData).unwrap(),
            "\"MATERIALIZED VIEW DATA\""
        );
        // A kind of a newer cbdr is kept as it is.
        let other: ObjectKind = serde_json::from_str("\"SUBSCRIPTION\"").unwrap();
        assert_eq!(other, ObjectKind::Other("SUBSCRIPTION".into()));
        assert_eq!(serde_json::to_string(&other).unwrap(), "\"SUBSCRIPTION\"");
        assert_eq!(other.to_string(), "SUBSCRIPTION");
    }
}
