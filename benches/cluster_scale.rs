//! Cluster scale: `cbdr backup-push` of a whole cluster (coordinator + N
//! segments, every instance backed up at once by its own `cbdr agent`,
//! straight to the repository) against `cbdr backup-push --content-id 0` of
//! the largest segment alone. The claim to show: a cluster backup takes
//! about as long as its largest segment, not as long as the sum.
//!
//! ```text
//! cargo bench --bench cluster_scale                        # scale 10 per segment (~150 MB)
//! CBDR_BENCH_SCALE=2 CBDR_BENCH_REPEAT=1 cargo bench --bench cluster_scale   # a quick run
//! ```
//!
//! The clusters come from the integration tests' fixture
//! (`tests/common/cluster.rs`): PostgreSQL 15 servers on loopback with 1 MiB
//! WAL segments, `archive_command = cbdr wal-push --content-id N`, a
//! filesystem repository with lz4 + encryption, one agent per instance.
//! Each segment is loaded with `pgbench -i -s S` under `wal_level =
//! minimal` (no archiving while loading), then `VACUUM (FREEZE, ANALYZE)`,
//! `CHECKPOINT`, and a restart with `wal_level = replica`, `archive_mode =
//! on`. The coordinator holds no data (a fresh initdb, ~30 MB).
//!
//! Series (S = `CBDR_BENCH_SCALE`, default 10: ~150 MB per segment):
//! * A: every segment holds S (1, 2, 4 segments): the total grows with N.
//!   On this 2-core machine every instance shares the same 2 cores and
//!   disk, so A grows with N here; on a real cluster each segment host has
//!   its own cores and disks.
//! * B: the same total 4·S split over 1, 2, 4 segments (4·S, 2·S each, S
//!   each: the 4-segment cluster is A's): what N adds when the work stays.
//! * C: 4 segments, one of S and three of scale 1 (~15 MB): time ≈ the big
//!   one's.
//!
//! In every cluster, each round runs first the single-server backup of
//! content 0 (always the largest segment; no agent, no restore point), then
//! the cluster backup; before each, `CHECKPOINT` everywhere and sync(2).
//! The tables show the best of `CBDR_BENCH_REPEAT` rounds (default 3; all
//! rounds are in the JSON).
//!
//! Peak memory: the coordinator's `cbdr backup-push` by wait4(2)'s
//! ru_maxrss; each agent's `cbdr agent` process by its VmHWM, reset
//! (`/proc/PID/clear_refs` = 5) before each cluster backup. The cluster
//! backup's time is split with the coordinator's log (`every instance done
//! in X s`: the agents' part; the rest is the cluster restore point, which
//! waits until every instance archived its point's WAL, and the record),
//! the agents' logs (each instance's job time) and the restore point's
//! `barrier_millis` (how long writers were held).
//!
//! Environment: `CBDR_BENCH_SCALE` (default 10), `CBDR_BENCH_REPEAT`
//! (default 3), `CBDR_BENCH_SERIES` (default `ABC`).
//!
//! Output: tables on stdout and the same as JSON in
//! `target/bench-cluster-scale.json`. Needs PostgreSQL 15 (`$PG_BIN`); runs
//! as root (PostgreSQL, the agents and cbdr then run as the OS user
//! `postgres`) or as an ordinary user.

#[path = "common.rs"]
mod bench_common;
#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use bench_common::{env_num, env_or, fmt_opt, loadavg, run, timed};
use common::cluster::{TestCluster, CBDR};
use common::pg::{pg_bin, pg_command};
use serde_json::{json, Value};

/// Sizes in MB = 10^6 bytes.
const MB: f64 = 1_000_000.0;

struct Opts {
    scale: u32,
    repeat: usize,
    series: Vec<char>,
}

