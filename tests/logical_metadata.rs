//! The metadata half of the logical mode against real PostgreSQL 15: the
//! "schema zoo" (tests/fixtures/logical_zoo.sql) is collected, replayed
//! elsewhere, and `pg_dump --schema-only` of the source and the copy must
//! be equal; filters, schema redirects and globals likewise.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use cbdr::logical::metadata::{
    collect, list_tables, redirect_schema, select, selected_tables, MetadataOptions, ObjectFilter,
    RESTORE_SESSION_SETUP,
};
use cbdr::logical::toc::{QualifiedName, Section, TocEntry};
use cbdr::pg::conn::{ConnParams, PgConn, Replication, SslMode};
use common::pg::{pg_bin, pg_command, pg_user_dir, PgServer};

const ZOO: &str = include_str!("fixtures/logical_zoo.sql");

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn params(server: &PgServer, db: &str) -> ConnParams {
    ConnParams {
        host: "127.0.0.1".into(),
        port: server.port(),
        user: "postgres".into(),
        password: None,
        passfile: None,
        dbname: db.into(),
        sslmode: SslMode::Disable,
        sslrootcert: None,
        application_name: "cbdr-test".into(),
        options: String::new(),
        connect_timeout: Duration::from_secs(30),
    }
}

async fn connect(server: &PgServer, db: &str) -> PgConn {
    PgConn::connect(&params(server, db), Replication::Off)
        .await
        .unwrap_or_else(|e| panic!("connect to {db}: {e}"))
}

/// A server with the zoo loaded into database `src`.
fn zoo_server() -> PgServer {
    let server = PgServer::new();
    server.psql("CREATE DATABASE src");
    server.psql_db("src", ZOO);
    server
}

fn collect_all(server: &PgServer, db: &str, opts: &MetadataOptions) -> Vec<TocEntry> {
    rt().block_on(async {
        let mut conn = connect(server, db).await;
        let entries = collect(&mut conn, opts).await.expect("collect");
        conn.close().await;
        entries
    })
}

/// Replay entries as a restore does: session setup, then each entry as
/// one simple query. `skip` leaves entries out (e.g. existing tablespaces).
fn replay(server: &PgServer, db: &str, entries: &[TocEntry], skip: impl Fn(&TocEntry) -> bool) {
    rt().block_on(async {
        let mut conn = connect(server, db).await;
        conn.simple_query(RESTORE_SESSION_SETUP)
            .await
            .expect("session setup");
        for e in entries {
            if skip(e) {
                continue;
            }
            if let Err(err) = conn.simple_query(&e.statement).await {
                panic!(
                    "replaying entry {} ({} {}.{}) failed: {err}\n--- statement ---\n{}",
                    e.id, e.kind, e.schema, e.name, e.statement
                );
            }
        }
        conn.close().await;
    });
}

/// `pg_dump --schema-only` of `db` with extra arguments (with none: with
/// the large objects' entries), without the
/// lines that differ between runs (`\restrict` keys).
fn pg_dump(server: &PgServer, db: &str, args: &[&str]) -> String {
    // A whole-database dump shows the large objects' entries too (BLOB,
    // owners, comments, grants: pre-data, left out by --schema-only).
    let mut all: Vec<&str> = if args.is_empty() {
        vec!["--section=pre-data", "--section=post-data", "-b"]
    } else {
        vec!["--schema-only"]
    };
    all.extend_from_slice(args);
    all.push(db);
    server.pg_dump(&all)
}

