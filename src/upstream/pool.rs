//! Upstream pools: an upstream's endpoints, their health, and which one takes a request.
//!
//! An endpoint is *available* while it is healthy (active checks, when configured, say so)
//! and not ejected (passive: it failed `eject_after` real requests in a row). [`Pool::pick`]
//! chooses among available primaries, then available backups (HAProxy's `backup`), by
//! weighted round robin or by least outstanding requests of two random choices. A pool
//! with nothing available is skipped by the forwarder at no cost — unless every upstream
//! of the route is down, when stale state must not fail the request closed and
//! `pick(ignore_health = true)` tries one anyway.
//!
//! Every change of state is logged once, when it happens, with its reason.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use http::Uri;
use serde_json::{json, Value};

use crate::config::{Balance, Ejection, EndpointConfig, HealthCheck};

/// What is known about one endpoint's health.
#[derive(Debug, Clone)]
struct State {
    /// What the active checks last concluded (true when there are none).
    healthy: bool,
    /// Consecutive check results of the same kind, for rise and fall.
    check_streak: u32,
    last_check: Option<(Instant, bool, String)>,
    /// Consecutive failed real requests.
    failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections that count towards the next one's length (started over after a long
    /// good spell)…
    ejections: u32,
    /// …and every ejection since start, for `/status`.
    ejections_total: u64,
    last_ejection: Option<Instant>,
}

/// One server of a pool.
#[derive(Debug)]
pub struct Endpoint {
    pub url: Uri,
    pub weight: u32,
    pub backup: bool,
    in_flight: AtomicUsize,
    state: Mutex<State>,
}

