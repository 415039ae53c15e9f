//! The service manager at the edge: `sd_notify` (one datagram per state change to
//! `$NOTIFY_SOCKET`), the watchdog interval (`$WATCHDOG_USEC`), and socket activation
//! (`$LISTEN_FDS`, `$LISTEN_PID`, `$LISTEN_FDNAMES`). Written from systemd's documented
//! protocol (sd_notify(3), sd_listen_fds(3), sd_watchdog_enabled(3)), without libsystemd.
//!
//! Invariants:
//! - The environment is read **and cleared** once, by [`SystemdEnv::take`], before the runtime
//!   starts its threads (changing the environment is not thread-safe), so a child process never
//!   inherits the variables and nothing takes the same descriptors twice.
//! - Without `$NOTIFY_SOCKET` every notification is a no-op: pgsluice behaves the same outside
//!   systemd. A notification never blocks (the socket is non-blocking) and a failed send is
//!   only logged: systemd being gone must not stop the pooler.
//! - Inherited descriptors are taken only when `$LISTEN_PID` is this process, and each is
//!   checked to be a listening stream socket before it is used.
//! - Parsing ([`parse_notify_socket`], [`parse_listen_fds`], [`watchdog_timeout`],
//!   [`assign`]) is pure and unit-tested; the I/O is in [`Notifier`] and [`Activation::take`].
//!
//! # Which inherited socket serves what
//! - a socket named `metrics` (`FileDescriptorName=metrics`), TCP: the `/metrics` endpoint,
//!   instead of `[metrics] listen_addr`;
//! - every other TCP socket: a client listener (PostgreSQL protocol and the admin console),
//!   instead of `listen_addr` / `listen_port`; at least one is required;
//! - a Unix stream socket (at most one): the Unix-socket listener, instead of
//!   `unix_socket_dir` (the file belongs to systemd: pgsluice does not remove it at exit);
//! - anything else (a datagram socket, a second Unix socket, a socket not listening) is an error
//!   and pgsluice refuses to start.

use std::ffi::OsStr;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// More inherited sockets than this is a broken environment, not a configuration.
const MAX_LISTEN_FDS: usize = 64;

/// The name systemd gives a socket without `FileDescriptorName=` (and the name used when
/// `$LISTEN_FDNAMES` is unset).
pub const UNNAMED: &str = "unknown";

/// The socket name that selects the `/metrics` listener.
pub const METRICS_NAME: &str = "metrics";

/// Why the service manager's environment cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `$LISTEN_FDS` or `$LISTEN_FDNAMES` is malformed.
    #[error("socket activation: {0}")]
    BadEnv(String),
    /// An inherited socket is not usable for the role it would get.
    #[error("socket activation: descriptor {fd} ({name}): {reason}")]
    BadSocket {
        /// The descriptor.
        fd: RawFd,
        /// Its `$LISTEN_FDNAMES` name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The sockets given cannot be mapped to listeners.
    #[error("socket activation: {0}")]
    Mapping(String),
}

// === notify ===

/// Where `$NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddr {
    /// A socket file (`/run/systemd/notify`).
    Path(PathBuf),
    /// A Linux abstract socket (`@name`: the name without the `@`).
    Abstract(Vec<u8>),
}

/// Parses `$NOTIFY_SOCKET`: an absolute path, or `@` and an abstract name. Anything else
/// (empty, relative, systemd's `vsock:` form) is `None`: notifications are then off.
pub fn parse_notify_socket(value: &OsStr) -> Option<NotifyAddr> {
    let b = value.as_bytes();
    match b.first()? {
        b'/' => Some(NotifyAddr::Path(PathBuf::from(value))),
        b'@' if b.len() > 1 => Some(NotifyAddr::Abstract(b[1..].to_vec())),
        _ => None,
    }
}

/// Sends `sd_notify` states; a no-op when not started by systemd (`$NOTIFY_SOCKET` unset).
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    /// A failed send was logged (once: the watchdog would repeat it every few seconds).
    warned: std::sync::atomic::AtomicBool,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier { target: None, warned: Default::default() }
    }

    /// A notifier sending to `addr`.
    pub fn connect(addr: &NotifyAddr) -> std::io::Result<Notifier> {
        let to = match addr {
            NotifyAddr::Path(p) => std::os::unix::net::SocketAddr::from_pathname(p)?,
            NotifyAddr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)?
            }
        };
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(Notifier { target: Some((sock, to)), warned: Default::default() })
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines) as one datagram.
    pub fn notify(&self, state: &str) {
        if let Some((sock, to)) = &self.target {
            if let Err(e) = sock.send_to_addr(state.as_bytes(), to) {
                if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot notify the service manager (logged once)");
                }
            }
        }
    }

    /// The listeners are bound: the service is up (`READY=1`).
    pub fn ready(&self, status: &str) {
        self.notify(&ready_message(std::process::id(), status));
    }

    /// A reload begins (`RELOADING=1`); [`Notifier::ready`] ends it.
    pub fn reloading(&self) {
        self.notify(&reloading_message(monotonic_usec()));
    }

    /// A stop begins (`STOPPING=1`).
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// The watchdog keep-alive (`WATCHDOG=1`).
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

