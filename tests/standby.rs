//! A disaster-recovery standby cluster: a primary (coordinator + 3
//! segments, agents, the 2PC bank workload) makes cluster restore points;
//! a standby cluster restored with `restore --standby` pauses at one,
//! serves consistent read-only queries there, advances point by point
//! (`advance`, `follow`), survives a restart by hand, a killed agent and a
//! missing WAL segment, and is promoted.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cbdr::pg::conn::{PgConn, Replication};
use common::bank::{self, Bank, BankState};
use common::cluster::{stop_data_dir, TestCluster, BARRIER_KEY};
use common::pg::{pg_bin, pg_command};

fn segment_ports(c: &TestCluster) -> Vec<u16> {
    c.servers[1..].iter().map(|s| s.port()).collect()
}

/// A standby restored into `dir/<name>` to `point`; its ports and data
/// directories by index.
struct Standby {
    ports: Vec<u16>,
    dirs: Vec<PathBuf>,
}

impl Standby {
    fn restore(c: &TestCluster, name: &str, point: &str) -> Standby {
        let (rc, ports) = c.restore_config(name);
        let out = c.ok(&[
            "restore",
            "--restore-config",
            rc.to_str().unwrap(),
            "--restore-point",
            point,
            "--standby",
            "--start",
        ]);
        assert!(
            out.contains(&format!(
                "standby cluster dr restored to restore point {point}"
            )),
            "{out}"
        );
        let dirs = (0..c.servers.len())
            .map(|i| c.path(name).join(format!("seg{}", i as i32 - 1)))
            .collect();
        Standby { ports, dirs }
    }

    fn bank(&self) -> BankState {
        BankState::read(&self.ports[1..])
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        for d in &self.dirs {
            stop_data_dir(d);
        }
    }
}

fn status(c: &TestCluster) -> serde_json::Value {
    c.env
        .on(c.coordinator())
        .json(&["standby", "status", "--json"])
}

/// Waits until `standby status` says every instance is paused at `point`
/// and the standby's record says the advance there finished (instances
/// reach the point before the advance that sent them records it).
fn wait_paused_at(c: &TestCluster, point: &str) -> serde_json::Value {
    common::wait_for(
        &format!("every standby instance paused at {point}, the advance recorded"),
        Duration::from_secs(90),
        || {
            let s = status(c);
            if s["common_point"] == point
                && s["record"]["state"] == "at_point"
                && s["record"]["point"] == point
            {
                Ok(s)
            } else {
                Err(format!("{s:#}"))
            }
        },
    )
}

/// Every instance paused at `point`, and the bank consistent there with
/// more transfers than `before`; returns the count.
fn check_at(c: &TestCluster, dr: &Standby, point: &str, before: usize) -> usize {
    let s = status(c);
    assert_eq!(s["common_point"], point, "{s:#}");
    for i in s["instances"].as_array().unwrap() {
        assert_eq!(i["at_point"], point, "{s:#}");
        assert_eq!(i["paused"], true, "{s:#}");
    }
    let b = dr.bank();
    b.assert_consistent(3, &format!("standby paused at {point}"));
    assert!(
        b.transfers.len() > before,
        "{point}: {} transfers, not more than {before}",
        b.transfers.len()
    );
    b.transfers.len()
}

