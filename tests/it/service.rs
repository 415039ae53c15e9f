//! The real `pgsluice` binary under a (simulated) service manager: the `sd_notify` messages
//! (`READY=1` once the port accepts, `RELOADING=1` / `READY=1` around SIGHUP, `STOPPING=1`,
//! `WATCHDOG=1`) sent to a datagram socket the test owns, socket activation (listening
//! sockets passed as descriptors 3, 4, 5 with `LISTEN_FDS`), SIGUSR1 / SIGUSR2 as `PAUSE` /
//! `RESUME`, and `--version` against `SHOW VERSION`.
//!
//! The binary runs as a child process, as in `operations.rs`; a [`Child`] kills it on drop.
//! Signals are sent with `kill(1)`. Passing descriptors needs one `pre_exec` hook (`dup2`
//! into 3, 4, 5), the only unsafe code here; `LISTEN_PID` must be the pid of the process that
//! reads it, so the child is `sh -c 'LISTEN_PID=$$ exec pgsluice …'` (exec keeps the pid).

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixDatagram;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use crate::harness::*;

/// Longest wait for the binary to start, or for one notification.
const LIMIT: Duration = Duration::from_secs(20);

// === impl Child ===

/// A running `pgsluice` child; killed on drop if still running.
struct Child {
    child: std::process::Child,
    log: PathBuf,
}

impl Child {
    /// Starts `cmd` (stderr to `dir/pgsluice.log`).
    fn spawn(mut cmd: std::process::Command, dir: &Path) -> Child {
        let log = dir.join("pgsluice.log");
        let stderr = std::fs::File::create(&log).expect("log file");
        cmd.env_remove("RUST_LOG").stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        for k in ["NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            if !cmd.get_envs().any(|(name, _)| name == k) {
                cmd.env_remove(k);
            }
        }
        let child = cmd.spawn().expect("start pgsluice");
        Child { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill").args(["-s", sig, &self.pid().to_string()]).status().expect("kill");
        assert!(st.success(), "kill -s {sig} failed");
    }

    fn log_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    async fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "pgsluice did not exit\n{}", self.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// === setup ===

/// A free port (bound to 127.0.0.1:0 and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Writes `pgsluice.toml` serving `db` on `port` (plus `general` lines) and its userlist;
/// `db`'s role may use the console.
fn write_config(dir: &Path, port: u16, db: &TestDb, general: &[&str]) -> PathBuf {
    let mut b = pooler()
        .general("listen_addr = \"127.0.0.1\"")
        .general(&format!("listen_port = {port}"))
        .general(&format!("admin_users = [\"{}\"]", db.name))
        .database(db, &[]);
    for line in general {
        b = b.general(line);
    }
    std::fs::write(dir.join("userlist.txt"), format!("\"{}\" \"{}\"\n", db.name, db.verifier())).unwrap();
    let path = dir.join("pgsluice.toml");
    std::fs::write(&path, b.config_text()).unwrap();
    path
}

/// The plain command: `pgsluice -c <config>`.
fn pgsluice(config: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgsluice"));
    cmd.arg("-c").arg(config);
    cmd
}

fn connstr(host: &str, port: u16, db: &TestDb, dbname: &str) -> String {
    format!("host={host} port={port} user={} password={} dbname={dbname} connect_timeout=10", db.name, db.password)
}

async fn login(host: &str, port: u16, db: &TestDb, dbname: &str) -> Result<Client, String> {
    let (client, conn) =
        tokio_postgres::connect(&connstr(host, port, db, dbname), NoTls).await.map_err(|e| short(&e))?;
    tokio::spawn(conn);
    Ok(client)
}

/// Polls until `db` can log in on 127.0.0.1:`port` and run a query.
async fn wait_serving(child: &Child, port: u16, db: &TestDb) -> Client {
    let deadline = Instant::now() + LIMIT;
    loop {
        match login("127.0.0.1", port, db, &db.name).await {
            Ok(c) if c.simple_query("select 1").await.is_ok() => return c,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            r => panic!("pgsluice does not serve on {port}: {:?}\n{}", r.err(), child.log_text()),
        }
    }
}

/// The value of column `col` in the row of `SHOW DATABASES` for `name`.
async fn database_column(console: &Client, name: &str, col: &str) -> String {
    let msgs = console.simple_query("SHOW DATABASES").await.expect("SHOW DATABASES");
    msgs.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.get("name") == Some(name) => r.get(col).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no SHOW DATABASES row for {name}"))
}

// === notifications ===

/// The test's end of `$NOTIFY_SOCKET`; counts the `WATCHDOG=1` keep-alives it skips.
struct NotifySocket {
    sock: UnixDatagram,
    watchdogs: usize,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        NotifySocket { sock: UnixDatagram::bind(path).expect("bind notify socket"), watchdogs: 0 }
    }

