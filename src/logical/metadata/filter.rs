//! Schema and table filters (gpbackup's `--include-schema`,
//! `--exclude-schema`, `--include-table`, `--exclude-table`) and the choice
//! of entries a filtered backup or restore takes.
//!
//! Rules of [`select`]:
//! * A table is chosen when the filter includes it, or includes the
//!   partitioned table it is a partition of; it is excluded when the filter
//!   excludes it or one of its partitioned ancestors. Views, materialized
//!   views and sequences are "tables" for the filter too.
//! * Entries that belong to a chosen table (`owner_table`: its indexes,
//!   constraints, triggers, owned sequences, comments, grants, partition
//!   attachment...) come along, unless they need another table that is not
//!   restored (a foreign key to it, the attachment to a parent that is not
//!   there): those are left out.
//! * Other objects (functions, types...) are chosen by their schema when no
//!   table filter is given; extensions and global default privileges when
//!   no include filter is given; globals always (the caller decides whether
//!   to replay the globals section).
//! * Whatever a chosen entry depends on comes along (its schema, the types
//!   and functions it uses, the tables a view reads, as definitions
//!   without data) unless it is excluded: excluded objects are never
//!   restored, and neither is anything that depends on them (logged).
//! * Owners, comments, grants, sequence values and materialized view
//!   refreshes follow their object.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::deps::sort_entries;
use crate::error::{Error, Result};
use crate::logical::toc::{ObjectKind, QualifiedName, Section, TocEntry};
use crate::pg::quote::parse_ident;

/// Which schemas and tables a backup or restore takes (gpbackup
/// semantics). Empty lists do not restrict; names are as in the catalogs
/// (case-sensitive, unquoted). A table must pass every given list: in an
/// included schema (if any), among the included tables (if any), not in an
/// excluded schema, not an excluded table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectFilter {
    #[serde(default)]
    pub include_schemas: Vec<String>,
    #[serde(default)]
    pub exclude_schemas: Vec<String>,
    #[serde(default)]
    pub include_tables: Vec<QualifiedName>,
    #[serde(default)]
    pub exclude_tables: Vec<QualifiedName>,
}

impl ObjectFilter {
    /// No restriction at all.
    pub fn is_empty(&self) -> bool {
        self.include_schemas.is_empty()
            && self.exclude_schemas.is_empty()
            && self.include_tables.is_empty()
            && self.exclude_tables.is_empty()
    }

    /// An include list is given: objects of no schema (large objects,
    /// extensions...) are left out, as pg_restore's `-n`/`-t` do.
    pub fn has_includes(&self) -> bool {
        !self.include_schemas.is_empty() || !self.include_tables.is_empty()
    }

    /// Objects of `schema` pass the schema lists.
    pub fn matches_schema(&self, schema: &str) -> bool {
        (self.include_schemas.is_empty() || self.include_schemas.iter().any(|s| s == schema))
            && !self.exclude_schemas.iter().any(|s| s == schema)
    }

    /// `table` passes every list.
    pub fn matches_table(&self, table: &QualifiedName) -> bool {
        self.includes_table(table) && !self.excludes_table(table)
    }

    /// `table` passes the include lists (ignoring the exclude lists).
    pub fn includes_table(&self, table: &QualifiedName) -> bool {
        (self.include_schemas.is_empty() || self.include_schemas.contains(&table.schema))
            && (self.include_tables.is_empty() || self.include_tables.contains(table))
    }

    /// `table` is named by an exclude list.
    pub fn excludes_table(&self, table: &QualifiedName) -> bool {
        self.exclude_schemas.contains(&table.schema) || self.exclude_tables.contains(table)
    }
}

