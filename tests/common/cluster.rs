//! A throw-away cluster on loopback: a coordinator and N segment PostgreSQL
//! 15 servers (each archiving with `cbdr wal-push --content-id N`), a
//! config with their `[[cluster.segments]]`, and one `cbdr agent` process
//! per instance (started on demand), all as the PostgreSQL OS user.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use super::free_port;
use super::pg::{chown_to_pg, pg_command, PgServer};
use super::{CbdrEnv, Key};

pub use super::CBDR;
pub const KEY_HEX: &str = "4f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddee01";
pub const AGENT_TOKEN: &str = "test-token-0123456789abcdef-cluster";
pub const BARRIER_KEY: i64 = 7300;

pub struct TestCluster {
    /// The directory, config (with the cluster sections), key and
    /// repository.
    pub env: CbdrEnv,
    pub config: PathBuf,
    /// Index 0 is the coordinator (content -1), then segments 0..N-1.
    pub servers: Vec<PgServer>,
    pub agent_ports: Vec<u16>,
    pub agents: Vec<Option<Child>>,
    /// Agents stream their instance's WAL (`--stream-wal`).
    pub stream_wal: bool,
}

/// Options of [`TestCluster::start_opts`].
#[derive(Debug, Default, Clone)]
pub struct ClusterOpts {
    /// Agents stream their instance's WAL instead of archiving.
    pub stream_wal: bool,
    /// More postgresql.conf lines for every instance.
    pub conf: Vec<String>,
    /// More lines of the `[cluster]` section.
    pub cluster_toml: String,
    /// The repository on Garage (a bucket of its own) instead of the
    /// filesystem (`storage_toml` is then ignored).
    pub s3: bool,
}

/// `content id → index` in [`TestCluster::servers`].
pub fn index(content_id: i32) -> usize {
    (content_id + 1) as usize
}

impl TestCluster {
    /// Starts a coordinator and `segments` segments. `storage_toml` is a
    /// `[storage]` section (default: a filesystem repository in the dir).
    pub fn start(name: &str, segments: usize, storage_toml: Option<&str>) -> TestCluster {
        TestCluster::start_with(name, segments, storage_toml, false)
    }

    /// Like [`TestCluster::start`]; with `stream_wal`, the instances do not
    /// archive: their agents stream the WAL through replication slots.
    pub fn start_with(
        name: &str,
        segments: usize,
        storage_toml: Option<&str>,
        stream_wal: bool,
    ) -> TestCluster {
        TestCluster::start_opts(
            name,
            segments,
            storage_toml,
            ClusterOpts {
                stream_wal,
                ..ClusterOpts::default()
            },
        )
    }

    /// Like [`TestCluster::start`], with more options.
    pub fn start_opts(
        name: &str,
        segments: usize,
        storage_toml: Option<&str>,
        opts: ClusterOpts,
    ) -> TestCluster {
        let stream_wal = opts.stream_wal;
        // The config is finished (and the repository made) once the
        // servers' ports and data directories are known.
        let builder = CbdrEnv::builder(name);
        let builder = if opts.s3 {
            builder.storage(super::Storage::S3(String::new()))
        } else {
            builder.storage_toml(storage_toml)
        };
        let env = builder.key(Key::Raw(KEY_HEX.into())).init(false).build();
        let config = env.config.clone();
        let mut servers: Vec<PgServer> = (0..=segments)
            .map(|i| {
                let archive = if stream_wal {
                    "archive_mode = off".to_string()
                } else {
                    format!(
                        "archive_mode = on\narchive_command = '{} --content-id {}'",
                        env.archive_command(),
                        i as i32 - 1
                    )
                };
                let mut b = PgServer::builder()
                    .initdb_arg("--wal-segsize=1")
                    .conf(archive)
                    .conf("max_prepared_transactions = 20")
                    .conf("max_wal_size = '256MB'");
                for line in &opts.conf {
                    b = b.conf(line.clone());
                }
                b.init()
            })
            .collect();
        let agent_ports: Vec<u16> = (0..=segments).map(|_| free_port()).collect();
        let token = env.write("agent.token", &format!("{AGENT_TOKEN}\n"));
        fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let mut text = format!(
            "\n[cluster]\nuser = \"postgres\"\nbarrier_lock_key = {BARRIER_KEY}\nagent_timeout = 15\n{}",
            opts.cluster_toml
        );
        for (i, s) in servers.iter().enumerate() {
            text.push_str(&format!(
                "\n[[cluster.segments]]\ncontent_id = {}\nhost = \"127.0.0.1\"\nport = {}\ndata_dir = \"{}\"\nagent = \"127.0.0.1:{}\"\n",
                i as i32 - 1,
                s.port(),
                s.data_dir().display(),
                agent_ports[i]
            ));
        }
        text.push_str(&format!(
            "\n[agent]\ntoken_file = \"{}\"\n",
            token.display()
        ));
        env.append_toml(&text);
        env.init_repo();
        for s in &mut servers {
            s.start();
        }
        let agents = (0..=segments).map(|_| None).collect();
        TestCluster {
            env,
            config,
            servers,
            agent_ports,
            agents,
            stream_wal,
        }
    }

