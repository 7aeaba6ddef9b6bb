//! `cbdr verify` (issue 16 item 6) against a real PostgreSQL 15 server, on
//! a filesystem repository and on Garage: an intact repository exits 0;
//! a flipped byte in a part, a truncated object, a removed WAL segment and
//! a damaged WAL segment are each reported with the object's name and exit
//! 4; after the repair it exits 0 again. The WAL watermark keeps a second
//! run from re-reading the archive. Also `cbdr check` on the single
//! server: healthy exits 0; a wrong --content-id names archive_command.

mod common;

use cbdr::pg::{Lsn, TimelineId, WalFile, WalSegmentName};
use cbdr::repo::layout;
use common::pg::PgServer;
use common::store::Store;
use common::{CbdrEnv, Key, Storage};

const KEY_HEX: &str = "5a1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccdd0001";
const SEGMENT: u64 = 1 << 20;

struct Fx {
    env: CbdrEnv,
    _server: PgServer,
    store: Store,
    backup: String,
    /// A WAL segment the backup needs to reach restore point rp1, after
    /// the backup's own WAL.
    needed_wal: String,
}

fn fixture(storage: Storage, extra: &str) -> Fx {
    let env = CbdrEnv::builder("verify")
        .storage(storage)
        .key(Key::Raw(KEY_HEX.into()))
        .extra_toml(extra)
        .build();
    let server = env.archiving_server().start();
    server.psql("create table t as select g, md5(g::text) as v from generate_series(1, 60000) g");
    env.on(&server).ok(&["backup-push"]);
    // Some WAL between the backup and the restore point (several 1 MiB
    // segments).
    server.psql("insert into t select g, md5(g::text) from generate_series(60001, 100000) g");
    env.on(&server).ok(&["create-restore-point", "rp1"]);
    server.archive_everything();
    let store = Store::open(&env.config);
    let backups = env.backups_of(-1);
    assert_eq!(backups.len(), 1);
    let backup = backups[0]["name"].as_str().unwrap().to_string();
    let stop: Lsn = backups[0]["stop_lsn"].as_str().unwrap().parse().unwrap();
    let listing = env.json(&["list", "--json", "--content-id", "-1"]);
    let rp: Lsn = listing["segments"][0]["restore_points"][0]["lsn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let after_stop = WalSegmentName::from_lsn(TimelineId(1), stop, SEGMENT).next(SEGMENT);
    let rp_seg = WalSegmentName::from_lsn(TimelineId(1), rp, SEGMENT);
    assert!(
        after_stop < rp_seg,
        "the fixture needs WAL between the backup's end {stop} and rp1 {rp}"
    );
    Fx {
        needed_wal: layout::wal_key(-1, &WalFile::Segment(after_stop)),
        env,
        _server: server,
        store,
        backup,
    }
}

impl Fx {
    fn verify(&self, args: &[&str]) -> common::Output {
        let mut all = vec!["verify"];
        all.extend_from_slice(args);
        self.env.run(&all)
    }

    fn verify_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["verify", "--json"];
        all.extend_from_slice(args);
        self.env.json(&all)
    }

    /// `verify ARGS` must exit 4 naming `object` (stdout: the fault lines;
    /// stderr: the summary), and say `what`.
    fn fault(&self, case: &str, args: &[&str], object: &str, what: &str) {
        let out = self.verify(args);
        eprintln!("{case}:\n{}{}", out.stdout, out.stderr);
        assert_eq!(out.code, 4, "{case}: {}\n{}", out.stdout, out.stderr);
        let faults: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("FAULT "))
            .collect();
        assert!(
            faults
                .iter()
                .any(|l| l.contains(object) && l.contains(what)),
            "{case}: no fault line names {object} with {what:?}:\n{}",
            out.stdout
        );
        assert!(
            out.stderr.contains("verify found") && out.stderr.contains(object),
            "{case}: {}",
            out.stderr
        );
        // The JSON report has it too, and the same exit code.
        let mut all = vec!["verify", "--json"];
        all.extend_from_slice(args);
        let out = self.env.run(&all);
        assert_eq!(out.code, 4, "{case} --json");
        let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert!(
            report["faults"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["object"].as_str().is_some_and(|o| o.contains(object))
                    || f["problem"].as_str().is_some_and(|p| p.contains(object))),
            "{case}: {report}"
        );
    }

    fn part(&self) -> String {
        let prefix = format!("{}parts/", layout::backup_prefix(-1, &self.backup));
        let keys = self.store.keys(&prefix);
        assert!(!keys.is_empty(), "no parts under {prefix}");
        keys[0].clone()
    }
}

