//! `gpbackup` and `gprestore`: gpbackup's and gprestore's flags, checked
//! with their rules and messages, then the logical backup and restore.
//!
//! The connection comes from libpq's environment (PGHOST, PGPORT, PGUSER,
//! PGPASSWORD, ~/.pgpass, PGSSLMODE), as for gpbackup. `--verbose` and
//! `--quiet` are cbdr's global flags; `--debug` is gpbackup's.

use std::path::PathBuf;

use clap::Args;

use crate::config::{Config, StorageType};
use crate::error::{Error, Result};
use crate::logical::backup::{gpbackup, BackupRequest};
use crate::logical::flags::{self, Changed};
use crate::logical::layout::Timestamp;
use crate::logical::metadata::{parse_table_name, ObjectFilter};
use crate::logical::restore::{gprestore, RestoreRequest};
use crate::pg::conn::ConnParams;
use crate::repo::Repo;

/// Schema and table filters, shared by both commands.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Back up / restore only this schema (repeatable).
    #[arg(long, value_name = "SCHEMA")]
    pub include_schema: Vec<String>,
    /// A file with one schema name a line.
    #[arg(long, value_name = "FILE")]
    pub include_schema_file: Option<PathBuf>,
    /// Leave this schema out (repeatable).
    #[arg(long, value_name = "SCHEMA")]
    pub exclude_schema: Vec<String>,
    /// A file with one schema name a line.
    #[arg(long, value_name = "FILE")]
    pub exclude_schema_file: Option<PathBuf>,
    /// Only this table, schema-qualified (repeatable).
    #[arg(long, value_name = "SCHEMA.TABLE")]
    pub include_table: Vec<String>,
    /// A file with one schema.table a line.
    #[arg(long, value_name = "FILE")]
    pub include_table_file: Option<PathBuf>,
    /// Leave this table out, schema-qualified (repeatable).
    #[arg(long, value_name = "SCHEMA.TABLE")]
    pub exclude_table: Vec<String>,
    /// A file with one schema.table a line.
    #[arg(long, value_name = "FILE")]
    pub exclude_table_file: Option<PathBuf>,
}

impl FilterArgs {
    fn mark(&self, c: &mut Changed) {
        c.mark("include-schema", !self.include_schema.is_empty())
            .mark("include-schema-file", self.include_schema_file.is_some())
            .mark("exclude-schema", !self.exclude_schema.is_empty())
            .mark("exclude-schema-file", self.exclude_schema_file.is_some())
            .mark("include-table", !self.include_table.is_empty())
            .mark("include-table-file", self.include_table_file.is_some())
            .mark("exclude-table", !self.exclude_table.is_empty())
            .mark("exclude-table-file", self.exclude_table_file.is_some());
    }

    fn filter(&self) -> Result<ObjectFilter> {
        let mut f = ObjectFilter::default();
        let list = |given: &[String], file: &Option<PathBuf>, flag: &str| -> Result<Vec<String>> {
            let mut v = given.to_vec();
            if let Some(p) = file {
                v.extend(flags::read_list_file(p, flag)?);
            }
            Ok(v)
        };
        f.include_schemas = list(
            &self.include_schema,
            &self.include_schema_file,
            "include-schema-file",
        )?;
        f.exclude_schemas = list(
            &self.exclude_schema,
            &self.exclude_schema_file,
            "exclude-schema-file",
        )?;
        for t in list(
            &self.include_table,
            &self.include_table_file,
            "include-table-file",
        )? {
            f.include_tables.push(parse_table_name(&t)?);
        }
        for t in list(
            &self.exclude_table,
            &self.exclude_table_file,
            "exclude-table-file",
        )? {
            f.exclude_tables.push(parse_table_name(&t)?);
        }
        Ok(f)
    }
}

