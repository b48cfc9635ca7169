//! The last requests that went wrong, for the status page: the third [`Observer`], keeping
//! the last [`CAPACITY`] requests that ended with a status of 400 or more, broke off, or
//! went past their first upstream (a fallback, or a skipped upstream), newest last.
//!
//! A request that went well costs one check of its record and takes no lock; one that went
//! wrong takes this observer's lock once, to push its entry. What is kept is what the
//! access log writes, less the client's address: the request id, endpoint, route, status,
//! each attempt's upstream and outcome, the error message. Never a header or a body, and a
//! message that quotes something shaped like an API key (`sk-…`, `Bearer …`) has it cut.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::telemetry::observe::Observer;
use crate::telemetry::record::{AttemptResult, End, Ending, RequestRecord};

/// How many requests are kept.
pub const CAPACITY: usize = 50;

/// A path is kept to this many bytes (it comes from the client).
const PATH_LIMIT: usize = 200;

/// A message is kept to this many bytes.
const MESSAGE_LIMIT: usize = 500;

/// One request that went wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// When its response was over.
    pub at: SystemTime,
    pub request_id: String,
    pub method: String,
    pub path: String,
    pub endpoint: &'static str,
    /// Config line of the route taken.
    pub route_line: Option<usize>,
    pub status: u16,
    pub ending: &'static str,
    /// Each attempt's upstream and what became of it.
    pub attempts: Vec<(String, String)>,
    pub error: Option<String>,
    pub total_ms: f64,
}

/// The ring of recent errors.
#[derive(Debug)]
pub struct RecentErrors {
    ring: Mutex<VecDeque<Entry>>,
    capacity: usize,
}

impl Default for RecentErrors {
    fn default() -> Self {
        RecentErrors::with_capacity(CAPACITY)
    }
}

impl Observer for Arc<RecentErrors> {
    fn request_ended(&self, record: &RequestRecord, end: &End) {
        if went_wrong(record, end) {
            self.push(entry(record, end));
        }
    }
}

/// An error status, a broken or abandoned response, an error message, or an attempt that
/// failed before the one that answered. An upstream skipped because it is down is not
/// this request's error (the status page shows it down). A request that went well pays
/// four comparisons here.
fn went_wrong(record: &RequestRecord, end: &End) -> bool {
    record.status >= 400
        || end.ending != Ending::Complete
        || record.error.is_some()
        || record.attempts.len() > 1
            && record.attempts.iter().any(|a| {
                !matches!(
                    a.result,
                    AttemptResult::Answered(_) | AttemptResult::Skipped
                )
            })
}

/// What is kept of a request that went wrong.
fn entry(record: &RequestRecord, end: &End) -> Entry {
    Entry {
        at: SystemTime::now(),
        request_id: record.request_id.to_str().unwrap_or_default().to_string(),
        method: record.method.to_string(),
        path: cut(&record.path, PATH_LIMIT).to_string(),
        endpoint: record.endpoint,
        route_line: record.route,
        status: record.status,
        ending: end.ending.name(),
        attempts: record
            .attempts
            .iter()
            .map(|a| (a.upstream.clone(), redact(&a.outcome().to_string())))
            .collect(),
        error: record.error.as_deref().map(redact),
        total_ms: end.total.as_secs_f64() * 1000.0,
    }
}

impl RecentErrors {
    pub fn new() -> RecentErrors {
        RecentErrors::default()
    }

