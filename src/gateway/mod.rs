//! The request path. Every request goes through the same named phases, top to bottom:
//!
//! ```text
//!   classify   path + method → health | an API endpoint | refusal (400/404/405)
//!   intake     read the body within limits → Payload          (intake.rs, 400/408/413/415)
//!   route      facts from the payload → first matching route  (route.rs, 404)
//!   forward    upstreams in order, fallback before any byte   (forward.rs, 502/504)
//!   respond    stream the chosen response through, log at end (access.rs)
//! ```
//!
//! The outer [`Gateway::handle`] turns any [`ProxyError`] into an OpenAI-shaped response;
//! the inner [`Gateway::proxy`] uses `?`.

pub mod discovery;
pub mod forward;

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;

use crate::body::{full, BoxError, IdleTimeout, ProxyBody};
use crate::config::Config;
use crate::engine::answers;
use crate::engine::dialect::Convert;
use crate::error::ApiError;
use crate::gateway::forward::{forward, Exhausted, RequestHead, RetryBudget, Served};
use crate::request::intake::{read_form, read_json, read_raw, IntakeError, IntakeLimits};
use crate::request::replay::{MemoryBudget, ReplayLimits};
use crate::route::{Endpoint, RequestFacts, Router};
use crate::telemetry::access_log::{AccessRecord, Listener, ObservedBody, Origin};
use crate::upstream::{strip_hop_by_hop, Upstream, REQUEST_ID_HEADER_NAME, UPSTREAM_HEADER_NAME};
use discovery::Listing;

/// Everything a request can be refused for, each with its one status.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid request path `{0}`: dot segments and encoded separators are not allowed")]
    BadPath(String),
    #[error("unknown path `{0}`: voxgate serves the OpenAI API under /v1")]
    NotFound(String),
    #[error("{method} is not allowed on {path}; use POST")]
    MethodNotAllowed { method: Method, path: String },
    #[error(transparent)]
    Intake(#[from] IntakeError),
    #[error("no route for {endpoint} requests with model `{model}`")]
    NoRoute {
        endpoint: &'static str,
        model: String,
    },
    #[error("{}", .0.summary)]
    Upstreams(Exhausted),
}

impl ProxyError {
    pub fn api_error(&self) -> ApiError {
        let message = self.to_string();
        match self {
            ProxyError::BadPath(_) => ApiError::invalid_request(StatusCode::BAD_REQUEST, message),
            ProxyError::NotFound(_) => {
                ApiError::invalid_request(StatusCode::NOT_FOUND, message).with_code("unknown_url")
            }
            ProxyError::MethodNotAllowed { .. } => {
                ApiError::invalid_request(StatusCode::METHOD_NOT_ALLOWED, message)
            }
            ProxyError::Intake(e) => e.api_error(),
            ProxyError::NoRoute { .. } => ApiError::invalid_request(StatusCode::NOT_FOUND, message)
                .with_param("model")
                .with_code("no_route"),
            ProxyError::Upstreams(e) => e.api_error(),
        }
    }
}

/// What a request is, from its method and path alone.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Health,
    Root,
    /// 200 when every route has an upstream with an available endpoint, else 503.
    Ready,
    /// Upstreams, endpoints, health, ejections, in-flight counts, last checks.
    Status,
    /// `GET /v1/models` or `GET /v1/audio/voices`: merged over the routed upstreams.
    Discovery(Listing),
    Api {
        endpoint: Endpoint,
        /// The path with `/v1` in front, as every upstream expects it.
        path: String,
    },
}

/// Decodes percent-encoded unreserved characters (RFC 3986 §6.2.2.2): `/v1/audio/spe%65ch`
/// is `/v1/audio/speech`, and must be inspected and routed as such.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| path.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~'));
        match decoded {
            Some(b) => {
                out.push(char::from(b));
                i += 3;
            }
            None => {
                out.push(char::from(bytes[i]));
                i += 1;
            }
        }
    }
    out
}

