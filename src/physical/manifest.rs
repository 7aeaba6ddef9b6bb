//! The server's backup manifest (`backup_manifest`, JSON): the files of a
//! base backup with their sizes and checksums, checked at restore.

use std::collections::HashMap;

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Deserialize)]
struct RawManifest {
    #[serde(rename = "Files")]
    files: Vec<RawFile>,
}

#[derive(Debug, Deserialize)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    pub size: u64,
    /// CRC32C as PostgreSQL writes it, when the manifest has one.
    pub crc32c: Option<u32>,
}

#[derive(Debug, Default)]
pub struct Manifest {
    pub files: HashMap<String, ManifestFile>,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest> {
        let raw: RawManifest = serde_json::from_slice(bytes)
            .map_err(|e| Error::Internal(format!("backup_manifest is not valid: {e}")))?;
        let mut files = HashMap::with_capacity(raw.files.len());
        for f in raw.files {
            let path = match (f.path, f.encoded_path) {
                (Some(p), _) => p,
                (None, Some(hexed)) => {
                    String::from_utf8_lossy(&hex::decode(&hexed).map_err(|_| {
                        Error::Internal(format!("backup_manifest: bad Encoded-Path {hexed}"))
                    })?)
                    .into_owned()
                }
                (None, None) => {
                    return Err(Error::Internal(
                        "backup_manifest: a file without a path".into(),
                    ))
                }
            };
            let crc32c = match (f.algorithm.as_deref(), f.checksum.as_deref()) {
                (Some("CRC32C"), Some(hexed)) => {
                    let mut b = [0u8; 4];
                    hex::decode_to_slice(hexed, &mut b).map_err(|_| {
                        Error::Internal(format!("backup_manifest: bad checksum for {path}"))
                    })?;
                    // PostgreSQL stores the CRC's bytes in memory order.
                    Some(u32::from_le_bytes(b))
                }
                _ => None,
            };
            files.insert(
                path,
                ManifestFile {
                    size: f.size,
                    crc32c,
                },
            );
        }
        Ok(Manifest { files })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_checksums() {
        let crc = crc32c::crc32c(b"15\n");
        let m = Manifest::parse(
            format!(
                r#"{{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [
{{ "Path": "PG_VERSION", "Size": 3, "Last-Modified": "2026-11-25 06:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "{}" }},
{{ "Encoded-Path": "626173652f31", "Size": 0, "Last-Modified": "2026-11-25 06:00:00 GMT" }}
],
"WAL-Ranges": [], "Manifest-Checksum": "00" }}"#,
                hex::encode(crc.to_le_bytes())
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            m.files["PG_VERSION"],
            ManifestFile {
                size: 3,
                crc32c: Some(crc)
            }
        );
        assert_eq!(
            m.files["base/1"],
            ManifestFile {
                size: 0,
                crc32c: None
            }
        );
    }
}
