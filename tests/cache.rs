//! The TTS cache (issue 20) end to end: a voxgate with `[cache]` in front of scripted
//! upstreams that count what reaches them.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use serde_json::{json, Value};
use support::*;

fn say(text: &str) -> Value {
    json!({"model": "tts-1", "voice": "alloy", "input": text})
}

async fn speak(proxy: &Proxy, body: Value) -> Answer {
    send(speech_request(&proxy.url("/v1/audio/speech"), body)).await
}

async fn speak_with(proxy: &Proxy, body: Value, header: (&str, &str)) -> Answer {
    let req = Request::post(proxy.url("/v1/audio/speech"))
        .header("content-type", "application/json")
        .header(header.0, header.1)
        .body(full_body(body.to_string()))
        .unwrap();
    send(req).await
}

/// An upstream whose answer names the request it answers (its input and voice), so two
/// different requests never get the same bytes.
async fn echoing() -> Scripted {
    Scripted::start(|r| {
        let v = r.json();
        let body = format!("AUDIO[{}|{}|{}]", v["input"], v["voice"], v["speed"]);
        Reply::ok("audio/mpeg", body)
    })
    .await
}

fn cached(url: &str, cache: &str) -> String {
    format!("[upstreams.a]\nurl = \"{url}\"\n\n[[routes]]\nto = [\"a\"]\n\n[cache]\n{cache}\n")
}

