//! Arbitrary config text: parse + validate must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pgsluice::config::Config::from_str(text, std::path::Path::new("/nonexistent/fuzz.toml"));
    }
});
