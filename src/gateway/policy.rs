//! The policy phases: who is calling (`authenticate`, 401), how much they may
//! (`meter_request` before the body is read, `meter_units` after it, 429), what they may
//! use (`permit`, 403), the TTS cache (`lookup`: a hit, a coalesced wait, or the flight
//! that will fill it), and what the answer cost (`price`).
//!
//! [`Policy`] is their part of a compiled configuration: the client keys, the limiters
//! and the cache, the last two taken over from the previous configuration where their
//! settings did not change, so a reload neither refills every bucket nor empties the cache.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::body::{full, ProxyBody};
use crate::config::Config;
use crate::error::ApiError;
use crate::gateway::{Api, Context, GatewayError, Step, Stop};
use crate::policy::audio;
use crate::policy::cache::{Cache, Entry, Flight, Join, Key, Landed};
use crate::policy::cost::{self, nano_dollars};
use crate::policy::keys::{self, Keys};
use crate::policy::quota::{go_duration, shared_key, Limited, Meter, Quota, Scope, Unit};
use crate::policy::rate::Rate;
use crate::policy::shared::{Shared, SharedSettings, Unavailable};
use crate::request::payload::{PartValue, Payload};
use crate::route::{Operation, Pattern, RouteConfig};
use crate::upstream::{Upstream, REQUEST_ID_HEADER_NAME};

/// `x-voxgate-cache`: on every speech answer while a cache is configured.
pub static CACHE_HEADER: HeaderName = HeaderName::from_static("x-voxgate-cache");

/// A multipart form's bytes besides its file: boundaries, part headers, the text fields.
/// An upload's Content-Length less this is at most its file, which is what `stt_bytes`
/// counts, so a length over the limit by more than this is refused before it is read.
const FORM_ALLOWANCE: u64 = 64 * 1024;

/// A configured client, as the request path needs it.
#[derive(Debug)]
struct Client {
    name: Arc<str>,
    routes: Option<Vec<String>>,
    models: Option<Pattern>,
}

/// The TTS cache, shared with the next configuration while its settings stay the same.
#[derive(Clone)]
pub struct SpeechCache {
    pub store: Arc<Cache>,
    charge_hits: bool,
}

impl std::fmt::Debug for SpeechCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeechCache")
            .field("settings", self.store.settings())
            .field("charge_hits", &self.charge_hits)
            .finish()
    }
}

/// The policy of one compiled configuration.
#[derive(Debug, Default)]
pub struct Policy {
    keys: Keys,
    clients: Vec<Client>,
    meter: Meter,
    pub cache: Option<SpeechCache>,
    /// `[shared]`: limits and cache shared with other instances through Redis.
    pub shared: Option<Arc<Shared>>,
}

