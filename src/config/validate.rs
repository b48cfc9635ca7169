//! Validation: the raw structs turned into one typed [`Config`], every mistake collected
//! with its line and column instead of stopping at the first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use toml::Spanned;

use super::diagnostic::{Diagnostic, Locator};
use super::raw::*;
use super::*;
use crate::route::FieldValue;

/// What a path sent to an upstream must be: a request target that needs no encoding.
const PATH_RULE: &str = "must start with / and hold no spaces or control characters";

fn is_request_path(path: &str) -> bool {
    path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic())
}

/// Characters a `set` key may use: they end up inside a multipart `name="…"` parameter.
fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'[' | b']'))
}

const DEFAULT_LISTEN: &str = "127.0.0.1:9000";
const DEFAULT_MAX_BODY: u64 = 26_214_400;
const DEFAULT_MAX_JSON: u64 = 1_048_576;
const DEFAULT_REPLAY_PER_REQUEST: u64 = 4 * 1_048_576;
const DEFAULT_REPLAY_TOTAL: u64 = 24 * 1_048_576;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_LINGERING_TIME: Duration = Duration::from_secs(5);
const DEFAULT_LINGERING_BYTES: u64 = 25 * 1_048_576;
const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);

/// `"25MiB"` → 26214400: a whole number and a unit (B, KB, MB, GB, KiB, MiB, GiB; case
/// ignored, a space allowed between them).
fn parse_byte_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(scale)
}

/// The variable names a config string refers to as `${NAME}` or `${NAME:-default}`.
fn env_names(text: &str) -> impl Iterator<Item = &str> {
    text.split("${").skip(1).filter_map(|rest| {
        let inner = &rest[..rest.find('}')?];
        Some(inner.split_once(":-").map_or(inner, |(name, _)| name))
    })
}

pub(super) struct Validator<'a> {
    locator: &'a Locator<'a>,
    env: &'a dyn Fn(&str) -> Option<String>,
    diagnostics: Vec<Diagnostic>,
}

