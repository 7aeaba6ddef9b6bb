//! Casts (`CREATE CAST`) and transforms (`CREATE TRANSFORM`): objects
//! without a schema or owner, named by the types (and language) they join.
//! Casts a range type made for its multirange belong to the type. (A
//! cast is not wrapped to tolerate an existing one as access methods are:
//! a schema redirect rewrites the types it names, not a `DO` body.)

use super::comments::add_comment;
use super::{class, not_extension_member, query, Graph, Node, ObjRef, RowExt, Target};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let sql = format!(
        "SELECT k.oid, pg_catalog.format_type(k.castsource, NULL) AS source, \
                pg_catalog.format_type(k.casttarget, NULL) AS target, \
                k.castmethod::text AS method, k.castcontext::text AS context, \
                CASE WHEN k.castfunc <> 0 THEN k.castfunc::pg_catalog.regprocedure::text END AS func, k.castfunc, \
                pg_catalog.obj_description(k.oid, 'pg_cast') AS comment \
         FROM pg_catalog.pg_cast k WHERE k.oid >= 16384 AND {ext} \
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend i \
                WHERE i.classid = 'pg_catalog.pg_cast'::pg_catalog.regclass AND i.objid = k.oid AND i.deptype = 'i') \
         ORDER BY source, target",
        ext = not_extension_member("pg_cast", "k.oid"),
    );
    for r in query(conn, "casts", &sql).await? {
        let on = format!("({} AS {})", r.text("source")?, r.text("target")?);
        let how = match (r.text("method")?.as_str(), r.opt("func")?) {
            ("i", _) => "WITH INOUT".to_string(),
            ("f", Some(f)) => format!("WITH FUNCTION {f}"),
            _ => "WITHOUT FUNCTION".to_string(),
        };
        let context = match r.text("context")?.as_str() {
            "a" => " AS ASSIGNMENT",
            "i" => " AS IMPLICIT",
            _ => "",
        };
        let name = on.trim_start_matches('(').trim_end_matches(')').to_string();
        let node = g.add(
            Node::new(Section::PreData, "CAST", "", &name)
                .statement(format!("CREATE CAST {on} {how}{context};")),
        );
        g.bind(ObjRef::new(class::PG_CAST, r.oid("oid")?), node);
        // A stored expression calling the cast's function (a view, a
        // function's SQL body) is printed as the cast.
        let func = r.oid("castfunc")?;
        if func != 0 {
            g.also_needs(ObjRef::new(class::PG_PROC, func), node);
        }
        let t = Target::of(node, Section::PreData, "CAST", "", &on, "", &name);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }

    let sql = format!(
        "SELECT t.oid, pg_catalog.format_type(t.trftype, NULL) AS type, pg_catalog.quote_ident(l.lanname) AS lang, \
                CASE WHEN t.trffromsql <> 0 THEN t.trffromsql::pg_catalog.regprocedure::text END AS fromsql, \
                CASE WHEN t.trftosql <> 0 THEN t.trftosql::pg_catalog.regprocedure::text END AS tosql, \
                pg_catalog.obj_description(t.oid, 'pg_transform') AS comment \
         FROM pg_catalog.pg_transform t JOIN pg_catalog.pg_language l ON l.oid = t.trflang \
         WHERE t.oid >= 16384 AND {ext} ORDER BY type, lang",
        ext = not_extension_member("pg_transform", "t.oid"),
    );
    for r in query(conn, "transforms", &sql).await? {
        let on = format!("FOR {} LANGUAGE {}", r.text("type")?, r.text("lang")?);
        let mut parts = Vec::new();
        if let Some(f) = r.opt("fromsql")? {
            parts.push(format!("FROM SQL WITH FUNCTION {f}"));
        }
        if let Some(f) = r.opt("tosql")? {
            parts.push(format!("TO SQL WITH FUNCTION {f}"));
        }
        let name = on.trim_start_matches("FOR ").to_string();
        let node = g.add(
            Node::new(Section::PreData, "TRANSFORM", "", &name).statement(format!(
                "CREATE OR REPLACE TRANSFORM {on} ({});",
                parts.join(", ")
            )),
        );
        g.bind(ObjRef::new(class::PG_TRANSFORM, r.oid("oid")?), node);
        let t = Target::of(node, Section::PreData, "TRANSFORM", "", &on, "", &name);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}
