//! Issue 13, items 2 and 7: a repository is created only by `cbdr
//! repo-init`, and records what identifies its key (kind and check value).
//! A mistyped or unmounted repository path, or an empty S3 prefix, is
//! refused by every command with exit 2 and the fix (wal-fetch: 130, which
//! stops recovery) and is not created; a writer or reader with another key,
//! with no key for an encrypted repository or with a key for a plain one, is
//! refused with exit 4 before it writes anything; a repository made by an
//! older cbdr is upgraded once with `repo-init --upgrade`. On the
//! filesystem and on Garage.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::pg::chown_to_pg;
use common::{garage, CbdrEnv, Cmd, Key};

const KEY_A: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const KEY_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
const SEG1: &str = "000000010000000000000001";
const SEG2: &str = "000000010000000000000002";

/// The shared environment (no repository made) with segments to push and
/// more configs.
struct Place(CbdrEnv);

deref_env!(Place);

impl Place {
    fn new(name: &str) -> Place {
        let env = CbdrEnv::builder(name).init(false).build();
        let wal = env.path("pg_wal");
        fs::create_dir_all(wal.join("archive_status")).unwrap();
        for (i, name) in [SEG1, SEG2].iter().enumerate() {
            let mut data: Vec<u8> = (0..1usize << 20)
                .map(|j| (j.wrapping_mul(31) ^ i) as u8)
                .collect();
            common::with_page_header(name, &mut data);
            fs::write(wal.join(name), data).unwrap();
        }
        chown_to_pg(env.dir.path());
        Place(env)
    }

    /// A config named `name` with `storage` and `key`.
    fn config(&self, name: &str, storage: &str, key: Key) -> PathBuf {
        self.write_config(
            name,
            storage,
            key,
            "[archive]\nwal_segment_size = 1048576\n",
        )
    }

    fn seg(&self, name: &str) -> String {
        self.path("pg_wal").join(name).display().to_string()
    }
}

/// Runs cbdr as the PostgreSQL OS user: (exit code, stdout, stderr). No
/// server is running: PGPORT names a closed port, so a command that got as
/// far as PostgreSQL would fail with exit 6, not the code expected here.
fn cbdr(config: &Path, args: &[&str]) -> (i32, String, String) {
    Cmd::new(config)
        .pg_port(common::free_port())
        .env("PGCONNECT_TIMEOUT", "2")
        .run(args)
        .parts()
}

fn refused(case: &str, (code, _, err): (i32, String, String), want: i32, needles: &[&str]) {
    assert_eq!(code, want, "{case}: exit {code}: {err}");
    for n in needles {
        assert!(err.contains(n), "{case}: expected {n:?} in: {err}");
    }
}

fn ok(case: &str, (code, out, err): (i32, String, String)) -> String {
    assert_eq!(code, 0, "{case}: {err}");
    out
}

/// Every command, on a repository that is not there.
fn every_command_refuses_a_missing_repository(place: &Place, config: &Path) {
    let dest = place.path("fetched");
    let dest = dest.to_str().unwrap();
    let s1 = place.seg(SEG1);
    let cases: Vec<(&str, Vec<&str>, i32)> = vec![
        ("wal-push", vec!["wal-push", &s1], 2),
        ("wal-fetch", vec!["wal-fetch", SEG1, dest], 130),
        ("backup-push", vec!["backup-push"], 2),
        ("create-restore-point", vec!["create-restore-point", "p"], 2),
        ("list", vec!["list"], 2),
        ("restore", vec!["restore", "--target-dir", dest], 2),
        ("gpbackup", vec!["gpbackup", "--dbname", "postgres"], 2),
    ];
    for (case, args, want) in cases {
        refused(
            case,
            cbdr(config, &args),
            want,
            &[
                "no cbdr repository at",
                "cbdr repo-init",
                "storage settings",
            ],
        );
    }
    assert!(!Path::new(dest).exists());
}