fn opts() -> Opts {
    let series: Vec<char> = env_or("CBDR_BENCH_SERIES", "ABC")
        .to_ascii_uppercase()
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ',')
        .collect();
    for c in &series {
        assert!(
            matches!(c, 'A' | 'B' | 'C'),
            "CBDR_BENCH_SERIES: unknown series {c:?} (A, B, C)"
        );
    }
    Opts {
        scale: env_num("CBDR_BENCH_SCALE", "10").max(1) as u32,
        repeat: env_num("CBDR_BENCH_REPEAT", "3").max(1),
        series,
    }
}

/// One cluster shape: the pgbench scale of each segment (content 0 first,
/// always the largest).
#[derive(Clone, Debug)]
struct Layout {
    id: String,
    scales: Vec<u32>,
}

/// A series: its layouts in order of segment count.
struct Series {
    letter: char,
    title: String,
    layouts: Vec<String>,
}

fn plan(opts: &Opts) -> (Vec<Layout>, Vec<Series>) {
    let s = opts.scale;
    let mut layouts: Vec<Layout> = Vec::new();
    let mut add = |id: &str, scales: Vec<u32>| {
        if !layouts.iter().any(|l| l.id == id) {
            layouts.push(Layout {
                id: id.into(),
                scales,
            });
        }
    };
    let mut series = Vec::new();
    for &letter in &opts.series {
        match letter {
            'A' => {
                add("A1", vec![s]);
                add("A2", vec![s; 2]);
                add("A4", vec![s; 4]);
                series.push(Series {
                    letter,
                    title: format!(
                        "A: every segment holds pgbench scale {s}: the total grows with N"
                    ),
                    layouts: vec!["A1".into(), "A2".into(), "A4".into()],
                });
            }
            'B' => {
                add("B1", vec![4 * s]);
                add("B2", vec![2 * s; 2]);
                add("A4", vec![s; 4]);
                series.push(Series {
                    letter,
                    title: format!(
                        "B: the same total (pgbench scale {}) split over N segments",
                        4 * s
                    ),
                    layouts: vec!["B1".into(), "B2".into(), "A4".into()],
                });
            }
            'C' => {
                add("C4", vec![s, 1, 1, 1]);
                series.push(Series {
                    letter,
                    title: format!("C: 4 segments, one of scale {s} and three of scale 1"),
                    layouts: vec!["C4".into()],
                });
            }
            _ => unreachable!(),
        }
    }
    // Run in order of size within each series' first appearance.
    (layouts, series)
}

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The `cbdr` process at or under `pid` (the agent's child is `runuser`
/// when the bench runs as root).
fn cbdr_process(pid: u32) -> Option<u32> {
    if comm(pid) == "cbdr" {
        return Some(pid);
    }
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find_map(cbdr_process)
}

/// Resets a process's peak RSS to its current RSS; false if not allowed.
fn reset_peak_rss(pid: u32) -> bool {
    fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// A process's peak RSS (VmHWM), bytes.
fn peak_rss(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// User + system CPU seconds of one process (its threads included, its
/// children not).
fn process_cpu(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start with field 3 (state); utime and stime
    // are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) / ticks)
}

/// The number after `marker` in `text` (e.g. "done in 3.2 s").
fn number_after(text: &str, marker: &str) -> Option<f64> {
    let rest = &text[text.find(marker)? + marker.len()..];
    rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?
        .parse()
        .ok()
}

/// One single-server backup of content 0.
struct SingleRun {
    round: usize,
    seconds: Option<f64>,
    max_rss: u64,
    cpu_seconds: f64,
    plain_mb: Option<f64>,
    load_before: String,
    load_after: String,
    note: Option<String>,
}

/// One cluster backup.
struct ClusterRun {
    round: usize,
    seconds: Option<f64>,
    coord_rss: u64,
    coord_cpu: f64,
    /// Peak RSS of each instance's agent during the run, by content id.
    agent_rss: BTreeMap<i32, u64>,
    /// CPU time of each instance's agent process during the run.
    agent_cpu: BTreeMap<i32, f64>,
    /// Until every instance's backup was done (the coordinator's log).
    instances_secs: Option<f64>,
    /// Each agent's job time (its log).
    agent_job_secs: BTreeMap<i32, f64>,
    barrier_millis: Option<u64>,
    /// Plain bytes per content id (the cluster record).
    plain_bytes: BTreeMap<i32, u64>,
    stored_bytes: u64,
    load_before: String,
    load_after: String,
    note: Option<String>,
}

impl ClusterRun {
    fn largest_segment(&self) -> u64 {
        self.plain_bytes
            .iter()
            .filter(|(id, _)| **id >= 0)
            .map(|(_, b)| *b)
            .max()
            .unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.plain_bytes.values().sum()
    }

    /// The restore point and the record: what follows the instances.
    fn point_secs(&self) -> Option<f64> {
        Some(self.seconds? - self.instances_secs?)
    }

    fn agent_rss_max(&self) -> Option<u64> {
        self.agent_rss.values().copied().max()
    }

    fn json(&self) -> Value {
        json!({
            "round": self.round,
            "seconds": self.seconds,
            "coordinator_max_rss_bytes": self.coord_rss,
            "coordinator_cpu_seconds": self.coord_cpu,
            "agent_peak_rss_bytes": self.agent_rss.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "instances_seconds": self.instances_secs,
            "restore_point_and_record_seconds": self.point_secs(),
            "agent_cpu_seconds": self.agent_cpu.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "agent_job_seconds": self.agent_job_secs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "barrier_millis": self.barrier_millis,
            "plain_bytes": self.plain_bytes.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "stored_bytes": self.stored_bytes,
            "loadavg_before": self.load_before,
            "loadavg_after": self.load_after,
            "note": self.note,
        })
    }
}

struct LayoutResult {
    layout: Layout,
    load_secs: f64,
    single: Vec<SingleRun>,
    cluster: Vec<ClusterRun>,
}

impl LayoutResult {
    fn segments(&self) -> usize {
        self.layout.scales.len()
    }

    fn best_single(&self) -> Option<&SingleRun> {
        if self.single.iter().any(|r| r.seconds.is_none()) {
            return None;
        }
        self.single
            .iter()
            .min_by(|a, b| a.seconds.unwrap().total_cmp(&b.seconds.unwrap()))
    }

    fn best_cluster(&self) -> Option<&ClusterRun> {
        if self.cluster.iter().any(|r| r.seconds.is_none()) {
            return None;
        }
        self.cluster
            .iter()
            .min_by(|a, b| a.seconds.unwrap().total_cmp(&b.seconds.unwrap()))
    }

    /// The run of median time (of an even count, the faster middle one).
    fn median_single(&self) -> Option<&SingleRun> {
        let mut runs: Vec<&SingleRun> = self.single.iter().collect();
        if runs.iter().any(|r| r.seconds.is_none()) {
            return None;
        }
        runs.sort_by(|a, b| a.seconds.unwrap().total_cmp(&b.seconds.unwrap()));
        runs.get(runs.len().saturating_sub(1) / 2).copied()
    }

    fn median_cluster(&self) -> Option<&ClusterRun> {
        let mut runs: Vec<&ClusterRun> = self.cluster.iter().collect();
        if runs.iter().any(|r| r.seconds.is_none()) {
            return None;
        }
        runs.sort_by(|a, b| a.seconds.unwrap().total_cmp(&b.seconds.unwrap()));
        runs.get(runs.len().saturating_sub(1) / 2).copied()
    }

    /// Cluster ÷ alone, of the median runs.
    fn ratio(&self) -> Option<f64> {
        Some(self.median_cluster()?.seconds? / self.median_single()?.seconds?)
    }

    /// Cluster ÷ alone, of the best runs.
    fn best_ratio(&self) -> Option<f64> {
        Some(self.best_cluster()?.seconds? / self.best_single()?.seconds?)
    }

    /// Peak RSS over every round.
    fn coord_rss(&self) -> Option<u64> {
        self.cluster
            .iter()
            .filter(|r| r.seconds.is_some())
            .map(|r| r.coord_rss)
            .max()
    }

    fn agent_rss(&self) -> Option<u64> {
        self.cluster.iter().filter_map(|r| r.agent_rss_max()).max()
    }

    fn single_rss(&self) -> Option<u64> {
        self.single
            .iter()
            .filter(|r| r.seconds.is_some())
            .map(|r| r.max_rss)
            .max()
    }
}

/// Loads each segment with pgbench (no WAL, no archiving), then restarts
/// every instance with archiving on. Returns the loading time.
fn load(c: &mut TestCluster, scales: &[u32]) -> f64 {
    let ports: Vec<u16> = c.servers.iter().map(|s| s.port()).collect();
    let restart = |c: &mut TestCluster, conf: &str| {
        for (i, s) in c.servers.iter_mut().enumerate() {
            s.stop();
            s.append_conf(conf);
            s.start();
            assert_eq!(
                s.port(),
                ports[i],
                "instance {i} came back on another port: the cluster config names the old one; run again"
            );
        }
    };
    let t0 = Instant::now();
    restart(
        c,
        "wal_level = minimal\nmax_wal_senders = 0\narchive_mode = off\nmax_wal_size = '4GB'",
    );
    std::thread::scope(|scope| {
        let handles: Vec<_> = scales
            .iter()
            .enumerate()
            .map(|(k, &scale)| {
                let s = &c.servers[k + 1];
                scope.spawn(move || {
                    let mut cmd = pg_command(pg_bin("pgbench"));
                    cmd.arg("-h")
                        .arg(s.socket_dir())
                        .arg("-p")
                        .arg(s.port().to_string())
                        .args(["-U", "postgres", "-i", "-q", "-s", &scale.to_string()])
                        .arg("postgres");
                    run(&mut cmd, &format!("pgbench -i -s {scale} (segment {k})"));
                    s.psql("vacuum (freeze, analyze)");
                    s.psql("checkpoint");
                })
            })
            .collect();
        for h in handles {
            h.join().expect("loading a segment");
        }
    });
    restart(
        c,
        "wal_level = replica\nmax_wal_senders = 10\narchive_mode = on\nmax_wal_size = '256MB'",
    );
    t0.elapsed().as_secs_f64()
}

/// CHECKPOINT on every instance, sync(2), a short pause.
fn settle(c: &TestCluster) {
    for s in &c.servers {
        s.psql("checkpoint");
    }
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::thread::sleep(Duration::from_millis(300));
}

fn cbdr_cmd(c: &TestCluster) -> Command {
    let mut cmd = pg_command(CBDR);
    cmd.arg("--config")
        .arg(&c.config)
        .arg("-v")
        .env("PGUSER", "postgres")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", c.coordinator().port().to_string());
    cmd
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n    ")
}

fn single_backup(c: &TestCluster, round: usize, runs: &mut usize) -> SingleRun {
    *runs += 1;
    settle(c);
    let mut cmd = cbdr_cmd(c);
    cmd.args(["backup-push", "--content-id", "0"])
        .env("PGPORT", c.servers[1].port().to_string());
    let load_before = loadavg();
    let t = timed(cmd, c.env.dir.path(), &format!("run{runs}-single"), None);
    let load_after = loadavg();
    // "backup NAME complete: A to B, P MB, stored S MB"
    let plain_mb = t
        .output
        .lines()
        .find(|l| l.starts_with("backup ") && l.contains(" complete: "))
        .and_then(|l| l.rsplit_once(", stored").map(|(a, _)| a))
        .and_then(|a| a.rsplit_once(", ").map(|(_, p)| p))
        .and_then(|p| p.trim_end_matches(" MB").parse().ok());
    SingleRun {
        round,
        seconds: t.success.then_some(t.seconds),
        max_rss: t.max_rss,
        cpu_seconds: t.cpu_seconds,
        plain_mb,
        load_before,
        load_after,
        note: (!t.success).then(|| format!("FAILED ({}):\n    {}", t.status, tail(&t.output, 15))),
    }
}

fn cluster_backup(c: &TestCluster, round: usize, runs: &mut usize) -> ClusterRun {
    *runs += 1;
    settle(c);
    let n = c.servers.len();
    let agents: Vec<Option<u32>> = (0..n)
        .map(|i| {
            c.agents[i]
                .as_ref()
                .and_then(|child| cbdr_process(child.id()))
        })
        .collect();
    let mut note = None;
    for pid in agents.iter().flatten() {
        if !reset_peak_rss(*pid) {
            note =
                Some("could not reset the agents' peak RSS: theirs is since they started".into());
        }
    }
    let log_offsets: Vec<usize> = (0..n).map(|i| c.agent_log_text(i).len()).collect();
    let cpu_before: Vec<Option<f64>> = agents.iter().map(|p| p.and_then(process_cpu)).collect();
    let mut cmd = cbdr_cmd(c);
    cmd.arg("backup-push");
    let load_before = loadavg();
    let t = timed(cmd, c.env.dir.path(), &format!("run{runs}-cluster"), None);
    let load_after = loadavg();
    let mut r = ClusterRun {
        round,
        seconds: None,
        coord_rss: t.max_rss,
        coord_cpu: t.cpu_seconds,
        agent_rss: BTreeMap::new(),
        agent_cpu: BTreeMap::new(),
        instances_secs: number_after(&t.output, "every instance done in "),
        agent_job_secs: BTreeMap::new(),
        barrier_millis: None,
        plain_bytes: BTreeMap::new(),
        stored_bytes: 0,
        load_before,
        load_after,
        note,
    };
    for (i, pid) in agents.iter().enumerate() {
        let id = i as i32 - 1;
        if let Some(rss) = pid.and_then(peak_rss) {
            r.agent_rss.insert(id, rss);
        }
        if let (Some(a), Some(b)) = (cpu_before[i], pid.and_then(process_cpu)) {
            r.agent_cpu.insert(id, b - a);
        }
        let log = c.agent_log_text(i);
        let new = log.get(log_offsets[i]..).unwrap_or("");
        if let Some(secs) = new
            .lines()
            .filter(|l| l.contains(&format!("backup of content {id} ")))
            .find_map(|l| number_after(l, ": done in "))
        {
            r.agent_job_secs.insert(id, secs);
        }
    }
    if !t.success {
        r.note = Some(format!(
            "FAILED ({}):\n    {}",
            t.status,
            tail(&t.output, 20)
        ));
        return r;
    }
    r.seconds = Some(t.seconds);
    // "cluster backup NAME complete in …"
    let name = t
        .output
        .lines()
        .find(|l| l.starts_with("cluster backup ") && l.contains(" complete in "))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(String::from);
    let listing: Value = serde_json::from_str(&c.ok(&["list", "--json"])).expect("list --json");
    if let Some(b) = listing["cluster"]["backups"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["name"].as_str() == name.as_deref()))
    {
        for s in b["segments"].as_array().into_iter().flatten() {
            let id = s["content_id"].as_i64().unwrap_or(-2) as i32;
            r.plain_bytes
                .insert(id, s["plain_bytes"].as_u64().unwrap_or(0));
            r.stored_bytes += s["stored_bytes"].as_u64().unwrap_or(0);
        }
        let point = b["restore_point"].as_str();
        r.barrier_millis = listing["cluster"]["restore_points"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["name"].as_str() == point))
            .and_then(|p| p["barrier_millis"].as_u64());
    } else {
        r.note = Some(format!(
            "the cluster backup {name:?} is not in `list --json`: {}",
            t.output.trim()
        ));
    }
    r
}

fn measure(opts: &Opts, layout: &Layout) -> LayoutResult {
    let n = layout.scales.len();
    println!(
        "\n[{}] {} segment(s) of pgbench scale {:?}: starting and loading ...",
        layout.id, n, layout.scales
    );
    let mut c = TestCluster::start(&format!("scale-{}", layout.id), n, None);
    let load_secs = load(&mut c, &layout.scales);
    c.start_agents();
    println!("[{}] loaded in {load_secs:.0} s", layout.id);
    let mut res = LayoutResult {
        layout: layout.clone(),
        load_secs,
        single: Vec::new(),
        cluster: Vec::new(),
    };
    let mut runs = 0;
    for round in 1..=opts.repeat {
        let s = single_backup(&c, round, &mut runs);
        println!(
            "[{}] round {round}: content 0 alone    {:>7} s  ({} MB)  RSS {:>5.1} MB  CPU {:>5.2} s  load {} -> {}",
            layout.id,
            fmt_opt(s.seconds, 2),
            fmt_opt(s.plain_mb, 0),
            s.max_rss as f64 / MB,
            s.cpu_seconds,
            s.load_before,
            s.load_after
        );
        if let Some(n) = &s.note {
            println!("      {n}");
        }
        res.single.push(s);
        let r = cluster_backup(&c, round, &mut runs);
        println!(
            "[{}] round {round}: cluster backup    {:>7} s  (instances {} s, point+record {} s, barrier {} ms; jobs {}; agent CPU {})  coordinator RSS {:.1} MB  agents RSS {} MB  load {} -> {}",
            layout.id,
            fmt_opt(r.seconds, 2),
            fmt_opt(r.instances_secs, 1),
            fmt_opt(r.point_secs(), 2),
            r.barrier_millis.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
            r.agent_job_secs
                .iter()
                .map(|(id, s)| format!("{id}:{s:.1}"))
                .collect::<Vec<_>>()
                .join(" "),
            r.agent_cpu
                .iter()
                .map(|(id, s)| format!("{id}:{s:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            r.coord_rss as f64 / MB,
            r.agent_rss
                .values()
                .map(|b| format!("{:.0}", *b as f64 / MB))
                .collect::<Vec<_>>()
                .join("/"),
            r.load_before,
            r.load_after
        );
        if let Some(n) = &r.note {
            println!("      {n}");
        }
        res.cluster.push(r);
    }
    // Dropping the cluster stops its agents and servers and removes it.
    res
}

fn mb(b: Option<u64>) -> Option<f64> {
    b.map(|b| b as f64 / MB)
}

fn main() {
    // `cargo bench` passes `--bench` (and maybe a filter): ignored.
    let opts = opts();
    let started = Instant::now();
    let (layouts, series) = plan(&opts);
    println!(
        "cluster scale bench: pgbench scale {} per segment, series {}, {} round(s)",
        opts.scale,
        opts.series.iter().collect::<String>(),
        opts.repeat
    );
    println!("cbdr binary: {CBDR}");
    let load_start = loadavg();
    println!(
        "load average at start: {load_start} ({} CPUs)",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    let results: Vec<LayoutResult> = layouts.iter().map(|l| measure(&opts, l)).collect();
    let by_id = |id: &str| results.iter().find(|r| r.layout.id == id);

    let mut report = String::new();
    writeln!(
        report,
        "\n=== cluster backup-push: time against the largest segment ==="
    )
    .unwrap();
    writeln!(
        report,
        "MB = 10^6 bytes (plain, as backed up, the coordinator's included in total); times are the median run of {} \
         (best ratio = best cluster ÷ best alone); alone s = `backup-push --content-id 0` of the largest segment by \
         itself; ratio = cluster ÷ alone; inst s = until every agent was done; point s = cluster restore point + \
         record after that; barr = writers held (ms); CPU = the largest segment's agent during the cluster backup, \
         and the alone backup; RSS MB = peak (coordinator: ru_maxrss; agents: VmHWM, the largest agent; alone: \
         ru_maxrss); load = 1-minute load average before each cluster run",
        opts.repeat
    )
    .unwrap();
    let mut series_json = Vec::new();
    for s in &series {
        writeln!(report, "\n{}", s.title).unwrap();
        writeln!(
            report,
            "  {:<6} {:>4} {:>8} {:>6} {:>7} {:>9} {:>5} {:>5} {:>6} {:>7} {:>4} {:>9} {:>9} {:>5} {:>5} {:>5}  load",
            "layout",
            "segs",
            "largest",
            "total",
            "alone s",
            "cluster s",
            "ratio",
            "best",
            "inst s",
            "point s",
            "barr",
            "agent CPU",
            "alone CPU",
            "coord",
            "agent",
            "alone"
        )
        .unwrap();
        let mut rows = Vec::new();
        let cluster_secs = |id: &str| {
            by_id(id)
                .and_then(|r| r.median_cluster())
                .and_then(|b| b.seconds)
        };
        let first_cluster = s.layouts.first().and_then(|id| cluster_secs(id));
        for id in &s.layouts {
            let Some(r) = by_id(id) else { continue };
            let med = r.median_cluster();
            let single = r.median_single();
            let agent_cpu = med.and_then(|m| m.agent_cpu.get(&0).copied());
            writeln!(
                report,
                "  {:<6} {:>4} {:>8} {:>6} {:>7} {:>9} {:>5} {:>5} {:>6} {:>7} {:>4} {:>9} {:>9} {:>5} {:>5} {:>5}  {}",
                r.layout.id,
                r.segments(),
                fmt_opt(mb(med.map(|b| b.largest_segment())), 0),
                fmt_opt(mb(med.map(|b| b.total())), 0),
                fmt_opt(single.and_then(|s| s.seconds), 2),
                fmt_opt(med.and_then(|b| b.seconds), 2),
                fmt_opt(r.ratio(), 2),
                fmt_opt(r.best_ratio(), 2),
                fmt_opt(med.and_then(|b| b.instances_secs), 1),
                fmt_opt(med.and_then(|b| b.point_secs()), 2),
                med.and_then(|b| b.barrier_millis)
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into()),
                fmt_opt(agent_cpu, 2),
                fmt_opt(single.map(|s| s.cpu_seconds), 2),
                fmt_opt(mb(r.coord_rss()), 0),
                fmt_opt(mb(r.agent_rss()), 0),
                fmt_opt(mb(r.single_rss()), 0),
                r.cluster
                    .iter()
                    .map(|c| c.load_before.split_whitespace().next().unwrap_or("").to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
            .unwrap();
            for run in &r.cluster {
                if let Some(n) = &run.note {
                    writeln!(report, "      round {}: {n}", run.round).unwrap();
                }
            }
            for run in &r.single {
                if let Some(n) = &run.note {
                    writeln!(report, "      round {} (alone): {n}", run.round).unwrap();
                }
            }
            rows.push(json!({
                "layout": r.layout.id,
                "segments": r.segments(),
                "scales": r.layout.scales,
                "largest_segment_bytes": med.map(|b| b.largest_segment()),
                "total_bytes": med.map(|b| b.total()),
                "alone_seconds_median": single.and_then(|s| s.seconds),
                "alone_seconds_best": r.best_single().and_then(|s| s.seconds),
                "cluster_seconds_median": med.and_then(|b| b.seconds),
                "cluster_seconds_best": r.best_cluster().and_then(|b| b.seconds),
                "ratio_cluster_to_alone_median": r.ratio(),
                "ratio_cluster_to_alone_best": r.best_ratio(),
                "ratio_to_first_of_series": match (med.and_then(|b| b.seconds), first_cluster) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                },
                "instances_seconds": med.and_then(|b| b.instances_secs),
                "restore_point_and_record_seconds": med.and_then(|b| b.point_secs()),
                "barrier_millis": med.and_then(|b| b.barrier_millis),
                "largest_segment_agent_cpu_seconds": agent_cpu,
                "alone_cpu_seconds": single.map(|s| s.cpu_seconds),
                "coordinator_max_rss_bytes": r.coord_rss(),
                "agent_peak_rss_bytes": r.agent_rss(),
                "alone_max_rss_bytes": r.single_rss(),
            }));
        }
        // The series' ratios (medians).
        let ratio_to = |id: &str, base: &str| {
            fmt_opt(
                cluster_secs(id).zip(cluster_secs(base)).map(|(a, b)| a / b),
                2,
            )
        };
        match s.letter {
            'A' => {
                for id in &s.layouts {
                    if let Some(r) = by_id(id) {
                        writeln!(
                            report,
                            "  {} segment(s): cluster ÷ one segment alone = {}×; ÷ the 1-segment cluster = {}×",
                            r.segments(),
                            fmt_opt(r.ratio(), 2),
                            ratio_to(id, "A1")
                        )
                        .unwrap();
                    }
                }
                writeln!(
                    report,
                    "  (here all instances share 2 cores and one disk, so A's time grows with N; on a real cluster \
                     each segment host brings its own cores and disks)"
                )
                .unwrap();
            }
            'B' => {
                for id in &s.layouts {
                    if let Some(r) = by_id(id) {
                        writeln!(
                            report,
                            "  {} segment(s): cluster ÷ the 1-segment cluster of the same total = {}×",
                            r.segments(),
                            ratio_to(id, "B1")
                        )
                        .unwrap();
                    }
                }
            }
            'C' => {
                if let Some(r) = by_id("C4") {
                    writeln!(
                        report,
                        "  one big + three tiny: cluster ÷ the big segment alone = {}×{}",
                        fmt_opt(r.ratio(), 2),
                        if by_id("A1").is_some() {
                            format!(
                                "; ÷ the 1-segment cluster of the same big segment (A1) = {}×",
                                ratio_to("C4", "A1")
                            )
                        } else {
                            String::new()
                        }
                    )
                    .unwrap();
                }
            }
            _ => {}
        }
        series_json.push(json!({ "series": s.letter.to_string(), "title": s.title, "rows": rows }));
    }
    let load_end = loadavg();
    writeln!(
        report,
        "\nload average at start {load_start}, at end {load_end} (2 cores: above ~2, other work competed); total bench time {:.0} s",
        started.elapsed().as_secs_f64()
    )
    .unwrap();
    print!("{report}");

    let json_path = bench_common::report_path("bench-cluster-scale.json");
    let doc = json!({
        "scale": opts.scale,
        "repeat": opts.repeat,
        "cbdr_binary": CBDR,
        "series": series_json,
        "layouts": results.iter().map(|r| json!({
            "layout": r.layout.id,
            "scales": r.layout.scales,
            "load_seconds": r.load_secs,
            "alone_runs": r.single.iter().map(|s| json!({
                "round": s.round,
                "seconds": s.seconds,
                "max_rss_bytes": s.max_rss,
                "cpu_seconds": s.cpu_seconds,
                "plain_mb": s.plain_mb,
                "loadavg_before": s.load_before,
                "loadavg_after": s.load_after,
                "note": s.note,
            })).collect::<Vec<_>>(),
            "cluster_runs": r.cluster.iter().map(ClusterRun::json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "loadavg_start": load_start,
        "loadavg_end": load_end,
        "total_seconds": started.elapsed().as_secs_f64(),
    });
    fs::write(
        &json_path,
        serde_json::to_string_pretty(&doc).expect("JSON") + "\n",
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", json_path.display()));
    println!("report written to {}", json_path.display());
}
