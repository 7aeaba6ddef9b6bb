//! `cbdr gprestore`: replays a logical backup into a database.
//!
//! Globals (with `--with-globals`) and pre-data run in order on one
//! connection (as pg_restore does: they are quick and touch shared
//! catalog rows). Then the data and the post-data section share the
//! `--jobs` connections ([`super::schedule`]): the biggest table, when it
//! holds more than its share of the data, first, through every connection;
//! then each other table in one transaction that truncates it (when the
//! restore created it: COPY then writes frozen rows, and with `wal_level =
//! minimal` PostgreSQL skips its WAL), while the indexes of the tables
//! already loaded are built; the rest of the post-data section once every
//! table is loaded. Loads run with `synchronous_commit = off`; the last
//! step commits with `synchronous_commit = on`, so the restore is durable
//! when cbdr says it is done. Rows stored in COPY's binary format go
//! straight into tables with the backup's column types, and through a
//! conversion ([`super::copy_format::Conversion`]) into the others.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::Mutex;

use chrono::{Local, Utc};

use super::copy_format::{self, Conversion};
use super::data::{self, CopyInError};
use super::layout::{self, Timestamp};
use super::metadata::{self, ObjectFilter};
use super::record::{rebuild_entries, LogicalBackupRecord, StoredStats, StoredToc, TableData};
use super::report::{self, RestoreFailure, RestoreOutcome};
use super::schedule::{Next, Schedule};
use super::toc::{ObjectKind, QualifiedName, Section, TocEntry};
use crate::error::{Error, PgResultExt, Result};
use crate::pg::conn::{ConnParams, PgConn, PgError, Replication};
use crate::pg::quote::{quote_ident, quote_literal};
use crate::repo::Repo;

mod checks;
mod load;
mod stats;

use checks::*;
use load::*;
use stats::*;

/// What to restore and how (gprestore's flags, validated).
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub conn: ConnParams,
    pub timestamp: Timestamp,
    pub filter: ObjectFilter,
    pub create_db: bool,
    pub data_only: bool,
    pub metadata_only: bool,
    pub incremental: bool,
    pub on_error_continue: bool,
    pub run_analyze: bool,
    pub with_globals: bool,
    pub with_stats: bool,
    pub truncate_table: bool,
    pub resize_cluster: bool,
    pub redirect_db: Option<String>,
    pub redirect_schema: Option<String>,
    /// `--jobs` as given (None: not given).
    pub jobs: Option<u32>,
    /// `--copy-queue-size` as given.
    pub copy_queue_size: Option<u32>,
    /// Pieces (1 MiB) buffered between the decoder and COPY.
    pub queue: usize,
    pub command_line: String,
    pub progress: bool,
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreSummary {
    pub restore_timestamp: Timestamp,
    pub database: String,
    pub tables: usize,
    pub rows: u64,
    pub failures: usize,
    pub report_key: String,
    pub errors_key: Option<String>,
}

