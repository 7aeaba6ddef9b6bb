//! `check` on one instance: that archiving and backups will work, before a
//! backup fails. The repository (its storage and key, through a probe
//! object put, read back and deleted, and a stored object decoded), the
//! server's archiving settings, a replication connection, and a WAL switch
//! whose segment must reach the archive within a timeout. Every check is
//! one [`CheckItem`] with what was found and, when it failed, the fix;
//! nothing here prints.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, ExitCode, PgResultExt};
use crate::pg::conn::{ConnParams, PgConn, Replication};
use crate::pg::settings::{archive_settings, last_archive_failure, switch_wal_segment};
use crate::pg::WalFile;
use crate::repo::{layout, Repo};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckItem {
    /// "repository", "storage", "key", "connection", "archive_mode",
    /// "archive_command", "wal_level", "max_wal_senders", "replication",
    /// "archiving".
    pub check: String,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The exit code this failure gives `cbdr check` (0 when ok).
    #[serde(default)]
    pub exit_code: u8,
}

/// The checks of one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceCheck {
    pub content_id: i32,
    /// `host:port` of the server.
    pub instance: String,
    pub items: Vec<CheckItem>,
}

impl InstanceCheck {
    pub fn ok(&self) -> bool {
        self.items.iter().all(|i| i.ok)
    }

    pub fn failures(&self) -> impl Iterator<Item = &CheckItem> {
        self.items.iter().filter(|i| !i.ok)
    }

    /// One failed item standing for the whole instance (its agent could
    /// not be reached, say).
    pub fn failed(content_id: i32, instance: String, check: &str, e: &Error, fix: &str) -> Self {
        InstanceCheck {
            content_id,
            instance,
            items: vec![fail(check, e.to_string(), fix, e.exit_code())],
        }
    }
}

fn pass(check: &str, detail: impl Into<String>) -> CheckItem {
    CheckItem {
        check: check.into(),
        ok: true,
        detail: detail.into(),
        fix: None,
        exit_code: 0,
    }
}

fn fail(
    check: &str,
    detail: impl Into<String>,
    fix: impl Into<String>,
    code: ExitCode,
) -> CheckItem {
    let fix: String = fix.into();
    CheckItem {
        check: check.into(),
        ok: false,
        detail: detail.into(),
        fix: (!fix.is_empty()).then_some(fix),
        exit_code: code as u8,
    }
}

#[derive(Debug, Clone)]
pub struct CheckOptions {
    pub content_id: i32,
    pub conn: ConnParams,
    /// How long the switched segment may take to reach the archive.
    pub wal_timeout: Duration,
}

/// The archive_command this cbdr would have the server use (as
/// `cbdr configure backup` sets it: the content id always on a cluster's
/// instances, never on a single server).
pub fn expected_archive_command(config: &Config, content_id: i32) -> String {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "cbdr".into());
    let config_path = config
        .source
        .as_ref()
        .map(|src| std::fs::canonicalize(src).unwrap_or(src.clone()))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/etc/cbdr/cbdr.toml".into());
    let single =
        content_id == crate::cluster::topology::COORDINATOR && config.cluster.segments.is_empty();
    crate::cluster::configure::archive_command(&exe, &config_path, (!single).then_some(content_id))
}

/// Judges an archive_command: it must run `wal-push` on `%p` for this
/// content id. `Err` says what is wrong.
pub fn judge_archive_command(command: &str, content_id: i32) -> Result<(), String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    if command.trim().is_empty() || command.trim() == "(disabled)" {
        return Err("archive_command is empty: nothing is archived".into());
    }
    if !words.contains(&"wal-push") {
        return Err(format!(
            "archive_command {command:?} does not run `cbdr wal-push`"
        ));
    }
    if !words.contains(&"%p") {
        return Err(format!(
            "archive_command {command:?} does not pass %p (the file's path) to wal-push"
        ));
    }
    let mut given: Option<&str> = None;
    for (i, w) in words.iter().enumerate() {
        if let Some(v) = w.strip_prefix("--content-id=") {
            given = Some(v);
        } else if *w == "--content-id" {
            given = Some(words.get(i + 1).copied().unwrap_or(""));
        }
    }
    let given_id = match given {
        None => crate::cluster::topology::COORDINATOR,
        Some(v) => v.trim_matches(['\'', '"']).parse::<i32>().map_err(|_| {
            format!("archive_command {command:?} gives --content-id {v:?}, not a number")
        })?,
    };
    if given_id != content_id {
        return Err(format!(
            "archive_command {command:?} archives as content id {given_id}, but this instance is content id {content_id}: its WAL would land in another instance's archive"
        ));
    }
    Ok(())
}

