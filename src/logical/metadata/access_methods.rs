//! Access methods (`CREATE ACCESS METHOD ... TYPE TABLE|INDEX HANDLER`):
//! tables, partitions and materialized views name theirs with `USING`.
//! One already in the target database is left as it is.

use super::comments::add_comment;
use super::deps::Dep;
use super::{
    class, create_unless_exists, not_extension_member, query, quote_ident, Graph, Node, ObjRef,
    RowExt, Target,
};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let sql = format!(
        "SELECT a.oid, a.amname, a.amtype::text AS amtype, a.amhandler::pg_catalog.regproc::text AS handler, \
                a.amhandler::pg_catalog.oid AS handler_oid, pg_catalog.obj_description(a.oid, 'pg_am') AS comment \
         FROM pg_catalog.pg_am a WHERE a.oid >= 16384 AND {ext} ORDER BY a.amname",
        ext = not_extension_member("pg_am", "a.oid"),
    );
    for r in query(conn, "access methods", &sql).await? {
        let name = r.text("amname")?;
        let q = quote_ident(&name);
        let kind = if r.text("amtype")? == "t" {
            "TABLE"
        } else {
            "INDEX"
        };
        let node = g.add(
            Node::new(Section::PreData, "ACCESS METHOD", "", &name)
                .statement(create_unless_exists(&format!(
                    "CREATE ACCESS METHOD {q} TYPE {kind} HANDLER {};",
                    r.text("handler")?
                )))
                .dep(Dep::Obj(ObjRef::new(class::PG_PROC, r.oid("handler_oid")?))),
        );
        g.bind(ObjRef::new(class::PG_AM, r.oid("oid")?), node);
        let t = Target::of(node, Section::PreData, "ACCESS METHOD", "", &q, "", &name);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}
