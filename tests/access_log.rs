//! The access log: one structured line per request with the facts an operator needs, and
//! never a key — captured at trace level through a run with a fallback and a failure.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use support::logs::{capture, Captured};
use support::*;

impl Captured {
    fn access_lines(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|v| v["target"] == "voxgate::access")
            .collect()
    }

    /// Lines whose message is `message`.
    fn count(&self, message: &str) -> usize {
        self.lines()
            .iter()
            .filter(|v| v["message"] == message)
            .count()
    }

    async fn wait_for_message(&self, message: &str) {
        for _ in 0..250 {
            if self.count(message) > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no `{message}` line:\n{}", self.text());
    }

    /// Waits for the access lines: a streamed response is logged when its body ends.
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        for _ in 0..100 {
            let lines = self.access_lines();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("expected {n} access lines, log was:\n{}", self.text());
    }
}

#[tokio::test(flavor = "current_thread")]
async fn one_line_per_request_with_attempts_and_never_a_key() {
    let (captured, _guard) = capture(tracing::Level::TRACE);

    let a = Scripted::always(Reply::status(503)).await;
    let b = Scripted::always(Reply::ok("audio/pcm", "0123456789")).await;
    let config = format!(
        "[upstreams.a]\nurl = \"{}\"\napi_key = \"sk-upstream-a-secret\"\n\
         [upstreams.b]\nurl = \"{}\"\napi_key = \"sk-upstream-b-secret\"\n\
         [[routes]]\nmatch = {{ endpoint = \"speech\" }}\nto = [\"a\", \"b\"]\n",
        a.url(),
        b.url()
    );
    let proxy = Proxy::start(&config).await;

    let mut ok = speech_request(
        &proxy.url("/v1/audio/speech"),
        json!({"model": "tts-1", "input": "hi", "voice": "af_sky"}),
    );
    ok.headers_mut()
        .insert("authorization", "Bearer sk-client-secret".parse().unwrap());
    ok.headers_mut()
        .insert("x-request-id", "log-test-1".parse().unwrap());
    let r = send(ok).await;
    assert_eq!(r.status, 200);

    let mut refused = post(
        &proxy.url("/v1/audio/transcriptions"),
        "text/plain",
        full_body("x"),
    );
    refused
        .headers_mut()
        .insert("authorization", "Bearer sk-client-secret".parse().unwrap());
    assert_eq!(send(refused).await.status, 415);

    let lines = captured.wait_for(2).await;
    assert_eq!(lines.len(), 2, "exactly one line per request");
    let line = lines
        .iter()
        .find(|l| l["request_id"] == "log-test-1")
        .expect("line for request 1");
    assert!(
        line["client"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    assert_eq!(line["endpoint"], "speech");
    assert_eq!(line["model"], "tts-1");
    assert_eq!(line["voice"], "af_sky");
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], "b");
    assert_eq!(line["bytes_out"], 10);
    assert_eq!(line["ending"], "complete");
    assert!(line["bytes_in"].as_u64().unwrap() > 0);
    assert!(line["ttfb_ms"].as_f64().is_some() && line["total_ms"].as_f64().is_some());
    let attempts = line["attempts"].as_str().unwrap();
    assert!(attempts.starts_with("a: answered 503"), "{attempts}");
    assert!(attempts.contains("; b: 200"), "{attempts}");

    let other = lines
        .iter()
        .find(|l| l["request_id"] != "log-test-1")
        .unwrap();
    assert_eq!(other["status"], 415);
    assert!(other["error"].as_str().unwrap().contains("multipart"));

    let all = captured.text();
    for secret in [
        "sk-client-secret",
        "sk-upstream-a-secret",
        "sk-upstream-b-secret",
    ] {
        assert!(!all.contains(secret), "{secret} leaked into the log");
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_client_that_leaves_before_the_answer_is_still_logged() {
    let (captured, _guard) = capture(tracing::Level::INFO);

    let hanging = Scripted::always(Reply::Hang).await;
    let proxy = Proxy::start(&single_upstream(&hanging.url(), "")).await;
    let mut req = speech_request(
        &proxy.url("/v1/audio/speech"),
        json!({"model": "tts-1", "input": "hi", "voice": "af_sky"}),
    );
    req.headers_mut()
        .insert("x-request-id", "gone-1".parse().unwrap());
    let gave_up = tokio::time::timeout(Duration::from_millis(300), client().request(req)).await;
    assert!(
        gave_up.is_err(),
        "the upstream hangs, so the client gives up"
    );

    let lines = captured.wait_for(1).await;
    assert_eq!(lines[0]["request_id"], "gone-1");
    assert_eq!(lines[0]["ending"], "client_gone");
    assert_eq!(lines[0]["status"], 499);
    assert_eq!(lines[0]["model"], "tts-1");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn health_transitions_are_logged_once_when_they_happen() {
    let (captured, _guard) = capture(tracing::Level::INFO);

    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = healthy.clone();
    let kokoro = Scripted::start(move |_| {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            Reply::json(200, json!({"status": "healthy"}))
        } else {
            Reply::status(503)
        }
    })
    .await;
    let _proxy = Proxy::start(&single_upstream(
        &kokoro.url(),
        "health = { interval = \"20ms\", rise = 2, fall = 2 }",
    ))
    .await;
    captured.wait_for_message("endpoint down").await;
    // Many more failing checks: still one line.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(captured.count("endpoint down"), 1);
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    captured.wait_for_message("endpoint up").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(captured.count("endpoint up"), 1);
    assert_eq!(captured.count("endpoint down"), 1);
    let down = captured
        .lines()
        .into_iter()
        .find(|v| v["message"] == "endpoint down")
        .unwrap();
    assert_eq!(down["check"], "status 503", "the reason is in the line");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn no_key_reaches_the_log_at_trace_level_through_every_kind_of_failure() {
    let (captured, _guard) = capture(tracing::Level::TRACE);

    let refused = refused_addr().await;
    let closing = Scripted::always(Reply::Close).await;
    let tls = tls_upstream().await;
    let busy = Scripted::always(Reply::status(503)).await;
    let cut = Scripted::always(Reply::ChunksThenReset {
        chunks: vec![bytes::Bytes::from_static(b"partial")],
        delay: Duration::from_millis(5),
    })
    .await;
    let mut config = String::new();
    let upstreams = [
        ("refused", format!("http://{refused}")),
        ("closing", closing.url()),
        ("tls", format!("https://{}", tls.addr)),
        ("busy", busy.url()),
        ("cut", cut.url()),
    ];
    for (name, url) in &upstreams {
        config += &format!(
            "[upstreams.{name}]\nurl = \"{url}\"\napi_key = \"sk-secret-of-{name}\"\nhealth = {{ interval = \"20ms\" }}\n"
        );
    }
    config += "[[routes]]\nto = [\"refused\", \"closing\", \"tls\", \"busy\", \"cut\"]\n";
    let proxy = Proxy::start(&config).await;
    for _ in 0..3 {
        let mut req = speech_request(
            &proxy.url("/v1/audio/speech"),
            json!({"model": "tts-1", "input": "hi", "voice": "alloy"}),
        );
        req.headers_mut()
            .insert("authorization", "Bearer sk-client-secret".parse().unwrap());
        if let Ok(response) = client().request(req).await {
            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = captured.text();
    assert!(
        log.contains("endpoint ejected") || log.contains("endpoint down"),
        "faults happened"
    );
    assert!(log.contains("voxgate::access"));
    for secret in ["sk-client-secret", "sk-secret-of"] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
    }
}

/// The policy fields: the client's name (never its key), the cache's verdict, the limit
/// that refused, the cost and what the cache avoided.
#[tokio::test(flavor = "current_thread")]
async fn policy_fields_name_the_client_the_cache_the_limit_and_the_cost() {
    let (captured, _guard) = capture(tracing::Level::INFO);
    let up = Scripted::always(Reply::ok("audio/mpeg", "MP3")).await;
    let config = format!(
        "[upstreams.openai]\nurl = \"{}\"\nkind = \"openai\"\nhealth = {{ enabled = false }}\n\
         [[routes]]\nto = [\"openai\"]\n[cache]\n\
         [[clients]]\nname = \"laptop\"\nkey = \"sk-laptop-secret\"\nlimits = {{ requests = \"2/hour\" }}\n",
        up.url()
    );
    let proxy = Proxy::start(&config).await;
    for _ in 0..3 {
        let mut req = speech_request(
            &proxy.url("/v1/audio/speech"),
            json!({"model": "tts-1", "input": "x".repeat(1000), "voice": "alloy"}),
        );
        req.headers_mut()
            .insert("authorization", "Bearer sk-laptop-secret".parse().unwrap());
        send(req).await;
    }
    let lines = captured.wait_for(3).await;
    assert!(!captured.text().contains("sk-laptop-secret"));
    let fields = |l: &Value| {
        (
            l["client_name"].clone(),
            l["cache"].clone(),
            l["limited"].clone(),
            l["cost_usd"].clone(),
            l["cost_avoided_usd"].clone(),
        )
    };
    assert_eq!(
        fields(&lines[0]),
        (
            json!("laptop"),
            json!("miss"),
            Value::Null,
            json!(0.015),
            Value::Null
        )
    );
    assert_eq!(
        fields(&lines[1]),
        (
            json!("laptop"),
            json!("hit"),
            Value::Null,
            Value::Null,
            json!(0.015)
        )
    );
    assert_eq!(
        fields(&lines[2]),
        (
            json!("laptop"),
            Value::Null,
            json!("requests"),
            Value::Null,
            Value::Null
        )
    );
    assert_eq!(lines[2]["status"], 429);
}
