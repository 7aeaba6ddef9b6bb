//! Records read back from the repository as JSON: backup and restore-point
//! records, logical backup records and TOCs, and the server's
//! `backup_manifest`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cbdr::fuzz_api::records(data);
});
