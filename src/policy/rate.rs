//! TEMPORARY stub (replaced by the policy-rate branch).
use std::time::Duration;
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate { pub count: u64, pub period: Duration }
pub fn parse_rate(text: &str, _sizes: bool) -> Result<Rate, String> {
    let (n, p) = text.split_once('/').ok_or("expected `N/min`")?;
    let count = n.trim().parse().map_err(|_| "bad".to_string())?;
    let period = match p { "sec" => 1, "min" => 60, "hour" => 3600, "day" => 86400, _ => return Err("bad unit".into()) };
    Ok(Rate { count, period: Duration::from_secs(period) })
}
pub type Nanos = u64;
pub fn now() -> Nanos { 0 }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot { pub limit: u64, pub remaining: u64, pub reset: Duration }
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denied { pub retry_after: Option<Duration>, pub snapshot: Snapshot }
#[derive(Debug)]
pub struct Gcra { rate: Rate }
impl Gcra {
    pub fn new(rate: Rate) -> Gcra { Gcra { rate } }
    pub fn rate(&self) -> Rate { self.rate }
    pub fn take(&self, _cost: u64, _now: Nanos) -> Result<Snapshot, Denied> { Ok(self.snapshot(0)) }
    pub fn check(&self, _cost: u64, _now: Nanos) -> Result<Snapshot, Denied> { Ok(self.snapshot(0)) }
    pub fn refund(&self, _cost: u64, _now: Nanos) {}
    pub fn snapshot(&self, _now: Nanos) -> Snapshot { Snapshot { limit: self.rate.count, remaining: self.rate.count, reset: Duration::ZERO } }
}
pub fn take_all(takes: &[(&Gcra, u64)], now: Nanos) -> Result<Vec<Snapshot>, Denied> {
    takes.iter().map(|(g, c)| g.take(*c, now)).collect()
}
