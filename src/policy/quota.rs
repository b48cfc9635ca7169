//! Rate limits in the units that cost money: requests, speech characters, uploaded
//! bytes; for everyone together (`[limits]`) and for each client (its `limits`).
//!
//! A [`Meter`] holds one [GCRA limiter](crate::policy::rate::Gcra) per limited unit and
//! scope. A request takes from the global limiter and its client's together, all or
//! none, and keeps what it took in its [`Quota`], which gives it back if every upstream
//! failed and writes the `x-ratelimit-*` headers the OpenAI SDKs read.
//!
//! Limiters outlive reloads: a compiled meter takes over the previous one's limiter for
//! every scope and unit whose rate did not change, so editing the file does not hand
//! every client a fresh burst.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::policy::rate::{self, Denied, Gcra, Nanos, Rate, Snapshot};
use crate::policy::shared::Shared;

/// Rates per unit; a unit without one is not limited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub requests: Option<Rate>,
    /// Characters of speech `input` (Unicode scalar values).
    pub tts_chars: Option<Rate>,
    /// Bytes of uploaded audio (the `file` part).
    pub stt_bytes: Option<Rate>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    fn rate(&self, unit: Unit) -> Option<Rate> {
        match unit {
            Unit::Requests => self.requests,
            Unit::TtsChars => self.tts_chars,
            Unit::SttBytes => self.stt_bytes,
        }
    }
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Requests,
    TtsChars,
    SttBytes,
}

impl Unit {
    pub const ALL: [Unit; 3] = [Unit::Requests, Unit::TtsChars, Unit::SttBytes];

    /// As written in the configuration, and the `unit` label of the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Requests => "requests",
            Unit::TtsChars => "tts_chars",
            Unit::SttBytes => "stt_bytes",
        }
    }
}

/// One scope's limiters, by unit.
#[derive(Debug, Default, Clone)]
struct Buckets([Option<Arc<Gcra>>; 3]);

impl Buckets {
    /// The limiters for `limits`, each the old one where its rate is unchanged.
    fn compile(limits: &Limits, old: Option<&Buckets>) -> Buckets {
        let mut buckets = Buckets::default();
        for unit in Unit::ALL {
            let Some(rate) = limits.rate(unit) else {
                continue;
            };
            let kept = old
                .and_then(|o| o.get(unit))
                .filter(|g| g.rate() == rate)
                .cloned();
            buckets.0[unit as usize] = Some(kept.unwrap_or_else(|| Arc::new(Gcra::new(rate))));
        }
        buckets
    }

    fn get(&self, unit: Unit) -> Option<&Arc<Gcra>> {
        self.0[unit as usize].as_ref()
    }
}

/// Who ran into a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `[limits]`: all clients together.
    Global,
    /// A client's own `limits`.
    Client(String),
}

/// A request refused by a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub unit: Unit,
    pub scope: Scope,
    pub rate: Rate,
    pub denied: Denied,
}

impl Limited {
    /// Whole seconds to wait, rounded up so that the retry passes; `None`: never.
    pub fn retry_after_seconds(&self) -> Option<u32> {
        let wait = self.denied.retry_after?;
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Some(u32::try_from(seconds.max(1)).unwrap_or(u32::MAX))
    }
}

/// The limiters of one configuration.
#[derive(Debug, Default)]
pub struct Meter {
    global: Buckets,
    /// By client index, with the client's name (to be found again by the next one).
    clients: Vec<(String, Buckets)>,
}

