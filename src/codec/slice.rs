//! Decoding one whole object that is already in memory, in place: each
//! chunk authenticated and decrypted where it lies, the compressed bytes
//! moved together, and an lz4 frame decompressed block by block straight
//! into the caller's buffer. The same checks as [`ObjectReader`](super::ObjectReader)
//! without its copies: the streaming reader copies
//! every chunk into its own buffer, the lz4 frame decoder copies each
//! compressed block and each plain block once more and allocates two
//! block buffers per object, and `read_to_end` zeroes the output again.
//! The block restore decodes one object per extent (1 MiB): those copies
//! and allocations were a large part of its CPU time.

use std::io::{self, Read};
use std::sync::Arc;

use super::header::Header;
use super::key::Key;
use super::object::{chunk_crc, open_cipher, CRC_LEN, LAST, TAG_LEN};
use super::{CodecError, Compression};

const LZ4_MAGIC: u32 = 0x184D_2204;
/// The frame descriptor cbdr's lz4 encoder writes: version 01, independent
/// blocks, no block or content checksum, no content size, no dictionary.
const LZ4_FLG: u8 = 0b0110_0000;

/// Decodes the object `name` held whole in `input` (which is overwritten:
/// chunks are decrypted in place). The plain bytes are `out[..n]` for the
/// returned `n`; `out` is kept longer than that on purpose, so that a
/// caller decoding many objects into one buffer does not have it zeroed
/// again each time.
pub(super) fn decode_in_place(
    input: &mut [u8],
    name: &str,
    key: Option<Arc<Key>>,
    out: &mut Vec<u8>,
) -> Result<usize, CodecError> {
    let (header, aad) = Header::read(&input[..], name)?;
    let mut cipher = open_cipher(&header, key, name)?;
    let max_payload = header.chunk_size() + TAG_LEN.max(CRC_LEN);
    let start = aad.len();
    let (mut at, mut end) = (start, start);
    let mut index = 0u64;
    let corrupt = |chunk: u64, detail: &str| CodecError::Corrupt {
        name: name.into(),
        chunk,
        detail: detail.into(),
    };
    loop {
        let truncated = CodecError::Truncated {
            name: name.into(),
            bytes: input.len() as u64,
        };
        let frame = input
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or(truncated)?;
        let last = frame & LAST != 0;
        let len = (frame & !LAST) as usize;
        if len > max_payload {
            return Err(corrupt(index, &format!("has an impossible length {len}")));
        }
        let payload = at + 4..at + 4 + len;
        if payload.end > input.len() {
            return Err(CodecError::Truncated {
                name: name.into(),
                bytes: input.len() as u64,
            });
        }
        let plain = match cipher.as_mut() {
            Some(c) => c
                .open_slice(&aad, &mut input[payload.clone()], last)
                .map_err(|_| corrupt(index, "fails authentication"))?,
            None => {
                if len < CRC_LEN {
                    return Err(corrupt(index, "is shorter than its checksum"));
                }
                let data = payload.start..payload.end - CRC_LEN;
                let stored = u32::from_le_bytes(input[data.end..payload.end].try_into().unwrap());
                if chunk_crc(index, last, &input[data.clone()]) != stored {
                    return Err(corrupt(index, "fails its CRC32 checksum"));
                }
                data.len()
            }
        };
        input.copy_within(payload.start..payload.start + plain, end);
        end += plain;
        at = payload.end;
        index += 1;
        if last {
            if at != input.len() {
                return Err(corrupt(index - 1, "is followed by unexpected data"));
            }
            break;
        }
    }
    decompress(header.compression, &input[start..end], out).map_err(|f| match f {
        Lz4Fault::Trailing => corrupt(
            index - 1,
            "holds data after the end of the compressed stream",
        ),
        Lz4Fault::Bad(e) => corrupt(index - 1, &format!("does not decompress: {e}")),
    })
}

/// Decompresses `data` into `out[..n]`; returns `n`.
fn decompress(method: Compression, data: &[u8], out: &mut Vec<u8>) -> Result<usize, Lz4Fault> {
    match method {
        Compression::None => {
            grow(out, data.len());
            out[..data.len()].copy_from_slice(data);
            Ok(data.len())
        }
        Compression::Lz4 => match lz4_frame(data, out) {
            Some(r) => r,
            None => stream(method, data, out),
        },
        other => stream(other, data, out),
    }
}

/// Makes `out` at least `len` long (zeroing only what it grows by).
fn grow(out: &mut Vec<u8>, len: usize) {
    if out.len() < len {
        out.resize(len, 0);
    }
}

/// Decompresses through the method's streaming decoder (any frame shape).
fn stream(method: Compression, data: &[u8], out: &mut Vec<u8>) -> Result<usize, Lz4Fault> {
    let bad = |e: io::Error| Lz4Fault::Bad(e.to_string());
    let mut d = method.decoder(data).map_err(bad)?;
    out.clear();
    d.read_to_end(out).map_err(bad)?;
    Ok(out.len())
}

/// Why the compressed bytes do not decompress.
enum Lz4Fault {
    Bad(String),
    /// An lz4 frame followed by more bytes.
    Trailing,
}