/// Parse a table name from the command line: `schema.table` split at the
/// first dot, names taken literally (as gpbackup does), or SQL-quoted
/// parts (`"my.schema"."My Table"`, `public."a.b"`) for names with dots.
pub fn parse_table_name(s: &str) -> Result<QualifiedName> {
    let bad = || {
        Error::Usage(format!(
            "{s:?} is not a table name: write schema.table (names as in the catalogs, \
             e.g. public.orders), quoting a part that contains a dot: \"my.schema\".\"my.table\""
        ))
    };
    if s.contains('"') {
        let part = |p: &str| -> Option<(String, usize)> {
            if p.starts_with('"') {
                parse_ident(p).map(|(name, rest)| (name, p.len() - rest.len()))
            } else {
                let end = p.find('.').unwrap_or(p.len());
                Some((p[..end].to_string(), end))
            }
        };
        let (schema, used) = part(s).ok_or_else(bad)?;
        let rest = s[used..].strip_prefix('.').ok_or_else(bad)?;
        let (name, used) = part(rest).ok_or_else(bad)?;
        if used != rest.len() || schema.is_empty() || name.is_empty() {
            return Err(bad());
        }
        return Ok(QualifiedName { schema, name });
    }
    match s.split_once('.') {
        Some((schema, name)) if !schema.is_empty() && !name.is_empty() => Ok(QualifiedName {
            schema: schema.to_string(),
            name: name.to_string(),
        }),
        _ => Err(bad()),
    }
}

/// Kinds the table filters apply to (when not owned by a table).
fn is_relation_kind(kind: &ObjectKind) -> bool {
    matches!(
        kind,
        ObjectKind::Table
            | ObjectKind::View
            | ObjectKind::MaterializedView
            | ObjectKind::Sequence
            | ObjectKind::ForeignTable
    )
}

/// Kinds that only follow the object they are attached to.
fn is_attached_kind(kind: &ObjectKind) -> bool {
    matches!(
        kind,
        ObjectKind::Owner
            | ObjectKind::Comment
            | ObjectKind::Acl
            | ObjectKind::SequenceSet
            | ObjectKind::MaterializedViewData
    )
}

/// An entry on a system object (a grant on a `pg_catalog` function).
fn is_system(e: &TocEntry) -> bool {
    e.schema == "pg_catalog" || e.schema == "information_schema"
}

struct Selection {
    chosen: Vec<bool>,
    /// Tables chosen by the filter itself (their data is restored).
    direct_tables: Vec<QualifiedName>,
}

