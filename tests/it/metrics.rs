//! The Prometheus endpoint against real traffic: a scrape while clients run transactions
//! parses, has every promised family with its label names, and once the load stops its
//! values equal the admin console's `SHOW POOLS` and `SHOW STATS_TOTALS` (the latency
//! histograms count every transaction and query, a pinned client is counted); other paths
//! are 404s. HTTP is spoken by hand over a `TcpStream` (HTTP/1.1, `Connection: close`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::*;

/// Every family a scrape of a pooler with one unprobed single-host database, a pool and
/// connected clients has, with its label names. (Lag and timeline are unknown for an
/// unprobed host: those families have no series.)
const FAMILIES: &[(&str, &[&str])] = &[
    ("pgbouncer_up", &[]),
    ("pgbouncer_version_info", &["version"]),
    ("pgbouncer_databases", &[]),
    ("pgbouncer_users", &[]),
    ("pgbouncer_pools", &[]),
    ("pgbouncer_free_clients", &[]),
    ("pgbouncer_used_clients", &[]),
    ("pgbouncer_login_clients", &[]),
    ("pgbouncer_free_servers", &[]),
    ("pgbouncer_used_servers", &[]),
    ("pgbouncer_cached_dns_names", &[]),
    ("pgbouncer_cached_dns_zones", &[]),
    ("pgbouncer_in_flight_dns_queries", &[]),
    ("pgbouncer_config_max_client_connections", &[]),
    ("pgbouncer_config_max_user_connections", &[]),
    ("pgbouncer_client_connections", &["database", "user", "application_name", "state"]),
    ("pgbouncer_databases_pool_size", DATABASE),
    ("pgbouncer_databases_reserve_pool", DATABASE),
    ("pgbouncer_databases_max_connections", DATABASE),
    ("pgbouncer_databases_current_connections", DATABASE),
    ("pgbouncer_databases_paused", DATABASE),
    ("pgbouncer_databases_disabled", DATABASE),
    ("pgbouncer_pools_client_active_connections", POOL),
    ("pgbouncer_pools_client_waiting_connections", POOL),
    ("pgbouncer_pools_client_active_cancel_connections", POOL),
    ("pgbouncer_pools_client_waiting_cancel_connections", POOL),
    ("pgbouncer_pools_server_active_connections", POOL),
    ("pgbouncer_pools_server_active_cancel_connections", POOL),
    ("pgbouncer_pools_server_being_canceled_connections", POOL),
    ("pgbouncer_pools_server_idle_connections", POOL),
    ("pgbouncer_pools_server_used_connections", POOL),
    ("pgbouncer_pools_server_testing_connections", POOL),
    ("pgbouncer_pools_server_login_connections", POOL),
    ("pgbouncer_pools_client_maxwait_seconds", POOL),
    ("pgbouncer_stats_totals_queries_pooled_total", DB),
    ("pgbouncer_stats_totals_queries_duration_seconds_total", DB),
    ("pgbouncer_stats_totals_received_bytes_total", DB),
    ("pgbouncer_stats_totals_sent_bytes_total", DB),
    ("pgbouncer_stats_totals_client_wait_seconds_total", DB),
    ("pgbouncer_stats_totals_sql_transactions_pooled_total", DB),
    ("pgbouncer_stats_totals_server_in_transaction_seconds_total", DB),
    ("pgbouncer_stats_totals_client_parses_total", DB),
    ("pgbouncer_stats_totals_server_parses_total", DB),
    ("pgbouncer_stats_totals_binds_total", DB),
    ("pgbouncer_stats_totals_server_assignments_total", DB),
    ("pgbouncer_stats_queries_pooled_total", DB),
    ("pgbouncer_stats_queries_duration_seconds_total", DB),
    ("pgbouncer_stats_received_bytes_total", DB),
    ("pgbouncer_stats_sent_bytes_total", DB),
    ("pgbouncer_stats_client_wait_seconds_total", DB),
    ("pgbouncer_stats_sql_transactions_pooled_total", DB),
    ("pgbouncer_stats_server_in_transaction_seconds_total", DB),
    ("pgsluice_host_info", &["database", "host", "role", "health"]),
    ("pgsluice_host_up", HOST),
    ("pgsluice_host_primary", HOST),
    ("pgsluice_host_breaker_open", HOST),
    ("pgsluice_host_breaker_state", &["database", "host", "state"]),
    ("pgsluice_host_breaker_refused_total", HOST),
    ("pgsluice_host_probes_total", HOST),
    ("pgsluice_failovers_total", DB),
    ("pgsluice_route_decisions_total", &["database", "user", "decision"]),
    ("pgsluice_route_ryw_waits_total", &["database", "user", "scope"]),
    ("pgsluice_route_ryw_fallbacks_total", &["database", "user", "scope"]),
    ("pgsluice_route_retries_total", POOL),
    ("pgsluice_route_read_resends_total", POOL),
    ("pgsluice_transaction_duration_seconds", POOL),
    ("pgsluice_query_duration_seconds", POOL),
    ("pgsluice_wait_duration_seconds", POOL),
    ("pgsluice_pinned_clients", POOL),
    ("pgsluice_auth_failures_total", &[]),
    ("pgsluice_login_throttled_total", &["outcome"]),
    ("pgsluice_login_throttle_pairs", &[]),
    ("pgsluice_clients_logging_in", &[]),
];

