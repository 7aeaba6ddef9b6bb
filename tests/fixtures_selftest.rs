//! Checks that the shared test fixtures (tests/common) work: PostgreSQL
//! servers start, answer, run side by side and clean up; the Garage S3
//! server hands out distinct buckets and enforces authentication.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::garage::{self, bucket};
use common::pg::{pg_user_dir, PgServer};
use common::{http_get, process_alive};

#[test]
fn pg_server_answers_and_keeps_data() {
    let mut pg = PgServer::builder()
        .initdb_arg("--wal-segsize=1")
        .conf("work_mem = '7MB'")
        .env("CBDR_SELFTEST_VAR", "hello-from-the-fixture")
        .start();

    assert_eq!(pg.psql("select 1"), "1");
    // Builder options reached initdb, postgresql.conf and the environment.
    assert_eq!(pg.psql("show wal_segment_size"), "1MB");
    assert_eq!(pg.psql("show work_mem"), "7MB");
    assert_eq!(pg.psql("show wal_level"), "replica");
    assert_eq!(pg.psql("show port"), pg.port().to_string());
    let pid = pg.postmaster_pid().expect("postmaster running");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|kv| kv == b"CBDR_SELFTEST_VAR=hello-from-the-fixture"),
        "postmaster did not get the builder's environment"
    );

    // A table round-trips, and survives a restart.
    pg.psql(
        "create table t (id int primary key, v text);
         insert into t select g, 'row ' || g from generate_series(1, 3) g;",
    );
    assert_eq!(
        pg.psql("select id, v from t order by id"),
        "1|row 1\n2|row 2\n3|row 3"
    );
    pg.restart();
    assert_eq!(pg.psql("select count(*) from t"), "3");

    // Errors are reported, not swallowed.
    let err = pg.try_psql("select * from no_such_table").unwrap_err();
    assert!(err.contains("no_such_table"), "{err}");

    // Replication connections over TCP are allowed (pg_hba.conf).
    let out = Command::new(common::pg::pg_bin("psql"))
        .args(["-XAtq", "-c", "IDENTIFY_SYSTEM"])
        .arg(format!("{} replication=database", pg.conninfo()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    let data_dir = pg.data_dir().to_owned();
    let socket_dir = pg.socket_dir().to_owned();
    drop(pg);
    assert!(!process_alive(pid), "postmaster {pid} survived drop");
    assert!(!data_dir.exists() && !socket_dir.exists());
}

#[test]
fn two_servers_run_concurrently_and_stop_frees_the_port() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(PgServer::new);
        let b = s.spawn(PgServer::new);
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut a = a;
    assert_ne!(a.port(), b.port());
    a.psql("create table only_in_a (x int)");
    assert_eq!(
        a.psql("select count(*) from pg_class where relname = 'only_in_a'"),
        "1"
    );
    assert_eq!(
        b.psql("select count(*) from pg_class where relname = 'only_in_a'"),
        "0"
    );

    let port = a.port();
    a.stop();
    assert!(!a.is_running());
    assert!(a.try_psql("select 1").is_err());
    TcpListener::bind(("127.0.0.1", port)).expect("port of the stopped server is free");
    assert_eq!(b.psql("select 1"), "1");

    a.start();
    assert_eq!(a.psql("select count(*) from only_in_a"), "0");
}

#[test]
fn start_moves_off_a_port_taken_by_someone_else() {
    let mut pg = PgServer::builder().init();
    let taken = pg.port();
    let _squatter = TcpListener::bind(("127.0.0.1", taken)).unwrap();
    pg.start();
    assert_ne!(pg.port(), taken);
    assert_eq!(pg.psql("show port"), pg.port().to_string());
}

#[test]
fn existing_data_directory_starts() {
    let mut pg = PgServer::new();
    pg.psql("create table kept as select 42 as answer");
    pg.stop();

    // A copy owned by root in a 0700 temp dir, as a restore would leave it.
    let outer = tempfile::tempdir().unwrap();
    let copy = outer.path().join("restored");
    let status = Command::new("cp")
        .arg("-a")
        .arg(pg.data_dir())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    if common::is_root() {
        Command::new("chown")
            .args(["-R", "root:root"])
            .arg(&copy)
            .status()
            .unwrap();
    }
    drop(pg);

    let restored = PgServer::start_existing(&copy, PgServer::builder().conf("work_mem = '3MB'"));
    restored.wait_for_recovery_end();
    assert_eq!(restored.psql("select answer from kept"), "42");
    assert_eq!(restored.psql("show work_mem"), "3MB");
    drop(restored);
    assert!(copy.join("PG_VERSION").exists(), "external data dir kept");

    // pg_user_dir gives the postgres user a writable directory.
    let repo = pg_user_dir("selftest-repo");
    let out = common::pg::pg_command("touch")
        .arg(repo.path().join("written-by-postgres"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn garage_buckets_are_distinct_and_need_credentials() {
    let a = bucket("fixtures_selftest::garage");
    let b = bucket("fixtures_selftest::garage");
    assert_ne!(a.bucket, b.bucket);
    assert_eq!(a.endpoint, b.endpoint);
    assert_eq!(a.region, "garage");
    assert!(a.endpoint.starts_with("http://127.0.0.1:"));

    let listed = garage::garage().cli(&["bucket", "list"]);
    assert!(
        listed.contains(&a.bucket) && listed.contains(&b.bucket),
        "{listed}"
    );
    let info = garage::garage().cli(&["bucket", "info", &a.bucket]);
    assert!(info.contains(garage::ACCESS_KEY_ID), "{info}");

    // Anonymous requests are refused.
    let addr = a.endpoint.trim_start_matches("http://");
    for path in ["/".to_owned(), format!("/{}/", a.bucket)] {
        let (status, response) = http_get(addr, &path, Duration::from_secs(5)).unwrap();
        assert!(
            (400..500).contains(&status),
            "GET {path} without credentials: {response}"
        );
    }

    // The [storage] section is valid TOML with the expected keys.
    let cfg: toml::Table = toml::from_str(&a.config_toml("some/prefix")).unwrap();
    let storage = cfg["storage"].as_table().unwrap();
    assert_eq!(storage["type"].as_str(), Some("s3"));
    assert_eq!(storage["bucket"].as_str(), Some(a.bucket.as_str()));
    assert_eq!(storage["prefix"].as_str(), Some("some/prefix"));
    assert_eq!(storage["endpoint"].as_str(), Some(a.endpoint.as_str()));
    assert_eq!(storage["force_path_style"].as_bool(), Some(true));
    assert_eq!(
        storage["secret_access_key"].as_str(),
        Some(garage::SECRET_ACCESS_KEY)
    );
}
