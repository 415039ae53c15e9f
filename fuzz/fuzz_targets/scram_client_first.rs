//! Arbitrary SCRAM client messages against the server state machine.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::auth::scram::{ScramServer, Verifier};

fuzz_target!(|data: &[u8]| {
    let v = Verifier { iterations: 4096, salt: vec![1; 16], stored_key: [2; 32], server_key: [3; 32] };
    let mut s = ScramServer::from_verifier(v);
    let mid = data.len() / 2;
    if s.client_first("SCRAM-SHA-256", &data[..mid]).is_ok() {
        let _ = s.client_final(&data[mid..]);
    }
});
