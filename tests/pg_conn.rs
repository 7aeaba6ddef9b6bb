//! The PostgreSQL protocol client (`cbdr::pg::conn`) against real
//! PostgreSQL 15 servers: trust over TCP and Unix sockets, simple queries,
//! md5 / SCRAM-SHA-256 / cleartext passwords and the password file,
//! replication commands (IDENTIFY_SYSTEM, BASE_BACKUP, START_REPLICATION),
//! TLS in each sslmode, and the advice given for common failures.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cbdr::pg::conn::{BackendMessage, ConnParams, PgConn, PgError, Replication, SslMode};
use common::pg::{chown_to_pg, pg_bin, pg_command, pg_user_dir, PgServer};

fn params(server: &PgServer, user: &str, password: Option<&str>, sslmode: SslMode) -> ConnParams {
    ConnParams {
        host: "127.0.0.1".into(),
        port: server.port(),
        user: user.into(),
        password: password.map(String::from),
        passfile: None,
        dbname: "postgres".into(),
        sslmode,
        sslrootcert: None,
        application_name: "cbdr-test".into(),
        options: String::new(),
        connect_timeout: Duration::from_secs(30),
    }
}

/// Replace pg_hba.conf and reload.
fn set_hba(server: &PgServer, lines: &str) {
    let loaded = || server.psql("select extract(epoch from pg_conf_load_time())::text");
    let before = loaded();
    write_hba(server, lines);
    server.psql("select pg_reload_conf()");
    // The postmaster reloads asynchronously; a new session inherits its
    // load time, so new connections see the new rules once that changes.
    // (Every rule set written here keeps local trust for the postgres role.)
    common::wait_for(
        "the postmaster to reload pg_hba.conf",
        Duration::from_secs(30),
        || {
            let now = loaded();
            if now != before {
                Ok(())
            } else {
                Err(format!("pg_conf_load_time still {now}"))
            }
        },
    );
}

fn write_hba(server: &PgServer, lines: &str) {
    let path = server.data_dir().join("pg_hba.conf");
    fs::write(&path, lines).unwrap();
    chown_to_pg(&path);
}