/// Decompresses an lz4 frame of the shape cbdr writes straight into `out`;
/// `None` for any other shape (the streaming decoder reads those).
fn lz4_frame(data: &[u8], out: &mut Vec<u8>) -> Option<Result<usize, Lz4Fault>> {
    // Magic, FLG, BD, the header checksum (the codec authenticated every
    // byte already).
    let head = data.get(..7)?;
    if u32::from_le_bytes(head[..4].try_into().unwrap()) != LZ4_MAGIC || head[4] != LZ4_FLG {
        return None;
    }
    let block_max = match head[5] {
        0x40 => 64 << 10,
        0x50 => 256 << 10,
        0x60 => 1 << 20,
        0x70 => 4 << 20,
        _ => return None,
    };
    let bad = |what: &str| Some(Err(Lz4Fault::Bad(what.to_string())));
    let mut at = 7;
    let mut n = 0usize;
    loop {
        let Some(size) = data.get(at..at + 4) else {
            return bad("the lz4 frame ends before its end mark");
        };
        let size = u32::from_le_bytes(size.try_into().unwrap());
        at += 4;
        if size == 0 {
            break;
        }
        let stored = size & (1 << 31) != 0;
        let len = (size & !(1 << 31)) as usize;
        if len > block_max {
            return bad("an lz4 block is larger than the frame's block size");
        }
        let Some(block) = data.get(at..at + len) else {
            return bad("the lz4 frame ends inside a block");
        };
        at += len;
        if stored {
            grow(out, n + len);
            out[n..n + len].copy_from_slice(block);
            n += len;
            continue;
        }
        // Room for what the block likely holds first (a small file's
        // block must not cost a zeroed megabyte), all of it if that
        // was too little.
        let likely = (len * 16).clamp(64 << 10, block_max);
        for room in [likely, block_max] {
            grow(out, n + room);
            match lz4_flex::block::decompress_into(block, &mut out[n..n + room]) {
                Ok(k) => {
                    n += k;
                    break;
                }
                Err(lz4_flex::block::DecompressError::OutputTooSmall { .. })
                    if room < block_max => {}
                Err(e) => return Some(Err(Lz4Fault::Bad(e.to_string()))),
            }
        }
    }
    if at != data.len() {
        return Some(Err(Lz4Fault::Trailing));
    }
    Some(Ok(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lz4_flex::frame::{BlockMode, BlockSize, FrameEncoder, FrameInfo};
    use std::io::Write;

    fn frame(info: FrameInfo, data: &[u8]) -> Vec<u8> {
        let mut f = FrameEncoder::with_frame_info(info, Vec::new());
        f.write_all(data).unwrap();
        f.finish().unwrap()
    }

    #[test]
    fn lz4_frames_of_every_shape_decompress() {
        let data: Vec<u8> = (0..2_300_000u32)
            .map(|i| {
                (i.wrapping_mul(2_654_435_761) >> (i % 13)) as u8
                    & if i % 3000 < 1500 { 0xff } else { 0x03 }
            })
            .collect();
        let ours = FrameInfo::new()
            .block_size(BlockSize::Max1MB)
            .content_checksum(false);
        let mut out = Vec::new();
        for (info, direct) in [
            (ours.clone(), true),
            (FrameInfo::new().block_size(BlockSize::Max64KB), true),
            (FrameInfo::new().block_size(BlockSize::Max4MB), true),
            (ours.clone().block_mode(BlockMode::Linked), false),
            (ours.clone().block_checksums(true), false),
            (ours.clone().content_checksum(true), false),
            (ours.clone().content_size(Some(0)), false),
        ] {
            // Zeros: a block far smaller than its room's first guess.
            let zeros = vec![0u8; 2_000_000];
            let zinfo = match info.content_size {
                Some(_) => info.clone().content_size(Some(zeros.len() as u64)),
                None => info.clone(),
            };
            let n = decompress(Compression::Lz4, &frame(zinfo, &zeros), &mut out)
                .ok()
                .unwrap();
            assert_eq!(&out[..n], &zeros[..]);
            for len in [0, 1, 70_000, data.len()] {
                let mut info = info.clone();
                if info.content_size.is_some() {
                    info = info.content_size(Some(len as u64));
                }
                let f = frame(info.clone(), &data[..len]);
                assert_eq!(lz4_frame(&f, &mut out).is_some(), direct, "{info:?}");
                let n = decompress(Compression::Lz4, &f, &mut out).ok().unwrap();
                assert_eq!(&out[..n], &data[..len], "{info:?} {len}");
                // Bytes after the frame (the streaming decoder reads them
                // as the start of a next frame: its business).
                let mut longer = f.clone();
                longer.push(0);
                if direct {
                    assert!(matches!(
                        decompress(Compression::Lz4, &longer, &mut out),
                        Err(Lz4Fault::Trailing)
                    ));
                }
                // Cut frames of the direct shape (the others are the
                // streaming decoder's).
                for cut in [f.len() - 1, f.len() / 2, 5].into_iter().filter(|_| direct) {
                    assert!(
                        decompress(Compression::Lz4, &f[..cut], &mut out).is_err(),
                        "{cut}"
                    );
                }
            }
        }
    }
}
