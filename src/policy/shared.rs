//! Shared state: the limits and the TTS cache of many voxgate instances, kept in one Redis.
//!
//! Behind a load balancer every instance holds its own limiters and cache, so a client
//! spreading requests over `k` instances gets `k` times its limit, and each instance
//! synthesises what another one already cached. [`Shared`] moves both into Redis: the same
//! GCRA as [`rate`], run atomically by a Lua script on Redis's clock, and a cache tier of
//! `(content type, body)` entries under a TTL.
//!
//! Redis is an optimisation, never a dependency. Every call on the request path is bounded
//! by `timeout` (20 ms by default), and a circuit breaker turns an outage into an immediate
//! [`Unavailable`]: the first timeout or broken connection marks Redis down, every later
//! call fails without touching the network, and a background task probes every
//! [`PROBE_INTERVAL`] until Redis answers again. A dead Redis therefore costs a request at
//! most one `timeout`, once per outage, and the caller falls back to its local limiters and
//! cache meanwhile — one `warn!` when it goes, one `info!` when it is back. (An error reply,
//! such as `OOM` or `READONLY`, fails only its own call: Redis is answering in time.)
//!
//! Connections: two multiplexed connections ("lanes"), one for limits and one for the
//! cache. Redis runs commands on one thread, so more connections would add no parallelism
//! on its side; one multiplexed connection pipelines the commands of every task and thread
//! over one socket. The second lane is there so that a cache entry of up to
//! `max_entry_bytes` in flight never sits in front of a limiter's few bytes in the same
//! byte stream, where it could push them past their 20 ms.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::HeaderValue;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, RedisResult, Script};
use tokio::sync::Notify;
use tokio::time::error::Elapsed;

use super::rate::{self, Denied, Rate, Snapshot};

/// How often the background task tries Redis again during an outage.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How to reach Redis and what to keep there.
#[derive(Clone, PartialEq)]
pub struct SharedSettings {
    /// `redis://[user][:password@]host:port/db`, or `rediss://` for TLS (rustls, webpki
    /// roots). Shown by `Debug` with the password replaced by `***`.
    pub url: String,
    /// Per command on the request path.
    pub timeout: Duration,
    /// For connecting and for each probe during an outage.
    pub connect_timeout: Duration,
    /// Cache entries larger than this stay local.
    pub max_entry_bytes: u64,
    /// Prepended to every key, so several deployments can share one Redis.
    pub prefix: String,
}

impl SharedSettings {
    /// Whether the URL is one the Redis client accepts, so a configuration can be refused
    /// at load rather than found dead at run time. The error never contains the password.
    pub fn validate(&self) -> Result<(), String> {
        Client::open(self.url.as_str())
            .map(drop)
            .map_err(|error| Redactor::for_url(&self.url, None).scrub(&error.to_string()))
    }
}

impl fmt::Debug for SharedSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSettings")
            .field("url", &redact_url(&self.url))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// `url` with the password of its user info replaced by `***`.
///
/// The user info is taken to end at the *last* `@`, so a password with an unescaped `@`,
/// `/` or `?` in it is still hidden whole (at worst more than the password is). A user
/// name without a password is shown: it names an ACL user, it is not a secret.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = rest.split_at(at);
    match userinfo.find(':') {
        Some(colon) => format!("{scheme}{}:***{host}", &userinfo[..colon]),
        // Without a scheme we cannot tell a user name from anything else: hide it all.
        None if scheme.is_empty() => format!("***{host}"),
        None => url.to_owned(),
    }
}

/// Removes a URL's password from text that may quote it: a client's error messages are
/// not ours to trust with a secret.
#[derive(Clone, Default)]
struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// The password as written in the URL (perhaps percent-encoded) and as decoded.
    fn for_url(url: &str, decoded: Option<&str>) -> Redactor {
        let mut secrets = Vec::new();
        let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
        if let Some((userinfo, _)) = rest.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                secrets.push(password.to_owned());
            }
        }
        secrets.extend(decoded.map(str::to_owned));
        secrets.retain(|secret| !secret.is_empty());
        // Longest first, so a password containing another secret is replaced whole.
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        Redactor { secrets }
    }

    fn scrub(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_owned(), |text, secret| text.replace(secret, "***"))
    }
}

/// Redis is down, slow or erroring: the caller uses its local state instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shared state (Redis) is unavailable")]
pub struct Unavailable;

