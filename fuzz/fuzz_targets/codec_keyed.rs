//! Stored objects read with a raw key: the header's encryption fields, the
//! key check, then XChaCha20-Poly1305 STREAM chunks.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cbdr::fuzz_api::codec_keyed(data);
});
