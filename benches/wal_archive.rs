//! WAL archiving throughput: cbdr `wal-push` against `cp` and pgBackRest
//! `archive-push` (sync, and async with process-max 2) on one PostgreSQL 15
//! server, with the same accumulated WAL for every contender.
//!
//! ```text
//! cargo bench --bench wal_archive                          # 1 GiB of WAL per data kind
//! CBDR_BENCH_WAL_MB=256 cargo bench --bench wal_archive    # a quick run
//! ```
//!
//! `cargo bench` builds the `cbdr` binary with the bench profile (= release)
//! and hands its path to this bench (`CARGO_BIN_EXE_cbdr`); it is copied to
//! a temp dir so that a rebuild during the run cannot change it. Needs
//! PostgreSQL 15 (`$PG_BIN`), `pgbackrest` on PATH and, for the Garage row,
//! `garage` (see .ci/run); runs as root (PostgreSQL and every archive_command
//! then run as the OS user `postgres`) or as an ordinary user.
//!
//! Method, per data kind (`pgbench`: `pgbench -i` sized to the target plus a
//! 10 s pgbench run; `random`: bulk inserts of random bytes into a `bytea`
//! column with `storage external`, so neither PostgreSQL nor TOAST
//! compresses them; `wal_compression = off`):
//! 1. start a fresh server with `archive_mode = on` and `archive_command =
//!    ''` (PostgreSQL then keeps every finished segment as `.ready` and
//!    archives nothing), `wal_keep_size`/`max_wal_size` above the WAL
//!    generated and `checkpoint_timeout = 1d` (nothing is removed or
//!    recycled), autovacuum off (no WAL is written while contenders run);
//! 2. generate the WAL, `pg_switch_wal()`, and record the `.ready` segments:
//!    their count × the segment size is the WAL every contender archives;
//! 3. for each contender: rename the set's `archive_status/*.done` back to
//!    `.ready`, set its archive_command (ALTER SYSTEM), `sync`, then SIGHUP
//!    the postmaster and time until none of the set is `.ready` (polled
//!    every 20 ms); pause archiving again (`archive_command = ''`) and wait
//!    until every process of that contender has exited.
//!
//! Environment:
//! * `CBDR_BENCH_WAL_MB` (default 1024): WAL to accumulate per data kind.
//! * `CBDR_BENCH_KINDS` (default `pgbench,random`).
//! * `CBDR_BENCH_CONTENDERS` (default all): a comma list of `cp`, `cbdr-fs`,
//!   `cbdr-garage` (http), `cbdr-garage-https`, `pgbackrest-sync`,
//!   `pgbackrest-async`, `pgbackrest-async-aes`, `pgbackrest-async-s3`.
//!
//! The S3 rows: one Garage server, and stunnel (Debian's `stunnel4`, with a
//! certificate for 127.0.0.1 made for the run) terminating TLS in front of
//! it; pgBackRest only speaks https to S3, so `pgbackrest-async-s3` and
//! `cbdr-garage-https` go through stunnel (cbdr trusts the run's CA with
//! `storage.ca_file`), `cbdr-garage` straight to Garage over http. The CPU
//! seconds of Garage and of stunnel during each drain are reported
//! separately (from /proc/PID/stat). Without stunnel the https rows are
//! skipped with a note.
//! * `CBDR_BENCH_PUSH_CONCURRENCY` (default `4`, cbdr's default): a comma
//!   list of `[archive] push_concurrency` values; cbdr-fs runs once per
//!   value, cbdr-garage with the first.
//! * `CBDR_BENCH_TIMEOUT_S` (default 600): give up on a drain after this.
//! * `CBDR_BENCH_CBDR`: the cbdr binary to measure (default: the one cargo
//!   built).
//! * `GARAGE_COMPRESSION_LEVEL` (default `none` here): Garage's block
//!   compression.
//! * `CBDR_BENCH_REPEAT` (default 1): drains per contender (round robin over
//!   the contenders); the table shows the median.
//!
//! Output: a table on stdout and the same as JSON in
//! `target/bench-wal-archive.json`.
//!
//! Duration at the default size: ~1 minute to generate the WAL, then 2 × 6
//! drains of 2-15 s each: about 3 minutes with one run per contender, 7
//! with `CBDR_BENCH_REPEAT=3` (plus building the bench). Drain times of a
//! few seconds are sensitive to other work on the machine: every run
//! records the load average and CPU/I/O pressure before and after it;
//! on a busy machine use `CBDR_BENCH_REPEAT=3` and read the medians.

#[path = "common.rs"]
mod bench_common;
#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bench_common::{
    copy_cbdr, env_or, fmt_opt, pressure, process_cpu, run, sql_literal, TlsTerminator,
};
use common::pg::{chown_to_pg, pg_bin, pg_command, pg_user_dir, PgServer};
use serde_json::{json, Value};

const MIB: u64 = 1024 * 1024;
/// A fixed raw 256-bit key for cbdr (and the pgBackRest AES row's passphrase).
const KEY_HEX: &str = "6a3f0c9e2b7d41f8a5c3e1d9b7f02468ace13579bdf02468ace13579bdf02468";
/// The issue's goals: cbdr (lz4 + encryption, fs repository) drain time at
/// most this × async pgBackRest's.
const GOAL_PGBENCH: f64 = 0.67;
const GOAL_RANDOM: f64 = 1.0;
const POLL: Duration = Duration::from_millis(20);
const METHOD: &str = "one PostgreSQL 15 server per data kind; WAL accumulated with archive_command = '' \
    (every finished segment kept as .ready); per contender: the set's archive_status .done renamed back to .ready, \
    archive_command set (ALTER SYSTEM), sync, timed from SIGHUP to the postmaster until none of the set is .ready \
    (polled every 20 ms); every contender archives the same segments";

