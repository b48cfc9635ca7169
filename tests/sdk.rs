//! The official SDKs drive voxgate over real sockets: openai-python (tests/sdk/python_client.py)
//! and openai-node (tests/sdk/node/node_client.mjs) run as child processes against an
//! in-process voxgate in front of scripted upstreams. Each script prints its result as JSON
//! on its last stdout line. Install the SDKs first with `scripts/install-test-deps.sh`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use sha2::{Digest, Sha256};
use support::*;
use tokio::process::Command;

const INSTALL_HINT: &str = "run `bash scripts/install-test-deps.sh` to install the SDKs";

fn python() -> PathBuf {
    let python = repo("target/sdk-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: {INSTALL_HINT}",
        python.display()
    );
    python
}

/// 0.5 s of a 440 Hz tone as a 16 kHz mono s16le WAV file, with its bytes.
fn wav() -> (tempfile::TempPath, Vec<u8>) {
    let samples: Vec<i16> = (0..8000)
        .map(|i| ((i as f64 * 440.0 * std::f64::consts::TAU / 16000.0).sin() * 8000.0) as i16)
        .collect();
    let data_len = samples.len() as u32 * 2;
    let mut bytes = Vec::with_capacity(44 + data_len as usize);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&1u16.to_le_bytes()); // mono
    bytes.extend_from_slice(&16000u32.to_le_bytes()); // sample rate
    bytes.extend_from_slice(&32000u32.to_le_bytes()); // byte rate
    bytes.extend_from_slice(&2u16.to_le_bytes()); // block align
    bytes.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    let file = tempfile::Builder::new()
        .prefix("voxgate-sdk-")
        .suffix(".wav")
        .tempfile()
        .unwrap();
    std::fs::write(file.path(), &bytes).unwrap();
    (file.into_temp_path(), bytes)
}

/// Runs a client script against `proxy` with the SDK pointed at it, bounded by 60 s.
async fn run(command: Command, proxy: &Proxy, audio: &Path, env: &[(&str, &str)]) -> Outcome {
    run_at(command, &proxy.url("/v1"), audio, env).await
}

/// Runs a client script with the SDK's base URL set to `base_url`.
async fn run_at(
    mut command: Command,
    base_url: &str,
    audio: &Path,
    env: &[(&str, &str)],
) -> Outcome {
    command
        .env("OPENAI_BASE_URL", base_url)
        .env("OPENAI_API_KEY", "sk-client-test")
        .env("VOXGATE_AUDIO_FILE", audio)
        .envs(env.iter().copied());
    let cleared = ["OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_LOG"];
    run_script(command, &cleared, Duration::from_secs(60), INSTALL_HINT).await
}

fn python_command(scenario: &str) -> Command {
    let mut command = Command::new(python());
    command
        .arg(repo("tests/sdk/python_client.py"))
        .arg(scenario);
    command
}

fn node_command(scenario: &str) -> Command {
    let modules = repo("tests/sdk/node/node_modules/openai");
    assert!(
        modules.exists(),
        "{} is missing: {INSTALL_HINT}",
        modules.display()
    );
    let mut command = Command::new("node");
    command
        .arg(repo("tests/sdk/node/node_client.mjs"))
        .arg(scenario);
    command
}

/// Runs a scenario of tests/sdk/python_client.py.
async fn run_python(scenario: &str, proxy: &Proxy, audio: &Path, env: &[(&str, &str)]) -> Outcome {
    run(python_command(scenario), proxy, audio, env).await
}

/// Runs a scenario of tests/sdk/node/node_client.mjs.
async fn run_node(scenario: &str, proxy: &Proxy, audio: &Path, env: &[(&str, &str)]) -> Outcome {
    run(node_command(scenario), proxy, audio, env).await
}

/// SHA-256 in hex, as the scripts print it.
fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A config with upstreams `a` and `b` (with extra keys for `b`) and the given routes.
/// Passive ejection is off: these tests look at each request's own fallback.
fn two_upstreams(a: &str, b: &str, b_extra: &str, routes: &str) -> String {
    format!(
        "[upstreams.a]\nurl = \"{a}\"\nresponse_timeout = \"2s\"\neject_after = 0\n\
         [upstreams.b]\nurl = \"{b}\"\nresponse_timeout = \"2s\"\neject_after = 0\n{b_extra}\n{routes}"
    )
}

const A_THEN_B: &str = "[[routes]]\nto = [\"a\", \"b\"]\n";

