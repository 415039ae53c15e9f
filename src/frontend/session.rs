//! `Session`: one task per client, driving the state machine of `../shared/DESIGN.md`:
//! `Idle` (no server; wait for a complete request) → `Waiting` (pool check-out) → `Active`
//! (relay until the server is releasable) → back to `Idle`, or `Closing`.
//!
//! This is the single boundary where failures become the client's `ErrorResponse`.
//!
//! Invariants:
//! - A server goes back to its pool only through `release()`, and only when `Txn` says it is
//!   idle with nothing pending; every other exit discards it.
//! - An idle plain-TCP client holds no read buffer (it is freed when empty and allocated
//!   again when the socket becomes readable); a TLS client keeps its buffers.
//! - The cancel slot names a server only while this session holds it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::Instrument;

use crate::cancel::CancelHandle;
use crate::config::PoolMode;
use crate::error::{ClientError, ErrorSource};
use crate::net::Stream;
use crate::pool::{PoolGuard, PoolSet, Ryw};
use crate::protocol::{status, write};
use crate::shared::{DbControl, Shared};
use crate::shutdown::{DrainToken, Shutdown};
use crate::stats::{ClientInfo, Clock, Registration};

use super::relay::{self, ClientIo, Event, Relay, RelayTimeouts};
use super::startup::{self, Startup};
use crate::config::{Route, TransactionRouting};
use crate::exchange::{self, Rules};
use crate::params::ClientParams;
use crate::prepared::ClientStatements;
use crate::protocol::{cstr, ftag, Header, HEADER_LEN};
use crate::router::{self, Policy, Want};
use crate::sql::classify::{Class, Classifier};

/// Serves one client connection from accept to close.
pub async fn run(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, shutdown: Shutdown, _drain: DrainToken) {
    let _ = tcp.set_nodelay(true);
    // Boxed so the (large, short-lived) login future does not inflate every idle session.
    let login = {
        shared.logging_in.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let s = Box::pin(startup::startup(&shared, tcp, peer)).await;
        shared.logging_in.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        match s {
            Startup::LoggedIn(l) => l,
            // Boxed: the console's future must not enlarge every pooled session.
            Startup::Admin(a) => return Box::pin(crate::admin::serve(shared, *a, peer, shutdown, _drain)).await,
            Startup::Done => return,
        }
    };
    let id = login.id;
    let cfg = shared.config.load();
    let g = cfg.general();
    // The correlation span: with JSON logs at info level (every line of the session carries
    // the client id); with text logs at debug level, as at `info` an enabled span per
    // session costs memory per idle client (the session's own info lines name the id).
    let span = if g.log_format == crate::config::LogFormat::Json {
        tracing::info_span!("client", client_id = id, db = %login.db.name, user = %login.user)
    } else {
        tracing::debug_span!("client", client_id = id, db = %login.db.name, user = %login.user)
    };
    let l = *login;
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
    let log = LogFlags { disconnections: g.log_disconnections, pooler_errors: g.log_pooler_errors };
    let reg = shared.clients.register(ClientInfo::new(
        id,
        l.db.name.as_str().into(),
        l.user.as_str().into(),
        l.db.fixed_user.as_deref().unwrap_or(&l.user).into(),
        peer,
        l.stream.tcp().local_addr().ok(),
        l.stream.is_tls(),
        l.params.get("application_name").unwrap_or(""),
        shared.clock.now_us(),
        false,
    ));
    let release_on_idle = l.mode != PoolMode::Session;
    let reset_query = {
        let q = g.server_reset_query.trim();
        let wanted = l.mode == PoolMode::Session || g.server_reset_query_always;
        (!q.is_empty() && wanted).then(|| Arc::<str>::from(q))
    };
    let rules = Rules {
        track: g.max_prepared_statements > 0 && release_on_idle,
        statement_mode: l.mode == PoolMode::Statement,
        max_body: g.max_packet_size as usize,
        session: None,
    };
    let mut relay = Relay::new(
        release_on_idle,
        rules,
        RelayTimeouts { query: g.query_timeout.nonzero(), idle_transaction: g.idle_transaction_timeout.nonzero() },
    );
    let multi_host = shared.cluster(&l.db.name).is_some_and(|c| c.hosts().len() > 1);
    let policy = Policy {
        // Session mode keeps one server for the whole session: the primary. A single host
        // has nothing to route between.
        route: if l.mode == PoolMode::Session || !multi_host { Route::Primary } else { cfg.route(&l.db, &l.user) },
        primary_reads: l.db.primary_reads,
        transaction_routing: g.transaction_routing,
        read_your_writes: g.read_your_writes,
        ryw_wait: g.read_your_writes_wait.0,
    };
    // (Decided at login: a reload or SET right after it does not change this client.)
    let session_state = l.session_state;
    if l.mode != PoolMode::Session && session_state != crate::config::SessionState::Allow {
        relay.rules.session = Some(Arc::new(exchange::SessionRules { policy: session_state, info: reg.info.clone() }));
    }
    let session = Session {
        stream: l.stream,
        buf: l.buf,
        params: l.params,
        stmts: ClientStatements::default(),
        max_prepared: g.max_prepared_statements as usize,
        pool: l.pool,
        policy,
        classifier: shared.classifier.clone(),
        ryw_lsn: 0,
        ryw_since: 0,
        note_write: false,
        deferred_begin: None,
        cancel: l.cancel,
        relay,
        client_idle_timeout: g.client_idle_timeout.nonzero(),
        reset_query,
        control: shared.control(&l.db.name),
        clock: shared.clock,
        reg,
        shared: shared.clone(),
        log,
        close_reason: None,
    };
    drop(cfg);
    let started = shared.clock.now_us();
    let mut session = session;
    let span2 = span.clone();
    async {
        session.serve(shutdown, peer).await;
        if log.disconnections {
            let info = &session.reg.info;
            tracing::info!(
                client_id = id,
                db = %info.database,
                user = %info.user,
                addr = %peer,
                duration_s = format!("{:.3}", shared.clock.now_us().saturating_sub(started) as f64 / 1e6),
                reason = session.close_reason.as_deref().unwrap_or("client closed the connection"),
                "client disconnected"
            );
        }
    }
    .instrument(span2)
    .await;
    drop(span);
}

