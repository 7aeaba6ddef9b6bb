//! The configuration file (TOML).
//!
//! Looked up as `--config PATH`, else `$CBDR_CONFIG`, else `./cbdr.toml`,
//! else `/etc/cbdr/cbdr.toml`; with none of them, the defaults (a local
//! filesystem repository, lz4, no encryption). `config-templates/cbdr.toml`
//! documents every key. Unknown keys and bad values are refused with the key
//! and what is allowed.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::codec::Compression;

pub use crate::storage::config::{StorageConfig, StorageType, DEFAULT_REPO_PATH};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub compression: CompressionConfig,
    #[serde(default)]
    pub encryption: EncryptionConfig,
    #[serde(default)]
    pub archive: ArchiveConfig,
    #[serde(default)]
    pub backup: BackupConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub logical: LogicalConfig,
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Where the config came from, for messages (not a TOML key).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    #[serde(default = "default_method")]
    pub method: Compression,
    /// Method-specific level; absent = the method's fast default.
    pub level: Option<i32>,
    /// Where base backups are compressed.
    #[serde(default)]
    pub compress_on: CompressOn,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig {
            method: default_method(),
            level: None,
            compress_on: CompressOn::default(),
        }
    }
}

/// Where a base backup is compressed (WAL is always compressed by cbdr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressOn {
    /// The server (PostgreSQL 15+, lz4 or zstd) when the data compresses
    /// well, else cbdr: see `physical::backup::choose_compress_on`.
    #[default]
    Auto,
    /// PostgreSQL compresses (`BASE_BACKUP (COMPRESSION ...)`), cbdr
    /// encrypts and stores; PostgreSQL 15+ with lz4 or zstd only.
    Server,
    /// cbdr receives the plain tar and compresses it on every core.
    Client,
}

/// `[retention]`: applied after each successful `backup-push` (a failed
/// pass is logged, never fatal to the backup). With both keys, a backup
/// goes only when neither keeps it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Keep this many full backups (and what is newer) per series.
    pub full: Option<u32>,
    /// Keep every backup that finished in the last `days` days.
    pub days: Option<u32>,
}

/// `[logical] copy_format`: binary where every column allows it, or text
/// always.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyFormatChoice {
    #[default]
    Auto,
    Text,
}

/// `[backup]`: base backups.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// Deltas in a row before `backup-push` takes a full backup again; 0
    /// (the default): `backup-push` takes full backups, `--delta` allows
    /// up to 6 in a row.
    #[serde(default)]
    pub delta_max_steps: u32,
}

/// `[logical]`: gpbackup/gprestore.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogicalConfig {
    /// `auto`: COPY's binary format for tables whose columns all have
    /// built-in types with a stable binary form (much cheaper for the
    /// server to load), text for the others; `text`: text always.
    #[serde(default)]
    pub copy_format: CopyFormatChoice,
    /// Bytes of a large object read, stored and written per chunk (1 KiB to
    /// 64 MiB, default 256 KiB): what a backup or restore holds of one
    /// large object at a time.
    #[serde(default = "default_large_object_chunk")]
    pub large_object_chunk: u64,
}

fn default_large_object_chunk() -> u64 {
    crate::logical::large_objects::DEFAULT_CHUNK
}

impl Default for LogicalConfig {
    fn default() -> LogicalConfig {
        LogicalConfig {
            copy_format: CopyFormatChoice::default(),
            large_object_chunk: default_large_object_chunk(),
        }
    }
}

fn default_method() -> Compression {
    Compression::Lz4
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// File holding the key: 64 hex characters = a raw 256-bit key, anything
    /// else = a passphrase. `$CBDR_ENCRYPTION_KEY` is used when absent.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// WAL files `wal-push` uploads at once (the one asked for plus the next
    /// `.ready` ones).
    #[serde(default = "default_push_concurrency")]
    pub push_concurrency: usize,
    /// WAL files `wal-fetch` downloads at once (the one asked for plus the
    /// next ones, kept in a prefetch directory).
    #[serde(default = "default_fetch_concurrency")]
    pub fetch_concurrency: usize,
    /// WAL segment size in bytes, used to name the segments `wal-fetch`
    /// prefetches: 16 MiB for PostgreSQL, 64 MiB for Greenplum/Cloudberry.
    #[serde(default = "default_wal_segment_size")]
    pub wal_segment_size: u64,
    /// Seconds `wal-fetch` keeps retrying a storage that fails or cannot be
    /// reached (and waits for a segment missing before a later one) before
    /// it stops recovery. Never 0: recovery must not end on a passing
    /// outage.
    #[serde(default = "default_fetch_retry_budget")]
    pub fetch_retry_budget: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            push_concurrency: default_push_concurrency(),
            fetch_concurrency: default_fetch_concurrency(),
            wal_segment_size: default_wal_segment_size(),
            fetch_retry_budget: default_fetch_retry_budget(),
        }
    }
}

