//! Sequences and their values.
//!
//! * A free-standing sequence: SEQUENCE, OWNER, ACL, COMMENT entries.
//! * A sequence owned by a column (serial, `OWNED BY`): the SEQUENCE entry
//!   belongs to the table (`owner_table`), a `SEQUENCE OWNED BY` entry
//!   links them after both exist, and the table's owner change (which
//!   carries owned sequences along) waits for it.
//! * An identity sequence is created by its table's entry.
//!
//! Every sequence gets a `SEQUENCE SET` entry, `setval(seq, last_value,
//! is_called)`, with the value read when the metadata was collected (like
//! pg_dump, sequences are not part of the snapshot: the value is the
//! current one).

use super::acl::{add_acl, add_owner_and_acl, AclRow};
use super::comments::add_comment;
use super::deps::Dep;
use super::tables::Tables;
use super::{
    acl_json, class, not_extension_member, query, user_schema, Graph, Node, ObjRef, RowExt, Target,
};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

/// A sequence whose value to read: the SEQUENCE SET entry follows `node`.
struct SequenceValue {
    /// Quoted, schema-qualified.
    qname: String,
    node: usize,
    owner_table: Option<crate::logical::toc::QualifiedName>,
    schema: String,
    name: String,
}

/// Sequences read per query for their values.
const VALUE_BATCH: usize = 200;

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph, tables: &Tables) -> Result<()> {
    let sql = format!(
        "SELECT c.oid, n.nspname, c.relname, pg_catalog.format('%I.%I', n.nspname, c.relname) AS qname, \
                n.oid AS nspoid, pg_catalog.format_type(s.seqtypid, NULL) AS seqtype, \
                c.relpersistence::text AS persistence, \
                s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle, \
                pg_catalog.pg_get_userbyid(c.relowner) AS owner, {acl} AS acl, \
                pg_catalog.obj_description(c.oid, 'pg_class') AS comment, \
                d.refobjid AS table_oid, d.deptype::text AS deptype, \
                pg_catalog.quote_ident(a.attname) AS column_name \
         FROM pg_catalog.pg_sequence s \
         JOIN pg_catalog.pg_class c ON c.oid = s.seqrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass \
              AND d.objid = c.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
              AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0 \
         LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid \
         WHERE {user} AND {ext} \
         ORDER BY n.nspname, c.relname",
        acl = acl_json("c.relacl"),
        user = user_schema("n"),
        ext = not_extension_member("pg_class", "c.oid"),
    );
    let rows = query(conn, "sequences", &sql).await?;
    // (qualified name, entry the value follows, owner table)
    let mut values: Vec<SequenceValue> = Vec::new();
    for r in &rows {
        let oid = r.oid("oid")?;
        let schema = r.text("nspname")?;
        let name = r.text("relname")?;
        let qname = r.text("qname")?;
        let table = r
            .opt("table_oid")?
            .and_then(|t| t.parse::<u32>().ok())
            .and_then(|t| tables.get(&t));
        let deptype = r.opt("deptype")?.unwrap_or_default();
        let acl: Option<Vec<AclRow>> = r.opt_json("acl")?;
        let owner = r.text("owner")?;
        if let (Some(table), "i") = (table, deptype.as_str()) {
            // Identity: the table's entry creates it.
            g.bind(ObjRef::new(class::PG_CLASS, oid), table.node);
            let t = Target {
                node: table.node,
                section: Section::PreData,
                word: "SEQUENCE",
                grant_word: "SEQUENCE",
                sql: qname.clone(),
                schema: schema.clone(),
                name: name.clone(),
                owner_table: Some(table.name.clone()),
            };
            add_acl(g, &t, &owner, Some(table.owner_node), acl.as_deref(), &[]);
            add_comment(g, &t, r.opt("comment")?.as_deref());
            values.push(SequenceValue {
                qname,
                node: table.node,
                owner_table: Some(table.name.clone()),
                schema,
                name,
            });
            continue;
        }
        let owned = table.filter(|_| deptype == "a");
        let statement =
            format!(
            "CREATE {}SEQUENCE {qname}\n    AS {}\n    START WITH {}\n    INCREMENT BY {}\n    \
             MINVALUE {}\n    MAXVALUE {}\n    CACHE {}{};",
            if r.text("persistence")? == "u" { "UNLOGGED " } else { "" },
            r.text("seqtype")?,
            r.text("seqstart")?,
            r.text("seqincrement")?,
            r.text("seqmin")?,
            r.text("seqmax")?,
            r.text("seqcache")?,
            if r.flag("seqcycle")? {
                "\n    CYCLE"
            } else {
                ""
            }
        );
        let node = g.add(
            Node::new(Section::PreData, "SEQUENCE", &schema, &name)
                .owner_table(owned.map(|t| t.name.clone()))
                .statement(statement)
                .dep(Dep::Obj(ObjRef::new(class::PG_NAMESPACE, r.oid("nspoid")?))),
        );
        g.bind(ObjRef::new(class::PG_CLASS, oid), node);
        let t = Target {
            node,
            section: Section::PreData,
            word: "SEQUENCE",
            grant_word: "SEQUENCE",
            sql: qname.clone(),
            schema: schema.clone(),
            name: name.clone(),
            owner_table: owned.map(|t| t.name.clone()),
        };
        match owned {
            Some(table) => {
                g.mark_owned_sequence(oid);
                let column = r.text("column_name")?;
                let link = g.add(
                    Node::new(Section::PreData, "SEQUENCE OWNED BY", &schema, &name)
                        .owner_table(Some(table.name.clone()))
                        .statement(format!(
                            "ALTER SEQUENCE {qname} OWNED BY {}.{column};",
                            table.sql
                        ))
                        .dep(Dep::Node(node))
                        .dep(Dep::Node(table.node)),
                );
                // The table's owner change moves the sequence too; the
                // link must exist first (both must have the same owner).
                g.nodes[table.owner_node].deps.push(Dep::Node(link));
                add_acl(g, &t, &owner, Some(table.owner_node), acl.as_deref(), &[]);
            }
            None => add_owner_and_acl(g, &t, &owner, acl.as_deref(), &[]),
        }
        add_comment(g, &t, r.opt("comment")?.as_deref());
        values.push(SequenceValue {
            qname,
            node,
            owner_table: owned.map(|t| t.name.clone()),
            schema,
            name,
        });
    }

    for batch in values.chunks(VALUE_BATCH) {
        let sql = batch
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "SELECT {i} AS i, last_value::text AS v, is_called FROM {}",
                    v.qname
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        for r in query(conn, "sequence values", &sql).await? {
            let v = &batch[r.int("i")? as usize];
            let is_called = if r.flag("is_called")? {
                "true"
            } else {
                "false"
            };
            g.add(
                Node::new(Section::PreData, "SEQUENCE SET", &v.schema, &v.name)
                    .owner_table(v.owner_table.clone())
                    .statement(format!(
                        "SELECT pg_catalog.setval({}::pg_catalog.regclass, {}, {is_called});",
                        super::quote_literal(&v.qname),
                        r.text("v")?,
                    ))
                    .dep(Dep::Node(v.node)),
            );
        }
    }
    Ok(())
}
