//! `wal-receive` end to end on real PostgreSQL 15 servers: WAL streamed
//! through a replication slot lands in the repository byte-identical to the
//! server's own segments, the slot never confirms more than is stored, it
//! runs side by side with archive_command, follows a timeline switch,
//! survives being killed and a server restart, and refuses a missing slot.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::pg::{pg_bin, pg_command, PgServer};
use common::{CbdrEnv, Key, Storage, CBDR};
const KEY_HEX: &str = "3a1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeef1";
/// The test servers' WAL segment size (initdb --wal-segsize=1).
const SEG: u64 = 1 << 20;
const SLOT: &str = "cbdr_test";
const WAIT: Duration = Duration::from_secs(120);

/// The shared environment (lz4, this file's key) and, on the filesystem,
/// its repository.
struct Setup {
    env: CbdrEnv,
    /// The filesystem repository, if that is the storage.
    fs_repo: Option<PathBuf>,
}

deref_env!(Setup, env);

fn setup(storage: Storage) -> Setup {
    let fs = matches!(storage, Storage::Fs);
    let env = CbdrEnv::builder("walrecv")
        .storage(storage)
        .key(Key::Raw(KEY_HEX.into()))
        .wal_segment_size(Some(SEG))
        .extra_toml("[compression]\nmethod = \"lz4\"\n")
        .build();
    let fs_repo = fs.then(|| env.repo());
    Setup { env, fs_repo }
}

impl Setup {
    /// Runs cbdr as the PostgreSQL OS user; (exit code, stdout, stderr).
    fn cbdr(&self, server: Option<&PgServer>, args: &[&str]) -> (i32, String, String) {
        self.cmd().pg(server).run(args).parts()
    }

    /// The archived file through `wal-fetch`; `None` when not archived.
    fn fetch(&self, name: &str) -> Option<Vec<u8>> {
        let dest = self.path(format!("fetched-{name}"));
        let (code, _, err) = self.cbdr(None, &["wal-fetch", name, dest.to_str().unwrap()]);
        match code {
            0 => {
                let data = fs::read(&dest).unwrap();
                fs::remove_file(&dest).unwrap();
                Some(data)
            }
            1 => None,
            _ => panic!("wal-fetch {name}: exit {code}: {err}"),
        }
    }

    /// Whether a WAL file is in the repository (a file check on the
    /// filesystem repository, `wal-fetch` otherwise).
    fn stored(&self, name: &str) -> bool {
        match &self.fs_repo {
            Some(repo) => wal_dir(repo, name).join(name).is_file(),
            None => self.fetch(name).is_some(),
        }
    }

    /// Starts `cbdr -v wal-receive` against `server` as the PostgreSQL OS
    /// user (directly, without an intermediate process, so that signals
    /// reach it).
    fn receiver(&self, server: &PgServer, extra: &[&str]) -> Receiver {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.path(format!("receiver-{n}.log"));
        let mut cmd = Command::new(CBDR);
        cmd.arg("--config")
            .arg(&self.config)
            .args([
                "-v",
                "wal-receive",
                "--slot",
                SLOT,
                "--status-interval",
                "1",
            ])
            .args(["--host", "127.0.0.1", "--user", "postgres", "--port"])
            .arg(server.port().to_string())
            .args(extra)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap());
        if common::is_root() {
            let owner = fs::metadata(self.dir.path()).unwrap();
            cmd.uid(owner.uid()).gid(owner.gid());
        }
        Receiver {
            child: cmd.spawn().expect("start cbdr wal-receive"),
            log,
        }
    }
}

/// The repository directory of a WAL file (see src/repo/layout.rs).
fn wal_dir(repo: &Path, name: &str) -> PathBuf {
    let wal = repo.join("seg-1/wal");
    if name.ends_with(".history") {
        wal.join("history")
    } else {
        wal.join(&name[..16])
    }
}

struct Receiver {
    child: Child,
    log: PathBuf,
}

