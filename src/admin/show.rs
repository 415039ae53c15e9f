//! `SHOW` commands. Column names, order and types are PgBouncer 1.24's (the newest released
//! column sets; see docs/admin-console.md for what each value means in pgsluice), plus our
//! own `SHOW HOSTS` (alias `SHOW REPLICAS`) and `SHOW ROUTES`.
//!
//! Everything is read from lock-free state or copied out of short critical sections; a
//! `SHOW` never blocks clients or servers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use super::parse::Show;
use super::table::{Table, Val, INT4, INT8, NUMERIC, TEXT};
use crate::config::{Config, PoolMode, ReadYourWritesScope};
use crate::pool::PoolSnapshot;
use crate::shared::Shared;
use crate::stats::{Averages, ClientState, HistogramSnapshot, Totals};

/// Runs a `SHOW`.
pub fn show(shared: &Shared, what: Show) -> Table {
    match what {
        Show::Pools => pools(shared),
        Show::Stats => stats(shared),
        Show::StatsTotals => stats_per_database(shared, false),
        Show::StatsAverages => stats_per_database(shared, true),
        Show::Totals => totals(shared),
        Show::Databases => databases(shared),
        Show::Clients => clients(shared),
        Show::Servers => servers(shared),
        Show::Config => config(shared),
        Show::Users => users(shared),
        Show::Lists => lists(shared),
        Show::Mem => mem(shared),
        Show::Version => version(),
        Show::State => state(shared),
        Show::Help => help(),
        Show::Hosts => hosts(shared),
        Show::Routes => routes(shared),
        Show::Latency => latency(shared),
    }
}

/// One (database, user) pool, summed over its hosts, with its clients.
#[derive(Debug, Clone, Default)]
pub struct PoolRow {
    /// Client-visible database.
    pub database: String,
    /// Backend user.
    pub user: String,
    /// Connection counts summed over hosts.
    pub snap: PoolSnapshot,
    /// Clients logged in and not waiting.
    pub cl_active: u32,
    /// Clients waiting for a server.
    pub cl_waiting: u32,
    /// Longest current wait, µs.
    pub maxwait_us: u64,
    /// Clients pinned to their server by session state (`session_state = pin`).
    pub cl_pinned: u32,
    /// Effective pool mode.
    pub mode: PoolMode,
}

impl PoolRow {
    /// Connections in transit (being checked or reset): PgBouncer's `sv_tested`.
    pub fn sv_tested(&self) -> u32 {
        let s = &self.snap;
        s.open.saturating_sub(s.connecting + s.active + s.idle + s.used)
    }
}

/// Every pool, sorted by (database, user), and the admin console's own row.
pub fn pool_rows(shared: &Shared) -> Vec<PoolRow> {
    let cfg = shared.config.load();
    let now = shared.clock.now_us();
    let mut rows: BTreeMap<(String, String), PoolRow> = BTreeMap::new();
    for ((db, user), set) in shared.pools.sets() {
        let mut snap = PoolSnapshot::default();
        for p in set.pools() {
            let s = p.snapshot();
            snap.open += s.open;
            snap.connecting += s.connecting;
            snap.idle += s.idle;
            snap.used += s.used;
            snap.active += s.active;
            snap.waiting += s.waiting;
            snap.max_wait = snap.max_wait.max(s.max_wait);
        }
        let mode = match cfg.databases.get(&db) {
            Some(d) => cfg.pool_mode(d, &user),
            None => cfg.general().pool_mode,
        };
        rows.insert((db.clone(), user.clone()), PoolRow { database: db, user, snap, mode, ..PoolRow::default() });
    }
    let admin_db = cfg.general().admin_database.clone();
    let mut admin =
        PoolRow { database: admin_db.clone(), user: admin_db.clone(), mode: PoolMode::Statement, ..PoolRow::default() };
    for c in shared.clients.all() {
        let row = if c.admin {
            &mut admin
        } else {
            match rows.get_mut(&(c.database.to_string(), c.pool_user.to_string())) {
                Some(r) => r,
                None => continue,
            }
        };
        if c.is_pinned() {
            row.cl_pinned += 1;
        }
        match c.state() {
            ClientState::Waiting => {
                row.cl_waiting += 1;
                row.maxwait_us = row.maxwait_us.max(now.saturating_sub(c.request_us()));
            }
            ClientState::Idle | ClientState::Active => row.cl_active += 1,
        }
    }
    let mut v: Vec<PoolRow> = rows.into_values().collect();
    v.push(admin);
    v
}

