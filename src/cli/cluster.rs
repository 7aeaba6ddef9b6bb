//! The cluster side of `backup-push`, `create-restore-point`, `restore`,
//! and `restore-config`: used when a [cluster] is configured and no
//! `--content-id` names a single instance.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::args::{parse_time, BackupPushArgs, RestoreArgs, RestorePointArgs};
use crate::cluster::backup::{cluster_backup_push, ClusterBackupOptions, ProgressBoard};
use crate::cluster::greenplum_start::GreenplumRestore;
use crate::cluster::restore::{
    cluster_restore, CitusRestore, ClusterRestoreOptions, ClusterTarget, InDoubt, RestoreConfig,
};
use crate::cluster::restore_point::create_user_restore_point;
use crate::cluster::topology::Topology;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::repo::Repo;

pub async fn restore_point(
    config: &Config,
    topo: &Topology,
    args: &RestorePointArgs,
) -> Result<()> {
    let repo = Repo::open(config).await?;
    let rp = create_user_restore_point(
        &repo,
        topo,
        &config.cluster,
        &args.name,
        Duration::from_secs(args.wal_wait),
    )
    .await?;
    println!(
        "cluster restore point {} on {} instances (writers held {} ms):",
        rp.name,
        rp.segments.len(),
        rp.barrier_millis
    );
    for s in &rp.segments {
        println!(
            "  content {:>3}: {} (timeline {})",
            s.content_id, s.lsn, s.timeline
        );
    }
    Ok(())
}

/// Shows the agents' progress while a cluster job runs: one line every few
/// seconds (a live line on a terminal).
struct Ticker {
    board: ProgressBoard,
    task: tokio::task::JoinHandle<()>,
}

impl Ticker {
    fn start(what: &'static str, instances: usize) -> Ticker {
        let board: ProgressBoard = Arc::new(Mutex::new(BTreeMap::new()));
        let b = board.clone();
        let tty = std::io::stderr().is_terminal();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let every = if tty {
                Duration::from_millis(500)
            } else {
                Duration::from_secs(10)
            };
            loop {
                tokio::time::sleep(every).await;
                let (done, total, phases) = {
                    let m = b.lock().unwrap();
                    let done: u64 = m.values().map(|p| p.done_bytes).sum();
                    let total: u64 = m.values().filter_map(|p| p.total_bytes).sum();
                    let mut phases: Vec<String> = m
                        .iter()
                        .map(|(id, p)| format!("{id}:{}", p.phase))
                        .collect();
                    phases.dedup();
                    (done, total, phases)
                };
                let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001) / 1e6;
                let line = format!(
                    "{what}: {} instances, {} / {} MB, {rate:.0} MB/s [{}]",
                    instances,
                    done / 1_000_000,
                    total / 1_000_000,
                    phases.join(" ")
                );
                if tty {
                    eprint!("\r\x1b[2K{line}");
                } else {
                    tracing::info!("{line}");
                }
            }
        });
        Ticker { board, task }
    }

    fn finish(self) {
        self.task.abort();
        if std::io::stderr().is_terminal() {
            eprint!("\r\x1b[2K");
        }
    }
}

pub async fn backup(config: &Config, topo: &Topology, args: &BackupPushArgs) -> Result<()> {
    let repo = Repo::open(config).await?;
    let opts = ClusterBackupOptions {
        wal_wait: Duration::from_secs(args.wal_wait),
        agent_timeout: Duration::from_secs(config.cluster.agent_timeout),
        connect_timeout: CONNECT_TIMEOUT,
        mode: args.mode(),
    };
    let ticker = Ticker::start("backup", topo.segments().len());
    let started = Instant::now();
    let result = cluster_backup_push(&repo, topo, config, &opts, ticker.board.clone()).await;
    ticker.finish();
    let b = result.inspect_err(|_| {
        tracing::error!("the cluster backup was aborted; no cluster backup was recorded");
    })?;
    let kind = match &b.base {
        Some(base) => format!("delta of {base}"),
        None => "full".to_string(),
    };
    println!(
        "cluster backup {} complete ({kind}) in {:.1} s: {} instances, {} MB, stored {} MB, restore point {}",
        b.name,
        started.elapsed().as_secs_f64(),
        b.segments.len(),
        b.plain_bytes() / 1_000_000,
        b.stored_bytes() / 1_000_000,
        b.restore_point
    );
    for s in &b.segments {
        let chain = match s.chain.len() {
            0 | 1 => "full".to_string(),
            n => format!("delta, a chain of {n}"),
        };
        println!(
            "  content {:>3}: {} ({chain}, {} to {})",
            s.content_id, s.backup, s.start_lsn, s.stop_lsn
        );
    }
    super::delete::after_backup(&repo, config, None).await;
    Ok(())
}

