//! Functions and procedures (`pg_get_functiondef`, `CREATE OR REPLACE`)
//! and aggregates (built from `pg_aggregate`).

use super::acl::{add_owner_and_acl, AclRow};
use super::comments::add_comment;
use super::deps::Dep;
use super::{
    acl_json, class, not_extension_member, query, quote_literal, user_schema, Graph, Node, ObjRef,
    RowExt, Target,
};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::{PgConn, Row};

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let sql = format!(
        "SELECT p.oid, n.nspname, p.proname, p.prokind::text AS prokind, n.oid AS nspoid, \
                pg_catalog.format('%I.%I', n.nspname, p.proname) AS qname, \
                pg_catalog.pg_get_function_identity_arguments(p.oid) AS args, \
                pg_catalog.pg_get_userbyid(p.proowner) AS owner, {acl} AS acl, \
                pg_catalog.obj_description(p.oid, 'pg_proc') AS comment, \
                CASE WHEN p.prokind <> 'a' THEN pg_catalog.pg_get_functiondef(p.oid) END AS def, \
                pg_catalog.pg_get_function_arguments(p.oid) AS agg_args, \
                a.aggkind::text AS aggkind, \
                a.aggtransfn::pg_catalog.regproc::text AS sfunc, \
                pg_catalog.format_type(a.aggtranstype, NULL) AS stype, a.aggtransspace AS sspace, \
                CASE WHEN a.aggfinalfn <> 0 THEN a.aggfinalfn::pg_catalog.regproc::text END AS finalfunc, \
                a.aggfinalextra AS finalextra, a.aggfinalmodify::text AS finalmodify, \
                CASE WHEN a.aggcombinefn <> 0 THEN a.aggcombinefn::pg_catalog.regproc::text END AS combinefunc, \
                CASE WHEN a.aggserialfn <> 0 THEN a.aggserialfn::pg_catalog.regproc::text END AS serialfunc, \
                CASE WHEN a.aggdeserialfn <> 0 THEN a.aggdeserialfn::pg_catalog.regproc::text END AS deserialfunc, \
                a.agginitval AS initcond, \
                CASE WHEN a.aggmtransfn <> 0 THEN a.aggmtransfn::pg_catalog.regproc::text END AS msfunc, \
                CASE WHEN a.aggminvtransfn <> 0 THEN a.aggminvtransfn::pg_catalog.regproc::text END AS minvfunc, \
                CASE WHEN a.aggmtranstype <> 0 THEN pg_catalog.format_type(a.aggmtranstype, NULL) END AS mstype, \
                a.aggmtransspace AS msspace, \
                CASE WHEN a.aggmfinalfn <> 0 THEN a.aggmfinalfn::pg_catalog.regproc::text END AS mfinalfunc, \
                a.aggmfinalextra AS mfinalextra, a.aggmfinalmodify::text AS mfinalmodify, \
                a.aggminitval AS minitcond, \
                CASE WHEN a.aggsortop <> 0 THEN a.aggsortop::pg_catalog.regoper::text END AS sortop, \
                p.proparallel::text AS parallel \
         FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         LEFT JOIN pg_catalog.pg_aggregate a ON a.aggfnoid = p.oid \
         WHERE {user} AND {ext} \
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend i \
                WHERE i.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND i.objid = p.oid AND i.deptype = 'i') \
         ORDER BY n.nspname, p.proname, args",
        acl = acl_json("p.proacl"),
        user = user_schema("n"),
        ext = not_extension_member("pg_proc", "p.oid"),
    );
    for r in query(conn, "functions", &sql).await? {
        let schema = r.text("nspname")?;
        let proname = r.text("proname")?;
        let prokind = r.text("prokind")?;
        let mut args = r.text("args")?;
        // A zero-argument aggregate is `name(*)` in every statement.
        if prokind == "a" && args.is_empty() {
            args = "*".into();
        }
        let qname = r.text("qname")?;
        let (kind, word, grant_word) = match prokind.as_str() {
            "p" => ("PROCEDURE", "PROCEDURE", "PROCEDURE"),
            "a" => ("AGGREGATE", "AGGREGATE", "FUNCTION"),
            _ => ("FUNCTION", "FUNCTION", "FUNCTION"),
        };
        let statement = if prokind == "a" {
            aggregate_sql(&r, &qname)?
        } else {
            format!("{};", r.text("def")?.trim_end())
        };
        let name = format!("{proname}({args})");
        let node = g.add(
            Node::new(Section::PreData, kind, &schema, &name)
                .statement(statement)
                .dep(Dep::Obj(ObjRef::new(class::PG_NAMESPACE, r.oid("nspoid")?))),
        );
        g.bind(ObjRef::new(class::PG_PROC, r.oid("oid")?), node);
        let t = Target {
            node,
            section: Section::PreData,
            word,
            grant_word,
            sql: format!("{qname}({args})"),
            schema,
            name,
            owner_table: None,
        };
        let acl: Option<Vec<AclRow>> = r.opt_json("acl")?;
        add_owner_and_acl(g, &t, &r.text("owner")?, acl.as_deref(), &[]);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}

