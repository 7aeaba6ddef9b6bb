//! Cuts a tar stream, as it passes, into parts that are each a valid tar
//! (restorable in parallel).
//!
//! Parts end between entries. A regular file larger than the piece size is
//! cut into pieces of that size, each an entry of its own: a pax extended
//! header ([`PAX_OFFSET`]: where the piece goes in the file, [`PAX_SIZE`]:
//! the file's whole size) and a copy of the file's header with the piece's
//! size. So a 1 GB relation segment is encoded, and restored, on every core
//! rather than on one. The file's bytes pass through untouched: only headers
//! are added, and only the server's headers are held back (512 bytes).

use bytes::Bytes;

/// The pax key giving a piece's offset in its file.
pub const PAX_OFFSET: &str = "CBDR.offset";
/// The pax key giving the whole size of a file cut into pieces.
pub const PAX_SIZE: &str = "CBDR.size";

const BLOCK: usize = 512;

/// What to append to the current part.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Bytes of the input (entry data), as received.
    Pass(Bytes),
    /// Header blocks: the server's, held back until complete, or a piece's.
    Header(Vec<u8>),
}

/// Follows a tar stream and splits large files into pieces.
#[derive(Debug)]
pub struct TarSplitter {
    /// Bytes of the current header block seen so far.
    header: Vec<u8>,
    /// Bytes of entry data (with padding) still to pass.
    body_left: u64,
    /// The previous header was a long-name/pax extension: the entry it
    /// describes follows, and the two must stay in one part (and such an
    /// entry is not cut into pieces).
    in_extension: bool,
    /// Files larger than this are cut into pieces of this size (a multiple
    /// of 512); 0: never.
    piece_size: u64,
    split: Option<Split>,
}

/// The file being cut into pieces.
#[derive(Debug)]
struct Split {
    header: tar::Header,
    size: u64,
    /// Where the next piece starts.
    next_offset: u64,
    /// The next piece's headers are still to be written.
    need_header: bool,
}

impl TarSplitter {
    /// `piece_size` is rounded up to a multiple of 512; 0 never cuts files.
    pub fn new(piece_size: u64) -> TarSplitter {
        TarSplitter {
            header: Vec::with_capacity(BLOCK),
            body_left: 0,
            in_extension: false,
            piece_size: piece_size.div_ceil(BLOCK as u64) * BLOCK as u64,
            split: None,
        }
    }

    /// True when the stream is between entries (a part may end here).
    pub fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.body_left == 0 && !self.in_extension
    }

    /// Takes bytes from the front of `data` (at least one, if it is not
    /// empty; headers of pieces are written before taking any) and says what
    /// to append to the part, if anything yet. Call until `data` is empty,
    /// checking [`TarSplitter::at_boundary`] after each step.
    pub fn next(&mut self, data: &mut Bytes) -> Result<Option<Step>, String> {
        if data.is_empty() {
            return Ok(None);
        }
        if self.split.as_ref().is_some_and(|s| s.need_header) {
            return Ok(Some(Step::Header(self.piece_header())));
        }
        if self.body_left > 0 {
            let take = self.body_left.min(data.len() as u64) as usize;
            self.body_left -= take as u64;
            let bytes = data.split_to(take);
            if self.body_left == 0 {
                if let Some(s) = self.split.as_mut() {
                    if s.next_offset < s.size {
                        s.need_header = true;
                    } else {
                        self.split = None;
                    }
                }
            }
            return Ok(Some(Step::Pass(bytes)));
        }
        let take = (BLOCK - self.header.len()).min(data.len());
        self.header.extend_from_slice(&data.split_to(take));
        if self.header.len() < BLOCK {
            return Ok(None);
        }
        let block = std::mem::replace(&mut self.header, Vec::with_capacity(BLOCK));
        if block.iter().all(|&b| b == 0) {
            // End-of-archive block.
            self.in_extension = false;
            return Ok(Some(Step::Header(block)));
        }
        let size = parse_size(&block[124..136])?;
        let typeflag = block[156];
        let regular = matches!(typeflag, b'0' | 0);
        if regular && !self.in_extension && self.piece_size > 0 && size > self.piece_size {
            let mut header = tar::Header::new_old();
            header.as_mut_bytes().copy_from_slice(&block);
            self.split = Some(Split {
                header,
                size,
                next_offset: 0,
                need_header: true,
            });
            return Ok(Some(Step::Header(self.piece_header())));
        }
        self.body_left = size
            .div_ceil(BLOCK as u64)
            .checked_mul(BLOCK as u64)
            .ok_or_else(|| format!("tar size field {size} is impossibly large"))?;
        self.in_extension = matches!(typeflag, b'L' | b'K' | b'x' | b'g');
        Ok(Some(Step::Header(block)))
    }

    /// The headers of the next piece of the file being split; sets up its
    /// data to pass.
    fn piece_header(&mut self) -> Vec<u8> {
        let piece_size = self.piece_size;
        let s = self.split.as_mut().expect("a file is being split");
        s.need_header = false;
        let offset = s.next_offset;
        let len = piece_size.min(s.size - offset);
        s.next_offset += len;
        // Pieces but the last are multiples of 512: only the last has the
        // server's padding after it.
        self.body_left = len.div_ceil(BLOCK as u64) * BLOCK as u64;

        let mut records = Vec::new();
        for (key, value) in [(PAX_OFFSET, offset), (PAX_SIZE, s.size)] {
            records.extend_from_slice(&pax_record(key, &value.to_string()));
        }
        let mut pax = tar::Header::new_ustar();
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_mode(0o644);
        pax.set_mtime(s.header.mtime().unwrap_or(0));
        pax.set_size(records.len() as u64);
        // A short, fixed name (GNU tar would show "PaxHeaders.N/NAME").
        pax.as_old_mut().name[..13].copy_from_slice(b"././@PaxPiece");
        pax.set_cksum();

        let mut file = s.header.clone();
        file.set_size(len);
        file.set_cksum();

        let mut out = Vec::with_capacity(3 * BLOCK + records.len());
        out.extend_from_slice(pax.as_bytes());
        out.extend_from_slice(&records);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out.extend_from_slice(file.as_bytes());
        out
    }
}

