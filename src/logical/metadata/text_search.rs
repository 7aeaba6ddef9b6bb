//! Text search parsers, templates, dictionaries and configurations (with
//! their token mappings).

use super::acl::add_owner;
use super::comments::add_comment;
use super::deps::Dep;
use super::{class, not_extension_member, query, user_schema, Graph, Node, ObjRef, RowExt, Target};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

/// One text search object: its entry, owner and comment.
struct TsObject<'a> {
    kind: &'static str,
    word: &'static str,
    class: u32,
    schema: &'a str,
    name: &'a str,
    qname: &'a str,
    statement: String,
}

fn add(
    g: &mut Graph,
    o: TsObject,
    oid: u32,
    nspoid: u32,
    owner: Option<&str>,
    comment: Option<&str>,
) {
    let node = g.add(
        Node::new(Section::PreData, o.kind, o.schema, o.name)
            .statement(o.statement)
            .dep(Dep::Obj(ObjRef::new(class::PG_NAMESPACE, nspoid))),
    );
    g.bind(ObjRef::new(o.class, oid), node);
    let t = Target::of(
        node,
        Section::PreData,
        o.word,
        "",
        o.qname,
        o.schema,
        o.name,
    );
    if let Some(owner) = owner {
        add_owner(g, &t, owner);
    }
    add_comment(g, &t, comment);
}

