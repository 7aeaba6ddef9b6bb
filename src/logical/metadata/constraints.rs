//! Primary keys, unique and exclusion constraints (post-data, `ALTER
//! TABLE ONLY ... ADD CONSTRAINT`, with the extras of their index), and
//! foreign keys (after them; without ONLY on a partitioned table, whose
//! partitions get clones). Foreign keys cloned onto partitions are not
//! collected: the parent's constraint creates them. CHECK constraints are
//! the table's (tables.rs), domain ones the domain's (types.rs).

use std::collections::HashMap;

use super::comments::add_comment;
use super::deps::Dep;
use super::indexes::IndexExtras;
use super::tables::{constraint_target, Tables};
use super::{class, query, quote_ident, reloptions_sql, Graph, Node, ObjRef, RowExt, Target};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

pub(crate) async fn collect(
    conn: &mut PgConn,
    g: &mut Graph,
    tables: &Tables,
    index_extras: &HashMap<u32, IndexExtras>,
) -> Result<()> {
    let rows = query(
        conn,
        "constraints",
        "SELECT k.oid, k.conname, k.contype::text AS contype, k.conrelid, k.conindid, k.conparentid, \
                pg_catalog.pg_get_constraintdef(k.oid) AS def, \
                pg_catalog.obj_description(k.oid, 'pg_constraint') AS comment \
         FROM pg_catalog.pg_constraint k \
         JOIN pg_catalog.pg_class c ON c.oid = k.conrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE k.contype IN ('p', 'u', 'x', 'f') \
         ORDER BY n.nspname, c.relname, k.conname",
    )
    .await?;
    for r in rows {
        let Some(table) = tables.get(&r.oid("conrelid")?) else {
            continue;
        };
        let contype = r.text("contype")?;
        let name = r.text("conname")?;
        let oid = r.oid("oid")?;
        let def = r.text("def")?;
        let index = r.oid("conindid")?;
        let extras = if contype == "f" {
            None
        } else {
            index_extras.get(&index)
        };
        let def = match extras {
            Some(x) if matches!(contype.as_str(), "p" | "u") && !x.reloptions.is_empty() => {
                with_index_options(&def, &reloptions_sql(&x.reloptions, ""))
            }
            _ => def,
        };
        let (kind, statement) = if contype == "f" {
            if r.oid("conparentid")? != 0 {
                continue;
            }
            let only = if table.relkind == 'p' { "" } else { "ONLY " };
            (
                "FK CONSTRAINT",
                format!(
                    "ALTER TABLE {only}{} ADD CONSTRAINT {} {def};",
                    table.sql,
                    quote_ident(&name)
                ),
            )
        } else {
            (
                "CONSTRAINT",
                format!(
                    "ALTER TABLE ONLY {} ADD CONSTRAINT {} {def};",
                    table.sql,
                    quote_ident(&name)
                ),
            )
        };
        let mut stmts = vec![statement];
        if let Some(x) = extras {
            stmts.extend(x.statements.iter().cloned());
        }
        let node = g.add(
            Node::new(Section::PostData, kind, &table.name.schema, &name)
                .owner_table(Some(table.name.clone()))
                .statement(stmts.join("\n"))
                .dep(Dep::Node(table.node)),
        );
        g.bind(ObjRef::new(class::PG_CONSTRAINT, oid), node);
        if contype != "f" && index != 0 {
            g.bind(ObjRef::new(class::PG_CLASS, index), node);
        }
        let t = constraint_target(node, Section::PostData, &table.name, &table.sql, &name);
        add_comment(g, &t, r.opt("comment")?.as_deref());
        if let Some(x) = extras.filter(|x| x.comment.is_some()) {
            let it = Target {
                word: "INDEX",
                grant_word: "INDEX",
                sql: x.qname.clone(),
                ..t.clone()
            };
            add_comment(g, &it, x.comment.as_deref());
        }
    }
    Ok(())
}

/// Add `WITH (options)` to a primary key or unique constraint definition
/// (`PRIMARY KEY (a) INCLUDE (b) USING INDEX TABLESPACE t DEFERRABLE`):
/// after the column lists, where the grammar wants index parameters.
fn with_index_options(def: &str, options: &str) -> String {
    // End of the parenthesized list opening at or after `from`, quotes
    // respected.
    fn list_end(s: &str, from: usize) -> Option<usize> {
        let open = from + s[from..].find('(')?;
        let (mut depth, mut quoted) = (0usize, false);
        for (i, c) in s[open..].char_indices() {
            match c {
                '"' => quoted = !quoted,
                '(' if !quoted => depth += 1,
                ')' if !quoted => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(open + i + 1);
                    }
                }
                _ => {}
            }
        }
        None
    }
    let Some(mut at) = list_end(def, 0) else {
        return format!("{def} WITH ({options})");
    };
    if def[at..].starts_with(" INCLUDE (") {
        if let Some(end) = list_end(def, at) {
            at = end;
        }
    }
    format!("{} WITH ({options}){}", &def[..at], &def[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_options_go_after_the_column_lists() {
        assert_eq!(
            with_index_options("PRIMARY KEY (id)", "fillfactor='90'"),
            "PRIMARY KEY (id) WITH (fillfactor='90')"
        );
        assert_eq!(
            with_index_options("UNIQUE NULLS NOT DISTINCT (a, \"b)\") INCLUDE (c) USING INDEX TABLESPACE t DEFERRABLE", "x='1'"),
            "UNIQUE NULLS NOT DISTINCT (a, \"b)\") INCLUDE (c) WITH (x='1') USING INDEX TABLESPACE t DEFERRABLE"
        );
    }
}
