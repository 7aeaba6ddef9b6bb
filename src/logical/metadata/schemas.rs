//! Schemas: `CREATE SCHEMA IF NOT EXISTS` (a restore into a database that
//! has the schema, `public` at least, keeps it), owner, comment, grants.

use super::acl::{add_owner_and_acl, AclRow};
use super::comments::add_comment;
use super::{
    acl_json, class, not_extension_member, query, quote_ident, user_schema, Graph, Node, ObjRef,
    RowExt, Target,
};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let sql = format!(
        "SELECT n.oid, n.nspname, pg_catalog.pg_get_userbyid(n.nspowner) AS owner, \
                {acl} AS acl, pg_catalog.obj_description(n.oid, 'pg_namespace') AS comment \
         FROM pg_catalog.pg_namespace n \
         WHERE {user} AND {ext} \
         ORDER BY n.nspname",
        acl = acl_json("n.nspacl"),
        user = user_schema("n"),
        ext = not_extension_member("pg_namespace", "n.oid"),
    );
    for r in query(conn, "schemas", &sql).await? {
        let name = r.text("nspname")?;
        let q = quote_ident(&name);
        let node = g.add(
            Node::new(Section::PreData, "SCHEMA", "", &name)
                .statement(format!("CREATE SCHEMA IF NOT EXISTS {q};")),
        );
        g.bind(ObjRef::new(class::PG_NAMESPACE, r.oid("oid")?), node);
        let t = Target {
            node,
            section: Section::PreData,
            word: "SCHEMA",
            grant_word: "SCHEMA",
            sql: q,
            schema: String::new(),
            name: name.clone(),
            owner_table: None,
        };
        let acl: Option<Vec<AclRow>> = r.opt_json("acl")?;
        add_owner_and_acl(g, &t, &r.text("owner")?, acl.as_deref(), &[]);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}