#[test]
fn a_missing_repository_is_refused_and_never_created_on_fs_and_s3() {
    let place = Place::new("repo-init-missing");
    // A mistyped path (or an unmounted volume): nothing is made there.
    let typo = place.path("mnt/backups/repo");
    let config = place.config(
        "fs",
        &format!("[storage]\npath = \"{}\"", typo.display()),
        Key::Raw(KEY_A.into()),
    );
    every_command_refuses_a_missing_repository(&place, &config);
    assert!(!place.path("mnt").exists(), "the mistyped path was created");

    // repo-init makes it, says so, and is idempotent with the same key.
    let out = ok("repo-init", cbdr(&config, &["repo-init"]));
    assert!(out.contains("created a cbdr repository"), "{out}");
    assert!(out.contains("a raw 256-bit key"), "{out}");
    let meta = fs::read_to_string(typo.join("cbdr-repo.json")).unwrap();
    assert!(
        meta.contains("\"format\": 2") && meta.contains("key_check"),
        "{meta}"
    );
    assert!(
        !meta.contains(KEY_A),
        "the key is in the repository: {meta}"
    );
    let out = ok("repo-init again", cbdr(&config, &["repo-init"]));
    assert!(out.contains("already there"), "{out}");
    ok("wal-push", cbdr(&config, &["wal-push", &place.seg(SEG1)]));
    let dest = place.path("fetched");
    ok(
        "wal-fetch",
        cbdr(&config, &["wal-fetch", SEG1, dest.to_str().unwrap()]),
    );
    assert_eq!(fs::read(&dest).unwrap(), fs::read(place.seg(SEG1)).unwrap());
    fs::remove_file(&dest).unwrap();

    // On S3: an empty prefix of an existing bucket is no repository.
    let target = garage::bucket("repo-init-missing");
    let s3 = place.config(
        "s3",
        &target.config_toml("typo/prefix"),
        Key::Raw(KEY_A.into()),
    );
    every_command_refuses_a_missing_repository(&place, &s3);
    let out = ok("repo-init on S3", cbdr(&s3, &["repo-init"]));
    assert!(out.contains("created a cbdr repository"), "{out}");
    ok("wal-push to S3", cbdr(&s3, &["wal-push", &place.seg(SEG1)]));
    ok(
        "wal-fetch from S3",
        cbdr(&s3, &["wal-fetch", SEG1, dest.to_str().unwrap()]),
    );
    assert_eq!(fs::read(&dest).unwrap(), fs::read(place.seg(SEG1)).unwrap());
}

/// The writers and readers a wrong key must not get past, with the exit
/// code each must give; none of them may write.
fn wrong_key_refused(place: &Place, config: &Path, case: &str, needles: &[&str]) {
    let dest = place.path("wrong-fetch");
    let dest = dest.to_str().unwrap();
    let s2 = place.seg(SEG2);
    for (cmd, args, want) in [
        ("wal-push", vec!["wal-push", s2.as_str()], 4),
        ("backup-push", vec!["backup-push"], 4),
        ("create-restore-point", vec!["create-restore-point", "p"], 4),
        ("gpbackup", vec!["gpbackup", "--dbname", "postgres"], 4),
        ("repo-init", vec!["repo-init"], 4),
        ("list", vec!["list"], 4),
        ("wal-fetch", vec!["wal-fetch", SEG1, dest], 132),
    ] {
        refused(
            &format!("{case}: {cmd}"),
            cbdr(config, &args),
            want,
            needles,
        );
    }
    assert!(!Path::new(dest).exists());
}

