//! Upstream dialects: making every engine's answer read like OpenAI's.
//!
//! "OpenAI-compatible" servers differ where it hurts a client: Kokoro answers errors as
//! `{"detail": …}`, whisper.cpp as `{"error": "…"}` or plain text, and whisper.cpp sends
//! text transcriptions as `text/html`. The SDKs turn an OpenAI-shaped error body into a
//! readable exception and anything else into a bare status, so error bodies are rewritten
//! into OpenAI's shape (status kept, message carried over), and text formats get
//! `text/plain`. Only small error bodies with a Content-Length are rewritten; everything
//! else passes through untouched.
//!
//! Streams an engine cannot produce are made here from what it can: Kokoro's raw audio
//! becomes `speech.audio.delta` events chunk by chunk as it arrives ([`speech_events`]),
//! and whisper.cpp's JSON answer becomes `transcript.text.delta` and
//! `transcript.text.done` events ([`transcript_events`]).

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, BodyStream, Limited, StreamBody};

use crate::body::{BoxError, IdleTimeout, ProxyBody};
use crate::engine::errors::message_of;
use crate::error::ApiError;
use crate::route::Operation;

/// Error bodies up to this size are read and rewritten.
const MAX_ERROR_BODY: u64 = 64 * 1024;

/// `text`, `srt` and `vtt` transcriptions are text, whatever the upstream calls them.
pub fn fix_text_content_type(
    endpoint: Operation,
    response_format: Option<&str>,
    status: StatusCode,
    headers: &mut HeaderMap,
) {
    let transcribing = matches!(
        endpoint,
        Operation::Transcriptions | Operation::Translations
    );
    let textual = matches!(response_format, Some("text" | "srt" | "vtt"));
    let html = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/html"));
    if transcribing && textual && status.is_success() && html {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
}

/// Whether an error response is small enough, and declared so, to be read and rewritten.
pub fn rewritable_error(status: StatusCode, headers: &HeaderMap) -> bool {
    let small = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n <= MAX_ERROR_BODY);
    let compressed = headers.contains_key(header::CONTENT_ENCODING);
    (status.is_client_error() || status.is_server_error()) && small && !compressed
}

/// Reads an error body and returns it in OpenAI's shape: unchanged if it already is,
/// rewritten if not. `None` if it could not be read in time.
pub async fn openai_error_body<B>(status: StatusCode, body: B, wait: Duration) -> Option<Bytes>
where
    B: Body<Data = Bytes>,
{
    let bytes = tokio::time::timeout(wait, body.collect())
        .await
        .ok()?
        .ok()?
        .to_bytes();
    let already = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .is_some_and(|v| v.pointer("/error/message").is_some_and(|m| m.is_string()));
    if already {
        return Some(bytes);
    }
    let message = message_of(&bytes).unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("upstream error")
            .to_string()
    });
    let kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    Some(ApiError::new(status, kind, message).body())
}

/// A transcription's JSON answer up to this size is turned into events.
const MAX_TRANSCRIPT: usize = 4 * 1024 * 1024;

/// Response headers for a stream voxgate makes: SSE, no length, no caching.
pub fn sse_headers(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_ENCODING);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

fn event(value: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// Raw audio as OpenAI's speech events: one `speech.audio.delta` per chunk, sent as the
/// chunk arrives, then `speech.audio.done`. A body that breaks ends the stream with the
/// error, without `done`, so the client sees a broken stream.
pub fn speech_events<B>(audio: IdleTimeout<B>) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let deltas = BodyStream::new(audio).filter_map(|frame| async move {
        match frame {
            Err(e) => Some(Err(e)),
            Ok(frame) => match frame.into_data() {
                Ok(data) if data.is_empty() => None,
                Ok(data) => {
                    let audio = base64::engine::general_purpose::STANDARD.encode(&data);
                    let value = serde_json::json!({ "type": "speech.audio.delta", "audio": audio });
                    Some(Ok(Frame::data(event(&value))))
                }
                Err(_) => None, // trailers
            },
        }
    });
    let done = serde_json::json!({
        "type": "speech.audio.done",
        "usage": { "input_tokens": 0, "output_tokens": 0, "total_tokens": 0 },
    });
    let done = stream::once(async move { Ok::<_, BoxError>(Frame::data(event(&done))) });
    BodyExt::boxed(StreamBody::new(deltas.chain(done)))
}

/// Reads an engine's JSON transcription and returns it as OpenAI's transcript events.
pub async fn transcript_events<B>(body: B, idle: Duration) -> Result<Bytes, String>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let limited = Limited::new(IdleTimeout::new(body, idle), MAX_TRANSCRIPT);
    let bytes = limited
        .collect()
        .await
        .map_err(|e| format!("transcription unreadable: {e}"))?
        .to_bytes();
    let text = match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(v) => v
            .get("text")
            .and_then(|t| t.as_str())
            .map(|t| t.trim().to_string())
            .ok_or("transcription JSON has no `text`")?,
        Err(_) => std::str::from_utf8(&bytes)
            .map_err(|_| "transcription is neither JSON nor text")?
            .trim()
            .to_string(),
    };
    let mut out = Vec::new();
    if !text.is_empty() {
        let delta = serde_json::json!({ "type": "transcript.text.delta", "delta": text });
        out.extend_from_slice(&event(&delta));
    }
    let done = serde_json::json!({ "type": "transcript.text.done", "text": text });
    out.extend_from_slice(&event(&done));
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_text_transcriptions_become_plain_text() {
        let html = || {
            let mut h = HeaderMap::new();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            h
        };
        let mut h = html();
        fix_text_content_type(
            Operation::Transcriptions,
            Some("text"),
            StatusCode::OK,
            &mut h,
        );
        assert_eq!(h[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        let mut h = html();
        fix_text_content_type(
            Operation::Transcriptions,
            Some("json"),
            StatusCode::OK,
            &mut h,
        );
        assert_eq!(
            h[header::CONTENT_TYPE],
            "text/html; charset=utf-8",
            "not a text format"
        );
        let mut h = html();
        fix_text_content_type(Operation::Speech, Some("text"), StatusCode::OK, &mut h);
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
    }

    #[test]
    fn only_small_declared_uncompressed_errors_are_rewritten() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("80"));
        assert!(rewritable_error(StatusCode::BAD_REQUEST, &h));
        assert!(!rewritable_error(StatusCode::OK, &h));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999999"));
        assert!(!rewritable_error(StatusCode::BAD_REQUEST, &h));
        h.remove(header::CONTENT_LENGTH);
        assert!(
            !rewritable_error(StatusCode::BAD_REQUEST, &h),
            "chunked: passed through"
        );
    }
}
