//! Backups and restores meeting what a DBA gets wrong or what goes wrong
//! in the repository: two backups at once, a restore over a running
//! server, a damaged record, a target the archive cannot reach. Real
//! PostgreSQL 15, on the filesystem repository and on Garage.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use cbdr::storage::{body_from_bytes, get_bytes, S3Storage, Storage as _};
use common::pg::{chown_to_pg, PgServer};
use common::{garage, CbdrEnv, Key, Output, Storage};
const KEY_HEX: &str = "1f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff";
const SEGMENT: u64 = 1 << 20;

/// The shared environment with this file's key.
struct Setup(CbdrEnv);

deref_env!(Setup);

fn setup(storage: Storage) -> Setup {
    Setup(
        CbdrEnv::builder("faults")
            .storage(storage)
            .key(Key::Raw(KEY_HEX.into()))
            .wal_segment_size(Some(SEGMENT))
            .build(),
    )
}

impl Setup {
    fn server(&self) -> PgServer {
        self.archiving_server().start()
    }

    fn cbdr(&self, server: Option<&PgServer>, args: &[&str]) -> Output {
        self.cmd().pg(server).run(args)
    }

    fn listing(&self) -> serde_json::Value {
        self.json(&["list", "--json", "--content-id", "-1"])
    }

