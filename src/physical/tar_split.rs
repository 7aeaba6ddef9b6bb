//! Finds file boundaries in a tar stream as it passes, so a backup can be
//! cut into parts that are each a valid tar (restorable in parallel).

/// Tracks where the next tar header starts.
#[derive(Debug, Default)]
pub struct TarBoundaries {
    /// Bytes of the current header block seen so far.
    header: Vec<u8>,
    /// Bytes of entry data (with padding) still to pass.
    body_left: u64,
    /// The previous header was a long-name/pax extension: the entry it
    /// describes follows, and the two must stay in one part.
    in_extension: bool,
}

const BLOCK: usize = 512;

impl TarBoundaries {
    pub fn new() -> TarBoundaries {
        TarBoundaries {
            header: Vec::with_capacity(BLOCK),
            ..TarBoundaries::default()
        }
    }

    /// True when the stream is between entries (a part may end here).
    pub fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.body_left == 0 && !self.in_extension
    }

    /// Consumes up to `data.len()` bytes, stopping early at the first
    /// boundary reached after at least one byte; returns the bytes consumed.
    /// Call repeatedly; check [`TarBoundaries::at_boundary`] between calls.
    pub fn advance(&mut self, data: &[u8]) -> Result<usize, String> {
        let mut used = 0;
        while used < data.len() {
            if self.body_left > 0 {
                let take = (self.body_left.min((data.len() - used) as u64)) as usize;
                self.body_left -= take as u64;
                used += take;
            } else {
                let take = (BLOCK - self.header.len()).min(data.len() - used);
                self.header.extend_from_slice(&data[used..used + take]);
                used += take;
                if self.header.len() == BLOCK {
                    self.parse_header()?;
                    self.header.clear();
                }
            }
            if self.at_boundary() {
                break;
            }
        }
        Ok(used)
    }

    fn parse_header(&mut self) -> Result<(), String> {
        let h = &self.header;
        if h.iter().all(|&b| b == 0) {
            // End-of-archive block.
            self.in_extension = false;
            return Ok(());
        }
        let size = parse_size(&h[124..136])?;
        let typeflag = h[156];
        self.body_left = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        self.in_extension = matches!(typeflag, b'L' | b'K' | b'x' | b'g');
        Ok(())
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

    fn archive(files: &[(&str, usize)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, len) in files {
            let data: Vec<u8> = (0..*len).map(|i| (i % 251) as u8).collect();
            let mut h = tar::Header::new_gnu();
            h.set_size(*len as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Splits `data` at every boundary, feeding it in `piece`-sized chunks.
    fn split(data: &[u8], piece: usize) -> Vec<Vec<u8>> {
        let mut t = TarBoundaries::new();
        let mut parts = vec![Vec::new()];
        for chunk in data.chunks(piece) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let n = t.advance(rest).unwrap();
                parts.last_mut().unwrap().extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                if t.at_boundary() {
                    parts.push(Vec::new());
                }
            }
        }
        parts.retain(|p| !p.is_empty());
        parts
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
            let parts = split(&data, piece);
            let mut names = Vec::new();
            for p in &parts {
                let mut a = tar::Archive::new(&p[..]);
                for e in a.entries().unwrap() {
                    let e = e.unwrap();
                    names.push((e.path().unwrap().display().to_string(), e.size() as usize));
                }
            }
            let want: Vec<_> = files.iter().map(|(n, l)| (n.to_string(), *l)).collect();
            assert_eq!(names, want, "piece {piece}");
            assert_eq!(parts.concat(), data);
            // The long name's extension header stays with its entry.
            // Each of the two end-of-archive blocks is a boundary too.
            assert_eq!(parts.len(), files.len() + 2, "piece {piece}");
        }
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
