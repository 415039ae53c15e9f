//! Topology of one database: its hosts, which one is the primary, which replicas may take
//! reads, discovered and re-discovered by health probes.
//!
//! Each host has one long-lived probe connection, driven by its own task ([`probe`]),
//! which sends every result to the database's coordinator task. The coordinator is the
//! only writer of topology state: it applies the hysteresis and the election rules
//! ([`election`]), keeps the primary's WAL-position history for lag ([`lag`]), and
//! publishes per-host [`HostStatus`] through an `ArcSwap` and the primary through an atomic.
//! Pools, sessions and the admin console only read them, lock-free.
//!
//! Pools never import this module's internals and the cluster never reads pools: a pool
//! holds its [`Host`] and consults its circuit [`Breaker`] and its drain `epoch` (bumped
//! by the coordinator when the host loses the primary role, is fenced or goes down; pooled
//! connections of an older epoch are closed instead of reused).
//!
//! A database without a probe login (single host, no `health_check_user`) is not probed:
//! its one host is taken as the primary, as a plain PgBouncer would.

mod breaker;
mod clock;
mod election;
mod lag;
mod probe;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::Credential;
use crate::config::{BackendAddr, Database, General, RoleHint};

pub use breaker::{Breaker, BreakerSettings, BreakerState};
pub use clock::WriteClock;
pub use election::{Primary, Probe, Rules};
pub use lag::{format_lsn, parse_lsn, Lag};
pub use probe::host_unreachable;

/// Probe and failover settings of a database (from `[general]`).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `health_check_interval`.
    pub interval: Duration,
    /// How often each host is probed ([`General::replica_probe_period`]; the interval for a
    /// database of one host).
    pub period: Duration,
    /// `health_check_timeout`.
    pub timeout: Duration,
    /// Hysteresis and lag bounds.
    pub rules: Rules,
    /// `failover_wait_timeout`.
    pub failover_wait: Duration,
    /// Circuit breaker.
    pub breaker: BreakerSettings,
    /// `tcp_keepalive` for probe sockets.
    pub keepalive: bool,
}

impl ClusterSettings {
    /// Settings from the `[general]` section.
    pub fn from_general(g: &General) -> ClusterSettings {
        ClusterSettings {
            interval: g.health_check_interval.0,
            period: g.replica_probe_period(),
            timeout: g.health_check_timeout.0,
            rules: Rules {
                fail_threshold: g.health_check_fail_threshold,
                interval: g.health_check_interval.0,
                success_threshold: g.health_check_success_threshold,
                max_lag: g.max_replica_lag.0,
                max_lag_bytes: g.max_replica_lag_bytes,
            },
            failover_wait: g.failover_wait_timeout.0,
            breaker: BreakerSettings {
                threshold: g.circuit_breaker_threshold,
                backoff: g.circuit_breaker_backoff.0,
                max_backoff: g.circuit_breaker_max_backoff.0,
            },
            keepalive: g.tcp_keepalive,
        }
    }
}

/// A host's role as last decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes writes.
    Primary,
    /// In recovery (streaming replica).
    Replica,
    /// Not known (never reached, or down).
    Unknown,
}

impl Role {
    /// `primary`, `replica` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Unknown => "unknown",
        }
    }
}

/// One word for a host's condition, most severe first: `fenced`, `breaker-open`, `down`,
/// `unknown` (not probed yet), `lagging` (a replica over a lag bound), `up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Accepts writes but is not the primary: no traffic.
    Fenced,
    /// Circuit breaker open: no connection attempts.
    BreakerOpen,
    /// Failed `health_check_fail_threshold` probes in a row.
    Down,
    /// No probe result yet.
    Unknown,
    /// A replica over `max_replica_lag(_bytes)` (or with replay paused behind the primary).
    Lagging,
    /// Healthy.
    Up,
}

impl Health {
    /// The word shown by the admin console.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Fenced => "fenced",
            Health::BreakerOpen => "breaker-open",
            Health::Down => "down",
            Health::Unknown => "unknown",
            Health::Lagging => "lagging",
            Health::Up => "up",
        }
    }
}

