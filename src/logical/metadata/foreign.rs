//! Foreign-data wrappers, foreign servers and user mappings (foreign
//! tables are tables: see `tables`). A user mapping's options may hold a
//! remote password, as pg_dump's do: the metadata is as secret as the
//! database. Those already in the target database are left as they are.

use super::acl::{add_owner_and_acl, AclRow};
use super::comments::add_comment;
use super::deps::Dep;
use super::{
    acl_json, class, create_unless_exists, not_extension_member, options_clause, query,
    quote_ident, Graph, Node, ObjRef, RowExt, Target,
};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let sql = format!(
        "SELECT w.oid, w.fdwname, \
                CASE WHEN w.fdwhandler <> 0 THEN w.fdwhandler::pg_catalog.regproc::text END AS handler, \
                CASE WHEN w.fdwvalidator <> 0 THEN w.fdwvalidator::pg_catalog.regproc::text END AS validator, \
                pg_catalog.array_to_json(w.fdwoptions) AS options, \
                pg_catalog.pg_get_userbyid(w.fdwowner) AS owner, {acl} AS acl, \
                pg_catalog.obj_description(w.oid, 'pg_foreign_data_wrapper') AS comment \
         FROM pg_catalog.pg_foreign_data_wrapper w WHERE w.oid >= 16384 AND {ext} ORDER BY w.fdwname",
        acl = acl_json("w.fdwacl"),
        ext = not_extension_member("pg_foreign_data_wrapper", "w.oid"),
    );
    for r in query(conn, "foreign-data wrappers", &sql).await? {
        let name = r.text("fdwname")?;
        let q = quote_ident(&name);
        let mut sql = format!("CREATE FOREIGN DATA WRAPPER {q}");
        if let Some(h) = r.opt("handler")? {
            sql.push_str(&format!(" HANDLER {h}"));
        }
        if let Some(v) = r.opt("validator")? {
            sql.push_str(&format!(" VALIDATOR {v}"));
        }
        let options: Vec<String> = r.opt_json("options")?.unwrap_or_default();
        sql.push_str(&options_clause(&options));
        sql.push(';');
        let sql = create_unless_exists(&sql);
        let node =
            g.add(Node::new(Section::PreData, "FOREIGN DATA WRAPPER", "", &name).statement(sql));
        g.bind(
            ObjRef::new(class::PG_FOREIGN_DATA_WRAPPER, r.oid("oid")?),
            node,
        );
        let t = Target::of(
            node,
            Section::PreData,
            "FOREIGN DATA WRAPPER",
            "FOREIGN DATA WRAPPER",
            &q,
            "",
            &name,
        );
        let acl: Option<Vec<AclRow>> = r.opt_json("acl")?;
        add_owner_and_acl(g, &t, &r.text("owner")?, acl.as_deref(), &[]);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }

    // Servers of the system (Greenplum 7's and Cloudberry's
    // gp_exttable_server, created by initdb) have OIDs below 16384, as
    // built-in wrappers do; PostgreSQL has none.
    let sql = format!(
        "SELECT s.oid, s.srvname, pg_catalog.quote_ident(w.fdwname) AS fdw, s.srvfdw, s.srvtype, s.srvversion, \
                pg_catalog.array_to_json(s.srvoptions) AS options, \
                pg_catalog.pg_get_userbyid(s.srvowner) AS owner, {acl} AS acl, \
                pg_catalog.obj_description(s.oid, 'pg_foreign_server') AS comment \
         FROM pg_catalog.pg_foreign_server s JOIN pg_catalog.pg_foreign_data_wrapper w ON w.oid = s.srvfdw \
         WHERE s.oid >= 16384 AND {ext} ORDER BY s.srvname",
        acl = acl_json("s.srvacl"),
        ext = not_extension_member("pg_foreign_server", "s.oid"),
    );
    for r in query(conn, "foreign servers", &sql).await? {
        let name = r.text("srvname")?;
        let q = quote_ident(&name);
        let mut sql = format!("CREATE SERVER IF NOT EXISTS {q}");
        if let Some(t) = r.opt("srvtype")? {
            sql.push_str(&format!(" TYPE {}", super::quote_literal(&t)));
        }
        if let Some(v) = r.opt("srvversion")? {
            sql.push_str(&format!(" VERSION {}", super::quote_literal(&v)));
        }
        sql.push_str(&format!(" FOREIGN DATA WRAPPER {}", r.text("fdw")?));
        let options: Vec<String> = r.opt_json("options")?.unwrap_or_default();
        sql.push_str(&options_clause(&options));
        sql.push(';');
        let node = g.add(
            Node::new(Section::PreData, "SERVER", "", &name)
                .statement(sql)
                .dep(Dep::Obj(ObjRef::new(
                    class::PG_FOREIGN_DATA_WRAPPER,
                    r.oid("srvfdw")?,
                ))),
        );
        g.bind(ObjRef::new(class::PG_FOREIGN_SERVER, r.oid("oid")?), node);
        let t = Target::of(
            node,
            Section::PreData,
            "SERVER",
            "FOREIGN SERVER",
            &q,
            "",
            &name,
        );
        let acl: Option<Vec<AclRow>> = r.opt_json("acl")?;
        add_owner_and_acl(g, &t, &r.text("owner")?, acl.as_deref(), &[]);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }

    // pg_user_mappings shows the options to those who may see them.
    let rows = query(
        conn,
        "user mappings",
        "SELECT u.umid, u.srvid, u.srvname, u.umuser, u.usename, pg_catalog.array_to_json(u.umoptions) AS options \
         FROM pg_catalog.pg_user_mappings u ORDER BY u.srvname, u.usename",
    )
    .await?;
    for r in rows {
        let server = r.text("srvname")?;
        let user = r.text("usename")?;
        let who = if r.oid("umuser")? == 0 {
            "PUBLIC".to_string()
        } else {
            quote_ident(&user)
        };
        let options: Vec<String> = r.opt_json("options")?.unwrap_or_default();
        let mut node = Node::new(
            Section::PreData,
            "USER MAPPING",
            "",
            &format!("{user} SERVER {server}"),
        )
        .statement(format!(
            "CREATE USER MAPPING IF NOT EXISTS FOR {who} SERVER {}{};",
            quote_ident(&server),
            options_clause(&options)
        ))
        .dep(Dep::Obj(ObjRef::new(
            class::PG_FOREIGN_SERVER,
            r.oid("srvid")?,
        )));
        if who != "PUBLIC" {
            node = node.dep(Dep::Role(user));
        }
        let node = g.add(node);
        g.bind(ObjRef::new(class::PG_USER_MAPPING, r.oid("umid")?), node);
    }
    Ok(())
}
