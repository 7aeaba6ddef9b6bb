//! `check`: flags and the report (one line per instance and problem, with
//! the fix), for people or as JSON. The checks are in `physical::check`
//! (one instance) and `cluster::check` (every instance, by its agent).

use std::time::Duration;

use clap::Args;

use super::args::ConnArgs;
use super::Scope;
use crate::cluster::check::{cluster_check, ClusterCheckOptions};
use crate::config::Config;
use crate::error::{Error, ExitCode, Result};
use crate::physical::check::{check_instance, CheckOptions, InstanceCheck};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Only this instance (-1: the coordinator or a single server). With a
    /// [cluster] configured it is checked by its agent (left out: every
    /// instance); else on the server of -H/-p/-U or PGHOST/PGPORT.
    #[arg(long, allow_negative_numbers = true)]
    pub content_id: Option<i32>,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Seconds the segment completed by pg_switch_wal() may take to reach
    /// the archive.
    #[arg(long, default_value_t = 60)]
    pub wal_timeout: u64,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
}

pub async fn check(config: &Config, args: CheckArgs) -> Result<()> {
    if args.wal_timeout == 0 {
        return Err(Error::Usage(
            "--wal-timeout must be at least 1 second".into(),
        ));
    }
    let wal_timeout = Duration::from_secs(args.wal_timeout);
    let cluster_opts = ClusterCheckOptions {
        wal_timeout,
        agent_timeout: Duration::from_secs(config.cluster.agent_timeout),
        connect_timeout: Duration::from_secs(15),
    };
    // With a cluster configured, an instance is checked by its agent, even
    // one named by --content-id (the agent reaches it as backups do).
    let topo = match Scope::of(config, None).await? {
        Scope::Cluster(topo) => Some(topo),
        Scope::One(_) => None,
    };
    let by_agent = match &topo {
        Some(topo) => cluster_check(topo, args.content_id, config, &cluster_opts).await,
        None => None,
    };
    let reports: Vec<InstanceCheck> = match by_agent {
        Some(r) => r,
        None => {
            let opts = CheckOptions {
                content_id: args
                    .content_id
                    .unwrap_or(crate::cluster::topology::COORDINATOR),
                conn: args.conn.params()?,
                wal_timeout,
            };
            vec![check_instance(config, &opts).await]
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).expect("serializable")
        );
    } else {
        for r in &reports {
            print_instance(r);
        }
    }
    let failed: Vec<&InstanceCheck> = reports.iter().filter(|r| !r.ok()).collect();
    let Some(first) = failed.first() else {
        return Ok(());
    };
    let code = first
        .failures()
        .next()
        .map(|i| i.exit_code)
        .unwrap_or(ExitCode::Internal as u8);
    let names: Vec<String> = failed.iter().map(|r| label(r)).collect();
    let problems: usize = failed.iter().map(|r| r.failures().count()).sum();
    let message = format!(
        "check failed on {} of {} instances ({}): {problems} problem{}, each listed above with its fix",
        failed.len(),
        reports.len(),
        names.join(", "),
        if problems == 1 { "" } else { "s" }
    );
    Err(error_with_code(code, message))
}

/// "content 1 (127.0.0.1:5433)", "coordinator (...)".
fn label(r: &InstanceCheck) -> String {
    if r.content_id == crate::cluster::topology::COORDINATOR {
        format!("content -1 (coordinator, {})", r.instance)
    } else {
        format!("content {} ({})", r.content_id, r.instance)
    }
}

fn print_instance(r: &InstanceCheck) {
    let who = label(r);
    if r.ok() {
        let summary: Vec<String> = r
            .items
            .iter()
            .filter(|i| {
                matches!(
                    i.check.as_str(),
                    "archive_mode" | "wal_level" | "max_wal_senders"
                )
            })
            .map(|i| format!("{} {}", i.check, i.detail))
            .collect();
        let archiving = r
            .items
            .iter()
            .find(|i| i.check == "archiving")
            .map(|i| i.detail.as_str())
            .unwrap_or("");
        println!(
            "ok    {who}: {} checks passed ({}; {archiving})",
            r.items.len(),
            summary.join(", ")
        );
        return;
    }
    for i in r.failures() {
        println!(
            "FAIL  {who}: {}: {}{}",
            i.check,
            i.detail,
            i.fix
                .as_deref()
                .map(|f| format!(". Fix: {f}"))
                .unwrap_or_default()
        );
    }
}

/// An error that exits with `code` (a failed check's).
fn error_with_code(code: u8, message: String) -> Error {
    Error::Summary {
        message,
        exit_code: ExitCode::from_number(code),
    }
}