struct Opts {
    wal_mb: u64,
    kinds: Vec<Kind>,
    contenders: Vec<Contender>,
    timeout: Duration,
    repeat: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Pgbench,
    Random,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pgbench => "pgbench",
            Kind::Random => "random",
        }
    }

    fn goal(self) -> f64 {
        match self {
            Kind::Pgbench => GOAL_PGBENCH,
            Kind::Random => GOAL_RANDOM,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Cp,
    CbdrFs {
        push_concurrency: usize,
    },
    /// `tls`: through the stunnel TLS terminator (https).
    CbdrGarage {
        push_concurrency: usize,
        tls: bool,
    },
    PgbrSync,
    PgbrAsync {
        aes: bool,
    },
    /// Async, lz4, process-max 2, to Garage through the TLS terminator.
    PgbrAsyncS3,
}

impl Contender {
    fn id(self) -> &'static str {
        match self {
            Contender::Cp => "cp",
            Contender::CbdrFs { .. } => "cbdr-fs",
            Contender::CbdrGarage { tls: false, .. } => "cbdr-garage",
            Contender::CbdrGarage { tls: true, .. } => "cbdr-garage-https",
            Contender::PgbrAsyncS3 => "pgbackrest-async-s3",
            Contender::PgbrSync => "pgbackrest-sync",
            Contender::PgbrAsync { aes: false } => "pgbackrest-async",
            Contender::PgbrAsync { aes: true } => "pgbackrest-async-aes",
        }
    }

    fn label(self) -> String {
        match self {
            Contender::Cp => "cp %p DIR/%f".into(),
            Contender::CbdrFs { push_concurrency } => {
                format!("cbdr lz4+enc, fs repo (push_concurrency={push_concurrency})")
            }
            Contender::CbdrGarage {
                push_concurrency,
                tls,
            } => format!(
                "cbdr lz4+enc, Garage S3 {} (push_concurrency={push_concurrency})",
                if tls { "https" } else { "http" }
            ),
            Contender::PgbrAsyncS3 => "pgBackRest async, lz4, process-max=2, S3 https".into(),
            Contender::PgbrSync => "pgBackRest sync, lz4".into(),
            Contender::PgbrAsync { aes: false } => "pgBackRest async, lz4, process-max=2".into(),
            Contender::PgbrAsync { aes: true } => {
                "pgBackRest async, lz4+aes-256-cbc, process-max=2".into()
            }
        }
    }
}

fn opts() -> Opts {
    let wal_mb: u64 = env_or("CBDR_BENCH_WAL_MB", "1024")
        .parse()
        .expect("CBDR_BENCH_WAL_MB: a number of MiB");
    assert!(wal_mb >= 32, "CBDR_BENCH_WAL_MB: at least 32");
    let kinds = env_or("CBDR_BENCH_KINDS", "pgbench,random")
        .split(',')
        .map(|k| match k.trim() {
            "pgbench" => Kind::Pgbench,
            "random" => Kind::Random,
            other => panic!("CBDR_BENCH_KINDS: unknown kind {other:?} (pgbench, random)"),
        })
        .collect();
    let pcs: Vec<usize> = env_or("CBDR_BENCH_PUSH_CONCURRENCY", "4")
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .expect("CBDR_BENCH_PUSH_CONCURRENCY: comma list of numbers")
        })
        .collect();
    let wanted = env_or(
        "CBDR_BENCH_CONTENDERS",
        "cp,cbdr-fs,cbdr-garage,cbdr-garage-https,pgbackrest-sync,pgbackrest-async,pgbackrest-async-aes,pgbackrest-async-s3",
    );
    let mut contenders = Vec::new();
    for id in wanted.split(',').map(str::trim) {
        match id {
            "cp" => contenders.push(Contender::Cp),
            "cbdr-fs" => contenders.extend(
                pcs.iter()
                    .map(|&push_concurrency| Contender::CbdrFs { push_concurrency }),
            ),
            "cbdr-garage" => contenders.push(Contender::CbdrGarage {
                push_concurrency: pcs[0],
                tls: false,
            }),
            "cbdr-garage-https" => contenders.push(Contender::CbdrGarage {
                push_concurrency: pcs[0],
                tls: true,
            }),
            "pgbackrest-async-s3" => contenders.push(Contender::PgbrAsyncS3),
            "pgbackrest-sync" => contenders.push(Contender::PgbrSync),
            "pgbackrest-async" => contenders.push(Contender::PgbrAsync { aes: false }),
            "pgbackrest-async-aes" => contenders.push(Contender::PgbrAsync { aes: true }),
            other => panic!("CBDR_BENCH_CONTENDERS: unknown contender {other:?}"),
        }
    }
    let timeout = Duration::from_secs(
        env_or("CBDR_BENCH_TIMEOUT_S", "600")
            .parse()
            .expect("CBDR_BENCH_TIMEOUT_S: seconds"),
    );
    let repeat: usize = env_or("CBDR_BENCH_REPEAT", "1")
        .parse()
        .expect("CBDR_BENCH_REPEAT: a number");
    Opts {
        wal_mb,
        kinds,
        contenders,
        timeout,
        repeat: repeat.max(1),
    }
}

