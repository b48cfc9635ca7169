//! voxgate as a long-running service: the runtime, the listeners, and what an operator or
//! a service manager does to a running process.
//!
//! - `SIGHUP`, `POST /reload` on the admin listener, and (with `watch_config`) a change to
//!   the file reload the configuration ([`crate::gateway::reload`]);
//! - `SIGTERM`/`SIGINT` stop accepting and let requests in flight finish (`shutdown_grace`);
//! - systemd hears of all of it ([`notify`]): `READY=1`, `RELOADING=1`, `STOPPING=1`,
//!   `WATCHDOG=1`, `STATUS=`;
//! - `--pid-file` names the process for `voxgate reload --pid-file` ([`control`]).

pub mod control;
pub mod notify;
pub mod watch;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};
use crate::gateway::reload::{ReloadEvent, Source};
use crate::gateway::Gateway;
use crate::service::notify::Notifier;

/// How the daemon was started, beyond its configuration.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Where the configuration came from, for reloads.
    pub source: Source,
    /// Written with the process id once the listeners are bound; removed on exit.
    pub pid_file: Option<PathBuf>,
}

/// Runs voxgate on `config` until SIGINT or SIGTERM.
pub fn run(config: Config, options: Options) -> anyhow::Result<()> {
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
    // Blocking threads read and write spilled request bodies and load reloaded
    // configurations: a few are plenty, and each one left idle after a burst of uploads
    // keeps memory.
    builder
        .enable_all()
        .max_blocking_threads(8)
        .build()
        .context("cannot start the runtime")?
        .block_on(serve(config, threads, options))
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

/// `server.threads`, or as many as the cores this process may run on (its CPU affinity
/// and cgroup quota, as `taskset` and container limits set them).
fn runtime_threads(config: &Config) -> usize {
    match config.server.threads {
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    }
}

fn log_upstreams(config: &Config) {
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
    // With client keys, the key a client presents is one of voxgate's own: passing it on
    // hands it to the upstream.
    if !config.clients.is_empty() {
        for u in config
            .upstreams
            .iter()
            .filter(|u| u.api_key.is_none() && u.pass_client_key)
        {
            tracing::warn!(
                upstream = %u.name,
                "[[clients]] is set and this upstream has pass_client_key = true without an api_key: clients' voxgate keys will be sent to it"
            );
        }
    }
    for u in config.upstreams.iter().filter(|u| !u.tls_verify) {
        tracing::warn!(upstream = %u.name, "TLS certificate verification is OFF for this upstream (tls_verify = false)");
    }
}

/// A one-line summary for systemd's `STATUS=`.
fn summary(gateway: &Gateway) -> String {
    let runtime = gateway.runtime();
    let config = &runtime.config;
    let mut line = format!(
        "serving {} route(s) over {} upstream(s) on {}",
        config.routes.len(),
        config.upstreams.len(),
        config.server.listen
    );
    if let Some((_, error)) = gateway.reloads().history().last_error {
        let first = error.lines().next().unwrap_or_default().to_string();
        line.push_str(&format!("; last reload FAILED: {first}"));
    }
    line
}

/// Writes the pid file, and removes it when dropped.
struct PidFile(PathBuf);

impl PidFile {
    fn create(path: PathBuf) -> anyhow::Result<PidFile> {
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn serve(config: Config, threads: usize, options: Options) -> anyhow::Result<()> {
    init_logging(config.log.format);
    // Before anything says voxgate is up: SIGHUP's default action ends the process.
    let hangups = hangups();
    let notifier = Arc::new(Notifier::from_env().context("cannot use $NOTIFY_SOCKET")?);
    let listen = config.server.listen;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let admin = match config.server.admin_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin)"))?,
        ),
        None => None,
    };
    log_upstreams(&config);
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let routes = config.routes.len();
    let watch_config = config.server.watch_config;
    let gateway = Arc::new(Gateway::from_source(config, options.source.clone()));
    let _pid_file = options.pid_file.map(PidFile::create).transpose()?;
    {
        let notifier = notifier.clone();
        let gateway = Arc::downgrade(&gateway);
        gateway_hook(&gateway, move |event, gateway| match event {
            ReloadEvent::Started => notifier.reloading(),
            ReloadEvent::Finished(_) => notifier.ready(&summary(gateway)),
        });
    }
    let _watcher = match (&options.source.path, watch_config) {
        (Some(path), true) => match watch::watch(path, gateway.clone()) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the configuration file; SIGHUP still reloads it");
                None
            }
        },
        _ => None,
    };
    let watchdog = notify::watchdog_interval().map(|every| {
        let notifier = notifier.clone();
        tokio::spawn(async move {
            // On the serving runtime: if it stops making progress, the pings stop too.
            // The first one after an interval, not at once: READY=1 goes first.
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                notifier.watchdog();
            }
        })
    });
    let reloads = tokio::spawn(reload_on_hangup(hangups, gateway.clone()));

    // One signal stops both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(());
    let stopped_when = |mut rx: tokio::sync::watch::Receiver<()>| async move {
        let _ = rx.changed().await;
    };
    let admin_address = admin.as_ref().map(TcpListener::local_addr).transpose()?;
    let admin_task = admin.map(|admin| {
        tokio::spawn(crate::server::run_admin(
            admin,
            gateway.clone(),
            stopped_when(stopped.clone()),
        ))
    });
    // Everything is in place (pid file, signal, watcher): now say so.
    tracing::info!(address = %listener.local_addr()?, scheme, routes, threads, "voxgate listening");
    if let Some(address) = admin_address {
        tracing::info!(%address, "admin endpoints listening");
    }
    notifier.ready(&summary(&gateway));
    let public = crate::server::run(listener, gateway, stopped_when(stopped));
    tokio::pin!(public);
    tokio::select! {
        () = &mut public => {}
        () = shutdown_signal() => {
            notifier.stopping();
            let _ = stop.send(());
            public.await;
        }
    }
    if let Some(task) = admin_task {
        let _ = task.await;
    }
    reloads.abort();
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    Ok(())
}

/// Sets the gateway's reload hook with a weak reference back to it (the gateway owns the
/// hook: a strong one would keep it alive forever).
fn gateway_hook(
    weak: &std::sync::Weak<Gateway>,
    hook: impl Fn(ReloadEvent<'_>, &Gateway) + Send + Sync + 'static,
) {
    let Some(gateway) = weak.upgrade() else {
        return;
    };
    let weak = weak.clone();
    gateway.on_reload(move |event| {
        if let Some(gateway) = weak.upgrade() {
            hook(event, &gateway);
        }
    });
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

/// SIGHUP, caught from now on.
fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot catch SIGHUP; reload with POST /reload");
                None
            }
        }
    }
    #[cfg(not(unix))]
    None
}

/// Reloads on every SIGHUP (systemd's `ExecReload=/bin/kill -HUP $MAINPID`, `docker kill
/// -s HUP`). Signals that come while a reload runs make one more reload after it.
async fn reload_on_hangup(hangups: Hangups, gateway: Arc<Gateway>) {
    #[cfg(unix)]
    if let Some(mut hangups) = hangups {
        while hangups.recv().await.is_some() {
            // The outcome is logged and kept for /status by the reload itself.
            let _ = gateway.reload("SIGHUP").await;
        }
    }
    #[cfg(not(unix))]
    let _ = (hangups, gateway);
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