#[tokio::test]
async fn trust_tcp_unix_and_simple_queries() {
    let server = PgServer::new();

    // TCP; sslmode=prefer falls back to plain (the server has no TLS).
    let mut conn = PgConn::connect(
        &params(&server, "postgres", None, SslMode::Prefer),
        Replication::Off,
    )
    .await
    .unwrap();
    assert!(!conn.is_tls());
    assert_eq!(conn.auth_method(), "trust");
    let v = conn.server_version_num();
    assert!((150000..160000).contains(&v), "server_version_num {v}");
    assert_eq!(conn.parameter("server_encoding"), Some("UTF8"));
    assert_eq!(conn.parameter("application_name"), Some("cbdr-test"));
    assert!(conn.process_id().is_some());

    // Several rows, NULLs, column names.
    let rows = conn
        .simple_query(
            "select g as n, case when g % 2 = 0 then null else 'v' || g end as v \
             from generate_series(1, 3) g",
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].columns(), ["n", "v"]);
    assert_eq!(rows[0].len(), 2);
    assert_eq!(rows[0].get(0), Some("1"));
    assert_eq!(rows[0].get_by_name("v"), Some("v1"));
    assert_eq!(rows[1].get_by_name("v"), None);
    assert!(rows[1].try_get("v").is_err());
    assert!(rows[1].try_get("nope").is_err());
    assert_eq!(rows[2].get(1), Some("v3"));
    assert_eq!(rows[2].get(7), None);

    // Several statements: the rows of every result set, in order.
    let rows = conn
        .simple_query("create temp table t(x text); insert into t values ('a'), (null); select 1 as one; select x from t order by x nulls last; select 'héllo ☃' as u")
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].get_by_name("one"), Some("1"));
    assert_eq!(rows[1].get_by_name("x"), Some("a"));
    assert_eq!(rows[2].get_by_name("x"), None);
    assert_eq!(rows[3].get(0), Some("héllo ☃"));

    // Empty query, notices, query_one.
    assert!(conn.simple_query("").await.unwrap().is_empty());
    assert!(conn
        .simple_query("do $$ begin raise notice 'hello from the server'; end $$")
        .await
        .unwrap()
        .is_empty());
    let one = conn
        .query_one("select current_user, 42 as answer")
        .await
        .unwrap();
    assert_eq!(one.get(0), Some("postgres"));
    assert_eq!(one.try_get("answer").unwrap(), "42");
    assert!(matches!(
        conn.query_one("select 1 where false").await,
        Err(PgError::RowCount(0))
    ));
    assert!(matches!(
        conn.query_one("select 1 union all select 2").await,
        Err(PgError::RowCount(2))
    ));

    // A server error comes back verbatim and the connection stays usable,
    // also when it stops a multi-statement query half-way.
    let err = conn
        .simple_query("select 1; select 1/0; select 2")
        .await
        .unwrap_err();
    let server_err = err.server_error().expect("a server error");
    assert_eq!(server_err.code, "22012");
    assert_eq!(server_err.severity, "ERROR");
    assert_eq!(server_err.message, "division by zero");
    assert_eq!(err.to_string(), "ERROR: division by zero (SQLSTATE 22012)");
    let err = conn
        .simple_query("select * from no_such_table")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("42P01"));
    let err = conn
        .simple_query("select 1 from pg_class where relname = 1")
        .await
        .unwrap_err();
    assert!(err.server_error().unwrap().hint.is_some(), "{err}");
    assert!(err.to_string().contains("\nHINT: "), "{err}");
    assert_eq!(conn.query_one("select 2").await.unwrap().get(0), Some("2"));

    // Transactions.
    conn.simple_query("begin").await.unwrap();
    assert_eq!(conn.transaction_status(), b'T');
    conn.simple_query("select 1/0").await.unwrap_err();
    assert_eq!(conn.transaction_status(), b'E');
    conn.simple_query("rollback").await.unwrap();
    assert_eq!(conn.transaction_status(), b'I');

    // A NUL byte cannot be sent in a query.
    assert!(matches!(
        conn.simple_query("select '\0'").await,
        Err(PgError::Protocol(_))
    ));
    assert_eq!(conn.query_one("select 3").await.unwrap().get(0), Some("3"));

    // Low level: the messages of a query.
    conn.send_query("select 'a' as x; select").await.unwrap();
    let mut got = Vec::new();
    loop {
        let m = conn.next_message().await.unwrap();
        let done = m == BackendMessage::ReadyForQuery;
        got.push(m);
        if done {
            break;
        }
    }
    assert_eq!(
        got,
        vec![
            BackendMessage::RowDescription(vec!["x".to_string()].into()),
            BackendMessage::DataRow(vec![Some(bytes::Bytes::from_static(b"a"))]),
            BackendMessage::CommandComplete("SELECT 1".into()),
            BackendMessage::RowDescription(Vec::new().into()),
            BackendMessage::DataRow(Vec::new()),
            BackendMessage::CommandComplete("SELECT 1".into()),
            BackendMessage::ReadyForQuery,
        ]
    );
    conn.close().await;

    // Unix socket.
    let mut p = params(&server, "postgres", None, SslMode::Require);
    p.host = server.socket_dir().to_str().unwrap().to_owned();
    let mut conn = PgConn::connect(&p, Replication::Off).await.unwrap();
    assert!(!conn.is_tls(), "TLS is never used on Unix sockets");
    let row = conn
        .query_one("select current_user, inet_client_addr() is null as local")
        .await
        .unwrap();
    assert_eq!(row.get(0), Some("postgres"));
    assert_eq!(row.get_by_name("local"), Some("t"));
    conn.close().await;

    // A FATAL error (the server ends the session): then the connection is
    // closed.
    let mut conn = PgConn::connect(
        &params(&server, "postgres", None, SslMode::Disable),
        Replication::Off,
    )
    .await
    .unwrap();
    let err = conn
        .simple_query("select pg_terminate_backend(pg_backend_pid())")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("57P01"), "{err:?}");
    assert!(
        err.to_string().starts_with("FATAL: terminating connection"),
        "{err}"
    );
    assert!(conn.simple_query("select 1").await.is_err());

    // A database that does not exist.
    let mut p = params(&server, "postgres", None, SslMode::Disable);
    p.dbname = "nodb".into();
    let err = PgConn::connect(&p, Replication::Off).await.unwrap_err();
    assert_eq!(err.code(), Some("3D000"), "{err}");
    assert_eq!(
        err.to_string(),
        "FATAL: database \"nodb\" does not exist (SQLSTATE 3D000)"
    );
}

