//! Delta base backups (block format) of a real PostgreSQL 15, on the
//! filesystem repository and on Garage: a chain full → delta → delta, each
//! restored to a restore point after it and compared with pg_dump; a base
//! on another timeline or of another server refused; a damaged block in
//! the middle of the chain; a cluster delta.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::pg::{verify_backup, PgServer};
use common::{CbdrEnv, Key, Storage};

const KEY_HEX: &str = "a0b1c2d3e4f5061728394a5b6c7d8e9f00112233445566778899aabbccddeeff";

struct Setup(CbdrEnv);

deref_env!(Setup);

fn setup(name: &str, storage: Storage) -> Setup {
    Setup(
        CbdrEnv::builder(name)
            .storage(storage)
            .key(Key::Raw(KEY_HEX.into()))
            .extra_toml("[backup]\ndelta_max_steps = 6\n")
            .build(),
    )
}

impl Setup {
    /// `backup-push ARGS`; returns its stdout and stderr.
    fn push(&self, server: &PgServer, args: &[&str]) -> (String, String) {
        let mut all = vec!["backup-push"];
        all.extend_from_slice(args);
        let out = self.on(server).run(&all);
        assert_eq!(
            out.code, 0,
            "backup-push {args:?}:\n{}\n{}",
            out.stdout, out.stderr
        );
        (out.stdout, out.stderr)
    }

    /// Restores to a restore point; returns the directory (checked by
    /// pg_verifybackup before recovery) and stdout.
    fn restore_to(&self, name: &str, point: &str) -> (PathBuf, String) {
        let dir = self.path(name);
        let out = self.run(&[
            "restore",
            "--target-dir",
            dir.to_str().unwrap(),
            "--restore-point",
            point,
        ]);
        assert_eq!(out.code, 0, "restore to {point}:\n{}", out.stderr);
        verify_backup(&dir);
        (dir, out.stdout)
    }
}

fn start_restored(dir: &Path) -> PgServer {
    let s = PgServer::start_existing(dir, PgServer::builder().conf("archive_mode = off"));
    s.wait_for_recovery_end();
    s
}

/// 64 random (incompressible) bytes.
const RANDOM_BYTES: &str =
    "decode(md5(random()::text) || md5(random()::text) || md5(random()::text) || md5(random()::text), 'hex')";

fn load_tables(server: &PgServer) {
    server.run_pgbench(&["-i", "-s", "2", "-q"]);
    server.psql(&format!(
        "create table t_last (id int, pad text) with (fillfactor = 100);
         insert into t_last select i, repeat('l', 100) from generate_series(1, 20000) i;
         create table t_shrink (id int, pad text);
         insert into t_shrink select i, repeat('s', 100) from generate_series(1, 20000) i;
         create table t_append (id int, pad text);
         insert into t_append select i, repeat('a', 100) from generate_series(1, 10000) i;
         create table t_rand (id int primary key, data bytea);
         insert into t_rand select i, {RANDOM_BYTES} from generate_series(1, 20000) i;
         create table t_trunc as select i from generate_series(1, 20000) i;
         create table t_drop as select i from generate_series(1, 20000) i;
         checkpoint;"
    ));
}

fn file_of(server: &PgServer, table: &str) -> PathBuf {
    server
        .data_dir()
        .join(server.psql(&format!("select pg_relation_filepath('{table}')")))
}

fn list_backups(s: &Setup) -> Vec<serde_json::Value> {
    s.backups_of(-1)
}

