//! Bad input and damaged repositories: each gives its documented exit code
//! and a clear message, and leaves the repository as it was.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{CbdrEnv, Storage};

const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const OTHER_KEY: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
const SEG1: &str = "000000010000000000000001";
const SEG2: &str = "000000010000000000000002";
const SEG3: &str = "000000010000000000000003";

/// The shared environment of the test's own user, without a key in the
/// config: each command gives its key in `CBDR_ENCRYPTION_KEY`.
struct Env(CbdrEnv);

deref_env!(Env);

impl Env {
    fn new(storage: Storage) -> Env {
        let env = Env(CbdrEnv::builder("walerr")
            .storage(storage)
            .own_user()
            .init(false)
            .build());
        fs::create_dir_all(env.path("pg_wal/archive_status")).unwrap();
        // The repository's key is the one every push gives.
        let (code, err) = env.run(Some(KEY), &["repo-init"]);
        assert_eq!(code, 0, "repo-init: {err}");
        env
    }

    fn wal(&self, name: &str) -> PathBuf {
        self.path("pg_wal").join(name)
    }

    /// A WAL-named file with pseudo-random content after a first page
    /// header that matches its name (wal-fetch checks it).
    fn make_wal(&self, name: &str, seed: u8) -> Vec<u8> {
        let mut data: Vec<u8> = (0..1_048_576u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 ^ seed)
            .collect();
        common::with_page_header(name, &mut data);
        fs::write(self.wal(name), &data).unwrap();
        data
    }

    fn repo_file(&self, name: &str) -> PathBuf {
        self.path("repo/seg-1/wal/0000000100000000").join(name)
    }

    fn run(&self, key: Option<&str>, args: &[&str]) -> (i32, String) {
        let cmd = self.cmd().current_dir(self.dir.path());
        let cmd = match key {
            Some(k) => cmd.env("CBDR_ENCRYPTION_KEY", k),
            None => cmd.env_remove("CBDR_ENCRYPTION_KEY"),
        };
        let out = cmd.run(args);
        (out.code, out.stderr)
    }

    fn push(&self, name: &str) -> (i32, String) {
        self.run(Some(KEY), &["wal-push", self.wal(name).to_str().unwrap()])
    }

    fn fetch_with(&self, key: Option<&str>, name: &str) -> (i32, String, PathBuf) {
        let dest = self.path("restored").join(name);
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let (code, err) = self.run(key, &["wal-fetch", name, dest.to_str().unwrap()]);
        (code, err, dest)
    }

    /// Files in the restore directory, temp files and prefetch included.
    fn restored_entries(&self) -> Vec<String> {
        let mut out = Vec::new();
        let root = self.path("restored");
        for e in walk(&root) {
            out.push(e.strip_prefix(&root).unwrap().display().to_string());
        }
        out
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn pushing_again_same_content_succeeds_different_content_fails_and_keeps_the_archive() {
    let env = Env::new(Storage::Fs);
    let original = env.make_wal(SEG1, 1);
    assert_eq!(env.push(SEG1).0, 0);
    let stored = fs::read(env.repo_file(SEG1)).unwrap();

    // PostgreSQL retries after a crash: the same content is accepted.
    let (code, err) = env.push(SEG1);
    assert_eq!(code, 0, "{err}");

    // Different content under the same name is refused, exit 5.
    env.make_wal(SEG1, 2);
    let (code, err) = env.push(SEG1);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("already archived") && err.contains("different content"),
        "{err}"
    );
    assert_eq!(
        fs::read(env.repo_file(SEG1)).unwrap(),
        stored,
        "archive changed"
    );

    // A truncated local copy is different content too.
    fs::write(env.wal(SEG1), &original[..1000]).unwrap();
    assert_eq!(env.push(SEG1).0, 5);
    assert_eq!(
        fs::read(env.repo_file(SEG1)).unwrap(),
        stored,
        "archive changed"
    );
    // And what is archived still reads back as the original.
    let (code, err, dest) = env.fetch_with(Some(KEY), SEG1);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read(dest).unwrap(), original);
}

#[test]
fn wrong_or_missing_key_is_named_and_writes_nothing() {
    let env = Env::new(Storage::Fs);
    env.make_wal(SEG1, 1);
    assert_eq!(env.push(SEG1).0, 0);

    // wal-fetch's errors exit 128 + the ordinary code: PostgreSQL stops
    // recovery instead of ending it as if the archive ended.
    let (code, err, dest) = env.fetch_with(Some(OTHER_KEY), SEG1);
    assert_eq!(code, 132, "{err}");
    assert!(err.contains("not the repository's key"), "{err}");
    assert!(!dest.exists());

    let (code, err, dest) = env.fetch_with(None, SEG1);
    assert_eq!(code, 132, "{err}");
    assert!(
        err.contains("uses a raw 256-bit key, but the configuration gives no encryption"),
        "{err}"
    );
    assert!(!dest.exists());
    assert!(
        env.restored_entries().iter().all(|e| !e.contains(SEG1)),
        "left behind: {:?}",
        env.restored_entries()
    );
}

