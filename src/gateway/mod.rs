//! The gateway: one compiled configuration behind an atomic swap, and the request path
//! through it ([`phases`]: admit → classify → intake → route → forward → respond →
//! observe), with the admin endpoints ([`admin`], and the status page they feed,
//! [`ui`]), discovery ([`discovery`]) and the fallback loop ([`forward`]) it calls.
//!
//! Every refusal is a [`GatewayError`] with one status each; the phases use `?`, and the
//! end of the path turns what they stopped with into an OpenAI-shaped response.

pub mod admin;
pub mod classify;
pub mod discovery;
pub mod explain;
pub mod forward;
pub mod phases;
pub mod policy;
pub mod reload;
pub mod request_id;
pub mod respond;
pub mod ui;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Response, StatusCode};

use crate::body::ProxyBody;
use crate::config::Config;
use crate::error::ApiError;
use crate::gateway::forward::{Exhausted, RetryBudget};
use crate::request::intake::{IntakeError, IntakeLimits};
use crate::request::replay::{MemoryBudget, ReplayLimits};
use crate::route::{Operation, Router};
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::labels::LabelTable;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::observe::{Observers, Trace};
use crate::telemetry::recent_errors::RecentErrors;
use crate::upstream::Upstream;

/// Where a request came from, handed by the server to [`Gateway::handle`] with the request
/// (not in its extensions: the first extension costs a map allocation).
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// The client's address.
    pub peer: SocketAddr,
    pub listener: Listener,
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The API listener.
    Public,
    /// `server.admin_listen`: operational endpoints only.
    Admin,
}

/// Everything a request can be refused for, each with its one status.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("voxgate is overloaded: {0}; retry shortly")]
    Overloaded(&'static str),
    #[error("invalid request path `{0}`: dot segments and encoded separators are not allowed")]
    BadPath(String),
    #[error("unknown path `{0}`: voxgate serves the OpenAI API under /v1")]
    NotFound(String),
    #[error("{method} is not allowed on {path}; use POST")]
    MethodNotAllowed { method: Method, path: String },
    #[error(transparent)]
    Head(#[from] classify::HeadError),
    #[error(transparent)]
    Intake(#[from] IntakeError),
    #[error("no route for {endpoint} requests with model `{model}`")]
    NoRoute {
        endpoint: &'static str,
        model: String,
    },
    #[error("{}", .0.api_error().message)]
    Upstreams(Exhausted),
    #[error("{}", .0.api_error().message)]
    Policy(policy::Refusal),
}

impl GatewayError {
    pub fn api_error(&self) -> ApiError {
        let message = self.to_string();
        match self {
            GatewayError::Overloaded(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
                    .with_code("overloaded")
                    .with_retry_after(1)
            }
            GatewayError::BadPath(_) => ApiError::invalid_request(StatusCode::BAD_REQUEST, message),
            GatewayError::NotFound(_) => {
                ApiError::invalid_request(StatusCode::NOT_FOUND, message).with_code("unknown_url")
            }
            GatewayError::MethodNotAllowed { .. } => {
                ApiError::invalid_request(StatusCode::METHOD_NOT_ALLOWED, message)
            }
            GatewayError::Head(e) => e.api_error(),
            GatewayError::Intake(e) => e.api_error(),
            GatewayError::NoRoute { .. } => {
                ApiError::invalid_request(StatusCode::NOT_FOUND, message)
                    .with_param("model")
                    .with_code("no_route")
            }
            GatewayError::Upstreams(e) => e.api_error(),
            GatewayError::Policy(refusal) => refusal.api_error(),
        }
    }
}

/// What a phase hands on: its result to go on with, or how the request stops.
pub type Step<T> = Result<T, Stop>;

/// How a request ends before an upstream's answer is streamed to it. Kept small (a box
/// and a refusal): every phase's result carries it, and every hand-on is a copy.
pub enum Stop {
    /// voxgate's own response, whole (health, status, discovery, a converted answer).
    Answered(Box<Response<ProxyBody>>),
    /// A refusal, answered in OpenAI's error shape.
    Refused(GatewayError),
    /// An answer to stream that did not come from an upstream now: a cache hit, or the
    /// answer another identical request is fetching.
    Streamed(Box<Response<ProxyBody>>),
}

impl Stop {
    pub fn answered(response: Response<ProxyBody>) -> Stop {
        Stop::Answered(Box::new(response))
    }
}

impl From<GatewayError> for Stop {
    fn from(e: GatewayError) -> Stop {
        Stop::Refused(e)
    }
}

/// One request as it goes through the phases.
pub struct Context<'r> {
    pub runtime: &'r Runtime,
    pub listener: Listener,
    /// The request's id, sent upstream and back to the client.
    pub id: HeaderValue,
    /// What is known so far, for the observers.
    pub trace: Trace,
    /// Its client, what it took from the limits, what the cache made of it.
    pub admitted: policy::Admitted,
}

/// What [`Gateway::handle`] gives the server: the response, and whether the connection
/// closes after it because the request body was left unread (a close that should linger).
pub struct Handled {
    pub response: Response<ProxyBody>,
    pub closes: bool,
}

/// An API request, as classify found it.
#[derive(Debug, PartialEq, Eq)]
pub struct Api {
    pub operation: Operation,
    /// The path with `/v1` in front, as every upstream expects it.
    pub path: String,
}

/// voxgate's answer when it sheds load: 503 with `retry-after`, which the SDKs honour.
pub fn overloaded(what: &'static str) -> ApiError {
    GatewayError::Overloaded(what).api_error()
}

/// One configuration, compiled: routes and upstream clients.
#[derive(Debug)]
pub struct Runtime {
    pub config: Config,
    router: Router,
    /// Shared with the runtime before a reload where their definition did not change.
    upstreams: Vec<Arc<Upstream>>,
    limits: IntakeLimits,
    retry_budget: RetryBudget,
    /// The metrics' rows for this configuration, sharing the counters of the rows the
    /// previous one had with the same labels.
    labels: Arc<LabelTable>,
    /// Client keys, limits and the TTS cache.
    policy: policy::Policy,
}

impl Runtime {
    /// Compiles `config`. An upstream defined exactly as in `previous` is the same one
    /// (connections, health checks, ejections and all); a changed one is built anew but
    /// keeps what was known of each endpoint whose URL it still has.
    fn new(config: Config, budget: Arc<MemoryBudget>, previous: Option<&Runtime>) -> Runtime {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| {
                let old = previous.and_then(|p| p.upstreams.iter().find(|o| o.name() == u.name));
                match old {
                    Some(old) if old.config == *u => old.clone(),
                    _ => {
                        let new = Upstream::new(u.clone());
                        if let Some(old) = old {
                            new.pool.inherit(&old.pool);
                        }
                        Arc::new(new)
                    }
                }
            })
            .collect();
        let limits = IntakeLimits {
            max_body_bytes: config.server.max_body_bytes,
            max_json_bytes: config.server.max_json_bytes,
            idle_timeout: config.server.body_read_timeout,
            replay: ReplayLimits {
                memory_per_request: config.server.replay_memory_per_request,
                budget,
                spill_dir: config.server.spill_dir.clone(),
            },
        };
        let labels = Arc::new(LabelTable::compile(&config, previous.map(|p| &*p.labels)));
        Runtime {
            labels,
            policy: policy::Policy::compile(&config, previous.map(|p| &p.policy)),
            retry_budget: RetryBudget::new(
                config.server.retry_budget_percent,
                config.server.retry_budget_min,
            ),
            router: Router::new(config.routes.clone()),
            upstreams,
            limits,
            config,
        }
    }
}

