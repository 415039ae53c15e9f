//! The listener: accepts connections, enforces `max_client_conn`, spawns one session task
//! per client, and runs pool upkeep once a second. Stops accepting on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::error::{ClientError, ErrorSource};
use crate::frontend::session;
use crate::net::{read_startup_packet, ReadError};
use crate::protocol::frontend::{parse_startup, StartupPacket};
use crate::shared::Shared;
use crate::shutdown::{DrainToken, Shutdown, ShutdownController};

/// Most connections being turned away at once; beyond that they are just closed.
const MAX_REJECTING: usize = 256;

/// Accepts clients on `listener` until `shutdown` fires.
pub async fn run(listener: TcpListener, shared: Arc<Shared>, mut shutdown: Shutdown, drain: DrainToken) {
    let max_clients = shared.config.load().general().max_client_conn as usize;
    let clients = Arc::new(Semaphore::new(max_clients));
    let rejecting = Arc::new(Semaphore::new(MAX_REJECTING));
    tokio::spawn(upkeep(shared.clone(), shutdown.clone()));
    shared.start_probes();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if shared.config.load().general().tcp_keepalive {
            let _ = socket2::SockRef::from(&tcp).set_keepalive(true);
        }
        match clients.clone().try_acquire_owned() {
            Ok(permit) => {
                let (shared, shutdown, drain) = (shared.clone(), shutdown.clone(), drain.clone());
                tokio::spawn(async move {
                    session::run(shared, tcp, peer, shutdown, drain).await;
                    drop(permit);
                });
            }
            Err(_) => {
                if let Ok(p) = rejecting.clone().try_acquire_owned() {
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        reject(&shared, tcp, peer).await;
                        drop(p);
                    });
                }
            }
        }
    }
    tracing::info!("listener stopped");
}

/// Answers a connection over `max_client_conn` with `53300` once it has sent its startup
/// packet (answering an SSLRequest with `N` first), so the client sees a clear error. A
/// CancelRequest is still honoured (as in PgBouncer, it is not a client).
async fn reject(shared: &Shared, mut tcp: TcpStream, peer: SocketAddr) {
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
                    shared.cancel.cancel(pid, secret).await;
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

/// Pool upkeep: idle/lifetime expiry and `min_pool_size`.
async fn upkeep(shared: Arc<Shared>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        for pool in shared.pools.all() {
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
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// Binds `shared`'s configured address (or `addr` if given) and starts accepting.
    pub async fn start(shared: Arc<Shared>, addr: Option<SocketAddr>) -> std::io::Result<ServerHandle> {
        let addr = addr.unwrap_or_else(|| shared.config.load().listen);
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let controller = ShutdownController::new();
        let task = tokio::spawn(run(listener, shared.clone(), controller.subscribe(), controller.token()));
        Ok(ServerHandle { addr, shared, controller, task })
    }

    /// Graceful stop: stop accepting, let running transactions finish (at most `timeout`),
    /// close pools. Returns whether every session finished in time.
    pub async fn shutdown(self, timeout: Duration) -> bool {
        let ServerHandle { shared, controller, task, .. } = self;
        controller.trigger();
        let _ = task.await;
        let finished = tokio::time::timeout(timeout, controller.drain()).await.is_ok();
        shared.stop_probes();
        for pool in shared.pools.all() {
            pool.close();
        }
        finished
    }
}
