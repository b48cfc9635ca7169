//! Configuration: TOML text → raw serde structs → one validated, immutable [`Config`].
//!
//! Loading (`load.rs`) happens in three steps, as in rust-rpxy: `toml` deserialises into the
//! `Raw*` structs of `raw.rs` (unknown keys are refused there), `validate.rs` turns every raw
//! value into a typed one (`Uri`, `Duration`, compiled globs, upstream indices) and collects
//! *every* mistake it finds with its line and column (`diagnostic.rs`), and the router and
//! upstream clients are built from the result elsewhere. This file holds the typed result.
//! Nothing is checked per request that could have been checked here.
//!
//! Error messages never quote the configuration text: an `api_key` written inline must not
//! reach a terminal or a log through a typo next to it.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

use crate::engine::dialect::{Dialect, Kind, Preset};
use crate::route::{FallbackPolicy, Matcher, Operation, Pattern, RouteConfig};

mod diagnostic;
mod load;
mod policy;
mod raw;
mod validate;

pub use crate::policy::cost::{Price, Pricing};
pub use crate::policy::quota::Limits;
pub use crate::policy::shared::redact_url;
pub use diagnostic::{ConfigError, Diagnostic};
pub use policy::{CacheConfig, ClientConfig, SharedConfig};

/// The built-in default configuration, also printed by `voxgate print-config`.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Where the built-in default config claims to come from in messages.
pub const DEFAULT_NAME: &str = "<built-in default>";

// ---------------------------------------------------------------------------------------------
// The validated configuration.

/// A validated configuration: every value typed, every reference resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    /// Sorted by name; routes refer to them by index.
    pub upstreams: Vec<UpstreamConfig>,
    /// In file order: the first route that matches wins.
    pub routes: Vec<RouteConfig>,
    /// `[[clients]]`: when any is configured, every `/v1` request needs one's key.
    pub clients: Vec<ClientConfig>,
    /// `[limits]`: for all requests together.
    pub limits: Limits,
    /// `[cache]`: the TTS cache, when configured.
    pub cache: Option<CacheConfig>,
    /// `[shared]`: limits and cache shared with other instances through Redis.
    pub shared: Option<SharedConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// A request body larger than this is refused with 413 as soon as that is known.
    pub max_body_bytes: u64,
    /// JSON bodies are held whole in memory to be inspected, so they get a tighter limit.
    pub max_json_bytes: u64,
    /// How much of one request body is kept in memory for replay before it spills to disk.
    pub replay_memory_per_request: u64,
    /// How much request-body memory all requests together may hold before spilling.
    pub replay_memory_total: u64,
    /// Directory for spilled request bodies (unlinked files); the OS temp dir by default.
    pub spill_dir: Option<PathBuf>,
    /// Time a client has to send its request headers.
    pub header_read_timeout: Duration,
    /// Longest pause allowed between two pieces of a request body.
    pub body_read_timeout: Duration,
    /// How long in-flight requests may run on after SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    /// Fallback attempts in flight may be this percentage of requests in flight…
    pub retry_budget_percent: u32,
    /// …or this many, whichever is more.
    pub retry_budget_min: u32,
    /// A second listener for /health, /ready and /status; when set, the main listener
    /// no longer serves /ready and /status.
    pub admin_listen: Option<SocketAddr>,
    /// Connections beyond this get 503 and are closed.
    pub max_connections: u32,
    /// Requests being read or forwarded beyond this get 503 at once.
    pub max_in_flight: u32,
    /// Threads that serve requests; by default one per core this process may run on.
    pub threads: Option<u32>,
    /// Reload when the config file changes (besides SIGHUP).
    pub watch_config: bool,
    /// Clients connect over TLS (HTTP/2 or HTTP/1.1 by ALPN) when set.
    pub tls: Option<InboundTls>,
    /// After an answer that closes the connection before the request body was read to
    /// its end, how long the rest of the body is read and dropped (nginx's
    /// `lingering_time`), so the client reads the answer instead of a reset…
    pub lingering_time: Duration,
    /// …and how many bytes of it at most.
    pub lingering_bytes: u64,
}

/// The listeners' TLS: certificate chain and key, read and checked at load, so a reload
/// picks up renewed files.
#[derive(Debug, Clone)]
pub struct InboundTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server: std::sync::Arc<rustls::ServerConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// A secret value: shown as `<redacted>` by `Debug`, never by `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One server of an upstream's pool.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointConfig {
    /// Scheme and authority, plus an optional path prefix; never a query.
    pub url: Uri,
    /// Share of the traffic relative to the pool's other endpoints.
    pub weight: u32,
    /// Takes traffic only while every primary endpoint of the pool is down.
    pub backup: bool,
}

/// How an upstream spreads requests over its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// In turn, in proportion to the weights.
    #[serde(alias = "weighted")]
    RoundRobin,
    /// The less busy of two endpoints picked at random (power of two choices).
    LeastOutstanding,
}

/// An active health check: a cheap request, never a paid synthesis or transcription.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub method: http::Method,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down endpoint up.
    pub rise: u32,
    /// Consecutive failures that take an up endpoint down.
    pub fall: u32,
    /// Statuses that count as healthy, inclusive.
    pub expect: (u16, u16),
}

/// Passive ejection: endpoints that fail real requests are taken out for a while.
#[derive(Debug, Clone, PartialEq)]
pub struct Ejection {
    /// Consecutive failed attempts that eject an endpoint; 0 turns ejection off.
    pub after: u32,
    /// First ejection's length; the n-th lasts n times as long, up to `max_time`.
    pub base_time: Duration,
    pub max_time: Duration,
    /// Share of a pool that may be ejected at once (one endpoint always may).
    pub max_percent: u32,
}

/// Compared whole on reload: an upstream whose definition did not change keeps its
/// connections, health state and ejections (`gateway::reload`).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    /// At least one; `url = …` is a pool of one.
    pub endpoints: Vec<EndpointConfig>,
    pub balance: Balance,
    pub health: Option<HealthCheck>,
    pub ejection: Ejection,
    pub connect_timeout: Duration,
    /// Per try: from sending the request until the response headers arrive.
    pub response_timeout: Duration,
    /// Longest pause between two pieces of the response body; then the client's
    /// connection is aborted, so a stalled stream is seen as broken.
    pub idle_timeout: Duration,
    /// How long a kept-alive connection to this upstream may wait unused before it is closed.
    pub keepalive_timeout: Duration,
    /// Replaces the client's Authorization header when set.
    pub api_key: Option<Secret>,
    /// The environment variable `api_key` was written with (`${OPENAI_API_KEY:-}`) when
    /// it was unset or empty, so the key came out empty: warned about at start-up.
    pub api_key_unset: Option<String>,
    /// Without an `api_key`, pass the client's Authorization header on (otherwise strip it).
    pub pass_client_key: bool,
    pub voice_map: HashMap<String, String>,
    pub model_map: HashMap<String, String>,
    /// Verify https upstreams' certificates (on unless turned off explicitly).
    pub tls_verify: bool,
    /// Extra trusted CA certificates (DER), from `ca_file`, beside the webpki roots.
    pub ca_certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// What the engine accepts and how requests are adapted to it (`kind` and its keys).
    pub dialect: Dialect,
    /// What its answers cost (`price`, or OpenAI's list for the `openai` kind).
    pub price: Pricing,
}
