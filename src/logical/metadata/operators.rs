//! Operators, operator families (with their loose members, `ALTER
//! OPERATOR FAMILY ... ADD`) and operator classes (with their operators,
//! support functions and storage type), as pg_dump writes them: a family
//! is always created on its own and a class names its family.

use super::acl::add_owner;
use super::comments::add_comment;
use super::deps::Dep;
use super::{class, not_extension_member, query, user_schema, Graph, Node, ObjRef, RowExt, Target};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    collect_operators(conn, g).await?;
    collect_families(conn, g).await?;
    collect_classes(conn, g).await
}

/// SQL expression: `OPERATOR(schema.op)` for operator `oid`.
fn operator_ref_sql(oid: &str) -> String {
    format!(
        "(SELECT pg_catalog.format('OPERATOR(%I.%s)', xn.nspname, xo.oprname) \
          FROM pg_catalog.pg_operator xo JOIN pg_catalog.pg_namespace xn ON xn.oid = xo.oprnamespace \
          WHERE xo.oid = {oid})"
    )
}

async fn collect_operators(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let sql = format!(
        "SELECT o.oid, n.nspname, o.oprname, n.oid AS nspoid, pg_catalog.format('%I.%s', n.nspname, o.oprname) AS qname, \
                CASE WHEN o.oprleft <> 0 THEN pg_catalog.format_type(o.oprleft, NULL) END AS lt, \
                CASE WHEN o.oprright <> 0 THEN pg_catalog.format_type(o.oprright, NULL) END AS rt, \
                o.oprcode::pg_catalog.regproc::text AS func, \
                CASE WHEN o.oprcom <> 0 THEN {com} END AS commutator, \
                CASE WHEN o.oprnegate <> 0 THEN {neg} END AS negator, \
                CASE WHEN o.oprrest <> 0 THEN o.oprrest::pg_catalog.regproc::text END AS restrict, \
                CASE WHEN o.oprjoin <> 0 THEN o.oprjoin::pg_catalog.regproc::text END AS join, \
                o.oprcanmerge, o.oprcanhash, \
                pg_catalog.pg_get_userbyid(o.oprowner) AS owner, \
                pg_catalog.obj_description(o.oid, 'pg_operator') AS comment \
         FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace \
         WHERE o.oprcode <> 0 AND {user} AND {ext} \
         ORDER BY n.nspname, o.oprname, lt, rt",
        com = operator_ref_sql("o.oprcom"),
        neg = operator_ref_sql("o.oprnegate"),
        user = user_schema("n"),
        ext = not_extension_member("pg_operator", "o.oid"),
    );
    for r in query(conn, "operators", &sql).await? {
        let schema = r.text("nspname")?;
        let qname = r.text("qname")?;
        let lt = r.opt("lt")?;
        let rt = r.opt("rt")?;
        let mut opts = vec![format!("    FUNCTION = {}", r.text("func")?)];
        if let Some(t) = &lt {
            opts.push(format!("    LEFTARG = {t}"));
        }
        if let Some(t) = &rt {
            opts.push(format!("    RIGHTARG = {t}"));
        }
        for (word, col) in [("COMMUTATOR", "commutator"), ("NEGATOR", "negator")] {
            if let Some(o) = r.opt(col)? {
                opts.push(format!("    {word} = {o}"));
            }
        }
        for (word, col) in [("RESTRICT", "restrict"), ("JOIN", "join")] {
            if let Some(f) = r.opt(col)? {
                opts.push(format!("    {word} = {f}"));
            }
        }
        if r.flag("oprcanmerge")? {
            opts.push("    MERGES".into());
        }
        if r.flag("oprcanhash")? {
            opts.push("    HASHES".into());
        }
        let args = format!(
            "({}, {})",
            lt.as_deref().unwrap_or("NONE"),
            rt.as_deref().unwrap_or("NONE")
        );
        let name = format!("{}{args}", r.text("oprname")?);
        let node = g.add(
            Node::new(Section::PreData, "OPERATOR", &schema, &name)
                .statement(format!(
                    "CREATE OPERATOR {qname} (\n{}\n);",
                    opts.join(",\n")
                ))
                .dep(Dep::Obj(ObjRef::new(class::PG_NAMESPACE, r.oid("nspoid")?))),
        );
        g.bind(ObjRef::new(class::PG_OPERATOR, r.oid("oid")?), node);
        let t = Target::of(
            node,
            Section::PreData,
            "OPERATOR",
            "",
            &format!("{qname} {args}"),
            &schema,
            &name,
        );
        add_owner(g, &t, &r.text("owner")?);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}

/// SQL expressions: the operators and functions of an opclass or family
/// (`dep_class` its catalog, `deptype` how members depend on it), as JSON
/// `[[oid, strategy, regoperator, sort family or null]]` and `[[oid,
/// number, left type, right type, regprocedure]]`.
fn members_sql(dep_class: &str, owner_oid: &str, deptype: &str) -> (String, String) {
    let ops = format!(
        "(SELECT pg_catalog.json_agg(pg_catalog.json_build_array(ao.oid::int8, ao.amopstrategy, \
                 ao.amopopr::pg_catalog.regoperator::text, \
                 CASE WHEN ao.amoppurpose = 'o' THEN (SELECT pg_catalog.format('%I.%I', sn.nspname, sf.opfname) \
                     FROM pg_catalog.pg_opfamily sf JOIN pg_catalog.pg_namespace sn ON sn.oid = sf.opfnamespace \
                     WHERE sf.oid = ao.amopsortfamily) END) ORDER BY ao.amopstrategy, ao.oid) \
          FROM pg_catalog.pg_amop ao JOIN pg_catalog.pg_depend d \
            ON d.classid = 'pg_catalog.pg_amop'::pg_catalog.regclass AND d.objid = ao.oid \
           AND d.refclassid = 'pg_catalog.{dep_class}'::pg_catalog.regclass AND d.refobjid = {owner_oid} \
           AND d.deptype = '{deptype}')"
    );
    let procs = format!(
        "(SELECT pg_catalog.json_agg(pg_catalog.json_build_array(ap.oid::int8, ap.amprocnum, \
                 pg_catalog.format_type(ap.amproclefttype, NULL), pg_catalog.format_type(ap.amprocrighttype, NULL), \
                 ap.amproc::pg_catalog.regprocedure::text) ORDER BY ap.amprocnum, ap.oid) \
          FROM pg_catalog.pg_amproc ap JOIN pg_catalog.pg_depend d \
            ON d.classid = 'pg_catalog.pg_amproc'::pg_catalog.regclass AND d.objid = ap.oid \
           AND d.refclassid = 'pg_catalog.{dep_class}'::pg_catalog.regclass AND d.refobjid = {owner_oid} \
           AND d.deptype = '{deptype}')"
    );
    (ops, procs)
}

type OpMember = (u32, i32, String, Option<String>);
type ProcMember = (u32, i32, String, String, String);

/// `OPERATOR n op(l,r) [FOR ORDER BY f]` and `FUNCTION n (l, r) f(args)`
/// items; binds each member to `node`.
fn member_items(g: &mut Graph, node: usize, ops: &[OpMember], procs: &[ProcMember]) -> Vec<String> {
    let mut items = Vec::new();
    for (oid, n, op, sortfam) in ops {
        g.bind(ObjRef::new(class::PG_AMOP, *oid), node);
        match sortfam {
            Some(f) => items.push(format!("    OPERATOR {n} {op} FOR ORDER BY {f}")),
            None => items.push(format!("    OPERATOR {n} {op}")),
        }
    }
    for (oid, n, lt, rt, f) in procs {
        g.bind(ObjRef::new(class::PG_AMPROC, *oid), node);
        items.push(format!("    FUNCTION {n} ({lt}, {rt}) {f}"));
    }
    items
}

async fn collect_families(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let (ops, procs) = members_sql("pg_opfamily", "f.oid", "a");
    let sql = format!(
        "SELECT f.oid, n.nspname, f.opfname, n.oid AS nspoid, pg_catalog.format('%I.%I', n.nspname, f.opfname) AS qname, \
                pg_catalog.quote_ident(am.amname) AS am, \
                pg_catalog.pg_get_userbyid(f.opfowner) AS owner, \
                pg_catalog.obj_description(f.oid, 'pg_opfamily') AS comment, \
                {ops} AS ops, {procs} AS procs \
         FROM pg_catalog.pg_opfamily f JOIN pg_catalog.pg_namespace n ON n.oid = f.opfnamespace \
         JOIN pg_catalog.pg_am am ON am.oid = f.opfmethod \
         WHERE {user} AND {ext} \
         ORDER BY n.nspname, f.opfname, am.amname",
        user = user_schema("n"),
        ext = not_extension_member("pg_opfamily", "f.oid"),
    );
    for r in query(conn, "operator families", &sql).await? {
        let schema = r.text("nspname")?;
        let qname = r.text("qname")?;
        let am = r.text("am")?;
        let on = format!("{qname} USING {am}");
        let name = format!("{} USING {am}", r.text("opfname")?);
        let node = g.add(
            Node::new(Section::PreData, "OPERATOR FAMILY", &schema, &name)
                .dep(Dep::Obj(ObjRef::new(class::PG_NAMESPACE, r.oid("nspoid")?))),
        );
        g.bind(ObjRef::new(class::PG_OPFAMILY, r.oid("oid")?), node);
        let ops: Vec<OpMember> = r.opt_json("ops")?.unwrap_or_default();
        let procs: Vec<ProcMember> = r.opt_json("procs")?.unwrap_or_default();
        let items = member_items(g, node, &ops, &procs);
        let mut sql = format!("CREATE OPERATOR FAMILY {on};");
        if !items.is_empty() {
            sql.push_str(&format!(
                "\nALTER OPERATOR FAMILY {on} ADD\n{};",
                items.join(",\n")
            ));
        }
        g.nodes[node].statement = sql;
        let t = Target::of(
            node,
            Section::PreData,
            "OPERATOR FAMILY",
            "",
            &on,
            &schema,
            &name,
        );
        add_owner(g, &t, &r.text("owner")?);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}

async fn collect_classes(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let (ops, procs) = members_sql("pg_opclass", "c.oid", "i");
    let sql = format!(
        "SELECT c.oid, n.nspname, c.opcname, n.oid AS nspoid, pg_catalog.format('%I.%I', n.nspname, c.opcname) AS qname, \
                pg_catalog.quote_ident(am.amname) AS am, c.opcdefault, \
                pg_catalog.format_type(c.opcintype, NULL) AS intype, \
                CASE WHEN c.opckeytype <> 0 THEN pg_catalog.format_type(c.opckeytype, NULL) END AS keytype, \
                (SELECT pg_catalog.format('%I.%I', fn.nspname, f.opfname) FROM pg_catalog.pg_opfamily f \
                  JOIN pg_catalog.pg_namespace fn ON fn.oid = f.opfnamespace WHERE f.oid = c.opcfamily) AS family, \
                c.opcfamily, \
                pg_catalog.pg_get_userbyid(c.opcowner) AS owner, \
                pg_catalog.obj_description(c.oid, 'pg_opclass') AS comment, \
                {ops} AS ops, {procs} AS procs \
         FROM pg_catalog.pg_opclass c JOIN pg_catalog.pg_namespace n ON n.oid = c.opcnamespace \
         JOIN pg_catalog.pg_am am ON am.oid = c.opcmethod \
         WHERE {user} AND {ext} \
         ORDER BY n.nspname, c.opcname, am.amname",
        user = user_schema("n"),
        ext = not_extension_member("pg_opclass", "c.oid"),
    );
    for r in query(conn, "operator classes", &sql).await? {
        let schema = r.text("nspname")?;
        let qname = r.text("qname")?;
        let am = r.text("am")?;
        let on = format!("{qname} USING {am}");
        let name = format!("{} USING {am}", r.text("opcname")?);
        let node = g.add(
            Node::new(Section::PreData, "OPERATOR CLASS", &schema, &name)
                .dep(Dep::Obj(ObjRef::new(class::PG_NAMESPACE, r.oid("nspoid")?)))
                .dep(Dep::Obj(ObjRef::new(
                    class::PG_OPFAMILY,
                    r.oid("opcfamily")?,
                ))),
        );
        g.bind(ObjRef::new(class::PG_OPCLASS, r.oid("oid")?), node);
        let ops: Vec<OpMember> = r.opt_json("ops")?.unwrap_or_default();
        let procs: Vec<ProcMember> = r.opt_json("procs")?.unwrap_or_default();
        let mut items = member_items(g, node, &ops, &procs);
        let intype = r.text("intype")?;
        match r.opt("keytype")? {
            Some(k) if k != intype => items.push(format!("    STORAGE {k}")),
            _ if items.is_empty() => items.push(format!("    STORAGE {intype}")),
            _ => {}
        }
        let family = r
            .opt("family")?
            .map(|f| format!(" FAMILY {f}"))
            .unwrap_or_default();
        g.nodes[node].statement = format!(
            "CREATE OPERATOR CLASS {qname}\n    {}FOR TYPE {intype} USING {am}{family} AS\n{};",
            if r.flag("opcdefault")? {
                "DEFAULT "
            } else {
                ""
            },
            items.join(",\n")
        );
        let t = Target::of(
            node,
            Section::PreData,
            "OPERATOR CLASS",
            "",
            &on,
            &schema,
            &name,
        );
        add_owner(g, &t, &r.text("owner")?);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}
