//! Bytes from the bus between instances: through the bus decoder (what decodes encodes back to
//! the same message), and into a clustered server as every kind of bus input, within bounds.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| peer_signal::cluster_fuzzing::bus(data));
