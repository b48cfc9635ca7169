//! A mixed workload through the daemon: the kinds of request voxgate is built for, many at
//! a time over kept-alive connections, every answer checked.
//!
//! It is also the training run of the profile-guided release build
//! (`scripts/build-release.sh`): `VOXGATE_BIN` points it at another voxgate binary (the
//! instrumented one) and `VOXGATE_WORKLOAD_SCALE` multiplies every request count (1 here).
//! The daemon is stopped with SIGTERM and must exit cleanly: that exit is when an
//! instrumented binary writes its profile.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use serde_json::json;
use support::daemon::{start_with, stop_with_sigterm};
use support::engines::{openai, whisper_cpp_at, OPENAI_AUDIO};
use support::{
    client, form, form_content_type, full_body, noise, parse_form, post, refused_addr,
    speech_request, Received, Reply, Scripted,
};

/// Size of a whole speech answer, and of each piece of a streamed one.
const SPEECH: usize = 32 * 1024;
const PIECE: usize = 4 * 1024;
const PIECES: usize = 4;
/// Over the default replay memory of one request (4 MiB): kept on disk for a fallback.
const SPILLED: usize = 6 * 1024 * 1024;

/// A Kokoro-like or plain speech engine that answers at once: 32 KiB of audio, or, for an
/// input starting with "stream", four 4 KiB chunks 2 ms apart.
fn speech_engine(r: &Received) -> Reply {
    match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/health") => Reply::json(200, json!({ "status": "healthy" })),
        ("POST", "/v1/audio/speech") => {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            let input = body["input"].as_str().unwrap_or_default();
            if input.starts_with("stream") {
                Reply::Chunks {
                    status: 200,
                    content_type: "audio/pcm",
                    chunks: vec![Bytes::from(noise(PIECE)); PIECES],
                    delay: Duration::from_millis(2),
                }
            } else {
                Reply::ok("audio/pcm", noise(SPEECH))
            }
        }
        _ => Reply::status(404),
    }
}

fn config(local: &str, plain: &str, whisper: &str, openai: &str, busy: &str, dead: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstreams.local]
kind = "kokoro"
url = "{local}"

[upstreams.plain]
url = "{plain}"

[upstreams.whisper]
kind = "whisper-cpp"
url = "{whisper}"
paths = {{ transcriptions = "/v1/audio/transcriptions", translations = "/v1/audio/transcriptions" }}

[upstreams.openai]
kind = "openai"
url = "{openai}"
api_key = "sk-workload"

[upstreams.busy]
url = "{busy}"
eject_after = 0

[upstreams.dead]
url = "{dead}"
connect_timeout = "1s"

[[routes]]
match = {{ endpoint = "speech", model = "plain" }}
to = ["plain", "openai"]

[[routes]]
match = {{ endpoint = "speech", model = "tts-1-hd" }}
to = ["openai"]

[[routes]]
match = {{ endpoint = "speech", model = "busy" }}
to = ["busy", "local"]
set = {{ model = "kokoro" }}

[[routes]]
match = {{ endpoint = "speech", model = "dead" }}
to = ["dead", "local"]
set = {{ model = "kokoro" }}

[[routes]]
match = {{ endpoint = "speech" }}
to = ["local", "openai"]

[[routes]]
match = {{ endpoint = ["transcriptions", "translations"] }}
to = ["whisper", "openai"]

[[routes]]
to = ["openai"]
"#
    )
}

/// Builds the `i`th request of a kind, given voxgate's base URL.
type MakeRequest = Box<dyn Fn(&str, usize) -> Request<support::TestBody> + Send + Sync>;
/// Whether an answer (status, body) is right.
type Check = Box<dyn Fn(u16, &[u8]) -> bool + Send + Sync>;

/// One kind of request: how many, over how many connections, and what a right answer is.
struct Kind {
    name: &'static str,
    count: usize,
    connections: usize,
    request: MakeRequest,
    check: Check,
}

fn kind(
    name: &'static str,
    count: usize,
    connections: usize,
    request: impl Fn(&str, usize) -> Request<support::TestBody> + Send + Sync + 'static,
    check: impl Fn(u16, &[u8]) -> bool + Send + Sync + 'static,
) -> Kind {
    Kind {
        name,
        count,
        connections,
        request: Box::new(request),
        check: Box::new(check),
    }
}

