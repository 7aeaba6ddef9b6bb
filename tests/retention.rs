//! `delete` (retain, before, target, restore-point, everything, garbage),
//! `backup-mark` and `[retention]` on real PostgreSQL 15 servers and a
//! real S3 server (Garage): what is kept still restores to the same data,
//! what is deleted is gone from storage, a delete killed anywhere leaves
//! only garbage that `delete garbage` removes, a backup killed before its record
//! is garbage, bad input deletes nothing.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::pg::{pg_bin, pg_command, PgServer};
use common::{CbdrEnv, Storage};
use serde_json::Value;

struct Setup(CbdrEnv);

deref_env!(Setup);

fn setup(name: &str) -> Setup {
    Setup(
        CbdrEnv::builder(name)
            .storage(Storage::S3(String::new()))
            .build(),
    )
}

impl Setup {
    fn server(&self) -> PgServer {
        self.archiving_server()
            .conf("max_wal_size = '256MB'")
            .start()
    }

    fn keys(&self) -> BTreeSet<String> {
        self.object_keys().into_iter().collect()
    }

    /// Restores into a new directory (`args` name the target), starts the
    /// server there without archiving and returns it recovered.
    fn restored(&self, dir: &str, args: &[&str]) -> PgServer {
        let dir: PathBuf = self.path(dir);
        let port = common::free_port().to_string();
        let mut all = vec![
            "restore",
            "--target-dir",
            dir.to_str().unwrap(),
            "--archive-mode",
            "off",
            "--start",
            "--start-timeout",
            "120",
            "--port",
            &port,
        ];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert_eq!(
            out.code,
            0,
            "restore {args:?}: {}\n--- cbdr-start.log ---\n{}",
            out.stderr,
            std::fs::read_to_string(dir.join("cbdr-start.log")).unwrap_or_default()
        );
        stop(&dir);
        let s = PgServer::start_existing(&dir, PgServer::builder().conf("archive_mode = off"));
        s.wait_for_recovery_end();
        s
    }
}

fn stop(dir: &std::path::Path) {
    let stop = pg_command(pg_bin("pg_ctl"))
        .arg("-D")
        .arg(dir)
        .args(["stop", "-m", "fast"])
        .output()
        .unwrap();
    assert!(stop.status.success());
}

/// The table's data, as one comparable line.
fn state(server: &PgServer) -> String {
    server.psql(
        "select count(*) || ':' || coalesce(sum(v), 0) || ':' || md5(coalesce(string_agg(v::text, ',' order by v), '')) from t",
    )
}

/// The keys a clean run of `plan` (a `delete --json` plan) removes, among
/// `keys`.
fn planned_keys(keys: &BTreeSet<String>, plan: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| x["name"].as_str().unwrap().to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for b in strs(&plan["cluster_backups"]) {
        out.insert(format!("cluster/backups/{b}.json"));
    }
    for p in strs(&plan["cluster_restore_points"]) {
        out.insert(format!("cluster/restore_points/{p}.json"));
    }
    for i in plan["instances"].as_array().unwrap() {
        let id = i["content_id"].as_i64().unwrap();
        for b in strs(&i["backups"]) {
            let prefix = format!("seg{id}/basebackups/{b}/");
            out.extend(keys.iter().filter(|k| k.starts_with(&prefix)).cloned());
        }
        for p in strs(&i["restore_points"]) {
            out.insert(format!("seg{id}/restore_points/{p}.json"));
        }
        for h in strs(&i["history"]) {
            out.insert(format!("seg{id}/wal/history/{h}"));
        }
        for r in i["wal"].as_array().unwrap() {
            let (first, last) = (r["first"].as_str().unwrap(), r["last"].as_str().unwrap());
            let wal = format!("seg{id}/wal/");
            out.extend(
                keys.iter()
                    .filter(|k| k.starts_with(&wal) && !k.contains("/history/"))
                    .filter(|k| {
                        let name = k.rsplit('/').next().unwrap();
                        let seg = &name[..24.min(name.len())];
                        seg.len() == 24 && seg[..8] == first[..8] && seg >= first && seg <= last
                    })
                    .cloned(),
            );
        }
    }
    out.retain(|k| keys.contains(k));
    out
}

