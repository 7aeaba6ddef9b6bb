//! The metadata half of a logical backup: DDL per object from the
//! catalogs, as table-of-contents entries in dependency order, and the
//! restore-side operations on them (filter, schema redirect).
//!
//! * [`collect`] reads the catalogs (SELECTs only, so it runs inside the
//!   backup's REPEATABLE READ snapshot transaction) and returns one
//!   [`TocEntry`] per object: globals (roles, memberships, tablespaces,
//!   the database's settings and privileges), pre-data (schemas,
//!   extensions, access methods, languages, collations, types, shell and
//!   base types, domains, functions, aggregates, operators, operator
//!   families and classes, casts, transforms, conversions, text search
//!   objects, foreign-data wrappers, servers, user mappings, sequences and
//!   their values, tables and foreign tables with defaults, identity and
//!   generated columns, partitions, views, materialized views, grants on
//!   system objects), post-data (indexes, constraints, foreign keys,
//!   triggers, rules, policies, statistics, materialized view refreshes,
//!   default privileges, publications, subscriptions, event triggers
//!   last), large objects (created empty: their contents are data); each
//!   object's
//!   owner, comment and grants are entries of their own (`OWNER`,
//!   `COMMENT`, `ACL`) that depend on it. On Greenplum and Cloudberry
//!   also distribution policies, append-optimized storage, column
//!   encodings, external tables, resource queues and groups (see
//!   `greenplum`, written from their sources and untested here).
//! * [`uncarried`] lists what a backup would leave out (security labels,
//!   subscriptions this session may not read, any catalog no collector
//!   reads).
//! * [`list_tables`] lists the tables whose rows a backup copies.
//! * [`select`] picks the entries a filtered restore replays,
//!   [`redirect_schema`] moves entries to another schema.
//!
//! Replaying: run [`RESTORE_SESSION_SETUP`] once per connection, then each
//! entry's `statement` as ONE simple query (its statements then run in one
//! implicit transaction: a failing entry leaves nothing half-done, and a
//! `SET ROLE` inside it never outlives it).
//!
//! Statements name every object schema-qualified (they are generated with
//! an empty `search_path`) and quote identifiers as PostgreSQL does.

mod access_methods;
mod acl;
mod casts;
mod catalog_acl;
mod comments;
mod constraints;
mod database;
mod deps;
mod event_triggers;
mod extensions;
mod filter;
mod foreign;
mod functions;
mod globals;
mod greenplum;
mod indexes;
mod inventory;
mod languages;
mod large_objects;
mod operators;
mod publications;
mod redirect;
mod rules;
mod schemas;
mod sequences;
mod subscriptions;
mod tablelist;
mod tables;
mod text_search;
mod triggers;
mod types;
mod views;

use serde::de::DeserializeOwned;

use crate::error::{Error, PgResultExt, Result};
use crate::logical::toc::{QualifiedName, Section, TocEntry};
use crate::pg::conn::{PgConn, PgError, Row};

pub use crate::pg::quote::{quote_ident, quote_literal};
pub use filter::{parse_table_name, select, selected_tables, ObjectFilter};
pub use greenplum::{detect as detect_flavor, ServerFlavor};
pub use inventory::uncarried;
pub use redirect::redirect_schema;
pub use tablelist::{list_tables, TableInfo};

use deps::{class, DependRow, Graph, Node, ObjRef};

/// What [`collect`] reads.
#[derive(Debug, Clone, Default)]
pub struct MetadataOptions {
    /// Roles (with their memberships) and tablespaces.
    pub with_globals: bool,
    /// Which schemas and tables (gpbackup semantics, see [`ObjectFilter`]).
    /// The backup applies it to what it collects: objects outside it are
    /// left out, except what the chosen ones depend on.
    pub filter: ObjectFilter,
}

/// Session settings for replaying entries: run once on each restore
/// connection before any entry. The statements assume them: names are
/// schema-qualified for an empty `search_path`, function bodies are not
/// checked (they may use objects created later), literals use standard
/// strings and ISO dates.
pub const RESTORE_SESSION_SETUP: &str = "SET statement_timeout = 0; \
SET lock_timeout = 0; \
SET idle_in_transaction_session_timeout = 0; \
SET client_encoding = 'UTF8'; \
SET standard_conforming_strings = on; \
SELECT pg_catalog.set_config('search_path', '', false); \
SET check_function_bodies = false; \
SET xmloption = content; \
SET client_min_messages = warning; \
SET row_security = off; \
SET datestyle = 'ISO'; \
SET intervalstyle = 'postgres'; \
SET extra_float_digits = 3; \
SET default_tablespace = ''; \
SET default_table_access_method = heap;";