/// `READY=1` with the main pid (so systemd tracks this process even when started through a
/// wrapper) and a status line for `systemctl status`.
pub fn ready_message(pid: u32, status: &str) -> String {
    format!("READY=1\nMAINPID={pid}\nSTATUS={}", one_line(status))
}

/// `RELOADING=1` with the `CLOCK_MONOTONIC` time, which `Type=notify-reload` (systemd 253+)
/// requires to tell this reload from an earlier one.
pub fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}\nSTATUS=reloading the configuration")
}

/// A status text as one line (a line break would start another `KEY=VALUE`).
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// `CLOCK_MONOTONIC` in microseconds (the clock `MONOTONIC_USEC` is read on).
#[allow(unsafe_code)]
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000).saturating_add(ts.tv_nsec as u64 / 1_000)
}

// === watchdog ===

/// The watchdog timeout from `$WATCHDOG_USEC` (and `$WATCHDOG_PID`, which when set must be
/// this process), or `None` when the watchdog is off or the values are malformed. Send
/// `WATCHDOG=1` at half this interval.
pub fn watchdog_timeout(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok()? != my_pid {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

// === socket activation ===

/// The inherited descriptors `$LISTEN_FDS` announces, with their names: empty when the
/// variables are unset or meant for another process (`$LISTEN_PID` is not `my_pid`).
pub fn parse_listen_fds(
    fds: Option<&str>,
    pid: Option<&str>,
    names: Option<&str>,
    my_pid: u32,
) -> Result<Vec<(RawFd, String)>, Error> {
    let (Some(fds), Some(pid)) = (fds, pid) else {
        return Ok(Vec::new());
    };
    match pid.trim().parse::<u32>() {
        Ok(p) if p == my_pid => {}
        Ok(_) => return Ok(Vec::new()),
        Err(_) => return Err(Error::BadEnv(format!("LISTEN_PID={pid:?} is not a process id"))),
    }
    let n: usize = fds.trim().parse().map_err(|_| Error::BadEnv(format!("LISTEN_FDS={fds:?} is not a number")))?;
    if n > MAX_LISTEN_FDS {
        return Err(Error::BadEnv(format!("LISTEN_FDS={n}: more than {MAX_LISTEN_FDS} sockets")));
    }
    let names: Vec<String> = match names {
        Some(s) => s.split(':').map(str::to_string).collect(),
        None => vec![UNNAMED.to_string(); n],
    };
    if names.len() != n {
        return Err(Error::BadEnv(format!("LISTEN_FDNAMES has {} names for LISTEN_FDS={n}", names.len())));
    }
    Ok(names.into_iter().enumerate().map(|(i, name)| (LISTEN_FDS_START + i as RawFd, name)).collect())
}

/// What an inherited socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// A listening TCP socket (IPv4 or IPv6).
    Tcp,
    /// A listening Unix stream socket.
    Unix,
}

/// The role each inherited socket gets, by index.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Client listeners.
    pub clients: Vec<usize>,
    /// The Unix-socket listener.
    pub unix: Option<usize>,
    /// The `/metrics` listener.
    pub metrics: Option<usize>,
}

/// Maps inherited sockets (name, kind) to roles (see the module docs). Fails when no TCP socket
/// is left for clients, or a role is given twice.
pub fn assign(sockets: &[(&str, SocketKind)]) -> Result<Plan, Error> {
    let mut plan = Plan::default();
    for (i, &(name, kind)) in sockets.iter().enumerate() {
        let slot = match (name == METRICS_NAME, kind) {
            (true, SocketKind::Tcp) => &mut plan.metrics,
            (true, SocketKind::Unix) => {
                return Err(Error::Mapping("the socket named \"metrics\" must be TCP".into()));
            }
            (false, SocketKind::Tcp) => {
                plan.clients.push(i);
                continue;
            }
            (false, SocketKind::Unix) => &mut plan.unix,
        };
        if slot.replace(i).is_some() {
            return Err(Error::Mapping(format!(
                "more than one {} socket",
                if name == METRICS_NAME { "metrics" } else { "Unix" }
            )));
        }
    }
    if plan.clients.is_empty() {
        return Err(Error::Mapping("no TCP socket for clients among the inherited sockets".into()));
    }
    Ok(plan)
}

