//! Collations, enum, composite and range types, domains (with their check
//! constraints: validated ones in the CREATE DOMAIN, NOT VALID ones as
//! post-data entries).
//!
//! Base types: a `SHELL TYPE` entry first (its I/O functions need only
//! the name), the functions, then the `TYPE` entry with every property.
//! A standalone shell type (`CREATE TYPE t;`) is a `SHELL TYPE` entry.

use super::acl::{add_owner_and_acl, AclRow};
use super::comments::add_comment;
use super::deps::Dep;
use super::{
    acl_json, class, not_extension_member, query, quote_literal, user_schema, Graph, Node, ObjRef,
    RowExt, Target,
};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

/// SQL expression: the schema-qualified, quoted name of collation `oid`.
pub(crate) fn collation_name_sql(oid: &str) -> String {
    format!(
        "(SELECT pg_catalog.format('%I.%I', cn.nspname, co.collname) \
          FROM pg_catalog.pg_collation co JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace \
          WHERE co.oid = {oid})"
    )
}

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    collect_collations(conn, g).await?;
    collect_types(conn, g).await?;
    collect_base_types(conn, g).await
}

/// The functions a base type names: (column of pg_type, CREATE TYPE word).
const BASE_TYPE_FUNCTIONS: &[(&str, &str)] = &[
    ("typinput", "INPUT"),
    ("typoutput", "OUTPUT"),
    ("typreceive", "RECEIVE"),
    ("typsend", "SEND"),
    ("typmodin", "TYPMOD_IN"),
    ("typmodout", "TYPMOD_OUT"),
    ("typanalyze", "ANALYZE"),
    ("typsubscript", "SUBSCRIPT"),
];

