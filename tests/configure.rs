//! `cbdr configure backup` on a coordinator and 3 segments that do not
//! archive yet: a dry run changes nothing; a run with one segment down
//! configures the others and names it; a run once it is back configures it
//! only; after the restarts it names, a WAL switch on every instance reaches
//! the repository; and a last run changes nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::{ClusterOpts, TestCluster};
use common::pg::PgServer;

fn off() -> ClusterOpts {
    ClusterOpts {
        conf: vec!["archive_mode = off".into(), "archive_command = ''".into()],
        ..ClusterOpts::default()
    }
}

fn auto_conf_mentions_archive(s: &PgServer) -> bool {
    std::fs::read_to_string(s.data_dir().join("postgresql.auto.conf"))
        .unwrap_or_default()
        .contains("archive")
}

/// Switches WAL on `s` and waits until that segment is in the repository.
fn switch_reaches_the_repository(repo: &Path, content_id: i32, s: &PgServer) {
    s.psql(
        "create table if not exists configure_probe(); insert into configure_probe default values",
    );
    let name = s.psql("select pg_walfile_name(pg_switch_wal())");
    let obj = repo
        .join(format!("seg{content_id}"))
        .join("wal")
        .join(&name[..16])
        .join(&name);
    common::wait_for(
        &format!("{name} of content id {content_id} to reach the repository"),
        Duration::from_secs(30),
        || {
            if obj.exists() {
                Ok(())
            } else {
                Err(format!(
                    "{} missing; server log:\n{}",
                    obj.display(),
                    s.log_tail()
                ))
            }
        },
    );
}

#[test]
fn configure_backup_makes_every_instance_archive() {
    let mut c = TestCluster::start_opts("cbdr-configure", 3, None, off());
    let repo = c.path("repo");

    let (code, out, err) = c.cbdr(&["configure", "backup", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.matches("would set archive_mode = \"on\"").count(),
        4,
        "{out}"
    );
    assert_eq!(out.matches("would set archive_command").count(), 4, "{out}");
    assert!(out.contains("--content-id 2"), "{out}");
    assert!(
        out.contains("4 of 4 instances would then need a restart"),
        "{out}"
    );
    for s in &c.servers {
        assert_eq!(s.psql("show archive_mode"), "off");
        assert!(!auto_conf_mentions_archive(s), "a dry run writes nothing");
    }

    // Segment 1 down: the others are configured, it is named.
    c.servers[2].stop();
    let (code, out, err) = c.cbdr(&["configure", "backup"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("1 of 4 instances were not configured"),
        "{err}"
    );
    assert!(err.contains("segment 1"), "{err}");
    assert!(out.contains("NOT CONFIGURED"), "{out}");
    for i in [0, 1, 3] {
        let s = &c.servers[i];
        // (archive_command shows "(disabled)" until archive_mode is on.)
        let auto = std::fs::read_to_string(s.data_dir().join("postgresql.auto.conf")).unwrap();
        assert!(
            auto.contains(&format!("wal-push %p --content-id {}'", i as i32 - 1))
                && auto.contains("archive_mode = 'on'"),
            "instance {i}: {auto}"
        );
    }
    assert!(!auto_conf_mentions_archive(&c.servers[2]));

    // Back: only it changes.
    c.servers[2].start();
    let (code, out, err) = c.cbdr(&["configure", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("nothing to change").count(), 3, "{out}");
    assert_eq!(out.matches("set archive_mode = \"on\"").count(), 1, "{out}");
    assert!(
        out.contains("4 of 4 instances need a restart"),
        "archive_mode waits for restarts everywhere: {out}"
    );
    assert!(out.contains("pg_ctl restart -D"), "{out}");

    for s in &mut c.servers {
        s.restart();
    }
    for (i, s) in c.servers.iter().enumerate() {
        assert_eq!(s.psql("show archive_mode"), "on");
        assert!(
            s.psql("show archive_command")
                .ends_with(&format!("--content-id {}", i as i32 - 1)),
            "instance {i}"
        );
        switch_reaches_the_repository(&repo, i as i32 - 1, s);
    }

    let (code, out, err) = c.cbdr(&["configure", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("nothing to change").count(), 4, "{out}");
    assert!(
        out.contains("every instance runs with what cbdr needs"),
        "{out}"
    );
    assert!(!out.contains("restart"), "{out}");
}
