//! `cbdr configure backup` on a coordinator and 3 segments that do not
//! archive yet: a dry run changes nothing; a run with one segment down
//! configures the others and names it; a run once it is back configures it
//! only, sends the config (and the secret files it names) to every agent
//! sealed with the session key, restarts the instances through their agents
//! and ends with `cbdr check`; a WAL switch on every instance then reaches
//! the repository through the distributed config; and a last run changes
//! nothing. No secret appears in any output or agent log.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::{ClusterOpts, TestCluster, AGENT_TOKEN, KEY_HEX};
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
    c.start_agents();
    // Where the instances' hosts keep the config (here all on one host,
    // beside the coordinator's own).
    let hosts_dir = c.path("hosts");
    std::fs::create_dir_all(&hosts_dir).unwrap();
    common::pg::chown_to_pg(&hosts_dir);
    let host_config = hosts_dir.join("cbdr.toml");
    let host_config = host_config.to_str().unwrap().to_string();
    let configure = |c: &TestCluster, extra: &[&str]| {
        let mut args = vec!["configure", "backup", "--config-path", &host_config];
        args.extend_from_slice(extra);
        c.cbdr(&args)
    };

    let (code, out, err) = configure(&c, &["--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("would send to 4 agents") && out.contains(&host_config),
        "{out}"
    );
    assert!(!Path::new(&host_config).exists(), "a dry run sends nothing");
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
    let (code, out, err) = configure(&c, &[]);
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

    // The config reached every agent's host: same bytes, mode 0600.
    use std::os::unix::fs::PermissionsExt;
    let sent = std::fs::read(&host_config).expect("the config reached the hosts");
    assert_eq!(sent, std::fs::read(&c.config).unwrap());
    assert_eq!(
        std::fs::metadata(&host_config)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // Back: only it changes; --restart restarts all four (archive_mode)
    // through their agents, and the run ends with a check that passes.
    c.servers[2].start();
    let (code, out, err) = configure(&c, &["--restart"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("nothing to change").count(), 3, "{out}");
    assert_eq!(out.matches("set archive_mode = \"on\"").count(), 1, "{out}");
    assert!(
        out.contains("4 of 4 instances need a restart: restarting them through their agents"),
        "{out}"
    );
    assert_eq!(out.matches(": restarted in").count(), 4, "{out}");
    assert!(out.contains("checking every instance"), "{out}");
    assert_eq!(out.matches("ok    content").count(), 4, "{out}");
    for (i, s) in c.servers.iter().enumerate() {
        assert_eq!(s.psql("show archive_mode"), "on");
        assert!(
            s.psql("show archive_command")
                .ends_with(&format!("--content-id {}", i as i32 - 1)),
            "instance {i}"
        );
        switch_reaches_the_repository(&repo, i as i32 - 1, s);
    }

    let (code, out, err) = configure(&c, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.matches("nothing to change").count(), 4, "{out}");
    assert!(
        out.contains("every instance runs with what cbdr needs"),
        "{out}"
    );
    assert!(!out.contains("restart"), "{out}");
    // 4 agents, each with the config, the key file and the token file.
    assert_eq!(out.matches(" unchanged").count(), 4 * 3, "{out}");
    assert!(
        !out.contains("written (0600)"),
        "a second run sends nothing new: {out}"
    );

    // No secret in any output or agent log (the key and token travelled
    // sealed; the agents log paths only).
    for i in 0..c.servers.len() {
        let log = c.agent_log_text(i);
        assert!(log.contains("files for"), "agent {i}: {log}");
        for secret in [KEY_HEX, AGENT_TOKEN] {
            assert!(!log.contains(secret), "agent {i} logged a secret");
        }
    }
    for secret in [KEY_HEX, AGENT_TOKEN] {
        assert!(!out.contains(secret) && !err.contains(secret));
    }
}
