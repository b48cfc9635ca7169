//! Intake: reading a client's request body, within limits, into a [`Payload`].
//!
//! Every body is read to its end before routing, because the fields that decide the route
//! may come last (openai-node sends the file part first, chunked, with no Content-Length).
//! While it is read: the size limit is enforced on the bytes as they arrive (413 as soon as
//! it is crossed, or at once from Content-Length), a stalled client is cut off, multipart is
//! parsed by [`crate::request::multipart`] with file parts going straight to the [`crate::request::replay::Replay`] store
//! (slices of the chunks as they arrived, not copies), and only the small text parts and
//! JSON bodies are held in memory.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, Stream};
use http::{header, HeaderMap, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use serde_json::Value;

use crate::body::BoxError;
use crate::error::ApiError;
use crate::request::multipart::{self, BoundaryError, Event, Multipart, MultipartError, PartHead};
use crate::request::payload::{FormBody, FormPart, JsonBody, JsonObject, PartValue, Payload};
use crate::request::replay::{ReplayLimits, ReplayWriter};

/// Text parts (model, prompt, …) are held in memory: each gets this much at most.
pub const MAX_TEXT_PART_BYTES: usize = 64 * 1024;
/// …and all of them together this much.
pub const MAX_TEXT_TOTAL_BYTES: usize = 1024 * 1024;
/// More parts than this is not an upload, it is an attack.
pub const MAX_PARTS: usize = 1000;
/// Longest preamble or part header block: a header block is held whole until its end is
/// found, so it gets a limit (and a preamble that long is not a form).
pub const MAX_UNPARSED_BYTES: u64 = 1024 * 1024;

/// Fields that are read for routing: sent twice, the upstream might read the other copy.
const SINGLE_VALUED: [&str; 4] = ["model", "stream", "response_format", "file"];

#[derive(Debug, Clone)]
pub struct IntakeLimits {
    pub max_body_bytes: u64,
    pub max_json_bytes: u64,
    /// Longest pause between two pieces of the body.
    pub idle_timeout: Duration,
    pub replay: ReplayLimits,
}

/// Why a request body was refused.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("Maximum content size limit ({limit}) exceeded ({read} bytes read)")]
    TooLarge { limit: u64, read: u64 },
    #[error("{expected}")]
    UnsupportedMediaType { expected: &'static str },
    #[error("{message}")]
    Malformed {
        message: String,
        param: Option<&'static str>,
    },
    #[error("you must provide a {param} parameter")]
    Missing { param: &'static str },
    #[error("the client sent nothing for {0:?}")]
    Stalled(Duration),
    #[error("reading the request body failed: {0}")]
    ClientRead(#[source] BoxError),
    #[error("storing the request body failed: {0}")]
    Replay(#[source] std::io::Error),
}

impl IntakeError {
    fn malformed(message: impl Into<String>) -> IntakeError {
        IntakeError::Malformed {
            message: message.into(),
            param: None,
        }
    }

    pub fn api_error(&self) -> ApiError {
        let message = self.to_string();
        match self {
            IntakeError::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "server_error", message)
            }
            IntakeError::UnsupportedMediaType { .. } => {
                ApiError::invalid_request(StatusCode::UNSUPPORTED_MEDIA_TYPE, message)
            }
            IntakeError::Malformed { param, .. } => {
                let e = ApiError::invalid_request(StatusCode::BAD_REQUEST, message);
                match param {
                    Some(p) => e.with_param(*p),
                    None => e,
                }
            }
            IntakeError::Missing { param } => {
                ApiError::invalid_request(StatusCode::BAD_REQUEST, message).with_param(*param)
            }
            IntakeError::Stalled(_) => {
                ApiError::invalid_request(StatusCode::REQUEST_TIMEOUT, message)
                    .with_should_retry(false)
            }
            IntakeError::ClientRead(_) => {
                ApiError::invalid_request(StatusCode::BAD_REQUEST, message)
            }
            IntakeError::Replay(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
            }
        }
    }
}

/// The client's request body, noting whether it was read to its end: an answer given
/// before that closes the connection (`Connection: close`, and the server's lingering
/// close), since the rest of the body is still on its way and cannot be told from the
/// next request.
pub struct TrackedBody<B> {
    body: B,
    ended: bool,
}

impl<B: Body + Unpin> TrackedBody<B> {
    pub fn new(body: B) -> TrackedBody<B> {
        let ended = body.is_end_stream();
        TrackedBody { body, ended }
    }

    /// Whether every byte of the body was read (or there was none).
    pub fn ended(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A body read within the size limit and the idle timeout.
struct Limited<B> {
    body: B,
    read: u64,
    limit: u64,
    idle: Duration,
}

impl<B> Limited<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn new(body: B, headers: &HeaderMap, limit: u64, idle: Duration) -> Result<Self, IntakeError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(n) if n > limit => Err(IntakeError::TooLarge { limit, read: 0 }),
            _ => Ok(Limited {
                body,
                read: 0,
                limit,
                idle,
            }),
        }
    }

    async fn chunk(&mut self) -> Result<Option<Bytes>, IntakeError> {
        loop {
            let frame = match tokio::time::timeout(self.idle, self.body.frame()).await {
                Err(_) => return Err(IntakeError::Stalled(self.idle)),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => return Err(IntakeError::ClientRead(e.into())),
                Ok(Some(Ok(frame))) => frame,
            };
            // Trailers carry nothing the API uses.
            if let Ok(data) = frame.into_data() {
                self.read += data.len() as u64;
                if self.read > self.limit {
                    return Err(IntakeError::TooLarge {
                        limit: self.limit,
                        read: self.read,
                    });
                }
                return Ok(Some(data));
            }
        }
    }

    fn into_stream(self) -> impl Stream<Item = Result<Bytes, IntakeError>> + Send
    where
        B: Send,
    {
        stream::try_unfold(self, |mut body| async move {
            Ok(body.chunk().await?.map(|chunk| (chunk, body)))
        })
    }
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::CONTENT_TYPE)?.to_str().ok()
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    content_type(headers).map(|ct| {
        ct.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    })
}

