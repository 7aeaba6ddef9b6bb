//! The cluster: a coordinator and 3 segment PostgreSQL 15 servers on
//! loopback, one `cbdr agent` process per instance, a bank workload with
//! two-phase commits across segments, cluster backups, consistent restore
//! points and restores of the whole cluster.

mod common;

use common::bank::{self, Bank};
use common::cluster::{TestCluster, BARRIER_KEY};

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
    assert!(out.contains("cluster restore point rp1 on 4 instances"), "{out}");
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
    let points = v["cluster"]["restore_points"].as_array().expect("cluster restore points");
    assert_eq!(points.len(), 1, "{out}");
    assert_eq!(points[0]["name"], "rp1");
    assert_eq!(points[0]["segments"].as_array().unwrap().len(), 4);
}
