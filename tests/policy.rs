//! Client keys, rate limits and cost accounting (issue 20), end to end over real sockets:
//! a voxgate in front of scripted upstreams, asked with a plain HTTP client.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::*;

/// A speech request with `key` presented as `header` (`authorization` gets `Bearer `).
fn speech_as(proxy: &Proxy, header: Option<(&str, &str)>, body: Value) -> Request<TestBody> {
    let mut req =
        Request::post(proxy.url("/v1/audio/speech")).header("content-type", "application/json");
    if let Some((name, key)) = header {
        let value = match name {
            "authorization" => format!("Bearer {key}"),
            _ => key.to_string(),
        };
        req = req.header(name, value);
    }
    req.body(full_body(body.to_string())).unwrap()
}

/// A transcription upload of `body` (a multipart form) with `key` as a Bearer key.
fn upload_as(proxy: &Proxy, key: &str, body: Bytes) -> Request<TestBody> {
    Request::post(proxy.url("/v1/audio/transcriptions"))
        .header("content-type", form_content_type())
        .header("authorization", format!("Bearer {key}"))
        .body(full_body(body))
        .unwrap()
}

fn say(text: &str) -> Value {
    json!({"model": "tts-1", "voice": "alloy", "input": text})
}

fn bearer(proxy: &Proxy, key: &str, body: Value) -> Request<TestBody> {
    speech_as(proxy, Some(("authorization", key)), body)
}

