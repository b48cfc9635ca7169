//! A streaming `multipart/form-data` reader (RFC 7578 / RFC 2046) that does not copy part
//! data.
//!
//! Part data is handed out as slices of the chunks the body arrived in: a 25 MiB upload
//! goes to the replay store without one more pass over its bytes. Only what must be seen
//! whole is copied — a part's header block, the line after a boundary, and at most a
//! delimiter's length of bytes when a chunk ends in what may be the start of one.
//!
//! One fact keeps the delimiter search simple: a delimiter is `CRLF--boundary`, and a
//! boundary cannot contain CR or LF, so CR appears in it only at its first byte. A chunk
//! that ends in a partial delimiter therefore ends in it from its last CR, and a partial
//! delimiter carried over that turns out not to be one cannot hide the start of another.

use std::pin::Pin;

use bytes::{Buf, Bytes};
use futures_util::stream::{Stream, StreamExt};
use memchr::memmem;

/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY: usize = 70;
/// Most headers one part may have.
const MAX_PART_HEADERS: usize = 32;
/// Longest line after a boundary (transport padding before its CRLF).
const MAX_BOUNDARY_LINE: usize = 1024;

/// The boundary of a `multipart/form-data` Content-Type.
#[derive(Debug, PartialEq, Eq)]
pub enum BoundaryError {
    /// Not `multipart/form-data` at all.
    NotFormData,
    /// `multipart/form-data` without a usable boundary parameter.
    NoBoundary,
}

/// Reads the boundary out of a Content-Type header value.
pub fn parse_boundary(content_type: &str) -> Result<String, BoundaryError> {
    let mut params = ParamIter::new(content_type);
    let media = params.head.trim();
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return Err(BoundaryError::NotFormData);
    }
    let boundary = params
        .find(|(name, _)| name.eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value)
        .ok_or(BoundaryError::NoBoundary)?;
    let usable = (1..=MAX_BOUNDARY).contains(&boundary.len())
        && !boundary.bytes().any(|b| b == b'\r' || b == b'\n');
    if usable {
        Ok(boundary)
    } else {
        Err(BoundaryError::NoBoundary)
    }
}

/// `value; name=token; name="quoted \" string"` → the head, then (name, unquoted value).
struct ParamIter<'a> {
    head: &'a str,
    rest: &'a str,
}

impl<'a> ParamIter<'a> {
    fn new(s: &'a str) -> ParamIter<'a> {
        let (head, rest) = s.split_once(';').unwrap_or((s, ""));
        ParamIter { head, rest }
    }
}

impl Iterator for ParamIter<'_> {
    type Item = (String, String);

    fn next(&mut self) -> Option<(String, String)> {
        loop {
            let s = self.rest.trim_start_matches([' ', '\t', ';']);
            if s.is_empty() {
                self.rest = s;
                return None;
            }
            let (name, after) = match s.find(['=', ';']) {
                Some(i) if s.as_bytes()[i] == b'=' => (&s[..i], &s[i + 1..]),
                // A bare word without a value: skipped.
                Some(i) => {
                    self.rest = &s[i..];
                    continue;
                }
                None => {
                    self.rest = "";
                    return None;
                }
            };
            let after = after.trim_start_matches([' ', '\t']);
            let (value, rest) = if let Some(quoted) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = quoted.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        '\\' => {
                            if let Some((_, escaped)) = chars.next() {
                                value.push(escaped);
                            }
                        }
                        c => value.push(c),
                    }
                }
                (value, &quoted[end.min(quoted.len())..])
            } else {
                let end = after.find(';').unwrap_or(after.len());
                (after[..end].trim_end().to_string(), &after[end..])
            };
            self.rest = rest;
            return Some((name.trim().to_string(), value));
        }
    }
}

/// Why a body is not a readable multipart body.
#[derive(Debug)]
pub enum MultipartError<E> {
    /// The body could not be read.
    Read(E),
    /// A part's header block (or the preamble) did not end within the limit.
    Unparsed(u64),
    /// Anything else, described.
    Malformed(String),
}