/// Which session events are logged (`log_disconnections`, `log_pooler_errors`).
#[derive(Debug, Clone, Copy)]
struct LogFlags {
    disconnections: bool,
    pooler_errors: bool,
}

struct Session {
    stream: Stream,
    buf: BytesMut,
    params: ClientParams,
    /// Named prepared statements (transaction/statement mode).
    stmts: ClientStatements,
    max_prepared: usize,
    pool: PoolSet,
    /// Routing policy (fixed at login).
    policy: Policy,
    classifier: Arc<Classifier>,
    /// Read-your-writes: a primary WAL position covering this client's last write (0: none).
    ryw_lsn: u64,
    /// Read-your-writes: when (`Cluster::now_ms`) this client's last write ended, while no
    /// probe that started later has measured the primary yet (0: none pending).
    ryw_since: u64,
    /// The held server is the primary and may have been written to: note the time at release.
    note_write: bool,
    /// `transaction_routing = "first_statement"`: a `BEGIN` answered by pgsluice, to be run
    /// on the server the transaction's first statement is routed to.
    deferred_begin: Option<Box<str>>,
    cancel: CancelHandle,
    relay: Relay,
    client_idle_timeout: Option<Duration>,
    reset_query: Option<Arc<str>>,
    /// PAUSE / RESUME of this client's database.
    control: Arc<DbControl>,
    clock: Clock,
    /// This client in the registry (state for the admin console, KILL).
    reg: Registration,
    shared: Arc<Shared>,
    log: LogFlags,
    /// Why pgsluice closed the client (the disconnection log line).
    close_reason: Option<std::borrow::Cow<'static, str>>,
}

enum Wait {
    Ready,
    Closed,
    Shutdown,
    Failed(ClientError),
}

