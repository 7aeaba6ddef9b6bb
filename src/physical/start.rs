//! `restore --start`: start the restored server and wait until recovery
//! reaches its target; for a recovery to the latest WAL, check that replay
//! reached the end of the archive of its timeline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::restore::TargetAction;
use crate::error::{Error, Result};
use crate::pg::history::parse_history;
use crate::pg::{Lsn, TimelineId, WalFile, WalSegmentName};
use crate::repo::{layout, Repo};

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

/// `pg_ctl` for a data directory (see [`pg_bin_dir`]), else the PATH's.
fn pg_ctl(data_dir: &Path, bin_dir: Option<&Path>) -> PathBuf {
    pg_bin_dir(data_dir, bin_dir)
        .map(|d| d.join("pg_ctl"))
        .unwrap_or_else(|| PathBuf::from("pg_ctl"))
}

/// Starts the server and waits until recovery is at its target: promoted,
/// paused, or shut down, as `action` says. `server_options` go to the
/// postmaster's command line after the port (e.g. `-c gp_role=utility`);
/// pg_ctl hands that line to a shell, so they are fixed options of cbdr's,
/// never user input, and hold no quotes.
pub fn start_and_wait(
    data_dir: &Path,
    bin_dir: Option<&Path>,
    port: Option<u16>,
    server_options: &[&str],
    action: TargetAction,
    timeout: Duration,
) -> Result<String> {
    let pg_ctl = pg_ctl(data_dir, bin_dir);
    let log = data_dir.join("cbdr-start.log");
    // Only what this server logs counts (an earlier start appended too).
    let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new(&pg_ctl);
    cmd.arg("-D")
        .arg(data_dir)
        .arg("-l")
        .arg(&log)
        .arg("-W")
        .arg("start");
    if let Some(o) = postmaster_options(port, server_options) {
        cmd.arg("-o").arg(o);
    }
    let out = cmd
        .output()
        .map_err(|e| Error::io(format!("running {} (give --pg-bin)", pg_ctl.display()), e))?;
    if !out.status.success() {
        return Err(Error::Server(format!(
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            log_tail(&log)
        )));
    }
    wait_for_target(data_dir, &pg_ctl, &log, offset, action, timeout)
}

/// The `-o` of `pg_ctl start`: the port, then the other options.
fn postmaster_options(port: Option<u16>, server_options: &[&str]) -> Option<String> {
    let words: Vec<String> = port
        .map(|p| format!("-p {p}"))
        .into_iter()
        .chain(server_options.iter().map(|o| o.to_string()))
        .collect();
    (!words.is_empty()).then(|| words.join(" "))
}

/// Restarts a server in recovery (`pg_ctl restart -m fast`, or a start if
/// it is not running) so that it reads a changed recovery target, and
/// waits until it is paused at that target.
pub fn restart_paused(
    data_dir: &Path,
    bin_dir: Option<&Path>,
    timeout: Duration,
) -> Result<String> {
    let pg_ctl = pg_ctl(data_dir, bin_dir);
    let log = data_dir.join("cbdr-start.log");
    // Only what the restarted server logs counts.
    let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let out = Command::new(&pg_ctl)
        .arg("-D")
        .arg(data_dir)
        .arg("-l")
        .arg(&log)
        .args(["-W", "-m", "fast", "restart"])
        .output()
        .map_err(|e| Error::io(format!("running {} (give --pg-bin)", pg_ctl.display()), e))?;
    if !out.status.success() {
        return Err(Error::Server(format!(
            "pg_ctl restart failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            log_tail(&log)
        )));
    }
    wait_for_target(
        data_dir,
        &pg_ctl,
        &log,
        offset,
        TargetAction::Pause,
        timeout,
    )
}

/// Restarts a running server (`pg_ctl restart -m fast -w`): it applies
/// settings that take a restart. Its output goes to `cbdr-restart.log` in
/// the data directory (when the server does not run its own log
/// collector).
pub fn restart(data_dir: &Path, bin_dir: Option<&Path>, timeout: Duration) -> Result<String> {
    let pg_ctl = pg_ctl(data_dir, bin_dir);
    let log = data_dir.join("cbdr-restart.log");
    let started = Instant::now();
    let out = Command::new(&pg_ctl)
        .arg("-D")
        .arg(data_dir)
        .arg("-l")
        .arg(&log)
        .args(["-m", "fast", "-w", "-t"])
        .arg(timeout.as_secs().max(1).to_string())
        .arg("restart")
        .output()
        .map_err(|e| Error::io(format!("running {}", pg_ctl.display()), e))?;
    if !out.status.success() {
        return Err(Error::Server(format!(
            "pg_ctl restart failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            log_tail(&log)
        )));
    }
    Ok(format!(
        "restarted in {:.1} s",
        started.elapsed().as_secs_f64()
    ))
}