fn speech(base: &str, body: serde_json::Value) -> Request<support::TestBody> {
    speech_request(&format!("{base}/v1/audio/speech"), body)
}

/// A transcription or translation form as openai-node sends it: the file first.
fn upload(base: &str, endpoint: &str, file: &Bytes, format: &str) -> Request<support::TestBody> {
    let body = form(&[
        ("file", Some("speech.wav"), file),
        ("model", None, b"whisper-1"),
        ("response_format", None, format.as_bytes()),
    ]);
    let url = format!("{base}/v1/audio/{endpoint}");
    post(&url, &form_content_type(), full_body(body))
}

fn audio(len: usize) -> impl Fn(u16, &[u8]) -> bool {
    move |status, body| status == 200 && body.len() == len
}

fn text(needle: &'static str) -> impl Fn(u16, &[u8]) -> bool {
    move |status, body| status == 200 && String::from_utf8_lossy(body).contains(needle)
}

/// Speech requests all with the same body.
fn speaking(
    name: &'static str,
    count: usize,
    connections: usize,
    body: serde_json::Value,
    check: impl Fn(u16, &[u8]) -> bool + Send + Sync + 'static,
) -> Kind {
    kind(
        name,
        count,
        connections,
        move |b, _| speech(b, body.clone()),
        check,
    )
}

/// Uploads of one file to `endpoint`, right when the answer holds `heard`.
fn uploading(
    name: &'static str,
    count: usize,
    connections: usize,
    (endpoint, format): (&'static str, &'static str),
    file: &Bytes,
    heard: &'static str,
) -> Kind {
    let file = file.clone();
    let request = move |b: &str, _| upload(b, endpoint, &file, format);
    kind(name, count, connections, request, text(heard))
}

