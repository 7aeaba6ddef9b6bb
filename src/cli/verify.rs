//! `verify`: flags and the report, for people or as JSON (the work is in
//! `repo::verify`).

use clap::Args;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::pg::WalSegmentName;
use crate::repo::verify::{verify as run_verify, VerifyOptions, VerifyReport, WalSince};
use crate::repo::Repo;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Only this backup: a base backup's name, or a cluster backup's (then
    /// every instance's backup of it). Default: every backup.
    #[arg(long, value_name = "NAME")]
    pub backup: Option<String>,
    /// Only the WAL archive (continuity, history files, the objects), not
    /// the backups' parts.
    #[arg(long)]
    pub wal: bool,
    /// Re-read the WAL objects from this segment on (any timeline), or
    /// `all`. Default: those after the watermark the last clean run stored
    /// (all on the first run). Continuity is always checked in full.
    #[arg(long, value_name = "SEGMENT|all")]
    pub wal_since: Option<String>,
    /// Only this instance (-1: the coordinator or a single server).
    /// Default: every instance in the repository.
    #[arg(long, allow_negative_numbers = true)]
    pub content_id: Option<i32>,
    /// Objects read at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
}

fn wal_since(arg: Option<&str>) -> Result<WalSince> {
    match arg {
        None => Ok(WalSince::Watermark),
        Some(a) if a.eq_ignore_ascii_case("all") => Ok(WalSince::All),
        Some(a) => WalSegmentName::parse(a).map(WalSince::From).ok_or_else(|| {
            Error::Usage(format!(
                "--wal-since {a:?} is not a WAL segment name (24 hex digits, e.g. 000000010000000000000042) or `all`"
            ))
        }),
    }
}

pub async fn verify(config: &Config, args: VerifyArgs) -> Result<()> {
    let wal_since = wal_since(args.wal_since.as_deref())?;
    if args.wal && args.backup.is_some() {
        return Err(Error::Usage(
            "--wal verifies the WAL archive only, --backup one backup: give one of them (--backup checks the WAL that backup needs too)".into(),
        ));
    }
    if args.parallel == 0 {
        return Err(Error::Usage("--parallel must be at least 1".into()));
    }
    let repo = Repo::open(config).await?;
    let opts = VerifyOptions {
        content_id: args.content_id,
        backup: args.backup,
        wal_only: args.wal,
        wal_since,
        parallel: args.parallel,
        default_segment_size: config.archive.wal_segment_size,
    };
    let report = run_verify(&repo, &opts).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serializable")
        );
    } else {
        print_report(&report);
    }
    match report.error() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn print_report(r: &VerifyReport) {
    for b in &r.backups {
        let files = if b.manifest_checked {
            format!(
                "{} files ({} MB) checked against the manifest",
                b.files,
                b.plain_bytes / 1_000_000
            )
        } else {
            "its record and manifest checked (a block-format backup: its blocks are checked by restore)".to_string()
        };
        println!(
            "{} backup {} (content {}): {} objects ({} MB stored), {files}{}",
            if b.faults == 0 { "ok   " } else { "FAULT" },
            b.name,
            b.content_id,
            b.objects,
            b.stored_bytes / 1_000_000,
            if b.faults == 0 {
                String::new()
            } else {
                format!(", {} faults", b.faults)
            }
        );
    }
    for c in &r.cluster_backups {
        println!("ok    cluster backup {c}: every instance's backup is there");
    }
    for w in &r.wal {
        let timelines = w
            .timelines
            .iter()
            .map(|t| format!("timeline {} {}..{}", t.timeline, t.first, t.last))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "{} WAL of content {}: {} segments needed by the backups, {} objects re-read ({} MB, from {}){}{}",
            if w.faults == 0 { "ok   " } else { "FAULT" },
            w.content_id,
            w.needed_segments,
            w.objects_read,
            w.stored_bytes_read / 1_000_000,
            w.since,
            if timelines.is_empty() {
                String::new()
            } else {
                format!("; {timelines}")
            },
            if w.faults == 0 {
                String::new()
            } else {
                format!(", {} faults", w.faults)
            }
        );
    }
    for f in &r.faults {
        println!("FAULT {f}");
    }
    if r.ok() && r.backups.is_empty() && r.wal.iter().all(|w| w.timelines.is_empty()) {
        println!("verify: nothing to verify: the repository holds no backup and no WAL here");
        return;
    }
    if r.ok() {
        println!(
            "verify: no faults ({} backups, {} instances' WAL, {:.1} s)",
            r.backups.len(),
            r.wal.len(),
            r.seconds
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_since_takes_a_segment_or_all() {
        assert_eq!(wal_since(None).unwrap(), WalSince::Watermark);
        assert_eq!(wal_since(Some("ALL")).unwrap(), WalSince::All);
        assert!(matches!(
            wal_since(Some("000000010000000000000042")).unwrap(),
            WalSince::From(_)
        ));
        let e = wal_since(Some("0/42")).unwrap_err();
        assert_eq!(e.exit_code(), crate::error::ExitCode::Usage);
    }
}
