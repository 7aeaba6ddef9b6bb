//! The README's demo: a small local server archiving to a local repository,
//! a base backup, a restore point, an accident, a restore to the point, and
//! a check that the data came back. Run it with
//! `cargo test --release --test demo -- --nocapture` to see every step.

mod common;

use std::fs;

use common::pg::{chown_to_pg, pg_command, pg_user_dir, PgServer};

const CBDR: &str = env!("CARGO_BIN_EXE_cbdr");

fn step(what: &str) {
    println!("\n=== {what}");
}

#[test]
fn demo() {
    let dir = pg_user_dir("cbdr-demo");
    let config = dir.path().join("cbdr.toml");
    let key = dir.path().join("cbdr.key");
    fs::write(&key, "demo passphrase, keep it safe\n").unwrap();
    fs::write(
        &config,
        format!(
            "[storage]\ntype = \"fs\"\npath = \"{}\"\n[compression]\nmethod = \"lz4\"\n[encryption]\nkey_file = \"{}\"\n",
            dir.path().join("repo").display(),
            key.display()
        ),
    )
    .unwrap();
    chown_to_pg(dir.path());
    let run = |server: Option<&PgServer>, args: &[&str]| -> String {
        println!("$ cbdr {}", args.join(" "));
        let mut cmd = pg_command(CBDR);
        cmd.arg("--config").arg(&config).args(args);
        if let Some(s) = server {
            cmd.env("PGHOST", "127.0.0.1")
                .env("PGPORT", s.port().to_string())
                .env("PGUSER", "postgres");
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{stdout}");
        assert!(
            out.status.success(),
            "cbdr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };

    step("Create the repository, once, with its key");
    run(None, &["repo-init"]);

    step("A PostgreSQL 15 server with archive_command = 'cbdr wal-push %p'");
    let archive = format!("{CBDR} --config {} wal-push %p", config.display());
    let server = PgServer::builder()
        .conf("archive_mode = on")
        .conf(format!("archive_command = '{archive}'"))
        .start();
    println!(
        "server on port {}, repository {}",
        server.port(),
        dir.path().join("repo").display()
    );
    server.psql("create table accounts (id int primary key, owner text, balance numeric)");
    server
        .psql("insert into accounts select g, 'owner ' || g, 100 from generate_series(1, 10000) g");

    step("A base backup");
    run(Some(&server), &["backup-push"]);

    step("More work, then a restore point before a risky change");
    server.psql("update accounts set balance = balance + 1 where id % 10 = 0");
    let before =
        server.psql("select count(*) || ' accounts, total ' || sum(balance) from accounts");
    run(Some(&server), &["create-restore-point", "before_cleanup"]);
    println!("data at the restore point: {before}");

    step("The accident");
    server.psql("delete from accounts where id > 100");
    server.psql("select pg_switch_wal()");
    println!(
        "data now: {}",
        server.psql("select count(*) || ' accounts, total ' || sum(balance) from accounts")
    );

    step("What the repository holds");
    run(None, &["list"]);

    step("Restore to the restore point into a new directory");
    let target = dir.path().join("restored");
    run(
        None,
        &[
            "restore",
            "--restore-point",
            "before_cleanup",
            "--target-dir",
            target.to_str().unwrap(),
        ],
    );

    step("Start the restored server and check the data");
    let restored =
        PgServer::start_existing(&target, PgServer::builder().conf("archive_mode = off"));
    restored.wait_for_recovery_end();
    let after =
        restored.psql("select count(*) || ' accounts, total ' || sum(balance) from accounts");
    println!("restored data: {after}");
    assert_eq!(after, before, "the data did not come back");
    println!("\nThe data came back: {after}.");
}
