//! Cluster `check`: every instance checked by its own agent, at once, with
//! the agent's repository settings (storage and key live on the agent's
//! host: what is checked is what that instance's archiving and backups
//! use). An agent that cannot be reached is a failed check of its
//! instance, never the end of the others.

use std::time::Duration;

use futures_util::future::join_all;

use super::client::AgentClient;
use super::proto::CheckRequest;
use super::topology::{Segment, Topology};
use crate::config::Config;
use crate::physical::check::InstanceCheck;

#[derive(Debug, Clone)]
pub struct ClusterCheckOptions {
    pub wal_timeout: Duration,
    pub agent_timeout: Duration,
    pub connect_timeout: Duration,
}

/// The checks of every instance of `topo` (or only of content id `only`),
/// in the topology's order; `None` when `only` is not one of its instances.
pub async fn cluster_check(
    topo: &Topology,
    only: Option<i32>,
    config: &Config,
    opts: &ClusterCheckOptions,
) -> Option<Vec<InstanceCheck>> {
    let segments: Vec<&Segment> = topo
        .segments()
        .iter()
        .filter(|s| only.is_none_or(|id| id == s.content_id))
        .collect();
    if segments.is_empty() {
        return None;
    }
    Some(join_all(segments.into_iter().map(|s| check_one(s, config, opts))).await)
}

async fn check_one(seg: &Segment, config: &Config, opts: &ClusterCheckOptions) -> InstanceCheck {
    let instance = format!("{}:{}", seg.host, seg.port);
    let req = CheckRequest {
        content_id: seg.content_id,
        host: seg.host.clone(),
        port: seg.port,
        user: config.cluster.user.clone(),
        database: Some(config.cluster.database.clone()),
        wal_timeout_secs: opts.wal_timeout.as_secs(),
    };
    // The agent sends a heartbeat every second; the WAL wait is the
    // longest step.
    let silence = opts.agent_timeout.max(Duration::from_secs(5));
    let result = async {
        let client = AgentClient::connect(&seg.agent, &config.agent, opts.connect_timeout).await?;
        client.check(req, silence).await
    }
    .await;
    match result {
        Ok(mut report) => {
            report.instance = instance;
            report
        }
        Err(e) => InstanceCheck::failed(
            seg.content_id,
            instance,
            "agent",
            &e,
            &format!(
                "start `cbdr agent` on that host (it serves {}), or fix [[cluster.segments]] agent and the [agent] token/TLS settings",
                seg.agent
            ),
        ),
    }
}
