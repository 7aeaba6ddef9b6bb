//! Triggers (`pg_get_triggerdef`, with their enabled state), including
//! constraint triggers. Triggers cloned onto partitions are created by
//! their parent's; a clone whose enabled state differs from its parent's
//! gets its own `ALTER TABLE ONLY partition ... TRIGGER`, after the parent's.

use super::comments::add_comment;
use super::deps::Dep;
use super::tables::Tables;
use super::{class, query, quote_ident, Graph, Node, ObjRef, RowExt, Target};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph, tables: &Tables) -> Result<()> {
    let rows = query(
        conn,
        "triggers",
        "SELECT t.oid, t.tgname, t.tgrelid, t.tgconstraint, t.tgenabled::text AS enabled, \
                pg_catalog.pg_get_triggerdef(t.oid) AS def, \
                pg_catalog.obj_description(t.oid, 'pg_trigger') AS comment \
         FROM pg_catalog.pg_trigger t \
         JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE NOT t.tgisinternal AND t.tgparentid = 0 \
         ORDER BY n.nspname, c.relname, t.tgname",
    )
    .await?;
    for r in rows {
        let Some(table) = tables.get(&r.oid("tgrelid")?) else {
            continue;
        };
        let name = r.text("tgname")?;
        let mut stmts = vec![format!("{};", r.text("def")?)];
        let q = quote_ident(&name);
        match r.text("enabled")?.as_str() {
            "D" => stmts.push(format!("ALTER TABLE {} DISABLE TRIGGER {q};", table.sql)),
            "R" => stmts.push(format!(
                "ALTER TABLE {} ENABLE REPLICA TRIGGER {q};",
                table.sql
            )),
            "A" => stmts.push(format!(
                "ALTER TABLE {} ENABLE ALWAYS TRIGGER {q};",
                table.sql
            )),
            _ => {}
        }
        let node = g.add(
            Node::new(Section::PostData, "TRIGGER", &table.name.schema, &name)
                .owner_table(Some(table.name.clone()))
                .statement(stmts.join("\n"))
                .dep(Dep::Node(table.node)),
        );
        g.bind(ObjRef::new(class::PG_TRIGGER, r.oid("oid")?), node);
        let constraint = r.oid("tgconstraint")?;
        if constraint != 0 {
            g.bind(ObjRef::new(class::PG_CONSTRAINT, constraint), node);
        }
        let t = Target {
            node,
            section: Section::PostData,
            word: "TRIGGER",
            grant_word: "TRIGGER",
            sql: format!("{q} ON {}", table.sql),
            schema: table.name.schema.clone(),
            name,
            owner_table: Some(table.name.clone()),
        };
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    collect_clone_states(conn, g, tables).await
}

/// The enabled state of a partition's clone, as an `ALTER TABLE ONLY`.
fn enable_sql(table: &str, trigger: &str, enabled: &str) -> String {
    let q = quote_ident(trigger);
    match enabled {
        "D" => format!("ALTER TABLE ONLY {table} DISABLE TRIGGER {q};"),
        "R" => format!("ALTER TABLE ONLY {table} ENABLE REPLICA TRIGGER {q};"),
        "A" => format!("ALTER TABLE ONLY {table} ENABLE ALWAYS TRIGGER {q};"),
        _ => format!("ALTER TABLE ONLY {table} ENABLE TRIGGER {q};"),
    }
}

/// A partition's clones of its parent's triggers whose enable state is
/// their own (before 15 a clone is internal: not a constraint's trigger).
async fn collect_clone_states(conn: &mut PgConn, g: &mut Graph, tables: &Tables) -> Result<()> {
    let rows = query(
        conn,
        "partition trigger states",
        "SELECT t.tgname, t.tgrelid, t.tgparentid, t.tgenabled::text AS enabled          FROM pg_catalog.pg_trigger t          JOIN pg_catalog.pg_trigger p ON p.oid = t.tgparentid          JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace          WHERE (NOT t.tgisinternal OR t.tgconstraint = 0) AND t.tgparentid <> 0 AND t.tgenabled <> p.tgenabled          ORDER BY n.nspname, c.relname, t.tgname",
    )
    .await?;
    for r in rows {
        let Some(table) = tables.get(&r.oid("tgrelid")?) else {
            continue;
        };
        let name = r.text("tgname")?;
        g.add(
            Node::new(Section::PostData, "TRIGGER", &table.name.schema, &name)
                .owner_table(Some(table.name.clone()))
                .statement(enable_sql(&table.sql, &name, &r.text("enabled")?))
                .dep(Dep::Node(table.node))
                .dep(Dep::Obj(ObjRef::new(
                    class::PG_TRIGGER,
                    r.oid("tgparentid")?,
                ))),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_states() {
        assert_eq!(
            enable_sql("s.p1", "tr", "D"),
            "ALTER TABLE ONLY s.p1 DISABLE TRIGGER tr;"
        );
        assert_eq!(
            enable_sql("s.p1", "Tr", "A"),
            "ALTER TABLE ONLY s.p1 ENABLE ALWAYS TRIGGER \"Tr\";"
        );
        assert_eq!(
            enable_sql("s.p1", "tr", "O"),
            "ALTER TABLE ONLY s.p1 ENABLE TRIGGER tr;"
        );
    }
}
