//! Client authentication and server login: SCRAM (plaintext and stored-verifier auth_file,
//! which exercises SCRAM passthrough to PostgreSQL), md5, plain, wrong password, unknown
//! user, unknown database; what tells an unknown user from a real one (nothing), and the
//! throttling of failed logins.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

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

// === user enumeration and failed-login throttling (issue 16) ===

/// Starts a raw login as `user` and reads the SCRAM server-first message (`r=..,s=..,i=..`):
/// returns (salt as base64, iteration count). The connection is then dropped.
async fn scram_server_first(p: &Pooler, user: &str, db: &str) -> (String, u32) {
    use tokio::io::AsyncWriteExt;
    let limit = Duration::from_secs(10);
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&startup_packet(196608, &[("user", user), ("database", db)])).await.unwrap();
    let m = read_msg_within(&mut s, limit).await.expect("AuthenticationSASL");
    assert_eq!((m.tag, m.i32_at(0)), (b'R', 10), "{m:?}");
    let data = b"n,,n=,r=fyko+d2lbbFgONRv9qkxdawL";
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(data.len() as u32).to_be_bytes());
    body.extend_from_slice(data);
    s.write_all(&frame(b'p', &body)).await.unwrap();
    let m = read_msg_within(&mut s, limit).await.expect("AuthenticationSASLContinue");
    assert_eq!((m.tag, m.i32_at(0)), (b'R', 11), "{m:?}");
    let first = String::from_utf8(m.body[4..].to_vec()).unwrap();
    let field =
        |k: &str| first.split(',').find_map(|f| f.strip_prefix(k)).unwrap_or_else(|| panic!("{first}")).to_string();
    (field("s="), field("i=").parse().unwrap())
}

#[tokio::test]
async fn an_unknown_user_gets_the_same_scram_challenge_as_real_users_and_keeps_it_across_reload() {
    use pgsluice::auth::scram::Verifier;
    let db = fresh_db("mockscram");
    // Real users whose verifiers use 10000 iterations, not PostgreSQL's default 4096.
    let v = |pw: &str, salt: &[u8]| Verifier::from_password(pw, salt, 10_000).to_string_form();
    let p = pooler()
        .database(&db, &[])
        .user(&db.name, &db.password)
        .user("alice", &v("a", b"0123456789abcdef"))
        .user("bob", &v("b", b"fedcba9876543210"))
        .start()
        .await;
    let (real_salt, real_iterations) = scram_server_first(&p, "alice", &db.name).await;
    let (mock_salt, mock_iterations) = scram_server_first(&p, "mallory", &db.name).await;
    assert_eq!(real_iterations, 10_000);
    assert_eq!(mock_iterations, real_iterations, "an unknown user's iteration count must match the real users'");
    assert_eq!(mock_salt.len(), real_salt.len(), "salts of the same length");
    // A real user's salt never changes: neither may an unknown user's, not even across RELOAD.
    assert_eq!(scram_server_first(&p, "mallory", &db.name).await.0, mock_salt);
    assert_ne!(scram_server_first(&p, "mallet", &db.name).await.0, mock_salt, "salts differ per user");
    pgsluice::reload::reload(&p.handle.as_ref().unwrap().shared).expect("reload");
    assert_eq!(scram_server_first(&p, "mallory", &db.name).await, (mock_salt, mock_iterations));
    assert_eq!(scram_server_first(&p, "alice", &db.name).await.0, real_salt);
}

#[tokio::test]
async fn plain_auth_of_an_unknown_user_costs_what_a_real_scram_user_costs() {
    use pgsluice::auth::scram::Verifier;
    let db = fresh_db("mockplain");
    // A costly verifier makes the PBKDF2 that checking a cleartext password against it
    // needs stand out from network noise.
    let verifier = Verifier::from_password("right", b"0123456789abcdef", 300_000).to_string_form();
    let p = pooler().general("auth_type = \"plain\"").database(&db, &[]).user("alice", &verifier).start().await;
    let timed = |user: &'static str| {
        let connstr = p.connstr(user, "wrong", &db.name);
        async move {
            let t = Instant::now();
            let e = connect_str(&connstr).await.must_fail("wrong password");
            assert_eq!(sqlstate(&e).as_deref(), Some("28P01"));
            t.elapsed()
        }
    };
    // (Warm up, then the best of three of each: the least disturbed by other work.)
    timed("alice").await;
    let mut known = Duration::MAX;
    let mut unknown = Duration::MAX;
    for _ in 0..3 {
        known = known.min(timed("alice").await);
        unknown = unknown.min(timed("nobody").await);
    }
    assert!(
        unknown * 2 >= known,
        "an unknown user is told apart by timing: {unknown:?} against {known:?} for a user that exists"
    );
}