/// `pg_dump -Fc src | pg_restore -d dst`, as a DBA copies a database.
fn pg_dump_restore(server: &PgServer, src: &str, dst: &str) {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("src.dump");
    let conn = |c: &mut std::process::Command| {
        c.arg("-h").arg(server.socket_dir()).args([
            "-p",
            &server.port().to_string(),
            "-U",
            "postgres",
        ]);
    };
    common::pg::chown_to_pg(dir.path());
    let mut dump = pg_command(pg_bin("pg_dump"));
    conn(&mut dump);
    let out = dump
        .args(["-Fc", "-f"])
        .arg(&archive)
        .arg(src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_dump -Fc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::pg::chown_to_pg(dir.path());
    let mut restore = pg_command(pg_bin("pg_restore"));
    conn(&mut restore);
    let out = restore
        .args(["--exit-on-error", "-d", dst])
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn strip_volatile(dump: &str) -> String {
    dump.lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Assert two dumps are equal; on failure show a unified diff.
fn assert_same_dump(what: &str, expected: &str, actual: &str) {
    if expected == actual {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("expected.sql");
    let b = dir.path().join("actual.sql");
    std::fs::write(&a, expected).unwrap();
    std::fs::write(&b, actual).unwrap();
    let diff = std::process::Command::new("diff")
        .args(["-u"])
        .arg(&a)
        .arg(&b)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("(diff failed: {e})"));
    panic!("{what}: pg_dump output differs\n{diff}");
}

/// A dump as its sorted list of objects (each `-- Name:` block with its
/// statements): pg_dump orders objects it has no other reason to order by
/// OID, and a partial or redirected restore creates them in another order.
fn dump_objects(dump: &str) -> String {
    let mut blocks: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in dump.lines() {
        if line.starts_with("-- Name: ") {
            blocks.push(std::mem::take(&mut current));
        }
        // Session settings float between objects.
        let setting = line.starts_with("SET ") || line.starts_with("SELECT pg_catalog.set_config(");
        if !line.is_empty() && line != "--" && !setting {
            current.push_str(line);
            current.push('\n');
        }
    }
    blocks.push(current);
    blocks.sort();
    blocks.join("\n")
}

/// [`assert_same_dump`] of the sorted objects of two dumps.
fn assert_same_objects(what: &str, expected: &str, actual: &str) {
    assert_same_dump(what, &dump_objects(expected), &dump_objects(actual));
}

fn q(schema: &str, name: &str) -> QualifiedName {
    QualifiedName {
        schema: schema.into(),
        name: name.into(),
    }
}

fn count(server: &PgServer, db: &str, sql: &str) -> i64 {
    server
        .psql_db(db, sql)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Ids 1..n in order, dependencies earlier, sections in order.
fn check_order(entries: &[TocEntry]) {
    let mut section = Section::Globals;
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.id as usize, i + 1, "ids are positions");
        assert!(
            e.section >= section,
            "{} {}: section goes back",
            e.kind,
            e.name
        );
        section = e.section;
        for d in &e.depends_on {
            assert!(
                *d < e.id,
                "{} {} depends on later entry {d}",
                e.kind,
                e.name
            );
        }
        assert!(
            e.statement.trim_end().ends_with(';'),
            "{} {}: {}",
            e.kind,
            e.name,
            e.statement
        );
    }
}

#[test]
fn zoo_round_trip_gives_the_same_pg_dump() {
    let server = zoo_server();
    let entries = collect_all(&server, "src", &MetadataOptions::default());
    check_order(&entries);
    let kinds: BTreeSet<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    for k in [
        "SCHEMA",
        "EXTENSION",
        "COLLATION",
        "TYPE",
        "DOMAIN",
        "FUNCTION",
        "PROCEDURE",
        "AGGREGATE",
        "SEQUENCE",
        "SEQUENCE SET",
        "SEQUENCE OWNED BY",
        "TABLE",
        "TABLE ATTACH",
        "VIEW",
        "MATERIALIZED VIEW",
        "MATERIALIZED VIEW DATA",
        "INDEX",
        "INDEX ATTACH",
        "CONSTRAINT",
        "FK CONSTRAINT",
        "TRIGGER",
        "RULE",
        "POLICY",
        "ROW SECURITY",
        "STATISTICS",
        "OWNER",
        "COMMENT",
        "ACL",
        "DEFAULT ACL",
        "ACCESS METHOD",
        "SHELL TYPE",
        "OPERATOR",
        "OPERATOR FAMILY",
        "OPERATOR CLASS",
        "CAST",
        "TRANSFORM",
        "TEXT SEARCH PARSER",
        "TEXT SEARCH TEMPLATE",
        "TEXT SEARCH DICTIONARY",
        "TEXT SEARCH CONFIGURATION",
        "FOREIGN DATA WRAPPER",
        "SERVER",
        "USER MAPPING",
        "FOREIGN TABLE",
        "PUBLICATION",
        "PUBLICATION TABLE",
        "PUBLICATION TABLES IN SCHEMA",
        "EVENT TRIGGER",
        "PROCEDURAL LANGUAGE",
        "CONVERSION",
        "BLOB",
        "SUBSCRIPTION",
    ] {
        assert!(kinds.contains(k), "no {k} entry; kinds: {kinds:?}");
    }
    assert!(!kinds.contains("ROLE"), "globals only when asked");
    assert!(
        !kinds.contains("DATABASE PROPERTIES"),
        "database properties with the globals"
    );
    // Event triggers come after everything else (they would fire on the
    // restore's own statements); a base type's shell before its functions.
    let last_other = entries
        .iter()
        .rposition(|e| !(e.kind == "EVENT TRIGGER" || e.name.starts_with("EVENT TRIGGER ")))
        .unwrap();
    assert!(
        entries[..=last_other]
            .iter()
            .all(|e| e.kind != "EVENT TRIGGER"),
        "{:?}",
        entries[entries.len() - 12..]
            .iter()
            .map(|e| format!("{} {} {:?}", e.kind, e.name, e.section))
            .collect::<Vec<_>>()
    );
    // The default calling a function that reads its table is set after
    // both: no cycle.
    let pos = |kind: &str, name: &str| {
        entries
            .iter()
            .position(|e| e.kind == kind && e.schema == "zoo" && e.name == name)
            .unwrap_or_else(|| panic!("no {kind} zoo.{name}"))
    };
    assert!(pos("TABLE", "tickets") < pos("FUNCTION", "next_ticket()"));
    assert!(pos("FUNCTION", "next_ticket()") < pos("DEFAULT", "tickets"));
    // A column of a table's row type needs that table.
    assert!(pos("TABLE", "animals") < pos("TABLE", "animal_snapshots"));
    assert!(pos("SHELL TYPE", "myint") < pos("FUNCTION", "myint_in(cstring)"));
    assert!(pos("FUNCTION", "myint_in(cstring)") < pos("TYPE", "myint"));
    assert!(pos("TYPE", "myint") < pos("TABLE", "myints"));
    // Extension members are the extension's, not separate objects.
    assert!(!entries
        .iter()
        .any(|e| e.kind == "FUNCTION" && e.name.starts_with("hstore")));
    // Every dependency is an entry of the list, earlier in replay order
    // (the restore's schedule waits only on lower ids).
    let ids: HashSet<u32> = entries.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), entries.len(), "ids are unique");
    for e in &entries {
        for d in &e.depends_on {
            assert!(
                ids.contains(d),
                "entry {} depends on {d}, not in the list",
                e.id
            );
            assert!(*d < e.id, "entry {} depends on the later entry {d}", e.id);
        }
    }

    server.psql("CREATE DATABASE dst");
    replay(&server, "dst", &entries, |_| false);
    assert_same_dump(
        "zoo",
        &pg_dump(&server, "src", &[]),
        &pg_dump(&server, "dst", &[]),
    );
    // And against what pg_dump/pg_restore make of the same database,
    // object by object (`-- Name:` blocks).
    server.psql("CREATE DATABASE by_pg_restore");
    pg_dump_restore(&server, "src", "by_pg_restore");
    let by_pg_restore = pg_dump(&server, "by_pg_restore", &[]);
    let objects = by_pg_restore.matches("-- Name: ").count();
    assert!(objects > 300, "{objects} objects in the zoo's pg_dump");
    assert_same_objects(
        "cbdr's restore of the zoo vs pg_restore's",
        &by_pg_restore,
        &pg_dump(&server, "dst", &[]),
    );

    // What pg_dump --schema-only does not show: sequence values and which
    // materialized views hold data.
    let seqs = "SELECT string_agg(format('%s %s %s', s, v, c), ', ' ORDER BY s) FROM ( \
        SELECT 'ticket' AS s, last_value AS v, is_called AS c FROM zoo.ticket_seq UNION ALL \
        SELECT 'fresh', last_value, is_called FROM zoo.fresh_seq UNION ALL \
        SELECT 'odd', last_value, is_called FROM \"Mixed Case \"\"Schema\"\"\".\"Odd.Seq\" UNION ALL \
        SELECT 'animals_id', last_value, is_called FROM zoo.animals_id_seq) x";
    server.psql_db(
        "src",
        "SELECT nextval('zoo.animals_id_seq'); SELECT nextval('zoo.animals_id_seq');",
    );
    let entries = collect_all(&server, "src", &MetadataOptions::default());
    server.psql("CREATE DATABASE dst2");
    replay(&server, "dst2", &entries, |_| false);
    let src_seqs = server.psql_db("src", seqs);
    assert_eq!(src_seqs, server.psql_db("dst2", seqs));
    assert!(src_seqs.contains("animals_id 1010 t"), "{src_seqs}");
    assert!(src_seqs.contains("odd -3 f"), "{src_seqs}");
    let populated = "SELECT string_agg(relname || '=' || relispopulated, ',' ORDER BY relname) \
                     FROM pg_class WHERE relkind = 'm'";
    assert_eq!(
        server.psql_db("dst2", populated),
        "big_species=false,mv_heap2=true,species_count=true"
    );
}

