//! A restore unpacking one decoded part (a tar stream) into an empty
//! directory, checked against a manifest: input is an optional manifest
//! JSON and a NUL byte, then the tar bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cbdr::fuzz_api::restore_tar(data);
});
