//! S3 backend, for AWS S3 and S3-compatible servers (Garage, MinIO, Ceph...).
//!
//! Objects live at `prefix/key` in the bucket. `put` streams its body: a body
//! that fits in one part is a single PutObject, a larger one a multipart
//! upload with up to `upload_concurrency` parts in flight, aborted on any
//! error so that nothing is ever visible under the key. The SDK retries
//! throttling, 5xx and network errors (`max_attempts`, exponential back-off).
//!
//! TLS is rustls with the ring provider, trusting the system's CA
//! certificates plus those of `storage.ca_file`, and the SDK computes
//! checksums only when an operation requires them (some S3-compatible
//! servers refuse the SDK's default CRC32 checksums on multipart uploads).
//!
//! Over https the bodies of PutObject and UploadPart are sent as
//! `UNSIGNED-PAYLOAD` (the headers are still signed): TLS protects the
//! bytes in transit and the repository's codec authenticates every object
//! when it is read, so a SHA-256 pass over every byte before sending it
//! would buy nothing. Over plain http the payload is signed.

use std::fmt;
use std::io;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass,
};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::task::JoinSet;

use super::config::{StorageConfig, MAX_PART_SIZE, MIN_PART_SIZE};
use super::{validate_key, ByteStream, Incomplete, ObjectInfo, Storage, StorageError};

/// Every request has a deadline (`[storage]` `connect_timeout`,
/// `request_timeout`, `transfer_timeout`): a server that accepts the
/// connection and then stops answering costs at most `max_attempts`
/// deadlines plus the back-off between them, never a hang. A download that
/// stops in the middle is stopped by the SDK's stalled-stream protection
/// after `request_timeout` without progress.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    connect: Duration,
    /// One attempt of a request without a large body; a download's first
    /// byte and any pause in it.
    request: Duration,
    /// One attempt of a request with a body (PUT, part, complete).
    transfer: Duration,
}
/// S3 allows at most this many parts in one upload.
const MAX_PARTS: u32 = 10_000;
/// Room past a part's size for the body chunk that crosses it (the
/// repository's encoder hands over chunks of at most 1 MiB).
const BODY_CHUNK_SLACK: usize = 1024 * 1024;
/// At most this much is reserved up front for a part's buffer: a larger
/// `storage.part_size` (up to 5 GiB) grows it as the body comes, rather
/// than asking the system for gigabytes at once.
const MAX_UP_FRONT: usize = 64 * 1024 * 1024;
/// The part size doubles after every this many parts (up to 4 times), so
/// that an object far larger than expected still fits in `MAX_PARTS` parts.
const PART_GROWTH_EVERY: u32 = 2_000;

pub struct S3Storage {
    client: Client,
    bucket: String,
    /// Key prefix without leading or trailing slashes; "" = bucket root.
    prefix: String,
    endpoint: Option<String>,
    storage_class: Option<StorageClass>,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
    part_size: u64,
    upload_concurrency: usize,
    /// Send bodies as `UNSIGNED-PAYLOAD` (the endpoint is https).
    unsigned_payload: bool,
    /// `max_keys` of each ListObjectsV2 page; `None` = the server's (1000).
    list_page_size: Option<i32>,
    deadlines: Deadlines,
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("location", &self.location())
            .field("part_size", &self.part_size)
            .field("upload_concurrency", &self.upload_concurrency)
            .finish_non_exhaustive()
    }
}

