//! The pgbouncer_exporter-compatible families (prometheus-community/pgbouncer_exporter
//! v0.11+).
//!
//! The exporter maps admin console columns to metrics; this module reads the same values
//! the console shows, through the same functions: `SHOW POOLS` rows come from
//! [`show::pool_rows`] (taken once per scrape by the caller), `SHOW STATS_TOTALS` from
//! [`Shared::totals_by_database`], `SHOW LISTS` and `SHOW DATABASES` from their result tables.
//! Conversions follow the exporter: times in µs become seconds (÷1e6), `maxwait` is whole
//! seconds (its `maxwait_us` part is ignored, as the exporter does), NULL labels are `""`.

use std::collections::BTreeMap;

use super::{Families, Family, Spec};
use crate::admin::show::{self, PoolRow};
use crate::admin::Show;
use crate::shared::Shared;
use crate::stats::{ClientState, Totals};

const UP: Spec = Spec::gauge("pgbouncer_up", "The pooler is up and answering (always 1).", &[]);
const VERSION: Spec = Spec::gauge("pgbouncer_version_info", "The pooler's version (SHOW VERSION).", &["version"]);

/// `SHOW VERSION`'s row.
const VERSION_TEXT: &str = concat!("pgsluice ", env!("CARGO_PKG_VERSION"));

/// `SHOW LISTS` rows the exporter maps, and their metrics (no labels).
static LISTS: [(&str, Spec); 11] = [
    ("databases", Spec::gauge("pgbouncer_databases", "Count of databases.", &[])),
    ("users", Spec::gauge("pgbouncer_users", "Count of users.", &[])),
    ("pools", Spec::gauge("pgbouncer_pools", "Count of pools.", &[])),
    ("free_clients", Spec::gauge("pgbouncer_free_clients", "Count of free clients.", &[])),
    ("used_clients", Spec::gauge("pgbouncer_used_clients", "Count of used clients.", &[])),
    ("login_clients", Spec::gauge("pgbouncer_login_clients", "Count of clients in login state.", &[])),
    ("free_servers", Spec::gauge("pgbouncer_free_servers", "Count of free servers.", &[])),
    ("used_servers", Spec::gauge("pgbouncer_used_servers", "Count of used servers.", &[])),
    ("dns_names", Spec::gauge("pgbouncer_cached_dns_names", "Count of DNS names in the cache.", &[])),
    ("dns_zones", Spec::gauge("pgbouncer_cached_dns_zones", "Count of DNS zones in the cache.", &[])),
    ("dns_queries", Spec::gauge("pgbouncer_in_flight_dns_queries", "Count of in-flight DNS queries.", &[])),
];

const MAX_CLIENT_CONN: Spec =
    Spec::gauge("pgbouncer_config_max_client_connections", "Config maximum number of client connections.", &[]);
const MAX_USER_CONN: Spec =
    Spec::gauge("pgbouncer_config_max_user_connections", "Config maximum number of server connections per user.", &[]);

const CLIENTS: Spec = Spec::gauge(
    "pgbouncer_client_connections",
    "Client connections by database, user, application_name and state (SHOW CLIENTS).",
    &["database", "user", "application_name", "state"],
);

const DATABASE_LABELS: &[&str] = &["name", "host", "port", "database", "force_user", "pool_mode"];

/// `SHOW DATABASES` value columns and their metrics.
static DATABASES: [(&str, Spec); 6] = [
    (
        "pool_size",
        Spec::gauge("pgbouncer_databases_pool_size", "Maximum number of server connections.", DATABASE_LABELS),
    ),
    (
        "reserve_pool_size",
        Spec::gauge("pgbouncer_databases_reserve_pool", "Maximum number of additional connections.", DATABASE_LABELS),
    ),
    (
        "max_connections",
        Spec::gauge(
            "pgbouncer_databases_max_connections",
            "Maximum number of allowed connections (0: unlimited).",
            DATABASE_LABELS,
        ),
    ),
    (
        "current_connections",
        Spec::gauge("pgbouncer_databases_current_connections", "Current number of connections.", DATABASE_LABELS),
    ),
    (
        "paused",
        Spec::gauge("pgbouncer_databases_paused", "1 if this database is currently paused, else 0.", DATABASE_LABELS),
    ),
    (
        "disabled",
        Spec::gauge(
            "pgbouncer_databases_disabled",
            "1 if this database is currently disabled, else 0.",
            DATABASE_LABELS,
        ),
    ),
];

