//! The listener: accepts connections, enforces `max_client_conn`, spawns one session task
//! per client, runs pool upkeep once a second and the statistics period. Stops accepting
//! on shutdown (or on its own for `SHUTDOWN WAIT_FOR_CLIENTS`), and [`ServerHandle::stop`]
//! carries out the three stop modes. The listeners are bound here ([`ServerHandle::start`]) or
//! handed over by the service manager ([`ServerHandle::start_inherited`], socket activation).

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::net::{Stream, UnixListening, UNIX_PEER};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::error::{ClientError, ErrorSource};
use crate::frontend::session;
use crate::net::{read_startup_packet, ReadError};
use crate::protocol::frontend::{parse_startup, StartupPacket};
use crate::shared::Shared;
use crate::shutdown::{DrainToken, Shutdown, ShutdownController, StopMode};

/// Most connections being turned away at once; beyond that they are just closed.
const MAX_REJECTING: usize = 256;

/// Accepts clients on `listeners` (and on the Unix socket `unix`, if any) until `shutdown`
/// fires or `stop_accepting` turns true.
pub async fn run(
    listeners: Vec<TcpListener>,
    unix: Option<UnixListening>,
    shared: Arc<Shared>,
    mut shutdown: Shutdown,
    mut stop_accepting: watch::Receiver<bool>,
    drain: DrainToken,
) {
    let max_clients = shared.config.load().general().max_client_conn as usize;
    let clients = Arc::new(Semaphore::new(max_clients));
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    tokio::spawn(upkeep(shared.clone(), shutdown.clone()));
    tokio::spawn(stats_period(shared.clone(), shutdown.clone()));
    shared.start_probes();
    let session_shutdown = shutdown.clone();
    let dispatch = |stream: Stream, peer: SocketAddr| {
        if let Some(tcp) = stream.tcp().filter(|_| shared.config.load().general().tcp_keepalive) {
            let _ = socket2::SockRef::from(tcp).set_keepalive(true);
        }
        match clients.clone().try_acquire_owned() {
            Ok(permit) => {
                let (shared, shutdown, drain) = (shared.clone(), session_shutdown.clone(), drain.clone());
                // The login runs in this task; a logged-in session gets a task of its own
                // (holding the permit until it ends).
                tokio::spawn(session::run(shared, stream, peer, shutdown, drain, permit));
            }
            // Full, but a connection has been logging in for a while (sockets that send
            // nothing): it makes room for this one.
            Err(_) if shared.logins.evict_oldest() => {
                let (shared, shutdown, drain, clients) =
                    (shared.clone(), session_shutdown.clone(), drain.clone(), clients.clone());
                tokio::spawn(async move {
                    let wait = tokio::time::timeout(Duration::from_secs(2), clients.acquire_owned()).await;
                    match wait {
                        Ok(Ok(permit)) => session::run(shared, stream, peer, shutdown, drain, permit).await,
                        _ => reject(&shared, stream, peer).await,
                    }
                });
            }
            Err(_) => {
                if let Ok(p) = rejecting.clone().try_acquire_owned() {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        reject(&shared, stream, peer).await;
                        drop(p);
                    });
                }
            }
        }
    };
    // The first listener with a connection waiting (each registers its waker when pending).
    let accept_tcp = || {
        std::future::poll_fn(|cx| {
            for l in &listeners {
                if let Poll::Ready(r) = l.poll_accept(cx) {
                    return Poll::Ready(r);
                }
            }
            Poll::Pending
        })
    };
    let accept_unix = || async {
        match &unix {
            Some(u) => u.listener.accept().await.map(|(s, _)| s),
            None => std::future::pending().await,
        }
    };
    loop {
        let accepted = tokio::select! {
            r = accept_tcp() => r.map(|(tcp, peer)| (Stream::Plain(tcp), peer)),
            r = accept_unix() => r.map(|u| (Stream::Unix(Box::new(u)), UNIX_PEER)),
            _ = shutdown.wait() => break,
            _ = async { drop(stop_accepting.wait_for(|&v| v).await) } => {
                // Online restart: connections the kernel already queued on this socket would
                // be reset when it closes; serve them first (new ones go to the other
                // SO_REUSEPORT listener).
                let mut n = 0;
                for listener in &listeners {
                    while let Poll::Ready(Ok((tcp, peer))) =
                        std::future::poll_fn(|cx| Poll::Ready(listener.poll_accept(cx))).await
                    {
                        dispatch(Stream::Plain(tcp), peer);
                        n += 1;
                    }
                }
                if n > 0 {
                    tracing::info!(connections = n, "served the connections queued before the listener closed");
                }
                break;
            }
        };
        match accepted {
            Ok((stream, peer)) => dispatch(stream, peer),
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    if let Some(u) = &unix {
        u.remove();
    }
    tracing::info!("listener stopped");
}

/// Answers a connection over `max_client_conn` with `53300` once it has sent its startup
/// packet (answering an SSLRequest with `N` first), so the client sees a clear error. A
/// CancelRequest is still honoured (as in PgBouncer, it is not a client).
async fn reject(shared: &Shared, mut tcp: Stream, peer: SocketAddr) {
    let mut err = BytesMut::new();
    ClientError::fatal("53300", "no more connections allowed (max_client_conn)", ErrorSource::Internal)
        .encode(&mut err);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = BytesMut::with_capacity(256);
        for _ in 0..3 {
            let pkt = match read_startup_packet(&mut tcp, &mut buf).await {
                Ok(p) => p,
                Err(ReadError::Io(e)) => return Err(e),
                Err(ReadError::Closed) => return Ok(()),
                Err(ReadError::Protocol(_)) => break,
            };
            match parse_startup(&pkt) {
                Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => tcp.write_all(b"N").await?,
                Ok(StartupPacket::CancelRequest { pid, secret }) => {
                    shared.cancel_request(pid, secret).await;
                    return Ok(());
                }
                _ => break,
            }
        }
        tracing::warn!(%peer, "max_client_conn reached, rejecting client");
        tcp.write_all(&err).await?;
        tcp.shutdown().await
    })
    .await;
}

