//! `cbdr gpbackup`: a logical backup of one database.
//!
//! 1. One connection (the coordinator) opens a REPEATABLE READ READ ONLY
//!    transaction and exports its snapshot; `--jobs N` more connections
//!    import it (`SET TRANSACTION SNAPSHOT`), so every table is read as of
//!    the same moment.
//! 2. The coordinator takes ACCESS SHARE locks on every table of the
//!    backup (with a lock timeout), each in a savepoint of its own, in the
//!    reverse of the copy order. A table's lock is released (ROLLBACK TO
//!    its savepoint) as soon as the metadata has been read and the copy of
//!    the table and of every table before it has started under its own
//!    lock, so long backups do not hold every lock to the end.
//! 3. The coordinator reads the metadata (DDL) while the workers copy. A
//!    worker locks its table with NOWAIT first; if a conflicting lock
//!    request is queued (which would deadlock against the coordinator's
//!    lock), the table goes to the coordinator, which holds the lock.
//! 4. Every object goes through the repository codec; the record
//!    `backup.json` is written last.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{Local, Utc};
use tokio::sync::mpsc;

use super::copy_format::{self, CopyFormat, CopyFormatChoice};
use super::data::{self, SingleFileWriter};
use super::incremental::{self, Settled};
use super::large_objects;
use super::layout::{self, Timestamp};
use super::metadata::{self, MetadataOptions, ObjectFilter, TableInfo};
use super::record::{
    build_metadata, BackupOptionsRecord, DataLocation, LargeObjectData, LogicalBackupRecord,
    ObjectStats, ServerSignals, StoredStats, TableData, TableSignals, TableStats, RECORD_FORMAT,
};
use super::report::{self, BackupOutcome};
use super::toc::QualifiedName;
use crate::error::{Error, PgResultExt, Result};
use crate::pg::conn::{ConnParams, PgConn, Replication, Row};
use crate::pg::quote::quote_literal;
use crate::repo::Repo;

/// How long the coordinator waits for each table lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(60);

/// What to back up and how (gpbackup's flags, validated).
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub conn: ConnParams,
    pub filter: ObjectFilter,
    pub data_only: bool,
    pub metadata_only: bool,
    pub leaf_partition_data: bool,
    pub single_data_file: bool,
    pub with_stats: bool,
    pub without_globals: bool,
    /// Back up a database holding objects the logical mode does not carry
    /// (large objects, subscriptions...), leaving them out; without it the
    /// backup fails naming them.
    pub skip_unsupported: bool,
    /// Connections copying in parallel.
    pub jobs: u32,
    /// Pieces (1 MiB) buffered between COPY and the encoder.
    pub queue: usize,
    /// `[logical] copy_format`: binary rows where the column types allow.
    pub copy_format: CopyFormatChoice,
    /// `[logical] large_object_chunk`: bytes of a large object per row.
    pub large_object_chunk: u64,
    pub incremental: bool,
    pub from_timestamp: Option<Timestamp>,
    pub command_line: String,
    /// Print progress lines on stdout.
    pub progress: bool,
}

/// One table whose rows this backup holds.
#[derive(Debug, Clone)]
struct Unit {
    info: TableInfo,
    root: Option<QualifiedName>,
    /// COPY column list (quoted, generated columns left out).
    columns: Vec<String>,
    /// Their type OIDs.
    types: Vec<u32>,
    /// How its rows are copied.
    format: CopyFormat,
    /// Signals read before the snapshot (stored with copied rows).
    stored_signals: Option<TableSignals>,
    /// Rows kept from an earlier backup.
    kept: Option<TableData>,
}

impl Unit {
    fn copy_out_sql(&self) -> String {
        let cols = self.columns.join(", ");
        let name = self.info.name.quoted();
        let with = self
            .format
            .option()
            .map(|o| format!(" ({o})"))
            .unwrap_or_default();
        // A table with no columns can still have rows: no column list.
        match (self.info.relkind, cols.is_empty()) {
            ('p', _) => format!("COPY (SELECT {cols} FROM {name}) TO STDOUT{with}"),
            (_, true) => format!("COPY {name} TO STDOUT{with}"),
            (_, false) => format!("COPY {name} ({cols}) TO STDOUT{with}"),
        }
    }

    fn what(&self) -> String {
        format!("copying table {}", self.info.name.quoted())
    }
}

/// What a finished copy produced.
#[derive(Debug)]
struct Copied {
    rows: u64,
    plain: u64,
    stored: u64,
    location: DataLocation,
}

enum Event {
    Started(usize),
    Deferred(usize),
    Finished(usize, Copied),
    Failed(Error),
}