impl S3Storage {
    /// Builds the client from `[storage]`. Makes no request: a wrong
    /// endpoint, bucket or credentials show up on the first operation.
    ///
    /// Credentials are `access_key_id`/`secret_access_key` when set, else
    /// the usual AWS chain (environment, profile, web identity, instance
    /// role). The region is `region`, else the AWS chain, else `us-east-1`.
    pub async fn new(cfg: &StorageConfig) -> Result<S3Storage, StorageError> {
        let bucket = cfg
            .bucket
            .clone()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| StorageError::Config("storage.bucket is required for S3".into()))?;
        let prefix = normalize_prefix(&cfg.prefix)?;
        if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&cfg.part_size) {
            return Err(StorageError::Config(format!(
                "storage.part_size {} is out of range: S3 parts are {MIN_PART_SIZE} to {MAX_PART_SIZE} bytes",
                cfg.part_size
            )));
        }
        if cfg.upload_concurrency == 0 {
            return Err(StorageError::Config(
                "storage.upload_concurrency must be at least 1".into(),
            ));
        }
        if cfg.max_attempts == 0 {
            return Err(StorageError::Config(
                "storage.max_attempts must be at least 1".into(),
            ));
        }
        let storage_class = cfg
            .storage_class
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(StorageClass::from);
        let sse = cfg
            .sse
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(ServerSideEncryption::from);
        let endpoint = cfg.endpoint.clone().filter(|e| !e.is_empty());
        if cfg.connect_timeout == 0 || cfg.request_timeout == 0 || cfg.transfer_timeout == 0 {
            return Err(StorageError::Config(
                "storage.connect_timeout, request_timeout and transfer_timeout must be at least 1 second"
                    .into(),
            ));
        }
        let deadlines = Deadlines {
            connect: Duration::from_secs(cfg.connect_timeout),
            request: Duration::from_secs(cfg.request_timeout),
            transfer: Duration::from_secs(cfg.transfer_timeout),
        };
        if let Some(endpoint) = &endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(StorageError::Config(format!(
                    "storage.endpoint {endpoint:?} must be a URL starting with http:// or https://"
                )));
            }
        }

        let mut trust = tls::TrustStore::default();
        if let Some(path) = cfg.ca_file.as_deref() {
            trust = trust.with_pem_certificate(read_ca_file(path)?);
        }
        let tls_context = tls::TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| StorageError::Config(format!("TLS settings: {e}")))?;
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .tls_context(tls_context)
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client)
            // Exponential back-off with full jitter: up to 1 s, 2 s, 4 s...
            // between attempts, at most 20 s.
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(cfg.max_attempts)
                    .with_initial_backoff(Duration::from_secs(1))
                    .with_max_backoff(Duration::from_secs(20)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(deadlines.connect)
                    .operation_attempt_timeout(deadlines.request)
                    .build(),
            )
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(deadlines.request)
                    .build(),
            )
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        // Without a configured region the loader's own chain looks for one
        // (environment, profile, instance metadata), with our HTTP client.
        if let Some(region) = cfg.region.as_deref().filter(|r| !r.is_empty()) {
            loader = loader.region(Region::new(region.to_string()));
        }
        let key_id = cfg.access_key_id.as_deref().filter(|s| !s.is_empty());
        let secret = cfg.secret_access_key.as_deref().filter(|s| !s.is_empty());
        match (key_id, secret) {
            (Some(id), Some(secret)) => {
                loader = loader.credentials_provider(Credentials::new(
                    id,
                    secret,
                    None,
                    None,
                    "cbdr-config",
                ));
            }
            (None, None) => {}
            _ => {
                return Err(StorageError::Config(
                    "storage.access_key_id and storage.secret_access_key must be set together"
                        .into(),
                ))
            }
        }
        let sdk_config = loader.load().await;
        let mut s3_config =
            aws_sdk_s3::config::Builder::from(&sdk_config).force_path_style(cfg.force_path_style);
        if sdk_config.region().is_none() {
            s3_config = s3_config.region(Region::from_static("us-east-1"));
        }
        if let Some(endpoint) = &endpoint {
            s3_config = s3_config.endpoint_url(endpoint);
        }
        let unsigned_payload = endpoint
            .as_deref()
            .is_none_or(|e| e.starts_with("https://"));
        Ok(S3Storage {
            client: Client::from_conf(s3_config.build()),
            bucket,
            prefix,
            endpoint,
            storage_class,
            sse,
            sse_kms_key_id: cfg.sse_kms_key_id.clone().filter(|s| !s.is_empty()),
            part_size: cfg.part_size,
            upload_concurrency: cfg.upload_concurrency,
            unsigned_payload,
            list_page_size: None,
            deadlines,
        })
    }

    /// Lists with pages of `n` keys (for tests of pagination).
    #[doc(hidden)]
    pub fn with_list_page_size(mut self, n: i32) -> Self {
        self.list_page_size = Some(n);
        self
    }

    /// The SDK client and bucket, for tests that check the server directly.
    #[doc(hidden)]
    pub fn client_and_bucket(&self) -> (&Client, &str) {
        (&self.client, &self.bucket)
    }

    /// The deadline of a request without a large body.
    fn small(&self) -> aws_sdk_s3::config::Builder {
        attempt_timeout(self.deadlines.connect, self.deadlines.request)
    }

    /// The deadline of a request that carries a body.
    fn transfer(&self) -> aws_sdk_s3::config::Builder {
        attempt_timeout(self.deadlines.connect, self.deadlines.transfer)
    }

    /// `put`, conditional on the key being free when `if_new`.
    /// GetObject of `key` (a `range` header when given), its body as a
    /// stream whose read errors say `what` was being read.
    async fn get_object(
        &self,
        key: &str,
        range: Option<String>,
        what: String,
    ) -> Result<ByteStream, StorageError> {
        validate_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .set_range(range)
            .send()
            .await
            .map_err(|e| {
                if is_not_found(&e) {
                    StorageError::NotFound {
                        key: key.to_string(),
                        location: self.location(),
                    }
                } else {
                    self.remote("get", key, &e)
                }
            })?;
        let stream =
            futures_util::stream::try_unfold((out.body, what), |(mut body, what)| async move {
                match body.try_next().await {
                    Ok(Some(chunk)) => Ok(Some((chunk, (body, what)))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(io::Error::other(format!("{what}: {}", error_chain(&e)))),
                }
            });
        Ok(Box::pin(stream))
    }

    /// One page of ListObjectsV2 under `full_prefix` (with `delimiter`:
    /// the common prefixes too), from `token` on.
    async fn list_page(
        &self,
        full_prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
    ) -> Result<
        aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output,
        SdkError<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error>,
    > {
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(full_prefix)
            .set_delimiter(delimiter.map(str::to_string))
            .set_continuation_token(token)
            .set_max_keys(self.list_page_size)
            .customize()
            .config_override(self.small())
            .send()
            .await
    }

    async fn put_object(
        &self,
        key: &str,
        mut body: ByteStream,
        if_new: bool,
    ) -> Result<u64, StorageError> {
        validate_key(key)?;

        let object_key = self.object_key(key);
        let first = usize::try_from(part_size_for(1, self.part_size)).unwrap_or(usize::MAX);
        // Read one byte more than a part: a body that fits in one part is a
        // single PutObject. The buffer is reserved once (pages are only
        // touched as they fill): growing it by doubling copied it and could
        // hold twice the part at once.
        let mut buf =
            BytesMut::with_capacity(first.saturating_add(BODY_CHUNK_SLACK).min(MAX_UP_FRONT));
        while buf.len() <= first {
            match body.next().await {
                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(body_error(key, self.location(), e)),
                None => {
                    return self
                        .put_single(key, &object_key, buf.freeze(), if_new)
                        .await
                }
            }
        }
        self.put_multipart(key, &object_key, buf, body, if_new)
            .await
    }

    fn object_key(&self, key: &str) -> String {
        join_key(&self.prefix, key)
    }

    fn endpoint_name(&self) -> &str {
        self.endpoint.as_deref().unwrap_or("AWS S3")
    }

    /// A failed PUT: a refused condition (`If-None-Match`) is
    /// `AlreadyExists`.
    fn put_error<E>(&self, key: &str, err: &SdkError<E>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = err.as_service_error().and_then(|e| e.code());
        if matches!(
            code,
            Some("PreconditionFailed") | Some("ConditionalRequestConflict")
        ) || matches!(status_of(err), Some(412))
        {
            return StorageError::AlreadyExists {
                key: key.to_string(),
                location: self.location(),
            };
        }
        self.remote("put", key, err)
    }

    fn remote<E>(&self, op: &'static str, key: &str, err: &SdkError<E>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        StorageError::Remote {
            op,
            key: key.to_string(),
            location: self.location(),
            message: describe_error(err, &self.bucket, self.endpoint_name()),
        }
    }

    async fn put_single(
        &self,
        key: &str,
        object_key: &str,
        data: Bytes,
        if_new: bool,
    ) -> Result<u64, StorageError> {
        let len = data.len() as u64;
        crate::fault::point("s3-put-single");
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(object_key)
            .content_length(len as i64)
            .body(SdkByteStream::from(data))
            .set_storage_class(self.storage_class.clone())
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.sse_kms_key_id.clone())
            .set_if_none_match(if_new.then(|| "*".to_string()))
            .customize()
            .config_override(self.transfer());
        let request = if self.unsigned_payload {
            request.disable_payload_signing()
        } else {
            request
        };
        request.send().await.map_err(|e| self.put_error(key, &e))?;
        Ok(len)
    }

    async fn put_multipart(
        &self,
        key: &str,
        object_key: &str,
        buf: BytesMut,
        body: ByteStream,
        if_new: bool,
    ) -> Result<u64, StorageError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(object_key)
            .set_storage_class(self.storage_class.clone())
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.sse_kms_key_id.clone())
            .customize()
            .config_override(self.small())
            .send()
            .await
            .map_err(|e| self.remote("put", key, &e))?;
        let upload_id = created.upload_id().ok_or_else(|| StorageError::Remote {
            op: "put",
            key: key.to_string(),
            location: self.location(),
            message: "the server started a multipart upload without an upload id".into(),
        })?;
        // Aborts the upload if this future is dropped before it ends.
        let mut guard = AbortGuard {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            object_key: object_key.to_string(),
            upload_id: upload_id.to_string(),
            armed: true,
        };
        match self
            .upload_parts(key, object_key, upload_id, buf, body, if_new)
            .await
        {
            Ok(total) => {
                guard.armed = false;
                Ok(total)
            }
            Err(e) => {
                guard.armed = false;
                if let Err(abort_err) = self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(object_key)
                    .upload_id(upload_id)
                    .customize()
                    .config_override(self.small())
                    .send()
                    .await
                {
                    tracing::warn!(
                        "cannot abort the multipart upload of {key} in {} (its parts stay until a lifecycle rule removes them): {}",
                        self.location(),
                        describe_error(&abort_err, &self.bucket, self.endpoint_name())
                    );
                }
                Err(e)
            }
        }
    }

    /// Uploads the parts (`buf` holds the start of the body) and completes
    /// the upload; the caller aborts it on error.
    async fn upload_parts(
        &self,
        key: &str,
        object_key: &str,
        upload_id: &str,
        buf: BytesMut,
        body: ByteStream,
        if_new: bool,
    ) -> Result<u64, StorageError> {
        let mut tasks = JoinSet::new();
        let result = self
            .upload_parts_with(
                &mut tasks,
                UploadTarget {
                    key,
                    object_key,
                    upload_id,
                    if_new,
                },
                buf,
                body,
            )
            .await;
        if result.is_err() {
            // Cancel the parts still in flight and wait until their requests
            // are gone, so that none lands after the abort.
            tasks.shutdown().await;
        }
        result
    }

    async fn upload_parts_with(
        &self,
        tasks: &mut JoinSet<Result<CompletedPart, StorageError>>,
        target: UploadTarget<'_>,
        mut buf: BytesMut,
        mut body: ByteStream,
    ) -> Result<u64, StorageError> {
        let UploadTarget {
            key,
            object_key,
            upload_id,
            if_new,
        } = target;
        let mut parts: Vec<CompletedPart> = Vec::new();
        let mut part_number: u32 = 0;
        let mut total: u64 = 0;
        let mut eof = false;
        let join_error = |e: tokio::task::JoinError| StorageError::Remote {
            op: "put",
            key: key.to_string(),
            location: self.location(),
            message: format!("part upload task failed: {e}"),
        };
        loop {
            // Collect the parts already uploaded, failing early on errors.
            while let Some(done) = tasks.try_join_next() {
                parts.push(done.map_err(join_error)??);
            }
            let size = part_size_for(part_number + 1, self.part_size);
            let size_usize = usize::try_from(size).unwrap_or(usize::MAX);
            if buf.len() < size_usize {
                buf.reserve(size_usize - buf.len());
            }
            while !eof && buf.len() < size_usize {
                match body.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => return Err(body_error(key, self.location(), e)),
                    None => eof = true,
                }
            }
            if buf.is_empty() {
                break;
            }
            let data = buf.split_to(buf.len().min(size_usize)).freeze();
            part_number += 1;
            if part_number > MAX_PARTS {
                return Err(StorageError::Remote {
                    op: "put",
                    key: key.to_string(),
                    location: self.location(),
                    message: format!(
                        "the object is larger than S3 allows in {MAX_PARTS} parts with storage.part_size = {}: raise storage.part_size",
                        self.part_size
                    ),
                });
            }
            // Bounded memory: at most `upload_concurrency` parts in flight
            // plus the one just read.
            while tasks.len() >= self.upload_concurrency {
                if let Some(done) = tasks.join_next().await {
                    parts.push(done.map_err(join_error)??);
                }
            }
            total += data.len() as u64;
            let request = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(object_key)
                .upload_id(upload_id)
                .part_number(part_number as i32)
                .content_length(data.len() as i64)
                .body(SdkByteStream::from(data))
                .customize()
                .config_override(self.transfer());
            let request = if self.unsigned_payload {
                request.disable_payload_signing()
            } else {
                request
            };
            let (bucket, endpoint, location) = (
                self.bucket.clone(),
                self.endpoint_name().to_string(),
                self.location(),
            );
            let key_owned = key.to_string();
            tasks.spawn(async move {
                let out = request.send().await.map_err(|e| StorageError::Remote {
                    op: "put",
                    key: key_owned.clone(),
                    location: location.clone(),
                    message: format!(
                        "part {part_number}: {}",
                        describe_error(&e, &bucket, &endpoint)
                    ),
                })?;
                crate::fault::point("s3-put-part");
                let e_tag = out.e_tag().ok_or_else(|| StorageError::Remote {
                    op: "put",
                    key: key_owned,
                    location,
                    message: format!("the server returned no ETag for part {part_number}"),
                })?;
                Ok(CompletedPart::builder()
                    .part_number(part_number as i32)
                    .e_tag(e_tag)
                    .build())
            });
        }
        while let Some(done) = tasks.join_next().await {
            parts.push(done.map_err(join_error)??);
        }
        parts.sort_by_key(|p| p.part_number());
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object_key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .set_if_none_match(if_new.then(|| "*".to_string()))
            .customize()
            .config_override(self.transfer())
            .send()
            .await
            .map_err(|e| self.put_error(key, &e))?;
        Ok(total)
    }
}

