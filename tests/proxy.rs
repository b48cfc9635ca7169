//! End-to-end behaviour of the proxy over real sockets: routing, rewrites, streaming,
//! every fallback trigger, refusals and their shapes, auth and header hygiene.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use serde_json::json;
use support::*;
use tokio::time::Instant;

/// A config with upstreams `a` and `b` and the given routes (and extra upstream keys).
fn two_upstreams(a: &str, b: &str, a_extra: &str, b_extra: &str, routes: &str) -> String {
    format!(
        "[upstreams.a]\nurl = \"{a}\"\nresponse_timeout = \"500ms\"\n{a_extra}\n\
         [upstreams.b]\nurl = \"{b}\"\nresponse_timeout = \"2s\"\n{b_extra}\n{routes}"
    )
}

const A_THEN_B: &str = "[[routes]]\nto = [\"a\", \"b\"]\n";

fn speech_json() -> serde_json::Value {
    json!({"model": "tts-1", "input": "Hello there", "voice": "af_sky", "response_format": "pcm"})
}

async fn speech_via(proxy: &Proxy) -> Answer {
    send(speech_request(
        &proxy.url("/v1/audio/speech"),
        speech_json(),
    ))
    .await
}

#[tokio::test]
async fn speech_is_routed_by_voice_and_model_is_set_for_the_route() {
    let kokoro = Scripted::always(Reply::ok("audio/pcm", "kokoro-audio")).await;
    let openai = Scripted::always(Reply::ok("audio/pcm", "openai-audio")).await;
    let routes = "[[routes]]\nmatch = { endpoint = \"speech\", voice = \"af_*\" }\nto = [\"a\"]\nset = { model = \"kokoro\" }\n\
                  [[routes]]\nmatch = { endpoint = \"speech\" }\nto = [\"b\"]\n";
    let proxy = Proxy::start(&two_upstreams(&kokoro.url(), &openai.url(), "", "", routes)).await;

    let a = speech_via(&proxy).await;
    assert_eq!((a.status, &a.body[..]), (200, &b"kokoro-audio"[..]));
    assert_eq!(a.header("x-voxgate-upstream"), Some("a"));
    let got = kokoro.last().json();
    assert_eq!(got["model"], "kokoro");
    assert_eq!(got["voice"], "af_sky");
    assert_eq!(kokoro.last().path, "/v1/audio/speech");

    let mut other = speech_json();
    other["voice"] = json!("alloy");
    let b = send(speech_request(&proxy.url("/audio/speech"), other)).await;
    assert_eq!(&b.body[..], b"openai-audio");
    assert_eq!(openai.last().json()["model"], "tts-1");
    assert_eq!(
        openai.last().path,
        "/v1/audio/speech",
        "a base URL without /v1 still works"
    );
}

#[tokio::test]
async fn unknown_json_keys_and_voice_objects_survive_a_rewrite() {
    let up = Scripted::always(Reply::ok("audio/mpeg", "x")).await;
    let config = single_upstream(
        &up.url(),
        "model_map = { kokoro = \"tts-1\" }\nvoice_map = { voice_abc = \"nova\" }",
    );
    let proxy = Proxy::start(&config).await;
    let body = json!({"model": "kokoro", "input": "hi", "voice": {"id": "voice_abc"},
                      "lang_code": "a", "normalization_options": {"normalize": false}, "speed": 1.5});
    let r = send(speech_request(&proxy.url("/v1/audio/speech"), body)).await;
    assert_eq!(r.status, 200);
    let got = up.last().json();
    assert_eq!(got["model"], "tts-1");
    assert_eq!(got["voice"], "nova");
    assert_eq!(got["lang_code"], "a");
    assert_eq!(got["normalization_options"]["normalize"], false);
    assert_eq!(got["speed"], 1.5);
}

