//! The agent's control protocol: messages and their framing.
//!
//! A frame is a u32 big-endian length followed by that many bytes of JSON.
//! Every read names its limit, checked against the length prefix before
//! anything is allocated: [`MAX_HANDSHAKE_FRAME`] before the caller has
//! authenticated, [`MAX_REQUEST_FRAME`] for an authenticated caller's
//! requests, [`MAX_FRAME`] for the agent's answers. Within the limit the
//! body's buffer grows with the bytes that arrive, never by the announced
//! length alone, so a frame that stops early costs what it sent.
//!
//! A session: the agent sends [`AgentMessage::Challenge`]; the client
//! answers [`ClientMessage::Auth`]; the agent answers
//! [`AgentMessage::AuthOk`] or [`AgentMessage::Refused`] (and closes). Then
//! the client sends requests: `Ping` (answered by `Pong`, any number of
//! times), or one job (`Backup` / `Restore` / `Check`), answered by
//! `Progress` heartbeats and one `BackupDone` / `RestoreDone` /
//! `CheckDone` / `Failed`; or `Standby`, answered likewise by `StandbyDone`. A job lives
//! on its connection: when the connection closes, the agent aborts it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::pg::Lsn;
use crate::physical::check::InstanceCheck;
use crate::physical::restore::{RecoveryTarget, TargetAction};
use crate::repo::catalog::BackupRecord;

/// Version of this protocol; the agent refuses clients of another one.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame either side accepts (the agent's answers: a backup record
/// lists every part).
pub const MAX_FRAME: usize = 1024 * 1024;
/// Largest frame the agent reads before the caller has authenticated. The
/// only legitimate one is [`ClientMessage::Auth`]: about 200 bytes (two
/// 64-digit hex strings and a version).
pub const MAX_HANDSHAKE_FRAME: usize = 4 * 1024;
/// Largest request of an authenticated caller: a restore request with its
/// tablespace map and restore command (a few KiB in practice).
pub const MAX_REQUEST_FRAME: usize = 256 * 1024;
const _: () = assert!(MAX_HANDSHAKE_FRAME < MAX_REQUEST_FRAME && MAX_REQUEST_FRAME <= MAX_FRAME);
/// The body's buffer grows by at most this much ahead of the bytes that
/// arrived.
const READ_CHUNK: usize = 8 * 1024;

/// Messages from the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    Challenge {
        protocol_version: u32,
        /// 32 random bytes, hex.
        nonce: String,
        /// How the agent authenticates callers.
        auth: AuthMethod,
    },
    AuthOk {
        /// HMAC-SHA256(token, "cbdr-agent-v1 agent" || client_nonce ||
        /// nonce), hex; empty with [`AuthMethod::Mtls`].
        mac: String,
        agent: AgentInfo,
    },
    Refused {
        reason: String,
    },
    Pong(Pong),
    Progress(Progress),
    BackupDone {
        record: BackupRecord,
    },
    RestoreDone(RestoreDone),
    CheckDone(InstanceCheck),
    StandbyDone(StandbyDone),
    FilesDone(FilesDone),
    RestartDone {
        report: String,
    },
    ControlDone {
        report: String,
    },
    Failed {
        /// The error with its causes.
        message: String,
        /// The exit code the same error has in the command line.
        exit_code: u8,
    },
}

/// How an agent authenticates callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// HMAC challenge-response with the shared token (over TLS or not).
    Token,
    /// Only the client certificate of mutual TLS (no token configured).
    Mtls,
}

/// Messages from the client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Auth {
        protocol_version: u32,
        /// 32 random bytes, hex.
        client_nonce: String,
        /// HMAC-SHA256(token, "cbdr-agent-v1 client" || nonce ||
        /// client_nonce), hex; empty with [`AuthMethod::Mtls`].
        mac: String,
    },
    Ping,
    Backup(BackupRequest),
    Restore(RestoreRequest),
    Check(CheckRequest),
    Standby(StandbyRequest),
    Files(FilesRequest),
    Restart(RestartRequest),
    Control(ControlRequest),
}

impl ClientMessage {
    /// The message's kind, for logs and refusals.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Auth { .. } => "auth",
            ClientMessage::Ping => "ping",
            ClientMessage::Backup(_) => "backup",
            ClientMessage::Restore(_) => "restore",
            ClientMessage::Check(_) => "check",
            ClientMessage::Standby(_) => "standby",
            ClientMessage::Files(_) => "files",
            ClientMessage::Restart(_) => "restart",
            ClientMessage::Control(_) => "control",
        }
    }
}