/// The load average and, where the kernel has PSI, the share of the last
/// 10 s in which some task waited for a CPU or for I/O: on a shared 2-core
/// machine they tell whether other work competed with the contenders.
fn loadavg() -> String {
    let load = bench_common::loadavg();
    match (pressure("cpu"), pressure("io")) {
        (Some(cpu), Some(io)) => format!("{load} (pressure {cpu}, {io})"),
        _ => load,
    }
}

/// Total size and count of the regular files under `dir` whose name passes
/// `keep`.
fn dir_usage(dir: &Path, keep: &dyn Fn(&str) -> bool) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    let Ok(entries) = fs::read_dir(dir) else {
        return (0, 0);
    };
    for e in entries.flatten() {
        let Ok(ty) = e.file_type() else { continue };
        if ty.is_dir() {
            let (b, f) = dir_usage(&e.path(), keep);
            bytes += b;
            files += f;
        } else if ty.is_file() && keep(&e.file_name().to_string_lossy()) {
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            files += 1;
        }
    }
    (bytes, files)
}

/// A WAL segment name (24 hex digits) or a file named after one.
fn is_segment_file(name: &str) -> bool {
    name.len() >= 24 && name.as_bytes()[..24].iter().all(u8::is_ascii_hexdigit)
}

/// Pids of processes (other than this one) whose command line mentions
/// `needle` (a temp dir path unique to this bench run).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// One data kind's server and its accumulated WAL.
struct Server {
    pg: PgServer,
    segments: Vec<String>,
    segment_size: u64,
    generate_secs: f64,
    generate_note: String,
}

impl Server {
    fn start(wal_mb: u64, kind: Kind) -> Server {
        // Room for the WAL generated plus slack: nothing is recycled.
        let keep_mb = wal_mb * 2 + 1024;
        let pg = PgServer::builder()
            .conf("archive_mode = on")
            .conf("archive_command = ''")
            .conf("archive_timeout = 0")
            .conf("wal_compression = off")
            .conf(format!("wal_keep_size = '{keep_mb}MB'"))
            .conf(format!("max_wal_size = '{keep_mb}MB'"))
            .conf("checkpoint_timeout = '1d'")
            .conf("autovacuum = off")
            .conf("synchronous_commit = off")
            .conf("shared_buffers = '256MB'")
            .start();
        let segment_size: u64 = pg
            .psql("select setting::bigint * 1 from pg_settings where name = 'wal_segment_size'")
            .parse()
            .expect("wal_segment_size");
        assert_eq!(pg.psql("show wal_compression"), "off");
        let mut s = Server {
            pg,
            segments: Vec::new(),
            segment_size,
            generate_secs: 0.0,
            generate_note: String::new(),
        };
        let t0 = Instant::now();
        match kind {
            Kind::Pgbench => s.generate_pgbench(wal_mb * MIB),
            Kind::Random => s.generate_random(wal_mb * MIB),
        }
        let last = s.pg.psql("select pg_walfile_name(pg_switch_wal())");
        let status = s.status_dir();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !status.join(format!("{last}.ready")).exists() {
            assert!(
                Instant::now() < deadline,
                "{last}.ready did not appear after pg_switch_wal()"
            );
            std::thread::sleep(POLL);
        }
        s.generate_secs = t0.elapsed().as_secs_f64();
        s.segments = s.ready_now();
        s.segments.sort();
        s
    }

    fn status_dir(&self) -> PathBuf {
        self.pg.data_dir().join("pg_wal/archive_status")
    }

    fn wal_bytes(&self) -> u64 {
        self.segments.len() as u64 * self.segment_size
    }

    fn lsn(&self) -> String {
        self.pg.psql("select pg_current_wal_lsn()")
    }

    fn wal_since(&self, lsn: &str) -> u64 {
        self.pg
            .psql(&format!(
                "select pg_wal_lsn_diff(pg_current_wal_lsn(), {})::bigint",
                sql_literal(lsn)
            ))
            .parse()
            .expect("lsn diff")
    }

    fn pgbench(&self, args: &[&str]) -> String {
        let mut cmd = pg_command(pg_bin("pgbench"));
        cmd.arg("-h")
            .arg(self.pg.socket_dir())
            .arg("-p")
            .arg(self.pg.port().to_string())
            .args(["-U", "postgres"])
            .args(args)
            .arg("postgres");
        run(&mut cmd, &format!("pgbench {}", args.join(" ")))
    }

    /// `pgbench -i` at a scale sized from a scale-1 run, then a 10 s run.
    fn generate_pgbench(&mut self, target: u64) {
        let start = self.lsn();
        self.pgbench(&["-i", "-q", "-s", "1"]);
        let per_scale = self.wal_since(&start).max(MIB);
        let run_estimate = 64 * MIB;
        let scale = (target.saturating_sub(per_scale + run_estimate) as f64 / per_scale as f64)
            .round()
            .max(1.0) as u64;
        self.pgbench(&["-i", "-q", "-s", &scale.to_string()]);
        self.pgbench(&["-n", "-c", "2", "-j", "2", "-T", "10"]);
        self.generate_note = format!(
            "pgbench -i -s 1 (calibration: {} MiB of WAL), pgbench -i -s {scale}, pgbench -n -c 2 -j 2 -T 10",
            per_scale / MIB
        );
    }