/// Asserts a python upload: `model` first, the WAV file last and byte for byte.
async fn assert_python_form(received: &Received, model: &str, wav: &[u8]) {
    let parts = parse_form(received).await;
    assert_eq!(parts[0].0, "model");
    assert_eq!(parts[0].2, model);
    let file = parts.last().unwrap();
    assert_eq!(file.0, "file");
    assert!(
        file.1.as_deref().is_some_and(|f| f.ends_with(".wav")),
        "{:?}",
        file.1
    );
    assert_eq!(file.2, wav, "the WAV file arrives intact");
}

#[tokio::test]
async fn python_speech_gets_the_upstream_audio_byte_for_byte() {
    let audio = Bytes::from(noise(48_000));
    let kokoro = Scripted::always(Reply::ok("audio/pcm", audio.clone())).await;
    let proxy = Proxy::start(&single_upstream(&kokoro.url(), "")).await;
    let (file, _) = wav();
    let out = run_python("speech", &proxy, &file, &[("VOXGATE_VOICE", "af_sky")])
        .await
        .ok();
    assert_eq!(out["bytes"], audio.len());
    assert_eq!(out["sha256"], sha256(&audio));
    let got = kokoro.last();
    assert_eq!(got.path, "/v1/audio/speech");
    let body = got.json();
    assert_eq!(body["model"], "tts-1");
    assert_eq!(body["voice"], "af_sky");
    assert_eq!(body["input"], "Hello from voxgate");
    assert_eq!(body["response_format"], "pcm");
}

/// A Kokoro that streams five 4 KiB chunks 150 ms apart (750 ms in all); and the chunks.
async fn slow_kokoro() -> (Scripted, Vec<Bytes>) {
    let chunks: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![i; 4096])).collect();
    let kokoro = Scripted::always(Reply::Chunks {
        status: 200,
        content_type: "audio/pcm",
        chunks: chunks.clone(),
        delay: Duration::from_millis(150),
    })
    .await;
    (kokoro, chunks)
}

/// The `speech_stream` scenario's first audio came well before its end (the upstream of
/// [`slow_kokoro`] takes 750 ms).
fn assert_first_audio_early(out: &serde_json::Value, how: &str) {
    let (first, total) = (
        out["first_chunk_ms"].as_f64().unwrap(),
        out["total_ms"].as_f64().unwrap(),
    );
    assert!(
        first + 400.0 < total,
        "{how}first audio at {first} ms of {total} ms: the upstream takes 750 ms"
    );
}

#[tokio::test]
async fn python_streamed_speech_plays_before_the_upstream_finishes() {
    let (kokoro, chunks) = slow_kokoro().await;
    let proxy = Proxy::start(&single_upstream(&kokoro.url(), "")).await;
    let (file, _) = wav();
    let out = run_python("speech_stream", &proxy, &file, &[]).await.ok();
    let all = chunks.concat();
    assert_eq!(out["bytes"], all.len());
    assert_eq!(out["sha256"], sha256(&all));
    assert!(out["chunks"].as_u64().unwrap() > 1, "{out}");
    assert_first_audio_early(&out, "");
    assert!(out["request_id"].is_string(), "{out}");
    assert_eq!(out["upstream"], "a");
    assert_eq!(
        kokoro.last().header("x-stainless-raw-response"),
        Some("stream")
    );
}

#[tokio::test]
async fn python_transcriptions_and_translations_arrive_with_model_first_and_the_file_intact() {
    let json_up = Scripted::always(Reply::json(200, json!({"text": "from json"}))).await;
    let text_up = Scripted::always(Reply::ok("text/plain", "hello world\n")).await;
    let routes = "[[routes]]\nmatch = { response_format = \"text\" }\nto = [\"b\"]\n\
                  [[routes]]\nto = [\"a\"]\n";
    let proxy = Proxy::start(&two_upstreams(&json_up.url(), &text_up.url(), "", routes)).await;
    let (file, bytes) = wav();

    let out = run_python("transcribe", &proxy, &file, &[]).await.ok();
    assert_eq!(out["text"], "from json");
    let got = json_up.last();
    assert_eq!(got.path, "/v1/audio/transcriptions");
    assert_python_form(&got, "whisper-1", &bytes).await;

    let out = run_python("transcribe_text", &proxy, &file, &[]).await.ok();
    assert_eq!(out["text"], "hello world\n");
    assert_python_form(&text_up.last(), "whisper-1", &bytes).await;

    let out = run_python("translate", &proxy, &file, &[]).await.ok();
    assert_eq!(out["text"], "from json");
    let got = json_up.last();
    assert_eq!(got.path, "/v1/audio/translations");
    assert_python_form(&got, "whisper-1", &bytes).await;
    assert_eq!((json_up.count(), text_up.count()), (2, 1));
}

