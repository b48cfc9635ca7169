//! The listener loop: accept connections, serve HTTP/1.1 and HTTP/2 on them, shut down
//! gracefully.
//!
//! [`run`] takes its listener and its shutdown future as arguments (as mini-redis does), so
//! tests bind `127.0.0.1:0` and stop the server when they like. On shutdown it stops
//! accepting at once, lets in-flight requests and streams finish for up to the configured
//! grace period, and then returns, dropping whatever is left.
//!
//! With `[server] tls` set, each new connection on the API listener is a TLS one (ALPN:
//! `h2`, `http/1.1`), with the certificate of the configuration serving when it was
//! accepted: a reload with renewed files applies to the next connection. The admin
//! listener stays plain HTTP (bind it to loopback).

pub mod inline_wake;
pub mod linger;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};

use crate::gateway::{overloaded, Gateway};
use crate::gateway::{Listener, Origin};
use crate::server::inline_wake::InlineWake;
use crate::server::linger::{LingerLimits, LingerSwitch, LingeringIo};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Serves a connection over the limit: every request gets 503 with `retry-after`, and the
/// connection closes after the first answer.
/// Its request body is left unread, so the close lingers (linger.rs).
async fn shed(
    stream: tokio::net::TcpStream,
    builder: auto::Builder<TokioExecutor>,
    linger: LingerLimits,
) {
    let switch = LingerSwitch::new();
    let io = LingeringIo::new(stream, switch.clone(), linger);
    let service = service_fn(move |_request: hyper::Request<hyper::body::Incoming>| {
        switch.set();
        async {
            let mut response = overloaded("too many connections").into_response();
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            Ok::<_, Infallible>(response)
        }
    });
    let _ = builder.serve_connection(TokioIo::new(io), service).await;
}

/// Request bodies up to this size (by their Content-Length) have their hand-over from
/// hyper taken at once ([`InlineWake`]); larger and chunked ones go through the run queue.
const EAGER_BODY_LIMIT: u64 = 64 * 1024;

/// How long a new connection may go without a complete request before it is dropped.
///
/// hyper's HTTP/1 `header_read_timeout` covers a request whose headers trickle in, and
/// answers 408. It does not cover a connection that sends nothing at all (hyper-util's
/// version detection waits for the first bytes), nor an HTTP/2 (h2c) client that sends
/// its preface and never a complete HEADERS frame. This deadline does, for the first
/// request; it falls just after hyper's own so that HTTP/1 clients still get the 408.
fn first_request_deadline(header_read_timeout: Duration) -> Duration {
    header_read_timeout + header_read_timeout / 4
}

/// One accepted connection, to be served.
struct Connection {
    builder: auto::Builder<TokioExecutor>,
    /// Keeps graceful shutdown waiting for this connection.
    graceful: Watcher,
    gateway: Arc<Gateway>,
    origin: Origin,
    /// For the first request (and the TLS handshake before it).
    deadline: Duration,
    permit: OwnedSemaphorePermit,
    /// How a close after an unread body lingers (linger.rs).
    linger: LingerLimits,
}

