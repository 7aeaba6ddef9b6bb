//! `cbdr agent`: the per-host daemon of the cluster mode. It backs up and
//! restores the instances of its host on the coordinator's request, with
//! its own repository settings (storage and key live on the agent host).
//!
//! Every connection authenticates first ([`super::auth`]); anything else
//! is refused and logged with the peer's address. Before authentication a
//! caller costs the agent a few KiB at most: its frames are limited to
//! [`MAX_HANDSHAKE_FRAME`], at most [`MAX_HANDSHAKES`] callers are in the
//! handshake at once (a new one closes the one that has waited longest, so
//! a flood of silent connections cannot lock the coordinator out), and a
//! handshake ends after `[agent] handshake_timeout`. Every write to a
//! caller is bounded by `[agent] write_timeout`: a caller that stops
//! reading is dropped and its job aborted. One job per connection:
//! progress heartbeats go out every second, and when the connection drops
//! the job is aborted (an unfinished backup never writes its record, so it
//! never exists for `list` or `restore`).

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::auth::{self, Token};
use super::proto::{
    read_frame_bytes_within, read_frame_within, write_frame, AgentInfo, AgentMessage, AsyncStream,
    AuthMethod, BackupRequest, CheckRequest, ClientMessage, ControlAction, ControlRequest,
    FileContents, FileWritten, FilesDone, FilesRequest, FrameError, Pong, Progress, RestartRequest,
    RestoreDone, RestoreRequest, StandbyDone, StandbyRequest, MAX_HANDSHAKE_FRAME,
    MAX_REQUEST_FRAME, PROTOCOL_VERSION,
};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pg::conn::ConnParams;
use crate::physical::backup::{backup_push, BackupOptions, PART_TARGET};
use crate::physical::check::{check_instance, CheckOptions, InstanceCheck};
use crate::physical::progress::Progress as JobProgress;
use crate::physical::restore::{restore, RestoreOptions};
use crate::repo::catalog::BackupRecord;
use crate::repo::Repo;
use crate::task::AbortOnDrop;

/// Where the agent listens without `--listen` or `[agent] listen`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7070";
/// Interval of the progress heartbeats of a running job.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Time a caller has to complete TLS and authentication, without
/// `[agent] handshake_timeout`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a write may wait for the caller to read, without `[agent]
/// write_timeout`.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Callers in the TLS handshake or authentication at once.
pub const MAX_HANDSHAKES: usize = 64;
/// Bound of the last word (`Refused`) to a caller being dropped.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a job waits for the previous job of its instance to end.
const SLOT_WAIT: Duration = Duration::from_secs(10);
const SLOT_POLL: Duration = Duration::from_millis(100);
/// Parts a restore downloads at once.
const RESTORE_PARALLEL: usize = 4;

/// The agent: its settings, credentials and running jobs.
pub struct Agent {
    config: Arc<Config>,
    token: Option<Token>,
    tls: Option<TlsAcceptor>,
    auth: AuthMethod,
    started: Instant,
    hostname: String,
    jobs: Arc<AtomicU32>,
    /// Content ids with a job running: one job per instance at a time.
    busy: Arc<Mutex<HashSet<i32>>>,
    handshake_timeout: Duration,
    write_timeout: Duration,
    handshakes: Arc<Handshakes>,
}

impl Agent {
    /// Checks the authentication settings and loads the credentials.
    /// Refuses to run without a token unless mutual TLS authenticates
    /// callers.
    pub fn new(config: Config) -> Result<Agent> {
        let token = auth::load_token(&config.agent)?;
        let tls = auth::server_tls(&config.agent)?;
        let mtls = tls.is_some() && config.agent.tls_client_ca.is_some();
        let auth = match (&token, mtls) {
            (Some(_), _) => AuthMethod::Token,
            (None, true) => AuthMethod::Mtls,
            (None, false) => {
                return Err(Error::Usage(format!(
                    "the agent has no way to authenticate callers, so it refuses to start: set a shared token ({}), or mutual TLS (tls_cert, tls_key and tls_client_ca in [agent])",
                    auth::TOKEN_HOWTO
                )))
            }
        };
        let handshake_timeout = seconds(
            config.agent.handshake_timeout,
            HANDSHAKE_TIMEOUT,
            "handshake_timeout",
        )?;
        let write_timeout = seconds(config.agent.write_timeout, WRITE_TIMEOUT, "write_timeout")?;
        Ok(Agent {
            handshake_timeout,
            write_timeout,
            handshakes: Arc::new(Handshakes::new(MAX_HANDSHAKES)),
            config: Arc::new(config),
            token,
            tls: tls.map(TlsAcceptor::from),
            auth,
            started: Instant::now(),
            hostname: hostname(),
            jobs: Arc::new(AtomicU32::new(0)),
            busy: Arc::default(),
        })
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    pub fn auth_method(&self) -> AuthMethod {
        self.auth
    }

    /// "tls: on, auth: token", for the start-up line.
    pub fn describe(&self) -> String {
        format!(
            "tls: {}, auth: {}{}",
            if self.tls_enabled() { "on" } else { "off" },
            match self.auth {
                AuthMethod::Token => "token",
                AuthMethod::Mtls => "mtls",
            },
            if self.auth == AuthMethod::Token && self.config.agent.tls_client_ca.is_some() {
                "+mtls"
            } else {
                ""
            }
        )
    }

    fn info(&self) -> AgentInfo {
        AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: self.hostname.clone(),
            pid: std::process::id(),
        }
    }

