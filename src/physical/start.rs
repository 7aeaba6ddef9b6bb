//! `restore --start`: start the restored server and wait until recovery
//! reaches its target.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::restore::TargetAction;
use crate::error::{Error, Result};

/// The PostgreSQL binaries for a data directory: `explicit`, else the
/// Debian layout for its PG_VERSION, else `pg_ctl` on the PATH.
pub fn pg_bin_dir(data_dir: &Path, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = explicit {
        return Some(dir.to_path_buf());
    }
    let version = std::fs::read_to_string(data_dir.join("PG_VERSION")).ok()?;
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{}/bin", version.trim()));
    debian.join("pg_ctl").exists().then_some(debian)
}

/// Starts the server and waits until recovery is at its target: promoted,
/// paused, or shut down, as `action` says.
pub fn start_and_wait(
    data_dir: &Path,
    bin_dir: Option<&Path>,
    port: Option<u16>,
    action: TargetAction,
    timeout: Duration,
) -> Result<String> {
    let pg_ctl = pg_bin_dir(data_dir, bin_dir)
        .map(|d| d.join("pg_ctl"))
        .unwrap_or_else(|| PathBuf::from("pg_ctl"));
    let log = data_dir.join("cbdr-start.log");
    let mut cmd = Command::new(&pg_ctl);
    cmd.arg("-D")
        .arg(data_dir)
        .arg("-l")
        .arg(&log)
        .arg("-W")
        .arg("start");
    if let Some(p) = port {
        cmd.arg("-o").arg(format!("-p {p}"));
    }
    let out = cmd
        .output()
        .map_err(|e| Error::io(format!("running {} (give --pg-bin)", pg_ctl.display()), e))?;
    if !out.status.success() {
        return Err(Error::Postgres(format!(
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            log_tail(&log)
        )));
    }
    let bin = pg_ctl.parent().map(Path::to_path_buf).unwrap_or_default();
    let controldata = if bin.as_os_str().is_empty() {
        PathBuf::from("pg_controldata")
    } else {
        bin.join("pg_controldata")
    };
    let deadline = Instant::now() + timeout;
    let started_by = Instant::now() + Duration::from_secs(60);
    let mut seen_running = false;
    loop {
        let running = Command::new(&pg_ctl)
            .arg("-D")
            .arg(data_dir)
            .arg("status")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        seen_running |= running;
        // pg_control's cluster state says where recovery is, whatever the
        // server's logging settings.
        let state = Command::new(&controldata)
            .arg("-D")
            .arg(data_dir)
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                    l.strip_prefix("Database cluster state:")
                        .map(|v| v.trim().to_string())
                })
            })
            .unwrap_or_default();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("recovery ended before configured recovery target was reached") {
            return Err(Error::Postgres(format!(
                "recovery failed:\n{}",
                log_tail(&log)
            )));
        }
        let reached = match action {
            // The restored pg_control says "in production" before recovery
            // starts: recovery.signal is removed only at promotion.
            TargetAction::Promote => {
                running && state == "in production" && !data_dir.join("recovery.signal").exists()
            }
            TargetAction::Pause => running && text.contains("pausing at the end of recovery"),
            TargetAction::Shutdown => seen_running && !running && state == "shut down",
        };
        if reached {
            return Ok(match action {
                TargetAction::Promote => "recovered to the target and promoted: the server is open for writes".into(),
                TargetAction::Pause => "paused at the target: check the data, then run pg_wal_replay_resume() to promote".into(),
                TargetAction::Shutdown => "recovered to the target and shut down".into(),
            });
        }
        if !running
            && (seen_running || Instant::now() > started_by)
            && action != TargetAction::Shutdown
        {
            return Err(Error::Postgres(format!(
                "the server stopped during recovery (cluster state: {state}); its log:\n{}",
                log_tail(&log)
            )));
        }
        if Instant::now() >= deadline {
            return Err(Error::Postgres(format!(
                "recovery did not reach its target within {} s (cluster state: {state}; the server is still running):\n{}",
                timeout.as_secs(),
                log_tail(&log)
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