#[tokio::test]
async fn falls_back_on_503_while_body_is_replayable() {
    let a = Scripted::always(Reply::status(503)).await;
    let b = Scripted::always(Reply::ok("audio/pcm", "from-b")).await;
    let proxy = Proxy::start(&two_upstreams(&a.url(), &b.url(), "", "", A_THEN_B)).await;
    let r = speech_via(&proxy).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"from-b"[..]));
    assert_eq!(r.header("x-voxgate-upstream"), Some("b"));
    assert_eq!(
        a.last().body,
        b.last().body,
        "the fallback got the same body"
    );
}

#[tokio::test]
async fn falls_back_on_502_and_504_too() {
    for status in [502, 504] {
        let a = Scripted::always(Reply::status(status)).await;
        let b = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
        let proxy = Proxy::start(&two_upstreams(&a.url(), &b.url(), "", "", A_THEN_B)).await;
        assert_eq!(speech_via(&proxy).await.status, 200, "after {status}");
        assert_eq!(b.count(), 1);
    }
}

#[tokio::test]
async fn falls_back_when_the_primary_refuses_connections() {
    let dead = refused_addr().await;
    let b = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = Proxy::start(&two_upstreams(
        &format!("http://{dead}"),
        &b.url(),
        "",
        "",
        A_THEN_B,
    ))
    .await;
    let r = speech_via(&proxy).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-voxgate-upstream"), Some("b"));
}

#[tokio::test(start_paused = true)]
async fn falls_back_when_the_primary_does_not_answer_in_time() {
    let a = Scripted::always(Reply::Hang).await;
    let b = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = Proxy::start(&two_upstreams(&a.url(), &b.url(), "", "", A_THEN_B)).await;
    let start = Instant::now();
    let r = speech_via(&proxy).await;
    let took = ms(start);
    assert_eq!(r.status, 200);
    assert_eq!(a.count(), 1, "the primary was tried");
    assert!(
        (450.0..2000.0).contains(&took),
        "one 500 ms per-try timeout, took {took} ms"
    );
}

#[tokio::test]
async fn falls_back_when_the_primary_closes_before_headers() {
    let a = Scripted::always(Reply::Close).await;
    let b = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = Proxy::start(&two_upstreams(&a.url(), &b.url(), "", "", A_THEN_B)).await;
    let r = speech_via(&proxy).await;
    assert_eq!(r.status, 200);
    assert_eq!(b.count(), 1);
}

#[tokio::test]
async fn statuses_not_in_fallback_on_are_passed_through() {
    for status in [500, 429, 400] {
        let a = Scripted::start(move |_| Reply::Full {
            status,
            headers: vec![
                ("content-type", "application/json".into()),
                ("retry-after", "7".into()),
            ],
            body: Bytes::from(format!(
                r#"{{"error":{{"message":"upstream says {status}"}}}}"#
            )),
        })
        .await;
        let b = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
        let proxy = Proxy::start(&two_upstreams(&a.url(), &b.url(), "", "", A_THEN_B)).await;
        let r = speech_via(&proxy).await;
        assert_eq!(r.status, status);
        assert_eq!(
            r.json()["error"]["message"],
            format!("upstream says {status}")
        );
        assert_eq!(r.header("retry-after"), Some("7"));
        assert_eq!(b.count(), 0, "no fallback on {status}");
    }
}

#[tokio::test]
async fn fallback_on_can_add_statuses_and_drop_triggers() {
    let a = Scripted::always(Reply::status(429)).await;
    let b = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let routes = "[[routes]]\nto = [\"a\", \"b\"]\nfallback_on = [429]\n";
    let proxy = Proxy::start(&two_upstreams(&a.url(), &b.url(), "", "", routes)).await;
    assert_eq!(speech_via(&proxy).await.status, 200);

    let dead = refused_addr().await;
    let b = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = Proxy::start(&two_upstreams(
        &format!("http://{dead}"),
        &b.url(),
        "",
        "",
        routes,
    ))
    .await;
    let r = speech_via(&proxy).await;
    assert_eq!(r.status, 502, "connect is no longer a trigger");
    assert!(r.error_message().contains("does not fall back"));
    assert_eq!(b.count(), 0);
}

