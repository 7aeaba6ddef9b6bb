//! gprestore's data section: which tables load how (whole, split across
//! connections, binary through a conversion), and the loads with the
//! post-data steps they unlock.

#[allow(unused_imports)]
use super::*;

/// A table whose rows this restore loads.
#[derive(Debug, Clone)]
pub(super) struct Load {
    pub(super) data: TableData,
    pub(super) target: QualifiedName,
    /// Binary rows for a table whose column types differ from the backup's.
    pub(super) convert: Option<Conversion>,
}

/// The tables whose rows to load: those the filter takes (a leaf
/// partition with its root), only this backup's own with --incremental.
pub(super) fn choose_loads(
    req: &RestoreRequest,
    b: &LogicalBackupRecord,
    entries: &[TocEntry],
) -> Vec<Load> {
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

/// How the loads treat their tables.
#[derive(Debug, Clone, Copy)]
pub(super) struct LoadMode {
    /// `--truncate-table` (or an incremental restore): empty each table in
    /// its load's transaction.
    pub(super) truncate: bool,
    /// The restore created the tables (they are empty).
    pub(super) created: bool,
    pub(super) wal_minimal: bool,
}

/// The table to load through every connection first, if any: the biggest,
/// when it holds more than its share of the data (one connection would
/// still load it when the others are done). Others are loaded whole, each
/// in the transaction that truncates it, so its rows are written frozen.
/// Not with wal_level = minimal, where the whole-table load skips the WAL.
pub(super) fn split_choice(sizes: &[u64], jobs: usize, how: LoadMode) -> Option<usize> {
    if jobs < 2 || (how.wal_minimal && how.created) {
        return None;
    }
    let total: u64 = sizes.iter().sum();
    let (i, &bytes) = sizes.iter().enumerate().max_by_key(|(_, &b)| b)?;
    (bytes >= SPLIT_MIN && bytes.saturating_mul(jobs as u64) > total).then_some(i)
}

/// What one connection did.
pub(super) enum Outcome {
    Load(usize, Result<u64>),
    Post(usize, std::result::Result<(), PgError>),
}

/// Loads the tables and replays the post-data entries on the pool's
/// connections, as [`super::super::schedule::Schedule`] orders them: an index of a
/// loaded table is built while other tables still load.
pub(super) async fn load_and_post(
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
pub(super) fn count_load(
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
pub(super) fn truncate_sql(name: &str, relkind: &str) -> String {
    if relkind == "p" {
        format!("TRUNCATE {name}")
    } else {
        format!("TRUNCATE ONLY {name}")
    }
}

/// `COPY name (columns) FROM STDIN`, in the table's stored format.
pub(super) fn copy_in_sql(name: &str, data: &TableData, freeze: bool) -> String {
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
    if data.columns.is_empty() {
        // A table with no columns (its rows are empty lines).
        return format!("COPY {name} FROM STDIN{with}");
    }
    format!("COPY {name} ({}) FROM STDIN{with}", data.columns.join(", "))
}

/// Binary rows may go straight into a table only if its columns have the
/// backup's types (a data-only restore into a changed schema may differ):
/// the others are converted ([`Conversion`]). One catalog query for all.
pub(super) async fn plan_binary_loads(conn: &mut PgConn, loads: &mut [Load]) -> Result<()> {
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
pub(super) async fn load_split(
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
pub(super) async fn load_one(
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
