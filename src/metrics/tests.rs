//! Unit tests of the endpoint: rendering from a `Shared` with no PostgreSQL behind it
//! (values, units, label uniqueness), the list of family names, the HTTP routing, and the
//! docs: docs/metrics.md has a row per family, docs/grafana-dashboard.json parses and reads
//! only families the endpoint produces.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::Config;
use crate::stats::ClientInfo;

/// Two databases (one with a fixed user and its own pool mode), an admin user.
fn shared() -> Arc<Shared> {
    let text = r#"
[general]
auth_type = "any"
max_client_conn = 321
admin_users = ["admin"]

[databases.app]
hosts = ["127.0.0.1:5432"]
pool_size = 7

[databases.other]
hosts = ["127.0.0.1:5433"]
user = "fixed"
pool_mode = "session"
"#;
    Shared::new(Config::from_str(text, Path::new("/nonexistent/pgsluice.toml")).expect("config"))
}

/// One parsed sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text format: `# TYPE` lines into name → type, samples into a list.
fn parse(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "family {name} twice");
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once("=\"").expect("label pair");
                (k.to_string(), v.trim_end_matches('"').to_string())
            })
            .collect();
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
        };
        samples.push(Sample { name: name.to_string(), labels, value });
    }
    (types, samples)
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v)))
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    find(samples, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?}")).value
}

/// The pools of user alice on database app (created on first use).
fn alice_pools(shared: &Shared) -> crate::pool::PoolSet {
    let cfg = shared.config.load_full();
    let cluster = shared.cluster("app").unwrap();
    shared.pools.get_or_create(&cfg, &cluster, &cfg.databases["app"], "alice")
}

fn client(shared: &Shared, db: &str, user: &str, app: &str, admin: bool) -> crate::stats::Registration {
    let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let id = shared.next_client_id();
    shared.clients.register(ClientInfo::new(id, db.into(), user.into(), user.into(), addr, None, false, app, 1, admin))
}

#[test]
fn every_family_has_help_type_and_unique_label_sets() {
    let shared = shared();
    let set = alice_pools(&shared);
    set.pools()[0].stats().assigned(Duration::from_micros(300));
    let _c1 = client(&shared, "app", "alice", "psql", false);
    let _c2 = client(&shared, "app", "alice", "psql", false);
    let _c3 = client(&shared, "pgbouncer", "admin", "", true);

    let text = render(&shared);
    let (types, samples) = parse(&text);
    for (name, kind) in &types {
        assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}");
        assert!(["gauge", "counter", "histogram"].contains(&kind.as_str()), "{name}: {kind}");
        assert!(
            name.starts_with("pgbouncer_") || name.starts_with("pgsluice_"),
            "{name} is outside the two namespaces"
        );
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} must end in _total");
        }
    }
    // Unique (name, labels) over all samples (histogram bucket lines differ by `le`).
    let mut seen = BTreeSet::new();
    for s in &samples {
        assert!(seen.insert((s.name.clone(), s.labels.clone())), "duplicate series {s:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| s.name.strip_suffix(suf).filter(|f| types.get(*f).map(String::as_str) == Some("histogram")))
            .unwrap_or(&s.name);
        assert!(types.contains_key(family), "sample {} has no TYPE", s.name);
    }
    // Label names are the same on every series of a family.
    let mut label_names: BTreeMap<&str, BTreeSet<&String>> = BTreeMap::new();
    for s in &samples {
        let names: BTreeSet<&String> = s.labels.keys().filter(|k| *k != "le").collect();
        let prev = label_names.entry(&s.name).or_insert_with(|| names.clone());
        assert_eq!(*prev, names, "label names of {}", s.name);
    }
}

