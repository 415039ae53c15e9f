//! The protocol state of one client↔server attachment, with no I/O and no tokio: the two
//! scanners (client → server in [`client`], server → client in [`server`]), the reply queue
//! ([`queue`]), the side buffers, and the retry capture ([`retry`]).
//!
//! The relay (`frontend::relay`) owns the sockets and the two read buffers. It hands newly
//! read bytes to [`Exchange::on_client`] or [`Exchange::on_server`], writes what
//! [`Exchange::server_bound`] and [`Exchange::client_bound`] give it, and asks
//! [`Exchange::verdict`] whether the attachment is over. Everything else — which answers the
//! server owes, which messages are rewritten, dropped or synthesized, when a request may be
//! retried — is decided here, from bytes alone, so it is unit-tested (`tests.rs`) and fuzzed
//! (`fuzz/fuzz_targets/exchange.rs`) without sockets ([`Sim`]).
//!
//! Each direction's read buffer doubles as its write buffer: bytes are read in, scanned
//! (headers, and the bodies of the few messages that matter), and the scanned prefix
//! `[..fwd]` is written out as one batch. When a message must change on its way, the scanned
//! prefix moves to the direction's side buffer, the changed message is appended there, and
//! the side buffer is written before the read buffer's prefix, so order holds and a byte is
//! copied at most once. Bodies of messages that are not looked into stream through as they
//! arrive (a 100 MB COPY never sits whole in memory).
//!
//! Invariants:
//! - [`Exchange::is_clean`] is the single "the server may go to another client" predicate:
//!   every byte relayed both ways, nothing owed by the server, no extended-protocol message
//!   waiting for its `Sync`, and the last ReadyForQuery said `I`.
//! - The queue front is the request whose answer the server sends next; after an error the
//!   queue skips to `Sync` as the server does, undoing the statement bookkeeping of what the
//!   server skipped.
//! - State that outlives the attachment (statements prepared on the connection, their row
//!   descriptions, the dirty and poisoned flags) lives in the connection's
//!   [`ServerState`]; [`Exchange::attach`] forgets everything else.

mod client;
mod idle;
pub mod queue;
pub mod retry;
mod server;
mod sim;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, BytesMut};

use crate::params::{ClientParams, ParamName, ParamSet};
use crate::prepared::{ClientStatements, KnownStatements, ServerState};
use crate::protocol::{self, status};
use crate::stats::{PoolStats, Tally};

pub use idle::{answer_without_server, inspect_idle, resendable_request, Buffered, IdleScan, MAX_RESEND};
pub use queue::{Action, Expect, Kind, Undo};
pub use sim::{fuzz_logic, Sim};

/// Bytes read ahead per direction before reading pauses (backpressure).
pub const READ_AHEAD: usize = 64 * 1024;
/// Most free space ensured before a read (a buffer grows to it by doubling).
pub const READ_CHUNK: usize = 16 * 1024;
/// Least free space ensured before a read: a request read by an idle client (which holds no
/// buffer) costs a small allocation, not a [`READ_CHUNK`] one, and a buffer that keeps
/// filling up grows to [`READ_CHUNK`].
pub const READ_MIN: usize = 1024;

/// The largest frame the scanners read whole: a named Parse as large as a client's
/// statements may be in all (`max_client_prepared_bytes`); the other messages read whole are
/// at most [`READ_AHEAD`]. A longer one that would have to be read whole is refused
/// (`protocol::Error::TooLargeToInspect`) at its header.
pub fn max_read_whole(limits: crate::prepared::Limits) -> usize {
    (limits.bytes as usize).max(READ_AHEAD) + protocol::HEADER_LEN
}

/// How many bytes a direction may hold (read buffer and side buffer) before reading pauses:
/// [`READ_AHEAD`], or enough for the frame awaited whole after what is scanned before it, of
/// which at most [`READ_AHEAD`] counts. (Counting all of it let a peer that does not read
/// raise the limit with each new message awaited whole, without bound: the scanned bytes
/// grow only by reading, so this keeps a direction under 2 × `READ_AHEAD` + the largest
/// frame read whole + one read.)
#[inline]
fn read_limit(pos: &ScanPos) -> usize {
    READ_AHEAD.max(pos.fwd.min(READ_AHEAD) + pos.need)
}