#[tokio::test]
async fn python_streamed_transcription_gets_every_event() {
    let events = [
        "data: {\"type\":\"transcript.text.delta\",\"delta\":\"Hel\"}\n\n",
        "data: {\"type\":\"transcript.text.delta\",\"delta\":\"lo\"}\n\n",
        "data: {\"type\":\"transcript.text.done\",\"text\":\"Hello\"}\n\n",
    ];
    let up = Scripted::always(Reply::Chunks {
        status: 200,
        content_type: "text/event-stream",
        chunks: events
            .iter()
            .map(|e| Bytes::from_static(e.as_bytes()))
            .collect(),
        delay: Duration::from_millis(50),
    })
    .await;
    let proxy = Proxy::start(&single_upstream(&up.url(), "")).await;
    let (file, bytes) = wav();
    let out = run_python("transcribe_stream", &proxy, &file, &[])
        .await
        .ok();
    assert_eq!(
        out["events"],
        json!([
            "transcript.text.delta",
            "transcript.text.delta",
            "transcript.text.done"
        ])
    );
    assert_eq!(out["text"], "Hello");
    let got = up.last();
    assert_python_form(&got, "gpt-4o-mini-transcribe", &bytes).await;
    let parts = parse_form(&got).await;
    assert!(
        parts.iter().any(|p| p.0 == "stream" && p.2 == "true"),
        "{parts:?}"
    );
}

#[tokio::test]
async fn python_streamed_transcription_from_whisper_cpp_gets_events_voxgate_made() {
    let whisper = engines::whisper_cpp().await;
    let config = single_of_kind("whisper-cpp", &whisper.url(), "");
    let proxy = Proxy::start(&config).await;
    let (file, _) = wav();
    let out = run_python("transcribe_stream", &proxy, &file, &[])
        .await
        .ok();
    assert_eq!(
        out["events"],
        json!(["transcript.text.delta", "transcript.text.done"])
    );
    assert_eq!(out["text"], engines::HEARD);
    let got = whisper.last();
    assert_eq!(got.path, "/inference");
    assert_eq!(
        engines::form_text(&got, "response_format").as_deref(),
        Some("json")
    );
}

#[tokio::test]
async fn node_chunked_uploads_with_the_file_first_are_routed_by_model() {
    let whisper = Scripted::always(Reply::json(200, json!({"text": "local"}))).await;
    let openai = Scripted::always(Reply::json(200, json!({"text": "cloud"}))).await;
    let routes = "[[routes]]\nmatch = { model = \"gpt-4o-transcribe\" }\nto = [\"b\"]\n\
                  [[routes]]\nto = [\"a\"]\n";
    let proxy = Proxy::start(&two_upstreams(&whisper.url(), &openai.url(), "", routes)).await;
    let (file, bytes) = wav();
    for (model, text, upstream) in [
        ("gpt-4o-transcribe", "cloud", &openai),
        ("whisper-1", "local", &whisper),
    ] {
        let out = run_node(
            "transcribe_stream_file",
            &proxy,
            &file,
            &[("VOXGATE_MODEL", model)],
        )
        .await
        .ok();
        assert_eq!(out["text"], text);
        assert_eq!(upstream.count(), 1, "{model} went to its upstream once");
        let got = upstream.last();
        assert_eq!(got.path, "/v1/audio/transcriptions");
        let parts = parse_form(&got).await;
        let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            names,
            ["file", "model", "response_format"],
            "parts in order"
        );
        assert_eq!(parts[0].2, bytes, "the WAV file arrives intact");
        assert_eq!(parts[1].2, model);
        assert_eq!(
            got.header("content-length"),
            Some(got.body.len().to_string().as_str())
        );
    }
}