/// How shared state stands, for `/status` and metrics.
#[derive(Debug, Clone)]
pub struct SharedStatus {
    /// Connected and answering: calls go to Redis.
    pub up: bool,
    /// When `up` last changed (or when this started).
    pub since: SystemTime,
    /// Times Redis went from answering (or starting) to unavailable.
    pub outages: u64,
    /// Requests that used local state because Redis was unavailable ([`Shared::note_fallback`]).
    pub fallbacks: u64,
    /// The latest failure, without the password.
    pub last_error: Option<String>,
}

/// The two connections to Redis while it is up; see the module doc for why two.
struct Link {
    limits: MultiplexedConnection,
    cache: MultiplexedConnection,
}

/// What the breaker remembers besides the link itself.
struct Health {
    since: SystemTime,
    /// An outage has been logged and not yet ended; covers a first connection that failed.
    in_outage: bool,
    last_error: Option<String>,
    /// When an error reply was last logged (a [`rate::now`] reading), to log them sparingly.
    error_reply_logged: Option<rate::Nanos>,
}

/// Limits and the TTS cache in Redis, shared by every instance that points at it.
pub struct Shared {
    settings: SharedSettings,
    /// `host:port`, for log lines.
    target: String,
    redactor: Redactor,
    /// `Some` exactly while Redis is up: the breaker is this one pointer, so the request
    /// path reads it without a lock. Only writers take `health`'s lock, and they all do.
    link: ArcSwapOption<Link>,
    health: Mutex<Health>,
    outages: AtomicU64,
    fallbacks: AtomicU64,
    /// Wakes the prober when Redis goes down, or when this is dropped.
    wake: Arc<Notify>,
    /// For spawned cache writes, which must not keep this alive.
    this: Weak<Shared>,
}

/// The limiter as a Lua script: a round trip per call, atomic because Redis runs a script
/// alone, and on Redis's clock (`TIME`), so instances need no synchronised clocks.
///
/// Lua's numbers are doubles, exact up to 2^53: too few for nanoseconds since 1970, so the
/// TAT is stored as `seconds:nanoseconds`, and the script only ever does arithmetic on
/// `TAT - now`, which stays within the tolerance (a day is 8.6e13 ns). The caller passes the
/// tolerance and the advance `cost * T` precomputed, exactly as [`rate::Gcra`] computes them.
///
/// Returns `{allowed, ahead}`: 1 or 0, and TAT − now in nanoseconds after the call (as it
/// stands, when refused). The key expires when TAT passes, since an absent key means full.
const GCRA_LUA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local mode = ARGV[1]
local tolerance = tonumber(ARGV[2])
local advance = tonumber(ARGV[3])
local time = redis.call('TIME')
local now_s = tonumber(time[1])
local now_ns = tonumber(time[2]) * 1000

local ahead = 0
local stored = redis.call('GET', KEYS[1])
if stored then
  local s, ns = string.match(stored, '^(%d+):(%d+)$')
  if s then
    ahead = (tonumber(s) - now_s) * 1000000000 + (tonumber(ns) - now_ns)
  end
end
-- A TAT past means full. One beyond the tolerance only comes from a clock that stepped
-- back or a rate lowered since: held to one period rather than locking a client out.
ahead = math.max(0, math.min(ahead, tolerance))

local function store(new_ahead)
  if new_ahead <= 0 then
    redis.call('DEL', KEYS[1])
    return
  end
  local total = now_ns + new_ahead
  local s = math.floor(total / 1000000000)
  local ns = total - s * 1000000000
  redis.call('SET', KEYS[1], string.format('%d:%d', now_s + s, ns),
    'PX', math.ceil(new_ahead / 1000000))
end

if mode == 'refund' then
  if ahead > 0 then store(math.max(ahead - advance, 0)) end
  return {1, 0}
end
local after = ahead + advance
if after > tolerance then
  return {0, ahead}
end
if mode == 'take' and advance > 0 then
  store(after)
  return {1, after}
end
return {1, ahead}
"#;

