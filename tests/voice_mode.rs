//! voice-mode itself (voice-mode 8.12.0, installed by `scripts/install-test-deps.sh`)
//! pointed at voxgate, as its users run it: one base URL for speech and transcription.
//! Its headless calls, `simple_tts_synthesize` and `simple_stt_failover`, run in
//! tests/voicemode/driver.py against engine-like upstreams, behind the shipped
//! config/local-first.toml: first with the local Kokoro and whisper.cpp up, then with both
//! down so that OpenAI answers — and OpenAI must then have been spoken to in its own terms.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::engines::{self, form_names, form_text, HEARD, KOKORO_CHUNKS, OPENAI_AUDIO};
use support::*;
use tokio::process::Command;

const KEY: &str = "sk-configured-key";

/// config/local-first.toml, the shipped voice-mode setup, with its engines' addresses
/// pointed at the scripted ones and the OpenAI key written in.
fn config(kokoro: &str, whisper: &str, openai: &str) -> String {
    let text = std::fs::read_to_string(repo("config/local-first.toml")).unwrap();
    let replaced = text
        .replace("http://127.0.0.1:8880", kokoro)
        .replace("http://127.0.0.1:2022", whisper)
        .replace("https://api.openai.com", openai)
        .replace("${OPENAI_API_KEY:-}", KEY);
    for (theirs, ours) in [
        (kokoro, "8880"),
        (whisper, "2022"),
        (openai, "api.openai.com"),
    ] {
        assert!(
            replaced.contains(theirs),
            "local-first.toml no longer names {ours}"
        );
    }
    replaced
}

/// Runs the driver with voice-mode's base URLs set to voxgate; its JSON result.
async fn voice_mode(proxy: &Proxy) -> Value {
    let python = repo("target/voicemode-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash scripts/install-test-deps.sh`",
        python.display()
    );
    let mut command = Command::new(python);
    command
        .arg(repo("tests/voicemode/driver.py"))
        .arg("af_sky")
        .env("VOXGATE_BASE_URL", proxy.url("/v1"))
        .env("NO_PROXY", "127.0.0.1,localhost");
    let cleared = ["OPENAI_API_KEY", "OPENAI_BASE_URL"];
    let hint = "run `bash scripts/install-test-deps.sh`";
    run_script(command, &cleared, Duration::from_secs(90), hint)
        .await
        .ok()
}

#[tokio::test]
async fn voice_mode_speaks_and_listens_through_the_local_engines() {
    let kokoro = engines::kokoro().await;
    // As voice-mode starts whisper-server, and as local-first.toml expects it.
    let whisper = engines::whisper_cpp_at("/v1/audio/transcriptions").await;
    let openai = engines::openai(KEY).await;
    let proxy = Proxy::start(&config(&kokoro.url(), &whisper.url(), &openai.url())).await;
    let out = voice_mode(&proxy).await;

    let tts = &out["tts"];
    assert_eq!(tts["ok"], true, "{out}");
    assert_eq!(tts["rate"], 24000);
    assert_eq!(
        tts["samples"],
        KOKORO_CHUNKS.concat().len() / 2,
        "every sample of Kokoro's audio"
    );
    let spoken = kokoro.last_to("/v1/audio/speech").json();
    assert_eq!(spoken["voice"], "af_sky");
    assert_eq!(spoken["response_format"], "pcm");

    assert_eq!(out["stt"]["text"], HEARD, "{out}");
    // Panics unless the transcription arrived at whisper-server's own path.
    let heard = whisper.last_to("/v1/audio/transcriptions");
    assert_eq!(form_text(&heard, "language").as_deref(), Some("auto"));
    assert_eq!(openai.count(), 0, "nothing went to OpenAI");
}

#[tokio::test]
async fn voice_mode_falls_back_to_openai_which_gets_openai_voices_and_the_real_key() {
    let kokoro = refused_addr().await;
    let whisper = refused_addr().await;
    let openai = engines::openai(KEY).await;
    let proxy = Proxy::start(&config(
        &format!("http://{kokoro}"),
        &format!("http://{whisper}"),
        &openai.url(),
    ))
    .await;
    let out = voice_mode(&proxy).await;

    assert_eq!(out["tts"]["ok"], true, "{out}");
    assert_eq!(out["tts"]["samples"], OPENAI_AUDIO.len() / 2);
    assert_eq!(out["stt"]["text"], HEARD, "{out}");

    let received = openai.received();
    assert_eq!(received.len(), 2, "one speech, one transcription");
    for r in &received {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {KEY}").as_str()),
            "the configured key, not voice-mode's dummy-key-for-local"
        );
    }
    let speech = received
        .iter()
        .find(|r| r.path == "/v1/audio/speech")
        .unwrap();
    assert_eq!(
        speech.json()["voice"],
        "nova",
        "af_sky mapped as voice-mode maps it"
    );
    let stt = received
        .iter()
        .find(|r| r.path == "/v1/audio/transcriptions")
        .unwrap();
    assert!(
        !form_names(stt).contains(&"language".to_string()),
        "language=auto left out: {:?}",
        form_names(stt)
    );
    assert_eq!(form_text(stt, "response_format").as_deref(), Some("text"));
}
