//! `cbdr agent`: real agent processes (as the PostgreSQL OS user) on free
//! ports, driven by the library's AgentClient: backups and restores of a
//! real PostgreSQL 15 through the agent, refusal of unauthenticated
//! callers, mutual TLS, and the abort of a job whose connection dropped.

mod common;

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use cbdr::cluster::client::AgentClient;
use cbdr::cluster::proto::{
    BackupRequest, Progress, RecoveryTargetSpec, RestoreRequest, MAX_FRAME,
};
use cbdr::config::AgentConfig;
use cbdr::ExitCode;
use common::pg::{chown_to_pg, pg_bin, pg_command, PgServer};
use common::{free_port, CbdrEnv, Key, Storage, CBDR};

const KEY_HEX: &str = "5a1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddee02";
const TOKEN: &str = "agent-test-token-5b9c1f0e7d2a4c68";
const WRONG_TOKEN: &str = "not-the-token-9f8e7d6c5b4a3210";
const CONNECT: Duration = Duration::from_secs(10);
const SILENCE: Duration = Duration::from_secs(30);

/// The shared environment (owned by the PostgreSQL OS user) with this
/// file's key and the given `[agent]` lines.
struct Env(CbdrEnv);

deref_env!(Env);

impl Env {
    fn new(name: &str, storage: Storage, agent_toml: &str) -> Env {
        Env(CbdrEnv::builder(name)
            .storage(storage)
            .key(Key::Raw(KEY_HEX.into()))
            .extra_toml(format!("[agent]\n{agent_toml}\n"))
            .build())
    }

    /// A token file (mode 0600, owned by the PostgreSQL OS user).
    fn token_file(&self, token: &str) -> PathBuf {
        let path = self.write("agent.token", &format!("{token}\n"));
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        path
    }

    fn server(&self) -> PgServer {
        self.archiving_server().start()
    }

    /// `cbdr --config … ARGS` as the PostgreSQL OS user.
    fn cbdr(&self, args: &[&str]) -> (i32, String, String) {
        self.run(args).parts()
    }

    /// Names of the complete backups of content -1, from `cbdr list`.
    fn listed_backups(&self) -> Vec<String> {
        self.listed_backups_of(-1)
    }

    fn listed_backups_of(&self, content_id: i32) -> Vec<String> {
        common::env::backup_names(&self.backups_of(content_id))
    }

    fn agent(&self) -> AgentProc {
        self.try_agent(&self.config)
            .unwrap_or_else(|log| panic!("the agent did not start:\n{log}"))
    }

    /// Starts `cbdr agent` with `config` on a free port; `Err(log)` when it
    /// exits instead of listening (retried when the port was taken).
    fn try_agent(&self, config: &Path) -> Result<AgentProc, String> {
        for attempt in 0.. {
            let port = free_port();
            let log = self.path(format!("agent-{port}.log"));
            let child = pg_command(CBDR)
                .process_group(0)
                .arg("--config")
                .arg(config)
                .args(["agent", "--listen", &format!("127.0.0.1:{port}")])
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            let mut agent = AgentProc {
                child,
                addr: format!("127.0.0.1:{port}"),
                log,
            };
            let started = common::wait_for("the agent to start", Duration::from_secs(30), || {
                let text = agent.log_text();
                if text.contains("listening on") {
                    return Ok(Ok(()));
                }
                match agent.child.try_wait().unwrap() {
                    Some(_) if text.contains("in use") && attempt < 5 => Ok(Err(None)),
                    Some(status) => Ok(Err(Some(format!("{status}\n{text}")))),
                    None => Err(text),
                }
            });
            match started {
                Ok(()) => return Ok(agent),
                Err(Some(log)) => return Err(log),
                Err(None) => continue,
            }
        }
        unreachable!()
    }
}

