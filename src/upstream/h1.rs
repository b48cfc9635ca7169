//! voxgate's own HTTP/1.1 client connection: one request at a time, driven by the task
//! that proxies the request.
//!
//! hyper's client runs every connection in a task of its own. The request goes to it
//! through a channel, the response head comes back through a oneshot, and every chunk of
//! the body is handed over once more from the connection's task to the request's. For a
//! small request those hand-offs, their wake-ups and hyper's header maps were a quarter of
//! voxgate's instructions (benches/README.md), and each streamed chunk waited for one
//! extra task switch. Here the request's own task writes the request, reads the answer's
//! head, and reads the body when the client's connection asks for more: the path nginx
//! and HAProxy take.
//!
//! What it does and does not do:
//! - the request head is written in one piece with the small parts of the body (a
//!   JSON speech request is one `write`); replayed upload bytes follow as they are read;
//! - the answer may start before the request has been written in full (an upstream that
//!   refuses an upload early): it is taken, and the connection is not kept;
//! - bodies are framed by Content-Length, by chunked encoding, or by the end of the
//!   connection (RFC 9112 §6.3); 1xx answers other than 101 are skipped;
//! - a body's data is handed on as slices of the read buffer, without a copy;
//! - a connection is kept only when its answer was read to the end, the request was
//!   written in full, nothing came after the answer, and neither side asked to close.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{BoxStream, StreamExt};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::request::outgoing::Segment;
use crate::request::replay::FileRange;

/// The most an answer's head (status line and headers) may take.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most headers an answer may have (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Headers a proxied answer may gain on its way to the client.
const ADDED_HEADERS: usize = 4;
/// The most a chunk-size line or a trailer section may take.
const MAX_LINE: usize = 4 * 1024;
/// Body bytes under this, in a run right after the head, are copied next to it so the
/// whole request goes out in one write; larger ones are written from where they are.
const COALESCE: usize = 16 * 1024;
/// Read sizes: the first read of an answer, and the most one read asks for.
/// The buffer is kept with the connection and used again once the data given out from
/// it has been written and dropped, so in the steady state reads allocate nothing.
const FIRST_READ: usize = 64 * 1024;
const MAX_READ: usize = 64 * 1024;
const MIN_READ: usize = 4 * 1024;
/// The most of a spill file one `sendfile` call is asked for.
const SEND_FILE_CHUNK: u64 = 1024 * 1024;

/// An HTTP/1.1 connection to an upstream, between exchanges or during one.
pub struct Conn<T> {
    io: T,
    /// Bytes read and not yet handed on. Data is split off it and frozen, so the
    /// allocation is shared with the chunks given out until they are dropped.
    buf: BytesMut,
}

/// The head of an answer, and how to read its body.
pub struct Answer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub decoder: Decoder,
    /// Whether the connection can carry another request once the body is read.
    pub reusable: bool,
}

/// Why an exchange failed before an answer's head.
#[derive(Debug)]
pub enum ExchangeError {
    /// The connection closed or failed before any byte of an answer: on a kept
    /// connection, most likely closed by the upstream as the request went out.
    Unanswered(String),
    /// The connection broke after part of an answer came, or after the whole request
    /// went out.
    Broken(String),
    /// The answer's head is not valid HTTP/1.1.
    Invalid(String),
    /// The request body could not be read back from the replay store: voxgate's side.
    Local(String),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Unanswered(e)
            | ExchangeError::Broken(e)
            | ExchangeError::Invalid(e)
            | ExchangeError::Local(e) => f.write_str(e),
        }
    }
}

/// A failure while writing a request.
enum WriteError {
    /// The connection failed.
    Io(io::Error),
    /// The body's bytes could not be read back from the replay store.
    Local(io::Error),
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes are left.
    Length(u64),
    /// Chunked transfer coding, in this state.
    Chunked(Chunk),
    /// The body is everything until the upstream closes the connection.
    UntilClose,
    /// The body has been read to its end.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data are left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; this many bytes seen.
    Trailers(usize),
}

impl Decoder {
    pub fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// The exact number of body bytes left, when the framing tells it.
    pub fn exact_len(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

fn cut_short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the upstream closed the connection before the body was complete",
    )
}

/// Something that gives a request's headers, one by one, to the callback it is handed.
pub type HeaderSource<'a> = dyn Fn(&mut dyn FnMut(&HeaderName, &HeaderValue)) + Sync + 'a;

/// Writes a request head: request line, `Host`, the headers `emit` gives, and
/// `Content-Length`. The path must already have been checked to be a request target.
pub fn request_head(
    method: &Method,
    prefix: &str,
    path_and_query: &str,
    host: &[u8],
    headers: &HeaderSource<'_>,
    content_length: u64,
) -> Vec<u8> {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(prefix.as_bytes());
    head.extend_from_slice(path_and_query.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(host);
    head.extend_from_slice(b"\r\n");
    headers(&mut |name, value| {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    });
    if says_length(method, content_length) {
        head.extend_from_slice(b"content-length: ");
        head.extend_from_slice(itoa::Buffer::new().format(content_length).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Whether a request carries a Content-Length: a GET, HEAD, DELETE or OPTIONS without a
/// body says nothing of one (RFC 9110 §8.6); any other request does.
pub fn says_length(method: &Method, content_length: u64) -> bool {
    let bodiless = matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
    );
    content_length > 0 || !bodiless
}

/// Whether `target` can go on a request line as it is: visible ASCII only, so no space,
/// CR or LF can end the line early.
pub fn is_request_target(target: &str) -> bool {
    !target.is_empty() && target.bytes().all(|b| b.is_ascii_graphic())
}

/// A connection's byte stream, asked whether spilled request bytes can go to it with
/// `sendfile`: they can when it is a TCP socket with nothing (TLS) between it and them.
pub trait SendFile {
    /// The TCP socket that takes this stream's bytes as they are, if there is one.
    fn plain_tcp(&self) -> Option<&tokio::net::TcpStream> {
        None
    }
}

impl SendFile for tokio::net::TcpStream {
    fn plain_tcp(&self) -> Option<&tokio::net::TcpStream> {
        Some(self)
    }
}

/// `sendfile(2)` from `file` to `socket` once the socket can take bytes: the kernel passes
/// the file's pages on without a copy through voxgate's memory.
///
/// The file is a spill file written moments before, so its pages are in the page cache
/// and the call does not wait on the disk (it would, on the serving thread, only if
/// memory pressure had evicted them: nginx sends its buffered request bodies the same
/// way).
fn send_file(
    socket: &tokio::net::TcpStream,
    cx: &mut Context<'_>,
    file: &std::fs::File,
    offset: u64,
    len: usize,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(socket.poll_write_ready(cx))?;
        let mut at = offset;
        let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
            rustix::fs::sendfile(socket, file, Some(&mut at), len).map_err(io::Error::from)
        });
        match sent {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            result => return Poll::Ready(result),
        }
    }
}

