//! Globals of Greenplum and Cloudberry, with `--with-globals`: resource
//! queues, resource groups, and what roles have of them (their queue,
//! their group, their right to create external tables, their denied
//! login times).
//!
//! * RESOURCE QUEUE from `pg_resqueue` (`rsqname`, `rsqcountlimit`,
//!   `rsqcostlimit`, `rsqovercommit`, `rsqignorecostlimit`) and
//!   `pg_resqueuecapability` joined to `pg_resourcetype` by name
//!   (`priority`, `memory_limit`), written as gpbackup's
//!   `PrintCreateResourceQueueStatements` does (a limit is written when it
//!   is set: -1 is none).
//! * RESOURCE GROUP from `pg_resgroup` and `pg_resgroupcapability`
//!   (`reslimittype`, `value`). The limit types are Cloudberry's
//!   `ResGroupLimitType` (`src/backend/commands/resgroupcmds.c`): 1
//!   concurrency, 2 cpu_max_percent, 3 cpu_weight, 4 cpuset, 5
//!   memory_quota (memory_limit on Greenplum 7), 6 min_cost, 7 io_limit;
//!   a cpuset and a CPU percentage exclude each other, -1 is unset. An
//!   unknown limit type stops the backup (nothing is left out silently).
//!   Each CREATE RESOURCE GROUP is alone in its entry: it cannot run in a
//!   transaction block.
//! * ROLE RESOURCES: `ALTER ROLE ... RESOURCE QUEUE/GROUP` when the role's
//!   queue is not `pg_default` or its group not the default of its kind
//!   (`admin_group` for a superuser, `default_group` otherwise);
//!   `CREATEEXTTABLE` from `rolcreaterextgpfd`, `rolcreaterexthttp`,
//!   `rolcreatewextgpfd`, `rolcreaterexthdfs`, `rolcreatewexthdfs`;
//!   `DENY BETWEEN` from `pg_auth_time_constraint`. The role row is read
//!   as `to_json`, so columns a release lacks are simply absent.
//!
//! The built-in queue (`pg_default`) and groups (`default_group`,
//! `admin_group`, `system_group`) are left out: every cluster has them,
//! and a restore does not change the target's. Restoring into a cluster
//! that has a queue or group of the same name, skip its entry (as for a
//! tablespace).
//!
//! **Untested: no Greenplum/Cloudberry build here.**

use serde_json::Value;

use super::super::comments::add_comment;
use super::super::deps::Dep;
use super::super::{query, quote_ident, quote_literal, Graph, Node, RowExt, Target};
use super::ServerFlavor;
use crate::error::{Error, Result};
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

/// Queues and groups every cluster has.
pub(crate) const BUILTIN_QUEUES: &[&str] = &["pg_default"];
pub(crate) const BUILTIN_GROUPS: &[&str] = &["default_group", "admin_group", "system_group"];

/// A resource queue's row, limits as text (costs rounded to two places as
/// gpbackup and pg_dumpall do).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ResQueue {
    pub name: String,
    pub active_statements: String,
    pub max_cost: String,
    pub cost_overcommit: bool,
    pub min_cost: String,
    pub priority: Option<String>,
    pub memory_limit: Option<String>,
}

fn is_set(v: &str) -> bool {
    v.parse::<f64>().map(|x| x >= 0.0).unwrap_or(false)
}

fn is_positive(v: &str) -> bool {
    v.parse::<f64>().map(|x| x > 0.0).unwrap_or(false)
}

