//! Server connection pools, one per (database, user).
//!
//! A `Pool` is an `Arc` around a short `parking_lot::Mutex` holding the idle stack, a FIFO
//! of waiters (`oneshot` senders) and counters. The lock is never held across an `.await`.
//!
//! Invariants:
//! - Every open (or opening) server connection owns exactly one [`Slot`]; the slot's `Drop`
//!   decrements the pool's `open` count and the database/user limits, whatever path the
//!   connection leaves by (checked in and expired, discarded dirty, lost in a channel).
//! - Only [`PoolGuard::check_in`] returns a connection to the idle stack; dropping a guard
//!   discards the connection. So a connection is never handed to another client unless the
//!   session explicitly declared it clean.
//! - Waiters are served strictly FIFO; a returned connection goes to the oldest live waiter
//!   before it goes idle.

mod limit;
mod set;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::{timeout_at, Instant};

use crate::backend::{self, Credential, LoginParams, ServerConn};
use crate::cluster::Host;
use crate::exchange::Exchange;
use crate::params::Interner;
use crate::prepared::KnownStatements;
use crate::stats::{PoolStats, ServerMeta};

pub use limit::Limit;
pub use set::{failover_may_help, PoolSet};

/// Why no server connection could be provided.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// `query_wait_timeout` passed while waiting.
    #[error("query_wait_timeout: no server connection became available within {0:?}")]
    Timeout(Duration),
    /// Opening a server connection failed (the server's own error code, if it sent one).
    #[error("{message}")]
    Connect {
        /// SQLSTATE to report.
        code: &'static str,
        /// Server code when the server refused the login (e.g. 28P01, 3D000).
        server_code: Option<Arc<str>>,
        /// Human message.
        message: Arc<str>,
    },
    /// The pool was shut down.
    #[error("pool is closed")]
    Closed,
    /// No primary appeared within `failover_wait_timeout`.
    #[error("no primary server is available for database \"{db}\" (waited {waited:?}{detail})")]
    NoPrimary {
        /// Client-visible database.
        db: Arc<str>,
        /// How long the request waited.
        waited: Duration,
        /// What the last attempt saw, if anything (", last error: ...").
        detail: Arc<str>,
    },
    /// A read must go to a replica (`route = "replica"` or `primary_reads = "never"`) and
    /// none is eligible.
    #[error("no replica of database \"{0}\" is eligible for reads (down, lagging beyond max_replica_lag, or behind this client's last write)")]
    NoReplica(Arc<str>),
    /// Several hosts accept writes and pgsluice cannot tell which one is the primary.
    #[error("split brain: several servers of database \"{0}\" accept writes and their timelines do not tell which is the primary; pgsluice refuses writes until all but one are demoted or stopped")]
    SplitBrain(Arc<str>),
}

/// Settings of one pool, computed once from the config when the pool is created.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Regular size (changed later with [`Pool::resize`]).
    pub size: u32,
    /// Connections kept open (see `size`).
    pub min_size: u32,
    /// Extra connections after `reserve_timeout` (see `size`).
    pub reserve_size: u32,
    /// Wait before using the reserve.
    pub reserve_timeout: Duration,
    /// `query_wait_timeout`; `None` waits forever.
    pub wait_timeout: Option<Duration>,
    /// `server_connect_timeout`.
    pub connect_timeout: Duration,
    /// `server_idle_timeout`.
    pub idle_timeout: Option<Duration>,
    /// `server_lifetime` (zero: each connection is used once, as in PgBouncer).
    pub lifetime: Option<Duration>,
    /// `server_check_delay`.
    pub check_delay: Duration,
    /// `server_check_query` ("" disables the check).
    pub check_query: String,
    /// Backend host to connect to (with its breaker and drain epoch).
    pub host: Arc<Host>,
    /// Backend database name.
    pub dbname: String,
    /// Backend user name.
    pub user: String,
    /// `application_name` sent to servers.
    pub application_name: String,
    /// `tcp_keepalive`.
    pub keepalive: bool,
    /// TLS toward the server.
    pub tls: Arc<crate::config::ServerTls>,
    /// What the server may ask for at login.
    pub auth: crate::auth::require::ServerAuthMethods,
    /// Process clock (server connection timestamps).
    pub clock: crate::stats::Clock,
    /// Source of server connection ids, shared by all pools.
    pub server_ids: Arc<AtomicU64>,
}

/// Sizes of a pool that a reload may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Regular size.
    pub size: u32,
    /// Connections kept open.
    pub min: u32,
    /// Extra connections after `reserve_timeout`.
    pub reserve: u32,
}

