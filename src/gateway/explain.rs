//! `voxgate explain`: what voxgate would do with one request, shown without sending it.
//!
//! The request is made as a client makes it — a JSON body, a multipart form with the file
//! read from disk, or a bare method and path — and goes through the server's own code in
//! the server's order: [`classify`](crate::gateway::classify::classify), the intake
//! (`read_json` / `read_form` / `read_raw`), the compiled [`Router`](crate::route::Router),
//! and, for each upstream of the route, the checks and edits `forward` makes
//! ([`edits_for`]), the path it sends to ([`upstream_path`]), the headers
//! [`Upstream`] picks, and the body [`Payload::render`] makes. Only the reasons an earlier
//! route did not match ([`Matcher::mismatches`](crate::route::Matcher::mismatches)) and
//! the report itself are written here. Keys never appear: the upstream's own is shown as
//! `Bearer <redacted>`, the client's as `<client key>`.
//!
//! With a running voxgate's `/status` (`--live`), each upstream is up or down as it is
//! there, and the order of the attempts is the one `forward` would take now.

use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures_util::{stream, StreamExt, TryStreamExt};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;
use http_body_util::Full;
use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::engine::dialect::Convert;
use crate::gateway::classify::{classify, Target};
use crate::gateway::discovery::{list_headers, routed, Listing};
use crate::gateway::forward::{
    client_headers, edits_for, is_tried, none_up, upstream_path, Exhausted, RequestHead,
};
use crate::gateway::{GatewayError, Runtime};
use crate::request::intake::{read_form, read_json, read_raw, IntakeError};
use crate::request::multipart::{Event, Multipart};
use crate::request::outgoing::Segment;
use crate::request::payload::Payload;
use crate::request::replay::MemoryBudget;
use crate::route::{Operation, RequestFacts, RouteConfig};
use crate::telemetry::record::{summary, Attempt, AttemptResult};
use crate::upstream::connections::path_prefix;
use crate::upstream::h1::says_length;
use crate::upstream::{ClientRequest, Upstream, REQUEST_ID_HEADER_NAME};

/// The Authorization header the explained client sends, as every SDK sends one.
pub const CLIENT_KEY: &str = "Bearer <client key>";
/// The request id shown in place of the one voxgate would make.
pub const REQUEST_ID: &str = "<request id>";
/// How an upstream's own key is shown.
pub const REDACTED_KEY: &str = "Bearer <redacted>";
/// The boundary of the forms `explain` makes.
pub const BOUNDARY: &str = "voxgate-explain-b0undary";
/// Text parts and raw bodies up to this size are shown whole.
const SHOWN_TEXT: usize = 64 * 1024;

/// Why there is nothing to explain.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The question is not one `explain` understands.
    #[error("{0}")]
    Usage(String),
    #[error("cannot read `{path}`: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// `explain` could not run the intake (no runtime, a spill file it could not write).
    #[error("{0}")]
    Internal(String),
}

/// One field of the explained request.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// `key=value`: a string (JSON) or a text part (form).
    Text(String),
    /// `key:=json`: a JSON value (JSON), or its text as a text part (form).
    Json(Value),
    /// `key=@path`: a file part.
    File(PathBuf),
}

/// The request to explain, as the command line gives it.
#[derive(Debug, Clone)]
pub struct Question {
    pub method: Method,
    pub path: String,
    pub fields: Vec<(String, Field)>,
    /// Extra client headers (`-H 'name: value'`); they replace the defaults.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

fn usage(message: impl Into<String>) -> ExplainError {
    ExplainError::Usage(message.into())
}

impl Question {
    /// `speech model=tts-1 voice=af_sky input=hi`, `transcriptions model=whisper-1
    /// file=@clip.wav`, `other GET /v1/models`: the endpoint, then (for `other`) the
    /// method and path, then `key=value`, `key:=json` or `key=@path` words. `headers` are
    /// `name: value` lines.
    pub fn parse(
        endpoint: &str,
        words: &[String],
        headers: &[String],
    ) -> Result<Question, ExplainError> {
        let endpoints = "speech, transcriptions, translations, other METHOD PATH";
        let operation = Operation::from_name(endpoint).ok_or_else(|| {
            usage(format!(
                "unknown endpoint `{endpoint}`; use one of: {endpoints}"
            ))
        })?;
        let (method, path, words) = match operation {
            Operation::Other => {
                let [method, path, rest @ ..] = words else {
                    return Err(usage(
                        "`other` takes a method and a path: other GET /v1/models",
                    ));
                };
                let method = Method::from_bytes(method.as_bytes())
                    .map_err(|_| usage(format!("`{method}` is not an HTTP method")))?;
                if !path.starts_with('/') {
                    return Err(usage(format!("`{path}` is not a path (it starts with /)")));
                }
                (method, path.clone(), rest)
            }
            _ => (Method::POST, format!("/v1/audio/{endpoint}"), words),
        };
        let form = matches!(
            operation,
            Operation::Transcriptions | Operation::Translations
        );
        let mut fields = Vec::with_capacity(words.len());
        for word in words {
            let field = match word.split_once('=') {
                None => {
                    return Err(usage(format!(
                        "`{word}` is not key=value (or key:=json, key=@file)"
                    )))
                }
                Some((key, value)) if key.ends_with(':') => {
                    let value = serde_json::from_str(value).map_err(|e| {
                        usage(format!("`{word}`: the value after := is not JSON: {e}"))
                    })?;
                    (key.trim_end_matches(':'), Field::Json(value))
                }
                Some((key, "@-")) => {
                    return Err(usage(format!(
                        "`{key}=@-`: a file cannot come from standard input; give its path"
                    )))
                }
                Some((key, value)) => match value.strip_prefix('@') {
                    Some(path) if form => (key, Field::File(PathBuf::from(path))),
                    Some(_) => {
                        return Err(usage(format!(
                            "`{word}`: files go only in a transcriptions or translations form"
                        )))
                    }
                    None => (key, Field::Text(value.to_string())),
                },
            };
            if field.0.is_empty() {
                return Err(usage(format!("`{word}` has no key before the =")));
            }
            fields.push((field.0.to_string(), field.1));
        }
        let mut parsed = Vec::with_capacity(headers.len());
        for line in headers {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| usage(format!("header `{line}` is not `name: value`")))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| usage(format!("`{}` is not a header name", name.trim())))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| usage(format!("the value of header `{name}` is not valid")))?;
            parsed.push((name, value));
        }
        Ok(Question {
            method,
            path,
            fields,
            headers: parsed,
        })
    }

    fn is_form(&self) -> bool {
        self.fields.iter().any(|(_, f)| matches!(f, Field::File(_)))
            || matches!(
                self.path.as_str(),
                "/v1/audio/transcriptions" | "/v1/audio/translations"
            )
    }
}

