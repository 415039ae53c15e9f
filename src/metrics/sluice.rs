//! pgsluice's own families (`pgsluice_*`): what PgBouncer has no column for.
//!
//! - Hosts (`SHOW HOSTS`), labelled `database` and `host` (`host:port`, unique within a
//!   database by config validation): `pgsluice_host_info` carries the role and health words
//!   as labels (value 1); the numeric families `pgsluice_host_up`, `_primary`, `_lag_bytes`,
//!   `_lag_seconds`, `_timeline`, `_breaker_open` can be alerted on directly. Lag and
//!   timeline have no series while unknown. `pgsluice_host_breaker_state` is a state set: one
//!   series per breaker state, 1 for the current one.
//! - Routing (`SHOW ROUTES`) per (database, user) pool set, and failovers per database.
//! - Latency histograms per (database, user), summed over the set's hosts by
//!   [`show::latency_of`] (the data of `SHOW LATENCY`): `pgsluice_transaction_duration_seconds`
//!   and `pgsluice_query_duration_seconds` (their counts and sums are `SHOW STATS_TOTALS`'
//!   `xact_count`/`xact_time` and `query_count`/`query_time` of the set), and
//!   `pgsluice_wait_duration_seconds`, the check-out wait (its count is the number of server
//!   assignments, its sum `wait_time`).
//! - `pgsluice_pinned_clients`: `SHOW POOLS`' `cl_pinned`, one series per row.
//! - `pgsluice_listen_hub_*`, `pgsluice_listen_notifications_total`: one series per LISTEN hub.
//! - Logins: authentication failures and connections still logging in.

use std::sync::atomic::Ordering;

use super::{Families, Family, Spec};
use crate::admin::show::{self, PoolRow};
use crate::cluster::{BreakerState, Health, Primary};
use crate::shared::Shared;

const HOST: &[&str] = &["database", "host"];

const HOST_INFO: Spec = Spec::gauge(
    "pgsluice_host_info",
    "A backend host with its decided role (primary, replica, unknown) and health (up, lagging, unknown, down, \
     breaker-open, fenced); always 1.",
    &["database", "host", "role", "health"],
);
const HOST_UP: Spec = Spec::gauge("pgsluice_host_up", "1 if the host is healthy (health up or lagging), else 0.", HOST);
const HOST_PRIMARY: Spec =
    Spec::gauge("pgsluice_host_primary", "1 if the host is the database's current primary, else 0.", HOST);
const HOST_LAG_BYTES: Spec = Spec::gauge(
    "pgsluice_host_lag_bytes",
    "Replication lag behind the primary, bytes of WAL (replicas with a known lag).",
    HOST,
);
const HOST_LAG_SECONDS: Spec = Spec::gauge(
    "pgsluice_host_lag_seconds",
    "Replication lag behind the primary, seconds (replicas with a known lag).",
    HOST,
);
const HOST_TIMELINE: Spec = Spec::gauge("pgsluice_host_timeline", "The host's timeline ID, when known.", HOST);
const HOST_BREAKER_OPEN: Spec = Spec::gauge(
    "pgsluice_host_breaker_open",
    "1 if the host's circuit breaker is open (no connection attempts), else 0.",
    HOST,
);
const HOST_BREAKER_STATE: Spec = Spec::gauge(
    "pgsluice_host_breaker_state",
    "The host's circuit breaker state: 1 for the current state (closed, open, half-open), 0 for the others.",
    &["database", "host", "state"],
);
const HOST_BREAKER_REFUSED: Spec = Spec::counter(
    "pgsluice_host_breaker_refused_total",
    "Connection attempts to the host refused by its open circuit breaker.",
    HOST,
);
const HOST_PROBES: Spec = Spec::counter(
    "pgsluice_host_probes_total",
    "Health-probe queries sent to the host (scheduled, and on request: read-your-writes waits and fallbacks, \
     failed connections).",
    HOST,
);
const FAILOVERS: Spec =
    Spec::counter("pgsluice_failovers_total", "Primary changes seen after the first election.", &["database"]);

