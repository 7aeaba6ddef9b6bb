//! Logical backup and restore: `cbdr gpbackup --jobs 2` / `cbdr gprestore
//! --jobs 2` (lz4 + encryption, filesystem repository) against `pg_dump -Fd
//! -j 2` / `pg_restore -j 2` (pg_dump's default gzip), on one PostgreSQL 15
//! database of `pgbench -i -s SCALE` plus a table of random text and
//! numbers (less compressible), as ratios from one run.
//!
//! ```text
//! cargo bench --bench logical                       # scale 70 + 400 MB of random rows (> 1 GB)
//! CBDR_BENCH_SCALE=5 CBDR_BENCH_RANDOM_MB=50 cargo bench --bench logical   # a quick run
//! ```
//!
//! Environment: `CBDR_BENCH_SCALE` (default 70), `CBDR_BENCH_RANDOM_MB`
//! (default 400), `CBDR_BENCH_ROUNDS` (default 2: the restores alternate,
//! cbdr then pg_restore, and the best of each counts; the first restore on
//! the fresh server also creates the WAL files later ones recycle),
//! `CBDR_BENCH_FSYNC` (default `on`, PostgreSQL's default, which the test
//! fixture turns off), `CBDR_BENCH_WAL_LEVEL` (default `replica`; `minimal`
//! lets both tools skip WAL where PostgreSQL allows it: cbdr loads each
//! table in the transaction that truncates it, pg_restore -j does not),
//! `CBDR_BENCH_CBDR` (the cbdr binary; default the one cargo built).
//!
//! Before each timed command: CHECKPOINT and sync(2). The restored
//! databases are checked by row counts. Output: a table on stdout and
//! `bench-logical.json` beside the build's profile directories (`target/`). Skipped (with a message) when PostgreSQL
//! 15 is not installed.

#[path = "common.rs"]
mod bench_common;
#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use bench_common::{copy_cbdr, env_or, run};
use common::pg::{pg_bin, pg_command, PgServer};
use common::{CbdrEnv, Key};
use serde_json::json;

const KEY_HEX: &str = "6a3f0c9e2b7d41f8a5c3e1d9b7f02468ace13579bdf02468ace13579bdf02468";
const MB: f64 = 1_000_000.0;
const GOAL: f64 = 1.5;

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                total += du(&e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

struct Bench {
    server: PgServer,
    env: CbdrEnv,
    cbdr: PathBuf,
}

impl Bench {
    fn settle(&self) {
        self.server.psql("CHECKPOINT");
        unsafe { libc::sync() };
    }

    fn pg(&self, program: &str) -> Command {
        let mut c = pg_command(pg_bin(program));
        c.args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.server.port().to_string());
        c
    }

    fn cbdr(&self, args: &[&str]) -> Command {
        self.env.on(&self.server).binary(&self.cbdr).command(args)
    }

    fn timed(&self, what: &str, mut cmd: Command) -> (f64, String) {
        self.settle();
        let t = Instant::now();
        let out = run(&mut cmd, what);
        let secs = t.elapsed().as_secs_f64();
        println!("  {what:<44} {secs:>8.2} s");
        (secs, out)
    }

    fn counts(&self, db: &str) -> String {
        self.server.psql_db(
            db,
            "SELECT (SELECT count(*) FROM pgbench_accounts) || '/' || \
                    (SELECT count(*) FROM pgbench_branches) || '/' || \
                    (SELECT count(*) FROM rnd) || '/' || \
                    (SELECT count(*) FROM pg_indexes WHERE schemaname = 'public')",
        )
    }
}

