//! Surviving schema changes under shared prepared statements (issue 8): a server answers a
//! `Bind` of a prepared statement with `0A000 cached plan must not change result type`
//! because *its* copy of the statement predates an `ALTER TABLE`. pgsluice shares server
//! statements by text, so a client that prepared (and described) the statement after the
//! change can hit a stale copy prepared earlier for another client — an error PostgreSQL
//! would never give it.
//!
//! When the request is one the client can safely see re-run — outside a transaction block,
//! nothing of its answer relayed yet, nothing pipelined behind it, `Bind` [`Describe` portal]
//! `Execute`… `Sync` of a named statement, captured whole (at most [`MAX_CAPTURE`] bytes) —
//! pgsluice swallows the error, re-prepares the statement on that server (`Close` + `Parse`)
//! and runs the request again, once:
//! - if the request describes its portal (libpq, pgbench), at once: the client gets the new
//!   row description with the rows;
//! - otherwise only if the re-prepared statement's row description equals the one the client
//!   was given when it described the statement (checked with a `Describe` first): a client
//!   that described the old shape must see the error, as PostgreSQL would show it, rather
//!   than rows of a shape it does not expect.
//!
//! In every other case the error passes through and the connection is closed at release
//! (its stale copies go with it).

use bytes::BytesMut;

use super::queue::{Action, Expect, Kind, Undo};
use super::{Ctx, Half};
use crate::protocol::{ftag, status, write, HEADER_LEN};

/// PostgreSQL's message for executing a statement whose result type changed since it was
/// prepared (0A000); drivers recognise it (asyncpg re-prepares).
pub(super) const STALE_STATEMENT: &str = "cached plan must not change result type";

/// Largest request captured for a retry.
pub const MAX_CAPTURE: usize = 8 * 1024;
/// Most messages in a captured request.
const MAX_KINDS: usize = 8;

/// The capture of the current request (on the server connection's pipeline).
#[derive(Debug, Default)]
pub struct Capture {
    state: State,
    /// The request as sent to the server (statement names rewritten).
    bytes: BytesMut,
    kinds: [Option<Kind>; MAX_KINDS],
    stmt: Option<std::sync::Arc<crate::prepared::Stmt>>,
    portal_described: bool,
    /// The server's error, relayed if the retry cannot go on.
    error: BytesMut,
    /// The re-prepare or the shape check failed.
    failed: bool,
    /// The shape check is under way: the request is sent again (or not) when it ends, so
    /// the client's later requests wait until then.
    checking: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Off,
    /// A Bind of a named statement started a request; collecting its messages.
    Capturing,
    /// The whole request (up to its Sync) is captured.
    Ready,
    /// A retry is under way (at most one per request).
    Retrying,
}

impl Capture {
    /// Forgets any capture (a new client).
    pub fn reset(&mut self) {
        self.state = State::Off;
        self.stmt = None;
        self.checking = false;
    }

    /// Whether the client's next messages must wait (see `checking`).
    #[inline]
    pub fn holds_client(&self) -> bool {
        self.checking
    }

    /// A `Bind` (rewritten to the server statement `stmt`) starts a request. `fresh`: no
    /// transaction block, nothing in flight. `bind` is its body after the header as sent.
    pub fn bind(
        &mut self,
        fresh: bool,
        stmt: &std::sync::Arc<crate::prepared::Stmt>,
        prefix: &[u8],
        params: Option<&[u8]>,
    ) {
        if self.state == State::Retrying {
            return;
        }
        self.state = State::Off;
        let Some(params) = params else { return };
        if !fresh || prefix.len() + params.len() > MAX_CAPTURE {
            return;
        }
        self.bytes.clear();
        self.bytes.extend_from_slice(prefix);
        self.bytes.extend_from_slice(params);
        self.kinds = [None; MAX_KINDS];
        self.kinds[0] = Some(Kind::Bind);
        self.stmt = Some(stmt.clone());
        self.portal_described = false;
        self.state = State::Capturing;
    }