fn restart_by_hand(dir: &Path) {
    let out = pg_command(pg_bin("pg_ctl"))
        .arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(dir.join("cbdr-start.log"))
        .args(["-m", "fast", "-W", "restart"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn standby_follows_the_primary_point_by_point_and_promotes() {
    let mut c = TestCluster::start("cbdr-standby", 3, None);
    let ports = segment_ports(&c);
    bank::setup(&ports);
    c.start_agents();
    let bank = Bank::start(c.coordinator().port(), &ports, BARRIER_KEY, 3);
    bank.wait_for(10);
    c.ok(&["backup-push"]);
    for p in ["rp1", "rp2", "rp3"] {
        bank.wait_for(15);
        c.ok(&["create-restore-point", p]);
    }

    // Restored and paused at rp1: queries on the live standby see the
    // primary's committed state at rp1.
    let dr = Standby::restore(&c, "dr", "rp1");
    let n1 = check_at(&c, &dr, "rp1", 0);

    // A later point: consistent again, more transfers.
    let out = c.ok(&["standby", "advance", "--restore-point", "rp2"]);
    assert!(
        out.contains("advanced from rp1 to rp2 (4 instances restarted"),
        "{out}"
    );
    let n2 = check_at(&c, &dr, "rp2", n1);

    // Back is refused, and nothing moves.
    c.env.on(c.coordinator()).refused(
        &["standby", "advance", "--restore-point", "rp1"],
        2,
        &["cannot go back"],
    );
    assert_eq!(status(&c)["common_point"], "rp2");

    // An instance restarted by hand comes back paused at its point, and
    // the next advance works.
    restart_by_hand(&dr.dirs[2]);
    wait_paused_at(&c, "rp2");
    let out = c.ok(&["standby", "advance", "--latest"]);
    assert!(out.contains("advanced from rp2 to rp3"), "{out}");
    let n3 = check_at(&c, &dr, "rp3", n2);
    let out = c.ok(&["standby", "advance", "--latest"]);
    assert!(out.contains("at rp3 already"), "{out}");

    // follow picks up new points as the primary makes them.
    let follow = c
        .env
        .on(c.coordinator())
        .command(&["standby", "follow", "--interval", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    bank.wait_for(15);
    c.ok(&["create-restore-point", "rp4"]);
    wait_paused_at(&c, "rp4");
    // follow survives a lost agent: its rounds fail until the agent is
    // back, then it catches up.
    let victim = common::cluster::index(0);
    c.kill_agent(victim);
    bank.wait_for(15);
    c.ok(&["create-restore-point", "rp5"]);
    common::wait_for(
        "follow to try rp5 without the agent of segment 0",
        Duration::from_secs(60),
        || {
            let s = status(&c);
            if s["record"]["state"] == "moving" {
                Ok(())
            } else {
                Err(format!("{s:#}"))
            }
        },
    );
    c.start_agent(victim);
    wait_paused_at(&c, "rp5");
    // SIGTERM to the cbdr process under runuser (not to runuser, which
    // would kill its child outright).
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", follow.id()))
        .unwrap_or_default();
    let mut cbdr: Vec<i32> = children
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    if cbdr.is_empty() {
        // Not under runuser: the child is cbdr itself.
        cbdr.push(follow.id() as i32);
    }
    assert_eq!(cbdr.len(), 1, "runuser's children: {children:?}");
    signal(cbdr[0], libc::SIGTERM);
    let out = follow.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("trying again next round"), "{stderr}");
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("advanced from rp3 to rp4"), "{stdout}");
    assert!(stdout.contains("stopped following"), "{stdout}");
    let n5 = check_at(&c, &dr, "rp5", n3);

    // list --json shows where the standby is.
    let listing = c.env.on(c.coordinator()).json(&["list", "--json"]);
    let standbys = listing["standbys"].as_array().unwrap();
    assert_eq!(standbys.len(), 1, "{listing:#}");
    assert_eq!(standbys[0]["state"], "at_point");
    assert_eq!(standbys[0]["point"], "rp5");
    assert_eq!(standbys[0]["instances"].as_array().unwrap().len(), 4);

    // The standby's leases keep retention on the primary off what it
    // needs; promotion releases them.
    let leases = |c: &TestCluster| {
        std::fs::read_dir(c.env.repo().join("leases"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("standby-dr-seg"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(leases(&c), 4);

    // Promote at the common point: consistent, writable, nothing in doubt.
    let committed = bank.stop();
    let out = c.ok(&["standby", "promote", "--rollback-prepared"]);
    assert!(out.contains("promoted at restore point rp5"), "{out}");
    let b = dr.bank();
    b.assert_consistent(3, "promoted standby");
    assert_eq!(b.prepared, 0, "in-doubt transactions rolled back");
    assert_eq!(b.transfers.len(), n5, "promotion at the point adds nothing");
    assert!(
        committed as usize >= n5,
        "{committed} committed, {n5} at rp5"
    );
    for &port in &dr.ports {
        bank::runtime().block_on(async {
            let mut conn = PgConn::connect(&bank::params(port), Replication::Off)
                .await
                .unwrap();
            conn.simple_query(
                "create table dr_writable(a int); insert into dr_writable values (1)",
            )
            .await
            .expect("the promoted standby takes writes");
            conn.close().await;
        });
    }
    let s = status(&c);
    assert_eq!(s["record"]["state"], "promoted", "{s:#}");
    assert_eq!(leases(&c), 0, "promotion released the leases");
    c.env
        .on(c.coordinator())
        .refused(&["standby", "advance", "--latest"], 2, &["was promoted"]);
}

#[test]
fn standby_advance_refuses_missing_wal_and_recovers_from_a_killed_agent() {
    let mut c = TestCluster::start("cbdr-standby-faults", 3, None);
    let ports = segment_ports(&c);
    bank::setup(&ports);
    c.start_agents();
    let bank = Bank::start(c.coordinator().port(), &ports, BARRIER_KEY, 3);
    bank.wait_for(10);
    c.ok(&["backup-push"]);
    bank.wait_for(10);
    c.ok(&["create-restore-point", "p1"]);
    let dr = Standby::restore(&c, "dr", "p1");
    let n1 = check_at(&c, &dr, "p1", 0);

    // p2's WAL missing on segment 2's archive: refused before anything
    // moves, naming the instance and the segment.
    bank.wait_for(10);
    c.ok(&["create-restore-point", "p2"]);
    let point = c.env.on(c.coordinator()).json(&["list", "--json"])["cluster"]["restore_points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "p2")
        .cloned()
        .unwrap();
    let lsn = point["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["content_id"] == 2)
        .unwrap()["lsn"]
        .as_str()
        .unwrap()
        .to_string();
    let lsn: cbdr::pg::Lsn = lsn.parse().unwrap();
    let seg = cbdr::pg::WalSegmentName::from_lsn(cbdr::pg::TimelineId(1), lsn, 1 << 20);
    let key = c.env.repo().join(cbdr::repo::layout::wal_key(
        2,
        &cbdr::pg::WalFile::Segment(seg),
    ));
    let aside = c.path("aside.wal");
    std::fs::rename(&key, &aside).unwrap();
    let err = c.env.on(c.coordinator()).refused(
        &["standby", "advance", "--restore-point", "p2"],
        1,
        &[
            "content id 2 lacks WAL segment",
            &seg.to_string(),
            "No instance was moved",
        ],
    );
    assert!(!err.contains("content id 1 lacks"), "{err}");
    assert_eq!(status(&c)["common_point"], "p1");
    std::fs::rename(&aside, &key).unwrap();

    // An agent killed while its move runs (held there: its instance's
    // postmaster is stopped with SIGSTOP, so `pg_ctl restart` waits): the
    // advance fails naming it; a second advance (agent back) brings every
    // instance to p2.
    let victim = common::cluster::index(1);
    let pid_file = std::fs::read_to_string(dr.dirs[victim].join("postmaster.pid")).unwrap();
    let postmaster: i32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    signal(postmaster, libc::SIGSTOP);
    let advance = c
        .env
        .on(c.coordinator())
        .command(&["standby", "advance", "--restore-point", "p2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for(
        "the agent of segment 1 to start the move",
        Duration::from_secs(60),
        || {
            if c.agent_log_text(victim).contains("standby of content 1") {
                Ok(())
            } else {
                Err(c.agent_log_text(victim))
            }
        },
    );
    c.kill_agent(victim);
    let out = advance.wait_with_output().unwrap();
    signal(postmaster, libc::SIGCONT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("segment 1"), "{stderr}");
    assert!(stderr.contains("again once the cause is fixed"), "{stderr}");
    let s = status(&c);
    assert_eq!(s["record"]["state"], "moving", "{s:#}");
    assert!(s["common_point"].is_null(), "{s:#}");
    c.start_agent(victim);
    let out = c.ok(&["standby", "advance", "--restore-point", "p2"]);
    assert!(out.contains("to p2"), "{out}");
    let n2 = check_at(&c, &dr, "p2", n1);
    assert!(n2 > n1);
    bank.stop();
}

/// `sql`'s single value on the instance at `port`.
fn value(port: u16, sql: &str) -> String {
    bank::runtime().block_on(async {
        let mut c = PgConn::connect(&bank::params(port), Replication::Off)
            .await
            .unwrap();
        let row = c.query_one(sql).await.unwrap();
        let v = row.get(0).unwrap().to_string();
        c.close().await;
        v
    })
}

/// A single server is a cluster of one (its agent, content id -1), here
/// on Garage: the same restore --standby, advance and promote.
#[test]
fn a_single_server_standby_on_garage() {
    let s3 = common::garage::bucket("standby-one");
    let mut c = TestCluster::start("cbdr-standby-one", 0, Some(&s3.config_toml("one")));
    c.start_agents();
    let primary = c.coordinator();
    primary.psql("create table t(a int); insert into t select generate_series(1, 100)");
    c.ok(&["backup-push"]);
    primary.psql("insert into t select generate_series(1, 50)");
    c.ok(&["create-restore-point", "a"]);
    primary.psql("insert into t select generate_series(1, 25)");
    c.ok(&["create-restore-point", "b"]);
    primary.psql("insert into t select generate_series(1, 5)");

    let dr = Standby::restore(&c, "dr", "a");
    let port = dr.ports[0];
    assert_eq!(value(port, "select count(*) from t"), "150");
    assert_eq!(status(&c)["common_point"], "a");
    let out = c.ok(&["standby", "advance", "--latest"]);
    assert!(
        out.contains("advanced from a to b (1 instances restarted"),
        "{out}"
    );
    assert_eq!(value(port, "select count(*) from t"), "175");
    let out = c.ok(&["standby", "promote"]);
    assert!(out.contains("promoted at restore point b"), "{out}");
    assert_eq!(value(port, "select pg_is_in_recovery()::text"), "false");
    assert_eq!(
        value(
            port,
            "insert into t values (0) returning (select count(*) + 1 from t)"
        ),
        "176"
    );
    assert_eq!(value(primary.port(), "select count(*) from t"), "180");
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: sending a signal has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}