    /// Inserts of 8 KiB random `bytea` values (pgcrypto's
    /// gen_random_bytes), stored uncompressed out of line.
    fn generate_random(&mut self, target: u64) {
        self.pg.psql(
            "create extension if not exists pgcrypto;
             create table walbench_random (id bigserial, b bytea);
             alter table walbench_random alter column b set storage external;",
        );
        let value = (0..8)
            .map(|_| "gen_random_bytes(1024)")
            .collect::<Vec<_>>()
            .join(" || ");
        let start = self.lsn();
        let mut rows_total = 0u64;
        loop {
            let done = self.wal_since(&start);
            if done + self.segment_size / 2 >= target {
                break;
            }
            // ~8.3 KiB of WAL per row; at most 64 MiB per statement.
            let rows = ((target - done) / 8500).clamp(16, 8192);
            self.pg.psql(&format!(
                "insert into walbench_random (b) select {value} from generate_series(1, {rows})"
            ));
            rows_total += rows;
        }
        self.generate_note = format!(
            "{rows_total} rows of 8 KiB from gen_random_bytes() into a bytea column with storage external"
        );
    }

    /// Names of the segments now `.ready`.
    fn ready_now(&self) -> Vec<String> {
        fs::read_dir(self.status_dir())
            .expect("read archive_status")
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_suffix(".ready")?.to_string();
                is_segment_file(&name).then_some(name)
            })
            .collect()
    }

    /// Marks every segment of the set `.ready` again.
    fn restore_ready(&self) {
        let dir = self.status_dir();
        for seg in &self.segments {
            let done = dir.join(format!("{seg}.done"));
            let ready = dir.join(format!("{seg}.ready"));
            if done.exists() {
                fs::rename(&done, &ready).expect("rename .done to .ready");
            }
            assert!(ready.exists(), "{seg}: neither .ready nor .done");
        }
        // cbdr's memos of files uploaded ahead: none should be left.
        let memo = self.pg.data_dir().join("pg_wal/cbdr_archived");
        if memo.exists() {
            fs::remove_dir_all(&memo).expect("remove cbdr memos");
        }
    }

    fn set_archive_command(&self, cmd: &str) {
        self.pg.psql(&format!(
            "alter system set archive_command = {}",
            sql_literal(cmd)
        ));
    }

    fn pause(&self) {
        self.set_archive_command("");
        self.pg.psql("select pg_reload_conf()");
    }

    fn postmaster_pid(&self) -> i32 {
        self.pg.postmaster_pid().expect("the server is running") as i32
    }
}

/// What one contender did with one data kind.
struct Outcome {
    kind: Kind,
    contender: Contender,
    wal_bytes: u64,
    segments: usize,
    seconds: Option<f64>,
    stored_bytes: Option<u64>,
    stored_files: Option<u64>,
    /// CPU of the Garage server and of the TLS terminator during the drain.
    garage_cpu: Option<f64>,
    tls_cpu: Option<f64>,
    load_before: String,
    load_after: String,
    notes: Vec<String>,
}

impl Outcome {
    fn mib_per_s(&self) -> Option<f64> {
        self.seconds.map(|s| self.wal_bytes as f64 / MIB as f64 / s)
    }

    fn json(&self) -> Value {
        json!({
            "kind": self.kind.name(),
            "contender": self.contender.id(),
            "label": self.contender.label(),
            "push_concurrency": match self.contender {
                Contender::CbdrFs { push_concurrency } | Contender::CbdrGarage { push_concurrency, .. } => Some(push_concurrency),
                _ => None,
            },
            "wal_bytes": self.wal_bytes,
            "segments": self.segments,
            "drain_seconds": self.seconds,
            "mib_per_second": self.mib_per_s(),
            "stored_bytes": self.stored_bytes,
            "stored_files": self.stored_files,
            "garage_cpu_seconds": self.garage_cpu,
            "tls_cpu_seconds": self.tls_cpu,
            "loadavg_before": self.load_before,
            "loadavg_after": self.load_after,
            "notes": self.notes,
        })
    }
}

/// The cbdr binary to measure: `$CBDR_BENCH_CBDR`, else the one cargo
/// built for this bench.
fn cbdr_source() -> PathBuf {
    PathBuf::from(env_or("CBDR_BENCH_CBDR", env!("CARGO_BIN_EXE_cbdr")))
}

/// What a contender needs set up for one run.
struct Prepared {
    archive_command: String,
    /// Where it stores the archive, when local: measured after the run.
    local_repo: Option<PathBuf>,
    /// Config file of a cbdr contender (for the wal-fetch check).
    cbdr_config: Option<PathBuf>,
}

struct Bench {
    opts: Opts,
    /// Everything of this run: configs, repositories, the cbdr binary.
    dir: tempfile::TempDir,
    cbdr: PathBuf,
    runs: usize,
    /// stunnel in front of Garage, for the https rows.
    tls: Option<TlsTerminator>,
    /// stunnel's files: outside `dir`, as every process whose command
    /// line names `dir` is waited for after a drain.
    _tls_dir: tempfile::TempDir,
    garage_pid: Option<u32>,
}

impl Bench {
    fn new(opts: Opts) -> Bench {
        let dir = pg_user_dir("walbench");
        let cbdr = copy_cbdr(&cbdr_source(), dir.path());
        let garage_pid = common::garage::garage_bin().map(|_| common::garage::garage().pid());
        let tls_dir = tempfile::tempdir().expect("temp dir");
        let tls = garage_pid.and_then(|_| {
            match TlsTerminator::start(&common::garage::garage().s3_addr(), tls_dir.path()) {
                Ok(t) => {
                    println!("TLS terminator: stunnel at {} (pid {})", t.endpoint, t.pid);
                    Some(t)
                }
                Err(e) => {
                    println!("S3 https rows skipped: {e}");
                    None
                }
            }
        });
        chown_to_pg(dir.path());
        Bench {
            opts,
            dir,
            cbdr,
            runs: 0,
            tls,
            _tls_dir: tls_dir,
            garage_pid,
        }
    }