/// Waits until the server started with `log` (read from byte `offset`)
/// is at its recovery target: promoted, paused or shut down.
fn wait_for_target(
    data_dir: &Path,
    pg_ctl: &Path,
    log: &Path,
    offset: u64,
    action: TargetAction,
    timeout: Duration,
) -> Result<String> {
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
        let running = Command::new(pg_ctl)
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
        let text = log_since(log, offset);
        if text.contains("recovery ended before configured recovery target was reached") {
            return Err(Error::Server(format!(
                "recovery failed:\n{}",
                log_tail(log)
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
            return Err(Error::Server(format!(
                "the server stopped during recovery (cluster state: {state}); its log:\n{}",
                log_tail(log)
            )));
        }
        if Instant::now() >= deadline {
            return Err(Error::Server(format!(
                "recovery did not reach its target within {} s (cluster state: {state}; the server is still running):\n{}",
                timeout.as_secs(),
                log_tail(log)
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The log's text from byte `offset` on.
fn log_since(log: &Path, offset: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let from = (offset as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// The last archived full segment of each timeline, read before the
/// restored server starts (segments archived later, e.g. by a source
/// server still running, are not expected to be replayed).
pub async fn archive_ends(
    repo: &Repo,
    content_id: i32,
) -> Result<BTreeMap<TimelineId, WalSegmentName>> {
    let listed = repo.storage.list(&layout::wal_prefix(content_id)).await?;
    Ok(last_segments(listed.iter().map(|o| o.key.as_str())))
}

/// The last full segment per timeline among object keys (other names
/// ignored).
pub fn last_segments<'a>(
    keys: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<TimelineId, WalSegmentName> {
    let mut out: BTreeMap<TimelineId, WalSegmentName> = BTreeMap::new();
    for key in keys {
        if let Some(WalFile::Segment(s)) = WalFile::parse(key.rsplit('/').next().unwrap_or(key)) {
            let last = out.entry(s.timeline).or_insert(s);
            *last = (*last).max(s);
        }
    }
    out
}

/// Where recovery ended, from the history file the promotion wrote into
/// `pg_wal`: the timeline replay was on and the position it reached.
pub fn end_of_recovery(data_dir: &Path) -> Result<(TimelineId, Lsn)> {
    let pg_wal = data_dir.join("pg_wal");
    let entries = std::fs::read_dir(&pg_wal)
        .map_err(|e| Error::io(format!("reading {}", pg_wal.display()), e))?;
    let newest = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| match WalFile::parse(e.file_name().to_str()?) {
            Some(WalFile::History(t)) => Some(t),
            _ => None,
        })
        .max()
        .ok_or_else(|| {
            Error::Server(format!(
                "the server promoted but {} holds no timeline history file",
                pg_wal.display()
            ))
        })?;
    let path = pg_wal.join(WalFile::History(newest).to_string());
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let history =
        parse_history(&text).map_err(|e| Error::Server(format!("{}: {e}", path.display())))?;
    history
        .last()
        .map(|e| (e.timeline, e.end))
        .ok_or_else(|| Error::Server(format!("{}: no timeline switch in it", path.display())))
}

/// Whether replay that ended at `end` on `timeline` replayed the archive
/// of that timeline (`last`: its last archived segment before the start):
/// the end must be in that segment or after it.
pub fn check_reached_archive_end(
    timeline: TimelineId,
    end: Lsn,
    last: Option<WalSegmentName>,
    segment_size: u64,
) -> std::result::Result<(), String> {
    let Some(last) = last else {
        return Ok(());
    };
    let last_start = last.start_lsn(segment_size);
    if end >= last_start {
        return Ok(());
    }
    Err(format!(
        "recovery ended at {end} on timeline {timeline}, but the archive holds WAL of timeline {timeline} up to segment {last} (from {last_start}): the server stopped replaying before the end of the archive (a damaged WAL file that still verifies, e.g. zeroed records, ends replay)"
    ))
}

/// `pg_ctl stop -m fast`, waiting; errors are returned as text.
pub fn stop_fast(data_dir: &Path, bin_dir: Option<&Path>) -> std::result::Result<(), String> {
    let pg_ctl = pg_ctl(data_dir, bin_dir);
    let out = Command::new(&pg_ctl)
        .arg("-D")
        .arg(data_dir)
        .args(["-m", "fast", "-w", "stop"])
        .output()
        .map_err(|e| format!("running {}: {e}", pg_ctl.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Stops the server if it runs (`pg_ctl status`, then `pg_ctl stop -m
/// fast`, waiting): whether it was running.
pub fn stop_if_running(data_dir: &Path, bin_dir: Option<&Path>) -> Result<bool> {
    let pg_ctl = pg_ctl(data_dir, bin_dir);
    let status = Command::new(&pg_ctl)
        .arg("-D")
        .arg(data_dir)
        .arg("status")
        .output()
        .map_err(|e| Error::io(format!("running {}", pg_ctl.display()), e))?;
    // pg_ctl status: 0 running, 3 not running.
    if status.status.code() == Some(3) {
        return Ok(false);
    }
    stop_fast(data_dir, bin_dir).map_err(|e| {
        Error::Server(format!(
            "pg_ctl stop -m fast -D {} failed: {e}",
            data_dir.display()
        ))
    })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB1: u64 = 1 << 20;

    #[test]
    fn postmaster_options_put_the_port_first() {
        assert_eq!(postmaster_options(None, &[]), None);
        assert_eq!(postmaster_options(Some(5433), &[]).unwrap(), "-p 5433");
        assert_eq!(
            postmaster_options(Some(6000), &["-c gp_role=utility"]).unwrap(),
            "-p 6000 -c gp_role=utility"
        );
        assert_eq!(
            postmaster_options(None, &["-c gp_role=utility"]).unwrap(),
            "-c gp_role=utility"
        );
    }

    fn seg(name: &str) -> WalSegmentName {
        WalSegmentName::parse(name).unwrap()
    }

    #[test]
    fn the_last_segment_of_each_timeline() {
        let keys = [
            "seg-1/wal/0000000100000000/000000010000000000000003",
            "seg-1/wal/0000000100000000/000000010000000000000009",
            "seg-1/wal/0000000100000000/00000001000000000000000A.partial",
            "seg-1/wal/0000000100000000/000000010000000000000004",
            "seg-1/wal/0000000200000000/000000020000000000000009",
            "seg-1/wal/history/00000002.history",
        ];
        let ends = last_segments(keys);
        assert_eq!(ends.len(), 2);
        assert_eq!(ends[&TimelineId(1)], seg("000000010000000000000009"));
        assert_eq!(ends[&TimelineId(2)], seg("000000020000000000000009"));
    }

    #[test]
    fn replay_must_reach_the_last_archived_segment() {
        let last = Some(seg("000000010000000000000009"));
        let t1 = TimelineId(1);
        // Inside the last segment, or at the start of the next one (after
        // a segment switch): the end of the archive.
        for end in [Lsn(9 * MB1 + 0x28), Lsn(10 * MB1), Lsn(9 * MB1)] {
            check_reached_archive_end(t1, end, last, MB1).unwrap();
        }
        let e = check_reached_archive_end(t1, Lsn(5 * MB1 + 0x1000), last, MB1).unwrap_err();
        assert!(
            e.contains("0/501000") && e.contains("000000010000000000000009"),
            "{e}"
        );
        assert!(e.contains("0/900000"), "{e}");
        // Nothing archived on the timeline: nothing to compare with.
        check_reached_archive_end(t1, Lsn(5 * MB1), None, MB1).unwrap();
    }

    #[test]
    fn the_end_of_recovery_is_read_from_the_newest_history_file() {
        let dir = tempfile::tempdir().unwrap();
        let pg_wal = dir.path().join("pg_wal");
        std::fs::create_dir(&pg_wal).unwrap();
        assert!(end_of_recovery(dir.path()).is_err());
        std::fs::write(
            pg_wal.join("00000002.history"),
            "1\t0/3000148\tno recovery target specified\n",
        )
        .unwrap();
        std::fs::write(
            pg_wal.join("00000003.history"),
            "1\t0/3000148\tno recovery target specified\n\n2\t0/5A000D8\tno recovery target specified\n",
        )
        .unwrap();
        std::fs::write(pg_wal.join("000000030000000000000005"), "").unwrap();
        assert_eq!(
            end_of_recovery(dir.path()).unwrap(),
            (TimelineId(2), "0/5A000D8".parse().unwrap())
        );
    }
}