/// A piece of a body as reported: text, bytes that are not UTF-8, or file bytes (their
/// size, not their content).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Piece {
    Text(String),
    Base64(String),
    /// Bytes of the file part named `part`; in the client's body, read from `path`.
    File {
        part: String,
        bytes: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
}

fn piece(bytes: &[u8]) -> Piece {
    match std::str::from_utf8(bytes) {
        Ok(text) => Piece::Text(text.to_string()),
        Err(_) => Piece::Base64(base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

/// A form part after every rewrite, as the multipart reader reads the rendered body.
#[derive(Debug, Clone, Serialize)]
pub struct PartReport {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// A text part's value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A file part's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

/// A request body: its exact bytes as pieces (file contents by size), and what they say.
#[derive(Debug, Clone, Serialize)]
pub struct BodyReport {
    /// `json`, `multipart`, `raw` or `empty`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The Content-Length.
    pub length: u64,
    /// The bytes in order; with each file's bytes put back, the body byte for byte.
    pub pieces: Vec<Piece>,
    /// A JSON body, parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartReport>,
}

/// The request as the explained client sends it.
#[derive(Debug, Clone, Serialize)]
pub struct ClientReport {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: BodyReport,
}

/// What the rules read from the request.
#[derive(Debug, Clone, Serialize)]
pub struct FactsReport {
    pub endpoint: &'static str,
    pub method: String,
    pub path: String,
    pub model: Option<String>,
    pub voice: Option<String>,
    pub response_format: Option<String>,
    pub stream: bool,
}

/// A route before the one that matched, and each of its keys the request fails.
#[derive(Debug, Clone, Serialize)]
pub struct RouteMiss {
    pub line: usize,
    pub why: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    /// 0-based, in file order.
    pub index: usize,
    pub line: usize,
    /// The route's lines in the file, when the file could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    pub to: Vec<String>,
    pub set: Vec<(String, Value)>,
    pub fallback_on: Vec<String>,
    pub deadline: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointReport {
    pub url: String,
    pub weight: u32,
    pub backup: bool,
    /// `available`, `ejected for 12.5 s`, `down (health check)`, … or `not asked`
    /// without `--live`.
    pub state: String,
    pub available: Option<bool>,
}

/// The request one upstream would receive.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamRequest {
    pub method: String,
    pub url: String,
    /// In the order they are written; keys redacted.
    pub headers: Vec<(String, String)>,
    /// `api_key` (the upstream's own, replacing the client's), `client` (passed on) or
    /// `none` (removed).
    pub authorization: &'static str,
    pub body: BodyReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamReport {
    pub name: String,
    pub kind: &'static str,
    /// Why `forward` would not send the request here; `None` when it would.
    pub unsuitable: Option<String>,
    /// Whether it has an available endpoint: from `--live`, else as a fresh start sees it.
    pub up: Option<bool>,
    /// 1-based place among the attempts; `None` when it is not tried.
    pub attempt: Option<usize>,
    /// `first`, `fallback`, `skipped: …` or `not sent: …`.
    pub tried: String,
    /// How the answer is converted for the client: `none`, `speech_sse`, `transcript_sse`.
    pub convert: &'static str,
    pub endpoints: Vec<EndpointReport>,
    pub request: Option<UpstreamRequest>,
}

/// For `GET /v1/models` and `GET /v1/audio/voices`: the upstreams asked for their lists.
#[derive(Debug, Clone, Serialize)]
pub struct ListReport {
    pub name: String,
    /// The live list request, for a kind that serves one.
    pub request: Option<UpstreamRequest>,
    /// The names it adds without being asked (its kind's and its maps').
    pub static_names: Vec<String>,
}

/// How the request ends.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// A route takes it.
    Routed { route_line: usize },
    /// voxgate answers it itself.
    Answered { by: String },
    /// No route matches (404).
    NoRoute { status: u16, message: String },
    /// voxgate refuses it before routing, or no upstream of the route can take it.
    Refused { status: u16, message: String },
}

/// Everything `voxgate explain` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub config: String,
    /// The admin listener whose `/status` was read.
    pub live: Option<String>,
    pub client: ClientReport,
    pub request: Option<FactsReport>,
    pub outcome: Outcome,
    pub routes_not_matching: Vec<RouteMiss>,
    pub route: Option<RouteReport>,
    pub upstreams: Vec<UpstreamReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lists: Option<Vec<ListReport>>,
}

impl Explanation {
    /// Whether a route takes the request (or voxgate answers it itself).
    pub fn matched(&self) -> bool {
        matches!(
            self.outcome,
            Outcome::Routed { .. } | Outcome::Answered { .. }
        )
    }
}

impl Explanation {
    /// The explanation for people: what `voxgate explain` prints without `--json`.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "{} {}   (config: {})",
            self.client.method, self.client.path, self.config
        ));
        if let Some(live) = &self.live {
            line(format!("up and ejected as {live}/status says now"));
        }
        if let Some(r) = &self.request {
            let mut facts = format!("  {}:", r.endpoint);
            for (key, value) in [
                ("model", &r.model),
                ("voice", &r.voice),
                ("response_format", &r.response_format),
            ] {
                if let Some(v) = value {
                    facts.push_str(&format!(" {key}={v}"));
                }
            }
            facts.push_str(&format!(" stream={}", r.stream));
            line(facts);
        }
        line(String::new());
        for miss in &self.routes_not_matching {
            line(format!("route at line {} does not match:", miss.line));
            for why in &miss.why {
                line(format!("  {why}"));
            }
        }
        if let Outcome::Answered { by } = &self.outcome {
            line(format!("answered by {by}"));
        }
        if let Some(route) = &self.route {
            line(format!("route at line {} matches:", route.line));
            match &route.text {
                Some(text) => text.lines().for_each(|l| line(format!("    {l}"))),
                None => line(format!("    to = {:?}", route.to)),
            }
            line(format!(
                "  falls back on: {}; deadline: {}",
                route.fallback_on.join(", "),
                route.deadline.as_deref().unwrap_or("none")
            ));
            line(String::new());
            line("upstreams, in the order they are tried:".into());
        }
        for u in &self.upstreams {
            let place = u.attempt.map_or("- ".to_string(), |a| format!("{a}."));
            // Up or down is news only from a running voxgate.
            let up = match (&self.live, u.up) {
                (None, _) => "",
                (Some(_), Some(true)) => ", up",
                (Some(_), Some(false)) => ", down",
                (Some(_), None) => ", not in the running voxgate's /status",
            };
            line(format!(
                "{place} {} (kind {}{up}): {}",
                u.name, u.kind, u.tried
            ));
            if u.convert != "none" {
                line(format!(
                    "   its answer is converted for the client ({})",
                    u.convert
                ));
            }
            for e in &u.endpoints {
                let backup = if e.backup { ", backup" } else { "" };
                line(format!(
                    "   endpoint {} (weight {}{backup}): {}",
                    e.url, e.weight, e.state
                ));
            }
            if let Some(request) = &u.request {
                if u.endpoints.len() > 1 {
                    line("   (to the endpoint the pool picks; shown for its first available primary)".into());
                }
                request_text(request, &mut line);
            }
        }
        if let Outcome::NoRoute { status, message } | Outcome::Refused { status, message } =
            &self.outcome
        {
            line(format!("voxgate answers {status}: {message}"));
        }
        for list in self.lists.iter().flatten() {
            line(format!("{}:", list.name));
            match &list.request {
                Some(request) => request_text(request, &mut line),
                None => line("   no live list (its kind serves none)".into()),
            }
            if !list.static_names.is_empty() {
                line(format!(
                    "   and its own names: {}",
                    list.static_names.join(", ")
                ));
            }
        }
        out
    }
}