    pub fn with_capacity(capacity: usize) -> RecentErrors {
        RecentErrors {
            ring: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// The ring; a panic while it was held left nothing half-written that matters here.
    fn ring(&self) -> MutexGuard<'_, VecDeque<Entry>> {
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, entry: Entry) {
        if self.capacity == 0 {
            return;
        }
        let mut ring = self.ring();
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// The entries kept, newest first.
    pub fn entries(&self) -> Vec<Entry> {
        self.ring().iter().rev().cloned().collect()
    }

    /// The entries, newest first, as `/status` shows them under `recent_errors`.
    pub fn to_json(&self) -> Value {
        let entries: Vec<Value> = self
            .entries()
            .into_iter()
            .map(|e| {
                let unix_ms =
                    e.at.duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                json!({
                    "at": {
                        "unix_ms": unix_ms,
                        "utc": humantime::format_rfc3339_millis(e.at).to_string(),
                    },
                    "request_id": e.request_id,
                    "method": e.method,
                    "path": e.path,
                    "endpoint": e.endpoint,
                    "route_line": e.route_line,
                    "status": e.status,
                    "ending": e.ending,
                    "attempts": e.attempts.iter().map(|(upstream, outcome)| json!({
                        "upstream": upstream,
                        "outcome": outcome,
                    })).collect::<Vec<_>>(),
                    "error": e.error,
                    "total_ms": (e.total_ms * 10.0).round() / 10.0,
                })
            })
            .collect();
        Value::Array(entries)
    }
}

/// `text` to at most `limit` bytes, on a character boundary.
fn cut(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `text` cut to [`MESSAGE_LIMIT`], with what looks like a key after `sk-` or `Bearer `
/// replaced by `…`: an upstream's error message may quote the key it was sent.
fn redact(text: &str) -> String {
    let text = cut(text, MESSAGE_LIMIT);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let next = ["sk-", "Bearer ", "bearer "]
            .iter()
            .filter_map(|marker| rest.find(marker).map(|at| (at, marker.len())))
            .min();
        let Some((at, marker)) = next else {
            out.push_str(rest);
            return out;
        };
        let (before, after) = rest.split_at(at + marker);
        out.push_str(before);
        // Inside a word (`task-force`) it is no key.
        let in_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        if in_word {
            rest = after;
            continue;
        }
        let secret = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*' | '.')))
            .unwrap_or(after.len());
        // A full stop after the key ends the sentence.
        let secret = after[..secret].trim_end_matches('.').len();
        if secret > 0 {
            out.push('…');
        }
        rest = &after[secret..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::record::Attempt;
    use std::time::Duration;

    fn record(status: u16, attempts: Vec<Attempt>, error: Option<&str>) -> RequestRecord {
        let mut r = RequestRecord::new(
            http::HeaderValue::from_static("vg-1"),
            http::Method::POST,
            "/v1/audio/speech".into(),
            "127.0.0.1:1".parse().unwrap(),
        );
        r.status = status;
        r.endpoint = "speech";
        r.route = Some(7);
        r.attempts = attempts;
        r.error = error.map(str::to_string);
        r
    }

    fn attempt(upstream: &str, result: AttemptResult) -> Attempt {
        Attempt {
            upstream: upstream.to_string(),
            upstream_index: 0,
            result,
            elapsed: Duration::from_millis(3),
        }
    }

    fn end(ending: Ending) -> End {
        End {
            bytes_out: 0,
            ttfb: None,
            total: Duration::from_millis(12),
            ending,
        }
    }

    fn tell(recent: &Arc<RecentErrors>, record: &RequestRecord, ending: Ending) {
        recent.request_ended(record, &end(ending));
    }

    #[test]
    fn a_request_that_went_well_is_not_kept() {
        let recent = Arc::new(RecentErrors::new());
        let ok = attempt("a", AttemptResult::Answered(http::StatusCode::OK));
        tell(&recent, &record(200, vec![ok], None), Ending::Complete);
        tell(&recent, &record(204, vec![], None), Ending::Complete);
        let past_a_down_one = vec![
            attempt("down", AttemptResult::Skipped),
            attempt("b", AttemptResult::Answered(http::StatusCode::OK)),
        ];
        tell(
            &recent,
            &record(200, past_a_down_one, None),
            Ending::Complete,
        );
        assert!(recent.entries().is_empty());
    }

    #[test]
    fn errors_breaks_and_fallbacks_are_kept_newest_first() {
        let recent = Arc::new(RecentErrors::new());
        tell(
            &recent,
            &record(502, vec![], Some("all failed")),
            Ending::Complete,
        );
        let fell_back = vec![
            attempt(
                "a",
                AttemptResult::Refused {
                    status: http::StatusCode::SERVICE_UNAVAILABLE,
                    detail: Some("busy".into()),
                },
            ),
            attempt("b", AttemptResult::Answered(http::StatusCode::OK)),
        ];
        tell(&recent, &record(200, fell_back, None), Ending::Complete);
        tell(&recent, &record(200, vec![], None), Ending::UpstreamFailed);
        tell(&recent, &record(404, vec![], None), Ending::Complete);
        let entries = recent.entries();
        let statuses: Vec<u16> = entries.iter().map(|e| e.status).collect();
        assert_eq!(statuses, [404, 200, 200, 502]);
        assert_eq!(entries[1].ending, "upstream_failed_mid_body");
        assert_eq!(
            entries[2].attempts,
            [
                (
                    "a".to_string(),
                    "answered 503 \"busy\" (3.0 ms)".to_string()
                ),
                ("b".to_string(), "200 (3.0 ms)".to_string()),
            ]
        );
        assert_eq!(entries[3].error.as_deref(), Some("all failed"));
        assert_eq!(entries[3].route_line, Some(7));
        assert_eq!(entries[3].request_id, "vg-1");
    }

    #[test]
    fn the_ring_keeps_only_the_last_ones() {
        let recent = Arc::new(RecentErrors::with_capacity(3));
        for status in 500..510 {
            tell(&recent, &record(status, vec![], None), Ending::Complete);
        }
        let statuses: Vec<u16> = recent.entries().iter().map(|e| e.status).collect();
        assert_eq!(statuses, [509, 508, 507]);
        let json = recent.to_json();
        assert_eq!(json.as_array().map(Vec::len), Some(3));
        assert_eq!(json[0]["status"], 509);
        assert_eq!(json[0]["route_line"], 7);
        assert!(json[0]["at"]["unix_ms"].as_u64().is_some_and(|ms| ms > 0));
    }

    #[test]
    fn keys_quoted_in_messages_are_cut() {
        assert_eq!(
            redact("Incorrect API key provided: sk-proj-abc_123. See docs"),
            "Incorrect API key provided: sk-…. See docs"
        );
        assert_eq!(
            redact("sent Bearer abc.def and sk-x"),
            "sent Bearer … and sk-…"
        );
        assert_eq!(redact("no key here"), "no key here");
        assert_eq!(redact("a task-force"), "a task-force");
        assert_eq!(redact("ends with sk-"), "ends with sk-");
        let long = "é".repeat(400);
        assert!(redact(&long).len() <= MESSAGE_LIMIT);
        assert_eq!(cut("/v1/é", 5), "/v1/");
    }
}