/// Oldest server release `collect` reads (Cloudberry is built on 14).
const MIN_SERVER_VERSION: u32 = 130000;

/// Read the catalogs of the connected database and return its objects as
/// table-of-contents entries, numbered in replay order (`id` 1..), with
/// `depends_on` listing the entries each must follow.
///
/// Only SELECTs: runs inside the caller's transaction (e.g. REPEATABLE
/// READ with an exported snapshot), where it changes `search_path`,
/// `datestyle`, `intervalstyle` and `extra_float_digits` with
/// transaction-local `set_config` and puts them back at the end. Outside a
/// transaction it opens (and ends) its own read-only one.
pub async fn collect(conn: &mut PgConn, opts: &MetadataOptions) -> Result<Vec<TocEntry>> {
    let version = conn.server_version_num();
    if version != 0 && version < MIN_SERVER_VERSION {
        return Err(Error::Usage(format!(
            "the logical backup reads the catalogs of PostgreSQL 13 or later (or Cloudberry); \
             this server is version {}.{}: use pg_dump for it",
            version / 10000,
            version % 10000 / 100
        )));
    }
    let own_txn = conn.transaction_status() == b'I';
    if own_txn {
        query(
            conn,
            "start a transaction",
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        )
        .await?;
    }
    let result = collect_in_txn(conn, opts).await;
    if own_txn {
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        let ended = query(conn, "end the transaction", end).await;
        if result.is_ok() {
            ended?;
        }
    }
    result
}

async fn collect_in_txn(conn: &mut PgConn, opts: &MetadataOptions) -> Result<Vec<TocEntry>> {
    let saved = query_one(
        conn,
        "save the session settings",
        "SELECT current_setting('search_path') AS search_path, \
                current_setting('datestyle') AS datestyle, \
                current_setting('intervalstyle') AS intervalstyle, \
                current_setting('extra_float_digits') AS extra_float_digits",
    )
    .await?;
    query(
        conn,
        "set the session settings",
        "SELECT pg_catalog.set_config('search_path', '', true), \
                pg_catalog.set_config('datestyle', 'ISO', true), \
                pg_catalog.set_config('intervalstyle', 'postgres', true), \
                pg_catalog.set_config('extra_float_digits', '3', true)",
    )
    .await?;
    let result = collect_objects(conn, opts).await;
    let restore = format!(
        "SELECT pg_catalog.set_config('search_path', {}, true), \
                pg_catalog.set_config('datestyle', {}, true), \
                pg_catalog.set_config('intervalstyle', {}, true), \
                pg_catalog.set_config('extra_float_digits', {}, true)",
        quote_literal(&saved.text("search_path")?),
        quote_literal(&saved.text("datestyle")?),
        quote_literal(&saved.text("intervalstyle")?),
        quote_literal(&saved.text("extra_float_digits")?),
    );
    // After an error the transaction is aborted and these fail too: the
    // first error is the one to report.
    let restored = query(conn, "restore the session settings", &restore).await;
    let entries = result?;
    restored?;
    Ok(entries)
}