fn compute(entries: &[TocEntry], filter: &ObjectFilter) -> Selection {
    let n = entries.len();
    let index: HashMap<u32, usize> = entries.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
    let deps = |i: usize| {
        entries[i]
            .depends_on
            .iter()
            .filter_map(|d| index.get(d).copied())
    };
    let is_relation =
        |i: usize| is_relation_kind(&entries[i].kind) && entries[i].owner_table.is_none();
    let name_of = |i: usize| QualifiedName {
        schema: entries[i].schema.clone(),
        name: entries[i].name.clone(),
    };
    // Relations by name, partition parents by child.
    let mut relation: HashMap<QualifiedName, usize> = HashMap::new();
    for i in 0..n {
        if is_relation(i) {
            relation.insert(name_of(i), i);
        }
    }
    let mut parent: HashMap<QualifiedName, QualifiedName> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if e.kind != ObjectKind::TableAttach {
            continue;
        }
        let Some(child) = &e.owner_table else {
            continue;
        };
        if let Some(p) = deps(i)
            .filter(|&j| entries[j].kind == ObjectKind::Table)
            .map(name_of)
            .find(|p| p != child)
        {
            parent.insert(child.clone(), p);
        }
    }
    let lineage = |t: &QualifiedName| {
        let mut chain = vec![t.clone()];
        let mut seen = HashSet::new();
        while let Some(p) = parent.get(chain.last().expect("non-empty")) {
            if !seen.insert(p.clone()) {
                break;
            }
            chain.push(p.clone());
        }
        chain
    };
    let rel_included = |t: &QualifiedName| lineage(t).iter().any(|a| filter.includes_table(a));
    let rel_excluded = |t: &QualifiedName| lineage(t).iter().any(|a| filter.excludes_table(a));

    // Excluded entries and everything depending on them.
    let mut blocked = vec![false; n];
    for i in 0..n {
        let e = &entries[i];
        blocked[i] = if e.section == Section::Globals {
            false
        } else if is_relation(i) {
            rel_excluded(&name_of(i))
        } else if let Some(t) = &e.owner_table {
            rel_excluded(t)
        } else if e.kind == ObjectKind::Schema {
            filter.exclude_schemas.contains(&e.name)
        } else {
            !e.schema.is_empty() && filter.exclude_schemas.contains(&e.schema)
        };
    }
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for j in deps(i) {
            dependents[j].push(i);
        }
    }
    let mut stack: Vec<usize> = (0..n).filter(|&i| blocked[i]).collect();
    while let Some(i) = stack.pop() {
        for &d in &dependents[i] {
            if !blocked[d] {
                blocked[d] = true;
                stack.push(d);
            }
        }
    }

    let direct = |i: usize| -> bool {
        let e = &entries[i];
        if blocked[i] {
            return false;
        }
        if e.section == Section::Globals {
            return true;
        }
        if is_system(e) {
            // Grants on system objects: part of a whole-database restore.
            return !filter.has_includes();
        }
        if e.owner_table.is_some() || is_attached_kind(&e.kind) {
            return false;
        }
        if is_relation(i) {
            return rel_included(&name_of(i));
        }
        if e.kind == ObjectKind::Schema {
            return filter.include_tables.is_empty() && filter.matches_schema(&e.name);
        }
        if e.schema.is_empty() {
            return !filter.has_includes();
        }
        filter.include_tables.is_empty() && filter.matches_schema(&e.schema)
    };

    let mut chosen = vec![false; n];
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| entries[i].id);
    let mut direct_tables = Vec::new();
    let mut roots = Vec::new();
    for &i in &order {
        if direct(i) {
            roots.push(i);
            if entries[i].kind == ObjectKind::Table {
                direct_tables.push(name_of(i));
            }
        }
    }
    let pull = |chosen: &mut Vec<bool>, start: Vec<usize>| {
        let mut stack = start;
        while let Some(i) = stack.pop() {
            if chosen[i] || blocked[i] {
                continue;
            }
            chosen[i] = true;
            stack.extend(deps(i));
        }
    };
    pull(&mut chosen, roots);

    // Entries of chosen tables, in replay order (so an entry's own
    // dependencies among them are decided first).
    let in_set =
        |chosen: &Vec<bool>, t: &QualifiedName| relation.get(t).is_some_and(|&r| chosen[r]);
    for &i in &order {
        let e = &entries[i];
        if chosen[i] || blocked[i] {
            continue;
        }
        let Some(t) = &e.owner_table else { continue };
        if !in_set(&chosen, t) {
            continue;
        }
        let ok = deps(i).all(|d| {
            chosen[d]
                || (!blocked[d]
                    && !is_relation(d)
                    && entries[d]
                        .owner_table
                        .as_ref()
                        .is_none_or(|t2| in_set(&chosen, t2)))
        });
        if ok {
            pull(&mut chosen, vec![i]);
        }
    }
    // Attached entries follow their objects.
    for &i in &order {
        if !chosen[i]
            && !blocked[i]
            && is_attached_kind(&entries[i].kind)
            && !is_system(&entries[i])
            && entries[i].owner_table.is_none()
            && deps(i).all(|d| chosen[d])
        {
            chosen[i] = true;
        }
    }
    // Say what an exclusion took away besides the excluded objects.
    for &i in &order {
        if blocked[i] && !is_attached_kind(&entries[i].kind) {
            let e = &entries[i];
            let excluded_itself = if is_relation(i) {
                rel_excluded(&name_of(i))
            } else if let Some(t) = &e.owner_table {
                rel_excluded(t)
            } else {
                e.kind == ObjectKind::Schema || filter.exclude_schemas.contains(&e.schema)
            };
            if !excluded_itself {
                tracing::warn!(
                    "{} {}{}{} is left out: it depends on an excluded object",
                    e.kind,
                    e.schema,
                    if e.schema.is_empty() { "" } else { "." },
                    e.name
                );
            }
        }
    }
    Selection {
        chosen,
        direct_tables,
    }
}

/// The entries a restore with `filter` replays: the chosen objects, what
/// they depend on, what belongs to them (see the module documentation),
/// sorted by dependencies, stable by id.
pub fn select(entries: &[TocEntry], filter: &ObjectFilter) -> Vec<TocEntry> {
    if filter.is_empty() {
        return sort_entries(entries.to_vec());
    }
    let sel = compute(entries, filter);
    let chosen: Vec<TocEntry> = entries
        .iter()
        .zip(&sel.chosen)
        .filter(|(_, &c)| c)
        .map(|(e, _)| e.clone())
        .collect();
    sort_entries(chosen)
}

