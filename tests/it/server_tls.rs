//! TLS toward PostgreSQL servers (issue 15) against a real PostgreSQL 15 with `ssl = on`, a
//! CA made at run time, and a pg_hba that admits the test role over TLS only (`hostssl`; the
//! superuser may also use plain TCP, which the cluster's own tooling needs):
//! - `require` and `verify-full` work, for a password pgsluice knows and for SCRAM
//!   passthrough keys, and the server sees the connection encrypted; probes use TLS too;
//! - `verify-full` with the wrong host name fails with an error naming the certificate
//!   problem, and so does a certificate from another CA under `verify-ca`;
//! - `disable` is refused by the server, whose error reaches the client;
//! - `server_auth_methods` refuses a method the server asks for.
//!
//! The server's certificate is for `localhost` only (no IP address), so `127.0.0.1` is a
//! wrong host name for it.

use std::sync::OnceLock;

use pgsluice::localpg::{ClusterOptions, LocalCluster};

use crate::harness::*;

/// The TLS server, the test role's password, and the CA's PEM.
struct TlsServer {
    pg: LocalCluster,
    ca_pem: String,
    other_ca_pem: String,
}

const ROLE: &str = "tlsapp";
const ROLE_PW: &str = "tlsapp-pw";

/// A CA and a certificate it signs for `names` (PEMs: CA, certificate, key).
fn ca_and_cert(ca_name: &str, names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("server key");
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn server() -> &'static TlsServer {
    static S: OnceLock<TlsServer> = OnceLock::new();
    S.get_or_init(|| {
        let (ca_pem, cert, key) = ca_and_cert("pgsluice test CA", &["localhost"]);
        let (other_ca_pem, _, _) = ca_and_cert("another CA", &["localhost"]);
        let hba = "local all all scram-sha-256\n\
                   hostnossl all postgres 127.0.0.1/32 scram-sha-256\n\
                   hostssl all all 127.0.0.1/32 scram-sha-256\n";
        let opts = ClusterOptions {
            superuser_password: SU_PASSWORD.into(),
            extra_conf: vec![
                ("ssl".into(), "on".into()),
                ("ssl_cert_file".into(), "server.crt".into()),
                ("ssl_key_file".into(), "server.key".into()),
            ],
            hba: Some(hba.into()),
            files: vec![("server.crt".into(), cert), ("server.key".into(), key)],
            ..ClusterOptions::default()
        };
        let pg = LocalCluster::start_primary(opts).unwrap_or_else(|e| panic!("start TLS PostgreSQL: {e}"));
        pg.create_user_and_db(ROLE, ROLE_PW).unwrap_or_else(|e| panic!("create {ROLE}: {e}"));
        TlsServer { pg, ca_pem, other_ca_pem }
    })
}

/// pgsluice serving `tlsapp` at `host` (`localhost` or `127.0.0.1`) with `lines` in its
/// database section, the role's `secret` in the auth_file, and the probes on (as the
/// superuser).
async fn pooler_for(host: &str, lines: &[&str], secret: &str) -> Pooler {
    let s = server();
    pooler()
        .file("ca.pem", &s.ca_pem)
        .file("other-ca.pem", &s.other_ca_pem)
        .user(ROLE, secret)
        .general("health_check_user = \"postgres\"")
        .general(&format!("health_check_password = \"{SU_PASSWORD}\""))
        .section(&format!("[databases.{ROLE}]\nhosts = [\"{host}:{}\"]\n{}\n", s.pg.port(), lines.join("\n")))
        .start()
        .await
}

