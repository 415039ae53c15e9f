//! Read/write splitting against real PostgreSQL (a primary and two streaming replicas per
//! test): reads balanced over the replicas, writes and writing functions on the primary,
//! read-only transactions pinned to one replica, lagging and dead replicas avoided,
//! read-your-writes by WAL position, prepared statements routed by their class (also after
//! a failover), pipelined writes never sent to a replica, hint comments, the read-only alias
//! database, `primary_reads`, session mode, per-user `route` and `default_transaction_read_only`.
//!
//! Every test starts its own servers (pauses, promotions and `stop -m immediate` are
//! destructive). The database is `app`, owned by role `app`, with table `t (id, v)`, a
//! sequence `s`, a writing SQL function `add_row(id)` and a harmless but unknown (not
//! allow-listed) one, `stable_one()`. Which server answered a request is read from
//! `inet_server_port()`: node 0 is the primary, nodes 1 and 2 the replicas.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgsluice::cluster::{Cluster, Health, Primary};
use pgsluice::stats::RouteCounts;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::*;

/// Superuser password of every cluster started here (the probe login).
pub(crate) const SU_PW: &str = "route-su-pw";
/// Client-visible database, its PostgreSQL database and the role that owns it.
pub(crate) const APP: &str = "app";
/// Password of `app`.
pub(crate) const APP_PW: &str = "app-pw";
/// A second role, routed to the primary by a `[users.writer]` section where a test has one.
const WRITER: &str = "writer";
/// Password of `writer`.
const WRITER_PW: &str = "writer-pw";
/// Schema and helpers of `app` (run as the superuser on the primary before the replicas are
/// cloned).
const SETUP: &str = "CREATE TABLE t (id bigint PRIMARY KEY, v text); ALTER TABLE t OWNER TO app; \
    CREATE SEQUENCE s; ALTER SEQUENCE s OWNER TO app; \
    CREATE FUNCTION add_row(bigint) RETURNS int LANGUAGE sql \
        AS 'INSERT INTO t (id, v) VALUES ($1, ''fn'') RETURNING inet_server_port()'; \
    CREATE FUNCTION stable_one() RETURNS int LANGUAGE sql STABLE AS 'SELECT 1'; \
    SET password_encryption = 'scram-sha-256'; \
    CREATE ROLE writer LOGIN PASSWORD 'writer-pw'; GRANT ALL ON t TO writer";
/// Fast probes, so that lag and deaths are seen within a second.
pub(crate) const FAST_PROBES: &str = "health_check_interval = \"200ms\"";

// === setup ===

/// A primary (node 0), its replicas, and pgsluice serving `app` (plus aliases) over them.
pub(crate) struct Topo {
    pub(crate) nodes: Vec<Node>,
    pub(crate) pooler: Pooler,
}

/// Starts a primary with `replicas` replicas (in parallel).
pub(crate) async fn start_nodes(replicas: usize) -> Vec<Node> {
    blocking(move || start_replication(SU_PW, APP, APP_PW, SETUP, replicas)).await
}

/// `psql` as the superuser in `app` on `node`, panicking with the server log on failure.
pub(crate) async fn psql(node: &Node, sql: &str) -> String {
    node_psql_async(node, APP, sql).await
}

/// Writes a little WAL on the primary. After `pg_basebackup` its WAL position is the start of
/// a segment, where `pg_current_wal_insert_lsn()` (past the page header) is ahead of what the
/// replicas report as replayed until the next record; tests other than the one about that
/// case ([`reads_return_to_replicas_after_a_write_at_a_wal_page_start`]) start mid-page.
pub(crate) async fn leave_wal_page_start(primary: &Node) {
    psql(primary, "CREATE TABLE wal_nudge (); DROP TABLE wal_nudge").await;
}

/// pgsluice serving `app` over all `nodes` (probing as the superuser), with `general` lines
/// (`read_your_writes_scope = "client"` unless they set it) and alias databases `(name, extra section lines)` over the same hosts and PostgreSQL
/// database, and raw TOML `sections`; users `app` and `writer` in the auth_file.
pub(crate) async fn start_pooler(
    nodes: &[Node],
    general: &[&str],
    aliases: &[(&str, &[&str])],
    sections: &[&str],
) -> Pooler {
    let hosts = nodes.iter().map(|n| host_entry(n)).collect::<Vec<_>>().join(", ");
    let mut b = pooler()
        .general("health_check_user = \"postgres\"")
        .general(&format!("health_check_password = \"{SU_PW}\""))
        .user(APP, APP_PW)
        .user(WRITER, WRITER_PW)
        .section(&format!("[databases.{APP}]\nhosts = [{hosts}]\n"));
    for (name, lines) in aliases {
        b = b.section(&format!("[databases.{name}]\ndbname = \"{APP}\"\nhosts = [{hosts}]\n{}\n", lines.join("\n")));
    }
    for text in sections {
        b = b.section(text);
    }
    for line in general {
        b = b.general(line);
    }
    // These tests are about routing between connections that do not wait for each other's
    // writes (tests/it/causal.rs is about the scopes).
    if !general.iter().any(|l| l.starts_with("read_your_writes_scope")) {
        b = b.general("read_your_writes_scope = \"client\"");
    }
    b.start().await
}

impl Topo {
    /// Starts everything and waits until every database sees node 0 as the primary and the
    /// others as healthy replicas.
    pub(crate) async fn start(
        replicas: usize,
        general: &[&str],
        aliases: &[(&str, &[&str])],
        sections: &[&str],
    ) -> Topo {
        let nodes = start_nodes(replicas).await;
        leave_wal_page_start(&nodes[0]).await;
        let pooler = start_pooler(&nodes, general, aliases, sections).await;
        let t = Topo { nodes, pooler };
        for db in std::iter::once(APP).chain(aliases.iter().map(|(name, _)| *name)) {
            wait_settled(&t.cluster(db), 0).await;
        }
        t
    }

    /// Port of node `i`.
    pub(crate) fn port(&self, i: usize) -> u16 {
        self.nodes[i].port()
    }

    /// Ports of the replicas (nodes 1..).
    pub(crate) fn replica_ports(&self) -> Vec<u16> {
        self.nodes[1..].iter().map(|n| n.port()).collect()
    }

    /// The topology pgsluice keeps for `db`.
    pub(crate) fn cluster(&self, db: &str) -> Arc<Cluster> {
        self.pooler.handle.as_ref().expect("pgsluice running").shared.cluster(db).expect("cluster")
    }

    /// Routing counters of (`db`, `app`); zero before the pool set exists.
    pub(crate) fn counts(&self, db: &str) -> RouteCounts {
        counts(&self.pooler, db, APP)
    }

    /// A client of `db` as `app`.
    pub(crate) async fn client(&self, db: &str) -> Client {
        self.pooler.try_connect(APP, APP_PW, db).await.unwrap_or_else(|e| panic!("connect to {db} via pgsluice: {e}"))
    }

