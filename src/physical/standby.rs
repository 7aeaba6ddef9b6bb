//! A restored server kept in recovery as a standby paused at a named
//! restore point, on its own host: moving it to another point.
//!
//! PostgreSQL reads `recovery_target_name` only at start, so a move is a
//! rewrite of the target in `postgresql.auto.conf` and a restart; replay
//! then runs from the last restartpoint to the new point and pauses there
//! (`recovery_target_action = pause`, `hot_standby = on`: read-only
//! queries are served while it is paused).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fsutil::AtomicFile;
use crate::pg::conf::replace_settings;

/// The settings that keep a restored server a paused, queryable standby
/// at `restore_point`.
pub fn standby_settings(restore_point: &str) -> [(&str, &str); 3] {
    [
        ("recovery_target_name", restore_point),
        ("recovery_target_action", "pause"),
        ("hot_standby", "on"),
    ]
}

/// Points the standby in `data_dir` at `restore_point` (written whole to
/// `postgresql.auto.conf`, then renamed over it); refuses a directory
/// that is not in recovery.
pub fn retarget(data_dir: &Path, restore_point: &str) -> Result<()> {
    if !data_dir.join("recovery.signal").exists() {
        return Err(Error::Usage(format!(
            "{} is not a standby in recovery (no recovery.signal): it was promoted, or was not restored with `cbdr restore --standby`",
            data_dir.display()
        )));
    }
    let path = data_dir.join("postgresql.auto.conf");
    let old = std::fs::read_to_string(&path)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let new = replace_settings(&old, &standby_settings(restore_point));
    let write = || -> std::io::Result<()> {
        let mut f = AtomicFile::create(&path)?;
        f.write_all(new.as_bytes())?;
        f.commit()
    };
    write().map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Moves the standby in `data_dir` to `restore_point`: retargets it,
/// restarts it (or starts it, if it is down) and waits until it is paused
/// there.
pub fn advance(
    data_dir: &Path,
    bin_dir: Option<&Path>,
    restore_point: &str,
    timeout: Duration,
) -> Result<String> {
    retarget(data_dir, restore_point)?;
    super::start::restart_paused(data_dir, bin_dir, timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retarget_rewrites_the_target_once_and_refuses_a_promoted_server() {
        let dir = tempfile::tempdir().unwrap();
        let auto = dir.path().join("postgresql.auto.conf");
        std::fs::write(
            &auto,
            "port = 6001\nrecovery_target_name = 'rp1'\nrecovery_target_action = 'promote'\n",
        )
        .unwrap();
        let e = retarget(dir.path(), "rp2").unwrap_err();
        assert!(e.to_string().contains("not a standby in recovery"), "{e}");
        std::fs::write(dir.path().join("recovery.signal"), "").unwrap();
        retarget(dir.path(), "rp2").unwrap();
        retarget(dir.path(), "rp3").unwrap();
        let text = std::fs::read_to_string(&auto).unwrap();
        assert_eq!(
            text,
            "port = 6001\nrecovery_target_name = 'rp3'\nrecovery_target_action = 'pause'\nhot_standby = 'on'\n"
        );
    }
}
