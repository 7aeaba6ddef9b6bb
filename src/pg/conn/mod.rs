//! A small async client for PostgreSQL's frontend/backend protocol (v3),
//! enough for replication connections (`IDENTIFY_SYSTEM`, `BASE_BACKUP`,
//! `START_REPLICATION`) and simple SQL.
//!
//! * Transport: TCP or a Unix socket (`host` starting with '/'), TLS with
//!   rustls through SSLRequest per [`SslMode`] (TCP only, as libpq).
//! * Authentication: trust, cleartext password, md5, SCRAM-SHA-256 (with
//!   `tls-server-end-point` channel binding, SCRAM-SHA-256-PLUS, over TLS).
//! * Queries: the simple query protocol only. [`PgConn::simple_query`] for
//!   SQL; [`PgConn::send_query`] + [`PgConn::next_message`] for replication
//!   commands whose replies interleave result sets and COPY.
//!
//! Messages are framed here (postgres-protocol's parser does not know
//! CopyBothResponse) from a large read buffer: CopyData payloads are
//! zero-copy [`Bytes`] slices of it. A slice keeps its whole buffer chunk
//! (256 KiB) alive, so consumers should not hold many of them for long.

mod error;
mod params;
mod stream;
mod tls;

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

pub use error::{PgError, ServerError};
pub use params::{pgpass_lookup, ConnParams, SslMode, DEFAULT_CONNECT_TIMEOUT, DEFAULT_SOCKET_DIR};
use stream::Stream;

/// Size of each read-buffer allocation.
const READ_BUF_SIZE: usize = 256 * 1024;
/// Allocate a new read buffer chunk when less than this is free.
const MIN_READ: usize = 32 * 1024;
/// Messages during start-up are small; a bigger one means the other end is
/// not a PostgreSQL server.
const STARTUP_MAX_MESSAGE: usize = 64 * 1024;
/// Copy payloads up to this size into the write buffer; write bigger ones
/// directly.
const COPY_INLINE_MAX: usize = 64 * 1024;

/// What kind of connection to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replication {
    /// A normal SQL connection.
    Off,
    /// Physical replication (`replication=true`): replication commands
    /// only, no database.
    Physical,
    /// Logical replication (`replication=database`): replication commands
    /// and SQL in `dbname`.
    Logical,
}

/// A row of a [`PgConn::simple_query`] result, in text format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    columns: Arc<Vec<String>>,
    values: Vec<Option<String>>,
}

impl Row {
    /// The value of column `i`; `None` when NULL or out of range.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.values.get(i).and_then(|v| v.as_deref())
    }

    /// The value of the (first) column named `name`; `None` when NULL or
    /// there is no such column.
    pub fn get_by_name(&self, name: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == name)?;
        self.get(i)
    }

    /// The non-NULL value of column `name`, or a [`PgError::Column`]
    /// saying it is missing or NULL.
    pub fn get_str(&self, name: &str) -> Result<&str, PgError> {
        self.get_opt(name)?.ok_or_else(|| PgError::Column {
            column: name.to_string(),
            problem: "NULL where a value was expected".into(),
        })
    }

    /// The same as [`Row::get_str`].
    pub fn try_get(&self, name: &str) -> Result<&str, PgError> {
        self.get_str(name)
    }

    /// The value of column `name`, `None` when NULL; a
    /// [`PgError::Column`] when the result has no such column.
    pub fn get_opt(&self, name: &str) -> Result<Option<&str>, PgError> {
        match self.columns.iter().position(|c| c == name) {
            None => Err(PgError::Column {
                column: name.to_string(),
                problem: format!("not in the result (columns: {})", self.columns.join(", ")),
            }),
            Some(i) => Ok(self.get(i)),
        }
    }

    /// Column `name` parsed as a `T` (a number, an [`crate::pg::Lsn`], a
    /// [`crate::pg::TimelineId`]...); the error names the column and the
    /// value.
    pub fn parse<T>(&self, name: &str) -> Result<T, PgError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        parse_value(name, self.get_str(name)?)
    }

    /// Like [`Row::parse`], `None` when the value is NULL.
    pub fn parse_opt<T>(&self, name: &str) -> Result<Option<T>, PgError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        self.get_opt(name)?
            .map(|v| parse_value(name, v))
            .transpose()
    }

    /// A boolean column (`t` / `f`).
    pub fn get_bool(&self, name: &str) -> Result<bool, PgError> {
        match self.get_str(name)? {
            "t" => Ok(true),
            "f" => Ok(false),
            other => Err(PgError::Column {
                column: name.to_string(),
                problem: format!("{other:?} is not a boolean"),
            }),
        }
    }

    /// A `json` column, deserialised.
    pub fn get_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, PgError> {
        json_value(name, self.get_str(name)?)
    }

    /// Like [`Row::get_json`], `None` when the value is NULL.
    pub fn get_json_opt<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, PgError> {
        self.get_opt(name)?.map(|v| json_value(name, v)).transpose()
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }
}