#[test]
fn collect_runs_inside_the_callers_snapshot_transaction() {
    let server = zoo_server();
    rt().block_on(async {
        let mut conn = connect(&server, "src").await;
        conn.simple_query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .unwrap();
        conn.query_one("SELECT pg_export_snapshot()").await.unwrap();
        conn.simple_query("SET LOCAL search_path = zoo, public; SET LOCAL datestyle = 'SQL, DMY'")
            .await
            .unwrap();
        // Created after the snapshot: not in the backup.
        let mut other = connect(&server, "src").await;
        other
            .simple_query("CREATE TABLE zoo.later (x int)")
            .await
            .unwrap();
        other.close().await;
        let entries = collect(&mut conn, &MetadataOptions::default())
            .await
            .unwrap();
        assert!(entries
            .iter()
            .any(|e| e.kind == "TABLE" && e.name == "animals"));
        assert!(
            !entries.iter().any(|e| e.name == "later"),
            "snapshot respected"
        );
        // Names are qualified whatever the caller's search_path was.
        let t = entries
            .iter()
            .find(|e| e.kind == "TABLE" && e.name == "animals")
            .unwrap();
        assert!(t.statement.contains("zoo.mood"), "{}", t.statement);
        // The caller's settings are back, the transaction still open.
        assert_eq!(conn.transaction_status(), b'T');
        let row = conn
            .query_one(
                "SELECT current_setting('search_path') AS p, current_setting('datestyle') AS d",
            )
            .await
            .unwrap();
        assert_eq!(row.get(0), Some("zoo, public"));
        assert_eq!(row.get(1), Some("SQL, DMY"));
        conn.simple_query("COMMIT").await.unwrap();
        conn.close().await;
    });
}

