//! Streaming replication: the CopyData messages of START_REPLICATION
//! (XLogData, keepalive) and the end-of-timeline row.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cbdr::fuzz_api::replication(data);
});
