//! PostgreSQL wire protocol (version 3) — pure byte handling, no I/O, no tokio.
//!
//! Role: tag constants, frame-header parsing, zero-copy *views* of the few messages the
//! pooler must look inside, and encoders for the messages it synthesizes.
//!
//! Invariants:
//! - Nothing here allocates per relayed message; views borrow from the caller's buffer.
//! - Every parser is total: any byte string yields `Ok`/`Err`/`None`, never a panic
//!   (the `fuzz/` targets call these functions directly).
//! - A frame length is validated before it is trusted (`4 <= len <= max`).

pub mod backend;
pub mod frontend;
pub mod write;

/// Size of a regular message header: one tag byte plus a big-endian `Int32` length.
pub const HEADER_LEN: usize = 5;

/// Largest message body PostgreSQL itself accepts (`MaxAllocSize`, 1 GiB − 1).
pub const MAX_MESSAGE_LEN: usize = 0x3fff_ffff;

/// Largest startup packet accepted (PostgreSQL uses 10,000 bytes too).
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

/// Frontend (client → server) message tags, Protocol chapter 55.7.
pub mod ftag {
    /// Simple query.
    pub const QUERY: u8 = b'Q';
    /// Extended protocol: Parse.
    pub const PARSE: u8 = b'P';
    /// Extended protocol: Bind.
    pub const BIND: u8 = b'B';
    /// Extended protocol: Describe.
    pub const DESCRIBE: u8 = b'D';
    /// Extended protocol: Execute.
    pub const EXECUTE: u8 = b'E';
    /// Extended protocol: Close.
    pub const CLOSE: u8 = b'C';
    /// Extended protocol: Sync (ends a request; the server answers `Z`).
    pub const SYNC: u8 = b'S';
    /// Extended protocol: Flush (client waits for output without a Sync).
    pub const FLUSH: u8 = b'H';
    /// Terminate.
    pub const TERMINATE: u8 = b'X';
    /// Legacy fast-path function call (answered with `Z`).
    pub const FUNCTION_CALL: u8 = b'F';
    /// COPY data.
    pub const COPY_DATA: u8 = b'd';
    /// COPY done.
    pub const COPY_DONE: u8 = b'c';
    /// COPY fail.
    pub const COPY_FAIL: u8 = b'f';
    /// PasswordMessage / SASLInitialResponse / SASLResponse (only during authentication).
    pub const PASSWORD: u8 = b'p';
}

/// Backend (server → client) message tags, Protocol chapter 55.7.
pub mod btag {
    /// ReadyForQuery; body is one status byte.
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// ErrorResponse.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NoticeResponse.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// ParameterStatus.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// BackendKeyData.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// Authentication request family.
    pub const AUTHENTICATION: u8 = b'R';
    /// NegotiateProtocolVersion.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    /// CommandComplete.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// CopyInResponse.
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// CopyOutResponse.
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    /// CopyBothResponse.
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    /// NotificationResponse.
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    /// DataRow.
    pub const DATA_ROW: u8 = b'D';
}

/// ReadyForQuery transaction status bytes.
pub mod status {
    /// Idle, not in a transaction block.
    pub const IDLE: u8 = b'I';
    /// In a transaction block.
    pub const IN_TRANSACTION: u8 = b'T';
    /// In a failed transaction block.
    pub const FAILED: u8 = b'E';
}