    /// Per-node counts of `ports` as `{n0: .., n1: .., n2: ..}` (n0 = the first primary),
    /// plus any port that is no node.
    pub(crate) fn tally(&self, ports: &[u16]) -> Tally {
        let mut by_node = vec![0; self.nodes.len()];
        let mut other = 0;
        for p in ports {
            match self.nodes.iter().position(|n| n.port() == *p) {
                Some(i) => by_node[i] += 1,
                None => other += 1,
            }
        }
        Tally { by_node, other }
    }

    /// Topology of `db`, for assertion messages.
    pub(crate) fn describe(&self, db: &str) -> String {
        let c = self.cluster(db);
        let hosts: Vec<String> = c
            .snapshot()
            .iter()
            .map(|h| {
                format!(
                    "{} {} {} eligible={} lag={:?} lsn={:?}",
                    h.addr,
                    h.status.role.as_str(),
                    h.health.as_str(),
                    h.status.eligible,
                    h.status.lag,
                    h.status.lsn
                )
            })
            .collect();
        format!("{db}: primary {:?}; hosts [{}]; routing {:?}", c.primary(), hosts.join("; "), self.counts(db))
    }
}

/// Routing counters of (`db`, `user`).
fn counts(p: &Pooler, db: &str, user: &str) -> RouteCounts {
    let sets = p.handle.as_ref().expect("pgsluice running").shared.pools.sets();
    sets.iter().find(|((d, u), _)| d == db && u == user).map(|(_, set)| set.route_stats().counts()).unwrap_or_default()
}

/// Requests per node.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Index = node.
    by_node: Vec<usize>,
    /// Answered by no known node (never expected).
    other: usize,
}

impl Tally {
    pub(crate) fn n(&self, i: usize) -> usize {
        self.by_node[i]
    }

    pub(crate) fn total(&self) -> usize {
        self.by_node.iter().sum::<usize>() + self.other
    }

    /// Answered by nodes 1.. (the replicas, before any failover).
    pub(crate) fn replicas(&self) -> usize {
        self.by_node[1..].iter().sum()
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.by_node.iter().enumerate().map(|(i, n)| format!("n{i}: {n}")).collect();
        write!(f, "{{{}", parts.join(", "))?;
        if self.other > 0 {
            write!(f, ", unknown: {}", self.other)?;
        }
        write!(f, "}}")
    }
}

// === requests ===

/// Port of the server that ran `sql` (whose first column is `inet_server_port()`), simple
/// protocol.
async fn port_of(c: &Client, sql: &str) -> Result<u16, tokio_postgres::Error> {
    let v = scalar(c, sql).await?.unwrap_or_else(|| panic!("{sql}: no row"));
    Ok(v.parse().unwrap_or_else(|_| panic!("{sql}: port {v:?}")))
}

/// `SELECT inet_server_port()` over the simple protocol.
pub(crate) async fn read_port(c: &Client) -> Result<u16, tokio_postgres::Error> {
    port_of(c, "SELECT inet_server_port()").await
}

/// `SELECT inet_server_port()` over the extended protocol (tokio-postgres prepares a named
/// statement, binds and executes it, then closes it).
pub(crate) async fn read_port_ext(c: &Client) -> Result<u16, tokio_postgres::Error> {
    let row = c.query_one("SELECT inet_server_port()", &[]).await?;
    Ok(row.get::<_, i32>(0) as u16)
}

/// The port column (`idx`) of a one-row extended-protocol result.
fn port_col(row: &tokio_postgres::Row, idx: usize) -> u16 {
    row.get::<_, i32>(idx) as u16
}

/// `n` sequential `SELECT inet_server_port()` (simple protocol) on one client; panics on any
/// failure.
async fn reads(c: &Client, n: usize, what: &str) -> Vec<u16> {
    let mut ports = Vec::with_capacity(n);
    for k in 0..n {
        ports.push(read_port(c).await.unwrap_or_else(|e| panic!("{what}: read {k} failed: {}", short(&e))));
    }
    ports
}

// === background writes ===

/// Inserts ids `base + 1, base + 2, ...` through pgsluice every ~20 ms until `stop` (moves
/// the primary's WAL position); returns how many succeeded and the failures.
async fn write_loop(connstr: String, base: i64, stop: Arc<AtomicBool>) -> (usize, Vec<String>) {
    let c = connect_str(&connstr).await.unwrap_or_else(|e| panic!("writer connect: {e}"));
    let (mut ok, mut errors) = (0, Vec::new());
    let mut id = base;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        match c.simple_query(&format!("INSERT INTO t (id, v) VALUES ({id}, 'bg')")).await {
            Ok(_) => ok += 1,
            Err(e) => errors.push(short(&e)),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ok, errors)
}

/// A background writer started by [`Writer::start`].
pub(crate) struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
}

impl Writer {
    pub(crate) fn start(p: &Pooler, base: i64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(write_loop(p.connstr(APP, APP_PW, APP), base, stop.clone()));
        Writer { stop, task }
    }