/// `CREATE RESOURCE QUEUE q WITH (...);`
pub(crate) fn queue_sql(q: &ResQueue) -> String {
    let mut attrs = Vec::new();
    if is_set(&q.active_statements) {
        let n = q
            .active_statements
            .parse::<f64>()
            .map(|x| format!("{}", x.trunc() as i64))
            .unwrap_or_else(|_| q.active_statements.clone());
        attrs.push(format!("ACTIVE_STATEMENTS={n}"));
    }
    if is_set(&q.max_cost) {
        attrs.push(format!("MAX_COST={}", q.max_cost));
    }
    if attrs.is_empty() {
        // A queue has one of the two; this keeps the statement valid.
        attrs.push("ACTIVE_STATEMENTS=-1".to_string());
    }
    if q.cost_overcommit {
        attrs.push("COST_OVERCOMMIT=TRUE".to_string());
    }
    if is_positive(&q.min_cost) {
        attrs.push(format!("MIN_COST={}", q.min_cost));
    }
    if let Some(p) = q
        .priority
        .as_ref()
        .filter(|p| !p.eq_ignore_ascii_case("medium"))
    {
        attrs.push(format!("PRIORITY={}", p.to_ascii_uppercase()));
    }
    if let Some(m) = q.memory_limit.as_ref().filter(|m| m.as_str() != "-1") {
        attrs.push(format!("MEMORY_LIMIT={}", quote_literal(m)));
    }
    format!(
        "CREATE RESOURCE QUEUE {} WITH ({});",
        quote_ident(&q.name),
        attrs.join(", ")
    )
}

/// The option name of a `pg_resgroupcapability.reslimittype`.
pub(crate) fn group_option(flavor: ServerFlavor, limit_type: i64) -> Option<&'static str> {
    Some(match limit_type {
        1 => "CONCURRENCY",
        2 => "CPU_MAX_PERCENT",
        3 => "CPU_WEIGHT",
        4 => "CPUSET",
        5 if flavor == ServerFlavor::Cloudberry => "MEMORY_QUOTA",
        5 => "MEMORY_LIMIT",
        6 => "MIN_COST",
        7 => "IO_LIMIT",
        _ => return None,
    })
}

/// `CREATE RESOURCE GROUP g WITH (...);` from its (limit type, value)
/// capabilities; an error names a limit type this version does not know.
pub(crate) fn group_sql(
    flavor: ServerFlavor,
    name: &str,
    caps: &[(i64, String)],
) -> Result<String> {
    let mut opts: Vec<(&'static str, String)> = Vec::new();
    for (t, v) in caps {
        let Some(opt) = group_option(flavor, *t) else {
            return Err(Error::Server(format!(
                "resource group {name} has a limit of type {t}, which this version of cbdr does \
                 not know: it cannot be backed up without it; back up without --with-globals and \
                 recreate the group by hand"
            )));
        };
        opts.push((opt, v.clone()));
    }
    let value = |k: &str| opts.iter().find(|(o, _)| *o == k).map(|(_, v)| v.as_str());
    let unset = |v: &str| v.is_empty() || v == "-1";
    let cpuset = value("CPUSET").filter(|v| !unset(v));
    let mut attrs = Vec::new();
    for (opt, v) in &opts {
        let v = v.as_str();
        match *opt {
            "CPUSET" | "IO_LIMIT" => {
                if !unset(v) {
                    attrs.push(format!("{opt}={}", quote_literal(v)));
                }
            }
            "CPU_MAX_PERCENT" if cpuset.is_some() => {}
            _ if unset(v) => {}
            _ => attrs.push(format!("{opt}={v}")),
        }
    }
    Ok(format!(
        "CREATE RESOURCE GROUP {} WITH ({});",
        quote_ident(name),
        attrs.join(", ")
    ))
}

/// What a role has of Greenplum's globals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct RoleResources {
    pub name: String,
    pub superuser: bool,
    pub queue: Option<String>,
    pub group: Option<String>,
    /// The role row as JSON (for the `rolcreate*ext*` flags).
    pub flags: Value,
    /// (start day, start time, end day, end time).
    pub deny: Vec<(i64, String, i64, String)>,
}

/// (column, type, protocol) of the external table privileges.
const EXT_PRIVILEGES: &[(&str, &str, &str)] = &[
    ("rolcreaterextgpfd", "readable", "gpfdist"),
    ("rolcreaterexthttp", "readable", "http"),
    ("rolcreatewextgpfd", "writable", "gpfdist"),
    ("rolcreaterexthdfs", "readable", "gphdfs"),
    ("rolcreatewexthdfs", "writable", "gphdfs"),
];

