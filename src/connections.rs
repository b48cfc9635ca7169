//! Kept-alive connections to one upstream's endpoints, and sending a request over them.
//!
//! This replaces hyper-util's pooled client, which for every request hashes a pool key
//! (scheme and authority, SipHash) to check a connection out and again to put it back,
//! races the checkout against a connect, and spawns a task per streamed response to put
//! the connection back once it is ready: together about a tenth of the instructions of a
//! small proxied request (benches/README.md). Here each endpoint has its own list of idle
//! HTTP/1 connections (an index, no key), and a connection goes back on that list from
//! the response body itself, when the body ends. An https endpoint whose server agrees
//! to HTTP/2 (ALPN) gets one shared, multiplexed connection instead.
//!
//! Idle connections are closed after `keepalive_timeout`, by a sweep that runs while the
//! upstream exists. A server may close a kept connection just as a request goes out on it
//! (its own keep-alive timeout: uvicorn's is 5 s). When hyper has written nothing of the
//! request, it is sent again here on another connection; when it has, and the connection
//! closed before any response, [`SendError::Stale`] tells the caller to send it again on
//! a new connection (voxgate's requests are replayable: fallback sends them again too).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use crate::body::OutBody;

/// A request hyper could not even start on a kept connection (closed under it) is given
/// to another connection at most this many times.
const UNSENT_RETRIES: usize = 4;

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: nothing was sent.
    Connect(String),
    /// The connection failed after sending began, before the response headers.
    Reset(String),
    /// A kept connection closed before any response: most likely the server's keep-alive
    /// ran out as the request went out. Worth sending once more, on a new connection.
    Stale(String),
}

impl SendError {
    pub fn text(self) -> String {
        match self {
            SendError::Connect(e) | SendError::Reset(e) | SendError::Stale(e) => e,
        }
    }
}

/// Which connection a request may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reuse {
    /// A kept one if there is one ready, otherwise a new one.
    Kept,
    /// Always a new one (HTTP/2: the shared one, if it is up).
    Fresh,
}

/// The connections to one upstream's endpoints (in the order of its pool's endpoints).
pub struct Connections {
    connector: HttpsConnector<HttpConnector>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    keepalive: Duration,
    slots: Box<[Arc<Slot>]>,
}

/// One endpoint: where to connect, and its connections that wait for a request.
struct Slot {
    /// Scheme and authority only: what the connector is given.
    origin: Uri,
    scheme: Scheme,
    /// The Host header for HTTP/1 requests (`host` or `host:port`, as in the URL).
    host: HeaderValue,
    /// The URL's path, without its trailing `/`, put in front of every request path.
    prefix: String,
    /// Idle HTTP/1 connections, the most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connection, once the server has agreed to HTTP/2.
    shared: Mutex<Option<http2::SendRequest<OutBody>>>,
}

struct Idle {
    sender: http1::SendRequest<OutBody>,
    since: Instant,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every holder leaves the list whole before it could panic.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Slot {
    fn new(url: &Uri) -> Result<Slot, String> {
        let authority = url
            .authority()
            .ok_or_else(|| format!("`{url}` has no host"))?;
        let scheme = url.scheme().cloned().unwrap_or(Scheme::HTTP);
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| e.to_string())?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
        Ok(Slot {
            origin,
            scheme,
            host,
            prefix: url.path().trim_end_matches('/').to_string(),
            idle: Mutex::new(Vec::new()),
            shared: Mutex::new(None),
        })
    }

