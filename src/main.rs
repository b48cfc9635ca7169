//! The `voxgate` binary: parse the command line, load the config, serve until a signal.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use voxgate::config::{Config, LogFormat, DEFAULT_TOML};
use voxgate::gateway::Gateway;

/// jemalloc instead of glibc's malloc: 9 % fewer instructions per small request (malloc
/// and free were a fifth of them), idle RSS 8.7 MiB, upload peaks no higher
/// (benches/README.md). Built from C by tikv-jemalloc-sys: needs gcc and make.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A routing, streaming, falling-back proxy for the OpenAI audio API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML). Without one, the built-in default is used.
    #[arg(long, short, env = "VOXGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on, overriding `server.listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration: exit 0, or print every error with file:line:col.
    Check,
    /// Print the built-in default configuration.
    PrintConfig,
}

fn load(path: Option<&PathBuf>) -> Result<Config, voxgate::config::ConfigError> {
    match path {
        Some(p) => Config::load(p),
        None => Config::builtin(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::PrintConfig) => {
            print!("{DEFAULT_TOML}");
            ExitCode::SUCCESS
        }
        Some(Command::Check) => match load(cli.config.as_ref()) {
            Ok(config) => {
                println!(
                    "ok: {} upstream(s), {} route(s)",
                    config.upstreams.len(),
                    config.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        None => match load(cli.config.as_ref()) {
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
            Ok(mut config) => {
                if let Some(listen) = cli.listen {
                    config.server.listen = listen;
                }
                match run(config) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("voxgate: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
        },
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let threads = runtime_threads(&config);
    // One thread gets tokio's current-thread scheduler: every task runs on the thread that
    // accepts, with no work-stealing queues and no wake-ups sent across threads. Pinned to
    // one core it served small requests with 5 % less CPU and a lower p99 than one worker
    // of the multi-thread scheduler (benches/README.md).
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    // Blocking threads only write and read spilled request bodies: a few are plenty, and
    // each one left idle after a burst of uploads keeps memory.
    builder
        .enable_all()
        .max_blocking_threads(8)
        .build()
        .context("cannot start the runtime")?
        .block_on(serve(config, threads))
}

/// `server.threads`, or as many as the cores this process may run on (its CPU affinity
/// and cgroup quota, as `taskset` and container limits set them).
fn runtime_threads(config: &Config) -> usize {
    match config.server.threads {
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    }
}

async fn serve(config: Config, threads: usize) -> anyhow::Result<()> {
    init_logging(config.log.format);
    let listen = config.server.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    for u in &config.upstreams {
        tracing::info!(
            upstream = %u.name,
            endpoints = %u.endpoints.iter().map(|e| e.url.to_string()).collect::<Vec<_>>().join(", "),
            health_check = u.health.as_ref().map(|h| format!("{} {} every {:?}", h.method, h.path, h.interval)),
            key = if u.api_key.is_some() { "configured" } else if u.pass_client_key { "client's" } else { "none" },
            "upstream"
        );
    }
    for u in &config.upstreams {
        if let Some(variable) = &u.api_key_unset {
            let sent = match u.pass_client_key {
                true => "the client's own Authorization header (no key if the client sends none)",
                false => "no key",
            };
            tracing::warn!(
                "{variable} is not set, so upstream `{}` has no api_key: it gets {sent}",
                u.name
            );
        }
    }
    for u in config.upstreams.iter().filter(|u| !u.tls_verify) {
        tracing::warn!(upstream = %u.name, "TLS certificate verification is OFF for this upstream (tls_verify = false)");
    }
    tracing::info!(address = %listener.local_addr()?, routes = config.routes.len(), threads, "voxgate listening");
    let admin = match config.server.admin_listen {
        Some(addr) => {
            let admin = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin)"))?;
            tracing::info!(address = %admin.local_addr()?, "admin endpoints listening");
            Some(admin)
        }
        None => None,
    };
    let gateway = Arc::new(Gateway::new(config));
    // One signal stops both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(());
    let stopped_when = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let admin_task = admin.map(|admin| {
        tokio::spawn(voxgate::server::run_admin(
            admin,
            gateway.clone(),
            stopped_when(stopped.clone()),
        ))
    });
    let public = voxgate::server::run(listener, gateway, stopped_when(stopped));
    tokio::pin!(public);
    tokio::select! {
        () = &mut public => {}
        () = shutdown_signal() => {
            let _ = stop.send(());
            public.await;
        }
    }
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
