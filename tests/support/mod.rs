//! Test support: scripted upstreams and a voxgate instance, all on 127.0.0.1:0.
//!
//! A [`Scripted`] upstream records every request it receives (method, path, headers, whole
//! body) and counts the connections made to it, and answers each request as its script
//! says: a full response, chunks with delays, a hang, a reset before headers, or a reset in
//! the middle of the body.
//!
//! Every socket the tests open has Nagle's algorithm off, as voxgate's own do. Tests that
//! wait on timeouts run on a paused clock (`#[tokio::test(start_paused = true)]`), and
//! tokio then jumps the clock to the next timer whenever the runtime has nothing to do.
//! With Nagle on, the kernel may hold a small write back until the peer's delayed ACK (40
//! ms of real time): the runtime idles meanwhile, the clock jumps, and a timeout fires
//! before bytes that were already sent arrive.
#![allow(dead_code)]

pub mod daemon;
pub mod engines;
pub mod logs;
pub mod pki;
pub mod redis;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{channel::Channel, combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use voxgate::config::Config;
use voxgate::gateway::Gateway;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

/// A request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("upstream received JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How a scripted upstream answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Full {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Bytes,
    },
    /// A chunked body, one chunk per `delay`, the first one after `delay` too.
    Chunks {
        status: u16,
        content_type: &'static str,
        chunks: Vec<Bytes>,
        delay: Duration,
    },
    /// Sends `chunks`, then breaks the connection mid-body.
    ChunksThenReset { chunks: Vec<Bytes>, delay: Duration },
    /// Sends `chunks` at once, then nothing more, holding the connection open.
    ChunksThenStall { chunks: Vec<Bytes> },
    /// Answers `reply`, but only after `after`.
    Late { after: Duration, reply: Box<Reply> },
    /// Reads the request, then never answers.
    Hang,
    /// Reads the request, then closes the connection without a response.
    Close,
}

impl Reply {
    pub fn ok(content_type: &str, body: impl Into<Bytes>) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![("content-type", content_type.to_string())],
            body: body.into(),
        }
    }

    pub fn json(status: u16, value: serde_json::Value) -> Reply {
        Reply::Full {
            status,
            headers: vec![("content-type", "application/json".to_string())],
            body: Bytes::from(value.to_string()),
        }
    }

    pub fn status(status: u16) -> Reply {
        Reply::json(
            status,
            serde_json::json!({"error": {"message": format!("scripted {status}"), "type": "server_error"}}),
        )
    }
}

type Script = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

/// An in-process upstream on 127.0.0.1:0.
pub struct Scripted {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    /// Dropping it stops the server: no more accepts, open connections closed.
    _stop: watch::Sender<()>,
}

