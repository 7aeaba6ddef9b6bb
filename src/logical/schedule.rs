//! The order of a restore's data loads and post-data statements on its
//! `--jobs` connections, as one schedule: an index or a primary key, unique
//! or exclusion constraint of a table whose rows are loaded is built while
//! the other connections are still loading other tables (as pg_restore -j
//! does); everything else of the post-data section (foreign keys, triggers, rules, policies, attached
//! partition indexes, materialized view data...) waits until every table is
//! loaded, then runs as its dependencies allow.
//!
//! Pure bookkeeping, with no I/O: the restore asks [`Schedule::next_work`] for
//! work whenever a connection is free and reports what ended.

use std::collections::{HashMap, HashSet, VecDeque};

use super::toc::{ObjectKind, QualifiedName, TocEntry};

/// What a free connection does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Load the table at this index of the loads handed to [`Schedule::new`].
    Load(usize),
    /// Run the post-data entry at this index of the entries.
    Post(usize),
    /// Nothing can start before something running ends.
    Wait,
    /// Nothing is left to start.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Pending,
    Running,
    Ended,
}

struct Item {
    status: Status,
    /// Post-data entries (indexes into `items`) that must end first.
    waits: Vec<usize>,
    /// The loaded table it may start after, before the data section ends.
    early_after: Option<QualifiedName>,
}

/// The state of one restore's schedule.
pub struct Schedule {
    /// Loads not started, biggest first (indexes into the caller's loads).
    loads: VecDeque<usize>,
    loading: usize,
    /// Every table a load fills, and those whose load ended.
    targets: HashSet<QualifiedName>,
    loaded: HashSet<QualifiedName>,
    items: Vec<Item>,
    stopped: bool,
}

/// Whether an entry only reads its own table's rows (an index build, or a
/// constraint that builds one), so it may run once that table is loaded.
fn reads_only_its_table(e: &TocEntry) -> bool {
    match e.kind {
        ObjectKind::Index => true,
        ObjectKind::Constraint => {
            let s = e.statement.to_ascii_uppercase();
            s.contains(" PRIMARY KEY") || s.contains(" UNIQUE") || s.contains(" EXCLUDE")
        }
        _ => false,
    }
}

impl Schedule {
    /// `loads`: each load's target table and plain size; `post`: the
    /// post-data entries (in replay order); `loaded`: tables already loaded
    /// (a big table loaded through every connection before the schedule).
    pub fn new(
        loads: &[(QualifiedName, u64)],
        post: &[TocEntry],
        loaded: &[QualifiedName],
    ) -> Schedule {
        let mut order: Vec<usize> = (0..loads.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(loads[i].1));
        let targets: HashSet<QualifiedName> = loads
            .iter()
            .map(|(t, _)| t.clone())
            .chain(loaded.iter().cloned())
            .collect();
        let index_of: HashMap<u32, usize> =
            post.iter().enumerate().map(|(i, e)| (e.id, i)).collect();
        let mut items = Vec::with_capacity(post.len());
        for e in post {
            // Only entries earlier in replay order (ids are replay
            // positions, and replay order puts every dependency first): this
            // drops nothing but a cycle, which would otherwise leave every
            // connection waiting.
            let waits: Vec<usize> = e
                .depends_on
                .iter()
                .filter(|&&d| d < e.id)
                .filter_map(|d| index_of.get(d).copied())
                .collect();
            let early_after = e
                .owner_table
                .as_ref()
                .filter(|t| targets.contains(*t) && reads_only_its_table(e))
                .cloned();
            items.push(Item {
                status: Status::Pending,
                waits,
                early_after,
            });
        }
        // Statements on one table (but its index builds) run one after the
        // other, in replay order: two ALTER TABLEs would only block.
        let mut by_id: Vec<usize> = (0..post.len()).collect();
        by_id.sort_by_key(|&i| post[i].id);
        let mut last_on_table: HashMap<&QualifiedName, usize> = HashMap::new();
        for i in by_id {
            let e = &post[i];
            if let Some(t) = &e.owner_table {
                if e.kind != ObjectKind::Index {
                    if let Some(prev) = last_on_table.insert(t, i) {
                        items[i].waits.push(prev);
                    }
                }
            }
        }
        Schedule {
            loads: order.into(),
            loading: 0,
            targets,
            loaded: loaded.iter().cloned().collect(),
            items,
            stopped: false,
        }
    }

    fn data_done(&self) -> bool {
        self.loads.is_empty() && self.loading == 0
    }

    fn ready(&self, i: usize) -> bool {
        let item = &self.items[i];
        item.status == Status::Pending
            && item
                .waits
                .iter()
                .all(|&w| self.items[w].status == Status::Ended)
            && match &item.early_after {
                Some(t) => self.loaded.contains(t) || self.data_done(),
                None => self.data_done(),
            }
    }

