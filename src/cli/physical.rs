//! `backup-push`, `create-restore-point`, `restore` for one server (or one
//! instance of a cluster, by --content-id).

use std::time::Duration;

use super::args::{parse_time, BackupPushArgs, RestoreArgs, RestorePointArgs};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pg::Lsn;
use crate::physical::backup::{backup_push, BackupOptions, PART_TARGET};
use crate::physical::restore::{restore, RecoveryTarget, RestoreOptions, TargetAction};
use crate::physical::restore_point::create_restore_point;
use crate::repo::Repo;

pub async fn backup(config: &Config, content_id: i32, args: BackupPushArgs) -> Result<()> {
    let repo = Repo::open(config).await?;
    let opts = BackupOptions {
        content_id,
        conn: args.conn.params()?,
        wal_wait: Duration::from_secs(args.wal_wait),
        part_target: PART_TARGET,
        compress_on: config.compression.compress_on,
        progress: None,
        mode: args.mode(),
        delta_max_steps: config.backup.delta_max_steps,
    };
    let b = backup_push(&repo, &opts).await?;
    let kind = match &b.base {
        Some(base) => format!("delta of {base}, a chain of {}", b.chain_len()),
        None => "full".to_string(),
    };
    println!(
        "backup {} complete ({kind}): {} to {}, {} MB, stored {} MB",
        b.name,
        b.start_lsn,
        b.stop_lsn,
        b.plain_bytes() / 1_000_000,
        b.stored_bytes() / 1_000_000
    );
    super::delete::after_backup(&repo, config, Some(content_id)).await;
    Ok(())
}

pub async fn restore_point(config: &Config, content_id: i32, args: RestorePointArgs) -> Result<()> {
    let repo = Repo::open(config).await?;
    let rp = create_restore_point(
        &repo,
        content_id,
        &args.name,
        &args.conn.params()?,
        Duration::from_secs(args.wal_wait),
    )
    .await?;
    println!(
        "restore point {} at {} (timeline {})",
        rp.name, rp.lsn, rp.timeline
    );
    Ok(())
}

pub async fn restore_cmd(config: &Config, content_id: i32, args: RestoreArgs) -> Result<()> {
    let Some(target_dir) = args.target_dir.clone() else {
        return Err(Error::Usage(
            "--target-dir is required: the directory to restore into (empty or absent)".into(),
        ));
    };
    if args.standby {
        return Err(Error::Usage(
            "--standby restores a standby cluster through its agents: configure [cluster] (a single server is a cluster of one: one [[cluster.segments]] with content_id = -1 and its agent) and leave out --content-id".into(),
        ));
    }
    if args.restore_config.is_some() || args.rollback_prepared {
        return Err(Error::Usage(
            "--restore-config and --rollback-prepared are for clusters: configure [[cluster.segments]] and leave out --content-id".into(),
        ));
    }
    let target = if let Some(n) = args.restore_point {
        RecoveryTarget::RestorePoint(n)
    } else if let Some(t) = args.target_time {
        RecoveryTarget::Time(parse_time(&t)?)
    } else if let Some(l) = args.target_lsn {
        RecoveryTarget::Lsn(
            l.parse::<Lsn>()
                .map_err(|e| Error::Usage(format!("--target-lsn: {e}")))?,
        )
    } else if let Some(x) = args.target_xid {
        RecoveryTarget::Xid(x)
    } else if args.immediate {
        RecoveryTarget::Immediate
    } else {
        RecoveryTarget::Latest
    };
    let mut map = Vec::new();
    for m in &args.tablespace_map {
        let (old, new) = m
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--tablespace-map {m:?}: use OLD=NEW")))?;
        map.push((old.to_string(), new.to_string()));
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the cbdr executable", e))?;
    let mut restore_command = format!("{}", exe.display());
    if let Some(src) = &config.source {
        let abs = std::fs::canonicalize(src).unwrap_or(src.clone());
        restore_command.push_str(&format!(" --config {}", abs.display()));
    }
    restore_command.push_str(&format!(" wal-fetch %f %p --content-id {content_id}"));
    let repo = Repo::open(config).await?;
    let target_dir = std::path::absolute(&target_dir).unwrap_or(target_dir);
    let opts = RestoreOptions {
        content_id,
        target_dir: target_dir.clone(),
        backup: args.backup,
        target,
        action: args.target_action,
        tablespace_map: map,
        force: args.force,
        restore_command,
        parallel: args.parallel,
        archive_off: args.archive_mode == "off",
        settings: Vec::new(),
        progress: None,
        gp_dbid: None,
    };
    let b = restore(&repo, &opts).await?;
    if args.start {
        use crate::physical::start;
        // To the latest WAL: replay must reach the end of what is archived
        // now (read before the server starts and can archive anything).
        let to_latest =
            opts.target == RecoveryTarget::Latest && args.target_action == TargetAction::Promote;
        let ends = if to_latest {
            Some(start::archive_ends(&repo, content_id).await?)
        } else {
            None
        };
        let (dir, action) = (target_dir.clone(), args.target_action);
        let (port, bin, timeout) = (
            args.port,
            args.pg_bin.clone(),
            Duration::from_secs(args.start_timeout),
        );
        let outcome = tokio::task::spawn_blocking(move || {
            start::start_and_wait(&dir, bin.as_deref(), port, &[], action, timeout)
        })
        .await
        .map_err(|e| Error::Internal(format!("start task: {e}")))??;
        if let Some(ends) = ends {
            let (timeline, end) = start::end_of_recovery(&target_dir)?;
            let last = ends.get(&timeline).copied();
            if let Err(gap) = start::check_reached_archive_end(
                timeline,
                end,
                last,
                config.archive.wal_segment_size,
            ) {
                // It promoted: stop it before it takes writes on a branch
                // that lacks committed data.
                let stopped = match start::stop_fast(&target_dir, args.pg_bin.as_deref()) {
                    Ok(()) => {
                        "the server was stopped so that nothing is written on its new timeline"
                            .to_string()
                    }
                    Err(e) => {
                        format!("stopping the server failed ({e}): stop it before it takes writes")
                    }
                };
                return Err(Error::Integrity(format!(
                    "{gap}; {stopped}. Find why replay stopped in {} (the WAL file named there is damaged), repair it in the repository, and restore again",
                    target_dir.join("cbdr-start.log").display()
                )));
            }
        }
        println!(
            "restored backup {}{} into {}: {outcome}",
            b.name,
            chain_note(&b),
            target_dir.display()
        );
        return Ok(());
    }
    println!(
        "restored backup {}{} into {}: start the server to recover (to {})",
        b.name,
        chain_note(&b),
        target_dir.display(),
        opts.target
    );
    Ok(())
}

/// " (a delta: blocks read from a chain of N backups)" for a delta.
fn chain_note(b: &crate::repo::catalog::BackupRecord) -> String {
    match b.is_delta() {
        true => format!(
            " (a delta: blocks read from its chain of {} backups)",
            b.chain_len()
        ),
        false => String::new(),
    }
}