/// One pax record: "LEN KEY=VALUE\n", LEN counting the whole record.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    format!("{len} {key}={value}\n").into_bytes()
}

/// A piece's place in its file, from the pax extensions of its entry:
/// `(offset, whole file size)`; `None` for a whole file.
pub fn piece_of(extensions: Option<tar::PaxExtensions<'_>>) -> Result<Option<(u64, u64)>, String> {
    let Some(extensions) = extensions else {
        return Ok(None);
    };
    let (mut offset, mut size) = (None, None);
    for ext in extensions {
        let ext = ext.map_err(|e| format!("bad pax extension: {e}"))?;
        let number = || {
            ext.value()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("bad pax value for {:?}", ext.key()))
        };
        match ext.key() {
            Ok(PAX_OFFSET) => offset = Some(number()?),
            Ok(PAX_SIZE) => size = Some(number()?),
            _ => {}
        }
    }
    match (offset, size) {
        (None, None) => Ok(None),
        (Some(o), Some(s)) => Ok(Some((o, s))),
        _ => Err(format!("a piece needs both {PAX_OFFSET} and {PAX_SIZE}")),
    }
}

/// The size field: octal, or GNU base-256 for large sizes.
fn parse_size(field: &[u8]) -> Result<u64, String> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = 0;
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(b as u64))
                .ok_or("tar size field overflows")?;
        }
        return Ok(v);
    }
    let text: Vec<u8> = field
        .iter()
        .copied()
        .filter(|&b| b != 0 && b != b' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&text).map_err(|_| "tar size field is not text")?;
    u64::from_str_radix(s, 8).map_err(|_| format!("tar size field {s:?} is not octal"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn content(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * 7 + seed) % 251) as u8).collect()
    }

    fn archive(files: &[(&str, usize)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (i, (name, len)) in files.iter().enumerate() {
            let data = content(*len, i);
            let mut h = tar::Header::new_ustar();
            h.set_size(*len as u64);
            h.set_mode(0o600);
            h.set_mtime(1_700_000_000);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Runs `data` through a splitter in `chunk`-sized messages; returns the
    /// output cut at every boundary.
    fn split(data: &[u8], chunk: usize, piece_size: u64) -> Vec<Vec<u8>> {
        let mut t = TarSplitter::new(piece_size);
        let mut parts = vec![Vec::new()];
        for c in data.chunks(chunk) {
            let mut rest = Bytes::copy_from_slice(c);
            while !rest.is_empty() {
                match t.next(&mut rest).unwrap() {
                    Some(Step::Pass(b)) => parts.last_mut().unwrap().extend_from_slice(&b),
                    Some(Step::Header(h)) => parts.last_mut().unwrap().extend_from_slice(&h),
                    None => {}
                }
                if t.at_boundary() && !parts.last().unwrap().is_empty() {
                    parts.push(Vec::new());
                }
            }
        }
        parts.retain(|p| !p.is_empty());
        parts
    }

    /// An entry read back: name, piece (offset, file size), data.
    type Entry = (String, Option<(u64, u64)>, Vec<u8>);

    /// Reads every part as a tar.
    fn entries(parts: &[Vec<u8>]) -> Vec<Entry> {
        let mut out = Vec::new();
        for p in parts {
            let mut a = tar::Archive::new(&p[..]);
            for e in a.entries().unwrap() {
                let mut e = e.unwrap();
                let name = e.path().unwrap().display().to_string();
                let piece = piece_of(e.pax_extensions().unwrap()).unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                out.push((name, piece, data));
            }
        }
        out
    }

    #[test]
    fn every_part_is_a_readable_tar_with_the_right_files() {
        let long = format!("base/{}", "x".repeat(150));
        let files = [
            ("PG_VERSION", 3usize),
            ("empty", 0),
            ("base/1/1259", 8192 * 3),
            ("odd", 1000),
            (long.as_str(), 10),
        ];
        let data = archive(&files);
        for piece in [1, 7, 512, 513, 4096, 1 << 20] {
            // No file is larger than the piece size: nothing is cut.
            let parts = split(&data, piece, 1 << 20);
            let got: Vec<_> = entries(&parts)
                .into_iter()
                .map(|(n, p, d)| (n, p, d.len()))
                .collect();
            let want: Vec<_> = files
                .iter()
                .map(|(n, l)| (n.to_string(), None, *l))
                .collect();
            assert_eq!(got, want, "piece {piece}");
            assert_eq!(parts.concat(), data);
            // The long name's extension header stays with its entry.
            // Each of the two end-of-archive blocks is a boundary too.
            assert_eq!(parts.len(), files.len() + 2, "piece {piece}");
        }
    }

    #[test]
    fn large_files_are_cut_into_pieces_that_rebuild_them() {
        let long = format!("base/{}", "y".repeat(150));
        let files = [
            ("PG_VERSION", 3usize),
            ("base/5/16397", 8192 * 10),
            ("base/5/16400", 4096 + 100),
            ("small", 100),
            // An entry with a long name is never cut.
            (long.as_str(), 8192),
            ("exact", 4096),
        ];
        let data = archive(&files);
        for chunk in [1, 100, 512, 5000, 1 << 20] {
            let parts = split(&data, chunk, 4096);
            let got = entries(&parts);
            // Rebuild every file from its entries.
            let mut rebuilt: Vec<(String, Vec<u8>)> = Vec::new();
            for (name, piece, bytes) in &got {
                match piece {
                    None => rebuilt.push((name.clone(), bytes.clone())),
                    Some((offset, size)) => {
                        if *offset == 0 {
                            rebuilt.push((name.clone(), vec![0; *size as usize]));
                        }
                        let f = rebuilt.last_mut().unwrap();
                        assert_eq!(&f.0, name);
                        f.1[*offset as usize..*offset as usize + bytes.len()]
                            .copy_from_slice(bytes);
                    }
                }
            }
            let want: Vec<(String, Vec<u8>)> = files
                .iter()
                .enumerate()
                .map(|(i, (n, l))| (n.to_string(), content(*l, i)))
                .collect();
            assert_eq!(rebuilt, want, "chunk {chunk}");
            let pieces: Vec<(&str, u64, usize)> = got
                .iter()
                .filter_map(|(n, p, d)| p.map(|(o, _)| (n.as_str(), o, d.len())))
                .collect();
            let mut want_pieces: Vec<(&str, u64, usize)> =
                (0..20).map(|i| ("base/5/16397", i * 4096, 4096)).collect();
            want_pieces.extend([("base/5/16400", 0, 4096), ("base/5/16400", 4096, 100)]);
            assert_eq!(pieces, want_pieces, "chunk {chunk}");
            // Every piece is its own part (boundaries between pieces).
            assert!(parts.len() >= files.len() + 20 + 2, "chunk {chunk}");
        }
    }

    #[test]
    fn pax_records_count_their_own_length() {
        for value in ["0", "123456789", &"9".repeat(20)] {
            let r = pax_record(PAX_OFFSET, value);
            let (len, _) = std::str::from_utf8(&r).unwrap().split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len());
        }
        // 9 bytes + 1 digit = 10, which has 2 digits: 11.
        assert_eq!(pax_record("k", "abcde"), b"11 k=abcde\n");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size(b"00000001750\0").unwrap(), 1000);
        assert_eq!(parse_size(b"           \0").unwrap(), 0);
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[11] = 1;
        big[10] = 2;
        assert_eq!(parse_size(&big).unwrap(), 513);
        assert!(parse_size(b"0000000099x\0").is_err());
    }
}