/// The multipart upload parts go to.
#[derive(Clone, Copy)]
struct UploadTarget<'a> {
    key: &'a str,
    object_key: &'a str,
    upload_id: &'a str,
    /// Complete it only if the key is free (`If-None-Match: *`).
    if_new: bool,
}

/// Aborts a multipart upload when dropped while armed (the `put` future was
/// cancelled), so that no orphaned parts stay behind.
struct AbortGuard {
    client: Client,
    bucket: String,
    object_key: String,
    upload_id: String,
    armed: bool,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let request = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.object_key)
                .upload_id(&self.upload_id);
            runtime.spawn(async move {
                let _ = request.send().await;
            });
        }
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn put(&self, key: &str, body: ByteStream) -> Result<u64, StorageError> {
        self.put_object(key, body, false).await
    }

    /// A conditional PUT (`If-None-Match: *`) after a HEAD: AWS S3 refuses
    /// to replace an object that appeared in between (412), but servers
    /// that ignore the condition (Garage) let the last of two racing
    /// uploads win. Callers that must never replace different content
    /// (WAL) read the object back after an `AlreadyExists`.
    async fn put_new(&self, key: &str, body: ByteStream) -> Result<u64, StorageError> {
        if self.head(key).await?.is_some() {
            return Err(StorageError::AlreadyExists {
                key: key.to_string(),
                location: self.location(),
            });
        }
        self.put_object(key, body, true).await
    }

    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        let what = format!("reading {key} from {}", self.location());
        self.get_object(key, None, what).await
    }

    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
    ) -> Result<ByteStream, StorageError> {
        validate_key(key)?;
        if length == 0 {
            return Ok(Box::pin(futures_util::stream::empty()));
        }
        let what = format!(
            "reading bytes {offset}..{} of {key} from {}",
            offset + length,
            self.location()
        );
        let range = format!("bytes={offset}-{}", offset + length - 1);
        self.get_object(key, Some(range), what).await
    }

    async fn head(&self, key: &str) -> Result<Option<u64>, StorageError> {
        validate_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .customize()
            .config_override(self.small())
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(self.remote("head", key, &e)),
        }
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        super::validate_dir_prefix(prefix)?;
        let root = join_key(&self.prefix, "");
        let full_prefix = format!("{root}{prefix}");
        let mut dirs = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .list_page(&full_prefix, Some("/"), token.take())
                .await
                .map_err(|e| self.remote("list", &format!("{prefix}*/"), &e))?;
            dirs.extend(
                page.common_prefixes()
                    .iter()
                    .filter_map(|p| p.prefix()?.strip_prefix(&full_prefix)?.strip_suffix('/'))
                    .filter(|d| !d.is_empty())
                    .map(str::to_string),
            );
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) && !next.is_empty() => {
                    token = Some(next.to_string())
                }
                _ => break,
            }
        }
        dirs.sort();
        dirs.dedup();
        Ok(dirs)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StorageError> {
        validate_list_prefix(prefix)?;
        let root = join_key(&self.prefix, "");
        let full_prefix = format!("{root}{prefix}");
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .list_page(&full_prefix, None, token.take())
                .await
                .map_err(|e| self.remote("list", &format!("{prefix}*"), &e))?;
            for object in page.contents() {
                let Some(relative) = object.key().and_then(|k| k.strip_prefix(&root)) else {
                    continue;
                };
                objects.push(ObjectInfo {
                    key: relative.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    modified: object
                        .last_modified()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                });
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            match page.next_continuation_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_string()),
                _ => {
                    return Err(StorageError::Remote {
                        op: "list",
                        key: format!("{prefix}*"),
                        location: self.location(),
                        message:
                            "the server returned a truncated listing without a continuation token"
                                .into(),
                    })
                }
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn list_incomplete(&self, prefix: &str) -> Result<Vec<Incomplete>, StorageError> {
        validate_list_prefix(prefix)?;
        let root = join_key(&self.prefix, "");
        let full_prefix = format!("{root}{prefix}");
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .customize()
                .config_override(self.small())
                .send()
                .await
                .map_err(|e| {
                    self.remote("list the multipart uploads", &format!("{prefix}*"), &e)
                })?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let Some(relative) = key.strip_prefix(&root) else {
                    continue;
                };
                out.push(Incomplete {
                    key: relative.to_string(),
                    id: id.to_string(),
                    started: u
                        .initiated()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                });
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            match (page.next_key_marker(), page.next_upload_id_marker()) {
                (Some(k), id) if !k.is_empty() => {
                    key_marker = Some(k.to_string());
                    id_marker = id.map(str::to_string);
                }
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn abort_incomplete(&self, upload: &Incomplete) -> Result<(), StorageError> {
        validate_key(&upload.key)?;
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(self.object_key(&upload.key))
            .upload_id(&upload.id)
            .customize()
            .config_override(self.small())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e)
                if is_not_found(&e)
                    || e.as_service_error().and_then(|s| s.code()) == Some("NoSuchUpload") =>
            {
                Ok(())
            }
            Err(e) => Err(self.remote("abort the multipart upload of", &upload.key, &e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.object_key(key))
            .customize()
            .config_override(self.small())
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.remote("delete", key, &e)),
        }
    }

    fn location(&self) -> String {
        let mut location = format!("s3://{}", self.bucket);
        if !self.prefix.is_empty() {
            location.push('/');
            location.push_str(&self.prefix);
        }
        if let Some(endpoint) = &self.endpoint {
            location.push_str(&format!(" ({endpoint})"));
        }
        location
    }
}