impl Receiver {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    fn wait(&mut self) -> i32 {
        common::wait_for("wal-receive to stop", WAIT, || {
            match self.child.try_wait().unwrap() {
                Some(status) => Ok(status.code().unwrap_or(-1)),
                None => Err(self.log()),
            }
        })
    }

    /// SIGTERM: a clean stop; the exit code.
    fn terminate(mut self) -> (i32, String) {
        self.signal(libc::SIGTERM);
        let code = self.wait();
        (code, self.log())
    }

    /// SIGKILL: no chance to clean up.
    fn kill(mut self) -> String {
        self.signal(libc::SIGKILL);
        self.wait();
        self.log()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if self.running() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- wal-receive log ---\n{}", self.log());
        }
    }
}

/// [`common::wait_for`] a condition, with the receiver's log on timeout.
fn wait_for(what: &str, rx: Option<&Receiver>, mut cond: impl FnMut() -> bool) {
    common::wait_for(what, WAIT, || {
        if cond() {
            Ok(())
        } else {
            Err(format!(
                "not yet\n--- wal-receive log ---\n{}",
                rx.map(|r| r.log()).unwrap_or_default()
            ))
        }
    })
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.trim().split_once('/').expect("an LSN");
    u64::from_str_radix(hi, 16).unwrap() << 32 | u64::from_str_radix(lo, 16).unwrap()
}

/// The name of segment number `segno` on timeline `tli`.
fn seg_name(tli: u32, segno: u64) -> String {
    let per_log = 0x1_0000_0000 / SEG;
    format!("{tli:08X}{:08X}{:08X}", segno / per_log, segno % per_log)
}

fn current_segno(server: &PgServer) -> u64 {
    lsn(&server.psql("select pg_current_wal_lsn()")) / SEG
}

/// The segment the last checkpoint's redo point is in: where a slot
/// created now starts holding WAL.
fn redo_segno(server: &PgServer) -> u64 {
    lsn(&server.psql("select redo_lsn from pg_control_checkpoint()")) / SEG
}

fn slot_restart(server: &PgServer) -> Option<u64> {
    let v = server.psql(&format!(
        "select restart_lsn from pg_replication_slots where slot_name = '{SLOT}'"
    ));
    (!v.is_empty()).then(|| lsn(&v))
}

/// The slot (and the flush position the receiver reports) never runs ahead
/// of the repository: every segment before them, from `first` on, is
/// stored. Read before the repository, which only grows.
fn check_confirmed_is_stored(s: &Setup, server: &PgServer, tli: u32, first: u64) -> u64 {
    let flush = server.psql(
        "select coalesce(max(flush_lsn)::text, '') from pg_stat_replication where application_name = 'cbdr_wal_receive'",
    );
    let restart = slot_restart(server).unwrap_or(0);
    let confirmed = if flush.is_empty() {
        restart
    } else {
        restart.max(lsn(&flush))
    };
    for n in first..confirmed / SEG {
        assert!(
            s.stored(&seg_name(tli, n)),
            "the server was told {:X}/{:X} is flushed, but segment {} is not stored",
            confirmed >> 32,
            confirmed & 0xffff_ffff,
            seg_name(tli, n)
        );
    }
    confirmed
}

fn wait_streaming(server: &PgServer, rx: &Receiver) {
    wait_for("the receiver to stream", Some(rx), || {
        server.psql(
            "select count(*) from pg_stat_replication where application_name = 'cbdr_wal_receive' and state = 'streaming'",
        ) == "1"
    });
}

/// Inserts `rows` rows (about 150 bytes of WAL each) into table t.
fn insert(server: &PgServer, from: usize, rows: usize) {
    server.psql(&format!(
        "insert into t select g, md5(g::text) || repeat('x', g % 100) from generate_series({}, {}) g",
        from,
        from + rows - 1
    ));
}

fn table_digest(server: &PgServer) -> String {
    server.psql("select count(*) || ':' || md5(string_agg(id || payload, ',' order by id)) from t")
}