impl Validator<'_> {
    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let d = self.locator.span(span, message);
        self.diagnostics.push(d);
    }

    pub(super) fn duration(
        &mut self,
        value: Option<Spanned<String>>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let Some(value) = value else { return default };
        match humantime::parse_duration(value.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.error(value.span(), format!("`{key}` must be longer than zero"));
                default
            }
            Err(e) => {
                self.error(
                    value.span(),
                    format!("`{key}` is not a duration such as \"500ms\" or \"30s\": {e}"),
                );
                default
            }
        }
    }

    fn size(&mut self, value: Option<Spanned<i64>>, key: &str, default: u64) -> u64 {
        let Some(value) = value else { return default };
        match u64::try_from(*value.get_ref()) {
            Ok(n) if n > 0 => n,
            _ => {
                self.error(
                    value.span(),
                    format!("`{key}` must be a positive number of bytes"),
                );
                default
            }
        }
    }

    /// A number of bytes written as an integer or as a string with a binary or decimal
    /// unit: `26214400`, `"25MiB"`, `"512KiB"`, `"1GB"`, `"100B"`.
    pub(super) fn byte_size(
        &mut self,
        value: Option<Spanned<toml::Value>>,
        key: &str,
        default: u64,
    ) -> u64 {
        let Some(value) = value else { return default };
        let bytes = match value.get_ref() {
            toml::Value::Integer(n) => u64::try_from(*n).ok(),
            toml::Value::String(text) => parse_byte_size(text),
            _ => None,
        };
        match bytes {
            Some(n) if n > 0 => n,
            _ => {
                self.error(
                    value.span(),
                    format!(
                        "`{key}` must be a positive number of bytes, or a string such as \"25MiB\""
                    ),
                );
                default
            }
        }
    }

    /// Expands `${VAR}` and `${VAR:-default}`.
    pub(super) fn expand(&mut self, value: &Spanned<String>, key: &str) -> String {
        let text = value.get_ref();
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(len) = rest[start..].find('}') else {
                self.error(value.span(), format!("`{key}` has an unclosed `${{`"));
                return out;
            };
            let inner = &rest[start + 2..start + len];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            let valid_name =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid_name {
                self.error(
                    value.span(),
                    format!("`{key}` names an invalid environment variable `{name}`"),
                );
            } else {
                match ((self.env)(name), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => self.error(
                        value.span(),
                        format!(
                            "`{key}` uses ${{{name}}}, which is not set in the environment \
                             (write ${{{name}:-}} to allow it to be empty)"
                        ),
                    ),
                }
            }
            rest = &rest[start + len + 1..];
        }
        out.push_str(rest);
        out
    }

    fn url(&mut self, name: &str, value: &Spanned<String>) -> Uri {
        let fallback = Uri::from_static("http://127.0.0.1");
        let text = self.expand(value, "url");
        let uri: Uri = match text.parse() {
            Ok(uri) => uri,
            Err(e) => {
                self.error(
                    value.span(),
                    format!("upstream `{name}`: `url` is not a valid URL: {e}"),
                );
                return fallback;
            }
        };
        let problem = match (uri.scheme_str(), uri.authority()) {
            (Some("http" | "https"), Some(_)) if uri.query().is_some() => {
                Some("must not have a query string".to_string())
            }
            (Some("http" | "https"), Some(authority)) if authority.as_str().contains('@') => {
                Some("must not carry a user or password; use `api_key`".to_string())
            }
            (Some("http" | "https"), Some(_)) => {
                let path = uri.path().trim_end_matches('/');
                if path.ends_with("/v1") {
                    Some(
                        "must not end in /v1: voxgate appends the full request path \
                         (/v1/audio/speech, …) itself"
                            .to_string(),
                    )
                } else {
                    None
                }
            }
            (Some(scheme), _) if scheme != "http" && scheme != "https" => {
                Some(format!("has scheme `{scheme}`; use http or https"))
            }
            _ => Some("must be an absolute http:// or https:// URL with a host".to_string()),
        };
        match problem {
            Some(p) => {
                self.error(value.span(), format!("upstream `{name}`: `url` {p}"));
                fallback
            }
            None => uri,
        }
    }

    fn count(
        &mut self,
        value: Option<Spanned<i64>>,
        key: &str,
        range: (u32, u32),
        default: u32,
    ) -> u32 {
        let Some(value) = value else { return default };
        match u32::try_from(*value.get_ref()) {
            Ok(n) if (range.0..=range.1).contains(&n) => n,
            _ => {
                self.error(
                    value.span(),
                    format!(
                        "`{key}` must be a whole number from {} to {}",
                        range.0, range.1
                    ),
                );
                default
            }
        }
    }

    /// `url = …`, or `endpoints = ["url", { url, weight, backup }, …]`.
    fn endpoints(
        &mut self,
        name: &str,
        span: Range<usize>,
        url: Option<Spanned<String>>,
        endpoints: Option<Spanned<Vec<Spanned<toml::Value>>>>,
    ) -> Vec<EndpointConfig> {
        let plain = |uri| EndpointConfig {
            url: uri,
            weight: 1,
            backup: false,
        };
        match (url, endpoints) {
            (Some(url), None) => vec![plain(self.url(name, &url))],
            (None, Some(list)) => {
                let list_span = list.span();
                let mut out = Vec::new();
                for item in list.into_inner() {
                    let item_span = item.span();
                    match item.into_inner() {
                        toml::Value::String(s) => {
                            let spanned = Spanned::new(item_span, s);
                            out.push(plain(self.url(name, &spanned)));
                        }
                        toml::Value::Table(mut t) => {
                            let url = match t.remove("url") {
                                Some(toml::Value::String(s)) => Spanned::new(item_span.clone(), s),
                                _ => {
                                    self.error(
                                        item_span,
                                        "an endpoint table needs `url = \"http://…\"`",
                                    );
                                    continue;
                                }
                            };
                            let weight = match t.remove("weight") {
                                None => 1,
                                Some(toml::Value::Integer(w)) if (1..=1000).contains(&w) => {
                                    w as u32
                                }
                                Some(_) => {
                                    self.error(
                                        item_span.clone(),
                                        "`weight` must be a whole number from 1 to 1000",
                                    );
                                    1
                                }
                            };
                            let backup = match t.remove("backup") {
                                None => false,
                                Some(toml::Value::Boolean(b)) => b,
                                Some(_) => {
                                    self.error(item_span.clone(), "`backup` must be true or false");
                                    false
                                }
                            };
                            if let Some(key) = t.keys().next() {
                                self.error(
                                    item_span.clone(),
                                    format!("unknown endpoint key `{key}`, expected `url`, `weight` or `backup`"),
                                );
                            }
                            out.push(EndpointConfig {
                                url: self.url(name, &url),
                                weight,
                                backup,
                            });
                        }
                        _ => self.error(
                            item_span,
                            "an endpoint is a URL string or a table { url, weight, backup }",
                        ),
                    }
                }
                if out.is_empty() {
                    self.error(
                        list_span,
                        format!("upstream `{name}`: `endpoints` is empty"),
                    );
                } else if out.iter().all(|e| e.backup) {
                    self.error(
                        list_span,
                        format!("upstream `{name}`: every endpoint is a backup; make one primary"),
                    );
                }
                out
            }
            (Some(url), Some(_)) => {
                self.error(
                    url.span(),
                    format!("upstream `{name}`: give `url` or `endpoints`, not both"),
                );
                Vec::new()
            }
            (None, None) => {
                self.error(
                    span,
                    format!("upstream `{name}` needs `url` or `endpoints`"),
                );
                Vec::new()
            }
        }
    }

    /// The certificates of a PEM file, checked now so that a bad path fails at load.
    fn ca_file(
        &mut self,
        raw: Option<Spanned<String>>,
    ) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        let Some(raw) = raw else { return Vec::new() };
        let certs: Result<Vec<_>, _> =
            rustls::pki_types::CertificateDer::pem_file_iter(raw.get_ref())
                .and_then(Iterator::collect);
        match certs {
            Ok(certs) if !certs.is_empty() => certs,
            Ok(_) => {
                self.error(raw.span(), "`ca_file` holds no PEM certificate");
                Vec::new()
            }
            Err(e) => {
                self.error(
                    raw.span(),
                    format!("`ca_file` cannot be read as PEM certificates: {e}"),
                );
                Vec::new()
            }
        }
    }

    /// `[server] tls`: the certificate chain and its key, read and matched now, so that a
    /// bad pair fails the load (or the reload) instead of every handshake.
    fn inbound_tls(&mut self, raw: Spanned<RawTls>) -> Option<InboundTls> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let RawTls { cert, key } = raw.into_inner();
        // `${VAR}` allowed: systemd's LoadCredential= hands files over in
        // ${CREDENTIALS_DIRECTORY}.
        let (cert_path, key_path) = (self.expand(&cert, "tls.cert"), self.expand(&key, "tls.key"));
        let chain: Result<Vec<_>, _> =
            CertificateDer::pem_file_iter(&cert_path).and_then(Iterator::collect);
        let chain = match chain {
            Ok(chain) if !chain.is_empty() => Some(chain),
            Ok(_) => {
                self.error(cert.span(), "`tls.cert` holds no PEM certificate");
                None
            }
            Err(e) => {
                let message = format!("`tls.cert` cannot be read as PEM certificates: {e}");
                self.error(cert.span(), message);
                None
            }
        };
        let private = match PrivateKeyDer::from_pem_file(&key_path) {
            Ok(private) => Some(private),
            Err(e) => {
                let message = format!("`tls.key` cannot be read as a PEM private key: {e}");
                self.error(key.span(), message);
                None
            }
        };
        let (chain, private) = (chain?, private?);
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let built = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private));
        match built {
            Ok(mut server) => {
                server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                Some(InboundTls {
                    cert: PathBuf::from(cert_path),
                    key: PathBuf::from(key_path),
                    server: std::sync::Arc::new(server),
                })
            }
            Err(e) => {
                let message = format!("`tls.key` does not fit `tls.cert`: {e}");
                self.error(key.span(), message);
                None
            }
        }
    }

    /// The upstream's `health` table, or its kind's check (`preset` is that check's path).
    fn health(
        &mut self,
        raw: Option<Spanned<RawHealth>>,
        preset: Option<&str>,
    ) -> Option<HealthCheck> {
        let raw = match raw {
            Some(raw) => raw.into_inner(),
            None => RawHealth {
                enabled: None,
                method: None,
                path: Some(Spanned::new(0..0, preset?.to_string())),
                interval: Some(Spanned::new(0..0, "5s".to_string())),
                timeout: None,
                rise: None,
                fall: None,
                expect: None,
            },
        };
        if raw.enabled == Some(false) {
            return None;
        }
        let preset_path = preset.unwrap_or("/health").to_string();
        let method = match raw.method {
            None => http::Method::GET,
            Some(m) => match http::Method::from_bytes(m.get_ref().as_bytes()) {
                Ok(method) => method,
                Err(_) => {
                    self.error(m.span(), format!("`{}` is not an HTTP method", m.get_ref()));
                    http::Method::GET
                }
            },
        };
        let path = match raw.path {
            None => preset_path,
            Some(p) if is_request_path(p.get_ref()) => p.into_inner(),
            Some(p) => {
                self.error(p.span(), format!("health `path` {PATH_RULE}"));
                preset_path
            }
        };
        let expect = match raw.expect {
            None => (200, 299),
            Some(e) => {
                let span = e.span();
                let parsed = match e.into_inner() {
                    toml::Value::Integer(n) => u16::try_from(n).ok().map(|n| (n, n)),
                    toml::Value::String(s) => s.split_once('-').and_then(|(a, b)| {
                        Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?))
                    }),
                    _ => None,
                };
                match parsed {
                    Some((a, b)) if (100..=599).contains(&a) && a <= b && b <= 599 => (a, b),
                    _ => {
                        self.error(
                            span,
                            "health `expect` is a status (200) or a range (\"200-399\")",
                        );
                        (200, 299)
                    }
                }
            }
        };
        Some(HealthCheck {
            method,
            path,
            interval: self.duration(raw.interval, "interval", Duration::from_secs(2)),
            timeout: self.duration(raw.timeout, "timeout", Duration::from_secs(1)),
            rise: self.count(raw.rise, "rise", (1, 100), 2),
            fall: self.count(raw.fall, "fall", (1, 100), 3),
            expect,
        })
    }

    /// A match value: a string or a list of strings, each a glob.
    pub(super) fn pattern(
        &mut self,
        value: Option<Spanned<toml::Value>>,
        key: &str,
    ) -> Option<Pattern> {
        let value = value?;
        let span = value.span();
        let items: Vec<String> = match value.into_inner() {
            toml::Value::String(s) => vec![s],
            toml::Value::Array(items) => {
                let mut strings = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(s) => strings.push(s),
                        _ => {
                            self.error(
                                span.clone(),
                                format!("match `{key}` must list strings only"),
                            );
                            return None;
                        }
                    }
                }
                if strings.is_empty() {
                    self.error(span, format!("match `{key}` is an empty list"));
                    return None;
                }
                strings
            }
            _ => {
                self.error(
                    span,
                    format!("match `{key}` must be a string or a list of strings"),
                );
                return None;
            }
        };
        match Pattern::new(&items) {
            Ok(p) => Some(p),
            Err(e) => {
                self.error(span, format!("match `{key}`: {e}"));
                None
            }
        }
    }

    fn matcher(&mut self, raw: RawMatch) -> Matcher {
        let mut matcher = Matcher {
            stream: raw.stream,
            ..Matcher::default()
        };
        if let Some(endpoint) = raw.endpoint {
            let span = endpoint.span();
            if let Some(pattern) = self.pattern(Some(endpoint), "endpoint") {
                let endpoints: Vec<Operation> = Operation::ALL
                    .into_iter()
                    .filter(|e| pattern.matches(e.name()))
                    .collect();
                let mut unknown = false;
                for literal in pattern.literals() {
                    if Operation::from_name(literal).is_none() {
                        unknown = true;
                        self.error(
                            span.clone(),
                            format!(
                                "unknown endpoint `{literal}`; expected speech, transcriptions, \
                                 translations or other"
                            ),
                        );
                    }
                }
                if endpoints.is_empty() && !unknown {
                    self.error(span, "match `endpoint` matches no endpoint");
                }
                matcher.endpoints = Some(endpoints);
            }
        }
        if let Some(method) = raw.method {
            let span = method.span();
            if let Some(pattern) = self.pattern(Some(method), "method") {
                for literal in pattern.literals() {
                    if http::Method::from_bytes(literal.as_bytes()).is_err() {
                        self.error(span.clone(), format!("`{literal}` is not an HTTP method"));
                    }
                }
                matcher.method = Some(pattern);
            }
        }
        matcher.path = self.pattern(raw.path, "path");
        matcher.model = self.pattern(raw.model, "model");
        matcher.voice = self.pattern(raw.voice, "voice");
        matcher.response_format = self.pattern(raw.response_format, "response_format");
        matcher
    }

    fn fallback(&mut self, raw: Option<Spanned<Vec<Spanned<toml::Value>>>>) -> FallbackPolicy {
        let Some(raw) = raw else {
            return FallbackPolicy::default();
        };
        let mut policy = FallbackPolicy {
            connect: false,
            timeout: false,
            reset: false,
            statuses: Vec::new(),
        };
        for item in raw.into_inner() {
            let span = item.span();
            match item.into_inner() {
                toml::Value::String(s) if s == "connect" => policy.connect = true,
                toml::Value::String(s) if s == "timeout" => policy.timeout = true,
                toml::Value::String(s) if s == "reset" => policy.reset = true,
                toml::Value::Integer(n) if (400..=599).contains(&n) => {
                    policy.statuses.push(n as u16)
                }
                _ => self.error(
                    span,
                    "`fallback_on` entries are \"connect\", \"timeout\", \"reset\" or a status \
                     from 400 to 599",
                ),
            }
        }
        policy.statuses.sort_unstable();
        policy.statuses.dedup();
        policy
    }

    /// A path key's value: it must start with `/`.
    fn path_value(&mut self, value: Option<Spanned<String>>, key: &str) -> Option<String> {
        let value = value?;
        if is_request_path(value.get_ref()) {
            Some(value.into_inner())
        } else {
            self.error(value.span(), format!("`{key}` {PATH_RULE}"));
            None
        }
    }

    /// The upstream's kind, its preset, and the dialect keys written on the upstream
    /// itself, which override the preset's.
    fn dialect(&mut self, u: &mut RawUpstream) -> (Dialect, Option<&'static str>) {
        let kind = match u.kind.take() {
            None => Kind::Generic,
            Some(k) => Kind::from_name(k.get_ref()).unwrap_or_else(|| {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                self.error(
                    k.span(),
                    format!(
                        "unknown kind `{}`; expected one of {}",
                        k.get_ref(),
                        names.join(", ")
                    ),
                );
                Kind::Generic
            }),
        };
        let mut dialect = Dialect {
            kind,
            ..Dialect::default()
        };
        let mut model_map = HashMap::new();
        let mut voice_map = HashMap::new();
        let preset = match kind.preset() {
            Ok(preset) => preset,
            Err(e) => {
                self.error(0..0, e);
                return (dialect, None);
            }
        };
        dialect.overlay(preset, &mut model_map, &mut voice_map);
        let paths_span = u.paths.as_ref().map_or(0..0, |p| p.span());
        let drop_span = u.drop_fields.as_ref().map_or(0..0, |d| d.span());
        let mut paths = u.paths.take().map(Spanned::into_inner).unwrap_or_default();
        for (name, path) in &paths {
            if !is_request_path(path) {
                self.error(paths_span.clone(), format!("`paths.{name}` {PATH_RULE}"));
            }
        }
        paths.retain(|_, path| is_request_path(path));
        let gender_span = u.voice_by_gender.as_ref().map_or(0..0, |g| g.span());
        let voice_by_gender = u
            .voice_by_gender
            .take()
            .map(Spanned::into_inner)
            .unwrap_or_default();
        let both = voice_by_gender.len() == 2
            && voice_by_gender.contains_key("f")
            && voice_by_gender.contains_key("m");
        if !voice_by_gender.is_empty() && !both {
            self.error(
                gender_span,
                "`voice_by_gender` must give exactly `f` and `m`",
            );
        }
        let own = Preset {
            health: None,
            paths,
            sse_speech: u.sse_speech,
            sse_transcription: u.sse_transcription,
            voice_objects: u.voice_objects,
            blends: u.blends,
            drop_language: u.drop_language.take(),
            drop_fields: u
                .drop_fields
                .take()
                .map(Spanned::into_inner)
                .unwrap_or_default(),
            translate_field: u.translate_field,
            lists_models: self.path_value(u.lists_models.take(), "lists_models"),
            lists_voices: self.path_value(u.lists_voices.take(), "lists_voices"),
            models: u.models.take(),
            only_listed_models: u.only_listed_models,
            voices: u.voices.take(),
            model_map: std::mem::take(&mut u.model_map),
            voice_map: std::mem::take(&mut u.voice_map),
            voice_by_gender,
        };
        for key in dialect.overlay(&own, &mut model_map, &mut voice_map) {
            let span = if key.starts_with("paths.") {
                paths_span.clone()
            } else {
                drop_span.clone()
            };
            self.error(
                span,
                format!("`{key}`: expected speech, transcriptions or translations"),
            );
        }
        u.model_map = model_map;
        u.voice_map = voice_map;
        (dialect, preset.health.as_deref())
    }

    fn set_value(&mut self, key: &str, value: Spanned<toml::Value>) -> Option<FieldValue> {
        let span = value.span();
        if !is_field_name(key) {
            self.error(
                span.clone(),
                format!("`set` key `{key}` may use only letters, digits and _ - . [ ]"),
            );
        }
        match value.into_inner() {
            toml::Value::String(s) => Some(FieldValue::String(s)),
            toml::Value::Integer(i) => Some(FieldValue::Integer(i)),
            toml::Value::Float(f) => Some(FieldValue::Float(f)),
            toml::Value::Boolean(b) => Some(FieldValue::Bool(b)),
            _ => {
                self.error(
                    span,
                    format!("`set.{key}` must be a string, number or boolean"),
                );
                None
            }
        }
    }
}

