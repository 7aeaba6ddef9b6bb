//! Recovery never promotes past a fault in the archive (issue 13, "found by
//! trying" items 1 and 9).
//!
//! One PostgreSQL 15 server (1 MiB WAL segments) archives into an fs
//! repository: a base backup, then committed rows over several segments,
//! then it stops. Each case works on its own copy of that repository, puts
//! one fault into it and restores to the latest WAL with `--start`, then
//! checks that:
//! (a) the restore fails naming what failed;
//! (b) the restored server did not promote: it stopped FATAL with
//!     recovery.signal still there, no timeline 2 is in the archive, and
//!     `cbdr list --json` lists what it listed before;
//! (c) once the fault is repaired, starting the same server again resumes
//!     recovery and ends with every committed row (a digest of the table);
//! (d) the next ordinary run works: the promoted server archives a new
//!     timeline, and wal-fetch restores its segment.
//! Storage outages are also tried on one object (EACCES mid-recovery), on a
//! whole unreadable repository and on an S3 endpoint nobody listens on;
//! holes and swapped objects on Garage, through wal-fetch directly.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::pg::{chown_to_pg, pg_command, PgServer};
use common::{wait_for, CbdrEnv, Cmd, CBDR};
use serde_json::Value;
const SEG: u64 = 1 << 20;
const GROUP: &str = "seg-1/wal/0000000100000000";

/// The archived source: created once per test binary.
struct Source {
    _env: CbdrEnv,
    repo: PathBuf,
    /// count:md5 of the table, as committed.
    digest: String,
    /// Timeline 1 segments archived after the base backup ended, in order.
    after_backup: Vec<String>,
    /// The `cbdr list --json` backups of the source repository.
    backups: Vec<String>,
}

/// The shared environment: an fs repository, 1 MiB segments, and a fetch
/// retry budget of 3 s; the repository made unless `init` is false.
fn env(name: &str, init: bool) -> CbdrEnv {
    CbdrEnv::builder(name)
        .wal_segment_size(None)
        .extra_toml("[archive]\nwal_segment_size = 1048576\nfetch_retry_budget = 3\n")
        .init(init)
        .build()
}

/// Runs cbdr as the PostgreSQL OS user with `config` (also in
/// `CBDR_CONFIG`); exit code, stdout, stderr.
fn cbdr(config: &Path, args: &[&str]) -> (i32, String, String) {
    Cmd::new(config)
        .env("CBDR_CONFIG", config)
        .run(args)
        .parts()
}

fn digest(server: &PgServer) -> String {
    server.psql("select count(*) || ':' || md5(string_agg(id || ',' || v, ';' order by id)) from t")
}

/// Waits until the server archived the segment `lsn` is in (after a switch).
fn wait_archived(server: &PgServer, segment: &str) {
    wait_for(
        &format!("{segment} to be archived"),
        Duration::from_secs(60),
        || {
            let (last, failed) = server
                .psql("select coalesce(last_archived_wal, ''), failed_count from pg_stat_archiver")
                .split_once('|')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .unwrap();
            if last.as_str() >= segment && last.len() == 24 {
                Ok(())
            } else {
                Err(format!("last archived {last:?}, {failed} failures"))
            }
        },
    )
}

fn switch_wal(server: &PgServer) -> String {
    server.psql("select pg_walfile_name(pg_switch_wal())")
}

fn list_json(config: &Path) -> Value {
    let (code, out, err) = cbdr(config, &["list", "--json", "--content-id", "-1"]);
    assert_eq!(code, 0, "list: {err}");
    serde_json::from_str(&out).unwrap()
}

