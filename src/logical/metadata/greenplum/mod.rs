//! What Greenplum and Cloudberry add to PostgreSQL's catalog, for the
//! logical backup: the server's [flavor](ServerFlavor), distribution
//! policies, append-optimized storage and column encodings, external
//! tables (all appended to or replacing CREATE TABLE, through
//! [`TableExtras`]), external protocols, resource queues and groups (with
//! `--with-globals`),
//! and the inventory of what the backup still does not carry there.
//!
//! Every query here runs only when [`detect`] says the server is
//! Greenplum or Cloudberry: PostgreSQL never sees them.
//!
//! Written from the sources (Cloudberry's catalog headers, gpbackup's
//! `backup/queries_*.go` and `predata_*.go`), cited in each module.
//! **Untested: no Greenplum/Cloudberry build here.** The logical backup
//! reads servers built on PostgreSQL 14 or later, so of these only
//! Cloudberry is read today; Greenplum 6 (9.4) and 7 (12) are refused by
//! the version check before any of this runs, and their spellings here
//! (Greenplum 6's `appendonly=true` reloptions, Greenplum 7's
//! `memory_limit`) are covered by unit tests only.

mod distribution;
mod external;
mod flavor;
pub(crate) mod protocols;
pub(crate) mod resources;
mod storage;

use std::collections::HashMap;

use super::{query, ObjRef, RowExt};
use crate::error::Result;
use crate::pg::conn::PgConn;

pub use flavor::{detect, ServerFlavor};

use distribution::Policy;
use external::ExtTable;
use storage::{AoRow, AoSyntax};

/// The catalogs read here (besides PostgreSQL's): the inventory counts
/// them as carried.
pub(crate) const CARRIED_CATALOGS: &[&str] = &[
    "gp_distribution_policy",
    "pg_appendonly",
    "pg_attribute_encoding",
    "pg_exttable",
    "pg_resqueue",
    "pg_resqueuecapability",
    "pg_resourcetype",
    "pg_resgroup",
    "pg_resgroupcapability",
    "pg_auth_time_constraint",
    "pg_extprotocol",
];

/// The Greenplum/Cloudberry parts of the tables, by relation OID.
#[derive(Debug)]
pub(crate) struct TableExtras {
    policies: HashMap<u32, Policy>,
    appendonly: HashMap<u32, AoRow>,
    encodings: HashMap<(u32, i32), Vec<String>>,
    externals: HashMap<u32, ExtTable>,
    /// External table → the custom protocol (`pg_extprotocol` OID) it uses.
    protocols: HashMap<u32, u32>,
    syntax: AoSyntax,
}

impl TableExtras {
    /// Reads them (one query per catalog) on a Greenplum or Cloudberry
    /// server of release `server_version_num`.
    pub(crate) async fn read(conn: &mut PgConn, server_version_num: u32) -> Result<TableExtras> {
        let mut policies = HashMap::new();
        for r in query(conn, "distribution policies", distribution::POLICIES_SQL).await? {
            policies.insert(r.oid("localoid")?, r.json("policy")?);
        }
        let mut appendonly = HashMap::new();
        for r in query(conn, "append-optimized tables", storage::APPENDONLY_SQL).await? {
            appendonly.insert(r.oid("relid")?, r.json("ao")?);
        }
        let mut encodings = HashMap::new();
        for r in query(conn, "column encodings", storage::ENCODINGS_SQL).await? {
            let attnum = i32::try_from(r.int("attnum")?).unwrap_or(0);
            encodings.insert(
                (r.oid("attrelid")?, attnum),
                r.opt_json::<Vec<String>>("options")?.unwrap_or_default(),
            );
        }
        let mut externals = HashMap::new();
        let mut protocols = HashMap::new();
        for r in query(conn, "external tables", external::EXTTABLES_SQL).await? {
            let ext = ExtTable::from_row(
                &r.json::<serde_json::Value>("ext")?,
                &r.opt("encoding_name")?.unwrap_or_default(),
                r.flag("persistent")?,
            )?;
            let oid = r.oid("reloid")?;
            if r.opt("protocol_oid")?.is_some() {
                protocols.insert(oid, r.oid("protocol_oid")?);
            }
            externals.insert(oid, ext);
        }
        Ok(TableExtras {
            policies,
            appendonly,
            encodings,
            externals,
            protocols,
            // Greenplum 7 (PostgreSQL 12) brought table access methods.
            syntax: if server_version_num != 0 && server_version_num < 120000 {
                AoSyntax::Reloptions
            } else {
                AoSyntax::AccessMethod
            },
        })
    }

    /// `DISTRIBUTED ...` of relation `oid`, if it has a policy.
    pub(crate) fn distributed_by(&self, oid: u32) -> Option<String> {
        self.policies
            .get(&oid)
            .map(distribution::distributed_clause)
    }

    /// The storage options (`k=v`) of relation `oid` with `reloptions`.
    pub(crate) fn storage_options(&self, oid: u32, reloptions: &[String]) -> Vec<String> {
        storage::storage_options(reloptions, self.appendonly.get(&oid), self.syntax)
    }

