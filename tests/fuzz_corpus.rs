//! The fuzz targets' corpora (`fuzz/corpus/<target>/`), replayed through
//! the same entry points (`cbdr::fuzz_api`) on every `cargo test`: an input
//! that once made a parser panic stays fixed. The seeds are real objects
//! made by the library: `CBDR_WRITE_SEEDS=1 cargo test --test fuzz_corpus
//! -- --ignored write_seeds` writes them again.

use std::path::{Path, PathBuf};

use cbdr::fuzz_api;

type Target = fn(&[u8]);

/// Every fuzz target and its entry point.
const TARGETS: &[(&str, Target)] = &[
    ("codec_plain", fuzz_api::codec_plain),
    ("codec_keyed", fuzz_api::codec_keyed),
    ("records", fuzz_api::records),
    ("logical_toc", fuzz_api::logical_toc),
    ("agent_frames", fuzz_api::agent_frames),
    ("replication", fuzz_api::replication),
    ("base_backup", fuzz_api::base_backup),
    ("tar_split", fuzz_api::tar_split),
    ("restore_tar", fuzz_api::restore_tar),
    ("wal_names", fuzz_api::wal_names),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Also replays the seeds as the library makes them today (the committed
/// ones were made by an older build, perhaps).
#[test]
fn every_corpus_file_and_seed_replays_without_a_panic() {
    let scratch = tempfile::tempdir().unwrap();
    std::env::set_var("CBDR_FUZZ_DIR", scratch.path());
    for (target, name, data) in seeds::all() {
        let run = TARGETS.iter().find(|(t, _)| *t == target).unwrap().1;
        let result = std::panic::catch_unwind(|| run(&data));
        assert!(result.is_ok(), "{target}: the seed {name} panics");
    }
    for (target, run) in TARGETS {
        let dir = corpus_dir(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{target}: an empty corpus");
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let result = std::panic::catch_unwind(|| run(&data));
            assert!(result.is_ok(), "{target}: {} panics", f.display());
        }
    }
    // restore_tar removes every directory it unpacked into.
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn every_target_has_a_fuzz_binary() {
    let cargo =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml"))
            .unwrap();
    for (target, _) in TARGETS {
        assert!(
            cargo.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml has no target {target}"
        );
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/fuzz_targets")
            .join(format!("{target}.rs"));
        let text = std::fs::read_to_string(&src).unwrap();
        assert!(
            text.contains(&format!("cbdr::fuzz_api::{target}(")),
            "{} does not call fuzz_api::{target}",
            src.display()
        );
    }
}

mod seeds {
    use std::io::Write;
    use std::sync::Arc;

    use bytes::{BufMut, Bytes, BytesMut};
    use cbdr::cluster::proto::{
        write_frame, AgentMessage, AuthMethod, ClientMessage, RecoveryAction, RecoveryTargetSpec,
        RestoreRequest, PROTOCOL_VERSION,
    };
    use cbdr::codec::{Codec, Compression, Key};
    use cbdr::fuzz_api::{OBJECT_NAME, RAW_KEY};
    use cbdr::logical::record::build_metadata;
    use cbdr::logical::toc::{QualifiedName, Section, TocEntry};
    use cbdr::pg::{Lsn, TimelineId};
    use cbdr::physical::tar_split::{Step, TarSplitter};
    use cbdr::repo::catalog::{ArchiveRecord, BackupRecord, RestorePointRecord};

    pub type Seeds = Vec<(&'static str, String, Vec<u8>)>;

    /// Bytes that compress somewhat, like a WAL page.
    fn walish(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 7) % 61 + (i / 512)) as u8).collect()
    }

    fn objects(target: &'static str, key: Option<Arc<Key>>, out: &mut Seeds) {
        for c in Compression::ALL {
            let mut codec = Codec::new(c, None, key.clone());
            codec.chunk_log2 = 12;
            let data = walish(9000);
            let obj = codec.encode(OBJECT_NAME, &data).unwrap();
            assert_eq!(codec.decode(OBJECT_NAME, obj.clone()).unwrap(), data);
            out.push((target, format!("seed-{c:?}"), obj));
        }
        let codec = Codec::new(Compression::Zstd, None, key);
        out.push((
            target,
            "seed-empty".into(),
            codec.encode(OBJECT_NAME, b"").unwrap(),
        ));
    }

    fn backup_record() -> BackupRecord {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
            .unwrap()
            .to_utc();
        BackupRecord {
            format: 1,
            name: "20261125T100000Z".into(),
            content_id: -1,
            start_lsn: Lsn(0x5000028),
            stop_lsn: Lsn(0x5000138),
            timeline: TimelineId(1),
            stop_timeline: TimelineId(1),
            start_time: t,
            stop_time: t,
            server_version: 150008,
            system_identifier: "7441234567890123456".into(),
            wal_segment_size: 16 << 20,
            archives: vec![
                ArchiveRecord {
                    name: "base".into(),
                    tablespace_path: None,
                    parts: 3,
                    plain_bytes: 23_000_000,
                    stored_bytes: 4_000_000,
                    server_compression: None,
                    map_parts: 0,
                },
                ArchiveRecord {
                    name: "16384".into(),
                    tablespace_path: Some("/srv/ts1".into()),
                    parts: 1,
                    plain_bytes: 8192,
                    stored_bytes: 900,
                    server_compression: Some(Compression::Lz4),
                    map_parts: 0,
                },
            ],
            compression: "zstd".into(),
            encrypted: false,
            manifest_bytes: 12_345,
            base: None,
            chain: Vec::new(),
            permanent: false,
        }
    }

    /// A manifest as PostgreSQL writes it: its last line the SHA-256 of
    /// the lines before (restore checks it).
    fn manifest() -> String {
        use sha2::{Digest, Sha256};
        let body = r#"{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [
{ "Path": "backup_label", "Size": 225, "Last-Modified": "2026-11-25 10:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "b1d3e5f7" },
{ "Path": "base/1/1259", "Size": 8192, "Last-Modified": "2026-11-25 09:59:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "0c4b2a19" },
{ "Encoded-Path": "626173652f312f31323630", "Size": 0, "Last-Modified": "2026-11-25 09:59:00 GMT" }
],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/5000028", "End-LSN": "0/5000138" }
],
"#;
        let sum = hex::encode(Sha256::digest(body.as_bytes()));
        format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n")
    }

    fn logical_record() -> Vec<u8> {
        let v = serde_json::json!({
            "format": 2, "timestamp": "20261125100000", "database": "app",
            "database_encoding": "UTF8", "database_collate": "C", "database_ctype": "C",
            "server_version": "15.8", "server_version_num": 150008, "cbdr_version": "0.1.0",
            "start_time": "2026-11-25T10:00:00Z", "end_time": "2026-11-25T10:01:00Z",
            "options": {
                "data_only": false, "metadata_only": false, "leaf_partition_data": false,
                "single_data_file": true, "with_stats": false, "globals": true,
                "include_schemas": [], "exclude_schemas": [],
                "include_tables": [{"schema": "public", "name": "t"}], "exclude_tables": [],
                "compression": "zstd", "compression_level": null, "jobs": 2,
                "incremental": false, "command_line": "cbdr logical-backup"
            },
            "incremental_of": null,
            "metadata": {"key": "logical/app/20261125100000/metadata.sql", "plain_bytes": 900, "stored_bytes": 400},
            "toc": null, "statistics": null, "report": null,
            "tables": [{
                "table": {"schema": "public", "name": "t"}, "oid": 16390, "relkind": "r",
                "root": null, "columns": ["\"id\"", "\"v\""], "rows": 1000,
                "plain_bytes": 20000, "stored_bytes": 5000, "backup": "20261125100000",
                "location": {"kind": "frame", "key": "logical/app/20261125100000/data", "frame": 0, "offset": 0, "length": 5000},
                "signals": null, "format": "binary", "types": [23, 25]
            }],
            "object_counts": {"TABLE": 1, "SCHEMA": 1},
            "server_signals": null, "segment_count": 0, "encrypted": false
        });
        let bytes = serde_json::to_vec_pretty(&v).unwrap();
        serde_json::from_slice::<cbdr::logical::record::LogicalBackupRecord>(&bytes)
            .expect("the seed is a logical backup record");
        bytes
    }

    fn tar_of(files: &[(&str, usize)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o700);
        dir.set_size(0);
        b.append_data(&mut dir, "base/1/", &b""[..]).unwrap();
        for (i, (name, len)) in files.iter().enumerate() {
            let data = walish(*len + i);
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o600);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        b.append_link(&mut link, "pg_tblspc/16384", "/srv/ts1")
            .unwrap();
        b.into_inner().unwrap()
    }

    /// A tar as the splitter cuts it: large files in pieces (pax headers).
    fn split_part(tar: &[u8], piece: u64) -> Vec<u8> {
        let mut s = TarSplitter::new(piece);
        let mut out = Vec::new();
        let mut rest = Bytes::copy_from_slice(tar);
        while !rest.is_empty() {
            match s.next(&mut rest).unwrap() {
                Some(Step::Pass(b)) => out.extend_from_slice(&b),
                Some(Step::Header(h)) => out.extend_from_slice(&h),
                None => {}
            }
        }
        out
    }

    fn frames<T: serde::Serialize>(msgs: &[T]) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut out = Vec::new();
            for m in msgs {
                write_frame(&mut out, m).await.unwrap();
            }
            out
        })
    }

    fn copy_data(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            for chunk in m.chunks(u16::MAX as usize) {
                out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
                out.extend_from_slice(chunk);
            }
        }
        out
    }

    pub fn all() -> Seeds {
        let mut out: Seeds = Vec::new();
        objects("codec_plain", None, &mut out);
        let key = Arc::new(Key::from_text(RAW_KEY).unwrap());
        objects("codec_keyed", Some(key), &mut out);

        let rec = backup_record();
        out.push((
            "records",
            "seed-backup".into(),
            serde_json::to_vec_pretty(&rec).unwrap(),
        ));
        let rp = RestorePointRecord {
            name: "before_upgrade".into(),
            content_id: 0,
            lsn: Lsn(0x6000100),
            timeline: TimelineId(2),
            time: rec.start_time,
        };
        out.push((
            "records",
            "seed-restore-point".into(),
            serde_json::to_vec_pretty(&rp).unwrap(),
        ));
        out.push(("records", "seed-logical".into(), logical_record()));
        let manifest = manifest();
        cbdr::physical::manifest::Manifest::parse(manifest.as_bytes()).unwrap();
        out.push((
            "records",
            "seed-manifest".into(),
            manifest.clone().into_bytes(),
        ));
        out.push((
            "records",
            "seed-stats".into(),
            br#"{"tables":[{"table":{"schema":"public","name":"t"},"reltuples":1000.0,"relpages":6,"relallvisible":6}]}"#.to_vec(),
        ));

        let entries = vec![
            TocEntry {
                id: 1,
                section: Section::PreData,
                kind: "SCHEMA".into(),
                schema: String::new(),
                name: "app".into(),
                owner_table: None,
                depends_on: vec![],
                statement: "CREATE SCHEMA app;".into(),
            },
            TocEntry {
                id: 2,
                section: Section::PreData,
                kind: "TABLE".into(),
                schema: "app".into(),
                name: "t".into(),
                owner_table: None,
                depends_on: vec![1],
                statement: "CREATE TABLE app.t (id integer, v text);".into(),
            },
            TocEntry {
                id: 3,
                section: Section::PostData,
                kind: "INDEX".into(),
                schema: "app".into(),
                name: "t_id".into(),
                owner_table: Some(QualifiedName {
                    schema: "app".into(),
                    name: "t".into(),
                }),
                depends_on: vec![2],
                statement: "CREATE INDEX t_id ON app.t (id);".into(),
            },
        ];
        let (sql, toc) = build_metadata(&entries);
        let mut toc_seed = serde_json::to_vec(&toc).unwrap();
        toc_seed.push(0);
        toc_seed.extend_from_slice(&sql);
        out.push(("logical_toc", "seed-toc".into(), toc_seed));

        out.push((
            "agent_frames",
            "seed-client".into(),
            frames(&[
                ClientMessage::Auth {
                    protocol_version: PROTOCOL_VERSION,
                    client_nonce: "ab".repeat(32),
                    mac: "cd".repeat(32),
                },
                ClientMessage::Ping,
                ClientMessage::Restore(RestoreRequest {
                    content_id: 3,
                    target_dir: "/data/seg3".into(),
                    backup: None,
                    target: RecoveryTargetSpec::Time("2026-11-25T10:00:00+00:00".into()),
                    action: RecoveryAction::Pause,
                    tablespace_map: vec![("/a".into(), "/b".into())],
                    force: false,
                    port: Some(6001),
                    restore_command: None,
                    archive_off: true,
                    start: true,
                    start_timeout_secs: 60,
                    settings: Vec::new(),
                    dbid: None,
                    greenplum_utility: false,
                }),
            ]),
        ));
        out.push((
            "agent_frames",
            "seed-agent".into(),
            frames(&[
                AgentMessage::Challenge {
                    protocol_version: PROTOCOL_VERSION,
                    nonce: "ef".repeat(32),
                    auth: AuthMethod::Token,
                },
                AgentMessage::BackupDone {
                    record: rec.clone(),
                },
                AgentMessage::Failed {
                    message: "backup failed: the server went away".into(),
                    exit_code: 3,
                },
            ]),
        ));

        let mut x = BytesMut::new();
        x.put_u8(b'w');
        x.put_u64(0x5000000);
        x.put_u64(0x5002000);
        x.put_i64(817_000_000_000_000);
        x.extend_from_slice(&walish(200));
        out.push(("replication", "seed-xlogdata".into(), x.to_vec()));
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(0x5002000);
        k.put_i64(817_000_000_000_000);
        k.put_u8(1);
        out.push(("replication", "seed-keepalive".into(), k.to_vec()));
        out.push((
            "replication",
            "seed-next-timeline".into(),
            b"2\x000/5000000".to_vec(),
        ));

        let tar = tar_of(&[
            ("backup_label", 225),
            ("base/1/1259", 8192),
            ("PG_VERSION", 3),
        ]);
        let mut n = b"nbase.tar\0\0".to_vec();
        n.push(0);
        let mut p = vec![b'p'];
        p.extend_from_slice(&4096u64.to_be_bytes());
        let mut d1 = vec![b'd'];
        d1.extend_from_slice(&tar[..3000]);
        let mut d2 = vec![b'd'];
        d2.extend_from_slice(&tar[3000..]);
        let mut dm = vec![b'd'];
        dm.extend_from_slice(manifest.as_bytes());
        out.push((
            "base_backup",
            "seed-base".into(),
            copy_data(&[n, p, d1, d2, b"m".to_vec(), dm]),
        ));
        out.push(("base_backup", "seed-size".into(), b"16MB".to_vec()));

        let mut ts = vec![2u8, 40];
        ts.extend_from_slice(&tar);
        out.push(("tar_split", "seed-tar".into(), ts));
        let mut ts = vec![0u8, 255];
        ts.extend_from_slice(&split_part(&tar, 1024));
        out.push(("tar_split", "seed-pieces".into(), ts));

        out.push(("restore_tar", "seed-tar".into(), tar.clone()));
        let mut rt = br#"{"Files":[{"Path":"base/1/1259","Size":8193}]}"#.to_vec();
        rt.push(0);
        rt.extend_from_slice(&split_part(&tar, 2048));
        out.push(("restore_tar", "seed-pieces".into(), rt));

        for name in [
            "000000010000000000000005",
            "00000002.history",
            "000000010000000000000002.00000028.backup",
            "0000000100000000000000FF.partial",
        ] {
            out.push(("wal_names", format!("seed-{name}"), name.into()));
        }
        let mut h = 3u32.to_be_bytes().to_vec();
        h.extend_from_slice(
            b"1\t0/3000000\tno recovery target specified\n\n# comment\n2\t0/5000060\tbefore 2026-11-25 10:00:00+00\n",
        );
        out.push(("wal_names", "seed-history".into(), h));
        out
    }

    pub fn write(root: &std::path::Path) {
        for (target, name, data) in all() {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::File::create(dir.join(name))
                .and_then(|mut f| f.write_all(&data))
                .unwrap();
        }
    }
}

/// Writes the seeds (real objects made by the library) into the corpus.
#[test]
#[ignore]
fn write_seeds() {
    if std::env::var_os("CBDR_WRITE_SEEDS").is_none() {
        return;
    }
    seeds::write(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus"));
}
