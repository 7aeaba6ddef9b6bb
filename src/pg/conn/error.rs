//! Errors of the PostgreSQL client, with advice for the usual replication
//! set-up mistakes.

use std::fmt;
use std::io;

/// An error of [`super::PgConn`]. No variant ever contains the password.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The TCP or Unix-socket connection could not be made (or timed out).
    #[error("could not connect to {target}: {source}{}", advice_suffix(self))]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },
    /// TLS negotiation or certificate verification failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// Authentication could not be done on the client side (no password,
    /// an unsupported method, a server that failed SCRAM verification).
    #[error("authentication: {0}")]
    Auth(String),
    /// An ErrorResponse from the server.
    #[error("{server}{advice}", server = .0, advice = advice_suffix(self))]
    Server(ServerError),
    /// The server sent something this client does not understand.
    #[error("PostgreSQL protocol error: {0}")]
    Protocol(String),
    /// The server closed the connection unexpectedly.
    #[error("the server closed the connection unexpectedly")]
    Closed,
    /// [`super::PgConn::query_one`] got another number of rows than one.
    #[error("expected exactly one row, got {0}")]
    RowCount(usize),
    /// A column of a result is missing, NULL where a value was expected,
    /// or not of its type ([`super::Row::get_str`], [`super::Row::parse`]).
    #[error("column {column}: {problem}")]
    Column { column: String, problem: String },
    #[error("connection to PostgreSQL: {0}")]
    Io(#[from] io::Error),
}

fn advice_suffix(e: &PgError) -> String {
    match e.advice() {
        Some(a) => format!("\n{a}"),
        None => String::new(),
    }
}

impl PgError {
    /// The server's error, if this is one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            PgError::Server(e) => Some(e),
            _ => None,
        }
    }

    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        self.server_error().map(|e| e.code.as_str())
    }

    /// Whether connecting and trying again later may succeed: the
    /// connection could not be made or broke (I/O errors, a closed
    /// connection, SQLSTATE class 08), the server is shutting down, crashed
    /// or is starting up (class 57: 57P01 admin_shutdown, 57P02
    /// crash_shutdown, 57P03 cannot_connect_now...), it lacks resources
    /// (class 53, e.g. 53300 too_many_connections), or the transaction
    /// lost a race ([`PgError::is_transient`]). TLS, authentication and
    /// protocol failures, and other server errors, are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            PgError::Connect { .. } | PgError::Closed | PgError::Io(_) => true,
            PgError::Server(s) => {
                s.code.starts_with("08")
                    || s.code.starts_with("53")
                    || s.code.starts_with("57")
                    || self.is_transient()
            }
            _ => false,
        }
    }

    /// Whether running the same statement again may succeed: it lost a
    /// race with a concurrent one: 40001 serialization_failure, 40P01
    /// deadlock_detected, or "tuple concurrently updated" (two sessions
    /// changing one catalog row at once, e.g. parallel GRANTs; the server
    /// raises it as XX000 internal_error, so only its message tells).
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Server(s) => {
                s.code == "40001"
                    || s.code == "40P01"
                    || (s.code == "XX000" && s.message.contains("tuple concurrently updated"))
            }
            _ => false,
        }
    }

    /// What to do about common connection and replication failures (also
    /// appended to the message by `Display`).
    pub fn advice(&self) -> Option<String> {
        match self {
            PgError::Connect { target, source } => match source.kind() {
                io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => Some(format!(
                    "is PostgreSQL running on {target}? (check PGHOST/PGPORT or --host/--port)"
                )),
                _ => None,
            },
            PgError::Server(e) => e.advice(),
            _ => None,
        }
    }
}

/// An ErrorResponse (or NoticeResponse) from the server, verbatim.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerError {
    /// ERROR, FATAL, PANIC (or WARNING, NOTICE, ... for notices).
    pub severity: String,
    /// SQLSTATE, e.g. `28000`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    /// Parse an ErrorResponse/NoticeResponse body: fields of a type byte
    /// and a NUL-terminated string, ended by a NUL.
    pub(crate) fn parse(body: &[u8]) -> ServerError {
        let mut e = ServerError::default();
        let mut localized_severity = None;
        let mut rest = body;
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let value = String::from_utf8_lossy(&tail[..end]).into_owned();
            rest = tail.get(end + 1..).unwrap_or_default();
            match kind {
                b'V' => e.severity = value,
                b'S' => localized_severity = Some(value),
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
        }
        if e.severity.is_empty() {
            e.severity = localized_severity.unwrap_or_else(|| "ERROR".to_owned());
        }
        e
    }

    /// What to do about it, for the usual replication set-up failures.
    pub fn advice(&self) -> Option<String> {
        match self.code.as_str() {
            "28000" if self.message.contains("pg_hba.conf") => {
                let user = quoted_after(&self.message, "user \"").unwrap_or("USER");
                let database = if self.message.contains("replication connection") {
                    "replication"
                } else {
                    quoted_after(&self.message, "database \"").unwrap_or("DATABASE")
                };
                let line = match quoted_after(&self.message, "host \"") {
                    Some("[local]") => format!("local {database} {user} scram-sha-256"),
                    Some(h) if h.contains(':') => {
                        format!("host {database} {user} {h}/128 scram-sha-256")
                    }
                    Some(h) if h.parse::<std::net::Ipv4Addr>().is_ok() => {
                        format!("host {database} {user} {h}/32 scram-sha-256")
                    }
                    Some(h) => format!("host {database} {user} {h} scram-sha-256"),
                    None => format!("host {database} {user} ADDRESS scram-sha-256"),
                };
                Some(format!(
                    "add a line `{line}` to pg_hba.conf and reload \
                     (select pg_reload_conf())"
                ))
            }
            "53300" if self.message.contains("max_wal_senders") => Some(
                "raise max_wal_senders in postgresql.conf (needs a restart), or stop other \
                 replication clients"
                    .to_owned(),
            ),
            "53300" if self.message.contains("replication slots") => {
                Some("raise max_replication_slots in postgresql.conf (needs a restart)".to_owned())
            }
            "28P01" => Some(
                "check the password (PGPASSWORD, ~/.pgpass, or the configured password)".to_owned(),
            ),
            "42501" if self.message.contains("replication") => Some(
                "the role needs the REPLICATION attribute: ALTER ROLE ... REPLICATION".to_owned(),
            ),
            _ => None,
        }
    }
}