/// A piece of a request body: bytes, or a range of a spill file that the stream sends
/// itself ([`SendFile`]).
enum Piece {
    Bytes(Bytes),
    File(FileRange),
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::File(f) => f.len,
        }
    }
}

/// The request being written: the piece in hand, the one after it, then the segments
/// still to go.
struct RequestWriter {
    pending: Bytes,
    /// A spilled range being sent with [`SendFile`]; `pending` is empty meanwhile.
    sending: Option<FileRange>,
    /// The next piece, read ahead: a replayed piece may have to be read from disk, and
    /// reading it while the one before it is written keeps the socket busy.
    next: Option<Piece>,
    segments: std::vec::IntoIter<Segment>,
    replay: Option<BoxStream<'static, io::Result<Bytes>>>,
    /// The spilled part of the replay range being streamed, sent once its memory part is.
    spilled: Option<FileRange>,
    /// Body bytes still to come from the segments: what the Content-Length promised.
    /// A segment that yields more or fewer is an error, not a desynchronised connection.
    left: u64,
    /// No pieces are left to read.
    ended: bool,
    flushed: bool,
}

impl RequestWriter {
    fn new(mut head: Vec<u8>, segments: Vec<Segment>) -> RequestWriter {
        let mut segments = segments.into_iter();
        // Small pieces right after the head go with it.
        let mut rest = segments.as_slice();
        let mut taken = 0;
        while let Some(Segment::Bytes(b)) = rest.first() {
            if b.len() >= COALESCE {
                break;
            }
            head.extend_from_slice(b);
            taken += 1;
            rest = &rest[1..];
        }
        if taken > 0 {
            segments.nth(taken - 1);
        }
        let left = segments.as_slice().iter().map(Segment::len).sum();
        RequestWriter {
            pending: Bytes::from(head),
            sending: None,
            next: None,
            left,
            segments,
            replay: None,
            spilled: None,
            ended: false,
            flushed: false,
        }
    }

    /// The piece after the last one taken; `None` when there are no more. With `files`,
    /// spilled ranges come as [`Piece::File`], else as bytes read from the file.
    fn poll_piece(&mut self, cx: &mut Context<'_>, files: bool) -> Poll<io::Result<Option<Piece>>> {
        let piece = ready!(self.poll_segments(cx, files))?;
        // Counted against the Content-Length sent, so that a miscount fails here instead
        // of leaving the upstream waiting, or reading our extra bytes as a request.
        let len = piece.as_ref().map_or(0, Piece::len);
        match self.left.checked_sub(len) {
            Some(left) if piece.is_some() || left == 0 => {
                self.left = left;
                Poll::Ready(Ok(piece))
            }
            _ => Poll::Ready(Err(io::Error::other(
                "the body's pieces did not add up to its Content-Length",
            ))),
        }
    }

    fn poll_segments(
        &mut self,
        cx: &mut Context<'_>,
        files: bool,
    ) -> Poll<io::Result<Option<Piece>>> {
        loop {
            if let Some(replay) = &mut self.replay {
                match ready!(replay.poll_next_unpin(cx)) {
                    Some(piece) => return Poll::Ready(piece.map(|b| Some(Piece::Bytes(b)))),
                    None => self.replay = None,
                }
                continue;
            }
            if let Some(file) = self.spilled.take() {
                return Poll::Ready(Ok(Some(Piece::File(file))));
            }
            match self.segments.next() {
                Some(Segment::Bytes(bytes)) => return Poll::Ready(Ok(Some(Piece::Bytes(bytes)))),
                Some(Segment::Replay(replay, range)) if files => {
                    let (memory, spilled) = replay.split(range);
                    if !memory.is_empty() {
                        self.replay = Some(replay.stream(memory).boxed());
                    }
                    self.spilled = spilled;
                }
                Some(Segment::Replay(replay, range)) => {
                    self.replay = Some(replay.stream(range).boxed())
                }
                None => return Poll::Ready(Ok(None)),
            }
        }
    }