impl Endpoint {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state inconsistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The endpoint an attempt goes to; counts as in flight until dropped.
#[derive(Debug)]
pub struct Picked {
    pub index: usize,
    pool: Arc<Pool>,
}

impl Picked {
    pub fn endpoint(&self) -> &Endpoint {
        &self.pool.endpoints[self.index]
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.pool.endpoints[self.index]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Pool {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
    balance: Balance,
    ejection: Ejection,
    rise: u32,
    fall: u32,
    /// Whether active health checks run: without them, health is never known.
    health_checked: bool,
    turn: AtomicUsize,
    seed: RandomState,
}

impl Pool {
    pub fn new(
        name: &str,
        endpoints: &[EndpointConfig],
        balance: Balance,
        health: Option<&HealthCheck>,
        ejection: &Ejection,
    ) -> Pool {
        Pool {
            name: name.to_string(),
            endpoints: endpoints
                .iter()
                .map(|e| Endpoint {
                    url: e.url.clone(),
                    weight: e.weight,
                    backup: e.backup,
                    in_flight: AtomicUsize::new(0),
                    state: Mutex::new(State {
                        healthy: true,
                        check_streak: 0,
                        last_check: None,
                        failures: 0,
                        ejected_until: None,
                        ejections: 0,
                        ejections_total: 0,
                        last_ejection: None,
                    }),
                })
                .collect(),
            balance,
            ejection: ejection.clone(),
            rise: health.map_or(1, |h| h.rise),
            health_checked: health.is_some(),
            fall: health.map_or(1, |h| h.fall),
            turn: AtomicUsize::new(0),
            seed: RandomState::new(),
        }
    }

    /// Takes over what `previous` knew of each endpoint with the same URL (health, check
    /// streak, failures, ejection): a reload that changed the upstream's other settings does
    /// not bring a down endpoint back, nor forget an ejection.
    pub fn inherit(&self, previous: &Pool) {
        for endpoint in &self.endpoints {
            if let Some(old) = previous.endpoints.iter().find(|o| o.url == endpoint.url) {
                let state = old.state().clone();
                *endpoint.state() = state;
            }
        }
    }

    fn available(&self, index: usize, now: Instant) -> bool {
        let endpoint = &self.endpoints[index];
        let mut state = endpoint.state();
        if let Some(until) = state.ejected_until {
            if now < until {
                return false;
            }
            state.ejected_until = None;
            tracing::info!(upstream = %self.name, endpoint = %endpoint.url, "endpoint back in rotation: ejection time over");
        }
        state.healthy
    }

    /// Endpoint `index`'s health for metrics: whether the active checks hold it up (always
    /// true without checks), and whether it is ejected now.
    pub fn health(&self, index: usize) -> (bool, bool) {
        let now = Instant::now();
        let state = self.endpoints[index].state();
        (state.healthy, state.ejected_until.is_some_and(|u| u > now))
    }

    /// Whether any endpoint, primary or backup, can take a request now.
    pub fn is_up(&self) -> bool {
        let now = Instant::now();
        (0..self.endpoints.len()).any(|i| self.available(i, now))
    }

    /// The endpoint for the next attempt: available primaries first, then available
    /// backups; with `ignore_health`, any primary when nothing is available.
    pub fn pick(self: &Arc<Self>, ignore_health: bool) -> Option<Picked> {
        let now = Instant::now();
        let primaries: Vec<usize> = (0..self.endpoints.len())
            .filter(|&i| !self.endpoints[i].backup && self.available(i, now))
            .collect();
        let mut candidates = primaries;
        if candidates.is_empty() {
            candidates = (0..self.endpoints.len())
                .filter(|&i| self.endpoints[i].backup && self.available(i, now))
                .collect();
        }
        if candidates.is_empty() && ignore_health {
            candidates = (0..self.endpoints.len())
                .filter(|&i| !self.endpoints[i].backup)
                .collect();
        }
        let index = self.choose(&candidates)?;
        self.endpoints[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            index,
            pool: Arc::clone(self),
        })
    }

    fn choose(&self, candidates: &[usize]) -> Option<usize> {
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        match (candidates.len(), self.balance) {
            (0, _) => None,
            (1, _) => Some(candidates[0]),
            (_, Balance::RoundRobin) => {
                let total: usize = candidates
                    .iter()
                    .map(|&i| self.endpoints[i].weight as usize)
                    .sum();
                let mut slot = turn % total.max(1);
                candidates.iter().copied().find(|&i| {
                    let w = self.endpoints[i].weight as usize;
                    if slot < w {
                        true
                    } else {
                        slot -= w;
                        false
                    }
                })
            }
            (n, Balance::LeastOutstanding) => {
                let r = self.seed.hash_one(turn) as usize;
                let first = r % n;
                let second = (first + 1 + (r / n) % (n - 1)) % n;
                let (a, b) = (candidates[first], candidates[second]);
                let load = |i: usize| self.endpoints[i].in_flight.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }

    /// A real request at `index` went well: the run of failures is over.
    pub fn succeeded(&self, index: usize) {
        self.endpoints[index].state().failures = 0;
    }

    /// A real request at `index` failed: failures in a row eject the endpoint.
    pub fn failed(&self, index: usize, reason: &dyn std::fmt::Display) {
        let endpoint = &self.endpoints[index];
        let after = self.ejection.after;
        let mut state = endpoint.state();
        state.failures += 1;
        if after == 0 || state.failures < after || state.ejected_until.is_some() {
            return;
        }
        drop(state);
        // Envoy's rule: at most this share of a pool at once, but one endpoint always may.
        let now = Instant::now();
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.state().ejected_until.is_some_and(|u| u > now))
            .count();
        let allowed = (self.endpoints.len() * self.ejection.max_percent as usize / 100).max(1);
        if ejected >= allowed {
            return;
        }
        let mut state = endpoint.state();
        // An endpoint that behaved for longer than the longest ejection starts over.
        if state
            .last_ejection
            .is_some_and(|last| now.saturating_duration_since(last) > self.ejection.max_time)
        {
            state.ejections = 0;
        }
        state.ejections += 1;
        state.ejections_total += 1;
        state.last_ejection = Some(now);
        let time = self
            .ejection
            .base_time
            .saturating_mul(state.ejections)
            .min(self.ejection.max_time);
        state.ejected_until = Some(now + time);
        state.check_streak = 0;
        tracing::warn!(
            upstream = %self.name,
            endpoint = %endpoint.url,
            failures = state.failures,
            ejected_for = ?time,
            reason = %reason,
            "endpoint ejected"
        );
    }

    /// An active check's outcome at `index`: `rise` successes bring it up (and end an
    /// ejection), `fall` failures take it down.
    pub fn checked(&self, index: usize, ok: bool, detail: String) {
        let endpoint = &self.endpoints[index];
        let mut state = endpoint.state();
        let same = state
            .last_check
            .as_ref()
            .is_some_and(|(_, was, _)| *was == ok);
        state.check_streak = if same { state.check_streak + 1 } else { 1 };
        if ok && state.ejected_until.is_some() && state.check_streak >= self.rise {
            state.ejected_until = None;
            state.failures = 0;
            tracing::info!(upstream = %self.name, endpoint = %endpoint.url, "endpoint back in rotation: health checks pass");
        }
        if ok && !state.healthy && state.check_streak >= self.rise {
            state.healthy = true;
            state.failures = 0;
            tracing::info!(upstream = %self.name, endpoint = %endpoint.url, check = %detail, "endpoint up");
        } else if !ok && state.healthy && state.check_streak >= self.fall {
            state.healthy = false;
            tracing::warn!(upstream = %self.name, endpoint = %endpoint.url, check = %detail, "endpoint down");
        }
        state.last_check = Some((Instant::now(), ok, detail));
    }

    /// The pool as the status endpoint shows it. Each endpoint's state says one thing:
    /// `health` is what the active checks concluded (`up`, `down`, or `unchecked` when
    /// there are none or none has run yet), `ejected_until` the seconds until a passive
    /// ejection ends (`null` when not ejected), `available` whether it would take a
    /// request now (not down and not ejected), and `ejections_total` how many times it
    /// was ejected since voxgate started.
    pub fn status(&self) -> Value {
        let now = Instant::now();
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let available = self.available(i, now);
                let state = e.state();
                let health = match (
                    self.health_checked && state.last_check.is_some(),
                    state.healthy,
                ) {
                    (false, _) => "unchecked",
                    (true, true) => "up",
                    (true, false) => "down",
                };
                // Milliseconds kept: a short ejection in a test is not 0 seconds.
                let ejected_until = state
                    .ejected_until
                    .map(|u| (u.saturating_duration_since(now).as_millis() as f64) / 1000.0);
                json!({
                    "url": e.url.to_string(),
                    "weight": e.weight,
                    "backup": e.backup,
                    "available": available,
                    "health": health,
                    "ejected_until": ejected_until,
                    "ejections_total": state.ejections_total,
                    "consecutive_failures": state.failures,
                    "in_flight": e.in_flight.load(Ordering::Relaxed),
                    "last_check": state.last_check.as_ref().map(|(at, ok, detail)| json!({
                        "ok": ok,
                        "detail": detail,
                        "ms_ago": now.saturating_duration_since(*at).as_millis() as u64,
                    })),
                })
            })
            .collect();
        json!({
            "name": self.name,
            "up": self.is_up(),
            "balance": match self.balance {
                Balance::RoundRobin => "round_robin",
                Balance::LeastOutstanding => "least_outstanding",
            },
            "endpoints": endpoints,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(specs: &[(u32, bool)], balance: Balance, after: u32) -> Arc<Pool> {
        let endpoints: Vec<EndpointConfig> = specs
            .iter()
            .enumerate()
            .map(|(i, &(weight, backup))| EndpointConfig {
                url: format!("http://127.0.0.1:{}", 1000 + i).parse().unwrap(),
                weight,
                backup,
            })
            .collect();
        let health = HealthCheck {
            method: http::Method::GET,
            path: "/health".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 2,
            expect: (200, 299),
        };
        let ejection = Ejection {
            after,
            base_time: Duration::from_secs(10),
            max_time: Duration::from_secs(25),
            max_percent: 50,
        };
        Arc::new(Pool::new(
            "p",
            &endpoints,
            balance,
            Some(&health),
            &ejection,
        ))
    }

    fn picks(p: &Arc<Pool>, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| p.pick(false).map(|x| x.index).unwrap())
            .collect()
    }

    #[test]
    fn weights_shape_round_robin_exactly() {
        let p = pool(&[(1, false), (3, false)], Balance::RoundRobin, 0);
        let got = picks(&p, 400);
        assert_eq!(got.iter().filter(|&&i| i == 1).count(), 300);
    }

    #[test]
    fn backups_take_traffic_only_when_every_primary_is_down() {
        let p = pool(&[(1, false), (1, false), (1, true)], Balance::RoundRobin, 0);
        assert!(picks(&p, 10).iter().all(|&i| i != 2));
        for i in [0, 1] {
            p.checked(i, false, "refused".into());
            p.checked(i, false, "refused".into());
        }
        assert!(picks(&p, 10).iter().all(|&i| i == 2));
        p.checked(0, true, "200".into());
        assert!(
            picks(&p, 4).iter().all(|&i| i == 2),
            "one success is not rise = 2"
        );
        p.checked(0, true, "200".into());
        assert!(picks(&p, 4).iter().all(|&i| i == 0));
    }

    #[test]
    fn nothing_available_means_no_pick_unless_health_is_ignored() {
        let p = pool(&[(1, false)], Balance::RoundRobin, 0);
        p.checked(0, false, "x".into());
        assert!(p.is_up(), "fall = 2");
        p.checked(0, false, "x".into());
        assert!(!p.is_up());
        assert!(p.pick(false).is_none());
        assert_eq!(p.pick(true).map(|x| x.index), Some(0));
    }

    #[test]
    fn failures_in_a_row_eject_for_growing_times_within_the_share() {
        let p = pool(&[(1, false), (1, false)], Balance::RoundRobin, 2);
        p.failed(0, &"connect");
        assert!(p.available(0, Instant::now()), "one failure is not two");
        p.succeeded(0);
        p.failed(0, &"connect");
        assert!(p.available(0, Instant::now()), "a success reset the count");
        p.failed(0, &"connect");
        assert!(!p.available(0, Instant::now()));
        assert!(p.available(0, Instant::now() + Duration::from_secs(11)));
        // Second ejection lasts twice as long: 20 s.
        p.failed(0, &"x");
        p.failed(0, &"x");
        assert!(!p.available(0, Instant::now() + Duration::from_secs(15)));
        // 50 % of two endpoints: the other one may not be ejected too.
        p.failed(1, &"x");
        p.failed(1, &"x");
        assert!(p.available(1, Instant::now()));
    }

    #[test]
    fn the_ejection_multiplier_starts_over_after_a_long_good_spell() {
        let p = pool(&[(1, false)], Balance::RoundRobin, 1);
        p.failed(0, &"x");
        p.failed(0, &"x"); // still ejected: not counted again
        assert_eq!(p.endpoints[0].state().ejections, 1);
        // Pretend the first ejection was long ago, beyond the 25 s maximum.
        {
            let mut state = p.endpoints[0].state();
            state.ejected_until = None;
            state.last_ejection = Instant::now().checked_sub(Duration::from_secs(26));
        }
        p.failed(0, &"x");
        assert_eq!(p.endpoints[0].state().ejections, 1, "started over");
        let until = p.endpoints[0].state().ejected_until.unwrap();
        assert!(until <= Instant::now() + Duration::from_secs(10));
    }

    #[test]
    fn status_says_health_ejection_and_availability_each_once() {
        let p = pool(&[(1, false), (1, false)], Balance::RoundRobin, 1);
        let endpoint = |p: &Arc<Pool>, i: usize| p.status()["endpoints"][i].clone();
        let e = endpoint(&p, 0);
        assert_eq!(e["health"], "unchecked", "no check has run yet");
        assert_eq!(e["available"], true);
        assert!(e["ejected_until"].is_null());
        assert_eq!(e["ejections_total"], 0);
        p.checked(0, false, "status 503".into());
        p.checked(0, false, "status 503".into());
        p.checked(1, true, "status 200".into());
        let (down, up) = (endpoint(&p, 0), endpoint(&p, 1));
        assert_eq!(
            (down["health"].as_str(), down["available"].as_bool()),
            (Some("down"), Some(false))
        );
        assert_eq!(
            (up["health"].as_str(), up["available"].as_bool()),
            (Some("up"), Some(true))
        );
        p.failed(1, &"reset");
        let ejected = endpoint(&p, 1);
        assert_eq!(ejected["health"], "up", "health is the checks' word alone");
        assert_eq!(ejected["available"], false);
        let until = ejected["ejected_until"].as_f64().unwrap();
        assert!(until > 9.0 && until <= 10.0, "{until}");
        assert_eq!(ejected["ejections_total"], 1);
        // Started over for the multiplier after a long good spell, still counted in total.
        {
            let mut state = p.endpoints[1].state();
            state.ejected_until = None;
            state.last_ejection = Some(Instant::now() - Duration::from_secs(60));
        }
        p.failed(1, &"reset");
        assert_eq!(p.endpoints[1].state().ejections, 1);
        assert_eq!(endpoint(&p, 1)["ejections_total"], 2);

        let unchecked = Arc::new(Pool::new(
            "q",
            &[EndpointConfig {
                url: "http://127.0.0.1:1".parse().unwrap(),
                weight: 1,
                backup: false,
            }],
            Balance::RoundRobin,
            None,
            &p.ejection,
        ));
        assert_eq!(unchecked.status()["endpoints"][0]["health"], "unchecked");
    }

    #[test]
    fn passing_checks_end_an_ejection_early() {
        let p = pool(&[(1, false)], Balance::RoundRobin, 1);
        p.failed(0, &"timeout");
        assert!(!p.is_up());
        p.checked(0, true, "200".into());
        assert!(!p.is_up());
        p.checked(0, true, "200".into());
        assert!(p.is_up());
    }

    #[test]
    fn least_outstanding_prefers_the_idle_endpoint() {
        let p = pool(&[(1, false), (1, false)], Balance::LeastOutstanding, 0);
        // Ties go either way at random: pick until endpoint 0 holds a request.
        let busy: Vec<Picked> = (0..100)
            .map(|_| p.pick(false).unwrap())
            .filter(|x| x.index == 0)
            .take(1)
            .collect();
        assert!(!busy.is_empty());
        // With endpoint 0 busy, every choice of two distinct endpoints picks 1.
        assert!(picks(&p, 20).iter().all(|&i| i == 1));
        drop(busy);
        assert_eq!(p.endpoints[0].in_flight.load(Ordering::Relaxed), 0);
    }
}
