//! `/metrics` over real sockets, against scripted upstreams, read by a real Prometheus
//! text parser: Python prometheus_client's (`tests/sdk/parse_metrics.py`, in the SDK venv
//! that `scripts/install-test-deps.sh` makes). Every count is checked to move by exactly
//! the requests sent.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use http::Request;
use serde_json::{json, Value};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// The families that are a contract: name as the parser reports it, and type.
const CONTRACT: [(&str, &str); 18] = [
    ("voxgate_requests", "counter"),
    ("voxgate_upstream_attempts", "counter"),
    ("voxgate_fallbacks", "counter"),
    ("voxgate_request_duration_seconds", "histogram"),
    ("voxgate_ttfb_seconds", "histogram"),
    ("voxgate_upstream_up", "gauge"),
    ("voxgate_upstream_ejected", "gauge"),
    ("voxgate_in_flight_requests", "gauge"),
    ("voxgate_bytes_in", "counter"),
    ("voxgate_bytes_out", "counter"),
    ("voxgate_replay_memory_bytes", "gauge"),
    ("voxgate_spilled_bytes", "counter"),
    ("voxgate_tts_characters", "counter"),
    ("voxgate_stt_audio_bytes", "counter"),
    ("voxgate_model_requests", "counter"),
    ("voxgate_config_reloads", "counter"),
    ("voxgate_config_loaded_timestamp_seconds", "gauge"),
    ("voxgate_build_info", "gauge"),
];

/// A `/metrics` page as prometheus_client's parser read it.
struct Page {
    families: Vec<Value>,
}

impl Page {
    /// The samples named `name` (`voxgate_requests_total`, `…_bucket`), with their labels.
    fn samples(&self, name: &str) -> Vec<(HashMap<String, String>, f64)> {
        self.families
            .iter()
            .flat_map(|f| f["samples"].as_array().unwrap().iter())
            .filter(|s| s[0] == name)
            .map(|s| {
                let labels = serde_json::from_value(s[1].clone()).unwrap();
                (labels, s[2].as_f64().unwrap())
            })
            .collect()
    }