/// Every segment of `range` on timeline `tli` is archived, identical to the
/// file of the same name in `pg_wal` of `source`.
fn assert_archived_identical(
    s: &Setup,
    source: &Path,
    tli: u32,
    range: std::ops::RangeInclusive<u64>,
) -> usize {
    let mut compared = 0;
    for n in range {
        let name = seg_name(tli, n);
        let archived = s
            .fetch(&name)
            .unwrap_or_else(|| panic!("{name} is not archived"));
        assert_eq!(archived.len() as u64, SEG, "{name}");
        let original = source.join("pg_wal").join(&name);
        if let Ok(original) = fs::read(&original) {
            assert!(archived == original, "{name} differs from the server's");
            compared += 1;
        }
    }
    compared
}

fn new_server() -> PgServer {
    PgServer::builder()
        .initdb_arg("--wal-segsize=1")
        .conf("wal_keep_size = '256MB'")
        .start()
}

/// (1) A server without archive_command: the receiver alone archives its
/// WAL, a base backup waits for it, and a restore replays it.
fn streams_and_restores(storage: Storage, restore: bool) {
    let s = setup(storage);
    let server = new_server();
    let first = redo_segno(&server);
    let rx = s.receiver(&server, &["--create-slot"]);
    wait_streaming(&server, &rx);
    assert!(slot_restart(&server).is_some(), "no slot {SLOT}");

    server.psql("create table t (id int primary key, payload text)");
    let mut id = 1;
    for round in 0..8 {
        insert(&server, id, 4000);
        id += 4000;
        if round % 2 == 1 {
            server.psql("select pg_switch_wal()");
        }
        if s.fs_repo.is_some() {
            check_confirmed_is_stored(&s, &server, 1, first);
        }
    }
    if restore {
        // No archive_command: backup-push's wait for its WAL is served by
        // the receiver.
        let out = s.on(&server).ok(&["backup-push", "--wal-wait", "120"]);
        assert!(out.contains("complete"), "{out}");
        insert(&server, id, 4000);
    }
    let expected = table_digest(&server);
    server.psql("select pg_switch_wal()");
    let last = current_segno(&server) - 1;
    assert!(last >= first + 4, "only {first}..={last}");
    wait_for("the last segment to be stored", Some(&rx), || {
        s.stored(&seg_name(1, last))
    });
    // After storing it, the receiver tells the server, and the slot moves.
    wait_for("the slot to move past the last segment", Some(&rx), || {
        slot_restart(&server).unwrap() >= (last + 1) * SEG
    });
    if s.fs_repo.is_some() {
        check_confirmed_is_stored(&s, &server, 1, first);
    }
    let compared = assert_archived_identical(&s, server.data_dir(), 1, first..=last);
    assert!(compared as u64 > last - first, "compared {compared}");

    let (code, log) = rx.terminate();
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("ERROR"), "{log}");

    if restore {
        let dir = s.path("restored");
        let (code, _, err) = s.cbdr(
            None,
            &[
                "restore",
                "--target-dir",
                dir.to_str().unwrap(),
                "--archive-mode",
                "off",
            ],
        );
        assert_eq!(code, 0, "{err}");
        drop(server);
        let restored =
            PgServer::start_existing(&dir, PgServer::builder().conf("archive_mode = off"));
        restored.wait_for_recovery_end();
        assert_eq!(table_digest(&restored), expected);
    }
}

#[test]
fn receiver_alone_archives_every_segment_and_a_backup_restores_from_it() {
    streams_and_restores(Storage::Fs, true);
}

#[test]
fn receiver_archives_into_garage() {
    streams_and_restores(Storage::S3("cluster1".into()), false);
}