    /// Any other client message of the request: `frame` when it arrived whole.
    #[inline]
    pub fn message(&mut self, tag: u8, frame: Option<&[u8]>) {
        if self.state != State::Capturing {
            if self.state == State::Ready {
                // A message after the Sync: the request is no longer the last one.
                self.state = State::Off;
            }
            return;
        }
        let kind = match (tag, frame) {
            (ftag::EXECUTE, Some(_)) => Kind::Execute,
            (ftag::SYNC, Some(_)) => Kind::Sync,
            (ftag::DESCRIBE, Some(f)) if f.get(HEADER_LEN) == Some(&b'P') => {
                self.portal_described = true;
                Kind::Describe
            }
            _ => {
                self.state = State::Off;
                return;
            }
        };
        let Some(frame) = frame else { return };
        let Some(slot) = self.kinds.iter_mut().find(|k| k.is_none()) else {
            self.state = State::Off;
            return;
        };
        if self.bytes.len() + frame.len() > MAX_CAPTURE {
            self.state = State::Off;
            return;
        }
        *slot = Some(kind);
        self.bytes.extend_from_slice(frame);
        if kind == Kind::Sync {
            self.state = State::Ready;
        }
    }
}

/// The server's answer to the front `Bind` is `0A000 cached plan must not change result
/// type` (the frame at the scan position, `frame_len` bytes). Starts a retry if the request
/// allows it: the error is dropped, the retry is queued. Returns false when the error must be
/// relayed.
pub(super) fn start(s: &mut Half<'_>, ctx: &mut Ctx<'_>, frame_len: usize) -> bool {
    let c = &ctx.x.retry;
    if c.state != State::Ready || ctx.x.txn.status != status::IDLE {
        return false;
    }
    let Some(stmt) = c.stmt.clone() else { return false };
    let shape = stmt.shape.load(std::sync::atomic::Ordering::Relaxed);
    if !c.portal_described && shape == 0 {
        // The client's idea of the result is unknown: it cannot be checked.
        return false;
    }
    // The captured request must be the only one in flight, its Bind at the front.
    let q = &ctx.x.queue;
    let requests = q.iter().filter(|e| e.kind.ends_with_ready()).count();
    if q.front().map(|e| e.kind) != Some(Kind::Bind) || requests != 1 || q.back().map(|e| e.kind) != Some(Kind::Sync) {
        return false;
    }
    let direct = c.portal_described;
    let error = s.buf[s.pos.fwd..s.pos.fwd + frame_len].to_vec();
    s.drop_frame(&mut ctx.x.to_client, frame_len);
    // The server now skips the rest of the request and answers its Sync: pgsluice's.
    ctx.pop_front();
    ctx.x.skipping = true;
    if let Some(last) = ctx.x.queue.back_mut() {
        last.action = Action::Swallow;
    }
    let out = &mut ctx.x.to_server;
    write::close(out, b'S', &stmt.name);
    ctx.x.queue.push_back(Expect { kind: Kind::Close, action: Action::RetryOwn, undo: None });
    ctx.x.tally.server_parses += 1;
    write::parse_raw(&mut ctx.x.to_server, &stmt.name, &stmt.rest);
    let c = &mut ctx.x.retry;
    c.error.clear();
    c.error.extend_from_slice(&error);
    c.failed = false;
    c.state = State::Retrying;
    // If the re-prepare fails, the statement is gone from the server: the undo forgets it.
    let gone = || Some(Box::new(Undo { prepared: Some(stmt.key), ..Undo::default() }));
    if direct {
        // The request describes its portal: run it again right away. A failing re-prepare
        // is relayed (its error explains the skipped request).
        ctx.x.queue.push_back(Expect { kind: Kind::Parse, action: Action::Swallow, undo: gone() });
        resend(ctx);
    } else {
        ctx.x.retry.checking = true;
        ctx.x.queue.push_back(Expect { kind: Kind::Parse, action: Action::RetryOwn, undo: gone() });
        write::describe(&mut ctx.x.to_server, b'S', &stmt.name);
        ctx.x.queue.push_back(Expect { kind: Kind::Describe, action: Action::RetryOwn, undo: None });
        write::empty(&mut ctx.x.to_server, ftag::SYNC);
        ctx.x.queue.push_back(Expect { kind: Kind::Sync, action: Action::RetryDecide, undo: None });
        ctx.x.txn.pending += 1;
    }
    tracing::debug!("stale prepared statement on this server (0A000): re-preparing it and retrying the request");
    true
}

