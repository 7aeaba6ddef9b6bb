//! `configure backup`: the settings cbdr needs on every instance, computed
//! from what the instance has, applied with `ALTER SYSTEM` over its own
//! connection and reloaded; the instances that still need a restart are
//! named.
//!
//! What an instance "has" is what it will run with after a restart: the
//! last value the configuration files give (`pg_file_settings`, which holds
//! `postgresql.auto.conf` too), else the running value. A second run then
//! changes nothing, and a setting already changed but waiting for a restart
//! is reported as such, not changed again. (A file entry waiting for a
//! restart carries the error "setting could not be applied": it counts.)

use std::collections::BTreeMap;

use futures_util::future::join_all;

use super::topology::{Segment, COORDINATOR};
use crate::error::{Error, PgResultExt, Result};
use crate::pg::conn::{ConnParams, PgConn, Replication};
use crate::pg::quote::quote_literal;

/// The settings `configure backup` manages.
pub const MANAGED: &[&str] = &[
    "archive_mode",
    "archive_command",
    "wal_level",
    "max_wal_senders",
];

/// What cbdr needs of one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// Exactly this value.
    Exactly(String),
    /// `replica` or `logical` (anything but `minimal`).
    NotMinimal,
    /// A number at least this large (else this value).
    AtLeast(i64),
}

impl Want {
    /// The value to set when `has` does not do, `None` when it does.
    pub fn change(&self, has: &str) -> Option<String> {
        match self {
            Want::Exactly(v) => (has != v).then(|| v.clone()),
            Want::NotMinimal => (has == "minimal").then(|| "replica".to_string()),
            Want::AtLeast(n) => match has.parse::<i64>() {
                Ok(h) if h >= *n => None,
                _ => Some(n.to_string()),
            },
        }
    }
}

/// The settings an instance needs: archiving through this cbdr, with this
/// config, under its content id (left out for a single server).
pub fn wanted(archive_command: &str) -> Vec<(&'static str, Want)> {
    vec![
        ("archive_mode", Want::Exactly("on".into())),
        (
            "archive_command",
            Want::Exactly(archive_command.to_string()),
        ),
        ("wal_level", Want::NotMinimal),
        // backup-push and wal-receive each use a WAL sender.
        ("max_wal_senders", Want::AtLeast(4)),
    ]
}

/// `archive_command` for an instance: `cbdr --config CONFIG wal-push %p
/// [--content-id N]`, paths quoted for the shell PostgreSQL runs it with.
pub fn archive_command(cbdr: &str, config: &str, content_id: Option<i32>) -> String {
    let mut cmd = format!(
        "{} --config {} wal-push %p",
        shell_word(cbdr),
        shell_word(config)
    );
    if let Some(id) = content_id {
        cmd.push_str(&format!(" --content-id {id}"));
    }
    cmd
}

/// A word for `sh -c`: as is when it is made of safe characters, else in
/// single quotes (`%` doubled, as archive_command reads `%%` as `%`).
fn shell_word(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=,".contains(&b));
    let quoted = if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    };
    quoted.replace('%', "%%")
}

/// One setting of one instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub name: String,
    /// What the instance runs with now.
    pub running: String,
    /// What it will run with after a restart, before this change.
    pub configured: String,
    /// The value set, `None` when the configured value already does.
    pub set_to: Option<String>,
    /// Whether the new or configured value takes a restart to apply.
    pub restart: bool,
}

/// A setting as the instance reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub running: String,
    /// The value the files give (after a restart), when they give one.
    pub in_files: Option<String>,
    /// `postmaster` context: a change takes a restart.
    pub postmaster: bool,
}