/// Takes a logical backup; returns its record (already stored).
pub async fn gpbackup(repo: &Repo, req: &BackupRequest) -> Result<LogicalBackupRecord> {
    repo.prepare_write().await?;
    let start_time = Utc::now();
    let mut main = PgConn::connect(&req.conn, Replication::Off)
        .await
        .context(format!("connecting to database {}", req.conn.dbname))?;
    main.run(
        "setting up the session",
        "SET application_name = 'cbdr gpbackup'; SET statement_timeout = 0; \
         SET idle_in_transaction_session_timeout = 0; SET client_encoding = 'UTF8'",
    )
    .await?;
    let db = main
        .run(
            "reading the database's properties",
            "SELECT current_database() AS datname, pg_encoding_to_char(encoding) AS encoding, \
                datcollate, datctype, current_setting('server_version') AS server_version, \
                pg_database_size(current_database()) AS size \
           FROM pg_database WHERE datname = current_database()",
        )
        .await?;
    let db = db
        .first()
        .ok_or_else(|| Error::Server("the current database is not in pg_database".into()))?;
    let mut db = DatabaseProps::read(db)?;
    db.flavor = metadata::detect_flavor(&mut main).await?;
    let dbname = db.name.clone();
    let database_size = Some(db.size);

    let base = if req.incremental {
        Some(find_base(repo, req, &dbname).await?)
    } else {
        None
    };
    let ts = pick_timestamp(repo).await?;
    if req.progress {
        println!("Backup Timestamp = {ts}");
        println!(
            "Backup Database = {}",
            crate::pg::quote::quote_ident(&dbname)
        );
    }

    let result = backup_in_snapshot(repo, req, &mut main, &ts, base.as_ref()).await;
    let end_time = Utc::now();
    let (
        tables,
        metadata,
        toc,
        statistics,
        object_counts,
        server_signals,
        full_copy_reason,
        skipped_objects,
        large_objects,
    ) = match result {
        Ok(v) => v,
        Err(e) => {
            write_failure_report(repo, req, &ts, &db, start_time, &e).await;
            return Err(e);
        }
    };
    main.close().await;

    let mut record = LogicalBackupRecord {
        format: super::record::record_format(large_objects.is_some()),
        timestamp: ts.to_string(),
        database: dbname.clone(),
        database_encoding: db.encoding.clone(),
        database_collate: db.collate.clone(),
        database_ctype: db.ctype.clone(),
        server_version: db.server_version.clone(),
        server_version_num: 0,
        server_flavor: db.flavor,
        cbdr_version: env!("CARGO_PKG_VERSION").to_string(),
        start_time,
        end_time,
        options: options_record(req, repo),
        incremental_of: base.as_ref().map(|b| b.timestamp.clone()),
        metadata,
        toc,
        statistics,
        report: None,
        tables,
        large_objects,
        object_counts,
        skipped_objects,
        server_signals: Some(server_signals),
        segment_count: 0,
        encrypted: repo.codec.key.is_some(),
    };
    let mut chain: Vec<String> = base.as_ref().map(chain_of).unwrap_or_default();
    if base.is_some() {
        chain.push(ts.to_string());
    }
    let text = report::backup_report(
        &record,
        &BackupOutcome {
            error: None,
            database_size,
            chain,
            full_copy_reason,
        },
    );
    let report_key = layout::report_key(&ts);
    let stats = repo.put_bytes(&report_key, text.into_bytes()).await?;
    record.report = Some(ObjectStats {
        key: report_key,
        plain_bytes: stats.plain,
        stored_bytes: stats.stored,
    });
    // Last: the record makes the backup complete.
    repo.put_json(&layout::record_key(&ts), &record).await?;
    Ok(record)
}

/// The timestamps of an incremental chain, oldest first (not including
/// the new backup).
fn chain_of(base: &LogicalBackupRecord) -> Vec<String> {
    let mut set: Vec<String> = base.tables.iter().map(|t| t.backup.clone()).collect();
    set.push(base.timestamp.clone());
    set.sort();
    set.dedup();
    set
}

fn options_record(req: &BackupRequest, repo: &Repo) -> BackupOptionsRecord {
    BackupOptionsRecord {
        data_only: req.data_only,
        metadata_only: req.metadata_only,
        leaf_partition_data: req.leaf_partition_data,
        single_data_file: req.single_data_file,
        with_stats: req.with_stats,
        globals: !req.data_only && !req.without_globals && req.filter.include_tables.is_empty(),
        include_schemas: req.filter.include_schemas.clone(),
        exclude_schemas: req.filter.exclude_schemas.clone(),
        include_tables: req.filter.include_tables.clone(),
        exclude_tables: req.filter.exclude_tables.clone(),
        compression: repo.codec.compression.name().to_string(),
        compression_level: (repo.codec.compression != crate::codec::Compression::None)
            .then_some(repo.codec.level),
        jobs: req.jobs,
        incremental: req.incremental,
        command_line: req.command_line.clone(),
    }
}

