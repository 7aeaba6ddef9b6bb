//! Citus clusters: a coordinator and worker nodes, each a PostgreSQL
//! server, with two-phase commit for writes across workers.
//!
//! * **Identity.** A node's Citus group (`pg_dist_local_group`) is its
//!   identity: group 0 is the coordinator (content id -1), group `g` a
//!   worker, content id `g - 1`. Only active primaries are backed up
//!   (secondaries are replicas).
//! * **Restore points** come from `citus_create_restore_point(name)`: it
//!   takes locks on the coordinator that block distributed commit decisions
//!   while it writes the point on every node, and returns the coordinator's
//!   LSN only. Each worker's position is bracketed: its insert LSN before
//!   the call (recorded: every base backup that ends before it can serve the
//!   point) and after it (the archive must hold the WAL through that one
//!   before the point is recorded). Recovery stops at the point by its name.
//! * **Restores** start every node with the Citus background work that
//!   reaches other nodes switched off (`RESTORE_SETTINGS`): the restored
//!   `pg_dist_node` still names the original nodes, and 2PC recovery,
//!   deferred shard deletion or deadlock detection run against them would
//!   change the live cluster. Once every node is up, `pg_dist_node` is
//!   rewritten on every node to the restored hosts and ports (a plain UPDATE
//!   on each node, which Citus does not propagate, so nothing reaches the
//!   original cluster), `recover_prepared_transactions()` settles the
//!   transactions in doubt as the coordinator's commit log decided, and the
//!   settings are reset.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;

use super::catalog::Barrier;
use super::topology::{Segment, Topology, COORDINATOR};
use crate::error::{Error, PgResultExt, Result};
use crate::pg::conn::{ConnParams, PgConn, Replication};
use crate::pg::quote::{quote_ident, quote_literal};
use crate::physical::restore_point::{position_of, switch_wal, PointPosition};
use crate::repo::Repo;

/// Settings every restored node starts with until its `pg_dist_node` names
/// the restored nodes (then they are reset): each turns off a background
/// job that connects to the nodes `pg_dist_node` lists.
pub const RESTORE_SETTINGS: &[(&str, &str)] = &[
    ("citus.recover_2pc_interval", "-1"),
    ("citus.defer_shard_delete_interval", "-1"),
    ("citus.background_task_queue_interval", "-1"),
    ("citus.distributed_deadlock_detection_factor", "-1"),
];

/// The content id of a Citus group.
pub fn content_id_of_group(group: i32) -> i32 {
    group - 1
}

/// The Citus group of a content id.
pub fn group_of_content_id(content_id: i32) -> i32 {
    content_id + 1
}

/// An active primary of `pg_dist_node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistNode {
    pub group: i32,
    pub host: String,
    pub port: u16,
    /// Whether the node holds Citus metadata (and can run distributed
    /// transactions of its own).
    pub has_metadata: bool,
}

/// Whether the server has the citus extension in the connected database.
pub async fn is_citus(conn: &mut PgConn) -> Result<bool> {
    Ok(conn
        .simple_query("select 1 from pg_extension where extname = 'citus'")
        .await
        .context("looking for the citus extension")?
        .len()
        == 1)
}

const NODES_SQL: &str = "select groupid::text as groupid, nodename, nodeport::text as nodeport, hasmetadata from pg_catalog.pg_dist_node where noderole = 'primary' and isactive order by groupid";

/// The active primaries of the coordinator's `pg_dist_node`.
pub async fn read_nodes(conn: &mut PgConn) -> Result<Vec<DistNode>> {
    let what = "reading pg_dist_node (is this a Citus coordinator? `create extension citus` in [cluster] database)";
    let rows = conn.simple_query(NODES_SQL).await.context(what)?;
    rows.iter()
        .map(|r| {
            Ok(DistNode {
                group: r.parse("groupid").context(what)?,
                host: r.get_str("nodename").context(what)?.to_string(),
                port: r.parse("nodeport").context(what)?,
                has_metadata: r.get_bool("hasmetadata").context(what)?,
            })
        })
        .collect()
}