fn pools(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        ("database", TEXT),
        ("user", TEXT),
        ("cl_active", INT4),
        ("cl_waiting", INT4),
        ("cl_active_cancel_req", INT4),
        ("cl_waiting_cancel_req", INT4),
        ("sv_active", INT4),
        ("sv_active_cancel", INT4),
        ("sv_being_canceled", INT4),
        ("sv_idle", INT4),
        ("sv_used", INT4),
        ("sv_tested", INT4),
        ("sv_login", INT4),
        ("maxwait", INT4),
        ("maxwait_us", INT4),
        ("pool_mode", TEXT),
        ("load_balance_hosts", TEXT),
        // pgsluice's own, after PgBouncer's columns.
        ("cl_pinned", INT4),
    ]);
    for r in pool_rows(shared) {
        let s = &r.snap;
        // Cancel requests are forwarded the moment they arrive (never queued), so the four
        // cancel columns are always 0 in pgsluice.
        t.push(vec![
            r.database.as_str().into(),
            r.user.as_str().into(),
            r.cl_active.into(),
            r.cl_waiting.into(),
            0u32.into(),
            0u32.into(),
            s.active.into(),
            0u32.into(),
            0u32.into(),
            s.idle.into(),
            s.used.into(),
            r.sv_tested().into(),
            s.connecting.into(),
            (r.maxwait_us / 1_000_000).into(),
            (r.maxwait_us % 1_000_000).into(),
            r.mode.as_str().into(),
            Val::NULL,
            r.cl_pinned.into(),
        ]);
    }
    t
}

fn averages_of(shared: &Shared, db: &str) -> Averages {
    shared.averages.lock().get(db).copied().unwrap_or_default()
}

fn stats(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        ("database", TEXT),
        ("total_server_assignment_count", NUMERIC),
        ("total_xact_count", NUMERIC),
        ("total_query_count", NUMERIC),
        ("total_received", NUMERIC),
        ("total_sent", NUMERIC),
        ("total_xact_time", NUMERIC),
        ("total_query_time", NUMERIC),
        ("total_wait_time", NUMERIC),
        ("total_client_parse_count", NUMERIC),
        ("total_server_parse_count", NUMERIC),
        ("total_bind_count", NUMERIC),
        ("avg_server_assignment_count", NUMERIC),
        ("avg_xact_count", NUMERIC),
        ("avg_query_count", NUMERIC),
        ("avg_recv", NUMERIC),
        ("avg_sent", NUMERIC),
        ("avg_xact_time", NUMERIC),
        ("avg_query_time", NUMERIC),
        ("avg_wait_time", NUMERIC),
        ("avg_client_parse_count", NUMERIC),
        ("avg_server_parse_count", NUMERIC),
        ("avg_bind_count", NUMERIC),
    ]);
    for (db, x) in shared.totals_by_database() {
        let a = averages_of(shared, &db);
        let mut row = vec![Val::from(db)];
        row.extend(totals_values(&x));
        row.extend(totals_values(&a));
        t.push(row);
    }
    t
}

fn totals_values(x: &Totals) -> Vec<Val> {
    vec![
        x.assignments.into(),
        x.xact_count.into(),
        x.query_count.into(),
        x.received.into(),
        x.sent.into(),
        x.xact_time.into(),
        x.query_time.into(),
        x.wait_time.into(),
        x.client_parses.into(),
        x.server_parses.into(),
        x.binds.into(),
    ]
}