impl Scripted {
    pub async fn start(script: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> Scripted {
        Scripted::start_on("127.0.0.1:0".parse().unwrap(), script).await
    }

    /// Starts on a given address: a restart of a server that was dropped.
    pub async fn start_on(
        addr: SocketAddr,
        script: impl Fn(&Received) -> Reply + Send + Sync + 'static,
    ) -> Scripted {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let script: Script = Arc::new(script);
        let (stop, stopped) = watch::channel(());
        let closed = Arc::new(AtomicUsize::new(0));
        let (rec, conns, ended) = (received.clone(), connections.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let mut stop_accepting = stopped.clone();
                let (stream, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    _ = stop_accepting.changed() => return,
                };
                let _ = stream.set_nodelay(true);
                conns.fetch_add(1, Ordering::SeqCst);
                let (script, rec, ended) = (script.clone(), rec.clone(), ended.clone());
                let mut stop_serving = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (script, rec) = (script.clone(), rec.clone());
                        async move { answer(req, script, rec).await }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = stop_serving.changed() => {}
                    }
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Scripted {
            addr,
            received,
            connections,
            closed,
            _stop: stop,
        }
    }

    /// Always answers with `reply`.
    pub async fn always(reply: Reply) -> Scripted {
        Scripted::start(move |_| reply.clone()).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn last(&self) -> Received {
        self.received().pop().expect("upstream received a request")
    }

    /// The last request for `path`: an upstream with health checks also gets GETs of its
    /// health path, at any time, so its last request may be one of those.
    pub fn last_to(&self, path: &str) -> Received {
        self.received()
            .into_iter()
            .rev()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("upstream received no request for {path}"))
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections that have ended, from either side.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}

async fn answer(
    req: Request<Incoming>,
    script: Script,
    received: Arc<Mutex<Vec<Received>>>,
) -> Result<Response<TestBody>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let got = Received {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
    };
    let mut reply = script(&got);
    received.lock().unwrap().push(got);
    while let Reply::Late {
        after,
        reply: inner,
    } = reply
    {
        tokio::time::sleep(after).await;
        reply = *inner;
    }
    match reply {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let mut r = Response::new(Full::new(body).map_err(|n| match n {}).boxed());
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            for (k, v) in headers {
                r.headers_mut()
                    .insert(k, HeaderValue::from_str(&v).unwrap());
            }
            Ok(r)
        }
        Reply::Chunks {
            status,
            content_type,
            chunks,
            delay,
        } => Ok(streamed(status, content_type, chunks, delay, false)),
        Reply::ChunksThenReset { chunks, delay } => {
            Ok(streamed(200, "audio/pcm", chunks, delay, true))
        }
        Reply::ChunksThenStall { chunks } => {
            let (mut sender, body) = Channel::<Bytes, BoxError>::new(chunks.len().max(1));
            for chunk in chunks {
                let _ = sender.try_send(Frame::data(chunk));
            }
            tokio::spawn(async move {
                // Hold the sender, so the body neither ends nor fails.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(sender);
            });
            let mut r = Response::new(BodyExt::boxed(body));
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("audio/pcm"));
            Ok(r)
        }
        Reply::Late { .. } => unreachable!("unwrapped above"),
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Err(std::io::Error::other("hung"))
        }
        Reply::Close => Err(std::io::Error::other("scripted close")),
    }
}