/// Makes room for one read into `buf`: at least [`READ_MIN`] bytes, and as much again as the
/// buffer holds, up to [`READ_CHUNK`] (a stream of large messages reads 16 KiB at a time; a
/// client sending one small query at a time never allocates more than its query needs).
#[inline]
pub fn reserve_read(buf: &mut BytesMut) {
    let spare = buf.capacity() - buf.len();
    let want = buf.capacity().clamp(READ_MIN, READ_CHUNK);
    if spare < want / 2 {
        buf.reserve(want);
    }
}

/// Scan position of one direction's read buffer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanPos {
    /// Bytes at the front of the buffer that are scanned and may be forwarded.
    pub fwd: usize,
    /// Body bytes of an opaque message that have not arrived yet; forwarded as they come.
    pub skip: usize,
    /// The scanner waits for the frame at `fwd`, this many bytes long, to arrive whole
    /// (reading may go past `READ_AHEAD` to get it, see [`read_limit`]); 0 when not waiting.
    pub need: usize,
}

/// One direction's read buffer plus its scan position (what the scanners work on).
pub(crate) struct Half<'a> {
    /// Received bytes: `[..pos.fwd]` scanned and ready to forward, the rest not yet scanned.
    pub buf: &'a mut BytesMut,
    /// Scan position in `buf`.
    pub pos: &'a mut ScanPos,
}

impl Half<'_> {
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

/// Request and transaction accounting of the attachment, shared by both scan directions.
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
    /// No request is in flight and the server is outside a transaction.
    #[inline]
    pub fn server_idle(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.status == status::IDLE
    }
}

/// How a pooled client's session-state changes are handled (issue 8, see
/// [`crate::sql::session_state`]).
#[derive(Debug, Clone, Copy)]
pub struct SessionRules {
    /// `Pin` or `Reject` (`Allow` means no rules at all).
    pub policy: crate::config::SessionState,
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

/// The per-client settings the scanners obey; fixed at login.
#[derive(Default)]
pub struct Rules {
    /// Rewrite named prepared statements (transaction/statement mode with
    /// `max_prepared_statements` > 0).
    pub track: bool,
    /// Statement mode: a transaction block is an error.
    pub statement_mode: bool,
    /// Largest client message body accepted (`max_packet_size`; a `u32` keeps the rules of
    /// every session small).
    pub max_body: u32,
    /// Session-state rules (transaction/statement mode with `session_state` pin or reject).
    pub session: Option<SessionRules>,
    /// Bounds on the client's named prepared statements (`max_client_prepared_statements`,
    /// `max_client_prepared_bytes`).
    pub statements: crate::prepared::Limits,
}

/// What an exchange reads and updates outside itself while it scans.
pub struct Env<'a> {
    /// The server connection's lasting state.
    pub conn: &'a mut ServerState,
    /// The server connection's ParameterStatus list.
    pub server_params: &'a mut Vec<(String, String)>,
    /// The client parameter set the server connection was last brought to.
    pub synced: &'a mut Option<Arc<ParamSet>>,
    /// The client's tracked parameters.
    pub params: &'a mut ClientParams,
    /// The client's named prepared statements.
    pub stmts: &'a mut ClientStatements,
    /// The client's rules.
    pub rules: &'a Rules,
    /// The pool's statements that some server accepted.
    pub known: Option<&'a KnownStatements>,
    /// Where the server's traffic counts go at the end of each transaction.
    pub stats: Option<&'a PoolStats>,
    /// The client as the console sees it (its `pinned` flag; the pin log line).
    pub client: Option<&'a crate::stats::ClientInfo>,
}

/// What the scanners share: the exchange's own state and the outside state they update.
pub(crate) struct Ctx<'a> {
    pub x: &'a mut State,
    pub conn: &'a mut ServerState,
    pub stmts: &'a mut ClientStatements,
    pub track: bool,
    pub max_body: usize,
    pub statement_limits: crate::prepared::Limits,
    pub statement_mode: bool,
    pub known: Option<&'a KnownStatements>,
    pub session: Option<SessionRules>,
    pub stats: Option<&'a PoolStats>,
    pub client: Option<&'a crate::stats::ClientInfo>,
    /// The client's parameters, if it chose any at startup (client scan only): a `RESET` of
    /// one is followed by [`Action::Restore`].
    pub params: Option<&'a ClientParams>,
}

