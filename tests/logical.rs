//! Logical backups (`cbdr gpbackup` / `cbdr gprestore`) of real
//! PostgreSQL 15 databases: the schema zoo with awkward data, restored
//! into new databases and compared with `pg_dump --schema-only` and
//! per-table checksums; filters and redirects; incremental chains; errors.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cbdr::logical::copy_format::CopyFormat;
use common::pg::{chown_to_pg, pg_bin, pg_command, PgServer};
use common::{CbdrEnv, Key, Storage};
const KEY_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff";
const OTHER_KEY_HEX: &str = "ffeeddccbbaa99887766554433221100f0e1d2c3b4a5968778695a4b3c2d1e0f";
const ZOO: &str = include_str!("fixtures/logical_zoo.sql");

/// Rows for the zoo's tables and a schema of awkward data: NULLs,
/// escapes, bytea, jsonb, arrays, a row of several MB, partitions.
const DATA: &str = r#"
INSERT INTO zoo.animals (name, species, mood, weight_kg, home, tags)
  SELECT 'a' || g, 'sp' || (g % 5), (ARRAY['sad','ok','happy','meh']::zoo.mood[])[1 + g % 4],
         g * 1.5, ROW('street ' || g, 'city', g)::zoo.address, ARRAY['t' || g, NULL]
    FROM generate_series(1, 300) g;
INSERT INTO zoo."Keepers" ("Full Name", email, level, animal_id, shift, pay_band)
  SELECT 'K ' || g, 'k' || g || '@zoo', g, 1000 + 10 * g,
         tstzrange('2024-01-01'::timestamptz + g * interval '1 day',
                   '2024-01-01'::timestamptz + g * interval '1 day' + interval '8 hours'),
         zoo.floatrange(g, g + 1)
    FROM generate_series(1, 50) g;
INSERT INTO zoo.feeding_log (animal_id, keeper_id, food)
  SELECT 1000 + 10 * (g % 300), 1 + (g % 50), 'food ' || g FROM generate_series(1, 1000) g;
INSERT INTO zoo.visits
  SELECT g, (ARRAY['north','south','east','west','SOUTH'])[1 + g % 5], '2023-01-01'::date + (g % 700),
         1000 + 10 * (g % 300), CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' || g END
    FROM generate_series(1, 3000) g;
INSERT INTO zoo.hashed SELECT g, 'v' || g FROM generate_series(1, 500) g;
INSERT INTO "Mixed Case ""Schema"""."Table.With.Dots" VALUES (1, 'A', 'ü', 2), (2, NULL, NULL, NULL);
INSERT INTO ünï.tàble VALUES ('x', 5), (NULL, 7);
INSERT INTO sales.orders (animal_id, keeper, amount, mood, placed)
  SELECT 1000 + 10 * g, g, g * 10.5, 'ok', tstzrange('2024-05-01', NULL) FROM generate_series(1, 40) g;
INSERT INTO zoo.base_log VALUES (1, 'b');
INSERT INTO zoo.child_log VALUES (2, 'c', '{"k": 1}');
INSERT INTO zoo.addr_book VALUES ('s1', 'c1', 1);
INSERT INTO zoo.scratch VALUES (1, 'x');
SELECT nextval('zoo.fresh_seq');
REFRESH MATERIALIZED VIEW zoo.species_count;

CREATE SCHEMA data;
CREATE TABLE data.mixed (id int PRIMARY KEY, t text, b bytea, j jsonb, a int[], n numeric,
                         ts timestamptz, nul text);
INSERT INTO data.mixed
  SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'row ' || g || E'\ttab\nnew line\\back\\slash' END,
         CASE WHEN g % 5 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END,
         jsonb_build_object('g', g, 's', repeat('x', g % 10), 'q', 'it''s "q"'),
         ARRAY[g, g + 1, NULL], g / 3.0, '2024-01-01'::timestamptz + g * interval '1 minute', NULL
    FROM generate_series(1, 20000) g;
INSERT INTO data.mixed VALUES
  (-1, repeat('big', 2000000), decode(repeat('ab', 3000000), 'hex'), '{"big": true}', '{}', 0,
   '2024-01-01', 'x');
