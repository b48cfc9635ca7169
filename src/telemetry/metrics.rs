//! Prometheus metrics: the second [`Observer`], told of each request once at its end, and
//! the `/metrics` page, in the Prometheus text exposition format (0.0.4) written by the
//! `prometheus-client` crate.
//!
//! Counting a request touches only atomics: the request's record carries the [`LabelTable`]
//! of the configuration it ran on and the indices of its route and upstream, which name
//! its rows, and each count is a relaxed atomic addition (no lock, no allocation, no
//! label look-up). What only a scrape needs — the pools' health, the replay memory, the
//! reload history — is read when `/metrics` is asked for, and the page is written then;
//! a scrape may allocate.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::policy::cache::CacheStats;
use crate::policy::quota::Unit;
use crate::policy::shared::SharedStatus;
use crate::telemetry::labels::{
    endpoint_slot, status_label, status_slot, Count, Counts, LabelTable, Reason, Series, AVOIDED,
    BUCKETS, CACHE_RESULTS, ENDPOINTS, OUTCOMES,
};
use crate::telemetry::observe::Observer;
use crate::telemetry::record::{AttemptResult, End, RequestRecord};
use crate::upstream::error::ErrorKind;
use crate::upstream::Upstream;

/// The `Content-Type` of the `/metrics` page.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The counters that do not depend on the configuration; the rest live in each
/// configuration's [`LabelTable`].
#[derive(Debug, Default)]
pub struct Metrics {
    bytes_in: Counts<{ ENDPOINTS.len() }>,
    bytes_out: Counts<{ ENDPOINTS.len() }>,
}

impl Observer for Arc<Metrics> {
    fn request_ended(&self, record: &RequestRecord, end: &End) {
        self.count(record, end);
    }
}

