//! What a restore of a Greenplum/Cloudberry cluster needs beyond restoring
//! each instance's data directory, written from their sources (nothing here
//! can run a Greenplum or Cloudberry server: these paths are untested
//! against one, and every piece of logic is unit-tested):
//!
//! * an instance's identity, `gp_dbid`, lives in `internal.auto.conf`, which
//!   BASE_BACKUP copies: a restore onto an instance with another dbid
//!   rewrites it ([`set_gp_dbid`]);
//! * a tablespace's files live in `<location>/<dbid>/GPDB_<major>_<catversion>`
//!   and `pg_tblspc/<oid>` links to `<location>/<dbid>`: a restore to a new
//!   location (or dbid) links to `<new location>/<new dbid>`
//!   ([`tablespace_link`]);
//! * the restored coordinator's `gp_segment_configuration` still describes
//!   the source cluster: started alone in utility mode, it is rewritten to
//!   the restored primaries, mirrors and the standby coordinator removed
//!   ([`catalog_fixup_sql`]), then the cluster is brought up and its
//!   mirrors rebuilt with Greenplum's own tools ([`bring_up_commands`]);
//! * a restore config generated from the target cluster's own
//!   `gp_segment_configuration` is keyed by content id and dbid, and must
//!   have as many segments as the backup ([`check_segment_count`]).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::pg::quote::quote_literal;

/// The file where Greenplum 7 and Cloudberry keep `gp_dbid`.
pub const INTERNAL_AUTO_CONF: &str = "internal.auto.conf";

/// `internal.auto.conf` with `gp_dbid = dbid`: the existing line replaced
/// (every one, should there be several), else one added; other lines kept.
pub fn set_gp_dbid(text: &str, dbid: i32) -> String {
    let mut out = String::new();
    let mut done = false;
    for line in text.lines() {
        let key = line.split(['=', ' ', '\t']).next().unwrap_or("");
        if key == "gp_dbid" {
            if !done {
                out.push_str(&format!("gp_dbid = {dbid}\n"));
                done = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !done {
        out.push_str(&format!("gp_dbid = {dbid}\n"));
    }
    out
}

/// The dbid `internal.auto.conf` gives, if any.
pub fn gp_dbid(text: &str) -> Option<i32> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "gp_dbid").then(|| v.trim().trim_matches('\'').parse().ok())?
    })
}

/// Where `pg_tblspc/<oid>` of a restored instance links: the source's link
/// target is `<location>/<old dbid>`; the restored one is
/// `<new location>/<new dbid>` (the location kept when no new one is given).
pub fn tablespace_link(
    old_target: &Path,
    old_dbid: i32,
    new_location: Option<&Path>,
    new_dbid: i32,
) -> Result<PathBuf> {
    let last = old_target.file_name().and_then(|n| n.to_str());
    if last != Some(old_dbid.to_string().as_str()) {
        return Err(Error::Usage(format!(
            "tablespace link {} does not end in the instance's dbid {old_dbid}: it is not a Greenplum/Cloudberry tablespace of this instance",
            old_target.display()
        )));
    }
    let location = match new_location {
        Some(l) => l.to_path_buf(),
        None => old_target
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    Ok(location.join(new_dbid.to_string()))
}

/// The directory inside a tablespace link for one server version and
/// catalog version: `GPDB_<major>_<catversion>`.
pub fn tablespace_version_dir(major: u32, catversion: u32) -> String {
    format!("GPDB_{major}_{catversion}")
}

/// One restored primary, as the restored catalog must describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredPrimary {
    pub content_id: i32,
    /// The dbid it takes (`None`: the backed-up instance's, left as is).
    pub dbid: Option<i32>,
    pub hostname: String,
    pub address: String,
    pub port: u16,
    pub data_dir: String,
}

/// The statements, run on the restored coordinator started alone in
/// utility mode (`PGOPTIONS='-c gp_role=utility'`), that make its
/// `gp_segment_configuration` describe the restored cluster: each primary
/// at its new place with its dbid, up and in its preferred role; every
/// mirror and the standby coordinator removed (they are rebuilt after).
pub fn catalog_fixup_sql(primaries: &[RestoredPrimary]) -> Vec<String> {
    let mut sql = vec![
        "set allow_system_table_mods = on".to_string(),
        "begin".to_string(),
        "delete from gp_segment_configuration where role = 'm'".to_string(),
    ];
    for p in primaries {
        sql.push(format!(
            "update gp_segment_configuration set {}hostname = {}, address = {}, port = {}, datadir = {}, status = 'u', mode = 'n', preferred_role = 'p' where content = {} and role = 'p'",
            p.dbid.map(|d| format!("dbid = {d}, ")).unwrap_or_default(),
            quote_literal(&p.hostname),
            quote_literal(&p.address),
            p.port,
            quote_literal(&p.data_dir),
            p.content_id
        ));
    }
    sql.push("commit".to_string());
    sql
}

