//! A logical backup's TOC (JSON) and the statements it cuts out of
//! `metadata.sql`: input is the TOC, a NUL byte, then the SQL.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cbdr::fuzz_api::logical_toc(data);
});
