//! Procedural languages (`CREATE LANGUAGE ... HANDLER`, after their
//! handler functions and before the functions written in them) and
//! encoding conversions.

use super::acl::{add_owner, add_owner_and_acl, AclRow};
use super::comments::add_comment;
use super::deps::Dep;
use super::{
    acl_json, class, not_extension_member, query, quote_ident, user_schema, Graph, Node, ObjRef,
    RowExt, Target,
};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let sql = format!(
        "SELECT l.oid, l.lanname, l.lanpltrusted, \
                CASE WHEN l.lanplcallfoid <> 0 THEN l.lanplcallfoid::pg_catalog.regproc::text END AS handler, \
                CASE WHEN l.laninline <> 0 THEN l.laninline::pg_catalog.regproc::text END AS inline, \
                CASE WHEN l.lanvalidator <> 0 THEN l.lanvalidator::pg_catalog.regproc::text END AS validator, \
                pg_catalog.pg_get_userbyid(l.lanowner) AS owner, {acl} AS acl, \
                pg_catalog.obj_description(l.oid, 'pg_language') AS comment \
         FROM pg_catalog.pg_language l WHERE l.oid >= 16384 AND {ext} ORDER BY l.lanname",
        acl = acl_json("l.lanacl"),
        ext = not_extension_member("pg_language", "l.oid"),
    );
    for r in query(conn, "procedural languages", &sql).await? {
        let name = r.text("lanname")?;
        let q = quote_ident(&name);
        let mut sql = format!(
            "CREATE OR REPLACE {}LANGUAGE {q}",
            if r.flag("lanpltrusted")? {
                "TRUSTED "
            } else {
                ""
            }
        );
        if let Some(h) = r.opt("handler")? {
            sql.push_str(&format!(" HANDLER {h}"));
            if let Some(i) = r.opt("inline")? {
                sql.push_str(&format!(" INLINE {i}"));
            }
            if let Some(v) = r.opt("validator")? {
                sql.push_str(&format!(" VALIDATOR {v}"));
            }
        }
        sql.push(';');
        let node =
            g.add(Node::new(Section::PreData, "PROCEDURAL LANGUAGE", "", &name).statement(sql));
        g.bind(ObjRef::new(class::PG_LANGUAGE, r.oid("oid")?), node);
        let t = Target::of(
            node,
            Section::PreData,
            "LANGUAGE",
            "LANGUAGE",
            &q,
            "",
            &name,
        );
        let acl: Option<Vec<AclRow>> = r.opt_json("acl")?;
        add_owner_and_acl(g, &t, &r.text("owner")?, acl.as_deref(), &[]);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }

    let sql = format!(
        "SELECT c.oid, n.oid AS nspoid, n.nspname, c.conname, pg_catalog.format('%I.%I', n.nspname, c.conname) AS qname, \
                pg_catalog.pg_encoding_to_char(c.conforencoding) AS src, \
                pg_catalog.pg_encoding_to_char(c.contoencoding) AS dst, \
                c.conproc::pg_catalog.regproc::text AS func, c.condefault, \
                pg_catalog.pg_get_userbyid(c.conowner) AS owner, \
                pg_catalog.obj_description(c.oid, 'pg_conversion') AS comment \
         FROM pg_catalog.pg_conversion c JOIN pg_catalog.pg_namespace n ON n.oid = c.connamespace \
         WHERE {user} AND {ext} ORDER BY n.nspname, c.conname",
        user = user_schema("n"),
        ext = not_extension_member("pg_conversion", "c.oid"),
    );
    for r in query(conn, "conversions", &sql).await? {
        let schema = r.text("nspname")?;
        let name = r.text("conname")?;
        let qname = r.text("qname")?;
        let sql = format!(
            "CREATE {}CONVERSION {qname} FOR {} TO {} FROM {};",
            if r.flag("condefault")? {
                "DEFAULT "
            } else {
                ""
            },
            super::quote_literal(&r.text("src")?),
            super::quote_literal(&r.text("dst")?),
            r.text("func")?
        );
        let node = g.add(
            Node::new(Section::PreData, "CONVERSION", &schema, &name)
                .statement(sql)
                .dep(Dep::Obj(ObjRef::new(class::PG_NAMESPACE, r.oid("nspoid")?))),
        );
        g.bind(ObjRef::new(class::PG_CONVERSION, r.oid("oid")?), node);
        let t = Target::of(
            node,
            Section::PreData,
            "CONVERSION",
            "",
            &qname,
            &schema,
            &name,
        );
        add_owner(g, &t, &r.text("owner")?);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}
