//! The classify phase: what a request is, from its method and path alone, once its head
//! is one voxgate may read ([`check_head`]).
//!
//! Paths are normalised first (RFC 3986 §6.2.2: unreserved characters decoded, a trailing
//! slash after an audio operation dropped, `/v1` put in front where a base URL without it
//! left it out) and refused when they hide a dot segment or a separator.

use std::borrow::Cow;

use http::{header, HeaderMap, Method, StatusCode, Version};

use crate::error::ApiError;
use crate::gateway::discovery::Listing;
use crate::gateway::{Api, GatewayError};
use crate::route::Operation;

/// What a request is, from its method and path alone.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    Health,
    Root,
    /// 200 when every route has an upstream with an available endpoint, else 503.
    Ready,
    /// Upstreams, endpoints, health, ejections, in-flight counts, last checks; the
    /// configuration's file, load time and last reload error.
    Status,
    /// Prometheus metrics, in the text exposition format.
    Metrics,
    /// `/ui`: the status page, which reads `/status` and `/metrics` (`/` on the admin
    /// listener too).
    Ui,
    /// `POST /reload` (admin listener only): read the configuration file again.
    Reload,
    /// `GET /v1/models` or `GET /v1/audio/voices`: merged over the routed upstreams.
    Discovery(Listing),
    Api(Api),
}

/// A request head voxgate refuses before looking at what it asks for (RFC 9112).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("an HTTP/1.1 request must carry a Host header, and this one has no Host header")]
    NoHost,
    #[error("the request has more than one Host header")]
    TwoHosts,
    #[error("the Host header is not a valid host[:port]")]
    BadHost,
    #[error(
        "Transfer-Encoding other than chunked is not implemented; send the body plain or chunked"
    )]
    UnknownCoding,
    #[error("Transfer-Encoding applies chunked more than once")]
    ChunkedTwice,
}

impl HeadError {
    pub fn api_error(&self) -> ApiError {
        let message = self.to_string();
        let status = match self {
            HeadError::NoHost | HeadError::TwoHosts | HeadError::BadHost => StatusCode::BAD_REQUEST,
            HeadError::ChunkedTwice => StatusCode::BAD_REQUEST,
            // RFC 9112 §6.1: a coding the server does not understand is a 501.
            HeadError::UnknownCoding => StatusCode::NOT_IMPLEMENTED,
        };
        ApiError::invalid_request(status, message).with_should_retry(false)
    }
}

/// Checks the parts of an HTTP/1 request head that hyper lets through: exactly one valid
/// `Host` (RFC 9112 §3.2; HTTP/1.0 may leave it out), and no transfer coding but chunked
/// (RFC 9112 §6.1: hyper takes `gzip, chunked` as chunked and would hand on a body still
/// gzipped). HTTP/2 carries `:authority` and no Transfer-Encoding, and is not checked.
/// `length_framed`: the body's length came from Content-Length, so no Transfer-Encoding
/// framed it (hyper frames by Transfer-Encoding whenever there is one) and none is looked
/// for: one header lookup less on the common request.
pub fn check_head(
    version: Version,
    headers: &HeaderMap,
    length_framed: bool,
) -> Result<(), HeadError> {
    if version >= Version::HTTP_2 {
        return Ok(());
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_11 => return Err(HeadError::NoHost),
        (None, _) => {}
        (Some(_), Some(_)) => return Err(HeadError::TwoHosts),
        (Some(host), None) if !is_host(host.as_bytes()) => return Err(HeadError::BadHost),
        (Some(_), None) => {}
    }
    if length_framed {
        return Ok(());
    }
    let mut chunked = 0;
    for line in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(line) = line.to_str() else {
            return Err(HeadError::UnknownCoding);
        };
        for coding in line.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(HeadError::UnknownCoding);
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        return Err(HeadError::ChunkedTwice);
    }
    Ok(())
}

/// `Host = uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2): a bracketed IP
/// literal or a reg-name of unreserved, sub-delims and `%XX`, then digits after a colon.
/// Empty is allowed (a target without an authority). No userinfo, no spaces.
fn is_host(value: &[u8]) -> bool {
    let unreserved_or_sub = |b: u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    };
    let (host_ok, port) = if let Some(literal) = value.strip_prefix(b"[") {
        let Some(end) = literal.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &literal[..end];
        let ok = !inside.is_empty() && inside.iter().all(|&b| unreserved_or_sub(b) || b == b':');
        (ok, &literal[end + 1..])
    } else {
        let split = value
            .iter()
            .rposition(|&b| b == b':')
            .unwrap_or(value.len());
        let (host, port) = value.split_at(split);
        let mut i = 0;
        let mut ok = true;
        while i < host.len() {
            if host[i] == b'%' {
                ok &= host
                    .get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                i += 3;
            } else {
                ok &= unreserved_or_sub(host[i]);
                i += 1;
            }
        }
        (ok, port)
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    host_ok && port_ok
}