impl Ctx<'_> {
    /// Removes the front request (answered or skipped), counting it toward the barrier and
    /// the connection's completed batches.
    #[inline]
    pub fn pop_front(&mut self) -> Option<Expect> {
        let e = self.x.queue.pop_front()?;
        if e.kind.ends_with_ready() {
            self.conn.statements.batch_done();
        }
        if self.x.barrier {
            self.x.barrier_left = self.x.barrier_left.saturating_sub(1);
            if self.x.barrier_left == 0 {
                self.x.barrier = false;
            }
        }
        Some(e)
    }
}

/// The exchange's state besides the scan positions.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Request and transaction accounting.
    pub txn: Txn,
    /// Outstanding requests, oldest first.
    pub queue: VecDeque<Expect>,
    /// The server is skipping messages until the next Sync after an error.
    pub skipping: bool,
    /// Do not scan further statement messages until the requests outstanding when it was
    /// set (`barrier_left` of them) are answered.
    pub barrier: bool,
    /// Requests still to be answered before the barrier lifts.
    pub barrier_left: usize,
    /// The request at the front of the queue started a COPY FROM STDIN (CopyInResponse seen).
    pub copy_in: bool,
    /// The client is sending COPY data: it sent CopyData since its last Execute or Query and
    /// no CopyDone/CopyFail after it.
    pub copy_data: bool,
    /// The current batch (since the last Sync) changed statement bookkeeping.
    pub batch_dirty: bool,
    /// The current batch has sent something the server may answer with an error.
    pub batch_started: bool,
    /// The server answered `25006 read_only_sql_transaction`: if it is believed to be the
    /// primary, the topology should be probed again (it may have been demoted).
    pub read_only_error: bool,
    /// Some byte went to the client since the attachment began (a request that lost its
    /// server before that may be sent again elsewhere).
    pub answered: bool,
    /// A FATAL/PANIC error the server sent before closing (`SQLSTATE: message`): held back
    /// from the client, which gets pgsluice's own error about the lost connection instead
    /// (carrying this text), so a session pgsluice keeps never sees a FATAL.
    pub server_fatal: Option<String>,
    /// Rewritten client bytes, sent before the client buffer's scanned prefix.
    pub to_server: BytesMut,
    /// Rewritten server bytes, sent before the server buffer's scanned prefix.
    pub to_client: BytesMut,
    /// The request captured for a retry after a stale-statement error.
    pub retry: retry::Capture,
    /// Traffic counted since the last fold into the pool's statistics.
    pub tally: Tally,
    /// Startup values to set again after a client's `RESET`; allocated at the first one.
    pub restore: Option<Box<Restoring>>,
}

/// Tracked parameters a client reset that it had chosen at startup (PostgreSQL's reset
/// value is the startup packet's; a server connection's is not the client's).
#[derive(Debug, Default)]
pub(crate) struct Restoring {
    /// Reset by extended-protocol statements (`Parse` texts) since the last `Sync`.
    pub at_sync: Vec<ParamName>,
    /// The names each queued [`Action::Restore`] request sets, oldest first.
    pub queued: VecDeque<Vec<ParamName>>,
    /// The client's request ahead of the first queued restore got an error (its `RESET`
    /// may have been rolled back): the client is told only what the restore reports.
    pub failed: bool,
}

impl State {
    /// Holds back statement messages until everything queued so far is answered.
    pub fn set_barrier(&mut self) {
        if !self.queue.is_empty() {
            self.barrier = true;
            self.barrier_left = self.queue.len();
        }
    }

    /// Nothing outstanding and nothing waiting to be written.
    #[inline]
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.to_server.is_empty() && self.to_client.is_empty()
    }
}

/// Why an attachment is over (see [`Exchange::verdict`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The server is clean ([`Exchange::is_clean`]) and may be released.
    Released,
    /// The client sent Terminate, or left inside a transaction with nothing in flight.
    ClientClosed,
    /// Statement mode: the client opened a transaction block (its ReadyForQuery is held).
    TransactionInStatementMode,
}