/// What is left of `before` is exactly `before` minus `deleted` (the
/// restore-point catalogues, derived from the records, aside).
fn assert_left(after: &BTreeSet<String>, before: &BTreeSet<String>, deleted: &BTreeSet<String>) {
    let derived = |k: &&String| !k.contains("/catalog/");
    let left: BTreeSet<&String> = after.intersection(before).filter(derived).collect();
    let expected: BTreeSet<&String> = before.difference(deleted).filter(derived).collect();
    let extra: Vec<&&String> = left.difference(&expected).collect();
    let missing: Vec<&&String> = expected.difference(&left).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "left but to be deleted: {extra:?}\nmissing but to be kept: {missing:?}"
    );
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn retain_keeps_what_restores_and_deletes_the_rest() {
    let s = setup("retention");
    let server = s.server();
    server.psql("create table t (v bigint)");
    let mut at_backup = Vec::new();
    let mut at_point = Vec::new();
    for i in 1..=4 {
        server.psql(&format!(
            "insert into t select g from generate_series({i}00, {i}99) g"
        ));
        at_backup.push(state(&server));
        s.on(&server).ok(&["backup-push"]);
        server.psql(&format!("insert into t values ({i}000000)"));
        s.on(&server)
            .ok(&["create-restore-point", &format!("p{i}")]);
        at_point.push(state(&server));
    }
    server.archive_everything();
    drop(server);

    // A promotion: the latest restored, started and promoted, archives
    // timeline 2 into the repository; a backup and a point on it.
    let dir = s.path("tl2");
    let port = common::free_port().to_string();
    s.ok(&[
        "restore",
        "--target-dir",
        dir.to_str().unwrap(),
        "--start",
        "--port",
        &port,
    ]);
    stop(&dir);
    let copy = PgServer::start_existing(&dir, PgServer::builder());
    copy.wait_for_recovery_end();
    copy.psql("insert into t values (5000000)");
    s.on(&copy).ok(&["backup-push"]);
    copy.psql("insert into t values (5000001)");
    s.on(&copy).ok(&["create-restore-point", "p5"]);
    at_point.push(state(&copy));
    copy.archive_everything();

    let listing = s.json(&["list", "--json", "--content-id", "-1"]);
    let backups = names(&listing["segments"][0]["backups"]);
    assert_eq!(backups.len(), 5, "{backups:?}");
    let timelines: Vec<u64> = listing["segments"][0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["timeline"].as_u64().unwrap())
        .collect();
    assert_eq!(timelines, [1, 1, 1, 1, 2]);

    // b2 is permanent.
    let out = s.ok(&["backup-mark", &backups[1]]);
    assert!(out.contains("permanent"), "{out}");
    assert_eq!(
        s.backups_of(-1)[1]["permanent"],
        Value::Bool(true),
        "list shows the mark"
    );

    // Bad input: exit 2, nothing deleted.
    let before = s.keys();
    for (args, needle) in [
        (vec!["delete", "retain", "0", "--confirm"], "retain 0"),
        (
            vec!["delete", "before", "2999-01-01T00:00:00Z", "--confirm"],
            "future",
        ),
        (
            vec!["delete", "before", "no_such_backup", "--confirm"],
            "no backup",
        ),
        (
            vec!["delete", "target", "no_such_backup", "--confirm"],
            "no backup",
        ),
        (
            vec!["delete", "restore-point", "nope", "--confirm"],
            "no restore point",
        ),
        (
            vec!["delete", "retain", "2", "--cascade", "--confirm"],
            "--cascade",
        ),
        (
            vec!["delete", "target", &backups[1], "--confirm"],
            "--impermanent",
        ),
        (vec!["delete", "everything", "--confirm"], "--force"),
    ] {
        s.refused(&args, 2, &[needle]);
    }
    assert_eq!(s.keys(), before, "bad input deleted something");

    // The dry run says what goes and deletes nothing.
    let dry = s.json(&["delete", "retain", "2", "--json"]);
    assert_eq!(dry["dry_run"], Value::Bool(true));
    assert_eq!(s.keys(), before, "the dry run deleted something");
    let plan = &dry["plan"];
    let inst = &plan["instances"][0];
    assert_eq!(
        names(&inst["backups"]),
        [backups[0].clone(), backups[2].clone()],
        "b1 and b3 go; b2 is permanent; b4 and b5 are the 2 newest"
    );
    let points: Vec<&str> = inst["restore_points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(points, ["p1", "p2", "p3"]);
    assert!(plan["kept"].to_string().contains("permanent"), "{plan}");
    let wal_files: u64 = inst["wal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["files"].as_u64().unwrap())
        .sum();
    assert!(wal_files >= 4, "{plan}");
    let text = s.ok(&["delete", "retain", "2"]);
    assert!(
        text.contains("Dry run") && text.contains("WAL timeline 1"),
        "{text}"
    );

    let deleted = planned_keys(&before, plan);
    let done = s.json(&["delete", "retain", "2", "--confirm", "--json"]);
    assert_eq!(done["dry_run"], Value::Bool(false));
    let after = s.keys();
    assert_left(&after, &before, &deleted);
    assert!(deleted.len() > 10, "{deleted:?}");
    assert_eq!(
        done["deleted"]["objects"].as_u64().unwrap() + done["deleted"]["records"].as_u64().unwrap(),
        deleted.len() as u64,
        "{done}"
    );
    assert!(
        !after.iter().any(|k| k.starts_with("deleting/")),
        "intent left"
    );
    assert_eq!(
        s.backup_names(),
        [backups[1].clone(), backups[3].clone(), backups[4].clone()]
    );
    // Running it again deletes nothing more.
    assert!(s
        .ok(&["delete", "retain", "2", "--confirm"])
        .contains("Nothing to delete"));

    // What is kept restores to its moment.
    let r = s.restored("to_p4", &["--restore-point", "p4"]);
    assert_eq!(state(&r), at_point[3], "p4");
    drop(r);
    let r = s.restored("to_p5", &["--restore-point", "p5"]);
    assert_eq!(state(&r), at_point[4], "p5 on timeline 2");
    drop(r);
    let r = s.restored("b2", &["--backup", &backups[1], "--immediate"]);
    assert_eq!(state(&r), at_backup[1], "the permanent b2");
    drop(r);
    // What is deleted is gone for restore too.
    s.refused(
        &[
            "restore",
            "--target-dir",
            s.path("to_p1").to_str().unwrap(),
            "--restore-point",
            "p1",
        ],
        1,
        &["p1"],
    );

    // [retention] after a backup: applied, logged on stdout.
    s.append_toml("[retention]\nfull = 1\n");
    let out = s.on(&copy).ok(&["backup-push"]);
    assert!(out.contains("retention: deleted 2 backups"), "{out}");
    let left = s.backup_names();
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left[0], backups[1], "the permanent one stays");
}

#[test]
fn a_killed_delete_leaves_garbage_that_garbage_removes() {
    let s = setup("retention-kill");
    let server = s.server();
    server.psql("create table t (v bigint)");
    let mut round = 0;
    for fault in [
        "delete-intent",
        "delete-record:1",
        "delete-record:3",
        "delete-object:1",
        "delete-object:9",
    ] {
        round += 1;
        s.on(&server).ok(&["backup-push"]);
        for _ in 0..3 {
            server.psql(
                "insert into t select g from generate_series(1, 1000) g; select pg_switch_wal()",
            );
        }
        s.on(&server)
            .ok(&["create-restore-point", &format!("rp{round}")]);
        s.on(&server).ok(&["backup-push"]);
        server.archive_everything();

        let before = s.keys();
        let kept_before = s.backup_names();
        let dry = s.json(&["delete", "retain", "1", "--json"]);
        let deleted = planned_keys(&before, &dry["plan"]);
        assert!(deleted.len() > 5, "{fault}: {dry}");
        let out = s
            .cmd()
            .env("CBDR_FAULT", fault)
            .run(&["delete", "retain", "1", "--confirm"]);
        assert!(
            out.stderr.contains("killed at point"),
            "{fault}: {} {}",
            out.code,
            out.stderr
        );
        // Every backup list shows is whole.
        let during = s.keys();
        let listed = s.backup_names();
        assert!(!listed.is_empty() && listed.len() <= kept_before.len());
        for b in &listed {
            let prefix = format!("seg-1/basebackups/{b}/");
            for k in before.iter().filter(|k| k.starts_with(&prefix)) {
                assert!(during.contains(k), "{fault}: listed backup {b} lost {k}");
            }
        }
        assert!(
            during.iter().any(|k| k.starts_with("deleting/")),
            "{fault}: the intent stays"
        );
        let g = s.json(&["delete", "garbage", "--json"]);
        assert_eq!(g["plan"]["pending"].as_array().unwrap().len(), 1, "{g}");
        s.ok(&["delete", "garbage", "--confirm"]);
        assert_left(&s.keys(), &before, &deleted);
        assert_eq!(s.backup_names(), [kept_before.last().unwrap().clone()]);
    }
    // The one kept restores.
    let expected = state(&server);
    server.archive_everything();
    drop(server);
    let r = s.restored("latest", &[]);
    assert_eq!(state(&r), expected);
}

#[test]
fn a_backup_killed_before_its_record_is_garbage() {
    let s = setup("retention-killed-backup");
    let server = s.server();
    server.run_pgbench(&["-i", "-s", "2", "-q"]);
    server.psql("create table t (v bigint); insert into t values (1)");
    s.on(&server).ok(&["backup-push"]);
    let good = s.backup_names();
    let before = s.keys();
    let out = s
        .on(&server)
        .env("CBDR_FAULT", "backup-record")
        .run(&["backup-push"]);
    assert!(out.stderr.contains("killed at point"), "{}", out.stderr);
    assert_eq!(s.backup_names(), good, "the killed backup is not listed");
    let new: Vec<String> = s
        .keys()
        .difference(&before)
        .filter(|k| k.contains("/basebackups/"))
        .cloned()
        .collect();

    // Within the grace period it is left alone.
    let g = s.json(&["delete", "garbage", "--json"]);
    assert!(g["plan"]["orphans"].as_array().unwrap().is_empty(), "{g}");
    assert!(
        g["plan"]["incomplete_uploads"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{g}"
    );
    let g = s.json(&["delete", "garbage", "--grace", "0", "--json"]);
    let found = g["plan"]["orphans"].as_array().unwrap().len()
        + g["plan"]["incomplete_uploads"].as_array().unwrap().len();
    assert!(
        found >= 1,
        "the killed backup left objects or an upload: {g}"
    );
    assert!(!new.is_empty(), "every part and the manifest were stored");
    assert_eq!(g["plan"]["orphans"].as_array().unwrap().len(), 1, "{g}");
    s.ok(&["delete", "garbage", "--grace", "0", "--confirm"]);
    let after = s.keys();
    for k in &new {
        assert!(!after.contains(k), "{k} is left");
    }
    let g = s.json(&["delete", "garbage", "--grace", "0", "--json"]);
    assert!(
        g["plan"]["incomplete_uploads"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{g}"
    );
    assert!(g["plan"]["orphans"].as_array().unwrap().is_empty(), "{g}");
    // The good backup restores.
    server.psql("insert into t values (2)");
    let expected = state(&server);
    server.archive_everything();
    drop(server);
    let r = s.restored("latest", &[]);
    assert_eq!(state(&r), expected);
    drop(r);
    // A finished restore removed its lease; a killed one leaves it, and
    // until it expires the backup it covers cannot be deleted.
    assert!(!s.keys().iter().any(|k| k.starts_with("leases/")));
    let dir = s.path("killed_restore");
    let out = s.cmd().env("CBDR_FAULT", "restore-unpack:5").run(&[
        "restore",
        "--target-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(out.stderr.contains("killed at point"), "{}", out.stderr);
    assert!(s.keys().iter().any(|k| k.starts_with("leases/")));
    s.refused(
        &["delete", "target", &good[0], "--confirm"],
        2,
        &["in use", "restore on"],
    );
    s.refused(&["delete", "everything", "--confirm"], 2, &["in use"]);
    assert_eq!(s.backup_names(), good);
}

/// `psql -c SQL` on 127.0.0.1:`port`.
fn psql_port(port: u16, sql: &str) -> String {
    let out = pg_command(pg_bin("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-p",
            &port.to_string(),
            "-XAtc",
        ])
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn cluster_backups_are_deleted_as_a_whole() {
    use common::cluster::TestCluster;
    let mut c = TestCluster::start("cbdr-retention-cluster", 3, None);
    c.start_agents();
    for s in &c.servers {
        s.psql("create table t (v bigint)");
    }
    let mut backups = Vec::new();
    let mut states = Vec::new();
    for round in 1..=3 {
        for s in &c.servers {
            s.psql(&format!(
                "insert into t select g from generate_series(1, {round}00) g"
            ));
        }
        states.push(c.servers.iter().map(state).collect::<Vec<_>>());
        let out = c.ok(&["backup-push"]);
        backups.push(out.split_whitespace().nth(2).unwrap().to_string());
    }
    let env = &c.env;
    let before: BTreeSet<String> = env.object_keys().into_iter().collect();
    // On one instance, a cluster backup's parts are not its own.
    let one = env.json(&["delete", "retain", "1", "--content-id", "0", "--json"]);
    assert!(
        one["plan"]["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["backups"].as_array().unwrap().is_empty()),
        "{one}"
    );
    env.refused(
        &["delete", "target", "no_such", "--content-id", "0"],
        2,
        &["no backup"],
    );

    let dry = env.json(&["delete", "retain", "2", "--json"]);
    let plan = &dry["plan"];
    assert_eq!(names(&plan["cluster_backups"]), [backups[0].clone()]);
    assert_eq!(plan["cluster_restore_points"][0], backups[0].as_str());
    assert_eq!(plan["instances"].as_array().unwrap().len(), 4, "{plan}");
    for i in plan["instances"].as_array().unwrap() {
        assert_eq!(i["backups"].as_array().unwrap().len(), 1, "{i}");
    }
    let deleted = planned_keys(&before, plan);
    env.ok(&["delete", "retain", "2", "--confirm"]);
    let after: BTreeSet<String> = env.object_keys().into_iter().collect();
    assert_left(&after, &before, &deleted);
    assert!(!after.contains(&format!("cluster/backups/{}.json", backups[0])));
    let listing = env.json(&["list", "--json"]);
    assert_eq!(names(&listing["cluster"]["backups"]), backups[1..].to_vec());

    // The oldest kept cluster backup restores to its point on every instance.
    let (rc, ports) = c.restore_config("older");
    c.ok(&[
        "restore",
        "--restore-config",
        rc.to_str().unwrap(),
        "--backup",
        &backups[1],
        "--start",
        "--archive-mode",
        "off",
    ]);
    for (i, port) in ports.iter().enumerate() {
        let got = psql_port(
            *port,
            "select count(*) || ':' || coalesce(sum(v), 0) || ':' || md5(coalesce(string_agg(v::text, ',' order by v), '')) from t",
        );
        assert_eq!(got, states[1][i], "instance {i}");
        common::cluster::stop_data_dir(&c.path("older").join(format!("seg{}", i as i32 - 1)));
    }
}

#[test]
fn an_abandoned_multipart_upload_is_aborted_by_garbage() {
    // 5 MiB S3 parts and 20 MiB of random (incompressible) rows: a backup
    // part is a multipart upload, killed after its first part landed.
    let bucket = common::garage::bucket("retention-multipart");
    let storage = format!("{}part_size = 5242880\n", bucket.config_toml(""));
    let s = Setup(
        CbdrEnv::builder("retention-multipart")
            .storage(Storage::Toml(storage))
            .build(),
    );
    let server = s.server();
    server.psql("create table r (b bytea); alter table r alter b set storage external");
    server.psql(
        "insert into r select (select decode(string_agg(md5(random()::text || g || i), ''), 'hex') from generate_series(1, 65536) i) from generate_series(1, 20) g",
    );
    let out = s
        .on(&server)
        .env("CBDR_FAULT", "s3-put-part:1")
        .run(&["backup-push"]);
    assert!(
        out.stderr.contains("killed at point s3-put-part"),
        "{}",
        out.stderr
    );
    let g = s.json(&["delete", "garbage", "--json"]);
    assert!(
        g["plan"]["incomplete_uploads"]
            .as_array()
            .unwrap()
            .is_empty(),
        "within the grace period: {g}"
    );
    let g = s.json(&["delete", "garbage", "--grace", "0", "--json"]);
    let uploads = g["plan"]["incomplete_uploads"].as_array().unwrap();
    assert!(!uploads.is_empty(), "{g}");
    assert!(
        uploads
            .iter()
            .all(|u| u["key"].as_str().unwrap().contains("/basebackups/")),
        "{g}"
    );
    s.ok(&["delete", "garbage", "--grace", "0", "--confirm"]);
    let g = s.json(&["delete", "garbage", "--grace", "0", "--json"]);
    assert!(
        g["plan"]["incomplete_uploads"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{g}"
    );
    // A backup afterwards completes and restores.
    s.on(&server).ok(&["backup-push"]);
    let expected = server
        .psql("select count(*) || ':' || md5(string_agg(md5(b), ',' order by md5(b))) from r");
    server.archive_everything();
    drop(server);
    let dir = s.path("restored");
    s.ok(&["restore", "--target-dir", dir.to_str().unwrap()]);
    let r = PgServer::start_existing(&dir, PgServer::builder().conf("archive_mode = off"));
    r.wait_for_recovery_end();
    assert_eq!(
        r.psql("select count(*) || ':' || md5(string_agg(md5(b), ',' order by md5(b))) from r"),
        expected
    );
}

/// A cluster (coordinator and 3 segments) on Garage: `delete retain 1`
/// killed (SIGKILL) at several points. At every point, every backup `list`
/// shows (cluster backups and each instance's) still verifies in full:
/// every object, every file against its manifest, the WAL it needs; then
/// `delete garbage --confirm` leaves exactly what a clean delete would. The
/// one kept at the end restores.
#[test]
fn a_killed_cluster_delete_leaves_garbage_that_garbage_removes() {
    use common::cluster::{ClusterOpts, TestCluster};
    let mut c = TestCluster::start_opts(
        "cbdr-retention-cluster-kill",
        3,
        None,
        ClusterOpts {
            s3: true,
            ..ClusterOpts::default()
        },
    );
    c.start_agents();
    for s in &c.servers {
        s.psql("create table t (v bigint)");
    }
    let backup = |c: &TestCluster| -> String {
        let out = c.ok(&["backup-push"]);
        out.split_whitespace().nth(2).unwrap().to_string()
    };
    backup(&c);
    // A plan of a cluster backup: its record and point first (the first
    // two records), then its 4 instances' records, then the data.
    for fault in [
        "delete-intent",
        "delete-record:1",
        "delete-record:4",
        "delete-object:1",
        "delete-object:12",
    ] {
        for s in &c.servers {
            s.psql("insert into t select g from generate_series(1, 500) g; select pg_switch_wal()");
        }
        let newest = backup(&c);
        for s in &c.servers {
            s.archive_everything();
        }
        let env = &c.env;
        let before: BTreeSet<String> = env.object_keys().into_iter().collect();
        let dry = env.json(&["delete", "retain", "1", "--json"]);
        assert_eq!(
            dry["plan"]["cluster_backups"].as_array().unwrap().len(),
            1,
            "{fault}: {dry}"
        );
        let deleted = planned_keys(&before, &dry["plan"]);
        let out = env
            .cmd()
            .env("CBDR_FAULT", fault)
            .run(&["delete", "retain", "1", "--confirm"]);
        assert!(
            out.stderr.contains("killed at point"),
            "{fault}: {} {}",
            out.code,
            out.stderr
        );
        // Whatever list shows is whole: verify reads every object of every
        // listed backup and the WAL each needs, and finds no fault.
        let listing = env.json(&["list", "--json"]);
        let listed = names(&listing["cluster"]["backups"]);
        assert!(listed.contains(&newest), "{fault}: {listing}");
        let r = env.run(&["verify", "--json", "--wal-since", "all"]);
        let report: Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("{fault}: {e}: {}\n{}", r.stdout, r.stderr));
        assert_eq!(r.code, 0, "{fault}: {report}");
        assert_eq!(
            report["cluster_backups"].as_array().unwrap().len(),
            listed.len(),
            "{fault}: {report}"
        );
        let instance_backups: usize = listing["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["backups"].as_array().unwrap().len())
            .sum();
        assert_eq!(
            report["backups"].as_array().unwrap().len(),
            instance_backups,
            "{fault}: {report}"
        );
        assert!(
            report["backups"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["manifest_checked"] == true && b["files"].as_u64().unwrap() > 900),
            "{fault}: {report}"
        );
        // The rest is garbage that garbage removes: what is left is what a
        // clean delete leaves.
        let g = env.json(&["delete", "garbage", "--json"]);
        assert_eq!(
            g["plan"]["pending"].as_array().unwrap().len(),
            1,
            "{fault}: {g}"
        );
        env.ok(&["delete", "garbage", "--confirm"]);
        let after: BTreeSet<String> = env.object_keys().into_iter().collect();
        assert_left(&after, &before, &deleted);
        assert!(
            !after.iter().any(|k| k.starts_with("deleting/")),
            "{fault}: the intent is gone"
        );
        let listing = env.json(&["list", "--json"]);
        assert_eq!(
            names(&listing["cluster"]["backups"]),
            std::slice::from_ref(&newest),
            "{fault}"
        );
    }
    // The one kept restores, on every instance.
    let states: Vec<String> = c.servers.iter().map(state).collect();
    let (rc, ports) = c.restore_config("kept");
    c.ok(&[
        "restore",
        "--restore-config",
        rc.to_str().unwrap(),
        "--start",
        "--archive-mode",
        "off",
    ]);
    for (i, port) in ports.iter().enumerate() {
        let got = psql_port(
            *port,
            "select count(*) || ':' || coalesce(sum(v), 0) || ':' || md5(coalesce(string_agg(v::text, ',' order by v), '')) from t",
        );
        assert_eq!(got, states[i], "instance {i}");
        common::cluster::stop_data_dir(&c.path("kept").join(format!("seg{}", i as i32 - 1)));
    }
}