fn request_text(request: &UpstreamRequest, line: &mut impl FnMut(String)) {
    line(format!("   {} {}", request.method, request.url));
    for (name, value) in &request.headers {
        line(format!("     {name}: {value}"));
    }
    match request.authorization {
        "none" => line("     (no authorization: the client's key is removed)".into()),
        "client" => line("     (authorization: the client's key, passed on)".into()),
        _ => line("     (authorization: the upstream's api_key, in place of the client's)".into()),
    }
    let body = &request.body;
    match body.kind {
        "empty" => {}
        "json" => {
            let text = body
                .json
                .as_ref()
                .and_then(|j| serde_json::to_string_pretty(j).ok())
                .unwrap_or_default();
            text.lines().for_each(|l| line(format!("   {l}")));
        }
        "multipart" => {
            line(format!("   multipart form, {} bytes:", body.length));
            for part in &body.parts {
                match (part.bytes, &part.value) {
                    (Some(bytes), _) => line(format!(
                        "     {}: {}{}, {bytes} bytes",
                        part.name,
                        part.filename.as_deref().unwrap_or("(no name)"),
                        part.content_type
                            .as_deref()
                            .map_or(String::new(), |t| format!(" ({t})")),
                    )),
                    (None, value) => line(format!(
                        "     {}: {}",
                        part.name,
                        value.as_deref().unwrap_or_default()
                    )),
                }
            }
        }
        _ => line(format!("   {} bytes, as the client sent them", body.length)),
    }
}

/// Where the configuration came from, for the report: its name, and its text to quote
/// routes from (routes only: upstream tables may hold keys).
#[derive(Debug, Clone, Copy)]
pub struct ConfigSource<'a> {
    pub name: &'a str,
    pub text: Option<&'a str>,
}

/// A running voxgate's `/status`, by upstream name.
#[derive(Debug, Clone)]
pub struct Live {
    pub url: String,
    pub status: Value,
}

impl Live {
    fn upstream(&self, name: &str) -> Option<&Value> {
        self.status["upstreams"]
            .as_array()?
            .iter()
            .find(|u| u["name"] == name)
    }
}

/// The client's request, built: headers, body bytes, and the body as reported.
struct Built {
    headers: HeaderMap,
    body: Bytes,
    report: BodyReport,
}