#[derive(Debug, Args)]
#[command(version)]
pub struct GpbackupArgs {
    /// The database to back up.
    #[arg(long, required = true)]
    pub dbname: String,
    /// A filesystem repository directory for this run instead of the
    /// config's [storage] (absolute path).
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<String>,
    /// gzip: 1-9, zstd: 1-19, lz4: 0-1, lzma: 0-9, brotli: 0-11.
    #[arg(long, value_name = "LEVEL")]
    pub compression_level: Option<i32>,
    /// gzip (written as zstd), zstd, lz4, lzma, brotli or none (default:
    /// the config's [compression] method, lz4 unless set).
    #[arg(long, value_name = "TYPE")]
    pub compression_type: Option<String>,
    /// With --single-data-file: MiB of rows buffered between COPY and the
    /// encoder (at least 2).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub copy_queue_size: Option<i64>,
    /// Only the rows, no DDL.
    #[arg(long)]
    pub data_only: bool,
    /// Debug log output.
    #[arg(long)]
    pub debug: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Take only what changed since the base backup (needs
    /// --leaf-partition-data).
    #[arg(long)]
    pub incremental: bool,
    /// The base of an --incremental (default: the newest backup of the
    /// database).
    #[arg(long, value_name = "TIMESTAMP")]
    pub from_timestamp: Option<String>,
    /// Connections copying tables in parallel.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// One data object per leaf partition instead of per partitioned table.
    #[arg(long)]
    pub leaf_partition_data: bool,
    /// Only the DDL, no rows.
    #[arg(long)]
    pub metadata_only: bool,
    /// Store the rows uncompressed (still encrypted when a key is set).
    #[arg(long)]
    pub no_compression: bool,
    /// gpbackup storage plugins are not used: cbdr writes to its [storage].
    #[arg(long, value_name = "FILE")]
    pub plugin_config: Option<String>,
    /// All tables' rows in one object (of independently readable frames).
    #[arg(long)]
    pub single_data_file: bool,
    /// Also store pg_class row and page counts of every table.
    #[arg(long)]
    pub with_stats: bool,
    /// Leave roles and tablespaces out.
    #[arg(long)]
    pub without_globals: bool,
    /// Back up a database holding objects the logical backup does not
    /// carry (large objects, subscriptions, security labels), leaving them
    /// out; the reports list them. Without it such a backup fails.
    #[arg(long)]
    pub skip_unsupported: bool,
}

#[derive(Debug, Args)]
#[command(version)]
pub struct GprestoreArgs {
    /// The backup to restore (YYYYMMDDHHMMSS, as gpbackup printed it).
    #[arg(long, required = true, value_name = "TIMESTAMP")]
    pub timestamp: String,
    /// The filesystem repository directory the backup was written to with
    /// gpbackup --backup-dir (absolute path).
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<String>,
    /// With a --single-data-file backup: tables loaded at once (default 1).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub copy_queue_size: Option<i64>,
    /// Create the database (from template0) before restoring.
    #[arg(long)]
    pub create_db: bool,
    /// Only the rows, into existing tables.
    #[arg(long)]
    pub data_only: bool,
    /// Debug log output.
    #[arg(long)]
    pub debug: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Only the rows this (incremental) backup copied itself, truncating
    /// those tables first (needs --data-only).
    #[arg(long)]
    pub incremental: bool,
    /// Connections loading tables and building indexes in parallel.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Only the DDL, no rows.
    #[arg(long)]
    pub metadata_only: bool,
    /// Go on past failing statements and tables; they are listed in the
    /// restore's error file.
    #[arg(long)]
    pub on_error_continue: bool,
    /// gpbackup storage plugins are not used: cbdr reads its [storage].
    #[arg(long, value_name = "FILE")]
    pub plugin_config: Option<String>,
    /// Restore into this database instead of the one backed up.
    #[arg(long, value_name = "DBNAME")]
    pub redirect_db: Option<String>,
    /// Restore the chosen objects into this (existing) schema.
    #[arg(long, value_name = "SCHEMA")]
    pub redirect_schema: Option<String>,
    /// Accepted; a single PostgreSQL server has no segments to resize.
    #[arg(long)]
    pub resize_cluster: bool,
    /// ANALYZE the restored tables.
    #[arg(long)]
    pub run_analyze: bool,
    /// Truncate the tables before loading them.
    #[arg(long)]
    pub truncate_table: bool,
    /// Also restore roles and tablespaces.
    #[arg(long)]
    pub with_globals: bool,
    /// Restore the pg_class row and page counts stored by gpbackup
    /// --with-stats (needs a superuser).
    #[arg(long)]
    pub with_stats: bool,
}

impl GpbackupArgs {
    pub fn debug(&self) -> bool {
        self.debug
    }
}

impl GprestoreArgs {
    pub fn debug(&self) -> bool {
        self.debug
    }
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

fn plugin_refused(path: &str) -> Error {
    Error::Usage(format!(
        "--plugin-config {path}: cbdr does not run gpbackup storage plugins; it keeps backups in the \
         repository of its config file: put the plugin's S3 settings in the [storage] section \
         (type = \"s3\", bucket, prefix, endpoint, region, credentials) and drop --plugin-config"
    ))
}

/// The config with `--backup-dir` as a filesystem repository.
fn with_backup_dir(config: &Config, dir: Option<&str>) -> Result<Config> {
    let mut config = config.clone();
    if let Some(d) = dir {
        flags::validate_full_path(d)?;
        config.storage.kind = StorageType::Fs;
        config.storage.path = PathBuf::from(d);
    }
    Ok(config)
}

fn conn_params(dbname: &str) -> Result<ConnParams> {
    let mut p = ConnParams::try_from_env().map_err(Error::Usage)?;
    p.dbname = dbname.to_string();
    Ok(p)
}

pub async fn backup(config: &Config, a: GpbackupArgs, verbose: u8, quiet: bool) -> Result<()> {
    let mut c = Changed::new();
    c.mark("backup-dir", a.backup_dir.is_some())
        .mark("compression-level", a.compression_level.is_some())
        .mark("compression-type", a.compression_type.is_some())
        .mark("copy-queue-size", a.copy_queue_size.is_some())
        .mark("data-only", a.data_only)
        .mark("debug", a.debug)
        .mark("verbose", verbose > 0)
        .mark("quiet", quiet)
        .mark("incremental", a.incremental)
        .mark("from-timestamp", a.from_timestamp.is_some())
        .mark("jobs", a.jobs.is_some())
        .mark("leaf-partition-data", a.leaf_partition_data)
        .mark("metadata-only", a.metadata_only)
        .mark("no-compression", a.no_compression)
        .mark("plugin-config", a.plugin_config.is_some())
        .mark("single-data-file", a.single_data_file)
        .mark("with-stats", a.with_stats)
        .mark("without-globals", a.without_globals);
    a.filter.mark(&mut c);
    flags::validate_backup_combinations(&c)?;
    if let Some(d) = &a.backup_dir {
        flags::validate_full_path(d)?;
    }
    if let Some(p) = &a.plugin_config {
        flags::validate_full_path(p)?;
    }
    let (method, level) = flags::choose_compression(
        a.compression_type.as_deref(),
        a.compression_level,
        a.no_compression,
        config.compression.method,
        config.compression.level,
    )?;
    let from_timestamp = a
        .from_timestamp
        .as_deref()
        .map(Timestamp::parse)
        .transpose()?;
    if let Some(n) = a.copy_queue_size {
        flags::validate_copy_queue_size(n)?;
    }
    if let Some(p) = &a.plugin_config {
        return Err(plugin_refused(p));
    }
    let filter = a.filter.filter()?;
    if a.compression_type.as_deref() == Some("gzip") {
        tracing::info!(
            "--compression-type gzip: cbdr writes zstd at the same level (it has no gzip)"
        );
    }

    let config = with_backup_dir(config, a.backup_dir.as_deref())?;
    let mut repo = Repo::open_unchecked(&config).await?;
    if a.backup_dir.is_some() {
        // gpbackup makes its --backup-dir: a directory named on the
        // command line is an explicit request for a repository there.
        repo.init(false).await?;
    } else {
        repo.check().await?;
    }
    repo.codec.compression = method;
    repo.codec.level = level.unwrap_or_else(|| method.default_level());
    let req = BackupRequest {
        conn: conn_params(&a.dbname)?,
        filter,
        data_only: a.data_only,
        metadata_only: a.metadata_only,
        leaf_partition_data: a.leaf_partition_data,
        single_data_file: a.single_data_file,
        with_stats: a.with_stats,
        without_globals: a.without_globals,
        skip_unsupported: a.skip_unsupported,
        jobs: a.jobs.unwrap_or(1),
        queue: a.copy_queue_size.map(|n| n as usize).unwrap_or(4),
        copy_format: config.logical.copy_format,
        large_object_chunk: config.logical.large_object_chunk,
        incremental: a.incremental,
        from_timestamp,
        command_line: command_line(),
        progress: !quiet,
    };
    let r = gpbackup(&repo, &req).await?;
    if !quiet {
        let own = r.own_tables().count();
        println!(
            "Backup completed successfully: {} tables with data ({own} copied, {} unchanged since the base), {} rows, {} bytes, stored {} bytes",
            r.tables.len(),
            r.tables.len() - own,
            r.rows(),
            r.plain_bytes(),
            r.stored_bytes()
        );
        if let Some(rep) = &r.report {
            println!("Report: {} in {}", rep.key, repo.storage.location());
        }
    }
    // The identifier, last (gpbackup prints it as its result).
    println!("Backup Timestamp = {}", r.timestamp);
    Ok(())
}

pub async fn restore(config: &Config, a: GprestoreArgs, verbose: u8, quiet: bool) -> Result<()> {
    let mut c = Changed::new();
    c.mark("backup-dir", a.backup_dir.is_some())
        .mark("copy-queue-size", a.copy_queue_size.is_some())
        .mark("create-db", a.create_db)
        .mark("data-only", a.data_only)
        .mark("debug", a.debug)
        .mark("verbose", verbose > 0)
        .mark("quiet", quiet)
        .mark("incremental", a.incremental)
        .mark("jobs", a.jobs.is_some())
        .mark("metadata-only", a.metadata_only)
        .mark("on-error-continue", a.on_error_continue)
        .mark("plugin-config", a.plugin_config.is_some())
        .mark("redirect-db", a.redirect_db.is_some())
        .mark("redirect-schema", a.redirect_schema.is_some())
        .mark("resize-cluster", a.resize_cluster)
        .mark("run-analyze", a.run_analyze)
        .mark("timestamp", true)
        .mark("truncate-table", a.truncate_table)
        .mark("with-globals", a.with_globals)
        .mark("with-stats", a.with_stats);
    a.filter.mark(&mut c);
    flags::validate_restore_combinations(&c)?;
    let timestamp = Timestamp::parse(&a.timestamp)?;
    if let Some(d) = &a.backup_dir {
        flags::validate_full_path(d)?;
    }
    if let Some(n) = a.copy_queue_size {
        flags::validate_copy_queue_size(n)?;
    }
    if let Some(p) = &a.plugin_config {
        return Err(plugin_refused(p));
    }
    let filter = a.filter.filter()?;
    let config = with_backup_dir(config, a.backup_dir.as_deref())?;
    let repo = Repo::open(&config).await?;
    let req = RestoreRequest {
        conn: conn_params("postgres")?,
        timestamp,
        filter,
        create_db: a.create_db,
        data_only: a.data_only,
        metadata_only: a.metadata_only,
        incremental: a.incremental,
        on_error_continue: a.on_error_continue,
        run_analyze: a.run_analyze,
        with_globals: a.with_globals,
        with_stats: a.with_stats,
        truncate_table: a.truncate_table,
        resize_cluster: a.resize_cluster,
        redirect_db: a.redirect_db.clone(),
        redirect_schema: a.redirect_schema.clone(),
        jobs: a.jobs,
        copy_queue_size: a.copy_queue_size.map(|n| n as u32),
        queue: 4,
        command_line: command_line(),
        progress: !quiet,
    };
    let s = gprestore(&repo, &req).await?;
    if !quiet {
        println!(
            "Restore completed successfully: {} tables with data, {} rows into database {}",
            s.tables, s.rows, s.database
        );
        println!("Report: {} in {}", s.report_key, repo.storage.location());
    }
    Ok(())
}
