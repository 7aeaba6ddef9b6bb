//! The physical path on PostgreSQL 13, the pre-15 replication protocol
//! (`BASE_BACKUP LABEL … NOWAIT MANIFEST 'yes'`, no COMPRESSION) that
//! Greenplum 7 and Cloudberry also speak: WAL archiving, backups on Garage,
//! restores to a restore point, a time and an LSN checked by PostgreSQL 13's
//! pg_verifybackup, and a cluster of a coordinator and 2 segments restored
//! to a consistent restore point under the two-phase-commit bank; and the
//! logical mode's zoo (`gpbackup`/`gprestore`) compared with `pg_dump`.
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

/// The logical zoo without what PostgreSQL 13 lacks (multiranges, SQL-body
/// functions, unlogged sequences, column compression, NULLS NOT DISTINCT,
/// publication row filters, column lists and schemas, the subscription
/// options of 14 and 15, the 6-argument conversion function). Each change
/// must apply: a changed zoo fails here rather than loading less.
fn zoo_for_pg13() -> String {
    let mut zoo = include_str!("fixtures/logical_zoo.sql").to_string();
    for (from, to) in [
        (", multirange_type_name = zoo.textranges", ""),
        ("CREATE UNLOGGED SEQUENCE zoo.scratch_seq", "CREATE SEQUENCE zoo.scratch_seq"),
        ("    RETURN (n % 2) = 0;", "    AS $$ SELECT (n % 2) = 0 $$;"),
        (
            "    RETURN array_position(enum_range(NULL::zoo.mood), m);",
            "    AS $$ SELECT array_position(enum_range(NULL::zoo.mood), m) $$;",
        ),
        ("ALTER TABLE zoo.animals ALTER COLUMN species SET COMPRESSION pglz;\n", ""),
        ("UNIQUE NULLS NOT DISTINCT", "UNIQUE"),
        (
            "    BEGIN ATOMIC SELECT coalesce(max(id), 0) + 1 FROM zoo.tickets; END;",
            "    AS $$ SELECT coalesce(max(id), 0) + 1 FROM zoo.tickets $$;",
        ),
        (
            "    BEGIN ATOMIC SELECT count(*) FROM sales.order_summary; END;",
            "    AS $$ SELECT count(*) FROM sales.order_summary $$;",
        ),
        ("ALTER SEQUENCE zoo.id_logged_a_seq SET UNLOGGED;\n", ""),
        ("ALTER SEQUENCE zoo.id_unlogged_a_seq SET LOGGED;\n", ""),
        ("    RETURN $1::integer < $2;", "    AS $$ SELECT $1::integer < $2 $$;"),
        (
            "FOR TABLE zoo.animals, sales.orders (order_id, amount) WHERE (amount > 10)",
            "FOR TABLE zoo.animals, sales.orders",
        ),
        (
            "CREATE PUBLICATION pub_schema FOR TABLES IN SCHEMA \"Mixed Case \"\"Schema\"\"\" WITH",
            "CREATE PUBLICATION pub_schema WITH",
        ),
        (
            "binary = true, streaming = on,\n                               two_phase = true, disable_on_error = true, synchronous_commit = local",
            "synchronous_commit = local",
        ),
        (
            "(integer, integer, cstring, internal, integer, boolean) RETURNS integer",
            "(integer, integer, cstring, internal, integer) RETURNS void",
        ),
    ] {
        assert_eq!(zoo.matches(from).count(), 1, "the zoo has no one {from:?}");
        zoo = zoo.replace(from, to);
    }
    zoo
}

/// Rows for some of the zoo's tables and a large object split in chunks.
const ZOO_DATA_13: &str = "
INSERT INTO zoo.animals (name, species, mood, weight_kg, home, tags)
  SELECT 'a' || g, 'sp' || (g % 5), 'ok', g * 1.5, ROW('street ' || g, 'city', g)::zoo.address,
         ARRAY['t' || g, NULL]
    FROM generate_series(1, 300) g;
INSERT INTO zoo.visits
  SELECT g, (ARRAY['north','south','east','west','SOUTH'])[1 + g % 5], '2023-01-01'::date + (g % 700),
         1000 + 10 * (g % 300), CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' || g END
    FROM generate_series(1, 3000) g;
SELECT nextval('zoo.fresh_seq');
REFRESH MATERIALIZED VIEW zoo.species_count;
SELECT lo_from_bytea(424244, (SELECT string_agg(decode(md5(g::text), 'hex'), '' ORDER BY g)
                               FROM generate_series(1, 20000) g));
";

/// PostgreSQL 13's `pg_dump` of the schema with the large objects' entries.
fn logical_dump(server: &PgServer, db: &str) -> String {
    server.pg_dump(&["--section=pre-data", "--section=post-data", "-b", db])
}

#[test]
fn logical_zoo_round_trip_gives_the_same_pg_dump() {
    if !common::pg13::use_pg13() {
        return;
    }
    let env = CbdrEnv::builder("pg13-logical")
        .storage(Storage::Fs)
        .key(Key::Raw(KEY_HEX.into()))
        .wal_segment_size(None)
        .extra_toml("[logical]\nlarge_object_chunk = 65536")
        .build();
    let server = PgServer::builder().start();
    assert!(server.psql("show server_version").starts_with("13."));
    server.psql("CREATE DATABASE zoo");
    server.psql_db("zoo", &zoo_for_pg13());
    server.psql_db("zoo", ZOO_DATA_13);
    let out = env
        .on(&server)
        .ok(&["gpbackup", "--dbname", "zoo", "--jobs", "2"]);
    let ts = out
        .lines()
        .find_map(|l| l.strip_prefix("Backup Timestamp = "))
        .unwrap_or_else(|| panic!("no timestamp in {out}"))
        .trim()
        .to_string();
    env.on(&server).ok(&[
        "gprestore",
        "--timestamp",
        &ts,
        "--create-db",
        "--redirect-db",
        "zoo_copy",
        "--jobs",
        "2",
    ]);
    let (want, got) = (
        logical_dump(&server, "zoo"),
        logical_dump(&server, "zoo_copy"),
    );
    if want != got {
        let dir = env.path("dumps");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("zoo.sql"), &want).unwrap();
        std::fs::write(dir.join("zoo_copy.sql"), &got).unwrap();
        let diff = std::process::Command::new("diff")
            .arg("-u")
            .arg(dir.join("zoo.sql"))
            .arg(dir.join("zoo_copy.sql"))
            .output()
            .unwrap();
        panic!(
            "pg_dump of zoo and zoo_copy differ:\n{}",
            String::from_utf8_lossy(&diff.stdout)
        );
    }
    assert!(want.contains("Type: BLOB") && want.contains("Type: SUBSCRIPTION"));
    let digests = server.digests("zoo");
    assert!(
        digests["large object 424244"].starts_with("320000/"),
        "{digests:?}"
    );
    assert_eq!(digests, server.digests("zoo_copy"));
}