fn build(question: &Question) -> Result<Built, ExplainError> {
    let mut headers = HeaderMap::new();
    let mut pieces = Vec::new();
    let (kind, body) = if question.is_form() {
        let mut body = BytesMut::new();
        fn text(body: &mut BytesMut, pieces: &mut Vec<Piece>, s: &str) {
            body.extend_from_slice(s.as_bytes());
            match pieces.last_mut() {
                Some(Piece::Text(t)) => t.push_str(s),
                _ => pieces.push(Piece::Text(s.to_string())),
            }
        }
        for (name, field) in &question.fields {
            text(&mut body, &mut pieces, &format!("--{BOUNDARY}\r\n"));
            match field {
                Field::File(path) => {
                    let bytes = std::fs::read(path).map_err(|source| ExplainError::File {
                        path: path.display().to_string(),
                        source,
                    })?;
                    let filename = path
                        .file_name()
                        .map_or("upload".into(), |f| f.to_string_lossy().replace('"', "'"));
                    text(
                        &mut body,
                        &mut pieces,
                        &format!(
                            "Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {}\r\n\r\n",
                            audio_type(path)
                        ),
                    );
                    body.extend_from_slice(&bytes);
                    pieces.push(Piece::File {
                        part: name.clone(),
                        bytes: bytes.len() as u64,
                        path: Some(path.display().to_string()),
                    });
                }
                Field::Text(value) => text(
                    &mut body,
                    &mut pieces,
                    &format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}"),
                ),
                Field::Json(value) => text(
                    &mut body,
                    &mut pieces,
                    &format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}"),
                ),
            }
            text(&mut body, &mut pieces, "\r\n");
        }
        text(&mut body, &mut pieces, &format!("--{BOUNDARY}--\r\n"));
        let content_type = format!("multipart/form-data; boundary={BOUNDARY}");
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(&content_type).map_err(|e| usage(e.to_string()))?,
        );
        ("multipart", body.freeze())
    } else if question.fields.is_empty() {
        ("empty", Bytes::new())
    } else {
        let mut object = serde_json::Map::new();
        for (name, field) in &question.fields {
            let value = match field {
                Field::Text(s) => Value::String(s.clone()),
                Field::Json(v) => v.clone(),
                Field::File(_) => return Err(usage("files go only in a form")),
            };
            object.insert(name.clone(), value);
        }
        let body = Bytes::from(Value::Object(object).to_string());
        pieces.push(piece(&body));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        ("json", body)
    };
    headers.insert(header::AUTHORIZATION, HeaderValue::from_static(CLIENT_KEY));
    for (name, value) in &question.headers {
        headers.insert(name.clone(), value.clone());
    }
    let json = (kind == "json")
        .then(|| serde_json::from_slice(&body).ok())
        .flatten();
    let report = BodyReport {
        kind,
        length: body.len() as u64,
        pieces,
        json,
        parts: Vec::new(),
    };
    Ok(Built {
        headers,
        body,
        report,
    })
}

/// The Content-Type an SDK gives a file part, by its extension.
fn audio_type(path: &std::path::Path) -> &'static str {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match extension.as_deref() {
        Some("wav") => "audio/wav",
        Some("mp3" | "mpga" | "mpeg") => "audio/mpeg",
        Some("flac") => "audio/flac",
        Some("ogg" | "oga") => "audio/ogg",
        Some("m4a" | "mp4") => "audio/mp4",
        Some("webm") => "audio/webm",
        _ => "application/octet-stream",
    }
}

/// A header value as shown: keys never.
fn shown_value(name: &HeaderName, value: &HeaderValue, client_key: Option<&HeaderValue>) -> String {
    if name == header::AUTHORIZATION {
        return match client_key {
            Some(k) if k == value => "<client key>".to_string(),
            _ => REDACTED_KEY.to_string(),
        };
    }
    let secret = ["key", "token", "secret", "cookie", "auth"]
        .iter()
        .any(|s| name.as_str().contains(s));
    if secret {
        return "<redacted>".to_string();
    }
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

fn shown_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let key = headers.get(header::AUTHORIZATION);
    headers
        .iter()
        .map(|(n, v)| (n.to_string(), shown_value(n, v, key)))
        .collect()
}

/// The request `upstream` gets, on its first endpoint that is available (else its
/// first): what `forward` and `Upstream::send` put together.
async fn upstream_request(
    upstream: &Upstream,
    available: &[Option<bool>],
    method: &Method,
    path_and_query: &str,
    client: &HeaderMap,
    segments: Option<Vec<Segment>>,
    form_boundary: Option<&str>,
) -> Result<UpstreamRequest, ExplainError> {
    let request_id = HeaderValue::from_static(REQUEST_ID);
    let endpoints = &upstream.config.endpoints;
    let endpoint = (0..endpoints.len())
        .find(|&i| !endpoints[i].backup && available.get(i).copied().flatten() != Some(false))
        .unwrap_or(0);
    let url = &endpoints[endpoint].url;
    let authority = url.authority().map_or("", |a| a.as_str());
    let scheme = url.scheme_str().unwrap_or("http");
    let full = format!("{scheme}://{authority}{}{path_and_query}", path_prefix(url));
    let client_key = client.get(header::AUTHORIZATION);
    // Set by the connection: Host first (HTTP/1; `:authority` on HTTP/2).
    let mut headers = vec![("host".to_string(), authority.to_string())];
    let mut authorization = "none";
    upstream.headers(client, &request_id, &mut |name, value| {
        if name == header::AUTHORIZATION {
            authorization = match client_key {
                Some(k) if k == value => "client",
                _ => "api_key",
            };
        }
        let shown = if *name == REQUEST_ID_HEADER_NAME {
            REQUEST_ID.to_string()
        } else {
            shown_value(name, value, client_key)
        };
        headers.push((name.to_string(), shown));
    });
    let segments = segments.unwrap_or_default();
    let body = body_report(&segments, form_boundary).await?;
    if says_length(method, body.length) {
        headers.push(("content-length".to_string(), body.length.to_string()));
    }
    Ok(UpstreamRequest {
        method: method.to_string(),
        url: full,
        headers,
        authorization,
        body,
    })
}