/// The changes an instance needs, from what it reports.
pub fn plan(current: &BTreeMap<String, Current>, wanted: &[(&'static str, Want)]) -> Vec<Change> {
    wanted
        .iter()
        .map(|(name, want)| {
            let cur = current.get(*name).cloned().unwrap_or(Current {
                running: String::new(),
                in_files: None,
                postmaster: false,
            });
            let configured = cur.in_files.clone().unwrap_or_else(|| cur.running.clone());
            let set_to = want.change(&configured);
            let will_run = set_to.clone().unwrap_or_else(|| configured.clone());
            Change {
                name: name.to_string(),
                restart: cur.postmaster && will_run != cur.running,
                running: cur.running,
                configured,
                set_to,
            }
        })
        .collect()
}

/// What `configure backup` did (or, with `dry_run`, would do) on one instance.
#[derive(Debug, serde::Serialize)]
pub struct InstanceReport {
    pub content_id: i32,
    pub instance: String,
    pub data_dir: String,
    pub changes: Vec<Change>,
    /// Why the instance could not be configured.
    pub error: Option<String>,
}

impl InstanceReport {
    pub fn changed(&self) -> bool {
        self.changes.iter().any(|c| c.set_to.is_some())
    }
    pub fn needs_restart(&self) -> bool {
        self.changes.iter().any(|c| c.restart)
    }
}

/// An instance to configure: where it is and the archive_command it gets.
#[derive(Debug, Clone)]
pub struct Target {
    pub segment: Segment,
    pub params: ConnParams,
    pub archive_command: String,
}

/// Configures every instance at once; an instance that fails is reported
/// with its error and does not stop the others.
pub async fn configure(targets: &[Target], dry_run: bool) -> Vec<InstanceReport> {
    join_all(targets.iter().map(|t| async move {
        let instance = if t.segment.content_id == COORDINATOR {
            format!("coordinator ({}:{})", t.segment.host, t.segment.port)
        } else {
            format!(
                "segment {} ({}:{})",
                t.segment.content_id, t.segment.host, t.segment.port
            )
        };
        let mut report = InstanceReport {
            content_id: t.segment.content_id,
            instance,
            data_dir: t.segment.data_dir.display().to_string(),
            changes: Vec::new(),
            error: None,
        };
        if let Err(e) = configure_one(t, dry_run, &mut report).await {
            report.error = Some(e.to_string());
        }
        report
    }))
    .await
}

async fn configure_one(t: &Target, dry_run: bool, report: &mut InstanceReport) -> Result<()> {
    let mut conn = PgConn::connect(&t.params, Replication::Off)
        .await
        .context("connecting")?;
    let current = read_current(&mut conn).await?;
    let dir = conn
        .query_one("select current_setting('data_directory') as d")
        .await
        .context("reading data_directory")?;
    report.data_dir = dir
        .get_str("d")
        .context("reading data_directory")?
        .to_string();
    report.changes = plan(&current, &wanted(&t.archive_command));
    if !dry_run && report.changed() {
        for c in &report.changes {
            if let Some(v) = &c.set_to {
                conn.simple_query(&format!("alter system set {} = {}", c.name, quote_literal(v)))
                    .await
                    .with_context(|| {
                        format!(
                            "ALTER SYSTEM SET {} (configure needs a superuser, or a role granted ALTER SYSTEM on it)",
                            c.name
                        )
                    })?;
            }
        }
        conn.simple_query("select pg_reload_conf()")
            .await
            .context("reloading the configuration")?;
    }
    conn.close().await;
    Ok(())
}

async fn read_current(conn: &mut PgConn) -> Result<BTreeMap<String, Current>> {
    let names = MANAGED
        .iter()
        .map(|n| quote_literal(n))
        .collect::<Vec<_>>()
        .join(", ");
    let what = "reading the settings (pg_settings, pg_file_settings: configure needs a superuser)";
    let rows = conn
        .simple_query(&format!(
            "select s.name, s.setting, s.context, f.setting as in_files from pg_settings s left join lateral (select setting from pg_file_settings f where f.name = s.name and (f.error is null or f.error = 'setting could not be applied') order by f.seqno desc limit 1) f on true where s.name in ({names})"
        ))
        .await
        .context(what)?;
    let mut out = BTreeMap::new();
    for r in &rows {
        out.insert(
            r.get_str("name").context(what)?.to_string(),
            Current {
                running: r.get_str("setting").context(what)?.to_string(),
                in_files: r.get_opt("in_files").context(what)?.map(str::to_string),
                postmaster: r.get_str("context").context(what)? == "postmaster",
            },
        );
    }
    Ok(out)
}

/// What one agent's host received (`configure backup` distributes the
/// config and the secret files it names).
#[derive(Debug, serde::Serialize)]
pub struct Distribution {
    pub agent: String,
    /// (path, whether it changed).
    pub written: Vec<(String, bool)>,
    pub error: Option<String>,
}

/// Sends `files` (path on the hosts, contents) to every agent, in
/// parallel, over its authenticated connection: sealed with the session
/// key derived from the token (or inside mutual TLS), written with mode
/// 0600, unchanged files left alone.
pub async fn distribute(
    agents: &[String],
    config: &crate::config::AgentConfig,
    files: &[(String, Vec<u8>)],
    timeout: std::time::Duration,
) -> Vec<Distribution> {
    join_all(agents.iter().map(|a| async move {
        let sent = async {
            let client = super::client::AgentClient::connect(a, config, timeout).await?;
            client.write_files(files).await
        }
        .await;
        match sent {
            Ok(done) => Distribution {
                agent: a.clone(),
                written: done
                    .written
                    .into_iter()
                    .map(|w| (w.path, w.changed))
                    .collect(),
                error: None,
            },
            Err(e) => Distribution {
                agent: a.clone(),
                written: Vec::new(),
                error: Some(e.to_string()),
            },
        }
    }))
    .await
}

/// Restarts, through their agents and in parallel, the instances whose
/// report says they need it; returns (instance, outcome).
pub async fn restart(
    reports: &[InstanceReport],
    segments: &[Segment],
    config: &crate::config::AgentConfig,
    timeout: std::time::Duration,
) -> Vec<(String, Result<String>)> {
    let wanted: Vec<(&InstanceReport, &Segment)> = reports
        .iter()
        .filter(|r| r.needs_restart() && r.error.is_none())
        .filter_map(|r| {
            segments
                .iter()
                .find(|s| s.content_id == r.content_id)
                .map(|s| (r, s))
        })
        .collect();
    join_all(wanted.into_iter().map(|(r, seg)| async move {
        let done = async {
            let client = super::client::AgentClient::connect(
                &seg.agent,
                config,
                std::time::Duration::from_secs(15),
            )
            .await?;
            client
                .restart(
                    super::proto::RestartRequest {
                        content_id: seg.content_id,
                        data_dir: r.data_dir.clone(),
                        timeout_secs: timeout.as_secs(),
                    },
                    timeout + std::time::Duration::from_secs(30),
                )
                .await
        }
        .await;
        (r.instance.clone(), done)
    }))
    .await
}

/// The error of a run where some instances failed, naming each.
pub fn failures(reports: &[InstanceReport]) -> Option<Error> {
    let failed: Vec<String> = reports
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.instance)))
        .collect();
    if failed.is_empty() {
        return None;
    }
    Some(Error::Server(format!(
        "{} of {} instances were not configured (the others were): {}; fix them and run `cbdr configure backup` again (it changes only what is missing)",
        failed.len(),
        reports.len(),
        failed.join("; ")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cur(running: &str, in_files: Option<&str>, postmaster: bool) -> Current {
        Current {
            running: running.into(),
            in_files: in_files.map(str::to_string),
            postmaster,
        }
    }

    #[test]
    fn wants() {
        assert_eq!(Want::Exactly("on".into()).change("off"), Some("on".into()));
        assert_eq!(Want::Exactly("on".into()).change("on"), None);
        assert_eq!(Want::NotMinimal.change("minimal"), Some("replica".into()));
        assert_eq!(Want::NotMinimal.change("logical"), None);
        assert_eq!(Want::AtLeast(4).change("0"), Some("4".into()));
        assert_eq!(Want::AtLeast(4).change("10"), None);
        assert_eq!(Want::AtLeast(4).change("x"), Some("4".into()));
    }

    #[test]
    fn archive_commands_quote_what_the_shell_would_split() {
        assert_eq!(
            archive_command("/usr/bin/cbdr", "/etc/cbdr/cbdr.toml", Some(2)),
            "/usr/bin/cbdr --config /etc/cbdr/cbdr.toml wal-push %p --content-id 2"
        );
        assert_eq!(
            archive_command("/opt/my cbdr/cbdr", "/etc/it's.toml", None),
            r"'/opt/my cbdr/cbdr' --config '/etc/it'\''s.toml' wal-push %p"
        );
        assert_eq!(
            archive_command("/x/100%/cbdr", "/c", None),
            "'/x/100%%/cbdr' --config /c wal-push %p"
        );
    }

    #[test]
    fn plans_compare_what_the_server_will_run_with() {
        let w = wanted("cbdr wal-push %p");
        let mut current = BTreeMap::new();
        current.insert("archive_mode".into(), cur("off", None, true));
        current.insert("archive_command".into(), cur("", None, false));
        current.insert("wal_level".into(), cur("replica", None, true));
        current.insert("max_wal_senders".into(), cur("10", None, true));
        let p = plan(&current, &w);
        let by = |n: &str| p.iter().find(|c| c.name == n).unwrap().clone();
        assert_eq!(by("archive_mode").set_to.as_deref(), Some("on"));
        assert!(by("archive_mode").restart);
        assert_eq!(
            by("archive_command").set_to.as_deref(),
            Some("cbdr wal-push %p")
        );
        assert!(
            !by("archive_command").restart,
            "archive_command is reloadable"
        );
        assert_eq!(by("wal_level").set_to, None);
        assert_eq!(by("max_wal_senders").set_to, None);

        // Set by an earlier run, waiting for a restart: not set again, but
        // the restart is still reported.
        current.insert("archive_mode".into(), cur("off", Some("on"), true));
        current.insert(
            "archive_command".into(),
            cur("cbdr wal-push %p", Some("cbdr wal-push %p"), false),
        );
        let p = plan(&current, &w);
        assert!(p.iter().all(|c| c.set_to.is_none()), "{p:?}");
        assert!(p.iter().any(|c| c.name == "archive_mode" && c.restart));

        // After the restart: nothing to do.
        current.insert("archive_mode".into(), cur("on", Some("on"), true));
        let p = plan(&current, &w);
        assert!(p.iter().all(|c| c.set_to.is_none() && !c.restart), "{p:?}");
    }

    #[test]
    fn failures_name_each_instance() {
        let r = |id: i32, e: Option<&str>| InstanceReport {
            content_id: id,
            instance: format!("segment {id}"),
            data_dir: String::new(),
            changes: vec![],
            error: e.map(str::to_string),
        };
        assert!(failures(&[r(0, None)]).is_none());
        let e = failures(&[r(0, None), r(1, Some("connection refused"))]).unwrap();
        assert!(e.to_string().contains("1 of 2 instances"), "{e}");
        assert!(
            e.to_string().contains("segment 1: connection refused"),
            "{e}"
        );
    }
}