#[test]
fn values_follow_the_admin_console() {
    let shared = shared();
    let set = alice_pools(&shared);
    let stats = set.pools()[0].stats();
    stats.assigned(Duration::from_micros(300));
    stats.assigned(Duration::from_millis(20));
    stats.xact_count.fetch_add(5, std::sync::atomic::Ordering::Relaxed);
    stats.query_time.fetch_add(2_500_000, std::sync::atomic::Ordering::Relaxed);
    // Five transactions (as the relay records them, with their counter above), two queries.
    for us in [80, 400, 400, 3_000, 45_000_000] {
        stats.xact.observe(us);
    }
    stats.query.observe(1_000);
    stats.query.observe(1_001);
    let c1 = client(&shared, "app", "alice", "psql", false);
    c1.info.set_pinned(true);
    let _c2 = client(&shared, "app", "alice", "psql", false);
    let _c3 = client(&shared, "pgbouncer", "admin", "", true);
    shared.auth_failures.fetch_add(3, std::sync::atomic::Ordering::Relaxed);

    let (_, s) = parse(&render(&shared));
    assert_eq!(value(&s, "pgbouncer_up", &[]), 1.0);
    let v = find(&s, "pgbouncer_version_info", &[]).unwrap();
    assert_eq!(v.labels["version"], format!("pgsluice {}", crate::VERSION_NUMBER));
    assert_eq!(value(&s, "pgbouncer_config_max_client_connections", &[]), 321.0);
    // Two databases plus the console; one pool plus the console's.
    assert_eq!(value(&s, "pgbouncer_databases", &[]), 3.0);
    assert_eq!(value(&s, "pgbouncer_pools", &[]), 2.0);
    assert_eq!(value(&s, "pgbouncer_used_clients", &[]), 3.0);
    // Clients grouped; the console's client is in its own pool row.
    let alice = [("database", "app"), ("user", "alice"), ("application_name", "psql"), ("state", "idle")];
    assert_eq!(value(&s, "pgbouncer_client_connections", &alice), 2.0);
    assert_eq!(value(&s, "pgbouncer_pools_client_active_connections", &[("database", "app"), ("user", "alice")]), 2.0);
    let console = [("database", "pgbouncer"), ("user", "pgbouncer")];
    assert_eq!(value(&s, "pgbouncer_pools_client_active_connections", &console), 1.0);
    // SHOW DATABASES: NULL labels are "", the section's own pool mode is kept.
    let app = [("name", "app"), ("host", "127.0.0.1"), ("port", "5432"), ("force_user", ""), ("pool_mode", "")];
    assert_eq!(value(&s, "pgbouncer_databases_pool_size", &app), 7.0);
    let other = [("name", "other"), ("force_user", "fixed"), ("pool_mode", "session")];
    assert!(find(&s, "pgbouncer_databases_disabled", &other).is_some());
    let admin_db = [("name", "pgbouncer"), ("host", "")];
    assert!(find(&s, "pgbouncer_databases_current_connections", &admin_db).is_some());
    // Totals: µs become seconds; both the new and the v0.10 names; configured databases
    // without traffic are there with zeros.
    let db = [("database", "app")];
    assert_eq!(value(&s, "pgbouncer_stats_totals_sql_transactions_pooled_total", &db), 5.0);
    assert_eq!(value(&s, "pgbouncer_stats_sql_transactions_pooled_total", &db), 5.0);
    assert_eq!(value(&s, "pgbouncer_stats_totals_queries_duration_seconds_total", &db), 2.5);
    assert_eq!(value(&s, "pgbouncer_stats_queries_duration_seconds_total", &db), 2.5);
    assert_eq!(value(&s, "pgbouncer_stats_totals_server_assignments_total", &db), 2.0);
    assert!((value(&s, "pgbouncer_stats_totals_client_wait_seconds_total", &db) - 0.0203).abs() < 1e-9);
    assert_eq!(value(&s, "pgbouncer_stats_totals_sql_transactions_pooled_total", &[("database", "other")]), 0.0);
    // Histograms in seconds, cumulative, with +Inf = count; bounds are LATENCY_BUCKETS_US.
    let set_l = [("database", "app"), ("user", "alice")];
    let bucket = |h: &str, le: &str| value(&s, &format!("{h}_bucket"), &[set_l[0], set_l[1], ("le", le)]);
    let wait = "pgsluice_wait_duration_seconds";
    assert_eq!(bucket(wait, "0.00025"), 0.0);
    assert_eq!(bucket(wait, "0.0005"), 1.0);
    assert_eq!(bucket(wait, "0.025"), 2.0);
    assert_eq!(bucket(wait, "+Inf"), 2.0);
    assert_eq!(value(&s, "pgsluice_wait_duration_seconds_count", &set_l), 2.0);
    assert!((value(&s, "pgsluice_wait_duration_seconds_sum", &set_l) - 0.0203).abs() < 1e-9);
    let les: Vec<String> = s
        .iter()
        .filter(|x| x.name == "pgsluice_transaction_duration_seconds_bucket")
        .map(|x| x.labels["le"].clone())
        .collect();
    let want: Vec<String> =
        LATENCY_BUCKETS_US.iter().map(|&us| (us as f64 / 1e6).to_string()).chain(["+Inf".to_string()]).collect();
    assert_eq!(les, want, "bucket bounds");
    let xact = "pgsluice_transaction_duration_seconds";
    assert_eq!(bucket(xact, "0.0001"), 1.0);
    assert_eq!(bucket(xact, "0.0005"), 3.0);
    assert_eq!(bucket(xact, "0.005"), 4.0);
    assert_eq!(bucket(xact, "30"), 4.0, "45 s is past the last bound");
    assert_eq!(bucket(xact, "+Inf"), 5.0);
    // The count is SHOW STATS_TOTALS' xact_count (one user, one host here).
    assert_eq!(value(&s, "pgsluice_transaction_duration_seconds_count", &set_l), 5.0);
    assert!((value(&s, "pgsluice_transaction_duration_seconds_sum", &set_l) - 45.00388).abs() < 1e-9);
    let query = "pgsluice_query_duration_seconds";
    assert_eq!(bucket(query, "0.001"), 1.0);
    assert_eq!(bucket(query, "0.0025"), 2.0);
    assert_eq!(value(&s, "pgsluice_query_duration_seconds_count", &set_l), 2.0);
    assert!((value(&s, "pgsluice_query_duration_seconds_sum", &set_l) - 0.002001).abs() < 1e-12);
    // Pinned clients: SHOW POOLS' cl_pinned, the console's row included.
    assert_eq!(value(&s, "pgsluice_pinned_clients", &set_l), 1.0);
    assert_eq!(value(&s, "pgsluice_pinned_clients", &console), 0.0);
    // Hosts of unprobed databases: host 0 is the primary, up, breaker closed.
    let h = [("database", "app"), ("host", "127.0.0.1:5432")];
    assert_eq!(value(&s, "pgsluice_host_up", &h), 1.0);
    assert_eq!(value(&s, "pgsluice_host_primary", &h), 1.0);
    assert_eq!(value(&s, "pgsluice_host_breaker_open", &h), 0.0);
    assert_eq!(value(&s, "pgsluice_host_breaker_state", &[h[0], h[1], ("state", "closed")]), 1.0);
    assert_eq!(value(&s, "pgsluice_host_breaker_state", &[h[0], h[1], ("state", "open")]), 0.0);
    let info = find(&s, "pgsluice_host_info", &h).unwrap();
    assert_eq!((info.labels["role"].as_str(), info.labels["health"].as_str()), ("primary", "up"));
    assert!(find(&s, "pgsluice_host_lag_bytes", &[]).is_none(), "no lag series while unknown");
    assert_eq!(value(&s, "pgsluice_failovers_total", &[("database", "other")]), 0.0);
    assert_eq!(value(&s, "pgsluice_route_decisions_total", &[set_l[0], set_l[1], ("decision", "writes")]), 0.0);
    assert_eq!(value(&s, "pgsluice_auth_failures_total", &[]), 3.0);
    assert_eq!(value(&s, "pgsluice_clients_logging_in", &[]), 0.0);
}

