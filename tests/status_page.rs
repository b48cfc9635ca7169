//! The status page (`/ui`) where it is served, and in a real headless Chromium: driven over
//! its DevTools protocol by `tests/sdk/status_page.py` (websocket-client, in the SDK venv
//! that `scripts/install-test-deps.sh` makes, which also installs Debian's `chromium`). The
//! page must load with no console error, show a health-checked upstream going down within
//! two health intervals (plus its polling), and its charts and error list must move as
//! requests go through. A screenshot of the page is left in `target/status-page-test.png`.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use http::Request;
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The health check interval of the upstream that goes down.
const HEALTH_INTERVAL: Duration = Duration::from_millis(200);

/// How often the page reads `/status` and `/metrics` in this test (`?every=`).
const POLL: Duration = Duration::from_millis(250);

/// A key the page and `/status` must never show.
const KEY: &str = "sk-status-page-test-key-0123456789";

async fn get(url: &str) -> Answer {
    send(Request::get(url).body(full_body("")).unwrap()).await
}

/// voxgate on `toml`, with an admin listener; the proxy and the admin address.
async fn with_admin(toml: &str) -> (Proxy, std::net::SocketAddr) {
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let proxy = Proxy::start(&format!(
        "[server]\nadmin_listen = \"{admin_addr}\"\n{toml}"
    ))
    .await;
    tokio::spawn(voxgate::server::run_admin(
        admin,
        proxy.gateway.clone(),
        std::future::pending::<()>(),
    ));
    (proxy, admin_addr)
}

