//! Tables: columns with types, collations, defaults, NOT NULL, generated
//! and identity columns; validated CHECK constraints; INHERITS, OF type,
//! PARTITION BY; storage parameters, column storage/statistics/options/
//! compression, access method, tablespace, UNLOGGED, replica identity.
//!
//! As pg_dump does, a partition is created as a table of its own with all
//! its columns and CHECK constraints, then attached by a separate `TABLE
//! ATTACH` entry (so a partition restores on its own too, and keeps its
//! own column order). Row security switches on in post-data, after the
//! data is loaded.

use std::collections::HashMap;

use serde::Deserialize;

use crate::pg::conn::Row;

use super::acl::{add_acl, add_owner, AclRow};
use super::comments::add_comments;
use super::deps::Dep;
use super::greenplum::TableExtras;
use super::types::collation_name_sql;
use super::{
    acl_json, class, not_extension_member, query, quote_ident, reloptions_sql, user_schema, Graph,
    Node, ObjRef, RowExt, Target,
};
use crate::error::Result;
use crate::logical::toc::{QualifiedName, Section};
use crate::pg::conn::PgConn;

/// A relation other collectors attach entries to.
#[derive(Debug, Clone)]
pub(crate) struct TableRef {
    pub name: QualifiedName,
    /// Quoted, schema-qualified.
    pub sql: String,
    /// 'r', 'p', 'v', 'm'.
    pub relkind: char,
    pub node: usize,
    pub owner_node: usize,
}

/// Relations by OID.
pub(crate) type Tables = HashMap<u32, TableRef>;

/// A column, from [`read_columns`].
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Column {
    pub attnum: i32,
    pub name: String,
    /// Quoted.
    pub qname: String,
    #[serde(rename = "type")]
    pub type_sql: String,
    pub notnull: bool,
    pub identity: String,
    pub generated: String,
    pub islocal: bool,
    pub default_oid: Option<u32>,
    pub default: Option<String>,
    /// The default calls a function of the database (which may itself
    /// read the table): set by a separate entry, after the function.
    #[serde(default)]
    pub default_calls_function: bool,
    pub collation: Option<String>,
    pub storage: Option<String>,
    pub stattarget: i32,
    pub options: Option<Vec<String>>,
    pub compression: Option<String>,
    pub comment: Option<String>,
    pub acl: Option<Vec<AclRow>>,
    /// A foreign table's column options (`k=v`).
    #[serde(default)]
    pub fdw_options: Option<Vec<String>>,
    /// Greenplum/Cloudberry: ` ENCODING (...)` of a column-oriented
    /// table's column (set from [`TableExtras`], not read here).
    #[serde(default)]
    pub encoding: Option<String>,
}

/// Columns (not dropped) of the user relations of kinds `relkinds`
/// (e.g. `'r', 'p'`), by relation OID, in column order.
pub(crate) async fn read_columns(
    conn: &mut PgConn,
    relkinds: &str,
) -> Result<HashMap<u32, Vec<Column>>> {
    let sql = format!(
        "SELECT a.attrelid, pg_catalog.json_build_object( \
                'attnum', a.attnum, 'name', a.attname, 'qname', pg_catalog.quote_ident(a.attname), \
                'type', pg_catalog.format_type(a.atttypid, a.atttypmod), 'notnull', a.attnotnull, \
                'identity', a.attidentity::text, 'generated', a.attgenerated::text, \
                'islocal', a.attislocal, 'default_oid', d.oid::int8, \
                'default', pg_catalog.pg_get_expr(d.adbin, d.adrelid), \
                'default_calls_function', EXISTS (SELECT 1 FROM pg_catalog.pg_depend dd \
                    WHERE dd.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND dd.objid = d.oid \
                      AND dd.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND dd.refobjid >= 16384), \
                'collation', CASE WHEN a.attcollation <> t.typcollation THEN {coll} END, \
                'storage', CASE WHEN a.attstorage <> t.typstorage THEN a.attstorage::text END, \
                'stattarget', a.attstattarget, 'options', pg_catalog.array_to_json(a.attoptions), \
                'compression', {compression}, \
                'comment', pg_catalog.col_description(a.attrelid, a.attnum), \
                'acl', {acl}, 'fdw_options', pg_catalog.array_to_json(a.attfdwoptions)) AS col \
         FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
         LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE c.relkind IN ({relkinds}) AND a.attnum > 0 AND NOT a.attisdropped \
           AND {user} AND {ext} \
         ORDER BY a.attrelid, a.attnum",
        coll = collation_name_sql("a.attcollation"),
        acl = acl_json("a.attacl"),
        user = user_schema("n"),
        ext = not_extension_member("pg_class", "c.oid"),
        // Column compression is 14's.
        compression = super::since(
            conn,
            140000,
            "nullif(a.attcompression::text, '')",
            "NULL::text"
        ),
    );
    let mut out: HashMap<u32, Vec<Column>> = HashMap::new();
    for r in query(conn, "columns", &sql).await? {
        out.entry(r.oid("attrelid")?)
            .or_default()
            .push(r.json("col")?);
    }
    Ok(out)
}

