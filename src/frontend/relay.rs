//! The hot path: moves bytes between a client and the server it holds, looking only at
//! message boundaries and a handful of tags.
//!
//! Each direction has one read buffer that doubles as the write buffer: bytes are read in,
//! scanned (headers only), and the scanned prefix is written out as one batch. Bodies of
//! messages we do not inspect are forwarded as they arrive (a 100 MB COPY or a 10 MB value
//! never sits whole in memory). When a message must change on its way (a client's prepared
//! statement name becomes pgsluice's, a ParseComplete the server never sent is added, one it
//! sent for pgsluice's own Parse is dropped), the bytes before it move to the direction's
//! side buffer in the server's [`Pipeline`], the changed message is appended there, and the
//! side buffer is written before the read buffer's scanned prefix — so order is kept and
//! every byte is copied at most once. Only these are looked into:
//! - client → server ([`client`]): every tag; bodies of named `Parse`/`Describe`/`Close`,
//!   the names at the start of `Bind`, and short simple queries (`DEALLOCATE name`);
//! - server → client ([`server`]): every tag, to match answers to requests; bodies of `Z`,
//!   `S` ParameterStatus, `C` CommandComplete and `E` ErrorResponse.
//!
//! Invariants:
//! - `releasable` (checked in [`poll_pump`]) is the single source of truth for "the server
//!   may be returned": no request is outstanding in the pipeline, the last ReadyForQuery said
//!   `I`, no extended-protocol message is waiting for a `Sync`, and every byte is forwarded.
//! - [`pump`] is cancel-safe: all progress lives in `Half`/`Txn`/`Pipeline`, never in locals.

mod client;
pub mod retry;
mod server;

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::backend::ServerConn;
use crate::net::Stream;
use crate::params::ClientParams;
use crate::pipeline::Pipeline;
use crate::prepared::{ClientStatements, KnownStatements};
use crate::protocol::{self, ftag, status, Header};

pub use client::{answer_without_server, scan_client};

/// Bytes read ahead per direction before reading pauses (backpressure).
pub const READ_AHEAD: usize = 64 * 1024;
/// Free space ensured before each read (the session uses the same, so a request read while
/// idle does not force a reallocation once the relay reads more).
pub const READ_CHUNK: usize = 16 * 1024;

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
    /// The scanner waits for a whole frame of this many unscanned bytes (reading may go
    /// past `READ_AHEAD` to get it); 0 when not waiting.
    pub need: usize,
}

impl Half<'_> {
    /// Whether nothing is buffered or owed.
    pub fn is_drained(&self) -> bool {
        self.buf.is_empty() && self.pos.skip == 0
    }

    /// Marks the frame at the scan position, `frame_len` bytes long, as forwarded as is
    /// (streaming the part that has not arrived yet).
    #[inline]
    fn pass(&mut self, frame_len: usize) {
        let avail = self.buf.len() - self.pos.fwd;
        if avail >= frame_len {
            self.pos.fwd += frame_len;
        } else {
            self.pos.fwd += avail;
            self.pos.skip = frame_len - avail;
        }
    }

    /// Forwards the body bytes still owed by a streamed message; false while some are missing.
    #[inline]
    fn stream_owed(&mut self) -> bool {
        if self.pos.skip > 0 {
            let n = (self.buf.len() - self.pos.fwd).min(self.pos.skip);
            self.pos.fwd += n;
            self.pos.skip -= n;
        }
        self.pos.skip == 0
    }

    /// Moves the scanned prefix to `out` (which is written first), so that something can be
    /// appended to `out` after it, or the next frame dropped from the read buffer.
    #[inline]
    fn spill(&mut self, out: &mut BytesMut) {
        if self.pos.fwd > 0 {
            out.extend_from_slice(&self.buf[..self.pos.fwd]);
            self.buf.advance(self.pos.fwd);
            self.pos.fwd = 0;
        }
    }

    /// Drops the frame at the scan position (which must be whole), after spilling.
    #[inline]
    fn drop_frame(&mut self, out: &mut BytesMut, frame_len: usize) {
        self.spill(out);
        self.buf.advance(frame_len);
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
    /// Requests scanned since the server was attached.
    pub requests: u32,
    /// Session state the client set (issue 8): while pinned, it keeps its server.
    pub pin: crate::sql::session_state::PinState,
    /// The server was attached for a read (routed to a replica): outside a transaction it
    /// takes one request at a time, and the next request is held back to be routed on its
    /// own once this server is released.
    pub one_request: bool,
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
}

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

