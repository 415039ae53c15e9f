//! Causal reads across connections (`read_your_writes_scope`, issue 17): one connection
//! commits, another reads at once, against a primary and two streaming replicas, one of
//! which applies WAL 300 ms late. With scope `database` no read is stale and no relation is
//! missing; with `client` the other connection's reads are stale when they reach the late
//! replica (counted and reported). `user` covers the writes of the same user only; the
//! writes of a client routed to the primary count for everybody's reads; and what the
//! console and `/metrics` report per scope.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::*;
use crate::routing::{leave_wal_page_start, psql, start_nodes, start_pooler, Topo, APP, APP_PW, FAST_PROBES};

/// The replica (node 2) that applies WAL this late.
const APPLY_DELAY: &str = "300ms";

/// A primary and two replicas, node 2 applying WAL [`APPLY_DELAY`] late.
async fn nodes_with_a_late_replica() -> Vec<Node> {
    let nodes = start_nodes(2).await;
    leave_wal_page_start(&nodes[0]).await;
    psql(&nodes[2], &format!("ALTER SYSTEM SET recovery_min_apply_delay = '{APPLY_DELAY}'")).await;
    psql(&nodes[2], "SELECT pg_reload_conf()").await;
    for _ in 0..100 {
        let n = nodes[2].clone();
        if blocking(move || n.psql(APP, "SHOW recovery_min_apply_delay").ok()).await.as_deref() == Some(APPLY_DELAY) {
            return nodes;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("recovery_min_apply_delay not applied on port {}", nodes[2].port());
}

/// pgsluice over `nodes` with `scope` and extra `general` lines; waits until settled.
async fn topo(nodes: Vec<Node>, scope: &str, general: &[&str], sections: &[&str]) -> Topo {
    let scope = format!("read_your_writes_scope = \"{scope}\"");
    let lines = [&[FAST_PROBES, "max_replica_lag = \"5s\"", scope.as_str()][..], general].concat();
    let pooler = start_pooler(&nodes, &lines, &[], sections).await;
    let t = Topo { nodes, pooler };
    wait_settled(&t.cluster(APP), 0).await;
    t
}

/// The first row of a simple query's answer, as text.
async fn row(c: &Client, sql: &str) -> Result<Vec<Option<String>>, tokio_postgres::Error> {
    let msgs = c.simple_query(sql).await?;
    Ok(msgs
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect()),
            _ => None,
        })
        .unwrap_or_default())
}

/// What `iterations` × (`writer` inserts a row and commits; `reader` counts it at once)
/// found: stale reads, reads per node, reads that failed, and how long it took. Every
/// `ddl_every`-th iteration the writer creates a table the reader then selects from.
struct Outcome {
    stale: usize,
    missing_relations: usize,
    tally: crate::routing::Tally,
    took: Duration,
}