/// Every limiter of one request at once, all or none, atomically: `KEYS[i]` with
/// `ARGV[2i-1]` its tolerance and `ARGV[2i]` the request's advance, each as [`GCRA_LUA`]
/// computes them. Returns `{0, i, ahead_i}` for the first limiter that refuses (nothing
/// taken), else `{1, ahead_1, …, ahead_n}` after taking from all.
const GCRA_ALL_LUA: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now_s = tonumber(time[1])
local now_ns = tonumber(time[2]) * 1000
local after = {}
for i, key in ipairs(KEYS) do
  local tolerance = tonumber(ARGV[2 * i - 1])
  local advance = tonumber(ARGV[2 * i])
  local ahead = 0
  local stored = redis.call('GET', key)
  if stored then
    local s, ns = string.match(stored, '^(%d+):(%d+)$')
    if s then
      ahead = (tonumber(s) - now_s) * 1000000000 + (tonumber(ns) - now_ns)
    end
  end
  ahead = math.max(0, math.min(ahead, tolerance))
  if ahead + advance > tolerance then
    return {0, i, ahead}
  end
  after[i] = ahead + advance
end
local out = {1}
for i, key in ipairs(KEYS) do
  local new_ahead = after[i]
  if new_ahead > 0 then
    local total = now_ns + new_ahead
    local s = math.floor(total / 1000000000)
    local ns = total - s * 1000000000
    redis.call('SET', key, string.format('%d:%d', now_s + s, ns),
      'PX', math.ceil(new_ahead / 1000000))
  end
  out[i + 1] = new_ahead
end
return out
"#;

static GCRA_ALL: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_ALL_LUA));

/// Loaded once per connection (and again by `EVALSHA`'s `NOSCRIPT` fallback, after a
/// restart or `SCRIPT FLUSH`); called by its SHA, so a call sends a few dozen bytes.
static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_LUA));

/// Largest tolerance the script computes exactly in a double: 2^53 ns, 104 days.
const EXACT_NANOS: u128 = 1 << 53;

#[derive(Clone, Copy)]
enum Mode {
    Take,
    Check,
    Refund,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Take => "take",
            Mode::Check => "check",
            Mode::Refund => "refund",
        }
    }
}

/// A rate as the GCRA sees it; computed as [`rate::Gcra::new`] does, so the two agree to
/// the nanosecond.
#[derive(Clone, Copy)]
struct Params {
    count: u64,
    /// `T`: the period over the count, rounded up, at least 1 ns.
    interval: u128,
    /// `N * T`.
    tolerance: u128,
}

impl Params {
    /// `None` for periods past [`EXACT_NANOS`], which stay local (no rate that parses has
    /// them: the longest period is a day).
    fn new(rate: Rate) -> Option<Params> {
        let interval = rate
            .period
            .as_nanos()
            .div_ceil(u128::from(rate.count.max(1)))
            .max(1);
        let tolerance = u128::from(rate.count) * interval;
        (tolerance < EXACT_NANOS).then_some(Params {
            count: rate.count,
            interval,
            tolerance,
        })
    }

    fn advance(&self, cost: u64) -> u128 {
        u128::from(cost) * self.interval
    }

    fn snapshot(&self, ahead: u128) -> Snapshot {
        let free = self.tolerance.saturating_sub(ahead);
        let remaining = u64::try_from(free / self.interval).unwrap_or(u64::MAX);
        Snapshot {
            limit: self.count,
            remaining: remaining.min(self.count),
            reset: nanos(ahead),
        }
    }

    /// A refusal: the cost passes once TAT is within `N*T - c*T` of now.
    fn denied(&self, ahead: u128, advance: u128) -> Denied {
        Denied {
            retry_after: Some(nanos((ahead + advance).saturating_sub(self.tolerance))),
            snapshot: self.snapshot(ahead),
        }
    }
}

fn nanos(value: u128) -> Duration {
    Duration::from_nanos(u64::try_from(value).unwrap_or(u64::MAX))
}

/// How a call went wrong, which decides whether Redis counts as down.
enum Failure {
    /// No answer within the budget: down.
    Slow(Duration),
    /// The connection failed: down.
    Broken(RedisError),
    /// Redis answered with an error (out of memory, read-only replica, a foreign value at
    /// our key): this call falls back, but Redis is answering within its budget, so the
    /// breaker stays closed — opening it would not make these cheaper, only flap.
    Reply(RedisError),
}

impl Failure {
    fn of(error: RedisError) -> Failure {
        if error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error() {
            Failure::Broken(error)
        } else {
            Failure::Reply(error)
        }
    }
}

