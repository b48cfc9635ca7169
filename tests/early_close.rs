//! Answers given before the request body was read to its end, over raw sockets: each says
//! `Connection: close`, reaches the client whole (lingering close, not a reset, however
//! much of the upload is still coming), never reaches the upstream, and a keep-alive
//! client goes on on a new connection.

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SPEECH: &str = r#"{"model":"tts-1","input":"hi","voice":"alloy"}"#;

/// An answer as read off the socket to the server's close.
#[derive(Debug)]
struct Raw {
    status: u16,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn says_close(&self) -> bool {
        self.headers
            .iter()
            .any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close"))
    }

    /// The OpenAI error message, asserting the error shape.
    fn error_message(&self) -> String {
        let v: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)));
        let e = &v["error"];
        assert!(e["message"].is_string() && e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
        e["message"].as_str().unwrap().to_string()
    }
}

/// Sends `head` and all of `body`, then reads the answer to the server's close: a client
/// that uploads first and reads after, as most do without `Expect: 100-continue`. Fails on
/// a reset (while uploading or reading), on a close before the whole answer, or after
/// `wait`.
async fn exchange(proxy: &Proxy, head: &str, body: Vec<u8>, wait: Duration) -> Raw {
    let mut stream = connect(proxy.addr).await;
    let talk = async {
        stream.write_all(head.as_bytes()).await?;
        for piece in body.chunks(64 * 1024) {
            stream.write_all(piece).await?;
        }
        let mut all = Vec::new();
        // The write half stays open: an uploading client does not close it either.
        stream.read_to_end(&mut all).await?;
        Ok::<_, std::io::Error>(all)
    };
    match tokio::time::timeout(wait, talk).await {
        Err(_) => panic!("no answer and close within {wait:?}"),
        Ok(Err(e)) => panic!("the answer was lost: {e}"),
        Ok(Ok(all)) => parse(&all),
    }
}

fn parse(all: &[u8]) -> Raw {
    let text = String::from_utf8_lossy(all);
    let end = text
        .find("\r\n\r\n")
        .unwrap_or_else(|| panic!("no whole answer head: {text:?}"));
    let mut lines = text[..end].split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = all[end + 4..].to_vec();
    let raw = Raw {
        status,
        headers,
        body,
    };
    let length: usize = raw
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no content-length: {raw:?}"));
    assert_eq!(raw.body.len(), length, "the whole answer arrived: {raw:?}");
    raw
}

async fn proxy_for(upstream: &Scripted, server: &str) -> Proxy {
    Proxy::start(&format!(
        "[server]\n{server}\n{}",
        single_upstream(&upstream.url(), "")
    ))
    .await
}

/// A speech body of `len` bytes: valid JSON, so only its size is wrong.
fn big_speech(len: usize) -> Vec<u8> {
    let prefix = r#"{"model":"tts-1","voice":"alloy","input":""#;
    let mut body = prefix.as_bytes().to_vec();
    body.resize(len - 2, b'a');
    body.extend_from_slice(b"\"}");
    body
}

fn speech_head(extra: &str) -> String {
    format!("POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n")
}

async fn still_serves(proxy: &Proxy) {
    let r = send(speech_request(
        &proxy.url("/v1/audio/speech"),
        serde_json::from_str(SPEECH).unwrap(),
    ))
    .await;
    assert_eq!(r.status, 200, "a normal request afterwards");
}

#[tokio::test]
async fn a_5_mb_speech_body_over_max_json_bytes_gets_its_413_every_time() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = proxy_for(&up, "max_json_bytes = 65536").await;
    let body = big_speech(5_000_000);
    let head = speech_head(&format!("Content-Length: {}\r\n", body.len()));
    let mut seen = 0;
    for round in 0..50 {
        let answer = exchange(&proxy, &head, body.clone(), Duration::from_secs(20)).await;
        assert_eq!(answer.status, 413, "round {round}: {answer:?}");
        assert!(answer.says_close(), "round {round}: {answer:?}");
        assert!(answer
            .error_message()
            .starts_with("Maximum content size limit (65536) exceeded"));
        seen += 1;
    }
    println!("{seen} of 50 saw the 413");
    assert_eq!(up.count(), 0);
    still_serves(&proxy).await;
}

#[tokio::test]
async fn a_chunked_upload_crossing_the_limit_gets_413_and_close() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = proxy_for(&up, "max_body_bytes = 100000").await;
    let head = format!(
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        form_content_type()
    );
    // 8 MB in 16 KiB chunks, far past the limit and more than the socket buffers hold.
    let mut body = Vec::new();
    for _ in 0..500 {
        body.extend_from_slice(format!("{:x}\r\n", 16384).as_bytes());
        body.extend(std::iter::repeat_n(b'a', 16384));
        body.extend_from_slice(b"\r\n");
    }
    let answer = exchange(&proxy, &head, body, Duration::from_secs(20)).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert!(answer.says_close(), "{answer:?}");
    answer.error_message();
    assert_eq!(up.count(), 0);
    still_serves(&proxy).await;
}

#[tokio::test]
async fn a_bad_chunk_gets_400_and_close() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = proxy_for(&up, "").await;
    let head = speech_head("Transfer-Encoding: chunked\r\n");
    let body = format!("5\r\n{{\"mod\r\nzz-not-hex\r\n{}", "x".repeat(8_000_000));
    let answer = exchange(&proxy, &head, body.into_bytes(), Duration::from_secs(20)).await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(answer.says_close(), "{answer:?}");
    assert!(answer
        .error_message()
        .contains("reading the request body failed"));
    assert_eq!(up.count(), 0);
    still_serves(&proxy).await;
}