const SET: &[&str] = &["database", "user"];

const ROUTE_DECISIONS: Spec = Spec::counter(
    "pgsluice_route_decisions_total",
    "Routing decisions: reads_replica, reads_primary (as a candidate or as a fallback), writes, and fallbacks \
     (reads sent to the primary because no replica was eligible; a subset of reads_primary).",
    &["database", "user", "decision"],
);
const RYW: &[&str] = &["database", "user", "scope"];

const ROUTE_RYW_WAITS: Spec = Spec::counter(
    "pgsluice_route_ryw_waits_total",
    "Reads that waited for a replica to replay the writes they must see (read-your-writes; scope: \
     read_your_writes_scope of the pool set).",
    RYW,
);
const ROUTE_RYW_FALLBACKS: Spec = Spec::counter(
    "pgsluice_route_ryw_fallbacks_total",
    "Reads sent to the primary because no eligible replica was known to have replayed the writes they must \
     see (a subset of the fallbacks decisions).",
    RYW,
);
const ROUTE_RETRIES: Spec =
    Spec::counter("pgsluice_route_retries_total", "Reads retried on another host after a connection failure.", SET);
const ROUTE_READ_RESENDS: Spec = Spec::counter(
    "pgsluice_route_read_resends_total",
    "Reads sent again to another host after their server died before answering.",
    SET,
);
const TRANSACTION_DURATION: Spec = Spec::histogram(
    "pgsluice_transaction_duration_seconds",
    "Transaction durations on the server, from the first request to the ReadyForQuery that ends the \
     transaction (SHOW LATENCY xact_*).",
    SET,
);
const QUERY_DURATION: Spec = Spec::histogram(
    "pgsluice_query_duration_seconds",
    "Query durations on the server, from a request to its ReadyForQuery (SHOW LATENCY query_*).",
    SET,
);
const WAIT_DURATION: Spec = Spec::histogram(
    "pgsluice_wait_duration_seconds",
    "How long clients waited for a server connection, per server assignment (SHOW LATENCY wait_*).",
    SET,
);
const LISTEN_HUB_CONNECTED: Spec = Spec::gauge(
    "pgsluice_listen_hub_connected",
    "1 while the LISTEN hub of (database, user) holds its server connection (outside the pool), 0 while it reconnects.",
    SET,
);
const LISTEN_HUB_CHANNELS: Spec =
    Spec::gauge("pgsluice_listen_hub_channels", "Channels the LISTEN hub listens on for its clients.", SET);
const LISTEN_HUB_SUBSCRIBERS: Spec =
    Spec::gauge("pgsluice_listen_hub_subscribers", "Clients subscribed to at least one channel of the hub.", SET);
const LISTEN_NOTIFICATIONS: Spec = Spec::counter(
    "pgsluice_listen_notifications_total",
    "Notifications the LISTEN hub received from its server (each fanned out to its subscribers).",
    SET,
);
const LISTEN_HUB_LOST: Spec = Spec::counter(
    "pgsluice_listen_hub_lost_total",
    "Times the LISTEN hub lost its server connection (its clients got a NOTICE; notifications meanwhile are lost).",
    SET,
);
const PINNED_CLIENTS: Spec = Spec::gauge(
    "pgsluice_pinned_clients",
    "Clients pinned to their server connection by session state they set (SHOW POOLS cl_pinned).",
    SET,
);
const AUTH_FAILURES: Spec =
    Spec::counter("pgsluice_auth_failures_total", "Client logins refused for bad credentials (SQLSTATE 28xxx).", &[]);
const LOGIN_THROTTLED: Spec = Spec::counter(
    "pgsluice_login_throttled_total",
    "Logins of a (source address, user) pair with recent failed logins: delayed (waited their turn) or refused (turn too far away).",
    &["outcome"],
);
const LOGIN_THROTTLE_PAIRS: Spec = Spec::gauge(
    "pgsluice_login_throttle_pairs",
    "(source address, user) pairs with recent failed logins being tracked.",
    &[],
);
const LOGGING_IN: Spec =
    Spec::gauge("pgsluice_clients_logging_in", "Client connections accepted and not yet logged in.", &[]);

