//! Graceful-stop signalling. `main` flips one `watch` channel; every task holds a
//! [`Shutdown`] and a [`DrainToken`]. The listener stops accepting, idle sessions close at
//! once, sessions inside a transaction close right after it ends, and `main` waits (bounded
//! by `shutdown_timeout`) until every `DrainToken` is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

/// How `SHUTDOWN` stops the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Close everything now (`SHUTDOWN`; a second signal).
    Immediate,
    /// Stop accepting; each client is closed once its transaction ends (`SHUTDOWN
    /// WAIT_FOR_SERVERS`; SIGINT).
    WaitForServers,
    /// Stop accepting; existing clients go on until they disconnect (`SHUTDOWN
    /// WAIT_FOR_CLIENTS`; SIGTERM).
    WaitForClients,
}

/// Receives the stop signal.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
    /// The same signal as a flag: sessions look at it on every poll, and reading it must
    /// not write a shared cache line (the channel's read lock would).
    flag: Arc<AtomicBool>,
}

impl Shutdown {
    /// Whether the stop was requested.
    #[inline]
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Resolves once the stop is requested.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn wait(&mut self) {
        if self.rx.wait_for(|&v| v).await.is_err() {
            // The controller is gone without a stop: never resolve (callers may poll this
            // future again until `is_set()`, which must not see it completed).
            std::future::pending::<()>().await;
        }
    }
}

/// Held by each running task; the drain finishes when all are dropped.
#[derive(Clone)]
pub struct DrainToken {
    _tx: mpsc::Sender<()>,
}

/// The controlling side: trigger the stop and wait for the drain.
pub struct ShutdownController {
    tx: watch::Sender<bool>,
    flag: Arc<AtomicBool>,
    drain_tx: Option<mpsc::Sender<()>>,
    drain_rx: mpsc::Receiver<()>,
}

impl Default for ShutdownController {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownController {
    /// A controller with the stop not yet requested.
    pub fn new() -> ShutdownController {
        let (tx, _) = watch::channel(false);
        let (drain_tx, drain_rx) = mpsc::channel(1);
        ShutdownController { tx, flag: Arc::default(), drain_tx: Some(drain_tx), drain_rx }
    }

    /// A receiver of the stop signal.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown { rx: self.tx.subscribe(), flag: self.flag.clone() }
    }

    /// A token that keeps the drain open while held.
    pub fn token(&self) -> DrainToken {
        DrainToken { _tx: self.drain_tx.clone().expect("token() called after drain()") }
    }

    /// Requests the stop.
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::Release);
        let _ = self.tx.send(true);
    }

    /// Requests the stop and waits until every token is dropped.
    pub async fn drain(mut self) {
        self.trigger();
        self.wait_drained().await;
    }

    /// Waits until every token is dropped, without requesting the stop (sessions end when
    /// their clients leave: `SHUTDOWN WAIT_FOR_CLIENTS`). No new token can be made after.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn wait_drained(&mut self) {
        self.drain_tx = None;
        let _ = self.drain_rx.recv().await;
    }
}

/// What a process signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: reload the config.
    Reload,
    /// SIGUSR1: `PAUSE` (every database; returns at once).
    Pause,
    /// SIGUSR2: `RESUME`.
    Resume,
    /// SIGINT / SIGTERM: stop (in this mode, or at once if a stop is already under way).
    Stop(StopMode),
}

/// The process signals pgsluice handles (PgBouncer's meanings: SIGHUP reload, SIGINT
/// `SHUTDOWN WAIT_FOR_SERVERS`, SIGTERM `SHUTDOWN WAIT_FOR_CLIENTS`, SIGQUIT immediate,
/// SIGUSR1 `PAUSE`, SIGUSR2 `RESUME`).
pub struct Signals {
    #[cfg(unix)]
    inner: Option<[tokio::signal::unix::Signal; 6]>,
}

impl Signals {
    /// Installs the handlers (inside the runtime).
    pub fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let all = (|| {
                Some([
                    signal(SignalKind::hangup()).ok()?,
                    signal(SignalKind::interrupt()).ok()?,
                    signal(SignalKind::terminate()).ok()?,
                    signal(SignalKind::quit()).ok()?,
                    signal(SignalKind::user_defined1()).ok()?,
                    signal(SignalKind::user_defined2()).ok()?,
                ])
            })();
            Signals { inner: all }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next signal.
    ///
    /// # Cancel safety
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Signal {
        #[cfg(unix)]
        if let Some([hup, int, term, quit, usr1, usr2]) = self.inner.as_mut() {
            return tokio::select! {
                _ = hup.recv() => Signal::Reload,
                _ = usr1.recv() => Signal::Pause,
                _ = usr2.recv() => Signal::Resume,
                _ = int.recv() => Signal::Stop(StopMode::WaitForServers),
                _ = term.recv() => Signal::Stop(StopMode::WaitForClients),
                _ = quit.recv() => Signal::Stop(StopMode::Immediate),
            };
        }
        let _ = tokio::signal::ctrl_c().await;
        Signal::Stop(StopMode::WaitForServers)
    }
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolves on SIGINT or SIGTERM (Ctrl-C elsewhere).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
