//! One cbdr test environment (after ripgrep's `tests/util.rs`): a
//! directory the PostgreSQL OS user owns, a config file with one storage
//! and one key, a repository made by `cbdr repo-init`, and a command
//! runner ([`Cmd`]) with `run`/`ok`/`json`/`refused`.
//!
//! ```ignore
//! let env = CbdrEnv::builder("wal").storage(Storage::S3(String::new())).build();
//! let server = env.archiving_server().start();
//! env.on(&server).ok(&["backup-push"]);
//! let listing = env.json(&["list", "--json"]);
//! env.refused(&["wal-fetch", "nope", "/tmp/x"], 1, &["not archived"]);
//! ```

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use super::garage::{self, S3Target};
use super::pg::{chown_to_pg, pg_command, pg_user_dir, PgBuilder, PgServer};

pub const CBDR: &str = env!("CARGO_BIN_EXE_cbdr");

/// `impl Deref<Target = CbdrEnv>` for a test file's own wrapper of the
/// environment: `deref_env!(Setup)` for `struct Setup(CbdrEnv)`,
/// `deref_env!(Setup, env)` for a struct whose field `env` holds it.
#[macro_export]
macro_rules! deref_env {
    ($t:ty) => {
        $crate::deref_env!($t, 0);
    };
    ($t:ty, $field:tt) => {
        impl std::ops::Deref for $t {
            type Target = $crate::common::CbdrEnv;
            fn deref(&self) -> &Self::Target {
                &self.$field
            }
        }
    };
}

/// Where the repository lives.
#[derive(Clone, Debug)]
pub enum Storage {
    /// A filesystem repository in `DIR/repo`.
    Fs,
    /// A fresh Garage bucket (named after the environment), under this key
    /// prefix ("" = the bucket root).
    S3(String),
    /// A `[storage]` section written as given.
    Toml(String),
}

/// The `[encryption]` key.
#[derive(Clone, Debug)]
pub enum Key {
    /// 64 hex digits in the key file.
    Raw(String),
    /// A passphrase in the key file.
    Passphrase(String),
    /// No `[encryption]` section.
    None,
}