/// The repository's objects, by key (fs only).
fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let key = p.strip_prefix(root).unwrap().display().to_string();
                out.push((key, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

#[test]
fn a_writer_or_reader_with_another_key_is_refused_before_writing() {
    let place = Place::new("repo-init-key");
    let repo = place.path("repo");
    let storage = format!("[storage]\npath = \"{}\"", repo.display());
    let right = place.config("right", &storage, Key::Raw(KEY_A.into()));
    ok("repo-init", cbdr(&right, &["repo-init"]));
    ok("wal-push", cbdr(&right, &["wal-push", &place.seg(SEG1)]));
    let before = files(&repo);

    let other = place.config("other", &storage, Key::Raw(KEY_B.into()));
    wrong_key_refused(
        &place,
        &other,
        "another raw key",
        &["not the repository's key", "nothing was written"],
    );
    let none = place.config("none", &storage, Key::None);
    wrong_key_refused(
        &place,
        &none,
        "no key",
        &["uses a raw 256-bit key", "gives no encryption"],
    );
    let pass = place.config(
        "pass",
        &storage,
        Key::Passphrase("a passphrase, not the key".into()),
    );
    wrong_key_refused(
        &place,
        &pass,
        "a passphrase",
        &["uses a raw 256-bit key", "gives a passphrase"],
    );
    assert_eq!(
        files(&repo),
        before,
        "a refused writer changed the repository"
    );

    // The right key still works for both.
    ok("wal-push", cbdr(&right, &["wal-push", &place.seg(SEG2)]));
    let dest = place.path("fetched");
    ok(
        "wal-fetch",
        cbdr(&right, &["wal-fetch", SEG2, dest.to_str().unwrap()]),
    );
    assert_eq!(fs::read(&dest).unwrap(), fs::read(place.seg(SEG2)).unwrap());

    // A plain repository on S3 refuses a writer that brings a key, and a
    // passphrase repository refuses another passphrase.
    let target = garage::bucket("repo-init-key");
    let plain = place.config("s3-plain", &target.config_toml("plain"), Key::None);
    let out = ok("repo-init plain", cbdr(&plain, &["repo-init"]));
    assert!(out.contains("no encryption"), "{out}");
    let keyed = place.config(
        "s3-keyed",
        &target.config_toml("plain"),
        Key::Raw(KEY_A.into()),
    );
    wrong_key_refused(
        &place,
        &keyed,
        "a key for a plain repository",
        &["uses no encryption", "gives a raw 256-bit key"],
    );
    let phrase = place.config(
        "s3-phrase",
        &target.config_toml("phrase"),
        Key::Passphrase("first passphrase".into()),
    );
    ok("repo-init passphrase", cbdr(&phrase, &["repo-init"]));
    ok(
        "wal-push passphrase",
        cbdr(&phrase, &["wal-push", &place.seg(SEG1)]),
    );
    let wrong = place.config(
        "s3-wrong",
        &target.config_toml("phrase"),
        Key::Passphrase("second passphrase".into()),
    );
    wrong_key_refused(
        &place,
        &wrong,
        "another passphrase",
        &["not the repository's key", "a passphrase"],
    );
    let listed = ok("list passphrase", cbdr(&phrase, &["list", "--json"]));
    assert!(listed.contains("\"wal\""), "{listed}");
}

#[test]
fn a_repository_of_an_older_cbdr_is_upgraded_once_with_its_key() {
    let place = Place::new("repo-init-upgrade");
    let repo = place.path("repo");
    let storage = format!("[storage]\npath = \"{}\"", repo.display());
    let config = place.config("old", &storage, Key::Raw(KEY_A.into()));
    // What cbdr wrote before format 2: no key identity.
    fs::create_dir_all(&repo).unwrap();
    fs::write(
        repo.join("cbdr-repo.json"),
        "{\n  \"format\": 1,\n  \"created\": \"2026-11-01T00:00:00Z\",\n  \"kdf_salt\": \"000102030405060708090a0b0c0d0e0f\"\n}",
    )
    .unwrap();
    chown_to_pg(place.dir.path());
    refused(
        "writer on format 1",
        cbdr(&config, &["wal-push", &place.seg(SEG1)]),
        2,
        &["older cbdr", "cbdr repo-init --upgrade"],
    );
    ok("reader on format 1", cbdr(&config, &["list"]));
    refused(
        "repo-init without --upgrade",
        cbdr(&config, &["repo-init"]),
        2,
        &["--upgrade"],
    );
    let out = ok("upgrade", cbdr(&config, &["repo-init", "--upgrade"]));
    assert!(
        out.contains("upgraded") && out.contains("format 2"),
        "{out}"
    );
    let meta = fs::read_to_string(repo.join("cbdr-repo.json")).unwrap();
    assert!(
        meta.contains("000102030405060708090a0b0c0d0e0f") && meta.contains("key_check"),
        "the salt must stay: {meta}"
    );
    ok(
        "writer after the upgrade",
        cbdr(&config, &["wal-push", &place.seg(SEG1)]),
    );
    let other = place.config("other", &storage, Key::Raw(KEY_B.into()));
    refused(
        "another key after the upgrade",
        cbdr(&other, &["wal-push", &place.seg(SEG2)]),
        4,
        &["not the repository's key"],
    );
}