#[test]
fn no_pools_no_clients_still_renders() {
    let shared = shared();
    let (types, s) = parse(&render(&shared));
    assert_eq!(value(&s, "pgbouncer_up", &[]), 1.0);
    // The console's pool row is always there; no (database, user) set yet.
    assert!(types.contains_key("pgbouncer_pools_server_idle_connections"));
    for h in
        ["pgsluice_transaction_duration_seconds", "pgsluice_query_duration_seconds", "pgsluice_wait_duration_seconds"]
    {
        assert!(!types.contains_key(h), "{h} without a pool set");
    }
    assert_eq!(value(&s, "pgsluice_pinned_clients", &[("database", "pgbouncer")]), 0.0);
    // The console's own client is not connected: no client series at all.
    assert!(!types.contains_key("pgbouncer_client_connections"));
}

#[tokio::test]
async fn serves_metrics_and_404() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let shared = shared();
    let addr = serve(shared.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    assert_ne!(addr.port(), 0);
    let get = |path: &'static str, method: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let ok = get("/metrics", "GET").await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{ok}");
    assert!(ok.contains("\npgbouncer_up 1\n"), "{ok}");
    let head = get("/metrics?x=1", "HEAD").await;
    assert!(head.starts_with("HTTP/1.1 200") && !head.contains("pgbouncer_up"), "{head}");
    assert!(get("/", "GET").await.starts_with("HTTP/1.1 404"));
    assert!(get("/metricsx", "GET").await.starts_with("HTTP/1.1 404"));
    let post = get("/metrics", "POST").await;
    assert!(post.starts_with("HTTP/1.1 405") && post.to_ascii_lowercase().contains("allow: get, head"), "{post}");
    // The endpoint does not keep a stopped pooler alive.
    drop(shared);
    assert!(get("/metrics", "GET").await.starts_with("HTTP/1.1 503"));
}

