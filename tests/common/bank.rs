//! A bank workload across the segments of a [`super::cluster::TestCluster`]:
//! each transfer takes money from an account on one segment and puts it on
//! an account of another, with `PREPARE TRANSACTION` on both and `COMMIT
//! PREPARED` under the coordinator's shared commit barrier
//! (`pg_advisory_xact_lock_shared(K)`), as cbdr's README asks of writers.
//! Every transfer writes a row on both sides, so a restored cluster can be
//! checked: the total is unchanged and each transfer is on both sides or on
//! neither.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use cbdr::pg::conn::{ConnParams, PgConn, Replication};

pub const ACCOUNTS_PER_SEGMENT: i64 = 120;
pub const INITIAL_BALANCE: i64 = 1_000;

pub fn params(port: u16) -> ConnParams {
    let mut p = ConnParams::from_env();
    p.host = "127.0.0.1".into();
    p.port = port;
    p.user = "postgres".into();
    p.dbname = "postgres".into();
    p.password = None;
    p
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(port: u16) -> PgConn {
    PgConn::connect(&params(port), Replication::Off)
        .await
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

/// Runs one statement on `port` and returns the first column of each row.
pub fn query(port: u16, sql: &str) -> Vec<String> {
    runtime().block_on(async {
        let mut c = connect(port).await;
        let rows = c
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        c.close().await;
        rows.iter()
            .map(|r| r.get(0).unwrap_or("").to_string())
            .collect()
    })
}

async fn exec(c: &mut PgConn, sql: &str) {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Creates the accounts and transfers tables on every segment port.
pub fn setup(segment_ports: &[u16]) {
    runtime().block_on(async {
        for &port in segment_ports {
            let mut c = connect(port).await;
            exec(
                &mut c,
                &format!(
                    "create table accounts(id int primary key, balance bigint not null);
                     insert into accounts select g, {INITIAL_BALANCE} from generate_series(1, {ACCOUNTS_PER_SEGMENT}) g;
                     create table transfers(id bigint primary key, delta bigint not null);"
                ),
            )
            .await;
            c.close().await;
        }
    });
}

pub fn expected_total(segments: usize) -> i64 {
    segments as i64 * ACCOUNTS_PER_SEGMENT * INITIAL_BALANCE
}

/// Waits (up to 60 s) until `committed` has grown by at least `n`.
pub fn wait_for_more(workload: &str, committed: &AtomicU64, n: u64) {
    let start = committed.load(Ordering::SeqCst);
    super::wait_for(
        &format!("{workload} to make progress"),
        Duration::from_secs(60),
        || {
            let now = committed.load(Ordering::SeqCst);
            if now >= start + n {
                Ok(())
            } else {
                Err(format!("{} of {n} more transfers", now - start))
            }
        },
    );
}

/// Threads that each run one async job until stopped, counting what they
/// commit: the frame of every bank workload.
pub struct Workers {
    name: &'static str,
    stop: Arc<AtomicBool>,
    pub committed: Arc<AtomicU64>,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    /// `count` threads, thread `w` running `job(w, stop, committed)` on its
    /// own runtime.
    pub fn start<F, Fut>(name: &'static str, count: usize, job: F) -> Workers
    where
        F: Fn(usize, Arc<AtomicBool>, Arc<AtomicU64>) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let handles = (0..count)
            .map(|w| {
                let (stop, committed, job) = (stop.clone(), committed.clone(), job.clone());
                std::thread::spawn(move || runtime().block_on(job(w, stop, committed)))
            })
            .collect();
        Workers {
            name,
            stop,
            committed,
            handles,
        }
    }

    /// Waits until at least `n` more transfers have committed.
    pub fn wait_for(&self, n: u64) {
        wait_for_more(self.name, &self.committed, n);
    }

    pub fn committed(&self) -> u64 {
        self.committed.load(Ordering::SeqCst)
    }

    /// Stops every thread and returns how many transfers committed.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.handles {
            w.join().expect("bank worker panicked");
        }
        self.committed.load(Ordering::SeqCst)
    }
}

/// A worker's own random numbers (xorshift), different for each worker.
pub fn worker_rng(w: usize) -> impl FnMut() -> u64 {
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    }
}

/// Transfers between the segments under the coordinator's commit barrier.
pub struct Bank;