#[tokio::test]
async fn a_second_identical_request_is_served_from_memory_byte_for_byte() {
    let up = echoing().await;
    let proxy = Proxy::start(&cached(&up.url(), "memory_bytes = \"1MiB\"")).await;
    let first = speak(&proxy, say("Hello there")).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-voxgate-cache"), Some("miss"));
    let second = speak(&proxy, say("Hello there")).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-voxgate-cache"), Some("hit"));
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("content-type"), Some("audio/mpeg"));
    assert!(second.header("x-request-id").is_some());
    assert_eq!(up.count(), 1, "the hit made no upstream call");

    // The request as the client meant it: defaults written out or not, 1 or 1.0.
    let spelled = json!({"model": "tts-1", "voice": "alloy", "input": "Hello there",
                         "response_format": "mp3", "speed": 1, "stream_format": "audio"});
    assert_eq!(
        speak(&proxy, spelled).await.header("x-voxgate-cache"),
        Some("hit")
    );
    // Anything that changes the audio is another entry.
    let other_voice = json!({"model": "tts-1", "voice": "nova", "input": "Hello there"});
    assert_eq!(
        speak(&proxy, other_voice).await.header("x-voxgate-cache"),
        Some("miss")
    );
    let faster = json!({"model": "tts-1", "voice": "alloy", "input": "Hello there", "speed": 1.5});
    assert_eq!(
        speak(&proxy, faster).await.header("x-voxgate-cache"),
        Some("miss")
    );
    let wav = json!({"model": "tts-1", "voice": "alloy", "input": "Hello there", "response_format": "wav"});
    assert_eq!(
        speak(&proxy, wav).await.header("x-voxgate-cache"),
        Some("miss")
    );
    assert_eq!(up.count(), 4);
    assert_eq!(
        sample(&proxy, r#"voxgate_cache_requests_total{result="hit"}"#).await,
        2.0
    );
    assert_eq!(
        sample(&proxy, r#"voxgate_cache_requests_total{result="miss"}"#).await,
        4.0
    );
}

#[tokio::test]
async fn a_hit_does_not_depend_on_which_upstream_answered_first() {
    let kokoro = echoing().await;
    let openai = echoing().await;
    let config = format!(
        r#"
[upstreams.kokoro]
url = "{}"
voice_map = {{ alloy = "af_sky" }}
model_map = {{ "tts-1" = "kokoro" }}

[upstreams.openai]
url = "{}"

[[routes]]
to = ["kokoro", "openai"]
fallback_on = [503]

[cache]
"#,
        kokoro.url(),
        openai.url()
    );
    let proxy = Proxy::start(&config).await;
    let first = speak(&proxy, say("Same words")).await;
    assert_eq!(kokoro.count(), 1);
    assert_eq!(
        kokoro.last().json()["voice"],
        "af_sky",
        "kokoro got its own voice"
    );
    let again = speak(&proxy, say("Same words")).await;
    assert_eq!(again.header("x-voxgate-cache"), Some("hit"));
    assert_eq!(again.body, first.body);
    assert_eq!(kokoro.count() + openai.count(), 1);
}

#[tokio::test]
async fn only_complete_successful_answers_are_kept() {
    let broken = Scripted::always(Reply::ChunksThenReset {
        chunks: vec![Bytes::from_static(b"HALF")],
        delay: Duration::from_millis(10),
    })
    .await;
    let proxy = Proxy::start(&cached(&broken.url(), "")).await;
    for _ in 0..2 {
        let req = speech_request(&proxy.url("/v1/audio/speech"), say("broken"));
        let response = client().request(req).await.expect("headers arrive");
        use http_body_util::BodyExt;
        assert!(
            response.into_body().collect().await.is_err(),
            "the break reaches the client"
        );
    }
    assert_eq!(broken.count(), 2, "a truncated stream was not cached");

    let failing = Scripted::always(Reply::status(500)).await;
    let proxy = Proxy::start(&cached(&failing.url(), "")).await;
    for _ in 0..2 {
        assert_eq!(speak(&proxy, say("error")).await.status, 500);
    }
    assert_eq!(failing.count(), 2, "an error was not cached");
}

#[tokio::test]
async fn a_completed_event_stream_is_kept_with_its_content_type() {
    let events = "data: {\"type\":\"speech.audio.delta\",\"audio\":\"AAAA\"}\n\ndata: {\"type\":\"speech.audio.done\"}\n\n";
    let up = Scripted::always(Reply::Chunks {
        status: 200,
        content_type: "text/event-stream",
        chunks: events
            .split_inclusive("\n\n")
            .map(|e| Bytes::from(e.to_string()))
            .collect(),
        delay: Duration::from_millis(5),
    })
    .await;
    let proxy = Proxy::start(&cached(&up.url(), "")).await;
    let sse = json!({"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "hi", "stream_format": "sse"});
    let first = speak(&proxy, sse.clone()).await;
    let second = speak(&proxy, sse).await;
    assert_eq!(second.header("x-voxgate-cache"), Some("hit"));
    assert_eq!(second.header("content-type"), Some("text/event-stream"));
    assert_eq!(second.body, first.body);
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn the_client_or_the_route_can_bypass_it() {
    let up = echoing().await;
    let config = format!(
        r#"
[upstreams.a]
url = "{}"

[[routes]]
match = {{ voice = "fresh" }}
to = ["a"]
cache = false

[[routes]]
to = ["a"]

[cache]
"#,
        up.url()
    );
    let proxy = Proxy::start(&config).await;
    speak(&proxy, say("hello")).await;
    for directive in ["no-cache", "no-store", "max-age=0, No-Cache"] {
        let fresh = speak_with(&proxy, say("hello"), ("cache-control", directive)).await;
        assert_eq!(
            fresh.header("x-voxgate-cache"),
            Some("bypass"),
            "{directive}"
        );
    }
    assert_eq!(up.count(), 4);
    let uncached = json!({"model": "tts-1", "voice": "fresh", "input": "hello"});
    for _ in 0..2 {
        let answer = speak(&proxy, uncached.clone()).await;
        assert_eq!(answer.header("x-voxgate-cache"), Some("bypass"));
    }
    assert_eq!(up.count(), 6);
    // Without [cache], speech answers carry no cache header.
    let plain = Proxy::start(&single_upstream(&up.url(), "")).await;
    assert_eq!(
        speak(&plain, say("hello")).await.header("x-voxgate-cache"),
        None
    );
}

#[tokio::test]
async fn twenty_concurrent_identical_misses_make_one_upstream_call() {
    let chunks: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("piece-{i};"))).collect();
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
    let up = Scripted::always(Reply::Chunks {
        status: 200,
        content_type: "audio/pcm",
        chunks,
        delay: Duration::from_millis(40),
    })
    .await;
    let proxy = Proxy::start(&cached(&up.url(), "")).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        tasks.push(tokio::spawn(send(speech_request(
            &proxy.url("/v1/audio/speech"),
            say("together"),
        ))));
    }
    let mut verdicts = Vec::new();
    for t in tasks {
        let answer = t.await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, whole, "every one got the whole answer");
        verdicts.push(answer.header("x-voxgate-cache").unwrap_or("-").to_string());
    }
    assert_eq!(up.count(), 1, "one upstream call: {verdicts:?}");
    assert_eq!(
        verdicts.iter().filter(|v| *v == "miss").count(),
        1,
        "{verdicts:?}"
    );
}