/// Per-request override: connect timeout plus a limit on each attempt.
fn attempt_timeout(connect: Duration, limit: Duration) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::default().timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(connect)
            .operation_attempt_timeout(limit)
            .build(),
    )
}

/// The PEM certificates of `storage.ca_file`, checked: a file that cannot
/// be read or holds no usable certificate is a configuration error naming
/// it (the TLS layer would only fail at the first connection).
fn read_ca_file(path: &std::path::Path) -> Result<Vec<u8>, StorageError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let what = || format!("storage.ca_file {}", path.display());
    let pem = std::fs::read(path)
        .map_err(|e| StorageError::Config(format!("{}: cannot read it: {e}", what())))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            StorageError::Config(format!(
                "{}: not a PEM file of certificates ({e:?}): give the CA certificate(s) in PEM form",
                what()
            ))
        })?;
    if certs.is_empty() {
        return Err(StorageError::Config(format!(
            "{}: holds no certificate (expected \"-----BEGIN CERTIFICATE-----\" blocks)",
            what()
        )));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| {
            StorageError::Config(format!(
                "{}: a certificate cannot be used as a CA: {e}",
                what()
            ))
        })?;
    }
    Ok(pem)
}

fn body_error(key: &str, location: String, source: io::Error) -> StorageError {
    StorageError::Io {
        op: "read the data to put as",
        key: key.to_string(),
        location,
        source,
    }
}