    /// The next piece of work for a free connection (marked running).
    /// Post-data that is ready comes before another load: an index of a
    /// loaded table is the last step of that table's chain.
    pub fn next_work(&mut self) -> Next {
        if self.stopped {
            return if self.loading == 0 && !self.running_post() {
                Next::Done
            } else {
                Next::Wait
            };
        }
        if let Some(i) = (0..self.items.len()).find(|&i| self.ready(i)) {
            self.items[i].status = Status::Running;
            return Next::Post(i);
        }
        if let Some(l) = self.loads.pop_front() {
            self.loading += 1;
            return Next::Load(l);
        }
        if self.loading == 0 && self.items.iter().all(|it| it.status == Status::Ended) {
            return Next::Done;
        }
        Next::Wait
    }

    fn running_post(&self) -> bool {
        self.items.iter().any(|it| it.status == Status::Running)
    }

    /// A load ended (well or not: a failed table under
    /// `--on-error-continue` still gets its indexes, as before).
    pub fn load_ended(&mut self, target: &QualifiedName) {
        self.loading -= 1;
        if self.targets.contains(target) {
            self.loaded.insert(target.clone());
        }
    }

    /// A post-data entry ended (well or not).
    pub fn post_ended(&mut self, i: usize) {
        self.items[i].status = Status::Ended;
    }