    /// Writes until all is written (`Ready(Ok)`), the socket is full or a replayed piece
    /// is being read (`Pending`), or writing fails.
    fn poll_write<T: AsyncWrite + SendFile + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        let files = io.plain_tcp().is_some();
        loop {
            if self.next.is_none() && !self.ended {
                match self.poll_piece(cx, files) {
                    Poll::Ready(Ok(Some(piece))) => self.next = Some(piece),
                    Poll::Ready(Ok(None)) => self.ended = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(WriteError::Local(e))),
                    // Being read; its waker is set.
                    Poll::Pending => {}
                }
            }
            if let Some(file) = &mut self.sending {
                let want = file.len.min(SEND_FILE_CHUNK) as usize;
                let socket = io.plain_tcp().ok_or_else(|| {
                    WriteError::Local(io::Error::other("no socket to send the spill file to"))
                })?;
                let n = ready!(send_file(socket, cx, file.file(), file.offset, want))
                    .map_err(WriteError::Io)?;
                if n == 0 {
                    let e =
                        io::Error::new(io::ErrorKind::UnexpectedEof, "the spill file ended early");
                    return Poll::Ready(Err(WriteError::Local(e)));
                }
                file.offset += n as u64;
                file.len -= n as u64;
                if file.len == 0 {
                    self.sending = None;
                }
                continue;
            }
            if self.pending.is_empty() {
                match self.next.take() {
                    Some(Piece::Bytes(piece)) => self.pending = piece,
                    Some(Piece::File(file)) => self.sending = Some(file),
                    None if self.ended => {
                        if !self.flushed {
                            ready!(Pin::new(&mut *io).poll_flush(cx)).map_err(WriteError::Io)?;
                            self.flushed = true;
                        }
                        return Poll::Ready(Ok(()));
                    }
                    None => return Poll::Pending,
                }
                continue;
            }
            // Both pieces in one system call when the stream can take them so.
            let n = match &self.next {
                Some(Piece::Bytes(next)) if io.is_write_vectored() => {
                    let both = [io::IoSlice::new(&self.pending), io::IoSlice::new(next)];
                    ready!(Pin::new(&mut *io).poll_write_vectored(cx, &both))
                }
                _ => ready!(Pin::new(&mut *io).poll_write(cx, &self.pending)),
            }
            .map_err(WriteError::Io)?;
            if n == 0 {
                return Poll::Ready(Err(WriteError::Io(io::ErrorKind::WriteZero.into())));
            }
            if n >= self.pending.len() {
                let into_next = n - self.pending.len();
                self.pending = Bytes::new();
                // Only a vectored write reaches into the next piece, and only into bytes.
                if into_next > 0 {
                    if let Some(Piece::Bytes(mut next)) = self.next.take() {
                        next.advance(into_next);
                        self.pending = next;
                    }
                }
            } else {
                self.pending.advance(n);
            }
        }
    }
}

impl<T: AsyncRead + AsyncWrite + SendFile + Unpin> Conn<T> {
    pub fn new(io: T) -> Conn<T> {
        Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether a kept connection can take a request: between exchanges the upstream has
    /// nothing to say, so anything readable (its close, above all) means it cannot.
    /// Never waits.
    pub fn is_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }

    /// Reads more into the buffer, asking for about `want` bytes; `Ok(0)` is the end of
    /// the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let want = want.clamp(MIN_READ, MAX_READ);
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Sends a request (`head` from [`request_head`], then `body`) and reads the answer's
    /// head. `head_request` says the method was HEAD (whose answer has no body).
    pub async fn exchange(
        &mut self,
        head: Vec<u8>,
        body: Vec<Segment>,
        head_request: bool,
    ) -> Result<Answer, ExchangeError> {
        let mut outgoing = RequestWriter::new(head, body);
        let mut written = false;
        let mut write_error: Option<io::Error> = None;
        let mut read_any = false;
        // How much of a partial head has been looked at: it is parsed again only once a
        // line has ended after that (or the head limit is reached), so a head that trickles
        // in a byte at a time is not parsed from its start for every byte.
        let mut scanned = 0;
        // A success that came before the request was written in full: the upstream may
        // still be reading the rest (a server that flushes its head early), so the rest
        // is written before the answer is handed on.
        let mut early: Option<Answer> = None;
        let answer = poll_fn(|cx| {
            if !written && write_error.is_none() {
                match outgoing.poll_write(&mut self.io, cx) {
                    Poll::Ready(Ok(())) => written = true,
                    // The upstream may have answered and closed: read what it said.
                    Poll::Ready(Err(WriteError::Io(e))) => write_error = Some(e),
                    Poll::Ready(Err(WriteError::Local(e))) => {
                        let e = format!("the request body could not be sent: {e}");
                        return Poll::Ready(Err(ExchangeError::Local(e)));
                    }
                    Poll::Pending => {}
                }
            }
            if let Some(answer) = early.take() {
                if written || write_error.is_some() {
                    return Poll::Ready(Ok(answer));
                }
                early = Some(answer);
                return Poll::Pending;
            }
            loop {
                // The first bytes are parsed at once: a whole head in one read is the
                // common case, and needs no search for a line's end.
                let fresh = self.buf.get(scanned..).unwrap_or_default();
                let look = !fresh.is_empty()
                    && (scanned == 0
                        || self.buf.len() >= MAX_HEAD
                        || memchr::memchr(b'\n', fresh).is_some());
                scanned = self.buf.len();
                if look {
                    read_any = true;
                    match parse_answer(&mut self.buf, head_request) {
                        Ok(Some(answer))
                            if !written
                                && write_error.is_none()
                                && !answer.status.is_client_error()
                                && !answer.status.is_server_error() =>
                        {
                            early = Some(answer);
                            return Poll::Pending;
                        }
                        Ok(Some(answer)) => return Poll::Ready(Ok(answer)),
                        // An interim answer may have been taken off the front.
                        Ok(None) => scanned = self.buf.len(),
                        Err(e) => return Poll::Ready(Err(ExchangeError::Invalid(e))),
                    }
                } else if !self.buf.is_empty() {
                    read_any = true;
                }
                let closed = |detail: String| {
                    Poll::Ready(Err(if read_any {
                        ExchangeError::Broken(format!(
                            "the upstream closed the connection in the middle of the answer's head{detail}"
                        ))
                    } else {
                        ExchangeError::Unanswered(format!(
                            "the upstream closed the connection before answering{detail}"
                        ))
                    }))
                };
                match ready!(self.poll_fill(cx, FIRST_READ)) {
                    Ok(0) => {
                        // A partial line that is already not HTTP says more than "closed".
                        if let Err(e) = parse_answer(&mut self.buf, head_request) {
                            return Poll::Ready(Err(ExchangeError::Invalid(e)));
                        }
                        let detail = write_error
                            .as_ref()
                            .map(|e| format!(" (sending: {e})"))
                            .unwrap_or_default();
                        return closed(detail);
                    }
                    Ok(_) => {}
                    // A reset after the whole request went out may come from an upstream
                    // that worked on it: not a reason to send it again.
                    Err(e) if written => {
                        return Poll::Ready(Err(ExchangeError::Broken(format!(
                            "the connection failed before an answer: {e}"
                        ))))
                    }
                    Err(e) => return closed(format!(": {e}")),
                }
            }
        })
        .await?;
        let mut answer = answer;
        if !written {
            // Answered with an error before the request was written in full: what is
            // left of it is not sent, so the connection cannot carry another request.
            answer.reusable = false;
        }
        Ok(answer)
    }