/// Trims the slashes around a configured prefix and checks what is left.
fn normalize_prefix(prefix: &str) -> Result<String, StorageError> {
    let trimmed = prefix.trim_matches('/');
    if !trimmed.is_empty() {
        validate_key(trimmed).map_err(|e| {
            StorageError::Config(format!(
                "storage.prefix {prefix:?} is not a clean path: {e}"
            ))
        })?;
    }
    Ok(trimmed.to_string())
}

/// `prefix/key`, or `key` when the prefix is empty (the prefix is
/// normalized: no leading or trailing slash).
fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}/{key}")
    }
}

/// A listing prefix may end anywhere (`seg-1/wal/0000`), but may not climb
/// out of the storage root or start with a slash.
fn validate_list_prefix(prefix: &str) -> Result<(), StorageError> {
    let bad = |reason| {
        Err(StorageError::InvalidKey {
            key: prefix.to_string(),
            reason,
        })
    };
    if prefix.starts_with('/') {
        return bad("starts with '/'");
    }
    if prefix.contains('\\') || prefix.contains('\0') {
        return bad("contains a backslash or NUL byte");
    }
    let mut parts: Vec<&str> = prefix.split('/').collect();
    parts.pop(); // the last component may be partial or empty
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return bad("has an empty, '.' or '..' component");
    }
    Ok(())
}