    /// ` ENCODING (...)` of column `attnum` of a column-oriented table.
    pub(crate) fn encoding(&self, oid: u32, attnum: i32) -> Option<String> {
        let column_oriented = self.appendonly.get(&oid).is_some_and(|a| a.columnstore);
        if !column_oriented {
            return None;
        }
        self.encodings
            .get(&(oid, attnum))
            .map(|o| storage::encoding_clause(o))
            .filter(|s| !s.is_empty())
    }

    /// What external table `oid` needs created first besides its schema:
    /// its custom protocol.
    pub(crate) fn external_needs(&self, oid: u32) -> Option<ObjRef> {
        self.protocols
            .get(&oid)
            .map(|p| ObjRef::new(protocols::PG_EXTPROTOCOL, *p))
    }

    /// The CREATE statement of relation `oid` when it is an external
    /// table, with column lines `lines`.
    pub(crate) fn external_table_sql(
        &self,
        oid: u32,
        qn: &str,
        lines: &[String],
    ) -> Option<String> {
        let ext = self.externals.get(&oid)?;
        Some(external::create_sql(
            qn,
            lines,
            ext,
            self.distributed_by(oid).as_deref(),
        ))
    }
}

/// SELECTs (each with one text column) for the inventory: objects of the
/// Greenplum/Cloudberry catalog the backup does not carry, among the
/// catalogs this server has (`existing`: catalog names).
pub(crate) fn uncarried_parts(existing: &[String]) -> Vec<String> {
    let has = |c: &str| existing.iter().any(|e| e == c);
    let mut parts = Vec::new();
    if has("pg_type_encoding") {
        parts.push(
            "SELECT pg_catalog.format('default column encoding of type %s', e.typid::pg_catalog.regtype) \
             FROM pg_catalog.pg_type_encoding e WHERE e.typid >= 16384"
                .to_string(),
        );
    }
    if has("gp_partition_template") {
        parts.push(
            "SELECT pg_catalog.format('subpartition template of table %s', t.relid::pg_catalog.regclass) \
             FROM pg_catalog.gp_partition_template t WHERE t.relid >= 16384"
                .to_string(),
        );
    }
    parts
}

/// The Greenplum/Cloudberry catalogs [`uncarried_parts`] may read.
pub(crate) const INVENTORY_CATALOGS: &[&str] = &["pg_type_encoding", "gp_partition_template"];

#[cfg(test)]
mod tests {
    use super::*;

    fn extras() -> TableExtras {
        let mut policies = HashMap::new();
        policies.insert(
            1,
            serde_json::from_str(r#"{"policytype":"p","keys":[{"column":"a","opclass":null}]}"#)
                .unwrap(),
        );
        let mut appendonly = HashMap::new();
        appendonly.insert(
            1,
            serde_json::from_str(
                r#"{"blocksize":32768,"compresslevel":1,"checksum":true,"compresstype":"zlib","columnstore":true}"#,
            )
            .unwrap(),
        );
        appendonly.insert(
            2,
            serde_json::from_str(r#"{"compresstype":"","columnstore":false}"#).unwrap(),
        );
        let mut encodings = HashMap::new();
        encodings.insert((1, 1), vec!["compresstype=zlib".to_string()]);
        encodings.insert((2, 1), vec!["compresstype=zlib".to_string()]);
        TableExtras {
            policies,
            appendonly,
            encodings,
            externals: HashMap::new(),
            protocols: HashMap::from([(5, 16400)]),
            syntax: AoSyntax::AccessMethod,
        }
    }

    #[test]
    fn tables_get_their_policy_storage_and_encodings() {
        let x = extras();
        assert_eq!(x.distributed_by(1).as_deref(), Some("DISTRIBUTED BY (a)"));
        assert_eq!(x.distributed_by(3), None);
        assert_eq!(
            x.storage_options(1, &[]),
            vec![
                "compresstype=zlib",
                "compresslevel=1",
                "blocksize=32768",
                "checksum=true"
            ]
        );
        assert_eq!(
            x.storage_options(3, &["fillfactor=50".into()]),
            vec!["fillfactor=50"]
        );
        assert_eq!(
            x.encoding(1, 1).as_deref(),
            Some(" ENCODING (compresstype=zlib)")
        );
        // Row-oriented tables have no column encodings.
        assert_eq!(x.encoding(2, 1), None);
        assert_eq!(x.encoding(1, 2), None);
        assert_eq!(x.external_table_sql(1, "s.t", &[]), None);
        assert_eq!(x.external_needs(1), None);
        assert_eq!(
            x.external_needs(5),
            Some(ObjRef::new(protocols::PG_EXTPROTOCOL, 16400))
        );
    }

    #[test]
    fn the_inventory_reads_only_catalogs_the_server_has() {
        assert!(uncarried_parts(&[]).is_empty());
        let parts = uncarried_parts(&["pg_type_encoding".to_string()]);
        assert_eq!(parts.len(), 1);
        assert!(parts[0].contains("pg_type_encoding"));
        assert_eq!(
            uncarried_parts(
                &INVENTORY_CATALOGS
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
            )
            .len(),
            2
        );
    }
}