pub async fn restore(config: &Config, topo: &Topology, args: RestoreArgs) -> Result<()> {
    if args.target_dir.is_some() {
        return Err(Error::Usage(
            "--target-dir restores one instance: for the cluster, give --restore-config FILE (`cbdr restore-config` prints one), or --content-id N to restore a single instance".into(),
        ));
    }
    if args.target_lsn.is_some() || args.target_xid.is_some() || args.immediate {
        return Err(Error::Usage(
            "a cluster is restored to a cluster restore point (--restore-point NAME, --target-time T for the latest point at or before T, or --backup NAME for a cluster backup's point): an LSN, an XID or 'immediate' differ on every instance; use --content-id N to restore one instance to them".into(),
        ));
    }
    if !args.tablespace_map.is_empty() {
        return Err(Error::Usage(
            "--tablespace-map is for one instance (--content-id N)".into(),
        ));
    }
    let target = if let Some(n) = &args.restore_point {
        ClusterTarget::RestorePoint(n.clone())
    } else if let Some(t) = &args.target_time {
        ClusterTarget::Time(parse_time(t)?)
    } else if let Some(b) = args
        .backup
        .as_ref()
        .filter(|b| !b.eq_ignore_ascii_case("LATEST"))
    {
        ClusterTarget::Backup(b.clone())
    } else {
        ClusterTarget::Latest
    };
    let restore_config = match &args.restore_config {
        Some(p) => RestoreConfig::load(p)?,
        None => RestoreConfig::from_topology(topo),
    };
    let repo = Repo::open(config).await?;
    let opts = ClusterRestoreOptions {
        target,
        force: args.force,
        archive_off: args.archive_mode == "off",
        start: args.start,
        start_timeout: Duration::from_secs(args.start_timeout),
        agent_timeout: Duration::from_secs(config.cluster.agent_timeout),
        connect_timeout: CONNECT_TIMEOUT,
        in_doubt: if args.rollback_prepared {
            InDoubt::Rollback
        } else {
            InDoubt::Report
        },
        standby: args.standby.then(|| args.standby_name.clone()),
    };
    if args.standby && args.rollback_prepared {
        return Err(Error::Usage(
            "--rollback-prepared with --standby: a standby is read-only; in-doubt transactions are settled by `cbdr standby promote --rollback-prepared`".into(),
        ));
    }
    let ticker = Ticker::start("restore", topo.segments().len());
    let result = cluster_restore(
        &repo,
        topo,
        config,
        &restore_config,
        &opts,
        ticker.board.clone(),
    )
    .await;
    ticker.finish();
    let out = result?;
    if let Some(record) = &out.standby {
        println!(
            "standby cluster {} restored to restore point {} ({} instances){}",
            record.name,
            out.point.name,
            out.restored.len(),
            if args.start {
                ": every instance is paused there, serving read-only queries"
            } else {
                ": start every instance; each pauses at the point"
            }
        );
        for i in &record.instances {
            println!(
                "  content {:>3}: backup {} into {}:{} {}",
                i.content_id,
                i.backup,
                i.host,
                i.port,
                i.data_dir.display()
            );
        }
        println!(
            "Move it with `cbdr standby advance --latest` (or `cbdr standby follow`); see where it is with `cbdr standby status`."
        );
        return Ok(());
    }
    println!(
        "cluster restored to restore point {} ({} instances){}",
        out.point.name,
        out.restored.len(),
        if args.start {
            ", started and recovered"
        } else {
            ": start every instance to recover"
        }
    );
    for (id, done) in &out.restored {
        let t = restore_config
            .segments
            .iter()
            .find(|t| t.content_id == *id)
            .expect("restored instances come from the restore config");
        println!(
            "  content {id:>3}: backup {} into {}:{} {}{}",
            done.backup.name,
            t.host,
            t.port,
            t.data_dir.display(),
            done.start_report
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    match &out.greenplum {
        Some(GreenplumRestore::Pending { sql, commands }) => {
            println!(
                "Greenplum/Cloudberry: the restored coordinator's gp_segment_configuration still describes the source cluster. With the coordinator alone in utility mode (PGOPTIONS='-c gp_role=utility' psql), run:"
            );
            for s in sql {
                println!("  {s};");
            }
            println!("then bring the cluster up and rebuild mirrors and the standby:");
            for c in commands {
                println!("  {c}");
            }
        }
        Some(GreenplumRestore::Started(g)) => {
            println!(
                "Greenplum/Cloudberry: gp_segment_configuration now names the restored primaries ({}); every instance was stopped ({}) and {}",
                joined(&g.primaries, |(id, host, port, _)| format!(
                    "{id}: {host}:{port}"
                )),
                joined(&g.stopped, |(id, r)| format!("{id}: {r}")),
                g.gpstart
            );
            println!(
                "Mirrors and the standby coordinator were removed from the catalog; rebuild them:"
            );
            for c in &g.left {
                println!("  {c}");
            }
        }
        None => {}
    }
    match &out.citus {
        Some(CitusRestore::Fixed(fix)) => println!(
            "Citus: pg_dist_node now names the restored nodes (rows rewritten per content id: {}); recover_prepared_transactions() settled {} prepared transactions; background jobs are back on",
            joined(&fix.rewritten, |(id, n)| format!("{id}: {n}")),
            fix.recovered
        ),
        Some(CitusRestore::Pending(sql)) => {
            println!(
                "Citus: the restored nodes start with 2PC recovery, deferred shard deletion, background tasks and deadlock detection off (their pg_dist_node still names the original nodes). Once every node is up, run on every node, in the [cluster] database:"
            );
            for s in sql {
                println!("  {s};");
            }
        }
        None => {}
    }
    print_in_doubt(
        &out.in_doubt,
        out.rolled_back,
        "or re-run the restore with --rollback-prepared",
    );
    Ok(())
}

/// The prepared transactions left in doubt at a cluster restore point:
/// rolled back, or listed with the SQL to roll them back (`rerun` says
/// how to have cbdr do it).
pub fn print_in_doubt(in_doubt: &[(i32, String)], rolled_back: bool, rerun: &str) {
    if in_doubt.is_empty() {
        return;
    }
    if rolled_back {
        println!(
            "rolled back {} prepared transactions left in doubt at the point (committed on no instance)",
            in_doubt.len()
        );
        return;
    }
    println!(
        "{} prepared transactions were in doubt at the point: by the commit barrier they are committed on no instance, and they hold locks. Roll them back ({rerun}):",
        in_doubt.len()
    );
    for (id, gid) in in_doubt {
        println!(
            "  content {id:>3}: ROLLBACK PREPARED {};",
            crate::pg::quote::quote_literal(gid)
        );
    }
}

#[derive(Debug, clap::Args)]
pub struct RestoreConfigArgs {
    /// Greenplum/Cloudberry: the config for a freshly initialised target
    /// cluster, from its own gp_segment_configuration (its hosts, ports,
    /// directories and dbids), reached at --target-host/--target-port (else
    /// PGHOST/PGPORT); refused when its segment count differs.
    #[arg(long)]
    pub from_target: bool,
    #[arg(long, value_name = "HOST", requires = "from_target")]
    pub target_host: Option<String>,
    #[arg(long, value_name = "PORT", requires = "from_target")]
    pub target_port: Option<u16>,
}

/// `restore-config`: the restore config of the configured cluster, to edit.
pub async fn restore_config(config: &Config, args: RestoreConfigArgs) -> Result<()> {
    if args.from_target {
        return restore_config_from_target(config, args).await;
    }
    let topo = Topology::resolve(&config.cluster).await?.ok_or_else(|| {
        Error::Usage(
            "no cluster is configured: list the instances in [[cluster.segments]] (see config-templates/cluster.toml), or set [cluster] discover = true on a Greenplum/Cloudberry coordinator".into(),
        )
    })?;
    let mut rc = RestoreConfig::from_topology(&topo);
    let listed = add_tablespaces(config, &mut rc).await;
    print!("{}", rc.to_toml());
    print_tablespace_note(listed);
    Ok(())
}

/// Adds the tablespaces the backups hold to a restore config; the error
/// (the repository cannot be read) is only noted: the config is still
/// useful without them.
async fn add_tablespaces(config: &Config, rc: &mut RestoreConfig) -> Result<()> {
    let repo = crate::repo::Repo::open(config).await?;
    rc.add_tablespaces(&repo).await
}

fn print_tablespace_note(listed: Result<()>) {
    if let Err(e) = listed {
        println!(
            "\n# The backups' tablespaces are not listed (the repository could not be read: {e});"
        );
        println!("# add [segments.tablespace_map] entries by hand to move tablespaces.");
    }
}

async fn restore_config_from_target(config: &Config, args: RestoreConfigArgs) -> Result<()> {
    use crate::cluster::greenplum::{read_target, target_restore_config};
    let topo = Topology::resolve(&config.cluster).await?.ok_or_else(|| {
        Error::Usage("no cluster is configured: the source cluster's [cluster] section is needed to match the target against it".into())
    })?;
    let mut p = crate::pg::conn::ConnParams::try_from_env().map_err(Error::Usage)?;
    if let Some(h) = args.target_host {
        p.host = h;
    }
    if let Some(port) = args.target_port {
        p.port = port;
    }
    if let Some(u) = &config.cluster.user {
        p.user = u.clone();
    }
    p.dbname = config.cluster.database.clone();
    let rows = read_target(&p).await?;
    let ids: Vec<i32> = topo.segments().iter().map(|s| s.content_id).collect();
    let (mut rc, mirrors) = target_restore_config(&rows, &ids, config.cluster.agent_port)?;
    let listed = add_tablespaces(config, &mut rc).await;
    print!("{}", rc.to_toml());
    print_tablespace_note(listed);
    if !mirrors.is_empty() {
        println!("\n# The target's mirrors and standby coordinator, rebuilt after the restore");
        println!("# (gpaddmirrors, gpinitstandby), not restored:");
        for m in &mirrors {
            println!(
                "#   content {} dbid {} {}:{} {}",
                m.content_id, m.dbid, m.hostname, m.port, m.data_dir
            );
        }
    }
    Ok(())
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// `items`, each shown by `show`, separated by ", ".
fn joined<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    items.iter().map(show).collect::<Vec<_>>().join(", ")
}
