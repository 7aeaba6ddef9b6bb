//! `cbdr agent`: run the per-host agent of the cluster mode.

use std::sync::Arc;

use clap::Args;

use crate::cluster::agent::{Agent, DEFAULT_LISTEN};
use crate::cluster::streaming::WalStreams;
use crate::config::Config;
use crate::error::{Error, Result};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Address to listen on (else [agent] listen, else 0.0.0.0:7070).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Check the agent's settings (token, TLS files) and exit.
    #[arg(long)]
    pub check: bool,
    /// Stream this instance's WAL into the repository through a replication
    /// slot (repeatable; else [agent] stream_wal).
    #[arg(long, value_name = "CONTENT_ID", allow_negative_numbers = true)]
    pub stream_wal: Vec<i32>,
}

pub async fn run(config: &Config, args: AgentArgs) -> Result<()> {
    let listen = args
        .listen
        .or_else(|| config.agent.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
    let agent = Agent::new(config.clone())?;
    if args.check {
        println!(
            "agent settings are usable: would listen on {listen} ({})",
            agent.describe()
        );
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        tracing::warn!(
            "the agent runs as root: restored files will belong to root and PostgreSQL cannot start as root; run it as the database's OS user (e.g. postgres or gpadmin)"
        );
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| Error::io(format!("listening on {listen}"), e))?;
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(listen);
    tracing::info!(
        "cbdr agent {} listening on {bound} ({})",
        env!("CARGO_PKG_VERSION"),
        agent.describe()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::io("installing the SIGTERM handler", e))?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        }
    };
    let stream_ids = if args.stream_wal.is_empty() {
        config.agent.stream_wal.clone()
    } else {
        args.stream_wal.clone()
    };
    let streams = WalStreams::start(config, &stream_ids).await?;
    let served = Arc::new(agent).serve(listener, shutdown).await;
    streams.stop().await;
    served
}
