//! Throw-away PostgreSQL 15 servers for integration tests.
//!
//! ```ignore
//! let pg = PgServer::builder()
//!     .conf("archive_mode = on")
//!     .conf(format!("archive_command = '{} archive-push %p'", cbdr))
//!     .env("CBDR_CONFIG", &config_path)
//!     .start();
//! assert_eq!(pg.psql("select 1"), "1");
//! ```
//!
//! initdb and postgres refuse to run as root, so when the tests run as root
//! every PostgreSQL program (and `psql`) runs as the OS user `postgres`
//! through `runuser`; otherwise as the current user. The database superuser
//! is always `postgres` and authentication is `trust`.
//!
//! Each server lives in a fresh directory under /tmp owned by that user:
//! `data/` (unless started from an existing data directory), `server.log`
//! and the Unix socket. Dropping the server stops it (`-m immediate`) and
//! removes that directory, also when the test panicked; a small `sh`
//! watchdog does the same if the test process dies without unwinding.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

use super::{file_tail, free_port, is_root, process_alive};

/// Seconds `pg_ctl` waits for a start or stop.
const PG_CTL_TIMEOUT: &str = "120";

/// Settings written to every new server's postgresql.conf, before the
/// builder's own lines (later lines win).
const DEFAULT_CONF: &str = "\
# --- cbdr test fixture defaults ---
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
fsync = off
shared_buffers = 32MB
max_connections = 40
log_min_messages = warning
log_line_prefix = '%m [%p] '
lc_messages = 'C'
";

const PG_HBA: &str = "\
# cbdr test fixture: trust everything local
local   all          all                 trust
local   replication  all                 trust
host    all          all  127.0.0.1/32   trust
host    replication  all  127.0.0.1/32   trust
host    all          all  ::1/128        trust
host    replication  all  ::1/128        trust
";

/// Another PostgreSQL installation for the whole test binary (e.g. the
/// PostgreSQL 13 of [`super::pg13`]): its binaries, and the libraries they
/// need that the system lacks.
#[derive(Debug, Clone)]
pub struct PgInstall {
    pub bin: PathBuf,
    pub lib: Option<PathBuf>,
}

static INSTALL: OnceLock<PgInstall> = OnceLock::new();

/// Makes every server, PostgreSQL program and `pg_command` of this test
/// binary use `install` (its bin first on PATH, its libraries on
/// LD_LIBRARY_PATH). Call before anything else; the first call wins.
pub fn use_install(install: PgInstall) {
    let _ = INSTALL.set(install);
}

/// Directory holding the PostgreSQL server binaries: the installation of
/// [`use_install`], else `$PG_BIN`, else /usr/lib/postgresql/15/bin.
pub fn pg_bin_dir() -> PathBuf {
    if let Some(i) = INSTALL.get() {
        return i.bin.clone();
    }
    std::env::var_os("PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// Full path of a PostgreSQL program (`initdb`, `pg_ctl`, `psql`, ...).
pub fn pg_bin(program: &str) -> PathBuf {
    let path = pg_bin_dir().join(program);
    assert!(
        path.exists(),
        "{} not found: install postgresql-15 (run .ci/run) or set PG_BIN",
        path.display()
    );
    path
}

struct OsUser {
    name: String,
    uid: u32,
    gid: u32,
    /// Run PostgreSQL programs through `runuser -u name --`.
    switch: bool,
}

fn os_user() -> &'static OsUser {
    static USER: OnceLock<OsUser> = OnceLock::new();
    USER.get_or_init(|| {
        if !is_root() {
            // SAFETY: getuid/getgid cannot fail.
            let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            return OsUser {
                name: String::new(),
                uid,
                gid,
                switch: false,
            };
        }
        let name = CString::new("postgres").unwrap();
        // SAFETY: `name` is a valid C string; the returned record is read
        // at once (only ever called once, under the OnceLock).
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(
            !pw.is_null(),
            "running as root but there is no OS user `postgres` to run PostgreSQL as \
             (install postgresql-15, see .ci/run)"
        );
        // SAFETY: non-null result of getpwnam.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        OsUser {
            name: "postgres".into(),
            uid,
            gid,
            switch: true,
        }
    })
}