    /// The next piece of the body, or `None` at its end.
    pub fn poll_data(
        &mut self,
        decoder: &mut Decoder,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Bytes>>> {
        loop {
            if let Err(e) = skip_framing(decoder, &mut self.buf) {
                return Poll::Ready(Some(Err(e)));
            }
            let want = match *decoder {
                Decoder::Done => return Poll::Ready(None),
                Decoder::Length(left) | Decoder::Chunked(Chunk::Data(left)) => {
                    if !self.buf.is_empty() {
                        let take = left.min(self.buf.len() as u64);
                        let data = self.buf.split_to(take as usize).freeze();
                        *decoder = match *decoder {
                            Decoder::Length(_) if left == take => Decoder::Done,
                            Decoder::Length(_) => Decoder::Length(left - take),
                            _ if left == take => Decoder::Chunked(Chunk::DataEnd),
                            _ => Decoder::Chunked(Chunk::Data(left - take)),
                        };
                        // So that the end is seen with the last data when it is here.
                        if let Err(e) = skip_framing(decoder, &mut self.buf) {
                            return Poll::Ready(Some(Err(e)));
                        }
                        return Poll::Ready(Some(Ok(data)));
                    }
                    usize::try_from(left).unwrap_or(MAX_READ)
                }
                Decoder::UntilClose => {
                    if !self.buf.is_empty() {
                        return Poll::Ready(Some(Ok(self.buf.split().freeze())));
                    }
                    FIRST_READ
                }
                // Framing that needs more bytes than are here.
                Decoder::Chunked(_) => FIRST_READ,
            };
            match ready!(self.poll_fill(cx, want)) {
                Ok(0) if *decoder == Decoder::UntilClose => {
                    *decoder = Decoder::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(cut_short()))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
    }

    /// Whether nothing is left over from the exchange (bytes after the answer mean the
    /// upstream does not speak HTTP/1.1 as we do: the connection is not kept).
    pub fn is_clean(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Consumes chunked framing (size lines, CRLF after data, trailers) as far as the
/// buffered bytes allow; stops at data, at the end, or when more bytes are needed.
fn skip_framing(decoder: &mut Decoder, buf: &mut BytesMut) -> io::Result<()> {
    loop {
        let Decoder::Chunked(state) = *decoder else {
            return Ok(());
        };
        match state {
            Chunk::Data(_) => return Ok(()),
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(());
                }
                if &buf[..2] != b"\r\n" {
                    return Err(invalid("a chunk's data is not followed by CRLF"));
                }
                buf.advance(2);
                *decoder = Decoder::Chunked(Chunk::Size);
            }
            Chunk::Size => {
                let Some(line) = take_line(buf)? else {
                    return Ok(());
                };
                let size = chunk_size(&line)?;
                *decoder = Decoder::Chunked(if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                });
            }
            Chunk::Trailers(seen) => {
                let Some(line) = take_line(buf)? else {
                    return Ok(());
                };
                let seen = seen + line.len();
                if line.len() == 2 {
                    *decoder = Decoder::Done;
                } else if seen > MAX_LINE {
                    return Err(invalid("the upstream's trailers are too large"));
                } else {
                    // Trailers are not passed on: the answer's head has gone already.
                    *decoder = Decoder::Chunked(Chunk::Trailers(seen));
                }
            }
        }
    }
}

/// A CRLF-ended line from the front of `buf` (with its CRLF), if it is all there.
fn take_line(buf: &mut BytesMut) -> io::Result<Option<BytesMut>> {
    match memchr::memchr(b'\n', buf) {
        Some(end) if end == 0 || buf[end - 1] != b'\r' => {
            Err(invalid("a line of chunked framing does not end with CRLF"))
        }
        Some(end) if end >= MAX_LINE => Err(invalid("a chunk-size line is too long")),
        Some(end) => Ok(Some(buf.split_to(end + 1))),
        None if buf.len() >= MAX_LINE => Err(invalid("a chunk-size line is too long")),
        None => Ok(None),
    }
}

/// The size on a chunk-size line (`1a2b;ext=1\r\n`).
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let line = &line[..line.len() - 2];
    let mut digits = line.split(|&b| b == b';').next().unwrap_or_default();
    // Only spaces and tabs may follow the size (BWS, RFC 9112 §7.1.1): not a form feed
    // or a bare CR, which other readers of the same bytes refuse.
    while let [rest @ .., b' ' | b'\t'] = digits {
        digits = rest;
    }
    let significant = &digits[digits.iter().take_while(|&&d| d == b'0').count()..];
    if digits.is_empty() || significant.len() > 15 {
        return Err(invalid("a chunk size is missing or too large"));
    }
    let mut size = 0u64;
    for &d in significant {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err(invalid("a chunk size is not hexadecimal")),
        };
        size = size * 16 + u64::from(v);
    }
    Ok(size)
}

