//! The server's tar stream cut into parts (and large files into pieces),
//! each part then read back as a restore reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cbdr::fuzz_api::tar_split(data);
});
