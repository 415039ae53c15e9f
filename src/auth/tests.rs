//! Tests for `Secret` and the SCRAM state machines (interop with `postgres_protocol`).

use super::scram::{ClientCredential, ClientKeys, ScramClient, ScramServer, Verifier};
use super::*;

#[test]
fn secret_parse_classifies() {
    let md5 = format!("md5{}", "0123456789abcdef".repeat(2));
    assert!(matches!(Secret::parse(&md5), Ok(Secret::Md5(s)) if s == md5));
    // Uppercase hex / wrong length are cleartext, as in PostgreSQL.
    let upper = format!("md5{}", "0123456789ABCDEF".repeat(2));
    assert!(matches!(Secret::parse(&upper), Ok(Secret::Plain(_))));
    assert!(matches!(Secret::parse("md5abc"), Ok(Secret::Plain(_))));
    assert!(matches!(Secret::parse("hunter2"), Ok(Secret::Plain(s)) if s == "hunter2"));
    assert!(matches!(Secret::parse(""), Ok(Secret::Plain(_))));
    assert!(matches!(Secret::parse("SCRAM-SHA-256$garbage"), Err(Error::BadVerifier(_))));
    let v = scram::Verifier::from_password("pw", b"saltsalt", 4096).to_string_form();
    assert!(matches!(Secret::parse(&v), Ok(Secret::Scram(_))));
}

#[test]
fn secret_debug_redacts() {
    let v = scram::Verifier::from_password("hunter2", b"saltsalt", 4096);
    let stored = v.to_string_form();
    for (s, name) in [
        (Secret::Plain("hunter2".into()), "Plain"),
        (Secret::Md5(format!("md5{}", "ab".repeat(16))), "Md5"),
        (Secret::Scram(v.clone()), "Scram"),
    ] {
        let d = format!("{s:?}");
        assert_eq!(d, format!("Secret::{name}(<redacted>)"));
    }
    let d = format!("{v:?}");
    assert!(!d.contains(&stored[20..]) && !d.contains("hunter2"), "{d}");
}

// === SCRAM ===

use base64::{engine::general_purpose::STANDARD, Engine as _};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

const RFC_SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
const RFC_CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC_C1: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC_S1: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC_C2: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                      p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC_S2: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

/// Derived once: PBKDF2 is slow in unoptimized test builds.
fn rfc_verifier() -> Verifier {
    static VERIFIER: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
    VERIFIER.get_or_init(|| Verifier::from_password("pencil", &STANDARD.decode(RFC_SALT).unwrap(), 4096)).clone()
}

/// Server at the point where it waits for the client-final of the RFC 7677 exchange.
fn rfc_server_after_first() -> ScramServer {
    let mut server = ScramServer::from_verifier(rfc_verifier());
    let s1 = server.client_first_with_nonce("SCRAM-SHA-256", RFC_C1.as_bytes(), RFC_SERVER_NONCE).unwrap();
    assert_eq!(s1, RFC_S1.as_bytes());
    server
}

/// Full exchange: postgres_protocol's client against our server.
fn pp_login(server: &mut ScramServer, password: &str, cb: ChannelBinding) -> Result<ClientKeys, Error> {
    let mut client = ScramSha256::new(password.as_bytes(), cb);
    let first = server.client_first("SCRAM-SHA-256", client.message())?;
    client.update(&first).unwrap();
    let (last, keys) = server.client_final(client.message())?;
    client.finish(&last).unwrap();
    Ok(keys)
}

/// Full exchange: our client against our server.
fn our_login(server: &mut ScramServer, cred: ClientCredential) -> Result<ClientKeys, Error> {
    let mut client = ScramClient::new(cred);
    let first = server.client_first("SCRAM-SHA-256", &client.client_first())?;
    let fin = client.server_first(&first)?;
    let (last, keys) = server.client_final(&fin)?;
    client.server_final(&last)?;
    Ok(keys)
}

#[test]
fn rfc7677_client_vector() {
    let cred = ClientCredential::Password("pencil".into());
    let mut client = ScramClient::with_nonce(cred, "user", RFC_CLIENT_NONCE);
    assert_eq!(client.client_first(), RFC_C1.as_bytes());
    assert_eq!(client.server_first(RFC_S1.as_bytes()).unwrap(), RFC_C2.as_bytes());
    client.server_final(RFC_S2.as_bytes()).unwrap();
}

