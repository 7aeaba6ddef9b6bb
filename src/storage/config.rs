//! `[storage]`: where the repository is, and the limits of each backend.

use std::path::PathBuf;

use serde::Deserialize;

/// The default repository directory when no storage is configured.
pub const DEFAULT_REPO_PATH: &str = "/var/lib/cbdr/repo";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageType {
    #[default]
    Fs,
    S3,
}

/// `[storage]`: where the repository is. The S3 keys are used when
/// `type = "s3"`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(rename = "type", default)]
    pub kind: StorageType,
    /// Repository directory for `type = "fs"`.
    #[serde(default = "default_repo_path")]
    pub path: PathBuf,
    pub bucket: Option<String>,
    /// Key prefix inside the bucket ("" = the bucket root).
    #[serde(default)]
    pub prefix: String,
    /// Endpoint URL of an S3-compatible service; absent = AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub force_path_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// A PEM file of CA certificates trusted for an `https://` endpoint,
    /// on top of the system's (a server with a private or self-signed
    /// certificate).
    pub ca_file: Option<PathBuf>,
    pub storage_class: Option<String>,
    /// Server-side encryption: "AES256" or "aws:kms".
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    /// Multipart part size in bytes.
    #[serde(default = "default_part_size")]
    pub part_size: u64,
    /// Parts of one object uploaded at once.
    #[serde(default = "default_upload_concurrency")]
    pub upload_concurrency: usize,
    /// Attempts per request (throttling, 5xx, network errors).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Seconds to open a connection (TCP and TLS).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: u64,
    /// Seconds for one attempt of a request without a large body (head,
    /// list, delete, multipart bookkeeping), and for a download's first
    /// byte and any later pause in it.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: u64,
    /// Seconds for one attempt of a request that carries a body (a PUT of
    /// a whole object or of one part, completing a multipart upload).
    #[serde(default = "default_transfer_timeout")]
    pub transfer_timeout: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            kind: StorageType::Fs,
            path: default_repo_path(),
            bucket: None,
            prefix: String::new(),
            endpoint: None,
            region: None,
            force_path_style: false,
            access_key_id: None,
            secret_access_key: None,
            ca_file: None,
            storage_class: None,
            sse: None,
            sse_kms_key_id: None,
            part_size: default_part_size(),
            upload_concurrency: default_upload_concurrency(),
            max_attempts: default_max_attempts(),
            connect_timeout: default_connect_timeout(),
            request_timeout: default_request_timeout(),
            transfer_timeout: default_transfer_timeout(),
        }
    }
}

// Secrets never reach logs or messages, not even through `{:?}`.
impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("type", &self.kind)
            .field("path", &self.path)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("force_path_style", &self.force_path_style)
            .field(
                "access_key_id",
                &self.access_key_id.as_ref().map(|_| "<set>"),
            )
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("ca_file", &self.ca_file)
            .field("storage_class", &self.storage_class)
            .field("sse", &self.sse)
            .field("part_size", &self.part_size)
            .field("upload_concurrency", &self.upload_concurrency)
            .field("max_attempts", &self.max_attempts)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("transfer_timeout", &self.transfer_timeout)
            .finish()
    }
}

fn default_repo_path() -> PathBuf {
    PathBuf::from(DEFAULT_REPO_PATH)
}

pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

fn default_part_size() -> u64 {
    16 * 1024 * 1024
}
fn default_upload_concurrency() -> usize {
    4
}
fn default_max_attempts() -> u32 {
    5
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_request_timeout() -> u64 {
    60
}
fn default_transfer_timeout() -> u64 {
    600
}

impl StorageConfig {
    /// Checks the values; an error is the key (e.g. "storage.part_size")
    /// and what is wrong with it.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let s3 = self;
        match self.kind {
            StorageType::S3 => {
                if s3.bucket.as_deref().unwrap_or("").is_empty() {
                    return Err((
                        "storage.bucket",
                        "required when storage.type = \"s3\"".into(),
                    ));
                }
            }
            StorageType::Fs => {
                if self.path.as_os_str().is_empty() {
                    return Err(("storage.path", "must name a directory".into()));
                }
            }
        }
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&s3.part_size) {
            return Err((
                "storage.part_size",
                format!(
                    "{} is out of range: S3 parts are {MIN_PART_SIZE} to {MAX_PART_SIZE} bytes",
                    s3.part_size
                ),
            ));
        }
        if s3.upload_concurrency == 0 || s3.upload_concurrency > 64 {
            return Err((
                "storage.upload_concurrency",
                "must be between 1 and 64".into(),
            ));
        }
        if s3.max_attempts == 0 {
            return Err(("storage.max_attempts", "must be at least 1".into()));
        }
        for (name, value) in [
            ("storage.connect_timeout", s3.connect_timeout),
            ("storage.request_timeout", s3.request_timeout),
            ("storage.transfer_timeout", s3.transfer_timeout),
        ] {
            if value == 0 {
                return Err((name, "must be at least 1 (seconds)".into()));
            }
        }
        if let Some(sse) = &s3.sse {
            if sse != "AES256" && sse != "aws:kms" {
                return Err((
                    "storage.sse",
                    format!("{sse:?} is not allowed: use \"AES256\" or \"aws:kms\""),
                ));
            }
        }
        if s3.sse_kms_key_id.is_some() && s3.sse.as_deref() != Some("aws:kms") {
            return Err((
                "storage.sse_kms_key_id",
                "only allowed with sse = \"aws:kms\"".into(),
            ));
        }
        Ok(())
    }
}