/// The chain full → delta → delta with the load of the issue between
/// them, each delta restored to a point after it.
fn chain(s: &Setup, server: &PgServer) -> [String; 3] {
    load_tables(server);
    let (out, _) = s.push(server, &["--full"]);
    assert!(out.contains("(full)"), "{out}");

    // Load 1: updates on some tables, a new table, a dropped table, a
    // truncated table, a VACUUM FULL, a new index, 1% of the random rows.
    server.run_pgbench(&["-n", "-c", "2", "-t", "200"]);
    server.psql(&format!(
        "create table t_new as select i from generate_series(1, 5000) i;
         drop table t_drop;
         truncate t_trunc;
         vacuum full pgbench_tellers;
         create index t_rand_data on t_rand (data);
         update t_rand set data = {RANDOM_BYTES} where id % 100 = 0;
         checkpoint;"
    ));
    let (out, _) = s.push(server, &["--delta"]);
    assert!(
        out.contains("delta of") && out.contains("a chain of 2"),
        "{out}"
    );
    s.on(server).ok(&["create-restore-point", "after_d1"]);
    let dump1 = server.dump();

    // Load 2: a file changed in its last block only, one that shrinks, one
    // that grows by appending, 1% of the random rows again.
    let last = file_of(server, "t_last");
    let shrink = file_of(server, "t_shrink");
    let append = file_of(server, "t_append");
    let sizes = |p: &[&PathBuf]| {
        p.iter()
            .map(|f| fs::metadata(f).unwrap().len())
            .collect::<Vec<_>>()
    };
    let before = sizes(&[&last, &shrink, &append]);
    server.run_pgbench(&["-n", "-c", "2", "-t", "100"]);
    server.psql(&format!(
        "insert into t_last values (20001, 'the last block');
         delete from t_shrink where id > 10000;
         vacuum t_shrink;
         insert into t_append select i, repeat('b', 100) from generate_series(10001, 15000) i;
         update t_rand set data = {RANDOM_BYTES} where id % 100 = 1;
         checkpoint;"
    ));
    let after = sizes(&[&last, &shrink, &append]);
    assert_eq!(after[0], before[0], "t_last changed in its last block only");
    assert!(
        after[1] < before[1],
        "t_shrink shrank: {before:?} {after:?}"
    );
    assert!(after[2] > before[2], "t_append grew: {before:?} {after:?}");
    let (out, _) = s.push(server, &["--delta"]);
    assert!(out.contains("a chain of 3"), "{out}");
    s.on(server).ok(&["create-restore-point", "after_d2"]);
    let dump2 = server.dump();
    server.archive_everything();

    // The listing: full, delta of it, delta of that; a delta stores less
    // than the full and stands for as much.
    let backups = list_backups(s);
    assert_eq!(backups.len(), 3, "{backups:#?}");
    let names: Vec<String> = backups
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert!(backups[0]["base"].is_null());
    assert_eq!(backups[1]["base"], names[0].as_str());
    assert_eq!(backups[2]["base"], names[1].as_str());
    assert_eq!(backups[2]["chain"].as_array().unwrap().len(), 3);
    let bytes = |b: &serde_json::Value, k: &str| -> u64 {
        b["archives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a[k].as_u64().unwrap())
            .sum()
    };
    let full_stored = bytes(&backups[0], "stored_bytes");
    for d in &backups[1..] {
        eprintln!(
            "delta {}: stored {} of {} bytes (the full stored {full_stored})",
            d["name"],
            bytes(d, "stored_bytes"),
            bytes(d, "plain_bytes")
        );
        assert!(bytes(d, "stored_bytes") < full_stored * 3 / 4, "{d:#?}");
    }
    let text = s.ok(&["list"]);
    assert!(
        text.contains("delta/3") && text.contains(&format!("base {}", names[1])),
        "{text}"
    );

    // Each restore point restored from its delta: the files verify against
    // the newest backup's manifest, and the data is the data at the point.
    for (point, dump, backup) in [
        ("after_d1", &dump1, &names[1]),
        ("after_d2", &dump2, &names[2]),
    ] {
        let (dir, err) = s.restore_to(point, point);
        assert!(
            err.contains(backup.as_str()),
            "{point} restored from {backup}: {err}"
        );
        let restored = start_restored(&dir);
        assert_eq!(&restored.dump(), dump, "{point}");
    }
    [names[0].clone(), names[1].clone(), names[2].clone()]
}

#[test]
fn delta_chain_on_filesystem() {
    let s = setup("delta", Storage::Fs);
    let server = s.archiving_server().conf("max_wal_size = '256MB'").start();
    let names = chain(&s, &server);

    // A base of another server (another system identifier): refused, a
    // full backup instead, with a message.
    // (It archives nothing: its WAL would clash with the first server's
    // names; its backup only needs to be the newest record.)
    let other = PgServer::builder()
        .initdb_arg("--wal-segsize=1")
        .conf("archive_mode = on")
        .conf("archive_command = '/bin/true'")
        .start();
    let (out, err) = s.push(&other, &["--delta"]);
    assert!(out.contains("(full)"), "{out}");
    assert!(err.contains("another server"), "{err}");
    drop(other);

    // A base on another timeline: a copy restored and promoted is on
    // timeline 2; the newest backup of this content id (the full of the
    // other server aside, taken from the original's) is not a base for it.
    let (out, _) = s.push(&server, &["--delta"]);
    assert!(
        out.contains("(full)"),
        "the other server's full is no base: {out}"
    );
    let (out, _) = s.push(&server, &["--delta"]);
    assert!(out.contains("(delta of"), "{out}");
    server.archive_everything();
    let dir = s.path("promoted");
    let restore = s.run(&["restore", "--target-dir", dir.to_str().unwrap()]);
    assert_eq!(restore.code, 0, "{}", restore.stderr);
    let promoted = PgServer::start_existing(&dir, PgServer::builder());
    promoted.wait_for_recovery_end();
    let (out, err) = s.push(&promoted, &["--delta"]);
    assert!(out.contains("(full)"), "{out}");
    assert!(
        err.contains("timeline 1") && err.contains("timeline 2"),
        "{err}"
    );
    drop(promoted);

    // A damaged extent in the middle of the chain (the first delta): the
    // restore of the second fails with exit 4 naming the backup and the
    // file, and leaves no pg_control.
    corrupt_every_extent(
        &s.repo()
            .join(format!("seg-1/basebackups/{}/blocks", names[1])),
    );
    let dir = s.path("damaged");
    let err = s.refused(
        &[
            "restore",
            "--target-dir",
            dir.to_str().unwrap(),
            "--restore-point",
            "after_d2",
        ],
        4,
        &[&format!("backup {} is damaged", names[1])],
    );
    assert!(err.contains("base/"), "names the file: {err}");
    eprintln!("the damaged chain's restore said: {err}");
    assert!(!dir.join("global/pg_control").exists());
    // A missing pack: refused before anything is written.
    let pack = first_file(
        &s.repo()
            .join(format!("seg-1/basebackups/{}/blocks", names[0])),
    );
    fs::remove_file(&pack).unwrap();
    let dir = s.path("missing");
    s.refused(
        &[
            "restore",
            "--target-dir",
            dir.to_str().unwrap(),
            "--restore-point",
            "after_d1",
        ],
        4,
        &[&format!("backup {} is damaged", names[0]), "is missing"],
    );
    assert!(!dir.join("global/pg_control").exists());
}

#[test]
fn delta_chain_on_garage() {
    let s = setup("delta-s3", Storage::S3("d".into()));
    let server = s.archiving_server().conf("max_wal_size = '256MB'").start();
    chain(&s, &server);
}

fn first_file(dir: &Path) -> PathBuf {
    let mut files = Vec::new();
    walk(dir, &mut files);
    files.sort();
    files.remove(0)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Flips a byte in the middle of every object of every pack under `dir`.
fn corrupt_every_extent(dir: &Path) {
    let mut files = Vec::new();
    walk(dir, &mut files);
    assert!(!files.is_empty(), "no pack under {}", dir.display());
    for f in files {
        let mut bytes = fs::read(&f).unwrap();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            bytes[at + 4 + len / 2] ^= 0x40;
            at += 4 + len;
        }
        fs::write(&f, bytes).unwrap();
    }
}

/// A coordinator and 3 segments: a cluster full backup, the bank workload,
/// a cluster delta (each instance against its own base), a restore point,
/// a cluster restore: the bank's invariant holds.
#[test]
fn cluster_delta_backup_and_restore() {
    use common::bank::{self, Bank};
    use common::cluster::{TestCluster, BARRIER_KEY};
    let mut c = TestCluster::start("cbdr-delta-cluster", 3, None);
    let ports: Vec<u16> = c.servers[1..].iter().map(|s| s.port()).collect();
    bank::setup(&ports);
    c.start_agents();
    let bank = Bank::start(c.coordinator().port(), &ports, BARRIER_KEY, 3);
    bank.wait_for(10);
    // No backup yet: --delta takes a full one (of the block format).
    let out = c.ok(&["backup-push", "--delta"]);
    assert!(out.contains("(full)"), "{out}");
    bank.wait_for(30);
    let out = c.ok(&["backup-push", "--delta"]);
    assert!(out.contains("(delta of cluster_"), "{out}");
    assert_eq!(out.matches("delta, a chain of 2").count(), 4, "{out}");
    bank.wait_for(20);
    c.ok(&["create-restore-point", "rp_delta"]);
    bank.wait_for(10);
    bank.stop();

    let listing: serde_json::Value = serde_json::from_str(&c.ok(&["list", "--json"])).unwrap();
    let backups = listing["cluster"]["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 2, "{listing}");
    assert!(backups[0]["base"].is_null());
    assert_eq!(backups[1]["base"], backups[0]["name"]);
    for (full, delta) in backups[0]["segments"]
        .as_array()
        .unwrap()
        .iter()
        .zip(backups[1]["segments"].as_array().unwrap())
    {
        assert_eq!(full["content_id"], delta["content_id"]);
        let chain = delta["chain"].as_array().unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(
            chain[1], full["backup"],
            "each instance against its own base"
        );
    }

    let (rc, rports) = c.restore_config("to_rp_delta");
    let out = c.ok(&[
        "restore",
        "--restore-config",
        rc.to_str().unwrap(),
        "--start",
        "--archive-mode",
        "off",
        "--restore-point",
        "rp_delta",
        "--rollback-prepared",
    ]);
    assert!(
        out.contains("cluster restored to restore point rp_delta (4 instances)"),
        "{out}"
    );
    let state = bank::BankState::read(&rports[1..]);
    for i in 0..c.servers.len() {
        common::cluster::stop_data_dir(&c.path("to_rp_delta").join(format!("seg{}", i as i32 - 1)));
    }
    state.assert_consistent(3, "restored to rp_delta from the cluster delta");
    assert!(!state.transfers.is_empty());
}
