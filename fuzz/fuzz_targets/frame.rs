//! Bytes into the WebSocket frame reader, in one read and in reads of varying sizes: the same
//! messages and the same violation either way, none over the limit, text always UTF-8.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peer_signal::ws_fuzzing::frame(data));