fn hex(digest: impl AsRef<[u8]>) -> String {
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn clients_config(url: &str) -> String {
    std::env::set_var("VOXGATE_TEST_ALICE_KEY", "alice-secret-key");
    let bob = hex(Sha256::digest(b"bob-secret-key"));
    format!(
        r#"
[upstreams.a]
url = "{url}"
api_key = "sk-upstream-own"

[[routes]]
name = "speech"
match = {{ endpoint = "speech" }}
to = ["a"]

[[routes]]
name = "stt"
to = ["a"]

[[clients]]
name = "alice"
key = "${{VOXGATE_TEST_ALICE_KEY}}"

[[clients]]
name = "bob"
key_sha256 = "{bob}"
routes = ["stt"]

[[clients]]
name = "voice-mode"
key = "dummy-key-for-local"
models = ["tts-*", "whisper-1"]
"#
    )
}

#[tokio::test]
async fn keys_let_clients_in_and_refuse_everyone_else_with_openai_errors() {
    let up = Scripted::always(Reply::ok("audio/pcm", "PCM")).await;
    let proxy = Proxy::start(&clients_config(&up.url())).await;

    let none = send(speech_as(&proxy, None, say("hi"))).await;
    assert_eq!(none.status, 401);
    none.error_message();
    assert_eq!(none.json()["error"]["code"], "missing_api_key");
    let wrong = send(bearer(&proxy, "alice-secret-kez", say("hi"))).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["code"], "invalid_api_key");
    assert!(!String::from_utf8_lossy(&wrong.body).contains("alice-secret-kez"));
    // Discovery is under /v1 too.
    let models = send(
        Request::get(proxy.url("/v1/models"))
            .body(full_body(""))
            .unwrap(),
    )
    .await;
    assert_eq!(models.status, 401);
    assert_eq!(up.count(), 0, "nothing refused reached the upstream");

    // Each way clients send a key, and a hashed one.
    for header in ["authorization", "api-key", "x-api-key"] {
        let ok = send(speech_as(
            &proxy,
            Some((header, "alice-secret-key")),
            say("hi"),
        ))
        .await;
        assert_eq!(ok.status, 200, "{header}: {:?}", ok.body);
        assert_eq!(ok.body, "PCM");
        let got = up.last();
        assert_eq!(got.header("authorization"), Some("Bearer sk-upstream-own"));
        for name in ["api-key", "x-api-key"] {
            assert_eq!(got.header(name), None, "{name} was not forwarded");
        }
    }
    let ok = send(bearer(&proxy, "dummy-key-for-local", say("hi"))).await;
    assert_eq!(ok.status, 200);
    // Every key voxgate has seen, none of which an upstream may see.
    for got in up.received() {
        let all = format!("{:?}", got.headers);
        for key in ["alice-secret-key", "dummy-key-for-local", "bob-secret-key"] {
            assert!(!all.contains(key), "{key} reached the upstream: {all}");
        }
    }

    // bob may use the `stt` route only; voice-mode only its models.
    let bob = send(bearer(&proxy, "bob-secret-key", say("hi"))).await;
    assert_eq!(bob.status, 403);
    assert!(bob.error_message().contains("route `speech`"));
    let body = form(&[
        ("model", None, b"whisper-1"),
        ("file", Some("a.wav"), b"RIFF"),
    ]);
    let upload = upload_as(&proxy, "bob-secret-key", body);
    assert_eq!(send(upload).await.status, 200);
    let hd = json!({"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "hi"});
    let refused = send(bearer(&proxy, "dummy-key-for-local", hd)).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"]["code"], "permission_denied");
    assert!(refused.error_message().contains("model `gpt-4o-mini-tts`"));
}

#[test]
fn client_mistakes_are_located_and_never_quote_a_key() {
    let bad = r#"
[upstreams.a]
url = "http://127.0.0.1:1"

[[routes]]
name = "speech"
to = ["a"]

[[clients]]
name = "a"
key = "same-key-twice"

[[clients]]
name = "b"
key = "same-key-twice"

[[clients]]
name = "c"
key_sha256 = "abc"

[[clients]]
name = "d"
key = "k"
routes = ["nope"]

[[clients]]
name = "e"

[limits]
requests = "60/fortnight"
stt_bytes = "lots"
"#;
    let err = voxgate::config::Config::from_toml(bad, "bad.toml").expect_err("refused");
    let text = err.to_string();
    for (needle, line) in [
        ("also client `a`'s", 15),
        ("`key_sha256` must be 64 hexadecimal digits", 19),
        ("no route is named `nope`", 24),
        ("a client needs `key", 26),
        ("`requests` is not a rate", 30),
        ("`stt_bytes` is not a rate", 31),
    ] {
        let found = text
            .lines()
            .any(|l| l.contains(needle) && l.contains(&format!("bad.toml:{line}:")));
        assert!(found, "no `{needle}` at line {line} in:\n{text}");
    }
    assert!(!text.contains("same-key-twice"), "{text}");
}

fn limited_config(url: &str, limits: &str, client_limits: &str) -> String {
    format!(
        r#"
[upstreams.a]
url = "{url}"

[[routes]]
to = ["a"]

[[clients]]
name = "alice"
key = "alice-key"
limits = {{ {client_limits} }}

[[clients]]
name = "bob"
key = "bob-key"

[limits]
{limits}
"#
    )
}

#[tokio::test]
async fn a_burst_passes_and_the_next_request_gets_429_with_a_correct_retry_after() {
    let up = Scripted::always(Reply::ok("audio/pcm", "PCM")).await;
    let proxy = Proxy::start(&limited_config(&up.url(), "", r#"requests = "3/min""#)).await;
    // A request voxgate refuses itself (here: not JSON) reached no upstream: not counted.
    let bad = Request::post(proxy.url("/v1/audio/speech"))
        .header("content-type", "application/json")
        .header("authorization", "Bearer alice-key")
        .body(full_body("{not json"))
        .unwrap();
    assert_eq!(send(bad).await.status, 400);
    for i in 0..3 {
        let ok = send(bearer(&proxy, "alice-key", say("hi"))).await;
        assert_eq!(ok.status, 200);
        assert_eq!(ok.header("x-ratelimit-limit-requests"), Some("3"));
        let left = (2 - i).to_string();
        assert_eq!(
            ok.header("x-ratelimit-remaining-requests"),
            Some(left.as_str())
        );
    }
    let refused = send(bearer(&proxy, "alice-key", say("hi"))).await;
    assert_eq!(refused.status, 429);
    let error = refused.json()["error"].clone();
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert_eq!(error["type"], "requests");
    // 3 a minute refill one every 20 s; a few ms went by since the burst.
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((19..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(refused.header("x-ratelimit-remaining-requests"), Some("0"));
    let reset = refused.header("x-ratelimit-reset-requests").unwrap();
    assert!(reset == "1m0s" || reset == "59s", "reset {reset}");
    assert_eq!(up.count(), 3, "the refused request reached no upstream");
    // Discovery is a request of alice's too (it fans out to the upstreams).
    let models = Request::get(proxy.url("/v1/models"))
        .header("authorization", "Bearer alice-key")
        .body(full_body(""))
        .unwrap();
    let models = send(models).await;
    assert_eq!(models.status, 429);
    assert_eq!(models.header("x-ratelimit-remaining-requests"), Some("0"));
    // bob has no limit of his own, and there is no global one.
    assert_eq!(send(bearer(&proxy, "bob-key", say("hi"))).await.status, 200);
    assert!(refused.header("x-ratelimit-limit-tokens").is_none());
    let limited = r#"voxgate_rate_limited_total{client="alice",unit="requests"}"#;
    assert_eq!(sample(&proxy, limited).await, 2.0);
    // /status shows each client's limits as they stand, and never a key or its hash.
    let status = send(
        Request::get(proxy.url("/status"))
            .body(full_body(""))
            .unwrap(),
    )
    .await;
    let policy = &status.json()["policy"];
    assert_eq!(policy["keys_required"], true);
    assert_eq!(policy["clients"][0]["name"], "alice");
    assert_eq!(policy["clients"][0]["limits"]["requests"]["rate"], "3/min");
    assert_eq!(policy["clients"][0]["limits"]["requests"]["remaining"], 0);
    assert_eq!(policy["clients"][1]["limits"], json!({}));
    let text = String::from_utf8_lossy(&status.body);
    let alice_hash = hex(Sha256::digest(b"alice-key"));
    assert!(
        !text.contains("alice-key") && !text.contains(&alice_hash),
        "{text}"
    );
}

#[tokio::test]
async fn retry_after_is_enough_for_the_retry_to_pass() {
    let up = Scripted::always(Reply::ok("audio/pcm", "PCM")).await;
    let proxy = Proxy::start(&limited_config(&up.url(), r#"requests = "2/sec""#, "")).await;
    assert_eq!(send(bearer(&proxy, "bob-key", say("a"))).await.status, 200);
    assert_eq!(send(bearer(&proxy, "bob-key", say("a"))).await.status, 200);
    let refused = send(bearer(&proxy, "bob-key", say("a"))).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("1"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(send(bearer(&proxy, "bob-key", say("a"))).await.status, 200);
}

#[tokio::test]
async fn speech_characters_are_counted_as_unicode_scalar_values() {
    let up = Scripted::always(Reply::ok("audio/pcm", "PCM")).await;
    let proxy = Proxy::start(&limited_config(&up.url(), "", r#"tts_chars = "100/hour""#)).await;
    // 60 characters, 4 bytes each in UTF-8: 60 of 100, not 240.
    let wide = "🎙".repeat(60);
    let ok = send(bearer(&proxy, "alice-key", say(&wide))).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-ratelimit-limit-tokens"), Some("100"));
    assert_eq!(ok.header("x-ratelimit-remaining-tokens"), Some("40"));
    let refused = send(bearer(&proxy, "alice-key", say(&"x".repeat(60)))).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["type"], "tokens");
    // 20 characters short, one every 36 s.
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((719..=720).contains(&retry), "retry-after {retry}");
    // A request larger than the limit can ever allow is told not to retry.
    let never = send(bearer(&proxy, "alice-key", say(&"x".repeat(101)))).await;
    assert_eq!(never.status, 429);
    assert_eq!(never.header("x-should-retry"), Some("false"));
    assert!(never.header("retry-after").is_none());
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn uploaded_bytes_are_the_file_parts_and_a_known_length_over_is_refused_unread() {
    let up = Scripted::always(Reply::json(200, json!({"text": "hi"}))).await;
    let proxy = Proxy::start(&limited_config(
        &up.url(),
        r#"stt_bytes = "200KiB/day""#,
        "",
    ))
    .await;
    let file = vec![7u8; 150 * 1024];
    let body = form(&[
        ("model", None, b"whisper-1"),
        ("file", Some("a.wav"), &file),
    ]);
    let upload = |body: Bytes| upload_as(&proxy, "bob-key", body);
    assert_eq!(send(upload(body.clone())).await.status, 200);
    // 50 KiB left: a second 150 KiB file is over.
    let refused = send(upload(body)).await;
    assert_eq!(refused.status, 429);
    assert!(refused.error_message().contains("stt_bytes"));
    assert_eq!(up.count(), 1);

    // A 10 MiB upload announced by its Content-Length is answered before it is sent.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = connect(proxy.addr).await;
    let head = format!(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer bob-key\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
        form_content_type(),
        10 * 1024 * 1024
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut answer))
        .await
        .expect("answered before the body was sent")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
}

#[tokio::test]
async fn a_request_that_failed_on_every_upstream_is_refunded() {
    let up = Scripted::always(Reply::status(503)).await;
    let proxy = Proxy::start(&limited_config(&up.url(), r#"requests = "1/hour""#, "")).await;
    for _ in 0..3 {
        let failed = send(bearer(&proxy, "bob-key", say("hi"))).await;
        assert_eq!(failed.status, 503, "the upstream's failure, not a 429");
    }
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn concurrent_requests_never_exceed_the_limit() {
    let up = Scripted::always(Reply::Late {
        after: Duration::from_millis(20),
        reply: Box::new(Reply::ok("audio/pcm", "PCM")),
    })
    .await;
    let proxy = Proxy::start(&limited_config(
        &up.url(),
        r#"requests = "10/hour""#,
        r#"requests = "1000/hour""#,
    ))
    .await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let key = if i % 2 == 0 { "alice-key" } else { "bob-key" };
        tasks.push(tokio::spawn(send(bearer(&proxy, key, say("hi")))));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().status);
    }
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 30);
    assert_eq!(up.count(), 10);
}

fn priced_config(openai: &str, local: &str) -> String {
    format!(
        r#"
[upstreams.openai]
url = "{openai}"
kind = "openai"
health = {{ enabled = false }}

[upstreams.kokoro]
url = "{local}"

[upstreams.cheap]
url = "{openai}"
price = {{ stt_per_minute = 0.01 }}

[[routes]]
match = {{ endpoint = "speech", model = "tts-1-hd" }}
to = ["openai"]

[[routes]]
match = {{ endpoint = "speech" }}
to = ["kokoro", "openai"]

[[routes]]
to = ["cheap"]

[[clients]]
name = "alice"
key = "alice-key"
"#
    )
}

/// 1.5 s of 16 kHz mono 16-bit PCM as a WAV file.
fn wav_90s_per_minute() -> Vec<u8> {
    let data = vec![0u8; 48_000];
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&32_000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

#[tokio::test]
async fn costs_are_estimated_per_upstream_and_client_and_local_answers_count_as_avoided() {
    let openai = Scripted::always(Reply::ok("audio/pcm", "PCM")).await;
    let kokoro = Scripted::always(Reply::ok("audio/pcm", "LOCAL")).await;
    let proxy = Proxy::start(&priced_config(&openai.url(), &kokoro.url())).await;
    // 1000 characters on tts-1-hd at OpenAI: $30 a million → $0.03.
    let hd = json!({"model": "tts-1-hd", "voice": "alloy", "input": "x".repeat(1000)});
    assert_eq!(send(bearer(&proxy, "alice-key", hd)).await.status, 200);
    let cost = r#"voxgate_estimated_cost_total{upstream="openai",client="alice"}"#;
    assert!((sample(&proxy, cost).await - 0.03).abs() < 1e-9);
    // The same on kokoro (no price) avoided tts-1's $15 a million at OpenAI: $0.015.
    let local = json!({"model": "tts-1", "voice": "alloy", "input": "x".repeat(1000)});
    let answer = send(bearer(&proxy, "alice-key", local)).await;
    assert_eq!(answer.body, "LOCAL");
    let avoided = r#"voxgate_cost_avoided_total{reason="local"}"#;
    assert!((sample(&proxy, avoided).await - 0.015).abs() < 1e-9);
    assert!(
        (sample(&proxy, cost).await - 0.03).abs() < 1e-9,
        "kokoro charged nothing"
    );
    // An upload priced by the minute its WAV header says: 1.5 s at $0.01 a minute.
    let body = form(&[
        ("model", None, b"whisper-1"),
        ("file", Some("a.wav"), &wav_90s_per_minute()),
    ]);
    let upload = upload_as(&proxy, "alice-key", body);
    assert_eq!(send(upload).await.status, 200);
    let stt = r#"voxgate_estimated_cost_total{upstream="cheap",client="alice"}"#;
    assert!((sample(&proxy, stt).await - 0.00025).abs() < 1e-9);
}

#[tokio::test]
async fn a_reload_keeps_spent_limits_and_the_cache_and_applies_changed_ones() {
    let up = Scripted::start(|r| Reply::ok("audio/pcm", format!("PCM{}", r.json()["input"]))).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("voxgate.toml");
    let write = |requests: &str| {
        let text = format!(
            "{}\n[cache]\nmemory_bytes = \"1MiB\"\n",
            limited_config(&up.url(), "", &format!("requests = \"{requests}\""))
        );
        std::fs::write(&file, text).unwrap();
    };
    write("2/hour");
    let proxy = Proxy::start_from_file(&file).await;
    assert_eq!(
        send(bearer(&proxy, "alice-key", say("one"))).await.status,
        200
    );
    assert_eq!(
        send(bearer(&proxy, "alice-key", say("two"))).await.status,
        200
    );
    assert_eq!(
        send(bearer(&proxy, "alice-key", say("one"))).await.status,
        429
    );
    // An unrelated edit (bob gets a limit) keeps alice's spent limiter and the cache.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replace(
            "key = \"bob-key\"",
            "key = \"bob-key\"\nlimits = { requests = \"5/min\" }",
        ),
    )
    .unwrap();
    proxy.gateway.reload("test").await.unwrap();
    assert_eq!(
        send(bearer(&proxy, "alice-key", say("one"))).await.status,
        429
    );
    let hit = send(bearer(&proxy, "bob-key", say("one"))).await;
    assert_eq!(
        hit.header("x-voxgate-cache"),
        Some("hit"),
        "the cache outlived the reload"
    );
    assert_eq!(hit.header("x-ratelimit-limit-requests"), Some("5"));
    // A new rate for alice is a new limiter.
    write("3/hour");
    proxy.gateway.reload("test").await.unwrap();
    assert_eq!(
        send(bearer(&proxy, "alice-key", say("one"))).await.status,
        200
    );
    assert_eq!(up.count(), 2);
}

#[test]
fn shared_settings_are_checked_and_the_password_never_shown() {
    let base = "[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nto = [\"a\"]\n";
    std::env::set_var("VOXGATE_TEST_REDIS_PASSWORD", "hunter2-redis");
    let ok = format!("{base}[shared]\nredis = \"redis://:${{VOXGATE_TEST_REDIS_PASSWORD}}@10.0.0.5:6379/0\"\ntimeout = \"15ms\"\n");
    let config = voxgate::config::Config::from_toml(&ok, "ok.toml").unwrap();
    let shared = config.shared.expect("[shared]");
    assert_eq!(shared.timeout, Duration::from_millis(15));
    assert_eq!(shared.connect_timeout, Duration::from_secs(1));
    assert_eq!(shared.prefix, "voxgate:");
    assert_eq!(
        shared.redis.expose(),
        "redis://:hunter2-redis@10.0.0.5:6379/0"
    );
    let shown = format!("{shared:?}");
    assert!(
        shown.contains("redis://:***@10.0.0.5:6379/0") && !shown.contains("hunter2"),
        "{shown}"
    );
    assert_eq!(
        voxgate::config::redact_url("rediss://user:pw@h:6380"),
        "rediss://user:***@h:6380"
    );
    let bad = format!("{base}[shared]\nredis = \"http://:hunter2-redis@h\"\ntimeout = \"soon\"\n");
    let text = voxgate::config::Config::from_toml(&bad, "bad.toml")
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("bad.toml:6:9: `redis` must be a URL"),
        "{text}"
    );
    assert!(
        text.contains("bad.toml:7:11: `timeout` is not a duration"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn a_limited_client_sees_voxgates_limits_not_the_upstreams() {
    // The upstream's own figures (OpenAI's, for the operator's whole account).
    let up = Scripted::always(Reply::Full {
        status: 200,
        headers: vec![
            ("content-type", "audio/pcm".to_string()),
            ("x-ratelimit-limit-requests", "5000".to_string()),
            ("x-ratelimit-remaining-tokens", "123456".to_string()),
        ],
        body: Bytes::from_static(b"PCM"),
    })
    .await;
    let proxy = Proxy::start(&limited_config(&up.url(), "", r#"requests = "3/min""#)).await;
    let limited = send(bearer(&proxy, "alice-key", say("hi"))).await;
    let all: Vec<_> = limited
        .headers
        .get_all("x-ratelimit-limit-requests")
        .iter()
        .collect();
    assert_eq!(all, ["3"], "voxgate's figure alone");
    assert!(limited.header("x-ratelimit-remaining-tokens").is_none());
    // A client voxgate does not limit gets the upstream's headers as they came.
    let free = send(bearer(&proxy, "bob-key", say("hi"))).await;
    assert_eq!(free.header("x-ratelimit-limit-requests"), Some("5000"));
}

#[tokio::test]
async fn an_uploads_priced_minutes_are_capped_by_what_its_bytes_can_hold() {
    let up = Scripted::always(Reply::json(200, json!({"text": "hi"}))).await;
    let proxy = Proxy::start(&priced_config(&up.url(), &up.url())).await;
    // A WAV (MP3-in-WAV, format 0x55) that claims 1 byte a second: 48,000 s for 48 KB.
    let mut wav = wav_90s_per_minute();
    wav[20..22].copy_from_slice(&0x55u16.to_le_bytes());
    wav[28..32].copy_from_slice(&1u32.to_le_bytes());
    let body = form(&[("model", None, b"whisper-1"), ("file", Some("a.wav"), &wav)]);
    let upload = upload_as(&proxy, "alice-key", body);
    assert_eq!(send(upload).await.status, 200);
    // What 48,044 bytes hold at 1 kbit/s (384.352 s) at $0.01 a minute.
    let stt = r#"voxgate_estimated_cost_total{upstream="cheap",client="alice"}"#;
    let cost = sample(&proxy, stt).await;
    // Exactly that: the header's duration was read, and capped.
    assert!((cost - 384.352 / 60.0 * 0.01).abs() < 1e-9, "cost {cost}");
}
