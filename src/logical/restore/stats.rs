//! gprestore's statistics: ANALYZE, or the backup's statistics applied.

#[allow(unused_imports)]
use super::*;

/// `--run-analyze`: ANALYZE each restored table (and the roots of
/// restored partitions), in parallel.
pub(super) async fn analyze(
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
pub(super) async fn apply_stats(
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