async fn collect_objects(conn: &mut PgConn, opts: &MetadataOptions) -> Result<Vec<TocEntry>> {
    let mut g = Graph::default();
    // Greenplum/Cloudberry catalogs are read only on those servers.
    let flavor = greenplum::detect(conn).await?;
    if opts.with_globals {
        globals::collect(conn, &mut g).await?;
        if flavor.is_mpp() {
            greenplum::resources::collect(conn, &mut g, flavor).await?;
        }
        database::collect(conn, &mut g).await?;
    }
    schemas::collect(conn, &mut g).await?;
    extensions::collect(conn, &mut g).await?;
    access_methods::collect(conn, &mut g).await?;
    languages::collect(conn, &mut g).await?;
    types::collect(conn, &mut g).await?;
    functions::collect(conn, &mut g).await?;
    operators::collect(conn, &mut g).await?;
    casts::collect(conn, &mut g).await?;
    text_search::collect(conn, &mut g).await?;
    foreign::collect(conn, &mut g).await?;
    if flavor.is_mpp() {
        greenplum::protocols::collect(conn, &mut g).await?;
    }
    catalog_acl::collect(conn, &mut g).await?;
    let gp = if flavor.is_mpp() {
        let version = conn.server_version_num();
        Some(greenplum::TableExtras::read(conn, version).await?)
    } else {
        None
    };
    let mut tables = tables::collect(conn, &mut g, gp.as_ref()).await?;
    views::collect(conn, &mut g, &mut tables, gp.as_ref()).await?;
    sequences::collect(conn, &mut g, &tables).await?;
    let index_extras = indexes::collect(conn, &mut g, &tables).await?;
    constraints::collect(conn, &mut g, &tables, &index_extras).await?;
    indexes::collect_attachments(conn, &mut g, &tables).await?;
    triggers::collect(conn, &mut g, &tables).await?;
    rules::collect(conn, &mut g, &tables).await?;
    acl::collect_default_privileges(conn, &mut g).await?;
    publications::collect(conn, &mut g).await?;
    event_triggers::collect(conn, &mut g).await?;
    large_objects::collect(conn, &mut g).await?;
    subscriptions::collect(conn, &mut g).await?;
    bind_derived_types(conn, &mut g).await?;
    let (depend, internal) = read_depend(conn).await?;
    // Objects that exist only as part of another (a range type's
    // constructors, a toast table) belong to that object's entry.
    loop {
        let mut bound = 0;
        for (part, whole) in &internal {
            if g.node_of(*part).is_none() {
                if let Some(node) = g.node_of(*whole) {
                    g.bind(*part, node);
                    bound += 1;
                }
            }
        }
        if bound == 0 {
            break;
        }
    }
    let entries = g.finish(&depend);
    Ok(filter::restrict_backup(entries, &opts.filter))
}

/// Row types and array types belong to the entry of their relation or
/// element type (a column of type `t[]` needs `t`).
async fn bind_derived_types(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    // Before 14, a true array type is a varlena with an element type.
    let is_array = since(
        conn,
        140000,
        "t.typsubscript = 'pg_catalog.array_subscript_handler'::pg_catalog.regproc",
        "t.typlen = -1",
    );
    let sql = format!(
        "SELECT t.oid, t.typrelid, t.typelem, {is_array} AS is_array \
         FROM pg_catalog.pg_type t \
         WHERE t.oid >= 16384 AND (t.typrelid <> 0 OR t.typelem <> 0) \
         ORDER BY t.oid"
    );
    let rows = query(conn, "row and array types", &sql).await?;
    // Row types first: an array of a row type then finds its table.
    for r in &rows {
        let rel = r.oid("typrelid")?;
        if rel != 0 {
            if let Some(node) = g.node_of(ObjRef::new(class::PG_CLASS, rel)) {
                g.bind(ObjRef::new(class::PG_TYPE, r.oid("oid")?), node);
            }
        }
    }
    for r in &rows {
        let elem = r.oid("typelem")?;
        if elem != 0 && r.flag("is_array")? {
            if let Some(node) = g.node_of(ObjRef::new(class::PG_TYPE, elem)) {
                g.bind(ObjRef::new(class::PG_TYPE, r.oid("oid")?), node);
            }
        }
    }
    Ok(())
}

/// `pg_depend` rows between user objects that order creation (normal and
/// automatic dependencies), and the internal ones (part, whole).
async fn read_depend(conn: &mut PgConn) -> Result<(Vec<DependRow>, Vec<(ObjRef, ObjRef)>)> {
    let rows = query(
        conn,
        "read pg_depend",
        "SELECT classid, objid, refclassid, refobjid, deptype::text AS deptype \
         FROM pg_catalog.pg_depend \
         WHERE deptype IN ('n', 'a', 'i') AND objid >= 16384 AND refobjid >= 16384",
    )
    .await?;
    let mut depend = Vec::with_capacity(rows.len());
    let mut internal = Vec::new();
    for r in &rows {
        let from = ObjRef::new(r.oid("classid")?, r.oid("objid")?);
        let to = ObjRef::new(r.oid("refclassid")?, r.oid("refobjid")?);
        match r.text("deptype")?.as_str() {
            "i" => internal.push((from, to)),
            d => depend.push(DependRow {
                from,
                to,
                auto: d == "a",
            }),
        }
    }
    Ok((depend, internal))
}

