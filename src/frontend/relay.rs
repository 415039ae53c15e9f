//! The hot path: moves bytes between a client and the server it holds, looking only at
//! message boundaries and a handful of tags.
//!
//! Each direction has one read buffer that doubles as the write buffer: bytes are read in,
//! scanned (headers only), and the scanned prefix is written out as one batch. Bodies of
//! messages we do not inspect are forwarded as they arrive (a 100 MB COPY or a 10 MB value
//! never sits whole in memory). Only these are looked into:
//! - client → server: every tag (request boundaries `Q`/`S`/`F`, extended-protocol messages,
//!   `X`); bodies are never read;
//! - server → client: `Z` (its one status byte) and `S` ParameterStatus.
//!
//! Invariants:
//! - `Txn::releasable()` is the single source of truth for "the server may be returned":
//!   every request sent has had its `ReadyForQuery`, the last one said `I`, no
//!   extended-protocol message is waiting for a `Sync`, and every byte has been forwarded.
//! - [`pump`] is cancel-safe: all progress lives in `Half`/`Txn`, never in locals.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::backend::ServerConn;
use crate::net::Stream;
use crate::protocol::{self, backend as bmsg, btag, ftag, status, Header};

use crate::params::ClientParams;

/// Bytes read ahead per direction before reading pauses (backpressure).
pub const READ_AHEAD: usize = 64 * 1024;
/// Free space ensured before each read (the session uses the same, so a request read while
/// idle does not force a reallocation once the relay reads more).
pub const READ_CHUNK: usize = 16 * 1024;
/// Largest server message we buffer whole to inspect (ParameterStatus, ReadyForQuery).
/// Must fit in `READ_AHEAD` with its header, or reading would stop before the frame is whole.
const MAX_INSPECTED: usize = READ_AHEAD - protocol::HEADER_LEN;

/// One direction's read buffer (owned elsewhere) plus its scan position.
pub struct Half<'a> {
    /// Received bytes: `[..pos.fwd]` scanned and ready to forward, the rest not yet scanned.
    pub buf: &'a mut BytesMut,
    /// Scan position in `buf`.
    pub pos: &'a mut ScanPos,
}

/// Scan position of one direction.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScanPos {
    /// Bytes at the front of the buffer that are scanned and may be forwarded.
    pub fwd: usize,
    /// Body bytes of an opaque message that have not arrived yet; forwarded as they come.
    pub skip: usize,
}

impl Half<'_> {
    /// Whether nothing is buffered or owed.
    pub fn is_drained(&self) -> bool {
        self.buf.is_empty() && self.pos.skip == 0
    }
}

/// Transaction bookkeeping for one client, shared by both scan directions.
#[derive(Debug, Default)]
pub struct Txn {
    /// Requests sent (`Q`, `Sync`, `FunctionCall`) whose `ReadyForQuery` has not arrived.
    pub pending: u32,
    /// Extended-protocol messages sent since the last `Sync`.
    pub unsynced: bool,
    /// The client sent `Flush` (it waits for output without a Sync).
    pub flushed: bool,
    /// Status byte of the last `ReadyForQuery`.
    pub status: u8,
    /// The client sent `Terminate`.
    pub terminated: bool,
    /// Statement mode: a `ReadyForQuery` reported an open transaction.
    pub opened_transaction: bool,
    /// Syncs sent since the last `Execute`/`Query`. If that started a COPY FROM STDIN, the
    /// server ignored them (it ignores Sync in copy-in mode), so they get no `ReadyForQuery`.
    syncs_since_exec: u32,
}

impl Txn {
    /// A fresh client: idle, nothing pending.
    pub fn new() -> Txn {
        Txn { status: status::IDLE, ..Txn::default() }
    }

    /// No request is in flight and the server is outside a transaction.
    #[inline]
    pub fn server_idle(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.status == status::IDLE
    }

    /// The client has a complete request buffered (or enough bytes to start streaming).
    pub fn request_ready(&self, client: &ScanPos) -> bool {
        self.pending > 0 || self.flushed || client.fwd >= READ_AHEAD || (client.skip > 0 && client.fwd > 0)
    }
}

