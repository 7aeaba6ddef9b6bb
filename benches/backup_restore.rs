//! Base backups and restores: cbdr `backup-push` (lz4 + encryption, to the
//! filesystem repository and to Garage) against `pg_basebackup -Ft` (plain
//! and `--compress=server-lz4`) and pgBackRest `backup` (lz4, process-max
//! 2); cbdr `restore` against pgBackRest `restore` (process-max 2). Wall
//! time, throughput, stored size and peak memory, on one PostgreSQL 15
//! server per data set, with ratios against the issue's goals.
//!
//! ```text
//! cargo bench --bench backup_restore                          # scale 100 (~1.6 GB per data set)
//! CBDR_BENCH_SCALE=10 cargo bench --bench backup_restore      # a quick run (~160 MB)
//! ```
//!
//! `cargo bench` builds the `cbdr` binary with the bench profile (= release)
//! and hands its path to this bench (`CARGO_BIN_EXE_cbdr`; `CBDR_BENCH_CBDR`
//! names another binary); it is copied to a temp dir so that a rebuild
//! during the run cannot change it. Needs PostgreSQL 15 (`$PG_BIN`),
//! `pgbackrest` on PATH and, for the Garage rows, `garage` (see .ci/run);
//! runs as root (PostgreSQL, pgBackRest and cbdr then run as the OS user
//! `postgres`) or as an ordinary user.
//!
//! Data sets (each on its own fresh server, loaded with `wal_level =
//! minimal` so that loading writes almost no WAL, then `VACUUM (FREEZE,
//! ANALYZE)`, `CHECKPOINT`, and a restart with `wal_level = replica`,
//! `archive_mode = on`):
//! * `pgbench`: `pgbench -i -s SCALE` (scale 100: a 1.6 GB data directory;
//!   very compressible, lz4 ~9×);
//! * `random`: tables of random text and numbers of the same size (base64
//!   of random bytes, random numerics, floats and integers, and some
//!   repetitive words: lz4 ~1.8×), with a primary key, loaded by
//!   `CBDR_BENCH_GEN_JOBS` sessions at once.
//!
//! One archive_command archives every WAL file to all three repositories
//! (`cbdr wal-push` to fs and to Garage, with `push_concurrency = 1` as the
//! two share `pg_wal/cbdr_archived`, and `pgbackrest archive-push`); before
//! each backup the contender's own push is put first (ALTER SYSTEM +
//! reload), as cbdr and pgBackRest wait until the backup's WAL is in their
//! archive. Before every timed command: `CHECKPOINT` and sync(2). The
//! contenders run one after the other in a fixed order (backups, then
//! restores), `CBDR_BENCH_REPEAT` rounds; the data was just loaded, so every
//! contender reads it from a warm page cache (the machine has far more RAM
//! than the data). Each tool keeps its own durability defaults
//! (pg_basebackup and pgBackRest fsync what they write; cbdr fsyncs its fs
//! repository and `syncfs`es a restored directory; Garage runs with
//! `data_fsync = false`). pg_basebackup uses TCP to 127.0.0.1 like cbdr, and
//! its default `-X stream`.
//!
//! Peak memory: `ru_maxrss` from wait4(2) of the command (the largest
//! single process among it and the children it waited for: pgBackRest's
//! local workers count, the PostgreSQL walsender serving pg_basebackup or
//! cbdr does not), and the peak sum of RSS over the command's process tree
//! sampled every 50 ms. CPU: user + system time from the same wait4(2),
//! and the CPU time of the server processes that served the command (the
//! postmaster's reaped children: walsender, backends), as the machine may be
//! shared and a ratio of wall times then depends on the other load.
//!
//! Each restore is checked cheaply: `PG_VERSION` and `global/pg_control`
//! present, the files and bytes under `base/` equal to the server's
//! (without `pg_internal.init`), and `pg_verifybackup -n` on cbdr's
//! restored directories (cbdr leaves the server's `backup_manifest` there).
//!
//! Environment:
//! * `CBDR_BENCH_SCALE` (default 100): pgbench scale; the random data set
//!   matches the pgbench data set's size.
//! * `CBDR_BENCH_KINDS` (default `pgbench,random`).
//! * `CBDR_BENCH_REPEAT` (default 1): rounds over the contenders; the tables
//!   show the best (shortest) run and list every run.
//! * `CBDR_BENCH_RESTORE_PARALLEL` (default 4, cbdr's default): `cbdr
//!   restore --parallel`.
//! * `CBDR_BENCH_GEN_JOBS` (default 2): sessions loading the random data set.
//! * `CBDR_BENCH_CBDR`: the cbdr binary to measure (default: the one cargo
//!   built).
//! * `CBDR_BENCH_PIN` (default 1 on 2+ CPUs): run the two pinned rows.
//! * `GARAGE_COMPRESSION_LEVEL` (default `none` here): Garage's block
//!   compression (its default is zstd level 1, wasted on data the tools
//!   already compressed and, for cbdr, encrypted).
//!
//! S3: one Garage server (`data_fsync = false`) for the whole run, and
//! stunnel (Debian's `stunnel4`; a CA and a certificate for 127.0.0.1 made
//! for the run) terminating TLS in front of it, as pgBackRest speaks only
//! https to S3. pgBackRest gets a second repository, `repo2-type=s3`
//! through stunnel (`repo2-storage-verify-tls=n`, path-style, region
//! `garage`), so its archive-push writes both repositories; cbdr's Garage
//! repository is used over plain http and, through stunnel, over https
//! (`storage.ca_file` = the run's CA). Every row reports the CPU seconds
//! the Garage server and stunnel used during it (utime + stime from
//! /proc/PID/stat before and after), apart from the command's and the
//! PostgreSQL server's. The pinned rows take Garage off cbdr's core: cbdr
//! (`taskset -c 0`) on CPU 0, Garage and stunnel (`taskset -a -p`) on the
//! last CPU for the row, PostgreSQL unpinned, for the fs and the S3 http
//! backup alike. Without stunnel the https rows are skipped with a note.
//!
//! Output: tables on stdout and the same as JSON in
//! `target/bench-backup-restore.json`.

#[path = "common.rs"]
mod bench_common;
#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bench_common::{
    copy_cbdr, env_num, env_or, fmt_opt, loadavg, pin_process, process_cpu, run, sql_literal,
    timed, TlsTerminator,
};
use common::pg::{chown_to_pg, pg_bin, pg_command, pg_user_dir, PgServer};
use serde_json::{json, Value};

/// Sizes and rates are in MB = 10^6 bytes (RSS too: the conservative unit).
const MB: f64 = 1_000_000.0;
/// A fixed raw 256-bit key for cbdr.
const KEY_HEX: &str = "6a3f0c9e2b7d41f8a5c3e1d9b7f02468ace13579bdf02468ace13579bdf02468";
/// The issue's goals.
const GOAL_BACKUP_VS_PGBR: f64 = 0.5;
const GOAL_BACKUP_VS_PGBB_LZ4: f64 = 1.0;
const GOAL_RESTORE_VS_PGBR: f64 = 0.5;
const GOAL_RSS_MB: f64 = 200.0;
/// cbdr's S3 backup at most this × its filesystem backup, Garage's CPU
/// taken out (pinned rows).
const GOAL_S3_VS_FS: f64 = 1.25;
/// pgbench data set bytes per scale unit (tables and indexes, measured on
/// PostgreSQL 15): the random data set's size when pgbench did not run.
const PGBENCH_BYTES_PER_SCALE: f64 = 15.6e6;
const STANZA: &str = "bench";
const SAMPLE: Duration = Duration::from_millis(50);

