//! Incremental logical backups on PostgreSQL: which tables cannot have
//! changed since the backup that holds their rows.
//!
//! PostgreSQL heap tables have no transactional modification counter
//! (Greenplum's append-optimized modcount). The decision uses signals that
//! only ever err towards copying:
//!
//! * per table: its relfilenode and its TOAST table's (TRUNCATE, VACUUM
//!   FULL, CLUSTER and rewriting ALTERs change them), the sizes of both,
//!   the column list with types and missing values (ALTER TABLE ADD/DROP
//!   COLUMN), and the cumulative statistics counters `n_tup_ins`,
//!   `n_tup_upd`, `n_tup_del`, `n_tup_hot_upd` of `pg_stat_all_tables`
//!   (for a partitioned table backed up as a whole: of every leaf, and the
//!   leaf list);
//! * per server: `pg_postmaster_start_time()` (a crash discards the
//!   counters), the database's `stats_reset` (also set by
//!   `pg_stat_reset_single_table_counters`), the system identifier and the
//!   database OID (another server or a re-created database), and
//!   `track_counts` (off: nothing is counted, so nothing is skipped).
//!
//! The counters are not transactional and a backend publishes them only
//! when it goes idle (PostgreSQL 15: at most once a second, or 10 s later
//! from an idle timer). So:
//!
//! * the signals a backup *stores* are read before its snapshot is taken:
//!   they never include a change its rows miss;
//! * the signals an incremental *compares* are read after its snapshot, once
//!   every other session that could hold unpublished counts has published
//!   them ([`settle`]): a session is settled when it is gone, or has been
//!   idle (outside a transaction) for 11 s; sessions that stay busy for
//!   61 s make the incremental copy every table.
//!
//! A table is skipped only when every signal is equal.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::record::{ServerSignals, TableSignals};
use crate::error::{PgResultExt, Result};
use crate::pg::conn::PgConn;
use crate::pg::quote::quote_literal;

/// The server-wide signals of the connected database.
pub async fn server_signals(conn: &mut PgConn) -> Result<ServerSignals> {
    let row = conn
        .query_one(
            "SELECT pg_postmaster_start_time()::text AS start,
                    (SELECT stats_reset::text FROM pg_stat_database
                      WHERE datname = current_database()) AS reset,
                    (SELECT system_identifier::text FROM pg_control_system()) AS sysid,
                    (SELECT oid FROM pg_database WHERE datname = current_database()) AS dboid,
                    current_setting('track_counts') AS track",
        )
        .await
        .context("reading the server's statistics state")?;
    let what = "reading the server's statistics state";
    Ok(ServerSignals {
        postmaster_start: row.get_str("start").context(what)?.to_string(),
        stats_reset: row.get_opt("reset").context(what)?.map(str::to_string),
        system_identifier: row.get_str("sysid").context(what)?.to_string(),
        database_oid: row.parse("dboid").context(what)?,
        track_counts: row.get_str("track").context(what)? == "on",
    })
}