/// The answer at the front of `buf`, once its head is all there (1xx interim answers are
/// skipped); its head is taken off `buf`.
fn parse_answer(buf: &mut BytesMut, head_request: bool) -> Result<Option<Answer>, String> {
    #[cfg(test)]
    tests::PARSES.with(|n| n.set(n.get() + 1));
    loop {
        // Uninitialised slots: an initialised array of 100 would be written in full
        // before every parse.
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Complete(_)) => {
                return Err(format!(
                    "the upstream's answer head is over {} KiB",
                    MAX_HEAD / 1024
                ))
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(format!(
                    "the upstream's answer head is over {} KiB",
                    MAX_HEAD / 1024
                ))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("the upstream's answer is not HTTP/1: {e}")),
        };
        let code = parsed.code.unwrap_or_default();
        let status = StatusCode::from_u16(code)
            .map_err(|_| format!("the upstream answered with status {code}"))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err("the upstream switched protocols".into());
            }
            buf.advance(len);
            continue;
        }
        let version = if parsed.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        // Header names and values become slices of the head, without a copy: their
        // places are noted, then the head is split off and frozen.
        let base = buf.as_ptr() as usize;
        let count = parsed.headers.len();
        let mut places = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        for (place, h) in places.iter_mut().zip(parsed.headers.iter()) {
            let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
            let name = h.name.as_bytes();
            *place = (
                at(name),
                at(name) + name.len() as u32,
                at(h.value),
                at(h.value) + h.value.len() as u32,
            );
        }
        let head = buf.split_to(len).freeze();
        // Room for the few headers the proxy adds (request id, upstream name): a map
        // built to the exact count grows, and rehashes, on the first of them.
        let mut headers = HeaderMap::with_capacity(count + ADDED_HEADERS);
        // Whether a Transfer-Encoding or Connection header came, seen as the map is built:
        // most answers have neither, and then neither is looked up in the map.
        let (mut coded, mut connection) = (false, false);
        for &(name_start, name_end, start, end) in &places[..count] {
            let name = &head[name_start as usize..name_end as usize];
            let name = HeaderName::from_bytes(name).map_err(|_| {
                format!(
                    "the upstream sent a bad header name `{}`",
                    String::from_utf8_lossy(name)
                )
            })?;
            let value = HeaderValue::from_maybe_shared(head.slice(start as usize..end as usize))
                .map_err(|_| format!("the upstream sent a bad value for `{name}`"))?;
            coded |= name == http::header::TRANSFER_ENCODING;
            connection |= name == http::header::CONNECTION;
            headers.append(name, value);
        }
        let (decoder, framed) = framing(&headers, status, head_request, coded)?;
        let reusable = framed
            && version == Version::HTTP_11
            && !(connection && has_token(&headers, &http::header::CONNECTION, "close"));
        return Ok(Some(Answer {
            status,
            version,
            headers,
            decoder,
            reusable,
        }));
    }
}

/// How the body is framed (RFC 9112 §6.3), and whether its end is known without the
/// connection closing. `coded`: the answer has a Transfer-Encoding header.
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    head_request: bool,
    coded: bool,
) -> Result<(Decoder, bool), String> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Decoder::Done, true));
    }
    if coded {
        let codings = headers.get_all(http::header::TRANSFER_ENCODING);
        if codings.iter().any(|v| v.to_str().is_err()) {
            // Unreadable codings: the end is only known when the connection ends.
            return Ok((Decoder::UntilClose, false));
        }
        let last = codings
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|coding| !coding.is_empty());
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") => {
                // With a Content-Length too, the message could be read two ways: chunked
                // wins, and the connection is not kept (RFC 9112 §6.3, rule 3).
                let clean = !headers.contains_key(http::header::CONTENT_LENGTH);
                (Decoder::Chunked(Chunk::Size), clean)
            }
            _ => (Decoder::UntilClose, false),
        });
    }
    let mut length = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = std::str::from_utf8(part)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("the upstream sent a bad Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("the upstream sent two different Content-Lengths".into());
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => (Decoder::Done, true),
        Some(n) => (Decoder::Length(n), true),
        None => (Decoder::UntilClose, false),
    })
}