/// Run a catalog query; errors name what was being read.
pub(crate) async fn query(conn: &mut PgConn, what: &str, sql: &str) -> Result<Vec<Row>> {
    conn.simple_query(sql)
        .await
        .with_context(|| format!("reading the catalogs ({what})"))
}

pub(crate) async fn query_one(conn: &mut PgConn, what: &str, sql: &str) -> Result<Row> {
    let mut rows = query(conn, what, sql).await?;
    if rows.len() != 1 {
        return Err(Error::postgres(
            format!("reading the catalogs ({what})"),
            PgError::RowCount(rows.len()),
        ));
    }
    Ok(rows.remove(0))
}

/// The by-name accessors of [`Row`], with errors that say a catalog query
/// was being read.
pub(crate) trait RowExt {
    fn text(&self, col: &str) -> Result<String>;
    /// `None` when NULL; an error when the result has no such column.
    fn opt(&self, col: &str) -> Result<Option<String>>;
    fn oid(&self, col: &str) -> Result<u32>;
    fn int(&self, col: &str) -> Result<i64>;
    fn flag(&self, col: &str) -> Result<bool>;
    fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T>;
    fn opt_json<T: DeserializeOwned>(&self, col: &str) -> Result<Option<T>>;
}

const CATALOG_QUERY: &str = "catalog query";

impl RowExt for Row {
    fn text(&self, col: &str) -> Result<String> {
        self.get_str(col).map(str::to_string).context(CATALOG_QUERY)
    }

    fn opt(&self, col: &str) -> Result<Option<String>> {
        Ok(self
            .get_opt(col)
            .context(CATALOG_QUERY)?
            .map(str::to_string))
    }

    fn oid(&self, col: &str) -> Result<u32> {
        self.parse(col).context(CATALOG_QUERY)
    }

    fn int(&self, col: &str) -> Result<i64> {
        self.parse(col).context(CATALOG_QUERY)
    }

    fn flag(&self, col: &str) -> Result<bool> {
        self.get_bool(col).context(CATALOG_QUERY)
    }

    fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T> {
        self.get_json(col).context(CATALOG_QUERY)
    }

    fn opt_json<T: DeserializeOwned>(&self, col: &str) -> Result<Option<T>> {
        match self.get_json_opt(col) {
            Err(PgError::Column { .. }) if self.get_by_name(col).is_none() => Ok(None),
            r => r.context(CATALOG_QUERY),
        }
    }
}

/// `expr` on servers of release `version` or later (`150000`), else
/// `older` (a column or function the older catalog lacks).
pub(crate) fn since<'a>(conn: &PgConn, version: u32, expr: &'a str, older: &'a str) -> &'a str {
    let v = conn.server_version_num();
    if v == 0 || v >= version {
        expr
    } else {
        older
    }
}

/// SQL condition: schema alias `n` is a user schema (not pg_catalog,
/// pg_toast, temporary schemas, information_schema or gp_toolkit).
pub(crate) fn user_schema(n: &str) -> String {
    format!("{n}.nspname !~ '^pg_' AND {n}.nspname NOT IN ('information_schema', 'gp_toolkit')")
}

/// SQL condition: the row `oid` of catalog `catalog` is not a member of an
/// extension (the extension's script creates it).
pub(crate) fn not_extension_member(catalog: &str, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend x \
         WHERE x.classid = 'pg_catalog.{catalog}'::pg_catalog.regclass AND x.objid = {oid} \
         AND x.deptype = 'e')"
    )
}

/// SQL expression: an ACL column as JSON `[[grantee, grantor, privilege,
/// grantable], ...]` in array order (grantee `PUBLIC` for 0, names quoted
/// as identifiers), or NULL when the column is NULL (default privileges).
pub(crate) fn acl_json(acl: &str) -> String {
    format!(
        "CASE WHEN {acl} IS NULL THEN NULL ELSE (\
           SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(\
             CASE WHEN ai.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(ai.grantee)) END, \
             pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(ai.grantor)), \
             ai.privilege_type, ai.is_grantable) ORDER BY ai.ord), '[]') \
           FROM pg_catalog.aclexplode({acl}) WITH ORDINALITY AS ai(grantor, grantee, privilege_type, is_grantable, ord)) END"
    )
}