#[test]
fn corrupted_and_truncated_objects_are_refused() {
    let env = Env::new(Storage::Fs);
    let data1 = env.make_wal(SEG1, 1);
    env.make_wal(SEG2, 2);
    assert_eq!(env.push(SEG1).0, 0);
    assert_eq!(env.push(SEG2).0, 0);

    // One flipped bit in the middle of one, the end cut off the other
    // (both damaged before any fetch, which would prefetch the next).
    let mut bytes = fs::read(env.repo_file(SEG1)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(env.repo_file(SEG1), &bytes).unwrap();
    let bytes = fs::read(env.repo_file(SEG2)).unwrap();
    fs::write(env.repo_file(SEG2), &bytes[..bytes.len() - 100]).unwrap();

    let (code, err, dest) = env.fetch_with(Some(KEY), SEG1);
    assert_eq!(code, 132, "{err}");
    assert!(err.contains("corrupted"), "{err}");
    assert!(!dest.exists());
    let (code, err, dest) = env.fetch_with(Some(KEY), SEG2);
    assert_eq!(code, 132, "{err}");
    assert!(
        err.contains("truncated") || err.contains("corrupted"),
        "{err}"
    );
    assert!(!dest.exists());

    // Nothing half-written is left where PostgreSQL would look.
    assert!(
        env.restored_entries().is_empty(),
        "{:?}",
        env.restored_entries()
    );
    // Pushing the right content again is still refused (nothing is
    // overwritten), with the damage named.
    fs::write(env.wal(SEG1), &data1).unwrap();
    let (code, err) = env.push(SEG1);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("corrupted"), "{err}");
}

#[test]
fn a_missing_segment_exits_1_quietly() {
    let env = Env::new(Storage::Fs);
    env.make_wal(SEG1, 1);
    assert_eq!(env.push(SEG1).0, 0);
    let (code, err, dest) = env.fetch_with(Some(KEY), SEG3);
    assert_eq!(code, 1);
    assert_eq!(err, "", "wal-fetch of a missing file should be quiet");
    assert!(!dest.exists());
    // PostgreSQL asks for history files that do not exist as a matter of course.
    let (code, err, _) = env.fetch_with(Some(KEY), "00000005.history");
    assert_eq!((code, err.as_str()), (1, ""));
}

