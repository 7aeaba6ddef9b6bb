//! Delta base backups against full ones, on one PostgreSQL 15 server per
//! data set and the filesystem repository (lz4 + encryption): after a full
//! backup, 5% of the pages of every table are updated (one row in every
//! 20th page: spread, not one table), then a delta is taken, and a full
//! backup of the same state (block format and tar format). Then each is
//! restored. Same-run ratios, not timed assertions:
//!
//! * stored bytes of the delta / stored bytes of the full (goal ≤ 0.10);
//! * delta backup-push time / full backup-push time (the server still sends
//!   every byte, and every byte is hashed);
//! * restore of the delta chain / restore of a full backup of the same
//!   state (goal ≤ 1.0);
//! * peak RSS of the delta backup and of its restore (goal ≤ 200 MB).
//!
//! ```text
//! CBDR_BENCH_SCALE=20 cargo bench --bench delta     # ~300 MB per data set
//! CBDR_BENCH_KINDS=pgbench CBDR_BENCH_ROUNDS=5 ...     # one data set, restores 5 times each
//! CBDR_BENCH_REPO=garage ...                            # the repository on Garage (S3)
//! ```
//! With `CBDR_BENCH_REPO=garage` the repository (and the WAL archive) is a
//! bucket of the test Garage server (`tests/common/garage.rs`), which
//! shares the cores with cbdr: its CPU seconds during each command are
//! reported beside cbdr's.
//! Each restore runs `CBDR_BENCH_ROUNDS` times (default 3), in turns; the
//! median wall time and the median CPU time are kept.
//! Data sets: `pgbench` (`pgbench -i -s SCALE`, lz4 ~9×) and `random`
//! (one table of random bytes and numbers of the same size, lz4 ~1.5×).
//! Loaded with `wal_level = minimal`, then `VACUUM (FREEZE)`, `CHECKPOINT`
//! and a restart with archiving (`cbdr wal-push`). Before every timed
//! command: `CHECKPOINT` and sync(2). Output: a table on stdout and JSON in
//! `target/bench-delta.json`.

#[path = "common.rs"]
mod bench_common;
#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bench_common::*;
use common::pg::{pg_command, pg_user_dir, PgServer};
use serde_json::json;

const KEY_HEX: &str = "5a5b5c5d5e5f606162636465666768696a6b6c6d6e6f70717273747576777879";
const MB: f64 = 1_000_000.0;

struct Run {
    what: String,
    seconds: f64,
    /// User + system CPU seconds (less disturbed by other sessions on
    /// the shared cores than the wall time).
    cpu_seconds: f64,
    max_rss: u64,
    tree_rss: u64,
    stored: u64,
    /// Garage's CPU seconds during the command (a Garage repository).
    garage_cpu: Option<f64>,
}

struct Data {
    kind: &'static str,
    dir: tempfile::TempDir,
    cbdr: PathBuf,
    pg: PgServer,
    config: PathBuf,
}

