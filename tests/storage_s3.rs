//! The S3 backend against a real S3 server (Garage, started once for this
//! test binary by `common::garage`).

mod common;

use std::io;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cbdr::config::{StorageConfig, StorageType};
use cbdr::storage::{body_from_bytes, get_bytes, ByteStream, S3Storage, Storage, StorageError};
use common::garage::S3Target;

const MIB: usize = 1024 * 1024;

fn config(t: &S3Target, prefix: &str) -> StorageConfig {
    StorageConfig {
        kind: StorageType::S3,
        bucket: Some(t.bucket.clone()),
        prefix: prefix.to_string(),
        endpoint: Some(t.endpoint.clone()),
        region: Some(t.region.clone()),
        force_path_style: true,
        access_key_id: Some(t.access_key_id.clone()),
        secret_access_key: Some(t.secret_access_key.clone()),
        part_size: 5 * MIB as u64,
        upload_concurrency: 3,
        max_attempts: 3,
        ..StorageConfig::default()
    }
}

async fn storage(t: &S3Target, prefix: &str) -> S3Storage {
    S3Storage::new(&config(t, prefix))
        .await
        .expect("S3Storage::new")
}

/// Deterministic, incompressible-looking test data.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `data` as a stream of irregular chunks (as a compressor would yield).
fn chunked(data: Vec<u8>, chunk: usize) -> ByteStream {
    let data = Bytes::from(data);
    let chunks: Vec<io::Result<Bytes>> = (0..data.len())
        .step_by(chunk)
        .map(|at| Ok(data.slice(at..(at + chunk).min(data.len()))))
        .collect();
    Box::pin(futures_util::stream::iter(chunks))
}

/// A stream of `good` bytes, then an I/O error.
fn failing_after(good: usize) -> ByteStream {
    let mut items: Vec<io::Result<Bytes>> = Vec::new();
    let block = Bytes::from(data(MIB, 7));
    let mut sent = 0;
    while sent < good {
        let n = (good - sent).min(MIB);
        items.push(Ok(block.slice(..n)));
        sent += n;
    }
    items.push(Err(io::Error::other("compressor exploded")));
    Box::pin(futures_util::stream::iter(items))
}

async fn multipart_uploads(s: &S3Storage) -> usize {
    let (client, bucket) = s.client_and_bucket();
    let out = client
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .expect("ListMultipartUploads");
    out.uploads().len()
}