/// Error replies are logged at most this often; `last_error` shows the latest.
const ERROR_REPLY_LOG_INTERVAL: rate::Nanos = 60_000_000_000;

impl Shared {
    /// Starts at once and never blocks: connects in the background (so it must be called
    /// inside a tokio runtime). Until connected every call returns [`Unavailable`].
    pub fn start(settings: SharedSettings) -> Arc<Shared> {
        let client = Client::open(settings.url.as_str());
        let (target, redactor) = match &client {
            Ok(client) => {
                let info = client.get_connection_info();
                (
                    info.addr().to_string(),
                    Redactor::for_url(&settings.url, info.redis_settings().password()),
                )
            }
            Err(_) => (
                redact_url(&settings.url),
                Redactor::for_url(&settings.url, None),
            ),
        };
        let wake = Arc::new(Notify::new());
        let shared = Arc::new_cyclic(|this| Shared {
            settings,
            target,
            redactor,
            link: ArcSwapOption::empty(),
            health: Mutex::new(Health {
                since: SystemTime::now(),
                in_outage: false,
                last_error: None,
                error_reply_logged: None,
            }),
            outages: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            wake: wake.clone(),
            this: this.clone(),
        });
        match client {
            Ok(client) => {
                let connect_timeout = shared.settings.connect_timeout;
                tokio::spawn(keep_connected(
                    Arc::downgrade(&shared),
                    client,
                    wake,
                    connect_timeout,
                ));
            }
            // Config validation ([`SharedSettings::validate`]) should have refused it; if
            // not, this is one long outage, said once.
            Err(error) => {
                let why = shared.redactor.scrub(&format!("invalid URL: {error}"));
                shared.probe_failed(why);
            }
        }
        shared
    }

    pub fn settings(&self) -> &SharedSettings {
        &self.settings
    }

    /// Takes `cost` units from the limiter `key` if allowed (all or nothing), with the
    /// semantics of [`rate::Gcra::take`]. One round trip, bounded by `timeout`.
    pub async fn take(
        &self,
        key: &str,
        rate: Rate,
        cost: u64,
    ) -> Result<Result<Snapshot, Denied>, Unavailable> {
        self.limit(key, rate, cost, Mode::Take).await
    }

    /// Takes `cost` from every limiter of `limits` (keys and rates) in one round trip, all
    /// or none, atomically in Redis: the snapshots after taking, or the index of the first
    /// limiter that refused and its refusal (nothing taken). Bounded by `timeout`.
    pub async fn take_all(
        &self,
        limits: &[(String, Rate)],
        cost: u64,
    ) -> Result<Result<Vec<Snapshot>, (usize, Denied)>, Unavailable> {
        let mut params = Vec::with_capacity(limits.len());
        for (i, (key, rate)) in limits.iter().enumerate() {
            let p = Params::new(*rate).ok_or(Unavailable)?;
            if cost > p.count {
                // Never passes; the headers still want the limiter as it stands.
                let (_, ahead) = self.gcra(key, Mode::Check, p, 0).await?;
                let denied = Denied {
                    retry_after: None,
                    snapshot: p.snapshot(ahead),
                };
                return Ok(Err((i, denied)));
            }
            params.push(p);
        }
        let mut args = Vec::with_capacity(limits.len() * 2);
        for p in &params {
            // Below 2^53 (`Params::new`), so Lua reads them exactly.
            args.push(u64::try_from(p.tolerance).map_err(|_| Unavailable)?);
            args.push(u64::try_from(p.advance(cost)).map_err(|_| Unavailable)?);
        }
        let keys: Vec<String> = limits
            .iter()
            .map(|(key, _)| format!("{}rl:{key}", self.settings.prefix))
            .collect();
        let reply: Vec<i64> = self
            .call(
                |link| link.limits.clone(),
                self.settings.timeout,
                |mut connection| async move {
                    let mut invocation = GCRA_ALL.prepare_invoke();
                    for key in keys {
                        invocation.key(key);
                    }
                    for arg in args {
                        invocation.arg(arg);
                    }
                    invocation.invoke_async(&mut connection).await
                },
            )
            .await?;
        let ahead = |v: i64| u128::try_from(v).unwrap_or(0);
        match reply.split_first() {
            Some((1, aheads)) if aheads.len() == params.len() => Ok(Ok(params
                .iter()
                .zip(aheads)
                .map(|(p, a)| p.snapshot(ahead(*a)))
                .collect())),
            Some((0, [index, refused_ahead])) => {
                let i = usize::try_from(*index).map_err(|_| Unavailable)?;
                let p = i
                    .checked_sub(1)
                    .and_then(|i| params.get(i))
                    .ok_or(Unavailable)?;
                Ok(Err((
                    i - 1,
                    p.denied(ahead(*refused_ahead), p.advance(cost)),
                )))
            }
            _ => Err(Unavailable),
        }
    }