/// Who answered, sent with `AuthOk`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    pub hostname: String,
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub version: String,
    pub hostname: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub jobs_running: u32,
}

/// A job's heartbeat, sent at least every [`HEARTBEAT`](crate::cluster::agent::HEARTBEAT).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Plain bytes received (backup) or written (restore).
    pub done_bytes: u64,
    pub total_bytes: Option<u64>,
    /// E.g. "streaming", "waiting for WAL", "downloading", "starting server".
    pub phase: String,
}

/// Back up one instance with the agent's own repository settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRequest {
    pub content_id: i32,
    /// The instance as the agent reaches it (host name, IP address or a
    /// Unix-socket directory).
    pub host: String,
    pub port: u16,
    /// Role (absent: the agent's $PGUSER, else its OS user). The password
    /// comes from the agent's environment or ~/.pgpass, never the wire.
    pub user: Option<String>,
    pub database: Option<String>,
    /// Seconds to wait for the backup's WAL to reach the archive.
    pub wal_wait_secs: u64,
    /// Full or delta (the caller's `--delta`/`--full`).
    #[serde(default)]
    pub mode: crate::physical::blocks::base::BackupMode,
    /// The caller's `[backup] delta_max_steps`.
    #[serde(default)]
    pub delta_max_steps: u32,
}

/// Check one instance (`cbdr check`) with the agent's own repository
/// settings: its archiving settings, a replication connection, the storage
/// and key, a WAL switch that must reach the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRequest {
    pub content_id: i32,
    /// The instance as the agent reaches it.
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub database: Option<String>,
    /// Seconds the switched WAL segment may take to reach the archive.
    pub wal_timeout_secs: u64,
}

/// Where recovery stops (the wire form of [`RecoveryTarget`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryTargetSpec {
    Latest,
    Immediate,
    RestorePoint(String),
    /// RFC 3339, e.g. "2026-11-25T10:00:00+00:00".
    Time(String),
    /// E.g. "0/5000028".
    Lsn(String),
    Xid(String),
}

impl RecoveryTargetSpec {
    pub fn to_target(&self) -> Result<RecoveryTarget> {
        Ok(match self {
            RecoveryTargetSpec::Latest => RecoveryTarget::Latest,
            RecoveryTargetSpec::Immediate => RecoveryTarget::Immediate,
            RecoveryTargetSpec::RestorePoint(n) => RecoveryTarget::RestorePoint(n.clone()),
            RecoveryTargetSpec::Time(t) => RecoveryTarget::Time(
                chrono::DateTime::parse_from_rfc3339(t.trim()).map_err(|e| {
                    Error::Usage(format!(
                        "target time {t:?} is not an RFC 3339 time with its zone (e.g. 2026-11-25T10:00:00+00:00): {e}"
                    ))
                })?,
            ),
            RecoveryTargetSpec::Lsn(l) => RecoveryTarget::Lsn(
                l.parse::<Lsn>()
                    .map_err(|e| Error::Usage(format!("target LSN {l:?}: {e}")))?,
            ),
            RecoveryTargetSpec::Xid(x) => RecoveryTarget::Xid(x.clone()),
        })
    }
}

impl From<&RecoveryTarget> for RecoveryTargetSpec {
    fn from(t: &RecoveryTarget) -> Self {
        match t {
            RecoveryTarget::Latest => RecoveryTargetSpec::Latest,
            RecoveryTarget::Immediate => RecoveryTargetSpec::Immediate,
            RecoveryTarget::RestorePoint(n) => RecoveryTargetSpec::RestorePoint(n.clone()),
            RecoveryTarget::Time(t) => RecoveryTargetSpec::Time(t.to_rfc3339()),
            RecoveryTarget::Lsn(l) => RecoveryTargetSpec::Lsn(l.to_string()),
            RecoveryTarget::Xid(x) => RecoveryTargetSpec::Xid(x.clone()),
        }
    }
}

/// What the restored server does at the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryAction {
    #[default]
    Promote,
    Pause,
    Shutdown,
}

impl From<RecoveryAction> for TargetAction {
    fn from(a: RecoveryAction) -> Self {
        match a {
            RecoveryAction::Promote => TargetAction::Promote,
            RecoveryAction::Pause => TargetAction::Pause,
            RecoveryAction::Shutdown => TargetAction::Shutdown,
        }
    }
}