/// Every `stats_period`: the per-database averages of `SHOW STATS`, and the `log_stats` line.
async fn stats_period(shared: Arc<Shared>, mut shutdown: Shutdown) {
    let mut last = shared.totals_by_database();
    let mut last_at = tokio::time::Instant::now();
    loop {
        let period = shared.config.load().general().stats_period.0;
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.wait() => return,
        }
        let now = tokio::time::Instant::now();
        let totals = shared.totals_by_database();
        let elapsed = now - last_at;
        let mut sum = crate::stats::Totals::default();
        let mut averages = std::collections::HashMap::new();
        for (db, t) in &totals {
            let delta = last.get(db).map_or(*t, |l| t.since(l));
            sum += delta;
            averages.insert(db.clone(), delta.averages_over(elapsed));
        }
        *shared.averages.lock() = averages;
        if shared.config.load().general().log_stats {
            let a = sum.averages_over(elapsed);
            tracing::info!(
                target: "pgsluice::stats",
                "stats: {} xacts/s, {} queries/s, {} client parses/s, {} server parses/s, {} binds/s, in {} B/s, out {} B/s, xact {} us, query {} us, wait {} us",
                a.xact_count, a.query_count, a.client_parses, a.server_parses, a.binds, a.received, a.sent,
                a.xact_time, a.query_time, a.wait_time
            );
        }
        last = totals;
        last_at = now;
    }
}

/// Pool upkeep: idle/lifetime expiry, `min_pool_size`, `query_wait_timeout`, connect
/// retries for waiters. It goes on during a graceful stop (waiters still time out) and ends
/// when the stop has closed the pools.
async fn upkeep(shared: Arc<Shared>, shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pools = shared.pools.all();
        if shutdown.is_set() && pools.iter().all(|p| p.is_closed()) {
            return;
        }
        for pool in pools {
            pool.maintain();
        }
    }
}

/// A running pooler: its address and the means to stop it (used by `main`, `demo` and tests).
pub struct ServerHandle {
    /// Address the listener is bound to.
    pub addr: SocketAddr,
    /// Shared state.
    pub shared: Arc<Shared>,
    controller: ShutdownController,
    stop_accepting: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// Binds `shared`'s configured address (or `addr` if given) and starts accepting.
    pub async fn start(shared: Arc<Shared>, addr: Option<SocketAddr>) -> std::io::Result<ServerHandle> {
        let cfg = shared.config.load_full();
        let g = cfg.general();
        let wanted = match addr {
            Some(a) => vec![a],
            None => cfg.listen_all.clone(),
        };
        let mut listeners = Vec::with_capacity(wanted.len());
        for a in &wanted {
            match crate::net::bind(*a, g.so_reuseport) {
                Ok(l) => listeners.push(l),
                // `*` on a host without IPv6: IPv4 alone.
                Err(e) if a.ip().is_unspecified() && a.is_ipv6() && wanted.len() > 1 => {
                    tracing::warn!(addr = %a, error = %e, "cannot listen on IPv6; IPv4 only");
                }
                Err(e) => return Err(std::io::Error::new(e.kind(), format!("{a}: {e}"))),
            }
        }
        let addr = listeners[0].local_addr()?;
        let unix = if g.unix_socket_dir.is_empty() {
            None
        } else {
            let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
            let mode = crate::config::unix_socket_mode(g).map_err(invalid)?;
            let gid = match &g.unix_socket_group {
                Some(name) => Some(
                    crate::net::group_id(name)
                        .ok_or_else(|| invalid(format!("unix_socket_group {name:?}: no such group")))?,
                ),
                None => None,
            };
            let u = crate::net::bind_unix(&g.unix_socket_dir, addr.port(), mode, gid, g.so_reuseport)?;
            tracing::info!(path = %u.path.display(), "listening on a Unix socket");
            Some(u)
        };
        Ok(ServerHandle::spawn(shared, addr, listeners, unix))
    }