fn parse_value<T>(column: &str, value: &str) -> Result<T, PgError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|e: T::Err| {
        let ty = std::any::type_name::<T>();
        let ty = ty.rsplit("::").next().unwrap_or(ty);
        PgError::Column {
            column: column.to_string(),
            problem: format!("{value:?} is not a valid {ty}: {e}"),
        }
    })
}

fn json_value<T: serde::de::DeserializeOwned>(column: &str, value: &str) -> Result<T, PgError> {
    serde_json::from_str(value).map_err(|e| PgError::Column {
        column: column.to_string(),
        problem: format!("unexpected JSON ({e}): {value}"),
    })
}

/// A message from the server, as returned by [`PgConn::next_message`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendMessage {
    /// Column names of the result set that follows.
    RowDescription(Arc<Vec<String>>),
    /// A row; `None` is NULL. Values are text unless the command says
    /// otherwise.
    DataRow(Vec<Option<Bytes>>),
    /// End of a command, with its tag (e.g. `SELECT 3`).
    CommandComplete(String),
    EmptyQueryResponse,
    CopyOutResponse,
    CopyBothResponse,
    CopyInResponse,
    /// A zero-copy slice of the read buffer.
    CopyData(Bytes),
    CopyDone,
    /// The server is ready for the next query.
    ReadyForQuery,
}