/// The signals of each table (by OID). A partitioned table counts as the
/// sum of its leaves (its rows are theirs).
pub async fn table_signals(conn: &mut PgConn, oids: &[u32]) -> Result<HashMap<u32, TableSignals>> {
    let mut out = HashMap::new();
    for chunk in oids.chunks(5000) {
        if chunk.is_empty() {
            continue;
        }
        let list = chunk
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let sql = format!(
            "WITH units AS (
               SELECT u.oid AS unit, CASE WHEN c.relkind = 'p' THEN l.relid ELSE u.oid END AS rel
                 FROM unnest('{{{list}}}'::oid[]) AS u(oid)
                 JOIN pg_class c ON c.oid = u.oid
                 LEFT JOIN LATERAL (SELECT relid FROM pg_partition_tree(u.oid) WHERE isleaf) l
                        ON c.relkind = 'p'
             )
             SELECT un.unit AS unit,
                    max(CASE WHEN c.oid = un.unit THEN c.relfilenode::bigint END) AS relfilenode,
                    max(CASE WHEN c.oid = un.unit THEN coalesce(t.relfilenode, 0)::bigint END)
                      AS toast_relfilenode,
                    sum(pg_relation_size(c.oid))::bigint AS main_bytes,
                    sum(coalesce(pg_relation_size(t.oid), 0))::bigint AS toast_bytes,
                    sum(coalesce(s.n_tup_ins, 0))::bigint AS n_tup_ins,
                    sum(coalesce(s.n_tup_upd, 0))::bigint AS n_tup_upd,
                    sum(coalesce(s.n_tup_del, 0))::bigint AS n_tup_del,
                    sum(coalesce(s.n_tup_hot_upd, 0))::bigint AS n_tup_hot_upd,
                    (SELECT string_agg(quote_ident(a.attname) || ' ' ||
                                       format_type(a.atttypid, a.atttypmod) ||
                                       coalesce(' missing ' || a.attmissingval::text, '') ||
                                       CASE WHEN a.attgenerated <> '' THEN ' generated' ELSE '' END,
                                       ', ' ORDER BY a.attnum)
                       FROM pg_attribute a
                      WHERE a.attrelid = un.unit AND a.attnum > 0 AND NOT a.attisdropped)
                    || ' | ' ||
                    coalesce(string_agg(c.oid::text || ':' || c.relfilenode::text || ':' ||
                                        coalesce(t.relfilenode, 0)::text, ',' ORDER BY c.oid), '')
                      AS shape
               FROM units un
               LEFT JOIN pg_class c ON c.oid = un.rel
               LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
               LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
              GROUP BY un.unit"
        );
        let what = "reading the tables' change signals";
        for row in conn.simple_query(&sql).await.context(what)? {
            // NULL sums and sizes (a table dropped meanwhile, a partitioned
            // table's own relfilenode) count as 0.
            let num = |c: &str| -> Result<i64> {
                Ok(row.parse_opt::<i64>(c).context(what)?.unwrap_or(0))
            };
            let unit: u32 = row.parse("unit").context(what)?;
            out.insert(
                unit,
                TableSignals {
                    relfilenode: num("relfilenode")? as u32,
                    toast_relfilenode: num("toast_relfilenode")? as u32,
                    main_bytes: num("main_bytes")? as u64,
                    toast_bytes: num("toast_bytes")? as u64,
                    n_tup_ins: num("n_tup_ins")?,
                    n_tup_upd: num("n_tup_upd")?,
                    n_tup_del: num("n_tup_del")?,
                    n_tup_hot_upd: num("n_tup_hot_upd")?,
                    // NULL for a table without columns.
                    shape: row
                        .get_opt("shape")
                        .context(what)?
                        .unwrap_or_default()
                        .to_string(),
                },
            );
        }
    }
    Ok(out)
}

/// Why every table must be copied, or `None` when tables may be skipped.
pub fn server_changed(base: Option<&ServerSignals>, now: &ServerSignals) -> Option<String> {
    let Some(base) = base else {
        return Some("the base backup recorded no change signals".into());
    };
    if !now.track_counts || !base.track_counts {
        return Some("track_counts is off, so PostgreSQL does not count changes".into());
    }
    if base.system_identifier != now.system_identifier {
        return Some("the base backup was taken on another server".into());
    }
    if base.database_oid != now.database_oid {
        return Some("the database was re-created since the base backup".into());
    }
    if base.postmaster_start != now.postmaster_start {
        return Some(
            "the server restarted since the base backup (a crash discards the change counters)"
                .into(),
        );
    }
    if base.stats_reset != now.stats_reset {
        return Some("the database's statistics were reset since the base backup".into());
    }
    None
}

/// Whether a table's rows may have changed since `stored` was recorded.
pub fn table_changed(stored: Option<&TableSignals>, now: Option<&TableSignals>) -> bool {
    match (stored, now) {
        (Some(a), Some(b)) => a != b,
        _ => true,
    }
}

/// The outcome of [`settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Every session that could hold unpublished counts has published them.
    Yes,
    /// These sessions stayed busy: their counts may be missing.
    No(Vec<String>),
}

/// A session is settled once idle this long (PostgreSQL's idle stats
/// flush runs 10 s after a skipped flush).
const IDLE_SETTLED: Duration = Duration::from_secs(11);
/// How long to wait for busy sessions (PGSTAT_MAX_INTERVAL is 60 s).
const SETTLE_LIMIT: Duration = Duration::from_secs(61);
/// At least this long after the snapshot: an exiting backend leaves
/// pg_stat_activity a moment before it publishes its last counts.
const SETTLE_MIN: Duration = Duration::from_millis(1200);