/// A fresh timestamp: the current second, or a later one when a backup
/// (or an interrupted one) already used it. The timestamp is the backup's
/// user-visible key (gpbackup's YYYYMMDDHHMMSS), so it cannot take a unique
/// suffix; and the storage may not honour a conditional create. So a
/// backup claims its timestamp with an object of its own
/// (`logical/{TS}/claim-{random}`) and keeps it only if, listed after, that
/// claim is alone under the timestamp: of two backups racing for one
/// second at most one goes on (both may step back, and try a later
/// second); a backup never writes into another's timestamp.
async fn pick_timestamp(repo: &Repo) -> Result<Timestamp> {
    for _ in 0..40 {
        let ts = Timestamp::from_time(Local::now());
        let prefix = layout::backup_prefix(&ts);
        if repo.storage.list(&prefix).await?.is_empty() {
            let claim = format!(
                "{prefix}claim-{}",
                hex::encode(crate::codec::random_bytes::<8>())
            );
            repo.put_bytes(&claim, Vec::new()).await?;
            let others = repo
                .storage
                .list(&prefix)
                .await?
                .into_iter()
                .any(|o| o.key != claim);
            if !others {
                return Ok(ts);
            }
            // Another backup claimed the same second: step back.
            if let Err(e) = repo.storage.delete(&claim).await {
                tracing::warn!("could not remove the claim {claim}: {e}");
            }
        }
        let jitter = u64::from(crate::codec::random_bytes::<1>()[0]);
        tokio::time::sleep(Duration::from_millis(250 + jitter)).await;
    }
    Err(Error::Usage(
        "no free backup timestamp: other backups kept taking each second; run the backup again once they are done".into(),
    ))
}

/// The backup an incremental is taken against: `--from-timestamp`, else
/// the newest complete backup of the same database that holds data.
async fn find_base(repo: &Repo, req: &BackupRequest, dbname: &str) -> Result<LogicalBackupRecord> {
    let mismatch = |ts: &str, why: String| {
        Error::Usage(format!(
            "The flags of the backup with timestamp = {ts} does not match that of the current one: {why}. \
             Please refer to the report to view the flags supplied for the previous backup."
        ))
    };
    match &req.from_timestamp {
        Some(ts) => {
            let b = repo.logical_backup(ts).await?;
            if b.database != dbname {
                return Err(mismatch(
                    ts.as_str(),
                    format!(
                        "it is a backup of database {:?}, not {dbname:?}",
                        b.database
                    ),
                ));
            }
            if b.options.metadata_only {
                return Err(mismatch(
                    ts.as_str(),
                    "it is a --metadata-only backup, which holds no data".into(),
                ));
            }
            Ok(b)
        }
        None => repo
            .logical_backups()
            .await?
            .into_iter()
            .rev()
            .find(|b| b.database == dbname && !b.options.metadata_only)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "There was no matching previous backup found with the flags provided. \
                     Please take a full backup. (No complete backup of database {dbname:?} \
                     with data is in the repository; `cbdr list` shows the backups.)"
                ))
            }),
    }
}

type Outcome = (
    Vec<TableData>,
    Option<ObjectStats>,
    Option<ObjectStats>,
    Option<ObjectStats>,
    std::collections::BTreeMap<String, u64>,
    ServerSignals,
    Option<String>,
    Vec<String>,
    Option<LargeObjectData>,
);

