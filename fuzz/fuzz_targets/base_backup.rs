//! BASE_BACKUP's reply: CopyData messages (each a u16 big-endian length and
//! its payload), the archives' bytes going through the tar splitter as a
//! backup sends them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cbdr::fuzz_api::base_backup(data);
});
