//! The hot path's I/O loop: moves bytes between a client and the server it holds. What the
//! bytes mean — which answers the server owes, what is rewritten, when the server may be
//! released — is the [`Exchange`]'s business (`crate::exchange`, no I/O); this module only
//! reads, hands the bytes over, writes what the exchange says, and arms the timeouts.
//!
//! Invariants:
//! - One read buffer per direction (the client's in the session, the server's in its
//!   `ServerConn`), which doubles as the write buffer (the exchange's side buffer goes first).
//! - [`poll`] keeps nothing between polls: all progress lives in the buffers, the
//!   [`Exchange`] and [`Relay`].
//! - A direction is not read while its buffers hold [`READ_AHEAD`] bytes (more while a
//!   message that must be read whole is arriving): backpressure both ways.

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::backend::ServerConn;
use crate::exchange::{reserve_read, Activity, Env, Exchange, Rules, Verdict};
use crate::net::Stream;
use crate::params::ClientParams;
use crate::prepared::{ClientStatements, KnownStatements};
use crate::protocol;

pub use crate::exchange::READ_AHEAD;

/// Why [`poll`] returned.
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
    /// The client must be closed with this error (its notification queue overflowed; set
    /// by the session, not by [`poll`]).
    ClientFailed(Box<crate::error::ClientError>),
    /// The server sent something that is not valid protocol.
    ServerProtocol(protocol::Error),
    /// Statement mode: the client opened a transaction block.
    TransactionInStatementMode,
    /// `query_timeout` passed.
    QueryTimeout,
    /// `idle_transaction_timeout` passed.
    IdleTransactionTimeout,
}

/// Timeouts applied while a server is held; computed once per session. Milliseconds, 0 for
/// none (kept small: every session carries them).
#[derive(Debug, Clone, Copy, Default)]
pub struct RelayTimeouts {
    /// `query_timeout`.
    pub query_ms: u32,
    /// `idle_transaction_timeout`.
    pub idle_transaction_ms: u32,
}

impl RelayTimeouts {
    /// From the configured durations (`None`: off).
    pub fn new(query: Option<std::time::Duration>, idle_transaction: Option<std::time::Duration>) -> RelayTimeouts {
        let ms = |d: Option<std::time::Duration>| d.map_or(0, |d| d.as_millis().clamp(1, u32::MAX as u128) as u32);
        RelayTimeouts { query_ms: ms(query), idle_transaction_ms: ms(idle_transaction) }
    }
}

/// Per-session relay settings and timer.
pub struct Relay {
    /// Release the server at `Z I` (transaction/statement mode, or a draining session).
    pub release_on_idle: bool,
    /// What the exchange obeys (prepared statements, statement mode, session state).
    pub rules: Rules,
    timeouts: RelayTimeouts,
    timer: Option<Pin<Box<Sleep>>>,
    /// What the timer currently measures, and (inside a transaction) since how many
    /// requests: a whole round trip between two polls re-arms the idle-in-transaction timer
    /// though the phase looks the same.
    phase: Option<(Activity, u32)>,
    /// The client closed its side while requests were held back behind a read-routed
    /// request: stop reading it, finish what it sent.
    client_eof: bool,
    /// pgsluice is shutting down: a pinned client's server is released at its next idle
    /// point too (and the client closed).
    pub draining: bool,
    /// Bytes written to a TLS stream that rustls may still hold (`[client, server]`): a
    /// plain socket's write is final, a TLS one is only once flushed, and the attachment
    /// does not end before.
    unflushed: [bool; 2],
}

impl Relay {
    /// Relay settings for one session.
    pub fn new(release_on_idle: bool, rules: Rules, timeouts: RelayTimeouts) -> Relay {
        let timer = (timeouts.query_ms > 0 || timeouts.idle_transaction_ms > 0)
            .then(|| Box::pin(tokio::time::sleep_until(Instant::now() + FAR)));
        Relay {
            release_on_idle,
            rules,
            timeouts,
            timer,
            phase: None,
            client_eof: false,
            draining: false,
            unflushed: [false; 2],
        }
    }