#[test]
fn rfc7677_server_vector() {
    let mut server = rfc_server_after_first();
    let (s2, keys) = server.client_final(RFC_C2.as_bytes()).unwrap();
    assert_eq!(s2, RFC_S2.as_bytes());
    assert_eq!(keys.iterations, 4096);
    assert_eq!(keys.server_key, rfc_verifier().server_key);
}

#[test]
fn verifier_round_trip_and_errors() {
    let v = rfc_verifier();
    let text = v.to_string_form();
    assert!(text.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"), "{text}");
    assert_eq!(Verifier::parse(&text).unwrap().to_string_form(), text);
    let pp = postgres_protocol::password::scram_sha_256(b"pw");
    assert_eq!(Verifier::parse(&pp).unwrap().to_string_form(), pp);
    let key = STANDARD.encode([7u8; 32]);
    for bad in [
        String::new(),
        "SCRAM-SHA-256$".into(),
        "SCRAM-SHA-256$4096:c2FsdA==".into(),
        format!("SCRAM-SHA-256$4096:c2FsdA==${key}"),
        format!("SCRAM-SHA-256$0:c2FsdA==${key}:{key}"),
        format!("SCRAM-SHA-256$x:c2FsdA==${key}:{key}"),
        format!("SCRAM-SHA-256$4096:!!${key}:{key}"),
        format!("SCRAM-SHA-256$4096:${key}:{key}"),
        format!("SCRAM-SHA-256$4096:c2FsdA==$c2FsdA==:{key}"),
        format!("SCRAM-SHA-256$4096:c2FsdA==${key}:{key}x"),
        format!("MD5$4096:c2FsdA==${key}:{key}"),
    ] {
        assert!(matches!(Verifier::parse(&bad), Err(Error::BadVerifier(_))), "{bad}");
    }
}

#[test]
fn server_accepts_postgres_protocol_client() {
    // Plaintext secret: the server derives a verifier itself.
    let mut server = ScramServer::new(&Secret::Plain("sekrit".into())).unwrap();
    pp_login(&mut server, "sekrit", ChannelBinding::unsupported()).unwrap();
    // A pg_authid verifier produced by postgres_protocol, via Secret::parse; gs2 flag "y".
    let secret = Secret::parse(&postgres_protocol::password::scram_sha_256(b"sekrit")).unwrap();
    for cb in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
        let mut server = ScramServer::new(&secret).unwrap();
        let keys = pp_login(&mut server, "sekrit", cb).unwrap();
        let Secret::Scram(v) = &secret else { unreachable!() };
        assert_eq!((keys.salt.as_slice(), keys.iterations), (v.salt.as_slice(), v.iterations));
    }
    assert!(ScramServer::new(&Secret::Md5(format!("md5{}", "0".repeat(32)))).is_none());
}

#[test]
fn wrong_password_rejected() {
    let v = Verifier::from_password("right", b"0123456789abcdef", 4096);
    let mut server = ScramServer::from_verifier(v.clone());
    assert!(matches!(pp_login(&mut server, "wrong", ChannelBinding::unsupported()), Err(Error::InvalidProof)));
    // The exchange is over after a failure.
    assert!(matches!(server.client_final(b"c=biws,r=x,p=y"), Err(Error::OutOfOrder)));
    let mut server = ScramServer::from_verifier(v);
    let wrong = ClientCredential::Password("wrong".into());
    assert!(matches!(our_login(&mut server, wrong), Err(Error::InvalidProof)));
}