/// Framing errors. No strings: these are cheap to build on the hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The length field is smaller than the length field itself.
    #[error("invalid message length {len} for message type {tag:#04x}")]
    BadLength {
        /// Message tag.
        tag: u8,
        /// Declared length.
        len: u32,
    },
    /// The declared length exceeds the configured cap.
    #[error("message of type {tag:#04x} is too large ({len} bytes)")]
    TooLarge {
        /// Message tag.
        tag: u8,
        /// Declared length.
        len: u32,
    },
    /// A message pgsluice must read whole (to rewrite it) declares more than it reads whole.
    #[error("message of type {tag:#04x} is too large for pgsluice to read whole ({len} bytes, limit {limit})")]
    TooLargeToInspect {
        /// Message tag.
        tag: u8,
        /// Declared length.
        len: u32,
        /// The most pgsluice reads whole for it.
        limit: u32,
    },
    /// A message type that is not valid here.
    #[error("unexpected message type {0:#04x}")]
    UnexpectedTag(u8),
    /// A message body that does not match its type's layout.
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// A parsed regular message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message tag byte.
    pub tag: u8,
    /// Length of the body (without tag and length field).
    pub body_len: usize,
}

impl Header {
    /// Parses the header at the start of `buf`; `Ok(None)` if fewer than 5 bytes are present.
    ///
    /// `max_body` caps the body size; larger declared lengths are [`Error::TooLarge`].
    #[inline]
    pub fn parse(buf: &[u8], max_body: usize) -> Result<Option<Header>, Error> {
        let Some(h) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let tag = h[0];
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        if len < 4 {
            return Err(Error::BadLength { tag, len });
        }
        let body_len = (len - 4) as usize;
        if body_len > max_body {
            return Err(Error::TooLarge { tag, len });
        }
        Ok(Some(Header { tag, body_len }))
    }

    /// Total frame length: header plus body.
    #[inline]
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len
    }
}

/// A complete frame `(tag, body)` and the bytes after it.
pub type Frame<'a> = (u8, &'a [u8], &'a [u8]);

/// Splits `buf` into the first complete frame `(tag, body)` and the rest, or `Ok(None)`.
pub fn split_frame(buf: &[u8], max_body: usize) -> Result<Option<Frame<'_>>, Error> {
    let Some(h) = Header::parse(buf, max_body)? else {
        return Ok(None);
    };
    if buf.len() < h.frame_len() {
        return Ok(None);
    }
    let (frame, rest) = buf.split_at(h.frame_len());
    Ok(Some((h.tag, &frame[HEADER_LEN..], rest)))
}

/// Reads a NUL-terminated string at the start of `buf`, returning it and the remainder.
pub fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// Reads a big-endian `Int32` at the start of `buf`.
pub fn read_i32(buf: &[u8]) -> Option<(i32, &[u8])> {
    let b = buf.get(..4)?;
    Some((i32::from_be_bytes([b[0], b[1], b[2], b[3]]), &buf[4..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_five_bytes() {
        assert_eq!(Header::parse(b"Z\0\0\0", 100), Ok(None));
        assert_eq!(Header::parse(b"Z\0\0\0\x05I", 100), Ok(Some(Header { tag: b'Z', body_len: 1 })));
    }

    #[test]
    fn header_rejects_short_and_huge_lengths() {
        assert_eq!(Header::parse(b"Q\0\0\0\x03", 100), Err(Error::BadLength { tag: b'Q', len: 3 }));
        assert_eq!(Header::parse(b"Q\xff\xff\xff\xff", 100), Err(Error::TooLarge { tag: b'Q', len: u32::MAX }));
    }

    #[test]
    fn split_frame_waits_for_whole_body() {
        let buf = b"Z\0\0\0\x05IZ\0\0\0\x05";
        let (tag, body, rest) = split_frame(buf, 100).unwrap().unwrap();
        assert_eq!((tag, body), (b'Z', &b"I"[..]));
        assert_eq!(split_frame(rest, 100), Ok(None));
    }

    #[test]
    fn cstr_and_i32() {
        assert_eq!(cstr(b"ab\0cd"), Some((&b"ab"[..], &b"cd"[..])));
        assert_eq!(cstr(b"ab"), None);
        assert_eq!(read_i32(b"\0\0\0\x07x"), Some((7, &b"x"[..])));
        assert_eq!(read_i32(b"\0\0"), None);
    }
}