/// A `Command` running `program` as the PostgreSQL OS user (`runuser -u
/// postgres --` when the tests run as root), with cwd `/` and stdin null.
/// Use it to run anything that must create files PostgreSQL (or its
/// archive_command) later writes to, e.g. `cbdr` itself.
pub fn pg_command(program: impl AsRef<OsStr>) -> Command {
    let user = os_user();
    let mut cmd = if user.switch {
        let mut c = Command::new("runuser");
        c.args(["-u", &user.name, "--"]).arg(program.as_ref());
        c
    } else {
        Command::new(program.as_ref())
    };
    cmd.current_dir("/").stdin(Stdio::null());
    if let Some(i) = INSTALL.get() {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", i.bin.display()));
        if let Some(lib) = &i.lib {
            cmd.env("LD_LIBRARY_PATH", lib);
        }
    }
    cmd
}

/// Give `path` (recursively, not following symlinks) to the PostgreSQL OS
/// user. No-op when not running as root.
pub fn chown_to_pg(path: &Path) {
    let user = os_user();
    if !user.switch {
        return;
    }
    fn walk(path: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        let meta =
            fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        if meta.is_dir() {
            for entry in
                fs::read_dir(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            {
                walk(&entry.unwrap().path(), uid, gid);
            }
        }
    }
    walk(path, user.uid, user.gid);
}

/// Make every ancestor of `path` searchable by the PostgreSQL OS user
/// (adds o+x where needed, e.g. to a 0700 TempDir that contains `path`).
fn make_ancestors_searchable(path: &Path) {
    let user = os_user();
    if !user.switch {
        return;
    }
    for dir in path.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        let Ok(meta) = fs::metadata(dir) else {
            continue;
        };
        use std::os::unix::fs::MetadataExt;
        let mode = meta.mode();
        let ok = if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            let _ = fs::set_permissions(dir, fs::Permissions::from_mode((mode & 0o7777) | 0o001));
        }
    }
}

fn new_pg_tempdir(prefix: &str) -> TempDir {
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c == '/' || c.is_whitespace() {
                '-'
            } else {
                c
            }
        })
        .collect();
    // Under /tmp rather than $TMPDIR: the postgres user must reach it and
    // Unix socket paths must stay short.
    let dir = tempfile::Builder::new()
        .prefix(&prefix)
        .tempdir_in("/tmp")
        .expect("create temp dir under /tmp");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    chown_to_pg(dir.path());
    dir
}