/// Reads a speech request: a JSON object with a string `model` and a `voice`.
pub async fn read_json<B>(
    body: B,
    headers: &HeaderMap,
    limits: &IntakeLimits,
) -> Result<(Payload, u64), IntakeError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    match media_type(headers).as_deref() {
        None | Some("application/json") => {}
        Some(t) if t.ends_with("+json") => {}
        Some(_) => {
            return Err(IntakeError::UnsupportedMediaType {
                expected: "this endpoint takes a JSON body (Content-Type: application/json)",
            })
        }
    }
    let limit = limits.max_json_bytes.min(limits.max_body_bytes);
    let mut body = Limited::new(body, headers, limit, limits.idle_timeout)?;
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.chunk().await? {
        buf.extend_from_slice(&chunk);
    }
    let raw = buf.freeze();
    if raw.is_empty() {
        return Err(IntakeError::malformed(
            "the request body is empty; expected a JSON object",
        ));
    }
    let object = match JsonObject::parse(&raw) {
        Ok(Some(object)) => object,
        Ok(None) => {
            return Err(IntakeError::malformed(
                "the request body must be a JSON object",
            ))
        }
        Err(e) => {
            return Err(IntakeError::malformed(format!(
                "the request body is not valid JSON: {e}"
            )))
        }
    };
    match object.get("model") {
        None | Some(Value::Null) => return Err(IntakeError::Missing { param: "model" }),
        Some(Value::String(_)) => {}
        Some(_) => {
            return Err(IntakeError::Malformed {
                message: "`model` must be a string".into(),
                param: Some("model"),
            })
        }
    }
    match object.get("voice") {
        None | Some(Value::Null) => return Err(IntakeError::Missing { param: "voice" }),
        Some(Value::String(_)) => {}
        Some(Value::Object(o)) if o.get("id").is_some_and(Value::is_string) => {}
        Some(_) => {
            return Err(IntakeError::Malformed {
                message: "`voice` must be a string or an object with a string `id`".into(),
                param: Some("voice"),
            })
        }
    }
    let read = raw.len() as u64;
    Ok((Payload::Json(JsonBody { raw, object }), read))
}