fn default_push_concurrency() -> usize {
    4
}
fn default_fetch_concurrency() -> usize {
    4
}
fn default_wal_segment_size() -> u64 {
    crate::pg::DEFAULT_WAL_SEGMENT_SIZE
}
fn default_fetch_retry_budget() -> u64 {
    300
}

/// What kind of cluster `[cluster]` describes: it decides where the
/// topology comes from when no segments are listed, and the restore point
/// barrier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterKind {
    /// Greenplum/Cloudberry when the coordinator has `gp_create_restore_point`,
    /// Citus when it has the `citus` extension, else plain PostgreSQL servers.
    #[default]
    Auto,
    /// Plain PostgreSQL servers with two-phase commit (the advisory-lock barrier).
    Postgres,
    /// Greenplum or Cloudberry (`gp_segment_configuration`, `gp_create_restore_point`).
    Greenplum,
    /// Citus (`pg_dist_node`, `citus_create_restore_point`).
    Citus,
}

/// `[cluster]`: the instances of an MPP cluster (or of a group of plain
/// PostgreSQL servers backed up together). With no segments listed, a
/// Greenplum/Cloudberry coordinator's `gp_segment_configuration` (or a Citus
/// coordinator's `pg_dist_node`) is used.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The kind of cluster (default: found from the coordinator).
    #[serde(default)]
    pub kind: ClusterKind,
    /// Advisory lock key of the generic-cluster commit barrier: writers that
    /// commit across servers hold `pg_advisory_xact_lock_shared(K)` on the
    /// coordinator around `COMMIT PREPARED`; restore points take it exclusive.
    #[serde(default = "default_barrier_lock_key")]
    pub barrier_lock_key: i64,
    /// Seconds without a message from an agent before the coordinator gives
    /// up on it (agents send a heartbeat every few seconds while working).
    #[serde(default = "default_agent_timeout")]
    pub agent_timeout: u64,
    /// Database the coordinator and agents connect to for SQL.
    #[serde(default = "default_cluster_database")]
    pub database: String,
    /// Role used to connect to the instances (absent: $PGUSER, else the OS user).
    pub user: Option<String>,
    /// With no segments listed: read them from the Greenplum/Cloudberry
    /// coordinator's gp_segment_configuration, or with `kind = "citus"` from
    /// the Citus coordinator's pg_dist_node (libpq's PGHOST/PGPORT reach it).
    #[serde(default)]
    pub discover: bool,
    /// Port of the agents of discovered segments.
    #[serde(default = "default_agent_port")]
    pub agent_port: u16,
    #[serde(default)]
    pub segments: Vec<SegmentConfig>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            kind: ClusterKind::Auto,
            barrier_lock_key: default_barrier_lock_key(),
            agent_timeout: default_agent_timeout(),
            database: default_cluster_database(),
            user: None,
            discover: false,
            agent_port: default_agent_port(),
            segments: Vec::new(),
        }
    }
}

fn default_barrier_lock_key() -> i64 {
    7300
}
fn default_agent_timeout() -> u64 {
    60
}
fn default_agent_port() -> u16 {
    7070
}
fn default_cluster_database() -> String {
    "postgres".into()
}

/// `[[cluster.segments]]`: one instance; content id -1 is the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentConfig {
    pub content_id: i32,
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// The agent serving this instance, `host:port`.
    pub agent: Option<String>,
}

