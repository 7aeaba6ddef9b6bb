//! Dependency ordering: the collected objects form a graph whose edges come
//! from `pg_depend` (mapped from catalog objects to the entries that create
//! them) plus the links the collectors know (a comment needs its object, a
//! grant its owner change, ...). The graph is sorted topologically, ties
//! broken by section, then by the natural kind order (schemas, types,
//! functions, sequences, tables, views; indexes, constraints, foreign keys,
//! triggers...), then by collection order, which is by name.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use crate::logical::toc::{ObjectKind, QualifiedName, Section, TocEntry};

/// System OIDs of the catalogs whose rows appear in `pg_depend` (fixed
/// since they were assigned; the same in Greenplum and Cloudberry).
pub(crate) mod class {
    pub const PG_TYPE: u32 = 1247;
    pub const PG_PROC: u32 = 1255;
    pub const PG_CLASS: u32 = 1259;
    pub const PG_ATTRDEF: u32 = 2604;
    pub const PG_CONSTRAINT: u32 = 2606;
    pub const PG_NAMESPACE: u32 = 2615;
    pub const PG_REWRITE: u32 = 2618;
    pub const PG_TRIGGER: u32 = 2620;
    pub const PG_DEFAULT_ACL: u32 = 826;
    pub const PG_POLICY: u32 = 3256;
    pub const PG_STATISTIC_EXT: u32 = 3381;
    pub const PG_COLLATION: u32 = 3456;
    pub const PG_EXTENSION: u32 = 3079;
    /// Shared: tables name their tablespace, pg_depend does not.
    pub const PG_TABLESPACE: u32 = 1213;
    pub const PG_AM: u32 = 2601;
    pub const PG_AMOP: u32 = 2602;
    pub const PG_AMPROC: u32 = 2603;
    pub const PG_CAST: u32 = 2605;
    pub const PG_CONVERSION: u32 = 2607;
    pub const PG_LANGUAGE: u32 = 2612;
    pub const PG_OPCLASS: u32 = 2616;
    pub const PG_OPERATOR: u32 = 2617;
    pub const PG_OPFAMILY: u32 = 2753;
    pub const PG_TRANSFORM: u32 = 3576;
    pub const PG_TS_DICT: u32 = 3600;
    pub const PG_TS_PARSER: u32 = 3601;
    pub const PG_TS_CONFIG: u32 = 3602;
    pub const PG_TS_TEMPLATE: u32 = 3764;
    pub const PG_FOREIGN_DATA_WRAPPER: u32 = 2328;
    pub const PG_FOREIGN_SERVER: u32 = 1417;
    pub const PG_USER_MAPPING: u32 = 1418;
    pub const PG_EVENT_TRIGGER: u32 = 3466;
    pub const PG_PUBLICATION: u32 = 6104;
    pub const PG_PUBLICATION_NAMESPACE: u32 = 6237;
    pub const PG_PUBLICATION_REL: u32 = 6106;
}

/// A catalog row, as `pg_depend` names it: (catalog OID, row OID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ObjRef {
    pub class: u32,
    pub oid: u32,
}

impl ObjRef {
    pub fn new(class: u32, oid: u32) -> ObjRef {
        ObjRef { class, oid }
    }
}

/// Something an entry must come after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dep {
    /// The entry that creates this catalog object (ignored when none does,
    /// e.g. a built-in object).
    Obj(ObjRef),
    /// Another entry.
    Node(usize),
    /// The ROLE entry of this role (ignored when roles are not collected).
    Role(String),
}

/// An entry before ids are assigned.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub section: Section,
    pub kind: ObjectKind,
    pub schema: String,
    pub name: String,
    pub owner_table: Option<QualifiedName>,
    pub statement: String,
    pub deps: Vec<Dep>,
}

impl Node {
    pub fn new(section: Section, kind: impl Into<ObjectKind>, schema: &str, name: &str) -> Node {
        Node {
            section,
            kind: kind.into(),
            schema: schema.to_string(),
            name: name.to_string(),
            owner_table: None,
            statement: String::new(),
            deps: Vec::new(),
        }
    }

