//! Stored objects read without a key: the object header, then the chunk
//! frames (length, CRC32) and the decompressor behind them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cbdr::fuzz_api::codec_plain(data);
});
