//! `cbdr standby status|advance|follow|promote`: a disaster-recovery
//! cluster restored with `restore --standby`, moved from cluster restore
//! point to cluster restore point.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::cluster::standby::{
    self, AdvanceTarget, Advanced, FollowEvent, StandbyOptions, StandbyStatus, DEFAULT_NAME,
};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::repo::Repo;

#[derive(Debug, Subcommand)]
pub enum StandbyCommand {
    /// Per instance: paused at which point, replay position, WAL lag
    /// behind the archive; the point they share and the newest one ready.
    Status(StatusArgs),
    /// Move every instance to a later cluster restore point (the newest
    /// whose WAL is archived everywhere, or --restore-point NAME) and
    /// wait until all are paused there.
    Advance(AdvanceArgs),
    /// Advance to every new cluster restore point as it appears, until
    /// SIGINT/SIGTERM (taken between points: an advance under way is
    /// finished first).
    Follow(FollowArgs),
    /// End recovery on every instance at the point they share (or advance
    /// to --restore-point NAME first): segments, then the coordinator.
    Promote(PromoteArgs),
}

#[derive(Debug, Args)]
pub struct Common {
    /// The standby's name (`restore --standby-name`).
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
    /// Seconds an instance may take to replay to a point (or to end
    /// recovery).
    #[arg(long, default_value_t = 3600)]
    pub replay_timeout: u64,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub common: Common,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("to").args(["restore_point", "latest"]).required(true)))]
pub struct AdvanceArgs {
    #[command(flatten)]
    pub common: Common,
    /// The cluster restore point to move to.
    #[arg(long)]
    pub restore_point: Option<String>,
    /// The newest cluster restore point whose WAL every instance's
    /// archive holds.
    #[arg(long)]
    pub latest: bool,
}

#[derive(Debug, Args)]
pub struct FollowArgs {
    #[command(flatten)]
    pub common: Common,
    /// Seconds between looks for a new cluster restore point.
    #[arg(long, default_value_t = 60)]
    pub interval: u64,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub common: Common,
    /// Advance to this cluster restore point first.
    #[arg(long)]
    pub restore_point: Option<String>,
    /// Roll back the prepared transactions left in doubt at the point (by
    /// the commit barrier they were committed nowhere). Without it they
    /// are listed, with the SQL to roll them back.
    #[arg(long)]
    pub rollback_prepared: bool,
}

/// How long connecting to an instance or agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

fn options(c: &Common) -> Result<StandbyOptions> {
    if c.replay_timeout == 0 {
        return Err(Error::Usage(
            "--replay-timeout must be at least 1 second".into(),
        ));
    }
    Ok(StandbyOptions {
        connect_timeout: CONNECT_TIMEOUT,
        replay_timeout: Duration::from_secs(c.replay_timeout),
    })
}

