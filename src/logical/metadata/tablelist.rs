//! The tables whose rows a logical backup copies.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::filter::ObjectFilter;
use super::{not_extension_member, query, quote_ident, user_schema, RowExt};
use crate::error::Result;
use crate::logical::toc::QualifiedName;
use crate::pg::conn::PgConn;

/// A table to copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    pub name: QualifiedName,
    pub oid: u32,
    /// 'r' (a table or leaf partition) or 'p' (a partitioned table copied
    /// as a whole: `COPY (SELECT ...) TO`, and `COPY ... FROM` into it
    /// routes the rows to its partitions).
    pub relkind: char,
    pub is_partition_parent: bool,
    pub is_leaf_partition: bool,
    /// Column names as in the catalogs (unquoted), in column order,
    /// without generated columns (COPY FROM cannot fill them).
    pub columns: Vec<String>,
    /// Size on disk (with TOAST; for a partitioned table, of its
    /// partitions): an estimate for scheduling.
    pub estimated_bytes: u64,
}

impl TableInfo {
    /// `schema.table`, quoted for SQL.
    pub fn qualified(&self) -> String {
        self.name.quoted()
    }

    /// `(a, "B", c)`: the column list for COPY.
    pub fn column_list(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        format!("({})", cols.join(", "))
    }
}

#[derive(Debug, Clone)]
struct Rel {
    info: TableInfo,
    parent: Option<u32>,
}

/// The tables whose data a backup with `filter` copies, biggest first (by
/// name among equals): plain tables and, with `leaf_partition_data`, each
/// leaf partition on its own; without it, a partitioned table as a whole
/// (its leaves are not listed), unless the filter leaves out some of its
/// partitions, then the chosen partitions one by one. Views, materialized
/// views (refreshed on restore), foreign, temporary and extension tables
/// are not listed. A partition is chosen with its partitioned ancestors
/// (see [`ObjectFilter`]). Only SELECTs: runs in the backup's transaction.
pub async fn list_tables(
    conn: &mut PgConn,
    filter: &ObjectFilter,
    leaf_partition_data: bool,
) -> Result<Vec<TableInfo>> {
    let sql = format!(
        "SELECT c.oid, n.nspname, c.relname, c.relkind::text AS relkind, c.relispartition, \
                (SELECT i.inhparent FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid AND c.relispartition) AS parent, \
                CASE WHEN c.relkind = 'r' THEN pg_catalog.pg_table_size(c.oid) ELSE 0 END AS bytes, \
                (SELECT pg_catalog.json_agg(a.attname ORDER BY a.attnum) FROM pg_catalog.pg_attribute a \
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '') AS columns \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind IN ('r', 'p') AND c.relpersistence <> 't' AND {user} AND {ext}",
        user = user_schema("n"),
        ext = not_extension_member("pg_class", "c.oid"),
    );
    let mut rels: HashMap<u32, Rel> = HashMap::new();
    for r in query(conn, "tables to copy", &sql).await? {
        let oid = r.oid("oid")?;
        let relkind = r.text("relkind")?.chars().next().unwrap_or('r');
        let is_partition = r.flag("relispartition")?;
        rels.insert(
            oid,
            Rel {
                info: TableInfo {
                    name: super::qname(&r.text("nspname")?, &r.text("relname")?),
                    oid,
                    relkind,
                    is_partition_parent: relkind == 'p',
                    is_leaf_partition: relkind == 'r' && is_partition,
                    columns: r.opt_json("columns")?.unwrap_or_default(),
                    estimated_bytes: r.int("bytes")?.max(0) as u64,
                },
                parent: r.opt("parent")?.and_then(|p| p.parse().ok()),
            },
        );
    }
    Ok(choose(rels, filter, leaf_partition_data))
}