    /// The most recently used idle connection that is ready for a request; closed ones
    /// found on the way are dropped.
    fn take_idle(&self) -> Option<http1::SendRequest<OutBody>> {
        let mut idle = locked(&self.idle);
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].sender.is_ready() {
                return Some(idle.remove(i).sender);
            }
            if idle[i].sender.is_closed() {
                idle.remove(i);
            }
            // Otherwise it is still finishing its last exchange: left for later.
        }
        None
    }

    fn put_idle(&self, sender: http1::SendRequest<OutBody>) {
        if !sender.is_closed() {
            locked(&self.idle).push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    fn shared(&self) -> Option<http2::SendRequest<OutBody>> {
        let shared = locked(&self.shared);
        shared.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Closes what has been idle for `keepalive` or more, and forgets closed connections.
    fn sweep(&self, keepalive: Duration) {
        let now = Instant::now();
        locked(&self.idle).retain(|c| {
            !c.sender.is_closed() && now.saturating_duration_since(c.since) < keepalive
        });
        let mut shared = locked(&self.shared);
        if shared.as_ref().is_some_and(|s| s.is_closed()) {
            *shared = None;
        }
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        locked(&self.idle).len()
    }
}

/// A connection a request can go on.
enum Sender {
    H1(http1::SendRequest<OutBody>),
    H2(http2::SendRequest<OutBody>),
}

impl Connections {
    /// Connections for `endpoints`; an endpoint URL without a host is rejected at config
    /// load, so `Err` here names a bug, not a user's mistake.
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        endpoints: &[&Uri],
        keepalive: Duration,
    ) -> Result<Connections, String> {
        let slots = endpoints
            .iter()
            .map(|url| Slot::new(url).map(Arc::new))
            .collect::<Result<_, _>>()?;
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new());
        Ok(Connections {
            connector,
            h1: http1::Builder::new(),
            h2,
            keepalive,
            slots,
        })
    }

    /// Sweeps every endpoint's idle connections each `keepalive / 4` (at least every
    /// 50 ms) for as long as `connections` exists.
    pub async fn sweep_while_alive(connections: Weak<Connections>, keepalive: Duration) {
        let every = (keepalive / 4).max(Duration::from_millis(50));
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(connections) = connections.upgrade() else {
                return;
            };
            for slot in connections.slots.iter() {
                slot.sweep(connections.keepalive);
            }
        }
    }

    /// Sends `request` to endpoint `index`. The request's URI holds only the path and
    /// query (the endpoint's own path prefix is put in front here); `Host`, or the
    /// HTTP/2 scheme and authority, come from the endpoint.
    pub async fn send(
        &self,
        index: usize,
        path_and_query: &str,
        mut request: Request<OutBody>,
        reuse: Reuse,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let slot = self
            .slots
            .get(index)
            .ok_or_else(|| SendError::Connect(format!("no endpoint {index}")))?;
        let path = match slot.prefix.as_str() {
            "" => PathAndQuery::try_from(path_and_query),
            prefix => PathAndQuery::try_from(format!("{prefix}{path_and_query}")),
        }
        .map_err(|e| SendError::Connect(format!("cannot build the upstream URL: {e}")))?;
        let mut unsent = 0;
        loop {
            let (sender, reused) = self.checkout(slot, reuse).await?;
            let sent = match sender {
                Sender::H1(mut sender) => {
                    *request.uri_mut() = Uri::from(path.clone());
                    request
                        .headers_mut()
                        .insert(header::HOST, slot.host.clone());
                    let sent = sender.try_send_request(request).await;
                    sent.map(|response| {
                        let recycle = Recycle {
                            sender,
                            slot: slot.clone(),
                        };
                        response.map(|body| UpstreamBody::new(body, recycle))
                    })
                }
                Sender::H2(mut sender) => {
                    let mut parts = http::uri::Parts::default();
                    parts.scheme = Some(slot.scheme.clone());
                    parts.authority = slot.origin.authority().cloned();
                    parts.path_and_query = Some(path.clone());
                    *request.uri_mut() = Uri::from_parts(parts).map_err(|e| {
                        SendError::Connect(format!("cannot build the upstream URL: {e}"))
                    })?;
                    request.headers_mut().remove(header::HOST);
                    let sent = sender.try_send_request(request).await;
                    sent.map(|response| response.map(UpstreamBody::shared))
                }
            };
            match sent {
                Ok(response) => return Ok(response),
                Err(mut e) => match e.take_message() {
                    // Nothing was written: a kept connection closed under us.
                    Some(message) if reused && unsent < UNSENT_RETRIES => {
                        unsent += 1;
                        request = message;
                    }
                    _ => return Err(failed(e.error(), reused)),
                },
            }
        }
    }

    /// A connection to `slot`, and whether it was kept from an earlier request.
    async fn checkout(&self, slot: &Slot, reuse: Reuse) -> Result<(Sender, bool), SendError> {
        if let Some(shared) = slot.shared() {
            return Ok((Sender::H2(shared), reuse == Reuse::Kept));
        }
        if reuse == Reuse::Kept {
            if let Some(idle) = slot.take_idle() {
                return Ok((Sender::H1(idle), true));
            }
        }
        // Boxed: connecting (and a TLS handshake) is rare, and its state would otherwise
        // make every request's future bigger, to be moved on every poll of a new one.
        Box::pin(self.connect(slot))
            .await
            .map(|s| (s, false))
            .map_err(SendError::Connect)
    }

    async fn connect(&self, slot: &Slot) -> Result<Sender, String> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| describe(&*e))?;
        let io = connector
            .call(slot.origin.clone())
            .await
            .map_err(|e| describe(&*e))?;
        if io.connected().is_negotiated_h2() {
            let (mut sender, connection) = self.h2.handshake(io).await.map_err(|e| describe(&e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            sender.ready().await.map_err(|e| describe(&e))?;
            *locked(&slot.shared) = Some(sender.clone());
            Ok(Sender::H2(sender))
        } else {
            let (sender, connection) = self.h1.handshake(io).await.map_err(|e| describe(&e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            Ok(Sender::H1(sender))
        }
    }

    #[cfg(test)]
    fn idle_count(&self, index: usize) -> usize {
        self.slots[index].idle_count()
    }
}

/// A send that failed once the request was handed to hyper.
fn failed(e: &hyper::Error, reused: bool) -> SendError {
    if reused && (e.is_incomplete_message() || e.is_canceled()) {
        SendError::Stale(describe(e))
    } else {
        SendError::Reset(describe(e))
    }
}

/// An error's message with its causes, which carry the useful part.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// An HTTP/1 connection to put back when its response has been read to the end.
struct Recycle {
    sender: http1::SendRequest<OutBody>,
    slot: Arc<Slot>,
}

/// An upstream's response body. Read to its end, it puts its HTTP/1 connection back on
/// the idle list; dropped before that, the connection is closed with it (hyper cannot
/// reuse a connection with an unread response on it).
pub struct UpstreamBody {
    inner: Incoming,
    recycle: Option<Recycle>,
}

impl UpstreamBody {
    fn new(inner: Incoming, recycle: Recycle) -> UpstreamBody {
        let mut body = UpstreamBody {
            inner,
            recycle: Some(recycle),
        };
        // No body at all (204, 304, a HEAD answer): nothing will poll for its end.
        if body.inner.is_end_stream() {
            body.put_back();
        }
        body
    }

    fn shared(inner: Incoming) -> UpstreamBody {
        UpstreamBody {
            inner,
            recycle: None,
        }
    }

    fn put_back(&mut self) {
        if let Some(Recycle { sender, slot }) = self.recycle.take() {
            slot.put_idle(sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.put_back(),
            // Readers stop at is_end_stream, without polling for the None.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.put_back(),
            Poll::Ready(Some(Err(_))) => this.recycle = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn connections(url: &Uri, keepalive: Duration) -> Connections {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Connections::new(https, &[url], keepalive).unwrap()
    }

    /// A server that answers every request on a connection with `reply` and counts
    /// the connections it accepted.
    async fn server(reply: &'static str) -> (Uri, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: Uri = format!("http://{}/prefix/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = socket.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            buf.drain(..end + 4);
                            let answer = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-head: {}\r\n\r\n{reply}",
                                reply.len(),
                                head.replace("\r\n", "|")
                            );
                            if socket.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    fn get() -> Request<OutBody> {
        Request::new(OutBody::new(Vec::new()))
    }

    async fn read(response: Response<UpstreamBody>) -> (String, String) {
        let head = response.headers()["x-head"].to_str().unwrap().to_string();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (head, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_connection_read_to_the_end_is_used_again() {
        let (url, accepted) = server("hello").await;
        let c = connections(&url, Duration::from_secs(60));
        for _ in 0..5 {
            let response = c.send(0, "/v1/x?q=1", get(), Reuse::Kept).await.unwrap();
            let (head, body) = read(response).await;
            assert_eq!(body, "hello");
            assert!(head.starts_with("GET /prefix/v1/x?q=1 HTTP/1.1|"), "{head}");
            let host = format!("host: {}", url.authority().unwrap());
            assert!(head.contains(&host), "{head}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(c.idle_count(0), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_takes_its_connection_with_it() {
        let (url, accepted) = server("hello").await;
        let c = connections(&url, Duration::from_secs(60));
        for _ in 0..3 {
            drop(c.send(0, "/", get(), Reuse::Kept).await.unwrap());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(c.idle_count(0), 0);
    }

    /// A server on its own thread that answers one request per connection with `ok`,
    /// then closes the connection 30 ms later without a word, as a server's keep-alive
    /// timeout does; counts the connections it accepted. Takes two connections.
    pub(crate) fn closing_server() -> (Uri, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for socket in listener.incoming().take(2) {
                let Ok(mut socket) = socket else { return };
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf);
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-head: -\r\n\r\nok";
                let _ = socket.write_all(answer);
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        (url, accepted)
    }

    /// The race a kept connection can lose: the server closes it while it is idle, and
    /// the next request takes it before the close has been seen. The runtime is held
    /// (a blocking sleep) while the server closes, so the close is seen only once the
    /// request is already on its way: that is reported as stale, for the caller to send
    /// again on a fresh connection.
    #[tokio::test]
    async fn a_kept_connection_closed_as_the_request_goes_out_is_stale() {
        let (url, accepted) = closing_server();
        let c = connections(&url, Duration::from_secs(60));
        let (_, body) = read(c.send(0, "/", get(), Reuse::Kept).await.unwrap()).await;
        assert_eq!(body, "ok");
        std::thread::sleep(Duration::from_millis(150));
        match c.send(0, "/", get(), Reuse::Kept).await {
            Err(SendError::Stale(_)) => {}
            other => panic!("{:?}", other.map(|r| r.status())),
        }
        let (_, body) = read(c.send(0, "/", get(), Reuse::Fresh).await.unwrap()).await;
        assert_eq!(body, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_keepalive_timeout() {
        let (url, _) = server("hello").await;
        let c = Arc::new(connections(&url, Duration::from_millis(200)));
        tokio::spawn(Connections::sweep_while_alive(
            Arc::downgrade(&c),
            Duration::from_millis(200),
        ));
        read(c.send(0, "/", get(), Reuse::Kept).await.unwrap()).await;
        assert_eq!(c.idle_count(0), 1);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(c.idle_count(0), 0);
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(listener);
        let c = connections(&url, Duration::from_secs(60));
        match c.send(0, "/", get(), Reuse::Kept).await {
            Err(SendError::Connect(text)) => assert!(text.contains("refused"), "{text}"),
            other => panic!("{:?}", other.map(|r| r.status())),
        }
    }
}