#[tokio::test]
async fn connection_failures_have_advice() {
    // Nothing listens on the port.
    let port = common::free_port();
    let p = ConnParams {
        host: "127.0.0.1".into(),
        port,
        user: "postgres".into(),
        password: None,
        passfile: None,
        dbname: "postgres".into(),
        sslmode: SslMode::Prefer,
        sslrootcert: None,
        application_name: "cbdr-test".into(),
        options: String::new(),
        connect_timeout: Duration::from_secs(5),
    };
    let err = PgConn::connect(&p, Replication::Physical)
        .await
        .unwrap_err();
    assert!(matches!(err, PgError::Connect { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "is PostgreSQL running on 127.0.0.1:{port}? (check PGHOST/PGPORT or --host/--port)"
        )),
        "{msg}"
    );

    // No socket in the directory.
    let dir = tempfile::tempdir().unwrap();
    let mut unix = p.clone();
    unix.host = dir.path().to_str().unwrap().to_owned();
    let err = PgConn::connect(&unix, Replication::Off).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("{}/.s.PGSQL.{port}", dir.path().display()))
            && msg.contains("is PostgreSQL running on"),
        "{msg}"
    );

    // A server that accepts and says nothing: connect_timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut quiet = p.clone();
    quiet.port = silent.local_addr().unwrap().port();
    quiet.connect_timeout = Duration::from_secs(1);
    let start = Instant::now();
    let err = PgConn::connect(&quiet, Replication::Off).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(10));
    match &err {
        PgError::Connect { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::TimedOut, "{err}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }

    // Something else than PostgreSQL (an HTTP server): a prompt, clear
    // error rather than a hang or a huge allocation.
    let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut web = p.clone();
    web.port = http.local_addr().unwrap().port();
    web.sslmode = SslMode::Disable;
    let responder = std::thread::spawn(move || {
        let (mut s, _) = http.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        std::thread::sleep(Duration::from_millis(500));
    });
    let err = PgConn::connect(&web, Replication::Off).await.unwrap_err();
    assert!(
        matches!(err, PgError::Protocol(_)),
        "expected a protocol error, got {err:?}"
    );
    responder.join().unwrap();
    drop(silent);
}

#[tokio::test]
async fn password_authentication() {
    let server = PgServer::new();
    server.psql(
        "set password_encryption = 'md5';
         create role md5u login password 'md5-Secret-1';
         set password_encryption = 'scram-sha-256';
         create role scramu login replication password 'scram-Secret-2';
         create role plainu login password 'plain-Secret-3';
         create role norep login replication;",
    );
    set_hba(
        &server,
        "local all all trust
local replication all trust
host all md5u 127.0.0.1/32 md5
host all scramu 127.0.0.1/32 scram-sha-256
host all plainu 127.0.0.1/32 password
host all postgres 127.0.0.1/32 trust
host replication postgres 127.0.0.1/32 trust
host replication scramu 127.0.0.1/32 scram-sha-256
",
    );
    // A password file that does not exist until a step below writes it.
    let pgpass_dir = tempfile::tempdir().unwrap();
    let pgpass = pgpass_dir.path().join("pgpass");
    let with_passfile = |user: &str| {
        let mut p = params(&server, user, None, SslMode::Disable);
        p.passfile = Some(pgpass.clone());
        p
    };

    for (user, password, method) in [
        ("md5u", "md5-Secret-1", "md5"),
        ("scramu", "scram-Secret-2", "SCRAM-SHA-256"),
        ("plainu", "plain-Secret-3", "password"),
    ] {
        let mut conn = PgConn::connect(
            &params(&server, user, Some(password), SslMode::Disable),
            Replication::Off,
        )
        .await
        .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(conn.auth_method(), method);
        assert_eq!(
            conn.query_one("select current_user").await.unwrap().get(0),
            Some(user)
        );
        conn.close().await;

        // A wrong password: the server's error, without the password.
        let wrong = format!("wrong-{password}");
        let err = PgConn::connect(
            &params(&server, user, Some(&wrong), SslMode::Disable),
            Replication::Off,
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Some("28P01"), "{user}: {err}");
        let msg = format!("{err} {err:?}");
        assert!(!msg.contains(&wrong), "{msg}");
        assert!(!msg.contains(password), "{msg}");
        assert!(msg.contains("check the password"), "{msg}");

        // No password at all.
        let err = PgConn::connect(&with_passfile(user), Replication::Off)
            .await
            .unwrap_err();
        assert!(matches!(err, PgError::Auth(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "authentication: the server asks for a password for user {user}: set \
                 PGPASSWORD or a ~/.pgpass entry"
            )
        );
    }

    // A replication connection with SCRAM.
    let mut conn = PgConn::connect(
        &params(&server, "scramu", Some("scram-Secret-2"), SslMode::Disable),
        Replication::Physical,
    )
    .await
    .unwrap();
    let row = conn.query_one("IDENTIFY_SYSTEM").await.unwrap();
    assert!(row.get_by_name("systemid").is_some());
    conn.close().await;

    // The password file: database "replication" for physical replication
    // connections, the database name otherwise; too-open files are
    // ignored.
    fs::write(
        &pgpass,
        "# test\n127.0.0.1:*:replication:scramu:scram-Secret-2\n*:*:postgres:md5u:md5-Secret-1\n",
    )
    .unwrap();
    fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o600)).unwrap();
    let conn = PgConn::connect(&with_passfile("scramu"), Replication::Physical)
        .await
        .unwrap();
    assert_eq!(conn.auth_method(), "SCRAM-SHA-256");
    conn.close().await;
    let err = PgConn::connect(&with_passfile("scramu"), Replication::Off)
        .await
        .unwrap_err();
    assert!(matches!(err, PgError::Auth(_)), "{err:?}");
    PgConn::connect(&with_passfile("md5u"), Replication::Off)
        .await
        .unwrap()
        .close()
        .await;
    fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o644)).unwrap();
    let err = PgConn::connect(&with_passfile("md5u"), Replication::Off)
        .await
        .unwrap_err();
    assert!(matches!(err, PgError::Auth(_)), "{err:?}");

    // No pg_hba.conf line for a replication connection: the server's
    // message and the line to add.
    let err = PgConn::connect(
        &params(&server, "norep", None, SslMode::Disable),
        Replication::Physical,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("28000"), "{err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "FATAL: no pg_hba.conf entry for replication connection from host \"127.0.0.1\", \
             user \"norep\""
        ) && msg.contains("(SQLSTATE 28000)"),
        "{msg}"
    );
    assert!(
        msg.contains(
            "add a line `host replication norep 127.0.0.1/32 scram-sha-256` to pg_hba.conf \
             and reload"
        ),
        "{msg}"
    );
}