/// Restores a logical backup.
pub async fn gprestore(repo: &Repo, req: &RestoreRequest) -> Result<RestoreSummary> {
    let start = Utc::now();
    let record = repo.logical_backup(&req.timestamp).await?;
    let restore_ts = restore_timestamp(repo, &record.ts()).await?;
    validate_against_backup(req, &record)?;
    check_objects(repo, req, &record).await?;
    if req.resize_cluster {
        eprintln!(
            "cbdr: --resize-cluster: the backup comes from a single PostgreSQL server and is restored into one; \
             there are no segments to redistribute, so this is a normal restore"
        );
    }
    let target_db = req
        .redirect_db
        .clone()
        .unwrap_or_else(|| record.database.clone());
    if req.progress {
        println!("Restore Key = {}", record.timestamp);
        println!("Restoring to database {}", quote_ident(&target_db));
    }
    prepare_database(req, &record, &target_db).await?;

    let mut state = State::default();
    let mut server_version = String::new();
    let result = restore_into(
        repo,
        req,
        &record,
        &target_db,
        &mut state,
        &mut server_version,
    )
    .await;
    let result = result.map_err(|e| damaged(&record, e));
    let fatal = result.as_ref().err().map(|e| e.to_string());
    let end = Utc::now();

    let errors_key =
        (!state.failures.is_empty()).then(|| layout::restore_errors_key(&record.ts(), &restore_ts));
    if let Some(k) = &errors_key {
        if let Err(e) = repo
            .put_bytes(k, report::failures_text(&state.failures).into_bytes())
            .await
        {
            tracing::warn!("could not store the error list: {e}");
        }
    }
    let text = report::restore_report(&RestoreOutcome {
        backup: &record,
        restore_timestamp: restore_ts.to_string(),
        target_database: target_db.clone(),
        command_line: req.command_line.clone(),
        server_version,
        start,
        end,
        fatal: fatal.clone(),
        failures: &state.failures,
        tables_restored: state.tables,
        tables_split: state.split_tables,
        rows_restored: state.rows,
        statements_run: state.statements,
        errors_key: errors_key.clone(),
    });
    let report_key = layout::restore_report_key(&record.ts(), &restore_ts);
    match repo.put_bytes(&report_key, text.into_bytes()).await {
        Err(e) => tracing::warn!("could not store the restore report: {e}"),
        Ok(_) if result.is_err() => eprintln!(
            "cbdr: the restore report is {report_key} in {}{}",
            repo.storage.location(),
            errors_key
                .as_deref()
                .map(|k| format!(", what failed is listed in {k}"))
                .unwrap_or_default()
        ),
        Ok(_) => {}
    }
    result?;
    if !state.failures.is_empty() {
        return Err(Error::Server(format!(
            "the restore went on past {} errors (--on-error-continue): the database is incomplete; \
             {} lists what failed",
            state.failures.len(),
            errors_key.as_deref().unwrap_or("the report")
        )));
    }
    Ok(RestoreSummary {
        restore_timestamp: restore_ts,
        database: target_db,
        tables: state.tables,
        rows: state.rows,
        failures: state.failures.len(),
        report_key,
        errors_key,
    })
}