/// The tables whose data a restore with `filter` loads: those the filter
/// chooses (with the partitions of chosen partitioned tables), not the
/// ones only pulled in as dependencies. Sorted.
pub fn selected_tables(entries: &[TocEntry], filter: &ObjectFilter) -> Vec<QualifiedName> {
    let mut tables = if filter.is_empty() {
        entries
            .iter()
            .filter(|e| e.kind == ObjectKind::Table && e.owner_table.is_none())
            .map(|e| QualifiedName {
                schema: e.schema.clone(),
                name: e.name.clone(),
            })
            .collect()
    } else {
        compute(entries, filter).direct_tables
    };
    tables.sort();
    tables.dedup();
    tables
}

/// A backup with a filter keeps what a restore with it would take.
pub(crate) fn restrict_backup(entries: Vec<TocEntry>, filter: &ObjectFilter) -> Vec<TocEntry> {
    if filter.is_empty() {
        entries
    } else {
        select(&entries, filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str, n: &str) -> QualifiedName {
        QualifiedName {
            schema: s.into(),
            name: n.into(),
        }
    }

    #[test]
    fn parse_table_names() {
        assert_eq!(
            parse_table_name("public.orders").unwrap(),
            q("public", "orders")
        );
        assert_eq!(
            parse_table_name("Public.My Table").unwrap(),
            q("Public", "My Table")
        );
        assert_eq!(parse_table_name("s.a.b").unwrap(), q("s", "a.b"));
        assert_eq!(
            parse_table_name("\"my.schema\".\"My.Table\"").unwrap(),
            q("my.schema", "My.Table")
        );
        assert_eq!(
            parse_table_name("public.\"a.b\"").unwrap(),
            q("public", "a.b")
        );
        assert_eq!(parse_table_name("\"x\"\"y\".t").unwrap(), q("x\"y", "t"));
        for bad in ["orders", ".t", "s.", "\"s\"t", "\"s\".\"t\"x", "\"s"] {
            let e = parse_table_name(bad).unwrap_err();
            assert!(e.to_string().contains("schema.table"), "{bad}: {e}");
        }
    }

    #[test]
    fn filter_lists() {
        let f = ObjectFilter {
            include_schemas: vec!["a".into()],
            exclude_tables: vec![q("a", "x")],
            ..Default::default()
        };
        assert!(f.matches_schema("a"));
        assert!(!f.matches_schema("b"));
        assert!(f.matches_table(&q("a", "y")));
        assert!(!f.matches_table(&q("a", "x")));
        assert!(!f.matches_table(&q("b", "y")));
        let f = ObjectFilter {
            include_tables: vec![q("a", "t")],
            exclude_schemas: vec!["c".into()],
            ..Default::default()
        };
        assert!(f.matches_table(&q("a", "t")));
        assert!(!f.matches_table(&q("a", "u")));
        assert!(f.matches_schema("a") && f.matches_schema("b") && !f.matches_schema("c"));
        assert!(ObjectFilter::default().is_empty());
    }

    struct B(Vec<TocEntry>);

    impl B {
        fn add(
            &mut self,
            section: Section,
            kind: &str,
            schema: &str,
            name: &str,
            owner: Option<(&str, &str)>,
            deps: &[u32],
        ) -> u32 {
            let id = self.0.len() as u32 + 1;
            self.0.push(TocEntry {
                id,
                section,
                kind: kind.into(),
                schema: schema.into(),
                name: name.into(),
                owner_table: owner.map(|(s, n)| q(s, n)),
                depends_on: deps.to_vec(),
                statement: format!("-- {kind} {schema}.{name}"),
            });
            id
        }
    }

    fn names(entries: &[TocEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| format!("{} {}.{}", e.kind, e.schema, e.name))
            .collect()
    }

    /// Two schemas: s1.t (serial sequence, index, FK to s2.u, trigger
    /// with a function), s2.u, a partitioned s1.p with a leaf, a view on
    /// s1.t, a function in s1.
    fn sample() -> B {
        use Section::*;
        let mut b = B(Vec::new());
        let role = b.add(Globals, "ROLE", "", "r", None, &[]);
        let s1 = b.add(PreData, "SCHEMA", "", "s1", None, &[]);
        let s2 = b.add(PreData, "SCHEMA", "", "s2", None, &[]);
        let ext = b.add(PreData, "EXTENSION", "", "hstore", None, &[s2]);
        let f = b.add(PreData, "FUNCTION", "s1", "trg()", None, &[s1]);
        let _fc = b.add(PreData, "COMMENT", "s1", "FUNCTION trg()", None, &[f]);
        let seq = b.add(
            PreData,
            "SEQUENCE",
            "s1",
            "t_id_seq",
            Some(("s1", "t")),
            &[s1],
        );
        let t = b.add(PreData, "TABLE", "s1", "t", None, &[s1, seq]);
        let u = b.add(PreData, "TABLE", "s2", "u", None, &[s2, ext]);
        let owned = b.add(
            PreData,
            "SEQUENCE OWNED BY",
            "s1",
            "t_id_seq",
            Some(("s1", "t")),
            &[seq, t],
        );
        let towner = b.add(
            PreData,
            "OWNER",
            "s1",
            "TABLE t",
            Some(("s1", "t")),
            &[t, role, owned],
        );
        let p = b.add(PreData, "TABLE", "s1", "p", None, &[s1]);
        let leaf = b.add(PreData, "TABLE", "s1", "p1", None, &[s1, p]);
        let _attach = b.add(
            PreData,
            "TABLE ATTACH",
            "s1",
            "p1",
            Some(("s1", "p1")),
            &[p, leaf],
        );
        let v = b.add(PreData, "VIEW", "s1", "v", None, &[s1, t]);
        let _vc = b.add(PreData, "COMMENT", "s1", "VIEW v", None, &[v]);
        let uacl = b.add(
            PreData,
            "ACL",
            "s2",
            "TABLE u",
            Some(("s2", "u")),
            &[u, role],
        );
        let upk = b.add(
            PostData,
            "CONSTRAINT",
            "s2",
            "u_pkey",
            Some(("s2", "u")),
            &[u],
        );
        let _idx = b.add(PostData, "INDEX", "s1", "t_idx", Some(("s1", "t")), &[t]);
        let _fk = b.add(
            PostData,
            "FK CONSTRAINT",
            "s1",
            "t_u_fk",
            Some(("s1", "t")),
            &[t, u, upk],
        );
        let _trg = b.add(
            PostData,
            "TRIGGER",
            "s1",
            "t_trg",
            Some(("s1", "t")),
            &[t, f],
        );
        let _ = (uacl, towner);
        b
    }

    #[test]
    fn include_table_takes_its_entries_and_dependencies_not_other_tables() {
        let b = sample();
        let f = ObjectFilter {
            include_tables: vec![q("s1", "t")],
            ..Default::default()
        };
        let got = names(&select(&b.0, &f));
        assert_eq!(
            got,
            vec![
                "ROLE .r",
                "SCHEMA .s1",
                "FUNCTION s1.trg()",
                "COMMENT s1.FUNCTION trg()",
                "SEQUENCE s1.t_id_seq",
                "TABLE s1.t",
                "SEQUENCE OWNED BY s1.t_id_seq",
                "OWNER s1.TABLE t",
                "INDEX s1.t_idx",
                "TRIGGER s1.t_trg",
            ]
        );
        assert_eq!(selected_tables(&b.0, &f), vec![q("s1", "t")]);
    }

    #[test]
    fn include_partitioned_parent_takes_partitions() {
        let b = sample();
        let f = ObjectFilter {
            include_tables: vec![q("s1", "p")],
            ..Default::default()
        };
        let got = names(&select(&b.0, &f));
        assert!(got.contains(&"TABLE s1.p1".to_string()), "{got:?}");
        assert!(got.contains(&"TABLE ATTACH s1.p1".to_string()), "{got:?}");
        assert_eq!(selected_tables(&b.0, &f), vec![q("s1", "p"), q("s1", "p1")]);
        // A leaf alone brings its parent's definition (no data) and attaches.
        let f = ObjectFilter {
            include_tables: vec![q("s1", "p1")],
            ..Default::default()
        };
        let got = names(&select(&b.0, &f));
        assert!(got.contains(&"TABLE s1.p".to_string()), "{got:?}");
        assert!(got.contains(&"TABLE ATTACH s1.p1".to_string()), "{got:?}");
        assert_eq!(selected_tables(&b.0, &f), vec![q("s1", "p1")]);
    }

    #[test]
    fn include_schema_pulls_dependencies_from_other_schemas() {
        let b = sample();
        let f = ObjectFilter {
            include_schemas: vec!["s2".into()],
            ..Default::default()
        };
        let got = names(&select(&b.0, &f));
        assert_eq!(
            got,
            vec![
                "ROLE .r",
                "SCHEMA .s2",
                "EXTENSION .hstore",
                "TABLE s2.u",
                "ACL s2.TABLE u",
                "CONSTRAINT s2.u_pkey",
            ]
        );
    }

    #[test]
    fn include_schema_with_view_pulls_table_definition_and_drops_fk_to_unchosen() {
        let b = sample();
        let f = ObjectFilter {
            include_schemas: vec!["s1".into()],
            ..Default::default()
        };
        let got = names(&select(&b.0, &f));
        assert!(got.contains(&"VIEW s1.v".to_string()));
        assert!(got.contains(&"COMMENT s1.VIEW v".to_string()));
        assert!(!got.iter().any(|n| n.contains("t_u_fk")), "{got:?}");
        assert!(!got.iter().any(|n| n.contains("s2")), "{got:?}");
        assert!(!got.iter().any(|n| n.contains("hstore")), "{got:?}");
    }

    #[test]
    fn exclude_table_removes_dependents() {
        let b = sample();
        let f = ObjectFilter {
            exclude_tables: vec![q("s1", "t")],
            ..Default::default()
        };
        let got = names(&select(&b.0, &f));
        for gone in [
            "TABLE s1.t",
            "VIEW s1.v",
            "COMMENT s1.VIEW v",
            "INDEX s1.t_idx",
            "SEQUENCE s1.t_id_seq",
            "FK CONSTRAINT s1.t_u_fk",
        ] {
            assert!(!got.contains(&gone.to_string()), "{gone} in {got:?}");
        }
        for kept in [
            "TABLE s2.u",
            "TABLE s1.p1",
            "FUNCTION s1.trg()",
            "EXTENSION .hstore",
            "CONSTRAINT s2.u_pkey",
        ] {
            assert!(got.contains(&kept.to_string()), "{kept} not in {got:?}");
        }
        assert_eq!(
            selected_tables(&b.0, &f),
            vec![q("s1", "p"), q("s1", "p1"), q("s2", "u")]
        );
    }

    #[test]
    fn exclude_schema_removes_its_objects_and_their_dependents() {
        let b = sample();
        let f = ObjectFilter {
            exclude_schemas: vec!["s2".into()],
            ..Default::default()
        };
        let got = names(&select(&b.0, &f));
        for gone in [
            "SCHEMA .s2",
            "TABLE s2.u",
            "EXTENSION .hstore",
            "FK CONSTRAINT s1.t_u_fk",
        ] {
            assert!(!got.contains(&gone.to_string()), "{gone} in {got:?}");
        }
        assert!(got.contains(&"TABLE s1.t".to_string()));
        assert!(got.contains(&"INDEX s1.t_idx".to_string()));
    }

    #[test]
    fn excluded_partition_leaves_parent() {
        let b = sample();
        let f = ObjectFilter {
            exclude_tables: vec![q("s1", "p1")],
            ..Default::default()
        };
        let got = names(&select(&b.0, &f));
        assert!(got.contains(&"TABLE s1.p".to_string()));
        assert!(!got.contains(&"TABLE s1.p1".to_string()));
        assert!(!got.contains(&"TABLE ATTACH s1.p1".to_string()));
        // Excluding the parent excludes its partitions.
        let f = ObjectFilter {
            exclude_tables: vec![q("s1", "p")],
            ..Default::default()
        };
        let got = names(&select(&b.0, &f));
        assert!(!got.contains(&"TABLE s1.p1".to_string()), "{got:?}");
    }

    #[test]
    fn empty_filter_keeps_everything_in_order() {
        let b = sample();
        let got = select(&b.0, &ObjectFilter::default());
        assert_eq!(got.len(), b.0.len());
        let ids: Vec<u32> = got.iter().map(|e| e.id).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted);
    }
}
