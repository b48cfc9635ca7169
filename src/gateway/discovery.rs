//! Discovery: `GET /v1/models` and `GET /v1/audio/voices`, answered from every upstream
//! the routes can reach.
//!
//! A client pointed at voxgate asks it what models and voices exist. The answer merges,
//! for each routed upstream in route order: the live list of an upstream whose kind lists
//! them (OpenAI's and Kokoro's `/v1/models`, Kokoro's `/v1/audio/voices`) if it answers
//! within [`LIST_TIMEOUT`], the models and voices its kind or its own config names, the
//! names its maps accept, and the literal models the routes match. An upstream that is down
//! or slow leaves its static names in the list; nothing here fails the request.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};

use crate::route::Operation;
use crate::route::RouteConfig;
use crate::upstream::{ClientRequest, Upstream};

/// How long a live list may take.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest list body read.
const MAX_LIST: usize = 1024 * 1024;

/// The routed upstreams, each once, in route order; with `speech_only`, only those a
/// speech request can reach.
pub(crate) fn routed(routes: &[RouteConfig], speech_only: bool) -> Vec<usize> {
    let mut out = Vec::new();
    for route in routes {
        let reaches_speech = route
            .matcher
            .endpoints
            .as_ref()
            .is_none_or(|e| e.contains(&Operation::Speech));
        if speech_only && !reaches_speech {
            continue;
        }
        for &i in &route.to {
            if !out.contains(&i) {
                out.push(i);
            }
        }
    }
    out
}

/// The client's headers for a live list request: they carry its key (passed on or
/// replaced as the upstream is configured), but not its Accept-Encoding: voxgate reads
/// this answer itself.
pub(crate) fn list_headers(client: &HeaderMap) -> HeaderMap {
    let mut headers = client.clone();
    headers.remove(http::header::ACCEPT_ENCODING);
    headers.insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    );
    headers
}

/// GETs `path` from one available endpoint of `upstream`, as JSON.
async fn fetch(
    upstream: &Upstream,
    path: &str,
    headers: &HeaderMap,
    request_id: &HeaderValue,
) -> Option<Value> {
    let picked = upstream.pool.pick(false)?;
    let headers = list_headers(headers);
    let timeout = LIST_TIMEOUT.min(upstream.config.response_timeout);
    let read = async {
        let response = upstream
            .send(
                picked.index,
                timeout,
                &ClientRequest {
                    method: &Method::GET,
                    path_and_query: path,
                    headers: &headers,
                    request_id,
                },
                Vec::new,
            )
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = Limited::new(response.into_body(), MAX_LIST)
            .collect()
            .await
            .ok()?;
        serde_json::from_slice(&body.to_bytes()).ok()
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()
}

/// The names in a list answer: `data` or `voices`, or the answer itself if it is a list;
/// each item a string or an object with an `id`, `voice_id` or `name`.
fn names(list: &Value) -> Vec<String> {
    let items = list
        .get("data")
        .or_else(|| list.get("voices"))
        .unwrap_or(list);
    let Some(items) = items.as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => ["id", "voice_id", "name"]
                .iter()
                .find_map(|k| o.get(*k)?.as_str().map(str::to_string)),
            _ => None,
        })
        .collect()
}

fn push_unique(list: &mut Vec<(String, String)>, name: &str, owner: &str) {
    if !name.is_empty() && !list.iter().any(|(n, _)| n == name) {
        list.push((name.to_string(), owner.to_string()));
    }
}

/// What is listed: models or voices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Models,
    Voices,
}

/// Each routed upstream's names of one listing, merged in route order, each name once with
/// the first upstream that has it: the live list, then the kind's names, then the map's.
async fn merged(
    listing: Listing,
    upstreams: &[Arc<Upstream>],
    routes: &[RouteConfig],
    headers: &HeaderMap,
    request_id: &HeaderValue,
) -> Vec<(String, String)> {
    let reached = routed(routes, listing == Listing::Voices);
    let live = futures_util::future::join_all(reached.iter().map(|&i| async move {
        let upstream = &upstreams[i];
        let dialect = &upstream.config.dialect;
        let path = match listing {
            Listing::Models => &dialect.lists_models,
            Listing::Voices => &dialect.lists_voices,
        };
        match path {
            Some(path) => fetch(upstream, path, headers, request_id).await,
            None => None,
        }
    }))
    .await;
    let mut list = Vec::new();
    for (&i, live) in reached.iter().zip(live) {
        let config = &upstreams[i].config;
        let (named, map) = match listing {
            Listing::Models => (&config.dialect.models, &config.model_map),
            Listing::Voices => (&config.dialect.voices, &config.voice_map),
        };
        for name in live.as_ref().map(names).unwrap_or_default() {
            push_unique(&mut list, &name, &config.name);
        }
        for name in named {
            push_unique(&mut list, name, &config.name);
        }
        let mut mapped: Vec<&String> = map.keys().collect();
        mapped.sort();
        for name in mapped {
            push_unique(&mut list, name, &config.name);
        }
    }
    list
}

/// `GET /v1/models` or `GET /v1/audio/voices`: an OpenAI model list of everything the
/// routes can reach, or the voices speech requests can use, as Kokoro lists them.
pub async fn answer(
    listing: Listing,
    upstreams: &[Arc<Upstream>],
    routes: &[RouteConfig],
    headers: &HeaderMap,
    request_id: &HeaderValue,
) -> Value {
    let mut list = merged(listing, upstreams, routes, headers, request_id).await;
    match listing {
        Listing::Models => {
            for route in routes {
                let owner = route.to.first().map_or("voxgate", |&i| upstreams[i].name());
                if let Some(pattern) = &route.matcher.model {
                    for name in pattern.literals() {
                        push_unique(&mut list, name, owner);
                    }
                }
            }
            let data: Vec<Value> = list
                .into_iter()
                .map(|(id, owner)| {
                    json!({ "id": id, "object": "model", "created": 0, "owned_by": owner })
                })
                .collect();
            json!({ "object": "list", "data": data })
        }
        Listing::Voices => {
            let voices: Vec<String> = list.into_iter().map(|(name, _)| name).collect();
            json!({ "voices": voices })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_names_are_read_from_every_shape() {
        let openai =
            json!({ "object": "list", "data": [{ "id": "tts-1" }, { "id": "whisper-1" }] });
        assert_eq!(names(&openai), ["tts-1", "whisper-1"]);
        let kokoro = json!({ "voices": ["af_sky", "am_adam"] });
        assert_eq!(names(&kokoro), ["af_sky", "am_adam"]);
        let objects = json!([{ "voice_id": "a" }, { "name": "b" }, 3]);
        assert_eq!(names(&objects), ["a", "b"]);
        assert!(names(&json!({ "unexpected": true })).is_empty());
    }
}