CREATE TABLE data.part (id int, d date, v text) PARTITION BY RANGE (d);
CREATE TABLE data.part_2023 PARTITION OF data.part FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE data.part_2024 PARTITION OF data.part FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
INSERT INTO data.part SELECT g, '2023-01-01'::date + (g % 700), md5(g::text) FROM generate_series(1, 5000) g;
CREATE TABLE data.empty (x int);
-- A large object of 5 MiB that does not compress, read and written in
-- chunks (the config's large_object_chunk).
SELECT lo_from_bytea(424244, (SELECT string_agg(decode(md5(g::text), 'hex'), '' ORDER BY g)
                               FROM generate_series(1, 327680) g));
"#;

/// The shared environment (this file's key) and a server.
struct Env {
    env: CbdrEnv,
    server: PgServer,
}

deref_env!(Env, env);

fn env_with(storage: Storage) -> Env {
    // Small large-object chunks: the zoo's 5 MiB object is 80 of them.
    let env = CbdrEnv::builder("logical")
        .storage(storage)
        .key(Key::Raw(KEY_HEX.into()))
        .wal_segment_size(None)
        .extra_toml("[logical]\nlarge_object_chunk = 65536")
        .build();
    let server = PgServer::builder().start();
    Env { env, server }
}

fn env() -> Env {
    env_with(Storage::Fs)
}

impl Env {
    /// cbdr with PGHOST/PGPORT/PGUSER naming the server.
    fn pg(&self) -> common::Cmd {
        self.env.on(&self.server)
    }

    fn cbdr_with(&self, config: &Path, args: &[&str]) -> (i32, String, String) {
        self.pg().config(config).run(args).parts()
    }

    fn cbdr(&self, args: &[&str]) -> (i32, String, String) {
        self.pg().run(args).parts()
    }

    fn ok(&self, args: &[&str]) -> String {
        self.pg().ok(args)
    }

    /// Runs gpbackup; returns the timestamp it printed.
    fn backup(&self, args: &[&str]) -> String {
        let mut all = vec!["gpbackup"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        timestamp_of(&out)
    }

    fn restore(&self, ts: &str, args: &[&str]) -> String {
        let mut all = vec!["gprestore", "--timestamp", ts];
        all.extend_from_slice(args);
        self.ok(&all)
    }

    fn fails(&self, args: &[&str], code: i32, needle: &str) -> String {
        self.pg().refused(args, code, &[needle])
    }

    fn create_db(&self, db: &str, sql: &str) {
        self.server.psql(&format!("CREATE DATABASE {db}"));
        if !sql.is_empty() {
            self.server.psql_db(db, sql);
        }
    }

    fn logical_listing(&self) -> Vec<serde_json::Value> {
        self.pg().json(&["list", "--json"])["logical"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The record of a backup, read through the library.
    fn record(&self, ts: &str) -> cbdr::logical::record::LogicalBackupRecord {
        let config = cbdr::config::Config::load(&self.config).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let repo = cbdr::repo::Repo::open(&config).await.unwrap();
            repo.logical_backup(&cbdr::logical::layout::Timestamp::parse(ts).unwrap())
                .await
                .unwrap()
        })
    }
}

fn timestamp_of(out: &str) -> String {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with("Backup Timestamp = "))
        .unwrap_or_else(|| panic!("no timestamp in:\n{out}"));
    let ts = line
        .trim_start_matches("Backup Timestamp = ")
        .trim()
        .to_string();
    assert_eq!(ts.len(), 14, "{ts}");
    assert!(ts.bytes().all(|b| b.is_ascii_digit()), "{ts}");
    ts
}

fn load_zoo(server: &PgServer, db: &str) {
    server.psql(&format!("CREATE DATABASE {db}"));
    server.psql_db(db, ZOO);
    server.psql_db(db, DATA);
}

/// `pg_dump` of a database's schema with its large objects' entries
/// (BLOB, their owners, comments and grants: pre-data, which
/// `--schema-only` leaves out).
fn schema_dump(server: &PgServer, db: &str) -> String {
    server.pg_dump(&["--section=pre-data", "--section=post-data", "-b", db])
}

fn assert_same_database(server: &PgServer, a: &str, b: &str) {
    let (da, db) = (schema_dump(server, a), schema_dump(server, b));
    if da != db {
        let diff: Vec<String> = da
            .lines()
            .zip(db.lines())
            .filter(|(x, y)| x != y)
            .take(20)
            .map(|(x, y)| format!("- {x}\n+ {y}"))
            .collect();
        panic!(
            "pg_dump --schema-only of {a} and {b} differ ({} and {} lines):\n{}",
            da.lines().count(),
            db.lines().count(),
            diff.join("\n")
        );
    }
    assert_eq!(server.digests(a), server.digests(b), "data of {a} and {b}");
}

#[test]
fn zoo_round_trip_with_jobs_stats_and_listing() {
    let e = env();
    load_zoo(&e.server, "zoo");
    e.server.psql_db("zoo", "ANALYZE");
    let ts = e.backup(&["--dbname", "zoo", "--jobs", "2", "--with-stats"]);

    let listing = e.logical_listing();
    assert_eq!(listing.len(), 1, "{listing:?}");
    assert_eq!(listing[0]["timestamp"], ts.as_str());
    assert_eq!(listing[0]["database"], "zoo");
    assert_eq!(listing[0]["sections"], "all");
    assert!(listing[0]["rows"].as_u64().unwrap() > 25_000, "{listing:?}");
    let table = e.ok(&["list"]);
    assert!(
        table.contains(&ts) && table.contains("logical backups"),
        "{table}"
    );

    let out = e.restore(
        &ts,
        &[
            "--create-db",
            "--redirect-db",
            "zoo_copy",
            "--jobs",
            "2",
            "--with-stats",
        ],
    );
    assert!(out.contains("Restore completed successfully"), "{out}");
    assert_same_database(&e.server, "zoo", "zoo_copy");
    // --with-stats: pg_class's counts as backed up.
    let q = "SELECT reltuples::bigint FROM pg_class WHERE oid = 'data.mixed'::regclass";
    assert_eq!(e.server.psql_db("zoo_copy", q), e.server.psql_db("zoo", q));

    // The reports: the backup's and the restore's.
    let reports = e.ok(&["list", "--report", &ts]);
    assert!(
        reports.contains("backup status:") && reports.contains("Success"),
        "{reports}"
    );
    assert!(reports.contains("restore status:"), "{reports}");

    // A second restore into an existing database is refused: its tables exist.
    let err = e.fails(
        &["gprestore", "--timestamp", &ts, "--redirect-db", "zoo_copy"],
        2,
        "already exists",
    );
    assert!(err.contains("Relation"), "{err}");
    e.fails(
        &["gprestore", "--timestamp", &ts, "--redirect-db", "nope"],
        2,
        "Use the --create-db flag",
    );

    // The large objects: the 5 MiB one in 80 chunks of 64 KiB, the empty
    // one in one row.
    let rec = e.record(&ts);
    assert_eq!(rec.format, 3, "a record with large objects is format 3");
    let lo = rec.large_objects.expect("large objects copied");
    assert_eq!((lo.objects, lo.chunks, lo.chunk_size), (3, 82, 65536));
    assert!(lo.plain_bytes > 5 << 20, "{lo:?}");
    // Damaged, they stop the restore (exit 4) and none is half-written.
    let path = e.repo().join(lo.location.key());
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x55;
    fs::write(&path, bytes).unwrap();
    let err = e.fails(
        &[
            "gprestore",
            "--timestamp",
            &ts,
            "--redirect-db",
            "lo_damaged",
            "--create-db",
        ],
        4,
        "corrupted",
    );
    assert!(err.contains(lo.location.key()), "{err}");
    assert_eq!(
        e.server
            .psql_db("lo_damaged", "SELECT count(*) FROM pg_largeobject"),
        "0"
    );
}

#[test]
fn single_data_file_leaf_partitions_and_filtered_restores() {
    let e = env();
    load_zoo(&e.server, "zoo");
    let ts = e.backup(&[
        "--dbname",
        "zoo",
        "--single-data-file",
        "--leaf-partition-data",
        "--compression-type",
        "zstd",
        "--compression-level",
        "3",
    ]);
    let rec = e.record(&ts);
    assert!(rec.options.single_data_file && rec.options.leaf_partition_data);
    // PostgreSQL is told from Greenplum/Cloudberry (whose catalogs are
    // then read).
    assert_eq!(
        rec.server_flavor,
        cbdr::logical::metadata::ServerFlavor::Postgresql
    );
    assert!(
        rec.tables
            .iter()
            .any(|t| t.table.name == "visits_north_2023"),
        "leaf partitions are units of their own"
    );

    // Everything, serially (the single data file forbids --jobs).
    e.fails(
        &[
            "gprestore",
            "--timestamp",
            &ts,
            "--redirect-db",
            "x",
            "--create-db",
            "--jobs",
            "2",
        ],
        2,
        "Cannot use jobs flag when restoring backups with a single data file per segment.",
    );
    e.restore(
        &ts,
        &[
            "--create-db",
            "--redirect-db",
            "full",
            "--copy-queue-size",
            "2",
        ],
    );
    assert_same_database(&e.server, "zoo", "full");

    // One partitioned table: its leaves come along, read by range.
    e.restore(
        &ts,
        &[
            "--create-db",
            "--redirect-db",
            "onlyvisits",
            "--include-table",
            "zoo.visits",
        ],
    );
    let got = e.server.digests("onlyvisits");
    let want = e.server.digests("zoo");
    for leaf in [
        "zoo.visits_north_2023",
        "zoo.visits_east",
        "zoo.visits_other",
    ] {
        assert_eq!(got.get(leaf), want.get(leaf), "{leaf}");
    }
    assert!(!got.contains_key("data.mixed"), "{got:?}");

    // Into another schema, with the table's indexes.
    e.create_db("redir", "CREATE SCHEMA target");
    e.restore(
        &ts,
        &[
            "--redirect-db",
            "redir",
            "--include-table",
            "data.mixed",
            "--redirect-schema",
            "target",
        ],
    );
    let got = e.server.digests("redir");
    assert_eq!(got.get("target.mixed"), want.get("data.mixed"));
    let idx = e.server.psql_db(
        "redir",
        "SELECT count(*) FROM pg_indexes WHERE schemaname = 'target' AND tablename = 'mixed'",
    );
    assert_eq!(idx, "1", "the primary key moved with the table");
    e.fails(
        &[
            "gprestore",
            "--timestamp",
            &ts,
            "--redirect-db",
            "redir",
            "--include-table",
            "data.empty",
            "--redirect-schema",
            "nowhere",
        ],
        2,
        "Schema nowhere to redirect into does not exist",
    );
    e.fails(
        &[
            "gprestore",
            "--timestamp",
            &ts,
            "--redirect-db",
            "redir",
            "--include-table",
            "data.nope",
        ],
        2,
        "Could not find the following relation(s) in the backup set: data.nope",
    );
}

#[test]
fn backup_filters_metadata_only_and_data_only() {
    let e = env();
    load_zoo(&e.server, "zoo");
    let exclude = e.path("exclude.txt");
    fs::write(&exclude, "data.mixed\n\ndata.empty\n").unwrap();
    chown_to_pg(&exclude);

    // Schema filter with a table exclusion file.
    let ts = e.backup(&[
        "--dbname",
        "zoo",
        "--include-schema",
        "data",
        "--exclude-table-file",
        exclude.to_str().unwrap(),
    ]);
    let rec = e.record(&ts);
    let names: Vec<String> = rec
        .tables
        .iter()
        .map(|t| format!("{}.{}", t.table.schema, t.table.name))
        .collect();
    assert_eq!(names, ["data.part"], "{names:?}");
    e.restore(&ts, &["--create-db", "--redirect-db", "dataonly_schema"]);
    let got = e.server.digests("dataonly_schema");
    assert_eq!(
        got.get("data.part_2024"),
        e.server.digests("zoo").get("data.part_2024")
    );
    assert!(
        !got.contains_key("data.mixed") && !got.contains_key("zoo.animals"),
        "{got:?}"
    );

    // Unknown names are refused as gpbackup does.
    e.fails(
        &["gpbackup", "--dbname", "zoo", "--include-schema", "nope"],
        2,
        "Schema nope does not exist",
    );
    e.fails(
        &["gpbackup", "--dbname", "zoo", "--include-table", "zoo.nope"],
        2,
        "Table zoo.nope does not exist",
    );
    e.fails(
        &[
            "gpbackup",
            "--dbname",
            "zoo",
            "--include-table",
            "zoo.visits_east",
        ],
        2,
        "--leaf-partition-data flag must be specified to filter on zoo.visits_east",
    );

    // Metadata only, then data only into it (with --truncate-table: twice).
    let meta = e.backup(&["--dbname", "zoo", "--metadata-only"]);
    let data = e.backup(&["--dbname", "zoo", "--data-only", "--jobs", "2"]);
    e.restore(&meta, &["--create-db", "--redirect-db", "split"]);
    assert_eq!(
        e.server.psql_db("split", "SELECT count(*) FROM data.mixed"),
        "0"
    );
    e.fails(
        &[
            "gprestore",
            "--timestamp",
            &meta,
            "--redirect-db",
            "split",
            "--data-only",
        ],
        2,
        "Cannot use data-only flag when restoring metadata-only backup",
    );
    e.fails(
        &[
            "gprestore",
            "--timestamp",
            &data,
            "--redirect-db",
            "nodb",
            "--create-db",
        ],
        2,
        "must be created manually to restore table-filtered or data-only backups",
    );
    // The restored post-data holds foreign keys: load with them off as a
    // data-only restore into an existing schema would (gprestore loads in
    // parallel and does not order by foreign keys), so drop them here.
    e.server.psql_db(
        "split",
        "DO $$ DECLARE r record; BEGIN FOR r IN SELECT conrelid::regclass AS t, conname FROM pg_constraint WHERE contype = 'f' AND conparentid = 0 LOOP EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.t, r.conname); END LOOP; END $$",
    );
    e.restore(
        &data,
        &["--redirect-db", "split", "--data-only", "--jobs", "2"],
    );
    e.restore(
        &data,
        &["--redirect-db", "split", "--data-only", "--truncate-table"],
    );
    let got = e.server.digests("split");
    let want = e.server.digests("zoo");
    for t in [
        "data.mixed",
        "zoo.animals",
        "zoo.visits_south",
        "sales.orders",
        "large object 424242",
        "large object 424243",
        "large object 424244",
    ] {
        assert_eq!(got.get(t), want.get(t), "{t}");
    }
}

/// Signals of every table of a backup: which were copied by it.
fn copied(rec: &cbdr::logical::record::LogicalBackupRecord) -> Vec<String> {
    let mut v: Vec<String> = rec
        .own_tables()
        .map(|t| format!("{}.{}", t.table.schema, t.table.name))
        .collect();
    v.sort();
    v
}

#[test]
fn incremental_chain_copies_changed_tables_only() {
    let e = env();
    e.server.psql("CREATE DATABASE inc");
    e.server.psql_db(
        "inc",
        "CREATE TABLE ins (id int PRIMARY KEY, v text);
         CREATE TABLE upd (id int PRIMARY KEY, v text);
         CREATE TABLE del (id int PRIMARY KEY, v text);
         CREATE TABLE trunc (id int, v text);
         CREATE TABLE alter_t (id int);
         CREATE TABLE toast_t (id int, big text);
         CREATE TABLE still (id int, v text);
         CREATE TABLE p (id int, k int) PARTITION BY LIST (k);
         CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1);
         CREATE TABLE p2 PARTITION OF p FOR VALUES IN (2);
         INSERT INTO ins SELECT g, 'v' || g FROM generate_series(1, 1000) g;
         INSERT INTO upd SELECT g, 'v' || g FROM generate_series(1, 1000) g;
         INSERT INTO del SELECT g, 'v' || g FROM generate_series(1, 1000) g;
         INSERT INTO trunc SELECT g, 'v' || g FROM generate_series(1, 1000) g;
         INSERT INTO alter_t SELECT g FROM generate_series(1, 100) g;
         INSERT INTO toast_t VALUES (1, repeat('x', 100000));
         INSERT INTO still SELECT g, 'v' || g FROM generate_series(1, 1000) g;
         INSERT INTO p SELECT g, 1 + g % 2 FROM generate_series(1, 100) g;",
    );
    let all: Vec<String> = [
        "public.alter_t",
        "public.del",
        "public.ins",
        "public.p1",
        "public.p2",
        "public.still",
        "public.toast_t",
        "public.trunc",
        "public.upd",
    ]
    .map(String::from)
    .to_vec();

    // Incrementals need --leaf-partition-data, and a base.
    e.fails(
        &["gpbackup", "--dbname", "inc", "--incremental"],
        2,
        "--leaf-partition-data must be specified with --incremental",
    );
    e.fails(
        &["gpbackup", "--dbname", "inc", "--incremental", "--leaf-partition-data"],
        1,
        "There was no matching previous backup found with the flags provided. Please take a full backup.",
    );
    let base = e.backup(&["--dbname", "inc", "--leaf-partition-data"]);
    assert_eq!(copied(&e.record(&base)), all);

    // Nothing changed: nothing copied, everything kept.
    let inc0 = e.backup(&["--dbname", "inc", "--leaf-partition-data", "--incremental"]);
    let r0 = e.record(&inc0);
    assert_eq!(copied(&r0), Vec::<String>::new());
    assert_eq!(r0.incremental_of.as_deref(), Some(base.as_str()));
    assert_eq!(r0.tables.len(), all.len());

    // Each kind of change, committed just before the backup.
    e.server.psql_db(
        "inc",
        "INSERT INTO ins VALUES (5000, 'new');
         UPDATE p SET id = -id WHERE id = 2;",
    );
    let inc1 = e.backup(&["--dbname", "inc", "--leaf-partition-data", "--incremental"]);
    assert_eq!(copied(&e.record(&inc1)), ["public.ins", "public.p1"]);

    e.server.psql_db(
        "inc",
        "UPDATE upd SET v = 'changed' WHERE id = 7;
         DELETE FROM del WHERE id = 9;
         TRUNCATE trunc; INSERT INTO trunc VALUES (1, 'again');
         ALTER TABLE alter_t ADD COLUMN extra int DEFAULT 5;
         UPDATE toast_t SET big = repeat('y', 100000);",
    );
    let inc2 = e.backup(&["--dbname", "inc", "--leaf-partition-data", "--incremental"]);
    let r2 = e.record(&inc2);
    assert_eq!(
        copied(&r2),
        [
            "public.alter_t",
            "public.del",
            "public.toast_t",
            "public.trunc",
            "public.upd"
        ]
    );
    // ins was copied by inc1, still and p1 by the base.
    let from: BTreeMap<String, String> = r2
        .tables
        .iter()
        .map(|t| (t.table.name.clone(), t.backup.clone()))
        .collect();
    assert_eq!(from["ins"], inc1);
    assert_eq!(from["p1"], inc1);
    assert_eq!(from["still"], base);
    assert_eq!(from["p2"], base);

    // The chain restores to the database as it is now.
    e.restore(&inc2, &["--create-db", "--redirect-db", "inc_copy"]);
    assert_same_database(&e.server, "inc", "inc_copy");
    // gprestore --incremental --data-only: this backup's tables only.
    e.server
        .psql_db("inc_copy", "DELETE FROM upd; DELETE FROM still;");
    e.restore(
        &inc2,
        &["--redirect-db", "inc_copy", "--incremental", "--data-only"],
    );
    assert_eq!(
        e.server.psql_db("inc_copy", "SELECT count(*) FROM upd"),
        "1000"
    );
    assert_eq!(
        e.server.psql_db("inc_copy", "SELECT count(*) FROM still"),
        "0"
    );

    // A session that stays connected: its second change, less than a
    // second after its first, is counted only by its 10 s idle flush, which
    // the backup waits for.
    let mut session = pg_command(pg_bin("psql"))
        .args(["-XAtq", "-h", "127.0.0.1", "-U", "postgres", "-p"])
        .arg(e.server.port().to_string())
        .args(["-d", "inc", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let stdin = session.stdin.as_mut().unwrap();
        stdin
            .write_all(b"UPDATE ins SET v = 'first' WHERE id = 1;\nUPDATE still SET v = 'second' WHERE id = 1;\n")
            .unwrap();
        stdin.flush().unwrap();
    }
    e.server.wait_until(
        |s| s.psql_db("inc", "SELECT count(*) FROM still WHERE v = 'second'") == "1",
        Duration::from_secs(10),
    );
    let inc_idle = e.backup(&["--dbname", "inc", "--leaf-partition-data", "--incremental"]);
    assert_eq!(copied(&e.record(&inc_idle)), ["public.ins", "public.still"]);
    drop(session.stdin.take());
    let _ = session.wait();

    // A statistics reset or a restart: every table is copied again.
    e.server.psql_db("inc", "SELECT pg_stat_reset()");
    let inc3 = e.backup(&["--dbname", "inc", "--leaf-partition-data", "--incremental"]);
    assert_eq!(copied(&e.record(&inc3)), all);
    let mut server = e.server;
    server.restart();
    let e = Env { server, ..e };
    let inc4 = e.backup(&[
        "--dbname",
        "inc",
        "--leaf-partition-data",
        "--incremental",
        "--from-timestamp",
        &inc3,
    ]);
    let r4 = e.record(&inc4);
    assert_eq!(copied(&r4), all);
    assert_eq!(r4.incremental_of.as_deref(), Some(inc3.as_str()));
    e.fails(
        &[
            "gpbackup",
            "--dbname",
            "postgres",
            "--leaf-partition-data",
            "--incremental",
            "--from-timestamp",
            &inc4,
        ],
        2,
        "does not match that of the current one",
    );
}

#[test]
fn a_big_table_loads_through_every_connection() {
    let e = env();
    e.server.psql("CREATE DATABASE big");
    e.server.psql_db(
        "big",
        "CREATE TABLE t (id int PRIMARY KEY, v text, w text);
         INSERT INTO t SELECT g, md5(g::text) || E'\\n' || md5((-g)::text), repeat(chr(65 + g % 26), 50)
           FROM generate_series(1, 320000) g;
         CREATE TABLE small (id int);
         INSERT INTO small SELECT generate_series(1, 10);",
    );
    let ts = e.backup(&["--dbname", "big", "--jobs", "2"]);
    assert!(
        e.record(&ts)
            .tables
            .iter()
            .any(|t| t.plain_bytes > 32_000_000),
        "the table must be big enough to be split"
    );
    e.restore(
        &ts,
        &["--create-db", "--redirect-db", "big2", "--jobs", "2"],
    );
    assert_same_database(&e.server, "big", "big2");
    let formats: Vec<_> = e.record(&ts).tables.iter().map(|t| t.format).collect();
    assert!(
        formats.iter().all(|f| *f == CopyFormat::Binary),
        "built-in types are stored binary: {formats:?}"
    );
    // The table loaded whole, in the transaction that truncated it, was
    // written frozen (COPY FREEZE), the split one could not be.
    e.server.psql_db("big2", "CREATE EXTENSION pageinspect");
    let frozen = |table: &str| {
        e.server.psql_db(
            "big2",
            &format!(
                "SELECT bool_and((t_infomask & 768) = 768) FROM heap_page_items(get_raw_page('{table}', 0))"
            ),
        )
    };
    assert_eq!(frozen("small"), "t", "small was not loaded frozen");
    assert_eq!(frozen("t"), "f", "t was split, its rows cannot be frozen");
    let reports = e.ok(&["list", "--report", &ts]);
    assert!(
        reports
            .lines()
            .any(|l| l.starts_with("tables loaded in parallel:") && l.ends_with(" 1")),
        "{reports}"
    );
}

#[test]
fn binary_rows_convert_into_changed_columns_and_text_stays_available() {
    let e = env();
    e.server.psql("CREATE DATABASE src");
    e.server.psql_db(
        "src",
        "CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE TABLE b (id int, t text, n numeric, f float8, a int[], j jsonb, d date);
         INSERT INTO b SELECT g, CASE WHEN g % 7 = 0 THEN NULL ELSE 'r\\ow ' || g || E'\t\n' END,
                g / 7.0, g * 0.1, ARRAY[g, NULL], jsonb_build_object('g', g), '2024-02-29'::date + g
           FROM generate_series(1, 3000) g;
         CREATE TABLE e (id int, m mood);
         INSERT INTO e SELECT g, (ARRAY['sad','ok']::mood[])[1 + g % 2] FROM generate_series(1, 50) g;",
    );
    let ts = e.backup(&["--dbname", "src"]);
    let rec = e.record(&ts);
    let format_of = |rec: &cbdr::logical::record::LogicalBackupRecord, name: &str| {
        rec.tables
            .iter()
            .find(|t| t.table.name == name)
            .map(|t| t.format)
            .unwrap()
    };
    assert_eq!(format_of(&rec, "b"), CopyFormat::Binary);
    assert_eq!(format_of(&rec, "e"), CopyFormat::Text, "an enum column");
    e.restore(&ts, &["--create-db", "--redirect-db", "same"]);
    assert_same_database(&e.server, "src", "same");

    // A data-only restore into tables whose column types changed: the
    // binary rows are converted as a text COPY would convert them.
    e.create_db(
        "changed",
        "CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE TABLE b (id bigint, t varchar(40), n text, f numeric, a bigint[], j json, d text);
         CREATE TABLE e (id int, m mood);",
    );
    e.restore(
        &ts,
        &["--redirect-db", "changed", "--data-only", "--jobs", "2"],
    );
    let sum = |db: &str| {
        e.server.psql_db(
            db,
            "SELECT count(*) || '/' || md5(string_agg(format('%s|%s|%s|%s|%s|%s|%s', id::int, t::text, n::numeric,                     f::float8, a::int[], j::jsonb, d::date), ',' ORDER BY id)) FROM b",
        )
    };
    assert_eq!(sum("changed"), sum("src"));
    assert_eq!(
        e.server
            .psql_db("changed", "SELECT count(*) FROM b WHERE t IS NULL"),
        "428"
    );
    // A value the changed type cannot hold fails as it would in text.
    e.create_db(
        "narrow",
        "CREATE TABLE b (id int, t varchar(3), n numeric, f float8, a int[], j jsonb, d date);",
    );
    let err = e.fails(
        &[
            "gprestore",
            "--timestamp",
            &ts,
            "--redirect-db",
            "narrow",
            "--data-only",
            "--include-table",
            "public.b",
        ],
        6,
        "too long",
    );
    assert!(err.contains("public.b"), "{err}");
    assert_eq!(e.server.psql_db("narrow", "SELECT count(*) FROM b"), "0");

    // copy_format = "text": every table in text.
    let text = e.write_config(
        "text",
        &format!("{}[logical]\ncopy_format = \"text\"", e.fs_storage()),
        Key::Raw(KEY_HEX.into()),
        "",
    );
    let (code, out, err) = e.cbdr_with(&text, &["gpbackup", "--dbname", "src"]);
    assert_eq!(code, 0, "{out}{err}");
    let ts = timestamp_of(&out);
    assert!(e
        .record(&ts)
        .tables
        .iter()
        .all(|t| t.format == CopyFormat::Text));
    e.restore(&ts, &["--create-db", "--redirect-db", "from_text"]);
    assert_same_database(&e.server, "src", "from_text");

    // A record of a newer format than this cbdr reads is refused clearly.
    let mut rec = e.record(&ts);
    rec.format = cbdr::logical::record::RECORD_FORMAT + 1;
    let config = cbdr::config::Config::load(&e.config).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let repo = cbdr::repo::Repo::open(&config).await.unwrap();
        let t = cbdr::logical::layout::Timestamp::parse(&ts).unwrap();
        repo.put_json(&cbdr::logical::layout::record_key(&t), &rec)
            .await
            .unwrap();
    });
    chown_to_pg(&e.repo());
    e.fails(
        &[
            "gprestore",
            "--timestamp",
            &ts,
            "--create-db",
            "--redirect-db",
            "newer",
        ],
        2,
        "restore it with a newer cbdr",
    );
}

