//! The cluster: a coordinator and 3 segment PostgreSQL 15 servers on
//! loopback, one `cbdr agent` process per instance, a bank workload with
//! two-phase commits across segments, cluster backups, consistent restore
//! points and restores of the whole cluster.

mod common;

use common::bank::{self, Bank};
use common::cluster::{TestCluster, BARRIER_KEY};
use std::time::Duration;

fn segment_ports(c: &TestCluster) -> Vec<u16> {
    c.servers[1..].iter().map(|s| s.port()).collect()
}

#[test]
fn restore_points_hold_the_commit_barrier() {
    let c = TestCluster::start("cbdr-cluster-rp", 3, None);
    let ports = segment_ports(&c);
    bank::setup(&ports);
    let bank = Bank::start(c.coordinator().port(), &ports, BARRIER_KEY, 3);
    bank.wait_for(20);
    let out = c.ok(&["create-restore-point", "rp1"]);
    assert!(
        out.contains("cluster restore point rp1 on 4 instances"),
        "{out}"
    );
    bank.wait_for(20);

    // The name is taken now: refused, and nothing changes.
    let (code, _, err) = c.cbdr(&["create-restore-point", "rp1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = c.cbdr(&["create-restore-point", "bad name"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid restore point name"), "{err}");
    let committed = bank.stop();
    assert!(committed >= 40, "{committed}");

    // Each instance recorded its point, and the cluster record lists all.
    let out = c.ok(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let points = v["cluster"]["restore_points"]
        .as_array()
        .expect("cluster restore points");
    assert_eq!(points.len(), 1, "{out}");
    assert_eq!(points[0]["name"], "rp1");
    assert_eq!(points[0]["segments"].as_array().unwrap().len(), 4);
}

fn restore_cluster(
    c: &TestCluster,
    name: &str,
    extra: &[&str],
) -> (Vec<u16>, Vec<std::path::PathBuf>, String) {
    restore_cluster_with(c, name, extra, "")
}

/// [`restore_cluster`] with `more` appended to the restore config (it
/// belongs to the last instance's `[[segments]]` entry).
fn restore_cluster_with(
    c: &TestCluster,
    name: &str,
    extra: &[&str],
    more: &str,
) -> (Vec<u16>, Vec<std::path::PathBuf>, String) {
    let (rc, ports) = c.restore_config(name);
    let mut text = std::fs::read_to_string(&rc).unwrap();
    text.push_str(more);
    std::fs::write(&rc, text).unwrap();
    let mut args = vec![
        "restore",
        "--restore-config",
        rc.to_str().unwrap(),
        "--start",
        "--archive-mode",
        "off",
    ];
    args.extend_from_slice(extra);
    let out = c.ok(&args);
    let dirs = (0..c.servers.len())
        .map(|i| c.path(name).join(format!("seg{}", i as i32 - 1)))
        .collect();
    (ports, dirs, out)
}

#[test]
fn cluster_backup_and_consistent_restores() {
    let mut c = TestCluster::start("cbdr-cluster-br", 3, None);
    let ports = segment_ports(&c);
    bank::setup(&ports);
    c.start_agents();
    let bank = Bank::start(c.coordinator().port(), &ports, BARRIER_KEY, 3);
    bank.wait_for(10);

    // A cluster backup while money moves.
    let out = c.ok(&["backup-push"]);
    assert!(out.contains("cluster backup cluster_"), "{out}");
    assert!(out.contains("4 instances"), "{out}");
    let backup = out
        .split_whitespace()
        .nth(2)
        .expect("backup name")
        .to_string();
    bank.wait_for(30);
    c.ok(&["create-restore-point", "rp_a"]);
    bank.wait_for(30);
    c.ok(&["create-restore-point", "rp_b"]);
    bank.wait_for(10);
    bank.stop();

    let listing: serde_json::Value = serde_json::from_str(&c.ok(&["list", "--json"])).unwrap();
    let backups = listing["cluster"]["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "{listing}");
    assert_eq!(backups[0]["name"], backup.as_str());
    assert_eq!(backups[0]["segments"].as_array().unwrap().len(), 4);
    assert_eq!(
        listing["cluster"]["restore_points"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "the backup's point, rp_a and rp_b"
    );
    let text = c.ok(&["list"]);
    assert!(
        text.contains("Cluster backups:") && text.contains("rp_b"),
        "{text}"
    );

    // Restore to rp_a, rolling back what was in doubt: consistent, usable.
    let (rports, dirs, out) = restore_cluster(
        &c,
        "to_rp_a",
        &["--restore-point", "rp_a", "--rollback-prepared"],
    );
    assert!(
        out.contains("cluster restored to restore point rp_a (4 instances)"),
        "{out}"
    );
    let a = bank::BankState::read(&rports[1..]);
    for d in &dirs {
        common::cluster::stop_data_dir(d);
    }
    a.assert_consistent(3, "restored to rp_a");
    assert_eq!(a.prepared, 0, "in-doubt transactions were rolled back");
    assert!(!a.transfers.is_empty());

    // Restore to rp_b, only reporting in-doubt transactions.
    let (rports, dirs, out) = restore_cluster(&c, "to_rp_b", &["--restore-point", "rp_b"]);
    let b = bank::BankState::read(&rports[1..]);
    for d in &dirs {
        common::cluster::stop_data_dir(d);
    }
    b.assert_consistent(3, "restored to rp_b");
    assert!(
        b.transfers.len() > a.transfers.len(),
        "rp_b is later than rp_a: {} vs {} transfers",
        b.transfers.len(),
        a.transfers.len()
    );
    if b.prepared > 0 {
        assert!(out.contains("ROLLBACK PREPARED 'bank_"), "{out}");
    }

    // Restore the cluster backup itself (to its own restore point).
    let (rports, dirs, out) = restore_cluster(
        &c,
        "to_backup",
        &["--backup", &backup, "--rollback-prepared"],
    );
    let s = bank::BankState::read(&rports[1..]);
    for d in &dirs {
        common::cluster::stop_data_dir(d);
    }
    assert!(out.contains(&format!("restore point {backup}")), "{out}");
    s.assert_consistent(3, "restored to the backup's point");
    assert!(s.transfers.len() < a.transfers.len());
}

#[test]
fn cluster_backup_aborts_when_an_agent_fails() {
    let mut c = TestCluster::start("cbdr-cluster-fail", 3, None);
    let ports = segment_ports(&c);
    bank::setup(&ports);
    // Enough data on segment 1 that its backup takes a moment.
    c.servers[2].psql(
        "create table filler as select g, md5(g::text) || repeat(md5((g * 7)::text), 8) as t from generate_series(1, 400000) g",
    );
    c.start_agents();

    // A request with a wrong token is refused, and nothing is recorded.
    let text = std::fs::read_to_string(&c.config).unwrap();
    let bad_token = c
        .env
        .write("bad.token", "a-wrong-token-of-sufficient-length\n");
    let bad = c.env.write(
        "bad.toml",
        &text.replace(
            &c.path("agent.token").display().to_string(),
            &bad_token.display().to_string(),
        ),
    );
    let (code, _, err) = c.cbdr_with(&bad, &["backup-push"]);
    assert_eq!(code, 7, "agent refusals exit 7: {err}");
    assert!(err.contains("refused") || err.contains("token"), "{err}");
    assert!(!err.contains("a-wrong-token"), "the token leaked: {err}");
    // The agents write their log line on their own schedule: poll for it.
    common::wait_for(
        "an agent to log the refusal",
        Duration::from_secs(20),
        || {
            // The coordinator asks every agent at once and drops the
            // others at the first refusal: any one of them may log it.
            let logs: Vec<String> = (0..=c.segment_count())
                .map(|i| c.agent_log_text(i))
                .collect();
            if logs.iter().any(|l| l.contains("refused")) {
                Ok(())
            } else {
                Err(logs
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("agent {i}: {l}"))
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
        },
    );

    // The agent of segment 1 dies in the middle of its backup.
    let child = c
        .env
        .cmd()
        .env("PGUSER", "postgres")
        .command(&["backup-push"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for(
        "segment 1's agent to start its backup",
        Duration::from_secs(30),
        || {
            let log = c.agent_log_text(2);
            if log.contains("backup") {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    c.kill_agent(2);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("segment 1"),
        "the failing segment is named: {err}"
    );
    let listing: serde_json::Value = serde_json::from_str(&c.ok(&["list", "--json"])).unwrap();
    assert!(
        listing["cluster"]["backups"].as_array().unwrap().is_empty(),
        "an aborted cluster backup is not listed: {listing}"
    );

    // With the agent still down: refused up front, naming it.
    let (code, _, err) = c.cbdr(&["backup-push"]);
    assert_ne!(code, 0);
    assert!(err.contains("segment 1"), "{err}");

    // Back up again once the agent is back: complete.
    c.start_agent(2);

    // An agent that falls silent (stopped) past agent_timeout aborts it too.
    let quick = c.path("quick.toml");
    std::fs::write(
        &quick,
        std::fs::read_to_string(&c.config)
            .unwrap()
            .replace("agent_timeout = 15", "agent_timeout = 8"),
    )
    .unwrap();
    common::pg::chown_to_pg(&quick);
    let child = common::pg::pg_command(common::cluster::CBDR)
        .arg("--config")
        .arg(&quick)
        .arg("backup-push")
        .env("PGUSER", "postgres")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let jobs_before = c.agent_log_text(3).matches("backup").count();
    common::wait_for(
        "segment 2's agent to start its backup",
        Duration::from_secs(30),
        || {
            let log = c.agent_log_text(3);
            if log.matches("backup").count() > jobs_before {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    c.signal_agent(3, libc::SIGSTOP);
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    c.signal_agent(3, libc::SIGCONT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("segment 2"),
        "the silent segment is named: {err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "gave up after agent_timeout, not never"
    );
    let listing: serde_json::Value = serde_json::from_str(&c.ok(&["list", "--json"])).unwrap();
    assert!(listing["cluster"]["backups"].as_array().unwrap().is_empty());

    let out = c.ok(&["backup-push"]);
    assert!(out.contains("4 instances"), "{out}");
    let listing: serde_json::Value = serde_json::from_str(&c.ok(&["list", "--json"])).unwrap();
    assert_eq!(listing["cluster"]["backups"].as_array().unwrap().len(), 1);
}

#[test]
fn cluster_with_wal_streamed_by_the_agents() {
    // No archive_command anywhere: each agent streams its instance's WAL
    // through a replication slot, and backups, points and restores rely on it.
    let mut c = common::cluster::TestCluster::start_with("cbdr-cluster-stream", 2, None, true);
    let ports = segment_ports(&c);
    bank::setup(&ports);
    // A tablespace on the last segment, which the restore moves.
    let ts_old = c.path("ts_old");
    std::fs::create_dir_all(&ts_old).unwrap();
    common::pg::chown_to_pg(&ts_old);
    let last = *ports.last().unwrap();
    bank::query(
        last,
        &format!("create tablespace moved location '{}'", ts_old.display()),
    );
    bank::query(
        last,
        "create table in_ts tablespace moved as select g as id from generate_series(1, 500) g",
    );
    c.start_agents();
    let bank = Bank::start(c.coordinator().port(), &ports, BARRIER_KEY, 2);
    bank.wait_for(10);
    let out = c.ok(&["backup-push", "--wal-wait", "60"]);
    assert!(out.contains("3 instances"), "{out}");
    bank.wait_for(20);
    c.ok(&["create-restore-point", "streamed", "--wal-wait", "60"]);
    bank.stop();
    for (i, s) in c.servers.iter().enumerate() {
        let slot = s.psql(&format!(
            "select count(*) from pg_replication_slots where slot_name = '{}' and active",
            if i == 0 {
                "cbdr_coordinator".to_string()
            } else {
                format!("cbdr_seg{}", i - 1)
            }
        ));
        assert_eq!(slot.trim(), "1", "instance {i}: the agent's slot is in use");
    }
    // `restore-config` lists the tablespace the backup holds, to edit.
    let generated = c.ok(&["restore-config"]);
    let old = ts_old.display().to_string();
    assert!(
        generated.contains("[segments.tablespace_map]")
            && generated.contains(&format!("\"{old}\" = \"{old}\"")),
        "{generated}"
    );
    let ts_new = c.path("streamed").join("ts_new");
    let (rports, dirs, out) = restore_cluster_with(
        &c,
        "streamed",
        &["--restore-point", "streamed", "--rollback-prepared"],
        &format!(
            "[segments.tablespace_map]\n\"{old}\" = \"{}\"\n",
            ts_new.display()
        ),
    );
    let restored = *rports.last().unwrap();
    assert_eq!(
        bank::query(
            restored,
            "select pg_tablespace_location(oid) from pg_tablespace where spcname = 'moved'"
        ),
        vec![ts_new.display().to_string()]
    );
    assert_eq!(
        bank::query(restored, "select count(*) from in_ts"),
        vec!["500"]
    );
    assert!(
        std::fs::read_dir(&ts_new).unwrap().next().is_some(),
        "the tablespace's files are in its new location"
    );
    let state = bank::BankState::read(&rports[1..]);
    for d in &dirs {
        common::cluster::stop_data_dir(d);
    }
    assert!(out.contains("restore point streamed"), "{out}");
    state.assert_consistent(2, "restored from streamed WAL");
    assert!(!state.transfers.is_empty());
}