pub(super) fn validate(
    raw: RawConfig,
    locator: &Locator<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<Diagnostic>> {
    let mut v = Validator {
        locator,
        env,
        diagnostics: Vec::new(),
    };

    let listen = match &raw.server.listen {
        None => DEFAULT_LISTEN.parse().ok(),
        Some(l) => match l.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                v.error(
                    l.span(),
                    "`listen` must be an IP address and port such as \"127.0.0.1:9000\"",
                );
                None
            }
        },
    };
    let server = ServerConfig {
        listen: listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9000))),
        max_body_bytes: v.size(
            raw.server.max_body_bytes,
            "max_body_bytes",
            DEFAULT_MAX_BODY,
        ),
        max_json_bytes: v.size(
            raw.server.max_json_bytes,
            "max_json_bytes",
            DEFAULT_MAX_JSON,
        ),
        replay_memory_per_request: v.size(
            raw.server.replay_memory_per_request,
            "replay_memory_per_request",
            DEFAULT_REPLAY_PER_REQUEST,
        ),
        replay_memory_total: v.size(
            raw.server.replay_memory_total,
            "replay_memory_total",
            DEFAULT_REPLAY_TOTAL,
        ),
        spill_dir: raw.server.spill_dir.and_then(|dir| {
            let path = PathBuf::from(dir.get_ref());
            // Checked now: a bad directory would otherwise fail every large upload.
            match tempfile::tempfile_in(&path) {
                Ok(_) => Some(path),
                Err(e) => {
                    v.error(
                        dir.span(),
                        format!("`spill_dir` cannot hold temporary files: {e}"),
                    );
                    None
                }
            }
        }),
        header_read_timeout: v.duration(
            raw.server.header_read_timeout,
            "header_read_timeout",
            Duration::from_secs(10),
        ),
        body_read_timeout: v.duration(
            raw.server.body_read_timeout,
            "body_read_timeout",
            Duration::from_secs(30),
        ),
        shutdown_grace: v.duration(
            raw.server.shutdown_grace,
            "shutdown_grace",
            Duration::from_secs(30),
        ),
        retry_budget_percent: v.count(
            raw.server.retry_budget_percent,
            "retry_budget_percent",
            (0, 100),
            20,
        ),
        retry_budget_min: v.count(
            raw.server.retry_budget_min,
            "retry_budget_min",
            (0, 100_000),
            32,
        ),
        max_connections: v.count(
            raw.server.max_connections,
            "max_connections",
            (1, 1_000_000),
            4096,
        ),
        max_in_flight: v.count(
            raw.server.max_in_flight,
            "max_in_flight",
            (1, 1_000_000),
            1024,
        ),
        lingering_time: v.duration(
            raw.server.lingering_time,
            "lingering_time",
            DEFAULT_LINGERING_TIME,
        ),
        lingering_bytes: v.byte_size(
            raw.server.lingering_bytes,
            "lingering_bytes",
            DEFAULT_LINGERING_BYTES,
        ),
        threads: raw
            .server
            .threads
            .map(|n| v.count(Some(n), "threads", (1, 1024), 1)),
        admin_listen: raw
            .server
            .admin_listen
            .and_then(|a| match a.get_ref().parse() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    v.error(
                        a.span(),
                        "`admin_listen` must be an IP address and port such as \"127.0.0.1:9001\"",
                    );
                    None
                }
            }),
        watch_config: raw.server.watch_config.unwrap_or(false),
        tls: raw.server.tls.and_then(|tls| v.inbound_tls(tls)),
    };

    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    for (name, u) in raw.upstreams {
        let span = u.span();
        let mut u = u.into_inner();
        let (dialect, preset_health) = v.dialect(&mut u);
        let endpoints = v.endpoints(&name, span, u.url, u.endpoints);
        let health = v.health(u.health, preset_health);
        let ejection = Ejection {
            after: v.count(u.eject_after, "eject_after", (0, 1000), 1),
            base_time: v.duration(u.eject_time, "eject_time", Duration::from_secs(10)),
            max_time: v.duration(u.eject_time_max, "eject_time_max", Duration::from_secs(300)),
            max_percent: v.count(u.max_ejected_percent, "max_ejected_percent", (0, 100), 50),
        };
        let api_key = u.api_key.as_ref().and_then(|k| {
            let key = v.expand(k, "api_key");
            if key.bytes().any(|b| b.is_ascii_control() || b == b' ') && !key.is_empty() {
                v.error(
                    k.span(),
                    "`api_key` must not contain spaces or control characters",
                );
                return None;
            }
            (!key.is_empty()).then_some(Secret(key))
        });
        // Written as `${VAR}` (with a default) but empty: start-up says so, since the
        // upstream then gets the client's key or none, which is easy to miss.
        let api_key_unset = match (&api_key, &u.api_key) {
            (None, Some(k)) => env_names(k.get_ref())
                .find(|name| (v.env)(name).is_none_or(|v| v.is_empty()))
                .map(str::to_string),
            _ => None,
        };
        upstreams.push(UpstreamConfig {
            connect_timeout: v.duration(
                u.connect_timeout,
                "connect_timeout",
                DEFAULT_CONNECT_TIMEOUT,
            ),
            response_timeout: v.duration(
                u.response_timeout,
                "response_timeout",
                DEFAULT_RESPONSE_TIMEOUT,
            ),
            idle_timeout: v.duration(u.idle_timeout, "idle_timeout", DEFAULT_IDLE_TIMEOUT),
            keepalive_timeout: v.duration(
                u.keepalive_timeout,
                "keepalive_timeout",
                DEFAULT_KEEPALIVE_TIMEOUT,
            ),
            name,
            endpoints,
            balance: u.balance.unwrap_or(Balance::RoundRobin),
            health,
            ejection,
            api_key,
            api_key_unset,
            pass_client_key: u.pass_client_key,
            voice_map: u.voice_map,
            model_map: u.model_map,
            tls_verify: u.tls_verify.unwrap_or(true),
            ca_certs: v.ca_file(u.ca_file),
            price: v.pricing(u.price, dialect.kind == Kind::Openai),
            dialect,
        });
    }

    let mut routes = Vec::with_capacity(raw.routes.len());
    if raw.routes.is_empty() {
        v.error(
            0..0,
            "no [[routes]]: every request would be refused; add at least one route",
        );
    }
    let mut route_names: Vec<String> = Vec::new();
    for route in raw.routes {
        let line = locator.at(route.span().start, "").line;
        let route = route.into_inner();
        let name = route.name.and_then(|name| {
            let text = name.get_ref().trim().to_string();
            let fits = !text.is_empty()
                && !text.starts_with("line:")
                && text.len() <= 64
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !fits {
                v.error(
                    name.span(),
                    "a route `name` is 1 to 64 letters, digits, `-`, `_` or `.`, and does not start with `line:`",
                );
                None
            } else if route_names.contains(&text) {
                v.error(name.span(), format!("two routes are named `{text}`"));
                None
            } else {
                route_names.push(text.clone());
                Some(text)
            }
        });
        let to_span = route.to.span();
        let mut to = Vec::new();
        for name in route.to.into_inner() {
            match upstreams.iter().position(|u| u.name == *name.get_ref()) {
                Some(i) => to.push(i),
                None => {
                    let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                    v.error(
                        name.span(),
                        format!(
                            "unknown upstream `{}` (defined: {})",
                            name.get_ref(),
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
            }
        }
        if to.is_empty() && v.diagnostics.is_empty() {
            v.error(to_span, "`to` must name at least one upstream");
        }
        let matcher = v.matcher(route.matches);
        let mut set = Vec::new();
        for (key, value) in route.set {
            if let Some(value) = v.set_value(&key, value) {
                set.push((key, value));
            }
        }
        let fallback = v.fallback(route.fallback_on);
        let deadline = route
            .deadline
            .map(|d| v.duration(Some(d), "deadline", Duration::ZERO));
        routes.push(RouteConfig {
            line,
            name,
            matcher,
            to,
            set,
            fallback,
            deadline,
            cache: route.cache.unwrap_or(true),
        });
    }
    let clients = v.clients(raw.clients, &routes);
    let limits = v.limits(raw.limits);
    let cache = v.cache(raw.cache);
    let shared = v.shared(raw.shared);

    if v.diagnostics.is_empty() {
        Ok(Config {
            server,
            log: LogConfig {
                format: raw.log.format.unwrap_or(LogFormat::Text),
            },
            upstreams,
            routes,
            clients,
            limits,
            cache,
            shared,
        })
    } else {
        v.diagnostics.sort_by_key(|d| (d.line, d.column));
        Err(v.diagnostics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load(text: &str) -> Result<Config, Vec<Diagnostic>> {
        match Config::from_toml_with_env(text, "test.toml", &no_env) {
            Ok(c) => Ok(c),
            Err(ConfigError::Invalid { diagnostics, .. }) => Err(diagnostics),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    fn errors(text: &str) -> Vec<(usize, usize, String)> {
        load(text)
            .expect_err("config should be refused")
            .into_iter()
            .map(|d| (d.line, d.column, d.message))
            .collect()
    }

    #[test]
    fn route_names_are_unique_and_plain() {
        let two = |a: &str, b: &str| {
            format!("[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nname = \"{a}\"\nto = [\"a\"]\n[[routes]]\nname = \"{b}\"\nto = [\"a\"]\n")
        };
        let c = load(&two("local-tts", "rest.v2")).expect("valid names");
        assert_eq!(c.routes[0].name.as_deref(), Some("local-tts"));
        assert_eq!(c.routes[1].label(), "rest.v2");
        let e = errors(&two("same", "same"));
        assert_eq!(
            (e[0].0, e[0].2.as_str()),
            (7, "two routes are named `same`")
        );
        for bad in ["", "has space", "line:3", "a\"b"] {
            let e = errors(&two("ok", &bad.replace('"', "\\\"")));
            assert!(e[0].2.contains("route `name`"), "{bad}: {e:?}");
        }
        let unnamed = load(&two("x", "y").replace("name = \"y\"\n", "")).expect("valid");
        assert_eq!(unnamed.routes[1].label(), "line:6");
    }

    const MINIMAL: &str = r#"
[upstreams.a]
url = "http://127.0.0.1:1"

[[routes]]
to = ["a"]
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.server.max_body_bytes, 26_214_400);
        assert_eq!(c.upstreams[0].connect_timeout, Duration::from_secs(5));
        assert_eq!(c.routes[0].fallback, FallbackPolicy::default());
        assert_eq!(c.routes[0].line, 5);
        assert_eq!(c.server.threads, None, "one per core unless set");
    }

    #[test]
    fn lingering_close_is_bounded_by_a_time_and_a_size_with_units() {
        let c = load(MINIMAL).unwrap();
        assert_eq!(c.server.lingering_time, Duration::from_secs(5));
        assert_eq!(c.server.lingering_bytes, 25 * 1024 * 1024);
        let c = load(&format!(
            "{MINIMAL}\n[server]\nlingering_time = \"2s\"\nlingering_bytes = \"512KiB\"\n"
        ))
        .unwrap();
        assert_eq!(c.server.lingering_time, Duration::from_secs(2));
        assert_eq!(c.server.lingering_bytes, 512 * 1024);
        let c = load(&format!("{MINIMAL}\n[server]\nlingering_bytes = 1000\n")).unwrap();
        assert_eq!(c.server.lingering_bytes, 1000);
        assert_eq!(parse_byte_size("3 MB"), Some(3_000_000));
        assert_eq!(parse_byte_size("7b"), Some(7));
        for bad in ["\"25 parsecs\"", "\"MiB\"", "0", "-1", "\"\"", "true"] {
            let e = errors(&format!("{MINIMAL}\n[server]\nlingering_bytes = {bad}\n"));
            assert_eq!((e[0].0, e[0].1), (9, 19), "{bad}");
            assert!(e[0].2.contains("`lingering_bytes` must be"), "{e:?}");
        }
        let e = errors(&format!("{MINIMAL}\n[server]\nlingering_time = \"soon\"\n"));
        assert!(e[0].2.contains("`lingering_time`"), "{e:?}");
    }

    #[test]
    fn server_threads_is_a_count_from_1() {
        let c = load(&format!("{MINIMAL}\n[server]\nthreads = 1\n")).unwrap();
        assert_eq!(c.server.threads, Some(1));
        let e = errors(&format!("{MINIMAL}\n[server]\nthreads = 0\n"));
        assert_eq!((e[0].0, e[0].1), (9, 11));
        assert!(
            e[0].2.contains("`threads` must be a whole number from 1"),
            "{e:?}"
        );
    }

    #[test]
    fn builtin_default_is_valid() {
        let c = Config::from_toml_with_env(DEFAULT_TOML, DEFAULT_NAME, &no_env).unwrap();
        assert_eq!(c.routes.len(), 3);
        let openai = &c.upstreams[c.upstream_index("openai").unwrap()];
        assert!(
            openai.api_key.is_none(),
            "empty ${{OPENAI_API_KEY:-}} means no key"
        );
        assert_eq!(
            openai.voice_map.get("af_sky").map(String::as_str),
            Some("nova")
        );
    }

    #[test]
    fn unknown_key_is_located() {
        let e = errors("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].0, e[0].1), (3, 1));
        assert!(e[0].2.contains("lisen"), "{}", e[0].2);
    }

    #[test]
    fn unknown_upstream_name_is_located() {
        let e = errors(
            "[upstreams.kokoro]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nto = [\"kokoro\", \"opnai\"]\n",
        );
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].0, e[0].1), (4, 17));
        assert!(e[0].2.contains("unknown upstream `opnai`"));
        assert!(e[0].2.contains("kokoro"));
    }

    #[test]
    fn bad_duration_is_located() {
        let e = errors(&format!(
            "{MINIMAL}\n[upstreams.b]\nurl = \"http://x\"\nconnect_timeout = \"3 parsecs\"\n"
        ));
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].0, e[0].1), (10, 19));
        assert!(e[0].2.contains("connect_timeout"));
    }

    #[test]
    fn zero_duration_is_refused() {
        let e = errors(&format!("{MINIMAL}\n[server]\nshutdown_grace = \"0s\"\n"));
        assert!(e[0].2.contains("longer than zero"));
    }

    #[test]
    fn bad_urls_are_refused_with_reasons() {
        for (url, why) in [
            ("ftp://host", "scheme"),
            ("127.0.0.1:8880", "absolute"),
            ("http://host/v1", "/v1"),
            ("http://host/?a=b", "query"),
            ("http://ho st", "valid URL"),
            ("http://user:pw@host", "user or password"),
        ] {
            let e = errors(&format!(
                "[upstreams.a]\nurl = \"{url}\"\n[[routes]]\nto = [\"a\"]\n"
            ));
            assert_eq!(e.len(), 1, "{url}: {e:?}");
            assert_eq!((e[0].0, e[0].1), (2, 7), "{url}");
            assert!(e[0].2.contains(why), "{url}: {}", e[0].2);
        }
    }

    #[test]
    fn bad_glob_is_located() {
        let e = errors(&format!(
            "{MINIMAL}\n[[routes]]\nmatch = {{ voice = \"af_[\" }}\nto = [\"a\"]\n"
        ));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, 9);
        assert!(e[0].2.contains("voice"), "{}", e[0].2);
    }

    #[test]
    fn unknown_endpoint_is_refused() {
        let e = errors(&format!(
            "{MINIMAL}\n[[routes]]\nmatch = {{ endpoint = \"speach\" }}\nto = [\"a\"]\n"
        ));
        assert!(e[0].2.contains("unknown endpoint `speach`"), "{e:?}");
    }

    #[test]
    fn every_error_is_reported_not_just_the_first() {
        let e = errors(
            "[server]\nlisten = \"nowhere\"\n[upstreams.a]\nurl = \"ftp://x\"\nresponse_timeout = \"soon\"\n[[routes]]\nto = [\"b\"]\nfallback_on = [\"sometimes\"]\n",
        );
        let lines: Vec<usize> = e.iter().map(|d| d.0).collect();
        assert_eq!(lines, vec![2, 4, 5, 7, 8], "{e:?}");
    }

    #[test]
    fn fallback_on_is_parsed() {
        let c = load(&format!(
            "{MINIMAL}fallback_on = [\"connect\", 503, 429, 503]\n"
        ))
        .unwrap();
        let p = &c.routes[0].fallback;
        assert!(p.connect && !p.timeout && !p.reset);
        assert_eq!(p.statuses, vec![429, 503]);
        let e = errors(&format!("{MINIMAL}fallback_on = [200]\n"));
        assert_eq!(e[0].0, 7);
    }

    #[test]
    fn env_vars_expand_and_unset_ones_are_errors() {
        let env = |name: &str| (name == "KEY").then(|| "sk-test".to_string());
        let text = "[upstreams.a]\nurl = \"http://127.0.0.1:1\"\napi_key = \"${KEY}\"\n[upstreams.b]\nurl = \"http://127.0.0.1:1\"\napi_key = \"${MISSING:-}\"\n[[routes]]\nto = [\"a\", \"b\"]\n";
        let c = Config::from_toml_with_env(text, "t", &env).unwrap();
        assert_eq!(c.upstreams[0].api_key.as_ref().unwrap().expose(), "sk-test");
        assert!(c.upstreams[1].api_key.is_none());
        let e = errors("[upstreams.a]\nurl = \"http://127.0.0.1:1\"\napi_key = \"${MISSING}\"\n[[routes]]\nto = [\"a\"]\n");
        assert_eq!((e[0].0, e[0].1), (3, 11));
        assert!(e[0].2.contains("MISSING"));
    }

    #[test]
    fn an_api_key_from_an_unset_variable_is_named_for_the_start_up_warning() {
        let env = |name: &str| match name {
            "KEY" => Some("sk-test".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let text =
            "[upstreams.a]\nurl = \"http://127.0.0.1:1\"\napi_key = \"${OPENAI_API_KEY:-}\"\n\
                    [upstreams.b]\nurl = \"http://127.0.0.1:1\"\napi_key = \"${KEY:-}\"\n\
                    [upstreams.c]\nurl = \"http://127.0.0.1:1\"\napi_key = \"${EMPTY}\"\n\
                    [upstreams.d]\nurl = \"http://127.0.0.1:1\"\n\
                    [[routes]]\nto = [\"a\", \"b\", \"c\", \"d\"]\n";
        let c = Config::from_toml_with_env(text, "t", &env).unwrap();
        let unset: Vec<Option<&str>> = c
            .upstreams
            .iter()
            .map(|u| u.api_key_unset.as_deref())
            .collect();
        assert_eq!(unset, [Some("OPENAI_API_KEY"), None, Some("EMPTY"), None]);
        assert_eq!(env_names("a${X}b${Y:-z}").collect::<Vec<_>>(), ["X", "Y"]);
    }

    #[test]
    fn errors_never_quote_secrets() {
        let text = "[upstreams.a]\nurl = \"http://127.0.0.1:1\"\napi_key = \"sk-secret-value\" oops\n[[routes]]\nto = [\"a\"]\n";
        let err = Config::from_toml_with_env(text, "t.toml", &no_env).unwrap_err();
        let shown = err.to_string();
        assert!(shown.starts_with("t.toml:3:"), "{shown}");
        assert!(!shown.contains("sk-secret-value"), "{shown}");
        let c = load("[upstreams.a]\nurl = \"http://127.0.0.1:1\"\napi_key = \"sk-secret-value\"\n[[routes]]\nto = [\"a\"]\n").unwrap();
        assert!(!format!("{c:?}").contains("sk-secret-value"));
    }

    #[test]
    fn set_values_are_typed_and_keys_checked() {
        let c = load(&format!(
            "{MINIMAL}set = {{ model = \"tts-1\", speed = 1.5, n = 2, stream = true }}\n"
        ))
        .unwrap();
        let set = &c.routes[0].set;
        assert_eq!(set[0], ("model".into(), FieldValue::String("tts-1".into())));
        assert!(set.contains(&("speed".into(), FieldValue::Float(1.5))));
        let e = errors(&format!("{MINIMAL}set = {{ \"bad\\\"key\" = \"x\" }}\n"));
        assert!(e[0].2.contains("may use only"), "{e:?}");
        let e = errors(&format!("{MINIMAL}set = {{ model = [1] }}\n"));
        assert!(e[0].2.contains("string, number or boolean"), "{e:?}");
    }

    #[test]
    fn a_spill_dir_that_cannot_hold_files_is_refused() {
        let e = errors(&format!(
            "{MINIMAL}\n[server]\nspill_dir = \"/nonexistent/voxgate\"\n"
        ));
        assert_eq!(e[0].0, 9);
        assert!(e[0].2.contains("spill_dir"), "{e:?}");
        let ok = std::env::temp_dir().display().to_string();
        let c = load(&format!("{MINIMAL}\n[server]\nspill_dir = \"{ok}\"\n")).unwrap();
        assert_eq!(c.server.spill_dir, Some(PathBuf::from(ok)));
    }

    #[test]
    fn pools_and_health_checks_are_parsed() {
        let c = load(
            "[upstreams.k]\nendpoints = [\"http://127.0.0.1:1\", { url = \"http://127.0.0.1:2\", weight = 3 }, { url = \"http://127.0.0.1:3\", backup = true }]\n\
             balance = \"least_outstanding\"\nhealth = { path = \"/v1/models\", interval = \"5s\", rise = 1, expect = \"200-399\" }\n\
             eject_after = 5\neject_time = \"30s\"\n[[routes]]\nto = [\"k\"]\n",
        )
        .unwrap();
        let k = &c.upstreams[0];
        assert_eq!(k.endpoints.len(), 3);
        assert_eq!((k.endpoints[1].weight, k.endpoints[2].backup), (3, true));
        assert_eq!(k.balance, Balance::LeastOutstanding);
        let h = k.health.as_ref().unwrap();
        assert_eq!(
            (h.path.as_str(), h.interval, h.rise, h.fall, h.expect),
            ("/v1/models", Duration::from_secs(5), 1, 3, (200, 399))
        );
        assert_eq!(
            (k.ejection.after, k.ejection.base_time),
            (5, Duration::from_secs(30))
        );
        let plain = &load(MINIMAL).unwrap().upstreams[0];
        assert_eq!(plain.endpoints.len(), 1);
        assert!(plain.health.is_none());
        assert_eq!(plain.ejection.after, 1);
    }

    #[test]
    fn pool_mistakes_are_located() {
        let e = errors("[upstreams.k]\nconnect_timeout = \"1s\"\n[[routes]]\nto = [\"k\"]\n");
        assert!(e[0].2.contains("needs `url` or `endpoints`"), "{e:?}");
        let e = errors("[upstreams.k]\nurl = \"http://a\"\nendpoints = [\"http://b\"]\n[[routes]]\nto = [\"k\"]\n");
        assert!(e[0].2.contains("not both"), "{e:?}");
        let e = errors("[upstreams.k]\nendpoints = [{ url = \"http://a\", backup = true }]\n[[routes]]\nto = [\"k\"]\n");
        assert!(e[0].2.contains("every endpoint is a backup"), "{e:?}");
        let e = errors("[upstreams.k]\nendpoints = [\"http://a\", { url = \"http://b\", wieght = 2 }]\n[[routes]]\nto = [\"k\"]\n");
        assert_eq!((e[0].0, e[0].1), (2, 26));
        assert!(e[0].2.contains("unknown endpoint key `wieght`"), "{e:?}");
        let e = errors("[upstreams.k]\nendpoints = [\"ftp://a\"]\n[[routes]]\nto = [\"k\"]\n");
        assert!(e[0].2.contains("scheme"), "{e:?}");
        let e = errors("[upstreams.k]\nurl = \"http://a\"\nhealth = { path = \"health\", expect = \"600-700\", rise = 0 }\n[[routes]]\nto = [\"k\"]\n");
        assert_eq!(e.len(), 3, "{e:?}");
        let e = errors("[upstreams.k]\nurl = \"http://a\"\nhealth = { inteval = \"1s\" }\n[[routes]]\nto = [\"k\"]\n");
        assert!(e[0].2.contains("inteval"), "{e:?}");
    }

    #[test]
    fn tls_settings_are_checked_at_load() {
        let e = errors("[upstreams.k]\nurl = \"https://a\"\nca_file = \"/nonexistent/ca.pem\"\n[[routes]]\nto = [\"k\"]\n");
        assert_eq!((e[0].0, e[0].1), (3, 11));
        assert!(e[0].2.contains("ca_file"), "{e:?}");
        let c = load(
            "[upstreams.k]\nurl = \"https://a\"\ntls_verify = false\n[[routes]]\nto = [\"k\"]\n",
        )
        .unwrap();
        assert!(!c.upstreams[0].tls_verify);
        assert!(
            load(MINIMAL).unwrap().upstreams[0].tls_verify,
            "on by default"
        );
    }

    #[test]
    fn a_config_without_routes_is_refused() {
        let e = errors("[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n");
        assert!(e[0].2.contains("no [[routes]]"));
    }

    #[test]
    fn wrong_types_are_located() {
        let e = errors(&format!("{MINIMAL}\n[server]\nmax_body_bytes = \"big\"\n"));
        assert_eq!(e[0].0, 9);
        let e = errors(&format!("{MINIMAL}\n[server]\nmax_body_bytes = -1\n"));
        assert!(e[0].2.contains("positive"));
    }

    #[test]
    fn kinds_bring_presets_that_upstream_keys_override() {
        let c = load(
            "[upstreams.k]\nkind = \"kokoro\"\nurl = \"http://k\"\n\
             [upstreams.o]\nkind = \"openai\"\nurl = \"https://o\"\nvoice_map = { af_sky = \"shimmer\" }\n\
             [upstreams.w]\nkind = \"whisper-cpp\"\nurl = \"http://w\"\nhealth = { enabled = false }\n\
             paths = { transcriptions = \"/v1/audio/transcriptions\" }\nsse_transcription = true\n\
             [[routes]]\nto = [\"k\"]\n",
        )
        .unwrap();
        let k = &c.upstreams[c.upstream_index("k").unwrap()];
        assert_eq!(k.dialect.kind, Kind::Kokoro);
        assert_eq!(k.health.as_ref().map(|h| h.path.as_str()), Some("/health"));
        assert!(!k.dialect.sse_speech);
        let o = &c.upstreams[c.upstream_index("o").unwrap()];
        assert!(o.health.is_none(), "OpenAI has no health check");
        assert_eq!(
            o.voice_map["af_sky"], "shimmer",
            "the upstream's own entry wins"
        );
        assert_eq!(o.voice_map["am_adam"], "onyx", "the preset's others stay");
        assert_eq!(o.model_map["kokoro"], "tts-1");
        let w = &c.upstreams[c.upstream_index("w").unwrap()];
        assert!(w.health.is_none());
        assert_eq!(
            w.dialect.path(Operation::Transcriptions),
            Some("/v1/audio/transcriptions")
        );
        assert_eq!(w.dialect.path(Operation::Translations), Some("/inference"));
        assert!(w.dialect.sse_transcription);
        let generic = load(MINIMAL).unwrap();
        assert_eq!(generic.upstreams[0].dialect.kind, Kind::Generic);
        assert!(generic.upstreams[0].voice_map.is_empty());
    }

    #[test]
    fn kind_mistakes_are_located() {
        let e = errors(
            "[upstreams.k]\nurl = \"http://k\"\nkind = \"kokor\"\n[[routes]]\nto = [\"k\"]\n",
        );
        assert_eq!((e[0].0, e[0].1), (3, 8));
        assert!(e[0].2.contains("unknown kind `kokor`"), "{e:?}");
        let e = errors("[upstreams.k]\nurl = \"http://k\"\npaths = { speeches = \"/x\" }\n[[routes]]\nto = [\"k\"]\n");
        assert_eq!(e[0].0, 3);
        assert!(e[0].2.contains("paths.speeches"), "{e:?}");
        let e = errors("[upstreams.k]\nurl = \"http://k\"\n\n\ndrop_fields = { speak = [\"x\"] }\n[[routes]]\nto = [\"k\"]\n");
        assert_eq!(e[0].0, 5);
        assert!(e[0].2.contains("drop_fields.speak"), "{e:?}");
        let e = errors("[upstreams.k]\nurl = \"http://k\"\nvoice_by_gender = { f = \"nova\" }\n[[routes]]\nto = [\"k\"]\n");
        assert_eq!((e[0].0, e[0].1), (3, 19));
        assert!(e[0].2.contains("exactly `f` and `m`"), "{e:?}");
        let e = errors("[upstreams.k]\nurl = \"http://k\"\nlists_voices = \"voices\"\n[[routes]]\nto = [\"k\"]\n");
        assert!(e[0].2.contains("must start with /"), "{e:?}");
    }

    #[test]
    fn paths_sent_upstream_must_need_no_encoding() {
        let e = errors("[upstreams.w]\nurl = \"http://w\"\npaths = { transcriptions = \"/in ference\" }\n[[routes]]\nto = [\"w\"]\n");
        assert_eq!(e[0].0, 3);
        assert!(
            e[0].2
                .contains("`paths.transcriptions` must start with / and hold no spaces"),
            "{e:?}"
        );
        let e = errors("[upstreams.w]\nurl = \"http://w\"\nhealth = { path = \"/he alth\" }\n[[routes]]\nto = [\"w\"]\n");
        assert_eq!(e[0].0, 3);
        assert!(e[0].2.contains("health `path` must start with /"), "{e:?}");
    }
}
