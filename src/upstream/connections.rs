//! Kept-alive connections to one upstream's endpoints, and sending a request over them.
//!
//! This replaces hyper-util's pooled client, which for every request hashes a pool key
//! (scheme and authority, SipHash) to check a connection out and again to put it back,
//! races the checkout against a connect, and spawns a task per streamed response to put
//! the connection back once it is ready: together about a tenth of the instructions of a
//! small proxied request (benches/README.md). Here each endpoint has its own list of idle
//! HTTP/1 connections (an index, no key), and a connection goes back on that list from
//! the response body itself, when the body ends. HTTP/1 exchanges are voxgate's own
//! ([`crate::upstream::h1`]), run by the request's task; an https endpoint whose server agrees to
//! HTTP/2 (ALPN) gets one shared, multiplexed hyper connection instead.
//!
//! Idle connections are closed after `keepalive_timeout`, by a sweep that runs while the
//! upstream exists; one the server closed is dropped when the sweep or a checkout sees
//! it. A server may also close a kept connection just as a request goes out on it (its
//! own keep-alive timeout: uvicorn's is 5 s). When the connection closed before any byte
//! of an answer, the request is sent once more, on a new connection (voxgate's requests
//! are replayable: fallback sends them again too).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tower_service::Service;

use crate::request::outgoing::{OutBody, Segment};
use crate::upstream::error::{ErrorKind, UpstreamError};
use crate::upstream::h1::{self, Conn, Decoder, ExchangeError, HeaderSource, SendFile};

/// An upstream connection's byte stream: TCP, or TLS over TCP.
type Io = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// A plain connection takes spilled request bytes with `sendfile`; over TLS they are read
/// and encrypted.
impl SendFile for Io {
    fn plain_tcp(&self) -> Option<&TcpStream> {
        match self.inner() {
            MaybeHttpsStream::Http(tcp) => Some(tcp.inner()),
            MaybeHttpsStream::Https(_) => None,
        }
    }
}

/// A kept HTTP/1 connection. Boxed: with its TLS state inline it is over a kilobyte,
/// and it moves from the idle list to a request to its response body and back.
type H1 = Box<Conn<Io>>;

/// Which connection a request may take.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reuse {
    /// A kept one if there is one ready, otherwise a new one.
    Kept,
    /// Always a new one (HTTP/2: the shared one, if it is up).
    Fresh,
}

/// A request to send: the path, query and method from the client's request, the headers
/// to send (each given to the callback; not Host, not framing: those come from here),
/// and the body, which is made again if the request has to be sent again.
pub struct UpstreamRequest<'a> {
    pub method: &'a Method,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderSource<'a>,
    pub body: &'a (dyn Fn() -> Vec<Segment> + Sync),
}

/// The connections to one upstream's endpoints (in the order of its pool's endpoints).
pub struct Connections {
    connector: HttpsConnector<HttpConnector>,
    h2: http2::Builder<TokioExecutor>,
    keepalive: Duration,
    slots: Box<[Arc<Slot>]>,
}

