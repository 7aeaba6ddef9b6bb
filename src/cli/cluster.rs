//! The cluster side of `backup-push`, `create-restore-point`, `restore`,
//! and `restore-config`: used when a [cluster] is configured and no
//! `--content-id` names a single instance.

use std::time::Duration;

use super::physical::RestorePointArgs;
use crate::cluster::restore_point::create_cluster_restore_point;
use crate::cluster::topology::Topology;
use crate::config::Config;
use crate::error::Result;
use crate::repo::Repo;

pub async fn restore_point(config: &Config, topo: &Topology, args: &RestorePointArgs) -> Result<()> {
    let repo = Repo::open(config).await?;
    let rp = create_cluster_restore_point(
        &repo,
        topo,
        &config.cluster,
        &args.name,
        Duration::from_secs(args.wal_wait),
    )
    .await?;
    println!(
        "cluster restore point {} on {} instances (writers held {} ms):",
        rp.name,
        rp.segments.len(),
        rp.barrier_millis
    );
    for s in &rp.segments {
        println!(
            "  content {:>3}: {} (timeline {})",
            s.content_id, s.lsn, s.timeline
        );
    }
    Ok(())
}