struct Opts {
    scale: u32,
    kinds: Vec<Kind>,
    repeat: usize,
    restore_parallel: usize,
    gen_jobs: usize,
    cbdr_source: PathBuf,
    /// Run the pinned rows (cbdr on CPU 0, Garage and stunnel on the last).
    pin: bool,
    cpus: usize,
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
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
enum Repo {
    Fs,
    /// Garage over plain http.
    Garage,
    /// The same Garage bucket through the TLS terminator (https).
    GarageTls,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
enum Op {
    PgbbPlain,
    PgbbLz4,
    PgbrBackup,
    /// pgBackRest backup to Garage through the TLS terminator.
    PgbrBackupS3,
    CbdrBackup(Repo),
    /// cbdr bound to CPU 0, Garage and the terminator to the last CPU.
    CbdrBackupPinned(Repo),
    PgbrRestore,
    PgbrRestoreS3,
    CbdrRestore(Repo),
}

const BACKUPS: [Op; 9] = [
    Op::PgbbPlain,
    Op::PgbbLz4,
    Op::PgbrBackup,
    Op::PgbrBackupS3,
    Op::CbdrBackup(Repo::Fs),
    Op::CbdrBackup(Repo::Garage),
    Op::CbdrBackup(Repo::GarageTls),
    Op::CbdrBackupPinned(Repo::Fs),
    Op::CbdrBackupPinned(Repo::Garage),
];
const RESTORES: [Op; 5] = [
    Op::PgbrRestore,
    Op::PgbrRestoreS3,
    Op::CbdrRestore(Repo::Fs),
    Op::CbdrRestore(Repo::Garage),
    Op::CbdrRestore(Repo::GarageTls),
];

impl Op {
    fn id(self) -> &'static str {
        match self {
            Op::PgbbPlain => "pg_basebackup-plain",
            Op::PgbbLz4 => "pg_basebackup-server-lz4",
            Op::PgbrBackup => "pgbackrest-backup",
            Op::PgbrBackupS3 => "pgbackrest-backup-s3-https",
            Op::CbdrBackup(Repo::Fs) => "cbdr-backup-fs",
            Op::CbdrBackup(Repo::Garage) => "cbdr-backup-garage",
            Op::CbdrBackup(Repo::GarageTls) => "cbdr-backup-garage-https",
            Op::CbdrBackupPinned(Repo::Fs) => "cbdr-backup-fs-pinned",
            Op::CbdrBackupPinned(Repo::Garage) => "cbdr-backup-garage-pinned",
            Op::CbdrBackupPinned(Repo::GarageTls) => "cbdr-backup-garage-https-pinned",
            Op::PgbrRestore => "pgbackrest-restore",
            Op::PgbrRestoreS3 => "pgbackrest-restore-s3-https",
            Op::CbdrRestore(Repo::Fs) => "cbdr-restore-fs",
            Op::CbdrRestore(Repo::Garage) => "cbdr-restore-garage",
            Op::CbdrRestore(Repo::GarageTls) => "cbdr-restore-garage-https",
        }
    }

    fn label(self, restore_parallel: usize) -> String {
        match self {
            Op::PgbbPlain => "pg_basebackup -Ft (plain)".into(),
            Op::PgbbLz4 => "pg_basebackup -Ft --compress=server-lz4".into(),
            Op::PgbrBackup => "pgBackRest backup (lz4, process-max 2)".into(),
            Op::PgbrBackupS3 => "pgBackRest backup (lz4, p-max 2, S3 https)".into(),
            Op::CbdrBackup(Repo::Fs) => "cbdr backup-push (lz4+enc, fs)".into(),
            Op::CbdrBackup(Repo::Garage) => "cbdr backup-push (lz4+enc, S3 http)".into(),
            Op::CbdrBackup(Repo::GarageTls) => "cbdr backup-push (lz4+enc, S3 https)".into(),
            Op::CbdrBackupPinned(Repo::Fs) => "cbdr backup-push (fs, pinned cpu 0)".into(),
            Op::CbdrBackupPinned(Repo::Garage) => "cbdr backup-push (S3 http, pinned cpu 0)".into(),
            Op::CbdrBackupPinned(Repo::GarageTls) => {
                "cbdr backup-push (S3 https, pinned cpu 0)".into()
            }
            Op::PgbrRestore => "pgBackRest restore (process-max 2)".into(),
            Op::PgbrRestoreS3 => "pgBackRest restore (p-max 2, S3 https)".into(),
            Op::CbdrRestore(Repo::Fs) => format!("cbdr restore (fs, parallel {restore_parallel})"),
            Op::CbdrRestore(Repo::Garage) => {
                format!("cbdr restore (S3 http, parallel {restore_parallel})")
            }
            Op::CbdrRestore(Repo::GarageTls) => {
                format!("cbdr restore (S3 https, parallel {restore_parallel})")
            }
        }
    }

    fn is_cbdr(self) -> bool {
        matches!(
            self,
            Op::CbdrBackup(_) | Op::CbdrBackupPinned(_) | Op::CbdrRestore(_)
        )
    }

    /// The repository whose WAL push the backup waits for (put first in
    /// archive_command): 0 cbdr fs, 1 cbdr Garage, 2 pgBackRest.
    fn push_key(self) -> Option<u8> {
        match self {
            Op::CbdrBackup(Repo::Fs) | Op::CbdrBackupPinned(Repo::Fs) => Some(0),
            Op::CbdrBackup(_) | Op::CbdrBackupPinned(_) => Some(1),
            Op::PgbrBackup | Op::PgbrBackupS3 => Some(2),
            _ => None,
        }
    }

    /// The pgBackRest repository (1 = local directory, 2 = S3).
    fn pgbr_repo(self) -> Option<u8> {
        match self {
            Op::PgbrBackup | Op::PgbrRestore => Some(1),
            Op::PgbrBackupS3 | Op::PgbrRestoreS3 => Some(2),
            _ => None,
        }
    }
}

fn opts() -> Opts {
    let kinds = env_or("CBDR_BENCH_KINDS", "pgbench,random")
        .split(',')
        .map(|k| match k.trim() {
            "pgbench" => Kind::Pgbench,
            "random" => Kind::Random,
            other => panic!("CBDR_BENCH_KINDS: unknown kind {other:?} (pgbench, random)"),
        })
        .collect();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    Opts {
        scale: env_num("CBDR_BENCH_SCALE", "100").max(1) as u32,
        kinds,
        repeat: env_num("CBDR_BENCH_REPEAT", "1").max(1),
        restore_parallel: env_num("CBDR_BENCH_RESTORE_PARALLEL", "4").max(1),
        gen_jobs: env_num("CBDR_BENCH_GEN_JOBS", "2").max(1),
        cbdr_source: PathBuf::from(env_or("CBDR_BENCH_CBDR", env!("CARGO_BIN_EXE_cbdr"))),
        pin: env_num("CBDR_BENCH_PIN", "1") != 0 && cpus >= 2,
        cpus,
    }
}

/// Total size and count of the regular files under `dir`, skipping the
/// top-level entries named in `skip_top` and files whose name fails `keep`.
fn tree_usage(dir: &Path, skip_top: &[&str], keep: &dyn Fn(&str) -> bool) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    let Ok(entries) = fs::read_dir(dir) else {
        return (0, 0);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if skip_top.contains(&name.as_str()) {
            continue;
        }
        let Ok(ty) = e.file_type() else { continue };
        if ty.is_dir() {
            let (b, f) = tree_usage(&e.path(), &[], keep);
            bytes += b;
            files += f;
        } else if ty.is_file() && keep(&name) {
            bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            files += 1;
        }
    }
    (bytes, files)
}

