//! The fault matrix: every upstream fault × (a healthy fallback exists / none does) ×
//! (speech / transcription upload / streaming response), one test per cell, named for it:
//! `primary_answers_503::with_a_fallback::upload`. For each cell: the outcome (served by
//! the fallback, passed through, the right OpenAI-shaped error, or a broken stream — never
//! a clean short 200), and that it came within its deadline. Each cell prints its row of
//! the table (`cargo test --test faults -- --nocapture --test-threads=1`).
//!
//! The cells run on a paused clock: every wait in them is a timer on the test's own
//! runtime (the per-try and idle timeouts, the scripted upstream's delays), so a cell
//! takes milliseconds and its deadline is measured in exact virtual time. Only the row
//! whose host does not resolve runs on the real clock: its wait is the system resolver.

mod support;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::json;
use support::*;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Refused,
    Status502,
    Status503,
    Status504,
    Status500,
    Status429,
    ResetBeforeHeaders,
    ResetMidBody,
    SlowHeaders,
    StallMidBody,
    NeverAnswers,
    UntrustedTls,
    /// A host name that does not resolve (`.invalid`, RFC 6761).
    Unresolvable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Speech,
    Upload,
    Streaming,
}

/// What the client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// A complete response from this upstream, with this status.
    Complete { status: u16, upstream: String },
    /// voxgate's own error, OpenAI-shaped.
    Error { status: u16 },
    /// Headers, then a body that broke off.
    Broken,
}

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seen::Complete { status, upstream } => write!(f, "{status} from {upstream}"),
            Seen::Error { status } => write!(f, "{status} voxgate error"),
            Seen::Broken => write!(f, "broken stream"),
        }
    }
}

/// The answer each cell must get.
fn expected(fault: Fault, fallback: bool) -> Seen {
    let from = |status: u16, upstream: &str| Seen::Complete {
        status,
        upstream: upstream.into(),
    };
    match (fault, fallback) {
        // Failures before the response: the fallback serves, or voxgate says why.
        (Fault::Refused | Fault::ResetBeforeHeaders | Fault::UntrustedTls, true)
        | (Fault::Unresolvable, true)
        | (Fault::SlowHeaders | Fault::NeverAnswers, true)
        | (Fault::Status502 | Fault::Status503 | Fault::Status504, true) => from(200, "fallback"),
        (Fault::Refused | Fault::ResetBeforeHeaders | Fault::UntrustedTls, false)
        | (Fault::Unresolvable, false) => Seen::Error { status: 502 },
        (Fault::SlowHeaders | Fault::NeverAnswers, false) => Seen::Error { status: 504 },
        // The last upstream's answer is the answer.
        (Fault::Status502, false) => from(502, "primary"),
        (Fault::Status503, false) => from(503, "primary"),
        (Fault::Status504, false) => from(504, "primary"),
        // Not fallback triggers by default: passed through.
        (Fault::Status500, _) => from(500, "primary"),
        (Fault::Status429, _) => from(429, "primary"),
        // After the first byte there is no fallback: the client sees the break.
        (Fault::ResetMidBody | Fault::StallMidBody, _) => Seen::Broken,
    }
}

fn primary_reply(fault: Fault) -> Reply {
    let part = || vec![Bytes::from_static(b"partial-audio")];
    match fault {
        Fault::Status502 => Reply::status(502),
        Fault::Status503 => Reply::status(503),
        Fault::Status504 => Reply::status(504),
        Fault::Status500 => Reply::status(500),
        Fault::Status429 => Reply::status(429),
        Fault::ResetBeforeHeaders => Reply::Close,
        Fault::ResetMidBody => Reply::ChunksThenReset {
            chunks: part(),
            delay: Duration::from_millis(10),
        },
        Fault::SlowHeaders => Reply::Late {
            after: Duration::from_secs(2),
            reply: Box::new(Reply::ok("audio/pcm", "too late")),
        },
        Fault::StallMidBody => Reply::ChunksThenStall { chunks: part() },
        Fault::NeverAnswers => Reply::Hang,
        Fault::Refused | Fault::UntrustedTls | Fault::Unresolvable => {
            unreachable!("no scripted server")
        }
    }
}

fn good_reply(kind: Kind) -> Reply {
    match kind {
        Kind::Speech => Reply::ok("audio/pcm", "fallback-audio"),
        Kind::Upload => Reply::json(200, json!({"text": "fallback"})),
        Kind::Streaming => Reply::Chunks {
            status: 200,
            content_type: "audio/pcm",
            chunks: (0..3).map(|_| Bytes::from_static(b"chunk")).collect(),
            delay: Duration::from_millis(20),
        },
    }
}

