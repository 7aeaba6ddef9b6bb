//! The README's demo: a small local server archiving to a local repository,
//! a base backup, a restore point, an accident, a restore to the point, and
//! a check that the data came back. Run it with
//! `cargo test --release --test demo -- --nocapture` to see every step.

mod common;

use common::pg::PgServer;
use common::{CbdrEnv, Key};

fn step(what: &str) {
    println!("\n=== {what}");
}

#[test]
fn demo() {
    // repo-init is the demo's first step, not the environment's.
    let env = CbdrEnv::builder("demo")
        .key(Key::Passphrase("demo passphrase, keep it safe".into()))
        .file_names("cbdr.key", "cbdr.toml")
        .wal_segment_size(None)
        .extra_toml("[compression]\nmethod = \"lz4\"\n")
        .init(false)
        .build();
    let run = |server: Option<&PgServer>, args: &[&str]| -> String {
        println!("$ cbdr {}", args.join(" "));
        let stdout = env.cmd().pg(server).ok(args);
        print!("{stdout}");
        stdout
    };

    step("Create the repository, once, with its key");
    run(None, &["repo-init"]);

    step("A PostgreSQL 15 server with archive_command = 'cbdr wal-push %p'");
    let server = PgServer::builder()
        .conf("archive_mode = on")
        .conf(format!("archive_command = '{}'", env.archive_command()))
        .start();
    println!(
        "server on port {}, repository {}",
        server.port(),
        env.repo().display()
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
    let target = env.path("restored");
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
