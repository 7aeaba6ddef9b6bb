//! The library's error type and the exit codes the CLI maps it to.

use std::io;

use crate::codec::CodecError;
use crate::config::ConfigError;
use crate::storage::StorageError;

/// Exit codes, documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    Success = 0,
    /// The WAL file or object asked for is not in the repository (for
    /// `wal-fetch` this is the normal end of recovery).
    NotFound = 1,
    /// Bad command line, config file or key.
    Usage = 2,
    /// Storage unreachable or failing, or a local I/O error.
    Storage = 3,
    /// Stored data failed verification: wrong key, corrupted, truncated.
    Integrity = 4,
    /// A WAL file is already archived with different content.
    Conflict = 5,
    /// PostgreSQL refused or failed a request.
    Postgres = 6,
    /// An agent was unreachable, refused the caller, fell silent or broke
    /// the protocol.
    Agent = 7,
    /// A bug in cbdr.
    Internal = 70,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("{0}")]
    Usage(String),
    #[error("WAL file {name} is already archived as {key} with different content: refusing to overwrite it. Another server may be archiving into the same repository (check --content-id and the storage settings), or this server's WAL diverged from the archived one (e.g. a restored copy archiving on the old timeline)")]
    WalConflict { name: String, key: String },
    #[error("the restored data does not verify: {0}")]
    Integrity(String),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    /// A full sentence: what is missing, and what to do.
    #[error("{0}")]
    NotFound(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// Talking to an agent failed (unreachable, refused, silent, protocol).
    #[error("agent {addr}: {message}")]
    Agent { addr: String, message: String },
    /// A job failed on an agent; `exit_code` is the one the agent's error
    /// has.
    #[error("agent {addr}: {message}")]
    AgentJob {
        addr: String,
        message: String,
        exit_code: ExitCode,
    },
    /// An error on one instance of a cluster (e.g. "segment 2 (sdw2:6001)").
    #[error("{instance}: {source}")]
    Instance {
        instance: String,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Config(_) | Error::Usage(_) => ExitCode::Usage,
            Error::Storage(e) if e.is_not_found() => ExitCode::NotFound,
            Error::Storage(StorageError::Config(_)) => ExitCode::Usage,
            Error::Storage(_) => ExitCode::Storage,
            Error::Codec(CodecError::BadKey(_) | CodecError::KeyRequired { .. }) => ExitCode::Usage,
            Error::Codec(CodecError::Io { .. }) => ExitCode::Storage,
            Error::Codec(_) => ExitCode::Integrity,
            Error::WalConflict { .. } => ExitCode::Conflict,
            Error::NotFound(_) => ExitCode::NotFound,
            Error::Postgres(_) => ExitCode::Postgres,
            Error::Integrity(_) => ExitCode::Integrity,
            Error::Io { .. } => ExitCode::Storage,
            Error::Internal(_) => ExitCode::Internal,
            Error::Agent { .. } => ExitCode::Agent,
            Error::AgentJob { exit_code, .. } => *exit_code,
            Error::Instance { source, .. } => source.exit_code(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
