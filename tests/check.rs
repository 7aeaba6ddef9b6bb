//! `cbdr check` (issue 16 item 7) on a cluster of a coordinator and 3
//! segment PostgreSQL 15 servers, each checked by its own `cbdr agent`:
//! healthy, every instance passes and the command exits 0; with one
//! segment's archive_command broken, that segment (and only it) is named
//! with the fix, exit 6 (also with `--content-id` naming it); with an agent
//! down, its instance is named, exit 7.
//! The same cluster backs up and `cbdr verify` checks the cluster backup:
//! every instance's backup and WAL.

mod common;

use std::time::Duration;

use common::cluster::TestCluster;

fn lines_with<'a>(out: &'a str, prefix: &str) -> Vec<&'a str> {
    out.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn check_and_verify_a_cluster() {
    let mut c = TestCluster::start("cbdr-check", 3, None);
    c.start_agents();

    // Healthy: one ok line per instance, exit 0.
    let out = c.ok(&["check", "--wal-timeout", "60"]);
    eprintln!("{out}");
    let ok = lines_with(&out, "ok    content ");
    assert_eq!(ok.len(), 4, "{out}");
    for id in ["-1", "0", "1", "2"] {
        assert!(
            ok.iter()
                .any(|l| l.starts_with(&format!("ok    content {id} "))
                    && l.contains("reached the archive")),
            "content {id}: {out}"
        );
    }
    let report: serde_json::Value = serde_json::from_str(&c.ok(&["check", "--json"])).unwrap();
    let instances = report.as_array().unwrap();
    assert_eq!(instances.len(), 4);
    for i in instances {
        let items = i["items"].as_array().unwrap();
        assert!(items.len() >= 10, "{i}");
        assert!(items.iter().all(|it| it["ok"] == true), "{i}");
    }

    // A cluster backup, verified as a whole.
    let out = c.ok(&["backup-push"]);
    let backup = out
        .split_whitespace()
        .nth(2)
        .expect("backup name")
        .to_string();
    let r: serde_json::Value =
        serde_json::from_str(&c.ok(&["verify", "--json", "--backup", &backup])).unwrap();
    assert_eq!(r["faults"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(r["cluster_backups"][0], backup.as_str(), "{r}");
    let backups = r["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 4, "{r}");
    assert!(
        backups.iter().all(|b| b["files"].as_u64().unwrap() > 100),
        "{r}"
    );
    assert_eq!(r["wal"].as_array().unwrap().len(), 4, "{r}");

    // Segment 1 (content 1) archives with /bin/false.
    let seg1 = &c.servers[common::cluster::index(1)];
    seg1.psql("alter system set archive_command = '/bin/false'");
    seg1.psql("select pg_reload_conf()");
    seg1.wait_until(
        |s| s.try_psql("show archive_command").as_deref() == Ok("/bin/false"),
        Duration::from_secs(30),
    );
    let (code, out, err) = c.cbdr(&["check", "--wal-timeout", "3"]);
    eprintln!("{out}{err}");
    assert_eq!(code, 6, "{out}\n{err}");
    let failed = lines_with(&out, "FAIL  ");
    assert!(
        failed.iter().all(|l| l.starts_with("FAIL  content 1 (")),
        "only content 1 fails: {out}"
    );
    assert!(
        failed.iter().any(|l| l.contains("archive_command")
            && l.contains("Fix: set archive_command = '")
            && l.contains("--content-id 1'")),
        "{out}"
    );
    assert!(
        failed
            .iter()
            .any(|l| l.contains("archiving:") && l.contains("did not reach the archive")),
        "{out}"
    );
    assert_eq!(lines_with(&out, "ok    content ").len(), 3, "{out}");
    assert!(
        err.contains("check failed on 1 of 4 instances (content 1"),
        "{err}"
    );
    // Narrowed to that instance (still through its agent), and to another.
    let (code, out, err) = c.cbdr(&["check", "--content-id", "1", "--wal-timeout", "2"]);
    assert_eq!(code, 6, "{out}\n{err}");
    assert!(
        lines_with(&out, "FAIL  ").len() >= 2 && lines_with(&out, "ok    ").is_empty(),
        "{out}"
    );
    assert!(
        err.contains("check failed on 1 of 1 instances (content 1"),
        "{err}"
    );
    let out = c.ok(&["check", "--content-id", "2"]);
    assert_eq!(lines_with(&out, "ok    content 2 (").len(), 1, "{out}");
    seg1.psql("alter system reset archive_command");
    seg1.psql("select pg_reload_conf()");

    // The agent of content 2 down: its instance is named, the others pass.
    c.kill_agent(common::cluster::index(2));
    let (code, out, err) = c.cbdr(&["check", "--wal-timeout", "30"]);
    eprintln!("{out}{err}");
    assert_eq!(code, 7, "{out}\n{err}");
    let failed = lines_with(&out, "FAIL  ");
    assert_eq!(failed.len(), 1, "{out}");
    assert!(
        failed[0].starts_with("FAIL  content 2 (")
            && failed[0].contains("agent: ")
            && failed[0].contains("cbdr agent"),
        "{out}"
    );
    assert_eq!(lines_with(&out, "ok    content ").len(), 3, "{out}");
}