fn main() {
    if !pg_bin("initdb").exists() {
        println!(
            "logical bench skipped: PostgreSQL 15 is not installed ({} not found; set $PG_BIN)",
            pg_bin("initdb").display()
        );
        return;
    }
    let scale: u32 = env_or("CBDR_BENCH_SCALE", "70")
        .parse()
        .expect("CBDR_BENCH_SCALE");
    let random_mb: u64 = env_or("CBDR_BENCH_RANDOM_MB", "400")
        .parse()
        .expect("CBDR_BENCH_RANDOM_MB");
    let wal_level = env_or("CBDR_BENCH_WAL_LEVEL", "replica");
    let fsync = env_or("CBDR_BENCH_FSYNC", "on");
    let source = PathBuf::from(env_or("CBDR_BENCH_CBDR", env!("CARGO_BIN_EXE_cbdr")));
    let env = CbdrEnv::builder("bench-logical")
        .key(Key::Raw(KEY_HEX.into()))
        .wal_segment_size(None)
        .init(false)
        .build();
    let cbdr = copy_cbdr(&source, env.dir.path());
    common::init_repo(&cbdr.to_string_lossy(), &env.config);

    let mut builder = PgServer::builder()
        .conf("shared_buffers = 512MB")
        .conf("max_wal_size = 8GB")
        .conf("checkpoint_timeout = 30min")
        .conf("maintenance_work_mem = 64MB")
        // PostgreSQL's default, which the test fixture turns off: a restore
        // runs on a server that syncs its WAL (CBDR_BENCH_FSYNC=off to
        // compare without).
        .conf(format!("fsync = {fsync}"))
        .conf(format!("wal_level = {wal_level}"));
    if wal_level == "minimal" {
        builder = builder
            .conf("max_wal_senders = 0")
            .conf("archive_mode = off");
    }
    let server = builder.start();
    let b = Bench { server, env, cbdr };
    println!(
        "logical bench: pgbench scale {scale} + {random_mb} MB random rows, wal_level = {wal_level}, load average {}",
        fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    let t = Instant::now();
    b.server.psql("CREATE DATABASE bench");
    run(
        b.pg("pgbench")
            .args(["-i", "-q", "-s", &scale.to_string(), "bench"]),
        "pgbench -i",
    );
    // Random text and numbers: base64 of 128 random-looking bytes (md5s),
    // which lz4 barely compresses, and random numerics.
    let rows = random_mb * MB as u64 / 230;
    let bytes = (0..8)
        .map(|_| "md5(random()::text)")
        .collect::<Vec<_>>()
        .join(" || ");
    b.server.psql_db(
        "bench",
        &format!(
            "CREATE TABLE rnd (id bigint PRIMARY KEY, t text, n numeric, f float8, i int);
             INSERT INTO rnd SELECT g, encode(decode({bytes}, 'hex'), 'base64'),
                    (random() * 1e9)::numeric(18, 4), random(), (random() * 2e9)::int
               FROM generate_series(1, {rows}) g;"
        ),
    );
    b.server.psql_db("bench", "VACUUM ANALYZE");
    let db_bytes: u64 = b
        .server
        .psql_db("bench", "SELECT pg_database_size('bench')")
        .parse()
        .unwrap();
    println!(
        "  database {:.0} MB, loaded in {:.0} s",
        db_bytes as f64 / MB,
        t.elapsed().as_secs_f64()
    );
    let want = b.counts("bench");

    // Backups.
    let (cbdr_backup, out) = b.timed(
        "cbdr gpbackup --jobs 2",
        b.cbdr(&["gpbackup", "--dbname", "bench", "--jobs", "2"]),
    );
    let ts = out
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("Backup Timestamp = "))
        .expect("timestamp")
        .trim()
        .to_string();
    let dump_dir = b.env.path("dump");
    let mut dump = b.pg("pg_dump");
    dump.args(["-Fd", "-j", "2", "-f"])
        .arg(&dump_dir)
        .arg("bench");
    let (pg_dump_secs, _) = b.timed("pg_dump -Fd -j 2", dump);
    let cbdr_stored = du(&b.env.path("repo"));
    let dump_stored = du(&dump_dir);

    // Restores, alternating, `CBDR_BENCH_ROUNDS` rounds (default 2), the
    // best of each: the first restore on a fresh server also creates the
    // WAL segment files that later ones recycle, which would otherwise
    // favour whichever tool runs second.
    let rounds: usize = env_or("CBDR_BENCH_ROUNDS", "2")
        .parse::<usize>()
        .expect("CBDR_BENCH_ROUNDS")
        .max(1);
    let mut cbdr_runs = Vec::new();
    let mut pg_runs = Vec::new();
    for round in 0..rounds {
        if round > 0 {
            b.server.psql("DROP DATABASE r_cbdr");
            b.server.psql("DROP DATABASE r_pg");
        }
        let (secs, _) = b.timed(
            "cbdr gprestore --jobs 2 (--create-db)",
            b.cbdr(&[
                "gprestore",
                "--timestamp",
                &ts,
                "--create-db",
                "--redirect-db",
                "r_cbdr",
                "--jobs",
                "2",
            ]),
        );
        cbdr_runs.push(secs);
        b.server.psql("CREATE DATABASE r_pg");
        let mut restore = b.pg("pg_restore");
        restore.args(["-j", "2", "-d", "r_pg"]).arg(&dump_dir);
        let (secs, _) = b.timed("pg_restore -j 2", restore);
        pg_runs.push(secs);
        assert_eq!(b.counts("r_cbdr"), want, "cbdr's restore");
        assert_eq!(b.counts("r_pg"), want, "pg_restore's restore");
    }
    let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    let cbdr_restore = best(&cbdr_runs);
    let pg_restore_secs = best(&pg_runs);

    let backup_ratio = pg_dump_secs / cbdr_backup;
    let restore_ratio = pg_restore_secs / cbdr_restore;
    println!();
    println!(
        "| {:<10} | {:>12} | {:>12} | {:>20} | {:>6} |",
        "", "cbdr", "pg_dump/rest", "speed-up (pg/cbdr)", "goal"
    );
    println!(
        "| {:<10} | {:>10.2} s | {:>10.2} s | {:>19.2}x | {:>5.1}x |",
        "backup", cbdr_backup, pg_dump_secs, backup_ratio, GOAL
    );
    println!(
        "| {:<10} | {:>10.2} s | {:>10.2} s | {:>19.2}x | {:>5.1}x |",
        "restore", cbdr_restore, pg_restore_secs, restore_ratio, GOAL
    );
    let rounded = |v: &[f64]| {
        v.iter()
            .map(|s| (s * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    };
    println!(
        "  restore runs (best counts): cbdr {:?} s, pg_restore {:?} s",
        rounded(&cbdr_runs),
        rounded(&pg_runs)
    );
    println!(
        "  stored: cbdr {:.0} MB (lz4 + encryption), pg_dump {:.0} MB (gzip); database {:.0} MB",
        cbdr_stored as f64 / MB,
        dump_stored as f64 / MB,
        db_bytes as f64 / MB
    );
    for (what, r) in [("backup", backup_ratio), ("restore", restore_ratio)] {
        if r < GOAL {
            println!("  goal missed: {what} is {r:.2}x faster, the goal is {GOAL}x");
        }
    }
    let report = json!({
        "scale": scale,
        "random_mb": random_mb,
        "wal_level": wal_level,
        "database_bytes": db_bytes,
        "backup": {"cbdr_secs": cbdr_backup, "pg_dump_secs": pg_dump_secs, "speedup": backup_ratio},
        "restore": {"cbdr_secs": cbdr_restore, "pg_restore_secs": pg_restore_secs, "speedup": restore_ratio,
                    "cbdr_runs": cbdr_runs, "pg_restore_runs": pg_runs},
        "fsync": fsync,
        "stored_bytes": {"cbdr": cbdr_stored, "pg_dump": dump_stored},
        "goal_speedup": GOAL,
        "load_average_end": fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    let out = bench_common::report_path("bench-logical.json");
    fs::write(&out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("  written: {}", out.display());
}