/// Columns of SHOW STATS_TOTALS; SHOW STATS_AVERAGES has the same with `avg_` before the
/// last three (PgBouncer really names only its newer columns so).
const STATS_COLUMNS: [&str; 11] = [
    "server_assignment_count",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "xact_time",
    "query_time",
    "wait_time",
    "client_parse_count",
    "server_parse_count",
    "bind_count",
];
const STATS_AVERAGES_NEWER: [&str; 3] = ["avg_client_parse_count", "avg_server_parse_count", "avg_bind_count"];

/// SHOW STATS_TOTALS (`averages` false) or SHOW STATS_AVERAGES: one row per database.
fn stats_per_database(shared: &Shared, averages: bool) -> Table {
    let mut columns = vec![("database", TEXT)];
    columns.extend(STATS_COLUMNS.iter().map(|&c| (c, NUMERIC)));
    if averages {
        for (col, name) in columns[9..].iter_mut().zip(STATS_AVERAGES_NEWER) {
            col.0 = name;
        }
    }
    let mut t = Table::new(&columns);
    for (db, x) in shared.totals_by_database() {
        let values = if averages { averages_of(shared, &db) } else { x };
        let mut row = vec![Val::from(db)];
        row.extend(totals_values(&values));
        t.push(row);
    }
    t
}

fn totals(shared: &Shared) -> Table {
    let mut t = Table::new(&[("name", TEXT), ("value", NUMERIC)]);
    let mut sum = Totals::default();
    let mut avg = Averages::default();
    for (db, x) in shared.totals_by_database() {
        sum += x;
        let a = averages_of(shared, &db);
        // Rates add up; times are the longest per-database mean (an overall mean would need
        // the weights).
        let times = (avg.xact_time.max(a.xact_time), avg.query_time.max(a.query_time), avg.wait_time.max(a.wait_time));
        avg += a;
        (avg.xact_time, avg.query_time, avg.wait_time) = times;
    }
    let names = [
        "server_assignment_count",
        "xact_count",
        "query_count",
        "client_bytes",
        "server_bytes",
        "xact_time",
        "query_time",
        "wait_time",
        "ps_client_parse_count",
        "ps_server_parse_count",
        "ps_bind_count",
    ];
    for (prefix, values) in [("total_", totals_values(&sum)), ("avg_", totals_values(&avg))] {
        for (n, v) in names.iter().zip(values) {
            t.push(vec![format!("{prefix}{n}").into(), v]);
        }
    }
    t
}

