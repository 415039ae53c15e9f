//! The `pgsluice` binary: CLI parsing, logging setup (text or JSON), the Tokio runtime,
//! signal handling (SIGHUP reload; SIGUSR1 / SIGUSR2 pause / resume; SIGINT, SIGTERM, SIGQUIT
//! and admin `SHUTDOWN` stop modes, a second stop request is immediate), the metrics
//! endpoint, and systemd (`READY=1`, `RELOADING=1`, `STOPPING=1`, the watchdog, socket
//! activation; see [`pgsluice::systemd`]). Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use pgsluice::config::{Config, LogFormat};
use pgsluice::server::ServerHandle;
use pgsluice::shared::Shared;
use pgsluice::shutdown::{Signal, Signals, StopMode};
use pgsluice::systemd::{Activation, Notifier, SystemdEnv};

#[derive(Parser)]
#[command(name = "pgsluice", version, about = "PostgreSQL connection pooler")]
struct Cli {
    /// Config file to serve with.
    #[arg(short, long, default_value = "config/pgsluice.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file and print the effective configuration (exit 1 on error).
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Write a pgsluice config equivalent to a pgbouncer.ini (docs/migrating-from-pgbouncer.md).
    /// Exit 0: everything imported; 2: written, but some settings were not imported (listed on
    /// stderr with the reason); 1: error.
    ImportPgbouncer {
        /// The pgbouncer.ini to read (its %include files are followed).
        ini: PathBuf,
        /// auth_file to use instead of the ini's auth_file.
        #[arg(long)]
        userlist: Option<PathBuf>,
        /// Where to write the TOML (default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Start a throw-away local PostgreSQL cluster and serve it on a port until Ctrl-C.
    Demo {
        /// Port for pgsluice.
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// Servers that accept only TLS (a CA made at start); pgsluice verifies them.
        #[arg(long)]
        tls: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgsluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// stderr for text logs, one line per event: a line break inside an event (a user name or
/// startup parameter chosen by a client, quoted in a message) is written as `\n` / `\r`,
/// so nobody can forge a log line.
struct OneLinePerEvent;

impl std::io::Write for OneLinePerEvent {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter hands over one whole event, ending with its own line break.
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(b) => (b, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        if !body.iter().any(|&b| b == b'\n' || b == b'\r') {
            std::io::stderr().write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 8);
        for &b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b => out.push(b),
            }
        }
        out.extend_from_slice(end);
        std::io::stderr().write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        // (JSON escapes line breaks itself.)
        LogFormat::Text => {
            fmt.with_writer(|| OneLinePerEvent).with_target(false).with_ansi(std::io::stderr().is_terminal()).init()
        }
        // One object per line; the fields of the client span (its id, db, user) on every line
        // logged inside it.
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
    }
}

fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        b.worker_threads(workers);
    }
    b.enable_all().thread_name("pgsluice-worker").build().context("cannot start the runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::CheckConfig { file }) => {
            let cfg = Config::load(&file)?;
            print!("{}", cfg.to_toml());
            for w in cfg.general().warnings() {
                eprintln!("{}: warning: {w}", file.display());
            }
            eprintln!(
                "{}: OK ({} databases, {} users in auth_file)",
                file.display(),
                cfg.databases.len(),
                cfg.users.len()
            );
            Ok(())
        }
        Some(Command::ImportPgbouncer { ini, userlist, output }) => {
            std::process::exit(pgsluice::import::run(&ini, userlist.as_deref(), output.as_deref()))
        }
        Some(Command::Demo { port, tls }) => {
            init_tracing(LogFormat::Text);
            let rt = runtime(0)?;
            Ok(rt.block_on(pgsluice::demo::run(port, tls))?)
        }
        None => {
            // Still one thread: read (and clear) the service manager's variables now.
            let sd = SystemdEnv::take()?;
            let cfg = Config::load(&cli.config)?;
            init_tracing(cfg.general().log_format);
            for w in cfg.general().warnings() {
                tracing::warn!("{w}");
            }
            let activation = Activation::take(&sd.listen)?;
            let rt = runtime(cfg.general().worker_threads)?;
            rt.block_on(serve(cfg, sd, activation))
        }
    }
}

