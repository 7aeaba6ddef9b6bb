//! WAL archiving end to end on a real PostgreSQL 15: `wal-push` as
//! archive_command, `wal-fetch` as restore_command, on the filesystem
//! repository and on Garage (S3).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::garage;
use common::pg::{chown_to_pg, pg_bin, pg_command, pg_user_dir, PgServer};
use tempfile::TempDir;

const CBDR: &str = env!("CARGO_BIN_EXE_cbdr");
const KEY_HEX: &str = "6f1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff0";

/// A config file and key readable by the postgres user.
struct Setup {
    dir: TempDir,
    config: PathBuf,
}

fn setup(storage_toml: &str) -> Setup {
    let dir = pg_user_dir("cbdr-wal");
    let key = dir.path().join("key");
    fs::write(&key, format!("{KEY_HEX}\n")).unwrap();
    let config = dir.path().join("cbdr.toml");
    fs::write(
        &config,
        format!(
            "{storage_toml}\n[compression]\nmethod = \"lz4\"\n[encryption]\nkey_file = \"{}\"\n[archive]\nwal_segment_size = 1048576\n",
            key.display()
        ),
    )
    .unwrap();
    chown_to_pg(dir.path());
    common::init_repo(CBDR, &config);
    Setup { dir, config }
}

fn fs_storage(dir: &Path) -> String {
    format!(
        "[storage]\ntype = \"fs\"\npath = \"{}\"",
        dir.join("repo").display()
    )
}

/// Runs cbdr as the postgres user; returns (exit code, stderr).
fn cbdr(config: &Path, args: &[&str]) -> (i32, String) {
    let out = pg_command(CBDR)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run cbdr");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ready_files(server: &PgServer) -> Vec<String> {
    fs::read_dir(server.data_dir().join("pg_wal/archive_status"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".ready"))
                .collect()
        })
        .unwrap_or_default()
}

fn table_digest(server: &PgServer) -> String {
    server.psql("select count(*) || ':' || md5(string_agg(id || payload, ',' order by id)) from t")
}

/// Archives a server's WAL through PostgreSQL's archiver, fetches every
/// archived segment back byte-identical, and recovers a base backup with
/// `wal-fetch` as restore_command to the same data.
fn archive_and_recover(storage_toml: &str) {
    let s = setup(storage_toml);
    let archive = format!("{CBDR} --config {} wal-push %p", s.config.display());
    let mut server = PgServer::builder()
        .initdb_arg("--wal-segsize=1")
        .conf("archive_mode = on")
        .conf(format!("archive_command = '{archive}'"))
        .conf("wal_keep_size = '512MB'")
        .conf("max_wal_size = '1GB'")
        .start();

    // A base backup taken before the writes, without WAL: recovery needs
    // every segment from the archive.
    let base = s.dir.path().join("base");
    let out = pg_command(pg_bin("pg_basebackup"))
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-X",
            "none",
            "-c",
            "fast",
            "-D",
        ])
        .arg(&base)
        .arg("-p")
        .arg(server.port().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    server.psql("create table t (id int primary key, payload text)");
    for round in 0..8 {
        server.psql(&format!(
            "insert into t select g, md5(g::text) || repeat('x', g % 200) from generate_series({}, {}) g",
            round * 5000 + 1,
            round * 5000 + 5000
        ));
        server.psql("select pg_switch_wal()");
    }
    let expected = table_digest(&server);
    server.psql("checkpoint");
    server.psql("select pg_switch_wal()");
    server.wait_until(|s| ready_files(s).is_empty(), Duration::from_secs(120));
    let failed = server.psql("select failed_count from pg_stat_archiver");
    assert_eq!(failed, "0", "archive_command failed: {}", server.log_tail());
    // The archiver marks a file done before it counts it: poll the count.
    server.wait_until(
        |s| {
            s.psql("select archived_count from pg_stat_archiver")
                .parse::<u64>()
                .unwrap()
                >= 10
        },
        Duration::from_secs(30),
    );

    // Every archived segment still in pg_wal comes back byte-identical.
    let fetched_dir = s.dir.path().join("fetched");
    fs::create_dir(&fetched_dir).unwrap();
    chown_to_pg(&fetched_dir);
    let mut compared = 0;
    let mut names: Vec<String> = fs::read_dir(server.data_dir().join("pg_wal/archive_status"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".done")
                .map(String::from)
        })
        .collect();
    names.sort();
    for name in &names {
        let original = server.data_dir().join("pg_wal").join(name);
        if !original.exists() {
            continue;
        }
        let dest = fetched_dir.join(name);
        let (code, err) = cbdr(&s.config, &["wal-fetch", name, dest.to_str().unwrap()]);
        assert_eq!(code, 0, "wal-fetch {name}: {err}");
        assert_eq!(
            fs::read(&dest).unwrap(),
            fs::read(&original).unwrap(),
            "{name} differs"
        );
        compared += 1;
    }
    assert!(compared >= 10, "compared only {compared} of {names:?}");
    server.stop();

    // Recovery of the base backup replays the whole archive.
    fs::write(base.join("recovery.signal"), "").unwrap();
    let restore = format!("{CBDR} --config {} wal-fetch %f %p", s.config.display());
    let restored = PgServer::start_existing(
        &base,
        PgServer::builder()
            .conf(format!("restore_command = '{restore}'"))
            .conf("archive_mode = off"),
    );
    restored.wait_for_recovery_end();
    assert_eq!(table_digest(&restored), expected, "{}", restored.log_tail());
}

#[test]
fn archive_and_recover_on_filesystem() {
    let dir = pg_user_dir("cbdr-fsrepo");
    archive_and_recover(&fs_storage(dir.path()));
}

#[test]
fn archive_and_recover_on_garage() {
    let target = garage::bucket("wal-archive");
    archive_and_recover(&target.config_toml("cluster1"));
}
