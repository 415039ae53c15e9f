//! Peering (PgBouncer's `peer_id` / `[peers]`) between real `pgsluice` processes: a
//! CancelRequest that reaches the wrong instance is forwarded to the one whose client it
//! names; one for an unknown peer, or out of hops, is dropped; two instances sharing a port
//! with `so_reuseport` cancel each other's clients.
//!
//! The instances run the binary Cargo built (`-c <file>`), with their peer id from
//! `PGSLUICE_PEER_ID` (the files carry no `peer_id`), logging to files in the test's
//! temp dir; clients speak raw protocol (no password: `auth_type = "any"`), so the keys
//! can be read and altered.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::harness::*;
use crate::protocol32::{assert_still_running, cancel_request, expect_cancelled, key, login_at, send_to, start_sleep};

/// Logged by an instance for each CancelRequest it passed on (at debug level).
const FORWARDED: &str = "cancel request forwarded to its peer";

/// A running `pgsluice` process; killed when dropped.
struct Instance {
    child: Child,
    log: PathBuf,
    addr: SocketAddr,
}

impl Instance {
    /// Writes `dir/<label>.toml` and starts the binary on it as peer `peer_id`; returns once
    /// it listens.
    async fn start(dir: &Path, label: &str, config: &str, peer_id: u16, port: u16) -> Instance {
        let file = dir.join(format!("{label}.toml"));
        std::fs::write(&file, config).expect("write config");
        std::fs::write(dir.join("userlist.txt"), "").expect("write userlist");
        let log = dir.join(format!("{label}.log"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgsluice"))
            .arg("-c")
            .arg(&file)
            .env("PGSLUICE_PEER_ID", peer_id.to_string())
            .env("RUST_LOG", "info,pgsluice::cancel=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the pgsluice binary");
        let mut i = Instance { child, log, addr: SocketAddr::from(([127, 0, 0, 1], port)) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !i.log_text().contains("pgsluice listening") {
            if let Some(st) = i.child.try_wait().expect("try_wait") {
                panic!("pgsluice {label} exited with {st}\n{}", i.log_text());
            }
            assert!(Instant::now() < deadline, "pgsluice {label} did not start\n{}", i.log_text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        i
    }

    fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// How many log lines contain `needle`.
    fn count(&self, needle: &str) -> usize {
        self.log_text().lines().filter(|l| l.contains(needle)).count()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A config serving `db` without passwords on 127.0.0.1:`port`, with `[peers.N]` tables.
fn config(db: &TestDb, port: u16, general: &[&str], peers: &[(u16, String)]) -> String {
    let mut b = pooler()
        .general("auth_type = \"any\"")
        .general("listen_addr = \"127.0.0.1\"")
        .general(&format!("listen_port = {port}"))
        .database_with_login(db, &[]);
    for line in general {
        b = b.general(line);
    }
    for (id, host) in peers {
        b = b.section(&format!("[peers.{id}]\nhost = \"{host}\"\n"));
    }
    b.config_text()
}

/// Waits until `inst` has logged `needle` `n` times (log lines may trail the event).
async fn wait_count(inst: &Instance, needle: &str, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(5);
    while inst.count(needle) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    inst.count(needle)
}

/// Logs in at `home`, runs `pg_sleep(30)`, sends its CancelRequest to `target`, and checks
/// the query ends with 57014.
async fn cancel_via(db: &TestDb, home: SocketAddr, target: SocketAddr, minor: u32) {
    let (mut s, msgs): (TcpStream, _) = login_at(home, db, minor).await;
    let (pid, secret) = key(&msgs);
    start_sleep(&mut s, db).await;
    send_to(target, &cancel_request(pid, &secret)).await;
    expect_cancelled(&mut s).await;
}

#[tokio::test]
async fn a_cancel_landing_on_the_other_instance_is_forwarded_50_times_out_of_50() {
    let db = fresh_db("peer_fwd");
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let peers = [(1, format!("127.0.0.1:{pa}")), (2, format!("127.0.0.1:{pb}"))];
    // The files differ only in listen_port; the ids come from PGSLUICE_PEER_ID.
    let a = Instance::start(dir.path(), "a", &config(&db, pa, &[], &peers), 1, pa).await;
    let b = Instance::start(dir.path(), "b", &config(&db, pb, &[], &peers), 2, pb).await;
    for i in 0..50 {
        let (home, other) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        // Both key lengths: 3.0 (4-byte secret) and 3.2 (32 bytes).
        let minor = if i % 4 < 2 { 0 } else { 2 };
        cancel_via(&db, home.addr, other.addr, minor).await;
    }
    assert_eq!(wait_count(&a, FORWARDED, 25).await, 25, "{}", a.log_text());
    assert_eq!(wait_count(&b, FORWARDED, 25).await, 25, "{}", b.log_text());
}

#[tokio::test]
async fn cancels_for_unknown_peers_and_out_of_hops_are_dropped() {
    let db = fresh_db("peer_drop");
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb, pl) = (free_port(), free_port(), free_port());
    let peers = [(1, format!("127.0.0.1:{pa}")), (2, format!("127.0.0.1:{pb}"))];
    let a = Instance::start(dir.path(), "a", &config(&db, pa, &[], &peers), 1, pa).await;
    let b = Instance::start(dir.path(), "b", &config(&db, pb, &[], &peers), 2, pb).await;
    // A misconfigured instance whose [peers.2] is itself: a loop the hop count must end.
    let looped = [(2, format!("127.0.0.1:{pl}"))];
    let l = Instance::start(dir.path(), "l", &config(&db, pl, &[], &looped), 3, pl).await;

    let (mut s, msgs) = login_at(b.addr, &db, 2).await;
    let (pid, secret) = key(&msgs);
    start_sleep(&mut s, &db).await;

    // Peer id 7 (bytes 1 and 2 of the key, low byte first) is in nobody's [peers].
    let mut bytes = pid.to_be_bytes();
    [bytes[1], bytes[2]] = 7u16.to_le_bytes();
    send_to(a.addr, &cancel_request(i32::from_be_bytes(bytes), &secret)).await;
    assert_still_running(&mut s, "unknown peer id").await;
    assert_eq!(wait_count(&a, "peer_id not in [peers]", 1).await, 1, "{}", a.log_text());

    // No hops left (TTL bits of the last byte clear): A must not pass it on.
    let mut spent = secret.clone();
    spent[31] &= !0b11;
    send_to(a.addr, &cancel_request(pid, &spent)).await;
    assert_still_running(&mut s, "TTL exhausted").await;
    assert_eq!(wait_count(&a, "TTL is exhausted", 1).await, 1, "{}", a.log_text());

    // The loop: three forwards to itself, then dropped.
    send_to(l.addr, &cancel_request(pid, &secret)).await;
    assert_still_running(&mut s, "forwarding loop").await;
    assert_eq!(wait_count(&l, "TTL is exhausted", 1).await, 1, "{}", l.log_text());
    assert_eq!(l.count(FORWARDED), 3, "{}", l.log_text());

    // The real thing still works through A.
    send_to(a.addr, &cancel_request(pid, &secret)).await;
    expect_cancelled(&mut s).await;
    assert_eq!(wait_count(&a, FORWARDED, 1).await, 1, "{}", a.log_text());
}

#[tokio::test]
async fn two_instances_sharing_a_port_with_so_reuseport_cancel_each_others_clients() {
    let db = fresh_db("peer_reuse");
    let dir = tempfile::tempdir().unwrap();
    eprintln!("DIR {}", dir.path().display());
    let dir = Box::leak(Box::new(dir));
    let port = free_port();
    // Each instance also listens on a Unix socket of its own: that is how its peers reach
    // it, since the shared TCP port lands on either.
    let (da, db_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&da).unwrap();
    std::fs::create_dir_all(&db_dir).unwrap();
    let peers = [(1, format!("{}:{port}", da.display())), (2, format!("{}:{port}", db_dir.display()))];
    let general = |d: &Path| vec!["so_reuseport = true".to_string(), format!("unix_socket_dir = \"{}\"", d.display())];
    let ga = general(&da);
    let gb = general(&db_dir);
    let ga: Vec<&str> = ga.iter().map(String::as_str).collect();
    let gb: Vec<&str> = gb.iter().map(String::as_str).collect();
    let a = Instance::start(dir.path(), "a", &config(&db, port, &ga, &peers), 1, port).await;
    let b = Instance::start(dir.path(), "b", &config(&db, port, &gb, &peers), 2, port).await;
    let shared = a.addr;
    for i in 0..50 {
        eprintln!("iteration {i}");
        cancel_via(&db, shared, shared, if i % 2 == 0 { 0 } else { 2 }).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let forwarded = a.count(FORWARDED) + b.count(FORWARDED);
    eprintln!("so_reuseport: 50 of 50 cancelled, {forwarded} of them through the other instance");
    assert!(forwarded > 0, "no cancel landed on the other instance: the test did not test peering");
}