    /// Serves connections until `shutdown` completes; then stops accepting
    /// and aborts the running jobs.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let mut connections: JoinSet<()> = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let (ticket, evicted) = self.handshakes.admit(peer);
                        if let Some(old) = evicted {
                            tracing::warn!(
                                "refused {old}: closed to make room for {peer}: {MAX_HANDSHAKES} callers were authenticating at once, {old} for the longest"
                            );
                        }
                        let agent = self.clone();
                        connections.spawn(async move { agent.connection(tcp, peer, ticket).await });
                    }
                    Err(e) => {
                        // E.g. too many open files: keep serving the others.
                        tracing::warn!("accepting a connection failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                // Reap finished connections.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        let running = self.jobs.load(Ordering::SeqCst);
        connections.abort_all();
        while connections.join_next().await.is_some() {}
        tracing::info!(
            "agent stopped{}",
            if running > 0 {
                format!(": {running} running job(s) aborted")
            } else {
                String::new()
            }
        );
        Ok(())
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        mut ticket: HandshakeTicket,
    ) {
        let _ = tcp.set_nodelay(true);
        // Notices a coordinator host that vanished during a long job.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(30))
            .with_interval(Duration::from_secs(10));
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        let secs = self.handshake_timeout.as_secs();
        let stream: Box<dyn AsyncStream> = match &self.tls {
            None => Box::new(tcp),
            Some(acceptor) => {
                let accepted = tokio::select! {
                    r = tokio::time::timeout_at(deadline, acceptor.accept(tcp)) => r,
                    // Logged by the accept loop.
                    _ = &mut ticket.evicted => return,
                };
                match accepted {
                    Ok(Ok(s)) => Box::new(s),
                    Ok(Err(e)) => {
                        tracing::warn!("refused {peer}: TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!("refused {peer}: no TLS handshake within {secs} s");
                        return;
                    }
                }
            }
        };
        let (mut rd, mut wr) = tokio::io::split(stream);
        let outcome = tokio::select! {
            r = tokio::time::timeout_at(deadline, self.handshake(&mut rd, &mut wr, peer)) => {
                r.map_err(|_| HandshakeEnd::TimedOut)
            }
            _ = &mut ticket.evicted => Err(HandshakeEnd::Evicted),
        };
        let authed = match outcome {
            Ok(Some(a)) => a,
            Ok(None) => return,
            Err(end) => {
                let reason = match end {
                    HandshakeEnd::TimedOut => {
                        tracing::warn!("refused {peer}: it did not authenticate within {secs} s");
                        "authentication timed out"
                    }
                    // Logged by the accept loop.
                    HandshakeEnd::Evicted => {
                        "too many callers are authenticating at once: try again"
                    }
                };
                let refused = AgentMessage::Refused {
                    reason: reason.into(),
                };
                let _ =
                    tokio::time::timeout(FAREWELL_TIMEOUT, write_frame(&mut wr, &refused)).await;
                return;
            }
        };
        // Authenticated: no longer counted among the handshakes.
        drop(ticket);
        tracing::debug!("{peer} authenticated");
        loop {
            let msg: ClientMessage = match read_frame_within(&mut rd, MAX_REQUEST_FRAME).await {
                Ok(m) => m,
                Err(e) if e.is_disconnect() => return,
                Err(e) => {
                    self.refuse(&mut wr, peer, &format!("{e}")).await;
                    return;
                }
            };
            match msg {
                ClientMessage::Ping => {
                    let pong = AgentMessage::Pong(Pong {
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        hostname: self.hostname.clone(),
                        pid: std::process::id(),
                        uptime_secs: self.started.elapsed().as_secs(),
                        jobs_running: self.jobs.load(Ordering::SeqCst),
                    });
                    if let Err(e) = self.send(&mut wr, &pong).await {
                        if !e.is_disconnect() {
                            tracing::warn!("dropped {peer}: answering its ping failed: {e}");
                        }
                        return;
                    }
                }
                ClientMessage::Auth { .. } => {
                    self.refuse(&mut wr, peer, "already authenticated").await;
                    return;
                }
                ClientMessage::Backup(req) => {
                    self.run_job(Job::Backup(req), &mut rd, &mut wr, peer).await;
                    return;
                }
                ClientMessage::Restore(req) => {
                    self.run_job(Job::Restore(req), &mut rd, &mut wr, peer)
                        .await;
                    return;
                }
                ClientMessage::Check(req) => {
                    self.run_job(Job::Check(req), &mut rd, &mut wr, peer).await;
                    return;
                }
                ClientMessage::Standby(req) => {
                    self.run_job(Job::Standby(req), &mut rd, &mut wr, peer)
                        .await;
                    return;
                }
                ClientMessage::Restart(req) => {
                    self.run_job(Job::Restart(req), &mut rd, &mut wr, peer)
                        .await;
                    return;
                }
                ClientMessage::Control(req) => {
                    self.run_job(Job::Control(req), &mut rd, &mut wr, peer)
                        .await;
                    return;
                }
                ClientMessage::Files(req) => {
                    let reply = match write_files(&req, &authed, self.tls.is_some()) {
                        Ok(done) => {
                            tracing::info!(
                                "files for {peer}: {}",
                                done.written
                                    .iter()
                                    .map(|w| format!(
                                        "{} {}",
                                        w.path,
                                        if w.changed { "written" } else { "unchanged" }
                                    ))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            );
                            AgentMessage::FilesDone(done)
                        }
                        Err(e) => {
                            let message = e.render();
                            tracing::warn!("files for {peer}: refused: {message}");
                            AgentMessage::Failed {
                                message,
                                exit_code: e.exit_code() as u8,
                            }
                        }
                    };
                    let _ = self.send(&mut wr, &reply).await;
                    return;
                }
            }
        }
    }

    /// The challenge-response; true when the caller is authenticated.
    /// Every refusal is answered with `Refused` and logged (never with the
    /// token or a MAC).
    async fn handshake<R, W>(&self, rd: &mut R, wr: &mut W, peer: SocketAddr) -> Option<Authed>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let nonce = auth::new_nonce();
        let challenge = AgentMessage::Challenge {
            protocol_version: PROTOCOL_VERSION,
            nonce: hex::encode(nonce),
            auth: self.auth,
        };
        if let Err(e) = self.send(wr, &challenge).await {
            if !e.is_disconnect() {
                tracing::warn!("refused {peer}: sending the challenge failed: {e}");
            }
            return None;
        }
        let msg: ClientMessage = match read_frame_within(rd, MAX_HANDSHAKE_FRAME).await {
            Ok(m) => m,
            Err(FrameError::Closed) => {
                tracing::debug!("{peer} closed the connection before authenticating");
                return None;
            }
            Err(e) => {
                self.refuse(wr, peer, &format!("before authentication: {e}"))
                    .await;
                return None;
            }
        };
        let ClientMessage::Auth {
            protocol_version,
            client_nonce,
            mac,
        } = msg
        else {
            self.refuse(
                wr,
                peer,
                &format!(
                    "a {} request before authentication: authenticate first",
                    msg.kind()
                ),
            )
            .await;
            return None;
        };
        if protocol_version != PROTOCOL_VERSION {
            self.refuse(
                wr,
                peer,
                &format!(
                    "protocol version {protocol_version} is not supported (this agent speaks {PROTOCOL_VERSION}): run the same cbdr version on the coordinator and the agents"
                ),
            )
            .await;
            return None;
        }
        let Some(client_nonce) = auth::parse_nonce(&client_nonce) else {
            self.refuse(wr, peer, "a malformed client nonce").await;
            return None;
        };
        let (agent_mac, authed) = match &self.token {
            Some(token) => {
                let mac = hex::decode(&mac).unwrap_or_default();
                if !token.verify_client_mac(&nonce, &client_nonce, &mac) {
                    self.refuse(wr, peer, "authentication failed: wrong token")
                        .await;
                    return None;
                }
                (
                    hex::encode(token.agent_mac(&client_nonce, &nonce)),
                    Authed::Token(token.session_key(&nonce, &client_nonce)),
                )
            }
            // The TLS layer has checked the client certificate.
            None => (String::new(), Authed::Mtls),
        };
        let ok = AgentMessage::AuthOk {
            mac: agent_mac,
            agent: self.info(),
        };
        match self.send(wr, &ok).await {
            Ok(()) => Some(authed),
            Err(e) => {
                if !e.is_disconnect() {
                    tracing::warn!(
                        "refused {peer}: sending the authentication's answer failed: {e}"
                    );
                }
                None
            }
        }
    }

    /// The instance's job slot. A job that is ending (its caller just went
    /// away, say after a failed cluster backup that is retried at once)
    /// frees it within moments, so a new job waits up to [`SLOT_WAIT`] for
    /// it, sending heartbeats, before it is refused.
    async fn wait_for_slot<W>(
        &self,
        content_id: i32,
        wr: &mut W,
        what: &str,
        peer: SocketAddr,
    ) -> Option<JobSlot>
    where
        W: AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let mut next_beat = started;
        loop {
            if let Some(slot) = JobSlot::take(self, content_id) {
                return Some(slot);
            }
            if started.elapsed() >= SLOT_WAIT {
                return None;
            }
            if Instant::now() >= next_beat {
                next_beat += HEARTBEAT;
                let waiting = AgentMessage::Progress(Progress {
                    done_bytes: 0,
                    total_bytes: None,
                    phase: "waiting for this instance's previous job to end".into(),
                });
                if let Err(e) = self.send(wr, &waiting).await {
                    tracing::warn!("{what} for {peer}: the caller left while it waited ({e})");
                    return None;
                }
            }
            tokio::time::sleep(SLOT_POLL).await;
        }
    }

    /// Runs a job while sending heartbeats; aborts it when the connection
    /// drops or the caller sends anything.
    async fn run_job<R, W>(&self, job: Job, rd: &mut R, wr: &mut W, peer: SocketAddr)
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let what = job.describe();
        let Some(_slot) = self.wait_for_slot(job.content_id(), wr, &what, peer).await else {
            let _ = self.send(
                wr,
                &AgentMessage::Failed {
                    message: format!(
                        "a job for content id {} is already running on this agent and did not end within {} s: wait for it to end (the agent's log says what it does)",
                        job.content_id(),
                        SLOT_WAIT.as_secs()
                    ),
                    exit_code: crate::error::ExitCode::Usage as u8,
                },
            )
            .await;
            tracing::warn!("{what} for {peer}: refused, another job for this instance is running");
            return;
        };
        tracing::info!("{what} for {peer}: started");
        let started = Instant::now();
        let progress = Arc::new(JobProgress::new());
        progress.set_phase("starting");
        let mut task = AbortOnDrop(tokio::spawn(job.run(self.config.clone(), progress.clone())));
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let caller = read_frame_bytes_within(rd, MAX_REQUEST_FRAME);
        tokio::pin!(caller);
        loop {
            tokio::select! {
                joined = &mut task.0 => {
                    let secs = started.elapsed().as_secs_f64();
                    let reply = match joined {
                        Ok(Ok(done)) => {
                            tracing::info!("{what} for {peer}: done in {secs:.1} s: {}", done.describe());
                            done.into_message()
                        }
                        Ok(Err(e)) => {
                            let message = e.render();
                            tracing::info!("{what} for {peer}: failed after {secs:.1} s: {message}");
                            AgentMessage::Failed { message, exit_code: e.exit_code() as u8 }
                        }
                        Err(e) => {
                            tracing::error!("{what} for {peer}: the job's task failed: {e}");
                            AgentMessage::Failed {
                                message: format!("internal error: the job's task failed: {e}"),
                                exit_code: crate::error::ExitCode::Internal as u8,
                            }
                        }
                    };
                    if let Err(e) = self.send(wr, &reply).await {
                        tracing::warn!("{what} for {peer}: the result could not be sent: {e}");
                    }
                    return;
                }
                _ = tick.tick() => {
                    let beat = AgentMessage::Progress(Progress {
                        done_bytes: progress.done(),
                        total_bytes: progress.total(),
                        phase: progress.phase().to_string(),
                    });
                    if let Err(e) = self.send(wr, &beat).await {
                        tracing::warn!(
                            "{what} for {peer}: aborted after {:.1} s: its heartbeat could not be sent ({e})",
                            started.elapsed().as_secs_f64()
                        );
                        return;
                    }
                }
                r = &mut caller => {
                    let why = match r {
                        Err(e) if e.is_disconnect() => "the caller closed the connection".to_string(),
                        Err(e) => format!("the connection failed ({e})"),
                        Ok(_) => "the caller sent a message during the job".to_string(),
                    };
                    tracing::warn!(
                        "{what} for {peer}: aborted after {:.1} s: {why}",
                        started.elapsed().as_secs_f64()
                    );
                    return;
                }
            }
        }
    }
}