#[test]
fn include_table_restores_the_table_with_its_parts_and_dependencies() {
    let server = zoo_server();
    let entries = collect_all(&server, "src", &MetadataOptions::default());

    let filter = ObjectFilter {
        include_tables: vec![q("zoo", "animals")],
        ..Default::default()
    };
    let chosen = select(&entries, &filter);
    assert_eq!(
        selected_tables(&entries, &filter),
        vec![q("zoo", "animals")]
    );
    let has = |kind: &str, name: &str| chosen.iter().any(|e| e.kind == kind && e.name == name);
    for (kind, name) in [
        ("TABLE", "animals"),
        ("INDEX", "animals_lower_name_idx"),
        ("CONSTRAINT", "animals_pkey"),
        ("TRIGGER", "animals_touch"),
        ("STATISTICS", "animals_stats"),
        ("FUNCTION", "touch()"),
        ("FUNCTION", "add_one(i integer)"),
        ("TYPE", "mood"),
        ("SEQUENCE", "ticket_seq"),
        ("SEQUENCE SET", "animals_id_seq"),
        ("SCHEMA", "zoo"),
    ] {
        assert!(has(kind, name), "{kind} {name} not chosen");
    }
    for (kind, name) in [
        ("TABLE", "Keepers"),
        ("VIEW", "happy_animals"),
        ("TABLE", "orders"),
    ] {
        assert!(!has(kind, name), "{kind} {name} chosen");
    }
    server.psql("CREATE DATABASE only_animals");
    replay(&server, "only_animals", &chosen, |_| false);
    assert_same_dump(
        "zoo.animals",
        &pg_dump(&server, "src", &["-t", "zoo.animals"]),
        &pg_dump(&server, "only_animals", &["-t", "zoo.animals"]),
    );
    assert_eq!(
        count(
            &server,
            "only_animals",
            "SELECT count(*) FROM pg_class WHERE relname = 'Keepers'"
        ),
        0
    );

    // A table whose foreign keys point at tables left out: restored
    // without them; its policies and row security come along.
    let filter = ObjectFilter {
        include_tables: vec![q("sales", "orders")],
        ..Default::default()
    };
    let chosen = select(&entries, &filter);
    server.psql("CREATE DATABASE only_orders");
    replay(&server, "only_orders", &chosen, |_| false);
    let db = "only_orders";
    assert_eq!(
        count(
            &server,
            db,
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
        ),
        0
    );
    assert_eq!(count(&server, db, "SELECT count(*) FROM pg_policy"), 2);
    assert_eq!(
        count(
            &server,
            db,
            "SELECT count(*) FROM pg_class WHERE relname = 'animals'"
        ),
        0
    );
    assert_eq!(
        server.psql_db(
            db,
            "SELECT relrowsecurity FROM pg_class WHERE relname = 'orders'"
        ),
        "t"
    );
    assert_eq!(
        server.psql_db(db, "SELECT last_value FROM sales.orders_order_id_seq"),
        "1"
    );

    // A partitioned table brings all its partitions, attached.
    let filter = ObjectFilter {
        include_tables: vec![q("zoo", "visits")],
        ..Default::default()
    };
    let chosen = select(&entries, &filter);
    let mut data: Vec<String> = selected_tables(&entries, &filter)
        .iter()
        .map(|t| t.name.clone())
        .collect();
    data.sort();
    assert_eq!(
        data,
        [
            "visits",
            "visits_east",
            "visits_north",
            "visits_north_2023",
            "visits_north_2024",
            "visits_other",
            "visits_south"
        ]
    );
    server.psql("CREATE DATABASE only_visits");
    replay(&server, "only_visits", &chosen, |_| false);
    let partitions = "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_partition_tree('zoo.visits') t \
                      JOIN pg_class c ON c.oid = t.relid WHERE t.level > 0";
    assert_eq!(
        server.psql_db("only_visits", partitions),
        server.psql_db("src", partitions)
    );
    let indexes = "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relname LIKE 'visits%' AND i.indisvalid";
    assert_eq!(
        count(&server, "only_visits", indexes),
        count(&server, "src", indexes)
    );
}

