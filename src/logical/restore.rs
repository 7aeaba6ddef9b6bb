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

/// gprestore's checks of its flags against the backup (ValidateBackupFlagCombinations).
pub fn validate_against_backup(req: &RestoreRequest, b: &LogicalBackupRecord) -> Result<()> {
    if b.options.single_data_file && req.jobs.is_some_and(|j| j != 1) {
        return Err(Error::Usage(
            "Cannot use jobs flag when restoring backups with a single data file per segment."
                .into(),
        ));
    }
    if (b.options.table_filtered() || b.options.data_only) && req.with_globals {
        return Err(Error::Usage(
            "Global metadata is not backed up in table-filtered or data-only backups.".into(),
        ));
    }
    if b.options.metadata_only && req.data_only {
        return Err(Error::Usage(
            "Cannot use data-only flag when restoring metadata-only backup".into(),
        ));
    }
    if b.options.data_only && req.metadata_only {
        return Err(Error::Usage(
            "Cannot use metadata-only flag when restoring data-only backup".into(),
        ));
    }
    if !b.options.single_data_file && req.copy_queue_size.is_some() {
        return Err(Error::Usage("The --copy-queue-size flag can only be used if the backup was taken with --single-data-file".into()));
    }
    if req.with_stats && b.statistics.is_none() {
        return Err(Error::Usage(format!(
            "backup {} was taken without --with-stats, so it holds no statistics: restore without --with-stats (--run-analyze computes them)",
            b.timestamp
        )));
    }
    Ok(())
}

