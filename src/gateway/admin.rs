//! voxgate's own endpoints: `/health` (and `/`), `/ready`, `/status`, `/metrics` and
//! `POST /reload`, answered without an upstream. With `server.admin_listen` set, `/ready`,
//! `/status` and `/metrics` are served on the admin listener only (as is the status page,
//! `ui.rs`, which reads them); `/reload` is never served on the API listener.

use std::time::{SystemTime, UNIX_EPOCH};

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, ProxyBody};
use crate::gateway::reload::{Reloaded, Reloads};
use crate::gateway::{Gateway, Runtime};
use crate::telemetry::metrics::{State, CONTENT_TYPE};
use crate::telemetry::recent_errors::RecentErrors;

pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<ProxyBody> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `/health` and `/`: the process is up and serving.
pub fn health() -> Response<ProxyBody> {
    json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// `/ready`: every route must have an upstream that can take a request.
pub fn readiness(runtime: &Runtime) -> Response<ProxyBody> {
    let upstreams = &runtime.upstreams;
    let reasons: Vec<String> = runtime
        .router
        .routes()
        .iter()
        .filter(|route| !route.to.iter().any(|&i| upstreams[i].pool.is_up()))
        .map(|route| {
            let names: Vec<&str> = route.to.iter().map(|&i| upstreams[i].name()).collect();
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

/// A time as seconds since the Unix epoch and as RFC 3339 text.
fn timestamp(at: SystemTime) -> serde_json::Value {
    let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    serde_json::json!({
        "unix": seconds,
        "utc": humantime::format_rfc3339_seconds(at).to_string(),
    })
}

/// `POST /reload`: 200 with what changed, or 422 with every mistake in the file (the
/// configuration serving is then unchanged).
pub fn reloaded(result: Result<Reloaded, String>) -> Response<ProxyBody> {
    match result {
        Ok(r) => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "reloaded": true,
                "upstreams": {
                    "kept": r.kept, "changed": r.changed, "added": r.added, "removed": r.removed,
                },
                "needs_restart": r.needs_restart,
            }),
        ),
        Err(e) => json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({ "reloaded": false, "error": e }),
        ),
    }
}

/// `/status`: the routes and their chains, the pools as they are now, where the
/// configuration came from, and the last requests that went wrong. Shows upstream URLs,
/// never keys.
pub fn status(
    runtime: &Runtime,
    reloads: &Reloads,
    recent_errors: &RecentErrors,
) -> Response<ProxyBody> {
    let upstreams: Vec<serde_json::Value> = runtime
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
    let history = reloads.history();
    let config = serde_json::json!({
        "path": reloads.source().path.as_ref().map(|p| p.display().to_string()),
        "loaded_at": timestamp(history.loaded_at),
        "reloads": { "succeeded": history.succeeded, "failed": history.failed },
        "last_reload_error": history.last_error.map(|(at, message)| serde_json::json!({
            "at": timestamp(at),
            "message": message,
        })),
    });
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "config": config,
            "routes": routes(runtime),
            "upstreams": upstreams,
            "policy": runtime.policy.status(),
            "recent_errors": recent_errors.to_json(),
        }),
    )
}

/// Each route in file order: its line (the metrics' `route="line:N"`), its match in
/// words, its upstreams in the order they are tried, and what sends a request on.
fn routes(runtime: &Runtime) -> Vec<serde_json::Value> {
    let upstreams = &runtime.upstreams;
    runtime
        .router
        .routes()
        .iter()
        .map(|route| {
            let chain: Vec<&str> = route
                .to
                .iter()
                .filter_map(|&i| upstreams.get(i).map(|u| u.name()))
                .collect();
            let fallback = &route.fallback;
            serde_json::json!({
                "line": route.line,
                "name": route.name,
                "match": route.matcher.to_string(),
                "to": chain,
                "fallback_on": {
                    "connect": fallback.connect,
                    "timeout": fallback.timeout,
                    "reset": fallback.reset,
                    "statuses": fallback.statuses,
                },
                "deadline_ms": route.deadline.map(|d| d.as_millis() as u64),
            })
        })
        .collect()
}

/// `/metrics`: the page, in Prometheus's text exposition format.
pub fn metrics(page: String) -> Response<ProxyBody> {
    let mut response = Response::new(full(page));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

impl Gateway {
    /// The metrics page, with `runtime`'s rows and pools (the configuration serving now).
    pub fn metrics_page(&self, runtime: &Runtime) -> String {
        let history = self.reloads.history();
        let state = State {
            in_flight: self.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            replay_memory: self.budget.used(),
            spilled: self.budget.spilled(),
            reloads_succeeded: history.succeeded,
            reloads_failed: history.failed,
            loaded_at: history.loaded_at,
            cache: runtime.policy.cache.as_ref().map(|c| c.store.stats()),
            shared: runtime.policy.shared.as_ref().map(|s| s.status()),
        };
        self.metrics
            .render(&runtime.labels, &runtime.upstreams, state)
    }
}
