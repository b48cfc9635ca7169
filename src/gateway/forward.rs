//! Forwarding with fallback: try a route's upstreams in order until one answers.
//!
//! The rules live in one place, [`may_fall_back`]: a connect failure, a missing response within
//! the per-try timeout, a connection broken before the response, or a status listed in the
//! route's `fallback_on` sends the request on to the next upstream — and nothing else does.
//! The decision is taken on the response *headers*, before a single response byte has gone
//! to the client; once a response is handed back it is the client's, whatever happens to
//! its body. The last upstream's response is always handed back: with no one left to ask,
//! its own 503 and `retry-after` tell the client more than a made-up 502 would. Every attempt is recorded for the access log and for the error message when
//! all of them fail.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

// The route deadline and the per-try timeout (`tokio::time::timeout`) read the same clock.
use tokio::time::Instant;

use std::borrow::Cow;

use crate::upstream::connections::UpstreamBody;
use http::{HeaderMap, Response, StatusCode};

use crate::engine::dialect::{Convert, Dialect};
use crate::engine::errors::error_detail;
use crate::error::ApiError;
use crate::request::payload::{Edits, Payload};
use crate::route::Operation;
use crate::route::{FallbackPolicy, RouteConfig};
use crate::telemetry::record::{summary, Attempt, AttemptResult, RequestRecord};
use crate::upstream::error::{ErrorKind, UpstreamError};
use crate::upstream::{ClientRequest, Upstream};

/// The one place that decides whether a failed attempt goes on to the next upstream: a
/// status listed in the route's `fallback_on`, or a failure of a kind the route falls back
/// on. voxgate's own failures never do: the next upstream would meet the same one.
pub fn may_fall_back(policy: &FallbackPolicy, outcome: Result<StatusCode, &UpstreamError>) -> bool {
    match outcome {
        Ok(status) => policy.statuses.contains(&status.as_u16()),
        Err(e) => match e.kind() {
            ErrorKind::Connect => policy.connect,
            ErrorKind::Timeout => policy.timeout,
            ErrorKind::Reset | ErrorKind::Stale | ErrorKind::Protocol => policy.reset,
            ErrorKind::Internal => false,
        },
    }
}

/// Why a route's upstreams gave the client no answer; each says what the attempts were.
#[derive(Debug)]
pub enum Exhausted {
    /// No upstream of the route can take the request as it is (a voice it cannot map, a
    /// stream it cannot make): the client's request is at fault, not the upstreams.
    Unsuitable(String),
    /// An attempt failed in a way the route does not fall back on; `timed_out` when
    /// every attempt ran out of time.
    StoppedByPolicy { summary: String, timed_out: bool },
    /// Every attempt ran out of time (or the route's deadline passed); none was refused.
    TimedOut(String),
    /// Every upstream was tried or skipped, and none answered.
    NoAnswer(String),
    /// voxgate could not make the request: its own fault, not an upstream's.
    Internal(String),
    /// An upstream answered, but its answer could not be read or converted.
    Unreadable(String),
}

impl Exhausted {
    pub fn api_error(&self) -> ApiError {
        let (status, message) = match self {
            Exhausted::Unsuitable(summary) => {
                return ApiError::invalid_request(
                    StatusCode::BAD_REQUEST,
                    format!("no upstream of the route can take this request: {summary}"),
                )
                .with_code("unsupported_request");
            }
            Exhausted::Internal(summary) => {
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    format!("voxgate could not send the request: {summary}"),
                )
                .with_code("internal_error")
                .with_should_retry(false);
            }
            Exhausted::StoppedByPolicy { summary, timed_out } => (
                match timed_out {
                    true => StatusCode::GATEWAY_TIMEOUT,
                    false => StatusCode::BAD_GATEWAY,
                },
                format!("upstream failed and the route does not fall back on that: {summary}"),
            ),
            Exhausted::TimedOut(summary) => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("no upstream could answer: {summary}"),
            ),
            Exhausted::NoAnswer(summary) | Exhausted::Unreadable(summary) => (
                StatusCode::BAD_GATEWAY,
                format!("no upstream could answer: {summary}"),
            ),
        };
        ApiError::new(status, "server_error", message)
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

/// One request or one fallback attempt counted in the retry budget until dropped.
#[derive(Debug)]
pub struct BudgetEntry<'a>(&'a AtomicUsize);

impl Drop for BudgetEntry<'_> {
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

    pub fn request(&self) -> BudgetEntry<'_> {
        self.requests.fetch_add(1, Ordering::AcqRel);
        BudgetEntry(&self.requests)
    }

    /// A fallback attempt, if the budget allows one more now.
    pub fn retry(&self) -> Option<BudgetEntry<'_>> {
        let allowed = (self.requests.load(Ordering::Acquire) * self.percent / 100).max(self.min);
        self.retries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < allowed).then_some(n + 1)
            })
            .ok()
            .map(|_| BudgetEntry(&self.retries))
    }
}

