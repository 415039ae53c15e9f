//! Encoders for the messages pgsluice synthesizes itself (its own authentication exchange,
//! errors, login-time parameters, and the few queries it sends to servers). Each appends one
//! complete frame to a caller-owned `BytesMut`, so a batch of them is written with one syscall.

use bytes::{BufMut, BytesMut};

use super::frontend::{CANCEL_REQUEST_CODE, PROTOCOL_MAJOR};

/// Appends a frame with `tag`, letting `body` write the payload; fixes up the length after.
#[inline]
fn frame(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    buf.put_slice(s);
    buf.put_u8(0);
}

/// Severity of a synthesized ErrorResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// ErrorResponse with severity, SQLSTATE and message (and optional detail).
pub fn error_response(buf: &mut BytesMut, severity: Severity, code: &str, message: &str, detail: Option<&str>) {
    match detail {
        Some(d) => error_response_with(buf, severity, code, message, &[(b'D', d)]),
        None => error_response_with(buf, severity, code, message, &[]),
    }
}

/// ErrorResponse with severity, SQLSTATE, message and extra fields (`(field type, value)`).
pub fn error_response_with(buf: &mut BytesMut, severity: Severity, code: &str, message: &str, extra: &[(u8, &str)]) {
    frame(buf, b'E', |b| {
        for tag in [b'S', b'V'] {
            b.put_u8(tag);
            put_cstr(b, severity.as_str().as_bytes());
        }
        b.put_u8(b'C');
        put_cstr(b, code.as_bytes());
        b.put_u8(b'M');
        put_cstr(b, message.as_bytes());
        for (t, v) in extra {
            b.put_u8(*t);
            put_cstr(b, v.as_bytes());
        }
        b.put_u8(0);
    });
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    frame(buf, b'R', |b| b.put_i32(0));
}

/// AuthenticationCleartextPassword.
pub fn auth_cleartext(buf: &mut BytesMut) {
    frame(buf, b'R', |b| b.put_i32(3));
}

/// AuthenticationMD5Password with `salt`.
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    frame(buf, b'R', |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

/// AuthenticationSASL listing `mechanisms`.
pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    frame(buf, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m.as_bytes());
        }
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue carrying `data`.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    frame(buf, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

/// AuthenticationSASLFinal carrying `data`.
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    frame(buf, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    frame(buf, b'S', |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, value.as_bytes());
    });
}

/// BackendKeyData (protocol 3.0: 4-byte secret).
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    backend_key_data_secret(buf, pid, &secret.to_be_bytes());
}

/// BackendKeyData with a secret of any length (protocol 3.2: 4 to 256 bytes; the caller
/// gives a 3.0 client exactly 4).
pub fn backend_key_data_secret(buf: &mut BytesMut, pid: i32, secret: &[u8]) {
    frame(buf, b'K', |b| {
        b.put_i32(pid);
        b.put_slice(secret);
    });
}

/// ReadyForQuery with transaction `status`.
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    frame(buf, b'Z', |b| b.put_u8(status));
}

/// NegotiateProtocolVersion: newest supported minor version and the `_pq_.` options we did
/// not recognise.
pub fn negotiate_protocol_version<'a>(
    buf: &mut BytesMut,
    minor: u16,
    unrecognized: impl ExactSizeIterator<Item = &'a str>,
) {
    frame(buf, b'v', |b| {
        b.put_i32(((PROTOCOL_MAJOR as i32) << 16) | minor as i32);
        b.put_i32(unrecognized.len() as i32);
        for o in unrecognized {
            put_cstr(b, o.as_bytes());
        }
    });
}

/// StartupMessage (protocol 3.0) with `params`; untagged.
pub fn startup_message<'a>(buf: &mut BytesMut, params: impl IntoIterator<Item = (&'a str, &'a str)>) {
    let at = buf.len();
    buf.put_i32(0);
    buf.put_i32(196_608);
    for (k, v) in params {
        put_cstr(buf, k.as_bytes());
        put_cstr(buf, v.as_bytes());
    }
    buf.put_u8(0);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// CancelRequest for a server's (pid, secret); untagged.
pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: &[u8]) {
    buf.put_i32(12 + secret.len() as i32);
    buf.put_i32(CANCEL_REQUEST_CODE);
    buf.put_i32(pid);
    buf.put_slice(secret);
}

/// PasswordMessage (cleartext or md5 string).
pub fn password_message(buf: &mut BytesMut, password: &[u8]) {
    frame(buf, b'p', |b| put_cstr(b, password));
}

/// SASLInitialResponse.
pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    frame(buf, b'p', |b| {
        put_cstr(b, mechanism.as_bytes());
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

/// SASLResponse.
pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    frame(buf, b'p', |b| b.put_slice(data));
}

/// Simple Query.
pub fn query(buf: &mut BytesMut, sql: &str) {
    frame(buf, b'Q', |b| put_cstr(b, sql.as_bytes()));
}

/// Terminate.
pub fn terminate(buf: &mut BytesMut) {
    frame(buf, b'X', |_| {});
}

/// A message with an empty body (ParseComplete `1`, BindComplete `2`, CloseComplete `3`...).
pub fn empty(buf: &mut BytesMut, tag: u8) {
    buf.put_slice(&[tag, 0, 0, 0, 4]);
}

/// CommandComplete with `tag` (e.g. `DEALLOCATE`).
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    frame(buf, b'C', |b| put_cstr(b, tag.as_bytes()));
}

