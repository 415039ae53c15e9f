//! Users from PostgreSQL (`auth_user` + `auth_query`, issue 15) against the shared real
//! server: the superuser runs the default query (schema-qualified, `VALID UNTIL` honoured),
//! and clients whose names the auth_file does not list log in with the password PostgreSQL
//! has for them, SCRAM passthrough included.

use std::time::Duration;

use crate::harness::*;

/// pgsluice serving `db` with the superuser as `auth_user` (the only auth_file entry), the
/// given cache TTLs, and `extra` `[general]` lines.
async fn pooler_with_auth_query(db: &TestDb, ttl: &str, extra: &[&str]) -> Pooler {
    let mut b = pooler()
        .user("postgres", SU_PASSWORD)
        .general("auth_user = \"postgres\"")
        .general(&format!("auth_cache_ttl = \"{ttl}\""))
        .general(&format!("auth_negative_cache_ttl = \"{ttl}\""))
        .database(db, &[]);
    for line in extra {
        b = b.general(line);
    }
    b.start().await
}

/// A login role of `db` created now, with `password`.
fn role(db: &TestDb, name: &str, password: &str, extra: &str) {
    su_sql(
        &db.name,
        &format!(
            "SET password_encryption = 'scram-sha-256'; CREATE ROLE {name} LOGIN PASSWORD '{password}' {extra}; \
             GRANT CONNECT ON DATABASE {} TO {name}",
            db.name
        ),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_created_later_log_in_and_password_changes_apply_after_the_ttl() {
    let db = fresh_db("aq");
    let p = pooler_with_auth_query(&db, "1s", &[]).await;
    // Created after pgsluice started; not in the auth_file.
    let user = format!("{}_late", db.name);
    role(&db, &user, "first-pw", "");
    let c = p.try_connect(&user, "first-pw", &db.name).await.expect("a user found by auth_query logs in");
    assert_eq!(simple_one(&c, "select current_user").await, user, "SCRAM passthrough to the server as that user");
    let e = p.try_connect(&user, "wrong-pw", &db.name).await.must_fail("wrong password");
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));

    su_sql(&db.name, &format!("ALTER ROLE {user} PASSWORD 'second-pw'"));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let e = p.try_connect(&user, "first-pw", &db.name).await.must_fail("the old password after the TTL");
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{}", message(&e));
    p.try_connect(&user, "second-pw", &db.name).await.expect("the new password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_unknown_users_fail_like_a_wrong_password() {
    let db = fresh_db("aqexp");
    let p = pooler_with_auth_query(&db, "60s", &[]).await;
    let expired = format!("{}_old", db.name);
    role(&db, &expired, "old-pw", "VALID UNTIL '2001-01-01'");
    let known = format!("{}_ok", db.name);
    role(&db, &known, "ok-pw", "VALID UNTIL 'infinity'");

    let wrong = p.try_connect(&known, "nope", &db.name).await.must_fail("wrong password");
    let expired_e = p.try_connect(&expired, "old-pw", &db.name).await.must_fail("expired user");
    let unknown = p.try_connect("nobody_at_all", "x", &db.name).await.must_fail("unknown user");
    let text = |e: &tokio_postgres::Error, u: &str| message(e).replace(u, "USER");
    println!(
        "AUTH_QUERY wrong password: {}; expired: {}; unknown: {}",
        message(&wrong),
        message(&expired_e),
        message(&unknown)
    );
    for e in [&wrong, &expired_e, &unknown] {
        assert_eq!(sqlstate(e).as_deref(), Some("28P01"), "{}", message(e));
    }
    assert_eq!(text(&wrong, &known), text(&expired_e, &expired));
    assert_eq!(text(&wrong, &known), text(&unknown, "nobody_at_all"));
    p.try_connect(&known, "ok-pw", &db.name).await.expect("a valid user");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_lookup_is_a_clear_error() {
    let db = fresh_db("aqbad");
    let user = format!("{}_u", db.name);
    role(&db, &user, "pw", "");
    // Two rows for one name.
    let two = "auth_query = \"SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1 UNION ALL SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = $1\"";
    let p = pooler_with_auth_query(&db, "60s", &[two]).await;
    let e = p.try_connect(&user, "pw", &db.name).await.must_fail("two rows");
    println!("AUTH_QUERY two rows: {:?} {}", sqlstate(&e), message(&e));
    assert_eq!(sqlstate(&e).as_deref(), Some("08006"));
    assert!(message(&e).contains("more than 1 row"), "{}", message(&e));

    // auth_user's password is wrong.
    let p = pooler()
        .user("postgres", "not-the-password")
        .general("auth_user = \"postgres\"")
        .database(&db, &[])
        .start()
        .await;
    let e = p.try_connect(&user, "pw", &db.name).await.must_fail("auth_user cannot log in");
    println!("AUTH_QUERY wrong auth_user password: {:?} {}", sqlstate(&e), message(&e));
    assert_eq!(sqlstate(&e).as_deref(), Some("08006"));
    assert!(message(&e).contains("auth_query as \"postgres\"") && message(&e).contains("28P01"), "{}", message(&e));
}