impl Agent {
    /// Writes one message, waiting at most `write_timeout` for the caller
    /// to make room (a caller that stops reading fails with `TimedOut`).
    async fn send<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut W,
        msg: &AgentMessage,
    ) -> std::result::Result<(), FrameError> {
        match tokio::time::timeout(self.write_timeout, write_frame(wr, msg)).await {
            Ok(r) => r,
            Err(_) => Err(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the caller read nothing for {} s (write_timeout)",
                    self.write_timeout.as_secs()
                ),
            ))),
        }
    }

    /// Answers `Refused` and logs the refusal with the peer's address.
    async fn refuse<W: AsyncWrite + Unpin>(&self, wr: &mut W, peer: SocketAddr, reason: &str) {
        tracing::warn!("refused {peer}: {reason}");
        let refused = AgentMessage::Refused {
            reason: reason.to_string(),
        };
        let _ = tokio::time::timeout(FAREWELL_TIMEOUT, write_frame(wr, &refused)).await;
    }
}

/// `[agent] <name>` in seconds, else `default`; zero is refused.
fn seconds(value: Option<u64>, default: Duration, name: &str) -> Result<Duration> {
    match value {
        None => Ok(default),
        Some(0) => Err(Error::Usage(format!(
            "[agent] {name} = 0 is not allowed: give a number of seconds of at least 1 (default {})",
            default.as_secs()
        ))),
        Some(n) => Ok(Duration::from_secs(n)),
    }
}