/// Collects the reply to a BASE_BACKUP: result sets and CopyData counts.
#[derive(Debug, Default)]
struct BackupReply {
    result_sets: Vec<Vec<Vec<Option<String>>>>,
    copy_bytes: u64,
    copy_messages: u64,
    archives: Vec<String>,
    progress_messages: u64,
    manifest: Vec<u8>,
}

async fn run_base_backup(conn: &mut PgConn, command: &str) -> BackupReply {
    conn.send_query(command).await.unwrap();
    let mut reply = BackupReply::default();
    let mut in_manifest = false;
    let mut copy_out = 0;
    loop {
        match conn.next_message().await.unwrap() {
            BackendMessage::RowDescription(_) => reply.result_sets.push(Vec::new()),
            BackendMessage::DataRow(values) => reply.result_sets.last_mut().unwrap().push(
                values
                    .into_iter()
                    .map(|v| v.map(|b| String::from_utf8(b.to_vec()).unwrap()))
                    .collect(),
            ),
            BackendMessage::CopyOutResponse => copy_out += 1,
            BackendMessage::CopyData(data) => {
                reply.copy_bytes += data.len() as u64;
                reply.copy_messages += 1;
                match data[0] {
                    b'n' => {
                        // Archive name and tablespace location, NUL-terminated.
                        let name = data[1..].split(|&b| b == 0).next().unwrap();
                        reply.archives.push(String::from_utf8_lossy(name).into());
                        in_manifest = false;
                    }
                    b'm' => in_manifest = true,
                    b'p' => reply.progress_messages += 1,
                    b'd' if in_manifest => reply.manifest.extend_from_slice(&data[1..]),
                    b'd' => {}
                    other => panic!("unexpected CopyData type {:?}", other as char),
                }
            }
            BackendMessage::CopyDone | BackendMessage::CommandComplete(_) => {}
            BackendMessage::ReadyForQuery => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(copy_out, 1, "PostgreSQL 15 sends one COPY OUT");
    reply
}

#[tokio::test]
async fn replication_commands() {
    let server = PgServer::new();
    server.psql(
        "create table filler as select g, repeat(md5(g::text), 10) as pad \
         from generate_series(1, 20000) g",
    );
    let p = params(&server, "postgres", None, SslMode::Disable);
    let mut conn = PgConn::connect(&p, Replication::Physical).await.unwrap();

    let row = conn.query_one("IDENTIFY_SYSTEM").await.unwrap();
    let systemid = row.try_get("systemid").unwrap().to_owned();
    assert_eq!(
        systemid,
        server.psql("select system_identifier from pg_control_system()")
    );
    assert_eq!(row.try_get("timeline").unwrap(), "1");
    let xlogpos = row.try_get("xlogpos").unwrap().to_owned();
    assert!(xlogpos.contains('/'), "{xlogpos}");
    assert_eq!(row.get_by_name("dbname"), None, "physical: no database");
    // SQL is not accepted on a physical replication connection.
    assert!(conn.simple_query("select 1").await.is_err());
    // SHOW works.
    let row = conn.query_one("SHOW wal_segment_size").await.unwrap();
    assert_eq!(row.get(0), Some("16MB"));

    let reply = run_base_backup(
        &mut conn,
        "BASE_BACKUP (LABEL 'cbdr-test', CHECKPOINT 'fast', MANIFEST 'yes', PROGRESS true)",
    )
    .await;
    // Start position, tablespaces, end position.
    assert_eq!(reply.result_sets.len(), 3, "{:?}", reply.result_sets);
    let start_lsn = reply.result_sets[0][0][0].clone().unwrap();
    assert!(start_lsn.contains('/'));
    assert_eq!(reply.result_sets[1].len(), 1, "one (the main) tablespace");
    assert!(reply.copy_bytes > 1_000_000, "{} bytes", reply.copy_bytes);
    assert_eq!(reply.archives, vec!["base.tar"]);
    assert!(reply.progress_messages > 0);
    let manifest: serde_json::Value = serde_json::from_slice(&reply.manifest).unwrap_or_else(|e| {
        panic!(
            "manifest: {e}: {}",
            String::from_utf8_lossy(&reply.manifest)
        )
    });
    assert!(
        manifest["Files"].as_array().unwrap().len() > 100,
        "{manifest}"
    );
    assert_eq!(manifest["WAL-Ranges"][0]["Start-LSN"], start_lsn.as_str());

    // START_REPLICATION: COPY BOTH; WAL flows, a status update goes back,
    // and CopyDone ends it.
    let row = conn.query_one("IDENTIFY_SYSTEM").await.unwrap();
    let start = row.try_get("xlogpos").unwrap().to_owned();
    conn.send_query(&format!("START_REPLICATION PHYSICAL {start} TIMELINE 1"))
        .await
        .unwrap();
    assert_eq!(
        conn.next_message().await.unwrap(),
        BackendMessage::CopyBothResponse
    );
    server.psql(
        "create table made_during_streaming(x int); insert into made_during_streaming values (1)",
    );
    let mut wal_bytes = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while wal_bytes == 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, conn.next_message())
            .await
            .expect("WAL within 60 s")
            .unwrap();
        let BackendMessage::CopyData(data) = msg else {
            panic!("unexpected {msg:?}");
        };
        match data[0] {
            // XLogData: type, start, end, clock, then WAL.
            b'w' => wal_bytes += data.len() - 25,
            // Keepalive.
            b'k' => {}
            other => panic!("unexpected replication message {:?}", other as char),
        }
    }
    // Standby status update: write/flush/apply positions, clock, no reply.
    let mut update = vec![b'r'];
    for _ in 0..3 {
        update.extend_from_slice(&0u64.to_be_bytes());
    }
    update.extend_from_slice(&0i64.to_be_bytes());
    update.push(0);
    conn.send_copy_data(&update).await.unwrap();
    conn.send_copy_done().await.unwrap();
    let mut saw_copy_done = false;
    loop {
        match conn.next_message().await.unwrap() {
            BackendMessage::CopyData(_) => assert!(!saw_copy_done),
            BackendMessage::CopyDone => saw_copy_done = true,
            BackendMessage::ReadyForQuery => break,
            _ => {}
        }
    }
    assert!(saw_copy_done);
    // The connection is usable again.
    let row = conn.query_one("IDENTIFY_SYSTEM").await.unwrap();
    assert_eq!(row.try_get("systemid").unwrap(), systemid);
    // A replication command error is an ordinary server error.
    let err = conn
        .simple_query("START_REPLICATION PHYSICAL 0/0 TIMELINE 99")
        .await
        .unwrap_err();
    assert!(err.server_error().is_some(), "{err}");
    conn.close().await;

    // Logical replication mode: replication commands and SQL, in a database.
    let mut conn = PgConn::connect(&p, Replication::Logical).await.unwrap();
    let row = conn.query_one("IDENTIFY_SYSTEM").await.unwrap();
    assert_eq!(row.get_by_name("dbname"), Some("postgres"));
    assert_eq!(
        conn.query_one("select count(*) from filler")
            .await
            .unwrap()
            .get(0),
        Some("20000")
    );
    conn.close().await;
}