fn databases(shared: &Shared) -> Table {
    let cfg = shared.config.load();
    let g = cfg.general();
    let mut t = Table::new(&[
        ("name", TEXT),
        ("host", TEXT),
        ("port", INT4),
        ("database", TEXT),
        ("force_user", TEXT),
        ("pool_size", INT4),
        ("min_pool_size", INT4),
        ("reserve_pool_size", INT4),
        ("server_lifetime", INT4),
        ("pool_mode", TEXT),
        ("load_balance_hosts", TEXT),
        ("max_connections", INT4),
        ("current_connections", INT4),
        ("max_client_connections", INT4),
        ("current_client_connections", INT4),
        ("paused", INT4),
        ("disabled", INT4),
    ]);
    let mut servers: BTreeMap<String, u32> = BTreeMap::new();
    for ((db, _), set) in shared.pools.sets() {
        *servers.entry(db).or_default() += set.pools().iter().map(|p| p.snapshot().open).sum::<u32>();
    }
    let mut clients: BTreeMap<String, u32> = BTreeMap::new();
    for c in shared.clients.all() {
        *clients.entry(c.database.to_string()).or_default() += 1;
    }
    let names: BTreeSet<&String> = cfg.databases.keys().collect();
    for name in names {
        let d = &cfg.databases[name];
        // The host shown is the current primary (the one PgBouncer's single host would be).
        let host = shared
            .cluster(name)
            .and_then(|c| match c.primary() {
                crate::cluster::Primary::Host(i) => c.hosts().get(i).map(|h| h.addr.clone()),
                _ => None,
            })
            .unwrap_or_else(|| d.hosts[0].clone());
        let control = shared.control(name);
        let section_mode = cfg.file.databases.get(name).and_then(|s| s.pool_mode);
        t.push(vec![
            name.into(),
            host.host.as_str().into(),
            host.port.into(),
            d.dbname.as_str().into(),
            d.fixed_user.as_deref().into(),
            d.pool_size.into(),
            d.min_pool_size.into(),
            d.reserve_pool_size.into(),
            (g.server_lifetime.0.as_secs() as i64).into(),
            section_mode.map(|m| m.as_str()).into(),
            Val::NULL,
            d.max_db_connections.into(),
            servers.get(name).copied().unwrap_or(0).into(),
            0u32.into(),
            clients.get(name).copied().unwrap_or(0).into(),
            control.is_paused().into(),
            control.is_disabled().into(),
        ]);
    }
    let admin = &g.admin_database;
    t.push(vec![
        admin.into(),
        Val::NULL,
        cfg.listen.port().into(),
        admin.into(),
        admin.into(),
        0u32.into(),
        0u32.into(),
        0u32.into(),
        0u32.into(),
        "statement".into(),
        Val::NULL,
        0u32.into(),
        0u32.into(),
        0u32.into(),
        clients.get(admin).copied().unwrap_or(0).into(),
        0u32.into(),
        0u32.into(),
    ]);
    t
}

/// `YYYY-MM-DD HH:MM:SS UTC`, as PgBouncer prints times.
pub fn format_time(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let s =
        humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string();
    // 2026-11-23T20:10:24Z
    format!("{} {} UTC", &s[..10], &s[11..19])
}

/// PgBouncer's `ptr` of a client.
pub fn client_ptr(id: u64) -> String {
    format!("0x{id:x}")
}

/// PgBouncer's `ptr` of a server connection (a separate range from clients').
pub fn server_ptr(id: u64) -> String {
    format!("0x{:x}", (1u64 << 48) | id)
}

const SOCKET_COLUMNS: [(&str, u32); 21] = [
    ("type", TEXT),
    ("user", TEXT),
    ("database", TEXT),
    ("replication", TEXT),
    ("state", TEXT),
    ("addr", TEXT),
    ("port", INT4),
    ("local_addr", TEXT),
    ("local_port", INT4),
    ("connect_time", TEXT),
    ("request_time", TEXT),
    ("wait", INT4),
    ("wait_us", INT4),
    ("close_needed", INT4),
    ("ptr", TEXT),
    ("link", TEXT),
    ("remote_pid", INT4),
    ("tls", TEXT),
    ("application_name", TEXT),
    ("prepared_statements", INT4),
    ("id", INT4),
];

/// `SHOW CLIENTS`: PgBouncer's columns, then pgsluice's `route` (where the client's
/// requests go: `auto`, `primary` or `replica`).
const CLIENT_COLUMNS: [(&str, u32); 22] = {
    let mut c = [("route", TEXT); 22];
    let mut i = 0;
    while i < SOCKET_COLUMNS.len() {
        c[i] = SOCKET_COLUMNS[i];
        i += 1;
    }
    c
};