/// `ALTER TABLE ONLY t ALTER COLUMN c SET ...` for a column's statistics
/// target, storage, options and compression. `prefix` is `ALTER TABLE
/// ONLY zoo.t` or `ALTER MATERIALIZED VIEW zoo.m`.
pub(crate) fn column_settings(prefix: &str, col: &Column, out: &mut Vec<String>) {
    let c = &col.qname;
    if col.stattarget >= 0 {
        out.push(format!(
            "{prefix} ALTER COLUMN {c} SET STATISTICS {};",
            col.stattarget
        ));
    }
    if let Some(s) = &col.storage {
        let word = match s.as_str() {
            "p" => "PLAIN",
            "e" => "EXTERNAL",
            "m" => "MAIN",
            _ => "EXTENDED",
        };
        out.push(format!("{prefix} ALTER COLUMN {c} SET STORAGE {word};"));
    }
    if let Some(opts) = col.options.as_ref().filter(|o| !o.is_empty()) {
        out.push(format!(
            "{prefix} ALTER COLUMN {c} SET ({});",
            reloptions_sql(opts, "")
        ));
    }
    if let Some(m) = &col.compression {
        let word = match m.as_str() {
            "p" => "pglz",
            "l" => "lz4",
            other => other,
        };
        out.push(format!("{prefix} ALTER COLUMN {c} SET COMPRESSION {word};"));
    }
}

/// (quoted column, comment) for the columns that have one.
pub(crate) fn column_comments(cols: &[Column]) -> Vec<(String, String)> {
    cols.iter()
        .filter_map(|c| c.comment.clone().map(|t| (c.qname.clone(), t)))
        .collect()
}

