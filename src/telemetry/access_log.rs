//! The access log: one structured line per request, written when the response is over.
//!
//! A proxied response is over when its body ends, fails, or is dropped because the client
//! went away, so the record travels inside [`ObservedBody`] and is written from there, with
//! the bytes sent and the time to the first byte. Headers are never logged: that is how no
//! key ends up in a log.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::BoxError;
use crate::gateway::forward::Attempt;
use crate::upstream::pool::Picked;

/// Where a request came from, handed by the server to [`crate::gateway::Gateway::handle`]
/// with the request (not in its extensions: the first extension costs a map allocation).
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    /// The client's address.
    pub peer: std::net::SocketAddr,
    pub listener: Listener,
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The API listener.
    Public,
    /// `server.admin_listen`: operational endpoints only.
    Admin,
}

/// What is known about a request, filled in as it goes through the phases.
#[derive(Debug)]
pub struct AccessRecord {
    pub started: Instant,
    pub request_id: http::HeaderValue,
    pub client: Option<std::net::SocketAddr>,
    pub method: http::Method,
    pub path: String,
    pub endpoint: &'static str,
    pub model: Option<String>,
    pub voice: Option<String>,
    /// Config line of the route taken.
    pub route: Option<usize>,
    pub attempts: Vec<Attempt>,
    pub upstream: Option<String>,
    /// The endpoint that answered; counted as in flight until the record is written.
    pub served_by: Option<Picked>,
    pub status: u16,
    pub bytes_in: u64,
    pub error: Option<String>,
    written: bool,
}

/// How the response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Complete,
    /// The upstream failed mid-body: the client connection is aborted.
    UpstreamFailed,
    /// The client went away first.
    ClientGone,
}

impl AccessRecord {
    pub fn new(request_id: http::HeaderValue, method: http::Method, path: String) -> AccessRecord {
        AccessRecord {
            started: Instant::now(),
            request_id,
            client: None,
            method,
            path,
            endpoint: "none",
            model: None,
            voice: None,
            route: None,
            attempts: Vec::new(),
            upstream: None,
            served_by: None,
            status: 0,
            bytes_in: 0,
            error: None,
            written: false,
        }
    }

    fn attempts_text(&self) -> String {
        self.attempts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Writes the line for a response voxgate answered itself (no streamed body).
    pub fn finish(mut self, bytes_out: u64) {
        let ttfb = self.started.elapsed();
        self.write(bytes_out, Some(ttfb), "complete");
    }

    /// Writes the line, once.
    fn write(&mut self, bytes_out: u64, ttfb: Option<std::time::Duration>, ending: &str) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        // The response is over: the endpoint no longer has this request in flight.
        let served_by = self.served_by.take();
        let total_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let ttfb_ms = ttfb.map(|t| t.as_secs_f64() * 1000.0);
        tracing::info!(
            target: "voxgate::telemetry::access_log",
            request_id = %self.request_id.to_str().unwrap_or_default(),
            client = self.client.map(tracing::field::display),
            method = %self.method,
            path = %self.path,
            endpoint = self.endpoint,
            model = self.model.as_deref(),
            voice = self.voice.as_deref(),
            route_line = self.route,
            attempts = %self.attempts_text(),
            upstream = self.upstream.as_deref(),
            upstream_url = served_by.as_ref().map(|p| tracing::field::display(&p.endpoint().url)),
            status = self.status,
            bytes_in = self.bytes_in,
            bytes_out,
            ttfb_ms,
            total_ms,
            ending,
            error = self.error.as_deref(),
            "request"
        );
    }
}

/// A request dropped before it was answered (the client left during intake or forwarding)
/// is still logged.
impl Drop for AccessRecord {
    fn drop(&mut self) {
        if self.status == 0 {
            self.status = 499; // nginx's "client closed request"
        }
        self.write(0, None, "client_gone");
    }
}

/// A proxied response body: passes frames through untouched and writes the access record
/// when it ends, fails or is dropped.
pub struct ObservedBody<B: Body> {
    inner: B,
    record: AccessRecord,
    bytes_out: u64,
    first_byte: Option<Instant>,
    ending: Ending,
}

impl<B: Body> ObservedBody<B> {
    pub fn new(inner: B, record: AccessRecord) -> ObservedBody<B> {
        ObservedBody {
            inner,
            record,
            bytes_out: 0,
            first_byte: None,
            ending: Ending::ClientGone,
        }
    }

    fn close(&mut self) {
        // hyper stops polling a body that says it is at its end, and drops it.
        if self.ending == Ending::ClientGone && self.inner.is_end_stream() {
            self.ending = Ending::Complete;
        }
        let ttfb = self
            .first_byte
            .map(|t| t.duration_since(self.record.started));
        let ending = match self.ending {
            Ending::Complete => "complete",
            Ending::UpstreamFailed => "upstream_failed_mid_body",
            Ending::ClientGone => "client_gone",
        };
        self.record.write(self.bytes_out, ttfb, ending);
    }
}

impl<B: Body> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_out += data.len() as u64;
                    if this.first_byte.is_none() && !data.is_empty() {
                        this.first_byte = Some(Instant::now());
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // Returning the error makes hyper abort the client connection, so a cut
                // upstream stream is seen as a broken response, never a short clean one.
                this.ending = Ending::UpstreamFailed;
                let e: BoxError = e.into();
                this.record.error = Some(e.to_string());
                this.close();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.ending = Ending::Complete;
                this.close();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