    fn prepare(&mut self, c: Contender, server: &Server) -> Prepared {
        self.runs += 1;
        let run_dir = self.dir.path().join(format!("run{}-{}", self.runs, c.id()));
        fs::create_dir(&run_dir).expect("create run dir");
        let repo = run_dir.join("repo");
        let key_file = run_dir.join("key");
        let prepared = match c {
            Contender::Cp => {
                fs::create_dir(&repo).unwrap();
                Prepared {
                    archive_command: format!("cp %p {}/%f", repo.display()),
                    local_repo: Some(repo),
                    cbdr_config: None,
                }
            }
            Contender::CbdrFs { push_concurrency }
            | Contender::CbdrGarage {
                push_concurrency, ..
            } => {
                fs::write(&key_file, format!("{KEY_HEX}\n")).unwrap();
                let storage = match c {
                    Contender::CbdrFs { .. } => {
                        format!("[storage]\ntype = \"fs\"\npath = \"{}\"\n", repo.display())
                    }
                    Contender::CbdrGarage { tls: true, .. } => {
                        let tls = self.tls.as_ref().expect("a TLS terminator");
                        let mut target = common::garage::bucket(&format!("walbench-{}", self.runs));
                        target.endpoint = tls.endpoint.clone();
                        let ca = run_dir.join("ca.pem");
                        fs::copy(&tls.ca_file, &ca).unwrap();
                        format!("{}ca_file = \"{}\"\n", target.config_toml(""), ca.display())
                    }
                    _ => common::garage::bucket(&format!("walbench-{}", self.runs)).config_toml(""),
                };
                let config = run_dir.join("cbdr.toml");
                fs::write(
                    &config,
                    format!(
                        "{storage}\n[compression]\nmethod = \"lz4\"\n\n\
                         [encryption]\nkey_file = \"{}\"\n\n\
                         [archive]\npush_concurrency = {push_concurrency}\n",
                        key_file.display()
                    ),
                )
                .unwrap();
                Prepared {
                    archive_command: format!(
                        "{} --config {} wal-push %p",
                        self.cbdr.display(),
                        config.display()
                    ),
                    local_repo: matches!(c, Contender::CbdrFs { .. }).then(|| repo.clone()),
                    cbdr_config: Some(config),
                }
            }
            Contender::PgbrSync | Contender::PgbrAsync { .. } | Contender::PgbrAsyncS3 => {
                let conf = run_dir.join("pgbackrest.conf");
                let mut text = format!(
                    "[global]\n\
                     repo1-path={repo}\n\
                     lock-path={run}/lock\n\
                     log-path={run}/log\n\
                     spool-path={run}/spool\n\
                     compress-type=lz4\n",
                    repo = if c == Contender::PgbrAsyncS3 {
                        "/pgbackrest".into()
                    } else {
                        repo.display().to_string()
                    },
                    run = run_dir.display()
                );
                if c == Contender::PgbrAsyncS3 {
                    let tls = self.tls.as_ref().expect("a TLS terminator");
                    let t = common::garage::bucket(&format!("walbench-pgbr-{}", self.runs));
                    write!(
                        text,
                        "repo1-type=s3\nrepo1-s3-bucket={}\nrepo1-s3-endpoint=127.0.0.1\n\
                         repo1-storage-port={}\nrepo1-storage-verify-tls=n\nrepo1-s3-uri-style=path\n\
                         repo1-s3-region={}\nrepo1-s3-key={}\nrepo1-s3-key-secret={}\n\
                         archive-async=y\nprocess-max=2\n",
                        t.bucket, tls.port, t.region, t.access_key_id, t.secret_access_key
                    )
                    .unwrap();
                }
                if let Contender::PgbrAsync { aes } = c {
                    text.push_str("archive-async=y\nprocess-max=2\n");
                    if aes {
                        text.push_str(&format!(
                            "repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass={KEY_HEX}\n"
                        ));
                    }
                }
                write!(
                    text,
                    "\n[bench]\npg1-path={}\npg1-port={}\npg1-socket-path={}\n",
                    server.pg.data_dir().display(),
                    server.pg.port(),
                    server.pg.socket_dir().display()
                )
                .unwrap();
                fs::write(&conf, text).unwrap();
                for d in ["lock", "log", "spool", "repo"] {
                    fs::create_dir(run_dir.join(d)).unwrap();
                }
                chown_to_pg(&run_dir);
                run(
                    pg_command("pgbackrest")
                        .arg(format!("--config={}", conf.display()))
                        .args(["--stanza=bench", "stanza-create"]),
                    "pgbackrest stanza-create",
                );
                Prepared {
                    archive_command: format!(
                        "pgbackrest --config={} --stanza=bench archive-push %p",
                        conf.display()
                    ),
                    local_repo: (c != Contender::PgbrAsyncS3).then_some(repo),
                    cbdr_config: None,
                }
            }
        };
        chown_to_pg(&run_dir);
        fs::set_permissions(&run_dir, fs::Permissions::from_mode(0o700)).unwrap();
        if key_file.exists() {
            fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap();
        }
        if let Some(config) = &prepared.cbdr_config {
            common::init_repo(&self.cbdr.to_string_lossy(), config);
        }
        prepared
    }

