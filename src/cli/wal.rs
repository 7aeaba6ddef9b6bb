//! `wal-push` and `wal-fetch`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::config::Config;
use crate::error::Error;
use crate::repo::Repo;
use crate::wal::{self, FetchOptions, FetchOutcome, PushOptions};

#[derive(Debug, Args)]
pub struct WalPushArgs {
    /// The WAL file to archive (archive_command's %p).
    pub path: PathBuf,
    /// Content id of the segment (-1: the coordinator or a single server).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub content_id: i32,
}

#[derive(Debug, Args)]
pub struct WalFetchArgs {
    /// The WAL file name to restore (restore_command's %f).
    pub name: String,
    /// Where to write it (restore_command's %p).
    pub dest: PathBuf,
    /// Content id of the segment (-1: the coordinator or a single server).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub content_id: i32,
}

pub async fn push(config: &Config, args: WalPushArgs) -> Result<(), Error> {
    if wal::uploaded_ahead(&args.path) {
        return Ok(());
    }
    // wal_push checks the repository (prepare_write) after its memo: a
    // file uploaded ahead is acknowledged without the storage.
    let repo = Repo::open_unchecked(config).await?;
    let opts = PushOptions {
        content_id: args.content_id,
        concurrency: config.archive.push_concurrency,
    };
    wal::wal_push(&repo, &args.path, &opts).await.map(|_| ())
}

pub async fn fetch(config: &Config, args: &WalFetchArgs) -> Result<FetchOutcome, Error> {
    let opts = FetchOptions {
        content_id: args.content_id,
        concurrency: config.archive.fetch_concurrency,
        segment_size: config.archive.wal_segment_size,
        retry_budget: Duration::from_secs(config.archive.fetch_retry_budget),
    };
    wal::wal_fetch(|| Repo::open(config), &args.name, &args.dest, &opts).await
}