/// The multipart reader's failures as ours: its read errors are the ones we raised.
fn from_multipart(e: MultipartError<IntakeError>) -> IntakeError {
    match e {
        MultipartError::Read(ours) => ours,
        MultipartError::Unparsed(limit) => IntakeError::malformed(format!(
            "multipart part headers or preamble longer than {limit} bytes"
        )),
        MultipartError::Malformed(m) => {
            IntakeError::malformed(format!("malformed multipart body: {m}"))
        }
    }
}

/// The multipart part being read: its head, its text when it is not a file, and where
/// its content starts in the replay when it is.
struct Reading {
    head: PartHead,
    text: Option<BytesMut>,
    start: u64,
}

/// Reads a transcription or translation upload.
pub async fn read_form<B>(
    body: B,
    headers: &HeaderMap,
    limits: &IntakeLimits,
) -> Result<(Payload, u64), IntakeError>
where
    B: Body<Data = Bytes> + Unpin + Send,
    B::Error: Into<BoxError>,
{
    let ct = content_type(headers).unwrap_or_default();
    let boundary = match multipart::parse_boundary(ct) {
        Ok(b) => b,
        Err(BoundaryError::NoBoundary) => {
            return Err(IntakeError::malformed(
                "multipart Content-Type has no boundary parameter",
            ))
        }
        Err(BoundaryError::NotFormData) => {
            return Err(IntakeError::UnsupportedMediaType {
                expected: "this endpoint takes a multipart/form-data upload",
            })
        }
    };
    let body = Limited::new(body, headers, limits.max_body_bytes, limits.idle_timeout)?;
    let mut multipart = Multipart::new(body.into_stream(), &boundary, MAX_UNPARSED_BYTES);
    let mut replay = ReplayWriter::new(limits.replay.clone());
    let mut parts: Vec<FormPart> = Vec::new();
    let mut text_total = 0usize;
    let mut current: Option<Reading> = None;
    loop {
        let event = multipart.next().await.map_err(from_multipart)?;
        if let Event::Data(chunk) = event {
            // The reader hands out content only after a part's head.
            let Some(part) = &mut current else { continue };
            match &mut part.text {
                None => replay.push(chunk).await.map_err(IntakeError::Replay)?,
                Some(text) => {
                    if text.len() + chunk.len() > MAX_TEXT_PART_BYTES {
                        return Err(IntakeError::malformed(format!(
                            "multipart text part `{}` is longer than {MAX_TEXT_PART_BYTES} bytes",
                            part.head.name
                        )));
                    }
                    text.extend_from_slice(&chunk);
                }
            }
            continue;
        }
        if let Some(Reading { head, text, start }) = current.take() {
            let value = match text {
                None => PartValue::File(start..replay.len()),
                Some(text) => {
                    text_total += text.len() + head.raw.len();
                    if text_total > MAX_TEXT_TOTAL_BYTES {
                        return Err(IntakeError::malformed(format!(
                            "multipart text parts are longer than {MAX_TEXT_TOTAL_BYTES} bytes together"
                        )));
                    }
                    PartValue::Text(text.freeze())
                }
            };
            parts.push(FormPart {
                name: head.name,
                head: head.raw,
                value,
            });
        }
        let Event::Part(head) = event else {
            break;
        };
        if parts.len() == MAX_PARTS {
            return Err(IntakeError::malformed(format!(
                "multipart body has more than {MAX_PARTS} parts"
            )));
        }
        let name = head.name.as_str();
        if SINGLE_VALUED.contains(&name) && parts.iter().any(|p| p.name == name) {
            return Err(IntakeError::Malformed {
                message: format!("multipart body has more than one `{name}` part"),
                param: SINGLE_VALUED.iter().copied().find(|p| *p == name),
            });
        }
        let text = (head.file_name.is_none() && name != "file").then(BytesMut::new);
        let start = replay.len();
        current = Some(Reading { head, text, start });
    }
    if !parts.iter().any(|p| p.name == "file") {
        return Err(IntakeError::Missing { param: "file" });
    }
    if !parts.iter().any(|p| p.name == "model") {
        return Err(IntakeError::Missing { param: "model" });
    }
    let replay = Arc::new(replay.finish().await.map_err(IntakeError::Replay)?);
    let read = multipart.bytes_read();
    Ok((
        Payload::Form(FormBody {
            boundary,
            parts,
            replay,
        }),
        read,
    ))
}

