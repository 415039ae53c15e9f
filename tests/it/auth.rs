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
