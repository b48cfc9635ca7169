//! Scripted upstreams that behave like the real engines in the ways that matter to a
//! client (../shared/REFERENCE.md §3): their paths, their refusals, their error bodies
//! and their content types. Each records what it received, like any [`Scripted`].

use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};

use super::{Received, Reply, Scripted};

/// The audio a Kokoro-like upstream streams for every speech request.
/// Whole 16-bit samples, as a client decoding PCM expects.
pub const KOKORO_CHUNKS: [&[u8]; 3] = [b"kokoro-pcm-01;", b"kokoro-pcm-02;", b"kokoro-pcm-03;"];

/// The audio an OpenAI-like upstream answers.
pub const OPENAI_AUDIO: &[u8] = b"openai-pcm";

/// The text every transcribing engine here hears.
pub const HEARD: &str = "hello world";

/// The value of a text part of a multipart body (enough for scripted engines).
pub fn form_text(received: &Received, name: &str) -> Option<String> {
    let body = String::from_utf8_lossy(&received.body);
    let marker = format!("name=\"{name}\"\r\n");
    // From the end of the Content-Disposition line: other part headers may follow.
    let start = body.find(&marker)? + marker.len() - 2;
    let rest = &body[start..];
    let value_start = rest.find("\r\n\r\n")? + 4;
    let rest = &rest[value_start..];
    let end = rest.find("\r\n--")?;
    Some(rest[..end].to_string())
}

/// Every text part name of a multipart body, in order.
pub fn form_names(received: &Received) -> Vec<String> {
    let body = String::from_utf8_lossy(&received.body);
    body.match_indices("name=\"")
        // Not the end of `filename="`.
        .filter(|(i, _)| *i == 0 || !body.as_bytes()[i - 1].is_ascii_alphabetic())
        .filter_map(|(i, m)| {
            let rest = &body[i + m.len()..];
            rest.find('"').map(|end| rest[..end].to_string())
        })
        .collect()
}

fn kokoro_error(status: u16, kind: &str, message: &str) -> Reply {
    Reply::json(
        status,
        json!({ "detail": { "error": kind, "message": message, "type": "invalid_request_error" } }),
    )
}

/// Kokoro-FastAPI: `/health`, `/v1/models`, `/v1/audio/voices`; speech with its models and
/// voices (OpenAI names aliased), voice objects refused with FastAPI's 422, audio streamed
/// in chunks; `stream_format` ignored.
pub async fn kokoro() -> Scripted {
    Scripted::start(|r: &Received| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/health") => Reply::json(200, json!({ "status": "healthy" })),
        ("GET", "/v1/models") => Reply::json(
            200,
            json!({ "object": "list", "data": [
                { "id": "kokoro", "object": "model", "created": 1, "owned_by": "kokoro" },
                { "id": "tts-1", "object": "model", "created": 1, "owned_by": "kokoro" },
            ] }),
        ),
        ("GET", "/v1/audio/voices") => Reply::json(
            200,
            json!({ "voices": ["af_bella", "af_sky", "am_adam", "jf_alpha"] }),
        ),
        ("POST", "/v1/audio/speech") => {
            let Ok(body) = serde_json::from_slice::<Value>(&r.body) else {
                return kokoro_error(400, "invalid_request", "body is not JSON");
            };
            let model = body["model"].as_str().unwrap_or_default();
            if !["kokoro", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"].contains(&model) {
                return kokoro_error(400, "invalid_model", &format!("Unsupported model: {model}"));
            }
            let Some(voice) = body["voice"].as_str() else {
                return Reply::json(
                    422,
                    json!({ "detail": [{ "type": "string_type", "loc": ["body", "voice"],
                        "msg": "Input should be a valid string", "input": body["voice"] }] }),
                );
            };
            let aliased = [
                "alloy", "ash", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
            ];
            let known = voice.split('+').all(|v| {
                let name = v.split('(').next().unwrap_or_default();
                name.len() > 3 && name.as_bytes()[2] == b'_' || aliased.contains(&name)
            });
            if !known {
                return kokoro_error(
                    400,
                    "validation_error",
                    &format!("Voice '{voice}' not found"),
                );
            }
            Reply::Chunks {
                status: 200,
                content_type: "audio/pcm",
                chunks: KOKORO_CHUNKS
                    .iter()
                    .map(|c| Bytes::from_static(c))
                    .collect(),
                delay: Duration::from_millis(100),
            }
        }
        _ => Reply::json(404, json!({ "detail": "Not Found" })),
    })
    .await
}

/// whisper.cpp's server, started without `--inference-path`: `/health` and `/inference`
/// only; `model` and `stream` ignored; `text` answered as `text/html`; errors as
/// `{"error": "…"}`.
pub async fn whisper_cpp() -> Scripted {
    whisper_cpp_at("/inference").await
}

