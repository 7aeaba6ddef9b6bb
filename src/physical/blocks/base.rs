//! Which backup a new delta is taken against, if any.

use crate::pg::TimelineId;
use crate::repo::catalog::BackupRecord;

use super::BLOCK_FORMAT;

/// What `backup-push` was asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupMode {
    /// `[backup] delta_max_steps` decides: a delta when it is above 0.
    #[default]
    Auto,
    /// `--delta`: a delta when a base can serve, else a full block backup.
    Delta,
    /// `--full`.
    Full,
}

/// Deltas in a row with `--delta` when `[backup] delta_max_steps` is 0.
pub const DEFAULT_DELTA_STEPS: u32 = 6;

/// What a backup will be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Today's tar format (no block maps: no delta can be taken against it).
    Tar,
    /// A full backup in the block format; `why`: why it is not a delta,
    /// when one was asked for.
    FullBlocks { why: Option<String> },
    /// A delta against `base`.
    Delta { base: BackupRecord },
}

/// Decides from the mode, `[backup] delta_max_steps` and the backups of the
/// instance whether the next backup is a delta and of what.
/// The base is the newest backup; it serves only if it is a block backup of
/// the same system, on the server's current timeline, with a chain shorter
/// than the limit.
pub fn plan(
    mode: BackupMode,
    max_steps: u32,
    backups: &[BackupRecord],
    system_identifier: &str,
    timeline: TimelineId,
) -> Plan {
    let steps = match (mode, max_steps) {
        (BackupMode::Full, 0) | (BackupMode::Auto, 0) => return Plan::Tar,
        (BackupMode::Full, _) => return Plan::FullBlocks { why: None },
        (BackupMode::Delta, 0) => DEFAULT_DELTA_STEPS,
        (_, n) => n,
    };
    let full = |why: String| Plan::FullBlocks { why: Some(why) };
    // The newest by time: the list is in LSN order, which means nothing
    // across two servers.
    let Some(newest) = backups.iter().max_by_key(|b| b.stop_time) else {
        return full("the repository holds no backup of this instance yet".into());
    };
    if newest.format != BLOCK_FORMAT || newest.chain.is_empty() {
        return full(format!(
            "the newest backup, {}, was taken without block maps (a full backup of the tar format): a delta needs a block backup as its base",
            newest.name
        ));
    }
    if newest.system_identifier != system_identifier {
        return full(format!(
            "the newest backup, {}, is of another server (system identifier {}, this server's is {system_identifier}): a delta against it is refused",
            newest.name, newest.system_identifier
        ));
    }
    if newest.stop_timeline != timeline {
        return full(format!(
            "the newest backup, {}, is on timeline {}, the server is now on timeline {} (it was promoted): a delta against a base of another timeline is refused",
            newest.name, newest.stop_timeline.0, timeline.0
        ));
    }
    if newest.chain.len() > steps as usize {
        return full(format!(
            "the newest backup, {}, ends a chain of {} deltas, the most delta_max_steps = {steps} allows",
            newest.name,
            newest.chain.len() - 1
        ));
    }
    if newest.chain.len() >= u16::MAX as usize {
        return full("the chain is too long".into());
    }
    Plan::Delta {
        base: newest.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::Lsn;

    fn record(name: &str, chain: &[&str], system: &str, tli: u32) -> BackupRecord {
        BackupRecord {
            format: if chain.is_empty() { 2 } else { BLOCK_FORMAT },
            name: name.into(),
            content_id: -1,
            start_lsn: Lsn(0),
            stop_lsn: Lsn(0),
            timeline: TimelineId(tli),
            stop_timeline: TimelineId(tli),
            start_time: chrono::Utc::now(),
            stop_time: chrono::Utc::now(),
            server_version: 150000,
            system_identifier: system.into(),
            wal_segment_size: 16 << 20,
            archives: Vec::new(),
            compression: "lz4".into(),
            encrypted: false,
            manifest_bytes: 0,
            base: chain.get(1).map(|s| s.to_string()),
            chain: chain.iter().map(|s| s.to_string()).collect(),
            permanent: false,
        }
    }

    fn is_delta_of(p: &Plan, name: &str) -> bool {
        matches!(p, Plan::Delta { base } if base.name == name)
    }

    fn why(p: &Plan) -> String {
        match p {
            Plan::FullBlocks { why: Some(w) } => w.clone(),
            other => panic!("not a full with a reason: {other:?}"),
        }
    }

    #[test]
    fn modes_and_steps() {
        let f = record("f", &["f"], "7", 1);
        let one = std::slice::from_ref(&f);
        let tli = TimelineId(1);
        assert_eq!(plan(BackupMode::Auto, 0, one, "7", tli), Plan::Tar);
        assert_eq!(plan(BackupMode::Full, 0, one, "7", tli), Plan::Tar);
        assert_eq!(
            plan(BackupMode::Full, 3, one, "7", tli),
            Plan::FullBlocks { why: None }
        );
        assert!(is_delta_of(&plan(BackupMode::Auto, 3, one, "7", tli), "f"));
        assert!(is_delta_of(&plan(BackupMode::Delta, 0, one, "7", tli), "f"));
        // Two deltas in a row allowed: after the second, a full.
        let d1 = record("d1", &["d1", "f"], "7", 1);
        let d2 = record("d2", &["d2", "d1", "f"], "7", 1);
        assert!(is_delta_of(
            &plan(BackupMode::Auto, 2, &[f.clone(), d1.clone()], "7", tli),
            "d1"
        ));
        let p = plan(BackupMode::Auto, 2, &[f, d1, d2], "7", tli);
        assert!(why(&p).contains("chain of 2 deltas"), "{p:?}");
    }

    #[test]
    fn a_base_that_cannot_serve_gives_a_full_backup_and_says_why() {
        let tli = TimelineId(1);
        assert!(why(&plan(BackupMode::Delta, 0, &[], "7", tli)).contains("no backup"));
        let tar = record("t", &[], "7", 1);
        assert!(why(&plan(BackupMode::Delta, 0, &[tar], "7", tli)).contains("without block maps"));
        let other = record("o", &["o"], "8", 1);
        assert!(why(&plan(BackupMode::Delta, 0, &[other], "7", tli)).contains("another server"));
        let old_tli = record("p", &["p"], "7", 1);
        let w = why(&plan(BackupMode::Delta, 0, &[old_tli], "7", TimelineId(2)));
        assert!(w.contains("timeline 1") && w.contains("timeline 2"), "{w}");
    }
}