    /// Whether `cost` could be taken, taking nothing, as [`rate::Gcra::check`].
    pub async fn check(
        &self,
        key: &str,
        rate: Rate,
        cost: u64,
    ) -> Result<Result<Snapshot, Denied>, Unavailable> {
        self.limit(key, rate, cost, Mode::Check).await
    }

    /// Gives back `cost` units, as [`rate::Gcra::refund`]: never more than makes the bucket
    /// full. Best effort: a failure is only an outage signal.
    pub async fn refund(&self, key: &str, rate: Rate, cost: u64) {
        let Some(params) = Params::new(rate) else {
            return;
        };
        // More than the tolerance back is the same as the tolerance: full.
        let back = params.advance(cost).min(params.tolerance);
        let _ = self.gcra(key, Mode::Refund, params, back).await;
    }

    async fn limit(
        &self,
        key: &str,
        rate: Rate,
        cost: u64,
        mode: Mode,
    ) -> Result<Result<Snapshot, Denied>, Unavailable> {
        let params = Params::new(rate).ok_or(Unavailable)?;
        if cost > params.count {
            // Never passes, but the headers still want the limiter as it stands.
            let (_, ahead) = self.gcra(key, Mode::Check, params, 0).await?;
            return Ok(Err(Denied {
                retry_after: None,
                snapshot: params.snapshot(ahead),
            }));
        }
        let mode = if cost == 0 { Mode::Check } else { mode };
        let advance = params.advance(cost);
        let (allowed, ahead) = self.gcra(key, mode, params, advance).await?;
        Ok(if allowed {
            Ok(params.snapshot(ahead))
        } else {
            Err(params.denied(ahead, advance))
        })
    }

    /// Runs the script on the limits lane: `(allowed, TAT - now)`.
    async fn gcra(
        &self,
        key: &str,
        mode: Mode,
        params: Params,
        advance: u128,
    ) -> Result<(bool, u128), Unavailable> {
        let key = format!("{}rl:{key}", self.settings.prefix);
        // Both below 2^53 (checked by `Params::new`; the advance of a take is at most the
        // tolerance, a refund's is clamped to it), so they fit and Lua reads them exactly.
        let tolerance = u64::try_from(params.tolerance).map_err(|_| Unavailable)?;
        let advance = u64::try_from(advance).map_err(|_| Unavailable)?;
        let (allowed, ahead): (i64, i64) = self
            .call(
                |link| link.limits.clone(),
                self.settings.timeout,
                |mut connection| async move {
                    let mut invocation = GCRA.prepare_invoke();
                    invocation
                        .key(key)
                        .arg(mode.as_str())
                        .arg(tolerance)
                        .arg(advance);
                    invocation.invoke_async(&mut connection).await
                },
            )
            .await?;
        Ok((allowed == 1, u128::try_from(ahead).unwrap_or(0)))
    }

    /// The cached `(content type, body)` under `key`, `None` on a miss. Bounded by
    /// `timeout`. A value that does not decode (written by something else) is a miss.
    pub async fn cache_get(
        &self,
        key: &[u8; 32],
    ) -> Result<Option<(HeaderValue, Bytes)>, Unavailable> {
        let key = self.cache_key(key);
        let value: Option<Bytes> = self
            .call(
                |link| link.cache.clone(),
                self.settings.timeout,
                |mut connection| async move {
                    redis::cmd("GET")
                        .arg(key)
                        .query_async(&mut connection)
                        .await
                },
            )
            .await?;
        Ok(value.and_then(entry::decode))
    }