/// The part of an endpoint URL put in front of every request path: its path, without
/// its trailing `/`.
pub fn path_prefix(url: &Uri) -> &str {
    url.path().trim_end_matches('/')
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
    conn: H1,
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
            prefix: path_prefix(url).to_string(),
            idle: Mutex::new(Vec::new()),
            shared: Mutex::new(None),
        })
    }

    /// The most recently used idle connection that is still open; closed ones found on
    /// the way are dropped. (Checked outside the lock: the check may read the socket.)
    fn take_idle(&self) -> Option<H1> {
        loop {
            let mut idle = locked(&self.idle).pop()?;
            if idle.conn.is_open() {
                return Some(idle.conn);
            }
        }
    }

    fn put_idle(&self, conn: H1) {
        locked(&self.idle).push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    fn shared(&self) -> Option<http2::SendRequest<OutBody>> {
        let shared = locked(&self.shared);
        shared.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Closes what has been idle for `keepalive` or more, and what the server closed.
    fn sweep(&self, keepalive: Duration) {
        let now = Instant::now();
        locked(&self.idle)
            .retain_mut(|c| now.saturating_duration_since(c.since) < keepalive && c.conn.is_open());
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
    H1(H1),
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

    /// Sends `request` to endpoint `index`, on a kept connection if one is open; if that
    /// connection turns out to have been closed before any answer, once more on a new
    /// one. The endpoint's own path prefix is put in front of the request's path;
    /// `Host`, or the HTTP/2 scheme and authority, come from the endpoint.
    pub async fn send(
        &self,
        index: usize,
        request: &UpstreamRequest<'_>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let slot = self.slots.get(index).ok_or_else(|| {
            UpstreamError::new(ErrorKind::Internal, format!("no endpoint {index}"))
        })?;
        match self.send_once(slot, request, Reuse::Kept).await {
            // Boxed: rare, and it would double the size of every request's future.
            Err(e) if e.kind() == ErrorKind::Stale => {
                Box::pin(self.send_once(slot, request, Reuse::Fresh)).await
            }
            other => other,
        }
    }

    async fn send_once(
        &self,
        slot: &Arc<Slot>,
        request: &UpstreamRequest<'_>,
        reuse: Reuse,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        if !h1::is_request_target(request.path_and_query) {
            return Err(UpstreamError::new(
                ErrorKind::Internal,
                format!(
                    "cannot build the upstream URL from `{}`",
                    request.path_and_query.escape_debug()
                ),
            ));
        }
        let (sender, reused) = self.checkout(slot, reuse).await?;
        let segments = (request.body)();
        let len = segments.iter().map(Segment::len).sum();
        match sender {
            Sender::H1(mut conn) => {
                let head = h1::request_head(
                    request.method,
                    &slot.prefix,
                    request.path_and_query,
                    slot.host.as_bytes(),
                    request.headers,
                    len,
                );
                let head_request = *request.method == Method::HEAD;
                match conn.exchange(head, segments, head_request).await {
                    Ok(answer) => {
                        let home = answer.reusable.then(|| slot.clone());
                        let body = UpstreamBody::h1(conn, answer.decoder, home);
                        let mut response = Response::new(body);
                        *response.status_mut() = answer.status;
                        *response.version_mut() = answer.version;
                        *response.headers_mut() = answer.headers;
                        Ok(response)
                    }
                    Err(e) => Err(exchange_failed(e, reused)),
                }
            }
            Sender::H2(mut sender) => {
                let path =
                    PathAndQuery::try_from(format!("{}{}", slot.prefix, request.path_and_query))
                        .map_err(|e| unbuildable(&e))?;
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(slot.scheme.clone());
                parts.authority = slot.origin.authority().cloned();
                parts.path_and_query = Some(path);
                let uri = Uri::from_parts(parts).map_err(|e| unbuildable(&e))?;
                let mut headers = HeaderMap::new();
                (request.headers)(&mut |name, value| {
                    headers.append(name.clone(), value.clone());
                });
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
                let mut outgoing = http::Request::new(OutBody::new(segments));
                *outgoing.method_mut() = request.method.clone();
                *outgoing.uri_mut() = uri;
                *outgoing.headers_mut() = headers;
                match sender.try_send_request(outgoing).await {
                    Ok(response) => Ok(response.map(UpstreamBody::h2)),
                    // Nothing was written: the shared connection closed under us.
                    Err(e) if reused && e.message().is_some() => {
                        Err(UpstreamError::caused_by(ErrorKind::Stale, e.into_error()))
                    }
                    Err(e) => Err(h2_failed(e.into_error(), reused)),
                }
            }
        }
    }

    /// A connection to `slot`, and whether it was kept from an earlier request.
    async fn checkout(&self, slot: &Slot, reuse: Reuse) -> Result<(Sender, bool), UpstreamError> {
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
        Box::pin(self.connect(slot)).await.map(|s| (s, false))
    }

    async fn connect(&self, slot: &Slot) -> Result<Sender, UpstreamError> {
        let refused = |e| UpstreamError::caused_by(ErrorKind::Connect, e);
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(refused)?;
        let io = connector.call(slot.origin.clone()).await.map_err(refused)?;
        if io.connected().is_negotiated_h2() {
            let handshake = |e| UpstreamError::caused_by(ErrorKind::Connect, e);
            let (mut sender, connection) = self.h2.handshake(io).await.map_err(handshake)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            sender.ready().await.map_err(handshake)?;
            *locked(&slot.shared) = Some(sender.clone());
            Ok(Sender::H2(sender))
        } else {
            Ok(Sender::H1(Box::new(Conn::new(TokioIo::new(io)))))
        }
    }

    #[cfg(test)]
    fn idle_count(&self, index: usize) -> usize {
        self.slots[index].idle_count()
    }
}

