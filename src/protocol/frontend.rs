//! Views of frontend (client → server) messages the pooler must read: the untagged startup
//! family (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) and the authentication
//! responses. Everything else a client sends is relayed as opaque bytes.

use super::{cstr, read_i32, Error};

/// `SSLRequest` code (1234.5679).
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// `GSSENCRequest` code (1234.5680).
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// `CancelRequest` code (1234.5678).
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Protocol major version we speak.
pub const PROTOCOL_MAJOR: u16 = 3;
/// Newest protocol minor version we speak with clients (3.2, PostgreSQL 18: the same
/// messages as 3.0 except that BackendKeyData and CancelRequest carry a secret of any
/// length from 4 to 256 bytes). 3.1 was never used by any release (reserved, as
/// PostgreSQL's `PG_PROTOCOL_RESERVED_31`); a client asking for it gets what PostgreSQL
/// gives it: 3.1 accepted, 4-byte keys.
pub const PROTOCOL_MINOR: u16 = 2;
/// First minor version whose cancel keys may be longer than 4 bytes.
pub const LONG_CANCEL_KEYS_MINOR: u16 = 2;
/// Longest cancel secret a CancelRequest may carry (protocol 3.2).
pub const MAX_CANCEL_SECRET: usize = 256;
/// Shortest cancel secret a CancelRequest may carry (protocol 3.0's length; PostgreSQL 18
/// accepts 1 to 256 bytes, but a key pgsluice issued is never shorter than 4, so a shorter
/// one can name nobody and is dropped as malformed).
pub const MIN_CANCEL_SECRET: usize = 4;

/// The first packet of a connection (after its `Int32` length, which the caller strips).
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket<'a> {
    /// Client asks for TLS.
    SslRequest,
    /// Client asks for GSSAPI encryption.
    GssEncRequest,
    /// Cancel the query running on the connection identified by (pid, secret).
    /// The secret is 4 bytes in protocol 3.0 and up to 256 bytes in 3.2.
    CancelRequest {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret key bytes.
        secret: &'a [u8],
    },
    /// A StartupMessage.
    Startup {
        /// Requested major version.
        major: u16,
        /// Requested minor version.
        minor: u16,
        /// Raw `name\0value\0...\0` parameter list; iterate with [`startup_params`].
        params: &'a [u8],
    },
}

/// Parses the body of a startup-family packet (everything after the length word).
pub fn parse_startup(body: &[u8]) -> Result<StartupPacket<'_>, Error> {
    let (code, rest) = read_i32(body).ok_or(Error::Malformed("startup"))?;
    match code {
        SSL_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let (pid, secret) = read_i32(rest).ok_or(Error::Malformed("CancelRequest"))?;
            if !(MIN_CANCEL_SECRET..=MAX_CANCEL_SECRET).contains(&secret.len()) {
                return Err(Error::Malformed("CancelRequest"));
            }
            Ok(StartupPacket::CancelRequest { pid, secret })
        }
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => Err(Error::Malformed("startup")),
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            // The parameter list must end with an empty name (a lone NUL).
            if rest.last() != Some(&0) {
                return Err(Error::Malformed("StartupMessage"));
            }
            Ok(StartupPacket::Startup { major, minor, params: rest })
        }
    }
}

/// Iterates the `(name, value)` pairs of a StartupMessage parameter list.
///
/// Yields `Err` once if the list is malformed (odd count, invalid UTF-8, no terminator).
pub fn startup_params(mut params: &[u8]) -> impl Iterator<Item = Result<(&str, &str), Error>> {
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let malformed = |done: &mut bool| {
            *done = true;
            Some(Err(Error::Malformed("StartupMessage")))
        };
        let Some((name, rest)) = cstr(params) else {
            return malformed(&mut done);
        };
        if name.is_empty() {
            done = true;
            return None;
        }
        let Some((value, rest)) = cstr(rest) else {
            return malformed(&mut done);
        };
        params = rest;
        match (std::str::from_utf8(name), std::str::from_utf8(value)) {
            (Ok(n), Ok(v)) => Some(Ok((n, v))),
            _ => malformed(&mut done),
        }
    })
}

