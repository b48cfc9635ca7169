//! Forwarding with fallback: try a route's upstreams in order until one answers.
//!
//! The rules live in one place, [`falls_back`]: a connect failure, a missing response within
//! the per-try timeout, a connection broken before the response, or a status listed in the
//! route's `fallback_on` sends the request on to the next upstream — and nothing else does.
//! The decision is taken on the response *headers*, before a single response byte has gone
//! to the client; once a response is handed back it is the client's, whatever happens to
//! its body. The last upstream's response is always handed back: with no one left to ask,
//! its own 503 and `retry-after` tell the client more than a made-up 502 would. Every attempt is recorded for the access log and for the error message when
//! all of them fail.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::upstream::connections::UpstreamBody;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::BodyExt;

use crate::config::{FallbackPolicy, RouteConfig};
use crate::engine::dialect::Convert;
use crate::error::ApiError;
use crate::request::payload::{Edits, Payload};
use crate::route::Endpoint;
use crate::upstream::pool::Picked;
use crate::upstream::{AttemptError, Upstream};

/// What became of one attempt.
#[derive(Debug)]
pub enum AttemptResult {
    /// The response went to the client.
    Answered(StatusCode),
    /// The status was in `fallback_on`; `detail` is the gist of its error body.
    Refused {
        status: StatusCode,
        detail: Option<String>,
    },
    /// No response at all.
    Failed(AttemptError),
    /// Not tried: no endpoint of the upstream was available.
    Skipped,
    /// Not tried: too many fallback attempts are in flight already.
    NoBudget,
    /// Not tried: the route's deadline had passed.
    DeadlinePassed,
    /// Not tried: the engine cannot take this request (a voice it cannot map, a stream
    /// it cannot produce); the reason says which.
    Unsuitable(String),
}

#[derive(Debug)]
pub struct Attempt {
    pub upstream: String,
    pub result: AttemptResult,
    pub elapsed: Duration,
}

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.elapsed.as_secs_f64() * 1000.0;
        match &self.result {
            AttemptResult::Answered(s) => {
                write!(f, "{}: {} ({ms:.1} ms)", self.upstream, s.as_u16())
            }
            AttemptResult::Refused { status, detail } => {
                write!(f, "{}: answered {}", self.upstream, status.as_u16())?;
                if let Some(d) = detail {
                    write!(f, " \"{d}\"")?;
                }
                write!(f, " ({ms:.1} ms)")
            }
            AttemptResult::Failed(e) => write!(f, "{}: {e} ({ms:.1} ms)", self.upstream),
            AttemptResult::Skipped => {
                write!(f, "{}: skipped, no endpoint available", self.upstream)
            }
            AttemptResult::NoBudget => {
                write!(f, "{}: not tried, retry budget exhausted", self.upstream)
            }
            AttemptResult::DeadlinePassed => {
                write!(
                    f,
                    "{}: not tried, the route's deadline passed",
                    self.upstream
                )
            }
            AttemptResult::Unsuitable(why) => write!(f, "{}: not sent, {why}", self.upstream),
        }
    }
}

/// The one place that decides whether a failed attempt goes on to the next upstream.
pub fn falls_back(policy: &FallbackPolicy, outcome: Result<StatusCode, &AttemptError>) -> bool {
    match outcome {
        Ok(status) => policy.statuses.contains(&status.as_u16()),
        Err(AttemptError::Connect(_)) => policy.connect,
        Err(AttemptError::Timeout(_)) => policy.timeout,
        Err(AttemptError::Reset(_)) => policy.reset,
    }
}

/// Every upstream of the route was tried, or the policy forbade going on.
#[derive(Debug)]
pub struct Exhausted {
    /// Whether the last failure was one the route does not fall back on.
    pub stopped_by_policy: bool,
    pub summary: String,
    pub all_timeouts: bool,
    /// No upstream was asked because none could take the request as it is: the
    /// client's request is at fault, not the upstreams.
    pub unsuitable: bool,
}