    /// Stores an entry for `ttl`, in the background: nobody waits for it, so it has ten
    /// times the request path's budget. Skipped while Redis is down, for bodies over
    /// `max_entry_bytes`, and for a zero TTL.
    pub fn cache_put(&self, key: [u8; 32], content_type: HeaderValue, body: Bytes, ttl: Duration) {
        let too_large =
            u64::try_from(body.len()).map_or(true, |len| len > self.settings.max_entry_bytes);
        let millis = u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        if too_large || millis == 0 {
            return;
        }
        let Some(link) = self.link.load_full() else {
            return;
        };
        let Some(value) = entry::encode(&content_type, &body) else {
            return;
        };
        let key = self.cache_key(&key);
        let budget = self.settings.timeout.saturating_mul(10);
        let this = self.this.clone();
        tokio::spawn(async move {
            let mut connection = link.cache.clone();
            let mut set = redis::cmd("SET");
            set.arg(key).arg(value).arg("PX").arg(millis);
            let outcome =
                tokio::time::timeout(budget, set.query_async::<()>(&mut connection)).await;
            if let Some(shared) = this.upgrade() {
                let _ = shared.settle(&link, budget, outcome);
            }
        });
    }

    fn cache_key(&self, key: &[u8; 32]) -> String {
        let mut redis_key = String::with_capacity(self.settings.prefix.len() + 4 + 64);
        redis_key.push_str(&self.settings.prefix);
        redis_key.push_str("tts:");
        for byte in key {
            redis_key.push(char::from(HEX[usize::from(byte >> 4)]));
            redis_key.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        redis_key
    }

    pub fn status(&self) -> SharedStatus {
        let health = self.health();
        SharedStatus {
            up: self.link.load().is_some(),
            since: health.since,
            outages: self.outages.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            last_error: health.last_error.clone(),
        }
    }

    /// Counts a request that used local state because a call returned [`Unavailable`].
    pub fn note_fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// One command on one lane, bounded by `budget`; fails at once while Redis is down.
    async fn call<T, F>(
        &self,
        lane: impl FnOnce(&Link) -> MultiplexedConnection,
        budget: Duration,
        command: impl FnOnce(MultiplexedConnection) -> F,
    ) -> Result<T, Unavailable>
    where
        F: Future<Output = RedisResult<T>>,
    {
        let link = self.link.load_full().ok_or(Unavailable)?;
        let outcome = tokio::time::timeout(budget, command(lane(&link))).await;
        self.settle(&link, budget, outcome)
    }

    /// Judges a call's outcome: a timeout or a broken connection opens the breaker.
    fn settle<T>(
        &self,
        link: &Arc<Link>,
        budget: Duration,
        outcome: Result<RedisResult<T>, Elapsed>,
    ) -> Result<T, Unavailable> {
        let failure = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => Failure::of(error),
            Err(_) => Failure::Slow(budget),
        };
        match failure {
            Failure::Slow(budget) => self.trip(
                link,
                format!("no answer within {}", humantime::format_duration(budget)),
            ),
            Failure::Broken(error) => self.trip(link, self.redactor.scrub(&error.to_string())),
            Failure::Reply(error) => self.error_reply(&error),
        }
        Err(Unavailable)
    }

    /// Opens the breaker, unless `link` is no longer the current one: a call that began
    /// before an outage (or before the last reconnection) must not end a newer link.
    fn trip(&self, link: &Arc<Link>, why: String) {
        let mut health = self.health();
        let current = self.link.load();
        if !current.as_ref().is_some_and(|now| Arc::ptr_eq(now, link)) {
            return;
        }
        self.link.store(None);
        self.begin_outage(&mut health, &why);
        health.last_error = Some(why);
        self.wake.notify_one();
    }

    fn error_reply(&self, error: &RedisError) {
        let why = self.redactor.scrub(&error.to_string());
        let mut health = self.health();
        let now = rate::now();
        let quiet = health
            .error_reply_logged
            .is_some_and(|at| now.saturating_sub(at) < ERROR_REPLY_LOG_INTERVAL);
        if !quiet {
            health.error_reply_logged = Some(now);
            tracing::warn!(
                "shared state (Redis at {}) answered with an error: {why}; that request used local state (said at most once a minute)",
                self.target
            );
        }
        health.last_error = Some(why);
    }

