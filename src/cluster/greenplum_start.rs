//! Bringing a restored Greenplum/Cloudberry cluster up (`cbdr restore
//! --start`). Every instance was restored, recovered to the point and
//! promoted alone, in utility mode; then, on the restored coordinator
//! (still in utility mode), `gp_segment_configuration` is rewritten to the
//! restored primaries ([`super::greenplum::catalog_fixup_sql`]) and read back,
//! every instance is stopped through its agent, and the coordinator's agent
//! runs `gpstart -a`, which starts the cluster as Greenplum starts it. The
//! mirrors and the standby coordinator are left to rebuild
//! ([`super::greenplum::rebuild_commands`]).
//!
//! Written from Greenplum's and Cloudberry's sources and untested against
//! them (neither builds here); each step is also printed for a restore
//! without `--start`.

use std::path::Path;
use std::time::Duration;

use futures_util::future::try_join_all;

use super::client::AgentClient;
use super::greenplum::{
    bring_up_commands, catalog_fixup_sql, rebuild_commands, RestoredPrimary, UTILITY_MODE,
};
use super::proto::{ControlAction, ControlRequest};
use super::restore::{params, RestoreTarget};
use super::restore_point::in_segment;
use super::topology::{Segment, COORDINATOR};
use crate::config::{AgentConfig, ClusterConfig};
use crate::error::{Error, PgResultExt, Result};
use crate::pg::conn::{PgConn, Replication};

/// What a cluster restore did, or leaves to do, to bring a Greenplum/
/// Cloudberry cluster up.
#[derive(Debug)]
pub enum GreenplumRestore {
    /// `--start`: the catalog fixed, every instance stopped, `gpstart` run.
    Started(GreenplumStarted),
    /// Without `--start`: the catalog fix-up to run on the restored
    /// coordinator in utility mode, then the commands that bring the
    /// cluster up.
    Pending {
        sql: Vec<String>,
        commands: Vec<String>,
    },
}

#[derive(Debug)]
pub struct GreenplumStarted {
    /// The primaries as the restored coordinator's catalog now names them:
    /// (content id, hostname, port, data directory).
    pub primaries: Vec<(i32, String, u16, String)>,
    /// Per content id: what stopping it after the fix-up did.
    pub stopped: Vec<(i32, String)>,
    /// What `gpstart` said last.
    pub gpstart: String,
    /// What is left to the DBA: mirrors and the standby coordinator.
    pub left: Vec<String>,
}

/// The restored primaries, as the catalog fix-up writes them.
pub fn restored_primaries(targets: &[(Segment, RestoreTarget)]) -> Vec<RestoredPrimary> {
    targets
        .iter()
        .map(|(seg, t)| RestoredPrimary {
            content_id: seg.content_id,
            dbid: t.dbid,
            hostname: t.host.clone(),
            address: t.host.clone(),
            port: t.port,
            data_dir: t.data_dir.display().to_string(),
        })
        .collect()
}

fn coordinator(targets: &[(Segment, RestoreTarget)]) -> Result<&(Segment, RestoreTarget)> {
    targets
        .iter()
        .find(|(s, _)| s.content_id == COORDINATOR)
        .ok_or_else(|| {
            Error::Usage(
                "the restore config has no coordinator (content id -1): a Greenplum/Cloudberry cluster restores with its coordinator".into(),
            )
        })
}

/// What a restore without `--start` prints.
pub fn pending(targets: &[(Segment, RestoreTarget)]) -> Result<GreenplumRestore> {
    let (_, c) = coordinator(targets)?;
    Ok(GreenplumRestore::Pending {
        sql: catalog_fixup_sql(&restored_primaries(targets)),
        commands: bring_up_commands(&c.data_dir.display().to_string(), true, true),
    })
}