/// What brings the restored cluster up once its catalog is fixed, to run on
/// the restored coordinator's host as the cluster's OS user.
pub fn bring_up_commands(coordinator_dir: &str, mirrors: bool, standby: bool) -> Vec<String> {
    let mut cmds = vec![
        format!("pg_ctl stop -D {coordinator_dir} -m fast   # the coordinator, started in utility mode for the catalog fix-up"),
        format!("export COORDINATOR_DATA_DIRECTORY={coordinator_dir} MASTER_DATA_DIRECTORY={coordinator_dir}"),
        "gpstart -a".to_string(),
    ];
    cmds.extend(rebuild_commands(mirrors, standby));
    cmds
}

/// What rebuilds the mirrors and the standby coordinator of a restored
/// cluster (their rows were removed by [`catalog_fixup_sql`]): left to the
/// DBA, since where they go (hosts, directories, ports) is a placement
/// decision that the backup does not hold.
pub fn rebuild_commands(mirrors: bool, standby: bool) -> Vec<String> {
    let mut cmds = Vec::new();
    if mirrors {
        cmds.push("gpaddmirrors -a   # mirrors of the restored primaries (a full copy each; or gpaddmirrors -i FILE for placements)".into());
    }
    if standby {
        cmds.push("gpinitstandby -a -s STANDBY_HOST   # the standby coordinator".into());
    }
    cmds
}

/// The postmaster option that starts an instance alone, outside its
/// cluster (gppylib's `PgCtlBackendOptions.set_utility`); sent as a
/// session option too, it lets a client connect to a segment directly.
pub const UTILITY_MODE: &str = "-c gp_role=utility";

/// `gpstart -a -d DIR -t SECONDS`, with the coordinator's data directory in
/// the environment under both its names (`COORDINATOR_DATA_DIRECTORY` in
/// Greenplum 7 and Cloudberry, `MASTER_DATA_DIRECTORY` before), so that it
/// starts the cluster this coordinator describes whatever the caller's
/// environment says. `-t` bounds each instance's start.
pub fn gpstart_command(
    coordinator_dir: &Path,
    timeout: std::time::Duration,
) -> std::process::Command {
    let mut cmd = std::process::Command::new("gpstart");
    cmd.args(["-a", "-d"])
        .arg(coordinator_dir)
        .arg("-t")
        .arg(timeout.as_secs().max(1).to_string())
        .env("COORDINATOR_DATA_DIRECTORY", coordinator_dir)
        .env("MASTER_DATA_DIRECTORY", coordinator_dir)
        .stdin(std::process::Stdio::null());
    cmd
}

/// Runs [`gpstart_command`]: its last line of output when it succeeds.
pub fn run_gpstart(coordinator_dir: &Path, timeout: std::time::Duration) -> Result<String> {
    let by_hand = format!(
        "the restored catalog is fixed and every instance stopped: run `gpstart -a -d {}` on the coordinator's host as the cluster's OS user",
        coordinator_dir.display()
    );
    let out = match gpstart_command(coordinator_dir, timeout).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Usage(format!(
                "gpstart is not in the PATH of the coordinator's agent (start `cbdr agent` from a shell that sourced greenplum_path.sh or cloudberry-env.sh); {by_hand}"
            )))
        }
        Err(e) => return Err(Error::io(format!("running gpstart; {by_hand}"), e)),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = |n: usize| tail[tail.len().saturating_sub(n)..].join("\n");
    if !out.status.success() {
        return Err(Error::Server(format!(
            "gpstart -a failed ({}): {}; {by_hand} once the cause is fixed",
            out.status,
            last(5)
        )));
    }
    Ok(format!("gpstart -a: {}", last(1)))
}

/// A restore needs one target per instance of the backup: a target cluster
/// with another number of segments is refused (WAL-G #1527 restored such a
/// cluster anyway).
pub fn check_segment_count(backup_segments: usize, target_segments: usize) -> Result<()> {
    if backup_segments == target_segments {
        return Ok(());
    }
    Err(Error::Usage(format!(
        "the backup has {backup_segments} segments but the target cluster has {target_segments}: a Greenplum/Cloudberry cluster restores only onto as many segments (gpinitsystem the target with {backup_segments} primaries, or use the logical mode, which redistributes)"
    )))
}

/// The query that reads a (freshly initialised) target cluster's topology,
/// for a restore config keyed by content id and dbid.
pub const TARGET_TOPOLOGY_SQL: &str = "select content::text as content, dbid::text as dbid, role, hostname, address, port::text as port, datadir from gp_segment_configuration order by content, role";

