//! `create-restore-point` on one server: `pg_create_restore_point`, a WAL
//! switch so the point reaches the archive, and a record in the repository.

use std::time::Duration;

use chrono::Utc;

use crate::error::{Error, Result};
use crate::pg::conn::{ConnParams, PgConn, Replication};
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
    validate_restore_point_name(name)?;
    let key = layout::restore_point_key(content_id, name);
    if repo.exists(&key).await? {
        return Err(Error::Usage(format!(
            "a restore point named {name:?} already exists: choose another name (restore point names are unique, so a restore can name exactly one point)"
        )));
    }
    repo.prepare_write().await?;
    let mut conn = PgConn::connect(conn, Replication::Off)
        .await
        .map_err(|e| Error::Postgres(e.to_string()))?;
    let row = conn
        .query_one(&format!(
            "select lsn::text, ('x' || substr(pg_walfile_name(lsn), 1, 8))::bit(32)::int::text, current_setting('wal_segment_size') from (select pg_create_restore_point('{name}') as lsn) s"
        ))
        .await
        .map_err(|e| Error::Postgres(e.to_string()))?;
    let lsn: Lsn = row
        .get(0)
        .unwrap_or_default()
        .parse()
        .map_err(|e| Error::Postgres(format!("pg_create_restore_point returned {e}")))?;
    let timeline = TimelineId(
        row.get(1)
            .unwrap_or_default()
            .parse()
            .map_err(|_| Error::Postgres("bad timeline".into()))?,
    );
    let segment_size = super::backup::parse_size_setting(row.get(2).unwrap_or_default())?;
    conn.simple_query("select pg_switch_wal()")
        .await
        .map_err(|e| Error::Postgres(e.to_string()))?;
    conn.close().await;
    let record = RestorePointRecord {
        name: name.to_string(),
        content_id,
        lsn,
        timeline,
        time: Utc::now(),
    };
    super::backup::wait_for_wal(
        repo,
        content_id,
        (lsn, timeline),
        (Lsn(lsn.0 + 1), timeline),
        segment_size,
        wal_wait,
    )
    .await?;
    repo.put_json(&key, &record).await?;
    Ok(record)
}