#[test]
fn exclude_filters_leave_out_objects_and_their_dependents() {
    let server = zoo_server();
    let entries = collect_all(&server, "src", &MetadataOptions::default());
    let filter = ObjectFilter {
        exclude_schemas: vec!["sales".into()],
        exclude_tables: vec![q("zoo", "Keepers")],
        ..Default::default()
    };
    let chosen = select(&entries, &filter);
    assert!(!chosen
        .iter()
        .any(|e| e.schema == "sales" || (e.kind == "SCHEMA" && e.name == "sales")));
    assert!(!chosen
        .iter()
        .any(|e| e.owner_table.as_ref().is_some_and(|t| t.name == "Keepers")));
    let tables = selected_tables(&entries, &filter);
    assert!(tables.contains(&q("zoo", "animals")));
    assert!(!tables.contains(&q("zoo", "Keepers")));
    assert!(!tables.iter().any(|t| t.schema == "sales"));
    server.psql("CREATE DATABASE dst");
    replay(&server, "dst", &chosen, |_| false);
    let db = "dst";
    assert_eq!(
        count(
            &server,
            db,
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'sales'"
        ),
        0
    );
    assert_eq!(
        count(
            &server,
            db,
            "SELECT count(*) FROM pg_class WHERE relname = 'Keepers'"
        ),
        0
    );
    // feeding_log stays, without its foreign key to the excluded table.
    assert_eq!(
        server.psql_db(db, "SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'zoo.feeding_log'::regclass"),
        "feeding_animal_fk,feeding_log_pk,food_not_empty"
    );
    // Everything else of zoo is as in the source (pg_dump -T leaves the
    // excluded table's sequence in; an excluded table's sequence is out).
    let args = [
        "-n",
        "zoo",
        "-T",
        "zoo.\"Keepers\"",
        "-T",
        "zoo.\"Keepers_keeper_id_seq\"",
        "-T",
        "zoo.feeding_log",
    ];
    assert_same_objects(
        "zoo without Keepers and feeding_log",
        &pg_dump(&server, "src", &args),
        &pg_dump(&server, db, &args),
    );
}