/// (2) Side by side with archive_command = wal-push: the same objects, no
/// conflict.
#[test]
fn receiver_and_archive_command_side_by_side() {
    let s = setup(Storage::Fs);
    let server = PgServer::builder()
        .initdb_arg("--wal-segsize=1")
        .conf("wal_keep_size = '256MB'")
        .conf("archive_mode = on")
        .conf(format!(
            "archive_command = '{CBDR} --config {} -v wal-push %p'",
            s.config.display()
        ))
        .start();
    let first = redo_segno(&server);
    let mut rx = s.receiver(&server, &["--create-slot"]);
    wait_streaming(&server, &rx);
    server.psql("create table t (id int primary key, payload text)");
    for round in 0..10 {
        insert(&server, round * 3000 + 1, 3000);
        server.psql("select pg_switch_wal()");
    }
    let last = current_segno(&server) - 1;
    // Both are done: the archiver has nothing left, the receiver has
    // confirmed the last segment.
    wait_for("the archiver", Some(&rx), || {
        fs::read_dir(server.data_dir().join("pg_wal/archive_status"))
            .unwrap()
            .filter_map(|e| e.ok())
            .all(|e| !e.file_name().to_string_lossy().ends_with(".ready"))
    });
    wait_for("the receiver", Some(&rx), || {
        slot_restart(&server).unwrap() >= (last + 1) * SEG
    });
    assert!(rx.running(), "the receiver stopped:\n{}", rx.log());
    assert_eq!(
        server.psql("select failed_count from pg_stat_archiver"),
        "0",
        "{}",
        server.log_tail()
    );

    // Each segment once, nothing else (no temp files left).
    let repo = s.fs_repo.as_ref().unwrap();
    let names: BTreeSet<String> = fs::read_dir(wal_dir(repo, &seg_name(1, first)))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for name in &names {
        assert!(
            name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit()),
            "unexpected object {name} in {names:?}"
        );
    }
    for n in first..=last {
        assert!(
            names.contains(&seg_name(1, n)),
            "{} missing",
            seg_name(1, n)
        );
    }
    assert_archived_identical(&s, server.data_dir(), 1, first..=last);

    // Neither took the other's segments for different content.
    let receiver_log = rx.log();
    let server_log = fs::read_to_string(server.log_path()).unwrap();
    for log in [&receiver_log, &server_log] {
        assert!(!log.contains("different content"), "{log}");
    }
    // Whether the two met on a segment above is down to timing (both start
    // when the segment completes): meet on one for certain by archiving a
    // segment the receiver stored once more, as archive_command would.
    let out = pg_command(CBDR)
        .arg("--config")
        .arg(&s.config)
        .args(["-v", "wal-push"])
        .arg(server.data_dir().join("pg_wal").join(seg_name(1, last)))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("already archived with the same content"),
        "wal-push did not recognise the received segment: {err}"
    );
    let (code, log) = rx.terminate();
    assert_eq!(code, 0, "{log}");
}

/// A standby of a new primary, with its own copy of the primary's WAL.
fn primary_and_standby(s: &Setup) -> (PgServer, PgServer) {
    let primary = new_server();
    primary.psql("create table t (id int primary key, payload text)");
    let dir = s.path("standby");
    primary.pg_basebackup(&dir, &["-X", "stream", "-R"]);
    let standby = PgServer::start_existing(&dir, PgServer::builder());
    wait_for("the standby to stream", None, || {
        primary.psql("select count(*) from pg_stat_replication where state = 'streaming'") == "1"
    });
    (primary, standby)
}

fn wait_replayed(primary: &PgServer, standby: &PgServer) {
    let target = lsn(&primary.psql("select pg_current_wal_lsn()"));
    wait_for("the standby to replay", None, || {
        lsn(&standby.psql("select pg_last_wal_replay_lsn()")) >= target
    });
}

