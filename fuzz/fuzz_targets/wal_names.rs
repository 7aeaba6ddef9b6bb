//! WAL file names (from archive_command, listings of the repository) and
//! timeline history files.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cbdr::fuzz_api::wal_names(data);
});
