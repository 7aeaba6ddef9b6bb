//! WAL archiving end to end on a real PostgreSQL 15: `wal-push` as
//! archive_command, `wal-fetch` as restore_command, on the filesystem
//! repository and on Garage (S3).

mod common;

use std::fs;
use std::time::Duration;

use common::pg::{chown_to_pg, PgServer};
use common::{CbdrEnv, Key, Storage, CBDR};

const KEY_HEX: &str = "6f1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff0";

/// A config file and key readable by the postgres user, lz4-compressed.
fn setup(storage: Storage) -> CbdrEnv {
    CbdrEnv::builder("wal")
        .storage(storage)
        .key(Key::Raw(KEY_HEX.into()))
        .extra_toml("[compression]\nmethod = \"lz4\"\n")
        .build()
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
fn archive_and_recover(storage: Storage) {
    let s = setup(storage);
    let mut server = s
        .archiving_server()
        .conf("wal_keep_size = '512MB'")
        .conf("max_wal_size = '1GB'")
        .start();

    // A base backup taken before the writes, without WAL: recovery needs
    // every segment from the archive.
    let base = s.path("base");
    server.pg_basebackup(&base, &["-X", "none"]);

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
    let fetched_dir = s.path("fetched");
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
        s.ok(&["wal-fetch", name, dest.to_str().unwrap()]);
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
    archive_and_recover(Storage::Fs);
}

#[test]
fn archive_and_recover_on_garage() {
    archive_and_recover(Storage::S3("cluster1".into()));
}