const POOL_LABELS: &[&str] = &["database", "user"];

/// A `SHOW POOLS` column as a gauge, and its value in a row.
type PoolsColumn = (Spec, fn(&PoolRow) -> u64);

/// `SHOW POOLS` columns, as metrics. Cancel requests are forwarded at once (never queued),
/// so the cancel columns are 0, as the console shows them.
static POOLS: [PoolsColumn; 12] = [
    (
        Spec::gauge(
            "pgbouncer_pools_client_active_connections",
            "Client connections linked to a server connection or idle with no queries waiting.",
            POOL_LABELS,
        ),
        |r| r.cl_active.into(),
    ),
    (
        Spec::gauge(
            "pgbouncer_pools_client_waiting_connections",
            "Client connections waiting for a server connection.",
            POOL_LABELS,
        ),
        |r| r.cl_waiting.into(),
    ),
    (
        Spec::gauge(
            "pgbouncer_pools_client_active_cancel_connections",
            "Client connections that have forwarded query cancellations to the server.",
            POOL_LABELS,
        ),
        |_| 0,
    ),
    (
        Spec::gauge(
            "pgbouncer_pools_client_waiting_cancel_connections",
            "Client connections with query cancellations not yet forwarded to the server.",
            POOL_LABELS,
        ),
        |_| 0,
    ),
    (
        Spec::gauge("pgbouncer_pools_server_active_connections", "Server connections linked to a client.", POOL_LABELS),
        |r| r.snap.active.into(),
    ),
    (
        Spec::gauge(
            "pgbouncer_pools_server_active_cancel_connections",
            "Server connections forwarding a cancel request.",
            POOL_LABELS,
        ),
        |_| 0,
    ),
    (
        Spec::gauge(
            "pgbouncer_pools_server_being_canceled_connections",
            "Server connections being cancelled.",
            POOL_LABELS,
        ),
        |_| 0,
    ),
    (
        Spec::gauge(
            "pgbouncer_pools_server_idle_connections",
            "Server connections unused and immediately usable for client queries.",
            POOL_LABELS,
        ),
        |r| r.snap.idle.into(),
    ),
    (
        Spec::gauge(
            "pgbouncer_pools_server_used_connections",
            "Server connections idle longer than server_check_delay (checked before reuse).",
            POOL_LABELS,
        ),
        |r| r.snap.used.into(),
    ),
    (
        Spec::gauge(
            "pgbouncer_pools_server_testing_connections",
            "Server connections being checked or reset.",
            POOL_LABELS,
        ),
        |r| r.sv_tested().into(),
    ),
    (
        Spec::gauge(
            "pgbouncer_pools_server_login_connections",
            "Server connections being opened and logged in.",
            POOL_LABELS,
        ),
        |r| r.snap.connecting.into(),
    ),
    (
        Spec::gauge(
            "pgbouncer_pools_client_maxwait_seconds",
            "How long the oldest waiting client has waited, whole seconds.",
            POOL_LABELS,
        ),
        |r| r.maxwait_us / 1_000_000,
    ),
];

const DB: &[&str] = &["database"];

/// A `SHOW STATS_TOTALS` column as a counter: its value, and the divisor to the metric's unit
/// (1e6 for µs to seconds: a division by an exact power of ten rounds correctly, a
/// multiplication by `1e-6` does not).
type TotalsColumn = (Spec, fn(&Totals) -> u64, f64);