/// A point-in-time view of a pool, for the admin console and metrics.
#[derive(Debug, Clone, Default)]
pub struct PoolSnapshot {
    /// Connections open or opening.
    pub open: u32,
    /// Connections being opened.
    pub connecting: u32,
    /// Idle connections.
    pub idle: u32,
    /// Clients waiting.
    pub waiting: u32,
    /// How long the oldest waiter has waited.
    pub max_wait: Duration,
    /// Idle connections that sat idle past `server_check_delay` (PgBouncer's `sv_used`:
    /// they run `server_check_query` before reuse).
    pub used: u32,
    /// Connections checked out by clients.
    pub active: u32,
    /// Current sizes.
    pub sizes: Option<Sizes>,
}

/// One server connection as `SHOW SERVERS` shows it.
#[derive(Debug, Clone)]
pub struct ServerRow {
    /// Its identity.
    pub meta: Arc<ServerMeta>,
    /// PgBouncer's state word: `active`, `idle`, `used` or `tested`.
    pub state: &'static str,
    /// Opened before the last drain of its host or RECONNECT: closes when released.
    pub close_needed: bool,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a waiter re-checks whether it may open a connection (reserve pool, shared
/// database/user limits freed by another pool).
const WAITER_RECHECK: Duration = Duration::from_millis(200);

type Delivery = Result<Box<Pooled>, Error>;

/// A ParameterStatus set, shared.
pub type ServerParams = Arc<[(String, String)]>;

struct Waiter {
    tx: oneshot::Sender<Delivery>,
    since: Instant,
}

#[derive(Default)]
struct State {
    /// Boxed: a connection moves between the stack, waiters and guards as one pointer.
    #[allow(clippy::vec_box)]
    idle: Vec<Box<Pooled>>,
    /// Every open connection (idle or checked out).
    servers: Vec<Arc<ServerMeta>>,
    sizes: Option<Sizes>,
    waiters: VecDeque<Waiter>,
    open: u32,
    connecting: u32,
    backoff: Duration,
    retry_at: Option<Instant>,
    last_error: Option<Error>,
    closed: bool,
}

struct Inner {
    settings: PoolSettings,
    credential: Mutex<Credential>,
    /// ParameterStatus set of the first server connection (what clients are told at login).
    server_params: Mutex<Option<ServerParams>>,
    state: Mutex<State>,
    db_limit: Arc<Limit>,
    user_limit: Arc<Limit>,
    /// Total check-outs served; read by stats.
    checkouts: AtomicU64,
    /// Connections checked out right now (the router balances on it).
    in_use: AtomicU32,
    /// Client parameter sets in use with this pool (shared between identical clients).
    interner: Interner,
    /// Prepared statements some server of this pool accepted.
    known: KnownStatements,
    /// Traffic counters.
    stats: PoolStats,
    /// Replaced by a reload: no connection goes back to the idle stack.
    retired: std::sync::atomic::AtomicBool,
}

/// A pool of server connections for one (database, user).
#[derive(Clone)]
pub struct Pool(Arc<Inner>);

/// The pool accounting of one server connection; see the module invariants. Holds the
/// connection's id once it is registered.
struct Slot(Arc<Inner>, u64);

impl Drop for Slot {
    fn drop(&mut self) {
        let inner = &self.0;
        inner.db_limit.release();
        inner.user_limit.release();
        let mut st = inner.state.lock();
        st.open -= 1;
        if self.1 != 0 {
            let id = self.1;
            st.servers.retain(|m| m.id != id);
        }
        Pool(inner.clone()).maybe_open(&mut st, false);
    }
}

/// A server connection with its slot. Dropping it closes the connection. Always boxed: it
/// moves between the idle stack, waiters and guards as one pointer.
pub struct Pooled {
    conn: ServerConn,
    /// The protocol state of the connection's current attachment; kept with the connection
    /// so its buffers are reused by the next client (no allocation per transaction).
    exchange: Exchange,
    /// The host's drain epoch when the connection was opened.
    epoch: u64,
    _slot: Slot,
}

/// A checked-out connection. Dropping the guard discards the connection; call
/// [`PoolGuard::check_in`] to return a clean one.
pub struct PoolGuard {
    conn: Option<Box<Pooled>>,
    pool: Pool,
}

impl Pool {
    /// Creates an empty pool. Connections are opened on demand.
    pub fn new(settings: PoolSettings, credential: Credential, db_limit: Arc<Limit>, user_limit: Arc<Limit>) -> Pool {
        let sizes = Sizes { size: settings.size, min: settings.min_size, reserve: settings.reserve_size };
        let pool = Pool(Arc::new(Inner {
            settings,
            credential: Mutex::new(credential),
            server_params: Mutex::new(None),
            state: Mutex::new(State { sizes: Some(sizes), ..State::default() }),
            stats: PoolStats::default(),
            retired: std::sync::atomic::AtomicBool::new(false),
            db_limit,
            user_limit,
            checkouts: AtomicU64::new(0),
            in_use: AtomicU32::new(0),
            interner: Interner::default(),
            known: KnownStatements::default(),
        }));
        pool.0.db_limit.register(&pool.0);
        pool.0.user_limit.register(&pool.0);
        pool
    }

    /// When a shared limit keeps this pool from opening a connection its clients wait for,
    /// closes an idle connection of a sibling pool. Call without holding the state lock.
    fn relieve_limits(&self, allow_reserve: bool) {
        let blocked_by_limit = {
            let st = self.0.state.lock();
            let z = st.sizes();
            let cap = z.size + if allow_reserve { z.reserve } else { 0 };
            st.waiters.len() > st.connecting as usize && st.open < cap
        };
        if !blocked_by_limit {
            return;
        }
        for limit in [&self.0.db_limit, &self.0.user_limit] {
            if limit.at_max() && limit.evict_idle_from_others(&self.0) {
                let mut st = self.0.state.lock();
                self.maybe_open(&mut st, allow_reserve);
                return;
            }
        }
    }

    /// The pool's settings.
    pub fn settings(&self) -> &PoolSettings {
        &self.0.settings
    }

    /// The pool's parameter-set interner.
    pub fn interner(&self) -> &Interner {
        &self.0.interner
    }

    /// Prepared statements a server of this pool has accepted.
    pub fn known_statements(&self) -> &KnownStatements {
        &self.0.known
    }

    /// Opens a connection with this pool's login (`application_name` replaced) that is not
    /// the pool's: not counted in its size or limits, never checked in. For the LISTEN hub
    /// (`crate::notify`), one per (database, user), which owns and closes it.
    pub async fn connect_unpooled(&self, application_name: &str) -> Result<ServerConn, backend::Error> {
        let s = &self.0.settings;
        let cred = self.0.credential.lock().clone();
        let login = LoginParams {
            user: &s.user,
            database: &s.dbname,
            application_name,
            keepalive: s.keepalive,
            tls: &s.tls,
            auth: s.auth,
        };
        ServerConn::connect(&s.host.addr, &login, &cred, s.connect_timeout).await
    }

    /// Fast path of [`Pool::check_out`]: an idle connection that needs no health-check round
    /// trip, without waiting. `None` means "use `check_out`".
    pub fn try_check_out(&self) -> Option<PoolGuard> {
        let s = &self.0.settings;
        loop {
            let now = Instant::now();
            let p = {
                let mut st = self.0.state.lock();
                if st.closed || !st.waiters.is_empty() {
                    return None;
                }
                let p = st.idle.pop()?;
                if !s.check_query.is_empty() && now.duration_since(p.conn.last_used) >= s.check_delay {
                    st.idle.push(p);
                    return None;
                }
                p
            };
            if p.conn.stream.idle_and_open() && !self.expired(&p, now) {
                return Some(self.guard(p));
            }
            // Dead or expired: dropped here, outside the lock (its slot takes it).
        }
    }

    /// Sets the secret the pool logs in with, if it has none (a user found by
    /// `auth_query`).
    pub fn learn_secret(&self, secret: &crate::auth::Secret) {
        let mut c = self.0.credential.lock();
        if c.secret.is_none() {
            c.secret = Some(secret.clone());
        }
    }

    /// Remembers SCRAM keys recovered from a client login, for passthrough to the server.
    pub fn learn_scram_keys(&self, keys: crate::auth::scram::ClientKeys) {
        let mut c = self.0.credential.lock();
        if c.keys.is_none() {
            c.keys = Some(keys);
        }
    }

    /// The ParameterStatus set reported by this pool's first server, if one connected.
    pub fn cached_server_params(&self) -> Option<ServerParams> {
        self.0.server_params.lock().clone()
    }

    /// Checks out a server connection, waiting FIFO behind earlier clients for at most
    /// `query_wait_timeout`. Opens a new connection if the pool has room.
    ///
    /// # Cancel safety
    /// Cancel-safe: a dropped waiter is skipped by check-in; a connection already sent to it
    /// is closed, and its slot returns the accounting (pool count and limits).
    pub async fn check_out(&self) -> Result<PoolGuard, Error> {
        let s = &self.0.settings;
        let started = Instant::now();
        let deadline = s.wait_timeout.map(|t| started + t);
        let reserve_at = started + s.reserve_timeout;
        loop {
            let turn = {
                let mut st = self.0.state.lock();
                if st.closed {
                    return Err(Error::Closed);
                }
                if st.open == 0 && st.retry_at.is_some_and(|t| Instant::now() < t) {
                    if let Some(e) = st.last_error.clone() {
                        return Err(e);
                    }
                }
                match st.idle.pop() {
                    Some(p) if st.waiters.is_empty() => Ok(p),
                    other => {
                        if let Some(p) = other {
                            st.idle.push(p);
                        }
                        let (tx, rx) = oneshot::channel();
                        st.waiters.push_back(Waiter { tx, since: started });
                        self.maybe_open(&mut st, reserve_allowed(s, reserve_at));
                        Err(rx)
                    }
                }
            };
            let mut rx = match turn {
                Ok(p) => match self.verify_idle(p).await {
                    Some(p) => return Ok(self.guard(p)),
                    None => continue,
                },
                Err(rx) => rx,
            };
            if self.0.db_limit.at_max() || self.0.user_limit.at_max() {
                self.relieve_limits(reserve_allowed(s, reserve_at));
            }
            loop {
                // A waiter looks again every WAITER_RECHECK only while something it cannot be
                // told about may change: the reserve pool (after reserve_pool_timeout), or a
                // shared limit freed by another pool. Otherwise it just waits for its turn;
                // `query_wait_timeout`, a connect to retry after a failure's backoff and a
                // limit that freed up are the pool's upkeep ([`Pool::maintain`], every
                // second), so a waiter costs no timer of its own.
                let recheck = s.reserve_size > 0 || self.0.db_limit.at_max() || self.0.user_limit.at_max();
                let got = if recheck {
                    let mut wake = Instant::now() + WAITER_RECHECK;
                    if let Some(d) = deadline {
                        wake = wake.min(d);
                    }
                    timeout_at(wake, &mut rx).await.ok()
                } else {
                    Some((&mut rx).await)
                };
                match got {
                    Some(Ok(Ok(p))) => return Ok(self.guard(p)),
                    Some(Ok(Err(e))) => return Err(e),
                    Some(Err(_)) => return Err(Error::Closed),
                    None => {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            rx.close();
                            return match rx.try_recv() {
                                Ok(Ok(p)) => Ok(self.guard(p)),
                                Ok(Err(e)) => Err(e),
                                Err(_) => Err(Error::Timeout(s.wait_timeout.unwrap_or_default())),
                            };
                        }
                        {
                            let mut st = self.0.state.lock();
                            self.maybe_open(&mut st, reserve_allowed(s, reserve_at));
                        }
                        if self.0.db_limit.at_max() || self.0.user_limit.at_max() {
                            self.relieve_limits(reserve_allowed(s, reserve_at));
                        }
                    }
                }
            }
        }
    }

    fn guard(&self, p: Box<Pooled>) -> PoolGuard {
        self.0.checkouts.fetch_add(1, Ordering::Relaxed);
        self.0.in_use.fetch_add(1, Ordering::Relaxed);
        PoolGuard { conn: Some(p), pool: self.clone() }
    }

    /// Checks an idle connection before reuse: socket still open and silent, and, if it sat
    /// idle longer than `server_check_delay`, a round trip of `server_check_query`.
    async fn verify_idle(&self, mut p: Box<Pooled>) -> Option<Box<Pooled>> {
        if !p.conn.stream.idle_and_open() || self.expired(&p, Instant::now()) {
            return None;
        }
        let s = &self.0.settings;
        if !s.check_query.is_empty() && p.conn.last_used.elapsed() >= s.check_delay {
            let check = tokio::time::timeout(s.connect_timeout, p.conn.run_discard(&s.check_query)).await;
            if !matches!(check, Ok(Ok(()))) {
                return None;
            }
        }
        Some(p)
    }

    /// Past `server_lifetime`, or opened before its host was drained (it lost the primary
    /// role, was fenced or went down).
    fn expired(&self, p: &Pooled, now: Instant) -> bool {
        let s = &self.0.settings;
        p.epoch != s.host.epoch() || s.lifetime.is_some_and(|l| now.duration_since(p.conn.created) >= l)
    }

    /// Returns a clean connection: to the oldest live waiter, else onto the idle stack.
    fn check_in(&self, mut p: Box<Pooled>) {
        let now = Instant::now();
        p.conn.last_used = now;
        if let Some(m) = &p.conn.meta {
            m.unlink(p.conn.state.statements.len());
        }
        if self.expired(&p, now) {
            tokio::spawn(p.conn.terminate());
            return;
        }
        let mut st = self.0.state.lock();
        let z = st.sizes();
        // (Over its size: the pool was made smaller by a reload.)
        if st.closed || st.open > z.size + z.reserve {
            drop(st);
            tokio::spawn(p.conn.terminate());
            return;
        }
        while let Some(w) = st.waiters.pop_front() {
            match w.tx.send(Ok(p)) {
                Ok(()) => return,
                Err(Ok(back)) => p = back,
                Err(Err(_)) => return,
            }
        }
        if self.0.retired.load(Ordering::Relaxed) {
            // Replaced by a reload: it served the waiters it still had; nothing goes idle.
            drop(st);
            tokio::spawn(p.conn.terminate());
            return;
        }
        st.idle.push(p);
    }

    /// Opens a connection if waiters outnumber connections being opened and limits allow.
    /// Called with the state locked. The waiters are counted (dropped ones removed, a walk
    /// over the queue) only when a connection could be opened at all: a pool at its size
    /// with a thousand waiters pays nothing here per check-out.
    fn maybe_open(&self, st: &mut State, allow_reserve: bool) {
        if st.closed || st.waiters.len() <= st.connecting as usize || !self.may_open(st, allow_reserve) {
            return;
        }
        st.waiters.retain(|w| !w.tx.is_closed());
        if st.waiters.len() > st.connecting as usize {
            self.open_one(st, allow_reserve);
        }
    }

    /// Whether the pool's size, backoff and the shared limits leave room to open a
    /// connection now.
    #[inline]
    fn may_open(&self, st: &State, allow_reserve: bool) -> bool {
        let z = st.sizes();
        let cap = z.size + if allow_reserve { z.reserve } else { 0 };
        st.open < cap
            && st.retry_at.is_none_or(|t| Instant::now() >= t)
            && !self.0.db_limit.at_max()
            && !self.0.user_limit.at_max()
    }

    fn open_one(&self, st: &mut State, allow_reserve: bool) {
        let z = st.sizes();
        let cap = z.size + if allow_reserve { z.reserve } else { 0 };
        if st.open >= cap || st.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        if !self.0.db_limit.try_acquire() {
            return;
        }
        if !self.0.user_limit.try_acquire() {
            self.0.db_limit.release();
            return;
        }
        st.open += 1;
        st.connecting += 1;
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            st.open -= 1;
            st.connecting -= 1;
            self.0.db_limit.release();
            self.0.user_limit.release();
            return;
        };
        // The Slot is made inside the task: a runtime that is shutting down drops a task
        // inside `spawn` (here, under the state lock), and a Slot dropped there would take
        // the lock again. Unpolled tasks only exist at shutdown, when the count no longer
        // matters.
        let pool = self.clone();
        rt.spawn(async move {
            let slot = Slot(pool.0.clone(), 0);
            pool.connect_task(slot).await
        });
    }