fn clients(shared: &Shared) -> Table {
    let mut t = Table::new(&CLIENT_COLUMNS);
    let clock = shared.clock;
    let now = clock.now_us();
    for c in shared.clients.all() {
        let state = c.state();
        let waited = if state == ClientState::Waiting { now.saturating_sub(c.request_us()) } else { 0 };
        let (link, pid) = c.link();
        t.push(vec![
            "C".into(),
            c.user.as_ref().into(),
            c.database.as_ref().into(),
            "none".into(),
            match state {
                ClientState::Idle => "idle",
                ClientState::Waiting => "waiting",
                ClientState::Active => "active",
            }
            .into(),
            addr_text(c.addr).into(),
            c.addr.port().into(),
            c.local.map(|a| a.ip().to_string()).into(),
            c.local.map(|a| a.port()).into(),
            format_time(clock.wall(c.connect_us)).into(),
            format_time(clock.wall(c.request_us())).into(),
            (waited / 1_000_000).into(),
            (waited % 1_000_000).into(),
            0u32.into(),
            client_ptr(c.id).into(),
            if link == 0 { String::new() } else { server_ptr(link) }.into(),
            pid.into(),
            if c.tls { "TLS" } else { "" }.into(),
            c.application_name.as_ref().into(),
            c.prepared_statements().into(),
            c.id.into(),
            c.route().into(),
        ]);
    }
    t
}

fn servers(shared: &Shared) -> Table {
    let mut t = Table::new(&SOCKET_COLUMNS);
    let clock = shared.clock;
    let mut sets = shared.pools.sets();
    sets.sort_by(|a, b| a.0.cmp(&b.0));
    for ((db, user), set) in sets {
        for pool in set.pools() {
            let app = &pool.settings().application_name;
            for s in pool.servers() {
                let m = &s.meta;
                let link = m.linked_client();
                t.push(vec![
                    "S".into(),
                    user.as_str().into(),
                    db.as_str().into(),
                    "none".into(),
                    s.state.into(),
                    addr_text(m.addr).into(),
                    m.addr.port().into(),
                    m.local.map(|a| a.ip().to_string()).into(),
                    m.local.map(|a| a.port()).into(),
                    format_time(clock.wall(m.connect_us)).into(),
                    format_time(clock.wall(m.request_us())).into(),
                    0u32.into(),
                    0u32.into(),
                    s.close_needed.into(),
                    server_ptr(m.id).into(),
                    if link == 0 { String::new() } else { client_ptr(link) }.into(),
                    m.pid.into(),
                    if m.tls { "TLS" } else { "" }.into(),
                    app.as_str().into(),
                    m.prepared_statements().into(),
                    m.id.into(),
                ]);
            }
        }
    }
    t
}

fn config(shared: &Shared) -> Table {
    let cfg = shared.config.load();
    let mut t = Table::new(&[("key", TEXT), ("value", TEXT), ("default", TEXT), ("changeable", TEXT)]);
    let current = config_values(&cfg);
    let defaults = match toml::Value::try_from(crate::config::General::default()) {
        Ok(toml::Value::Table(m)) => m,
        _ => Default::default(),
    };
    for (k, v) in current {
        let default = defaults.get(&k).map(render_value);
        let changeable =
            if crate::config::RESTART_ONLY.contains(&k.as_str()) || k == "conffile" || k == "metrics_listen_addr" {
                "no"
            } else {
                "yes"
            };
        t.push(vec![k.into(), v.into(), default.into(), changeable.into()]);
    }
    t
}

/// The effective `[general]` settings as (key, value) text, sorted, plus `conffile` and
/// `metrics_listen_addr`. Secrets are redacted by the serializer.
pub fn config_values(cfg: &Config) -> Vec<(String, Option<String>)> {
    let mut out: BTreeMap<String, Option<String>> = BTreeMap::new();
    if let Ok(toml::Value::Table(m)) = toml::Value::try_from(cfg.general()) {
        for (k, v) in m {
            out.insert(k, Some(render_value(&v)));
        }
    }
    // Unset optional settings are absent from the serialization: show them as NULL.
    for k in ["auth_file", "health_check_user", "health_check_password"] {
        out.entry(k.to_string()).or_insert(None);
    }
    out.insert("conffile".into(), Some(cfg.path.display().to_string()));
    out.insert("metrics_listen_addr".into(), Some(cfg.file.metrics.listen_addr.clone()));
    out.into_iter().collect()
}

