//! Publications (post-data, as pg_dump has them), their tables (with
//! column lists and row filters) and their schemas.

use super::acl::add_owner;
use super::comments::add_comment;
use super::deps::Dep;
use super::{class, create_unless_exists, query, quote_ident, Graph, Node, ObjRef, RowExt, Target};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let rows = query(
        conn,
        "publications",
        "SELECT p.oid, p.pubname, p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, \
                p.pubviaroot, pg_catalog.pg_get_userbyid(p.pubowner) AS owner, \
                pg_catalog.obj_description(p.oid, 'pg_publication') AS comment \
         FROM pg_catalog.pg_publication p ORDER BY p.pubname",
    )
    .await?;
    for r in rows {
        let name = r.text("pubname")?;
        let q = quote_ident(&name);
        let publish: Vec<&str> = [
            ("pubinsert", "insert"),
            ("pubupdate", "update"),
            ("pubdelete", "delete"),
            ("pubtruncate", "truncate"),
        ]
        .iter()
        .filter_map(|(col, word)| match r.flag(col) {
            Ok(true) => Some(*word),
            _ => None,
        })
        .collect();
        let sql = format!(
            "CREATE PUBLICATION {q}{} WITH (publish = '{}', publish_via_partition_root = {});",
            if r.flag("puballtables")? {
                " FOR ALL TABLES"
            } else {
                ""
            },
            publish.join(", "),
            r.flag("pubviaroot")?
        );
        let sql = create_unless_exists(&sql);
        let node = g.add(Node::new(Section::PostData, "PUBLICATION", "", &name).statement(sql));
        g.bind(ObjRef::new(class::PG_PUBLICATION, r.oid("oid")?), node);
        let t = Target::of(node, Section::PostData, "PUBLICATION", "", &q, "", &name);
        add_owner(g, &t, &r.text("owner")?);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }

    // Row filters and column lists are 15's.
    let filter_and_columns = super::since(
        conn,
        150000,
        "CASE WHEN pr.prqual IS NOT NULL THEN pg_catalog.pg_get_expr(pr.prqual, pr.prrelid) END AS filter, \
         (SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY k.ord) \
           FROM pg_catalog.unnest(pr.prattrs::int2[]) WITH ORDINALITY AS k(attnum, ord) \
           JOIN pg_catalog.pg_attribute a ON a.attrelid = pr.prrelid AND a.attnum = k.attnum) AS columns",
        "NULL::text AS filter, NULL::text AS columns",
    );
    let sql = format!(
        "SELECT pr.oid, pr.prpubid, pr.prrelid, p.pubname, n.nspname, c.relname, \
                pg_catalog.format('%I.%I', n.nspname, c.relname) AS qname, {filter_and_columns} \
         FROM pg_catalog.pg_publication_rel pr \
         JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid \
         JOIN pg_catalog.pg_class c ON c.oid = pr.prrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         ORDER BY p.pubname, n.nspname, c.relname"
    );
    let rows = query(conn, "publication tables", &sql).await?;
    for r in rows {
        let pubname = r.text("pubname")?;
        let table = super::qname(&r.text("nspname")?, &r.text("relname")?);
        let mut sql = format!(
            "ALTER PUBLICATION {} ADD TABLE ONLY {}",
            quote_ident(&pubname),
            r.text("qname")?
        );
        if let Some(c) = r.opt("columns")? {
            sql.push_str(&format!(" ({c})"));
        }
        if let Some(f) = r.opt("filter")? {
            sql.push_str(&format!(" WHERE ({f})"));
        }
        sql.push(';');
        let node = g.add(
            Node::new(
                Section::PostData,
                "PUBLICATION TABLE",
                &table.schema,
                &format!("{pubname} {}", table.name),
            )
            .owner_table(Some(table))
            .statement(sql)
            .dep(Dep::Obj(ObjRef::new(
                class::PG_PUBLICATION,
                r.oid("prpubid")?,
            )))
            .dep(Dep::Obj(ObjRef::new(class::PG_CLASS, r.oid("prrelid")?))),
        );
        g.bind(ObjRef::new(class::PG_PUBLICATION_REL, r.oid("oid")?), node);
    }

    // Publications of whole schemas (PostgreSQL 15).
    let has_namespaces = !query(
        conn,
        "publication schemas catalog",
        "SELECT 1 FROM pg_catalog.pg_class WHERE relname = 'pg_publication_namespace' \
           AND relnamespace = 'pg_catalog'::pg_catalog.regnamespace",
    )
    .await?
    .is_empty();
    if has_namespaces {
        let rows = query(
            conn,
            "publication schemas",
            "SELECT pn.oid, pn.pnpubid, pn.pnnspid, p.pubname, n.nspname \
             FROM pg_catalog.pg_publication_namespace pn \
             JOIN pg_catalog.pg_publication p ON p.oid = pn.pnpubid \
             JOIN pg_catalog.pg_namespace n ON n.oid = pn.pnnspid \
             ORDER BY p.pubname, n.nspname",
        )
        .await?;
        for r in rows {
            let pubname = r.text("pubname")?;
            let schema = r.text("nspname")?;
            let node = g.add(
                Node::new(
                    Section::PostData,
                    "PUBLICATION TABLES IN SCHEMA",
                    &schema,
                    &format!("{pubname} {schema}"),
                )
                .statement(format!(
                    "ALTER PUBLICATION {} ADD TABLES IN SCHEMA {};",
                    quote_ident(&pubname),
                    quote_ident(&schema)
                ))
                .dep(Dep::Obj(ObjRef::new(
                    class::PG_PUBLICATION,
                    r.oid("pnpubid")?,
                )))
                .dep(Dep::Obj(ObjRef::new(
                    class::PG_NAMESPACE,
                    r.oid("pnnspid")?,
                ))),
            );
            g.bind(
                ObjRef::new(class::PG_PUBLICATION_NAMESPACE, r.oid("oid")?),
                node,
            );
        }
    }
    Ok(())
}