/// The text between `prefix` and the next '"' in `s`.
fn quoted_after<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let start = s.find(prefix)? + prefix.len();
    let len = s[start..].find('"')?;
    Some(&s[start..start + len])
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.severity, self.message)?;
        if !self.code.is_empty() {
            write!(f, " (SQLSTATE {})", self.code)?;
        }
        if let Some(d) = &self.detail {
            write!(f, "\nDETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nHINT: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (k, v) in fields {
            b.push(*k);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        b
    }

    #[test]
    fn parse_and_display() {
        let e = ServerError::parse(&body(&[
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "28000"),
            (b'M', "no pg_hba.conf entry for replication connection from host \"127.0.0.1\", user \"rep\", no encryption"),
            (b'F', "auth.c"),
        ]));
        assert_eq!(e.code, "28000");
        assert_eq!(
            e.to_string(),
            "FATAL: no pg_hba.conf entry for replication connection from host \"127.0.0.1\", \
             user \"rep\", no encryption (SQLSTATE 28000)"
        );
        let pe = PgError::Server(e);
        assert_eq!(
            pe.advice().unwrap(),
            "add a line `host replication rep 127.0.0.1/32 scram-sha-256` to pg_hba.conf and \
             reload (select pg_reload_conf())"
        );
        assert!(pe.to_string().ends_with(&pe.advice().unwrap()));

        let e = ServerError::parse(&body(&[
            (b'S', "ERROR"),
            (b'C', "42P01"),
            (b'M', "relation \"x\" does not exist"),
            (b'D', "some detail"),
            (b'H', "some hint"),
        ]));
        assert_eq!(e.severity, "ERROR");
        assert_eq!(
            e.to_string(),
            "ERROR: relation \"x\" does not exist (SQLSTATE 42P01)\nDETAIL: some detail\nHINT: some hint"
        );
        assert_eq!(e.advice(), None);
    }

    #[test]
    fn advice_for_common_failures() {
        let server = |code: &str, message: &str| ServerError {
            severity: "FATAL".into(),
            code: code.into(),
            message: message.into(),
            ..Default::default()
        };
        let a = server(
            "28000",
            "no pg_hba.conf entry for host \"::1\", user \"bob\", database \"app\", SSL encryption",
        )
        .advice()
        .unwrap();
        assert!(a.contains("`host app bob ::1/128 scram-sha-256`"), "{a}");
        let a = server(
            "28000",
            "no pg_hba.conf entry for replication connection from host \"[local]\", user \"rep\", no encryption",
        )
        .advice()
        .unwrap();
        assert!(a.contains("`local replication rep scram-sha-256`"), "{a}");
        let a = server(
            "53300",
            "number of requested standby connections exceeds max_wal_senders (currently 1)",
        )
        .advice()
        .unwrap();
        assert!(a.contains("raise max_wal_senders"), "{a}");
        let a = server("28P01", "password authentication failed for user \"bob\"")
            .advice()
            .unwrap();
        assert!(a.contains("check the password"), "{a}");
        assert_eq!(server("28000", "role \"x\" does not exist").advice(), None);

        let refused = PgError::Connect {
            target: "127.0.0.1:1".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert!(refused.to_string().contains(
            "is PostgreSQL running on 127.0.0.1:1? (check PGHOST/PGPORT or --host/--port)"
        ));
    }

    #[test]
    fn retryable_and_transient_by_sqlstate() {
        let server = |code: &str, message: &str| {
            PgError::Server(ServerError {
                severity: "FATAL".into(),
                code: code.into(),
                message: message.into(),
                ..Default::default()
            })
        };
        for code in [
            "08006", "08001", "57P01", "57P02", "57P03", "53300", "40001", "40P01",
        ] {
            assert!(server(code, "x").is_retryable(), "{code}");
        }
        for code in ["42P01", "28P01", "42501", "XX000", "55P03"] {
            assert!(!server(code, "x").is_retryable(), "{code}");
        }
        assert!(PgError::Closed.is_retryable());
        assert!(PgError::Io(io::Error::from(io::ErrorKind::ConnectionReset)).is_retryable());
        assert!(PgError::Connect {
            target: "h:1".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        }
        .is_retryable());
        assert!(!PgError::Auth("no password".into()).is_retryable());
        assert!(!PgError::Protocol("x".into()).is_retryable());

        assert!(server("40P01", "deadlock detected").is_transient());
        assert!(server("40001", "could not serialize access").is_transient());
        assert!(server("XX000", "tuple concurrently updated").is_transient());
        assert!(!server("XX000", "something else").is_transient());
        assert!(!server("57P01", "terminating connection").is_transient());
        assert!(!PgError::Closed.is_transient());
    }
}