/// A peer's address as SHOW CLIENTS / SERVERS print it: `unix` for a Unix socket.
fn addr_text(addr: std::net::SocketAddr) -> String {
    if addr == crate::net::UNIX_PEER {
        "unix".into()
    } else {
        addr.ip().to_string()
    }
}

fn render_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(a) => a.iter().map(render_value).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn users(shared: &Shared) -> Table {
    let cfg = shared.config.load();
    let mut t = Table::new(&[
        ("name", TEXT),
        ("pool_size", TEXT),
        ("reserve_pool_size", TEXT),
        ("pool_mode", TEXT),
        ("max_user_connections", INT4),
        ("current_connections", INT4),
        ("max_user_client_connections", INT4),
        ("current_client_connections", INT4),
    ]);
    let mut names: BTreeSet<String> = cfg.users.keys().cloned().collect();
    names.extend(cfg.file.users.keys().cloned());
    names.extend(cfg.general().admin_users.iter().cloned());
    names.extend(cfg.general().stats_users.iter().cloned());
    let mut servers: BTreeMap<String, u32> = BTreeMap::new();
    for ((_, user), set) in shared.pools.sets() {
        *servers.entry(user).or_default() += set.pools().iter().map(|p| p.snapshot().open).sum::<u32>();
    }
    let mut clients: BTreeMap<String, u32> = BTreeMap::new();
    for c in shared.clients.all() {
        *clients.entry(c.user.to_string()).or_default() += 1;
    }
    names.extend(servers.keys().cloned());
    names.extend(clients.keys().cloned());
    for n in names {
        // pgsluice has no per-user pool sizes: '' as PgBouncer prints an unset one.
        let mode = cfg.file.users.get(&n).and_then(|u| u.pool_mode);
        t.push(vec![
            n.as_str().into(),
            "".into(),
            "".into(),
            mode.map(|m| m.as_str()).into(),
            cfg.max_user_connections(&n).into(),
            servers.get(&n).copied().unwrap_or(0).into(),
            0u32.into(),
            clients.get(&n).copied().unwrap_or(0).into(),
        ]);
    }
    t
}

