//! The metrics' label sets, resolved once per compiled configuration: a [`LabelTable`]
//! holds one row of counters for every label set the configuration can produce — route ×
//! upstream × endpoint for requests, upstream × outcome for attempts, route × from × to ×
//! reason for fallbacks, … — so that counting a request is arithmetic on indices it already
//! carries (the route's, the upstream's) and a few relaxed atomic additions: no lock, no
//! allocation, no hashing.
//!
//! A reload compiles a new table beside the old one ([`LabelTable::compile`]); a row whose
//! label set the new configuration still has is the *same* row (its counters are shared
//! through an `Arc`), so counters never go backwards across reloads, and requests still
//! running on the old configuration count into the rows the scrape reads. Rows of label
//! sets the new configuration lost go with the last request that uses the old table.
//!
//! Label values come from the configuration alone (route lines, upstream names and URLs,
//! model names it lists) or from fixed lists here (endpoints, statuses, outcomes): a
//! client can make no new label value.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::policy::quota::Unit;
use crate::route::FieldValue;

/// The `endpoint` label's values. `admin` is every request that is not an API operation:
/// voxgate's own endpoints, discovery, and requests refused before they were classified.
pub const ENDPOINTS: [&str; 5] = ["speech", "transcriptions", "translations", "other", "admin"];
pub const ADMIN: usize = 4;

/// The slot of a record's endpoint name (`Operation::name`, or `none` before classify).
pub fn endpoint_slot(name: &str) -> usize {
    match name {
        "speech" => 0,
        "transcriptions" => 1,
        "translations" => 2,
        "other" => 3,
        _ => ADMIN,
    }
}

/// Statuses counted under their own code; any other is counted under its class.
const CODES: [u16; 39] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 402, 403, 404, 405, 406, 408, 409,
    410, 411, 413, 414, 415, 416, 422, 424, 425, 429, 431, 499, 500, 501, 502, 503, 504, 505, 507,
    529,
];
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
/// Status slots of one request row: every code of [`CODES`], then [`CLASSES`].
pub const STATUS_SLOTS: usize = CODES.len() + CLASSES.len();

/// Status code → slot, for every code up to 599.
const SLOT_OF: [u8; 600] = {
    let mut table = [(STATUS_SLOTS - 1) as u8; 600];
    let mut code = 100;
    while code < 600 {
        table[code] = (CODES.len() + code / 100 - 1) as u8;
        code += 1;
    }
    let mut i = 0;
    while i < CODES.len() {
        table[CODES[i] as usize] = i as u8;
        i += 1;
    }
    table
};

pub fn status_slot(status: u16) -> usize {
    SLOT_OF
        .get(status as usize)
        .map_or(STATUS_SLOTS - 1, |&s| s as usize)
}

/// The `status` label of a slot: the code, or its class (`4xx`) for a code not listed.
pub fn status_label(slot: usize) -> String {
    match CODES.get(slot) {
        Some(code) => code.to_string(),
        None => CLASSES[slot - CODES.len()].to_string(),
    }
}

/// The `outcome` label's values for an attempt at an upstream.
pub const OUTCOMES: [&str; 12] = [
    "ok",
    "status_4xx",
    "status_5xx",
    "connect",
    "timeout",
    "reset",
    "protocol",
    "internal",
    "skipped",
    "no_budget",
    "deadline",
    "unsuitable",
];

/// Why a fallback happened, besides `status_<code>` for the route's `fallback_on` codes.
pub const FAILURE_REASONS: [&str; 4] = ["connect", "timeout", "reset", "protocol"];

/// Histogram bucket bounds, in seconds: 1 ms to 60 s.
pub const BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const BUCKET_MICROS: [u64; 15] = {
    let mut micros = [0; 15];
    let mut i = 0;
    while i < BUCKETS.len() {
        micros[i] = (BUCKETS[i] * 1e6) as u64;
        i += 1;
    }
    micros
};

/// A counter: one relaxed atomic.
#[derive(Debug, Default)]
pub struct Count(AtomicU64);