async fn backup_in_snapshot(
    repo: &Repo,
    req: &BackupRequest,
    main: &mut PgConn,
    ts: &Timestamp,
    base: Option<&LogicalBackupRecord>,
) -> Result<Outcome> {
    // Nothing silent: objects the backup would leave out stop it unless
    // the user asked to skip them.
    let skipped = if req.data_only {
        Vec::new()
    } else {
        check_uncarried(main, req.skip_unsupported).await?
    };
    // Signals to store are read before the snapshot (see `incremental`).
    main.run(
        "clearing the statistics snapshot",
        "SELECT pg_stat_clear_snapshot()",
    )
    .await?;
    let server_signals = incremental::server_signals(main).await?;
    let pre_signals = if req.metadata_only {
        HashMap::new()
    } else {
        let oids = all_table_oids(main).await?;
        incremental::table_signals(main, &oids).await?
    };

    main.run(
        "starting the snapshot transaction",
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    )
    .await?;
    let snap = main
        .query_one("SELECT pg_export_snapshot() AS id, clock_timestamp()::text AS time")
        .await
        .context("exporting the snapshot")?;
    let snapshot_id = snap
        .get_str("id")
        .context("exporting the snapshot")?
        .to_string();
    let snapshot_time = snap
        .get_str("time")
        .context("exporting the snapshot")?
        .to_string();

    validate_filter(main, &req.filter, req.leaf_partition_data).await?;
    let tables = metadata::list_tables(
        main,
        &req.filter,
        req.leaf_partition_data && !req.metadata_only,
    )
    .await?;
    let mut units = describe_units(main, tables, &pre_signals, req.copy_format).await?;

    // Incremental: keep the rows of tables that cannot have changed.
    let mut full_copy_reason = None;
    if let Some(base) = base {
        let own = main.process_id().into_iter().collect::<Vec<_>>();
        match incremental::settle(main, &own, &snapshot_time).await? {
            Settled::Yes => {}
            Settled::No(busy) => {
                let why = format!(
                    "sessions stayed busy for a minute, so changes they made may not be counted yet: {}",
                    busy.join("; ")
                );
                tracing::warn!("every table is copied again: {why}");
                full_copy_reason = Some(why);
            }
        }
        main.run(
            "clearing the statistics snapshot",
            "SELECT pg_stat_clear_snapshot()",
        )
        .await?;
        let now_server = incremental::server_signals(main).await?;
        if full_copy_reason.is_none() {
            full_copy_reason =
                incremental::server_changed(base.server_signals.as_ref(), &now_server);
            if let Some(why) = &full_copy_reason {
                tracing::warn!("every table is copied again: {why}");
            }
        }
        if full_copy_reason.is_none() {
            let oids: Vec<u32> = units.iter().map(|u| u.info.oid).collect();
            let now = incremental::table_signals(main, &oids).await?;
            let by_oid: HashMap<u32, &TableData> = base.tables.iter().map(|t| (t.oid, t)).collect();
            for u in &mut units {
                let Some(old) = by_oid.get(&u.info.oid) else {
                    continue;
                };
                if old.relkind != u.info.relkind.to_string() {
                    continue;
                }
                if !incremental::table_changed(old.signals.as_ref(), now.get(&u.info.oid)) {
                    let mut kept = (*old).clone();
                    kept.table = u.info.name.clone();
                    kept.root = u.root.clone();
                    kept.columns = u.columns.clone();
                    u.kept = Some(kept);
                }
            }
        }
    }

    // Copy order: kept tables first (nothing to wait for), then the
    // largest tables first so parallel copies end together.
    units.sort_by(|a, b| {
        b.kept
            .is_some()
            .cmp(&a.kept.is_some())
            .then(b.info.estimated_bytes.cmp(&a.info.estimated_bytes))
    });
    lock_tables(main, &units).await?;

    let workers = if req.jobs > 1 && !req.single_data_file && !req.metadata_only {
        let to_copy = units.iter().filter(|u| u.kept.is_none()).count();
        (req.jobs as usize).min(to_copy)
    } else {
        0
    };
    let (ev_tx, ev_rx) = mpsc::unbounded_channel::<Event>();
    let queue: Arc<Mutex<VecDeque<usize>>> = Arc::new(Mutex::new(
        (0..units.len())
            .filter(|&i| units[i].kept.is_none() && !req.metadata_only && workers > 0)
            .collect(),
    ));
    let units = Arc::new(units);
    let mut worker_set = tokio::task::JoinSet::new();
    for w in 0..workers {
        let ev = ev_tx.clone();
        let queue = queue.clone();
        let units = units.clone();
        let repo = repo.clone();
        let conn = req.conn.clone();
        let snapshot_id = snapshot_id.clone();
        let ts = ts.clone();
        let queue_len = req.queue;
        worker_set.spawn(async move {
            if let Err(e) = worker(
                w,
                &conn,
                &snapshot_id,
                &repo,
                &ts,
                &units,
                &queue,
                queue_len,
                &ev,
            )
            .await
            {
                let _ = ev.send(Event::Failed(e));
            }
        });
    }
    drop(ev_tx);

    // Metadata, while the workers copy.
    let mut metadata_stats = None;
    let mut toc_stats = None;
    let mut object_counts = std::collections::BTreeMap::new();
    if !req.data_only {
        let entries = metadata::collect(
            main,
            &MetadataOptions {
                with_globals: !req.without_globals && req.filter.include_tables.is_empty(),
                filter: req.filter.clone(),
            },
        )
        .await?;
        for e in &entries {
            *object_counts.entry(e.kind.to_string()).or_insert(0) += 1;
        }
        let (sql, toc) = build_metadata(&entries);
        let mkey = layout::metadata_key(ts);
        let s = repo.put_bytes(&mkey, sql).await?;
        metadata_stats = Some(ObjectStats {
            key: mkey,
            plain_bytes: s.plain,
            stored_bytes: s.stored,
        });
        let tkey = layout::toc_key(ts);
        let json = serde_json::to_vec_pretty(&toc).expect("serializable");
        let s = repo.put_bytes(&tkey, json).await?;
        toc_stats = Some(ObjectStats {
            key: tkey,
            plain_bytes: s.plain,
            stored_bytes: s.stored,
        });
    }
    let statistics = if req.with_stats {
        Some(store_statistics(repo, main, ts, &units).await?)
    } else {
        None
    };

    // Data.
    let copied = if req.metadata_only {
        HashMap::new()
    } else {
        coordinate(repo, req, main, ts, &units, workers, ev_rx).await?
    };
    while let Some(r) = worker_set.join_next().await {
        r.map_err(|e| Error::Internal(format!("backup worker: {e}")))?;
    }
    // Large objects belong to a whole-database backup (pg_dump leaves
    // them out of one filtered to schemas or tables).
    let large_objects = if req.metadata_only || req.filter.has_includes() {
        None
    } else {
        large_objects::dump(repo, main, ts, req.large_object_chunk, req.queue).await?
    };
    main.run("ending the snapshot transaction", "COMMIT")
        .await?;

    let mut tables = Vec::new();
    if !req.metadata_only {
        for (i, u) in units.iter().enumerate() {
            if let Some(kept) = &u.kept {
                tables.push(kept.clone());
                continue;
            }
            let c = copied.get(&i).ok_or_else(|| {
                Error::Internal(format!("table {} was not copied", u.info.name.name))
            })?;
            tables.push(TableData {
                table: u.info.name.clone(),
                oid: u.info.oid,
                relkind: u.info.relkind.to_string(),
                root: u.root.clone(),
                columns: u.columns.clone(),
                rows: c.rows,
                plain_bytes: c.plain,
                stored_bytes: c.stored,
                backup: ts.to_string(),
                location: c.location.clone(),
                signals: u.stored_signals.clone(),
                format: u.format,
                types: if u.format.is_binary() {
                    u.types.clone()
                } else {
                    Vec::new()
                },
            });
        }
    }
    Ok((
        tables,
        metadata_stats,
        toc_stats,
        statistics,
        object_counts,
        server_signals,
        full_copy_reason,
        skipped,
        large_objects,
    ))
}