async fn etag(s: &S3Storage, object_key: &str) -> String {
    let (client, bucket) = s.client_and_bucket();
    let out = client
        .head_object()
        .bucket(bucket)
        .key(object_key)
        .send()
        .await
        .expect("HeadObject");
    out.e_tag().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_objects_round_trip() {
    let t = common::garage::bucket("s3_small_round_trip");
    let s = storage(&t, "/cluster1/").await;
    assert_eq!(
        s.location(),
        format!("s3://{}/cluster1 ({})", t.bucket, t.endpoint)
    );

    let body = data(1000, 1);
    let n = s
        .put("seg-1/base/manifest.json", body_from_bytes(body.clone()))
        .await
        .unwrap();
    assert_eq!(n, 1000);
    assert_eq!(
        get_bytes(&s, "seg-1/base/manifest.json").await.unwrap(),
        body
    );
    assert_eq!(
        s.head("seg-1/base/manifest.json").await.unwrap(),
        Some(1000)
    );

    // Stored under the prefix, with no leading slash.
    let root = storage(&t, "").await;
    assert_eq!(
        root.head("cluster1/seg-1/base/manifest.json")
            .await
            .unwrap(),
        Some(1000)
    );

    // Overwrite.
    s.put("seg-1/base/manifest.json", body_from_bytes(&b"v2"[..]))
        .await
        .unwrap();
    assert_eq!(
        get_bytes(&s, "seg-1/base/manifest.json").await.unwrap(),
        b"v2"
    );

    // Empty objects.
    assert_eq!(
        s.put("empty", body_from_bytes(Bytes::new())).await.unwrap(),
        0
    );
    assert_eq!(s.head("empty").await.unwrap(), Some(0));
    assert!(get_bytes(&s, "empty").await.unwrap().is_empty());

    // Missing objects.
    assert_eq!(s.head("seg-1/nope").await.unwrap(), None);
    let e = s
        .get("seg-1/nope")
        .await
        .err()
        .expect("get of a missing key fails");
    assert!(e.is_not_found(), "{e}");

    // Delete, twice.
    s.delete("seg-1/base/manifest.json").await.unwrap();
    assert_eq!(s.head("seg-1/base/manifest.json").await.unwrap(), None);
    s.delete("seg-1/base/manifest.json").await.unwrap();

    // Bad keys never reach the server.
    for bad in ["", "/abs", "a/../b", "a//b"] {
        let e = s.put(bad, body_from_bytes(&b"x"[..])).await.unwrap_err();
        assert!(matches!(e, StorageError::InvalidKey { .. }), "{bad:?}: {e}");
        assert!(matches!(
            s.head(bad).await,
            Err(StorageError::InvalidKey { .. })
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_reads() {
    use futures_util::TryStreamExt;
    let t = common::garage::bucket("s3_ranged_reads");
    let s = storage(&t, "r").await;
    let body = data(3 * MIB + 17, 5);
    s.put("obj", chunked(body.clone(), MIB)).await.unwrap();
    for (off, len) in [
        (0u64, 1u64),
        (0, 3 * MIB as u64 + 17),
        (MIB as u64 - 3, MIB as u64 + 5),
        (3 * MIB as u64 + 10, 7),
        (3 * MIB as u64 + 10, 100),
        (5, 0),
    ] {
        let got: Vec<u8> = s
            .get_range("obj", off, len)
            .await
            .unwrap()
            .try_fold(Vec::new(), |mut v, c| async move {
                v.extend_from_slice(&c);
                Ok(v)
            })
            .await
            .unwrap();
        let end = ((off + len) as usize).min(body.len());
        assert_eq!(got, body[off as usize..end], "{off}+{len}");
    }
    let e = s.get_range("missing", 0, 10).await.err().expect("missing");
    assert!(e.is_not_found(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_objects_round_trip() {
    let t = common::garage::bucket("s3_multipart_round_trip");
    let s = storage(&t, "mp").await;

    // 23 MiB in odd-sized chunks: four 5 MiB parts and a 3 MiB one.
    let body = data(23 * MIB, 2);
    let started = Instant::now();
    let n = s.put("big", chunked(body.clone(), 100_003)).await.unwrap();
    eprintln!("put 23 MiB in {:?}", started.elapsed());
    assert_eq!(n, 23 * MIB as u64);
    assert_eq!(s.head("big").await.unwrap(), Some(23 * MIB as u64));
    assert!(
        etag(&s, "mp/big").await.ends_with("-5\""),
        "{}",
        etag(&s, "mp/big").await
    );
    let started = Instant::now();
    let back = get_bytes(&s, "big").await.unwrap();
    eprintln!("get 23 MiB in {:?}", started.elapsed());
    assert!(back == body, "23 MiB object differs after the round trip");

    // One big chunk, as body_from_bytes gives.
    let body = data(11 * MIB, 3);
    s.put("one-chunk", body_from_bytes(body.clone()))
        .await
        .unwrap();
    assert!(etag(&s, "mp/one-chunk").await.ends_with("-3\""));
    assert!(get_bytes(&s, "one-chunk").await.unwrap() == body);

    // Exactly one part: a plain PutObject. One byte more: two parts.
    let body = data(5 * MIB, 4);
    s.put("exact", chunked(body.clone(), 65536)).await.unwrap();
    assert!(!etag(&s, "mp/exact").await.contains('-'));
    assert!(get_bytes(&s, "exact").await.unwrap() == body);
    let body = data(5 * MIB + 1, 5);
    s.put("exact-plus-one", chunked(body.clone(), 65536))
        .await
        .unwrap();
    assert!(etag(&s, "mp/exact-plus-one").await.ends_with("-2\""));
    assert!(get_bytes(&s, "exact-plus-one").await.unwrap() == body);

    assert_eq!(multipart_uploads(&s).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_body_leaves_nothing() {
    let t = common::garage::bucket("s3_failed_body");
    let s = storage(&t, "").await;

    // Fails after several parts went up (multipart upload aborted).
    let e = s
        .put("wal/broken", failing_after(17 * MIB))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, StorageError::Io { .. }), "{text}");
    assert!(
        text.contains("compressor exploded") && text.contains("wal/broken"),
        "{text}"
    );
    assert_eq!(s.head("wal/broken").await.unwrap(), None);
    assert_eq!(
        multipart_uploads(&s).await,
        0,
        "the multipart upload was not aborted"
    );

    // Fails within the first part (nothing was sent).
    let e = s
        .put("wal/broken-small", failing_after(1000))
        .await
        .unwrap_err();
    assert!(matches!(e, StorageError::Io { .. }), "{e}");
    assert_eq!(s.head("wal/broken-small").await.unwrap(), None);

    // A failed overwrite keeps the old object.
    s.put("wal/kept", body_from_bytes(&b"old"[..]))
        .await
        .unwrap();
    s.put("wal/kept", failing_after(12 * MIB))
        .await
        .unwrap_err();
    assert_eq!(get_bytes(&s, "wal/kept").await.unwrap(), b"old");
    assert!(s
        .list("")
        .await
        .unwrap()
        .iter()
        .all(|o| o.key == "wal/kept"));
    assert_eq!(multipart_uploads(&s).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_put_aborts_its_upload() {
    let t = common::garage::bucket("s3_cancelled_put");
    let s = storage(&t, "").await;
    // 12 MiB (two parts sent), then a body that never ends.
    let start = futures_util::stream::iter(vec![Ok(Bytes::from(data(12 * MIB, 8)))]);
    let body: ByteStream = Box::pin(futures_util::StreamExt::chain(
        start,
        futures_util::stream::pending(),
    ));
    let put = s.put("stuck", body);
    assert!(tokio::time::timeout(Duration::from_secs(2), put)
        .await
        .is_err());
    // common::wait_for is synchronous: the polls block this worker thread
    // (block_in_place) and run the listing on the runtime.
    let rt = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        common::wait_for(
            "the cancelled upload to be aborted",
            Duration::from_secs(10),
            || match rt.block_on(multipart_uploads(&s)) {
                0 => Ok(()),
                n => Err(format!("{n} multipart upload(s) left")),
            },
        )
    });
    assert_eq!(s.head("stuck").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_is_paginated_sorted_and_relative() {
    let t = common::garage::bucket("s3_list");
    let s = storage(&t, "cluster1").await.with_list_page_size(7);

    let mut expected = Vec::new();
    for i in (0..30).rev() {
        let key = format!("seg-1/wal/{i:08}");
        s.put(&key, body_from_bytes(vec![b'x'; i])).await.unwrap();
        expected.push((key, i as u64));
    }
    s.put("seg-10/wal/x", body_from_bytes(&b"abc"[..]))
        .await
        .unwrap();
    s.put("seg-2/base", body_from_bytes(&b"ab"[..]))
        .await
        .unwrap();
    // Outside the storage prefix: never listed.
    storage(&t, "cluster2")
        .await
        .put("seg-1/wal/other", body_from_bytes(&b"o"[..]))
        .await
        .unwrap();
    expected.sort();

    let listed: Vec<(String, u64)> = s
        .list("seg-1/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    assert_eq!(listed, expected);

    let all: Vec<String> = s
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(all.len(), 32);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "not sorted: {all:?}");
    assert_eq!(all[30], "seg-10/wal/x");
    assert_eq!(all[31], "seg-2/base");

    // A prefix may end inside a name.
    assert_eq!(s.list("seg-1").await.unwrap().len(), 31);
    assert_eq!(s.list("seg-1/wal/0000002").await.unwrap().len(), 10);
    assert!(s.list("seg-3/").await.unwrap().is_empty());
    assert!(s.list("../x").await.is_err());

    // Directories one level down, by a delimited listing: more of them
    // than a server page (7), none from outside the storage prefix.
    for d in 0..8 {
        s.put(&format!("d{d}/deep/x"), body_from_bytes(&b"d"[..]))
            .await
            .unwrap();
    }
    let dirs = s.list_dirs("").await.unwrap();
    let keys: Vec<String> = s
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        dirs,
        cbdr::storage::dirs_of("", keys.iter().map(String::as_str))
    );
    assert_eq!(dirs.len(), 11, "{dirs:?}");
    assert_eq!(&dirs[8..], ["seg-1", "seg-10", "seg-2"]);
    assert_eq!(s.list_dirs("seg-1/").await.unwrap(), ["wal"]);
    assert!(
        s.list_dirs("seg-2/").await.unwrap().is_empty(),
        "a file, not a directory"
    );
    assert!(s.list_dirs("seg-3/").await.unwrap().is_empty());
    assert!(s.list_dirs("seg-1").await.is_err(), "no trailing '/'");
    assert!(s.list_dirs("../").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_more_than_a_server_page() {
    use futures_util::{StreamExt, TryStreamExt};
    let t = common::garage::bucket("s3_list_1100");
    let s = storage(&t, "p").await;
    let started = Instant::now();
    futures_util::stream::iter(0..1100)
        .map(|i| {
            let s = &s;
            async move {
                s.put(&format!("k/{i:05}"), body_from_bytes(&b"."[..]))
                    .await
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    eprintln!("1100 puts in {:?}", started.elapsed());
    let started = Instant::now();
    let listed = s.list("k/").await.unwrap();
    eprintln!("listing 1100 keys in {:?}", started.elapsed());
    assert_eq!(listed.len(), 1100);
    assert_eq!(listed[0].key, "k/00000");
    assert_eq!(listed[1099].key, "k/01099");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_explained_without_leaking_it() {
    let t = common::garage::bucket("s3_wrong_secret");
    let secret = "Wr0ngS3cretThatMustNeverBeShown0123456789abc";
    let mut cfg = config(&t, "x");
    cfg.secret_access_key = Some(secret.to_string());
    cfg.max_attempts = 1;
    let s = S3Storage::new(&cfg).await.unwrap();
    assert!(!format!("{s:?}").contains(secret));

    let errors = [
        s.put("k", body_from_bytes(&b"data"[..])).await.unwrap_err(),
        s.put("k", body_from_bytes(data(6 * MIB, 9)))
            .await
            .unwrap_err(),
        s.get("k").await.err().unwrap(),
        s.head("k").await.unwrap_err(),
        s.list("").await.unwrap_err(),
        s.delete("k").await.unwrap_err(),
    ];
    for e in errors {
        let text = e.to_string();
        eprintln!("{text}");
        assert!(!text.contains(secret), "secret leaked: {text}");
        assert!(!format!("{e:?}").contains(secret), "secret leaked: {e:?}");
        assert!(text.contains("secret_access_key"), "no hint: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_is_named() {
    let t = common::garage::bucket("s3_missing_bucket");
    let mut cfg = config(&t, "");
    cfg.bucket = Some("no-such-bucket-here".into());
    cfg.max_attempts = 1;
    let s = S3Storage::new(&cfg).await.unwrap();
    let e = s
        .put("k", body_from_bytes(&b"data"[..]))
        .await
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(
        e.contains("bucket no-such-bucket-here does not exist"),
        "{e}"
    );
    let e = s.list("").await.unwrap_err().to_string();
    assert!(
        e.contains("bucket no-such-bucket-here does not exist"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_fails_fast_and_clearly() {
    let port = common::free_port();
    let cfg = StorageConfig {
        kind: StorageType::S3,
        bucket: Some("b".into()),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("garage".into()),
        force_path_style: true,
        access_key_id: Some("GK0123".into()),
        secret_access_key: Some("closed-port-secret".into()),
        max_attempts: 2,
        ..StorageConfig::default()
    };
    let s = S3Storage::new(&cfg).await.unwrap();
    let started = Instant::now();
    let e = s
        .put("k", body_from_bytes(&b"data"[..]))
        .await
        .unwrap_err()
        .to_string();
    let took = started.elapsed();
    eprintln!("{e} (after {took:?})");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        e.contains(&format!(
            "cannot connect to endpoint http://127.0.0.1:{port}"
        )),
        "{e}"
    );
    assert!(!e.contains("closed-port-secret"));
    let e = s.head("k").await.unwrap_err().to_string();
    assert!(e.contains("cannot connect"), "{e}");
}

#[tokio::test]
async fn bad_configs_are_refused() {
    let mut cfg = StorageConfig {
        kind: StorageType::S3,
        bucket: None,
        ..StorageConfig::default()
    };
    assert!(matches!(
        S3Storage::new(&cfg).await,
        Err(StorageError::Config(_))
    ));
    cfg.bucket = Some("b".into());
    cfg.access_key_id = Some("GK1".into());
    let e = S3Storage::new(&cfg).await.unwrap_err().to_string();
    assert!(e.contains("secret_access_key"), "{e}");
    cfg.access_key_id = None;
    cfg.prefix = "a/../b".into();
    assert!(matches!(
        S3Storage::new(&cfg).await,
        Err(StorageError::Config(_))
    ));
    cfg.prefix = String::new();
    cfg.endpoint = Some("127.0.0.1:3900".into());
    let e = S3Storage::new(&cfg).await.unwrap_err().to_string();
    assert!(e.contains("storage.endpoint"), "{e}");
}

/// Nothing configured but the endpoint and bucket: credentials and region
/// come from the AWS chains (here the environment; instance metadata is
/// disabled so that no request leaves the machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_chains_are_used_when_nothing_is_configured() {
    let t = common::garage::bucket("s3_aws_chains");
    for var in [
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        std::env::remove_var(var);
    }
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::set_var("AWS_CONFIG_FILE", "/nonexistent/cbdr-test/config");
    std::env::set_var(
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/cbdr-test/credentials",
    );
    let mut cfg = config(&t, "");
    cfg.region = None;
    cfg.access_key_id = None;
    cfg.secret_access_key = None;
    cfg.max_attempts = 1;

    let s = S3Storage::new(&cfg).await.unwrap();
    let e = s.head("k").await.unwrap_err().to_string();
    eprintln!("{e}");
    assert!(e.contains("no usable credentials"), "{e}");

    // Credentials from the environment; the region defaults to us-east-1,
    // which the server (region "garage") refuses.
    std::env::set_var("AWS_ACCESS_KEY_ID", &t.access_key_id);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", &t.secret_access_key);
    let s = S3Storage::new(&cfg).await.unwrap();
    let e = s.list("").await.unwrap_err().to_string();
    eprintln!("{e}");
    assert!(e.contains("storage.region"), "{e}");
    assert!(!e.contains(&t.secret_access_key), "{e}");

    std::env::set_var("AWS_REGION", &t.region);
    let s = S3Storage::new(&cfg).await.unwrap();
    s.put("k", body_from_bytes(&b"from env"[..])).await.unwrap();
    assert_eq!(get_bytes(&s, "k").await.unwrap(), b"from env");
}

type Handler = fn(&str, &str) -> (u16, String);

/// A fake S3 endpoint on 127.0.0.1: `handler(method, path_and_query)`
/// gives each answer's status and XML body. Returns its URL and the
/// requests it got (`METHOD path?query`).
async fn fake_s3(handler: Handler) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let requests = log.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = vec![0u8; 65536];
                let end = loop {
                    if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&request[..end]).into_owned();
                let content_length: usize = head
                    .lines()
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut have = request.len() - end;
                while have < content_length {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => have += n,
                    }
                }
                let mut first = head.lines().next().unwrap_or("").split_whitespace();
                let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                requests.lock().unwrap().push(format!("{method} {target}"));
                let (status, body) = handler(method, target);
                let response = format!(
                    "HTTP/1.1 {status} Fake\r\nContent-Type: application/xml\r\n\
                     ETag: \"fake\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, log)
}

fn fake_config(endpoint: String, max_attempts: u32) -> StorageConfig {
    StorageConfig {
        kind: StorageType::S3,
        bucket: Some("b".into()),
        endpoint: Some(endpoint),
        region: Some("garage".into()),
        force_path_style: true,
        access_key_id: Some("GK0123".into()),
        secret_access_key: Some("fake-secret".into()),
        part_size: 5 * MIB as u64,
        max_attempts,
        ..StorageConfig::default()
    }
}

fn s3_error(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
         <Message>{message}</Message></Error>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_max_attempts_times() {
    let (endpoint, requests) = fake_s3(|_, _| {
        (
            503,
            s3_error("SlowDown", "Please reduce your request rate."),
        )
    })
    .await;
    let s = S3Storage::new(&fake_config(endpoint, 3)).await.unwrap();
    let started = Instant::now();
    let e = s.list("").await.unwrap_err().to_string();
    eprintln!("{e} (after {:?})", started.elapsed());
    assert_eq!(requests.lock().unwrap().len(), 3);
    assert!(e.contains("overloaded") && e.contains("SlowDown"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// A part the server keeps refusing fails the put and aborts the upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_part_aborts_the_upload() {
    let (endpoint, requests) = fake_s3(|method, target| match method {
        "POST" if target.ends_with("?uploads") || target.contains("?uploads&") => (
            200,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><InitiateMultipartUploadResult>\
             <Bucket>b</Bucket><Key>k</Key><UploadId>up-1</UploadId></InitiateMultipartUploadResult>"
                .to_string(),
        ),
        "PUT" if target.contains("partNumber=2") => {
            (500, s3_error("InternalError", "disk on fire"))
        }
        "PUT" => (200, String::new()),
        "DELETE" => (204, String::new()),
        _ => (400, s3_error("Unexpected", target)),
    })
    .await;
    let s = S3Storage::new(&fake_config(endpoint, 2)).await.unwrap();
    let e = s
        .put("k", chunked(data(12 * MIB, 6), 65536))
        .await
        .unwrap_err();
    let text = e.to_string();
    eprintln!("{text}");
    assert!(matches!(e, StorageError::Remote { .. }), "{text}");
    assert!(
        text.contains("part 2") && text.contains("InternalError: disk on fire"),
        "{text}"
    );
    let requests = requests.lock().unwrap().clone();
    eprintln!("{requests:#?}");
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.contains("partNumber=2"))
            .count(),
        2,
        "part 2 is tried max_attempts times"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("DELETE") && r.contains("uploadId=up-1")),
        "no AbortMultipartUpload: {requests:?}"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("POST") && r.contains("uploadId=")),
        "completed: {requests:?}"
    );
}

// ---------------------------------------------------------------------
// https with a private CA, and a storage that stops forwarding.
// ---------------------------------------------------------------------

/// Through a TLS terminator whose certificate a test CA signed: refused
/// (clearly) without `ca_file`, trusted with it; bodies go as
/// UNSIGNED-PAYLOAD over https and still round-trip, multipart too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoint_with_a_private_ca() {
    let tls = common::tls_proxy::TlsProxy::start(&common::garage::garage().s3_addr());
    let mut t = common::garage::bucket("https");
    t.endpoint = tls.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &tls.ca_pem).unwrap();

    let mut cfg = config(&t, "p");
    cfg.max_attempts = 1;
    let untrusting = S3Storage::new(&cfg).await.unwrap();
    let e = untrusting
        .put("k", body_from_bytes(&b"x"[..]))
        .await
        .unwrap_err()
        .to_string();
    eprintln!("{e}");
    assert!(
        e.contains("storage.ca_file") && e.contains("UnknownIssuer") && e.contains(&tls.endpoint()),
        "{e}"
    );

    cfg.ca_file = Some(ca);
    let s = S3Storage::new(&cfg).await.unwrap();
    let small = data(1000, 1);
    s.put("small", body_from_bytes(small.clone()))
        .await
        .unwrap();
    let big = data(12 * MIB + 17, 2);
    assert_eq!(
        s.put("big", chunked(big.clone(), 300_000)).await.unwrap(),
        big.len() as u64
    );
    assert_eq!(get_bytes(&s, "small").await.unwrap(), small);
    assert_eq!(get_bytes(&s, "big").await.unwrap(), big);
    let keys: Vec<String> = s
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["big", "small"]);
    assert_eq!(multipart_uploads(&s).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ca_files_are_refused() {
    let t = common::garage::bucket("bad-ca");
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-pem.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let broken = dir.path().join("broken.pem");
    std::fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    for (path, want) in [
        (dir.path().join("missing.pem"), "cannot read it"),
        (not_pem, "holds no certificate"),
        (broken, "cannot be used as a CA"),
    ] {
        let mut cfg = config(&t, "");
        cfg.ca_file = Some(path.clone());
        let e = S3Storage::new(&cfg).await.unwrap_err();
        let text = e.to_string();
        eprintln!("{text}");
        assert!(matches!(e, StorageError::Config(_)), "{text}");
        assert!(
            text.contains("storage.ca_file") && text.contains(&path.display().to_string()),
            "{text}"
        );
        assert!(text.contains(want), "{text}");
    }
}

/// A storage that stops forwarding (a proxy holding every byte): a put
/// caught by a short stall is retried with back-off and lands once the
/// proxy forwards again; a stall that outlasts every attempt ends in a
/// clear "timed out" error within the deadlines, and nothing is visible
/// under the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_storage_is_retried_then_fails_clearly() {
    let proxy = common::proxy::Proxy::start(&common::garage::garage().s3_addr());
    let mut t = common::garage::bucket("stall");
    t.endpoint = proxy.endpoint();
    let mut cfg = config(&t, "");
    cfg.connect_timeout = 2;
    cfg.request_timeout = 2;
    cfg.transfer_timeout = 2;
    cfg.max_attempts = 6;
    let s = S3Storage::new(&cfg).await.unwrap();
    s.put("warm", body_from_bytes(&b"w"[..])).await.unwrap();

    // A 3 s stall: the first attempt times out, a later one lands.
    proxy.stall();
    let body = data(MIB, 3);
    let started = Instant::now();
    let put = {
        let body = body.clone();
        let s = S3Storage::new(&cfg).await.unwrap();
        tokio::spawn(async move { s.put("through-a-stall", body_from_bytes(body)).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.resume();
    put.await.unwrap().expect("the put lands after the stall");
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(get_bytes(&s, "through-a-stall").await.unwrap(), body);

    // A stall that does not end: every attempt times out, then a clear
    // error; no hang.
    let mut cfg = cfg.clone();
    cfg.max_attempts = 2;
    let s2 = S3Storage::new(&cfg).await.unwrap();
    proxy.stall();
    let started = Instant::now();
    let e = s2
        .put("never", chunked(data(12 * MIB, 4), 65536))
        .await
        .unwrap_err()
        .to_string();
    let took = started.elapsed();
    eprintln!("{e} (after {took:?})");
    assert!(
        e.contains("timed out") && e.contains(&proxy.endpoint()),
        "{e}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    proxy.resume();
    assert_eq!(s.head("never").await.unwrap(), None);
}