/// A running `cbdr agent`; killed (its whole process group) on drop.
struct AgentProc {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl AgentProc {
    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    fn wait_log(&self, needle: &str) -> String {
        common::wait_for(
            &format!("the agent log to say {needle:?}"),
            Duration::from_secs(30),
            || {
                let text = self.log_text();
                if text.contains(needle) {
                    Ok(text)
                } else {
                    Err(text)
                }
            },
        )
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group created for the agent.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Stops a server the agent started from a restored directory.
struct Started(PathBuf);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = pg_command(pg_bin("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(&self.0)
            .output();
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn token_client(token: &str) -> AgentConfig {
    AgentConfig {
        token: Some(token.into()),
        ..Default::default()
    }
}

fn backup_request(server: &PgServer, wal_wait_secs: u64) -> BackupRequest {
    BackupRequest {
        content_id: -1,
        host: "127.0.0.1".into(),
        port: server.port(),
        user: Some("postgres".into()),
        database: None,
        wal_wait_secs,
        mode: Default::default(),
        delta_max_steps: 0,
    }
}

fn psql_port(port: u16, sql: &str) -> String {
    let out = pg_command(pg_bin("psql"))
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &port.to_string()])
        .args(["-XAtc", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql on port {port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn pgbench_init(server: &PgServer) {
    let out = pg_command(pg_bin("pgbench"))
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
        .arg(server.port().to_string())
        .args(["-i", "-s", "1", "-q", "postgres"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn backup_and_point_in_time_restore_through_the_agent() {
    let env = Env::new("agent-backup", Storage::Fs, "");
    let token = env.token_file(TOKEN);
    fs::write(
        &env.config,
        fs::read_to_string(&env.config).unwrap()
            + &format!("token_file = \"{}\"\n", token.display()),
    )
    .unwrap();
    let server = env.server();
    pgbench_init(&server);
    let agent = env.agent();
    assert!(
        agent.log_text().contains("(tls: off, auth: token)"),
        "{}",
        agent.log_text()
    );
    let rt = rt();

    let mut client = rt
        .block_on(AgentClient::connect(
            &agent.addr,
            &token_client(TOKEN),
            CONNECT,
        ))
        .unwrap();
    let pong = rt.block_on(client.ping()).unwrap();
    assert_eq!(pong.jobs_running, 0);
    assert!(!pong.hostname.is_empty());
    assert_eq!(pong.pid, client.agent().pid);

    let mut beats: Vec<Progress> = Vec::new();
    let record = rt
        .block_on(client.backup(backup_request(&server, 60), SILENCE, |p| {
            beats.push(p.clone())
        }))
        .unwrap();
    assert_eq!(record.content_id, -1);
    assert!(record.plain_bytes() > 10_000_000, "{record:?}");
    assert!(!beats.is_empty(), "no progress heartbeat arrived");
    assert!(
        beats.windows(2).all(|w| w[0].done_bytes <= w[1].done_bytes),
        "{beats:?}"
    );
    assert_eq!(env.listed_backups(), vec![record.name.clone()]);
    let log = agent.wait_log("done in");
    assert!(
        log.contains(&format!(
            "backup of content -1 (127.0.0.1:{})",
            server.port()
        )) && log.contains(&record.name),
        "{log}"
    );

    // A target after the backup, then more writes past it.
    server.psql("create table marker as select 1 as v");
    let lsn = server.psql("select pg_current_wal_lsn()");
    server.psql("insert into marker values (2)");
    server.archive_everything();

    let target_dir = env.path("restored");
    let port = free_port();
    let _stop = Started(target_dir.clone());
    let mut beats: Vec<Progress> = Vec::new();
    let client = rt
        .block_on(AgentClient::connect(
            &agent.addr,
            &token_client(TOKEN),
            CONNECT,
        ))
        .unwrap();
    let done = rt
        .block_on(client.restore(
            RestoreRequest {
                port: Some(port),
                archive_off: true,
                start: true,
                start_timeout_secs: 120,
                ..RestoreRequest::new(
                    -1,
                    target_dir.display().to_string(),
                    RecoveryTargetSpec::Lsn(lsn),
                )
            },
            SILENCE,
            |p| beats.push(p.clone()),
        ))
        .unwrap();
    assert_eq!(done.backup.name, record.name);
    let report = done.start_report.expect("a start report");
    assert!(report.contains("promoted"), "{report}");
    assert!(!beats.is_empty(), "no progress heartbeat arrived");
    for b in &beats {
        assert!(
            b.total_bytes.is_none() || b.total_bytes == Some(record.plain_bytes()),
            "{b:?}"
        );
        assert!(b.done_bytes <= record.plain_bytes(), "{b:?}");
    }
    // The restored server runs on the requested port, promoted, at the target.
    let auto = fs::read_to_string(target_dir.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains(&format!("port = {port}")), "{auto}");
    assert_eq!(psql_port(port, "select pg_is_in_recovery()"), "f");
    assert_eq!(psql_port(port, "select array_agg(v) from marker"), "{1}");
    assert_eq!(
        psql_port(port, "select count(*) from pgbench_accounts"),
        "100000"
    );
    agent.wait_log("restore of content -1 into");

    // The restore command the agent wrote runs its own cbdr and config.
    assert!(
        auto.contains("wal-fetch %f %p --content-id -1")
            && auto.contains(&env.config.display().to_string()),
        "{auto}"
    );
}

#[test]
fn callers_without_the_token_are_refused() {
    use std::io::{Read, Write};
    let env = Env::new("agent-auth", Storage::Fs, &format!("token = \"{TOKEN}\""));
    let agent = env.agent();
    let rt = rt();

    // A wrong token: refused, named as such; the log names the peer and
    // holds neither token.
    let e = rt
        .block_on(AgentClient::connect(
            &agent.addr,
            &token_client(WRONG_TOKEN),
            CONNECT,
        ))
        .unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Agent, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(&agent.addr) && msg.contains("wrong token"),
        "{msg}"
    );
    let log = agent.wait_log("wrong token");
    assert!(
        log.contains("WARN") && log.contains("refused 127.0.0.1:"),
        "{log}"
    );

    // No token on the client: a usage error saying how to set one.
    let e = rt
        .block_on(AgentClient::connect(
            &agent.addr,
            &AgentConfig::default(),
            CONNECT,
        ))
        .unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Usage, "{e}");
    assert!(e.to_string().contains("token_file"), "{e}");

    // Raw clients: a request before authenticating, and an oversize frame.
    let raw = |payload: Vec<u8>| -> String {
        let mut s = std::net::TcpStream::connect(&agent.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let read_frame = |s: &mut std::net::TcpStream| -> Option<serde_json::Value> {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).ok()?;
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut body).ok()?;
            Some(serde_json::from_slice(&body).unwrap())
        };
        let challenge = read_frame(&mut s).unwrap();
        assert_eq!(challenge["type"], "challenge", "{challenge}");
        assert_eq!(challenge["nonce"].as_str().unwrap().len(), 64);
        s.write_all(&payload).unwrap();
        let answer = read_frame(&mut s).expect("an answer");
        assert_eq!(answer["type"], "refused", "{answer}");
        // Then the agent closes the connection.
        assert!(read_frame(&mut s).is_none());
        answer["reason"].as_str().unwrap().to_string()
    };
    let ping = br#"{"type":"ping"}"#;
    let mut frame = (ping.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(ping);
    let reason = raw(frame);
    assert!(reason.contains("authenticate first"), "{reason}");
    let backup = serde_json::to_vec(&serde_json::json!({
        "type": "backup", "content_id": -1, "host": "127.0.0.1", "port": 1,
        "user": null, "database": null, "wal_wait_secs": 1
    }))
    .unwrap();
    let mut frame = (backup.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&backup);
    let reason = raw(frame);
    assert!(reason.contains("authenticate first"), "{reason}");
    let reason = raw(((MAX_FRAME as u32) * 2).to_be_bytes().to_vec());
    assert!(reason.contains("exceeds the limit"), "{reason}");
    let log = agent.wait_log("exceeds the limit");
    assert!(
        log.contains("a backup request before authentication"),
        "{log}"
    );
    for secret in [TOKEN, WRONG_TOKEN] {
        assert!(!log.contains(secret), "the log shows a token:\n{log}");
    }
    // Nothing ran.
    assert!(env.listed_backups().is_empty());

    // The right token still works.
    let mut client = rt
        .block_on(AgentClient::connect(
            &agent.addr,
            &token_client(TOKEN),
            CONNECT,
        ))
        .unwrap();
    assert_eq!(rt.block_on(client.ping()).unwrap().jobs_running, 0);

    // No token configured and no mutual TLS: the agent refuses to start.
    let bare = env.path("bare.toml");
    fs::write(
        &bare,
        format!("[storage]\npath = \"{}\"\n", env.path("repo").display()),
    )
    .unwrap();
    chown_to_pg(&bare);
    let log = env.try_agent(&bare).err().expect("started without a token");
    assert!(
        log.contains("refuses to start") && log.contains("openssl rand -hex 32"),
        "{log}"
    );
    assert!(log.contains("exit status: 2"), "{log}");
    // A token too short: refused with what to do.
    fs::write(&bare, "[agent]\ntoken = \"short\"\n").unwrap();
    let log = env
        .try_agent(&bare)
        .err()
        .expect("started with a short token");
    assert!(
        log.contains("too short") && !log.contains("\"short\""),
        "{log}"
    );
    // --check accepts the good settings.
    let (code, out, err) = env.cbdr(&["agent", "--check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("auth: token"), "{out}");
}

struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    rogue_cert: PathBuf,
    rogue_key: PathBuf,
}

/// A CA, an agent certificate for 127.0.0.1, a client certificate signed
/// by the CA, and a client certificate signed by another CA.
fn make_pki(env: &Env) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let rogue_key = KeyPair::generate().unwrap();
    let mut rogue_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    rogue_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let rogue_issuer = Issuer::new(rogue_params, rogue_key);

    let leaf = |names: Vec<String>, issuer: &Issuer<'_, KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let write = |name: &str, text: String| {
        let p = env.path(name);
        fs::write(&p, text).unwrap();
        chown_to_pg(&p);
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        p
    };
    let (sc, sk) = leaf(vec!["127.0.0.1".into(), "localhost".into()], &issuer);
    let (cc, ck) = leaf(vec!["coordinator".into()], &issuer);
    let (rc, rk) = leaf(vec!["coordinator".into()], &rogue_issuer);
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        server_cert: write("agent.pem", sc),
        server_key: write("agent.key", sk),
        client_cert: write("client.pem", cc),
        client_key: write("client.key", ck),
        rogue_cert: write("rogue.pem", rc),
        rogue_key: write("rogue.key", rk),
    }
}

#[test]
fn mutual_tls_and_tls_with_a_token() {
    let env = Env::new("agent-tls", Storage::Fs, "");
    let pki = make_pki(&env);
    let base = fs::read_to_string(&env.config).unwrap();
    let mtls_config = env.path("mtls.toml");
    fs::write(
        &mtls_config,
        format!(
            "{base}tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        ),
    )
    .unwrap();
    chown_to_pg(&mtls_config);
    let agent = env.try_agent(&mtls_config).unwrap();
    assert!(
        agent.log_text().contains("(tls: on, auth: mtls)"),
        "{}",
        agent.log_text()
    );
    let rt = rt();
    let tls_client = |cert: Option<(&Path, &Path)>| AgentConfig {
        tls_ca: Some(pki.ca.clone()),
        tls_client_cert: cert.map(|c| c.0.to_path_buf()),
        tls_client_key: cert.map(|c| c.1.to_path_buf()),
        ..Default::default()
    };

    // The right client certificate: authenticated by it alone.
    let mut client = rt
        .block_on(AgentClient::connect(
            &agent.addr,
            &tls_client(Some((&pki.client_cert, &pki.client_key))),
            CONNECT,
        ))
        .unwrap();
    assert_eq!(rt.block_on(client.ping()).unwrap().jobs_running, 0);

    // No client certificate, or one from another CA: refused.
    for (what, cfg) in [
        ("no certificate", tls_client(None)),
        (
            "a certificate of another CA",
            tls_client(Some((&pki.rogue_cert, &pki.rogue_key))),
        ),
    ] {
        let e = rt
            .block_on(AgentClient::connect(&agent.addr, &cfg, CONNECT))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::Agent, "{what}: {e}");
        assert!(e.to_string().contains(&agent.addr), "{what}: {e}");
    }
    let log = agent.wait_log("TLS handshake failed");
    assert!(log.contains("refused 127.0.0.1:"), "{log}");
    // Plain TCP to a TLS agent: no answer, and a hint about TLS.
    let e = rt
        .block_on(AgentClient::connect(
            &agent.addr,
            &AgentConfig::default(),
            Duration::from_secs(2),
        ))
        .unwrap_err();
    assert!(e.to_string().contains("tls_ca"), "{e}");
    // A client that trusts another CA refuses the agent.
    let other_ca = AgentConfig {
        tls_ca: Some(pki.rogue_cert.clone()),
        tls_client_cert: Some(pki.client_cert.clone()),
        tls_client_key: Some(pki.client_key.clone()),
        ..Default::default()
    };
    let e = rt
        .block_on(AgentClient::connect(&agent.addr, &other_ca, CONNECT))
        .unwrap_err();
    assert!(e.to_string().contains("TLS handshake failed"), "{e}");
    drop(agent);

    // TLS (server certificate only) with the token.
    let tls_config = env.path("tls.toml");
    fs::write(
        &tls_config,
        format!(
            "{base}tls_cert = \"{}\"\ntls_key = \"{}\"\ntoken = \"{TOKEN}\"\n",
            pki.server_cert.display(),
            pki.server_key.display(),
        ),
    )
    .unwrap();
    chown_to_pg(&tls_config);
    let agent = env.try_agent(&tls_config).unwrap();
    assert!(agent.log_text().contains("(tls: on, auth: token)"));
    let with_token = |token: &str| AgentConfig {
        tls_ca: Some(pki.ca.clone()),
        token: Some(token.into()),
        ..Default::default()
    };
    let mut client = rt
        .block_on(AgentClient::connect(
            &agent.addr,
            &with_token(TOKEN),
            CONNECT,
        ))
        .unwrap();
    rt.block_on(client.ping()).unwrap();
    let e = rt
        .block_on(AgentClient::connect(
            &agent.addr,
            &with_token(WRONG_TOKEN),
            CONNECT,
        ))
        .unwrap_err();
    assert!(e.to_string().contains("wrong token"), "{e}");
}

#[test]
fn a_dropped_connection_aborts_the_backup() {
    let env = Env::new("agent-abort", Storage::Fs, &format!("token = \"{TOKEN}\""));
    let server = env.server();
    pgbench_init(&server);
    let agent = env.agent();
    let rt = rt();
    let connect = || {
        rt.block_on(AgentClient::connect(
            &agent.addr,
            &token_client(TOKEN),
            CONNECT,
        ))
        .unwrap()
    };

    // Archiving broken: the backup streams, then waits for its WAL.
    server.psql("alter system set archive_command = '/bin/false'");
    server.psql("select pg_reload_conf()");
    let client = connect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let job = rt.spawn(
        client.backup(backup_request(&server, 300), SILENCE, move |p| {
            let _ = tx.send(p.clone());
        }),
    );
    let waiting = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(p) = rx.recv().await {
                if p.phase == "waiting for WAL" {
                    return p;
                }
            }
            panic!("the backup ended without waiting for WAL");
        })
        .await
        .expect("no 'waiting for WAL' heartbeat within 60 s")
    });
    assert!(waiting.done_bytes > 10_000_000, "{waiting:?}");
    // Heartbeats go on while it waits.
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("no heartbeat while waiting")
    });
    let mut pinger = connect();
    assert_eq!(rt.block_on(pinger.ping()).unwrap().jobs_running, 1);