/// Reads any other body as opaque bytes, for replay.
pub async fn read_raw<B>(
    body: B,
    headers: &HeaderMap,
    limits: &IntakeLimits,
) -> Result<(Payload, u64), IntakeError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut body = Limited::new(body, headers, limits.max_body_bytes, limits.idle_timeout)?;
    let mut replay = ReplayWriter::new(limits.replay.clone());
    while let Some(chunk) = body.chunk().await? {
        replay.push(chunk).await.map_err(IntakeError::Replay)?;
    }
    let replay = replay.finish().await.map_err(IntakeError::Replay)?;
    let read = replay.len();
    Ok((Payload::Raw(Arc::new(replay)), read))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::replay::MemoryBudget;
    use futures_util::StreamExt;
    use http::HeaderValue;
    use http_body::Frame;
    use http_body_util::{Full, StreamBody};
    use std::convert::Infallible;

    fn limits(max_body: u64) -> IntakeLimits {
        IntakeLimits {
            max_body_bytes: max_body,
            max_json_bytes: 1024,
            idle_timeout: Duration::from_secs(5),
            replay: ReplayLimits {
                memory_per_request: 1 << 20,
                budget: Arc::new(MemoryBudget::new(1 << 20)),
                spill_dir: None,
            },
        }
    }

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    /// A body delivered in the given pieces, like a chunked upload without Content-Length.
    fn chunked(
        pieces: Vec<Vec<u8>>,
    ) -> StreamBody<impl Stream<Item = Result<Frame<Bytes>, Infallible>> + Unpin + Send> {
        StreamBody::new(stream::iter(
            pieces.into_iter().map(|p| Ok(Frame::data(Bytes::from(p)))),
        ))
    }

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, filename, value) in parts {
            out.extend_from_slice(b"--B0UND\r\n");
            match filename {
                Some(f) => out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes(),
                ),
                None => out.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--B0UND--\r\n");
        out
    }

    const FORM_CT: &str = "multipart/form-data; boundary=B0UND";

    /// How a whole multipart body, sent at once, is refused.
    async fn form_error(body: Vec<u8>, max_body: u64) -> IntakeError {
        read_form(
            Full::new(Bytes::from(body)),
            &headers(FORM_CT),
            &limits(max_body),
        )
        .await
        .unwrap_err()
    }

    #[tokio::test]
    async fn form_fields_are_found_whatever_the_part_order() {
        let audio = vec![9u8; 300_000];
        let python = form(&[
            ("model", None, b"whisper-1"),
            ("response_format", None, b"text"),
            ("file", Some("a.wav"), &audio),
        ]);
        let node = form(&[
            ("file", Some("a.wav"), &audio),
            ("model", None, b"whisper-1"),
            ("stream", None, b"true"),
            ("timestamp_granularities[]", None, b"word"),
            ("timestamp_granularities[]", None, b"segment"),
        ]);
        for (body, format, stream) in [(python, "text", false), (node, "json", true)] {
            // Deliver in small uneven pieces, as a chunked upload would.
            let pieces: Vec<Vec<u8>> = body.chunks(7777).map(<[u8]>::to_vec).collect();
            let (p, read) = read_form(chunked(pieces), &headers(FORM_CT), &limits(1 << 20))
                .await
                .unwrap();
            assert_eq!(read, body.len() as u64);
            assert_eq!(p.model(), Some("whisper-1"));
            assert_eq!(p.response_format(), Some(format));
            assert_eq!(p.stream(), stream);
            let Payload::Form(f) = &p else { panic!() };
            assert_eq!(f.replay.len(), audio.len() as u64);
        }
    }

    #[tokio::test]
    async fn repeated_array_parts_are_kept_and_routing_fields_must_be_single() {
        let body = form(&[
            ("file", Some("a.wav"), b"x"),
            ("model", None, b"whisper-1"),
            ("model", None, b"gpt-4o-transcribe"),
        ]);
        let e = form_error(body, 1 << 20).await;
        assert!(e.to_string().contains("more than one `model`"), "{e}");
        assert_eq!(e.api_error().status, 400);
    }

    #[tokio::test]
    async fn forms_without_file_or_model_are_refused() {
        let body = form(&[("model", None, b"whisper-1")]);
        let e = form_error(body, 1 << 20).await;
        assert_eq!(e.api_error().param.as_deref(), Some("file"));
        let body = form(&[("file", Some("a.wav"), b"x")]);
        let e = form_error(body, 1 << 20).await;
        assert_eq!(e.api_error().param.as_deref(), Some("model"));
    }

    #[tokio::test]
    async fn broken_multipart_is_a_400() {
        let mut body = form(&[("model", None, b"m"), ("file", Some("a.wav"), b"x")]);
        body.truncate(body.len() - 12); // no final boundary
        let e = form_error(body, 1 << 20).await;
        assert_eq!(e.api_error().status, 400, "{e}");
        let e = read_form(
            Full::new(Bytes::new()),
            &headers("multipart/form-data"),
            &limits(10),
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("boundary"));
        let e = read_form(
            Full::new(Bytes::new()),
            &headers("application/json"),
            &limits(10),
        )
        .await
        .unwrap_err();
        assert_eq!(e.api_error().status, 415);
    }

    #[tokio::test]
    async fn the_epilogue_is_read_and_unnamed_parts_are_refused() {
        // Everything after the closing boundary is read (and dropped), so the whole body
        // is accounted for and the connection stays usable.
        let mut body = form(&[("model", None, b"m"), ("file", Some("a.wav"), b"x")]);
        body.extend(std::iter::repeat_n(b'e', 100_000));
        let pieces: Vec<Vec<u8>> = body.chunks(4096).map(<[u8]>::to_vec).collect();
        let (_, read) = read_form(chunked(pieces), &headers(FORM_CT), &limits(1 << 20))
            .await
            .unwrap();
        assert_eq!(read, body.len() as u64);

        let body = b"--B0UND\r\nContent-Type: text/plain\r\n\r\nm\r\n--B0UND--\r\n".to_vec();
        let e = form_error(body, 1 << 20).await;
        let api = e.api_error();
        assert_eq!(api.status, 400);
        assert!(
            api.message.contains("malformed multipart body"),
            "{}",
            api.message
        );
    }

    #[tokio::test]
    async fn endless_part_headers_and_too_much_text_are_refused() {
        let mut body =
            b"--B0UND\r\nContent-Disposition: form-data; name=\"model\"\r\nX-Pad: ".to_vec();
        body.extend(std::iter::repeat_n(b'a', 3 << 20));
        let pieces: Vec<Vec<u8>> = body.chunks(65_536).map(<[u8]>::to_vec).collect();
        let e = read_form(chunked(pieces), &headers(FORM_CT), &limits(8 << 20))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("part headers or preamble"), "{e}");

        let prompt = vec![b'p'; 60_000];
        let names: Vec<String> = (0..20).map(|i| format!("prompt{i}")).collect();
        let mut parts: Vec<(&str, Option<&str>, &[u8])> = names
            .iter()
            .map(|n| (n.as_str(), None, &prompt[..]))
            .collect();
        parts.push(("model", None, b"m"));
        parts.push(("file", Some("a.wav"), b"x"));
        let e = form_error(form(&parts), 8 << 20).await;
        assert!(e.to_string().contains("together"), "{e}");
        assert_eq!(e.api_error().status, 400);
    }

    #[tokio::test]
    async fn chunked_bodies_over_the_limit_stop_at_the_limit() {
        // 100 pieces of 1000 bytes, limit 10_000: reading must stop after ~11 pieces.
        let pulled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = pulled.clone();
        let pieces = stream::iter(0..100).map(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'a'; 1000])))
        });
        let body = StreamBody::new(futures_util::StreamExt::boxed(pieces));
        let e = read_form(body, &headers(FORM_CT), &limits(10_000))
            .await
            .unwrap_err();
        assert!(
            matches!(e, IntakeError::TooLarge { limit: 10_000, .. }),
            "{e}"
        );
        assert_eq!(e.api_error().status, 413);
        assert!(pulled.load(std::sync::atomic::Ordering::SeqCst) <= 12);
    }

    #[tokio::test]
    async fn declared_content_length_over_the_limit_is_refused_unread() {
        let mut h = headers(FORM_CT);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999999"));
        let e = read_raw(Full::new(Bytes::from_static(b"x")), &h, &limits(1000))
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Maximum content size limit (1000) exceeded (0 bytes read)"
        );
    }

    #[tokio::test]
    async fn json_bodies_are_checked() {
        let h = headers("application/json");
        let l = limits(1 << 20);
        let cases: [(&str, u16, Option<&str>); 6] = [
            ("{", 400, None),
            ("[1]", 400, None),
            ("", 400, None),
            (r#"{"voice":"alloy"}"#, 400, Some("model")),
            (r#"{"model":1,"voice":"alloy"}"#, 400, Some("model")),
            (r#"{"model":"tts-1","voice":["x"]}"#, 400, Some("voice")),
        ];
        for (body, status, param) in cases {
            let e = read_json(Full::new(Bytes::from(body)), &h, &l)
                .await
                .unwrap_err();
            let api = e.api_error();
            assert_eq!(api.status, status, "{body}");
            assert_eq!(api.param.as_deref(), param, "{body}");
        }
        let (p, _) = read_json(
            Full::new(Bytes::from(
                r#"{"model":"tts-1","voice":{"id":"v_1"},"input":"x"}"#,
            )),
            &h,
            &l,
        )
        .await
        .unwrap();
        assert_eq!(p.voice(), Some("v_1"));
        let e = read_json(Full::new(Bytes::from("{}")), &headers("text/plain"), &l)
            .await
            .unwrap_err();
        assert_eq!(e.api_error().status, 415);
        let big = format!(
            r#"{{"model":"tts-1","voice":"a","input":"{}"}}"#,
            "x".repeat(2000)
        );
        let e = read_json(Full::new(Bytes::from(big)), &h, &l)
            .await
            .unwrap_err();
        assert_eq!(e.api_error().status, 413);
    }

    #[tokio::test]
    async fn a_tracked_body_knows_whether_it_was_read_to_its_end() {
        let mut empty = TrackedBody::new(Full::new(Bytes::new()));
        assert!(empty.ended(), "no body is a body read");
        let mut whole = TrackedBody::new(chunked(vec![b"ab".to_vec(), b"cd".to_vec()]));
        assert!(!whole.ended());
        let (_, read) = read_raw(&mut whole, &HeaderMap::new(), &limits(100))
            .await
            .unwrap();
        assert_eq!(read, 4);
        assert!(whole.ended());
        let mut cut = TrackedBody::new(chunked(vec![vec![b'a'; 600], vec![b'b'; 600]]));
        let e = read_raw(&mut cut, &HeaderMap::new(), &limits(1000))
            .await
            .unwrap_err();
        assert_eq!(e.api_error().status, 413);
        assert!(!cut.ended(), "the rest of the body is still to come");
        let _ = empty.frame().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_upload_is_cut_off() {
        let pieces = stream::iter(vec![Ok::<_, Infallible>(Frame::data(Bytes::from_static(
            b"--B0UND\r\n",
        )))])
        .chain(stream::pending());
        let body = StreamBody::new(futures_util::StreamExt::boxed(pieces));
        let e = read_form(body, &headers(FORM_CT), &limits(1000))
            .await
            .unwrap_err();
        assert!(matches!(e, IntakeError::Stalled(_)), "{e}");
        assert_eq!(e.api_error().status, 408);
    }
}
