//! Round trips and every way an object can go bad.

use std::io::{Read, Write};
use std::sync::Arc;

use super::*;

fn sample(len: usize) -> Vec<u8> {
    // Half compressible, half pseudo-random.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    (0..len)
        .map(|i| {
            if (i / 1000) % 2 == 0 {
                (i % 251) as u8
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

fn raw_key(byte: u8) -> Arc<Key> {
    Arc::new(Key::from_text(&hex::encode([byte; 32])).unwrap())
}

fn small_chunks(mut c: Codec) -> Codec {
    c.chunk_log2 = 12;
    c
}

#[test]
fn every_method_round_trips_with_and_without_encryption() {
    let data = sample(300_000);
    for method in Compression::ALL {
        for key in [None, Some(raw_key(1))] {
            let codec = small_chunks(Codec::new(method, None, key.clone()));
            for len in [0, 1, 4095, 4096, 4097, data.len()] {
                let enc = codec.encode("seg-1/wal/x", &data[..len]).unwrap();
                let dec = codec.decode("seg-1/wal/x", enc).unwrap();
                assert_eq!(
                    dec,
                    &data[..len],
                    "{method} key={} len={len}",
                    key.is_some()
                );
            }
        }
    }
}

#[test]
fn passphrase_objects_round_trip_and_need_the_salt() {
    let key = Key::from_text("a long enough passphrase").unwrap();
    key.set_writer_salt([9; 16]);
    let codec = Codec::new(Compression::Zstd, Some(3), Some(Arc::new(key)));
    let enc = codec.encode("obj", b"hello").unwrap();
    // A reader with the same passphrase but no writer salt can still read.
    let reader_key = Arc::new(Key::from_text("a long enough passphrase").unwrap());
    let reader = Codec::new(Compression::Lz4, None, Some(reader_key));
    assert_eq!(reader.decode("obj", enc.clone()).unwrap(), b"hello");
    let wrong = Codec::new(
        Compression::Lz4,
        None,
        Some(Arc::new(Key::from_text("another passphrase").unwrap())),
    );
    assert!(matches!(
        wrong.decode("obj", enc.clone()),
        Err(CodecError::WrongKey { .. })
    ));
    assert!(matches!(
        Codec::new(Compression::Lz4, None, Some(raw_key(1))).decode("obj", enc),
        Err(CodecError::WrongKeyKind { .. })
    ));
}

#[test]
fn wrong_key_missing_key_and_unexpected_plaintext_are_named() {
    let data = sample(10_000);
    let enc = Codec::new(Compression::Lz4, None, Some(raw_key(1)))
        .encode("o", &data)
        .unwrap();
    let e = Codec::new(Compression::Lz4, None, Some(raw_key(2)))
        .decode("o", enc.clone())
        .unwrap_err();
    assert!(matches!(e, CodecError::WrongKey { .. }), "{e}");
    assert!(e.to_string().contains("wrong encryption key"));
    let e = Codec::new(Compression::Lz4, None, None)
        .decode("o", enc)
        .unwrap_err();
    assert!(matches!(e, CodecError::KeyRequired { .. }), "{e}");
    let plain = Codec::new(Compression::Lz4, None, None)
        .encode("o", &data)
        .unwrap();
    let e = Codec::new(Compression::Lz4, None, Some(raw_key(1)))
        .decode("o", plain)
        .unwrap_err();
    assert!(matches!(e, CodecError::NotEncrypted { .. }), "{e}");
}

#[test]
fn objects_are_bound_to_their_name() {
    let codec = Codec::new(Compression::None, None, Some(raw_key(1)));
    let enc = codec.encode("seg0/wal/A", b"content of A").unwrap();
    let e = codec.decode("seg0/wal/B", enc).unwrap_err();
    assert!(matches!(e, CodecError::Corrupt { chunk: 0, .. }), "{e}");
}

#[test]
fn any_flipped_bit_is_detected() {
    let data = sample(20_000);
    for key in [None, Some(raw_key(1))] {
        let codec = small_chunks(Codec::new(Compression::Lz4, None, key));
        let enc = codec.encode("o", &data).unwrap();
        // Every byte position, one bit each (header, frames, payloads, tags).
        for pos in (0..enc.len()).step_by(7) {
            let mut bad = enc.clone();
            bad[pos] ^= 0x10;
            let r = codec.decode("o", bad);
            assert!(r.is_err(), "flip at {pos} of {} went unnoticed", enc.len());
            assert!(r.unwrap_err().is_integrity(), "flip at {pos}");
        }
    }
}

#[test]
fn truncation_is_detected_at_every_length() {
    let data = sample(20_000);
    for key in [None, Some(raw_key(1))] {
        let codec = small_chunks(Codec::new(Compression::Zstd, None, key));
        let enc = codec.encode("o", &data).unwrap();
        for len in 0..enc.len() {
            let e = codec.decode("o", enc[..len].to_vec()).unwrap_err();
            assert!(e.is_integrity(), "cut at {len}: {e}");
        }
        // Dropping whole trailing chunks is reported as truncation.
        let e = codec
            .decode("o", enc[..enc.len() - 30].to_vec())
            .unwrap_err();
        assert!(e.is_integrity(), "{e}");
        let mut longer = enc.clone();
        longer.extend_from_slice(b"junk");
        assert!(codec.decode("o", longer).unwrap_err().is_integrity());
    }
}

#[test]
fn an_unfinished_writer_leaves_a_truncated_object() {
    let codec = Codec::new(Compression::None, None, Some(raw_key(1)));
    let mut w = codec.writer(Vec::new(), "o").unwrap();
    w.write_all(&sample(1 << 19)).unwrap();
    // Take what reached the output without finishing: simulate a crash.
    let partial: Vec<u8> = {
        let sealer_out = Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Tee(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Tee {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut w2 = codec.writer(Tee(sealer_out.clone()), "o").unwrap();
        w2.write_all(&sample(1 << 19)).unwrap();
        drop(w2);
        let v = sealer_out.lock().unwrap().clone();
        v
    };
    drop(w);
    assert!(partial.len() > 1000);
    let e = codec.decode("o", partial).unwrap_err();
    assert!(matches!(e, CodecError::Truncated { .. }), "{e}");
}

#[test]
fn streaming_read_in_small_pieces() {
    let data = sample(100_000);
    let codec = small_chunks(Codec::new(Compression::Brotli, None, Some(raw_key(3))));
    let enc = codec.encode("o", &data).unwrap();
    let mut r = codec.reader(std::io::Cursor::new(enc), "o").unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 17];
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out, data);
}

/// `decode_in_place` as a caller uses it: one output buffer for many
/// objects.
fn in_place(
    codec: &Codec,
    name: &str,
    enc: &[u8],
    out: &mut Vec<u8>,
) -> Result<Vec<u8>, CodecError> {
    let mut input = enc.to_vec();
    let n = codec.decode_in_place(name, &mut input, out)?;
    Ok(out[..n].to_vec())
}

#[test]
fn in_place_decoding_reads_what_the_stream_reads() {
    // Several chunks, several lz4 blocks (over 1 MiB), empty, tiny.
    let data = sample(2_500_000);
    let mut out = Vec::new();
    for method in Compression::ALL {
        for key in [None, Some(raw_key(1))] {
            for codec in [
                Codec::new(method, None, key.clone()),
                small_chunks(Codec::new(method, None, key.clone())),
            ] {
                for len in [2_500_000, 0, 1, 4097, 1 << 20, 300_000] {
                    let enc = codec.encode("k#3", &data[..len]).unwrap();
                    let got = in_place(&codec, "k#3", &enc, &mut out).unwrap();
                    assert_eq!(
                        got,
                        &data[..len],
                        "{method} key={} len={len}",
                        key.is_some()
                    );
                    // Another name is another key.
                    if key.is_some() {
                        let e = in_place(&codec, "k#4", &enc, &mut out).unwrap_err();
                        assert!(e.is_integrity(), "{e}");
                    }
                }
            }
        }
    }
}

#[test]
fn in_place_decoding_detects_flips_cuts_and_trailing_bytes() {
    let data = sample(20_000);
    let mut out = Vec::new();
    for method in [Compression::Lz4, Compression::None, Compression::Zstd] {
        for key in [None, Some(raw_key(1))] {
            let codec = small_chunks(Codec::new(method, None, key.clone()));
            let enc = codec.encode("o", &data).unwrap();
            for pos in (0..enc.len()).step_by(7) {
                let mut bad = enc.clone();
                bad[pos] ^= 0x10;
                let r = in_place(&codec, "o", &bad, &mut out);
                assert!(
                    r.is_err(),
                    "{method}: flip at {pos} of {} went unnoticed",
                    enc.len()
                );
                assert!(r.unwrap_err().is_integrity(), "{method}: flip at {pos}");
            }
            for len in (0..enc.len()).step_by(3) {
                let e = in_place(&codec, "o", &enc[..len], &mut out).unwrap_err();
                assert!(e.is_integrity(), "{method}: cut at {len}: {e}");
            }
            let mut longer = enc.clone();
            longer.extend_from_slice(b"junk");
            let e = in_place(&codec, "o", &longer, &mut out).unwrap_err();
            assert!(matches!(e, CodecError::Corrupt { .. }), "{e}");
            let e = in_place(
                &Codec::new(method, None, Some(raw_key(2))),
                "o",
                &enc,
                &mut out,
            )
            .unwrap_err();
            let expect_wrong = key.is_some();
            assert!(
                matches!(e, CodecError::WrongKey { .. }) == expect_wrong
                    && matches!(e, CodecError::NotEncrypted { .. }) != expect_wrong,
                "{e}"
            );
        }
    }
}
