//! Grants on system objects (tables, views and columns of `pg_catalog`
//! and `information_schema`, functions of `pg_catalog`) that differ from
//! those initdb gave (`pg_init_privs`), as pg_dump carries them: one `ACL`
//! entry per object that sets its ACL (and its columns') to the source's.

use super::acl::{grant_statements, unquote_role, AclRow};
use super::deps::Dep;
use super::{acl_json, query, Graph, Node, RowExt};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let sql = format!(
        "SELECT 'TABLE' AS word, n.nspname, c.relname AS name, pg_catalog.format('%I.%I', n.nspname, c.relname) AS qname, \
                pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(c.relowner)) AS owner, \
                CASE WHEN c.relacl IS DISTINCT FROM ip.initprivs \
                     THEN {relacl} END AS acl, \
                (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(pg_catalog.quote_ident(a.attname), \
                        {attacl}, {attinit}) ORDER BY a.attnum) \
                  FROM pg_catalog.pg_attribute a \
                  LEFT JOIN pg_catalog.pg_init_privs ia ON ia.objoid = c.oid \
                       AND ia.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass AND ia.objsubid = a.attnum \
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
                    AND a.attacl IS DISTINCT FROM ia.initprivs) AS columns \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_catalog.pg_init_privs ip ON ip.objoid = c.oid \
              AND ip.classoid = 'pg_catalog.pg_class'::pg_catalog.regclass AND ip.objsubid = 0 \
         WHERE n.nspname IN ('pg_catalog', 'information_schema') AND c.relkind IN ('r', 'v', 'm', 'S', 'f', 'p') \
         UNION ALL \
         SELECT 'FUNCTION', n.nspname, p.proname || '(' || pg_catalog.pg_get_function_identity_arguments(p.oid) || ')', \
                pg_catalog.format('%I.%I(%s)', n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)), \
                pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(p.proowner)), {proacl}, NULL \
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         LEFT JOIN pg_catalog.pg_init_privs ip ON ip.objoid = p.oid \
              AND ip.classoid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND ip.objsubid = 0 \
         WHERE n.nspname = 'pg_catalog' AND p.proacl IS DISTINCT FROM ip.initprivs \
         ORDER BY 1, 2, 3",
        relacl = acl_json("coalesce(c.relacl, pg_catalog.acldefault('r', c.relowner))"),
        attacl = acl_json("a.attacl"),
        attinit = acl_json("ia.initprivs"),
        proacl = acl_json("coalesce(p.proacl, pg_catalog.acldefault('f', p.proowner))"),
    );
    for r in query(conn, "grants on system objects", &sql).await? {
        let acl: Option<Vec<AclRow>> = r.opt_json("acl")?;
        type ColumnAcl = (String, Option<Vec<AclRow>>, Option<Vec<AclRow>>);
        let columns: Vec<ColumnAcl> = r.opt_json("columns")?.unwrap_or_default();
        if acl.is_none() && columns.is_empty() {
            continue;
        }
        let word = r.text("word")?;
        let on = format!("{word} {}", r.text("qname")?);
        let owner = r.text("owner")?;
        let mut stmts = Vec::new();
        let mut roles = Vec::new();
        if let Some(items) = &acl {
            stmts.push(format!("REVOKE ALL ON {on} FROM PUBLIC;"));
            stmts.push(format!("REVOKE ALL ON {on} FROM {owner};"));
            grant_statements(&mut stmts, &on, &owner, items, None);
            roles.extend(items.iter().flat_map(|i| [i.0.clone(), i.1.clone()]));
        }
        for (col, now, init) in &columns {
            let (now, init) = (
                now.as_deref().unwrap_or(&[]),
                init.as_deref().unwrap_or(&[]),
            );
            let mut revoked: Vec<&String> = Vec::new();
            for (grantee, ..) in now.iter().chain(init) {
                if !revoked.contains(&grantee) {
                    stmts.push(format!("REVOKE ALL ({col}) ON {on} FROM {grantee};"));
                    revoked.push(grantee);
                }
            }
            grant_statements(&mut stmts, &on, &owner, now, Some(col));
            roles.extend(now.iter().flat_map(|i| [i.0.clone(), i.1.clone()]));
        }
        let schema = r.text("nspname")?;
        let mut node = Node::new(
            Section::PreData,
            "ACL",
            &schema,
            &format!("{word} {}", r.text("name")?),
        )
        .statement(stmts.join("\n"));
        roles.sort();
        roles.dedup();
        for role in roles {
            if role != "PUBLIC" {
                node = node.dep(Dep::Role(unquote_role(&role)));
            }
        }
        g.add(node);
    }
    Ok(())
}
