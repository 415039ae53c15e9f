//! Startup-family packets (StartupMessage, SSLRequest, CancelRequest) and their parameters.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::protocol::frontend::{parse_startup, startup_params, StartupPacket};

fuzz_target!(|data: &[u8]| {
    if let Ok(StartupPacket::Startup { params, .. }) = parse_startup(data) {
        for p in startup_params(params) {
            let _ = p;
        }
    }
});