#[tokio::test]
async fn the_page_is_served_where_status_is_with_a_strict_policy() {
    let up = Scripted::always(Reply::ok("audio/mpeg", "ID3")).await;
    let (proxy, admin) = with_admin(&single_upstream(&up.url(), "")).await;
    for path in ["/ui", "/"] {
        let page = get(&format!("http://{admin}{path}")).await;
        assert_eq!(page.status, 200, "{path} on the admin listener");
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let policy = page.header("content-security-policy").unwrap_or_default();
        assert!(
            policy.starts_with("default-src 'none'; script-src 'sha256-"),
            "{policy}"
        );
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert!(String::from_utf8_lossy(&page.body).contains("<title>voxgate status</title>"));
    }
    assert_eq!(
        get(&proxy.url("/ui")).await.status,
        404,
        "not on the API one"
    );
    let root = get(&proxy.url("/")).await;
    assert_eq!(root.status, 200);
    assert_eq!(
        root.json(),
        json!({"status": "ok"}),
        "/ stays the health answer"
    );

    let alone = Proxy::start(&single_upstream(&up.url(), "")).await;
    assert_eq!(get(&alone.url("/ui")).await.status, 200, "where /status is");
    assert_eq!(get(&alone.url("/")).await.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn status_lists_routes_and_the_requests_that_went_wrong_without_keys() {
    let up = Scripted::always(Reply::ok("audio/mpeg", "ID3")).await;
    let busy = Scripted::always(Reply::status(503)).await;
    let toml = format!(
        "[upstreams.busy]\nurl = \"{}\"\nhealth = {{ enabled = false }}\napi_key = \"{KEY}\"\n\
         [upstreams.up]\nurl = \"{}\"\nhealth = {{ enabled = false }}\n\
         [[routes]]\nmatch = {{ model = [\"tts-1\", \"gpt-*\"] }}\nto = [\"busy\", \"up\"]\n\
         [[routes]]\nto = [\"busy\"]\n",
        busy.url(),
        up.url()
    );
    let proxy = Proxy::start(&toml).await;
    let speech = |model: &str, id: &str| {
        let mut request = speech_request(
            &proxy.url("/v1/audio/speech"),
            json!({"model": model, "input": "hi", "voice": "alloy"}),
        );
        request
            .headers_mut()
            .insert("x-request-id", id.parse().unwrap());
        send(request)
    };
    assert_eq!(speech("tts-1", "fell-back").await.status, 200);
    assert_eq!(speech("other", "refused").await.status, 503);
    let status = get(&proxy.url("/status")).await;
    let text = String::from_utf8_lossy(&status.body).to_string();
    assert!(!text.contains(KEY), "{text}");
    let status = status.json();
    let routes = &status["routes"];
    assert_eq!(routes[0]["match"], "model = tts-1 | gpt-*");
    assert_eq!(routes[0]["to"], json!(["busy", "up"]));
    assert_eq!(routes[1]["match"], "any request");
    assert_eq!(routes[1]["fallback_on"]["statuses"], json!([502, 503, 504]));
    let errors = status["recent_errors"].as_array().unwrap();
    let ids: Vec<&str> = errors
        .iter()
        .map(|e| e["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["refused", "fell-back"],
        "newest first; /status not in it"
    );
    assert_eq!(errors[0]["status"], 503);
    assert_eq!(errors[0]["route_line"], routes[1]["line"]);
    assert_eq!(errors[1]["status"], 200);
    assert_eq!(errors[1]["attempts"][0]["upstream"], "busy");
    assert!(errors[1]["attempts"][0]["outcome"]
        .as_str()
        .unwrap()
        .starts_with("answered 503"));
    assert_eq!(errors[1]["attempts"][1]["upstream"], "up");
}

/// `tests/sdk/status_page.py serve`: a headless Chromium answering one JSON command a line.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Browser {
    async fn start() -> Browser {
        let python = repo("target/sdk-venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/install-test-deps.sh",
            python.display()
        );
        let mut command = Command::new(python);
        command
            .arg(repo("tests/sdk/status_page.py"))
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
        ] {
            command.env_remove(var);
        }
        let mut child = command.spawn().expect("python starts");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut browser = Browser {
            child,
            stdin,
            lines,
        };
        let hello = browser.answer(Duration::from_secs(60)).await;
        assert_eq!(
            hello["ready"], true,
            "headless Chromium must run for this test (CI installs it with \
             scripts/install-test-deps.sh): {hello}"
        );
        browser
    }

    async fn answer(&mut self, limit: Duration) -> Value {
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the browser answered within {limit:?}"))
            .expect("reading the browser's answer")
            .expect("the browser driver is still running");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
    }

    async fn ask(&mut self, command: Value) -> Value {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        let answer = self.answer(Duration::from_secs(60)).await;
        assert!(answer.get("error").is_none(), "{command}: {answer}");
        answer
    }

    /// Waits until `js` is truthy in the page; how long it took, or `None` past `limit`.
    async fn wait(&mut self, js: &str, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        let answer = self
            .ask(json!({"wait": js, "timeout_ms": limit.as_millis() as u64}))
            .await;
        (answer["ok"] == true).then(|| started.elapsed())
    }

    async fn eval(&mut self, js: &str) -> Value {
        self.ask(json!({ "eval": js })).await["value"].clone()
    }

    async fn console_errors(&mut self) -> Vec<Value> {
        let answer = self.ask(json!({"errors": true})).await;
        answer["errors"].as_array().cloned().unwrap_or_default()
    }

    async fn quit(mut self) {
        self.ask(json!({"quit": true})).await;
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

/// A chart's `data-*` value.
fn chart(name: &str, field: &str) -> String {
    format!("Number(document.getElementById('chart-{name}').dataset.{field} || 0)")
}

#[tokio::test]
async fn in_chromium_the_page_shows_an_upstream_going_down_and_its_charts_moving() {
    let primary = Scripted::always(Reply::ok("audio/mpeg", "ID3 primary")).await;
    let backup = Scripted::always(Reply::ok("audio/mpeg", "ID3 backup")).await;
    let busy = Scripted::always(Reply::status(503)).await;
    let toml = format!(
        "[upstreams.primary]\nurl = \"{}\"\n\
         health = {{ interval = \"{}ms\", timeout = \"150ms\", rise = 1, fall = 1 }}\n\
         [upstreams.backup]\nurl = \"{}\"\nhealth = {{ enabled = false }}\napi_key = \"{KEY}\"\n\
         [upstreams.busy]\nurl = \"{}\"\nhealth = {{ enabled = false }}\neject_after = 1000\n\
         [[routes]]\nmatch = {{ model = \"tts-busy\" }}\nto = [\"busy\", \"backup\"]\n\
         [[routes]]\nmatch = {{ model = \"tts-broken\" }}\nto = [\"busy\"]\n\
         [[routes]]\nname = \"catch-all\"\nto = [\"primary\", \"backup\"]\n",
        primary.url(),
        HEALTH_INTERVAL.as_millis(),
        backup.url(),
        busy.url()
    );
    let (proxy, admin) = with_admin(&toml).await;
    let mut browser = Browser::start().await;
    let url = format!("http://{admin}/ui?every={}", POLL.as_millis());
    browser.ask(json!({ "open": url })).await;

    let primary_up = "document.querySelector('[data-upstream=\"primary\"]')?.dataset.up === 'true'";
    let waited = browser.wait(primary_up, Duration::from_secs(10)).await;
    assert!(waited.is_some(), "the page shows the primary up");
    let chain = browser
        .eval("[...document.querySelectorAll('#routes tbody tr:last-child .chain .badge')].map(b => b.textContent)")
        .await;
    assert_eq!(
        chain,
        json!(["primary", "backup"]),
        "the last route's chain"
    );
    let named = browser
        .eval("document.querySelector('#routes tbody tr:last-child td').textContent")
        .await;
    assert_eq!(
        named,
        json!("catch-all (line 20)"),
        "a named route shows its name"
    );
    // The page's reading of the exposition format and of histogram buckets.
    let parsed = browser
        .eval(r#"parseMetrics('# HELP a x\na_total{x="q\\"z",le="+Inf"} 3\nb 2.5\n')"#)
        .await;
    assert_eq!(
        parsed,
        json!([
            {"name": "a_total", "labels": {"x": "q\"z", "le": "+Inf"}, "value": 3},
            {"name": "b", "labels": {}, "value": 2.5},
        ])
    );
    let quantiles = browser
        .eval(
            "(() => { \
               const now = new Map([[0.001, 0], [0.0025, 10], [0.005, 20], [Infinity, 20]]); \
               const then = new Map([[0.001, 0], [0.0025, 10], [0.005, 10], [Infinity, 10]]); \
               return [quantile(0.5, now, null), quantile(0.5, now, then), \
                       quantile(0.5, then, then), quantile(1, new Map([[0.001, 0], [Infinity, 4]]), null)]; \
             })()",
        )
        .await;
    assert_eq!(
        quantiles,
        json!([0.0025, 0.00375, null, 0.001]),
        "p50 at a bucket's edge, inside the bucket of the window's requests, none in an \
         empty window, the last finite bound above it"
    );
    let header = browser
        .eval("document.querySelector('header').textContent")
        .await;
    assert!(
        header.as_str().unwrap().contains("loaded"),
        "the configuration's load time: {header}"
    );

    // Down within two health intervals, plus two polls of the page and the driver's own
    // 50 ms look.
    drop(primary);
    let primary_down =
        "document.querySelector('[data-upstream=\"primary\"]')?.dataset.up === 'false' \
        && document.querySelector('[data-upstream=\"primary\"] [data-health=\"down\"]') !== null";
    let bound = HEALTH_INTERVAL * 2 + POLL * 2 + Duration::from_millis(300);
    let shown = browser.wait(primary_down, Duration::from_secs(10)).await;
    let Some(shown) = shown else {
        let status = get(&format!("http://{admin}/status")).await.json();
        let page = browser
            .eval("document.body.dataset.polls + ' ' + document.getElementById('connection').textContent + ' ' + document.querySelector('[data-upstream=\"primary\"]').outerHTML")
            .await;
        panic!("the page does not show the primary down: {page}; /status: {status}");
    };
    eprintln!("the page showed the primary down {shown:?} after it was stopped");
    assert!(
        shown <= bound,
        "the page showed the primary down after {shown:?}, more than {bound:?}"
    );

    // Nothing has gone through yet: the charts are flat.
    for name in ["requests", "fallbacks", "errors"] {
        assert_eq!(browser.eval(&chart(name, "max")).await, 0, "{name}");
    }
    assert_eq!(browser.eval(&chart("ttfb", "points")).await, 0);

    let speech = |model: &'static str, id: String| {
        let mut request = speech_request(
            &proxy.url("/v1/audio/speech"),
            json!({"model": model, "input": "hello", "voice": "alloy"}),
        );
        request
            .headers_mut()
            .insert("x-request-id", id.parse().unwrap());
        send(request)
    };
    for round in 0..6 {
        for n in 0..3 {
            let ok = speech("tts-1", format!("plain-{round}-{n}")).await;
            assert_eq!(ok.status, 200);
            assert_eq!(&ok.body[..], b"ID3 backup");
        }
        let fell_back = speech("tts-busy", format!("fell-back-{round}")).await;
        assert_eq!(fell_back.status, 200);
        let broken = speech("tts-broken", format!("broken-{round}")).await;
        assert_eq!(broken.status, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let moved = format!(
        "{} > 0 && {} > 0 && {} > 0 && {} > 0 && {} > 0",
        chart("requests", "max"),
        chart("fallbacks", "max"),
        chart("errors", "max"),
        chart("ttfb", "points"),
        chart("ttfb", "max"),
    );
    assert!(
        browser.wait(&moved, Duration::from_secs(10)).await.is_some(),
        "the charts moved: {}",
        browser
            .eval("JSON.stringify([...document.querySelectorAll('figure.chart')].map(f => [f.id, {...f.dataset}]))")
            .await
    );
    let drawn = browser
        .eval("document.querySelector('#chart-requests svg path.s0').getAttribute('d')")
        .await;
    assert!(
        drawn.as_str().unwrap().matches('L').count() >= 2,
        "a line is drawn: {drawn}"
    );

    let newest_error =
        "document.querySelector('#errors tbody tr[data-request-id=\"broken-5\"]') !== null";
    assert!(
        browser
            .wait(newest_error, Duration::from_secs(5))
            .await
            .is_some(),
        "the last error is listed"
    );
    let errors = browser
        .eval("[...document.querySelectorAll('#errors tbody tr')].map(r => r.dataset.requestId)")
        .await;
    let errors: Vec<&str> = errors
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        errors.first(),
        Some(&"broken-5"),
        "newest first: {errors:?}"
    );
    assert!(
        errors.contains(&"fell-back-5"),
        "fallbacks listed: {errors:?}"
    );
    assert!(
        !errors.iter().any(|id| id.starts_with("plain-")),
        "requests that only skipped a down upstream are no errors: {errors:?}"
    );
    let row = browser
        .eval("document.querySelector('#errors tr[data-request-id=\"fell-back-5\"]').textContent")
        .await;
    assert!(
        row.as_str().unwrap().contains("busy: answered 503"),
        "attempts shown: {row}"
    );
    let html = browser.eval("document.documentElement.outerHTML").await;
    assert!(!html.as_str().unwrap().contains(KEY), "no key on the page");

    let shot = repo("target/status-page-test.png");
    browser
        .ask(json!({"screenshot": shot.display().to_string()}))
        .await;
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    browser.quit().await;
}