#[test]
fn objects_not_carried_stop_the_backup_unless_skipped() {
    // A subscription is carried, but its connection string is readable by
    // superusers (and pg_read_all_data) only: a backup by another role
    // cannot carry it.
    let e = env();
    e.create_db(
        "lo",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2); \
         CREATE SUBSCRIPTION sub1 CONNECTION 'host=127.0.0.1 port=1 dbname=none' \
           PUBLICATION p WITH (connect = false); \
         CREATE ROLE lo_backup LOGIN IN ROLE pg_monitor; GRANT SELECT ON t TO lo_backup;",
    );
    let as_backup_role = |args: &[&str]| e.pg().env("PGUSER", "lo_backup").run(args).parts();
    // Named, with the way out, before anything is copied.
    let (code, out, err) = as_backup_role(&["gpbackup", "--dbname", "lo", "--without-globals"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("subscription sub1 (its connection string is readable by superusers only"),
        "{err}"
    );
    assert!(err.contains("--skip-unsupported"), "{err}");
    assert!(
        !e.logical_listing()
            .iter()
            .any(|b| b["status"] == "Success" || b["database"] == "lo"),
        "{:?}",
        e.logical_listing()
    );

    let (code, out, err) = as_backup_role(&[
        "gpbackup",
        "--dbname",
        "lo",
        "--without-globals",
        "--skip-unsupported",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let ts = timestamp_of(&out);
    let skipped = e.record(&ts).skipped_objects;
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].starts_with("subscription sub1 "), "{skipped:?}");
    e.restore(&ts, &["--create-db", "--redirect-db", "lo_copy"]);
    assert_eq!(e.server.psql_db("lo_copy", "SELECT count(*) FROM t"), "2");
    assert_eq!(
        e.server.psql_db(
            "lo_copy",
            "SELECT count(*) FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid \
              WHERE d.datname = 'lo_copy'"
        ),
        "0"
    );
    // Both reports say what is not there.
    let reports = e.ok(&["list", "--report", &ts]);
    assert_eq!(
        reports
            .matches("objects not in the backup (--skip-unsupported): 1")
            .count(),
        2,
        "{reports}"
    );
    assert!(reports.contains("subscription sub1"), "{reports}");

    // A superuser's backup carries it (never connected, as pg_dump
    // restores it).
    let ts = e.backup(&["--dbname", "lo"]);
    assert!(e.record(&ts).skipped_objects.is_empty());
    e.restore(&ts, &["--create-db", "--redirect-db", "lo_sub"]);
    assert_eq!(
        e.server.psql_db(
            "lo_sub",
            "SELECT s.subname || ' ' || s.subenabled || ' ' || s.subslotname || ' ' || s.subconninfo \
               FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid \
              WHERE d.datname = 'lo_sub'"
        ),
        "sub1 false sub1 host=127.0.0.1 port=1 dbname=none"
    );
}

