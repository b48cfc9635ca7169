//! Reloading: the configuration file read and compiled again, off the serving threads, and
//! swapped in whole; or, if anything in it is wrong, nothing changed at all.
//!
//! A request takes the compiled configuration ([`Runtime`]) it starts with and keeps it to
//! its end, stream included; the next request takes the new one. Upstreams whose definition
//! did not change are shared by both (connections, health checks, ejections go on); removed
//! ones are dropped with the last request that still uses the old configuration, which
//! closes their connections and stops their checks. What only a restart can change (the
//! listeners, the thread count, …) keeps its old value and is named in the log.
//!
//! Every reload — SIGHUP, the file watcher, `POST /reload` — goes through
//! [`Gateway::reload`], one at a time; the service layer hears of each one through the
//! hook it sets ([`Gateway::on_reload`]), which is how systemd is told `RELOADING=1`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use crate::config::Config;
use crate::gateway::{Gateway, Runtime};
use crate::request::replay::MemoryBudget;

/// Where the configuration comes from: what a reload reads again.
#[derive(Debug, Default, Clone)]
pub struct Source {
    /// The file; `None` for the built-in default, which has nothing to reload.
    pub path: Option<PathBuf>,
    /// `--listen` from the command line, which overrides the file's `server.listen`.
    pub listen: Option<SocketAddr>,
}

impl Source {
    /// Reads, validates and completes the configuration (blocking: files are read).
    pub fn load(&self) -> Result<Config, String> {
        let path = self.path.as_ref().ok_or_else(|| {
            "voxgate runs on its built-in default configuration: there is no file to reload"
                .to_string()
        })?;
        let mut config = Config::load(path).map_err(|e| e.to_string())?;
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        Ok(config)
    }
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Upstreams defined as before: same connections, health and ejections.
    pub kept: Vec<String>,
    /// Upstreams whose definition changed: new connections, endpoint health carried over.
    pub changed: Vec<String>,
    pub added: Vec<String>,
    /// Drained: closed once the requests that still use them are over.
    pub removed: Vec<String>,
    /// Settings that differ in the file but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |names: &[String]| {
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        write!(
            f,
            "upstreams kept: {}; changed: {}; added: {}; removed: {}",
            list(&self.kept),
            list(&self.changed),
            list(&self.added),
            list(&self.removed)
        )?;
        if !self.needs_restart.is_empty() {
            write!(f, "; needs a restart: {}", self.needs_restart.join(", "))?;
        }
        Ok(())
    }
}

/// A reload as the hook hears of it.
pub enum ReloadEvent<'a> {
    Started,
    Finished(&'a Result<Reloaded, String>),
}