fn classify(method: &Method, path: &str) -> Result<Target, ProxyError> {
    // The common case, a POST to an audio endpoint spelled exactly, needs none of the
    // checks below.
    if *method == Method::POST {
        let endpoint = match path {
            "/v1/audio/speech" => Some(Endpoint::Speech),
            "/v1/audio/transcriptions" => Some(Endpoint::Transcriptions),
            "/v1/audio/translations" => Some(Endpoint::Translations),
            _ => None,
        };
        if let Some(endpoint) = endpoint {
            let path = path.to_string();
            return Ok(Target::Api { endpoint, path });
        }
    }
    let dotted = path.split('/').any(|s| s == "." || s == "..");
    // Only a path with a `%` can hold an encoded dot or separator, or need decoding: the
    // common one is looked at as it is, without a lowercased or decoded copy.
    let encoded = path.contains('%');
    let separator = encoded && {
        let lower = path.to_ascii_lowercase();
        ["%2e", "%2f", "%5c"].iter().any(|p| lower.contains(p))
    };
    if dotted || separator || path.contains('\\') {
        return Err(ProxyError::BadPath(path.to_string()));
    }
    let decoded: Cow<str> = match encoded {
        true => Cow::Owned(decode_unreserved(path)),
        false => Cow::Borrowed(path),
    };
    let path: Cow<str> = match &*decoded {
        "/health" => return Ok(Target::Health),
        "/ready" => return Ok(Target::Ready),
        "/status" => return Ok(Target::Status),
        "/" => return Ok(Target::Root),
        p if p.starts_with("/v1/") => Cow::Borrowed(p),
        // A base URL without /v1 yields these.
        p if p.starts_with("/audio/") || p == "/models" || p.starts_with("/models/") => {
            Cow::Owned(format!("/v1{p}"))
        }
        p => return Err(ProxyError::NotFound(p.to_string())),
    };
    // A trailing slash does not make an audio request something else.
    let bare = path.strip_suffix('/').unwrap_or(&path);
    let endpoint = match bare {
        "/v1/audio/speech" => Endpoint::Speech,
        "/v1/audio/transcriptions" => Endpoint::Transcriptions,
        "/v1/audio/translations" => Endpoint::Translations,
        _ => Endpoint::Other,
    };
    if *method == Method::GET {
        match bare {
            "/v1/models" => return Ok(Target::Discovery(Listing::Models)),
            "/v1/audio/voices" => return Ok(Target::Discovery(Listing::Voices)),
            _ => {}
        }
    }
    let path = match endpoint {
        Endpoint::Other => path.into_owned(),
        _ => path.trim_end_matches('/').to_string(),
    };
    if endpoint != Endpoint::Other && method != Method::POST {
        return Err(ProxyError::MethodNotAllowed {
            method: method.clone(),
            path,
        });
    }
    Ok(Target::Api { endpoint, path })
}

/// Appends `value` in lowercase hex, at least `width` digits.
fn push_hex(out: &mut Vec<u8>, value: u64, width: u32) {
    let digits = (u64::BITS - value.leading_zeros()).div_ceil(4).max(width);
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(value >> (i * 4)) as usize & 0xf]);
    }
}

/// A request id: the client's if it sent a sane one, else a new one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    if let Some(v) = headers.get(&REQUEST_ID_HEADER_NAME) {
        let ok = (1..=128).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
        if ok {
            return v.clone();
        }
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hash = SEED.get_or_init(RandomState::new).hash_one(n);
    // `vg-{hash:016x}{n:06x}`, written without the formatting machinery and handed to the
    // header value as it is, without a copy.
    let mut id = Vec::with_capacity(3 + 16 + 16);
    id.extend_from_slice(b"vg-");
    push_hex(&mut id, hash, 16);
    push_hex(&mut id, n, 6);
    HeaderValue::from_maybe_shared(Bytes::from(id))
        .unwrap_or_else(|_| HeaderValue::from_static("vg-unknown"))
}

/// One configuration, compiled: routes and upstream clients.
#[derive(Debug)]
pub struct Runtime {
    pub config: Config,
    router: Router,
    upstreams: Vec<Upstream>,
    limits: IntakeLimits,
    retry_budget: RetryBudget,
}