/// What the coordinator published about a host.
#[derive(Debug, Clone)]
pub struct HostStatus {
    /// Decided role.
    pub role: Role,
    /// Up per the hysteresis.
    pub up: bool,
    /// Whether any probe result came in.
    pub seen: bool,
    /// Accepts writes but is not the primary.
    pub fenced: bool,
    /// May take reads (replica within the lag bounds).
    pub eligible: bool,
    /// Latest probe's `pg_is_in_recovery()`.
    pub in_recovery: Option<bool>,
    /// Latest probe's `pg_is_wal_replay_paused()`.
    pub replay_paused: bool,
    /// Lag behind the primary (replicas).
    pub lag: Option<Lag>,
    /// Timeline, if known.
    pub timeline: Option<u32>,
    /// WAL position: current (primary) or replayed (replica).
    pub lsn: Option<u64>,
    /// Wall-clock time of the latest probe result.
    pub last_probe: Option<SystemTime>,
    /// Why the latest probe failed.
    pub last_error: Option<String>,
    /// The SQLSTATE with which the server refused the latest probe's login for good (a
    /// missing database, a wrong password…): reachable, but not usable as configured.
    pub refused: Option<Arc<str>>,
}

impl HostStatus {
    fn initial(probed: bool) -> HostStatus {
        HostStatus {
            // An unprobed host is the primary by assumption.
            role: if probed { Role::Unknown } else { Role::Primary },
            up: !probed,
            seen: false,
            fenced: false,
            eligible: false,
            in_recovery: None,
            replay_paused: false,
            lag: None,
            timeline: None,
            lsn: None,
            last_probe: None,
            last_error: None,
            refused: None,
        }
    }
}

/// A row of `SHOW HOSTS`: a host with its status and breaker.
#[derive(Debug, Clone)]
pub struct HostSnapshot {
    /// Client-visible database.
    pub database: String,
    /// `host:port`.
    pub addr: String,
    /// Published status.
    pub status: HostStatus,
    /// Breaker state.
    pub breaker: BreakerState,
    /// Connection attempts the breaker refused so far.
    pub breaker_refused: u64,
    /// Probe queries sent to it so far.
    pub probes: u64,
    /// Summary word.
    pub health: Health,
    /// Whether probes run for this database.
    pub probed: bool,
}

/// Wake-ups shared by the cluster, its hosts and its tasks.
#[derive(Default)]
struct Signals {
    /// Probe every host now (a server said "read-only", a connection to the primary failed).
    reprobe: Notify,
    /// Counts probe requests, so a probe task that was busy when one came probes again.
    reprobe_requests: AtomicU64,
    /// The primary changed.
    changed: Notify,
    /// Stop the tasks.
    stop: Notify,
    stopped: AtomicBool,
    /// No usable primary: probe faster.
    urgent: AtomicBool,
}

impl Signals {
    fn request_probe(&self) {
        self.reprobe_requests.fetch_add(1, Ordering::AcqRel);
        self.reprobe.notify_waiters();
    }
}

/// One backend host of a database.
pub struct Host {
    /// Where it listens.
    pub addr: BackendAddr,
    /// Position in the database's `hosts`.
    pub index: usize,
    /// Configured role constraint.
    pub hint: Option<RoleHint>,
    /// Share of reads (`weight` in `hosts`).
    pub weight: u32,
    /// Connection-attempt breaker (pools and probe).
    pub breaker: Breaker,
    epoch: AtomicU64,
    status: ArcSwap<HostStatus>,
    signals: Arc<Signals>,
    /// Probe queries sent (the probe task counts them).
    probes: AtomicU64,
}

