//! Arbitrary sequences of opens, frames, closes, ticks and stops into the state machine; see
//! `peer_signal_fuzz::run` for what is checked after each.
#![no_main]

libfuzzer_sys::fuzz_target!(|ops: Vec<peer_signal_fuzz::Op>| peer_signal_fuzz::run(&ops));