/// A self-signed certificate with common name `cn` and a subjectAltName
/// for "localhost" only (no IP address), owned
/// by the PostgreSQL user: (certificate, key).
fn make_cert(dir: &Path, name: &str, cn: &str) -> (PathBuf, PathBuf) {
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={cn}"),
            "-days",
            "1",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    chown_to_pg(&crt);
    chown_to_pg(&key);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&crt, fs::Permissions::from_mode(0o644)).unwrap();
    (crt, key)
}

#[tokio::test]
async fn tls() {
    let certs = pg_user_dir("tls");
    let (crt, key) = make_cert(certs.path(), "server", "localhost");
    let (other_crt, _) = make_cert(certs.path(), "other", "other");
    let mut server = PgServer::builder()
        .conf("ssl = on")
        .conf(format!("ssl_cert_file = '{}'", crt.display()))
        .conf(format!("ssl_key_file = '{}'", key.display()))
        .init();
    write_hba(
        &server,
        "local all all trust
local replication all trust
hostssl all postgres 127.0.0.1/32 trust
hostssl replication postgres 127.0.0.1/32 trust
hostssl all scramu 127.0.0.1/32 scram-sha-256
",
    );
    server.start();
    server.psql("create role scramu login password 'tls-Secret-4'");

    async fn ssl_in_use(conn: &mut PgConn) -> String {
        conn.query_one("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
            .await
            .unwrap()
            .get(0)
            .unwrap()
            .to_owned()
    }

    // require and prefer: TLS without verification.
    for mode in [SslMode::Require, SslMode::Prefer] {
        let mut conn = PgConn::connect(&params(&server, "postgres", None, mode), Replication::Off)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert!(conn.is_tls());
        assert_eq!(ssl_in_use(&mut conn).await, "t");
        conn.close().await;
    }

    // verify-full with the certificate as root, by name.
    let mut p = params(&server, "postgres", None, SslMode::VerifyFull);
    p.host = "localhost".into();
    p.sslrootcert = Some(crt.clone());
    let mut conn = PgConn::connect(&p, Replication::Off).await.unwrap();
    assert_eq!(ssl_in_use(&mut conn).await, "t");
    conn.close().await;

    // verify-full by IP: the certificate is not for 127.0.0.1.
    let mut by_ip = p.clone();
    by_ip.host = "127.0.0.1".into();
    let err = PgConn::connect(&by_ip, Replication::Off).await.unwrap_err();
    assert!(matches!(err, PgError::Tls(_)), "{err:?}");
    assert!(err.to_string().contains("not valid for name"), "{err}");
    assert!(err.to_string().contains("sslmode=verify-ca"), "{err}");
    // verify-ca does not check the name.
    by_ip.sslmode = SslMode::VerifyCa;
    let mut conn = PgConn::connect(&by_ip, Replication::Off).await.unwrap();
    assert_eq!(ssl_in_use(&mut conn).await, "t");
    conn.close().await;
    // ...but the chain: another root fails, in verify-ca, verify-full and
    // (as libpq) require with a root certificate.
    for mode in [SslMode::VerifyCa, SslMode::VerifyFull, SslMode::Require] {
        let mut wrong_root = p.clone();
        wrong_root.sslmode = mode;
        wrong_root.sslrootcert = Some(other_crt.clone());
        let err = PgConn::connect(&wrong_root, Replication::Off)
            .await
            .unwrap_err();
        assert!(matches!(err, PgError::Tls(_)), "{mode}: {err:?}");
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        assert!(err.to_string().contains("trusted root"), "{err}");
    }
    // A missing root certificate file.
    let mut missing = p.clone();
    missing.sslrootcert = Some(certs.path().join("nope.crt"));
    let err = PgConn::connect(&missing, Replication::Off)
        .await
        .unwrap_err();
    assert!(matches!(err, PgError::Tls(_)), "{err:?}");

    // SCRAM over TLS uses channel binding.
    let mut conn = PgConn::connect(
        &params(&server, "scramu", Some("tls-Secret-4"), SslMode::Require),
        Replication::Off,
    )
    .await
    .unwrap();
    assert_eq!(conn.auth_method(), "SCRAM-SHA-256-PLUS");
    assert_eq!(ssl_in_use(&mut conn).await, "t");
    conn.close().await;
    let err = PgConn::connect(
        &params(
            &server,
            "scramu",
            Some("wrong-tls-Secret"),
            SslMode::Require,
        ),
        Replication::Off,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("28P01"), "{err}");
    assert!(!format!("{err} {err:?}").contains("wrong-tls-Secret"));

    // Replication over TLS, with a small BASE_BACKUP.
    let mut conn = PgConn::connect(
        &params(&server, "postgres", None, SslMode::Require),
        Replication::Physical,
    )
    .await
    .unwrap();
    assert!(conn.is_tls());
    conn.query_one("IDENTIFY_SYSTEM").await.unwrap();
    let reply = run_base_backup(&mut conn, "BASE_BACKUP (CHECKPOINT 'fast', MANIFEST 'yes')").await;
    assert!(reply.copy_bytes > 1_000_000);
    assert!(!reply.manifest.is_empty());
    conn.close().await;

    // sslmode=disable against hostssl-only rules: the server's refusal.
    let err = PgConn::connect(
        &params(&server, "postgres", None, SslMode::Disable),
        Replication::Off,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("28000"), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("no pg_hba.conf entry for host \"127.0.0.1\", user \"postgres\", database \"postgres\", no encryption"),
        "{msg}"
    );
}

/// Throughput of BASE_BACKUP through this client vs pg_basebackup, on a
/// pgbench scale-20 database. Not a timed assertion: prints the figures.
/// `cargo test --release --test pg_conn -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn base_backup_throughput() {
    let certs = pg_user_dir("tls");
    let (crt, key) = make_cert(certs.path(), "server", "localhost");
    let server = PgServer::builder()
        .conf("shared_buffers = 128MB")
        .conf("ssl = on")
        .conf(format!("ssl_cert_file = '{}'", crt.display()))
        .conf(format!("ssl_key_file = '{}'", key.display()))
        .start();
    let out = pg_command(pg_bin("pgbench"))
        .args(["-i", "-s", "20", "-q", "-h"])
        .arg(server.socket_dir())
        .arg("-p")
        .arg(server.port().to_string())
        .args(["-U", "postgres", "postgres"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.psql("checkpoint");
    let size: u64 = server
        .psql("select sum(pg_database_size(oid)) from pg_database")
        .parse()
        .unwrap();
    println!("databases: {:.1} MB", size as f64 / 1e6);

    for round in 0..3 {
        for (name, host, sslmode) in [
            ("tcp", "127.0.0.1".to_owned(), SslMode::Disable),
            ("tcp+tls", "127.0.0.1".to_owned(), SslMode::Require),
            (
                "unix",
                server.socket_dir().to_str().unwrap().to_owned(),
                SslMode::Disable,
            ),
        ] {
            let mut p = params(&server, "postgres", None, sslmode);
            p.host = host;
            let mut conn = PgConn::connect(&p, Replication::Physical).await.unwrap();
            let start = Instant::now();
            let reply = run_base_backup(&mut conn, "BASE_BACKUP (CHECKPOINT 'fast')").await;
            let secs = start.elapsed().as_secs_f64();
            println!(
                "round {round} cbdr::pg::conn over {name}: {:.1} MB in {secs:.2} s = {:.0} MB/s ({} messages, avg {} B)",
                reply.copy_bytes as f64 / 1e6,
                reply.copy_bytes as f64 / 1e6 / secs,
                reply.copy_messages,
                reply.copy_bytes / reply.copy_messages.max(1)
            );
            conn.close().await;
        }
        for (name, host, sslmode) in [
            ("tcp", "127.0.0.1".to_owned(), "disable"),
            ("tcp+tls", "127.0.0.1".to_owned(), "require"),
            (
                "unix",
                server.socket_dir().to_str().unwrap().to_owned(),
                "disable",
            ),
        ] {
            let start = Instant::now();
            let out = pg_command("sh")
                .arg("-c")
                .env("PGSSLMODE", sslmode)
                .arg(format!(
                    "{} -h {host} -p {} -U postgres -Ft -D - -X none -c fast > /dev/null",
                    pg_bin("pg_basebackup").display(),
                    server.port()
                ))
                .output()
                .unwrap();
            let secs = start.elapsed().as_secs_f64();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            println!(
                "round {round} pg_basebackup -Ft -D - -X none > /dev/null over {name}: {secs:.2} s"
            );
        }
    }
}

/// A minimal fake server on 127.0.0.1: trust authentication, then answers
/// the first Query with `reply` and the second with ReadyForQuery only.
/// Returns the port.
fn fake_server(reply: impl FnOnce(&mut std::net::TcpStream) + Send + 'static) -> u16 {
    fn read_message(s: &mut std::net::TcpStream, tagged: bool) -> Vec<u8> {
        let mut tag = [0u8; 1];
        if tagged {
            s.read_exact(&mut tag).unwrap();
        }
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut body).unwrap();
        body
    }
    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        read_message(&mut s, false); // StartupMessage
        let mut hello = message(b'R', &0i32.to_be_bytes());
        hello.extend(message(b'S', b"server_version\x0015.0 (fake)\x00"));
        hello.extend(message(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]));
        hello.extend(message(b'Z', b"I"));
        s.write_all(&hello).unwrap();
        read_message(&mut s, true); // Query
        s.write_all(&message(b'H', &[0, 0, 0])).unwrap(); // CopyOutResponse
        reply(&mut s);
        let mut end = message(b'c', b"");
        end.extend(message(b'C', b"BASE_BACKUP\x00"));
        end.extend(message(b'Z', b"I"));
        s.write_all(&end).unwrap();
        read_message(&mut s, true); // Query
        s.write_all(&message(b'Z', b"I")).unwrap();
        // Wait for Terminate or EOF.
        let _ = s.read(&mut [0u8; 16]);
    });
    port
}

