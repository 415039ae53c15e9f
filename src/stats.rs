//! Traffic statistics and the live registries the admin console and `/metrics` read.
//!
//! - [`PoolStats`]: PgBouncer's counters (`SHOW STATS`) per pool (database, user, host), as
//!   relaxed atomics. The relay never touches them per message: it adds into the server
//!   connection's [`Tally`] (plain integers) and folds the tally into the atomics once per
//!   transaction (at `ReadyForQuery` with status `I`) and when the server is released.
//! - [`ClientInfo`]: one per logged-in client, in the [`ClientRegistry`]; the session stores
//!   its state (idle / waiting / active) and timestamps into its own atomics, so nothing is
//!   shared between clients on the hot path. `SHOW CLIENTS`, `SHOW POOLS` (`cl_*`, `maxwait`)
//!   and KILL walk the registry.
//! - [`ServerMeta`]: the identity of one server connection (pid, addresses, times, the client
//!   it is linked to), registered in its pool while the connection is open.
//! - [`Averages`]: per-database rates over the last `stats_period` (`SHOW STATS_AVERAGES`).
//!
//! Times are microseconds since the process started ([`Clock`]), so they fit in an atomic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::time::Instant;

/// The process clock: a monotonic base and the wall time it corresponds to.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
    wall: SystemTime,
}

impl Default for Clock {
    fn default() -> Self {
        Clock { base: Instant::now(), wall: SystemTime::now() }
    }
}

impl Clock {
    /// Microseconds since the process started (never 0, so 0 can mean "unset").
    #[inline]
    pub fn now_us(&self) -> u64 {
        self.us(Instant::now())
    }

    /// `at` as microseconds since the process started (at least 1).
    #[inline]
    pub fn us(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.base).as_micros() as u64).max(1)
    }

    /// The wall time of a process timestamp.
    pub fn wall(&self, us: u64) -> SystemTime {
        self.wall + Duration::from_micros(us)
    }

    /// When the process started (wall time).
    pub fn started(&self) -> SystemTime {
        self.wall
    }
}

/// PgBouncer's per-pool counters (`SHOW STATS` totals). Times are in microseconds.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Transactions completed (`total_xact_count`).
    pub xact_count: AtomicU64,
    /// Queries (requests answered with ReadyForQuery) completed (`total_query_count`).
    pub query_count: AtomicU64,
    /// Bytes received from clients (`total_received`).
    pub received: AtomicU64,
    /// Bytes sent to clients (`total_sent`).
    pub sent: AtomicU64,
    /// Time in transactions (`total_xact_time`).
    pub xact_time: AtomicU64,
    /// Time in queries (`total_query_time`).
    pub query_time: AtomicU64,
    /// Time clients waited for a server (`total_wait_time`).
    pub wait_time: AtomicU64,
    /// Times a server was assigned to a client (`total_server_assignment_count`).
    pub assignments: AtomicU64,
    /// Parse messages from clients (`total_client_parse_count`).
    pub client_parses: AtomicU64,
    /// Parse messages sent to servers (`total_server_parse_count`).
    pub server_parses: AtomicU64,
    /// Bind messages from clients (`total_bind_count`).
    pub binds: AtomicU64,
    /// How long clients waited for a server of this pool.
    pub wait: Histogram,
    /// Transaction durations (first request to the ReadyForQuery that ends it).
    pub xact: Histogram,
    /// Query durations (request to its ReadyForQuery).
    pub query: Histogram,
}

/// Upper bounds (µs) of the latency histogram buckets: 100 µs to 30 s (plus `+Inf`).
pub const LATENCY_BUCKETS_US: [u64; 17] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000,
];

/// A lock-free latency histogram over [`LATENCY_BUCKETS_US`]: one relaxed counter per bucket
/// and one for the sum, so recording is two atomic adds and a scrape never blocks it.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A copy of a [`Histogram`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Cumulative counts per upper bound of [`LATENCY_BUCKETS_US`], then the total (`+Inf`).
    pub cumulative: Vec<u64>,
    /// Sum of all observations, µs.
    pub sum_us: u64,
}

