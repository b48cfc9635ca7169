//! Rules: what a request is ([`RequestFacts`]) and which route takes it ([`Router::find`]).
//!
//! A route's `match` table compiles into a [`Matcher`]; the router tries them in file order
//! and the first that matches wins. Matching is pure and allocation-free, so it can be
//! tested and benchmarked on its own.

use std::collections::HashMap;

use globset::{Glob, GlobBuilder, GlobMatcher};
use http::Method;

use std::time::Duration;

/// The kinds of request voxgate tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `POST /v1/audio/speech`: JSON in, audio out.
    Speech,
    /// `POST /v1/audio/transcriptions`: multipart in.
    Transcriptions,
    /// `POST /v1/audio/translations`: multipart in.
    Translations,
    /// Any other `/v1/*` request, forwarded unparsed.
    Other,
}

impl Operation {
    pub const ALL: [Operation; 4] = [
        Operation::Speech,
        Operation::Transcriptions,
        Operation::Translations,
        Operation::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Operation::Speech => "speech",
            Operation::Transcriptions => "transcriptions",
            Operation::Translations => "translations",
            Operation::Other => "other",
        }
    }

    pub fn from_name(name: &str) -> Option<Operation> {
        Operation::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// What the rules may look at. Absent fields are `None`; a pattern on an absent field
/// does not match.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub operation: Operation,
    pub method: &'a Method,
    /// The normalised path (`/v1/...`), without the query.
    pub path: &'a str,
    pub model: Option<&'a str>,
    /// A voice name, or the `id` of a `{"id": …}` voice object.
    pub voice: Option<&'a str>,
    /// As sent, or the endpoint's default (`mp3` for speech, `json` for transcriptions).
    pub response_format: Option<&'a str>,
    /// `stream=true` on a transcription, `stream_format="sse"` on speech.
    pub stream: bool,
}

/// One or more alternatives, each a literal or a glob (`*`, `?`, `[abc]`, `{a,b}`).
#[derive(Debug, Clone)]
pub struct Pattern {
    literals: Vec<String>,
    globs: Vec<GlobMatcher>,
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', ']', '{', '}'])
}

impl Pattern {
    pub fn new(items: &[String]) -> Result<Pattern, globset::Error> {
        let mut literals = Vec::new();
        let mut globs = Vec::new();
        for item in items {
            if is_glob(item) {
                let glob: Glob = GlobBuilder::new(item)
                    .literal_separator(false)
                    .backslash_escape(true)
                    .build()?;
                globs.push(glob.compile_matcher());
            } else {
                literals.push(item.clone());
            }
        }
        Ok(Pattern { literals, globs })
    }

    pub fn matches(&self, value: &str) -> bool {
        self.literals.iter().any(|l| l == value) || self.globs.iter().any(|g| g.is_match(value))
    }

    /// The alternatives written without glob characters.
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.literals.iter().map(String::as_str)
    }

    /// Every alternative as it was written: the literals, then the globs.
    pub fn written(&self) -> impl Iterator<Item = &str> {
        self.literals()
            .chain(self.globs.iter().map(|g| g.glob().glob()))
    }

    /// [`Pattern::written`], collected: for messages.
    pub fn alternatives(&self) -> Vec<&str> {
        self.written().collect()
    }
}

/// One `match` key a request does not satisfy, for `voxgate explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub key: &'static str,
    /// What the key asks for, as written (alternatives joined by ` | `).
    pub wanted: String,
    /// What the request has; `None` when it has no such field.
    pub found: Option<String>,
}

fn field_mismatch(
    key: &'static str,
    pattern: &Option<Pattern>,
    value: Option<&str>,
) -> Option<Mismatch> {
    let pattern = pattern.as_ref()?;
    match value {
        Some(v) if pattern.matches(v) => None,
        _ => Some(Mismatch {
            key,
            wanted: pattern.alternatives().join(" | "),
            found: value.map(str::to_string),
        }),
    }
}