impl Policy {
    pub fn compile(config: &Config, old: Option<&Policy>) -> Policy {
        let keys = Keys::new(config.clients.iter().map(|c| c.key_sha256).collect());
        let clients = config
            .clients
            .iter()
            .map(|c| Client {
                name: c.name.as_str().into(),
                routes: c.routes.clone(),
                models: c.models.clone(),
            })
            .collect();
        let meter = Meter::compile(
            &config.limits,
            config.clients.iter().map(|c| (c.name.as_str(), &c.limits)),
            old.map(|o| &o.meter),
        );
        let cache = config.cache.as_ref().and_then(|wanted| {
            let kept = old
                .and_then(|o| o.cache.as_ref())
                .filter(|c| *c.store.settings() == wanted.settings)
                .map(|c| c.store.clone());
            // `voxgate explain` compiles without a runtime and must not open (and tidy)
            // the disk tier a running daemon is writing.
            tokio::runtime::Handle::try_current().ok()?;
            let store = match kept {
                Some(store) => store,
                None => match Cache::open(wanted.settings.clone()) {
                    Ok(store) => Arc::new(store),
                    Err(e) => {
                        tracing::error!(
                            "the TTS cache could not be opened, running without it: {e}"
                        );
                        return None;
                    }
                },
            };
            Some(SpeechCache {
                store,
                charge_hits: wanted.charge_hits,
            })
        });
        let shared = config.shared.as_ref().and_then(|wanted| {
            let settings = SharedSettings {
                url: wanted.redis.expose().to_string(),
                timeout: wanted.timeout,
                connect_timeout: wanted.connect_timeout,
                max_entry_bytes: wanted.max_entry_bytes,
                prefix: wanted.prefix.clone(),
            };
            let kept = old
                .and_then(|o| o.shared.as_ref())
                .filter(|s| *s.settings() == settings)
                .cloned();
            // Connecting needs the runtime; `voxgate explain` compiles without one and
            // asks no shared state.
            kept.or_else(|| {
                tokio::runtime::Handle::try_current()
                    .ok()
                    .map(|_| Shared::start(settings))
            })
        });
        // The answers this instance fetched fill the shared tier too.
        if let Some(cache) = &cache {
            let ttl = cache.store.settings().ttl;
            let hook = shared.clone().map(|shared| {
                let hook: Landed = Arc::new(move |key, entry: &Arc<Entry>| {
                    shared.cache_put(key, entry.content_type.clone(), entry.body.clone(), ttl);
                });
                hook
            });
            cache.store.on_landed(hook);
        }
        Policy {
            keys,
            clients,
            meter,
            cache,
            shared,
        }
    }
}

impl Policy {
    /// `/status`'s `policy`: the clients (names, what they may use, their limits as they
    /// stand), the global limits, the cache's tiers. Never a key or its hash.
    pub fn status(&self) -> Value {
        let limits = |client: Option<usize>| -> Value {
            let mut out = serde_json::Map::new();
            for (unit, rate, now) in self.meter.report(client) {
                out.insert(
                    unit.name().into(),
                    serde_json::json!({
                        "rate": rate.to_string(),
                        "remaining": now.remaining,
                        "full_in_ms": now.reset.as_millis() as u64,
                    }),
                );
            }
            Value::Object(out)
        };
        let clients: Vec<Value> = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                serde_json::json!({
                    "name": &*c.name,
                    "routes": c.routes,
                    "models": c.models.as_ref().map(|m| m.written().collect::<Vec<_>>()),
                    "limits": limits(Some(i)),
                })
            })
            .collect();
        let cache = self.cache.as_ref().map(|c| {
            let stats = c.store.stats();
            let settings = c.store.settings();
            serde_json::json!({
                "memory": { "bytes": stats.memory_bytes, "entries": stats.memory_entries, "capacity": settings.memory_bytes },
                "disk": settings.dir.as_ref().map(|dir| serde_json::json!({
                    "dir": dir.display().to_string(),
                    "bytes": stats.disk_bytes,
                    "entries": stats.disk_entries,
                    "capacity": settings.disk_bytes,
                })),
                "ttl_s": settings.ttl.as_secs(),
                "charge_hits": c.charge_hits,
            })
        });
        let shared = self.shared.as_ref().map(|shared| {
            let now = shared.status();
            let since = now
                .since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            serde_json::json!({
                "redis": crate::config::redact_url(&shared.settings().url),
                "up": now.up,
                "since_unix": since,
                "outages": now.outages,
                "fallbacks": now.fallbacks,
                "last_error": now.last_error,
            })
        });
        serde_json::json!({
            "shared": shared,
            "keys_required": !self.keys.is_empty(),
            "clients": clients,
            "limits": limits(None),
            "cache": cache,
        })
    }
}

/// What the policy phases know of one request.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The configured client it is, by index.
    pub client: Option<usize>,
    pub quota: crate::policy::quota::Quota,
    /// `x-voxgate-cache` for its answer.
    pub cache: Option<&'static str>,
    /// Whether its speech characters were charged (not for a cache hit, by default).
    charged_units: bool,
}

impl Admitted {
    /// The headers every answer of this request carries: `x-ratelimit-*` and
    /// `x-voxgate-cache`.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        self.quota.write_headers(headers);
        if let Some(verdict) = self.cache {
            headers.insert(CACHE_HEADER.clone(), HeaderValue::from_static(verdict));
        }
    }
}

