//! What is known about one request, filled in as it goes through the phases: the facts
//! every observer at its end (the access log, metrics) reads.

use crate::policy::quota::Unit;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, StatusCode};

use crate::telemetry::labels::LabelTable;
use crate::upstream::error::UpstreamError;
use crate::upstream::pool::Picked;

/// A request's facts. Headers are never kept here: that is how no key reaches a log.
#[derive(Debug)]
pub struct RequestRecord {
    pub started: Instant,
    pub request_id: HeaderValue,
    pub client: SocketAddr,
    pub method: Method,
    pub path: String,
    /// The operation's name (`speech`, `transcriptions`, …), or `none`.
    pub endpoint: &'static str,
    pub model: Option<String>,
    pub voice: Option<String>,
    /// Config line of the route taken.
    pub route: Option<usize>,
    /// The route taken, as its index among the configuration's routes.
    pub route_index: Option<u32>,
    pub attempts: Vec<Attempt>,
    pub upstream: Option<String>,
    /// The upstream that answered, as its index among the configuration's upstreams.
    pub upstream_index: Option<u32>,
    /// The endpoint that answered; counted as in flight until the record is closed.
    pub served_by: Option<Picked>,
    pub status: u16,
    pub bytes_in: u64,
    /// What the request is billed by: a speech request's `input` in Unicode scalar
    /// values, a transcription's or translation's uploaded file in bytes.
    pub billed_units: u64,
    pub error: Option<String>,
    /// The configured client (`[[clients]]`) whose key the request presented: its name
    /// for the access log, its index for the metrics.
    pub caller: Option<(Arc<str>, u32)>,
    /// `hit`, `miss` or `bypass` for speech when a cache is configured.
    pub cache: Option<&'static str>,
    /// The unit of the limit that refused the request.
    pub limited: Option<Unit>,
    /// What the answering upstream is estimated to charge, in nano-dollars.
    pub cost_nanos: u64,
    /// What serving it locally or from the cache saved against the route's priced
    /// upstream: nano-dollars and why (`local`, `cache`).
    pub avoided: Option<(u64, &'static str)>,
    /// The metric rows of the configuration the request runs on.
    pub labels: Option<Arc<LabelTable>>,
}

impl RequestRecord {
    pub fn new(
        request_id: HeaderValue,
        method: Method,
        path: String,
        client: SocketAddr,
    ) -> RequestRecord {
        RequestRecord {
            started: Instant::now(),
            request_id,
            client,
            method,
            path,
            endpoint: "none",
            model: None,
            voice: None,
            route: None,
            route_index: None,
            attempts: Vec::new(),
            upstream: None,
            upstream_index: None,
            served_by: None,
            status: 0,
            bytes_in: 0,
            billed_units: 0,
            error: None,
            caller: None,
            cache: None,
            limited: None,
            cost_nanos: 0,
            avoided: None,
            labels: None,
        }
    }

    /// Every attempt, `; `-separated, as the access log and error messages show them.
    pub fn attempts_text(&self) -> String {
        summary(&self.attempts)
    }
}

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Complete,
    /// The upstream failed mid-body: the client connection is aborted.
    UpstreamFailed,
    /// The client went away first (or before it was answered).
    ClientGone,
}

impl Ending {
    pub fn name(self) -> &'static str {
        match self {
            Ending::Complete => "complete",
            Ending::UpstreamFailed => "upstream_failed_mid_body",
            Ending::ClientGone => "client_gone",
        }
    }
}

/// What the end of a response adds to its record.
#[derive(Debug, Clone, Copy)]
pub struct End {
    pub bytes_out: u64,
    /// From the request's start to the first byte of the body, if one went out.
    pub ttfb: Option<Duration>,
    /// From the request's start to the end of its response.
    pub total: Duration,
    pub ending: Ending,
}

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
    Failed(UpstreamError),
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
    /// The upstream's index among the configuration's upstreams.
    pub upstream_index: u32,
    pub result: AttemptResult,
    pub elapsed: Duration,
}

impl Attempt {
    /// What became of the attempt, without the upstream's name: `503 "busy" (3.0 ms)`.
    pub fn outcome(&self) -> Outcome<'_> {
        Outcome(self)
    }
}

/// An attempt's outcome, written without its upstream's name.
pub struct Outcome<'a>(&'a Attempt);

impl fmt::Display for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.upstream, self.outcome())
    }
}

impl fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attempt = self.0;
        let ms = attempt.elapsed.as_secs_f64() * 1000.0;
        match &attempt.result {
            AttemptResult::Answered(s) => write!(f, "{} ({ms:.1} ms)", s.as_u16()),
            AttemptResult::Refused { status, detail } => {
                write!(f, "answered {}", status.as_u16())?;
                if let Some(d) = detail {
                    write!(f, " \"{d}\"")?;
                }
                write!(f, " ({ms:.1} ms)")
            }
            AttemptResult::Failed(e) => write!(f, "{e} ({ms:.1} ms)"),
            AttemptResult::Skipped => write!(f, "skipped, no endpoint available"),
            AttemptResult::NoBudget => write!(f, "not tried, retry budget exhausted"),
            AttemptResult::DeadlinePassed => write!(f, "not tried, the route's deadline passed"),
            AttemptResult::Unsuitable(why) => write!(f, "not sent, {why}"),
        }
    }
}

/// Attempts as one line: `a: connect failed: … (0.4 ms); b: 200 (3.1 ms)`.
pub fn summary(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(Attempt::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}