/// The same error answering a client's `Describe` of a statement (PostgreSQL revalidates
/// there too): the client is preparing it now, so whatever shape the fresh copy has is the
/// one it will expect. If the request is `Describe` + `Sync` outside a transaction block
/// (its `Parse` answered by pgsluice), the stale copy is re-prepared and described again.
pub(super) fn start_describe(s: &mut Half<'_>, ctx: &mut Ctx<'_>, frame_len: usize) -> bool {
    if ctx.x.txn.status != status::IDLE || !records_shape(ctx.x.queue.front()) {
        return false;
    }
    let q = &ctx.x.queue;
    if q.len() != 2 || q.back().map(|e| e.kind) != Some(Kind::Sync) {
        return false;
    }
    let Some(stmt) = q.front().and_then(|h| h.undo.as_ref()).and_then(|u| u.describe.clone()) else { return false };
    s.drop_frame(&mut ctx.x.to_client, frame_len);
    ctx.pop_front();
    ctx.x.skipping = true;
    if let Some(last) = ctx.x.queue.back_mut() {
        last.action = Action::Swallow;
    }
    write::close(&mut ctx.x.to_server, b'S', &stmt.name);
    ctx.x.queue.push_back(Expect { kind: Kind::Close, action: Action::RetryOwn, undo: None });
    ctx.x.tally.server_parses += 1;
    write::parse_raw(&mut ctx.x.to_server, &stmt.name, &stmt.rest);
    let gone = Some(Box::new(Undo { prepared: Some(stmt.key), ..Undo::default() }));
    ctx.x.queue.push_back(Expect { kind: Kind::Parse, action: Action::Swallow, undo: gone });
    write::describe(&mut ctx.x.to_server, b'S', &stmt.name);
    // (PostgreSQL sent the ParameterDescription before it found the copy stale.)
    ctx.x.queue.push_back(Expect { kind: Kind::Describe, action: Action::DescribeAgain, undo: describe_undo(&stmt) });
    write::empty(&mut ctx.x.to_server, ftag::SYNC);
    ctx.x.queue.push_back(Expect::forward(Kind::Sync));
    ctx.x.txn.pending += 1;
    ctx.x.retry.state = State::Retrying;
    tracing::debug!("stale prepared statement on this server (0A000 at Describe): re-preparing it");
    true
}

/// Queues the captured request again.
fn resend(ctx: &mut Ctx<'_>) {
    let c = &mut ctx.x.retry;
    ctx.x.to_server.extend_from_slice(&c.bytes);
    for k in c.kinds.iter().flatten() {
        ctx.x.queue.push_back(Expect::forward(*k));
    }
    ctx.x.txn.pending += 1;
}

/// An answer to one of pgsluice's own retry messages ([`Action::RetryOwn`]), whole at the
/// scan position: dropped; a RowDescription/NoData is compared with the client's; an error
/// fails the retry.
pub(super) fn own_answer(s: &mut Half<'_>, ctx: &mut Ctx<'_>, tag: u8, frame_len: usize) {
    let c = &mut ctx.x.retry;
    match tag {
        crate::protocol::btag::ERROR_RESPONSE => c.failed = true,
        b'T' | b'n' => {
            let body = &s.buf[s.pos.fwd + HEADER_LEN..s.pos.fwd + frame_len];
            let shape = shape_of(tag, body);
            let client = c.stmt.as_ref().map_or(0, |st| st.shape.load(std::sync::atomic::Ordering::Relaxed));
            if shape != client {
                c.failed = true;
            }
            if let Some(key) = c.stmt.as_ref().map(|st| st.key) {
                ctx.conn.shapes.insert(key, shape);
                if let Some(known) = ctx.known {
                    known.set_shape(key, shape);
                }
            }
        }
        _ => {}
    }
    s.drop_frame(&mut ctx.x.to_client, frame_len);
}