fn copy_data(i: u64, len: usize) -> Vec<u8> {
    let mut m = vec![b'd'];
    m.extend_from_slice(&(len as u32 + 4).to_be_bytes());
    let start = m.len();
    m.resize(start + len, (i % 251) as u8);
    let n = len.min(8);
    m[start..start + n].copy_from_slice(&i.to_be_bytes()[..n]);
    m
}

fn fake_params(port: u16) -> ConnParams {
    ConnParams {
        host: "127.0.0.1".into(),
        port,
        user: "u".into(),
        password: None,
        passfile: None,
        dbname: "d".into(),
        sslmode: SslMode::Disable,
        sslrootcert: None,
        application_name: "cbdr-test".into(),
        options: String::new(),
        connect_timeout: Duration::from_secs(10),
    }
}

/// CopyData messages of every size, split at every place by the reads,
/// come out whole and in order.
#[tokio::test]
async fn copy_data_framing() {
    const SIZES: [usize; 9] = [0, 1, 7, 100, 8192, 32768, 262_139, 300_000, 1_048_579];
    const COUNT: u64 = 300;
    let port = fake_server(|s| {
        for i in 0..COUNT {
            let m = copy_data(i, SIZES[i as usize % SIZES.len()]);
            // Dribble some messages out in small pieces.
            if i % 7 == 3 {
                for piece in m.chunks(1 + (i as usize % 5000)) {
                    s.write_all(piece).unwrap();
                }
            } else {
                s.write_all(&m).unwrap();
            }
        }
    });
    let mut conn = PgConn::connect(&fake_params(port), Replication::Physical)
        .await
        .unwrap();
    assert_eq!(conn.server_version_num(), 150000);
    assert_eq!(conn.process_id(), Some(7));
    conn.send_query("BASE_BACKUP").await.unwrap();
    assert_eq!(
        conn.next_message().await.unwrap(),
        BackendMessage::CopyOutResponse
    );
    for i in 0..COUNT {
        let BackendMessage::CopyData(data) = conn.next_message().await.unwrap() else {
            panic!("message {i}: not CopyData");
        };
        let expect = copy_data(i, SIZES[i as usize % SIZES.len()]);
        assert!(data[..] == expect[5..], "message {i} differs");
    }
    assert_eq!(conn.next_message().await.unwrap(), BackendMessage::CopyDone);
    assert_eq!(
        conn.next_message().await.unwrap(),
        BackendMessage::CommandComplete("BASE_BACKUP".into())
    );
    assert_eq!(
        conn.next_message().await.unwrap(),
        BackendMessage::ReadyForQuery
    );
    assert!(conn.simple_query("select").await.unwrap().is_empty());
    conn.close().await;
}

