//! Issue 13, fault family 4: a damaged repository. A flipped byte, a
//! truncated object, a deleted part, a backup record that points at a part
//! that is not there, a manifest that does not match the backup: `restore`
//! (fs and Garage) and `gprestore` refuse with exit 4 naming the object,
//! before `global/pg_control` is written (a half-restored directory never
//! starts), and after the object is repaired the next ordinary run works
//! and gives the same data.
//!
//! One PostgreSQL 15 server and one set of backups per storage; each case
//! damages one object in place and puts the original bytes back after.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use cbdr::repo::layout;
use common::pg::{chown_to_pg, pg_bin, pg_command, PgServer};
use common::store::Store;
use common::{CbdrEnv, Key, Storage};
const KEY_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff";
const DIGEST_SQL: &str =
    "select count(*) || ':' || md5(string_agg(g || '=' || v, ',' order by g)) from t";
const ITEMS_SQL: &str =
    "select count(*) || ':' || md5(string_agg(id || '=' || name, ',' order by id)) from items";

struct Fixture {
    env: CbdrEnv,
    server: PgServer,
    store: Store,
    /// The newest backup (the one damaged) and an older one.
    newest: String,
    older: String,
    /// `t` at the end of the archive.
    digest: String,
    /// The logical backup of database `shop` and its `items`.
    logical_ts: String,
    items: String,
}

fn fixture(storage: Storage, extra: &str) -> Fixture {
    let env = CbdrEnv::builder("corrupt")
        .storage(storage)
        .key(Key::Raw(KEY_HEX.into()))
        .extra_toml(extra)
        .build();
    let server = env.archiving_server().start();
    server.psql("create table t as select g, md5(g::text) as v from generate_series(1, 150000) g");
    let mut fx = Fixture {
        store: Store::open(&env.config),
        env,
        server,
        newest: String::new(),
        older: String::new(),
        digest: String::new(),
        logical_ts: String::new(),
        items: String::new(),
    };
    fx.ok(&["backup-push"]);
    fx.server
        .psql("update t set v = 'changed ' || v where g % 7 = 0");
    fx.ok(&["backup-push"]);
    fx.server
        .psql("insert into t values (0, 'after the backups')");
    fx.server.archive_everything();
    let names = fx.backup_names();
    assert_eq!(names.len(), 2, "{names:?}");
    fx.older = names[0].clone();
    fx.newest = names[1].clone();
    fx.digest = fx.server.psql(DIGEST_SQL);

    fx.server.psql("create database shop");
    fx.server.psql_db(
        "shop",
        "create table items as select g as id, md5(g::text) as name from generate_series(1, 5000) g",
    );
    fx.items = fx.server.psql_db("shop", ITEMS_SQL);
    let out = fx.ok(&["gpbackup", "--dbname", "shop"]);
    fx.logical_ts = out
        .lines()
        .find_map(|l| l.strip_prefix("Backup Timestamp = "))
        .unwrap_or_else(|| panic!("no timestamp in {out}"))
        .trim()
        .to_string();
    fx
}

impl Fixture {
    fn cbdr(&self, args: &[&str]) -> (i32, String, String) {
        self.env.on(&self.server).run(args).parts()
    }

    fn ok(&self, args: &[&str]) -> String {
        self.env.on(&self.server).ok(args)
    }

    fn backup_names(&self) -> Vec<String> {
        self.env.backup_names()
    }

    fn part_keys(&self) -> Vec<String> {
        let prefix = format!("{}parts/", layout::backup_prefix(-1, &self.newest));
        let keys = self.store.keys(&prefix);
        assert!(!keys.is_empty(), "no parts under {prefix}");
        keys
    }

    fn manifest_key(&self) -> String {
        layout::backup_manifest_key(-1, &self.newest)
    }