async fn commit_then_read(
    t: &Topo,
    writer: &Client,
    reader: &Client,
    base: i64,
    iterations: i64,
    ddl_every: i64,
) -> Outcome {
    let mut stale = 0;
    let mut missing_relations = 0;
    let mut ports = Vec::new();
    let started = Instant::now();
    for n in 0..iterations {
        let id = base + n;
        let read = if ddl_every > 0 && n % ddl_every == 0 {
            writer.batch_execute(&format!("CREATE TABLE causal_{id} (x int)")).await.expect("create table");
            format!("SELECT count(*) + 1, inet_server_port() FROM causal_{id}")
        } else {
            writer.batch_execute(&format!("INSERT INTO t (id, v) VALUES ({id}, 'causal')")).await.expect("insert");
            format!("SELECT (SELECT count(*) FROM t WHERE id = {id}), inet_server_port()")
        };
        match row(reader, &read).await {
            Ok(r) => {
                if r.first().and_then(|v| v.as_deref()) != Some("1") {
                    stale += 1;
                }
                ports.push(r.get(1).and_then(|p| p.as_deref()).and_then(|p| p.parse().ok()).unwrap_or(0));
            }
            Err(e) if e.code().is_some_and(|c| c.code() == "42P01") => missing_relations += 1,
            Err(e) => panic!("read {id}: {}", short(&e)),
        }
    }
    Outcome { stale, missing_relations, tally: t.tally(&ports), took: started.elapsed() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_connection_sees_a_commit_at_once_with_database_scope() {
    const ITERATIONS: i64 = 10_000;
    let t = topo(nodes_with_a_late_replica().await, "database", &[], &[]).await;
    let writer = t.client(APP).await;
    let reader = t.client(APP).await;
    let db = commit_then_read(&t, &writer, &reader, 1, ITERATIONS, 100).await;
    let counts = t.counts(APP);
    println!(
        "CAUSAL database scope: {} stale, {} missing relations of {ITERATIONS} in {} ms; reads per node {}; route \
         stats {counts:?}",
        db.stale,
        db.missing_relations,
        db.took.as_millis(),
        db.tally
    );
    assert_eq!((db.stale, db.missing_relations), (0, 0), "database scope: {}", t.describe(APP));
    assert!(counts.ryw_fallbacks > 0, "reads right after another client's write went to the primary: {counts:?}");

    // Once the replicas have replayed the last write, reads of other connections go to
    // them again (the fallbacks asked for probes: no waiting for health_check_interval).
    let other = t.client(APP).await;
    let replicas = t.replica_ports();
    let since = Instant::now();
    let mut back = None;
    while back.is_none() && since.elapsed() < Duration::from_secs(5) {
        if replicas.contains(&crate::routing::read_port(&other).await.expect("read")) {
            back = Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("CAUSAL database scope: reads of a third connection back on a replica {back:?} after the last write");
    assert!(back.is_some(), "reads never returned to the replicas: {}", t.describe(APP));
    let Topo { nodes, mut pooler } = t;
    pooler.shutdown(Duration::from_secs(5)).await;

    // The same with `client`: the reader never wrote, so nothing holds its reads back.
    let t = topo(nodes, "client", &[], &[]).await;
    let writer = t.client(APP).await;
    let reader = t.client(APP).await;
    let client = commit_then_read(&t, &writer, &reader, 1_000_000, 2_000, 100).await;
    println!(
        "CAUSAL client scope: {} stale, {} missing relations of 2000 in {} ms; reads per node {}; route stats {:?}",
        client.stale,
        client.missing_relations,
        client.took.as_millis(),
        client.tally,
        t.counts(APP)
    );
    assert!(
        client.stale + client.missing_relations > 0,
        "client scope never read stale, so this test could not tell the scopes apart: {}",
        client.tally
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_waits_is_served_by_a_replica_after_about_the_lag() {
    // With read_your_writes_wait, a read after another connection's commit waits for a
    // replica (on-demand probes, not health_check_interval = 1 s): the prompt one.
    let t = topo(
        nodes_with_a_late_replica().await,
        "database",
        &["read_your_writes_wait = \"2s\"", "health_check_interval = \"1s\""],
        &[],
    )
    .await;
    let writer = t.client(APP).await;
    let reader = t.client(APP).await;
    let mut waited = Vec::new();
    let mut ports = Vec::new();
    for id in 0..50i64 {
        writer.batch_execute(&format!("INSERT INTO t (id, v) VALUES ({id}, 'wait')")).await.expect("insert");
        let started = Instant::now();
        let r = row(&reader, &format!("SELECT (SELECT count(*) FROM t WHERE id = {id}), inet_server_port()"))
            .await
            .expect("read");
        waited.push(started.elapsed().as_millis() as u64);
        assert_eq!(r[0].as_deref(), Some("1"), "read {id} stale on {:?}", r[1]);
        ports.push(r[1].as_deref().and_then(|p| p.parse().ok()).unwrap_or(0));
    }
    waited.sort_unstable();
    let tally = t.tally(&ports);
    let counts = t.counts(APP);
    let probes: u64 = t.cluster(APP).snapshot().iter().map(|h| h.probes).sum();
    println!(
        "CAUSAL wait: reads per node {tally}; wait ms median {} p95 {} max {}; route stats {counts:?}; probes {probes}",
        waited[waited.len() / 2],
        waited[waited.len() * 95 / 100],
        waited[waited.len() - 1]
    );
    assert!(tally.replicas() >= 45, "reads that waited went to the primary: {tally}; {}", t.describe(APP));
    // (The test servers run synchronous_commit = off: WAL reaches the replicas after up to
    // wal_writer_delay, 200 ms, which is the lag of the prompt one.)
    assert!(waited[waited.len() / 2] < 500, "median wait not bounded by the lag of the prompt replica: {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_scope_covers_the_same_user_and_primary_routed_writers_count_for_database_scope() {
    // `writer` is routed to the primary (no classification); its writes must still hold
    // back the reads of `app` under database scope, and under user scope only app's own.
    let writer_section = "[users.writer]\nroute = \"primary\"\n";
    let admin_users = "admin_users = [\"app\"]";
    let t = topo(nodes_with_a_late_replica().await, "database", &[admin_users], &[writer_section]).await;
    let w = t.pooler.try_connect("writer", "writer-pw", APP).await.expect("writer connects");
    let reader = t.client(APP).await;
    let out = commit_then_read(&t, &w, &reader, 1, 1_000, 0).await;
    println!("CAUSAL database scope, primary-routed writer: {} stale of 1000; reads {}", out.stale, out.tally);
    assert_eq!(out.stale, 0, "writes of a primary-routed client were not seen: {}", t.describe(APP));
    let Topo { nodes, mut pooler } = t;
    pooler.shutdown(Duration::from_secs(5)).await;

    let t = topo(nodes, "user", &[admin_users], &[writer_section]).await;
    let a = t.client(APP).await;
    let b = t.client(APP).await;
    let same = commit_then_read(&t, &a, &b, 100_000, 1_000, 50).await;
    println!(
        "CAUSAL user scope, same user: {} stale, {} missing of 1000; reads {}",
        same.stale, same.missing_relations, same.tally
    );
    assert_eq!((same.stale, same.missing_relations), (0, 0), "user scope, same user: {}", t.describe(APP));
    let w = t.pooler.try_connect("writer", "writer-pw", APP).await.expect("writer connects");
    let other = commit_then_read(&t, &w, &b, 200_000, 1_000, 0).await;
    println!("CAUSAL user scope, another user's writes: {} stale of 1000; reads {}", other.stale, other.tally);
    assert!(other.stale > 0, "user scope also waited for another user's writes: {}", other.tally);

    // The console and /metrics say which scope each pool set has, and count its fallbacks.
    let admin = t.pooler.try_connect(APP, APP_PW, "pgbouncer").await.expect("console login");
    let msgs = admin.simple_query("SHOW ROUTES").await.expect("SHOW ROUTES");
    let app = msgs
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.get("database") == Some(APP) && r.get("user") == Some(APP) => Some((
                r.get("ryw_scope").map(str::to_string),
                r.get("ryw_fallbacks").and_then(|v| v.parse::<u64>().ok()),
            )),
            _ => None,
        })
        .expect("app's pool set in SHOW ROUTES");
    assert_eq!(app.0.as_deref(), Some("user"));
    assert!(app.1.is_some_and(|n| n > 0), "ryw_fallbacks counted: {app:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_init_then_a_new_connection_finds_its_tables() {
    // The first report: `pgbench -i` through pgsluice, then at once a new
    // connection counts pgbench_accounts.
    let t = topo(nodes_with_a_late_replica().await, "database", &[], &[]).await;
    for round in 0..5 {
        let addr = t.pooler.addr;
        let out = blocking(move || {
            std::process::Command::new("/usr/lib/postgresql/15/bin/pgbench")
                .args(["-i", "-s", "1", "-q", "-h", "127.0.0.1", "-p", &addr.port().to_string(), "-U", APP, APP])
                .env("PGPASSWORD", APP_PW)
                .env("PGSSLMODE", "disable")
                .output()
                .expect("run pgbench")
        })
        .await;
        assert!(out.status.success(), "pgbench -i: {}", String::from_utf8_lossy(&out.stderr));
        let c = t.client(APP).await;
        let r = row(&c, "SELECT count(*), inet_server_port() FROM pgbench_accounts")
            .await
            .unwrap_or_else(|e| panic!("round {round}: {}", short(&e)));
        assert_eq!(r[0].as_deref(), Some("100000"), "round {round}: read on {:?}", r[1]);
    }
}

/// The cost of each scope on a mixed load (`docs/routing.md`, *Choosing a scope*): one
/// tpcb-like writer and 8 `-S` readers on other connections for 20 s per scope, replicas
/// without an apply delay. Prints the replica share of reads, the readers' p95 latency and
/// the probes the primary answered per second. A measurement, not a check: run it by hand
/// with `cargo test --test it causal::measure -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement for docs/routing.md; run by hand"]
async fn measure_scope_costs_on_a_mixed_load() {
    let nodes = start_nodes(2).await;
    leave_wal_page_start(&nodes[0]).await;
    let port = nodes[0].port();
    let init = blocking(move || {
        std::process::Command::new("/usr/lib/postgresql/15/bin/pgbench")
            .args(["-i", "-s", "4", "-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", APP])
            .env("PGPASSWORD", crate::routing::SU_PW)
            .env("PGSSLMODE", "disable")
            .output()
            .expect("pgbench -i")
    })
    .await;
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    psql(&nodes[0], "GRANT ALL ON ALL TABLES IN SCHEMA public TO app").await;
    // PGSLUICE_MEASURE_SYNC=on: the primary with synchronous_commit = on (the test servers
    // run with off, where WAL reaches the replicas up to wal_writer_delay = 200 ms late).
    let sync = std::env::var("PGSLUICE_MEASURE_SYNC").unwrap_or_else(|_| "off".into());
    psql(&nodes[0], &format!("ALTER SYSTEM SET synchronous_commit = '{sync}'")).await;
    psql(&nodes[0], "SELECT pg_reload_conf()").await;
    let mut nodes = Some(nodes);
    for (scope, wait) in [("client", "0s"), ("user", "0s"), ("database", "0s"), ("database", "20ms")] {
        let wait_line = format!("read_your_writes_wait = \"{wait}\"");
        let t = topo(nodes.take().unwrap(), scope, &["health_check_interval = \"1s\"", &wait_line], &[]).await;
        let probes = |t: &Topo| t.cluster(APP).snapshot()[0].probes;
        let before = probes(&t);
        let dir = std::env::temp_dir().join(format!("pgsluice-scope-{}-{scope}-{wait}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = t.pooler.addr.port();
        let mut writer = pgbench(APP, APP_PW, port);
        writer.args(["-n", "-c", "1", "-T", "20", APP]);
        let mut readers = pgbench(APP, APP_PW, port);
        readers.current_dir(&dir).args(["-n", "-S", "-c", "8", "-j", "2", "-T", "20", "-l", APP]);
        let started = Instant::now();
        let (w, r) = tokio::join!(
            run_pgbench(&mut writer, Duration::from_secs(60)),
            run_pgbench(&mut readers, Duration::from_secs(60))
        );
        let secs = started.elapsed().as_secs_f64();
        assert!(w.ok && r.ok, "{}\n{}", w.report(), r.report());
        let mut lat: Vec<u64> = Vec::new();
        for f in std::fs::read_dir(&dir).unwrap().flatten() {
            let text = std::fs::read_to_string(f.path()).unwrap();
            lat.extend(text.lines().filter_map(|l| l.split(' ').nth(2)?.parse::<u64>().ok()));
        }
        lat.sort_unstable();
        let p95 = lat.get(lat.len() * 95 / 100).copied().unwrap_or(0);
        let c = t.counts(APP);
        let reads = c.reads_replica + c.reads_primary;
        println!(
            "SCOPE synchronous_commit {sync}, {scope} wait {wait}: writer {} tps, readers {} tps; replica share of reads {:.1} %; reader p95 {:.2} \
             ms; ryw fallbacks {} waits {}; probes of the primary {:.1}/s",
            w.field("number of transactions actually processed:") as f64 / 20.0,
            r.field("number of transactions actually processed:") as f64 / 20.0,
            100.0 * c.reads_replica as f64 / reads.max(1) as f64,
            p95 as f64 / 1000.0,
            c.ryw_fallbacks,
            c.ryw_waits,
            (probes(&t) - before) as f64 / secs
        );
        let _ = std::fs::remove_dir_all(&dir);
        let Topo { nodes: n, mut pooler } = t;
        pooler.shutdown(Duration::from_secs(5)).await;
        nodes = Some(n);
    }
}

/// A client of `APP` with `options` in its startup packet.
async fn connect_with_options(t: &Topo, options: &str) -> Result<Client, tokio_postgres::Error> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1").port(t.pooler.addr.port()).user(APP).password(APP_PW).dbname(APP).options(options);
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_chooses_its_route_in_the_startup_packet() {
    let t = topo(start_nodes(2).await, "database", &["admin_users = [\"app\"]"], &[]).await;
    let replicas = t.replica_ports();
    let primary = t.port(0);

    let to_primary = connect_with_options(&t, "-c pgsluice.route=primary").await.expect("route=primary");
    let to_replica = connect_with_options(&t, "-c pgsluice.route=Replica").await.expect("route=replica");
    let auto = connect_with_options(&t, "-c pgsluice.route=auto").await.expect("route=auto");
    for _ in 0..20 {
        assert_eq!(crate::routing::read_port(&to_primary).await.unwrap(), primary, "pgsluice.route=primary reads");
        assert!(replicas.contains(&crate::routing::read_port(&to_replica).await.unwrap()), "route=replica reads");
        assert!(replicas.contains(&crate::routing::read_port(&auto).await.unwrap()), "route=auto reads");
    }
    to_primary.batch_execute("INSERT INTO t (id, v) VALUES (1, 'chosen')").await.expect("a write on route=primary");
    // A client that chose replicas is not held back by others' writes (database scope).
    assert!(replicas.contains(&crate::routing::read_port(&to_replica).await.unwrap()), "route=replica after a write");
    let e =
        to_replica.batch_execute("INSERT INTO t (id, v) VALUES (2, 'chosen')").await.expect_err("write on a replica");
    assert_eq!(e.code().map(|c| c.code()), Some("25006"), "{}", short(&e));

    // An unknown value ends the login with a FATAL naming the parameter.
    for options in ["-c pgsluice.route=sideways", "-c pgsluice.route="] {
        let e = connect_with_options(&t, options).await.err().expect("login refused");
        let db = e.as_db_error().unwrap_or_else(|| panic!("{options}: not a server error: {e}"));
        assert_eq!((db.severity(), db.code().code()), ("FATAL", "22023"), "{options}");
        assert!(db.message().contains("pgsluice.route"), "{}", db.message());
    }

    // SHOW CLIENTS says where each client's requests go.
    let admin = t.pooler.try_connect(APP, APP_PW, "pgbouncer").await.expect("console login");
    let msgs = admin.simple_query("SHOW CLIENTS").await.expect("SHOW CLIENTS");
    let mut routes: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.get("database") == Some(APP) => r.get("route").map(str::to_string),
            _ => None,
        })
        .collect();
    routes.sort();
    assert_eq!(routes, ["auto", "primary", "replica"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_rebuilds_the_topology_keeps_the_write_clocks() {
    // A reload that changes a probe setting rebuilds the database's topology; a client
    // logged in before it and one logged in after must still see each other's writes.
    let t = topo(nodes_with_a_late_replica().await, "database", &[], &[]).await;
    let before = t.client(APP).await;
    let shared = t.pooler.handle.as_ref().unwrap().shared.clone();
    let path = shared.config.load().path.clone();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("health_check_interval = \"200ms\"", "health_check_interval = \"250ms\"")).unwrap();
    let old = t.cluster(APP);
    let report = pgsluice::reload::reload(&shared).expect("reload");
    assert!(!std::sync::Arc::ptr_eq(&old, &t.cluster(APP)), "the topology was rebuilt: {report:?}");
    wait_settled(&t.cluster(APP), 0).await;
    let after = t.client(APP).await;
    let one = commit_then_read(&t, &before, &after, 1, 500, 50).await;
    let other = commit_then_read(&t, &after, &before, 10_000, 500, 50).await;
    println!(
        "CAUSAL across a rebuilding reload: {}+{} stale, {}+{} missing of 2x500; reads {} / {}",
        one.stale, other.stale, one.missing_relations, other.missing_relations, one.tally, other.tally
    );
    assert_eq!((one.stale, one.missing_relations, other.stale, other.missing_relations), (0, 0, 0, 0));
}