    /// Starts accepting on listening sockets the service manager handed over (socket
    /// activation) instead of binding `listen_addr` and `unix_socket_dir`. `tcp` must not be
    /// empty. Must run inside a Tokio runtime.
    pub fn start_inherited(
        shared: Arc<Shared>,
        tcp: Vec<std::net::TcpListener>,
        unix: Option<std::os::unix::net::UnixListener>,
    ) -> std::io::Result<ServerHandle> {
        if tcp.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no TCP socket for clients"));
        }
        let mut listeners = Vec::with_capacity(tcp.len());
        for l in tcp {
            l.set_nonblocking(true)?;
            let l = TcpListener::from_std(l)?;
            tracing::info!(addr = %l.local_addr()?, "listening on a socket from the service manager");
            listeners.push(l);
        }
        let unix = match unix {
            Some(u) => {
                let u = UnixListening::inherited(u)?;
                tracing::info!(path = %u.path.display(), "listening on a Unix socket from the service manager");
                Some(u)
            }
            None => None,
        };
        let addr = listeners[0].local_addr()?;
        Ok(ServerHandle::spawn(shared, addr, listeners, unix))
    }

    /// Spawns the accept loop over bound `listeners`, the first of which is at `addr`.
    fn spawn(
        shared: Arc<Shared>,
        addr: SocketAddr,
        listeners: Vec<TcpListener>,
        unix: Option<UnixListening>,
    ) -> ServerHandle {
        let controller = ShutdownController::new();
        let (stop_accepting, accept_rx) = watch::channel(false);
        let task =
            tokio::spawn(run(listeners, unix, shared.clone(), controller.subscribe(), accept_rx, controller.token()));
        ServerHandle { addr, shared, controller, stop_accepting, task }
    }

    /// Stops as `mode` says (PgBouncer's `SHUTDOWN` variants). Returns whether every session
    /// ended on its own (for `Immediate`: whether there were none).
    /// - `WaitForServers`: stop accepting; idle clients are closed at once, the others when
    ///   their transaction ends, within `timeout`.
    /// - `WaitForClients`: stop accepting; clients go on until they disconnect (no limit:
    ///   send a second signal, or `SHUTDOWN`, to cut it short).
    /// - `Immediate`: close everything now.
    pub async fn stop(mut self, mode: StopMode, timeout: Duration) -> bool {
        match mode {
            StopMode::WaitForServers => self.shutdown(timeout).await,
            StopMode::Immediate => {
                self.trigger();
                let _ = self.stop_accepting.send(true);
                let idle = self.shared.clients.is_empty();
                self.close_pools();
                idle
            }
            StopMode::WaitForClients => {
                let _ = self.stop_accepting.send(true);
                let _ = (&mut self.task).await;
                tracing::info!(
                    clients = self.shared.clients.len(),
                    "not accepting connections; waiting for clients to disconnect"
                );
                self.controller.wait_drained().await;
                self.trigger();
                self.close_pools();
                true
            }
        }
    }

    /// Flips the stop signal and wakes every session to look at it.
    fn trigger(&self) {
        self.controller.trigger();
        self.shared.clients.wake_all();
    }

    fn close_pools(&self) {
        self.shared.stop_probes();
        for pool in self.shared.pools.all() {
            pool.close();
        }
    }

    /// Graceful stop: stop accepting, let running transactions finish (at most `timeout`),
    /// close pools. Returns whether every session finished in time.
    pub async fn shutdown(self, timeout: Duration) -> bool {
        let ServerHandle { shared, controller, task, stop_accepting, .. } = self;
        // The listener first serves what the kernel already queued (online restart), then
        // the sessions are told to stop.
        let _ = stop_accepting.send(true);
        let _ = task.await;
        controller.trigger();
        shared.clients.wake_all();
        let finished = tokio::time::timeout(timeout, controller.drain()).await.is_ok();
        shared.stop_probes();
        for pool in shared.pools.all() {
            pool.close();
        }
        finished
    }
}