/// The topology of a Citus cluster: the coordinator it is connected to,
/// then the active primary workers of its `pg_dist_node`, each served by
/// the agent at `host:agent_port`; data directories as each node reports.
pub async fn discover(coordinator: &ConnParams, agent_port: u16) -> Result<Topology> {
    let mut conn = PgConn::connect(coordinator, Replication::Off)
        .await
        .context("connecting to the Citus coordinator")?;
    let nodes = read_nodes(&mut conn).await?;
    let coordinator_dir = data_directory(&mut conn).await?;
    conn.close().await;
    let mut segments = vec![Segment {
        content_id: COORDINATOR,
        host: coordinator.host.clone(),
        port: coordinator.port,
        data_dir: coordinator_dir,
        agent: format!("{}:{agent_port}", coordinator.host),
    }];
    for n in nodes.iter().filter(|n| n.group != 0) {
        let mut p = coordinator.clone();
        p.host = n.host.clone();
        p.port = n.port;
        let mut c = PgConn::connect(&p, Replication::Off)
            .await
            .with_context(|| format!("connecting to Citus worker {}:{}", n.host, n.port))?;
        let dir = data_directory(&mut c).await?;
        c.close().await;
        segments.push(Segment {
            content_id: content_id_of_group(n.group),
            agent: format!("{}:{agent_port}", n.host),
            host: n.host.clone(),
            port: n.port,
            data_dir: dir,
        });
    }
    Topology::new(segments, false)
}

async fn data_directory(conn: &mut PgConn) -> Result<PathBuf> {
    let row = conn
        .query_one("select current_setting('data_directory') as d")
        .await
        .context("reading data_directory")?;
    Ok(PathBuf::from(
        row.get_str("d").context("reading data_directory")?,
    ))
}

/// Checks that the configured instances are the cluster's active primaries:
/// one instance per worker group (content id = group - 1), at the host and
/// port `pg_dist_node` names. The coordinator's own row (group 0), when
/// present, is not compared: the coordinator is the server cbdr reaches.
pub fn check_nodes(topo: &Topology, nodes: &[DistNode]) -> Result<()> {
    let mut problems = Vec::new();
    let workers: BTreeMap<i32, &DistNode> = nodes
        .iter()
        .filter(|n| n.group != 0)
        .map(|n| (content_id_of_group(n.group), n))
        .collect();
    for (id, n) in &workers {
        match topo.segment(*id) {
            None => problems.push(format!(
                "worker {}:{} (group {}) is an active primary of pg_dist_node but no instance has content id {id}: add it to [[cluster.segments]] (content_id = group - 1)",
                n.host, n.port, n.group
            )),
            Some(s) if !same_node(s, n) => problems.push(format!(
                "content id {id} is configured as {}:{}, but pg_dist_node has group {} at {}:{}: fix [[cluster.segments]]",
                s.host, s.port, n.group, n.host, n.port
            )),
            Some(_) => {}
        }
    }
    for s in topo
        .segments()
        .iter()
        .filter(|s| s.content_id != COORDINATOR)
    {
        if !workers.contains_key(&s.content_id) {
            problems.push(format!(
                "content id {} ({}:{}) is not an active primary of pg_dist_node (no group {}): remove it from [[cluster.segments]], or citus_add_node it",
                s.content_id,
                s.host,
                s.port,
                group_of_content_id(s.content_id)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "the configured instances are not the Citus cluster's nodes: {}",
            problems.join("; ")
        )))
    }
}

fn same_node(s: &Segment, n: &DistNode) -> bool {
    s.port == n.port && (s.host == n.host || is_loopback(&s.host) && is_loopback(&n.host))
}

fn is_loopback(host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "::1") || host.starts_with('/')
}