/// (3) A slot whose position is on the old timeline: the receiver streams
/// the rest of timeline 1, stores 00000002.history, then timeline 2.
#[test]
fn receiver_follows_a_timeline_switch_from_an_old_slot_position() {
    let s = setup(Storage::Fs);
    let (primary, standby) = primary_and_standby(&s);
    let first = redo_segno(&standby);
    let base = s.path("base");
    primary.pg_basebackup(&base, &["-X", "none"]);

    // Some of timeline 1 through the standby, then the receiver dies.
    let rx = s.receiver(&standby, &["--create-slot"]);
    wait_streaming(&standby, &rx);
    for round in 0..3 {
        insert(&primary, round * 3000 + 1, 3000);
        primary.psql("select pg_switch_wal()");
    }
    let stored_before = current_segno(&primary) - 1;
    wait_for("timeline 1 segments", Some(&rx), || {
        s.stored(&seg_name(1, stored_before))
    });
    rx.kill();

    // More of timeline 1 the receiver has not seen; the switch falls in
    // the middle of a segment.
    for round in 3..6 {
        insert(&primary, round * 3000 + 1, 3000);
        primary.psql("select pg_switch_wal()");
    }
    insert(&primary, 18001, 1000);
    wait_replayed(&primary, &standby);
    drop(primary);
    standby.psql("select pg_promote()");
    standby.wait_for_recovery_end();
    standby.psql("checkpoint");
    assert_eq!(
        standby.psql("select timeline_id from pg_control_checkpoint()"),
        "2"
    );
    let history = fs::read(standby.data_dir().join("pg_wal/00000002.history")).unwrap();
    let switch = lsn(String::from_utf8_lossy(&history)
        .split_whitespace()
        .nth(1)
        .unwrap());
    assert_ne!(switch % SEG, 0, "the switch fell on a segment boundary");
    let switch_seg = switch / SEG;
    for round in 6..9 {
        insert(&standby, round * 3000 + 10001, 3000);
        standby.psql("select pg_switch_wal()");
    }
    let expected = table_digest(&standby);
    let last = current_segno(&standby) - 1;

    // Restarted after the promotion, from the slot's position on timeline 1.
    assert!(slot_restart(&standby).unwrap() < switch);
    let rx = s.receiver(&standby, &[]);
    wait_for("timeline 2 segments", Some(&rx), || {
        s.stored(&seg_name(2, last))
    });
    wait_for("the slot to move", Some(&rx), || {
        slot_restart(&standby).unwrap() >= (last + 1) * SEG
    });
    assert_eq!(s.fetch("00000002.history").unwrap(), history);
    // Timeline 1 up to the segment of the switch (that one is complete only
    // on timeline 2), then timeline 2: all of it as the servers have it.
    // The standby received timeline 1 from the primary byte for byte.
    let compared = assert_archived_identical(&s, standby.data_dir(), 1, first..=switch_seg - 1);
    assert_eq!(compared as u64, switch_seg - first);
    assert!(!s.stored(&seg_name(1, switch_seg)));
    let compared = assert_archived_identical(&s, standby.data_dir(), 2, switch_seg..=last);
    assert_eq!(compared as u64, last - switch_seg + 1);
    let (code, log) = rx.terminate();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("following timeline 2"), "{log}");

    // A base backup of the primary taken before the receiver started
    // recovers through the archive, across the switch, to the latest data.
    drop(standby);
    fs::write(base.join("recovery.signal"), "").unwrap();
    let restore = format!("{CBDR} --config {} wal-fetch %f %p", s.config.display());
    let restored = PgServer::start_existing(
        &base,
        PgServer::builder()
            .conf(format!("restore_command = '{restore}'"))
            .conf("archive_mode = off"),
    );
    restored.wait_for_recovery_end();
    assert_eq!(table_digest(&restored), expected);
    restored.psql("checkpoint");
    assert_eq!(
        restored.psql("select timeline_id from pg_control_checkpoint()"),
        "3",
        "recovery did not follow timeline 2"
    );
}

