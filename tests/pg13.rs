//! The physical path on PostgreSQL 13, the pre-15 replication protocol
//! (`BASE_BACKUP LABEL … NOWAIT MANIFEST 'yes'`, no COMPRESSION) that
//! Greenplum 7 and Cloudberry also speak: WAL archiving, backups on Garage,
//! restores to a restore point, a time and an LSN checked by PostgreSQL 13's
//! pg_verifybackup, and a cluster of a coordinator and 2 segments restored
//! to a consistent restore point under the two-phase-commit bank.
//!
//! Every server, `pg_dump` and `pg_verifybackup` here is PostgreSQL 13's
//! (from Debian 11's packages, `scripts/fetch-pg13.sh`).

mod common;

use common::bank::{self, Bank};
use common::cluster::{stop_data_dir, TestCluster, BARRIER_KEY};
use common::pg::{verify_backup, PgServer};
use common::{CbdrEnv, Key, QuietPoint, Storage};

const KEY_HEX: &str = "1f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddee13";

#[test]
fn single_server_backup_and_point_in_time_restores() {
    if !common::pg13::use_pg13() {
        return;
    }
    let env = CbdrEnv::builder("pg13")
        .storage(Storage::S3("pg13".into()))
        .key(Key::Raw(KEY_HEX.into()))
        .build();
    let server = env
        .archiving_server()
        .conf("max_wal_size = '256MB'")
        .start();
    assert!(
        server.psql("show server_version").starts_with("13."),
        "the server is PostgreSQL 13"
    );
    server.run_pgbench(&["-i", "-s", "2", "-q"]);

    let writer = server.pgbench(&["-c", "2", "-T", "3", "-n"]);
    let out = env.on(&server).ok(&["backup-push"]);
    assert!(out.contains("complete"), "{out}");
    assert!(writer.wait_with_output().unwrap().status.success());
    server.run_pgbench(&["-c", "2", "-t", "200", "-n"]);

    let QuietPoint {
        lsn,
        time,
        dump: at_point,
    } = env.quiet_point(&server, "p13");
    server.run_pgbench(&["-c", "2", "-t", "300", "-n"]);
    assert_ne!(server.dump(), at_point);
    server.archive_everything();

    for (name, target) in [
        ("to_point", ["--restore-point", "p13"]),
        ("to_time", ["--target-time", time.as_str()]),
        ("to_lsn", ["--target-lsn", lsn.as_str()]),
    ] {
        let dir = env.path(name);
        let mut args = vec!["restore", "--target-dir", dir.to_str().unwrap()];
        args.extend_from_slice(&target);
        let (code, out, err) = env.cmd().run(&args).parts();
        assert_eq!(code, 0, "restore {name}: {out}{err}");
        verify_backup(&dir);
        let restored = PgServer::start_restored(&dir);
        let got = restored.dump();
        assert!(
            got == at_point,
            "PostgreSQL 13 restored {name}: the dump differs from the one at the point ({} vs {} bytes)",
            got.len(),
            at_point.len()
        );
    }
    let listing = env.ok(&["list"]);
    assert!(
        listing.contains("p13") && listing.contains("base_"),
        "{listing}"
    );
}

#[test]
fn cluster_restore_point_under_two_phase_commit() {
    if !common::pg13::use_pg13() {
        return;
    }
    let mut c = TestCluster::start("cbdr-pg13-cluster", 2, None);
    let ports: Vec<u16> = c.servers[1..].iter().map(|s| s.port()).collect();
    bank::setup(&ports);
    c.start_agents();
    let bank = Bank::start(c.coordinator().port(), &ports, BARRIER_KEY, 2);
    bank.wait_for(10);
    let out = c.ok(&["backup-push"]);
    assert!(out.contains("3 instances"), "{out}");
    bank.wait_for(30);
    c.ok(&["create-restore-point", "rp13"]);
    bank.wait_for(10);
    bank.stop();

    let (rc, rports) = c.restore_config("r13");
    let out = c.ok(&[
        "restore",
        "--restore-config",
        rc.to_str().unwrap(),
        "--restore-point",
        "rp13",
        "--start",
        "--archive-mode",
        "off",
        "--rollback-prepared",
    ]);
    let dirs: Vec<_> = (0..c.servers.len())
        .map(|i| c.path("r13").join(format!("seg{}", i as i32 - 1)))
        .collect();
    let state = bank::BankState::read(&rports[1..]);
    let version = common::citus::query(rports[0], "show server_version");
    for d in &dirs {
        stop_data_dir(d);
    }
    assert!(
        out.contains("cluster restored to restore point rp13 (3 instances)"),
        "{out}"
    );
    assert!(
        version[0].starts_with("13."),
        "restored as PostgreSQL 13: {version:?}"
    );
    state.assert_consistent(2, "PostgreSQL 13 cluster restored to rp13");
    assert_eq!(state.prepared, 0);
    assert!(!state.transfers.is_empty());
}