#[test]
fn client_password_and_passthrough_keys() {
    let v = Verifier::from_password("pw", b"0123456789abcdef", 4096);
    let keys = our_login(&mut ScramServer::from_verifier(v.clone()), ClientCredential::Password("pw".into())).unwrap();
    // Keys recovered from one login are enough for another server with the same verifier.
    let again = our_login(&mut ScramServer::from_verifier(v.clone()), ClientCredential::Keys(keys.clone())).unwrap();
    assert_eq!(again.client_key, keys.client_key);
    // Keys recovered from postgres_protocol's client work too.
    let pp_keys = pp_login(&mut ScramServer::from_verifier(v.clone()), "pw", ChannelBinding::unsupported()).unwrap();
    our_login(&mut ScramServer::from_verifier(v), ClientCredential::Keys(pp_keys)).unwrap();
    // Same password, different salt or iterations: passthrough is impossible.
    for other in [
        Verifier::from_password("pw", b"another salt....", 4096),
        Verifier::from_password("pw", b"0123456789abcdef", 4097),
    ] {
        let mut server = ScramServer::from_verifier(other);
        let mut client = ScramClient::new(ClientCredential::Keys(keys.clone()));
        let first = server.client_first("SCRAM-SHA-256", &client.client_first()).unwrap();
        assert!(matches!(client.server_first(&first), Err(Error::MismatchedSaltOrIterations)));
    }
}

#[test]
fn debug_output_redacts_keys() {
    let keys = our_login(&mut ScramServer::from_verifier(rfc_verifier()), ClientCredential::Password("pencil".into()))
        .unwrap();
    assert_eq!(format!("{keys:?}"), "ClientKeys(<redacted>)");
    let cred = ClientCredential::Password("pencil".into());
    assert!(!format!("{cred:?}").contains("pencil"));
    let client = ScramClient::new(cred);
    assert!(!format!("{client:?}").contains("pencil"));
}

#[test]
fn server_rejects_malformed_client_first() {
    let huge = format!("n,,n=,r={}", "a".repeat(2000));
    let cases: &[(&str, &[u8])] = &[
        ("SCRAM-SHA-256", b""),
        ("SCRAM-SHA-256", b"garbage"),
        ("SCRAM-SHA-256", b"\xff\xfe,,n=,r=abc"),
        ("SCRAM-SHA-256", huge.as_bytes()),
        ("SCRAM-SHA-256", b"n,,"),
        ("SCRAM-SHA-256", b"n,,n="),
        ("SCRAM-SHA-256", b"n,,n=,r="),
        ("SCRAM-SHA-256", b"n,,n=,x=abc"),
        ("SCRAM-SHA-256", b"n,,r=abc"),
        ("SCRAM-SHA-256", b"n,,m=ext,n=,r=abc"),
        ("SCRAM-SHA-256", b"n,a=admin,n=,r=abc"),
        ("SCRAM-SHA-256", b"x,,n=,r=abc"),
        ("SCRAM-SHA-256", b"n,,n=,r=ab c"),
        ("SCRAM-SHA-256", b"n,,n=,r=ab\x7f"),
        ("SCRAM-SHA-256", b"n"),
    ];
    for (mech, data) in cases {
        let mut server = ScramServer::from_verifier(rfc_verifier());
        let res = server.client_first(mech, data);
        assert!(matches!(res, Err(Error::MalformedMessage(_))), "{:?}: {res:?}", String::from_utf8_lossy(data));
    }
    let check = |mech: &str, data: &[u8]| ScramServer::from_verifier(rfc_verifier()).client_first(mech, data);
    assert!(matches!(
        check("SCRAM-SHA-256", b"p=tls-server-end-point,,n=,r=abc"),
        Err(Error::ChannelBindingNotSupported)
    ));
    assert!(matches!(check("SCRAM-SHA-256-PLUS", RFC_C1.as_bytes()), Err(Error::ChannelBindingNotSupported)));
    assert!(matches!(check("SCRAM-SHA-1", RFC_C1.as_bytes()), Err(Error::UnsupportedMechanism)));
    assert!(matches!(check("", b""), Err(Error::UnsupportedMechanism)));
    // Extensions after the nonce are ignored; the username is ignored.
    check("SCRAM-SHA-256", b"n,,n=whoever,r=abc,x=ext").unwrap();
    // Out of order.
    let mut server = ScramServer::from_verifier(rfc_verifier());
    assert!(matches!(server.client_final(RFC_C2.as_bytes()), Err(Error::OutOfOrder)));
    let mut server = rfc_server_after_first();
    assert!(matches!(server.client_first("SCRAM-SHA-256", RFC_C1.as_bytes()), Err(Error::OutOfOrder)));
}

