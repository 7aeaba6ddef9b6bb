//! Views (`pg_get_viewdef`, options, check option, column defaults) and
//! materialized views: created `WITH NO DATA` in pre-data, filled by a
//! `MATERIALIZED VIEW DATA` entry (`REFRESH MATERIALIZED VIEW`) in
//! post-data, after the tables' data, in dependency order among
//! themselves.

use super::acl::{add_acl, add_owner, AclRow};
use super::comments::add_comments;
use super::deps::Dep;
use super::greenplum::TableExtras;
use super::tables::{
    column_acls, column_comments, column_settings, read_columns, TableRef, Tables,
};
use super::{
    acl_json, class, not_extension_member, query, quote_ident, reloptions_sql, user_schema, Graph,
    Node, ObjRef, RowExt, Target,
};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

/// Views and materialized views; `gp`: on Greenplum/Cloudberry, a
/// materialized view's distribution and append-optimized storage.
pub(crate) async fn collect(
    conn: &mut PgConn,
    g: &mut Graph,
    tables: &mut Tables,
    gp: Option<&TableExtras>,
) -> Result<()> {
    let sql = format!(
        "SELECT c.oid, n.nspname, c.relname, pg_catalog.format('%I.%I', n.nspname, c.relname) AS qname, \
                c.relkind::text AS relkind, n.oid AS nspoid, pg_catalog.pg_get_viewdef(c.oid) AS def, \
                pg_catalog.array_to_json(c.reloptions) AS reloptions, c.relispopulated, \
                ts.spcname, c.reltablespace, am.amname, \
                (SELECT r.oid FROM pg_catalog.pg_rewrite r WHERE r.ev_class = c.oid AND r.rulename = '_RETURN') AS rule_oid, \
                pg_catalog.pg_get_userbyid(c.relowner) AS owner, {acl} AS acl, \
                pg_catalog.obj_description(c.oid, 'pg_class') AS comment \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_catalog.pg_tablespace ts ON ts.oid = c.reltablespace \
         LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam \
         WHERE c.relkind IN ('v', 'm') AND {user} AND {ext} \
         ORDER BY n.nspname, c.relname",
        acl = acl_json("c.relacl"),
        user = user_schema("n"),
        ext = not_extension_member("pg_class", "c.oid"),
    );
    let rows = query(conn, "views", &sql).await?;
    let columns = read_columns(conn, "'v', 'm'").await?;
    let empty = Vec::new();
    for r in rows {
        let oid = r.oid("oid")?;
        let schema = r.text("nspname")?;
        let name = r.text("relname")?;
        let qn = r.text("qname")?;
        let matview = r.text("relkind")? == "m";
        let cols = columns.get(&oid).unwrap_or(&empty);
        let def = r.text("def")?;
        let def = def.trim_end().trim_end_matches(';').trim_end();
        let reloptions: Vec<String> = r.opt_json("reloptions")?.unwrap_or_default();
        let (check, mut options): (Vec<String>, Vec<String>) = reloptions
            .into_iter()
            .partition(|o| o.starts_with("check_option="));
        let mut stmts = Vec::new();
        let kind;
        if matview {
            kind = "MATERIALIZED VIEW";
            let mut sql = format!("CREATE MATERIALIZED VIEW {qn}");
            if let Some(am) = r.opt("amname")? {
                if am != "heap" {
                    sql.push_str(&format!(" USING {}", quote_ident(&am)));
                }
            }
            if let Some(gp) = gp {
                options = gp.storage_options(oid, &options);
            }
            if !options.is_empty() {
                sql.push_str(&format!(" WITH ({})", reloptions_sql(&options, "")));
            }
            if let Some(ts) = r.opt("spcname")? {
                sql.push_str(&format!(" TABLESPACE {}", quote_ident(&ts)));
            }
            sql.push_str(&format!(" AS\n{def}\n  WITH NO DATA"));
            if let Some(d) = gp.and_then(|gp| gp.distributed_by(oid)) {
                sql.push_str(&format!("\n{d}"));
            }
            sql.push(';');
            stmts.push(sql);
            for col in cols {
                column_settings(&format!("ALTER MATERIALIZED VIEW {qn}"), col, &mut stmts);
            }
        } else {
            kind = "VIEW";
            let mut sql = format!("CREATE VIEW {qn}");
            if !options.is_empty() {
                sql.push_str(&format!(" WITH ({})", reloptions_sql(&options, "")));
            }
            sql.push_str(&format!(" AS\n{def}"));
            if let Some(c) = check.first() {
                let how = c.trim_start_matches("check_option=").to_ascii_uppercase();
                sql.push_str(&format!("\n  WITH {how} CHECK OPTION"));
            }
            sql.push(';');
            stmts.push(sql);
            for col in cols {
                if let Some(d) = &col.default {
                    stmts.push(format!(
                        "ALTER VIEW {qn} ALTER COLUMN {} SET DEFAULT {d};",
                        col.qname
                    ));
                }
            }
        }
        let mut node = Node::new(Section::PreData, kind, &schema, &name)
            .statement(stmts.join("\n"))
            .dep(Dep::Obj(ObjRef::new(class::PG_NAMESPACE, r.oid("nspoid")?)));
        if r.opt("spcname")?.is_some() {
            node = node.dep(Dep::Obj(ObjRef::new(
                class::PG_TABLESPACE,
                r.oid("reltablespace")?,
            )));
        }
        let node = g.add(node);
        g.bind(ObjRef::new(class::PG_CLASS, oid), node);
        if let Some(rule) = r.opt("rule_oid")? {
            if let Ok(rule) = rule.parse() {
                g.bind(ObjRef::new(class::PG_REWRITE, rule), node);
            }
        }
        for col in cols {
            if let Some(d) = col.default_oid {
                g.bind(ObjRef::new(class::PG_ATTRDEF, d), node);
            }
        }
        let target = Target {
            node,
            section: Section::PreData,
            word: kind,
            grant_word: "TABLE",
            sql: qn.clone(),
            schema: schema.clone(),
            name: name.clone(),
            owner_table: None,
        };
        let owner = r.text("owner")?;
        let owner_node = add_owner(g, &target, &owner);
        let acl: Option<Vec<AclRow>> = r.opt_json("acl")?;
        add_acl(
            g,
            &target,
            &owner,
            Some(owner_node),
            acl.as_deref(),
            &column_acls(cols),
        );
        add_comments(
            g,
            &target,
            r.opt("comment")?.as_deref(),
            &column_comments(cols),
        );
        if matview && r.flag("relispopulated")? {
            let refresh = g.add(
                Node::new(Section::PostData, "MATERIALIZED VIEW DATA", &schema, &name)
                    .statement(format!("REFRESH MATERIALIZED VIEW {qn};"))
                    .dep(Dep::Node(node)),
            );
            g.mark_refresh(node, refresh);
        }
        tables.insert(
            oid,
            TableRef {
                name: super::qname(&schema, &name),
                sql: qn,
                relkind: if matview { 'm' } else { 'v' },
                node,
                owner_node,
            },
        );
    }
    Ok(())
}
