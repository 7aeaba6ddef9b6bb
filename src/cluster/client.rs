//! The coordinator's side of the agent protocol: connect (TLS and
//! authentication), ping, and run one backup or restore job with progress
//! and a heartbeat timeout.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::auth::{self, TOKEN_HOWTO};
use super::proto::{
    read_frame, write_frame, AgentInfo, AgentMessage, AsyncStream, AuthMethod, BackupRequest,
    CheckRequest, ClientMessage, ControlAction, ControlRequest, FileContents, FileToWrite,
    FilesDone, FilesRequest, FrameError, Pong, Progress, RestartRequest, RestoreDone,
    RestoreRequest, StandbyDone, StandbyRequest, PROTOCOL_VERSION,
};
use crate::config::AgentConfig;
use crate::error::{Error, ExitCode, Result};
use crate::repo::catalog::BackupRecord;

/// An authenticated connection to one agent.
pub struct AgentClient {
    addr: String,
    stream: Box<dyn AsyncStream>,
    agent: AgentInfo,
    /// For requests that answer at once (ping).
    timeout: Duration,
    /// The session's key (token authentication), for what is sent in
    /// confidence.
    session: Option<auth::SessionKey>,
    tls: bool,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient")
            .field("addr", &self.addr)
            .field("agent", &self.agent)
            .finish()
    }
}

fn agent_err(addr: &str, message: impl Into<String>) -> Error {
    Error::Agent {
        addr: addr.to_string(),
        message: message.into(),
    }
}

