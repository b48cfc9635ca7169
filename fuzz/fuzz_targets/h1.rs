//! voxgate's HTTP/1.1 client on arbitrary answers, delivered in arbitrary pieces: the head
//! is taken or refused, and the body is read to its end or to an error, never a panic or a
//! hang. What is read is checked against a plain reading of the same bytes: a
//! Content-Length body is exactly that many bytes (or an error when fewer came), a chunked
//! body is its chunks' data, a close-delimited body is everything after the head, and a
//! head over `MAX_HEAD` is refused.
//!
//! Input: a flags byte, a padding byte, a count byte and that many piece sizes, then the
//! answer. Flags: bit 0 the request was HEAD; bit 1 every read is `Pending` once first;
//! bit 2 a header is added after the status line so that the head is within a few hundred
//! bytes of `MAX_HEAD` (the padding byte says where).
#![no_main]

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::Method;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use voxgate::request::outgoing::Segment;
use voxgate::upstream::h1::{request_head, Conn, Decoder, ExchangeError, SendFile, MAX_HEAD};

/// The upstream's side: gives the answer in the pieces chosen, then the end of the
/// stream; takes whatever is written.
struct Script {
    answer: Vec<u8>,
    at: usize,
    pieces: Vec<usize>,
    next_piece: usize,
    stall: bool,
    stalled: bool,
}

