//! Upstream dialects end to end: engine-like upstreams (tests/support/engines.rs) behind
//! voxgate, each asserting what it received — the voice, the fields, the path, the key —
//! and what the client got back.

mod support;

use std::time::Duration;

use base64::Engine as _;
use http::Request;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::engines::{self, form_names, form_text, HEARD, KOKORO_CHUNKS, OPENAI_AUDIO};
use support::*;
use tokio::time::Instant;

const KEY: &str = "sk-configured-key";

/// Kokoro, whisper.cpp and OpenAI kinds, speech to kokoro then openai, transcriptions and
/// translations to whisper then openai. Health checks off: each test decides what is up.
fn voice_stack(kokoro: &str, whisper: &str, openai: &str) -> String {
    format!(
        r#"
[upstreams.kokoro]
kind = "kokoro"
url = "{kokoro}"
health = {{ enabled = false }}
eject_after = 0

[upstreams.whisper]
kind = "whisper-cpp"
url = "{whisper}"
health = {{ enabled = false }}
eject_after = 0

[upstreams.openai]
kind = "openai"
url = "{openai}"
api_key = "{KEY}"

[[routes]]
match = {{ endpoint = "speech" }}
to = ["kokoro", "openai"]

[[routes]]
match = {{ endpoint = ["transcriptions", "translations"] }}
to = ["whisper", "openai"]
"#
    )
}

async fn speak(proxy: &Proxy, body: Value) -> Answer {
    send(
        Request::post(proxy.url("/v1/audio/speech"))
            .header("content-type", "application/json")
            .header("authorization", "Bearer dummy-key-for-local")
            .body(full_body(body.to_string()))
            .unwrap(),
    )
    .await
}

async fn upload(proxy: &Proxy, path: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Answer {
    send(post(
        &proxy.url(path),
        &form_content_type(),
        full_body(form(parts)),
    ))
    .await
}

/// voice-mode's transcription form: model, language=auto, response_format, then the file.
fn stt_parts<'a>(
    response_format: &'a str,
    extra: &[(&'a str, &'a [u8])],
) -> Vec<(&'a str, Option<&'a str>, &'a [u8])> {
    let mut parts: Vec<(&str, Option<&str>, &[u8])> = vec![
        ("model", None, b"whisper-1"),
        ("language", None, b"auto"),
        ("response_format", None, response_format.as_bytes()),
    ];
    parts.extend(extra.iter().map(|(n, v)| (*n, None, *v)));
    parts.push(("file", Some("speech.wav"), b"RIFF-fake-wav-bytes"));
    parts
}

/// `data:` payloads of an SSE body, as JSON.
fn events(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).expect("event data is JSON"))
        .collect()
}