    /// Archives the server's accumulated WAL with one contender and times it.
    fn measure(&mut self, kind: Kind, c: Contender, server: &Server) -> Outcome {
        let mut outcome = Outcome {
            kind,
            contender: c,
            wal_bytes: server.wal_bytes(),
            segments: server.segments.len(),
            seconds: None,
            stored_bytes: None,
            stored_files: None,
            garage_cpu: None,
            tls_cpu: None,
            load_before: String::new(),
            load_after: String::new(),
            notes: Vec::new(),
        };
        let needs_pgbackrest = matches!(
            c,
            Contender::PgbrSync | Contender::PgbrAsync { .. } | Contender::PgbrAsyncS3
        );
        if needs_pgbackrest && Command::new("pgbackrest").arg("version").output().is_err() {
            outcome
                .notes
                .push("skipped: pgbackrest not installed (apt-get install pgbackrest)".into());
            return outcome;
        }
        if matches!(c, Contender::CbdrGarage { .. } | Contender::PgbrAsyncS3)
            && common::garage::garage_bin().is_none()
        {
            outcome
                .notes
                .push("skipped: garage not found (see .ci/run)".into());
            return outcome;
        }
        if matches!(
            c,
            Contender::CbdrGarage { tls: true, .. } | Contender::PgbrAsyncS3
        ) && self.tls.is_none()
        {
            outcome
                .notes
                .push("skipped: no TLS terminator (apt-get install -y stunnel4)".into());
            return outcome;
        }
        let prepared = self.prepare(c, server);
        server.restore_ready();
        server.set_archive_command(&prepared.archive_command);
        let set: HashSet<&str> = server.segments.iter().map(String::as_str).collect();
        let status = server.status_dir();
        let count_ready = || {
            fs::read_dir(&status)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter(|e| {
                            e.file_name()
                                .to_str()
                                .and_then(|n| n.strip_suffix(".ready"))
                                .is_some_and(|n| set.contains(n))
                        })
                        .count()
                })
                .unwrap_or(usize::MAX)
        };
        assert_eq!(count_ready(), set.len(), "the set is not all .ready");
        let log = server.pg.log_path();
        let log_start = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
        outcome.load_before = loadavg();
        let tls_pid = self.tls.as_ref().map(|t| t.pid);
        let garage_before = self.garage_pid.and_then(process_cpu);
        let tls_before = tls_pid.and_then(process_cpu);

        let t0 = Instant::now();
        // SAFETY: plain kill(2) of the postmaster: reload its config.
        let rc = unsafe { libc::kill(server.postmaster_pid(), libc::SIGHUP) };
        assert_eq!(rc, 0, "SIGHUP to the postmaster");
        let mut failed = None;
        loop {
            if count_ready() == 0 {
                outcome.seconds = Some(t0.elapsed().as_secs_f64());
                break;
            }
            if t0.elapsed() > self.opts.timeout {
                failed = Some(format!("timed out after {:?}", self.opts.timeout));
                break;
            }
            let log_now = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            if log_now > log_start {
                let text = log_text(&log, log_start);
                if text.contains("failed too many times") {
                    failed = Some("the archive_command failed 3 times in a row".into());
                    break;
                }
            }
            std::thread::sleep(POLL);
        }
        outcome.load_after = loadavg();
        outcome.garage_cpu = garage_before
            .zip(self.garage_pid.and_then(process_cpu))
            .map(|(a, b)| b - a);
        outcome.tls_cpu = tls_before
            .zip(tls_pid.and_then(process_cpu))
            .map(|(a, b)| b - a);
        server.pause();
        // Let the contender's processes (pgBackRest's async worker too) end.
        let needle = self.dir.path().to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !processes_mentioning(&needle).is_empty() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let leftover = processes_mentioning(&needle);
        if !leftover.is_empty() {
            outcome.notes.push(format!(
                "processes still running 60 s after the drain: {leftover:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(300));

        if let Some(f) = failed {
            outcome.seconds = None;
            outcome.notes.push(format!("FAILED: {f}"));
        }
        // Server log lines written during the run (archiver complaints,
        // contender warnings), without the "archiving is paused" warnings.
        let lines: Vec<String> = log_text(&log, log_start)
            .lines()
            .filter(|l| !l.contains("yet archiving is not configured"))
            .filter(|l| {
                !l.contains("received SIGHUP") && !l.contains("parameter \"archive_command\"")
            })
            .map(str::to_string)
            .collect();
        if !lines.is_empty() {
            let shown = lines.len().min(8);
            outcome.notes.push(format!(
                "{} server log line(s) during the run, first {shown}:\n    {}",
                lines.len(),
                lines[..shown].join("\n    ")
            ));
        }
        let memo = server.pg.data_dir().join("pg_wal/cbdr_archived");
        let (_, memos) = dir_usage(&memo, &|_| true);
        if memos > 0 {
            outcome.notes.push(format!(
                "{memos} cbdr memo(s) left in pg_wal/cbdr_archived after the drain"
            ));
        }
        if let Some(repo) = &prepared.local_repo {
            let (bytes, files) = dir_usage(repo, &|n: &str| {
                is_segment_file(n) && !n.starts_with('.') && !n.contains(".tmp")
            });
            outcome.stored_bytes = Some(bytes);
            outcome.stored_files = Some(files);
            if files != server.segments.len() as u64 {
                outcome.notes.push(format!(
                    "the repository holds {files} WAL files, expected {}",
                    server.segments.len()
                ));
            }
        }
        if let (Some(config), true) = (&prepared.cbdr_config, outcome.seconds.is_some()) {
            if let Err(e) = self.check_fetch(config, server) {
                outcome.notes.push(format!("wal-fetch check FAILED: {e}"));
            }
        }
        if let Some(repo) = &prepared.local_repo {
            let _ = fs::remove_dir_all(repo);
        }
        outcome
    }

    /// Fetches the first and the last archived segment back with cbdr and
    /// compares them with pg_wal.
    fn check_fetch(&self, config: &Path, server: &Server) -> Result<(), String> {
        let out_dir = self.dir.path().join(format!("fetch{}", self.runs));
        fs::create_dir(&out_dir).map_err(|e| e.to_string())?;
        chown_to_pg(&out_dir);
        let firsts = [
            server.segments.first().unwrap(),
            server.segments.last().unwrap(),
        ];
        for seg in firsts {
            let dest = out_dir.join(seg);
            let out = pg_command(&self.cbdr)
                .arg("--config")
                .arg(config)
                .args(["wal-fetch", seg])
                .arg(&dest)
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "wal-fetch {seg}: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let fetched = fs::read(&dest).map_err(|e| e.to_string())?;
            let original = fs::read(server.pg.data_dir().join("pg_wal").join(seg))
                .map_err(|e| e.to_string())?;
            if fetched != original {
                return Err(format!("{seg}: fetched bytes differ from pg_wal"));
            }
        }
        let _ = fs::remove_dir_all(&out_dir);
        Ok(())
    }
}

fn log_text(path: &Path, from: u64) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b[(from as usize).min(b.len())..]).into_owned())
        .unwrap_or_default()
}