/// Size of part `n` (from 1): the configured size, doubled after every
/// `PART_GROWTH_EVERY` parts, at most 4 times, capped at the S3 maximum.
fn part_size_for(part_number: u32, base: u64) -> u64 {
    let doublings = (part_number.saturating_sub(1) / PART_GROWTH_EVERY).min(4);
    base.saturating_mul(1 << doublings).min(MAX_PART_SIZE)
}

fn status_of<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// A missing object (404), as opposed to a missing bucket.
fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    let code = err.as_service_error().and_then(|e| e.code());
    match code {
        Some("NoSuchKey") | Some("NotFound") => true,
        Some("NoSuchBucket") => false,
        _ => status_of(err) == Some(404),
    }
}

/// A message a DBA can act on: what is wrong and what to check, then the
/// server's error code and message or the chain of causes. Never contains
/// credentials. The SDK's full error context goes to the debug log.
fn describe_error<E>(err: &SdkError<E>, bucket: &str, endpoint: &str) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    tracing::debug!("S3 request failed: {}", DisplayErrorContext(err));
    match err {
        SdkError::DispatchFailure(failure) => {
            let chain = error_chain(err);
            let io_kind = io_error_kind(err);
            if chain.contains("invalid peer certificate") || chain.contains("TLS handshake") {
                format!(
                    "TLS with endpoint {endpoint} failed: if the server's certificate is signed by a private CA, \
                     set storage.ca_file to that CA's certificate (PEM); check that the certificate names the \
                     endpoint's host ({chain})"
                )
            } else if io_kind == Some(io::ErrorKind::ConnectionRefused) {
                format!("cannot connect to endpoint {endpoint}: connection refused ({chain})")
            } else if failure.is_timeout() || io_kind == Some(io::ErrorKind::TimedOut) {
                format!("cannot connect to endpoint {endpoint}: timed out ({chain})")
            } else if chain.contains("dns error") || chain.contains("failed to lookup") {
                format!("cannot resolve the host of endpoint {endpoint} ({chain})")
            } else if failure.is_io() || io_kind.is_some() {
                format!("network error talking to endpoint {endpoint} ({chain})")
            } else if chain.to_ascii_lowercase().contains("credential") {
                format!(
                    "no usable credentials: set storage.access_key_id and storage.secret_access_key, \
                     or provide AWS credentials (environment, profile or instance role) ({chain})"
                )
            } else {
                format!("request to endpoint {endpoint} failed ({chain})")
            }
        }
        SdkError::TimeoutError(_) => {
            format!(
                "request to endpoint {endpoint} timed out ({})",
                error_chain(err)
            )
        }
        SdkError::ServiceError(service) => {
            let e = service.err();
            service_message(e.code(), e.message(), status_of(err), bucket)
        }
        SdkError::ResponseError(_) => format!(
            "unexpected response from endpoint {endpoint}: {} ({})",
            service_message(None, None, status_of(err), bucket),
            error_chain(err)
        ),
        _ => DisplayErrorContext(err).to_string(),
    }
}

