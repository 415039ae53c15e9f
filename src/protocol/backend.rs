//! Views of backend (server → client) messages the pooler must read: authentication
//! requests and login-time ParameterStatus/BackendKeyData, ErrorResponse fields, and the
//! ReadyForQuery status byte. All views borrow from the frame body.

use super::{cstr, read_i32, Error};

/// An authentication request (`R`) from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    /// Authentication succeeded.
    Ok,
    /// Send the password in clear text.
    Cleartext,
    /// Send the md5-hashed password with this salt.
    Md5 {
        /// Four salt bytes.
        salt: [u8; 4],
    },
    /// Start SASL with one of the listed mechanisms (`name\0name\0\0`).
    Sasl {
        /// Raw mechanism list.
        mechanisms: &'a [u8],
    },
    /// SASL challenge data.
    SaslContinue(&'a [u8]),
    /// SASL outcome data.
    SaslFinal(&'a [u8]),
    /// A method the pooler does not implement (Kerberos, GSS, SSPI).
    Unsupported(i32),
}

/// Parses an `R` message body.
pub fn parse_auth_request(body: &[u8]) -> Result<AuthRequest<'_>, Error> {
    let (code, rest) = read_i32(body).ok_or(Error::Malformed("Authentication"))?;
    Ok(match code {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => {
            let s: [u8; 4] = rest.try_into().map_err(|_| Error::Malformed("AuthenticationMD5Password"))?;
            AuthRequest::Md5 { salt: s }
        }
        10 => AuthRequest::Sasl { mechanisms: rest },
        11 => AuthRequest::SaslContinue(rest),
        12 => AuthRequest::SaslFinal(rest),
        other => AuthRequest::Unsupported(other),
    })
}

/// Whether the SASL mechanism list of an `AuthenticationSASL` contains `name`.
pub fn sasl_has_mechanism(mut mechanisms: &[u8], name: &str) -> bool {
    while let Some((m, rest)) = cstr(mechanisms) {
        if m.is_empty() {
            break;
        }
        if m == name.as_bytes() {
            return true;
        }
        mechanisms = rest;
    }
    false
}

/// Parses a `ParameterStatus` body into (name, value).
pub fn parse_parameter_status(body: &[u8]) -> Result<(&str, &str), Error> {
    let err = Error::Malformed("ParameterStatus");
    let (name, rest) = cstr(body).ok_or(err)?;
    let (value, _) = cstr(rest).ok_or(err)?;
    match (std::str::from_utf8(name), std::str::from_utf8(value)) {
        (Ok(n), Ok(v)) => Ok((n, v)),
        _ => Err(err),
    }
}

/// Parses a `BackendKeyData` body into (pid, secret). The secret may be longer than 4 bytes
/// in protocol 3.2.
pub fn parse_backend_key_data(body: &[u8]) -> Result<(i32, &[u8]), Error> {
    let (pid, secret) = read_i32(body).ok_or(Error::Malformed("BackendKeyData"))?;
    if secret.len() < 4 || secret.len() > 256 {
        return Err(Error::Malformed("BackendKeyData"));
    }
    Ok((pid, secret))
}

/// Fields of an ErrorResponse/NoticeResponse that the pooler reports or reacts to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    /// `S`: localized severity.
    pub severity: &'a str,
    /// `V`: severity, never localized (PostgreSQL 9.6+; empty if absent).
    pub severity_v: &'a str,
    /// `C`: SQLSTATE code.
    pub code: &'a str,
    /// `M`: primary message.
    pub message: &'a str,
}

impl ErrorFields<'_> {
    /// FATAL or PANIC: the server closes the connection after it.
    pub fn is_fatal(&self) -> bool {
        let sev = if self.severity_v.is_empty() { self.severity } else { self.severity_v };
        sev == "FATAL" || sev == "PANIC"
    }
}

/// Parses the fields of an ErrorResponse body we care about; unknown fields are skipped.
pub fn parse_error_fields(mut body: &[u8]) -> ErrorFields<'_> {
    let mut f = ErrorFields::default();
    while let Some((&kind, rest)) = body.split_first() {
        if kind == 0 {
            break;
        }
        let Some((value, rest)) = cstr(rest) else { break };
        let value = std::str::from_utf8(value).unwrap_or("");
        match kind {
            b'S' => f.severity = value,
            b'V' => f.severity_v = value,
            b'C' => f.code = value,
            b'M' => f.message = value,
            _ => {}
        }
        body = rest;
    }
    f
}

/// The text values of a DataRow (`None` for NULL); `None` if malformed or not UTF-8.
pub fn parse_data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let n = u16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut rest = &body[2..];
    let mut values = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
        rest = &rest[4..];
        if len < 0 {
            values.push(None);
            continue;
        }
        let v = rest.get(..len as usize)?;
        values.push(Some(std::str::from_utf8(v).ok()?.to_string()));
        rest = &rest[len as usize..];
    }
    Some(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_requests() {
        assert_eq!(parse_auth_request(&[0, 0, 0, 0]), Ok(AuthRequest::Ok));
        assert_eq!(parse_auth_request(&[0, 0, 0, 5, 1, 2, 3, 4]), Ok(AuthRequest::Md5 { salt: [1, 2, 3, 4] }));
        assert!(parse_auth_request(&[0, 0, 0, 5, 1]).is_err());
        assert!(parse_auth_request(&[0, 0]).is_err());
        let AuthRequest::Sasl { mechanisms } =
            parse_auth_request(b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0").unwrap()
        else {
            panic!("not sasl")
        };
        assert!(sasl_has_mechanism(mechanisms, "SCRAM-SHA-256"));
        assert!(!sasl_has_mechanism(mechanisms, "SCRAM-SHA-1"));
    }

    #[test]
    fn error_fields() {
        let f = parse_error_fields(b"SFATAL\0C28P01\0Mbad password\0Rauth.c\0\0");
        assert_eq!((f.severity, f.code, f.message), ("FATAL", "28P01", "bad password"));
        assert_eq!(parse_error_fields(b"Sx"), ErrorFields::default());
    }

    #[test]
    fn parameter_status_and_key() {
        assert_eq!(parse_parameter_status(b"TimeZone\0UTC\0"), Ok(("TimeZone", "UTC")));
        assert!(parse_parameter_status(b"TimeZone\0UTC").is_err());
        assert_eq!(parse_backend_key_data(&[0, 0, 0, 9, 1, 2, 3, 4]), Ok((9, &[1, 2, 3, 4][..])));
        assert!(parse_backend_key_data(&[0, 0, 0, 9]).is_err());
    }

    #[test]
    fn data_row_values() {
        let mut body = vec![0, 3];
        body.extend_from_slice(&1i32.to_be_bytes());
        body.push(b't');
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(b"0/1");
        assert_eq!(super::parse_data_row(&body), Some(vec![Some("t".into()), None, Some("0/1".into())]));
        assert_eq!(super::parse_data_row(&body[..body.len() - 1]), None);
        assert_eq!(super::parse_data_row(&[0]), None);
    }
}