    /// Stops it; panics if any write failed. Returns the number of writes.
    pub(crate) async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        let (ok, errors) = self.task.await.expect("writer panicked");
        assert!(errors.is_empty(), "background writes failed ({ok} succeeded): {errors:?}");
        ok
    }
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_spread_evenly_over_the_replicas() {
    const CLIENTS: usize = 4;
    const PER_CLIENT: usize = 250;
    let t = Topo::start(2, &[FAST_PROBES], &[], &[]).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..CLIENTS {
        let c = t.client(APP).await;
        tasks.push(tokio::spawn(async move {
            // Simple protocol, extended with a statement prepared each time, extended with
            // one prepared once.
            let prepared = c.prepare("SELECT inet_server_port()").await.expect("prepare");
            let mut ports = Vec::with_capacity(PER_CLIENT);
            for n in 0..PER_CLIENT {
                let port = match k % 4 {
                    0 | 2 => read_port(&c).await,
                    1 => read_port_ext(&c).await,
                    _ => c.query_one(&prepared, &[]).await.map(|r| port_col(&r, 0)),
                };
                ports.push(port.unwrap_or_else(|e| panic!("client {k}, read {n}: {}", short(&e))));
            }
            ports
        }));
    }
    let mut ports = Vec::new();
    for task in tasks {
        ports.extend(task.await.expect("reader panicked"));
    }
    let took = started.elapsed();
    let tally = t.tally(&ports);
    let on_replicas = tally.replicas();
    let share = 100.0 * on_replicas as f64 / tally.total() as f64;
    let split1 = 100.0 * tally.n(1) as f64 / on_replicas.max(1) as f64;
    let counts = t.counts(APP);
    println!(
        "ROUTING {} reads from {CLIENTS} clients in {} ms: {share:.1}% on replicas ({} replica1, {} replica2, {} \
         primary), replica split {split1:.1}/{:.1}; route stats {counts:?}",
        tally.total(),
        took.as_millis(),
        tally.n(1),
        tally.n(2),
        tally.n(0),
        100.0 - split1
    );
    assert_eq!(tally.total(), CLIENTS * PER_CLIENT);
    assert_eq!(tally.other, 0, "{tally}");
    assert!(share >= 90.0, "only {share:.1}% of the reads on replicas: {tally}; {}", t.describe(APP));
    // (Least outstanding requests first: on a loaded machine a replica whose backend is
    // descheduled keeps requests longer and gets fewer, so the split is not 50/50.)
    assert!((30.0..=70.0).contains(&split1), "replica split {split1:.1}/{:.1}: {tally}", 100.0 - split1);
    // (Extended-protocol reads are two routed requests each: Parse/Describe/Sync, then
    // Bind/Execute/Sync.)
    assert!(counts.reads_replica as usize >= on_replicas, "route stats {counts:?} vs what the clients saw {tally}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_protocol_reads_are_never_counted_as_writes() {
    // tokio-postgres closes each statement that `query_one(&str)` prepared: its Close + Sync
    // goes out right before the next statement's Parse/Describe/Sync. A request without a
    // statement (Close, Describe, a lone Sync) writes nothing: it must not be routed and
    // counted as a write (which would also make pgsluice learn the primary's WAL position
    // for read-your-writes and hold the next reads to it).
    let t = Topo::start(2, &[FAST_PROBES], &[], &[]).await;
    let c = t.client(APP).await;
    let mut ports = Vec::new();
    for n in 0..50 {
        ports.push(read_port_ext(&c).await.unwrap_or_else(|e| panic!("read {n}: {}", short(&e))));
    }
    let tally = t.tally(&ports);
    let counts = t.counts(APP);
    println!("ROUTING 50 extended reads (statement prepared, executed, closed each time): {tally}; {counts:?}");
    assert_eq!(tally.n(0), 0, "extended reads on the primary: {tally}");
    assert_eq!(counts.writes, 0, "a read-only client's requests counted as writes: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_writing_functions_go_to_the_primary() {
    let t = Topo::start(2, &[FAST_PROBES], &[], &[]).await;
    let c = t.client(APP).await;
    let primary = t.port(0);
    let on_primary = |what: &str, port: u16| assert_eq!(port, primary, "{what} ran on port {port}, not the primary");

    // Simple protocol.
    let port = port_of(&c, "INSERT INTO t (id, v) VALUES (1, 'simple') RETURNING inet_server_port()").await;
    on_primary("simple INSERT … RETURNING", port.expect("simple insert"));
    c.batch_execute("UPDATE t SET v = 'simple-updated' WHERE id = 1").await.expect("simple update");
    c.batch_execute("INSERT INTO t (id, v) VALUES (2, 'batch'); UPDATE t SET v = 'batch-updated' WHERE id = 2")
        .await
        .expect("batch of insert + update");
    let port = port_of(&c, "UPDATE t SET v = v || '!' WHERE id = 2 RETURNING inet_server_port()").await;
    on_primary("simple UPDATE … RETURNING", port.expect("simple update returning"));

    // Extended protocol with parameters, statement text sent each time.
    let n = c.execute("INSERT INTO t (id, v) VALUES ($1, $2)", &[&3i64, &"extended"]).await.expect("insert");
    assert_eq!(n, 1);
    let row = c
        .query_one("UPDATE t SET v = $2 WHERE id = $1 RETURNING inet_server_port()", &[&3i64, &"extended-updated"])
        .await
        .expect("extended update");
    on_primary("extended UPDATE … RETURNING", port_col(&row, 0));

    // Prepared once, executed many times.
    let ins = c.prepare("INSERT INTO t (id, v) VALUES ($1, 'prepared') RETURNING inet_server_port()").await.unwrap();
    let upd = c.prepare("UPDATE t SET v = v || '+' WHERE id = $1").await.unwrap();
    for id in 10..20i64 {
        let row = c.query_one(&ins, &[&id]).await.unwrap_or_else(|e| panic!("prepared insert {id}: {}", short(&e)));
        on_primary("prepared INSERT", port_col(&row, 0));
        assert_eq!(c.execute(&upd, &[&id]).await.unwrap_or_else(|e| panic!("prepared update {id}: {e}")), 1);
    }

    // A function in a SELECT makes it a write unless allow-listed; a replica would refuse
    // these with 25006.
    let mut seq = Vec::new();
    for _ in 0..5 {
        seq.push(simple_one(&c, "SELECT nextval('s')").await);
        let row = c.query_one("SELECT nextval('s')", &[]).await.unwrap_or_else(|e| panic!("nextval: {}", short(&e)));
        seq.push(row.get::<_, i64>(0).to_string());
    }
    assert_eq!(seq, (1..=10).map(|i| i.to_string()).collect::<Vec<_>>(), "nextval on the primary");
    let port = port_of(&c, "SELECT add_row(100)").await.unwrap_or_else(|e| panic!("add_row: {}", short(&e)));
    on_primary("SELECT user_function() (simple)", port);
    let row = c.query_one("SELECT add_row($1)", &[&101i64]).await.unwrap_or_else(|e| panic!("add_row: {}", short(&e)));
    on_primary("SELECT user_function() (extended)", port_col(&row, 0));
    let sql = "WITH w AS (INSERT INTO t (id, v) VALUES (102, 'cte') RETURNING id) SELECT inet_server_port() FROM w";
    on_primary("data-modifying CTE", port_of(&c, sql).await.unwrap_or_else(|e| panic!("{sql}: {}", short(&e))));
    let sql = "SELECT inet_server_port() FROM t WHERE id = 1 FOR UPDATE";
    on_primary("SELECT … FOR UPDATE", port_of(&c, sql).await.unwrap_or_else(|e| panic!("{sql}: {}", short(&e))));
    let sql = "SELECT inet_server_port() FROM t WHERE id = 1 FOR SHARE";
    on_primary("SELECT … FOR SHARE", port_of(&c, sql).await.unwrap_or_else(|e| panic!("{sql}: {}", short(&e))));
    c.batch_execute("SELECT id INTO TABLE t_copy FROM t")
        .await
        .unwrap_or_else(|e| panic!("SELECT INTO: {}", short(&e)));
    let sql = "EXPLAIN ANALYZE INSERT INTO t (id, v) VALUES (103, 'explain')";
    c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {}", short(&e)));

    // All of it is on the primary.
    let got = psql(&t.nodes[0], "SELECT string_agg(id || '=' || v, ',' ORDER BY id) FROM t").await;
    let want = "1=simple-updated,2=batch-updated!,3=extended-updated,10=prepared+,11=prepared+,12=prepared+,\
        13=prepared+,14=prepared+,15=prepared+,16=prepared+,17=prepared+,18=prepared+,19=prepared+,100=fn,101=fn,\
        102=cte,103=explain";
    assert_eq!(got, want, "rows on the primary");
    assert_eq!(psql(&t.nodes[0], "SELECT count(*) FROM t_copy").await, "16", "SELECT INTO on the primary");
    let counts = t.counts(APP);
    println!("ROUTING writes: route stats {counts:?}");
    assert!(counts.writes >= 20, "{counts:?}");
    assert_eq!(counts.reads_replica, 0, "nothing here may run on a replica: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_stay_on_one_replica() {
    let t = Topo::start(2, &[FAST_PROBES], &[], &[]).await;
    let c = t.client(APP).await;
    let replicas = t.replica_ports();
    let primary = t.port(0);

    let mut per_txn = Vec::new();
    for round in 0..10 {
        let begin = if round % 2 == 0 { "BEGIN READ ONLY" } else { "START TRANSACTION READ ONLY" };
        c.batch_execute(begin).await.unwrap_or_else(|e| panic!("{begin}: {}", short(&e)));
        let mut ports = Vec::new();
        for _ in 0..3 {
            ports.push(read_port(&c).await.expect("read in a read-only transaction"));
            ports.push(read_port_ext(&c).await.expect("extended read in a read-only transaction"));
        }
        assert_eq!(simple_one(&c, "SELECT pg_is_in_recovery()").await, "t", "{begin}: not on a replica");
        assert_eq!(simple_one(&c, "SHOW transaction_read_only").await, "on");
        c.batch_execute("COMMIT").await.expect("commit");
        assert!(ports.iter().all(|p| *p == ports[0]), "{begin}: statements on several servers: {ports:?}");
        assert!(replicas.contains(&ports[0]), "{begin}: on {} (replicas {replicas:?})", ports[0]);
        per_txn.push(ports[0]);
    }

    // tokio-postgres's builder sends START TRANSACTION READ ONLY.
    let mut c2 = t.client(APP).await;
    let tx = c2.build_transaction().read_only(true).start().await.expect("read-only transaction");
    let mut ports = Vec::new();
    for _ in 0..4 {
        ports.push(port_col(&tx.query_one("SELECT inet_server_port()", &[]).await.expect("read"), 0));
    }
    tx.commit().await.expect("commit");
    assert!(ports.iter().all(|p| *p == ports[0]) && replicas.contains(&ports[0]), "builder: {ports:?}");

    // One query string with the whole transaction. (The plain-BEGIN one from another client:
    // a transaction on the primary may have written, so read-your-writes would keep this
    // client's reads on the primary until a probe measures the primary again.)
    let c3 = t.client(APP).await;
    for _ in 0..4 {
        let port = port_of(&c, "BEGIN READ ONLY; SELECT inet_server_port(); COMMIT").await.expect("one-string txn");
        assert!(replicas.contains(&port), "BEGIN READ ONLY; SELECT; COMMIT ran on {port}");
        let port = port_of(&c3, "BEGIN; SELECT inet_server_port(); COMMIT").await.expect("one-string txn");
        assert_eq!(port, primary, "BEGIN; SELECT; COMMIT ran on {port}");
    }

    // A plain BEGIN: the primary, for every statement.
    for _ in 0..3 {
        c3.batch_execute("BEGIN").await.expect("begin");
        let ports = [read_port(&c3).await.unwrap(), read_port_ext(&c3).await.unwrap(), read_port(&c3).await.unwrap()];
        assert_eq!(simple_one(&c3, "SELECT pg_is_in_recovery()").await, "f", "plain BEGIN not on the primary");
        c3.batch_execute("COMMIT").await.expect("commit");
        assert!(ports.iter().all(|p| *p == primary), "plain BEGIN: {ports:?}, primary {primary}");
    }

    // A write in a read-only transaction: PostgreSQL's own 25006, and the client goes on.
    c.batch_execute("BEGIN READ ONLY").await.unwrap();
    let port = read_port(&c).await.unwrap();
    let e = c.batch_execute("INSERT INTO t (id) VALUES (1)").await.must_fail("a write in BEGIN READ ONLY");
    assert_eq!(sqlstate(&e).as_deref(), Some("25006"), "{}", short(&e));
    assert!(message(&e).contains("read-only transaction"), "{}", short(&e));
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert!(replicas.contains(&port));
    c.batch_execute("START TRANSACTION READ ONLY").await.unwrap();
    let e = c.execute("INSERT INTO t (id) VALUES ($1)", &[&2i64]).await.must_fail("extended write, read-only txn");
    assert_eq!(sqlstate(&e).as_deref(), Some("25006"), "{}", short(&e));
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert!(!c.is_closed(), "the client survives the error");

    assert!(replicas.contains(&read_port(&c).await.expect("read after the error")));
    assert_eq!(port_of(&c, "INSERT INTO t (id) VALUES (1) RETURNING inet_server_port()").await.unwrap(), primary);
    assert_eq!(c.execute("INSERT INTO t (id) VALUES ($1)", &[&2i64]).await.expect("extended write after"), 1);
    assert_eq!(psql(&t.nodes[0], "SELECT string_agg(id::text, ',' ORDER BY id) FROM t").await, "1,2");
    let tally = t.tally(&per_txn);
    println!("ROUTING read-only transactions per node {tally}; route stats {:?}", t.counts(APP));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_replica_takes_no_reads_until_resumed() {
    let t = Topo::start(2, &[FAST_PROBES, "max_replica_lag = \"1s\""], &[], &[]).await;
    let cluster = t.cluster(APP);
    let c = t.client(APP).await;
    let writer = Writer::start(&t.pooler, 1_000_000);

    let before = t.tally(&reads(&c, 100, "before the pause").await);
    assert!(before.n(1) > 0 && before.n(2) > 0, "both replicas take reads at first: {before}");

    psql(&t.nodes[1], "SELECT pg_wal_replay_pause()").await;
    let paused = Instant::now();
    wait_topology(&cluster, Duration::from_secs(6), "paused replica over max_replica_lag", |_, hosts| {
        !hosts[1].status.eligible && hosts[1].health == Health::Lagging
    })
    .await;
    let marked = paused.elapsed();
    let during = t.tally(&reads(&c, 200, "while replica 1 is paused").await);
    let snap = t.describe(APP);

    psql(&t.nodes[1], "SELECT pg_wal_replay_resume()").await;
    wait_topology(&cluster, Duration::from_secs(6), "resumed replica eligible again", |_, hosts| {
        healthy_replica(hosts, 1)
    })
    .await;
    let resumed_after = paused.elapsed();
    let after = t.tally(&reads(&c, 200, "after the resume").await);
    let writes = writer.finish().await;
    println!(
        "ROUTING paused replica: before {before}; paused, marked lagging after {} ms: {during}; resumed, eligible \
         again {} ms after the pause: {after}; {writes} background writes; route stats {:?}",
        marked.as_millis(),
        resumed_after.as_millis(),
        t.counts(APP)
    );
    assert_eq!(during.n(1), 0, "reads on the paused replica: {during}; {snap}");
    assert!(during.n(2) >= 180, "reads not on the other replica: {during}; {snap}");
    assert!(after.n(1) >= 40, "the resumed replica takes reads again: {after}; {}", t.describe(APP));
}

/// Runs `iterations` × (INSERT row; SELECT it) on one client (alternating simple and
/// extended protocol); returns the stale reads and the per-node tally of the reads.
async fn write_then_read(t: &Topo, base: i64, iterations: i64) -> (usize, Tally, Duration) {
    let c = t.client(APP).await;
    let ins = c.prepare("INSERT INTO t (id, v) VALUES ($1, 'ryw')").await.unwrap();
    let sel = c.prepare("SELECT (SELECT count(*) FROM t WHERE id = $1), inet_server_port()").await.unwrap();
    let mut stale = 0;
    let mut ports = Vec::new();
    let started = Instant::now();
    for n in 0..iterations {
        let id = base + n;
        let (found, port) = if n % 2 == 0 {
            c.batch_execute(&format!("INSERT INTO t (id, v) VALUES ({id}, 'ryw')"))
                .await
                .unwrap_or_else(|e| panic!("insert {id}: {}", short(&e)));
            let sql = format!("SELECT (SELECT count(*) FROM t WHERE id = {id}), inet_server_port()");
            let msgs = c.simple_query(&sql).await.unwrap_or_else(|e| panic!("read {id}: {}", short(&e)));
            let row = msgs
                .iter()
                .find_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some((r.get(0) == Some("1"), r.get(1).and_then(|p| p.parse().ok()))),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("read {id}: no row"));
            (row.0, row.1.unwrap_or(0))
        } else {
            c.execute(&ins, &[&id]).await.unwrap_or_else(|e| panic!("insert {id}: {}", short(&e)));
            let row = c.query_one(&sel, &[&id]).await.unwrap_or_else(|e| panic!("read {id}: {}", short(&e)));
            (row.get::<_, i64>(0) == 1, port_col(&row, 1))
        };
        if !found {
            stale += 1;
        }
        ports.push(port);
    }
    (stale, t.tally(&ports), started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_with_delayed_replicas() {
    const ITERATIONS: i64 = 2000;
    let nodes = start_nodes(2).await;
    leave_wal_page_start(&nodes[0]).await;
    for replica in &nodes[1..] {
        psql(replica, "ALTER SYSTEM SET recovery_min_apply_delay = '500ms'").await;
        psql(replica, "SELECT pg_reload_conf()").await;
    }
    for replica in &nodes[1..] {
        let r = replica.clone();
        let mut ok = false;
        for _ in 0..50 {
            let rr = r.clone();
            ok = blocking(move || rr.psql(APP, "SHOW recovery_min_apply_delay").ok()).await.as_deref() == Some("500ms");
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "recovery_min_apply_delay not applied on port {}", r.port());
    }
    // A delay below max_replica_lag: the replicas stay eligible, just behind.
    let general = [FAST_PROBES, "max_replica_lag = \"5s\""];

    let lsn = start_pooler(&nodes, &[&general[..], &["read_your_writes = \"lsn\""]].concat(), &[], &[]).await;
    let t = Topo { nodes, pooler: lsn };
    wait_settled(&t.cluster(APP), 0).await;
    let (stale_lsn, tally_lsn, took_lsn) = write_then_read(&t, 1, ITERATIONS).await;
    let counts_lsn = t.counts(APP);
    println!(
        "ROUTING RYW lsn: {stale_lsn} stale of {ITERATIONS} in {} ms; reads per node {tally_lsn} \
         (replicas {}, primary {}); route stats {counts_lsn:?}",
        took_lsn.as_millis(),
        tally_lsn.replicas(),
        tally_lsn.n(0)
    );
    // Once the replicas have replayed the client's last write, its reads go to them again.
    let c = t.client(APP).await;
    c.batch_execute("INSERT INTO t (id, v) VALUES (0, 'last')").await.expect("last write");
    let replicas = t.replica_ports();
    let wrote = Instant::now();
    let mut back = None;
    while back.is_none() && wrote.elapsed() < Duration::from_secs(5) {
        if replicas.contains(&read_port(&c).await.expect("read")) {
            back = Some(wrote.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("ROUTING RYW lsn: reads back on a replica {back:?} after the client's last write");
    let lsn_report = t.describe(APP);
    let Topo { nodes, mut pooler } = t;
    pooler.shutdown(Duration::from_secs(5)).await;

    let off = start_pooler(&nodes, &[&general[..], &["read_your_writes = \"off\""]].concat(), &[], &[]).await;
    let t = Topo { nodes, pooler: off };
    wait_settled(&t.cluster(APP), 0).await;
    let (stale_off, tally_off, took_off) = write_then_read(&t, 1_000_000, ITERATIONS).await;
    println!(
        "ROUTING RYW off: {stale_off} stale of {ITERATIONS} in {} ms; reads per node {tally_off}; route stats {:?}",
        took_off.as_millis(),
        t.counts(APP)
    );
    let Topo { nodes, mut pooler } = t;
    pooler.shutdown(Duration::from_secs(5)).await;

    // With read_your_writes_wait, a read right after a write waits for a replica to replay it.
    let waiting = [&general[..], &["read_your_writes = \"lsn\"", "read_your_writes_wait = \"3s\""]].concat();
    let t = Topo { pooler: start_pooler(&nodes, &waiting, &[], &[]).await, nodes };
    wait_settled(&t.cluster(APP), 0).await;
    let c = t.client(APP).await;
    let sel = c.prepare("SELECT (SELECT count(*) FROM t WHERE id = $1), inet_server_port()").await.unwrap();
    let mut waited = Vec::new();
    let mut ports = Vec::new();
    for id in 2_000_000..2_000_005i64 {
        c.execute("INSERT INTO t (id, v) VALUES ($1, 'wait')", &[&id]).await.expect("insert");
        let started = Instant::now();
        let row = c.query_one(&sel, &[&id]).await.unwrap_or_else(|e| panic!("read {id}: {}", short(&e)));
        waited.push(started.elapsed().as_millis());
        assert_eq!(row.get::<_, i64>(0), 1, "read_your_writes_wait: row {id} not found on {}", port_col(&row, 1));
        ports.push(port_col(&row, 1));
    }
    let tally_wait = t.tally(&ports);
    let counts_wait = t.counts(APP);
    println!(
        "ROUTING RYW lsn + read_your_writes_wait 3s: reads per node {tally_wait}, each waited (ms) {waited:?}; route \
         stats {counts_wait:?}"
    );
    assert_eq!(stale_lsn, 0, "stale reads with read_your_writes = lsn: reads per node {tally_lsn}; {lsn_report}");
    assert_eq!(tally_wait.n(0), 0, "reads that waited for a replica went to the primary: {tally_wait}");
    assert!(counts_wait.ryw_waits >= 5, "{counts_wait:?}");
    assert!(
        counts_lsn.reads_replica + counts_lsn.reads_primary >= ITERATIONS as u64,
        "every read counted: {counts_lsn:?}"
    );
    assert!(back.is_some(), "reads stay on the primary after the replicas caught up: {lsn_report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_without_apply_delay() {
    // Replicas as fast as they get: the client's reads that reach a replica must still see
    // its writes (the WAL position learned after a write has to cover the commit, also with
    // synchronous_commit = off, which the test servers use).
    const ITERATIONS: i64 = 2000;
    let t = Topo::start(2, &[FAST_PROBES, "max_replica_lag = \"5s\""], &[], &[]).await;
    let (stale, tally, took) = write_then_read(&t, 1, ITERATIONS).await;
    println!(
        "ROUTING RYW lsn, no apply delay: {stale} stale of {ITERATIONS} in {} ms; reads per node {tally}; route \
         stats {:?}",
        took.as_millis(),
        t.counts(APP)
    );
    assert_eq!(stale, 0, "stale reads with read_your_writes = lsn; {}", t.describe(APP));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_return_to_replicas_after_a_write_at_a_wal_page_start() {
    // A request that needs the primary but writes no WAL, while the primary's WAL position is
    // the start of a segment (after pg_switch_wal, pg_basebackup, archive_timeout...):
    // `pg_current_wal_insert_lsn()` is then 40 bytes past what `pg_last_wal_replay_lsn()`
    // will show on a replica that has replayed everything, until the next WAL record. The
    // client's reads must not be held to the primary for that.
    let t = Topo::start(2, &[FAST_PROBES], &[], &[]).await;
    let cluster = t.cluster(APP);
    psql(&t.nodes[0], "INSERT INTO t (id) VALUES (-1)").await;
    psql(&t.nodes[0], "SELECT pg_switch_wal()").await;
    let primary_lsn =
        psql(&t.nodes[0], "SELECT pg_current_wal_lsn() || ' insert ' || pg_current_wal_insert_lsn()").await;
    wait_topology(&cluster, Duration::from_secs(5), "replicas replayed the segment switch", |_, hosts| {
        hosts[1..].iter().all(|h| h.status.lsn.is_some() && h.status.lsn == hosts[0].status.lsn)
    })
    .await;
    let replay = psql(&t.nodes[1], "SELECT pg_last_wal_replay_lsn()").await;

    let c = t.client(APP).await;
    // An unknown function: routed to the primary, writes nothing.
    assert_eq!(simple_one(&c, "SELECT stable_one()").await, "1");
    assert_eq!(t.counts(APP).writes, 1, "{}", t.describe(APP));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = t.tally(&reads(&c, 20, "after the write").await);
    let fresh = t.tally(&reads(&t.client(APP).await, 20, "another client").await);
    let after = psql(&t.nodes[0], "SELECT pg_current_wal_lsn() || ' insert ' || pg_current_wal_insert_lsn()").await;
    println!(
        "ROUTING write at a WAL segment start: primary {primary_lsn} (after: {after}), replica 1 replayed {replay}; \
         the writer's reads {tally}, another client's {fresh}; {}",
        t.describe(APP)
    );
    assert_eq!(fresh.n(0), 0, "{fresh}");
    assert_eq!(
        tally.n(0),
        0,
        "a client's reads stay on the primary after a write that wrote no WAL at a page start: {tally}; primary \
         {primary_lsn}, replica replayed {replay}; {}",
        t.describe(APP)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_route_by_class_and_survive_a_failover() {
    let t = Topo::start(2, &[FAST_PROBES, "failover_wait_timeout = \"10s\""], &[], &[]).await;
    let c = t.client(APP).await;
    let sel = c.prepare("SELECT inet_server_port(), pg_is_in_recovery()").await.expect("prepare select");
    let ins = c.prepare("INSERT INTO t (id, v) VALUES ($1, 'p') RETURNING inet_server_port()").await.unwrap();
    let mut reads_before = Vec::new();
    for _ in 0..20 {
        let row = c.query_one(&sel, &[]).await.unwrap_or_else(|e| panic!("prepared select: {}", short(&e)));
        assert!(row.get::<_, bool>(1), "prepared SELECT ran on a primary (port {})", port_col(&row, 0));
        reads_before.push(port_col(&row, 0));
    }
    for id in 1..=10i64 {
        let row = c.query_one(&ins, &[&id]).await.unwrap_or_else(|e| panic!("prepared insert: {}", short(&e)));
        assert_eq!(port_col(&row, 0), t.port(0), "prepared INSERT not on the primary");
    }
    let before = t.tally(&reads_before);
    assert!(before.n(1) > 0 && before.n(2) > 0 && before.n(0) == 0, "prepared SELECT: {before}");

    // Failover while the client is idle: node 1 promoted, the old primary killed.
    let (new, old) = (t.nodes[1].clone(), t.nodes[0].clone());
    blocking(move || {
        new.promote().unwrap_or_else(|e| panic!("promote: {e}"));
        old.stop(true).unwrap_or_else(|e| panic!("stop old primary: {e}"));
    })
    .await;
    let cluster = t.cluster(APP);
    wait_topology(&cluster, Duration::from_secs(10), "node 1 is the new primary", |p, _| p == Primary::Host(1)).await;

    // The same statements on the same connection.
    for id in 11..=20i64 {
        let row = c
            .query_one(&ins, &[&id])
            .await
            .unwrap_or_else(|e| panic!("prepared insert {id} after the failover: {}; {}", short(&e), t.describe(APP)));
        assert_eq!(port_col(&row, 0), t.port(1), "prepared INSERT after the failover");
    }
    let mut reads_after = Vec::new();
    for n in 0..20 {
        let row = c
            .query_one(&sel, &[])
            .await
            .unwrap_or_else(|e| panic!("prepared select {n} after the failover: {}; {}", short(&e), t.describe(APP)));
        reads_after.push(port_col(&row, 0));
    }
    let after = t.tally(&reads_after);
    println!(
        "ROUTING prepared SELECT before the failover {before}, after {after}; route stats {:?}; {}",
        t.counts(APP),
        t.describe(APP)
    );
    assert_eq!(after.n(0), 0, "reads on the dead old primary: {after}");
    // (Rows 1..=10 may be lost: the test servers commit asynchronously and the old primary
    // was killed right after them.)
    let rows = psql(&t.nodes[1], "SELECT count(*) FROM t WHERE id > 10").await;
    assert_eq!(rows, "10", "rows written after the failover on the new primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_pipelined_behind_a_read_goes_to_the_primary() {
    const ROUNDS: i64 = 150;
    // Without read-your-writes, so that the reads (each right after a write) can go to a
    // replica: the write behind them must not follow.
    let t = Topo::start(2, &[FAST_PROBES, "read_your_writes = \"off\""], &[], &[]).await;
    let c = t.client(APP).await;
    let sel = c.prepare("SELECT pg_is_in_recovery()").await.unwrap();
    let ins = c.prepare("INSERT INTO t (id, v) VALUES ($1, 'pipelined')").await.unwrap();
    let mut failures = Vec::new();
    let mut on_replica = 0;
    for n in 0..ROUNDS {
        // Prepared: Bind/Execute/Sync twice, back to back.
        let (a, b) = (3 * n, 3 * n + 1);
        let (pa, pb): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) = ([&a], [&b]);
        let (r, w) = tokio::join!(c.query_one(&sel, &[]), c.execute(&ins, &pa));
        on_replica += usize::from(r.expect("pipelined read").get::<_, bool>(0));
        if let Err(e) = w {
            failures.push(format!("prepared, id {}: {}", 3 * n, short(&e)));
        }
        // Statement text: Parse/Describe/Sync twice, then Bind/Execute/Sync twice.
        let (r, w) = tokio::join!(
            c.query("SELECT pg_is_in_recovery()", &[]),
            c.execute("INSERT INTO t (id, v) VALUES ($1, 'pipelined')", &pb)
        );
        on_replica += usize::from(r.expect("pipelined read")[0].get::<_, bool>(0));
        if let Err(e) = w {
            failures.push(format!("extended, id {}: {}", 3 * n + 1, short(&e)));
        }
        // Simple protocol: two Query messages.
        let insert = format!("INSERT INTO t (id, v) VALUES ({}, 'pipelined')", 3 * n + 2);
        let (r, w) = tokio::join!(c.simple_query("SELECT pg_is_in_recovery()"), c.simple_query(&insert));
        on_replica += usize::from(rows(&r.expect("pipelined read")) == ["t"]);
        if let Err(e) = w {
            failures.push(format!("simple, id {}: {}", 3 * n + 2, short(&e)));
        }
    }
    println!(
        "ROUTING pipelined read+write: {} rounds, {on_replica} of {} reads on replicas, {} failed writes; route \
         stats {:?}",
        3 * ROUNDS,
        3 * ROUNDS,
        failures.len(),
        t.counts(APP)
    );
    assert!(
        failures.is_empty(),
        "{} pipelined writes failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(psql(&t.nodes[0], "SELECT count(*) FROM t").await, (3 * ROUNDS).to_string());
    assert!(on_replica > 0, "no pipelined read reached a replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_aliases_session_mode_and_primary_reads() {
    let aliases: [(&str, &[&str]); 3] = [
        ("app_ro", &["route = \"replica\""]),
        ("app_never", &["primary_reads = \"never\""]),
        ("app_session", &["pool_mode = \"session\""]),
    ];
    let general = [FAST_PROBES, "health_check_fail_threshold = 2"];
    let t = Topo::start(2, &general, &aliases, &["[users.writer]\nroute = \"primary\"\n"]).await;
    let (primary, replicas) = (t.port(0), t.replica_ports());
    let c = t.client(APP).await;

    // Hint comments.
    for _ in 0..10 {
        let port = port_of(&c, "/* pgsluice:primary */ SELECT inet_server_port()").await.expect("hinted read");
        assert_eq!(port, primary, "/* pgsluice:primary */");
        let row = c.query_one("/* pgsluice:primary */ SELECT inet_server_port()", &[]).await.expect("hinted");
        assert_eq!(port_col(&row, 0), primary, "/* pgsluice:primary */ (extended)");
        // stable_one() is not allow-listed: the primary, unless the hint says otherwise.
        let sql = "/* pgsluice:replica */ SELECT inet_server_port(), stable_one()";
        let port = port_of(&c, sql).await.unwrap_or_else(|e| panic!("{sql}: {}", short(&e)));
        assert!(replicas.contains(&port), "{sql} ran on {port}");
        let port = port_of(&c, "SELECT inet_server_port(), stable_one()").await.expect("unknown function");
        assert_eq!(port, primary, "a SELECT with an unknown function");
    }

    // Session mode is never routed.
    let cs = t.client("app_session").await;
    let ports = reads(&cs, 10, "session mode").await;
    assert!(ports.iter().all(|p| *p == primary), "session mode reads: {ports:?}");

    // The read-only alias: every request to a replica.
    let ro = t.client("app_ro").await;
    let ro_reads = t.tally(&reads(&ro, 20, "app_ro").await);
    assert_eq!(ro_reads.n(0), 0, "app_ro reads: {ro_reads}");
    let e = ro.batch_execute("INSERT INTO t (id) VALUES (1)").await.must_fail("a write through app_ro");
    assert_eq!(sqlstate(&e).as_deref(), Some("25006"), "{}", short(&e));
    let e = ro.query_one("SELECT nextval('s')", &[]).await.must_fail("nextval through app_ro");
    assert_eq!(sqlstate(&e).as_deref(), Some("25006"), "{}", short(&e));
    ro.batch_execute("BEGIN").await.expect("begin on app_ro");
    let ports = [read_port(&ro).await.unwrap(), read_port_ext(&ro).await.unwrap()];
    ro.batch_execute("COMMIT").await.expect("commit on app_ro");
    assert!(ports[0] == ports[1] && replicas.contains(&ports[0]), "app_ro transaction: {ports:?}");

    // primary_reads = "never" with replicas up: reads on replicas, writes on the primary.
    let nv = t.client("app_never").await;
    assert!(replicas.contains(&read_port(&nv).await.expect("app_never read")));
    let port = port_of(&nv, "INSERT INTO t (id) VALUES (2) RETURNING inet_server_port()").await.expect("write");
    assert_eq!(port, primary, "app_never write");

    // Per-user route: `writer` goes to the primary for everything.
    let w = t.pooler.try_connect(WRITER, WRITER_PW, APP).await.expect("writer connects");
    let ports = reads(&w, 10, "writer").await;
    assert!(ports.iter().all(|p| *p == primary), "reads of a user with route = primary: {ports:?}");
    let wc = counts(&t.pooler, APP, WRITER);
    assert_eq!(wc.reads_replica, 0, "route stats of writer: {wc:?}");

    // Both replicas die.
    let (r1, r2) = (t.nodes[1].clone(), t.nodes[2].clone());
    blocking(move || {
        std::thread::scope(|s| {
            s.spawn(|| r1.stop(true).unwrap_or_else(|e| panic!("stop replica 1: {e}")));
            s.spawn(|| r2.stop(true).unwrap_or_else(|e| panic!("stop replica 2: {e}")));
        })
    })
    .await;
    for db in [APP, "app_ro", "app_never"] {
        wait_topology(&t.cluster(db), Duration::from_secs(5), "replicas marked down", |_, hosts| {
            hosts[1..].iter().all(|h| !h.status.up && !h.status.eligible)
        })
        .await;
    }

    // fallback (the default): reads go to the primary and succeed.
    let fallbacks = t.counts(APP).fallbacks;
    let ports = reads(&c, 20, "app with both replicas down").await;
    assert!(ports.iter().all(|p| *p == primary), "fallback reads: {ports:?}");
    let counts = t.counts(APP);
    assert!(counts.fallbacks >= fallbacks + 20, "fallbacks counted: {counts:?}");

    // route = "replica": 08006, no replica is eligible.
    for _ in 0..2 {
        let e = read_port(&ro).await.must_fail("app_ro read without replicas");
        assert_eq!(sqlstate(&e).as_deref(), Some("08006"), "{}", short(&e));
        assert!(message(&e).contains("no replica"), "{}", short(&e));
    }
    assert!(!ro.is_closed(), "app_ro client survives the error");

    // primary_reads = "never": the same for reads; writes still work.
    let e = read_port(&nv).await.must_fail("app_never read without replicas");
    assert_eq!(sqlstate(&e).as_deref(), Some("08006"), "{}", short(&e));
    assert!(message(&e).contains("no replica"), "{}", short(&e));
    let port = port_of(&nv, "INSERT INTO t (id) VALUES (3) RETURNING inet_server_port()").await.expect("write");
    assert_eq!(port, primary, "app_never write without replicas");
    println!(
        "ROUTING hints/aliases: app {:?}; app_ro {:?}; app_never {:?}; app_session {:?}",
        t.counts(APP),
        t.counts("app_ro"),
        t.counts("app_never"),
        t.counts("app_session")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_survive_a_replica_killed_abruptly() {
    const CLIENTS: usize = 4;
    const READS: usize = 100;
    let t = Topo::start(2, &[FAST_PROBES], &[], &[]).await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let c = t.client(APP).await;
        // Warm: pooled connections to both replicas.
        let warm = t.tally(&reads(&c, 20, "warm-up").await);
        assert_eq!(warm.n(0), 0, "warm-up reads: {warm}");
        clients.push(Arc::new(c));
    }
    let dead = t.port(1);
    let r1 = t.nodes[1].clone();
    blocking(move || r1.stop(true).unwrap_or_else(|e| panic!("stop replica 1: {e}"))).await;
    let killed = Instant::now();

    // Right away, from every client at once.
    let before = t.counts(APP);
    let run = |clients: &[Arc<Client>]| {
        let tasks: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let c = c.clone();
                tokio::spawn(async move {
                    let mut ports = Vec::new();
                    let mut errors = Vec::new();
                    for n in 0..READS {
                        let r = if n % 2 == 0 { read_port(&c).await } else { read_port_ext(&c).await };
                        match r {
                            Ok(p) => ports.push(p),
                            Err(e) => errors.push(format!("client {k} read {n}: {}", short(&e))),
                        }
                    }
                    (ports, errors)
                })
            })
            .collect();
        async move {
            let (mut ports, mut errors) = (Vec::new(), Vec::new());
            for task in tasks {
                let (p, e) = task.await.expect("reader panicked");
                ports.extend(p);
                errors.extend(e);
            }
            (ports, errors)
        }
    };
    let (ports, errors) = run(&clients).await;
    let right_after = t.tally(&ports);
    let took = killed.elapsed();
    let mid = t.counts(APP);
    let snap = t.describe(APP);
    assert!(errors.is_empty(), "{} reads failed right after the kill: {errors:?}; {snap}", errors.len());

    let cluster = t.cluster(APP);
    wait_topology(&cluster, Duration::from_secs(5), "killed replica marked down", |_, hosts| {
        !hosts[1].status.up && !hosts[1].status.eligible
    })
    .await;
    let settled = t.counts(APP);
    let (ports, errors) = run(&clients).await;
    let later = t.tally(&ports);
    let end = t.counts(APP);
    println!(
        "ROUTING replica killed: {} reads right after ({} ms): {right_after}, retries {}; after it was marked down: \
         {later}, retries {}; route stats {end:?}",
        CLIENTS * READS,
        took.as_millis(),
        mid.retries - before.retries,
        end.retries - settled.retries,
    );
    assert!(errors.is_empty(), "{} reads failed once the replica was down: {errors:?}", errors.len());
    assert_eq!(right_after.n(1), 0, "port {dead} is dead");
    assert_eq!(later.n(1), 0);
    assert!(later.n(2) >= later.total() * 9 / 10, "reads once the replica is down: {later}");
    assert_eq!(end.retries, settled.retries, "the dead replica is still tried once marked down: {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_transaction_read_only_client_reads_on_replicas() {
    let general = [FAST_PROBES, "track_extra_parameters = [\"default_transaction_read_only\"]"];
    let t = Topo::start(2, &general, &[], &[]).await;
    let (primary, replicas) = (t.port(0), t.replica_ports());
    let connstr = format!("{} options='-c default_transaction_read_only=on'", t.pooler.connstr(APP, APP_PW, APP));
    let c = connect_str(&connstr).await.expect("connect with options");
    assert_eq!(simple_one(&c, "SHOW default_transaction_read_only").await, "on");

    let mut used = Vec::new();
    for _ in 0..6 {
        c.batch_execute("BEGIN").await.expect("begin");
        let ports = [read_port(&c).await.unwrap(), read_port_ext(&c).await.unwrap(), read_port(&c).await.unwrap()];
        assert_eq!(simple_one(&c, "SELECT pg_is_in_recovery()").await, "t", "BEGIN of a read-only client");
        c.batch_execute("COMMIT").await.expect("commit");
        assert!(ports.iter().all(|p| *p == ports[0]) && replicas.contains(&ports[0]), "transaction on {ports:?}");
        used.push(ports[0]);
    }
    let e = c.batch_execute("INSERT INTO t (id) VALUES (1)").await.must_fail("a write of a read-only client");
    assert_eq!(sqlstate(&e).as_deref(), Some("25006"), "{}", short(&e));
    assert!(!c.is_closed());

    // A client without the option: plain BEGIN on the primary.
    let plain = t.client(APP).await;
    plain.batch_execute("BEGIN").await.unwrap();
    assert_eq!(read_port(&plain).await.unwrap(), primary, "plain BEGIN of an ordinary client");
    plain.batch_execute("COMMIT").await.unwrap();

    // Switched off in the session: writes go to the primary again.
    c.batch_execute("SET default_transaction_read_only = off").await.expect("SET");
    let port = port_of(&c, "INSERT INTO t (id) VALUES (2) RETURNING inet_server_port()").await;
    let port = port.unwrap_or_else(|e| panic!("write after SET default_transaction_read_only = off: {}", short(&e)));
    assert_eq!(port, primary);
    println!(
        "ROUTING default_transaction_read_only: transactions on {}; route stats {:?}",
        t.tally(&used),
        t.counts(APP)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_statement_routes_a_plain_begin_by_what_follows() {
    let general = [FAST_PROBES, "transaction_routing = \"first_statement\"", "read_your_writes = \"off\""];
    let t = Topo::start(2, &general, &[], &[]).await;
    let c = t.client(APP).await;
    let replicas = t.replica_ports();
    let primary = t.port(0);

    // BEGIN is answered at once (the client sees an open transaction); the first statement
    // decides where the whole transaction runs.
    for _ in 0..5 {
        c.batch_execute("BEGIN").await.expect("begin");
        let ports = [read_port(&c).await.unwrap(), read_port_ext(&c).await.unwrap()];
        assert_eq!(simple_one(&c, "SHOW transaction_read_only").await, "on", "a replica's transaction");
        c.batch_execute("COMMIT").await.expect("commit");
        assert!(ports[0] == ports[1] && replicas.contains(&ports[0]), "read-first transaction on {ports:?}");

        c.batch_execute("BEGIN").await.expect("begin");
        let port = port_of(&c, "INSERT INTO t (id) VALUES (nextval('s')) RETURNING inet_server_port()").await;
        let read = read_port(&c).await.unwrap();
        c.batch_execute("COMMIT").await.expect("commit");
        assert_eq!((port.expect("write-first transaction"), read), (primary, primary));
    }
    // The transaction really was one: a rollback undoes the write.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("INSERT INTO t (id) VALUES (-1)").await.unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(psql(&t.nodes[0], "SELECT count(*) FROM t WHERE id = -1").await, "0");
    // The documented risk: a write after a read-first start fails on the replica (25006),
    // and the client goes on.
    c.batch_execute("BEGIN").await.unwrap();
    read_port(&c).await.unwrap();
    let e = c.batch_execute("INSERT INTO t (id) VALUES (-2)").await.must_fail("write in a read-first transaction");
    assert_eq!(sqlstate(&e).as_deref(), Some("25006"), "{}", short(&e));
    c.batch_execute("ROLLBACK").await.unwrap();
    // An empty transaction and BEGIN + COMMIT work; other BEGIN forms are routed as before.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    assert_eq!(port_of(&c, "BEGIN; SELECT inet_server_port(); COMMIT").await.unwrap(), primary);
    c.batch_execute("BEGIN READ ONLY").await.unwrap();
    assert!(replicas.contains(&read_port(&c).await.unwrap()));
    c.batch_execute("COMMIT").await.unwrap();
    println!("ROUTING first_statement: route stats {:?}", t.counts(APP));
}