/// Waits until the change counters of every other session connected to
/// this database before the snapshot (taken at `snapshot_time`, the
/// server's clock as text) are published. `own` are this backup's
/// sessions.
pub async fn settle(conn: &mut PgConn, own: &[i32], snapshot_time: &str) -> Result<Settled> {
    let started = Instant::now();
    let own_list = own.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    let sql = format!(
        "SELECT pid, coalesce(state, '') AS state, backend_type,
                coalesce(extract(epoch FROM clock_timestamp() - state_change), 0)::float8
                  AS idle_for,
                coalesce(left(query, 60), '') AS query
           FROM pg_stat_activity
          WHERE datid = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND pid <> ALL('{{{own_list}}}'::int[])
            AND backend_start < {snapshot}::timestamptz
            AND backend_type IN ('client backend', 'logical replication worker', 'background worker')",
        snapshot = quote_literal(snapshot_time)
    );
    loop {
        let what = "watching the other sessions";
        let rows = conn.simple_query(&sql).await.context(what)?;
        let mut busy: Vec<String> = Vec::new();
        for r in &rows {
            let state = r.get_str("state").context(what)?;
            let idle_for: f64 = r.parse("idle_for").context(what)?;
            if state == "idle" && idle_for >= IDLE_SETTLED.as_secs_f64() {
                continue;
            }
            busy.push(format!(
                "pid {} ({}, {}: {})",
                r.get_str("pid").context(what)?,
                r.get_opt("backend_type").context(what)?.unwrap_or("?"),
                if state.is_empty() { "no state" } else { state },
                r.get_str("query").context(what)?
            ));
        }
        let waited = started.elapsed();
        if busy.is_empty() && waited >= SETTLE_MIN {
            return Ok(Settled::Yes);
        }
        if waited >= SETTLE_LIMIT {
            return Ok(Settled::No(busy));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ServerSignals {
        ServerSignals {
            postmaster_start: "2026-01-01 00:00:00+00".into(),
            stats_reset: None,
            system_identifier: "7".into(),
            database_oid: 5,
            track_counts: true,
        }
    }

    fn table() -> TableSignals {
        TableSignals {
            relfilenode: 16384,
            toast_relfilenode: 16387,
            main_bytes: 8192,
            toast_bytes: 0,
            n_tup_ins: 10,
            n_tup_upd: 0,
            n_tup_del: 0,
            n_tup_hot_upd: 0,
            shape: "a integer | 16384:16384:16387".into(),
        }
    }

    #[test]
    fn every_server_signal_forces_a_copy() {
        let base = server();
        assert_eq!(server_changed(Some(&base), &base), None);
        assert!(server_changed(None, &base).is_some());
        let mut s = base.clone();
        s.postmaster_start = "2026-01-02 00:00:00+00".into();
        assert!(server_changed(Some(&base), &s)
            .unwrap()
            .contains("restarted"));
        let mut s = base.clone();
        s.stats_reset = Some("2026-01-02".into());
        assert!(server_changed(Some(&base), &s).unwrap().contains("reset"));
        let mut s = base.clone();
        s.track_counts = false;
        assert!(server_changed(Some(&base), &s)
            .unwrap()
            .contains("track_counts"));
        let mut s = base.clone();
        s.system_identifier = "8".into();
        assert!(server_changed(Some(&base), &s).is_some());
        let mut s = base.clone();
        s.database_oid = 6;
        assert!(server_changed(Some(&base), &s).is_some());
    }

    #[test]
    fn every_table_signal_forces_a_copy() {
        let t = table();
        assert!(!table_changed(Some(&t), Some(&t)));
        assert!(table_changed(None, Some(&t)));
        assert!(table_changed(Some(&t), None));
        type Change = Box<dyn Fn(&mut TableSignals)>;
        let variants: Vec<Change> = vec![
            Box::new(|s| s.relfilenode += 1),
            Box::new(|s| s.toast_relfilenode += 1),
            Box::new(|s| s.main_bytes += 8192),
            Box::new(|s| s.toast_bytes += 8192),
            Box::new(|s| s.n_tup_ins += 1),
            Box::new(|s| s.n_tup_upd += 1),
            Box::new(|s| s.n_tup_del += 1),
            Box::new(|s| s.n_tup_hot_upd += 1),
            Box::new(|s| s.shape.push_str(", b text")),
        ];
        for f in variants {
            let mut c = t.clone();
            f(&mut c);
            assert!(table_changed(Some(&t), Some(&c)), "{c:?}");
        }
    }
}