#[test]
fn on_error_continue_lists_what_failed() {
    let e = env();
    e.server.psql("CREATE DATABASE src");
    e.server.psql_db(
        "src",
        "CREATE ROLE only_here NOLOGIN;
         CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE b (id int, v text);
         ALTER TABLE b OWNER TO only_here;
         INSERT INTO a SELECT g, 'a' FROM generate_series(1, 100) g;
         INSERT INTO b SELECT g, 'b' FROM generate_series(1, 100) g;",
    );
    let ts = e.backup(&["--dbname", "src", "--without-globals"]);
    // Another server has no role only_here: the ownership fails.
    let other = PgServer::builder().start();
    let run = |args: &[&str]| {
        let out = e.on(&other).run(args);
        (out.code, out.stderr)
    };
    let (code, err) = run(&["gprestore", "--timestamp", &ts, "--create-db"]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("only_here"), "{err}");
    other.psql("DROP DATABASE src");
    let (code, err) = run(&[
        "gprestore",
        "--timestamp",
        &ts,
        "--create-db",
        "--on-error-continue",
        "--jobs",
        "2",
    ]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("went on past 1 errors"), "{err}");
    assert!(err.contains("/errors"), "{err}");
    assert_eq!(other.psql_db("src", "SELECT count(*) FROM a"), "100");
    assert_eq!(other.psql_db("src", "SELECT count(*) FROM b"), "100");
    let reports = e.ok(&["list", "--report", &ts]);
    assert!(
        reports.contains("Success but non-fatal errors occurred"),
        "{reports}"
    );
    assert!(
        reports.contains("metadata\tOWNER") || reports.contains("only_here"),
        "{reports}"
    );
}