    pub fn owner_table(mut self, table: Option<QualifiedName>) -> Node {
        self.owner_table = table;
        self
    }

    pub fn statement(mut self, sql: impl Into<String>) -> Node {
        self.statement = sql.into();
        self
    }

    pub fn dep(mut self, dep: Dep) -> Node {
        self.deps.push(dep);
        self
    }
}

/// One row of `pg_depend` (deptype 'n' or 'a').
#[derive(Debug, Clone, Copy)]
pub(crate) struct DependRow {
    pub from: ObjRef,
    pub to: ObjRef,
    pub auto: bool,
}

/// The collected objects and which catalog rows each creates.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    pub nodes: Vec<Node>,
    objs: HashMap<ObjRef, usize>,
    roles: HashMap<String, usize>,
    /// Sequences owned by a column (serial, OWNED BY): their automatic
    /// dependency on the table is the separate OWNED BY entry, not an
    /// ordering constraint of the sequence itself.
    owned_sequences: HashSet<u32>,
    /// (materialized view entry, its REFRESH entry).
    refreshes: Vec<(usize, usize)>,
    /// `pg_depend` edges (from, to) that go to another entry than the one
    /// creating `to`: a base type's I/O functions need only its shell.
    redirects: HashMap<(ObjRef, ObjRef), usize>,
    /// Entries replayed after every other one (event triggers, which would
    /// fire on the restore's own statements).
    last: HashSet<usize>,
    /// Whatever depends on the object also needs these entries: a stored
    /// expression calling a cast's function is printed as the cast.
    also: HashMap<ObjRef, Vec<usize>>,
}

