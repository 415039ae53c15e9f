//! `Session`: one task per client, an explicit state machine (`../shared/DESIGN.md`):
//!
//! | state | holds a server | leaves on |
//! |---|---|---|
//! | [`State::Idle`] | no | a complete request → `Waiting`; EOF, kill, shutdown, `client_idle_timeout` → `Closing` |
//! | [`State::Waiting`] | no | a server checked out and prepared → `Active`; no server → error for the request, `Idle` (or `Closing` if fatal) |
//! | [`State::Active`] | yes | released at an idle point → `Idle`; the client or server gone, timeouts, kill → `Closing` |
//! | [`State::Closing`] | no | the client gets its FATAL (if any) and the connection closes |
//!
//! [`Session::serve`] is the dispatch loop. This is the single boundary where failures
//! become the client's `ErrorResponse`.
//!
//! Invariants:
//! - A server goes back to its pool only through [`Session::release`], and only when the
//!   exchange says it is clean (`Exchange::is_clean`); every other exit discards it.
//! - An idle client costs little: the `Idle` state is a hand-written poll over the session's
//!   own fields (no future of its own beyond a few words); `Waiting` and `Active` run as
//!   boxed futures that exist only while a request is in flight. A plain-TCP client holds no
//!   read buffer while idle (it is freed when empty and allocated when the socket is
//!   readable); a TLS client keeps its buffers.
//! - Stop conditions (KILL, shutdown) reach a session through its `ClientInfo`'s waker,
//!   which every poll that checks them registers first: no waiter per session on a shared
//!   channel.
//! - The client's link (its `ClientInfo`) names a server only while this session holds it,
//!   and is cleared before the server is checked in: a CancelRequest follows the link.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tracing::Instrument;

use super::checkout;
use super::listen::{self, Deliver, Listener, Step};
use super::relay::{self, ClientIo, Event, Relay, RelayTimeouts};
use super::startup::{self, Startup};
use crate::cancel::CancelHandle;
use crate::config::{PoolMode, Route};
use crate::error::{ClientError, ErrorSource};
use crate::exchange::{self, Rules};
use crate::net::Stream;
use crate::params::ClientParams;
use crate::pool::{PoolGuard, PoolSet};
use crate::prepared::ClientStatements;
use crate::protocol::{self, status, write};
use crate::router::{Decision, Policy, Router, Want};
use crate::shared::{DbControl, Shared};
use crate::shutdown::{DrainToken, Shutdown};
use crate::sql::listen::Op;
use crate::stats::{ClientInfo, Registration};

/// Serves one client connection from accept to close: logs it in, then spawns its
/// session as a task of its own (so an idle client's task holds the session alone, not this
/// function's arguments and login state). `permit` (`max_client_conn`) is held until the
/// client is gone.
pub async fn run(
    shared: Arc<Shared>,
    stream: Stream,
    peer: SocketAddr,
    shutdown: Shutdown,
    drain: DrainToken,
    permit: OwnedSemaphorePermit,
) {
    if let Some(tcp) = stream.tcp() {
        let _ = tcp.set_nodelay(true);
    }
    // Boxed so the (large, short-lived) login future does not inflate every idle session.
    shared.logging_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let s = Box::pin(startup::startup(&shared, stream, peer)).await;
    shared.logging_in.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    match s {
        Startup::LoggedIn(l) => drop(tokio::spawn(serve(shared, l, peer, shutdown, drain, permit))),
        // Boxed: the console's future must not enlarge the login's.
        Startup::Admin(a) => {
            Box::pin(crate::admin::serve(shared, *a, peer, shutdown, drain)).await;
            drop(permit);
        }
        Startup::Done => {}
    }
}

/// The logged-in session's future: it owns the [`Session`] and nothing else.
#[allow(clippy::boxed_local)] // Boxed by `Startup`; unboxed here, before the future exists.
fn serve(
    shared: Arc<Shared>,
    login: Box<startup::LoggedIn>,
    peer: SocketAddr,
    shutdown: Shutdown,
    drain: DrainToken,
    permit: OwnedSemaphorePermit,
) -> impl std::future::Future<Output = ()> {
    // (`login` is unboxed here, in a plain function: its box is freed before the future
    // below exists.)
    let (mut session, span) = Session::new(shared, *login, peer, shutdown, (drain, permit));
    async move {
        let started = session.shared.clock.now_us();
        let reason = session.serve().await;
        if session.log.disconnections {
            let info = &session.reg.info;
            tracing::info!(
                client_id = info.id,
                db = %info.database,
                user = %info.user,
                addr = %info.addr,
                duration_s = format!("{:.3}", session.shared.clock.now_us().saturating_sub(started) as f64 / 1e6),
                reason = reason.as_deref().unwrap_or("client closed the connection"),
                "client disconnected"
            );
        }
    }
    .instrument(span)
}

/// Which session events are logged (`log_disconnections`, `log_pooler_errors`).
#[derive(Debug, Clone, Copy)]
struct LogFlags {
    disconnections: bool,
    pooler_errors: bool,
}

/// Where a session is; see the module docs.
enum State {
    /// No server; waiting for a complete request.
    Idle,
    /// A complete request is buffered; a server is being checked out and prepared.
    Waiting,
    /// A server is attached: relaying.
    Active(PoolGuard),
    /// The session ends: the client gets this error (if any) as FATAL, then the
    /// connection closes.
    Closing(Option<ClientError>),
}

/// What the slow path of `Waiting` takes over from [`Session::attach_now`].
struct Pending {
    d: Decision,
    wait_start: tokio::time::Instant,
    /// The server, if one was checked out (it needs setting up).
    g: Option<PoolGuard>,
}

/// How a session went on after its server died during a request.
enum Survived {
    /// The client got an error for each request in flight.
    Answered,
    /// The request is buffered again, to be routed to another host.
    Resend,
}

/// How a session that lost its server ends.
enum Lost {
    /// With this FATAL 08006.
    Fatal(String),
    /// Without a word: the client has the start of a message whose end never came, and
    /// nothing may follow it but the end of the connection (as when PostgreSQL dies).
    Torn,
}

/// What ended an idle wait.
enum Idle {
    /// A complete request (or enough to start streaming) is buffered.
    Ready,
    /// The client closed the connection, or sent Terminate.
    Closed,
    /// The process is stopping (and nothing is buffered).
    Shutdown,
    /// The client must go: a kill, `client_idle_timeout`, invalid bytes.
    Failed(ClientError),
}