    /// Starts nothing more (a fatal failure): [`Schedule::next_work`] says
    /// `Done` once what runs has ended.
    pub fn stop(&mut self) {
        self.stopped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logical::toc::Section;

    fn t(name: &str) -> QualifiedName {
        QualifiedName {
            schema: "public".into(),
            name: name.into(),
        }
    }

    fn entry(id: u32, kind: &str, owner: Option<&str>, deps: &[u32], sql: &str) -> TocEntry {
        TocEntry {
            id,
            section: Section::PostData,
            kind: kind.into(),
            schema: "public".into(),
            name: format!("e{id}"),
            owner_table: owner.map(t),
            depends_on: deps.to_vec(),
            statement: sql.into(),
        }
    }

    /// Runs the schedule with `jobs` connections, ending work in the order
    /// it was started, and returns the order of starts.
    fn drain(s: &mut Schedule, loads: &[(QualifiedName, u64)], jobs: usize) -> Vec<Next> {
        let mut started = Vec::new();
        let mut running: VecDeque<Next> = VecDeque::new();
        loop {
            while running.len() < jobs {
                match s.next_work() {
                    Next::Done => {
                        assert!(running.is_empty(), "done while work runs");
                        return started;
                    }
                    Next::Wait => break,
                    n => {
                        started.push(n.clone());
                        running.push_back(n);
                    }
                }
            }
            match running
                .pop_front()
                .expect("work runs or the schedule is done")
            {
                Next::Load(l) => s.load_ended(&loads[l].0),
                Next::Post(p) => s.post_ended(p),
                _ => unreachable!(),
            }
        }
    }

    #[test]
    fn an_index_of_a_loaded_table_is_built_while_others_load() {
        let loads = vec![(t("small"), 10), (t("big"), 1000), (t("mid"), 100)];
        let post = vec![
            entry(
                1,
                "CONSTRAINT",
                Some("big"),
                &[],
                "ALTER TABLE ONLY big ADD CONSTRAINT big_pkey PRIMARY KEY (id);",
            ),
            entry(2, "INDEX", Some("mid"), &[], "CREATE INDEX i ON mid (x);"),
            entry(
                3,
                "FK CONSTRAINT",
                Some("small"),
                &[1],
                "ALTER TABLE ONLY small ADD CONSTRAINT f FOREIGN KEY (b) REFERENCES big (id);",
            ),
        ];
        let mut s = Schedule::new(&loads, &post, &[]);
        let order = drain(&mut s, &loads, 2);
        // Biggest loads first; big's key right after big is loaded, while
        // the other connection still has a load; the foreign key last.
        assert_eq!(
            order,
            vec![
                Next::Load(1),
                Next::Load(2),
                Next::Post(0),
                Next::Post(1),
                Next::Load(0),
                Next::Post(2)
            ]
        );
    }

    #[test]
    fn nothing_but_index_builds_starts_before_the_data_ends() {
        let loads = vec![(t("a"), 100), (t("b"), 50)];
        let post = vec![
            entry(1, "TRIGGER", Some("a"), &[], "CREATE TRIGGER ..."),
            entry(
                2,
                "CONSTRAINT",
                Some("a"),
                &[],
                "ALTER TABLE ONLY a ADD CONSTRAINT c CHECK (x > 0);",
            ),
            entry(
                3,
                "MATERIALIZED VIEW DATA",
                None,
                &[],
                "REFRESH MATERIALIZED VIEW m;",
            ),
            entry(4, "INDEX", Some("a"), &[], "CREATE INDEX ia ON a (x);"),
        ];
        let mut s = Schedule::new(&loads, &post, &[]);
        assert_eq!(s.next_work(), Next::Load(0));
        s.load_ended(&t("a"));
        // a is loaded, b is not started: only a's index may run.
        assert_eq!(s.next_work(), Next::Post(3));
        assert_eq!(s.next_work(), Next::Load(1));
        assert_eq!(s.next_work(), Next::Wait);
        s.load_ended(&t("b"));
        // The trigger and the check of one table, one after the other.
        assert_eq!(s.next_work(), Next::Post(0));
        assert_eq!(s.next_work(), Next::Post(2));
        assert_eq!(s.next_work(), Next::Wait);
        s.post_ended(0);
        assert_eq!(s.next_work(), Next::Post(1));
        s.post_ended(1);
        s.post_ended(2);
        assert_eq!(s.next_work(), Next::Wait, "the index still runs");
        s.post_ended(3);
        assert_eq!(s.next_work(), Next::Done);
    }

    #[test]
    fn dependencies_hold_and_an_unloaded_owner_waits_for_the_end() {
        // An index on a partitioned parent (no load of its own) and the
        // attach of a leaf's index, which depends on both.
        let loads = vec![(t("leaf"), 100)];
        let post = vec![
            entry(
                1,
                "INDEX",
                Some("parent"),
                &[],
                "CREATE INDEX pi ON ONLY parent (x);",
            ),
            entry(
                2,
                "INDEX",
                Some("leaf"),
                &[],
                "CREATE INDEX li ON leaf (x);",
            ),
            entry(
                3,
                "INDEX ATTACH",
                Some("leaf"),
                &[1, 2],
                "ALTER INDEX pi ATTACH PARTITION li;",
            ),
        ];
        let mut s = Schedule::new(&loads, &post, &[]);
        assert_eq!(s.next_work(), Next::Load(0));
        assert_eq!(s.next_work(), Next::Wait);
        s.load_ended(&t("leaf"));
        assert_eq!(s.next_work(), Next::Post(0));
        assert_eq!(s.next_work(), Next::Post(1));
        assert_eq!(s.next_work(), Next::Wait);
        s.post_ended(1);
        assert_eq!(
            s.next_work(),
            Next::Wait,
            "the attach waits for the parent's index"
        );
        s.post_ended(0);
        assert_eq!(s.next_work(), Next::Post(2));
        s.post_ended(2);
        assert_eq!(s.next_work(), Next::Done);
    }

    #[test]
    fn a_stop_starts_nothing_more() {
        let loads = vec![(t("a"), 100), (t("b"), 50)];
        let post = vec![entry(
            1,
            "INDEX",
            Some("a"),
            &[],
            "CREATE INDEX ia ON a (x);",
        )];
        let mut s = Schedule::new(&loads, &post, &[]);
        assert_eq!(s.next_work(), Next::Load(0));
        s.stop();
        assert_eq!(s.next_work(), Next::Wait);
        s.load_ended(&t("a"));
        assert_eq!(s.next_work(), Next::Done);
    }

    #[test]
    fn a_table_loaded_before_gets_its_index_first() {
        let loads = vec![(t("b"), 50)];
        let post = vec![entry(
            1,
            "INDEX",
            Some("a"),
            &[],
            "CREATE INDEX ia ON a (x);",
        )];
        let mut s = Schedule::new(&loads, &post, &[t("a")]);
        assert_eq!(s.next_work(), Next::Post(0));
        assert_eq!(s.next_work(), Next::Load(0));
    }

    #[test]
    fn a_dependency_cycle_cannot_stall_the_restore() {
        let post = vec![
            entry(1, "TRIGGER", Some("a"), &[2], "CREATE TRIGGER ..."),
            entry(2, "RULE", Some("b"), &[1], "CREATE RULE ..."),
        ];
        let mut s = Schedule::new(&[], &post, &[]);
        let order = drain(&mut s, &[], 2);
        assert_eq!(order, vec![Next::Post(0), Next::Post(1)]);
    }

    #[test]
    fn replay_order_comes_from_the_ids() {
        // Handed over out of order: the check (id 3) still runs before the
        // trigger (id 5) of the same table that depends on it.
        let post = vec![
            entry(5, "TRIGGER", Some("a"), &[3], "CREATE TRIGGER ..."),
            entry(
                3,
                "CONSTRAINT",
                Some("a"),
                &[],
                "ALTER TABLE ONLY a ADD CONSTRAINT c CHECK (x > 0);",
            ),
        ];
        let mut s = Schedule::new(&[], &post, &[]);
        let order = drain(&mut s, &[], 2);
        assert_eq!(order, vec![Next::Post(1), Next::Post(0)]);
    }

    #[test]
    fn no_loads_runs_post_data_by_dependencies() {
        let post = vec![
            entry(1, "INDEX", Some("a"), &[], "CREATE INDEX ia ON a (x);"),
            entry(2, "TRIGGER", Some("a"), &[1], "CREATE TRIGGER ..."),
        ];
        let mut s = Schedule::new(&[], &post, &[]);
        let order = drain(&mut s, &[], 2);
        assert_eq!(order, vec![Next::Post(0), Next::Post(1)]);
    }
}