impl Graph {
    pub fn add(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// `node` creates catalog object `obj` (first binding wins).
    pub fn bind(&mut self, obj: ObjRef, node: usize) {
        self.objs.entry(obj).or_insert(node);
    }

    pub fn node_of(&self, obj: ObjRef) -> Option<usize> {
        self.objs.get(&obj).copied()
    }

    pub fn bind_role(&mut self, name: &str, node: usize) {
        self.roles.insert(name.to_string(), node);
    }

    pub fn mark_owned_sequence(&mut self, oid: u32) {
        self.owned_sequences.insert(oid);
    }

    /// `refresh` fills materialized view `matview`: it must follow the
    /// refreshes of the materialized views `matview` reads.
    pub fn mark_refresh(&mut self, matview: usize, refresh: usize) {
        self.refreshes.push((matview, refresh));
    }

    /// The `pg_depend` edge from `from` to `to` goes to entry `node`.
    pub fn redirect(&mut self, from: ObjRef, to: ObjRef, node: usize) {
        self.redirects.insert((from, to), node);
    }

    /// Every entry depending on `obj` also depends on `node`.
    pub fn also_needs(&mut self, obj: ObjRef, node: usize) {
        self.also.entry(obj).or_default().push(node);
    }

    /// `node` is replayed after every entry not so marked.
    pub fn mark_last(&mut self, node: usize) {
        self.last.insert(node);
    }

    /// Resolve dependencies, fix sections, sort, number the entries.
    pub fn finish(mut self, depend: &[DependRow]) -> Vec<TocEntry> {
        let n = self.nodes.len();
        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, node) in self.nodes.iter().enumerate() {
            for dep in &node.deps {
                let target = match dep {
                    Dep::Obj(obj) => self.objs.get(obj).copied(),
                    Dep::Node(j) => Some(*j),
                    Dep::Role(r) => self.roles.get(r).copied(),
                };
                if let Some(j) = target {
                    if j != i {
                        edges[i].push(j);
                    }
                }
            }
        }
        for row in depend {
            if row.auto
                && row.from.class == class::PG_CLASS
                && row.to.class == class::PG_CLASS
                && self.owned_sequences.contains(&row.from.oid)
            {
                continue;
            }
            let to = self
                .redirects
                .get(&(row.from, row.to))
                .or_else(|| self.objs.get(&row.to));
            if let (Some(&a), Some(&b)) = (self.objs.get(&row.from), to) {
                if a != b {
                    edges[a].push(b);
                }
            }
            if let (Some(&a), Some(more)) = (self.objs.get(&row.from), self.also.get(&row.to)) {
                edges[a].extend(more.iter().copied().filter(|&m| m != a));
            }
        }
        // A refresh reads the materialized views its view reaches.
        let refresh_of: HashMap<usize, usize> = self.refreshes.iter().copied().collect();
        for &(matview, refresh) in &self.refreshes {
            let mut seen = HashSet::new();
            let mut stack = edges[matview].clone();
            while let Some(k) = stack.pop() {
                if !seen.insert(k) {
                    continue;
                }
                if let Some(&r) = refresh_of.get(&k) {
                    if r != refresh {
                        edges[refresh].push(r);
                    }
                }
                stack.extend(edges[k].iter().copied());
            }
        }
        // (Also on pre-data entries: the sections are fixed later.)
        for &l in &self.last {
            for (i, node) in self.nodes.iter().enumerate() {
                if !self.last.contains(&i) && node.section <= self.nodes[l].section {
                    edges[l].push(i);
                }
            }
        }
        for e in &mut edges {
            e.sort_unstable();
            e.dedup();
        }
        fix_sections(&mut self.nodes, &edges);
        let order = sort(&self.nodes, &edges);
        let mut id_of = vec![0u32; n];
        for (pos, &i) in order.iter().enumerate() {
            id_of[i] = pos as u32 + 1;
        }
        let mut nodes: Vec<Option<Node>> = self.nodes.into_iter().map(Some).collect();
        order
            .iter()
            .map(|&i| {
                let node = nodes[i].take().expect("each node once");
                let mut depends_on: Vec<u32> = edges[i].iter().map(|&j| id_of[j]).collect();
                depends_on.sort_unstable();
                TocEntry {
                    id: id_of[i],
                    section: node.section,
                    kind: node.kind,
                    schema: node.schema,
                    name: node.name,
                    owner_table: node.owner_table,
                    depends_on,
                    statement: node.statement,
                }
            })
            .collect()
    }
}

/// Kinds a table's data needs before the COPY: these (and what they depend
/// on) stay in pre-data whatever depends on them.
fn needed_for_data(kind: &ObjectKind) -> bool {
    matches!(
        kind,
        ObjectKind::Table | ObjectKind::TableAttach | ObjectKind::SequenceSet
    )
}