    /// Re-arms the timer when the server moves between "request running"
    /// (`query_timeout`), "waiting for the client inside a transaction"
    /// (`idle_transaction_timeout`) and "idle between transactions" (no timer). Returns an
    /// event if the armed timer has fired.
    fn poll_timer(&mut self, cx: &mut Context<'_>, activity: Activity, requests: u32) -> Option<Event> {
        let timer = self.timer.as_mut()?;
        // `query_timeout` counts from the first request of a busy stretch (pipelined ones
        // behind it do not extend it); `idle_transaction_timeout` from the end of the last.
        let requests = if activity == Activity::InTransaction { requests } else { 0 };
        if self.phase != Some((activity, requests)) {
            self.phase = Some((activity, requests));
            let limit_ms = match activity {
                Activity::Running => self.timeouts.query_ms,
                Activity::InTransaction => self.timeouts.idle_transaction_ms,
                Activity::Idle => 0,
            };
            let limit = if limit_ms == 0 { FAR } else { std::time::Duration::from_millis(limit_ms.into()) };
            timer.as_mut().reset(Instant::now() + limit);
        }
        match (timer.as_mut().poll(cx), activity) {
            (Poll::Ready(()), Activity::Running) => Some(Event::QueryTimeout),
            (Poll::Ready(()), Activity::InTransaction) => Some(Event::IdleTransactionTimeout),
            _ => None,
        }
    }

    /// Forgets the timer phase (call when a new server is attached).
    pub fn reset_timer(&mut self) {
        self.phase = None;
        self.client_eof = false;
    }
}

/// "Never" for a timer that is armed but has nothing to measure.
const FAR: std::time::Duration = std::time::Duration::from_secs(86_400 * 365);

/// The client's side of a session as the relay sees it.
pub struct ClientIo<'a> {
    /// Client socket.
    pub stream: &'a mut Stream,
    /// Client read buffer.
    pub buf: &'a mut BytesMut,
    /// Client's tracked parameters.
    pub params: &'a mut ClientParams,
    /// Client's named prepared statements.
    pub stmts: &'a mut ClientStatements,
    /// The pool's statements that some server accepted.
    pub known: &'a KnownStatements,
    /// The pool's traffic counters.
    pub stats: &'a crate::stats::PoolStats,
    /// The client in the registry.
    pub info: &'a crate::stats::ClientInfo,
}

/// Flushes a TLS stream that was written to (`*unflushed`) once nothing more is queued for
/// it; the flag clears when rustls has handed everything to the socket.
#[inline]
fn poll_flush(cx: &mut Context<'_>, s: &mut Stream, unflushed: &mut bool) -> io::Result<()> {
    if *unflushed {
        match Pin::new(s).poll_flush(cx) {
            Poll::Ready(Ok(())) => *unflushed = false,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => {}
        }
    }
    Ok(())
}

/// Polls one read into `buf` (with room made by [`reserve_read`]). `Ready(Ok(0))` is end of
/// stream.
#[inline]
pub(super) fn poll_read_into(cx: &mut Context<'_>, s: &mut Stream, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
    reserve_read(buf);
    let fut = pin!(s.read_buf(buf));
    fut.poll(cx)
}

/// Relays between the client and `server` until an [`Event`]: one poll. The caller keeps
/// no state of its own between polls (a plain `poll_fn` over the session's fields), so a
/// session pays no future for the relay.
///
/// # Cancel safety
/// Cancel-safe: all state is in the arguments.
pub fn poll(
    cx: &mut Context<'_>,
    relay: &mut Relay,
    client: ClientIo<'_>,
    server: &mut ServerConn,
    x: &mut Exchange,
) -> Poll<Event> {
    let ClientIo { stream: cstream, buf: cbuf, params, stmts, known, stats, info } = client;
    let ServerConn { stream: sstream, buf: sbuf, params: sparams, synced, state, .. } = server;
    let Relay { rules, release_on_idle, draining, client_eof, unflushed, .. } = &mut *relay;
    let mut env = Env {
        conn: state,
        server_params: sparams,
        synced,
        params,
        stmts,
        rules,
        known: Some(known),
        stats: Some(stats),
        client: Some(info),
    };
    let releasable = |x: &Exchange| *release_on_idle && (!x.is_pinned() || *draining);
    match poll_pump(cx, x, cstream, cbuf, sstream, sbuf, &mut env, releasable, client_eof, unflushed) {
        Some(ev) => Poll::Ready(ev),
        None => match relay.poll_timer(cx, x.activity(), x.requests()) {
            Some(ev) => Poll::Ready(ev),
            None => Poll::Pending,
        },
    }
}

