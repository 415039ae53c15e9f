//! Issue 19: a login pgsluice cannot make to the server (a credential it does not hold, a
//! wrong password, a missing role or database) ends at once with the real SQLSTATE, also
//! when health probes are on (the topology is not waited out), and the pooler keeps serving
//! other users.

use std::time::{Duration, Instant};

use crate::harness::*;

/// A pooler probing the shared cluster as the superuser (so it elects the primary), serving
/// `good` (a working database) and what `build` adds.
async fn probed(good: &TestDb, build: impl FnOnce(PoolerBuilder) -> PoolerBuilder) -> Pooler {
    let b = pooler()
        .general("health_check_user = \"postgres\"")
        .general(&format!("health_check_password = \"{SU_PASSWORD}\""))
        .general("health_check_interval = \"200ms\"")
        .database(good, &[])
        .user(&good.name, &good.password);
    build(b).start().await
}

/// Connects `user` to `dbname` through `p`; the error, how long it took.
async fn refused(p: &Pooler, user: &str, password: &str, dbname: &str) -> (tokio_postgres::Error, Duration) {
    let started = Instant::now();
    let e = p.try_connect(user, password, dbname).await.must_fail("the login must be refused");
    (e, started.elapsed())
}

/// The pooler still serves the working database.
async fn still_serving(p: &Pooler, good: &TestDb) {
    let c = p.connect(good).await;
    assert_eq!(scalar(&c, "select 1").await.unwrap().as_deref(), Some("1"));
}

/// What PostgreSQL itself answers `user` / `password` on `dbname`.
async fn direct_sqlstate(user: &str, password: &str, dbname: &str) -> Option<String> {
    let connstr = format!("host=127.0.0.1 port={} user={user} password={password} dbname={dbname}", pg().port());
    let e = connect_str(&connstr).await.must_fail("PostgreSQL must refuse it too");
    sqlstate(&e)
}

#[tokio::test]
async fn an_md5_only_credential_for_a_scram_server_fails_at_once() {
    let good = fresh_db("refgood1");
    let db = fresh_db("refmd5");
    let hash = postgres_protocol::password::md5(db.password.as_bytes(), &db.name);
    // md5 client auth works with the hash; the server asks pgsluice for SCRAM, which the
    // hash cannot answer.
    let p = probed(&good, |b| b.general("auth_type = \"md5\"").database(&db, &[]).user(&db.name, &hash)).await;
    let (e, took) = refused(&p, &db.name, &db.password, &db.name).await;
    assert_eq!(sqlstate(&e).as_deref(), Some("28000"), "{}", short(&e));
    assert!(message(&e).contains("SCRAM"), "the reason is pgsluice's: {}", short(&e));
    assert!(!message(&e).contains("no primary"), "not a topology error: {}", short(&e));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    still_serving(&p, &good).await;
}

#[tokio::test]
async fn a_wrong_fixed_password_fails_at_once_with_the_servers_sqlstate() {
    let good = fresh_db("refgood2");
    let db = fresh_db("refpw");
    let p = probed(&good, |b| {
        b.database(&db, &[&format!("user = \"{}\"", db.name), "password = \"not-the-password\""])
            .user(&db.name, &db.password)
    })
    .await;
    let (e, took) = refused(&p, &db.name, &db.password, &db.name).await;
    let want = direct_sqlstate(&db.name, "not-the-password", &db.name).await;
    assert_eq!(sqlstate(&e), want, "{}", short(&e));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    still_serving(&p, &good).await;
}

#[tokio::test]
async fn a_role_missing_on_the_server_fails_at_once_with_the_servers_sqlstate() {
    let good = fresh_db("refgood3");
    let db = fresh_db("refrole");
    let ghost = format!("ghost_{}", std::process::id());
    let p = probed(&good, |b| b.database(&db, &[]).user(&ghost, "ghost-pw")).await;
    let (e, took) = refused(&p, &ghost, "ghost-pw", &db.name).await;
    let want = direct_sqlstate(&ghost, "ghost-pw", &db.name).await;
    assert_eq!(sqlstate(&e), want, "{}", short(&e));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    still_serving(&p, &good).await;
}

#[tokio::test]
async fn a_database_missing_on_the_server_fails_at_once_with_3d000() {
    let good = fresh_db("refgood4");
    let missing = format!("nodb_{}", std::process::id());
    let p = probed(&good, |b| b.section(&format!("[databases.{missing}]\nhosts = [\"127.0.0.1:{}\"]\n", pg().port())))
        .await;
    // (The probes of the missing database are refused from their first round.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (e, took) = refused(&p, &good.name, &good.password, &missing).await;
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"), "{}", short(&e));
    assert!(!message(&e).contains("no primary server is available"), "{}", short(&e));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    still_serving(&p, &good).await;
}