/// An entry in an earlier section must not depend on one in a later
/// section. When a pre-data entry depends on a post-data one (a view
/// grouping by a primary key depends on that constraint): if the data
/// needs the pre-data entry (a table, or something a table needs), the
/// post-data entry and its dependencies move to pre-data; otherwise the
/// pre-data entry and everything depending on it move to post-data.
fn fix_sections(nodes: &mut [Node], edges: &[Vec<usize>]) {
    let n = nodes.len();
    let mut must_pre = vec![false; n];
    let mut stack: Vec<usize> = (0..n)
        .filter(|&i| needed_for_data(&nodes[i].kind))
        .collect();
    while let Some(i) = stack.pop() {
        if must_pre[i] {
            continue;
        }
        must_pre[i] = true;
        stack.extend(edges[i].iter().copied());
    }
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, e) in edges.iter().enumerate() {
        for &j in e {
            dependents[j].push(i);
        }
    }
    loop {
        let mut changed = false;
        for i in 0..n {
            for &j in &edges[i] {
                if nodes[j].section <= nodes[i].section {
                    continue;
                }
                changed = true;
                if must_pre[i] || nodes[i].section == Section::Globals {
                    // Pull the dependency (and its own) earlier.
                    let target = nodes[i].section;
                    let mut stack = vec![j];
                    while let Some(k) = stack.pop() {
                        if nodes[k].section > target {
                            nodes[k].section = target;
                            stack.extend(edges[k].iter().copied());
                        }
                    }
                } else {
                    // Push the dependent (and its dependents) later.
                    let target = nodes[j].section;
                    let mut stack = vec![i];
                    while let Some(k) = stack.pop() {
                        if nodes[k].section < target && !must_pre[k] {
                            nodes[k].section = target;
                            stack.extend(dependents[k].iter().copied());
                        }
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
}

/// Natural order of kinds, to break ties between independent entries.
pub(crate) fn kind_rank(kind: &ObjectKind) -> u8 {
    match kind {
        ObjectKind::Role => 0,
        ObjectKind::RoleGrant => 1,
        ObjectKind::Tablespace => 2,
        ObjectKind::DatabaseProperties => 3,
        ObjectKind::Schema => 10,
        ObjectKind::Extension => 11,
        ObjectKind::ProceduralLanguage => 11,
        ObjectKind::AccessMethod => 11,
        ObjectKind::ForeignDataWrapper => 11,
        ObjectKind::Server => 11,
        ObjectKind::UserMapping => 11,
        ObjectKind::Collation => 12,
        ObjectKind::ShellType => 12,
        ObjectKind::Type => 13,
        ObjectKind::Domain => 14,
        ObjectKind::Function | ObjectKind::Procedure => 15,
        ObjectKind::Aggregate => 16,
        ObjectKind::Operator => 16,
        ObjectKind::OperatorFamily => 16,
        ObjectKind::OperatorClass => 16,
        ObjectKind::Cast => 16,
        ObjectKind::Transform => 16,
        ObjectKind::Conversion => 16,
        ObjectKind::TextSearchParser => 16,
        ObjectKind::TextSearchTemplate => 16,
        ObjectKind::TextSearchDictionary => 16,
        ObjectKind::TextSearchConfiguration => 16,
        ObjectKind::Sequence => 17,
        ObjectKind::Table => 18,
        ObjectKind::ForeignTable => 18,
        ObjectKind::TableAttach => 19,
        ObjectKind::SequenceOwnedBy => 20,
        ObjectKind::Default => 20,
        ObjectKind::SequenceSet => 21,
        ObjectKind::View => 22,
        ObjectKind::MaterializedView => 23,
        ObjectKind::Index => 30,
        ObjectKind::Constraint => 31,
        ObjectKind::IndexAttach => 32,
        ObjectKind::FkConstraint => 33,
        ObjectKind::Trigger => 34,
        ObjectKind::Rule => 35,
        ObjectKind::Policy => 36,
        ObjectKind::RowSecurity => 37,
        ObjectKind::Statistics => 38,
        ObjectKind::MaterializedViewData => 39,
        ObjectKind::DefaultAcl => 40,
        ObjectKind::Publication => 41,
        ObjectKind::PublicationTable => 42,
        ObjectKind::PublicationTablesInSchema => 42,
        ObjectKind::EventTrigger => 45,
        ObjectKind::Owner => 50,
        ObjectKind::Comment => 51,
        ObjectKind::Acl => 52,
        _ => 60,
    }
}

/// Topological order: among the entries whose dependencies are all placed,
/// the first by (section, kind rank, collection order). A cycle (which
/// PostgreSQL's own dependencies should not produce) is broken at its
/// first entry in that order, with a warning.
fn sort(nodes: &[Node], edges: &[Vec<usize>]) -> Vec<usize> {
    let n = nodes.len();
    let key = |i: usize| (nodes[i].section, kind_rank(&nodes[i].kind), i);
    let mut missing: Vec<usize> = edges.iter().map(|e| e.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, e) in edges.iter().enumerate() {
        for &j in e {
            dependents[j].push(i);
        }
    }
    let mut ready: BinaryHeap<Reverse<(Section, u8, usize)>> = (0..n)
        .filter(|&i| missing[i] == 0)
        .map(|i| Reverse(key(i)))
        .collect();
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let i = match ready.pop() {
            Some(Reverse((_, _, i))) => i,
            None => {
                let i = (0..n)
                    .filter(|&i| !placed[i])
                    .min_by_key(|&i| key(i))
                    .expect("unplaced entries remain");
                tracing::warn!(
                    "circular dependency among the objects, involving {} {}.{}: it is \
                     replayed before some of the objects it depends on and may fail to restore",
                    nodes[i].kind,
                    nodes[i].schema,
                    nodes[i].name
                );
                i
            }
        };
        if placed[i] {
            continue;
        }
        placed[i] = true;
        order.push(i);
        for &d in &dependents[i] {
            missing[d] -= 1;
            if missing[d] == 0 && !placed[d] {
                ready.push(Reverse(key(d)));
            }
        }
    }
    order
}

/// Sort `entries` by their dependencies, stable by id; dependencies outside
/// `entries` are ignored.
pub fn sort_entries(entries: Vec<TocEntry>) -> Vec<TocEntry> {
    let index: HashMap<u32, usize> = entries.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
    let n = entries.len();
    let mut missing = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, e) in entries.iter().enumerate() {
        for d in &e.depends_on {
            if let Some(&j) = index.get(d) {
                if j != i {
                    missing[i] += 1;
                    dependents[j].push(i);
                }
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<(u32, usize)>> = (0..n)
        .filter(|&i| missing[i] == 0)
        .map(|i| Reverse((entries[i].id, i)))
        .collect();
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let i = match ready.pop() {
            Some(Reverse((_, i))) => i,
            None => (0..n)
                .filter(|&i| !placed[i])
                .min_by_key(|&i| entries[i].id)
                .expect("unplaced entries remain"),
        };
        if placed[i] {
            continue;
        }
        placed[i] = true;
        order.push(i);
        for &d in &dependents[i] {
            missing[d] = missing[d].saturating_sub(1);
            if missing[d] == 0 && !placed[d] {
                ready.push(Reverse((entries[d].id, d)));
            }
        }
    }
    let mut slots: Vec<Option<TocEntry>> = entries.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|i| slots[i].take().expect("each entry once"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32, deps: &[u32]) -> TocEntry {
        TocEntry {
            id,
            section: Section::PreData,
            kind: "TABLE".into(),
            schema: "s".into(),
            name: format!("t{id}"),
            owner_table: None,
            depends_on: deps.to_vec(),
            statement: String::new(),
        }
    }

    #[test]
    fn sort_of_shuffled_and_random_graphs() {
        // Deterministic pseudo-random DAGs (edges only to lower ids), listed
        // in a scrambled order.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..50 {
            let n = 5 + (round % 40) as u32;
            let mut entries: Vec<TocEntry> = (1..=n)
                .map(|id| {
                    let deps: Vec<u32> = (1..id).filter(|_| next() % 4 == 0).collect();
                    entry(id, &deps)
                })
                .collect();
            entries.sort_by_key(|e| (e.id * 7919) % (n + 3));
            let sorted = sort_entries(entries.clone());
            let pos: HashMap<u32, usize> =
                sorted.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
            for e in &sorted {
                for d in &e.depends_on {
                    assert!(pos[d] < pos[&e.id]);
                }
            }
        }
    }

    #[test]
    fn sort_entries_is_stable_by_id() {
        let entries = vec![entry(5, &[]), entry(3, &[5]), entry(1, &[]), entry(2, &[])];
        let ids: Vec<u32> = sort_entries(entries).iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![1, 2, 5, 3]);
    }

    fn node(section: Section, kind: &'static str, name: &str) -> Node {
        Node::new(section, kind, "s", name).statement(format!("-- {name}"))
    }

    #[test]
    fn finish_orders_by_dependencies_then_kind() {
        let mut g = Graph::default();
        let view = g.add(node(Section::PreData, "VIEW", "v"));
        let table = g.add(node(Section::PreData, "TABLE", "t"));
        let schema = g.add(node(Section::PreData, "SCHEMA", "s"));
        let index = g.add(node(Section::PostData, "INDEX", "i"));
        g.nodes[view]
            .deps
            .push(Dep::Obj(ObjRef::new(class::PG_CLASS, 100)));
        g.nodes[table].deps.push(Dep::Node(schema));
        g.nodes[index].deps.push(Dep::Node(table));
        g.bind(ObjRef::new(class::PG_CLASS, 100), table);
        let entries = g.finish(&[]);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["s", "t", "v", "i"]);
        assert_eq!(entries[1].depends_on, vec![1]);
        assert_eq!(entries[2].depends_on, vec![2]);
        assert_eq!(entries[3].depends_on, vec![2]);
    }

    #[test]
    fn view_on_a_primary_key_moves_to_post_data() {
        let mut g = Graph::default();
        let table = g.add(node(Section::PreData, "TABLE", "t"));
        let pk = g.add(node(Section::PostData, "CONSTRAINT", "t_pkey"));
        let view = g.add(node(Section::PreData, "VIEW", "v"));
        let comment = g.add(node(Section::PreData, "COMMENT", "VIEW v"));
        g.nodes[pk].deps.push(Dep::Node(table));
        g.nodes[view].deps.push(Dep::Node(pk));
        g.nodes[comment].deps.push(Dep::Node(view));
        let entries = g.finish(&[]);
        let by_name: HashMap<&str, &TocEntry> =
            entries.iter().map(|e| (e.name.as_str(), e)).collect();
        assert_eq!(by_name["t"].section, Section::PreData);
        assert_eq!(by_name["t_pkey"].section, Section::PostData);
        assert_eq!(by_name["v"].section, Section::PostData);
        assert_eq!(by_name["VIEW v"].section, Section::PostData);
        assert!(by_name["v"].id > by_name["t_pkey"].id);
    }

    #[test]
    fn table_needing_a_post_data_object_pulls_it_forward() {
        let mut g = Graph::default();
        let func = g.add(node(Section::PostData, "FUNCTION", "f"));
        let dep_of_func = g.add(node(Section::PostData, "INDEX", "i"));
        let table = g.add(node(Section::PreData, "TABLE", "t"));
        g.nodes[func].deps.push(Dep::Node(dep_of_func));
        g.nodes[table].deps.push(Dep::Node(func));
        let entries = g.finish(&[]);
        assert!(entries.iter().all(|e| e.section == Section::PreData));
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["i", "f", "t"]);
    }

    #[test]
    fn owned_sequence_auto_dependency_is_not_an_ordering_edge() {
        let mut g = Graph::default();
        let seq = g.add(node(Section::PreData, "SEQUENCE", "q"));
        let table = g.add(node(Section::PreData, "TABLE", "t"));
        let seq_obj = ObjRef::new(class::PG_CLASS, 200);
        let table_obj = ObjRef::new(class::PG_CLASS, 201);
        let attrdef = ObjRef::new(class::PG_ATTRDEF, 202);
        g.bind(seq_obj, seq);
        g.bind(table_obj, table);
        g.bind(attrdef, table);
        g.mark_owned_sequence(200);
        let depend = [
            DependRow {
                from: seq_obj,
                to: table_obj,
                auto: true,
            },
            DependRow {
                from: attrdef,
                to: seq_obj,
                auto: false,
            },
        ];
        let entries = g.finish(&depend);
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, vec!["q", "t"]);
        assert_eq!(entries[1].depends_on, vec![1]);
        assert!(entries[0].depends_on.is_empty());
    }

    #[test]
    fn cycles_are_broken_not_looped() {
        let mut g = Graph::default();
        let a = g.add(node(Section::PreData, "FUNCTION", "a"));
        let b = g.add(node(Section::PreData, "TABLE", "b"));
        g.nodes[a].deps.push(Dep::Node(b));
        g.nodes[b].deps.push(Dep::Node(a));
        let entries = g.finish(&[]);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].name, "a");
    }
}
