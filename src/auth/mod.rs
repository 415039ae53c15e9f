//! Authentication primitives: secrets, SCRAM-SHA-256 (both sides), MD5 and the `auth_file`.
//!
//! Everything here is sans-IO: functions take and return message *payloads* (the bytes inside
//! `AuthenticationSASL*` / `PasswordMessage`), never touch sockets and never block on anything but
//! CPU. Framing the `R`/`p` messages is the caller's job.
//!
//! Invariants:
//! * No secret (password, MD5 hash, SCRAM keys) ever appears in `Debug` output or in an [`Error`].
//! * Comparisons against secrets are constant time (`subtle`).
//! * No input, however malformed or large, can make this module panic; bad input is an [`Error`].
//! * A stored SCRAM verifier never runs PBKDF2 at login; only [`Secret::Plain`] does, and callers
//!   should cache [`scram::verifier_for_plain`] at config load instead (see [`scram::ScramServer::new`]).

use std::fmt;

pub mod hba;
pub mod md5;
pub mod require;
pub mod scram;
pub mod throttle;
pub mod userlist;

/// A user's secret as stored in the auth_file (PgBouncer userlist.txt format) or in config.
#[derive(Clone)]
pub enum Secret {
    /// A cleartext password.
    Plain(String),
    /// A `pg_authid`-style MD5 hash: `"md5"` followed by 32 lowercase hex digits of `md5(password || user)`.
    Md5(String),
    /// A `pg_authid`-style SCRAM-SHA-256 verifier.
    Scram(scram::Verifier),
}

// === impl Secret ===

impl PartialEq for Secret {
    /// Same stored form (constant-time is not needed: both sides come from config files).
    fn eq(&self, other: &Secret) -> bool {
        match (self, other) {
            (Secret::Plain(a), Secret::Plain(b)) | (Secret::Md5(a), Secret::Md5(b)) => a == b,
            (Secret::Scram(a), Secret::Scram(b)) => {
                a.iterations == b.iterations
                    && a.salt == b.salt
                    && a.stored_key == b.stored_key
                    && a.server_key == b.server_key
            }
            _ => false,
        }
    }
}

impl Secret {
    /// Classify a stored secret the way PostgreSQL does: `"md5"` + 32 lowercase hex digits is an
    /// MD5 hash, a `SCRAM-SHA-256$` prefix is a verifier (an error if malformed), anything else is
    /// a cleartext password.
    pub fn parse(s: &str) -> Result<Secret, Error> {
        if s.starts_with("SCRAM-SHA-256$") {
            return scram::Verifier::parse(s).map(Secret::Scram);
        }
        let is_md5 =
            s.len() == 35 && s.starts_with("md5") && s.bytes().skip(3).all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        Ok(if is_md5 { Secret::Md5(s.to_owned()) } else { Secret::Plain(s.to_owned()) })
    }
}

/// What a login of an unknown user imitates, so that its answers and its timing match those
/// of the users that exist: the SCRAM iteration count most of them have (in the mock
/// verifier's server-first message), and the kind of secret most of them have (the work a
/// cleartext password check does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MockSecret {
    /// PBKDF2 iterations of the mock SCRAM verifier.
    pub iterations: u32,
    /// The most common kind of stored secret.
    pub kind: SecretKind,
}

/// A stored secret's form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretKind {
    /// Cleartext.
    Plain,
    /// MD5 hash.
    Md5,
    /// SCRAM verifier.
    Scram,
}

impl MockSecret {
    /// The most common iteration count and kind among `secrets` (ties: the larger count, and
    /// SCRAM before MD5 before cleartext). With no secrets: PostgreSQL's defaults (4096, SCRAM).
    pub fn typical<'a>(secrets: impl Iterator<Item = &'a Secret>) -> MockSecret {
        use std::collections::HashMap;
        let mut iterations: HashMap<u32, usize> = HashMap::new();
        let mut kinds: HashMap<SecretKind, usize> = HashMap::new();
        for s in secrets {
            let (kind, it) = match s {
                Secret::Plain(_) => (SecretKind::Plain, Some(scram::DEFAULT_ITERATIONS)),
                Secret::Md5(_) => (SecretKind::Md5, None),
                Secret::Scram(v) => (SecretKind::Scram, Some(v.iterations)),
            };
            *kinds.entry(kind).or_default() += 1;
            if let Some(it) = it {
                *iterations.entry(it).or_default() += 1;
            }
        }
        let rank = |k: &SecretKind| match k {
            SecretKind::Scram => 2,
            SecretKind::Md5 => 1,
            SecretKind::Plain => 0,
        };
        MockSecret {
            iterations: iterations
                .into_iter()
                .max_by_key(|&(it, n)| (n, it))
                .map_or(scram::DEFAULT_ITERATIONS, |p| p.0),
            kind: kinds.into_iter().max_by_key(|(k, n)| (*n, rank(k))).map_or(SecretKind::Scram, |p| p.0),
        }
    }
}

impl Default for MockSecret {
    fn default() -> Self {
        MockSecret::typical(std::iter::empty())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Secret::Plain(_) => "Secret::Plain(<redacted>)",
            Secret::Md5(_) => "Secret::Md5(<redacted>)",
            Secret::Scram(_) => "Secret::Scram(<redacted>)",
        })
    }
}

/// Authentication failure. Carries only static context, never secret material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A SASL message did not follow the RFC 5802 grammar, or exceeded the size cap.
    #[error("malformed SCRAM message: {0}")]
    MalformedMessage(&'static str),
    /// A message arrived in the wrong state of the exchange (or after it finished or failed).
    #[error("SCRAM message out of order")]
    OutOfOrder,
    /// The client's proof did not match the stored key: wrong password.
    #[error("invalid SCRAM client proof")]
    InvalidProof,
    /// The nonce in a message does not extend / equal the one negotiated.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The client asked for a SASL mechanism other than `SCRAM-SHA-256`.
    #[error("unsupported SASL mechanism")]
    UnsupportedMechanism,
    /// The client requested channel binding (`p=...` or `SCRAM-SHA-256-PLUS`), which we never offer.
    #[error("SCRAM channel binding is not supported")]
    ChannelBindingNotSupported,
    /// SCRAM passthrough: the server's salt or iteration count differ from those of the client keys.
    #[error("server SCRAM salt or iteration count differ from the client keys")]
    MismatchedSaltOrIterations,
    /// A stored `SCRAM-SHA-256$...` verifier is malformed.
    #[error("malformed SCRAM verifier: {0}")]
    BadVerifier(&'static str),
    /// The server-final-message signature did not match: the server does not know the verifier.
    #[error("invalid SCRAM server signature")]
    InvalidServerSignature,
    /// The server's iteration count is above [`scram::MAX_SERVER_ITERATIONS`]: answering it
    /// would burn CPU for a server that may be hostile.
    #[error("server asked for {0} SCRAM iterations, more than the limit of 1000000")]
    TooManyIterations(u32),
    /// The server answered the client-final-message with `e=...`.
    #[error("server rejected SCRAM authentication")]
    ServerRejected,
    /// A malformed line in the auth_file (1-based line number).
    #[error("auth_file line {line}: {reason}")]
    Userlist {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
}

#[cfg(test)]
mod tests;