impl HistogramSnapshot {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The value below which fraction `q` of observations fall, as the upper bound of the
    /// bucket holding it (µs; `None` when empty, `u64::MAX` in the `+Inf` bucket).
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let i = self.cumulative.iter().position(|&c| c >= rank)?;
        Some(LATENCY_BUCKETS_US.get(i).copied().unwrap_or(u64::MAX))
    }

    /// Adds another snapshot (summing pools).
    pub fn merge(&mut self, o: &HistogramSnapshot) {
        if self.cumulative.is_empty() {
            self.cumulative = vec![0; o.cumulative.len()];
        }
        for (a, b) in self.cumulative.iter_mut().zip(&o.cumulative) {
            *a += b;
        }
        self.sum_us += o.sum_us;
    }
}

impl Histogram {
    /// Records one observation of `us` microseconds.
    #[inline]
    pub fn observe(&self, us: u64) {
        let i = LATENCY_BUCKETS_US.partition_point(|&b| b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// A copy, cumulative as Prometheus wants it.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Ordering::Relaxed);
                acc
            })
            .collect();
        HistogramSnapshot { cumulative, sum_us: self.sum_us.load(Ordering::Relaxed) }
    }
}

/// A plain copy of [`PoolStats`] (sums and differences for the console).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// See [`PoolStats`].
    pub xact_count: u64,
    /// See [`PoolStats`].
    pub query_count: u64,
    /// See [`PoolStats`].
    pub received: u64,
    /// See [`PoolStats`].
    pub sent: u64,
    /// See [`PoolStats`].
    pub xact_time: u64,
    /// See [`PoolStats`].
    pub query_time: u64,
    /// See [`PoolStats`].
    pub wait_time: u64,
    /// See [`PoolStats`].
    pub assignments: u64,
    /// See [`PoolStats`].
    pub client_parses: u64,
    /// See [`PoolStats`].
    pub server_parses: u64,
    /// See [`PoolStats`].
    pub binds: u64,
}

impl PoolStats {
    /// Folds a connection's tally in and clears it.
    pub fn add(&self, t: &mut Tally) {
        let r = Ordering::Relaxed;
        if t.queries > 0 {
            self.query_count.fetch_add(t.queries as u64, r);
            self.query_time.fetch_add(t.query_us, r);
        }
        if t.xacts > 0 {
            self.xact_count.fetch_add(t.xacts as u64, r);
            self.xact_time.fetch_add(t.xact_us, r);
        }
        if t.received > 0 {
            self.received.fetch_add(t.received, r);
        }
        if t.sent > 0 {
            self.sent.fetch_add(t.sent, r);
        }
        if t.client_parses | t.server_parses | t.binds > 0 {
            self.client_parses.fetch_add(t.client_parses as u64, r);
            self.server_parses.fetch_add(t.server_parses as u64, r);
            self.binds.fetch_add(t.binds as u64, r);
        }
        let (q, x) = (t.query_start, t.xact_start);
        *t = Tally { query_start: q, xact_start: x, ..Tally::default() };
    }

    /// Records a server assignment after `waited`.
    pub fn assigned(&self, waited: Duration) {
        let us = waited.as_micros() as u64;
        self.assignments.fetch_add(1, Ordering::Relaxed);
        self.wait_time.fetch_add(us, Ordering::Relaxed);
        self.wait.observe(us);
    }

    /// A copy of the counters.
    pub fn totals(&self) -> Totals {
        let r = Ordering::Relaxed;
        Totals {
            xact_count: self.xact_count.load(r),
            query_count: self.query_count.load(r),
            received: self.received.load(r),
            sent: self.sent.load(r),
            xact_time: self.xact_time.load(r),
            query_time: self.query_time.load(r),
            wait_time: self.wait_time.load(r),
            assignments: self.assignments.load(r),
            client_parses: self.client_parses.load(r),
            server_parses: self.server_parses.load(r),
            binds: self.binds.load(r),
        }
    }
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, o: Totals) {
        self.xact_count += o.xact_count;
        self.query_count += o.query_count;
        self.received += o.received;
        self.sent += o.sent;
        self.xact_time += o.xact_time;
        self.query_time += o.query_time;
        self.wait_time += o.wait_time;
        self.assignments += o.assignments;
        self.client_parses += o.client_parses;
        self.server_parses += o.server_parses;
        self.binds += o.binds;
    }
}