/// Runs one cell: returns what the client saw and how long it took.
async fn cell(fault: Fault, fallback: bool, kind: Kind) -> (Seen, Duration) {
    // Servers that must outlive the request.
    let mut keep = Vec::new();
    let primary_url = match fault {
        Fault::Refused => format!("http://{}", refused_addr().await),
        Fault::UntrustedTls => format!("https://{}", tls_upstream().await.addr),
        Fault::Unresolvable => "http://voxgate-fault-matrix.invalid:9".to_string(),
        _ => {
            let s = Scripted::always(primary_reply(fault)).await;
            let url = s.url();
            keep.push(s);
            url
        }
    };
    let mut config = format!(
        "[upstreams.primary]\nurl = \"{primary_url}\"\nresponse_timeout = \"300ms\"\nidle_timeout = \"300ms\"\n"
    );
    if fallback {
        let s = Scripted::always(good_reply(kind)).await;
        config += &format!("[upstreams.fallback]\nurl = \"{}\"\n", s.url());
        config += "[[routes]]\nto = [\"primary\", \"fallback\"]\n";
        keep.push(s);
    } else {
        config += "[[routes]]\nto = [\"primary\"]\n";
    }
    let proxy = Proxy::start(&config).await;
    let request = match kind {
        Kind::Speech | Kind::Streaming => speech_request(
            &proxy.url("/v1/audio/speech"),
            json!({"model": "tts-1", "input": "hi", "voice": "alloy"}),
        ),
        Kind::Upload => post(
            &proxy.url("/v1/audio/transcriptions"),
            &form_content_type(),
            full_body(form(&[
                ("model", None, b"whisper-1"),
                ("file", Some("a.wav"), &noise(256 * 1024)),
            ])),
        ),
    };
    let start = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(5), client().request(request))
        .await
        .expect("headers within the deadline")
        .expect("a response");
    let status = response.status().as_u16();
    let upstream = response
        .headers()
        .get("x-voxgate-upstream")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .expect("the body ends or breaks within the deadline");
    let seen = match (body, upstream) {
        (Err(_), _) => Seen::Broken,
        (Ok(_), Some(upstream)) => Seen::Complete { status, upstream },
        (Ok(body), None) => {
            let v: serde_json::Value = serde_json::from_slice(&body.to_bytes()).expect("JSON");
            assert!(v["error"]["message"].is_string(), "OpenAI shape: {v}");
            Seen::Error { status }
        }
    };
    (seen, start.elapsed())
}

/// Runs one cell and checks it: the answer `expected` says, within the deadline.
async fn check(fault: Fault, fallback: bool, kind: Kind) {
    // The resolver is outside the runtime: the clock stays real for that row only.
    if fault != Fault::Unresolvable {
        tokio::time::pause();
    }
    let (seen, took) = cell(fault, fallback, kind).await;
    let want = expected(fault, fallback);
    // A resolver that does not answer within the per-try timeout makes the lookup a
    // timeout (504) instead of a connect failure (502): both are right.
    let slow_dns = fault == Fault::Unresolvable && seen == Seen::Error { status: 504 };
    let right = seen == want || slow_dns;
    println!(
        "{:<36} {:<9} {:<10} {:<24} {:>8.1}{}",
        row(fault),
        if fallback { "yes" } else { "no" },
        format!("{kind:?}"),
        seen.to_string(),
        took.as_secs_f64() * 1000.0,
        if right {
            String::new()
        } else {
            format!("  <-- expected {want}")
        },
    );
    assert!(
        right,
        "{fault:?}/{fallback}/{kind:?}: {seen} instead of {want}"
    );
    // Per-try timeout 300 ms and idle timeout 300 ms: nothing may take much longer.
    assert!(
        took < Duration::from_millis(1500),
        "{fault:?}/{fallback}/{kind:?} took {took:?}"
    );
}

/// One module per fault, named as a sentence about the primary, with a test per cell
/// inside; `row` names the module of each fault, and its match fails to compile when a
/// fault has no row.
macro_rules! matrix {
    ($($fault:ident => $row:ident,)*) => {
        fn row(fault: Fault) -> &'static str {
            match fault {
                $(Fault::$fault => stringify!($row),)*
            }
        }
        $(
            mod $row {
                use super::{check, Fault, Kind};
                matrix!(@cells with_a_fallback, $fault, true);
                matrix!(@cells without_a_fallback, $fault, false);
            }
        )*
    };
    (@cells $fallback:ident, $fault:ident, $has:expr) => {
        mod $fallback {
            use super::{check, Fault, Kind};

            #[tokio::test]
            async fn speech() {
                check(Fault::$fault, $has, Kind::Speech).await;
            }

            #[tokio::test]
            async fn upload() {
                check(Fault::$fault, $has, Kind::Upload).await;
            }

            #[tokio::test]
            async fn streaming() {
                check(Fault::$fault, $has, Kind::Streaming).await;
            }
        }
    };
}

matrix! {
    Refused => primary_refuses_the_connection,
    Status502 => primary_answers_502,
    Status503 => primary_answers_503,
    Status504 => primary_answers_504,
    Status500 => primary_answers_500,
    Status429 => primary_answers_429,
    ResetBeforeHeaders => primary_resets_before_the_headers,
    ResetMidBody => primary_resets_mid_body,
    SlowHeaders => primary_sends_its_headers_too_late,
    StallMidBody => primary_stalls_mid_body,
    NeverAnswers => primary_never_answers,
    UntrustedTls => primary_has_an_untrusted_certificate,
    Unresolvable => primary_host_does_not_resolve,
}