/// A compiled `match` table: every key present must match.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub endpoints: Option<Vec<Operation>>,
    pub method: Option<Pattern>,
    pub path: Option<Pattern>,
    pub model: Option<Pattern>,
    pub voice: Option<Pattern>,
    pub response_format: Option<Pattern>,
    pub stream: Option<bool>,
}

fn field_matches(pattern: &Option<Pattern>, value: Option<&str>) -> bool {
    match (pattern, value) {
        (None, _) => true,
        (Some(p), Some(v)) => p.matches(v),
        (Some(_), None) => false,
    }
}

/// The match as one line, for people (the status page): `endpoint = speech, model =
/// tts-1 | gpt-*`; `any request` for an empty one.
impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<String> = Vec::new();
        if let Some(endpoints) = &self.endpoints {
            let names: Vec<&str> = endpoints.iter().map(|e| e.name()).collect();
            keys.push(format!("endpoint = {}", names.join(" | ")));
        }
        let patterns = [
            ("method", &self.method),
            ("path", &self.path),
            ("model", &self.model),
            ("voice", &self.voice),
            ("response_format", &self.response_format),
        ];
        for (key, pattern) in patterns {
            if let Some(p) = pattern {
                keys.push(format!(
                    "{key} = {}",
                    p.written().collect::<Vec<_>>().join(" | ")
                ));
            }
        }
        if let Some(stream) = self.stream {
            keys.push(format!("stream = {stream}"));
        }
        match keys.is_empty() {
            true => f.write_str("any request"),
            false => f.write_str(&keys.join(", ")),
        }
    }
}

impl Matcher {
    pub fn matches(&self, facts: &RequestFacts<'_>) -> bool {
        self.endpoints
            .as_ref()
            .is_none_or(|e| e.contains(&facts.operation))
            && self.stream.is_none_or(|s| s == facts.stream)
            && field_matches(&self.method, Some(facts.method.as_str()))
            && field_matches(&self.path, Some(facts.path))
            && field_matches(&self.model, facts.model)
            && field_matches(&self.voice, facts.voice)
            && field_matches(&self.response_format, facts.response_format)
    }

    /// Every key that keeps this matcher from taking the request: empty exactly when
    /// [`Matcher::matches`] is true. Slower (it allocates); for `voxgate explain`.
    pub fn mismatches(&self, facts: &RequestFacts<'_>) -> Vec<Mismatch> {
        let mut out = Vec::new();
        if let Some(endpoints) = &self.endpoints {
            if !endpoints.contains(&facts.operation) {
                let names: Vec<&str> = endpoints.iter().map(|e| e.name()).collect();
                out.push(Mismatch {
                    key: "endpoint",
                    wanted: names.join(" | "),
                    found: Some(facts.operation.name().to_string()),
                });
            }
        }
        if let Some(stream) = self.stream {
            if stream != facts.stream {
                out.push(Mismatch {
                    key: "stream",
                    wanted: stream.to_string(),
                    found: Some(facts.stream.to_string()),
                });
            }
        }
        let fields = [
            ("method", &self.method, Some(facts.method.as_str())),
            ("path", &self.path, Some(facts.path)),
            ("model", &self.model, facts.model),
            ("voice", &self.voice, facts.voice),
            (
                "response_format",
                &self.response_format,
                facts.response_format,
            ),
        ];
        for (key, pattern, value) in fields {
            out.extend(field_mismatch(key, pattern, value));
        }
        out
    }
}

/// The routes of one configuration, in order.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<RouteConfig>,
    /// Per endpoint: the routes whose `model` is a list of literals, by model…
    by_model: [HashMap<String, Vec<usize>>; 4],
    /// …and every other route that can match the endpoint. Both in file order.
    rest: [Vec<usize>; 4],
}

fn endpoint_slot(endpoint: Operation) -> usize {
    match endpoint {
        Operation::Speech => 0,
        Operation::Transcriptions => 1,
        Operation::Translations => 2,
        Operation::Other => 3,
    }
}