/// A timestamp for this restore's reports that no other restore of the
/// backup used.
async fn restore_timestamp(repo: &Repo, backup: &Timestamp) -> Result<Timestamp> {
    loop {
        let ts = Timestamp::from_time(Local::now());
        let prefix = format!("{}restores/{ts}/", layout::backup_prefix(backup));
        if repo.storage.list(&prefix).await?.is_empty() {
            return Ok(ts);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[derive(Debug, Default)]
struct State {
    failures: Vec<RestoreFailure>,
    tables: usize,
    split_tables: usize,
    rows: u64,
    statements: usize,
}

fn with_db(params: &ConnParams, db: &str) -> ConnParams {
    let mut p = params.clone();
    p.dbname = db.to_string();
    p
}

/// Checks the target database exists (or creates it with `--create-db`),
/// as gprestore's ValidateDatabaseExistence.
async fn prepare_database(req: &RestoreRequest, b: &LogicalBackupRecord, db: &str) -> Result<()> {
    let mut admin = None;
    let mut last_err = None;
    for maint in ["postgres", "template1"] {
        match PgConn::connect(&with_db(&req.conn, maint), Replication::Off).await {
            Ok(c) => {
                admin = Some(c);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let mut admin = admin.ok_or_else(|| {
        Error::postgres(
            "connecting to the server (database postgres or template1)",
            last_err.expect("one attempt failed"),
        )
    })?;
    let exists = !admin
        .run(
            "checking the target database",
            &format!(
                "SELECT 1 FROM pg_database WHERE datname = {}",
                quote_literal(db)
            ),
        )
        .await?
        .is_empty();
    let filtered = b.options.table_filtered() || b.options.data_only;
    if !exists {
        if filtered {
            return Err(Error::Usage(format!("Database \"{db}\" must be created manually to restore table-filtered or data-only backups.")));
        }
        if !req.create_db {
            return Err(Error::Usage(format!("Database \"{db}\" does not exist. Use the --create-db flag to create \"{db}\" as part of the restore process.")));
        }
        let sql = format!(
            "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_ident(db),
            quote_literal(&b.database_encoding),
            quote_literal(&b.database_collate),
            quote_literal(&b.database_ctype)
        );
        admin.run(&format!("creating database {db}"), &sql).await?;
    } else if req.create_db {
        return Err(Error::Usage(format!(
            "Database \"{db}\" already exists. Run gprestore again without --create-db flag."
        )));
    }
    admin.close().await;
    Ok(())
}

/// `maintenance_work_mem` of the restore's sessions: 2 GB shared by the
/// `--jobs` connections (each may build an index at once), 256 MB to 1 GB
/// each; never lowered. PostgreSQL takes only what a sort needs, and a
/// primary key of 7 million rows sorts in memory at 1 GB, not at 256 MB
/// (2.1 s against 1.6 s here).
fn maintenance_work_mem(jobs: usize) -> u64 {
    const MB: u64 = 1024 * 1024;
    (2048 * MB / jobs.max(1) as u64).clamp(256 * MB, 1024 * MB)
}

/// Session settings of every restore connection.
fn session_setup(jobs: usize) -> String {
    let mwm = maintenance_work_mem(jobs) / (1024 * 1024);
    format!(
        "{} SET synchronous_commit = off; SET application_name = 'cbdr gprestore'; \
         SELECT set_config('maintenance_work_mem', '{mwm}MB', false) \
          WHERE pg_size_bytes(current_setting('maintenance_work_mem')) < {mwm} * 1024 * 1024;",
        metadata::RESTORE_SESSION_SETUP
    )
}

/// One restore connection; `jobs`: how many the restore opens.
async fn connect(req: &RestoreRequest, db: &str, jobs: usize) -> Result<PgConn> {
    let mut c = PgConn::connect(&with_db(&req.conn, db), Replication::Off)
        .await
        .context(format!("connecting to database {db}"))?;
    c.run("setting up the restore session", &session_setup(jobs))
        .await?;
    Ok(c)
}

async fn restore_into(
    repo: &Repo,
    req: &RestoreRequest,
    b: &LogicalBackupRecord,
    db: &str,
    state: &mut State,
    server_version: &mut String,
) -> Result<()> {
    // Connections: --jobs, or --copy-queue-size for a single data file.
    let jobs = if b.options.single_data_file {
        req.copy_queue_size.unwrap_or(1).max(1) as usize
    } else {
        req.jobs.unwrap_or(1).max(1) as usize
    };
    if !b.skipped_objects.is_empty() {
        tracing::warn!(
            "the backup left out {} object(s) it does not carry (gpbackup --skip-unsupported): \
             they are not restored; the restore report lists them",
            b.skipped_objects.len()
        );
    }
    let mut main = connect(req, db, jobs).await?;
    *server_version = main
        .parameter("server_version")
        .unwrap_or_default()
        .to_string();

    // What to replay.
    let restore_metadata = !req.data_only && !req.incremental && b.metadata.is_some();
    let restore_data = !req.metadata_only && !b.options.metadata_only;
    let mut entries = if restore_metadata || (!req.filter.is_empty() && b.metadata.is_some()) {
        load_entries(repo, b).await?
    } else {
        Vec::new()
    };
    validate_filter_in_backup(&req.filter, b, &entries)?;
    if !req.filter.is_empty() && !entries.is_empty() {
        entries = metadata::select(&entries, &req.filter);
    }
    let mut loads = choose_loads(req, b, &entries);
    if let Some(to) = &req.redirect_schema {
        validate_redirect_schema(&mut main, to).await?;
        entries = redirect_entries(&entries, to);
        for l in &mut loads {
            l.target.schema = to.clone();
        }
    }
    if !restore_data {
        loads.clear();
    }
    check_relations(&mut main, req, restore_metadata, &entries, &loads).await?;

    // Globals and pre-data, in order, on one connection.
    if restore_metadata {
        let serial: Vec<&TocEntry> = entries
            .iter()
            .filter(|e| {
                (e.section == Section::Globals && req.with_globals) || e.section == Section::PreData
            })
            .collect();
        if req.progress {
            println!("Restoring pre-data metadata ({} statements)", serial.len());
        }
        let t = std::time::Instant::now();
        for e in serial {
            replay(&mut main, req, e, state).await?;
        }
        tracing::info!("pre-data done in {:.2} s", t.elapsed().as_secs_f64());
    }
    if restore_data {
        restore_large_objects(repo, req, b, &mut main, restore_metadata, state).await?;
    }

    // Data and post-data, in parallel.
    let post: Vec<TocEntry> = if restore_metadata {
        entries
            .iter()
            .filter(|e| e.section == Section::PostData)
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    let mut pool = vec![main];
    let want = jobs.min(loads.len().max(post.len()).max(1));
    while pool.len() < want {
        pool.push(connect(req, db, jobs).await?);
    }
    if !loads.is_empty() || !post.is_empty() {
        if req.progress {
            if !loads.is_empty() {
                println!("Restoring data of {} tables", loads.len());
            }
            if !post.is_empty() {
                println!("Restoring post-data metadata ({} statements)", post.len());
            }
        }
        let wal_minimal = !loads.is_empty()
            && pool[0]
                .query_one("SHOW wal_level")
                .await
                .and_then(|r| r.get_str("wal_level").map(|s| s == "minimal"))
                .context("reading wal_level")?;
        let how = LoadMode {
            truncate: req.truncate_table || req.incremental,
            // Tables this restore created: truncating one in its load's
            // transaction costs nothing and lets COPY write frozen rows
            // (and, with wal_level = minimal, skip the WAL).
            created: restore_metadata,
            wal_minimal,
        };
        plan_binary_loads(&mut pool[0], &mut loads).await?;
        let t = std::time::Instant::now();
        load_and_post(repo, req, &mut pool, loads.clone(), &post, how, state).await?;
        tracing::info!(
            "data and post-data done in {:.2} s",
            t.elapsed().as_secs_f64()
        );
    }

    if req.with_stats {
        apply_stats(repo, req, b, &mut pool[0], &loads, &entries, state).await?;
    }
    if req.run_analyze && !loads.is_empty() {
        analyze(&mut pool, req, &loads, state).await?;
    }

    // Durable before success: one commit with synchronous_commit on flushes
    // the WAL of every earlier commit.
    let main = &mut pool[0];
    main.run(
        "flushing the restore to disk",
        "SET synchronous_commit = on; BEGIN; SELECT txid_current(); COMMIT;",
    )
    .await?;
    for c in pool {
        c.close().await;
    }
    Ok(())
}

/// The large objects' contents, on the main connection before the tables
/// (a whole-database restore only: not with an include filter, as
/// pg_restore's `-n`/`-t` leave them out).
async fn restore_large_objects(
    repo: &Repo,
    req: &RestoreRequest,
    b: &LogicalBackupRecord,
    main: &mut PgConn,
    created: bool,
    state: &mut State,
) -> Result<()> {
    let Some(lo) = &b.large_objects else {
        return Ok(());
    };
    if req.filter.has_includes() {
        return Ok(());
    }
    if req.progress {
        println!("Restoring {} large objects", lo.objects);
    }
    match super::large_objects::restore(repo, main, lo, created, req.queue).await {
        Ok(r) => {
            tracing::info!("{} large objects restored, {} bytes", r.objects, r.bytes);
            Ok(())
        }
        // A damaged backup stops the restore whatever the flags say.
        Err(e @ (Error::Integrity(_) | Error::Codec(_))) => Err(e),
        Err(e) => fail(req, state, "data", "large objects".into(), e.to_string()),
    }
}

async fn load_entries(repo: &Repo, b: &LogicalBackupRecord) -> Result<Vec<TocEntry>> {
    let (Some(m), Some(t)) = (&b.metadata, &b.toc) else {
        return Ok(Vec::new());
    };
    let sql = repo.get_bytes(&m.key).await?;
    let toc: StoredToc = repo.get_json(&t.key).await?;
    rebuild_entries(&sql, &toc, &m.key)
}

/// Moves every restored object into schema `to`; the schemas themselves
/// (and their owners, comments and grants) are not replayed: `to` exists.
fn redirect_entries(entries: &[TocEntry], to: &str) -> Vec<TocEntry> {
    let from: BTreeSet<String> = entries
        .iter()
        .filter(|e| e.section != Section::Globals && !e.schema.is_empty())
        .map(|e| e.schema.clone())
        .chain(
            entries
                .iter()
                .filter(|e| e.kind == ObjectKind::Schema)
                .map(|e| e.name.clone()),
        )
        .filter(|s| s != to)
        .collect();
    entries
        .iter()
        .filter(|e| e.kind != ObjectKind::Schema)
        .filter(|e| !(e.owner_table.is_none() && e.name.starts_with("SCHEMA ")))
        .map(|e| {
            if e.section == Section::Globals {
                return e.clone();
            }
            from.iter()
                .fold(e.clone(), |acc, f| metadata::redirect_schema(&acc, f, to))
        })
        .collect()
}

fn describe(e: &TocEntry) -> String {
    if e.schema.is_empty() {
        format!("{} {}", e.kind, e.name)
    } else if e.name.contains(' ') {
        // Attached entries are named after their object: "TABLE t".
        format!("{} {} (schema {})", e.kind, e.name, quote_ident(&e.schema))
    } else {
        format!("{} {}.{}", e.kind, quote_ident(&e.schema), e.name)
    }
}

/// Runs one entry; a failure is fatal unless --on-error-continue.
async fn replay(
    conn: &mut PgConn,
    req: &RestoreRequest,
    e: &TocEntry,
    state: &mut State,
) -> Result<()> {
    match run_entry(conn, e).await {
        Ok(()) => {
            state.statements += 1;
            Ok(())
        }
        Err(err) => fail(req, state, "metadata", describe(e), err.to_string()),
    }
}

async fn run_entry(conn: &mut PgConn, e: &TocEntry) -> std::result::Result<(), PgError> {
    if e.statement.trim().is_empty() {
        return Ok(());
    }
    let mut attempt = 0;
    loop {
        match conn.simple_query(&e.statement).await {
            Ok(_) => return Ok(()),
            // Two parallel statements deadlocked, or raced on one catalog row.
            Err(err) if err.is_transient() && attempt < 5 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

fn fail(
    req: &RestoreRequest,
    state: &mut State,
    phase: &'static str,
    object: String,
    error: String,
) -> Result<()> {
    if req.on_error_continue {
        tracing::warn!("{object}: {error}");
        state.failures.push(RestoreFailure {
            phase,
            object,
            error,
        });
        Ok(())
    } else {
        Err(Error::Server(format!("restoring {object}: {error}")))
    }
}

/// Tables at least this big (plain bytes) may be loaded through every
/// connection at once.
pub const SPLIT_MIN: u64 = 32_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    fn mode(wal_minimal: bool, created: bool) -> LoadMode {
        LoadMode {
            truncate: false,
            created,
            wal_minimal,
        }
    }

    #[test]
    fn only_a_table_bigger_than_its_share_is_split() {
        let how = mode(false, true);
        // pgbench: one table holds nearly everything.
        assert_eq!(split_choice(&[1, 684 * MB, 8], 2, how), Some(1));
        // Two big tables: the bigger is split, the other loads whole
        // (frozen) while the first one's indexes are built.
        assert_eq!(split_choice(&[398 * MB, 684 * MB], 2, how), Some(1));
        // Two equal halves: each loads whole on its own connection.
        assert_eq!(split_choice(&[500 * MB, 500 * MB], 2, how), None);
        // Four connections: 400 of 1000 is more than a quarter.
        assert_eq!(
            split_choice(&[400 * MB, 300 * MB, 200 * MB, 100 * MB], 4, how),
            Some(0)
        );
        // Small tables are not worth it; one connection cannot split.
        assert_eq!(split_choice(&[20 * MB, 1], 2, how), None);
        assert_eq!(split_choice(&[684 * MB], 1, how), None);
        assert_eq!(split_choice(&[], 2, how), None);
    }

    #[test]
    fn wal_minimal_keeps_each_created_table_in_one_transaction() {
        assert_eq!(split_choice(&[684 * MB, 1], 2, mode(true, true)), None);
        // A data-only restore into existing tables has no WAL to skip.
        assert_eq!(split_choice(&[684 * MB, 1], 2, mode(true, false)), Some(0));
    }

    #[test]
    fn a_load_truncates_only_its_own_table() {
        assert_eq!(truncate_sql("s.t", "r"), "TRUNCATE ONLY s.t");
        assert_eq!(truncate_sql("s.p", "p"), "TRUNCATE s.p");
    }

    #[test]
    fn maintenance_work_mem_is_shared_by_the_jobs() {
        let mib = 1024 * 1024;
        assert_eq!(maintenance_work_mem(1), 1024 * mib);
        assert_eq!(maintenance_work_mem(2), 1024 * mib);
        assert_eq!(maintenance_work_mem(4), 512 * mib);
        assert_eq!(maintenance_work_mem(8), 256 * mib);
        assert_eq!(maintenance_work_mem(64), 256 * mib);
        assert!(session_setup(4).contains("'512MB'"));
    }
}