impl Exhausted {
    pub fn api_error(&self) -> ApiError {
        if self.unsuitable {
            return ApiError::invalid_request(
                StatusCode::BAD_REQUEST,
                format!(
                    "no upstream of the route can take this request: {}",
                    self.summary
                ),
            )
            .with_code("unsupported_request");
        }
        let status = if self.all_timeouts {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        let lead = if self.stopped_by_policy {
            "upstream failed and the route does not fall back on that"
        } else {
            "no upstream could answer"
        };
        ApiError::new(status, "server_error", format!("{lead}: {}", self.summary))
            .with_code("upstream_unavailable")
            // voxgate already did the retrying an SDK would do, against every upstream.
            .with_should_retry(false)
    }
}

/// Envoy's retry budget: fallback attempts in flight may be `percent` % of the requests in
/// flight, or `min`, whichever is more. When every upstream is slow, this keeps fallbacks
/// from doubling the load on the one that still answers.
#[derive(Debug)]
pub struct RetryBudget {
    percent: usize,
    min: usize,
    requests: AtomicUsize,
    retries: AtomicUsize,
}

/// One request or one fallback attempt in flight; counted until dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RetryBudget {
    pub fn new(percent: u32, min: u32) -> RetryBudget {
        RetryBudget {
            percent: percent as usize,
            min: min as usize,
            requests: AtomicUsize::new(0),
            retries: AtomicUsize::new(0),
        }
    }

    pub fn request(&self) -> InFlight<'_> {
        self.requests.fetch_add(1, Ordering::AcqRel);
        InFlight(&self.requests)
    }

    /// A fallback attempt, if the budget allows one more now.
    pub fn retry(&self) -> Option<InFlight<'_>> {
        let allowed = (self.requests.load(Ordering::Acquire) * self.percent / 100).max(self.min);
        self.retries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < allowed).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(&self.retries))
    }
}

/// The request line and headers as the client sent them, normalised.
pub struct RequestHead<'a> {
    pub endpoint: Endpoint,
    pub method: &'a Method,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub request_id: &'a HeaderValue,
}

/// The answer that goes to the client.
pub struct Served {
    /// Index into `upstreams` of the upstream that answered.
    pub index: usize,
    pub picked: Picked,
    pub response: Response<UpstreamBody>,
    /// How its answer must be converted for the client.
    pub convert: Convert,
}

/// The edits for sending `payload` to `upstream`, or why it cannot go there.
fn edits_for<'a>(
    upstream: &'a Upstream,
    route: &'a RouteConfig,
    endpoint: Endpoint,
    payload: &Payload,
) -> Result<Edits<'a>, String> {
    let dialect = &upstream.config.dialect;
    let edits = Edits {
        set: &route.set,
        model_map: &upstream.config.model_map,
        voice_map: &upstream.config.voice_map,
        dialect,
        drop_fields: dialect.dropped(endpoint),
        convert: dialect.conversion(endpoint, payload.stream(), payload.response_format())?,
        translate: endpoint == Endpoint::Translations && dialect.translate_field,
    };
    match payload.refusal(&edits) {
        Some(why) => Err(why),
        None => Ok(edits),
    }
}