#[tokio::test]
async fn both_sdks_fall_back_from_a_503_primary() {
    let a = Scripted::always(Reply::status(503)).await;
    let speech = Bytes::from(noise(10_000));
    let b = Scripted::start({
        let speech = speech.clone();
        move |r| match r.path.as_str() {
            "/v1/audio/speech" => Reply::ok("audio/pcm", speech.clone()),
            _ => Reply::json(200, json!({"text": "from b"})),
        }
    })
    .await;
    let proxy = Proxy::start(&two_upstreams(&a.url(), &b.url(), "", A_THEN_B)).await;
    let (file, bytes) = wav();

    let out = run_python("speech", &proxy, &file, &[]).await.ok();
    assert_eq!(out["sha256"], sha256(&speech));
    let out = run_node("transcribe_stream_file", &proxy, &file, &[])
        .await
        .ok();
    assert_eq!(out["text"], "from b");

    let (tried, answered) = (a.received(), b.received());
    assert_eq!((tried.len(), answered.len()), (2, 2));
    for (a_got, b_got) in tried.iter().zip(&answered) {
        assert_eq!(a_got.path, b_got.path);
        assert_eq!(a_got.body, b_got.body, "the fallback got the same body");
    }
    assert_eq!(parse_form(&answered[1]).await[0].2, bytes);
}

#[tokio::test]
async fn python_transcription_falls_back_from_a_dead_primary() {
    let dead = refused_addr().await;
    let b = Scripted::always(Reply::json(200, json!({"text": "from b"}))).await;
    let proxy = Proxy::start(&two_upstreams(
        &format!("http://{dead}"),
        &b.url(),
        "",
        A_THEN_B,
    ))
    .await;
    let (file, bytes) = wav();
    let out = run_python("transcribe", &proxy, &file, &[]).await.ok();
    assert_eq!(out["text"], "from b");
    assert_python_form(&b.last(), "whisper-1", &bytes).await;
}

#[tokio::test]
async fn when_every_upstream_fails_the_sdks_get_502_and_do_not_retry() {
    let a = Scripted::always(Reply::status(503)).await;
    let dead = refused_addr().await;
    let proxy = Proxy::start(&two_upstreams(
        &a.url(),
        &format!("http://{dead}"),
        "",
        A_THEN_B,
    ))
    .await;
    let (file, _) = wav();
    let retries = [("VOXGATE_MAX_RETRIES", "2")];

    let out = run_python("speech", &proxy, &file, &retries).await;
    assert_eq!(out.code, Some(3), "an API status error: {}", out.stderr);
    assert_eq!(out.json["error"]["status"], 502);
    let message = out.json["error"]["message"].as_str().unwrap();
    assert!(message.contains("a: answered 503"), "{message}");
    assert!(message.contains("b: connect failed"), "{message}");
    assert_eq!(
        a.count(),
        1,
        "x-should-retry: false stops the SDK's retries"
    );

    let out = run_node("speech", &proxy, &file, &retries).await;
    assert_eq!(out.code, Some(3), "an API status error: {}", out.stderr);
    assert_eq!(out.json["error"]["status"], 502);
    assert_eq!(a.count(), 2, "node does not retry either");
}

#[tokio::test]
async fn the_last_upstreams_503_reaches_the_sdk_which_retries_it() {
    let a = Scripted::always(Reply::status(503)).await;
    let b = Scripted::always(Reply::status(503)).await;
    let proxy = Proxy::start(&two_upstreams(&a.url(), &b.url(), "", A_THEN_B)).await;
    let (file, _) = wav();
    let out = run_python("speech", &proxy, &file, &[("VOXGATE_MAX_RETRIES", "1")]).await;
    assert_eq!(out.code, Some(3), "an API status error: {}", out.stderr);
    assert_eq!(out.json["error"]["status"], 503);
    assert_eq!(
        out.json["error"]["message"], "Error code: 503 - scripted 503",
        "b's own message"
    );
    assert_eq!(
        (a.count(), b.count()),
        (2, 2),
        "the SDK retried once, and each try went through the route again"
    );
}

#[tokio::test]
async fn upstreams_get_their_own_key_or_none_never_the_clients() {
    let a = Scripted::always(Reply::ok("audio/pcm", "a")).await;
    let b = Scripted::always(Reply::ok("audio/pcm", "b")).await;
    let routes = "[[routes]]\nmatch = { voice = \"nova\" }\nto = [\"b\"]\n\
                  [[routes]]\nto = [\"a\"]\n";
    let proxy = Proxy::start(&two_upstreams(
        &a.url(),
        &b.url(),
        "api_key = \"sk-upstream\"",
        routes,
    ))
    .await;
    let (file, _) = wav();
    for voice in ["alloy", "nova"] {
        run_python("speech", &proxy, &file, &[("VOXGATE_VOICE", voice)])
            .await
            .ok();
    }
    assert_eq!(a.last().header("authorization"), None);
    assert_eq!(b.last().header("authorization"), Some("Bearer sk-upstream"));
    for got in [a.last(), b.last()] {
        assert!(
            got.headers
                .values()
                .all(|v| !v.as_bytes().windows(14).any(|w| w == b"sk-client-test")),
            "the client's key leaked: {:?}",
            got.headers
        );
    }
}

