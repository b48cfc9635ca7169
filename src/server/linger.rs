//! Lingering close: the rest of a request body read and dropped after an answer that
//! closes the connection, so that the client gets to read the answer.
//!
//! When voxgate answers before it has read a request body to its end (a 413 from the
//! Content-Length, a chunked body crossing the limit, a bad chunk, a refusal that needs no
//! body), it says `Connection: close` and hyper closes the connection after the answer.
//! Closing a socket whose receive queue still holds bytes makes the kernel send a reset
//! instead of a plain FIN (RFC 1122 §4.2.2.13), and a reset that reaches the client while
//! it is still uploading discards the answer from the client's own receive queue: it sees
//! "connection reset" instead of the 413. nginx's answer is lingering close, and this is
//! the same: the write side is shut down first (the answer is complete and followed by a
//! FIN), then whatever the client still sends is read and dropped until it closes its side,
//! for at most `server.lingering_time` and `server.lingering_bytes`. Only then is the
//! socket closed.
//!
//! It lives in the connection's IO ([`LingeringIo`]), in `poll_shutdown`, because that is
//! the one place every closing HTTP/1 connection passes through: hyper calls it once the
//! answer is flushed and the connection is done, whatever made it close. The bytes dropped
//! here never reach hyper, so they are never part of a request body, a request record or
//! the access log's `bytes_in`. The gateway decides *whether* to close (it knows whether
//! the body was read, `phases.rs`) and tells the server with its answer (`Handled::closes`),
//! which turns lingering on for that connection ([`LingerSwitch`]). Connections that close for
//! any other reason (the client asked, keep-alive ended, shutdown) close at once, as before.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How long, and how much, a closing connection is read and dropped.
#[derive(Debug, Clone, Copy)]
pub struct LingerLimits {
    pub time: Duration,
    pub bytes: u64,
}

/// Turns lingering on for one connection; shared by its service and its IO.
#[derive(Debug, Clone, Default)]
pub struct LingerSwitch(Arc<AtomicBool>);

impl LingerSwitch {
    pub fn new() -> LingerSwitch {
        LingerSwitch::default()
    }

    /// The connection will linger when it closes.
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A lingering close under way.
struct Lingering {
    deadline: Pin<Box<Sleep>>,
    write_shut: bool,
    dropped: u64,
}

/// A connection's IO that closes lingering when its [`LingerSwitch`] is set; reads and
/// writes go straight through.
pub struct LingeringIo<T> {
    io: T,
    switch: LingerSwitch,
    limits: LingerLimits,
    lingering: Option<Lingering>,
}

impl<T> LingeringIo<T> {
    pub fn new(io: T, switch: LingerSwitch, limits: LingerLimits) -> LingeringIo<T> {
        LingeringIo {
            io,
            switch,
            limits,
            lingering: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LingeringIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LingeringIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Shuts the write side down, then, when lingering, reads and drops what the client
    /// still sends until it closes its side, the time is over, or the byte limit is read.
    /// Ends `Ok` in every case: the answer went out, and the socket is closed next.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.switch.is_set() {
            return Pin::new(&mut this.io).poll_shutdown(cx);
        }
        let limits = this.limits;
        let lingering = this.lingering.get_or_insert_with(|| Lingering {
            deadline: Box::pin(tokio::time::sleep(limits.time)),
            write_shut: false,
            dropped: 0,
        });
        if !lingering.write_shut {
            if let Err(e) = ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
                // The client is gone already (a reset): nothing left to wait for.
                tracing::debug!(error = %e, "lingering close: shutdown failed");
                return Poll::Ready(Ok(()));
            }
            lingering.write_shut = true;
        }
        let mut scratch = [0u8; 16 * 1024];
        let why = loop {
            if lingering.dropped >= limits.bytes {
                break "byte limit";
            }
            if lingering.deadline.as_mut().poll(cx).is_ready() {
                break "time limit";
            }
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.io).poll_read(cx, &mut buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => break "read error",
                Poll::Ready(Ok(())) if buf.filled().is_empty() => break "client closed",
                Poll::Ready(Ok(())) => lingering.dropped += buf.filled().len() as u64,
            }
        };
        tracing::debug!(
            dropped = lingering.dropped,
            ended_by = why,
            "lingering close over"
        );
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(time: Duration, bytes: u64) -> LingerLimits {
        LingerLimits { time, bytes }
    }

    #[tokio::test]
    async fn without_the_switch_shutdown_is_plain() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut io = LingeringIo::new(
            ours,
            LingerSwitch::new(),
            limits(Duration::from_secs(5), 1 << 20),
        );
        theirs.write_all(b"unread").await.unwrap();
        io.write_all(b"answer").await.unwrap();
        // The client never closes: a lingering shutdown would wait for it.
        tokio::time::timeout(Duration::from_secs(1), io.shutdown())
            .await
            .expect("shut down at once")
            .unwrap();
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"answer");
    }

    #[tokio::test]
    async fn lingering_reads_until_the_client_closes_and_the_answer_ends_first() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let switch = LingerSwitch::new();
        switch.set();
        let mut io = LingeringIo::new(ours, switch, limits(Duration::from_secs(5), 1 << 20));
        io.write_all(b"413").await.unwrap();
        let client = tokio::spawn(async move {
            // The rest of an upload, more than the pipe holds: only lingering drains it.
            for _ in 0..64 {
                theirs.write_all(&[b'x'; 1024]).await.unwrap();
            }
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).await.unwrap();
            got
        });
        io.shutdown().await.unwrap();
        assert_eq!(client.await.unwrap(), b"413");
        assert_eq!(io.lingering.as_ref().unwrap().dropped, 64 * 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn lingering_ends_at_the_time_limit_or_the_byte_limit() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        let switch = LingerSwitch::new();
        switch.set();
        let mut io = LingeringIo::new(ours, switch, limits(Duration::from_secs(5), 1 << 20));
        let start = tokio::time::Instant::now();
        io.shutdown().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(5));

        let (ours, mut theirs) = tokio::io::duplex(1024);
        let switch = LingerSwitch::new();
        switch.set();
        let mut io = LingeringIo::new(ours, switch, limits(Duration::from_secs(5), 4096));
        let _client = tokio::spawn(async move {
            loop {
                if theirs.write_all(&[b'x'; 512]).await.is_err() {
                    return;
                }
            }
        });
        let start = tokio::time::Instant::now();
        io.shutdown().await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(io.lingering.as_ref().unwrap().dropped >= 4096);
    }
}
