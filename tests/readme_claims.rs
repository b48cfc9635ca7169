//! README claims proved end to end over real sockets: speech SSE from an upstream that
//! streams it is passed on event by event, not buffered; `[log] format = "json"` makes the
//! real binary write one JSON object a line, access-log fields included; and
//! `least_outstanding` sends new requests away from an endpoint that is holding some.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::channel::{Channel, Sender};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use support::daemon::{start_with, stop_with_sigterm};
use support::*;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream whose answer bodies the test writes itself: for each request it hands the
/// test the request's JSON and the sender of a `text/event-stream` answer.
async fn hand_written_upstream() -> (SocketAddr, mpsc::Receiver<(Value, Sender<Bytes, BoxError>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let (sender, body) = Channel::<Bytes, BoxError>::new(1);
                        let _ = tx.send((json, sender)).await;
                        let mut response = Response::new(body);
                        response.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("text/event-stream"),
                        );
                        Ok::<_, hyper::Error>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn speech_sse_from_an_upstream_that_streams_it_arrives_event_by_event() {
    let (addr, mut upstream) = hand_written_upstream().await;
    let proxy = Proxy::start(&single_upstream(&format!("http://{addr}"), "")).await;
    let request = speech_request(
        &proxy.url("/v1/audio/speech"),
        json!({"model": "gpt-4o-mini-tts", "input": "hi", "voice": "alloy", "stream_format": "sse"}),
    );
    let answer = tokio::spawn(client().request(request));
    let (received, mut events) = tokio::time::timeout(Duration::from_secs(10), upstream.recv())
        .await
        .expect("the request reached the upstream")
        .unwrap();
    assert_eq!(received["stream_format"], "sse", "passed on: {received}");
    let delta = |audio: &str| {
        Bytes::from(format!(
            "data: {{\"type\":\"speech.audio.delta\",\"audio\":\"{audio}\"}}\n\n"
        ))
    };
    events.send_data(delta("AAAA")).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("the answer's head came with the first event")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut next_event = async || {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event arrived while the upstream holds the next one back")
            .expect("the stream goes on")
            .unwrap();
        frame.into_data().unwrap()
    };
    // Each event reaches the client while the upstream has not sent the next one.
    assert_eq!(next_event().await, delta("AAAA"));
    events.send_data(delta("BBBB")).await.unwrap();
    assert_eq!(next_event().await, delta("BBBB"));
    let done = Bytes::from_static(
        b"data: {\"type\":\"speech.audio.done\",\"usage\":{\"input_tokens\":1,\"output_tokens\":2,\"total_tokens\":3}}\n\n",
    );
    events.send_data(done.clone()).await.unwrap();
    assert_eq!(next_event().await, done);
    drop(events);
    let end = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap();
    assert!(end.is_none(), "the stream ended cleanly: {end:?}");
}

/// The fields "The access log" in the README lists; `error` only when there is one, and
/// the upstream's only when one answered.
const ACCESS_FIELDS: [&str; 16] = [
    "request_id",
    "client",
    "method",
    "path",
    "endpoint",
    "model",
    "voice",
    "route_line",
    "attempts",
    "status",
    "bytes_in",
    "bytes_out",
    "ttfb_ms",
    "total_ms",
    "ending",
    "upstream",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_from_the_binary_are_one_object_a_line_with_the_access_log_fields() {
    let up = Scripted::always(Reply::ok("audio/pcm", "pcm")).await;
    let config = std::env::temp_dir().join(format!("voxgate-{}-json-log.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[log]\nformat = \"json\"\n{}",
            single_upstream(&up.url(), "")
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_voxgate"));
    command.env_remove("VOXGATE_CONFIG").env_remove("RUST_LOG");
    let (mut child, address, rest, mut lines) =
        tokio::task::block_in_place(|| start_with(command, &config));
    let speech = send(speech_request(
        &format!("http://{address}/v1/audio/speech"),
        json!({"model": "tts-1", "input": "hi", "voice": "alloy"}),
    ))
    .await;
    assert_eq!(speech.status, 200);
    let missing = send(
        Request::get(format!("http://{address}/nowhere"))
            .body(full_body(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(missing.status, 404);
    tokio::task::block_in_place(|| stop_with_sigterm(&mut child));
    lines.extend(rest.iter());
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let _ = std::fs::remove_file(&config);

    // stdout and stderr alike: every line is an object.
    let objects: Vec<Value> = lines
        .iter()
        .map(String::as_str)
        .chain(stderr.lines())
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => v,
            _ => panic!("not one JSON object: {line:?}"),
        })
        .collect();
    assert!(
        objects.iter().any(|v| v["message"] == "voxgate listening"),
        "{lines:?}"
    );
    let access: Vec<&Value> = objects
        .iter()
        .filter(|v| v["target"] == "voxgate::access")
        .collect();
    assert_eq!(access.len(), 2, "one line per request: {lines:?}");
    let served = access
        .iter()
        .find(|v| v["path"] == "/v1/audio/speech")
        .expect("the speech request's line");
    for field in ACCESS_FIELDS {
        assert!(served.get(field).is_some(), "no `{field}` in {served}");
    }
    assert_eq!(served["status"], 200);
    assert_eq!(served["upstream"], "a");
    assert_eq!(served["upstream_url"], up.url() + "/");
    assert_eq!(served["ending"], "complete");
    assert!(
        served["total_ms"].is_number() && served["bytes_out"] == 3,
        "{served}"
    );
    assert!(served.get("error").is_none(), "{served}");
    let refused = access
        .iter()
        .find(|v| v["path"] == "/nowhere")
        .expect("the refused request's line");
    assert_eq!(refused["status"], 404);
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown path")),
        "{refused}"
    );
}

#[tokio::test]
async fn least_outstanding_sends_new_requests_away_from_a_busy_endpoint() {
    let slow = Scripted::always(Reply::Hang).await;
    let fast = Scripted::always(Reply::ok("audio/pcm", "fast")).await;
    let config = format!(
        "[upstreams.a]\nendpoints = [\"{}\", \"{}\"]\nbalance = \"least_outstanding\"\n\
         [[routes]]\nto = [\"a\"]\n",
        slow.url(),
        fast.url()
    );
    let proxy = Proxy::start(&config).await;
    let speech = || {
        speech_request(
            &proxy.url("/v1/audio/speech"),
            json!({"model": "tts-1", "input": "hi", "voice": "alloy"}),
        )
    };
    // Requests in turn until one is held by the slow endpoint (ties go either way).
    let mut held = Vec::new();
    for _ in 0..40 {
        let request = tokio::spawn(client().request(speech()));
        for _ in 0..200 {
            if slow.count() > 0 || request.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if slow.count() > 0 {
            held.push(request);
            break;
        }
        let answer = request.await.unwrap().unwrap();
        assert_eq!(answer.status(), 200);
    }
    assert_eq!(slow.count(), 1, "one request is held by the slow endpoint");
    // One in flight there, none at the other: every new request goes to the other.
    let before = fast.count();
    for _ in 0..20 {
        let r = tokio::time::timeout(Duration::from_secs(5), send(speech()))
            .await
            .expect("answered by the idle endpoint, not held by the busy one");
        assert_eq!((r.status, &r.body[..]), (200, &b"fast"[..]));
    }
    assert_eq!(fast.count() - before, 20);
    assert_eq!(slow.count(), 1, "nothing more went to the busy endpoint");
    for request in held {
        request.abort();
    }
}
