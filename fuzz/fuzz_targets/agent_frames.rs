//! The agent protocol: length-prefixed JSON frames, read as the agent
//! reads a client's and the coordinator reads an agent's.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cbdr::fuzz_api::agent_frames(data);
});