fn choose(
    rels: HashMap<u32, Rel>,
    filter: &ObjectFilter,
    leaf_partition_data: bool,
) -> Vec<TableInfo> {
    let lineage = |oid: u32| {
        let mut chain = vec![oid];
        while let Some(p) = rels
            .get(chain.last().expect("non-empty"))
            .and_then(|r| r.parent)
        {
            if chain.contains(&p) || !rels.contains_key(&p) {
                break;
            }
            chain.push(p);
        }
        chain
    };
    let chosen = |oid: u32| {
        let chain = lineage(oid);
        chain
            .iter()
            .any(|o| filter.includes_table(&rels[o].info.name))
            && !chain
                .iter()
                .any(|o| filter.excludes_table(&rels[o].info.name))
    };
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (oid, r) in &rels {
        if let Some(p) = r.parent {
            children.entry(p).or_default().push(*oid);
        }
    }
    // Leaves under a relation (itself for a plain table).
    fn leaves(
        oid: u32,
        rels: &HashMap<u32, Rel>,
        children: &HashMap<u32, Vec<u32>>,
        out: &mut Vec<u32>,
    ) {
        if rels[&oid].info.relkind == 'r' {
            out.push(oid);
        }
        for c in children.get(&oid).into_iter().flatten() {
            leaves(*c, rels, children, out);
        }
    }
    let mut out: Vec<TableInfo> = Vec::new();
    if leaf_partition_data {
        out.extend(
            rels.values()
                .filter(|r| r.info.relkind == 'r' && chosen(r.info.oid))
                .map(|r| r.info.clone()),
        );
    } else {
        let mut unit_memo: HashMap<u32, bool> = HashMap::new();
        let mut unit = |oid: u32| -> bool {
            if let Some(&u) = unit_memo.get(&oid) {
                return u;
            }
            let mut ls = Vec::new();
            leaves(oid, &rels, &children, &mut ls);
            let u = chosen(oid) && ls.iter().all(|&l| chosen(l));
            unit_memo.insert(oid, u);
            u
        };
        for r in rels.values() {
            let oid = r.info.oid;
            if !unit(oid) || r.parent.is_some_and(|p| rels.contains_key(&p) && unit(p)) {
                continue;
            }
            let mut info = r.info.clone();
            if info.relkind == 'p' {
                let mut ls = Vec::new();
                leaves(oid, &rels, &children, &mut ls);
                info.estimated_bytes = ls.iter().map(|l| rels[l].info.estimated_bytes).sum();
            }
            out.push(info);
        }
    }
    out.sort_by(|a, b| {
        b.estimated_bytes
            .cmp(&a.estimated_bytes)
            .then_with(|| a.name.cmp(&b.name))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(oid: u32, name: &str, relkind: char, parent: Option<u32>, bytes: u64) -> (u32, Rel) {
        (
            oid,
            Rel {
                info: TableInfo {
                    name: QualifiedName {
                        schema: "s".into(),
                        name: name.into(),
                    },
                    oid,
                    relkind,
                    is_partition_parent: relkind == 'p',
                    is_leaf_partition: relkind == 'r' && parent.is_some(),
                    columns: vec!["a".into(), "B b".into()],
                    estimated_bytes: bytes,
                },
                parent,
            },
        )
    }

    /// t (plain), p → p1, p2 → (p2a, p2b)
    fn sample() -> HashMap<u32, Rel> {
        [
            rel(1, "t", 'r', None, 10),
            rel(2, "p", 'p', None, 0),
            rel(3, "p1", 'r', Some(2), 100),
            rel(4, "p2", 'p', Some(2), 0),
            rel(5, "p2a", 'r', Some(4), 5),
            rel(6, "p2b", 'r', Some(4), 1),
        ]
        .into_iter()
        .collect()
    }

    fn names(t: &[TableInfo]) -> Vec<&str> {
        t.iter().map(|t| t.name.name.as_str()).collect()
    }

    fn q(n: &str) -> QualifiedName {
        QualifiedName {
            schema: "s".into(),
            name: n.into(),
        }
    }

    #[test]
    fn whole_partitioned_tables_or_leaves() {
        let all = ObjectFilter::default();
        let got = choose(sample(), &all, false);
        assert_eq!(names(&got), vec!["p", "t"]);
        assert_eq!(got[0].estimated_bytes, 106);
        assert!(got[0].is_partition_parent);
        let got = choose(sample(), &all, true);
        assert_eq!(names(&got), vec!["p1", "t", "p2a", "p2b"]);
        assert!(got[0].is_leaf_partition);
    }

    #[test]
    fn filters_on_partitions() {
        let f = ObjectFilter {
            include_tables: vec![q("p2")],
            ..Default::default()
        };
        assert_eq!(names(&choose(sample(), &f, false)), vec!["p2"]);
        assert_eq!(names(&choose(sample(), &f, true)), vec!["p2a", "p2b"]);
        let f = ObjectFilter {
            exclude_tables: vec![q("p2b")],
            ..Default::default()
        };
        assert_eq!(names(&choose(sample(), &f, false)), vec!["p1", "t", "p2a"]);
        let f = ObjectFilter {
            exclude_tables: vec![q("p")],
            ..Default::default()
        };
        assert_eq!(names(&choose(sample(), &f, false)), vec!["t"]);
    }

    #[test]
    fn column_list_quotes() {
        let (_, r) = rel(1, "T x", 'r', None, 0);
        assert_eq!(r.info.column_list(), "(a, \"B b\")");
        assert_eq!(r.info.qualified(), "s.\"T x\"");
    }
}