struct Session {
    stream: Stream,
    /// Client read buffer (empty and unallocated while idle on plain TCP).
    buf: BytesMut,
    params: ClientParams,
    /// Named prepared statements (transaction/statement mode).
    stmts: ClientStatements,
    pool: PoolSet,
    /// Routing (a database with several hosts, `route` not `primary`); `None` sends
    /// everything to the primary without looking.
    router: Option<Box<Router>>,
    /// The client's cancel key (removed from the registry when the session ends).
    _cancel: CancelHandle,
    relay: Relay,
    /// `client_idle_timeout`'s timer, re-armed for each idle wait (`idle_limit_ms`).
    idle_timer: Option<std::pin::Pin<Box<Sleep>>>,
    idle_limit_ms: u32,
    max_prepared: u32,
    /// `server_reset_query` at each release (session mode, `server_reset_query_always`).
    reset_query: Option<Arc<str>>,
    /// PAUSE / RESUME of this client's database.
    control: Arc<DbControl>,
    /// The client's LISTEN channels in transaction mode, made at its first `LISTEN`.
    listener: Option<Box<Listener>>,
    /// This client in the registry (state for the admin console, KILL, stop wake-ups).
    reg: Registration,
    shared: Arc<Shared>,
    shutdown: Shutdown,
    /// Release at the next idle point even if pinned or in session mode, then close:
    /// pgsluice is shutting down.
    draining: bool,
    log: LogFlags,
    /// Keeps a graceful stop waiting, and the client counted in `max_client_conn`, until
    /// the session ends.
    _hold: (DrainToken, OwnedSemaphorePermit),
}

impl Session {
    /// The session of a logged-in client, with its tracing span.
    fn new(
        shared: Arc<Shared>,
        l: startup::LoggedIn,
        peer: SocketAddr,
        shutdown: Shutdown,
        hold: (DrainToken, OwnedSemaphorePermit),
    ) -> (Session, tracing::Span) {
        let id = l.id;
        let cfg = shared.config.load();
        let g = cfg.general();
        // The correlation span: with JSON logs at info level (every line of the session carries
        // the client id); with text logs at debug level, as at `info` an enabled span per
        // session costs memory per idle client (the session's own info lines name the id).
        let span = if g.log_format == crate::config::LogFormat::Json {
            tracing::info_span!("client", client_id = id, db = %l.db.name, user = %l.user)
        } else {
            tracing::debug_span!("client", client_id = id, db = %l.db.name, user = %l.user)
        };
        if g.log_connections {
            let _e = span.enter();
            tracing::info!(
                client_id = id,
                db = %l.db.name,
                user = %l.user,
                addr = %peer,
                tls = l.stream.is_tls(),
                application_name = l.params.get("application_name").unwrap_or(""),
                "client logged in"
            );
        }
        let reg = shared.clients.register(ClientInfo::new(
            id,
            l.db.name.as_str().into(),
            l.user.as_str().into(),
            l.db.fixed_user.as_deref().unwrap_or(&l.user).into(),
            peer,
            l.stream.local_addr(),
            l.stream.is_tls(),
            l.params.get("application_name").unwrap_or(""),
            shared.clock.now_us(),
            false,
        ));
        l.cancel.attach(&reg.info);
        let release_on_idle = l.mode != PoolMode::Session;
        let reset_query = {
            let q = g.server_reset_query.trim();
            let wanted = l.mode == PoolMode::Session || g.server_reset_query_always;
            (!q.is_empty() && wanted).then(|| Arc::<str>::from(q))
        };
        // (Decided at login: a reload or SET right after it does not change this client.)
        let session_rules = (l.mode != PoolMode::Session && l.session_state != crate::config::SessionState::Allow)
            .then_some(exchange::SessionRules { policy: l.session_state });
        let rules = Rules {
            track: g.max_prepared_statements > 0 && release_on_idle,
            statement_mode: l.mode == PoolMode::Statement,
            max_body: g.max_packet_size,
            session: session_rules,
            statements: crate::prepared::Limits {
                count: g.max_client_prepared_statements,
                bytes: g.max_client_prepared_bytes,
            },
        };
        let relay = Relay::new(
            release_on_idle,
            rules,
            RelayTimeouts::new(g.query_timeout.nonzero(), g.idle_transaction_timeout.nonzero()),
        );
        let multi_host = shared.cluster(&l.db.name).is_some_and(|c| c.hosts().len() > 1);
        // Session mode keeps one server for the whole session: the primary. A single host
        // has nothing to route between.
        let route = if l.mode == PoolMode::Session || !multi_host {
            Route::Primary
        } else {
            l.route.unwrap_or_else(|| cfg.route(&l.db, &l.user))
        };
        reg.info.set_route(route.as_str());
        // A client whose requests all go to the primary needs a router only to note its
        // writes for other clients' reads (`read_your_writes_scope`).
        let shared_ryw = multi_host && l.mode != PoolMode::Session && l.db.ryw_shared;
        let router = (route != Route::Primary || shared_ryw).then(|| {
            let policy = Policy {
                route,
                primary_reads: l.db.primary_reads,
                transaction_routing: g.transaction_routing,
                read_your_writes: g.read_your_writes,
                ryw_wait: g.read_your_writes_wait.0,
                ryw_scope: cfg.ryw_scope(&l.db, &l.user),
            };
            let clocks = shared_ryw.then(|| l.pool.cluster().write_clocks(&l.user));
            Box::new(Router::new(policy, shared.classifier.clone(), clocks))
        });
        let idle_limit_ms =
            g.client_idle_timeout.nonzero().map_or(0, |t| t.as_millis().clamp(1, u32::MAX as u128) as u32);
        let idle_timer = (idle_limit_ms > 0).then(|| Box::pin(tokio::time::sleep(Duration::from_secs(86_400))));
        let session = Session {
            stream: l.stream,
            buf: l.buf,
            params: l.params,
            stmts: ClientStatements::default(),
            max_prepared: g.max_prepared_statements,
            pool: l.pool,
            router,
            _cancel: l.cancel,
            relay,
            idle_timer,
            idle_limit_ms,
            reset_query,
            control: shared.control(&l.db.name),
            listener: None,
            reg,
            shared: shared.clone(),
            shutdown,
            draining: false,
            log: LogFlags { disconnections: g.log_disconnections, pooler_errors: g.log_pooler_errors },
            _hold: hold,
        };
        (session, span)
    }