/// The request as the client sent it (path normalised), and which operation it is.
pub struct RequestHead<'a> {
    pub operation: Operation,
    pub client: ClientRequest<'a>,
}

/// The answer that goes to the client (the endpoint that gave it is in the record's
/// `served_by`, counted in flight until the response is over).
pub struct Served {
    /// Index into `upstreams` of the upstream that answered.
    pub index: usize,
    pub response: Response<UpstreamBody>,
    /// How its answer must be converted for the client.
    pub convert: Convert,
}

/// The edits for sending `payload` to `upstream`, or why it cannot go there (`explain`
/// asks the same question).
pub(crate) fn edits_for<'a>(
    upstream: &'a Upstream,
    route: &'a RouteConfig,
    endpoint: Operation,
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
        translate: endpoint == Operation::Translations && dialect.translate_field,
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
    upstreams: &[Arc<Upstream>],
    budget: &RetryBudget,
    route: &RouteConfig,
    payload: &Payload,
    head: &RequestHead<'_>,
    record: &mut RequestRecord,
) -> Result<Served, Exhausted> {
    let attempts = &mut record.attempts;
    // Each suitable pool's availability, read once: it takes every endpoint's lock.
    let mut suitable = Vec::with_capacity(route.to.len());
    for &index in &route.to {
        match edits_for(&upstreams[index], route, head.operation, payload) {
            Ok(edits) => suitable.push((index, edits, upstreams[index].pool.is_up())),
            Err(why) => attempts.push(not_tried(upstreams, index, AttemptResult::Unsuitable(why))),
        }
    }
    if suitable.is_empty() {
        return Err(Exhausted::Unsuitable(summary(attempts)));
    }
    let all_down = none_up(suitable.iter().map(|(_, _, up)| *up));
    let mut to_try = Vec::with_capacity(suitable.len());
    for (index, edits, up) in suitable {
        if is_tried(up, all_down) {
            to_try.push((index, edits));
        } else {
            attempts.push(not_tried(upstreams, index, AttemptResult::Skipped));
        }
    }
    let _request = budget.request();
    let deadline = route.deadline.map(|d| Instant::now() + d);
    // The fallback attempt in flight, held until the next one or the end.
    let mut retry: Option<BudgetEntry<'_>> = None;
    // Set when an attempt's failure ended the trying.
    let mut stopped: Option<ErrorKind> = None;
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
                attempts.push(not_tried(upstreams, index, AttemptResult::NoBudget));
                break;
            }
        }
        after_connect_failure = false;
        let mut timeout = upstream.config.response_timeout;
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(started);
            if left.is_zero() {
                attempts.push(not_tried(upstreams, index, AttemptResult::DeadlinePassed));
                break;
            }
            timeout = timeout.min(left);
        }
        let Some(picked) = upstream.pool.pick(all_down) else {
            // Went down since the list was made.
            attempts.push(not_tried(upstreams, index, AttemptResult::Skipped));
            continue;
        };
        let path = upstream_path(&upstream.config.dialect, head);
        let headers = client_headers(edits.convert, head.client.headers);
        let result = upstream
            .send(
                picked.index,
                timeout,
                &ClientRequest {
                    path_and_query: &path,
                    headers: &headers,
                    ..head.client
                },
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
        let attempt = |result| Attempt {
            upstream: name.clone(),
            upstream_index: index as u32,
            result,
            elapsed: started.elapsed(),
        };
        // This attempt's budget is spent once it has an outcome.
        retry = None;
        match result {
            Ok(response) => {
                let status = response.status();
                let failed = may_fall_back(&route.fallback, Ok(status));
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
                    attempts.push(attempt(AttemptResult::Answered(status)));
                    record.served_by = Some(picked);
                    return Ok(Served {
                        index,
                        response,
                        convert: edits.convert,
                    });
                }
                let detail = error_detail(response).await;
                attempts.push(attempt(AttemptResult::Refused { status, detail }));
            }
            Err(e) => {
                upstream.pool.failed(picked.index, &e);
                after_connect_failure = e.kind() == ErrorKind::Connect;
                let go_on = may_fall_back(&route.fallback, Err(&e));
                let kind = e.kind();
                attempts.push(attempt(AttemptResult::Failed(e)));
                if !go_on {
                    stopped = Some(kind);
                    break;
                }
            }
        }
    }
    let timed_out = |a: &Attempt| match &a.result {
        AttemptResult::Failed(e) => e.kind() == ErrorKind::Timeout,
        AttemptResult::DeadlinePassed => true,
        _ => false,
    };
    let all_timeouts = attempts.iter().any(timed_out)
        && attempts.iter().all(|a| {
            timed_out(a) || matches!(a.result, AttemptResult::Skipped | AttemptResult::NoBudget)
        });
    let summary = summary(attempts);
    Err(match stopped {
        Some(ErrorKind::Internal) => Exhausted::Internal(summary),
        Some(_) => Exhausted::StoppedByPolicy {
            summary,
            timed_out: all_timeouts,
        },
        None if all_timeouts => Exhausted::TimedOut(summary),
        None => Exhausted::NoAnswer(summary),
    })
}