#[tokio::test]
async fn speech_falling_back_from_kokoro_reaches_openai_in_openais_terms() {
    let kokoro = refused_addr().await;
    let whisper = refused_addr().await;
    let openai = engines::openai(KEY).await;
    let proxy = Proxy::start(&voice_stack(
        &format!("http://{kokoro}"),
        &format!("http://{whisper}"),
        &openai.url(),
    ))
    .await;
    let r = speak(
        &proxy,
        json!({ "model": "kokoro", "input": "Hi", "voice": "af_sky", "response_format": "pcm",
                "lang_code": "a", "stream": true, "normalization_options": { "normalize": true } }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_eq!(r.body, OPENAI_AUDIO);
    assert_eq!(r.header("x-voxgate-upstream"), Some("openai"));
    let got = openai.last();
    assert_eq!(
        got.json(),
        json!({ "model": "tts-1", "input": "Hi", "voice": "nova", "response_format": "pcm" }),
        "Kokoro's voice mapped, its model mapped, its extras left out"
    );
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
}

#[tokio::test(start_paused = true)]
async fn kokoro_keeps_its_extras_and_gets_voice_objects_as_strings() {
    let kokoro = engines::kokoro().await;
    let openai = engines::openai(KEY).await;
    let proxy = Proxy::start(&voice_stack(&kokoro.url(), &openai.url(), &openai.url())).await;
    let r = speak(
        &proxy,
        json!({ "model": "tts-1", "input": "Hi", "voice": { "id": "af_bella" }, "lang_code": "b" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_eq!(r.body, KOKORO_CHUNKS.concat());
    let got = kokoro.last().json();
    assert_eq!(got["voice"], "af_bella");
    assert_eq!(got["lang_code"], "b", "Kokoro's own extras reach Kokoro");

    // An OpenAI voice Kokoro does not alias is mapped to one of Kokoro's.
    let r = speak(
        &proxy,
        json!({ "model": "tts-1", "input": "Hi", "voice": "verse" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_eq!(kokoro.last().json()["voice"], "am_michael");
    // One it aliases itself is left alone.
    let r = speak(
        &proxy,
        json!({ "model": "tts-1", "input": "Hi", "voice": "nova" }),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(kokoro.last().json()["voice"], "nova");
    assert_eq!(openai.count(), 0);
}

#[tokio::test]
async fn a_model_kokoro_does_not_serve_skips_it() {
    let kokoro = engines::kokoro().await;
    let openai = engines::openai(KEY).await;
    let proxy = Proxy::start(&voice_stack(&kokoro.url(), &openai.url(), &openai.url())).await;
    let r = speak(
        &proxy,
        json!({ "model": "gpt-4o-tts", "input": "Hi", "voice": "nova" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_eq!(r.header("x-voxgate-upstream"), Some("openai"));
    assert_eq!(kokoro.count(), 0, "not sent where it would be refused");
    // Kokoro alone: a clear 400 that names what it serves.
    let config = single_of_kind("kokoro", &kokoro.url(), "");
    let alone = Proxy::start(&config).await;
    let r = speak(
        &alone,
        json!({ "model": "gpt-4o-tts", "input": "Hi", "voice": "nova" }),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message()
            .contains("serves only the models kokoro, tts-1"),
        "{}",
        r.error_message()
    );
    assert_eq!(kokoro.count(), 0);
}

#[tokio::test]
async fn blends_reach_openai_as_their_dominant_voice_and_broken_ones_are_refused() {
    let openai = engines::openai(KEY).await;
    let config = single_of_kind("openai", &openai.url(), &format!("api_key = \"{KEY}\""));
    let proxy = Proxy::start(&config).await;
    let r = speak(
        &proxy,
        json!({ "model": "tts-1", "input": "Hi", "voice": "af_bella(2)+af_sky" }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_eq!(
        openai.last().json()["voice"],
        "shimmer",
        "af_bella dominates"
    );
    let r = speak(
        &proxy,
        json!({ "model": "tts-1", "input": "Hi", "voice": "af_bella(x)+af_sky" }),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "unsupported_request");
    assert!(
        r.error_message().contains("cannot be reduced"),
        "{}",
        r.error_message()
    );
    assert_eq!(openai.count(), 1, "the refused request was not sent");
    // Too short to be a Kokoro name (once a panic, found by fuzzing): OpenAI's own 400.
    let r = speak(
        &proxy,
        json!({ "model": "tts-1", "input": "Hi", "voice": "" }),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_message(), "Invalid value for 'voice'");
}

#[tokio::test]
async fn whisper_cpp_gets_its_own_path_and_its_html_text_comes_back_as_plain_text() {
    let whisper = engines::whisper_cpp().await;
    let openai = engines::openai(KEY).await;
    let proxy = Proxy::start(&voice_stack(&openai.url(), &whisper.url(), &openai.url())).await;
    let r = upload(&proxy, "/v1/audio/transcriptions", &stt_parts("text", &[])).await;
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.body, format!("{HEARD}\n"));
    let got = whisper.last();
    assert_eq!(got.path, "/inference");
    assert_eq!(
        form_text(&got, "language").as_deref(),
        Some("auto"),
        "whisper.cpp takes auto"
    );

    let r = upload(&proxy, "/v1/audio/translations", &stt_parts("json", &[])).await;
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_eq!(r.json()["text"], format!(" {HEARD} (translated)"));
    let got = whisper.last();
    assert_eq!(got.path, "/inference");
    assert_eq!(form_text(&got, "translate").as_deref(), Some("true"));
    assert_eq!(openai.count(), 0);
}

#[tokio::test]
async fn a_configured_inference_path_overrides_the_kinds() {
    let up = Scripted::always(Reply::json(200, json!({ "text": HEARD }))).await;
    let config = format!(
        "[upstreams.w]\nkind = \"whisper-cpp\"\nurl = \"{}\"\nhealth = {{ enabled = false }}\n\
         paths = {{ transcriptions = \"/v1/audio/transcriptions\" }}\n[[routes]]\nto = [\"w\"]\n",
        up.url()
    );
    let proxy = Proxy::start(&config).await;
    let r = upload(&proxy, "/v1/audio/transcriptions", &stt_parts("json", &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().path, "/v1/audio/transcriptions");
    let r = upload(&proxy, "/v1/audio/translations", &stt_parts("json", &[])).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        up.last().path,
        "/inference",
        "translations keep the kind's path"
    );
}

#[tokio::test]
async fn transcriptions_falling_back_to_openai_lose_language_auto() {
    let whisper = refused_addr().await;
    let openai = engines::openai(KEY).await;
    let proxy = Proxy::start(&voice_stack(
        &openai.url(),
        &format!("http://{whisper}"),
        &openai.url(),
    ))
    .await;
    let r = upload(&proxy, "/v1/audio/transcriptions", &stt_parts("text", &[])).await;
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_eq!(r.body, format!("{HEARD}\n"));
    let got = openai.last();
    assert_eq!(got.path, "/v1/audio/transcriptions");
    assert_eq!(
        form_names(&got),
        ["model", "response_format", "file"],
        "language=auto left out, the rest in order"
    );
    // A real language is kept.
    let parts = vec![
        ("model", None, &b"whisper-1"[..]),
        ("language", None, b"de"),
        ("file", Some("a.wav"), b"RIFF"),
    ];
    let r = upload(&proxy, "/v1/audio/transcriptions", &parts).await;
    assert_eq!(r.status, 200);
    assert_eq!(form_text(&openai.last(), "language").as_deref(), Some("de"));
}

#[tokio::test]
async fn openai_keeps_its_own_fields_and_loses_whisper_cpps() {
    let openai = engines::openai(KEY).await;
    let config = single_of_kind("openai", &openai.url(), &format!("api_key = \"{KEY}\""));
    let proxy = Proxy::start(&config).await;
    let parts = vec![
        ("model", None, &b"gpt-4o-mini-transcribe"[..]),
        ("stream", None, b"true"),
        ("temperature_inc", None, b"0.2"),
        ("timestamp_granularities[]", None, b"word"),
        ("file", Some("a.wav"), b"RIFF"),
    ];
    let r = upload(&proxy, "/v1/audio/transcriptions", &parts).await;
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_eq!(
        form_names(&openai.last()),
        ["model", "stream", "timestamp_granularities[]", "file"],
        "OpenAI's `stream` kept, whisper.cpp's `temperature_inc` left out"
    );
}

#[tokio::test]
async fn streamed_transcriptions_from_whisper_cpp_become_openai_events() {
    let whisper = engines::whisper_cpp().await;
    let config = single_of_kind("whisper-cpp", &whisper.url(), "");
    let proxy = Proxy::start(&config).await;
    let r = upload(
        &proxy,
        "/v1/audio/transcriptions",
        &stt_parts("text", &[("stream", b"true")]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(
        events(&r.body),
        [
            json!({ "type": "transcript.text.delta", "delta": HEARD }),
            json!({ "type": "transcript.text.done", "text": HEARD }),
        ]
    );
    let got = whisper.last();
    assert_eq!(form_text(&got, "response_format").as_deref(), Some("json"));
    assert!(!form_names(&got).contains(&"stream".to_string()));

    // A format no stream can be made of: a clear 400, nothing sent.
    let r = upload(
        &proxy,
        "/v1/audio/transcriptions",
        &stt_parts("srt", &[("stream", b"true")]),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("srt"), "{}", r.error_message());
    assert_eq!(whisper.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn sse_speech_from_kokoro_is_made_of_its_chunks_as_they_arrive() {
    let kokoro = engines::kokoro().await;
    let config = single_of_kind("kokoro", &kokoro.url(), "");
    let proxy = Proxy::start(&config).await;
    let body =
        json!({ "model": "kokoro", "input": "Hi", "voice": "af_sky", "stream_format": "sse" });
    let request = Request::post(proxy.url("/v1/audio/speech"))
        .header("content-type", "application/json")
        .header("accept-encoding", "gzip, deflate")
        .body(full_body(body.to_string()))
        .unwrap();
    let started = Instant::now();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    let mut all = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push(started.elapsed());
            all.extend_from_slice(&data);
        }
    }
    let events = events(&all);
    assert_eq!(events.len(), KOKORO_CHUNKS.len() + 1, "{events:?}");
    let audio: Vec<u8> = events[..KOKORO_CHUNKS.len()]
        .iter()
        .flat_map(|e| {
            assert_eq!(e["type"], "speech.audio.delta");
            base64::engine::general_purpose::STANDARD
                .decode(e["audio"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(audio, KOKORO_CHUNKS.concat());
    assert_eq!(events.last().unwrap()["type"], "speech.audio.done");
    // Kokoro sends a chunk every 100 ms: the first event is not held back for the rest.
    let first = arrivals[0];
    let last = *arrivals.last().unwrap();
    assert!(
        last.saturating_sub(first) >= Duration::from_millis(150),
        "events arrived together: {arrivals:?}"
    );
    let got = kokoro.last();
    assert!(got.json().get("stream_format").is_none());
    assert_eq!(
        got.header("accept-encoding"),
        None,
        "audio voxgate wraps must come uncompressed"
    );
}

#[tokio::test]
async fn engine_errors_read_like_openai_errors() {
    let kokoro = engines::kokoro().await;
    let whisper = engines::whisper_cpp().await;
    let fastapi = Scripted::always(Reply::json(
        422,
        json!({ "detail": [{ "type": "string_type", "loc": ["body", "voice"], "msg": "Input should be a valid string" }] }),
    ))
    .await;
    let config = format!(
        "[upstreams.k]\nkind = \"kokoro\"\nurl = \"{}\"\nhealth = {{ enabled = false }}\n\
         [upstreams.w]\nkind = \"whisper-cpp\"\nurl = \"{}\"\nhealth = {{ enabled = false }}\n\
         [upstreams.f]\nurl = \"{}\"\n\
         [[routes]]\nmatch = {{ endpoint = \"speech\", model = \"fastapi\" }}\nto = [\"f\"]\n\
         [[routes]]\nmatch = {{ endpoint = \"speech\" }}\nto = [\"k\"]\n\
         [[routes]]\nto = [\"w\"]\n",
        kokoro.url(),
        whisper.url(),
        fastapi.url()
    );
    let proxy = Proxy::start(&config).await;
    let r = speak(
        &proxy,
        json!({ "model": "tts-1", "input": "Hi", "voice": "zz" }),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_message(), "Voice 'zz' not found");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let r = speak(
        &proxy,
        json!({ "model": "fastapi", "input": "Hi", "voice": "x" }),
    )
    .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.error_message(), "voice: Input should be a valid string");
    let r = upload(&proxy, "/v1/audio/transcriptions", &stt_parts("xml", &[])).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_message(), "unsupported response_format xml");
}

#[tokio::test]
async fn discovery_merges_the_models_and_voices_of_the_routed_upstreams() {
    let kokoro = engines::kokoro().await;
    let whisper = engines::whisper_cpp().await;
    let openai = engines::openai(KEY).await;
    let proxy = Proxy::start(&voice_stack(&kokoro.url(), &whisper.url(), &openai.url())).await;
    let get = |path: &str| {
        Request::get(proxy.url(path))
            .header("authorization", "Bearer dummy-key-for-local")
            .header("accept-encoding", "gzip, deflate")
            .body(full_body(""))
            .unwrap()
    };
    let r = send(get("/v1/models")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"], "list");
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    for id in [
        "kokoro",
        "tts-1",
        "gpt-4o",
        "whisper-1",
        "gpt-4o-mini-transcribe",
    ] {
        assert!(ids.contains(&id.to_string()), "{id} missing from {ids:?}");
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no model twice: {ids:?}");
    assert_eq!(
        openai.last().header("authorization"),
        Some(format!("Bearer {KEY}").as_str()),
        "OpenAI's list asked for with OpenAI's key"
    );

    let voices = |r: &Answer| -> Vec<String> {
        r.json()["voices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let r = send(get("/v1/audio/voices")).await;
    assert_eq!(r.status, 200);
    let listed = voices(&r);
    for v in ["af_bella", "jf_alpha", "nova", "verse", "af_sky", "am_onyx"] {
        assert!(
            listed.contains(&v.to_string()),
            "{v} missing from {listed:?}"
        );
    }

    // Kokoro gone: its live list goes, the names voxgate maps stay.
    drop(kokoro);
    let r = send(get("/v1/audio/voices")).await;
    assert_eq!(r.status, 200);
    let listed = voices(&r);
    assert!(!listed.contains(&"jf_alpha".to_string()), "{listed:?}");
    assert!(listed.contains(&"af_sky".to_string()) && listed.contains(&"nova".to_string()));

    let r = send(get("/")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(start_paused = true)]
async fn a_kind_brings_its_health_check_unless_turned_off() {
    let kokoro = engines::kokoro().await;
    let config = format!(
        "[upstreams.k]\nkind = \"kokoro\"\nurl = \"{}\"\n[[routes]]\nto = [\"k\"]\n",
        kokoro.url()
    );
    let proxy = Proxy::start(&config).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !kokoro.received().iter().any(|r| r.path == "/health") {
        assert!(Instant::now() < deadline, "no health check within 5 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = send(
        Request::get(proxy.url("/status"))
            .body(full_body(""))
            .unwrap(),
    )
    .await;
    assert_eq!(status.json()["upstreams"][0]["kind"], "kokoro");
    drop(proxy);
    let quiet = engines::kokoro().await;
    let proxy = Proxy::start(&voice_stack(&quiet.url(), &quiet.url(), &quiet.url())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        quiet.count(),
        0,
        "health = {{ enabled = false }} sends no check"
    );
    drop(proxy);
}

#[tokio::test]
async fn an_html_error_page_becomes_an_openai_error_with_its_text() {
    let page = Scripted::always(Reply::Full {
        status: 502,
        headers: vec![("content-type", "text/html".to_string())],
        body: "<html><head><title>502 Bad Gateway</title></head>\n<body><center>nginx</center></body></html>\n".into(),
    })
    .await;
    let proxy = Proxy::start(&single_upstream(&page.url(), "")).await;
    let r = speak(
        &proxy,
        json!({ "model": "tts-1", "input": "Hi", "voice": "nova" }),
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.error_message(), "502 Bad Gateway nginx");
    assert_eq!(r.json()["error"]["type"], "server_error");
}
