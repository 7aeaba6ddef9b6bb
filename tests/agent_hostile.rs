//! Hostile clients of a real `cbdr agent` process (issue 13, fault family
//! 6): garbage, a length prefix of 0xFFFFFFFF, a frame that ends early, a
//! wrong token, 200 silent connections, 1,200 connections each announcing
//! a large frame and sending part of it, and a caller that stops reading.
//! Each time the agent refuses or drops the caller and logs its address,
//! its memory stays within a small bound (VmHWM, the peak RSS, from
//! /proc/PID/status) and comes back after the callers leave, and the
//! coordinator's requests (a ping through the library's AgentClient) are
//! answered throughout.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use cbdr::cluster::auth::{new_nonce, Token};
use cbdr::cluster::client::AgentClient;
use cbdr::cluster::proto::{MAX_FRAME, MAX_HANDSHAKE_FRAME};
use cbdr::config::AgentConfig;
use common::{free_port, wait_for, CbdrEnv};
const TOKEN: &str = "hostile-test-token-7c1d9e0f2b3a4c5d";
const WRONG_TOKEN: &str = "not-the-token-0a1b2c3d4e5f6a7b";
/// `[agent] handshake_timeout` and `write_timeout` of the test agents.
const HANDSHAKE_SECS: u64 = 5;
const WRITE_SECS: u64 = 2;
/// Bound of the agent's peak RSS under every flood here (it idles at about
/// 15 MB; 1,200 callers took the unbounded agent past 1 GB).
const RSS_BOUND_KB: u64 = 64 * 1024;
/// "Back near the baseline" once the callers left.
const RSS_SLACK_KB: u64 = 8 * 1024;
const WAIT: Duration = Duration::from_secs(60);

/// A `cbdr agent` as the PostgreSQL OS user, on a free port, with a token
/// and short handshake and write timeouts; killed (its process group) on
/// drop.
struct Agent {
    _env: CbdrEnv,
    child: Child,
    addr: String,
    log: PathBuf,
    /// The agent's own pid (the child may be `runuser` around it).
    pid: u32,
}

impl Agent {
    fn start(name: &str) -> Agent {
        let env = CbdrEnv::builder(name)
            .wal_segment_size(None)
            .extra_toml(format!(
                "[agent]\ntoken = \"{TOKEN}\"\nhandshake_timeout = {HANDSHAKE_SECS}\nwrite_timeout = {WRITE_SECS}\n"
            ))
            .build();
        for attempt in 0.. {
            let port = free_port();
            let log = env.path(format!("agent-{port}.log"));
            let mut child = env
                .cmd()
                .command(&["-v", "agent", "--listen", &format!("127.0.0.1:{port}")])
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let started = wait_for("the agent to listen", WAIT, || {
                let text = fs::read_to_string(&log).unwrap_or_default();
                if text.contains("listening on") {
                    return Ok(true);
                }
                match child.try_wait().unwrap() {
                    Some(_) if text.contains("in use") && attempt < 5 => Ok(false),
                    Some(status) => panic!("the agent exited ({status}):\n{text}"),
                    None => Err(text),
                }
            });
            if !started {
                continue;
            }
            let mut agent = Agent {
                _env: env,
                child,
                addr: format!("127.0.0.1:{port}"),
                log,
                pid: 0,
            };
            agent.pid = agent.ping();
            return agent;
        }
        unreachable!()
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has a line containing every one of `parts`.
    fn wait_log_line(&self, parts: &[&str]) -> String {
        wait_for(&format!("an agent log line with {parts:?}"), WAIT, || {
            let text = self.log_text();
            text.lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(String::from)
                .ok_or_else(|| crate::tail(&text))
        })
    }

    /// A coordinator's request: connect, authenticate, ping. Returns the
    /// agent's pid.
    fn ping(&self) -> u32 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = AgentConfig {
            token: Some(TOKEN.into()),
            ..Default::default()
        };
        rt.block_on(async {
            let mut client = AgentClient::connect(&self.addr, &config, Duration::from_secs(20))
                .await
                .unwrap_or_else(|e| panic!("the coordinator's connection failed: {e}"));
            client
                .ping()
                .await
                .unwrap_or_else(|e| panic!("the coordinator's ping failed: {e}"))
                .pid
        })
    }

