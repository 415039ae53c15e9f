//! `server_auth_methods` (libpq's `require_auth`): which authentication requests pgsluice
//! answers when it logs in to a server. A server pgsluice does not trust must not be able
//! to downgrade the login to a method that hands it the password.
//!
//! Invariant: with the default (nothing configured), a cleartext password is never sent
//! over a connection without TLS; everything else is allowed.

/// One method a server can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `AuthenticationCleartextPassword`.
    Password,
    /// `AuthenticationMD5Password`.
    Md5,
    /// SASL `SCRAM-SHA-256` (with or without channel binding).
    Scram,
    /// `AuthenticationOk` with no authentication at all (trust).
    None,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Password => "password",
            Method::Md5 => "md5",
            Method::Scram => "scram-sha-256",
            Method::None => "none",
        }
    }
}

/// The methods a server may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerAuthMethods {
    /// Bit per [`Method`] allowed.
    allowed: u8,
    /// Set explicitly (else cleartext is refused without TLS).
    explicit: bool,
}

impl Default for ServerAuthMethods {
    fn default() -> Self {
        ServerAuthMethods { allowed: 0b1111, explicit: false }
    }
}

fn bit(m: Method) -> u8 {
    1 << (m as u8)
}

impl ServerAuthMethods {
    /// Parses `scram-sha-256,md5` (only these) or `!password,!md5` (all but these); empty:
    /// the default. Mixing the two forms is an error, as in libpq.
    pub fn parse(spec: &str) -> Result<ServerAuthMethods, String> {
        let words: Vec<&str> = spec.split(',').map(str::trim).filter(|w| !w.is_empty()).collect();
        if words.is_empty() {
            return Ok(ServerAuthMethods::default());
        }
        let negated = words[0].starts_with('!');
        let mut allowed = if negated { 0b1111 } else { 0 };
        for w in &words {
            let (neg, name) = match w.strip_prefix('!') {
                Some(n) => (true, n),
                None => (false, *w),
            };
            if neg != negated {
                return Err(format!("server_auth_methods {spec:?}: negated and plain methods cannot be mixed"));
            }
            let m = match name.to_ascii_lowercase().as_str() {
                "password" => Method::Password,
                "md5" => Method::Md5,
                "scram-sha-256" => Method::Scram,
                "none" => Method::None,
                other => {
                    return Err(format!(
                        "server_auth_methods: unknown method {other:?} (password, md5, scram-sha-256, none)"
                    ))
                }
            };
            if negated {
                allowed &= !bit(m);
            } else {
                allowed |= bit(m);
            }
        }
        if allowed == 0 {
            return Err(format!("server_auth_methods {spec:?} allows no method"));
        }
        Ok(ServerAuthMethods { allowed, explicit: true })
    }

    /// `Err` with the reason when the server may not use `m` (`tls`: the connection is
    /// encrypted).
    pub fn check(&self, m: Method, tls: bool) -> Result<(), String> {
        if self.allowed & bit(m) == 0 {
            return Err(format!(
                "server asked for {} authentication, which server_auth_methods does not allow",
                m.name()
            ));
        }
        if m == Method::Password && !tls && !self.explicit {
            return Err("server asked for a cleartext password over a connection without TLS: refused (use TLS, or \
                 list `password` in server_auth_methods to allow it)"
                .into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_refuses_cleartext_without_tls_only() {
        let d = ServerAuthMethods::default();
        assert!(d.check(Method::Password, false).unwrap_err().contains("without TLS"));
        for m in [Method::Password, Method::Md5, Method::Scram, Method::None] {
            assert!(d.check(m, true).is_ok());
        }
        assert!(d.check(Method::Md5, false).is_ok());
    }

    #[test]
    fn lists_and_negations() {
        let scram = ServerAuthMethods::parse("scram-sha-256").unwrap();
        assert!(scram.check(Method::Scram, false).is_ok());
        for m in [Method::Password, Method::Md5, Method::None] {
            assert!(scram.check(m, true).unwrap_err().contains("does not allow"), "{m:?}");
        }
        let no_md5 = ServerAuthMethods::parse("!md5, !none").unwrap();
        assert!(no_md5.check(Method::Md5, true).is_err() && no_md5.check(Method::None, true).is_err());
        assert!(no_md5.check(Method::Password, false).is_ok(), "set explicitly: the operator's choice");
        assert!(ServerAuthMethods::parse("md5,!password").is_err());
        assert!(ServerAuthMethods::parse("kerberos").is_err());
        assert!(ServerAuthMethods::parse("!password,!md5,!scram-sha-256,!none").is_err());
        assert_eq!(ServerAuthMethods::parse(" ").unwrap(), ServerAuthMethods::default());
    }
}