/// Reports a rendered body: its pieces, and for a form its parts as the multipart reader
/// reads them back.
async fn body_report(
    segments: &[Segment],
    form_boundary: Option<&str>,
) -> Result<BodyReport, ExplainError> {
    let length = segments.iter().map(Segment::len).sum();
    let mut pieces = Vec::new();
    let mut whole = BytesMut::new();
    for segment in segments {
        match segment {
            Segment::Bytes(b) => {
                pieces.push(piece(b));
                if form_boundary.is_none() {
                    whole.extend_from_slice(b);
                }
            }
            Segment::Replay(replay, range) => match form_boundary {
                Some(_) => pieces.push(Piece::File {
                    part: String::new(),
                    bytes: range.end - range.start,
                    path: None,
                }),
                None => {
                    let chunks: Vec<Bytes> = replay
                        .stream(range.clone())
                        .try_collect()
                        .await
                        .map_err(|e| ExplainError::Internal(format!("reading the body: {e}")))?;
                    for chunk in chunks {
                        whole.extend_from_slice(&chunk);
                    }
                }
            },
        }
    }
    let Some(boundary) = form_boundary else {
        if length == 0 {
            return Ok(BodyReport {
                kind: "empty",
                length,
                pieces: Vec::new(),
                json: None,
                parts: Vec::new(),
            });
        }
        let json: Option<Value> = serde_json::from_slice(&whole).ok();
        let kind = if json.as_ref().is_some_and(Value::is_object) {
            "json"
        } else {
            "raw"
        };
        let pieces = if whole.len() <= SHOWN_TEXT || kind == "json" {
            vec![piece(&whole)]
        } else {
            Vec::new()
        };
        return Ok(BodyReport {
            kind,
            length,
            pieces,
            json,
            parts: Vec::new(),
        });
    };
    let parts = form_parts(segments, boundary).await?;
    // The file pieces named by the parts they belong to, in order.
    let mut files = parts.iter().filter(|p| p.bytes.is_some());
    for p in &mut pieces {
        if let Piece::File { part, .. } = p {
            if let Some(file) = files.next() {
                part.clone_from(&file.name);
            }
        }
    }
    // Adjacent text pieces joined: a file's bytes are what splits a form.
    let mut joined: Vec<Piece> = Vec::with_capacity(pieces.len());
    for p in pieces {
        match (joined.last_mut(), p) {
            (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
            (_, p) => joined.push(p),
        }
    }
    Ok(BodyReport {
        kind: "multipart",
        length,
        pieces: joined,
        json: None,
        parts,
    })
}

/// The parts of a rendered form, read by the same multipart reader the intake uses.
async fn form_parts(segments: &[Segment], boundary: &str) -> Result<Vec<PartReport>, ExplainError> {
    let chunks = stream::iter(segments.to_vec()).flat_map(|segment| match segment {
        Segment::Bytes(b) => stream::once(async move { Ok::<_, std::io::Error>(b) }).boxed(),
        Segment::Replay(replay, range) => replay.stream(range).boxed(),
    });
    let mut reader = Multipart::new(chunks, boundary, u64::MAX);
    let mut parts: Vec<PartReport> = Vec::new();
    let mut text: Option<BytesMut> = None;
    let finish = |parts: &mut Vec<PartReport>, text: &mut Option<BytesMut>| {
        if let (Some(part), Some(t)) = (parts.last_mut(), text.take()) {
            part.value = Some(String::from_utf8_lossy(&t[..t.len().min(SHOWN_TEXT)]).into_owned());
        }
    };
    loop {
        let event = reader.next().await.map_err(|e| {
            ExplainError::Internal(match e {
                crate::request::multipart::MultipartError::Read(e) => {
                    format!("reading the body: {e}")
                }
                crate::request::multipart::MultipartError::Unparsed(n) => {
                    format!("a part's head is longer than {n} bytes")
                }
                crate::request::multipart::MultipartError::Malformed(m) => {
                    format!("the rendered form does not read back: {m}")
                }
            })
        })?;
        match event {
            Event::Part(head) => {
                finish(&mut parts, &mut text);
                let is_file = head.file_name.is_some() || head.name == "file";
                let content_type = String::from_utf8_lossy(&head.raw).lines().find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.trim()
                        .eq_ignore_ascii_case("content-type")
                        .then(|| value.trim().to_string())
                });
                text = (!is_file).then(BytesMut::new);
                parts.push(PartReport {
                    name: head.name,
                    filename: head.file_name,
                    content_type,
                    value: None,
                    bytes: is_file.then_some(0),
                });
            }
            Event::Data(chunk) => match (&mut text, parts.last_mut()) {
                (Some(t), _) => t.extend_from_slice(&chunk),
                (None, Some(part)) => {
                    part.bytes = Some(part.bytes.unwrap_or(0) + chunk.len() as u64);
                }
                (None, None) => {}
            },
            Event::End => {
                finish(&mut parts, &mut text);
                return Ok(parts);
            }
        }
    }
}

fn convert_name(convert: Convert) -> &'static str {
    match convert {
        Convert::None => "none",
        Convert::SpeechSse => "speech_sse",
        Convert::TranscriptSse => "transcript_sse",
    }
}