impl Count {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters indexed by a fixed slot list (statuses, outcomes).
#[derive(Debug)]
pub struct Counts<const N: usize>([AtomicU64; N]);

impl<const N: usize> Default for Counts<N> {
    fn default() -> Self {
        Counts(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl<const N: usize> Counts<N> {
    pub fn add(&self, slot: usize, n: u64) {
        if let Some(cell) = self.0.get(slot) {
            cell.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Each slot's count, in slot order.
    pub fn values(&self) -> [u64; N] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// A latency histogram over [`BUCKETS`] (plus one for what is over the last), with the sum
/// in microseconds. Its count is the sum of its buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: Counts<16>,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, time: Duration) {
        let micros = u64::try_from(time.as_micros()).unwrap_or(u64::MAX);
        // The first bucket whose bound is not below the time; past the last, the +Inf one.
        let slot = BUCKET_MICROS.partition_point(|&bound| bound < micros);
        self.buckets.add(slot, 1);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative; the last is over 60 s) and the sum in seconds.
    pub fn read(&self) -> ([u64; 16], f64) {
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (self.buckets.values(), sum)
    }
}

/// The request duration and time-to-first-byte histograms of one endpoint × upstream.
#[derive(Debug, Default)]
pub struct Timings {
    pub duration: Histogram,
    pub ttfb: Histogram,
}

/// One label set's values and its counters, shared with every table that has the same
/// label set.
#[derive(Debug)]
pub struct Row<T> {
    pub labels: Vec<String>,
    pub cells: Arc<T>,
}

/// Rows in index order.
#[derive(Debug)]
pub struct Series<T>(pub Vec<Row<T>>);

impl<T: Default> Series<T> {
    /// A row per label set of `keys`, in order, each taking over the counters `old` had
    /// for the same label set.
    fn carry(old: Option<&Series<T>>, keys: impl IntoIterator<Item = Vec<String>>) -> Series<T> {
        let previous: HashMap<&[String], &Arc<T>> = old
            .map(|o| {
                o.0.iter()
                    .map(|r| (r.labels.as_slice(), &r.cells))
                    .collect()
            })
            .unwrap_or_default();
        let rows = keys
            .into_iter()
            .map(|labels| Row {
                cells: previous
                    .get(labels.as_slice())
                    .map_or_else(Arc::default, |&cells| cells.clone()),
                labels,
            })
            .collect();
        Series(rows)
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.0.get(index).map(|r| &*r.cells)
    }
}

/// Where one route's rows are.
#[derive(Debug)]
pub struct RouteRows {
    /// The `route` label: the route's `name`, else `line:N`.
    pub label: String,
    /// The route's upstreams (indices into the configuration's), in order.
    pub to: Vec<usize>,
    /// Its first request pair: one per upstream, then one for no upstream.
    pair_base: usize,
    /// Its first fallback row: from × to (earlier × later upstream) × reason.
    fallback_base: usize,
    /// The `fallback_on` statuses, each a reason after [`FAILURE_REASONS`].
    statuses: Vec<u16>,
}

impl RouteRows {
    fn reasons(&self) -> usize {
        FAILURE_REASONS.len() + self.statuses.len()
    }

    /// The slot of a failure reason or status among this route's reasons.
    pub fn reason_slot(&self, reason: Reason) -> Option<usize> {
        match reason {
            Reason::Failure(i) => Some(i),
            Reason::Status(code) => self
                .statuses
                .iter()
                .position(|&s| s == code)
                .map(|i| FAILURE_REASONS.len() + i),
        }
    }
}

/// Why an attempt was not the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// An index into [`FAILURE_REASONS`].
    Failure(usize),
    /// A status the route falls back on.
    Status(u16),
}

/// Every label set one compiled configuration can produce, each with its counters.
#[derive(Debug)]
pub struct LabelTable {
    /// Per route, in the router's order.
    pub routes: Vec<RouteRows>,
    /// The upstreams' names, in the configuration's order.
    pub upstreams: Vec<String>,
    /// Request pairs: 0 is no route and no upstream, then each route's ([`RouteRows`]).
    pairs: usize,
    /// `voxgate_requests_total`: endpoint × pair, counts by status slot.
    pub requests: Series<Counts<STATUS_SLOTS>>,
    /// `voxgate_request_duration_seconds` and `voxgate_ttfb_seconds`: endpoint ×
    /// (upstream, then none).
    pub timings: Series<Timings>,
    /// `voxgate_upstream_attempts_total`: per upstream, counts by outcome.
    pub attempts: Series<Counts<{ OUTCOMES.len() }>>,
    /// `voxgate_fallbacks_total`: the routes' rows one after another.
    pub fallbacks: Series<Count>,
    /// `voxgate_tts_characters_total` and `voxgate_stt_audio_bytes_total`: per upstream.
    pub tts_characters: Series<Count>,
    pub stt_audio_bytes: Series<Count>,
    /// Model names the configuration knows, sorted; then `other` and `none`.
    models: Vec<String>,
    /// `voxgate_model_requests_total`: endpoint × model.
    pub model_requests: Series<Count>,
    /// The configured clients' names, then `anonymous` (no `[[clients]]`).
    pub clients: Vec<String>,
    /// `voxgate_estimated_cost_total`: upstream × client, in nano-dollars.
    pub costs: Series<Count>,
    /// `voxgate_cost_avoided_total`: by [`AVOIDED`] reason, in nano-dollars.
    pub avoided: Series<Count>,
    /// `voxgate_cache_requests_total`: by [`CACHE_RESULTS`].
    pub cache_results: Series<Count>,
    /// `voxgate_rate_limited_total`: client × unit (`Unit::ALL`, by its `name`).
    pub limited: Series<Count>,
}

/// Why a request cost less than the route's priced upstream would have charged.
pub const AVOIDED: [&str; 2] = ["local", "cache"];
/// What the TTS cache made of a speech request (`x-voxgate-cache`).
pub const CACHE_RESULTS: [&str; 3] = ["hit", "miss", "bypass"];
/// The `client` label of requests from no configured client.
pub const ANONYMOUS: &str = "anonymous";

/// Model names a configuration mentions: route matches and `set`s, upstream model maps
/// (both sides) and the models an upstream lists.
fn known_models(config: &Config) -> Vec<String> {
    let mut models: Vec<String> = Vec::new();
    for route in &config.routes {
        if let Some(pattern) = &route.matcher.model {
            models.extend(pattern.literals().map(str::to_string));
        }
        for (key, value) in &route.set {
            if key == "model" {
                if let FieldValue::String(s) = value {
                    models.push(s.clone());
                }
            }
        }
    }
    for upstream in &config.upstreams {
        for (from, to) in &upstream.model_map {
            models.push(from.clone());
            models.push(to.clone());
        }
        models.extend(upstream.dialect.models.iter().cloned());
    }
    models.retain(|m| m != "other" && m != "none");
    models.sort();
    models.dedup();
    models
}

impl LabelTable {
    /// The rows of `config`, sharing the counters of `old`'s rows with the same labels.
    pub fn compile(config: &Config, old: Option<&LabelTable>) -> LabelTable {
        let upstreams: Vec<String> = config.upstreams.iter().map(|u| u.name.clone()).collect();
        let mut routes = Vec::with_capacity(config.routes.len());
        let (mut pairs, mut fallbacks) = (1, 0);
        for route in &config.routes {
            let rows = RouteRows {
                label: route.label(),
                to: route.to.clone(),
                pair_base: pairs,
                fallback_base: fallbacks,
                statuses: route.fallback.statuses.clone(),
            };
            let n = rows.to.len();
            pairs += n + 1;
            fallbacks += n * n.saturating_sub(1) / 2 * rows.reasons();
            routes.push(rows);
        }
        // The label values of each request pair, in pair order.
        let mut pair_labels = vec![("none".to_string(), "none".to_string())];
        for route in &routes {
            for &u in &route.to {
                pair_labels.push((route.label.clone(), upstreams[u].clone()));
            }
            pair_labels.push((route.label.clone(), "none".to_string()));
        }
        let requests = ENDPOINTS.iter().flat_map(|e| {
            pair_labels
                .iter()
                .map(|(r, u)| vec![e.to_string(), r.clone(), u.clone()])
        });
        let upstream_or_none: Vec<&str> = upstreams
            .iter()
            .map(String::as_str)
            .chain(["none"])
            .collect();
        let timings = ENDPOINTS.iter().flat_map(|e| {
            upstream_or_none
                .iter()
                .map(|u| vec![e.to_string(), u.to_string()])
        });
        let per_upstream = || upstreams.iter().map(|u| vec![u.clone()]);
        let mut fallback_labels = Vec::with_capacity(fallbacks);
        for route in &routes {
            for (i, &from) in route.to.iter().enumerate() {
                for &to in &route.to[i + 1..] {
                    let reasons = FAILURE_REASONS
                        .iter()
                        .map(|r| r.to_string())
                        .chain(route.statuses.iter().map(|s| format!("status_{s}")));
                    for reason in reasons {
                        fallback_labels.push(vec![
                            route.label.clone(),
                            upstreams[from].clone(),
                            upstreams[to].clone(),
                            reason,
                        ]);
                    }
                }
            }
        }
        let mut models = known_models(config);
        let model_labels: Vec<Vec<String>> = ENDPOINTS
            .iter()
            .flat_map(|e| {
                models
                    .iter()
                    .map(String::as_str)
                    .chain(["other", "none"])
                    .map(|m| vec![e.to_string(), m.to_string()])
                    .collect::<Vec<_>>()
            })
            .collect();
        models.shrink_to_fit();
        let clients: Vec<String> = config
            .clients
            .iter()
            .map(|c| c.name.clone())
            .chain([ANONYMOUS.to_string()])
            .collect();
        let cost_labels = upstreams
            .iter()
            .flat_map(|u| clients.iter().map(move |c| vec![u.clone(), c.clone()]));
        let limited_labels = clients
            .iter()
            .flat_map(|c| Unit::ALL.map(|u| vec![c.clone(), u.name().to_string()]));
        let fixed = |values: &[&str]| {
            values
                .iter()
                .map(|v| vec![v.to_string()])
                .collect::<Vec<_>>()
        };
        LabelTable {
            costs: Series::carry(old.map(|o| &o.costs), cost_labels),
            avoided: Series::carry(old.map(|o| &o.avoided), fixed(&AVOIDED)),
            cache_results: Series::carry(old.map(|o| &o.cache_results), fixed(&CACHE_RESULTS)),
            limited: Series::carry(old.map(|o| &o.limited), limited_labels),
            clients,
            requests: Series::carry(old.map(|o| &o.requests), requests),
            timings: Series::carry(old.map(|o| &o.timings), timings),
            attempts: Series::carry(old.map(|o| &o.attempts), per_upstream()),
            fallbacks: Series::carry(old.map(|o| &o.fallbacks), fallback_labels),
            tts_characters: Series::carry(old.map(|o| &o.tts_characters), per_upstream()),
            stt_audio_bytes: Series::carry(old.map(|o| &o.stt_audio_bytes), per_upstream()),
            model_requests: Series::carry(old.map(|o| &o.model_requests), model_labels),
            routes,
            upstreams,
            pairs,
            models,
        }
    }

    /// The request row of `endpoint` (a slot), route `route` and upstream `upstream`
    /// (indices of the configuration), either of them absent.
    pub fn request_row(
        &self,
        endpoint: usize,
        route: Option<usize>,
        upstream: Option<usize>,
    ) -> Option<usize> {
        let pair = match route {
            None => 0,
            Some(r) => {
                let rows = self.routes.get(r)?;
                let at = match upstream {
                    Some(u) => rows.to.iter().position(|&t| t == u)?,
                    None => rows.to.len(),
                };
                rows.pair_base + at
            }
        };
        Some(endpoint * self.pairs + pair)
    }

    /// The timings row of `endpoint` and `upstream`, or of no upstream.
    pub fn timings_row(&self, endpoint: usize, upstream: Option<usize>) -> usize {
        let width = self.upstreams.len() + 1;
        endpoint * width + upstream.filter(|&u| u < width - 1).unwrap_or(width - 1)
    }

    /// The fallback row of route `route` from upstream `from` to upstream `to` (indices
    /// of the configuration), for `reason`.
    pub fn fallback_row(
        &self,
        route: usize,
        from: usize,
        to: usize,
        reason: Reason,
    ) -> Option<usize> {
        let rows = self.routes.get(route)?;
        let n = rows.to.len();
        let i = rows.to.iter().position(|&t| t == from)?;
        let j = i + 1 + rows.to[i + 1..].iter().position(|&t| t == to)?;
        // Pairs (i, j) with i < j, in order: those of every earlier i, then j's place.
        let pair = i * (2 * n - i - 1) / 2 + (j - i - 1);
        Some(rows.fallback_base + pair * rows.reasons() + rows.reason_slot(reason)?)
    }

    /// The client slot of a request: its client's index, else `anonymous`.
    pub fn client_slot(&self, caller: Option<u32>) -> usize {
        let anonymous = self.clients.len() - 1;
        caller.map_or(anonymous, |c| (c as usize).min(anonymous))
    }

    /// The model row of `endpoint` for a request's `model`: the model's own when the
    /// configuration names it, else `other`; `none` without a model.
    pub fn model_row(&self, endpoint: usize, model: Option<&str>) -> usize {
        let known = self.models.len();
        let slot = match model {
            None => known + 1,
            Some(m) => self
                .models
                .binary_search_by(|k| k.as_str().cmp(m))
                .unwrap_or(known),
        };
        endpoint * (known + 2) + slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(toml: &str) -> LabelTable {
        let config = Config::from_toml_with_env(toml, "t", &|_| None).unwrap();
        LabelTable::compile(&config, None)
    }

    const TWO_ROUTES: &str = "[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n\
        [upstreams.b]\nurl = \"http://127.0.0.1:2\"\nmodel_map = { kokoro = \"tts-1\" }\n\
        [upstreams.c]\nurl = \"http://127.0.0.1:3\"\n\
        [[routes]]\nmatch = { model = [\"m1\", \"m*\"] }\nto = [\"a\", \"b\", \"c\"]\nfallback_on = [\"connect\", 503]\n\
        [[routes]]\nto = [\"c\"]\n";

    #[test]
    fn every_status_has_a_slot_and_unlisted_ones_their_class() {
        assert_eq!(status_label(status_slot(200)), "200");
        assert_eq!(status_label(status_slot(499)), "499");
        assert_eq!(status_label(status_slot(418)), "4xx");
        assert_eq!(status_label(status_slot(299)), "2xx");
        assert_eq!(status_label(status_slot(103)), "1xx");
        assert_eq!(status_label(status_slot(999)), "other");
        let labels: std::collections::HashSet<String> =
            (100..1000).map(|s| status_label(status_slot(s))).collect();
        assert_eq!(labels.len(), STATUS_SLOTS);
    }

    #[test]
    fn a_named_route_is_labelled_by_its_name_and_keeps_its_counters_when_it_moves() {
        let named = TWO_ROUTES.replace(
            "[[routes]]\nto = [\"c\"]",
            "[[routes]]\nname = \"rest\"\nto = [\"c\"]",
        );
        let t = table(&named);
        let row = t.request_row(3, Some(1), Some(2)).unwrap();
        assert_eq!(t.requests.0[row].labels, ["other", "rest", "c"]);
        t.requests.0[row].cells.add(0, 5);
        // The same route two lines further down: same label, same counter.
        let moved = named.replace("[[routes]]\nname", "\n\n[[routes]]\nname");
        let config = Config::from_toml_with_env(&moved, "t", &|_| None).unwrap();
        let again = LabelTable::compile(&config, Some(&t));
        let row = again.request_row(3, Some(1), Some(2)).unwrap();
        assert_eq!(again.requests.0[row].labels, ["other", "rest", "c"]);
        assert_eq!(again.requests.0[row].cells.values()[0], 5);
    }

    #[test]
    fn request_rows_name_the_endpoint_route_and_upstream_they_count() {
        let t = table(TWO_ROUTES);
        let labels = |row: Option<usize>| t.requests.0[row.unwrap()].labels.clone();
        assert_eq!(
            labels(t.request_row(0, Some(0), Some(1))),
            ["speech", "line:8", "b"]
        );
        assert_eq!(
            labels(t.request_row(2, Some(0), None)),
            ["translations", "line:8", "none"]
        );
        assert_eq!(
            labels(t.request_row(ADMIN, None, None)),
            ["admin", "none", "none"]
        );
        assert_eq!(
            labels(t.request_row(3, Some(1), Some(2))),
            ["other", "line:12", "c"]
        );
        assert_eq!(
            t.request_row(0, Some(1), Some(0)),
            None,
            "a is not in route 2"
        );
        assert_eq!(t.request_row(0, Some(7), None), None);
        let distinct: std::collections::HashSet<_> =
            t.requests.0.iter().map(|r| r.labels.clone()).collect();
        assert_eq!(distinct.len(), t.requests.0.len());
    }

    #[test]
    fn fallback_rows_cover_each_ordered_pair_and_reason_once() {
        let t = table(TWO_ROUTES);
        // 3 pairs × (4 failures + 1 status) for the first route, none for the second.
        assert_eq!(t.fallbacks.0.len(), 15);
        let mut seen = std::collections::HashSet::new();
        for (from, to) in [(0, 1), (0, 2), (1, 2)] {
            for reason in [0, 1, 2, 3]
                .map(Reason::Failure)
                .into_iter()
                .chain([Reason::Status(503)])
            {
                let row = t.fallback_row(0, from, to, reason).unwrap();
                assert!(seen.insert(row));
                let labels = &t.fallbacks.0[row].labels;
                assert_eq!(labels[1], t.upstreams[from]);
                assert_eq!(labels[2], t.upstreams[to]);
                let want = match reason {
                    Reason::Failure(i) => FAILURE_REASONS[i].to_string(),
                    Reason::Status(s) => format!("status_{s}"),
                };
                assert_eq!(labels[3], want);
            }
        }
        assert_eq!(
            t.fallback_row(0, 1, 0, Reason::Failure(0)),
            None,
            "backwards"
        );
        assert_eq!(
            t.fallback_row(0, 0, 1, Reason::Status(502)),
            None,
            "not listed"
        );
    }

    #[test]
    fn models_outside_the_configuration_are_other() {
        let t = table(TWO_ROUTES);
        let label = |m: Option<&str>| t.model_requests.0[t.model_row(0, m)].labels[1].clone();
        assert_eq!(label(Some("m1")), "m1");
        assert_eq!(label(Some("kokoro")), "kokoro");
        assert_eq!(label(Some("tts-1")), "tts-1");
        assert_eq!(label(Some("m2")), "other", "a glob's matches are not names");
        assert_eq!(label(Some("a-client-made-this-up")), "other");
        assert_eq!(label(None), "none");
    }

    #[test]
    fn a_recompiled_table_shares_the_counters_of_label_sets_it_kept() {
        let old = table(TWO_ROUTES);
        old.attempts.get(0).unwrap().add(0, 3);
        // `a` removed: the routes move up two lines, `c` keeps its attempts.
        let changed = TWO_ROUTES
            .replace("[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n", "")
            .replace("to = [\"a\", \"b\", \"c\"]", "to = [\"b\", \"c\"]");
        let config = Config::from_toml_with_env(&changed, "t", &|_| None).unwrap();
        let new = LabelTable::compile(&config, Some(&old));
        assert_eq!(new.upstreams, ["b", "c"]);
        for o in &old.requests.0 {
            for n in &new.requests.0 {
                assert_eq!(o.labels == n.labels, Arc::ptr_eq(&o.cells, &n.cells));
            }
        }
        assert!(Arc::ptr_eq(
            &old.attempts.0[2].cells,
            &new.attempts.0[1].cells
        ));
        assert_eq!(new.attempts.get(1).unwrap().values()[0], 0);
        assert_eq!(new.attempts.get(0).unwrap().values()[0], 0, "b's own row");
        // The same file again: every row is the old one, counts and all.
        let again = LabelTable::compile(&config, Some(&new));
        let row = again.request_row(0, Some(1), Some(1)).unwrap();
        new.requests.get(row).unwrap().add(status_slot(200), 5);
        assert_eq!(
            again.requests.get(row).unwrap().values()[status_slot(200)],
            5
        );
        assert_eq!(again.requests.0[row].labels, ["speech", "line:10", "c"]);
    }

    #[test]
    fn histograms_put_each_time_in_its_bucket() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(1000));
        h.observe(Duration::from_micros(1001));
        h.observe(Duration::from_secs(61));
        h.observe(Duration::ZERO);
        h.observe(Duration::from_secs(60));
        let (buckets, sum) = h.read();
        assert_eq!(buckets[0], 2, "0 and 1 ms are in le=0.001");
        assert_eq!(buckets[1], 1);
        assert_eq!(buckets[14], 1, "60 s is in le=60");
        assert_eq!(buckets[15], 1, "over 60 s");
        assert_eq!(buckets.iter().sum::<u64>(), 5);
        assert!((sum - 121.002001).abs() < 1e-9);
    }
}