impl Bank {
    /// Starts `workers` threads moving money between the segments.
    pub fn start(
        coordinator_port: u16,
        segment_ports: &[u16],
        barrier_key: i64,
        workers: usize,
    ) -> Workers {
        assert!(segment_ports.len() >= 2, "the bank needs two segments");
        let ports = segment_ports.to_vec();
        Workers::start("the bank workload", workers, move |w, stop, committed| {
            worker(
                w,
                workers,
                coordinator_port,
                ports.clone(),
                barrier_key,
                stop,
                committed,
            )
        })
    }
}

async fn worker(
    w: usize,
    workers: usize,
    coordinator_port: u16,
    ports: Vec<u16>,
    barrier_key: i64,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
) {
    let mut coord = connect(coordinator_port).await;
    let mut segs = Vec::new();
    for &p in &ports {
        segs.push(connect(p).await);
    }
    let mut next = worker_rng(w);
    // Each worker has its own accounts (id ≡ w mod workers): prepared
    // transactions keep their row locks, and two workers crossing on the
    // same rows of two segments would wait on each other forever.
    let own: Vec<i64> = (1..=ACCOUNTS_PER_SEGMENT)
        .filter(|id| (*id as usize) % workers == w)
        .collect();
    let mut n: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let id = (w as u64 + 1) * 1_000_000_000 + n;
        let a = (next() % ports.len() as u64) as usize;
        let b = (a + 1 + (next() % (ports.len() as u64 - 1)) as usize) % ports.len();
        let amount = (next() % 50 + 1) as i64;
        let from = own[(next() % own.len() as u64) as usize];
        let to = own[(next() % own.len() as u64) as usize];
        for (side, acct, delta) in [(a, from, -amount), (b, to, amount)] {
            exec(
                &mut segs[side],
                &format!(
                    "begin; update accounts set balance = balance + ({delta}) where id = {acct};
                     insert into transfers values ({id}, {delta});
                     prepare transaction 'bank_{id}_{side}'"
                ),
            )
            .await;
        }
        exec(
            &mut coord,
            &format!("begin; select pg_advisory_xact_lock_shared({barrier_key})"),
        )
        .await;
        exec(&mut segs[a], &format!("commit prepared 'bank_{id}_{a}'")).await;
        exec(&mut segs[b], &format!("commit prepared 'bank_{id}_{b}'")).await;
        exec(&mut coord, "commit").await;
        committed.fetch_add(1, Ordering::SeqCst);
    }
    coord.close().await;
    for s in segs {
        s.close().await;
    }
}

/// What a (restored) cluster's segments hold.
#[derive(Debug)]
pub struct BankState {
    pub total: i64,
    /// transfer id → the deltas found for it over all segments.
    pub transfers: BTreeMap<i64, Vec<i64>>,
    pub prepared: usize,
}

impl BankState {
    pub fn read(segment_ports: &[u16]) -> BankState {
        runtime().block_on(async {
            let mut total = 0;
            let mut transfers: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
            let mut prepared = 0;
            for &p in segment_ports {
                let mut c = connect(p).await;
                let row = c
                    .query_one("select coalesce(sum(balance), 0)::text from accounts")
                    .await
                    .unwrap();
                total += row.get(0).unwrap().parse::<i64>().unwrap();
                for r in c
                    .simple_query("select id::text, delta::text from transfers")
                    .await
                    .unwrap()
                {
                    transfers
                        .entry(r.get(0).unwrap().parse().unwrap())
                        .or_default()
                        .push(r.get(1).unwrap().parse().unwrap());
                }
                prepared += c
                    .simple_query("select gid from pg_prepared_xacts")
                    .await
                    .unwrap()
                    .len();
                c.close().await;
            }
            BankState {
                total,
                transfers,
                prepared,
            }
        })
    }

    /// Panics unless the money is all there and every transfer is whole.
    pub fn assert_consistent(&self, segments: usize, what: &str) {
        assert_eq!(
            self.total,
            expected_total(segments),
            "{what}: the total balance changed"
        );
        for (id, deltas) in &self.transfers {
            assert!(
                deltas.len() == 2 && deltas.iter().sum::<i64>() == 0,
                "{what}: transfer {id} is on one side only: {deltas:?}"
            );
        }
    }
}