/// Listening sockets taken from the service manager, by role (blocking std types: the server
/// makes them non-blocking and registers them with the runtime).
#[derive(Debug)]
pub struct Activation {
    /// Client listeners (at least one).
    pub clients: Vec<std::net::TcpListener>,
    /// The Unix-socket listener.
    pub unix: Option<std::os::unix::net::UnixListener>,
    /// The `/metrics` listener.
    pub metrics: Option<std::net::TcpListener>,
}

impl Activation {
    /// Takes ownership of the descriptors `listen` names, checks what each is, and assigns
    /// them roles. `None` when there are none (not socket-activated).
    pub fn take(listen: &[(RawFd, String)]) -> Result<Option<Activation>, Error> {
        if listen.is_empty() {
            return Ok(None);
        }
        let mut owned = Vec::with_capacity(listen.len());
        for (fd, name) in listen {
            let bad = |reason: String| Error::BadSocket { fd: *fd, name: name.clone(), reason };
            let fd_owned = take_fd(*fd).map_err(|e| bad(e.to_string()))?;
            let kind = socket_kind(&fd_owned).map_err(bad)?;
            owned.push((fd_owned, name.as_str(), kind));
        }
        let kinds: Vec<(&str, SocketKind)> = owned.iter().map(|(_, n, k)| (*n, *k)).collect();
        let plan = assign(&kinds)?;
        let mut fds: Vec<Option<OwnedFd>> = owned.into_iter().map(|(fd, _, _)| Some(fd)).collect();
        let mut tcp = |i: usize| std::net::TcpListener::from(fds[i].take().expect("each index is assigned once"));
        let clients = plan.clients.iter().map(|&i| tcp(i)).collect();
        let metrics = plan.metrics.map(&mut tcp);
        let unix = plan.unix.map(|i| std::os::unix::net::UnixListener::from(fds[i].take().expect("assigned once")));
        Ok(Some(Activation { clients, unix, metrics }))
    }
}

/// Owns inherited descriptor `fd` and marks it close-on-exec (as `sd_listen_fds` does).
#[allow(unsafe_code)]
fn take_fd(fd: RawFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_GETFD only reads the flags of `fd`; it fails with EBADF if it is not open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is open, and `$LISTEN_PID` named this process, so systemd passed it to us
    // and nothing else in the process owns it: the variables are cleared when read, and each
    // descriptor is taken once, so this is its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sets the flags of a descriptor this function owns.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(owned)
}

/// Whether `fd` is a listening TCP or Unix stream socket.
#[allow(unsafe_code)]
fn socket_kind(fd: &OwnedFd) -> Result<SocketKind, String> {
    use std::os::fd::AsRawFd;
    let s = socket2::SockRef::from(fd);
    let ty = s.r#type().map_err(|e| format!("not a socket ({e})"))?;
    if ty != socket2::Type::STREAM {
        return Err("not a stream socket (use ListenStream=)".into());
    }
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: reads one c_int option into `listening`, whose size `len` gives.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || listening == 0 {
        return Err("not a listening socket (Accept=no is needed)".into());
    }
    let addr = s.local_addr().map_err(|e| e.to_string())?;
    if addr.as_socket().is_some() {
        Ok(SocketKind::Tcp)
    } else if addr.is_unix() {
        Ok(SocketKind::Unix)
    } else {
        Err("neither TCP nor a Unix socket".into())
    }
}

// === environment ===

/// What the service manager told this process, read from the environment once.
#[derive(Debug, Default)]
pub struct SystemdEnv {
    /// `$NOTIFY_SOCKET`.
    pub notify: Option<NotifyAddr>,
    /// The watchdog timeout.
    pub watchdog: Option<Duration>,
    /// Inherited listening descriptors and their names.
    pub listen: Vec<(RawFd, String)>,
}

/// The variables [`SystemdEnv::take`] reads and removes.
const VARS: [&str; 6] =
    ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];

impl SystemdEnv {
    /// Reads the service manager's variables and removes them from the environment. Call it
    /// once, before any other thread is started.
    pub fn take() -> Result<SystemdEnv, Error> {
        let get = |k: &str| std::env::var_os(k);
        let text = |k: &str| get(k).map(|v| v.to_string_lossy().into_owned());
        let pid = std::process::id();
        let notify = get("NOTIFY_SOCKET").and_then(|v| parse_notify_socket(&v));
        let watchdog = watchdog_timeout(text("WATCHDOG_USEC").as_deref(), text("WATCHDOG_PID").as_deref(), pid);
        let listen = parse_listen_fds(
            text("LISTEN_FDS").as_deref(),
            text("LISTEN_PID").as_deref(),
            text("LISTEN_FDNAMES").as_deref(),
            pid,
        );
        for k in VARS {
            // Single-threaded here (the caller's contract), which is what makes this sound.
            std::env::remove_var(k);
        }
        Ok(SystemdEnv { notify, watchdog, listen: listen? })
    }

