//! Extensions: `CREATE EXTENSION IF NOT EXISTS ... WITH SCHEMA` (the
//! version the target installs by default, as pg_dump does). Their member
//! objects are not collected: they belong to the extension's entry, so an
//! object using one (a column of type hstore) depends on the extension.
//! Built-in extensions (plpgsql) are left out.

use super::comments::add_comment;
use super::deps::Dep;
use super::{class, query, quote_ident, Graph, Node, ObjRef, RowExt, Target};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let rows = query(
        conn,
        "extensions",
        "SELECT e.oid, e.extname, n.nspname, n.oid AS nspoid, \
                pg_catalog.obj_description(e.oid, 'pg_extension') AS comment \
         FROM pg_catalog.pg_extension e \
         JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
         WHERE e.oid >= 16384 \
         ORDER BY e.extname",
    )
    .await?;
    for r in rows {
        let name = r.text("extname")?;
        let q = quote_ident(&name);
        let node = g.add(
            Node::new(Section::PreData, "EXTENSION", "", &name)
                .statement(format!(
                    "CREATE EXTENSION IF NOT EXISTS {q} WITH SCHEMA {};",
                    quote_ident(&r.text("nspname")?)
                ))
                .dep(Dep::Obj(ObjRef::new(class::PG_NAMESPACE, r.oid("nspoid")?))),
        );
        g.bind(ObjRef::new(class::PG_EXTENSION, r.oid("oid")?), node);
        let t = Target {
            node,
            section: Section::PreData,
            word: "EXTENSION",
            grant_word: "EXTENSION",
            sql: q,
            schema: String::new(),
            name,
            owner_table: None,
        };
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    let members = query(
        conn,
        "extension members",
        "SELECT classid, objid, refobjid FROM pg_catalog.pg_depend \
         WHERE deptype = 'e' AND refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass \
           AND refobjid >= 16384",
    )
    .await?;
    for r in members {
        if let Some(node) = g.node_of(ObjRef::new(class::PG_EXTENSION, r.oid("refobjid")?)) {
            g.bind(ObjRef::new(r.oid("classid")?, r.oid("objid")?), node);
        }
    }
    Ok(())
}