/// A part's start: its name, whether it is a file, and its header block as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartHead {
    pub name: String,
    pub file_name: Option<String>,
    /// The header lines as the client sent them, with the blank line that ends them.
    pub raw: Bytes,
}

/// What the reader found next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A new part begins (the previous one, if any, has ended).
    Part(PartHead),
    /// The next bytes of the current part's content.
    Data(Bytes),
    /// The closing delimiter was seen and the body has ended.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter: bytes are read and dropped.
    Preamble,
    /// After a delimiter: `--` (the end) or padding and CRLF (a part follows).
    BoundaryLine,
    Headers,
    Content,
    /// After the closing delimiter: read to the end of the body and dropped.
    Epilogue,
    Done,
}

/// Reads a multipart body from a stream of chunks; see the module documentation.
pub struct Multipart<S> {
    stream: Pin<Box<S>>,
    /// `CRLF--boundary`.
    delimiter: Vec<u8>,
    finder: memmem::Finder<'static>,
    state: State,
    /// The unread rest of the current chunk.
    input: Bytes,
    /// Bytes held across chunks: a partial delimiter (preamble, content), the boundary
    /// line, or a header block.
    held: Vec<u8>,
    /// Bytes read since the parser last produced something, for `max_unparsed`.
    unparsed: u64,
    max_unparsed: u64,
    /// Bytes taken from the stream so far.
    read: u64,
}

