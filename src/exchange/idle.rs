//! What a client sends while it holds no server: whether a request is complete yet
//! ([`inspect_idle`]), and the requests pgsluice answers without one
//! ([`answer_without_server`]).

use bytes::Buf;

use super::READ_AHEAD;
use std::collections::HashSet;

use crate::prepared::{ClientStatements, Key, KnownStatements, Limits, Stmt};
use crate::protocol::{self, cstr, ftag, write, Header, HEADER_LEN};

/// What the bytes a client sent while holding no server amount to (see [`inspect_idle`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Buffered {
    /// A server is needed: a complete request (`Q`, `Sync`, `FunctionCall`, or `Flush` after
    /// extended-protocol messages) is buffered, or enough bytes to start streaming.
    pub ready: bool,
    /// Requests in `[..end]` that the client expects a ReadyForQuery for.
    pub requests: u32,
    /// End of the last complete request.
    pub end: usize,
    /// The buffer starts with Terminate.
    pub terminate: bool,
}

/// Largest request kept for sending again ([`resendable_request`]).
pub const MAX_RESEND: usize = 8 * 1024;

/// The end of the request at the start of `buf` if pgsluice may send it again to another
/// server should its server die before answering: whole in `buf`, at most [`MAX_RESEND`]
/// bytes, and either one simple `Query` or an extended-protocol batch up to its `Sync` made
/// of `Parse` of the unnamed statement, `Bind`, `Describe` and `Execute` only — nothing that
/// defines or closes a named statement (pgsluice's bookkeeping of those changes as soon as
/// they are scanned), no `Flush` (the client may have read part of the answer), no COPY or
/// FunctionCall. Whether the request only reads is the router's business.
pub fn resendable_request(buf: &[u8], max_body: usize) -> Option<usize> {
    let mut off = 0;
    loop {
        let hdr = Header::parse(&buf[off..], max_body).ok()??;
        let end = off + hdr.frame_len();
        if end > buf.len().min(MAX_RESEND) {
            return None;
        }
        match hdr.tag {
            ftag::QUERY if off == 0 => return Some(end),
            ftag::SYNC if off > 0 => return Some(end),
            ftag::PARSE if buf.get(off + HEADER_LEN) == Some(&0) => {}
            ftag::BIND | ftag::DESCRIBE | ftag::EXECUTE => {}
            _ => return None,
        }
        off = end;
    }
}

/// Walks the frames a client buffered while idle (headers only) to decide whether a server
/// is needed yet. Invalid framing or tags are an error.
pub fn inspect_idle(buf: &[u8], max_body: usize) -> Result<Buffered, protocol::Error> {
    IdleScan::default().inspect(buf, max_body, usize::MAX)
}

/// [`inspect_idle`] resumed where it last stopped, for a buffer that only grows between
/// calls: a client sending its request a byte at a time costs a walk of each frame once, not
/// of the whole buffer at every read.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdleScan {
    /// Start of the first frame not walked whole (the frames before complete no request).
    off: u32,
    /// Extended-protocol messages were seen since the last request.
    extended: bool,
}

impl IdleScan {
    /// What `buf` amounts to (see [`inspect_idle`]). A named Parse whose frame is longer
    /// than `max_whole` (see [`super::max_read_whole`]) is an error as soon as its header and
    /// name's first byte are in: it could never be read whole.
    pub fn inspect(&mut self, buf: &[u8], max_body: usize, max_whole: usize) -> Result<Buffered, protocol::Error> {
        let (b, off, extended) = walk(buf, max_body, max_whole, self.off as usize, self.extended)?;
        // (Past a complete request the caller stops asking; below READ_AHEAD the offset fits.)
        if !b.ready {
            *self = IdleScan { off: off as u32, extended };
        }
        Ok(b)
    }
}