/// How many objects an error message names before it says "and N more".
const NAMED_OBJECTS: usize = 20;

/// The objects the logical backup does not carry: an error naming them,
/// or (with `skip`) a warning and the list the record keeps.
async fn check_uncarried(main: &mut PgConn, skip: bool) -> Result<Vec<String>> {
    let objects = metadata::uncarried(main).await?;
    if objects.is_empty() {
        return Ok(objects);
    }
    let mut named: Vec<&str> = objects
        .iter()
        .take(NAMED_OBJECTS)
        .map(String::as_str)
        .collect();
    let more = objects.len().saturating_sub(NAMED_OBJECTS);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    if !skip {
        return Err(Error::Usage(format!(
            "the database holds {} object(s) the logical backup does not carry: {}{more}. \
             Pass --skip-unsupported to back up without them (the backup and restore reports \
             list them), or use a physical backup (cbdr backup), which carries everything",
            objects.len(),
            named.join(", ")
        )));
    }
    named.truncate(NAMED_OBJECTS);
    tracing::warn!(
        "--skip-unsupported: leaving out {} object(s) the logical backup does not carry: {}{more}",
        objects.len(),
        named.join(", ")
    );
    Ok(objects)
}

/// Every table of the database that a backup could copy.
async fn all_table_oids(conn: &mut PgConn) -> Result<Vec<u32>> {
    let rows = conn
        .run(
            "listing the tables",
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE c.relkind IN ('r', 'p') AND n.nspname !~ '^pg_' \
            AND n.nspname NOT IN ('information_schema', 'gp_toolkit')",
        )
        .await?;
    rows.iter()
        .map(|r| r.parse("oid").context("listing the tables"))
        .collect()
}