/// The proxy: a compiled configuration behind an atomic swap, so a reload never blocks or
/// tears a request in flight.
#[derive(Debug)]
pub struct Gateway {
    runtime: ArcSwap<Runtime>,
    budget: Arc<MemoryBudget>,
    /// Requests between arrival and their response headers.
    in_flight: AtomicUsize,
    /// Told about every request when its response is over.
    observers: Arc<Observers>,
    /// The second observer, read again by `/metrics`.
    metrics: Arc<Metrics>,
    /// The third, read again by `/status` (the status page's recent errors).
    recent_errors: Arc<RecentErrors>,
    /// Where the configuration came from, and how its reloads went.
    reloads: reload::Reloads,
}

impl Gateway {
    /// A gateway on `config`, which was not read from a file (tests, the built-in default).
    pub fn new(config: Config) -> Gateway {
        Gateway::from_source(config, reload::Source::default())
    }

    /// A gateway on `config`, read from `source`: a reload reads it from there again.
    pub fn from_source(config: Config, source: reload::Source) -> Gateway {
        let budget = Arc::new(MemoryBudget::new(config.server.replay_memory_total));
        let metrics = Arc::new(Metrics::new());
        let recent_errors = Arc::new(RecentErrors::new());
        Gateway {
            runtime: ArcSwap::from_pointee(Runtime::new(config, budget.clone(), None)),
            budget,
            in_flight: AtomicUsize::new(0),
            observers: Arc::new(Observers::new(vec![
                Box::new(AccessLog),
                Box::new(metrics.clone()),
                Box::new(recent_errors.clone()),
            ])),
            metrics,
            recent_errors,
            reloads: reload::Reloads::new(source),
        }
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// `f` of the `[server]` settings serving now, without taking a counted reference:
    /// for what the accept loop reads per connection (TLS, lingering).
    pub fn with_server_config<R>(&self, f: impl FnOnce(&crate::config::ServerConfig) -> R) -> R {
        f(&self.runtime.load().config.server)
    }

    /// Request-body memory currently held for replay.
    pub fn replay_memory_used(&self) -> u64 {
        self.budget.used()
    }
}

/// A request admitted past the in-flight limit; counted until dropped.
struct Admission<'a>(&'a AtomicUsize);

impl<'a> Admission<'a> {
    fn enter(counter: &'a AtomicUsize, limit: usize) -> Option<Admission<'a>> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| Admission(counter))
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