/// Every family this module can produce, in output order.
pub(super) fn specs() -> impl Iterator<Item = &'static Spec> {
    [
        &HOST_INFO,
        &HOST_UP,
        &HOST_PRIMARY,
        &HOST_LAG_BYTES,
        &HOST_LAG_SECONDS,
        &HOST_TIMELINE,
        &HOST_BREAKER_OPEN,
        &HOST_BREAKER_STATE,
        &HOST_BREAKER_REFUSED,
        &HOST_PROBES,
        &FAILOVERS,
        &ROUTE_DECISIONS,
        &ROUTE_RYW_WAITS,
        &ROUTE_RYW_FALLBACKS,
        &ROUTE_RETRIES,
        &ROUTE_READ_RESENDS,
        &TRANSACTION_DURATION,
        &QUERY_DURATION,
        &WAIT_DURATION,
        &PINNED_CLIENTS,
        &LISTEN_HUB_CONNECTED,
        &LISTEN_HUB_CHANNELS,
        &LISTEN_HUB_SUBSCRIBERS,
        &LISTEN_NOTIFICATIONS,
        &LISTEN_HUB_LOST,
        &AUTH_FAILURES,
        &LOGIN_THROTTLED,
        &LOGIN_THROTTLE_PAIRS,
        &LOGGING_IN,
    ]
    .into_iter()
}

/// Appends pgsluice's own families; `pools` are `SHOW POOLS`' rows.
pub(super) fn collect(shared: &Shared, pools: &[PoolRow], out: &mut Families) {
    hosts(shared, out);
    sets(shared, out);
    let mut pinned = Family::new(&PINNED_CLIENTS);
    for r in pools {
        pinned.add(&[&r.database, &r.user], r.cl_pinned.into());
    }
    out.push(pinned);
    hubs(shared, out);
    out.single(&AUTH_FAILURES, shared.auth_failures.load(Ordering::Relaxed) as f64);
    let mut throttled = Family::new(&LOGIN_THROTTLED);
    throttled.add(&["delayed"], shared.throttle.delayed.load(Ordering::Relaxed) as f64);
    throttled.add(&["refused"], shared.throttle.refused.load(Ordering::Relaxed) as f64);
    out.push(throttled);
    out.single(&LOGIN_THROTTLE_PAIRS, shared.throttle.len() as f64);
    out.single(&LOGGING_IN, shared.logging_in.load(Ordering::Relaxed) as f64);
}

/// Per LISTEN hub (one per (database, user) with listening clients).
fn hubs(shared: &Shared, out: &mut Families) {
    let mut rows = shared.hubs.snapshot();
    rows.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
    let mut connected = Family::new(&LISTEN_HUB_CONNECTED);
    let mut channels = Family::new(&LISTEN_HUB_CHANNELS);
    let mut subscribers = Family::new(&LISTEN_HUB_SUBSCRIBERS);
    let mut received = Family::new(&LISTEN_NOTIFICATIONS);
    let mut lost = Family::new(&LISTEN_HUB_LOST);
    for h in &rows {
        let l = [&*h.database, &*h.user];
        connected.add(&l, if h.server_pid.is_some() { 1.0 } else { 0.0 });
        channels.add(&l, h.channels as f64);
        subscribers.add(&l, h.subscribers as f64);
        received.add(&l, h.received as f64);
        lost.add(&l, h.lost as f64);
    }
    for f in [connected, channels, subscribers, received, lost] {
        out.push(f);
    }
}

