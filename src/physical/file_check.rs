//! Checking a base backup's files against the server's manifest, as they
//! come out of its tar stream: shared by `restore` (which writes them) and
//! `verify` (which only reads them). A file arrives whole or in pieces
//! (see [`super::tar_split`]); each is checked once complete, and at the
//! end every file of the manifest must have come.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::Mutex;

use super::manifest::{Manifest, ManifestFile};
use super::tar_split::piece_of;
use crate::error::{Error, Result};

/// The files of one backup checked off against its manifest.
#[derive(Debug)]
pub struct FileCheck {
    manifest: Manifest,
    /// Manifest paths that arrived whole and matched.
    seen: Mutex<HashSet<String>>,
    pieces: Mutex<Pieces>,
}

impl FileCheck {
    pub fn new(manifest: Manifest) -> FileCheck {
        FileCheck {
            manifest,
            seen: Mutex::default(),
            pieces: Mutex::default(),
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Checks a whole file against the manifest and checks it off.
    /// A file the manifest does not list is refused, as pg_verifybackup
    /// refuses it: the server lists every file it sends.
    pub fn file(&self, path: String, size: u64, crc: u32) -> std::result::Result<(), String> {
        let Some(ManifestFile { size: want, crc32c }) = self.manifest.files.get(&path) else {
            return Err(format!(
                "{path} is not in the backup manifest: the parts and the manifest are not of the same backup"
            ));
        };
        if *want != size {
            return Err(format!(
                "{path} does not match the backup manifest: {size} bytes, the manifest says {want}"
            ));
        }
        if let Some(want) = crc32c.filter(|c| *c != crc) {
            return Err(format!(
                "{path} does not match the backup manifest: CRC32C {crc:08x}, the manifest says {want:08x}"
            ));
        }
        self.seen.lock().unwrap().insert(path);
        Ok(())
    }

    /// Adds a piece of the file `path` of `whole` bytes; the file is
    /// checked once all its pieces are in.
    pub fn piece(&self, path: String, whole: u64, run: Run) -> std::result::Result<(), String> {
        let complete = self.pieces.lock().unwrap().add(&path, whole, run)?;
        match complete {
            Some(crc) => self.file(path, whole, crc),
            None => Ok(()),
        }
    }

    /// A file some of whose pieces never came: its path and the bytes of
    /// it that did.
    pub fn incomplete(&self) -> Option<(String, u64)> {
        self.pieces.lock().unwrap().incomplete()
    }

    /// The files of the manifest that did not arrive, sorted.
    pub fn missing(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        let mut missing: Vec<String> = self
            .manifest
            .files
            .keys()
            .filter(|p| !seen.contains(*p))
            .cloned()
            .collect();
        missing.sort();
        missing
    }

    /// Files checked off so far.
    pub fn checked(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// Files restored in pieces: the runs of each written so far, merged with
/// their neighbours as they arrive (their CRC32Cs combined), so that memory
/// stays small; a file is complete once its runs cover it.
#[derive(Debug, Default)]
pub struct Pieces {
    files: HashMap<String, FileRuns>,
}

#[derive(Debug)]
struct FileRuns {
    size: u64,
    /// Disjoint, sorted by start.
    runs: Vec<Run>,
}

/// A run of bytes of a file, with their CRC32C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: u64,
    pub len: u64,
    pub crc: u32,
}

impl Run {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

impl Pieces {
    /// Adds a piece of the file `path` of `size` bytes; returns the file's
    /// CRC32C once all its pieces are in.
    pub fn add(
        &mut self,
        path: &str,
        size: u64,
        piece: Run,
    ) -> std::result::Result<Option<u32>, String> {
        if piece
            .start
            .checked_add(piece.len)
            .is_none_or(|end| end > size)
        {
            return Err(format!(
                "a piece of {path} at {} of {} bytes ends after the file's end {size}",
                piece.start, piece.len
            ));
        }
        let f = self
            .files
            .entry(path.to_string())
            .or_insert_with(|| FileRuns {
                size,
                runs: Vec::new(),
            });
        if f.size != size {
            return Err(format!(
                "pieces of {path} disagree on its size ({} and {size})",
                f.size
            ));
        }
        let at = f.runs.partition_point(|r| r.start < piece.start);
        let overlaps = (at > 0 && f.runs[at - 1].end() > piece.start)
            || f.runs.get(at).is_some_and(|r| r.start < piece.end());
        if overlaps {
            return Err(format!("pieces of {path} overlap at {}", piece.start));
        }
        f.runs.insert(at, piece);
        // Merge with the next run, then with the previous one.
        if at + 1 < f.runs.len() && f.runs[at].end() == f.runs[at + 1].start {
            let next = f.runs.remove(at + 1);
            let r = &mut f.runs[at];
            r.crc = crc_combine(r.crc, next.crc, next.len);
            r.len += next.len;
        }
        if at > 0 && f.runs[at - 1].end() == f.runs[at].start {
            let this = f.runs.remove(at);
            let r = &mut f.runs[at - 1];
            r.crc = crc_combine(r.crc, this.crc, this.len);
            r.len += this.len;
        }
        if let [whole] = f.runs[..] {
            if whole.start == 0 && whole.len == size {
                self.files.remove(path);
                return Ok(Some(whole.crc));
            }
        }
        Ok(None)
    }

    /// A file some of whose pieces never came: its path and bytes restored.
    pub fn incomplete(&self) -> Option<(String, u64)> {
        let mut paths: Vec<&String> = self.files.keys().collect();
        paths.sort();
        paths.first().map(|p| {
            let have = self.files[*p].runs.iter().map(|r| r.len).sum();
            ((*p).clone(), have)
        })
    }
}

/// The reflected CRC-32C polynomial.
const CRC32C_POLY: u32 = 0x82F6_3B78;

/// `a * b mod P` in the reflected representation of CRC-32C (bit 31 is
/// x^0).
const fn mult_mod_p(a: u32, mut b: u32) -> u32 {
    let mut m = 1u32 << 31;
    let mut p = 0u32;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 {
            (b >> 1) ^ CRC32C_POLY
        } else {
            b >> 1
        };
    }
    p
}

/// `x^(2^n) mod P` for n in 0..64.
const X2N: [u32; 64] = {
    let mut t = [0u32; 64];
    let mut p = 1u32 << 30; // x^1
    t[0] = p;
    let mut n = 1;
    while n < 64 {
        p = mult_mod_p(p, p);
        t[n] = p;
        n += 1;
    }
    t
};

/// The CRC-32C of `A || B` from the CRC-32C of `A`, that of `B` and the
/// length of `B` (zlib's `crc32_combine` with its table of powers: a few
/// hundred nanoseconds, where the matrix method of the `crc32c` crate
/// takes tens of microseconds, which a restore of many small runs felt).
pub fn crc_combine(crc1: u32, crc2: u32, len2: u64) -> u32 {
    // crc1 * x^(8 * len2) mod P, then xor crc2.
    let mut p = 1u32 << 31; // x^0
    let mut n = len2;
    let mut k = 3; // x^(2^3) = x^8: one byte
    while n != 0 {
        if n & 1 != 0 {
            p = mult_mod_p(X2N[k & 63], p);
        }
        n >>= 1;
        k += 1;
    }
    mult_mod_p(p, crc1) ^ crc2
}

/// Whether an I/O error carries a [`crate::codec::CodecError`] (the
/// object failed authentication or its checksums).
pub fn codec_error(e: &std::io::Error) -> bool {
    e.get_ref()
        .is_some_and(|i| i.is::<crate::codec::CodecError>())
}

/// Refuses a tar entry's path that would leave the directory restored
/// into: absolute, or with a `..` component.
pub fn check_entry_path(rel: &std::path::Path) -> std::result::Result<(), String> {
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("refusing the path {}", rel.display()));
    }
    Ok(())
}

/// What [`scan`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Regular files (or pieces of files).
    pub entries: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Reads one decoded tar stream without writing anything: each file's
/// bytes hashed and checked against the manifest (a file cut into pieces
/// once all its pieces are in), through a fixed buffer whatever the file's
/// size. `part` names the stream in errors. (`restore` writes the same
/// entries: see `restore::unpack`.)
pub fn scan(
    reader: impl Read,
    manifest_prefix: &str,
    check: &FileCheck,
    part: &str,
) -> Result<ScanStats> {
    let bad = |what: String| Error::Integrity(format!("{part}: {what}"));
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar stream: {e}")))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut stats = ScanStats::default();
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) if codec_error(&e) => {
                return Err(Error::Codec(crate::codec::CodecError::from_io(e, part)))
            }
            Err(e) => return Err(bad(format!("damaged tar stream: {e}"))),
        };
        let rel = entry
            .path()
            .map_err(|e| bad(format!("bad file name: {e}")))?
            .into_owned();
        check_entry_path(&rel).map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let rel_str = rel.to_string_lossy().trim_end_matches('/').to_string();
        let piece = piece_of(
            entry
                .pax_extensions()
                .map_err(|e| bad(format!("{rel_str}: bad pax header: {e}")))?,
        )
        .map_err(|e| bad(format!("{rel_str}: {e}")))?;
        let mut crc = 0u32;
        let mut size = 0u64;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if codec_error(&e) => {
                    return Err(Error::Codec(crate::codec::CodecError::from_io(e, part)))
                }
                Err(e) => return Err(bad(format!("reading {rel_str}: {e}"))),
            };
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            size += n as u64;
        }
        stats.entries += 1;
        stats.bytes += size;
        let path = format!("{manifest_prefix}{rel_str}");
        match piece {
            None => check.file(path, size, crc).map_err(bad)?,
            Some((offset, whole)) => check
                .piece(
                    path,
                    whole,
                    Run {
                        start: offset,
                        len: size,
                        crc,
                    },
                )
                .map_err(bad)?,
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_combine_agrees_with_the_crc_of_the_whole() {
        let data: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for cut in [0, 1, 7, 8192, 65_537, 199_999, 200_000] {
            let (a, b) = data.split_at(cut);
            let got = crc_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len() as u64);
            assert_eq!(got, crc32c::crc32c(&data), "cut at {cut}");
            assert_eq!(
                got,
                crc32c::crc32c_combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len()),
                "cut at {cut}"
            );
        }
    }

    fn piece(data: &[u8], start: usize, len: usize) -> Run {
        Run {
            start: start as u64,
            len: len as u64,
            crc: crc32c::crc32c(&data[start..start + len]),
        }
    }

    #[test]
    fn pieces_in_any_order_give_the_whole_file_crc() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let cuts = [(0, 4096), (4096, 4096), (8192, 1808)];
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1], [2, 0, 1]] {
            let mut p = Pieces::default();
            let mut result = None;
            for (i, &k) in order.iter().enumerate() {
                let (start, len) = cuts[k];
                let r = p.add("base/5/1", 10_000, piece(&data, start, len)).unwrap();
                if i < 2 {
                    assert_eq!(r, None, "{order:?}");
                    assert!(p.incomplete().is_some());
                } else {
                    result = r;
                }
            }
            assert_eq!(result, Some(crc32c::crc32c(&data)), "{order:?}");
            assert_eq!(p.incomplete(), None, "{order:?}");
        }
    }

    #[test]
    fn bad_or_missing_pieces_are_caught() {
        let data = vec![7u8; 8192];
        let mut p = Pieces::default();
        p.add("f", 8192, piece(&data, 0, 4096)).unwrap();
        // Overlapping, past the end, or disagreeing on the size.
        assert!(p.add("f", 8192, piece(&data, 2048, 4096)).is_err());
        assert!(p.add("f", 4096 * 3, piece(&data, 4096, 4096)).is_err());
        let mut q = Pieces::default();
        assert!(q.add("g", 4096, piece(&data, 2048, 4096)).is_err());
        // A missing piece leaves the file incomplete.
        assert_eq!(p.incomplete(), Some(("f".to_string(), 4096)));
    }

    fn one_file_manifest(path: &str, data: &[u8]) -> Manifest {
        let mut manifest = Manifest::default();
        manifest.files.insert(
            path.into(),
            ManifestFile {
                size: data.len() as u64,
                crc32c: Some(crc32c::crc32c(data)),
            },
        );
        manifest
    }

    #[test]
    fn a_file_is_checked_against_the_manifest() {
        let check = FileCheck::new(one_file_manifest("base/5/1", b"abc"));
        assert!(check
            .file("base/5/1".into(), 3, crc32c::crc32c(b"abd"))
            .is_err());
        assert!(check
            .file("base/5/1".into(), 4, crc32c::crc32c(b"abc"))
            .is_err());
        assert_eq!(check.missing(), ["base/5/1"]);
        check
            .file("base/5/1".into(), 3, crc32c::crc32c(b"abc"))
            .unwrap();
        // A file the manifest does not list is refused.
        assert!(check
            .file("other".into(), 1, 0)
            .unwrap_err()
            .contains("not in the backup manifest"));
        assert!(check.missing().is_empty());
        assert_eq!(check.checked(), 1);
    }

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_scan_checks_every_file_and_names_the_bad_one() {
        let data = vec![42u8; 300_000];
        let check = FileCheck::new(one_file_manifest("base/5/1", &data));
        let stats = scan(&tar_of(&[("base/5/1", &data)])[..], "", &check, "p0").unwrap();
        assert_eq!(
            stats,
            ScanStats {
                entries: 1,
                bytes: 300_000
            }
        );
        assert!(check.missing().is_empty());
        // One byte changed: the file's CRC differs from the manifest's.
        let mut other = data.clone();
        other[123_456] ^= 1;
        let check = FileCheck::new(one_file_manifest("base/5/1", &data));
        let e = scan(&tar_of(&[("base/5/1", &other)])[..], "", &check, "p0").unwrap_err();
        assert!(
            e.to_string().contains("p0: base/5/1 does not match")
                && e.to_string().contains("CRC32C"),
            "{e}"
        );
        assert_eq!(check.missing(), ["base/5/1"]);
        // A tablespace's files are under its prefix in the manifest.
        let check = FileCheck::new(one_file_manifest("pg_tblspc/16384/x", b"hi"));
        scan(
            &tar_of(&[("x", b"hi")])[..],
            "pg_tblspc/16384/",
            &check,
            "t",
        )
        .unwrap();
        assert!(check.missing().is_empty());
    }
}