    async fn connect_task(self, mut slot: Slot) {
        let s = &self.0.settings;
        let cred = self.0.credential.lock().clone();
        let login = LoginParams {
            user: &s.user,
            database: &s.dbname,
            application_name: &s.application_name,
            keepalive: s.keepalive,
            tls: &s.tls,
            auth: s.auth,
        };
        let host = &s.host;
        let epoch = host.epoch();
        let res = match host.breaker.try_acquire() {
            Ok(()) => {
                let res = ServerConn::connect(&host.addr, &login, &cred, s.connect_timeout).await;
                match &res {
                    Ok(_) => host.breaker.success(),
                    Err(e) if crate::cluster::host_unreachable(e) => {
                        host.breaker.failure();
                        host.request_probe();
                    }
                    Err(_) => host.breaker.success(),
                }
                res
            }
            Err(wait) => Err(backend::Error::Lost(format!(
                "server {} is unavailable: its circuit breaker is open after failed connection attempts (next attempt in {} ms)",
                host.addr,
                wait.as_millis()
            ))),
        };
        match res {
            Ok(mut conn) => {
                let id = s.server_ids.fetch_add(1, Ordering::Relaxed);
                let local = conn.stream.local_addr();
                let mut meta = ServerMeta::new(
                    id,
                    conn.cancel.pid as u32,
                    conn.cancel.addr.socket_addr(),
                    local,
                    s.clock.now_us(),
                );
                meta.tls = conn.stream.is_tls();
                meta.epoch = epoch;
                meta.cancel = Some(conn.cancel.clone());
                let meta = Arc::new(meta);
                conn.meta = Some(meta.clone());
                slot.1 = id;
                {
                    let mut params = self.0.server_params.lock();
                    if params.is_none() {
                        *params = Some(conn.params.clone().into());
                    }
                }
                {
                    let mut st = self.0.state.lock();
                    st.connecting -= 1;
                    st.servers.push(meta);
                    st.backoff = Duration::ZERO;
                    st.retry_at = None;
                    st.last_error = None;
                }
                self.check_in(Box::new(Pooled { conn, exchange: Exchange::default(), epoch, _slot: slot }));
            }
            Err(e) => {
                tracing::warn!(server = %s.host.addr, db = %s.dbname, user = %s.user, error = %e, "server connection failed");
                let err = connect_error(&e);
                let mut failed = Vec::new();
                {
                    let mut st = self.0.state.lock();
                    st.connecting -= 1;
                    st.backoff = (st.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                    st.retry_at = Some(Instant::now() + st.backoff);
                    st.last_error = Some(err.clone());
                    // With no other connection to wait for, or a refused login (which the
                    // next attempt would get too), waiting is pointless: fail now.
                    if st.open == 1 || login_refused(&err) {
                        failed.extend(st.waiters.drain(..));
                    }
                }
                for w in failed {
                    let _ = w.tx.send(Err(err.clone()));
                }
                drop(slot);
            }
        }
    }

    /// Periodic upkeep (every second): fails waiters past `query_wait_timeout` (so a waiter
    /// needs no timer of its own; as in PgBouncer, the limit is enforced to within about a
    /// second), closes idle connections past `server_idle_timeout` (down to `min_pool_size`)
    /// or `server_lifetime`, and opens connections up to `min_pool_size`.
    pub fn maintain(&self) {
        let s = &self.0.settings;
        let now = Instant::now();
        let mut closing = Vec::new();
        let mut expired = Vec::new();
        {
            let mut st = self.0.state.lock();
            // `query_wait_timeout` (every waiter: one put back after a failed idle check keeps
            // its start time behind younger ones).
            if let Some(limit) = s.wait_timeout {
                if st.waiters.iter().any(|w| now.duration_since(w.since) >= limit) {
                    for w in std::mem::take(&mut st.waiters) {
                        if now.duration_since(w.since) >= limit {
                            expired.push(w);
                        } else {
                            st.waiters.push_back(w);
                        }
                    }
                }
            }
            // Waiters with no connection coming: a connect that failed (its backoff has run
            // out), a limit that freed up. Waiters do not poll for this themselves.
            if !st.waiters.is_empty() {
                self.maybe_open(&mut st, false);
            }
            let mut i = 0;
            while i < st.idle.len() {
                let p = &st.idle[i];
                let c = &p.conn;
                let keep_warm = st.open - closing.len() as u32 <= st.sizes().min;
                let idle_long = s.idle_timeout.is_some_and(|t| now.duration_since(c.last_used) >= t) && !keep_warm;
                if idle_long || self.expired(p, now) || !c.stream.idle_and_open() {
                    closing.push(st.idle.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        for w in expired {
            let _ = w.tx.send(Err(Error::Timeout(s.wait_timeout.unwrap_or_default())));
        }
        // Slots are released outside the lock (their Drop takes it).
        for p in closing {
            tokio::spawn(p.conn.terminate());
        }
        let have_cred = {
            let c = self.0.credential.lock();
            c.secret.is_some() || c.keys.is_some()
        };
        // Only the primary is warmed (replicas take reads only, which come and go with the
        // lag bounds), and not while it is down, fenced or behind an open breaker.
        let host_usable = {
            let st = s.host.status();
            st.role == crate::cluster::Role::Primary
                && st.up
                && !st.fenced
                && !matches!(s.host.breaker.state(), crate::cluster::BreakerState::Open { .. })
        };
        let retired = self.0.retired.load(Ordering::Relaxed);
        if have_cred && host_usable && !retired {
            let mut st = self.0.state.lock();
            for _ in st.open..st.sizes().min {
                self.open_one(&mut st, false);
            }
        }
    }

    /// Closes idle connections and refuses new check-outs; busy ones close on check-in.
    pub fn close(&self) {
        let idle = {
            let mut st = self.0.state.lock();
            st.closed = true;
            for w in st.waiters.drain(..) {
                let _ = w.tx.send(Err(Error::Closed));
            }
            std::mem::take(&mut st.idle)
        };
        drop(idle);
    }

    /// Counters for the admin console and metrics.
    pub fn snapshot(&self) -> PoolSnapshot {
        let s = &self.0.settings;
        let now = Instant::now();
        let st = self.0.state.lock();
        let used = if s.check_query.is_empty() {
            0
        } else {
            st.idle.iter().filter(|p| now.duration_since(p.conn.last_used) >= s.check_delay).count() as u32
        };
        PoolSnapshot {
            open: st.open,
            connecting: st.connecting,
            idle: st.idle.len() as u32 - used,
            used,
            active: self.in_use(),
            waiting: st.waiters.len() as u32,
            max_wait: st.waiters.front().map(|w| w.since.elapsed()).unwrap_or_default(),
            sizes: st.sizes,
        }
    }

    /// Every open server connection with its state, for `SHOW SERVERS`.
    pub fn servers(&self) -> Vec<ServerRow> {
        let s = &self.0.settings;
        let now = Instant::now();
        let epoch = s.host.epoch();
        let st = self.0.state.lock();
        st.servers
            .iter()
            .map(|m| {
                let idle = st.idle.iter().find(|p| p.conn.meta.as_ref().is_some_and(|x| x.id == m.id));
                let state = match idle {
                    Some(p) if !s.check_query.is_empty() && now.duration_since(p.conn.last_used) >= s.check_delay => {
                        "used"
                    }
                    Some(_) => "idle",
                    None if m.linked_client() != 0 => "active",
                    None => "tested",
                };
                let close_needed = m.epoch != epoch;
                ServerRow { meta: m.clone(), state, close_needed }
            })
            .collect()
    }

    /// Traffic counters of this pool.
    pub fn stats(&self) -> &PoolStats {
        &self.0.stats
    }

    /// Changes the pool's sizes (a reload); waiters are served at once if it grew, and
    /// connections beyond a smaller size close as they are released or expire.
    pub fn resize(&self, sizes: Sizes) {
        let surplus = {
            let mut st = self.0.state.lock();
            st.sizes = Some(sizes);
            let over = (st.open.saturating_sub(sizes.size + sizes.reserve) as usize).min(st.idle.len());
            let keep = st.idle.len() - over;
            let surplus = st.idle.split_off(keep);
            for _ in 0..st.waiters.len() {
                self.open_one(&mut st, false);
            }
            surplus
        };
        for p in surplus {
            tokio::spawn(p.conn.terminate());
        }
    }

    /// The pool is being replaced (a reload): idle connections close now, the others when
    /// released unless a client still waits on this pool (sessions move to the new pools
    /// before their next request, so only a check-out racing the reload waits here).
    pub fn retire(&self) {
        self.0.retired.store(true, Ordering::Release);
        self.close_idle();
    }

    /// The secret this pool logs in with, if any (reload compares it).
    pub fn secret(&self) -> Option<crate::auth::Secret> {
        self.0.credential.lock().secret.clone()
    }

    /// SCRAM keys learned from client logins (carried over to a replacement pool).
    pub fn scram_keys(&self) -> Option<crate::auth::scram::ClientKeys> {
        self.0.credential.lock().keys.clone()
    }

    /// Closes the idle connections (PAUSE); the pool stays usable.
    pub fn close_idle(&self) {
        let idle = std::mem::take(&mut self.0.state.lock().idle);
        for p in idle {
            tokio::spawn(p.conn.terminate());
        }
    }

    /// The open server connection with id `id`, if it is one of this pool's.
    pub fn server(&self, id: u64) -> Option<Arc<ServerMeta>> {
        self.0.state.lock().servers.iter().find(|m| m.id == id).cloned()
    }

    /// Whether [`Pool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.0.state.lock().closed
    }

    /// Whether no connection is open or opening and nobody waits.
    pub fn is_empty(&self) -> bool {
        let st = self.0.state.lock();
        st.open == 0 && st.waiters.iter().all(|w| w.tx.is_closed())
    }

    /// Check-outs served so far.
    pub fn checkouts(&self) -> u64 {
        self.0.checkouts.load(Ordering::Relaxed)
    }

    /// Connections checked out right now.
    #[inline]
    pub fn in_use(&self) -> u32 {
        self.0.in_use.load(Ordering::Relaxed)
    }
}

impl State {
    fn sizes(&self) -> Sizes {
        // Invariant: set in `Pool::new`.
        self.sizes.unwrap_or(Sizes { size: 1, min: 0, reserve: 0 })
    }
}

impl PoolSettings {
    /// Whether `other` differs from `self` only in the sizes a running pool can take on
    /// ([`Pool::resize`]); anything else needs a new pool.
    pub fn same_except_sizes(&self, other: &PoolSettings) -> bool {
        self.reserve_timeout == other.reserve_timeout
            && self.wait_timeout == other.wait_timeout
            && self.connect_timeout == other.connect_timeout
            && self.idle_timeout == other.idle_timeout
            && self.lifetime == other.lifetime
            && self.check_delay == other.check_delay
            && self.check_query == other.check_query
            && Arc::ptr_eq(&self.host, &other.host)
            && self.dbname == other.dbname
            && self.user == other.user
            && self.application_name == other.application_name
            && self.keepalive == other.keepalive
            && self.tls.spec == other.tls.spec
            && self.auth == other.auth
    }

    /// The sizes part.
    pub fn sizes(&self) -> Sizes {
        Sizes { size: self.size, min: self.min_size, reserve: self.reserve_size }
    }
}

/// The reserve may be used once a waiter has waited `reserve_pool_timeout` (0 disables the
/// reserve, as in PgBouncer).
fn reserve_allowed(s: &PoolSettings, reserve_at: Instant) -> bool {
    !s.reserve_timeout.is_zero() && Instant::now() >= reserve_at
}

fn connect_error(e: &backend::Error) -> Error {
    match e {
        backend::Error::Server { code, message } => {
            Error::Connect { code: "08006", server_code: Some(code.as_str().into()), message: message.as_str().into() }
        }
        // pgsluice holds no credential the server accepts (e.g. only an md5 hash for a server
        // that asks for SCRAM): a configuration error, reported as PostgreSQL reports a login
        // it cannot authorize.
        backend::Error::Auth(_) => {
            Error::Connect { code: "28000", server_code: Some("28000".into()), message: e.to_string().into() }
        }
        // TLS cannot be set up as configured (a certificate that does not verify, a server
        // without TLS under `require`): the client sees a connection failure naming the
        // problem, and like a credential the server refuses, it is not retried.
        backend::Error::Tls(_) => {
            Error::Connect { code: "08006", server_code: Some("08006".into()), message: e.to_string().into() }
        }
        other => Error::Connect { code: "08006", server_code: None, message: other.to_string().into() },
    }
}

/// Whether a failed connect says the server refused this login for good (authentication or
/// authorization, class 28; a missing database, 3D000; no privilege, 42501; no credential
/// pgsluice could use): the host is up, the next attempt would be refused the same way, and
/// no other host would do better. Not e.g. `53300 too_many_connections`, which passes.
pub fn login_refused(e: &Error) -> bool {
    matches!(e, Error::Connect { server_code: Some(c), .. } if crate::cluster::refusal_code(c))
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        // Runs once however the guard ends (check_in and discard consume it).
        self.pool.0.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PoolGuard {
    /// The server connection.
    #[inline]
    pub fn server(&mut self) -> &mut ServerConn {
        // Invariant: `conn` is only taken by `check_in`/`discard`, which consume the guard.
        &mut self.conn.as_mut().expect("guard holds a connection until consumed").conn
    }

    /// The pool this connection belongs to.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The pool, the server connection and its exchange at once.
    #[inline]
    pub fn parts(&mut self) -> (&Pool, &mut ServerConn, &mut Exchange) {
        // Invariant: as in `server()`.
        let p = self.conn.as_mut().expect("guard holds a connection until consumed");
        (&self.pool, &mut p.conn, &mut p.exchange)
    }

    /// Returns the connection to the pool. Call only when it is clean: `Z I` received,
    /// nothing pending, no session state the next client must not see.
    pub fn check_in(mut self) {
        if let Some(p) = self.conn.take() {
            self.pool.check_in(p);
        }
    }

    /// Closes the connection (politely, with Terminate) instead of returning it.
    pub fn discard(mut self) {
        if let Some(p) = self.conn.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(async move {
                    let Pooled { conn, _slot, .. } = *p;
                    conn.terminate().await;
                });
            }
        }
    }
}