    /// The next state that is not a watchdog keep-alive.
    async fn next(&mut self, child: &Child) -> String {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match tokio::time::timeout(LIMIT, self.sock.recv(&mut buf)).await {
                Ok(r) => r.expect("recv"),
                Err(_) => panic!("no notification within {LIMIT:?}\n{}", child.log_text()),
            };
            let msg = String::from_utf8(buf[..n].to_vec()).expect("utf-8 notification");
            if msg == "WATCHDOG=1" {
                self.watchdogs += 1;
            } else {
                return msg;
            }
        }
    }
}

/// The value of `key` in a notification.
fn field<'a>(msg: &'a str, key: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[tokio::test]
async fn notify_ready_only_once_accepting_then_reloading_and_stopping() {
    let db = fresh_db("sdnotify");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, &db, &[]);
    let mut notify = NotifySocket::bind(&dir.path().join("notify"));
    let mut cmd = pgsluice(&config);
    cmd.env("NOTIFY_SOCKET", dir.path().join("notify")).env("WATCHDOG_USEC", "200000");
    let mut child = Child::spawn(cmd, dir.path());

    let ready = notify.next(&child).await;
    // At READY=1 the port takes connections and logins at once: no retry.
    let c = login("127.0.0.1", port, &db, &db.name).await.unwrap_or_else(|e| panic!("login right after READY=1: {e}"));
    assert_eq!(simple_one(&c, "select 41 + 1").await, "42");
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    assert_eq!(field(&ready, "MAINPID"), Some(child.pid().to_string().as_str()), "{ready:?}");
    assert!(field(&ready, "STATUS").is_some_and(|s| s.contains(&port.to_string())), "{ready:?}");

    // SIGHUP: RELOADING=1 with the monotonic clock, then READY=1.
    child.signal("HUP");
    let reloading = notify.next(&child).await;
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading:?}");
    let usec: u64 = field(&reloading, "MONOTONIC_USEC").and_then(|v| v.parse().ok()).expect("MONOTONIC_USEC");
    assert!(usec > 0);
    let again = notify.next(&child).await;
    assert_eq!(field(&again, "READY"), Some("1"), "{again:?}");
    assert!(field(&again, "STATUS").is_some_and(|s| s.contains("reloaded")), "{again:?}");

    // A reload that fails still ends with READY=1 (the process serves on), saying why.
    std::fs::write(&config, "[general]\nlisten_port = \"not a port\"\n").unwrap();
    child.signal("HUP");
    let reloading = notify.next(&child).await;
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading:?}");
    let second = field(&reloading, "MONOTONIC_USEC").and_then(|v| v.parse::<u64>().ok()).expect("MONOTONIC_USEC");
    assert!(second >= usec, "the monotonic clock went back: {second} < {usec}");
    let failed = notify.next(&child).await;
    assert_eq!(field(&failed, "READY"), Some("1"), "{failed:?}");
    assert!(field(&failed, "STATUS").is_some_and(|s| s.contains("reload failed")), "{failed:?}");
    assert_eq!(simple_one(&c, "select 1").await, "1");

    // WatchdogSec: keep-alives at half of WATCHDOG_USEC (every 100 ms here).
    tokio::time::sleep(Duration::from_millis(600)).await;
    child.signal("TERM");
    drop(c);
    let stopping = notify.next(&child).await;
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
    assert!(notify.watchdogs >= 3, "{} WATCHDOG=1 messages", notify.watchdogs);
    let status = child.wait_exit().await;
    assert!(status.success(), "{status}\n{}", child.log_text());
}