/// A fresh temp dir under /tmp owned (mode 0700) by the PostgreSQL OS user,
/// e.g. for a repository that archive_command writes to. Removed on drop.
pub fn pg_user_dir(name: &str) -> TempDir {
    new_pg_tempdir(&format!("cbdr-{name}-"))
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Options for a [`PgServer`]; finish with [`PgBuilder::start`],
/// [`PgBuilder::init`] or [`PgBuilder::start_existing`].
#[derive(Clone, Debug, Default)]
pub struct PgBuilder {
    conf: Vec<String>,
    initdb_args: Vec<String>,
    env: Vec<(String, String)>,
}

impl PgBuilder {
    /// A line appended to postgresql.conf, e.g. `"archive_mode = on"`.
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.conf.push(line.into());
        self
    }

    /// An extra initdb argument, e.g. `"--wal-segsize=1"`.
    pub fn initdb_arg(mut self, arg: impl Into<String>) -> Self {
        self.initdb_args.push(arg.into());
        self
    }

    /// An environment variable for the server, inherited by its children
    /// (archive_command, restore_command).
    pub fn env(mut self, key: impl Into<String>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.into(), value.as_ref().to_string_lossy().into_owned()));
        self
    }

    /// initdb a new cluster without starting it (call [`PgServer::start`]).
    pub fn init(self) -> PgServer {
        let tmp = new_pg_tempdir("cbdr-pg-");
        let data_dir = tmp.path().join("data");
        // From here on a panic (or the watchdog) cleans up the temp dir.
        let server = PgServer::from_parts(tmp, data_dir, self.env);
        let mut initdb = pg_command(pg_bin("initdb"));
        initdb
            .arg("-D")
            .arg(&server.data_dir)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .args(&self.initdb_args);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb {:?} failed:\n{}",
            self.initdb_args,
            output_text(&out)
        );
        let hba = server.data_dir.join("pg_hba.conf");
        fs::write(&hba, PG_HBA).expect("write pg_hba.conf");
        chown_to_pg(&hba);
        server.append_conf(DEFAULT_CONF);
        for line in &self.conf {
            server.append_conf(line);
        }
        server
    }

    /// initdb a new cluster and start it.
    pub fn start(self) -> PgServer {
        let mut server = self.init();
        server.start();
        server
    }

    /// Start a data directory produced elsewhere (e.g. a restored backup).
    /// Its ownership is fixed to the PostgreSQL OS user and its mode to
    /// 0700 (ancestors get o+x if needed); the builder's conf lines are
    /// appended to its postgresql.conf, pg_hba.conf is replaced by the
    /// fixture's trust rules when absent; initdb arguments are ignored.
    /// The data directory is not deleted on drop. Panics with the log tail
    /// if it does not start (see [`PgBuilder::try_start_existing`]).
    pub fn start_existing(self, data_dir: impl AsRef<Path>) -> PgServer {
        self.try_start_existing(data_dir)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`PgBuilder::start_existing`] but returns the failure (with the
    /// server log tail) instead of panicking.
    pub fn try_start_existing(self, data_dir: impl AsRef<Path>) -> Result<PgServer, String> {
        let mut server = self.prepare_existing(data_dir.as_ref());
        server.try_start()?;
        Ok(server)
    }

    /// Prepare an existing data directory like
    /// [`PgBuilder::start_existing`] without starting it.
    pub fn prepare_existing(self, data_dir: &Path) -> PgServer {
        let data_dir = fs::canonicalize(data_dir)
            .unwrap_or_else(|e| panic!("data dir {}: {e}", data_dir.display()));
        assert!(
            data_dir.join("PG_VERSION").exists(),
            "{} is not a PostgreSQL data directory (no PG_VERSION)",
            data_dir.display()
        );
        let hba = data_dir.join("pg_hba.conf");
        if !hba.exists() {
            fs::write(&hba, PG_HBA).expect("write pg_hba.conf");
        }
        chown_to_pg(&data_dir);
        fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700))
            .expect("chmod 0700 data dir");
        make_ancestors_searchable(&data_dir);
        let tmp = new_pg_tempdir("cbdr-pg-");
        let server = PgServer::from_parts(tmp, data_dir, self.env);
        for line in &self.conf {
            server.append_conf(line);
        }
        server
    }
}

/// A PostgreSQL server in a temp dir, listening on 127.0.0.1:`port()` and on
/// a Unix socket in `socket_dir()`. Stopped and deleted on drop.
pub struct PgServer {
    tmp: Option<TempDir>,
    data_dir: PathBuf,
    env: Vec<(String, String)>,
    port: u16,
    watchdog: Option<Child>,
}

impl PgServer {
    /// Options for a new server.
    pub fn builder() -> PgBuilder {
        PgBuilder::default()
    }

    /// A new server with the default settings, started.
    pub fn new() -> PgServer {
        PgBuilder::default().start()
    }

    /// Start an existing data directory, see [`PgBuilder::start_existing`].
    pub fn start_existing(data_dir: impl AsRef<Path>, options: PgBuilder) -> PgServer {
        options.start_existing(data_dir)
    }

