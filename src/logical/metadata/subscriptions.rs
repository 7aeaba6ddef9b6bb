//! Subscriptions of the database, as pg_dump writes them (post-data):
//! `CREATE SUBSCRIPTION ... WITH (connect = false, slot_name = ...)`, so
//! a restore neither reaches the publisher nor creates a slot; the
//! restored subscription is disabled and has no tables until it is
//! enabled and refreshed. Creating one needs a superuser at restore, and
//! reading one (its connection string) a superuser at backup: without one,
//! the inventory names them as not carried.

use serde_json::Value;

use super::acl::add_owner;
use super::comments::add_comment;
use super::{create_unless_exists, query, quote_ident, quote_literal, Graph, Node, RowExt, Target};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

/// SQL condition: this session may read subscriptions' connection strings.
pub(crate) const READABLE: &str =
    "pg_catalog.has_column_privilege('pg_catalog.pg_subscription', 'subconninfo', 'SELECT')";

/// SQL condition on alias `s`: a subscription of the current database.
pub(crate) const OF_THIS_DATABASE: &str =
    "s.subdbid = (SELECT d.oid FROM pg_catalog.pg_database d \
     WHERE d.datname = pg_catalog.current_database())";

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    // The privilege is checked when a query is planned: ask first (the
    // inventory names what this role may not read).
    let readable = super::query_one(
        conn,
        "the privilege to read subscriptions",
        &format!("SELECT {READABLE} AS ok"),
    )
    .await?;
    if !readable.flag("ok")? {
        return Ok(());
    }
    // Every column as JSON: the catalog gains columns release by release.
    let sql = format!(
        "SELECT s.subname, pg_catalog.to_jsonb(s) AS j, \
                pg_catalog.pg_get_userbyid(s.subowner) AS owner, \
                pg_catalog.obj_description(s.oid, 'pg_subscription') AS comment \
         FROM pg_catalog.pg_subscription s WHERE {OF_THIS_DATABASE} ORDER BY s.subname"
    );
    for r in query(conn, "subscriptions", &sql).await? {
        let name = r.text("subname")?;
        let q = quote_ident(&name);
        let j: Value = r.json("j")?;
        let node = g.add(
            Node::new(Section::PostData, "SUBSCRIPTION", "", &name)
                .statement(create_unless_exists(&create_sql(&q, &j))),
        );
        let t = Target::of(node, Section::PostData, "SUBSCRIPTION", "", &q, "", &name);
        add_owner(g, &t, &r.text("owner")?);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}

/// pg_dump's statement for one subscription (`j`: its catalog row).
fn create_sql(q: &str, j: &Value) -> String {
    let text = |k: &str| j.get(k).and_then(Value::as_str);
    let yes = |k: &str| j.get(k).and_then(Value::as_bool) == Some(true);
    let publications: Vec<String> = j
        .get("subpublications")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(quote_ident)
                .collect()
        })
        .unwrap_or_default();
    let mut with = vec![
        "connect = false".to_string(),
        format!(
            "slot_name = {}",
            text("subslotname").map_or("NONE".to_string(), quote_literal)
        ),
    ];
    if yes("subbinary") {
        with.push("binary = true".into());
    }
    // A boolean up to 15, a "char" from 16 ('f', 't', 'p').
    match j.get("substream") {
        Some(Value::Bool(true)) => with.push("streaming = on".into()),
        Some(Value::String(s)) if s == "t" => with.push("streaming = on".into()),
        Some(Value::String(s)) if s == "p" => with.push("streaming = parallel".into()),
        _ => {}
    }
    if text("subtwophasestate").is_some_and(|s| s != "d") {
        with.push("two_phase = on".into());
    }
    if yes("subdisableonerr") {
        with.push("disable_on_error = true".into());
    }
    if j.get("subpasswordrequired").and_then(Value::as_bool) == Some(false) {
        with.push("password_required = false".into());
    }
    if yes("subrunasowner") {
        with.push("run_as_owner = true".into());
    }
    if let Some(origin) = text("suborigin").filter(|o| *o != "any") {
        with.push(format!("origin = {}", quote_ident(origin)));
    }
    if let Some(sc) = text("subsynccommit").filter(|s| *s != "off") {
        with.push(format!("synchronous_commit = {}", quote_ident(sc)));
    }
    format!(
        "CREATE SUBSCRIPTION {q} CONNECTION {} PUBLICATION {} WITH ({});",
        quote_literal(text("subconninfo").unwrap_or_default()),
        publications.join(", "),
        with.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_as_pg_dump_writes_them() {
        let j = serde_json::json!({
            "subconninfo": "host=h password='it''s'", "subslotname": null,
            "subbinary": true, "substream": true, "subtwophasestate": "p",
            "subdisableonerr": true, "subsynccommit": "local",
            "subpublications": ["p", "P 2"]
        });
        assert_eq!(
            create_sql("s2", &j),
            "CREATE SUBSCRIPTION s2 CONNECTION 'host=h password=''it''''s''' PUBLICATION p, \"P 2\" \
             WITH (connect = false, slot_name = NONE, binary = true, streaming = on, two_phase = on, \
             disable_on_error = true, synchronous_commit = local);"
        );
        // PostgreSQL 13: fewer columns.
        let j = serde_json::json!({
            "subconninfo": "", "subslotname": "s1", "subsynccommit": "off",
            "subpublications": ["p"]
        });
        assert_eq!(
            create_sql("s1", &j),
            "CREATE SUBSCRIPTION s1 CONNECTION '' PUBLICATION p WITH (connect = false, slot_name = 's1');"
        );
    }
}
