//! `wal-receive`: stream WAL into the repository through a replication slot.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::sync::watch;

use super::args::ConnArgs;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::wal::receive::{receive_wal, ReceiveOptions};

#[derive(Debug, Args)]
pub struct WalReceiveArgs {
    /// Content id of the server (-1: the coordinator or a single server).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub content_id: i32,
    /// The physical replication slot holding the server's WAL until it is
    /// in the repository.
    #[arg(long)]
    pub slot: String,
    /// Create the slot if it does not exist (it then holds WAL from the
    /// server's last checkpoint on).
    #[arg(long)]
    pub create_slot: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Seconds between status reports to the server; keep it below the
    /// server's wal_sender_timeout.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub status_interval: u64,
}

/// Runs until SIGINT or SIGTERM, then stops cleanly (exit code 0).
pub async fn receive(config: &Config, args: WalReceiveArgs) -> Result<()> {
    let repo = Arc::new(Repo::open(config).await?);
    let mut opts = ReceiveOptions::new(args.content_id, args.conn.params()?, args.slot);
    opts.create_slot = args.create_slot;
    opts.status_interval = Duration::from_secs(args.status_interval);

    let (stop, shutdown) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("wal-receive: stopping");
        let _ = stop.send(true);
        // Keep the sender: dropping it also means "stop".
        std::future::pending::<()>().await;
    });
    receive_wal(repo, opts, shutdown).await
}