impl Data {
    fn start(kind: &'static str, scale: usize) -> Data {
        let dir = pg_user_dir(&format!("deltabench-{kind}"));
        let cbdr = copy_cbdr(
            &PathBuf::from(env_or("CBDR_BENCH_CBDR", env!("CARGO_BIN_EXE_cbdr"))),
            dir.path(),
        );
        let pg = PgServer::builder()
            .conf("wal_level = minimal")
            .conf("max_wal_senders = 0")
            .conf("archive_mode = off")
            .conf("shared_buffers = '256MB'")
            .conf("max_wal_size = '4GB'")
            .conf("checkpoint_timeout = '1d'")
            .conf("autovacuum = off")
            .start();
        match kind {
            "pgbench" => {
                let mut cmd = pg_command(common::pg::pg_bin("pgbench"));
                cmd.args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
                    .arg(pg.port().to_string())
                    .args(["-i", "-q", "-s", &scale.to_string(), "postgres"]);
                run(&mut cmd, "pgbench -i");
            }
            _ => {
                // About the size of pgbench's: ~15 MB per scale unit.
                let rows = scale as u64 * 15_000_000 / 140;
                pg.psql(&format!(
                    "create table bench_random (id bigint primary key, amount numeric, ratio float8, data bytea); \
                     insert into bench_random select g, round((random() * 1e9)::numeric, 2), random(), \
                     decode(md5(random()::text) || md5(random()::text) || md5(random()::text), 'hex') \
                     || convert_to(repeat('x', (random() * 40)::int), 'UTF8') \
                     from generate_series(1, {rows}) g"
                ));
            }
        }
        pg.psql("vacuum (freeze, analyze)");
        pg.psql("checkpoint");
        let key = dir.path().join("key");
        fs::write(&key, format!("{KEY_HEX}\n")).unwrap();
        let repo = dir.path().join("repo");
        let config = dir.path().join("cbdr.toml");
        let storage = if on_garage() {
            common::garage::bucket(&format!("deltabench-{kind}")).config_toml("")
        } else {
            format!("[storage]\ntype = \"fs\"\npath = \"{}\"\n", repo.display())
        };
        fs::write(
            &config,
            format!(
                "{storage}\n[compression]\nmethod = \"lz4\"\n\n\
                 [encryption]\nkey_file = \"{}\"\n\n[backup]\ndelta_max_steps = 6\n",
                key.display()
            ),
        )
        .unwrap();
        common::pg::chown_to_pg(dir.path());
        let mut data = Data {
            kind,
            dir,
            cbdr,
            pg,
            config,
        };
        data.cbdr_ok(&["repo-init"]);
        data.pg.stop();
        data.pg.append_conf(&format!(
            "wal_level = replica\nmax_wal_senders = 10\narchive_mode = on\narchive_command = '{} --config {} wal-push %p'",
            data.cbdr.display(),
            data.config.display()
        ));
        data.pg.start();
        data
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = pg_command(&self.cbdr);
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.pg.port().to_string())
            .env("PGUSER", "postgres");
        cmd
    }

    fn cbdr_ok(&self, args: &[&str]) -> String {
        run(&mut self.cmd(args), &format!("cbdr {args:?}"))
    }

    fn quiesce(&self) {
        self.pg.psql("checkpoint");
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
    }

    fn timed(&self, tag: &str, args: &[&str]) -> (bench_common::Timed, Option<f64>) {
        self.quiesce();
        timed_with_garage(
            self.cmd(args),
            self.dir.path(),
            &format!("{}-{tag}", self.kind),
        )
    }

    /// The newest backup's name and stored bytes.
    fn newest(&self) -> (String, u64, u64) {
        let v: serde_json::Value =
            serde_json::from_str(&self.cbdr_ok(&["list", "--json", "--content-id", "-1"])).unwrap();
        let b = v["segments"][0]["backups"]
            .as_array()
            .unwrap()
            .iter()
            .max_by_key(|b| b["stop_time"].as_str().unwrap().to_string())
            .unwrap()
            .clone();
        let sum = |k: &str| -> u64 {
            b["archives"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a[k].as_u64().unwrap())
                .sum()
        };
        (
            b["name"].as_str().unwrap().to_string(),
            sum("stored_bytes"),
            sum("plain_bytes"),
        )
    }

    fn backup(&self, tag: &str, args: &[&str]) -> (Run, String) {
        let mut all = vec!["backup-push"];
        all.extend_from_slice(args);
        let (t, garage_cpu) = self.timed(tag, &all);
        let (name, stored, _) = self.newest();
        (
            Run {
                what: tag.into(),
                seconds: t.seconds,
                cpu_seconds: t.cpu_seconds,
                max_rss: t.max_rss,
                tree_rss: t.tree_rss,
                stored,
                garage_cpu,
            },
            name,
        )
    }

    fn restore(&self, tag: &str, backup: &str) -> Run {
        let dir = self.dir.path().join(tag);
        let (t, garage_cpu) = self.timed(
            tag,
            &[
                "restore",
                "--backup",
                backup,
                "--immediate",
                "--target-dir",
                dir.to_str().unwrap(),
            ],
        );
        let _ = fs::remove_dir_all(&dir);
        Run {
            what: tag.into(),
            seconds: t.seconds,
            cpu_seconds: t.cpu_seconds,
            max_rss: t.max_rss,
            tree_rss: t.tree_rss,
            stored: 0,
            garage_cpu,
        }
    }

    /// Updates one row in every 20th page of every table of the data set.
    fn update_five_percent(&self) {
        for table in match self.kind {
            "pgbench" => vec!["pgbench_accounts", "pgbench_tellers", "pgbench_branches"],
            _ => vec!["bench_random"],
        } {
            let column = match table {
                "pgbench_accounts" => "abalance",
                "pgbench_tellers" => "tbalance",
                "pgbench_branches" => "bbalance",
                _ => "ratio",
            };
            self.pg.psql(&format!(
                "update {table} set {column} = {column} + 1 where ctid = any(array(\
                 select format('(%s,1)', p)::tid from generate_series(0, \
                 (pg_relation_size('{table}') / 8192)::int - 1, 20) p))"
            ));
        }
        self.pg.psql("checkpoint");
    }
}