    /// An outage begins: counted, timed, and said once (the one warning of the outage).
    fn begin_outage(&self, health: &mut Health, why: &str) {
        health.in_outage = true;
        health.since = SystemTime::now();
        self.outages.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "shared state (Redis at {}) unavailable: {why}; limits and cache are local until it returns",
            self.target
        );
    }

    /// A connection attempt failed: the first one of an outage is an outage (the first
    /// connection at start included), later ones only update `last_error`.
    fn probe_failed(&self, why: String) {
        let mut health = self.health();
        if !health.in_outage {
            self.begin_outage(&mut health, &why);
        }
        health.last_error = Some(why);
    }

    fn connected(&self, link: Link) {
        let mut health = self.health();
        self.link.store(Some(Arc::new(link)));
        health.since = SystemTime::now();
        if std::mem::take(&mut health.in_outage) {
            tracing::info!(
                "shared state (Redis at {}) is back; limits and cache are shared again",
                self.target
            );
        } else {
            tracing::info!(
                "shared state (Redis at {}) connected; limits and cache are shared",
                self.target
            );
        }
    }

    /// The lock guards plain bookkeeping that stays consistent at every step, so a panic
    /// elsewhere while holding it leaves nothing to distrust.
    fn health(&self) -> MutexGuard<'_, Health> {
        self.health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("settings", &self.settings)
            .field("up", &self.link.load().is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The prober holds only a weak reference: wake it to find that out and end.
        self.wake.notify_one();
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The background task: while Redis is up it sleeps until a call trips the breaker; while
/// it is down it connects and probes every [`PROBE_INTERVAL`], each try bounded by
/// `connect_timeout`, and closes the breaker with the new connections once Redis answers.
///
/// Holds `shared` weakly and never across a wait, so dropping the last [`Shared`] ends it.
async fn keep_connected(
    shared: Weak<Shared>,
    client: Client,
    wake: Arc<Notify>,
    connect_timeout: Duration,
) {
    loop {
        let up = match shared.upgrade() {
            Some(shared) => shared.link.load().is_some(),
            None => return,
        };
        if up {
            // `notify_one` keeps a permit when nobody waits: no wake-up is lost between
            // the check above and this wait.
            wake.notified().await;
            continue;
        }
        let attempt = tokio::time::timeout(connect_timeout, connect(&client, connect_timeout));
        let attempt = attempt.await;
        let Some(strong) = shared.upgrade() else {
            return;
        };
        match attempt {
            Ok(Ok(link)) => {
                strong.connected(link);
                continue;
            }
            Ok(Err(error)) => strong.probe_failed(strong.redactor.scrub(&error.to_string())),
            Err(_) => strong.probe_failed(format!(
                "no answer within {}",
                humantime::format_duration(connect_timeout)
            )),
        }
        drop(strong);
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Opens both lanes and checks Redis answers (`PING`), then loads the limiter script so
/// the first `EVALSHA` finds it.
async fn connect(client: &Client, connect_timeout: Duration) -> RedisResult<Link> {
    // Our own timeouts bound every command; the client's would only race them.
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(None);
    let mut limits = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let cache = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("PING")
        .query_async::<String>(&mut limits)
        .await?;
    GCRA.load_async(&mut limits).await?;
    Ok(Link { limits, cache })
}

/// A cache entry as stored: a version byte, the content type's length (u16, big-endian),
/// the content type, then the body.
mod entry {
    use bytes::Bytes;
    use http::HeaderValue;

    const VERSION: u8 = 1;
    const HEADER: usize = 3;

    /// `None` for a content type too long to describe in two bytes (never a real one).
    pub(super) fn encode(content_type: &HeaderValue, body: &[u8]) -> Option<Vec<u8>> {
        let content_type = content_type.as_bytes();
        let length = u16::try_from(content_type.len()).ok()?;
        let mut value = Vec::with_capacity(HEADER + content_type.len() + body.len());
        value.push(VERSION);
        value.extend_from_slice(&length.to_be_bytes());
        value.extend_from_slice(content_type);
        value.extend_from_slice(body);
        Some(value)
    }

    /// `None` for anything not written by [`encode`]; the body shares `value`'s buffer.
    pub(super) fn decode(value: Bytes) -> Option<(HeaderValue, Bytes)> {
        let (&version, rest) = value.split_first()?;
        let length = rest.get(..2)?;
        let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
        if version != VERSION {
            return None;
        }
        let content_type = value.get(HEADER..HEADER + length)?;
        let content_type = HeaderValue::from_bytes(content_type).ok()?;
        Some((content_type, value.slice(HEADER + length..)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_the_password_of_a_url() {
        assert_eq!(
            redact_url("redis://:hunter2@cache.internal:6379/0"),
            "redis://:***@cache.internal:6379/0"
        );
        assert_eq!(
            redact_url("rediss://voxgate:s%40cret@cache:6380/2"),
            "rediss://voxgate:***@cache:6380/2"
        );
    }

    #[test]
    fn redacts_passwords_with_unescaped_at_slash_and_question_mark() {
        assert_eq!(
            redact_url("redis://:pa@ss/w?rd@host:6379/0"),
            "redis://:***@host:6379/0"
        );
    }

    #[test]
    fn leaves_urls_without_a_password_alone() {
        for url in [
            "redis://127.0.0.1:6379/0",
            "rediss://cache.internal",
            "redis://reader@cache:6379",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }

    #[test]
    fn hides_all_user_info_when_there_is_no_scheme() {
        assert_eq!(redact_url("secret@host:6379"), "***@host:6379");
    }

    #[test]
    fn debug_of_settings_never_shows_the_password() {
        let settings = SharedSettings {
            url: "redis://admin:hunter2@cache:6379/1".to_owned(),
            timeout: Duration::from_millis(20),
            connect_timeout: Duration::from_secs(1),
            max_entry_bytes: 1 << 20,
            prefix: "voxgate:".to_owned(),
        };
        let debug = format!("{settings:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("redis://admin:***@cache:6379/1"), "{debug}");
    }

    #[test]
    fn scrubs_the_password_as_written_and_as_decoded() {
        let redactor = Redactor::for_url("redis://:p%40ss@host/0", Some("p@ss"));
        assert_eq!(
            redactor.scrub("auth p@ss failed, p%40ss too"),
            "auth *** failed, *** too"
        );
    }

    #[test]
    fn validation_errors_never_show_the_password() {
        let settings = SharedSettings {
            url: "redis://:hunter2@host:notaport/0".to_owned(),
            timeout: Duration::from_millis(20),
            connect_timeout: Duration::from_secs(1),
            max_entry_bytes: 1 << 20,
            prefix: "voxgate:".to_owned(),
        };
        let error = settings.validate().unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn params_match_the_in_process_limiter() {
        let rate = Rate {
            count: 7,
            period: Duration::from_secs(60),
        };
        let params = Params::new(rate).unwrap();
        assert_eq!(params.interval, 8_571_428_572);
        assert_eq!(params.tolerance, 7 * 8_571_428_572);
        let local = rate::Gcra::new(rate);
        for _ in 0..7 {
            assert!(local.take(1, 0).is_ok());
        }
        let ahead = params.tolerance;
        assert_eq!(
            local.take(1, 0),
            Err(params.denied(ahead, params.advance(1)))
        );
        assert_eq!(local.snapshot(0), params.snapshot(ahead));
    }

    #[test]
    fn periods_too_long_for_exact_doubles_stay_local() {
        let rate = Rate {
            count: 1,
            period: Duration::from_secs(200 * 86_400),
        };
        assert!(Params::new(rate).is_none());
    }

    #[test]
    fn entries_round_trip_and_foreign_values_are_misses() {
        let content_type = HeaderValue::from_static("audio/mpeg");
        let value = entry::encode(&content_type, b"ID3 audio").unwrap();
        let (decoded_type, body) = entry::decode(Bytes::from(value)).unwrap();
        assert_eq!(decoded_type, content_type);
        assert_eq!(body, Bytes::from_static(b"ID3 audio"));
        for foreign in [&b""[..], b"\x01", b"\x01\x00\x09audio", b"\x02\x00\x00body"] {
            assert!(entry::decode(Bytes::copy_from_slice(foreign)).is_none());
        }
    }

    #[test]
    fn cache_keys_are_prefixed_hex() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = runtime.enter();
        let shared = Shared::start(SharedSettings {
            url: "redis://127.0.0.1:1/0".to_owned(),
            timeout: Duration::from_millis(20),
            connect_timeout: Duration::from_secs(1),
            max_entry_bytes: 1 << 20,
            prefix: "vg:".to_owned(),
        });
        let mut key = [0u8; 32];
        key[0] = 0xab;
        key[31] = 0x01;
        let redis_key = shared.cache_key(&key);
        assert_eq!(redis_key.len(), 3 + 4 + 64);
        assert!(redis_key.starts_with("vg:tts:ab00"), "{redis_key}");
        assert!(redis_key.ends_with("0001"), "{redis_key}");
    }
}