/// Whether no suitable upstream has an available endpoint: then every one is tried anyway.
pub(crate) fn none_up(up: impl IntoIterator<Item = bool>) -> bool {
    !up.into_iter().any(|up| up)
}

/// Whether a suitable upstream is tried: when it is up, or when none is.
pub(crate) fn is_tried(up: bool, none_up: bool) -> bool {
    none_up || up
}

/// The client's headers as they go to an upstream with this conversion (before
/// [`Upstream`]'s own selection): an answer voxgate converts is one it reads, so it must
/// not come compressed.
pub(crate) fn client_headers(convert: Convert, client: &HeaderMap) -> Cow<'_, HeaderMap> {
    if convert == Convert::None {
        return Cow::Borrowed(client);
    }
    let mut h = client.clone();
    h.remove(http::header::ACCEPT_ENCODING);
    Cow::Owned(h)
}

/// The path and query an upstream gets: its dialect's own path for the endpoint, if it
/// has one (whisper.cpp's `/inference`), else the client's.
pub(crate) fn upstream_path<'a>(
    dialect: &Dialect,
    head: &RequestHead<'a>,
) -> std::borrow::Cow<'a, str> {
    match dialect.path(head.operation) {
        None => head.client.path_and_query.into(),
        Some(path) => match head.client.path_and_query.split_once('?') {
            Some((_, query)) => format!("{path}?{query}").into(),
            None => path.to_string().into(),
        },
    }
}

/// The record of an upstream that was not tried.
fn not_tried(upstreams: &[Arc<Upstream>], index: usize, result: AttemptResult) -> Attempt {
    Attempt {
        upstream: upstreams[index].name().to_string(),
        upstream_index: index as u32,
        result,
        elapsed: Duration::ZERO,
    }
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
                may_fall_back(&p, Ok(status)),
                matches!(code, 502..=504),
                "status {code}"
            );
        }
        assert!(may_fall_back(
            &p,
            Err(&UpstreamError::new(ErrorKind::Connect, "refused"))
        ));
        assert!(may_fall_back(
            &p,
            Err(&UpstreamError::timeout(Duration::from_secs(1)))
        ));
        assert!(may_fall_back(
            &p,
            Err(&UpstreamError::new(ErrorKind::Reset, "reset"))
        ));
    }

    #[test]
    fn each_trigger_can_be_turned_off_alone() {
        let connect = UpstreamError::new(ErrorKind::Connect, "x");
        let timeout = UpstreamError::timeout(Duration::from_secs(1));
        let reset = UpstreamError::new(ErrorKind::Reset, "x");
        for (c, t, r) in [
            (true, false, false),
            (false, true, false),
            (false, false, true),
        ] {
            let p = policy(c, t, r, &[429]);
            assert_eq!(may_fall_back(&p, Err(&connect)), c);
            assert_eq!(may_fall_back(&p, Err(&timeout)), t);
            assert_eq!(may_fall_back(&p, Err(&reset)), r);
            assert!(may_fall_back(&p, Ok(StatusCode::TOO_MANY_REQUESTS)));
            assert!(!may_fall_back(&p, Ok(StatusCode::SERVICE_UNAVAILABLE)));
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
    fn stale_and_invalid_answers_fall_back_as_resets_and_our_own_failures_never_do() {
        let p = FallbackPolicy::default();
        for kind in [ErrorKind::Stale, ErrorKind::Protocol] {
            assert!(may_fall_back(&p, Err(&UpstreamError::new(kind, "x"))));
            let no_reset = policy(true, true, false, &[]);
            assert!(!may_fall_back(
                &no_reset,
                Err(&UpstreamError::new(kind, "x"))
            ));
        }
        let ours = UpstreamError::new(ErrorKind::Internal, "cannot build the upstream URL");
        assert!(!may_fall_back(&policy(true, true, true, &[]), Err(&ours)));
    }

    #[test]
    fn exhausted_maps_to_502_or_504_without_retry() {
        let e = Exhausted::NoAnswer("a: connect failed".into());
        let api = e.api_error();
        assert_eq!(api.status, 502);
        assert_eq!(api.should_retry, Some(false));
        assert!(api.message.contains("a: connect failed"));
        assert_eq!(Exhausted::TimedOut("a".into()).api_error().status, 504);
        let stopped = |timed_out| Exhausted::StoppedByPolicy {
            summary: "a".into(),
            timed_out,
        };
        assert_eq!(stopped(false).api_error().status, 502);
        assert_eq!(stopped(true).api_error().status, 504);
        assert_eq!(Exhausted::Unsuitable("a".into()).api_error().status, 400);
        let internal = Exhausted::Internal("a".into()).api_error();
        assert_eq!(internal.status, 500);
        assert_eq!(internal.should_retry, Some(false));
    }
}
