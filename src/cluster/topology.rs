//! The instances of a cluster: from `[[cluster.segments]]`, or discovered
//! from a Greenplum/Cloudberry coordinator's `gp_segment_configuration`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::config::{ClusterConfig, ClusterKind, SegmentConfig};
use crate::error::{Error, PgResultExt, Result};
use crate::pg::conn::{ConnParams, PgConn, Replication};

/// The agent port assumed for discovered segments.
pub const DEFAULT_AGENT_PORT: u16 = 7070;

/// Content id of the coordinator (or of a single server).
pub const COORDINATOR: i32 = -1;

/// One instance (a primary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub content_id: i32,
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// `host:port` of the agent serving it.
    pub agent: String,
}

/// The instances, coordinator first, then by content id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    segments: Vec<Segment>,
    /// Greenplum/Cloudberry (restore points via `gp_create_restore_point`)
    /// or a group of plain PostgreSQL servers (the advisory-lock barrier).
    pub greenplum: bool,
}

impl Topology {
    /// From the config's `[[cluster.segments]]`; `None` when none are listed.
    pub fn from_config(cfg: &ClusterConfig) -> Result<Option<Topology>> {
        if cfg.segments.is_empty() {
            return Ok(None);
        }
        let segments = cfg
            .segments
            .iter()
            .map(|s| {
                Ok(Segment {
                    content_id: s.content_id,
                    host: s.host.clone(),
                    port: s.port,
                    data_dir: s.data_dir.clone(),
                    agent: s.agent.clone().ok_or_else(|| {
                        Error::Usage(format!(
                            "[[cluster.segments]] content_id = {}: `agent` is missing: give the host:port its `cbdr agent` listens on (e.g. \"{}:{DEFAULT_AGENT_PORT}\")",
                            s.content_id, s.host
                        ))
                    })?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Topology::new(segments, false).map(Some)
    }

    /// The cluster of the config: its listed segments, else (with
    /// `discover = true`) the coordinator's; `None` for a single server.
    pub async fn resolve(cfg: &ClusterConfig) -> Result<Option<Topology>> {
        if let Some(t) = Topology::from_config(cfg)? {
            return Ok(Some(t));
        }
        if !cfg.discover {
            return Ok(None);
        }
        let mut p = ConnParams::try_from_env().map_err(Error::Usage)?;
        if let Some(u) = &cfg.user {
            p.user = u.clone();
        }
        p.dbname = cfg.database.clone();
        match cfg.kind {
            ClusterKind::Citus => super::citus::discover(&p, cfg.agent_port).await.map(Some),
            ClusterKind::Postgres => Err(Error::Usage(
                "[cluster] kind = \"postgres\" with `discover = true`: a group of plain PostgreSQL servers has no catalog to discover them from; list them in [[cluster.segments]]".into(),
            )),
            ClusterKind::Auto | ClusterKind::Greenplum => {
                Topology::discover(&p, cfg.agent_port).await.map(Some)
            }
        }
    }

    /// Checks the instances: unique content ids, a coordinator (-1), and
    /// segments numbered from 0.
    pub fn new(mut segments: Vec<Segment>, greenplum: bool) -> Result<Topology> {
        segments.sort_by_key(|s| s.content_id);
        let mut seen = BTreeSet::new();
        for s in &segments {
            if s.content_id < COORDINATOR {
                return Err(Error::Usage(format!(
                    "[[cluster.segments]]: content_id {} is invalid: use -1 for the coordinator and 0, 1, ... for the segments",
                    s.content_id
                )));
            }
            if !seen.insert(s.content_id) {
                return Err(Error::Usage(format!(
                    "[[cluster.segments]]: content_id {} is listed twice: each instance needs its own content id",
                    s.content_id
                )));
            }
        }
        if !seen.contains(&COORDINATOR) {
            return Err(Error::Usage(
                "[[cluster.segments]]: no coordinator (content_id = -1): list it too, the restore point barrier runs there".into(),
            ));
        }
        Ok(Topology {
            segments,
            greenplum,
        })
    }

    /// The topology of a Greenplum/Cloudberry cluster, from its coordinator.
    pub async fn discover(coordinator: &ConnParams, agent_port: u16) -> Result<Topology> {
        let mut conn = PgConn::connect(coordinator, Replication::Off)
            .await
            .context("connecting to the coordinator")?;
        let rows = conn
            .simple_query(
                "select content::text as content, hostname, port::text as port, datadir from gp_segment_configuration where role = 'p' order by content",
            )
            .await
            .context(
                "reading gp_segment_configuration (if it does not exist, this is not a \
                 Greenplum/Cloudberry coordinator: list the instances in [[cluster.segments]] \
                 instead)",
            )?;
        conn.close().await;
        let segments = rows
            .iter()
            .map(|r| {
                let what = "reading gp_segment_configuration";
                let host = r.get_str("hostname").context(what)?.to_string();
                Ok(Segment {
                    content_id: r.parse("content").context(what)?,
                    agent: format!("{host}:{agent_port}"),
                    host,
                    port: r.parse("port").context(what)?,
                    data_dir: PathBuf::from(r.get_str("datadir").context(what)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Topology::new(segments, true)
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn coordinator(&self) -> &Segment {
        &self.segments[0]
    }

    pub fn segment(&self, content_id: i32) -> Option<&Segment> {
        self.segments.iter().find(|s| s.content_id == content_id)
    }

    /// Connection settings for an instance: libpq's environment, then the
    /// instance's host and port and the cluster's user and database.
    pub fn conn_params(&self, seg: &Segment, cfg: &ClusterConfig) -> Result<ConnParams> {
        let mut p = ConnParams::try_from_env().map_err(Error::Usage)?;
        p.host = seg.host.clone();
        p.port = seg.port;
        if let Some(u) = &cfg.user {
            p.user = u.clone();
        }
        p.dbname = cfg.database.clone();
        Ok(p)
    }

    /// The instances as config entries (for `restore-config`).
    pub fn as_config(&self) -> Vec<SegmentConfig> {
        self.segments
            .iter()
            .map(|s| SegmentConfig {
                content_id: s.content_id,
                host: s.host.clone(),
                port: s.port,
                data_dir: s.data_dir.clone(),
                agent: Some(s.agent.clone()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(id: i32) -> Segment {
        Segment {
            content_id: id,
            host: "h".into(),
            port: (6000 + id) as u16,
            data_dir: PathBuf::from(format!("/d/{id}")),
            agent: "h:7070".into(),
        }
    }

    #[test]
    fn sorted_with_coordinator_first() {
        let t = Topology::new(vec![seg(1), seg(-1), seg(0)], false).unwrap();
        let ids: Vec<i32> = t.segments().iter().map(|s| s.content_id).collect();
        assert_eq!(ids, [-1, 0, 1]);
        assert_eq!(t.coordinator().content_id, -1);
    }

    #[test]
    fn refuses_duplicates_and_missing_coordinator() {
        let e = Topology::new(vec![seg(-1), seg(0), seg(0)], false).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let e = Topology::new(vec![seg(0), seg(1)], false).unwrap_err();
        assert!(e.to_string().contains("no coordinator"), "{e}");
        let e = Topology::new(vec![seg(-1), seg(-2)], false).unwrap_err();
        assert!(e.to_string().contains("invalid"), "{e}");
    }

    #[test]
    fn from_config_needs_agents() {
        let cfg = crate::config::Config::parse(
            r#"
[[cluster.segments]]
content_id = -1
host = "cdw"
port = 5432
data_dir = "/data/c"
"#,
        )
        .unwrap();
        let e = Topology::from_config(&cfg.cluster).unwrap_err();
        assert!(e.to_string().contains("`agent` is missing"), "{e}");
        assert!(Topology::from_config(&Default::default())
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_cluster_template_parses() {
        let c = crate::config::Config::parse(include_str!("../../config-templates/cluster.toml"))
            .unwrap();
        assert_eq!(c.cluster.barrier_lock_key, 7300);
        let t = Topology::from_config(&c.cluster).unwrap().unwrap();
        assert_eq!(t.segments().len(), 3);
        assert_eq!(t.coordinator().agent, "cdw:7070");
    }

    #[test]
    fn the_docker_demo_config_parses() {
        let c =
            crate::config::Config::parse(include_str!("../../config-templates/docker/cbdr.toml"))
                .unwrap();
        let t = Topology::from_config(&c.cluster).unwrap().unwrap();
        assert_eq!(t.segments().len(), 3);
        assert_eq!(t.segment(1).unwrap().agent, "seg1:7070");
    }
}