fn all_files(_: &str) -> bool {
    true
}

/// Files a base backup carries (pg_basebackup and pgBackRest leave out the
/// relation cache init files).
fn backed_up_file(name: &str) -> bool {
    name != "pg_internal.init" && !name.starts_with("pgsql_tmp")
}

/// CPU seconds of the exited (reaped) children of `pid`: for the
/// postmaster, the walsenders and backends that served a finished command.
fn reaped_children_cpu(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start with field 3 (state); cutime and cstime
    // are fields 16 and 17.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let cutime: f64 = fields.get(13)?.parse().ok()?;
    let cstime: f64 = fields.get(14)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((cutime + cstime) / ticks)
}

/// One run of one contender.
struct Outcome {
    kind: Kind,
    op: Op,
    round: usize,
    seconds: Option<f64>,
    max_rss: Option<u64>,
    tree_rss: Option<u64>,
    cpu_seconds: Option<f64>,
    server_cpu_seconds: Option<f64>,
    /// CPU of the Garage server and of the TLS terminator during the run.
    garage_cpu_seconds: Option<f64>,
    tls_cpu_seconds: Option<f64>,
    stored_bytes: Option<u64>,
    load_before: String,
    load_after: String,
    notes: Vec<String>,
}

impl Outcome {
    fn new(kind: Kind, op: Op, round: usize) -> Outcome {
        Outcome {
            kind,
            op,
            round,
            seconds: None,
            max_rss: None,
            tree_rss: None,
            cpu_seconds: None,
            server_cpu_seconds: None,
            garage_cpu_seconds: None,
            tls_cpu_seconds: None,
            stored_bytes: None,
            load_before: String::new(),
            load_after: String::new(),
            notes: Vec::new(),
        }
    }

    fn json(&self, restore_parallel: usize) -> Value {
        json!({
            "kind": self.kind.name(),
            "contender": self.op.id(),
            "label": self.op.label(restore_parallel),
            "round": self.round,
            "seconds": self.seconds,
            "max_rss_bytes": self.max_rss,
            "tree_rss_bytes": self.tree_rss,
            "cpu_seconds": self.cpu_seconds,
            "server_cpu_seconds": self.server_cpu_seconds,
            "garage_cpu_seconds": self.garage_cpu_seconds,
            "tls_cpu_seconds": self.tls_cpu_seconds,
            "stored_bytes": self.stored_bytes,
            "loadavg_before": self.load_before,
            "loadavg_after": self.load_after,
            "notes": self.notes,
        })
    }
}

/// One data set's server, repositories and tools.
struct Bench<'a> {
    opts: &'a Opts,
    kind: Kind,
    /// Declared before `dir`: the server stops before its archive_command's
    /// binary and repositories go.
    pg: PgServer,
    dir: tempfile::TempDir,
    cbdr: PathBuf,
    fs_config: PathBuf,
    fs_repo: PathBuf,
    garage_config: Option<PathBuf>,
    /// The same bucket through the TLS terminator.
    garage_tls_config: Option<PathBuf>,
    pgbr_config: Option<PathBuf>,
    /// pgBackRest has repo2 on Garage through the TLS terminator.
    pgbr_s3: bool,
    tls: Option<&'a TlsTerminator>,
    garage_pid: Option<u32>,
    pgbr_repo: PathBuf,
    /// The data directory without pg_wal, after loading.
    data_bytes: u64,
    data_files: u64,
    /// Files and bytes under base/ (what a restore must reproduce).
    base_usage: (u64, u64),
    relation_bytes: u64,
    generate_secs: f64,
    generate_note: String,
    /// The last good backup of each tool, for its restore.
    last_backup: HashMap<Op, String>,
    runs: usize,
}

impl<'a> Bench<'a> {
    fn start(
        opts: &'a Opts,
        kind: Kind,
        target_bytes: u64,
        tls: Option<&'a TlsTerminator>,
    ) -> Bench<'a> {
        let dir = pg_user_dir(&format!("brbench-{}", kind.name()));
        let cbdr = copy_cbdr(&opts.cbdr_source, dir.path());
        let pg = PgServer::builder()
            // Loading: no WAL for tables created in the loading transaction.
            .conf("wal_level = minimal")
            .conf("max_wal_senders = 0")
            .conf("archive_mode = off")
            .conf("synchronous_commit = off")
            .conf("shared_buffers = '256MB'")
            .conf("max_wal_size = '4GB'")
            .conf("checkpoint_timeout = '1d'")
            .conf("autovacuum = off")
            .conf("maintenance_work_mem = '256MB'")
            .start();
        let mut b = Bench {
            opts,
            kind,
            dir,
            cbdr,
            pg,
            fs_config: PathBuf::new(),
            fs_repo: PathBuf::new(),
            garage_config: None,
            garage_tls_config: None,
            pgbr_config: None,
            pgbr_s3: false,
            tls,
            garage_pid: common::garage::garage_bin().map(|_| common::garage::garage().pid()),
            pgbr_repo: PathBuf::new(),
            data_bytes: 0,
            data_files: 0,
            base_usage: (0, 0),
            relation_bytes: 0,
            generate_secs: 0.0,
            generate_note: String::new(),
            last_backup: HashMap::new(),
            runs: 0,
        };
        let t0 = Instant::now();
        match kind {
            Kind::Pgbench => b.load_pgbench(),
            Kind::Random => b.load_random(target_bytes),
        }
        b.pg.psql("vacuum (freeze, analyze)");
        b.pg.psql("checkpoint");
        b.generate_secs = t0.elapsed().as_secs_f64();
        b.relation_bytes =
            b.pg.psql(
                "select sum(pg_total_relation_size(oid))::bigint from pg_class \
                 where relkind in ('r', 'm') and relnamespace = 'public'::regnamespace",
            )
            .parse()
            .unwrap_or(0);

        // Backups need WAL and archiving.
        b.pg.stop();
        b.pg.append_conf("wal_level = replica\nmax_wal_senders = 10\narchive_mode = on");
        b.pg.start();
        b.configure_tools();
        b.set_archive_order(None);
        b.check_archiving();
        b.pg.psql("checkpoint");
        let data_dir = b.pg.data_dir().to_path_buf();
        (b.data_bytes, b.data_files) = tree_usage(&data_dir, &["pg_wal"], &all_files);
        b.base_usage = tree_usage(&data_dir.join("base"), &[], &backed_up_file);
        b
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

    fn load_pgbench(&mut self) {
        let scale = self.opts.scale.to_string();
        self.pgbench(&["-i", "-q", "-s", &scale]);
        self.generate_note = format!("pgbench -i -s {scale}");
    }

    /// The random row: base64 of 40 random bytes (incompressible for lz4),
    /// random numeric/float/int columns and a few repetitive words.
    fn random_select(from: u64, to: u64) -> String {
        format!(
            "select g, round((random() * 1e9)::numeric, 2), random(), (random() * 2e9)::int, \
             encode(gen_random_bytes(40), 'base64') || ' customer ' || (random() * 1000)::int \
             || ' ordered item ' || (random() * 100000)::int || ' status ' \
             || (array['shipped', 'pending', 'delivered', 'returned', 'cancelled'])[1 + (random() * 4)::int] \
             || ' note ' || repeat('x', (random() * 30)::int) \
             from generate_series({from}, {to}) g"
        )
    }

