//! Helpers the benches share (`#[path = "common.rs"] mod bench_common;`
//! in each, next to the test fixtures of `tests/common`): settings from
//! the environment, the load of the machine, running and timing commands,
//! and the copy of the cbdr binary a bench measures.
//!
//! Every bench compiles this module separately and uses a different
//! subset of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `$name`, unless unset or blank; else `default`.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// [`env_or`] as a number (panics naming `name` when it is not one).
pub fn env_num(name: &str, default: &str) -> usize {
    env_or(name, default)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name}: a number"))
}

/// The 1, 5 and 15 minute load averages ("" if unknown).
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The 10 s "some" pressure of `what` (`cpu`, `io`) as `"cpu 1.23%"`.
pub fn pressure(what: &str) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/pressure/{what}")).ok()?;
    let some = text.lines().find(|l| l.starts_with("some"))?;
    let avg10 = some
        .split_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?;
    Some(format!("{what} {avg10}%"))
}

/// Runs `cmd` to the end; panics naming `what` with its output unless it
/// succeeded. Returns stdout followed by stderr.
pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

/// A SQL string literal (standard_conforming_strings on).
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `v` with `prec` decimals, or "-".
pub fn fmt_opt(v: Option<f64>, prec: usize) -> String {
    v.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

/// Copies the cbdr binary `source` to `dir/cbdr` (mode 0755) and returns
/// that path: a rebuild during the run cannot change the binary measured.
pub fn copy_cbdr(source: &Path, dir: &Path) -> PathBuf {
    let cbdr = dir.join("cbdr");
    fs::copy(source, &cbdr)
        .unwrap_or_else(|e| panic!("copy the cbdr binary {}: {e}", source.display()));
    fs::set_permissions(&cbdr, fs::Permissions::from_mode(0o755)).unwrap();
    cbdr
}

/// Where a bench writes its JSON report `name`: `target/NAME` (the cbdr
/// binary is in `target/<profile>/`).
pub fn report_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_cbdr"))
        .parent()
        .and_then(Path::parent)
        .expect("the cbdr binary is in target/<profile>/")
        .join(name)
}

/// Seconds of a `timeval`.
pub fn timeval_secs(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Sum of the RSS of `root` and all its descendants, in bytes.
pub fn tree_rss(root: u32, page_size: u64) -> u64 {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": the name may hold spaces and ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut total = 0;
    let mut todo = vec![root];
    let mut seen = HashSet::new();
    while let Some(pid) = todo.pop() {
        if !seen.insert(pid) {
            continue;
        }
        if let Ok(statm) = fs::read_to_string(format!("/proc/{pid}/statm")) {
            let resident: u64 = statm
                .split_whitespace()
                .nth(1)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            total += resident * page_size;
        }
        if let Some(c) = children.get(&pid) {
            todo.extend(c);
        }
    }
    total
}

/// What one timed command did.
pub struct Timed {
    pub seconds: f64,
    pub success: bool,
    pub status: String,
    /// ru_maxrss of the command (its largest process), bytes.
    pub max_rss: u64,
    /// Peak sampled sum of RSS over its process tree, bytes (0 when not
    /// sampled).
    pub tree_rss: u64,
    /// User + system CPU time of the command and its waited-for children.
    pub cpu_seconds: f64,
    pub output: String,
}

/// Runs `cmd` with stdout and stderr into `log_dir/TAG.out`, timed, its
/// rusage taken by wait4; with `sample`, the RSS of its process tree is
/// sampled that often and the peak kept.
pub fn timed(mut cmd: Command, log_dir: &Path, tag: &str, sample: Option<Duration>) -> Timed {
    let out_path = log_dir.join(format!("{tag}.out"));
    let out = fs::File::create(&out_path).expect("create output file");
    let err = out.try_clone().expect("dup output file");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{tag}: cannot run: {e}"));
    let pid = child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample.map(|every| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(tree_rss(pid, page_size));
                std::thread::sleep(every);
            }
            peak
        })
    });
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid with valid out-pointers; the
    // child is reaped here (std's Child is dropped without waiting).
    let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    let seconds = t0.elapsed().as_secs_f64();
    assert_eq!(
        rc,
        pid as libc::pid_t,
        "wait4: {}",
        std::io::Error::last_os_error()
    );
    drop(child);
    stop.store(true, Ordering::Relaxed);
    let tree_rss = sampler.map(|s| s.join().unwrap_or(0)).unwrap_or(0);
    let success = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let status = if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else {
        format!("signal {}", libc::WTERMSIG(status))
    };
    Timed {
        seconds,
        success,
        status,
        max_rss: usage.ru_maxrss.max(0) as u64 * 1024,
        tree_rss,
        cpu_seconds: timeval_secs(usage.ru_utime) + timeval_secs(usage.ru_stime),
        output: fs::read_to_string(&out_path).unwrap_or_default(),
    }
}