/// Why a handshake ended before the caller authenticated, when the agent
/// ended it.
enum HandshakeEnd {
    /// `handshake_timeout` passed.
    TimedOut,
    /// A newer caller took its place.
    Evicted,
}

/// The callers in the handshake (TLS and authentication), oldest first.
/// At the limit, admitting one more closes the oldest: a silent caller
/// then holds its place only until [`MAX_HANDSHAKES`] newer ones arrived,
/// while a real caller needs its place for one round trip.
struct Handshakes {
    limit: usize,
    queue: Mutex<HandshakeQueue>,
}

#[derive(Default)]
struct HandshakeQueue {
    next_id: u64,
    pending: VecDeque<(u64, SocketAddr, oneshot::Sender<()>)>,
}

/// A caller's place among the handshakes; freed when dropped. `evicted`
/// fires when a newer caller took the place.
struct HandshakeTicket {
    handshakes: Arc<Handshakes>,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

impl Handshakes {
    fn new(limit: usize) -> Handshakes {
        Handshakes {
            limit: limit.max(1),
            queue: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HandshakeQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits `peer`; returns its ticket and the address of the caller
    /// closed to make room, if any.
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> (HandshakeTicket, Option<SocketAddr>) {
        let mut q = self.lock();
        let mut evicted = None;
        while q.pending.len() >= self.limit {
            let Some((_, addr, tx)) = q.pending.pop_front() else {
                break;
            };
            let _ = tx.send(());
            evicted = Some(addr);
        }
        let id = q.next_id;
        q.next_id += 1;
        let (tx, rx) = oneshot::channel();
        q.pending.push_back((id, peer, tx));
        (
            HandshakeTicket {
                handshakes: self.clone(),
                id,
                evicted: rx,
            },
            evicted,
        )
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().pending.len()
    }
}

impl Drop for HandshakeTicket {
    fn drop(&mut self) {
        let mut q = self.handshakes.lock();
        if let Some(i) = q.pending.iter().position(|(id, _, _)| *id == self.id) {
            q.pending.remove(i);
        }
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// A running job's place: counted in `jobs`, its content id in `busy`.
struct JobSlot {
    jobs: Arc<AtomicU32>,
    busy: Arc<Mutex<HashSet<i32>>>,
    content_id: i32,
}

impl JobSlot {
    fn take(agent: &Agent, content_id: i32) -> Option<JobSlot> {
        if !agent
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(content_id)
        {
            return None;
        }
        agent.jobs.fetch_add(1, Ordering::SeqCst);
        Some(JobSlot {
            jobs: agent.jobs.clone(),
            busy: agent.busy.clone(),
            content_id,
        })
    }
}

impl Drop for JobSlot {
    fn drop(&mut self) {
        self.jobs.fetch_sub(1, Ordering::SeqCst);
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.content_id);
    }
}

enum Job {
    Backup(BackupRequest),
    Restore(RestoreRequest),
    Check(CheckRequest),
    Standby(StandbyRequest),
    Restart(RestartRequest),
    Control(ControlRequest),
}

enum JobDone {
    Backup(BackupRecord),
    Restore(RestoreDone),
    Check(InstanceCheck),
    Standby(StandbyDone),
    Restart(String),
    Control(String),
}

impl JobDone {
    fn describe(&self) -> String {
        let b = match self {
            JobDone::Backup(b) => b,
            JobDone::Restore(r) => &r.backup,
            JobDone::Standby(d) => return format!("standby: {}", d.report),
            JobDone::Restart(r) => return format!("restart: {r}"),
            JobDone::Control(r) => return r.clone(),
            JobDone::Check(c) => {
                let failed: Vec<&str> = c.failures().map(|i| i.check.as_str()).collect();
                return if failed.is_empty() {
                    format!("check: {} checks passed", c.items.len())
                } else {
                    format!("check: failed: {}", failed.join(", "))
                };
            }
        };
        format!(
            "backup {}, {} MB, stored {} MB",
            b.name,
            b.plain_bytes() / 1_000_000,
            b.stored_bytes() / 1_000_000
        )
    }

    fn into_message(self) -> AgentMessage {
        match self {
            JobDone::Backup(record) => AgentMessage::BackupDone { record },
            JobDone::Restore(r) => AgentMessage::RestoreDone(r),
            JobDone::Check(c) => AgentMessage::CheckDone(c),
            JobDone::Standby(d) => AgentMessage::StandbyDone(d),
            JobDone::Restart(report) => AgentMessage::RestartDone { report },
            JobDone::Control(report) => AgentMessage::ControlDone { report },
        }
    }
}

impl Job {
    fn content_id(&self) -> i32 {
        match self {
            Job::Backup(r) => r.content_id,
            Job::Restore(r) => r.content_id,
            Job::Check(r) => r.content_id,
            Job::Standby(r) => r.content_id,
            Job::Restart(r) => r.content_id,
            Job::Control(r) => r.content_id,
        }
    }

    fn describe(&self) -> String {
        match self {
            Job::Backup(r) => format!("backup of content {} ({}:{})", r.content_id, r.host, r.port),
            Job::Restore(r) => format!("restore of content {} into {}", r.content_id, r.target_dir),
            Job::Check(r) => format!("check of content {} ({}:{})", r.content_id, r.host, r.port),
            Job::Standby(r) => format!(
                "standby of content {} in {} to restore point {}",
                r.content_id, r.data_dir, r.restore_point
            ),
            Job::Restart(r) => format!("restart of content {} in {}", r.content_id, r.data_dir),
            Job::Control(r) => match r.action {
                ControlAction::Stop => {
                    format!("stop of content {} in {}", r.content_id, r.data_dir)
                }
                ControlAction::GreenplumStart => {
                    format!("gpstart of the cluster of coordinator {}", r.data_dir)
                }
            },
        }
    }

    async fn run(self, config: Arc<Config>, progress: Arc<JobProgress>) -> Result<JobDone> {
        match self {
            Job::Backup(req) => backup_job(&config, req, progress)
                .await
                .map(JobDone::Backup),
            Job::Restore(req) => restore_job(&config, req, progress)
                .await
                .map(JobDone::Restore),
            Job::Check(req) => check_job(&config, req, progress).await.map(JobDone::Check),
            Job::Standby(req) => standby_job(req, progress).await.map(JobDone::Standby),
            Job::Restart(req) => restart_job(req, progress).await.map(JobDone::Restart),
            Job::Control(req) => control_job(req, progress).await.map(JobDone::Control),
        }
    }
}

fn check_content_id(id: i32) -> Result<()> {
    if id < -1 {
        return Err(Error::Usage(format!(
            "content id {id} is not valid: -1 is the coordinator, 0 and up the segments"
        )));
    }
    Ok(())
}

async fn backup_job(
    config: &Config,
    req: BackupRequest,
    progress: Arc<JobProgress>,
) -> Result<BackupRecord> {
    check_content_id(req.content_id)?;
    let repo = Repo::open(config).await?;
    let conn = instance_conn(req.host, req.port, req.user, req.database);
    let opts = BackupOptions {
        content_id: req.content_id,
        conn,
        wal_wait: Duration::from_secs(req.wal_wait_secs),
        part_target: PART_TARGET,
        compress_on: config.compression.compress_on,
        progress: Some(progress),
        mode: req.mode,
        delta_max_steps: req.delta_max_steps,
    };
    backup_push(&repo, &opts).await
}

/// How the agent reaches its instance. The password comes from the agent's
/// environment or ~/.pgpass, never the wire.
fn instance_conn(
    host: String,
    port: u16,
    user: Option<String>,
    database: Option<String>,
) -> ConnParams {
    let mut conn = ConnParams::from_env();
    conn.host = host;
    conn.port = port;
    if let Some(user) = user {
        conn.user = user;
    }
    if let Some(db) = database {
        conn.dbname = db;
    }
    conn
}

/// `cbdr check` of one instance, with the agent's repository settings. A
/// failed check is in the report, not an error.
async fn check_job(
    config: &Config,
    req: CheckRequest,
    progress: Arc<JobProgress>,
) -> Result<InstanceCheck> {
    check_content_id(req.content_id)?;
    progress.set_phase("checking");
    let opts = CheckOptions {
        content_id: req.content_id,
        conn: instance_conn(req.host, req.port, req.user, req.database),
        wal_timeout: Duration::from_secs(req.wal_timeout_secs),
    };
    Ok(check_instance(config, &opts).await)
}

/// The data directory of an instance on this host named by a request.
fn instance_dir(content_id: i32, data_dir: &str) -> Result<PathBuf> {
    check_content_id(content_id)?;
    let dir = PathBuf::from(data_dir);
    if !dir.is_absolute() || !dir.join("PG_VERSION").exists() {
        return Err(Error::Usage(format!(
            "{data_dir:?} is not the data directory of a PostgreSQL instance on this host"
        )));
    }
    Ok(dir)
}

/// Restarts an instance (`pg_ctl restart -m fast`, waiting).
async fn restart_job(req: RestartRequest, progress: Arc<JobProgress>) -> Result<String> {
    let dir = instance_dir(req.content_id, &req.data_dir)?;
    progress.set_phase("restarting");
    let timeout = Duration::from_secs(req.timeout_secs);
    tokio::task::spawn_blocking(move || crate::physical::start::restart(&dir, None, timeout))
        .await
        .map_err(|e| Error::Internal(format!("restart task: {e}")))?
}

/// Stops an instance, or runs `gpstart` for the coordinator's cluster.
async fn control_job(req: ControlRequest, progress: Arc<JobProgress>) -> Result<String> {
    let dir = instance_dir(req.content_id, &req.data_dir)?;
    let timeout = Duration::from_secs(req.timeout_secs);
    match req.action {
        ControlAction::Stop => {
            progress.set_phase("stopping");
            let started = std::time::Instant::now();
            let d = dir.clone();
            tokio::task::spawn_blocking(move || crate::physical::start::stop_if_running(&d, None))
                .await
                .map_err(|e| Error::Internal(format!("stop task: {e}")))?
                .map(|was| {
                    if was {
                        format!("stopped in {:.1} s", started.elapsed().as_secs_f64())
                    } else {
                        "was not running".to_string()
                    }
                })
        }
        ControlAction::GreenplumStart => {
            if req.content_id != crate::cluster::topology::COORDINATOR {
                return Err(Error::Usage(format!(
                    "gpstart runs on the coordinator (content id -1), not on content id {}",
                    req.content_id
                )));
            }
            progress.set_phase("gpstart");
            tokio::task::spawn_blocking(move || {
                crate::cluster::greenplum::run_gpstart(&dir, timeout)
            })
            .await
            .map_err(|e| Error::Internal(format!("gpstart task: {e}")))?
        }
    }
}

/// How a caller authenticated: with the token (its session key seals what
/// it sends in confidence), or by its TLS client certificate.
enum Authed {
    Token(auth::SessionKey),
    Mtls,
}

/// Writes the files a caller sent (`configure backup`: the config and the
/// secrets it names): each opened with the session key (or, over TLS
/// without a token, sent in the clear inside TLS), written whole with mode
/// 0600 and renamed over the old one; a file whose content is already the
/// same is left alone.
fn write_files(req: &FilesRequest, authed: &Authed, tls: bool) -> Result<FilesDone> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let mut written = Vec::new();
    for f in &req.files {
        let path = PathBuf::from(&f.path);
        if !path.is_absolute() || path.file_name().is_none() {
            return Err(Error::Usage(format!(
                "{:?} is not an absolute file path",
                f.path
            )));
        }
        let contents: zeroize::Zeroizing<Vec<u8>> = match (&f.contents, authed) {
            (FileContents::Sealed(sealed), Authed::Token(key)) => {
                key.open(&f.path, sealed).ok_or_else(|| {
                    Error::Usage(format!(
                        "the contents sent for {} do not open with this session's key (altered in transit, or not sealed for this file)",
                        f.path
                    ))
                })?
            }
            (FileContents::Plain(hex_text), Authed::Mtls) if tls => zeroize::Zeroizing::new(
                hex::decode(hex_text)
                    .map_err(|_| Error::Usage(format!("the contents of {} are not hex", f.path)))?,
            ),
            _ => {
                return Err(Error::Usage(format!(
                    "the contents of {} were not sent sealed with this session's key (token) or over mutual TLS: refused, secrets never travel in the clear",
                    f.path
                )))
            }
        };
        let same = std::fs::read(&path).is_ok_and(|old| old == *contents)
            && std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o777 == 0o600);
        if !same {
            let write = || -> std::io::Result<()> {
                let mut a = crate::fsutil::AtomicFile::create(&path)?;
                a.file()
                    .set_permissions(std::fs::Permissions::from_mode(0o600))?;
                a.write_all(&contents)?;
                a.commit()
            };
            write().map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        written.push(FileWritten {
            path: f.path.clone(),
            changed: !same,
        });
    }
    Ok(FilesDone { written })
}

/// Moves a standby to another restore point (retarget, restart, wait).
async fn standby_job(req: StandbyRequest, progress: Arc<JobProgress>) -> Result<StandbyDone> {
    check_content_id(req.content_id)?;
    let dir = PathBuf::from(&req.data_dir);
    if !dir.is_absolute() {
        return Err(Error::Usage(format!(
            "standby directory {:?} is not an absolute path",
            req.data_dir
        )));
    }
    progress.set_phase("replaying to the restore point");
    let timeout = Duration::from_secs(req.timeout_secs);
    let report = tokio::task::spawn_blocking(move || {
        crate::physical::standby::advance(&dir, None, &req.restore_point, timeout)
    })
    .await
    .map_err(|e| Error::Internal(format!("standby task: {e}")))??;
    Ok(StandbyDone { report })
}

/// `<this cbdr> --config <its config> wal-fetch %f %p --content-id N`.
fn default_restore_command(config: &Config, content_id: i32) -> Result<String> {
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the cbdr executable", e))?;
    let mut cmd = exe.display().to_string();
    if let Some(src) = &config.source {
        let abs = std::fs::canonicalize(src).unwrap_or(src.clone());
        cmd.push_str(&format!(" --config {}", abs.display()));
    }
    cmd.push_str(&format!(" wal-fetch %f %p --content-id {content_id}"));
    Ok(cmd)
}

async fn restore_job(
    config: &Config,
    req: RestoreRequest,
    progress: Arc<JobProgress>,
) -> Result<RestoreDone> {
    check_content_id(req.content_id)?;
    let target_dir = PathBuf::from(&req.target_dir);
    if !target_dir.is_absolute() {
        return Err(Error::Usage(format!(
            "target directory {:?} is not an absolute path",
            req.target_dir
        )));
    }
    // SAFETY: geteuid has no preconditions.
    if req.start && unsafe { libc::geteuid() } == 0 {
        return Err(Error::Usage(
            "the agent runs as root, and PostgreSQL refuses to start as root: run `cbdr agent` as the database's OS user (e.g. postgres or gpadmin), who then also owns the restored files".into(),
        ));
    }
    let restore_command = match req.restore_command {
        Some(c) => c,
        None => default_restore_command(config, req.content_id)?,
    };
    let action = req.action.into();
    let opts = RestoreOptions {
        content_id: req.content_id,
        target_dir: target_dir.clone(),
        backup: req.backup,
        target: req.target.to_target()?,
        action,
        tablespace_map: req.tablespace_map,
        force: req.force,
        restore_command,
        parallel: RESTORE_PARALLEL,
        archive_off: req.archive_off,
        settings: req.settings,
        progress: Some(progress.clone()),
        gp_dbid: req.dbid,
    };
    let repo = Repo::open(config).await?;
    let backup = restore(&repo, &opts).await?;
    if let Some(port) = req.port {
        set_port(&target_dir, port)?;
    }
    if let Some(dbid) = req.dbid {
        set_dbid(&target_dir, dbid)?;
    }
    let start_report = if req.start {
        progress.set_phase("starting server");
        let timeout = Duration::from_secs(req.start_timeout_secs);
        let port = req.port;
        let greenplum_utility = req.greenplum_utility;
        let dir = target_dir.clone();
        let report = tokio::task::spawn_blocking(move || {
            let utility: &[&str] = if greenplum_utility {
                &[crate::cluster::greenplum::UTILITY_MODE]
            } else {
                &[]
            };
            crate::physical::start::start_and_wait(&dir, None, port, utility, action, timeout)
        })
        .await
        .map_err(|e| Error::Internal(format!("start task: {e}")))??;
        Some(report)
    } else {
        None
    };
    Ok(RestoreDone {
        backup,
        start_report,
    })
}

/// Appends `port = N` to the restored server's postgresql.auto.conf, so it
/// starts on the port the restore configuration gives it.
/// Greenplum/Cloudberry: the restored instance's `gp_dbid`, in
/// `internal.auto.conf` (written whole, then renamed over the old one).
fn set_dbid(data_dir: &std::path::Path, dbid: i32) -> Result<()> {
    use crate::cluster::greenplum::{set_gp_dbid, INTERNAL_AUTO_CONF};
    let path = data_dir.join(INTERNAL_AUTO_CONF);
    let old = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Usage(format!(
                "the restore config gives dbid {dbid}, but the backup has no {INTERNAL_AUTO_CONF}: it is not of a Greenplum/Cloudberry instance; remove `dbid`"
            )))
        }
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = crate::fsutil::AtomicFile::create(&path)?;
        f.write_all(set_gp_dbid(&old, dbid).as_bytes())?;
        f.commit()
    };
    write().map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn set_port(data_dir: &std::path::Path, port: u16) -> Result<()> {
    use std::io::Write;
    let path = data_dir.join("postgresql.auto.conf");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    f.write_all(format!("port = {port}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::proto::{read_frame, MAX_FRAME, MAX_HANDSHAKE_FRAME};

    fn token_config() -> Config {
        Config::parse("[agent]\ntoken = \"unit-test-token-0123456789\"\n").unwrap()
    }

    async fn start(config: Config) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let agent = Arc::new(Agent::new(config).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(agent.serve(listener, async move {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    #[tokio::test]
    async fn the_handshake_authenticates_both_sides() {
        let (addr, _stop) = start(token_config()).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let AgentMessage::Challenge {
            protocol_version,
            nonce,
            auth,
        } = read_frame(&mut tcp).await.unwrap()
        else {
            panic!("no challenge")
        };
        assert_eq!(protocol_version, PROTOCOL_VERSION);
        assert_eq!(auth, AuthMethod::Token);
        let nonce = hex::decode(nonce).unwrap();
        let token = Token::from_text("unit-test-token-0123456789", "test").unwrap();
        let client_nonce = auth::new_nonce();
        let mac = token.client_mac(&nonce, &client_nonce);
        write_frame(
            &mut tcp,
            &ClientMessage::Auth {
                protocol_version: PROTOCOL_VERSION,
                client_nonce: hex::encode(client_nonce),
                mac: hex::encode(mac),
            },
        )
        .await
        .unwrap();
        let AgentMessage::AuthOk { mac, agent } = read_frame(&mut tcp).await.unwrap() else {
            panic!("not authenticated")
        };
        assert!(token.verify_agent_mac(&client_nonce, &nonce, &hex::decode(mac).unwrap()));
        assert_eq!(agent.pid, std::process::id());
        write_frame(&mut tcp, &ClientMessage::Ping).await.unwrap();
        let AgentMessage::Pong(p) = read_frame(&mut tcp).await.unwrap() else {
            panic!("no pong")
        };
        assert_eq!(p.jobs_running, 0);
    }

    async fn refusal(addr: SocketAddr, send: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let AgentMessage::Challenge { nonce, .. } = read_frame(&mut tcp).await.unwrap() else {
            panic!("no challenge")
        };
        let bytes = send(&hex::decode(nonce).unwrap());
        tokio::io::AsyncWriteExt::write_all(&mut tcp, &bytes)
            .await
            .unwrap();
        match read_frame(&mut tcp).await.unwrap() {
            AgentMessage::Refused { reason } => {
                // And the connection is closed.
                assert!(read_frame::<_, AgentMessage>(&mut tcp).await.is_err());
                reason
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    fn frame(msg: &ClientMessage) -> Vec<u8> {
        let body = serde_json::to_vec(msg).unwrap();
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    #[tokio::test]
    async fn bad_callers_are_refused() {
        let (addr, _stop) = start(token_config()).await;
        let wrong = Token::from_text("another-token-0123456789", "test").unwrap();
        let r = refusal(addr, |nonce| {
            let cn = auth::new_nonce();
            frame(&ClientMessage::Auth {
                protocol_version: PROTOCOL_VERSION,
                client_nonce: hex::encode(cn),
                mac: hex::encode(wrong.client_mac(nonce, &cn)),
            })
        })
        .await;
        assert!(r.contains("wrong token"), "{r}");
        let r = refusal(addr, |_| frame(&ClientMessage::Ping)).await;
        assert!(r.contains("authenticate first"), "{r}");
        let r = refusal(addr, |_| ((MAX_FRAME as u32) + 1).to_be_bytes().to_vec()).await;
        assert!(r.contains("exceeds the limit"), "{r}");
        // A replayed MAC for another nonce.
        let token = Token::from_text("unit-test-token-0123456789", "test").unwrap();
        let r = refusal(addr, |_| {
            let cn = auth::new_nonce();
            frame(&ClientMessage::Auth {
                protocol_version: PROTOCOL_VERSION,
                client_nonce: hex::encode(cn),
                mac: hex::encode(token.client_mac(&[0u8; 32], &cn)),
            })
        })
        .await;
        assert!(r.contains("wrong token"), "{r}");
    }

    #[tokio::test]
    async fn before_authentication_frames_are_limited_to_a_few_kib() {
        let (addr, _stop) = start(token_config()).await;
        let over = (MAX_HANDSHAKE_FRAME as u32 + 1).to_be_bytes().to_vec();
        let r = refusal(addr, |_| over).await;
        assert!(
            r.contains(&format!("exceeds the limit of {MAX_HANDSHAKE_FRAME} bytes")),
            "{r}"
        );
        let r = refusal(addr, |_| u32::MAX.to_be_bytes().to_vec()).await;
        assert!(r.contains("4294967295 bytes"), "{r}");
    }

    #[test]
    fn handshakes_make_room_by_closing_the_oldest() {
        let h = Arc::new(Handshakes::new(2));
        let peer = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let (mut a, none) = h.admit(peer(1));
        assert!(none.is_none());
        let (b, none) = h.admit(peer(2));
        assert!(none.is_none());
        assert_eq!(h.len(), 2);
        // Full: the newcomer closes the oldest, never itself.
        let (mut c, evicted) = h.admit(peer(3));
        assert_eq!(evicted, Some(peer(1)));
        assert!(a.evicted.try_recv().is_ok());
        assert!(c.evicted.try_recv().is_err());
        assert_eq!(h.len(), 2);
        // An ended handshake frees its place (an evicted one had freed it).
        drop(a);
        assert_eq!(h.len(), 2);
        drop(b);
        assert_eq!(h.len(), 1);
        let (_d, none) = h.admit(peer(4));
        assert!(none.is_none());
        let (_e, evicted) = h.admit(peer(5));
        assert_eq!(evicted, Some(peer(3)));
        assert!(c.evicted.try_recv().is_ok());
    }

    #[test]
    fn timeouts_come_from_the_agent_section() {
        let c = Config::parse(
            "[agent]\ntoken = \"unit-test-token-0123456789\"\nhandshake_timeout = 3\nwrite_timeout = 7\n",
        )
        .unwrap();
        let a = Agent::new(c).unwrap();
        assert_eq!(a.handshake_timeout, Duration::from_secs(3));
        assert_eq!(a.write_timeout, Duration::from_secs(7));
        let a = Agent::new(token_config()).unwrap();
        assert_eq!(
            (a.handshake_timeout, a.write_timeout),
            (HANDSHAKE_TIMEOUT, WRITE_TIMEOUT)
        );
        let c =
            Config::parse("[agent]\ntoken = \"unit-test-token-0123456789\"\nwrite_timeout = 0\n")
                .unwrap();
        let e = Agent::new(c).err().unwrap().to_string();
        assert!(
            e.contains("write_timeout = 0") && e.contains("at least 1"),
            "{e}"
        );
    }

    #[test]
    fn the_template_documents_every_agent_key() {
        // The [agent] part of the template, its example lines uncommented.
        let template = include_str!("../../config-templates/cluster.toml");
        let start = template.find("# [agent]\n").expect("an [agent] section");
        let mut text = String::new();
        for line in template[start..].lines() {
            let Some(rest) = line.strip_prefix("# ") else {
                continue;
            };
            let is_key = rest.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
            if rest == "[agent]" || is_key {
                text.push_str(rest);
                text.push('\n');
            }
        }
        let c = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let a = &c.agent;
        assert!(a.listen.is_some() && a.token_file.is_some() && a.token.is_some());
        assert!(a.tls_cert.is_some() && a.tls_key.is_some() && a.tls_ca.is_some());
        assert!(
            a.tls_client_ca.is_some() && a.tls_client_cert.is_some() && a.tls_client_key.is_some()
        );
        assert!(a.handshake_timeout.is_some() && a.write_timeout.is_some());
    }

    #[test]
    fn no_token_no_start() {
        let e = Agent::new(Config::parse("").unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("refuses to start") && e.contains("openssl rand -hex 32"),
            "{e}"
        );
    }
}