impl Meter {
    /// `clients` in the configuration's order: a request's client index points here.
    pub fn compile<'a>(
        global: &Limits,
        clients: impl IntoIterator<Item = (&'a str, &'a Limits)>,
        old: Option<&Meter>,
    ) -> Meter {
        let clients = clients
            .into_iter()
            .map(|(name, limits)| {
                let before = old.and_then(|o| o.clients.iter().find(|(n, _)| n == name));
                (
                    name.to_string(),
                    Buckets::compile(limits, before.map(|(_, b)| b)),
                )
            })
            .collect();
        Meter {
            global: Buckets::compile(global, old.map(|o| &o.global)),
            clients,
        }
    }

    /// The limiters a request of `client` takes `unit` from: global first.
    fn limiters(
        &self,
        client: Option<usize>,
        unit: Unit,
    ) -> impl Iterator<Item = (Scope, &Arc<Gcra>)> {
        let global = self.global.get(unit).map(|g| (Scope::Global, g));
        let own = client
            .and_then(|c| self.clients.get(c))
            .and_then(|(name, b)| b.get(unit).map(|g| (Scope::Client(name.clone()), g)));
        global.into_iter().chain(own)
    }

    /// The scopes that limit `unit` for `client`, global first, with their rates: what a
    /// request takes from the shared state instead of the local limiters.
    pub fn scopes(&self, client: Option<usize>, unit: Unit) -> Vec<(Scope, Rate)> {
        self.limiters(client, unit)
            .map(|(scope, gcra)| (scope, gcra.rate()))
            .collect()
    }

    /// Each limited unit of the global scope (`None`) or a client's: its rate and how it
    /// stands now, for `/status`.
    pub fn report(&self, client: Option<usize>) -> Vec<(Unit, Rate, Snapshot)> {
        let buckets = match client {
            None => Some(&self.global),
            Some(c) => self.clients.get(c).map(|(_, b)| b),
        };
        let now = rate::now();
        Unit::ALL
            .into_iter()
            .filter_map(|unit| {
                let gcra = buckets?.get(unit)?;
                Some((unit, gcra.rate(), gcra.snapshot(now)))
            })
            .collect()
    }

    /// Whether `unit` is limited for `client` at all (nothing to do otherwise).
    pub fn limits(&self, client: Option<usize>, unit: Unit) -> bool {
        self.global.get(unit).is_some()
            || client
                .and_then(|c| self.clients.get(c))
                .is_some_and(|(_, b)| b.get(unit).is_some())
    }

    /// Takes `cost` of `unit` for `client` from every limiter that applies, all or none,
    /// and notes it in `quota`.
    pub fn take(
        &self,
        client: Option<usize>,
        unit: Unit,
        cost: u64,
        quota: &mut Quota,
    ) -> Result<(), Limited> {
        let now = rate::now();
        let mut taken = 0;
        let mut tightest: Option<Snapshot> = None;
        for (scope, gcra) in self.limiters(client, unit) {
            match gcra.take(cost, now) {
                Ok(snapshot) => {
                    quota.taken.push((gcra.clone(), cost));
                    taken += 1;
                    tightest = Some(tighter(tightest, snapshot));
                }
                Err(denied) => {
                    // All or none: what this unit took from the scopes before goes back.
                    for (gcra, cost) in quota.taken.drain(quota.taken.len() - taken..) {
                        gcra.refund(cost, now);
                    }
                    quota.note(unit, denied.snapshot);
                    let mut limited = Limited {
                        unit,
                        scope,
                        rate: gcra.rate(),
                        denied,
                    };
                    // The wait told is the longest of every scope that would refuse, so
                    // that the retry passes them all.
                    for (scope, other) in self.limiters(client, unit) {
                        if let Err(later) = other.check(cost, now) {
                            if longer(later.retry_after, limited.denied.retry_after) {
                                limited = Limited {
                                    unit,
                                    scope,
                                    rate: other.rate(),
                                    denied: later,
                                };
                            }
                        }
                    }
                    return Err(limited);
                }
            }
        }
        if let Some(snapshot) = tightest {
            quota.note(unit, snapshot);
        }
        Ok(())
    }

    /// Whether `cost` of `unit` could be taken now, taking nothing: an upload whose
    /// Content-Length is already over is refused before it is read.
    pub fn check(&self, client: Option<usize>, unit: Unit, cost: u64) -> Result<(), Limited> {
        let now = rate::now();
        for (scope, gcra) in self.limiters(client, unit) {
            if let Err(denied) = gcra.check(cost, now) {
                return Err(Limited {
                    unit,
                    scope,
                    rate: gcra.rate(),
                    denied,
                });
            }
        }
        Ok(())
    }
}

/// Whether wait `a` is longer than `b` (`None`: never passes, the longest).
fn longer(a: Option<Duration>, b: Option<Duration>) -> bool {
    match (a, b) {
        (None, Some(_)) => true,
        (Some(a), Some(b)) => a > b,
        _ => false,
    }
}

fn tighter(a: Option<Snapshot>, b: Snapshot) -> Snapshot {
    match a {
        Some(a) if a.remaining <= b.remaining => a,
        _ => b,
    }
}

/// What one request took, to give back if it failed everywhere, and what the limits
/// looked like, for its answer's headers.
#[derive(Default)]
pub struct Quota {
    taken: Vec<(Arc<Gcra>, u64)>,
    /// Taken from the shared state: its key, the rate, the cost.
    shared: Vec<(Arc<Shared>, String, Rate, u64)>,
    requests: Option<Snapshot>,
    /// Speech characters: OpenAI's `-tokens` headers.
    tokens: Option<Snapshot>,
}

