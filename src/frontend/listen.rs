//! A session's side of LISTEN/NOTIFY in transaction mode (`crate::notify`): recognising a
//! request pgsluice answers itself (only `LISTEN`/`UNLISTEN` statements in one simple
//! Query), and writing the client's queued notifications at a point between messages.
//!
//! Invariants:
//! - A client that never listens pays one `None` in its session and a first-byte test per
//!   idle request ([`request`]).
//! - Bytes taken from the queue are written whole before anything else reaches the client:
//!   while [`Listener::writing`] the session relays nothing to it.
//! - Dropping the [`Listener`] (client gone, `DISCARD ALL`) removes every channel of the
//!   client from its hub.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;

use crate::error::{ClientError, ErrorSource};
use crate::net::Stream;
use crate::notify::{Hub, Overflow, Subscriber};
use crate::prepared::ClientStatements;
use crate::protocol::{self, ftag};
use crate::sql::listen::{self, Op};

/// Most notification bytes taken from the queue for one write.
const WRITE_CHUNK: usize = 16 * 1024;

/// What answering a LISTEN-only request takes, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Apply these operations together, then a CommandComplete for each; an error skips
    /// the steps up to the next [`Step::Ready`] (as the server skips to Sync).
    Run(Vec<Op>),
    /// A fixed answer (ParseComplete, BindComplete, a description, CloseComplete).
    Answer(&'static [u8]),
    /// A named statement of LISTEN/UNLISTEN is defined (its ParseComplete follows).
    Define(Box<[u8]>, Vec<Op>),
    /// A named statement is closed.
    Forget(Box<[u8]>),
    /// ReadyForQuery (idle).
    Ready,
}

const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
const BIND_COMPLETE: &[u8] = b"2\0\0\0\x04";
const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";
const NO_DATA: &[u8] = b"n\0\0\0\x04";
/// ParameterDescription (no parameters) then NoData: `Describe` of a LISTEN statement.
const DESCRIBED: &[u8] = b"t\0\0\0\x06\0\0n\0\0\0\x04";

/// A LISTEN-only request at the front of an idle client's buffer: what answering it takes,
/// and its length in bytes.
pub struct Request {
    pub steps: Vec<Step>,
    pub len: usize,
}

/// A statement named in a batch and its operations (`None`: closed in the batch).
type Named = (Box<[u8]>, Option<Vec<Op>>);

/// The request at the front of `buf`, if pgsluice answers it itself: a simple Query made
/// only of `LISTEN`/`UNLISTEN` statements, or an extended-protocol batch up to its `Sync`
/// (or a final `Flush`) whose every message concerns such statements (asyncpg prepares and
/// executes its LISTEN that way). `defined` gives the operations of a named statement defined earlier this way.
/// A statement name the client prepared on a server (`stmts`) is never taken.
pub fn request(
    buf: &[u8],
    max_body: usize,
    stmts: &ClientStatements,
    defined: &dyn Fn(&[u8]) -> Option<Vec<Op>>,
) -> Option<Request> {
    let (tag, body, _) = protocol::split_frame(buf, max_body).ok()??;
    if tag == ftag::QUERY {
        // (The first bytes decide for nearly every query: no scan of its text.)
        if !listen::may_be_listen(body) {
            return None;
        }
        let (text, _) = protocol::cstr(body)?;
        let ops = listen::parse(text)?;
        return Some(Request { steps: vec![Step::Run(ops), Step::Ready], len: protocol::HEADER_LEN + body.len() });
    }
    if tag != ftag::PARSE && tag != ftag::BIND {
        return None;
    }
    // Extended protocol: cheap test first (a Parse of something else is the common case).
    if tag == ftag::PARSE && !protocol::cstr(body).is_some_and(|(_, text)| listen::may_be_listen(text)) {
        return None;
    }
    let mut steps = Vec::new();
    // Statements and portals of this batch: name → operations (`None`: closed).
    let mut names: Vec<Named> = Vec::new();
    let mut portals: Vec<(Box<[u8]>, Vec<Op>)> = Vec::new();
    let lookup = |names: &[Named], name: &[u8]| -> Option<Vec<Op>> {
        match names.iter().rev().find(|(n, _)| &**n == name) {
            Some((_, ops)) => ops.clone(),
            None if name.is_empty() => None,
            None => defined(name),
        }
    };
    let mut off = 0;
    loop {
        let (tag, body, _) = protocol::split_frame(&buf[off..], max_body).ok()??;
        off += protocol::HEADER_LEN + body.len();
        match tag {
            ftag::PARSE => {
                let (name, rest) = protocol::cstr(body)?;
                let (text, rest) = protocol::cstr(rest)?;
                if rest != [0, 0] || (!name.is_empty() && stmts.get(name).is_some()) {
                    return None;
                }
                let ops = listen::parse(text)?;
                // (One statement per Parse, as PostgreSQL requires.)
                if ops.len() != 1 {
                    return None;
                }
                if !name.is_empty() {
                    steps.push(Step::Define(name.into(), ops.clone()));
                }
                names.push((name.into(), Some(ops)));
                steps.push(Step::Answer(PARSE_COMPLETE));
            }
            ftag::BIND => {
                let (portal, rest) = protocol::cstr(body)?;
                let (stmt, rest) = protocol::cstr(rest)?;
                let formats = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
                let params = rest.get(2 + 2 * formats..4 + 2 * formats)?;
                if params != [0, 0] {
                    return None;
                }
                let ops = lookup(&names, stmt)?;
                portals.retain(|(p, _)| &**p != portal);
                portals.push((portal.into(), ops));
                steps.push(Step::Answer(BIND_COMPLETE));
            }
            ftag::DESCRIBE => match body.split_first() {
                Some((b'S', rest)) => {
                    lookup(&names, protocol::cstr(rest)?.0)?;
                    steps.push(Step::Answer(DESCRIBED));
                }
                Some((b'P', rest)) => {
                    let portal = protocol::cstr(rest)?.0;
                    portals.iter().find(|(p, _)| &**p == portal)?;
                    steps.push(Step::Answer(NO_DATA));
                }
                _ => return None,
            },
            ftag::EXECUTE => {
                let portal = protocol::cstr(body)?.0;
                let (_, ops) = portals.iter().find(|(p, _)| &**p == portal)?;
                steps.push(Step::Run(ops.clone()));
            }
            ftag::CLOSE => match body.split_first() {
                Some((b'S', rest)) => {
                    let name = protocol::cstr(rest)?.0;
                    lookup(&names, name)?;
                    names.push((name.into(), None));
                    steps.push(Step::Forget(name.into()));
                    steps.push(Step::Answer(CLOSE_COMPLETE));
                }
                Some((b'P', rest)) => {
                    let portal = protocol::cstr(rest)?.0;
                    portals.retain(|(p, _)| &**p != portal);
                    steps.push(Step::Answer(CLOSE_COMPLETE));
                }
                _ => return None,
            },
            // A Flush with nothing after it ends the request (asyncpg prepares with
            // Parse, Describe, Flush and executes with Bind, Execute, Sync).
            ftag::FLUSH if off == buf.len() => return Some(Request { steps, len: off }),
            ftag::FLUSH => {}
            ftag::SYNC => {
                steps.push(Step::Ready);
                return Some(Request { steps, len: off });
            }
            _ => return None,
        }
    }
}