/// A refusal of the policy phases.
#[derive(Debug)]
pub enum Refusal {
    NoKey,
    UnknownKey,
    NotAllowed(String),
    Limited(Box<Limited>),
}

impl Refusal {
    pub fn api_error(&self) -> ApiError {
        match self {
            Refusal::NoKey => ApiError::invalid_request(
                StatusCode::UNAUTHORIZED,
                "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
            )
            .with_code("missing_api_key")
            .with_should_retry(false),
            Refusal::UnknownKey => ApiError::invalid_request(
                StatusCode::UNAUTHORIZED,
                "Incorrect API key provided: it is not one of this voxgate's client keys.",
            )
            .with_code("invalid_api_key")
            .with_should_retry(false),
            Refusal::NotAllowed(what) => {
                ApiError::invalid_request(StatusCode::FORBIDDEN, what.clone())
                    .with_code("permission_denied")
                    .with_should_retry(false)
            }
            Refusal::Limited(limited) => limited_error(limited),
        }
    }
}

fn limited_error(limited: &Limited) -> ApiError {
    let who = match &limited.scope {
        Scope::Global => "all clients together".to_string(),
        Scope::Client(name) => format!("client `{name}`"),
    };
    let rate = limited.rate;
    let limit = format!(
        "{} {} per {}",
        rate.count,
        limited.unit.name(),
        go_duration(rate.period)
    );
    let kind = match limited.unit {
        Unit::Requests => "requests",
        Unit::TtsChars | Unit::SttBytes => "tokens",
    };
    let error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, kind, String::new())
        .with_code("rate_limit_exceeded");
    match limited.retry_after_seconds() {
        Some(seconds) => ApiError {
            message: format!(
                "Rate limit reached for {who} on {}: limit {limit}. Please try again in {}.",
                limited.unit.name(),
                go_duration(limited.denied.retry_after.unwrap_or_default()),
            ),
            ..error.with_retry_after(seconds)
        },
        None => ApiError {
            message: format!(
                "This request is larger than the rate limit for {who} on {} allows at once ({limit}): it cannot pass.",
                limited.unit.name()
            ),
            ..error.with_should_retry(false)
        },
    }
}

impl From<Refusal> for Stop {
    fn from(refusal: Refusal) -> Stop {
        Stop::Refused(GatewayError::Policy(refusal))
    }
}

/// authenticate: when clients are configured, the request's key must be one of theirs.
pub fn authenticate(cx: &mut Context<'_>, headers: &HeaderMap) -> Step<()> {
    let policy = &cx.runtime.policy;
    if policy.keys.is_empty() {
        return Ok(());
    }
    let key = keys::presented(headers).ok_or(Refusal::NoKey)?;
    let index = policy.keys.find(key).ok_or(Refusal::UnknownKey)?;
    cx.admitted.client = Some(index);
    cx.trace.record.caller = Some((policy.clients[index].name.clone(), index as u32));
    Ok(())
}

/// meter_request: one request taken from the `requests` limits; an upload whose
/// Content-Length is already over `stt_bytes` is refused before a byte of it is read.
pub async fn meter_request(cx: &mut Context<'_>, api: &Api, head: &Parts) -> Step<()> {
    let meter = &cx.runtime.policy.meter;
    let client = cx.admitted.client;
    if matches!(
        api.operation,
        Operation::Transcriptions | Operation::Translations
    ) && meter.limits(client, Unit::SttBytes)
    {
        let length = head
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if let Some(length) = length {
            let file_at_least = length.saturating_sub(FORM_ALLOWANCE);
            if let Err(limited) = check(cx, Unit::SttBytes, file_at_least).await {
                return Err(limit(cx, limited));
            }
        }
    }
    if meter.limits(client, Unit::Requests) {
        if let Err(limited) = take(cx, Unit::Requests, 1).await {
            return Err(limit(cx, limited));
        }
    }
    Ok(())
}

