//! `cbdr verify` against `cbdr restore` of the same backup: wall time,
//! throughput of plain bytes, CPU and the peak RSS of the process tree.
//! verify reads what restore reads (every part decoded, every file hashed
//! against the manifest) and writes nothing, so it should run at least at
//! restore's speed, in about the same bounded memory whatever the size.
//!
//! ```text
//! cargo bench --bench verify                           # pgbench scale 20 (~300 MB)
//! CBDR_BENCH_SCALE=100 cargo bench --bench verify      # ~1.5 GB
//! ```
//!
//! One PostgreSQL 15 server archiving into a filesystem repository (1 MiB
//! WAL segments, a raw key), `pgbench -i -s SCALE`, one `backup-push`
//! (compress_on as configured: `CBDR_BENCH_COMPRESS_ON`, default `auto`).
//! Then, each after a CHECKPOINT and `sync`: `restore --backup NAME` into
//! a new directory, `verify --wal --wal-since all` (which stores the
//! watermark), `verify --backup NAME` (which then re-reads no WAL: its
//! time is the backup's alone).
//! Output: a table on stdout and `target/bench-verify.json`.

#[path = "common.rs"]
mod bench_common;
#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bench_common::{copy_cbdr, env_or, run, timed, Timed};
use common::pg::{pg_bin, pg_command};
use common::{CbdrEnv, Key};
use serde_json::json;

const KEY_HEX: &str = "7b3f0c9e2b7d41f8a5c3e1d9b7f02468ace13579bdf02468ace13579bdf0246a";
const MB: f64 = 1_000_000.0;

fn main() {
    if !pg_bin("initdb").exists() {
        println!("verify bench skipped: PostgreSQL 15 is not installed");
        return;
    }
    let scale = env_or("CBDR_BENCH_SCALE", "20");
    let compress_on = env_or("CBDR_BENCH_COMPRESS_ON", "auto");
    let source = PathBuf::from(env_or("CBDR_BENCH_CBDR", env!("CARGO_BIN_EXE_cbdr")));
    let env = CbdrEnv::builder("bench-verify")
        .key(Key::Raw(KEY_HEX.into()))
        .extra_toml(format!("[compression]\ncompress_on = \"{compress_on}\"\n"))
        .build();
    let cbdr = copy_cbdr(&source, env.dir.path());
    let server = env
        .archiving_server()
        .conf("max_wal_size = 4GB")
        .conf("checkpoint_timeout = 30min")
        .start();
    let cmd = |args: &[&str]| -> Command { env.on(&server).binary(&cbdr).command(args) };
    let settle = || {
        server.psql("CHECKPOINT");
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
    };
    println!(
        "verify bench: pgbench scale {scale}, compress_on {compress_on}, load average {}",
        bench_common::loadavg()
    );
    run(
        pg_command(pg_bin("pgbench"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(server.port().to_string())
            .args(["-i", "-q", "-s", &scale, "postgres"]),
        "pgbench -i",
    );
    settle();
    run(&mut cmd(&["backup-push"]), "backup-push");
    server.archive_everything();
    let backups = env.backups_of(-1);
    let name = backups[0]["name"].as_str().unwrap().to_string();
    let plain = backups[0]["archives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["plain_bytes"].as_u64().unwrap())
        .sum::<u64>();
    let stored = backups[0]["archives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["stored_bytes"].as_u64().unwrap())
        .sum::<u64>();
    println!(
        "  backup {name}: {:.0} MB plain, {:.0} MB stored",
        plain as f64 / MB,
        stored as f64 / MB
    );
    let target = env.path("restored");
    let logs = env.dir.path();
    let sample = Some(Duration::from_millis(20));
    let mut rows: Vec<(&str, Timed, u64)> = Vec::new();
    settle();
    rows.push((
        "restore --backup NAME",
        timed(
            cmd(&[
                "restore",
                "--backup",
                &name,
                "--target-dir",
                target.to_str().unwrap(),
            ]),
            logs,
            "restore",
            sample,
        ),
        plain,
    ));
    let wal_objects = std::fs::read_dir(env.repo().join("seg-1/wal/0000000100000000"))
        .map(|d| d.count())
        .unwrap_or(0) as u64;
    settle();
    rows.push((
        "verify --wal --wal-since all",
        timed(
            cmd(&["verify", "--wal", "--wal-since", "all"]),
            logs,
            "verify-wal",
            sample,
        ),
        wal_objects << 20,
    ));
    settle();
    rows.push((
        "verify --backup NAME",
        timed(cmd(&["verify", "--backup", &name]), logs, "verify", sample),
        plain,
    ));
    println!(
        "  {:<30} {:>8} {:>9} {:>8} {:>10}",
        "", "s", "MB/s", "CPU s", "peak RSS"
    );
    let mut out = Vec::new();
    for (what, t, bytes) in &rows {
        assert!(t.success, "{what}: {}\n{}", t.status, t.output);
        println!(
            "  {what:<30} {:>8.2} {:>9.0} {:>8.2} {:>7.0} MB",
            t.seconds,
            *bytes as f64 / MB / t.seconds,
            t.cpu_seconds,
            t.tree_rss as f64 / MB
        );
        out.push(json!({
            "what": what,
            "seconds": t.seconds,
            "plain_bytes": bytes,
            "mb_per_s": *bytes as f64 / MB / t.seconds,
            "cpu_seconds": t.cpu_seconds,
            "max_rss": t.max_rss,
            "tree_rss": t.tree_rss,
        }));
    }
    let ratio = rows[2].1.seconds / rows[0].1.seconds;
    println!("  verify ÷ restore: {ratio:.2} (wall time of the same backup)");
    let report = json!({
        "scale": scale,
        "compress_on": compress_on,
        "backup_plain_bytes": plain,
        "backup_stored_bytes": stored,
        "wal_objects": wal_objects,
        "rows": out,
        "verify_over_restore": ratio,
        "load_average_after": bench_common::loadavg(),
    });
    let path = bench_common::report_path("bench-verify.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("  report: {}", path.display());
}