/// An attempt's `outcome` slot, whether it was sent (or a connection tried), and why it
/// was not the answer if the route may fall back on that.
fn outcome(result: &AttemptResult) -> (usize, bool, Option<Reason>) {
    let by_status = |status: http::StatusCode| match status.as_u16() {
        ..400 => 0,
        400..500 => 1,
        _ => 2,
    };
    match result {
        AttemptResult::Answered(status) => (by_status(*status), true, None),
        AttemptResult::Refused { status, .. } => (
            by_status(*status),
            true,
            Some(Reason::Status(status.as_u16())),
        ),
        AttemptResult::Failed(e) => match e.kind() {
            ErrorKind::Connect => (3, true, Some(Reason::Failure(0))),
            ErrorKind::Timeout => (4, true, Some(Reason::Failure(1))),
            ErrorKind::Reset | ErrorKind::Stale => (5, true, Some(Reason::Failure(2))),
            ErrorKind::Protocol => (6, true, Some(Reason::Failure(3))),
            ErrorKind::Internal => (7, true, None),
        },
        AttemptResult::Skipped => (8, false, None),
        AttemptResult::NoBudget => (9, false, None),
        AttemptResult::DeadlinePassed => (10, false, None),
        AttemptResult::Unsuitable(_) => (11, false, None),
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Counts one finished request into the rows its record names.
    fn count(&self, record: &RequestRecord, end: &End) {
        let endpoint = endpoint_slot(record.endpoint);
        self.bytes_in.add(endpoint, record.bytes_in);
        self.bytes_out.add(endpoint, end.bytes_out);
        let Some(table) = record.labels.as_deref() else {
            return;
        };
        let route = record.route_index.map(|r| r as usize);
        let upstream = record.upstream_index.map(|u| u as usize);
        let row = table.request_row(endpoint, route, upstream);
        if let Some(requests) = row.and_then(|r| table.requests.get(r)) {
            requests.add(status_slot(record.status), 1);
        }
        if let Some(timings) = table.timings.get(table.timings_row(endpoint, upstream)) {
            timings.duration.observe(end.total);
            if let Some(ttfb) = end.ttfb {
                timings.ttfb.observe(ttfb);
            }
        }
        // A fallback goes from an attempt that failed in a way the route falls back on to
        // the next upstream actually tried (skipped ones are passed over).
        let mut failed: Option<(usize, Reason)> = None;
        for attempt in &record.attempts {
            let at = attempt.upstream_index as usize;
            let (slot, tried, reason) = outcome(&attempt.result);
            if let Some(counts) = table.attempts.get(at) {
                counts.add(slot, 1);
            }
            if !tried {
                continue;
            }
            if let (Some((from, why)), Some(route)) = (failed, route) {
                let row = table.fallback_row(route, from, at, why);
                if let Some(count) = row.and_then(|r| table.fallbacks.get(r)) {
                    count.add(1);
                }
            }
            failed = reason.map(|why| (at, why));
        }
        if let Some(u) = upstream.filter(|_| (200..300).contains(&record.status)) {
            let units = match endpoint {
                0 => table.tts_characters.get(u),
                1 | 2 => table.stt_audio_bytes.get(u),
                _ => None,
            };
            if let Some(units) = units {
                units.add(record.billed_units);
            }
        }
        let row = table.model_row(endpoint, record.model.as_deref());
        if let Some(count) = table.model_requests.get(row) {
            count.add(1);
        }
        self.count_policy(table, record, upstream);
    }

    /// Costs, savings, the cache's verdicts and refusals by limits.
    fn count_policy(&self, table: &LabelTable, record: &RequestRecord, upstream: Option<usize>) {
        let client = table.client_slot(record.caller.as_ref().map(|(_, i)| *i));
        if let Some(u) = upstream.filter(|_| record.cost_nanos > 0) {
            let row = u * table.clients.len() + client;
            if let Some(count) = table.costs.get(row) {
                count.add(record.cost_nanos);
            }
        }
        if let Some((nanos, reason)) = record.avoided {
            let slot = AVOIDED.iter().position(|r| *r == reason);
            if let Some(count) = slot.and_then(|s| table.avoided.get(s)) {
                count.add(nanos);
            }
        }
        if let Some(result) = record.cache {
            let slot = CACHE_RESULTS.iter().position(|r| *r == result);
            if let Some(count) = slot.and_then(|s| table.cache_results.get(s)) {
                count.add(1);
            }
        }
        if let Some(unit) = record.limited {
            let row = client * Unit::ALL.len() + unit as usize;
            if let Some(count) = table.limited.get(row) {
                count.add(1);
            }
        }
    }

    /// The `/metrics` page: every family, with the configuration serving now (`table`,
    /// `upstreams`) and the process's state as `state` says.
    pub fn render(
        &self,
        table: &Arc<LabelTable>,
        upstreams: &[Arc<Upstream>],
        state: State,
    ) -> String {
        let pools = upstreams
            .iter()
            .flat_map(|u| {
                let pool = &u.pool;
                (0..pool.endpoints.len()).map(move |i| {
                    let (up, ejected) = pool.health(i);
                    PoolGauge {
                        upstream: u.name().to_string(),
                        endpoint: pool.endpoints[i].url.to_string(),
                        up,
                        ejected,
                    }
                })
            })
            .collect();
        let page = Page {
            table: table.clone(),
            bytes_in: self.bytes_in.values(),
            bytes_out: self.bytes_out.values(),
            pools,
            state,
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(page));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry);
        text
    }
}

/// What a scrape reads from the process beside the counters.
#[derive(Debug, Clone)]
pub struct State {
    /// Requests admitted and not yet answered (what `max_in_flight` limits).
    pub in_flight: usize,
    /// Request bytes held in memory for replay now.
    pub replay_memory: u64,
    /// Request bytes written to spill files since start.
    pub spilled: u64,
    pub reloads_succeeded: u64,
    pub reloads_failed: u64,
    /// When the configuration serving now was loaded.
    pub loaded_at: SystemTime,
    /// The TTS cache's tiers, when one is configured.
    pub cache: Option<CacheStats>,
    /// The shared state (Redis), when configured.
    pub shared: Option<SharedStatus>,
}