/// Fixes the restored coordinator's catalog, stops every instance and runs
/// `gpstart` on the coordinator's host. Each failure names the step and
/// what is already done.
pub async fn fix_and_start(
    targets: &[(Segment, RestoreTarget)],
    cfg: &ClusterConfig,
    agent: &AgentConfig,
    connect_timeout: Duration,
    job_timeout: Duration,
) -> Result<GreenplumStarted> {
    let (cseg, ct) = coordinator(targets)?;
    let primaries = restored_primaries(targets);

    // The catalog, in one transaction on the coordinator in utility mode.
    let mut p = params(ct, cfg)?;
    p.options = UTILITY_MODE.to_string();
    let what = "fixing gp_segment_configuration on the restored coordinator (utility mode)";
    let mut c = PgConn::connect(&p, Replication::Off)
        .await
        .context(what)
        .map_err(|e| in_segment(cseg, e))?;
    for sql in catalog_fixup_sql(&primaries) {
        c.simple_query(&sql)
            .await
            .with_context(|| format!("{what}: {sql}"))
            .map_err(|e| in_segment(cseg, e))?;
    }
    let rows = c
        .simple_query(
            "select content::text as content, role, hostname, port::text as port, datadir from gp_segment_configuration order by content, role",
        )
        .await
        .context("reading gp_segment_configuration back")
        .map_err(|e| in_segment(cseg, e))?;
    c.close().await;
    let mut found = Vec::new();
    for r in &rows {
        let what = "reading gp_segment_configuration back";
        let role = r.get_str("role").context(what)?.to_string();
        let row = (
            r.parse::<i32>("content").context(what)?,
            r.get_str("hostname").context(what)?.to_string(),
            r.parse::<u16>("port").context(what)?,
            r.get_str("datadir").context(what)?.to_string(),
        );
        if role != "p" {
            return Err(Error::Server(format!(
                "after the fix-up the restored coordinator's gp_segment_configuration still has a {role:?} row for content {}: only primaries may be left",
                row.0
            )));
        }
        found.push(row);
    }
    check_catalog(&primaries, &found)?;

    // Every instance stopped (segments first), so that gpstart starts each
    // as the catalog now says.
    let silence = job_timeout.max(Duration::from_secs(60));
    let stop = |seg: &Segment, t: &RestoreTarget| {
        let req = ControlRequest {
            content_id: seg.content_id,
            data_dir: t.data_dir.display().to_string(),
            action: ControlAction::Stop,
            timeout_secs: job_timeout.as_secs(),
        };
        let seg = seg.clone();
        async move {
            let client = AgentClient::connect(&seg.agent, agent, connect_timeout)
                .await
                .map_err(|e| in_segment(&seg, e))?;
            // The catalog is fixed already: a failure here leaves a cluster
            // that gpstart brings up once this instance is stopped.
            let report = client
                .control(req, silence)
                .await
                .map_err(|e| in_segment(&seg, e))?;
            Ok::<_, Error>((seg.content_id, report))
        }
    };
    let mut stopped = try_join_all(
        targets
            .iter()
            .filter(|(s, _)| s.content_id != COORDINATOR)
            .map(|(s, t)| stop(s, t)),
    )
    .await?;
    stopped.push(stop(cseg, ct).await?);

    let client = AgentClient::connect(&cseg.agent, agent, connect_timeout)
        .await
        .map_err(|e| in_segment(cseg, e))?;
    let gpstart = client
        .control(
            ControlRequest {
                content_id: COORDINATOR,
                data_dir: ct.data_dir.display().to_string(),
                action: ControlAction::GreenplumStart,
                timeout_secs: job_timeout.as_secs(),
            },
            silence,
        )
        .await
        .map_err(|e| in_segment(cseg, e))?;
    Ok(GreenplumStarted {
        primaries: found,
        stopped,
        gpstart,
        left: rebuild_commands(true, true),
    })
}

/// The catalog read back must name every restored primary where it was
/// restored, and nothing else.
fn check_catalog(want: &[RestoredPrimary], found: &[(i32, String, u16, String)]) -> Result<()> {
    for p in want {
        let row = found.iter().find(|r| r.0 == p.content_id);
        let ok = row.is_some_and(|r| {
            r.1 == p.hostname && r.2 == p.port && Path::new(&r.3) == Path::new(&p.data_dir)
        });
        if !ok {
            return Err(Error::Server(format!(
                "after the fix-up the restored coordinator's gp_segment_configuration has {} for content {}, not {}:{} {}: the catalog was not rewritten (nothing was stopped)",
                row.map(|r| format!("{}:{} {}", r.1, r.2, r.3))
                    .unwrap_or_else(|| "no primary".into()),
                p.content_id,
                p.hostname,
                p.port,
                p.data_dir
            )));
        }
    }
    if let Some(extra) = found
        .iter()
        .find(|r| !want.iter().any(|p| p.content_id == r.0))
    {
        return Err(Error::Server(format!(
            "after the fix-up the restored coordinator's gp_segment_configuration has content {} ({}:{}), which the restore config does not restore: the cluster would wait for it; restore every content id of the backup",
            extra.0, extra.1, extra.2
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn primary(id: i32, port: u16) -> RestoredPrimary {
        RestoredPrimary {
            content_id: id,
            dbid: None,
            hostname: "sdw1".into(),
            address: "sdw1".into(),
            port,
            data_dir: format!("/data/gpseg{id}"),
        }
    }

    fn row(id: i32, port: u16) -> (i32, String, u16, String) {
        (id, "sdw1".into(), port, format!("/data/gpseg{id}"))
    }

    #[test]
    fn the_catalog_read_back_must_name_the_restored_primaries() {
        let want = [primary(-1, 5432), primary(0, 6000), primary(1, 6001)];
        check_catalog(&want, &[row(-1, 5432), row(0, 6000), row(1, 6001)]).unwrap();
        // A port the update did not reach.
        let e = check_catalog(&want, &[row(-1, 5432), row(0, 7000), row(1, 6001)]).unwrap_err();
        assert!(
            e.to_string()
                .contains("sdw1:7000 /data/gpseg0 for content 0, not sdw1:6000"),
            "{e}"
        );
        // A missing primary.
        let e = check_catalog(&want, &[row(-1, 5432), row(1, 6001)]).unwrap_err();
        assert!(e.to_string().contains("no primary for content 0"), "{e}");
        // A primary the restore does not restore.
        let e = check_catalog(
            &want,
            &[row(-1, 5432), row(0, 6000), row(1, 6001), row(2, 6002)],
        )
        .unwrap_err();
        assert!(e.to_string().contains("content 2 (sdw1:6002)"), "{e}");
    }
}