/// A discovery request (`/v1/models`, `/v1/audio/voices`) is a request of its client too:
/// it fans out to the upstreams.
pub async fn meter_discovery(cx: &mut Context<'_>) -> Step<()> {
    if cx
        .runtime
        .policy
        .meter
        .limits(cx.admitted.client, Unit::Requests)
    {
        if let Err(limited) = take(cx, Unit::Requests, 1).await {
            return Err(limit(cx, limited));
        }
    }
    Ok(())
}

/// Takes `cost` of `unit` from the shared state when there is one and it answers in
/// time, else from this instance's own limiters.
async fn take(cx: &mut Context<'_>, unit: Unit, cost: u64) -> Result<(), Limited> {
    let policy = &cx.runtime.policy;
    let client = cx.admitted.client;
    if let Some(shared) = &policy.shared {
        match take_shared(
            shared,
            &policy.meter,
            client,
            unit,
            cost,
            &mut cx.admitted.quota,
        )
        .await
        {
            Ok(done) => return done,
            Err(Unavailable) => shared.note_fallback(),
        }
    }
    policy
        .meter
        .take(client, unit, cost, &mut cx.admitted.quota)
}

/// Every scope's limiter in the shared state, all or none, in one round trip.
async fn take_shared(
    shared: &Arc<Shared>,
    meter: &Meter,
    client: Option<usize>,
    unit: Unit,
    cost: u64,
    quota: &mut Quota,
) -> Result<Result<(), Limited>, Unavailable> {
    let scopes = meter.scopes(client, unit);
    let limits: Vec<(String, Rate)> = scopes
        .iter()
        .map(|(scope, rate)| (shared_key(scope, unit), *rate))
        .collect();
    match shared.take_all(&limits, cost).await? {
        Ok(snapshots) => {
            for ((key, rate), snapshot) in limits.into_iter().zip(snapshots) {
                quota.note(unit, snapshot);
                quota.took_shared(shared, key, rate, cost);
            }
            Ok(Ok(()))
        }
        Err((index, denied)) => {
            quota.note(unit, denied.snapshot);
            let (scope, rate) = scopes.into_iter().nth(index).ok_or(Unavailable)?;
            Ok(Err(Limited {
                unit,
                scope,
                rate,
                denied,
            }))
        }
    }
}

/// Whether `cost` of `unit` could be taken now, taking nothing (shared state first).
async fn check(cx: &mut Context<'_>, unit: Unit, cost: u64) -> Result<(), Limited> {
    let policy = &cx.runtime.policy;
    let client = cx.admitted.client;
    if let Some(shared) = &policy.shared {
        let mut answered = true;
        for (scope, rate) in policy.meter.scopes(client, unit) {
            match shared.check(&shared_key(&scope, unit), rate, cost).await {
                Ok(Ok(_)) => {}
                Ok(Err(denied)) => {
                    return Err(Limited {
                        unit,
                        scope,
                        rate,
                        denied,
                    })
                }
                Err(Unavailable) => {
                    answered = false;
                    break;
                }
            }
        }
        if answered {
            return Ok(());
        }
        shared.note_fallback();
    }
    policy.meter.check(client, unit, cost)
}

fn limit(cx: &mut Context<'_>, limited: Limited) -> Stop {
    cx.trace.record.limited = Some(limited.unit);
    Refusal::Limited(Box::new(limited)).into()
}

/// permit: the client may use this route and this model.
pub fn permit(cx: &Context<'_>, route: &RouteConfig, payload: &Payload) -> Step<()> {
    let Some(client) = cx.admitted.client.map(|c| &cx.runtime.policy.clients[c]) else {
        return Ok(());
    };
    if let Some(routes) = &client.routes {
        if !route.name.as_ref().is_some_and(|n| routes.contains(n)) {
            return Err(Refusal::NotAllowed(format!(
                "client `{}` may not use route `{}`",
                client.name,
                route.label()
            ))
            .into());
        }
    }
    if let Some(models) = &client.models {
        let model = payload.model().unwrap_or_default();
        if !models.matches(model) {
            return Err(Refusal::NotAllowed(format!(
                "client `{}` may not use model `{model}`",
                client.name
            ))
            .into());
        }
    }
    Ok(())
}

