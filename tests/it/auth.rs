//! Client authentication and server login: SCRAM (plaintext and stored-verifier auth_file,
//! which exercises SCRAM passthrough to PostgreSQL), md5, plain, wrong password, unknown
//! user, unknown database.

use crate::harness::*;

async fn select_one(p: &Pooler, db: &TestDb) -> i32 {
    let c = p.connect(db).await;
    c.query_one("select 41 + 1", &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn scram_with_plaintext_userlist() {
    let db = fresh_db("scram_plain");
    let p = pooler().database(&db, &[]).user(&db.name, &db.password).start().await;
    assert_eq!(select_one(&p, &db).await, 42);
}

#[tokio::test]
async fn scram_with_stored_verifier_passes_through_to_postgres() {
    let db = fresh_db("scram_verifier");
    // Only the verifier is stored: pgsluice must log in to PostgreSQL with keys recovered
    // from the client's proof.
    let p = pooler().database(&db, &[]).user(&db.name, &db.verifier()).start().await;
    assert_eq!(select_one(&p, &db).await, 42);
    // A second client reuses the pool (and its learned keys) fine.
    let c = p.connect(&db).await;
    let who: String = c.query_one("select current_user::text", &[]).await.unwrap().get(0);
    assert_eq!(who, db.name);
}

#[tokio::test]
async fn md5_client_auth() {
    let db = fresh_db("md5auth");
    let p = pooler().general("auth_type = \"md5\"").database(&db, &[]).user(&db.name, &db.password).start().await;
    assert_eq!(select_one(&p, &db).await, 42);
    let e = p.try_connect(&db.name, "wrong", &db.name).await.must_fail("wrong md5 password must fail");
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
}

#[tokio::test]
async fn md5_hash_in_userlist_with_md5_client_auth() {
    let db = fresh_db("md5hash");
    let hash = postgres_protocol::password::md5(db.password.as_bytes(), &db.name);
    // The server itself asks for SCRAM, so server login needs the plaintext: use a fixed
    // backend user with a plaintext password, and an md5 hash for the client.
    let p = pooler().general("auth_type = \"md5\"").database_with_login(&db, &[]).user(&db.name, &hash).start().await;
    assert_eq!(select_one(&p, &db).await, 42);
}

#[tokio::test]
async fn plain_client_auth() {
    let db = fresh_db("plainauth");
    let p = pooler().general("auth_type = \"plain\"").database(&db, &[]).user(&db.name, &db.password).start().await;
    assert_eq!(select_one(&p, &db).await, 42);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_fail_the_same_way() {
    let db = fresh_db("wrongpw");
    let p = pooler().database(&db, &[]).user(&db.name, &db.password).start().await;
    let wrong = p.try_connect(&db.name, "not-the-password", &db.name).await.must_fail("must fail");
    let unknown = p.try_connect("nobody_here", "whatever", &db.name).await.must_fail("must fail");
    assert_eq!(sqlstate(&wrong).as_deref(), Some("28P01"));
    assert_eq!(sqlstate(&unknown).as_deref(), Some("28P01"));
    let (w, u) = (wrong.as_db_error().unwrap().message(), unknown.as_db_error().unwrap().message());
    assert_eq!(w.replace(&db.name, "X"), u.replace("nobody_here", "X"));
    // The pooler keeps serving.
    assert_eq!(select_one(&p, &db).await, 42);
}

#[tokio::test]
async fn unknown_database_is_3d000() {
    let db = fresh_db("unknowndb");
    let p = pooler().database(&db, &[]).user(&db.name, &db.password).start().await;
    let e = p.try_connect(&db.name, &db.password, "no_such_db").await.must_fail("must fail");
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"));
}

#[tokio::test]
async fn server_refusing_login_reports_its_error() {
    let db = fresh_db("badbackend");
    // pgsluice accepts the client, but the backend database does not exist.
    let p =
        pooler().database(&db, &["dbname = \"does_not_exist_anywhere\""]).user(&db.name, &db.password).start().await;
    let e = p.try_connect(&db.name, &db.password, &db.name).await.must_fail("must fail");
    assert_eq!(sqlstate(&e).as_deref(), Some("3D000"), "{e}");
}

#[tokio::test]
async fn trust_admits_only_auth_file_users_and_any_never_opens_the_console() {
    let db = fresh_db("trust");
    // trust: no password, but the name must be in the auth_file (PgBouncer's meaning).
    let p = pooler()
        .general("auth_type = \"trust\"")
        .general(&format!("admin_users = [\"{}\", \"intruder\"]", db.name))
        .user(&db.name, &db.password)
        .database_with_login(&db, &[])
        .start()
        .await;
    let c = p.try_connect(&db.name, "not-checked", &db.name).await.expect("a known user logs in without a password");
    assert_eq!(simple_one(&c, "select 1").await, "1");
    p.try_connect(&db.name, "x", "pgbouncer").await.expect("a known admin reaches the console");
    let e = p.try_connect("intruder", "x", &db.name).await.must_fail("unknown name under trust");
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{}", message(&e));
    let e = p.try_connect("intruder", "x", "pgbouncer").await.must_fail("unknown admin name under trust");
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"), "{}", message(&e));

    // any: any name, but never the console, even for a name in admin_users.
    let p = pooler()
        .general("auth_type = \"any\"")
        .general(&format!("admin_users = [\"{}\"]", db.name))
        .database_with_login(&db, &[])
        .start()
        .await;
    let c = p.try_connect("whoever", "x", &db.name).await.expect("any name under any");
    assert_eq!(simple_one(&c, "select current_user").await, db.name, "the database's fixed user");
    let e = p.try_connect(&db.name, "x", "pgbouncer").await.must_fail("console under any");
    println!("AUTH any, console: {:?} {}", sqlstate(&e), message(&e));
    assert_eq!(sqlstate(&e).as_deref(), Some("28000"));
    assert!(message(&e).contains("auth_type = \"any\""));
}

#[tokio::test]
async fn hba_rules_decide_per_connection_and_reload_with_the_config() {
    let db = fresh_db("hba");
    let rules = |db_method: &str| {
        format!(
            "# pgsluice test rules\n\
             hostnossl all     blocked  127.0.0.1/32 reject\n\
             host      {0}     {0}      127.0.0.1/32 {db_method}\n\
             host      pgbouncer {0}    127.0.0.1 255.255.255.255 trust   # the console too\n",
            db.name
        )
    };
    let p = pooler()
        .general("auth_type = \"hba\"")
        .general("auth_hba_file = \"hba.conf\"")
        .general(&format!("admin_users = [\"{}\"]", db.name))
        .user(&db.name, &db.password)
        .user("blocked", "blocked-pw")
        .user("stranger", "stranger-pw")
        .file("hba.conf", &rules("scram-sha-256"))
        .database(&db, &[])
        .start()
        .await;
    assert_eq!(select_one(&p, &db).await, 42, "scram-sha-256 by its rule");
    let e = p.try_connect(&db.name, "wrong", &db.name).await.must_fail("wrong password");
    assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
    let e = p.try_connect("stranger", "stranger-pw", &db.name).await.must_fail("no rule");
    println!("HBA no rule: {}", message(&e));
    assert_eq!(sqlstate(&e).as_deref(), Some("28000"));
    assert_eq!(
        message(&e),
        format!(
            "no pg_hba.conf entry for host \"127.0.0.1\", user \"stranger\", database \"{}\", no encryption",
            db.name
        )
    );
    let e = p.try_connect("blocked", "blocked-pw", &db.name).await.must_fail("reject");
    assert!(message(&e).starts_with("pg_hba.conf rejects connection for host \"127.0.0.1\""), "{}", message(&e));
    // The console follows the same rules (trust for the admin, without a password check).
    p.try_connect(&db.name, "anything", "pgbouncer").await.expect("console by its rule");

    // A reload picks up the changed file.
    let shared = p.handle.as_ref().unwrap().shared.clone();
    let path = shared.config.load().path.with_file_name("hba.conf");
    std::fs::write(&path, rules("reject")).unwrap();
    pgsluice::reload::reload(&shared).expect("reload");
    let e = p.try_connect(&db.name, &db.password, &db.name).await.must_fail("rejected after reload");
    assert!(message(&e).contains("rejects"), "{}", message(&e));
    // An invalid file is refused with its line number, and the old rules stay.
    std::fs::write(&path, "host all all 127.0.0.1/32 trust\nhost all all 10.0.0.0/99 trust\n").unwrap();
    let err = pgsluice::reload::reload(&shared).expect_err("invalid file");
    println!("HBA invalid file on reload: {err}");
    assert!(err.contains("line 2") && err.contains("CIDR"), "{err}");
    p.try_connect(&db.name, &db.password, &db.name).await.must_fail("still the rules before the bad reload");
}