#[tokio::test]
async fn idle_sockets_cannot_lock_a_scraper_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let shared = shared();
    let addr = serve(shared.clone(), "127.0.0.1:0".parse().unwrap()).await.unwrap();
    // 100 connections that send nothing, more than the endpoint keeps open.
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A scrape is answered at once...
    let scrape = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let out = tokio::time::timeout(Duration::from_secs(5), scrape).await.expect("a scrape within 5 s");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // ... because the oldest idle ones were closed to make room.
    let mut closed = 0;
    for s in &mut idle {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert!(closed >= 100 - 64, "{closed} of 100 idle connections closed");
}

#[test]
fn family_names_list_every_rendered_family_once() {
    let shared = shared();
    let set = alice_pools(&shared);
    set.pools()[0].stats().assigned(Duration::from_micros(300));
    let _c1 = client(&shared, "app", "alice", "psql", false);

    let names = family_names();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "a family listed twice");
    let specs: BTreeMap<&str, &Spec> = pgbouncer::specs().chain(sluice::specs()).map(|s| (s.name, s)).collect();
    let text = render(&shared);
    let (types, _) = parse(&text);
    for (name, kind) in &types {
        let spec = specs.get(name.as_str()).unwrap_or_else(|| panic!("{name} is rendered but not listed"));
        let want = match spec.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        };
        assert_eq!(kind, want, "{name}");
    }
    // Rendered in output order: the listed order, less the families without a series.
    let rendered: Vec<&str> = types.keys().map(String::as_str).collect();
    let listed: Vec<&str> = names.iter().copied().filter(|n| types.contains_key(*n)).collect();
    let mut in_order: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    assert_eq!(in_order, listed);
    in_order.sort_unstable();
    assert_eq!(in_order, rendered);
    // Only lag and timeline (unknown until a probe) and the LISTEN hubs (none until a client
    // listens) are missing from this fixture.
    let missing: Vec<&str> = names.iter().copied().filter(|n| !types.contains_key(*n)).collect();
    assert_eq!(
        missing,
        [
            "pgsluice_host_lag_bytes",
            "pgsluice_host_lag_seconds",
            "pgsluice_host_timeline",
            "pgsluice_listen_hub_connected",
            "pgsluice_listen_hub_channels",
            "pgsluice_listen_hub_subscribers",
            "pgsluice_listen_notifications_total",
            "pgsluice_listen_hub_lost_total"
        ]
    );
}

/// docs/metrics.md has a table row for every family.
#[test]
fn docs_describe_every_family() {
    let doc = include_str!("../../docs/metrics.md");
    for name in family_names() {
        assert!(doc.contains(&format!("| `{name}`")), "docs/metrics.md has no row for {name}");
    }
}

