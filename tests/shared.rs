//! Shared state against a real `redis-server` on loopback: two instances share one limit
//! exactly as one in-process GCRA would, share cache entries, and fall back at once — one
//! timeout per outage, one warning — when Redis dies or stalls, recovering when it returns.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use serde_json::Value;
use support::logs::{capture, Captured};
use support::pki::TestCa;
use support::redis::RedisServer;
use voxgate::policy::rate::{Gcra, Rate};
use voxgate::policy::shared::{Shared, SharedSettings, Unavailable};

/// A budget for Redis when the test is about behaviour, not latency: generous, so a busy
/// machine never trips the breaker by accident.
const RELAXED: Duration = Duration::from_millis(500);
/// The default request-path budget, for the tests that measure latency.
const TIGHT: Duration = Duration::from_millis(20);
/// What a call may take beyond its budget: scheduling, not waiting.
const SLACK: Duration = Duration::from_millis(15);

fn settings(url: &str, timeout: Duration, prefix: &str) -> SharedSettings {
    SharedSettings {
        url: url.to_owned(),
        timeout,
        connect_timeout: Duration::from_secs(1),
        max_entry_bytes: 1 << 20,
        prefix: prefix.to_owned(),
    }
}

fn per_minute(count: u64) -> Rate {
    Rate {
        count,
        period: Duration::from_secs(60),
    }
}

/// Fails the test rather than hanging it.
async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), test)
        .await
        .expect("test took longer than 30 s")
}

