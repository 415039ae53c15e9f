//! PostgreSQL MD5 password authentication (`AuthenticationMD5Password`, subtype 5), both sides.
//!
//! The wire response is `"md5" || hex(md5(hex(md5(password || user)) || salt))`. Since a stored
//! `Secret::Md5` is `"md5" || hex(md5(password || user))`, both cleartext and MD5 secrets can verify
//! a client and answer a server; SCRAM verifiers cannot. Verification is constant time.

use ::md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::Secret;

/// A fresh random salt for `AuthenticationMD5Password`.
pub fn random_salt() -> [u8; 4] {
    rand::random()
}

/// Verify a client's PasswordMessage for AuthenticationMD5Password(salt). `response` excludes the
/// trailing NUL. Works for Plain and Md5 secrets; false for Scram. Constant time.
pub fn verify(secret: &Secret, user: &str, salt: [u8; 4], response: &[u8]) -> bool {
    self::response(secret, user, salt).is_some_and(|expected| bool::from(expected.as_bytes().ct_eq(response)))
}

/// What pgsluice sends to a server asking for MD5: from Plain or Md5 secret; None for Scram.
pub fn response(secret: &Secret, user: &str, salt: [u8; 4]) -> Option<String> {
    let inner = match secret {
        Secret::Plain(password) => hex_md5(&[password.as_bytes(), user.as_bytes()]),
        // `Secret::parse` guarantees "md5" + 32 hex; a hand-built value is used as is.
        Secret::Md5(hash) => hash.strip_prefix("md5").unwrap_or(hash).to_owned(),
        Secret::Scram(_) => return None,
    };
    Some(format!("md5{}", hex_md5(&[inner.as_bytes(), &salt])))
}

fn hex_md5(parts: &[&[u8]]) -> String {
    let mut md5 = Md5::new();
    for part in parts {
        md5.update(part);
    }
    md5.finalize()
        .iter()
        .flat_map(|b| [b >> 4, b & 0xf])
        .map(|n| char::from(b"0123456789abcdef"[usize::from(n)]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::md5_hash;

    #[test]
    fn matches_postgres_protocol() {
        let salt = [0xde, 0xad, 0xbe, 0xef];
        let expected = md5_hash(b"alice", b"s3cret", salt);
        let plain = Secret::Plain("s3cret".into());
        // pg_authid form: "md5" + hex(md5(password || user)).
        let stored = postgres_protocol::password::md5(b"s3cret", "alice");
        let md5 = Secret::parse(&stored).unwrap();
        assert!(matches!(md5, Secret::Md5(_)));
        for secret in [&plain, &md5] {
            assert_eq!(response(secret, "alice", salt).as_deref(), Some(&*expected));
            assert!(verify(secret, "alice", salt, expected.as_bytes()));
            assert!(!verify(secret, "alice", [0; 4], expected.as_bytes()));
            assert!(!verify(secret, "alice", salt, &expected.as_bytes()[..34]));
            assert!(!verify(secret, "alice", salt, b""));
        }
        // The user is only mixed in for a cleartext secret (an MD5 secret already contains it).
        assert!(!verify(&plain, "bob", salt, expected.as_bytes()));
        let wrong = md5_hash(b"alice", b"wrong", salt);
        assert!(!verify(&plain, "alice", salt, wrong.as_bytes()));
    }

    #[test]
    fn scram_secret_cannot_do_md5() {
        let v = crate::auth::scram::Verifier::from_password("pw", b"salt", 4096);
        let secret = Secret::Scram(v);
        assert_eq!(response(&secret, "u", [1, 2, 3, 4]), None);
        let guess = md5_hash(b"u", b"pw", [1, 2, 3, 4]);
        assert!(!verify(&secret, "u", [1, 2, 3, 4], guess.as_bytes()));
    }

    #[test]
    fn random_salts_differ() {
        let salts: Vec<_> = (0..8).map(|_| random_salt()).collect();
        assert!(salts.iter().any(|s| *s != salts[0]));
    }
}
