//! Distribution policies (`gp_distribution_policy`), appended to CREATE
//! TABLE as `DISTRIBUTED BY (...)`, `DISTRIBUTED RANDOMLY` or
//! `DISTRIBUTED REPLICATED`.
//!
//! From Cloudberry's `src/include/catalog/gp_distribution_policy.h`
//! (the Greenplum 7 catalog): `localoid`, `policytype` ('p' partitioned,
//! 'r' replicated), `numsegments`, `distkey` (int2vector of column
//! numbers; empty for a random policy) and `distclass` (oidvector of hash
//! operator classes, one per key column). As `pg_get_table_distributedby`
//! does, an operator class is written only when it is not the default
//! hash class of the column's type (e.g. the legacy `cdbhash_*_ops`).
//! `numsegments` is not written: the restored table spreads over the
//! target cluster's segments, as gpbackup's tables do.
//!
//! **Untested: no Greenplum/Cloudberry build here.**

use serde::Deserialize;

/// One key column of a hash policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct DistKey {
    /// Quoted column name.
    pub column: String,
    /// Quoted, schema-qualified operator class; `None` for the default
    /// hash class of the column's type.
    pub opclass: Option<String>,
}

/// A row of `gp_distribution_policy`, with its key columns resolved.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Policy {
    pub policytype: String,
    /// NULL (no key columns) for a random or replicated policy.
    #[serde(default)]
    pub keys: Option<Vec<DistKey>>,
}

/// SQL: the policies of user relations, `localoid` and `policy` (JSON of
/// [`Policy`]).
pub(crate) const POLICIES_SQL: &str = "\
SELECT p.localoid, pg_catalog.json_build_object('policytype', p.policytype::text, 'keys', \
  (SELECT pg_catalog.json_agg(pg_catalog.json_build_object( \
      'column', pg_catalog.quote_ident(a.attname), \
      'opclass', CASE WHEN oc.oid IS NULL OR oc.opcdefault AND oc.opcintype = a.atttypid THEN NULL \
                      ELSE pg_catalog.format('%I.%I', ocn.nspname, oc.opcname) END) ORDER BY k.ord) \
     FROM pg_catalog.unnest(p.distkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, ord) \
     JOIN pg_catalog.pg_attribute a ON a.attrelid = p.localoid AND a.attnum = k.attnum \
     LEFT JOIN pg_catalog.unnest(p.distclass::pg_catalog.oid[]) WITH ORDINALITY AS c(opc, ord) ON c.ord = k.ord \
     LEFT JOIN pg_catalog.pg_opclass oc ON oc.oid = c.opc \
     LEFT JOIN pg_catalog.pg_namespace ocn ON ocn.oid = oc.opcnamespace)) AS policy \
FROM pg_catalog.gp_distribution_policy p WHERE p.localoid >= 16384";

/// The clause for `policy`.
pub(crate) fn distributed_clause(policy: &Policy) -> String {
    if policy.policytype == "r" {
        return "DISTRIBUTED REPLICATED".to_string();
    }
    let keys = policy.keys.as_deref().unwrap_or_default();
    if keys.is_empty() {
        return "DISTRIBUTED RANDOMLY".to_string();
    }
    let keys: Vec<String> = keys
        .iter()
        .map(|k| match &k.opclass {
            Some(oc) => format!("{} {oc}", k.column),
            None => k.column.clone(),
        })
        .collect();
    format!("DISTRIBUTED BY ({})", keys.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(column: &str, opclass: Option<&str>) -> DistKey {
        DistKey {
            column: column.into(),
            opclass: opclass.map(String::from),
        }
    }

    #[test]
    fn policies_become_clauses() {
        let hash = Policy {
            policytype: "p".into(),
            keys: Some(vec![
                key("a", None),
                key("\"B c\"", Some("public.cdbhash_int4_ops")),
            ]),
        };
        assert_eq!(
            distributed_clause(&hash),
            "DISTRIBUTED BY (a, \"B c\" public.cdbhash_int4_ops)"
        );
        let random = Policy {
            policytype: "p".into(),
            keys: Some(vec![]),
        };
        assert_eq!(distributed_clause(&random), "DISTRIBUTED RANDOMLY");
        let replicated = Policy {
            policytype: "r".into(),
            keys: None,
        };
        assert_eq!(distributed_clause(&replicated), "DISTRIBUTED REPLICATED");
    }

    #[test]
    fn a_policy_row_reads_from_its_json() {
        let p: Policy =
            serde_json::from_str(r#"{"policytype":"p","keys":[{"column":"id","opclass":null}]}"#)
                .unwrap();
        assert_eq!(distributed_clause(&p), "DISTRIBUTED BY (id)");
        // json_agg over no key columns is NULL.
        let p: Policy = serde_json::from_str(r#"{"policytype":"p","keys":null}"#).unwrap();
        assert_eq!(distributed_clause(&p), "DISTRIBUTED RANDOMLY");
        let p: Policy = serde_json::from_str(r#"{"policytype":"r","keys":null}"#).unwrap();
        assert_eq!(distributed_clause(&p), "DISTRIBUTED REPLICATED");
    }
}