impl std::fmt::Debug for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quota")
            .field("taken", &self.taken.len())
            .field("shared", &self.shared.len())
            .field("requests", &self.requests)
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl Quota {
    /// Notes `cost` taken from the shared state's `key`, to give back on a refund.
    pub fn took_shared(&mut self, shared: &Arc<Shared>, key: String, rate: Rate, cost: u64) {
        self.shared.push((shared.clone(), key, rate, cost));
    }

    /// Notes how a limit stands, for the headers.
    pub fn note(&mut self, unit: Unit, snapshot: Snapshot) {
        let slot = match unit {
            Unit::Requests => &mut self.requests,
            Unit::TtsChars => &mut self.tokens,
            Unit::SttBytes => return,
        };
        *slot = Some(tighter(*slot, snapshot));
    }

    /// Gives back everything taken (the request failed on every upstream).
    pub fn refund(&mut self) {
        let now: Nanos = rate::now();
        for (gcra, cost) in self.taken.drain(..) {
            gcra.refund(cost, now);
        }
        refund_shared(self.shared.drain(..).collect());
    }

    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, as OpenAI sends them.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        // An upstream's own figures (OpenAI's, for the operator's account) are not the
        // client's: where voxgate limits the client, only its figures are sent.
        // (A look at the names first: most upstreams send none, and six removals are six
        // hashes for nothing.)
        let theirs = || {
            headers
                .keys()
                .any(|k| k.as_str().starts_with("x-ratelimit-"))
        };
        if (self.requests.is_some() || self.tokens.is_some()) && theirs() {
            for name in REQUESTS.iter().chain(TOKENS.iter()) {
                headers.remove(name);
            }
        }
        let sets = [(&self.requests, &REQUESTS), (&self.tokens, &TOKENS)];
        for (snapshot, names) in sets {
            let Some(s) = snapshot else { continue };
            headers.append(names[0].clone(), HeaderValue::from(s.limit));
            headers.append(names[1].clone(), HeaderValue::from(s.remaining));
            if let Ok(reset) = HeaderValue::try_from(go_duration(s.reset)) {
                headers.append(names[2].clone(), reset);
            }
        }
    }
}

/// Gives back what was taken from the shared state, without waiting for it (the request
/// is over; a refund lost to an outage is one request's worth).
pub fn refund_shared(taken: Vec<(Arc<Shared>, String, Rate, u64)>) {
    if taken.is_empty() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        for (shared, key, rate, cost) in taken {
            shared.refund(&key, rate, cost).await;
        }
    });
}

/// The shared state's name of a scope's limiter of `unit`.
pub fn shared_key(scope: &Scope, unit: Unit) -> String {
    match scope {
        Scope::Global => format!("global:{}", unit.name()),
        Scope::Client(name) => format!("client:{name}:{}", unit.name()),
    }
}