#[test]
fn redirect_schema_recreates_the_schema_under_another_name() {
    let server = zoo_server();
    let entries = collect_all(&server, "src", &MetadataOptions::default());
    let filter = ObjectFilter {
        include_schemas: vec!["zoo".into()],
        ..Default::default()
    };
    let chosen: Vec<TocEntry> = select(&entries, &filter)
        .iter()
        .map(|e| redirect_schema(e, "zoo", "zoo_copy"))
        .collect();
    assert!(chosen.iter().all(|e| e.schema != "zoo"));
    assert!(chosen
        .iter()
        .any(|e| e.kind == "SCHEMA" && e.name == "zoo_copy"));
    // Into the same database, next to the original.
    replay(&server, "src", &chosen, |_| false);
    let original = pg_dump(&server, "src", &["-n", "zoo"]);
    let copy = pg_dump(&server, "src", &["-n", "zoo_copy"]);
    assert!(!original.contains("zoo_copy"));
    assert_same_objects(
        "zoo_copy as zoo",
        &original,
        &copy.replace("zoo_copy", "zoo"),
    );
    // The copy's sequences were set too, and string literals that merely
    // look like names were left alone.
    assert_eq!(
        server.psql_db("src", "SELECT last_value FROM zoo_copy.ticket_seq"),
        "250"
    );
    assert!(server
        .psql_db("src", "SELECT pg_get_viewdef('zoo_copy.happy_names')")
        .contains("'zoo.literal'"));
}

#[test]
fn globals_restore_into_a_new_cluster() {
    let server = zoo_server();
    let ts_dir = pg_user_dir("zoo-ts");
    server.psql(&format!(
        "ALTER ROLE \"Zoo Reader\" PASSWORD 'secret'; \
         ALTER ROLE zoo_owner SET work_mem = '8MB'; \
         ALTER ROLE zoo_owner SET search_path = zoo, public; \
         COMMENT ON ROLE zoo_owner IS 'owns the zoo'; \
         CREATE TABLESPACE zoo_space OWNER zoo_owner LOCATION '{}'; \
         GRANT CREATE ON TABLESPACE zoo_space TO \"Zoo Reader\";",
        ts_dir.path().display()
    ));
    server.psql_db(
        "src",
        "CREATE TABLE zoo.on_space (x int) TABLESPACE zoo_space",
    );
    let entries = collect_all(
        &server,
        "src",
        &MetadataOptions {
            with_globals: true,
            filter: ObjectFilter::default(),
        },
    );
    check_order(&entries);
    let role = entries
        .iter()
        .find(|e| e.kind == "ROLE" && e.name == "Zoo Reader")
        .unwrap();
    assert!(
        role.statement.contains("SCRAM-SHA-256$"),
        "password verifier carried"
    );
    assert!(!role.statement.contains("secret"));
    assert!(entries.iter().any(|e| e.kind == "ROLE GRANT"));
    let ts = entries.iter().find(|e| e.kind == "TABLESPACE").unwrap();
    assert_eq!(ts.name, "zoo_space");

    // A new cluster: roles and tablespace are created, then the database.
    let target = PgServer::new();
    let new_ts = pg_user_dir("zoo-ts-2");
    let old_location = ts_dir.path().display().to_string();
    let new_location = new_ts.path().display().to_string();
    let moved: Vec<TocEntry> = entries
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if e.kind == "TABLESPACE" {
                e.statement = e.statement.replace(&old_location, &new_location);
            }
            e
        })
        .collect();
    target.psql("CREATE DATABASE src");
    replay(&target, "src", &moved, |_| false);
    assert_same_dump(
        "zoo in a new cluster",
        &pg_dump(&server, "src", &[]),
        &pg_dump(&target, "src", &[]),
    );
    let roles = |s: &PgServer| {
        let out = pg_command(pg_bin("pg_dumpall"))
            .arg("-h")
            .arg(s.socket_dir())
            .args([
                "-p",
                &s.port().to_string(),
                "-U",
                "postgres",
                "--roles-only",
            ])
            .output()
            .expect("pg_dumpall");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        strip_volatile(&String::from_utf8_lossy(&out.stdout))
    };
    assert_same_dump("roles", &roles(&server), &roles(&target));
    // The database's settings, role settings in it and privileges.
    assert!(entries.iter().any(|e| e.kind == "DATABASE PROPERTIES"));
    let props = "SELECT coalesce(r.rolname, '-') || ' ' || s.setconfig::text FROM pg_db_role_setting s \
                 LEFT JOIN pg_roles r ON r.oid = s.setrole \
                 WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 UNION ALL SELECT datacl::text FROM pg_database WHERE datname = current_database() ORDER BY 1";
    let src_props = server.psql_db("src", props);
    assert!(
        src_props.contains("work_mem=8MB")
            && src_props.contains("zoo_owner {statement_timeout=5min}"),
        "{src_props}"
    );
    assert_eq!(src_props, target.psql_db("src", props));
    let spc = "SELECT spcname, pg_get_userbyid(spcowner), spcacl FROM pg_tablespace WHERE spcname = 'zoo_space'";
    assert_eq!(server.psql(spc), target.psql(spc));
    assert_eq!(
        target.psql_db("src", "SELECT spcname FROM pg_class c JOIN pg_tablespace t ON t.oid = c.reltablespace WHERE relname = 'on_space'"),
        "zoo_space"
    );

    // Into the same cluster: existing roles are left as they are, and the
    // tablespace entry is the one to skip.
    server.psql("CREATE DATABASE again");
    replay(&server, "again", &entries, |e| e.kind == "TABLESPACE");
    assert_same_dump(
        "zoo again",
        &pg_dump(&server, "src", &[]),
        &pg_dump(&server, "again", &[]),
    );
}