    /// The sum of the samples named `name` whose labels include `labels`; 0 for none.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name)
            .iter()
            .filter(|(have, _)| {
                labels
                    .iter()
                    .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// The one sample named `name` with exactly `labels`, if there is one.
    fn exact(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<f64> = self
            .samples(name)
            .into_iter()
            .filter(|(have, _)| *have == want)
            .map(|(_, v)| v)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} twice");
        found.first().copied()
    }

    fn family(&self, name: &str) -> Option<&Value> {
        self.families.iter().find(|f| f["name"] == name)
    }

    fn sample_count(&self) -> usize {
        self.families
            .iter()
            .map(|f| f["samples"].as_array().unwrap().len())
            .sum()
    }
}

/// `GET url` (a `/metrics` URL), checked to be the text format, and parsed.
async fn scrape(url: &str) -> Page {
    let answer = send(Request::get(url).body(full_body("")).unwrap()).await;
    assert_eq!(answer.status, 200, "{url}: {:?}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse(&answer.body).await
}

async fn parse(text: &[u8]) -> Page {
    let python = repo("target/sdk-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps.sh",
        python.display()
    );
    let mut child = tokio::process::Command::new(python)
        .arg(repo("tests/sdk/parse_metrics.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the parser finished within 30 s")
        .unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the page: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(text)
    );
    let families: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    Page { families }
}

async fn metrics(proxy: &Proxy) -> Page {
    scrape(&proxy.url("/metrics")).await
}

async fn get(url: String) -> Answer {
    send(Request::get(url).body(full_body("")).unwrap()).await
}

async fn speech(proxy: &Proxy, body: &Value) -> Answer {
    send(speech_request(&proxy.url("/v1/audio/speech"), body.clone())).await
}

async fn upload(proxy: &Proxy, path: &str, file: &[u8]) -> Answer {
    let form = form(&[("model", None, b"whisper-1"), ("file", Some("a.wav"), file)]);
    send(post(
        &proxy.url(path),
        &form_content_type(),
        full_body(form),
    ))
    .await
}

/// The `route` label of the `nth` (0-based) `[[routes]]` of `config`: `line:N`.
fn route_label(config: &str, nth: usize) -> String {
    let line = config
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim() == "[[routes]]")
        .nth(nth)
        .expect("the route exists")
        .0;
    format!("line:{}", line + 1)
}

#[tokio::test]
async fn counters_and_histograms_move_by_exactly_the_requests_sent() {
    let up = Scripted::always(Reply::ok("audio/pcm", "0123456789")).await;
    let config = single_upstream(&up.url(), "");
    let route = route_label(&config, 0);
    let proxy = Proxy::start(&config).await;
    let before = metrics(&proxy).await;
    for (name, kind) in CONTRACT {
        let family = before
            .family(name)
            .unwrap_or_else(|| panic!("no family {name}"));
        assert_eq!(family["type"], kind, "{name}");
        assert!(!family["help"].as_str().unwrap().is_empty(), "{name}");
    }
    assert_eq!(
        before.exact(
            "voxgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );

    let body = json!({"model": "tts-1", "input": "hello", "voice": "alloy"});
    let speech_bytes = body.to_string().len() as f64;
    for _ in 0..5 {
        assert_eq!(speech(&proxy, &body).await.status, 200);
    }
    for _ in 0..3 {
        let answer = upload(&proxy, "/v1/audio/transcriptions", &noise(1000)).await;
        assert_eq!(answer.status, 200);
    }
    for i in 0..2 {
        assert_eq!(get(proxy.url(&format!("/v1/files/{i}"))).await.status, 200);
    }
    for _ in 0..4 {
        assert_eq!(get(proxy.url("/health")).await.status, 200);
    }
    let after = metrics(&proxy).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let requests = |endpoint: &str, route: &str, upstream: &str, status: &str| {
        let labels = [
            ("endpoint", endpoint),
            ("route", route),
            ("upstream", upstream),
            ("status", status),
        ];
        assert!(
            after.exact("voxgate_requests_total", &labels).is_some(),
            "{labels:?}"
        );
        delta("voxgate_requests_total", &labels)
    };
    assert_eq!(requests("speech", &route, "a", "200"), 5.0);
    assert_eq!(requests("transcriptions", &route, "a", "200"), 3.0);
    assert_eq!(requests("other", &route, "a", "200"), 2.0);
    // The four /health requests, and the first scrape (counted once it was answered).
    assert_eq!(requests("admin", "none", "none", "200"), 5.0);
    assert_eq!(delta("voxgate_requests_total", &[]), 15.0);
    assert_eq!(
        delta(
            "voxgate_upstream_attempts_total",
            &[("upstream", "a"), ("outcome", "ok")]
        ),
        10.0
    );
    assert_eq!(delta("voxgate_fallbacks_total", &[]), 0.0);

    for (endpoint, n) in [("speech", 5.0), ("transcriptions", 3.0), ("other", 2.0)] {
        let labels = [("endpoint", endpoint), ("upstream", "a")];
        for histogram in ["voxgate_request_duration_seconds", "voxgate_ttfb_seconds"] {
            let count = after.exact(&format!("{histogram}_count"), &labels).unwrap();
            assert_eq!(count, n, "{histogram} {endpoint}");
            let inf = [labels[0], labels[1], ("le", "+Inf")];
            assert_eq!(after.exact(&format!("{histogram}_bucket"), &inf), Some(n));
            assert!(after.exact(&format!("{histogram}_sum"), &labels).unwrap() > 0.0);
            let buckets: Vec<f64> = after
                .samples(&format!("{histogram}_bucket"))
                .into_iter()
                .filter(|(l, _)| l["endpoint"] == endpoint)
                .map(|(_, v)| v)
                .collect();
            assert_eq!(buckets.len(), 16, "1 ms to 60 s, and +Inf");
            assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "cumulative");
        }
    }
    let bounds: Vec<String> = after
        .samples("voxgate_request_duration_seconds_bucket")
        .into_iter()
        .filter(|(l, _)| l["endpoint"] == "speech")
        .map(|(l, _)| l["le"].clone())
        .collect();
    assert_eq!(bounds.first().map(String::as_str), Some("0.001"));
    assert!(
        bounds.iter().any(|b| b == "60.0" || b == "60"),
        "{bounds:?}"
    );

    assert_eq!(
        delta("voxgate_bytes_in_total", &[("endpoint", "speech")]),
        5.0 * speech_bytes
    );
    assert_eq!(
        delta("voxgate_bytes_out_total", &[("endpoint", "speech")]),
        50.0
    );
    assert_eq!(
        delta("voxgate_bytes_out_total", &[("endpoint", "other")]),
        20.0
    );
    assert_eq!(
        delta("voxgate_stt_audio_bytes_total", &[("upstream", "a")]),
        3000.0
    );
    assert_eq!(
        delta("voxgate_tts_characters_total", &[("upstream", "a")]),
        25.0
    );
    assert_eq!(
        after.exact(
            "voxgate_upstream_up",
            &[("upstream", "a"), ("endpoint", &format!("{}/", up.url()))]
        ),
        Some(1.0)
    );
    assert_eq!(after.value("voxgate_config_reloads_total", &[]), 0.0);
    assert_eq!(after.value("voxgate_replay_memory_bytes", &[]), 0.0);
}

#[tokio::test]
async fn fallbacks_are_counted_by_route_from_to_and_reason() {
    let busy = Scripted::always(Reply::status(503)).await;
    let gone = refused_addr().await;
    let good = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let config = format!(
        "[upstreams.busy]\nurl = \"{}\"\neject_after = 0\n\
         [upstreams.gone]\nurl = \"http://{gone}\"\neject_after = 0\n\
         [upstreams.good]\nurl = \"{}\"\n\
         [[routes]]\nmatch = {{ endpoint = \"speech\" }}\nto = [\"busy\", \"good\"]\n\
         [[routes]]\nmatch = {{ endpoint = \"transcriptions\" }}\nto = [\"gone\", \"good\"]\n",
        busy.url(),
        good.url()
    );
    let (speech_route, upload_route) = (route_label(&config, 0), route_label(&config, 1));
    let proxy = Proxy::start(&config).await;
    let body = json!({"model": "tts-1", "input": "hi", "voice": "alloy"});
    for _ in 0..3 {
        assert_eq!(speech(&proxy, &body).await.status, 200);
    }
    for _ in 0..2 {
        let answer = upload(&proxy, "/v1/audio/transcriptions", b"RIFF").await;
        assert_eq!(answer.status, 200);
    }
    let page = metrics(&proxy).await;
    let fallback = |route: &str, from: &str, reason: &str| {
        page.exact(
            "voxgate_fallbacks_total",
            &[
                ("route", route),
                ("from", from),
                ("to", "good"),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(fallback(&speech_route, "busy", "status_503"), Some(3.0));
    assert_eq!(fallback(&upload_route, "gone", "connect"), Some(2.0));
    assert_eq!(page.value("voxgate_fallbacks_total", &[]), 5.0);
    let attempts = |upstream: &str, outcome: &str| {
        page.exact(
            "voxgate_upstream_attempts_total",
            &[("upstream", upstream), ("outcome", outcome)],
        )
    };
    assert_eq!(attempts("busy", "status_5xx"), Some(3.0));
    assert_eq!(attempts("gone", "connect"), Some(2.0));
    assert_eq!(attempts("good", "ok"), Some(5.0));
    assert_eq!(page.value("voxgate_upstream_attempts_total", &[]), 10.0);
    // Each request is counted once, for the upstream that answered.
    let requests = |route: &str, endpoint: &str| {
        page.value(
            "voxgate_requests_total",
            &[
                ("endpoint", endpoint),
                ("route", route),
                ("upstream", "good"),
            ],
        )
    };
    assert_eq!(requests(&speech_route, "speech"), 3.0);
    assert_eq!(requests(&upload_route, "transcriptions"), 2.0);
    assert_eq!(
        page.value("voxgate_requests_total", &[("upstream", "busy")]),
        0.0
    );
}

#[tokio::test]
async fn tts_characters_are_unicode_scalars_and_stt_bytes_the_file_served() {
    let up = Scripted::start(|r| {
        if r.path == "/v1/audio/speech" && r.json()["input"] == "refused" {
            Reply::status(400)
        } else {
            Reply::ok("audio/pcm", "ok")
        }
    })
    .await;
    let proxy = Proxy::start(&single_upstream(&up.url(), "")).await;
    for _ in 0..2 {
        let body = json!({"model": "tts-1", "input": "héllo 👋", "voice": "alloy"});
        assert_eq!(speech(&proxy, &body).await.status, 200);
    }
    let refused = json!({"model": "tts-1", "input": "refused", "voice": "alloy"});
    assert_eq!(speech(&proxy, &refused).await.status, 400);
    let answer = upload(&proxy, "/v1/audio/transcriptions", &noise(12_345)).await;
    assert_eq!(answer.status, 200);
    let answer = upload(&proxy, "/v1/audio/translations", &noise(100)).await;
    assert_eq!(answer.status, 200);
    let page = metrics(&proxy).await;
    assert_eq!(
        page.exact("voxgate_tts_characters_total", &[("upstream", "a")]),
        Some(14.0),
        "\"héllo 👋\" is 7 scalars, twice; a refused request costs nothing"
    );
    assert_eq!(
        page.exact("voxgate_stt_audio_bytes_total", &[("upstream", "a")]),
        Some(12_445.0)
    );
    assert_eq!(
        page.exact(
            "voxgate_upstream_attempts_total",
            &[("upstream", "a"), ("outcome", "status_4xx")]
        ),
        Some(1.0)
    );
}

/// Polls `/metrics` until `name` with `labels` is `value`, or fails after 5 s.
async fn wait_for(proxy: &Proxy, name: &str, labels: &[(&str, &str)], value: f64) {
    let start = Instant::now();
    loop {
        let now = metrics(proxy).await.exact(name, labels);
        if now == Some(value) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{name} {labels:?} is {now:?}, not {value}, after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn up_and_ejected_gauges_follow_the_pools() {
    let checked = Scripted::always(Reply::ok("audio/pcm", "checked")).await;
    let broken = Scripted::always(Reply::Close).await;
    let fallback = Scripted::always(Reply::ok("audio/pcm", "fallback")).await;
    let config = format!(
        "[upstreams.checked]\nurl = \"{}\"\n\
         health = {{ path = \"/health\", interval = \"50ms\", timeout = \"200ms\", rise = 1, fall = 1 }}\n\
         [upstreams.broken]\nurl = \"{}\"\neject_after = 1\n\
         [upstreams.fallback]\nurl = \"{}\"\n\
         [[routes]]\nmatch = {{ endpoint = \"speech\" }}\nto = [\"broken\", \"fallback\"]\n\
         [[routes]]\nto = [\"checked\", \"fallback\"]\n",
        checked.url(),
        broken.url(),
        fallback.url()
    );
    let proxy = Proxy::start(&config).await;
    let checked_labels = [
        ("upstream", "checked"),
        ("endpoint", &*format!("{}/", checked.url())),
    ];
    let broken_url = format!("{}/", broken.url());
    let broken_labels = [("upstream", "broken"), ("endpoint", &*broken_url)];
    let page = metrics(&proxy).await;
    assert_eq!(
        page.exact("voxgate_upstream_up", &checked_labels),
        Some(1.0)
    );
    assert_eq!(
        page.exact("voxgate_upstream_ejected", &broken_labels),
        Some(0.0)
    );

    let body = json!({"model": "tts-1", "input": "hi", "voice": "alloy"});
    assert_eq!(&speech(&proxy, &body).await.body[..], b"fallback");
    let page = metrics(&proxy).await;
    assert_eq!(
        page.exact("voxgate_upstream_ejected", &broken_labels),
        Some(1.0)
    );
    assert_eq!(
        page.exact("voxgate_upstream_up", &broken_labels),
        Some(1.0),
        "ejected is not down: no check says so"
    );

    drop(checked);
    wait_for(&proxy, "voxgate_upstream_up", &checked_labels, 0.0).await;
    assert_eq!(
        metrics(&proxy)
            .await
            .exact("voxgate_upstream_ejected", &checked_labels),
        Some(0.0)
    );
}

#[tokio::test]
async fn in_flight_replay_memory_and_spilled_bytes_are_read_at_scrape_time() {
    let up = Scripted::always(Reply::Late {
        after: Duration::from_secs(2),
        reply: Box::new(Reply::ok("application/json", "{\"text\": \"hi\"}")),
    })
    .await;
    let config = format!(
        "[server]\nreplay_memory_per_request = 65536\n{}",
        single_upstream(&up.url(), "")
    );
    let proxy = Proxy::start(&config).await;
    let page = metrics(&proxy).await;
    assert_eq!(
        page.value("voxgate_in_flight_requests", &[]),
        1.0,
        "the scrape itself"
    );
    assert_eq!(page.value("voxgate_spilled_bytes_total", &[]), 0.0);

    let file = noise(300 * 1024);
    let url = proxy.url("/v1/audio/transcriptions");
    let form = form(&[
        ("model", None, b"whisper-1"),
        ("file", Some("a.wav"), &file),
    ]);
    let waiting = tokio::spawn(send(post(
        &url,
        &form_content_type(),
        full_body(form.clone()),
    )));
    wait_for(&proxy, "voxgate_in_flight_requests", &[], 2.0).await;
    let page = metrics(&proxy).await;
    let memory = page.value("voxgate_replay_memory_bytes", &[]);
    let spilled = page.value("voxgate_spilled_bytes_total", &[]);
    assert!(memory > 0.0 && memory <= 65536.0, "{memory}");
    assert_eq!(
        memory + spilled,
        file.len() as f64,
        "every byte of the file kept, in memory or spilled"
    );
    assert_eq!(waiting.await.unwrap().status, 200);
    let page = metrics(&proxy).await;
    assert_eq!(page.value("voxgate_in_flight_requests", &[]), 1.0);
    assert_eq!(
        page.value("voxgate_replay_memory_bytes", &[]),
        0.0,
        "given back"
    );
    assert_eq!(
        page.value("voxgate_spilled_bytes_total", &[]),
        spilled,
        "a total"
    );
}

#[tokio::test]
async fn reloads_are_counted_and_counters_carry_over_a_reload() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("voxgate.toml");
    let config = single_upstream(&up.url(), "");
    std::fs::write(&path, &config).unwrap();
    let proxy = Proxy::start_from_file(&path).await;
    let route = route_label(&config, 0);
    let body = json!({"model": "tts-1", "input": "hi", "voice": "alloy"});
    for _ in 0..2 {
        assert_eq!(speech(&proxy, &body).await.status, 200);
    }
    let page = metrics(&proxy).await;
    let reloads =
        |page: &Page, result| page.exact("voxgate_config_reloads_total", &[("result", result)]);
    assert_eq!(
        (reloads(&page, "success"), reloads(&page, "failure")),
        (Some(0.0), Some(0.0))
    );
    let loaded = |page: &Page| page.value("voxgate_config_loaded_timestamp_seconds", &[]);
    let first_load = loaded(&page);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        first_load > now - 60.0 && first_load <= now,
        "{first_load} vs {now}"
    );

    // A good reload: one more upstream, the route on the same line.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(
        &path,
        format!("{config}[upstreams.b]\nurl = \"{}\"\n", up.url()),
    )
    .unwrap();
    proxy
        .gateway
        .reload("test")
        .await
        .expect("the new file is good");
    assert_eq!(speech(&proxy, &body).await.status, 200);
    let page = metrics(&proxy).await;
    assert_eq!(
        (reloads(&page, "success"), reloads(&page, "failure")),
        (Some(1.0), Some(0.0))
    );
    assert!(loaded(&page) > first_load);
    let labels = [
        ("endpoint", "speech"),
        ("route", &*route),
        ("upstream", "a"),
        ("status", "200"),
    ];
    assert_eq!(
        page.exact("voxgate_requests_total", &labels),
        Some(3.0),
        "two before the reload, one after: counters never go back"
    );
    assert_eq!(
        page.exact(
            "voxgate_request_duration_seconds_count",
            &[("endpoint", "speech"), ("upstream", "a")]
        ),
        Some(3.0)
    );
    assert_eq!(
        page.exact("voxgate_tts_characters_total", &[("upstream", "b")]),
        Some(0.0),
        "the new configuration's upstream is there"
    );

    // A bad one: nothing changes but the failure count.
    std::fs::write(&path, "[upstreams.a\nurl = ").unwrap();
    assert!(proxy.gateway.reload("test").await.is_err());
    let after_bad = metrics(&proxy).await;
    assert_eq!(
        (
            reloads(&after_bad, "success"),
            reloads(&after_bad, "failure")
        ),
        (Some(1.0), Some(1.0))
    );
    assert_eq!(loaded(&after_bad), loaded(&page));
    assert_eq!(
        after_bad.exact("voxgate_requests_total", &labels),
        Some(3.0)
    );
}

#[tokio::test]
async fn label_values_come_from_the_configuration_not_from_clients() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let config = format!(
        "[upstreams.a]\nurl = \"{}\"\n\
         [[routes]]\nmatch = {{ endpoint = \"speech\", model = [\"tts-1\", \"kokoro\"] }}\nto = [\"a\"]\n\
         [[routes]]\nto = [\"a\"]\n",
        up.url()
    );
    let (named, rest) = (route_label(&config, 0), route_label(&config, 1));
    let proxy = Proxy::start(&config).await;
    let speech_with = |model: &'static str| {
        let proxy = &proxy;
        async move {
            let body = json!({"model": model, "input": "hi", "voice": "alloy"});
            assert_eq!(speech(proxy, &body).await.status, 200);
        }
    };
    speech_with("tts-1").await;
    speech_with("made-up-model-1").await;
    speech_with("made-up-model-2").await;
    // A first scrape, so that the next ones differ only by what the requests add.
    metrics(&proxy).await;
    let mut sizes = Vec::new();
    for i in 0..50 {
        assert_eq!(get(proxy.url(&format!("/v1/things/{i}"))).await.status, 200);
        assert_eq!(get(proxy.url(&format!("/nope-{i}"))).await.status, 404);
        if i == 9 || i == 49 {
            sizes.push(metrics(&proxy).await.sample_count());
        }
    }
    let page = metrics(&proxy).await;
    assert_eq!(
        sizes[0], sizes[1],
        "40 more distinct paths, not one more sample"
    );
    let model = |m: &str| {
        page.exact(
            "voxgate_model_requests_total",
            &[("endpoint", "speech"), ("model", m)],
        )
    };
    assert_eq!(model("tts-1"), Some(1.0));
    assert_eq!(
        model("other"),
        Some(2.0),
        "models the configuration does not name"
    );
    assert_eq!(
        page.exact(
            "voxgate_model_requests_total",
            &[("endpoint", "other"), ("model", "none")]
        ),
        Some(50.0)
    );
    let requests = |endpoint: &str, route: &str, upstream: &str, status: &str| {
        page.exact(
            "voxgate_requests_total",
            &[
                ("endpoint", endpoint),
                ("route", route),
                ("upstream", upstream),
                ("status", status),
            ],
        )
    };
    assert_eq!(requests("speech", &named, "a", "200"), Some(1.0));
    assert_eq!(requests("speech", &rest, "a", "200"), Some(2.0));
    assert_eq!(requests("other", &rest, "a", "200"), Some(50.0));
    assert_eq!(requests("admin", "none", "none", "404"), Some(50.0));
    for family in &page.families {
        for sample in family["samples"].as_array().unwrap() {
            let labels = sample[1].as_object().unwrap();
            assert!(!labels.contains_key("path"), "{sample}");
            for value in labels.values() {
                let value = value.as_str().unwrap();
                assert!(
                    !["things", "nope", "made-up", "vg-"]
                        .iter()
                        .any(|s| value.contains(s)),
                    "a client's value as a label: {sample}"
                );
            }
        }
    }
}

#[tokio::test]
async fn metrics_are_served_on_the_admin_listener_only_when_it_is_set() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let public_only = Proxy::start(&single_upstream(&up.url(), "")).await;
    let page = metrics(&public_only).await;
    assert!(page.family("voxgate_requests").is_some());

    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let config = format!(
        "[server]\nadmin_listen = \"{admin_addr}\"\n{}",
        single_upstream(&up.url(), "")
    );
    let proxy = Proxy::start(&config).await;
    tokio::spawn(voxgate::server::run_admin(
        admin,
        proxy.gateway.clone(),
        std::future::pending::<()>(),
    ));
    assert_eq!(get(proxy.url("/metrics")).await.status, 404);
    let body = json!({"model": "tts-1", "input": "hi", "voice": "alloy"});
    assert_eq!(speech(&proxy, &body).await.status, 200);
    let page = scrape(&format!("http://{admin_addr}/metrics")).await;
    assert_eq!(
        page.value("voxgate_requests_total", &[("endpoint", "speech")]),
        1.0
    );
    assert_eq!(
        page.value(
            "voxgate_requests_total",
            &[("endpoint", "admin"), ("status", "404")]
        ),
        1.0,
        "the refused /metrics on the API listener"
    );
}
