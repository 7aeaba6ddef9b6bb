//! The flag rules of gpbackup and gprestore, with their messages: which
//! flags may not be given together, which need another, and the values
//! they accept. The command line records which flags were given (pflag's
//! "changed", so `--jobs 1` counts as given) and these functions refuse
//! what the originals refuse, for the same reason.

use std::collections::BTreeSet;
use std::path::Path;

use crate::codec::Compression;
use crate::error::{Error, Result};

/// The flags given on the command line, by name (without the dashes).
#[derive(Debug, Clone, Default)]
pub struct Changed(BTreeSet<&'static str>);

impl Changed {
    pub fn new() -> Changed {
        Changed::default()
    }

    /// Records `name` as given when `given`.
    pub fn mark(&mut self, name: &'static str, given: bool) -> &mut Self {
        if given {
            self.0.insert(name);
        }
        self
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// At most one of `names` may be given (gpbackup's CheckExclusiveFlags).
pub fn check_exclusive(changed: &Changed, names: &[&str]) -> Result<()> {
    if names.iter().filter(|n| changed.has(n)).count() > 1 {
        return Err(Error::Usage(format!(
            "The following flags may not be specified together: {}",
            names.join(", ")
        )));
    }
    Ok(())
}

/// gpbackup's validateFlagCombinations.
pub fn validate_backup_combinations(c: &Changed) -> Result<()> {
    check_exclusive(c, &["debug", "quiet", "verbose"])?;
    check_exclusive(c, &["data-only", "metadata-only", "incremental"])?;
    check_exclusive(
        c,
        &[
            "include-schema",
            "include-schema-file",
            "include-table",
            "include-table-file",
        ],
    )?;
    check_exclusive(
        c,
        &[
            "exclude-schema",
            "exclude-schema-file",
            "include-schema",
            "include-schema-file",
        ],
    )?;
    check_exclusive(
        c,
        &[
            "exclude-schema",
            "exclude-schema-file",
            "exclude-table",
            "include-table",
            "exclude-table-file",
            "include-table-file",
        ],
    )?;
    check_exclusive(c, &["jobs", "metadata-only", "single-data-file"])?;
    check_exclusive(c, &["metadata-only", "leaf-partition-data"])?;
    check_exclusive(c, &["no-compression", "compression-type"])?;
    check_exclusive(c, &["no-compression", "compression-level"])?;
    check_exclusive(c, &["plugin-config", "backup-dir"])?;
    if c.has("copy-queue-size") && !c.has("single-data-file") {
        return Err(Error::Usage(
            "--copy-queue-size must be specified with --single-data-file".into(),
        ));
    }
    if c.has("from-timestamp") && !c.has("incremental") {
        return Err(Error::Usage(
            "--from-timestamp must be specified with --incremental".into(),
        ));
    }
    if c.has("incremental") && !c.has("leaf-partition-data") {
        return Err(Error::Usage(
            "--leaf-partition-data must be specified with --incremental".into(),
        ));
    }
    Ok(())
}

/// gprestore's ValidateFlagCombinations.
pub fn validate_restore_combinations(c: &Changed) -> Result<()> {
    check_exclusive(c, &["data-only", "with-globals"])?;
    check_exclusive(c, &["data-only", "create-db"])?;
    check_exclusive(c, &["debug", "quiet", "verbose"])?;
    check_exclusive(
        c,
        &["include-schema", "include-table", "include-table-file"],
    )?;
    check_exclusive(c, &["exclude-schema", "include-schema"])?;
    check_exclusive(
        c,
        &[
            "exclude-schema",
            "exclude-table",
            "include-table",
            "exclude-table-file",
            "include-table-file",
        ],
    )?;
    check_exclusive(c, &["metadata-only", "data-only"])?;
    check_exclusive(c, &["plugin-config", "backup-dir"])?;
    check_exclusive(c, &["truncate-table", "metadata-only", "incremental"])?;
    check_exclusive(c, &["truncate-table", "redirect-schema"])?;
    if c.has("redirect-schema") {
        if c.has("exclude-schema")
            || c.has("exclude-schema-file")
            || c.has("exclude-table")
            || c.has("exclude-table-file")
        {
            return Err(Error::Usage(
                "Cannot use --redirect-schema with exclude flags".into(),
            ));
        }
        if !(c.has("include-table")
            || c.has("include-table-file")
            || c.has("include-schema")
            || c.has("include-schema-file"))
        {
            return Err(Error::Usage("Cannot use --redirect-schema without --include-table, --include-table-file, --include-schema, or --include-schema-file".into()));
        }
    }
    if c.has("truncate-table")
        && !(c.has("include-table") || c.has("include-table-file"))
        && !c.has("data-only")
    {
        return Err(Error::Usage("Cannot use --truncate-table without --include-table or --include-table-file and without --data-only".into()));
    }
    if c.has("incremental") && !c.has("data-only") {
        return Err(Error::Usage(
            "Cannot use --incremental without --data-only".into(),
        ));
    }
    check_exclusive(c, &["run-analyze", "with-stats"])?;
    Ok(())
}

/// gpbackup's ValidateFullPath: directories must be absolute.
pub fn validate_full_path(path: &str) -> Result<()> {
    if !path.is_empty() && !path.starts_with('/') {
        return Err(Error::Usage(format!("{path} is not an absolute path.")));
    }
    Ok(())
}

/// gpbackup's `--copy-queue-size` rule.
pub fn validate_copy_queue_size(n: i64) -> Result<()> {
    if n < 2 {
        return Err(Error::Usage(format!(
            "--copy-queue-size {n} is invalid. Must be at least 2"
        )));
    }
    Ok(())
}

/// The codec settings a backup is written with.
///
/// gpbackup's `--compression-type` takes gzip or zstd; cbdr's codec has no
/// gzip, so `gzip` is accepted and written as zstd at the same level (zstd
/// at levels 1-9 compresses better than gzip and is several times faster).
/// cbdr's own methods (lz4, zstd, lzma, brotli, none) are accepted too.
/// Without `--compression-type` the config's `[compression]` method is used
/// (lz4 by default, where gpbackup defaults to gzip).
pub fn choose_compression(
    compression_type: Option<&str>,
    level: Option<i32>,
    no_compression: bool,
    config_method: Compression,
    config_level: Option<i32>,
) -> Result<(Compression, Option<i32>)> {
    if no_compression {
        return Ok((Compression::None, None));
    }
    let (method, allowed): (Compression, std::ops::RangeInclusive<i32>) = match compression_type {
        None => {
            let m = config_method;
            (m, m.level_range())
        }
        Some("gzip") => (Compression::Zstd, 1..=9),
        Some("zstd") => (Compression::Zstd, 1..=19),
        Some(other) => match Compression::from_name(other) {
            Some(m) => (m, m.level_range()),
            None => {
                return Err(Error::Usage(format!(
                    "unknown compression type '{other}' (cbdr accepts gzip, zstd, lz4, lzma, brotli and none)"
                )))
            }
        },
    };
    match level {
        Some(l) if !allowed.contains(&l) => {
            let name = compression_type.unwrap_or(method.name());
            Err(Error::Usage(format!(
                "compression type '{name}' only allows compression levels between {} and {}, but the provided level is {l}",
                allowed.start(),
                allowed.end()
            )))
        }
        Some(l) => Ok((method, Some(l))),
        None if compression_type.is_none() => Ok((method, config_level)),
        None => Ok((method, None)),
    }
}

/// The lines of an include/exclude file: one name a line, blank lines
/// ignored (gpbackup's ReadLinesFromFile).
pub fn read_list_file(path: &Path, flag: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Usage(format!(
            "--{flag} {}: cannot read the file ({e})",
            path.display()
        ))
    })?;
    Ok(text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(names: &[&'static str]) -> Changed {
        let mut c = Changed::new();
        for n in names {
            c.mark(n, true);
        }
        c
    }

    fn backup_err(names: &[&'static str]) -> String {
        validate_backup_combinations(&changed(names))
            .unwrap_err()
            .to_string()
    }

    fn restore_err(names: &[&'static str]) -> String {
        validate_restore_combinations(&changed(names))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn backup_combinations_gpbackup_refuses() {
        assert_eq!(
            backup_err(&["jobs", "single-data-file"]),
            "The following flags may not be specified together: jobs, metadata-only, single-data-file"
        );
        assert_eq!(
            backup_err(&["data-only", "incremental", "leaf-partition-data"]),
            "The following flags may not be specified together: data-only, metadata-only, incremental"
        );
        assert_eq!(
            backup_err(&["include-schema", "include-table"]),
            "The following flags may not be specified together: include-schema, include-schema-file, include-table, include-table-file"
        );
        assert!(backup_err(&["exclude-schema", "include-schema"])
            .contains("exclude-schema, exclude-schema-file, include-schema"));
        assert!(backup_err(&["exclude-table", "include-table"])
            .contains("may not be specified together"));
        assert!(backup_err(&["metadata-only", "leaf-partition-data"])
            .contains("metadata-only, leaf-partition-data"));
        assert!(backup_err(&["no-compression", "compression-type"])
            .contains("no-compression, compression-type"));
        assert!(backup_err(&["no-compression", "compression-level"])
            .contains("no-compression, compression-level"));
        assert!(backup_err(&["plugin-config", "backup-dir"]).contains("plugin-config, backup-dir"));
        assert!(backup_err(&["debug", "verbose"]).contains("debug, quiet, verbose"));
        assert_eq!(
            backup_err(&["copy-queue-size"]),
            "--copy-queue-size must be specified with --single-data-file"
        );
        assert_eq!(
            backup_err(&["from-timestamp"]),
            "--from-timestamp must be specified with --incremental"
        );
        assert_eq!(
            backup_err(&["incremental"]),
            "--leaf-partition-data must be specified with --incremental"
        );
    }

    #[test]
    fn backup_combinations_gpbackup_accepts() {
        for ok in [
            &["include-schema", "exclude-table"][..],
            &["incremental", "leaf-partition-data", "from-timestamp"],
            &["single-data-file", "copy-queue-size"],
            &["jobs", "leaf-partition-data", "with-stats"],
            &["metadata-only", "without-globals"],
            &[],
        ] {
            validate_backup_combinations(&changed(ok)).unwrap();
        }
    }

    #[test]
    fn restore_combinations_gprestore_refuses() {
        assert_eq!(
            restore_err(&["data-only", "with-globals"]),
            "The following flags may not be specified together: data-only, with-globals"
        );
        assert!(restore_err(&["data-only", "create-db"]).contains("data-only, create-db"));
        assert!(restore_err(&["metadata-only", "data-only"]).contains("metadata-only, data-only"));
        assert!(restore_err(&["include-schema", "include-table"])
            .contains("include-schema, include-table, include-table-file"));
        assert_eq!(
            restore_err(&["truncate-table", "metadata-only"]),
            "The following flags may not be specified together: truncate-table, metadata-only, incremental"
        );
        assert_eq!(
            restore_err(&["redirect-schema", "include-table", "exclude-table"]),
            "The following flags may not be specified together: exclude-schema, exclude-table, include-table, exclude-table-file, include-table-file"
        );
        assert_eq!(
            restore_err(&["redirect-schema", "include-schema", "exclude-table"]),
            "Cannot use --redirect-schema with exclude flags"
        );
        assert_eq!(
            restore_err(&["redirect-schema"]),
            "Cannot use --redirect-schema without --include-table, --include-table-file, --include-schema, or --include-schema-file"
        );
        assert_eq!(
            restore_err(&["truncate-table"]),
            "Cannot use --truncate-table without --include-table or --include-table-file and without --data-only"
        );
        assert_eq!(
            restore_err(&["incremental"]),
            "Cannot use --incremental without --data-only"
        );
        assert!(restore_err(&["run-analyze", "with-stats"]).contains("run-analyze, with-stats"));
        assert!(
            restore_err(&["truncate-table", "redirect-schema", "include-table"])
                .contains("truncate-table, redirect-schema")
        );
    }

    #[test]
    fn restore_combinations_gprestore_accepts() {
        for ok in [
            &["redirect-schema", "include-table"][..],
            &["redirect-schema", "include-schema"],
            &["truncate-table", "data-only"],
            &["truncate-table", "include-table"],
            &["incremental", "data-only"],
            &[
                "create-db",
                "with-globals",
                "jobs",
                "on-error-continue",
                "run-analyze",
            ],
        ] {
            validate_restore_combinations(&changed(ok)).unwrap();
        }
    }

    #[test]
    fn compression_choice() {
        let cfg = Compression::Lz4;
        assert_eq!(
            choose_compression(None, None, false, cfg, None).unwrap(),
            (Compression::Lz4, None)
        );
        assert_eq!(
            choose_compression(None, None, true, cfg, None).unwrap(),
            (Compression::None, None)
        );
        assert_eq!(
            choose_compression(Some("gzip"), Some(6), false, cfg, None).unwrap(),
            (Compression::Zstd, Some(6))
        );
        assert_eq!(
            choose_compression(Some("zstd"), Some(19), false, cfg, None).unwrap(),
            (Compression::Zstd, Some(19))
        );
        assert_eq!(
            choose_compression(Some("gzip"), Some(10), false, cfg, None).unwrap_err().to_string(),
            "compression type 'gzip' only allows compression levels between 1 and 9, but the provided level is 10"
        );
        assert!(choose_compression(Some("zstd"), Some(20), false, cfg, None)
            .unwrap_err()
            .to_string()
            .contains("between 1 and 19"));
        assert!(choose_compression(Some("snappy"), None, false, cfg, None)
            .unwrap_err()
            .to_string()
            .starts_with("unknown compression type 'snappy'"));
        assert_eq!(
            choose_compression(Some("lzma"), Some(6), false, cfg, None).unwrap(),
            (Compression::Lzma, Some(6))
        );
        // A level alone applies to the config's method.
        assert!(choose_compression(None, Some(5), false, Compression::Lz4, None).is_err());
        assert_eq!(
            choose_compression(None, Some(5), false, Compression::Zstd, None).unwrap(),
            (Compression::Zstd, Some(5))
        );
    }

    #[test]
    fn paths() {
        validate_full_path("/backups").unwrap();
        validate_full_path("").unwrap();
        assert_eq!(
            validate_full_path("rel/dir").unwrap_err().to_string(),
            "rel/dir is not an absolute path."
        );
        validate_copy_queue_size(2).unwrap();
        assert_eq!(
            validate_copy_queue_size(1).unwrap_err().to_string(),
            "--copy-queue-size 1 is invalid. Must be at least 2"
        );
    }
}