/// Why [`pump`] returned.
#[derive(Debug)]
pub enum Event {
    /// The server is idle and fully relayed: it may be released.
    Released,
    /// The client closed the connection or sent Terminate.
    ClientClosed,
    /// The server closed the connection.
    ServerClosed,
    /// Socket error on the client side.
    ClientIo(io::Error),
    /// Socket error on the server side.
    ServerIo(io::Error),
    /// The client sent something that is not valid protocol.
    ClientProtocol(protocol::Error),
    /// The server sent something that is not valid protocol.
    ServerProtocol(protocol::Error),
    /// Statement mode: the client opened a transaction block.
    TransactionInStatementMode,
    /// `query_timeout` passed.
    QueryTimeout,
    /// `idle_transaction_timeout` passed.
    IdleTransactionTimeout,
}

/// Timeouts applied while a server is held; computed once per session.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelayTimeouts {
    /// `query_timeout`.
    pub query: Option<std::time::Duration>,
    /// `idle_transaction_timeout`.
    pub idle_transaction: Option<std::time::Duration>,
}

/// Per-session relay settings and timer.
pub struct Relay {
    /// Release the server at `Z I` (transaction/statement mode, or a draining session).
    pub release_on_idle: bool,
    /// Statement mode: a transaction block is an error.
    pub statement_mode: bool,
    /// Largest client message body accepted.
    pub max_client_message: usize,
    timeouts: RelayTimeouts,
    timer: Option<Pin<Box<Sleep>>>,
    /// What the timer currently measures.
    phase: Option<Phase>,
}

/// What a held server is doing, for `query_timeout` / `idle_transaction_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request is in flight.
    Running,
    /// Waiting for the client inside a transaction (or an unsynced extended-protocol batch).
    InTransaction,
    /// Session mode, between transactions.
    Idle,
}

impl Relay {
    /// Relay settings for one session.
    pub fn new(
        release_on_idle: bool,
        statement_mode: bool,
        max_client_message: usize,
        timeouts: RelayTimeouts,
    ) -> Relay {
        let timer = (timeouts.query.is_some() || timeouts.idle_transaction.is_some())
            .then(|| Box::pin(tokio::time::sleep_until(Instant::now() + std::time::Duration::from_secs(86_400 * 365))));
        Relay { release_on_idle, statement_mode, max_client_message, timeouts, timer, phase: None }
    }

    /// Re-arms the timer when the session moves between "request running" (`query_timeout`),
    /// "waiting for the client inside a transaction" (`idle_transaction_timeout`) and "idle
    /// between transactions" (no timer). Returns an event if the armed timer has fired.
    fn poll_timer(&mut self, cx: &mut Context<'_>, txn: &Txn, client: &ScanPos, server: &ScanPos) -> Option<Event> {
        let timer = self.timer.as_mut()?;
        let phase = if txn.pending > 0 || txn.flushed || client.fwd > 0 || server.fwd > 0 {
            Phase::Running
        } else if txn.status != status::IDLE || txn.unsynced {
            Phase::InTransaction
        } else {
            // Session mode between transactions: no timeout applies.
            Phase::Idle
        };
        if self.phase != Some(phase) {
            self.phase = Some(phase);
            let limit = match phase {
                Phase::Running => self.timeouts.query,
                Phase::InTransaction => self.timeouts.idle_transaction,
                Phase::Idle => None,
            };
            let far = std::time::Duration::from_secs(86_400 * 365);
            timer.as_mut().reset(Instant::now() + limit.unwrap_or(far));
        }
        match (timer.as_mut().poll(cx), phase) {
            (Poll::Ready(()), Phase::Running) => Some(Event::QueryTimeout),
            (Poll::Ready(()), Phase::InTransaction) => Some(Event::IdleTransactionTimeout),
            _ => None,
        }
    }

    /// Forgets the timer phase (call when a new server is attached).
    pub fn reset_timer(&mut self) {
        self.phase = None;
    }
}