impl Session {
    async fn serve(&mut self, shutdown: Shutdown, peer: SocketAddr) {
        // One stop-signal future for the whole session: registering a fresh waiter on the
        // shared watch channel per transaction would contend across all sessions.
        // It also resolves when the client is killed (KILL, KILL_CLIENT); see `killed()`.
        let mut stop: StopSignal = Box::pin({
            let mut s = shutdown.clone();
            let info = self.reg.info.clone();
            async move {
                tokio::select! {
                    _ = s.wait() => {}
                    _ = info.killed() => {}
                }
            }
        });
        // `stop` has resolved (it must not be polled again).
        let mut stopped = false;
        tracing::debug!(%peer, "client logged in");
        let mut server: Option<PoolGuard> = None;
        let mut draining = false;
        loop {
            if server.is_none() {
                self.reg.info.unlinked();
                self.reg.info.set_prepared_statements(self.stmts.len());
                match self.wait_request(&shutdown, &mut stop, &mut stopped).await {
                    Wait::Ready => {
                        // (Not inside a deferred BEGIN: its answer would say "idle".)
                        if self.relay.rules.track
                            && self.deferred_begin.is_none()
                            && Box::pin(self.answer_without_server()).await
                        {
                            continue;
                        }
                        if self.policy.transaction_routing == TransactionRouting::FirstStatement
                            && self.policy.classifies()
                            && Box::pin(self.defer_begin()).await
                        {
                            continue;
                        }
                    }
                    Wait::Closed => return,
                    Wait::Shutdown => return self.close_with(shutting_down()).await,
                    Wait::Failed(e) => return self.close_with(e).await,
                }
                // (Checked once the request is here: a reload may have come while it waited.)
                if self.pool.is_retired() {
                    if let Err(e) = self.rebind() {
                        return self.close_with(e).await;
                    }
                }
                if self.control.is_paused() {
                    match Box::pin(self.wait_resumed(&mut stop, &mut stopped)).await {
                        Wait::Ready => {}
                        Wait::Closed => return,
                        Wait::Shutdown => return self.close_with(shutting_down()).await,
                        Wait::Failed(e) => return self.close_with(e).await,
                    }
                }
                match self.attach().await {
                    Ok(g) => server = Some(g),
                    Err(e) if e.severity == write::Severity::Fatal => return self.close_with(e).await,
                    Err(e) => {
                        if !self.reject_request(e).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let Some(g) = server.as_mut() else { continue };
            if !draining && shutdown.is_set() && (!self.relay.release_on_idle || g.parts().2.is_pinned()) {
                draining = true;
                self.relay.release_on_idle = true;
                self.relay.draining = true;
            }
            let watch_shutdown = !draining && !self.relay.release_on_idle;
            let ev = {
                let (pool, server_conn, x) = g.parts();
                let client = ClientIo {
                    stream: &mut self.stream,
                    buf: &mut self.buf,
                    params: &mut self.params,
                    stmts: &mut self.stmts,
                    known: pool.known_statements(),
                    stats: pool.stats(),
                };
                let pump = relay::pump(&mut self.relay, client, server_conn, x);
                // (In transaction mode a shutdown is handled when the server is released; the
                // signal is still watched for KILL.)
                tokio::select! {
                    ev = pump => Some(ev),
                    _ = &mut stop, if !stopped && (watch_shutdown || !shutdown.is_set()) => {
                        stopped = true;
                        None
                    }
                }
            };
            if let Some(g) = server.as_mut() {
                let (pool, _, x) = g.parts();
                pool.stats().add(x.tally());
            }
            if ev.is_none() && self.reg.info.is_killed() {
                if let Some(mut g) = server.take() {
                    if g.parts().2.pending() > 0 {
                        tokio::spawn(crate::cancel::send_cancel(g.server().cancel.clone()));
                    }
                    g.discard();
                }
                return self.close_with(killed()).await;
            }
            let Some(ev) = ev else {
                // Session mode (or a pinned client) on shutdown: give the server back at the
                // next idle point.
                draining = true;
                self.relay.release_on_idle = true;
                self.relay.draining = true;
                continue;
            };
            self.cancel.slot.clear();
            if let Some(g) = server.as_mut() {
                self.check_read_only(g);
            }
            match ev {
                Event::Released => {
                    if let Some(g) = server.take() {
                        self.release(g).await;
                    }
                    if shutdown.is_set() {
                        return self.close_with(shutting_down()).await;
                    }
                }
                Event::ClientClosed | Event::ClientIo(_) => {
                    self.note_write = false;
                    if let Some(mut g) = server.take() {
                        if Self::server_clean(&mut g) {
                            self.release(g).await;
                        } else {
                            if g.parts().2.pending() > 0 {
                                // Nobody will read the result: stop the query too.
                                tokio::spawn(crate::cancel::send_cancel(g.server().cancel.clone()));
                            }
                            g.discard();
                        }
                    }
                    return;
                }
                Event::ClientProtocol(e) => {
                    if let Some(g) = server.take() {
                        g.discard();
                    }
                    return self.close_with(ClientError::protocol(format!("invalid message from client: {e}"))).await;
                }
                Event::ServerClosed | Event::ServerIo(_) => {
                    tracing::warn!(event = ?ev, "server connection lost during a request");
                    let Some(g) = server.take() else { continue };
                    let lost = match Box::pin(self.survive_server_loss(g)).await {
                        Ok(()) => continue,
                        Err(lost) => lost,
                    };
                    return self.close_with(ClientError::fatal("08006", lost, ErrorSource::Server)).await;
                }
                Event::ServerProtocol(_) => {
                    tracing::warn!(event = ?ev, "server broke the protocol during a request");
                    drop(server.take());
                    return self
                        .close_with(ClientError::fatal(
                            "08006",
                            "server connection closed unexpectedly",
                            ErrorSource::Server,
                        ))
                        .await;
                }
                Event::TransactionInStatementMode => {
                    if let Some(g) = server.take() {
                        g.discard();
                    }
                    return self
                        .close_with(ClientError::fatal(
                            "08P01",
                            "transaction blocks not allowed in statement pooling mode",
                            ErrorSource::Client,
                        ))
                        .await;
                }
                Event::QueryTimeout => {
                    if let Some(mut g) = server.take() {
                        let target = g.server().cancel.clone();
                        tokio::spawn(crate::cancel::send_cancel(target));
                        g.discard();
                    }
                    return self.close_with(ClientError::fatal("57014", "query_timeout", ErrorSource::Internal)).await;
                }
                Event::IdleTransactionTimeout => {
                    if let Some(g) = server.take() {
                        g.discard();
                    }
                    return self
                        .close_with(ClientError::fatal("25P03", "idle_transaction_timeout", ErrorSource::Internal))
                        .await;
                }
            }
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
    /// the server) and no message is half relayed in either direction, each request in flight
    /// is answered with an error and `ReadyForQuery` (idle), and the session goes on: its
    /// next request gets a server of the current primary. Otherwise returns the message to
    /// disconnect the client with (its transaction or session is gone, or the streams cannot
    /// be resynchronised).
    async fn survive_server_loss(&mut self, mut g: PoolGuard) -> Result<(), String> {
        let (_, server, x) = g.parts();
        x.take_read_only_error();
        let why = match x.server_fatal() {
            Some(f) => format!("server closed the connection ({f})"),
            None => "server connection closed unexpectedly".to_string(),
        };
        let resumable = self.relay.release_on_idle && x.resumable();
        let owed = x.pending();
        // Answers already read and scanned but not yet written to the client are whole
        // messages: they go first. Scanned client bytes not yet sent belong to the failed
        // requests.
        let mut out = BytesMut::new();
        if resumable {
            x.salvage(&mut self.buf, &server.buf, &mut out);
        }
        drop(g);
        // Probe now: the primary may be gone.
        self.pool.cluster().request_probe();
        // A write may have committed before the connection died.
        if std::mem::take(&mut self.note_write) {
            self.ryw_since = self.pool.cluster().now_ms();
        }
        if !resumable {
            return Err(format!("{why}; the transaction or session state on it is lost"));
        }
        let message = format!(
            "{why} during the request; its outcome is unknown (no transaction was open). pgsluice keeps this session: the next request goes to the current primary"
        );
        for _ in 0..owed {
            write::error_response(&mut out, write::Severity::Error, "08006", &message, None);
            write::ready_for_query(&mut out, status::IDLE);
        }
        // A failed write shows up as a closed client at the next read.
        let _ = self.stream.write_all(&out).await;
        Ok(())
    }

    /// Whether the held server is idle with nothing in flight, so it may be reused.
    fn server_clean(g: &mut PoolGuard) -> bool {
        let (_, server, x) = g.parts();
        x.is_clean(&server.buf)
    }

    /// Returns a clean server to its pool, after `server_reset_query` where configured.
    async fn release(&mut self, mut g: PoolGuard) {
        // The client's write is done (whatever happens to the connection next): its reads
        // need a primary position measured from now on.
        if std::mem::take(&mut self.note_write) {
            self.ryw_since = self.pool.cluster().now_ms();
        }
        if g.server().state.poisoned {
            // Its prepared statements may not be what pgsluice believes (SQL PREPARE or
            // DEALLOCATE by a client): no other client gets it.
            return g.discard();
        }
        let query = match &self.reset_query {
            Some(q) => Some(q.clone()),
            None if g.server().state.session_dirty => {
                Some(self.shared.config.load().general().server_reset_query.trim().into())
            }
            None => None,
        };
        if let Some(q) = query {
            if !Box::pin(self.reset(&mut g, q)).await {
                return g.discard();
            }
        }
        g.check_in();
    }

    /// Checks out a server for the buffered request (routed) and prepares it for this
    /// client (tracked parameters).
    async fn attach(&mut self) -> Result<PoolGuard, ClientError> {
        // Taken first: if no server can be had, the client gets an error and `Z I` for its
        // request, and the deferred transaction is gone with it.
        let deferred_begin = self.deferred_begin.take();
        self.note_write = false;
        // The keyword scan assumes standard_conforming_strings: with it off, a backslash in a
        // literal could hide a write from it, so nothing is classified.
        let scs_off =
            self.policy.classifies() && self.params.get("standard_conforming_strings").is_some_and(|v| v == "off");
        let class = if self.policy.classifies() && !scs_off { self.classify_request() } else { None };
        let want = if self.policy.classifies() && !scs_off {
            let read_only = self.params.get("default_transaction_read_only").is_some_and(|v| v == "on");
            router::want(&self.policy, class, read_only)
        } else if self.policy.classifies() {
            Want::Primary
        } else {
            router::want(&self.policy, None, false)
        };
        // A read the client sent to the primary (hint) writes nothing; a read it sent to a
        // replica by hint is its own choice (no read-your-writes wait).
        let may_write = class.is_none_or(|c| !c.read_only);
        let hinted_replica = class.is_some_and(|c| c.hint == crate::sql::classify::Hint::Replica);
        let wait_start = tokio::time::Instant::now();
        self.reg.info.waiting(self.clock.us(wait_start));
        // The slow paths are boxed so that their futures do not enlarge every idle session.
        let mut g = match want {
            Want::Primary if !self.policy.classifies() => match self.pool.try_check_out() {
                Some(g) => g,
                None => Box::pin(self.pool.check_out()).await.map_err(|e| ClientError::from(&e))?,
            },
            Want::Primary => Box::pin(self.pool.check_out_write()).await.map_err(|e| ClientError::from(&e))?,
            Want::Read => {
                let ryw = if self.policy.read_your_writes == crate::config::ReadYourWrites::Lsn && !hinted_replica {
                    self.resolve_ryw();
                    Ryw { lsn: self.ryw_lsn, since: self.ryw_since }
                } else {
                    Ryw::default()
                };
                let g =
                    Box::pin(self.pool.check_out_read(&self.policy, ryw)).await.map_err(|e| ClientError::from(&e))?;
                self.resolve_ryw();
                g
            }
        };
        {
            let (pool, server, _) = g.parts();
            pool.stats().assigned(wait_start.elapsed());
            if let Some(meta) = &server.meta {
                meta.link(self.reg.info.id, self.clock.now_us());
                self.reg.info.linked(meta);
            }
        }
        let server = g.server();
        if let Some(sql) = self.params.sync_sql(&server.params, server.synced.as_ref()) {
            if let Err(e) = Box::pin(self.sync_params(&mut g, sql)).await {
                g.discard();
                return Err(e);
            }
        }
        // (After the parameter sync: a SET inside the transaction would be undone by its
        // rollback behind pgsluice's back.)
        let began = deferred_begin.is_some();
        if let Some(begin) = deferred_begin {
            // The client was told its transaction began: begin it here, on the server its first
            // statement was routed to.
            let limit = g.pool().settings().connect_timeout;
            let run = tokio::time::timeout(limit, g.server().run_discard_until(&begin, status::IN_TRANSACTION)).await;
            if let Err(e) = run.unwrap_or_else(|_| Err(crate::backend::Error::Timeout("BEGIN".into()))) {
                g.discard();
                return Err(ClientError::error(
                    "08006",
                    format!("could not begin the transaction on the server: {e}"),
                    ErrorSource::Server,
                ));
            }
        }
        // A read-routed server takes one request at a time outside a transaction, so that a
        // write pipelined behind the read is routed (and its WAL position learned) on its own.
        // Read-your-writes: note the time at release after whatever may have written on the
        // primary (a write, or a first_statement transaction that began with a read).
        let on_primary = self.pool.cluster().primary() == crate::cluster::Primary::Host(g.pool().settings().host.index);
        self.note_write = self.policy.read_your_writes == crate::config::ReadYourWrites::Lsn
            && self.policy.classifies()
            && on_primary
            && ((want == Want::Primary && may_write) || began);
        let server = g.server();
        if !server.synced.as_ref().is_some_and(|s| self.params.is_same(s)) {
            // Only on change: the set is shared by many clients, its refcount is a hot line.
            server.synced = Some(self.params.shared());
        }
        let status = if began { status::IN_TRANSACTION } else { status::IDLE };
        let (_, server, x) = g.parts();
        // A read-routed server takes one request at a time outside a transaction, so that a
        // write pipelined behind the read is routed (and its WAL position learned) on its own.
        x.attach(&mut server.state, status, want == Want::Read, self.max_prepared);
        self.relay.reset_timer();
        self.cancel.slot.set(&g.server().cancel);
        Ok(g)
    }

    /// `transaction_routing = "first_statement"`: if the buffered request is a lone
    /// simple-query `BEGIN` (no access mode, nothing else in the string), answers it as
    /// PostgreSQL would (`BEGIN`, ReadyForQuery `T`) without a server and keeps its text for
    /// [`Session::attach`], which runs it on the server the next request is routed to.
    async fn defer_begin(&mut self) -> bool {
        if self.deferred_begin.is_some() || self.relay.rules.statement_mode {
            return false;
        }
        let Ok(Some(hdr)) = Header::parse(&self.buf, self.relay.rules.max_body) else { return false };
        let end = hdr.frame_len();
        if hdr.tag != ftag::QUERY || self.buf.len() < end {
            return false;
        }
        let Some(text) = cstr(&self.buf[HEADER_LEN..end]).and_then(|(q, _)| std::str::from_utf8(q).ok()) else {
            return false;
        };
        let single = !text.trim_end().trim_end_matches(';').contains(';');
        let class = self.classifier.classify(text);
        if !single || class.begin != crate::sql::classify::Begin::Plain {
            return false;
        }
        self.deferred_begin = Some(text.into());
        self.buf.advance(end);
        let mut out = BytesMut::with_capacity(32);
        write::command_complete(&mut out, "BEGIN");
        write::ready_for_query(&mut out, status::IN_TRANSACTION);
        if self.stream.write_all(&out).await.is_err() {
            self.buf.clear();
        }
        true
    }

    /// The class of the first request in the client buffer: its Query, or the statements its
    /// Parse and Bind messages name; a request that names no statement at all (e.g. a
    /// `Close` and a `Sync`, as tokio-postgres sends after a one-shot query) is harmless and
    /// counts as read-only. `None` when it cannot be judged (a FunctionCall, a Bind of an
    /// unnamed or unknown statement, an extended batch not ended by a Sync in the buffer):
    /// the primary.
    fn classify_request(&self) -> Option<Class> {
        let mut off = 0;
        let mut executes = false;
        let mut acc: Option<Class> = None;
        while let Ok(Some(hdr)) = Header::parse(&self.buf[off..], self.relay.rules.max_body) {
            let end = off + hdr.frame_len();
            let body = self.buf.get(off + HEADER_LEN..end)?;
            match hdr.tag {
                ftag::QUERY => {
                    let text = cstr(body).and_then(|(q, _)| std::str::from_utf8(q).ok())?;
                    return Some(router::combine(acc, self.classifier.classify(text)));
                }
                ftag::PARSE => {
                    let (_, rest) = cstr(body)?;
                    let text = cstr(rest).and_then(|(q, _)| std::str::from_utf8(q).ok())?;
                    acc = Some(router::combine(acc, self.classifier.classify(text)));
                }
                ftag::BIND => {
                    let (_, rest) = cstr(body)?;
                    let (name, _) = cstr(rest)?;
                    if !name.is_empty() {
                        match self.stmts.get(name) {
                            Some(stmt) => {
                                let class = *stmt.class.get_or_init(|| self.classifier.classify(stmt.query()));
                                acc = Some(router::combine(acc, class));
                            }
                            // Defined by a Parse of this request (already judged).
                            None if acc.is_some() => {}
                            None => return None,
                        }
                    } else if acc.is_none() {
                        // The unnamed statement was parsed by an earlier request.
                        return None;
                    }
                }
                // Without an Execute the batch only prepares or describes: harmless anywhere.
                ftag::SYNC if !executes => {
                    let hint = acc.map(|c| c.hint).unwrap_or_default();
                    return Some(Class { read_only: true, hint, ..Class::default() });
                }
                ftag::SYNC => return Some(acc.unwrap_or(Class { read_only: true, ..Class::default() })),
                ftag::EXECUTE => executes = true,
                ftag::FUNCTION_CALL => return None,
                _ => {}
            }
            off = end;
        }
        // No Sync (yet): a batch ended by Flush, or a prefix of a large one. What follows is
        // unknown and will flow to the same server: the primary.
        None
    }

    /// Turns a pending write time into a primary position once a probe that started later
    /// has measured the primary.
    fn resolve_ryw(&mut self) {
        if self.ryw_since != 0 {
            if let Some(lsn) = self.pool.cluster().primary_lsn_after(self.ryw_since) {
                self.ryw_lsn = lsn;
                self.ryw_since = 0;
            }
        }
    }

    /// Runs `q` (`server_reset_query`) on a released server; false if it failed or `q` is
    /// empty (then the caller closes the server). Used in session mode, with
    /// `server_reset_query_always`, and for a server a pinned client set session state on.
    /// Out of line (boxed by the caller): it is rare in transaction mode, and its future would
    /// enlarge every idle session's state.
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

    /// Brings a server's tracked parameters to this client's values with `sql` (one round
    /// trip). Out of line for the same reason as [`Session::reset`].
    async fn sync_params(&mut self, g: &mut PoolGuard, sql: String) -> Result<(), ClientError> {
        let limit = g.pool().settings().connect_timeout;
        let synced = match tokio::time::timeout(limit, g.server().run_discard(&sql)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        };
        if let Err(e) = synced {
            return Err(ClientError::error(
                "08006",
                format!("could not set session parameters on server: {e}"),
                ErrorSource::Server,
            ));
        }
        // What was just SET or RESET: unreported parameters never come back as ParameterStatus.
        self.params.record_synced(&mut g.server().params);
        Ok(())
    }

    /// Answers a request that needs no server (statement Parse/Close + Sync, see
    /// [`relay::answer_without_server`]). Returns whether it did.
    async fn answer_without_server(&mut self) -> bool {
        // Without a primary right now, the request goes the long way (and waits for one).
        let Some(pool) = self.pool.current_primary() else { return false };
        let known = pool.known_statements();
        let max = self.relay.rules.max_body;
        let Some(out) = exchange::answer_without_server(&mut self.buf, &mut self.stmts, known, max) else {
            return false;
        };
        if self.stream.write_all(&out).await.is_err() {
            // The next read sees the closed socket.
            self.buf.clear();
        }
        true
    }

    /// Waits while the database is paused (PAUSE, KILL), until RESUME. The client's
    /// buffered request waits with it.
    async fn wait_resumed(&mut self, stop: &mut StopSignal, stopped: &mut bool) -> Wait {
        // Counted as waiting (SHOW POOLS cl_waiting, maxwait) while the database is paused.
        self.reg.info.waiting(self.clock.now_us());
        let control = self.control.clone();
        tokio::select! {
            _ = control.wait_resumed() => Wait::Ready,
            _ = &mut *stop, if !*stopped => {
                *stopped = true;
                if self.reg.info.is_killed() {
                    Wait::Failed(killed())
                } else {
                    Wait::Shutdown
                }
            }
        }
    }

    /// Waits (without a server) until the client has a complete request buffered.
    async fn wait_request(&mut self, shutdown: &Shutdown, stop: &mut StopSignal, stopped: &mut bool) -> Wait {
        loop {
            // Re-walked from the start on each read: while idle the buffer holds at most a
            // request or two. A request pipelined before Terminate still runs (the relay
            // closes after it).
            match exchange::inspect_idle(&self.buf, self.relay.rules.max_body) {
                Ok(b) if b.terminate => return Wait::Closed,
                Ok(b) if b.ready => return Wait::Ready,
                Ok(_) => {}
                Err(e) => return Wait::Failed(ClientError::protocol(format!("invalid message from client: {e}"))),
            }
            if shutdown.is_set() && self.buf.is_empty() {
                return Wait::Shutdown;
            }
            let read = async {
                if self.buf.is_empty() {
                    // Hold no buffer while idle.
                    self.buf = BytesMut::new();
                    if let Stream::Plain(tcp) = &self.stream {
                        tcp.readable().await?;
                    }
                }
                self.buf.reserve(exchange::READ_CHUNK);
                self.stream.read_buf(&mut self.buf).await
            };
            let idle_limit = async {
                match self.client_idle_timeout {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            let n = tokio::select! {
                r = read => r,
                _ = &mut *stop, if !*stopped => {
                    *stopped = true;
                    if self.reg.info.is_killed() {
                        return Wait::Failed(killed());
                    }
                    continue;
                }
                _ = idle_limit => return Wait::Failed(ClientError::fatal("08P01", "client_idle_timeout", ErrorSource::Internal)),
            };
            match n {
                Ok(0) | Err(_) => return Wait::Closed,
                Ok(_) => {}
            }
        }
    }

    /// Drops the buffered request and answers it with `e` (and the ReadyForQuery messages
    /// the client waits for). Returns false if the session cannot go on.
    async fn reject_request(&mut self, e: ClientError) -> bool {
        Box::pin(self.reject_request_inner(e)).await
    }

    async fn reject_request_inner(&mut self, e: ClientError) -> bool {
        let buffered = exchange::inspect_idle(&self.buf, self.relay.rules.max_body).unwrap_or_default();
        if buffered.end == 0 {
            // The client is in the middle of a large message we cannot resynchronise with.
            self.close_with_inner(e.into_fatal()).await;
            return false;
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
        self.stream.write_all(&out).await.is_ok()
    }

    /// Sends `e` and closes the client.
    async fn close_with(&mut self, e: ClientError) {
        Box::pin(self.close_with_inner(e)).await
    }

    async fn close_with_inner(&mut self, e: ClientError) {
        if self.log.pooler_errors {
            tracing::warn!(client_id = self.reg.info.id, code = %e.code, error = %e.message, "pooler error, closing client");
        }
        self.close_reason = Some(e.message.clone());
        let mut out = BytesMut::with_capacity(128);
        e.into_fatal().encode(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.stream.write_all(&out).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}

/// The session's stop-signal future; polled only while the stop is not yet set (it must not
/// be polled again after it completed).
type StopSignal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

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
