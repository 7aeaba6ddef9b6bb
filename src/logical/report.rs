//! The report files gpbackup and gprestore write, in their layout:
//! `gpbackup_{TS}_report` and `gprestore_{TS}_{RESTORE_TS}_report`, plus
//! the list of what failed under `--on-error-continue`.

use std::fmt::Write as _;

use chrono::{DateTime, Local, Utc};

use super::record::LogicalBackupRecord;

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

fn duration(start: DateTime<Utc>, end: DateTime<Utc>) -> String {
    let s = (end - start).num_seconds().max(0);
    format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn local(t: DateTime<Utc>) -> String {
    t.with_timezone(&Local)
        .format("%a %b %d %Y %H:%M:%S")
        .to_string()
}

fn line(out: &mut String, key: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{:<28}{value}", format!("{key}:"));
}

/// What the backup report says besides the record.
pub struct BackupOutcome<'a> {
    pub error: Option<&'a str>,
    pub database_size: Option<u64>,
    /// The incremental chain, oldest first (this backup last).
    pub chain: Vec<String>,
    /// Why every table was copied again, for an incremental.
    pub full_copy_reason: Option<String>,
}

pub fn backup_report(r: &LogicalBackupRecord, o: &BackupOutcome) -> String {
    let mut out = String::from("cbdr Logical Backup Report (gpbackup layout)\n\n");
    line(&mut out, "timestamp key", &r.timestamp);
    line(&mut out, "postgresql version", &r.server_version);
    if r.server_flavor.is_mpp() {
        line(&mut out, "server flavor", r.server_flavor.as_str());
    }
    line(&mut out, "cbdr version", &r.cbdr_version);
    out.push('\n');
    line(&mut out, "database name", &r.database);
    line(&mut out, "command line", &r.options.command_line);
    let compression = match (r.options.compression.as_str(), r.options.compression_level) {
        ("none", _) => "None".to_string(),
        (m, Some(l)) => format!("{m} (level {l})"),
        (m, None) => m.to_string(),
    };
    line(&mut out, "compression", compression);
    line(
        &mut out,
        "encryption",
        if r.encrypted { "Yes" } else { "No" },
    );
    line(&mut out, "plugin executable", "None");
    let section = if r.options.metadata_only {
        "Metadata Only"
    } else if r.options.data_only {
        "Data Only"
    } else {
        "All Sections"
    };
    line(&mut out, "backup section", section);
    let filtering = if !r.options.include_tables.is_empty() {
        "Table Filter"
    } else if !r.options.exclude_tables.is_empty() {
        "Table Exclusion Filter"
    } else if !r.options.include_schemas.is_empty() {
        "Schema Filter"
    } else if !r.options.exclude_schemas.is_empty() {
        "Schema Exclusion Filter"
    } else {
        "None"
    };
    line(&mut out, "object filtering", filtering);
    line(
        &mut out,
        "includes statistics",
        if r.options.with_stats { "Yes" } else { "No" },
    );
    line(
        &mut out,
        "data file format",
        if r.options.single_data_file {
            "Single Data File"
        } else {
            "Multiple Data Files"
        },
    );
    line(
        &mut out,
        "incremental",
        if r.options.incremental {
            "True"
        } else {
            "False"
        },
    );
    if r.options.incremental {
        line(&mut out, "incremental backup set", o.chain.join(", "));
        if let Some(why) = &o.full_copy_reason {
            line(&mut out, "every table copied because", why);
        }
    }
    out.push('\n');
    line(&mut out, "start time", local(r.start_time));
    line(&mut out, "end time", local(r.end_time));
    line(&mut out, "duration", duration(r.start_time, r.end_time));
    out.push('\n');
    match o.error {
        None => line(&mut out, "backup status", "Success"),
        Some(e) => {
            line(&mut out, "backup status", "Failure");
            line(&mut out, "backup error", e);
        }
    }
    out.push('\n');
    if let Some(size) = o.database_size {
        line(&mut out, "database size", human(size));
    }
    line(&mut out, "segment count", r.segment_count);
    let own = r.own_tables().count();
    line(
        &mut out,
        "tables with data",
        format!(
            "{} ({own} copied, {} unchanged and kept from earlier backups)",
            r.tables.len(),
            r.tables.len() - own
        ),
    );
    line(&mut out, "rows", r.rows());
    if let Some(lo) = &r.large_objects {
        line(
            &mut out,
            "large objects",
            format!("{} ({} plain)", lo.objects, human(lo.plain_bytes)),
        );
    }
    line(&mut out, "bytes (plain)", human(r.plain_bytes()));
    line(&mut out, "bytes (stored)", human(r.stored_bytes()));
    if !r.object_counts.is_empty() {
        out.push_str("\ncount of database objects in backup:\n");
        for (kind, n) in &r.object_counts {
            let _ = writeln!(out, "{:<28}{n}", kind.to_lowercase());
        }
    }
    skipped_objects(&mut out, r);
    out
}