fn lists(shared: &Shared) -> Table {
    let cfg = shared.config.load();
    let mut t = Table::new(&[("list", TEXT), ("items", INT4)]);
    let sets = shared.pools.sets();
    let servers: u32 = sets.iter().flat_map(|(_, s)| s.pools().iter()).map(|p| p.snapshot().open).sum();
    let mut users: BTreeSet<&String> = cfg.users.keys().collect();
    users.extend(cfg.file.users.keys());
    // pgsluice keeps no free lists of client or server objects, no peers and no DNS cache:
    // those rows are 0 by construction (kept so dashboards find every row).
    let rows: [(&str, u64); 14] = [
        ("databases", cfg.databases.len() as u64 + 1),
        ("users", users.len() as u64),
        ("peers", 0),
        ("pools", sets.len() as u64 + 1),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", shared.clients.len() as u64),
        ("login_clients", shared.logging_in.load(Ordering::Relaxed)),
        ("free_servers", 0),
        ("used_servers", servers as u64),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    for (k, v) in rows {
        t.push(vec![k.into(), v.into()]);
    }
    t
}

fn mem(shared: &Shared) -> Table {
    let mut t = Table::new(&[("name", TEXT), ("size", INT4), ("used", INT4), ("free", INT4), ("memtotal", INT4)]);
    // pgsluice allocates per object (no slab caches): rows are its main per-object
    // structures, their fixed size and how many are live.
    let clients = shared.clients.len();
    let sets = shared.pools.sets();
    let servers: usize = sets.iter().flat_map(|(_, s)| s.pools().iter()).map(|p| p.snapshot().open as usize).sum();
    let rows = [
        ("client_info", std::mem::size_of::<crate::stats::ClientInfo>(), clients),
        ("server_conn", std::mem::size_of::<crate::backend::ServerConn>(), servers),
        ("server_meta", std::mem::size_of::<crate::stats::ServerMeta>(), servers),
    ];
    for (name, size, used) in rows {
        t.push(vec![name.into(), size.into(), used.into(), 0u32.into(), (size * used).into()]);
    }
    t
}

fn version() -> Table {
    let mut t = Table::new(&[("version", TEXT)]);
    t.push(vec![format!("pgsluice {}", crate::VERSION_NUMBER).into()]);
    t
}

fn state(shared: &Shared) -> Table {
    let mut t = Table::new(&[("key", TEXT), ("value", TEXT)]);
    let paused = shared.paused_all.load(Ordering::Relaxed);
    let yes = |b: bool| if b { "yes" } else { "no" };
    t.push(vec!["active".into(), yes(!paused).into()]);
    t.push(vec!["paused".into(), yes(paused).into()]);
    t.push(vec!["suspended".into(), "no".into()]);
    t
}

fn help() -> Table {
    let mut t = Table::new(&[]);
    t.notice = Some(
        "Console usage\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n\tSHOW LISTS|MEM|STATE\n\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\tSHOW HOSTS|REPLICAS|ROUTES|LATENCY\n\tSET key = arg\n\tRELOAD\n\tPAUSE [<db>]\n\tRESUME [<db>]\n\tDISABLE <db>\n\tENABLE <db>\n\tRECONNECT [<db>]\n\tKILL <db>\n\tKILL_CLIENT <client_id>\n\tSHUTDOWN\n\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n\tWAIT_CLOSE [<db>]"
            .into(),
    );
    t
}

/// `SHOW HOSTS` / `SHOW REPLICAS` columns.
pub const HOST_COLUMNS: [(&str, u32); 15] = [
    ("database", TEXT),
    ("host", TEXT),
    ("role", TEXT),
    ("state", TEXT),
    ("lag_bytes", INT8),
    ("lag_seconds", NUMERIC),
    ("timeline", INT4),
    ("lsn", TEXT),
    ("breaker", TEXT),
    ("breaker_refused", INT8),
    ("probes", INT8),
    ("weight", INT4),
    ("sv_active", INT4),
    ("last_probe", TEXT),
    ("last_error", TEXT),
];

fn hosts(shared: &Shared) -> Table {
    let mut t = Table::new(&HOST_COLUMNS);
    let clusters = shared.clusters.load();
    let mut names: Vec<&String> = clusters.keys().collect();
    names.sort();
    let sets = shared.pools.sets();
    for name in names {
        let c = &clusters[name];
        for (i, h) in c.snapshot().into_iter().enumerate() {
            let st = &h.status;
            let active: u32 = sets
                .iter()
                .filter(|((db, _), _)| db == name)
                .filter_map(|(_, s)| s.pools().get(i))
                .map(|p| p.in_use())
                .sum();
            let weight = c.hosts().get(i).map(|x| x.weight).unwrap_or(1);
            t.push(vec![
                h.database.into(),
                h.addr.into(),
                st.role.as_str().into(),
                h.health.as_str().into(),
                st.lag.map(|l| l.bytes).into(),
                st.lag.map(|l| format!("{:.3}", l.time.as_secs_f64())).into(),
                st.timeline.into(),
                st.lsn.map(crate::cluster::format_lsn).into(),
                h.breaker.as_str().into(),
                h.breaker_refused.into(),
                h.probes.into(),
                weight.into(),
                active.into(),
                st.last_probe.map(format_time).into(),
                st.last_error.clone().into(),
            ]);
        }
    }
    t
}

fn routes(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        ("database", TEXT),
        ("user", TEXT),
        ("reads_replica", NUMERIC),
        ("reads_primary", NUMERIC),
        ("writes", NUMERIC),
        ("fallbacks", NUMERIC),
        ("ryw_waits", NUMERIC),
        ("ryw_scope", TEXT),
        ("ryw_fallbacks", NUMERIC),
        ("ryw_writes_in_flight", NUMERIC),
        ("retries", NUMERIC),
        ("read_resends", NUMERIC),
        ("failovers", NUMERIC),
    ]);
    let mut sets = shared.pools.sets();
    sets.sort_by(|a, b| a.0.cmp(&b.0));
    let cfg = shared.config.load();
    for ((db, user), set) in sets {
        let r = set.route_stats().counts();
        let scope = cfg.databases.get(&db).map(|d| cfg.ryw_scope(d, &user));
        let in_flight = match scope {
            Some(ReadYourWritesScope::User) => set.cluster().writes_in_flight(Some(&user)),
            _ => set.cluster().writes_in_flight(None),
        };
        t.push(vec![
            db.into(),
            user.into(),
            r.reads_replica.into(),
            r.reads_primary.into(),
            r.writes.into(),
            r.fallbacks.into(),
            r.ryw_waits.into(),
            scope.map(|s| s.as_str().to_string()).into(),
            r.ryw_fallbacks.into(),
            in_flight.into(),
            r.retries.into(),
            r.read_resends.into(),
            set.cluster().failovers().into(),
        ]);
    }
    t
}

