//! voxgate: a routing, streaming, falling-back reverse proxy for the OpenAI audio API.
//!
//! Layout, top of the request path first; a module imports only modules below it:
//! - [`service`]    the daemon: runtime, listeners, signals (SIGHUP reloads), `notify`
//!   (systemd), `watch` (`watch_config`), `control` (`voxgate reload`, `explain --live`).
//! - [`server`]     accept loop, HTTP/1.1 + HTTP/2, plain or TLS, graceful shutdown;
//!   `inline_wake`: a connection's wake-ups to itself taken at once for small bodies;
//!   `linger`: a closing connection's unread upload drained (lingering close).
//! - [`gateway`]    the request path: `phases` (admit → classify (authenticate) →
//!   meter_request → intake → route → permit → lookup → meter_units → forward → respond →
//!   observe), `policy` (the policy phases), `classify`, `admin` (/health /ready /status /metrics /reload),
//!   `ui` (the status page, /ui), `discovery`, `forward` (the fallback loop and its one decision), `respond`,
//!   `request_id`; `reload` (a new config compiled beside the old, unchanged upstreams
//!   shared, swapped whole); `explain` (`voxgate explain`: classify, intake, route and
//!   each upstream's request, reported instead of sent).
//! - [`telemetry`]  each request's `record`, the `observe`rs told once at its end: the
//!   `access_log`, the `metrics` (Prometheus, `/metrics`), whose `labels` are laid out
//!   when a configuration is compiled, and `recent_errors` (the status page's list).
//! - [`upstream`]   an upstream and how a request is sent to it: `pool` (balancing,
//!   ejection), `health`, `connections` (keep-alive), `h1` (voxgate's HTTP/1.1 client),
//!   `tls`, `error` (one error type with a kind).
//! - [`config`]     TOML → `raw` → `validate` → one typed [`config::Config`]; `load`;
//!   `diagnostic` (every mistake with file:line:col).
//! - [`policy`]     what the policy phases (`gateway/policy.rs`: authenticate, meter,
//!   permit, the cache lookup, price) use, none of it reading the config: `rate` (GCRA),
//!   `quota` (a configuration's limiters), `keys`, `cache` (the TTS cache), `shared`
//!   (Redis: limits and cache shared by instances), `cost`, `audio` (an upload's duration).
//! - [`request`]    the client's body: `intake` within limits, `multipart`, `payload` (what
//!   rules read, how rewrites re-send it), `replay` (the store), `outgoing` (an upstream
//!   request's body).
//! - [`engine`]     what each engine kind accepts (`dialect`), its answers made OpenAI's
//!   (`answers`), its error bodies read (`errors`).
//! - [`error`]      OpenAI-shaped error responses.
//! - [`body`]       response body types and the idle timeout.
//! - [`route`]      request facts, compiled routes and the ordered rule matcher.
//!
//! A request flows: [`server::run`] accepts it and calls [`gateway::Gateway::handle`], which
//! runs the phases in `gateway/phases.rs`: shed it if too many are in flight, classify the
//! path, read the body into a payload (keeping uploads for replay), pick the first matching
//! route, try the route's upstreams in order — falling back on connect failure, timeout,
//! reset or a listed status, decided on the response headers — then stream the chosen
//! upstream's answer to the client and tell the observers when it is over.

pub mod body;
pub mod config;
pub mod engine;
pub mod error;
pub mod gateway;
pub mod policy;
pub mod request;
pub mod route;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod upstream;