/// `SHOW STATS_TOTALS` columns (exporter v0.11+ names).
static STATS_TOTALS: [TotalsColumn; 11] = [
    (
        Spec::counter("pgbouncer_stats_totals_queries_pooled_total", "Total number of SQL queries pooled.", DB),
        |t| t.query_count,
        1.0,
    ),
    (
        Spec::counter(
            "pgbouncer_stats_totals_queries_duration_seconds_total",
            "Total seconds spent by pgbouncer when actively connected to PostgreSQL, executing queries.",
            DB,
        ),
        |t| t.query_time,
        1e6,
    ),
    (
        Spec::counter(
            "pgbouncer_stats_totals_received_bytes_total",
            "Total volume in bytes of network traffic received by pgbouncer.",
            DB,
        ),
        |t| t.received,
        1.0,
    ),
    (
        Spec::counter(
            "pgbouncer_stats_totals_sent_bytes_total",
            "Total volume in bytes of network traffic sent by pgbouncer.",
            DB,
        ),
        |t| t.sent,
        1.0,
    ),
    (
        Spec::counter(
            "pgbouncer_stats_totals_client_wait_seconds_total",
            "Time spent by clients waiting for a server, in seconds.",
            DB,
        ),
        |t| t.wait_time,
        1e6,
    ),
    (
        Spec::counter(
            "pgbouncer_stats_totals_sql_transactions_pooled_total",
            "Total number of SQL transactions pooled.",
            DB,
        ),
        |t| t.xact_count,
        1.0,
    ),
    (
        Spec::counter(
            "pgbouncer_stats_totals_server_in_transaction_seconds_total",
            "Total seconds spent by pgbouncer when connected to PostgreSQL in a transaction, \
             either idle in transaction or executing queries.",
            DB,
        ),
        |t| t.xact_time,
        1e6,
    ),
    (
        Spec::counter(
            "pgbouncer_stats_totals_client_parses_total",
            "Total number of prepared statements created by clients.",
            DB,
        ),
        |t| t.client_parses,
        1.0,
    ),
    (
        Spec::counter(
            "pgbouncer_stats_totals_server_parses_total",
            "Total number of prepared statements created on servers.",
            DB,
        ),
        |t| t.server_parses,
        1.0,
    ),
    (
        Spec::counter(
            "pgbouncer_stats_totals_binds_total",
            "Total number of prepared statements readied for execution.",
            DB,
        ),
        |t| t.binds,
        1.0,
    ),
    (
        Spec::counter(
            "pgbouncer_stats_totals_server_assignments_total",
            "Total number of times a server was assigned to a client.",
            DB,
        ),
        |t| t.assignments,
        1.0,
    ),
];

/// The same counters under exporter v0.10's names (from `SHOW STATS`' `total_*` columns),
/// for dashboards made before v0.11.
static STATS_LEGACY: [TotalsColumn; 7] = [
    (
        Spec::counter("pgbouncer_stats_queries_pooled_total", "Total number of SQL queries pooled (v0.10 name).", DB),
        |t| t.query_count,
        1.0,
    ),
    (
        Spec::counter(
            "pgbouncer_stats_queries_duration_seconds_total",
            "Total seconds spent executing queries (v0.10 name).",
            DB,
        ),
        |t| t.query_time,
        1e6,
    ),
    (
        Spec::counter(
            "pgbouncer_stats_received_bytes_total",
            "Total bytes of network traffic received (v0.10 name).",
            DB,
        ),
        |t| t.received,
        1.0,
    ),
    (
        Spec::counter("pgbouncer_stats_sent_bytes_total", "Total bytes of network traffic sent (v0.10 name).", DB),
        |t| t.sent,
        1.0,
    ),
    (
        Spec::counter(
            "pgbouncer_stats_client_wait_seconds_total",
            "Time spent by clients waiting for a server, in seconds (v0.10 name).",
            DB,
        ),
        |t| t.wait_time,
        1e6,
    ),
    (
        Spec::counter(
            "pgbouncer_stats_sql_transactions_pooled_total",
            "Total number of SQL transactions pooled (v0.10 name).",
            DB,
        ),
        |t| t.xact_count,
        1.0,
    ),
    (
        Spec::counter(
            "pgbouncer_stats_server_in_transaction_seconds_total",
            "Total seconds spent connected to PostgreSQL in a transaction (v0.10 name).",
            DB,
        ),
        |t| t.xact_time,
        1e6,
    ),
];