/// `hint [Code: message] (HTTP status)`, or without the hint when there is
/// none for this error.
fn service_message(
    code: Option<&str>,
    message: Option<&str>,
    status: Option<u16>,
    bucket: &str,
) -> String {
    let signature = message.is_some_and(|m| m.to_ascii_lowercase().contains("signature"));
    let hint = match (code, status) {
        (Some("NoSuchBucket"), _) => format!("bucket {bucket} does not exist"),
        (Some("SignatureDoesNotMatch"), _) | (Some("AccessDenied"), _)
            if signature || code == Some("SignatureDoesNotMatch") =>
        {
            "signature rejected: check access_key_id/secret_access_key".to_string()
        }
        (Some("AccessDenied"), _) | (None, Some(403)) => format!(
            "access denied to bucket {bucket}: check access_key_id/secret_access_key and the key's permissions on the bucket"
        ),
        (Some("InvalidAccessKeyId"), _) => {
            "the server does not know this access key: check access_key_id".to_string()
        }
        (Some("AuthorizationHeaderMalformed"), _)
        | (Some("PermanentRedirect"), _)
        | (None, Some(301)) => {
            format!("bucket {bucket} is in another region: check storage.region")
        }
        (Some("RequestTimeTooSkewed"), _) => {
            "this machine's clock differs too much from the server's: fix the clock (NTP)"
                .to_string()
        }
        (Some("SlowDown"), _) | (None, Some(503)) => {
            "the server is overloaded (still failing after retries): try again later or raise storage.max_attempts"
                .to_string()
        }
        (Some("InvalidStorageClass"), _) => {
            "the server does not accept this storage class: check storage.storage_class".to_string()
        }
        (Some("KMS.NotFoundException"), _) | (Some("KMS.DisabledException"), _) => {
            "the KMS key cannot be used: check storage.sse_kms_key_id".to_string()
        }
        _ => String::new(),
    };
    let mut what = String::new();
    if let Some(code) = code {
        what.push_str(code);
    }
    if let Some(message) = message.filter(|m| !m.is_empty()) {
        if !what.is_empty() {
            what.push_str(": ");
        }
        what.push_str(message);
    }
    let mut out = match (hint.is_empty(), what.is_empty()) {
        (true, _) => what,
        (false, true) => hint,
        (false, false) => format!("{hint} [{what}]"),
    };
    match status {
        Some(status) if out.is_empty() => out = format!("HTTP {status}"),
        Some(status) => out.push_str(&format!(" (HTTP {status})")),
        None if out.is_empty() => out = "unknown error".to_string(),
        None => {}
    }
    out
}