const DATABASE: &[&str] = &["name", "host", "port", "database", "force_user", "pool_mode"];
const POOL: &[&str] = &["database", "user"];
const DB: &[&str] = &["database"];
const HOST: &[&str] = &["database", "host"];

/// `SHOW POOLS` columns and the gauges that mirror them.
const POOL_COLUMNS: &[(&str, &str)] = &[
    ("cl_active", "pgbouncer_pools_client_active_connections"),
    ("cl_waiting", "pgbouncer_pools_client_waiting_connections"),
    ("cl_active_cancel_req", "pgbouncer_pools_client_active_cancel_connections"),
    ("cl_waiting_cancel_req", "pgbouncer_pools_client_waiting_cancel_connections"),
    ("sv_active", "pgbouncer_pools_server_active_connections"),
    ("sv_active_cancel", "pgbouncer_pools_server_active_cancel_connections"),
    ("sv_being_canceled", "pgbouncer_pools_server_being_canceled_connections"),
    ("sv_idle", "pgbouncer_pools_server_idle_connections"),
    ("sv_used", "pgbouncer_pools_server_used_connections"),
    ("sv_tested", "pgbouncer_pools_server_testing_connections"),
    ("sv_login", "pgbouncer_pools_server_login_connections"),
    ("maxwait", "pgbouncer_pools_client_maxwait_seconds"),
    ("cl_pinned", "pgsluice_pinned_clients"),
];

/// `SHOW STATS_TOTALS` columns, the counter that mirrors each, and its divisor (µs → s).
const TOTALS_COLUMNS: &[(&str, &str, f64)] = &[
    ("server_assignment_count", "pgbouncer_stats_totals_server_assignments_total", 1.0),
    ("xact_count", "pgbouncer_stats_totals_sql_transactions_pooled_total", 1.0),
    ("query_count", "pgbouncer_stats_totals_queries_pooled_total", 1.0),
    ("bytes_received", "pgbouncer_stats_totals_received_bytes_total", 1.0),
    ("bytes_sent", "pgbouncer_stats_totals_sent_bytes_total", 1.0),
    ("xact_time", "pgbouncer_stats_totals_server_in_transaction_seconds_total", 1e6),
    ("query_time", "pgbouncer_stats_totals_queries_duration_seconds_total", 1e6),
    ("wait_time", "pgbouncer_stats_totals_client_wait_seconds_total", 1e6),
    ("client_parse_count", "pgbouncer_stats_totals_client_parses_total", 1.0),
    ("server_parse_count", "pgbouncer_stats_totals_server_parses_total", 1.0),
    ("bind_count", "pgbouncer_stats_totals_binds_total", 1.0),
];

