//! A real Citus cluster (coordinator + 2 workers, Citus 12.1 on
//! PostgreSQL 15, the build `.ci/run` installs from ../shared/citus) backed
//! up to Garage while a distributed bank runs through the coordinator:
//! restore points by `citus_create_restore_point`, then a cluster restore to
//! a point on new ports, which must come back consistent (every transfer on
//! both accounts or neither), with `pg_dist_node` naming the restored nodes,
//! no prepared transaction left, and the original cluster untouched.

mod common;

use std::fs;

use common::citus::{self, CitusBank, CitusState};
use common::cluster::{stop_data_dir, ClusterOpts, TestCluster};

#[test]
fn citus_backup_restore_points_and_restore() {
    if let Some(why) = citus::unavailable() {
        eprintln!("citus tests skipped: {why}");
        return;
    }
    let s3 = common::garage::bucket("citus");
    let mut c = TestCluster::start_opts(
        "citus",
        2,
        Some(&s3.config_toml("citus")),
        ClusterOpts {
            conf: vec![citus::PRELOAD.into()],
            cluster_toml: "kind = \"citus\"\n".into(),
            ..ClusterOpts::default()
        },
    );
    citus::setup(&c);
    c.start_agents();
    let ports: Vec<u16> = c.servers.iter().map(|s| s.port()).collect();

    // The topology is read back from pg_dist_node.
    let discover = c.path("discover.toml");
    let text = fs::read_to_string(&c.config).unwrap();
    let cut = text.find("\n[[cluster.segments]]").unwrap();
    let agent = text[text.find("\n[agent]").unwrap()..].to_string();
    fs::write(
        &discover,
        format!("{}discover = true\n{agent}", &text[..cut]),
    )
    .unwrap();
    common::pg::chown_to_pg(&discover);
    let (code, out, err) = c.cbdr_with(&discover, &["restore-config"]);
    assert_eq!(code, 0, "{out}{err}");
    for (i, p) in ports.iter().enumerate() {
        assert!(
            out.contains(&format!(
                "content_id = {}\nhost = \"127.0.0.1\"\nport = {p}\n",
                i as i32 - 1
            )),
            "restore-config from pg_dist_node lacks content id {}:\n{out}",
            i as i32 - 1
        );
    }

    let (code, out, err) = c.cbdr(&["backup-push"]);
    assert_eq!(code, 0, "cluster backup-push: {out}{err}");

    let bank = CitusBank::start(ports[0], 4);
    bank.wait_for(40);
    let before_p1 = bank.committed();
    let (code, out, err) = c.cbdr(&["create-restore-point", "p1"]);
    assert_eq!(code, 0, "create-restore-point p1: {out}{err}");
    let after_p1 = bank.committed();
    assert!(
        err.contains("workers with metadata"),
        "Citus 12 workers have metadata: the point must say what it does not hold: {err}"
    );
    bank.wait_for(40);
    let (code, out, err) = c.cbdr(&["create-restore-point", "p2"]);
    assert_eq!(code, 0, "create-restore-point p2: {out}{err}");
    let committed = bank.stop();

    // A config whose instances are not the cluster's nodes is refused
    // before anything is recorded.
    let wrong = c.path("wrong.toml");
    let swapped = text
        .replace(&format!("port = {}\n", ports[1]), "port = PORT_A\n")
        .replace(
            &format!("port = {}\n", ports[2]),
            &format!("port = {}\n", ports[1]),
        )
        .replace("port = PORT_A\n", &format!("port = {}\n", ports[2]));
    fs::write(&wrong, swapped).unwrap();
    common::pg::chown_to_pg(&wrong);
    let (code, out, err) = c.cbdr_with(&wrong, &["create-restore-point", "p3"]);
    assert_eq!(code, 2, "a config that swaps two workers: {out}{err}");
    assert!(err.contains("pg_dist_node has group"), "{err}");
    let (_, list, _) = c.cbdr(&["list"]);
    assert!(
        !list.contains("p3"),
        "a refused point is not listed: {list}"
    );
    // And a backup with it stops before copying anything.
    let (code, out, err) = c.cbdr_with(&wrong, &["backup-push"]);
    assert_eq!(
        code, 2,
        "backup-push with a config that swaps two workers: {out}{err}"
    );
    assert!(err.contains("pg_dist_node has group"), "{err}");
    let (_, after, _) = c.cbdr(&["list"]);
    assert_eq!(
        after.matches("cluster_").count(),
        list.matches("cluster_").count(),
        "a refused backup-push records nothing:\n{list}\n---\n{after}"
    );

    let original = CitusState::read(ports[0]);
    original.assert_consistent("the original cluster");
    assert_eq!(original.transfers as u64, committed);

    let (restore_config, rports) = c.restore_config("r1");
    let (code, out, err) = c.cbdr(&[
        "restore",
        "--restore-config",
        restore_config.to_str().unwrap(),
        "--restore-point",
        "p1",
        "--start",
        "--archive-mode",
        "off",
    ]);
    let dirs: Vec<_> = (0..ports.len())
        .map(|i| c.path("r1").join(format!("seg{}", i as i32 - 1)))
        .collect();
    let stop_all = || dirs.iter().for_each(|d| stop_data_dir(d));
    if code != 0 {
        stop_all();
        panic!("cluster restore to p1: {out}{err}");
    }
    assert!(
        out.contains("pg_dist_node now names the restored nodes"),
        "{out}"
    );

    let restored = CitusState::read(rports[0]);
    stop_guard(&stop_all, || {
        restored.assert_consistent("restored to p1");
        assert!(
            restored.transfers as u64 >= before_p1 && restored.transfers as u64 <= after_p1,
            "restored to p1: {} transfers, but {before_p1}..={after_p1} had committed around the point",
            restored.transfers
        );
        let nodes = citus::query(
            rports[0],
            "select nodeport::text from pg_dist_node where noderole = 'primary' order by groupid",
        );
        let want: Vec<String> = rports.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            nodes, want,
            "the restored pg_dist_node names the restored nodes"
        );
        for (i, p) in rports.iter().enumerate() {
            let prepared = citus::query(*p, "select gid from pg_prepared_xacts");
            assert!(
                prepared.is_empty(),
                "restored node {i}: prepared transactions left: {prepared:?}"
            );
            let interval = citus::query(*p, "show citus.recover_2pc_interval");
            assert_eq!(
                interval,
                ["1min"],
                "restored node {i}: 2PC recovery is back on"
            );
        }
        // The original cluster is untouched by the restored one.
        let after = CitusState::read(ports[0]);
        after.assert_consistent("the original cluster after the restore");
        assert_eq!(after.transfers, original.transfers);
    });
    stop_all();
}

/// Runs `f`; stops the restored servers (`stop`) before a failure unwinds.
fn stop_guard(stop: &dyn Fn(), f: impl FnOnce()) {
    if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        stop();
        std::panic::resume_unwind(e);
    }
}