/// Parse of statement `name`; `rest` is the body after the name (query, NUL, parameter
/// count and types), as the client sent it.
pub fn parse_raw(buf: &mut BytesMut, name: &[u8], rest: &[u8]) {
    frame(buf, b'P', |b| {
        put_cstr(b, name);
        b.put_slice(rest);
    });
}

/// Close (`S` statement or `P` portal) of `name`.
pub fn close(buf: &mut BytesMut, kind: u8, name: &[u8]) {
    frame(buf, b'C', |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    });
}

/// Describe (`S` statement or `P` portal) of `name`.
pub fn describe(buf: &mut BytesMut, kind: u8, name: &[u8]) {
    frame(buf, b'D', |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    });
}

/// The header and leading names of a Bind whose remaining `rest_len` body bytes (parameter
/// formats, values, result formats) the caller forwards unchanged after it.
pub fn bind_prefix(buf: &mut BytesMut, portal: &[u8], statement: &[u8], rest_len: usize) {
    let len = 4 + portal.len() + 1 + statement.len() + 1 + rest_len;
    buf.put_u8(b'B');
    buf.put_i32(len as i32);
    put_cstr(buf, portal);
    put_cstr(buf, statement);
}

/// RowDescription of text-format columns `(name, type oid)`.
pub fn row_description(buf: &mut BytesMut, columns: &[(&str, u32)]) {
    frame(buf, b'T', |b| {
        b.put_i16(columns.len() as i16);
        for (name, oid) in columns {
            put_cstr(b, name.as_bytes());
            b.put_i32(0); // table oid
            b.put_i16(0); // column number
            b.put_u32(*oid);
            b.put_i16(-1); // type size
            b.put_i32(-1); // type modifier
            b.put_i16(0); // text format
        }
    });
}

/// DataRow of text values (`None` is NULL).
pub fn data_row<'a>(buf: &mut BytesMut, values: impl ExactSizeIterator<Item = Option<&'a str>>) {
    frame(buf, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(s) => {
                    b.put_i32(s.len() as i32);
                    b.put_slice(s.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// NoticeResponse (severity NOTICE) with `message`.
pub fn notice(buf: &mut BytesMut, message: &str) {
    frame(buf, b'N', |b| {
        for tag in [b'S', b'V'] {
            b.put_u8(tag);
            put_cstr(b, b"NOTICE");
        }
        b.put_u8(b'C');
        put_cstr(b, b"00000");
        b.put_u8(b'M');
        put_cstr(b, message.as_bytes());
        b.put_u8(0);
    });
}

#[cfg(test)]
mod tests {
    use super::super::{backend, split_frame};
    use super::*;

    #[test]
    fn error_response_round_trips() {
        let mut b = BytesMut::new();
        error_response(&mut b, Severity::Fatal, "53300", "no more connections allowed", None);
        let (tag, body, rest) = split_frame(&b, 1 << 20).unwrap().unwrap();
        assert_eq!(tag, b'E');
        assert!(rest.is_empty());
        let f = backend::parse_error_fields(body);
        assert_eq!((f.severity, f.code, f.message), ("FATAL", "53300", "no more connections allowed"));
    }

    #[test]
    fn frames_have_right_lengths() {
        let mut b = BytesMut::new();
        ready_for_query(&mut b, b'I');
        assert_eq!(&b[..], b"Z\0\0\0\x05I");
        b.clear();
        cancel_request(&mut b, 5, &[1, 2, 3, 4]);
        assert_eq!(b.len(), 16);
        assert_eq!(&b[..4], &16i32.to_be_bytes());
        b.clear();
        startup_message(&mut b, [("user", "u")]);
        assert_eq!(&b[..4], &(b.len() as i32).to_be_bytes());
        b.clear();
        negotiate_protocol_version(&mut b, 0, ["_pq_.x"].into_iter());
        assert_eq!(&b[..], b"v\0\0\0\x13\0\x03\0\0\0\0\0\x01_pq_.x\0");
        b.clear();
        negotiate_protocol_version(&mut b, 2, std::iter::empty());
        assert_eq!(&b[..], b"v\0\0\0\x0c\0\x03\0\x02\0\0\0\0");
    }

    #[test]
    fn backend_key_data_of_both_lengths_parses_back() {
        let mut b = BytesMut::new();
        backend_key_data(&mut b, 7, 0x0102_0304);
        let (tag, body, _) = split_frame(&b, 1 << 20).unwrap().unwrap();
        assert_eq!((tag, backend::parse_backend_key_data(body)), (b'K', Ok((7, &[1, 2, 3, 4][..]))));
        let long = [0x5a; 32];
        b.clear();
        backend_key_data_secret(&mut b, 9, &long);
        assert_eq!(b.len(), 1 + 4 + 4 + 32);
        let (_, body, _) = split_frame(&b, 1 << 20).unwrap().unwrap();
        assert_eq!(backend::parse_backend_key_data(body), Ok((9, &long[..])));
        b.clear();
        cancel_request(&mut b, 9, &long);
        assert_eq!(&b[..4], &(12 + 32i32).to_be_bytes());
        assert_eq!(b.len(), 12 + 32);
    }
}