fn backup_names(listing: &Value) -> Vec<String> {
    listing["segments"][0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

fn timelines(listing: &Value) -> Vec<u64> {
    listing["segments"][0]["wal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["timeline"].as_u64().unwrap())
        .collect()
}

fn source() -> &'static Source {
    static SOURCE: OnceLock<Source> = OnceLock::new();
    SOURCE.get_or_init(|| {
        let env = env("recovery-faults-src", true);
        let repo = env.repo();
        let config = env.config.clone();
        // archive_command without --config: each restored copy archives
        // where its own CBDR_CONFIG says (its case's repository).
        let mut server = PgServer::builder()
            .initdb_arg("--wal-segsize=1")
            .conf("archive_mode = on")
            .conf(format!("archive_command = '{CBDR} wal-push %p'"))
            .env("CBDR_CONFIG", &config)
            .start();
        server.psql("create table t (id int primary key, v text)");
        server.psql("insert into t select g, md5(g::text) from generate_series(1, 1000) g");
        env.on(&server).ok(&["backup-push"]);
        let backup_end = switch_wal(&server);
        // Committed rows over several segments after the backup.
        let mut last = backup_end.clone();
        for batch in 0..6 {
            let from = 1001 + batch * 3000;
            server.psql(&format!(
                "insert into t select g, md5(g::text) || repeat('x', 100) from generate_series({from}, {}) g",
                from + 2999
            ));
            last = switch_wal(&server);
        }
        wait_archived(&server, &last);
        let digest = digest(&server);
        server.stop();
        drop(server);

        let mut after_backup: Vec<String> = fs::read_dir(repo.join(GROUP))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.len() == 24 && n.as_str() > backup_end.as_str())
            .collect();
        after_backup.sort();
        assert!(
            after_backup.len() >= 6,
            "only {after_backup:?} archived after the backup"
        );
        let backups = backup_names(&list_json(&config));
        assert_eq!(backups.len(), 1, "{backups:?}");
        Source {
            _env: env,
            repo,
            digest,
            after_backup,
            backups,
        }
    })
}

/// One fault: a copy of the source repository and a config for it.
struct Case {
    env: CbdrEnv,
    repo: PathBuf,
    config: PathBuf,
}

impl Case {
    fn new(name: &str) -> Case {
        let src = source();
        let env = env(&format!("recovery-faults-{name}"), false);
        let repo = env.repo();
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&src.repo)
            .arg(&repo)
            .status()
            .unwrap();
        assert!(status.success());
        chown_to_pg(env.dir.path());
        let config = env.config.clone();
        Case { env, repo, config }
    }

    fn object(&self, segment: &str) -> PathBuf {
        self.repo.join(GROUP).join(segment)
    }

    /// Puts the source's object of `segment` back.
    fn repair(&self, segment: &str) {
        let original = source().repo.join(GROUP).join(segment);
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&original)
            .arg(self.object(segment))
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn data_dir(&self, name: &str) -> PathBuf {
        self.env.path(name)
    }

    /// `cbdr restore` to the latest WAL, started: exit code and stderr.
    fn restore_start(&self, name: &str, extra: &[&str]) -> (i32, String) {
        let dir = self.data_dir(name);
        let port = common::free_port().to_string();
        let mut args = vec![
            "restore",
            "--target-dir",
            dir.to_str().unwrap(),
            "--start",
            "--port",
            &port,
            "--start-timeout",
            "180",
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = cbdr(&self.config, &args);
        (code, format!("{out}{err}"))
    }

    /// (b): the restored server in `dir` stopped in recovery, did not
    /// promote, and the repository lists what it did before.
    fn assert_not_promoted(&self, dir: &Path) {
        let pid_file = dir.join("postmaster.pid");
        wait_for(
            "the restored server to stop",
            Duration::from_secs(60),
            || match fs::read_to_string(&pid_file) {
                Ok(text) => {
                    let pid: u32 = text
                        .lines()
                        .next()
                        .unwrap_or("")
                        .trim()
                        .parse()
                        .unwrap_or(0);
                    if common::process_alive(pid) {
                        Err(format!("postmaster {pid} still running"))
                    } else {
                        Ok(())
                    }
                }
                Err(_) => Ok(()),
            },
        );
        assert!(dir.join("recovery.signal").exists(), "it promoted");
        let log = fs::read_to_string(dir.join("cbdr-start.log")).unwrap_or_default();
        assert!(!log.contains("selected new timeline ID"), "{log}");
        assert!(!log.contains("archive recovery complete"), "{log}");
        assert!(
            !self
                .repo
                .join("seg-1/wal/history/00000002.history")
                .exists(),
            "a new timeline was archived"
        );
        let listing = list_json(&self.config);
        assert_eq!(backup_names(&listing), source().backups);
        assert_eq!(timelines(&listing), vec![1]);
    }

    /// (c) and (d): starts the stopped server again (the fault repaired):
    /// recovery resumes and ends with every committed row; then the
    /// promoted server archives timeline 2 and wal-fetch restores it.
    fn resume_and_check(&self, dir: &Path) {
        let mut server = PgServer::builder()
            .env("CBDR_CONFIG", &self.config)
            .prepare_existing(dir);
        server.start();
        wait_for("recovery to end", Duration::from_secs(120), || match server
            .try_psql("select pg_is_in_recovery()")
        {
            Ok(v) if v == "f" => Ok(()),
            other => Err(format!("{other:?}")),
        });
        assert_eq!(digest(&server), source().digest, "committed rows lost");
        server.psql("insert into t values (0, 'after the repair')");
        let seg = switch_wal(&server);
        assert!(seg.starts_with("00000002"), "{seg}");
        wait_archived(&server, &seg);
        let dest = self.env.path("fetched");
        let (code, _, err) = cbdr(&self.config, &["wal-fetch", &seg, dest.to_str().unwrap()]);
        assert_eq!(code, 0, "wal-fetch {seg}: {err}");
        assert_eq!(fs::metadata(&dest).unwrap().len(), SEG);
        assert_eq!(timelines(&list_json(&self.config)), vec![1, 2]);
    }
}

/// The segment each fault goes into: in the middle of the WAL after the
/// backup, with committed rows after it.
fn middle() -> (String, String) {
    let a = &source().after_backup;
    (a[2].clone(), a[3].clone())
}

#[test]
fn a_flipped_byte_stops_recovery_and_it_resumes_once_repaired() {
    let case = Case::new("flip");
    let (m, _) = middle();
    let path = case.object(&m);
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    fs::write(&path, &bytes).unwrap();

    let (code, out) = case.restore_start("data", &[]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains(&m) && out.contains("corrupted"), "{out}");
    assert!(out.contains("exit status 132"), "{out}");
    case.assert_not_promoted(&case.data_dir("data"));

    case.repair(&m);
    case.resume_and_check(&case.data_dir("data"));
}

#[test]
fn two_segments_swapped_by_name_are_refused_by_their_page_headers() {
    let case = Case::new("swap");
    let (m, n) = middle();
    let tmp = case.object("swap.tmp");
    fs::rename(case.object(&m), &tmp).unwrap();
    fs::rename(case.object(&n), case.object(&m)).unwrap();
    fs::rename(&tmp, case.object(&n)).unwrap();

    let (code, out) = case.restore_start("data", &[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&m) && out.contains("not the WAL segment") && out.contains(&n),
        "{out}"
    );
    assert!(out.contains("exit status 132"), "{out}");
    case.assert_not_promoted(&case.data_dir("data"));

    case.repair(&m);
    case.repair(&n);
    case.resume_and_check(&case.data_dir("data"));
}

#[test]
fn a_deleted_segment_is_a_hole_not_the_end_of_the_archive() {
    let case = Case::new("hole");
    let (m, n) = middle();
    fs::remove_file(case.object(&m)).unwrap();

    let (code, out) = case.restore_start("data", &[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{m} is missing from the archive")) && out.contains(&n),
        "{out}"
    );
    assert!(out.contains("exit status 129"), "{out}");
    case.assert_not_promoted(&case.data_dir("data"));

    case.repair(&m);
    case.resume_and_check(&case.data_dir("data"));

    // Across timelines, with the history file PostgreSQL wrote at that
    // promotion: timeline 1 ended before the segment after its last
    // archived one, so an old primary's later timeline-1 WAL there does not
    // make the gap before it a hole ...
    assert!(case
        .repo
        .join("seg-1/wal/history/00000002.history")
        .exists());
    let last = source().after_backup.last().unwrap();
    let n = u64::from_str_radix(&last[16..], 16).unwrap();
    let past = |k: u64| format!("{}{:08X}", &last[..16], n + k);
    let work = case.env.path("old-primary");
    fs::create_dir_all(work.join("archive_status")).unwrap();
    fs::write(work.join(past(3)), fake_segment(&past(3))).unwrap();
    chown_to_pg(&work);
    let (code, _, err) = cbdr(
        &case.config,
        &["wal-push", work.join(past(3)).to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let dest = work.join("RECOVERYXLOG");
    let (code, _, err) = cbdr(
        &case.config,
        &["wal-fetch", &past(2), dest.to_str().unwrap()],
    );
    assert_eq!((code, err.as_str()), (1, ""), "{}", past(2));
    // ... while a segment timeline 1 still needed is one.
    fs::remove_file(case.object(&m)).unwrap();
    let (code, _, err) = cbdr(&case.config, &["wal-fetch", &m, dest.to_str().unwrap()]);
    assert_eq!(code, 129, "{err}");
    assert!(err.contains(&n_after(&m)), "{err}");
}

/// The name of the segment after `name` (same log, 1 MiB segments).
fn n_after(name: &str) -> String {
    let n = u64::from_str_radix(&name[16..], 16).unwrap();
    format!("{}{:08X}", &name[..16], n + 1)
}

#[test]
fn an_unreadable_object_is_retried_then_stops_recovery() {
    let case = Case::new("eacces");
    let (m, _) = middle();
    // restore_command runs as the postgres OS user: a 000 object is
    // unreadable to it (EACCES, a storage failure, not "not found").
    fs::set_permissions(case.object(&m), fs::Permissions::from_mode(0o000)).unwrap();

    let (code, out) = case.restore_start("data", &[]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains(&m) && out.contains("ermission denied"),
        "{out}"
    );
    assert!(out.contains("exit status 131"), "{out}");
    let log = fs::read_to_string(case.data_dir("data").join("cbdr-start.log")).unwrap();
    assert!(
        log.contains(&format!("wal-fetch {m}:")) && log.contains("retrying in"),
        "no retry logged:\n{log}"
    );
    assert!(log.contains("fetch_retry_budget"), "{log}");
    case.assert_not_promoted(&case.data_dir("data"));

    fs::set_permissions(case.object(&m), fs::Permissions::from_mode(0o600)).unwrap();
    case.resume_and_check(&case.data_dir("data"));
}

/// A WAL file whose records were zeroed after its first page, stored as a
/// valid object: wal-fetch cannot tell, PostgreSQL reads it as the end of
/// WAL and promotes; `restore --start` sees replay did not reach the end of
/// the archive, says so and stops the server.
#[test]
fn a_restore_to_latest_that_ends_before_the_archive_does_is_reported() {
    let case = Case::new("zeroed");
    let (m, _) = middle();
    let work = case.env.path("work");
    fs::create_dir_all(work.join("archive_status")).unwrap();
    chown_to_pg(&work);
    let file = work.join(&m);
    let (code, _, err) = cbdr(&case.config, &["wal-fetch", &m, file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let mut wal = fs::read(&file).unwrap();
    wal[8192..].fill(0);
    fs::write(&file, &wal).unwrap();
    fs::remove_file(case.object(&m)).unwrap();
    let (code, _, err) = cbdr(&case.config, &["wal-push", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    let (code, out) = case.restore_start("data", &["--archive-mode", "off"]);
    assert_eq!(code, 4, "{out}");
    let last = source().after_backup.last().unwrap();
    assert!(
        out.contains("recovery ended at") && out.contains(last) && out.contains("stopped"),
        "{out}"
    );
    let dir = case.data_dir("data");
    wait_for(
        "the promoted server to be stopped",
        Duration::from_secs(60),
        || {
            if dir.join("postmaster.pid").exists() {
                Err("postmaster.pid is still there".into())
            } else {
                Ok(())
            }
        },
    );

    // Repaired, a new restore recovers every committed row.
    case.repair(&m);
    let (code, out) = case.restore_start("again", &["--archive-mode", "off"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("promoted"), "{out}");
    // cbdr started it on its own port: stop it, then start it through the
    // fixture (which stops it at the end).
    let out = pg_command(common::pg::pg_bin("pg_ctl"))
        .arg("-D")
        .arg(case.data_dir("again"))
        .args(["stop", "-m", "fast", "-w"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut server = PgServer::builder().prepare_existing(&case.data_dir("again"));
    server.start();
    assert_eq!(digest(&server), source().digest);
}

#[test]
fn an_unreadable_repository_or_a_dead_s3_endpoint_exits_131_after_retrying() {
    let case = Case::new("down");
    let (m, _) = middle();
    let dest_dir = case.env.path("pg_wal");
    fs::create_dir(&dest_dir).unwrap();
    chown_to_pg(&dest_dir);
    let dest = dest_dir.join("RECOVERYXLOG");

    fs::set_permissions(&case.repo, fs::Permissions::from_mode(0o000)).unwrap();
    let (code, _, err) = cbdr(&case.config, &["wal-fetch", &m, dest.to_str().unwrap()]);
    fs::set_permissions(&case.repo, fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(code, 131, "{err}");
    assert!(err.contains("ermission denied"), "{err}");
    assert!(err.contains("retrying in"), "{err}");
    assert!(
        err.contains("rather than") && err.contains("recovery resumes"),
        "{err}"
    );
    assert!(!dest.exists());
    // Readable again: the same call restores the file.
    let (code, _, err) = cbdr(&case.config, &["wal-fetch", &m, dest.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    // S3 where nothing listens, a 2 s budget: 131, the endpoint named, no
    // secret in the message.
    let port = common::free_port();
    let s3 = case.env.path("s3.toml");
    fs::write(
        &s3,
        format!(
            "[storage]\ntype = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:{port}\"\nregion = \"x\"\naccess_key_id = \"GKdead\"\nsecret_access_key = \"very-secret-value\"\nmax_attempts = 1\n[archive]\nfetch_retry_budget = 2\n"
        ),
    )
    .unwrap();
    chown_to_pg(&s3);
    let (code, _, err) = cbdr(&s3, &["wal-fetch", &m, dest.to_str().unwrap()]);
    assert_eq!(code, 131, "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("stops recovery"), "{err}");
    assert!(!err.contains("very-secret-value"), "{err}");
}

/// The long page header of segment `name` (1 MiB segments), then filler.
fn fake_segment(name: &str) -> Vec<u8> {
    let part = |i: usize| u64::from_str_radix(&name[i..i + 8], 16).unwrap();
    let mut data = vec![0x5au8; SEG as usize];
    let mut h = Vec::new();
    h.extend_from_slice(&0xD110u16.to_le_bytes());
    h.extend_from_slice(&0x0002u16.to_le_bytes());
    h.extend_from_slice(&(part(0) as u32).to_le_bytes());
    h.extend_from_slice(&((part(8) << 32) + part(16) * SEG).to_le_bytes());
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&42u64.to_le_bytes());
    h.extend_from_slice(&(SEG as u32).to_le_bytes());
    h.extend_from_slice(&8192u32.to_le_bytes());
    data[..h.len()].copy_from_slice(&h);
    data
}

#[tokio::test]
async fn on_garage_a_hole_exits_129_a_swap_132_and_the_end_1() {
    use cbdr::storage::{body_from_bytes, get_bytes, S3Storage, Storage};
    let env = CbdrEnv::builder("recovery-faults-garage")
        .storage(common::Storage::S3("c".into()))
        .wal_segment_size(None)
        .extra_toml("[archive]\nwal_segment_size = 1048576\nfetch_retry_budget = 2\nfetch_concurrency = 1\n")
        .build();
    let target = env.s3.clone().unwrap();
    let config = env.config.clone();
    let dir = &env.dir;
    let wal = dir.path().join("pg_wal");
    fs::create_dir_all(wal.join("archive_status")).unwrap();
    let names: Vec<String> = (1..=4)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    for n in &names {
        fs::write(wal.join(n), fake_segment(n)).unwrap();
    }
    chown_to_pg(dir.path());
    for n in &names {
        let (code, _, err) = cbdr(&config, &["wal-push", wal.join(n).to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
    }
    let cfg = cbdr::config::Config::parse(&target.config_toml("c")).unwrap();
    let s3 = S3Storage::new(&cfg.storage).await.unwrap();
    let key = |n: &str| format!("{GROUP}/{n}");
    let out = dir.path().join("restored");
    fs::create_dir(&out).unwrap();
    chown_to_pg(&out);
    let fetch = |n: &str| {
        let dest = out.join(n);
        let (code, _, err) = cbdr(&config, &["wal-fetch", n, dest.to_str().unwrap()]);
        (code, err, dest)
    };

    // Segment 2 deleted: a hole before 3.
    let second = get_bytes(&s3, &key(&names[1])).await.unwrap();
    s3.delete(&key(&names[1])).await.unwrap();
    let (code, err, dest) = fetch(&names[1]);
    assert_eq!(code, 129, "{err}");
    assert!(
        err.contains(&format!("{} is missing from the archive", names[1]))
            && err.contains(&names[2]),
        "{err}"
    );
    assert!(
        err.contains("waiting for it") || err.contains("retrying in"),
        "{err}"
    );
    assert!(!dest.exists());
    // Past the last segment: the end of the archive, quietly.
    let (code, err, _) = fetch("000000010000000000000005");
    assert_eq!((code, err.as_str()), (1, ""));

    // Segment 3's object under segment 2's name: refused by its header.
    let third = get_bytes(&s3, &key(&names[2])).await.unwrap();
    s3.put(&key(&names[1]), body_from_bytes(third))
        .await
        .unwrap();
    let (code, err, dest) = fetch(&names[1]);
    assert_eq!(code, 132, "{err}");
    assert!(
        err.contains("not the WAL segment") && err.contains(&names[2]),
        "{err}"
    );
    assert!(!dest.exists());

    // Repaired: restored byte for byte.
    s3.put(&key(&names[1]), body_from_bytes(second))
        .await
        .unwrap();
    let (code, err, dest) = fetch(&names[1]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read(dest).unwrap(), fake_segment(&names[1]));
}
