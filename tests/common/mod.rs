//! Fixtures shared by the integration tests (`mod common;` in each test file).
//!
//! * [`pg`]: throw-away PostgreSQL 15 servers ([`pg::PgServer`]).
//! * [`garage`]: one Garage S3 server per test binary, a fresh bucket per
//!   call ([`garage::bucket`]).
//! * [`env`]: one cbdr environment (directory, config, key, repository,
//!   command runner): [`CbdrEnv::builder`].
//! * [`store`]: raw and decoded access to a repository's objects, to damage
//!   and repair them ([`store::Store`]).
//! * [`proxy`]: a TCP proxy that can stall or cut; [`tls_proxy`]: a TLS
//!   terminator with a CA made for the test.
//! * [`wait_for`]: the one polling loop every test that waits uses.
//!
//! Every test binary compiles this module separately and uses a different
//! subset of it, hence the `dead_code` allowances.
#![allow(dead_code)]

pub mod bank;
pub mod citus;
pub mod cluster;
pub mod env;
pub mod garage;
pub mod pg;
pub mod pg13;
pub mod proxy;
pub mod store;
pub mod tls_proxy;

#[allow(unused_imports)]
pub use env::{CbdrEnv, Cmd, Key, Output, QuietPoint, Storage, CBDR};

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// A TCP port on 127.0.0.1 that was free a moment ago and that no other
/// caller in this process has been given. Callers that bind it later must
/// still retry on "address in use" (another process may have taken it).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Whether the test process runs as root (then PostgreSQL runs as `postgres`).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A minimal HTTP/1.1 GET over a plain TcpStream: returns the status code
/// and the whole response (headers and body). `addr` is `host:port`.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let mut stream = TcpStream::connect_timeout(&sock, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: cbdr-tests\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("not an HTTP response: {text:?}"),
            )
        })?;
    Ok((status, text))
}

/// The last `lines` lines of a text file ("" if it cannot be read).
pub fn file_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Whether a process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` (and the
/// last state `cond` reported) once `timeout` has passed. Every test that
/// waits for something waits through this, never by reading a state once.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match cond() {
            Ok(v) => return v,
            Err(last) if std::time::Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Creates the repository `config` names (`cbdr repo-init`), as a DBA does
/// once before the first backup or archived WAL file. Runs as the owner
/// of `config`: the PostgreSQL OS user (who archives into the repository)
/// once the test gave them the config, else the test's own user.
pub fn init_repo(cbdr: &str, config: &Path) {
    use std::os::unix::fs::MetadataExt;
    let own_uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    let config_uid = std::fs::metadata(config).map(|m| m.uid()).ok();
    let mut cmd = if config_uid == own_uid {
        let mut c = std::process::Command::new(cbdr);
        c.stdin(std::process::Stdio::null());
        c
    } else {
        pg::pg_command(cbdr)
    };
    let out = cmd
        .arg("--config")
        .arg(config)
        .arg("repo-init")
        .output()
        .expect("run cbdr repo-init");
    assert!(
        out.status.success(),
        "cbdr repo-init failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the long page header of segment `name` (1 MiB segments) at the
/// start of `data`, as PostgreSQL 15 on x86 does.
pub fn with_page_header(name: &str, data: &mut [u8]) {
    let part = |i: usize| u64::from_str_radix(&name[i..i + 8], 16).unwrap();
    let page_addr = (part(8) << 32) + part(16) * 1_048_576;
    let mut h = Vec::new();
    h.extend_from_slice(&0xD110u16.to_le_bytes());
    h.extend_from_slice(&0x0002u16.to_le_bytes());
    h.extend_from_slice(&(part(0) as u32).to_le_bytes());
    h.extend_from_slice(&page_addr.to_le_bytes());
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&7_312_345_678u64.to_le_bytes());
    h.extend_from_slice(&1_048_576u32.to_le_bytes());
    h.extend_from_slice(&8192u32.to_le_bytes());
    data[..h.len()].copy_from_slice(&h);
}
