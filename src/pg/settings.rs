//! The server settings and functions `cbdr check` looks at: archiving,
//! WAL level and senders, a WAL switch, the archiver's last failure.

use super::conn::{PgConn, PgError};
use super::WalSegmentName;

/// The settings that make archiving and base backups work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSettings {
    /// `off`, `on` or `always`.
    pub archive_mode: String,
    pub archive_command: String,
    /// `minimal`, `replica` or `logical`.
    pub wal_level: String,
    pub max_wal_senders: u32,
    /// The server is a standby (pg_switch_wal is refused there).
    pub in_recovery: bool,
}

impl ArchiveSettings {
    /// Whether archive_mode makes the server archive (on a primary).
    pub fn archiving(&self) -> bool {
        matches!(self.archive_mode.as_str(), "on" | "always")
    }

    /// Whether wal_level keeps what a base backup and recovery need.
    pub fn wal_level_enough(&self) -> bool {
        matches!(
            self.wal_level.as_str(),
            "replica" | "logical" | "archive" | "hot_standby"
        )
    }
}

pub async fn archive_settings(conn: &mut PgConn) -> Result<ArchiveSettings, PgError> {
    let row = conn
        .query_one(
            "select current_setting('archive_mode') as archive_mode, \
             current_setting('archive_command') as archive_command, \
             current_setting('wal_level') as wal_level, \
             current_setting('max_wal_senders') as max_wal_senders, \
             pg_is_in_recovery()::text as in_recovery",
        )
        .await?;
    Ok(ArchiveSettings {
        archive_mode: row.get_str("archive_mode")?.to_string(),
        archive_command: row.get_str("archive_command")?.to_string(),
        wal_level: row.get_str("wal_level")?.to_string(),
        max_wal_senders: row.parse("max_wal_senders")?,
        in_recovery: row.get_str("in_recovery")? == "true",
    })
}

/// Writes a WAL record (a logical message, so that there is something to
/// switch away from even on an idle server), then `pg_switch_wal()`;
/// returns the segment that the switch completed, which the archiver must
/// archive next.
pub async fn switch_wal_segment(conn: &mut PgConn) -> Result<WalSegmentName, PgError> {
    // Refused to non-superusers on some versions: the switch alone then
    // completes the current segment whenever WAL was written since the
    // last one.
    if let Err(e) = conn
        .simple_query("select pg_logical_emit_message(false, 'cbdr check', '')")
        .await
    {
        tracing::debug!("pg_logical_emit_message: {e}");
    }
    let row = conn
        .query_one("select pg_walfile_name(pg_switch_wal()) as walfile")
        .await?;
    let name = row.get_str("walfile")?;
    WalSegmentName::parse(name).ok_or_else(|| {
        PgError::Protocol(format!(
            "pg_walfile_name returned {name:?}, not a WAL segment name"
        ))
    })
}

/// `pg_stat_archiver`'s last failure, if any: the file and when.
pub async fn last_archive_failure(conn: &mut PgConn) -> Result<Option<String>, PgError> {
    let row = conn
        .query_one(
            "select coalesce(last_failed_wal, '') as wal, coalesce(last_failed_time::text, '') as at, \
             failed_count::text as failed, coalesce(last_archived_wal, '') as archived from pg_stat_archiver",
        )
        .await?;
    let wal = row.get_str("wal")?;
    if wal.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "pg_stat_archiver: {} failures, the last on {} at {}; last archived: {}",
        row.get_str("failed")?,
        wal,
        row.get_str("at")?,
        match row.get_str("archived")? {
            "" => "none",
            a => a,
        }
    )))
}