#[test]
fn list_tables_of_the_zoo() {
    let server = zoo_server();
    server.psql_db(
        "src",
        "INSERT INTO zoo.scratch SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g",
    );
    let (whole, leaves, filtered) = rt().block_on(async {
        let mut conn = connect(&server, "src").await;
        let whole = list_tables(&mut conn, &ObjectFilter::default(), false)
            .await
            .unwrap();
        let leaves = list_tables(&mut conn, &ObjectFilter::default(), true)
            .await
            .unwrap();
        let filtered = list_tables(
            &mut conn,
            &ObjectFilter {
                include_schemas: vec!["zoo".into()],
                exclude_tables: vec![q("zoo", "visits_south")],
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
        conn.close().await;
        (whole, leaves, filtered)
    });
    let names = |t: &[cbdr::logical::metadata::TableInfo]| -> BTreeSet<String> {
        t.iter()
            .map(|t| format!("{}.{}", t.name.schema, t.name.name))
            .collect()
    };
    assert_eq!(whole[0].name, q("zoo", "scratch"), "biggest first");
    let w = names(&whole);
    assert!(
        w.contains("zoo.visits") && !w.contains("zoo.visits_north_2023"),
        "{w:?}"
    );
    assert!(w.contains("zoo.hashed") && w.contains("sales.orders"));
    assert!(
        !w.contains("zoo.happy_animals") && !w.contains("zoo.species_count"),
        "no views"
    );
    let visits = whole.iter().find(|t| t.name.name == "visits").unwrap();
    assert!(visits.is_partition_parent && visits.relkind == 'p');
    let l = names(&leaves);
    assert!(!l.contains("zoo.visits") && !l.contains("zoo.visits_north"));
    assert!(l.contains("zoo.visits_north_2023") && l.contains("zoo.visits_east"));
    let leaf = leaves
        .iter()
        .find(|t| t.name.name == "visits_east")
        .unwrap();
    assert!(leaf.is_leaf_partition);
    assert_eq!(
        leaf.columns,
        ["note", "visit_id", "region", "visited_on", "animal_id"]
    );
    let animals = whole.iter().find(|t| t.name.name == "animals").unwrap();
    assert!(
        !animals.columns.contains(&"weight_lb".to_string()),
        "generated column left out"
    );
    assert!(animals.columns.contains(&"id".to_string()));
    let f = names(&filtered);
    assert!(!f.iter().any(|n| n.starts_with("sales.")));
    assert!(!f.contains("zoo.visits") && !f.contains("zoo.visits_south"));
    assert!(
        f.contains("zoo.visits_north")
            && f.contains("zoo.visits_east")
            && f.contains("zoo.visits_other")
    );
}