impl From<TargetAction> for RecoveryAction {
    fn from(a: TargetAction) -> Self {
        match a {
            TargetAction::Promote => RecoveryAction::Promote,
            TargetAction::Pause => RecoveryAction::Pause,
            TargetAction::Shutdown => RecoveryAction::Shutdown,
        }
    }
}

/// Restore one instance on the agent's host from the agent's repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRequest {
    pub content_id: i32,
    /// The new data directory (absolute; empty or absent unless `force`).
    pub target_dir: String,
    /// A backup name; absent or "LATEST" = the newest that ends before the
    /// target.
    pub backup: Option<String>,
    pub target: RecoveryTargetSpec,
    pub action: RecoveryAction,
    /// Tablespace locations: old → new.
    #[serde(default)]
    pub tablespace_map: Vec<(String, String)>,
    /// Replace the contents of a non-empty target directory.
    #[serde(default)]
    pub force: bool,
    /// Written to the restored server's postgresql.auto.conf as `port = N`.
    pub port: Option<u16>,
    /// Absent: `<agent's cbdr> --config <agent's config> wal-fetch %f %p
    /// --content-id N`.
    pub restore_command: Option<String>,
    /// Turn archiving off in the restored server.
    #[serde(default)]
    pub archive_off: bool,
    /// Start the restored server and wait until recovery reaches the target.
    #[serde(default)]
    pub start: bool,
    /// With `start`: how long recovery may take.
    pub start_timeout_secs: u64,
    /// More settings for the restored server's postgresql.auto.conf
    /// (name, value), e.g. Citus background jobs off until its nodes are
    /// fixed.
    #[serde(default)]
    pub settings: Vec<(String, String)>,
    /// Greenplum/Cloudberry: the restored instance's dbid, written to
    /// `internal.auto.conf` (absent: the backed-up instance's).
    #[serde(default)]
    pub dbid: Option<i32>,
    /// Greenplum/Cloudberry, with `start`: start the restored instance
    /// alone, in utility mode (`-c gp_role=utility`): it recovers and is
    /// promoted outside any cluster, until the coordinator's catalog is
    /// fixed and `gpstart` brings the cluster up.
    #[serde(default)]
    pub greenplum_utility: bool,
}