/// The walk of [`IdleScan::inspect`] from frame offset `off`; also returns where the first
/// incomplete frame starts and the extended flag there.
fn walk(
    buf: &[u8],
    max_body: usize,
    max_whole: usize,
    mut off: usize,
    mut extended: bool,
) -> Result<(Buffered, usize, bool), protocol::Error> {
    let mut b = Buffered::default();
    while let Some(hdr) = Header::parse(&buf[off..], max_body)? {
        match hdr.tag {
            ftag::QUERY
            | ftag::FUNCTION_CALL
            | ftag::SYNC
            | ftag::PARSE
            | ftag::BIND
            | ftag::DESCRIBE
            | ftag::EXECUTE
            | ftag::CLOSE
            | ftag::FLUSH
            | ftag::COPY_DATA
            | ftag::COPY_DONE
            | ftag::COPY_FAIL => {}
            ftag::TERMINATE => {
                b.terminate = off == 0;
                break;
            }
            other => return Err(protocol::Error::UnexpectedTag(other)),
        }
        if buf.len() - off < hdr.frame_len() {
            let named = buf.get(off + HEADER_LEN).is_some_and(|&b| b != 0);
            if hdr.tag == ftag::PARSE && named && hdr.frame_len() > max_whole {
                let (len, limit) = ((hdr.frame_len() - 1) as u32, (max_whole - 1) as u32);
                return Err(protocol::Error::TooLargeToInspect { tag: hdr.tag, len, limit });
            }
            break;
        }
        off += hdr.frame_len();
        match hdr.tag {
            ftag::QUERY | ftag::FUNCTION_CALL | ftag::SYNC => {
                b.requests += 1;
                b.end = off;
                extended = false;
            }
            ftag::FLUSH if extended => b.end = off,
            ftag::PARSE | ftag::BIND | ftag::DESCRIBE | ftag::EXECUTE | ftag::CLOSE => extended = true,
            _ => {}
        }
    }
    b.ready = b.end > 0 || buf.len() >= READ_AHEAD;
    Ok((b, off, extended))
}

/// Answers, without a server, a buffered request made only of named `Parse`s of statements
/// some server of the pool has accepted, `Close`s of named statements, `Flush` and `Sync`
/// (libpq's `PQprepare`, pgbench `-M prepared`, tokio-postgres dropping a statement): the
/// statement is prepared on a server when a `Bind` or `Describe` first needs it. Only for a
/// client outside a transaction (no server held). Returns the answer to send and consumes
/// the request, or `None` (nothing changed) when a server is needed.
pub fn answer_without_server(
    buf: &mut bytes::BytesMut,
    stmts: &mut ClientStatements,
    known: &KnownStatements,
    max_body: usize,
    limits: Limits,
) -> Option<bytes::BytesMut> {
    // First pass: is everything up to the last Sync answerable? (A name defined twice is a
    // 42P05 the server must produce; a name closed and defined again is left to it too; and
    // statements past the client's limits get their error on the way to a server.)
    let mut off = 0;
    let mut end = 0;
    let mut parsed: Vec<(&[u8], Key)> = Vec::new();
    let mut names: HashSet<&[u8]> = HashSet::new();
    let mut size = 0;
    while let Ok(Some((tag, body, _))) = protocol::split_frame(&buf[off..], max_body) {
        match tag {
            ftag::PARSE => {
                let (name, rest) = cstr(body)?;
                let key = Key::of(rest);
                if name.is_empty() || stmts.get(name).is_some() || !known.contains(&key) {
                    return None;
                }
                // (A set, not a walk of `parsed`: a batch of many Parses stays linear.)
                if !names.insert(name) {
                    return None;
                }
                size += body.len() - 1;
                if stmts.refusal(parsed.len() + 1, size, limits).is_some() {
                    return None;
                }
                parsed.push((name, key));
            }
            ftag::CLOSE => match body.split_first() {
                Some((b'S', name)) if cstr(name).is_some_and(|(n, r)| !n.is_empty() && r.is_empty()) => {}
                _ => return None,
            },
            ftag::FLUSH => {}
            ftag::SYNC => end = off + HEADER_LEN + body.len(),
            _ => break,
        }
        off += HEADER_LEN + body.len();
    }
    if end == 0 {
        return None;
    }
    // Second pass: apply and answer.
    let mut keys = parsed.iter().map(|(_, k)| *k);
    let mut out = bytes::BytesMut::with_capacity(64);
    let mut off = 0;
    while off < end {
        let Ok(Some((tag, body, _))) = protocol::split_frame(&buf[off..end], max_body) else { break };
        match tag {
            ftag::PARSE => {
                if let (Some((name, rest)), Some(key)) = (cstr(body), keys.next()) {
                    stmts.insert(name, Stmt::with_key(key, rest));
                    write::empty(&mut out, b'1');
                }
            }
            ftag::CLOSE => {
                if let Some((name, _)) = body.get(1..).and_then(cstr) {
                    stmts.remove(name);
                }
                write::empty(&mut out, b'3');
            }
            ftag::SYNC => write::ready_for_query(&mut out, protocol::status::IDLE),
            _ => {}
        }
        off += HEADER_LEN + body.len();
    }
    buf.advance(end);
    Some(out)
}