/// Decodes percent-encoded unreserved characters (RFC 3986 §6.2.2.2): `/v1/audio/spe%65ch`
/// is `/v1/audio/speech`, and must be inspected and routed as such.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| path.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~'));
        match decoded {
            Some(b) => {
                out.push(char::from(b));
                i += 3;
            }
            None => {
                out.push(char::from(bytes[i]));
                i += 1;
            }
        }
    }
    out
}

pub fn classify(method: &Method, path: &str) -> Result<Target, GatewayError> {
    // The common case, a POST to an audio operation spelled exactly, needs none of the
    // checks below.
    if *method == Method::POST {
        let operation = match path {
            "/v1/audio/speech" => Some(Operation::Speech),
            "/v1/audio/transcriptions" => Some(Operation::Transcriptions),
            "/v1/audio/translations" => Some(Operation::Translations),
            _ => None,
        };
        if let Some(operation) = operation {
            let path = path.to_string();
            return Ok(Target::Api(Api { operation, path }));
        }
    }
    let dotted = path.split('/').any(|s| s == "." || s == "..");
    // Only a path with a `%` can hold an encoded dot or separator, or need decoding: the
    // common one is looked at as it is, without a lowercased or decoded copy.
    let encoded = path.contains('%');
    let separator = encoded && {
        let lower = path.to_ascii_lowercase();
        ["%2e", "%2f", "%5c"].iter().any(|p| lower.contains(p))
    };
    if dotted || separator || path.contains('\\') {
        return Err(GatewayError::BadPath(path.to_string()));
    }
    let decoded: Cow<str> = match encoded {
        true => Cow::Owned(decode_unreserved(path)),
        false => Cow::Borrowed(path),
    };
    let path: Cow<str> = match &*decoded {
        "/health" => return Ok(Target::Health),
        "/ready" => return Ok(Target::Ready),
        "/status" => return Ok(Target::Status),
        "/metrics" => return Ok(Target::Metrics),
        "/ui" | "/ui/" => return Ok(Target::Ui),
        "/reload" if *method == Method::POST => return Ok(Target::Reload),
        "/reload" => {
            return Err(GatewayError::MethodNotAllowed {
                method: method.clone(),
                path: "/reload".to_string(),
            })
        }
        "/" => return Ok(Target::Root),
        p if p.starts_with("/v1/") => Cow::Borrowed(p),
        // A base URL without /v1 yields these.
        p if p.starts_with("/audio/") || p == "/models" || p.starts_with("/models/") => {
            Cow::Owned(format!("/v1{p}"))
        }
        p => return Err(GatewayError::NotFound(p.to_string())),
    };
    // A trailing slash does not make an audio request something else.
    let bare = path.strip_suffix('/').unwrap_or(&path);
    let operation = match bare {
        "/v1/audio/speech" => Operation::Speech,
        "/v1/audio/transcriptions" => Operation::Transcriptions,
        "/v1/audio/translations" => Operation::Translations,
        _ => Operation::Other,
    };
    if *method == Method::GET {
        match bare {
            "/v1/models" => return Ok(Target::Discovery(Listing::Models)),
            "/v1/audio/voices" => return Ok(Target::Discovery(Listing::Voices)),
            _ => {}
        }
    }
    let path = match operation {
        Operation::Other => path.into_owned(),
        _ => path.trim_end_matches('/').to_string(),
    };
    if operation != Operation::Other && method != Method::POST {
        return Err(GatewayError::MethodNotAllowed {
            method: method.clone(),
            path,
        });
    }
    Ok(Target::Api(Api { operation, path }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(method: Method, path: &str) -> Result<Target, u16> {
        classify(&method, path).map_err(|e| e.api_error().status.as_u16())
    }

    fn api(operation: Operation, path: &str) -> Result<Target, u16> {
        Ok(Target::Api(Api {
            operation,
            path: path.to_string(),
        }))
    }

    #[test]
    fn audio_paths_are_found_with_or_without_v1() {
        assert_eq!(
            target(Method::POST, "/v1/audio/speech"),
            api(Operation::Speech, "/v1/audio/speech")
        );
        assert_eq!(
            target(Method::POST, "/audio/speech"),
            api(Operation::Speech, "/v1/audio/speech")
        );
        assert_eq!(
            target(Method::POST, "/audio/transcriptions"),
            api(Operation::Transcriptions, "/v1/audio/transcriptions")
        );
        assert_eq!(
            target(Method::POST, "/v1/audio/translations"),
            api(Operation::Translations, "/v1/audio/translations")
        );
        assert_eq!(
            target(Method::GET, "/models"),
            Ok(Target::Discovery(Listing::Models))
        );
        assert_eq!(
            target(Method::GET, "/v1/audio/voices"),
            Ok(Target::Discovery(Listing::Voices))
        );
        assert_eq!(
            target(Method::POST, "/v1/audio/voices"),
            api(Operation::Other, "/v1/audio/voices"),
            "POST creates a voice at OpenAI: passed on"
        );
        assert_eq!(
            target(Method::GET, "/v1/models/tts-1"),
            api(Operation::Other, "/v1/models/tts-1")
        );
        assert_eq!(target(Method::GET, "/health"), Ok(Target::Health));
        assert_eq!(target(Method::GET, "/"), Ok(Target::Root));
    }

    #[test]
    fn encoded_and_slashed_spellings_of_audio_paths_are_the_same_endpoint() {
        assert_eq!(
            target(Method::POST, "/v1/audio/spe%65ch"),
            api(Operation::Speech, "/v1/audio/speech")
        );
        assert_eq!(
            target(Method::POST, "/v1/audio/transcriptions/"),
            api(Operation::Transcriptions, "/v1/audio/transcriptions")
        );
        assert_eq!(
            target(Method::GET, "/v1/files/a%20b"),
            api(Operation::Other, "/v1/files/a%20b"),
            "reserved and other encodings are kept"
        );
        assert_eq!(target(Method::GET, "/v1/audio%2Fspeech"), Err(400));
    }

    #[test]
    fn operational_paths_are_voxgates_own() {
        assert_eq!(target(Method::GET, "/ready"), Ok(Target::Ready));
        assert_eq!(target(Method::GET, "/status"), Ok(Target::Status));
        assert_eq!(target(Method::GET, "/metrics"), Ok(Target::Metrics));
        assert_eq!(target(Method::GET, "/ui"), Ok(Target::Ui));
        assert_eq!(target(Method::GET, "/ui/"), Ok(Target::Ui));
        assert_eq!(
            target(Method::GET, "/v1/metrics"),
            api(Operation::Other, "/v1/metrics"),
            "an API path, passed on"
        );
    }

    fn head(version: Version, lines: &[(&str, &str)]) -> Result<(), HeadError> {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        check_head(version, &headers, false)
    }

    #[test]
    fn http_1_1_needs_one_valid_host() {
        let v11 = Version::HTTP_11;
        assert_eq!(head(v11, &[]), Err(HeadError::NoHost));
        assert_eq!(head(Version::HTTP_10, &[]), Ok(()));
        assert_eq!(head(Version::HTTP_2, &[]), Ok(()), ":authority instead");
        assert_eq!(
            head(v11, &[("host", "a"), ("host", "a")]),
            Err(HeadError::TwoHosts)
        );
        assert_eq!(
            head(Version::HTTP_10, &[("host", "a"), ("host", "b")]),
            Err(HeadError::TwoHosts)
        );
        for good in [
            "x",
            "127.0.0.1:9000",
            "[::1]",
            "[::1]:80",
            "voice.example",
            "a%41b:",
            "",
        ] {
            assert_eq!(head(v11, &[("host", good)]), Ok(()), "{good:?}");
        }
        for bad in [
            "a b@c", "u@h", "h:8o", "[::1", "[]", "h:80:80", "a/b", "a%4", "[::1]x", "h h",
        ] {
            assert_eq!(
                head(v11, &[("host", bad)]),
                Err(HeadError::BadHost),
                "{bad:?}"
            );
        }
        assert_eq!(HeadError::BadHost.api_error().status, 400);
    }

    #[test]
    fn only_chunked_is_a_transfer_coding_voxgate_reads() {
        let v11 = Version::HTTP_11;
        for good in ["chunked", "CHUNKED", "Chunked ", " chunked"] {
            let te = [("host", "x"), ("transfer-encoding", good)];
            assert_eq!(head(v11, &te), Ok(()), "{good:?}");
        }
        for unknown in ["gzip, chunked", "identity, chunked", "chunked, gzip", "br"] {
            let te = [("host", "x"), ("transfer-encoding", unknown)];
            assert_eq!(head(v11, &te), Err(HeadError::UnknownCoding), "{unknown:?}");
        }
        let twice = [
            ("host", "x"),
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked"),
        ];
        assert_eq!(head(v11, &twice), Err(HeadError::ChunkedTwice));
        assert_eq!(HeadError::UnknownCoding.api_error().status, 501);
    }

    #[test]
    fn hostile_and_unknown_paths_are_refused() {
        assert_eq!(target(Method::GET, "/v1/../admin"), Err(400));
        assert_eq!(target(Method::GET, "/v1/%2e%2e/admin"), Err(400));
        assert_eq!(target(Method::GET, "/v1/audio%2Fspeech"), Err(400));
        assert_eq!(target(Method::GET, "/admin"), Err(404));
        assert_eq!(target(Method::GET, "/v1/audio/speech"), Err(405));
    }
}