#[test]
fn killed_backup_is_never_listed_and_bad_data_is_refused() {
    let e = env();
    e.server.psql("CREATE DATABASE big");
    e.server.psql_db(
        "big",
        "CREATE TABLE t (id int, v text);
         INSERT INTO t SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 1500000) g;
         CREATE TABLE small (id int);
         INSERT INTO small SELECT generate_series(1, 10);",
    );
    // Run as this user (not through runuser): the kill reaches cbdr itself.
    let mut child = e
        .pg()
        .own_user()
        .command(&["gpbackup", "--dbname", "big", "--no-compression"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let ts = first.trim_start_matches("Backup Timestamp = ").to_string();
    // Wait until rows are being stored, then kill it mid-COPY.
    let data_dir = e.repo().join("logical").join(&ts).join("data");
    common::wait_for(
        "data stored",
        Duration::from_secs(30),
        || match fs::read_dir(&data_dir).map(|d| d.count()) {
            Ok(n) if n > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the backup ended before the kill"
    );
    child.kill().unwrap();
    let _ = child.wait();
    chown_to_pg(&e.repo());
    assert!(e.logical_listing().is_empty(), "a killed backup is listed");
    e.fails(
        &[
            "gprestore",
            "--timestamp",
            &ts,
            "--redirect-db",
            "x",
            "--create-db",
        ],
        1,
        "no complete logical backup",
    );

    // A complete backup of the small table, then a wrong key and damage.
    let ts = e.backup(&["--dbname", "big", "--include-table", "public.small"]);
    let other = e.write_config(
        "otherkey",
        &e.fs_storage(),
        Key::Raw(OTHER_KEY_HEX.into()),
        "",
    );
    let (code, _, err) = e.cbdr_with(
        &other,
        &[
            "gprestore",
            "--timestamp",
            &ts,
            "--redirect-db",
            "k",
            "--create-db",
        ],
    );
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("not the repository's key"), "{err}");

    e.server.psql("CREATE DATABASE damaged");
    e.server.psql_db("damaged", "CREATE TABLE small (id int)");
    let rec = e.record(&ts);
    let key = rec.tables[0].location.key().to_string();
    let path = e.repo().join(&key);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x55;
    fs::write(&path, bytes).unwrap();
    let err = e.fails(
        &[
            "gprestore",
            "--timestamp",
            &ts,
            "--redirect-db",
            "damaged",
            "--data-only",
        ],
        4,
        "corrupted",
    );
    assert!(err.contains(&key), "{err}");
    assert_eq!(
        e.server.psql_db("damaged", "SELECT count(*) FROM small"),
        "0",
        "nothing half-loaded"
    );
}

#[test]
fn flags_are_checked_as_gpbackup_and_gprestore_do() {
    let e = env();
    let out = e.ok(&["gpbackup", "--version"]);
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    let out = e.ok(&["gprestore", "--version"]);
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
    for (args, msg) in [
        (&["gpbackup", "--dbname", "x", "--jobs", "2", "--single-data-file"][..],
         "The following flags may not be specified together: jobs, metadata-only, single-data-file"),
        (&["gpbackup", "--dbname", "x", "--metadata-only", "--data-only"],
         "The following flags may not be specified together: data-only, metadata-only, incremental"),
        (&["gpbackup", "--dbname", "x", "--copy-queue-size", "4"],
         "--copy-queue-size must be specified with --single-data-file"),
        (&["gpbackup", "--dbname", "x", "--single-data-file", "--copy-queue-size", "1"],
         "--copy-queue-size 1 is invalid. Must be at least 2"),
        (&["gpbackup", "--dbname", "x", "--from-timestamp", "20240101000000"],
         "--from-timestamp must be specified with --incremental"),
        (&["gpbackup", "--dbname", "x", "--incremental", "--leaf-partition-data", "--from-timestamp", "2024"],
         "Timestamp 2024 is invalid.  Timestamps must be in the format YYYYMMDDHHMMSS."),
        (&["gpbackup", "--dbname", "x", "--compression-type", "gzip", "--compression-level", "12"],
         "compression type 'gzip' only allows compression levels between 1 and 9, but the provided level is 12"),
        (&["gpbackup", "--dbname", "x", "--no-compression", "--compression-type", "zstd"],
         "no-compression, compression-type"),
        (&["gpbackup", "--dbname", "x", "--backup-dir", "relative/dir"],
         "relative/dir is not an absolute path."),
        (&["gpbackup", "--dbname", "x", "--plugin-config", "/etc/s3.yaml"],
         "cbdr does not run gpbackup storage plugins"),
        (&["gpbackup", "--dbname", "x", "--plugin-config", "/etc/s3.yaml", "--backup-dir", "/b"],
         "plugin-config, backup-dir"),
        (&["gpbackup", "--dbname", "x", "--debug", "--quiet"],
         "debug, quiet, verbose"),
        (&["gpbackup", "--dbname", "x", "--include-table", "nodot"],
         "not a table name"),
        (&["gprestore", "--timestamp", "20240101000000", "--incremental"],
         "Cannot use --incremental without --data-only"),
        (&["gprestore", "--timestamp", "20240101000000", "--truncate-table"],
         "Cannot use --truncate-table without --include-table or --include-table-file and without --data-only"),
        (&["gprestore", "--timestamp", "20240101000000", "--redirect-schema", "s"],
         "Cannot use --redirect-schema without --include-table, --include-table-file, --include-schema, or --include-schema-file"),
        (&["gprestore", "--timestamp", "20240101000000", "--run-analyze", "--with-stats"],
         "run-analyze, with-stats"),
        (&["gprestore", "--timestamp", "20240101000000", "--data-only", "--create-db"],
         "data-only, create-db"),
        (&["gprestore", "--timestamp", "bad"],
         "Timestamp bad is invalid"),
    ] {
        e.fails(args, 2, msg);
    }
    e.fails(
        &["gprestore", "--timestamp", "20240101000000"],
        1,
        "no complete logical backup",
    );

    // --resize-cluster and --run-analyze on a single server.
    e.server.psql("CREATE DATABASE small");
    e.server.psql_db(
        "small",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);",
    );
    let dir = e.path("bdir");
    let ts = e.backup(&[
        "--dbname",
        "small",
        "--backup-dir",
        dir.to_str().unwrap(),
        "--compression-type",
        "gzip",
    ]);
    assert!(dir.join("logical").join(&ts).join("backup.json").exists());
    let (code, out, err) = e.cbdr(&[
        "gprestore",
        "--timestamp",
        &ts,
        "--backup-dir",
        dir.to_str().unwrap(),
        "--create-db",
        "--redirect-db",
        "small2",
        "--resize-cluster",
        "--run-analyze",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("--resize-cluster") && err.contains("single PostgreSQL server"),
        "{err}"
    );
    assert_eq!(e.server.psql_db("small2", "SELECT count(*) FROM t"), "2");
    let analyzed = e.server.psql_db(
        "small2",
        "SELECT count(*) FROM pg_stats WHERE tablename = 't'",
    );
    assert_eq!(analyzed, "1", "--run-analyze");
}

#[test]
fn garage_round_trip_with_ranged_reads() {
    let e = env_with(Storage::S3("lg".into()));
    load_zoo(&e.server, "zoo");
    let ts = e.backup(&["--dbname", "zoo", "--single-data-file"]);
    e.restore(&ts, &["--create-db", "--redirect-db", "zoo_s3"]);
    assert_same_database(&e.server, "zoo", "zoo_s3");
    e.restore(
        &ts,
        &[
            "--create-db",
            "--redirect-db",
            "one",
            "--include-table",
            "data.mixed",
        ],
    );
    assert_eq!(
        e.server.digests("one").get("data.mixed"),
        e.server.digests("zoo").get("data.mixed")
    );
    let listing = e.logical_listing();
    assert_eq!(listing.len(), 1);
    assert_eq!(listing[0]["single_data_file"], true);
}
