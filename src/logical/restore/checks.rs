//! gprestore's checks before it touches the database: the request against
//! the backup, every object it will read present, the filter and the
//! redirect schema, the target relations.

#[allow(unused_imports)]
use super::*;

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

/// A backup object that is gone although the backup's record lists it:
/// the backup is damaged (exit 4), not merely "not found".
pub(super) fn damaged(b: &LogicalBackupRecord, e: Error) -> Error {
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
pub(super) async fn check_objects(
    repo: &Repo,
    req: &RestoreRequest,
    b: &LogicalBackupRecord,
) -> Result<()> {
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
    let large_objects = b
        .large_objects
        .iter()
        .filter(|_| restore_data && !req.filter.has_includes())
        .map(|l| l.location.key());
    let keys: BTreeSet<&str> = [&b.metadata, &b.toc]
        .into_iter()
        .flatten()
        .map(|o| o.key.as_str())
        .chain(tables)
        .chain(large_objects)
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

/// gprestore's checks that the include lists name what the backup holds.
pub(super) fn validate_filter_in_backup(
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

pub(super) async fn validate_redirect_schema(conn: &mut PgConn, schema: &str) -> Result<()> {
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

/// gprestore's ValidateRelationsInRestoreDatabase: relations a restore
/// creates must not exist; tables a data-only restore fills must.
pub(super) async fn check_relations(
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
