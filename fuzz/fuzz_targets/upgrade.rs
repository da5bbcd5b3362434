//! Bytes into the upgrade request's head scan (resumed read after read) and parser.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peer_signal::ws_fuzzing::upgrade(data));