/// The `ALTER ROLE` statements for `r` (none when it has only defaults).
pub(crate) fn role_sql(r: &RoleResources) -> Vec<String> {
    let q = quote_ident(&r.name);
    let mut out = Vec::new();
    if let Some(queue) = r.queue.as_ref().filter(|q| q.as_str() != "pg_default") {
        out.push(format!(
            "ALTER ROLE {q} RESOURCE QUEUE {};",
            quote_ident(queue)
        ));
    }
    let default_group = if r.superuser {
        "admin_group"
    } else {
        "default_group"
    };
    if let Some(group) = r.group.as_ref().filter(|g| g.as_str() != default_group) {
        out.push(format!(
            "ALTER ROLE {q} RESOURCE GROUP {};",
            quote_ident(group)
        ));
    }
    if !r.superuser {
        let granted: Vec<String> = EXT_PRIVILEGES
            .iter()
            .filter(|(col, _, _)| r.flags.get(*col).and_then(Value::as_bool) == Some(true))
            .map(|(_, t, p)| format!("CREATEEXTTABLE (type='{t}', protocol='{p}')"))
            .collect();
        if !granted.is_empty() {
            out.push(format!("ALTER ROLE {q} {};", granted.join(" ")));
        }
    }
    for (sd, st, ed, et) in &r.deny {
        out.push(format!(
            "ALTER ROLE {q} DENY BETWEEN DAY {sd} TIME {} AND DAY {ed} TIME {};",
            quote_literal(st),
            quote_literal(et)
        ));
    }
    out
}

