//! Issue 13, fault family 7: bad configuration and input. Malformed TOML,
//! an unknown field, a missing or unreadable key file, a repository path
//! that is a file, a restore target that is not empty, a restore point, a
//! backup or a logical backup timestamp that does not exist, a target
//! before the first backup: each is refused with the documented exit code
//! (2 for bad input, 1 for "not in the repository") and a message naming
//! the problem and the fix, and nothing is written: the target directory
//! is unchanged (or not created) and the repository holds the same files.
//! After them, the ordinary restore works and has the data.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::pg::{chown_to_pg, PgServer};
use common::{CbdrEnv, Cmd, Key};

const KEY_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff";
const DIGEST_SQL: &str =
    "select count(*) || ':' || md5(string_agg(g || '=' || v, ',' order by g)) from t";

fn cbdr(config: &Path, server: Option<&PgServer>, args: &[&str]) -> (i32, String) {
    let out = Cmd::new(config).pg(server).run(args);
    (out.code, out.stderr)
}

/// Every file under `dir` with its contents (the state "nothing written"
/// is compared with); empty when `dir` does not exist.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if p.is_dir() {
                out.insert(rel, Vec::new());
                walk(root, &p, out);
            } else {
                out.insert(rel, fs::read(&p).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The repository's files but its archived WAL (which the server may add
/// to at any time).
/// The repository's objects (its files), WAL aside. Directories are not
/// objects: the filesystem storage leaves a directory behind once its last
/// object is deleted (a restore's lease, taken and released).
fn repo_snapshot(repo: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut s = snapshot(repo);
    s.retain(|p, _| !p.components().any(|c| c.as_os_str() == "wal") && !repo.join(p).is_dir());
    s
}

/// Asserts the exit code and that every needle is in the message.
fn refused(case: &str, (code, err): (i32, String), want: i32, needles: &[&str]) {
    assert_eq!(code, want, "{case}: {err}");
    eprintln!("{case}: {}", err.trim_end());
    for n in needles {
        assert!(err.contains(n), "{case}: expected {n:?} in: {err}");
    }
}

#[test]
fn a_bad_config_file_is_refused_naming_the_key_and_the_fix() {
    // The environment's config is replaced by each bad one in turn.
    let env = CbdrEnv::builder("bad-config")
        .key(Key::Raw(KEY_HEX.into()))
        .init(false)
        .build();
    let dir = &env.dir;
    let repo = env.repo();
    let key = env.key_file.clone().unwrap();
    let wal = env.path("000000010000000000000001");
    fs::write(&wal, vec![0u8; 1 << 20]).unwrap();
    let config = env.config.clone();
    let storage = env.fs_storage();
    let encryption = format!("[encryption]\nkey_file = \"{}\"\n", key.display());
    let cfg = config.display().to_string();
    // Each config is tried with a reader (list) and a writer (wal-push):
    // both refuse it before touching the repository.
    let try_config = |case: &str, text: String, needles: &[&str]| {
        fs::write(&config, text).unwrap();
        chown_to_pg(dir.path());
        for args in [&["list"][..], &["wal-push", wal.to_str().unwrap()][..]] {
            let case = format!("{case} ({})", args[0]);
            refused(&case, cbdr(&config, None, args), 2, needles);
            assert!(!repo.exists(), "{case}: the repository was created");
        }
    };

    try_config(
        "malformed TOML",
        format!("[storage\npath = \"{}\"\n", repo.display()),
        &[&cfg, "line 1"],
    );
    try_config(
        "unknown field",
        format!("{storage}paht = \"/x\"\n{encryption}"),
        &[&cfg, "unknown field `paht`", "expected one of", "`path`"],
    );
    let missing = env.path("no-such-key");
    try_config(
        "missing key file",
        format!(
            "{storage}[encryption]\nkey_file = \"{}\"\n",
            missing.display()
        ),
        &[
            &cfg,
            "encryption.key_file",
            missing.to_str().unwrap(),
            "fix the path",
        ],
    );
    // Readable by root only: cbdr runs as PostgreSQL's user, as
    // archive_command does.
    let private = env.path("private-key");
    fs::write(&private, format!("{KEY_HEX}\n")).unwrap();
    let text = format!(
        "{storage}[encryption]\nkey_file = \"{}\"\n",
        private.display()
    );
    fs::write(&config, &text).unwrap();
    chown_to_pg(dir.path());
    std::os::unix::fs::chown(&private, Some(0), Some(0)).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    if common::is_root() {
        refused(
            "unreadable key file",
            cbdr(&config, None, &["list"]),
            2,
            &[
                "encryption.key_file",
                "Permission denied",
                "readable by the user",
            ],
        );
        assert!(!repo.exists());
    }
    let file = env.path("a-file");
    fs::write(&file, "not a repository").unwrap();
    try_config(
        "repository path is a file",
        format!("[storage]\npath = \"{}\"\n{encryption}", file.display()),
        &[&cfg, "storage.path", "is a file", "repository's directory"],
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "not a repository");

    // Repaired: the same commands work.
    fs::write(&config, format!("{storage}{encryption}")).unwrap();
    chown_to_pg(dir.path());
    env.init_repo();
    let (code, err) = cbdr(&config, None, &["list"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn bad_restore_input_is_refused_and_nothing_is_written() {
    let env = CbdrEnv::builder("bad-input")
        .key(Key::Raw(KEY_HEX.into()))
        .build();
    let repo = env.repo();
    let config = env.config.clone();
    let server = env.archiving_server().start();
    server.psql("create table t as select g, md5(g::text) as v from generate_series(1, 20000) g");
    let before_backup = server.psql("select now()");
    std::thread::sleep(Duration::from_millis(1100));
    env.on(&server).ok(&["backup-push"]);
    server.psql("insert into t values (0, 'after the backup')");
    server.archive_everything();
    let digest = server.psql(DIGEST_SQL);
    let repo_files = repo_snapshot(&repo);
    assert!(!repo_files.is_empty());
    let restore = |target: &Path, args: &[&str]| {
        let mut all = vec!["restore", "--target-dir", target.to_str().unwrap()];
        all.extend_from_slice(args);
        cbdr(&config, Some(&server), &all)
    };

    // A target directory that is not empty: refused, left as it was.
    let busy = env.path("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("precious.txt"), "keep me").unwrap();
    chown_to_pg(&busy);
    let busy_before = snapshot(&busy);
    refused(
        "target not empty",
        restore(&busy, &[]),
        2,
        &[busy.to_str().unwrap(), "not empty", "--force"],
    );
    assert_eq!(snapshot(&busy), busy_before, "the target was changed");

    // Things that are not in the repository: exit 1 (README: "not found"),
    // naming what is missing and where to look; no directory created.
    let fresh = env.path("fresh");
    let cases: [(&str, Vec<&str>, i32, Vec<&str>); 4] = [
        (
            "restore point that does not exist",
            vec!["--restore-point", "no_such_point"],
            1,
            vec!["no_such_point", "is not in the repository", "cbdr list"],
        ),
        (
            "backup that does not exist",
            vec!["--backup", "base_20000101T000000Z"],
            1,
            vec![
                "base_20000101T000000Z",
                "not in the repository",
                "cbdr list",
            ],
        ),
        (
            "target time before the first backup",
            vec!["--target-time", &before_backup],
            2,
            vec![
                "no backup ends before the target",
                "nothing can be restored",
            ],
        ),
        (
            "target LSN before the first backup",
            vec!["--target-lsn", "0/100000"],
            2,
            vec!["no backup ends before the target"],
        ),
    ];
    for (case, args, code, needles) in cases {
        refused(case, restore(&fresh, &args), code, &needles);
        assert!(!fresh.exists(), "{case}: {} was created", fresh.display());
        let now = repo_snapshot(&repo);
        let changed: Vec<&PathBuf> = now
            .keys()
            .chain(repo_files.keys())
            .filter(|k| now.get(*k) != repo_files.get(*k))
            .collect();
        assert!(
            changed.is_empty(),
            "{case}: the repository changed: {changed:?}"
        );
    }

    // gprestore of a timestamp that is not there, or is not a timestamp.
    for (case, ts, code, needles) in [
        (
            "logical backup that does not exist",
            "20000101000000",
            1,
            vec!["20000101000000", "no complete logical backup", "cbdr list"],
        ),
        ("malformed timestamp", "2026-12-02", 2, vec!["2026-12-02"]),
    ] {
        refused(
            case,
            cbdr(
                &config,
                Some(&server),
                &["gprestore", "--timestamp", ts, "--create-db"],
            ),
            code,
            &needles,
        );
        let now = repo_snapshot(&repo);
        let changed: Vec<&PathBuf> = now
            .keys()
            .chain(repo_files.keys())
            .filter(|k| now.get(*k) != repo_files.get(*k))
            .collect();
        assert!(
            changed.is_empty(),
            "{case}: the repository changed: {changed:?}"
        );
    }

    // After all that, the ordinary restore works and has the data.
    let (code, err) = restore(&fresh, &[]);
    assert_eq!(code, 0, "{err}");
    let restored = PgServer::start_existing(&fresh, PgServer::builder().conf("archive_mode = off"));
    restored.wait_for_recovery_end();
    assert_eq!(restored.psql(DIGEST_SQL), digest);
}