/// An HTTP/1 exchange that failed, as an upstream error.
fn exchange_failed(e: ExchangeError, reused: bool) -> UpstreamError {
    let kind = match &e {
        ExchangeError::Unanswered(_) if reused => ErrorKind::Stale,
        ExchangeError::Unanswered(_) | ExchangeError::Broken(_) => ErrorKind::Reset,
        ExchangeError::Invalid(_) => ErrorKind::Protocol,
        ExchangeError::Local(_) => ErrorKind::Internal,
    };
    UpstreamError::new(kind, e.to_string())
}

/// An HTTP/2 send that failed once the request was handed to hyper.
fn h2_failed(e: hyper::Error, reused: bool) -> UpstreamError {
    let kind = if reused && (e.is_incomplete_message() || e.is_canceled()) {
        ErrorKind::Stale
    } else if e.is_parse() {
        ErrorKind::Protocol
    } else {
        ErrorKind::Reset
    };
    UpstreamError::caused_by(kind, e)
}

/// A request target that the endpoint's URL and the client's path do not make a URL of.
fn unbuildable(e: &dyn std::fmt::Display) -> UpstreamError {
    UpstreamError::new(
        ErrorKind::Internal,
        format!("cannot build the upstream URL: {e}"),
    )
}

/// An upstream's response body. An HTTP/1 body read to its end puts its connection back
/// on the idle list (when the exchange left it fit to carry another request); dropped
/// before that, the connection is closed with it.
pub struct UpstreamBody(Source);

enum Source {
    H1 {
        /// `None` once the body has ended or failed.
        conn: Option<H1>,
        decoder: Decoder,
        /// Where the connection goes back to; `None` if it cannot be kept.
        home: Option<Arc<Slot>>,
    },
    H2(Incoming),
}

impl UpstreamBody {
    fn h1(conn: H1, decoder: Decoder, home: Option<Arc<Slot>>) -> UpstreamBody {
        let mut body = UpstreamBody(Source::H1 {
            conn: Some(conn),
            decoder,
            home,
        });
        // No body at all (204, 304, a HEAD answer): nothing will poll for its end.
        if decoder.is_done() {
            body.finish();
        }
        body
    }

    fn h2(inner: Incoming) -> UpstreamBody {
        UpstreamBody(Source::H2(inner))
    }