impl Totals {
    /// `self - earlier`, per counter (0 where a counter went backwards, e.g. a pool was
    /// dropped on reload).
    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            xact_count: self.xact_count.saturating_sub(earlier.xact_count),
            query_count: self.query_count.saturating_sub(earlier.query_count),
            received: self.received.saturating_sub(earlier.received),
            sent: self.sent.saturating_sub(earlier.sent),
            xact_time: self.xact_time.saturating_sub(earlier.xact_time),
            query_time: self.query_time.saturating_sub(earlier.query_time),
            wait_time: self.wait_time.saturating_sub(earlier.wait_time),
            assignments: self.assignments.saturating_sub(earlier.assignments),
            client_parses: self.client_parses.saturating_sub(earlier.client_parses),
            server_parses: self.server_parses.saturating_sub(earlier.server_parses),
            binds: self.binds.saturating_sub(earlier.binds),
        }
    }
}

/// Counts of one server connection since its last fold into [`PoolStats`]. Plain fields:
/// only the session holding the connection writes them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Queries answered.
    pub queries: u32,
    /// Transactions ended.
    pub xacts: u32,
    /// Their time.
    pub query_us: u64,
    /// Their time.
    pub xact_us: u64,
    /// Bytes relayed from the client.
    pub received: u64,
    /// Bytes relayed to the client.
    pub sent: u64,
    /// Parse messages from the client.
    pub client_parses: u32,
    /// Parse messages sent to the server.
    pub server_parses: u32,
    /// Bind messages from the client.
    pub binds: u32,
    /// When the oldest unanswered query was sent.
    pub query_start: Option<Instant>,
    /// When the current transaction's first query was sent.
    pub xact_start: Option<Instant>,
}

impl Tally {
    /// A request (Query, Sync, FunctionCall) was sent.
    #[inline]
    pub fn request_sent(&mut self) {
        if self.query_start.is_none() {
            let now = Instant::now();
            self.query_start = Some(now);
            if self.xact_start.is_none() {
                self.xact_start = Some(now);
            }
        }
    }

    /// A ReadyForQuery with `status` arrived; `more` requests are still unanswered. Records
    /// the query (and the transaction it ended) in `hist`'s histograms. Returns whether a
    /// transaction ended (time to fold the tally).
    #[inline]
    pub fn ready(&mut self, status: u8, more: bool, hist: Option<&PoolStats>) -> bool {
        let Some(start) = self.query_start else { return false };
        let now = Instant::now();
        let q = now.saturating_duration_since(start).as_micros() as u64;
        self.queries += 1;
        self.query_us += q;
        self.query_start = more.then_some(now);
        if let Some(h) = hist {
            h.query.observe(q);
        }
        if status == crate::protocol::status::IDLE {
            if let Some(x) = self.xact_start.take() {
                let x = now.saturating_duration_since(x).as_micros() as u64;
                self.xacts += 1;
                self.xact_us += x;
                if let Some(h) = hist {
                    h.xact.observe(x);
                }
            }
            if more {
                self.xact_start = Some(now);
            }
            return true;
        }
        false
    }

    /// Forgets a request in flight (the server was abandoned or reset for another client).
    pub fn clear_timers(&mut self) {
        self.query_start = None;
        self.xact_start = None;
    }
}

/// What a logged-in client is doing (`SHOW CLIENTS` state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Logged in, holding no server (PgBouncer shows it as `active`).
    Idle = 0,
    /// Waiting for a server.
    Waiting = 1,
    /// Linked to a server.
    Active = 2,
}