pub async fn run(config: &Config, cmd: StandbyCommand) -> Result<()> {
    let repo = Repo::open(config).await?;
    match cmd {
        StandbyCommand::Status(a) => {
            let st = standby::status(&repo, config, &a.common.name, &options(&a.common)?).await?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&st).expect("serializable")
                );
            } else {
                print_status(&st);
            }
            Ok(())
        }
        StandbyCommand::Advance(a) => {
            let target = match a.restore_point {
                Some(p) => AdvanceTarget::RestorePoint(p),
                None => AdvanceTarget::Latest,
            };
            let done =
                standby::advance(&repo, config, &a.common.name, &target, &options(&a.common)?)
                    .await?;
            println!("{}", describe(&a.common.name, &done));
            Ok(())
        }
        StandbyCommand::Follow(a) => {
            if a.interval == 0 {
                return Err(Error::Usage("--interval must be at least 1 second".into()));
            }
            let stop = Arc::new(AtomicBool::new(false));
            spawn_stop_on_signal(stop.clone())?;
            let name = a.common.name.clone();
            println!(
                "following the primary's cluster restore points every {} s (SIGTERM or Ctrl-C stops between points)",
                a.interval
            );
            standby::follow(
                &repo,
                config,
                &a.common.name,
                Duration::from_secs(a.interval),
                &options(&a.common)?,
                &stop,
                |e| match e {
                    FollowEvent::Advanced(Advanced::AlreadyThere(_)) => {}
                    FollowEvent::Advanced(a) => println!("{}", describe(&name, a)),
                    FollowEvent::Failed(e) => {
                        tracing::warn!("advance failed (trying again next round): {e}")
                    }
                },
            )
            .await?;
            println!("stopped following: standby cluster {name} is paused at one point");
            Ok(())
        }
        StandbyCommand::Promote(a) => {
            let done = standby::promote(
                &repo,
                config,
                &a.common.name,
                a.restore_point.as_deref(),
                a.rollback_prepared,
                &options(&a.common)?,
            )
            .await?;
            println!(
                "standby cluster {} promoted at restore point {}: every instance is open for writes (archiving is off: set up backups of the new primary)",
                a.common.name, done.point
            );
            super::cluster::print_in_doubt(
                &done.in_doubt,
                done.rolled_back,
                "or promote with --rollback-prepared",
            );
            Ok(())
        }
    }
}

fn describe(name: &str, a: &Advanced) -> String {
    match a {
        Advanced::Moved {
            from,
            to,
            restarted,
            elapsed,
        } => format!(
            "standby cluster {name} advanced from {from} to {to} ({restarted} instances restarted, {:.1} s): every instance is paused at {to}",
            elapsed.as_secs_f64()
        ),
        Advanced::AlreadyThere(p) => {
            format!("standby cluster {name} is at {p} already: nothing newer to advance to")
        }
    }
}

fn print_status(st: &StandbyStatus) {
    println!(
        "standby cluster {} ({}), updated {}",
        st.record.name,
        match &st.record.state {
            standby::StandbyState::AtPoint { point } => format!("at restore point {point}"),
            standby::StandbyState::Moving { from, to } =>
                format!("moving from {from} to {to}: queries may see different points on different instances"),
            standby::StandbyState::Promoted { point, time } =>
                format!("promoted at {point} on {}", time.format("%Y-%m-%d %H:%M:%S UTC")),
        },
        st.record.updated.format("%Y-%m-%d %H:%M:%S UTC")
    );
    for s in &st.instances {
        let what = match (&s.unreachable, &s.at_point) {
            (Some(e), _) => format!("unreachable: {e}"),
            (None, Some(p)) => format!("paused at {p}"),
            (None, None) if s.in_recovery == Some(false) => "out of recovery (promoted)".into(),
            (None, None) => "replaying (not paused at a restore point)".into(),
        };
        println!(
            "  content {:>3} {}:{}: {what}, replayed to {}{}",
            s.content_id,
            s.host,
            s.port,
            s.replay_lsn.map(|l| l.to_string()).unwrap_or("-".into()),
            s.lag_bytes
                .map(|b| format!(", {b} bytes of archived WAL beyond"))
                .unwrap_or_default()
        );
    }
    match &st.common_point {
        Some(p) => println!(
            "every instance is paused at {p}: queries see the primary's committed state at that point"
        ),
        None => println!(
            "the instances are not all paused at one point: queries may see different points (`cbdr standby advance` brings them together)"
        ),
    }
    if let Some(p) = &st.newest_ready {
        println!("newest cluster restore point with its WAL archived everywhere: {p}");
    }
}

/// Sets `stop` on SIGINT or SIGTERM.
fn spawn_stop_on_signal(stop: Arc<AtomicBool>) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Error::io("installing a SIGTERM handler", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| Error::io("installing a SIGINT handler", e))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping after the advance under way, if any");
        stop.store(true, Ordering::SeqCst);
    });
    Ok(())
}
