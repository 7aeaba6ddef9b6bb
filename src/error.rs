//! The library's error type and the exit codes the CLI maps it to.

use std::io;

use crate::codec::CodecError;
use crate::config::ConfigError;
use crate::pg::conn::PgError;
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

impl ExitCode {
    /// The exit code a number stands for (one sent by an agent or a check);
    /// 0 and numbers cbdr does not use are a bug's.
    pub fn from_number(code: u8) -> ExitCode {
        match code {
            1 => ExitCode::NotFound,
            2 => ExitCode::Usage,
            3 => ExitCode::Storage,
            4 => ExitCode::Integrity,
            5 => ExitCode::Conflict,
            6 => ExitCode::Postgres,
            7 => ExitCode::Agent,
            _ => ExitCode::Internal,
        }
    }
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
    /// A request to PostgreSQL failed: what cbdr was doing, and the
    /// client's error (for a server error: its message, SQLSTATE, detail
    /// and hint). Build it with [`PgResultExt::context`] or
    /// [`Error::postgres`]. (Boxed: a server error is large.)
    #[error("PostgreSQL: {}", pg_message(context, source))]
    Postgres {
        context: String,
        #[source]
        source: Box<PgError>,
    },
    /// PostgreSQL (or one of its programs) failed, or answered something
    /// cbdr cannot use, with no client error to carry: `pg_ctl` failed,
    /// recovery stopped early, a slot reserves no WAL, the server sent no
    /// backup manifest. A full sentence.
    #[error("PostgreSQL: {0}")]
    Server(String),
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
    /// A command's summary of failures it listed one by one (`check`,
    /// `verify`),
    /// exiting with the code of the first.
    #[error("{message}")]
    Summary {
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

fn pg_message(context: &str, source: &PgError) -> String {
    if context.is_empty() {
        source.to_string()
    } else {
        format!("{context}: {source}")
    }
}

impl Error {
    /// The message and its causes, each once (a cause whose text the
    /// message already holds is not repeated): what a user is shown.
    pub fn render(&self) -> String {
        with_causes(self.to_string(), self)
    }

    /// A failed request to PostgreSQL, while doing `context`.
    pub fn postgres(context: impl Into<String>, source: PgError) -> Error {
        Error::Postgres {
            context: context.into(),
            source: Box::new(source),
        }
    }

    /// The PostgreSQL client error this is (also through
    /// [`Error::Instance`]), to decide on a retry.
    pub fn pg_error(&self) -> Option<&PgError> {
        match self {
            Error::Postgres { source, .. } => Some(source.as_ref()),
            Error::Instance { source, .. } => source.pg_error(),
            _ => None,
        }
    }

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
            Error::Postgres { .. } | Error::Server(_) => ExitCode::Postgres,
            Error::Integrity(_) => ExitCode::Integrity,
            Error::Io { .. } => ExitCode::Storage,
            Error::Internal(_) => ExitCode::Internal,
            Error::Agent { .. } => ExitCode::Agent,
            Error::AgentJob { exit_code, .. } => *exit_code,
            Error::Summary { exit_code, .. } => *exit_code,
            Error::Instance { source, .. } => source.exit_code(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `.context("…")` on the results of the PostgreSQL client: turns a
/// [`PgError`] into [`Error::Postgres`] saying what cbdr was doing.
pub trait PgResultExt<T> {
    /// `what` is a phrase: "reading the catalogs", "locking public.t".
    fn context(self, what: impl Into<String>) -> Result<T>;
    /// Like [`PgResultExt::context`], the phrase built only on failure.
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T> PgResultExt<T> for std::result::Result<T, PgError> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::postgres(what, e))
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::postgres(what(), e))
    }
}

/// `message`, then each cause of `e` whose text it does not hold yet.
pub fn with_causes(mut message: String, e: &dyn std::error::Error) -> String {
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::conn::ServerError;

    #[test]
    fn exit_codes_from_numbers() {
        for code in [
            ExitCode::NotFound,
            ExitCode::Usage,
            ExitCode::Storage,
            ExitCode::Integrity,
            ExitCode::Conflict,
            ExitCode::Postgres,
            ExitCode::Agent,
        ] {
            assert_eq!(ExitCode::from_number(code as u8), code);
        }
        for n in [0, 8, 70, 255] {
            assert_eq!(ExitCode::from_number(n), ExitCode::Internal, "{n}");
        }
    }

    #[test]
    fn causes_are_shown_once() {
        // The message already holds its cause: not repeated.
        let e = Error::io("reading /x", io::Error::other("disk on fire"));
        assert_eq!(e.render(), "reading /x: disk on fire");
        // A cause the message does not hold is appended (the error's own
        // text is the caller's to put in the message).
        let e = Error::io("sending", io::Error::other("the wire broke"));
        assert_eq!(
            with_causes("upload failed".into(), &e),
            "upload failed: the wire broke"
        );
    }

    #[test]
    fn postgres_errors_keep_the_server_message() {
        let server = PgError::Server(ServerError {
            severity: "ERROR".into(),
            code: "42P01".into(),
            message: "relation \"t\" does not exist".into(),
            detail: Some("some detail".into()),
            hint: Some("some hint".into()),
        });
        let e = Err::<(), _>(server)
            .context("locking public.t")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "PostgreSQL: locking public.t: ERROR: relation \"t\" does not exist \
             (SQLSTATE 42P01)\nDETAIL: some detail\nHINT: some hint"
        );
        assert_eq!(e.exit_code(), ExitCode::Postgres);
        assert_eq!(e.pg_error().and_then(PgError::code), Some("42P01"));
        let e = Error::postgres("", PgError::Closed);
        assert_eq!(
            e.to_string(),
            "PostgreSQL: the server closed the connection unexpectedly"
        );
        assert_eq!(Error::Server("x".into()).exit_code(), ExitCode::Postgres);
    }
}