fn regproc(col: &str) -> String {
    format!("CASE WHEN {col} <> 0 THEN {col}::pg_catalog.regproc::text END")
}

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let sql = format!(
        "SELECT p.oid, n.oid AS nspoid, n.nspname, p.prsname AS name, pg_catalog.format('%I.%I', n.nspname, p.prsname) AS qname, \
                {start} AS start, {token} AS gettoken, {end} AS end, {headline} AS headline, {lextypes} AS lextypes, \
                pg_catalog.obj_description(p.oid, 'pg_ts_parser') AS comment \
         FROM pg_catalog.pg_ts_parser p JOIN pg_catalog.pg_namespace n ON n.oid = p.prsnamespace \
         WHERE {user} AND {ext} ORDER BY n.nspname, p.prsname",
        start = regproc("p.prsstart"),
        token = regproc("p.prstoken"),
        end = regproc("p.prsend"),
        headline = regproc("p.prsheadline"),
        lextypes = regproc("p.prslextype"),
        user = user_schema("n"),
        ext = not_extension_member("pg_ts_parser", "p.oid"),
    );
    for r in query(conn, "text search parsers", &sql).await? {
        let mut opts = Vec::new();
        for (word, col) in [
            ("START", "start"),
            ("GETTOKEN", "gettoken"),
            ("END", "end"),
            ("HEADLINE", "headline"),
            ("LEXTYPES", "lextypes"),
        ] {
            if let Some(f) = r.opt(col)? {
                opts.push(format!("    {word} = {f}"));
            }
        }
        let (schema, name, qname) = (r.text("nspname")?, r.text("name")?, r.text("qname")?);
        let statement = format!(
            "CREATE TEXT SEARCH PARSER {qname} (\n{}\n);",
            opts.join(",\n")
        );
        add(
            g,
            TsObject {
                kind: "TEXT SEARCH PARSER",
                word: "TEXT SEARCH PARSER",
                class: class::PG_TS_PARSER,
                schema: &schema,
                name: &name,
                qname: &qname,
                statement,
            },
            r.oid("oid")?,
            r.oid("nspoid")?,
            None,
            r.opt("comment")?.as_deref(),
        );
    }

    let sql = format!(
        "SELECT t.oid, n.oid AS nspoid, n.nspname, t.tmplname AS name, pg_catalog.format('%I.%I', n.nspname, t.tmplname) AS qname, \
                {init} AS init, {lexize} AS lexize, \
                pg_catalog.obj_description(t.oid, 'pg_ts_template') AS comment \
         FROM pg_catalog.pg_ts_template t JOIN pg_catalog.pg_namespace n ON n.oid = t.tmplnamespace \
         WHERE {user} AND {ext} ORDER BY n.nspname, t.tmplname",
        init = regproc("t.tmplinit"),
        lexize = regproc("t.tmpllexize"),
        user = user_schema("n"),
        ext = not_extension_member("pg_ts_template", "t.oid"),
    );
    for r in query(conn, "text search templates", &sql).await? {
        let mut opts = Vec::new();
        for (word, col) in [("INIT", "init"), ("LEXIZE", "lexize")] {
            if let Some(f) = r.opt(col)? {
                opts.push(format!("    {word} = {f}"));
            }
        }
        let (schema, name, qname) = (r.text("nspname")?, r.text("name")?, r.text("qname")?);
        let statement = format!(
            "CREATE TEXT SEARCH TEMPLATE {qname} (\n{}\n);",
            opts.join(",\n")
        );
        add(
            g,
            TsObject {
                kind: "TEXT SEARCH TEMPLATE",
                word: "TEXT SEARCH TEMPLATE",
                class: class::PG_TS_TEMPLATE,
                schema: &schema,
                name: &name,
                qname: &qname,
                statement,
            },
            r.oid("oid")?,
            r.oid("nspoid")?,
            None,
            r.opt("comment")?.as_deref(),
        );
    }

    let sql = format!(
        "SELECT d.oid, n.oid AS nspoid, n.nspname, d.dictname AS name, pg_catalog.format('%I.%I', n.nspname, d.dictname) AS qname, \
                (SELECT pg_catalog.format('%I.%I', tn.nspname, t.tmplname) FROM pg_catalog.pg_ts_template t \
                  JOIN pg_catalog.pg_namespace tn ON tn.oid = t.tmplnamespace WHERE t.oid = d.dicttemplate) AS template, \
                d.dictinitoption, pg_catalog.pg_get_userbyid(d.dictowner) AS owner, \
                pg_catalog.obj_description(d.oid, 'pg_ts_dict') AS comment \
         FROM pg_catalog.pg_ts_dict d JOIN pg_catalog.pg_namespace n ON n.oid = d.dictnamespace \
         WHERE {user} AND {ext} ORDER BY n.nspname, d.dictname",
        user = user_schema("n"),
        ext = not_extension_member("pg_ts_dict", "d.oid"),
    );
    for r in query(conn, "text search dictionaries", &sql).await? {
        let (schema, name, qname) = (r.text("nspname")?, r.text("name")?, r.text("qname")?);
        let mut opts = vec![format!("    TEMPLATE = {}", r.text("template")?)];
        if let Some(o) = r.opt("dictinitoption")?.filter(|o| !o.is_empty()) {
            opts.push(format!("    {o}"));
        }
        let statement = format!(
            "CREATE TEXT SEARCH DICTIONARY {qname} (\n{}\n);",
            opts.join(",\n")
        );
        add(
            g,
            TsObject {
                kind: "TEXT SEARCH DICTIONARY",
                word: "TEXT SEARCH DICTIONARY",
                class: class::PG_TS_DICT,
                schema: &schema,
                name: &name,
                qname: &qname,
                statement,
            },
            r.oid("oid")?,
            r.oid("nspoid")?,
            Some(&r.text("owner")?),
            r.opt("comment")?.as_deref(),
        );
    }

    let sql = format!(
        "SELECT c.oid, n.oid AS nspoid, n.nspname, c.cfgname AS name, pg_catalog.format('%I.%I', n.nspname, c.cfgname) AS qname, \
                (SELECT pg_catalog.format('%I.%I', pn.nspname, p.prsname) FROM pg_catalog.pg_ts_parser p \
                  JOIN pg_catalog.pg_namespace pn ON pn.oid = p.prsnamespace WHERE p.oid = c.cfgparser) AS parser, \
                (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(m.token, m.dicts) ORDER BY m.tokid) FROM ( \
                    SELECT m.maptokentype AS tokid, \
                           (SELECT t.alias FROM pg_catalog.ts_token_type(c.cfgparser) t WHERE t.tokid = m.maptokentype) AS token, \
                           pg_catalog.string_agg(m.mapdict::pg_catalog.regdictionary::text, ', ' ORDER BY m.mapseqno) AS dicts \
                    FROM pg_catalog.pg_ts_config_map m WHERE m.mapcfg = c.oid GROUP BY m.maptokentype) m) AS mappings, \
                pg_catalog.pg_get_userbyid(c.cfgowner) AS owner, \
                pg_catalog.obj_description(c.oid, 'pg_ts_config') AS comment \
         FROM pg_catalog.pg_ts_config c JOIN pg_catalog.pg_namespace n ON n.oid = c.cfgnamespace \
         WHERE {user} AND {ext} ORDER BY n.nspname, c.cfgname",
        user = user_schema("n"),
        ext = not_extension_member("pg_ts_config", "c.oid"),
    );
    for r in query(conn, "text search configurations", &sql).await? {
        let (schema, name, qname) = (r.text("nspname")?, r.text("name")?, r.text("qname")?);
        let mut stmts = vec![format!(
            "CREATE TEXT SEARCH CONFIGURATION {qname} (\n    PARSER = {}\n);",
            r.text("parser")?
        )];
        let mappings: Vec<(String, String)> = r.opt_json("mappings")?.unwrap_or_default();
        for (token, dicts) in mappings {
            stmts.push(format!(
                "ALTER TEXT SEARCH CONFIGURATION {qname} ADD MAPPING FOR {} WITH {dicts};",
                super::quote_ident(&token)
            ));
        }
        add(
            g,
            TsObject {
                kind: "TEXT SEARCH CONFIGURATION",
                word: "TEXT SEARCH CONFIGURATION",
                class: class::PG_TS_CONFIG,
                schema: &schema,
                name: &name,
                qname: &qname,
                statement: stmts.join("\n"),
            },
            r.oid("oid")?,
            r.oid("nspoid")?,
            Some(&r.text("owner")?),
            r.opt("comment")?.as_deref(),
        );
    }
    Ok(())
}