/// CPU seconds (user + system, all threads) a live process used so far.
pub fn process_cpu(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    // Fields after the name start with field 3 (state); utime and stime
    // are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((utime + stime) / ticks)
}

/// Binds every thread of `pid` to the CPUs `cpus` (a taskset list such as
/// "1" or "0-1"); false when taskset is missing or refused.
pub fn pin_process(pid: u32, cpus: &str) -> bool {
    Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// stunnel (Debian's `stunnel4`) terminating TLS on a free loopback port
/// in front of `target` (`host:port`), with a certificate for 127.0.0.1
/// signed by a CA made for the run. Stopped when dropped.
pub struct TlsTerminator {
    /// `https://127.0.0.1:PORT`
    pub endpoint: String,
    pub port: u16,
    /// The CA certificate (PEM) that signed the terminator's certificate.
    pub ca_file: PathBuf,
    pub pid: u32,
    child: std::process::Child,
}

impl TlsTerminator {
    /// Starts stunnel with its files in `dir`; `Err` says why not (e.g.
    /// "install stunnel4").
    pub fn start(target: &str, dir: &Path) -> Result<TlsTerminator, String> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let bin = [
            "/usr/bin/stunnel4",
            "/usr/bin/stunnel",
            "/usr/sbin/stunnel4",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or("stunnel not found: install stunnel4 (apt-get install -y stunnel4)")?;
        fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let ca_key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).map_err(|e| e.to_string())?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .map_err(|e| e.to_string())?
            .signed_by(&key, &issuer)
            .map_err(|e| e.to_string())?;
        let ca_file = dir.join("ca.pem");
        let cert_file = dir.join("server.pem");
        let key_file = dir.join("server.key");
        fs::write(&ca_file, ca_cert.pem()).map_err(|e| e.to_string())?;
        fs::write(&cert_file, cert.pem()).map_err(|e| e.to_string())?;
        fs::write(&key_file, key.serialize_pem()).map_err(|e| e.to_string())?;
        fs::set_permissions(&key_file, fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let conf = dir.join("stunnel.conf");
        fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\noutput = {log}\ndebug = notice\n\n[s3]\n\
                 accept = 127.0.0.1:{port}\nconnect = {target}\ncert = {cert}\nkey = {key}\n",
                log = dir.join("stunnel.log").display(),
                cert = cert_file.display(),
                key = key_file.display(),
            ),
        )
        .map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("run {}: {e}", bin.display()))?;
        let mut t = TlsTerminator {
            endpoint: format!("https://127.0.0.1:{port}"),
            port,
            ca_file,
            pid: child.id(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(t);
            }
            if let Ok(Some(status)) = t.child.try_wait() {
                return Err(format!(
                    "stunnel exited ({status}): {}",
                    fs::read_to_string(dir.join("stunnel.log")).unwrap_or_default()
                ));
            }
            if Instant::now() > deadline {
                return Err("stunnel does not listen after 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