impl<S, E> Multipart<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    /// `max_unparsed`: the longest preamble or part header block accepted.
    pub fn new(stream: S, boundary: &str, max_unparsed: u64) -> Multipart<S> {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        let finder = memmem::Finder::new(&delimiter).into_owned();
        Multipart {
            stream: Box::pin(stream),
            delimiter,
            finder,
            state: State::Preamble,
            input: Bytes::new(),
            // The first delimiter may open the body without a CRLF before it: as if one
            // had been read.
            held: b"\r\n".to_vec(),
            unparsed: 0,
            max_unparsed,
            read: 0,
        }
    }

    /// Bytes taken from the body so far: all of it once [`Event::End`] was returned.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// The next part, piece of content, or the end.
    pub async fn next(&mut self) -> Result<Event, MultipartError<E>> {
        loop {
            if self.state == State::Done {
                return Ok(Event::End);
            }
            if self.input.is_empty() {
                match self.stream.next().await {
                    Some(Ok(chunk)) => {
                        self.read += chunk.len() as u64;
                        self.input = chunk;
                        continue;
                    }
                    Some(Err(e)) => return Err(MultipartError::Read(e)),
                    None if self.state == State::Epilogue => {
                        self.state = State::Done;
                        return Ok(Event::End);
                    }
                    None => {
                        return Err(MultipartError::Malformed(
                            "the body ended before the closing boundary".into(),
                        ))
                    }
                }
            }
            let event = match self.state {
                State::Preamble => {
                    // What a preamble holds is dropped; only its length counts.
                    let before = self.input.len() + self.held.len();
                    self.scan();
                    self.unparsed += (before - self.input.len() - self.held.len()) as u64;
                    self.check_unparsed()?;
                    None
                }
                State::Content => self.scan().map(Event::Data),
                State::BoundaryLine => self.boundary_line()?,
                State::Headers => self.headers()?,
                State::Epilogue => {
                    self.input.clear();
                    None
                }
                State::Done => None,
            };
            if let Some(event) = event {
                self.unparsed = 0;
                return Ok(event);
            }
        }
    }

    fn check_unparsed(&self) -> Result<(), MultipartError<E>> {
        if self.unparsed > self.max_unparsed {
            Err(MultipartError::Unparsed(self.max_unparsed))
        } else {
            Ok(())
        }
    }

    /// Content (or preamble) up to the next delimiter. Returns the bytes that are surely
    /// content; on a delimiter moves to [`State::BoundaryLine`].
    fn scan(&mut self) -> Option<Bytes> {
        let d = self.delimiter.len();
        if !self.held.is_empty() {
            // `held` is a proper prefix of the delimiter: does this chunk complete it?
            let at = self.held.len();
            let n = (d - at).min(self.input.len());
            if self.input[..n] == self.delimiter[at..at + n] {
                self.input.advance(n);
                if at + n == d {
                    self.held.clear();
                    self.state = State::BoundaryLine;
                } else {
                    self.held.extend_from_slice(&self.delimiter[at..at + n]);
                }
                return None;
            }
            // Not a delimiter after all: what was held is content.
            return Some(Bytes::from(std::mem::take(&mut self.held)));
        }
        if let Some(i) = self.finder.find(&self.input) {
            let content = self.input.split_to(i);
            self.input.advance(d);
            self.state = State::BoundaryLine;
            return (!content.is_empty()).then_some(content);
        }
        // No delimiter: everything is content except a possible start of one at the end.
        let window = self.input.len().saturating_sub(d - 1);
        let cut = memchr::memrchr(b'\r', &self.input[window..])
            .map(|j| window + j)
            .filter(|&j| self.delimiter.starts_with(&self.input[j..]))
            .unwrap_or(self.input.len());
        let content = self.input.split_to(cut);
        self.held.extend_from_slice(&self.input);
        self.input.clear();
        (!content.is_empty()).then_some(content)
    }

    /// The rest of a delimiter's line: `--` ends the body; optional spaces or tabs and
    /// CRLF start a part.
    fn boundary_line(&mut self) -> Result<Option<Event>, MultipartError<E>> {
        let take = match memchr::memchr(b'\n', &self.input) {
            Some(i) => i + 1,
            None => self.input.len(),
        };
        self.held.extend_from_slice(&self.input[..take]);
        self.input.advance(take);
        if self.held.starts_with(b"--") {
            // The closing delimiter; whatever follows is epilogue.
            self.held.clear();
            self.state = State::Epilogue;
            return Ok(None);
        }
        if self.held == b"-" {
            return Ok(None);
        }
        if let Some(line) = self.held.strip_suffix(b"\n") {
            let padding = line.strip_suffix(b"\r").ok_or_else(|| {
                MultipartError::Malformed("a boundary line does not end in CRLF".into())
            })?;
            if !padding.iter().all(|&b| b == b' ' || b == b'\t') {
                return Err(MultipartError::Malformed(
                    "unexpected bytes after a boundary".into(),
                ));
            }
            self.held.clear();
            self.state = State::Headers;
            return Ok(None);
        }
        if self.held.len() > MAX_BOUNDARY_LINE {
            return Err(MultipartError::Malformed(
                "unexpected bytes after a boundary".into(),
            ));
        }
        Ok(None)
    }

    /// A part's header block, up to and with the blank line that ends it.
    fn headers(&mut self) -> Result<Option<Event>, MultipartError<E>> {
        let raw = if self.held.is_empty() {
            // The common case: the whole block is in this chunk, and is cut out of it.
            match block_end(&self.input, 0) {
                Some(end) => self.input.split_to(end),
                None => {
                    self.unparsed += self.input.len() as u64;
                    self.held.extend_from_slice(&self.input);
                    self.input.clear();
                    self.check_unparsed()?;
                    return Ok(None);
                }
            }
        } else {
            // The blank line may straddle the chunks: look from just before the new bytes.
            let from = self.held.len().saturating_sub(3);
            self.held.extend_from_slice(&self.input);
            self.unparsed += self.input.len() as u64;
            self.input.clear();
            match block_end(&self.held, from) {
                Some(end) => {
                    let mut held = Bytes::from(std::mem::take(&mut self.held));
                    self.input = held.split_off(end);
                    held
                }
                None => {
                    self.check_unparsed()?;
                    return Ok(None);
                }
            }
        };
        let head = part_head(raw)?;
        self.state = State::Content;
        Ok(Some(Event::Part(head)))
    }
}

