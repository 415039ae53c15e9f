//! Pooling behaviour: transaction-mode multiplexing, session-mode reset, statement mode,
//! waiting and limits.

use std::time::{Duration, Instant};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_share_five_server_connections() {
    let db = fresh_db("many");
    let p = pooler()
        .general("max_client_conn = 500")
        .database(&db, &["pool_size = 5"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let p = std::sync::Arc::new(p);
    let mut tasks = Vec::new();
    for i in 0..200i32 {
        let (p, db) = (p.clone(), db.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = p.connect(&db).await;
            for round in 0..5i32 {
                let tx = c.transaction().await.unwrap();
                let v: i32 = tx.query_one("select $1::int4 * 1000 + $2::int4", &[&i, &round]).await.unwrap().get(0);
                assert_eq!(v, i * 1000 + round);
                let s: String = tx.query_one("select 'client ' || $1::text", &[&i.to_string()]).await.unwrap().get(0);
                assert_eq!(s, format!("client {i}"));
                tx.commit().await.unwrap();
            }
            // Outside a transaction: simple protocol (named prepared statements across
            // transactions are the driver-fidelity issue's work).
            let v = simple_one(&c, &format!("select count(*) from generate_series(1, {})", i + 1)).await;
            assert_eq!(v, (i + 1).to_string());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let backends: i64 =
        su_sql("postgres", &format!("select count(*) from pg_stat_activity where usename = '{}'", db.name))
            .parse()
            .unwrap();
    assert!(backends <= 5, "pool of 5 used {backends} server connections");
}

#[tokio::test]
async fn session_mode_resets_server_state_between_clients() {
    let db = fresh_db("sessionreset");
    let p = pooler()
        .general("pool_mode = \"session\"")
        .database(&db, &["pool_size = 1"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let a = p.connect(&db).await;
    let pid_a: i32 = a.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    a.batch_execute("set statement_timeout = '12345ms'; create temp table t(x int)").await.unwrap();
    drop(a);
    // Same (single) server connection, but DISCARD ALL ran.
    let mut pid_b = 0;
    let mut timeout = String::new();
    for _ in 0..50 {
        let b = p.connect(&db).await;
        pid_b = b.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
        timeout = b.query_one("show statement_timeout", &[]).await.unwrap().get(0);
        let temp: i64 = b
            .query_one("select count(*) from pg_class where relname = 't' and relpersistence = 't'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(temp, 0);
        if pid_b == pid_a {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pid_a, pid_b, "pool of 1 should reuse the server connection");
    assert_eq!(timeout, "0");
}

#[tokio::test]
async fn session_mode_keeps_one_server_for_the_session() {
    let db = fresh_db("sessionsticky");
    let p = pooler()
        .general("pool_mode = \"session\"")
        .database(&db, &["pool_size = 3"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let c = p.connect(&db).await;
    c.batch_execute("set application_name = 'sticky'").await.unwrap();
    let first: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    for _ in 0..10 {
        let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
        assert_eq!(pid, first);
    }
}

#[tokio::test]
async fn statement_mode_refuses_transaction_blocks() {
    let db = fresh_db("stmtmode");
    let p = pooler()
        .general("pool_mode = \"statement\"")
        .database(&db, &["pool_size = 2"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let c = p.connect(&db).await;
    assert_eq!(simple_one(&c, "select 7").await, "7");
    let e = c.batch_execute("begin").await.must_fail("BEGIN must be refused in statement mode");
    assert!(message(&e).contains("statement pooling mode"), "{e}");
    // Other clients are unaffected.
    let c2 = p.connect(&db).await;
    assert_eq!(simple_one(&c2, "select 8").await, "8");
}

#[tokio::test]
async fn transaction_mode_keeps_server_for_whole_transaction() {
    let db = fresh_db("txnsticky");
    let p = pooler().database(&db, &["pool_size = 4"]).user(&db.name, &db.password).start().await;
    let mut c = p.connect(&db).await;
    let tx = c.transaction().await.unwrap();
    let a: i32 = tx.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    tx.batch_execute("create temp table tt(x int) on commit drop; insert into tt values (1)").await.unwrap();
    let b: i32 = tx.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    let n: i64 = tx.query_one("select count(*) from tt", &[]).await.unwrap().get(0);
    tx.commit().await.unwrap();
    assert_eq!((a, n), (b, 1));
}

#[tokio::test]
async fn query_wait_timeout_gives_an_error_not_a_hang() {
    let db = fresh_db("waittimeout");
    let p = pooler()
        .general("query_wait_timeout = \"1s\"")
        .database(&db, &["pool_size = 1"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let holder = p.connect(&db).await;
    holder.batch_execute("begin; select 1").await.unwrap();
    let waiter = p.connect(&db).await;
    let started = Instant::now();
    let e = waiter.query_one("select 2", &[]).await.must_fail("must time out");
    let waited = started.elapsed();
    assert_eq!(sqlstate(&e).as_deref(), Some("57014"), "{e}");
    assert!(message(&e).contains("query_wait_timeout"), "{e}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "waited {waited:?}");
    // The waiting client's session survives; once the holder commits it gets served.
    holder.batch_execute("commit").await.unwrap();
    let v: i32 = waiter.query_one("select 3", &[]).await.unwrap().get(0);
    assert_eq!(v, 3);
}

#[tokio::test]
async fn waiters_are_served_when_the_server_frees_up() {
    let db = fresh_db("waitserve");
    let p = pooler().database(&db, &["pool_size = 1"]).user(&db.name, &db.password).start().await;
    let holder = p.connect(&db).await;
    holder.batch_execute("begin").await.unwrap();
    let waiter = p.connect(&db).await;
    let q = tokio::spawn(async move { waiter.query_one("select 5", &[]).await.map(|r| r.get::<_, i32>(0)) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!q.is_finished(), "waiter should wait while the only server is in a transaction");
    holder.batch_execute("commit").await.unwrap();
    assert_eq!(q.await.unwrap().unwrap(), 5);
}

#[tokio::test]
async fn max_client_conn_exceeded_is_53300() {
    let db = fresh_db("maxclients");
    let p = pooler().general("max_client_conn = 2").database(&db, &[]).user(&db.name, &db.password).start().await;
    let _a = p.connect(&db).await;
    let _b = p.connect(&db).await;
    let e = p.try_connect(&db.name, &db.password, &db.name).await.must_fail("third client must be refused");
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    drop(_a);
    // A slot frees up once a client leaves.
    let mut ok = false;
    for _ in 0..40 {
        if p.try_connect(&db.name, &db.password, &db.name).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "a new client should be accepted after one left");
}

#[tokio::test]
async fn session_parameters_follow_the_client() {
    let db = fresh_db("params");
    let p = pooler().database(&db, &["pool_size = 2"]).user(&db.name, &db.password).start().await;
    let a = p.connect(&db).await;
    let b = p.connect(&db).await;
    a.batch_execute("set timezone = 'Asia/Tokyo'").await.unwrap();
    for _ in 0..10 {
        let tz_b = simple_one(&b, "show timezone").await;
        let tz_a = simple_one(&a, "show timezone").await;
        assert_eq!(tz_a, "Asia/Tokyo");
        assert_ne!(tz_b, "Asia/Tokyo");
    }
}
