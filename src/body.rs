//! Response body types: what voxgate sends to clients ([`ProxyBody`]), the tiny
//! [`full`] and [`empty`] helpers, and [`IdleTimeout`], which fails a stalled upstream body.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The body of every response voxgate writes to a client.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body that fails if no frame arrives for `limit`: a stalled upstream stream becomes an
/// error, which aborts the client connection instead of leaving it hanging.
///
/// The clock runs only while the body is waiting for its inner body: it starts at the
/// first `Pending` after a frame. A body whose frames are ready when asked for (a small
/// answer read in one go) never arms a timer, and a client that is slow to take the
/// frames is not counted against the upstream.
pub struct IdleTimeout<B> {
    inner: B,
    limit: Duration,
    /// The deadline, made on the first wait and armed again for each later one.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Whether the deadline is running for the current wait.
    waiting: bool,
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, limit: Duration) -> IdleTimeout<B> {
        IdleTimeout {
            inner,
            limit,
            deadline: None,
            waiting: false,
        }
    }
}

/// The error an [`IdleTimeout`] body fails with.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?} in the middle of the response")]
pub struct Stalled(pub Duration);

impl<B> Body for IdleTimeout<B>
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
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = this.limit;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if !this.waiting {
                    this.waiting = true;
                    deadline.as_mut().reset(Instant::now() + limit);
                }
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled(limit))))),
                    Poll::Pending => Poll::Pending,
                }
            }
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
    use futures_util::stream;
    use std::io;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_idle_limit_but_a_slow_one_does_not() {
        use futures_util::StreamExt as _;
        use http_body_util::StreamBody;
        let slow = stream::iter([b"a", b"b", b"c"]).then(|piece| async move {
            tokio::time::sleep(Duration::from_secs(9)).await;
            Ok::<_, io::Error>(Frame::data(Bytes::from_static(piece)))
        });
        let body = IdleTimeout::new(StreamBody::new(Box::pin(slow)), Duration::from_secs(10));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abc");

        let stalled = stream::iter([Ok::<_, io::Error>(Frame::data(Bytes::from_static(b"a")))])
            .chain(stream::pending());
        let mut body =
            IdleTimeout::new(StreamBody::new(Box::pin(stalled)), Duration::from_secs(10));
        assert!(body.frame().await.unwrap().is_ok());
        let e = body.frame().await.unwrap().unwrap_err();
        assert!(e.is::<Stalled>(), "{e}");
    }

    /// The clock runs while the body waits for the upstream, not while the client takes
    /// its time: a frame that comes 8 s after it was asked for is in time, even when it
    /// was asked for 5 s after the frame before (10 s limit).
    #[tokio::test(start_paused = true)]
    async fn time_the_client_takes_is_not_counted_against_the_upstream() {
        use futures_util::StreamExt as _;
        use http_body_util::StreamBody;
        let pieces = stream::iter([0u64, 8]).then(|wait| async move {
            tokio::time::sleep(Duration::from_secs(wait)).await;
            Ok::<_, io::Error>(Frame::data(Bytes::from_static(b"x")))
        });
        let mut body = IdleTimeout::new(StreamBody::new(Box::pin(pieces)), Duration::from_secs(10));
        assert!(body.frame().await.unwrap().is_ok());
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            body.frame().await.unwrap().is_ok(),
            "counted from the frame before"
        );
        assert!(body.frame().await.is_none());
    }
}
