//! Rates (`60/min`, `20000/hour`, `200MiB/day`) and the GCRA limiter that enforces them.
//!
//! Limits are written in the units that cost money — requests, characters sent to TTS,
//! bytes uploaded to STT — so one limiter type serves them all: a [`Gcra`] holds a burst of
//! `N` units that refills steadily at `N` per period. The whole state is one theoretical
//! arrival time (TAT) in an `AtomicU64`, so taking, checking and refunding are lock-free.
//!
//! Time is passed in as [`Nanos`] rather than read inside, so tests drive a virtual clock and
//! a request that takes from several limiters ([`take_all`]) judges them all at one instant.
//!
//! Precision: the emission interval `T` (time per unit) is `period / N` rounded *up* to a
//! whole nanosecond, and the tolerance is `N * T`. The burst is therefore exactly `N`, and
//! the refill is exact whenever `N` divides the period in nanoseconds (every request rate
//! people write); otherwise it is slower than written by under a nanosecond per unit
//! (0.005 % for `200MiB/day`), never faster.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// `count` units per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub period: Duration,
}

/// The periods a rate may name; the first spelling is the one `Display` writes.
const PERIODS: [(&[&str], u64); 4] = [
    (&["sec", "second", "s"], 1),
    (&["min", "minute", "m"], 60),
    (&["hour", "h"], 3_600),
    (&["day", "d"], 86_400),
];

/// Size units for byte limits; binary and decimal both, since people write both.
const SIZES: [(&str, u64); 9] = [
    ("b", 1),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
];

/// Parses `N/unit`; unit one of `sec|second|s`, `min|minute|m`, `hour|h`, `day|d`
/// (case-insensitive; spaces around the parts are allowed).
///
/// With `sizes`, `N` may carry a size unit: `B`, `KiB`, `MiB`, `GiB`, `TiB` (binary) or
/// `KB`, `MB`, `GB`, `TB` (decimal), case-insensitive as there is no bit unit to confuse
/// them with. Without `sizes` a unit on `N` is an error. `N` is a whole number: a fraction
/// (`1.5KiB/min`) is refused rather than rounded, so the limit is exactly what was written.
///
/// Refused: `N` of 0, a count that overflows `u64`, and rates finer than one unit per
/// nanosecond (the limiter's resolution; that is over 1 GB/s, never a useful limit).
/// Errors are short messages without the input; the caller adds where it was written.
pub fn parse_rate(text: &str, sizes: bool) -> Result<Rate, String> {
    let (amount, unit) = text.split_once('/').ok_or_else(|| format_hint(sizes))?;
    let period = parse_period(unit)?;
    let count = parse_count(amount, sizes)?;
    if count == 0 {
        return Err("the count must be at least 1".to_owned());
    }
    if u128::from(count) > period.as_nanos() {
        return Err("a rate of more than one per nanosecond is not supported".to_owned());
    }
    Ok(Rate { count, period })
}

/// The message for a rate without the `N/unit` shape.
fn format_hint(sizes: bool) -> String {
    let hint = "expected `N/sec`, `N/min`, `N/hour` or `N/day`";
    if sizes {
        format!("{hint}, N optionally in B, KiB, MiB, GiB, KB, MB or GB")
    } else {
        hint.to_owned()
    }
}

fn parse_period(unit: &str) -> Result<Duration, String> {
    let unit = unit.trim().to_ascii_lowercase();
    PERIODS
        .iter()
        .find(|(names, _)| names.contains(&unit.as_str()))
        .map(|&(_, secs)| Duration::from_secs(secs))
        .ok_or_else(|| "the period must be `sec`, `min`, `hour` or `day`".to_owned())
}

/// The `N` of `N/unit`: digits, then (only for byte limits) an optional size unit.
fn parse_count(amount: &str, sizes: bool) -> Result<u64, String> {
    let amount = amount.trim();
    let digits_end = amount
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(amount.len());
    let (digits, suffix) = amount.split_at(digits_end);
    if digits.is_empty() {
        return Err(format_hint(sizes));
    }
    if suffix.starts_with(['.', ',']) {
        return Err("the count must be a whole number".to_owned());
    }
    let too_large = || "the count is too large".to_owned();
    let number: u64 = digits.parse().map_err(|_| too_large())?;
    let suffix = suffix.trim();
    if suffix.is_empty() {
        return Ok(number);
    }
    if !sizes {
        return Err("a size unit is only allowed on byte limits".to_owned());
    }
    let multiplier = size_unit(suffix)
        .ok_or_else(|| "the size unit must be B, KiB, MiB, GiB, KB, MB or GB".to_owned())?;
    number.checked_mul(multiplier).ok_or_else(too_large)
}

