//! Unix sockets (issue 15): pgsluice listening on `unix_socket_dir` besides TCP (psql
//! `-h <dir>` finds it), `peer` authentication there through HBA `local` lines, and a server
//! reached through its own socket directory (a co-located PostgreSQL), cancels included.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use crate::harness::*;

/// psql over the Unix socket in `dir` as `user`.
async fn psql_unix(dir: &std::path::Path, port: u16, user: &str, db: &str, sql: &str) -> (bool, String, String) {
    let conninfo = format!("host={} port={port} user={user} dbname={db} connect_timeout=10", dir.display());
    run_psql(&conninfo, "not-used", &["-c", sql]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_servers_over_unix_sockets() {
    let db = fresh_db("unixsock");
    let sockets = tempfile::tempdir().unwrap();
    // Who runs the tests (peer authentication compares this with the user name).
    let probe = sockets.path().join("whoami");
    std::fs::write(&probe, "").unwrap();
    let me = pgsluice::net::user_name(std::fs::metadata(&probe).unwrap().uid()).expect("our user name");
    // PostgreSQL's own socket directory: the server is reached through it.
    let pg_sockets = pg().data_dir().parent().unwrap().display().to_string();
    let hba = format!("local all {me} peer\nlocal all all reject\nhost all all 127.0.0.1/32 scram-sha-256\n");
    let p = pooler()
        .general("auth_type = \"hba\"")
        .general("auth_hba_file = \"hba.conf\"")
        .general(&format!("unix_socket_dir = \"{}\"", sockets.path().display()))
        .general("unix_socket_mode = \"0700\"")
        .user(&db.name, &db.password)
        .file("hba.conf", &hba)
        .section(&format!(
            "[databases.{0}]\nhosts = [\"{pg_sockets}:{1}\"]\nuser = \"{0}\"\npassword = \"{2}\"\n",
            db.name,
            pg().port(),
            db.password
        ))
        .start()
        .await;
    let socket = sockets.path().join(format!(".s.PGSQL.{}", p.port()));
    let mode = std::fs::metadata(&socket).expect("the socket file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "unix_socket_mode");

    // psql -h <dir>: peer authentication, and the server reached through its socket (no
    // server address on a Unix connection).
    let (ok, out, err) = psql_unix(sockets.path(), p.port(), &me, &db.name, "select inet_server_addr() is null").await;
    println!("UNIX psql as {me}: ok {ok} out {out:?} err {err:?}");
    assert!(ok, "psql over the socket failed: {err}");
    assert_eq!(out.trim(), "t", "the server connection is a Unix socket");
    let (ok, _, err) = psql_unix(sockets.path(), p.port(), "someone_else", &db.name, "select 1").await;
    println!("UNIX psql as someone_else: {}", err.trim());
    assert!(!ok && err.contains("pg_hba.conf rejects connection for host \"[local]\""), "{err}");

    // TCP goes on with its own rule.
    let c = p.try_connect(&db.name, &db.password, &db.name).await.expect("TCP login");
    assert_eq!(simple_one(&c, "select 40 + 2").await, "42");
    // A cancel reaches the server through its socket.
    let token = c.cancel_token();
    let started = Instant::now();
    let sleeper = tokio::spawn(async move { c.simple_query("select pg_sleep(20)").await.map(drop) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.expect("send cancel");
    let e = sleeper.await.unwrap().expect_err("cancelled");
    assert_eq!(sqlstate(&e).as_deref(), Some("57014"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The socket file goes with the listener.
    let mut p = p;
    assert!(p.shutdown(Duration::from_secs(5)).await);
    assert!(!socket.exists(), "socket file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_addr_lists_serve_every_address() {
    let db = fresh_db("listen");
    let port = pgsluice::localpg::free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("userlist.txt"), format!("\"{}\" \"{}\"\n", db.name, db.password)).unwrap();
    let path = dir.path().join("pgsluice.toml");
    std::fs::write(
        &path,
        format!(
            "[general]\nlisten_addr = \"127.0.0.1, ::1\"\nlisten_port = {port}\nauth_file = \"userlist.txt\"\n\
             [databases.{0}]\nhosts = [\"127.0.0.1:{1}\"]\n",
            db.name,
            pg().port()
        ),
    )
    .unwrap();
    let cfg = pgsluice::config::Config::load(&path).unwrap();
    let handle = pgsluice::server::ServerHandle::start(pgsluice::shared::Shared::new(cfg), None).await.expect("listen");
    for host in ["127.0.0.1", "::1"] {
        let connstr = format!("host={host} port={port} user={0} password={1} dbname={0}", db.name, db.password);
        let c = connect_str(&connstr).await.unwrap_or_else(|e| panic!("connect over {host}: {e}"));
        assert_eq!(simple_one(&c, "select 6 * 7").await, "42", "over {host}");
    }
    assert!(handle.shutdown(Duration::from_secs(5)).await);
}
