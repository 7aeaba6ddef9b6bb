//! Which server a logical backup reads: PostgreSQL, Greenplum or
//! Cloudberry. The Greenplum/Cloudberry catalogs (`gp_distribution_policy`,
//! `pg_appendonly`, `pg_exttable`, `pg_resqueue`, `pg_resgroup`...) are
//! only read when the flavor says they are there, so a PostgreSQL server
//! never sees those queries.
//!
//! Detection follows gpbackup (`dbconn` reads `version()`: Greenplum says
//! "Greenplum Database", Cloudberry "Cloudberry Database" or "Apache
//! Cloudberry"); a server whose version names neither but that has
//! `gp_distribution_policy` (a fork such as Greengage) counts as Greenplum.

use serde::{Deserialize, Serialize};

use super::super::{query_one, RowExt};
use crate::error::Result;
use crate::pg::conn::PgConn;

/// The kind of server, as recorded in a backup's record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerFlavor {
    /// PostgreSQL (and anything without the Greenplum catalogs): the
    /// default of records written before the flavor was recorded.
    #[default]
    Postgresql,
    /// Greenplum Database (6 is built on PostgreSQL 9.4, 7 on 12).
    Greenplum,
    /// Cloudberry (built on PostgreSQL 14).
    Cloudberry,
}

impl ServerFlavor {
    /// From `version()` and whether `pg_catalog.gp_distribution_policy`
    /// exists.
    pub fn from_version(version: &str, has_policy_catalog: bool) -> ServerFlavor {
        if version.contains("Cloudberry") {
            ServerFlavor::Cloudberry
        } else if version.contains("Greenplum Database") || has_policy_catalog {
            ServerFlavor::Greenplum
        } else {
            ServerFlavor::Postgresql
        }
    }

    /// Greenplum or Cloudberry: the MPP catalogs are there.
    pub fn is_mpp(self) -> bool {
        self != ServerFlavor::Postgresql
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServerFlavor::Postgresql => "PostgreSQL",
            ServerFlavor::Greenplum => "Greenplum",
            ServerFlavor::Cloudberry => "Cloudberry",
        }
    }
}

/// Reads the connected server's flavor (one SELECT, fine in any
/// transaction).
pub async fn detect(conn: &mut PgConn) -> Result<ServerFlavor> {
    let r = query_one(
        conn,
        "server flavor",
        "SELECT pg_catalog.version() AS version, \
                pg_catalog.to_regclass('pg_catalog.gp_distribution_policy') IS NOT NULL AS has_policy",
    )
    .await?;
    Ok(ServerFlavor::from_version(
        &r.text("version")?,
        r.flag("has_policy")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavors_from_version_strings() {
        let pg =
            "PostgreSQL 15.10 (Debian 15.10-0+deb12u1) on x86_64-pc-linux-gnu, compiled by gcc";
        assert_eq!(
            ServerFlavor::from_version(pg, false),
            ServerFlavor::Postgresql
        );
        let gp6 = "PostgreSQL 9.4.26 (Greenplum Database 6.25.3 build commit:367edc6b) on x86_64-unknown-linux-gnu";
        assert_eq!(
            ServerFlavor::from_version(gp6, true),
            ServerFlavor::Greenplum
        );
        let gp7 = "PostgreSQL 12.12 (Greenplum Database 7.1.0 build commit:e7c2b1f) on x86_64-pc-linux-gnu";
        assert_eq!(
            ServerFlavor::from_version(gp7, true),
            ServerFlavor::Greenplum
        );
        let cb = "PostgreSQL 14.4 (Cloudberry Database 1.5.4 build commit:2a3c4f0) on x86_64-pc-linux-gnu";
        assert_eq!(
            ServerFlavor::from_version(cb, true),
            ServerFlavor::Cloudberry
        );
        let acb =
            "PostgreSQL 14.4 (Apache Cloudberry 2.0.0-incubating build commit:1234) on aarch64";
        assert_eq!(
            ServerFlavor::from_version(acb, true),
            ServerFlavor::Cloudberry
        );
        // A fork that names itself otherwise but has the catalog.
        let fork = "PostgreSQL 12.12 (Greengage Database 7.2.0) on x86_64";
        assert_eq!(
            ServerFlavor::from_version(fork, true),
            ServerFlavor::Greenplum
        );
        assert!(!ServerFlavor::Postgresql.is_mpp());
        assert!(ServerFlavor::Cloudberry.is_mpp() && ServerFlavor::Greenplum.is_mpp());
    }

    #[test]
    fn older_records_read_as_postgresql() {
        #[derive(Deserialize)]
        struct R {
            #[serde(default)]
            flavor: ServerFlavor,
        }
        let r: R = serde_json::from_str("{}").unwrap();
        assert_eq!(r.flavor, ServerFlavor::Postgresql);
        let r: R = serde_json::from_str("{\"flavor\":\"cloudberry\"}").unwrap();
        assert_eq!(r.flavor, ServerFlavor::Cloudberry);
    }
}