/// Every metric an expression of docs/grafana-dashboard.json reads is one the endpoint
/// produces (histogram samples by their `_bucket`, `_sum`, `_count` names).
#[test]
fn dashboard_reads_only_rendered_families() {
    let text = include_str!("../../docs/grafana-dashboard.json");
    let dashboard = json::parse(text).unwrap_or_else(|e| panic!("docs/grafana-dashboard.json: {e}"));
    let specs: BTreeMap<&str, Kind> = pgbouncer::specs().chain(sluice::specs()).map(|s| (s.name, s.kind)).collect();
    let mut exprs = Vec::new();
    dashboard.strings_under(&["expr", "query", "definition"], &mut exprs);
    assert!(exprs.len() > 20, "only {} expressions found", exprs.len());
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for name in metric_names(expr) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suf| name.strip_suffix(suf).filter(|f| specs.get(f) == Some(&Kind::Histogram)))
                .unwrap_or(name);
            assert!(specs.contains_key(family), "{name} (in {expr:?}) is not a metric pgsluice produces");
            used.insert(family);
        }
        if expr.contains("histogram_quantile") {
            assert!(expr.contains("_bucket{") && expr.contains("by (le"), "a quantile over buckets by le: {expr}");
        }
    }
    for must in [
        "pgbouncer_pools_client_waiting_connections",
        "pgbouncer_databases_pool_size",
        "pgsluice_transaction_duration_seconds",
        "pgsluice_query_duration_seconds",
        "pgsluice_wait_duration_seconds",
        "pgsluice_host_lag_seconds",
        "pgsluice_host_lag_bytes",
        "pgsluice_pinned_clients",
    ] {
        assert!(used.contains(must), "the dashboard has no panel reading {must}");
    }
    // Importable: a Prometheus datasource input and the two template variables.
    let ds = json::Value::Str("DS_PROMETHEUS".into());
    let Some(json::Value::Arr(inputs)) = dashboard.get("__inputs") else { panic!("no __inputs") };
    assert!(inputs.iter().any(|i| i.get("name") == Some(&ds)), "no DS_PROMETHEUS input");
    let mut vars = Vec::new();
    if let Some(json::Value::Arr(list)) = dashboard.get("templating").and_then(|t| t.get("list")) {
        for v in list {
            if let Some(json::Value::Str(n)) = v.get("name") {
                vars.push(n.as_str());
            }
        }
    }
    assert!(vars.contains(&"database") && vars.contains(&"user"), "template variables: {vars:?}");
}

/// Identifiers of a PromQL expression that name a pgbouncer_/pgsluice_ metric.
fn metric_names(expr: &str) -> Vec<&str> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find(|c: char| is_ident(c)) {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        let word = &tail[..end];
        // Not a Grafana variable (`$name`).
        let prev = rest[..start].chars().next_back();
        if (word.starts_with("pgbouncer_") || word.starts_with("pgsluice_")) && prev != Some('$') {
            out.push(word);
        }
        rest = &tail[end..];
    }
    out
}

/// A minimal JSON reader (the crate has no JSON dependency): enough to check the dashboard
/// file parses and to walk its values.
mod json {
    /// A JSON value (numbers are kept as text).
    #[derive(Debug, PartialEq)]
    pub enum Value {
        Null,
        Bool(bool),
        Num(String),
        Str(String),
        Arr(Vec<Value>),
        Obj(Vec<(String, Value)>),
    }

    impl Value {
        /// The member `key` of an object.
        pub fn get(&self, key: &str) -> Option<&Value> {
            match self {
                Value::Obj(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }

        /// Every string that is the value of a member named one of `keys`, at any depth.
        pub fn strings_under<'a>(&'a self, keys: &[&str], out: &mut Vec<&'a str>) {
            match self {
                Value::Obj(m) => {
                    for (k, v) in m {
                        if let (true, Value::Str(s)) = (keys.contains(&k.as_str()), v) {
                            out.push(s);
                        }
                        v.strings_under(keys, out);
                    }
                }
                Value::Arr(a) => a.iter().for_each(|v| v.strings_under(keys, out)),
                _ => {}
            }
        }
    }

    /// Parses a whole document.
    pub fn parse(text: &str) -> Result<Value, String> {
        let mut p = Parser { b: text.as_bytes(), i: 0 };
        let v = p.value()?;
        p.ws();
        if p.i != p.b.len() {
            return Err(p.err("trailing text"));
        }
        Ok(v)
    }

    struct Parser<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn err(&self, what: &str) -> String {
            let line = self.b[..self.i.min(self.b.len())].iter().filter(|&&c| c == b'\n').count() + 1;
            format!("{what} at line {line}")
        }

        fn ws(&mut self) {
            while self.b.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
                self.i += 1;
            }
        }