#[tokio::test]
async fn notify_reaches_an_abstract_socket_and_without_it_nothing_is_sent() {
    use std::os::linux::net::SocketAddrExt;
    let db = fresh_db("sdabstract");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, &db, &[]);
    let name = format!("pgsluice-it-{}-{}", std::process::id(), port);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let std_sock = std::os::unix::net::UnixDatagram::bind_addr(&addr).expect("bind abstract");
    std_sock.set_nonblocking(true).unwrap();
    let mut notify = NotifySocket { sock: UnixDatagram::from_std(std_sock).unwrap(), watchdogs: 0 };
    let mut cmd = pgsluice(&config);
    // WATCHDOG_PID names another process: no keep-alives.
    cmd.env("NOTIFY_SOCKET", format!("@{name}")).env("WATCHDOG_USEC", "100000").env("WATCHDOG_PID", "1");
    let mut child = Child::spawn(cmd, dir.path());
    let ready = notify.next(&child).await;
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.signal("INT");
    let stopping = notify.next(&child).await;
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
    assert_eq!(notify.watchdogs, 0, "WATCHDOG_PID is another process");
    assert!(child.wait_exit().await.success(), "{}", child.log_text());
}

// === socket activation ===

/// `pgsluice -c <config>` run as `sh -c 'LISTEN_PID=$$ exec …'` with `fds` as descriptors 3,
/// 4, … and `LISTEN_FDS` / `LISTEN_FDNAMES` set.
fn activated(config: &Path, fds: &[RawFd], names: &str) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" -c \"$1\"")
        .arg(env!("CARGO_BIN_EXE_pgsluice"))
        .arg(config)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names);
    let fds: Vec<RawFd> = fds.to_vec();
    #[allow(unsafe_code)]
    // SAFETY: the hook only calls fcntl and dup2, which are async-signal-safe, on descriptors
    // the parent keeps open until spawn returns; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // First out of the way (above any target number), then into 3, 4, …; dup2 clears
            // close-on-exec on the copy.
            let mut high = [0 as RawFd; 8];
            for (i, &fd) in fds.iter().enumerate() {
                high[i] = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &fd) in high[..fds.len()].iter().enumerate() {
                if libc::dup2(fd, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd
}

async fn http_get_metrics(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(LIMIT, s.read_to_string(&mut out)).await.expect("metrics reply").expect("read");
    out
}

#[tokio::test]
async fn socket_activation_serves_the_inherited_sockets_instead_of_listen_addr() {
    let db = fresh_db("sdsocket");
    let dir = tempfile::tempdir().unwrap();
    // listen_addr points at a port nobody binds; the clients' socket is the test's.
    let configured = free_port();
    let config = write_config(dir.path(), configured, &db, &[]);
    let client_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client_port = client_listener.local_addr().unwrap().port();
    let metrics_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_port = metrics_listener.local_addr().unwrap().port();
    let sock_dir = dir.path().join("sock");
    std::fs::create_dir(&sock_dir).unwrap();
    let sock_path = sock_dir.join(format!(".s.PGSQL.{client_port}"));
    let unix_listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    let fds = [client_listener.as_raw_fd(), metrics_listener.as_raw_fd(), unix_listener.as_raw_fd()];
    let mut child = Child::spawn(activated(&config, &fds, "pgsluice:metrics:pgsluice-unix"), dir.path());

    let tcp = wait_serving(&child, client_port, &db).await;
    assert_eq!(simple_one(&tcp, "select current_user").await, db.name);
    let unix = login(&sock_dir.display().to_string(), client_port, &db, &db.name)
        .await
        .unwrap_or_else(|e| panic!("login over the inherited Unix socket: {e}\n{}", child.log_text()));
    assert_eq!(simple_one(&unix, "select 2").await, "2");
    // The console is on the same sockets.
    let console = login("127.0.0.1", client_port, &db, "pgbouncer").await.expect("console");
    assert_eq!(database_column(&console, &db.name, "paused").await, "0");
    let metrics = http_get_metrics(metrics_port).await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("pgbouncer_up"), "{metrics}");
    // Nothing was bound on listen_addr.
    let e = tokio::net::TcpStream::connect(("127.0.0.1", configured)).await.expect_err("listen_port must be unbound");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(child.log_text().contains("socket activation"), "{}", child.log_text());

    drop((tcp, unix, console));
    child.signal("INT");
    assert!(child.wait_exit().await.success(), "{}", child.log_text());
    // The Unix socket's file is systemd's (here: the test's); pgsluice leaves it.
    assert!(sock_path.exists(), "pgsluice removed the inherited socket's file");
}

