//! A Garage S3 server shared by all tests of one test binary.
//!
//! The server starts on first use ([`garage()`] or [`bucket()`]) on free
//! loopback ports, with its data and metadata in a temp dir, a single-node
//! layout and one imported access key ([`ACCESS_KEY_ID`]). Each
//! [`bucket()`] call creates a new bucket that key may read, write and own.
//!
//! The server is spawned by a small `sh` watchdog holding a pipe from the
//! test process: an atexit(3) handler closes it when the test binary exits
//! (also after failed tests), and the kernel closes it if the process is
//! killed; either way the watchdog kills the server and removes the temp
//! dir. (Rust runs no static destructors, and PR_SET_PDEATHSIG would fire
//! when the spawning *test thread* ends.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{file_tail, free_port, http_get, process_alive};

/// Access key imported into the test server (valid for every bucket).
pub const ACCESS_KEY_ID: &str = "GK5cbd7e57000000000000c0de";
/// Secret of [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str =
    "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";
/// Name given to the imported key.
pub const KEY_NAME: &str = "cbdr-test";
/// S3 region of the test server.
pub const REGION: &str = "garage";
const RPC_SECRET: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
const NOT_FOUND: &str = "garage not found: run .ci/run or `cargo install garage --locked`";

/// One bucket on the test server, with credentials that may use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Target {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    /// `"garage"`
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl S3Target {
    /// A `[storage]` section for cbdr's config file pointing at this bucket
    /// under key prefix `prefix` ("" = bucket root).
    pub fn config_toml(&self, prefix: &str) -> String {
        format!(
            "[storage]\n\
             type = \"s3\"\n\
             bucket = {}\n\
             prefix = {}\n\
             endpoint = {}\n\
             region = {}\n\
             force_path_style = true\n\
             access_key_id = {}\n\
             secret_access_key = {}\n",
            toml_str(&self.bucket),
            toml_str(prefix),
            toml_str(&self.endpoint),
            toml_str(&self.region),
            toml_str(&self.access_key_id),
            toml_str(&self.secret_access_key),
        )
    }
}

fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `garage` binary: `$GARAGE_BIN`, else `garage` on PATH, else
/// `$CARGO_HOME/bin/garage` or `~/.cargo/bin/garage`.
pub fn garage_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GARAGE_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("garage"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME").map(|h| PathBuf::from(h).join("bin/garage"));
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/garage"));
    on_path
        .into_iter()
        .chain(cargo_home)
        .chain(home)
        .find(|p| p.is_file())
}

/// The running test server.
pub struct Garage {
    /// Temp dir with `garage.toml`, `garage.log`, `meta/` and `data/`.
    pub dir: PathBuf,
    pub config: PathBuf,
    pub s3_port: u16,
    pub rpc_port: u16,
    pub admin_port: u16,
    bin: PathBuf,
    pid: u32,
    watchdog: Mutex<Child>,
}

impl Garage {
    /// `http://127.0.0.1:PORT` of the S3 API.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The server's process id (for the benches' CPU accounting).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `127.0.0.1:PORT` of the S3 API.
    pub fn s3_addr(&self) -> String {
        format!("127.0.0.1:{}", self.s3_port)
    }

    /// Run `garage -c <config> ARGS...`; returns stdout or the error.
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run {}: {e}", self.bin.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "garage {} failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Like [`Garage::try_cli`], panicking (with the server log tail) on error.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|e| panic!("{e}\n--- garage log tail ---\n{}", self.log_tail()))
    }

    /// The last 40 lines of the server log.
    pub fn log_tail(&self) -> String {
        file_tail(&self.dir.join("garage.log"), 40)
    }

    /// Have the watchdog kill the server and remove its directory, and
    /// wait for it (after a failed start-up, and at process exit).
    fn kill(&self) {
        let mut watchdog = match self.watchdog.lock() {
            Ok(w) => w,
            Err(poisoned) => poisoned.into_inner(),
        };
        drop(watchdog.stdin.take());
        let _ = watchdog.wait();
    }
}

static GARAGE: OnceLock<Result<Garage, String>> = OnceLock::new();

/// Registered with atexit(3) (runs when the test harness returns or calls
/// `process::exit`): stop the server and wait for its clean-up.
extern "C" fn stop_at_exit() {
    if let Some(Ok(g)) = GARAGE.get() {
        g.kill();
    }
}

/// The shared server, started on first call. Panics if it cannot start
/// (every later call panics with the same message).
pub fn garage() -> &'static Garage {
    match GARAGE.get_or_init(start) {
        Ok(g) => g,
        Err(e) => panic!("{e}"),
    }
}

/// A new, empty bucket on the shared server, named after `test_name`
/// (sanitised) plus a counter, usable with [`ACCESS_KEY_ID`].
pub fn bucket(test_name: &str) -> S3Target {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let g = garage();
    let name = bucket_name(test_name, COUNTER.fetch_add(1, Ordering::Relaxed));
    // Right after the layout is applied the cluster may briefly refuse.
    super::wait_for(
        &format!("garage to create bucket {name}"),
        Duration::from_secs(30),
        || {
            g.try_cli(&["bucket", "create", &name])
                .map_err(|e| format!("{e}\n--- garage log tail ---\n{}", g.log_tail()))
        },
    );
    g.cli(&[
        "bucket",
        "allow",
        "--read",
        "--write",
        "--owner",
        &name,
        "--key",
        ACCESS_KEY_ID,
    ]);
    S3Target {
        endpoint: g.endpoint(),
        region: REGION.to_owned(),
        bucket: name,
        access_key_id: ACCESS_KEY_ID.to_owned(),
        secret_access_key: SECRET_ACCESS_KEY.to_owned(),
    }
}