/// Every family this module can produce, in output order.
pub(super) fn specs() -> impl Iterator<Item = &'static Spec> {
    [&UP, &VERSION]
        .into_iter()
        .chain(LISTS.iter().map(|(_, s)| s))
        .chain([&MAX_CLIENT_CONN, &MAX_USER_CONN, &CLIENTS])
        .chain(DATABASES.iter().map(|(_, s)| s))
        .chain(POOLS.iter().map(|(s, _)| s))
        .chain(STATS_TOTALS.iter().chain(&STATS_LEGACY).map(|(s, _, _)| s))
}

/// Appends the exporter-compatible families; `pools` are `SHOW POOLS`' rows.
pub(super) fn collect(shared: &Shared, pools: &[PoolRow], out: &mut Families) {
    out.single(&UP, 1.0);
    let mut version = Family::new(&VERSION);
    version.add(&[VERSION_TEXT], 1.0);
    out.push(version);
    lists(shared, out);
    let cfg = shared.config.load();
    out.single(&MAX_CLIENT_CONN, cfg.general().max_client_conn.into());
    out.single(&MAX_USER_CONN, cfg.general().max_user_connections.into());
    drop(cfg);
    clients(shared, out);
    databases(shared, out);
    pool_gauges(pools, out);
    stats_totals(shared, out);
}

fn lists(shared: &Shared, out: &mut Families) {
    let t = show::show(shared, Show::Lists);
    for (list, spec) in &LISTS {
        let value = (0..t.rows.len()).find(|&i| t.get(i, "list") == Some(list)).and_then(|i| number(t.get(i, "items")));
        if let Some(v) = value {
            out.single(spec, v);
        }
    }
}

fn clients(shared: &Shared, out: &mut Families) {
    let all = shared.clients.all();
    let mut groups: BTreeMap<(&str, &str, &str, &str), u32> = BTreeMap::new();
    for c in &all {
        // As SHOW CLIENTS names the states.
        let state = match c.state() {
            ClientState::Idle => "idle",
            ClientState::Waiting => "waiting",
            ClientState::Active => "active",
        };
        *groups.entry((&c.database, &c.user, &c.application_name, state)).or_default() += 1;
    }
    let mut f = Family::new(&CLIENTS);
    for ((db, user, app, state), n) in groups {
        f.add(&[db, user, app, state], n.into());
    }
    out.push(f);
}

fn databases(shared: &Shared, out: &mut Families) {
    let t = show::show(shared, Show::Databases);
    let labels: Vec<Vec<&str>> =
        (0..t.rows.len()).map(|i| DATABASE_LABELS.iter().map(|c| t.get(i, c).unwrap_or("")).collect()).collect();
    for (column, spec) in &DATABASES {
        let mut f = Family::new(spec);
        for (i, l) in labels.iter().enumerate() {
            if let Some(v) = number(t.get(i, column)) {
                f.add(l, v);
            }
        }
        out.push(f);
    }
}

fn pool_gauges(rows: &[PoolRow], out: &mut Families) {
    for (spec, value) in &POOLS {
        let mut f = Family::new(spec);
        for r in rows {
            f.add(&[&r.database, &r.user], value(r) as f64);
        }
        out.push(f);
    }
}

fn stats_totals(shared: &Shared, out: &mut Families) {
    let totals = shared.totals_by_database();
    for (spec, value, divisor) in STATS_TOTALS.iter().chain(&STATS_LEGACY) {
        let mut f = Family::new(spec);
        for (db, t) in &totals {
            f.add(&[db], value(t) as f64 / divisor);
        }
        out.push(f);
    }
}

/// A console value as a number (NULL and non-numbers: none).
fn number(v: Option<&str>) -> Option<f64> {
    v?.parse().ok()
}