impl Router {
    /// Indexes the routes so that a request only looks at the routes that could take it:
    /// those for its endpoint, and of those with literal models, only its model's. With
    /// many model routes, finding one costs about the same as with few.
    pub fn new(routes: Vec<RouteConfig>) -> Router {
        let mut by_model: [HashMap<String, Vec<usize>>; 4] = Default::default();
        let mut rest: [Vec<usize>; 4] = Default::default();
        for (i, route) in routes.iter().enumerate() {
            for endpoint in Operation::ALL {
                let slot = endpoint_slot(endpoint);
                if route
                    .matcher
                    .endpoints
                    .as_ref()
                    .is_some_and(|e| !e.contains(&endpoint))
                {
                    continue;
                }
                match &route.matcher.model {
                    Some(model) if model.globs.is_empty() => {
                        for literal in model.literals() {
                            let list = by_model[slot].entry(literal.to_string()).or_default();
                            if list.last() != Some(&i) {
                                list.push(i);
                            }
                        }
                    }
                    _ => rest[slot].push(i),
                }
            }
        }
        Router {
            routes,
            by_model,
            rest,
        }
    }

    /// The first route whose matcher accepts the request, with its index.
    pub fn find(&self, facts: &RequestFacts<'_>) -> Option<(usize, &RouteConfig)> {
        let slot = endpoint_slot(facts.operation);
        let rest = &self.rest[slot];
        let by_model: &[usize] = facts
            .model
            .and_then(|m| self.by_model[slot].get(m))
            .map_or(&[], Vec::as_slice);
        // Merge the two ordered lists, testing candidates in file order.
        let (mut a, mut b) = (0, 0);
        while a < rest.len() || b < by_model.len() {
            let take_rest = b == by_model.len() || (a < rest.len() && rest[a] < by_model[b]);
            let i = if take_rest {
                a += 1;
                rest[a - 1]
            } else {
                b += 1;
                by_model[b - 1]
            };
            if self.routes[i].matcher.matches(facts) {
                return Some((i, &self.routes[i]));
            }
        }
        None
    }

    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
    }
}

/// A value a route's `set` writes into the request body.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl FieldValue {
    /// The text a multipart form part carries for this value.
    pub fn as_form_text(&self) -> String {
        match self {
            FieldValue::String(s) => s.clone(),
            FieldValue::Integer(i) => i.to_string(),
            FieldValue::Float(f) => f.to_string(),
            FieldValue::Bool(b) => b.to_string(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            FieldValue::String(s) => serde_json::Value::from(s.as_str()),
            FieldValue::Integer(i) => serde_json::Value::from(*i),
            FieldValue::Float(f) => serde_json::Value::from(*f),
            FieldValue::Bool(b) => serde_json::Value::from(*b),
        }
    }
}

/// What makes a failed attempt worth trying on the next upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackPolicy {
    /// No connection could be made: nothing was sent.
    pub connect: bool,
    /// No response headers within the upstream's `response_timeout`.
    pub timeout: bool,
    /// The connection broke after the request was sent, before any response header.
    pub reset: bool,
    /// Response statuses that send the request on (sorted).
    pub statuses: Vec<u16>,
}

impl Default for FallbackPolicy {
    fn default() -> Self {
        FallbackPolicy {
            connect: true,
            timeout: true,
            reset: true,
            statuses: vec![502, 503, 504],
        }
    }
}

/// One `[[routes]]` entry, compiled.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// 1-based line of the `[[routes]]` entry, for logs and messages.
    pub line: usize,
    /// `name = "…"`: unique, for metrics labels (and logs) that survive edits moving the
    /// route to another line.
    pub name: Option<String>,
    pub matcher: Matcher,
    /// Indices into the config's upstreams, tried in order.
    pub to: Vec<usize>,
    /// Body fields written before forwarding, in key order.
    pub set: Vec<(String, FieldValue)>,
    pub fallback: FallbackPolicy,
    /// Time for the whole request, every attempt included, until response headers.
    pub deadline: Option<Duration>,
    /// `cache = false`: this route's speech is never served from or kept in the cache.
    pub cache: bool,
}