/// Waits for `shared` to connect; returns how long that took.
async fn wait_up(shared: &Shared, within: Duration) -> Duration {
    let start = Instant::now();
    while !shared.status().up {
        assert!(
            start.elapsed() < within,
            "not up within {within:?}: {:?}",
            shared.status()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

async fn started(url: &str, timeout: Duration, prefix: &str) -> Arc<Shared> {
    let shared = Shared::start(settings(url, timeout, prefix));
    wait_up(&shared, Duration::from_secs(5)).await;
    shared
}

impl Captured {
    /// Lines at `level` whose message contains `part`.
    fn count(&self, level: &str, part: &str) -> usize {
        self.text()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|line| line["level"] == level)
            .filter(|line| line["message"].as_str().is_some_and(|m| m.contains(part)))
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_let_exactly_the_burst_through_under_concurrency() {
    let server = RedisServer::start();
    bounded(async {
        let instances = [
            started(&server.url(), RELAXED, "concurrent:").await,
            started(&server.url(), RELAXED, "concurrent:").await,
        ];
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let shared = instances[i % 2].clone();
                tokio::spawn(async move { shared.take("client:a", per_minute(10), 1).await })
            })
            .collect();
        let (mut allowed, mut denied) = (0, 0);
        for task in tasks {
            match task.await.unwrap() {
                Ok(Ok(_)) => allowed += 1,
                Ok(Err(refusal)) => {
                    assert!(refusal.retry_after.is_some());
                    assert_eq!(refusal.snapshot.remaining, 0);
                    denied += 1;
                }
                Err(Unavailable) => panic!("Redis was unavailable: {:?}", instances[0].status()),
            }
        }
        assert_eq!((allowed, denied), (10, 30));
    })
    .await;
}

#[tokio::test]
async fn interleaved_takes_are_refused_with_the_in_process_retry_after() {
    let server = RedisServer::start();
    bounded(async {
        let a = started(&server.url(), RELAXED, "interleaved:").await;
        let b = started(&server.url(), RELAXED, "interleaved:").await;
        let rate = per_minute(10);
        let local = Gcra::new(rate);
        let origin = Instant::now();
        let at = || u64::try_from(origin.elapsed().as_nanos()).unwrap();
        for i in 0..10 {
            let shared = if i % 2 == 0 { &a } else { &b };
            let now = at();
            let snapshot = shared.take("k", rate, 1).await.unwrap().unwrap();
            let expected = local.take(1, now).unwrap();
            // Redis's clock and ours differ by the moment a command is in flight.
            assert_eq!(
                (snapshot.limit, snapshot.remaining),
                (expected.limit, expected.remaining),
                "take {i}"
            );
            let off = snapshot.reset.abs_diff(expected.reset);
            assert!(off < Duration::from_millis(5), "take {i}: {snapshot:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let now = at();
        let denied = b.take("k", rate, 1).await.unwrap().unwrap_err();
        let expected = local.take(1, now).unwrap_err();
        let (got, want) = (denied.retry_after.unwrap(), expected.retry_after.unwrap());
        let off = got.abs_diff(want);
        assert!(
            off < Duration::from_millis(5),
            "retry-after {got:?}, in-process {want:?}"
        );
        // Six seconds per request, minus the ~100 ms the ten took.
        assert!(got > Duration::from_millis(5_800) && got <= Duration::from_secs(6));
        assert_eq!(denied.snapshot.remaining, 0);
        assert_eq!(denied.snapshot.limit, 10);
    })
    .await;
}

#[tokio::test]
async fn a_refund_through_one_instance_lets_one_more_through_the_other() {
    let server = RedisServer::start();
    bounded(async {
        let a = started(&server.url(), RELAXED, "refund:").await;
        let b = started(&server.url(), RELAXED, "refund:").await;
        let rate = per_minute(10);
        assert!(a.take("k", rate, 10).await.unwrap().is_ok());
        assert!(b.take("k", rate, 1).await.unwrap().is_err());
        a.refund("k", rate, 1).await;
        assert_eq!(b.take("k", rate, 1).await.unwrap().unwrap().remaining, 0);
        assert!(a.take("k", rate, 1).await.unwrap().is_err());
        // Refunding far more than was taken only fills the bucket.
        b.refund("k", rate, 1_000).await;
        assert_eq!(a.check("k", rate, 1).await.unwrap().unwrap().remaining, 10);
        assert!(a.take("k", rate, 10).await.unwrap().is_ok());
        assert!(b.take("k", rate, 1).await.unwrap().is_err());
    })
    .await;
}

#[tokio::test]
async fn check_takes_nothing() {
    let server = RedisServer::start();
    bounded(async {
        let a = started(&server.url(), RELAXED, "check:").await;
        let b = started(&server.url(), RELAXED, "check:").await;
        let rate = per_minute(10);
        for _ in 0..20 {
            let snapshot = a.check("k", rate, 3).await.unwrap().unwrap();
            assert_eq!((snapshot.limit, snapshot.remaining), (10, 10));
            assert_eq!(snapshot.reset, Duration::ZERO);
        }
        assert!(b.take("k", rate, 8).await.unwrap().is_ok());
        let denied = a.check("k", rate, 3).await.unwrap().unwrap_err();
        assert_eq!(denied.snapshot.remaining, 2);
        // One more unit refills in six seconds, less the moment since the take.
        let wait = denied.retry_after.unwrap();
        assert!(wait > Duration::from_millis(5_900) && wait <= Duration::from_secs(6));
        assert_eq!(b.check("k", rate, 2).await.unwrap().unwrap().remaining, 2);
        assert!(a.take("k", rate, 2).await.unwrap().is_ok());
    })
    .await;
}

#[tokio::test]
async fn a_cost_over_the_burst_is_refused_for_good() {
    let server = RedisServer::start();
    bounded(async {
        let shared = started(&server.url(), RELAXED, "over:").await;
        let rate = per_minute(10);
        assert!(shared.take("k", rate, 4).await.unwrap().is_ok());
        for denied in [
            shared.take("k", rate, 11).await.unwrap().unwrap_err(),
            shared.check("k", rate, 11).await.unwrap().unwrap_err(),
        ] {
            assert_eq!(denied.retry_after, None);
            assert_eq!(denied.snapshot.remaining, 6);
        }
        // A cost of zero passes and takes nothing.
        assert_eq!(
            shared.take("k", rate, 0).await.unwrap().unwrap().remaining,
            6
        );
    })
    .await;
}

#[tokio::test]
async fn limiter_keys_vanish_once_the_bucket_is_full_again() {
    let server = RedisServer::start();
    bounded(async {
        let shared = started(&server.url(), RELAXED, "idle:").await;
        let rate = Rate {
            count: 10,
            period: Duration::from_secs(1),
        };
        assert!(shared.take("k", rate, 2).await.unwrap().is_ok());
        let ttl: i64 = server.command(&["PTTL", "idle:rl:k"])[1..]
            .trim()
            .parse()
            .unwrap();
        assert!((1..=200).contains(&ttl), "PTTL {ttl}");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(server.command(&["EXISTS", "idle:rl:k"]).trim(), ":0");
        assert_eq!(
            shared.check("k", rate, 1).await.unwrap().unwrap().remaining,
            10
        );
    })
    .await;
}

fn key(byte: u8) -> [u8; 32] {
    [byte; 32]
}

/// Polls `shared` for `key` until it is there: a put is spawned, nobody waits for it.
async fn wait_for_entry(shared: &Shared, key: &[u8; 32]) -> (HeaderValue, Bytes) {
    let start = Instant::now();
    loop {
        if let Some(entry) = shared.cache_get(key).await.unwrap() {
            return entry;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "entry never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_cache_entry_put_by_one_instance_is_read_by_the_other() {
    let server = RedisServer::start();
    bounded(async {
        let a = started(&server.url(), RELAXED, "cache:").await;
        let b = started(&server.url(), RELAXED, "cache:").await;
        assert_eq!(b.cache_get(&key(7)).await, Ok(None));
        let content_type = HeaderValue::from_static("audio/wav; codecs=1");
        let body = Bytes::from((0..=255u8).cycle().take(100_000).collect::<Vec<_>>());
        a.cache_put(
            key(7),
            content_type.clone(),
            body.clone(),
            Duration::from_secs(60),
        );
        let (got_type, got_body) = wait_for_entry(&b, &key(7)).await;
        assert_eq!(got_type, content_type);
        assert_eq!(got_body, body);
        // Stored under the prefix and the key in hex, with its TTL.
        let redis_key = format!("cache:tts:{}", "07".repeat(32));
        let ttl: i64 = server.command(&["PTTL", &redis_key])[1..]
            .trim()
            .parse()
            .unwrap();
        assert!((50_000..=60_000).contains(&ttl), "PTTL {ttl}");
    })
    .await;
}

#[tokio::test]
async fn cache_entries_expire_after_their_ttl() {
    let server = RedisServer::start();
    bounded(async {
        let shared = started(&server.url(), RELAXED, "ttl:").await;
        let ttl = Duration::from_millis(300);
        shared.cache_put(
            key(1),
            HeaderValue::from_static("audio/mpeg"),
            Bytes::from_static(b"mp3"),
            ttl,
        );
        wait_for_entry(&shared, &key(1)).await;
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        assert_eq!(shared.cache_get(&key(1)).await, Ok(None));
    })
    .await;
}

#[tokio::test]
async fn cache_entries_over_max_entry_bytes_stay_local() {
    let server = RedisServer::start();
    bounded(async {
        let mut limited = settings(&server.url(), RELAXED, "max:");
        limited.max_entry_bytes = 1_000;
        let shared = Shared::start(limited);
        wait_up(&shared, Duration::from_secs(5)).await;
        let mpeg = HeaderValue::from_static("audio/mpeg");
        let hour = Duration::from_secs(3_600);
        shared.cache_put(key(1), mpeg.clone(), Bytes::from(vec![1; 1_001]), hour);
        shared.cache_put(key(2), mpeg.clone(), Bytes::from(vec![2; 1_000]), hour);
        let (_, body) = wait_for_entry(&shared, &key(2)).await;
        assert_eq!(body.len(), 1_000);
        // The larger one was skipped before anything was spawned, so it is not on its way.
        assert_eq!(shared.cache_get(&key(1)).await, Ok(None));
    })
    .await;
}

#[tokio::test]
async fn a_value_voxgate_did_not_write_is_a_cache_miss() {
    let server = RedisServer::start();
    bounded(async {
        let shared = started(&server.url(), RELAXED, "foreign:").await;
        let redis_key = format!("foreign:tts:{}", "09".repeat(32));
        server.command(&["SET", &redis_key, "not an entry"]);
        assert_eq!(shared.cache_get(&key(9)).await, Ok(None));
        assert!(shared.status().up);
    })
    .await;
}

/// Runs `call` and returns how long it took.
async fn timed<T>(call: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let result = call.await;
    (result, start.elapsed())
}

#[tokio::test(flavor = "current_thread")]
async fn a_killed_redis_costs_one_timeout_per_outage_and_is_used_again_once_back() {
    let (logs, _guard) = capture(tracing::Level::INFO);
    let mut server = RedisServer::start();
    bounded(async {
        let shared = started(&server.url(), TIGHT, "outage:").await;
        let rate = per_minute(100);
        assert!(shared.take("k", rate, 1).await.unwrap().is_ok());

        server.kill();
        let mut latencies = Vec::new();
        for _ in 0..50 {
            let (result, took) = timed(shared.take("k", rate, 1)).await;
            assert_eq!(result, Err(Unavailable));
            shared.note_fallback();
            latencies.push(took);
        }
        let (_, took) = timed(shared.cache_get(&key(1))).await;
        latencies.push(took);
        println!("dead Redis, first call: {:?}", latencies[0]);
        println!(
            "dead Redis, later calls at most: {:?}",
            latencies[1..].iter().max().unwrap()
        );
        assert!(
            latencies[0] <= TIGHT + SLACK,
            "first call {:?}",
            latencies[0]
        );
        for took in &latencies[1..] {
            assert!(
                *took < Duration::from_millis(1),
                "a later call took {took:?}"
            );
        }

        let status = shared.status();
        assert!(!status.up);
        assert_eq!(status.outages, 1);
        assert_eq!(status.fallbacks, 50);
        assert!(status.last_error.is_some());
        // Probes keep failing meanwhile; still one outage, one warning.
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        assert_eq!(shared.status().outages, 1);
        assert_eq!(logs.count("WARN", "unavailable"), 1, "{}", logs.text());
        assert_eq!(
            logs.count("WARN", "limits and cache are local until it returns"),
            1
        );

        server.restart();
        let back = wait_up(&shared, Duration::from_secs(2)).await;
        println!("up again {back:?} after the restart");
        // The new Redis is empty: a full bucket again.
        let snapshot = shared.take("k", rate, 1).await.unwrap().unwrap();
        assert_eq!(snapshot.remaining, 99);
        assert_eq!(shared.status().outages, 1);
        assert_eq!(logs.count("INFO", "is back"), 1, "{}", logs.text());
        assert_eq!(logs.count("WARN", "unavailable"), 1);
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_stalled_redis_makes_a_take_unavailable_within_the_timeout() {
    let (logs, _guard) = capture(tracing::Level::INFO);
    let server = Arc::new(RedisServer::start());
    bounded(async {
        let shared = started(&server.url(), TIGHT, "slow:").await;
        let rate = per_minute(100);
        assert!(shared.take("k", rate, 1).await.unwrap().is_ok());

        let sleeper = server.clone();
        let stall =
            tokio::task::spawn_blocking(move || sleeper.command(&["DEBUG", "SLEEP", "0.3"]));
        // Let the DEBUG SLEEP reach Redis first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (result, took) = timed(shared.take("k", rate, 1)).await;
        println!("stalled Redis: {took:?}");
        assert_eq!(result, Err(Unavailable));
        assert!(took <= TIGHT + SLACK, "took {took:?}");
        let (result, took) = timed(shared.check("k", rate, 1)).await;
        assert_eq!(result, Err(Unavailable));
        assert!(took < Duration::from_millis(1), "took {took:?}");
        assert!(stall.await.unwrap().starts_with("+OK"));

        wait_up(&shared, Duration::from_secs(2)).await;
        // The take that timed out may or may not have landed; either way, limits work.
        let snapshot = shared.take("k", rate, 1).await.unwrap().unwrap();
        assert!((97..=98).contains(&snapshot.remaining), "{snapshot:?}");
        let status = shared.status();
        assert_eq!(status.outages, 1);
        assert!(
            status
                .last_error
                .as_deref()
                .unwrap()
                .contains("no answer within 20ms"),
            "{status:?}"
        );
        assert_eq!(
            logs.count("WARN", "no answer within 20ms"),
            1,
            "{}",
            logs.text()
        );
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_error_reply_falls_back_without_opening_the_breaker() {
    let (logs, _guard) = capture(tracing::Level::INFO);
    let server = RedisServer::start();
    bounded(async {
        let shared = started(&server.url(), RELAXED, "reply:").await;
        // Something else keeps a hash where the limiter expects its string.
        server.command(&["HSET", "reply:rl:k", "field", "1"]);
        for _ in 0..3 {
            assert_eq!(shared.take("k", per_minute(5), 1).await, Err(Unavailable));
        }
        let status = shared.status();
        assert!(status.up, "{status:?}");
        assert_eq!(status.outages, 0);
        let error = status.last_error.unwrap();
        assert!(error.contains("WRONGTYPE"), "{error}");
        // Said once, not per request; other keys are unaffected.
        assert_eq!(
            logs.count("WARN", "answered with an error"),
            1,
            "{}",
            logs.text()
        );
        assert!(shared
            .take("other", per_minute(5), 1)
            .await
            .unwrap()
            .is_ok());
    })
    .await;
}

#[tokio::test]
async fn a_password_in_the_url_authenticates() {
    let server = RedisServer::with_password("correct-horse-battery");
    bounded(async {
        let shared = started(&server.url(), RELAXED, "auth:").await;
        assert!(shared.take("k", per_minute(1), 1).await.unwrap().is_ok());
        assert!(shared.take("k", per_minute(1), 1).await.unwrap().is_err());
        assert!(!format!("{:?}", shared.settings()).contains("correct-horse-battery"));
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_wrong_password_is_unavailable_and_never_shown() {
    let (logs, _guard) = capture(tracing::Level::INFO);
    let server = RedisServer::with_password("correct-horse-battery");
    bounded(async {
        let secret = "wrong-staple-hunter2";
        let url = format!("redis://:{secret}@127.0.0.1:{}/0", server.port);
        let shared = Shared::start(settings(&url, TIGHT, "auth:"));
        let start = Instant::now();
        while shared.status().last_error.is_none() {
            assert!(start.elapsed() < Duration::from_secs(5), "no error");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (result, took) = timed(shared.take("k", per_minute(1), 1)).await;
        assert_eq!(result, Err(Unavailable));
        assert!(took < Duration::from_millis(1));
        // A few failed probes later, still one outage.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let status = shared.status();
        assert!(!status.up);
        assert_eq!(status.outages, 1);
        let error = status.last_error.unwrap();
        println!("wrong password: {error}");
        let debug = format!("{:?}", shared.settings());
        for shown in [&error, &debug, &format!("{shared:?}"), &logs.text()] {
            assert!(!shown.contains(secret), "password shown: {shown}");
            assert!(!shown.contains("hunter2"), "password shown: {shown}");
        }
        assert!(debug.contains(":***@127.0.0.1"), "{debug}");
        assert_eq!(logs.count("WARN", "unavailable"), 1, "{}", logs.text());
    })
    .await;
}

#[tokio::test]
async fn rediss_goes_through_rustls_and_refuses_a_certificate_no_public_root_signed() {
    let dir = tempfile::tempdir().unwrap();
    let leaf = TestCa::new().leaf(dir.path(), "redis");
    let server = RedisServer::with_tls(leaf.cert, leaf.key);
    bounded(async {
        assert!(server.url().starts_with("rediss://"));
        let shared = Shared::start(settings(&server.url(), TIGHT, "tls:"));
        let start = Instant::now();
        let error = loop {
            if let Some(error) = shared.status().last_error {
                break error;
            }
            assert!(start.elapsed() < Duration::from_secs(5), "no TLS error");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        println!("rediss with a private CA: {error}");
        assert!(error.to_lowercase().contains("certificate"), "{error}");
        assert!(!shared.status().up);
        assert_eq!(shared.take("k", per_minute(1), 1).await, Err(Unavailable));
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_redis_at_start_is_unavailable_at_once() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    bounded(async {
        let url = format!("redis://127.0.0.1:{port}/0");
        let shared = Shared::start(settings(&url, TIGHT, "nobody:"));
        for _ in 0..10 {
            let (result, took) = timed(shared.take("k", per_minute(1), 1)).await;
            assert_eq!(result, Err(Unavailable));
            assert!(took < Duration::from_millis(1), "took {took:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let status = shared.status();
        assert!(!status.up);
        assert_eq!(status.outages, 1);
        assert!(status.last_error.is_some());
    })
    .await;
}

/// A request's limiters (global and its client's) in one round trip: all or none, the
/// first refusing limiter named, and the same arithmetic as one at a time.
#[tokio::test]
async fn take_all_takes_every_limiter_or_none_in_one_call() {
    let server = RedisServer::start();
    bounded(async {
        let a = started(&server.url(), RELAXED, "all:").await;
        let global = ("global:requests".to_string(), per_minute(5));
        let client = ("client:x:requests".to_string(), per_minute(2));
        let both = [global.clone(), client.clone()];
        for left in [1, 0] {
            let snapshots = a.take_all(&both, 1).await.unwrap().unwrap();
            assert_eq!(snapshots.len(), 2);
            assert_eq!(snapshots[1].remaining, left);
        }
        // The client's limiter refuses (index 1): the global one is not taken from.
        let (index, denied) = a.take_all(&both, 1).await.unwrap().unwrap_err();
        assert_eq!(index, 1);
        let wait = denied.retry_after.unwrap();
        assert!(
            wait > Duration::from_secs(29) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        let global_left = a.check(&global.0, global.1, 1).await.unwrap().unwrap();
        assert_eq!(global_left.remaining, 3, "the refused call took nothing");
        // The same keys one at a time see what take_all took.
        assert!(a.take(&client.0, client.1, 1).await.unwrap().is_err());
        // A cost over a burst never passes.
        let (index, never) = a.take_all(&both, 3).await.unwrap().unwrap_err();
        assert_eq!((index, never.retry_after), (1, None));
    })
    .await;
}