async fn collect_base_types(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    // typsubscript is 14's.
    let has_subscript = conn.server_version_num() == 0 || conn.server_version_num() >= 140000;
    let funcs: Vec<String> = BASE_TYPE_FUNCTIONS
        .iter()
        .filter(|(col, _)| has_subscript || *col != "typsubscript")
        .map(|(col, _)| {
            format!(
                "CASE WHEN t.{col} <> 0 THEN pg_catalog.json_build_array(t.{col}::pg_catalog.oid::int8, t.{col}::pg_catalog.regproc::text) END AS {col}"
            )
        })
        .collect();
    let sql = format!(
        "SELECT t.oid, n.nspname, t.typname, pg_catalog.format('%I.%I', n.nspname, t.typname) AS qname,                 n.oid AS nspoid, t.typisdefined, t.typlen, t.typbyval, t.typalign::text AS typalign,                 t.typstorage::text AS typstorage, t.typcategory::text AS typcategory, t.typispreferred,                 t.typdelim::text AS typdelim, t.typcollation <> 0 AS collatable, t.typdefault,                 CASE WHEN t.typelem <> 0 THEN pg_catalog.format_type(t.typelem, NULL) END AS elem,                 {funcs},                 pg_catalog.pg_get_userbyid(t.typowner) AS owner, {acl} AS acl,                 pg_catalog.obj_description(t.oid, 'pg_type') AS comment          FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace          WHERE {user} AND {ext}            AND ((t.typtype = 'b' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e WHERE e.typarray = t.oid))                 OR (t.typtype = 'p' AND NOT t.typisdefined))          ORDER BY n.nspname, t.typname",
        funcs = funcs.join(", "),
        acl = acl_json("t.typacl"),
        user = user_schema("n"),
        ext = not_extension_member("pg_type", "t.oid"),
    );
    for r in query(conn, "base and shell types", &sql).await? {
        let schema = r.text("nspname")?;
        let name = r.text("typname")?;
        let qname = r.text("qname")?;
        let oid = ObjRef::new(class::PG_TYPE, r.oid("oid")?);
        let nsp = Dep::Obj(ObjRef::new(class::PG_NAMESPACE, r.oid("nspoid")?));
        let shell = g.add(
            Node::new(Section::PreData, "SHELL TYPE", &schema, &name)
                .statement(format!("CREATE TYPE {qname};"))
                .dep(nsp.clone()),
        );
        let node = if r.flag("typisdefined")? {
            let mut opts = Vec::new();
            let len = r.int("typlen")?;
            opts.push(if len < 0 {
                "    INTERNALLENGTH = variable".to_string()
            } else {
                format!("    INTERNALLENGTH = {len}")
            });
            let mut io = Vec::new();
            for (col, word) in BASE_TYPE_FUNCTIONS {
                if let Some((foid, fname)) = r.opt_json::<(u32, String)>(col)? {
                    opts.push(format!("    {word} = {fname}"));
                    io.push(foid);
                }
            }
            if let Some(d) = r.opt("typdefault")? {
                opts.push(format!("    DEFAULT = {}", quote_literal(&d)));
            }
            if let Some(e) = r.opt("elem")? {
                opts.push(format!("    ELEMENT = {e}"));
            }
            let category = r.text("typcategory")?;
            if category != "U" {
                opts.push(format!("    CATEGORY = {}", quote_literal(&category)));
            }
            if r.flag("typispreferred")? {
                opts.push("    PREFERRED = true".into());
            }
            let delim = r.text("typdelim")?;
            if delim != "," {
                opts.push(format!("    DELIMITER = {}", quote_literal(&delim)));
            }
            let align = match r.text("typalign")?.as_str() {
                "c" => "char",
                "s" => "int2",
                "d" => "double",
                _ => "int4",
            };
            opts.push(format!("    ALIGNMENT = {align}"));
            let storage = match r.text("typstorage")?.as_str() {
                "p" => "plain",
                "e" => "external",
                "m" => "main",
                _ => "extended",
            };
            opts.push(format!("    STORAGE = {storage}"));
            if r.flag("typbyval")? {
                opts.push("    PASSEDBYVALUE".into());
            }
            if r.flag("collatable")? {
                opts.push("    COLLATABLE = true".into());
            }
            let node = g.add(
                Node::new(Section::PreData, "TYPE", &schema, &name)
                    .statement(format!("CREATE TYPE {qname} (\n{}\n);", opts.join(",\n")))
                    .dep(Dep::Node(shell))
                    .dep(nsp),
            );
            // The I/O functions take or return the type: they need only
            // the shell, and the type needs them.
            for f in io {
                let func = ObjRef::new(class::PG_PROC, f);
                g.redirect(func, oid, shell);
            }
            node
        } else {
            shell
        };
        g.bind(oid, node);
        let t = Target::of(
            node,
            Section::PreData,
            "TYPE",
            "TYPE",
            &qname,
            &schema,
            &name,
        );
        let acl: Option<Vec<AclRow>> = r.opt_json("acl")?;
        add_owner_and_acl(g, &t, &r.text("owner")?, acl.as_deref(), &[]);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}

async fn collect_collations(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let icu_locale = if conn.server_version_num() >= 150000 {
        "c.colliculocale"
    } else {
        "NULL::text"
    };
    let sql = format!(
        "SELECT c.oid, n.nspname, c.collname, pg_catalog.format('%I.%I', n.nspname, c.collname) AS qname, \
                pg_catalog.pg_get_userbyid(c.collowner) AS owner, c.collprovider::text AS provider, \
                c.collisdeterministic AS deterministic, c.collcollate, c.collctype, \
                {icu_locale} AS iculocale, n.oid AS nspoid, \
                pg_catalog.obj_description(c.oid, 'pg_collation') AS comment \
         FROM pg_catalog.pg_collation c JOIN pg_catalog.pg_namespace n ON n.oid = c.collnamespace \
         WHERE {user} AND {ext} \
         ORDER BY n.nspname, c.collname",
        user = user_schema("n"),
        ext = not_extension_member("pg_collation", "c.oid"),
    );
    for r in query(conn, "collations", &sql).await? {
        let schema = r.text("nspname")?;
        let name = r.text("collname")?;
        let qname = r.text("qname")?;
        let provider = match r.text("provider")?.as_str() {
            "i" => "icu",
            "c" => "libc",
            _ => "default",
        };
        let mut opts = vec![format!("provider = {provider}")];
        if !r.flag("deterministic")? {
            opts.push("deterministic = false".into());
        }
        let collate = r.opt("collcollate")?.unwrap_or_default();
        let ctype = r.opt("collctype")?.unwrap_or_default();
        match r.opt("iculocale")? {
            Some(locale) if provider == "icu" => {
                opts.push(format!("locale = {}", quote_literal(&locale)))
            }
            _ if collate == ctype => opts.push(format!("locale = {}", quote_literal(&collate))),
            _ => {
                opts.push(format!("lc_collate = {}", quote_literal(&collate)));
                opts.push(format!("lc_ctype = {}", quote_literal(&ctype)));
            }
        }
        let node = g.add(
            Node::new(Section::PreData, "COLLATION", &schema, &name)
                .statement(format!("CREATE COLLATION {qname} ({});", opts.join(", ")))
                .dep(Dep::Obj(ObjRef::new(class::PG_NAMESPACE, r.oid("nspoid")?))),
        );
        g.bind(ObjRef::new(class::PG_COLLATION, r.oid("oid")?), node);
        let t = Target {
            node,
            section: Section::PreData,
            word: "COLLATION",
            grant_word: "COLLATION",
            sql: qname,
            schema,
            name,
            owner_table: None,
        };
        add_owner_and_acl(g, &t, &r.text("owner")?, None, &[]);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}

async fn collect_types(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let sql = format!(
        "SELECT t.oid, n.nspname, t.typname, pg_catalog.format('%I.%I', n.nspname, t.typname) AS qname, \
                t.typtype::text AS typtype, t.typrelid, n.oid AS nspoid, \
                pg_catalog.pg_get_userbyid(t.typowner) AS owner, {acl} AS acl, \
                pg_catalog.obj_description(t.oid, 'pg_type') AS comment, \
                CASE WHEN t.typtype = 'e' THEN (SELECT pg_catalog.json_agg(e.enumlabel ORDER BY e.enumsortorder) \
                    FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid) END AS labels, \
                CASE WHEN t.typtype = 'c' THEN (SELECT pg_catalog.json_agg(pg_catalog.json_build_array( \
                        pg_catalog.quote_ident(a.attname), pg_catalog.format_type(a.atttypid, a.atttypmod), \
                        CASE WHEN a.attcollation <> at.typcollation THEN {attcoll} END) ORDER BY a.attnum) \
                    FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type at ON at.oid = a.atttypid \
                    WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped) END AS attrs, \
                pg_catalog.format_type(r.rngsubtype, NULL) AS rng_subtype, \
                CASE WHEN NOT opc.opcdefault THEN pg_catalog.format('%I.%I', opcn.nspname, opc.opcname) END AS rng_opclass, \
                CASE WHEN r.rngcollation <> 0 AND r.rngcollation <> st.typcollation THEN {rngcoll} END AS rng_collation, \
                CASE WHEN r.rngcanonical <> 0 THEN r.rngcanonical::pg_catalog.regproc::text END AS rng_canonical, \
                CASE WHEN r.rngsubdiff <> 0 THEN r.rngsubdiff::pg_catalog.regproc::text END AS rng_subdiff, \
                {multirange}, \
                pg_catalog.format_type(t.typbasetype, t.typtypmod) AS dom_base, t.typnotnull, \
                pg_catalog.pg_get_expr(t.typdefaultbin, 0) AS dom_default_expr, t.typdefault AS dom_default, \
                CASE WHEN t.typtype = 'd' AND t.typcollation <> bt.typcollation THEN {domcoll} END AS dom_collation, \
                CASE WHEN t.typtype = 'd' THEN (SELECT pg_catalog.json_agg(pg_catalog.json_build_array( \
                        co.oid::int8, co.conname, pg_catalog.pg_get_constraintdef(co.oid), co.convalidated, \
                        pg_catalog.obj_description(co.oid, 'pg_constraint')) ORDER BY co.conname) \
                    FROM pg_catalog.pg_constraint co WHERE co.contypid = t.oid AND co.contype = 'c') END AS dom_checks \
         FROM pg_catalog.pg_type t \
         JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
         LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid \
         LEFT JOIN pg_catalog.pg_type st ON st.oid = r.rngsubtype \
         LEFT JOIN pg_catalog.pg_opclass opc ON opc.oid = r.rngsubopc \
         LEFT JOIN pg_catalog.pg_namespace opcn ON opcn.oid = opc.opcnamespace \
         LEFT JOIN pg_catalog.pg_type bt ON bt.oid = t.typbasetype \
         WHERE {user} AND {ext} \
           AND (t.typtype IN ('e', 'r', 'd') \
                OR (t.typtype = 'c' AND (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid) = 'c')) \
         ORDER BY n.nspname, t.typname",
        acl = acl_json("t.typacl"),
        attcoll = collation_name_sql("a.attcollation"),
        rngcoll = collation_name_sql("r.rngcollation"),
        // Multiranges are 14's.
        multirange = super::since(
            conn,
            140000,
            "r.rngmultitypid, \
             CASE WHEN r.rngmultitypid <> 0 THEN (SELECT pg_catalog.format('%I.%I', mn.nspname, mt.typname) \
                 FROM pg_catalog.pg_type mt JOIN pg_catalog.pg_namespace mn ON mn.oid = mt.typnamespace \
                 WHERE mt.oid = r.rngmultitypid) END AS rng_multirange",
            "NULL::oid AS rngmultitypid, NULL::text AS rng_multirange",
        ),
        domcoll = collation_name_sql("t.typcollation"),
        user = user_schema("n"),
        ext = not_extension_member("pg_type", "t.oid"),
    );
    for r in query(conn, "types", &sql).await? {
        let schema = r.text("nspname")?;
        let name = r.text("typname")?;
        let qname = r.text("qname")?;
        let typtype = r.text("typtype")?;
        let oid = r.oid("oid")?;
        let mut post_checks: Vec<(u32, String, String, Option<String>)> = Vec::new();
        let mut inline_check_oids = Vec::new();
        let mut check_comments: Vec<(String, Option<String>)> = Vec::new();
        let (kind, statement) = match typtype.as_str() {
            "e" => {
                let labels: Vec<String> = r.opt_json("labels")?.unwrap_or_default();
                let labels: Vec<String> = labels
                    .iter()
                    .map(|l| format!("    {}", quote_literal(l)))
                    .collect();
                (
                    "TYPE",
                    format!("CREATE TYPE {qname} AS ENUM (\n{}\n);", labels.join(",\n")),
                )
            }
            "c" => {
                let attrs: Vec<(String, String, Option<String>)> =
                    r.opt_json("attrs")?.unwrap_or_default();
                let attrs: Vec<String> = attrs
                    .iter()
                    .map(|(n, t, c)| match c {
                        Some(c) => format!("    {n} {t} COLLATE {c}"),
                        None => format!("    {n} {t}"),
                    })
                    .collect();
                (
                    "TYPE",
                    format!("CREATE TYPE {qname} AS (\n{}\n);", attrs.join(",\n")),
                )
            }
            "r" => {
                let mut opts = vec![format!("    subtype = {}", r.text("rng_subtype")?)];
                if let Some(m) = r.opt("rng_multirange")? {
                    opts.push(format!("    multirange_type_name = {m}"));
                }
                if let Some(o) = r.opt("rng_opclass")? {
                    opts.push(format!("    subtype_opclass = {o}"));
                }
                if let Some(c) = r.opt("rng_collation")? {
                    opts.push(format!("    collation = {c}"));
                }
                if let Some(f) = r.opt("rng_canonical")? {
                    opts.push(format!("    canonical = {f}"));
                }
                if let Some(f) = r.opt("rng_subdiff")? {
                    opts.push(format!("    subtype_diff = {f}"));
                }
                (
                    "TYPE",
                    format!("CREATE TYPE {qname} AS RANGE (\n{}\n);", opts.join(",\n")),
                )
            }
            _ => {
                let mut sql = format!("CREATE DOMAIN {qname} AS {}", r.text("dom_base")?);
                if let Some(c) = r.opt("dom_collation")? {
                    sql.push_str(&format!(" COLLATE {c}"));
                }
                if let Some(d) = r.opt("dom_default_expr")? {
                    sql.push_str(&format!(" DEFAULT {d}"));
                } else if let Some(d) = r.opt("dom_default")? {
                    sql.push_str(&format!(" DEFAULT {}", quote_literal(&d)));
                }
                if r.flag("typnotnull")? {
                    sql.push_str(" NOT NULL");
                }
                let checks: Vec<(u32, String, String, bool, Option<String>)> =
                    r.opt_json("dom_checks")?.unwrap_or_default();
                for (coid, cname, def, valid, comment) in checks {
                    if valid {
                        sql.push_str(&format!(
                            "\n    CONSTRAINT {} {def}",
                            super::quote_ident(&cname)
                        ));
                        inline_check_oids.push(coid);
                        check_comments.push((cname, comment));
                    } else {
                        post_checks.push((coid, cname, def, comment));
                    }
                }
                sql.push(';');
                ("DOMAIN", sql)
            }
        };
        let node = g.add(
            Node::new(Section::PreData, kind, &schema, &name)
                .statement(statement)
                .dep(Dep::Obj(ObjRef::new(class::PG_NAMESPACE, r.oid("nspoid")?))),
        );
        g.bind(ObjRef::new(class::PG_TYPE, oid), node);
        if typtype == "c" {
            g.bind(ObjRef::new(class::PG_CLASS, r.oid("typrelid")?), node);
        }
        if let Some(m) = r.opt("rngmultitypid")? {
            if let Ok(m) = m.parse::<u32>() {
                if m != 0 {
                    g.bind(ObjRef::new(class::PG_TYPE, m), node);
                }
            }
        }
        for coid in &inline_check_oids {
            g.bind(ObjRef::new(class::PG_CONSTRAINT, *coid), node);
        }
        let t = Target {
            node,
            section: Section::PreData,
            word: kind,
            grant_word: "TYPE",
            sql: qname.clone(),
            schema: schema.clone(),
            name: name.clone(),
            owner_table: None,
        };
        let acl: Option<Vec<AclRow>> = r.opt_json("acl")?;
        add_owner_and_acl(g, &t, &r.text("owner")?, acl.as_deref(), &[]);
        add_comment(g, &t, r.opt("comment")?.as_deref());
        for (cname, comment) in check_comments {
            let ct = Target {
                node,
                section: Section::PreData,
                word: "CONSTRAINT",
                grant_word: "CONSTRAINT",
                sql: format!("{} ON DOMAIN {qname}", super::quote_ident(&cname)),
                schema: schema.clone(),
                name: cname.clone(),
                owner_table: None,
            };
            add_comment(g, &ct, comment.as_deref());
        }
        for (coid, cname, def, comment) in post_checks {
            let cnode = g.add(
                Node::new(Section::PostData, "CONSTRAINT", &schema, &cname)
                    .statement(format!(
                        "ALTER DOMAIN {qname} ADD CONSTRAINT {} {def};",
                        super::quote_ident(&cname)
                    ))
                    .dep(Dep::Node(node)),
            );
            g.bind(ObjRef::new(class::PG_CONSTRAINT, coid), cnode);
            let ct = Target {
                node: cnode,
                section: Section::PostData,
                word: "CONSTRAINT",
                grant_word: "CONSTRAINT",
                sql: format!("{} ON DOMAIN {qname}", super::quote_ident(&cname)),
                schema: schema.clone(),
                name: cname,
                owner_table: None,
            };
            add_comment(g, &ct, comment.as_deref());
        }
    }
    Ok(())
}