/// Whether a comma-separated header lists `token` (case-insensitive); a value that is not
/// text counts as listing it (for `Connection: close`, the safe reading).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| match v.to_str() {
        Ok(v) => v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)),
        Err(_) => true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn head(content_length: u64) -> Vec<u8> {
        let accept = HeaderValue::from_static("audio/pcm");
        request_head(
            &Method::POST,
            "/prefix",
            "/v1/audio/speech?x=1",
            b"kokoro:8880",
            &|emit| emit(&http::header::ACCEPT, &accept),
            content_length,
        )
    }

    thread_local! {
        /// Answer heads parsed on this thread (a test's runtime is its thread).
        pub(super) static PARSES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// A head that trickles in a byte at a time is parsed once a line, not once a byte:
    /// otherwise a 64 KiB head sent slowly costs 64 Ki parses of up to 64 KiB each.
    #[tokio::test]
    async fn a_head_that_trickles_in_is_parsed_once_a_line() {
        let (mut conn, mut upstream) = pair();
        let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..40 {
            answer.extend_from_slice(format!("x-header-{i}: {}\r\n", "v".repeat(50)).as_bytes());
        }
        answer.extend_from_slice(b"content-length: 2\r\n\r\nok");
        let lines = answer.iter().filter(|&&b| b == b'\n').count();
        let sender = tokio::spawn(async move {
            for byte in answer {
                upstream.write_all(&[byte]).await.unwrap();
                tokio::task::yield_now().await;
            }
            upstream
        });
        PARSES.with(|n| n.set(0));
        let answer = conn.exchange(head(0), Vec::new(), false).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers.len(), 41);
        let parses = PARSES.with(|n| n.get());
        assert!(parses <= lines + 1, "{parses} parses for {lines} lines");
        drop(sender.await.unwrap());
    }

    /// A connection, and the upstream's end of it.
    fn pair() -> (Conn<DuplexStream>, DuplexStream) {
        let (ours, theirs) = duplex(1 << 20);
        (Conn::new(ours), theirs)
    }

    /// A replay store of these pieces, 1 MiB of it in memory and the rest spilled.
    async fn replay_of<'a>(
        pieces: impl IntoIterator<Item = &'a [u8]>,
    ) -> std::sync::Arc<crate::request::replay::Replay> {
        use crate::request::replay::{MemoryBudget, ReplayLimits, ReplayWriter};
        let mut writer = ReplayWriter::new(ReplayLimits {
            memory_per_request: 1 << 20,
            budget: std::sync::Arc::new(MemoryBudget::new(1 << 20)),
            spill_dir: None,
        });
        for piece in pieces {
            writer.push(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        std::sync::Arc::new(writer.finish().await.unwrap())
    }

    impl SendFile for DuplexStream {}

    /// A TCP stream that counts the bytes written to it through `AsyncWrite`: what
    /// `sendfile` sends passes it by.
    struct Counting {
        tcp: tokio::net::TcpStream,
        written: u64,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.tcp).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, buf))?;
            self.written += n as u64;
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.tcp).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.tcp).poll_shutdown(cx)
        }
    }

    impl SendFile for Counting {
        fn plain_tcp(&self) -> Option<&tokio::net::TcpStream> {
            Some(&self.tcp)
        }
    }

    async fn body(conn: &mut Conn<DuplexStream>, decoder: &mut Decoder) -> io::Result<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(piece) = poll_fn(|cx| conn.poll_data(decoder, cx)).await {
            all.extend_from_slice(&piece?);
        }
        Ok(all)
    }

    #[test]
    fn the_request_head_is_what_goes_on_the_wire() {
        assert_eq!(
            String::from_utf8(head(12)).unwrap(),
            "POST /prefix/v1/audio/speech?x=1 HTTP/1.1\r\nhost: kokoro:8880\r\n\
             accept: audio/pcm\r\ncontent-length: 12\r\n\r\n"
        );
        assert!(is_request_target("/v1/audio/speech?x=%20"));
        for bad in ["", "/a b", "/a\r\nx: y", "/\u{e9}"] {
            assert!(!is_request_target(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_small_request_is_one_write_and_a_length_framed_answer_is_read() {
        let (mut conn, mut upstream) = pair();
        let server = tokio::spawn(async move {
            let mut request = vec![0u8; 4096];
            let n = upstream.read(&mut request).await.unwrap();
            upstream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: audio/pcm\r\ncontent-length: 5\r\n\r\nhello",
                )
                .await
                .unwrap();
            (String::from_utf8(request[..n].to_vec()).unwrap(), upstream)
        });
        let body_parts = vec![
            Segment::Bytes(Bytes::from_static(b"{\"a\":")),
            Segment::Bytes(Bytes::from_static(b"1}")),
        ];
        let mut answer = conn.exchange(head(7), body_parts, false).await.unwrap();
        let (request, _upstream) = server.await.unwrap();
        assert!(request.ends_with("\r\n\r\n{\"a\":1}"), "{request}");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.headers["content-type"], "audio/pcm");
        assert!(answer.reusable);
        assert_eq!(answer.decoder, Decoder::Length(5));
        assert_eq!(
            body(&mut conn, &mut answer.decoder).await.unwrap(),
            b"hello"
        );
        assert!(answer.decoder.is_done());
        assert!(conn.is_clean());
        assert!(conn.is_open());
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_whatever_the_pieces() {
        let wire: &[u8] =
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
            5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        for piece in [1, 2, 3, 7, wire.len()] {
            let (mut conn, mut upstream) = pair();
            let writer = tokio::spawn(async move {
                for part in wire.chunks(piece) {
                    upstream.write_all(part).await.unwrap();
                    tokio::task::yield_now().await;
                }
                upstream
            });
            let mut answer = conn.exchange(head(0), Vec::new(), false).await.unwrap();
            assert_eq!(answer.status, StatusCode::OK);
            let data = body(&mut conn, &mut answer.decoder).await.unwrap();
            assert_eq!(
                data, b"helloabcdefghijklmnopqrstuvwxyz",
                "pieces of {piece}"
            );
            assert!(conn.is_clean());
            let _upstream = writer.await.unwrap();
        }
    }

    #[tokio::test]
    async fn the_end_of_a_chunked_body_is_seen_with_its_last_data() {
        let (mut conn, mut upstream) = pair();
        upstream
            .write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
        let mut answer = conn.exchange(head(0), Vec::new(), false).await.unwrap();
        let data = poll_fn(|cx| conn.poll_data(&mut answer.decoder, cx)).await;
        assert_eq!(&data.unwrap().unwrap()[..], b"abc");
        assert!(answer.decoder.is_done());
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_but_one_read_to_close_is_not() {
        let cases: [(&[u8], Option<&[u8]>); 4] = [
            (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello", None),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
                None,
            ),
            (
                b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
                Some(b"until the end"),
            ),
            (
                b"HTTP/1.0 200 OK\r\ntransfer-encoding: gzip\r\n\r\nraw",
                Some(b"raw"),
            ),
        ];
        for (wire, expected) in cases {
            let (mut conn, mut upstream) = pair();
            upstream.write_all(wire).await.unwrap();
            drop(upstream);
            let mut answer = conn.exchange(head(0), Vec::new(), false).await.unwrap();
            let read = body(&mut conn, &mut answer.decoder).await;
            match expected {
                Some(expected) => {
                    assert_eq!(read.unwrap(), expected);
                    assert!(!answer.reusable);
                }
                None => {
                    let e = read.unwrap_err();
                    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
                }
            }
        }
    }

    #[tokio::test]
    async fn bad_answers_are_refused_with_a_reason() {
        let cases: [(&[u8], &str); 6] = [
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not HTTP/1"),
            (b"HTTP/1.1 101 Switching\r\n\r\n", "switched protocols"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
                "two different",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                "bad Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
                "two different",
            ),
            (b"HTTP/1.1 200 OK\r\nx: \x01\r\n\r\n", "not HTTP/1"),
        ];
        for (wire, reason) in cases {
            let (mut conn, mut upstream) = pair();
            upstream.write_all(wire).await.unwrap();
            match conn.exchange(head(0), Vec::new(), false).await {
                Err(ExchangeError::Invalid(e)) => assert!(e.contains(reason), "{e}"),
                Err(other) => panic!("{other}"),
                Ok(a) => panic!("accepted {:?}", a.status),
            }
        }
        let (mut conn, mut upstream) = pair();
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let wire = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        upstream.write_all(wire.as_bytes()).await.unwrap();
        match conn.exchange(head(0), Vec::new(), false).await {
            Err(ExchangeError::Invalid(e)) => assert!(e.contains("too many headers"), "{e}"),
            _ => panic!("{} headers were accepted", MAX_HEADERS + 1),
        }
        let (mut conn, mut upstream) = pair();
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}\r\n", "a".repeat(MAX_HEAD));
        let writer = tokio::spawn(async move { upstream.write_all(huge.as_bytes()).await });
        match conn.exchange(head(0), Vec::new(), false).await {
            Err(ExchangeError::Invalid(e)) => assert!(e.contains("over 64 KiB"), "{e}"),
            _ => panic!("an endless head was accepted"),
        }
        drop(conn);
        let _ = writer.await;
    }

    /// The body of a chunked answer whose framing, after the head, is `framing`; the
    /// upstream closes after it.
    async fn chunked_body(framing: &[u8]) -> io::Result<Vec<u8>> {
        let (mut conn, mut upstream) = pair();
        let mut wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        wire.extend_from_slice(framing);
        upstream.write_all(&wire).await.unwrap();
        drop(upstream);
        let mut answer = conn.exchange(head(0), Vec::new(), false).await.unwrap();
        body(&mut conn, &mut answer.decoder).await
    }

    #[tokio::test]
    async fn bad_chunked_framing_is_an_error() {
        for framing in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"5\nhello",
            b"12345678901234567\r\n",
        ] {
            let e = chunked_body(framing).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{framing:?}: {e}");
        }
    }

    #[tokio::test]
    async fn only_spaces_and_tabs_may_follow_a_chunk_size() {
        for (framing, ok) in [
            (&b"5 \t;a=1\r\nhello\r\n0\t\r\n\r\n"[..], true),
            (b"5\x0c\r\nhello\r\n0\r\n\r\n", false),
            (b"5\r\r\nhello\r\n0\r\n\r\n", false),
            (b"5\x0b;a\r\nhello\r\n0\r\n\r\n", false),
        ] {
            let read = chunked_body(framing).await;
            match read {
                Ok(data) => assert!(ok && data == b"hello", "{framing:?}"),
                Err(e) => assert!(!ok && e.kind() == io::ErrorKind::InvalidData, "{framing:?}"),
            }
        }
    }

    #[tokio::test]
    async fn answers_without_a_body_and_answers_that_close() {
        let cases: [(&[u8], bool, bool); 5] = [
            (b"HTTP/1.1 204 No Content\r\n\r\n", false, true),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true, true),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", false, false),
            (b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", false, false),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n",
                false,
                false,
            ),
        ];
        for (wire, head_request, reusable) in cases {
            let (mut conn, mut upstream) = pair();
            upstream.write_all(wire).await.unwrap();
            let mut answer = conn
                .exchange(head(0), Vec::new(), head_request)
                .await
                .unwrap();
            assert_eq!(
                answer.reusable,
                reusable,
                "{}",
                String::from_utf8_lossy(wire)
            );
            assert!(body(&mut conn, &mut answer.decoder)
                .await
                .unwrap()
                .is_empty());
        }
    }

    #[tokio::test]
    async fn an_answer_before_the_request_is_written_is_taken_and_the_connection_not_kept() {
        // A small pipe, so the request cannot be written before the upstream reads it.
        let (ours, mut upstream) = duplex(1024);
        let mut conn = Conn::new(ours);
        upstream
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!")
            .await
            .unwrap();
        let big = Segment::Bytes(Bytes::from(vec![b'x'; 1 << 20]));
        let mut answer = conn
            .exchange(head(1 << 20), vec![big], false)
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(!answer.reusable);
        assert_eq!(body(&mut conn, &mut answer.decoder).await.unwrap(), b"big!");
    }

    /// A body of small and large pieces and of replay-store ranges, partly spilled to
    /// disk, arrives whole and in order over a real socket (where pieces are written two
    /// at a time, and the spilled bytes go with `sendfile`, unread).
    #[tokio::test]
    async fn every_kind_of_segment_arrives_in_order_over_tcp() {
        let audio: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let replay = replay_of(audio.chunks(200_000)).await;
        let big = Bytes::from(vec![b'B'; COALESCE * 2]);
        let segments = vec![
            Segment::Bytes(Bytes::from_static(b"<small>")),
            Segment::Replay(replay.clone(), 10..2_500_000),
            Segment::Bytes(big.clone()),
            Segment::Replay(replay.clone(), 2_500_000..3_000_000),
            Segment::Bytes(Bytes::from_static(b"<end>")),
        ];
        let mut expected = b"<small>".to_vec();
        expected.extend_from_slice(&audio[10..2_500_000]);
        expected.extend_from_slice(&big);
        expected.extend_from_slice(&audio[2_500_000..]);
        expected.extend_from_slice(b"<end>");
        let len = expected.len() as u64;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut piece = vec![0u8; 64 * 1024];
            let body_start = loop {
                let n = socket.read(&mut piece).await.unwrap();
                assert!(n > 0, "closed early");
                got.extend_from_slice(&piece[..n]);
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
            };
            while ((got.len() - body_start) as u64) < len {
                let n = socket.read(&mut piece).await.unwrap();
                assert!(n > 0, "closed early");
                got.extend_from_slice(&piece[..n]);
            }
            socket
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            got.split_off(body_start)
        });
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let mut conn = Conn::new(Counting { tcp, written: 0 });
        let answer = conn.exchange(head(len), segments, false).await.unwrap();
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
        assert!(answer.reusable);
        let got = upstream.await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the body arrived changed");
        // The replay kept five whole 200,000-byte pieces in its 1 MiB of memory; the
        // rest was spilled, and went by `sendfile`, not through `AsyncWrite`.
        let spilled = 3_000_000 - 5 * 200_000;
        assert_eq!(conn.io.written, head(len).len() as u64 + len - spilled);
    }

    /// A server that sends a success head before it has read the upload (and its body
    /// only after) still gets the whole upload; then the answer is handed on.
    #[tokio::test]
    async fn an_early_success_gets_the_rest_of_the_upload_first() {
        let (ours, mut upstream) = duplex(1024);
        let mut conn = Conn::new(ours);
        let size = 1 << 20;
        let server = tokio::spawn(async move {
            upstream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
                .await
                .unwrap();
            let mut got = 0;
            let mut piece = vec![0u8; 8192];
            while got < size + head(size as u64).len() {
                let n = upstream.read(&mut piece).await.unwrap();
                assert!(n > 0);
                got += n;
            }
            upstream.write_all(b"ok").await.unwrap();
            upstream
        });
        let big = Segment::Bytes(Bytes::from(vec![b'x'; size]));
        let exchange = conn.exchange(head(size as u64), vec![big], false);
        let mut answer = tokio::time::timeout(std::time::Duration::from_secs(5), exchange)
            .await
            .expect("the upload was not finished")
            .unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.reusable, "the request was written in full");
        assert_eq!(body(&mut conn, &mut answer.decoder).await.unwrap(), b"ok");
        let _upstream = server.await.unwrap();
    }

    #[tokio::test]
    async fn framing_headers_that_are_not_text_are_read_the_safe_way() {
        let cases: [&[u8]; 2] = [
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: \xffgzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close, \xff\r\n\r\n",
        ];
        for wire in cases {
            let (mut conn, mut upstream) = pair();
            upstream.write_all(wire).await.unwrap();
            let answer = conn.exchange(head(0), Vec::new(), false).await.unwrap();
            assert!(!answer.reusable, "{}", String::from_utf8_lossy(wire));
        }
    }

    #[tokio::test]
    async fn a_head_over_the_limit_is_refused_even_when_it_arrives_whole() {
        let (mut conn, mut upstream) = pair();
        let value = "a".repeat(MAX_HEAD / 2 + 100);
        let wire = format!("HTTP/1.1 200 OK\r\nx: {value}\r\ny: {value}\r\n\r\n");
        let (first, second) = wire.as_bytes().split_at(MAX_HEAD - 10);
        let (first, second) = (first.to_vec(), second.to_vec());
        let writer = tokio::spawn(async move {
            upstream.write_all(&first).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            upstream.write_all(&second).await.unwrap();
            upstream
        });
        match conn.exchange(head(0), Vec::new(), false).await {
            Err(ExchangeError::Invalid(e)) => assert!(e.contains("over 64 KiB"), "{e}"),
            _ => panic!("a head over the limit was accepted"),
        }
        let _upstream = writer.await.unwrap();
    }

    #[tokio::test]
    async fn chunk_sizes_with_leading_zeros_are_read() {
        let (mut conn, mut upstream) = pair();
        upstream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n00000000000000005\r\nhello\r\n0\r\n\r\n")
            .await
            .unwrap();
        let mut answer = conn.exchange(head(0), Vec::new(), false).await.unwrap();
        assert_eq!(
            body(&mut conn, &mut answer.decoder).await.unwrap(),
            b"hello"
        );
    }

    /// A body whose pieces fall short of the Content-Length sent is an error, not a
    /// request the upstream waits on for the rest.
    #[tokio::test]
    async fn a_body_that_does_not_match_its_length_fails_at_once() {
        let replay = replay_of([&b"0123456789"[..]]).await;
        let (mut conn, _upstream) = pair();
        let short = Segment::Replay(replay, 0..100);
        match conn.exchange(head(100), vec![short], false).await {
            Err(ExchangeError::Local(e)) => assert!(e.contains("did not add up"), "{e}"),
            other => panic!("{:?}", other.map(|a| a.status)),
        }
    }

    #[test]
    fn a_get_without_a_body_says_nothing_of_one() {
        let get = request_head(&Method::GET, "", "/health", b"h", &|_| {}, 0);
        assert_eq!(get, b"GET /health HTTP/1.1\r\nhost: h\r\n\r\n");
        let post = request_head(&Method::POST, "", "/x", b"h", &|_| {}, 0);
        assert!(post.ends_with(b"content-length: 0\r\n\r\n"));
    }

    #[tokio::test]
    async fn a_connection_closed_before_an_answer_says_so() {
        let (mut conn, upstream) = pair();
        drop(upstream);
        match conn.exchange(head(0), Vec::new(), false).await {
            Err(ExchangeError::Unanswered(e)) => assert!(e.contains("before answering"), "{e}"),
            other => panic!("{:?}", other.map(|a| a.status)),
        }
        let (mut conn, mut upstream) = pair();
        upstream.write_all(b"HTTP/1.1 200 O").await.unwrap();
        drop(upstream);
        match conn.exchange(head(0), Vec::new(), false).await {
            Err(ExchangeError::Broken(e)) => assert!(e.contains("middle"), "{e}"),
            other => panic!("{:?}", other.map(|a| a.status)),
        }
    }

    #[tokio::test]
    async fn a_kept_connection_that_was_closed_or_spoke_out_of_turn_is_not_open() {
        let (mut conn, upstream) = pair();
        assert!(conn.is_open());
        drop(upstream);
        tokio::task::yield_now().await;
        assert!(!conn.is_open());
        let (mut conn, mut upstream) = pair();
        upstream.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert!(!conn.is_open());
    }

    #[tokio::test]
    async fn a_big_length_framed_body_comes_in_pieces_without_a_copy_of_the_head() {
        let (mut conn, mut upstream) = pair();
        let payload: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let expected = payload.clone();
        let writer = tokio::spawn(async move {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                payload.len()
            );
            upstream.write_all(head.as_bytes()).await.unwrap();
            for piece in payload.chunks(70_000) {
                upstream.write_all(piece).await.unwrap();
            }
            upstream
        });
        let mut answer = conn.exchange(head(0), Vec::new(), false).await.unwrap();
        assert_eq!(answer.decoder.exact_len(), Some(600_000));
        assert_eq!(
            body(&mut conn, &mut answer.decoder).await.unwrap(),
            expected
        );
        let _upstream = writer.await.unwrap();
    }
}