/// A valid S3 bucket name (3-63 of `[a-z0-9-]`, alphanumeric at both ends).
fn bucket_name(test_name: &str, n: usize) -> String {
    let mut base = String::new();
    for c in test_name.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_alphanumeric() {
            base.push(c);
        } else if !base.is_empty() && !base.ends_with('-') {
            base.push('-');
        }
    }
    base.truncate(48);
    let base = base.trim_end_matches('-');
    let base = if base.is_empty() { "bucket" } else { base };
    format!("{base}-{n}")
}

fn start() -> Result<Garage, String> {
    let bin = garage_bin().ok_or_else(|| NOT_FOUND.to_owned())?;
    if !bin.is_file() {
        return Err(format!("{NOT_FOUND} ({} does not exist)", bin.display()));
    }
    // SAFETY: registers a plain extern "C" fn; it only runs at exit.
    unsafe { libc::atexit(stop_at_exit) };
    let mut last = String::new();
    for _ in 0..3 {
        match start_once(&bin) {
            Ok(g) => return Ok(g),
            // Another process took one of the ports: try new ones.
            Err((e, true)) => last = e,
            Err((e, false)) => return Err(e),
        }
    }
    Err(last)
}

/// Error: (message, worth retrying on other ports).
fn start_once(bin: &Path) -> Result<Garage, (String, bool)> {
    let dir = tempfile::Builder::new()
        .prefix("cbdr-garage-")
        .tempdir_in("/tmp")
        .map_err(|e| (format!("create garage temp dir: {e}"), false))?
        .keep();
    let (s3_port, rpc_port, admin_port) = (free_port(), free_port(), free_port());
    let config = dir.join("garage.toml");
    // `$GARAGE_COMPRESSION_LEVEL` ("none", or a zstd level): the benches
    // turn Garage's block compression off, as a DBA would for tools that
    // send compressed data; unset = Garage's default (zstd level 1).
    let compression = std::env::var("GARAGE_COMPRESSION_LEVEL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| match v.trim().parse::<i32>() {
            Ok(level) => format!("compression_level = {level}\n"),
            Err(_) => "compression_level = \"none\"\n".to_string(),
        })
        .unwrap_or_default();
    let toml = format!(
        r#"{compression}metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false

replication_factor = 1

rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{RPC_SECRET}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
"#,
        dir = dir.display()
    );
    std::fs::write(&config, toml).map_err(|e| (format!("write garage.toml: {e}"), false))?;

    let watchdog = Command::new("sh")
        .arg("-c")
        .arg(GARAGE_WATCHDOG)
        .arg("cbdr-garage-watchdog")
        .arg(bin)
        .arg(&config)
        .arg(&dir)
        .env("RUST_LOG", "garage=info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| (format!("spawn sh: {e}"), false))?;
    let mut g = Garage {
        dir: dir.clone(),
        config,
        s3_port,
        rpc_port,
        admin_port,
        bin: bin.to_owned(),
        pid: 0,
        watchdog: Mutex::new(watchdog),
    };
    let fail = |g: &Garage, what: String| {
        let log = g.log_tail();
        let retry = log.contains("Address already in use") || log.contains("AddrInUse");
        g.kill();
        Err((format!("{what}\n--- garage log tail ---\n{log}"), retry))
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    while g.pid == 0 {
        if let Some(pid) = std::fs::read_to_string(dir.join("garage.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            g.pid = pid;
        } else if Instant::now() >= deadline {
            return fail(&g, "garage did not start".into());
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // Wait for the RPC endpoint.
    loop {
        if !process_alive(g.pid) {
            return fail(&g, "garage server exited during start-up".into());
        }
        match g.try_cli(&["status"]) {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => {
                return fail(&g, format!("garage did not come up: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }

    let setup = || -> Result<(), String> {
        let node = g.try_cli(&["node", "id", "-q"])?;
        let node = node.trim().split('@').next().unwrap_or_default().to_owned();
        g.try_cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node])?;
        g.try_cli(&["layout", "apply", "--version", "1"])?;
        g.try_cli(&[
            "key",
            "import",
            "--yes",
            "-n",
            KEY_NAME,
            ACCESS_KEY_ID,
            SECRET_ACCESS_KEY,
        ])?;
        Ok(())
    };
    if let Err(e) = setup() {
        return fail(&g, e);
    }

    // Wait for the S3 API to answer HTTP.
    loop {
        match http_get(&g.s3_addr(), "/", Duration::from_secs(2)) {
            Ok(_) => return Ok(g),
            Err(e) if Instant::now() >= deadline => {
                return fail(&g, format!("garage S3 API does not answer: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `sh -c` script: $1 = garage binary, $2 = config, $3 = temp dir. Starts
/// the server and records its pid; when a line or end of file arrives on
/// its stdin (a pipe from the test process: written at exit, closed by the
/// kernel if the process dies) kills the server and removes the temp dir.
const GARAGE_WATCHDOG: &str = r#"
trap '' INT HUP
"$1" -c "$2" server >>"$3/garage.log" 2>&1 </dev/null &
g=$!
echo "$g" >"$3/garage.pid"
read -r _ || true
kill -KILL "$g" 2>/dev/null
wait "$g" 2>/dev/null
rm -rf "$3"
"#;