/// One row of a target cluster's `gp_segment_configuration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRow {
    pub content_id: i32,
    pub dbid: i32,
    /// `p` primary, `m` mirror (or the standby coordinator, content -1).
    pub role: char,
    pub hostname: String,
    pub port: u16,
    pub data_dir: String,
}

/// The target cluster's `gp_segment_configuration`, read on its coordinator.
pub async fn read_target(params: &crate::pg::conn::ConnParams) -> Result<Vec<TargetRow>> {
    use crate::error::PgResultExt;
    use crate::pg::conn::{PgConn, Replication};
    let mut c = PgConn::connect(params, Replication::Off)
        .await
        .context("connecting to the target cluster's coordinator")?;
    let what =
        "reading the target's gp_segment_configuration (is it a Greenplum/Cloudberry coordinator?)";
    let rows = c.simple_query(TARGET_TOPOLOGY_SQL).await.context(what)?;
    c.close().await;
    rows.iter()
        .map(|r| {
            Ok(TargetRow {
                content_id: r.parse("content").context(what)?,
                dbid: r.parse("dbid").context(what)?,
                role: r
                    .get_str("role")
                    .context(what)?
                    .chars()
                    .next()
                    .unwrap_or('?'),
                hostname: r.get_str("hostname").context(what)?.to_string(),
                port: r.parse("port").context(what)?,
                data_dir: r.get_str("datadir").context(what)?.to_string(),
            })
        })
        .collect()
}