/// meter_units: the speech characters or uploaded bytes taken from the limits (a cache
/// hit's characters only with `charge_hits`).
pub async fn meter_units(cx: &mut Context<'_>, api: &Api, payload: &Payload) -> Step<()> {
    let unit = match api.operation {
        Operation::Speech => Unit::TtsChars,
        Operation::Transcriptions | Operation::Translations => Unit::SttBytes,
        Operation::Other => return Ok(()),
    };
    let meter = &cx.runtime.policy.meter;
    let client = cx.admitted.client;
    if !meter.limits(client, unit) {
        return Ok(());
    }
    let cost = payload.billed_units();
    match take(cx, unit, cost).await {
        Ok(()) => {
            cx.admitted.charged_units = true;
            Ok(())
        }
        Err(limited) => {
            // All or none: the request itself is not counted either.
            cx.admitted.quota.refund();
            Err(limit(cx, limited))
        }
    }
}

/// What the cache made of a speech request.
pub enum Lookup {
    /// Not cached: go upstream.
    Pass,
    /// The first of identical misses: go upstream, and its 2xx answer fills the cache
    /// and feeds those waiting.
    Lead(Flight),
}

/// lookup: a speech request the cache can answer is answered here (a hit, or the same
/// answer another identical request is fetching now); otherwise it goes upstream.
pub async fn lookup(
    cx: &mut Context<'_>,
    api: &Api,
    head: &Parts,
    route: &RouteConfig,
    payload: &Payload,
) -> Step<Lookup> {
    let Some(cache) = &cx.runtime.policy.cache else {
        return Ok(Lookup::Pass);
    };
    if api.operation != Operation::Speech {
        return Ok(Lookup::Pass);
    }
    let Payload::Json(json) = payload else {
        return Ok(Lookup::Pass);
    };
    if !route.cache || bypassed(&head.headers) {
        cx.admitted.cache = Some("bypass");
        return Ok(Lookup::Pass);
    }
    let key = speech_key(route, json.object.iter());
    let store = cache.store.clone();
    let charge_hits = cache.charge_hits;
    if let Some(entry) = store.get(&key).await {
        let answer = hit(cx, entry.content_type.clone(), full(entry.body.clone()));
        return hit_answered(cx, api, route, payload, charge_hits, answer).await;
    }
    // Another instance may have it: a hit there fills this one's memory.
    if let Some(shared) = &cx.runtime.policy.shared {
        match shared.cache_get(&key).await {
            Ok(Some((content_type, body))) => {
                let entry = Entry {
                    content_type: content_type.clone(),
                    body: body.clone(),
                    stored_at: std::time::SystemTime::now(),
                };
                store.insert(key, entry);
                let answer = hit(cx, content_type, full(body));
                return hit_answered(cx, api, route, payload, charge_hits, answer).await;
            }
            Ok(None) => {}
            Err(Unavailable) => shared.note_fallback(),
        }
    }
    match store.join(key) {
        Join::Leader(flight) => {
            cx.admitted.cache = Some("miss");
            Ok(Lookup::Lead(flight))
        }
        Join::Follower(waiter) => match waiter.wait().await {
            Some((content_type, body)) => {
                let answer = hit(cx, content_type, body);
                hit_answered(cx, api, route, payload, charge_hits, answer).await
            }
            // The first one got no answer worth sharing: this one tries for itself.
            None => {
                cx.admitted.cache = Some("miss");
                Ok(Lookup::Pass)
            }
        },
    }
}