/// One table row: a contender on a data kind, over its repeated runs.
struct Row<'a> {
    kind: Kind,
    contender: Contender,
    runs: Vec<&'a Outcome>,
}

impl Row<'_> {
    fn wal_bytes(&self) -> u64 {
        self.runs[0].wal_bytes
    }

    /// Median drain time; none if any run failed or was skipped.
    fn seconds(&self) -> Option<f64> {
        let mut secs: Vec<f64> = self.runs.iter().map(|o| o.seconds).collect::<Option<_>>()?;
        secs.sort_by(f64::total_cmp);
        let n = secs.len();
        Some(if n % 2 == 1 {
            secs[n / 2]
        } else {
            (secs[n / 2 - 1] + secs[n / 2]) / 2.0
        })
    }

    fn mib_per_s(&self) -> Option<f64> {
        self.seconds()
            .map(|s| self.wal_bytes() as f64 / MIB as f64 / s)
    }

    fn stored(&self) -> Option<u64> {
        self.runs
            .iter()
            .find_map(|o| o.stored_bytes)
            .filter(|&b| b > 0)
    }
}

fn main() {
    // `cargo bench` passes `--bench` (and maybe a filter): ignored.
    let opts = opts();
    let started = Instant::now();
    // Garage's own zstd on data cbdr and pgBackRest already compressed is
    // wasted CPU on the shared cores: off, unless the caller says.
    // SAFETY (set_var): the bench is still single-threaded here.
    if std::env::var_os("GARAGE_COMPRESSION_LEVEL").is_none() {
        std::env::set_var("GARAGE_COMPRESSION_LEVEL", "none");
    }
    println!(
        "Garage block compression: {} (GARAGE_COMPRESSION_LEVEL)",
        std::env::var("GARAGE_COMPRESSION_LEVEL").unwrap_or_default()
    );
    println!(
        "WAL archiving bench: {} MiB of WAL per data kind, kinds {:?}, {} contender(s), {} run(s) each",
        opts.wal_mb,
        opts.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
        opts.contenders.len(),
        opts.repeat
    );
    println!("cbdr binary: {}", cbdr_source().display());
    println!("load average at start: {}", loadavg());
    let pgbackrest_version = Command::new("pgbackrest")
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "not installed".into());
    println!("pgBackRest: {pgbackrest_version}");

    let mut bench = Bench::new(opts);
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut kinds_json = Vec::new();
    for kind in bench.opts.kinds.clone() {
        println!(
            "\n[{}] generating ~{} MiB of WAL ...",
            kind.name(),
            bench.opts.wal_mb
        );
        let server = Server::start(bench.opts.wal_mb, kind);
        println!(
            "[{}] {} segments × {} MiB = {} MiB of WAL in {:.1} s ({})",
            kind.name(),
            server.segments.len(),
            server.segment_size / MIB,
            server.wal_bytes() / MIB,
            server.generate_secs,
            server.generate_note
        );
        for _ in 0..bench.opts.repeat {
            for c in bench.opts.contenders.clone() {
                let o = bench.measure(kind, c, &server);
                println!(
                    "[{}] {:<58} {:>7} s  {:>7} MiB/s  load {} -> {}",
                    kind.name(),
                    c.label(),
                    fmt_opt(o.seconds, 2),
                    fmt_opt(o.mib_per_s(), 0),
                    o.load_before,
                    o.load_after
                );
                for n in &o.notes {
                    println!("      note: {n}");
                }
                outcomes.push(o);
            }
        }
        kinds_json.push(json!({
            "kind": kind.name(),
            "segments": server.segments.len(),
            "segment_size": server.segment_size,
            "wal_bytes": server.wal_bytes(),
            "generate_seconds": server.generate_secs,
            "generated_by": server.generate_note,
        }));
    }

    let mut rows: Vec<Row> = Vec::new();
    for &kind in &bench.opts.kinds {
        for &contender in &bench.opts.contenders {
            if rows
                .iter()
                .any(|r| r.kind == kind && r.contender == contender)
            {
                continue;
            }
            let runs: Vec<&Outcome> = outcomes
                .iter()
                .filter(|o| o.kind == kind && o.contender == contender)
                .collect();
            if !runs.is_empty() {
                rows.push(Row {
                    kind,
                    contender,
                    runs,
                });
            }
        }
    }

    // The report.
    let mut report = String::new();
    writeln!(
        report,
        "\n=== WAL archiving: time to drain the accumulated WAL ==="
    )
    .unwrap();
    writeln!(report, "method: {METHOD}").unwrap();
    if bench.opts.repeat > 1 {
        writeln!(
            report,
            "drain s: median of {} runs per contender",
            bench.opts.repeat
        )
        .unwrap();
    }
    writeln!(
        report,
        "{:<8} {:<58} {:>8} {:>8} {:>7} {:>10} {:>6} {:>8} {:>6}  runs (s)",
        "kind",
        "contender",
        "WAL MiB",
        "drain s",
        "MiB/s",
        "stored MiB",
        "ratio",
        "garage s",
        "tls s"
    )
    .unwrap();
    for r in &rows {
        let stored = r.stored();
        let runs: Vec<String> = r.runs.iter().map(|o| fmt_opt(o.seconds, 2)).collect();
        writeln!(
            report,
            "{:<8} {:<58} {:>8} {:>8} {:>7} {:>10} {:>6} {:>8} {:>6}  {}",
            r.kind.name(),
            r.contender.label(),
            r.wal_bytes() / MIB,
            fmt_opt(r.seconds(), 2),
            fmt_opt(r.mib_per_s(), 0),
            stored
                .map(|b| format!("{:.1}", b as f64 / MIB as f64))
                .unwrap_or_else(|| "-".into()),
            stored
                .map(|b| format!("{:.1}×", r.wal_bytes() as f64 / b as f64))
                .unwrap_or_else(|| "-".into()),
            fmt_opt(r.runs[0].garage_cpu, 2),
            fmt_opt(r.runs[0].tls_cpu, 2),
            runs.join(" ")
        )
        .unwrap();
    }
    writeln!(
        report,
        "\nratios: drain time ÷ async pgBackRest's (lz4, no encryption, process-max=2) to the same kind of \
         repository: the local directory for cbdr fs, Garage through the TLS terminator for cbdr S3"
    )
    .unwrap();
    let mut ratios_json = Vec::new();
    for &kind in &bench.opts.kinds {
        let reference = rows
            .iter()
            .find(|r| r.kind == kind && r.contender == Contender::PgbrAsync { aes: false })
            .and_then(Row::seconds);
        let reference_s3 = rows
            .iter()
            .find(|r| r.kind == kind && r.contender == Contender::PgbrAsyncS3)
            .and_then(Row::seconds);
        for r in rows.iter().filter(|r| {
            r.kind == kind
                && matches!(
                    r.contender,
                    Contender::CbdrFs { .. } | Contender::CbdrGarage { .. }
                )
        }) {
            let s3 = matches!(r.contender, Contender::CbdrGarage { .. });
            let ratio = match (r.seconds(), if s3 { reference_s3 } else { reference }) {
                (Some(s), Some(p)) if p > 0.0 => Some(s / p),
                _ => None,
            };
            let verdict = match ratio {
                Some(x) if x <= kind.goal() => "PASS",
                Some(_) => "MISS",
                None => "n/a",
            };
            let goal = format!("goal ≤ {:.2}", kind.goal());
            writeln!(
                report,
                "  {:<8} {:<58} {:<24} {:>6}  {goal:<11}  {verdict}",
                kind.name(),
                r.contender.label(),
                if s3 {
                    "÷ pgBackRest async S3"
                } else {
                    "÷ pgBackRest async local"
                },
                fmt_opt(ratio, 2),
            )
            .unwrap();
            ratios_json.push(json!({
                "kind": kind.name(),
                "contender": r.contender.id(),
                "label": r.contender.label(),
                "ratio_to_pgbackrest_async": ratio,
                "goal": kind.goal(),
                "verdict": verdict,
            }));
        }
    }
    writeln!(
        report,
        "\nthe issue's reference, 2 cores, 1 GiB: pgBackRest async lz4 drains pgbench WAL in ~1.9 s, incompressible WAL in ~3.2 s; cp ~2.8 s"
    )
    .unwrap();
    writeln!(
        report,
        "load average at end: {} (2 cores: above ~2 other work competed with the contenders); total bench time {:.0} s",
        loadavg(),
        started.elapsed().as_secs_f64()
    )
    .unwrap();
    print!("{report}");

    let json_path = bench_common::report_path("bench-wal-archive.json");
    let doc = json!({
        "wal_mb_target": bench.opts.wal_mb,
        "repeat": bench.opts.repeat,
        "method": METHOD,
        "pgbackrest_version": pgbackrest_version,
        "cbdr_binary": cbdr_source().display().to_string(),
        "kinds": kinds_json,
        "summary": rows.iter().map(|r| json!({
            "kind": r.kind.name(),
            "contender": r.contender.id(),
            "label": r.contender.label(),
            "wal_bytes": r.wal_bytes(),
            "drain_seconds": r.seconds(),
            "mib_per_second": r.mib_per_s(),
            "stored_bytes": r.stored(),
        })).collect::<Vec<_>>(),
        "ratios": ratios_json,
        "runs": outcomes.iter().map(Outcome::json).collect::<Vec<_>>(),
        "total_seconds": started.elapsed().as_secs_f64(),
        "loadavg_end": loadavg(),
    });
    fs::write(
        &json_path,
        serde_json::to_string_pretty(&doc).expect("JSON") + "\n",
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", json_path.display()));
    println!("report written to {}", json_path.display());
}