#[tokio::test]
async fn eviction_keeps_memory_under_its_cap() {
    let up = Scripted::start(|r| {
        let v = r.json();
        let mut body = format!("{}", v["input"]).into_bytes();
        body.resize(10 * 1024, b'.');
        Reply::ok("audio/pcm", body)
    })
    .await;
    let proxy = Proxy::start(&cached(&up.url(), "memory_bytes = \"64KiB\"")).await;
    for i in 0..30 {
        assert_eq!(
            speak(&proxy, say(&format!("sentence {i}"))).await.status,
            200
        );
    }
    let held = sample(&proxy, r#"voxgate_cache_bytes{tier="memory"}"#).await;
    assert!(held > 0.0 && held <= 65536.0, "held {held}");
    // The latest is still there, the first long gone.
    assert_eq!(
        speak(&proxy, say("sentence 29"))
            .await
            .header("x-voxgate-cache"),
        Some("hit")
    );
    assert_eq!(
        speak(&proxy, say("sentence 0"))
            .await
            .header("x-voxgate-cache"),
        Some("miss")
    );
}

#[tokio::test]
async fn the_disk_tier_survives_a_restart() {
    let up = echoing().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = format!("dir = \"{}\"\ndisk_bytes = \"10MiB\"", dir.path().display());
    let mut proxy = Proxy::start(&cached(&up.url(), &cache)).await;
    let first = speak(&proxy, say("Keep me")).await;
    // The disk copy is written in the background.
    let disk = r#"voxgate_cache_entries{tier="disk"}"#;
    for _ in 0..100 {
        if sample(&proxy, disk).await >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sample(&proxy, disk).await, 1.0);
    proxy.shutdown().await;
    let proxy = Proxy::start(&cached(&up.url(), &cache)).await;
    let again = speak(&proxy, say("Keep me")).await;
    assert_eq!(again.header("x-voxgate-cache"), Some("hit"));
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("content-type"), Some("audio/mpeg"));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn hits_are_not_charged_against_character_limits_unless_asked() {
    let up = echoing().await;
    let limits = "[limits]\ntts_chars = \"10/hour\"\n";
    let proxy = Proxy::start(&format!("{}{limits}", cached(&up.url(), ""))).await;
    assert_eq!(speak(&proxy, say("eight ch")).await.status, 200);
    for _ in 0..3 {
        let hit = speak(&proxy, say("eight ch")).await;
        assert_eq!(
            (hit.status, hit.header("x-voxgate-cache")),
            (200, Some("hit"))
        );
    }
    assert_eq!(
        speak(&proxy, say("other 8c")).await.status,
        429,
        "2 of 10 left"
    );

    let charged = Proxy::start(&format!(
        "{}{limits}",
        cached(&up.url(), "charge_hits = true")
    ))
    .await;
    assert_eq!(speak(&charged, say("eight ch")).await.status, 200);
    assert_eq!(speak(&charged, say("eight ch")).await.status, 429);
}

#[tokio::test]
async fn a_hit_counts_the_cost_it_avoided() {
    let up = echoing().await;
    let config = format!(
        "[upstreams.openai]\nurl = \"{}\"\nkind = \"openai\"\nhealth = {{ enabled = false }}\n\n[[routes]]\nto = [\"openai\"]\n\n[cache]\n",
        up.url()
    );
    let proxy = Proxy::start(&config).await;
    let text = "x".repeat(2000);
    speak(&proxy, say(&text)).await;
    speak(&proxy, say(&text)).await;
    // 2000 characters of tts-1 at $15 a million: $0.03 paid, $0.03 avoided.
    let paid = sample(
        &proxy,
        r#"voxgate_estimated_cost_total{upstream="openai",client="anonymous"}"#,
    )
    .await;
    assert!((paid - 0.03).abs() < 1e-9, "paid {paid}");
    let avoided = sample(&proxy, r#"voxgate_cost_avoided_total{reason="cache"}"#).await;
    assert!((avoided - 0.03).abs() < 1e-9, "avoided {avoided}");
}

#[tokio::test]
async fn compressed_partial_and_close_delimited_answers_are_not_kept() {
    // Compressed: a hit would lose its Content-Encoding.
    let gzip = Scripted::always(Reply::Full {
        status: 200,
        headers: vec![
            ("content-type", "audio/mpeg".to_string()),
            ("content-encoding", "gzip".to_string()),
        ],
        body: Bytes::from_static(b"\x1f\x8bnot-really"),
    })
    .await;
    // A range of the audio is not the audio.
    let partial = Scripted::always(Reply::Full {
        status: 206,
        headers: vec![("content-type", "audio/mpeg".to_string())],
        body: Bytes::from_static(b"part"),
    })
    .await;
    for up in [&gzip, &partial] {
        let proxy = Proxy::start(&cached(&up.url(), "")).await;
        speak(&proxy, say("twice")).await;
        let again = speak(&proxy, say("twice")).await;
        assert_eq!(again.header("x-voxgate-cache"), Some("miss"));
        assert_eq!(up.count(), 2);
    }
    // Ended by closing the connection: a crash mid-body would look the same.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: audio/mpeg\r\nconnection: close\r\n\r\nUNTIL-CLOSE")
                    .await;
            });
        }
    });
    let proxy = Proxy::start(&cached(&format!("http://{addr}"), "")).await;
    let first = speak(&proxy, say("close")).await;
    assert_eq!(first.body, "UNTIL-CLOSE");
    let again = speak(&proxy, say("close")).await;
    assert_eq!(again.header("x-voxgate-cache"), Some("miss"));
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 2);
}