/// A hit is still a request of its client: its characters are charged with
/// `charge_hits`, and what it saved is counted.
async fn hit_answered(
    cx: &mut Context<'_>,
    api: &Api,
    route: &RouteConfig,
    payload: &Payload,
    charge_hits: bool,
    answer: Response<ProxyBody>,
) -> Step<Lookup> {
    if charge_hits {
        Box::pin(meter_units(cx, api, payload)).await?;
    }
    cx.admitted.cache = Some("hit");
    let runtime = cx.runtime;
    if let Some((price, _)) = priced_upstream(&runtime.upstreams, route, payload.model()) {
        let saved = cost::speech(&price, payload.billed_units());
        cx.trace.record.avoided = Some((nano_dollars(saved), "cache"));
    }
    Err(Stop::Streamed(Box::new(answer)))
}

fn hit(cx: &mut Context<'_>, content_type: HeaderValue, body: ProxyBody) -> Response<ProxyBody> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(REQUEST_ID_HEADER_NAME.clone(), cx.id.clone());
    response
}

/// `Cache-Control: no-cache` or `no-store` from the client: neither read nor stored.
fn bypassed(headers: &HeaderMap) -> bool {
    headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|d| {
                let d = d.trim();
                d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store")
            })
        })
    })
}

/// The request as the client meant it: its fields with the route's `set` applied and the
/// API's defaults filled in, in key order; numbers compared by value (`1` is `1.0`). The
/// upstream's own rewrites (model and voice maps, its dialect) come later and are not in
/// it, so a hit does not depend on which upstream answered first.
pub fn speech_key<'a>(
    route: &RouteConfig,
    fields: impl Iterator<Item = (&'a String, &'a Value)>,
) -> Key {
    let mut all: Vec<(&str, Value)> = fields
        .filter(|(k, _)| !route.set.iter().any(|(s, _)| s == *k))
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    all.extend(route.set.iter().map(|(k, v)| (k.as_str(), v.to_json())));
    for (key, default) in [
        ("response_format", Value::from("mp3")),
        ("speed", Value::from(1.0)),
        ("stream_format", Value::from("audio")),
    ] {
        if !all.iter().any(|(k, _)| *k == key) {
            all.push((key, default));
        }
    }
    all.sort_by(|a, b| a.0.cmp(b.0));
    let mut hash = Sha256::new();
    hash.update(b"voxgate speech v1\n");
    for (key, value) in all {
        // An integer is written as the float it equals when that is exact (`1` as `1.0`);
        // a larger one stays as it is, so two seeds never meet.
        let value = match value.as_i64() {
            Some(n) if n.unsigned_abs() <= 1 << 53 => Value::from(n as f64),
            _ => value,
        };
        // The name JSON-encoded like the value: no name can pass for `a":…` lines.
        hash.update(Value::from(key).to_string().as_bytes());
        hash.update(b":");
        hash.update(value.to_string().as_bytes());
        hash.update(b"\n");
    }
    hash.finalize().into()
}

/// The first upstream of the route that charges for `model`, and its price.
fn priced_upstream(
    upstreams: &[Arc<Upstream>],
    route: &RouteConfig,
    model: Option<&str>,
) -> Option<(cost::Price, usize)> {
    route.to.iter().find_map(|&i| {
        let price = upstreams.get(i)?.config.price.price(model)?;
        Some((price, i))
    })
}

/// price: what the answer of upstream `index` is estimated to cost, and what answering
/// locally saved against the route's priced upstream. An upload's minutes are read from
/// its header only when some price needs them.
pub async fn price(
    cx: &mut Context<'_>,
    api: &Api,
    route: &RouteConfig,
    index: usize,
    payload: &Payload,
) {
    let runtime = cx.runtime;
    let model = payload.model();
    let charged = runtime.upstreams[index].config.price.price(model);
    let reference = match charged {
        Some(_) => None,
        None => priced_upstream(&runtime.upstreams, route, model).map(|(p, _)| p),
    };
    if charged.is_none() && reference.is_none() {
        return;
    }
    let units = payload.billed_units();
    let dollars = |price: &cost::Price, minutes: Option<std::time::Duration>| match api.operation {
        Operation::Speech => cost::speech(price, units),
        Operation::Transcriptions | Operation::Translations => cost::upload(price, minutes, units),
        Operation::Other => 0.0,
    };
    let duration = match api.operation {
        Operation::Transcriptions | Operation::Translations => upload_duration(payload).await,
        _ => None,
    };
    let record = &mut cx.trace.record;
    if let Some(price) = charged {
        record.cost_nanos = nano_dollars(dollars(&price, duration));
    }
    if let Some(price) = reference {
        record.avoided = Some((nano_dollars(dollars(&price, duration)), "local"));
    }
}

