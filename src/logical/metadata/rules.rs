//! Rules (other than views' `_RETURN`), row-level security policies and
//! extended statistics: post-data entries of their table.

use super::acl::add_owner;
use super::comments::add_comment;
use super::deps::Dep;
use super::tables::Tables;
use super::{
    class, not_extension_member, query, quote_ident, user_schema, Graph, Node, ObjRef, RowExt,
    Target,
};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph, tables: &Tables) -> Result<()> {
    collect_rules(conn, g, tables).await?;
    collect_policies(conn, g, tables).await?;
    collect_statistics(conn, g, tables).await
}

async fn collect_rules(conn: &mut PgConn, g: &mut Graph, tables: &Tables) -> Result<()> {
    let rows = query(
        conn,
        "rules",
        "SELECT r.oid, r.rulename, r.ev_class, r.ev_enabled::text AS enabled, \
                pg_catalog.pg_get_ruledef(r.oid) AS def, \
                pg_catalog.obj_description(r.oid, 'pg_rewrite') AS comment \
         FROM pg_catalog.pg_rewrite r \
         JOIN pg_catalog.pg_class c ON c.oid = r.ev_class \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE r.rulename <> '_RETURN' \
         ORDER BY n.nspname, c.relname, r.rulename",
    )
    .await?;
    for r in rows {
        let Some(table) = tables.get(&r.oid("ev_class")?) else {
            continue;
        };
        let name = r.text("rulename")?;
        let q = quote_ident(&name);
        let def = r.text("def")?;
        let mut stmts = vec![def.trim_end().to_string()];
        if !stmts[0].ends_with(';') {
            stmts[0].push(';');
        }
        match r.text("enabled")?.as_str() {
            "D" => stmts.push(format!("ALTER TABLE {} DISABLE RULE {q};", table.sql)),
            "R" => stmts.push(format!(
                "ALTER TABLE {} ENABLE REPLICA RULE {q};",
                table.sql
            )),
            "A" => stmts.push(format!("ALTER TABLE {} ENABLE ALWAYS RULE {q};", table.sql)),
            _ => {}
        }
        let node = g.add(
            Node::new(Section::PostData, "RULE", &table.name.schema, &name)
                .owner_table(Some(table.name.clone()))
                .statement(stmts.join("\n"))
                .dep(Dep::Node(table.node)),
        );
        g.bind(ObjRef::new(class::PG_REWRITE, r.oid("oid")?), node);
        let t = Target {
            node,
            section: Section::PostData,
            word: "RULE",
            grant_word: "RULE",
            sql: format!("{q} ON {}", table.sql),
            schema: table.name.schema.clone(),
            name,
            owner_table: Some(table.name.clone()),
        };
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}

async fn collect_policies(conn: &mut PgConn, g: &mut Graph, tables: &Tables) -> Result<()> {
    let rows = query(
        conn,
        "policies",
        "SELECT p.oid, p.polname, p.polrelid, p.polcmd::text AS cmd, p.polpermissive, \
                (SELECT pg_catalog.json_agg(CASE WHEN u.r = 0 THEN 'PUBLIC' \
                        ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(u.r)) END ORDER BY u.ord) \
                  FROM pg_catalog.unnest(p.polroles) WITH ORDINALITY AS u(r, ord)) AS roles, \
                pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS qual, \
                pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS withcheck, \
                pg_catalog.obj_description(p.oid, 'pg_policy') AS comment \
         FROM pg_catalog.pg_policy p \
         JOIN pg_catalog.pg_class c ON c.oid = p.polrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         ORDER BY n.nspname, c.relname, p.polname",
    )
    .await?;
    for r in rows {
        let Some(table) = tables.get(&r.oid("polrelid")?) else {
            continue;
        };
        let name = r.text("polname")?;
        let q = quote_ident(&name);
        let mut sql = format!("CREATE POLICY {q} ON {}", table.sql);
        if !r.flag("polpermissive")? {
            sql.push_str(" AS RESTRICTIVE");
        }
        let cmd = match r.text("cmd")?.as_str() {
            "r" => " FOR SELECT",
            "a" => " FOR INSERT",
            "w" => " FOR UPDATE",
            "d" => " FOR DELETE",
            _ => "",
        };
        sql.push_str(cmd);
        let roles: Vec<String> = r.opt_json("roles")?.unwrap_or_default();
        if !roles.is_empty() {
            sql.push_str(&format!(" TO {}", roles.join(", ")));
        }
        if let Some(qual) = r.opt("qual")? {
            sql.push_str(&format!(" USING ({qual})"));
        }
        if let Some(check) = r.opt("withcheck")? {
            sql.push_str(&format!(" WITH CHECK ({check})"));
        }
        sql.push(';');
        let mut node = Node::new(Section::PostData, "POLICY", &table.name.schema, &name)
            .owner_table(Some(table.name.clone()))
            .statement(sql)
            .dep(Dep::Node(table.node));
        for role in roles.iter().filter(|r| *r != "PUBLIC") {
            node = node.dep(Dep::Role(super::acl::unquote_role(role)));
        }
        let node = g.add(node);
        g.bind(ObjRef::new(class::PG_POLICY, r.oid("oid")?), node);
        let t = Target {
            node,
            section: Section::PostData,
            word: "POLICY",
            grant_word: "POLICY",
            sql: format!("{q} ON {}", table.sql),
            schema: table.name.schema.clone(),
            name,
            owner_table: Some(table.name.clone()),
        };
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}

async fn collect_statistics(conn: &mut PgConn, g: &mut Graph, tables: &Tables) -> Result<()> {
    let sql = format!(
        "SELECT s.oid, n.nspname, s.stxname, s.stxrelid, s.stxstattarget, n.oid AS nspoid, \
                pg_catalog.format('%I.%I', n.nspname, s.stxname) AS qname, \
                pg_catalog.pg_get_statisticsobjdef(s.oid) AS def, \
                pg_catalog.pg_get_userbyid(s.stxowner) AS owner, \
                pg_catalog.obj_description(s.oid, 'pg_statistic_ext') AS comment \
         FROM pg_catalog.pg_statistic_ext s \
         JOIN pg_catalog.pg_namespace n ON n.oid = s.stxnamespace \
         WHERE {user} AND {ext} \
         ORDER BY n.nspname, s.stxname",
        user = user_schema("n"),
        ext = not_extension_member("pg_statistic_ext", "s.oid"),
    );
    for r in query(conn, "extended statistics", &sql).await? {
        let Some(table) = tables.get(&r.oid("stxrelid")?) else {
            continue;
        };
        let schema = r.text("nspname")?;
        let name = r.text("stxname")?;
        let qname = r.text("qname")?;
        let mut stmts = vec![format!("{};", r.text("def")?)];
        let target = r.int("stxstattarget")?;
        if target >= 0 {
            stmts.push(format!("ALTER STATISTICS {qname} SET STATISTICS {target};"));
        }
        let node = g.add(
            Node::new(Section::PostData, "STATISTICS", &schema, &name)
                .owner_table(Some(table.name.clone()))
                .statement(stmts.join("\n"))
                .dep(Dep::Node(table.node))
                .dep(Dep::Obj(ObjRef::new(class::PG_NAMESPACE, r.oid("nspoid")?))),
        );
        g.bind(ObjRef::new(class::PG_STATISTIC_EXT, r.oid("oid")?), node);
        let t = Target {
            node,
            section: Section::PostData,
            word: "STATISTICS",
            grant_word: "STATISTICS",
            sql: qname,
            schema,
            name,
            owner_table: Some(table.name.clone()),
        };
        add_owner(g, &t, &r.text("owner")?);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}