fn hosts(shared: &Shared, out: &mut Families) {
    let clusters = shared.clusters.load();
    let mut names: Vec<&String> = clusters.keys().collect();
    names.sort();
    let mut info = Family::new(&HOST_INFO);
    let mut up = Family::new(&HOST_UP);
    let mut primary = Family::new(&HOST_PRIMARY);
    let mut lag_bytes = Family::new(&HOST_LAG_BYTES);
    let mut lag_seconds = Family::new(&HOST_LAG_SECONDS);
    let mut timeline = Family::new(&HOST_TIMELINE);
    let mut breaker_open = Family::new(&HOST_BREAKER_OPEN);
    let mut breaker_state = Family::new(&HOST_BREAKER_STATE);
    let mut refused = Family::new(&HOST_BREAKER_REFUSED);
    let mut probes = Family::new(&HOST_PROBES);
    let mut failovers = Family::new(&FAILOVERS);
    for name in names {
        let c = &clusters[name];
        let current = c.primary();
        for (i, h) in c.snapshot().iter().enumerate() {
            let l = [h.database.as_str(), h.addr.as_str()];
            let st = &h.status;
            info.add(&[&h.database, &h.addr, st.role.as_str(), h.health.as_str()], 1.0);
            up.add(&l, flag(matches!(h.health, Health::Up | Health::Lagging)));
            primary.add(&l, flag(current == Primary::Host(i)));
            if let Some(lag) = st.lag {
                lag_bytes.add(&l, lag.bytes as f64);
                lag_seconds.add(&l, lag.time.as_secs_f64());
            }
            if let Some(tl) = st.timeline {
                timeline.add(&l, tl.into());
            }
            breaker_open.add(&l, flag(matches!(h.breaker, BreakerState::Open { .. })));
            for state in ["closed", "open", "half-open"] {
                breaker_state.add(&[&h.database, &h.addr, state], flag(h.breaker.as_str() == state));
            }
            refused.add(&l, h.breaker_refused as f64);
            probes.add(&l, h.probes as f64);
        }
        failovers.add(&[name], c.failovers() as f64);
    }
    for f in
        [info, up, primary, lag_bytes, lag_seconds, timeline, breaker_open, breaker_state, refused, probes, failovers]
    {
        out.push(f);
    }
}

/// Per (database, user) pool set: routing counters and latency histograms.
fn sets(shared: &Shared, out: &mut Families) {
    let mut sets = shared.pools.sets();
    sets.sort_by(|a, b| a.0.cmp(&b.0));
    let mut decisions = Family::new(&ROUTE_DECISIONS);
    let mut ryw = Family::new(&ROUTE_RYW_WAITS);
    let mut ryw_fallbacks = Family::new(&ROUTE_RYW_FALLBACKS);
    let cfg = shared.config.load();
    let mut retries = Family::new(&ROUTE_RETRIES);
    let mut resends = Family::new(&ROUTE_READ_RESENDS);
    let mut xact = Family::new(&TRANSACTION_DURATION);
    let mut query = Family::new(&QUERY_DURATION);
    let mut wait = Family::new(&WAIT_DURATION);
    for ((db, user), set) in &sets {
        let r = set.route_stats().counts();
        for (decision, n) in [
            ("reads_replica", r.reads_replica),
            ("reads_primary", r.reads_primary),
            ("writes", r.writes),
            ("fallbacks", r.fallbacks),
        ] {
            decisions.add(&[db, user, decision], n as f64);
        }
        let scope = cfg.databases.get(db).map_or("", |d| cfg.ryw_scope(d, user).as_str());
        ryw.add(&[db, user, scope], r.ryw_waits as f64);
        ryw_fallbacks.add(&[db, user, scope], r.ryw_fallbacks as f64);
        retries.add(&[db, user], r.retries as f64);
        resends.add(&[db, user], r.read_resends as f64);
        let [x, q, w] = show::latency_of(set);
        xact.add_histogram(&[db, user], &x);
        query.add_histogram(&[db, user], &q);
        wait.add_histogram(&[db, user], &w);
    }
    for f in [decisions, ryw, ryw_fallbacks, retries, resends, xact, query, wait] {
        out.push(f);
    }
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}
