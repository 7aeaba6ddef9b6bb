//! Indexes (`pg_get_indexdef`) with their tablespace, CLUSTER ON, replica
//! identity and per-column statistics targets; partitioned indexes are
//! created `ON ONLY` the parent and their partitions' indexes attached by
//! `INDEX ATTACH` entries, as pg_dump does. Indexes that implement a
//! constraint are created by the constraint's entry (see constraints.rs),
//! which takes these extras from [`collect`].

use std::collections::HashMap;

use super::comments::add_comment;
use super::deps::Dep;
use super::tables::Tables;
use super::{class, query, quote_ident, quote_literal, Graph, Node, ObjRef, RowExt, Target};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

/// What a constraint's entry adds for the index behind it.
#[derive(Debug, Clone, Default)]
pub(crate) struct IndexExtras {
    /// Quoted, schema-qualified index name.
    pub qname: String,
    pub statements: Vec<String>,
    pub comment: Option<String>,
    /// The index's storage parameters (`fillfactor=90`): a primary key or
    /// unique constraint's definition does not show them.
    pub reloptions: Vec<String>,
}

pub(crate) async fn collect(
    conn: &mut PgConn,
    g: &mut Graph,
    tables: &Tables,
) -> Result<HashMap<u32, IndexExtras>> {
    let rows = query(
        conn,
        "indexes",
        "SELECT i.indexrelid, i.indrelid, ic.relname, \
                pg_catalog.format('%I.%I', n.nspname, ic.relname) AS qname, n.nspname, \
                pg_catalog.pg_get_indexdef(i.indexrelid) AS def, i.indisclustered, i.indisreplident, \
                i.indisvalid, ts.spcname, ic.reltablespace, \
                pg_catalog.array_to_json(ic.reloptions) AS reloptions, \
                pg_catalog.obj_description(i.indexrelid, 'pg_class') AS comment, \
                (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(a.attnum, a.attstattarget) ORDER BY a.attnum) \
                  FROM pg_catalog.pg_attribute a WHERE a.attrelid = i.indexrelid AND a.attstattarget >= 0) AS stats, \
                EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.conindid = i.indexrelid \
                        AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x')) AS is_constraint \
         FROM pg_catalog.pg_index i \
         JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace \
         LEFT JOIN pg_catalog.pg_tablespace ts ON ts.oid = ic.reltablespace \
         WHERE i.indexrelid >= 16384 \
         ORDER BY n.nspname, ic.relname",
    )
    .await?;
    let mut constraint_indexes = HashMap::new();
    for r in rows {
        let Some(table) = tables.get(&r.oid("indrelid")?) else {
            continue;
        };
        if !r.flag("indisvalid")? && table.relkind != 'p' {
            continue; // a failed CREATE INDEX CONCURRENTLY: pg_dump skips it too
        }
        let oid = r.oid("indexrelid")?;
        let qname = r.text("qname")?;
        let name = r.text("relname")?;
        let mut extras = Vec::new();
        if r.flag("indisclustered")? {
            extras.push(format!(
                "ALTER TABLE {} CLUSTER ON {};",
                table.sql,
                quote_ident(&name)
            ));
        }
        if r.flag("indisreplident")? {
            extras.push(format!(
                "ALTER TABLE ONLY {} REPLICA IDENTITY USING INDEX {};",
                table.sql,
                quote_ident(&name)
            ));
        }
        let stats: Vec<(i32, i32)> = r.opt_json("stats")?.unwrap_or_default();
        for (attnum, target) in stats {
            extras.push(format!(
                "ALTER INDEX {qname} ALTER COLUMN {attnum} SET STATISTICS {target};"
            ));
        }
        if r.flag("is_constraint")? {
            constraint_indexes.insert(
                oid,
                IndexExtras {
                    qname,
                    statements: extras,
                    comment: r.opt("comment")?,
                    reloptions: r.opt_json("reloptions")?.unwrap_or_default(),
                },
            );
            continue;
        }
        let create = format!("{};", r.text("def")?);
        let mut stmts = match r.opt("spcname")? {
            Some(ts) => vec![
                format!("SET default_tablespace = {};", quote_literal(&ts)),
                create,
                "SET default_tablespace = '';".to_string(),
            ],
            None => vec![create],
        };
        stmts.extend(extras);
        let mut node = Node::new(Section::PostData, "INDEX", &r.text("nspname")?, &name)
            .owner_table(Some(table.name.clone()))
            .statement(stmts.join("\n"))
            .dep(Dep::Node(table.node));
        if r.opt("spcname")?.is_some() {
            node = node.dep(Dep::Obj(ObjRef::new(
                class::PG_TABLESPACE,
                r.oid("reltablespace")?,
            )));
        }
        let node = g.add(node);
        g.bind(ObjRef::new(class::PG_CLASS, oid), node);
        let t = Target {
            node,
            section: Section::PostData,
            word: "INDEX",
            grant_word: "INDEX",
            sql: qname,
            schema: r.text("nspname")?,
            name,
            owner_table: Some(table.name.clone()),
        };
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(constraint_indexes)
}

/// `ALTER INDEX parent ATTACH PARTITION child` for every index of a
/// partition that belongs to an index of its parent.
pub(crate) async fn collect_attachments(
    conn: &mut PgConn,
    g: &mut Graph,
    tables: &Tables,
) -> Result<()> {
    let rows = query(
        conn,
        "partition indexes",
        "SELECT i.inhrelid AS child, i.inhparent AS parent, ci.indrelid AS child_table, \
                cn.nspname, cc.relname, \
                pg_catalog.format('%I.%I', cn.nspname, cc.relname) AS child_q, \
                pg_catalog.format('%I.%I', pn.nspname, pc.relname) AS parent_q \
         FROM pg_catalog.pg_inherits i \
         JOIN pg_catalog.pg_class cc ON cc.oid = i.inhrelid \
         JOIN pg_catalog.pg_namespace cn ON cn.oid = cc.relnamespace \
         JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent \
         JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace \
         JOIN pg_catalog.pg_index ci ON ci.indexrelid = i.inhrelid \
         WHERE cc.relkind IN ('i', 'I') \
         ORDER BY cn.nspname, cc.relname",
    )
    .await?;
    for r in rows {
        let Some(table) = tables.get(&r.oid("child_table")?) else {
            continue;
        };
        let child = ObjRef::new(class::PG_CLASS, r.oid("child")?);
        let parent = ObjRef::new(class::PG_CLASS, r.oid("parent")?);
        if g.node_of(child).is_none() || g.node_of(parent).is_none() {
            continue;
        }
        g.add(
            Node::new(
                Section::PostData,
                "INDEX ATTACH",
                &r.text("nspname")?,
                &r.text("relname")?,
            )
            .owner_table(Some(table.name.clone()))
            .statement(format!(
                "ALTER INDEX {} ATTACH PARTITION {};",
                r.text("parent_q")?,
                r.text("child_q")?
            ))
            .dep(Dep::Obj(parent))
            .dep(Dep::Obj(child)),
        );
    }
    Ok(())
}