/// The objects a `--skip-unsupported` backup left out.
fn skipped_objects(out: &mut String, r: &LogicalBackupRecord) {
    if r.skipped_objects.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\nobjects not in the backup (--skip-unsupported): {}",
        r.skipped_objects.len()
    );
    for o in &r.skipped_objects {
        let _ = writeln!(out, "  {o}");
    }
}

/// One thing that failed in a restore.
#[derive(Debug, Clone)]
pub struct RestoreFailure {
    /// "metadata" or "data".
    pub phase: &'static str,
    pub object: String,
    pub error: String,
}

pub struct RestoreOutcome<'a> {
    pub backup: &'a LogicalBackupRecord,
    pub restore_timestamp: String,
    pub target_database: String,
    pub command_line: String,
    pub server_version: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub fatal: Option<String>,
    pub failures: &'a [RestoreFailure],
    pub tables_restored: usize,
    /// Tables loaded through several connections at once.
    pub tables_split: usize,
    pub rows_restored: u64,
    pub statements_run: usize,
    pub errors_key: Option<String>,
}

pub fn restore_report(o: &RestoreOutcome) -> String {
    let mut out = String::from("cbdr Logical Restore Report (gprestore layout)\n\n");
    line(&mut out, "timestamp key", &o.backup.timestamp);
    line(&mut out, "restore timestamp", &o.restore_timestamp);
    line(&mut out, "postgresql version", &o.server_version);
    line(&mut out, "cbdr version", env!("CARGO_PKG_VERSION"));
    out.push('\n');
    line(&mut out, "database name", &o.target_database);
    line(&mut out, "command line", &o.command_line);
    out.push('\n');
    line(&mut out, "backup segment count", o.backup.segment_count);
    line(&mut out, "restore segment count", 0);
    line(&mut out, "start time", local(o.start));
    line(&mut out, "end time", local(o.end));
    line(&mut out, "duration", duration(o.start, o.end));
    out.push('\n');
    let status = match (&o.fatal, o.failures.is_empty()) {
        (Some(_), _) => "Failure".to_string(),
        (None, true) => "Success".to_string(),
        (None, false) => format!(
            "Success but non-fatal errors occurred. See {} for details.",
            o.errors_key.as_deref().unwrap_or("the error list")
        ),
    };
    line(&mut out, "restore status", status);
    if let Some(e) = &o.fatal {
        line(&mut out, "restore error", e);
    }
    out.push('\n');
    line(&mut out, "statements run", o.statements_run);
    line(&mut out, "tables with data restored", o.tables_restored);
    line(&mut out, "tables loaded in parallel", o.tables_split);
    line(&mut out, "rows restored", o.rows_restored);
    let meta = o.failures.iter().filter(|f| f.phase == "metadata").count();
    let data = o.failures.iter().filter(|f| f.phase == "data").count();
    line(&mut out, "failed statements", meta);
    line(&mut out, "failed tables (data)", data);
    skipped_objects(&mut out, o.backup);
    out
}

/// The error list: one line per failure, tab-separated (phase, object,
/// error), as gprestore's error_tables files list the tables.
pub fn failures_text(failures: &[RestoreFailure]) -> String {
    let mut out = String::new();
    for f in failures {
        let _ = writeln!(
            out,
            "{}\t{}\t{}",
            f.phase,
            f.object,
            f.error.replace(['\n', '\t'], " ")
        );
    }
    out
}