/// Whether the request at the front of `buf` is a `DISCARD ALL` (simple or extended).
pub fn is_discard_all(buf: &[u8], max_body: usize) -> bool {
    let text = match protocol::split_frame(buf, max_body) {
        Ok(Some((ftag::QUERY, body, _))) => protocol::cstr(body).map(|(t, _)| t),
        Ok(Some((ftag::PARSE, body, _))) => protocol::cstr(body).and_then(|(_, r)| protocol::cstr(r)).map(|(t, _)| t),
        _ => None,
    };
    text.is_some_and(listen::is_discard_all)
}

/// How delivery failed.
pub enum Deliver {
    /// The client's socket failed.
    Closed(std::io::Error),
    /// The queue overflowed: close the client with this FATAL.
    Failed(ClientError),
}

/// A client's subscription, made at its first `LISTEN`.
pub struct Listener {
    pub hub: Arc<Hub>,
    pub sub: Arc<Subscriber>,
    /// Frames taken from the queue, not yet written.
    out: BytesMut,
    /// Written to a TLS stream and not yet flushed.
    unflushed: bool,
    /// Named statements of `LISTEN`/`UNLISTEN` the client prepared (answered by pgsluice).
    statements: Vec<(Box<[u8]>, Vec<Op>)>,
}

impl Listener {
    pub fn new(hub: Arc<Hub>, sub: Arc<Subscriber>) -> Listener {
        Listener { hub, sub, out: BytesMut::new(), unflushed: false, statements: Vec::new() }
    }

    /// The operations of a named statement defined with [`Step::Define`].
    pub fn statement(&self, name: &[u8]) -> Option<Vec<Op>> {
        self.statements.iter().find(|(n, _)| &**n == name).map(|(_, ops)| ops.clone())
    }

    /// Records a named statement ([`Step::Define`]).
    pub fn define(&mut self, name: Box<[u8]>, ops: Vec<Op>) {
        self.forget(&name);
        self.statements.push((name, ops));
    }

    /// Forgets a named statement ([`Step::Forget`]).
    pub fn forget(&mut self, name: &[u8]) {
        self.statements.retain(|(n, _)| &**n != name);
    }

    /// A write of notifications is under way: nothing else may go to the client.
    pub fn writing(&self) -> bool {
        !self.out.is_empty() || self.unflushed
    }

    /// Whether there is something to deliver (or an overflow to report).
    pub fn wants_delivery(&self) -> bool {
        self.writing() || self.sub.has_pending()
    }