/// `extra`: config text (how the parts are compressed: each part a tar of
/// its own, or pieces of one stream the server compressed).
fn faults_found(storage: Storage, extra: &str) {
    let fx = fixture(storage, extra);

    // Intact: exit 0, every file checked, the WAL up to rp1 needed.
    let r = fx.verify_json(&["--wal-since", "all"]);
    assert_eq!(r["faults"].as_array().unwrap().len(), 0, "{r}");
    let b = &r["backups"][0];
    assert_eq!(b["name"], fx.backup.as_str());
    let manifest: serde_json::Value = serde_json::from_slice(
        &fx.store
            .decoded(&layout::backup_manifest_key(-1, &fx.backup)),
    )
    .unwrap();
    let files = manifest["Files"].as_array().unwrap().len() as u64;
    assert_eq!(b["files"].as_u64().unwrap(), files, "{r}");
    assert!(b["plain_bytes"].as_u64().unwrap() > 4_000_000, "{r}");
    let w = &r["wal"][0];
    assert!(w["needed_segments"].as_u64().unwrap() >= 3, "{r}");
    let archived = fx.store.keys(&layout::wal_prefix(-1)).len() as u64;
    assert_eq!(w["objects_read"].as_u64().unwrap(), archived, "{r}");
    let out = fx.verify(&[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("verify: no faults"), "{}", out.stdout);
    // That run stored the watermark: the next one re-reads only WAL
    // archived since (none).
    let r = fx.verify_json(&["--wal"]);
    assert_eq!(r["wal"][0]["since"], "watermark", "{r}");
    assert_eq!(r["wal"][0]["objects_read"], 0, "{r}");
    assert!(r["backups"].as_array().unwrap().is_empty(), "--wal: {r}");

    // A flipped byte in a part.
    let part = fx.part();
    let good = fx.store.raw(&part);
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x40;
    fx.store.put_raw(&part, bad);
    fx.fault("flipped byte", &["--backup", &fx.backup], &part, "");
    fx.store.put_raw(&part, good.clone());

    // A truncated part, and a truncated manifest.
    fx.store.put_raw(&part, good[..good.len() * 2 / 3].to_vec());
    fx.fault("truncated part", &[], &part, "");
    // Gone altogether.
    fx.store.delete(&part);
    fx.fault(
        "removed part",
        &[],
        &part,
        "is missing although the backup's record lists it",
    );
    fx.store.put_raw(&part, good);
    let manifest_key = layout::backup_manifest_key(-1, &fx.backup);
    let good_manifest = fx.store.raw(&manifest_key);
    fx.store.put_raw(
        &manifest_key,
        good_manifest[..good_manifest.len() - 100].to_vec(),
    );
    fx.fault("truncated manifest", &[], &manifest_key, "");
    fx.store.put_raw(&manifest_key, good_manifest);

    // A WAL segment the backup needs to reach rp1, removed: named as a
    // missing range.
    let segment = fx.needed_wal.rsplit('/').next().unwrap().to_string();
    let good_wal = fx.store.raw(&fx.needed_wal);
    fx.store.delete(&fx.needed_wal);
    fx.fault("removed WAL", &[], &segment, "missing from the archive");
    // Put back (as a repair would, by wal-push): the watermark stopped
    // before the gap, so the next ordinary run reads it again.
    fx.store.put_raw(&fx.needed_wal, good_wal.clone());
    let r = fx.verify_json(&["--wal"]);
    assert_eq!(r["wal"][0]["since"], "watermark", "{r}");
    assert!(r["wal"][0]["objects_read"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["faults"].as_array().unwrap().len(), 0, "{r}");
    // The same segment damaged instead: found when the WAL is re-read.
    let mut bad = good_wal.clone();
    let at = bad.len() - 10;
    bad[at] ^= 1;
    fx.store.put_raw(&fx.needed_wal, bad);
    fx.fault(
        "damaged WAL",
        &["--wal", "--wal-since", &segment],
        &fx.needed_wal,
        "",
    );
    fx.store.put_raw(&fx.needed_wal, good_wal);

    // WAL of a timeline 2 without its history file (a promotion whose
    // 00000002.history never reached the archive).
    let tli2 = layout::wal_key(
        -1,
        &WalFile::parse(&format!("00000002{}", &segment[8..])).unwrap(),
    );
    fx.store
        .put_decoded(&tli2, fx.store.decoded(&fx.needed_wal));
    fx.fault(
        "no history file",
        &["--wal"],
        "00000002.history",
        "is missing",
    );
    fx.store.delete(&tli2);

    // Repaired: exit 0 again.
    let out = fx.verify(&["--wal-since", "all"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    // Usage errors: exit 2 (or 1 for a name that is not there).
    fx.env
        .refused(&["verify", "--wal-since", "0/42"], 2, &["--wal-since"]);
    fx.env
        .refused(&["verify", "--wal", "--backup", &fx.backup], 2, &["--wal"]);
    fx.env.refused(
        &["verify", "--backup", "base_nope"],
        1,
        &["base_nope", "cbdr list"],
    );
}

/// The parts are pieces of one stream PostgreSQL compressed (decoded in
/// order, as a restore decodes them).
#[test]
fn verify_names_every_fault_on_fs() {
    faults_found(Storage::Fs, "[compression]\ncompress_on = \"server\"\n");
}

/// Each part is a tar of its own (cbdr compressed it).
#[test]
fn verify_names_every_fault_on_garage() {
    faults_found(
        Storage::S3("verify/".into()),
        "[compression]\ncompress_on = \"client\"\n",
    );
}

#[test]
fn check_on_one_server() {
    let env = CbdrEnv::builder("check1")
        .key(Key::Raw(KEY_HEX.into()))
        .build();
    let server = env.archiving_server().start();
    let out = env.on(&server).ok(&["check", "--wal-timeout", "60"]);
    assert!(out.contains("ok    content -1"), "{out}");
    assert!(out.contains("reached the archive"), "{out}");
    let report = env.on(&server).json(&["check", "--json"]);
    let items = report[0]["items"].as_array().unwrap();
    for check in [
        "repository",
        "storage",
        "key",
        "connection",
        "archive_mode",
        "archive_command",
        "wal_level",
        "max_wal_senders",
        "replication",
        "archiving",
    ] {
        assert!(
            items.iter().any(|i| i["check"] == check && i["ok"] == true),
            "{check}: {report}"
        );
    }
    // No probe object is left behind.
    let store = Store::open(&env.config);
    assert!(store.keys("check/").is_empty());

    // Checked as another instance: this server's archive_command archives
    // as content -1, so it is named, with the command to set, and its WAL
    // never reaches seg3's archive.
    let out = env
        .on(&server)
        .run(&["check", "--content-id", "3", "--wal-timeout", "2"]);
    eprintln!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 6, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("FAIL  content 3")
            && out.stdout.contains("archive_command")
            && out.stdout.contains("--content-id 3'"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("archiving: pg_switch_wal()") && out.stdout.contains("did not reach"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("check failed on 1 of 1"),
        "{}",
        out.stderr
    );
}

/// A copy restored to rp1 and promoted archives timeline 2 into the same
/// repository, with a restore point rp2 there: verify follows the switch
/// through the history file (the first segment of timeline 2 is needed,
/// and named when it is gone), and names the history file when it is gone.
#[test]
fn verify_follows_a_promotion_to_timeline_2() {
    use common::pg::{pg_bin, pg_command};
    let fx = fixture(Storage::Fs, "");
    let dir = fx.env.path("copy");
    fx.env.ok(&[
        "restore",
        "--backup",
        &fx.backup,
        "--target-dir",
        dir.to_str().unwrap(),
        "--restore-point",
        "rp1",
        "--start",
        "--port",
        &common::free_port().to_string(),
    ]);
    // Handed over to the fixture, which stops it at the end of the test.
    let stop = pg_command(pg_bin("pg_ctl"))
        .arg("-D")
        .arg(&dir)
        .args(["stop", "-m", "fast"])
        .output()
        .unwrap();
    assert!(stop.status.success());
    let copy = PgServer::start_existing(&dir, PgServer::builder());
    copy.wait_for_recovery_end();
    copy.psql("insert into t select g, 'tli 2' from generate_series(1, 20000) g");
    fx.env.on(&copy).ok(&["create-restore-point", "rp2"]);
    copy.archive_everything();

    let r = fx.verify_json(&["--wal-since", "all"]);
    assert_eq!(r["faults"].as_array().unwrap().len(), 0, "{r}");
    let timelines: Vec<u64> = r["wal"][0]["timelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["timeline"].as_u64().unwrap())
        .collect();
    assert_eq!(timelines, [1, 2], "{r}");

    let first_tli2 = fx
        .store
        .keys(&layout::wal_prefix(-1))
        .into_iter()
        .filter(|k| {
            let name = k.rsplit('/').next().unwrap();
            name.starts_with("00000002") && WalSegmentName::parse(name).is_some()
        })
        .min()
        .expect("timeline 2 WAL archived");
    let name = first_tli2.rsplit('/').next().unwrap().to_string();
    let good = fx.store.raw(&first_tli2);
    fx.store.delete(&first_tli2);
    fx.fault(
        "first segment of timeline 2 gone",
        &[],
        &name,
        "needs it to reach restore point rp2",
    );
    fx.store.put_raw(&first_tli2, good);

    let history = layout::wal_key(-1, &WalFile::History(TimelineId(2)));
    let good = fx.store.raw(&history);
    fx.store.delete(&history);
    fx.fault("history file gone", &[], "00000002.history", "is missing");
    fx.store.put_raw(&history, good);
    let out = fx.verify(&[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}

/// Flips one byte in every codec object of a pack (`[u32 LE len][object]`
/// each), so that whichever of its extents a restore reads is damaged.
fn flip_every_object(pack: &[u8]) -> Vec<u8> {
    let mut bad = pack.to_vec();
    let mut at = 0;
    while at + 4 <= bad.len() {
        let len = u32::from_le_bytes(bad[at..at + 4].try_into().unwrap()) as usize;
        assert!(len > 0 && at + 4 + len <= bad.len(), "not a pack");
        bad[at + 4 + len / 2] ^= 0x20;
        at += 4 + len;
    }
    assert_eq!(at, bad.len(), "not a pack");
    bad
}

/// A block-format chain (full, delta, delta): verify assembles every file
/// of each backup from the blocks of its chain and checks it against the
/// backup's manifest; a damaged block pack of the middle backup is named
/// (for the middle backup and for the newest, which reads blocks from it);
/// a truncated map pack is named; an intact chain exits 0 with every file
/// checked.
#[test]
fn verify_reads_every_block_of_a_delta_chain() {
    let env = CbdrEnv::builder("verifychain")
        .storage(Storage::Fs)
        .key(Key::Raw(KEY_HEX.into()))
        .extra_toml("[backup]\ndelta_max_steps = 6\n")
        .build();
    let server = env.archiving_server().start();
    server.psql(
        "create table a as select g, md5(g::text) as v from generate_series(1, 40000) g;
         create table b as select g, md5(g::text) as v from generate_series(1, 40000) g;
         checkpoint;",
    );
    env.on(&server).ok(&["backup-push", "--full"]);
    // The middle backup changes table a, the newest table b: the newest
    // reads a's changed blocks from the middle one.
    server.psql("update a set v = 'x' where g % 50 = 0; checkpoint;");
    env.on(&server).ok(&["backup-push", "--delta"]);
    server.psql("update b set v = 'y' where g % 50 = 0; checkpoint;");
    env.on(&server).ok(&["backup-push", "--delta"]);
    env.on(&server).ok(&["create-restore-point", "rp"]);
    server.archive_everything();
    let store = Store::open(&env.config);
    let mut backups = env.backups_of(-1);
    backups.sort_by_key(|b| b["stop_time"].as_str().unwrap().to_string());
    let names: Vec<String> = backups
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 3, "{backups:?}");
    let (middle, newest) = (&names[1], &names[2]);

    // Intact: every backup's every file checked against its manifest.
    let r = env.json(&["verify", "--json"]);
    assert_eq!(r["faults"].as_array().unwrap().len(), 0, "{r}");
    for name in &names {
        let b = r["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} not verified: {r}"));
        let manifest: serde_json::Value =
            serde_json::from_slice(&store.decoded(&layout::backup_manifest_key(-1, name))).unwrap();
        let files = manifest["Files"].as_array().unwrap();
        let bytes: u64 = files.iter().map(|f| f["Size"].as_u64().unwrap()).sum();
        assert_eq!(b["manifest_checked"], true, "{name}: {r}");
        assert_eq!(
            b["files"].as_u64().unwrap(),
            files.len() as u64,
            "{name}: {r}"
        );
        assert_eq!(b["plain_bytes"].as_u64().unwrap(), bytes, "{name}: {r}");
    }
    let out = env.run(&["verify"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);

    // A byte flipped in (every object of) the middle backup's block pack:
    // named for the middle backup and for the newest (a chain read).
    let pack = layout::block_pack_key(-1, middle, "base", 0);
    let good = store.raw(&pack);
    store.put_raw(&pack, flip_every_object(&good));
    for (who, args) in [
        (middle, vec!["verify", "--backup", middle.as_str()]),
        (newest, vec!["verify", "--backup", newest.as_str()]),
    ] {
        let out = env.run(&args);
        eprintln!(
            "damaged block pack, {args:?}:\n{}{}",
            out.stdout, out.stderr
        );
        assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
        assert!(
            out.stdout.lines().any(|l| l.starts_with("FAULT ")
                && l.contains(&format!("backup {who}: "))
                && l.contains(&format!("backup {middle} is damaged"))
                && l.contains(&pack)),
            "{args:?}: no fault names {middle} and {pack}:\n{}",
            out.stdout
        );
        assert!(out.stderr.contains(&pack), "{}", out.stderr);
    }
    // The full is not touched by it.
    let out = env.run(&["verify", "--backup", &names[0]]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    store.put_raw(&pack, good);

    // A truncated map pack of the newest backup.
    let map = layout::map_pack_key(-1, newest, "base", 0);
    let good = store.raw(&map);
    store.put_raw(&map, good[..good.len() - 7].to_vec());
    let out = env.run(&["verify", "--backup", newest]);
    eprintln!("truncated map pack:\n{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("FAULT ") && l.contains(newest) && l.contains(&map)),
        "no fault names {map}:\n{}",
        out.stdout
    );
    // A block pack of the full removed: the deltas cannot be restored.
    store.put_raw(&map, good);
    let root = layout::block_pack_key(-1, &names[0], "base", 0);
    let good = store.raw(&root);
    store.delete(&root);
    let out = env.run(&["verify", "--backup", newest]);
    assert_eq!(out.code, 4, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&root) && out.stdout.contains("is missing"),
        "{}",
        out.stdout
    );
    store.put_raw(&root, good);

    // Repaired: exit 0.
    let out = env.run(&["verify"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
}