#[test]
fn server_rejects_malformed_client_final() {
    let nonce = format!("{RFC_CLIENT_NONCE}{RFC_SERVER_NONCE}");
    let proof = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    let other_proof = STANDARD.encode([1u8; 32]);
    let huge = format!("c=biws,r={nonce},x={},p={proof}", "a".repeat(2000));
    type Expect = fn(&Error) -> bool;
    let cases: Vec<(String, Expect)> = vec![
        (String::new(), |e| matches!(e, Error::MalformedMessage(_))),
        ("garbage".into(), |e| matches!(e, Error::MalformedMessage(_))),
        (huge, |e| matches!(e, Error::MalformedMessage(_))),
        (format!("c=biws,r={nonce}"), |e| matches!(e, Error::MalformedMessage(_))),
        (format!("r={nonce},p={proof}"), |e| matches!(e, Error::MalformedMessage(_))),
        (format!("c=biws,p={proof}"), |e| matches!(e, Error::MalformedMessage(_))),
        (format!("c=eSws,r={nonce},p={proof}"), |e| matches!(e, Error::MalformedMessage(_))),
        (format!("c=!!,r={nonce},p={proof}"), |e| matches!(e, Error::MalformedMessage(_))),
        (format!("c=biws,r={nonce},p=!!"), |e| matches!(e, Error::MalformedMessage(_))),
        (format!("c=biws,r={nonce},p=c2hvcnQ="), |e| matches!(e, Error::MalformedMessage(_))),
        (format!("c=biws,r={nonce},p={proof},x=trailing"), |e| matches!(e, Error::MalformedMessage(_))),
        (format!("c=biws,r={RFC_CLIENT_NONCE},p={proof}"), |e| matches!(e, Error::NonceMismatch)),
        (format!("c=biws,r={nonce}X,p={proof}"), |e| matches!(e, Error::NonceMismatch)),
        (format!("c=biws,r={nonce},p={other_proof}"), |e| matches!(e, Error::InvalidProof)),
        // Extensions change the AuthMessage, so the RFC proof no longer matches.
        (format!("c=biws,r={nonce},x=ext,p={proof}"), |e| matches!(e, Error::InvalidProof)),
    ];
    for (data, expected) in cases {
        let res = rfc_server_after_first().client_final(data.as_bytes());
        assert!(res.as_ref().is_err_and(expected), "{data}: {res:?}");
    }
}