/// `[agent]`: how agents listen and how callers authenticate to them.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Address `cbdr agent` listens on (default 0.0.0.0:7070).
    pub listen: Option<String>,
    /// File holding the shared token (else `token`, else $CBDR_AGENT_TOKEN).
    pub token_file: Option<PathBuf>,
    pub token: Option<String>,
    /// TLS: the agent's certificate chain and key (PEM). With them, the
    /// control connection is TLS.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) the coordinator checks agent certificates against.
    pub tls_ca: Option<PathBuf>,
    /// CA (PEM) the agent checks client certificates against: set it for
    /// mutual TLS (callers must then present a certificate signed by it).
    pub tls_client_ca: Option<PathBuf>,
    /// The coordinator's client certificate and key for mutual TLS.
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// Content ids whose WAL this agent streams into the repository through
    /// a physical replication slot (instances from [[cluster.segments]]).
    #[serde(default)]
    pub stream_wal: Vec<i32>,
    /// Slot names are `{prefix}_seg{N}` (`{prefix}_coordinator` for -1).
    pub wal_slot_prefix: Option<String>,
    /// Seconds a caller has to complete TLS and authentication (default 10).
    pub handshake_timeout: Option<u64>,
    /// Seconds a write to a caller may wait for it to read (default 30):
    /// a caller that stops reading is dropped and its job aborted.
    pub write_timeout: Option<u64>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("listen", &self.listen)
            .field("token_file", &self.token_file)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls_cert", &self.tls_cert)
            .field("tls_ca", &self.tls_ca)
            .field("tls_client_ca", &self.tls_client_ca)
            .field("stream_wal", &self.stream_wal)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("write_timeout", &self.write_timeout)
            .finish()
    }
}