/// The uploaded file's duration, from the first and last bytes of its `file` part.
async fn upload_duration(payload: &Payload) -> Option<std::time::Duration> {
    let Payload::Form(form) = payload else {
        return None;
    };
    let range = form.parts.iter().find_map(|p| match &p.value {
        PartValue::File(range) if p.name == "file" => Some(range.clone()),
        _ => None,
    })?;
    let total = range.end - range.start;
    let head_end = range.start + total.min(audio::HEAD_BYTES as u64);
    let tail_start = range.end - total.min(audio::TAIL_BYTES as u64);
    let head = read(&form.replay, range.start..head_end).await?;
    let tail = read(&form.replay, tail_start..range.end).await?;
    // The header is the client's word: no audio is below 1 kbit/s, so a header claiming
    // hours in a few bytes is priced as what the bytes could hold.
    let most = std::time::Duration::from_secs_f64(total as f64 * 8.0 / 1000.0);
    audio::duration(&head, &tail, total).map(|d| d.min(most))
}

async fn read(
    replay: &Arc<crate::request::replay::Replay>,
    range: std::ops::Range<u64>,
) -> Option<Vec<u8>> {
    use futures_util::StreamExt;
    let mut out = Vec::with_capacity((range.end - range.start) as usize);
    let mut stream = std::pin::pin!(replay.stream(range));
    while let Some(chunk) = stream.next().await {
        let chunk: Bytes = chunk.ok()?;
        out.extend_from_slice(&chunk);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::payload::JsonObject;

    fn key_of(route: &RouteConfig, json: &str) -> Key {
        let object = JsonObject::parse(json.as_bytes()).unwrap().unwrap();
        speech_key(route, object.iter())
    }

    #[test]
    fn the_key_is_the_request_as_meant_and_cannot_be_forged() {
        let config = Config::from_toml(
            "[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nto = [\"a\"]\n[[routes]]\nto = [\"a\"]\nset = { model = \"tts-1-hd\" }\n",
            "t.toml",
        )
        .unwrap();
        let (plain, set) = (&config.routes[0], &config.routes[1]);
        let base = key_of(plain, r#"{"model":"m","voice":"alloy","input":"hi"}"#);
        // Defaults written out, numbers by value, key order: the same request.
        let spelled = r#"{"input":"hi","speed":1,"response_format":"mp3","voice":"alloy","model":"m","stream_format":"audio"}"#;
        assert_eq!(key_of(plain, spelled), base);
        assert_eq!(
            key_of(
                plain,
                r#"{"model":"m","voice":"alloy","input":"hi","speed":1.0}"#
            ),
            base
        );
        // A name crafted to look like two fields is one odd field.
        let forged = r#"{"input":"hi","voice":"alloy","instructions\":\"calm\"\n\"model":"m"}"#;
        assert_ne!(key_of(plain, forged), base);
        // Large integers are not rounded into each other.
        let seed = |n: &str| {
            key_of(
                plain,
                &format!(r#"{{"model":"m","voice":"a","input":"x","seed":{n}}}"#),
            )
        };
        assert_ne!(seed("9007199254740993"), seed("9007199254740992"));
        // The route's `set` is part of what the client meant.
        assert_ne!(
            key_of(set, r#"{"model":"m","voice":"alloy","input":"hi"}"#),
            base
        );
        assert_eq!(
            key_of(set, r#"{"model":"m","voice":"alloy","input":"hi"}"#),
            key_of(
                plain,
                r#"{"model":"tts-1-hd","voice":"alloy","input":"hi"}"#
            )
        );
    }
}
