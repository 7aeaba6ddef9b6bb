//! The server's backup manifest (`backup_manifest`, JSON): the files of a
//! base backup with their sizes and checksums, checked at restore. The
//! manifest's own SHA-256 (`Manifest-Checksum`) is checked as
//! pg_verifybackup checks it, before any file is.

use std::collections::HashMap;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Why a manifest cannot be used (a sentence, without the object's name:
/// the caller adds it).
pub type ManifestError = String;

#[derive(Debug, Deserialize)]
struct RawManifest {
    #[serde(rename = "Files")]
    files: Vec<RawFile>,
    #[serde(rename = "Manifest-Checksum")]
    checksum: Option<String>,
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
    /// Parses a manifest and checks its own checksum.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = serde_json::from_slice(bytes)
            .map_err(|e| format!("not a valid backup manifest: {e}"))?;
        let want = raw
            .checksum
            .as_deref()
            .ok_or("the manifest has no Manifest-Checksum")?;
        let have = hex::encode(Sha256::digest(checksummed_part(bytes)?));
        if !have.eq_ignore_ascii_case(want) {
            return Err(format!(
                "the manifest's checksum does not match its contents (Manifest-Checksum {want}, computed {have})"
            ));
        }
        let mut files = HashMap::with_capacity(raw.files.len());
        for f in raw.files {
            let path = match (f.path, f.encoded_path) {
                (Some(p), _) => p,
                (None, Some(hexed)) => String::from_utf8_lossy(
                    &hex::decode(&hexed).map_err(|_| format!("bad Encoded-Path {hexed}"))?,
                )
                .into_owned(),
                (None, None) => return Err("a file without a path".into()),
            };
            let crc32c = match (f.algorithm.as_deref(), f.checksum.as_deref()) {
                (Some("CRC32C"), Some(hexed)) => {
                    let mut b = [0u8; 4];
                    hex::decode_to_slice(hexed, &mut b)
                        .map_err(|_| format!("bad checksum for {path}"))?;
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

/// The bytes the manifest's checksum covers: everything up to and
/// including the newline before its last line (PostgreSQL's rule).
fn checksummed_part(bytes: &[u8]) -> Result<&[u8], ManifestError> {
    let body = bytes
        .strip_suffix(b"\n")
        .ok_or("the manifest does not end with a newline: it is cut short")?;
    let end = body
        .iter()
        .rposition(|&b| b == b'\n')
        .ok_or("the manifest has fewer than two lines")?;
    Ok(&bytes[..=end])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A manifest as PostgreSQL writes it: its last line the checksum of
    /// the lines before.
    fn sealed(files: &str) -> Vec<u8> {
        let body = format!(
            "{{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n{files}\n],\n\"WAL-Ranges\": [\n{{ \"Timeline\": 1, \"Start-LSN\": \"0/2000028\", \"End-LSN\": \"0/2000100\" }}\n],\n"
        );
        let sum = hex::encode(Sha256::digest(body.as_bytes()));
        format!("{body}\"Manifest-Checksum\": \"{sum}\"}}\n").into_bytes()
    }

    fn two_files(crc: u32) -> Vec<u8> {
        sealed(&format!(
            r#"{{ "Path": "PG_VERSION", "Size": 3, "Last-Modified": "2026-11-25 06:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "{}" }},
{{ "Encoded-Path": "626173652f31", "Size": 0, "Last-Modified": "2026-11-25 06:00:00 GMT" }}"#,
            hex::encode(crc.to_le_bytes())
        ))
    }

    #[test]
    fn parses_paths_and_checksums() {
        let crc = crc32c::crc32c(b"15\n");
        let m = Manifest::parse(&two_files(crc)).unwrap();
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

    #[test]
    fn a_manifest_that_does_not_match_its_checksum_is_refused() {
        let good = two_files(crc32c::crc32c(b"15\n"));
        // A size changed: still valid JSON, but not what the server wrote.
        let text = String::from_utf8(good.clone()).unwrap();
        let edited = text.replacen("\"Size\": 3", "\"Size\": 4", 1);
        let e = Manifest::parse(edited.as_bytes()).unwrap_err();
        assert!(e.contains("checksum does not match"), "{e}");
        // Cut short, or its checksum line gone.
        let e = Manifest::parse(&good[..good.len() - 1]).unwrap_err();
        assert!(e.contains("newline"), "{e}");
        let e = Manifest::parse(&good[..good.len() / 2]).unwrap_err();
        assert!(e.contains("not a valid backup manifest"), "{e}");
        let cut = text.rfind("\"Manifest-Checksum\"").unwrap();
        let e = Manifest::parse(format!("{}\"X\": 1}}\n", &text[..cut]).as_bytes()).unwrap_err();
        assert!(e.contains("no Manifest-Checksum"), "{e}");
        // Nothing but JSON.
        assert!(Manifest::parse(b"{}\n").is_err());
    }
}
