//! Connection lifecycle: query cancellation, graceful shutdown, client TLS, the client- and
//! server-side timeouts, the reserve pool, `min_pool_size` and `max_db_connections`.
//!
//! Outside an explicit transaction these tests use only the simple protocol (`simple_query`,
//! `batch_execute`): named prepared statements across transactions are not supported yet in
//! transaction mode.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tokio_postgres::{Client, NoTls};

use crate::harness::*;

/// `su_sql` off the async worker threads.
async fn su(db: &str, sql: &str) -> String {
    let (db, sql) = (db.to_string(), sql.to_string());
    tokio::task::spawn_blocking(move || su_sql(&db, &sql)).await.expect("su_sql task")
}

/// Server connections PostgreSQL has for `role` (optionally narrowed by an SQL condition).
async fn backends(role: &str, extra: &str) -> i64 {
    let sql = format!("select count(*) from pg_stat_activity where usename = '{role}' {extra}");
    su("postgres", &sql).await.parse().expect("count")
}

/// Polls the async `f` every 50 ms until it returns true or `timeout` passes.
async fn wait_for<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until tokio-postgres notices the connection is gone.
async fn closed_within(c: &Client, timeout: Duration) -> bool {
    wait_for(timeout, || std::future::ready(c.is_closed())).await
}