/// A connection to a PostgreSQL server.
pub struct PgConn {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    parameters: HashMap<String, String>,
    backend_key: Option<(i32, i32)>,
    transaction_status: u8,
    tls: bool,
    auth_method: &'static str,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("process_id", &self.process_id())
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl PgConn {
    /// Connect and authenticate; returns once the server is ready for
    /// queries. `params.connect_timeout` bounds the whole set-up.
    pub async fn connect(params: &ConnParams, replication: Replication) -> Result<PgConn, PgError> {
        let attempt = Self::connect_prefer_fallback(params, replication);
        if params.connect_timeout.is_zero() {
            return attempt.await;
        }
        match tokio::time::timeout(params.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(PgError::Connect {
                target: params.target(),
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "timed out after {} s (connect_timeout, PGCONNECT_TIMEOUT)",
                        params.connect_timeout.as_secs_f64()
                    ),
                ),
            }),
        }
    }

    /// sslmode=prefer: like libpq, retry without TLS when the TLS handshake
    /// fails or pg_hba.conf rejects the TLS connection.
    async fn connect_prefer_fallback(
        params: &ConnParams,
        replication: Replication,
    ) -> Result<PgConn, PgError> {
        let use_tls = params.sslmode != SslMode::Disable && !params.is_unix_socket();
        if !use_tls {
            return Self::connect_once(params, replication, false).await;
        }
        match Self::connect_once(params, replication, true).await {
            Err(e)
                if params.sslmode == SslMode::Prefer
                    && (matches!(e, PgError::Tls(_)) || e.code() == Some("28000")) =>
            {
                tracing::debug!("{e}; retrying without TLS (sslmode=prefer)");
                Self::connect_once(params, replication, false).await
            }
            other => other,
        }
    }

    async fn connect_once(
        params: &ConnParams,
        replication: Replication,
        try_tls: bool,
    ) -> Result<PgConn, PgError> {
        let connect_error = |source| PgError::Connect {
            target: params.target(),
            source,
        };
        let mut tls = false;
        let stream = match params.socket_path() {
            Some(path) => Stream::Unix(UnixStream::connect(&path).await.map_err(connect_error)?),
            None => {
                let tcp = TcpStream::connect((params.host.as_str(), params.port))
                    .await
                    .map_err(connect_error)?;
                tcp.set_nodelay(true)?;
                // As libpq: detect a dead peer on long idle replication links.
                if let Err(e) = socket2::SockRef::from(&tcp).set_keepalive(true) {
                    tracing::debug!("could not enable TCP keepalives: {e}");
                }
                if try_tls {
                    match Self::start_tls(tcp, params).await? {
                        Ok(tls_stream) => {
                            tls = true;
                            Stream::Tls(Box::new(tls_stream))
                        }
                        Err(plain) => Stream::Tcp(plain),
                    }
                } else {
                    Stream::Tcp(tcp)
                }
            }
        };
        let mut conn = PgConn {
            stream,
            rbuf: BytesMut::with_capacity(8 * 1024),
            wbuf: BytesMut::with_capacity(8 * 1024),
            parameters: HashMap::new(),
            backend_key: None,
            transaction_status: b'I',
            tls,
            auth_method: "trust",
        };
        conn.startup(params, replication).await?;
        Ok(conn)
    }

    /// SSLRequest; the TLS stream, or the plain one back when the server
    /// declines and sslmode=prefer.
    async fn start_tls(
        mut tcp: TcpStream,
        params: &ConnParams,
    ) -> Result<Result<tokio_rustls::client::TlsStream<TcpStream>, TcpStream>, PgError> {
        let (config, server_name) = tls::client_config(params)?;
        let mut buf = BytesMut::with_capacity(8);
        frontend::ssl_request(&mut buf);
        tcp.write_all(&buf).await?;
        // Exactly one byte: anything the server sent after it must not be
        // mistaken for TLS-protected data (CVE-2021-23222).
        let answer = match tcp.read_u8().await {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(PgError::Closed),
            Err(e) => return Err(e.into()),
        };
        match answer {
            b'S' => tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await
                .map(Ok)
                .map_err(|e| {
                    let e = e.to_string();
                    let hint = if e.contains("UnknownIssuer") || e.contains("BadSignature") {
                        ": the server certificate does not chain to a trusted root (set \
                         sslrootcert / PGSSLROOTCERT to the CA certificate)"
                    } else if e.contains("not valid for name") || e.contains("NotValidForName") {
                        ": connect with the host name the certificate is for, or use \
                         sslmode=verify-ca"
                    } else {
                        ""
                    };
                    PgError::Tls(format!(
                        "handshake with {} failed (sslmode={}): {e}{hint}",
                        params.target(),
                        params.sslmode
                    ))
                }),
            b'N' if params.sslmode == SslMode::Prefer => Ok(Err(tcp)),
            b'N' => Err(PgError::Tls(format!(
                "the server at {} does not support SSL, but sslmode={} requires it",
                params.target(),
                params.sslmode
            ))),
            other => Err(PgError::Protocol(format!(
                "unexpected answer {:?} to SSLRequest: is {} a PostgreSQL server?",
                other as char,
                params.target()
            ))),
        }
    }

    /// StartupMessage and authentication, up to the first ReadyForQuery.
    async fn startup(
        &mut self,
        params: &ConnParams,
        replication: Replication,
    ) -> Result<(), PgError> {
        let mut startup: Vec<(&str, &str)> = vec![("user", &params.user)];
        if !params.dbname.is_empty() {
            startup.push(("database", &params.dbname));
        }
        if !params.application_name.is_empty() {
            startup.push(("application_name", &params.application_name));
        }
        if !params.options.is_empty() {
            startup.push(("options", &params.options));
        }
        startup.push(("client_encoding", "UTF8"));
        match replication {
            Replication::Off => {}
            Replication::Physical => startup.push(("replication", "true")),
            Replication::Logical => startup.push(("replication", "database")),
        }
        frontend::startup_message(startup.iter().copied(), &mut self.wbuf)
            .map_err(|e| PgError::Protocol(format!("startup message: {e}")))?;
        self.flush().await?;

        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, body) = self.read_frame(STARTUP_MAX_MESSAGE).await?;
            match tag {
                b'R' => {
                    let mut body = body.freeze();
                    if body.len() < 4 {
                        return Err(PgError::Protocol("short authentication message".into()));
                    }
                    let code = body.get_i32();
                    match code {
                        0 => {} // AuthenticationOk
                        3 => {
                            let password = self.password(params, replication)?;
                            self.auth_method = "password";
                            frontend::password_message(password.as_bytes(), &mut self.wbuf)
                                .map_err(|_| {
                                    PgError::Auth("the password contains a NUL byte".into())
                                })?;
                            self.flush().await?;
                        }
                        5 => {
                            let salt: [u8; 4] = body[..].try_into().map_err(|_| {
                                PgError::Protocol("bad AuthenticationMD5Password message".into())
                            })?;
                            let password = self.password(params, replication)?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                params.user.as_bytes(),
                                password.as_bytes(),
                                salt,
                            );
                            self.auth_method = "md5";
                            frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                                .map_err(|e| PgError::Protocol(e.to_string()))?;
                            self.flush().await?;
                        }
                        10 => {
                            let mechanisms = parse_cstrings(&body);
                            let password = self.password(params, replication)?;
                            let (mechanism, state) = self.scram_start(&mechanisms, &password)?;
                            self.auth_method = mechanism;
                            frontend::sasl_initial_response(
                                mechanism,
                                state.message(),
                                &mut self.wbuf,
                            )
                            .map_err(|e| PgError::Protocol(e.to_string()))?;
                            self.flush().await?;
                            scram = Some(state);
                        }
                        11 => {
                            let state = scram.as_mut().ok_or_else(|| {
                                PgError::Protocol("unexpected AuthenticationSASLContinue".into())
                            })?;
                            state
                                .update(&body)
                                .map_err(|e| PgError::Auth(format!("SCRAM: {e}")))?;
                            frontend::sasl_response(state.message(), &mut self.wbuf)
                                .map_err(|e| PgError::Protocol(e.to_string()))?;
                            self.flush().await?;
                        }
                        12 => {
                            let state = scram.as_mut().ok_or_else(|| {
                                PgError::Protocol("unexpected AuthenticationSASLFinal".into())
                            })?;
                            state.finish(&body).map_err(|e| {
                                PgError::Auth(format!(
                                    "SCRAM: the server failed to prove that it knows the \
                                     password ({e})"
                                ))
                            })?;
                        }
                        2 => return Err(unsupported_auth("Kerberos V5")),
                        6 => return Err(unsupported_auth("SCM credentials")),
                        7 | 8 => return Err(unsupported_auth("GSSAPI")),
                        9 => return Err(unsupported_auth("SSPI")),
                        other => return Err(unsupported_auth(&format!("method {other}"))),
                    }
                }
                b'E' => return Err(PgError::Server(ServerError::parse(&body))),
                b'N' => log_notice(&body),
                b'S' => self.record_parameter(&body),
                b'K' => {
                    if body.len() >= 8 {
                        let mut b = &body[..];
                        self.backend_key = Some((b.get_i32(), b.get_i32()));
                    }
                }
                b'v' => {
                    // NegotiateProtocolVersion: we ask for 3.0 without
                    // protocol options, so there is nothing to adjust.
                    tracing::debug!("server sent NegotiateProtocolVersion");
                }
                b'Z' => {
                    self.transaction_status = body.first().copied().unwrap_or(b'I');
                    return Ok(());
                }
                other => {
                    return Err(PgError::Protocol(format!(
                        "unexpected message {:?} during start-up",
                        other as char
                    )))
                }
            }
        }
    }

    /// Pick the SASL mechanism and channel binding.
    fn scram_start(
        &self,
        mechanisms: &[String],
        password: &str,
    ) -> Result<(&'static str, ScramSha256), PgError> {
        let offers = |m: &str| mechanisms.iter().any(|x| x == m);
        let end_point = if self.tls && offers("SCRAM-SHA-256-PLUS") {
            self.peer_certificate()
                .and_then(|cert| tls::tls_server_end_point(&cert))
        } else {
            None
        };
        if let Some(hash) = end_point {
            return Ok((
                "SCRAM-SHA-256-PLUS",
                ScramSha256::new(
                    password.as_bytes(),
                    ChannelBinding::tls_server_end_point(hash),
                ),
            ));
        }
        if !offers("SCRAM-SHA-256") {
            return Err(PgError::Auth(format!(
                "the server offers only unsupported SASL mechanisms: {}",
                mechanisms.join(", ")
            )));
        }
        // 'y' (we could bind, the server did not offer it) over TLS without
        // PLUS; 'n' otherwise. Saying 'y' when the server offered PLUS would
        // be taken as a downgrade attack.
        let binding = if self.tls && !offers("SCRAM-SHA-256-PLUS") {
            ChannelBinding::unrequested()
        } else {
            ChannelBinding::unsupported()
        };
        Ok((
            "SCRAM-SHA-256",
            ScramSha256::new(password.as_bytes(), binding),
        ))
    }

    fn peer_certificate(&self) -> Option<Vec<u8>> {
        match &self.stream {
            Stream::Tls(s) => s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|c| c.as_ref().to_vec()),
            _ => None,
        }
    }

    fn password(&self, params: &ConnParams, replication: Replication) -> Result<String, PgError> {
        if let Some(p) = &params.password {
            return Ok(p.clone());
        }
        let dbname = match replication {
            Replication::Physical => "replication",
            _ => params.dbname.as_str(),
        };
        params.password_from_file(dbname).ok_or_else(|| {
            PgError::Auth(format!(
                "the server asks for a password for user {}: set PGPASSWORD or a ~/.pgpass entry",
                params.user
            ))
        })
    }

    /// `server_version` as a number, e.g. 150018 for "15.18 (Debian ...)"
    /// (90624 for 9.6.24); 0 if unknown.
    pub fn server_version_num(&self) -> u32 {
        self.parameter("server_version")
            .map(parse_server_version)
            .unwrap_or(0)
    }

    /// A parameter the server reported (ParameterStatus), e.g.
    /// `server_version`, `integer_datetimes`, `in_hot_standby`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server process id (from BackendKeyData).
    pub fn process_id(&self) -> Option<i32> {
        self.backend_key.map(|(pid, _)| pid)
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// How the connection authenticated: `trust` (no password asked),
    /// `password`, `md5`, `SCRAM-SHA-256` or `SCRAM-SHA-256-PLUS` (with
    /// channel binding).
    pub fn auth_method(&self) -> &'static str {
        self.auth_method
    }

    /// The transaction status of the last ReadyForQuery: `b'I'` idle,
    /// `b'T'` in a transaction, `b'E'` in a failed transaction.
    pub fn transaction_status(&self) -> u8 {
        self.transaction_status
    }

    /// [`PgConn::simple_query`], its error an [`crate::Error::Postgres`]
    /// saying what was being done (`what`: "exporting the snapshot").
    pub async fn run(&mut self, what: &str, sql: &str) -> crate::Result<Vec<Row>> {
        use crate::error::PgResultExt;
        self.simple_query(sql).await.context(what)
    }

    /// Run `sql` (one or more statements) with the simple query protocol;
    /// all rows of all result sets, in text format. On an error the rest
    /// of the reply is read, so the connection stays usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, PgError> {
        self.send_query(sql).await?;
        let mut rows = Vec::new();
        let mut columns = Arc::new(Vec::new());
        let mut error = None;
        loop {
            match self.next_message().await {
                Ok(BackendMessage::ReadyForQuery) => break,
                Ok(BackendMessage::RowDescription(c)) => columns = c,
                Ok(BackendMessage::DataRow(values)) => rows.push(Row {
                    columns: columns.clone(),
                    values: values
                        .into_iter()
                        .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                        .collect(),
                }),
                Ok(BackendMessage::CommandComplete(_) | BackendMessage::EmptyQueryResponse) => {}
                Ok(BackendMessage::CopyInResponse) => {
                    frontend::copy_fail("COPY FROM STDIN is not supported here", &mut self.wbuf)
                        .map_err(|e| PgError::Protocol(e.to_string()))?;
                    self.flush().await?;
                }
                Ok(BackendMessage::CopyOutResponse) => {
                    error.get_or_insert(PgError::Protocol(
                        "simple_query cannot run COPY TO STDOUT or BASE_BACKUP: use send_query \
                         and next_message"
                            .into(),
                    ));
                }
                Ok(BackendMessage::CopyData(_) | BackendMessage::CopyDone) => {}
                Ok(BackendMessage::CopyBothResponse) => {
                    return Err(PgError::Protocol(
                        "simple_query cannot run START_REPLICATION: use send_query and \
                         next_message"
                            .into(),
                    ))
                }
                Err(PgError::Server(e)) if matches!(e.severity.as_str(), "FATAL" | "PANIC") => {
                    // The server closes the connection after it.
                    return Err(PgError::Server(e));
                }
                Err(e @ PgError::Server(_)) => {
                    error.get_or_insert(e);
                }
                Err(e) => return Err(error.unwrap_or(e)),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// [`PgConn::simple_query`] that must return exactly one row.
    pub async fn query_one(&mut self, sql: &str) -> Result<Row, PgError> {
        let mut rows = self.simple_query(sql).await?;
        if rows.len() != 1 {
            return Err(PgError::RowCount(rows.len()));
        }
        Ok(rows.pop().unwrap())
    }

    /// Send a simple Query without reading the reply: read it with
    /// [`PgConn::next_message`] up to [`BackendMessage::ReadyForQuery`].
    pub async fn send_query(&mut self, sql: &str) -> Result<(), PgError> {
        if sql.contains('\0') {
            return Err(PgError::Protocol("the query contains a NUL byte".into()));
        }
        frontend::query(sql, &mut self.wbuf).map_err(|e| self.encode_error(e))?;
        self.flush().await
    }

    /// The next message from the server. ErrorResponse becomes
    /// `Err(PgError::Server)` (a server still sends ReadyForQuery after an
    /// ERROR, not after a FATAL); NoticeResponse is logged and skipped,
    /// ParameterStatus recorded and skipped. Cancel-safe: a message is
    /// never lost when the future is dropped.
    pub async fn next_message(&mut self) -> Result<BackendMessage, PgError> {
        loop {
            let (tag, body) = self.read_frame(usize::MAX).await?;
            let msg = match tag {
                b'd' => BackendMessage::CopyData(body.freeze()),
                b'D' => BackendMessage::DataRow(parse_data_row(body.freeze())?),
                b'T' => BackendMessage::RowDescription(Arc::new(parse_row_description(&body)?)),
                b'C' => BackendMessage::CommandComplete(cstring(&body)),
                b'I' => BackendMessage::EmptyQueryResponse,
                b'H' => BackendMessage::CopyOutResponse,
                b'W' => BackendMessage::CopyBothResponse,
                b'G' => BackendMessage::CopyInResponse,
                b'c' => BackendMessage::CopyDone,
                b'Z' => {
                    self.transaction_status = body.first().copied().unwrap_or(b'I');
                    BackendMessage::ReadyForQuery
                }
                b'E' => return Err(PgError::Server(ServerError::parse(&body))),
                b'N' => {
                    log_notice(&body);
                    continue;
                }
                b'S' => {
                    self.record_parameter(&body);
                    continue;
                }
                b'A' => {
                    tracing::debug!("ignoring an asynchronous notification (LISTEN)");
                    continue;
                }
                other => {
                    return Err(PgError::Protocol(format!(
                        "unexpected message type {:?} ({} bytes)",
                        other as char,
                        body.len()
                    )))
                }
            };
            return Ok(msg);
        }
    }

    /// Send a CopyData message (in COPY IN or COPY BOTH mode), e.g. a
    /// standby status update during START_REPLICATION.
    pub async fn send_copy_data(&mut self, data: &[u8]) -> Result<(), PgError> {
        let len = i32::try_from(data.len() + 4)
            .map_err(|_| PgError::Protocol("CopyData message too large".into()))?;
        self.wbuf.put_u8(b'd');
        self.wbuf.put_i32(len);
        if data.len() <= COPY_INLINE_MAX {
            self.wbuf.extend_from_slice(data);
            return self.flush().await;
        }
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        self.stream.write_all(data).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Send CopyDone (ends COPY IN, or the client's side of COPY BOTH).
    pub async fn send_copy_done(&mut self) -> Result<(), PgError> {
        frontend::copy_done(&mut self.wbuf);
        self.flush().await
    }

    /// Send Terminate and close the connection.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    /// A message could not be encoded: drop what was partly written.
    fn encode_error(&mut self, e: io::Error) -> PgError {
        self.wbuf.clear();
        PgError::Protocol(format!("could not encode a message: {e}"))
    }

    async fn flush(&mut self) -> Result<(), PgError> {
        let result = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        }
        .await;
        self.wbuf.clear();
        result.map_err(PgError::from)
    }

    /// One message: its type byte and body (the length word removed).
    async fn read_frame(&mut self, max_len: usize) -> Result<(u8, BytesMut), PgError> {
        loop {
            if self.rbuf.len() >= 5 {
                let len =
                    i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
                if len < 4 || len as usize > max_len {
                    return Err(PgError::Protocol(format!(
                        "invalid message length {len} (type {:?}): the other end may not be a \
                         PostgreSQL server",
                        self.rbuf[0] as char
                    )));
                }
                let total = 1 + len as usize;
                if self.rbuf.len() >= total {
                    let tag = self.rbuf[0];
                    let mut frame = self.rbuf.split_to(total);
                    frame.advance(5);
                    return Ok((tag, frame));
                }
                self.fill(total).await?;
            } else {
                self.fill(5).await?;
            }
        }
    }

    /// Read until the buffer holds at least `need` bytes.
    async fn fill(&mut self, need: usize) -> Result<(), PgError> {
        while self.rbuf.len() < need {
            let missing = need - self.rbuf.len();
            let spare = self.rbuf.capacity() - self.rbuf.len();
            if spare < missing.max(MIN_READ) {
                // A fresh chunk (the old one may still be referenced by
                // CopyData slices); the partial message moves with it.
                self.rbuf.reserve(missing.max(READ_BUF_SIZE));
            }
            let n = self.stream.read_buf(&mut self.rbuf).await?;
            if n == 0 {
                return Err(PgError::Closed);
            }
        }
        Ok(())
    }

    fn record_parameter(&mut self, body: &[u8]) {
        let mut parts = body.split(|&b| b == 0);
        if let (Some(name), Some(value)) = (parts.next(), parts.next()) {
            self.parameters.insert(
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(value).into_owned(),
            );
        }
    }
}

fn unsupported_auth(what: &str) -> PgError {
    PgError::Auth(format!(
        "the server asks for {what} authentication, which cbdr does not support: use \
         scram-sha-256, md5, password or trust in pg_hba.conf"
    ))
}

fn log_notice(body: &[u8]) {
    let n = ServerError::parse(body);
    tracing::info!("PostgreSQL {}", n);
}

/// A NUL-terminated string at the start of `b` (all of `b` without NUL).
fn cstring(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// NUL-terminated strings up to an empty one (SASL mechanism lists).
fn parse_cstrings(b: &[u8]) -> Vec<String> {
    b.split(|&c| c == 0)
        .take_while(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

fn parse_row_description(mut b: &[u8]) -> Result<Vec<String>, PgError> {
    let bad = || PgError::Protocol("malformed RowDescription".into());
    if b.len() < 2 {
        return Err(bad());
    }
    let n = b.get_i16();
    let mut names = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let end = b.iter().position(|&c| c == 0).ok_or_else(bad)?;
        names.push(String::from_utf8_lossy(&b[..end]).into_owned());
        // Name, NUL, table oid, column number, type oid, size, modifier, format.
        b = b.get(end + 1 + 18..).ok_or_else(bad)?;
    }
    Ok(names)
}

fn parse_data_row(body: Bytes) -> Result<Vec<Option<Bytes>>, PgError> {
    let bad = || PgError::Protocol("malformed DataRow".into());
    let mut b = &body[..];
    if b.len() < 2 {
        return Err(bad());
    }
    let n = b.get_i16();
    let mut values = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if b.len() < 4 {
            return Err(bad());
        }
        let len = b.get_i32();
        if len < 0 {
            values.push(None);
            continue;
        }
        let len = len as usize;
        if b.len() < len {
            return Err(bad());
        }
        let start = body.len() - b.len();
        values.push(Some(body.slice(start..start + len)));
        b.advance(len);
    }
    Ok(values)
}

/// "15.18 (Debian 15.18-1)" → 150018, "9.6.24" → 90624, "16beta1" → 160000.
fn parse_server_version(v: &str) -> u32 {
    let numeric: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = numeric.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    if major >= 10 {
        major * 10000 + minor
    } else {
        major * 10000 + minor * 100 + parts.next().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cols: &[&str], values: &[Option<&str>]) -> Row {
        Row {
            columns: Arc::new(cols.iter().map(|c| c.to_string()).collect()),
            values: values.iter().map(|v| v.map(str::to_string)).collect(),
        }
    }

    #[test]
    fn rows_are_read_by_name_with_errors_naming_the_column() {
        let r = row(
            &["lsn", "tli", "n", "note", "ok", "j"],
            &[
                Some("0/16B3748"),
                Some("3"),
                Some("x12"),
                None,
                Some("t"),
                Some("[1,2]"),
            ],
        );
        assert_eq!(r.get_str("lsn").unwrap(), "0/16B3748");
        assert_eq!(
            r.parse::<crate::pg::Lsn>("lsn").unwrap(),
            crate::pg::Lsn(0x16B_3748)
        );
        assert_eq!(
            r.parse::<crate::pg::TimelineId>("tli").unwrap(),
            crate::pg::TimelineId(3)
        );
        assert_eq!(r.get_opt("note").unwrap(), None);
        assert_eq!(r.parse_opt::<u32>("note").unwrap(), None);
        assert!(r.get_bool("ok").unwrap());
        assert_eq!(r.get_json::<Vec<u8>>("j").unwrap(), vec![1, 2]);
        assert_eq!(r.get_json_opt::<Vec<u8>>("note").unwrap(), None);

        let e = r.parse::<u32>("n").unwrap_err().to_string();
        assert!(e.starts_with("column n: \"x12\" is not a valid u32"), "{e}");
        let e = r.get_str("note").unwrap_err().to_string();
        assert_eq!(e, "column note: NULL where a value was expected");
        let e = r.get_opt("nope").unwrap_err().to_string();
        assert!(
            e.starts_with("column nope: not in the result (columns: lsn, tli"),
            "{e}"
        );
        assert!(r.get_bool("lsn").is_err());
        assert!(r.parse::<crate::pg::Lsn>("tli").is_err());
    }

    #[test]
    fn server_versions() {
        assert_eq!(
            parse_server_version("15.18 (Debian 15.18-1.pgdg120+1)"),
            150018
        );
        assert_eq!(parse_server_version("9.6.24"), 90624);
        assert_eq!(parse_server_version("16beta1"), 160000);
        assert_eq!(parse_server_version("12.12"), 120012);
        assert_eq!(parse_server_version("garbage"), 0);
    }

    #[test]
    fn data_row_and_description() {
        let mut b = BytesMut::new();
        b.put_i16(3);
        b.put_i32(2);
        b.put_slice(b"ab");
        b.put_i32(-1);
        b.put_i32(0);
        let row = parse_data_row(b.freeze()).unwrap();
        assert_eq!(
            row,
            vec![Some(Bytes::from_static(b"ab")), None, Some(Bytes::new())]
        );
        let mut b = BytesMut::new();
        b.put_i16(2);
        for name in ["x", "yy"] {
            b.put_slice(name.as_bytes());
            b.put_u8(0);
            b.put_slice(&[0; 18]);
        }
        assert_eq!(parse_row_description(&b).unwrap(), vec!["x", "yy"]);
        assert!(parse_row_description(&b[..10]).is_err());
        let mut b = BytesMut::new();
        b.put_i16(1);
        b.put_i32(5);
        b.put_slice(b"ab");
        assert!(parse_data_row(b.freeze()).is_err());
    }

    #[test]
    fn sasl_mechanism_list() {
        assert_eq!(
            parse_cstrings(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"),
            vec!["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
        );
    }
}
