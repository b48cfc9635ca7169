//! Rules: what a request is ([`RequestFacts`]) and which route takes it ([`Router::find`]).
//!
//! A route's `match` table compiles into a [`Matcher`]; the router tries them in file order
//! and the first that matches wins. Matching is pure and allocation-free, so it can be
//! tested and benchmarked on its own.

use globset::{Glob, GlobBuilder, GlobMatcher};
use http::Method;

use crate::config::RouteConfig;

/// The kinds of request voxgate tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `POST /v1/audio/speech`: JSON in, audio out.
    Speech,
    /// `POST /v1/audio/transcriptions`: multipart in.
    Transcriptions,
    /// `POST /v1/audio/translations`: multipart in.
    Translations,
    /// Any other `/v1/*` request, forwarded unparsed.
    Other,
}

impl Endpoint {
    pub const ALL: [Endpoint; 4] = [
        Endpoint::Speech,
        Endpoint::Transcriptions,
        Endpoint::Translations,
        Endpoint::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Speech => "speech",
            Endpoint::Transcriptions => "transcriptions",
            Endpoint::Translations => "translations",
            Endpoint::Other => "other",
        }
    }

    pub fn from_name(name: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.name() == name)
    }
}

/// What the rules may look at. Absent fields are `None`; a pattern on an absent field
/// does not match.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub endpoint: Endpoint,
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
}

/// A compiled `match` table: every key present must match.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub endpoints: Option<Vec<Endpoint>>,
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

impl Matcher {
    pub fn matches(&self, facts: &RequestFacts<'_>) -> bool {
        self.endpoints
            .as_ref()
            .is_none_or(|e| e.contains(&facts.endpoint))
            && self.stream.is_none_or(|s| s == facts.stream)
            && field_matches(&self.method, Some(facts.method.as_str()))
            && field_matches(&self.path, Some(facts.path))
            && field_matches(&self.model, facts.model)
            && field_matches(&self.voice, facts.voice)
            && field_matches(&self.response_format, facts.response_format)
    }
}

/// The routes of one configuration, in order.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<RouteConfig>,
}

impl Router {
    pub fn new(routes: Vec<RouteConfig>) -> Router {
        Router { routes }
    }

    /// The first route whose matcher accepts the request, with its index.
    pub fn find(&self, facts: &RequestFacts<'_>) -> Option<(usize, &RouteConfig)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matcher.matches(facts))
    }

    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
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
            endpoint: Endpoint::Speech,
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
            endpoint: Endpoint::Transcriptions,
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
            endpoint: Endpoint::Other,
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

    #[test]
    fn endpoint_globs_expand_to_endpoints() {
        let r = router("[[routes]]\nmatch = { endpoint = \"trans*\" }\nto = [\"a\"]\n");
        assert!(r.find(&transcription("whisper-1", false)).is_some());
        assert!(r.find(&speech("tts-1", "alloy")).is_none());
    }
}