    /// The body has ended: the connection goes back if it can carry another request.
    fn finish(&mut self) {
        if let Source::H1 { conn, home, .. } = &mut self.0 {
            if let (Some(conn), Some(home)) = (conn.take(), home.take()) {
                if conn.is_clean() {
                    home.put_idle(conn);
                }
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        match &mut this.0 {
            Source::H2(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map_err(std::io::Error::other),
            Source::H1 { conn, decoder, .. } => {
                let Some(live) = conn else {
                    return Poll::Ready(None);
                };
                match live.poll_data(decoder, cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Some(Ok(data))) => {
                        // Readers stop at is_end_stream, without polling for the end.
                        if decoder.is_done() {
                            this.finish();
                        }
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Poll::Ready(None) => {
                        this.finish();
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Err(e))) => {
                        *conn = None;
                        Poll::Ready(Some(Err(e)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Source::H1 { decoder, .. } => decoder.is_done(),
            Source::H2(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Source::H1 { decoder, .. } => match decoder.exact_len() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
            Source::H2(inner) => inner.size_hint(),
        }
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

    /// A GET of `path`, sent once, on a kept connection or not as `reuse` says.
    async fn get(
        c: &Connections,
        path: &str,
        reuse: Reuse,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let request = UpstreamRequest {
            method: &Method::GET,
            path_and_query: path,
            headers: &|_| {},
            body: &Vec::new,
        };
        c.send_once(&c.slots[0], &request, reuse).await
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
            let response = get(&c, "/v1/x?q=1", Reuse::Kept).await.unwrap();
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
            drop(get(&c, "/", Reuse::Kept).await.unwrap());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(c.idle_count(0), 0);
    }

    /// A listener for a server on a thread of its own, and its URL.
    fn blocking_listener() -> (std::net::TcpListener, Uri) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        (listener, url)
    }

    /// A server on its own thread that answers the first request on a connection with
    /// `ok`, and closes the connection without a word when the next one arrives, as a
    /// server whose keep-alive timeout ran out just then does; counts the connections it
    /// accepted. Takes two connections.
    pub(crate) fn closing_server() -> (Uri, Arc<AtomicUsize>) {
        let (listener, url) = blocking_listener();
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
                let _ = socket.read(&mut buf);
            }
        });
        (url, accepted)
    }

    /// The race a kept connection can lose: the server closes it just as the next
    /// request arrives on it. That is reported as stale, for the caller to send again on
    /// a fresh connection.
    #[tokio::test]
    async fn a_kept_connection_closed_as_the_request_goes_out_is_stale() {
        let (url, accepted) = closing_server();
        let c = connections(&url, Duration::from_secs(60));
        let (_, body) = read(get(&c, "/", Reuse::Kept).await.unwrap()).await;
        assert_eq!(body, "ok");
        match get(&c, "/", Reuse::Kept).await {
            Err(e) if e.kind() == ErrorKind::Stale => {}
            other => panic!("{:?}", other.map(|r| r.status())),
        }
        let (_, body) = read(get(&c, "/", Reuse::Fresh).await.unwrap()).await;
        assert_eq!(body, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// A kept connection the server has closed while it was idle is not used: the
    /// request goes on a new one, and nothing is reported.
    #[tokio::test]
    async fn a_kept_connection_seen_closed_is_not_used() {
        let (listener, url) = blocking_listener();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for socket in listener.incoming().take(2) {
                let Ok(mut socket) = socket else { return };
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf);
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-head: -\r\n\r\nok");
                // Closed while idle.
            }
        });
        let c = connections(&url, Duration::from_secs(60));
        read(get(&c, "/", Reuse::Kept).await.unwrap()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, body) = read(get(&c, "/", Reuse::Kept).await.unwrap()).await;
        assert_eq!(body, "ok");
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_keepalive_timeout() {
        let (url, _) = server("hello").await;
        let c = Arc::new(connections(&url, Duration::from_millis(200)));
        tokio::spawn(Connections::sweep_while_alive(
            Arc::downgrade(&c),
            Duration::from_millis(200),
        ));
        read(get(&c, "/", Reuse::Kept).await.unwrap()).await;
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
        match get(&c, "/", Reuse::Kept).await {
            Err(e) if e.kind() == ErrorKind::Connect => {
                assert!(e.message().contains("refused"), "{e}")
            }
            other => panic!("{:?}", other.map(|r| r.status())),
        }
    }

    /// A request voxgate cannot put on the wire is its own failure: not a connect
    /// failure (which falls back), and nothing reaches the upstream.
    #[tokio::test]
    async fn a_request_target_that_cannot_be_sent_is_an_internal_failure() {
        let (url, accepted) = closing_server();
        let c = connections(&url, Duration::from_secs(60));
        match get(&c, "/in ference", Reuse::Kept).await {
            Err(e) if e.kind() == ErrorKind::Internal => {
                assert!(
                    e.to_string().contains("cannot build the upstream URL"),
                    "{e}"
                )
            }
            other => panic!("{:?}", other.map(|r| r.status())),
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
    }
}