/// Each endpoint's state, and whether it takes requests: from `--live`, else unknown.
fn endpoints(upstream: &Upstream, live: Option<&Value>) -> Vec<EndpointReport> {
    upstream
        .config
        .endpoints
        .iter()
        .map(|e| {
            let url = e.url.to_string();
            let seen = live.and_then(|l| {
                l["endpoints"]
                    .as_array()?
                    .iter()
                    .find(|x| x["url"] == url.as_str())
            });
            let (state, available) = match seen {
                None if live.is_some() => ("not in the running voxgate's /status".into(), None),
                None => ("not asked (no --live)".into(), None),
                Some(s) => {
                    let available = s["available"].as_bool();
                    let state = match (available, s["ejected_until"].as_f64(), s["health"].as_str())
                    {
                        (_, Some(left), _) => format!("ejected for {left:.1} s more"),
                        (_, _, Some("down")) => "down (health check)".into(),
                        (Some(true), _, Some("up")) => "available (health check up)".into(),
                        (Some(true), _, _) => "available".into(),
                        _ => "not available".into(),
                    };
                    (state, available)
                }
            };
            EndpointReport {
                url,
                weight: e.weight,
                backup: e.backup,
                state,
                available,
            }
        })
        .collect()
}

fn route_report(
    route: &RouteConfig,
    index: usize,
    runtime: &Runtime,
    source: ConfigSource<'_>,
) -> RouteReport {
    let mut fallback_on: Vec<String> = Vec::new();
    let policy = &route.fallback;
    for (on, name) in [
        (policy.connect, "connect"),
        (policy.timeout, "timeout"),
        (policy.reset, "reset"),
    ] {
        if on {
            fallback_on.push(name.to_string());
        }
    }
    fallback_on.extend(policy.statuses.iter().map(u16::to_string));
    RouteReport {
        index,
        line: route.line,
        text: source.text.and_then(|t| route_text(t, route.line)),
        to: route
            .to
            .iter()
            .map(|&i| runtime.upstreams[i].name().to_string())
            .collect(),
        set: route
            .set
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect(),
        fallback_on,
        deadline: route
            .deadline
            .map(|d| humantime::format_duration(d).to_string()),
    }
}

/// The lines of the `[[routes]]` entry at `line`: up to the next table header, without
/// the blank and comment lines at its end.
fn route_text(text: &str, line: usize) -> Option<String> {
    let mut lines = text.lines().skip(line.checked_sub(1)?);
    let first = lines.next()?;
    if first.trim() != "[[routes]]" {
        return None;
    }
    let mut block = vec![first];
    block.extend(lines.take_while(|l| !l.trim_start().starts_with('[')));
    while block
        .last()
        .is_some_and(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        block.pop();
    }
    Some(block.join("\n"))
}

fn refused(e: &GatewayError) -> Outcome {
    let api = e.api_error();
    Outcome::Refused {
        status: api.status.as_u16(),
        message: api.message,
    }
}

/// Explains `question` against `config`. Runs the intake on a runtime of its own: call it
/// from a thread without one. The upstreams are built without health checks, and nothing
/// is sent to them.
pub fn explain(
    config: Config,
    source: ConfigSource<'_>,
    question: &Question,
    live: Option<&Live>,
) -> Result<Explanation, ExplainError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(ExplainError::Internal(
            "explain runs the intake on its own runtime; call it outside one".into(),
        ));
    }
    let built = build(question)?;
    // Outside a runtime, upstreams start no health checks and no sweeps.
    let budget = Arc::new(MemoryBudget::new(config.server.replay_memory_total));
    let runtime = Runtime::new(config, budget, None);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ExplainError::Internal(format!("cannot start a runtime: {e}")))?;
    tokio.block_on(explain_in(&runtime, source, question, built, live))
}