    /// The state machine's dispatch loop. Returns why pgsluice closed the client (`None`:
    /// the client left).
    async fn serve(&mut self) -> Option<std::borrow::Cow<'static, str>> {
        let mut state = State::Idle;
        loop {
            state = match state {
                State::Idle => self.idle().await,
                State::Waiting => match self.attach_now() {
                    Ok(state) => state,
                    Err(p) => Box::pin(self.waiting(p)).await,
                },
                State::Active(g) => self.active(g).await,
                State::Closing(None) => return None,
                State::Closing(Some(e)) => {
                    let reason = e.message.clone();
                    Box::pin(self.close_with(e)).await;
                    return Some(reason);
                }
            };
        }
    }

    // === Idle ===

    /// Waits without a server for a complete request, and answers what needs no server.
    async fn idle(&mut self) -> State {
        let info = &self.reg.info;
        info.unlinked();
        info.set_prepared_statements(self.stmts.len());
        self.rearm_idle_timer();
        let mut scan = exchange::IdleScan::default();
        match std::future::poll_fn(|cx| self.poll_idle(cx, &mut scan)).await {
            Idle::Ready => {}
            Idle::Closed => return State::Closing(None),
            Idle::Shutdown => return State::Closing(Some(shutting_down())),
            Idle::Failed(e) => return State::Closing(Some(e)),
        }
        let max = self.relay.rules.max_body as usize;
        // (Not inside a deferred BEGIN: its answer would say "idle".)
        let deferred = self.router.as_ref().is_some_and(|r| r.in_deferred_begin());
        if self.relay.release_on_idle && !deferred {
            if let Some(r) = self.listen_request(max) {
                return Box::pin(self.listen(r)).await;
            }
        }
        if self.relay.rules.track && !deferred {
            if let Some(out) = self.pool.current_primary().and_then(|p| {
                exchange::answer_without_server(
                    &mut self.buf,
                    &mut self.stmts,
                    p.known_statements(),
                    max,
                    self.relay.rules.statements,
                )
            }) {
                Box::pin(self.reply(out)).await;
                return State::Idle;
            }
        }
        if !self.relay.rules.statement_mode {
            if let Some(n) = self.router.as_mut().and_then(|r| r.defer_begin(&self.buf, max)) {
                // Answered as PostgreSQL would; run on the server the next request gets.
                self.buf.advance(n);
                let mut out = BytesMut::with_capacity(32);
                write::command_complete(&mut out, "BEGIN");
                write::ready_for_query(&mut out, status::IN_TRANSACTION);
                Box::pin(self.reply(out)).await;
                return State::Idle;
            }
        }
        self.request_ready().await
    }

    /// A request is buffered: on to `Waiting`, once the pools are current (a reload may
    /// have come while the request was arriving) and the database is not paused.
    async fn request_ready(&mut self) -> State {
        if self.pool.is_retired() {
            if let Err(e) = self.rebind() {
                return State::Closing(Some(e));
            }
        }
        if self.control.is_paused() {
            if let Err(state) = Box::pin(self.wait_resumed()).await {
                return state;
            }
        }
        State::Waiting
    }

    /// Polls the idle wait: a complete request buffered, the client gone, a stop, or
    /// `client_idle_timeout`.
    fn poll_idle(&mut self, cx: &mut Context<'_>, scan: &mut exchange::IdleScan) -> Poll<Idle> {
        self.reg.info.register_waker(cx.waker());
        loop {
            // (Before looking at the buffer: a killed client's buffered request gets no server.)
            if self.reg.info.is_killed() {
                return Poll::Ready(Idle::Failed(killed()));
            }
            // Notifications first: the client is between messages (but not after a `BEGIN`
            // pgsluice answered itself: the client is in a transaction block).
            let in_block = self.router.as_ref().is_some_and(|r| r.in_deferred_begin());
            if let Some(l) = self.listener.as_mut().filter(|_| !in_block) {
                match l.poll_deliver(cx, &mut self.stream) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(Deliver::Closed(_))) => return Poll::Ready(Idle::Closed),
                    Poll::Ready(Err(Deliver::Failed(e))) => return Poll::Ready(Idle::Failed(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // A request pipelined before Terminate still runs (the relay closes after it).
            let max_whole = match self.relay.rules.track {
                true => exchange::max_read_whole(self.relay.rules.statements),
                false => usize::MAX,
            };
            match scan.inspect(&self.buf, self.relay.rules.max_body as usize, max_whole) {
                Ok(b) if b.terminate => return Poll::Ready(Idle::Closed),
                Ok(b) if b.ready => return Poll::Ready(Idle::Ready),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Idle::Failed(client_protocol_error(e))),
            }
            if self.shutdown.is_set() && self.buf.is_empty() {
                return Poll::Ready(Idle::Shutdown);
            }
            if let Some(timer) = &mut self.idle_timer {
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Idle::Failed(ClientError::fatal(
                        "08P01",
                        "client_idle_timeout",
                        ErrorSource::Internal,
                    )));
                }
            }
            if self.buf.is_empty() {
                // Hold no buffer while idle.
                self.buf = BytesMut::new();
                if let Stream::Plain(tcp) = &self.stream {
                    match tcp.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(_)) => return Poll::Ready(Idle::Closed),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
            match relay::poll_read_into(cx, &mut self.stream, &mut self.buf) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Idle::Closed),
                Poll::Ready(Ok(_)) => self.rearm_idle_timer(),
                Poll::Pending => {
                    if self.buf.is_empty() {
                        // A spurious readiness: give the reservation back.
                        self.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// `client_idle_timeout` counts from now (entering idle, or bytes received).
    fn rearm_idle_timer(&mut self) {
        if let Some(timer) = &mut self.idle_timer {
            timer.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(self.idle_limit_ms.into()));
        }
    }

    /// Waits while the database is paused (PAUSE, KILL), until RESUME. The client's
    /// buffered request waits with it. `Err`: the state to go to instead.
    async fn wait_resumed(&mut self) -> Result<(), State> {
        // Counted as waiting (SHOW POOLS cl_waiting, maxwait) while the database is paused.
        self.reg.info.waiting(self.shared.clock.now_us());
        let control = self.control.clone();
        let info = self.reg.info.clone();
        let shutdown = &self.shutdown;
        let stop = std::future::poll_fn(|cx| {
            info.register_waker(cx.waker());
            if info.is_killed() || shutdown.is_set() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        tokio::select! {
            _ = control.wait_resumed() => Ok(()),
            _ = stop => Err(State::Closing(Some(if info.is_killed() { killed() } else { shutting_down() }))),
        }
    }

    /// Moves to the current pools of this client's database after a reload replaced them;
    /// an error if the database was removed.
    fn rebind(&mut self) -> Result<(), ClientError> {
        let cfg = self.shared.config.load();
        let name = &self.reg.info.database;
        let removed = || {
            ClientError::fatal(
                "3D000",
                format!("database \"{name}\" was removed from the configuration (pgsluice reload)"),
                ErrorSource::Internal,
            )
        };
        let db = cfg.databases.get(name.as_ref()).ok_or_else(removed)?;
        let cluster = self.shared.cluster(name).ok_or_else(removed)?;
        let set = self.shared.pools.get_or_create(&cfg, &cluster, db, &self.reg.info.user);
        self.params.intern(set.interner());
        self.pool = set;
        tracing::debug!("pools replaced by a reload: moved to the new ones");
        Ok(())
    }

    /// The LISTEN-only request at the front of the buffer, if pgsluice answers it itself
    /// (transaction and statement mode, outside a transaction). A `DISCARD ALL` ends the
    /// client's LISTENs here (and goes on to the server).
    fn listen_request(&mut self, max: usize) -> Option<listen::Request> {
        let listener = &self.listener;
        let defined = |name: &[u8]| listener.as_ref().and_then(|l| l.statement(name));
        let r = listen::request(&self.buf, max, &self.stmts, &defined);
        if r.is_none() && self.listener.is_some() && listen::is_discard_all(&self.buf, max) {
            self.listener = None;
        }
        r
    }

    /// Answers a LISTEN-only request ([`listen::request`]) without a server: the client's
    /// channels change in its hub (joined at its first `LISTEN`), and a `LISTEN` is
    /// acknowledged once the hub's server listens. The statements of one Query apply all or
    /// nothing, as PostgreSQL runs them in one transaction.
    async fn listen(&mut self, r: listen::Request) -> State {
        let cfg = self.shared.config.load_full();
        let g = cfg.general();
        let mut out = BytesMut::with_capacity(64);
        let mut failed = false;
        for step in r.steps {
            match step {
                Step::Ready => {
                    write::ready_for_query(&mut out, status::IDLE);
                    failed = false;
                }
                // (After an error the server would skip to Sync.)
                _ if failed => {}
                Step::Answer(bytes) => out.extend_from_slice(bytes),
                Step::Define(name, ops) => self.listener(g).define(name, ops),
                Step::Forget(name) => {
                    if let Some(l) = &mut self.listener {
                        l.forget(&name);
                    }
                }
                Step::Run(ops) => match self.run_listen(&ops, g).await {
                    Ok(()) => {
                        for op in &ops {
                            write::command_complete(
                                &mut out,
                                if matches!(op, Op::Listen(_)) { "LISTEN" } else { "UNLISTEN" },
                            );
                        }
                    }
                    Err(e) => {
                        e.encode(&mut out);
                        failed = true;
                    }
                },
            }
        }
        self.buf.advance(r.len);
        self.reply(out).await;
        State::Idle
    }

    /// The client's listener, made (and joined to its hub) if it has none.
    fn listener(&mut self, g: &crate::config::General) -> &mut Listener {
        let (shared, info, pool) = (&self.shared, &self.reg.info, &self.pool);
        self.listener.get_or_insert_with(|| {
            let hub = shared.hubs.hub(&info.database, &info.user, pool);
            let sub = crate::notify::Subscriber::new(info.clone(), g.max_client_notification_bytes as usize);
            Box::new(Listener::new(hub, sub))
        })
    }

    /// Applies one statement's (or one Query's) LISTEN/UNLISTEN operations in the hub, and
    /// waits until its server listens on new channels.
    async fn run_listen(&mut self, ops: &[Op], g: &crate::config::General) -> Result<(), ClientError> {
        let listens = ops.iter().any(|op| matches!(op, Op::Listen(_)));
        if !listens && self.listener.is_none() {
            // UNLISTEN by a client that never listened: nothing to undo.
            return Ok(());
        }
        let limit = self.pool.current_primary().map_or(Duration::from_secs(5), |p| p.settings().connect_timeout);
        let l = self.listener(g);
        let done = l
            .hub
            .apply(&l.sub, ops, g.max_client_listen_channels as usize)
            .map_err(|e| ClientError::error("54000", e.to_string(), ErrorSource::Client))?;
        if listens {
            if let Err(e) = l.hub.wait_listening(done.gen, limit).await {
                l.hub.unlisten(&l.sub, Some(&done.added));
                return Err(ClientError::error("08006", e.to_string(), ErrorSource::Server));
            }
        }
        Ok(())
    }

    /// Writes an answer pgsluice gives without a server. A failed write shows up as a
    /// closed client at the next read.
    async fn reply(&mut self, out: BytesMut) {
        if send(&mut self.stream, &out).await.is_err() {
            self.buf.clear();
        }
    }

    // === Waiting ===

    /// The fast path of `Waiting`, without a future: the routing decision, an idle server
    /// where it points, nothing to set up on it. `Err`: the rest is the slow path's
    /// ([`Session::waiting`]), with what was done so far.
    fn attach_now(&mut self) -> Result<State, Pending> {
        let d = match &mut self.router {
            Some(r) => r.decide(&self.buf, &self.stmts, &self.params, self.relay.rules.max_body as usize),
            None => Decision::PRIMARY,
        };
        let wait_start = tokio::time::Instant::now();
        self.reg.info.waiting(self.shared.clock.us(wait_start));
        let Some(mut g) = checkout::try_check_out(&self.pool, self.router.as_deref_mut(), &d) else {
            return Err(Pending { d, wait_start, g: None });
        };
        self.linked(&mut g, wait_start, wait_start);
        let server = g.server();
        if d.begin.is_some() || self.params.sync_sql(&server.params, server.synced.as_ref()).is_some() {
            return Err(Pending { d, wait_start, g: Some(g) });
        }
        Ok(self.attached(g, &d))
    }

    /// Checks out a server for the buffered request (routed), waiting as long as it takes,
    /// and prepares it for this client: tracked parameters, a deferred `BEGIN`. A server
    /// whose connection turns out dead during that setup (an idle connection whose host
    /// crashed) is dropped and another one checked out, up to [`SETUP_ATTEMPTS`] times: the
    /// request has not been sent yet. A read avoids that host from then on.
    async fn waiting(&mut self, p: Pending) -> State {
        let Pending { mut d, wait_start, mut g } = p;
        let mut attempt = 1;
        loop {
            let mut server = match g.take() {
                Some(g) => g,
                None => match checkout::check_out(&self.pool, self.router.as_deref_mut(), &d).await {
                    Ok(mut g) => {
                        self.linked(&mut g, wait_start, tokio::time::Instant::now());
                        g
                    }
                    Err(e) => return self.request_failed(ClientError::from(&e)).await,
                },
            };
            let Err((e, lost)) = self.set_up(&mut server, &d).await else { return self.attached(server, &d) };
            let host = server.pool().settings().host.index;
            server.discard();
            if !lost || attempt == SETUP_ATTEMPTS {
                return self.request_failed(e).await;
            }
            attempt += 1;
            self.pool.cluster().request_probe();
            if d.want == Want::Read {
                crate::stats::RouteStats::bump(&self.pool.route_stats().retries);
                d.exclude |= 1 << host.min(63);
            }
        }
    }

    /// Brings `g` to this client's tracked parameters and runs the deferred `BEGIN` of `d`.
    /// `Err`: the client's error, and whether the connection was lost (not refused).
    async fn set_up(&mut self, g: &mut PoolGuard, d: &Decision) -> Result<(), (ClientError, bool)> {
        let server = g.server();
        if let Some(sql) = self.params.sync_sql(&server.params, server.synced.as_ref()) {
            self.sync_params(g, sql).await?;
        }
        // (After the parameter sync: a SET inside the transaction would be undone by its
        // rollback behind pgsluice's back.)
        if let Some(begin) = &d.begin {
            // The client was told its transaction began: begin it here, on the server its
            // first statement was routed to.
            let limit = g.pool().settings().connect_timeout;
            let run = tokio::time::timeout(limit, g.server().run_discard_until(begin, status::IN_TRANSACTION)).await;
            if let Err(e) = run.unwrap_or_else(|_| Err(crate::backend::Error::Timeout("BEGIN".into()))) {
                let lost = connection_lost(&e);
                let msg = format!("could not begin the transaction on the server: {e}");
                return Err((ClientError::error("08006", msg, ErrorSource::Server), lost));
            }
        }
        Ok(())
    }

    /// A server was checked out at `now`: counted, and the server linked to this client for
    /// the console (the client is linked to it, which a CancelRequest follows, only once
    /// pgsluice's own setup on it is done: [`Session::attached`]).
    fn linked(&mut self, g: &mut PoolGuard, wait_start: tokio::time::Instant, now: tokio::time::Instant) {
        let (pool, server, _) = g.parts();
        pool.stats().assigned(now - wait_start);
        if let Some(meta) = &server.meta {
            meta.link(self.reg.info.id, self.shared.clock.us(now));
        }
    }

    /// The server is ready for the request: the exchange starts, `Active`.
    fn attached(&mut self, mut g: PoolGuard, d: &Decision) -> State {
        if let Some(r) = &mut self.router {
            let host = g.pool().settings().host.index;
            // (Checked out as the primary: a write there counts even if the topology moved
            // since.)
            let on_primary =
                d.want == Want::Primary || self.pool.cluster().primary() == crate::cluster::Primary::Host(host);
            r.attached(d, on_primary, host, &self.buf, self.relay.rules.max_body as usize);
        }
        let status = if d.begin.is_some() { status::IN_TRANSACTION } else { status::IDLE };
        let (_, server, x) = g.parts();
        if let Some(meta) = &server.meta {
            self.reg.info.linked(meta);
        }
        if !server.synced.as_ref().is_some_and(|s| self.params.is_same(s)) {
            // Only on change: the set is shared by many clients, its refcount is a hot line.
            server.synced = Some(self.params.shared());
        }
        // A read-routed server takes one request at a time outside a transaction, so that a
        // write pipelined behind the read is routed (and its WAL position learned) on its own;
        // so does a read on the primary of a client whose writes move the write clocks, so
        // that a write pipelined behind it is noted.
        let one_request =
            d.want == Want::Read || (!d.may_write && self.router.as_ref().is_some_and(|r| r.clocks().is_some()));
        x.attach(&mut server.state, status, one_request, self.max_prepared as usize);
        self.relay.reset_timer();
        State::Active(g)
    }

    /// Brings a server's tracked parameters to this client's values with `sql` (one round
    /// trip). `Err`: the client's error, and whether the connection was lost.
    async fn sync_params(&mut self, g: &mut PoolGuard, sql: String) -> Result<(), (ClientError, bool)> {
        let limit = g.pool().settings().connect_timeout;
        let synced = match tokio::time::timeout(limit, g.server().run_discard(&sql)).await {
            Ok(r) => r.map_err(|e| (e.to_string(), connection_lost(&e))),
            Err(_) => Err((format!("no answer within {limit:?}"), false)),
        };
        if let Err((e, lost)) = synced {
            let msg = format!("could not set session parameters on server: {e}");
            return Err((ClientError::error("08006", msg, ErrorSource::Server), lost));
        }
        // What was just SET or RESET: unreported parameters never come back as ParameterStatus.
        self.params.record_synced(&mut g.server().params);
        Ok(())
    }

    /// No server for the buffered request: a FATAL error closes the client; otherwise the
    /// request is dropped and answered with `e` (and the ReadyForQuery messages the client
    /// waits for), and the session goes on.
    async fn request_failed(&mut self, e: ClientError) -> State {
        if e.severity == write::Severity::Fatal {
            return State::Closing(Some(e));
        }
        let buffered = exchange::inspect_idle(&self.buf, self.relay.rules.max_body as usize).unwrap_or_default();
        if buffered.end == 0 {
            // The client is in the middle of a large message we cannot resynchronise with.
            return State::Closing(Some(e));
        }
        if self.log.pooler_errors {
            tracing::warn!(client_id = self.reg.info.id, code = %e.code, error = %e.message, "pooler error");
        }
        let mut out = BytesMut::with_capacity(128);
        e.encode(&mut out);
        for _ in 0..buffered.requests {
            write::ready_for_query(&mut out, status::IDLE);
        }
        // Drop the rejected request, keep a partly received next message.
        self.buf.advance(buffered.end);
        match send(&mut self.stream, &out).await {
            Ok(()) => State::Idle,
            Err(_) => State::Closing(None),
        }
    }

    // === Active ===

    /// Relays between the client and `g` until the server is released (→ `Idle`) or the
    /// session ends. Inline in the session's future and small: the relay is a poll over the
    /// session's fields; only the rare endings run boxed ([`Session::after`]).
    async fn active(&mut self, mut g: PoolGuard) -> State {
        loop {
            if !self.draining && self.shutdown.is_set() && (!self.relay.release_on_idle || g.parts().2.is_pinned()) {
                self.drain();
            }
            let ev = std::future::poll_fn(|cx| self.poll_active(cx, &mut g)).await;
            {
                let (pool, _, x) = g.parts();
                pool.stats().add(x.tally());
            }
            let Some(ev) = ev else {
                if self.reg.info.is_killed() {
                    if g.parts().2.pending() > 0 {
                        tokio::spawn(crate::cancel::send_cancel(g.server().cancel.clone()));
                    }
                    g.discard();
                    return State::Closing(Some(killed()));
                }
                // Shutdown: give the server back at the next idle point.
                self.drain();
                continue;
            };
            self.check_read_only(&mut g);
            if matches!(ev, Event::Released) && self.release_now(&mut g) {
                // (Unlinked first: a CancelRequest must not reach the server's next client.)
                self.reg.info.unlinked();
                g.check_in();
                if self.shutdown.is_set() {
                    return State::Closing(Some(shutting_down()));
                }
                return State::Idle;
            }
            return Box::pin(self.after(g, ev)).await;
        }
    }

    /// One poll of the relay, after the stop conditions (KILL; shutdown for a session that
    /// keeps its server between transactions: in transaction mode a shutdown is handled when
    /// the server is released). `None`: a stop.
    fn poll_active(&mut self, cx: &mut Context<'_>, g: &mut PoolGuard) -> Poll<Option<Event>> {
        let info = &self.reg.info;
        info.register_waker(cx.waker());
        if info.is_killed() || (!self.draining && self.shutdown.is_set()) {
            return Poll::Ready(None);
        }
        let (pool, server, x) = g.parts();
        if let Some(l) = self.listener.as_deref_mut().filter(|l| l.wants_delivery()) {
            // Between transactions with nothing in flight (a pinned client), or finishing a
            // write begun there: the client is between messages.
            if l.writing() || (x.status() == status::IDLE && x.is_clean(&server.buf)) {
                match l.poll_deliver(cx, &mut self.stream) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(Deliver::Closed(e))) => return Poll::Ready(Some(Event::ClientIo(e))),
                    Poll::Ready(Err(Deliver::Failed(e))) => return Poll::Ready(Some(Event::ClientFailed(Box::new(e)))),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
        let client = ClientIo {
            stream: &mut self.stream,
            buf: &mut self.buf,
            params: &mut self.params,
            stmts: &mut self.stmts,
            known: pool.known_statements(),
            stats: pool.stats(),
            info,
        };
        relay::poll(cx, &mut self.relay, client, server, x).map(Some)
    }

    /// The release needs nothing but the check-in (no reset query, nothing to close): the
    /// router is told, and the caller checks the server in.
    fn release_now(&mut self, g: &mut PoolGuard) -> bool {
        let state = &g.server().state;
        if self.reset_query.is_some() || state.poisoned || state.session_dirty {
            return false;
        }
        if let Some(r) = &mut self.router {
            r.released(self.pool.cluster());
        }
        true
    }

    /// Shutdown while a server is held: release it at the next idle point even if the
    /// session would keep it (session mode, pinned), then close.
    fn drain(&mut self) {
        self.draining = true;
        self.relay.release_on_idle = true;
        self.relay.draining = true;
    }

    /// What the relay's event means for the server and the session.
    async fn after(&mut self, mut g: PoolGuard, ev: Event) -> State {
        let fatal = |code, msg: &'static str, source| State::Closing(Some(ClientError::fatal(code, msg, source)));
        match ev {
            Event::Released => {
                self.release(g).await;
                if self.shutdown.is_set() {
                    return State::Closing(Some(shutting_down()));
                }
                State::Idle
            }
            Event::ClientClosed | Event::ClientIo(_) => {
                if let Some(r) = &mut self.router {
                    r.forget_write();
                }
                let (_, server, x) = g.parts();
                if x.is_clean(&server.buf) {
                    self.release(g).await;
                } else {
                    if x.pending() > 0 {
                        // Nobody will read the result: stop the query too.
                        tokio::spawn(crate::cancel::send_cancel(server.cancel.clone()));
                    }
                    g.discard();
                }
                State::Closing(None)
            }
            Event::ClientProtocol(e) => {
                g.discard();
                State::Closing(Some(client_protocol_error(e)))
            }
            Event::ClientFailed(e) => {
                let (_, server, x) = g.parts();
                if x.is_clean(&server.buf) {
                    self.release(g).await;
                } else {
                    g.discard();
                }
                State::Closing(Some(*e))
            }
            Event::ServerClosed | Event::ServerIo(_) => {
                tracing::warn!(event = ?ev, "server connection lost during a request");
                match self.survive_server_loss(g).await {
                    Ok(Survived::Answered) => State::Idle,
                    Ok(Survived::Resend) => self.request_ready().await,
                    Err(Lost::Fatal(lost)) => {
                        State::Closing(Some(ClientError::fatal("08006", lost, ErrorSource::Server)))
                    }
                    Err(Lost::Torn) => State::Closing(None),
                }
            }
            Event::ServerProtocol(_) => {
                tracing::warn!(event = ?ev, "server broke the protocol during a request");
                drop(g);
                fatal("08006", "server connection closed unexpectedly", ErrorSource::Server)
            }
            Event::TransactionInStatementMode => {
                g.discard();
                fatal("08P01", "transaction blocks not allowed in statement pooling mode", ErrorSource::Client)
            }
            Event::QueryTimeout => {
                tokio::spawn(crate::cancel::send_cancel(g.server().cancel.clone()));
                let (_, server, x) = g.parts();
                if x.torn_to_client() {
                    // No ErrorResponse may follow the start of a message: what the server
                    // sent, then the end of the connection.
                    let mut out = BytesMut::new();
                    x.unsent_to_client(&server.buf, &mut out);
                    g.discard();
                    let _ = send(&mut self.stream, &out).await;
                    return State::Closing(None);
                }
                g.discard();
                fatal("57014", "query_timeout", ErrorSource::Internal)
            }
            Event::IdleTransactionTimeout => {
                g.discard();
                fatal("25P03", "idle_transaction_timeout", ErrorSource::Internal)
            }
        }
    }

    /// A server believed to be the primary said "read-only transaction": it may have been
    /// demoted, so the topology is probed again at once.
    fn check_read_only(&self, g: &mut PoolGuard) {
        let (pool, _, x) = g.parts();
        if x.take_read_only_error() {
            let host = &pool.settings().host;
            let cluster = self.pool.cluster();
            // Throttled: a client's own writes inside read-only transactions also get 25006.
            if cluster.primary() == crate::cluster::Primary::Host(host.index) && cluster.request_probe_throttled() {
                tracing::info!(host = %host.addr, "primary answered read_only_sql_transaction: probing the topology");
            }
        }
    }

    /// The server connection died during a request (e.g. its primary crashed). If the client
    /// was not inside a transaction (and not in session mode, whose session state died with
    /// the server) and no message is half relayed in either direction, the session goes on:
    /// - a read the router kept ([`Router::take_resend`]) whose answer had not begun is put
    ///   back in front of the client's buffer and routed again, avoiding the dead host
    ///   (`Resend`): the client never sees the crash;
    /// - otherwise each request in flight is answered with an error and `ReadyForQuery`
    ///   (idle), and the next request is routed afresh.
    ///
    /// Otherwise returns the message to disconnect the client with (its transaction or
    /// session is gone, or the streams cannot be resynchronised).
    async fn survive_server_loss(&mut self, mut g: PoolGuard) -> Result<Survived, Lost> {
        let host = g.pool().settings().host.index;
        let (_, server, x) = g.parts();
        if x.torn_to_client() {
            // The client gets what the server sent, up to where it stopped, then the end.
            let mut out = BytesMut::new();
            x.unsent_to_client(&server.buf, &mut out);
            drop(g);
            self.reg.info.unlinked();
            self.pool.cluster().request_probe();
            if let Some(r) = &mut self.router {
                r.released(self.pool.cluster());
            }
            let _ = send(&mut self.stream, &out).await;
            return Err(Lost::Torn);
        }
        x.take_read_only_error();
        let why = match x.server_fatal() {
            Some(f) => format!("server closed the connection ({f})"),
            None => "server connection closed unexpectedly".to_string(),
        };
        let resumable = self.relay.release_on_idle && x.resumable();
        let resendable = resumable && x.resendable();
        let owed = x.pending();
        // Answers already read and scanned but not yet written to the client are whole
        // messages: they go first. Scanned client bytes not yet sent belong to the failed
        // requests.
        let mut out = BytesMut::new();
        if resumable {
            x.salvage(&mut self.buf, &server.buf, &mut out);
        }
        drop(g);
        // (A CancelRequest must not follow the client to a dead server's successor.)
        self.reg.info.unlinked();
        let cluster = self.pool.cluster();
        // Probe now: the primary may be gone, or the replica.
        cluster.request_probe();
        let resend = match &mut self.router {
            Some(r) => {
                let resend = if resendable { r.take_resend() } else { None };
                // A write may have committed before the connection died.
                r.released(cluster);
                resend
            }
            None => None,
        };
        if let Some(request) = resend {
            // The read goes out again: what its dead server had answered (never relayed) is
            // dropped, and the request replaces its unsent remainder in front of whatever the
            // client sent after it.
            tracing::info!(host = %self.pool.pools()[host].settings().host.addr, "{why}: read sent again to another host");
            crate::stats::RouteStats::bump(&self.pool.route_stats().read_resends);
            let mut buf = BytesMut::with_capacity(request.len() + self.buf.len());
            buf.extend_from_slice(&request);
            buf.extend_from_slice(&self.buf);
            self.buf = buf;
            return Ok(Survived::Resend);
        }
        if !resumable {
            return Err(Lost::Fatal(format!("{why}; the transaction or session state on it is lost")));
        }
        let next = if self.router.is_some() && cluster.primary() != crate::cluster::Primary::Host(host) {
            "the next request is routed again (reads to a healthy replica or the primary, writes to the primary)"
        } else {
            "the next request goes to the current primary"
        };
        let message = format!(
            "{why} during the request; its outcome is unknown (no transaction was open). pgsluice keeps this session: {next}"
        );
        for _ in 0..owed {
            write::error_response(&mut out, write::Severity::Error, "08006", &message, None);
            write::ready_for_query(&mut out, status::IDLE);
        }
        // A failed write shows up as a closed client at the next read.
        let _ = send(&mut self.stream, &out).await;
        Ok(Survived::Answered)
    }

    /// Returns a clean server to its pool, after `server_reset_query` where configured.
    async fn release(&mut self, mut g: PoolGuard) {
        if let Some(r) = &mut self.router {
            r.released(self.pool.cluster());
        }
        let state = &g.server().state;
        if state.poisoned {
            // Its prepared statements may not be what pgsluice believes (SQL PREPARE or
            // DEALLOCATE by a client): no other client gets it.
            return g.discard();
        }
        let query = match &self.reset_query {
            Some(q) => Some(q.clone()),
            None if state.session_dirty => Some(self.shared.config.load().general().server_reset_query.trim().into()),
            None => None,
        };
        // (Unlinked first: a CancelRequest must reach neither pgsluice's reset query nor the
        // server's next client.)
        self.reg.info.unlinked();
        if let Some(q) = query {
            if !Box::pin(self.reset(&mut g, q)).await {
                return g.discard();
            }
        }
        g.check_in();
    }

    /// Runs `q` (`server_reset_query`) on a released server; false if it failed or `q` is
    /// empty (then the caller closes the server). Used in session mode, with
    /// `server_reset_query_always`, and for a server a pinned client set session state on.
    async fn reset(&mut self, g: &mut PoolGuard, q: Arc<str>) -> bool {
        if q.is_empty() {
            return false;
        }
        let limit = g.pool().settings().connect_timeout;
        if !matches!(tokio::time::timeout(limit, g.server().run_discard(&q)).await, Ok(Ok(()))) {
            return false;
        }
        // The reset query may have reset unreported tracked parameters silently.
        let (_, server, x) = g.parts();
        self.params.forget_unreported(&mut server.params, &mut server.synced);
        if server.state.session_dirty {
            // It reset a pinned client's state; DISCARD ALL also drops prepared statements.
            server.state.was_reset();
            x.unpin();
            self.reg.info.set_pinned(false);
        }
        true
    }

    // === Closing ===

    /// Sends `e` as FATAL and closes the client.
    async fn close_with(&mut self, e: ClientError) {
        if self.log.pooler_errors {
            tracing::warn!(client_id = self.reg.info.id, code = %e.code, error = %e.message, "pooler error, closing client");
        }
        let mut out = BytesMut::with_capacity(128);
        e.into_fatal().encode(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.stream.write_all(&out).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// Most servers tried for one request whose setup finds their connection dead.
const SETUP_ATTEMPTS: u32 = 3;

/// Whether `e` says the server connection is gone (rather than that the server refused
/// what was asked): another connection may do.
fn connection_lost(e: &crate::backend::Error) -> bool {
    matches!(e, crate::backend::Error::Io(_) | crate::backend::Error::Lost(_))
}

/// Writes `out` to the client and flushes it (a TLS stream may otherwise keep the tail in
/// rustls's buffer while the session waits for the client's next message).
async fn send(stream: &mut Stream, out: &[u8]) -> std::io::Result<()> {
    stream.write_all(out).await?;
    stream.flush().await
}

fn killed() -> ClientError {
    ClientError::fatal(
        "57P01",
        "terminating connection due to administrator command (pgsluice admin console: KILL)",
        ErrorSource::Internal,
    )
}

fn shutting_down() -> ClientError {
    ClientError::fatal(
        "57P01",
        "terminating connection due to administrator command (pgsluice is shutting down)",
        ErrorSource::Internal,
    )
}

/// The error a client gets for a message that breaks the protocol or pgsluice's limits.
fn client_protocol_error(e: protocol::Error) -> ClientError {
    match e {
        protocol::Error::TooLargeToInspect { .. } => ClientError::fatal(
            "54000",
            format!("{e}: a named Parse is bounded by max_client_prepared_bytes"),
            ErrorSource::Client,
        ),
        e => ClientError::protocol(format!("invalid message from client: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    /// Future sizes in the test (debug) build; a change that grows one fails here with the
    /// old and new size. Budget history (issue 14): before the state machine one 5,416-byte
    /// future per client, for the whole connection. Now the login task's future (it ends at
    /// login: 296 bytes since `Shutdown` carries a flag for the per-poll check) and the
    /// session task's, which every idle client keeps.
    const TASK_FUTURE_BUDGET: usize = 296;
    /// The logged-in session's future: the `Session`, the dispatch state and the idle poll.
    /// What every idle client keeps (in a tokio task cell, rounded up to 128 bytes).
    /// 528 → 536 (issue 17): the `Session` grew by the LISTEN subscription's pointer.
    const SESSION_FUTURE_BUDGET: usize = 536;
    /// The `Session` struct itself, a parked idle client's state (socket, buffer, parameter
    /// set and pool handles, relay settings, registrations).
    /// 288 → 296 (issue 17): `listener`, one `Option<Box<…>>` that stays `None` for a client
    /// that never LISTENs in transaction mode.
    const SESSION_BUDGET: usize = 296;

    /// A logged-in session over a loopback socket (`general` is added to `[general]`), not
    /// yet running, and the client's end of the socket. No server is needed until a request
    /// is complete.
    async fn session(general: &str) -> (Arc<Shared>, crate::shutdown::ShutdownController, Session, TcpStream) {
        let text =
            format!("[general]\nauth_type = \"any\"\n{general}\n[databases.app]\nhosts = [\"127.0.0.1:5432\"]\n");
        let cfg = crate::config::Config::from_str(&text, std::path::Path::new("/nonexistent.toml")).unwrap();
        let shared = Shared::new(cfg);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server_side, peer) = l.accept().await.unwrap();
        let cfg = shared.config.load_full();
        let db = cfg.databases["app"].clone();
        let pool = shared.pools.get_or_create(&cfg, &shared.cluster("app").unwrap(), &db, "u");
        let login = startup::LoggedIn {
            id: 7,
            stream: Stream::Plain(server_side),
            buf: BytesMut::new(),
            db,
            user: "u".into(),
            pool,
            mode: PoolMode::Transaction,
            cancel: shared.cancel.register(),
            params: ClientParams::default(),
            session_state: crate::config::SessionState::Pin,
            route: None,
        };
        let ctl = crate::shutdown::ShutdownController::new();
        let permit = Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap();
        let (session, _span) = Session::new(shared.clone(), login, peer, ctl.subscribe(), (ctl.token(), permit));
        (shared, ctl, session, client)
    }

    /// Everything the client receives until the session closes the socket: the SQLSTATE of
    /// each ErrorResponse.
    async fn errors_until_close(client: &mut TcpStream) -> Vec<String> {
        use tokio::io::AsyncReadExt;
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        let mut codes = Vec::new();
        let mut rest = &all[..];
        while let Ok(Some((tag, body, r))) = crate::protocol::split_frame(rest, 1 << 20) {
            if tag == b'E' {
                codes.push(crate::protocol::backend::parse_error_fields(body).code.to_string());
            }
            rest = r;
        }
        codes
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_client_past_client_idle_timeout_is_closed() {
        let (_shared, _ctl, mut s, mut client) = session("client_idle_timeout = \"30s\"").await;
        let started = tokio::time::Instant::now();
        let served = tokio::spawn(async move { s.serve().await });
        // (Paused time: the clock jumps to the timer once everything waits.)
        assert_eq!(errors_until_close(&mut client).await, ["08P01"]);
        assert!(served.await.unwrap().is_some_and(|r| r.contains("client_idle_timeout")));
        assert!(started.elapsed() >= Duration::from_secs(30), "closed after {:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_received_restart_client_idle_timeout() {
        use tokio::io::AsyncWriteExt;
        let (_shared, _ctl, mut s, mut client) = session("client_idle_timeout = \"30s\"").await;
        let started = tokio::time::Instant::now();
        let served = tokio::spawn(async move { s.serve().await });
        tokio::time::sleep(Duration::from_secs(20)).await;
        // Half a Query: bytes arrived, no request is complete yet.
        client.write_all(b"Q\0\0\0\x0dselect").await.unwrap();
        assert_eq!(errors_until_close(&mut client).await, ["08P01"]);
        assert!(served.await.unwrap().is_some());
        assert!(started.elapsed() >= Duration::from_secs(50), "closed after {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn kill_and_shutdown_end_an_idle_session_with_57p01() {
        let (_shared, _ctl, mut s, mut client) = session("").await;
        let info = s.reg.info.clone();
        let served = tokio::spawn(async move { s.serve().await });
        tokio::task::yield_now().await;
        info.kill();
        assert_eq!(errors_until_close(&mut client).await, ["57P01"]);
        assert!(served.await.unwrap().is_some_and(|r| r.contains("KILL")));

        let (shared, ctl, mut s, mut client) = session("").await;
        let served = tokio::spawn(async move { s.serve().await });
        tokio::task::yield_now().await;
        ctl.trigger();
        shared.clients.wake_all();
        assert_eq!(errors_until_close(&mut client).await, ["57P01"]);
        assert!(served.await.unwrap().is_some_and(|r| r.contains("shutting down")));
    }

    #[tokio::test]
    async fn terminate_ends_quietly_and_garbage_gets_08p01() {
        use tokio::io::AsyncWriteExt;
        let (_shared, _ctl, mut s, mut client) = session("").await;
        let served = tokio::spawn(async move { s.serve().await });
        client.write_all(b"X\0\0\0\x04").await.unwrap();
        assert!(errors_until_close(&mut client).await.is_empty());
        assert_eq!(served.await.unwrap(), None, "the client left: no reason of pgsluice's");

        let (_shared, _ctl, mut s, mut client) = session("").await;
        let served = tokio::spawn(async move { s.serve().await });
        client.write_all(b"?\0\0\0\x04").await.unwrap();
        assert_eq!(errors_until_close(&mut client).await, ["08P01"]);
        assert!(served.await.unwrap().is_some_and(|r| r.contains("invalid message")));
    }

    #[tokio::test]
    async fn an_idle_session_holds_no_read_buffer() {
        use tokio::io::AsyncWriteExt;
        let (_shared, _ctl, mut s, mut client) = session("").await;
        // A request split over two reads: the buffer is allocated when bytes arrive...
        client.write_all(b"Q\0\0\0\x0dsel").await.unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut scan = crate::exchange::IdleScan::default();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(s.poll_idle(&mut cx, &mut scan).is_pending());
        assert!(s.buf.capacity() > 0 && s.buf.capacity() <= crate::exchange::READ_MIN * 2);
        client.write_all(b"ect 1\0").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(s.poll_idle(&mut cx, &mut scan), Poll::Ready(Idle::Ready)));
        // ... and none is held once the request is gone and the client is idle again.
        s.buf.clear();
        assert!(s.poll_idle(&mut cx, &mut crate::exchange::IdleScan::default()).is_pending());
        assert_eq!(s.buf.capacity(), 0);
    }

    #[tokio::test]
    async fn idle_session_fits_its_budget() {
        let text = "[general]\nauth_type = \"any\"\n[databases.app]\nhosts = [\"127.0.0.1:5432\"]\n";
        let cfg = crate::config::Config::from_str(text, std::path::Path::new("/nonexistent.toml")).unwrap();
        let shared = Shared::new(cfg);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let peer = tcp.local_addr().unwrap();
        let ctl = crate::shutdown::ShutdownController::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(2));
        let permit = || permits.clone().try_acquire_owned().unwrap();
        let task = std::mem::size_of_val(&run(
            shared.clone(),
            Stream::Plain(tcp),
            peer,
            ctl.subscribe(),
            ctl.token(),
            permit(),
        ));
        let cfg = shared.config.load_full();
        let db = cfg.databases["app"].clone();
        let pool = shared.pools.get_or_create(&cfg, &shared.cluster("app").unwrap(), &db, "u");
        let login = Box::new(startup::LoggedIn {
            id: 1,
            stream: Stream::Plain(TcpStream::connect(l.local_addr().unwrap()).await.unwrap()),
            buf: BytesMut::new(),
            db,
            user: "u".into(),
            pool,
            mode: PoolMode::Transaction,
            cancel: shared.cancel.register(),
            params: ClientParams::default(),
            session_state: crate::config::SessionState::Pin,
            route: None,
        });
        let session =
            std::mem::size_of_val(&serve(shared.clone(), login, peer, ctl.subscribe(), ctl.token(), permit()));
        let sizes = format!("task future {task}, session future {session}, Session {}", std::mem::size_of::<Session>());
        assert!(task <= TASK_FUTURE_BUDGET, "{sizes}: task future over its budget {TASK_FUTURE_BUDGET}");
        assert!(session <= SESSION_FUTURE_BUDGET, "{sizes}: session future over its budget {SESSION_FUTURE_BUDGET}");
        assert!(std::mem::size_of::<Session>() <= SESSION_BUDGET, "{sizes}: Session over its budget {SESSION_BUDGET}");
        eprintln!("{sizes}");
    }
}