impl Host {
    /// Drain generation: connections opened under an older one must not be reused.
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Marks every connection opened so far for closing when it is next released (RECONNECT,
    /// reload).
    pub fn drain(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Asks for an immediate probe of every host of the database.
    pub fn request_probe(&self) {
        self.signals.request_probe();
    }

    /// The latest published status.
    pub fn status(&self) -> Arc<HostStatus> {
        self.status.load_full()
    }

    /// Whether it may take a read now as a replica: eligible (see `election::eligible`) and,
    /// when `min_lsn` > 0, known to have replayed that position. Lock-free and without a
    /// reference-count change (called per read request for every host).
    #[inline]
    pub fn serves_read(&self, min_lsn: u64) -> bool {
        let st = self.status.load();
        st.eligible && st.role == Role::Replica && (min_lsn == 0 || st.lsn.is_some_and(|l| l >= min_lsn))
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("addr", &self.addr).field("index", &self.index).finish_non_exhaustive()
    }
}

const NO_PRIMARY: usize = usize::MAX;
const SPLIT_BRAIN: usize = usize::MAX - 1;

fn encode(p: Primary) -> usize {
    match p {
        Primary::None => NO_PRIMARY,
        Primary::SplitBrain => SPLIT_BRAIN,
        Primary::Host(i) => i,
    }
}

fn decode(v: usize) -> Primary {
    match v {
        NO_PRIMARY => Primary::None,
        SPLIT_BRAIN => Primary::SplitBrain,
        i => Primary::Host(i),
    }
}

/// The topology of one database; see the module docs.
pub struct Cluster {
    name: String,
    dbname: String,
    hosts: Box<[Arc<Host>]>,
    primary: AtomicUsize,
    probe_user: Option<String>,
    probe_cred: Mutex<Credential>,
    /// TLS and allowed login methods of the probes (the database's).
    probe_tls: Arc<crate::config::ServerTls>,
    probe_auth: crate::auth::require::ServerAuthMethods,
    settings: ClusterSettings,
    signals: Arc<Signals>,
    started: AtomicBool,
    failovers: AtomicU64,
    created: Instant,
    /// `created`-relative milliseconds of the last throttled probe request (0: none).
    last_throttled_probe: AtomicU64,
    /// The primary's WAL insert position as last probed, and when (`now_ms` of the probe's
    /// start; 0: none since the primary was elected). Read-your-writes: every commit made
    /// before that moment is at or before that position.
    primary_lsn: AtomicU64,
    primary_lsn_at: AtomicU64,
    /// Read-your-writes across connections: the database's last write, and each user's
    /// (held by the routers of that user's clients; an entry whose clients are all gone is
    /// dropped when the map is next added to).
    db_clock: Arc<WriteClock>,
    user_clocks: Mutex<std::collections::HashMap<Box<str>, std::sync::Weak<WriteClock>>>,
}

/// The clocks a client's writes move and its reads may consult: its database's and its
/// user's ([`Cluster::write_clocks`]).
#[derive(Debug, Clone)]
pub struct WriteClocks {
    /// Every client of the database.
    pub database: Arc<WriteClock>,
    /// The clients of one user of the database.
    pub user: Arc<WriteClock>,
    /// The cluster's clock origin ([`Cluster::now_ms`]).
    created: Instant,
}

impl WriteClocks {
    /// [`Cluster::now_ms`] of the clocks' cluster.
    pub fn now_ms(&self) -> u64 {
        self.created.elapsed().as_millis() as u64 + 1
    }
}

impl Cluster {
    /// The topology of `db`, not yet probing (see [`Cluster::start`]).
    pub fn new(db: &Database, settings: ClusterSettings) -> Arc<Cluster> {
        Cluster::build(db, settings, None)
    }

    /// [`Cluster::new`], or [`Cluster::replacing`] `previous`.
    fn build(db: &Database, mut settings: ClusterSettings, previous: Option<&Cluster>) -> Arc<Cluster> {
        if db.hosts.len() < 2 {
            // No replica whose lag needs following.
            settings.period = settings.interval;
        }
        let signals = Arc::new(Signals::default());
        let probed = db.probe.is_some();
        let hosts = db
            .hosts
            .iter()
            .zip(&db.role_hints)
            .enumerate()
            .map(|(index, (addr, hint))| {
                Arc::new(Host {
                    addr: addr.clone(),
                    index,
                    hint: *hint,
                    weight: db.weights.get(index).copied().unwrap_or(1),
                    breaker: Breaker::new(settings.breaker),
                    epoch: AtomicU64::new(0),
                    status: ArcSwap::from_pointee(HostStatus::initial(probed)),
                    signals: signals.clone(),
                    probes: AtomicU64::new(0),
                })
            })
            .collect();
        let primary = if probed { NO_PRIMARY } else { 0 };
        Arc::new(Cluster {
            name: db.name.clone(),
            dbname: db.dbname.clone(),
            hosts,
            primary: AtomicUsize::new(primary),
            probe_user: db.probe.as_ref().map(|p| p.user.clone()),
            probe_cred: Mutex::new(Credential { secret: db.probe.as_ref().and_then(|p| p.secret.clone()), keys: None }),
            probe_tls: db.server_tls.clone(),
            probe_auth: db.server_auth,
            settings,
            signals,
            started: AtomicBool::new(false),
            failovers: AtomicU64::new(0),
            created: previous.map_or_else(Instant::now, |p| p.created),
            last_throttled_probe: AtomicU64::new(0),
            primary_lsn: AtomicU64::new(0),
            primary_lsn_at: AtomicU64::new(0),
            // (A topology rebuilt by a reload keeps its predecessor's clocks and time base,
            // so sessions on either see each other's writes.)
            db_clock: previous.map_or_else(Arc::default, |p| p.db_clock.clone()),
            user_clocks: Mutex::new(previous.map(|p| p.user_clocks.lock().clone()).unwrap_or_default()),
        })
    }

    /// Starts the probe and coordinator tasks (once; nothing for an unprobed database).
    /// Must run inside a Tokio runtime.
    pub fn start(self: &Arc<Self>) {
        if self.probe_user.is_none() || self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..self.hosts.len() {
            tokio::spawn(probe::run(self.clone(), i, tx.clone()));
        }
        tokio::spawn(probe::coordinate(self.clone(), rx));
    }

    /// Stops the probes (their connections are closed).
    pub fn stop(&self) {
        self.signals.stopped.store(true, Ordering::Release);
        self.signals.stop.notify_waiters();
        // Writers waiting for a primary give up now.
        self.signals.changed.notify_waiters();
    }

    /// Client-visible database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hosts, in config order.
    pub fn hosts(&self) -> &[Arc<Host>] {
        &self.hosts
    }

    /// Whether probes decide the roles (else host 0 is the primary).
    pub fn is_probed(&self) -> bool {
        self.probe_user.is_some()
    }

    /// Settings.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// The current primary (one atomic load).
    #[inline]
    pub fn primary(&self) -> Primary {
        decode(self.primary.load(Ordering::Acquire))
    }

    /// Primary changes seen so far (after the first election).
    pub fn failovers(&self) -> u64 {
        self.failovers.load(Ordering::Relaxed)
    }

    /// Asks for an immediate probe of every host.
    pub fn request_probe(&self) {
        self.signals.request_probe();
    }

    /// Milliseconds since the cluster was created, plus one (never 0): the clock of
    /// read-your-writes.
    pub fn now_ms(&self) -> u64 {
        self.created.elapsed().as_millis() as u64 + 1
    }

    /// The primary's WAL position as measured by a probe that started strictly after
    /// `since_ms` (a [`Cluster::now_ms`] value): it covers every commit acknowledged before
    /// `since_ms`. `None` until such a probe has answered.
    pub fn primary_lsn_after(&self, since_ms: u64) -> Option<u64> {
        let at = self.primary_lsn_at.load(Ordering::Acquire);
        if at <= since_ms {
            return None;
        }
        let lsn = self.primary_lsn.load(Ordering::Acquire);
        // (A new primary clears both, time first: a position read across the clearing is 0,
        // or the time has gone back.)
        (lsn != 0 && self.primary_lsn_at.load(Ordering::Acquire) >= at).then_some(lsn)
    }

    /// The write clocks of `user`'s clients of this database.
    pub fn write_clocks(&self, user: &str) -> WriteClocks {
        let mut map = self.user_clocks.lock();
        let user = match map.get(user).and_then(std::sync::Weak::upgrade) {
            Some(c) => c,
            None => {
                if map.len() >= 64 && map.len().is_power_of_two() {
                    map.retain(|_, c| c.strong_count() > 0);
                }
                // Its clients may all have left a moment ago, just after a write: a read
                // needs a probe made after now.
                let c = Arc::new(WriteClock::written_at(self.now_ms()));
                map.insert(user.into(), Arc::downgrade(&c));
                c
            }
        };
        WriteClocks { database: self.db_clock.clone(), user, created: self.created }
    }

    /// The topology of `db` replacing `previous` (a reload changed its hosts or probe
    /// settings): it keeps the write clocks and their time base, so that sessions still
    /// holding the old clocks and those logging in now see each other's writes. Its own
    /// position of the primary starts unknown, so the first reads after a write wait for
    /// its probes.
    pub fn replacing(db: &Database, settings: ClusterSettings, previous: &Cluster) -> Arc<Cluster> {
        Cluster::build(db, settings, Some(previous))
    }

    /// Writes in flight now: of the whole database, or of `user`'s clients of it.
    pub fn writes_in_flight(&self, user: Option<&str>) -> u32 {
        match user {
            None => self.db_clock.in_flight(),
            Some(u) => self.user_clocks.lock().get(u).and_then(std::sync::Weak::upgrade).map_or(0, |c| c.in_flight()),
        }
    }

    /// Coordinator: records the primary's position from a probe that started at `started`.
    fn publish_primary_lsn(&self, lsn: u64, started: Instant) {
        // (LSN first: a reader that sees the new time sees at least this position.)
        self.primary_lsn.fetch_max(lsn, Ordering::AcqRel);
        let at = started.saturating_duration_since(self.created).as_millis() as u64 + 1;
        self.primary_lsn_at.fetch_max(at, Ordering::AcqRel);
    }

    /// Coordinator: forgets the old primary's position (a new primary was elected).
    fn clear_primary_lsn(&self) {
        self.primary_lsn_at.store(0, Ordering::Release);
        self.primary_lsn.store(0, Ordering::Release);
    }

    /// Asks for an immediate probe unless one was asked this way within the last
    /// `health_check_interval`; returns whether it asked. For triggers clients can cause at
    /// will (a `25006` from the primary).
    pub fn request_probe_throttled(&self) -> bool {
        let now = self.created.elapsed().as_millis() as u64;
        let gap = self.settings.interval.as_millis() as u64;
        let last = self.last_throttled_probe.load(Ordering::Relaxed);
        if now.saturating_sub(last) < gap && last != 0 {
            return false;
        }
        if self.last_throttled_probe.compare_exchange(last, now.max(1), Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return false;
        }
        self.request_probe();
        true
    }

    /// Waits until the primary differs from `from` or `deadline` passes; returns the
    /// primary then.
    pub async fn wait_change(&self, from: Primary, deadline: Instant) -> Primary {
        loop {
            let changed = self.signals.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = self.primary();
            if now != from || self.signals.stopped.load(Ordering::Acquire) {
                return now;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.primary();
            }
        }
    }

    /// When every host refused the probes' login for good (a missing database, a wrong
    /// password: `refusal_code`), the SQLSTATE and the first host's error: no primary will
    /// appear by waiting, the configuration is wrong.
    pub fn refused(&self) -> Option<(Arc<str>, String)> {
        let mut first = None;
        for h in self.hosts() {
            let st = h.status();
            let code = st.refused.clone()?;
            first.get_or_insert_with(|| (code, format!("{}: {}", h.addr, st.last_error.as_deref().unwrap_or(""))));
        }
        first
    }

    /// Lets the probes use SCRAM keys recovered from a client login of `user`, when that is
    /// the probe user and no password is configured for it.
    pub fn learn_probe_keys(&self, user: &str, keys: &crate::auth::scram::ClientKeys) {
        if self.probe_user.as_deref() != Some(user) {
            return;
        }
        let mut c = self.probe_cred.lock();
        if c.keys.is_none() {
            c.keys = Some(keys.clone());
            drop(c);
            self.request_probe();
        }
    }

    /// A row per host for the admin console and metrics.
    pub fn snapshot(&self) -> Vec<HostSnapshot> {
        self.hosts
            .iter()
            .map(|h| {
                let status = h.status();
                let breaker = h.breaker.state();
                let health = if status.fenced {
                    Health::Fenced
                } else if matches!(breaker, BreakerState::Open { .. }) {
                    Health::BreakerOpen
                } else if !status.seen && self.is_probed() {
                    Health::Unknown
                } else if !status.up {
                    Health::Down
                } else if status.role == Role::Replica && !status.eligible {
                    Health::Lagging
                } else {
                    Health::Up
                };
                HostSnapshot {
                    database: self.name.clone(),
                    addr: h.addr.to_string(),
                    status: (*status).clone(),
                    breaker,
                    breaker_refused: h.breaker.refused(),
                    probes: h.probes.load(Ordering::Relaxed),
                    health,
                    probed: self.is_probed(),
                }
            })
            .collect()
    }
}

/// Whether a server's login error is a refusal for good (authentication or authorization,
/// class 28; a missing database, 3D000; no privilege, 42501): the host is up, but not usable
/// with this login, and waiting will not change that. Not e.g. `53300 too_many_connections`
/// or `57P03 cannot_connect_now`, which pass.
pub fn refusal_code(code: &str) -> bool {
    // (08006 is never sent by a server at login: pgsluice uses it for TLS that cannot be set
    // up as configured, which is as final.)
    code.starts_with("28") || code == "3D000" || code == "42501" || code == "08006"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primary_encoding_round_trips() {
        for p in [Primary::None, Primary::SplitBrain, Primary::Host(0), Primary::Host(7)] {
            assert_eq!(decode(encode(p)), p);
        }
    }
}