/// Runs every check of one instance; never fails (a failure is an item).
pub async fn check_instance(config: &Config, opts: &CheckOptions) -> InstanceCheck {
    let id = opts.content_id;
    let mut items = Vec::new();
    let repo = match Repo::open(config).await {
        Ok(r) => {
            items.push(pass(
                "repository",
                format!(
                    "{} opened, the key is the repository's",
                    r.storage.location()
                ),
            ));
            Some(r)
        }
        Err(e) => {
            items.push(fail(
                "repository",
                e.to_string(),
                "fix [storage] and [encryption] in the config (the message says which)",
                e.exit_code(),
            ));
            None
        }
    };
    if let Some(repo) = &repo {
        items.push(storage_round_trip(repo, id).await);
        items.push(key_decodes(repo, id).await);
    }
    let instance = format!("{}:{}", opts.conn.host, opts.conn.port);
    let mut conn = match PgConn::connect(&opts.conn, Replication::Off).await {
        Ok(c) => {
            items.push(pass(
                "connection",
                format!("connected to {instance} as {}", opts.conn.user),
            ));
            c
        }
        Err(e) => {
            let e = Error::postgres(format!("connecting to {instance}"), e);
            items.push(fail(
                "connection",
                e.to_string(),
                "check that the server runs and the host, port and user (PGHOST, PGPORT, PGUSER, ~/.pgpass; for a cluster [[cluster.segments]] and [cluster] user)",
                e.exit_code(),
            ));
            return InstanceCheck {
                content_id: id,
                instance,
                items,
            };
        }
    };
    let settings = match archive_settings(&mut conn)
        .await
        .context("reading the archiving settings")
    {
        Ok(s) => Some(s),
        Err(e) => {
            items.push(fail("settings", e.to_string(), "", e.exit_code()));
            None
        }
    };
    let reload = "then SELECT pg_reload_conf()";
    let restart = "then restart the server";
    if let Some(s) = &settings {
        items.push(if s.archiving() {
            pass("archive_mode", s.archive_mode.clone())
        } else {
            fail(
                "archive_mode",
                format!("archive_mode is {}: the server archives no WAL", s.archive_mode),
                format!("set archive_mode = on in postgresql.conf, {restart} (or stream the WAL with `cbdr wal-receive` / the agent's --stream-wal)"),
                ExitCode::Postgres,
            )
        });
        let want = expected_archive_command(config, id);
        items.push(match judge_archive_command(&s.archive_command, id) {
            Ok(()) => pass("archive_command", s.archive_command.clone()),
            Err(why) => fail(
                "archive_command",
                why,
                format!(
                    "set archive_command = {}, {reload} (`cbdr configure backup` sets it on every instance)",
                    crate::pg::conf::quote_value(&want)
                ),
                ExitCode::Postgres,
            ),
        });
        items.push(if s.wal_level_enough() {
            pass("wal_level", s.wal_level.clone())
        } else {
            fail(
                "wal_level",
                format!(
                    "wal_level is {}: base backups and archive recovery need replica",
                    s.wal_level
                ),
                format!("set wal_level = replica in postgresql.conf, {restart}"),
                ExitCode::Postgres,
            )
        });
        items.push(if s.max_wal_senders >= 1 {
            pass("max_wal_senders", s.max_wal_senders.to_string())
        } else {
            fail(
                "max_wal_senders",
                "max_wal_senders is 0: no replication connection, so no base backup".to_string(),
                format!("set max_wal_senders = 10 in postgresql.conf, {restart}"),
                ExitCode::Postgres,
            )
        });
    }
    items.push(replication(&opts.conn, &instance).await);
    items.push(match (&repo, &settings) {
        (None, _) => fail(
            "archiving",
            "not tried: the repository cannot be opened",
            "fix the repository first (see above)",
            ExitCode::Usage,
        ),
        (_, None) => fail(
            "archiving",
            "not tried: the settings could not be read",
            "",
            ExitCode::Postgres,
        ),
        (_, Some(s)) if s.in_recovery => fail(
            "archiving",
            "not tried: the server is a standby (pg_switch_wal runs on the primary)",
            "run `cbdr check` against the primary",
            ExitCode::Usage,
        ),
        (_, Some(s)) if !s.archiving() => fail(
            "archiving",
            "not tried: archive_mode is off",
            "turn archive_mode on (see above)",
            ExitCode::Postgres,
        ),
        (Some(repo), Some(_)) => archiving(repo, &mut conn, id, opts.wal_timeout).await,
    });
    conn.close().await;
    InstanceCheck {
        content_id: id,
        instance,
        items,
    }
}

