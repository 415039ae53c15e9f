//! Replicas that lag or die (issue 20), against a real primary and two streaming replicas:
//! - a replica applying WAL 0.7 s late is kept from reads by `max_replica_lag = "200ms"` at
//!   the default probe settings, its `lag_seconds` matches PostgreSQL's own measure, and it
//!   takes reads again once it has caught up;
//! - killing a replica (`-m immediate`) under `pgbench -S -c 20` fails no transaction: reads
//!   in flight on it are sent again to another host;
//! - the same kill inside a read-only transaction ends that transaction with an error, and
//!   nothing else.
//!
//! Uses the routing tests' topology (node 0 the primary, nodes 1 and 2 the replicas).

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::routing::{
    leave_wal_page_start, psql, read_port, start_nodes, start_pooler, Topo, Writer, APP, APP_PW, FAST_PROBES,
};

/// Makes `node` apply WAL `delay` late and waits until the setting is live.
async fn delay_replay(node: &Node, delay: &str) {
    psql(node, &format!("ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'")).await;
    psql(node, "SELECT pg_reload_conf()").await;
    for _ in 0..50 {
        if psql(node, "SHOW recovery_min_apply_delay").await.trim() == delay {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("recovery_min_apply_delay = {delay} not applied on port {}", node.port());
}

/// PostgreSQL's lag of replica `node`: `now() - pg_last_xact_replay_timestamp()`, seconds.
async fn replay_delay(node: &Node) -> f64 {
    let v = psql(node, "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())").await;
    v.trim().parse().unwrap_or_else(|_| panic!("replay delay {v:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_past_max_replica_lag_takes_no_reads_at_default_probe_settings() {
    let nodes = start_nodes(2).await;
    leave_wal_page_start(&nodes[0]).await;
    delay_replay(&nodes[2], "700ms").await;
    // Only the bound is set: health_check_interval stays at its default (1 s).
    let pooler = start_pooler(&nodes, &["max_replica_lag = \"200ms\""], &[], &[]).await;
    let t = Topo { nodes, pooler };
    let cluster = t.cluster(APP);
    wait_settled(&cluster, 0).await;

    let writes = Instant::now();
    let writer = Writer::start(&t.pooler, 0);
    let excluded =
        wait_topology(&cluster, Duration::from_secs(5), "delayed replica over the bound", |_, h| !h[2].status.eligible)
            .await;

    // lag_seconds against PostgreSQL's measure, a few times while the writes go on, once the
    // lag is steady (PostgreSQL's measure is from the last replayed commit, which before the
    // writes began was the setup's: it reads high at first).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut pairs = Vec::new();
    for _ in 0..8 {
        let ours = cluster.snapshot()[2].status.lag.map_or(-1.0, |l| l.time.as_secs_f64());
        let pg = replay_delay(&t.nodes[2]).await;
        pairs.push((ours, pg));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    let c = t.client(APP).await;
    let mut ports = Vec::new();
    for k in 0..200 {
        ports.push(read_port(&c).await.unwrap_or_else(|e| panic!("read {k}: {}", short(&e))));
    }
    let during = t.tally(&ports);
    let snap = t.describe(APP);
    let wrote = writer.finish().await;
    let caught_up = Instant::now();
    let back = wait_topology(&cluster, Duration::from_secs(5), "delayed replica eligible after catching up", |_, h| {
        h[2].status.eligible
    })
    .await;
    let idle_lag = cluster.snapshot()[2].status.lag;
    println!(
        "REPLICA LAG 0.7 s, max_replica_lag 200ms, default probes: excluded {} ms after writes began; lag_seconds vs \
         now() - pg_last_xact_replay_timestamp(): {pairs:?}; 200 reads {during}; {wrote} writes; eligible again {} ms \
         after the writes stopped, lag then {idle_lag:?}",
        excluded.as_millis(),
        back.as_millis(),
    );
    assert_eq!(during.n(2), 0, "the delayed replica took reads: {during}; {snap}");
    assert!(writes.elapsed() > excluded, "sanity");
    for (ours, pg) in &pairs {
        assert!((ours - pg).abs() < 0.2, "lag_seconds {ours:.3} vs PostgreSQL's {pg:.3}: {pairs:?}; {snap}");
    }
    assert!(caught_up.elapsed() < Duration::from_secs(5));
    assert_eq!(idle_lag.map(|l| l.time), Some(Duration::ZERO), "an idle primary: no lag once replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_under_pgbench_fails_no_read() {
    let t = Topo::start(2, &[], &[], &[]).await;
    // The tables go in directly on the primary; the run waits until both replicas have them.
    let mut init = pgbench(APP, APP_PW, t.port(0));
    init.args(["-i", "-s", "1", "-q", APP]);
    let out = run_pgbench(&mut init, Duration::from_secs(60)).await;
    assert!(out.ok, "pgbench -i failed\n{}", out.report());
    for replica in &t.nodes[1..] {
        let mut ok = false;
        for _ in 0..100 {
            ok = psql(replica, "SELECT count(*) FROM pgbench_accounts").await.trim() == "100000";
            if ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "pgbench tables not replayed on port {}", replica.port());
    }
    let before = t.counts(APP);

    let mut run = pgbench(APP, APP_PW, t.pooler.port());
    run.args(["-S", "-c", "20", "-j", "2", "-T", "15", "-P", "5", APP]);
    let bench = tokio::spawn(async move { run_pgbench(&mut run, Duration::from_secs(60)).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    let victim = t.nodes[2].clone();
    let killed = Instant::now();
    blocking(move || victim.stop(true).unwrap_or_else(|e| panic!("stop replica 2: {e}"))).await;
    let cluster = t.cluster(APP);
    wait_topology(&cluster, Duration::from_secs(10), "killed replica not eligible", |_, h| !h[2].status.eligible).await;
    let down = killed.elapsed();
    let out = bench.await.expect("pgbench task");
    let after = t.counts(APP);
    let processed = out.field("number of transactions actually processed:");
    let failed = out.field("number of failed transactions:");
    println!(
        "REPLICA KILLED under pgbench -S -c 20 -T 15: {processed} transactions, {failed} failed, exit ok {}; not \
         eligible {} ms after the kill; read_resends {}, retries {}, reads to replicas {}, to the primary {}",
        out.ok,
        down.as_millis(),
        after.read_resends - before.read_resends,
        after.retries - before.retries,
        after.reads_replica - before.reads_replica,
        after.reads_primary - before.reads_primary,
    );
    assert!(out.ok && !out.stderr.contains("aborted"), "pgbench clients aborted\n{}", out.report());
    assert_eq!(failed, 0, "{}", out.report());
    assert!(processed > 1000, "{}", out.report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_inside_a_read_only_transaction_ends_only_that_transaction() {
    let t = Topo::start(2, &[FAST_PROBES], &[], &[]).await;
    let (victim, bystander) = (t.client(APP).await, t.client(APP).await);
    victim.batch_execute("BEGIN READ ONLY").await.expect("begin");
    let port = read_port(&victim).await.expect("read in the transaction");
    let dead = t.nodes.iter().position(|n| n.port() == port).expect("a node");
    assert_ne!(dead, 0, "a read-only transaction runs on a replica");
    let node = t.nodes[dead].clone();
    blocking(move || node.stop(true).unwrap_or_else(|e| panic!("stop replica: {e}"))).await;

    // pgsluice closes the session at once with FATAL 08006 ("... the transaction or session
    // state on it is lost"); the client, idle in its transaction, sees it at its next query.
    let err = read_port(&victim).await.must_fail("the transaction's server is gone");
    println!("REPLICA KILLED inside a read-only transaction: {:?} {}", sqlstate(&err), message(&err));
    assert!(err.is_closed() || sqlstate(&err).as_deref() == Some("08006"), "{err:?}");
    // Everyone else goes on: reads right after the kill, on the surviving hosts.
    for k in 0..50 {
        let p = read_port(&bystander).await.unwrap_or_else(|e| panic!("bystander read {k}: {}", short(&e)));
        assert_ne!(p, port, "read {k} went to the dead replica");
    }
}