/// Where a header block ends (just past its blank line), if it does in `buf`; the blank
/// line is looked for from `from` on (a block without headers is the blank line alone).
fn block_end(buf: &[u8], from: usize) -> Option<usize> {
    if buf.starts_with(b"\r\n") {
        return Some(2);
    }
    memmem::find(&buf[from..], b"\r\n\r\n").map(|i| from + i + 4)
}

/// Parses a part's header block: it must name the part in a `form-data` disposition.
fn part_head<E>(raw: Bytes) -> Result<PartHead, MultipartError<E>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_PART_HEADERS];
    let parsed = match httparse::parse_headers(&raw, &mut headers) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        Ok(httparse::Status::Partial) => {
            return Err(MultipartError::Malformed(
                "a part's header block is incomplete".into(),
            ))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(MultipartError::Malformed(format!(
                "a part has more than {MAX_PART_HEADERS} headers"
            )))
        }
        Err(e) => {
            return Err(MultipartError::Malformed(format!(
                "a part's headers are invalid: {e}"
            )))
        }
    };
    let disposition = parsed
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-disposition"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .ok_or_else(|| {
            MultipartError::Malformed("a part has no readable Content-Disposition".into())
        })?;
    let params = ParamIter::new(disposition);
    if !params.head.trim().eq_ignore_ascii_case("form-data") {
        return Err(MultipartError::Malformed(
            "a part's Content-Disposition is not form-data".into(),
        ));
    }
    let (mut name, mut file_name) = (None, None);
    for (key, value) in params {
        if key.eq_ignore_ascii_case("name") {
            name.get_or_insert(value);
        } else if key.eq_ignore_ascii_case("filename") || key.eq_ignore_ascii_case("filename*") {
            file_name.get_or_insert(value);
        }
    }
    let name = name.ok_or_else(|| {
        MultipartError::Malformed("a part's Content-Disposition has no name".into())
    })?;
    Ok(PartHead {
        name,
        file_name,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    const CT: &str = "multipart/form-data; boundary=B0UND";

    /// Every event of `body` delivered in pieces of `piece` bytes; contents joined.
    async fn events(body: &[u8], piece: usize) -> Result<Vec<(String, Vec<u8>)>, String> {
        let pieces: Vec<Result<Bytes, Infallible>> = body
            .chunks(piece.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let mut mp = Multipart::new(futures_util::stream::iter(pieces), "B0UND", 1 << 16);
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        loop {
            match mp.next().await {
                Ok(Event::Part(h)) => out.push((h.name, Vec::new())),
                Ok(Event::Data(d)) => match out.last_mut() {
                    Some(last) => last.1.extend_from_slice(&d),
                    None => return Err("data before a part".into()),
                },
                Ok(Event::End) => return Ok(out),
                Err(MultipartError::Read(never)) => match never {},
                Err(MultipartError::Unparsed(n)) => return Err(format!("unparsed {n}")),
                Err(MultipartError::Malformed(m)) => return Err(m),
            }
        }
    }

    fn form(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in parts {
            out.extend_from_slice(
                format!("--B0UND\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                    .as_bytes(),
            );
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--B0UND--\r\n");
        out
    }

    #[test]
    fn boundaries_are_read_from_the_content_type() {
        assert_eq!(parse_boundary(CT).as_deref(), Ok("B0UND"));
        assert_eq!(
            parse_boundary("Multipart/Form-Data; charset=utf-8; BOUNDARY=\"a b;c\"").as_deref(),
            Ok("a b;c")
        );
        assert_eq!(
            parse_boundary("multipart/form-data"),
            Err(BoundaryError::NoBoundary)
        );
        assert_eq!(
            parse_boundary("multipart/form-data; boundary=\"\""),
            Err(BoundaryError::NoBoundary)
        );
        let long = format!("multipart/form-data; boundary={}", "x".repeat(71));
        assert_eq!(parse_boundary(&long), Err(BoundaryError::NoBoundary));
        assert_eq!(
            parse_boundary("multipart/mixed; boundary=x"),
            Err(BoundaryError::NotFormData)
        );
        assert_eq!(
            parse_boundary("application/json"),
            Err(BoundaryError::NotFormData)
        );
    }

    #[tokio::test]
    async fn parts_are_the_same_whatever_the_piece_size() {
        // Content full of near-delimiters: CRLF, CRLF--, CRLF--B0UN, a CR at the end.
        let tricky = b"a\r\nb\r\n--c\r\n--B0UNx\r\n--B0UN\r\r\n-\r".repeat(50);
        let body = form(&[("model", b"whisper-1"), ("file", &tricky), ("e", b"")]);
        let want = vec![
            ("model".to_string(), b"whisper-1".to_vec()),
            ("file".to_string(), tricky.clone()),
            ("e".to_string(), Vec::new()),
        ];
        for piece in [1, 2, 3, 5, 7, 8, 9, 13, 64, 1000, body.len()] {
            assert_eq!(
                events(&body, piece).await,
                Ok(want.clone()),
                "piece {piece}"
            );
        }
    }

    #[tokio::test]
    async fn content_is_handed_out_without_a_copy() {
        let big = vec![7u8; 100_000];
        let body = form(&[("file", &big)]);
        let chunk = Bytes::from(body);
        let range = chunk.as_ptr_range();
        let stream = futures_util::stream::iter([Ok::<_, Infallible>(chunk.clone())]);
        let mut mp = Multipart::new(stream, "B0UND", 1 << 16);
        assert!(matches!(mp.next().await, Ok(Event::Part(_))));
        let Ok(Event::Data(data)) = mp.next().await else {
            panic!("content expected")
        };
        assert_eq!(data.len(), big.len());
        assert!(range.contains(&data.as_ptr()), "a slice of the chunk");
    }

    #[tokio::test]
    async fn preamble_padding_and_epilogue_are_skipped() {
        let body = b"preamble\r\n--B0UND \t\r\nContent-Disposition: form-data; name=\"a\"; filename=\"x \\\"y\\\".wav\"\r\nContent-Type: audio/wav\r\n\r\n1\r\n--B0UND--\r\nepilogue";
        for piece in [1, 4, body.len()] {
            assert_eq!(
                events(body, piece).await,
                Ok(vec![("a".to_string(), b"1".to_vec())])
            );
        }
        let stream = futures_util::stream::iter([Ok::<_, Infallible>(Bytes::from_static(body))]);
        let mut mp = Multipart::new(stream, "B0UND", 1 << 16);
        let Ok(Event::Part(head)) = mp.next().await else {
            panic!()
        };
        assert_eq!(head.file_name.as_deref(), Some("x \"y\".wav"));
        assert!(head.raw.starts_with(b"Content-Disposition: "));
        assert!(head.raw.ends_with(b"audio/wav\r\n\r\n"));
    }

    #[tokio::test]
    async fn broken_bodies_are_errors() {
        let good = form(&[("model", b"m")]);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (good[..good.len() - 4].to_vec(), "ended before"),
            (b"no boundary at all".to_vec(), "ended before"),
            (
                b"--B0UND\r\nX: y\r\n\r\n1\r\n--B0UND--".to_vec(),
                "Content-Disposition",
            ),
            (
                b"--B0UND\r\nContent-Disposition: form-data\r\n\r\n1\r\n--B0UND--".to_vec(),
                "no name",
            ),
            (
                b"--B0UND\r\nContent-Disposition: attachment; name=a\r\n\r\n--B0UND--".to_vec(),
                "not form-data",
            ),
            (b"--B0UNDx\r\n".to_vec(), "after a boundary"),
            (b"--B0UND\n".to_vec(), "CRLF"),
            (
                b"--B0UND\r\nBad Header\r\n\r\n--B0UND--".to_vec(),
                "invalid",
            ),
        ];
        for (body, want) in cases {
            for piece in [1, 3, body.len()] {
                let e = events(&body, piece).await.unwrap_err();
                assert!(
                    e.contains(want),
                    "{e} for {:?}",
                    String::from_utf8_lossy(&body)
                );
            }
        }
    }

    #[tokio::test]
    async fn endless_headers_and_preamble_hit_the_limit() {
        let mut body = b"--B0UND\r\nContent-Disposition: form-data; name=\"a\"\r\nX: ".to_vec();
        body.extend(std::iter::repeat_n(b'a', 70_000));
        assert_eq!(events(&body, 4096).await, Err("unparsed 65536".into()));
        assert_eq!(
            events(&body, body.len()).await,
            Err("unparsed 65536".into())
        );
        let preamble = vec![b'p'; 70_000];
        assert_eq!(events(&preamble, 1000).await, Err("unparsed 65536".into()));
    }

    /// A small deterministic generator: the cases are the same on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// The same forms, read by multer (the crate the tests' upstreams parse with) and by
    /// this reader in random pieces, give the same parts.
    #[tokio::test]
    async fn agrees_with_multer_on_random_forms() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..300 {
            let boundary = format!("b-{}", rng.next() % 100_000);
            let delimiter = format!("\r\n--{boundary}");
            let mut body = Vec::new();
            let mut want = Vec::new();
            for p in 0..1 + rng.below(4) {
                let name = format!("f{p}");
                // Content made of fragments of the delimiter and plain bytes.
                let mut content = Vec::new();
                for _ in 0..rng.below(40) {
                    match rng.below(3) {
                        0 => content
                            .extend_from_slice(&delimiter.as_bytes()[..rng.below(delimiter.len())]),
                        1 => content.push(b'\r'),
                        _ => content.extend((0..rng.below(300)).map(|i| (i * 7) as u8 | 1)),
                    }
                }
                let file = rng.below(2) == 0;
                body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                let disposition = if file {
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n")
                } else {
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n")
                };
                body.extend_from_slice(disposition.as_bytes());
                body.extend_from_slice(&content);
                body.extend_from_slice(b"\r\n");
                want.push((name, file, content));
            }
            body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());

            let whole = Bytes::from(body.clone());
            let stream = futures_util::stream::iter([Ok::<_, Infallible>(whole)]);
            let mut reference = multer::Multipart::new(stream, boundary.clone());
            let mut theirs = Vec::new();
            while let Some(field) = reference.next_field().await.unwrap() {
                let name = field.name().unwrap_or_default().to_string();
                let file = field.file_name().is_some();
                theirs.push((name, file, field.bytes().await.unwrap().to_vec()));
            }
            assert_eq!(theirs, want, "multer, case {case}");

            let mut pieces = Vec::new();
            let mut at = 0;
            while at < body.len() {
                let to = (at + 1 + rng.below(2 * delimiter.len())).min(body.len());
                pieces.push(Ok::<_, Infallible>(Bytes::copy_from_slice(&body[at..to])));
                at = to;
            }
            let mut ours = Multipart::new(futures_util::stream::iter(pieces), &boundary, 1 << 16);
            let mut got: Vec<(String, bool, Vec<u8>)> = Vec::new();
            loop {
                match ours.next().await {
                    Ok(Event::Part(h)) => got.push((h.name, h.file_name.is_some(), Vec::new())),
                    Ok(Event::Data(d)) => got.last_mut().unwrap().2.extend_from_slice(&d),
                    Ok(Event::End) => break,
                    Err(e) => panic!("case {case}: {e:?}"),
                }
            }
            assert_eq!(got, want, "ours, case {case}");
        }
    }
}