/// Walks the frames a client buffered while idle (headers only) to decide whether a server
/// is needed yet. Invalid framing or tags are an error.
pub fn inspect_idle(buf: &[u8], max_body: usize) -> Result<Buffered, protocol::Error> {
    let mut b = Buffered::default();
    let mut off = 0;
    let mut extended = false;
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
    Ok(b)
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
    /// Rewrite named prepared statements (transaction/statement mode with
    /// `max_prepared_statements` > 0).
    pub track_prepared: bool,
    /// Largest client message body accepted.
    pub max_client_message: usize,
    timeouts: RelayTimeouts,
    timer: Option<Pin<Box<Sleep>>>,
    /// What the timer currently measures.
    phase: Option<Phase>,
    /// The client closed its side while requests were held back behind a read-routed
    /// request: stop reading it, finish what it sent.
    client_eof: bool,
    /// Session-state rules (transaction/statement mode with `session_state` pin or reject).
    pub session: Option<std::sync::Arc<SessionRules>>,
    /// pgsluice is shutting down: a pinned client's server is released at its next idle
    /// point too (and the client closed).
    pub draining: bool,
}

/// How a pooled client's session-state changes are handled (issue 8, see
/// [`crate::sql::session_state`]).
pub struct SessionRules {
    /// `Pin` or `Reject` (`Allow` means no rules at all).
    pub policy: crate::config::SessionState,
    /// Parameters replayed per client, which never pin.
    pub tracked: std::sync::Arc<crate::params::Tracked>,
    /// The client, whose `pinned` flag the console and metrics count.
    pub info: std::sync::Arc<crate::stats::ClientInfo>,
}

impl SessionRules {
    /// Whether a `SET` of parameter `name` is followed per client without pinning: only the
    /// built-in tracked parameters, which PostgreSQL reports with ParameterStatus. Those of
    /// `track_extra_parameters` are replayed from what the client gave at login, but a later
    /// `SET` of them is not reported (PostgreSQL < 18) and so pins.
    pub fn is_tracked(&self, name: &str) -> bool {
        crate::params::canonical(name).is_some()
    }
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
        track_prepared: bool,
        max_client_message: usize,
        timeouts: RelayTimeouts,
    ) -> Relay {
        let timer = (timeouts.query.is_some() || timeouts.idle_transaction.is_some())
            .then(|| Box::pin(tokio::time::sleep_until(Instant::now() + std::time::Duration::from_secs(86_400 * 365))));
        Relay {
            release_on_idle,
            statement_mode,
            track_prepared: track_prepared && release_on_idle,
            max_client_message,
            timeouts,
            timer,
            phase: None,
            client_eof: false,
            session: None,
            draining: false,
        }
    }

    /// Re-arms the timer when the session moves between "request running" (`query_timeout`),
    /// "waiting for the client inside a transaction" (`idle_transaction_timeout`) and "idle
    /// between transactions" (no timer). Returns an event if the armed timer has fired.
    fn poll_timer(&mut self, cx: &mut Context<'_>, txn: &Txn, busy: bool) -> Option<Event> {
        let timer = self.timer.as_mut()?;
        let phase = if txn.pending > 0 || txn.flushed || busy {
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
        self.client_eof = false;
    }
}