/// A table whose rows this restore loads.
#[derive(Debug, Clone)]
struct Load {
    data: TableData,
    target: QualifiedName,
    /// Binary rows for a table whose column types differ from the backup's.
    convert: Option<Conversion>,
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

/// A backup object that is gone although the backup's record lists it:
/// the backup is damaged (exit 4), not merely "not found".
fn damaged(b: &LogicalBackupRecord, e: Error) -> Error {
    match e {
        Error::Storage(crate::storage::StorageError::NotFound { key, location }) => {
            Error::Integrity(format!(
                "logical backup {} is damaged: its object {key} is missing from {location}; restore another backup (`cbdr list` shows them) and take a new one",
                b.timestamp
            ))
        }
        other => other,
    }
}

/// Checks that the objects this restore reads are all in the repository,
/// before the database is touched: the metadata and its TOC (small) are
/// read and verified whole, the tables' rows only found (they are
/// verified as they are loaded, and a table whose rows fail is rolled
/// back).
async fn check_objects(repo: &Repo, req: &RestoreRequest, b: &LogicalBackupRecord) -> Result<()> {
    for o in [&b.metadata, &b.toc].into_iter().flatten() {
        let key = o.key.clone();
        repo.read_with(&o.key, move |r| {
            std::io::copy(r, &mut std::io::sink())
                .map_err(|e| Error::Codec(crate::codec::CodecError::from_io(e, &key)))
        })
        .await
        .map_err(|e| damaged(b, e))?;
    }
    let restore_data = !req.metadata_only && !b.options.metadata_only;
    let tables = b
        .tables
        .iter()
        .filter(|_| restore_data)
        .filter(|t| !req.incremental || t.backup == b.timestamp)
        .filter(|t| {
            req.filter.is_empty()
                || req.filter.matches_table(&t.table)
                || t.root.as_ref().is_some_and(|r| {
                    req.filter.matches_table(r) && !req.filter.excludes_table(&t.table)
                })
        })
        .map(|t| t.location.key());
    let keys: BTreeSet<&str> = [&b.metadata, &b.toc]
        .into_iter()
        .flatten()
        .map(|o| o.key.as_str())
        .chain(tables)
        .collect();
    // One listing per backup of the chain, rather than a request per table.
    let mut stored: HashSet<String> = HashSet::new();
    let chain: BTreeSet<&str> = b
        .tables
        .iter()
        .map(|t| t.backup.as_str())
        .chain([b.timestamp.as_str()])
        .collect();
    for ts in chain {
        let prefix = layout::backup_prefix(&Timestamp::parse(ts)?);
        stored.extend(repo.storage.list(&prefix).await?.into_iter().map(|o| o.key));
    }
    for key in keys {
        if !stored.contains(key) && repo.storage.head(key).await?.is_none() {
            return Err(damaged(
                b,
                Error::Storage(crate::storage::StorageError::NotFound {
                    key: key.to_string(),
                    location: repo.storage.location(),
                }),
            ));
        }
    }
    Ok(())
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

async fn load_entries(repo: &Repo, b: &LogicalBackupRecord) -> Result<Vec<TocEntry>> {
    let (Some(m), Some(t)) = (&b.metadata, &b.toc) else {
        return Ok(Vec::new());
    };
    let sql = repo.get_bytes(&m.key).await?;
    let toc: StoredToc = repo.get_json(&t.key).await?;
    rebuild_entries(&sql, &toc, &m.key)
}

/// gprestore's checks that the include lists name what the backup holds.
fn validate_filter_in_backup(
    f: &ObjectFilter,
    b: &LogicalBackupRecord,
    entries: &[TocEntry],
) -> Result<()> {
    let mut schemas: HashSet<&str> = entries.iter().map(|e| e.schema.as_str()).collect();
    schemas.extend(b.tables.iter().map(|t| t.table.schema.as_str()));
    let missing: Vec<&str> = f
        .include_schemas
        .iter()
        .filter(|s| !schemas.contains(s.as_str()))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Error::Usage(format!(
            "Could not find the following schema(s) in the backup set: {}",
            missing.join(", ")
        )));
    }
    let excluded: Vec<&str> = f
        .exclude_schemas
        .iter()
        .filter(|s| !schemas.contains(s.as_str()))
        .map(String::as_str)
        .collect();
    if !excluded.is_empty() {
        tracing::warn!(
            "Could not find the following excluded schema(s) in the backup set: {}",
            excluded.join(", ")
        );
    }
    let mut relations: HashSet<QualifiedName> = entries
        .iter()
        .filter(|e| {
            e.owner_table.is_none()
                && matches!(
                    e.kind.as_str(),
                    "TABLE" | "SEQUENCE" | "VIEW" | "MATERIALIZED VIEW"
                )
        })
        .map(|e| QualifiedName {
            schema: e.schema.clone(),
            name: e.name.clone(),
        })
        .collect();
    relations.extend(b.tables.iter().map(|t| t.table.clone()));
    let missing: Vec<String> = f
        .include_tables
        .iter()
        .filter(|t| !relations.contains(t))
        .map(QualifiedName::quoted)
        .collect();
    if !missing.is_empty() {
        return Err(Error::Usage(format!(
            "Could not find the following relation(s) in the backup set: {}",
            missing.join(", ")
        )));
    }
    let excluded: Vec<String> = f
        .exclude_tables
        .iter()
        .filter(|t| !relations.contains(t))
        .map(QualifiedName::quoted)
        .collect();
    if !excluded.is_empty() {
        tracing::warn!(
            "Could not find the following excluded relation(s) in the backup set: {}",
            excluded.join(", ")
        );
    }
    Ok(())
}

/// The tables whose rows to load: those the filter takes (a leaf
/// partition with its root), only this backup's own with --incremental.
fn choose_loads(req: &RestoreRequest, b: &LogicalBackupRecord, entries: &[TocEntry]) -> Vec<Load> {
    let selected: Option<HashSet<QualifiedName>> = (!req.filter.is_empty() && !entries.is_empty())
        .then(|| {
            metadata::selected_tables(entries, &req.filter)
                .into_iter()
                .collect()
        });
    b.tables
        .iter()
        .filter(|t| !req.incremental || t.backup == b.timestamp)
        .filter(|t| {
            if req.filter.is_empty() {
                return true;
            }
            let by_filter = req.filter.matches_table(&t.table)
                || t.root.as_ref().is_some_and(|r| {
                    req.filter.matches_table(r) && !req.filter.excludes_table(&t.table)
                });
            match &selected {
                Some(sel) => {
                    sel.contains(&t.table)
                        || (by_filter && t.root.as_ref().is_some_and(|r| sel.contains(r)))
                }
                None => by_filter,
            }
        })
        .map(|t| Load {
            data: t.clone(),
            target: t.table.clone(),
            convert: None,
        })
        .collect()
}

