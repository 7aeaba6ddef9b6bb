//! What the logical backup does not carry, found from the catalogs
//! themselves rather than from a list of known kinds: rows of every
//! per-database catalog with object OIDs that no collector reads (a
//! catalog of a newer release or of a fork), relations and
//! types of kinds the collectors do not know, security labels (no label
//! provider can be loaded here to test them) and subscriptions the backup's
//! role may not read. The backup fails on them by default, naming each.
//!
//! On Greenplum and Cloudberry the catalogs the backup reads there count
//! as carried, and the type default encodings (`pg_type_encoding`) and
//! subpartition templates (`gp_partition_template`), which it does not
//! carry, are listed (catalogs without an `oid` column, so the scan of
//! catalogs would not find them).

use super::{not_extension_member, query, user_schema, RowExt};
use crate::error::Result;
use crate::pg::conn::PgConn;

/// Catalogs whose objects the collectors carry (or that belong to other
/// objects: enum labels to their type, amop/amproc to their class).
const CARRIED_CATALOGS: &[&str] = &[
    "pg_namespace",
    "pg_type",
    "pg_proc",
    "pg_class",
    "pg_attrdef",
    "pg_constraint",
    "pg_rewrite",
    "pg_trigger",
    "pg_policy",
    "pg_statistic_ext",
    "pg_collation",
    "pg_extension",
    "pg_default_acl",
    "pg_am",
    "pg_amop",
    "pg_amproc",
    "pg_operator",
    "pg_opfamily",
    "pg_opclass",
    "pg_cast",
    "pg_transform",
    "pg_ts_parser",
    "pg_ts_template",
    "pg_ts_dict",
    "pg_ts_config",
    "pg_foreign_data_wrapper",
    "pg_foreign_server",
    "pg_user_mapping",
    "pg_publication",
    "pg_publication_rel",
    "pg_publication_namespace",
    "pg_event_trigger",
    "pg_language",
    "pg_conversion",
    "pg_enum",
    "pg_largeobject_metadata",
];

/// Relation kinds the collectors handle (tables, partitioned and foreign
/// tables, views, materialized views, sequences, indexes, toast tables,
/// composite types).
const CARRIED_RELKINDS: &str = "'r', 'p', 'f', 'v', 'm', 'S', 'i', 'I', 't', 'c'";

/// Type kinds the collectors handle.
const CARRIED_TYPTYPES: &str = "'b', 'c', 'd', 'e', 'p', 'r', 'm'";

/// One line per object the backup would leave out: `large object 16401`,
/// `subscription sub1`...
pub async fn uncarried(conn: &mut PgConn) -> Result<Vec<String>> {
    let flavor = super::greenplum::detect(conn).await?;
    let carried: Vec<String> = CARRIED_CATALOGS
        .iter()
        .chain(
            super::greenplum::CARRIED_CATALOGS
                .iter()
                .filter(|_| flavor.is_mpp()),
        )
        .chain(
            super::greenplum::INVENTORY_CATALOGS
                .iter()
                .filter(|_| flavor.is_mpp()),
        )
        .map(|c| super::quote_literal(c))
        .collect();
    let catalogs = query(
        conn,
        "catalogs",
        &format!(
            "SELECT c.relname FROM pg_catalog.pg_class c \
             WHERE c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.relkind = 'r' \
               AND NOT c.relisshared AND c.relname NOT IN ({}) \
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid \
                           AND a.attname = 'oid' AND a.attnum > 0 AND a.atttypid = 'pg_catalog.oid'::pg_catalog.regtype) \
             ORDER BY c.relname",
            carried.join(", ")
        ),
    )
    .await?;
    let mut parts = vec![
        format!(
            "SELECT pg_catalog.format('relation %I.%I of kind %s', n.nspname, c.relname, c.relkind) AS what \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind NOT IN ({CARRIED_RELKINDS}) AND {user} AND {ext}",
            user = user_schema("n"),
            ext = not_extension_member("pg_class", "c.oid"),
        ),
        format!(
            "SELECT pg_catalog.format('type %I.%I of kind %s', n.nspname, t.typname, t.typtype) \
             FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
             WHERE t.typtype NOT IN ({CARRIED_TYPTYPES}) AND {user} AND {ext}",
            user = user_schema("n"),
            ext = not_extension_member("pg_type", "t.oid"),
        ),
        "SELECT pg_catalog.format('security label (%s) on %s', l.provider, \
                pg_catalog.pg_describe_object(l.classoid, l.objoid, l.objsubid)) \
         FROM pg_catalog.pg_seclabel l WHERE l.objoid >= 16384"
            .to_string(),
        format!(
            "SELECT pg_catalog.format('subscription %I (its connection string is readable by \
                    superusers only: back up as one)', s.subname) \
             FROM pg_catalog.pg_subscription s WHERE {} AND NOT {}",
            super::subscriptions::OF_THIS_DATABASE,
            super::subscriptions::READABLE
        ),
    ];
    if flavor.is_mpp() {
        let names: Vec<String> = super::greenplum::INVENTORY_CATALOGS
            .iter()
            .map(|c| super::quote_literal(c))
            .collect();
        let existing: Vec<String> = query(
            conn,
            "Greenplum catalogs",
            &format!(
                "SELECT c.relname FROM pg_catalog.pg_class c \
                 WHERE c.relnamespace = 'pg_catalog'::pg_catalog.regnamespace AND c.relname IN ({})",
                names.join(", ")
            ),
        )
        .await?
        .iter()
        .map(|r| r.text("relname"))
        .collect::<Result<_>>()?;
        parts.extend(super::greenplum::uncarried_parts(&existing));
    }
    for r in &catalogs {
        let cat = r.text("relname")?;
        // pg_depend names large objects by pg_largeobject.
        let class = if cat == "pg_largeobject_metadata" {
            "pg_largeobject".to_string()
        } else {
            cat.clone()
        };
        parts.push(format!(
            "SELECT pg_catalog.pg_describe_object('pg_catalog.{class}'::pg_catalog.regclass, o.oid, 0) \
             FROM pg_catalog.{cat} o WHERE o.oid >= 16384 AND {ext}",
            class = super::quote_ident(&class),
            cat = super::quote_ident(&cat),
            ext = not_extension_member(&class, "o.oid"),
        ));
    }
    let sql = format!(
        "SELECT what FROM ({}) x ORDER BY 1",
        parts.join(" UNION ALL ")
    );
    let mut out = Vec::new();
    for r in query(conn, "objects the backup does not carry", &sql).await? {
        out.push(r.text("what")?);
    }
    Ok(out)
}