fn main() {
    let scale = env_num("CBDR_BENCH_SCALE", "20");
    let kinds = env_or("CBDR_BENCH_KINDS", "pgbench,random");
    let rounds = env_num("CBDR_BENCH_ROUNDS", "3").max(1);
    println!(
        "delta bench: scale {scale}, repository {}, {rounds} restore rounds, load average at start {} ({} CPUs)",
        env_or("CBDR_BENCH_REPO", "fs"),
        loadavg(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut report = Vec::new();
    for kind in kinds.split(',') {
        let kind: &'static str = if kind == "pgbench" {
            "pgbench"
        } else {
            "random"
        };
        let d = Data::start(kind, scale);
        let (full, _) = d.backup("full (blocks)", &["--full"]);
        d.update_five_percent();
        let (delta, delta_name) = d.backup("delta", &["--delta"]);
        let (_, _, plain) = d.newest();
        let (full2, full2_name) = d.backup("full (blocks), same state", &["--full"]);
        // Today's tar format: a config without deltas.
        let (tar, tar_name) = d.backup_tar();
        // Each restore `rounds` times, in turns, the median kept (wall
        // and CPU time each; RSS: the largest).
        let jobs = [
            ("restore delta chain", &delta_name),
            ("restore full (blocks)", &full2_name),
            ("restore full (tar)", &tar_name),
        ];
        let mut all: Vec<Vec<Run>> = jobs.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            for k in 0..jobs.len() {
                let j = (k + round) % jobs.len();
                all[j].push(d.restore(jobs[j].0, jobs[j].1));
            }
        }
        let mut medians = all.into_iter().map(median_run);
        let r_delta = medians.next().unwrap();
        let r_full = medians.next().unwrap();
        let r_tar = medians.next().unwrap();
        println!("\n== {kind}: {:.0} MB of files ==", plain as f64 / MB);
        println!(
            "  {:<28} {:>8} {:>8} {:>10} {:>12} {:>12} {:>10}",
            "", "seconds", "CPU s", "stored MB", "max RSS MB", "tree RSS MB", "Garage s"
        );
        for r in [&full, &delta, &full2, &tar, &r_delta, &r_full, &r_tar] {
            println!(
                "  {:<28} {:>8.2} {:>8.2} {:>10.1} {:>12.1} {:>12.1} {:>10}",
                r.what,
                r.seconds,
                r.cpu_seconds,
                r.stored as f64 / MB,
                r.max_rss as f64 / MB,
                r.tree_rss as f64 / MB,
                fmt_opt(r.garage_cpu, 2)
            );
        }
        let stored_ratio = delta.stored as f64 / full.stored as f64;
        let push_ratio = delta.seconds / full.seconds;
        let push_ratio_tar = delta.seconds / tar.seconds;
        let restore_ratio = r_delta.seconds / r_full.seconds;
        let restore_ratio_tar = r_delta.seconds / r_tar.seconds;
        println!("  stored delta / full: {stored_ratio:.3} (goal <= 0.10)");
        println!("  backup-push delta / full: {push_ratio:.2} (blocks), {push_ratio_tar:.2} (tar)");
        let restore_cpu_ratio_tar = r_delta.cpu_seconds / r_tar.cpu_seconds;
        println!(
            "  restore delta chain / full of the same state: {restore_ratio:.2} (blocks), {restore_ratio_tar:.2} (tar) (goal <= 1.0); CPU time / tar's: {restore_cpu_ratio_tar:.2}"
        );
        let runs: Vec<serde_json::Value> = [&full, &delta, &full2, &tar, &r_delta, &r_full, &r_tar]
            .iter()
            .map(|r| {
                json!({
                    "what": r.what, "seconds": r.seconds, "cpu_seconds": r.cpu_seconds,
                    "stored_bytes": r.stored, "garage_cpu_seconds": r.garage_cpu,
                    "max_rss": r.max_rss, "tree_rss": r.tree_rss,
                })
            })
            .collect();
        report.push(json!({
            "kind": kind,
            "plain_bytes": plain,
            "runs": runs,
            "stored_ratio": stored_ratio,
            "push_ratio_blocks": push_ratio,
            "push_ratio_tar": push_ratio_tar,
            "restore_ratio_blocks": restore_ratio,
            "restore_ratio_tar": restore_ratio_tar,
            "restore_cpu_ratio_tar": restore_cpu_ratio_tar,
            "restore_rounds": rounds,
        }));
    }
    let path = report_path("bench-delta.json");
    fs::write(
        &path,
        serde_json::to_string_pretty(&json!({
            "scale": scale,
            "repository": env_or("CBDR_BENCH_REPO", "fs"),
            "load_average_at_end": loadavg(),
            "data_sets": report,
        }))
        .unwrap(),
    )
    .unwrap();
    println!("\nreport: {}", path.display());
}