/// Checks each connected node's own group (`pg_dist_local_group`) against
/// its content id: a node restored or configured in another's place is
/// named before anything is recorded.
pub async fn check_local_groups(conns: &mut [(&Segment, PgConn)]) -> Result<()> {
    try_join_all(conns.iter_mut().map(|(seg, conn)| async move {
        let row = conn
            .query_one("select groupid::text as groupid from pg_catalog.pg_dist_local_group")
            .await
            .context("reading pg_dist_local_group")?;
        let group: i32 = row.parse("groupid").context("reading pg_dist_local_group")?;
        if group != group_of_content_id(seg.content_id) {
            return Err(Error::Usage(format!(
                "instance {}:{} is configured with content id {}, but its Citus group (pg_dist_local_group) is {group}: its content id must be {}",
                seg.host,
                seg.port,
                seg.content_id,
                content_id_of_group(group)
            )));
        }
        Ok(())
    }))
    .await?;
    Ok(())
}

/// Positions of each instance at a point.
pub type Points = Vec<(i32, PointPosition)>;

/// `citus_create_restore_point(name)` on the coordinator, each worker's
/// position bracketed around it, the nodes checked before and after, then a
/// WAL switch everywhere and a wait for each worker's WAL through its
/// bracket's end.
pub async fn citus_point(
    repo: &Repo,
    topo: &Topology,
    mut conns: Vec<(&Segment, PgConn)>,
    name: &str,
    wal_wait: Duration,
) -> Result<(Points, Barrier, Duration)> {
    let coordinator = conns
        .iter()
        .position(|(s, _)| s.content_id == COORDINATOR)
        .ok_or_else(|| Error::Internal("no coordinator connection".into()))?;
    let before = read_nodes(&mut conns[coordinator].1).await?;
    check_nodes(topo, &before)?;
    check_local_groups(&mut conns).await?;
    let metadata_workers: Vec<String> = before
        .iter()
        .filter(|n| n.group != 0 && n.has_metadata)
        .map(|n| format!("{}:{}", n.host, n.port))
        .collect();
    if !metadata_workers.is_empty() {
        tracing::warn!(
            "Citus workers with metadata ({}) can run distributed transactions of their own, which citus_create_restore_point before Citus 14 does not hold: the point is consistent for the writes that go through the coordinator",
            metadata_workers.join(", ")
        );
    }

    let lows = try_join_all(conns.iter_mut().map(|(seg, conn)| async move {
        position_of(
            conn,
            "pg_current_wal_insert_lsn()",
            "reading the WAL insert position",
        )
        .await
        .map_err(|e| super::restore_point::in_segment(seg, e))
    }))
    .await?;
    let started = Instant::now();
    let at = position_of(
        &mut conns[coordinator].1,
        &format!("citus_create_restore_point({})", quote_literal(name)),
        "citus_create_restore_point",
    )
    .await
    .map_err(|e| super::restore_point::in_segment(conns[coordinator].0, e))?;
    let held = started.elapsed();
    let highs = try_join_all(conns.iter_mut().map(|(seg, conn)| async move {
        let p = position_of(
            conn,
            "pg_current_wal_insert_lsn()",
            "reading the WAL insert position",
        )
        .await
        .map_err(|e| super::restore_point::in_segment(seg, e))?;
        switch_wal(conn)
            .await
            .map_err(|e| super::restore_point::in_segment(seg, e))?;
        Ok::<_, Error>(p)
    }))
    .await?;
    let after = read_nodes(&mut conns[coordinator].1).await?;
    if after != before {
        return Err(Error::Server(format!(
            "the Citus cluster's active primaries changed while the restore point {name:?} was made (pg_dist_node before: {}; after: {}): the point is not recorded; take a cluster backup of the new topology",
            describe(&before),
            describe(&after)
        )));
    }

    let mut points = Vec::new();
    for (((seg, _), low), high) in conns.iter().zip(&lows).zip(&highs) {
        if seg.content_id == COORDINATOR {
            points.push((seg.content_id, at));
            continue;
        }
        if high.timeline != low.timeline {
            return Err(Error::Server(format!(
                "content id {} changed timeline ({} to {}) while the restore point {name:?} was made: the point is not recorded",
                seg.content_id, low.timeline, high.timeline
            )));
        }
        points.push((seg.content_id, *low));
    }
    try_join_all(
        conns
            .iter()
            .zip(lows.iter().zip(&highs))
            .filter(|((s, _), _)| s.content_id != COORDINATOR)
            .map(|((seg, _), (low, high))| async move {
                crate::physical::backup::wait_for_wal(
                    repo,
                    seg.content_id,
                    (low.lsn, low.timeline),
                    (high.lsn, high.timeline),
                    high.wal_segment_size,
                    wal_wait,
                )
                .await
                .map_err(|e| super::restore_point::in_segment(seg, e))
            }),
    )
    .await?;
    for (_, c) in conns {
        c.close().await;
    }
    Ok((points, Barrier::Citus, held))
}