/// (3b) A standby promoted while the receiver streams from it: the stream
/// of timeline 1 ends at the switch and the receiver goes on with 2.
#[test]
fn receiver_follows_a_standby_promoted_while_streaming() {
    let s = setup(Storage::Fs);
    let (primary, standby) = primary_and_standby(&s);
    let first = redo_segno(&standby);
    let rx = s.receiver(&standby, &["--create-slot"]);
    wait_streaming(&standby, &rx);
    for round in 0..3 {
        insert(&primary, round * 3000 + 1, 3000);
        primary.psql("select pg_switch_wal()");
    }
    insert(&primary, 9001, 1000);
    wait_replayed(&primary, &standby);
    drop(primary);
    standby.psql("select pg_promote()");
    standby.wait_for_recovery_end();
    for round in 4..7 {
        insert(&standby, round * 3000 + 1, 3000);
        standby.psql("select pg_switch_wal()");
    }
    let last = current_segno(&standby) - 1;
    wait_for("timeline 2 segments", Some(&rx), || {
        s.stored(&seg_name(2, last))
    });
    let history = fs::read(standby.data_dir().join("pg_wal/00000002.history")).unwrap();
    assert_eq!(s.fetch("00000002.history").unwrap(), history);
    let switch = lsn(String::from_utf8_lossy(&history)
        .split_whitespace()
        .nth(1)
        .unwrap());
    // Timeline 1 up to the segment holding the switch, timeline 2 from it.
    let switch_seg = switch / SEG;
    assert_archived_identical(&s, standby.data_dir(), 1, first..=switch_seg - 1);
    assert_archived_identical(&s, standby.data_dir(), 2, switch_seg..=last);
    let (code, log) = rx.terminate();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("following timeline 2"), "{log}");
    // Followed on the same connection, not by reconnecting.
    assert!(!log.contains("again"), "{log}");
}