static REQUESTS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
static TOKENS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// A duration as OpenAI writes `x-ratelimit-reset-*` (Go's style): `17ms`, `12s`,
/// `6m0s`, `1h2m3s`; whole seconds rounded up above a second.
pub fn go_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        let ms = d.as_millis() + u128::from(d.subsec_nanos() % 1_000_000 > 0);
        return format!("{ms}ms");
    }
    let total = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h{m}m");
    } else if m > 0 {
        let _ = write!(out, "{m}m");
    }
    let _ = write!(out, "{s}s");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_minute(n: u64) -> Option<Rate> {
        Some(Rate {
            count: n,
            period: Duration::from_secs(60),
        })
    }

    fn requests_per_minute(n: u64) -> Limits {
        Limits {
            requests: per_minute(n),
            ..Limits::default()
        }
    }

    #[test]
    fn reset_times_are_written_as_openai_writes_them() {
        assert_eq!(go_duration(Duration::from_millis(17)), "17ms");
        assert_eq!(go_duration(Duration::from_micros(16_500)), "17ms");
        assert_eq!(go_duration(Duration::ZERO), "0ms");
        assert_eq!(go_duration(Duration::from_secs(12)), "12s");
        assert_eq!(go_duration(Duration::from_millis(11_200)), "12s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_secs(3723)), "1h2m3s");
    }

    #[test]
    fn a_request_takes_from_the_global_and_its_clients_limiter_all_or_none() {
        let global = requests_per_minute(3);
        let own = requests_per_minute(1);
        let none = Limits::default();
        let meter = Meter::compile(&global, [("a", &own), ("b", &none)], None);
        let mut q = Quota::default();
        assert!(meter.take(Some(0), Unit::Requests, 1, &mut q).is_ok());
        // a's own limit refuses; the global unit it would have taken goes back.
        let refused = meter.take(Some(0), Unit::Requests, 1, &mut Quota::default());
        let refused = refused.expect_err("a is over its own limit");
        assert_eq!(refused.scope, Scope::Client("a".into()));
        // So b still has two of the global three.
        assert!(meter
            .take(Some(1), Unit::Requests, 1, &mut Quota::default())
            .is_ok());
        assert!(meter
            .take(Some(1), Unit::Requests, 1, &mut Quota::default())
            .is_ok());
        let refused = meter.take(Some(1), Unit::Requests, 1, &mut Quota::default());
        assert_eq!(refused.expect_err("global is spent").scope, Scope::Global);
        // Refunding a's request lets one more through.
        q.refund();
        assert!(meter
            .take(None, Unit::Requests, 1, &mut Quota::default())
            .is_ok());
    }

    #[test]
    fn the_wait_told_is_the_longest_of_every_scope_that_refuses() {
        let global = Limits {
            requests: Some(Rate {
                count: 10,
                period: Duration::from_secs(1),
            }),
            ..Limits::default()
        };
        let own = requests_per_minute(1);
        let none = Limits::default();
        let meter = Meter::compile(&global, [("a", &own), ("b", &none)], None);
        meter
            .take(Some(0), Unit::Requests, 1, &mut Quota::default())
            .unwrap();
        for _ in 0..9 {
            meter
                .take(Some(1), Unit::Requests, 1, &mut Quota::default())
                .unwrap();
        }
        // The global limit refuses first (free again in 100 ms), a's own for a minute.
        let refused = meter.take(Some(0), Unit::Requests, 1, &mut Quota::default());
        let refused = refused.expect_err("both spent");
        assert_eq!(refused.scope, Scope::Client("a".into()));
        assert!(refused.retry_after_seconds() >= Some(59), "{refused:?}");
    }

    #[test]
    fn a_reload_keeps_a_limiter_whose_rate_did_not_change() {
        let global = Limits {
            requests: per_minute(1),
            tts_chars: per_minute(100),
            ..Limits::default()
        };
        let first = Meter::compile(&global, [], None);
        assert!(first
            .take(None, Unit::Requests, 1, &mut Quota::default())
            .is_ok());
        assert!(first
            .take(None, Unit::TtsChars, 100, &mut Quota::default())
            .is_ok());
        let changed = Limits {
            tts_chars: per_minute(200),
            ..global
        };
        let second = Meter::compile(&changed, [], Some(&first));
        // requests kept its spent limiter; tts_chars has a new rate, so a new one.
        assert!(second
            .take(None, Unit::Requests, 1, &mut Quota::default())
            .is_err());
        assert!(second
            .take(None, Unit::TtsChars, 200, &mut Quota::default())
            .is_ok());
    }

    #[test]
    fn headers_report_the_tightest_scope() {
        let global = Limits {
            requests: per_minute(10),
            tts_chars: per_minute(1000),
            ..Limits::default()
        };
        let own = requests_per_minute(2);
        let meter = Meter::compile(&global, [("a", &own)], None);
        let mut q = Quota::default();
        meter.take(Some(0), Unit::Requests, 1, &mut q).unwrap();
        meter.take(Some(0), Unit::TtsChars, 250, &mut q).unwrap();
        let mut h = HeaderMap::new();
        q.write_headers(&mut h);
        assert_eq!(h["x-ratelimit-limit-requests"], "2");
        assert_eq!(h["x-ratelimit-remaining-requests"], "1");
        assert_eq!(h["x-ratelimit-reset-requests"], "30s");
        assert_eq!(h["x-ratelimit-limit-tokens"], "1000");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "750");
        assert_eq!(h["x-ratelimit-reset-tokens"], "15s");
    }

    #[test]
    fn check_takes_nothing_and_refuses_what_take_would() {
        let global = Limits {
            stt_bytes: Some(Rate {
                count: 1000,
                period: Duration::from_secs(86_400),
            }),
            ..Limits::default()
        };
        let meter = Meter::compile(&global, [], None);
        assert!(meter.check(None, Unit::SttBytes, 1000).is_ok());
        assert!(meter.check(None, Unit::SttBytes, 1000).is_ok());
        let over = meter
            .check(None, Unit::SttBytes, 1001)
            .expect_err("over the burst");
        assert_eq!(over.retry_after_seconds(), None, "can never pass");
        assert!(!meter.limits(None, Unit::Requests));
        assert!(meter.limits(None, Unit::SttBytes));
    }
}
