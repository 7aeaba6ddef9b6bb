//! A Citus cluster on a [`super::cluster::TestCluster`] (coordinator and
//! workers with `shared_preload_libraries = 'citus'`), a distributed bank
//! through the coordinator (Citus commits each transfer that spans two
//! workers with two-phase commit), and the check of a (restored) cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cbdr::pg::conn::{PgConn, Replication};

pub use super::bank::query;
use super::bank::{params, runtime, worker_rng, Workers};
use super::cluster::TestCluster;

pub const ACCOUNTS: i64 = 200;
pub const INITIAL_BALANCE: i64 = 1_000;

/// The postgresql.conf line that loads Citus.
pub const PRELOAD: &str = "shared_preload_libraries = 'citus'";

/// Why the Citus tests cannot run here, if they cannot: the build is not
/// installed into this PostgreSQL (`../shared/citus/install.sh`, which
/// `.ci/run` runs).
pub fn unavailable() -> Option<String> {
    let pg_config = super::pg::pg_bin("pg_config");
    let pg_config = if pg_config.exists() {
        pg_config
    } else {
        PathBuf::from("pg_config")
    };
    let lib = Command::new(&pg_config)
        .arg("--pkglibdir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match lib {
        None => Some(format!("{} --pkglibdir failed", pg_config.display())),
        Some(dir) if !dir.join("citus.so").exists() => Some(format!(
            "citus is not installed in {} (run ../shared/citus/install.sh, as .ci/run does)",
            dir.display()
        )),
        Some(_) => None,
    }
}

async fn connect(port: u16) -> PgConn {
    PgConn::connect(&params(port), Replication::Off)
        .await
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

async fn exec(c: &mut PgConn, sql: &str) -> Vec<cbdr::pg::conn::Row> {
    c.simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `create extension citus` everywhere, the workers added to the
/// coordinator, and the bank's distributed tables.
pub fn setup(cluster: &TestCluster) {
    let ports: Vec<u16> = cluster.servers.iter().map(|s| s.port()).collect();
    runtime().block_on(async {
        for &p in &ports {
            let mut c = connect(p).await;
            exec(&mut c, "create extension citus").await;
            c.close().await;
        }
        let mut c = connect(ports[0]).await;
        exec(
            &mut c,
            &format!("select citus_set_coordinator_host('127.0.0.1', {})", ports[0]),
        )
        .await;
        for &p in &ports[1..] {
            exec(&mut c, &format!("select citus_add_node('127.0.0.1', {p})")).await;
        }
        exec(
            &mut c,
            &format!(
                "create table accounts(id int primary key, balance bigint not null);
                 select create_distributed_table('accounts', 'id');
                 insert into accounts select g, {INITIAL_BALANCE} from generate_series(1, {ACCOUNTS}) g;
                 create table transfer_log(src int not null, dst int not null, amount bigint not null);
                 select create_distributed_table('transfer_log', 'src', colocate_with => 'accounts');"
            ),
        )
        .await;
        c.close().await;
    });
}

/// Transfers through the coordinator, each in one transaction: money out
/// of one account, into another, and a row in the log.
pub struct CitusBank;

impl CitusBank {
    pub fn start(coordinator: u16, workers: usize) -> Workers {
        Workers::start("the Citus bank", workers, move |w, stop, committed| {
            bank_worker(w, workers, coordinator, stop, committed)
        })
    }
}

async fn bank_worker(
    w: usize,
    workers: usize,
    coordinator: u16,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
) {
    let mut c = connect(coordinator).await;
    let mut next = worker_rng(w);
    // Each worker its own accounts: no two transfers wait on each other.
    let own: Vec<i64> = (1..=ACCOUNTS)
        .filter(|id| (*id as usize) % workers == w)
        .collect();
    while !stop.load(Ordering::SeqCst) {
        let from = own[(next() % own.len() as u64) as usize];
        let to = own[(next() % own.len() as u64) as usize];
        if from == to {
            continue;
        }
        let amount = (next() % 50 + 1) as i64;
        exec(
            &mut c,
            &format!(
                "begin;
                 update accounts set balance = balance - {amount} where id = {from};
                 update accounts set balance = balance + {amount} where id = {to};
                 insert into transfer_log values ({from}, {to}, {amount});
                 commit"
            ),
        )
        .await;
        committed.fetch_add(1, Ordering::SeqCst);
    }
    c.close().await;
}

/// What a (restored) Citus cluster holds, read through its coordinator.
#[derive(Debug)]
pub struct CitusState {
    pub total: i64,
    pub transfers: usize,
    /// Accounts whose balance is not what the log says.
    pub wrong: Vec<(i64, i64, i64)>,
}

impl CitusState {
    pub fn read(coordinator: u16) -> CitusState {
        let accounts: Vec<(i64, i64)> = query(
            coordinator,
            "select id || ' ' || balance from accounts order by id",
        )
        .iter()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
        let mut expect: BTreeMap<i64, i64> = accounts
            .iter()
            .map(|(id, _)| (*id, INITIAL_BALANCE))
            .collect();
        let log = query(
            coordinator,
            "select src || ' ' || dst || ' ' || amount from transfer_log",
        );
        for l in &log {
            let v: Vec<i64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
            *expect.entry(v[0]).or_default() -= v[2];
            *expect.entry(v[1]).or_default() += v[2];
        }
        let wrong = accounts
            .iter()
            .filter(|(id, b)| expect[id] != *b)
            .map(|(id, b)| (*id, *b, expect[id]))
            .collect();
        CitusState {
            total: accounts.iter().map(|(_, b)| b).sum(),
            transfers: log.len(),
            wrong,
        }
    }

    /// Panics unless the money is all there and every logged transfer is
    /// on both accounts (and no unlogged one on either).
    pub fn assert_consistent(&self, what: &str) {
        assert_eq!(
            self.total,
            ACCOUNTS * INITIAL_BALANCE,
            "{what}: the total balance changed"
        );
        assert!(
            self.wrong.is_empty(),
            "{what}: accounts (id, balance, expected from the log) disagree with the log: {:?}",
            &self.wrong[..self.wrong.len().min(10)]
        );
    }
}
