//! Base backups and point-in-time restores of a real PostgreSQL 15, on the
//! filesystem repository and on Garage.

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::pg::{chown_to_pg, pg_bin, pg_command, verify_backup, PgServer};
use common::{CbdrEnv, Key, QuietPoint, Storage, CBDR};

const KEY_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff";

/// The shared environment with this file's key, and its restores.
struct Setup(CbdrEnv);

deref_env!(Setup);

fn setup(storage: Storage) -> Setup {
    setup_with(storage, "")
}

/// `extra`: more config sections.
fn setup_with(storage: Storage, extra: &str) -> Setup {
    Setup(
        CbdrEnv::builder("backup")
            .storage(storage)
            .key(Key::Raw(KEY_HEX.into()))
            .extra_toml(extra)
            .build(),
    )
}

impl Setup {
    fn server(&self) -> PgServer {
        self.archiving_server()
            .conf("max_wal_size = '256MB'")
            .start()
    }

    fn cbdr(&self, server: Option<&PgServer>, args: &[&str]) -> (i32, String, String) {
        self.cmd().pg(server).run(args).parts()
    }

    fn backups(&self) -> Vec<serde_json::Value> {
        self.backups_of(-1)
    }

    fn restore(&self, name: &str, args: &[&str]) -> (i32, String, PathBuf) {
        let dir = self.path(name);
        let mut all = vec!["restore", "--target-dir", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        let (code, _, err) = self.cbdr(None, &all);
        (code, err, dir)
    }
}

#[test]
fn point_in_time_restore_on_filesystem() {
    let s = setup(Storage::Fs);
    let server = s.server();
    server.run_pgbench(&["-i", "-s", "3", "-q"]);

    // A backup while pgbench writes.
    let writer = server.pgbench(&["-c", "2", "-T", "4", "-n"]);
    let out = s.on(&server).ok(&["backup-push"]);
    assert!(out.contains("complete"), "{out}");
    assert!(writer.wait_with_output().unwrap().status.success());
    server.run_pgbench(&["-c", "2", "-t", "200", "-n"]);

    // A quiet moment: a restore point, its time and LSN, and a dump.
    let QuietPoint {
        lsn,
        time,
        dump: at_point,
    } = s.quiet_point(&server, "quiet_point");

    // More writes after it.
    server.run_pgbench(&["-c", "2", "-t", "300", "-n"]);
    let at_end = server.dump();
    assert_ne!(at_point, at_end);
    server.archive_everything();

    // The same name again is refused.
    let (code, _, err) = s.cbdr(Some(&server), &["create-restore-point", "quiet_point"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already exists"), "{err}");

    // To the restore point: pg_verifybackup passes before recovery starts.
    let (code, err, dir) = s.restore("to_point", &["--restore-point", "quiet_point"]);
    assert_eq!(code, 0, "{err}");
    verify_backup(&dir);
    let restored = PgServer::start_restored(&dir);
    assert_eq!(restored.dump(), at_point, "restore point");
    drop(restored);

    let (code, err, dir) = s.restore("to_time", &["--target-time", &time]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        PgServer::start_restored(&dir).dump(),
        at_point,
        "target time"
    );

    // --start: cbdr starts the server and waits for the target.
    let port = common::free_port().to_string();
    let (code, err, dir) = s.restore(
        "to_lsn",
        &[
            "--target-lsn",
            &lsn,
            "--archive-mode",
            "off",
            "--start",
            "--port",
            &port,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!dir.join("recovery.signal").exists(), "not promoted");
    let out = pg_command(pg_bin("psql"))
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &port, "-XAtc"])
        .arg("select pg_is_in_recovery()")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "f");
    let stop = pg_command(pg_bin("pg_ctl"))
        .arg("-D")
        .arg(&dir)
        .args(["stop", "-m", "fast"])
        .output()
        .unwrap();
    assert!(stop.status.success());
    assert_eq!(
        PgServer::start_restored(&dir).dump(),
        at_point,
        "target lsn"
    );

    let (code, err, dir) = s.restore("to_latest", &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(PgServer::start_restored(&dir).dump(), at_end, "latest");

    // A non-empty target directory is refused.
    let (code, err, _) = s.restore("to_latest", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not empty"), "{err}");

    // A target before every backup is refused before anything is written.
    let (code, err, dir) = s.restore("too_early", &["--target-lsn", "0/1000000"]);
    assert_eq!(code, 2, "{err}");
    assert!(!dir.join("PG_VERSION").exists());

    let listing = s.ok(&["list"]);
    assert!(
        listing.contains("quiet_point") && listing.contains("base_"),
        "{listing}"
    );
}

#[test]
fn interrupted_or_damaged_backups_never_restore_as_good() {
    let s = setup(Storage::Fs);
    let mut server = s.server();
    server.run_pgbench(&["-i", "-s", "1", "-q"]);
    s.on(&server).ok(&["backup-push"]);
    assert_eq!(s.backups().len(), 1);

    // Archiving broken: the backup waits for its WAL; killed there, it is
    // not listed, and with a short wait it fails clearly.
    server.psql("alter system set archive_command = '/bin/false'");
    server.psql("select pg_reload_conf()");
    let (code, _, err) = s.cbdr(Some(&server), &["backup-push", "--wal-wait", "2"]);
    assert_ne!(code, 0);
    assert!(err.contains("not in the archive"), "{err}");
    // Its own process group, so the kill reaches cbdr and not only runuser.
    let mut child = pg_command(CBDR)
        .process_group(0)
        .arg("--config")
        .arg(&s.config)
        .arg("backup-push")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", server.port().to_string())
        .env("PGUSER", "postgres")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "backup-push should be waiting for WAL"
    );
    // SAFETY: kill(2) on the process group we created.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    child.wait().unwrap();
    assert_eq!(s.backups().len(), 1, "an interrupted backup is listed");
    server.psql("alter system reset archive_command");
    server.restart();
    s.on(&server).ok(&["backup-push"]);
    let backups = s.backups();
    assert_eq!(backups.len(), 2);
    server.archive_everything();
    let newest = backups[1]["name"].as_str().unwrap().to_string();

    // Wrong key: refused, and nothing that could start is left.
    let text = fs::read_to_string(&s.config)
        .unwrap()
        .replace("key_file", "# key_file");
    let other_cfg = s.write("other.toml", &text);
    let dir = s.path("wrong_key");
    s.with_config(&other_cfg)
        .env("CBDR_ENCRYPTION_KEY", "ff".repeat(32))
        .refused(
            &["restore", "--target-dir", dir.to_str().unwrap()],
            4,
            &["not the repository's key"],
        );
    assert!(!dir.join("global/pg_control").exists());

    // A corrupted part, then a missing part.
    let parts = s.path(format!("repo/seg-1/basebackups/{newest}/parts/base"));
    // The first part: 000000.tar.lz4, as the server compressed this
    // backup (pgbench data compresses well).
    let part = parts.join("000000.tar.lz4");
    assert!(part.exists(), "{}", part.display());
    let good = fs::read(&part).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 3;
    bad[at] ^= 0x04;
    fs::write(&part, &bad).unwrap();
    let (code, err, dir) = s.restore("corrupt", &["--backup", &newest]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("corrupted"), "{err}");
    assert!(!dir.join("global/pg_control").exists());
    fs::remove_file(&part).unwrap();
    let (code, err, dir) = s.restore("missing", &["--backup", &newest]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("000000.tar.lz4"), "{err}");
    assert!(!dir.join("global/pg_control").exists());

    // The older backup still restores.
    fs::write(&part, &good).unwrap();
    chown_to_pg(&part);
    let (code, err, dir) = s.restore("good", &["--backup", &newest]);
    assert_eq!(code, 0, "{err}");
    let restored = PgServer::start_restored(&dir);
    assert_eq!(
        restored.psql("select count(*) from pgbench_accounts"),
        "100000"
    );
}

/// On Garage, compressed by cbdr: parts that are tars of their own, files
/// larger than a part cut into pieces (pgbench_accounts is 26 MB).
#[test]
fn backup_and_restore_on_garage() {
    let s = setup_with(
        Storage::S3("c".into()),
        "[compression]\ncompress_on = \"client\"\n",
    );
    let server = s.server();
    server.run_pgbench(&["-i", "-s", "2", "-q"]);
    s.on(&server).ok(&["backup-push"]);
    assert_eq!(compressed_by(&s.backups()[0]), None);
    server.run_pgbench(&["-c", "2", "-t", "100", "-n"]);
    let expected = server.dump();
    server.archive_everything();
    let (code, err, dir) = s.restore("from_s3", &[]);
    assert_eq!(code, 0, "{err}");
    verify_backup(&dir);
    assert_eq!(PgServer::start_restored(&dir).dump(), expected);
}

/// The compression the server applied to a listed backup's data directory.
fn compressed_by(backup: &serde_json::Value) -> Option<String> {
    let base = backup["archives"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "base")
        .unwrap();
    base["server_compression"].as_str().map(String::from)
}

/// `compress_on = "auto"` (the default) lets PostgreSQL compress data that
/// compresses well, and compresses data that does not on cbdr's cores;
/// both restore.
#[test]
fn auto_lets_the_server_compress_only_what_compresses_well() {
    let s = setup(Storage::Fs);
    let server = s.server();
    server.run_pgbench(&["-i", "-s", "2", "-q"]);
    s.on(&server).ok(&["backup-push"]);
    let listed = s.backups();
    assert_eq!(compressed_by(&listed[0]).as_deref(), Some("lz4"));
    let plain = listed[0]["archives"][0]["plain_bytes"].as_u64().unwrap();
    assert!(plain > 30_000_000, "the server's plain size: {plain}");
    let with_pgbench = server.dump();

    // 40 MB of random bytes become the largest relation files.
    server.psql("drop table pgbench_accounts");
    server.psql(
        "create table noise as select g, decode(string_agg(md5(random()::text), ''), 'hex') as b \
         from generate_series(1, 20000) g, generate_series(1, 64) k group by g",
    );
    let with_noise = server.dump();
    s.on(&server).ok(&["backup-push"]);
    let listed = s.backups();
    assert_eq!(compressed_by(&listed[1]), None, "random data left to cbdr");
    let listing = s.ok(&["list"]);
    assert!(listing.contains("lz4 by the server"), "{listing}");
    assert!(listing.contains("lz4 by cbdr"), "{listing}");

    // "server" insists (here with zstd); restores of every kind come back
    // whole.
    let forced = s.path("server.toml");
    let text = fs::read_to_string(&s.config).unwrap();
    s.write(
        "server.toml",
        &format!("{text}[compression]\nmethod = \"zstd\"\ncompress_on = \"server\"\n"),
    );
    let (code, _, err) = s
        .with_config(&forced)
        .pg(Some(&server))
        .run(&["backup-push"])
        .parts();
    assert_eq!(code, 0, "{err}");
    assert_eq!(compressed_by(&s.backups()[2]).as_deref(), Some("zstd"));
    server.archive_everything();
    for (i, expected) in [(0, &with_pgbench), (1, &with_noise), (2, &with_noise)] {
        let name = s.backups()[i]["name"].as_str().unwrap().to_string();
        let (code, err, dir) = s.restore(
            &format!("r{i}"),
            &["--backup", &name, "--immediate", "--archive-mode", "off"],
        );
        assert_eq!(code, 0, "{err}");
        verify_backup(&dir);
        assert_eq!(
            &PgServer::start_restored(&dir).dump(),
            expected,
            "backup {i}"
        );
    }
}

#[test]
fn a_promoted_copy_archives_a_new_timeline_that_latest_follows() {
    let s = setup(Storage::Fs);
    let server = s.server();
    server.psql("create table t (v text)");
    server.psql("insert into t values ('before backup')");
    s.on(&server).ok(&["backup-push"]);
    server.psql("insert into t values ('on timeline 1')");
    server.archive_everything();
    drop(server);

    // Restored with archiving kept, started and promoted: timeline 2.
    let (code, err, dir) = s.restore(
        "copy",
        &["--start", "--port", &common::free_port().to_string()],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!dir.join("recovery.signal").exists(), "not promoted");
    // Handed over to the fixture, which stops it at the end of the test.
    let stop = pg_command(pg_bin("pg_ctl"))
        .arg("-D")
        .arg(&dir)
        .args(["stop", "-m", "fast"])
        .output()
        .unwrap();
    assert!(stop.status.success());
    let copy = PgServer::start_existing(&dir, PgServer::builder());
    copy.wait_for_recovery_end();
    assert_eq!(
        copy.psql("select string_agg(v, ',' order by v) from t"),
        "before backup,on timeline 1"
    );
    copy.psql("insert into t values ('on timeline 2')");
    copy.archive_everything();
    let listing = s.ok(&["list"]);
    assert!(listing.contains("timeline 2"), "{listing}");
    let history = s.path("repo/seg-1/wal/history/00000002.history");
    assert!(history.exists(), "history file not archived");
    drop(copy);

    // Latest follows the new timeline through its history file.
    let (code, err, dir) = s.restore("latest", &["--archive-mode", "off"]);
    assert_eq!(code, 0, "{err}");
    let latest = PgServer::start_restored(&dir);
    assert_eq!(
        latest.psql("select string_agg(v, ',' order by v) from t"),
        "before backup,on timeline 1,on timeline 2"
    );
}

#[test]
fn tablespaces_are_restored_to_new_locations() {
    let s = setup(Storage::Fs);
    let server = s.server();
    let ts_dir = s.path("ts_original");
    fs::create_dir(&ts_dir).unwrap();
    chown_to_pg(&ts_dir);
    server.psql(&format!(
        "create tablespace extra location '{}'",
        ts_dir.display()
    ));
    server.psql("create table far (id int, v text) tablespace extra");
    server.psql("insert into far select g, md5(g::text) from generate_series(1, 20000) g");
    server.psql("create table near as select 1 as one");
    s.on(&server).ok(&["backup-push"]);
    let expected =
        server.psql("select count(*) || ':' || md5(string_agg(v, ',' order by id)) from far");
    server.archive_everything();

    // A target beyond the archived WAL is refused before anything is written.
    let (code, err, dir) = s.restore("beyond", &["--target-lsn", "FF/0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("past the end of the archived WAL"), "{err}");
    assert!(!dir.exists() || fs::read_dir(&dir).unwrap().next().is_none());

    // The original location is in use: the restore refuses it...
    let (code, err, dir) = s.restore("same_place", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not empty"), "{err}");
    assert!(!dir.exists(), "a refused restore created its target");

    // ...and moves it where it is told.
    let new_ts = s.path("ts_moved");
    let map = format!("{}={}", ts_dir.display(), new_ts.display());
    let (code, err, dir) = s.restore(
        "moved",
        &["--tablespace-map", &map, "--archive-mode", "off"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(fs::read_dir(&new_ts).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("PG_15_")));
    drop(server);
    let restored = PgServer::start_restored(&dir);
    assert_eq!(
        restored.psql("select count(*) || ':' || md5(string_agg(v, ',' order by id)) from far"),
        expected
    );
    let location = restored
        .psql("select pg_tablespace_location(oid) from pg_tablespace where spcname = 'extra'");
    assert_eq!(location, new_ts.display().to_string());
}