impl Runtime {
    fn new(config: Config, budget: Arc<MemoryBudget>) -> Runtime {
        let upstreams = config
            .upstreams
            .iter()
            .cloned()
            .map(Upstream::new)
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
        Runtime {
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

/// voxgate's answer when it sheds load: 503 with `retry-after`, which the SDKs honour.
pub fn overloaded(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        format!("voxgate is overloaded: {what}; retry shortly"),
    )
    .with_code("overloaded")
    .with_retry_after(1)
}

/// A request counted in flight; the count goes down when it is dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize, limit: usize) -> Option<InFlight<'a>> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(counter))
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

impl Runtime {
    /// `/ready`: every route must have an upstream that can take a request.
    fn readiness(&self) -> Response<ProxyBody> {
        let reasons: Vec<String> = self
            .router
            .routes()
            .iter()
            .filter(|route| !route.to.iter().any(|&i| self.upstreams[i].pool.is_up()))
            .map(|route| {
                let names: Vec<&str> = route.to.iter().map(|&i| self.upstreams[i].name()).collect();
                format!(
                    "route at line {}: no available endpoint in {}",
                    route.line,
                    names.join(", ")
                )
            })
            .collect();
        let status = if reasons.is_empty() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(
            status,
            &serde_json::json!({ "ready": reasons.is_empty(), "reasons": reasons }),
        )
    }

    /// `/status`: the pools as they are now. Shows upstream URLs, never keys.
    fn status(&self) -> serde_json::Value {
        let upstreams: Vec<serde_json::Value> = self
            .upstreams
            .iter()
            .map(|u| {
                let mut status = u.pool.status();
                if let Some(object) = status.as_object_mut() {
                    object.insert("kind".into(), u.config.dialect.kind.name().into());
                }
                status
            })
            .collect();
        serde_json::json!({ "upstreams": upstreams })
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
}

impl Gateway {
    pub fn new(config: Config) -> Gateway {
        let budget = Arc::new(MemoryBudget::new(config.server.replay_memory_total));
        Gateway {
            runtime: ArcSwap::from_pointee(Runtime::new(config, budget.clone())),
            budget,
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Request-body memory currently held for replay.
    pub fn replay_memory_used(&self) -> u64 {
        self.budget.used()
    }

    /// Answers one request, which came from `origin`. Never fails: every error becomes an
    /// OpenAI-shaped response.
    pub async fn handle<B>(&self, request: Request<B>, origin: Origin) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let runtime = self.runtime.load_full();
        let id = request_id(request.headers());
        let mut record = AccessRecord::new(
            id.clone(),
            request.method().clone(),
            request.uri().path().to_string(),
        );
        record.client = Some(origin.peer);
        let limit = runtime.config.server.max_in_flight as usize;
        let Some(_admitted) = InFlight::enter(&self.in_flight, limit) else {
            let mut response = overloaded("too many requests in flight").into_response();
            response
                .headers_mut()
                .insert(REQUEST_ID_HEADER_NAME.clone(), id);
            record.status = response.status().as_u16();
            record.error = Some("shed: too many requests in flight".into());
            record.finish(0);
            return response;
        };
        let mut response = match self
            .proxy(&runtime, request, origin.listener, &id, &mut record)
            .await
        {
            Ok(Reply::Upstream(response)) => {
                // The record travels with the body, which writes it when the response ends.
                let (parts, body) = response.into_parts();
                record.status = parts.status.as_u16();
                return Response::from_parts(parts, ObservedBody::new(body, record).boxed());
            }
            Ok(Reply::Local(response)) => response,
            Err(e) => {
                let api = e.api_error();
                record.error = Some(api.message.clone());
                api.into_response()
            }
        };
        response
            .headers_mut()
            .insert(REQUEST_ID_HEADER_NAME.clone(), id);
        record.status = response.status().as_u16();
        record.finish(response.body().size_hint().exact().unwrap_or(0));
        response
    }

    async fn proxy<B>(
        &self,
        runtime: &Runtime,
        request: Request<B>,
        listener: Listener,
        id: &HeaderValue,
        record: &mut AccessRecord,
    ) -> Result<Reply, ProxyError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        // classify
        let (parts, body) = request.into_parts();
        let target = classify(&parts.method, parts.uri.path())?;
        let operational = matches!(target, Target::Health | Target::Ready | Target::Status);
        let admin_elsewhere = runtime.config.server.admin_listen.is_some();
        let allowed = match listener {
            Listener::Admin => operational,
            Listener::Public => {
                !(admin_elsewhere && matches!(target, Target::Ready | Target::Status))
            }
        };
        if !allowed {
            return Err(ProxyError::NotFound(parts.uri.path().to_string()));
        }
        let (endpoint, path) = match target {
            Target::Health | Target::Root => {
                let ok = serde_json::json!({ "status": "ok" });
                return Ok(Reply::Local(json_response(StatusCode::OK, &ok)));
            }
            Target::Ready => return Ok(Reply::Local(runtime.readiness())),
            Target::Status => {
                return Ok(Reply::Local(json_response(
                    StatusCode::OK,
                    &runtime.status(),
                )))
            }
            Target::Discovery(listing) => {
                let list = discovery::answer(
                    listing,
                    &runtime.upstreams,
                    runtime.router.routes(),
                    &parts.headers,
                    id,
                )
                .await;
                return Ok(Reply::Local(json_response(StatusCode::OK, &list)));
            }
            Target::Api { endpoint, path } => (endpoint, path),
        };
        record.endpoint = endpoint.name();

        // intake
        let limits = &runtime.limits;
        let (payload, bytes_in) = match endpoint {
            Endpoint::Speech => read_json(body, &parts.headers, limits).await?,
            Endpoint::Transcriptions | Endpoint::Translations => {
                read_form(body, &parts.headers, limits).await?
            }
            Endpoint::Other => read_raw(body, &parts.headers, limits).await?,
        };
        record.bytes_in = bytes_in;
        record.model = payload.model().map(str::to_string);
        record.voice = payload.voice().map(str::to_string);

        // route
        let facts = RequestFacts {
            endpoint,
            method: &parts.method,
            path: &path,
            model: payload.model(),
            voice: payload.voice(),
            response_format: payload.response_format(),
            stream: payload.stream(),
        };
        let Some((_, route)) = runtime.router.find(&facts) else {
            return Err(ProxyError::NoRoute {
                endpoint: endpoint.name(),
                model: payload.model().unwrap_or_default().to_string(),
            });
        };
        record.route = Some(route.line);

        // forward
        let path_and_query = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let head = RequestHead {
            endpoint,
            method: &parts.method,
            path_and_query: &path_and_query,
            headers: &parts.headers,
            request_id: id,
        };
        let outcome = forward(
            &runtime.upstreams,
            &runtime.retry_budget,
            route,
            &payload,
            &head,
            &mut record.attempts,
        )
        .await;
        let Served {
            index,
            picked,
            response: upstream_response,
            convert,
        } = outcome.map_err(ProxyError::Upstreams)?;
        record.served_by = Some(picked);

        // respond
        let upstream = &runtime.upstreams[index];
        let (mut parts, body) = upstream_response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(theirs) = parts.headers.remove(&REQUEST_ID_HEADER_NAME) {
            if theirs != *id {
                parts.headers.insert("x-upstream-request-id", theirs);
            }
        }
        parts
            .headers
            .insert(REQUEST_ID_HEADER_NAME.clone(), id.clone());
        if let Some(name) = upstream.name_header() {
            parts
                .headers
                .insert(UPSTREAM_HEADER_NAME.clone(), name.clone());
        }
        record.upstream = Some(upstream.name().to_string());
        let idle = upstream.config.idle_timeout;
        answers::fix_text_content_type(
            endpoint,
            payload.response_format(),
            parts.status,
            &mut parts.headers,
        );
        // The request body is no longer needed: give its memory back before streaming.
        drop(payload);
        if answers::rewritable_error(parts.status, &parts.headers) {
            if let Some(error) = answers::openai_error_body(parts.status, body, idle).await {
                parts.headers.remove(header::CONTENT_LENGTH);
                parts.headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                return Ok(Reply::Local(Response::from_parts(parts, full(error))));
            }
            // Not readable in time: the connection is gone with the body.
            return Err(unreadable(upstream, "error body unreadable"));
        }
        let converting = parts.status.is_success() && convert != Convert::None;
        if converting {
            answers::sse_headers(&mut parts.headers);
        }
        let body = match convert {
            Convert::SpeechSse if converting => {
                answers::speech_events(IdleTimeout::new(body, idle))
            }
            Convert::TranscriptSse if converting => {
                let events = answers::transcript_events(body, idle)
                    .await
                    .map_err(|why| unreadable(upstream, &why))?;
                return Ok(Reply::Local(Response::from_parts(parts, full(events))));
            }
            _ => IdleTimeout::new(body, idle).boxed(),
        };
        Ok(Reply::Upstream(Response::from_parts(parts, body)))
    }
}

/// An upstream answered, but its answer could not be read or made sense of.
fn unreadable(upstream: &Upstream, why: &str) -> ProxyError {
    ProxyError::Upstreams(Exhausted {
        stopped_by_policy: false,
        summary: format!("{}: {why}", upstream.name()),
        all_timeouts: false,
        unsuitable: false,
    })
}

/// A successful answer: voxgate's own, or an upstream's to be streamed through.
enum Reply {
    Local(Response<ProxyBody>),
    Upstream(Response<ProxyBody>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::REQUEST_ID_HEADER;

    fn target(method: Method, path: &str) -> Result<Target, u16> {
        classify(&method, path).map_err(|e| e.api_error().status.as_u16())
    }

    fn api(endpoint: Endpoint, path: &str) -> Result<Target, u16> {
        Ok(Target::Api {
            endpoint,
            path: path.to_string(),
        })
    }

    #[test]
    fn audio_paths_are_found_with_or_without_v1() {
        assert_eq!(
            target(Method::POST, "/v1/audio/speech"),
            api(Endpoint::Speech, "/v1/audio/speech")
        );
        assert_eq!(
            target(Method::POST, "/audio/speech"),
            api(Endpoint::Speech, "/v1/audio/speech")
        );
        assert_eq!(
            target(Method::POST, "/audio/transcriptions"),
            api(Endpoint::Transcriptions, "/v1/audio/transcriptions")
        );
        assert_eq!(
            target(Method::POST, "/v1/audio/translations"),
            api(Endpoint::Translations, "/v1/audio/translations")
        );
        assert_eq!(
            target(Method::GET, "/models"),
            Ok(Target::Discovery(Listing::Models))
        );
        assert_eq!(
            target(Method::GET, "/v1/audio/voices"),
            Ok(Target::Discovery(Listing::Voices))
        );
        assert_eq!(
            target(Method::POST, "/v1/audio/voices"),
            api(Endpoint::Other, "/v1/audio/voices"),
            "POST creates a voice at OpenAI: passed on"
        );
        assert_eq!(
            target(Method::GET, "/v1/models/tts-1"),
            api(Endpoint::Other, "/v1/models/tts-1")
        );
        assert_eq!(target(Method::GET, "/health"), Ok(Target::Health));
        assert_eq!(target(Method::GET, "/"), Ok(Target::Root));
    }

    #[test]
    fn encoded_and_slashed_spellings_of_audio_paths_are_the_same_endpoint() {
        assert_eq!(
            target(Method::POST, "/v1/audio/spe%65ch"),
            api(Endpoint::Speech, "/v1/audio/speech")
        );
        assert_eq!(
            target(Method::POST, "/v1/audio/transcriptions/"),
            api(Endpoint::Transcriptions, "/v1/audio/transcriptions")
        );
        assert_eq!(
            target(Method::GET, "/v1/files/a%20b"),
            api(Endpoint::Other, "/v1/files/a%20b"),
            "reserved and other encodings are kept"
        );
        assert_eq!(target(Method::GET, "/v1/audio%2Fspeech"), Err(400));
    }

    #[test]
    fn operational_paths_are_voxgates_own() {
        assert_eq!(target(Method::GET, "/ready"), Ok(Target::Ready));
        assert_eq!(target(Method::GET, "/status"), Ok(Target::Status));
    }

    #[test]
    fn hostile_and_unknown_paths_are_refused() {
        assert_eq!(target(Method::GET, "/v1/../admin"), Err(400));
        assert_eq!(target(Method::GET, "/v1/%2e%2e/admin"), Err(400));
        assert_eq!(target(Method::GET, "/v1/audio%2Fspeech"), Err(400));
        assert_eq!(target(Method::GET, "/admin"), Err(404));
        assert_eq!(target(Method::GET, "/v1/audio/speech"), Err(405));
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut h = http::HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        let made = request_id(&h);
        assert!(made.to_str().unwrap().starts_with("vg-"));
        assert_ne!(
            request_id(&http::HeaderMap::new()),
            request_id(&http::HeaderMap::new())
        );
    }

    #[test]
    fn hex_is_written_as_format_writes_it() {
        for (value, width) in [(0, 6), (0x1f, 6), (0xabcdef1, 6), (u64::MAX, 16), (7, 16)] {
            let mut out = Vec::new();
            push_hex(&mut out, value, width);
            let expected = format!("{value:0width$x}", width = width as usize);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }
}