/// The restore config for a target cluster: each primary of the target
/// takes the backed-up instance of its content id, keeping the target's
/// dbid, host, port and directory (the target is stopped and its
/// directories replaced); the mirrors are returned apart (rebuilt after).
/// Refused when the target's primaries are not exactly the source's
/// content ids.
pub fn target_restore_config(
    rows: &[TargetRow],
    source_content_ids: &[i32],
    agent_port: u16,
) -> Result<(super::restore::RestoreConfig, Vec<TargetRow>)> {
    let primaries: Vec<&TargetRow> = rows.iter().filter(|r| r.role == 'p').collect();
    let source_segments = source_content_ids.iter().filter(|c| **c >= 0).count();
    let target_segments = primaries.iter().filter(|r| r.content_id >= 0).count();
    check_segment_count(source_segments, target_segments)?;
    for id in source_content_ids {
        if !primaries.iter().any(|r| r.content_id == *id) {
            return Err(Error::Usage(format!(
                "the target cluster has no primary of content id {id}: its gp_segment_configuration must have the same content ids as the backup's cluster"
            )));
        }
    }
    let segments = primaries
        .iter()
        .map(|r| super::restore::RestoreTarget {
            content_id: r.content_id,
            host: r.hostname.clone(),
            port: r.port,
            data_dir: PathBuf::from(&r.data_dir),
            agent: Some(format!("{}:{agent_port}", r.hostname)),
            dbid: Some(r.dbid),
            tablespace_map: Default::default(),
        })
        .collect();
    let mirrors = rows.iter().filter(|r| r.role != 'p').cloned().collect();
    Ok((super::restore::RestoreConfig { segments }, mirrors))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(content_id: i32, dbid: i32, role: char) -> TargetRow {
        TargetRow {
            content_id,
            dbid,
            role,
            hostname: format!("h{dbid}"),
            port: 6000 + dbid as u16,
            data_dir: format!("/d/{dbid}"),
        }
    }

    #[test]
    fn restore_configs_from_a_target_keep_its_dbids() {
        let rows = [
            row(-1, 1, 'p'),
            row(-1, 6, 'm'),
            row(0, 2, 'p'),
            row(0, 4, 'm'),
            row(1, 3, 'p'),
            row(1, 5, 'm'),
        ];
        let (rc, mirrors) = target_restore_config(&rows, &[-1, 0, 1], 7070).unwrap();
        assert_eq!(rc.segments.len(), 3);
        let s1 = rc.segments.iter().find(|s| s.content_id == 1).unwrap();
        assert_eq!((s1.dbid, s1.port, s1.host.as_str()), (Some(3), 6003, "h3"));
        assert_eq!(s1.agent.as_deref(), Some("h3:7070"));
        assert_eq!(mirrors.len(), 3);
        let text = rc.to_toml();
        assert!(text.contains("dbid = 3"), "{text}");
        let back: super::super::restore::RestoreConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, rc);

        let e = target_restore_config(&rows[..4], &[-1, 0, 1], 7070).unwrap_err();
        assert!(
            e.to_string()
                .contains("the backup has 2 segments but the target cluster has 1"),
            "{e}"
        );
        let e = target_restore_config(
            &[row(-1, 1, 'p'), row(0, 2, 'p'), row(2, 3, 'p')],
            &[-1, 0, 1],
            7070,
        )
        .unwrap_err();
        assert!(e.to_string().contains("no primary of content id 1"), "{e}");
    }

    #[test]
    fn gp_dbid_is_rewritten_and_other_lines_kept() {
        let text = "# Do not edit\ngp_dbid = 3\nsome_other = 'x'\n";
        let out = set_gp_dbid(text, 7);
        assert_eq!(out, "# Do not edit\ngp_dbid = 7\nsome_other = 'x'\n");
        assert_eq!(gp_dbid(&out), Some(7));
        assert_eq!(set_gp_dbid("", 2), "gp_dbid = 2\n");
        assert_eq!(set_gp_dbid("gp_dbid=1\ngp_dbid = 4\n", 9), "gp_dbid = 9\n");
        // A setting whose name only starts like it is not touched.
        assert_eq!(
            set_gp_dbid("gp_dbid_x = 1\n", 5),
            "gp_dbid_x = 1\ngp_dbid = 5\n"
        );
        assert_eq!(gp_dbid("gp_dbid = '12'\n"), Some(12));
        assert_eq!(gp_dbid("x = 1\n"), None);
    }

    #[test]
    fn tablespace_links_follow_the_dbid() {
        let old = Path::new("/data/ts1/3");
        assert_eq!(
            tablespace_link(old, 3, Some(Path::new("/new/ts1")), 5).unwrap(),
            PathBuf::from("/new/ts1/5")
        );
        assert_eq!(
            tablespace_link(old, 3, None, 8).unwrap(),
            PathBuf::from("/data/ts1/8")
        );
        let e = tablespace_link(Path::new("/data/ts1"), 3, None, 8).unwrap_err();
        assert!(
            e.to_string()
                .contains("does not end in the instance's dbid 3"),
            "{e}"
        );
        assert_eq!(tablespace_version_dir(7, 302307241), "GPDB_7_302307241");
    }

    #[test]
    fn the_catalog_fixup_describes_the_restored_primaries() {
        let sql = catalog_fixup_sql(&[
            RestoredPrimary {
                content_id: -1,
                dbid: None,
                hostname: "cdw2".into(),
                address: "cdw2".into(),
                port: 5432,
                data_dir: "/data/c-1".into(),
            },
            RestoredPrimary {
                content_id: 0,
                dbid: Some(2),
                hostname: "sdw'9".into(),
                address: "10.0.0.9".into(),
                port: 6000,
                data_dir: "/data/p0".into(),
            },
        ]);
        assert_eq!(sql[0], "set allow_system_table_mods = on");
        assert_eq!(
            sql[2],
            "delete from gp_segment_configuration where role = 'm'"
        );
        assert_eq!(
            sql[4],
            "update gp_segment_configuration set dbid = 2, hostname = 'sdw''9', address = '10.0.0.9', port = 6000, datadir = '/data/p0', status = 'u', mode = 'n', preferred_role = 'p' where content = 0 and role = 'p'"
        );
        assert!(
            sql[3].starts_with("update gp_segment_configuration set hostname = 'cdw2'"),
            "{}",
            sql[3]
        );
        assert_eq!(sql.last().unwrap(), "commit");
        assert_eq!(sql.len(), 6);
    }

    #[test]
    fn gpstart_names_the_coordinator_whatever_the_environment() {
        let cmd = gpstart_command(
            Path::new("/data/coordinator/gpseg-1"),
            std::time::Duration::from_secs(600),
        );
        assert_eq!(cmd.get_program(), "gpstart");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(args, ["-a", "-d", "/data/coordinator/gpseg-1", "-t", "600"]);
        let envs: Vec<_> = cmd
            .get_envs()
            .map(|(k, v)| (k.to_str().unwrap(), v.unwrap().to_str().unwrap()))
            .collect();
        assert!(envs.contains(&("COORDINATOR_DATA_DIRECTORY", "/data/coordinator/gpseg-1")));
        assert!(envs.contains(&("MASTER_DATA_DIRECTORY", "/data/coordinator/gpseg-1")));
        assert_eq!(rebuild_commands(false, false), Vec::<String>::new());
        assert!(rebuild_commands(true, true)[0].starts_with("gpaddmirrors -a"));
        assert!(rebuild_commands(true, true)[1].starts_with("gpinitstandby -a"));
    }

    #[test]
    fn bring_up_and_segment_counts() {
        let c = bring_up_commands("/data/c-1", true, true);
        assert!(c.iter().any(|l| l.starts_with("gpstart")));
        assert!(c.iter().any(|l| l.starts_with("gpaddmirrors")));
        assert!(c.iter().any(|l| l.starts_with("gpinitstandby")));
        assert_eq!(bring_up_commands("/d", false, false).len(), 3);
        check_segment_count(4, 4).unwrap();
        let e = check_segment_count(4, 3).unwrap_err();
        assert!(
            e.to_string()
                .contains("4 segments but the target cluster has 3"),
            "{e}"
        );
    }
}