#[tokio::test]
async fn socket_activation_refuses_sockets_it_cannot_use() {
    let db = fresh_db("sdbadsock");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, &db, &[]);
    // A datagram socket is not a listener.
    let dgram = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut child = Child::spawn(activated(&config, &[dgram.as_raw_fd()], "pgsluice"), dir.path());
    let status = child.wait_exit().await;
    assert_eq!(status.code(), Some(1), "{}", child.log_text());
    assert!(child.log_text().contains("not a stream socket"), "{}", child.log_text());
}

// === signals and version ===

#[tokio::test]
async fn sigusr1_pauses_and_sigusr2_resumes() {
    let db = fresh_db("sdpause");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, &db, &[]);
    let child = Child::spawn(pgsluice(&config), dir.path());
    let c = wait_serving(&child, port, &db).await;
    let console = login("127.0.0.1", port, &db, "pgbouncer").await.expect("console");
    assert_eq!(database_column(&console, &db.name, "paused").await, "0");

    child.signal("USR1");
    assert!(child.wait_log("pausing all databases").await, "{}", child.log_text());
    assert_eq!(database_column(&console, &db.name, "paused").await, "1");
    // A new request waits while paused.
    let query = tokio::spawn(async move {
        let r = c.simple_query("select 'after resume'").await.map(|m| rows(&m));
        (c, r)
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!query.is_finished(), "a query ran while paused\n{}", child.log_text());

    child.signal("USR2");
    let (c, r) = tokio::time::timeout(LIMIT, query).await.expect("query after SIGUSR2").expect("task");
    assert_eq!(r.expect("query"), vec!["after resume".to_string()]);
    assert_eq!(database_column(&console, &db.name, "paused").await, "0");
    // Still running (the default action of SIGUSR1/2 would have ended it).
    assert_eq!(simple_one(&c, "select 3").await, "3");
}

#[tokio::test]
async fn version_flag_matches_show_version() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsluice")).arg("--version").output().expect("--version");
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.trim_end(), format!("pgsluice {}", env!("CARGO_PKG_VERSION")));

    let db = fresh_db("sdversion");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, &db, &[]);
    let child = Child::spawn(pgsluice(&config), dir.path());
    wait_serving(&child, port, &db).await;
    let console = login("127.0.0.1", port, &db, "pgbouncer").await.expect("console");
    assert_eq!(simple_one(&console, "SHOW VERSION").await, printed.trim_end());
}

// === docker/ ===

#[test]
fn docker_config_passes_check_config() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/pgsluice.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgsluice"))
        .arg("check-config")
        .arg(&file)
        .output()
        .expect("check-config");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("OK (1 databases, 1 users in auth_file)"), "{stderr}");
}

#[tokio::test]
async fn docker_healthcheck_asks_metrics() {
    let db = fresh_db("sdhealth");
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let config = write_config(dir.path(), port, &db, &[]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[metrics]\nlisten_addr = \"127.0.0.1:{metrics_port}\"\n"));
    std::fs::write(&config, text).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/healthcheck");
    let health = |port: u16| {
        std::process::Command::new("bash")
            .arg(&script)
            .env("PGSLUICE_METRICS_PORT", port.to_string())
            .stderr(Stdio::null())
            .status()
            .expect("run docker/healthcheck")
    };
    assert!(!health(metrics_port).success(), "healthy before pgsluice runs");
    let child = Child::spawn(pgsluice(&config), dir.path());
    wait_serving(&child, port, &db).await;
    // (A child process: blocking this test's thread holds up nothing.)
    let status = health(metrics_port);
    assert!(status.success(), "{status}\n{}", child.log_text());
    // The client port answers, but not HTTP: unhealthy.
    assert!(!health(port).success());
}
