//! Codec throughput: encode and decode through `cbdr::codec` for every
//! compression method, with and without encryption, on two kinds of data
//! generated in-process (deterministic PRNG, nothing downloaded).
//!
//! ```text
//! cargo bench --bench codec                 # everything (about 2-3 minutes on 2 cores)
//! cargo bench --bench codec -- lz4          # only ids containing "lz4"
//! cargo bench --bench codec -- 'encode/pgbench-like/zstd'
//! ```
//!
//! Benchmark ids are `{encode,decode}/{pgbench-like,mixed}/{method}[+enc]`;
//! throughput is in plain (uncompressed) bytes per second. Before the
//! benchmarks run, the size each method gives on each data kind is printed.
//!
//! Data kinds:
//! * `pgbench-like`: 8 KiB heap pages of `pgbench_accounts` rows as after a
//!   short pgbench run (small ints, an 84-char blank-padded filler, some
//!   updated tuples with scattered xmin/abalance). lz4 compresses it ~9×.
//! * `mixed`: text lines of random words, numbers, hex ids and some random
//!   bytes. lz4 compresses it ~1.5-2×.
//!
//! Budget (the whole run takes ~2.5 minutes on 2 idle cores): every
//! benchmark takes 10 equal samples in ~1.5 s after a 0.5 s warm-up. none,
//! lz4 and zstd get 16 MiB of input; lzma and brotli at level 1 are far
//! slower (lzma ~3-30 MiB/s, brotli ~60-250 MiB/s here), so they get the
//! first 1 MiB (lzma) or 4 MiB (brotli) of the same data instead: their
//! ratios and throughputs are measured on that shorter input.

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Duration;

use cbdr::codec::{Codec, Compression, Key};
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};

