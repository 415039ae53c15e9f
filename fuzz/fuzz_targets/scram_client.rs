//! pgsluice's SCRAM client (`pgsluice::auth::scram::ScramClient`, logging in to a server)
//! against server-first and server-final messages that are either the real ones from
//! pgsluice's own `ScramServer`, edited one byte, or arbitrary (with the client's nonce
//! and the salt spliced in where the input has bytes 0x01 and 0x02). Passthrough keys,
//! so no PBKDF2 per input. Properties: the unedited exchange always succeeds; the server
//! accepts the client's proof only for the real server-first message; an edited
//! server-final is always refused; any accepted server-final carries the real signature.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pgsluice::auth::scram::{ChannelBinding, ClientCredential, ClientKeys, ScramClient, ScramServer, Verifier};

/// A verifier and the passthrough keys of a login against it (one PBKDF2, at start).
fn setup() -> &'static (Verifier, ClientKeys) {
    static S: OnceLock<(Verifier, ClientKeys)> = OnceLock::new();
    S.get_or_init(|| {
        let v = Verifier::from_password("pencil", b"0123456789abcdef", 4096);
        let mut server = ScramServer::from_verifier(v.clone());
        let mut client = ScramClient::new(ClientCredential::Password("pencil".into()));
        let s1 = server.client_first(client.mechanism(), &client.client_first()).unwrap();
        let c2 = client.server_first(&s1).unwrap();
        let (s2, keys) = server.client_final(&c2).unwrap();
        client.server_final(&s2).unwrap();
        (v, keys)
    })
}

/// Takes `n` bytes from the front of `data` (fewer at its end).
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (a, b) = data.split_at(n.min(data.len()));
    *data = b;
    a
}

/// The message the client sees: the real one, one byte of it replaced, or the input's own
/// bytes (0x01 → the client's nonce, 0x02 → the base64 salt).
fn message(mode: u8, real: &[u8], data: &mut &[u8], nonce: &str, salt: &str) -> Vec<u8> {
    match mode % 3 {
        0 => real.to_vec(),
        1 => {
            let mut m = real.to_vec();
            let e = take(data, 3);
            if e.len() == 3 && !m.is_empty() {
                let at = usize::from(u16::from_le_bytes([e[0], e[1]])) % m.len();
                m[at] = if m[at] == e[2] { e[2].wrapping_add(1) } else { e[2] };
            }
            m
        }
        _ => {
            let n = take(data, 1).first().map_or(0, |&n| usize::from(n));
            let mut m = Vec::new();
            for &b in take(data, n) {
                match b {
                    1 => m.extend_from_slice(nonce.as_bytes()),
                    2 => m.extend_from_slice(salt.as_bytes()),
                    b => m.push(b),
                }
            }
            m
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut data)) = data.split_first() else { return };
    let (verifier, keys) = setup();
    let end_point = vec![7u8; 32];
    let (client_binding, server_binding) = match (mode >> 4) % 3 {
        0 => (ChannelBinding::None, None),
        1 => (ChannelBinding::Unused, None),
        _ => (ChannelBinding::TlsServerEndPoint(end_point.clone()), Some(end_point)),
    };
    let mut server = ScramServer::from_verifier(verifier.clone()).with_channel_binding(server_binding);
    let mut client = ScramClient::new(ClientCredential::Keys(keys.clone())).with_channel_binding(client_binding);
    assert!(!client.derives_keys());
    let c1 = client.client_first();
    let nonce = std::str::from_utf8(&c1).unwrap().rsplit("r=").next().unwrap().to_string();
    let s1 = server.client_first(client.mechanism(), &c1).expect("the server accepts the client-first message");
    let salt = std::str::from_utf8(&s1).unwrap().split(',').nth(1).unwrap().trim_start_matches("s=").to_string();

    let s1_seen = message(mode, &s1, &mut data, &nonce, &salt);
    let c2 = match client.server_first(&s1_seen) {
        Ok(c2) => c2,
        Err(e) => {
            assert!(s1_seen != s1, "the real server-first message was refused: {e:?}");
            assert!(client.server_final(b"v=").is_err(), "a failed client goes on");
            return;
        }
    };
    let accepted = server.client_final(&c2);
    assert_eq!(accepted.is_ok(), s1_seen == s1, "server verdict on a proof over {s1_seen:?}");
    let Ok((s2, _)) = accepted else { return };

    let s2_mode = mode >> 2;
    let s2_seen = message(s2_mode, &s2, &mut data, &nonce, &salt);
    let r = client.server_final(&s2_seen);
    match s2_mode % 3 {
        0 => assert!(r.is_ok(), "the real server-final message was refused: {r:?}"),
        1 if s2_seen != s2 => assert!(r.is_err(), "an edited server signature was accepted: {s2_seen:?}"),
        _ => {}
    }
    if r.is_ok() {
        let sig = s2_seen.split(|&b| b == b',').next().unwrap_or_default();
        assert_eq!(sig, &s2[..], "a server-final without the real signature was accepted");
    }
    assert!(client.server_final(&s2).is_err(), "a finished client accepts another server-final");
});