/// Scans newly received client bytes. Returns `Err` on an invalid message.
pub fn scan_client(h: &mut Half<'_>, txn: &mut Txn, max_body: usize) -> Result<(), protocol::Error> {
    loop {
        if h.pos.skip > 0 {
            let n = (h.buf.len() - h.pos.fwd).min(h.pos.skip);
            h.pos.fwd += n;
            h.pos.skip -= n;
            if h.pos.skip > 0 {
                return Ok(());
            }
        }
        let Some(hdr) = Header::parse(&h.buf[h.pos.fwd..], max_body)? else {
            return Ok(());
        };
        match hdr.tag {
            ftag::QUERY => {
                txn.pending += 1;
                txn.syncs_since_exec = 0;
            }
            ftag::FUNCTION_CALL => txn.pending += 1,
            ftag::SYNC => {
                txn.pending += 1;
                txn.syncs_since_exec += 1;
                txn.unsynced = false;
                txn.flushed = false;
            }
            ftag::EXECUTE => {
                txn.unsynced = true;
                txn.syncs_since_exec = 0;
            }
            ftag::PARSE | ftag::BIND | ftag::DESCRIBE | ftag::CLOSE => txn.unsynced = true,
            ftag::FLUSH => {
                // A Flush only matters after unsynced extended-protocol messages; a lone one
                // produces no output and must not pin the server.
                if txn.unsynced {
                    txn.flushed = true;
                }
            }
            ftag::COPY_DONE | ftag::COPY_FAIL => {
                // Syncs pipelined after the Execute that started this COPY were ignored.
                txn.pending -= txn.syncs_since_exec.min(txn.pending);
                txn.syncs_since_exec = 0;
            }
            ftag::COPY_DATA => {}
            ftag::TERMINATE => {
                // Never forwarded: in transaction mode the server is not the client's to end.
                h.buf.truncate(h.pos.fwd);
                txn.terminated = true;
                return Ok(());
            }
            other => return Err(protocol::Error::UnexpectedTag(other)),
        }
        let avail = h.buf.len() - h.pos.fwd;
        if avail >= hdr.frame_len() {
            h.pos.fwd += hdr.frame_len();
        } else {
            h.pos.fwd += avail;
            h.pos.skip = hdr.frame_len() - avail;
            return Ok(());
        }
    }
}

/// Scans newly received server bytes.
fn scan_server(
    h: &mut Half<'_>,
    txn: &mut Txn,
    statement_mode: bool,
    server: &mut ParamSink<'_>,
) -> Result<(), protocol::Error> {
    loop {
        if h.pos.skip > 0 {
            let n = (h.buf.len() - h.pos.fwd).min(h.pos.skip);
            h.pos.fwd += n;
            h.pos.skip -= n;
            if h.pos.skip > 0 {
                return Ok(());
            }
        }
        let rest = &h.buf[h.pos.fwd..];
        let Some(hdr) = Header::parse(rest, protocol::MAX_MESSAGE_LEN)? else {
            return Ok(());
        };
        match hdr.tag {
            btag::READY_FOR_QUERY | btag::PARAMETER_STATUS => {
                if hdr.body_len > MAX_INSPECTED {
                    return Err(protocol::Error::TooLarge { tag: hdr.tag, len: hdr.body_len as u32 + 4 });
                }
                if rest.len() < hdr.frame_len() {
                    return Ok(());
                }
                let body = &rest[protocol::HEADER_LEN..hdr.frame_len()];
                if hdr.tag == btag::READY_FOR_QUERY {
                    let &[st] = body else { return Err(protocol::Error::Malformed("ReadyForQuery")) };
                    txn.pending = txn.pending.saturating_sub(1);
                    txn.status = st;
                    if statement_mode && st != status::IDLE {
                        // Held back: the client gets an error in place of this ReadyForQuery.
                        txn.opened_transaction = true;
                        return Ok(());
                    }
                } else {
                    let (k, v) = bmsg::parse_parameter_status(body)?;
                    crate::backend::conn::set_param(server.conn, k, v);
                    server.client.observe(k, v);
                    *server.synced = Some(server.client.shared());
                }
                h.pos.fwd += hdr.frame_len();
            }
            _ => {
                let avail = rest.len();
                if avail >= hdr.frame_len() {
                    h.pos.fwd += hdr.frame_len();
                } else {
                    h.pos.fwd += avail;
                    h.pos.skip = hdr.frame_len() - avail;
                    return Ok(());
                }
            }
        }
    }
}

struct ParamSink<'a> {
    conn: &'a mut Vec<(String, String)>,
    synced: &'a mut Option<std::sync::Arc<crate::params::ParamSet>>,
    client: &'a mut ClientParams,
}

/// Polls one read into `h.buf`. `Ready(Ok(0))` is end of stream.
fn poll_read_into(cx: &mut Context<'_>, s: &mut Stream, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
    buf.reserve(READ_CHUNK);
    let fut = pin!(s.read_buf(buf));
    fut.poll(cx)
}