    fn restore(&self, dir: &Path, args: &[&str]) -> Output {
        let mut all = vec!["restore", "--target-dir", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        self.cbdr(None, &all)
    }

    /// A restore refused up front: exit 2, nothing written to `dir`.
    fn refused(&self, what: &str, args: &[&str], needle: &str) -> String {
        self.refused_with(2, what, args, needle)
    }

    /// As `refused`, with the exit code expected (1: the named thing is
    /// not in the repository).
    fn refused_with(&self, code: i32, what: &str, args: &[&str], needle: &str) -> String {
        let dir = self.path(format!("refused_{what}"));
        let r = self.restore(&dir, args);
        assert_eq!(r.code, code, "{what}: {}", r.stderr);
        assert!(r.stderr.contains(needle), "{what}: {}", r.stderr);
        // Targets and LSNs as a DBA writes them, not Debug forms.
        for debug in ["Lsn(", "Time(", "Xid(", "RestorePoint("] {
            assert!(!r.stderr.contains(debug), "{what}: {}", r.stderr);
        }
        assert!(!dir.exists(), "{what}: {} was created", dir.display());
        eprintln!("refused ({what}): {}", r.stderr.trim());
        r.stderr
    }

    /// Two `backup-push` at once: both complete, under different names.
    fn two_backups_at_once(&self, server: &PgServer) -> [String; 2] {
        let spawn = || {
            self.on(server)
                .command(&["backup-push"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        let names = [a, b].map(|c| {
            let r = Output::of(c.wait_with_output().unwrap());
            assert_eq!(r.code, 0, "backup-push: {}", r.stderr);
            // "backup NAME complete: ..."
            r.stdout
                .split_whitespace()
                .nth(1)
                .unwrap_or_else(|| panic!("no name in {:?}", r.stdout))
                .to_string()
        });
        eprintln!("two backups at once: {names:?}");
        assert_ne!(names[0], names[1], "two backups got one name");
        let mut listed = self.backup_names();
        listed.sort();
        let mut want = names.to_vec();
        want.sort();
        assert_eq!(listed, want, "both backups are listed");
        names
    }
}

/// The table's row count and a digest of its contents.
fn digest(server: &PgServer) -> String {
    server.psql("select count(*) || ':' || md5(string_agg(s, ',' order by i)) from t")
}

fn write_rows(server: &PgServer, from: u32, to: u32) {
    server.psql(&format!(
        "insert into t select i, md5(i::text) from generate_series({from}, {to}) i"
    ));
}

/// Starts a restored directory on a new port, waits for recovery, and
/// returns the table's digest.
fn restored_digest(dir: &Path) -> String {
    let s = PgServer::start_existing(dir, PgServer::builder().conf("archive_mode = off"));
    s.wait_for_recovery_end();
    digest(&s)
}

fn flip_a_byte(bytes: &mut [u8]) {
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
}

#[test]
fn backup_faults_on_filesystem() {
    let s = setup(Storage::Fs);
    let server = s.server();
    server.psql("create table t (i int primary key, s text)");
    write_rows(&server, 1, 20_000);

    // 3: two backups at once.
    let names = s.two_backups_at_once(&server);
    let at_backup = digest(&server);
    s.on(&server).ok(&["create-restore-point", "rp_one"]);
    s.on(&server).ok(&["create-restore-point", "rp_two"]);
    write_rows(&server, 20_001, 30_000);
    let at_end = digest(&server);
    // A target in the last archived segment, before its end.
    let in_last_segment = server.psql("select pg_current_wal_lsn()");
    server.archive_everything();

    // 10: targets the archive cannot reach, refused before anything is
    // written. The segment after the last archived one...
    let beyond = server.psql("select pg_current_wal_lsn() + 4096");
    let err = s.refused(
        "after_the_archive",
        &["--target-lsn", &beyond],
        "past the end of the archived WAL",
    );
    assert!(err.contains("pg_switch_wal()"), "{err}");
    // ... and the zero-filled tail of the last archived segment (after
    // the switch record).
    let in_tail = server.psql(&format!(
        "select (pg_current_wal_lsn() - ((pg_current_wal_lsn() - '0/0'::pg_lsn) % {SEGMENT})) - 64"
    ));
    let err = s.refused(
        "in_the_tail",
        &["--target-lsn", &in_tail],
        "past the end of the archived WAL",
    );
    assert!(err.contains(&format!("LSN {in_tail}")), "{err}");
    s.refused(
        "future",
        &["--target-time", "2999-01-01 00:00:00+00"],
        "in the future",
    );
    s.refused(
        "before_the_first_backup",
        &["--target-time", "2001-01-01 00:00:00+00"],
        "no backup ends before the target time 2001-01-01T00:00:00+00:00",
    );
    s.refused_with(
        1,
        "no_such_point",
        &["--restore-point", "never_made"],
        "restore point \"never_made\" is not in the repository",
    );
    s.refused(
        "bad_xid",
        &["--target-xid", "latest"],
        "not a transaction id",
    );

    // Each backup restores: the first to a target in the last archived
    // segment (accepted, and reached), the second as it was...
    let oldest = s.backup_names()[0].clone();
    let newest = s.backup_names()[1].clone();
    let dir = s.path("to_lsn");
    let r = s.restore(
        &dir,
        &["--backup", &oldest, "--target-lsn", &in_last_segment],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        restored_digest(&dir),
        at_end,
        "restore of {oldest} to an LSN"
    );

    // 4: ... into a directory with a stale postmaster.pid (a dead PID),
    // which --force replaces.
    let dir = s.path("stale_pid");
    fs::create_dir(&dir).unwrap();
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    fs::write(
        dir.join("postmaster.pid"),
        format!("{dead_pid}\n{}\n", dir.display()),
    )
    .unwrap();
    fs::write(dir.join("junk"), "old").unwrap();
    chown_to_pg(&dir);
    let r = s.restore(&dir, &["--backup", &newest, "--immediate", "--force"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!dir.join("junk").exists());
    assert_eq!(restored_digest(&dir), at_backup, "restore of {newest}");
    assert!(names.contains(&oldest) && names.contains(&newest));

    // 4: --force over the data directory of the running server: refused,
    // its files untouched, the server still answers.
    let sentinel = server.data_dir().join("cbdr_sentinel");
    fs::write(&sentinel, "still here").unwrap();
    let r = s.restore(server.data_dir(), &["--force"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("running server"), "{}", r.stderr);
    assert!(r.stderr.contains("Stop the server first"), "{}", r.stderr);
    assert_eq!(fs::read_to_string(&sentinel).unwrap(), "still here");
    assert!(server.data_dir().join("global/pg_control").exists());
    assert!(server.data_dir().join("PG_VERSION").exists());
    assert_eq!(digest(&server), at_end);
    fs::remove_file(&sentinel).unwrap();

    // 6: the newest backup's record and one restore point's record
    // damaged (one flipped byte).
    let repo = s.path("repo/seg-1");
    let record_key = format!("seg-1/basebackups/{newest}/backup.json");
    for path in [
        repo.join(format!("basebackups/{newest}/backup.json")),
        repo.join("restore_points/rp_one.json"),
    ] {
        let mut bytes = fs::read(&path).unwrap();
        flip_a_byte(&mut bytes);
        fs::write(&path, bytes).unwrap();
    }
    let r = s.cbdr(None, &["list", "--json", "--content-id", "-1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains(&record_key), "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let seg = &v["segments"][0];
    assert_eq!(seg["backups"].as_array().unwrap().len(), 1);
    assert_eq!(seg["backups"][0]["name"], oldest.as_str());
    assert_eq!(seg["restore_points"].as_array().unwrap().len(), 1);
    assert_eq!(seg["restore_points"][0]["name"], "rp_two");
    let unreadable: Vec<&str> = v["unreadable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        unreadable,
        [record_key.as_str(), "seg-1/restore_points/rp_one.json"]
    );
    // The text listing shows the good one and names the bad.
    let r = s.cbdr(None, &["list"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains(&oldest) && !r.stdout.contains(&newest),
        "{}",
        r.stdout
    );
    assert!(r.stderr.contains(&record_key), "{}", r.stderr);

    // Named explicitly, a damaged record is an error naming it.
    let r = s.restore(&s.path("bad_backup"), &["--backup", &newest]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains(&record_key), "{}", r.stderr);
    let r = s.restore(&s.path("bad_point"), &["--restore-point", "rp_one"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("rp_one.json"), "{}", r.stderr);

    // To latest: the good backup, and every committed row.
    let dir = s.path("latest");
    let r = s.restore(&dir, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(&oldest), "{}", r.stdout);
    assert!(r.stderr.contains(&record_key), "{}", r.stderr);
    assert_eq!(restored_digest(&dir), at_end, "restore to latest");
}

/// A raw object of the bucket: read, changed, written back.
fn tamper_s3(t: &garage::S3Target, key: &str, change: impl FnOnce(&mut Vec<u8>)) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = cbdr::config::StorageConfig {
            kind: cbdr::config::StorageType::S3,
            bucket: Some(t.bucket.clone()),
            prefix: String::new(),
            endpoint: Some(t.endpoint.clone()),
            region: Some(t.region.clone()),
            force_path_style: true,
            access_key_id: Some(t.access_key_id.clone()),
            secret_access_key: Some(t.secret_access_key.clone()),
            ..cbdr::config::StorageConfig::default()
        };
        let storage = S3Storage::new(&cfg).await.unwrap();
        let mut bytes = get_bytes(&storage, key).await.unwrap();
        change(&mut bytes);
        storage.put(key, body_from_bytes(bytes)).await.unwrap();
    });
}

#[test]
fn backup_faults_on_garage() {
    let s = setup(Storage::S3(String::new()));
    let bucket = s.s3.clone().unwrap();
    let server = s.server();
    server.psql("create table t (i int primary key, s text)");
    write_rows(&server, 1, 10_000);

    let names = s.two_backups_at_once(&server);
    let at_backup = digest(&server);
    write_rows(&server, 10_001, 15_000);
    let at_end = digest(&server);
    server.archive_everything();
    let listed = s.backup_names();
    let (oldest, newest) = (listed[0].clone(), listed[1].clone());
    assert!(names.contains(&oldest) && names.contains(&newest));

    // Both restore, each as it was.
    for name in [&oldest, &newest] {
        let dir = s.path(format!("as_of_{name}"));
        let r = s.restore(&dir, &["--backup", name, "--immediate"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(restored_digest(&dir), at_backup, "restore of {name}");
    }

    // The newest record damaged in the bucket: listed as unreadable, and a
    // restore to latest uses the other backup.
    let record_key = format!("seg-1/basebackups/{newest}/backup.json");
    tamper_s3(&bucket, &record_key, |b| flip_a_byte(b));
    let v = s.listing();
    assert_eq!(
        v["segments"][0]["backups"].as_array().unwrap().len(),
        1,
        "{v}"
    );
    assert_eq!(v["segments"][0]["backups"][0]["name"], oldest.as_str());
    assert_eq!(v["unreadable"][0]["key"], record_key.as_str());
    let r = s.restore(&s.path("bad"), &["--backup", &newest]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains(&record_key), "{}", r.stderr);
    let dir = s.path("latest");
    let r = s.restore(&dir, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains(&oldest), "{}", r.stdout);
    assert_eq!(restored_digest(&dir), at_end, "restore to latest");
}