/// One logged-in client, as the admin console sees it.
#[derive(Debug)]
pub struct ClientInfo {
    /// Process-unique id (also the log correlation id).
    pub id: u64,
    /// Client-visible database.
    pub database: Arc<str>,
    /// Client user name.
    pub user: Arc<str>,
    /// The backend user of its pool (the database's fixed user, or `user`).
    pub pool_user: Arc<str>,
    /// Client address.
    pub addr: SocketAddr,
    /// pgsluice's address of the connection.
    pub local: Option<SocketAddr>,
    /// TLS in use.
    pub tls: bool,
    /// `application_name` at login.
    pub application_name: Box<str>,
    /// Login time, process µs.
    pub connect_us: u64,
    /// The admin console (not counted in pools).
    pub admin: bool,
    state: AtomicU8,
    /// Start of the last request (or of the wait for a server), process µs.
    request_us: AtomicU64,
    /// The linked server's [`ServerMeta::id`] (0: none).
    link: AtomicU64,
    /// The linked server's backend pid.
    remote_pid: AtomicU64,
    /// Named prepared statements the client has (updated when it releases a server).
    prepared: AtomicU32,
    /// Pinned to its server by session state it set (`session_state = pin`).
    pinned: AtomicBool,
    killed: AtomicBool,
    /// Where its requests go ([`ROUTE_NAMES`] index; 0: not a pooled client).
    route: AtomicU8,
    /// The session task's waker, woken by [`ClientInfo::kill`] and [`ClientInfo::wake`]
    /// (registered, not taken: a session needs no new future to hear of a stop).
    waker: Mutex<Option<std::task::Waker>>,
}

/// The routes `SHOW CLIENTS` names (see [`ClientInfo::set_route`]).
pub const ROUTE_NAMES: [&str; 4] = ["", "auto", "primary", "replica"];

impl ClientInfo {
    /// Records where the client's requests go: one of [`ROUTE_NAMES`].
    pub fn set_route(&self, name: &str) {
        let i = ROUTE_NAMES.iter().position(|n| *n == name).unwrap_or(0);
        self.route.store(i as u8, Ordering::Relaxed);
    }

    /// Where the client's requests go (`SHOW CLIENTS` `route`; "" for the console).
    pub fn route(&self) -> &'static str {
        ROUTE_NAMES.get(usize::from(self.route.load(Ordering::Relaxed))).copied().unwrap_or("")
    }

    /// A client that just logged in (idle).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        database: Arc<str>,
        user: Arc<str>,
        pool_user: Arc<str>,
        addr: SocketAddr,
        local: Option<SocketAddr>,
        tls: bool,
        application_name: &str,
        now_us: u64,
        admin: bool,
    ) -> ClientInfo {
        ClientInfo {
            id,
            database,
            user,
            pool_user,
            addr,
            local,
            tls,
            application_name: application_name.into(),
            connect_us: now_us,
            admin,
            state: AtomicU8::new(ClientState::Idle as u8),
            request_us: AtomicU64::new(now_us),
            link: AtomicU64::new(0),
            remote_pid: AtomicU64::new(0),
            prepared: AtomicU32::new(0),
            pinned: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            route: AtomicU8::new(0),
            waker: Mutex::new(None),
        }
    }

    /// Current state.
    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Waiting,
            2 => ClientState::Active,
            _ => ClientState::Idle,
        }
    }

    /// Start of the last request or wait, process µs.
    pub fn request_us(&self) -> u64 {
        self.request_us.load(Ordering::Relaxed)
    }

    /// The linked server id and pid (0, 0 when none).
    pub fn link(&self) -> (u64, u32) {
        (self.link.load(Ordering::Relaxed), self.remote_pid.load(Ordering::Relaxed) as u32)
    }

    /// The client starts waiting for a server at `now_us`.
    #[inline]
    pub fn waiting(&self, now_us: u64) {
        self.request_us.store(now_us, Ordering::Relaxed);
        self.state.store(ClientState::Waiting as u8, Ordering::Relaxed);
    }

    /// The client got server `server` (id, pid).
    #[inline]
    pub fn linked(&self, server: &ServerMeta) {
        self.link.store(server.id, Ordering::Relaxed);
        self.remote_pid.store(server.pid as u64, Ordering::Relaxed);
        self.state.store(ClientState::Active as u8, Ordering::Relaxed);
    }

    /// The client no longer holds a server.
    #[inline]
    pub fn unlinked(&self) {
        self.link.store(0, Ordering::Relaxed);
        self.remote_pid.store(0, Ordering::Relaxed);
        self.state.store(ClientState::Idle as u8, Ordering::Relaxed);
    }

    /// Records whether the client is pinned to its server.
    pub fn set_pinned(&self, v: bool) {
        self.pinned.store(v, Ordering::Relaxed);
    }

    /// Whether the client is pinned to its server (`SHOW POOLS` `cl_pinned`).
    pub fn is_pinned(&self) -> bool {
        self.pinned.load(Ordering::Relaxed)
    }

    /// Records the client's number of named prepared statements.
    #[inline]
    pub fn set_prepared_statements(&self, n: usize) {
        self.prepared.store(n as u32, Ordering::Relaxed);
    }

    /// The client's named prepared statements (as of its last release).
    pub fn prepared_statements(&self) -> u32 {
        self.prepared.load(Ordering::Relaxed)
    }

    /// Kills the client (`KILL`, `KILL_CLIENT`): its session ends with 57P01.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        self.wake();
    }

    /// Whether [`ClientInfo::kill`] was called.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Wakes the client's session so it looks at its stop conditions (a kill, the process
    /// shutting down).
    pub fn wake(&self) {
        if let Some(w) = self.waker.lock().as_ref() {
            w.wake_by_ref();
        }
    }

    /// Registers the waker of the task serving this client (kept until replaced). Call on
    /// every poll that checks the stop conditions, before checking them.
    #[inline]
    pub fn register_waker(&self, w: &std::task::Waker) {
        let mut slot = self.waker.lock();
        if !slot.as_ref().is_some_and(|old| old.will_wake(w)) {
            *slot = Some(w.clone());
        }
    }

    /// Resolves once the client is killed.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn killed(&self) {
        std::future::poll_fn(|cx| {
            self.register_waker(cx.waker());
            if self.is_killed() {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }
}

/// Every logged-in client, by id.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    clients: Mutex<HashMap<u64, Arc<ClientInfo>>>,
}