    // Jobs of other instances run at the same time (here a second backup
    // as content 0, whose WAL never arrives); a second job for the same
    // instance is refused.
    let (tx0, mut rx0) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut other = backup_request(&server, 300);
    other.content_id = 0;
    let job0 = rt.spawn(connect().backup(other, SILENCE, move |p| {
        let _ = tx0.send(p.phase.clone());
    }));
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            while rx0.recv().await.expect("heartbeats") != "waiting for WAL" {}
        })
        .await
        .expect("no 'waiting for WAL' heartbeat of the second job within 60 s")
    });
    assert_eq!(rt.block_on(pinger.ping()).unwrap().jobs_running, 2);
    let e = rt
        .block_on(connect().backup(backup_request(&server, 300), SILENCE, |_| {}))
        .unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Usage, "{e}");
    assert!(e.to_string().contains("already running"), "{e}");

    // The coordinator goes away: the agent aborts the jobs.
    job0.abort();
    job.abort();
    let log = agent.wait_log("aborted after");
    assert!(log.contains("the caller closed the connection"), "{log}");
    common::wait_for(
        "the job to be uncounted",
        Duration::from_secs(10),
        || match rt.block_on(pinger.ping()).unwrap().jobs_running {
            0 => Ok(()),
            n => Err(format!("{n} job(s) still counted")),
        },
    );
    // Fixing archiving now must not complete the aborted backup.
    server.psql("alter system reset archive_command");
    server.psql("select pg_reload_conf()");
    server.archive_everything();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        env.listed_backups().is_empty(),
        "an aborted backup is listed"
    );
    assert!(
        env.listed_backups_of(0).is_empty(),
        "an aborted backup is listed"
    );

    // The next backup works.
    let record = rt
        .block_on(connect().backup(backup_request(&server, 60), SILENCE, |_| {}))
        .unwrap();
    assert_eq!(env.listed_backups(), vec![record.name]);

    // A failing job reports the agent's error and its exit code.
    let mut bad = backup_request(&server, 60);
    bad.port = free_port();
    let e = rt
        .block_on(connect().backup(bad, SILENCE, |_| {}))
        .unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Postgres, "{e}");
    assert!(e.to_string().contains(&agent.addr), "{e}");

    // SIGTERM stops the agent: it aborts the running job (the client
    // learns at once) and exits.
    server.psql("alter system set archive_command = '/bin/false'");
    server.psql("select pg_reload_conf()");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let job = rt.spawn(
        connect().backup(backup_request(&server, 300), SILENCE, move |p| {
            let _ = tx.send(p.phase.clone());
        }),
    );
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            while rx.recv().await.expect("heartbeats") != "waiting for WAL" {}
        })
        .await
        .expect("no 'waiting for WAL' heartbeat within 60 s")
    });
    let mut agent = agent;
    // SAFETY: kill(2) on the agent's own process group.
    unsafe { libc::kill(-(agent.child.id() as i32), libc::SIGTERM) };
    let e = rt.block_on(job).unwrap().unwrap_err();
    assert_eq!(e.exit_code(), ExitCode::Agent, "{e}");
    assert!(e.to_string().contains("closed the connection"), "{e}");
    let log = agent.wait_log("agent stopped");
    assert!(
        log.contains("SIGTERM: stopping") && log.contains("1 running job(s) aborted"),
        "{log}"
    );
    common::wait_for("the agent to exit", Duration::from_secs(20), || match agent
        .child
        .try_wait()
        .unwrap()
    {
        Some(_) => Ok(()),
        None => Err(log.clone()),
    });
    server.psql("alter system reset archive_command");
    server.psql("select pg_reload_conf()");
    server.archive_everything();
    assert_eq!(env.listed_backups().len(), 1, "an aborted backup is listed");
}