    /// A restore of the newest backup into a new directory `case`, which
    /// must be refused with exit 4 and every one of `needles` in the
    /// message; no pg_control is left, the directory cannot start, and the
    /// listing is unchanged. `nothing_written`: the directory was not even
    /// created (the fault was found before anything was written).
    fn restore_refused(&self, case: &str, needles: &[&str], nothing_written: bool) -> PathBuf {
        let before = self.backup_names();
        let dir = self.env.path(case);
        let (code, _, err) = self.cbdr(&[
            "restore",
            "--target-dir",
            dir.to_str().unwrap(),
            "--backup",
            &self.newest,
        ]);
        assert_eq!(code, 4, "{case}: {err}");
        eprintln!("{case}: {}", err.trim_end());
        for n in needles {
            assert!(err.contains(n), "{case}: expected {n:?} in: {err}");
        }
        assert!(
            !dir.join("global/pg_control").exists(),
            "{case}: pg_control written"
        );
        if nothing_written {
            assert!(!dir.exists(), "{case}: {} was created", dir.display());
        } else if dir.join("PG_VERSION").exists() {
            let started = PgServer::builder().try_start_existing(&dir);
            assert!(
                started.is_err(),
                "{case}: the half-restored directory started"
            );
        }
        assert_eq!(self.backup_names(), before, "{case}: the listing changed");
        dir
    }

