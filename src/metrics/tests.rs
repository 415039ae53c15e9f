//! Unit tests of the endpoint: rendering from a `Shared` with no PostgreSQL behind it
//! (values, units, label uniqueness) and the HTTP routing.

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
auth_type = "trust"
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

fn client(shared: &Shared, db: &str, user: &str, app: &str, admin: bool) -> crate::stats::Registration {
    let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let id = shared.next_client_id();
    shared.clients.register(ClientInfo::new(id, db.into(), user.into(), user.into(), addr, None, false, app, 1, admin))
}

#[test]
fn every_family_has_help_type_and_unique_label_sets() {
    let shared = shared();
    let cfg = shared.config.load_full();
    let cluster = shared.cluster("app").unwrap();
    let set = shared.pools.get_or_create(&cfg, &cluster, &cfg.databases["app"], "alice");
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
    let cfg = shared.config.load_full();
    let cluster = shared.cluster("app").unwrap();
    let set = shared.pools.get_or_create(&cfg, &cluster, &cfg.databases["app"], "alice");
    let stats = set.pools()[0].stats();
    stats.assigned(Duration::from_micros(300));
    stats.assigned(Duration::from_millis(20));
    stats.xact_count.fetch_add(5, std::sync::atomic::Ordering::Relaxed);
    stats.query_time.fetch_add(2_500_000, std::sync::atomic::Ordering::Relaxed);
    let _c1 = client(&shared, "app", "alice", "psql", false);
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
    // Histogram in seconds, cumulative, with +Inf = count.
    let set_l = [("database", "app"), ("user", "alice")];
    let bucket = |le: &str| value(&s, "pgsluice_checkout_wait_seconds_bucket", &[set_l[0], set_l[1], ("le", le)]);
    assert_eq!(bucket("0.00025"), 0.0);
    assert_eq!(bucket("0.0005"), 1.0);
    assert_eq!(bucket("0.025"), 2.0);
    assert_eq!(bucket("+Inf"), 2.0);
    assert_eq!(value(&s, "pgsluice_checkout_wait_seconds_count", &set_l), 2.0);
    assert!((value(&s, "pgsluice_checkout_wait_seconds_sum", &set_l) - 0.0203).abs() < 1e-9);
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
    assert!(!types.contains_key("pgsluice_checkout_wait_seconds"));
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
