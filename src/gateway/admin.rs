//! voxgate's own endpoints: `/health` (and `/`), `/ready` and `/status`, answered without
//! an upstream. With `server.admin_listen` set, `/ready` and `/status` are served on the
//! admin listener only.

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{full, ProxyBody};
use crate::gateway::Runtime;

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

/// `/status`: the pools as they are now. Shows upstream URLs, never keys.
pub fn status(runtime: &Runtime) -> Response<ProxyBody> {
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
    json_response(
        StatusCode::OK,
        &serde_json::json!({ "upstreams": upstreams }),
    )
}