    fn restore_ok(&self, dir: &Path, extra: &[&str]) {
        let mut args = vec![
            "restore",
            "--target-dir",
            dir.to_str().unwrap(),
            "--backup",
            &self.newest,
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
        assert!(dir.join("global/pg_control").exists());
    }

    /// The physical cases; each puts the object back after it.
    /// `streamed`: parts are tars of their own, unpacked as they are read
    /// (so a damaged one is found after some files were written), rather
    /// than pieces of a stream the server compressed, each verified whole
    /// before it is decoded.
    fn physical_cases(&self, streamed: bool) {
        let parts = self.part_keys();
        let part = parts[0].clone();
        let good = self.store.raw(&part);

        // A flipped byte.
        let mut bad = good.clone();
        let at = bad.len() / 3;
        bad[at] ^= 0x10;
        self.store.put_raw(&part, bad);
        let dir = self.restore_refused("flipped", &["corrupted", &part], false);
        // A half-restored directory is refused as a target until --force
        // (a part the server compressed is verified whole before it is
        // unpacked: then nothing was written).
        let partial = fs::read_dir(&dir).unwrap().next().is_some();
        assert_eq!(partial, streamed, "files written before the damaged part");
        if partial {
            let (code, _, err) = self.cbdr(&["restore", "--target-dir", dir.to_str().unwrap()]);
            assert_eq!(code, 2, "{err}");
            assert!(
                err.contains("not empty") && err.contains("--force"),
                "{err}"
            );
        }
        self.store.put_raw(&part, good.clone());
        self.restore_ok(&dir, &["--force"]);
        fs::remove_dir_all(&dir).unwrap();

        // Truncated: a third of it gone.
        self.store
            .put_raw(&part, good[..good.len() * 2 / 3].to_vec());
        self.restore_refused("truncated", &["truncated", &part], false);
        self.store.put_raw(&part, good.clone());

        // Deleted: found before anything is written.
        self.store.delete(&part);
        self.restore_refused("deleted", &["is damaged", &part, &self.newest], true);
        self.store.put_raw(&part, good.clone());

        // The record lists one more part than is stored.
        let record_key = layout::backup_record_key(-1, &self.newest);
        let record_raw = self.store.raw(&record_key);
        let mut record: serde_json::Value =
            serde_json::from_slice(&self.store.decoded(&record_key)).unwrap();
        let base = record["archives"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|a| a["name"] == "base")
            .unwrap();
        let n = base["parts"].as_u64().unwrap();
        base["parts"] = (n + 1).into();
        let phantom = parts
            .iter()
            .find(|k| k.contains("/parts/base/"))
            .unwrap()
            .replacen("000000", &format!("{n:06}"), 1);
        self.store
            .put_decoded(&record_key, serde_json::to_vec(&record).unwrap());
        self.restore_refused("phantom", &["is damaged", &phantom], true);
        self.store.put_raw(&record_key, record_raw);

        // Manifests that do not match: the older backup's (valid, but of
        // other files), one edited, and one with a flipped byte.
        let manifest = self.manifest_key();
        let manifest_raw = self.store.raw(&manifest);
        let older = self
            .store
            .decoded(&layout::backup_manifest_key(-1, &self.older));
        self.store.put_decoded(&manifest, older);
        self.restore_refused("other_manifest", &["backup manifest"], false);
        let text = String::from_utf8(self.store.decoded(&manifest)).unwrap();
        let at = text.find("\"Size\": ").unwrap() + "\"Size\": ".len();
        let edited = format!("{}9{}", &text[..at], &text[at..]);
        self.store.put_decoded(&manifest, edited.into_bytes());
        self.restore_refused(
            "edited_manifest",
            &["checksum does not match", &manifest],
            true,
        );
        let mut bad = manifest_raw.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x01;
        self.store.put_raw(&manifest, bad);
        self.restore_refused("flipped_manifest", &["corrupted", &manifest], true);
        self.store.put_raw(&manifest, manifest_raw);

        // Repaired: the ordinary restore works, verifies and has the data.
        let dir = self.env.path("repaired");
        self.restore_ok(&dir, &[]);
        chown_to_pg(&dir);
        let out = pg_command(pg_bin("pg_verifybackup"))
            .arg("-n")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_verifybackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let restored =
            PgServer::start_existing(&dir, PgServer::builder().conf("archive_mode = off"));
        restored.wait_for_recovery_end();
        assert_eq!(restored.psql(DIGEST_SQL), self.digest, "restored data");
    }

    fn db_exists(&self, db: &str) -> bool {
        self.server.psql(&format!(
            "select count(*) from pg_database where datname = '{db}'"
        )) == "1"
    }

    fn gprestore(&self, db: &str) -> (i32, String) {
        let (code, _, err) = self.cbdr(&[
            "gprestore",
            "--timestamp",
            &self.logical_ts,
            "--redirect-db",
            db,
            "--create-db",
        ]);
        (code, err)
    }

    /// The logical cases; each puts the object back after it.
    fn logical_cases(&self) {
        let prefix = format!("logical/{}/", self.logical_ts);
        let keys = self.store.keys(&prefix);
        let data = keys
            .iter()
            .find(|k| k.contains("/data/"))
            .unwrap_or_else(|| panic!("no data object in {keys:?}"))
            .clone();
        let metadata = format!("{prefix}metadata.sql");
        assert!(keys.contains(&metadata), "{keys:?}");
        let good = self.store.raw(&data);

        // A flipped byte in the rows: the table's load is rolled back.
        let mut bad = good.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x20;
        self.store.put_raw(&data, bad);
        let (code, err) = self.gprestore("flipped_rows");
        assert_eq!(code, 4, "{err}");
        eprintln!("flipped_rows: {}", err.trim_end());
        assert!(err.contains("corrupted") && err.contains(&data), "{err}");
        assert_eq!(
            self.server
                .psql_db("flipped_rows", "select count(*) from items"),
            "0",
            "rows of a damaged table were committed"
        );
        self.store.put_raw(&data, good.clone());

        // Deleted rows, or truncated metadata: refused before the database
        // is created.
        self.store.delete(&data);
        let (code, err) = self.gprestore("deleted_rows");
        assert_eq!(code, 4, "{err}");
        eprintln!("deleted_rows: {}", err.trim_end());
        assert!(
            err.contains("is damaged") && err.contains(&data) && err.contains(&self.logical_ts),
            "{err}"
        );
        assert!(!self.db_exists("deleted_rows"));
        self.store.put_raw(&data, good);

        let meta = self.store.raw(&metadata);
        self.store
            .put_raw(&metadata, meta[..meta.len() - 20].to_vec());
        let (code, err) = self.gprestore("cut_metadata");
        assert_eq!(code, 4, "{err}");
        eprintln!("cut_metadata: {}", err.trim_end());
        assert!(
            err.contains("truncated") && err.contains(&metadata),
            "{err}"
        );
        assert!(!self.db_exists("cut_metadata"));
        self.store.put_raw(&metadata, meta);

        // Repaired: the ordinary restore works and has the rows.
        let (code, err) = self.gprestore("repaired");
        assert_eq!(code, 0, "{err}");
        assert_eq!(self.server.psql_db("repaired", ITEMS_SQL), self.items);
    }
}

#[test]
fn a_damaged_fs_repository_is_refused_naming_the_object() {
    let fx = fixture(Storage::Fs, "[compression]\ncompress_on = \"server\"\n");
    fx.physical_cases(false);
    fx.logical_cases();
}

/// On Garage, compressed by cbdr (each part a tar of its own).
#[test]
fn a_damaged_garage_repository_is_refused_naming_the_object() {
    let fx = fixture(
        Storage::S3("c".into()),
        "[compression]\ncompress_on = \"client\"\n",
    );
    fx.physical_cases(true);
    fx.logical_cases();
}