/// Removes a client from the registry when its session ends.
pub struct Registration {
    registry: Arc<ClientRegistry>,
    /// The registered client.
    pub info: Arc<ClientInfo>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.clients.lock().remove(&self.info.id);
    }
}

impl ClientRegistry {
    /// Registers a client until the returned guard drops.
    pub fn register(self: &Arc<Self>, info: ClientInfo) -> Registration {
        let info = Arc::new(info);
        self.clients.lock().insert(info.id, info.clone());
        Registration { registry: self.clone(), info }
    }

    /// A snapshot of every client, ordered by id.
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self.clients.lock().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Wakes every client's session (the process is stopping: each looks at the shutdown
    /// signal at once, without a waiter per session on the signal's channel).
    pub fn wake_all(&self) {
        for c in self.clients.lock().values() {
            c.wake();
        }
    }

    /// Clients connected right now.
    pub fn len(&self) -> usize {
        self.clients.lock().len()
    }

    /// Whether no client is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Cancel target of a server connection: where and with which key to send a CancelRequest.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Where the server listens.
    pub addr: CancelAddr,
    /// Server process id.
    pub pid: i32,
    /// Server secret key.
    pub secret: Arc<[u8]>,
}

/// Where a CancelRequest for a server goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelAddr {
    /// TCP.
    Tcp(SocketAddr),
    /// The server's Unix socket (`<dir>/.s.PGSQL.<port>`).
    Unix(Arc<String>),
}

impl CancelAddr {
    /// As a socket address ([`crate::net::UNIX_PEER`] for a Unix socket).
    pub fn socket_addr(&self) -> SocketAddr {
        match self {
            CancelAddr::Tcp(a) => *a,
            CancelAddr::Unix(_) => crate::net::UNIX_PEER,
        }
    }
}

impl std::fmt::Display for CancelAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CancelAddr::Tcp(a) => write!(f, "{a}"),
            CancelAddr::Unix(p) => f.write_str(p),
        }
    }
}

/// The identity of one open server connection, for `SHOW SERVERS`.
#[derive(Debug)]
pub struct ServerMeta {
    /// Process-unique id (`ptr` column).
    pub id: u64,
    /// Backend process id.
    pub pid: u32,
    /// Server address.
    pub addr: SocketAddr,
    /// pgsluice's end of the connection.
    pub local: Option<SocketAddr>,
    /// When it was opened, process µs.
    pub connect_us: u64,
    /// TLS in use.
    pub tls: bool,
    /// Its host's drain epoch when it was opened (an older one: it closes when released).
    pub epoch: u64,
    /// The client it is linked to (0: none).
    link: AtomicU64,
    /// When it was last assigned to a client, process µs.
    request_us: AtomicU64,
    /// Prepared statements on it (as of its last check-in).
    prepared: AtomicU32,
    /// Where a client's CancelRequest for it goes.
    pub cancel: Option<CancelTarget>,
}