/// Puts a probe object, reads it back, deletes it.
async fn storage_round_trip(repo: &Repo, id: i32) -> CheckItem {
    let key = format!(
        "check/probe-{}-{}",
        layout::segment_prefix(id),
        hex::encode(crate::codec::random_bytes::<8>())
    );
    let body = format!("cbdr check probe {key}").into_bytes();
    let fix = "check the storage's permissions (put, get, list, delete on the bucket or directory) and its free space";
    let result: crate::error::Result<()> = async {
        repo.prepare_write().await?;
        repo.put_bytes(&key, body.clone()).await?;
        let back = repo.get_bytes(&key).await;
        repo.storage.delete(&key).await?;
        if back? != body {
            return Err(Error::Integrity(format!(
                "{key} read back differs from what was put"
            )));
        }
        if repo.exists(&key).await? {
            return Err(Error::Internal(format!(
                "{key} is still there after its delete"
            )));
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => pass(
            "storage",
            format!(
                "put, get and delete of {key} in {}",
                repo.storage.location()
            ),
        ),
        Err(e) => {
            // Best effort: no probe left behind.
            let _ = repo.storage.delete(&key).await;
            fail("storage", e.to_string(), fix, e.exit_code())
        }
    }
}

/// Decodes a stored object of this instance (a restore point or backup
/// record): the key reads what is already there.
async fn key_decodes(repo: &Repo, id: i32) -> CheckItem {
    let mut found = None;
    for prefix in [
        layout::restore_points_prefix(id),
        layout::backups_prefix(id),
    ] {
        match repo.storage.list(&prefix).await {
            Ok(objects) => {
                if let Some(o) = objects.into_iter().find(|o| o.key.ends_with(".json")) {
                    found = Some(o.key);
                    break;
                }
            }
            Err(e) => {
                let e: Error = e.into();
                return fail("key", e.to_string(), "", e.exit_code());
            }
        }
    }
    let Some(key) = found else {
        return pass(
            "key",
            "nothing of this instance is stored yet to decode (the probe was encoded and decoded with the key)",
        );
    };
    match repo.get_bytes(&key).await {
        Ok(_) => pass("key", format!("decoded {key}")),
        Err(e) => fail(
            "key",
            e.to_string(),
            "configure the key the repository's objects were written with ([encryption] key_file or CBDR_ENCRYPTION_KEY)",
            e.exit_code(),
        ),
    }
}

async fn replication(params: &ConnParams, instance: &str) -> CheckItem {
    let r = async {
        let mut c = PgConn::connect(params, Replication::Physical).await?;
        let id = crate::pg::replication::identify_system(&mut c).await;
        c.close().await;
        id
    }
    .await;
    match r {
        Ok(s) => pass(
            "replication",
            format!(
                "IDENTIFY_SYSTEM: system {}, timeline {}",
                s.system_id, s.timeline
            ),
        ),
        Err(e) => {
            let e = Error::postgres(format!("a replication connection to {instance}"), e);
            fail(
                "replication",
                e.to_string(),
                format!(
                    "give the role REPLICATION (ALTER ROLE {} REPLICATION) and allow it in pg_hba.conf (host replication {} <coordinator or agent address> scram-sha-256), then SELECT pg_reload_conf()",
                    params.user, params.user
                ),
                e.exit_code(),
            )
        }
    }
}

/// A WAL switch, then polls the archive for the completed segment.
async fn archiving(repo: &Repo, conn: &mut PgConn, id: i32, timeout: Duration) -> CheckItem {
    let segment = match switch_wal_segment(conn).await.context("switching the WAL (pg_switch_wal)") {
        Ok(s) => s,
        Err(e) => {
            return fail(
                "archiving",
                e.to_string(),
                "run `cbdr check` as a superuser, or GRANT EXECUTE ON FUNCTION pg_switch_wal() to the role",
                e.exit_code(),
            )
        }
    };
    let key = layout::wal_key(id, &WalFile::Segment(segment));
    let started = std::time::Instant::now();
    let deadline = started + timeout;
    loop {
        match repo.exists(&key).await {
            Ok(true) => {
                return pass(
                    "archiving",
                    format!(
                        "pg_switch_wal(): {segment} reached the archive in {:.1} s",
                        started.elapsed().as_secs_f64()
                    ),
                )
            }
            Ok(false) => {}
            Err(e) => {
                let e: Error = e.into();
                return fail("archiving", e.to_string(), "", e.exit_code());
            }
        }
        if std::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let archiver = match last_archive_failure(conn).await {
        Ok(Some(f)) => format!(" ({f})"),
        _ => String::new(),
    };
    fail(
        "archiving",
        format!(
            "pg_switch_wal(): {segment} did not reach the archive ({key}) within {} s{archiver}",
            timeout.as_secs()
        ),
        "fix archive_command (run it by hand as the server's OS user: it must exit 0 and store the file) and see the server log; the archiver retries the file by itself",
        ExitCode::Postgres,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_commands_are_judged_by_their_content_id() {
        let seg = "/usr/bin/cbdr --config /etc/cbdr/cbdr.toml wal-push %p --content-id 2";
        judge_archive_command(seg, 2).unwrap();
        judge_archive_command("cbdr wal-push %p --content-id=2", 2).unwrap();
        let e = judge_archive_command(seg, 1).unwrap_err();
        assert!(
            e.contains("content id 2") && e.contains("content id 1"),
            "{e}"
        );
        // The coordinator's (or a single server's): no --content-id, or -1.
        judge_archive_command("cbdr wal-push %p", -1).unwrap();
        judge_archive_command("cbdr wal-push %p --content-id -1", -1).unwrap();
        assert!(judge_archive_command("cbdr wal-push %p", 0).is_err());
        for bad in [
            "",
            "(disabled)",
            "/bin/true",
            "cp %p /mnt/wal/%f",
            "cbdr wal-push",
        ] {
            assert!(judge_archive_command(bad, -1).is_err(), "{bad:?}");
        }
        assert!(judge_archive_command("cbdr wal-push %p --content-id x", 0)
            .unwrap_err()
            .contains("not a number"));
    }

    #[test]
    fn the_expected_command_names_the_content_id() {
        let c = Config::parse("").unwrap();
        assert!(expected_archive_command(&c, 3).ends_with(" wal-push %p --content-id 3"));
        assert!(expected_archive_command(&c, -1).ends_with(" wal-push %p"));
        // What it suggests, it accepts.
        judge_archive_command(&expected_archive_command(&c, 3), 3).unwrap();
        judge_archive_command(&expected_archive_command(&c, -1), -1).unwrap();
    }
}