impl Config {
    /// Finds and loads the config file: `explicit`, else `$CBDR_CONFIG`, else
    /// `./cbdr.toml`, else `/etc/cbdr/cbdr.toml`, else the defaults.
    pub fn discover(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(path) = explicit {
            return Config::load(path);
        }
        if let Some(path) = std::env::var_os("CBDR_CONFIG").filter(|p| !p.is_empty()) {
            return Config::load(Path::new(&path));
        }
        for candidate in ["cbdr.toml", "/etc/cbdr/cbdr.toml"] {
            let path = Path::new(candidate);
            if path.exists() {
                return Config::load(path);
            }
        }
        Ok(Config::default())
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            ConfigError::Invalid { key, message, .. } => ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                message,
            },
            other => other,
        })?;
        config.source = Some(path.to_path_buf());
        config.check_paths()?;
        Ok(config)
    }

    /// Checks the paths a config file names that cbdr reads or writes
    /// first thing, so that a wrong one is a config error naming its key
    /// (exit 2), not a storage failure further on.
    fn check_paths(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: self.source.clone().unwrap_or_default(),
            key,
            message,
        };
        let repo = &self.storage.path;
        if self.storage.kind == StorageType::Fs
            && std::fs::metadata(repo).is_ok_and(|m| !m.is_dir())
        {
            return Err(invalid(
                "storage.path",
                format!(
                    "{} is a file, not a directory: set storage.path to the repository's directory",
                    repo.display()
                ),
            ));
        }
        if let Some(key) = &self.encryption.key_file {
            if let Err(e) = std::fs::File::open(key) {
                return Err(invalid(
                    "encryption.key_file",
                    format!(
                        "cannot read {}: {e}: fix the path, or make the file readable by the user cbdr runs as (for archive_command, the PostgreSQL server's user)",
                        key.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Parses and validates TOML text (the path in errors is `<text>`).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: self
                .source
                .clone()
                .unwrap_or_else(|| PathBuf::from("<text>")),
            key,
            message,
        };
        self.storage
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        if self.retention.full == Some(0) {
            return Err(invalid(
                "retention.full",
                "0 would delete every backup after each backup-push: give at least 1, or leave the key out".into(),
            ));
        }
        if self.retention.days == Some(0) {
            return Err(invalid(
                "retention.days",
                "0 would keep no backup by age: give at least 1, or leave the key out".into(),
            ));
        }
        if let Some(level) = self.compression.level {
            let range = self.compression.method.level_range();
            if !range.contains(&level) {
                return Err(invalid(
                    "compression.level",
                    format!(
                        "{level} is out of range for {}: use {} to {}",
                        self.compression.method.name(),
                        range.start(),
                        range.end()
                    ),
                ));
            }
        }
        if self.compression.compress_on == CompressOn::Server
            && !matches!(
                self.compression.method,
                Compression::Lz4 | Compression::Zstd
            )
        {
            return Err(invalid(
                "compression.compress_on",
                format!(
                    "\"server\" needs method lz4 or zstd (PostgreSQL does not compress with {}): use compress_on = \"client\" or \"auto\"",
                    self.compression.method.name()
                ),
            ));
        }
        {
            use crate::logical::large_objects::{MAX_CHUNK, MIN_CHUNK};
            let chunk = self.logical.large_object_chunk;
            if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk) {
                return Err(invalid(
                    "logical.large_object_chunk",
                    format!("{chunk} is out of range: use {MIN_CHUNK} to {MAX_CHUNK} (bytes)"),
                ));
            }
        }
        for (key, value) in [
            ("archive.push_concurrency", self.archive.push_concurrency),
            ("archive.fetch_concurrency", self.archive.fetch_concurrency),
        ] {
            if value == 0 || value > 64 {
                return Err(invalid(
                    key,
                    format!("{value} is out of range: use 1 to 64"),
                ));
            }
        }
        let seg = self.archive.wal_segment_size;
        if !seg.is_power_of_two() || !(1 << 20..=1 << 30).contains(&seg) {
            return Err(invalid(
                "archive.wal_segment_size",
                format!("{seg} is not a WAL segment size: use a power of two from 1048576 (1 MiB) to 1073741824 (1 GiB)"),
            ));
        }
        let budget = self.archive.fetch_retry_budget;
        if budget == 0 || budget > 86_400 {
            return Err(invalid(
                "archive.fetch_retry_budget",
                format!("{budget} is out of range: use 1 to 86400 seconds (0 would let a passing storage outage end recovery early; the default is 300)"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_parses_and_states_the_defaults() {
        let template = Config::parse(include_str!("../config-templates/cbdr.toml")).unwrap();
        assert_eq!(format!("{template:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn empty_config_gives_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.storage.kind, StorageType::Fs);
        assert_eq!(c.storage.path, PathBuf::from(DEFAULT_REPO_PATH));
        assert_eq!(c.compression.method, Compression::Lz4);
        assert_eq!(c.archive.push_concurrency, 4);
    }

    #[test]
    fn full_s3_config_parses() {
        let c = Config::parse(
            r#"
            [storage]
            type = "s3"
            bucket = "b"
            prefix = "cluster1"
            endpoint = "http://127.0.0.1:3900"
            region = "garage"
            force_path_style = true
            access_key_id = "GK1"
            secret_access_key = "secret"
            part_size = 8388608
            [compression]
            method = "zstd"
            level = 3
            [encryption]
            key_file = "/etc/cbdr/key"
            [archive]
            push_concurrency = 8
            "#,
        )
        .unwrap();
        assert_eq!(c.storage.kind, StorageType::S3);
        assert_eq!(c.storage.bucket.as_deref(), Some("b"));
        assert_eq!(c.storage.part_size, 8 * 1024 * 1024);
        assert_eq!(c.compression.level, Some(3));
        assert_eq!(c.archive.push_concurrency, 8);
        let debug = format!("{c:?}");
        assert!(!debug.contains("secret\""), "secret leaked: {debug}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("[storage]\npaht = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("paht"), "{e}");
    }

    #[test]
    fn a_repository_path_that_is_a_file_or_a_missing_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let config = dir.path().join("cbdr.toml");
        let load = |text: String| {
            std::fs::write(&config, text).unwrap();
            Config::load(&config)
        };
        let e = load(format!(
            "[storage]\npath = {:?}\n",
            file.display().to_string()
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("storage.path") && e.contains("is a file"), "{e}");
        assert!(e.contains(&config.display().to_string()), "{e}");
        let missing = dir.path().join("no-key");
        let e = load(format!(
            "[storage]\npath = {:?}\n[encryption]\nkey_file = {:?}\n",
            dir.path().join("repo").display().to_string(),
            missing.display().to_string()
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("encryption.key_file") && e.contains("no-key") && e.contains("fix the path"),
            "{e}"
        );
        // A directory that does not exist yet is not this check's concern.
        load(format!(
            "[storage]\npath = {:?}\n",
            dir.path().join("repo").display().to_string()
        ))
        .unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("[compression]\nmethod = \"gzip\"\n", "gzip"),
            (
                "[compression]\nmethod = \"zstd\"\nlevel = 99\n",
                "compression.level",
            ),
            (
                "[compression]\nmethod = \"brotli\"\ncompress_on = \"server\"\n",
                "compression.compress_on",
            ),
            ("[compression]\ncompress_on = \"postgres\"\n", "postgres"),
            ("[storage]\ntype = \"s3\"\n", "storage.bucket"),
            ("[storage]\ntype = \"ftp\"\n", "ftp"),
            (
                "[storage]\ntype = \"s3\"\nbucket = \"b\"\nsse = \"rot13\"\n",
                "storage.sse",
            ),
            ("[storage]\npart_size = 1024\n", "storage.part_size"),
            (
                "[archive]\npush_concurrency = 0\n",
                "archive.push_concurrency",
            ),
            (
                "[archive]\nwal_segment_size = 1000\n",
                "archive.wal_segment_size",
            ),
            (
                "[archive]\nfetch_retry_budget = 0\n",
                "archive.fetch_retry_budget",
            ),
        ];
        for (text, needle) in cases {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