#[test]
fn backup_and_restore_through_the_agent_on_garage() {
    let env = Env::new(
        "agent-garage",
        Storage::S3("cluster1".into()),
        &format!("token = \"{TOKEN}\""),
    );
    let server = env.server();
    server.psql("create table t as select g from generate_series(1, 50000) g");
    let agent = env.agent();
    let rt = rt();
    let client = rt
        .block_on(AgentClient::connect(
            &agent.addr,
            &token_client(TOKEN),
            CONNECT,
        ))
        .unwrap();
    let record = rt
        .block_on(client.backup(backup_request(&server, 60), SILENCE, |_| {}))
        .unwrap();
    assert_eq!(env.listed_backups(), vec![record.name.clone()]);
    server.archive_everything();

    // Restore without starting: the directory is ready for recovery.
    let target_dir = env.path("restored");
    let client = rt
        .block_on(AgentClient::connect(
            &agent.addr,
            &token_client(TOKEN),
            CONNECT,
        ))
        .unwrap();
    let done = rt
        .block_on(client.restore(
            RestoreRequest {
                backup: Some(record.name.clone()),
                archive_off: true,
                ..RestoreRequest::new(
                    -1,
                    target_dir.display().to_string(),
                    RecoveryTargetSpec::Immediate,
                )
            },
            SILENCE,
            |_| {},
        ))
        .unwrap();
    assert_eq!(done.backup, record);
    assert!(done.start_report.is_none());
    assert!(target_dir.join("global/pg_control").exists());
    let restored = PgServer::start_existing(&target_dir, PgServer::builder());
    restored.wait_for_recovery_end();
    assert_eq!(restored.psql("select count(*) from t"), "50000");

    // Restoring into the same directory fails with the agent's message and
    // exit code.
    let client = rt
        .block_on(AgentClient::connect(
            &agent.addr,
            &token_client(TOKEN),
            CONNECT,
        ))
        .unwrap();
    let e = rt
        .block_on(client.restore(
            RestoreRequest {
                archive_off: true,
                ..RestoreRequest::new(
                    -1,
                    target_dir.display().to_string(),
                    RecoveryTargetSpec::Latest,
                )
            },
            SILENCE,
            |_| {},
        ))
        .unwrap_err();
    // The restored server still runs there: the agent refuses it as the
    // live data directory it is (the stronger reason than "not empty").
    assert_eq!(e.exit_code(), ExitCode::Usage, "{e}");
    assert!(
        e.to_string()
            .contains("is the data directory of a running server"),
        "{e}"
    );
}
