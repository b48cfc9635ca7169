//! The end of a request, told to every observer once.
//!
//! A proxied response is over when its body ends, fails, or is dropped because the client
//! went away, so a request's [`Trace`] travels inside [`ObservedBody`] and is closed from
//! there, with the bytes sent and the time to the first byte; a response voxgate answers
//! itself closes it at once, and a request dropped before it was answered (the client left
//! during intake or forwarding) closes it on drop. Observers — the access log and the
//! metrics — are the one place that reads a finished record.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::BoxError;
use crate::telemetry::record::{End, Ending, RequestRecord};

/// Something that wants to know about every request once it is over.
pub trait Observer: Send + Sync + std::fmt::Debug {
    fn request_ended(&self, record: &RequestRecord, end: &End);
}

/// The observers of one gateway, told in order.
#[derive(Debug, Default)]
pub struct Observers(Vec<Box<dyn Observer>>);

impl Observers {
    pub fn new(observers: Vec<Box<dyn Observer>>) -> Observers {
        Observers(observers)
    }

    fn notify(&self, record: &RequestRecord, end: &End) {
        for observer in &self.0 {
            observer.request_ended(record, end);
        }
    }
}

/// A request's record on its way to the observers: closed once, when the response is over.
#[derive(Debug)]
pub struct Trace {
    pub record: RequestRecord,
    observers: Arc<Observers>,
    closed: bool,
}

impl Trace {
    pub fn new(record: RequestRecord, observers: Arc<Observers>) -> Trace {
        Trace {
            record,
            observers,
            closed: false,
        }
    }

    /// Closes the trace of a response voxgate answered itself (no streamed body).
    pub fn finish(mut self, bytes_out: u64) {
        let ttfb = Some(self.record.started.elapsed());
        self.close(bytes_out, ttfb, Ending::Complete);
    }

    fn close(&mut self, bytes_out: u64, ttfb: Option<std::time::Duration>, ending: Ending) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let end = End {
            bytes_out,
            ttfb,
            total: self.record.started.elapsed(),
            ending,
        };
        self.observers.notify(&self.record, &end);
        // The response is over: the endpoint no longer has this request in flight.
        self.record.served_by = None;
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if self.record.status == 0 {
            self.record.status = 499; // nginx's "client closed request"
        }
        self.close(0, None, Ending::ClientGone);
    }
}

/// A proxied response body: passes frames through untouched and closes the trace when it
/// ends, fails or is dropped.
pub struct ObservedBody<B: Body> {
    inner: B,
    trace: Trace,
    bytes_out: u64,
    first_byte: Option<Instant>,
    ending: Ending,
}

impl<B: Body> ObservedBody<B> {
    pub fn new(inner: B, trace: Trace) -> ObservedBody<B> {
        ObservedBody {
            inner,
            trace,
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
        let started = self.trace.record.started;
        let ttfb = self.first_byte.map(|t| t.duration_since(started));
        self.trace.close(self.bytes_out, ttfb, self.ending);
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
                this.trace.record.error = Some(e.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::sync::Mutex;

    /// Remembers every end it is told of.
    #[derive(Debug, Default)]
    struct Ends(Mutex<Vec<(u16, End)>>);

    impl Observer for Arc<Ends> {
        fn request_ended(&self, record: &RequestRecord, end: &End) {
            self.0.lock().unwrap().push((record.status, *end));
        }
    }

    fn trace() -> (Trace, Arc<Ends>) {
        let ends = Arc::new(Ends::default());
        let observers = Observers::new(vec![Box::new(ends.clone())]);
        let record = RequestRecord::new(
            http::HeaderValue::from_static("id"),
            http::Method::POST,
            "/v1/audio/speech".into(),
            "127.0.0.1:1".parse().unwrap(),
        );
        (Trace::new(record, Arc::new(observers)), ends)
    }

    fn told(ends: &Ends) -> Vec<(u16, u64, Ending)> {
        let ends = ends.0.lock().unwrap();
        ends.iter()
            .map(|(status, end)| (*status, end.bytes_out, end.ending))
            .collect()
    }

    #[test]
    fn a_local_answer_is_told_once_when_finished() {
        let (mut t, ends) = trace();
        t.record.status = 200;
        t.finish(15);
        assert_eq!(told(&ends), [(200, 15, Ending::Complete)]);
    }

    #[test]
    fn a_request_dropped_unanswered_is_told_once_as_499() {
        let (t, ends) = trace();
        drop(t);
        assert_eq!(told(&ends), [(499, 0, Ending::ClientGone)]);
    }

    #[tokio::test]
    async fn a_streamed_answer_is_told_once_at_its_end_with_its_bytes() {
        let (mut t, ends) = trace();
        t.record.status = 200;
        let body = ObservedBody::new(Full::new(Bytes::from_static(b"audio")), t);
        assert!(told(&ends).is_empty(), "not before the body ends");
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"audio");
        assert_eq!(told(&ends), [(200, 5, Ending::Complete)]);
    }

    #[tokio::test]
    async fn a_stream_the_client_leaves_or_the_upstream_breaks_says_so() {
        let (t, ends) = trace();
        let pieces = futures_util::stream::iter([
            Ok(http_body::Frame::data(Bytes::from_static(b"ab"))),
            Err(std::io::Error::other("upstream reset")),
        ]);
        let mut body = ObservedBody::new(StreamBody::new(pieces), t);
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.unwrap().is_err());
        drop(body);
        assert_eq!(told(&ends), [(0, 2, Ending::UpstreamFailed)]);

        let (t, ends) = trace();
        let pending =
            futures_util::stream::pending::<Result<http_body::Frame<Bytes>, std::io::Error>>();
        drop(ObservedBody::new(StreamBody::new(pending), t));
        assert_eq!(told(&ends), [(0, 0, Ending::ClientGone)]);
    }
}