/// The client's ceiling: 4 GiB of 32 KiB CopyData messages from a fake
/// server that sends them from memory over loopback.
/// `cargo test --release --test pg_conn -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn copy_data_throughput() {
    const MESSAGE: usize = 32 * 1024;
    const BLOCK_MESSAGES: u64 = 256;
    const BLOCKS: u64 = 512;
    let port = fake_server(|s| {
        let mut block = Vec::new();
        for i in 0..BLOCK_MESSAGES {
            block.extend(copy_data(i, MESSAGE));
        }
        for _ in 0..BLOCKS {
            s.write_all(&block).unwrap();
        }
    });
    let mut conn = PgConn::connect(&fake_params(port), Replication::Physical)
        .await
        .unwrap();
    conn.send_query("BASE_BACKUP").await.unwrap();
    let start = Instant::now();
    let mut bytes = 0u64;
    loop {
        match conn.next_message().await.unwrap() {
            BackendMessage::CopyData(d) => bytes += d.len() as u64,
            BackendMessage::ReadyForQuery => break,
            _ => {}
        }
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(bytes, BLOCKS * BLOCK_MESSAGES * MESSAGE as u64);
    println!(
        "fake server, 32 KiB CopyData over TCP loopback: {:.2} GB in {secs:.2} s = {:.2} GB/s",
        bytes as f64 / 1e9,
        bytes as f64 / 1e9 / secs
    );
    conn.close().await;

    // Baseline: the same bytes read raw from a socket with tokio, no framing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut block = Vec::new();
        for i in 0..BLOCK_MESSAGES {
            block.extend(copy_data(i, MESSAGE));
        }
        for _ in 0..BLOCKS {
            s.write_all(&block).unwrap();
        }
    });
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let start = Instant::now();
    let mut raw = 0u64;
    loop {
        let n = tokio::io::AsyncReadExt::read(&mut sock, &mut buf)
            .await
            .unwrap();
        if n == 0 {
            break;
        }
        raw += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "baseline, raw tokio reads of the same stream: {:.2} GB in {secs:.2} s = {:.2} GB/s",
        raw as f64 / 1e9,
        raw as f64 / 1e9 / secs
    );
}

/// The startup packet's `options` (libpq's `PGOPTIONS`) set the session's
/// settings: what a direct connection to a Greenplum segment needs
/// (`-c gp_role=utility`), shown here with settings PostgreSQL has.
#[tokio::test]
async fn options_set_the_sessions_settings() {
    let server = PgServer::new();
    let mut p = params(&server, "postgres", None, SslMode::Prefer);
    p.options = "-c work_mem=7MB -c statement_timeout=12s".into();
    let mut conn = PgConn::connect(&p, Replication::Off).await.unwrap();
    let rows = conn
        .simple_query(
            "select current_setting('work_mem') as w, current_setting('statement_timeout') as t",
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get_str("w").unwrap(), "7MB");
    assert_eq!(rows[0].get_str("t").unwrap(), "12s");
    conn.close().await;

    // A setting the server does not know is refused at connection, named.
    p.options = "-c no_such_setting=1".into();
    let err = PgConn::connect(&p, Replication::Off).await.unwrap_err();
    assert!(
        err.to_string().contains("no_such_setting"),
        "an unknown setting in options: {err}"
    );
}