/// The messages of an error and its sources, `: `-separated, without
/// repeats.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// The kind of the first I/O error in the error's source chain.
fn io_error_kind(err: &(dyn std::error::Error + 'static)) -> Option<io::ErrorKind> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io_err) = e.downcast_ref::<io::Error>() {
            return Some(io_err.kind());
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_joined_under_the_prefix() {
        assert_eq!(join_key("", "a/b"), "a/b");
        assert_eq!(join_key("cluster1", "a/b"), "cluster1/a/b");
        assert_eq!(join_key("x/y", ""), "x/y/");
        assert_eq!(join_key("", ""), "");
    }

    #[test]
    fn prefixes_are_trimmed_and_checked() {
        assert_eq!(normalize_prefix("").unwrap(), "");
        assert_eq!(normalize_prefix("/").unwrap(), "");
        assert_eq!(normalize_prefix("/cluster1/").unwrap(), "cluster1");
        assert_eq!(normalize_prefix("a/b").unwrap(), "a/b");
        assert!(normalize_prefix("a//b").is_err());
        assert!(normalize_prefix("a/../b").is_err());
    }

    #[test]
    fn list_prefixes_may_end_anywhere() {
        for ok in ["", "seg-1", "seg-1/", "seg-1/wal/0000", "a/b/"] {
            assert!(validate_list_prefix(ok).is_ok(), "{ok:?}");
        }
        for bad in ["/a", "a//b", "../a", "a/./b", "a\\b", "a\0"] {
            assert!(validate_list_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn part_size_grows_for_huge_objects() {
        let base = 16 << 20;
        assert_eq!(part_size_for(1, base), base);
        assert_eq!(part_size_for(2000, base), base);
        assert_eq!(part_size_for(2001, base), 2 * base);
        assert_eq!(part_size_for(8001, base), 16 * base);
        assert_eq!(part_size_for(10_000, base), 16 * base);
        assert_eq!(part_size_for(10_000, MAX_PART_SIZE), MAX_PART_SIZE);
        // 10 000 parts hold 62 000 base parts: ~970 GiB with 16 MiB parts.
        let capacity: u64 = (1..=MAX_PARTS).map(|n| part_size_for(n, base)).sum();
        assert_eq!(capacity, 62_000 * base);
    }

    #[test]
    fn service_errors_get_hints() {
        let m = service_message(
            Some("NoSuchBucket"),
            Some("The specified bucket does not exist"),
            Some(404),
            "backups",
        );
        assert_eq!(
            m,
            "bucket backups does not exist [NoSuchBucket: The specified bucket does not exist] (HTTP 404)"
        );
        let m = service_message(Some("SignatureDoesNotMatch"), None, Some(403), "b");
        assert!(m.contains("check access_key_id/secret_access_key"), "{m}");
        let m = service_message(
            Some("AccessDenied"),
            Some("Forbidden: Invalid signature"),
            Some(403),
            "b",
        );
        assert!(m.starts_with("signature rejected"), "{m}");
        let m = service_message(None, None, Some(403), "b");
        assert!(
            m.contains("access denied") && m.ends_with("(HTTP 403)"),
            "{m}"
        );
        let m = service_message(Some("InternalError"), Some("oops"), Some(500), "b");
        assert_eq!(m, "InternalError: oops (HTTP 500)");
        assert_eq!(service_message(None, None, Some(418), "b"), "HTTP 418");
        assert_eq!(service_message(Some("X"), None, None, "b"), "X");
    }

    #[test]
    fn io_kinds_are_found_in_the_chain() {
        #[derive(Debug)]
        struct Wrapper(io::Error);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapper")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Wrapper(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(io_error_kind(&e), Some(io::ErrorKind::ConnectionRefused));
    }
}