/// The ReadyForQuery ending the shape check ([`Action::RetryDecide`]) arrived (and is
/// dropped by the caller): run the request again, or give the client the original error.
pub(super) fn decide(ctx: &mut Ctx<'_>, st: u8) {
    ctx.x.retry.checking = false;
    let failed = ctx.x.retry.failed;
    if failed {
        let c = &mut ctx.x.retry;
        ctx.x.to_client.extend_from_slice(&c.error);
        write::ready_for_query(&mut ctx.x.to_client, st);
        c.state = State::Off;
        ctx.x.tally.clear_timers();
        // The copy here is fresh now; this client's statement is what is stale (its next
        // Bind here gets 0A000 from pgsluice, see `client_is_stale`).
    } else {
        resend(ctx);
    }
}

/// The request ended (its ReadyForQuery was relayed): a new one may be captured.
#[inline]
pub(super) fn finished(ctx: &mut Ctx<'_>) {
    if ctx.x.retry.state == State::Retrying && ctx.x.queue.is_empty() {
        ctx.x.retry.state = State::Off;
    }
}

/// A compact identity of a RowDescription (or NoData), never 0: FNV-1a over what
/// PostgreSQL's result-type check compares — each column's name, type and type modifier —
/// not the table OIDs and column numbers (a table recreated alike keeps its shape). A body
/// that does not parse is hashed whole.
pub fn shape_of(tag: u8, body: &[u8]) -> u64 {
    if tag == b'n' {
        return 1;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    match columns(body) {
        Some(cols) => {
            for (name, ty, typmod) in cols {
                eat(name);
                eat(&[0]);
                eat(ty);
                eat(typmod);
            }
        }
        None => eat(body),
    }
    h.max(2)
}

/// A column of a RowDescription: name, type oid, type modifier (raw bytes).
type Column<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// The columns of a RowDescription body.
fn columns(body: &[u8]) -> Option<Vec<Column<'_>>> {
    let n = u16::from_be_bytes(body.get(..2)?.try_into().ok()?) as usize;
    let mut rest = &body[2..];
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let (name, after) = crate::protocol::cstr(rest)?;
        // table oid (4), column number (2), type oid (4), type size (2), type modifier (4),
        // format (2)
        let f = after.get(..18)?;
        out.push((name, &f[6..10], &f[12..16]));
        rest = &after[18..];
    }
    Some(out)
}

/// Records the shape a client was told for its statement (`Describe` of a statement), which
/// is also the shape of this connection's copy.
pub(super) fn record_shape(ctx: &mut Ctx<'_>, tag: u8, body: &[u8]) {
    let shape = shape_of(tag, body);
    if let Some(stmt) = ctx.x.queue.front().and_then(|h| h.undo.as_ref()).and_then(|u| u.describe.as_ref()) {
        stmt.shape.store(shape, std::sync::atomic::Ordering::Relaxed);
        let key = stmt.key;
        ctx.conn.shapes.insert(key, shape);
        if let Some(known) = ctx.known {
            known.set_shape(key, shape);
        }
    }
}

/// Before pgsluice prepares `stmt` on this connection for a client's Bind: whether the
/// client's description differs from the latest one a server of the pool gave (then its
/// statement predates a schema change, and PostgreSQL would refuse the execution). Otherwise
/// the copy about to be prepared here is taken to have that latest shape.
pub(super) fn stale_for_new_copy(ctx: &mut Ctx<'_>, stmt: &crate::prepared::Stmt) -> bool {
    let mine = stmt.shape.load(std::sync::atomic::Ordering::Relaxed);
    let Some(latest) = ctx.known.and_then(|k| k.shape(&stmt.key)) else { return false };
    if mine != 0 && mine != latest {
        return true;
    }
    ctx.conn.shapes.insert(stmt.key, latest);
    false
}