// ---------------------------------------------------------------------------------------
// Cancellation
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_only_the_clients_own_query() {
    let db = fresh_db("cancel");
    let p = pooler().database(&db, &["pool_size = 2"]).user(&db.name, &db.password).start().await;
    let a = p.connect(&db).await;
    let b = p.connect(&db).await;
    let token = a.cancel_token();

    let started = Instant::now();
    let qa = tokio::spawn(async move {
        // Bounded, so a lost cancel fails the test in seconds rather than after the sleep.
        let r = tokio::time::timeout(Duration::from_secs(5), a.simple_query("select pg_sleep(10)")).await;
        (a, r, started.elapsed())
    });
    let qb = tokio::spawn(async move {
        let r = scalar_col(&b, "select pg_sleep(1.5), 'b'", 1).await;
        (b, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await.expect("send cancel request to pgsluice");

    let (a, ra, took) = qa.await.unwrap();
    let Ok(ra) = ra else { panic!("A's query was not canceled within {took:?}") };
    let e = ra.must_fail("A's query must be canceled");
    assert_eq!(sqlstate(&e).as_deref(), Some("57014"), "{e}");
    assert!(took < Duration::from_secs(2), "cancel took {took:?}");

    let (b, rb) = qb.await.unwrap();
    assert_eq!(rb.expect("B's query must not be canceled").as_deref(), Some("b"));

    // Both sessions go on.
    assert_eq!(scalar(&a, "select 1").await.expect("A reusable after cancel").as_deref(), Some("1"));
    assert_eq!(scalar(&b, "select 2").await.unwrap().as_deref(), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_for_an_idle_client_does_nothing() {
    let db = fresh_db("cancelidle");
    // One server: the connection C used last is the one D runs on when C's cancel arrives.
    let p = pooler().database(&db, &["pool_size = 1"]).user(&db.name, &db.password).start().await;
    let c = p.connect(&db).await;
    let d = p.connect(&db).await;
    let pid_c = scalar(&c, "select pg_backend_pid()").await.unwrap();

    let started = Instant::now();
    let qd = tokio::spawn(async move {
        let r = scalar_col(&d, "select pg_backend_pid(), pg_sleep(1)", 0).await;
        (d, r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.cancel_token().cancel_query(NoTls).await.expect("send cancel request to pgsluice");

    let (d, rd, took) = qd.await.unwrap();
    let pid_d = rd.expect("D's query must not be canceled by C's cancel");
    assert_eq!(pid_d, pid_c, "pool of 1: D ran on the server C used before");
    assert!(took >= Duration::from_millis(950), "D's pg_sleep(1) ended early ({took:?})");

    assert_eq!(scalar(&c, "select 'c'").await.expect("C works after its cancel").as_deref(), Some("c"));
    assert_eq!(scalar(&d, "select 'd'").await.unwrap().as_deref(), Some("d"));
}

// ---------------------------------------------------------------------------------------
// Graceful shutdown
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_an_open_transaction_commit() {
    let db = fresh_db("shutdown");
    let mut p = pooler().database(&db, &["pool_size = 3"]).user(&db.name, &db.password).start().await;
    let a = p.connect(&db).await;
    let b = p.connect(&db).await;
    a.batch_execute("create table t(x int)").await.unwrap();
    a.batch_execute("begin; insert into t values (1)").await.unwrap();
    assert_eq!(scalar(&b, "select 1").await.unwrap().as_deref(), Some("1"));

    let handle = p.handle.take().expect("server handle");
    let shutdown = tokio::spawn(async move { handle.shutdown(Duration::from_secs(10)).await });

    // The idle client is disconnected promptly.
    assert!(closed_within(&b, Duration::from_secs(2)).await, "idle client not disconnected on shutdown");
    let e = b.simple_query("select 1").await.must_fail("idle client must be gone");
    assert!(e.is_closed() || sqlstate(&e).as_deref() == Some("57P01"), "{e}");

    // No new clients.
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.try_connect(&db.name, &db.password, &db.name).await.must_fail("new connections must be refused during shutdown");

    // The open transaction finishes normally...
    a.batch_execute("insert into t values (2); commit").await.expect("transaction must be allowed to commit");
    // ...and then the client is closed.
    assert!(closed_within(&a, Duration::from_secs(2)).await, "client not closed after its transaction ended");
    a.simple_query("select 1").await.must_fail("connection must be closed after commit during shutdown");

    let finished = tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown must resolve once all sessions ended")
        .unwrap();
    assert!(finished, "shutdown reported unfinished sessions");
    assert_eq!(su(&db.name, "select string_agg(x::text, ',' order by x) from t").await, "1,2");
}

// ---------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------

/// A self-signed certificate for localhost / 127.0.0.1: (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("generate certificate");
    (ck.cert.pem(), ck.key_pair.serialize_pem())
}

fn tls_section(mode: Option<&str>) -> String {
    let mut s = "[tls]\ncert_file = \"server.crt\"\nkey_file = \"server.key\"\n".to_string();
    if let Some(m) = mode {
        s.push_str(&format!("client_tls_sslmode = \"{m}\"\n"));
    }
    s
}

/// Runs psql through pgsluice; returns (success, stdout, stderr).
async fn psql_via(p: &Pooler, db: &TestDb, conn_extra: &str, args: &[&str]) -> (bool, String, String) {
    let conninfo =
        format!("host=127.0.0.1 port={} user={} dbname={} connect_timeout=10 {conn_extra}", p.port(), db.name, db.name);
    run_psql(&conninfo, &db.password, args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_login_with_psql() {
    let db = fresh_db("tls");
    let (cert, key) = self_signed();
    let p = pooler()
        .database(&db, &["pool_size = 2"])
        .user(&db.name, &db.password)
        .file("server.crt", &cert)
        .file("server.key", &key)
        .section(&tls_section(None))
        .start()
        .await;

    // sslmode=require: libpq refuses to go on without TLS.
    let (ok, out, err) = psql_via(&p, &db, "sslmode=require", &["-c", "select 40 + 2", "-c", "\\conninfo"]).await;
    assert!(ok, "psql over TLS failed:\n{out}\n{err}");
    assert_eq!(out.lines().next(), Some("42"), "{out}");
    assert!(out.contains("SSL connection"), "\\conninfo does not report SSL:\n{out}");

    // verify-full against our certificate: pgsluice presents the configured certificate.
    let root = p.handle.as_ref().unwrap().shared.config.load().path.with_file_name("server.crt");
    let (ok, out, err) = psql_via(
        &p,
        &db,
        &format!("sslmode=verify-full sslrootcert={}", root.display()),
        &["-c", "select current_user"],
    )
    .await;
    assert!(ok, "psql with verify-full failed:\n{out}\n{err}");
    assert_eq!(out.trim(), db.name);

    // TLS is optional (prefer): plaintext clients still get in.
    let (ok, out, err) = psql_via(&p, &db, "sslmode=disable", &["-c", "select 'plain'"]).await;
    assert!(ok, "plaintext psql failed with client_tls_sslmode=prefer:\n{out}\n{err}");
    assert_eq!(out.trim(), "plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_get_channel_binding_and_direct_tls() {
    let db = fresh_db("tlscb");
    let (cert, key) = self_signed();
    let p = pooler()
        .database(&db, &["pool_size = 2"])
        .user(&db.name, &db.verifier())
        .file("server.crt", &cert)
        .file("server.key", &key)
        .section(&tls_section(None))
        .start()
        .await;

    // libpq's channel_binding=require: SCRAM-SHA-256-PLUS bound to pgsluice's certificate.
    let (ok, out, err) = psql_via(&p, &db, "sslmode=require channel_binding=require", &["-c", "select 'bound'"]).await;
    assert!(ok, "psql with channel_binding=require failed:\n{out}\n{err}");
    assert_eq!(out.trim(), "bound");
    // Without TLS there is nothing to bind to: libpq refuses, as against PostgreSQL.
    let (ok, _, err) = psql_via(&p, &db, "sslmode=disable channel_binding=require", &["-c", "select 1"]).await;
    assert!(!ok && err.contains("channel binding"), "{err}");

    // PostgreSQL 17's direct TLS: a ClientHello with ALPN "postgresql" first, no SSLRequest.
    let direct = |alpn: Option<&'static [u8]>| {
        let (addr, user) = (p.addr, db.name.clone());
        async move {
            let mut cfg =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AcceptAny))
                    .with_no_client_auth();
            cfg.alpn_protocols = alpn.map(|a| vec![a.to_vec()]).unwrap_or_default();
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp).await.expect("handshake");
            let startup = startup_packet(PROTOCOL_3_0, &[("user", &user), ("database", &user)]);
            tls.write_all(&startup).await.unwrap();
            let mut head = [0u8; 5];
            tls.read_exact(&mut head).await.expect("an answer");
            let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize - 4;
            let mut body = vec![0u8; len];
            tls.read_exact(&mut body).await.unwrap();
            (head[0], String::from_utf8_lossy(&body).into_owned())
        }
    };
    let (tag, body) = direct(Some(b"postgresql")).await;
    println!("DIRECT TLS with ALPN: {} {body:?}", tag as char);
    assert_eq!(tag, b'R', "an authentication request: {body}");
    assert!(body.contains("SCRAM-SHA-256-PLUS"), "channel binding offered over TLS: {body:?}");
    let (tag, body) = direct(None).await;
    println!("DIRECT TLS without ALPN: {} {body:?}", tag as char);
    assert_eq!(tag, b'E');
    assert!(body.contains("ALPN"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_authenticate_by_common_name() {
    let db = fresh_db("tlscert");
    let (cert, key) = self_signed();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "client CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let client = |cn: &str, signer: Option<(&rcgen::Certificate, &rcgen::KeyPair)>| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = match signer {
            Some((ca, ca_key)) => params.signed_by(&key, ca, ca_key).unwrap(),
            None => params.self_signed(&key).unwrap(),
        };
        (cert.pem(), key.serialize_pem())
    };
    let p = pooler()
        .general("auth_type = \"cert\"")
        .database_with_login(&db, &["pool_size = 2"])
        .file("server.crt", &cert)
        .file("server.key", &key)
        .file("ca.pem", &ca.pem())
        .section(&format!("{}client_tls_ca_file = \"ca.pem\"\n", tls_section(Some("verify-ca"))))
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let write_pair = |name: &str, (cert, key): (String, String)| {
        use std::os::unix::fs::PermissionsExt;
        let (c, k) = (dir.path().join(format!("{name}.crt")), dir.path().join(format!("{name}.key")));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        format!("sslmode=require sslcert={} sslkey={}", c.display(), k.display())
    };
    let good = write_pair("good", client(&db.name, Some((&ca, &ca_key))));
    let other = write_pair("other", client("somebody_else", Some((&ca, &ca_key))));
    let stranger = write_pair("stranger", client(&db.name, None));

    let (ok, out, err) = psql_via(&p, &db, &good, &["-c", "select current_user"]).await;
    assert!(ok, "login with the right certificate failed:\n{out}\n{err}");
    assert_eq!(out.trim(), db.name);
    let (ok, _, err) = psql_via(&p, &db, &other, &["-c", "select 1"]).await;
    println!("CERT other CN: {}", err.trim());
    assert!(!ok && err.contains(&format!("certificate authentication failed for user \"{}\"", db.name)), "{err}");
    // No certificate, or one from another CA: the TLS handshake itself fails.
    for (what, conn) in [("none", "sslmode=require".to_string()), ("self-signed", stranger)] {
        let (ok, _, err) = psql_via(&p, &db, &conn, &["-c", "select 1"]).await;
        println!("CERT {what}: {}", err.trim());
        assert!(!ok && (err.contains("certificate required") || err.contains("unknown ca")), "{what}: {err}");
    }
}

/// A certificate verifier that accepts anything (the direct-TLS test client).
#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_refuses_plaintext_login() {
    let db = fresh_db("tlsreq");
    let (cert, key) = self_signed();
    let p = pooler()
        .database(&db, &["pool_size = 2"])
        .user(&db.name, &db.password)
        .file("server.crt", &cert)
        .file("server.key", &key)
        .section(&tls_section(Some("require")))
        .start()
        .await;

    let (ok, out, err) = psql_via(&p, &db, "sslmode=disable", &["-c", "select 1"]).await;
    assert!(!ok, "plaintext login must be refused with client_tls_sslmode=require:\n{out}");
    assert!(err.contains("SSL"), "error should mention SSL: {err}");

    let e = p.try_connect(&db.name, &db.password, &db.name).await.must_fail("tokio-postgres without TLS must fail");
    assert!(message(&e).contains("SSL"), "{e}");

    let (ok, out, err) = psql_via(&p, &db, "sslmode=require", &["-c", "select 7 * 6"]).await;
    assert!(ok, "TLS login failed with client_tls_sslmode=require:\n{out}\n{err}");
    assert_eq!(out.trim(), "42");
}

// ---------------------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_disconnects_and_frees_the_server() {
    let db = fresh_db("idletxn");
    let p = pooler()
        .general("idle_transaction_timeout = \"2s\"")
        .database(&db, &["pool_size = 2"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let c = p.connect(&db).await;
    c.batch_execute("begin").await.unwrap();
    // Activity inside the transaction restarts the clock: two gaps of 1.3 s add up to more
    // than the limit, each leaves 0.7 s of margin for a loaded machine.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(scalar(&c, "select 1").await.expect("still within the timeout").as_deref(), Some("1"));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(scalar(&c, "select 2").await.expect("timer restarts after each query").as_deref(), Some("2"));

    tokio::time::sleep(Duration::from_secs(4)).await;
    let e = c.simple_query("select 3").await.must_fail("idle-in-transaction client must be disconnected");
    assert!(e.is_closed() || sqlstate(&e).as_deref() == Some("25P03"), "{e}");

    let gone = wait_for(Duration::from_secs(3), || async {
        backends(&db.name, "and state like 'idle in transaction%'").await == 0
    })
    .await;
    assert!(gone, "server connection still idle in transaction after the client was disconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_the_server_query() {
    let db = fresh_db("querytimeout");
    let p = pooler()
        .general("query_timeout = \"1s\"")
        .database(&db, &["pool_size = 2"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let c = p.connect(&db).await;
    // A query shorter than the limit is fine.
    assert_eq!(scalar_col(&c, "select pg_sleep(0.2), 'fast'", 1).await.unwrap().as_deref(), Some("fast"));
    let started = Instant::now();
    let e = c.simple_query("select pg_sleep(5)").await.must_fail("query must hit query_timeout");
    let took = started.elapsed();
    assert_eq!(sqlstate(&e).as_deref(), Some("57014"), "{e}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "query_timeout fired after {took:?}");

    let canceled = wait_for(Duration::from_secs(3), || async {
        backends(&db.name, "and state = 'active' and query like '%pg_sleep(5)%'").await == 0
    })
    .await;
    assert!(canceled, "the server is still running the timed-out query");
}

#[tokio::test]
async fn client_idle_timeout_disconnects_idle_clients() {
    let db = fresh_db("clientidle");
    let p = pooler()
        .general("client_idle_timeout = \"1s\"")
        .database(&db, &["pool_size = 2"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let c = p.connect(&db).await;
    assert_eq!(scalar(&c, "select 1").await.unwrap().as_deref(), Some("1"));
    // A client that keeps talking stays.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(scalar(&c, "select 2").await.expect("active client must stay").as_deref(), Some("2"));
    }
    let idle_since = Instant::now();
    assert!(closed_within(&c, Duration::from_secs(3)).await, "idle client not disconnected");
    let after = idle_since.elapsed();
    assert!(after >= Duration::from_millis(900), "disconnected too early ({after:?})");
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(after)).await;
    c.simple_query("select 3").await.must_fail("idle client must be disconnected");
}

// ---------------------------------------------------------------------------------------
// Pool sizing
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_pool_serves_a_waiting_client_after_reserve_pool_timeout() {
    let db = fresh_db("reserve");
    let p = pooler()
        .general("reserve_pool_timeout = \"500ms\"")
        .general("query_wait_timeout = \"8s\"")
        .database(&db, &["pool_size = 1", "reserve_pool_size = 1"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let a = p.connect(&db).await;
    a.batch_execute("begin").await.unwrap();
    let pid_a = scalar(&a, "select pg_backend_pid()").await.unwrap();
    let b = p.connect(&db).await;

    let started = Instant::now();
    let pid_b = scalar(&b, "select pg_backend_pid()").await.expect("B must be served from the reserve");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "B served before reserve_pool_timeout ({waited:?})");
    assert!(waited < Duration::from_secs(3), "B waited {waited:?}");
    assert_ne!(pid_a, pid_b, "B must get a second server connection");
    assert_eq!(backends(&db.name, "").await, 2);

    a.batch_execute("commit").await.unwrap();
    assert_eq!(scalar(&a, "select 1").await.unwrap().as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reserve_pool_a_waiting_client_times_out() {
    let db = fresh_db("noreserve");
    let p = pooler()
        .general("reserve_pool_timeout = \"500ms\"")
        .general("query_wait_timeout = \"1s\"")
        .database(&db, &["pool_size = 1", "reserve_pool_size = 0"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let a = p.connect(&db).await;
    a.batch_execute("begin").await.unwrap();
    let b = p.connect(&db).await;
    let started = Instant::now();
    let e = b.simple_query("select 1").await.must_fail("B must wait and time out");
    let waited = started.elapsed();
    assert_eq!(sqlstate(&e).as_deref(), Some("57014"), "{e}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(4), "waited {waited:?}");
    assert_eq!(backends(&db.name, "").await, 1, "no reserve connection may be opened");
    a.batch_execute("commit").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_pool_size_keeps_servers_open() {
    let db = fresh_db("minpool");
    let p = pooler().database(&db, &["pool_size = 5", "min_pool_size = 3"]).user(&db.name, &db.password).start().await;
    let c = p.connect(&db).await;
    assert_eq!(scalar(&c, "select 1").await.unwrap().as_deref(), Some("1"));
    drop(c);
    let warm = wait_for(Duration::from_secs(3), || async { backends(&db.name, "").await == 3 }).await;
    assert!(warm, "expected 3 server connections, have {}", backends(&db.name, "").await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(backends(&db.name, "").await, 3, "min_pool_size must not open more than needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_idle_timeout_closes_idle_servers() {
    let db = fresh_db("srvidle");
    let p = pooler()
        .general("server_idle_timeout = \"1s\"")
        .general("min_pool_size = 0")
        .database(&db, &["pool_size = 3"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let c = p.connect(&db).await;
    assert_eq!(scalar(&c, "select 1").await.unwrap().as_deref(), Some("1"));
    assert!(backends(&db.name, "").await >= 1);
    let closed = wait_for(Duration::from_secs(4), || async { backends(&db.name, "").await == 0 }).await;
    assert!(closed, "idle server connections not closed after server_idle_timeout");
    // The client is still connected and gets a fresh server.
    assert_eq!(scalar(&c, "select 2").await.unwrap().as_deref(), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_lifetime_replaces_old_servers() {
    let db = fresh_db("srvlife");
    let p = pooler()
        .general("server_lifetime = \"1s\"")
        .database(&db, &["pool_size = 1"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let c = p.connect(&db).await;
    let first = scalar(&c, "select pg_backend_pid()").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = scalar(&c, "select pg_backend_pid()").await.unwrap();
    assert_ne!(first, second, "server connection older than server_lifetime was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_caps_server_connections() {
    let db = fresh_db("maxdb");
    let p =
        pooler().database(&db, &["pool_size = 5", "max_db_connections = 2"]).user(&db.name, &db.password).start().await;
    let p = std::sync::Arc::new(p);
    let mut clients = Vec::new();
    for i in 0..4i32 {
        let (p, db) = (p.clone(), db.clone());
        clients.push(tokio::spawn(async move {
            let mut c = p.connect(&db).await;
            let tx = c.transaction().await.unwrap();
            tx.batch_execute("select pg_sleep(0.5)").await.unwrap();
            let v: i32 = tx.query_one("select $1::int4 + 100", &[&i]).await.unwrap().get(0);
            tx.commit().await.unwrap();
            v
        }));
    }
    let sampler = {
        let role = db.name.clone();
        tokio::spawn(async move {
            let mut max = 0;
            let deadline = Instant::now() + Duration::from_millis(2500);
            while Instant::now() < deadline {
                max = max.max(backends(&role, "").await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            max
        })
    };
    let mut got = Vec::new();
    for t in clients {
        got.push(t.await.expect("client must succeed"));
    }
    got.sort();
    assert_eq!(got, vec![100, 101, 102, 103]);
    let max = sampler.await.unwrap();
    assert!((1..=2).contains(&max), "max_db_connections = 2 but saw {max} server connections");
    assert!(backends(&db.name, "").await <= 2);
}

// ---------------------------------------------------------------------------------------
// Beyond the basics: edge cases of the above
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_reports_a_transaction_left_open() {
    let db = fresh_db("shutdownto");
    let mut p = pooler().database(&db, &["pool_size = 2"]).user(&db.name, &db.password).start().await;
    let a = p.connect(&db).await;
    a.batch_execute("begin; select 1").await.unwrap();
    let started = Instant::now();
    let finished = tokio::time::timeout(Duration::from_secs(5), p.shutdown(Duration::from_secs(1)))
        .await
        .expect("shutdown must respect its timeout");
    let took = started.elapsed();
    assert!(!finished, "shutdown must report that a session did not finish");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "shutdown took {took:?}");
}

/// PgBouncer applies `idle_transaction_timeout` only to a server that is inside a
/// transaction; a session-mode client holding a server while idle outside a transaction is
/// not "idle in transaction".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_ignores_idle_session_mode_clients() {
    let db = fresh_db("idletxnsess");
    let p = pooler()
        .general("pool_mode = \"session\"")
        .general("idle_transaction_timeout = \"1s\"")
        .database(&db, &["pool_size = 2"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let c = p.connect(&db).await;
    assert_eq!(scalar(&c, "select 1").await.unwrap().as_deref(), Some("1"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = scalar(&c, "select 2").await;
    assert_eq!(
        r.as_ref().map(|v| v.as_deref()).map_err(|e| format!("{} ({:?})", message(e), sqlstate(e))),
        Ok(Some("2")),
        "a session-mode client idle outside a transaction was disconnected by idle_transaction_timeout"
    );
    // Inside a transaction the timeout does apply.
    c.batch_execute("begin").await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let e = c.simple_query("select 3").await.must_fail("idle in transaction must be disconnected");
    assert!(e.is_closed() || sqlstate(&e).as_deref() == Some("25P03"), "{e}");
}

/// `max_db_connections` is shared by every pool of the database (one per user). When the
/// idle connections of one user's pool hold the whole allowance, another user must still be
/// served (PgBouncer closes an idle connection of another pool of the same database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_db_connections_frees_idle_servers_of_other_pools() {
    let db = fresh_db("maxdbshared");
    let other = fresh_db("maxdbother"); // only its role is used, on `db`
    let p = pooler()
        .general("query_wait_timeout = \"4s\"")
        .database(&db, &["pool_size = 5", "max_db_connections = 2"])
        .user(&db.name, &db.password)
        .user(&other.name, &other.password)
        .start()
        .await;
    // User 1 leaves two idle server connections in its pool.
    let a1 = p.connect(&db).await;
    let a2 = p.connect(&db).await;
    a1.batch_execute("begin").await.unwrap();
    a2.batch_execute("begin").await.unwrap();
    a1.batch_execute("commit").await.unwrap();
    a2.batch_execute("commit").await.unwrap();
    let in_db = format!("select count(*) from pg_stat_activity where datname = '{}'", db.name);
    assert_eq!(su("postgres", &in_db).await, "2");

    // User 2 on the same database.
    let started = Instant::now();
    let b = p.try_connect(&other.name, &other.password, &db.name).await;
    let took = started.elapsed();
    let b = match b {
        Ok(b) => b,
        Err(e) => panic!(
            "user 2 could not log in after {took:?}: {} ({:?}); pool of user 1 keeps the db's connections idle",
            message(&e),
            sqlstate(&e)
        ),
    };
    let who = scalar(&b, "select current_user").await.expect("user 2 query");
    assert_eq!(who.as_deref(), Some(other.name.as_str()));
    assert!(started.elapsed() < Duration::from_secs(2), "user 2 waited {:?}", started.elapsed());
    let n: i64 = su("postgres", &in_db).await.parse().unwrap();
    assert!(n <= 2, "max_db_connections = 2 but {n} server connections to the database");
}

/// A CancelRequest is not a client session: it must get through even when
/// `max_client_conn` is reached (which is exactly when runaway queries need canceling).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_works_when_max_client_conn_is_reached() {
    let db = fresh_db("cancelfull");
    let p = pooler()
        .general("max_client_conn = 2")
        .database(&db, &["pool_size = 2"])
        .user(&db.name, &db.password)
        .start()
        .await;
    let a = p.connect(&db).await;
    let _b = p.connect(&db).await;
    let token = a.cancel_token();
    let started = Instant::now();
    let qa = tokio::spawn(async move {
        let r = tokio::time::timeout(Duration::from_secs(4), a.simple_query("select pg_sleep(6)")).await;
        (a, r.map(|r| r.map(drop)), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await.expect("send cancel request to pgsluice");
    let (a, r, took) = qa.await.unwrap();
    let e = match r {
        Err(_) => panic!("query not canceled after {took:?}: the CancelRequest was refused (max_client_conn reached)"),
        Ok(r) => r.must_fail("A's query must be canceled"),
    };
    assert_eq!(sqlstate(&e).as_deref(), Some("57014"), "{e}");
    assert!(took < Duration::from_secs(2), "cancel took {took:?}");
    assert_eq!(scalar(&a, "select 1").await.expect("A reusable after cancel").as_deref(), Some("1"));
}