/// Polls one write of the scanned prefix of `h` to `s`.
fn poll_write_from(cx: &mut Context<'_>, s: &mut Stream, h: &mut Half<'_>) -> Poll<io::Result<usize>> {
    match Pin::new(s).poll_write(cx, &h.buf[..h.pos.fwd]) {
        Poll::Ready(Ok(n)) => {
            h.buf.advance(n);
            h.pos.fwd -= n;
            Poll::Ready(Ok(n))
        }
        other => other,
    }
}

/// The client's side of a session as the relay sees it.
pub struct ClientIo<'a> {
    /// Client socket.
    pub stream: &'a mut Stream,
    /// Client read buffer.
    pub buf: &'a mut BytesMut,
    /// Client scan position.
    pub pos: &'a mut ScanPos,
    /// Client's tracked parameters.
    pub params: &'a mut ClientParams,
}

/// Relays between the client and `server` until an [`Event`]. `spos` is the server-side scan
/// position (reset when a server is attached).
///
/// # Cancel safety
/// Cancel-safe: all state is in the arguments.
pub async fn pump(
    relay: &mut Relay,
    client: ClientIo<'_>,
    server: &mut ServerConn,
    spos: &mut ScanPos,
    txn: &mut Txn,
) -> Event {
    let ClientIo { stream: cstream, buf: cbuf, pos: cpos, params } = client;
    let ServerConn { stream: sstream, buf: sbuf, params: sparams, synced, .. } = server;
    std::future::poll_fn(|cx| {
        let mut c = Half { buf: &mut *cbuf, pos: &mut *cpos };
        let mut s = Half { buf: &mut *sbuf, pos: &mut *spos };
        let mut sink = ParamSink { conn: &mut *sparams, synced: &mut *synced, client: &mut *params };
        poll_pump(cx, relay, cstream, &mut c, sstream, &mut s, txn, &mut sink)
    })
    .await
}

#[allow(clippy::too_many_arguments)]
fn poll_pump(
    cx: &mut Context<'_>,
    relay: &mut Relay,
    client: &mut Stream,
    c: &mut Half<'_>,
    server: &mut Stream,
    s: &mut Half<'_>,
    txn: &mut Txn,
    sink: &mut ParamSink<'_>,
) -> Poll<Event> {
    loop {
        let mut progress = false;
        // Client → server.
        if c.pos.fwd > 0 {
            match poll_write_from(cx, server, c) {
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Event::ServerIo(e)),
                Poll::Pending => {}
            }
        }
        // Server → client.
        if s.pos.fwd > 0 {
            match poll_write_from(cx, client, s) {
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Event::ClientIo(e)),
                Poll::Pending => {}
            }
        }
        if txn.opened_transaction && s.pos.fwd == 0 {
            return Poll::Ready(Event::TransactionInStatementMode);
        }
        let all_relayed = s.is_drained() && c.pos.fwd == 0 && c.pos.skip == 0;
        if all_relayed && txn.server_idle() && (relay.release_on_idle || txn.terminated) {
            return Poll::Ready(if txn.terminated { Event::ClientClosed } else { Event::Released });
        }
        if txn.terminated && c.pos.fwd == 0 && txn.pending == 0 && s.pos.fwd == 0 {
            // The client left inside a transaction: nothing more will come.
            return Poll::Ready(Event::ClientClosed);
        }
        // Read from the client (unless it said goodbye or we are far ahead of the server).
        if !txn.terminated && c.buf.len() < READ_AHEAD {
            match poll_read_into(cx, client, c.buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Event::ClientClosed),
                Poll::Ready(Ok(_)) => {
                    if let Err(e) = scan_client(c, txn, relay.max_client_message) {
                        return Poll::Ready(Event::ClientProtocol(e));
                    }
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Event::ClientIo(e)),
                Poll::Pending => {}
            }
        }
        // Read from the server.
        if s.buf.len() < READ_AHEAD {
            match poll_read_into(cx, server, s.buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Event::ServerClosed),
                Poll::Ready(Ok(_)) => {
                    if let Err(e) = scan_server(s, txn, relay.statement_mode, sink) {
                        return Poll::Ready(Event::ServerProtocol(e));
                    }
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Event::ServerIo(e)),
                Poll::Pending => {}
            }
        }
        if !progress {
            if let Some(ev) = relay.poll_timer(cx, txn, c.pos, s.pos) {
                return Poll::Ready(ev);
            }
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests;