/// A response whose body a task writes chunk by chunk, optionally breaking off at the end.
fn streamed(
    status: u16,
    content_type: &'static str,
    chunks: Vec<Bytes>,
    delay: Duration,
    reset: bool,
) -> Response<TestBody> {
    let (mut sender, body) = Channel::<Bytes, BoxError>::new(1);
    tokio::spawn(async move {
        for chunk in chunks {
            tokio::time::sleep(delay).await;
            if sender.send_data(chunk).await.is_err() {
                return;
            }
        }
        if reset {
            tokio::time::sleep(delay).await;
            sender.abort(BoxError::from(std::io::Error::other("scripted reset")));
        }
    });
    let mut r = Response::new(BodyExt::boxed(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    r
}

/// An https server with a self-signed certificate for 127.0.0.1, which no client trusts
/// unless told to. After a handshake it answers every request with 200 `tls-ok`, naming
/// the HTTP version it was asked in (`x-version`).
pub struct TlsUpstream {
    pub addr: SocketAddr,
    /// The certificate, PEM: what a `ca_file` would hold.
    pub cert_pem: String,
    /// TCP connections accepted.
    pub accepted: Arc<AtomicUsize>,
}

pub async fn tls_upstream() -> TlsUpstream {
    tls_upstream_speaking(&[b"h2", b"http/1.1"]).await
}

/// The same, offering only these protocols in ALPN (`http/1.1` alone: a server without
/// HTTP/2).
pub async fn tls_upstream_speaking(protocols: &[&[u8]]) -> TlsUpstream {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return; // the client refused the certificate
                };
                let service = service_fn(|req: Request<Incoming>| async move {
                    let version = format!("{:?}", req.version());
                    let _ = req.into_body().collect().await;
                    let mut r = Response::new(Full::new(Bytes::from_static(b"tls-ok")));
                    r.headers_mut()
                        .insert("x-version", HeaderValue::from_str(&version).unwrap());
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    TlsUpstream {
        addr,
        cert_pem: cert.cert.pem(),
        accepted,
    }
}

/// An address where nothing listens: connections are refused. The port stays bound (but
/// never listening) for the rest of the test process, so no server started later, by this
/// test or one running beside it, can be given the same port.
pub async fn refused_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    addr
}

/// A voxgate instance on 127.0.0.1:0.
pub struct Proxy {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(toml: &str) -> Proxy {
        let config = Config::from_toml(toml, "test.toml").unwrap_or_else(|e| panic!("{e}"));
        Proxy::start_with(config).await
    }

    pub async fn start_with(config: Config) -> Proxy {
        Proxy::serve(Arc::new(Gateway::new(config))).await
    }

    /// A voxgate on the config file at `path`, which `gateway.reload(…)` reads again.
    pub async fn start_from_file(path: &std::path::Path) -> Proxy {
        let config = Config::load(path).unwrap_or_else(|e| panic!("{e}"));
        let source = voxgate::gateway::reload::Source {
            path: Some(path.to_path_buf()),
            listen: None,
        };
        Proxy::serve(Arc::new(Gateway::from_source(config, source))).await
    }

    async fn serve(gateway: Arc<Gateway>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(voxgate::server::run(listener, gateway.clone(), async {
            let _ = stopped.await;
        }));
        Proxy {
            addr,
            gateway,
            stop: Some(stop),
            done: Some(done),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Starts the graceful shutdown; the returned future ends when the server has stopped.
    pub fn shutdown(&mut self) -> impl Future<Output = ()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let done = self.done.take();
        async move {
            if let Some(done) = done {
                let _ = done.await;
            }
        }
    }
}

/// A config with one upstream `a` (plus `extra` keys for it) that takes every request.
pub fn single_upstream(url: &str, extra: &str) -> String {
    format!("[upstreams.a]\nurl = \"{url}\"\n{extra}\n[[routes]]\nto = [\"a\"]\n")
}

/// One upstream `a` of `kind` taking every request, with its health check off (each test
/// decides what is up) and `extra` keys.
pub fn single_of_kind(kind: &str, url: &str, extra: &str) -> String {
    single_upstream(
        url,
        &format!("kind = \"{kind}\"\nhealth = {{ enabled = false }}\n{extra}"),
    )
}

/// A plain HTTP client for tests.
pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(connector())
}

/// The connector of test clients: plain HTTP, Nagle off.
pub fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector
}

/// A raw TCP connection, Nagle off.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

pub fn full_body(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|n| match n {}).boxed()
}

/// A body sent chunked, without Content-Length, in the given pieces.
pub fn chunked_body(pieces: Vec<Bytes>) -> TestBody {
    BodyExt::boxed(StreamBody::new(stream::iter(
        pieces.into_iter().map(|p| Ok(Frame::data(p))),
    )))
}

/// A collected response.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The OpenAI error message, asserting the error shape on the way.
    pub fn error_message(&self) -> String {
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string(), "no error.message in {v}");
        assert!(e["type"].is_string(), "no error.type in {v}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
        e["message"].as_str().unwrap().to_string()
    }
}

