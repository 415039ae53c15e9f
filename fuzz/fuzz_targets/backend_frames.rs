//! Server messages through the views the pooler uses (login and error handling).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::protocol::{backend, split_frame};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((tag, body, r))) = split_frame(rest, 1 << 20) {
        match tag {
            b'R' => drop(backend::parse_auth_request(body)),
            b'S' => drop(backend::parse_parameter_status(body)),
            b'K' => drop(backend::parse_backend_key_data(body)),
            _ => drop(backend::parse_error_fields(body)),
        }
        rest = r;
    }
});