/// The v0.10 names, with the v0.11 name each must equal.
const LEGACY: &[(&str, &str)] = &[
    ("pgbouncer_stats_queries_pooled_total", "pgbouncer_stats_totals_queries_pooled_total"),
    ("pgbouncer_stats_queries_duration_seconds_total", "pgbouncer_stats_totals_queries_duration_seconds_total"),
    ("pgbouncer_stats_received_bytes_total", "pgbouncer_stats_totals_received_bytes_total"),
    ("pgbouncer_stats_sent_bytes_total", "pgbouncer_stats_totals_sent_bytes_total"),
    ("pgbouncer_stats_client_wait_seconds_total", "pgbouncer_stats_totals_client_wait_seconds_total"),
    ("pgbouncer_stats_sql_transactions_pooled_total", "pgbouncer_stats_totals_sql_transactions_pooled_total"),
    (
        "pgbouncer_stats_server_in_transaction_seconds_total",
        "pgbouncer_stats_totals_server_in_transaction_seconds_total",
    ),
];

// === a tiny HTTP client and text-format parser ===

/// A response: status code, lower-cased header names, body.
struct HttpResponse {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// `GET path` over a fresh connection.
async fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.expect("connect to /metrics");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        String::from_utf8(raw).expect("UTF-8 response")
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), exchange).await.expect("HTTP response within 5 s");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {raw:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status code");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpResponse { status, headers, body: body.to_string() }
}

/// One sample line: `name{k="v",...} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: `# TYPE` per family and every sample.
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

fn parse_exposition(text: &str) -> Exposition {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "two TYPE lines for {name}");
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}').unwrap_or_else(|| panic!("bad labels in {line:?}"))),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
            // Values are escaped (\\, \", \n); the test's values have none of those.
            let end = after.find('"').unwrap_or_else(|| panic!("unterminated label value in {line:?}"));
            map.insert(k.to_string(), after[..end].to_string());
            rest = after[end + 1..].strip_prefix(',').unwrap_or(&after[end + 1..]);
        }
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        assert!(!name.is_empty(), "sample without name: {line:?}");
        samples.push(Sample { name: name.to_string(), labels: map, value });
    }
    Exposition { types, samples }
}

impl Exposition {
    /// The family a sample belongs to (histogram samples have suffixes).
    fn family_of<'a>(&self, sample: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(f) = sample.strip_suffix(suffix) {
                if self.types.get(f).map(String::as_str) == Some("histogram") {
                    return f;
                }
            }
        }
        sample
    }

    /// The value of the one sample named `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        assert_eq!(found.len(), 1, "samples {name} {labels:?}: {found:?}");
        found[0].value
    }

    /// Every sample of `name`.
    fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

/// Scrapes `/metrics`, checking status and content type.
async fn scrape(addr: SocketAddr) -> Exposition {
    let r = http_get(addr, "/metrics").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers.get("content-type").map(String::as_str), Some("text/plain; version=0.0.4"));
    parse_exposition(&r.body)
}

