//! Error bodies as the engines write them: the human message found in each, for the
//! access log, for the error that ends a failed fallback, and for the OpenAI-shaped
//! answers that [`crate::engine::answers`] makes of them.

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::Body;
use http_body_util::BodyExt;

/// The message of a refused response, if its body is short and arrives at once: enough to
/// tell "model not found" from "overloaded" in the final error, never worth a wait.
pub async fn error_detail<B>(response: Response<B>) -> Option<String>
where
    B: Body<Data = Bytes> + Unpin,
{
    const MAX: usize = 2048;
    if response
        .headers()
        .contains_key(http::header::CONTENT_ENCODING)
    {
        return None; // compressed: not worth decoding for a message
    }
    let mut body = response.into_body();
    let mut buf = Vec::new();
    let read = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                if buf.len() > MAX {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(250), read).await;
    message_of(&Bytes::from(buf))
}

/// The text of an error page: tags dropped (an HTML page's `<title>` is usually its
/// message, and comes first), whitespace collapsed. Plain text comes out trimmed.
fn without_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(4096));
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// FastAPI's validation error (`{"detail": [{"loc": ["body", "voice"], "msg": …}]}`, as
/// Kokoro and Speaches send it) as `voice: msg`.
fn fastapi_validation(v: &serde_json::Value) -> Option<String> {
    let first = v.pointer("/detail/0")?;
    let msg = first.get("msg")?.as_str()?;
    let loc: Vec<String> = first
        .get("loc")
        .and_then(|l| l.as_array())
        .map(|l| {
            l.iter()
                .filter(|p| p.as_str() != Some("body"))
                .map(|p| match p {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    Some(if loc.is_empty() {
        msg.to_string()
    } else {
        format!("{}: {msg}", loc.join("."))
    })
}

/// Finds the human message in the error bodies the known upstreams write.
pub fn message_of(body: &[u8]) -> Option<String> {
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) if v.pointer("/detail/0/msg").is_some() => fastapi_validation(&v)?,
        Ok(v) => {
            let candidates = [
                v.pointer("/error/message"),
                v.pointer("/detail/message"),
                v.pointer("/detail"),
                v.pointer("/error"),
                v.pointer("/message"),
            ];
            candidates
                .into_iter()
                .flatten()
                .find_map(|c| c.as_str().map(str::to_string))?
        }
        Err(_) => without_markup(&String::from_utf8_lossy(body)),
    };
    let text: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_found_in_every_dialect() {
        let cases: [(&[u8], Option<&str>); 7] = [
            (
                br#"{"detail":[{"type":"string_type","loc":["body","voice"],"msg":"Input should be a valid string"}]}"#,
                Some("voice: Input should be a valid string"),
            ),
            (
                br#"{"error":{"message":"overloaded","type":"server_error"}}"#,
                Some("overloaded"),
            ),
            (
                br#"{"detail":{"error":"x","message":"voice not found","type":"v"}}"#,
                Some("voice not found"),
            ),
            (br#"{"detail":"Not Found"}"#, Some("Not Found")),
            (br#"{"error":"model busy"}"#, Some("model busy")),
            (
                b"<html><head><title>502 Bad Gateway</title></head>\n<body>nginx</body></html>\n",
                Some("502 Bad Gateway nginx"),
            ),
            (b"", None),
        ];
        for (body, expected) in cases {
            assert_eq!(message_of(body).as_deref(), expected);
        }
    }
}