#[test]
fn bad_config_and_arguments_exit_2_naming_the_problem() {
    let env = Env::new(Storage::Fs);
    env.make_wal(SEG1, 1);
    let cases = [
        ("[storage]\npaht = \"/tmp/x\"\n", "paht"),
        ("[compression]\nmethod = \"gzip\"\n", "gzip"),
        (
            "[compression]\nmethod = \"zstd\"\nlevel = 40\n",
            "compression.level",
        ),
        ("[storage]\ntype = \"s3\"\n", "storage.bucket"),
        (
            "[archive]\nwal_segment_size = 12345\n",
            "archive.wal_segment_size",
        ),
        ("this is not toml", "config file"),
    ];
    for (text, needle) in cases {
        fs::write(&env.config, text).unwrap();
        let (code, err) = env.push(SEG1);
        assert_eq!(code, 2, "{text:?}: {err}");
        assert!(err.contains(needle), "{text:?}: {err}");
    }
    let written: Vec<_> = walk(&env.dir.path().join("repo"))
        .into_iter()
        .filter(|p| !p.ends_with("cbdr-repo.json"))
        .collect();
    assert!(written.is_empty(), "a bad config wrote {written:?}");

    let env = Env::new(Storage::Fs);
    fs::write(env.wal("notawalfile"), b"x").unwrap();
    let (code, err) = env.push("notawalfile");
    assert_eq!(code, 2);
    assert!(err.contains("not a WAL file name"), "{err}");
    let (code, err) = env.run(Some("short"), &["wal-fetch", SEG1, "x"]);
    assert_eq!(code, 130);
    assert!(
        err.contains("CBDR_ENCRYPTION_KEY") && !err.contains("short\""),
        "{err}"
    );
    let (code, err) = env.run(Some(KEY), &["wal-push", env.wal(SEG2).to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not exist"), "{err}");
}

#[test]
fn ready_files_are_pushed_ahead_and_later_calls_need_no_storage() {
    let env = Env::new(Storage::Fs);
    for (i, name) in [SEG1, SEG2, SEG3].iter().enumerate() {
        env.make_wal(name, i as u8);
        fs::write(
            env.dir
                .path()
                .join(format!("pg_wal/archive_status/{name}.ready")),
            "",
        )
        .unwrap();
    }
    let (code, err) = env.push(SEG1);
    assert_eq!(code, 0, "{err}");
    for name in [SEG1, SEG2, SEG3] {
        assert!(env.repo_file(name).exists(), "{name} not uploaded");
    }
    assert!(env
        .dir
        .path()
        .join("pg_wal/cbdr_archived")
        .join(SEG2)
        .exists());

    // Point the config at storage that cannot be reached: the next calls
    // succeed from the memo alone, and consume it.
    let port = common::free_port();
    fs::write(
        &env.config,
        format!("[storage]\ntype = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"x\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\nmax_attempts = 1\n"),
    )
    .unwrap();
    assert_eq!(env.push(SEG2).0, 0);
    assert!(!env
        .dir
        .path()
        .join("pg_wal/cbdr_archived")
        .join(SEG2)
        .exists());
    // A file changed since it was pushed ahead is not trusted to the memo:
    // it needs the storage, which is down (exit 3).
    env.make_wal(SEG3, 9);
    let (code, err) = env.push(SEG3);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot connect"), "{err}");
    // Nothing was told archived that is not: SEG2 again needs storage now.
    let (code, _) = env.push(SEG2);
    assert_eq!(code, 3);
}

#[test]
fn prefetched_segments_serve_later_calls() {
    let env = Env::new(Storage::Fs);
    let mut originals = Vec::new();
    for (i, name) in [SEG1, SEG2, SEG3].iter().enumerate() {
        originals.push(env.make_wal(name, i as u8));
        assert_eq!(env.push(name).0, 0);
    }
    let (code, err, dest) = env.fetch_with(Some(KEY), SEG1);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read(&dest).unwrap(), originals[0]);
    let prefetch = dest.parent().unwrap().join("cbdr_prefetch");
    assert!(prefetch.join(SEG2).exists() && prefetch.join(SEG3).exists());
    // With the repository gone, the next two come from the prefetch dir.
    fs::rename(
        env.dir.path().join("repo"),
        env.dir.path().join("repo.moved"),
    )
    .unwrap();
    for (i, name) in [SEG2, SEG3].iter().enumerate() {
        let (code, err, dest) = env.fetch_with(Some(KEY), name);
        assert_eq!(code, 0, "{err}");
        assert_eq!(fs::read(&dest).unwrap(), originals[i + 1]);
    }
}

#[tokio::test]
async fn damaged_objects_on_s3_are_refused() {
    use cbdr::storage::{body_from_bytes, get_bytes, S3Storage, Storage};
    let env = Env::new(common::Storage::S3("c".into()));
    let target = env.s3.clone().unwrap();
    let data = env.make_wal(SEG1, 1);
    env.make_wal(SEG2, 2);
    assert_eq!(env.push(SEG1).0, 0);
    assert_eq!(env.push(SEG2).0, 0);

    let cfg = cbdr::config::Config::parse(&target.config_toml("c")).unwrap();
    let s3 = S3Storage::new(&cfg.storage).await.unwrap();
    let key1 = format!("seg-1/wal/0000000100000000/{SEG1}");
    let key2 = format!("seg-1/wal/0000000100000000/{SEG2}");
    let mut bytes = get_bytes(&s3, &key1).await.unwrap();
    let stored = bytes.clone();
    bytes[5000] ^= 0x80;
    s3.put(&key1, body_from_bytes(bytes)).await.unwrap();
    let cut = get_bytes(&s3, &key2).await.unwrap();
    s3.put(&key2, body_from_bytes(cut[..cut.len() / 2].to_vec()))
        .await
        .unwrap();

    let (code, err, dest) = env.fetch_with(Some(KEY), SEG1);
    assert_eq!(code, 132, "{err}");
    assert!(err.contains("corrupted"), "{err}");
    assert!(!dest.exists());
    let (code, err, dest) = env.fetch_with(Some(KEY), SEG2);
    assert_eq!(code, 132, "{err}");
    assert!(err.contains("truncated"), "{err}");
    assert!(!dest.exists());

    // Restored from the good copy, it reads back.
    s3.put(&key1, body_from_bytes(stored)).await.unwrap();
    let (code, err, dest) = env.fetch_with(Some(KEY), SEG1);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read(dest).unwrap(), data);
}

#[test]
fn incompressible_wal_is_stored_uncompressed_and_reads_back() {
    let env = Env::new(Storage::Fs);
    // Pseudo-random bytes: lz4 gains nothing.
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut random: Vec<u8> = (0..1_048_576)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    common::with_page_header(SEG1, &mut random);
    fs::write(env.wal(SEG1), &random).unwrap();
    let compressible = env.make_wal(SEG2, 3);
    let mut zeros = vec![0u8; 1_048_576];
    common::with_page_header(SEG3, &mut zeros);
    fs::write(env.wal(SEG3), &zeros).unwrap();
    for name in [SEG1, SEG2, SEG3] {
        assert_eq!(env.push(name).0, 0);
    }
    // Header byte 5 is the compression method (0 = none, 1 = lz4).
    assert_eq!(fs::read(env.repo_file(SEG1)).unwrap()[5], 0);
    assert_eq!(fs::read(env.repo_file(SEG3)).unwrap()[5], 1);
    assert!(fs::metadata(env.repo_file(SEG3)).unwrap().len() < 100_000);
    for (name, want) in [(SEG1, &random), (SEG2, &compressible), (SEG3, &zeros)] {
        let (code, err, dest) = env.fetch_with(Some(KEY), name);
        assert_eq!(code, 0, "{err}");
        assert_eq!(&fs::read(dest).unwrap(), want);
    }
}