/// The three latency histograms of one (database, user), summed over its hosts.
pub fn latency_of(set: &crate::pool::PoolSet) -> [HistogramSnapshot; 3] {
    let mut out: [HistogramSnapshot; 3] = Default::default();
    for p in set.pools() {
        let s = p.stats();
        out[0].merge(&s.xact.snapshot());
        out[1].merge(&s.query.snapshot());
        out[2].merge(&s.wait.snapshot());
    }
    out
}

fn latency(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        ("database", TEXT),
        ("user", TEXT),
        ("xact_count", NUMERIC),
        ("xact_p50_us", INT8),
        ("xact_p95_us", INT8),
        ("xact_p99_us", INT8),
        ("query_count", NUMERIC),
        ("query_p50_us", INT8),
        ("query_p95_us", INT8),
        ("query_p99_us", INT8),
        ("wait_count", NUMERIC),
        ("wait_p50_us", INT8),
        ("wait_p95_us", INT8),
        ("wait_p99_us", INT8),
    ]);
    let mut sets = shared.pools.sets();
    sets.sort_by(|a, b| a.0.cmp(&b.0));
    // A quantile is the upper bound of the histogram bucket it falls in; NULL when there is
    // no observation or it is beyond the last bound (30 s).
    let q = |h: &HistogramSnapshot, p: f64| -> Val { h.quantile(p).filter(|&v| v != u64::MAX).into() };
    for ((db, user), set) in sets {
        let mut row = vec![Val::from(db), Val::from(user)];
        for h in latency_of(&set) {
            row.extend([h.count().into(), q(&h, 0.5), q(&h, 0.95), q(&h, 0.99)]);
        }
        t.push(row);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_like_pgbouncer() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_464_624);
        assert_eq!(format_time(t), "2026-11-23 20:10:24 UTC");
    }

    #[test]
    fn show_config_never_shows_a_password() {
        let dir = std::env::temp_dir().join(format!("pgsluice-show-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pgsluice.toml");
        std::fs::write(&path, "[general]\nauth_type = \"any\"\nhealth_check_password = \"hunter2-secret\"\n").unwrap();
        let cfg = Config::load(&path).unwrap();
        let values = config_values(&cfg);
        let _ = std::fs::remove_dir_all(&dir);
        let pw = values.iter().find(|(k, _)| k == "health_check_password").expect("listed");
        assert_eq!(pw.1.as_deref(), Some("<redacted>"));
        assert!(!format!("{values:?}").contains("hunter2"));
    }

    #[test]
    fn client_and_server_pointers_differ() {
        assert_ne!(client_ptr(5), server_ptr(5));
        assert_eq!(client_ptr(31), "0x1f");
    }
}