impl RestoreRequest {
    /// A restore of `content_id` into `target_dir` to `target`, promoted,
    /// with every option at its default (the newest backup that serves,
    /// tablespaces where they were, not started); set the others with
    /// struct update syntax.
    pub fn new(content_id: i32, target_dir: String, target: RecoveryTargetSpec) -> Self {
        RestoreRequest {
            content_id,
            target_dir,
            backup: None,
            target,
            action: RecoveryAction::Promote,
            tablespace_map: Vec::new(),
            force: false,
            port: None,
            restore_command: None,
            archive_off: false,
            start: false,
            start_timeout_secs: 0,
            settings: Vec::new(),
            dbid: None,
            greenplum_utility: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreDone {
    /// The backup restored.
    pub backup: BackupRecord,
    /// With `start`: where recovery ended ("recovered to the target and
    /// promoted: ...").
    pub start_report: Option<String>,
}

/// Move a standby restored with `restore --standby` on the agent's host
/// to another cluster restore point: retarget, restart, wait until it is
/// paused there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyRequest {
    pub content_id: i32,
    /// The standby's data directory (absolute).
    pub data_dir: String,
    pub restore_point: String,
    /// How long replay to the point may take.
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyDone {
    /// E.g. "paused at the target: ...".
    pub report: String,
}

/// Restart one instance on the agent's host (`configure backup
/// --restart`): `pg_ctl restart -m fast`, waiting until it accepts
/// connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRequest {
    pub content_id: i32,
    /// Its data directory (absolute), as the server reports it.
    pub data_dir: String,
    pub timeout_secs: u64,
}

/// Stop an instance on the agent's host, or bring up the Greenplum/
/// Cloudberry cluster whose coordinator it is (a cluster restore with
/// `--start`, once the restored coordinator's catalog is fixed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    pub content_id: i32,
    /// Its data directory (absolute).
    pub data_dir: String,
    pub action: ControlAction,
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    /// `pg_ctl stop -m fast`, waiting; an instance already stopped is fine.
    Stop,
    /// `gpstart -a` with this coordinator data directory, as the agent's OS
    /// user with the agent's environment (`greenplum_path.sh` sourced).
    GreenplumStart,
}

/// Files for the agent's host (`configure backup`: the cbdr config and the
/// secrets it names), written with mode 0600 where the path says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesRequest {
    pub files: Vec<FileToWrite>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileToWrite {
    /// Absolute path on the agent's host.
    pub path: String,
    pub contents: FileContents,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileContents {
    /// Sealed with the session's key (token authentication), the path as
    /// associated data: confidential over plain TCP too.
    Sealed(crate::cluster::auth::Sealed),
    /// Hex, only over mutual TLS without a token (TLS keeps it secret).
    Plain(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesDone {
    pub written: Vec<FileWritten>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWritten {
    pub path: String,
    /// False when the file already had this content (and mode 0600).
    pub changed: bool,
}

/// A connection: plain TCP or TLS.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

/// A framing failure.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the connection closed")]
    Closed,
    #[error("a frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("the connection closed in the middle of a frame ({got} of {len} bytes)")]
    Truncated { got: usize, len: usize },
    #[error("a malformed message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// The peer went away (EOF or a reset).
    pub fn is_disconnect(&self) -> bool {
        match self {
            FrameError::Closed | FrameError::Truncated { .. } => true,
            FrameError::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}

/// Writes one message as a frame and flushes it.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> std::result::Result<(), FrameError>
where
    W: AsyncWrite + Unpin + ?Sized,
    T: Serialize,
{
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: body.len(),
            limit: MAX_FRAME,
        });
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&body);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame's bytes of at most [`MAX_FRAME`] (see
/// [`read_frame_bytes_within`]).
pub async fn read_frame_bytes<R>(r: &mut R) -> std::result::Result<Vec<u8>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    read_frame_bytes_within(r, MAX_FRAME).await
}

/// Reads one frame's bytes. A length above `limit` is refused before
/// anything is allocated; below it, the buffer grows with the bytes that
/// arrive (a frame that announces `limit` bytes and sends ten holds about
/// ten). `Closed` on EOF before the first byte of the frame, `Truncated` on
/// EOF inside it.
pub async fn read_frame_bytes_within<R>(
    r: &mut R,
    limit: usize,
) -> std::result::Result<Vec<u8>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return Err(if got == 0 {
                FrameError::Closed
            } else {
                FrameError::Truncated { got, len: 4 }
            });
        }
        got += n;
    }
    let len = check_length(len, limit)?;
    let mut body = Vec::with_capacity(len.min(READ_CHUNK));
    while body.len() < len {
        let start = body.len();
        body.resize(start + (len - start).min(READ_CHUNK), 0);
        let n = r.read(&mut body[start..]).await?;
        body.truncate(start + n);
        if n == 0 {
            return Err(FrameError::Truncated { got: start, len });
        }
    }
    Ok(body)
}

/// The body length a frame's prefix announces, if within `limit`.
pub fn check_length(prefix: [u8; 4], limit: usize) -> std::result::Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(len)
}

/// Reads one message of at most [`MAX_FRAME`] bytes.
pub async fn read_frame<R, T>(r: &mut R) -> std::result::Result<T, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
    T: DeserializeOwned,
{
    read_frame_within(r, MAX_FRAME).await
}

