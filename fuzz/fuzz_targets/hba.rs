//! The HBA parser (`pgsluice::auth::hba`) on arbitrary text, with `@file` includes answered
//! from the name (or refused): never panics, errors name a line, and first-match
//! semantics hold on a set of probe connections: a catch-all `reject` appended changes
//! only what matched nothing, and a catch-all `trust` put first decides every TCP probe.
#![no_main]
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use pgsluice::auth::hba::{Conn, Hba, Method};

fn include(name: &str) -> Result<String, String> {
    if name.starts_with('e') {
        Err(format!("no file {name}"))
    } else {
        Ok(format!("{name}\n# comment, x\n\"{name}2\", app\tpostgres"))
    }
}

fn probes() -> Vec<Conn> {
    let host = |ip: &str, tls| Conn::Host { addr: ip.parse::<IpAddr>().unwrap(), tls };
    vec![
        Conn::Local,
        host("127.0.0.1", true),
        host("10.1.2.3", false),
        host("192.168.0.200", true),
        host("::1", false),
        host("::ffff:10.1.2.3", true),
        host("2001:db8::7", false),
    ]
}

const NAMES: [&str; 4] = ["app", "postgres", "x", "all"];

fn methods(hba: &Hba) -> Vec<Option<Method>> {
    let mut out = Vec::new();
    for conn in probes() {
        for db in NAMES {
            for user in NAMES {
                out.push(hba.method(conn, db, user));
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let hba = match Hba::parse(text, &include) {
        Ok(h) => h,
        Err(e) => {
            let n: usize = e
                .strip_prefix("line ")
                .and_then(|r| r.split(':').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("error without a line number: {e:?}"));
            assert!(n >= 1 && n <= text.lines().count(), "{e}");
            return;
        }
    };
    let before = methods(&hba);
    if hba.is_empty() {
        assert!(before.iter().all(Option::is_none), "an empty file lets a connection in");
    }

    let rejecting = Hba::parse(&format!("{text}\nhost all all all reject\nlocal all all reject"), &include)
        .expect("catch-all rules appended to a valid file parse");
    assert_eq!(rejecting.len(), hba.len() + 2);
    let after = methods(&rejecting);
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(*a, b.or(Some(Method::Reject)), "first match changed by a rule after it");
    }

    let trusting = Hba::parse(&format!("host all all all trust\n{text}"), &include).expect("a rule put first parses");
    assert_eq!(trusting.len(), hba.len() + 1);
    let first = methods(&trusting);
    let per_conn = NAMES.len() * NAMES.len();
    for (i, (m, b)) in first.iter().zip(&before).enumerate() {
        if i < per_conn {
            assert_eq!(m, b, "a host rule decided a local connection");
        } else {
            assert_eq!(*m, Some(Method::Trust), "the first rule did not decide");
        }
    }
});