type Hook = Box<dyn Fn(ReloadEvent<'_>) + Send + Sync>;

/// The configuration's origin and the history of its reloads, for `/status` and metrics.
pub struct Reloads {
    source: Source,
    state: Mutex<History>,
    /// One reload at a time.
    turn: tokio::sync::Mutex<()>,
    hook: OnceLock<Hook>,
}

impl std::fmt::Debug for Reloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloads")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// How reloads went so far.
#[derive(Debug, Clone)]
pub struct History {
    /// When the configuration serving now was loaded.
    pub loaded_at: SystemTime,
    pub succeeded: u64,
    pub failed: u64,
    /// The last failed reload, if it came after the last good one.
    pub last_error: Option<(SystemTime, String)>,
}

impl Reloads {
    pub(crate) fn new(source: Source) -> Reloads {
        Reloads {
            source,
            state: Mutex::new(History {
                loaded_at: SystemTime::now(),
                succeeded: 0,
                failed: 0,
                last_error: None,
            }),
            turn: tokio::sync::Mutex::new(()),
            hook: OnceLock::new(),
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    pub fn history(&self) -> History {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        // Plain data: a panic elsewhere cannot leave it half-written.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Compiles `config` beside `old`, the runtime serving now, sharing what did not change.
fn compile(old: &Runtime, budget: Arc<MemoryBudget>, mut config: Config) -> (Runtime, Reloaded) {
    let needs_restart = restart_only(&old.config, &mut config);
    let runtime = Runtime::new(config, budget, Some(old));
    // What the runtime made of each upstream, read back from it: one that is the same
    // `Arc` as before was kept, one with an old namesake was rebuilt.
    let mut reloaded = Reloaded {
        needs_restart,
        ..Reloaded::default()
    };
    for u in &runtime.upstreams {
        let name = u.name().to_string();
        match old.upstreams.iter().find(|o| o.name() == name) {
            Some(o) if Arc::ptr_eq(o, u) => reloaded.kept.push(name),
            Some(_) => reloaded.changed.push(name),
            None => reloaded.added.push(name),
        }
    }
    reloaded.removed = old
        .upstreams
        .iter()
        .filter(|o| runtime.config.upstream_index(o.name()).is_none())
        .map(|o| o.name().to_string())
        .collect();
    (runtime, reloaded)
}

/// Settings read once, when the listeners and the runtime are set up.
fn restart_only(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut differ = Vec::new();
    let (o, n) = (&old.server, &mut new.server);
    macro_rules! keep {
        ($($field:ident).+, $name:literal) => {
            if o.$($field).+ != n.$($field).+ {
                differ.push($name);
                n.$($field).+ = o.$($field).+.clone();
            }
        };
    }
    keep!(listen, "server.listen");
    keep!(admin_listen, "server.admin_listen");
    keep!(threads, "server.threads");
    keep!(max_connections, "server.max_connections");
    keep!(header_read_timeout, "server.header_read_timeout");
    keep!(replay_memory_total, "server.replay_memory_total");
    keep!(watch_config, "server.watch_config");
    if old.log.format != new.log.format {
        differ.push("log.format");
        new.log.format = old.log.format;
    }
    differ
}

impl Gateway {
    /// How the configuration was loaded and reloaded.
    pub fn reloads(&self) -> &Reloads {
        &self.reloads
    }

    /// Sets the one hook told when a reload starts and ends (systemd's notifications).
    pub fn on_reload(&self, hook: impl Fn(ReloadEvent<'_>) + Send + Sync + 'static) {
        let _ = self.reloads.hook.set(Box::new(hook));
    }

    /// Reads the configuration from its source again and, if it is valid, serves it from
    /// the next request on. Reading, validating and compiling run on a blocking thread;
    /// the swap is one atomic store. On error nothing changes, and the error is kept for
    /// `/status`. `why` names the trigger in the log.
    pub async fn reload(&self, why: &str) -> Result<Reloaded, String> {
        let _turn = self.reloads.turn.lock().await;
        let hook = self.reloads.hook.get();
        if let Some(hook) = hook {
            hook(ReloadEvent::Started);
        }
        let source = self.reloads.source.clone();
        let old = self.runtime.load_full();
        let budget = self.budget.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            let config = source.load()?;
            Ok::<_, String>(compile(&old, budget, config))
        })
        .await
        .unwrap_or_else(|e| Err(format!("the reload stopped: {e}")));
        let result = compiled.map(|(runtime, reloaded)| {
            self.runtime.store(Arc::new(runtime));
            reloaded
        });
        self.record(why, &result);
        if let Some(hook) = hook {
            hook(ReloadEvent::Finished(&result));
        }
        result
    }

    fn record(&self, why: &str, result: &Result<Reloaded, String>) {
        let mut history = self.reloads.lock();
        let now = SystemTime::now();
        match result {
            Ok(reloaded) => {
                history.succeeded += 1;
                history.loaded_at = now;
                history.last_error = None;
                tracing::info!(trigger = why, "configuration reloaded: {reloaded}");
                if !reloaded.needs_restart.is_empty() {
                    tracing::warn!(
                        trigger = why,
                        "changed in the file but kept until a restart: {}",
                        reloaded.needs_restart.join(", ")
                    );
                }
            }
            Err(e) => {
                history.failed += 1;
                history.last_error = Some((now, e.clone()));
                tracing::error!(
                    trigger = why,
                    "configuration NOT reloaded; the previous one keeps serving:\n{e}"
                );
            }
        }
    }
}