/// (quoted column, ACL items) for the columns with grants.
pub(crate) fn column_acls(cols: &[Column]) -> Vec<(String, Vec<AclRow>)> {
    cols.iter()
        .filter_map(|c| {
            c.acl
                .clone()
                .filter(|a| !a.is_empty())
                .map(|a| (c.qname.clone(), a))
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
struct Check {
    oid: u32,
    name: String,
    def: String,
    validated: bool,
    islocal: bool,
    comment: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Identity {
    attnum: i32,
    seqname: String,
    start: String,
    increment: String,
    min: String,
    max: String,
    cache: String,
    cycle: bool,
    /// The sequence's own persistence ('p' or 'u'), which may differ from
    /// its table's.
    persistence: String,
}

/// The column lines of a CREATE TABLE, and what goes after it.
struct ColumnLines<'a> {
    lines: Vec<String>,
    /// ALTER TABLE statements run right after the CREATE.
    after: Vec<String>,
    /// Defaults that call functions: set once those exist.
    separate_defaults: Vec<(&'a Column, String)>,
}

/// Columns printed in CREATE TABLE (all of a partition's, the local ones
/// otherwise; a typed table lists only columns with options), and the
/// differences of inherited columns from what the parents give.
fn column_lines<'a>(
    cols: &'a [Column],
    parents: &[u32],
    columns: &HashMap<u32, Vec<Column>>,
    typed: bool,
    is_partition: bool,
    only: &str,
) -> ColumnLines<'a> {
    let mut lines = Vec::new();
    let mut after = Vec::new();
    let mut separate_defaults: Vec<(&Column, String)> = Vec::new();
    for col in cols {
        let printed = if typed {
            col.default.is_some() || col.notnull
        } else {
            is_partition || col.islocal
        };
        if printed {
            let mut line = if typed {
                format!("    {} WITH OPTIONS", col.qname)
            } else {
                format!("    {} {}", col.qname, col.type_sql)
            };
            if let Some(opts) = col.fdw_options.as_ref().filter(|o| !o.is_empty()) {
                line.push_str(&super::options_clause(opts));
            }
            if let Some(c) = &col.collation {
                if !typed {
                    line.push_str(&format!(" COLLATE {c}"));
                }
            }
            // A child of a generated parent column inherits its
            // expression: PostgreSQL refuses one written again.
            let parent_generated = !is_partition
                && parents
                    .iter()
                    .filter_map(|p| columns.get(p))
                    .filter_map(|pc| pc.iter().find(|c| c.name == col.name))
                    .any(|pc| !pc.generated.is_empty());
            match (&col.default, col.generated.as_str()) {
                (Some(_), "s") if parent_generated => {}
                (Some(expr), "s") => {
                    line.push_str(&format!(" GENERATED ALWAYS AS ({expr}) STORED"))
                }
                (Some(expr), _) if col.default_calls_function => {
                    separate_defaults.push((col, expr.clone()));
                }
                (Some(expr), _) => line.push_str(&format!(" DEFAULT {expr}")),
                _ => {}
            }
            if col.notnull {
                line.push_str(" NOT NULL");
            }
            if let Some(e) = &col.encoding {
                line.push_str(e);
            }
            lines.push(line);
        } else if !typed {
            // Inherited column: differences from what the parents give.
            let parent_cols = parents
                .iter()
                .filter_map(|p| columns.get(p))
                .filter_map(|pc| pc.iter().find(|c| c.name == col.name));
            let mut parent_default = None;
            let mut parent_notnull = false;
            for pc in parent_cols {
                if parent_default.is_none() {
                    parent_default = pc.default.clone();
                }
                parent_notnull |= pc.notnull;
            }
            if col.generated.is_empty() && col.default != parent_default {
                match &col.default {
                    Some(expr) if col.default_calls_function => {
                        separate_defaults.push((col, expr.clone()))
                    }
                    Some(expr) => after.push(format!(
                        "{only} ALTER COLUMN {} SET DEFAULT {expr};",
                        col.qname
                    )),
                    None => after.push(format!("{only} ALTER COLUMN {} DROP DEFAULT;", col.qname)),
                }
            }
            if col.notnull && !parent_notnull {
                after.push(format!("{only} ALTER COLUMN {} SET NOT NULL;", col.qname));
            } else if !col.notnull && parent_notnull {
                after.push(format!("{only} ALTER COLUMN {} DROP NOT NULL;", col.qname));
            }
        }
        column_settings(only, col, &mut after);
    }
    ColumnLines {
        lines,
        after,
        separate_defaults,
    }
}

/// The CREATE TABLE statement and the table's tablespace (`gp`: the
/// Greenplum/Cloudberry parts of the tables, on those servers).
#[allow(clippy::too_many_arguments)]
fn create_table_sql(
    r: &Row,
    qn: &str,
    oftype: Option<&str>,
    lines: &[String],
    parents: &[u32],
    names: &HashMap<u32, (QualifiedName, String)>,
    is_partition: bool,
    gp: Option<&TableExtras>,
) -> Result<(String, Option<String>)> {
    let oid = r.oid("oid")?;
    let mut sql = String::from("CREATE ");
    let foreign = r.text("relkind")? == "f";
    if r.text("persistence")? == "u" {
        sql.push_str("UNLOGGED ");
    }
    if foreign {
        sql.push_str("FOREIGN ");
    }
    sql.push_str(&format!("TABLE {qn}"));
    if let Some(t) = oftype {
        sql.push_str(&format!(" OF {t}"));
    }
    if lines.is_empty() {
        sql.push_str(if oftype.is_some() { "" } else { " (\n)" });
    } else {
        sql.push_str(&format!(" (\n{}\n)", lines.join(",\n")));
    }
    let mut inherit_names = Vec::new();
    if !is_partition && !parents.is_empty() {
        for p in parents {
            if let Some((_, pq)) = names.get(p) {
                inherit_names.push(pq.clone());
            }
        }
        if !inherit_names.is_empty() {
            sql.push_str(&format!("\nINHERITS ({})", inherit_names.join(", ")));
        }
    }
    if let Some(k) = r.opt("partkey")? {
        sql.push_str(&format!("\nPARTITION BY {k}"));
    }
    if let Some(server) = r.opt("server")? {
        sql.push_str(&format!("\nSERVER {server}"));
        let options: Vec<String> = r.opt_json("ftoptions")?.unwrap_or_default();
        sql.push_str(&super::options_clause(&options));
    }
    if let Some(am) = r.opt("amname")? {
        if am != "heap" {
            sql.push_str(&format!("\nUSING {}", quote_ident(&am)));
        }
    }
    let mut with = Vec::new();
    let mut reloptions: Vec<String> = r.opt_json("reloptions")?.unwrap_or_default();
    if let Some(gp) = gp {
        reloptions = gp.storage_options(oid, &reloptions);
    }
    if !reloptions.is_empty() {
        with.push(reloptions_sql(&reloptions, ""));
    }
    let toast: Vec<String> = r.opt_json("toast_options")?.unwrap_or_default();
    if !toast.is_empty() {
        with.push(reloptions_sql(&toast, "toast."));
    }
    if !with.is_empty() {
        sql.push_str(&format!("\nWITH ({})", with.join(", ")));
    }
    let tablespace = r.opt("spcname")?;
    if let Some(ts) = &tablespace {
        sql.push_str(&format!("\nTABLESPACE {}", quote_ident(ts)));
    }
    if let Some(d) = gp
        .filter(|_| !foreign)
        .and_then(|gp| gp.distributed_by(oid))
    {
        sql.push_str(&format!("\n{d}"));
    }
    sql.push(';');
    Ok((sql, tablespace))
}

/// ALTER TABLE ... ADD GENERATED ... AS IDENTITY for each identity column
/// (with LOGGED or UNLOGGED when the sequence's persistence is not the
/// table's, `table_persistence`).
fn identity_statements(
    qn: &str,
    cols: &[Column],
    identities: &[Identity],
    table_persistence: &str,
) -> Vec<String> {
    let mut stmts = Vec::new();
    for id in identities {
        let Some(col) = cols.iter().find(|c| c.attnum == id.attnum) else {
            continue;
        };
        let how = if col.identity == "a" {
            "ALWAYS"
        } else {
            "BY DEFAULT"
        };
        let persistence = match id.persistence.as_str() {
            p if p == table_persistence => "",
            "u" => "\n    UNLOGGED",
            _ => "\n    LOGGED",
        };
        stmts.push(format!(
            "ALTER TABLE {qn} ALTER COLUMN {} ADD GENERATED {how} AS IDENTITY (\n    SEQUENCE NAME {}{persistence}\n    \
             START WITH {}\n    INCREMENT BY {}\n    MINVALUE {}\n    MAXVALUE {}\n    CACHE {}{}\n);",
            col.qname,
            id.seqname,
            id.start,
            id.increment,
            id.min,
            id.max,
            id.cache,
            if id.cycle { "\n    CYCLE" } else { "" }
        ));
    }
    stmts
}

/// Tables; `gp`: their Greenplum/Cloudberry parts, on those servers
/// (distribution, append-optimized storage, column encodings, external
/// tables).
pub(crate) async fn collect(
    conn: &mut PgConn,
    g: &mut Graph,
    gp: Option<&TableExtras>,
) -> Result<Tables> {
    let sql = format!(
        "SELECT c.oid, n.nspname, c.relname, pg_catalog.format('%I.%I', n.nspname, c.relname) AS qname, \
                c.relkind::text AS relkind, c.relpersistence::text AS persistence, c.relispartition, \
                n.oid AS nspoid, \
                CASE WHEN c.reloftype <> 0 THEN pg_catalog.format_type(c.reloftype, NULL) END AS oftype, \
                c.relreplident::text AS replident, c.relrowsecurity, c.relforcerowsecurity, \
                pg_catalog.array_to_json(c.reloptions) AS reloptions, \
                pg_catalog.array_to_json(tc.reloptions) AS toast_options, \
                ts.spcname, c.reltablespace, am.amname, \
                pg_catalog.quote_ident(fs.srvname) AS server, pg_catalog.array_to_json(ft.ftoptions) AS ftoptions, \
                CASE WHEN c.relkind = 'p' THEN pg_catalog.pg_get_partkeydef(c.oid) END AS partkey, \
                CASE WHEN c.relispartition THEN pg_catalog.pg_get_expr(c.relpartbound, c.oid) END AS partbound, \
                (SELECT pg_catalog.json_agg(i.inhparent::int8 ORDER BY i.inhseqno) FROM pg_catalog.pg_inherits i \
                  WHERE i.inhrelid = c.oid) AS parents, \
                pg_catalog.pg_get_userbyid(c.relowner) AS owner, {acl} AS acl, \
                pg_catalog.obj_description(c.oid, 'pg_class') AS comment, \
                (SELECT pg_catalog.json_agg(pg_catalog.json_build_object('oid', k.oid::int8, 'name', k.conname, \
                        'def', pg_catalog.pg_get_constraintdef(k.oid), 'validated', k.convalidated, \
                        'islocal', k.conislocal, 'comment', pg_catalog.obj_description(k.oid, 'pg_constraint')) \
                        ORDER BY k.conname) \
                  FROM pg_catalog.pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'c') AS checks, \
                (SELECT pg_catalog.json_agg(pg_catalog.json_build_object('attnum', d.refobjsubid, \
                        'seqname', pg_catalog.format('%I.%I', sn.nspname, sc.relname), \
                        'start', s.seqstart::text, 'increment', s.seqincrement::text, 'min', s.seqmin::text, \
                        'max', s.seqmax::text, 'cache', s.seqcache::text, 'cycle', s.seqcycle, \
                        'persistence', {seq_persistence})) \
                  FROM pg_catalog.pg_depend d \
                  JOIN pg_catalog.pg_sequence s ON s.seqrelid = d.objid \
                  JOIN pg_catalog.pg_class sc ON sc.oid = s.seqrelid \
                  JOIN pg_catalog.pg_namespace sn ON sn.oid = sc.relnamespace \
                  WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = c.oid \
                    AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype = 'i' \
                    AND d.refobjsubid > 0) AS identities \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_catalog.pg_class tc ON tc.oid = c.reltoastrelid \
         LEFT JOIN pg_catalog.pg_tablespace ts ON ts.oid = c.reltablespace \
         LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam \
         LEFT JOIN pg_catalog.pg_foreign_table ft ON ft.ftrelid = c.oid \
         LEFT JOIN pg_catalog.pg_foreign_server fs ON fs.oid = ft.ftserver \
         WHERE c.relkind IN ('r', 'p', 'f') AND c.relpersistence <> 't' AND {user} AND {ext} \
         ORDER BY n.nspname, c.relname",
        acl = acl_json("c.relacl"),
        user = user_schema("n"),
        ext = not_extension_member("pg_class", "c.oid"),
        // Unlogged sequences are 15's: before, an identity sequence is
        // its table's (no LOGGED/UNLOGGED to write).
        seq_persistence = super::since(
            conn,
            150000,
            "sc.relpersistence::text",
            "c.relpersistence::text"
        ),
    );
    let rows = query(conn, "tables", &sql).await?;
    let mut columns = read_columns(conn, "'r', 'p', 'f'").await?;
    if let Some(gp) = gp {
        for (oid, cols) in columns.iter_mut() {
            for col in cols.iter_mut() {
                col.encoding = gp.encoding(*oid, col.attnum);
            }
        }
    }
    let empty = Vec::new();

    // First pass: names, so that parents can be referred to.
    let mut names: HashMap<u32, (QualifiedName, String)> = HashMap::new();
    for r in &rows {
        names.insert(
            r.oid("oid")?,
            (
                super::qname(&r.text("nspname")?, &r.text("relname")?),
                r.text("qname")?,
            ),
        );
    }
    let mut tables = Tables::new();
    let mut attaches: Vec<(u32, u32, String)> = Vec::new();
    for r in &rows {
        let oid = r.oid("oid")?;
        let (name, qn) = names[&oid].clone();
        let relkind = r.text("relkind")?;
        let is_partition = r.flag("relispartition")?;
        let cols = columns.get(&oid).unwrap_or(&empty);
        let parents: Vec<u32> = r.opt_json("parents")?.unwrap_or_default();
        let oftype = r.opt("oftype")?;
        let checks: Vec<Check> = r.opt_json("checks")?.unwrap_or_default();
        let identities: Vec<Identity> = r.opt_json("identities")?.unwrap_or_default();

        let only = format!("ALTER TABLE ONLY {qn}");
        let ColumnLines {
            mut lines,
            after,
            separate_defaults,
        } = column_lines(
            cols,
            &parents,
            &columns,
            oftype.is_some(),
            is_partition,
            &only,
        );
        let mut inline_checks = Vec::new();
        let mut separate_checks = Vec::new();
        for ck in &checks {
            if !ck.validated {
                // An inherited one comes with the parent's (recursing) ADD.
                if ck.islocal {
                    separate_checks.push(ck);
                }
            } else if is_partition || ck.islocal {
                lines.push(format!(
                    "    CONSTRAINT {} {}",
                    quote_ident(&ck.name),
                    ck.def
                ));
                inline_checks.push(ck);
            } else {
                inline_checks.push(ck); // inherited: comes with INHERITS
            }
        }

        let external = gp.and_then(|gp| gp.external_table_sql(oid, &qn, &lines));
        let is_external = external.is_some();
        let (sql, tablespace) = match external {
            Some(sql) => (sql, None),
            None => create_table_sql(
                r,
                &qn,
                oftype.as_deref(),
                &lines,
                &parents,
                &names,
                is_partition,
                gp,
            )?,
        };
        let mut stmts = vec![sql];
        stmts.extend(after);
        stmts.extend(identity_statements(
            &qn,
            cols,
            &identities,
            &r.text("persistence")?,
        ));
        // (A foreign table has no replica identity: 'n'.)
        match r.text("replident")?.as_str() {
            "f" => stmts.push(format!("{only} REPLICA IDENTITY FULL;")),
            "n" if relkind != "f" => stmts.push(format!("{only} REPLICA IDENTITY NOTHING;")),
            _ => {}
        }

        // External tables are tables to gpbackup ("TABLE" entries, ALTER
        // TABLE ... OWNER), foreign tables only in how Greenplum 7 keeps them.
        let (kind, word) = if relkind == "f" && !is_external {
            ("FOREIGN TABLE", "FOREIGN TABLE")
        } else {
            ("TABLE", "TABLE")
        };
        let mut node = Node::new(Section::PreData, kind, &name.schema, &name.name)
            .statement(stmts.join("\n"))
            .dep(Dep::Obj(ObjRef::new(class::PG_NAMESPACE, r.oid("nspoid")?)));
        if tablespace.is_some() {
            node = node.dep(Dep::Obj(ObjRef::new(
                class::PG_TABLESPACE,
                r.oid("reltablespace")?,
            )));
        }
        if let Some(obj) = gp.and_then(|gp| gp.external_needs(oid)) {
            node = node.dep(Dep::Obj(obj));
        }
        for p in &parents {
            if !is_partition {
                node = node.dep(Dep::Obj(ObjRef::new(class::PG_CLASS, *p)));
            }
        }
        let node = g.add(node);
        g.bind(ObjRef::new(class::PG_CLASS, oid), node);
        if !separate_defaults.is_empty() {
            let stmts: Vec<String> = separate_defaults
                .iter()
                .map(|(col, expr)| format!("{only} ALTER COLUMN {} SET DEFAULT {expr};", col.qname))
                .collect();
            let dnode = g.add(
                Node::new(Section::PreData, "DEFAULT", &name.schema, &name.name)
                    .owner_table(Some(name.clone()))
                    .statement(stmts.join("\n"))
                    .dep(Dep::Node(node)),
            );
            for (col, _) in &separate_defaults {
                if let Some(d) = col.default_oid {
                    g.bind(ObjRef::new(class::PG_ATTRDEF, d), dnode);
                }
            }
        }
        for col in cols {
            if let Some(d) = col.default_oid {
                g.bind(ObjRef::new(class::PG_ATTRDEF, d), node);
            }
        }
        for ck in &inline_checks {
            g.bind(ObjRef::new(class::PG_CONSTRAINT, ck.oid), node);
        }

        if is_partition {
            if let (Some(parent), Some(bound)) = (parents.first(), r.opt("partbound")?) {
                attaches.push((oid, *parent, bound));
            }
        }

        let target = Target {
            node,
            section: Section::PreData,
            word,
            grant_word: "TABLE",
            sql: qn.clone(),
            schema: name.schema.clone(),
            name: name.name.clone(),
            owner_table: Some(name.clone()),
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
        for ck in inline_checks.iter().filter(|c| c.comment.is_some()) {
            let ct = constraint_target(node, Section::PreData, &name, &qn, &ck.name);
            super::comments::add_comment(g, &ct, ck.comment.as_deref());
        }
        for ck in separate_checks {
            // NOT VALID: after the data, like pg_dump (inherited by children).
            let cnode = g.add(
                Node::new(Section::PostData, "CONSTRAINT", &name.schema, &ck.name)
                    .owner_table(Some(name.clone()))
                    .statement(format!(
                        "ALTER TABLE {qn} ADD CONSTRAINT {} {};",
                        quote_ident(&ck.name),
                        ck.def
                    ))
                    .dep(Dep::Node(node)),
            );
            g.bind(ObjRef::new(class::PG_CONSTRAINT, ck.oid), cnode);
            let ct = constraint_target(cnode, Section::PostData, &name, &qn, &ck.name);
            super::comments::add_comment(g, &ct, ck.comment.as_deref());
        }
        if r.flag("relrowsecurity")? || r.flag("relforcerowsecurity")? {
            let mut s = Vec::new();
            if r.flag("relrowsecurity")? {
                s.push(format!("ALTER TABLE {qn} ENABLE ROW LEVEL SECURITY;"));
            }
            if r.flag("relforcerowsecurity")? {
                s.push(format!("ALTER TABLE {qn} FORCE ROW LEVEL SECURITY;"));
            }
            g.add(
                Node::new(Section::PostData, "ROW SECURITY", &name.schema, &name.name)
                    .owner_table(Some(name.clone()))
                    .statement(s.join("\n"))
                    .dep(Dep::Node(node)),
            );
        }
        tables.insert(
            oid,
            TableRef {
                name,
                sql: qn,
                relkind: relkind.chars().next().unwrap_or('r'),
                node,
                owner_node,
            },
        );
    }
    for (child, parent, bound) in attaches {
        let (Some(c), Some(p)) = (tables.get(&child), tables.get(&parent)) else {
            continue;
        };
        g.add(
            Node::new(
                Section::PreData,
                "TABLE ATTACH",
                &c.name.schema,
                &c.name.name,
            )
            .owner_table(Some(c.name.clone()))
            .statement(format!(
                "ALTER TABLE ONLY {} ATTACH PARTITION {} {bound};",
                p.sql, c.sql
            ))
            .dep(Dep::Node(p.node))
            .dep(Dep::Node(c.node)),
        );
    }
    Ok(tables)
}

/// The target of a COMMENT ON CONSTRAINT.
pub(crate) fn constraint_target(
    node: usize,
    section: Section,
    table: &QualifiedName,
    table_sql: &str,
    name: &str,
) -> Target {
    Target {
        node,
        section,
        word: "CONSTRAINT",
        grant_word: "CONSTRAINT",
        sql: format!("{} ON {table_sql}", quote_ident(name)),
        schema: table.schema.clone(),
        name: name.to_string(),
        owner_table: Some(table.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(attnum: i32, name: &str, encoding: Option<&str>) -> Column {
        let mut c: Column = serde_json::from_value(serde_json::json!({
            "attnum": attnum, "name": name, "qname": quote_ident(name), "type": "integer",
            "notnull": attnum == 1, "identity": "", "generated": "", "islocal": true,
            "default_oid": null, "default": null, "collation": null, "storage": null,
            "stattarget": -1, "options": null, "compression": null, "comment": null, "acl": null
        }))
        .unwrap();
        c.encoding = encoding.map(String::from);
        c
    }

    #[test]
    fn column_encodings_follow_the_constraints() {
        let cols = vec![
            column(1, "a", Some(" ENCODING (compresstype=zstd)")),
            column(2, "B", None),
        ];
        let out = column_lines(
            &cols,
            &[],
            &HashMap::new(),
            false,
            false,
            "ALTER TABLE ONLY s.t",
        );
        assert_eq!(
            out.lines,
            vec![
                "    a integer NOT NULL ENCODING (compresstype=zstd)",
                "    \"B\" integer"
            ]
        );
        assert!(out.after.is_empty() && out.separate_defaults.is_empty());
    }
}