    /// `pg_basebackup -c fast -D dir` of this server with `args` (`-X
    /// none`, `-X stream -R`, ...); panics with its message when it fails.
    pub fn pg_basebackup(&self, dir: &Path, args: &[&str]) {
        let out = pg_command(pg_bin("pg_basebackup"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-c", "fast"])
            .args(["-p", &self.port().to_string()])
            .args(args)
            .arg("-D")
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts a restored data directory on a new port, archiving off, and
    /// waits until its recovery has ended.
    pub fn start_restored(dir: &Path) -> PgServer {
        let s = PgServer::start_existing(dir, PgServer::builder().conf("archive_mode = off"));
        s.wait_for_recovery_end();
        s
    }

    fn from_parts(tmp: TempDir, data_dir: PathBuf, env: Vec<(String, String)>) -> PgServer {
        // If the test process dies without unwinding (killed, aborted,
        // process::exit with a server in a static), stop the postmaster
        // (SIGQUIT = immediate shutdown) and remove the temp dir.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(PG_WATCHDOG)
            .arg("cbdr-pg-watchdog")
            .arg(&data_dir)
            .arg(tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        PgServer {
            tmp: Some(tmp),
            data_dir,
            env,
            port: free_port(),
            watchdog,
        }
    }

    /// TCP port on 127.0.0.1 (may change on a restart if it was taken).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory of the Unix socket (also holds `server.log`).
    pub fn socket_dir(&self) -> &Path {
        self.tmp.as_ref().unwrap().path()
    }

    /// The server log file.
    pub fn log_path(&self) -> PathBuf {
        self.socket_dir().join("server.log")
    }

    /// The last 60 lines of the server log.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log_path(), 60)
    }

    /// libpq key/value connection string over TCP as superuser `postgres`.
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Append a line (or several) to postgresql.conf; takes effect at the
    /// next start or `select pg_reload_conf()`.
    pub fn append_conf(&self, lines: &str) {
        let path = self.data_dir.join("postgresql.conf");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        writeln!(f, "{}", lines.trim_end_matches('\n')).unwrap();
        drop(f);
        chown_to_pg(&path);
    }

    /// Set an environment variable for the server from its next start on.
    pub fn set_env(&mut self, key: impl Into<String>, value: impl AsRef<OsStr>) {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env
            .push((key, value.as_ref().to_string_lossy().into_owned()));
    }

    /// Pid of the running postmaster, if any.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        process_alive(pid).then_some(pid)
    }

    /// Whether the postmaster is running.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// Start the (stopped) server and wait until it accepts connections.
    /// Panics with the server log tail on failure.
    pub fn start(&mut self) {
        if let Err(e) = self.try_start() {
            panic!("{e}");
        }
    }

    /// Like [`PgServer::start`] but returns the failure.
    pub fn try_start(&mut self) -> Result<(), String> {
        let log = self.log_path();
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let log_offset = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            let mut cmd = pg_command(pg_bin("pg_ctl"));
            cmd.arg("start")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", PG_CTL_TIMEOUT, "-o"])
                .arg(format!(
                    "-p {} -k '{}' -c listen_addresses=127.0.0.1",
                    self.port,
                    self.socket_dir().display()
                ));
            for (k, v) in &self.env {
                cmd.env(k, v);
            }
            let out = cmd.output().expect("run pg_ctl start");
            if out.status.success() {
                return Ok(());
            }
            let new_log = fs::read(&log)
                .map(|b| {
                    String::from_utf8_lossy(&b[(log_offset as usize).min(b.len())..]).into_owned()
                })
                .unwrap_or_default();
            let port_taken = new_log.contains("Address already in use")
                || new_log.contains("could not create any TCP/IP sockets");
            if port_taken && attempt < ATTEMPTS && !self.is_running() {
                self.port = free_port();
                continue;
            }
            return Err(format!(
                "pg_ctl start -D {} failed ({}):\n{}\n--- server log tail ({}) ---\n{}",
                self.data_dir.display(),
                out.status,
                output_text(&out).trim_end(),
                log.display(),
                self.log_tail()
            ));
        }
        unreachable!()
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), String> {
        let out = pg_command(pg_bin("pg_ctl"))
            .arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", PG_CTL_TIMEOUT])
            .output()
            .expect("run pg_ctl stop");
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl stop -m {mode} failed ({}):\n{}\n--- server log tail ---\n{}",
                out.status,
                output_text(&out).trim_end(),
                self.log_tail()
            ))
        }
    }

    /// Stop the server (`-m fast`) and wait until it is gone.
    pub fn stop(&mut self) {
        self.pg_ctl_stop("fast").unwrap_or_else(|e| panic!("{e}"));
    }

    /// Stop the server like a crash (`-m immediate`: no shutdown checkpoint).
    pub fn stop_immediate(&mut self) {
        self.pg_ctl_stop("immediate")
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `stop()` then `start()`.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Run SQL in database `postgres`; returns psql's unaligned, tuples-only
    /// output without the final newline (rows separated by `\n`, columns by
    /// `|`). Panics with the error and the server log tail on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    /// Like [`PgServer::psql`] but returns psql's error output.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_db("postgres", sql)
    }

    /// [`PgServer::psql`] in another database.
    pub fn psql_db(&self, dbname: &str, sql: &str) -> String {
        self.try_psql_db(dbname, sql).unwrap_or_else(|e| {
            panic!(
                "psql failed: {e}\n--- SQL ---\n{sql}\n--- server log tail ---\n{}",
                self.log_tail()
            )
        })
    }

    /// [`PgServer::try_psql`] in another database.
    pub fn try_psql_db(&self, dbname: &str, sql: &str) -> Result<String, String> {
        let mut child = pg_command(pg_bin("psql"))
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", dbname, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        let mut stdin = child.stdin.take().unwrap();
        let input = sql.to_owned();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().expect("wait for psql");
        let _ = writer.join();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout)
                .trim_end_matches('\n')
                .to_owned())
        } else {
            Err(format!("({}) {}", out.status, output_text(&out).trim_end()))
        }
    }

    /// Poll `cond` every 100 ms until it returns true; panics with the
    /// server log tail after `timeout`. Use `try_psql` inside `cond` when
    /// the query may fail transiently.
    pub fn wait_until(&self, mut cond: impl FnMut(&PgServer) -> bool, timeout: Duration) {
        super::wait_for("a condition on the server", timeout, || {
            if cond(self) {
                Ok(())
            } else {
                Err(format!(
                    "not met\n--- server log tail ---\n{}",
                    self.log_tail()
                ))
            }
        })
    }

    /// Starts `pgbench ARGS postgres` against this server as the
    /// PostgreSQL OS user (stdout dropped, stderr piped).
    pub fn pgbench(&self, args: &[&str]) -> Child {
        pg_command(pg_bin("pgbench"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port().to_string())
            .args(args)
            .arg("postgres")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs [`PgServer::pgbench`] to the end; panics unless it succeeded.
    pub fn run_pgbench(&self, args: &[&str]) {
        let out = self.pgbench(args).wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "pgbench: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `pg_switch_wal()`, then waits (up to 120 s) until no WAL file is
    /// left `.ready` in `pg_wal/archive_status`: everything is archived.
    pub fn archive_everything(&self) {
        self.psql("select pg_switch_wal()");
        let status = self.data_dir().join("pg_wal/archive_status");
        super::wait_for("every WAL file archived", Duration::from_secs(120), || {
            let ready: Vec<String> = fs::read_dir(&status)
                .map_err(|e| e.to_string())?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".ready"))
                .collect();
            if ready.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{ready:?}\n--- server log tail ---\n{}",
                    self.log_tail()
                ))
            }
        });
    }

    /// `pg_dump` of the `postgres` database, without what differs between
    /// two dumps of the same data (pg_dump 15.14+'s random `\restrict` key).
    pub fn dump(&self) -> String {
        self.pg_dump(&["--no-comments", "postgres"])
    }

    /// `pg_dump ARGS` of this server, without the lines that differ between
    /// two dumps of the same data (the random `\restrict` key).
    pub fn pg_dump(&self, args: &[&str]) -> String {
        let out = pg_command(pg_bin("pg_dump"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port().to_string())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Row count and md5 of the ordered rows of every table (and the state
    /// of every sequence, which materialized views are unpopulated, the
    /// size and md5 of every large object, as `large object OID`) of `db`.
    pub fn digests(&self, db: &str) -> std::collections::BTreeMap<String, String> {
        let tables = self.psql_db(
            db,
            "SELECT format('%I.%I', n.nspname, c.relname), \
                    CASE WHEN c.relispopulated THEN c.relkind::text ELSE 'unpopulated' END \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind IN ('r', 'S', 'm') AND n.nspname !~ '^pg_' \
                AND n.nspname <> 'information_schema' ORDER BY 1",
        );
        let mut out = std::collections::BTreeMap::new();
        for line in tables.lines().filter(|l| !l.is_empty()) {
            let (name, kind) = line.rsplit_once('|').unwrap();
            if kind == "unpopulated" {
                out.insert(name.to_string(), kind.to_string());
                continue;
            }
            let sql = if kind == "S" {
                format!("SELECT last_value || '/' || is_called FROM {name}")
            } else {
                format!(
                    "SELECT count(*) || '/' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {name} t"
                )
            };
            out.insert(name.to_string(), self.psql_db(db, &sql));
        }
        let los = self.psql_db(
            db,
            "SELECT oid, length(lo_get(oid)) || '/' || md5(lo_get(oid)) \
               FROM pg_largeobject_metadata ORDER BY oid",
        );
        for line in los.lines().filter(|l| !l.is_empty()) {
            let (oid, digest) = line.split_once('|').unwrap();
            out.insert(format!("large object {oid}"), digest.to_string());
        }
        out
    }

    /// Wait (up to 120 s) until the server has left recovery
    /// (`pg_is_in_recovery()` is false).
    pub fn wait_for_recovery_end(&self) {
        self.wait_until(
            |s| s.try_psql("select pg_is_in_recovery()").as_deref() == Ok("f"),
            Duration::from_secs(120),
        );
    }
}

impl Default for PgServer {
    fn default() -> Self {
        PgServer::new()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- PostgreSQL log tail ({}) ---\n{}",
                self.log_path().display(),
                self.log_tail()
            );
        }
        if let Some(pid) = self.postmaster_pid() {
            let _ = pg_command(pg_bin("pg_ctl"))
                .arg("stop")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "immediate", "-w", "-t", "30"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if process_alive(pid) {
                // SAFETY: plain kill(2) on the postmaster's pid.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            if let Some(mut pipe) = watchdog.stdin.take() {
                let _ = pipe.write_all(b"done\n");
            }
            let _ = watchdog.wait();
        }
        // `tmp` (socket, log and, unless external, the data dir) is
        // removed when the field drops.
    }
}

/// `sh -c` script: $1 = data dir, $2 = temp dir. Its stdin is a pipe from
/// the test process: the line `done` means the server was cleaned up
/// normally; end of file means the test process died, so stop the
/// postmaster (SIGQUIT = immediate shutdown) and remove $2.
const PG_WATCHDOG: &str = r#"
trap '' INT HUP
read -r line || line=
[ "$line" = done ] && exit 0
pid=$(head -n 1 "$1/postmaster.pid" 2>/dev/null) || pid=
if [ -n "$pid" ] && [ "$(cat /proc/$pid/comm 2>/dev/null)" = postgres ]; then
    kill -QUIT "$pid" 2>/dev/null
    sleep 2
    kill -KILL "$pid" 2>/dev/null
fi
rm -rf "$2"
"#;

/// `pg_verifybackup -n` of a restored directory (before it is started):
/// panics with its output unless it passes.
pub fn verify_backup(dir: &Path) {
    chown_to_pg(dir);
    let out = pg_command(pg_bin("pg_verifybackup"))
        .arg("-n")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_verifybackup: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