    /// Writes queued notifications to the client; call only between whole messages to it.
    /// `Ready(Ok)`: nothing left; `Pending`: a write is under way (the waker is
    /// registered).
    ///
    /// # Cancel safety
    /// Cancel-safe: what is taken from the queue stays in `out` until written.
    pub fn poll_deliver(&mut self, cx: &mut Context<'_>, stream: &mut Stream) -> Poll<Result<(), Deliver>> {
        loop {
            if self.out.is_empty() {
                if self.unflushed {
                    match Pin::new(&mut *stream).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.unflushed = false,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(Deliver::Closed(e))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                if let Err(Overflow(limit)) = self.sub.drain_into(&mut self.out, WRITE_CHUNK) {
                    return Poll::Ready(Err(Deliver::Failed(overflowed(limit))));
                }
                if self.out.is_empty() {
                    return Poll::Ready(Ok(()));
                }
            }
            match Pin::new(&mut *stream).poll_write(cx, &self.out) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(Deliver::Closed(std::io::ErrorKind::WriteZero.into()))),
                Poll::Ready(Ok(n)) => {
                    self.out.advance(n);
                    self.unflushed |= stream.is_tls();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Deliver::Closed(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.hub.unlisten(&self.sub, None);
    }
}

/// The FATAL of a client whose notification queue overflowed.
fn overflowed(limit: usize) -> ClientError {
    ClientError::fatal(
        "53400",
        format!(
            "pgsluice: more than {limit} bytes of notifications are waiting for this client (max_client_notification_bytes); closing it rather than dropping notifications"
        ),
        ErrorSource::Client,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::write;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn an_extended_listen_batch_is_answered_here_as_asyncpg_sends_it() {
        let stmts = ClientStatements::default();
        let none = |_: &[u8]| None;
        // Prepare: Parse (named) + Describe + Sync.
        let prepare = [msg(b'P', b"s1\0LISTEN \"Ch\"\0\0\0"), msg(b'D', b"Ss1\0"), msg(b'S', b"")].concat();
        let flushed = [msg(b'P', b"s1\0LISTEN \"Ch\"\0\0\0"), msg(b'D', b"Ss1\0"), msg(b'H', b"")].concat();
        assert_eq!(request(&flushed, 1 << 20, &stmts, &none).expect("prepare with Flush").steps.len(), 3);
        let r = request(&prepare, 1 << 20, &stmts, &none).expect("prepare");
        assert_eq!(r.len, prepare.len());
        let listen = vec![Op::Listen("Ch".into())];
        assert_eq!(
            r.steps,
            [
                Step::Define((*b"s1").into(), listen.clone()),
                Step::Answer(PARSE_COMPLETE),
                Step::Answer(DESCRIBED),
                Step::Ready
            ]
        );
        // Execute the defined statement: Bind + Execute + Sync.
        let run = [msg(b'B', b"\0s1\0\0\0\0\0\0\0"), msg(b'E', b"\0\0\0\0\0"), msg(b'S', b"")].concat();
        assert!(request(&run, 1 << 20, &stmts, &none).is_none(), "unknown statement: the server's");
        let known = |n: &[u8]| (n == b"s1").then(|| listen.clone());
        let r = request(&run, 1 << 20, &stmts, &known).expect("execute");
        assert_eq!(r.steps, [Step::Answer(BIND_COMPLETE), Step::Run(listen.clone()), Step::Ready]);
        // Parameters, or another statement in the batch: the server's.
        let other = [msg(b'P', b"\0LISTEN a\0\0\0"), msg(b'P', b"\0SELECT 1\0\0\0"), msg(b'S', b"")].concat();
        assert!(request(&other, 1 << 20, &stmts, &none).is_none());
        let typed = [msg(b'P', b"\0LISTEN a\0\0\x01\0\0\0\x17"), msg(b'S', b"")].concat();
        assert!(request(&typed, 1 << 20, &stmts, &none).is_none());
    }

    #[test]
    fn only_a_listen_only_simple_query_is_answered_here() {
        let mut b = BytesMut::new();
        write::query(&mut b, "LISTEN a; UNLISTEN *");
        let len = b.len();
        write::query(&mut b, "SELECT 1");
        let none = |_: &[u8]| None;
        let stmts = ClientStatements::default();
        let r = request(&b, 1 << 20, &stmts, &none).expect("a LISTEN request");
        assert_eq!(r.len, len);
        assert_eq!(r.steps, [Step::Run(vec![Op::Listen("a".into()), Op::UnlistenAll]), Step::Ready]);
        let mut b = BytesMut::new();
        write::query(&mut b, "LISTEN a; SELECT 1");
        assert!(request(&b, 1 << 20, &stmts, &none).is_none());
        assert!(request(&b[..4], 1 << 20, &stmts, &none).is_none(), "incomplete");
        let mut b = BytesMut::new();
        write::query(&mut b, "discard all");
        assert!(is_discard_all(&b, 1 << 20));
    }
}