/// Both SDKs over https, trusting a test CA the way users do (`SSL_CERT_FILE` for
/// openai-python's httpx, `NODE_EXTRA_CA_CERTS` for Node): streamed speech plays before
/// the upstream is done, and the Node client gets the audio whole.
#[tokio::test]
async fn both_sdks_speak_https_to_voxgate_streaming_included() {
    let (kokoro, chunks) = slow_kokoro().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = support::pki::TestCa::new();
    let ca_file = ca.write(dir.path());
    let leaf = ca.leaf(dir.path(), "server");
    let toml = format!(
        "[server]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n{}",
        leaf.cert.display(),
        leaf.key.display(),
        single_upstream(&kokoro.url(), "")
    );
    let proxy = Proxy::start(&toml).await;
    let base = format!("https://localhost:{}/v1", proxy.addr.port());
    let (file, _) = wav();
    let ca_path = ca_file.to_str().unwrap();
    let all = chunks.concat();

    let out = run_at(
        python_command("speech_stream"),
        &base,
        &file,
        &[("SSL_CERT_FILE", ca_path)],
    )
    .await
    .ok();
    assert_eq!(out["sha256"], sha256(&all));
    assert_first_audio_early(&out, "over https, ");

    let out = run_at(
        node_command("speech"),
        &base,
        &file,
        &[("NODE_EXTRA_CA_CERTS", ca_path)],
    )
    .await
    .ok();
    assert_eq!(out["bytes"], all.len());
    assert_eq!(out["sha256"], sha256(&all));

    // Without the CA, neither SDK trusts voxgate's certificate: the test above is real.
    let refused = run_at(python_command("speech"), &base, &file, &[]).await;
    assert_eq!(refused.code, Some(1), "{:?}", refused.json);
    assert_eq!(kokoro.count(), 2);
}

/// Client keys and limits (issue 20) as the SDKs see them: their own error classes, and
/// no client key ever reaching an upstream.
#[tokio::test]
async fn keys_and_limits_reach_both_sdks_as_their_error_classes() {
    let up = Scripted::always(Reply::ok("audio/pcm", "PCM")).await;
    let config = format!(
        "{}\n[[clients]]\nname = \"alice\"\nkey = \"sk-alice-test\"\nmodels = [\"tts-1\", \"whisper-1\"]\nlimits = {{ requests = \"2/hour\" }}\n",
        single_upstream(&up.url(), "api_key = \"sk-upstream\"")
    );
    let proxy = Proxy::start(&config).await;
    let (file, _) = wav();
    let expect = |out: &Outcome, class: &str, status: u16| {
        assert_eq!(out.code, Some(3), "an API status error: {}", out.stderr);
        assert_eq!(out.json["error"]["class"], class, "{}", out.json);
        assert_eq!(out.json["error"]["status"], status);
    };
    let nobody = [("OPENAI_API_KEY", "sk-nobody")];
    expect(
        &run_python("speech", &proxy, &file, &nobody).await,
        "AuthenticationError",
        401,
    );
    expect(
        &run_node("speech", &proxy, &file, &nobody).await,
        "AuthenticationError",
        401,
    );
    let hd = [
        ("OPENAI_API_KEY", "sk-alice-test"),
        ("VOXGATE_MODEL", "tts-1-hd"),
    ];
    expect(
        &run_python("speech", &proxy, &file, &hd).await,
        "PermissionDeniedError",
        403,
    );
    expect(
        &run_node("speech", &proxy, &file, &hd).await,
        "PermissionDeniedError",
        403,
    );
    assert_eq!(up.count(), 0);
    let alice = [("OPENAI_API_KEY", "sk-alice-test")];
    let out = run_python("speech", &proxy, &file, &alice).await.ok();
    assert_eq!(out["sha256"], sha256(b"PCM"));
    run_node("speech", &proxy, &file, &alice).await.ok();
    expect(
        &run_python("speech", &proxy, &file, &alice).await,
        "RateLimitError",
        429,
    );
    expect(
        &run_node("speech", &proxy, &file, &alice).await,
        "RateLimitError",
        429,
    );
    assert_eq!(up.count(), 2);
    for got in up.received() {
        assert_eq!(got.header("authorization"), Some("Bearer sk-upstream"));
        let all = format!("{:?}", got.headers);
        assert!(
            !all.contains("sk-alice") && !all.contains("sk-nobody"),
            "{all}"
        );
    }
}
