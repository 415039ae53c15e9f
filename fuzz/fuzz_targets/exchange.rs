//! Client and server bytes through the exchange's two scanners (`pgsluice::exchange`), in
//! arbitrary chunks, with and without prepared-statement tracking and statement mode.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pgsluice::exchange::fuzz_logic(data));