/// Whether the client's description of `stmt` is older than this connection's copy (a
/// statement described before a schema change, executed on a copy prepared after it), so
/// PostgreSQL would refuse the execution. Only when the copy's recorded shape is also the
/// latest any server of the pool gave: a copy recorded with an older shape may itself be
/// stale, and then the server decides (and `start` retries).
#[inline]
pub(super) fn client_is_stale(ctx: &Ctx<'_>, stmt: &crate::prepared::Stmt) -> bool {
    let mine = stmt.shape.load(std::sync::atomic::Ordering::Relaxed);
    if mine == 0 || ctx.conn.shapes.is_empty() {
        return false;
    }
    let Some(&copy) = ctx.conn.shapes.get(&stmt.key) else { return false };
    // (The pool's lock is taken only in this rare case.)
    copy != mine && ctx.known.and_then(|k| k.shape(&stmt.key)) == Some(copy)
}

/// Whether the front request records a statement's shape (its RowDescription must be read
/// whole).
#[inline]
pub(super) fn records_shape(head: Option<&Expect>) -> bool {
    head.is_some_and(|h| h.kind == Kind::Describe && h.undo.as_ref().is_some_and(|u| u.describe.is_some()))
}

/// An `Undo` recording the shape of `stmt` when its Describe is answered.
pub(super) fn describe_undo(stmt: &std::sync::Arc<crate::prepared::Stmt>) -> Option<Box<Undo>> {
    Some(Box::new(Undo { describe: Some(stmt.clone()), ..Undo::default() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row_description(cols: &[(&str, u32, u32)]) -> Vec<u8> {
        let mut b = (cols.len() as u16).to_be_bytes().to_vec();
        for (name, table, ty) in cols {
            b.extend_from_slice(name.as_bytes());
            b.push(0);
            b.extend_from_slice(&table.to_be_bytes());
            b.extend_from_slice(&1u16.to_be_bytes());
            b.extend_from_slice(&ty.to_be_bytes());
            b.extend_from_slice(&4i16.to_be_bytes());
            b.extend_from_slice(&(-1i32).to_be_bytes());
            b.extend_from_slice(&0u16.to_be_bytes());
        }
        b
    }

    #[test]
    fn shapes_compare_names_and_types_not_tables() {
        assert_eq!(shape_of(b'n', b""), 1);
        let a = shape_of(b'T', &row_description(&[("a", 1000, 23)]));
        let same_in_other_table = shape_of(b'T', &row_description(&[("a", 2000, 23)]));
        let two = shape_of(b'T', &row_description(&[("a", 1000, 23), ("b", 1000, 23)]));
        let other_type = shape_of(b'T', &row_description(&[("a", 1000, 20)]));
        assert_eq!(a, same_in_other_table);
        assert_ne!(a, two);
        assert_ne!(a, other_type);
        assert!(a > 1 && shape_of(b'T', b"\x00\x05junk") > 1, "unparsable bodies still hash");
    }

    #[test]
    fn a_capture_is_the_whole_last_request() {
        let stmt = crate::prepared::Stmt::new(b"select 1\0\0\0");
        let mut c = Capture::default();
        c.bind(true, &stmt, b"B-prefix", Some(b"params"));
        c.message(ftag::EXECUTE, Some(b"E\0\0\0\x09\0\0\0\0\0"));
        c.message(ftag::SYNC, Some(b"S\0\0\0\x04"));
        assert_eq!(c.state, State::Ready);
        assert_eq!(c.kinds.iter().flatten().count(), 3);
        // A message after it: not the last request any more.
        c.message(ftag::QUERY, Some(b"Q"));
        assert_eq!(c.state, State::Off);
        // Inside a transaction, or streamed parameters: no capture.
        c.bind(false, &stmt, b"B", Some(b"p"));
        assert_eq!(c.state, State::Off);
        c.bind(true, &stmt, b"B", None);
        assert_eq!(c.state, State::Off);
        // A Parse in the request: no capture.
        c.bind(true, &stmt, b"B", Some(b"p"));
        c.message(ftag::PARSE, Some(b"P"));
        assert_eq!(c.state, State::Off);
    }
}