impl ServerMeta {
    /// A new connection's identity.
    pub fn new(id: u64, pid: u32, addr: SocketAddr, local: Option<SocketAddr>, connect_us: u64) -> ServerMeta {
        ServerMeta {
            id,
            pid,
            addr,
            local,
            connect_us,
            tls: false,
            epoch: 0,
            link: AtomicU64::new(0),
            request_us: AtomicU64::new(connect_us),
            prepared: AtomicU32::new(0),
            cancel: None,
        }
    }

    /// Linked to client `client` at `now_us`.
    #[inline]
    pub fn link(&self, client: u64, now_us: u64) {
        self.link.store(client, Ordering::Relaxed);
        self.request_us.store(now_us, Ordering::Relaxed);
    }

    /// Back from its client with `prepared` statements on it.
    #[inline]
    pub fn unlink(&self, prepared: usize) {
        self.link.store(0, Ordering::Relaxed);
        self.prepared.store(prepared as u32, Ordering::Relaxed);
    }

    /// Prepared statements on it (as of its last check-in).
    pub fn prepared_statements(&self) -> u32 {
        self.prepared.load(Ordering::Relaxed)
    }

    /// The linked client id (0: none).
    pub fn linked_client(&self) -> u64 {
        self.link.load(Ordering::Relaxed)
    }

    /// When it was last assigned, process µs.
    pub fn request_us(&self) -> u64 {
        self.request_us.load(Ordering::Relaxed)
    }
}

/// Per-database rates and means over the last `stats_period` (PgBouncer's `avg_*` values):
/// the fields of [`Totals`], with counts and bytes per second and times per transaction,
/// query or assignment ([`Totals::averages_over`]).
pub type Averages = Totals;

impl Totals {
    /// The averages of this delta, accumulated over `period`.
    pub fn averages_over(&self, period: Duration) -> Averages {
        let secs = period.as_secs_f64().max(0.001);
        let rate = |v: u64| (v as f64 / secs).round() as u64;
        let per = |t: u64, n: u64| t.checked_div(n).unwrap_or(0);
        Totals {
            xact_count: rate(self.xact_count),
            query_count: rate(self.query_count),
            received: rate(self.received),
            sent: rate(self.sent),
            xact_time: per(self.xact_time, self.xact_count),
            query_time: per(self.query_time, self.query_count),
            wait_time: per(self.wait_time, self.assignments),
            assignments: rate(self.assignments),
            client_parses: rate(self.client_parses),
            server_parses: rate(self.server_parses),
            binds: rate(self.binds),
        }
    }
}

/// Routing decisions of one (database, user), for the admin console and metrics.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Reads sent to a replica.
    pub reads_replica: std::sync::atomic::AtomicU64,
    /// Reads sent to the primary (as a candidate or as a fallback).
    pub reads_primary: std::sync::atomic::AtomicU64,
    /// Requests that needed the primary.
    pub writes: std::sync::atomic::AtomicU64,
    /// Reads that went to the primary because no replica was eligible.
    pub fallbacks: std::sync::atomic::AtomicU64,
    /// Reads that waited for a replica to replay the client's last write.
    pub ryw_waits: std::sync::atomic::AtomicU64,
    /// Fallbacks because no eligible replica was known to have replayed the writes the read
    /// must see (read-your-writes; a subset of `fallbacks`).
    pub ryw_fallbacks: std::sync::atomic::AtomicU64,
    /// Reads retried on another host after a connection failure.
    pub retries: std::sync::atomic::AtomicU64,
    /// Reads sent again to another host after their server died before answering.
    pub read_resends: std::sync::atomic::AtomicU64,
}