    /// Tables of random rows (one per loading session, each created and
    /// filled in one transaction) with a primary key, about `target` bytes
    /// with their indexes.
    fn load_random(&mut self, target: u64) {
        const COLUMNS: &str = "(id bigint, amount numeric, ratio float8, qty int, note text)";
        self.pg.psql("create extension if not exists pgcrypto");
        // Calibration: heap bytes per row; a bigint btree adds ~22 bytes.
        let calib_rows = 50_000u64;
        self.pg.psql(&format!(
            "create table bench_calib {COLUMNS}; insert into bench_calib {}",
            Self::random_select(1, calib_rows)
        ));
        let heap: f64 = self
            .pg
            .psql("select pg_relation_size('bench_calib')")
            .parse()
            .expect("relation size");
        self.pg.psql("drop table bench_calib");
        let per_row = heap / calib_rows as f64 + 22.0;
        let rows = (target as f64 / per_row).round().max(1000.0) as u64;
        let jobs = self.opts.gen_jobs as u64;
        let per_job = rows.div_ceil(jobs);
        let pg = &self.pg;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..jobs)
                .map(|j| {
                    let from = j * per_job + 1;
                    let to = ((j + 1) * per_job).min(rows);
                    s.spawn(move || {
                        pg.psql(&format!(
                            "begin; create table bench_random_{j} {COLUMNS}; \
                             insert into bench_random_{j} {}; commit; \
                             alter table bench_random_{j} add primary key (id);",
                            Self::random_select(from, to)
                        ))
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("loading session");
            }
        });
        self.generate_note = format!(
            "{rows} random rows (~{per_row:.0} bytes each with the index) in {jobs} table(s) with a primary key, \
             target {:.0} MB",
            target as f64 / MB
        );
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The cbdr configs (fs and Garage) and pgBackRest's, and the stanza.
    fn configure_tools(&mut self) {
        let key_file = self.path("key");
        fs::write(&key_file, format!("{KEY_HEX}\n")).unwrap();
        let codec = format!(
            "\n[compression]\nmethod = \"lz4\"\n\n[encryption]\nkey_file = \"{}\"\n\n\
             [archive]\npush_concurrency = 1\n",
            key_file.display()
        );
        self.fs_repo = self.path("cbdr-repo");
        self.fs_config = self.path("cbdr-fs.toml");
        fs::write(
            &self.fs_config,
            format!(
                "[storage]\ntype = \"fs\"\npath = \"{}\"\n{codec}",
                self.fs_repo.display()
            ),
        )
        .unwrap();
        let mut pgbr_s3 = String::new();
        if common::garage::garage_bin().is_some() {
            let mut target = common::garage::bucket(&format!("brbench-{}", self.kind.name()));
            let config = self.path("cbdr-garage.toml");
            fs::write(&config, format!("{}{codec}", target.config_toml(""))).unwrap();
            self.garage_config = Some(config);
            if let Some(tls) = self.tls {
                let ca = self.path("s3-ca.pem");
                fs::copy(&tls.ca_file, &ca).unwrap();
                target.endpoint = tls.endpoint.clone();
                let config = self.path("cbdr-garage-tls.toml");
                fs::write(
                    &config,
                    format!(
                        "{}ca_file = \"{}\"\n{codec}",
                        target.config_toml(""),
                        ca.display()
                    ),
                )
                .unwrap();
                self.garage_tls_config = Some(config);
                let pgbr = common::garage::bucket(&format!("brbench-pgbr-{}", self.kind.name()));
                pgbr_s3 = format!(
                    "repo2-type=s3\n\
                     repo2-path=/pgbackrest\n\
                     repo2-retention-full=100\n\
                     repo2-s3-bucket={bucket}\n\
                     repo2-s3-endpoint=127.0.0.1\n\
                     repo2-storage-port={port}\n\
                     repo2-storage-verify-tls=n\n\
                     repo2-s3-uri-style=path\n\
                     repo2-s3-region={region}\n\
                     repo2-s3-key={key}\n\
                     repo2-s3-key-secret={secret}\n",
                    bucket = pgbr.bucket,
                    port = tls.port,
                    region = pgbr.region,
                    key = pgbr.access_key_id,
                    secret = pgbr.secret_access_key,
                );
            }
        }
        self.pgbr_repo = self.path("pgbackrest-repo");
        if Command::new("pgbackrest").arg("version").output().is_ok() {
            let conf = self.path("pgbackrest.conf");
            let run = self.dir.path();
            let text = format!(
                "[global]\n\
                 repo1-path={repo}\n\
                 repo1-retention-full=100\n\
                 {pgbr_s3}\
                 lock-path={run}/pgbackrest-lock\n\
                 log-path={run}/pgbackrest-log\n\
                 spool-path={run}/pgbackrest-spool\n\
                 compress-type=lz4\n\
                 process-max=2\n\
                 start-fast=y\n\
                 log-level-console=warn\n\
                 \n[{STANZA}]\n\
                 pg1-path={data}\n\
                 pg1-port={port}\n\
                 pg1-socket-path={socket}\n",
                repo = self.pgbr_repo.display(),
                run = run.display(),
                data = self.pg.data_dir().display(),
                port = self.pg.port(),
                socket = self.pg.socket_dir().display(),
            );
            fs::write(&conf, text).unwrap();
            for d in ["pgbackrest-lock", "pgbackrest-log", "pgbackrest-spool"] {
                fs::create_dir_all(self.path(d)).unwrap();
            }
            fs::create_dir_all(&self.pgbr_repo).unwrap();
            self.pgbr_config = Some(conf);
            self.pgbr_s3 = !pgbr_s3.is_empty();
        }
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600)).unwrap();
        chown_to_pg(self.dir.path());
        common::init_repo(&self.cbdr.to_string_lossy(), &self.fs_config);
        if let Some(config) = &self.garage_config {
            common::init_repo(&self.cbdr.to_string_lossy(), config);
        }
        if let Some(config) = &self.garage_tls_config {
            // The same repository over https: it answers.
            run(
                pg_command(&self.cbdr)
                    .arg("--config")
                    .arg(config)
                    .arg("list"),
                "cbdr list over https",
            );
        }
        if let Some(conf) = &self.pgbr_config {
            run(
                pg_command("pgbackrest")
                    .arg(format!("--config={}", conf.display()))
                    .arg(format!("--stanza={STANZA}"))
                    .arg("stanza-create"),
                "pgbackrest stanza-create",
            );
        }
    }

    fn cbdr_push(&self, config: &Path) -> String {
        format!(
            "{} --config {} wal-push %p",
            self.cbdr.display(),
            config.display()
        )
    }

    /// archive_command = every repository's push, `first`'s first.
    fn set_archive_order(&self, first: Option<Op>) {
        let mut pushes: Vec<(Option<u8>, String)> =
            vec![(Some(0), self.cbdr_push(&self.fs_config))];
        if let Some(c) = &self.garage_config {
            pushes.push((Some(1), self.cbdr_push(c)));
        }
        if let Some(c) = &self.pgbr_config {
            pushes.push((
                Some(2),
                format!(
                    "pgbackrest --config={} --stanza={STANZA} archive-push %p",
                    c.display()
                ),
            ));
        }
        let first = first.and_then(Op::push_key);
        pushes.sort_by_key(|(key, _)| *key != first);
        let command = pushes
            .into_iter()
            .map(|(_, c)| c)
            .collect::<Vec<_>>()
            .join(" && ");
        self.pg.psql(&format!(
            "alter system set archive_command = {}",
            sql_literal(&command)
        ));
        self.pg.psql("select pg_reload_conf()");
        // The archiver rereads its configuration on its next loop.
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Switches WAL and waits until the archiver stored the segment.
    fn check_archiving(&self) {
        self.pg.psql(
            "create table if not exists bench_archive_check (x int); \
             insert into bench_archive_check values (1);",
        );
        let seg = self.pg.psql("select pg_walfile_name(pg_switch_wal())");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let row = self.pg.psql(
                "select coalesce(last_archived_wal, ''), failed_count, coalesce(last_failed_wal, '') \
                 from pg_stat_archiver",
            );
            let fields: Vec<&str> = row.split('|').collect();
            if fields[0] >= seg.as_str() {
                return;
            }
            assert!(
                fields[1] == "0" && Instant::now() < deadline,
                "archiving does not work (pg_stat_archiver: {row}); server log:\n{}",
                self.pg.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn skip_reason(&self, op: Op) -> Option<String> {
        match op {
            Op::PgbrBackup | Op::PgbrRestore | Op::PgbrBackupS3 | Op::PgbrRestoreS3
                if self.pgbr_config.is_none() =>
            {
                Some("skipped: pgbackrest not installed".into())
            }
            Op::CbdrBackup(Repo::Garage)
            | Op::CbdrBackupPinned(Repo::Garage)
            | Op::CbdrRestore(Repo::Garage)
                if self.garage_config.is_none() =>
            {
                Some("skipped: garage not found (see .ci/run)".into())
            }
            Op::CbdrBackup(Repo::GarageTls)
            | Op::CbdrBackupPinned(Repo::GarageTls)
            | Op::CbdrRestore(Repo::GarageTls)
            | Op::PgbrBackupS3
            | Op::PgbrRestoreS3
                if self.garage_tls_config.is_none()
                    || (op.pgbr_repo() == Some(2) && !self.pgbr_s3) =>
            {
                Some("skipped: needs garage and stunnel4 (apt-get install -y stunnel4)".into())
            }
            Op::CbdrBackupPinned(_) if !self.opts.pin => {
                Some("skipped: CBDR_BENCH_PIN=0 (or fewer than 2 CPUs)".into())
            }
            Op::PgbrRestore | Op::PgbrRestoreS3 | Op::CbdrRestore(_) => {
                let backup = match op {
                    Op::PgbrRestore => Op::PgbrBackup,
                    Op::PgbrRestoreS3 => Op::PgbrBackupS3,
                    Op::CbdrRestore(r) => Op::CbdrBackup(r),
                    _ => unreachable!(),
                };
                (!self.last_backup.contains_key(&backup))
                    .then(|| "skipped: no backup to restore".into())
            }
            _ => None,
        }
    }

    fn cbdr_config(&self, repo: Repo) -> &Path {
        match repo {
            Repo::Fs => &self.fs_config,
            Repo::Garage => self.garage_config.as_deref().expect("garage configured"),
            Repo::GarageTls => self
                .garage_tls_config
                .as_deref()
                .expect("garage over https configured"),
        }
    }

    fn pgbr_command(&self, repo: u8) -> Command {
        let mut cmd = pg_command("pgbackrest");
        cmd.arg(format!(
            "--config={}",
            self.pgbr_config.as_ref().expect("pgbackrest").display()
        ))
        .arg(format!("--stanza={STANZA}"))
        .arg(format!("--repo={repo}"));
        cmd
    }

    /// pgBackRest's backups in repository `repo`: label → stored bytes.
    fn pgbr_info(&self, repo: u8) -> HashMap<String, Option<u64>> {
        if self.pgbr_config.is_none() || (repo == 2 && !self.pgbr_s3) {
            return HashMap::new();
        }
        let mut cmd = self.pgbr_command(repo);
        cmd.args(["--output=json", "info"]);
        let Ok(out) = cmd.output() else {
            return HashMap::new();
        };
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let mut labels = HashMap::new();
        for stanza in doc.as_array().into_iter().flatten() {
            for b in stanza["backup"].as_array().into_iter().flatten() {
                if let Some(label) = b["label"].as_str() {
                    labels.insert(label.to_string(), b["info"]["repository"]["delta"].as_u64());
                }
            }
        }
        labels
    }

    fn pgbr_labels(&self) -> HashSet<String> {
        fs::read_dir(self.pgbr_repo.join("backup").join(STANZA))
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .filter(|n| n.ends_with('F') || n.ends_with('I') || n.ends_with('D'))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn measure(&mut self, op: Op, round: usize) -> Outcome {
        let mut o = Outcome::new(self.kind, op, round);
        if let Some(reason) = self.skip_reason(op) {
            o.notes.push(reason);
            return o;
        }
        self.runs += 1;
        let tag = format!("run{}-{}", self.runs, op.id());
        let out_dir = self.path(&tag);
        let pgbr_before = self.pgbr_labels();
        let pgbr_s3_before = self.pgbr_info(2);
        match op {
            Op::PgbrBackup | Op::PgbrBackupS3 | Op::CbdrBackup(_) | Op::CbdrBackupPinned(_) => {
                self.set_archive_order(Some(op))
            }
            Op::PgbbPlain | Op::PgbbLz4 => {}
            Op::PgbrRestore | Op::PgbrRestoreS3 | Op::CbdrRestore(_) => {
                fs::create_dir(&out_dir).unwrap();
                fs::set_permissions(&out_dir, fs::Permissions::from_mode(0o700)).unwrap();
                chown_to_pg(&out_dir);
            }
        }
        let cmd = match op {
            Op::PgbbPlain | Op::PgbbLz4 => {
                let mut c = pg_command(pg_bin("pg_basebackup"));
                c.args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
                    .arg(self.pg.port().to_string())
                    .arg("-D")
                    .arg(&out_dir)
                    .args(["-Ft", "--checkpoint=fast"]);
                if op == Op::PgbbLz4 {
                    c.arg("--compress=server-lz4");
                }
                c
            }
            Op::PgbrBackup | Op::PgbrBackupS3 => {
                let mut c = self.pgbr_command(op.pgbr_repo().unwrap_or(1));
                c.args(["--type=full", "backup"]);
                c
            }
            Op::CbdrBackup(repo) | Op::CbdrBackupPinned(repo) => {
                let mut c = if matches!(op, Op::CbdrBackupPinned(_)) {
                    let mut c = pg_command("taskset");
                    c.args(["-c", "0"]).arg(&self.cbdr);
                    c
                } else {
                    pg_command(&self.cbdr)
                };
                c.arg("--config")
                    .arg(self.cbdr_config(repo))
                    .arg("backup-push")
                    .env("PGHOST", "127.0.0.1")
                    .env("PGPORT", self.pg.port().to_string())
                    .env("PGUSER", "postgres");
                c
            }
            Op::PgbrRestore | Op::PgbrRestoreS3 => {
                let backup = if op == Op::PgbrRestore {
                    Op::PgbrBackup
                } else {
                    Op::PgbrBackupS3
                };
                let mut c = self.pgbr_command(op.pgbr_repo().unwrap_or(1));
                c.arg(format!("--pg1-path={}", out_dir.display()))
                    .arg(format!("--set={}", self.last_backup[&backup]))
                    .arg("restore");
                c
            }
            Op::CbdrRestore(repo) => {
                let mut c = pg_command(&self.cbdr);
                c.arg("--config")
                    .arg(self.cbdr_config(repo))
                    .arg("restore")
                    .arg("--target-dir")
                    .arg(&out_dir)
                    .arg("--backup")
                    .arg(&self.last_backup[&Op::CbdrBackup(repo)])
                    .arg("--parallel")
                    .arg(self.opts.restore_parallel.to_string());
                c
            }
        };
        self.pg.psql("checkpoint");
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
        // Server processes that served a command are counted once the
        // postmaster reaped them.
        let postmaster = self.pg.postmaster_pid().expect("the server runs");
        std::thread::sleep(Duration::from_millis(300));
        let server_cpu_before = reaped_children_cpu(postmaster);
        let pinned = matches!(op, Op::CbdrBackupPinned(_));
        let last_cpu = self.opts.cpus.saturating_sub(1).to_string();
        if pinned {
            for pid in self.garage_pid.into_iter().chain(self.tls.map(|t| t.pid)) {
                if !pin_process(pid, &last_cpu) {
                    o.notes
                        .push(format!("could not pin process {pid} to CPU {last_cpu}"));
                }
            }
        }
        let garage_before = self.garage_pid.and_then(process_cpu);
        let tls_before = self.tls.and_then(|t| process_cpu(t.pid));
        o.load_before = loadavg();
        let t = timed(cmd, self.dir.path(), &tag, Some(SAMPLE));
        o.load_after = loadavg();
        o.garage_cpu_seconds = garage_before
            .zip(self.garage_pid.and_then(process_cpu))
            .map(|(a, b)| b - a);
        o.tls_cpu_seconds = tls_before
            .zip(self.tls.and_then(|t| process_cpu(t.pid)))
            .map(|(a, b)| b - a);
        if pinned {
            let all = format!("0-{}", self.opts.cpus.saturating_sub(1));
            for pid in self.garage_pid.into_iter().chain(self.tls.map(|t| t.pid)) {
                pin_process(pid, &all);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        if let (Some(a), Some(b)) = (server_cpu_before, reaped_children_cpu(postmaster)) {
            o.server_cpu_seconds = Some(b - a);
        }
        if !t.success {
            let tail: Vec<&str> = t.output.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            o.notes.push(format!(
                "FAILED ({}):\n    {}",
                t.status,
                tail.join("\n    ")
            ));
            let _ = fs::remove_dir_all(&out_dir);
            return o;
        }
        o.seconds = Some(t.seconds);
        o.max_rss = Some(t.max_rss);
        o.tree_rss = Some(t.tree_rss);
        o.cpu_seconds = Some(t.cpu_seconds);

        match op {
            Op::PgbbPlain | Op::PgbbLz4 => {
                o.stored_bytes = Some(tree_usage(&out_dir, &[], &all_files).0);
                let _ = fs::remove_dir_all(&out_dir);
            }
            Op::PgbrBackup => {
                let new: Vec<String> = self
                    .pgbr_labels()
                    .difference(&pgbr_before)
                    .cloned()
                    .collect();
                match new.as_slice() {
                    [label] => {
                        let dir = self.pgbr_repo.join("backup").join(STANZA).join(label);
                        o.stored_bytes = Some(tree_usage(&dir, &[], &all_files).0);
                        self.last_backup.insert(op, label.clone());
                    }
                    _ => o
                        .notes
                        .push(format!("cannot tell the new backup's label: {new:?}")),
                }
            }
            Op::PgbrBackupS3 => {
                let after = self.pgbr_info(2);
                let new: Vec<&String> = after
                    .keys()
                    .filter(|l| !pgbr_s3_before.contains_key(*l))
                    .collect();
                match new.as_slice() {
                    [label] => {
                        o.stored_bytes = after[*label];
                        self.last_backup.insert(op, (*label).clone());
                    }
                    _ => o.notes.push(format!(
                        "cannot tell the new backup's label in repo2: {new:?}"
                    )),
                }
            }
            Op::CbdrBackup(repo) | Op::CbdrBackupPinned(repo) => {
                // compress_on = auto says where it compressed, and why.
                if let Some(l) = t
                    .output
                    .lines()
                    .find(|l| l.contains("PostgreSQL compresses") || l.contains("on cbdr's cores"))
                {
                    o.notes.push(
                        l.split_once("INFO ")
                            .map_or(l, |(_, m)| m)
                            .trim()
                            .to_string(),
                    );
                }
                // "backup NAME complete: A to B, P MB, stored S MB"
                // (or "backup NAME complete (full): ...")
                let line = t.output.lines().find(|l| {
                    l.contains("backup ")
                        && (l.contains(" complete: ") || l.contains(" complete ("))
                });
                let name = line.and_then(|l| l.split_whitespace().nth(1));
                match name {
                    Some(name) => {
                        if repo == Repo::Fs {
                            let dir = self.fs_repo.join("seg-1").join("basebackups").join(name);
                            o.stored_bytes = Some(tree_usage(&dir, &[], &all_files).0);
                        } else {
                            o.stored_bytes = line
                                .and_then(|l| l.rsplit_once("stored "))
                                .and_then(|(_, s)| s.split_whitespace().next())
                                .and_then(|mb| mb.parse::<u64>().ok())
                                .map(|mb| mb * 1_000_000);
                        }
                        self.last_backup.insert(op, name.to_string());
                    }
                    None => o.notes.push(format!(
                        "no backup name in cbdr's output: {}",
                        t.output.trim()
                    )),
                }
            }
            Op::PgbrRestore | Op::PgbrRestoreS3 | Op::CbdrRestore(_) => {
                o.stored_bytes = Some(tree_usage(&out_dir, &[], &all_files).0);
                o.notes.extend(self.verify_restore(&out_dir, op.is_cbdr()));
                let _ = fs::remove_dir_all(&out_dir);
            }
        }
        o
    }

    /// Cheap checks of a restored directory; returns problems (or the
    /// verification done, prefixed "ok:").
    fn verify_restore(&self, dir: &Path, with_manifest: bool) -> Vec<String> {
        let mut notes = Vec::new();
        let mut problems = Vec::new();
        let version = fs::read_to_string(dir.join("PG_VERSION")).unwrap_or_default();
        let want = fs::read_to_string(self.pg.data_dir().join("PG_VERSION")).unwrap_or_default();
        if version.trim().is_empty() || version != want {
            problems.push(format!(
                "PG_VERSION {:?}, expected {:?}",
                version.trim(),
                want.trim()
            ));
        }
        if !dir.join("global/pg_control").is_file() {
            problems.push("no global/pg_control".into());
        }
        let base = tree_usage(&dir.join("base"), &[], &backed_up_file);
        if base != self.base_usage {
            problems.push(format!(
                "base/ holds {} files, {} bytes; the server {} files, {} bytes",
                base.1, base.0, self.base_usage.1, self.base_usage.0
            ));
        }
        let mut checks = vec![format!(
            "PG_VERSION, pg_control, base/ ({} files, {:.0} MB) as on the server",
            base.1,
            base.0 as f64 / MB
        )];
        if with_manifest {
            let t0 = Instant::now();
            let out = pg_command(pg_bin("pg_verifybackup"))
                .args(["-n", "-q"])
                .arg(dir)
                .output()
                .expect("run pg_verifybackup");
            if out.status.success() {
                checks.push(format!(
                    "pg_verifybackup -n ({:.1} s)",
                    t0.elapsed().as_secs_f64()
                ));
            } else {
                problems.push(format!(
                    "pg_verifybackup -n failed: {}{}",
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        if problems.is_empty() {
            notes.push(format!("restore verified: {}", checks.join(", ")));
        } else {
            notes.push(format!("RESTORE CHECK FAILED: {}", problems.join("; ")));
        }
        notes
    }
}

/// One table row: a contender on a data set over its rounds.
struct Row<'a> {
    kind: Kind,
    op: Op,
    runs: Vec<&'a Outcome>,
}

impl Row<'_> {
    /// The best run (shortest time); none if any run failed.
    fn best(&self) -> Option<&Outcome> {
        if self.runs.iter().any(|o| o.seconds.is_none()) {
            return None;
        }
        self.runs
            .iter()
            .copied()
            .min_by(|a, b| a.seconds.unwrap().total_cmp(&b.seconds.unwrap()))
    }

    fn seconds(&self) -> Option<f64> {
        self.best().and_then(|o| o.seconds)
    }

    fn max_rss(&self) -> Option<u64> {
        self.runs.iter().filter_map(|o| o.max_rss).max()
    }

    fn tree_rss(&self) -> Option<u64> {
        self.runs.iter().filter_map(|o| o.tree_rss).max()
    }

    fn stored(&self) -> Option<u64> {
        self.best().and_then(|o| o.stored_bytes)
    }

    fn cpu(&self) -> Option<f64> {
        self.best().and_then(|o| o.cpu_seconds)
    }

    fn server_cpu(&self) -> Option<f64> {
        self.best().and_then(|o| o.server_cpu_seconds)
    }

    fn garage_cpu(&self) -> Option<f64> {
        self.best().and_then(|o| o.garage_cpu_seconds)
    }

    fn tls_cpu(&self) -> Option<f64> {
        self.best().and_then(|o| o.tls_cpu_seconds)
    }
}

struct KindSummary {
    kind: Kind,
    data_bytes: u64,
    data_files: u64,
    relation_bytes: u64,
    generate_secs: f64,
    generate_note: String,
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
        "backup/restore bench: pgbench scale {}, data sets {:?}, {} round(s), cbdr restore --parallel {}",
        opts.scale,
        opts.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
        opts.repeat,
        opts.restore_parallel
    );
    println!("cbdr binary: {}", opts.cbdr_source.display());
    println!(
        "load average at start: {} ({} CPUs)",
        loadavg(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let pgbackrest_version = Command::new("pgbackrest")
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "not installed".into());
    println!("pgBackRest: {pgbackrest_version}");

    // One TLS terminator in front of Garage for the whole run.
    let tls_dir = tempfile::tempdir().expect("temp dir");
    let tls = match common::garage::garage_bin() {
        Some(_) => {
            match TlsTerminator::start(&common::garage::garage().s3_addr(), tls_dir.path()) {
                Ok(t) => {
                    println!(
                        "TLS terminator: stunnel at {} (pid {}) in front of Garage (pid {})",
                        t.endpoint,
                        t.pid,
                        common::garage::garage().pid()
                    );
                    Some(t)
                }
                Err(e) => {
                    println!("S3 https rows skipped: {e}");
                    None
                }
            }
        }
        None => None,
    };
    if tls.is_some() {
        chown_to_pg(tls_dir.path());
    }
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut summaries: Vec<KindSummary> = Vec::new();
    let mut pgbench_bytes: Option<u64> = None;
    for &kind in &opts.kinds {
        let target = pgbench_bytes.unwrap_or((opts.scale as f64 * PGBENCH_BYTES_PER_SCALE) as u64);
        println!("\n[{}] loading ...", kind.name());
        let mut bench = Bench::start(&opts, kind, target, tls.as_ref());
        if kind == Kind::Pgbench {
            pgbench_bytes = Some(bench.relation_bytes);
        }
        println!(
            "[{}] data directory {:.0} MB in {} files without pg_wal (tables and indexes {:.0} MB), loaded in {:.0} s: {}",
            kind.name(),
            bench.data_bytes as f64 / MB,
            bench.data_files,
            bench.relation_bytes as f64 / MB,
            bench.generate_secs,
            bench.generate_note
        );
        for round in 1..=opts.repeat {
            for op in BACKUPS.into_iter().chain(RESTORES) {
                let o = bench.measure(op, round);
                println!(
                    "[{}] {:<44} {:>7} s  CPU {:>5} s + server {:>5} s + garage {:>5} s + tls {:>5} s  max RSS {:>6} MB  tree {:>6} MB  stored {:>7} MB  load {} -> {}",
                    kind.name(),
                    op.label(opts.restore_parallel),
                    fmt_opt(o.seconds, 2),
                    fmt_opt(o.cpu_seconds, 2),
                    fmt_opt(o.server_cpu_seconds, 2),
                    fmt_opt(o.garage_cpu_seconds, 2),
                    fmt_opt(o.tls_cpu_seconds, 2),
                    fmt_opt(o.max_rss.map(|b| b as f64 / MB), 1),
                    fmt_opt(o.tree_rss.map(|b| b as f64 / MB), 1),
                    fmt_opt(o.stored_bytes.map(|b| b as f64 / MB), 0),
                    o.load_before,
                    o.load_after
                );
                for n in &o.notes {
                    println!("      {n}");
                }
                outcomes.push(o);
            }
        }
        summaries.push(KindSummary {
            kind,
            data_bytes: bench.data_bytes,
            data_files: bench.data_files,
            relation_bytes: bench.relation_bytes,
            generate_secs: bench.generate_secs,
            generate_note: bench.generate_note.clone(),
        });
        // Dropping the bench stops the server and removes its files.
    }

    let mut rows: Vec<Row> = Vec::new();
    for &kind in &opts.kinds {
        for op in BACKUPS.into_iter().chain(RESTORES) {
            let runs: Vec<&Outcome> = outcomes
                .iter()
                .filter(|o| o.kind == kind && o.op == op)
                .collect();
            if !runs.is_empty() {
                rows.push(Row { kind, op, runs });
            }
        }
    }
    let row = |kind: Kind, op: Op| rows.iter().find(|r| r.kind == kind && r.op == op);

    let mut report = String::new();
    writeln!(report, "\n=== base backups and restores ===").unwrap();
    writeln!(
        report,
        "MB = 10^6 bytes; MB/s = the data directory (without pg_wal) ÷ wall time; {}",
        if opts.repeat > 1 {
            format!(
                "wall s = the best of {} rounds (all rounds listed)",
                opts.repeat
            )
        } else {
            "one round, contenders in the order listed, warm page cache".into()
        }
    )
    .unwrap();
    writeln!(
        report,
        "CPU s = user+system time of the command (with its children); srv CPU s = of the server processes that \
         served it (walsender, backends; reaped by the postmaster); garage s / tls s = CPU of the Garage server and \
         of the stunnel TLS terminator during the command (from /proc/PID/stat; Garage also serves the WAL pushes \
         of archive_command); max RSS = ru_maxrss (largest single process); \
         tree RSS = peak sum over the process tree, sampled every 50 ms"
    )
    .unwrap();
    let mut ratios_json = Vec::new();
    for s in &summaries {
        let kind = s.kind;
        writeln!(
            report,
            "\n[{}] {}: data directory {:.0} MB ({} files) without pg_wal",
            kind.name(),
            s.generate_note,
            s.data_bytes as f64 / MB,
            s.data_files
        )
        .unwrap();
        writeln!(
            report,
            "{:<44} {:>7} {:>7} {:>10} {:>6} {:>6} {:>10} {:>8} {:>6} {:>11} {:>12}  runs (s)",
            "",
            "wall s",
            "MB/s",
            "stored MB",
            "ratio",
            "CPU s",
            "srv CPU s",
            "garage s",
            "tls s",
            "max RSS MB",
            "tree RSS MB"
        )
        .unwrap();
        let mut heading_done = (false, false);
        for r in rows.iter().filter(|r| r.kind == kind) {
            let restore = RESTORES.contains(&r.op);
            if !restore && !heading_done.0 {
                writeln!(report, "backup").unwrap();
                heading_done.0 = true;
            }
            if restore && !heading_done.1 {
                writeln!(report, "restore").unwrap();
                heading_done.1 = true;
            }
            let is_backup = BACKUPS.contains(&r.op);
            let stored = r.stored();
            let runs: Vec<String> = r.runs.iter().map(|o| fmt_opt(o.seconds, 2)).collect();
            writeln!(
                report,
                "  {:<42} {:>7} {:>7} {:>10} {:>6} {:>6} {:>10} {:>8} {:>6} {:>11} {:>12}  {}",
                r.op.label(opts.restore_parallel),
                fmt_opt(r.seconds(), 2),
                fmt_opt(r.seconds().map(|t| s.data_bytes as f64 / MB / t), 0),
                if is_backup {
                    fmt_opt(stored.map(|b| b as f64 / MB), 0)
                } else {
                    "-".into()
                },
                if is_backup {
                    fmt_opt(stored.map(|b| s.data_bytes as f64 / b.max(1) as f64), 2)
                } else {
                    "-".into()
                },
                fmt_opt(r.cpu(), 2),
                fmt_opt(r.server_cpu(), 2),
                fmt_opt(r.garage_cpu(), 2),
                fmt_opt(r.tls_cpu(), 2),
                fmt_opt(r.max_rss().map(|b| b as f64 / MB), 1),
                fmt_opt(r.tree_rss().map(|b| b as f64 / MB), 1),
                runs.join(" ")
            )
            .unwrap();
            for o in &r.runs {
                for n in o
                    .notes
                    .iter()
                    .filter(|n| !n.starts_with("restore verified"))
                {
                    writeln!(report, "      round {}: {n}", o.round).unwrap();
                }
            }
        }

        writeln!(report, "goals ({}):", kind.name()).unwrap();
        let mut goal = |what: String, value: Option<f64>, limit: f64, unit: &str, lt: bool| {
            let verdict = match value {
                Some(v) if (lt && v < limit) || (!lt && v <= limit) => "PASS",
                Some(_) => "MISS",
                None => "n/a",
            };
            let cmp = if lt { "<" } else { "≤" };
            writeln!(
                report,
                "  {what:<58} {:>8}{unit}  goal {cmp} {limit:.2}{unit}  {verdict}",
                fmt_opt(value, 2)
            )
            .unwrap();
            ratios_json.push(json!({
                "kind": kind.name(),
                "what": what,
                "value": value,
                "goal": limit,
                "verdict": verdict,
            }));
        };
        let secs = |op: Op| row(kind, op).and_then(Row::seconds);
        let ratio = |a: Op, b: Op| match (secs(a), secs(b)) {
            (Some(x), Some(y)) if y > 0.0 => Some(x / y),
            _ => None,
        };
        for repo in [Repo::Garage, Repo::GarageTls] {
            let name = if repo == Repo::Garage {
                "S3 http"
            } else {
                "S3 https"
            };
            goal(
                format!("backup-push ({name}) ÷ pgBackRest backup (S3 https)"),
                ratio(Op::CbdrBackup(repo), Op::PgbrBackupS3),
                GOAL_BACKUP_VS_PGBR,
                "×",
                false,
            );
            goal(
                format!("restore ({name}) ÷ pgBackRest restore (S3 https)"),
                ratio(Op::CbdrRestore(repo), Op::PgbrRestoreS3),
                GOAL_RESTORE_VS_PGBR,
                "×",
                false,
            );
        }
        goal(
            "backup-push S3 http ÷ fs, both pinned (cbdr cpu 0, Garage last)".into(),
            ratio(
                Op::CbdrBackupPinned(Repo::Garage),
                Op::CbdrBackupPinned(Repo::Fs),
            ),
            GOAL_S3_VS_FS,
            "×",
            false,
        );
        let cpu = |op: Op| row(kind, op).and_then(Row::cpu);
        goal(
            "backup-push cbdr's own CPU s: S3 http ÷ fs".into(),
            cpu(Op::CbdrBackup(Repo::Garage))
                .zip(cpu(Op::CbdrBackup(Repo::Fs)))
                .map(|(a, b)| a / b.max(0.01)),
            GOAL_S3_VS_FS,
            "×",
            false,
        );
        for repo in [Repo::Fs, Repo::Garage, Repo::GarageTls] {
            let name = match repo {
                Repo::Fs => "fs",
                Repo::Garage => "S3 http",
                Repo::GarageTls => "S3 https",
            };
            goal(
                format!("backup-push ({name}) ÷ pgBackRest backup"),
                ratio(Op::CbdrBackup(repo), Op::PgbrBackup),
                GOAL_BACKUP_VS_PGBR,
                "×",
                false,
            );
            goal(
                format!("backup-push ({name}) ÷ pg_basebackup --compress=server-lz4"),
                ratio(Op::CbdrBackup(repo), Op::PgbbLz4),
                GOAL_BACKUP_VS_PGBB_LZ4,
                "×",
                false,
            );
            goal(
                format!("restore ({name}) ÷ pgBackRest restore"),
                ratio(Op::CbdrRestore(repo), Op::PgbrRestore),
                GOAL_RESTORE_VS_PGBR,
                "×",
                false,
            );
        }
        let cbdr_rss = rows
            .iter()
            .filter(|r| r.kind == kind && r.op.is_cbdr())
            .filter_map(Row::max_rss)
            .max();
        goal(
            "cbdr peak RSS (largest over its backups and restores), MB".into(),
            cbdr_rss.map(|b| b as f64 / MB),
            GOAL_RSS_MB,
            "",
            true,
        );
    }
    writeln!(
        report,
        "\nthe issue's reference (2 cores, pgbench scale 100): pgBackRest lz4 backup ~4.5 s, restore ~2.6 s; \
         pg_basebackup server-lz4 ~2.3 s, plain 3-6 s"
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

    let json_path = bench_common::report_path("bench-backup-restore.json");
    let doc = json!({
        "scale": opts.scale,
        "repeat": opts.repeat,
        "restore_parallel": opts.restore_parallel,
        "pgbackrest_version": pgbackrest_version,
        "cbdr_binary": opts.cbdr_source.display().to_string(),
        "data_sets": summaries.iter().map(|s| json!({
            "kind": s.kind.name(),
            "data_dir_bytes": s.data_bytes,
            "data_dir_files": s.data_files,
            "relation_bytes": s.relation_bytes,
            "load_seconds": s.generate_secs,
            "loaded_by": s.generate_note,
        })).collect::<Vec<_>>(),
        "summary": rows.iter().map(|r| {
            let data = summaries.iter().find(|s| s.kind == r.kind).map(|s| s.data_bytes).unwrap_or(0);
            json!({
                "kind": r.kind.name(),
                "contender": r.op.id(),
                "label": r.op.label(opts.restore_parallel),
                "seconds": r.seconds(),
                "mb_per_second": r.seconds().map(|t| data as f64 / MB / t),
                "stored_bytes": if BACKUPS.contains(&r.op) { r.stored() } else { None },
                "cpu_seconds": r.cpu(),
                "server_cpu_seconds": r.server_cpu(),
                "garage_cpu_seconds": r.garage_cpu(),
                "tls_cpu_seconds": r.tls_cpu(),
                "max_rss_bytes": r.max_rss(),
                "tree_rss_bytes": r.tree_rss(),
            })
        }).collect::<Vec<_>>(),
        "goals": ratios_json,
        "runs": outcomes.iter().map(|o| o.json(opts.restore_parallel)).collect::<Vec<_>>(),
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