fn not_in(col: &str, names: &[&str]) -> String {
    let list: Vec<String> = names.iter().map(|n| quote_literal(n)).collect();
    format!("{col} NOT IN ({})", list.join(", "))
}

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph, flavor: ServerFlavor) -> Result<()> {
    let mut queue_nodes = std::collections::HashMap::new();
    let sql = format!(
        "SELECT q.rsqname, q.rsqcountlimit::text AS active, \
                pg_catalog.round(q.rsqcostlimit::numeric, 2)::text AS maxcost, q.rsqovercommit, \
                pg_catalog.round(q.rsqignorecostlimit::numeric, 2)::text AS mincost, \
                (SELECT c.ressetting::text FROM pg_catalog.pg_resqueuecapability c \
                   JOIN pg_catalog.pg_resourcetype t ON t.restypid = c.restypid \
                  WHERE c.resqueueid = q.oid AND t.resname = 'priority') AS priority, \
                (SELECT c.ressetting::text FROM pg_catalog.pg_resqueuecapability c \
                   JOIN pg_catalog.pg_resourcetype t ON t.restypid = c.restypid \
                  WHERE c.resqueueid = q.oid AND t.resname = 'memory_limit') AS memory_limit, \
                pg_catalog.shobj_description(q.oid, 'pg_resqueue') AS comment \
         FROM pg_catalog.pg_resqueue q WHERE {} ORDER BY q.rsqname",
        not_in("q.rsqname", BUILTIN_QUEUES)
    );
    for r in query(conn, "resource queues", &sql).await? {
        let q = ResQueue {
            name: r.text("rsqname")?,
            active_statements: r.text("active")?,
            max_cost: r.text("maxcost")?,
            cost_overcommit: r.flag("rsqovercommit")?,
            min_cost: r.text("mincost")?,
            priority: r.opt("priority")?,
            memory_limit: r.opt("memory_limit")?,
        };
        let node = g.add(
            Node::new(Section::Globals, "RESOURCE QUEUE", "", &q.name).statement(queue_sql(&q)),
        );
        queue_nodes.insert(q.name.clone(), node);
        let t = Target::of(
            node,
            Section::Globals,
            "RESOURCE QUEUE",
            "RESOURCE QUEUE",
            &quote_ident(&q.name),
            "",
            &q.name,
        );
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }

    let mut group_nodes = std::collections::HashMap::new();
    let sql = format!(
        "SELECT g.rsgname, pg_catalog.shobj_description(g.oid, 'pg_resgroup') AS comment, \
                (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(c.reslimittype::int8, c.value::text) \
                        ORDER BY c.reslimittype) \
                   FROM pg_catalog.pg_resgroupcapability c WHERE c.resgroupid = g.oid) AS caps \
         FROM pg_catalog.pg_resgroup g WHERE {} ORDER BY g.rsgname",
        not_in("g.rsgname", BUILTIN_GROUPS)
    );
    for r in query(conn, "resource groups", &sql).await? {
        let name = r.text("rsgname")?;
        let caps: Vec<(i64, String)> = r.opt_json("caps")?.unwrap_or_default();
        let node = g.add(
            Node::new(Section::Globals, "RESOURCE GROUP", "", &name)
                .statement(group_sql(flavor, &name, &caps)?),
        );
        group_nodes.insert(name.clone(), node);
        let t = Target::of(
            node,
            Section::Globals,
            "RESOURCE GROUP",
            "RESOURCE GROUP",
            &quote_ident(&name),
            "",
            &name,
        );
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }

    let rows = query(
        conn,
        "roles' resources",
        "SELECT r.rolname, r.rolsuper, pg_catalog.to_jsonb(r) AS flags, \
                (SELECT q.rsqname FROM pg_catalog.pg_resqueue q \
                  WHERE q.oid = (pg_catalog.to_jsonb(r) ->> 'rolresqueue')::pg_catalog.oid) AS queue, \
                (SELECT g.rsgname FROM pg_catalog.pg_resgroup g \
                  WHERE g.oid = (pg_catalog.to_jsonb(r) ->> 'rolresgroup')::pg_catalog.oid) AS rgroup, \
                (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(t.start_day::int8, t.start_time::text, \
                        t.end_day::int8, t.end_time::text) ORDER BY t.start_day, t.start_time) \
                   FROM pg_catalog.pg_auth_time_constraint t WHERE t.authid = r.oid) AS deny \
         FROM pg_catalog.pg_roles r WHERE r.rolname !~ '^pg_' ORDER BY r.rolname",
    )
    .await?;
    for r in rows {
        let res = RoleResources {
            name: r.text("rolname")?,
            superuser: r.flag("rolsuper")?,
            queue: r.opt("queue")?,
            group: r.opt("rgroup")?,
            flags: r.json("flags")?,
            deny: r.opt_json("deny")?.unwrap_or_default(),
        };
        let stmts = role_sql(&res);
        if stmts.is_empty() {
            continue;
        }
        let mut node = Node::new(Section::Globals, "ROLE RESOURCES", "", &res.name)
            .statement(stmts.join("\n"))
            .dep(Dep::Role(res.name.clone()));
        if let Some(n) = res.queue.as_ref().and_then(|q| queue_nodes.get(q)) {
            node = node.dep(Dep::Node(*n));
        }
        if let Some(n) = res.group.as_ref().and_then(|q| group_nodes.get(q)) {
            node = node.dep(Dep::Node(*n));
        }
        g.add(node);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_write_the_limits_they_have() {
        let q = ResQueue {
            name: "etl".into(),
            active_statements: "3".into(),
            max_cost: "-1.00".into(),
            cost_overcommit: false,
            min_cost: "0.00".into(),
            priority: Some("medium".into()),
            memory_limit: Some("-1".into()),
        };
        assert_eq!(
            queue_sql(&q),
            "CREATE RESOURCE QUEUE etl WITH (ACTIVE_STATEMENTS=3);"
        );
        let q = ResQueue {
            name: "Big Q".into(),
            active_statements: "-1".into(),
            max_cost: "3000000.00".into(),
            cost_overcommit: true,
            min_cost: "500.00".into(),
            priority: Some("high".into()),
            memory_limit: Some("2GB".into()),
        };
        assert_eq!(
            queue_sql(&q),
            "CREATE RESOURCE QUEUE \"Big Q\" WITH (MAX_COST=3000000.00, COST_OVERCOMMIT=TRUE, \
             MIN_COST=500.00, PRIORITY=HIGH, MEMORY_LIMIT='2GB');"
        );
    }

    fn caps(v: &[(i64, &str)]) -> Vec<(i64, String)> {
        v.iter().map(|(t, s)| (*t, s.to_string())).collect()
    }

    #[test]
    fn groups_write_cloudberry_limits() {
        let c = caps(&[
            (1, "10"),
            (2, "30"),
            (3, "100"),
            (4, "-1"),
            (5, "512"),
            (6, "0"),
            (7, "-1"),
        ]);
        assert_eq!(
            group_sql(ServerFlavor::Cloudberry, "rg1", &c).unwrap(),
            "CREATE RESOURCE GROUP rg1 WITH (CONCURRENCY=10, CPU_MAX_PERCENT=30, CPU_WEIGHT=100, \
             MEMORY_QUOTA=512, MIN_COST=0);"
        );
        // A cpuset excludes the CPU percentage; io_limit is quoted.
        let c = caps(&[
            (1, "5"),
            (2, "-1"),
            (3, "100"),
            (4, "1;2-3"),
            (5, "-1"),
            (7, "pg_default:wbps=1000"),
        ]);
        assert_eq!(
            group_sql(ServerFlavor::Cloudberry, "rg2", &c).unwrap(),
            "CREATE RESOURCE GROUP rg2 WITH (CONCURRENCY=5, CPU_WEIGHT=100, CPUSET='1;2-3', \
             IO_LIMIT='pg_default:wbps=1000');"
        );
        // Greenplum 7 says memory_limit.
        assert_eq!(
            group_sql(ServerFlavor::Greenplum, "rg3", &caps(&[(5, "256")])).unwrap(),
            "CREATE RESOURCE GROUP rg3 WITH (MEMORY_LIMIT=256);"
        );
        let err = group_sql(ServerFlavor::Cloudberry, "rg4", &caps(&[(9, "1")])).unwrap_err();
        assert!(
            err.to_string().contains("rg4") && err.to_string().contains("type 9"),
            "{err}"
        );
    }

    #[test]
    fn roles_get_what_differs_from_the_defaults() {
        let plain = RoleResources {
            name: "u".into(),
            queue: Some("pg_default".into()),
            group: Some("default_group".into()),
            flags: serde_json::json!({"rolcreaterextgpfd": false}),
            ..Default::default()
        };
        assert!(role_sql(&plain).is_empty());
        let admin = RoleResources {
            name: "Boss".into(),
            superuser: true,
            group: Some("admin_group".into()),
            // A superuser may create anything: the flags say nothing.
            flags: serde_json::json!({"rolcreaterextgpfd": true}),
            ..Default::default()
        };
        assert!(role_sql(&admin).is_empty());
        let etl = RoleResources {
            name: "etl user".into(),
            queue: Some("etl".into()),
            group: Some("admin_group".into()),
            flags: serde_json::json!({"rolcreaterextgpfd": true, "rolcreatewextgpfd": true, "rolcreaterexthttp": false}),
            deny: vec![(0, "00:00:00".into(), 1, "06:30:00".into())],
            ..Default::default()
        };
        assert_eq!(
            role_sql(&etl),
            vec![
                "ALTER ROLE \"etl user\" RESOURCE QUEUE etl;",
                "ALTER ROLE \"etl user\" RESOURCE GROUP admin_group;",
                "ALTER ROLE \"etl user\" CREATEEXTTABLE (type='readable', protocol='gpfdist') \
                 CREATEEXTTABLE (type='writable', protocol='gpfdist');",
                "ALTER ROLE \"etl user\" DENY BETWEEN DAY 0 TIME '00:00:00' AND DAY 1 TIME '06:30:00';",
            ]
        );
    }
}