#[tokio::test]
async fn host_missing_doubled_or_invalid_gets_400_and_close_and_is_not_forwarded() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = proxy_for(&up, "").await;
    let framing = format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n",
        SPEECH.len()
    );
    let cases = [
        ("no Host", String::new(), "no Host header"),
        (
            "two Hosts",
            "Host: a\r\nHost: b\r\n".to_string(),
            "more than one Host header",
        ),
        (
            "two equal Hosts",
            "Host: a\r\nHost: a\r\n".to_string(),
            "more than one Host header",
        ),
        (
            "a space and userinfo",
            "Host: a b@c\r\n".to_string(),
            "not a valid host",
        ),
        ("userinfo", "Host: u@h\r\n".to_string(), "not a valid host"),
        ("bad port", "Host: h:8o\r\n".to_string(), "not a valid host"),
    ];
    for (what, host, message) in cases {
        let head = format!("POST /v1/audio/speech HTTP/1.1\r\n{host}{framing}\r\n");
        let answer = exchange(&proxy, &head, SPEECH.into(), Duration::from_secs(10)).await;
        assert_eq!(answer.status, 400, "{what}: {answer:?}");
        assert!(answer.says_close(), "{what}: {answer:?}");
        let m = answer.error_message();
        assert!(m.contains(message), "{what}: {m}");
    }
    assert_eq!(up.count(), 0, "none was forwarded");
    // HTTP/1.0 may leave Host out, and IPv6 literals and ports are hosts.
    for (version, host) in [
        ("1.0", ""),
        ("1.1", "Host: [::1]:9000\r\n"),
        ("1.1", "Host: voice.example:80\r\n"),
        ("1.1", "Host: 127.0.0.1\r\n"),
    ] {
        let head = format!(
            "POST /v1/audio/speech HTTP/{version}\r\n{host}{framing}Connection: close\r\n\r\n"
        );
        let answer = exchange(&proxy, &head, SPEECH.into(), Duration::from_secs(10)).await;
        assert_eq!(answer.status, 200, "{version} {host:?}: {answer:?}");
    }
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn an_unknown_transfer_coding_gets_501_and_close() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let proxy = proxy_for(&up, "").await;
    // hyper reads `gzip, chunked` as chunked (chunked comes last) and hands the body on
    // still gzipped; voxgate cannot decode it and must not pass it on as if plain.
    for coding in ["gzip, chunked", "identity, chunked", "x-custom,chunked"] {
        let head = speech_head(&format!("Transfer-Encoding: {coding}\r\n"));
        let body = format!("{:x}\r\n{SPEECH}\r\n0\r\n\r\n", SPEECH.len());
        let answer = exchange(&proxy, &head, body.into_bytes(), Duration::from_secs(10)).await;
        assert_eq!(answer.status, 501, "{coding}: {answer:?}");
        assert!(answer.says_close(), "{coding}: {answer:?}");
        assert!(answer.error_message().contains("chunked"));
    }
    assert_eq!(up.count(), 0);
    still_serves(&proxy).await;
}

#[tokio::test]
async fn a_keep_alive_client_goes_on_on_a_new_connection_after_a_413() {
    let up = Scripted::always(Reply::ok("audio/pcm", "audio")).await;
    let proxy = proxy_for(&up, "max_json_bytes = 1000").await;
    // Python's http.client keeps its connection unless the answer says close; told, it
    // opens a new one for the next request. Without the header it would send the next
    // request on the closed connection and fail.
    let script = r#"
import http.client, json, sys
conn = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)
big = json.dumps({"model": "tts-1", "voice": "alloy", "input": "a" * 5000})
conn.request("POST", "/v1/audio/speech", body=big, headers={"Content-Type": "application/json"})
r = conn.getresponse()
first = {"status": r.status, "connection": r.getheader("connection"), "will_close": r.will_close}
r.read()
port_before = conn.sock.getsockname()[1] if conn.sock else None
small = json.dumps({"model": "tts-1", "voice": "alloy", "input": "hi"})
conn.request("POST", "/v1/audio/speech", body=small, headers={"Content-Type": "application/json"})
r = conn.getresponse()
second = {"status": r.status, "body": r.read().decode()}
print(json.dumps({"first": first, "second": second, "port_before": port_before}))
"#;
    let mut command = tokio::process::Command::new("python3");
    command
        .arg("-c")
        .arg(script)
        .arg(proxy.addr.ip().to_string())
        .arg(proxy.addr.port().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let outcome = run_script(command, &[], Duration::from_secs(30), "needs python3").await;
    let result = outcome.ok();
    assert_eq!(result["first"]["status"], 413, "{result}");
    assert_eq!(result["first"]["connection"], "close", "{result}");
    assert_eq!(result["first"]["will_close"], true, "{result}");
    assert!(
        result["port_before"].is_null(),
        "the connection was closed after the 413: {result}"
    );
    assert_eq!(result["second"]["status"], 200, "{result}");
    assert_eq!(result["second"]["body"], "audio", "{result}");
    assert_eq!(up.count(), 1);
}