pub async fn send(req: Request<TestBody>) -> Answer {
    let response = tokio::time::timeout(Duration::from_secs(20), client().request(req))
        .await
        .expect("voxgate answered in time")
        .expect("request succeeded");
    let (parts, body) = response.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("body arrived in time")
        .expect("body complete")
        .to_bytes();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

pub fn post(url: &str, content_type: &str, body: TestBody) -> Request<TestBody> {
    Request::post(url)
        .header("content-type", content_type)
        .body(body)
        .unwrap()
}

pub fn speech_request(url: &str, json: serde_json::Value) -> Request<TestBody> {
    post(url, "application/json", full_body(json.to_string()))
}

pub const BOUNDARY: &str = "voxgate-test-boundary";

/// A multipart form; parts with a file name are files.
pub fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Bytes {
    let mut out = Vec::new();
    for (name, filename, value) in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match filename {
            Some(f) => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: audio/wav\r\n\r\n")
                    .as_bytes(),
            ),
            None => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    Bytes::from(out)
}

pub fn form_content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// Posts a whole multipart body to the proxy's transcriptions endpoint.
pub async fn transcribe(proxy: &Proxy, body: Bytes) -> Answer {
    send(post(
        &proxy.url("/v1/audio/transcriptions"),
        &form_content_type(),
        full_body(body),
    ))
    .await
}

/// Parses a multipart body as an upstream would (text parts as strings, files as bytes).
pub async fn parse_form(received: &Received) -> Vec<(String, Option<String>, Bytes)> {
    let ct = received.header("content-type").expect("content-type");
    let boundary = multer::parse_boundary(ct).expect("boundary");
    let body = received.body.clone();
    let mut m = multer::Multipart::new(
        stream::once(async move { Ok::<_, Infallible>(body) }),
        boundary,
    );
    let mut out = Vec::new();
    while let Some(field) = m.next_field().await.expect("well-formed multipart") {
        let name = field.name().unwrap_or_default().to_string();
        let file = field.file_name().map(str::to_string);
        out.push((name, file, field.bytes().await.unwrap()));
    }
    out
}

/// Deterministic pseudo-random bytes, so a truncated or reordered copy is noticed.
pub fn noise(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// Time since `start` in milliseconds: virtual time in a test that paused the clock.
pub fn ms(start: tokio::time::Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// A path inside the repository.
pub fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The built binary, without the environment variables voxgate reads (`VOXGATE_CONFIG`,
/// `RUST_LOG`), so that the test's own environment cannot change what it does.
pub fn voxgate_bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_voxgate"));
    c.env_remove("VOXGATE_CONFIG").env_remove("RUST_LOG");
    c
}

/// `voxgate check --config FILE`, run by `command` (the binary with its environment).
pub fn check_with(
    mut command: std::process::Command,
    file: &std::path::Path,
) -> std::process::Output {
    command
        .arg("check")
        .arg("--config")
        .arg(file)
        .output()
        .unwrap()
}

/// The `.toml` files in these folders of the repository, sorted.
pub fn tomls_in(dirs: &[&str]) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(repo(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// How a client script (an SDK scenario, the voice-mode driver) ended: its exit code, its
/// last stdout line as JSON, its stderr.
pub struct Outcome {
    pub code: Option<i32>,
    pub json: serde_json::Value,
    pub stderr: String,
}

impl Outcome {
    /// The script's result, asserting it succeeded.
    pub fn ok(self) -> serde_json::Value {
        assert_eq!(
            self.code,
            Some(0),
            "client failed: {}\n{}",
            self.json,
            self.stderr
        );
        self.json
    }
}

/// Runs a client script with stdin closed, without the proxy variables and `cleared`
/// ones, bounded by `limit`; its last stdout line must be JSON. `hint` says how to get
/// the script's interpreter when it cannot start.
pub async fn run_script(
    mut command: tokio::process::Command,
    cleared: &[&str],
    limit: Duration,
    hint: &str,
) -> Outcome {
    let proxies = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ];
    for var in proxies.iter().chain(cleared) {
        command.env_remove(var);
    }
    command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("client finished within {limit:?}"))
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}; {hint}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let last = stdout.lines().last().unwrap_or_default();
    let json = serde_json::from_str(last)
        .unwrap_or_else(|_| panic!("last stdout line is not JSON: {stdout:?}\n{stderr}"));
    Outcome {
        code: output.status.code(),
        json,
        stderr,
    }
}

/// The value of a sample line `name{labels} value` of `proxy`'s metrics page, 0 when absent.
pub async fn sample(proxy: &Proxy, series: &str) -> f64 {
    let page = send(
        Request::get(proxy.url("/metrics"))
            .body(full_body(""))
            .unwrap(),
    )
    .await;
    let text = String::from_utf8_lossy(&page.body).to_string();
    text.lines()
        .find_map(|line| {
            line.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}