/// Reads one message of at most `limit` bytes.
pub async fn read_frame_within<R, T>(r: &mut R, limit: usize) -> std::result::Result<T, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
    T: DeserializeOwned,
{
    let body = read_frame_bytes_within(r, limit).await?;
    Ok(serde_json::from_slice(&body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn frames_round_trip() {
        rt().block_on(async {
            let (mut a, mut b) = tokio::io::duplex(64);
            let msgs = vec![
                ClientMessage::Ping,
                ClientMessage::Auth {
                    protocol_version: PROTOCOL_VERSION,
                    client_nonce: "ab".repeat(32),
                    mac: "cd".repeat(32),
                },
                ClientMessage::Restore(RestoreRequest {
                    content_id: 3,
                    target_dir: "/data/seg3".into(),
                    backup: None,
                    target: RecoveryTargetSpec::RestorePoint("rp1".into()),
                    action: RecoveryAction::Pause,
                    tablespace_map: vec![("/a".into(), "/b".into())],
                    force: false,
                    port: Some(6001),
                    restore_command: None,
                    archive_off: true,
                    start: true,
                    start_timeout_secs: 60,
                    settings: Vec::new(),
                    dbid: Some(4),
                    greenplum_utility: true,
                }),
                ClientMessage::Control(ControlRequest {
                    content_id: -1,
                    data_dir: "/data/coordinator".into(),
                    action: ControlAction::GreenplumStart,
                    timeout_secs: 600,
                }),
            ];
            let sent = msgs.clone();
            let writer = tokio::spawn(async move {
                for m in &sent {
                    write_frame(&mut a, m).await.unwrap();
                }
            });
            for m in &msgs {
                let got: ClientMessage = read_frame(&mut b).await.unwrap();
                assert_eq!(format!("{got:?}"), format!("{m:?}"));
            }
            writer.await.unwrap();
            // Writer dropped: a clean close at a frame boundary.
            assert!(matches!(
                read_frame::<_, ClientMessage>(&mut b).await,
                Err(FrameError::Closed)
            ));
        });
    }

    #[test]
    fn oversize_frames_are_refused_before_reading_them() {
        rt().block_on(async {
            // Only the header is there: a reader that allocated and read
            // the announced body would wait forever (or fail with EOF).
            let header = ((MAX_FRAME + 1) as u32).to_be_bytes();
            let mut r: &[u8] = &header;
            match read_frame_bytes(&mut r).await {
                Err(FrameError::TooLarge { len, limit }) => {
                    assert_eq!((len, limit), (MAX_FRAME + 1, MAX_FRAME))
                }
                other => panic!("{other:?}"),
            }
            let huge = u32::MAX.to_be_bytes();
            let mut r: &[u8] = &huge;
            assert!(matches!(
                read_frame_bytes(&mut r).await,
                Err(FrameError::TooLarge { .. })
            ));
            // The writer refuses too.
            let big = "x".repeat(MAX_FRAME);
            let mut sink = Vec::new();
            assert!(matches!(
                write_frame(&mut sink, &big).await,
                Err(FrameError::TooLarge { .. })
            ));
            assert!(sink.is_empty());
        });
    }

    #[test]
    fn truncated_and_malformed_frames_fail() {
        rt().block_on(async {
            let mut r: &[u8] = &[0, 0];
            let e = read_frame_bytes(&mut r).await.unwrap_err();
            assert!(!matches!(e, FrameError::Closed), "{e:?}");
            assert!(e.is_disconnect());
            let mut r: &[u8] = &[0, 0, 0, 10, b'{'];
            assert!(read_frame_bytes(&mut r).await.is_err());
            let mut data = 5u32.to_be_bytes().to_vec();
            data.extend_from_slice(b"hello");
            let mut r: &[u8] = &data;
            assert!(matches!(
                read_frame::<_, ClientMessage>(&mut r).await,
                Err(FrameError::Json(_))
            ));
            let mut data = 0u32.to_be_bytes().to_vec();
            let body = br#"{"type":"launch_missiles"}"#;
            data[..4].copy_from_slice(&(body.len() as u32).to_be_bytes());
            data.extend_from_slice(body);
            let mut r: &[u8] = &data;
            assert!(matches!(
                read_frame::<_, ClientMessage>(&mut r).await,
                Err(FrameError::Json(_))
            ));
        });
    }

    #[test]
    fn lengths_are_checked_against_the_limit_of_the_read() {
        for limit in [MAX_HANDSHAKE_FRAME, MAX_REQUEST_FRAME, MAX_FRAME] {
            let at = (limit as u32).to_be_bytes();
            assert_eq!(check_length(at, limit).unwrap(), limit);
            let over = (limit as u32 + 1).to_be_bytes();
            match check_length(over, limit) {
                Err(e @ FrameError::TooLarge { .. }) => {
                    let text = e.to_string();
                    assert!(
                        text.contains(&(limit + 1).to_string())
                            && text.contains(&format!("limit of {limit} bytes")),
                        "{text}"
                    );
                }
                other => panic!("{other:?}"),
            }
            assert!(matches!(
                check_length(u32::MAX.to_be_bytes(), limit),
                Err(FrameError::TooLarge { len, .. }) if len == u32::MAX as usize
            ));
            assert_eq!(check_length([0; 4], limit).unwrap(), 0);
        }
    }

    #[test]
    fn the_handshake_fits_its_limit() {
        // The largest message a legitimate caller sends before it is
        // authenticated, with room to spare.
        let auth = serde_json::to_vec(&ClientMessage::Auth {
            protocol_version: u32::MAX,
            client_nonce: "ab".repeat(32),
            mac: "cd".repeat(32),
        })
        .unwrap();
        assert!(auth.len() * 8 < MAX_HANDSHAKE_FRAME, "{}", auth.len());
        rt().block_on(async {
            let mut data = Vec::new();
            write_frame(&mut data, &ClientMessage::Ping).await.unwrap();
            let mut r: &[u8] = &data;
            let m: ClientMessage = read_frame_within(&mut r, MAX_HANDSHAKE_FRAME)
                .await
                .unwrap();
            assert!(matches!(m, ClientMessage::Ping));
            // A frame of exactly the limit is read; one byte more is not.
            let mut data = (MAX_HANDSHAKE_FRAME as u32).to_be_bytes().to_vec();
            data.resize(4 + MAX_HANDSHAKE_FRAME, b' ');
            let mut r: &[u8] = &data;
            let body = read_frame_bytes_within(&mut r, MAX_HANDSHAKE_FRAME)
                .await
                .unwrap();
            assert_eq!(body.len(), MAX_HANDSHAKE_FRAME);
            let mut data = (MAX_HANDSHAKE_FRAME as u32 + 1).to_be_bytes().to_vec();
            data.resize(5 + MAX_HANDSHAKE_FRAME, b' ');
            let mut r: &[u8] = &data;
            assert!(matches!(
                read_frame_bytes_within(&mut r, MAX_HANDSHAKE_FRAME).await,
                Err(FrameError::TooLarge {
                    limit: MAX_HANDSHAKE_FRAME,
                    ..
                })
            ));
        });
    }

    /// Serves `data` then EOF, recording the largest buffer a read offered.
    struct Recorder {
        data: Vec<u8>,
        pos: usize,
        largest: usize,
    }

    impl AsyncRead for Recorder {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.largest = self.largest.max(buf.remaining());
            let n = buf.remaining().min(self.data.len() - self.pos).min(1000);
            buf.put_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_frame_that_ends_early_holds_only_what_it_sent() {
        rt().block_on(async {
            // Announces MAX_FRAME, sends ten bytes, closes.
            let mut data = (MAX_FRAME as u32).to_be_bytes().to_vec();
            data.extend_from_slice(b"0123456789");
            let mut r = Recorder {
                data,
                pos: 0,
                largest: 0,
            };
            match read_frame_bytes(&mut r).await {
                Err(e @ FrameError::Truncated { got: 10, len }) if len == MAX_FRAME => {
                    assert!(e.is_disconnect());
                    assert!(e.to_string().contains("in the middle of a frame"), "{e}");
                }
                other => panic!("{other:?}"),
            }
            // The reads never offered a buffer the size of the announced
            // length: the body grows by READ_CHUNK at most.
            assert!(r.largest <= READ_CHUNK, "{}", r.largest);
            // A whole frame read through small reads comes out intact.
            let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
            let mut data = (body.len() as u32).to_be_bytes().to_vec();
            data.extend_from_slice(&body);
            let mut r = Recorder {
                data,
                pos: 0,
                largest: 0,
            };
            assert_eq!(read_frame_bytes(&mut r).await.unwrap(), body);
            assert!(r.largest <= READ_CHUNK, "{}", r.largest);
            // The prefix itself cut short.
            let mut r: &[u8] = &[0, 0, 1];
            assert!(matches!(
                read_frame_bytes(&mut r).await,
                Err(FrameError::Truncated { got: 3, len: 4 })
            ));
        });
    }

    #[test]
    fn recovery_targets_convert() {
        for (spec, ok) in [
            (RecoveryTargetSpec::Latest, true),
            (RecoveryTargetSpec::Lsn("0/5000028".into()), true),
            (RecoveryTargetSpec::Lsn("nope".into()), false),
            (
                RecoveryTargetSpec::Time("2026-11-25T10:00:00+00:00".into()),
                true,
            ),
            (RecoveryTargetSpec::Time("yesterday".into()), false),
            (RecoveryTargetSpec::RestorePoint("rp".into()), true),
        ] {
            let r = spec.to_target();
            assert_eq!(r.is_ok(), ok, "{spec:?}: {r:?}");
            if let Ok(t) = r {
                assert_eq!(RecoveryTargetSpec::from(&t).to_target().unwrap(), t);
            }
        }
        let json = serde_json::to_string(&RecoveryTargetSpec::RestorePoint("x".into())).unwrap();
        assert_eq!(json, r#"{"restore_point":"x"}"#);
        assert_eq!(
            serde_json::to_string(&RecoveryTargetSpec::Latest).unwrap(),
            r#""latest""#
        );
    }
}