/// What the scanners share: the client's bookkeeping and the server's pipeline.
pub struct Ctx<'a> {
    /// Request/transaction accounting.
    pub txn: &'a mut Txn,
    /// The held server's outstanding requests, side buffers and prepared statements.
    pub pl: &'a mut Pipeline,
    /// The client's named prepared statements.
    pub stmts: &'a mut ClientStatements,
    /// Rewrite named prepared statements.
    pub track: bool,
    /// Largest client message body accepted.
    pub max_body: usize,
    /// Statement mode: a transaction block is an error.
    pub statement_mode: bool,
    /// The pool's statements that some server accepted.
    pub known: Option<&'a KnownStatements>,
    /// Session-state rules, if any.
    pub session: Option<&'a SessionRules>,
    /// Where the server's traffic counts go at the end of each transaction.
    pub stats: Option<&'a crate::stats::PoolStats>,
}

/// Polls one read into `buf`. `Ready(Ok(0))` is end of stream.
fn poll_read_into(cx: &mut Context<'_>, s: &mut Stream, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
    buf.reserve(READ_CHUNK);
    let fut = pin!(s.read_buf(buf));
    fut.poll(cx)
}

/// Polls one write toward `s`: the side buffer `out` first, else the scanned prefix of `h`.
/// `Ready(Ok(n))`: `n` bytes were written.
fn poll_write_from(
    cx: &mut Context<'_>,
    s: &mut Stream,
    out: &mut BytesMut,
    h: &mut Half<'_>,
) -> Poll<io::Result<usize>> {
    if !out.is_empty() {
        return match Pin::new(s).poll_write(cx, out) {
            Poll::Ready(Ok(n)) => {
                out.advance(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        };
    }
    match Pin::new(s).poll_write(cx, &h.buf[..h.pos.fwd]) {
        Poll::Ready(Ok(n)) => {
            h.buf.advance(n);
            h.pos.fwd -= n;
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
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
    /// Client's named prepared statements.
    pub stmts: &'a mut ClientStatements,
    /// The pool's statements that some server accepted.
    pub known: &'a KnownStatements,
    /// The pool's traffic counters.
    pub stats: &'a crate::stats::PoolStats,
}

/// Where ParameterStatus values go: the server's list and the client's tracked set.
pub(crate) struct ParamSink<'a> {
    conn: &'a mut Vec<(String, String)>,
    synced: &'a mut Option<std::sync::Arc<crate::params::ParamSet>>,
    client: &'a mut ClientParams,
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
    let ClientIo { stream: cstream, buf: cbuf, pos: cpos, params, stmts, known, stats } = client;
    let ServerConn { stream: sstream, buf: sbuf, params: sparams, synced, pipeline, .. } = server;
    // (A clone: the relay itself is borrowed mutably by each poll.)
    let session = relay.session.clone();
    std::future::poll_fn(|cx| {
        let mut c = Half { buf: &mut *cbuf, pos: &mut *cpos };
        let mut s = Half { buf: &mut *sbuf, pos: &mut *spos };
        let mut sink = ParamSink { conn: &mut *sparams, synced: &mut *synced, client: &mut *params };
        let mut ctx = Ctx {
            txn: &mut *txn,
            pl: &mut *pipeline,
            stmts: &mut *stmts,
            track: relay.track_prepared,
            max_body: relay.max_client_message,
            statement_mode: relay.statement_mode,
            known: Some(known),
            session: session.as_deref(),
            stats: Some(stats),
        };
        poll_pump(cx, relay, cstream, &mut c, sstream, &mut s, &mut ctx, &mut sink)
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
    ctx: &mut Ctx<'_>,
    sink: &mut ParamSink<'_>,
) -> Poll<Event> {
    loop {
        let mut progress = false;
        // Client bytes not scanned yet: just read, buffered before the server was attached,
        // or held back by a barrier that has lifted.
        if !ctx.txn.terminated && c.buf.len() > c.pos.fwd {
            let before = (c.buf.len(), c.pos.fwd, ctx.pl.to_server.len(), ctx.pl.to_client.len());
            if let Err(e) = client::scan_client(c, s, ctx) {
                return Poll::Ready(Event::ClientProtocol(e));
            }
            progress |= before != (c.buf.len(), c.pos.fwd, ctx.pl.to_server.len(), ctx.pl.to_client.len());
        }
        // Client → server.
        if c.pos.fwd > 0 || !ctx.pl.to_server.is_empty() {
            match poll_write_from(cx, server, &mut ctx.pl.to_server, c) {
                Poll::Ready(Ok(n)) => {
                    ctx.pl.tally.received += n as u64;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Event::ServerIo(e)),
                Poll::Pending => {}
            }
        }
        // Server → client.
        if s.pos.fwd > 0 || !ctx.pl.to_client.is_empty() {
            match poll_write_from(cx, client, &mut ctx.pl.to_client, s) {
                Poll::Ready(Ok(n)) => {
                    ctx.pl.tally.sent += n as u64;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Event::ClientIo(e)),
                Poll::Pending => {}
            }
        }
        let to_client_done = s.pos.fwd == 0 && ctx.pl.to_client.is_empty();
        if ctx.txn.opened_transaction && to_client_done {
            return Poll::Ready(Event::TransactionInStatementMode);
        }
        let all_relayed = s.is_drained()
            && to_client_done
            && c.pos.fwd == 0
            && c.pos.skip == 0
            // A message being buffered whole (a large Parse) is part of the request.
            && c.pos.need == 0
            && ctx.pl.to_server.is_empty()
            && ctx.pl.queue.is_empty();
        let releasable = relay.release_on_idle && (!ctx.txn.pin.is_pinned() || relay.draining);
        if all_relayed && ctx.txn.server_idle() && (releasable || ctx.txn.terminated) {
            return Poll::Ready(if ctx.txn.terminated { Event::ClientClosed } else { Event::Released });
        }
        if (ctx.txn.terminated || (relay.client_eof && c.buf.len() == c.pos.fwd))
            && c.pos.fwd == 0
            && ctx.txn.pending == 0
            && to_client_done
        {
            // The client left inside a transaction: nothing more will come.
            return Poll::Ready(Event::ClientClosed);
        }
        // Read from the client (unless it said goodbye or we are far ahead of the server).
        if !ctx.txn.terminated && !relay.client_eof && c.buf.len() + ctx.pl.to_server.len() < READ_AHEAD.max(c.pos.need)
        {
            match poll_read_into(cx, client, c.buf) {
                // Requests held back behind a read-routed one still run (as PostgreSQL runs a
                // half-closed client's pipelined requests); the session sees the end later.
                Poll::Ready(Ok(0)) if ctx.txn.one_request && c.buf.len() > c.pos.fwd => {
                    relay.client_eof = true;
                    progress = true;
                }
                Poll::Ready(Ok(0)) => return Poll::Ready(Event::ClientClosed),
                // Scanned at the top of the loop.
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Event::ClientIo(e)),
                Poll::Pending => {}
            }
        }
        // Read from the server.
        if s.buf.len() + ctx.pl.to_client.len() < READ_AHEAD.max(s.pos.need) {
            match poll_read_into(cx, server, s.buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Event::ServerClosed),
                Poll::Ready(Ok(_)) => {
                    if let Err(e) = server::scan_server(s, ctx, sink) {
                        return Poll::Ready(Event::ServerProtocol(e));
                    }
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Event::ServerIo(e)),
                Poll::Pending => {}
            }
        }
        if !progress {
            let busy = c.pos.fwd > 0 || s.pos.fwd > 0 || !ctx.pl.is_idle();
            if let Some(ev) = relay.poll_timer(cx, ctx.txn, busy) {
                return Poll::Ready(ev);
            }
            return Poll::Pending;
        }
    }
}

#[cfg(test)]
mod tests;
