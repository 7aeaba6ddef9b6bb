//! `cbdr repo-init`: creates the repository once, with its key.

use clap::Args;

use crate::config::Config;
use crate::error::Result;
use crate::repo::{InitOutcome, Repo, REPO_FORMAT};

#[derive(Debug, Args)]
pub struct RepoInitArgs {
    /// Record the configured key in a repository made by an older cbdr
    /// (format 1), which did not record one. Give the repository's key.
    #[arg(long)]
    pub upgrade: bool,
}

pub async fn init(config: &Config, args: RepoInitArgs) -> Result<()> {
    let repo = Repo::open_unchecked(config).await?;
    let location = repo.storage.location();
    match repo.init(args.upgrade).await? {
        InitOutcome::Created(key) => println!(
            "created a cbdr repository (format {REPO_FORMAT}, {key}) at {location}"
        ),
        InitOutcome::AlreadyThere(key) => println!(
            "the cbdr repository at {location} is already there ({key}, the configured key matches): nothing to do"
        ),
        InitOutcome::Upgraded(key) => println!(
            "upgraded the cbdr repository at {location} to format {REPO_FORMAT}: it now records its key ({key}); writers with another key are refused"
        ),
    }
    Ok(())
}
