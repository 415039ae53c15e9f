//! Client bytes through the relay's scanner, in two arbitrary chunks.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgsluice::frontend::relay::{scan_client, Half, ScanPos, Txn};

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    let (mut buf, mut pos, mut txn) = (bytes::BytesMut::new(), ScanPos::default(), Txn::new());
    for chunk in [&data[..split], &data[split..]] {
        buf.extend_from_slice(chunk);
        if scan_client(&mut Half { buf: &mut buf, pos: &mut pos }, &mut txn, 1 << 20).is_err() {
            return;
        }
    }
});