/// Whether the server sees the session's connection encrypted.
async fn encrypted(p: &Pooler) -> Result<String, tokio_postgres::Error> {
    let c = p.try_connect(ROLE, ROLE_PW, ROLE).await?;
    Ok(simple_one(&c, "SELECT ssl::text || ' ' || version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_and_verify_full_work_with_a_password_and_with_passthrough_keys() {
    let verifier = server().pg.scram_verifier(ROLE).expect("verifier");
    for (mode, host) in [("require", "127.0.0.1"), ("verify-ca", "127.0.0.1"), ("verify-full", "localhost")] {
        for (what, secret) in [("password", ROLE_PW), ("passthrough", verifier.as_str())] {
            let lines = [format!("server_tls_sslmode = \"{mode}\""), "server_tls_ca_file = \"ca.pem\"".into()];
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            let p = pooler_for(host, &lines, secret).await;
            let got = encrypted(&p).await.unwrap_or_else(|e| panic!("{mode} ({what}): {}", message(&e)));
            println!("SERVER TLS {mode} ({what}): pg_stat_ssl {got}");
            assert!(got.starts_with("true TLSv1."), "{mode} ({what}): {got}");
            // The probes log in over TLS too: the host is found and up.
            let cluster = p.handle.as_ref().unwrap().shared.cluster(ROLE).expect("cluster");
            wait_topology(&cluster, std::time::Duration::from_secs(5), "probe over TLS", |_, h| {
                h[0].status.up && h[0].status.last_error.is_none()
            })
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_problems_are_named() {
    // The certificate is for localhost, not 127.0.0.1.
    let p =
        pooler_for("127.0.0.1", &["server_tls_sslmode = \"verify-full\"", "server_tls_ca_file = \"ca.pem\""], ROLE_PW)
            .await;
    let started = std::time::Instant::now();
    let e = encrypted(&p).await.must_fail("verify-full against the wrong name");
    let text = message(&e);
    println!("SERVER TLS verify-full, wrong name: {:?} {text}", sqlstate(&e));
    assert_eq!(sqlstate(&e).as_deref(), Some("08006"), "{text}");
    assert!(text.contains("certificate") && text.contains("127.0.0.1"), "{text}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "not retried until a timeout");

    // Signed by another CA.
    let lines = ["server_tls_sslmode = \"verify-ca\"", "server_tls_ca_file = \"other-ca.pem\""];
    let p = pooler_for("localhost", &lines, ROLE_PW).await;
    let e = encrypted(&p).await.must_fail("verify-ca with another CA");
    let text = message(&e);
    println!("SERVER TLS verify-ca, unknown issuer: {text}");
    assert!(text.contains("certificate") && text.to_lowercase().contains("issuer"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_is_refused_by_a_hostssl_server_with_its_own_error() {
    let p = pooler_for("127.0.0.1", &["server_tls_sslmode = \"disable\""], ROLE_PW).await;
    let e = encrypted(&p).await.must_fail("plain TCP to a hostssl-only server");
    let text = message(&e);
    println!("SERVER TLS disable: {:?} {text}", sqlstate(&e));
    assert!(text.contains("no pg_hba.conf entry") && text.contains("no encryption"), "{text}");
    // `allow` tries plain first, then TLS.
    let p = pooler_for("127.0.0.1", &["server_tls_sslmode = \"allow\""], ROLE_PW).await;
    assert!(encrypted(&p).await.expect("allow falls back to TLS").starts_with("true"));
    // The default (`prefer`) uses TLS when the server has it.
    let p = pooler_for("127.0.0.1", &[], ROLE_PW).await;
    assert!(encrypted(&p).await.expect("prefer").starts_with("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_auth_methods_refuses_what_it_does_not_list() {
    let p =
        pooler_for("localhost", &["server_tls_sslmode = \"require\"", "server_auth_methods = \"md5\""], ROLE_PW).await;
    let e = encrypted(&p).await.must_fail("SCRAM not allowed");
    let text = message(&e);
    println!("SERVER TLS server_auth_methods = md5 against a SCRAM server: {:?} {text}", sqlstate(&e));
    assert!(text.contains("scram-sha-256") && text.contains("server_auth_methods"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_is_a_clear_error() {
    // The shared test server has no TLS: it answers the SSLRequest with N.
    let db = fresh_db("notls");
    let p = pooler().database(&db, &["server_tls_sslmode = \"require\""]).user(&db.name, &db.password).start().await;
    let e = p.try_connect(&db.name, &db.password, &db.name).await.must_fail("require without TLS");
    println!("SERVER TLS require, server without TLS: {:?} {}", sqlstate(&e), message(&e));
    assert_eq!(sqlstate(&e).as_deref(), Some("08006"));
    assert!(message(&e).contains("does not accept TLS"), "{}", message(&e));
    // prefer (the default) goes on in plain TCP.
    let p = pooler().database(&db, &[]).user(&db.name, &db.password).start().await;
    p.try_connect(&db.name, &db.password, &db.name).await.expect("prefer falls back to plain TCP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_server_certificate_is_named() {
    // A stand-in server: it accepts the SSLRequest and presents a certificate, valid for
    // localhost and signed by the test CA, that expired in 2001.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "expiry CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let server_cfg =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server_cfg));
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 8];
                if tcp.read_exact(&mut req).await.is_ok() && tcp.write_all(b"S").await.is_ok() {
                    let _ = acceptor.accept(tcp).await;
                }
            });
        }
    });
    let db = fresh_db("expired");
    let p = pooler()
        .file("ca.pem", &ca.pem())
        .user(&db.name, &db.password)
        .section(&format!(
            "[databases.{}]\nhosts = [\"localhost:{port}\"]\nserver_tls_sslmode = \"verify-full\"\nserver_tls_ca_file = \"ca.pem\"\n",
            db.name
        ))
        .start()
        .await;
    let e = p.try_connect(&db.name, &db.password, &db.name).await.must_fail("expired certificate");
    println!("SERVER TLS expired certificate: {:?} {}", sqlstate(&e), message(&e));
    assert_eq!(sqlstate(&e).as_deref(), Some("08006"));
    assert!(message(&e).contains("invalid peer certificate: certificate expired"), "{}", message(&e));
}
