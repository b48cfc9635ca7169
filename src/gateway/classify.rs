//! The classify phase: what a request is, from its method and path alone.
//!
//! Paths are normalised first (RFC 3986 §6.2.2: unreserved characters decoded, a trailing
//! slash after an audio operation dropped, `/v1` put in front where a base URL without it
//! left it out) and refused when they hide a dot segment or a separator.

use std::borrow::Cow;

use http::Method;

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
    /// `POST /reload` (admin listener only): read the configuration file again.
    Reload,
    /// `GET /v1/models` or `GET /v1/audio/voices`: merged over the routed upstreams.
    Discovery(Listing),
    Api(Api),
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