/// What the held server is doing, for `query_timeout` / `idle_transaction_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// A request is in flight.
    Running,
    /// Waiting for the client inside a transaction (or an unsynced extended-protocol batch).
    InTransaction,
    /// Between transactions (session mode).
    Idle,
}

/// The protocol state of one attachment; see the module docs. Reused from one client to the
/// next (it travels with the server connection in its pool), so its queue and side buffers
/// do not allocate per transaction.
#[derive(Debug, Default)]
pub struct Exchange {
    /// Client buffer's scan position.
    c: ScanPos,
    /// Server buffer's scan position.
    s: ScanPos,
    st: State,
}

impl Exchange {
    /// Starts an attachment: forgets the previous one. `status` is the transaction status
    /// the client believes in (`T` after a `BEGIN` pgsluice answered and ran on this
    /// server); `one_request` holds back each request behind the first (a read-routed
    /// server); `max_prepared` bounds the statements kept on the connection.
    pub fn attach(&mut self, conn: &mut ServerState, status: u8, one_request: bool, max_prepared: usize) {
        let st = &mut self.st;
        // Abandoned requests still count as done batches (`ServerStatements::batch_done`).
        for e in st.queue.drain(..) {
            if e.kind.ends_with_ready() {
                conn.statements.batch_done();
            }
        }
        st.txn = Txn { status, one_request, ..Txn::default() };
        st.skipping = false;
        st.barrier = false;
        st.barrier_left = 0;
        st.copy_in = false;
        st.copy_data = false;
        st.batch_dirty = false;
        st.batch_started = false;
        st.read_only_error = false;
        st.answered = false;
        st.server_fatal = None;
        st.to_server.clear();
        st.to_client.clear();
        st.tally.clear_timers();
        st.retry.reset();
        st.restore = None;
        conn.statements.set_capacity(max_prepared);
        self.c = ScanPos::default();
        self.s = ScanPos::default();
    }

