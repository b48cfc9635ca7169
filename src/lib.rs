//! voxgate: a routing, streaming, falling-back reverse proxy for the OpenAI audio API.
//!
//! Layout, one line per module:
//! - [`config`]   TOML → validated [`config::Config`], every error with file:line:col.
//! - [`route`]    request facts and the ordered rule matcher.
//! - [`intake`]   reading client bodies within limits into a [`payload::Payload`].
//! - [`multipart`] a streaming multipart/form-data reader that hands out slices, not copies.
//! - [`payload`]  JSON / multipart / raw bodies: what rules read, how rewrites re-send them.
//! - [`spool`]    the replay store: memory within budgets, unlinked temp file beyond.
//! - [`body`]     response and upstream-request body types.
//! - [`upstream`] an upstream: how a request is sent to it; header hygiene and auth.
//! - [`connections`] kept-alive connections to an upstream's endpoints.
//! - [`h1`]       voxgate's own HTTP/1.1 client exchange, run by the request's task.
//! - [`pool`]     an upstream's endpoints: balancing, health checks, ejection.
//! - [`kind`]     upstream kinds (openai, kokoro, whisper-cpp, …): what each engine accepts.
//! - [`dialect`]  upstream answers made to read like OpenAI's (errors, text types, SSE).
//! - [`discovery`] GET /v1/models and /v1/audio/voices, merged over the routed upstreams.
//! - [`forward`]  the fallback loop and its single decision function.
//! - [`access`]   the per-request access log line, written when the response ends.
//! - [`error`]    OpenAI-shaped error responses.
//! - [`proxy`]    the request phases: classify → intake → route → forward → respond.
//! - [`server`]   accept loop, HTTP/1.1 + HTTP/2, graceful shutdown.
//! - [`prompt`]   a connection's wake-ups to itself taken at once (small bodies), not queued.
//!
//! A request flows: [`server::run`] accepts it and calls [`proxy::Gateway::handle`], which
//! classifies the path, reads the body into a payload (spooling uploads), picks the first
//! matching route, and tries the route's upstreams in order — falling back on connect
//! failure, timeout, reset or a listed status, decided on the response headers — then
//! streams the chosen upstream's response to the client frame by frame.

pub mod access;
pub mod body;
pub mod config;
pub mod connections;
pub mod dialect;
pub mod discovery;
pub mod error;
pub mod forward;
pub mod h1;
pub mod intake;
pub mod kind;
pub mod multipart;
pub mod payload;
pub mod pool;
pub mod prompt;
pub mod proxy;
pub mod route;
pub mod server;
pub mod spool;
pub mod upstream;