/// The column lists and partition roots of the tables to copy.
async fn describe_units(
    conn: &mut PgConn,
    tables: Vec<TableInfo>,
    pre: &HashMap<u32, TableSignals>,
    choice: CopyFormatChoice,
) -> Result<Vec<Unit>> {
    let mut columns: HashMap<u32, Vec<(String, u32)>> = HashMap::new();
    let mut roots: HashMap<u32, QualifiedName> = HashMap::new();
    for chunk in tables.chunks(5000) {
        let list = chunk
            .iter()
            .map(|t| t.oid.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let rows = conn
            .run(
                "reading the tables' columns",
                &format!(
                    "SELECT a.attrelid, quote_ident(a.attname) AS attname, a.atttypid FROM pg_attribute a \
                  WHERE a.attrelid = ANY('{{{list}}}'::oid[]) AND a.attnum > 0 \
                    AND NOT a.attisdropped AND a.attgenerated = '' \
                  ORDER BY a.attrelid, a.attnum"
                ),
            )
            .await?;
        for r in rows {
            let what = "reading the tables' columns";
            let oid: u32 = r.parse("attrelid").context(what)?;
            let col = r.get_str("attname").context(what)?.to_string();
            let ty: u32 = r.parse("atttypid").context(what)?;
            columns.entry(oid).or_default().push((col, ty));
        }
        let rows = conn
            .run(
                "reading the partition roots",
                &format!(
                    "SELECT c.oid, rn.nspname, rc.relname FROM pg_class c \
                   JOIN pg_class rc ON rc.oid = pg_partition_root(c.oid) \
                   JOIN pg_namespace rn ON rn.oid = rc.relnamespace \
                  WHERE c.oid = ANY('{{{list}}}'::oid[]) AND c.relispartition"
                ),
            )
            .await?;
        for r in rows {
            let what = "reading the partition roots";
            roots.insert(
                r.parse("oid").context(what)?,
                QualifiedName {
                    schema: r.get_str("nspname").context(what)?.to_string(),
                    name: r.get_str("relname").context(what)?.to_string(),
                },
            );
        }
    }
    Ok(tables
        .into_iter()
        .map(|t| {
            let (columns, types): (Vec<String>, Vec<u32>) = columns
                .remove(&t.oid)
                .unwrap_or_default()
                .into_iter()
                .unzip();
            let format = copy_format::choose(choice, &types);
            Unit {
                columns,
                types,
                format,
                root: roots.remove(&t.oid),
                stored_signals: pre.get(&t.oid).cloned(),
                kept: None,
                info: t,
            }
        })
        .collect())
}

/// gpbackup's checks of the filter lists against the database.
async fn validate_filter(conn: &mut PgConn, f: &ObjectFilter, leaf: bool) -> Result<()> {
    for (list, exclude) in [(&f.include_schemas, false), (&f.exclude_schemas, true)] {
        for s in list {
            let sql = format!(
                "SELECT 1 FROM pg_namespace WHERE nspname = {}",
                quote_literal(s)
            );
            if conn
                .run("checking the schema filter", &sql)
                .await?
                .is_empty()
            {
                if exclude {
                    tracing::warn!("Excluded schema {s} does not exist");
                } else {
                    return Err(Error::Usage(format!("Schema {s} does not exist")));
                }
            }
        }
    }
    for (list, exclude) in [(&f.include_tables, false), (&f.exclude_tables, true)] {
        for t in list {
            let sql = format!(
                "SELECT c.relkind, c.relispartition FROM pg_class c \
                   JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE n.nspname = {} AND c.relname = {}",
                quote_literal(&t.schema),
                quote_literal(&t.name)
            );
            let rows = conn.run("checking the table filter", &sql).await?;
            let name = t.quoted();
            let Some(r) = rows.first() else {
                if exclude {
                    tracing::warn!("Excluded table {name} does not exist");
                    continue;
                }
                return Err(Error::Usage(format!("Table {name} does not exist")));
            };
            let what = "checking the table filter";
            let partition = r.get_bool("relispartition").context(what)?;
            let partitioned = r.get_str("relkind").context(what)? == "p";
            if partition && partitioned {
                return Err(Error::Usage(format!(
                    "Cannot filter on {name}, as it is an intermediate partition table.  Only parent partition tables and leaf partition tables may be specified."
                )));
            }
            if partition && !leaf {
                return Err(Error::Usage(format!(
                    "--leaf-partition-data flag must be specified to filter on {name}, as it is a leaf partition table."
                )));
            }
        }
    }
    Ok(())
}

/// Locks every table, each under a savepoint, in the reverse of the copy
/// order: `ROLLBACK TO SAVEPOINT cbdr_lock_{i}` then releases tables
/// `0..=i` at once.
async fn lock_tables(main: &mut PgConn, units: &[Unit]) -> Result<()> {
    main.run(
        "setting the lock timeout",
        &format!("SET LOCAL lock_timeout = '{}s'", LOCK_TIMEOUT.as_secs()),
    )
    .await?;
    let order: Vec<usize> = (0..units.len()).rev().collect();
    for batch in order.chunks(100) {
        let mut sql = String::new();
        for &i in batch {
            sql.push_str(&format!(
                "SAVEPOINT cbdr_lock_{i}; LOCK TABLE {} IN ACCESS SHARE MODE; ",
                units[i].info.name.quoted()
            ));
        }
        if let Err(e) = main.simple_query(&sql).await {
            if e.code() == Some("55P03") {
                return Err(Error::postgres(
                    format!(
                        "could not lock the tables for the backup within {} s: another session \
                         holds or waits for a conflicting lock (ALTER TABLE, TRUNCATE, DROP, \
                         VACUUM FULL, CLUSTER, REINDEX...; see pg_locks); retry when it is done",
                        LOCK_TIMEOUT.as_secs()
                    ),
                    e,
                ));
            }
            return Err(Error::postgres("locking the tables", e));
        }
    }
    Ok(())
}

/// Releases the locks of tables `0..upto` (exclusive).
async fn release_locks(main: &mut PgConn, upto: usize) -> Result<()> {
    if upto == 0 {
        return Ok(());
    }
    main.run(
        "releasing table locks",
        &format!("ROLLBACK TO SAVEPOINT cbdr_lock_{}", upto - 1),
    )
    .await?;
    Ok(())
}

/// `--with-stats`: pg_class's counts of every table of the backup.
async fn store_statistics(
    repo: &Repo,
    main: &mut PgConn,
    ts: &Timestamp,
    units: &[Unit],
) -> Result<ObjectStats> {
    let mut tables = Vec::new();
    for chunk in units.chunks(5000) {
        let list = chunk
            .iter()
            .map(|u| u.info.oid.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let rows = main
            .run(
                "reading the table statistics",
                &format!(
                "SELECT n.nspname, c.relname, c.reltuples::float8 AS reltuples, c.relpages, c.relallvisible \
                   FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.oid IN (SELECT relid FROM unnest('{{{list}}}'::oid[]) AS u(oid), \
                                  LATERAL pg_partition_tree(u.oid)) \
                    AND c.relkind IN ('r', 'p', 'm')"
            ),
            )
            .await?;
        for r in rows {
            let what = "reading the table statistics";
            tables.push(TableStats {
                table: QualifiedName {
                    schema: r.get_str("nspname").context(what)?.to_string(),
                    name: r.get_str("relname").context(what)?.to_string(),
                },
                reltuples: r.parse("reltuples").context(what)?,
                relpages: r.parse("relpages").context(what)?,
                relallvisible: r.parse("relallvisible").context(what)?,
            });
        }
    }
    let key = layout::stats_key(ts);
    let json = serde_json::to_vec_pretty(&StoredStats {
        format: RECORD_FORMAT,
        tables,
    })
    .expect("serializable");
    let s = repo.put_bytes(&key, json).await?;
    Ok(ObjectStats {
        key,
        plain_bytes: s.plain,
        stored_bytes: s.stored,
    })
}

/// Copies one table on `conn` into its object (or the next frame).
async fn copy_one(
    repo: &Repo,
    conn: &mut PgConn,
    ts: &Timestamp,
    u: &Unit,
    queue: usize,
    single: Option<&mut SingleFileWriter>,
) -> Result<Copied> {
    let sql = u.copy_out_sql();
    let what = u.what();
    match single {
        Some(w) => {
            let (rows, f) = w.dump(conn, &sql, &what).await?;
            Ok(Copied {
                rows,
                plain: f.plain,
                stored: f.length,
                location: DataLocation::Frame {
                    key: w.key().to_string(),
                    frame: f.frame,
                    offset: f.offset,
                    length: f.length,
                },
            })
        }
        None => {
            let key = layout::table_data_key(ts, u.info.oid);
            let (rows, s) = data::dump_to_object(repo, conn, &sql, &key, &what, queue).await?;
            Ok(Copied {
                rows,
                plain: s.plain,
                stored: s.stored,
                location: DataLocation::Object { key },
            })
        }
    }
}

/// The coordinator's part of the data phase: releases locks as copies
/// start, copies deferred tables (or every table when there are no
/// workers).
async fn coordinate(
    repo: &Repo,
    req: &BackupRequest,
    main: &mut PgConn,
    ts: &Timestamp,
    units: &[Unit],
    workers: usize,
    mut events: mpsc::UnboundedReceiver<Event>,
) -> Result<HashMap<usize, Copied>> {
    let n = units.len();
    let mut started = vec![false; n];
    let mut copied = HashMap::new();
    let mut released = 0usize;
    for (i, u) in units.iter().enumerate() {
        if u.kept.is_some() {
            started[i] = true;
        }
    }
    let advance = |started: &[bool], released: &mut usize| -> usize {
        let before = *released;
        while *released < n && started[*released] {
            *released += 1;
        }
        if *released > before {
            *released
        } else {
            0
        }
    };
    let upto = advance(&started, &mut released);
    release_locks(main, upto).await?;

    let total = units.iter().filter(|u| u.kept.is_none()).count();
    let progress = Progress::new(total);
    if workers == 0 {
        let mut single = if req.single_data_file {
            Some(SingleFileWriter::start(
                repo,
                &layout::single_data_key(ts),
                req.queue,
            ))
        } else {
            None
        };
        for i in 0..n {
            if units[i].kept.is_some() {
                continue;
            }
            let c = copy_one(repo, main, ts, &units[i], req.queue, single.as_mut()).await?;
            progress.table_done(&units[i], &c);
            copied.insert(i, c);
            started[i] = true;
            let upto = advance(&started, &mut released);
            release_locks(main, upto).await?;
        }
        if let Some(w) = single {
            w.finish().await?;
        }
        return Ok(copied);
    }
    while copied.len() < total {
        let Some(ev) = events.recv().await else {
            return Err(Error::Internal(
                "the backup workers stopped before every table was copied".into(),
            ));
        };
        match ev {
            Event::Started(i) => started[i] = true,
            Event::Deferred(i) => {
                tracing::info!(
                    "{}: a lock request is queued on it; the coordinator copies it",
                    units[i].info.name.quoted()
                );
                let c = copy_one(repo, main, ts, &units[i], req.queue, None).await?;
                progress.table_done(&units[i], &c);
                copied.insert(i, c);
                started[i] = true;
            }
            Event::Finished(i, c) => {
                progress.table_done(&units[i], &c);
                copied.insert(i, c);
            }
            Event::Failed(e) => return Err(e),
        }
        let upto = advance(&started, &mut released);
        release_locks(main, upto).await?;
    }
    Ok(copied)
}

struct Progress {
    total: usize,
    done: std::sync::atomic::AtomicUsize,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            done: Default::default(),
        }
    }

    fn table_done(&self, u: &Unit, c: &Copied) {
        let n = self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        tracing::info!(
            "backed up {} ({} rows, {} bytes) ({n} of {})",
            u.info.name.quoted(),
            c.rows,
            c.plain,
            self.total
        );
    }
}