fn modify_word(code: &str) -> &'static str {
    match code {
        "s" => "SHAREABLE",
        "w" => "READ_WRITE",
        _ => "READ_ONLY",
    }
}

/// A sort operator for `SORTOP =`: schema-qualified ones need OPERATOR().
fn operator_sql(op: &str) -> String {
    if op.contains('.') {
        format!("OPERATOR({op})")
    } else {
        op.to_string()
    }
}

fn aggregate_sql(r: &Row, qname: &str) -> Result<String> {
    let mut args = r.text("agg_args")?;
    if args.is_empty() {
        args = "*".into();
    }
    let mut opts = vec![
        format!("SFUNC = {}", r.text("sfunc")?),
        format!("STYPE = {}", r.text("stype")?),
    ];
    if r.int("sspace")? > 0 {
        opts.push(format!("SSPACE = {}", r.text("sspace")?));
    }
    if let Some(f) = r.opt("finalfunc")? {
        opts.push(format!("FINALFUNC = {f}"));
        if r.flag("finalextra")? {
            opts.push("FINALFUNC_EXTRA".into());
        }
        opts.push(format!(
            "FINALFUNC_MODIFY = {}",
            modify_word(&r.text("finalmodify")?)
        ));
    }
    for (col, word) in [
        ("combinefunc", "COMBINEFUNC"),
        ("serialfunc", "SERIALFUNC"),
        ("deserialfunc", "DESERIALFUNC"),
    ] {
        if let Some(f) = r.opt(col)? {
            opts.push(format!("{word} = {f}"));
        }
    }
    if let Some(init) = r.opt("initcond")? {
        opts.push(format!("INITCOND = {}", quote_literal(&init)));
    }
    if let Some(f) = r.opt("msfunc")? {
        opts.push(format!("MSFUNC = {f}"));
        if let Some(f) = r.opt("minvfunc")? {
            opts.push(format!("MINVFUNC = {f}"));
        }
        if let Some(t) = r.opt("mstype")? {
            opts.push(format!("MSTYPE = {t}"));
        }
        if r.int("msspace")? > 0 {
            opts.push(format!("MSSPACE = {}", r.text("msspace")?));
        }
        if let Some(f) = r.opt("mfinalfunc")? {
            opts.push(format!("MFINALFUNC = {f}"));
            if r.flag("mfinalextra")? {
                opts.push("MFINALFUNC_EXTRA".into());
            }
            opts.push(format!(
                "MFINALFUNC_MODIFY = {}",
                modify_word(&r.text("mfinalmodify")?)
            ));
        }
        if let Some(init) = r.opt("minitcond")? {
            opts.push(format!("MINITCOND = {}", quote_literal(&init)));
        }
    }
    if let Some(op) = r.opt("sortop")? {
        opts.push(format!("SORTOP = {}", operator_sql(&op)));
    }
    match r.text("parallel")?.as_str() {
        "s" => opts.push("PARALLEL = SAFE".into()),
        "r" => opts.push("PARALLEL = RESTRICTED".into()),
        _ => {}
    }
    if r.opt("aggkind")?.as_deref() == Some("h") {
        opts.push("HYPOTHETICAL".into());
    }
    let opts: Vec<String> = opts.into_iter().map(|o| format!("    {o}")).collect();
    Ok(format!(
        "CREATE AGGREGATE {qname}({args}) (\n{}\n);",
        opts.join(",\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_operators() {
        assert_eq!(operator_sql(">"), ">");
        assert_eq!(operator_sql("s.>"), "OPERATOR(s.>)");
        assert_eq!(modify_word("w"), "READ_WRITE");
    }
}