async fn validate_redirect_schema(conn: &mut PgConn, schema: &str) -> Result<()> {
    let rows = conn
        .run(
            "checking the schema to redirect into",
            &format!(
                "SELECT 1 FROM pg_namespace WHERE nspname = {}",
                quote_literal(schema)
            ),
        )
        .await?;
    if rows.is_empty() {
        return Err(Error::Usage(format!(
            "Schema {schema} to redirect into does not exist"
        )));
    }
    Ok(())
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

/// gprestore's ValidateRelationsInRestoreDatabase: relations a restore
/// creates must not exist; tables a data-only restore fills must.
async fn check_relations(
    conn: &mut PgConn,
    req: &RestoreRequest,
    restore_metadata: bool,
    entries: &[TocEntry],
    loads: &[Load],
) -> Result<()> {
    let names: Vec<QualifiedName> = if restore_metadata {
        entries
            .iter()
            .filter(|e| {
                e.section == Section::PreData
                    && e.owner_table.is_none()
                    && matches!(
                        e.kind.as_str(),
                        "TABLE" | "SEQUENCE" | "VIEW" | "MATERIALIZED VIEW"
                    )
            })
            .map(|e| QualifiedName {
                schema: e.schema.clone(),
                name: e.name.clone(),
            })
            .collect()
    } else {
        loads.iter().map(|l| l.target.clone()).collect()
    };
    if names.is_empty() {
        return Ok(());
    }
    let list = names
        .iter()
        .map(|n| format!("({}, {})", quote_literal(&n.schema), quote_literal(&n.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let rows = conn.run("checking the relations in the target database",
        &format!(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE (n.nspname, c.relname) IN ({list})"
        ),
    )
    .await?;
    let present: HashSet<QualifiedName> = rows
        .iter()
        .map(|r| {
            let what = "checking the relations in the target database";
            Ok(QualifiedName {
                schema: r.get_str("nspname").context(what)?.to_string(),
                name: r.get_str("relname").context(what)?.to_string(),
            })
        })
        .collect::<Result<_>>()?;
    if restore_metadata {
        if let Some(n) = names.iter().find(|n| present.contains(n)) {
            return Err(Error::Usage(format!(
                "Relation {} already exists (restore into another database with --redirect-db, or load data only with --data-only [--truncate-table])",
                n.quoted()
            )));
        }
    } else if let Some(n) = names.iter().find(|n| !present.contains(n)) {
        let _ = req;
        return Err(Error::Usage(format!(
            "Relation {} must exist for data-only restore",
            n.quoted()
        )));
    }
    Ok(())
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

/// How the loads treat their tables.
#[derive(Debug, Clone, Copy)]
struct LoadMode {
    /// `--truncate-table` (or an incremental restore): empty each table in
    /// its load's transaction.
    truncate: bool,
    /// The restore created the tables (they are empty).
    created: bool,
    wal_minimal: bool,
}

/// Tables at least this big (plain bytes) may be loaded through every
/// connection at once.
pub const SPLIT_MIN: u64 = 32_000_000;

/// The table to load through every connection first, if any: the biggest,
/// when it holds more than its share of the data (one connection would
/// still load it when the others are done). Others are loaded whole, each
/// in the transaction that truncates it, so its rows are written frozen.
/// Not with wal_level = minimal, where the whole-table load skips the WAL.
fn split_choice(sizes: &[u64], jobs: usize, how: LoadMode) -> Option<usize> {
    if jobs < 2 || (how.wal_minimal && how.created) {
        return None;
    }
    let total: u64 = sizes.iter().sum();
    let (i, &bytes) = sizes.iter().enumerate().max_by_key(|(_, &b)| b)?;
    (bytes >= SPLIT_MIN && bytes.saturating_mul(jobs as u64) > total).then_some(i)
}

/// What one connection did.
enum Outcome {
    Load(usize, Result<u64>),
    Post(usize, std::result::Result<(), PgError>),
}

/// Loads the tables and replays the post-data entries on the pool's
/// connections, as [`super::schedule::Schedule`] orders them: an index of a
/// loaded table is built while other tables still load.
async fn load_and_post(
    repo: &Repo,
    req: &RestoreRequest,
    pool: &mut [PgConn],
    mut loads: Vec<Load>,
    post: &[TocEntry],
    how: LoadMode,
    state: &mut State,
) -> Result<()> {
    let mut loaded_before = Vec::new();
    // A converted load goes through its own staging table: never split.
    let sizes: Vec<u64> = loads
        .iter()
        .map(|l| {
            if l.convert.is_some() {
                0
            } else {
                l.data.plain_bytes
            }
        })
        .collect();
    if let Some(i) = split_choice(&sizes, pool.len(), how) {
        let load = loads.remove(i);
        let t = std::time::Instant::now();
        let r = load_split(repo, pool, &load, how.truncate, req.queue).await;
        if r.is_ok() {
            tracing::info!(
                "restored data to table {} through {} connections in {:.2} s",
                load.target.quoted(),
                pool.len(),
                t.elapsed().as_secs_f64()
            );
        }
        loaded_before.push(load.target.clone());
        count_load(req, state, &load, r, true)?;
    }
    let truncate = how.truncate || how.created;
    let keys: Vec<(QualifiedName, u64)> = loads
        .iter()
        .map(|l| (l.target.clone(), l.data.plain_bytes))
        .collect();
    let schedule = Mutex::new(Schedule::new(&keys, post, &loaded_before));
    let changed = tokio::sync::Notify::new();
    let outcomes = Mutex::new(Vec::<Outcome>::new());
    let started = std::time::Instant::now();
    let runs = pool.iter_mut().map(|conn| {
        let (schedule, changed, outcomes, loads) = (&schedule, &changed, &outcomes, &loads);
        async move {
            loop {
                let notified = changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let next = schedule.lock().expect("schedule").next_work();
                match next {
                    Next::Done => return,
                    Next::Wait => notified.await,
                    Next::Load(i) => {
                        let load = &loads[i];
                        let t = std::time::Instant::now();
                        let r = load_one(repo, conn, load, truncate, req.queue).await;
                        let fatal = match &r {
                            Err(e) => {
                                // The load's transaction is aborted or half-done.
                                let _ = conn.simple_query("ROLLBACK").await;
                                !req.on_error_continue
                                    || e.exit_code() != crate::error::ExitCode::Postgres
                            }
                            Ok(rows) => {
                                tracing::info!(
                                    "restored data to table {} ({rows} rows) in {:.2} s, {:.2} s after the start",
                                    load.target.quoted(),
                                    t.elapsed().as_secs_f64(),
                                    started.elapsed().as_secs_f64()
                                );
                                false
                            }
                        };
                        let mut s = schedule.lock().expect("schedule");
                        s.load_ended(&load.target);
                        if fatal {
                            s.stop();
                        }
                        drop(s);
                        outcomes
                            .lock()
                            .expect("outcomes")
                            .push(Outcome::Load(i, r));
                        changed.notify_waiters();
                    }
                    Next::Post(i) => {
                        let t = std::time::Instant::now();
                        let r = run_entry(conn, &post[i]).await;
                        tracing::debug!(
                            "{} in {:.2} s, {:.2} s after the start",
                            describe(&post[i]),
                            t.elapsed().as_secs_f64(),
                            started.elapsed().as_secs_f64()
                        );
                        let mut s = schedule.lock().expect("schedule");
                        s.post_ended(i);
                        if r.is_err() && !req.on_error_continue {
                            s.stop();
                        }
                        drop(s);
                        outcomes.lock().expect("outcomes").push(Outcome::Post(i, r));
                        changed.notify_waiters();
                    }
                }
            }
        }
    });
    futures_util::future::join_all(runs).await;
    for outcome in outcomes.into_inner().expect("outcomes") {
        match outcome {
            Outcome::Load(i, r) => count_load(req, state, &loads[i], r, false)?,
            Outcome::Post(_, Ok(())) => state.statements += 1,
            Outcome::Post(i, Err(err)) => {
                fail(req, state, "metadata", describe(&post[i]), err.to_string())?
            }
        }
    }
    Ok(())
}

/// Counts a load's rows, or its failure (fatal unless it is PostgreSQL's
/// and --on-error-continue).
fn count_load(
    req: &RestoreRequest,
    state: &mut State,
    load: &Load,
    r: Result<u64>,
    split: bool,
) -> Result<()> {
    match r {
        Ok(rows) => {
            state.tables += 1;
            state.rows += rows;
            if split {
                state.split_tables += 1;
            }
            Ok(())
        }
        Err(e) if e.exit_code() == crate::error::ExitCode::Postgres => fail(
            req,
            state,
            "data",
            format!("TABLE {}", load.target.quoted()),
            e.to_string(),
        ),
        Err(e) => Err(e),
    }
}

/// Empties a table before its load: ONLY that table (an inheritance
/// child is loaded on its own and must not lose its rows), or a
/// partitioned table copied whole with its partitions.
fn truncate_sql(name: &str, relkind: &str) -> String {
    if relkind == "p" {
        format!("TRUNCATE {name}")
    } else {
        format!("TRUNCATE ONLY {name}")
    }
}

/// `COPY name (columns) FROM STDIN`, in the table's stored format.
fn copy_in_sql(name: &str, data: &TableData, freeze: bool) -> String {
    let options: Vec<&str> = data
        .format
        .option()
        .into_iter()
        .chain(freeze.then_some("FREEZE"))
        .collect();
    let with = if options.is_empty() {
        String::new()
    } else {
        format!(" WITH ({})", options.join(", "))
    };
    format!("COPY {name} ({}) FROM STDIN{with}", data.columns.join(", "))
}

/// Binary rows may go straight into a table only if its columns have the
/// backup's types (a data-only restore into a changed schema may differ):
/// the others are converted ([`Conversion`]). One catalog query for all.
async fn plan_binary_loads(conn: &mut PgConn, loads: &mut [Load]) -> Result<()> {
    let binary: Vec<usize> = (0..loads.len())
        .filter(|&i| loads[i].data.format.is_binary())
        .collect();
    for chunk in binary.chunks(1000) {
        let values = chunk
            .iter()
            .map(|&i| {
                format!(
                    "({i}, to_regclass({}))",
                    quote_literal(&loads[i].target.quoted())
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let rows = conn
            .run(
                "reading the column types of the tables to load",
                &format!(
                    "SELECT l.n, quote_ident(a.attname) AS attname, a.atttypid, \
                        format_type(a.atttypid, NULL) AS typname \
                   FROM (VALUES {values}) l(n, r) JOIN pg_attribute a ON a.attrelid = l.r \
                  WHERE a.attnum > 0 AND NOT a.attisdropped"
                ),
            )
            .await?;
        let mut target: std::collections::HashMap<usize, Vec<(String, u32, String)>> =
            std::collections::HashMap::new();
        for r in &rows {
            let what = "reading the column types of the tables to load";
            let n: usize = r.parse("n").context(what)?;
            let c = r.get_str("attname").context(what)?.to_string();
            let t: u32 = r.parse("atttypid").context(what)?;
            let name = r.get_str("typname").context(what)?.to_string();
            target.entry(n).or_default().push((c, t, name));
        }
        for &i in chunk {
            let Some(cols) = target.get(&i) else { continue };
            let load = &mut loads[i];
            if load.data.types.len() != load.data.columns.len() {
                continue;
            }
            let backup: Vec<(String, u32)> = load
                .data
                .columns
                .iter()
                .cloned()
                .zip(load.data.types.iter().copied())
                .collect();
            let here: Vec<(String, u32)> = cols.iter().map(|(c, t, _)| (c.clone(), *t)).collect();
            if copy_format::straight(&backup, &here) {
                continue;
            }
            let oids = load
                .data
                .types
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let source_types: Vec<String> = conn.run("naming the backup's column types",
                &format!(
                    "SELECT format_type(t, NULL) AS typname FROM unnest('{{{oids}}}'::oid[]) WITH ORDINALITY u(t, n) ORDER BY n"
                ),
            )
            .await?
            .iter()
            .map(|r| {
                r.get_str("typname")
                    .map(str::to_string)
                    .context("naming the backup's column types")
            })
            .collect::<Result<_>>()?;
            let target_types = load
                .data
                .columns
                .iter()
                .map(|c| {
                    cols.iter()
                        .find(|(tc, _, _)| tc == c)
                        .map(|(_, _, name)| name.clone())
                        .unwrap_or_else(|| "text".into())
                })
                .collect();
            tracing::info!(
                "table {}: its column types differ from the backup's, so its binary rows are converted through their text form",
                load.target.quoted()
            );
            load.convert = Some(Conversion {
                source_types,
                target_types,
            });
        }
    }
    Ok(())
}

/// One big table through every connection of the pool, each in its own
/// transaction; all commit only when every COPY succeeded and the rows add
/// up to the backup's count.
async fn load_split(
    repo: &Repo,
    pool: &mut [PgConn],
    load: &Load,
    truncate: bool,
    queue: usize,
) -> Result<u64> {
    let name = load.target.quoted();
    let what = load.target.quoted();
    if truncate {
        pool[0]
            .run(
                &format!("truncating {what}"),
                &truncate_sql(&name, &load.data.relkind),
            )
            .await?;
    }
    for c in pool.iter_mut() {
        c.run(&format!("preparing to load {what}"), "BEGIN").await?;
    }
    let sql = copy_in_sql(&name, &load.data, false);
    let result = match data::copy_in_split(
        repo,
        pool,
        &sql,
        &load.data.location,
        load.data.format,
        queue,
    )
    .await
    {
        Ok((rows, _)) if rows != load.data.rows => Err(Error::Integrity(format!(
            "table {what}: the backup holds {} rows, COPY loaded {rows}: the stored data does not match its record",
            load.data.rows
        ))),
        Ok((rows, _)) => Ok(rows),
        Err(CopyInError::Pg(e)) => Err(Error::postgres(format!("loading table {what}"), e)),
        Err(CopyInError::Source(e)) => Err(e),
    };
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    for c in pool.iter_mut() {
        let r = c.run(&format!("committing table {what}"), end).await;
        if result.is_ok() {
            r?;
        }
    }
    result
}

/// One table: its own transaction, optionally truncated first, COPY, row
/// count checked against the backup's.
async fn load_one(
    repo: &Repo,
    conn: &mut PgConn,
    load: &Load,
    truncate: bool,
    queue: usize,
) -> Result<u64> {
    let name = load.target.quoted();
    let mut begin = String::from("BEGIN;");
    if truncate {
        begin.push(' ');
        begin.push_str(&truncate_sql(&name, &load.data.relkind));
        begin.push(';');
    }
    conn.run(
        &format!("preparing to load {}", load.target.quoted()),
        &begin,
    )
    .await?;
    // Truncated in this transaction: the rows can be written frozen (no
    // hint-bit writes or freezing later; not for partitioned tables).
    let freeze = truncate && load.data.relkind != "p";
    let (sql, insert) = match &load.convert {
        None => (copy_in_sql(&name, &load.data, freeze), None),
        Some(conv) => {
            let [create, copy, insert] = conv.statements(&name, &load.data.columns);
            conn.run(
                &format!("preparing to convert the rows of {}", load.target.quoted()),
                &create,
            )
            .await?;
            (copy, Some(insert))
        }
    };
    let (rows, _bytes) = match data::copy_in(repo, conn, &sql, &load.data.location, queue).await {
        Ok(v) => v,
        Err(CopyInError::Pg(e)) => {
            return Err(Error::postgres(
                format!("loading table {}", load.target.quoted()),
                e,
            ))
        }
        Err(CopyInError::Source(e)) => return Err(e),
    };
    if rows != load.data.rows {
        return Err(Error::Integrity(format!(
            "table {}: the backup holds {} rows, COPY loaded {rows}: the stored data does not match its record",
            load.target.quoted(),
            load.data.rows
        )));
    }
    if let Some(insert) = insert {
        conn.run(
            &format!(
                "converting the rows of {} to its column types",
                load.target.quoted()
            ),
            &insert,
        )
        .await?;
    }
    conn.run(
        &format!("committing table {}", load.target.quoted()),
        "COMMIT",
    )
    .await?;
    Ok(rows)
}

/// `--run-analyze`: ANALYZE each restored table (and the roots of
/// restored partitions), in parallel.
async fn analyze(
    pool: &mut [PgConn],
    req: &RestoreRequest,
    loads: &[Load],
    state: &mut State,
) -> Result<()> {
    let mut names: Vec<QualifiedName> = loads.iter().map(|l| l.target.clone()).collect();
    for l in loads {
        if let Some(r) = &l.data.root {
            let mut r = r.clone();
            if let Some(to) = &req.redirect_schema {
                r.schema = to.clone();
            }
            names.push(r);
        }
    }
    names.sort();
    names.dedup();
    let queue = Mutex::new(names.into_iter().collect::<VecDeque<_>>());
    let results = Mutex::new(Vec::new());
    let runs = pool.iter_mut().map(|conn| {
        let (queue, results) = (&queue, &results);
        async move {
            loop {
                let next = queue.lock().expect("queue").pop_front();
                let Some(n) = next else { return };
                let r = conn.simple_query(&format!("ANALYZE {}", n.quoted())).await;
                results.lock().expect("results").push((n, r));
            }
        }
    });
    futures_util::future::join_all(runs).await;
    for (n, r) in results.into_inner().expect("results") {
        if let Err(e) = r {
            fail(
                req,
                state,
                "data",
                format!("ANALYZE {}", n.quoted()),
                e.to_string(),
            )?;
        }
    }
    Ok(())
}

/// `--with-stats`: pg_class's row and page counts as backed up (needs a
/// superuser: pg_class is written directly). After the post-data, whose
/// index builds set them too.
async fn apply_stats(
    repo: &Repo,
    req: &RestoreRequest,
    b: &LogicalBackupRecord,
    conn: &mut PgConn,
    loads: &[Load],
    entries: &[TocEntry],
    state: &mut State,
) -> Result<()> {
    let Some(s) = &b.statistics else {
        return Ok(());
    };
    let stats: StoredStats = repo.get_json(&s.key).await?;
    let mut restored: HashSet<QualifiedName> = loads.iter().map(|l| l.data.table.clone()).collect();
    restored.extend(
        entries
            .iter()
            .filter(|e| e.kind == ObjectKind::Table && e.owner_table.is_none())
            .map(|e| QualifiedName {
                schema: e.schema.clone(),
                name: e.name.clone(),
            }),
    );
    let mut sql = String::new();
    for t in &stats.tables {
        let mut target = t.table.clone();
        if let Some(to) = &req.redirect_schema {
            target.schema = to.clone();
        }
        if !restored.contains(&t.table) && !restored.contains(&target) {
            continue;
        }
        sql.push_str(&format!(
            "UPDATE pg_catalog.pg_class SET reltuples = {}, relpages = {}, relallvisible = {} \
              WHERE oid = to_regclass({});\n",
            t.reltuples,
            t.relpages,
            t.relallvisible,
            quote_literal(&target.quoted())
        ));
    }
    if sql.is_empty() {
        return Ok(());
    }
    if let Err(e) = conn.simple_query(&format!("BEGIN;\n{sql}COMMIT;")).await {
        let _ = conn.simple_query("ROLLBACK").await;
        let hint = if e.code() == Some("42501") {
            " (writing pg_class needs a superuser: restore as one, or use --run-analyze)"
        } else {
            ""
        };
        fail(
            req,
            state,
            "metadata",
            "STATISTICS".into(),
            format!("{e}{hint}"),
        )?;
    }
    Ok(())
}

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