/// One cleartext login attempt from `local` (an address on the loopback network): the
/// ErrorResponse's SQLSTATE, or "ok".
async fn plain_attempt(p: &Pooler, local: &str, user: &str, password: &str, db: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let limit = Duration::from_secs(20);
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{local}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(p.addr).await.unwrap();
    s.write_all(&startup_packet(196608, &[("user", user), ("database", db)])).await.unwrap();
    let m = read_msg_within(&mut s, limit).await.expect("an answer");
    if m.tag == b'E' {
        return m.code();
    }
    assert_eq!((m.tag, m.i32_at(0)), (b'R', 3), "{m:?}");
    let mut body = password.as_bytes().to_vec();
    body.push(0);
    s.write_all(&frame(b'p', &body)).await.unwrap();
    let m = read_msg_within(&mut s, limit).await.expect("an answer");
    match m.tag {
        b'E' => m.code(),
        b'R' if m.i32_at(0) == 0 => "ok".into(),
        _ => panic!("{m:?}"),
    }
}

#[tokio::test]
async fn a_thousand_wrong_passwords_from_one_address_slow_down_and_nobody_else_does() {
    let db = fresh_db("throttle");
    let p = Arc::new(
        pooler()
            .general("auth_type = \"plain\"")
            .general("auth_failure_delay = \"50ms\"")
            .general("auth_failure_max_delay = \"500ms\"")
            // (Every client logs in to PostgreSQL as the test's role.)
            .database_with_login(&db, &[])
            .user(&db.name, &db.password)
            .user("victim", "secret")
            .start()
            .await,
    );
    // 1,000 guesses from 127.0.0.1, 50 connections at a time.
    let started = Instant::now();
    let mut codes: HashMap<String, usize> = HashMap::new();
    for _ in 0..20 {
        let batch: Vec<_> = (0..50)
            .map(|i| {
                let (p, name) = (p.clone(), db.name.clone());
                tokio::spawn(async move { plain_attempt(&p, "127.0.0.1", "victim", &format!("guess{i}"), &name).await })
            })
            .collect();
        for t in batch {
            *codes.entry(t.await.unwrap()).or_default() += 1;
        }
    }
    let took = started.elapsed();
    eprintln!("1,000 wrong passwords, 50 at a time: {codes:?} in {took:?}");
    let checked = codes.get("28P01").copied().unwrap_or(0);
    let refused = codes.get("28000").copied().unwrap_or(0);
    assert_eq!(checked + refused, 1000, "every guess is answered: {codes:?}");
    // Three free failures, then one turn per 50..500 ms: the guesses that reached a password
    // check are a few dozen at most, however many connections were used.
    assert!(checked <= 3 + took.as_millis() as usize / 50 + 20, "{checked} passwords checked in {took:?}: {codes:?}");
    assert!(refused >= 900, "{codes:?}");

    // The same user from another address, and another user from the same address: at once.
    for (local, user, pw) in [("127.0.0.2", "victim", "secret"), ("127.0.0.1", db.name.as_str(), db.password.as_str())]
    {
        let t = Instant::now();
        assert_eq!(plain_attempt(&p, local, user, pw, &db.name).await, "ok", "{user} from {local}");
        assert!(t.elapsed() < Duration::from_millis(500), "{user} from {local} waited {:?}", t.elapsed());
    }
    let shared = &p.handle.as_ref().unwrap().shared;
    assert!(shared.throttle.refused.load(std::sync::atomic::Ordering::Relaxed) >= 900);
    let text = pgsluice::metrics::render(shared);
    assert!(text.contains("pgsluice_login_throttled_total{outcome=\"refused\"}"), "metric exported");
}
