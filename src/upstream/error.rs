//! Why an attempt at an upstream produced no response: one error type with a kind.
//!
//! Every layer below the forwarder (connecting, TLS, voxgate's HTTP/1 client, hyper's
//! HTTP/2 client, the per-try timeout) reports its failure as an [`UpstreamError`] whose
//! [`ErrorKind`] says what happened on the wire. The forwarder's one decision function
//! (`gateway::forward::may_fall_back`) reads the kind, never the message; the message is
//! for the access log and for the client's error.

use std::fmt;
use std::time::Duration;

use crate::body::BoxError;

/// What kind of failure an attempt met, and on whose side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection could be made (refused, unreachable, DNS, TLS handshake): nothing
    /// was sent.
    Connect,
    /// No response headers within the per-try timeout.
    Timeout,
    /// The connection broke after sending began, before any response header.
    Reset,
    /// A kept connection was closed by the upstream as the request went out (its own
    /// keep-alive ran out). The connections layer sends such a request once more on a new
    /// connection before this is ever reported.
    Stale,
    /// The upstream answered with something that is not valid HTTP.
    Protocol,
    /// voxgate itself could not make the request (a request target it cannot send, the
    /// replay store unreadable, an endpoint missing): its own fault, never the upstream's,
    /// so never a reason to try the next one.
    Internal,
}

/// An attempt's failure: a kind, what happened, and the error that caused it if any.
#[derive(Debug)]
pub struct UpstreamError {
    kind: ErrorKind,
    message: String,
    source: Option<BoxError>,
}

impl UpstreamError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> UpstreamError {
        UpstreamError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A failure caused by `source`, whose chain of causes becomes the message.
    pub fn caused_by(kind: ErrorKind, source: impl Into<BoxError>) -> UpstreamError {
        let source = source.into();
        UpstreamError {
            kind,
            message: describe(&*source),
            source: Some(source),
        }
    }

    pub fn timeout(after: Duration) -> UpstreamError {
        UpstreamError::new(ErrorKind::Timeout, format!("{after:?}"))
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What happened, without the kind's lead-in.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.message;
        match self.kind {
            ErrorKind::Connect => write!(f, "connect failed: {m}"),
            ErrorKind::Timeout => write!(f, "no response headers within {m}"),
            ErrorKind::Reset | ErrorKind::Stale => {
                write!(f, "connection failed before a response: {m}")
            }
            ErrorKind::Protocol => write!(f, "invalid answer: {m}"),
            ErrorKind::Internal => write!(f, "voxgate could not send the request: {m}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// An error's message with its causes, which carry the useful part.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_says_the_kind_and_keeps_the_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = UpstreamError::caused_by(ErrorKind::Connect, io);
        assert_eq!(e.to_string(), "connect failed: refused");
        assert!(std::error::Error::source(&e).is_some());
        let e = UpstreamError::timeout(Duration::from_secs(2));
        assert_eq!(e.to_string(), "no response headers within 2s");
        let e = UpstreamError::new(ErrorKind::Internal, "bad target");
        assert!(e.to_string().starts_with("voxgate could not send"), "{e}");
    }
}