fn size_unit(suffix: &str) -> Option<u64> {
    let suffix = suffix.to_ascii_lowercase();
    SIZES
        .iter()
        .find(|(name, _)| *name == suffix)
        .map(|&(_, bytes)| bytes)
}

/// `60/min` when the period is one of the parseable units (so it reads back the same),
/// otherwise `60 per 90s`.
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let named = PERIODS
            .iter()
            .find(|&&(_, secs)| self.period == Duration::from_secs(secs));
        match named {
            Some((names, _)) => write!(f, "{}/{}", self.count, names[0]),
            None => write!(
                f,
                "{} per {}",
                self.count,
                humantime::format_duration(self.period)
            ),
        }
    }
}

/// A monotonic clock reading in nanoseconds since an arbitrary origin (tests pass their own).
pub type Nanos = u64;

/// Now on the process's monotonic clock, counted from the first call in this process.
///
/// The origin is fixed once so readings from every thread compare, and counting from
/// process start keeps them small: a `u64` of nanoseconds lasts 584 years.
pub fn now() -> Nanos {
    static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);
    u64::try_from(ORIGIN.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What a limiter reports, for `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    /// The burst, `N`.
    pub limit: u64,
    /// How many units could be taken right now (rounded down).
    pub remaining: u64,
    /// Until the bucket is full again (zero when full).
    pub reset: Duration,
}

/// A refusal, with when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied {
    /// When a request of this cost would pass if nothing else is taken meanwhile, exact to
    /// the nanosecond (it passes at exactly this delay; callers round up to whole seconds
    /// for `retry-after`). `None` when the cost exceeds the burst, so it can never pass.
    pub retry_after: Option<Duration>,
    /// The limiter as it stands, nothing taken.
    pub snapshot: Snapshot,
}

/// One GCRA limiter: a burst of `N` units refilling at `N` per period.
///
/// The state is the theoretical arrival time (TAT): the instant at which the bucket will be
/// full again. A TAT at or before now means full, so a fresh limiter starts at 0 and every
/// subtraction is `TAT - now` only after checking `TAT > now` — no underflow at the origin.
/// Taking `c` units moves TAT to `max(TAT, now) + c*T`, allowed while that stays within
/// the tolerance `N*T` of now.
#[derive(Debug)]
pub struct Gcra {
    rate: Rate,
    /// Emission interval `T` in nanoseconds: `period / N` rounded up, at least 1.
    interval: u128,
    /// Tolerance `N * T` in nanoseconds: how far TAT may run ahead of now.
    tolerance: u128,
    /// Theoretical arrival time, in [`Nanos`].
    ///
    /// Relaxed ordering suffices: this one word is the whole state, nothing else is
    /// published through it, and compare-exchange keeps its updates in one total order.
    tat: AtomicU64,
}

impl Gcra {
    /// A full limiter. A rate of 0 units admits nothing but zero costs.
    pub fn new(rate: Rate) -> Gcra {
        let period = rate.period.as_nanos();
        let count = u128::from(rate.count.max(1));
        let interval = period.div_ceil(count).max(1);
        Gcra {
            rate,
            interval,
            tolerance: u128::from(rate.count) * interval,
            tat: AtomicU64::new(0),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes `cost` units at `now` if allowed (all-or-nothing), else takes nothing.
    ///
    /// On success the snapshot is the state after taking.
    pub fn take(&self, cost: u64, now: Nanos) -> Result<Snapshot, Denied> {
        if cost == 0 {
            return Ok(self.snapshot(now));
        }
        if cost > self.rate.count {
            return Err(self.never(now));
        }
        let advance = self.advance(cost);
        let mut after = 0;
        let update = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                let next = self.after_take(tat, advance, now);
                after = next.unwrap_or(tat);
                next
            });
        match update {
            Ok(_) => Ok(self.snapshot_at(after, now)),
            Err(tat) => Err(self.denied(tat, advance, now)),
        }
    }

    /// Whether `cost` could be taken at `now`, taking nothing — to refuse an upload whose
    /// `Content-Length` is already over before reading it.
    ///
    /// On success the snapshot is the current state (nothing was taken).
    pub fn check(&self, cost: u64, now: Nanos) -> Result<Snapshot, Denied> {
        if cost > self.rate.count {
            return Err(self.never(now));
        }
        let tat = self.tat.load(Ordering::Relaxed);
        let advance = self.advance(cost);
        match self.after_take(tat, advance, now) {
            Some(_) => Ok(self.snapshot_at(tat, now)),
            None => Err(self.denied(tat, advance, now)),
        }
    }

    /// Gives back `cost` units taken earlier, as for a request that failed on every
    /// upstream.
    ///
    /// TAT moves back by `cost*T` but never before `now`, and TAT at `now` already means
    /// full: so a refund restores at most what refill has not already restored, and
    /// refunding more than was taken cannot push the bucket past its burst.
    pub fn refund(&self, cost: u64, now: Nanos) {
        let back = self.advance(cost);
        // An `Err` means TAT is already at or before now: full, nothing to give back.
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                (tat > now).then(|| to_nanos(u128::from(tat).saturating_sub(back)).max(now))
            });
    }

    pub fn snapshot(&self, now: Nanos) -> Snapshot {
        self.snapshot_at(self.tat.load(Ordering::Relaxed), now)
    }

    /// `cost * T`, the time `cost` units move TAT by.
    fn advance(&self, cost: u64) -> u128 {
        u128::from(cost) * self.interval
    }

    /// The TAT after moving it by `advance` at `now`, or `None` if that would run more than
    /// the tolerance ahead of now (the GCRA test `max(TAT, now) + c*T - now <= N*T`).
    fn after_take(&self, tat: Nanos, advance: u128, now: Nanos) -> Option<Nanos> {
        let ahead = u128::from(tat.saturating_sub(now)) + advance;
        (ahead <= self.tolerance).then(|| to_nanos(u128::from(now) + ahead))
    }

    /// A refusal for a cost that fits the burst: it passes once TAT has come within
    /// `N*T - c*T` of now, i.e. at `TAT + c*T - N*T`.
    fn denied(&self, tat: Nanos, advance: u128, now: Nanos) -> Denied {
        let passes_at = (u128::from(tat) + advance).saturating_sub(self.tolerance);
        let wait = passes_at.saturating_sub(u128::from(now));
        Denied {
            retry_after: Some(Duration::from_nanos(to_nanos(wait))),
            snapshot: self.snapshot_at(tat, now),
        }
    }

    /// A refusal for a cost over the burst, which no amount of waiting admits.
    fn never(&self, now: Nanos) -> Denied {
        Denied {
            retry_after: None,
            snapshot: self.snapshot(now),
        }
    }

    /// The snapshot for a TAT: what is left of the tolerance, in whole units.
    fn snapshot_at(&self, tat: Nanos, now: Nanos) -> Snapshot {
        let ahead = tat.saturating_sub(now);
        let free = self.tolerance.saturating_sub(u128::from(ahead));
        let remaining = u64::try_from(free / self.interval).unwrap_or(u64::MAX);
        Snapshot {
            limit: self.rate.count,
            remaining: remaining.min(self.rate.count),
            reset: Duration::from_nanos(ahead),
        }
    }
}

/// Nanoseconds past `u64` only arise from absurd rates or clocks; saturate rather than wrap.
fn to_nanos(value: u128) -> Nanos {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// Takes from several limiters at once, all or none: a request counts against its key's
/// request, character and byte limits together.
///
/// Takes in order; on the first denial, refunds what it already took (at the same `now`)
/// and returns that denial — the first limiter that refused, not the longest wait.
///
/// Never over-admits: each limiter only ever admits what its own `take` allows, and a
/// refund exactly undoes a take judged at the same instant. It may briefly over-deny under
/// concurrency: while units taken here await their refund, another caller can be refused by
/// a limiter that would have let it through. (A refund racing a taker that passed a *later*
/// `now` may credit back up to the refill between the two readings — nanoseconds' worth
/// when both come from [`now`].)
pub fn take_all(takes: &[(&Gcra, u64)], now: Nanos) -> Result<Vec<Snapshot>, Denied> {
    let mut snapshots = Vec::with_capacity(takes.len());
    for (taken, &(limiter, cost)) in takes.iter().enumerate() {
        match limiter.take(cost, now) {
            Ok(snapshot) => snapshots.push(snapshot),
            Err(denied) => {
                for &(earlier, cost) in takes[..taken].iter().rev() {
                    earlier.refund(cost, now);
                }
                return Err(denied);
            }
        }
    }
    Ok(snapshots)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Nanos = 1_000_000_000;

    fn rate(count: u64, secs: u64) -> Rate {
        Rate {
            count,
            period: Duration::from_secs(secs),
        }
    }

    fn per_min(count: u64) -> Gcra {
        Gcra::new(rate(count, 60))
    }

    #[test]
    fn parses_request_and_character_rates() {
        assert_eq!(parse_rate("60/min", false), Ok(rate(60, 60)));
        assert_eq!(parse_rate("20000/hour", false), Ok(rate(20_000, 3_600)));
        assert_eq!(parse_rate("1/s", false), Ok(rate(1, 1)));
        assert_eq!(parse_rate("5/SEC", false), Ok(rate(5, 1)));
        assert_eq!(parse_rate(" 7 / Day ", false), Ok(rate(7, 86_400)));
        assert_eq!(parse_rate("3/m", false), Ok(rate(3, 60)));
    }

    #[test]
    fn parses_byte_rates_in_binary_and_decimal_units() {
        assert_eq!(
            parse_rate("200MiB/day", true),
            Ok(rate(200 * 1024 * 1024, 86_400))
        );
        assert_eq!(
            parse_rate("2 GB/hour", true),
            Ok(rate(2_000_000_000, 3_600))
        );
        assert_eq!(parse_rate("512kib/min", true), Ok(rate(512 * 1024, 60)));
        assert_eq!(parse_rate("100B/s", true), Ok(rate(100, 1)));
        assert_eq!(parse_rate("100/s", true), Ok(rate(100, 1)));
    }

    #[test]
    fn refuses_malformed_rates() {
        for text in [
            "1.5KiB/min",
            "0/min",
            "0KiB/min",
            "60",
            "60/fortnight",
            "/min",
            "-5/min",
            "60/",
            "",
        ] {
            assert!(parse_rate(text, true).is_err(), "{text:?} was accepted");
        }
        assert!(parse_rate("10MiB/day", false).is_err());
        assert!(parse_rate("10parsecs/day", true).is_err());
    }

    #[test]
    fn refuses_overflowing_and_sub_nanosecond_rates() {
        assert!(parse_rate("99999999999999999999/day", false).is_err());
        assert!(parse_rate("20000000000GiB/day", true).is_err());
        assert!(parse_rate("2GB/s", true).is_err());
        assert_eq!(parse_rate("1GB/s", true), Ok(rate(1_000_000_000, 1)));
    }

    #[test]
    fn rate_errors_are_short_and_do_not_echo_input() {
        let error = parse_rate("60/fortnight", false).unwrap_err();
        assert!(!error.contains("fortnight"), "{error}");
        assert_eq!(
            parse_rate("60", false).unwrap_err(),
            "expected `N/sec`, `N/min`, `N/hour` or `N/day`"
        );
    }

    #[test]
    fn displays_rates_so_they_parse_back() {
        for text in ["60/min", "20000/hour", "1/sec", "209715200/day"] {
            let parsed = parse_rate(text, true).unwrap();
            assert_eq!(parsed.to_string(), text);
            assert_eq!(parse_rate(&parsed.to_string(), true), Ok(parsed));
        }
        assert_eq!(rate(10, 90).to_string(), "10 per 1m 30s");
    }

    #[test]
    fn full_burst_passes_at_once_then_waits_exactly_one_interval() {
        let limiter = per_min(60);
        for _ in 0..60 {
            assert!(limiter.take(1, 0).is_ok());
        }
        let denied = limiter.take(1, 0).unwrap_err();
        assert_eq!(denied.retry_after, Some(Duration::from_secs(1)));
        assert_eq!(denied.snapshot.remaining, 0);
        assert!(limiter.take(1, SEC - 1).is_err());
        assert!(limiter.take(1, SEC).is_ok());
        assert!(limiter.take(1, SEC).is_err());
    }

    #[test]
    fn burst_is_exact_when_the_count_does_not_divide_the_period() {
        let limiter = per_min(7);
        for _ in 0..7 {
            assert!(limiter.take(1, 5).is_ok());
        }
        let denied = limiter.take(1, 5).unwrap_err();
        // 60 s / 7 rounded up to the nanosecond.
        assert_eq!(
            denied.retry_after,
            Some(Duration::from_nanos(8_571_428_572))
        );
    }

    #[test]
    fn retry_after_accounts_for_the_cost() {
        let limiter = per_min(60);
        assert!(limiter.take(50, 0).is_ok());
        let denied = limiter.take(20, 0).unwrap_err();
        assert_eq!(denied.retry_after, Some(Duration::from_secs(10)));
        assert!(limiter.take(20, 10 * SEC - 1).is_err());
        assert!(limiter.take(20, 10 * SEC).is_ok());
    }

    #[test]
    fn steady_refill_admits_exactly_the_theoretical_number_over_an_hour() {
        let limiter = per_min(60);
        let half_second = SEC / 2;
        let passed = (0..=7_200)
            .filter(|step| limiter.take(1, step * half_second).is_ok())
            .count();
        // A full bucket of 60 at 0 s, then one refilled per second up to and including
        // 3600 s.
        assert_eq!(passed, 60 + 3_600);
    }

    #[test]
    fn steady_refill_passes_once_per_interval_after_the_burst() {
        let limiter = per_min(60);
        assert!(limiter.take(60, 0).is_ok());
        let passed_at: Vec<Nanos> = (1..=40)
            .map(|step| step * SEC / 4)
            .filter(|&at| limiter.take(1, at).is_ok())
            .collect();
        assert_eq!(passed_at, (1..=10).map(|s| s * SEC).collect::<Vec<_>>());
    }

    #[test]
    fn cost_over_the_burst_never_passes() {
        let limiter = per_min(60);
        let denied = limiter.take(61, 0).unwrap_err();
        assert_eq!(denied.retry_after, None);
        assert_eq!(denied.snapshot.remaining, 60);
        assert_eq!(limiter.check(61, 0).unwrap_err().retry_after, None);
    }

    #[test]
    fn cost_equal_to_the_burst_passes_on_a_fresh_limiter() {
        let limiter = per_min(60);
        let snapshot = limiter.take(60, 0).unwrap();
        assert_eq!(snapshot.remaining, 0);
        assert_eq!(snapshot.reset, Duration::from_secs(60));
    }

    #[test]
    fn zero_cost_always_passes_and_takes_nothing() {
        let limiter = per_min(2);
        assert!(limiter.take(2, 0).is_ok());
        assert_eq!(limiter.take(0, 0).map(|s| s.remaining), Ok(0));
        assert!(limiter.check(0, 0).is_ok());
        assert_eq!(limiter.snapshot(0).reset, Duration::from_secs(60));
    }

    #[test]
    fn zero_rate_admits_nothing_but_zero_costs() {
        let limiter = per_min(0);
        assert_eq!(limiter.take(1, 0).unwrap_err().retry_after, None);
        assert!(limiter.take(0, 0).is_ok());
    }

    #[test]
    fn snapshot_reports_remaining_and_reset() {
        let limiter = per_min(60);
        let full = Snapshot {
            limit: 60,
            remaining: 60,
            reset: Duration::ZERO,
        };
        assert_eq!(limiter.snapshot(0), full);
        assert!(limiter.take(10, 0).is_ok());
        assert_eq!(limiter.snapshot(0).remaining, 50);
        assert_eq!(limiter.snapshot(0).reset, Duration::from_secs(10));
        // 2.5 s later: 2.5 units refilled, reported rounded down.
        let later = limiter.snapshot(2 * SEC + SEC / 2);
        assert_eq!(later.remaining, 52);
        assert_eq!(later.reset, Duration::from_millis(7_500));
        assert_eq!(limiter.snapshot(10 * SEC), full);
        assert_eq!(limiter.snapshot(100 * SEC), full);
    }

    #[test]
    fn refund_gives_back_only_what_was_refunded() {
        let limiter = per_min(3);
        assert!(limiter.take(3, 0).is_ok());
        limiter.refund(1, 0);
        assert!(limiter.take(1, 0).is_ok());
        assert!(limiter.take(1, 0).is_err());
    }

    #[test]
    fn refunding_more_than_was_taken_never_exceeds_the_burst() {
        let limiter = per_min(3);
        assert!(limiter.take(1, 0).is_ok());
        limiter.refund(10, 0);
        assert_eq!(limiter.snapshot(0).remaining, 3);
        limiter.refund(10, 5 * SEC);
        assert_eq!(limiter.snapshot(5 * SEC).remaining, 3);
        assert!(limiter.take(3, 5 * SEC).is_ok());
        assert!(limiter.take(1, 5 * SEC).is_err());
    }

    #[test]
    fn refund_after_refill_only_tops_up_to_full() {
        let limiter = per_min(3);
        assert!(limiter.take(3, 0).is_ok());
        // 40 s later two of three have refilled; refunding all three only fills the last.
        limiter.refund(3, 40 * SEC);
        assert!(limiter.take(3, 40 * SEC).is_ok());
        assert!(limiter.take(1, 40 * SEC).is_err());
    }

    #[test]
    fn check_takes_nothing() {
        let limiter = per_min(3);
        for _ in 0..10 {
            assert_eq!(limiter.check(2, 0).map(|s| s.remaining), Ok(3));
        }
        assert!(limiter.take(3, 0).is_ok());
        let denied = limiter.check(1, 0).unwrap_err();
        assert_eq!(denied.retry_after, Some(Duration::from_secs(20)));
        assert!(limiter.check(1, 20 * SEC).is_ok());
        assert!(limiter.take(1, 20 * SEC).is_ok());
    }

    #[test]
    fn take_all_takes_from_every_limiter() {
        let requests = per_min(10);
        let chars = per_min(1_000);
        let snapshots = take_all(&[(&requests, 1), (&chars, 400)], 0).unwrap();
        assert_eq!(snapshots[0].remaining, 9);
        assert_eq!(snapshots[1].remaining, 600);
    }

    #[test]
    fn take_all_gives_back_what_it_took_when_a_later_limiter_denies() {
        let requests = per_min(10);
        let chars = per_min(1_000);
        assert!(chars.take(900, 0).is_ok());
        let denied = take_all(&[(&requests, 1), (&chars, 400)], 0).unwrap_err();
        assert_eq!(denied.snapshot.limit, 1_000);
        assert_eq!(denied.retry_after, Some(Duration::from_secs(18)));
        assert_eq!(requests.snapshot(0).remaining, 10);
        assert_eq!(chars.snapshot(0).remaining, 100);
    }

    #[test]
    fn threads_hammering_one_limiter_get_exactly_the_burst() {
        let limiter = Gcra::new(rate(100, 3_600));
        let passed: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| (0..100).filter(|_| limiter.take(1, 7).is_ok()).count()))
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(passed, 100);
        assert_eq!(limiter.snapshot(7).remaining, 0);
    }

    #[test]
    fn take_all_under_contention_never_admits_more_than_either_limiter_allows() {
        let first = Gcra::new(rate(50, 3_600));
        let second = Gcra::new(rate(30, 3_600));
        let passed: u64 = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|worker| {
                    let (first, second) = (&first, &second);
                    scope.spawn(move || {
                        // Half the workers take in the other order, so both get refunds.
                        let takes = if worker % 2 == 0 {
                            [(first, 1), (second, 1)]
                        } else {
                            [(second, 1), (first, 1)]
                        };
                        (0..200).filter(|_| take_all(&takes, 7).is_ok()).count() as u64
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert!(passed <= 30, "{passed} admitted");
        // Every refund landed: each limiter is down by exactly what was admitted, and the
        // rest of the smaller burst is still there to take.
        assert_eq!(first.snapshot(7).remaining, 50 - passed);
        assert_eq!(second.snapshot(7).remaining, 30 - passed);
        let rest = (0..100)
            .filter(|_| take_all(&[(&first, 1), (&second, 1)], 7).is_ok())
            .count() as u64;
        assert_eq!(passed + rest, 30);
    }

    #[test]
    fn now_is_monotonic() {
        let earlier = now();
        let later = now();
        assert!(later >= earlier);
    }
}