/// One copying connection: imports the snapshot and takes tables from
/// the queue.
#[allow(clippy::too_many_arguments)]
async fn worker(
    w: usize,
    params: &ConnParams,
    snapshot_id: &str,
    repo: &Repo,
    ts: &Timestamp,
    units: &[Unit],
    queue: &Mutex<VecDeque<usize>>,
    queue_len: usize,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<()> {
    let mut conn = PgConn::connect(params, Replication::Off)
        .await
        .context(format!("connecting backup worker {w}"))?;
    conn.run(
        "setting up a backup worker",
        &format!(
            "SET application_name = 'cbdr gpbackup worker {w}'; SET statement_timeout = 0; \
             SET idle_in_transaction_session_timeout = 0; SET client_encoding = 'UTF8'; \
             BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
             SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot_id)
        ),
    )
    .await?;
    loop {
        let next = queue.lock().expect("queue lock").pop_front();
        let Some(i) = next else { break };
        let u = &units[i];
        // The lock lives in a savepoint: rolled back once the table is
        // copied, it is released at once.
        let lock = format!(
            "SAVEPOINT w; LOCK TABLE {} IN ACCESS SHARE MODE NOWAIT",
            u.info.name.quoted()
        );
        match conn.simple_query(&lock).await {
            Ok(_) => {}
            Err(e) if e.code() == Some("55P03") => {
                conn.run("recovering from a lock conflict", "ROLLBACK TO SAVEPOINT w")
                    .await?;
                let _ = events.send(Event::Deferred(i));
                continue;
            }
            Err(e) => {
                return Err(Error::postgres(
                    format!("locking {}", u.info.name.quoted()),
                    e,
                ))
            }
        }
        let _ = events.send(Event::Started(i));
        let c = copy_one(repo, &mut conn, ts, u, queue_len, None).await?;
        conn.run(
            "releasing a table lock",
            "ROLLBACK TO SAVEPOINT w; RELEASE SAVEPOINT w",
        )
        .await?;
        let _ = events.send(Event::Finished(i, c));
    }
    conn.run("ending a backup worker's transaction", "COMMIT")
        .await?;
    conn.close().await;
    Ok(())
}

