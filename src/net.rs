//! Transport: the `Stream` enum over plain TCP and TLS, and the rustls acceptor setup.

pub mod logins;
pub mod stream;
pub mod tls;

pub use stream::{Stream, UNIX_PEER};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::protocol::{self, Header};

/// Errors while reading a whole message outside the hot path (login, admin queries).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("connection closed")]
    Closed,
    /// A framing error.
    #[error(transparent)]
    Protocol(#[from] protocol::Error),
}

/// Reads one untagged startup-family packet (`Int32` length, then the body) into `buf` and
/// splits off its body. A length outside 8..=`MAX_STARTUP_PACKET_LEN` is
/// `ReadError::Protocol(BadLength)` (tag 0).
///
/// # Cancel safety
/// Cancel-safe: partial data stays in `buf`.
pub async fn read_startup_packet<S: AsyncRead + Unpin>(s: &mut S, buf: &mut BytesMut) -> Result<BytesMut, ReadError> {
    while buf.len() < 4 {
        buf.reserve(64);
        if s.read_buf(buf).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=protocol::MAX_STARTUP_PACKET_LEN).contains(&(len as usize)) {
        return Err(ReadError::Protocol(protocol::Error::BadLength { tag: 0, len }));
    }
    let len = len as usize;
    while buf.len() < len {
        buf.reserve(len - buf.len());
        if s.read_buf(buf).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
    let mut pkt = buf.split_to(len);
    let _ = pkt.split_to(4);
    Ok(pkt)
}

/// Reads one complete tagged message into `buf` and splits it off as `(tag, body)`.
/// Used during login only; the relay frames incrementally instead.
///
/// # Cancel safety
/// Cancel-safe: partial data stays in `buf`.
pub async fn read_message<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
    max_body: usize,
) -> Result<(u8, BytesMut), ReadError> {
    loop {
        if let Some(h) = Header::parse(buf, max_body)? {
            if buf.len() >= h.frame_len() {
                let mut frame = buf.split_to(h.frame_len());
                let body = frame.split_off(protocol::HEADER_LEN);
                return Ok((h.tag, body));
            }
            buf.reserve(h.frame_len() - buf.len());
        } else {
            buf.reserve(512);
        }
        if s.read_buf(buf).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
}

/// Binds the listening socket (`SO_REUSEPORT` when `reuse_port`, so a second pgsluice can
/// bind the same port during an online restart).
pub fn bind(addr: std::net::SocketAddr, reuse_port: bool) -> std::io::Result<tokio::net::TcpListener> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    #[cfg(unix)]
    s.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    if reuse_port {
        s.set_reuse_port(true)?;
    }
    #[cfg(not(unix))]
    let _ = reuse_port;
    if addr.is_ipv6() {
        // `*` binds 0.0.0.0 and :: on the same port: the IPv6 socket must not take IPv4 too.
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    tokio::net::TcpListener::from_std(s.into())
}

/// A bound Unix-domain listening socket and the file it created.
pub struct UnixListening {
    /// The listener.
    pub listener: tokio::net::UnixListener,
    /// `<dir>/.s.PGSQL.<port>`.
    pub path: std::path::PathBuf,
    /// Device and inode of the file, so that only this process's file is removed at exit
    /// (an online restart's new process may have replaced it); `None` for a socket the
    /// service manager created, whose file is its own to remove.
    id: Option<(u64, u64)>,
}

impl UnixListening {
    /// A listening Unix socket handed over by the service manager (socket activation). Its
    /// file is never removed by this process. Must run inside a Tokio runtime.
    pub fn inherited(listener: std::os::unix::net::UnixListener) -> std::io::Result<UnixListening> {
        listener.set_nonblocking(true)?;
        let path = listener.local_addr()?.as_pathname().map(std::path::Path::to_path_buf).unwrap_or_default();
        Ok(UnixListening { listener: tokio::net::UnixListener::from_std(listener)?, path, id: None })
    }

    /// Removes the socket file if it is still the one this process created.
    pub fn remove(&self) {
        use std::os::unix::fs::MetadataExt;
        let Some(id) = self.id else { return };
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds `<dir>/.s.PGSQL.<port>` (PostgreSQL's name, so `psql -h <dir> -p <port>` finds it)
/// with permissions `mode` and group `gid`. A file left by a process that is gone is
/// replaced; one a running process answers on is taken over only with `take_over` (an
/// online restart with `so_reuseport`), else it is an error.
pub fn bind_unix(dir: &str, port: u16, mode: u32, gid: Option<u32>, take_over: bool) -> std::io::Result<UnixListening> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let path = std::path::Path::new(dir).join(format!(".s.PGSQL.{port}"));
    if std::fs::symlink_metadata(&path).is_ok() {
        let live = std::os::unix::net::UnixStream::connect(&path).is_ok();
        if live && !take_over {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another process", path.display()),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(&path, None, Some(gid))?;
    }
    let m = std::fs::metadata(&path)?;
    Ok(UnixListening { listener, path, id: Some((m.dev(), m.ino())) })
}

/// The id of group `name` (from `/etc/group`), or of a numeric id.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(id) = name.parse() {
        return Some(id);
    }
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// The name of user id `uid` (from `/etc/passwd`): the peer of a Unix-socket client.
pub fn user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}