/// Tries the route's upstreams in order, skipping those with no available endpoint —
/// unless none has one, in which case every upstream is tried anyway — and those that
/// cannot take the request. On success returns the upstream that answered and its response.
pub async fn forward(
    upstreams: &[Upstream],
    budget: &RetryBudget,
    route: &RouteConfig,
    payload: &Payload,
    head: &RequestHead<'_>,
    attempts: &mut Vec<Attempt>,
) -> Result<Served, Exhausted> {
    // Each suitable pool's availability, read once: it takes every endpoint's lock.
    let mut suitable = Vec::with_capacity(route.to.len());
    for &index in &route.to {
        match edits_for(&upstreams[index], route, head.endpoint, payload) {
            Ok(edits) => suitable.push((index, edits, upstreams[index].pool.is_up())),
            Err(why) => attempts.push(not_tried(&upstreams[index], AttemptResult::Unsuitable(why))),
        }
    }
    if suitable.is_empty() {
        return Err(Exhausted {
            stopped_by_policy: false,
            summary: summary(attempts),
            all_timeouts: false,
            unsuitable: true,
        });
    }
    let all_down = !suitable.iter().any(|(_, _, up)| *up);
    let mut to_try = Vec::with_capacity(suitable.len());
    for (index, edits, up) in suitable {
        if all_down || up {
            to_try.push((index, edits));
        } else {
            attempts.push(not_tried(&upstreams[index], AttemptResult::Skipped));
        }
    }
    let _request = budget.request();
    let deadline = route.deadline.map(|d| Instant::now() + d);
    // The fallback attempt in flight, held until the next one or the end.
    let mut retry: Option<InFlight<'_>> = None;
    let mut stopped_by_policy = false;
    let mut after_connect_failure = false;
    let count = to_try.len();
    for (position, (index, edits)) in to_try.into_iter().enumerate() {
        let last = position + 1 == count;
        let upstream = &upstreams[index];
        let started = Instant::now();
        // A fallback after a connect failure is free: nothing reached the failed upstream,
        // so going on adds no load anywhere. Every other fallback needs budget, unless it
        // was taken already when the previous answer was judged.
        if position > 0 && !after_connect_failure && retry.is_none() {
            retry = budget.retry();
            if retry.is_none() {
                attempts.push(not_tried(upstream, AttemptResult::NoBudget));
                break;
            }
        }
        after_connect_failure = false;
        let mut timeout = upstream.config.response_timeout;
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(started);
            if left.is_zero() {
                attempts.push(not_tried(upstream, AttemptResult::DeadlinePassed));
                break;
            }
            timeout = timeout.min(left);
        }
        let Some(picked) = upstream.pool.pick(all_down) else {
            // Went down since the list was made.
            attempts.push(not_tried(upstream, AttemptResult::Skipped));
            continue;
        };
        let path = upstream_path(&upstream.config.dialect, head);
        // An answer voxgate converts is one it reads: it must not come compressed.
        let identity;
        let headers = if edits.convert == Convert::None {
            head.headers
        } else {
            let mut h = head.headers.clone();
            h.remove(http::header::ACCEPT_ENCODING);
            identity = h;
            &identity
        };
        let result = upstream
            .send(
                picked.index,
                timeout,
                head.method,
                &path,
                headers,
                head.request_id,
                || payload.render(&edits),
            )
            .await;
        let name = if upstream.pool.endpoints.len() > 1 {
            format!(
                "{}@{}",
                upstream.name(),
                picked.endpoint().url.authority().map_or("", |a| a.as_str())
            )
        } else {
            upstream.name().to_string()
        };
        let record = |result| Attempt {
            upstream: name.clone(),
            result,
            elapsed: started.elapsed(),
        };
        // This attempt's budget is spent once it has an outcome.
        retry = None;
        match result {
            Ok(response) => {
                let status = response.status();
                let failed = falls_back(&route.fallback, Ok(status));
                if failed {
                    upstream
                        .pool
                        .failed(picked.index, &format_args!("answered {}", status.as_u16()));
                    // The next attempt's budget, taken now: without it (or without time),
                    // this answer is the answer.
                    let in_time = deadline.is_none_or(|d| d > Instant::now());
                    if !last && in_time {
                        retry = budget.retry();
                    }
                } else {
                    upstream.pool.succeeded(picked.index);
                }
                // The last upstream's answer is the answer, whatever its status: the client
                // gets its body and its retry-after, and the SDK's own retry rules apply.
                // So is an answer that no fallback may follow, for lack of budget or time.
                if !failed || retry.is_none() {
                    attempts.push(record(AttemptResult::Answered(status)));
                    return Ok(Served {
                        index,
                        picked,
                        response,
                        convert: edits.convert,
                    });
                }
                let detail = error_detail(response).await;
                attempts.push(record(AttemptResult::Refused { status, detail }));
            }
            Err(e) => {
                upstream.pool.failed(picked.index, &e);
                after_connect_failure = matches!(e, AttemptError::Connect(_));
                let go_on = falls_back(&route.fallback, Err(&e));
                attempts.push(record(AttemptResult::Failed(e)));
                if !go_on {
                    stopped_by_policy = true;
                    break;
                }
            }
        }
    }
    let summary = summary(attempts);
    let timed_out = |a: &Attempt| {
        matches!(
            a.result,
            AttemptResult::Failed(AttemptError::Timeout(_)) | AttemptResult::DeadlinePassed
        )
    };
    let all_timeouts = attempts.iter().any(timed_out)
        && attempts.iter().all(|a| {
            timed_out(a) || matches!(a.result, AttemptResult::Skipped | AttemptResult::NoBudget)
        });
    Err(Exhausted {
        stopped_by_policy,
        summary,
        all_timeouts,
        unsuitable: false,
    })
}