#[test]
fn client_rejects_malformed_server_messages() {
    let started = || {
        let mut c = ScramClient::with_nonce(ClientCredential::Password("pencil".into()), "user", RFC_CLIENT_NONCE);
        c.client_first();
        c
    };
    let cases: &[&str] = &[
        "",
        "garbage",
        "e=other-error",
        "m=ext,r=rOprNGfwEbeRWgbNEkqO%hv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "r=rOprNGfwEbeRWgbNEkqO%hv",
        "r=rOprNGfwEbeRWgbNEkqO%hv,s=W22ZaJ0SNY7soEsUEjb6gQ==",
        "r=rOprNGfwEbeRWgbNEkqO%hv,s=!!,i=4096",
        "r=rOprNGfwEbeRWgbNEkqO%hv,s=,i=4096",
        "r=rOprNGfwEbeRWgbNEkqO%hv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
        "r=rOprNGfwEbeRWgbNEkqO%hv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
        "r=rOprNGfwEbeRWgbNEkqO%h v,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    ];
    for data in cases {
        let res = started().server_first(data.as_bytes());
        assert!(matches!(res, Err(Error::MalformedMessage(_))), "{data}: {res:?}");
    }
    for data in [
        "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "r=XOprNGfwEbeRWgbNEkqO%hv,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
    ] {
        assert!(matches!(started().server_first(data.as_bytes()), Err(Error::NonceMismatch)), "{data}");
    }
    assert!(matches!(started().server_first(&[b'r'; 5000]), Err(Error::MalformedMessage(_))));
    // Server-final.
    let finished = || {
        let mut c = started();
        c.server_first(RFC_S1.as_bytes()).unwrap();
        c
    };
    assert!(matches!(finished().server_final(b"e=invalid-proof"), Err(Error::ServerRejected)));
    assert!(matches!(finished().server_final(b""), Err(Error::MalformedMessage(_))));
    let wrong = format!("v={}", STANDARD.encode([0u8; 32]));
    for bad in [wrong.as_str(), "v=", "v=!!", "v=c2hvcnQ="] {
        assert!(matches!(finished().server_final(bad.as_bytes()), Err(Error::InvalidServerSignature)), "{bad}");
    }
    // Out of order.
    let mut fresh = ScramClient::new(ClientCredential::Password("x".into()));
    assert!(matches!(fresh.server_first(RFC_S1.as_bytes()), Err(Error::OutOfOrder)));
    assert!(matches!(started().server_final(RFC_S2.as_bytes()), Err(Error::OutOfOrder)));
    let mut done = finished();
    done.server_final(RFC_S2.as_bytes()).unwrap();
    assert!(matches!(done.server_final(RFC_S2.as_bytes()), Err(Error::OutOfOrder)));
}

/// Deterministic mutation fuzzing of both server steps and the client steps: errors, never panics.
#[test]
fn mutated_messages_never_panic() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet = b",=nrcpvsiyme\x00\xff 9+/aA$";
    let mut mutate = |msg: &str| -> Vec<u8> {
        let mut bytes = msg.as_bytes().to_vec();
        for _ in 0..=next() % 4 {
            let pos = (next() as usize) % (bytes.len() + 1);
            match next() % 3 {
                0 if pos < bytes.len() => drop(bytes.remove(pos)),
                1 => bytes.insert(pos, alphabet[(next() as usize) % alphabet.len()]),
                _ => bytes.truncate(pos),
            }
        }
        bytes
    };
    // Keys matching RFC_S1's salt and iterations, so valid mutations reach server_final.
    let (_, keys) = rfc_server_after_first().client_final(RFC_C2.as_bytes()).unwrap();
    for _ in 0..3000 {
        let mut server = ScramServer::from_verifier(rfc_verifier());
        let _ = server.client_first_with_nonce("SCRAM-SHA-256", &mutate(RFC_C1), RFC_SERVER_NONCE);
        let _ = rfc_server_after_first().client_final(&mutate(RFC_C2));
        let keys = keys.clone();
        let mut client = ScramClient::with_nonce(ClientCredential::Keys(keys), "", RFC_CLIENT_NONCE);
        client.client_first();
        let _ = client.server_first(&mutate(RFC_S1));
        let _ = client.server_final(&mutate(RFC_S2));
    }
}

#[test]
fn client_binds_to_the_channel_and_refuses_absurd_iteration_counts() {
    use super::scram::ChannelBinding;
    let data = vec![7u8; 32];
    let mut c = ScramClient::with_nonce(ClientCredential::Password("pencil".into()), "", RFC_CLIENT_NONCE)
        .with_channel_binding(ChannelBinding::TlsServerEndPoint(data.clone()));
    assert_eq!(c.mechanism(), "SCRAM-SHA-256-PLUS");
    let first = String::from_utf8(c.client_first()).unwrap();
    assert!(first.starts_with("p=tls-server-end-point,,n=,r="), "{first}");
    let fin = String::from_utf8(c.server_first(RFC_S1.as_bytes()).unwrap()).unwrap();
    let mut cbind = b"p=tls-server-end-point,,".to_vec();
    cbind.extend_from_slice(&data);
    assert!(fin.starts_with(&format!("c={},", STANDARD.encode(&cbind))), "{fin}");

    // TLS, but the server offers no PLUS: "y" (a server that did offer it sees a downgrade).
    let mut y = ScramClient::new(ClientCredential::Password("x".into())).with_channel_binding(ChannelBinding::Unused);
    assert_eq!(y.mechanism(), "SCRAM-SHA-256");
    assert!(y.client_first().starts_with(b"y,,"));

    // A hostile server's iteration count is refused before any PBKDF2 round.
    let mut c = ScramClient::with_nonce(ClientCredential::Password("x".into()), "", RFC_CLIENT_NONCE);
    c.client_first();
    let hostile = RFC_S1.replace("i=4096", "i=4294967295");
    assert!(matches!(c.server_first(hostile.as_bytes()), Err(Error::TooManyIterations(4294967295))));
}