async fn serve(cfg: Config, sd: SystemdEnv, activation: Option<Activation>) -> anyhow::Result<()> {
    let listen = cfg.listen;
    let metrics_addr = cfg.file.metrics.listen_addr.clone();
    let shared = Shared::new(cfg);
    let mut signals = Signals::new();
    let notifier = std::sync::Arc::new(sd.notifier());
    let (handle, metrics_listener) = match activation {
        Some(a) => {
            tracing::info!("socket activation: serving the service manager's sockets instead of listen_addr");
            let handle = ServerHandle::start_inherited(shared.clone(), a.clients, a.unix)
                .context("cannot use the sockets from the service manager")?;
            (handle, a.metrics)
        }
        None => {
            let handle = ServerHandle::start(shared.clone(), None)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            (handle, None)
        }
    };
    if let Some(l) = metrics_listener {
        l.set_nonblocking(true).context("metrics socket")?;
        let l = tokio::net::TcpListener::from_std(l).context("metrics socket")?;
        let bound = pgsluice::metrics::serve_on(shared.clone(), l).context("metrics socket")?;
        tracing::info!(addr = %bound, "metrics endpoint listening on a socket from the service manager");
    } else if !metrics_addr.is_empty() {
        let addr = metrics_addr.parse().with_context(|| format!("[metrics] listen_addr {metrics_addr}"))?;
        let bound = pgsluice::metrics::serve(shared.clone(), addr)
            .await
            .with_context(|| format!("cannot listen on {metrics_addr} for /metrics"))?;
        tracing::info!(addr = %bound, "metrics endpoint listening");
    }
    tracing::info!(addr = %handle.addr, version = env!("CARGO_PKG_VERSION"), pid = std::process::id(), "pgsluice listening");
    // Every listener is bound (connections queue in the kernel from here on).
    notifier.ready(&format!("serving on {}", handle.addr));
    if let Some(timeout) = sd.watchdog.filter(|_| notifier.is_enabled()) {
        tokio::spawn(watchdog(notifier.clone(), timeout));
    }
    let mut requests = shared.take_stop_requests().context("stop requests already taken")?;
    let mode = loop {
        tokio::select! {
            s = signals.recv() => match s {
                Signal::Reload => reload(&shared, &notifier),
                Signal::Pause => pause(&shared, true),
                Signal::Resume => pause(&shared, false),
                Signal::Stop(m) => break m,
            },
            Some(m) = requests.recv() => break m,
        }
    };
    let timeout = shared.config.load().general().shutdown_timeout.0;
    match mode {
        StopMode::WaitForServers => tracing::info!(
            "shutting down: clients are closed as their transactions end (at most {timeout:?}; signal again to stop now)"
        ),
        StopMode::WaitForClients => {
            tracing::info!("shutting down: waiting for all clients to disconnect (signal again to stop now)")
        }
        StopMode::Immediate => tracing::info!("shutting down now"),
    }
    notifier.stopping(match mode {
        StopMode::WaitForServers => "stopping: closing clients as their transactions end",
        StopMode::WaitForClients => "stopping: waiting for clients to disconnect",
        StopMode::Immediate => "stopping now",
    });
    let stopping = handle.stop(mode, timeout);
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            finished = &mut stopping => {
                if !finished && mode == StopMode::WaitForServers {
                    tracing::warn!("shutdown_timeout passed; closing remaining connections");
                }
                break;
            }
            s = signals.recv() => match s {
                // (No RELOADING=1 / READY=1 while stopping: READY=1 would read as started.)
                Signal::Reload => reload(&shared, &Notifier::disabled()),
                Signal::Pause | Signal::Resume => {}
                Signal::Stop(_) => {
                    tracing::warn!("second stop signal: closing all connections now");
                    break;
                }
            },
            Some(m) = requests.recv() => {
                if m == StopMode::Immediate {
                    tracing::warn!("SHUTDOWN: closing all connections now");
                    break;
                }
            }
        }
    }
    tracing::info!("pgsluice stopped");
    Ok(())
}

/// SIGUSR1 / SIGUSR2: PAUSE / RESUME every database.
fn pause(shared: &Shared, on: bool) {
    if on {
        tracing::info!("got SIGUSR1, pausing all databases");
        pgsluice::admin::control::pause_all(shared);
    } else {
        tracing::info!("got SIGUSR2, resuming all databases");
        pgsluice::admin::control::resume_all(shared);
    }
}

/// SIGHUP: reload, or keep the running config and log why not. The service manager sees
/// `RELOADING=1` before and `READY=1` after, also when the reload failed (the process goes on
/// serving with its running configuration; the status line says so).
fn reload(shared: &std::sync::Arc<Shared>, notifier: &Notifier) {
    tracing::info!("got SIGHUP, re-reading config");
    notifier.reloading();
    let status = match pgsluice::reload::reload(shared) {
        Ok(_) => "serving; configuration reloaded".to_string(),
        Err(e) => {
            tracing::error!(error = %e, "reload failed; keeping the running configuration");
            format!("serving; reload failed, running configuration kept: {e}")
        }
    };
    notifier.ready(&status);
}

/// `WatchdogSec=`: a keep-alive at half the timeout, from a task on the runtime (so a stuck
/// runtime misses it and systemd restarts the service). Runs until the process exits.
async fn watchdog(notifier: std::sync::Arc<Notifier>, timeout: std::time::Duration) {
    tracing::info!(timeout = ?timeout, "systemd watchdog enabled");
    let mut tick = tokio::time::interval(timeout / 2);
    loop {
        tick.tick().await;
        notifier.watchdog();
    }
}
