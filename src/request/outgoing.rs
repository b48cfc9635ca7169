//! The body of a request to an upstream, built from [`Segment`]s: small rewritten pieces
//! (`Bytes`) and ranges of the request's [`Replay`] store, so the audio of an upload is never
//! copied to be re-sent. An [`OutBody`] always knows its exact length, which becomes the
//! upstream request's Content-Length.

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use http_body::{Body, Frame, SizeHint};

use crate::request::replay::Replay;

/// A piece of an outgoing request body.
#[derive(Debug, Clone)]
pub enum Segment {
    Bytes(Bytes),
    Replay(Arc<Replay>, Range<u64>),
}

impl Segment {
    pub fn len(&self) -> u64 {
        match self {
            Segment::Bytes(b) => b.len() as u64,
            Segment::Replay(_, r) => r.end - r.start,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A request body for one attempt at one upstream; replayable by building another.
pub struct OutBody {
    stream: BoxStream<'static, io::Result<Bytes>>,
    remaining: u64,
}

impl OutBody {
    pub fn new(segments: Vec<Segment>) -> OutBody {
        let remaining = segments.iter().map(Segment::len).sum();
        let stream = stream::iter(segments)
            .flat_map(|segment| match segment {
                Segment::Bytes(b) => stream::once(async move { Ok(b) }).boxed(),
                Segment::Replay(replay, range) => replay.stream(range).boxed(),
            })
            .boxed();
        OutBody { stream, remaining }
    }

    pub fn empty() -> OutBody {
        OutBody::new(Vec::new())
    }
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.stream.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                self.remaining = self.remaining.saturating_sub(bytes.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "replay body ended early",
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::replay::{MemoryBudget, ReplayLimits, ReplayWriter};
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn segments_are_concatenated_and_sized() {
        let mut w = ReplayWriter::new(ReplayLimits {
            memory_per_request: 4,
            budget: Arc::new(MemoryBudget::new(1024)),
            spill_dir: None,
        });
        w.push(Bytes::from_static(b"0123")).await.unwrap();
        w.push(Bytes::from_static(b"456789")).await.unwrap();
        let replay = Arc::new(w.finish().await.unwrap());
        let body = OutBody::new(vec![
            Segment::Bytes(Bytes::from_static(b"<")),
            Segment::Replay(replay.clone(), 2..8),
            Segment::Bytes(Bytes::from_static(b">")),
        ]);
        assert_eq!(body.size_hint().exact(), Some(8));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"<234567>");
    }
}
