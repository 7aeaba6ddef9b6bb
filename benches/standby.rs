//! A standby cluster's `advance`: how long moving every instance from one
//! cluster restore point to the next takes (restart-based: PostgreSQL
//! reads `recovery_target_name` only at start), and how it grows with the
//! WAL written between the points.
//!
//! ```text
//! cargo bench --bench standby                               # 3 segments; 0, 4, 16, 64 MB of WAL per instance
//! CBDR_BENCH_WAL_MB=0,8 CBDR_BENCH_REPEAT=1 cargo bench --bench standby   # a quick run
//! ```
//!
//! The primary comes from the integration tests' fixture
//! (`tests/common/cluster.rs`): a coordinator and 3 segments (PostgreSQL 15
//! on loopback, 1 MiB WAL segments, archiving through `cbdr wal-push`
//! into a filesystem repository with lz4 + encryption), one agent per
//! instance; the standby is restored beside it with `restore --standby`
//! on the same 2 cores. For each WAL size, every segment writes that much
//! WAL (`insert` of 1 kB rows of random text), the coordinator makes a
//! cluster restore point, and `cbdr standby advance --restore-point` is
//! timed (wall clock of the command, which returns once every instance is
//! paused at the point). `CBDR_BENCH_REPEAT` rounds each (default 2); the
//! table shows the best, the JSON every round
//! (`target/bench-standby.json`).

#[path = "common.rs"]
mod bench_common;
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use bench_common::{env_num, env_or, loadavg, report_path};
use common::cluster::TestCluster;
use serde_json::json;

fn main() {
    let sizes: Vec<u64> = env_or("CBDR_BENCH_WAL_MB", "0,4,16,64")
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("CBDR_BENCH_WAL_MB: sizes in MB, comma-separated")
        })
        .collect();
    let repeat = env_num("CBDR_BENCH_REPEAT", "2").max(1);
    let load_before = loadavg();
    let mut c = TestCluster::start("cbdr-bench-standby", 3, None);
    for s in &c.servers[1..] {
        s.psql("create table w(id bigserial, pad text)");
    }
    c.start_agents();
    c.ok(&["backup-push"]);
    c.ok(&["create-restore-point", "p0"]);
    let (rc, _ports) = c.restore_config("dr");
    c.ok(&[
        "restore",
        "--restore-config",
        rc.to_str().unwrap(),
        "--restore-point",
        "p0",
        "--standby",
        "--start",
    ]);
    let mut rows = Vec::new();
    let mut n = 0;
    for &mb in &sizes {
        let mut times = Vec::new();
        for _ in 0..repeat {
            n += 1;
            let rows_per_segment = mb * 1000;
            for s in &c.servers[1..] {
                if rows_per_segment > 0 {
                    s.psql(&format!(
                        "insert into w(pad) select string_agg(md5(random()::text), '') from generate_series(1, {rows_per_segment}) g, generate_series(1, 32) r group by g"
                    ));
                }
            }
            let point = format!("b{n}");
            c.ok(&["create-restore-point", &point]);
            let t0 = Instant::now();
            c.ok(&["standby", "advance", "--restore-point", &point]);
            times.push(t0.elapsed().as_secs_f64());
        }
        let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
        rows.push(json!({"wal_mb_per_instance": mb, "best_seconds": best, "rounds": times}));
    }
    let load_after = loadavg();
    println!("standby advance, coordinator + 3 segments, restart-based (best of {repeat})");
    println!("load average before: {load_before}; after: {load_after}");
    println!("{:>24} {:>12}", "WAL MB per instance", "advance (s)");
    for r in &rows {
        println!(
            "{:>24} {:>12.2}",
            r["wal_mb_per_instance"].as_u64().unwrap(),
            r["best_seconds"].as_f64().unwrap()
        );
    }
    let path = report_path("bench-standby.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({
            "load_before": load_before,
            "load_after": load_after,
            "rows": rows,
        }))
        .unwrap(),
    )
    .unwrap();
    println!("report: {}", path.display());
    for d in ["seg-1", "seg0", "seg1", "seg2"] {
        common::cluster::stop_data_dir(&c.path("dr").join(d));
    }
}
