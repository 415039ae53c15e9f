//! LISTEN/NOTIFY in transaction mode (issue 17): one hub connection per (database, user)
//! fans notifications out to idle clients; LISTEN no longer pins. Raw-protocol clients here
//! (trust authentication, so a client is a socket), real drivers in `drivers.rs`-style
//! scripts at the end.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::*;

const HUB: &str = "pgsluice listen hub";

/// pgsluice in transaction mode with a trust login for `db`'s role.
async fn start(db: &TestDb, general: &[&str], pool: &[&str]) -> Pooler {
    let mut b = pooler().general("auth_type = \"trust\"").general("max_client_conn = 300");
    for g in general {
        b = b.general(g);
    }
    b.user(&db.name, &db.password).database_with_login(db, pool).start().await
}

async fn client(p: &Pooler, db: &TestDb) -> TcpStream {
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&startup_packet(PROTOCOL_3_0, &[("user", &db.name), ("database", &db.name)])).await.unwrap();
    loop {
        let m = msg(&mut s).await;
        assert_ne!(m.tag, b'E', "login failed: {}", m.message());
        if m.tag == b'Z' {
            return s;
        }
    }
}

async fn msg(s: &mut TcpStream) -> Msg {
    read_msg_within(s, Duration::from_secs(10)).await.expect("pgsluice closed the connection")
}

/// Runs `sql` (simple Query); every message up to ReadyForQuery, which is last.
async fn exec(s: &mut TcpStream, sql: &str) -> Vec<Msg> {
    s.write_all(&query(sql)).await.unwrap();
    let mut out = Vec::new();
    loop {
        let m = msg(s).await;
        let z = m.tag == b'Z';
        out.push(m);
        if z {
            return out;
        }
    }
}

fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// (channel, payload) of a NotificationResponse.
fn notification(m: &Msg) -> (String, String) {
    assert_eq!(m.tag, b'A', "not a notification: {m:?}");
    let mut parts = m.body[4..].split(|&b| b == 0).map(|p| String::from_utf8_lossy(p).into_owned());
    (parts.next().unwrap_or_default(), parts.next().unwrap_or_default())
}

/// Whether anything arrives on `s` within `d` (without consuming it).
async fn arrives_within(s: &mut TcpStream, d: Duration) -> bool {
    let mut b = [0u8; 1];
    tokio::time::timeout(d, s.peek(&mut b)).await.is_ok()
}

fn hub_backends(db: &TestDb) -> i64 {
    let sql =
        format!("select count(*) from pg_stat_activity where usename = '{}' and application_name = '{HUB}'", db.name);
    su_sql("postgres", &sql).parse().expect("count")
}

