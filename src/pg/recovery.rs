//! A server in recovery, as a standby sees it: whether replay is paused,
//! where it is, which restore point it was told to stop at; and the call
//! that ends a recovery paused at its target.

use super::conn::{PgConn, PgError};
use super::Lsn;

/// Where replay is, read from a running server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayState {
    /// `pg_is_in_recovery()`: false once the server was promoted.
    pub in_recovery: bool,
    /// Replay is paused (at the recovery target, or by
    /// `pg_wal_replay_pause()`).
    pub paused: bool,
    /// `pg_last_wal_replay_lsn()`: the end of the last record replayed.
    pub replay_lsn: Option<Lsn>,
    /// `pg_last_xact_replay_timestamp()`, as the server prints it.
    pub replay_time: Option<String>,
    /// `recovery_target_name` (empty: none).
    pub target_name: String,
}

/// Reads the replay state. `pg_get_wal_replay_pause_state()` is
/// PostgreSQL 14+; before that `pg_is_wal_replay_paused()` says the same
/// once the pause took effect.
pub async fn replay_state(conn: &mut PgConn) -> Result<ReplayState, PgError> {
    let paused = if conn.server_version_num() >= 140000 {
        "pg_get_wal_replay_pause_state() = 'paused'"
    } else {
        "pg_is_wal_replay_paused()"
    };
    let row = conn
        .query_one(&format!(
            "select pg_is_in_recovery() as in_recovery, \
             case when pg_is_in_recovery() then {paused} else false end as paused, \
             pg_last_wal_replay_lsn()::text as replay_lsn, \
             pg_last_xact_replay_timestamp()::text as replay_time, \
             current_setting('recovery_target_name') as target_name"
        ))
        .await?;
    Ok(ReplayState {
        in_recovery: row.get_bool("in_recovery")?,
        paused: row.get_bool("paused")?,
        replay_lsn: row.parse_opt("replay_lsn")?,
        replay_time: row.get_opt("replay_time")?.map(str::to_string),
        target_name: row.get_str("target_name")?.to_string(),
    })
}

/// Ends a recovery paused at its target (`recovery_target_action =
/// pause`): the server then promotes.
pub async fn resume_replay(conn: &mut PgConn) -> Result<(), PgError> {
    conn.simple_query("select pg_wal_replay_resume()").await?;
    Ok(())
}