/// Rows of an admin `SHOW`, as column → value maps (NULL as `""`).
async fn show(admin: &Client, what: &str) -> Vec<BTreeMap<String, String>> {
    let msgs = admin.simple_query(&format!("SHOW {what}")).await.unwrap_or_else(|e| panic!("SHOW {what}: {e}"));
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Differences between `SHOW POOLS` rows and the pool gauges (empty: they agree).
fn pools_mismatch(rows: &[BTreeMap<String, String>], m: &Exposition) -> Vec<String> {
    let mut diffs = Vec::new();
    for (column, metric) in POOL_COLUMNS {
        let series = m.all(metric);
        if series.len() != rows.len() {
            diffs.push(format!("{metric}: {} series, SHOW POOLS has {} rows", series.len(), rows.len()));
        }
        for row in rows {
            let (db, user) = (row["database"].as_str(), row["user"].as_str());
            let shown: f64 = row[*column].parse().unwrap();
            let got = series.iter().find(|s| s.labels["database"] == db && s.labels["user"] == user).map(|s| s.value);
            if got != Some(shown) {
                diffs.push(format!("{metric}{{{db},{user}}} = {got:?}, SHOW POOLS {column} = {shown}"));
            }
        }
    }
    diffs
}

/// A client running `BEGIN; SELECT 1; SELECT $1 (extended); COMMIT` until `stop`; counts
/// each committed transaction in `done`. Returns the client, still connected.
async fn run_transactions(client: Client, id: i32, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> Client {
    let mut client = client;
    while !stop.load(Ordering::Relaxed) {
        let tx = client.transaction().await.expect("BEGIN");
        tx.batch_execute("SELECT 1").await.expect("simple query");
        let v: i32 = tx.query_one("SELECT $1::int4", &[&id]).await.expect("extended query").get(0);
        assert_eq!(v, id);
        tx.commit().await.expect("COMMIT");
        done.fetch_add(1, Ordering::Relaxed);
    }
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrape_under_load_matches_the_admin_console() {
    let db = fresh_db("metrics");
    let p = pooler()
        .general(&format!("admin_users = [\"{}\"]", db.name))
        .database(&db, &["pool_size = 2"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let shared = p.handle.as_ref().expect("running").shared.clone();
    let addr = pgsluice::metrics::serve(shared, "127.0.0.1:0".parse().unwrap()).await.expect("serve /metrics");
    assert_ne!(addr.port(), 0);

    // Four clients over a pool of two: some wait for a server.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for id in 0..4 {
        let client = p.connect(&db).await;
        load.push(tokio::spawn(run_transactions(client, id, stop.clone(), done.clone())));
    }

    // A scrape in the middle of the load.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let during = scrape(addr).await;
    let expected: BTreeSet<&str> = FAMILIES.iter().map(|(n, _)| *n).collect();
    let listed: BTreeSet<&str> = pgsluice::metrics::family_names().into_iter().collect();
    assert!(expected.is_subset(&listed), "not in family_names(): {:?}", expected.difference(&listed));
    let present: BTreeSet<&str> = during.types.keys().map(String::as_str).collect();
    assert_eq!(
        present,
        expected,
        "missing {:?}, unexpected {:?}",
        expected.difference(&present).collect::<Vec<_>>(),
        present.difference(&expected).collect::<Vec<_>>()
    );
    for (family, labels) in FAMILIES {
        let want: BTreeSet<&str> = labels.iter().copied().collect();
        let samples: Vec<&Sample> = during.samples.iter().filter(|s| during.family_of(&s.name) == *family).collect();
        assert!(!samples.is_empty(), "{family} has no samples");
        for s in samples {
            let got: BTreeSet<&str> = s.labels.keys().map(String::as_str).filter(|k| *k != "le").collect();
            assert_eq!(got, want, "label names of {s:?}");
        }
    }
    let mut series = BTreeSet::new();
    for s in &during.samples {
        assert!(series.insert((s.name.as_str(), &s.labels)), "duplicate series {s:?}");
    }
    let dbl = [("database", db.name.as_str())];
    assert!(during.get("pgbouncer_stats_totals_sql_transactions_pooled_total", &dbl) > 0.0, "traffic is counted live");
    assert_eq!(during.get("pgbouncer_up", &[]), 1.0);

    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, Ordering::Relaxed);
    let mut clients = Vec::new();
    for t in load {
        clients.push(t.await.expect("load task"));
    }
    let ran = done.load(Ordering::Relaxed);
    assert!(ran >= 4, "only {ran} transactions ran");

    // Transactions are counted when their ReadyForQuery is relayed: let the last ones land.
    let settled = eventually(Duration::from_secs(3), || {
        p.handle.as_ref().unwrap().shared.totals_by_database().get(&db.name).is_some_and(|t| t.xact_count == ran)
    })
    .await;
    assert!(settled, "the pooler did not count {ran} transactions");

    let admin = p.try_connect(&db.name, &db.password, "pgbouncer").await.expect("admin console login");
    let after = scrape(addr).await;
    assert_eq!(after.get("pgbouncer_stats_totals_sql_transactions_pooled_total", &dbl), ran as f64);
    assert_eq!(after.get("pgbouncer_stats_sql_transactions_pooled_total", &dbl), ran as f64);

    // SHOW STATS_TOTALS: nothing moves any more, so one look each is exact.
    let totals = show(&admin, "STATS_TOTALS").await;
    let row = totals.iter().find(|r| r["database"] == db.name).expect("our database in SHOW STATS_TOTALS");
    for (column, metric, divisor) in TOTALS_COLUMNS {
        let shown: f64 = row[*column].parse().unwrap();
        let got = after.get(metric, &dbl);
        assert_eq!((got * divisor).round(), shown, "{metric} = {got}, SHOW STATS_TOTALS {column} = {shown}");
    }
    for (old, new) in LEGACY {
        assert_eq!(after.get(old, &dbl), after.get(new, &dbl), "{old} and {new}");
    }
    for metric in [
        "pgbouncer_stats_totals_queries_pooled_total",
        "pgbouncer_stats_totals_received_bytes_total",
        "pgbouncer_stats_totals_sent_bytes_total",
        "pgbouncer_stats_totals_queries_duration_seconds_total",
        "pgbouncer_stats_totals_server_in_transaction_seconds_total",
        "pgbouncer_stats_totals_client_parses_total",
        "pgbouncer_stats_totals_binds_total",
        "pgbouncer_stats_totals_server_assignments_total",
    ] {
        assert!(after.get(metric, &dbl) > 0.0, "{metric} after traffic");
    }

    // The latency histograms (one user, one host: the set is the whole database) count
    // every transaction, query and server assignment, and sum their times.
    let set = [("database", db.name.as_str()), ("user", db.name.as_str())];
    for (histogram, count, seconds) in [
        (
            "pgsluice_transaction_duration_seconds",
            "pgbouncer_stats_totals_sql_transactions_pooled_total",
            "pgbouncer_stats_totals_server_in_transaction_seconds_total",
        ),
        (
            "pgsluice_query_duration_seconds",
            "pgbouncer_stats_totals_queries_pooled_total",
            "pgbouncer_stats_totals_queries_duration_seconds_total",
        ),
        (
            "pgsluice_wait_duration_seconds",
            "pgbouncer_stats_totals_server_assignments_total",
            "pgbouncer_stats_totals_client_wait_seconds_total",
        ),
    ] {
        let n = after.get(count, &dbl);
        assert_eq!(after.get(&format!("{histogram}_count"), &set), n, "{histogram} count and {count}");
        assert_eq!(after.get(&format!("{histogram}_bucket"), &[set[0], set[1], ("le", "+Inf")]), n, "{histogram}");
        let sum = after.get(&format!("{histogram}_sum"), &set);
        assert!((sum - after.get(seconds, &dbl)).abs() < 1e-6, "{histogram} sum {sum} and {seconds}");
        let buckets = after.all(&format!("{histogram}_bucket"));
        assert_eq!(buckets.len(), 18, "{histogram}: 17 bounds and +Inf");
        assert!(buckets.windows(2).all(|w| w[0].value <= w[1].value), "{histogram} buckets are cumulative");
    }
    assert_eq!(after.get("pgsluice_transaction_duration_seconds_count", &set), ran as f64, "after {ran} transactions");

    // SHOW ROUTES against the routing counters.
    let routes = show(&admin, "ROUTES").await;
    let row = routes.iter().find(|r| r["database"] == db.name).expect("our pool set in SHOW ROUTES");
    for decision in ["reads_replica", "reads_primary", "writes", "fallbacks"] {
        let got = after.get("pgsluice_route_decisions_total", &[set[0], set[1], ("decision", decision)]);
        assert_eq!(got, row[decision].parse::<f64>().unwrap(), "decision {decision}");
    }
    assert_eq!(after.get("pgsluice_route_ryw_waits_total", &set), row["ryw_waits"].parse::<f64>().unwrap());
    assert_eq!(after.get("pgsluice_route_ryw_fallbacks_total", &set), row["ryw_fallbacks"].parse::<f64>().unwrap());
    assert_eq!(after.get("pgsluice_route_retries_total", &set), row["retries"].parse::<f64>().unwrap());
    assert_eq!(after.get("pgsluice_route_read_resends_total", &set), row["read_resends"].parse::<f64>().unwrap());
    assert_eq!(after.get("pgsluice_failovers_total", &dbl), row["failovers"].parse::<f64>().unwrap());

    // Clients: the four idle ones and the console's.
    let clients_l = [("database", db.name.as_str()), ("user", db.name.as_str()), ("state", "idle")];
    assert_eq!(after.get("pgbouncer_client_connections", &clients_l), 4.0);
    assert_eq!(after.get("pgbouncer_client_connections", &[("database", "pgbouncer")]), 1.0);
    assert_eq!(after.get("pgbouncer_used_clients", &[]), 5.0);

    assert_eq!(after.get("pgsluice_pinned_clients", &set), 0.0);

    // One client takes a session-level advisory lock: pinned to its server until it lets go.
    clients[0].simple_query("SELECT pg_advisory_lock(4242)").await.expect("advisory lock");

    // SHOW POOLS against the gauges, right after each other (a connection being checked in
    // could move between the two: look again a few times before calling it a mismatch).
    let mut diffs = Vec::new();
    for _ in 0..20 {
        let rows = show(&admin, "POOLS").await;
        let m = scrape(addr).await;
        diffs = pools_mismatch(&rows, &m);
        if diffs.is_empty() {
            let ours = rows.iter().find(|r| r["database"] == db.name).expect("our pool in SHOW POOLS");
            assert_eq!(ours["cl_pinned"], "1", "the locking client is pinned");
            assert!(rows.iter().any(|r| r["database"] == "pgbouncer"), "the console's row in SHOW POOLS");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(diffs.is_empty(), "SHOW POOLS and /metrics differ: {diffs:#?}");
    clients[0].simple_query("SELECT pg_advisory_unlock_all()").await.expect("unlock");
    assert_eq!(scrape(addr).await.get("pgsluice_pinned_clients", &set), 0.0, "unpinned");

    // SHOW DATABASES against the database gauges.
    let dbs = show(&admin, "DATABASES").await;
    let m = scrape(addr).await;
    for row in &dbs {
        let l: Vec<(&str, &str)> = DATABASE.iter().map(|c| (*c, row[*c].as_str())).collect();
        for (column, metric) in
            [("pool_size", "pgbouncer_databases_pool_size"), ("paused", "pgbouncer_databases_paused")]
        {
            assert_eq!(m.get(metric, &l), row[column].parse::<f64>().unwrap(), "{metric} {l:?}");
        }
    }
    assert_eq!(m.all("pgbouncer_databases_pool_size").len(), dbs.len());
    drop(clients);
}

#[tokio::test]
async fn other_paths_are_not_found() {
    let db = fresh_db("metrics404");
    let p = pooler().database(&db, &[]).user(&db.name, &db.password).start().await;
    let shared = p.handle.as_ref().expect("running").shared.clone();
    let addr = pgsluice::metrics::serve(shared, "127.0.0.1:0".parse().unwrap()).await.expect("serve /metrics");
    for path in ["/", "/metric", "/metrics/", "/metricsx", "/favicon.ico"] {
        let r = http_get(addr, path).await;
        assert_eq!(r.status, 404, "GET {path}: {}", r.body);
    }
    // The real path still answers, with a query string too.
    let r = http_get(addr, "/metrics?name[]=pgbouncer_up").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("\npgbouncer_up 1\n"), "{}", r.body);
}