    /// A notifier for `$NOTIFY_SOCKET` (disabled when unset or unusable).
    pub fn notifier(&self) -> Notifier {
        match &self.notify {
            Some(addr) => Notifier::connect(addr).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "NOTIFY_SOCKET is unusable; not notifying the service manager");
                Notifier::disabled()
            }),
            None => Notifier::disabled(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_paths_and_abstract_names() {
        assert_eq!(
            parse_notify_socket(OsStr::new("/run/systemd/notify")),
            Some(NotifyAddr::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_notify_socket(OsStr::new("@sd-notify/1")),
            Some(NotifyAddr::Abstract(b"sd-notify/1".to_vec()))
        );
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            assert_eq!(parse_notify_socket(OsStr::new(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn messages_carry_the_required_fields() {
        assert_eq!(ready_message(42, "serving\non 6432"), "READY=1\nMAINPID=42\nSTATUS=serving on 6432");
        let r = reloading_message(123_456);
        assert!(r.starts_with("RELOADING=1\nMONOTONIC_USEC=123456\n"), "{r}");
        assert!(monotonic_usec() > 0);
    }

    #[test]
    fn watchdog_needs_a_positive_interval_for_this_process() {
        assert_eq!(watchdog_timeout(Some("2000000"), None, 7), Some(Duration::from_secs(2)));
        assert_eq!(watchdog_timeout(Some("2000000"), Some("7"), 7), Some(Duration::from_secs(2)));
        assert_eq!(watchdog_timeout(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_timeout(Some("0"), None, 7), None);
        assert_eq!(watchdog_timeout(Some("x"), None, 7), None);
        assert_eq!(watchdog_timeout(None, Some("7"), 7), None);
    }

    #[test]
    fn listen_fds_for_this_process_only() {
        assert!(parse_listen_fds(None, None, None, 9).unwrap().is_empty());
        assert!(parse_listen_fds(Some("2"), None, None, 9).unwrap().is_empty());
        assert!(parse_listen_fds(Some("2"), Some("10"), None, 9).unwrap().is_empty());
        assert_eq!(
            parse_listen_fds(Some("2"), Some("9"), None, 9).unwrap(),
            vec![(3, UNNAMED.to_string()), (4, UNNAMED.to_string())]
        );
        assert_eq!(
            parse_listen_fds(Some("3"), Some("9"), Some("pg:pg:metrics"), 9).unwrap(),
            vec![(3, "pg".into()), (4, "pg".into()), (5, "metrics".into())]
        );
        assert!(parse_listen_fds(Some("0"), Some("9"), None, 9).unwrap().is_empty());
    }

    #[test]
    fn malformed_listen_fds_are_errors() {
        assert!(parse_listen_fds(Some("two"), Some("9"), None, 9).is_err());
        assert!(parse_listen_fds(Some("2"), Some("nine"), None, 9).is_err());
        assert!(parse_listen_fds(Some("2"), Some("9"), Some("only-one"), 9).is_err());
        assert!(parse_listen_fds(Some("1000"), Some("9"), None, 9).is_err());
    }

    #[test]
    fn sockets_get_roles_by_kind_and_name() {
        use SocketKind::*;
        let plan = assign(&[("pg", Tcp), ("metrics", Tcp), ("pg", Tcp), ("sock", Unix)]).unwrap();
        assert_eq!(plan, Plan { clients: vec![0, 2], unix: Some(3), metrics: Some(1) });
        assert_eq!(assign(&[(UNNAMED, Tcp)]).unwrap(), Plan { clients: vec![0], unix: None, metrics: None });
    }

    #[test]
    fn impossible_socket_sets_are_refused() {
        use SocketKind::*;
        for bad in [
            &[("metrics", Tcp)][..],
            &[(UNNAMED, Unix)],
            &[(UNNAMED, Tcp), ("metrics", Unix)],
            &[(UNNAMED, Tcp), ("metrics", Tcp), ("metrics", Tcp)],
            &[(UNNAMED, Tcp), ("a", Unix), ("b", Unix)],
        ] {
            assert!(assign(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn notifier_sends_one_datagram_per_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(&NotifyAddr::Path(path)).unwrap();
        n.stopping("bye");
        n.watchdog();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=bye");
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");
        assert!(!Notifier::disabled().is_enabled());
    }

    #[test]
    fn notifier_reaches_abstract_sockets() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("pgsluice-test-{}-{}", std::process::id(), rand::random::<u32>());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        let target = parse_notify_socket(OsStr::new(&format!("@{name}"))).unwrap();
        Notifier::connect(&target).unwrap().ready("up");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], ready_message(std::process::id(), "up").as_bytes());
    }
}
