//! Bytes into the bincode decoder; whatever decodes must re-encode and decode to the same message.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peer_signal_fuzz::round_trip(peer_signal::Codec::Bincode, data));