        fn eat(&mut self, c: u8) -> bool {
            self.ws();
            let hit = self.b.get(self.i) == Some(&c);
            self.i += usize::from(hit);
            hit
        }

        fn value(&mut self) -> Result<Value, String> {
            self.ws();
            match self.b.get(self.i) {
                Some(b'{') => {
                    self.i += 1;
                    let mut m = Vec::new();
                    if self.eat(b'}') {
                        return Ok(Value::Obj(m));
                    }
                    loop {
                        self.ws();
                        let k = self.string()?;
                        if !self.eat(b':') {
                            return Err(self.err("expected ':'"));
                        }
                        m.push((k, self.value()?));
                        if self.eat(b'}') {
                            return Ok(Value::Obj(m));
                        }
                        if !self.eat(b',') {
                            return Err(self.err("expected ',' or '}'"));
                        }
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    let mut a = Vec::new();
                    if self.eat(b']') {
                        return Ok(Value::Arr(a));
                    }
                    loop {
                        a.push(self.value()?);
                        if self.eat(b']') {
                            return Ok(Value::Arr(a));
                        }
                        if !self.eat(b',') {
                            return Err(self.err("expected ',' or ']'"));
                        }
                    }
                }
                Some(b'"') => self.string().map(Value::Str),
                Some(b't') => self.word("true", Value::Bool(true)),
                Some(b'f') => self.word("false", Value::Bool(false)),
                Some(b'n') => self.word("null", Value::Null),
                Some(c) if *c == b'-' || c.is_ascii_digit() => {
                    let start = self.i;
                    while self
                        .b
                        .get(self.i)
                        .is_some_and(|c| matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    {
                        self.i += 1;
                    }
                    let n = std::str::from_utf8(&self.b[start..self.i]).unwrap();
                    n.parse::<f64>().map_err(|_| self.err("bad number"))?;
                    Ok(Value::Num(n.to_string()))
                }
                _ => Err(self.err("expected a value")),
            }
        }

        fn word(&mut self, w: &str, v: Value) -> Result<Value, String> {
            if self.b[self.i..].starts_with(w.as_bytes()) {
                self.i += w.len();
                Ok(v)
            } else {
                Err(self.err("bad literal"))
            }
        }

        fn string(&mut self) -> Result<String, String> {
            if self.b.get(self.i) != Some(&b'"') {
                return Err(self.err("expected a string"));
            }
            self.i += 1;
            let mut out = Vec::new();
            loop {
                let Some(&c) = self.b.get(self.i) else { return Err(self.err("unterminated string")) };
                self.i += 1;
                match c {
                    b'"' => return String::from_utf8(out).map_err(|_| self.err("bad UTF-8")),
                    b'\\' => {
                        let Some(&e) = self.b.get(self.i) else { return Err(self.err("unterminated escape")) };
                        self.i += 1;
                        match e {
                            b'"' | b'\\' | b'/' => out.push(e),
                            b'b' => out.push(8),
                            b'f' => out.push(12),
                            b'n' => out.push(b'\n'),
                            b'r' => out.push(b'\r'),
                            b't' => out.push(b'\t'),
                            b'u' => {
                                let hex = self.b.get(self.i..self.i + 4).ok_or_else(|| self.err("short \\u"))?;
                                let hex = std::str::from_utf8(hex).map_err(|_| self.err("bad \\u"))?;
                                let cp = u32::from_str_radix(hex, 16).map_err(|_| self.err("bad \\u"))?;
                                self.i += 4;
                                let ch = char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER);
                                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                            }
                            _ => return Err(self.err("bad escape")),
                        }
                    }
                    c if c < 0x20 => return Err(self.err("control character in a string")),
                    c => out.push(c),
                }
            }
        }
    }

    #[test]
    fn reads_json() {
        let v = parse(r#" {"a": [1, -2.5e3, true, null, "x\"\u00e9"], "b": {}} "#).unwrap();
        assert_eq!(
            v.get("a"),
            Some(&Value::Arr(vec![
                Value::Num("1".into()),
                Value::Num("-2.5e3".into()),
                Value::Bool(true),
                Value::Null,
                Value::Str("x\"é".into()),
            ]))
        );
        assert!(parse("{\"a\": 1,}").is_err());
        assert!(parse("[1 2]").is_err());
        assert!(parse("{} x").is_err());
    }
}