    pub fn coordinator(&self) -> &PgServer {
        &self.servers[0]
    }

    pub fn segment_count(&self) -> usize {
        self.servers.len() - 1
    }

    /// Runs `cbdr --config … ARGS` as the PostgreSQL OS user.
    pub fn cbdr(&self, args: &[&str]) -> (i32, String, String) {
        self.cbdr_with(&self.config, args)
    }

    /// Runs `cbdr --config CONFIG ARGS` as the PostgreSQL OS user.
    pub fn cbdr_with(&self, config: &Path, args: &[&str]) -> (i32, String, String) {
        self.env
            .with_config(config)
            .pg_port(self.coordinator().port())
            .run(args)
            .parts()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.env.on(self.coordinator()).ok(args)
    }

    /// Starts the agent of instance `i` (index in `servers`), as the
    /// PostgreSQL OS user, and waits until it accepts connections.
    pub fn start_agent(&mut self, i: usize) {
        let addr = format!("127.0.0.1:{}", self.agent_ports[i]);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.agent_log(i))
            .unwrap();
        let mut cmd = pg_command(CBDR);
        cmd.arg("--config")
            .arg(&self.config)
            .args(["-v", "agent", "--listen", &addr]);
        if self.stream_wal {
            cmd.arg("--stream-wal").arg((i as i32 - 1).to_string());
        }
        let child = cmd
            .env("PGUSER", "postgres")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start cbdr agent");
        self.agents[i] = Some(child);
        super::wait_for(
            &format!("agent {addr} to start"),
            Duration::from_secs(20),
            || match TcpStream::connect(&addr) {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("{e}\n{}", self.agent_log_text(i))),
            },
        );
    }

    pub fn start_agents(&mut self) {
        for i in 0..self.servers.len() {
            self.start_agent(i);
        }
    }

    /// Kills the agent of instance `i` (SIGKILL: no goodbye).
    pub fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].take() {
            // runuser forwards signals poorly: kill the whole process tree.
            kill_tree(c.id());
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` to the agent of instance `i` (and runuser around it).
    pub fn signal_agent(&self, i: usize, signal: i32) {
        if let Some(c) = &self.agents[i] {
            signal_tree(c.id(), signal);
        }
    }

    pub fn agent_log(&self, i: usize) -> PathBuf {
        self.env.path(format!("agent{i}.log"))
    }

    pub fn agent_log_text(&self, i: usize) -> String {
        fs::read_to_string(self.agent_log(i)).unwrap_or_default()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.env.path(name)
    }

    /// Writes a restore config placing every instance in `dir/<name>/segN`
    /// on new free ports; returns its path and the ports (by index).
    pub fn restore_config(&self, name: &str) -> (PathBuf, Vec<u16>) {
        let base = self.path(name);
        fs::create_dir_all(&base).unwrap();
        chown_to_pg(&base);
        let mut text = String::new();
        let mut ports = Vec::new();
        for i in 0..self.servers.len() {
            let port = free_port();
            ports.push(port);
            text.push_str(&format!(
                "[[segments]]\ncontent_id = {}\nhost = \"127.0.0.1\"\nport = {port}\ndata_dir = \"{}\"\n\n",
                i as i32 - 1,
                base.join(format!("seg{}", i as i32 - 1)).display()
            ));
        }
        let path = base.join("restore.toml");
        fs::write(&path, text).unwrap();
        chown_to_pg(&path);
        (path, ports)
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for i in 0..self.agents.len() {
            self.kill_agent(i);
        }
    }
}

fn kill_tree(pid: u32) {
    signal_tree(pid, libc::SIGKILL);
}

fn signal_tree(pid: u32, signal: i32) {
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for c in children
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
    {
        signal_tree(c, signal);
    }
    // SAFETY: sending a signal has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Stops a restored server left running in `data_dir` (by the agent's
/// `--start`), fast; ignores errors.
pub fn stop_data_dir(data_dir: &Path) {
    let _ = pg_command(super::pg::pg_bin("pg_ctl"))
        .args(["stop", "-m", "immediate", "-D"])
        .arg(data_dir)
        .output();
}
