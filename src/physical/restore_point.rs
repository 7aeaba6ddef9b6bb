//! `create-restore-point` on one server: `pg_create_restore_point`, a WAL
//! switch so the point reaches the archive, and a record in the repository.
//! The cluster's restore points reuse the steps ([`create_point`],
//! [`record_point`]) on every segment.

use std::time::Duration;

use chrono::Utc;

use crate::error::{Error, PgResultExt, Result};
use crate::pg::conn::{ConnParams, PgConn, Replication};
use crate::pg::quote::quote_literal;
use crate::pg::{Lsn, TimelineId};
use crate::repo::catalog::{validate_restore_point_name, RestorePointRecord};
use crate::repo::{layout, Repo};

pub async fn create_restore_point(
    repo: &Repo,
    content_id: i32,
    name: &str,
    conn: &ConnParams,
    wal_wait: Duration,
) -> Result<RestorePointRecord> {
    check_new_name(repo, content_id, name).await?;
    repo.prepare_write().await?;
    let mut conn = PgConn::connect(conn, Replication::Off)
        .await
        .context("connecting to create a restore point")?;
    let point = create_point(&mut conn, name).await?;
    switch_wal(&mut conn).await?;
    conn.close().await;
    record_point(repo, content_id, name, point, wal_wait).await
}

/// Refuses an invalid name, or one already used on this content id.
pub async fn check_new_name(repo: &Repo, content_id: i32, name: &str) -> Result<()> {
    validate_restore_point_name(name)?;
    let key = layout::restore_point_key(content_id, name);
    if repo.exists(&key).await? {
        return Err(Error::Usage(format!(
            "a restore point named {name:?} already exists: choose another name (restore point names are unique, so a restore can name exactly one point)"
        )));
    }
    Ok(())
}

/// Where a restore point landed on one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointPosition {
    pub lsn: Lsn,
    pub timeline: TimelineId,
    pub wal_segment_size: u64,
}

/// `pg_create_restore_point(name)` on one server (the name must be valid).
pub async fn create_point(conn: &mut PgConn, name: &str) -> Result<PointPosition> {
    validate_restore_point_name(name)?;
    position_of(
        conn,
        &format!("pg_create_restore_point({})", quote_literal(name)),
        "pg_create_restore_point",
    )
    .await
}

/// The position (LSN, its timeline, the segment size) that the SQL
/// expression `lsn_sql` returns; `what` names it in errors.
pub async fn position_of(conn: &mut PgConn, lsn_sql: &str, what: &str) -> Result<PointPosition> {
    let row = conn
        .query_one(&format!(
            "select lsn::text as lsn, ('x' || substr(pg_walfile_name(lsn), 1, 8))::bit(32)::int::text as timeline, current_setting('wal_segment_size') as wal_segment_size from (select {lsn_sql} as lsn) s"
        ))
        .await
        .context(what.to_string())?;
    let lsn: Lsn = row.parse("lsn").context(what.to_string())?;
    let timeline: TimelineId = row.parse("timeline").context(what.to_string())?;
    let wal_segment_size = super::backup::parse_size_setting(
        row.get_str("wal_segment_size").context(what.to_string())?,
    )?;
    Ok(PointPosition {
        lsn,
        timeline,
        wal_segment_size,
    })
}

/// `pg_switch_wal()`, so the segment holding a point is archived.
pub async fn switch_wal(conn: &mut PgConn) -> Result<()> {
    conn.simple_query("select pg_switch_wal()")
        .await
        .context("pg_switch_wal")?;
    Ok(())
}

/// Waits until the point's WAL is archived, then records the point.
pub async fn record_point(
    repo: &Repo,
    content_id: i32,
    name: &str,
    point: PointPosition,
    wal_wait: Duration,
) -> Result<RestorePointRecord> {
    let record = RestorePointRecord {
        name: name.to_string(),
        content_id,
        lsn: point.lsn,
        timeline: point.timeline,
        time: Utc::now(),
    };
    super::backup::wait_for_wal(
        repo,
        content_id,
        (point.lsn, point.timeline),
        (point.lsn + 1, point.timeline),
        point.wal_segment_size,
        wal_wait,
    )
    .await?;
    repo.put_json(&layout::restore_point_key(content_id, name), &record)
        .await?;
    crate::repo::index::refresh::<RestorePointRecord>(
        repo,
        &layout::restore_points_prefix(content_id),
    )
    .await;
    Ok(record)
}