/// One pass of the relay: moves what it can. `None`: nothing more can happen until a
/// socket is ready (the caller then polls the timer).
#[allow(clippy::too_many_arguments)]
fn poll_pump(
    cx: &mut Context<'_>,
    x: &mut Exchange,
    client: &mut Stream,
    cbuf: &mut BytesMut,
    server: &mut Stream,
    sbuf: &mut BytesMut,
    env: &mut Env<'_>,
    releasable: impl Fn(&Exchange) -> bool,
    client_eof: &mut bool,
    unflushed: &mut [bool; 2],
) -> Option<Event> {
    // A socket whose read returned Pending in this pass has its waker registered: asking
    // again before the task is woken only repeats tokio's readiness check.
    let (mut client_blocked, mut server_blocked) = (false, false);
    loop {
        let mut progress = match x.on_client(cbuf, sbuf, env) {
            Ok(p) => p,
            Err(e) => return Some(Event::ClientProtocol(e)),
        };
        // Client → server.
        let out = x.server_bound(cbuf);
        if !out.is_empty() {
            match Pin::new(&mut *server).poll_write(cx, out) {
                Poll::Ready(Ok(n)) => {
                    x.sent_to_server(cbuf, n);
                    unflushed[1] |= server.is_tls();
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Some(Event::ServerIo(e)),
                Poll::Pending => {}
            }
        } else if let Err(e) = poll_flush(cx, server, &mut unflushed[1]) {
            return Some(Event::ServerIo(e));
        }
        // Server → client.
        let out = x.client_bound(sbuf);
        if !out.is_empty() {
            match Pin::new(&mut *client).poll_write(cx, out) {
                Poll::Ready(Ok(n)) => {
                    x.sent_to_client(sbuf, n);
                    unflushed[0] |= client.is_tls();
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Some(Event::ClientIo(e)),
                Poll::Pending => {}
            }
        } else if let Err(e) = poll_flush(cx, client, &mut unflushed[0]) {
            return Some(Event::ClientIo(e));
        }
        let flushed = !unflushed[0] && !unflushed[1];
        let verdict = if flushed { x.verdict(cbuf, sbuf, releasable(x), *client_eof) } else { None };
        match verdict {
            Some(Verdict::Released) => return Some(Event::Released),
            Some(Verdict::ClientClosed) => return Some(Event::ClientClosed),
            Some(Verdict::TransactionInStatementMode) => return Some(Event::TransactionInStatementMode),
            None => {}
        }
        // Read from the client (unless it said goodbye or we are far ahead of the server).
        if !client_blocked && !*client_eof && x.may_read_client(cbuf) {
            match poll_read_into(cx, client, cbuf) {
                // Requests held back behind a read-routed one still run (as PostgreSQL runs a
                // half-closed client's pipelined requests); the session sees the end later.
                Poll::Ready(Ok(0)) if x.holds_requests(cbuf) => {
                    *client_eof = true;
                    progress = true;
                }
                Poll::Ready(Ok(0)) => return Some(Event::ClientClosed),
                // Scanned at the top of the loop.
                Poll::Ready(Ok(_)) => progress = true,
                Poll::Ready(Err(e)) => return Some(Event::ClientIo(e)),
                Poll::Pending => client_blocked = true,
            }
        }
        // Read from the server.
        if !server_blocked && x.may_read_server(sbuf) {
            match poll_read_into(cx, server, sbuf) {
                Poll::Ready(Ok(0)) => return Some(Event::ServerClosed),
                Poll::Ready(Ok(_)) => {
                    if let Err(e) = x.on_server(sbuf, env) {
                        return Some(Event::ServerProtocol(e));
                    }
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Some(Event::ServerIo(e)),
                Poll::Pending => server_blocked = true,
            }
        }
        if !progress {
            return None;
        }
    }
}