#[tokio::test]
async fn all_upstreams_failing_gives_502_listing_each_attempt() {
    let a = Scripted::always(Reply::status(503)).await;
    let dead = refused_addr().await;
    let proxy = Proxy::start(&two_upstreams(
        &a.url(),
        &format!("http://{dead}"),
        "",
        "",
        A_THEN_B,
    ))
    .await;
    let r = speech_via(&proxy).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-should-retry"), Some("false"));
    assert!(r.header("x-request-id").is_some());
    let message = r.error_message();
    assert!(
        message.contains("a: answered 503 \"scripted 503\""),
        "{message}"
    );
    assert!(message.contains("b: connect failed"), "{message}");
    assert_eq!(r.json()["error"]["type"], "server_error");
}

#[tokio::test]
async fn the_last_upstreams_fallback_status_is_passed_through_as_it_is() {
    let a = Scripted::always(Reply::status(503)).await;
    let b = Scripted::start(|_| Reply::Full {
        status: 503,
        headers: vec![
            ("content-type", "application/json".into()),
            ("retry-after", "2".into()),
        ],
        body: Bytes::from_static(br#"{"error":{"message":"b is overloaded"}}"#),
    })
    .await;
    let proxy = Proxy::start(&two_upstreams(&a.url(), &b.url(), "", "", A_THEN_B)).await;
    let r = speech_via(&proxy).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.header("x-voxgate-upstream"), Some("b"));
    assert_eq!(r.header("x-should-retry"), None, "the SDK may retry");
    assert_eq!(r.json()["error"]["message"], "b is overloaded");
    assert_eq!(a.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn all_upstreams_timing_out_gives_504() {
    let a = Scripted::always(Reply::Hang).await;
    let config = single_upstream(&a.url(), "response_timeout = \"200ms\"");
    let proxy = Proxy::start(&config).await;
    let r = speech_via(&proxy).await;
    assert_eq!(r.status, 504);
    assert!(r.error_message().contains("no response headers within"));
}

#[tokio::test(start_paused = true)]
async fn no_fallback_once_the_first_byte_went_out_and_the_client_sees_a_broken_stream() {
    let a = Scripted::always(Reply::ChunksThenReset {
        chunks: vec![Bytes::from_static(b"first-audio")],
        delay: Duration::from_millis(20),
    })
    .await;
    let b = Scripted::always(Reply::ok("audio/pcm", "from-b")).await;
    let proxy = Proxy::start(&two_upstreams(&a.url(), &b.url(), "", "", A_THEN_B)).await;
    let response = client()
        .request(speech_request(
            &proxy.url("/v1/audio/speech"),
            speech_json(),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let collected = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .expect("no hang");
    assert!(collected.is_err(), "a cut stream must not end cleanly");
    assert_eq!(b.count(), 0, "no fallback after the first byte");
}

#[tokio::test(start_paused = true)]
async fn the_first_chunk_reaches_the_client_before_the_upstream_finishes() {
    let chunks: Vec<Bytes> = (0..5).map(|i| Bytes::from(vec![i as u8; 4096])).collect();
    let a = Scripted::always(Reply::Chunks {
        status: 200,
        content_type: "audio/pcm",
        chunks: chunks.clone(),
        delay: Duration::from_millis(200),
    })
    .await;
    let proxy = Proxy::start(&single_upstream(&a.url(), "")).await;
    let start = Instant::now();
    let response = client()
        .request(speech_request(
            &proxy.url("/v1/audio/speech"),
            speech_json(),
        ))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut arrivals = Vec::new();
    let mut total = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            arrivals.push(ms(start));
            total.extend_from_slice(&data);
        }
    }
    assert_eq!(total, chunks.concat());
    assert!(
        arrivals[0] < 600.0,
        "first chunk at {} ms, upstream needs 1000 ms",
        arrivals[0]
    );
    assert!(
        arrivals.len() >= 4,
        "chunks were not merged into one: {arrivals:?}"
    );
}

#[tokio::test]
async fn sse_passes_through_intact() {
    let events = [
        "data: {\"type\":\"transcript.text.delta\",\"delta\":\"Hel\"}\n\n",
        "data: {\"type\":\"transcript.text.delta\",\"delta\":\"lo\"}\n\n",
        "data: {\"type\":\"transcript.text.done\",\"text\":\"Hello\"}\n\n",
    ];
    let a = Scripted::always(Reply::Chunks {
        status: 200,
        content_type: "text/event-stream",
        chunks: events
            .iter()
            .map(|e| Bytes::from_static(e.as_bytes()))
            .collect(),
        delay: Duration::from_millis(10),
    })
    .await;
    let proxy = Proxy::start(&single_upstream(&a.url(), "")).await;
    let body = form(&[
        ("file", Some("a.wav"), b"RIFF"),
        ("model", None, b"gpt-4o-transcribe"),
        ("stream", None, b"true"),
    ]);
    let r = transcribe(&proxy, body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.body, events.concat());
}

#[tokio::test]
async fn transcriptions_with_the_file_first_and_no_content_length_route_by_model() {
    let whisper = Scripted::always(Reply::json(200, json!({"text": "local"}))).await;
    let openai = Scripted::always(Reply::json(200, json!({"text": "cloud"}))).await;
    let routes = "[[routes]]\nmatch = { endpoint = \"transcriptions\", model = \"gpt-4o-*\" }\nto = [\"b\"]\n\
                  [[routes]]\nmatch = { endpoint = [\"transcriptions\", \"translations\"] }\nto = [\"a\"]\n";
    let config = two_upstreams(
        &whisper.url(),
        &openai.url(),
        "model_map = { \"whisper-1\" = \"large-v3\" }",
        "",
        routes,
    );
    let proxy = Proxy::start(&config).await;
    let audio = noise(3 * 1024 * 1024 + 17);
    for (model, expect) in [("gpt-4o-transcribe", "cloud"), ("whisper-1", "local")] {
        let body = form(&[
            ("file", Some("speech.wav"), &audio),
            ("model", None, model.as_bytes()),
            ("timestamp_granularities[]", None, b"word"),
            ("timestamp_granularities[]", None, b"segment"),
        ]);
        let pieces: Vec<Bytes> = body.chunks(65_536).map(Bytes::copy_from_slice).collect();
        let r = send(post(
            &proxy.url("/v1/audio/transcriptions"),
            &form_content_type(),
            chunked_body(pieces),
        ))
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["text"], expect);
    }
    let parts = parse_form(&whisper.last()).await;
    assert_eq!(parts[0].0, "file");
    assert_eq!(parts[0].1.as_deref(), Some("speech.wav"));
    assert_eq!(parts[0].2, audio, "the file arrives byte for byte");
    assert_eq!(
        (parts[1].0.as_str(), &parts[1].2[..]),
        ("model", &b"large-v3"[..])
    );
    let grans: Vec<&[u8]> = parts
        .iter()
        .filter(|p| p.0 == "timestamp_granularities[]")
        .map(|p| &p.2[..])
        .collect();
    assert_eq!(grans, vec![&b"word"[..], &b"segment"[..]]);
    assert_eq!(
        whisper.last().header("content-length"),
        Some(whisper.last().body.len().to_string().as_str()),
        "the upstream gets an exact Content-Length"
    );
    assert_eq!(parse_form(&openai.last()).await[1].2, "gpt-4o-transcribe");
}

#[tokio::test]
async fn a_spilled_upload_is_replayed_whole_to_the_fallback() {
    let a = Scripted::always(Reply::status(503)).await;
    let b = Scripted::always(Reply::json(200, json!({"text": "ok"}))).await;
    // 64 KiB in memory at most: the rest of the 5 MiB upload goes to disk.
    let config = two_upstreams(&a.url(), &b.url(), "", "", A_THEN_B)
        + "[server]\nreplay_memory_per_request = 65536\n";
    let proxy = Proxy::start(&config).await;
    let audio = noise(5 * 1024 * 1024);
    let body = form(&[
        ("model", None, b"whisper-1"),
        ("file", Some("a.wav"), &audio),
    ]);
    let r = send(post(
        &proxy.url("/v1/audio/translations"),
        &form_content_type(),
        full_body(body.clone()),
    ))
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(a.last().body, body, "primary got the upload as sent");
    assert_eq!(b.last().body, body, "fallback got the same bytes");
    assert_eq!(b.last().path, "/v1/audio/translations");
    assert_eq!(
        proxy.gateway.replay_memory_used(),
        0,
        "replay memory is released"
    );
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_in_openai_shape() {
    let a = Scripted::always(Reply::json(200, json!({"text": "x"}))).await;
    let config = format!(
        "[server]\nmax_body_bytes = 100000\n[upstreams.a]\nurl = \"{}\"\n[[routes]]\nto = [\"a\"]\n",
        a.url()
    );
    let proxy = Proxy::start(&config).await;
    let body = form(&[
        ("model", None, b"whisper-1"),
        ("file", Some("a.wav"), &noise(200_000)),
    ]);
    let r = transcribe(&proxy, body.clone()).await;
    assert_eq!(r.status, 413);
    assert_eq!(
        r.error_message(),
        "Maximum content size limit (100000) exceeded (0 bytes read)"
    );
    let pieces: Vec<Bytes> = body.chunks(10_000).map(Bytes::copy_from_slice).collect();
    let r = send(post(
        &proxy.url("/v1/audio/transcriptions"),
        &form_content_type(),
        chunked_body(pieces),
    ))
    .await;
    assert_eq!(r.status, 413);
    assert!(r
        .error_message()
        .starts_with("Maximum content size limit (100000) exceeded"));
    assert_eq!(a.count(), 0);
}

#[tokio::test]
async fn malformed_bodies_get_400_and_unknown_routes_404() {
    let a = Scripted::always(Reply::ok("audio/pcm", "x")).await;
    let config = format!(
        "[upstreams.a]\nurl = \"{}\"\n[[routes]]\nmatch = {{ model = \"tts-*\" }}\nto = [\"a\"]\n",
        a.url()
    );
    let proxy = Proxy::start(&config).await;
    let url = proxy.url("/v1/audio/speech");
    let r = send(post(&url, "application/json", full_body("{not json"))).await;
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("not valid JSON"));
    let not_utf8 = b"{\"model\": \"tts-1\", \"voice\": \"alloy\", \"input\": \"caf\xe9\"}";
    let r = send(post(&url, "application/json", full_body(&not_utf8[..]))).await;
    assert_eq!(r.status, 400);
    assert!(
        r.error_message().contains("not UTF-8"),
        "{}",
        r.error_message()
    );
    let r = send(speech_request(
        &url,
        json!({"model": "tts-1", "input": "x"}),
    ))
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["param"].as_str()),
        (400, Some("voice"))
    );
    let r = send(speech_request(
        &url,
        json!({"model": "gpt-4o-mini-tts", "input": "x", "voice": "alloy"}),
    ))
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.error_message(),
        "no route for speech requests with model `gpt-4o-mini-tts`"
    );
    let r = send(post(
        &proxy.url("/v1/audio/transcriptions"),
        "multipart/form-data; boundary=zz",
        full_body("garbage"),
    ))
    .await;
    assert_eq!(r.status, 400);
    let r = send(
        Request::get(proxy.url("/nope"))
            .body(full_body(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 404);
    r.error_message();
    assert_eq!(a.count(), 0);
}

#[tokio::test]
async fn authorization_goes_only_where_configured() {
    let with_key = Scripted::always(Reply::ok("audio/pcm", "x")).await;
    let without = Scripted::always(Reply::ok("audio/pcm", "x")).await;
    let passing = Scripted::always(Reply::ok("audio/pcm", "x")).await;
    let config = format!(
        "[upstreams.k]\nurl = \"{}\"\napi_key = \"sk-upstream\"\n\
         [upstreams.n]\nurl = \"{}\"\n\
         [upstreams.p]\nurl = \"{}\"\npass_client_key = true\n\
         [[routes]]\nmatch = {{ voice = \"k\" }}\nto = [\"k\"]\n\
         [[routes]]\nmatch = {{ voice = \"n\" }}\nto = [\"n\"]\n\
         [[routes]]\nmatch = {{ voice = \"p\" }}\nto = [\"p\"]\n",
        with_key.url(),
        without.url(),
        passing.url()
    );
    let proxy = Proxy::start(&config).await;
    for voice in ["k", "n", "p"] {
        let mut req = speech_request(
            &proxy.url("/v1/audio/speech"),
            json!({"model": "tts-1", "input": "x", "voice": voice}),
        );
        req.headers_mut()
            .insert("authorization", "Bearer sk-client".parse().unwrap());
        assert_eq!(send(req).await.status, 200);
    }
    assert_eq!(
        with_key.last().header("authorization"),
        Some("Bearer sk-upstream")
    );
    assert_eq!(without.last().header("authorization"), None);
    assert_eq!(
        passing.last().header("authorization"),
        Some("Bearer sk-client")
    );
}

#[tokio::test]
async fn request_ids_are_propagated_or_generated() {
    let a = Scripted::start(|_| Reply::Full {
        status: 200,
        headers: vec![
            ("x-request-id", "req_upstream".into()),
            ("content-type", "audio/pcm".into()),
        ],
        body: Bytes::from_static(b"x"),
    })
    .await;
    let proxy = Proxy::start(&single_upstream(&a.url(), "")).await;
    let mut req = speech_request(&proxy.url("/v1/audio/speech"), speech_json());
    req.headers_mut()
        .insert("x-request-id", "client-id-1".parse().unwrap());
    let r = send(req).await;
    assert_eq!(r.header("x-request-id"), Some("client-id-1"));
    assert_eq!(r.header("x-upstream-request-id"), Some("req_upstream"));
    assert_eq!(a.last().header("x-request-id"), Some("client-id-1"));

    let r = speech_via(&proxy).await;
    let generated = r.header("x-request-id").unwrap().to_string();
    assert!(generated.starts_with("vg-"));
    assert_eq!(a.last().header("x-request-id"), Some(generated.as_str()));
}

#[tokio::test]
async fn hop_by_hop_headers_stay_on_their_hop() {
    let a = Scripted::start(|_| Reply::Full {
        status: 200,
        headers: vec![
            ("content-type", "audio/aac".into()),
            ("connection", "x-secret-hop".into()),
            ("x-secret-hop", "1".into()),
            ("x-end-to-end", "kept".into()),
        ],
        body: Bytes::from_static(b"aac"),
    })
    .await;
    let proxy = Proxy::start(&single_upstream(&a.url(), "")).await;
    let mut req = speech_request(&proxy.url("/v1/audio/speech"), speech_json());
    req.headers_mut()
        .insert("connection", "x-client-hop".parse().unwrap());
    req.headers_mut()
        .insert("x-client-hop", "1".parse().unwrap());
    req.headers_mut()
        .insert("x-stainless-lang", "python".parse().unwrap());
    let r = send(req).await;
    assert_eq!(r.header("content-type"), Some("audio/aac"));
    assert_eq!(r.header("x-end-to-end"), Some("kept"));
    assert_eq!(r.header("x-secret-hop"), None);
    let got = a.last();
    assert_eq!(got.header("x-client-hop"), None);
    assert_eq!(got.header("x-stainless-lang"), Some("python"));
    assert_eq!(got.header("host"), Some(a.addr.to_string().as_str()));
}

#[tokio::test]
async fn other_v1_requests_pass_through_unparsed() {
    let a = Scripted::always(Reply::json(200, json!({"object": "list", "data": []}))).await;
    let config = format!(
        "[upstreams.a]\nurl = \"{}\"\n[[routes]]\nmatch = {{ endpoint = \"other\", method = \"GET\" }}\nto = [\"a\"]\n",
        a.url()
    );
    let proxy = Proxy::start(&config).await;
    let r = send(
        Request::get(proxy.url("/v1/files?limit=5"))
            .body(full_body(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["object"], "list");
    assert_eq!(a.last().path, "/v1/files?limit=5");
    assert_eq!(a.last().method, "GET");
    let r = send(post(
        &proxy.url("/v1/chat/completions"),
        "application/json",
        full_body("{not json is fine here"),
    ))
    .await;
    assert_eq!(r.status, 404, "POST does not match the GET-only route");
}

#[tokio::test]
async fn health_answers_without_any_upstream() {
    let dead = refused_addr().await;
    let proxy = Proxy::start(&format!(
        "[upstreams.a]\nurl = \"http://{dead}\"\n[[routes]]\nto = [\"a\"]\n"
    ))
    .await;
    let r = send(
        Request::get(proxy.url("/health"))
            .body(full_body(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
}

#[tokio::test(start_paused = true)]
async fn shutdown_lets_a_stream_in_flight_finish() {
    let a = Scripted::always(Reply::Chunks {
        status: 200,
        content_type: "audio/pcm",
        chunks: (0..4).map(|_| Bytes::from_static(b"chunk")).collect(),
        delay: Duration::from_millis(150),
    })
    .await;
    let mut proxy = Proxy::start(&single_upstream(&a.url(), "")).await;
    let response = client()
        .request(speech_request(
            &proxy.url("/v1/audio/speech"),
            speech_json(),
        ))
        .await
        .unwrap();
    let stopped = proxy.shutdown();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("stream completes")
        .to_bytes();
    assert_eq!(&body[..], b"chunkchunkchunkchunk");
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("server stops once idle");
    assert!(
        tokio::net::TcpStream::connect(proxy.addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_stalls_is_cut_off_after_the_idle_timeout() {
    let a = Scripted::always(Reply::Chunks {
        status: 200,
        content_type: "audio/pcm",
        chunks: vec![Bytes::from_static(b"late")],
        delay: Duration::from_secs(30),
    })
    .await;
    let config = single_upstream(&a.url(), "idle_timeout = \"300ms\"");
    let proxy = Proxy::start(&config).await;
    let start = Instant::now();
    let response = client()
        .request(speech_request(
            &proxy.url("/v1/audio/speech"),
            speech_json(),
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "headers came at once");
    let collected = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .expect("the stall is cut off, not waited out");
    assert!(collected.is_err(), "a stalled stream must not end cleanly");
    assert!(
        ms(start) < 2000.0,
        "cut off after about 300 ms, took {} ms",
        ms(start)
    );
}

#[tokio::test]
async fn https_upstreams_are_verified_and_can_trust_a_ca_file_or_be_told_not_to_verify() {
    let tls = tls_upstream().await;
    let ca = std::env::temp_dir().join(format!("voxgate-ca-{}.pem", tls.addr.port()));
    std::fs::write(&ca, &tls.cert_pem).unwrap();
    let url = format!("https://{}", tls.addr);

    let verified = Proxy::start(&single_upstream(&url, "")).await;
    let r = speech_via(&verified).await;
    assert_eq!(
        r.status, 502,
        "an untrusted certificate fails the handshake"
    );
    assert!(
        r.error_message().to_lowercase().contains("certificate"),
        "{}",
        r.error_message()
    );

    let with_ca = Proxy::start(&single_upstream(
        &url,
        &format!("ca_file = \"{}\"", ca.display()),
    ))
    .await;
    let r = speech_via(&with_ca).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"tls-ok"[..]));
    assert_eq!(r.header("x-version"), Some("HTTP/2.0"), "HTTP/2 by ALPN");

    let unverified = Proxy::start(&single_upstream(&url, "tls_verify = false")).await;
    assert_eq!(speech_via(&unverified).await.status, 200);
    let _ = std::fs::remove_file(ca);
}

/// An https upstream without HTTP/2 gets voxgate's own HTTP/1.1 over TLS, and its
/// connection is kept between requests.
#[tokio::test]
async fn https_upstreams_without_http2_get_http1_on_a_kept_connection() {
    let tls = tls_upstream_speaking(&[b"http/1.1"]).await;
    let url = format!("https://{}", tls.addr);
    let proxy = Proxy::start(&single_upstream(&url, "tls_verify = false")).await;
    for round in 0..3 {
        let r = speech_via(&proxy).await;
        assert_eq!(
            (r.status, &r.body[..]),
            (200, &b"tls-ok"[..]),
            "round {round}"
        );
        assert_eq!(r.header("x-version"), Some("HTTP/1.1"));
    }
    assert_eq!(
        tls.accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one connection, kept"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_mid_response_cancels_the_upstream_request() {
    let a = Scripted::always(Reply::Chunks {
        status: 200,
        content_type: "audio/pcm",
        chunks: (0..100).map(|_| Bytes::from_static(b"chunk")).collect(),
        delay: Duration::from_millis(50),
    })
    .await;
    let proxy = Proxy::start(&single_upstream(&a.url(), "")).await;
    let response = client()
        .request(speech_request(
            &proxy.url("/v1/audio/speech"),
            speech_json(),
        ))
        .await
        .unwrap();
    let mut body = response.into_body();
    assert!(body.frame().await.is_some(), "the stream started");
    drop(body);
    // The whole stream would take 5 s; the upstream connection must end long before.
    let start = Instant::now();
    while a.closed() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the upstream request was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.gateway.replay_memory_used(), 0, "nothing held");
}

#[tokio::test]
async fn upstream_errors_in_other_dialects_reach_the_client_in_openai_shape() {
    let kokoro = Scripted::always(Reply::json(
        400,
        json!({"detail": {"error": "validation_error", "message": "Voice 'alloy2' not found", "type": "invalid_request_error"}}),
    ))
    .await;
    let proxy = Proxy::start(&single_upstream(&kokoro.url(), "")).await;
    let r = speech_via(&proxy).await;
    assert_eq!(r.status, 400, "status kept");
    assert_eq!(r.error_message(), "Voice 'alloy2' not found");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(r.header("x-voxgate-upstream"), Some("a"));

    let whisper = Scripted::always(Reply::Full {
        status: 500,
        headers: vec![("content-type", "text/plain".into())],
        body: Bytes::from_static(b"failed to read WAV file\n"),
    })
    .await;
    let proxy = Proxy::start(&single_upstream(&whisper.url(), "")).await;
    let body = form(&[
        ("model", None, b"whisper-1"),
        ("file", Some("a.wav"), b"junk"),
    ]);
    let r = transcribe(&proxy, body).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.error_message(), "failed to read WAV file");
    assert_eq!(r.json()["error"]["type"], "server_error");
}

#[tokio::test]
async fn text_transcriptions_sent_as_html_are_plain_text() {
    let whisper = Scripted::always(Reply::Full {
        status: 200,
        headers: vec![("content-type", "text/html; charset=utf-8".into())],
        body: Bytes::from_static(b" And so my fellow Americans\n"),
    })
    .await;
    let proxy = Proxy::start(&single_upstream(&whisper.url(), "")).await;
    let body = form(&[
        ("model", None, b"whisper-1"),
        ("response_format", None, b"text"),
        ("file", Some("a.wav"), b"RIFF"),
    ]);
    let r = transcribe(&proxy, body).await;
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(&r.body[..], b" And so my fellow Americans\n");
}
