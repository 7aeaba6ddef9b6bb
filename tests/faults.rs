//! Fault injection: cbdr killed at chosen points (`CBDR_FAULT`, built with
//! the `fault-injection` feature), storage that goes away or stalls (a
//! proxy in front of Garage), full disks (small tmpfs mounts), and
//! duplicate or racing WAL pushes. Each case checks: (a) the command that
//! met the fault failed (or succeeded when the fault was survivable), (b)
//! nothing is listed as complete that is not, (c) nothing stored before the
//! fault is lost, (d) the next ordinary run works.
//!
//! Run with `cargo test --features fault-injection --test faults`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::pg::{chown_to_pg, pg_bin, pg_command, PgServer};
use common::proxy::Proxy;
use common::{garage, CbdrEnv, Cmd, Key, Output};
const KEY_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff";
const KILLED: &str = "cbdr fault injection: killed at point";

/// Whether the process was killed at `point` (`name` or `name:N`).
fn killed_at(out: &Output, point: &str) -> bool {
    let name = point.split(':').next().unwrap_or(point);
    out.code != 0 && out.stderr.contains(&format!("{KILLED} {name} "))
}

/// The shared environment (owned by the PostgreSQL OS user) with this
/// file's key.
struct Place(CbdrEnv);

deref_env!(Place);

impl Place {
    /// `storage`: a `[storage]` section, or None for an fs repository in
    /// `repo/`.
    fn new(name: &str, storage: Option<String>) -> Place {
        Place(
            CbdrEnv::builder(name)
                .storage_toml(storage)
                .key(Key::Raw(KEY_HEX.into()))
                .build(),
        )
    }

    /// Moves the repository to `repo` (on a small tmpfs): the config is
    /// rewritten (without `[archive]`) and the repository made there.
    fn on_tmpfs(&self, repo: &Path) {
        let key = self.key_file.as_ref().unwrap();
        self.write(
            "cbdr.toml",
            &format!(
                "{}[encryption]\nkey_file = \"{}\"\n",
                common::env::fs_storage(repo),
                key.display()
            ),
        );
        self.init_repo();
    }

    fn run(&self, server: Option<&PgServer>, fault: Option<&str>, args: &[&str]) -> Output {
        self.fault_cmd(server, fault).run(args)
    }

    /// cbdr with `CBDR_FAULT` set to `fault` (or removed).
    fn fault_cmd(&self, server: Option<&PgServer>, fault: Option<&str>) -> Cmd {
        let cmd = self.cmd().pg(server).env_remove("CBDR_FAULT");
        match fault {
            Some(f) => cmd.env("CBDR_FAULT", f),
            None => cmd,
        }
    }

    fn ok(&self, server: Option<&PgServer>, args: &[&str]) -> String {
        self.fault_cmd(server, None).ok(args)
    }

    /// Names of the backups `list --json` shows (complete ones only).
    fn backups(&self) -> Vec<String> {
        self.backup_names()
    }

    /// The archived bytes of a WAL file, or the exit code of `wal-fetch`.
    fn fetch(&self, name: &str) -> Result<Vec<u8>, (i32, String)> {
        let dest = self.path(format!("fetched-{name}"));
        let _ = fs::remove_file(&dest);
        let out = self.run(None, None, &["wal-fetch", name, dest.to_str().unwrap()]);
        if out.code != 0 {
            return Err((out.code, out.stderr));
        }
        Ok(fs::read(&dest).unwrap())
    }
}

/// Incompressible bytes (xorshift), different for each seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `len` bytes of noise that start as segment `name`'s first page does
/// (wal-fetch checks that header against the name).
fn segment(name: &str, len: usize, seed: u64) -> Vec<u8> {
    let mut data = noise(len, seed);
    common::with_page_header(name, &mut data);
    data
}

/// A fake pg_wal directory holding one segment `name` with `data`.
fn wal_file(place: &Place, name: &str, data: &[u8]) -> PathBuf {
    let dir = place.path("pg_wal");
    fs::create_dir_all(dir.join("archive_status")).unwrap();
    let path = dir.join(name);
    fs::write(&path, data).unwrap();
    chown_to_pg(&dir);
    path
}