fn backends(db: &TestDb) -> i64 {
    su_sql("postgres", &format!("select count(*) from pg_stat_activity where usename = '{}'", db.name))
        .parse()
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_idle_listeners_on_a_pool_of_5_get_every_notification_in_order() {
    let db = fresh_db("ntf_fanout");
    let p = start(&db, &[], &["pool_size = 5"]).await;
    let mut listeners = Vec::new();
    for i in 0..100 {
        let mut s = client(&p, &db).await;
        // Case folding as in PostgreSQL: Jobs is jobs, "Mixed" keeps its case.
        let sql = if i % 2 == 0 { "LISTEN Jobs; LISTEN \"Mixed\"" } else { "listen jobs;listen \"Mixed\";" };
        assert_eq!(tags(&exec(&mut s, sql).await), "CCZ");
        listeners.push(s);
    }
    let mut notifier = client(&p, &db).await;
    for n in 0..20 {
        let ch = if n % 2 == 0 { "jobs" } else { "\"Mixed\"" };
        assert_eq!(tags(&exec(&mut notifier, &format!("NOTIFY {ch}, '{n}'")).await), "CZ");
    }
    for s in &mut listeners {
        for n in 0..20 {
            let (ch, payload) = notification(&msg(s).await);
            assert_eq!((ch.as_str(), payload), (if n % 2 == 0 { "jobs" } else { "Mixed" }, n.to_string()));
        }
    }
    // The pool's connections plus one hub, however many clients listen.
    assert_eq!(hub_backends(&db), 1);
    assert!(backends(&db) <= 6, "{} server connections", backends(&db));
    // LISTEN pins nobody: a pool of 5 still serves every listener's queries.
    for s in &mut listeners {
        assert_eq!(tags(&exec(s, "SELECT 1").await), "TDCZ");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_in_a_transaction_gets_its_notification_after_commit() {
    let db = fresh_db("ntf_txn");
    let p = start(&db, &[], &["pool_size = 2"]).await;
    let mut a = client(&p, &db).await;
    assert_eq!(tags(&exec(&mut a, "LISTEN t").await), "CZ");
    assert_eq!(tags(&exec(&mut a, "BEGIN; SELECT 1").await), "CTDCZ");
    let mut b = client(&p, &db).await;
    exec(&mut b, "NOTIFY t, 'x'").await;
    assert!(!arrives_within(&mut a, Duration::from_millis(500)).await, "delivered inside the transaction");
    let got = exec(&mut a, "SELECT 2").await;
    assert_eq!(tags(&got), "TDCZ", "still nothing inside the transaction");
    let got = exec(&mut a, "COMMIT").await;
    assert_eq!(tags(&got), "CZ");
    assert_eq!(got[1].body, b"I");
    assert_eq!(notification(&msg(&mut a).await), ("t".into(), "x".into()), "after ReadyForQuery I");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisten_discard_all_and_disconnect_stop_delivery_and_the_hub_unlistens() {
    let db = fresh_db("ntf_stop");
    let p = start(&db, &["max_client_listen_channels = 3"], &["pool_size = 2"]).await;
    let (mut a, mut b, c) = (client(&p, &db).await, client(&p, &db).await, client(&p, &db).await);
    let mut c = c;
    exec(&mut a, "LISTEN a; LISTEN ctl").await;
    exec(&mut b, "LISTEN b").await;
    exec(&mut c, "LISTEN c").await;
    // Past max_client_listen_channels: 54000, and nothing of the request applies.
    let e = exec(&mut a, "LISTEN x; LISTEN y").await;
    assert_eq!((tags(&e).as_str(), e[0].code().as_str()), ("EZ", "54000"));
    let mut n = client(&p, &db).await;
    // UNLISTEN a: a's next notification is ctl, not a.
    exec(&mut a, "UNLISTEN a").await;
    exec(&mut n, "NOTIFY a, '1'; NOTIFY x, '1'; NOTIFY ctl, '2'").await;
    assert_eq!(notification(&msg(&mut a).await), ("ctl".into(), "2".into()));
    // DISCARD ALL (on the server too) ends b's channels.
    assert_eq!(tags(&exec(&mut b, "DISCARD ALL").await), "CZ");
    exec(&mut b, "LISTEN ctl").await;
    exec(&mut n, "NOTIFY b, '3'; NOTIFY ctl, '4'").await;
    assert_eq!(notification(&msg(&mut b).await), ("ctl".into(), "4".into()));
    assert_eq!(notification(&msg(&mut a).await), ("ctl".into(), "4".into()));
    // Disconnect, UNLISTEN *: the hub has nothing left and says so to its server.
    drop(c);
    exec(&mut a, "UNLISTEN *").await;
    exec(&mut b, "UNLISTEN *").await;
    let unlistened = format!(
        "select count(*) from pg_stat_activity where usename = '{}' and application_name = '{HUB}' and query = 'UNLISTEN *'",
        db.name
    );
    let dbn = db.clone();
    let ok =
        eventually(Duration::from_secs(5), || su_sql("postgres", &unlistened) == "1" || hub_backends(&dbn) == 0).await;
    assert!(
        ok,
        "the hub still listens: {}",
        su_sql("postgres", "select application_name, query from pg_stat_activity")
    );
    exec(&mut n, "NOTIFY ctl, '5'").await;
    assert!(!arrives_within(&mut a, Duration::from_millis(300)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hub_connection_sends_a_notice_and_delivery_resumes() {
    let db = fresh_db("ntf_lost");
    let p = start(&db, &[], &["pool_size = 2"]).await;
    let mut a = client(&p, &db).await;
    exec(&mut a, "LISTEN k").await;
    let kill = format!(
        "select count(pg_terminate_backend(pid)) from pg_stat_activity where usename = '{}' and application_name = '{HUB}'",
        db.name
    );
    assert_eq!(su_sql("postgres", &kill), "1");
    let m = msg(&mut a).await;
    assert_eq!(m.tag, b'N', "{m:?}");
    assert!(m.message().contains("lost"), "{}", m.message());
    // Reconnected and listening again: a notification arrives (those sent during the gap may
    // be lost, so keep sending until one does).
    let mut n = client(&p, &db).await;
    let mut got = None;
    for i in 0..50 {
        exec(&mut n, &format!("NOTIFY k, '{i}'")).await;
        if arrives_within(&mut a, Duration::from_millis(200)).await {
            got = Some(notification(&msg(&mut a).await));
            break;
        }
    }
    assert!(got.is_some_and(|(ch, _)| ch == "k"), "no notification after the hub reconnected");
    assert_eq!(hub_backends(&db), 1);
    // /metrics tells the loss, and the hub back with its one channel and subscriber.
    let text = pgsluice::metrics::render(&p.handle.as_ref().unwrap().shared);
    let series = |name: &str| {
        let prefix = format!("{name}{{database=\"{}\",user=\"{}\"}} ", db.name, db.name);
        text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map(str::to_string)
    };
    assert_eq!(series("pgsluice_listen_hub_lost_total").as_deref(), Some("1"), "{text}");
    assert_eq!(series("pgsluice_listen_hub_connected").as_deref(), Some("1"));
    assert_eq!(series("pgsluice_listen_hub_channels").as_deref(), Some("1"));
    assert_eq!(series("pgsluice_listen_hub_subscribers").as_deref(), Some("1"));
    assert!(series("pgsluice_listen_notifications_total").is_some_and(|n| n != "0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_closed_with_53400() {
    let db = fresh_db("ntf_slow");
    let p = start(&db, &["max_client_notification_bytes = 4096"], &["pool_size = 2"]).await;
    let mut a = client(&p, &db).await;
    exec(&mut a, "LISTEN s").await;
    // In a transaction nothing is delivered: the queue fills past its bound.
    exec(&mut a, "BEGIN").await;
    let mut n = client(&p, &db).await;
    // (Distinct payloads: PostgreSQL folds identical ones of one transaction.)
    exec(&mut n, "SELECT pg_notify('s', g || repeat('p', 1000)) FROM generate_series(1, 10) g").await;
    let mut got = exec(&mut a, "SELECT 1").await;
    got.extend(exec(&mut a, "COMMIT").await);
    // After COMMIT: the FATAL (not a silent gap).
    let mut last = msg(&mut a).await;
    while last.tag == b'A' {
        last = msg(&mut a).await;
    }
    assert_eq!((last.tag, last.code()), (b'E', "53400".to_string()), "{last:?}");
    assert!(read_msg_within(&mut a, Duration::from_secs(5)).await.is_none(), "connection closed");
}

// === Real drivers: 100 listeners on a pool of 5 ===

/// Checks a driver script's summary and that the server saw at most the pool plus the hub.
fn assert_fanout(out: &crate::drivers::Finished, db: &TestDb) {
    out.assert_success();
    assert!(out.stdout.contains("listeners=100 ") && out.stdout.contains("errors=0"), "{}", out.report());
    crate::drivers::assert_server_connections_at_most(db, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_notifies_100_listeners_pool_5() {
    let db = fresh_db("ntf_psycopg");
    let p = crate::drivers::driver_pooler(&db, 5).await;
    let mut cmd = tokio::process::Command::new(crate::drivers::python());
    cmd.arg(crate::drivers::driver_script("notify_psycopg.py"))
        .arg(p.connstr(&db.name, &db.password, &db.name))
        .args(["100", "20"]);
    assert_fanout(&crate::drivers::run_client("notify_psycopg.py", &mut cmd).await, &db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_add_listener_100_listeners_pool_5() {
    let db = fresh_db("ntf_asyncpg");
    let p = crate::drivers::driver_pooler(&db, 5).await;
    let mut cmd = tokio::process::Command::new(crate::drivers::python());
    cmd.arg(crate::drivers::driver_script("notify_asyncpg.py")).arg(crate::drivers::uri(&p, &db)).args(["100", "20"]);
    assert_fanout(&crate::drivers::run_client("notify_asyncpg.py", &mut cmd).await, &db);
}

/// node-postgres from `tests/drivers/node_modules` (`scripts/test` runs `npm ci` there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_notification_100_listeners_pool_5() {
    let db = fresh_db("ntf_node");
    let p = crate::drivers::driver_pooler(&db, 5).await;
    let script = crate::drivers::driver_script("notify_node.js");
    let modules = script.with_file_name("node_modules").join("pg");
    assert!(modules.is_dir(), "{} is missing: run scripts/test (it runs npm ci in tests/drivers)", modules.display());
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(&script).arg(crate::drivers::uri(&p, &db)).args(["100", "20"]);
    assert_fanout(&crate::drivers::run_client("notify_node.js", &mut cmd).await, &db);
}