fn describe(nodes: &[DistNode]) -> String {
    nodes
        .iter()
        .map(|n| format!("group {} at {}:{}", n.group, n.host, n.port))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where each restored node now is, by content id.
pub type Placement = BTreeMap<i32, (String, u16)>;

/// The statement that points a node's `pg_dist_node` at the restored nodes:
/// one UPDATE of the primaries' rows (the coordinator's too, when it has
/// one), by group. `None` when nothing moved.
pub fn rewrite_nodes_sql(placement: &Placement) -> Option<String> {
    if placement.is_empty() {
        return None;
    }
    let mut host = String::from("case groupid");
    let mut port = String::from("case groupid");
    let mut groups = Vec::new();
    for (id, (h, p)) in placement {
        let g = group_of_content_id(*id);
        host.push_str(&format!(" when {g} then {}", quote_literal(h)));
        port.push_str(&format!(" when {g} then {p}"));
        groups.push(g.to_string());
    }
    host.push_str(" end");
    port.push_str(" end");
    Some(format!(
        "update pg_catalog.pg_dist_node set nodename = {host}, nodeport = {port} where noderole = 'primary' and groupid in ({})",
        groups.join(", ")
    ))
}

/// `ALTER SYSTEM RESET` of the restore settings (then a reload applies it).
pub fn reset_settings_sql() -> Vec<String> {
    RESTORE_SETTINGS
        .iter()
        .map(|(k, _)| {
            let name: Vec<String> = k.split('.').map(quote_ident).collect();
            format!("alter system reset {}", name.join("."))
        })
        .collect()
}

/// What the fix-up of a restored Citus cluster did.
#[derive(Debug, Default)]
pub struct Fixup {
    /// Rows of `pg_dist_node` rewritten, per content id of the node.
    pub rewritten: Vec<(i32, u64)>,
    /// Prepared transactions `recover_prepared_transactions()` settled.
    pub recovered: i64,
}

/// Once every restored node is up: `pg_dist_node` rewritten on every node
/// (in parallel, each node's own copy), 2PC recovery on every node that has
/// metadata, then the restore settings reset and reloaded.
pub async fn fix_restored(nodes: &[(i32, ConnParams)]) -> Result<Fixup> {
    let placement: Placement = nodes
        .iter()
        .map(|(id, p)| (*id, (p.host.clone(), p.port)))
        .collect();
    let sql = rewrite_nodes_sql(&placement);
    let mut conns = try_join_all(nodes.iter().map(|(id, p)| async move {
        PgConn::connect(p, Replication::Off)
            .await
            .with_context(|| format!("connecting to restored Citus node (content id {id})"))
            .map(|c| (*id, c))
    }))
    .await?;
    let mut fix = Fixup::default();
    if let Some(sql) = &sql {
        let rewritten = try_join_all(conns.iter_mut().map(|(id, c)| async move {
            let what = || format!("rewriting pg_dist_node on content id {id}");
            let n: u64 = c
                .query_one(&format!(
                    "with u as ({sql} returning 1) select count(*)::text as n from u"
                ))
                .await
                .with_context(what)?
                .parse("n")
                .with_context(what)?;
            Ok::<_, Error>((*id, n))
        }))
        .await?;
        fix.rewritten = rewritten;
    }
    for (id, c) in conns.iter_mut() {
        let has_nodes = c
            .query_one("select count(*)::text as n from pg_catalog.pg_dist_node")
            .await
            .with_context(|| format!("reading pg_dist_node on content id {id}"))?
            .parse::<i64>("n")
            .context("reading pg_dist_node")?;
        if has_nodes == 0 {
            continue;
        }
        let row = c
            .query_one("select recover_prepared_transactions()::text as n")
            .await
            .with_context(|| format!("recover_prepared_transactions() on content id {id}"))?;
        fix.recovered += row
            .parse::<i64>("n")
            .context("recover_prepared_transactions()")?;
    }
    for (id, c) in conns.iter_mut() {
        for stmt in reset_settings_sql() {
            c.simple_query(&stmt)
                .await
                .with_context(|| format!("{stmt} on content id {id}"))?;
        }
        c.simple_query("select pg_reload_conf()")
            .await
            .with_context(|| format!("reloading the settings of content id {id}"))?;
    }
    for (_, c) in conns {
        c.close().await;
    }
    Ok(fix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(id: i32, port: u16) -> Segment {
        Segment {
            content_id: id,
            host: "127.0.0.1".into(),
            port,
            data_dir: PathBuf::from(format!("/d/{id}")),
            agent: "127.0.0.1:7070".into(),
        }
    }

    fn node(group: i32, port: u16) -> DistNode {
        DistNode {
            group,
            host: "localhost".into(),
            port,
            has_metadata: true,
        }
    }

    #[test]
    fn groups_and_content_ids() {
        assert_eq!(content_id_of_group(0), COORDINATOR);
        assert_eq!(content_id_of_group(3), 2);
        assert_eq!(group_of_content_id(COORDINATOR), 0);
        assert_eq!(group_of_content_id(content_id_of_group(7)), 7);
    }

    #[test]
    fn configured_instances_must_be_the_active_primaries() {
        let topo = Topology::new(vec![seg(-1, 5600), seg(0, 5601), seg(1, 5602)], false).unwrap();
        // The coordinator's own row is not compared.
        check_nodes(&topo, &[node(0, 9999), node(1, 5601), node(2, 5602)]).unwrap();
        check_nodes(&topo, &[node(1, 5601), node(2, 5602)]).unwrap();

        let e = check_nodes(&topo, &[node(1, 5601), node(2, 5602), node(3, 5603)]).unwrap_err();
        assert!(
            e.to_string().contains("no instance has content id 2"),
            "{e}"
        );
        let e = check_nodes(&topo, &[node(1, 5601)]).unwrap_err();
        assert!(
            e.to_string()
                .contains("content id 1 (127.0.0.1:5602) is not an active primary"),
            "{e}"
        );
        let e = check_nodes(&topo, &[node(1, 5601), node(2, 5612)]).unwrap_err();
        assert!(
            e.to_string()
                .contains("pg_dist_node has group 2 at localhost:5612"),
            "{e}"
        );
        let mut far = node(2, 5602);
        far.host = "w2.example".into();
        let e = check_nodes(&topo, &[node(1, 5601), far]).unwrap_err();
        assert!(e.to_string().contains("w2.example"), "{e}");
    }

    #[test]
    fn pg_dist_node_rewrite() {
        assert_eq!(rewrite_nodes_sql(&Placement::new()), None);
        let mut p = Placement::new();
        p.insert(-1, ("c'd".into(), 6000));
        p.insert(1, ("w2".into(), 6002));
        assert_eq!(
            rewrite_nodes_sql(&p).unwrap(),
            "update pg_catalog.pg_dist_node set nodename = case groupid when 0 then 'c''d' when 2 then 'w2' end, nodeport = case groupid when 0 then 6000 when 2 then 6002 end where noderole = 'primary' and groupid in (0, 2)"
        );
    }

    #[test]
    fn restore_settings_are_reset_by_name() {
        let sql = reset_settings_sql();
        assert_eq!(sql.len(), RESTORE_SETTINGS.len());
        assert_eq!(sql[0], "alter system reset citus.recover_2pc_interval");
        for (k, v) in RESTORE_SETTINGS {
            assert!(k.starts_with("citus."), "{k}");
            assert_eq!(*v, "-1");
        }
    }
}