fn kinds(scale: usize) -> Vec<Kind> {
    let small = Bytes::from(noise(64 * 1024));
    let large = Bytes::from(noise(1024 * 1024));
    let spilled = Bytes::from(noise(SPILLED));
    let voices = ["af_bella", "alloy", "af_bella(2)+af_sky", "am_adam"];
    let hello = |model: &str, voice: &str| json!({ "model": model, "input": "Hello there.", "voice": voice, "response_format": "pcm" });
    let transcribe = ("transcriptions", "json");
    vec![
        kind(
            "speech",
            600 * scale,
            32,
            move |b, i| speech(b, hello("tts-1", voices[i % voices.len()])),
            audio(SPEECH),
        ),
        speaking(
            "speech, plain upstream",
            600 * scale,
            32,
            hello("plain", "alloy"),
            audio(SPEECH),
        ),
        speaking(
            "speech, streamed",
            60 * scale,
            16,
            json!({ "model": "tts-1", "input": "stream this", "voice": "af_sky" }),
            audio(PIECE * PIECES),
        ),
        speaking(
            "speech, OpenAI with a Kokoro voice",
            100 * scale,
            8,
            json!({ "model": "tts-1-hd", "input": "Hello there.", "voice": "am_adam", "speed": 1.1 }),
            |status, body| status == 200 && body == OPENAI_AUDIO,
        ),
        speaking(
            "speech, fallback from a 503",
            100 * scale,
            8,
            hello("busy", "af_bella"),
            audio(SPEECH),
        ),
        speaking(
            "speech, fallback from a refused connect",
            100 * scale,
            8,
            hello("dead", "af_bella"),
            audio(SPEECH),
        ),
        uploading(
            "transcriptions",
            150 * scale,
            8,
            transcribe,
            &small,
            "hello world",
        ),
        uploading(
            "transcriptions, text",
            50 * scale,
            4,
            ("transcriptions", "text"),
            &small,
            "hello world",
        ),
        uploading(
            "translations",
            50 * scale,
            4,
            ("translations", "json"),
            &small,
            "(translated)",
        ),
        uploading(
            "transcriptions, 1 MiB",
            10 * scale,
            4,
            transcribe,
            &large,
            "hello world",
        ),
        uploading(
            "transcriptions, 6 MiB, spilled",
            3 * scale,
            3,
            transcribe,
            &spilled,
            "hello world",
        ),
        kind(
            "malformed JSON",
            50 * scale,
            4,
            |b, _| {
                let url = format!("{b}/v1/audio/speech");
                post(
                    &url,
                    "application/json",
                    full_body(r#"{"model": "tts-1", "input": "#),
                )
            },
            |status, body| status == 400 && String::from_utf8_lossy(body).contains("\"error\""),
        ),
        kind(
            "models",
            20 * scale,
            2,
            |b, _| {
                Request::get(format!("{b}/v1/models"))
                    .body(full_body(Bytes::new()))
                    .unwrap()
            },
            text("whisper-1"),
        ),
    ]
}

/// Runs every kind at once; returns a line per wrong answer.
async fn drive(base: &str, kinds: Vec<Kind>) -> Vec<String> {
    let mut workers = tokio::task::JoinSet::new();
    for kind in kinds {
        let kind = Arc::new(kind);
        for worker in 0..kind.connections {
            let (kind, base) = (kind.clone(), base.to_string());
            workers.spawn(async move {
                // One client per worker: its requests share a kept-alive connection.
                let client = client();
                let mut wrong = Vec::new();
                for i in (worker..kind.count).step_by(kind.connections) {
                    let request = (kind.request)(&base, i);
                    let answer = async {
                        let response = client.request(request).await.map_err(|e| e.to_string())?;
                        let status = response.status().as_u16();
                        let body = response
                            .into_body()
                            .collect()
                            .await
                            .map_err(|e| e.to_string())?;
                        Ok::<_, String>((status, body.to_bytes()))
                    };
                    match tokio::time::timeout(Duration::from_secs(30), answer).await {
                        Ok(Ok((status, body))) if (kind.check)(status, &body) => {}
                        Ok(Ok((status, body))) => wrong.push(format!(
                            "{}: {status} {:?}",
                            kind.name,
                            String::from_utf8_lossy(&body[..body.len().min(200)])
                        )),
                        Ok(Err(e)) => wrong.push(format!("{}: {e}", kind.name)),
                        Err(_) => wrong.push(format!("{}: no answer in 30 s", kind.name)),
                    }
                }
                wrong
            });
        }
    }
    let mut wrong = Vec::new();
    while let Some(done) = workers.join_next().await {
        wrong.extend(done.expect("worker finished"));
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_workload_through_the_daemon_is_answered_right() {
    let scale: usize = std::env::var("VOXGATE_WORKLOAD_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let binary = std::env::var_os("VOXGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_voxgate")));
    let local = Scripted::start(speech_engine).await;
    let plain = Scripted::start(speech_engine).await;
    let whisper = whisper_cpp_at("/v1/audio/transcriptions").await;
    let openai = openai("sk-workload").await;
    let busy = Scripted::always(Reply::status(503)).await;
    let dead = refused_addr().await;
    let toml = config(
        &local.url(),
        &plain.url(),
        &whisper.url(),
        &openai.url(),
        &busy.url(),
        &format!("http://{dead}"),
    );
    let file = std::env::temp_dir().join(format!("voxgate-workload-{}.toml", std::process::id()));
    std::fs::write(&file, toml).unwrap();

    let mut command = Command::new(&binary);
    command.env_remove("VOXGATE_CONFIG").env_remove("RUST_LOG");
    let (mut daemon, address, _log, _seen) = start_with(command, &file);
    let kinds = kinds(scale);
    let total: usize = kinds.iter().map(|k| k.count).sum();
    let wrong = drive(&format!("http://{address}"), kinds).await;
    stop_with_sigterm(&mut daemon);
    let _ = std::fs::remove_file(&file);

    assert!(
        wrong.is_empty(),
        "{} of {total} answers wrong, the first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    // Every request reached the engine it was routed to; the 503 one was tried first, each
    // time, by the requests routed to it.
    let speech = |s: &Scripted| {
        s.received()
            .iter()
            .filter(|r| r.path == "/v1/audio/speech")
            .count()
    };
    assert_eq!(speech(&local), (600 + 60 + 100 + 100) * scale);
    assert_eq!(speech(&plain), 600 * scale);
    assert_eq!(speech(&busy), 100 * scale);
    // The uploads spilled to disk went on whole.
    let sent = noise(SPILLED);
    let spilled: Vec<Received> = whisper
        .received()
        .into_iter()
        .filter(|r| r.body.len() > SPILLED)
        .collect();
    assert_eq!(spilled.len(), 3 * scale);
    for r in &spilled {
        let parts = parse_form(r).await;
        assert!(parts
            .iter()
            .any(|(name, _, bytes)| name == "file" && bytes[..] == sent[..]));
    }
}