/// The median of runs of one command (wall and CPU time each), with the
/// largest RSS.
fn median_run(mut runs: Vec<Run>) -> Run {
    let mid = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let mut wall: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
    let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu_seconds).collect();
    let mut garage: Vec<f64> = runs.iter().filter_map(|r| r.garage_cpu).collect();
    let max_rss = runs.iter().map(|r| r.max_rss).max().unwrap_or(0);
    let tree_rss = runs.iter().map(|r| r.tree_rss).max().unwrap_or(0);
    let mut r = runs.swap_remove(0);
    r.seconds = mid(&mut wall);
    r.cpu_seconds = mid(&mut cpu);
    r.garage_cpu = (!garage.is_empty()).then(|| mid(&mut garage));
    r.max_rss = max_rss;
    r.tree_rss = tree_rss;
    r
}

impl Data {
    /// A full backup of today's tar format (`delta_max_steps = 0`).
    fn backup_tar(&self) -> (Run, String) {
        let text = fs::read_to_string(&self.config)
            .unwrap()
            .replace("delta_max_steps = 6", "delta_max_steps = 0");
        let tar_config = self.dir.path().join("cbdr-tar.toml");
        fs::write(&tar_config, text).unwrap();
        common::pg::chown_to_pg(&tar_config);
        let mut cmd = pg_command(&self.cbdr);
        cmd.arg("--config")
            .arg(&tar_config)
            .arg("backup-push")
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", self.pg.port().to_string())
            .env("PGUSER", "postgres");
        self.quiesce();
        let (t, garage_cpu) =
            timed_with_garage(cmd, self.dir.path(), &format!("{}-tar", self.kind));
        let (name, stored, _) = self.newest();
        (
            Run {
                what: "full (tar), same state".into(),
                seconds: t.seconds,
                cpu_seconds: t.cpu_seconds,
                max_rss: t.max_rss,
                tree_rss: t.tree_rss,
                stored,
                garage_cpu,
            },
            name,
        )
    }
}

/// True when the bench's repository is on Garage (`CBDR_BENCH_REPO=garage`).
fn on_garage() -> bool {
    env_or("CBDR_BENCH_REPO", "fs") == "garage"
}

/// Runs `cmd` timed (it must succeed), with Garage's CPU seconds during it
/// when the repository is on Garage.
fn timed_with_garage(
    cmd: Command,
    dir: &std::path::Path,
    tag: &str,
) -> (bench_common::Timed, Option<f64>) {
    let garage = on_garage().then(|| common::garage::garage().pid());
    let before = garage.and_then(process_cpu);
    let t = timed(cmd, dir, tag, Some(Duration::from_millis(50)));
    assert!(t.success, "{tag}: {}\n{}", t.status, t.output);
    let cpu = before.zip(garage.and_then(process_cpu)).map(|(a, b)| b - a);
    (t, cpu)
}