/// (4) Killed mid-stream and restarted, then the server restarts under
/// it: no gap, no conflict, the slot held the WAL meanwhile.
#[test]
fn receiver_killed_and_server_restarted_leave_no_gap() {
    let s = setup(Storage::Fs);
    // No wal_keep_size: only the slot keeps WAL for the receiver.
    let mut server = PgServer::builder()
        .initdb_arg("--wal-segsize=1")
        .conf("min_wal_size = '2MB'")
        .conf("max_wal_size = '16MB'")
        .start();
    let first = redo_segno(&server);
    let rx = s.receiver(&server, &["--create-slot"]);
    wait_streaming(&server, &rx);
    server.psql("create table t (id int primary key, payload text)");
    for round in 0..3 {
        insert(&server, round * 3000 + 1, 3000);
        server.psql("select pg_switch_wal()");
    }
    // Killed while WAL flows.
    let writer = pg_command(pg_bin("psql"))
        .args(["-XAtq", "-h", "127.0.0.1", "-U", "postgres", "-p"])
        .arg(server.port().to_string())
        .args([
            "-c",
            "insert into t select g, md5(g::text) from generate_series(9001, 60000) g",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    rx.kill();
    assert!(writer.wait_with_output().unwrap().status.success());

    // While nobody receives, the slot holds the WAL through checkpoints.
    for round in 20..24 {
        insert(&server, round * 3000 + 1, 3000);
        server.psql("select pg_switch_wal()");
        server.psql("checkpoint");
    }
    let held = slot_restart(&server).unwrap() / SEG;
    for n in held..current_segno(&server) {
        assert!(
            server
                .data_dir()
                .join("pg_wal")
                .join(seg_name(1, n))
                .exists(),
            "{} was removed although the slot holds it",
            seg_name(1, n)
        );
    }

    let rx = s.receiver(&server, &[]);
    let last = current_segno(&server) - 1;
    wait_for("the backlog", Some(&rx), || s.stored(&seg_name(1, last)));
    check_confirmed_is_stored(&s, &server, 1, first);

    // The server restarts under the receiver, which reconnects.
    server.restart();
    for round in 30..33 {
        insert(&server, round * 3000 + 1, 3000);
        server.psql("select pg_switch_wal()");
    }
    let last = current_segno(&server) - 1;
    wait_for("the segments after the restart", Some(&rx), || {
        s.stored(&seg_name(1, last))
    });
    wait_for("the slot to move", Some(&rx), || {
        slot_restart(&server).unwrap() >= (last + 1) * SEG
    });
    check_confirmed_is_stored(&s, &server, 1, first);
    for n in first..=last {
        assert!(s.stored(&seg_name(1, n)), "gap at {}", seg_name(1, n));
    }
    assert_archived_identical(&s, server.data_dir(), 1, first..=last);
    let (code, log) = rx.terminate();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("again"), "no reconnection logged:\n{log}");
    assert!(!log.contains("different content"), "{log}");
}

/// A connection that goes silent (the server's WAL sender stopped, as
/// behind a broken network) is given up and established again.
#[test]
fn receiver_gives_up_a_silent_connection() {
    let s = setup(Storage::Fs);
    let server = new_server();
    let first = redo_segno(&server);
    let rx = s.receiver(&server, &["--create-slot"]);
    wait_streaming(&server, &rx);
    let pid: i32 = server
        .psql("select pid from pg_stat_replication where application_name = 'cbdr_wal_receive'")
        .parse()
        .unwrap();
    struct Stopped(i32);
    impl Drop for Stopped {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the server's WAL sender process.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }
    // SAFETY: kill(2) on the server's WAL sender process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let stopped = Stopped(pid);
    wait_for("the receiver to give up", Some(&rx), || {
        rx.log().contains("the connection seems dead")
    });
    // Released, the old WAL sender finds its connection closed and frees
    // the slot; the receiver, retrying, gets it back.
    drop(stopped);
    server.psql("create table t (id int primary key, payload text)");
    insert(&server, 1, 3000);
    server.psql("select pg_switch_wal()");
    let last = current_segno(&server) - 1;
    wait_for("the segments after the reconnection", Some(&rx), || {
        s.stored(&seg_name(1, last))
    });
    for n in first..=last {
        assert!(s.stored(&seg_name(1, n)), "gap at {}", seg_name(1, n));
    }
    let (code, log) = rx.terminate();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("again"), "{log}");
}

/// (5) No slot and no --create-slot: a clear error, at once.
#[test]
fn missing_slot_is_a_clear_error() {
    let s = setup(Storage::Fs);
    let server = new_server();
    let (code, _, err) = s.cbdr(Some(&server), &["wal-receive", "--slot", "no_such_slot"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no_such_slot") && err.contains("does not exist"),
        "{err}"
    );
    assert!(err.contains("--create-slot"), "{err}");
    let (code, _, err) = s.cbdr(Some(&server), &["wal-receive", "--slot", "Bad-Name"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("slot name"), "{err}");
    assert_eq!(
        server.psql("select count(*) from pg_replication_slots"),
        "0",
        "a slot was created"
    );
}

/// READ_REPLICATION_SLOT (PostgreSQL 15+) and the pg_replication_slots
/// query used for older servers agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_lookups_agree() {
    use cbdr::pg::conn::{ConnParams, PgConn, Replication};
    use cbdr::pg::replication as repl;
    let server = new_server();
    let mut params = ConnParams::from_env();
    params.host = "127.0.0.1".into();
    params.port = server.port();
    params.user = "postgres".into();
    params.dbname = "postgres".into();
    let mut rep = PgConn::connect(&params, Replication::Physical)
        .await
        .unwrap();
    let mut sql = PgConn::connect(&params, Replication::Off).await.unwrap();
    assert_eq!(
        repl::read_replication_slot(&mut rep, "s1").await.unwrap(),
        None
    );
    assert_eq!(
        repl::query_replication_slot(&mut sql, "s1").await.unwrap(),
        None
    );
    assert!(repl::create_physical_slot(&mut rep, "s1").await.unwrap());
    assert!(!repl::create_physical_slot(&mut rep, "s1").await.unwrap());
    let a = repl::read_replication_slot(&mut rep, "s1")
        .await
        .unwrap()
        .unwrap();
    let b = repl::query_replication_slot(&mut sql, "s1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a.slot_type, "physical");
    assert_eq!(a.slot_type, b.slot_type);
    assert!(a.restart_lsn.is_some());
    assert_eq!(a.restart_lsn, b.restart_lsn);
    assert_eq!(a.restart_tli.map(|t| t.0), Some(1));
    let ident = repl::identify_system(&mut rep).await.unwrap();
    assert_eq!(ident.timeline.0, 1);
    assert!(ident.xlogpos >= a.restart_lsn.unwrap());
}