/// One pool endpoint's health as a scrape found it.
#[derive(Debug)]
struct PoolGauge {
    upstream: String,
    endpoint: String,
    up: bool,
    ejected: bool,
}

/// Everything one scrape writes; handed to the registry whole.
#[derive(Debug)]
struct Page {
    table: Arc<LabelTable>,
    bytes_in: [u64; ENDPOINTS.len()],
    bytes_out: [u64; ENDPOINTS.len()],
    pools: Vec<PoolGauge>,
    state: State,
}

type Fmt = Result<(), std::fmt::Error>;

/// A counter family: one sample per label set given.
fn counters<'a, const K: usize, V: EncodeCounterValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    names: [&str; K],
    samples: impl IntoIterator<Item = ([&'a str; K], V)>,
) -> Fmt {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (values, value) in samples {
        let labels: [(&str, &str); K] = std::array::from_fn(|i| (names[i], values[i]));
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, V, u64>(&value, None)?;
    }
    Ok(())
}

/// Nano-dollars as dollars.
fn dollars(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

/// A gauge family: one sample per label set given.
fn gauges<'a, const K: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    names: [&str; K],
    samples: impl IntoIterator<Item = ([&'a str; K], f64)>,
) -> Fmt {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (values, value) in samples {
        let labels: [(&str, &str); K] = std::array::from_fn(|i| (names[i], values[i]));
        encode_gauge(&mut family.encode_family(&labels)?, value)?;
    }
    Ok(())
}

fn encode_gauge(metric: &mut MetricEncoder, value: f64) -> Fmt {
    metric.encode_gauge(&value)
}

/// One unlabelled gauge.
fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> Fmt {
    encode_gauge(
        &mut encoder.encode_descriptor(name, help, None, MetricType::Gauge)?,
        value,
    )
}

/// One unlabelled counter.
fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Fmt {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, u64, u64>(&value, None)
}

/// A per-upstream counter's samples, zeros included.
fn per_upstream(series: &Series<Count>) -> impl Iterator<Item = ([&str; 1], u64)> {
    series
        .0
        .iter()
        .map(|r| ([r.labels[0].as_str()], r.cells.get()))
}

fn row_labels<const K: usize>(labels: &[String]) -> [&str; K] {
    std::array::from_fn(|i| labels.get(i).map_or("", String::as_str))
}

fn histograms<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (&'a [String], ([u64; 16], f64))>,
) -> Fmt {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, (counts, sum)) in rows {
        let count: u64 = counts.iter().sum();
        if count == 0 {
            continue;
        }
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts)
            .collect();
        let [endpoint, upstream] = row_labels::<2>(labels);
        let labels = [("endpoint", endpoint), ("upstream", upstream)];
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Collector for Page {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Fmt {
        let e = &mut encoder;
        let t = &*self.table;
        let mut requests = Vec::new();
        for row in &t.requests.0 {
            let values = row.cells.values();
            for (slot, &n) in values.iter().enumerate().filter(|(_, &n)| n > 0) {
                requests.push((row_labels::<3>(&row.labels), status_label(slot), n));
            }
        }
        counters(
            e,
            "voxgate_requests",
            "Requests answered, by endpoint, route (its config line), the upstream that answered (or none) and status.",
            ["endpoint", "route", "upstream", "status"],
            requests
                .iter()
                .map(|([a, b, c], status, n)| ([*a, *b, *c, status.as_str()], *n)),
        )?;
        let attempts = t.attempts.0.iter().flat_map(|row| {
            let values = row.cells.values();
            let upstream = row.labels[0].as_str();
            (0..OUTCOMES.len())
                .filter(move |&o| values[o] > 0)
                .map(move |o| ([upstream, OUTCOMES[o]], values[o]))
        });
        counters(
            e,
            "voxgate_upstream_attempts",
            "Attempts at upstreams, by upstream and outcome.",
            ["upstream", "outcome"],
            attempts,
        )?;
        let fallbacks = t.fallbacks.0.iter().filter_map(|row| {
            let n = row.cells.get();
            (n > 0).then(|| (row_labels::<4>(&row.labels), n))
        });
        counters(
            e,
            "voxgate_fallbacks",
            "Requests sent on to the next upstream of their route, by route, from, to and reason.",
            ["route", "from", "to", "reason"],
            fallbacks,
        )?;
        histograms(
            e,
            "voxgate_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by endpoint and upstream.",
            t.timings
                .0
                .iter()
                .map(|r| (r.labels.as_slice(), r.cells.duration.read())),
        )?;
        histograms(
            e,
            "voxgate_ttfb_seconds",
            "Time from a request's arrival to the first byte of its response body, by endpoint and upstream.",
            t.timings
                .0
                .iter()
                .map(|r| (r.labels.as_slice(), r.cells.ttfb.read())),
        )?;
        gauges(
            e,
            "voxgate_upstream_up",
            "1 while an upstream endpoint's health checks hold it up (always, without checks), else 0.",
            ["upstream", "endpoint"],
            self.pools.iter().map(|p| {
                ([p.upstream.as_str(), p.endpoint.as_str()], f64::from(u8::from(p.up)))
            }),
        )?;
        gauges(
            e,
            "voxgate_upstream_ejected",
            "1 while an upstream endpoint is ejected for failing requests in a row, else 0.",
            ["upstream", "endpoint"],
            self.pools.iter().map(|p| {
                (
                    [p.upstream.as_str(), p.endpoint.as_str()],
                    f64::from(u8::from(p.ejected)),
                )
            }),
        )?;
        let s = &self.state;
        gauge(
            e,
            "voxgate_in_flight_requests",
            "Requests admitted and not yet answered (what server.max_in_flight limits).",
            s.in_flight as f64,
        )?;
        let by_endpoint = |bytes: &[u64; ENDPOINTS.len()]| {
            let bytes = *bytes;
            (0..ENDPOINTS.len()).map(move |i| ([ENDPOINTS[i]], bytes[i]))
        };
        counters(
            e,
            "voxgate_bytes_in",
            "Request body bytes read from clients, by endpoint.",
            ["endpoint"],
            by_endpoint(&self.bytes_in),
        )?;
        counters(
            e,
            "voxgate_bytes_out",
            "Response body bytes sent to clients, by endpoint.",
            ["endpoint"],
            by_endpoint(&self.bytes_out),
        )?;
        gauge(
            e,
            "voxgate_replay_memory_bytes",
            "Request body bytes held in memory for replay now.",
            s.replay_memory as f64,
        )?;
        counter(
            e,
            "voxgate_spilled_bytes",
            "Request body bytes written to spill files.",
            s.spilled,
        )?;
        counters(
            e,
            "voxgate_tts_characters",
            "Characters (Unicode scalar values) of the speech input served with a 2xx, by the upstream that served it.",
            ["upstream"],
            per_upstream(&t.tts_characters),
        )?;
        counters(
            e,
            "voxgate_stt_audio_bytes",
            "Bytes of uploaded audio files transcribed or translated with a 2xx, by the upstream that served them.",
            ["upstream"],
            per_upstream(&t.stt_audio_bytes),
        )?;
        let models = t.model_requests.0.iter().filter_map(|row| {
            let n = row.cells.get();
            (n > 0).then(|| (row_labels::<2>(&row.labels), n))
        });
        counters(
            e,
            "voxgate_model_requests",
            "Requests by endpoint and model: a model the configuration names, else other (none without one).",
            ["endpoint", "model"],
            models,
        )?;
        counters(
            e,
            "voxgate_config_reloads",
            "Configuration reloads, by result.",
            ["result"],
            [
                (["success"], s.reloads_succeeded),
                (["failure"], s.reloads_failed),
            ],
        )?;
        gauge(
            e,
            "voxgate_config_loaded_timestamp_seconds",
            "When the configuration serving now was loaded, in seconds since the Unix epoch.",
            unix_seconds(s.loaded_at),
        )?;
        let costs = t.costs.0.iter().filter_map(|row| {
            let n = row.cells.get();
            (n > 0).then(|| (row_labels::<2>(&row.labels), dollars(n)))
        });
        counters(
            e,
            "voxgate_estimated_cost",
            "Estimated charges of priced upstreams in US dollars, by upstream and client (anonymous without [[clients]]).",
            ["upstream", "client"],
            costs,
        )?;
        counters(
            e,
            "voxgate_cost_avoided",
            "Estimated charges in US dollars the route's priced upstream would have made for requests served by a local upstream or from the cache instead, by reason.",
            ["reason"],
            t.avoided
                .0
                .iter()
                .map(|r| ([r.labels[0].as_str()], dollars(r.cells.get()))),
        )?;
        counters(
            e,
            "voxgate_cache_requests",
            "Speech requests by what the TTS cache made of them (x-voxgate-cache).",
            ["result"],
            t.cache_results
                .0
                .iter()
                .map(|r| ([r.labels[0].as_str()], r.cells.get())),
        )?;
        let limited = t.limited.0.iter().filter_map(|row| {
            let n = row.cells.get();
            (n > 0).then(|| (row_labels::<2>(&row.labels), n))
        });
        counters(
            e,
            "voxgate_rate_limited",
            "Requests refused with 429 by a rate limit, by client and unit.",
            ["client", "unit"],
            limited,
        )?;
        if let Some(cache) = &s.cache {
            gauges(
                e,
                "voxgate_cache_bytes",
                "Bytes of speech held by the TTS cache, by tier.",
                ["tier"],
                [
                    (["memory"], cache.memory_bytes as f64),
                    (["disk"], cache.disk_bytes as f64),
                ],
            )?;
            gauges(
                e,
                "voxgate_cache_entries",
                "Answers held by the TTS cache, by tier.",
                ["tier"],
                [
                    (["memory"], cache.memory_entries as f64),
                    (["disk"], cache.disk_entries as f64),
                ],
            )?;
        }
        if let Some(shared) = &s.shared {
            gauge(
                e,
                "voxgate_shared_up",
                "1 while the shared state (Redis of [shared]) answers, else 0: limits and cache are local meanwhile.",
                f64::from(u8::from(shared.up)),
            )?;
            counter(
                e,
                "voxgate_shared_outages",
                "Times the shared state became unavailable.",
                shared.outages,
            )?;
            counter(
                e,
                "voxgate_shared_fallbacks",
                "Limit checks and cache lookups that used local state because the shared state was unavailable or too slow.",
                shared.fallbacks,
            )?;
        }
        gauges(
            e,
            "voxgate_build_info",
            "1, labelled with voxgate's version.",
            ["version"],
            [([env!("CARGO_PKG_VERSION")], 1.0)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::telemetry::labels::status_slot;
    use crate::telemetry::record::{Attempt, Ending};
    use crate::upstream::error::UpstreamError;
    use std::time::Duration;

    fn attempt(upstream_index: u32, result: AttemptResult) -> Attempt {
        Attempt {
            upstream: String::new(),
            upstream_index,
            result,
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn a_fallback_passes_over_skipped_upstreams_to_the_next_one_tried() {
        let toml = "[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n\
            [upstreams.b]\nurl = \"http://127.0.0.1:2\"\n\
            [upstreams.c]\nurl = \"http://127.0.0.1:3\"\n\
            [[routes]]\nto = [\"a\", \"b\", \"c\"]\n";
        let config = Config::from_toml_with_env(toml, "t", &|_| None).unwrap();
        let table = Arc::new(LabelTable::compile(&config, None));
        let mut record = RequestRecord::new(
            http::HeaderValue::from_static("id"),
            http::Method::POST,
            "/v1/audio/speech".into(),
            "127.0.0.1:1".parse().unwrap(),
        );
        record.endpoint = "speech";
        record.labels = Some(table.clone());
        record.route_index = Some(0);
        record.upstream_index = Some(2);
        record.status = 200;
        record.billed_units = 5;
        record.attempts = vec![
            attempt(
                0,
                AttemptResult::Failed(UpstreamError::new(ErrorKind::Connect, "refused")),
            ),
            attempt(1, AttemptResult::Skipped),
            attempt(2, AttemptResult::Answered(http::StatusCode::OK)),
        ];
        let end = End {
            bytes_out: 3,
            ttfb: Some(Duration::from_millis(2)),
            total: Duration::from_millis(3),
            ending: Ending::Complete,
        };
        Metrics::new().count(&record, &end);

        let fallback = |from, to, reason| {
            let row = table.fallback_row(0, from, to, reason).unwrap();
            table.fallbacks.get(row).unwrap().get()
        };
        assert_eq!(fallback(0, 2, Reason::Failure(0)), 1, "a to c, on connect");
        assert_eq!(fallback(0, 1, Reason::Failure(0)), 0, "b was not tried");
        assert_eq!(fallback(1, 2, Reason::Failure(0)), 0);
        let attempts = |u: usize| table.attempts.get(u).unwrap().values();
        assert_eq!(attempts(0)[3], 1, "connect");
        assert_eq!(attempts(1)[8], 1, "skipped");
        assert_eq!(attempts(2)[0], 1, "ok");
        let row = table.request_row(0, Some(0), Some(2)).unwrap();
        assert_eq!(
            table.requests.get(row).unwrap().values()[status_slot(200)],
            1
        );
        assert_eq!(table.tts_characters.get(2).unwrap().get(), 5);
        assert_eq!(table.tts_characters.get(0).unwrap().get(), 0);
        let timings = table.timings.get(table.timings_row(0, Some(2))).unwrap();
        assert_eq!(timings.duration.read().0.iter().sum::<u64>(), 1);
        assert_eq!(timings.ttfb.read().0[1], 1, "2 ms is in le=0.0025");
    }

    #[test]
    fn every_outcome_has_its_own_label() {
        let results = [
            AttemptResult::Answered(http::StatusCode::OK),
            AttemptResult::Answered(http::StatusCode::BAD_REQUEST),
            AttemptResult::Answered(http::StatusCode::SERVICE_UNAVAILABLE),
            AttemptResult::Failed(UpstreamError::new(ErrorKind::Connect, "x")),
            AttemptResult::Failed(UpstreamError::new(ErrorKind::Timeout, "x")),
            AttemptResult::Failed(UpstreamError::new(ErrorKind::Reset, "x")),
            AttemptResult::Failed(UpstreamError::new(ErrorKind::Protocol, "x")),
            AttemptResult::Failed(UpstreamError::new(ErrorKind::Internal, "x")),
            AttemptResult::Skipped,
            AttemptResult::NoBudget,
            AttemptResult::DeadlinePassed,
            AttemptResult::Unsuitable("x".into()),
        ];
        let slots: Vec<usize> = results.iter().map(|r| outcome(r).0).collect();
        assert_eq!(slots, (0..OUTCOMES.len()).collect::<Vec<_>>());
        let refused = AttemptResult::Refused {
            status: http::StatusCode::TOO_MANY_REQUESTS,
            detail: None,
        };
        assert_eq!(outcome(&refused), (1, true, Some(Reason::Status(429))));
        let stale = AttemptResult::Failed(UpstreamError::new(ErrorKind::Stale, "x"));
        assert_eq!(outcome(&stale), (5, true, Some(Reason::Failure(2))));
    }
}