/// Every file under `dir` whose name marks a temp file of cbdr.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().contains(".cbdr-tmp.") {
                out.push(p);
            }
        }
    }
    out
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A tmpfs of `size` (e.g. "4m") mounted at `path`, owned by the
/// PostgreSQL OS user; unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: PathBuf, size: &str) -> Tmpfs {
        assert!(common::is_root(), "mounting a tmpfs needs root");
        fs::create_dir_all(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        chown_to_pg(&path);
        Tmpfs { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

// ---------------------------------------------------------------------
// Kill points of wal-push, on fs and on Garage (single PUT and multipart).
// ---------------------------------------------------------------------

/// Kills `wal-push` at `point`, then checks that nothing was archived,
/// that an earlier segment is intact, and that the retry archives it.
fn wal_push_killed(place: &Place, point: &str, size: usize) {
    let earlier = segment("000000010000000000000001", 1 << 20, 1);
    let p = wal_file(place, "000000010000000000000001", &earlier);
    place.ok(None, &["wal-push", p.to_str().unwrap()]);

    let data = segment("000000010000000000000002", size, 2);
    let p = wal_file(place, "000000010000000000000002", &data);
    let out = place.run(None, Some(point), &["wal-push", p.to_str().unwrap()]);
    assert!(
        killed_at(&out, point),
        "{point}: {} {}",
        out.code,
        out.stderr
    );
    // (b) nothing half-stored is served.
    let (code, err) = place.fetch("000000010000000000000002").unwrap_err();
    assert_eq!(code, 1, "{point}: {err}");
    // (c) what was archived before is intact.
    assert_eq!(place.fetch("000000010000000000000001").unwrap(), earlier);
    // (d) PostgreSQL's retry archives it.
    place.ok(None, &["wal-push", p.to_str().unwrap()]);
    assert_eq!(place.fetch("000000010000000000000002").unwrap(), data);
}

#[test]
fn wal_push_killed_mid_upload_archives_nothing_and_the_retry_works() {
    let fs_place = Place::new("faults-walkill-fs", None);
    wal_push_killed(&fs_place, "fs-put-chunk", 3 << 20);
    // The killed upload's temp file is never listed or served.
    let repo = fs_place.path("repo");
    assert_eq!(
        temp_files(&repo).len(),
        1,
        "the killed push leaves one temp file"
    );

    let single = Place::new(
        "faults-walkill-s3",
        Some(garage::bucket("walkill-single").config_toml("")),
    );
    wal_push_killed(&single, "s3-put-single", 1 << 20);

    // 16 MiB of noise in 5 MiB parts: killed after the second part landed.
    let target = garage::bucket("walkill-multi");
    let multi = Place::new(
        "faults-walkill-mp",
        Some(format!(
            "{}part_size = 5242880\nupload_concurrency = 1\n",
            target.config_toml("")
        )),
    );
    wal_push_killed(&multi, "s3-put-part:2", 16 << 20);
}

// ---------------------------------------------------------------------
// The same WAL file twice, or by two pushes at once.
// ---------------------------------------------------------------------

fn duplicate_and_racing(place: &Place) {
    let name = "000000010000000000000010";
    let original = segment(name, 1 << 20, 10);
    let p = wal_file(place, name, &original);
    place.ok(None, &["wal-push", p.to_str().unwrap()]);
    // Same bytes again: success.
    place.ok(None, &["wal-push", p.to_str().unwrap()]);
    // Other bytes: exit 5, the original kept.
    fs::write(&p, segment(name, 1 << 20, 11)).unwrap();
    let out = place.run(None, None, &["wal-push", p.to_str().unwrap()]);
    assert_eq!(out.code, 5, "{}", out.stderr);
    assert!(out.stderr.contains("different content"), "{}", out.stderr);
    assert_eq!(place.fetch(name).unwrap(), original);

    // Two pushes of one new file at once, same bytes: both succeed.
    for round in 0..3u64 {
        let name = format!("0000000100000000000000{:02X}", 0x20 + round);
        let data = segment(&name, 1 << 20, 20 + round);
        let a = wal_file(place, &name, &data);
        let dir_b = place.path(format!("other-{round}"));
        fs::create_dir_all(&dir_b).unwrap();
        let b = dir_b.join(&name);
        fs::write(&b, &data).unwrap();
        chown_to_pg(&dir_b);
        for out in push_at_once(place, [&a, &b]) {
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(place.fetch(&name).unwrap(), data);
    }
}

/// `wal-push` of both files at once (two processes); their outputs.
fn push_at_once(place: &Place, files: [&Path; 2]) -> Vec<std::process::Output> {
    let children: Vec<_> = files
        .iter()
        .map(|p| {
            place
                .fault_cmd(None, None)
                .command(&["wal-push", p.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

/// Two pushes of one file with different bytes at once: exactly one wins,
/// the other is refused (exit 5), and the archived file is the winner's.
fn racing_different(place: &Place) {
    for round in 0..3u64 {
        let name = format!("0000000100000000000000{:02X}", 0x40 + round);
        let (x, y) = (
            segment(&name, 1 << 20, 40 + round),
            segment(&name, 1 << 20, 50 + round),
        );
        let a = wal_file(place, &name, &x);
        let dir_b = place.path(format!("rival-{round}"));
        fs::create_dir_all(&dir_b).unwrap();
        let b = dir_b.join(&name);
        fs::write(&b, &y).unwrap();
        chown_to_pg(&dir_b);
        let codes: Vec<i32> = push_at_once(place, [&a, &b])
            .iter()
            .map(|out| out.status.code().unwrap_or(-1))
            .collect();
        let stored = place.fetch(&name).unwrap();
        match codes[..] {
            [0, 5] => assert_eq!(stored, x, "round {round}"),
            [5, 0] => assert_eq!(stored, y, "round {round}"),
            _ => panic!("round {round}: exit codes {codes:?}, expected one 0 and one 5"),
        }
    }
}

#[test]
fn the_same_wal_twice_or_at_once_on_fs() {
    let place = Place::new("faults-dup-fs", None);
    duplicate_and_racing(&place);
    racing_different(&place);
    // One object per segment, no temp file, every object 0600 and every
    // directory 0700.
    let repo = place.path("repo");
    assert!(temp_files(&repo).is_empty(), "{:?}", temp_files(&repo));
    for f in files_under(&repo) {
        let mode = fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
        let dir = f.parent().unwrap();
        let mode = fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
}

#[test]
fn the_same_wal_twice_or_at_once_on_garage() {
    let place = Place::new("faults-dup-s3", Some(garage::bucket("dup").config_toml("")));
    // Garage ignores If-None-Match: two different files racing may both
    // be told "archived" (the last upload wins), so only the sequential
    // and same-content cases are promised there.
    duplicate_and_racing(&place);
}

// ---------------------------------------------------------------------
// A full disk under an fs repository.
// ---------------------------------------------------------------------

#[test]
fn wal_push_into_a_full_repository_names_the_cause_and_leaves_nothing() {
    let place = Place::new("faults-full-wal", None);
    let mount = Tmpfs::mount(place.path("small"), "3m");
    let repo = mount.path.join("repo");
    place.on_tmpfs(&repo);
    let first = segment("000000010000000000000001", 1 << 20, 70);
    let p = wal_file(&place, "000000010000000000000001", &first);
    place.ok(None, &["wal-push", p.to_str().unwrap()]);

    let p = wal_file(
        &place,
        "000000010000000000000002",
        &segment("000000010000000000000002", 4 << 20, 71),
    );
    let out = place.run(None, None, &["wal-push", p.to_str().unwrap()]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("No space left on device")
            && out.stderr.contains(&*repo.to_string_lossy()),
        "the cause and the repository are named: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("000000010000000000000002"),
        "the object is named: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("the upload stopped"), "{}", out.stderr);
    assert!(temp_files(&repo).is_empty(), "{:?}", temp_files(&repo));
    assert_eq!(place.fetch("000000010000000000000002").unwrap_err().0, 1);
    assert_eq!(place.fetch("000000010000000000000001").unwrap(), first);
    // Room again: the retry works.
    fs::remove_file(place.path("fetched-000000010000000000000001")).ok();
    let p = wal_file(
        &place,
        "000000010000000000000002",
        &segment("000000010000000000000002", 1 << 20, 72),
    );
    place.ok(None, &["wal-push", p.to_str().unwrap()]);
    drop(mount);
}

// ---------------------------------------------------------------------
// A real server: backup-push and restore killed, out of space.
// ---------------------------------------------------------------------

fn server_archiving_to(place: &Place) -> PgServer {
    place
        .archiving_server()
        .conf("max_wal_size = '256MB'")
        .start()
}

/// A digest of what pgbench committed.
fn digest(server: &PgServer) -> String {
    server.psql(
        "select count(*) || ' ' || md5(string_agg(aid || ':' || abalance, ',' order by aid)) \
         || ' ' || (select count(*) from pgbench_history) from pgbench_accounts",
    )
}

/// Restores to latest into `dir`, starts it, returns its digest.
fn restore_and_digest(place: &Place, dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["restore", "--target-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    place.ok(None, &args);
    let restored = PgServer::start_existing(dir, PgServer::builder().conf("archive_mode = off"));
    restored.wait_for_recovery_end();
    digest(&restored)
}

/// Whether `pg_ctl start` can start the directory (stopped again if so).
fn starts(dir: &Path) -> bool {
    chown_to_pg(dir);
    let log = dir.with_extension("start.log");
    let port = common::free_port().to_string();
    let ok = pg_command(pg_bin("pg_ctl"))
        .arg("-D")
        .arg(dir)
        .args([
            "-w",
            "-t",
            "30",
            "-o",
            &format!("-p {port} -c archive_mode=off"),
            "-l",
        ])
        .arg(&log)
        .arg("start")
        .output()
        .unwrap()
        .status
        .success();
    if ok {
        let _ = pg_command(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(dir)
            .args(["stop", "-m", "immediate"])
            .output();
    }
    ok
}

#[test]
fn backup_and_restore_killed_or_out_of_space() {
    let place = Place::new("faults-backup", None);
    let server = server_archiving_to(&place);
    server.run_pgbench(&["-i", "-s", "2", "-q"]);
    place.ok(Some(&server), &["backup-push"]);
    let good = place.backups();
    assert_eq!(good.len(), 1);
    let parts_of = |name: &str| files_under(&place.path(format!("repo/seg-1/basebackups/{name}")));

    // backup-push killed mid-part, then between its last part and its
    // record: neither is listed; the next backup works.
    for point in ["backup-part:2", "backup-record"] {
        server.run_pgbench(&["-c", "2", "-t", "200", "-n"]);
        // backup-part:2 = the part's second batch (1 MiB) has reached the
        // encoder: the part is neither complete nor empty.
        let out = place.run(Some(&server), Some(point), &["backup-push"]);
        assert!(
            killed_at(&out, point),
            "{point}: {} {}",
            out.code,
            out.stderr
        );
        assert_eq!(place.backups(), good, "{point}: nothing new is listed");
    }
    server.run_pgbench(&["-c", "2", "-t", "200", "-n"]);
    place.ok(Some(&server), &["backup-push"]);
    let listed = place.backups();
    assert_eq!(listed.len(), 2, "{listed:?}");
    server.run_pgbench(&["-c", "2", "-t", "200", "-n"]);
    server.archive_everything();
    let committed = digest(&server);

    // restore killed mid-unpack: the directory holds no pg_control and
    // cannot start; a rerun into it is refused; --force restores it.
    let dir = place.path("restored");
    let out = place.run(
        None,
        Some("restore-unpack:50"),
        &["restore", "--target-dir", dir.to_str().unwrap()],
    );
    assert!(
        killed_at(&out, "restore-unpack"),
        "{} {}",
        out.code,
        out.stderr
    );
    assert!(dir.join("PG_VERSION").exists(), "the kill came mid-unpack");
    assert!(!dir.join("global/pg_control").exists());
    assert!(!starts(&dir), "a half-restored directory must not start");
    let out = place.run(
        None,
        None,
        &["restore", "--target-dir", dir.to_str().unwrap()],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("not empty"), "{}", out.stderr);
    assert!(!dir.join("global/pg_control").exists());
    assert_eq!(restore_and_digest(&place, &dir, &["--force"]), committed);

    // A backup into a full repository: exit 3 naming the cause, its
    // parts removed, nothing listed; WAL archiving is not affected.
    let full_place = Place::new("faults-backup-full", None);
    let mount = Tmpfs::mount(full_place.path("small"), "4m");
    full_place.on_tmpfs(&mount.path.join("repo"));
    let out = full_place.run(Some(&server), None, &["backup-push"]);
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("No space left on device"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("the upload stopped"), "{}", out.stderr);
    assert!(full_place.backups().is_empty());
    let backups_dir = mount.path.join("repo/seg-1/basebackups");
    assert!(backups_dir.is_dir(), "the backup had started storing parts");
    let left: Vec<_> = files_under(&backups_dir);
    assert!(left.is_empty(), "dead parts stay: {left:?}");
    assert!(temp_files(&mount.path).is_empty());
    drop(mount);

    // A restore target too small for the backup: exit 3 with the
    // numbers, before anything is written.
    let mount = Tmpfs::mount(place.path("tiny"), "8m");
    let target = mount.path.join("data");
    let out = place.run(
        None,
        None,
        &["restore", "--target-dir", target.to_str().unwrap()],
    );
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(
        out.stderr.contains("not enough free space") && out.stderr.contains("bytes"),
        "{}",
        out.stderr
    );
    assert!(files_under(&mount.path).is_empty(), "nothing written");
    drop(mount);

    // A listed backup with a missing part: exit 4 naming the backup.
    let newest = listed.last().unwrap().clone();
    let part = parts_of(&newest)
        .into_iter()
        .find(|p| p.to_string_lossy().contains("/parts/base/"))
        .expect("a part of the data directory");
    fs::remove_file(&part).unwrap();
    let dir = place.path("damaged");
    let out = place.run(
        None,
        None,
        &["restore", "--target-dir", dir.to_str().unwrap()],
    );
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains(&newest) && out.stderr.contains("damaged"),
        "{}",
        out.stderr
    );
    assert!(!dir.join("global/pg_control").exists());
}

// ---------------------------------------------------------------------
// Garage behind a proxy: down, stalled, and back.
// ---------------------------------------------------------------------

#[test]
fn storage_down_or_stalled_fails_clearly_and_archiving_catches_up() {
    let proxy = Proxy::start(&garage::garage().s3_addr());
    let mut target = garage::bucket("proxy");
    target.endpoint = proxy.endpoint();
    // Short deadlines and two attempts: a stall costs seconds, not minutes.
    let storage = format!(
        "{}max_attempts = 2\nconnect_timeout = 2\nrequest_timeout = 3\ntransfer_timeout = 5\n",
        target.config_toml("")
    );
    let place = Place::new("faults-proxy", Some(storage));
    let server = server_archiving_to(&place);
    server.run_pgbench(&["-i", "-s", "2", "-q"]);
    place.ok(Some(&server), &["backup-push"]);
    server.archive_everything();

    // Down under load: wal-push fails and PostgreSQL keeps the files.
    proxy.down();
    server.run_pgbench(&["-c", "2", "-t", "300", "-n"]);
    server.psql("select pg_switch_wal()");
    let failed = |s: &PgServer| {
        s.psql("select failed_count from pg_stat_archiver")
            .parse::<i64>()
            .unwrap_or(0)
    };
    common::wait_for("a failed wal-push", Duration::from_secs(60), || {
        let n = failed(&server);
        if n > 0 {
            Ok(())
        } else {
            Err(format!("failed_count {n}"))
        }
    });
    // Back: archiving catches up, and every segment arrives once.
    proxy.resume();
    server.run_pgbench(&["-c", "2", "-t", "100", "-n"]);
    server.archive_everything();
    let committed = digest(&server);

    // Stalled during backup-push and during restore: a clear error
    // within the deadlines, never a hang.
    proxy.stall();
    let out = place.run(Some(&server), None, &["backup-push"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("timed out") || out.stderr.contains(&proxy.endpoint()),
        "{}",
        out.stderr
    );
    let dir = place.path("stalled");
    let out = place.run(
        None,
        None,
        &["restore", "--target-dir", dir.to_str().unwrap()],
    );
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert!(!dir.join("global/pg_control").exists());
    proxy.resume();
    assert_eq!(place.backups().len(), 1, "the stalled backup is not listed");

    // A restore to latest has every committed row.
    let dir = place.path("latest");
    assert_eq!(restore_and_digest(&place, &dir, &[]), committed);
    // The next backup works.
    place.ok(Some(&server), &["backup-push"]);
}

// ---------------------------------------------------------------------
// A logical restore killed in the middle of a table.
// ---------------------------------------------------------------------

/// A digest of the two tables of the logical case, in database `db`.
fn tables_digest(server: &PgServer, db: &str) -> String {
    server.psql_db(
        db,
        "select (select count(*) || ' ' || md5(string_agg(id || ':' || v, ',' order by id)) from big) \
         || ' / ' || (select count(*) || ' ' || md5(string_agg(id || ':' || v, ',' order by id)) from small)",
    )
}

#[test]
fn gprestore_killed_mid_table_leaves_no_partial_table_and_the_rerun_works() {
    let place = Place::new("faults-gprestore", None);
    let server = PgServer::builder().start();
    server.psql("create database src");
    server.psql_db(
        "src",
        "create table big (id int primary key, v text);
         insert into big select g, md5(g::text) || md5((g * 3)::text) from generate_series(1, 200000) g;
         create table small (id int primary key, v text);
         insert into small select g, md5(g::text) from generate_series(1, 1000) g;",
    );
    let committed = tables_digest(&server, "src");
    let out = place.ok(Some(&server), &["gpbackup", "--dbname", "src"]);
    let ts = out
        .lines()
        .find_map(|l| l.strip_prefix("Backup Timestamp = "))
        .unwrap_or_else(|| panic!("no timestamp in: {out}"))
        .trim()
        .to_string();
    let restore = [
        "gprestore",
        "--timestamp",
        &ts,
        "--redirect-db",
        "dst",
        "--create-db",
    ];

    // (a) Killed at the third piece of rows sent: inside `big` (`small` is
    // one piece), whichever table goes first.
    let out = place.run(Some(&server), Some("gprestore-table:3"), &restore);
    assert!(
        killed_at(&out, "gprestore-table"),
        "{} {}",
        out.code,
        out.stderr
    );
    // No table holds part of its rows: a COPY commits whole or not at all.
    let big = server
        .try_psql_db("dst", "select count(*) from big")
        .unwrap_or_default();
    assert!(
        big.is_empty() || big == "0" || big == "200000",
        "big holds {big} of 200000 rows after the kill"
    );

    // The same command again is refused, naming the database and the fix,
    // and so is a restore without --create-db over the half-loaded tables:
    // never rows loaded twice.
    let out = place.run(Some(&server), None, &restore);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("\"dst\" already exists"),
        "{}",
        out.stderr
    );
    let out = place.run(
        Some(&server),
        None,
        &["gprestore", "--timestamp", &ts, "--redirect-db", "dst"],
    );
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("already exists"), "{}", out.stderr);

    // (b, c) The backup is untouched: dropped and restored again, the
    // database has every row; (d) so does a restore into a new database.
    server.psql("drop database dst with (force)");
    place.ok(Some(&server), &restore);
    assert_eq!(tables_digest(&server, "dst"), committed);
    place.ok(
        Some(&server),
        &[
            "gprestore",
            "--timestamp",
            &ts,
            "--redirect-db",
            "again",
            "--create-db",
        ],
    );
    assert_eq!(tables_digest(&server, "again"), committed);
}
