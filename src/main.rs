//! The `pgsluice` binary: CLI parsing, logging setup, the Tokio runtime, signal handling and
//! graceful shutdown. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use pgsluice::config::Config;
use pgsluice::server::ServerHandle;
use pgsluice::shared::Shared;

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
    /// Start a throw-away local PostgreSQL cluster and serve it on a port until Ctrl-C.
    Demo {
        /// Port for pgsluice.
        #[arg(long, default_value_t = 6432)]
        port: u16,
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

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
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
            eprintln!(
                "{}: OK ({} databases, {} users in auth_file)",
                file.display(),
                cfg.databases.len(),
                cfg.users.len()
            );
            Ok(())
        }
        Some(Command::Demo { port }) => {
            init_tracing();
            let rt = runtime(0)?;
            Ok(rt.block_on(pgsluice::demo::run(port))?)
        }
        None => {
            let cfg = Config::load(&cli.config)?;
            init_tracing();
            let rt = runtime(cfg.general().worker_threads)?;
            rt.block_on(serve(cfg))
        }
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let timeout = cfg.general().shutdown_timeout.0;
    let listen = cfg.listen;
    let shared = Shared::new(cfg);
    let handle = ServerHandle::start(shared, None).await.with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(addr = %handle.addr, version = env!("CARGO_PKG_VERSION"), "pgsluice listening");
    pgsluice::shutdown::wait_for_signal().await;
    tracing::info!("shutting down: waiting for running transactions (at most {timeout:?}; signal again to stop now)");
    tokio::select! {
        finished = handle.shutdown(timeout) => {
            if !finished {
                tracing::warn!("shutdown_timeout passed; closing remaining connections");
            }
        }
        _ = pgsluice::shutdown::wait_for_signal() => tracing::warn!("second signal: closing all connections now"),
    }
    Ok(())
}