/// whisper.cpp's server started with `--inference-path {path}`: it serves that path only.
pub async fn whisper_cpp_at(inference: &'static str) -> Scripted {
    Scripted::start(
        move |r: &Received| match (r.method.as_str(), r.path.as_str()) {
            ("GET", "/health") => Reply::json(200, json!({ "status": "ok" })),
            ("POST", path) if path == inference => {
                if !form_names(r).contains(&"file".to_string()) {
                    return Reply::json(400, json!({ "error": "no 'file' field in the request" }));
                }
                let translated = form_text(r, "translate").as_deref() == Some("true");
                let text = if translated {
                    format!("{HEARD} (translated)")
                } else {
                    HEARD.to_string()
                };
                match form_text(r, "response_format").as_deref() {
                    Some("text") => Reply::ok("text/html; charset=utf-8", format!("{text}\n")),
                    Some("json") | None => Reply::json(200, json!({ "text": format!(" {text}") })),
                    Some(other) => Reply::json(
                        400,
                        json!({ "error": format!("unsupported response_format {other}") }),
                    ),
                }
            }
            _ => Reply::Full {
                status: 404,
                headers: vec![("content-type", "text/plain".to_string())],
                body: Bytes::from_static(b"File Not Found"),
            },
        },
    )
    .await
}

fn openai_error(status: u16, message: &str, param: Option<&str>) -> Reply {
    Reply::json(
        status,
        json!({ "error": { "message": message, "type": "invalid_request_error",
            "param": param, "code": null } }),
    )
}

const OPENAI_VOICES: [&str; 13] = [
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
    "shimmer", "verse",
];

/// OpenAI: wants `Bearer {key}`; refuses Kokoro voices, unknown body fields and
/// `language=auto`; `stream_format=sse` answered with speech events.
pub async fn openai(key: &'static str) -> Scripted {
    Scripted::start(move |r: &Received| {
        if r.header("authorization") != Some(&format!("Bearer {key}")) {
            return Reply::json(
                401,
                json!({ "error": { "message": "Incorrect API key provided", "type": "invalid_request_error", "param": null, "code": "invalid_api_key" } }),
            );
        }
        let gzip = r.header("accept-encoding").is_some_and(|e| e.contains("gzip"));
        match (r.method.as_str(), r.path.as_str()) {
            // OpenAI compresses when asked; these bytes stand for a gzip body.
            ("GET", "/v1/models") if gzip => Reply::Full {
                status: 200,
                headers: vec![
                    ("content-type", "application/json".to_string()),
                    ("content-encoding", "gzip".to_string()),
                ],
                body: Bytes::from_static(b"\x1f\x8b\x08\x00compressed"),
            },
            ("GET", "/v1/models") => Reply::json(
                200,
                json!({ "object": "list", "data": [
                    { "id": "gpt-4o", "object": "model", "created": 1, "owned_by": "openai" },
                    { "id": "tts-1", "object": "model", "created": 1, "owned_by": "openai" },
                    { "id": "whisper-1", "object": "model", "created": 1, "owned_by": "openai" },
                ] }),
            ),
            ("POST", "/v1/audio/speech") => {
                let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&r.body) else {
                    return openai_error(400, "We could not parse the JSON body", None);
                };
                let known = [
                    "model", "input", "voice", "instructions", "response_format", "speed",
                    "stream_format",
                ];
                if let Some(extra) = body.keys().find(|k| !known.contains(&k.as_str())) {
                    return openai_error(
                        400,
                        &format!("Unrecognized request argument supplied: {extra}"),
                        None,
                    );
                }
                let voice_ok = match &body["voice"] {
                    Value::String(v) => OPENAI_VOICES.contains(&v.as_str()),
                    Value::Object(o) => o.get("id").is_some_and(Value::is_string),
                    _ => false,
                };
                if !voice_ok {
                    return openai_error(400, "Invalid value for 'voice'", Some("voice"));
                }
                Reply::ok("audio/pcm", OPENAI_AUDIO)
            }
            ("POST", "/v1/audio/transcriptions" | "/v1/audio/translations") => {
                if form_text(r, "language").is_some_and(|l| l == "auto" || l.is_empty()) {
                    return openai_error(
                        400,
                        "Invalid language 'auto'. Language parameter must be specified in ISO-639-1 format.",
                        Some("language"),
                    );
                }
                match form_text(r, "response_format").as_deref() {
                    Some("text") => Reply::ok("text/plain; charset=utf-8", format!("{HEARD}\n")),
                    _ => Reply::json(200, json!({ "text": HEARD })),
                }
            }
            _ => openai_error(404, "Invalid URL", None),
        }
    })
    .await
}