fn summary(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(Attempt::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The path and query an upstream gets: its dialect's own path for the endpoint, if it
/// has one (whisper.cpp's `/inference`), else the client's.
fn upstream_path<'a>(
    dialect: &crate::engine::dialect::Dialect,
    head: &RequestHead<'a>,
) -> std::borrow::Cow<'a, str> {
    match dialect.path(head.endpoint) {
        None => head.path_and_query.into(),
        Some(path) => match head.path_and_query.split_once('?') {
            Some((_, query)) => format!("{path}?{query}").into(),
            None => path.to_string().into(),
        },
    }
}

/// The record of an upstream that was not tried.
fn not_tried(upstream: &Upstream, result: AttemptResult) -> Attempt {
    Attempt {
        upstream: upstream.name().to_string(),
        result,
        elapsed: Duration::ZERO,
    }
}

/// The message of a refused response, if its body is short and arrives at once: enough to
/// tell "model not found" from "overloaded" in the final error, never worth a wait.
async fn error_detail(response: Response<UpstreamBody>) -> Option<String> {
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
pub(crate) fn message_of(body: &[u8]) -> Option<String> {
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

    fn policy(connect: bool, timeout: bool, reset: bool, statuses: &[u16]) -> FallbackPolicy {
        FallbackPolicy {
            connect,
            timeout,
            reset,
            statuses: statuses.to_vec(),
        }
    }

    #[test]
    fn the_default_policy_falls_back_on_exactly_its_triggers() {
        let p = FallbackPolicy::default();
        for code in 100..=599u16 {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(
                falls_back(&p, Ok(status)),
                matches!(code, 502..=504),
                "status {code}"
            );
        }
        assert!(falls_back(
            &p,
            Err(&AttemptError::Connect("refused".into()))
        ));
        assert!(falls_back(
            &p,
            Err(&AttemptError::Timeout(Duration::from_secs(1)))
        ));
        assert!(falls_back(&p, Err(&AttemptError::Reset("reset".into()))));
    }

    #[test]
    fn each_trigger_can_be_turned_off_alone() {
        let connect = AttemptError::Connect("x".into());
        let timeout = AttemptError::Timeout(Duration::from_secs(1));
        let reset = AttemptError::Reset("x".into());
        for (c, t, r) in [
            (true, false, false),
            (false, true, false),
            (false, false, true),
        ] {
            let p = policy(c, t, r, &[429]);
            assert_eq!(falls_back(&p, Err(&connect)), c);
            assert_eq!(falls_back(&p, Err(&timeout)), t);
            assert_eq!(falls_back(&p, Err(&reset)), r);
            assert!(falls_back(&p, Ok(StatusCode::TOO_MANY_REQUESTS)));
            assert!(!falls_back(&p, Ok(StatusCode::SERVICE_UNAVAILABLE)));
        }
    }

    #[test]
    fn the_retry_budget_is_a_share_of_requests_with_a_floor() {
        let budget = RetryBudget::new(20, 2);
        let requests: Vec<_> = (0..20).map(|_| budget.request()).collect();
        let retries: Vec<_> = (0..10).map_while(|_| budget.retry()).collect();
        assert_eq!(retries.len(), 4, "20 % of 20 requests");
        drop(retries);
        drop(requests);
        let _one = budget.request();
        let floor: Vec<_> = (0..10).map_while(|_| budget.retry()).collect();
        assert_eq!(
            floor.len(),
            2,
            "the floor applies when the share is smaller"
        );
    }

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

    #[test]
    fn exhausted_maps_to_502_or_504_without_retry() {
        let e = Exhausted {
            stopped_by_policy: false,
            summary: "a: connect failed".into(),
            all_timeouts: false,
            unsuitable: false,
        };
        let api = e.api_error();
        assert_eq!(api.status, 502);
        assert_eq!(api.should_retry, Some(false));
        assert!(api.message.contains("a: connect failed"));
        let e = Exhausted {
            all_timeouts: true,
            ..e
        };
        assert_eq!(e.api_error().status, 504);
    }
}
