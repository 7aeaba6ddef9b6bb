//! The agent's WAL streaming: one `receive_wal` task per instance listed
//! in `[agent] stream_wal`, each on its own permanent replication slot.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::topology::{Topology, COORDINATOR};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::wal::receive::{receive_wal, ReceiveOptions};

pub const DEFAULT_SLOT_PREFIX: &str = "cbdr";

/// The slot of an instance: `cbdr_seg0`, `cbdr_coordinator`.
pub fn slot_name(prefix: &str, content_id: i32) -> String {
    if content_id == COORDINATOR {
        format!("{prefix}_coordinator")
    } else {
        format!("{prefix}_seg{content_id}")
    }
}

/// Running receivers; [`WalStreams::stop`] ends them.
pub struct WalStreams {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl WalStreams {
    /// Starts a receiver for each content id (none: nothing runs). Checks
    /// the ids against the topology before anything starts.
    pub async fn start(config: &Config, content_ids: &[i32]) -> Result<WalStreams> {
        let (stop, rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        if content_ids.is_empty() {
            return Ok(WalStreams { stop, tasks });
        }
        let topo = Topology::resolve(&config.cluster).await?.ok_or_else(|| {
            Error::Usage(
                "[agent] stream_wal names instances, but no [[cluster.segments]] are configured: list them (host and port of each)".into(),
            )
        })?;
        let repo = Arc::new(Repo::open(config).await?);
        let prefix = config
            .agent
            .wal_slot_prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_SLOT_PREFIX.to_string());
        for &id in content_ids {
            let seg = topo.segment(id).ok_or_else(|| {
                Error::Usage(format!(
                    "[agent] stream_wal: content id {id} is not in [[cluster.segments]]"
                ))
            })?;
            let mut opts = ReceiveOptions::new(
                id,
                topo.conn_params(seg, &config.cluster)?,
                slot_name(&prefix, id),
            );
            opts.create_slot = true;
            tracing::info!(
                "streaming the WAL of content {id} ({}:{}) through slot {}",
                seg.host,
                seg.port,
                opts.slot
            );
            let (repo, rx) = (repo.clone(), rx.clone());
            tasks.spawn(async move {
                if let Err(e) = receive_wal(repo, opts, rx).await {
                    tracing::error!(
                        "WAL streaming of content {id} stopped: {e}. The agent keeps serving; fix the cause and restart it (archive_command, if set, still archives)"
                    );
                }
            });
        }
        Ok(WalStreams { stop, tasks })
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Asks every receiver to stop and waits for them.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names() {
        assert_eq!(slot_name("cbdr", -1), "cbdr_coordinator");
        assert_eq!(slot_name("cbdr", 12), "cbdr_seg12");
        for id in [-1, 0, 999] {
            crate::pg::replication::validate_slot_name(&slot_name("cbdr", id)).unwrap();
        }
    }
}