impl Connection {
    /// Serves HTTP on `io` in a task of its own.
    fn spawn<I>(self, io: I)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            builder,
            graceful,
            gateway,
            origin,
            deadline,
            permit,
            linger,
        } = self;
        let peer = origin.peer;
        let asked = Arc::new(AtomicBool::new(false));
        let first_request = asked.clone();
        let inline_wake = InlineWake::new();
        let eager = inline_wake.switch();
        let lingering = LingerSwitch::new();
        let io = LingeringIo::new(io, lingering.clone(), linger);
        let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            first_request.store(true, Ordering::Relaxed);
            // The body hand-over is taken at once for small bodies only (inline_wake.rs).
            let size = hyper::body::Body::size_hint(request.body()).upper();
            eager.set(size.is_some_and(|n| n <= EAGER_BODY_LIMIT));
            let gateway = gateway.clone();
            let lingering = lingering.clone();
            // Boxed: the request's future is about 4 KiB, and hyper moves the future it
            // is given into its own slot; a box moves as a pointer.
            Box::pin(async move {
                let handled = gateway.handle(request, origin).await;
                // The gateway closes when the body was left unread: that close lingers
                // (linger.rs).
                if handled.closes {
                    lingering.set();
                }
                Ok::<_, Infallible>(handled.response)
            })
        });
        let connection = builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::pin!(connection);
            let mut first_deadline = std::pin::pin!(tokio::time::sleep(deadline));
            // The deadline is looked at only until the first request has come: after
            // that, a wake-up of the connection costs no timer poll.
            let result = std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = inline_wake.poll(connection.as_mut(), cx) {
                    return Poll::Ready(Some(result));
                }
                if asked.load(Ordering::Relaxed) {
                    return Poll::Pending;
                }
                first_deadline.as_mut().poll(cx).map(|()| None)
            })
            .await;
            let result = match result {
                Some(result) => result,
                None => {
                    tracing::debug!(%peer, "no request within the header timeout; closed");
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }

    /// Completes the TLS handshake (within the first request's deadline), then serves
    /// HTTP/2 or HTTP/1.1 as ALPN agreed.
    fn spawn_tls(self, stream: TcpStream, tls: Arc<rustls::ServerConfig>) {
        let peer = self.origin.peer;
        let deadline = self.deadline;
        // A handshake under way holds the connection's watcher, so shutdown waits for it
        // (bounded by the deadline) as for any connection.
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            match tokio::time::timeout(deadline, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => self.spawn(stream),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "no TLS handshake within the header timeout"),
            }
        });
    }
}

/// What a new connection on `role` gets from the `[server]` settings serving now: the TLS
/// to speak (public listener only) and how a close after an unread body lingers.
fn accepting(
    gateway: &Gateway,
    role: Listener,
) -> (Option<Arc<rustls::ServerConfig>>, LingerLimits) {
    gateway.with_server_config(|s| {
        let tls = match role {
            Listener::Public => s.tls.as_ref().map(|t| t.server.clone()),
            Listener::Admin => None,
        };
        let linger = LingerLimits {
            time: s.lingering_time,
            bytes: s.lingering_bytes,
        };
        (tls, linger)
    })
}

/// Serves `gateway` on `listener` until `shutdown` resolves.
pub async fn run(listener: TcpListener, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    serve(listener, gateway, shutdown, Listener::Public).await
}

/// Serves the operational endpoints (`/health`, `/ready`, `/status`) only, on the
/// `server.admin_listen` listener.
pub async fn run_admin(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) {
    serve(listener, gateway, shutdown, Listener::Admin).await
}

async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
    role: Listener,
) {
    let server = gateway.runtime().config.server.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_read_timeout)
        // Also bounds what request bytes kept without a copy hold alive (replay::KEEP_WHOLE).
        .max_buf_size(256 * 1024);
    builder.http2().timer(TokioTimer::new());
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(server.max_connections as usize));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // Per connection, from the configuration serving now: a reload with renewed
        // certificates or other lingering limits applies to the next connection.
        let (tls, linger) = accepting(&gateway, role);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            if tls.is_some() {
                // Over the limit on TLS: a handshake would cost what the limit saves.
                drop(stream);
                continue;
            }
            // Over the limit: answer 503 at once and close, rather than queue.
            // The deadline covers the lingering too: a shed connection is not kept long.
            let deadline = first_request_deadline(server.header_read_timeout);
            tokio::spawn(tokio::time::timeout(
                deadline,
                shed(stream, builder.clone(), linger),
            ));
            continue;
        };
        let gateway = gateway.clone();
        let origin = Origin {
            peer,
            listener: role,
        };
        let connection = Connection {
            builder: builder.clone(),
            graceful: graceful.watcher(),
            gateway,
            origin,
            deadline: first_request_deadline(server.header_read_timeout),
            permit,
            linger,
        };
        match tls {
            None => connection.spawn(stream),
            Some(tls) => connection.spawn_tls(stream, tls),
        }
    }
    drop(listener);
    // Read now: a reload may have changed it since the listener started.
    let grace = gateway.runtime().config.server.shutdown_grace;
    tracing::info!(?grace, "shutting down: waiting for requests in flight");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!("grace period over; closing the remaining connections");
        }
    }
}