impl AsyncRead for Script {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.stall && !self.stalled {
            self.stalled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.stalled = false;
        let piece = self.pieces[self.next_piece % self.pieces.len()];
        self.next_piece += 1;
        let n = piece.min(self.answer.len() - self.at).min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.answer[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Script {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl SendFile for Script {}

/// Polls `f` to its end. Every poll either reads from the script or ends, so more polls
/// than `bound` is a loop that makes no progress.
fn run<F: Future>(f: F, polls: &mut usize, bound: usize) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        *polls += 1;
        assert!(*polls <= bound, "no progress after {bound} polls");
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// The final head in `wire` as a plain reading finds it: its status and where its body
/// starts, or `Err(true)` when a head over `MAX_HEAD` comes first, `Err(false)` when the
/// bytes are not a head (or not all of one).
fn reference_head(wire: &[u8]) -> Result<(u16, usize), bool> {
    let mut at = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&wire[at..]) {
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => return Err(true),
            Ok(httparse::Status::Complete(len)) => {
                let code = response.code.unwrap_or_default();
                at += len;
                if !(100..200).contains(&code) {
                    return Ok((code, at));
                }
            }
            Ok(httparse::Status::Partial) => return Err(wire.len() - at >= MAX_HEAD),
            Err(_) => return Err(false),
        }
    }
}

/// Chunked data read plainly: the concatenated chunks so far, and whether the body ended
/// well. Lenient where h1 may be strict (any extension, any trailer line), so whatever h1
/// accepts this accepts too, with the same data.
fn reference_dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut data = Vec::new();
    let line = |rest: &[u8]| rest.windows(2).position(|w| w == b"\r\n");
    loop {
        let Some(end) = line(rest) else {
            return (data, false);
        };
        let digits = rest[..end]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        let after = rest[digits..end].first().copied();
        if digits == 0 || !matches!(after, None | Some(b' ' | b'\t' | b';')) {
            return (data, false);
        }
        let mut size: u128 = 0;
        for &d in &rest[..digits] {
            size = (size * 16 + u128::from((d as char).to_digit(16).unwrap_or(0)))
                .min(u128::from(u64::MAX));
        }
        rest = &rest[end + 2..];
        if size == 0 {
            loop {
                let Some(end) = line(rest) else {
                    return (data, false);
                };
                if end == 0 {
                    return (data, true);
                }
                rest = &rest[end + 2..];
            }
        }
        let take = (size as usize).min(rest.len());
        data.extend_from_slice(&rest[..take]);
        if (take as u128) < size || !rest[take..].starts_with(b"\r\n") {
            return (data, false);
        }
        rest = &rest[take + 2..];
    }
}

fuzz_target!(|data: &[u8]| {
    let [flags, pad, count, rest @ ..] = data else {
        return;
    };
    let count = usize::from(count % 8) + 1;
    if rest.len() < count {
        return;
    }
    let (sizes, answer) = rest.split_at(count);
    let head_request = flags & 1 != 0;
    let mut answer = answer.to_vec();
    let scale = if flags & 4 != 0 {
        // Right after the status line (or at the start): a head of about MAX_HEAD bytes.
        let at = answer.iter().position(|&b| b == b'\n').map_or(0, |p| p + 1);
        let len = MAX_HEAD - 300 + usize::from(*pad) * 2;
        let mut field = b"x-pad: ".to_vec();
        field.resize(len, b'p');
        field.extend_from_slice(b"\r\n");
        answer.splice(at..at, field);
        // Large pieces: a head re-read after every byte would take the fuzzer's time.
        512
    } else {
        1
    };
    let pieces = sizes
        .iter()
        .map(|&s| (usize::from(s) + 1) * scale)
        .collect();
    let script = Script {
        answer: answer.clone(),
        at: 0,
        pieces,
        next_piece: 0,
        stall: flags & 2 != 0,
        stalled: false,
    };

    let mut conn = Conn::new(script);
    let method = if head_request {
        Method::HEAD
    } else {
        Method::POST
    };
    let request = request_head(&method, "", "/v1/audio/speech", b"upstream", &|_| {}, 2);
    let body = vec![Segment::Bytes(Bytes::from_static(b"{}"))];
    // Each poll reads at least a byte, or stalls once before it, or ends.
    let bound = 2 * (answer.len() + 8);
    let mut polls = 0;
    let exchange = run(
        conn.exchange(request, body, head_request),
        &mut polls,
        bound,
    );
    let reference = reference_head(&answer);

    let mut answer_head = match exchange {
        Ok(a) => a,
        Err(e) => {
            if reference == Err(true) {
                assert!(
                    matches!(e, ExchangeError::Invalid(_)),
                    "a head over MAX_HEAD: {e}"
                );
            }
            return;
        }
    };
    let Ok((code, body_start)) = reference else {
        panic!("h1 took an answer the reference does not: {reference:?}");
    };
    assert_eq!(answer_head.status.as_u16(), code);
    if answer_head.reusable {
        assert_ne!(
            answer_head.decoder,
            Decoder::UntilClose,
            "a close-delimited body kept"
        );
    }
    let after_head = &answer[body_start..];

    let decoder = answer_head.decoder;
    let mut got = Vec::new();
    let read = run(
        std::future::poll_fn(|cx| loop {
            match conn.poll_data(&mut answer_head.decoder, cx) {
                Poll::Ready(Some(Ok(piece))) => {
                    assert!(!piece.is_empty(), "an empty piece of body");
                    got.extend_from_slice(&piece);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }),
        &mut polls,
        bound,
    );
    match decoder {
        Decoder::Done => {
            assert!(read.is_ok() && got.is_empty());
        }
        Decoder::Length(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if read.is_ok() {
                assert!(
                    after_head.len() >= n,
                    "a Content-Length body longer than what came"
                );
                assert_eq!(got, after_head[..n], "a Content-Length body");
            } else {
                assert!(after_head.len() < n, "a whole Content-Length body refused");
                assert_eq!(got, after_head[..got.len()]);
            }
        }
        Decoder::Chunked(_) => {
            let (expected, whole) = reference_dechunk(after_head);
            if read.is_ok() {
                assert!(whole, "a chunked body the reference finds incomplete");
                assert_eq!(got, expected, "a chunked body");
            } else {
                assert!(expected.starts_with(&got), "chunked data before an error");
            }
        }
        Decoder::UntilClose => {
            assert!(read.is_ok(), "a close-delimited body failed");
            assert_eq!(got, after_head, "a close-delimited body");
        }
    }
    if read.is_ok() {
        assert!(answer_head.decoder.is_done());
    }
});