#[test]
fn server_accepts_channel_binding_over_tls_and_detects_a_downgrade() {
    use super::scram::ChannelBinding;
    let verifier = Verifier::from_password("pencil", b"0123456789abcdef", 4096);
    let end_point = vec![9u8; 32];
    let run = |server_binding: Option<Vec<u8>>, client: ChannelBinding, client_data_ok: bool| {
        let mut server = ScramServer::from_verifier(verifier.clone()).with_channel_binding(server_binding);
        let client_binding = match (&client, client_data_ok) {
            (ChannelBinding::TlsServerEndPoint(_), false) => ChannelBinding::TlsServerEndPoint(vec![1u8; 32]),
            _ => client.clone(),
        };
        let mut c = ScramClient::new(ClientCredential::Password("pencil".into())).with_channel_binding(client_binding);
        let first = c.client_first();
        let s1 = server.client_first(c.mechanism(), &first)?;
        let c2 = c.server_first(&s1)?;
        server.client_final(&c2).map(drop)
    };
    // Bound to the right certificate hash: accepted; the offer lists PLUS first.
    let bound = ChannelBinding::TlsServerEndPoint(end_point.clone());
    assert!(run(Some(end_point.clone()), bound.clone(), true).is_ok());
    let offer = ScramServer::from_verifier(verifier.clone()).with_channel_binding(Some(end_point.clone()));
    assert_eq!(offer.mechanisms(), &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    // Bound to another certificate (a man in the middle's): refused.
    assert!(run(Some(end_point.clone()), bound.clone(), false).is_err());
    // "y" while PLUS was offered: the offer was stripped on the way.
    assert!(matches!(run(Some(end_point.clone()), ChannelBinding::Unused, true), Err(Error::MalformedMessage(_))));
    // "n": a client that does not bind is still served (libpq channel_binding=disable).
    assert!(run(Some(end_point.clone()), ChannelBinding::None, true).is_ok());
    // No TLS: PLUS is neither offered nor accepted, "y" is fine.
    assert!(matches!(run(None, bound, true), Err(Error::ChannelBindingNotSupported)));
    assert!(run(None, ChannelBinding::Unused, true).is_ok());
}

#[test]
fn mock_secret_follows_the_most_common_stored_secret() {
    let scram =
        |it| Secret::Scram(Verifier { iterations: it, salt: vec![1; 16], stored_key: [0; 32], server_key: [0; 32] });
    let md5 = || Secret::Md5(format!("md5{}", "0".repeat(32)));
    let plain = || Secret::Plain("pw".into());
    // No users: PostgreSQL's defaults.
    assert_eq!(MockSecret::default(), MockSecret { iterations: 4096, kind: SecretKind::Scram });
    let all = [scram(10_000), scram(10_000), scram(4096), md5()];
    assert_eq!(MockSecret::typical(all.iter()), MockSecret { iterations: 10_000, kind: SecretKind::Scram });
    // Cleartext secrets are checked with 4096-iteration verifiers; md5 ones have none.
    let all = [plain(), plain(), scram(20_000), md5(), md5(), md5()];
    assert_eq!(MockSecret::typical(all.iter()), MockSecret { iterations: 4096, kind: SecretKind::Md5 });
    // Ties: the larger count, and SCRAM first.
    let all = [scram(4096), scram(8192), md5()];
    assert_eq!(MockSecret::typical(all.iter()), MockSecret { iterations: 8192, kind: SecretKind::Scram });
}

#[test]
fn mock_verifier_salt_is_stable_per_user_and_key() {
    let key = [7u8; 32];
    let a = scram::mock_verifier(&key, "mallory", 4096);
    assert_eq!(a.salt, scram::mock_verifier(&key, "mallory", 10_000).salt);
    assert_eq!(scram::mock_verifier(&key, "mallory", 10_000).iterations, 10_000);
    assert_ne!(a.salt, scram::mock_verifier(&key, "mallet", 4096).salt);
    assert_ne!(a.salt, scram::mock_verifier(&[8u8; 32], "mallory", 4096).salt);
    assert_eq!(a.salt.len(), 16, "the length pgsluice's and PostgreSQL's own verifiers use");
}