async fn explain_in(
    runtime: &Runtime,
    source: ConfigSource<'_>,
    question: &Question,
    built: Built,
    live: Option<&Live>,
) -> Result<Explanation, ExplainError> {
    let mut explanation = Explanation {
        config: source.name.to_string(),
        live: live.map(|l| l.url.clone()),
        client: ClientReport {
            method: question.method.to_string(),
            path: question.path.clone(),
            headers: shown_headers(&built.headers),
            body: built.report,
        },
        request: None,
        outcome: Outcome::Answered { by: String::new() },
        routes_not_matching: Vec::new(),
        route: None,
        upstreams: Vec::new(),
        lists: None,
    };
    // classify
    let api = match classify(&question.method, &question.path) {
        Err(e) => {
            explanation.outcome = refused(&e);
            return Ok(explanation);
        }
        Ok(Target::Api(api)) => api,
        Ok(Target::Discovery(listing)) => {
            explanation.outcome = Outcome::Answered {
                by: format!(
                    "voxgate itself: the {} of every upstream the routes reach, merged",
                    match listing {
                        Listing::Models => "models",
                        Listing::Voices => "voices",
                    }
                ),
            };
            explanation.lists = Some(lists(runtime, listing, &built.headers, live).await?);
            return Ok(explanation);
        }
        Ok(own) => {
            explanation.outcome = Outcome::Answered {
                by: format!("voxgate itself ({own:?}), on the listener that serves it"),
            };
            return Ok(explanation);
        }
    };
    // intake
    let body = Full::new(built.body);
    let read = match api.operation {
        Operation::Speech => read_json(body, &built.headers, &runtime.limits).await,
        Operation::Transcriptions | Operation::Translations => {
            read_form(body, &built.headers, &runtime.limits).await
        }
        Operation::Other => read_raw(body, &built.headers, &runtime.limits).await,
    };
    let payload = match read {
        Ok((payload, _)) => payload,
        Err(IntakeError::Replay(e)) => {
            return Err(ExplainError::Internal(format!("storing the body: {e}")))
        }
        Err(e) => {
            explanation.outcome = refused(&GatewayError::Intake(e));
            return Ok(explanation);
        }
    };
    // route
    let facts = RequestFacts {
        operation: api.operation,
        method: &question.method,
        path: &api.path,
        model: payload.model(),
        voice: payload.voice(),
        response_format: payload.response_format(),
        stream: payload.stream(),
    };
    explanation.request = Some(FactsReport {
        endpoint: api.operation.name(),
        method: question.method.to_string(),
        path: api.path.clone(),
        model: facts.model.map(str::to_string),
        voice: facts.voice.map(str::to_string),
        response_format: facts.response_format.map(str::to_string),
        stream: facts.stream,
    });
    let found = runtime.router.find(&facts);
    let before = found.map_or(runtime.router.routes().len(), |(i, _)| i);
    for route in &runtime.router.routes()[..before] {
        let why = route
            .matcher
            .mismatches(&facts)
            .into_iter()
            .map(|m| match m.found {
                Some(found) => format!("{} wants {}, the request has `{found}`", m.key, m.wanted),
                None => format!("{} wants {}, the request has none", m.key, m.wanted),
            })
            .collect();
        explanation.routes_not_matching.push(RouteMiss {
            line: route.line,
            why,
        });
    }
    let Some((index, route)) = found else {
        let e = GatewayError::NoRoute {
            endpoint: api.operation.name(),
            model: payload.model().unwrap_or_default().to_string(),
        };
        let api_error = e.api_error();
        explanation.outcome = Outcome::NoRoute {
            status: api_error.status.as_u16(),
            message: api_error.message,
        };
        return Ok(explanation);
    };
    explanation.route = Some(route_report(route, index, runtime, source));
    explanation.outcome = Outcome::Routed {
        route_line: route.line,
    };
    // forward, as far as deciding what goes where
    let path_and_query = match question.path.split_once('?') {
        Some((_, query)) => format!("{}?{query}", api.path),
        None => api.path.clone(),
    };
    let request_id = HeaderValue::from_static(REQUEST_ID);
    let head = RequestHead {
        operation: api.operation,
        client: ClientRequest {
            method: &question.method,
            path_and_query: &path_and_query,
            headers: &built.headers,
            request_id: &request_id,
        },
    };
    let boundary = match &payload {
        Payload::Form(f) => Some(f.boundary.as_str()),
        _ => None,
    };
    let mut reports = Vec::new();
    let mut suitable_up = Vec::new();
    for &i in &route.to {
        let upstream = &runtime.upstreams[i];
        let seen = live.map(|l| l.upstream(upstream.name()));
        let up = match seen {
            Some(Some(status)) => status["up"].as_bool(),
            Some(None) => None,
            None => Some(upstream.pool.is_up()),
        };
        let endpoints = endpoints(upstream, seen.flatten());
        let mut report = UpstreamReport {
            name: upstream.name().to_string(),
            kind: upstream.config.dialect.kind.name(),
            unsuitable: None,
            up,
            attempt: None,
            tried: String::new(),
            convert: "none",
            endpoints,
            request: None,
        };
        match edits_for(upstream, route, api.operation, &payload) {
            Err(why) => {
                report.tried = format!("not sent: {why}");
                report.unsuitable = Some(why);
            }
            Ok(edits) => {
                report.convert = convert_name(edits.convert);
                let path = upstream_path(&upstream.config.dialect, &head);
                let headers = client_headers(edits.convert, &built.headers);
                let available: Vec<Option<bool>> =
                    report.endpoints.iter().map(|e| e.available).collect();
                report.request = Some(
                    upstream_request(
                        upstream,
                        &available,
                        &question.method,
                        &path,
                        &headers,
                        Some(payload.render(&edits)),
                        boundary,
                    )
                    .await?,
                );
                // An upstream missing from a live status is taken as up, as a fresh one is.
                suitable_up.push((reports.len(), up.unwrap_or(true)));
            }
        }
        reports.push(report);
    }
    let all_down = none_up(suitable_up.iter().map(|(_, up)| *up));
    let mut attempt = 0;
    for (at, up) in suitable_up {
        let report = &mut reports[at];
        if is_tried(up, all_down) {
            attempt += 1;
            report.attempt = Some(attempt);
            report.tried = match (attempt, all_down) {
                (1, false) => "first".into(),
                (1, true) => "first (no upstream of the route is up: each is tried anyway)".into(),
                _ => "fallback".into(),
            };
        } else {
            report.tried = "skipped: no available endpoint while another upstream has one".into();
        }
    }
    if attempt == 0 {
        // The server's own refusal, with the attempts it would have recorded.
        let attempts: Vec<Attempt> = route
            .to
            .iter()
            .zip(&reports)
            .map(|(&index, r)| Attempt {
                upstream: r.name.clone(),
                upstream_index: index as u32,
                result: AttemptResult::Unsuitable(r.unsuitable.clone().unwrap_or_default()),
                elapsed: std::time::Duration::ZERO,
            })
            .collect();
        let e = Exhausted::Unsuitable(summary(&attempts));
        explanation.outcome = refused(&GatewayError::Upstreams(e));
    }
    explanation.upstreams = reports;
    Ok(explanation)
}