    fn ctx<'a>(st: &'a mut State, env: &'a mut Env<'_>) -> Ctx<'a> {
        let rules = env.rules;
        Ctx {
            x: st,
            conn: env.conn,
            stmts: env.stmts,
            track: rules.track,
            max_body: rules.max_body as usize,
            statement_limits: rules.statements,
            statement_mode: rules.statement_mode,
            known: env.known,
            session: rules.session,
            stats: env.stats,
            client: env.client,
            params: env.params.has_startup().then_some(&*env.params),
        }
    }

    /// Scans the client bytes not scanned yet (just read, buffered before the server was
    /// attached, or held back by a barrier that has lifted). `sbuf` is the server's read
    /// buffer: answers pgsluice gives itself are put in order with what it holds. Returns
    /// whether anything changed; `Err` on an invalid client message.
    pub fn on_client(
        &mut self,
        cbuf: &mut BytesMut,
        sbuf: &mut BytesMut,
        env: &mut Env<'_>,
    ) -> Result<bool, protocol::Error> {
        if self.st.txn.terminated || cbuf.len() <= self.c.fwd {
            return Ok(false);
        }
        let before = (cbuf.len(), self.c.fwd, self.st.to_server.len(), self.st.to_client.len());
        let mut c = Half { buf: cbuf, pos: &mut self.c };
        let mut s = Half { buf: sbuf, pos: &mut self.s };
        let mut ctx = Self::ctx(&mut self.st, env);
        client::scan_client(&mut c, &mut s, &mut ctx)?;
        Ok(before != (cbuf.len(), self.c.fwd, self.st.to_server.len(), self.st.to_client.len()))
    }

    /// Scans newly received server bytes; `Err` if the server broke the protocol.
    pub fn on_server(&mut self, sbuf: &mut BytesMut, env: &mut Env<'_>) -> Result<(), protocol::Error> {
        let mut s = Half { buf: sbuf, pos: &mut self.s };
        let mut sink = server::ParamSink { conn: env.server_params, synced: env.synced, client: env.params };
        let rules = env.rules;
        let mut ctx = Ctx {
            x: &mut self.st,
            conn: env.conn,
            stmts: env.stmts,
            track: rules.track,
            max_body: rules.max_body as usize,
            statement_limits: rules.statements,
            statement_mode: rules.statement_mode,
            known: env.known,
            session: rules.session,
            stats: env.stats,
            client: env.client,
            params: None,
        };
        server::scan_server(&mut s, &mut ctx, &mut sink)
    }

    /// The next bytes to write to the server: the side buffer, else the client buffer's
    /// scanned prefix.
    #[inline]
    pub fn server_bound<'b>(&'b self, cbuf: &'b [u8]) -> &'b [u8] {
        if self.st.to_server.is_empty() {
            &cbuf[..self.c.fwd]
        } else {
            &self.st.to_server
        }
    }

    /// `n` bytes of [`Exchange::server_bound`] were written.
    #[inline]
    pub fn sent_to_server(&mut self, cbuf: &mut BytesMut, n: usize) {
        if self.st.to_server.is_empty() {
            cbuf.advance(n);
            self.c.fwd -= n;
        } else {
            self.st.to_server.advance(n);
        }
        self.st.tally.received += n as u64;
    }

    /// Whether what the server sent is held back: it said it is dying (a FATAL, or the
    /// WARNING of an immediate shutdown) before a byte of this attachment's answers reached
    /// the client. What it flushed with it is an unfinished answer, which the session
    /// delivers, or drops to send the request elsewhere, once the connection closes.
    #[inline]
    fn holding_back(&self) -> bool {
        self.st.server_fatal.is_some() && !self.st.answered
    }

    /// The next bytes to write to the client: the side buffer, else the server buffer's
    /// scanned prefix (nothing while [`Exchange::holding_back`]).
    #[inline]
    pub fn client_bound<'b>(&'b self, sbuf: &'b [u8]) -> &'b [u8] {
        if self.holding_back() {
            return &[];
        }
        if self.st.to_client.is_empty() {
            &sbuf[..self.s.fwd]
        } else {
            &self.st.to_client
        }
    }

    /// `n` bytes of [`Exchange::client_bound`] were written.
    #[inline]
    pub fn sent_to_client(&mut self, sbuf: &mut BytesMut, n: usize) {
        if self.st.to_client.is_empty() {
            sbuf.advance(n);
            self.s.fwd -= n;
        } else {
            self.st.to_client.advance(n);
        }
        self.st.answered |= n > 0;
        self.st.tally.sent += n as u64;
    }

    /// Whether the client may be read now: it has not said goodbye, and the bytes buffered
    /// toward the server are below the read-ahead (more while a message that must be read
    /// whole is arriving).
    #[inline]
    pub fn may_read_client(&self, cbuf: &BytesMut) -> bool {
        !self.st.txn.terminated && cbuf.len() + self.st.to_server.len() < read_limit(&self.c)
    }

    /// Whether the server may be read now (backpressure toward a slow client).
    #[inline]
    pub fn may_read_server(&self, sbuf: &BytesMut) -> bool {
        // (While holding back, read on to the close: a dying server sends little more.)
        sbuf.len() + self.st.to_client.len() < read_limit(&self.s) || self.holding_back()
    }

    /// The client closed its side: whether requests it sent are still held back behind a
    /// read-routed one (they still run, as PostgreSQL runs a half-closed client's pipelined
    /// requests).
    #[inline]
    pub fn holds_requests(&self, cbuf: &BytesMut) -> bool {
        self.st.txn.one_request && cbuf.len() > self.c.fwd
    }

    /// Whether the attachment is over; `releasable`: the session may give the server back
    /// at an idle point (transaction mode, not pinned, or draining); `client_eof`: the client
    /// closed its side while requests were held back.
    pub fn verdict(&self, cbuf: &BytesMut, sbuf: &BytesMut, releasable: bool, client_eof: bool) -> Option<Verdict> {
        let t = &self.st.txn;
        let to_client_done = self.s.fwd == 0 && self.st.to_client.is_empty();
        if t.opened_transaction && to_client_done {
            return Some(Verdict::TransactionInStatementMode);
        }
        if (releasable || t.terminated) && self.is_clean(sbuf) {
            return Some(if t.terminated { Verdict::ClientClosed } else { Verdict::Released });
        }
        if (t.terminated || (client_eof && cbuf.len() == self.c.fwd))
            && self.c.fwd == 0
            && t.pending == 0
            && to_client_done
        {
            // The client left inside a transaction: nothing more will come.
            return Some(Verdict::ClientClosed);
        }
        None
    }

    /// Whether the server may be handed to another client: every byte relayed both ways,
    /// nothing outstanding or half-received, outside a transaction.
    pub fn is_clean(&self, sbuf: &BytesMut) -> bool {
        self.st.txn.server_idle()
            && sbuf.is_empty()
            && self.s == ScanPos::default()
            && self.c == ScanPos::default()
            && self.st.is_idle()
    }

    /// What the server is doing, for the relay's timeouts.
    pub fn activity(&self) -> Activity {
        let t = &self.st.txn;
        let busy = self.c.fwd > 0 || self.s.fwd > 0 || !self.st.is_idle();
        if t.pending > 0 || t.flushed || busy {
            Activity::Running
        } else if t.status != status::IDLE || t.unsynced {
            Activity::InTransaction
        } else {
            Activity::Idle
        }
    }

    /// Requests whose ReadyForQuery the client still waits for.
    #[inline]
    pub fn pending(&self) -> u32 {
        self.st.txn.pending
    }

    /// Requests scanned since the attachment began.
    #[inline]
    pub fn requests(&self) -> u32 {
        self.st.txn.requests
    }

    /// The transaction status of the last ReadyForQuery.
    #[inline]
    pub fn status(&self) -> u8 {
        self.st.txn.status
    }

    /// Whether the client set session state and keeps this server.
    #[inline]
    pub fn is_pinned(&self) -> bool {
        self.st.txn.pin.is_pinned()
    }

    /// The server reset the session state the client had set.
    pub fn unpin(&mut self) {
        self.st.txn.pin = Default::default();
    }

    /// Whether the server answered `25006 read_only_sql_transaction` (cleared).
    pub fn take_read_only_error(&mut self) -> bool {
        std::mem::take(&mut self.st.read_only_error)
    }

    /// The FATAL error the server sent before closing, if any.
    pub fn server_fatal(&self) -> Option<&str> {
        self.st.server_fatal.as_deref()
    }

    /// Traffic counted since the last fold into the pool's statistics.
    pub fn tally(&mut self) -> &mut Tally {
        &mut self.st.tally
    }

    /// After the server connection died: whether the client can be told its requests failed
    /// and go on with another server — no transaction open, no extended-protocol batch or
    /// COPY half sent, no message half relayed either way, no statement bookkeeping waiting
    /// for an answer.
    pub fn resumable(&self) -> bool {
        let t = &self.st.txn;
        !t.pin.is_pinned()
            && t.status == status::IDLE
            && !t.unsynced
            && !t.flushed
            && !t.terminated
            && self.c.skip == 0
            && self.s.skip == 0
            && !self.st.copy_in
            && self.st.queue.iter().all(|e| e.undo.is_none())
    }

    /// After the server connection died (and [`Exchange::resumable`]): whether the one
    /// request of the attachment may be sent again to another server — it is the only
    /// request scanned, it is unanswered, and not a byte went to the client.
    pub fn resendable(&self) -> bool {
        let t = &self.st.txn;
        t.requests == 1 && t.pending == 1 && !self.st.answered
    }

    /// After the server connection died: whether part of a message went (or is going) to the
    /// client without its end. No ErrorResponse may follow it: the client would read it as
    /// the rest of the message.
    pub fn torn_to_client(&self) -> bool {
        self.s.skip > 0 && !self.holding_back()
    }

    /// After the server connection died: appends to `out` what was received for the client
    /// and not yet written (whole messages, and the start of a torn one).
    pub fn unsent_to_client(&self, sbuf: &BytesMut, out: &mut BytesMut) {
        out.extend_from_slice(&self.st.to_client);
        out.extend_from_slice(&sbuf[..self.s.fwd.min(sbuf.len())]);
    }

    /// After the server connection died (and [`Exchange::resumable`]): appends to `out` the
    /// answers already received and scanned but not yet written to the client (whole
    /// messages), and drops the client bytes scanned for the failed requests.
    pub fn salvage(&mut self, cbuf: &mut BytesMut, sbuf: &BytesMut, out: &mut BytesMut) {
        self.unsent_to_client(sbuf, out);
        cbuf.advance(self.c.fwd.min(cbuf.len()));
        self.c = ScanPos::default();
        self.s = ScanPos::default();
        self.st.to_client.clear();
    }
}

#[cfg(test)]
mod tests;
