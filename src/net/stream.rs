//! `Stream`: one type for a client or server socket, plain TCP or TLS, so the session and
//! relay code is written once. Dispatch is a `match` (no boxing of the plain case).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;

/// A client or server connection.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS terminated by pgsluice (client side).
    Tls(Box<TlsStream<TcpStream>>),
    /// TLS initiated by pgsluice (toward a server).
    ServerTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A Unix-domain socket (a client on the same host, or a co-located server).
    Unix(Box<UnixStream>),
}

/// The address a Unix-socket peer is known by where a `SocketAddr` is expected (the console
/// shows it as `unix`).
pub const UNIX_PEER: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

impl Stream {
    /// The underlying TCP socket (`None` for a Unix socket).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(s.get_ref().0),
            Stream::ServerTls(s) => Some(s.get_ref().0),
            Stream::Unix(_) => None,
        }
    }

    /// The local address of a TCP connection.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.tcp().and_then(|t| t.local_addr().ok())
    }

    /// Whether the stream is a Unix-domain socket.
    pub fn is_unix(&self) -> bool {
        matches!(self, Stream::Unix(_))
    }

    /// Non-blocking check that an idle peer has neither closed the connection nor sent
    /// anything unexpected: one `recv(MSG_PEEK)`. `false` means "do not reuse".
    pub fn idle_and_open(&self) -> bool {
        match self.tcp() {
            Some(tcp) => {
                let mut byte = [0u8; 1];
                let mut buf = ReadBuf::new(&mut byte);
                let mut cx = Context::from_waker(std::task::Waker::noop());
                // Pending = would block = nothing to read and not closed: the healthy idle state.
                matches!(tcp.poll_peek(&mut cx, &mut buf), Poll::Pending)
            }
            None => {
                let Stream::Unix(u) = self else { return false };
                let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
                // The socket is non-blocking (tokio's): WouldBlock is the healthy idle state.
                matches!(socket2::SockRef::from(u).peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    /// The certificate a TLS client presented (verified against `client_tls_ca_file` during
    /// the handshake), DER.
    pub fn client_certificate(&self) -> Option<&[u8]> {
        match self {
            Stream::Tls(s) => s.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref()),
            _ => None,
        }
    }

    /// Whether the stream is TLS.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_) | Stream::Unix(_))
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ServerTls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::ServerTls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
            Stream::ServerTls(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ServerTls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