impl RouteConfig {
    /// How metrics and messages name the route: its `name`, else `line:N`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("line:{}", self.line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn router(routes: &str) -> Router {
        let text = format!(
            "[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[upstreams.b]\nurl = \"http://127.0.0.1:2\"\n{routes}"
        );
        let c = Config::from_toml_with_env(&text, "t", &|_| None).unwrap();
        Router::new(c.routes)
    }

    fn speech<'a>(model: &'a str, voice: &'a str) -> RequestFacts<'a> {
        RequestFacts {
            operation: Operation::Speech,
            method: &Method::POST,
            path: "/v1/audio/speech",
            model: Some(model),
            voice: Some(voice),
            response_format: Some("mp3"),
            stream: false,
        }
    }

    fn transcription(model: &str, stream: bool) -> RequestFacts<'_> {
        RequestFacts {
            operation: Operation::Transcriptions,
            method: &Method::POST,
            path: "/v1/audio/transcriptions",
            model: Some(model),
            voice: None,
            response_format: Some("json"),
            stream,
        }
    }

    fn found(r: &Router, f: &RequestFacts<'_>) -> Option<usize> {
        r.find(f).map(|(i, _)| i)
    }

    #[test]
    fn first_matching_route_wins() {
        let r = router(
            "[[routes]]\nmatch = { voice = \"af_*\" }\nto = [\"a\"]\n[[routes]]\nto = [\"b\"]\n",
        );
        assert_eq!(found(&r, &speech("tts-1", "af_sky")), Some(0));
        assert_eq!(found(&r, &speech("tts-1", "alloy")), Some(1));
    }

    #[test]
    fn a_match_reads_as_one_line() {
        let r = router(
            "[[routes]]\nmatch = { endpoint = [\"transcriptions\", \"translations\"], model = [\"whisper-*\", \"whisper-1\"], stream = true }\nto = [\"a\"]\n[[routes]]\nto = [\"b\"]\n",
        );
        let lines: Vec<String> = r.routes().iter().map(|r| r.matcher.to_string()).collect();
        assert_eq!(
            lines,
            [
                "endpoint = transcriptions | translations, model = whisper-1 | whisper-*, stream = true",
                "any request",
            ]
        );
    }

    #[test]
    fn lists_literals_and_globs_combine() {
        let r = router("[[routes]]\nmatch = { model = [\"tts-1\", \"gpt-4o-*\"] }\nto = [\"a\"]\n");
        assert!(r.find(&speech("tts-1", "x")).is_some());
        assert!(r.find(&speech("gpt-4o-mini-tts", "x")).is_some());
        assert!(r.find(&speech("tts-1-hd", "x")).is_none());
    }

    #[test]
    fn globs_cross_slashes_in_model_names() {
        let r = router("[[routes]]\nmatch = { model = \"Systran/*\" }\nto = [\"a\"]\n");
        assert!(r
            .find(&transcription("Systran/faster-whisper-small", false))
            .is_some());
    }

    #[test]
    fn endpoint_and_stream_narrow_the_match() {
        let r = router(
            "[[routes]]\nmatch = { endpoint = \"transcriptions\", stream = true }\nto = [\"a\"]\n\
             [[routes]]\nmatch = { endpoint = [\"transcriptions\", \"translations\"] }\nto = [\"b\"]\n",
        );
        assert_eq!(found(&r, &transcription("whisper-1", true)), Some(0));
        assert_eq!(found(&r, &transcription("whisper-1", false)), Some(1));
        assert_eq!(found(&r, &speech("tts-1", "alloy")), None);
    }

    #[test]
    fn a_pattern_on_an_absent_field_does_not_match() {
        let r = router("[[routes]]\nmatch = { voice = \"*\" }\nto = [\"a\"]\n");
        assert!(r.find(&transcription("whisper-1", false)).is_none());
        assert!(r.find(&speech("tts-1", "")).is_some());
    }

    #[test]
    fn method_and_path_match_other_requests() {
        let r = router(
            "[[routes]]\nmatch = { endpoint = \"other\", method = \"GET\", path = \"/v1/audio/voices\" }\nto = [\"a\"]\n\
             [[routes]]\nmatch = { endpoint = \"other\" }\nto = [\"b\"]\n",
        );
        let mut f = RequestFacts {
            operation: Operation::Other,
            method: &Method::GET,
            path: "/v1/audio/voices",
            model: None,
            voice: None,
            response_format: None,
            stream: false,
        };
        assert_eq!(found(&r, &f), Some(0));
        f.method = &Method::POST;
        assert_eq!(found(&r, &f), Some(1));
    }

    /// Every combination of these facts finds what a plain scan in file order finds.
    #[test]
    fn the_index_finds_exactly_what_a_scan_finds() {
        let r = router(
            "[[routes]]\nmatch = { model = [\"tts-1\", \"whisper-1\"], voice = \"af_*\" }\nto = [\"a\"]\n\
             [[routes]]\nmatch = { endpoint = \"transcriptions\", model = \"gpt-*\" }\nto = [\"a\"]\n\
             [[routes]]\nmatch = { model = \"tts-1\", stream = true }\nto = [\"b\"]\n\
             [[routes]]\nmatch = { endpoint = [\"speech\", \"other\"], response_format = \"pcm\" }\nto = [\"b\"]\n\
             [[routes]]\nmatch = { model = \"tts-1\" }\nto = [\"a\"]\n\
             [[routes]]\nmatch = { endpoint = \"translations\", model = [\"whisper-1\", \"x\"] }\nto = [\"a\"]\n\
             [[routes]]\nmatch = { method = \"GET\" }\nto = [\"b\"]\n",
        );
        let scan = |f: &RequestFacts<'_>| r.routes().iter().position(|x| x.matcher.matches(f));
        // `explain`'s reasons agree with the matcher on every route.
        let reasons_agree = |f: &RequestFacts<'_>| {
            r.routes()
                .iter()
                .all(|x| x.matcher.matches(f) == x.matcher.mismatches(f).is_empty())
        };
        let mut checked = 0;
        for endpoint in Operation::ALL {
            for model in [
                None,
                Some("tts-1"),
                Some("whisper-1"),
                Some("gpt-4o"),
                Some("x"),
                Some("y"),
            ] {
                for voice in [None, Some("af_sky"), Some("alloy")] {
                    for format in [None, Some("pcm"), Some("mp3")] {
                        for stream in [false, true] {
                            for method in [Method::POST, Method::GET] {
                                let f = RequestFacts {
                                    operation: endpoint,
                                    method: &method,
                                    path: "/v1/x",
                                    model,
                                    voice,
                                    response_format: format,
                                    stream,
                                };
                                assert_eq!(found(&r, &f), scan(&f), "{f:?}");
                                assert!(reasons_agree(&f), "{f:?}");
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 4 * 6 * 3 * 3 * 2 * 2);
    }

    #[test]
    fn mismatches_name_each_key_with_what_it_wants() {
        let r = router(
            "[[routes]]\nmatch = { endpoint = \"speech\", model = [\"tts-1\", \"gpt-*\"], voice = \"af_*\" }\nto = [\"a\"]\n",
        );
        let m = &r.routes()[0].matcher;
        assert!(m.mismatches(&speech("tts-1", "af_sky")).is_empty());
        assert_eq!(
            m.mismatches(&speech("kokoro", "af_sky")),
            [Mismatch {
                key: "model",
                wanted: "tts-1 | gpt-*".into(),
                found: Some("kokoro".into()),
            }]
        );
        let keys: Vec<&str> = m
            .mismatches(&transcription("whisper-1", false))
            .iter()
            .map(|x| x.key)
            .collect();
        assert_eq!(keys, ["endpoint", "model", "voice"]);
        let voice = &m.mismatches(&transcription("tts-1", false))[1];
        assert_eq!(voice.found, None, "a transcription has no voice");
    }

    #[test]
    fn endpoint_globs_expand_to_endpoints() {
        let r = router("[[routes]]\nmatch = { endpoint = \"trans*\" }\nto = [\"a\"]\n");
        assert!(r.find(&transcription("whisper-1", false)).is_some());
        assert!(r.find(&speech("tts-1", "alloy")).is_none());
    }
}