/// Parses a `SASLInitialResponse` body: mechanism name and initial client data.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), Error> {
    let (mech, rest) = cstr(body).ok_or(Error::Malformed("SASLInitialResponse"))?;
    let mech = std::str::from_utf8(mech).map_err(|_| Error::Malformed("SASLInitialResponse"))?;
    let (len, data) = read_i32(rest).ok_or(Error::Malformed("SASLInitialResponse"))?;
    if len < 0 || len as usize != data.len() {
        return Err(Error::Malformed("SASLInitialResponse"));
    }
    Ok((mech, data))
}

/// Parses a `PasswordMessage` body (cleartext or md5), without the trailing NUL.
pub fn parse_password(body: &[u8]) -> Result<&[u8], Error> {
    match cstr(body) {
        Some((pw, [])) => Ok(pw),
        _ => Err(Error::Malformed("PasswordMessage")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_startup_family() {
        assert_eq!(parse_startup(&SSL_REQUEST_CODE.to_be_bytes()), Ok(StartupPacket::SslRequest));
        assert_eq!(parse_startup(&GSSENC_REQUEST_CODE.to_be_bytes()), Ok(StartupPacket::GssEncRequest));
        let mut cancel = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        cancel.extend_from_slice(&7i32.to_be_bytes());
        cancel.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(parse_startup(&cancel), Ok(StartupPacket::CancelRequest { pid: 7, secret: &[1, 2, 3, 4] }));
        let mut startup = 196_610i32.to_be_bytes().to_vec(); // 3.2
        startup.extend_from_slice(b"user\0bob\0database\0app\0\0");
        let StartupPacket::Startup { major, minor, params } = parse_startup(&startup).unwrap() else {
            panic!("not a startup packet")
        };
        assert_eq!((major, minor), (3, 2));
        let p: Vec<_> = startup_params(params).collect::<Result<_, _>>().unwrap();
        assert_eq!(p, vec![("user", "bob"), ("database", "app")]);
    }

    #[test]
    fn rejects_malformed_startup() {
        assert!(parse_startup(b"").is_err());
        assert!(parse_startup(b"\0\x03\0\0user\0bob").is_err());
        let bad: Vec<_> = startup_params(b"user\0bob\0odd\0").collect();
        assert_eq!(bad.last(), Some(&Err(Error::Malformed("StartupMessage"))));
        let mut short_cancel = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        short_cancel.extend_from_slice(&[0, 0, 0, 1, 9]);
        assert!(parse_startup(&short_cancel).is_err());
    }

    #[test]
    fn cancel_requests_carry_secrets_of_4_to_256_bytes() {
        let cancel = |len: usize| {
            let mut c = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
            c.extend_from_slice(&7i32.to_be_bytes());
            c.extend(std::iter::repeat_n(0xab, len));
            c
        };
        for len in [4, 32, 256] {
            let c = cancel(len);
            assert_eq!(parse_startup(&c), Ok(StartupPacket::CancelRequest { pid: 7, secret: &c[8..] }), "{len}");
        }
        for len in [0, 3, 257] {
            assert!(parse_startup(&cancel(len)).is_err(), "{len}-byte secret");
        }
        // No pid at all.
        assert!(parse_startup(&CANCEL_REQUEST_CODE.to_be_bytes()).is_err());
    }

    #[test]
    fn parses_auth_responses() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&3i32.to_be_bytes());
        body.extend_from_slice(b"abc");
        assert_eq!(parse_sasl_initial_response(&body), Ok(("SCRAM-SHA-256", &b"abc"[..])));
        body.push(b'x');
        assert!(parse_sasl_initial_response(&body).is_err());
        assert_eq!(parse_password(b"secret\0"), Ok(&b"secret"[..]));
        assert!(parse_password(b"secret").is_err());
    }
}
