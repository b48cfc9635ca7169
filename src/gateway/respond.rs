//! The respond phase: the chosen upstream's answer made into the client's.
//!
//! Hop-by-hop headers go, the request id and the upstream's name are set, text formats get
//! their right type, an engine's error body is rewritten into OpenAI's shape, and a stream
//! the engine cannot make itself is made here ([`crate::engine::answers`]). The body is
//! streamed through with an idle timeout; nothing is buffered but error bodies and a
//! transcription converted to events.

use http::{header, HeaderValue, Response};
use http_body_util::BodyExt;

use crate::body::ProxyBody;
use crate::body::{full, IdleTimeout};
use crate::engine::answers;
use crate::engine::dialect::Convert;
use crate::gateway::forward::{Exhausted, Served};
use crate::gateway::policy::{self, Lookup};
use crate::gateway::{Api, Context, GatewayError, Step, Stop};
use crate::request::payload::Payload;
use crate::route::RouteConfig;
use crate::upstream::{strip_hop_by_hop, Upstream, REQUEST_ID_HEADER_NAME, UPSTREAM_HEADER_NAME};

/// respond: the client's answer made from `served`, to be streamed; an answer voxgate
/// had to read whole (an error body rewritten, a transcription made events) stops here
/// instead. `payload` is taken so that its memory goes back before the answer streams.
pub async fn respond(
    cx: &mut Context<'_>,
    api: &Api,
    route: &RouteConfig,
    served: Served,
    payload: Payload,
    cache: Lookup,
) -> Step<Response<ProxyBody>> {
    let Served {
        index,
        response,
        convert,
    } = served;
    let runtime = cx.runtime;
    let upstream = &runtime.upstreams[index];
    let (id, record) = (&cx.id, &mut cx.trace.record);
    let (mut parts, body) = response.into_parts();
    // Whether the answer's end can be told from a broken connection (a length, chunks,
    // HTTP/2's end of stream): only such an answer may fill the cache.
    let delimited = parts.version == http::Version::HTTP_2
        || parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);
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
    record.upstream_index = Some(index as u32);
    let idle = upstream.config.idle_timeout;
    answers::fix_text_content_type(
        api.operation,
        payload.response_format(),
        parts.status,
        &mut parts.headers,
    );
    if parts.status.is_success() {
        policy::price(cx, api, route, index, &payload).await;
    }
    // The request body is no longer needed: give its memory back before streaming.
    drop(payload);
    if answers::rewritable_error(parts.status, &parts.headers) {
        if let Some(error) = answers::openai_error_body(parts.status, body, idle).await {
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Err(Stop::answered(Response::from_parts(parts, full(error))));
        }
        // Not readable in time: the connection is gone with the body.
        return Err(unreadable(upstream, "error body unreadable").into());
    }
    let converting = parts.status.is_success() && convert != Convert::None;
    if converting {
        answers::sse_headers(&mut parts.headers);
    }
    let body = match convert {
        Convert::SpeechSse if converting => answers::speech_events(IdleTimeout::new(body, idle)),
        Convert::TranscriptSse if converting => {
            let events = answers::transcript_events(body, idle)
                .await
                .map_err(|why| Stop::from(unreadable(upstream, &why)))?;
            return Err(Stop::answered(Response::from_parts(parts, full(events))));
        }
        _ => IdleTimeout::new(body, idle).boxed(),
    };
    // The first of identical speech requests: its complete answer fills the cache, and
    // those waiting for it get it as it comes.
    // Only a whole 200 in plain bytes: not a range, not a compressed body (a hit would
    // lose its Content-Encoding), not one whose end cannot be told from a break.
    let plain = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_none_or(|e| e.as_bytes().eq_ignore_ascii_case(b"identity"));
    let keepable = parts.status == http::StatusCode::OK && plain && delimited;
    let body = match (cache, keepable) {
        (Lookup::Lead(flight), true) => match parts.headers.get(header::CONTENT_TYPE) {
            Some(content_type) => flight.answered(content_type.clone(), body),
            None => body,
        },
        _ => body,
    };
    Ok(Response::from_parts(parts, body))
}

/// An upstream answered, but its answer could not be read or made sense of.
fn unreadable(upstream: &Upstream, why: &str) -> GatewayError {
    GatewayError::Upstreams(Exhausted::Unreadable(format!("{}: {why}", upstream.name())))
}