/// The properties of the database backed up, as its record keeps them.
struct DatabaseProps {
    name: String,
    encoding: String,
    collate: String,
    ctype: String,
    server_version: String,
    size: u64,
    flavor: metadata::ServerFlavor,
}

impl DatabaseProps {
    fn read(r: &Row) -> Result<DatabaseProps> {
        let what = "reading the database's properties";
        let text = |c: &str| r.get_str(c).map(str::to_string).context(what);
        Ok(DatabaseProps {
            name: text("datname")?,
            encoding: text("encoding")?,
            collate: text("datcollate")?,
            ctype: text("datctype")?,
            server_version: text("server_version")?,
            size: r.parse("size").context(what)?,
            flavor: metadata::ServerFlavor::default(),
        })
    }
}

/// A failed backup still leaves its report (the backup itself is never
/// listed: it has no record).
async fn write_failure_report(
    repo: &Repo,
    req: &BackupRequest,
    ts: &Timestamp,
    db: &DatabaseProps,
    start_time: chrono::DateTime<Utc>,
    e: &Error,
) {
    let record = LogicalBackupRecord {
        format: RECORD_FORMAT,
        timestamp: ts.to_string(),
        database: db.name.clone(),
        database_encoding: db.encoding.clone(),
        database_collate: db.collate.clone(),
        database_ctype: db.ctype.clone(),
        server_version: db.server_version.clone(),
        server_version_num: 0,
        server_flavor: db.flavor,
        cbdr_version: env!("CARGO_PKG_VERSION").to_string(),
        start_time,
        end_time: Utc::now(),
        options: options_record(req, repo),
        incremental_of: None,
        metadata: None,
        toc: None,
        statistics: None,
        report: None,
        tables: vec![],
        large_objects: None,
        object_counts: Default::default(),
        skipped_objects: Vec::new(),
        server_signals: None,
        segment_count: 0,
        encrypted: repo.codec.key.is_some(),
    };
    let text = report::backup_report(
        &record,
        &BackupOutcome {
            error: Some(&e.to_string()),
            database_size: None,
            chain: vec![],
            full_copy_reason: None,
        },
    );
    if let Err(err) = repo
        .put_bytes(&layout::report_key(ts), text.into_bytes())
        .await
    {
        tracing::warn!("could not store the failure report: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backups_racing_for_a_second_get_different_timestamps() {
        use crate::codec::{Codec, Compression};
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(crate::storage::FsStorage::new(dir.path()).unwrap());
        let repo = Repo::new(storage, Codec::new(Compression::Lz4, None, None));
        let picks = futures_util::future::join_all((0..3).map(|_| pick_timestamp(&repo))).await;
        let mut got: Vec<String> = picks.into_iter().map(|t| t.unwrap().to_string()).collect();
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 3, "{got:?}");
    }
}