/// For a model or voice list: each upstream asked, its live list request, its own names.
async fn lists(
    runtime: &Runtime,
    listing: Listing,
    client: &HeaderMap,
    live: Option<&Live>,
) -> Result<Vec<ListReport>, ExplainError> {
    let headers = list_headers(client);
    let mut out = Vec::new();
    for i in routed(runtime.router.routes(), listing == Listing::Voices) {
        let upstream = &runtime.upstreams[i];
        let config = &upstream.config;
        let (path, named, map) = match listing {
            Listing::Models => (
                &config.dialect.lists_models,
                &config.dialect.models,
                &config.model_map,
            ),
            Listing::Voices => (
                &config.dialect.lists_voices,
                &config.dialect.voices,
                &config.voice_map,
            ),
        };
        let seen = live.and_then(|l| l.upstream(upstream.name()));
        let available: Vec<Option<bool>> = endpoints(upstream, seen)
            .iter()
            .map(|e| e.available)
            .collect();
        let request = match path {
            Some(path) => Some(
                upstream_request(
                    upstream,
                    &available,
                    &Method::GET,
                    path,
                    &headers,
                    None,
                    None,
                )
                .await?,
            ),
            None => None,
        };
        let mut static_names: Vec<String> = named.clone();
        let mut mapped: Vec<&String> = map.keys().collect();
        mapped.sort();
        static_names.extend(mapped.into_iter().cloned());
        out.push(ListReport {
            name: upstream.name().to_string(),
            request,
            static_names,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn fields_are_strings_json_or_files() {
        let q = Question::parse(
            "transcriptions",
            &words("model=whisper-1 temperature:=0.2 file=@clip.wav"),
            &[],
        )
        .unwrap();
        assert_eq!(q.path, "/v1/audio/transcriptions");
        assert_eq!(
            q.fields[0],
            ("model".into(), Field::Text("whisper-1".into()))
        );
        assert_eq!(
            q.fields[1],
            ("temperature".into(), Field::Json(serde_json::json!(0.2)))
        );
        assert_eq!(q.fields[2], ("file".into(), Field::File("clip.wav".into())));
        let q = Question::parse("other", &words("GET /v1/models"), &[]).unwrap();
        assert_eq!((q.method, q.path.as_str()), (Method::GET, "/v1/models"));
    }

    #[test]
    fn mistakes_in_the_question_are_usage_errors() {
        let bad = |endpoint: &str, w: &str| match Question::parse(endpoint, &words(w), &[]) {
            Err(ExplainError::Usage(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(bad("speak", "model=x").contains("speech, transcriptions, translations, other"));
        assert!(bad("speech", "model").contains("not key=value"));
        assert!(bad("transcriptions", "file=@-").contains("standard input"));
        assert!(bad("speech", "file=@a.wav").contains("form"));
        assert!(bad("other", "GET").contains("method and a path"));
        assert!(bad("speech", "=x").contains("no key"));
    }

    #[test]
    fn a_route_is_quoted_up_to_the_next_table() {
        let text = "[upstreams.a]\nurl = \"http://x\"\n\n[[routes]]\nmatch = { endpoint = \"speech\" }\nto = [\"a\"]\n\n# next\n[[routes]]\nto = [\"a\"]\n";
        assert_eq!(
            route_text(text, 4).as_deref(),
            Some("[[routes]]\nmatch = { endpoint = \"speech\" }\nto = [\"a\"]")
        );
        assert_eq!(
            route_text(text, 9).as_deref(),
            Some("[[routes]]\nto = [\"a\"]")
        );
        assert_eq!(route_text(text, 1), None, "not a route's line");
    }

    #[test]
    fn keys_are_never_shown() {
        let ours = HeaderValue::from_static("Bearer sk-secret");
        let client = HeaderValue::from_static(CLIENT_KEY);
        let auth = header::AUTHORIZATION;
        assert_eq!(shown_value(&auth, &ours, Some(&client)), REDACTED_KEY);
        assert_eq!(shown_value(&auth, &client, Some(&client)), "<client key>");
        let api_key = HeaderName::from_static("x-api-key");
        assert_eq!(shown_value(&api_key, &ours, None), "<redacted>");
    }

    #[test]
    fn a_speech_request_is_routed_and_rendered_for_each_upstream() {
        let text = "[upstreams.k]\nkind = \"kokoro\"\nurl = \"http://127.0.0.1:8880\"\n\
            [upstreams.o]\nkind = \"openai\"\nurl = \"https://api.openai.com/\"\napi_key = \"sk-secret\"\n\
            [[routes]]\nmatch = { endpoint = \"transcriptions\" }\nto = [\"o\"]\n\
            [[routes]]\nto = [\"k\", \"o\"]\n";
        let config = Config::from_toml_with_env(text, "t.toml", &|_| None).unwrap();
        let q = Question::parse(
            "speech",
            &words("model=kokoro voice=af_sky input=hi lang_code=a"),
            &[],
        )
        .unwrap();
        let source = ConfigSource {
            name: "t.toml",
            text: Some(text),
        };
        let e = explain(config, source, &q, None).unwrap();
        assert!(e.matched());
        assert_eq!(e.routes_not_matching.len(), 1);
        assert_eq!(
            e.routes_not_matching[0].why,
            ["endpoint wants transcriptions, the request has `speech`"]
        );
        let route = e.route.as_ref().unwrap();
        assert_eq!(
            route.text.as_deref(),
            Some("[[routes]]\nto = [\"k\", \"o\"]")
        );
        let [k, o] = &e.upstreams[..] else {
            panic!("{:?}", e.upstreams)
        };
        assert_eq!((k.attempt, o.attempt), (Some(1), Some(2)));
        let kr = k.request.as_ref().unwrap();
        assert_eq!(kr.url, "http://127.0.0.1:8880/v1/audio/speech");
        assert_eq!(kr.authorization, "none");
        let or = o.request.as_ref().unwrap();
        assert_eq!(or.authorization, "api_key");
        assert_eq!(
            or.body.json,
            Some(serde_json::json!({"model": "tts-1", "voice": "nova", "input": "hi"}))
        );
        let shown = serde_json::to_string(&e).unwrap();
        assert!(!shown.contains("sk-secret"), "{shown}");
    }
}