/// A copy of [`RouteStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteCounts {
    /// See [`RouteStats`].
    pub reads_replica: u64,
    /// See [`RouteStats`].
    pub reads_primary: u64,
    /// See [`RouteStats`].
    pub writes: u64,
    /// See [`RouteStats`].
    pub fallbacks: u64,
    /// See [`RouteStats`].
    pub ryw_waits: u64,
    /// See [`RouteStats`].
    pub ryw_fallbacks: u64,
    /// See [`RouteStats`].
    pub retries: u64,
    /// See [`RouteStats`].
    pub read_resends: u64,
}

impl RouteStats {
    /// Adds one to `counter`.
    #[inline]
    pub fn bump(counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The current counts.
    pub fn counts(&self) -> RouteCounts {
        let r = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        RouteCounts {
            reads_replica: r(&self.reads_replica),
            reads_primary: r(&self.reads_primary),
            writes: r(&self.writes),
            fallbacks: r(&self.fallbacks),
            ryw_waits: r(&self.ryw_waits),
            ryw_fallbacks: r(&self.ryw_fallbacks),
            retries: r(&self.retries),
            read_resends: r(&self.read_resends),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::status;

    #[test]
    fn tally_counts_queries_and_transactions() {
        let mut t = Tally::default();
        // Two autocommit queries pipelined: one transaction each.
        t.request_sent();
        t.request_sent();
        assert!(t.ready(status::IDLE, true, None));
        assert!(t.ready(status::IDLE, false, None));
        assert_eq!((t.queries, t.xacts), (2, 2));
        // BEGIN; SELECT; COMMIT: three queries, one transaction.
        t.request_sent();
        assert!(!t.ready(status::IN_TRANSACTION, false, None));
        t.request_sent();
        assert!(!t.ready(status::IN_TRANSACTION, false, None));
        t.request_sent();
        assert!(t.ready(status::IDLE, false, None));
        assert_eq!((t.queries, t.xacts), (5, 3));
        // A ReadyForQuery with no request timed (e.g. after the tally was cleared) counts nothing.
        assert!(!t.ready(status::IDLE, false, None));
        let stats = PoolStats::default();
        t.received = 10;
        t.sent = 20;
        stats.add(&mut t);
        let tot = stats.totals();
        assert_eq!((tot.query_count, tot.xact_count, tot.received, tot.sent), (5, 3, 10, 20));
        assert_eq!(t.queries, 0);
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_quantiles() {
        let h = Histogram::default();
        for us in [50, 100, 101, 2_000, 40_000_000] {
            h.observe(us);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 5);
        assert_eq!(s.cumulative[0], 2, "<= 100 us");
        assert_eq!(s.cumulative[1], 3, "<= 250 us");
        assert_eq!(s.cumulative[LATENCY_BUCKETS_US.len() - 1], 4, "<= 30 s");
        assert_eq!(s.sum_us, 40_002_251);
        assert_eq!(s.quantile(0.5), Some(250));
        assert_eq!(s.quantile(0.99), Some(u64::MAX));
        assert_eq!(HistogramSnapshot::default().quantile(0.5), None);
        let mut m = HistogramSnapshot::default();
        m.merge(&s);
        m.merge(&s);
        assert_eq!(m.count(), 10);
    }

    #[test]
    fn averages_are_rates_and_means() {
        let d = Totals { xact_count: 120, query_count: 240, xact_time: 1200, query_time: 480, ..Totals::default() };
        let a = d.averages_over(Duration::from_secs(60));
        assert_eq!((a.xact_count, a.query_count, a.xact_time, a.query_time), (2, 4, 10, 2));
        assert_eq!(Totals::default().averages_over(Duration::from_secs(60)), Averages::default());
        let later = Totals { xact_count: 5, ..Totals::default() };
        assert_eq!(Totals::default().since(&later).xact_count, 0);
    }

    #[tokio::test]
    async fn kill_wakes_a_waiting_session() {
        let info = Arc::new(ClientInfo::new(
            1,
            "db".into(),
            "u".into(),
            "u".into(),
            "127.0.0.1:1".parse().unwrap(),
            None,
            false,
            "",
            1,
            false,
        ));
        let i2 = info.clone();
        let t = tokio::spawn(async move { i2.killed().await });
        tokio::task::yield_now().await;
        info.kill();
        tokio::time::timeout(Duration::from_secs(5), t).await.unwrap().unwrap();
        // A later wait returns at once.
        info.killed().await;
    }
}