const MIB: usize = 1024 * 1024;
/// Input size for the fast methods.
const FAST_LEN: usize = 16 * MIB;
/// Input sizes for lzma and brotli (see the module comment).
const LZMA_LEN: usize = MIB;
const BROTLI_LEN: usize = 4 * MIB;
/// The object name: part of the per-object key derivation when encrypted.
const NAME: &str = "seg-1/wal/0000000100000000/000000010000000000000001";
/// A fixed raw 256-bit key (64 hex characters).
const RAW_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// SplitMix64: small, fast and deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `len` bytes of 8 KiB `pgbench_accounts` heap pages (PostgreSQL 15
/// layout): page header, line pointers, and 61 tuples of 121 bytes
/// (MAXALIGNed to 128) from the end of the page: a 24-byte tuple header,
/// aid, bid, abalance and `filler char(84)` (a 1-byte varlena header and 84
/// blanks). About one tuple in three was updated by pgbench: its xmin,
/// ctid and abalance are scattered.
fn pgbench_like(len: usize) -> Vec<u8> {
    const PAGE: usize = 8192;
    const TUPLE: usize = 128;
    const PER_PAGE: usize = 61;
    let mut rng = Rng(0x5eed_0001);
    let mut out = Vec::with_capacity(len + PAGE);
    let mut aid: u32 = 1;
    let mut block: u32 = 0;
    let mut lsn: u64 = 0x1_6000_0028;
    while out.len() < len {
        let mut page = vec![0u8; PAGE];
        lsn += 200 + rng.below(8000);
        let lower = 24 + 4 * PER_PAGE;
        let upper = PAGE - PER_PAGE * TUPLE;
        page[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        page[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        page[12..14].copy_from_slice(&(lower as u16).to_le_bytes());
        page[14..16].copy_from_slice(&(upper as u16).to_le_bytes());
        page[16..18].copy_from_slice(&(PAGE as u16).to_le_bytes());
        page[18..20].copy_from_slice(&(0x2004u16).to_le_bytes());
        for i in 0..PER_PAGE {
            let off = PAGE - (i + 1) * TUPLE;
            // Line pointer: lp_off (15 bits), lp_flags = 1 (normal), lp_len.
            let lp = off as u32 | (1 << 15) | (121 << 17);
            page[24 + 4 * i..28 + 4 * i].copy_from_slice(&lp.to_le_bytes());
            let updated = rng.below(3) == 0;
            let t = &mut page[off..off + TUPLE];
            let (xmin, abalance) = if updated {
                (
                    1000 + rng.below(200_000) as u32,
                    rng.below(10_001) as i32 - 5000,
                )
            } else {
                (740u32, 0i32)
            };
            t[0..4].copy_from_slice(&xmin.to_le_bytes());
            // t_ctid: block (hi, lo) and offset.
            t[12..14].copy_from_slice(&((block >> 16) as u16).to_le_bytes());
            t[14..16].copy_from_slice(&(block as u16).to_le_bytes());
            t[16..18].copy_from_slice(&(i as u16 + 1).to_le_bytes());
            t[18..20].copy_from_slice(&(4u16).to_le_bytes()); // natts
            let infomask: u16 = if updated { 0x2902 } else { 0x0902 };
            t[20..22].copy_from_slice(&infomask.to_le_bytes());
            t[22] = 24; // t_hoff
            t[24..28].copy_from_slice(&aid.to_le_bytes());
            t[28..32].copy_from_slice(&((aid - 1) / 100_000 + 1).to_le_bytes());
            t[32..36].copy_from_slice(&abalance.to_le_bytes());
            t[36] = (85 << 1) | 1; // short varlena header: 84 bytes + itself
            t[37..121].fill(b' ');
            aid += 1;
        }
        block += 1;
        out.extend_from_slice(&page);
    }
    out.truncate(len);
    out
}

/// `len` bytes of text lines like a log or a CSV export: `key=value`
/// fields whose values are random words (from a 2048-word vocabulary),
/// decimal numbers, prices, hex ids and now and then a run of random bytes.
fn mixed(len: usize) -> Vec<u8> {
    let mut rng = Rng(0x5eed_0002);
    let letters = b"etaoinshrdlcumwfgypbvkjxqz";
    let word = |rng: &mut Rng, min: u64, max: u64| -> Vec<u8> {
        let n = (min + rng.below(max - min + 1)) as usize;
        // Skewed towards frequent letters.
        (0..n)
            .map(|_| {
                let r = rng.below(26 * 26) as usize;
                letters[(r as f64).sqrt() as usize % 26]
            })
            .collect()
    };
    let vocab: Vec<Vec<u8>> = (0..2048).map(|_| word(&mut rng, 3, 11)).collect();
    let keys: Vec<Vec<u8>> = (0..24).map(|_| word(&mut rng, 3, 8)).collect();
    let mut out = Vec::with_capacity(len + 256);
    while out.len() < len {
        let fields = 3 + rng.below(6);
        for f in 0..fields {
            if f > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(&keys[rng.below(keys.len() as u64) as usize]);
            out.push(b'=');
            match rng.below(12) {
                0..=5 => out.extend_from_slice(&vocab[rng.below(vocab.len() as u64) as usize]),
                6 | 7 => write!(out, "{}", rng.below(1_000_000)).unwrap(),
                8 => write!(out, "{}.{:02}", rng.below(10_000), rng.below(100)).unwrap(),
                9 | 10 => write!(out, "{:08x}", rng.next() as u32).unwrap(),
                _ => {
                    let n = 4 + rng.below(12) as usize;
                    out.extend((0..n).map(|_| rng.next() as u8));
                }
            }
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

/// Counts what it is given and drops it.
struct Sink(u64);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn encode_len(codec: &Codec, data: &[u8]) -> u64 {
    let mut w = codec.writer(Sink(0), NAME).expect("writer");
    w.write_all(data).expect("encode");
    w.finish().expect("finish").0
}

fn decode_len(codec: &Codec, encoded: &Arc<[u8]>, buf: &mut [u8]) -> u64 {
    let mut r = codec
        .reader(io::Cursor::new(encoded.clone()), NAME)
        .expect("reader");
    let mut total = 0u64;
    loop {
        match r.read(buf).expect("decode") {
            0 => return total,
            n => total += n as u64,
        }
    }
}

struct Setup {
    method: Compression,
    encrypted: bool,
    codec: Codec,
}

impl Setup {
    fn id(&self) -> String {
        let enc = if self.encrypted { "+enc" } else { "" };
        match self.method {
            Compression::None => format!("none{enc}"),
            m => format!("{}-{}{enc}", m.name(), self.codec.level),
        }
    }

    fn input_len(&self) -> usize {
        match self.method {
            Compression::Lzma => LZMA_LEN,
            Compression::Brotli => BROTLI_LEN,
            _ => FAST_LEN,
        }
    }
}

fn setups() -> Vec<Setup> {
    let key = Arc::new(Key::from_text(RAW_KEY).expect("raw key"));
    let mut out = Vec::new();
    for method in Compression::ALL {
        for encrypted in [false, true] {
            let level = (method != Compression::None).then_some(1);
            let codec = Codec::new(method, level, encrypted.then(|| key.clone()));
            out.push(Setup {
                method,
                encrypted,
                codec,
            });
        }
    }
    out
}

fn bench_codec(c: &mut Criterion) {
    let kinds: [(&str, Vec<u8>); 2] = [
        ("pgbench-like", pgbench_like(FAST_LEN)),
        ("mixed", mixed(FAST_LEN)),
    ];
    let setups = setups();

    // Sizes first: they tell whether the generated data is what it claims.
    println!("encoded size (ratio = plain / encoded):");
    for (kind, data) in &kinds {
        for s in setups.iter().filter(|s| !s.encrypted) {
            let input = &data[..s.input_len()];
            let n = encode_len(&s.codec, input);
            println!(
                "  {kind:<13} {:<10} {:>9} -> {:>9} bytes  ratio {:5.2}",
                s.id(),
                input.len(),
                n,
                input.len() as f64 / n as f64
            );
        }
    }

    let mut buf = vec![0u8; 256 * 1024];
    for (kind, data) in &kinds {
        for direction in ["encode", "decode"] {
            let mut group = c.benchmark_group(format!("{direction}/{kind}"));
            // Every iteration takes milliseconds at least: equal-sized
            // samples, few of them.
            group
                .sampling_mode(SamplingMode::Flat)
                .sample_size(10)
                .warm_up_time(Duration::from_millis(500))
                .measurement_time(Duration::from_millis(1500));
            for s in &setups {
                let input = &data[..s.input_len()];
                group.throughput(Throughput::Bytes(input.len() as u64));
                let id = BenchmarkId::from_parameter(s.id());
                if direction == "encode" {
                    group.bench_with_input(id, input, |b, input| {
                        b.iter(|| black_box(encode_len(&s.codec, black_box(input))))
                    });
                } else {
                    let mut w = s.codec.writer(Vec::new(), NAME).expect("writer");
                    w.write_all(input).expect("encode");
                    let encoded: Arc<[u8]> = w.finish().expect("finish").into();
                    assert_eq!(
                        decode_len(&s.codec, &encoded, &mut buf),
                        input.len() as u64,
                        "{kind} {} does not round-trip",
                        s.id()
                    );
                    group.bench_with_input(id, &encoded, |b, encoded| {
                        b.iter(|| black_box(decode_len(&s.codec, black_box(encoded), &mut buf)))
                    });
                }
            }
            group.finish();
        }
    }
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
