//! A fast scripted upstream for the load benchmark (`benches/load.sh`).
//!
//! ```text
//! cargo run --release --example bench_upstream -- [ADDR [ADDR_503]]
//! ```
//!
//! Listens on `ADDR` (default `127.0.0.1:0`) and, when given, on `ADDR_503`, and prints one
//! line per listener on stdout: `listening http://127.0.0.1:PORT` and
//! `listening-503 http://127.0.0.1:PORT`. It runs on one thread, so that pinning it to a
//! core pins all of it. On `ADDR`:
//!
//! - `POST …/v1/audio/speech` reads the request body and answers 32 KiB of `audio/pcm`
//!   with a Content-Length; with the query `stream=NxDms` (say `?stream=10x50ms`) it
//!   answers N chunks of 4 KiB, chunked, the first one at once and each next one D ms
//!   after the previous;
//! - `POST …/v1/audio/transcriptions` and `…/translations` read and discard the whole body
//!   and answer `{"text":"ok"}`;
//! - any request whose path starts with `/503/` reads the body and answers 503;
//! - `GET /health` answers 200; anything else 404.
//!
//! Every request on `ADDR_503` reads the body and answers 503, whatever its path: the
//! "primary that is overloaded" of the fallback figures.
//!
//! Nothing read from the network is trusted: a malformed query or a broken request body
//! gets a plain answer or a closed connection, never a panic.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Size of the non-streamed speech reply.
const SPEECH_BYTES: usize = 32 * 1024;
/// Size of each streamed speech chunk.
const CHUNK_BYTES: usize = 4 * 1024;
/// Bounds on what a `stream=` query may ask for, so a request cannot hold a task forever.
const MAX_CHUNKS: u32 = 1000;
const MAX_DELAY_MS: u64 = 10_000;

type ReplyBody = UnsyncBoxBody<Bytes, Infallible>;

/// What the upstream answers with; built once and shared (a `Bytes` clone copies nothing).
#[derive(Clone)]
struct Payloads {
    speech: Bytes,
    chunk: Bytes,
}

impl Payloads {
    fn new() -> Payloads {
        // A sawtooth, so the bytes are not all alike (compression would see through zeros).
        let wave = |len: usize| -> Bytes { (0..len).map(|i| (i % 251) as u8).collect() };
        Payloads {
            speech: wave(SPEECH_BYTES),
            chunk: wave(CHUNK_BYTES),
        }
    }
}

/// `stream=NxDms` from a query string: N chunks, D ms apart.
fn stream_spec(query: Option<&str>) -> Option<(u32, Duration)> {
    let value = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("stream="))?;
    let (count, delay) = value.split_once('x')?;
    let count: u32 = count.parse().ok()?;
    let delay: u64 = delay.strip_suffix("ms")?.parse().ok()?;
    (1..=MAX_CHUNKS)
        .contains(&count)
        .then_some((count, Duration::from_millis(delay.min(MAX_DELAY_MS))))
}

fn full(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<ReplyBody> {
    let mut response = Response::new(Full::new(body).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

/// N chunks, the first at once, each next one `delay` after the one before.
fn chunked(chunk: Bytes, count: u32, delay: Duration) -> Response<ReplyBody> {
    let frames = futures_util::stream::unfold(0u32, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent == count {
                return None;
            }
            if sent > 0 {
                tokio::time::sleep(delay).await;
            }
            Some((Ok::<_, Infallible>(Frame::data(chunk)), sent + 1))
        }
    });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("audio/pcm"),
    );
    response
}

/// Reads the request body to its end, keeping nothing; `None` if it broke.
async fn drain(mut body: Incoming) -> Option<u64> {
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            total += data.len() as u64;
        }
    }
    Some(total)
}

fn unavailable() -> Response<ReplyBody> {
    full(
        StatusCode::SERVICE_UNAVAILABLE,
        "application/json",
        Bytes::from_static(br#"{"error":{"message":"overloaded","type":"server_error"}}"#),
    )
}

async fn answer(
    request: Request<Incoming>,
    payloads: Payloads,
    always_503: bool,
) -> Result<Response<ReplyBody>, std::io::Error> {
    let (parts, body) = request.into_parts();
    // Read every body to its end first, so the connection stays usable for the next request.
    // A body that breaks ends the connection: there is nobody to answer.
    drain(body)
        .await
        .ok_or_else(|| std::io::Error::other("request body broke"))?;
    if always_503 || parts.uri.path().starts_with("/503/") {
        return Ok(unavailable());
    }
    let path = parts.uri.path();
    let response = match (&parts.method, path) {
        (&Method::GET, "/health") => full(StatusCode::OK, "text/plain", Bytes::from_static(b"ok")),
        (&Method::POST, p) if p.ends_with("/v1/audio/speech") => {
            match stream_spec(parts.uri.query()) {
                Some((count, delay)) => chunked(payloads.chunk.clone(), count, delay),
                None => full(StatusCode::OK, "audio/pcm", payloads.speech.clone()),
            }
        }
        (&Method::POST, p)
            if p.ends_with("/v1/audio/transcriptions") || p.ends_with("/v1/audio/translations") =>
        {
            full(
                StatusCode::OK,
                "application/json",
                Bytes::from_static(br#"{"text":"ok"}"#),
            )
        }
        _ => full(
            StatusCode::NOT_FOUND,
            "text/plain",
            Bytes::from_static(b"not found"),
        ),
    };
    Ok(response)
}

async fn serve(listener: TcpListener, payloads: Payloads, always_503: bool) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                eprintln!("bench_upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let payloads = payloads.clone();
        let service = service_fn(move |request| answer(request, payloads.clone(), always_503));
        tokio::spawn(async move {
            // Clients that leave mid-stream end here; that is part of the benchmark.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn bind(arg: Option<String>) -> std::io::Result<TcpListener> {
    let addr: SocketAddr = match arg {
        Some(a) => a
            .parse()
            .map_err(|e| std::io::Error::other(format!("bad address `{a}`: {e}")))?,
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    TcpListener::bind(addr).await
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let main_arg = args.next();
    let arg_503 = args.next();
    let payloads = Payloads::new();

    let listener = bind(main_arg).await?;
    println!("listening http://{}", listener.local_addr()?);
    let listener_503 = match arg_503 {
        Some(a) => {
            let l = bind(Some(a)).await?;
            println!("listening-503 http://{}", l.local_addr()?);
            Some(l)
        }
        None => None,
    };
    // Whoever started us reads the addresses from a pipe: do not leave them in a buffer.
    use std::io::Write;
    std::io::stdout().flush()?;

    if let Some(l) = listener_503 {
        tokio::spawn(serve(l, payloads.clone(), true));
    }
    serve(listener, payloads, false).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_queries_are_parsed_and_bounded() {
        assert_eq!(
            stream_spec(Some("stream=10x50ms")),
            Some((10, Duration::from_millis(50)))
        );
        assert_eq!(
            stream_spec(Some("a=b&stream=3x0ms")),
            Some((3, Duration::ZERO))
        );
        assert_eq!(stream_spec(Some("stream=0x50ms")), None);
        assert_eq!(stream_spec(Some("stream=10x50")), None);
        assert_eq!(stream_spec(Some("stream=x")), None);
        assert_eq!(stream_spec(None), None);
        assert_eq!(
            stream_spec(Some("stream=2x99999999ms")),
            Some((2, Duration::from_millis(MAX_DELAY_MS)))
        );
    }
}