/// The object an attached entry (owner, comment, grants) belongs to.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The entry that creates the object.
    pub node: usize,
    pub section: Section,
    /// The object's kind in `COMMENT ON` / `ALTER ... OWNER TO` (TABLE,
    /// VIEW, FUNCTION, CONSTRAINT, COLUMN...).
    pub word: &'static str,
    /// The object's kind in `GRANT ... ON` (TABLE for views, FUNCTION for
    /// aggregates, TYPE for domains...).
    pub grant_word: &'static str,
    /// The object as statements name it: `zoo.animals`, `zoo.f(integer)`,
    /// `c ON zoo.animals`.
    pub sql: String,
    /// Schema and display name for the attached entries.
    pub schema: String,
    pub name: String,
    pub owner_table: Option<QualifiedName>,
}

impl Target {
    /// `"TABLE animals"`: the name of entries attached to this object.
    pub fn label(&self) -> String {
        format!("{} {}", self.word, self.name)
    }
}

impl Target {
    /// A target outside any table.
    pub fn of(
        node: usize,
        section: Section,
        word: &'static str,
        grant_word: &'static str,
        sql: &str,
        schema: &str,
        name: &str,
    ) -> Target {
        Target {
            node,
            section,
            word,
            grant_word,
            sql: sql.to_string(),
            schema: schema.to_string(),
            name: name.to_string(),
            owner_table: None,
        }
    }
}

/// Generic options (`{host=example,port=5432}` as a JSON array of `k=v`)
/// as the inside of an `OPTIONS (...)` clause: `host 'example', port '5432'`.
pub(crate) fn generic_options_sql(options: &[String]) -> String {
    options
        .iter()
        .map(|o| match o.split_once('=') {
            Some((k, v)) => format!("{} {}", quote_ident(k), quote_literal(v)),
            None => format!("{} ''", quote_ident(o)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// ` OPTIONS (...)` for non-empty options, else "".
pub(crate) fn options_clause(options: &[String]) -> String {
    if options.is_empty() {
        String::new()
    } else {
        format!(" OPTIONS ({})", generic_options_sql(options))
    }
}

/// A `DO` block running `create` and leaving an object of that name
/// already there as it is: objects of the whole database (access methods,
/// wrappers, casts, publications...) may exist when a filtered or
/// redirected restore writes into a database that has them.
pub(crate) fn create_unless_exists(create: &str) -> String {
    format!(
        "DO {};",
        crate::pg::quote::dollar_quote(&format!(
            "BEGIN\n    {}\nEXCEPTION WHEN duplicate_object THEN NULL;\nEND",
            create.replace('\n', "\n    ")
        ))
    )
}

/// `QualifiedName` from catalog names.
pub(crate) fn qname(schema: &str, name: &str) -> QualifiedName {
    QualifiedName {
        schema: schema.to_string(),
        name: name.to_string(),
    }
}

/// Reloptions (`{fillfactor=80,...}` as a JSON array of `k=v`) as the
/// inside of a `WITH (...)` clause: `fillfactor='80', ...`, with `prefix`
/// before each key (`toast.`).
pub(crate) fn reloptions_sql(options: &[String], prefix: &str) -> String {
    options
        .iter()
        .map(|o| match o.split_once('=') {
            Some((k, v)) => format!("{prefix}{}={}", quote_ident(k), quote_literal(v)),
            None => format!("{prefix}{}", quote_ident(o)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_options_are_quoted() {
        let opts = vec!["host=example".to_string(), "Port=it's=x".to_string()];
        assert_eq!(
            options_clause(&opts),
            " OPTIONS (host 'example', \"Port\" 'it''s=x')"
        );
        assert_eq!(options_clause(&[]), "");
    }

    #[test]
    fn reloptions_are_quoted() {
        let opts = vec![
            "fillfactor=80".to_string(),
            "autovacuum_enabled=false".to_string(),
        ];
        assert_eq!(
            reloptions_sql(&opts, ""),
            "fillfactor='80', autovacuum_enabled='false'"
        );
        assert_eq!(
            reloptions_sql(&["a=it's".into()], "toast."),
            "toast.a='it''s'"
        );
    }
}
