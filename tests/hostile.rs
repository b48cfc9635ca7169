//! Hostile and broken clients, byte by byte over raw sockets: header floods, smuggling
//! shapes (a corpus, each with what it must get), slow headers, HTTP/1.0, `Expect: 100-continue`, part floods, overload. Every
//! case gets its answer, and a normal request still succeeds afterwards.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const SPEECH: &str = r#"{"model":"tts-1","input":"hi","voice":"alloy"}"#;

async fn proxy_with(upstream: &Scripted, server: &str) -> Proxy {
    Proxy::start(&format!(
        "[server]\n{server}\n{}",
        single_upstream(&upstream.url(), "")
    ))
    .await
}

/// Sends raw bytes and reads until the server closes or `wait` passes; returns the text.
async fn raw(proxy: &Proxy, bytes: &[u8], wait: Duration) -> String {
    let mut stream = connect(proxy.addr).await;
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn speech_bytes(extra_headers: &str) -> Vec<u8> {
    format!(
        "POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{SPEECH}",
        SPEECH.len()
    )
    .into_bytes()
}

async fn still_serves(proxy: &Proxy) {
    let r = send(speech_request(
        &proxy.url("/v1/audio/speech"),
        serde_json::from_str(SPEECH).unwrap(),
    ))
    .await;
    assert_eq!(r.status, 200, "a normal request after the hostile one");
}

#[tokio::test]
async fn header_floods_and_oversized_headers_are_refused() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = proxy_with(&up, "").await;
    let flood: String = (0..200).map(|i| format!("X-Flood-{i}: {i}\r\n")).collect();
    let answer = raw(&proxy, &speech_bytes(&flood), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let huge = format!("X-Huge: {}\r\n", "a".repeat(300 * 1024));
    let answer = raw(&proxy, &speech_bytes(&huge), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(up.count(), 0);
    still_serves(&proxy).await;
}

#[tokio::test]
async fn smuggling_shapes_never_reach_the_upstream_as_two_requests() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = proxy_with(&up, "").await;
    // Two different Content-Lengths.
    let two = format!(
        "POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nContent-Length: 3\r\n\r\n{SPEECH}",
        SPEECH.len()
    );
    let answer = raw(&proxy, two.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    // Content-Length with Transfer-Encoding, a second request hidden in the body.
    let hidden = "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n";
    let chunked = format!(
        "POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{SPEECH}\r\n0\r\n\r\n{hidden}",
        SPEECH.len()
    );
    let answer = raw(&proxy, chunked.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    assert!(
        up.received().iter().all(|r| r.path != "/v1/models"),
        "the hidden request was not forwarded"
    );
    still_serves(&proxy).await;
}

/// What a smuggling shape must get.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Must {
    /// Served once, as the one request it is, with the right body upstream.
    Serve,
    /// Refused with this status, nothing forwarded.
    Refuse(u16),
}

#[tokio::test]
async fn the_smuggling_corpus_gets_what_each_shape_must() {
    let chunked = format!("{:x}\r\n{SPEECH}\r\n0\r\n\r\n", SPEECH.len());
    let n = SPEECH.len();
    let start = "POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n";
    let corpus: Vec<(&str, String, Must)> = vec![
        // Whitespace around a field value is OWS, a tab included (RFC 9110 §5.5).
        (
            "TE with a tab before its value",
            format!("{start}Transfer-Encoding:\tchunked\r\n\r\n{chunked}"),
            Must::Serve,
        ),
        // Not a field name: a front end that trims it would frame the body otherwise.
        (
            "TE with a tab before the colon",
            format!("{start}Transfer-Encoding\t: chunked\r\n\r\n{chunked}"),
            Must::Refuse(400),
        ),
        // Coding names are case-insensitive (RFC 9112 §7).
        (
            "CHUNKED",
            format!("{start}Transfer-Encoding: CHUNKED\r\n\r\n{chunked}"),
            Must::Serve,
        ),
        // identity is no longer a coding; hyper would take the list as chunked.
        (
            "identity, chunked",
            format!("{start}Transfer-Encoding: identity, chunked\r\n\r\n{chunked}"),
            Must::Refuse(501),
        ),
        (
            "gzip, chunked",
            format!("{start}Transfer-Encoding: gzip, chunked\r\n\r\n{chunked}"),
            Must::Refuse(501),
        ),
        (
            "chunked twice",
            format!("{start}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n{chunked}"),
            Must::Refuse(400),
        ),
        // chunked not last: no framing at all (RFC 9112 §6.3).
        (
            "chunked, gzip",
            format!("{start}Transfer-Encoding: chunked, gzip\r\n\r\n{chunked}"),
            Must::Refuse(400),
        ),
        // obs-fold is not allowed in requests (RFC 9112 §5.2).
        (
            "obs-fold on Content-Length",
            format!("{start}Content-Length: 4\r\n {}\r\n\r\n{SPEECH}", n - 4),
            Must::Refuse(400),
        ),
        // Identical copies may be read as one (RFC 9112 §6.3).
        (
            "the same Content-Length twice",
            format!("{start}Content-Length: {n}\r\nContent-Length: {n}\r\n\r\n{SPEECH}"),
            Must::Serve,
        ),
        (
            "two different Content-Lengths",
            format!("{start}Content-Length: {n}\r\nContent-Length: {}\r\n\r\n{SPEECH}", n + 1),
            Must::Refuse(400),
        ),
        (
            "a negative Content-Length",
            format!("{start}Content-Length: -{n}\r\n\r\n{SPEECH}"),
            Must::Refuse(400),
        ),
        (
            "a signed Content-Length",
            format!("{start}Content-Length: +{n}\r\n\r\n{SPEECH}"),
            Must::Refuse(400),
        ),
        // A server must take the absolute form (RFC 9112 §3.2.2); only the path is
        // forwarded, to the upstream's own host.
        (
            "absolute-form target",
            format!(
                "POST http://evil.example/v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {n}\r\n\r\n{SPEECH}"
            ),
            Must::Serve,
        ),
        (
            "absolute-form target to an unknown path",
            "POST http://evil.example/admin HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
                .to_string(),
            Must::Refuse(404),
        ),
    ];
    for (what, bytes, must) in corpus {
        let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
        let proxy = proxy_with(&up, "").await;
        let answer = raw(&proxy, bytes.as_bytes(), Duration::from_secs(3)).await;
        let status: u16 = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no answer: {answer:?}"));
        match must {
            Must::Serve => {
                assert_eq!(status, 200, "{what}: {answer}");
                let got = up.received();
                assert_eq!(got.len(), 1, "{what}: one request upstream");
                assert_eq!(got[0].path, "/v1/audio/speech", "{what}");
                assert_eq!(got[0].body, SPEECH, "{what}");
                assert_eq!(
                    got[0].header("host"),
                    Some(up.addr.to_string().as_str()),
                    "{what}"
                );
            }
            Must::Refuse(expected) => {
                assert_eq!(status, expected, "{what}: {answer}");
                assert_eq!(up.count(), 0, "{what}: nothing forwarded");
            }
        }
        still_serves(&proxy).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_sending_headers_slowly_is_cut_off() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = proxy_with(&up, "header_read_timeout = \"500ms\"").await;
    let mut stream = connect(proxy.addr).await;
    let start = Instant::now();
    let request = speech_bytes("");
    let mut closed = false;
    for byte in request.iter().take(100) {
        if stream.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await
        {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
            closed = true;
            break;
        }
    }
    assert!(closed, "the connection was cut off");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(up.count(), 0);
    still_serves(&proxy).await;
}

#[tokio::test]
async fn http_1_0_and_expect_continue_clients_are_served() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = proxy_with(&up, "").await;
    let old = format!(
        "POST /v1/audio/speech HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{SPEECH}",
        SPEECH.len()
    );
    let answer = raw(&proxy, old.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");

    let mut stream = connect(proxy.addr).await;
    let head = format!(
        "POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        SPEECH.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
        .await
        .expect("100 Continue comes before the body is sent")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"));
    stream.write_all(SPEECH.as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"));
    assert!(
        up.last().header("expect").is_none(),
        "Expect is not forwarded"
    );
}

#[tokio::test]
async fn thousands_of_parts_and_huge_text_parts_are_refused() {
    let up = Scripted::always(Reply::json(200, json!({"text": "ok"}))).await;
    let proxy = proxy_with(&up, "").await;
    let names: Vec<String> = (0..1500).map(|i| format!("f{i}")).collect();
    let mut parts: Vec<(&str, Option<&str>, &[u8])> = names
        .iter()
        .map(|n| (n.as_str(), None, &b"x"[..]))
        .collect();
    parts.push(("model", None, b"whisper-1"));
    parts.push(("file", Some("a.wav"), b"RIFF"));
    let url = proxy.url("/v1/audio/transcriptions");
    let r = send(post(&url, &form_content_type(), full_body(form(&parts)))).await;
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("more than 1000 parts"));
    let prompt = vec![b'p'; 100_000];
    let big = form(&[
        ("model", None, b"whisper-1"),
        ("prompt", None, &prompt),
        ("file", Some("a.wav"), b"RIFF"),
    ]);
    let r = send(post(&url, &form_content_type(), full_body(big))).await;
    assert_eq!(r.status, 400);
    assert!(r.error_message().contains("`prompt` is longer than"));
    assert_eq!(up.count(), 0);
    still_serves(&proxy).await;
}

#[tokio::test(start_paused = true)]
async fn beyond_the_in_flight_limit_requests_are_shed_at_once_with_retry_after() {
    let up = Scripted::always(Reply::Late {
        after: Duration::from_millis(500),
        reply: Box::new(Reply::ok("audio/pcm", "ok")),
    })
    .await;
    let proxy = proxy_with(&up, "max_in_flight = 2").await;
    let slow = || {
        speech_request(
            &proxy.url("/v1/audio/speech"),
            serde_json::from_str(SPEECH).unwrap(),
        )
    };
    let first = tokio::spawn(client().request(slow()));
    let second = tokio::spawn(client().request(slow()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let shed = send(slow()).await;
    assert!(
        start.elapsed() < Duration::from_millis(400),
        "shed at once, not queued (the upstream takes 500 ms)"
    );
    assert_eq!(shed.status, 503);
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert!(shed.error_message().contains("overloaded"));
    // A busy voxgate is alive and ready: probes are not shed (a liveness probe that got
    // 503 here would restart a healthy instance).
    for probe in ["/health", "/ready"] {
        let answer = send(
            http::Request::get(proxy.url(probe))
                .body(full_body(""))
                .unwrap(),
        )
        .await;
        assert_eq!(answer.status, 200, "{probe}");
    }
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
    assert_eq!(second.await.unwrap().unwrap().status(), 200);
    still_serves(&proxy).await;
}

#[tokio::test(start_paused = true)]
async fn beyond_the_connection_limit_connections_get_503_and_are_closed() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = proxy_with(&up, "max_connections = 1").await;
    let _held = connect(proxy.addr).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answer = raw(&proxy, &speech_bytes(""), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    drop(_held);
    tokio::time::sleep(Duration::from_millis(50)).await;
    still_serves(&proxy).await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stalls_mid_upload_gets_408() {
    let up = Scripted::always(Reply::json(200, json!({"text": "ok"}))).await;
    let proxy = proxy_with(&up, "body_read_timeout = \"300ms\"").await;
    let head = format!(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: {}\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n--{BOUNDARY}\r\n",
        form_content_type()
    );
    let start = Instant::now();
    // Headers and a first piece of the body, then nothing.
    let answer = raw(&proxy, head.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(up.count(), 0);
    still_serves(&proxy).await;
}

/// Reads until the peer closes; the bytes read, or `None` if it stayed open past `wait`.
async fn read_to_close(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(wait, read).await.ok().map(|_| all)
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_never_sends_a_request_is_closed() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = proxy_with(&up, "header_read_timeout = \"400ms\"").await;
    // Nothing at all: not even the bytes that tell HTTP/1 from HTTP/2.
    let mut silent = connect(proxy.addr).await;
    // An h2c client: the preface and an empty SETTINGS frame, then no HEADERS.
    let mut h2c = connect(proxy.addr).await;
    h2c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let start = Instant::now();
    assert!(
        read_to_close(&mut silent, Duration::from_secs(3))
            .await
            .is_some(),
        "a silent connection stayed open"
    );
    assert!(
        read_to_close(&mut h2c, Duration::from_secs(3))
            .await
            .is_some(),
        "an h2c connection without a request stayed open"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    still_serves(&proxy).await;
}

#[tokio::test(start_paused = true)]
async fn h2c_clients_are_served_and_may_idle_after_their_first_request() {
    let up = Scripted::always(Reply::ok("audio/pcm", "h2-audio")).await;
    let proxy = proxy_with(&up, "header_read_timeout = \"300ms\"").await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(connector());
    for round in 0..2 {
        let request = speech_request(
            &proxy.url("/v1/audio/speech"),
            json!({"model": "tts-1", "input": "hi", "voice": "alloy"}),
        );
        let response = h2.request(request).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert_eq!(response.status(), 200);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, "h2-audio", "round {round}");
        // Idle past the first-request deadline: the connection is kept.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    assert_eq!(up.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_over_the_limit_is_closed_too() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = proxy_with(&up, "header_read_timeout = \"400ms\"\nmax_connections = 1").await;
    // The one allowed connection: a keep-alive client that was served and stays.
    let mut kept = connect(proxy.addr).await;
    let keep_alive = String::from_utf8(speech_bytes(""))
        .unwrap()
        .replace("Connection: close\r\n", "");
    kept.write_all(keep_alive.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Over the limit, and silent: it is being shed, and must not be held forever.
    let mut silent = connect(proxy.addr).await;
    let start = Instant::now();
    assert!(
        read_to_close(&mut silent, Duration::from_secs(3))
            .await
            .is_some(),
        "a silent connection over the limit stayed open"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    drop(kept);
}
