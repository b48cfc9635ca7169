//! Answers voxgate gives itself, in OpenAI's error shape.
//!
//! Each layer has its own error enum (`IntakeError`, `ForwardError`, …) with an exhaustive
//! `api_error()` mapping to an [`ApiError`]; this module only knows how to write one out:
//! `{"error": {"message", "type", "param", "code"}}`, the status, and the headers the SDKs
//! read (`x-should-retry`, `retry-after`).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::body::{full, ProxyBody};

/// An error response as the OpenAI API would shape it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `server_error`, …
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Sent as `x-should-retry` so the SDKs do not re-upload when it cannot help.
    pub should_retry: Option<bool>,
    /// Seconds, sent as `retry-after`.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            should_retry: None,
            retry_after: None,
        }
    }

    pub fn invalid_request(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError::new(status, "invalid_request_error", message)
    }

    pub fn with_param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn with_should_retry(mut self, retry: bool) -> ApiError {
        self.should_retry = Some(retry);
        self
    }

    pub fn with_retry_after(mut self, seconds: u32) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    pub fn body(&self) -> Bytes {
        let value = json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        });
        Bytes::from(value.to_string())
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let mut response = Response::new(full(self.body()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(retry) = self.should_retry {
            headers.insert(
                "x-should-retry",
                HeaderValue::from_static(if retry { "true" } else { "false" }),
            );
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = ApiError::invalid_request(StatusCode::BAD_REQUEST, "no model")
            .with_param("model")
            .with_code("missing");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["message"], "no model");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["code"], "missing");
        let r = ApiError::new(StatusCode::BAD_GATEWAY, "server_error", "x").into_response();
        assert_eq!(r.status(), 502);
        assert!(r.headers().get("x-should-retry").is_none());
        let v: serde_json::Value = serde_json::from_slice(
            &ApiError::new(StatusCode::BAD_GATEWAY, "server_error", "x").body(),
        )
        .unwrap();
        assert!(v["error"]["param"].is_null() && v["error"]["code"].is_null());
    }

    #[test]
    fn should_retry_header_is_written() {
        let r = ApiError::new(StatusCode::BAD_GATEWAY, "server_error", "x")
            .with_should_retry(false)
            .into_response();
        assert_eq!(r.headers()["x-should-retry"], "false");
        assert_eq!(r.headers()["content-type"], "application/json");
    }
}