/// What a cbdr run gave back.
#[derive(Clone, Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// `(code, stdout, stderr)`.
    pub fn parts(self) -> (i32, String, String) {
        (self.code, self.stdout, self.stderr)
    }

    /// The output of a finished cbdr child.
    pub fn of(out: std::process::Output) -> Output {
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Options for a [`CbdrEnv`]; finish with [`CbdrEnvBuilder::build`].
pub struct CbdrEnvBuilder {
    name: String,
    storage: Storage,
    key: Key,
    key_file: String,
    config_file: String,
    wal_segment_size: Option<u64>,
    extra: String,
    init: bool,
    pg_owned: bool,
}

impl CbdrEnvBuilder {
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// `Some(toml)`: that `[storage]` section; `None`: [`Storage::Fs`].
    pub fn storage_toml(self, toml: Option<impl Into<String>>) -> Self {
        match toml {
            Some(t) => self.storage(Storage::Toml(t.into())),
            None => self.storage(Storage::Fs),
        }
    }

    pub fn key(mut self, key: Key) -> Self {
        self.key = key;
        self
    }

    /// Names of the key file and the config file in the directory
    /// (default `key` and `cbdr.toml`).
    pub fn file_names(mut self, key_file: &str, config_file: &str) -> Self {
        self.key_file = key_file.into();
        self.config_file = config_file.into();
        self
    }

    /// `[archive] wal_segment_size` (default 1 MiB); `None` leaves the
    /// section out.
    pub fn wal_segment_size(mut self, size: Option<u64>) -> Self {
        self.wal_segment_size = size;
        self
    }

    /// More config text, appended after the storage, key and archive
    /// sections.
    pub fn extra_toml(mut self, toml: impl AsRef<str>) -> Self {
        self.extra.push_str(toml.as_ref());
        if !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    /// Whether to run `cbdr repo-init` (default true).
    pub fn init(mut self, init: bool) -> Self {
        self.init = init;
        self
    }

    /// A plain temp dir of the test's own user, and cbdr run as that user
    /// (default: the PostgreSQL OS user owns the dir and runs cbdr).
    pub fn own_user(mut self) -> Self {
        self.pg_owned = false;
        self
    }

    pub fn build(self) -> CbdrEnv {
        let dir = if self.pg_owned {
            pg_user_dir(&self.name)
        } else {
            tempfile::Builder::new()
                .prefix(&format!("cbdr-{}-", self.name))
                .tempdir()
                .unwrap()
        };
        let mut s3 = None;
        let storage = match &self.storage {
            Storage::Fs => fs_storage(&dir.path().join("repo")),
            Storage::S3(prefix) => {
                let t = garage::bucket(&self.name);
                let toml = t.config_toml(prefix);
                s3 = Some(t);
                toml
            }
            Storage::Toml(t) => t.clone(),
        };
        let mut rest = String::new();
        if let Some(size) = self.wal_segment_size {
            rest.push_str(&format!("[archive]\nwal_segment_size = {size}\n"));
        }
        rest.push_str(&self.extra);
        let (text, key_file) = config_text(dir.path(), &storage, &self.key, &self.key_file, &rest);
        let config = dir.path().join(&self.config_file);
        fs::write(&config, text).unwrap();
        if self.pg_owned {
            chown_to_pg(dir.path());
        }
        let env = CbdrEnv {
            dir,
            config,
            key_file,
            s3,
            pg_owned: self.pg_owned,
        };
        if self.init {
            env.init_repo();
        }
        env
    }
}

/// A config file's text: `storage`, the `[encryption]` of `key` (written
/// to `dir/key_file`), then `rest`; and the key file's path.
fn config_text(
    dir: &Path,
    storage: &str,
    key: &Key,
    key_file: &str,
    rest: &str,
) -> (String, Option<PathBuf>) {
    let mut text = storage.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let key_file = match key {
        Key::Raw(k) | Key::Passphrase(k) => {
            let path = dir.join(key_file);
            fs::write(&path, format!("{k}\n")).unwrap();
            text.push_str(&format!(
                "[encryption]\nkey_file = \"{}\"\n",
                path.display()
            ));
            Some(path)
        }
        Key::None => None,
    };
    text.push_str(rest);
    (text, key_file)
}

/// A directory with a cbdr config (see the module doc).
pub struct CbdrEnv {
    pub dir: TempDir,
    pub config: PathBuf,
    pub key_file: Option<PathBuf>,
    /// The bucket of [`Storage::S3`].
    pub s3: Option<S3Target>,
    pg_owned: bool,
}

impl CbdrEnv {
    /// Defaults: [`Storage::Fs`], no key, 1 MiB WAL segments, repo-init.
    pub fn builder(name: &str) -> CbdrEnvBuilder {
        CbdrEnvBuilder {
            name: name.trim_start_matches("cbdr-").to_string(),
            storage: Storage::Fs,
            key: Key::None,
            key_file: "key".into(),
            config_file: "cbdr.toml".into(),
            wal_segment_size: Some(1_048_576),
            extra: String::new(),
            init: true,
            pg_owned: true,
        }
    }

    pub fn path(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The filesystem repository of [`Storage::Fs`].
    pub fn repo(&self) -> PathBuf {
        self.path("repo")
    }

    /// Writes `text` to `name` in the directory, owned like the directory.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, text).unwrap();
        if self.pg_owned {
            chown_to_pg(&path);
        }
        path
    }

    /// Another config in the directory: `NAME.toml` with `storage`, `key`
    /// (in `NAME.key`) and `rest`, owned like the directory.
    pub fn write_config(&self, name: &str, storage: &str, key: Key, rest: &str) -> PathBuf {
        let (text, key_file) =
            config_text(self.dir.path(), storage, &key, &format!("{name}.key"), rest);
        if let (Some(k), true) = (key_file, self.pg_owned) {
            chown_to_pg(&k);
        }
        self.write(&format!("{name}.toml"), &text)
    }

    /// The `[storage]` section of the filesystem repository [`Self::repo`].
    pub fn fs_storage(&self) -> String {
        fs_storage(&self.repo())
    }

    /// Appends `toml` to the config (for sections that need what was made
    /// after the environment, e.g. the ports of servers archiving into it).
    pub fn append_toml(&self, toml: &str) {
        let mut text = fs::read_to_string(&self.config).unwrap();
        text.push_str(toml);
        fs::write(&self.config, text).unwrap();
    }

    /// `cbdr repo-init` (when built with `init(false)`).
    pub fn init_repo(&self) {
        super::init_repo(CBDR, &self.config);
    }

    /// `cbdr --config CONFIG wal-push %p`, for archive_command.
    pub fn archive_command(&self) -> String {
        format!("{CBDR} --config {} wal-push %p", self.config.display())
    }

    /// A server with 1 MiB WAL segments archiving into this repository
    /// (add settings, then `.start()`).
    pub fn archiving_server(&self) -> PgBuilder {
        PgServer::builder()
            .initdb_arg("--wal-segsize=1")
            .conf("archive_mode = on")
            .conf(format!("archive_command = '{}'", self.archive_command()))
    }

    /// A quiet moment on `server` (nothing else writing): a restore point
    /// `name`, then the LSN and the time after it, a second apart, and a
    /// dump: every restore to the point, the LSN or the time gives that dump.
    pub fn quiet_point(&self, server: &PgServer, name: &str) -> QuietPoint {
        self.on(server).ok(&["create-restore-point", name]);
        let lsn = server.psql("select pg_current_wal_lsn()");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let time = server.psql("select now()");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        QuietPoint {
            lsn,
            time,
            dump: server.dump(),
        }
    }

    /// A runner with this environment's config and no PostgreSQL env.
    pub fn cmd(&self) -> Cmd {
        let mut cmd = Cmd::new(&self.config);
        cmd.pg_owned = self.pg_owned;
        cmd
    }

    /// A runner whose PGHOST/PGPORT/PGUSER name `server`.
    pub fn on(&self, server: &PgServer) -> Cmd {
        self.cmd().pg_port(server.port())
    }

    /// A runner with another config file.
    pub fn with_config(&self, config: &Path) -> Cmd {
        self.cmd().config(config)
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().run(args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.cmd().ok(args)
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        self.cmd().json(args)
    }

    pub fn refused(&self, args: &[&str], code: i32, needles: &[&str]) -> String {
        self.cmd().refused(args, code, needles)
    }

    /// The backups of content `content_id` that `list --json` shows.
    pub fn backups_of(&self, content_id: i32) -> Vec<serde_json::Value> {
        let id = content_id.to_string();
        self.json(&["list", "--json", "--content-id", &id])["segments"][0]["backups"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The names of the backups of content -1, oldest first.
    pub fn backup_names(&self) -> Vec<String> {
        backup_names(&self.backups_of(-1))
    }

    /// Every object key in the repository (any storage), sorted.
    pub fn object_keys(&self) -> Vec<String> {
        let config = cbdr::config::Config::load(&self.config).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let storage: Box<dyn cbdr::storage::Storage> = match config.storage.kind {
                cbdr::config::StorageType::Fs => {
                    Box::new(cbdr::storage::FsStorage::open(&config.storage.path))
                }
                cbdr::config::StorageType::S3 => Box::new(
                    cbdr::storage::S3Storage::new(&config.storage)
                        .await
                        .unwrap(),
                ),
            };
            storage
                .list("")
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect()
        })
    }
}

/// The `[storage]` section of a filesystem repository at `repo`.
pub fn fs_storage(repo: &Path) -> String {
    format!("[storage]\npath = \"{}\"\n", repo.display())
}

/// The `name` of each listed backup.
pub fn backup_names(backups: &[serde_json::Value]) -> Vec<String> {
    backups
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

/// One way to run cbdr: a config, the OS user, environment variables.
#[derive(Clone, Debug)]
pub struct Cmd {
    /// The cbdr binary ([`CBDR`] unless [`Cmd::binary`]).
    binary: PathBuf,
    config: PathBuf,
    pg_owned: bool,
    envs: Vec<(OsString, Option<OsString>)>,
    current_dir: Option<PathBuf>,
}

impl Cmd {
    /// `cbdr --config CONFIG` as the PostgreSQL OS user, without an
    /// environment around it.
    pub fn new(config: &Path) -> Cmd {
        Cmd {
            binary: PathBuf::from(CBDR),
            config: config.to_path_buf(),
            pg_owned: true,
            envs: Vec::new(),
            current_dir: None,
        }
    }

    pub fn config(mut self, config: &Path) -> Self {
        self.config = config.to_path_buf();
        self
    }

    /// Another cbdr binary (a bench's copy of the one it measures).
    pub fn binary(mut self, binary: &Path) -> Self {
        self.binary = binary.to_path_buf();
        self
    }

    /// PGHOST=127.0.0.1, PGPORT=`port`, PGUSER=postgres.
    pub fn pg_port(self, port: u16) -> Self {
        self.env("PGHOST", "127.0.0.1")
            .env("PGPORT", port.to_string())
            .env("PGUSER", "postgres")
    }

    /// PGHOST/PGPORT/PGUSER for `server`, when there is one.
    pub fn pg(self, server: Option<&PgServer>) -> Self {
        match server {
            Some(s) => self.pg_port(s.port()),
            None => self,
        }
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), Some(value.into())));
        self
    }

    pub fn env_remove(mut self, key: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), None));
        self
    }

    /// Runs cbdr as the test's own user, not the PostgreSQL OS user (so
    /// that a signal to the child reaches cbdr itself).
    pub fn own_user(mut self) -> Self {
        self.pg_owned = false;
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.current_dir = Some(dir.to_path_buf());
        self
    }

    /// The `Command` (`cbdr --config CONFIG ARGS`), to spawn or change.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = if self.pg_owned {
            pg_command(&self.binary)
        } else {
            Command::new(&self.binary)
        };
        cmd.arg("--config").arg(&self.config).args(args);
        for (k, v) in &self.envs {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        if let Some(d) = &self.current_dir {
            cmd.current_dir(d);
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Output::of(
            self.command(args)
                .output()
                .unwrap_or_else(|e| panic!("run cbdr {args:?}: {e}")),
        )
    }

    /// Runs, asserts exit 0 (stderr in the message), returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.code, 0,
            "cbdr {args:?} exited {}:\n{}\n{}",
            out.code, out.stdout, out.stderr
        );
        out.stdout
    }

    /// [`Cmd::ok`], stdout parsed as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("cbdr {args:?}: not JSON ({e}): {out}"))
    }

    /// Runs, asserts exit `code` and every needle in stderr; returns stderr.
    pub fn refused(&self, args: &[&str], code: i32, needles: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.code, code,
            "cbdr {args:?}: exit {} (want {code}):\n{}\n{}",
            out.code, out.stdout, out.stderr
        );
        for n in needles {
            assert!(
                out.stderr.contains(n),
                "cbdr {args:?}: expected {n:?} in: {}",
                out.stderr
            );
        }
        out.stderr
    }
}

/// What [`CbdrEnv::quiet_point`] recorded.
pub struct QuietPoint {
    pub lsn: String,
    pub time: String,
    pub dump: String,
}