    /// (VmRSS, VmHWM) of the agent, in kB.
    fn rss_kb(&self) -> (u64, u64) {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/{}/status", self.pid))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.set_write_timeout(Some(WAIT)).unwrap();
        s
    }

    /// Asserts that no line of the log shows a token.
    fn assert_no_secret_logged(&self) {
        let log = self.log_text();
        for secret in [TOKEN, WRONG_TOKEN] {
            assert!(!log.contains(secret), "the log shows a token:\n{log}");
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group created for the agent.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Reads one frame as JSON; `None` at EOF or a reset (the agent closed).
/// Panics when the read times out: the agent neither answered nor closed.
fn read_frame(s: &mut TcpStream) -> Option<serde_json::Value> {
    let mut len = [0u8; 4];
    if let Err(e) = s.read_exact(&mut len) {
        return closed(e);
    }
    let len = u32::from_be_bytes(len) as usize;
    assert!(len <= MAX_FRAME, "the agent announced {len} bytes");
    let mut body = vec![0u8; len];
    if let Err(e) = s.read_exact(&mut body) {
        return closed(e);
    }
    Some(serde_json::from_slice(&body).unwrap())
}

fn closed(e: std::io::Error) -> Option<serde_json::Value> {
    match e.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => None,
        _ => panic!("neither an answer nor a close from the agent: {e}"),
    }
}

/// Reads frames until the agent closes the connection; returns them.
fn until_closed(s: &mut TcpStream) -> Vec<serde_json::Value> {
    let mut frames = Vec::new();
    while let Some(f) = read_frame(s) {
        frames.push(f);
        assert!(frames.len() < 10, "the agent keeps talking: {frames:?}");
    }
    frames
}

/// The challenge's nonce, from a fresh connection's first frame.
fn challenge(s: &mut TcpStream) -> Vec<u8> {
    let c = read_frame(s).expect("a challenge");
    assert_eq!(c["type"], "challenge", "{c}");
    hex::decode(c["nonce"].as_str().unwrap()).unwrap()
}

/// Sends `payload` after the challenge; returns the agent's refusal reason
/// (and checks that it then closed) and the caller's address.
fn refused_after(agent: &Agent, payload: &[u8], close_after: bool) -> (String, SocketAddr) {
    let mut s = agent.connect();
    let me = s.local_addr().unwrap();
    challenge(&mut s);
    s.write_all(payload).unwrap();
    if close_after {
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let frames = until_closed(&mut s);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "refused", "{frames:?}");
    (frames[0]["reason"].as_str().unwrap().to_string(), me)
}

#[test]
fn garbage_oversize_truncated_frames_and_a_wrong_token_are_refused_and_logged() {
    let agent = Agent::start("hostile-refusals");

    // Garbage: an HTTP request reads as a length prefix of 1.2 GB.
    let (reason, me) = refused_after(&agent, b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n", false);
    let limit = format!("exceeds the limit of {MAX_HANDSHAKE_FRAME} bytes");
    assert!(reason.contains(&limit), "{reason}");
    agent.wait_log_line(&[&format!("refused {me}"), &limit]);
    // Garbage inside a frame of a legal size.
    let (reason, me) = refused_after(&agent, &frame(b"\x00\xff garbage \x01\x02 {]"), false);
    assert!(reason.contains("malformed message"), "{reason}");
    agent.wait_log_line(&[&format!("refused {me}"), "malformed message"]);
    agent.ping();

    // A length prefix of 0xFFFFFFFF: refused from the prefix alone.
    let (reason, me) = refused_after(&agent, &u32::MAX.to_be_bytes(), false);
    assert!(reason.contains("a frame of 4294967295 bytes"), "{reason}");
    agent.wait_log_line(&[&format!("refused {me}"), "4294967295", &limit]);
    // The old limit (1 MiB) is far beyond what a handshake needs.
    let (reason, _) = refused_after(&agent, &(MAX_FRAME as u32).to_be_bytes(), false);
    assert!(reason.contains(&limit), "{reason}");

    // A frame that ends early: 100 bytes announced, 10 sent, then EOF.
    let mut cut = 100u32.to_be_bytes().to_vec();
    cut.extend_from_slice(br#"{"type":"a"#);
    let (reason, me) = refused_after(&agent, &cut, true);
    assert!(reason.contains("in the middle of a frame"), "{reason}");
    agent.wait_log_line(&[&format!("refused {me}"), "(10 of 100 bytes)"]);
    // The prefix itself cut short.
    let (reason, me) = refused_after(&agent, &[0, 0], true);
    assert!(reason.contains("in the middle of a frame"), "{reason}");
    agent.wait_log_line(&[&format!("refused {me}"), "(2 of 4 bytes)"]);
    agent.ping();

    // A wrong token (a well-formed answer with another token's MAC).
    let mut s = agent.connect();
    let me = s.local_addr().unwrap();
    let nonce = challenge(&mut s);
    let wrong = Token::from_text(WRONG_TOKEN, "test").unwrap();
    let client_nonce = new_nonce();
    let auth = serde_json::json!({
        "type": "auth",
        "protocol_version": cbdr::cluster::proto::PROTOCOL_VERSION,
        "client_nonce": hex::encode(client_nonce),
        "mac": hex::encode(wrong.client_mac(&nonce, &client_nonce)),
    });
    s.write_all(&frame(auth.to_string().as_bytes())).unwrap();
    let frames = until_closed(&mut s);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "refused", "{frames:?}");
    assert!(
        frames[0]["reason"]
            .as_str()
            .unwrap()
            .contains("wrong token"),
        "{frames:?}"
    );
    agent.wait_log_line(&[&format!("refused {me}"), "wrong token"]);
    // Through the library too: a clear error, exit code of an agent failure.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt
        .block_on(AgentClient::connect(
            &agent.addr,
            &AgentConfig {
                token: Some(WRONG_TOKEN.into()),
                ..Default::default()
            },
            Duration::from_secs(20),
        ))
        .unwrap_err();
    assert_eq!(e.exit_code(), cbdr::ExitCode::Agent, "{e}");
    assert!(e.to_string().contains("wrong token"), "{e}");

    // The coordinator is still served, and no token reached the log.
    agent.ping();
    agent.assert_no_secret_logged();
}

#[test]
fn silent_connections_are_bounded_closed_and_cost_little() {
    let agent = Agent::start("hostile-silent");
    let (base, _) = agent.rss_kb();
    let mut silent: Vec<TcpStream> = (0..200).map(|_| agent.connect()).collect();
    // The coordinator gets through while they hold their connections: a
    // newcomer closes the caller that has waited longest, never itself.
    agent.ping();
    let (rss, peak) = agent.rss_kb();
    eprintln!("200 silent connections: RSS {base} kB before, {rss} kB with them, peak {peak} kB");
    assert!(peak < RSS_BOUND_KB, "peak RSS {peak} kB");

    // Every one of them is closed by the agent: the oldest to make room,
    // the last 64 when their handshake time is up. Each got at most its
    // challenge and a refusal, then EOF (a read that timed out instead
    // would panic in read_frame).
    let mut timed_out = 0;
    for s in &mut silent {
        let frames = until_closed(s);
        let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
        assert!(
            matches!(
                kinds[..],
                [] | ["challenge"] | ["refused"] | ["challenge", "refused"]
            ),
            "{frames:?}"
        );
        if frames
            .last()
            .is_some_and(|r| r["reason"] == "authentication timed out")
        {
            timed_out += 1;
        }
    }
    assert!(
        timed_out >= 1,
        "no silent caller reached the handshake timeout"
    );
    let newest = silent.last().unwrap().local_addr().unwrap();
    agent.wait_log_line(&[
        &format!("refused {newest}"),
        &format!("did not authenticate within {HANDSHAKE_SECS} s"),
    ]);
    let oldest = silent[0].local_addr().unwrap();
    agent.wait_log_line(&[&format!("refused {oldest}"), "closed to make room for"]);
    drop(silent);
    let back = wait_for("the agent's RSS back near its baseline", WAIT, || {
        let (rss, _) = agent.rss_kb();
        (rss < base + RSS_SLACK_KB)
            .then_some(rss)
            .ok_or(format!("{rss} kB, baseline {base} kB"))
    });
    eprintln!("200 silent connections: RSS {back} kB after they closed");
    agent.ping();
}

#[test]
fn twelve_hundred_partial_frames_cost_little_and_memory_comes_back() {
    let agent = Agent::start("hostile-partial");
    let (base, _) = agent.rss_kb();
    // The issue's reproduction: each caller announces a frame just under
    // the old 1 MiB limit and sends 64 KiB of it; and, so that the agent
    // has frames within its limit to hold, every other caller announces
    // the largest handshake frame and sends half of it.
    let big = {
        let mut b = ((MAX_FRAME - 1) as u32).to_be_bytes().to_vec();
        b.resize(4 + 64 * 1024, b'x');
        b
    };
    let within = {
        let mut b = (MAX_HANDSHAKE_FRAME as u32).to_be_bytes().to_vec();
        b.resize(4 + MAX_HANDSHAKE_FRAME / 2, b' ');
        b
    };
    let mut callers = Vec::new();
    for i in 0..1200 {
        let mut s = agent.connect();
        // The agent may refuse and close before the last byte is written.
        let _ = s.write_all(if i % 2 == 0 { &big } else { &within });
        callers.push(s);
        if i % 300 == 299 {
            agent.ping();
        }
    }
    agent.ping();
    let (rss, peak) = agent.rss_kb();
    eprintln!("1,200 partial frames: RSS {base} kB before, {rss} kB with them, peak {peak} kB");
    assert!(peak < RSS_BOUND_KB, "peak RSS {peak} kB");
    let one = callers[0].local_addr().unwrap();
    agent.wait_log_line(&[&format!("refused {one}")]);
    drop(callers);
    let back = wait_for("the agent's RSS back near its baseline", WAIT, || {
        let (rss, _) = agent.rss_kb();
        (rss < base + RSS_SLACK_KB)
            .then_some(rss)
            .ok_or(format!("{rss} kB, baseline {base} kB"))
    });
    eprintln!("1,200 partial frames: RSS {back} kB after they closed");
    agent.ping();
}

#[test]
fn a_caller_that_stops_reading_is_dropped() {
    use socket2::{Domain, Socket, Type};
    let agent = Agent::start("hostile-stuck");
    // An authenticated caller with a tiny receive buffer that sends pings
    // and never reads the pongs: the agent's writes to it fill the buffers
    // and then block.
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let addr: SocketAddr = agent.addr.parse().unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let me = s.local_addr().unwrap();
    let nonce = challenge(&mut s);
    let token = Token::from_text(TOKEN, "test").unwrap();
    let client_nonce = new_nonce();
    let auth = serde_json::json!({
        "type": "auth",
        "protocol_version": cbdr::cluster::proto::PROTOCOL_VERSION,
        "client_nonce": hex::encode(client_nonce),
        "mac": hex::encode(token.client_mac(&nonce, &client_nonce)),
    });
    s.write_all(&frame(auth.to_string().as_bytes())).unwrap();
    let ok = read_frame(&mut s).expect("an answer to the authentication");
    assert_eq!(ok["type"], "auth_ok", "{ok}");

    let pings: Vec<u8> = (0..1000)
        .flat_map(|_| frame(br#"{"type":"ping"}"#))
        .collect();
    // Once the agent stops reading too, this write blocks; it ends when
    // the agent drops the connection (an error) or after its own timeout.
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut sent = 0usize;
    while s.write_all(&pings).is_ok() {
        sent += 1000;
        assert!(sent < 10_000_000, "the agent answered {sent} pings unread");
    }
    // Meanwhile the coordinator is served.
    agent.ping();
    agent.wait_log_line(&[
        &format!("dropped {me}"),
        &format!("read nothing for {WRITE_SECS} s"),
    ]);
    // The connection is closed: what the agent had sent, then EOF or a
    // reset (never a read that waits).
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the agent did not close the stuck connection: {e}"),
        }
    }
    agent.ping();
}