impl AgentClient {
    /// Connects to the agent at `addr` (`host:port`), with TLS when
    /// `config.tls_ca` is set, and authenticates with the shared token
    /// (or the client certificate of mutual TLS). `timeout` bounds the
    /// connection and the handshake.
    pub async fn connect(
        addr: &str,
        config: &AgentConfig,
        timeout: Duration,
    ) -> Result<AgentClient> {
        let token = auth::load_token(config)?;
        let tls = auth::client_tls(config)?;
        let name = match tls {
            Some(_) => Some(auth::server_name(addr)?),
            None => None,
        };
        let handshake = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| agent_err(addr, format!("unreachable: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let stream: Box<dyn AsyncStream> = match (tls.clone(), name) {
                (Some(cfg), Some(name)) => {
                    let s = TlsConnector::from(cfg)
                        .connect(name, tcp)
                        .await
                        .map_err(|e| {
                            agent_err(
                                addr,
                                format!(
                                    "the TLS handshake failed: {e} (check [agent] tls_ca, that the agent has tls_cert/tls_key for this host name, and with mutual TLS tls_client_cert/tls_client_key)"
                                ),
                            )
                        })?;
                    Box::new(s)
                }
                _ => Box::new(tcp),
            };
            Self::authenticate(addr, stream, token.as_ref(), tls.is_some()).await
        };
        let (stream, agent, session) = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| {
                agent_err(
                    addr,
                    format!(
                        "no answer within {} s (is `cbdr agent` running there, and does it use TLS while [agent] tls_ca is unset here?)",
                        timeout.as_secs_f64()
                    ),
                )
            })??;
        Ok(AgentClient {
            addr: addr.to_string(),
            stream,
            agent,
            timeout,
            session,
            tls: tls.is_some(),
        })
    }

    async fn authenticate(
        addr: &str,
        mut stream: Box<dyn AsyncStream>,
        token: Option<&auth::Token>,
        tls: bool,
    ) -> Result<(Box<dyn AsyncStream>, AgentInfo, Option<auth::SessionKey>)> {
        let challenge = match read_frame::<_, AgentMessage>(&mut stream).await {
            Ok(m) => m,
            Err(FrameError::Closed) => {
                return Err(agent_err(
                    addr,
                    "closed the connection before the handshake (does the agent expect TLS? then set [agent] tls_ca here; with mutual TLS, also tls_client_cert and tls_client_key)",
                ))
            }
            Err(e) => {
                return Err(agent_err(
                    addr,
                    format!("the handshake failed: {e} (not a cbdr agent, or TLS on one side only?)"),
                ))
            }
        };
        let (nonce, method) = match challenge {
            AgentMessage::Challenge {
                protocol_version,
                nonce,
                auth,
            } => {
                if protocol_version != PROTOCOL_VERSION {
                    return Err(agent_err(
                        addr,
                        format!("speaks protocol version {protocol_version}, this cbdr {PROTOCOL_VERSION}: run the same cbdr version on the coordinator and the agents"),
                    ));
                }
                let nonce = auth::parse_nonce(&nonce)
                    .ok_or_else(|| agent_err(addr, "sent a malformed challenge"))?;
                (nonce, auth)
            }
            AgentMessage::Refused { reason } => {
                return Err(agent_err(addr, format!("refused the connection: {reason}")))
            }
            other => {
                return Err(agent_err(
                    addr,
                    format!("broke the protocol: expected a challenge, got {other:?}"),
                ))
            }
        };
        let client_nonce = auth::new_nonce();
        let mac = match method {
            AuthMethod::Token => {
                let token = token.ok_or_else(|| {
                    Error::Usage(format!(
                        "agent {addr} requires the shared agent token and none is configured here: {TOKEN_HOWTO}"
                    ))
                })?;
                hex::encode(token.client_mac(&nonce, &client_nonce))
            }
            AuthMethod::Mtls => {
                // Only a certificate-verified TLS connection may skip the
                // token: otherwise anyone could claim to be the agent.
                if !tls {
                    return Err(agent_err(
                        addr,
                        "claims to authenticate by mutual TLS, but this connection is not TLS: refusing to trust it (set [agent] tls_ca, tls_client_cert and tls_client_key here)",
                    ));
                }
                String::new()
            }
        };
        write_frame(
            &mut stream,
            &ClientMessage::Auth {
                protocol_version: PROTOCOL_VERSION,
                client_nonce: hex::encode(client_nonce),
                mac,
            },
        )
        .await
        .map_err(|e| {
            agent_err(
                addr,
                format!("the connection failed during the handshake: {e}"),
            )
        })?;
        match read_frame::<_, AgentMessage>(&mut stream).await {
            Ok(AgentMessage::AuthOk { mac, agent }) => {
                let mut session = None;
                if method == AuthMethod::Token {
                    let token = token.expect("checked above");
                    let mac = hex::decode(mac).unwrap_or_default();
                    if !token.verify_agent_mac(&client_nonce, &nonce, &mac) {
                        return Err(agent_err(
                            addr,
                            "did not prove that it knows the token: not a genuine cbdr agent, or its token differs",
                        ));
                    }
                    session = Some(token.session_key(&nonce, &client_nonce));
                }
                Ok((stream, agent, session))
            }
            Ok(AgentMessage::Refused { reason }) => {
                let hint = if reason.contains("wrong token") {
                    " (the token differs from the agent's: check [agent] token_file / token / $CBDR_AGENT_TOKEN on both hosts)"
                } else {
                    ""
                };
                Err(agent_err(
                    addr,
                    format!("refused the connection: {reason}{hint}"),
                ))
            }
            Ok(other) => Err(agent_err(
                addr,
                format!("broke the protocol: expected the handshake's answer, got {other:?}"),
            )),
            Err(e) if e.is_disconnect() => Err(agent_err(
                addr,
                "closed the connection during the handshake (with mutual TLS: is this host's client certificate signed by the agent's tls_client_ca?)",
            )),
            Err(e) => Err(agent_err(addr, format!("the handshake failed: {e}"))),
        }
    }

    /// The agent's address as given to [`AgentClient::connect`].
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Who answered the handshake.
    pub fn agent(&self) -> &AgentInfo {
        &self.agent
    }

    pub async fn ping(&mut self) -> Result<Pong> {
        self.send(&ClientMessage::Ping).await?;
        match self.receive(self.timeout, "a ping").await? {
            AgentMessage::Pong(p) => Ok(p),
            other => Err(self.unexpected(other, "a ping")),
        }
    }

    /// Runs a backup on the agent; calls `on_progress` for each heartbeat.
    /// Fails when nothing arrives from the agent for `silence` (dropping
    /// the connection then makes the agent abort the job).
    pub async fn backup(
        mut self,
        req: BackupRequest,
        silence: Duration,
        mut on_progress: impl FnMut(&Progress) + Send,
    ) -> Result<BackupRecord> {
        self.send(&ClientMessage::Backup(req)).await?;
        loop {
            match self.receive(silence, "the backup").await? {
                AgentMessage::Progress(p) => on_progress(&p),
                AgentMessage::BackupDone { record } => return Ok(record),
                other => return Err(self.job_failure(other, "the backup")),
            }
        }
    }

    /// Runs a restore on the agent; like [`AgentClient::backup`].
    pub async fn restore(
        mut self,
        req: RestoreRequest,
        silence: Duration,
        mut on_progress: impl FnMut(&Progress) + Send,
    ) -> Result<RestoreDone> {
        self.send(&ClientMessage::Restore(req)).await?;
        loop {
            match self.receive(silence, "the restore").await? {
                AgentMessage::Progress(p) => on_progress(&p),
                AgentMessage::RestoreDone(done) => return Ok(done),
                other => return Err(self.job_failure(other, "the restore")),
            }
        }
    }

    /// Runs `cbdr check` of one instance on the agent; like
    /// [`AgentClient::backup`].
    pub async fn check(
        mut self,
        req: CheckRequest,
        silence: Duration,
    ) -> Result<crate::physical::check::InstanceCheck> {
        self.send(&ClientMessage::Check(req)).await?;
        loop {
            match self.receive(silence, "the check").await? {
                AgentMessage::Progress(_) => {}
                AgentMessage::CheckDone(report) => return Ok(report),
                other => return Err(self.job_failure(other, "the check")),
            }
        }
    }

    /// Moves a standby to another restore point on the agent; like
    /// [`AgentClient::backup`].
    pub async fn standby(
        mut self,
        req: StandbyRequest,
        silence: Duration,
        mut on_progress: impl FnMut(&Progress) + Send,
    ) -> Result<StandbyDone> {
        self.send(&ClientMessage::Standby(req)).await?;
        loop {
            match self.receive(silence, "the standby move").await? {
                AgentMessage::Progress(p) => on_progress(&p),
                AgentMessage::StandbyDone(done) => return Ok(done),
                other => return Err(self.job_failure(other, "the standby move")),
            }
        }
    }

    /// Restarts an instance on the agent's host; like
    /// [`AgentClient::backup`].
    pub async fn restart(mut self, req: RestartRequest, silence: Duration) -> Result<String> {
        self.send(&ClientMessage::Restart(req)).await?;
        loop {
            match self.receive(silence, "the restart").await? {
                AgentMessage::Progress(_) => {}
                AgentMessage::RestartDone { report } => return Ok(report),
                other => return Err(self.job_failure(other, "the restart")),
            }
        }
    }

    /// Stops an instance on the agent's host, or runs `gpstart` for the
    /// Greenplum/Cloudberry coordinator there; like [`AgentClient::backup`].
    pub async fn control(mut self, req: ControlRequest, silence: Duration) -> Result<String> {
        let what = match req.action {
            ControlAction::Stop => "the stop",
            ControlAction::GreenplumStart => "gpstart",
        };
        self.send(&ClientMessage::Control(req)).await?;
        loop {
            match self.receive(silence, what).await? {
                AgentMessage::Progress(_) => {}
                AgentMessage::ControlDone { report } => return Ok(report),
                other => return Err(self.job_failure(other, what)),
            }
        }
    }

    /// Writes files on the agent's host with mode 0600 (`(path, contents)`),
    /// sealed with the session's key, or over mutual TLS; never in the
    /// clear.
    pub async fn write_files(mut self, files: &[(String, Vec<u8>)]) -> Result<FilesDone> {
        let files = files
            .iter()
            .map(|(path, bytes)| {
                let contents = match &self.session {
                    Some(key) => FileContents::Sealed(key.seal(path, bytes)),
                    None if self.tls => FileContents::Plain(hex::encode(bytes)),
                    None => {
                        return Err(agent_err(
                            &self.addr,
                            "neither a token session nor TLS to send files in confidence",
                        ))
                    }
                };
                Ok(FileToWrite {
                    path: path.clone(),
                    contents,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.send(&ClientMessage::Files(FilesRequest { files }))
            .await?;
        match self.receive(self.timeout, "writing files").await? {
            AgentMessage::FilesDone(done) => Ok(done),
            other => Err(self.job_failure(other, "writing files")),
        }
    }

    async fn send(&mut self, msg: &ClientMessage) -> Result<()> {
        write_frame(&mut self.stream, msg).await.map_err(|e| {
            agent_err(
                &self.addr,
                format!("sending the {} request failed: {e}", msg.kind()),
            )
        })
    }

    async fn receive(&mut self, silence: Duration, during: &str) -> Result<AgentMessage> {
        match tokio::time::timeout(silence, read_frame::<_, AgentMessage>(&mut self.stream)).await
        {
            Err(_) => Err(agent_err(
                &self.addr,
                format!(
                    "sent nothing for {} s during {during}: the agent, its host or the network is stuck; giving up (the agent aborts the job when the connection closes)",
                    silence.as_secs_f64()
                ),
            )),
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) if e.is_disconnect() => Err(agent_err(
                &self.addr,
                format!("closed the connection during {during} (the agent stopped or crashed? see its log)"),
            )),
            Ok(Err(e)) => Err(agent_err(
                &self.addr,
                format!("the connection failed during {during}: {e}"),
            )),
        }
    }

    fn job_failure(&self, msg: AgentMessage, what: &str) -> Error {
        match msg {
            AgentMessage::Failed { message, exit_code } => Error::AgentJob {
                addr: self.addr.clone(),
                message: format!("{what} failed: {message}"),
                exit_code: ExitCode::from_number(exit_code),
            },
            other => self.unexpected(other, what),
        }
    }

    fn unexpected(&self, msg: AgentMessage, what: &str) -> Error {
        match msg {
            AgentMessage::Refused { reason } => {
                agent_err(&self.addr, format!("refused {what}: {reason}"))
            }
            AgentMessage::Failed { message, exit_code } => Error::AgentJob {
                addr: self.addr.clone(),
                message,
                exit_code: ExitCode::from_number(exit_code),
            },
            other => agent_err(
                &self.addr,
                format!("broke the protocol during {what}: unexpected {other:?}"),
            ),
        }
    }
}
