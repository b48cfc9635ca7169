//! Many instances (issue 21): two voxgate daemons sharing one real `redis-server` for
//! their limits and their TTS cache; Redis killed, slowed and restarted under them.

mod support;

use std::time::{Duration, Instant};

use http::Request;
use serde_json::{json, Value};
use support::daemon::{start_with, stop_with_sigterm, Daemon};
use support::redis::RedisServer;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_voxgate");

struct Instance {
    daemon: Daemon,
    address: String,
    log: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Instance {
    fn start(config: &std::path::Path) -> Instance {
        let mut command = std::process::Command::new(BIN);
        command.env_remove("VOXGATE_CONFIG").env("RUST_LOG", "info");
        let (daemon, address, log, seen) = start_with(command, config);
        Instance {
            daemon,
            address,
            log,
            seen,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    async fn speak(&self, text: &str) -> (Answer, Duration) {
        let started = Instant::now();
        let req = speech_request(
            &self.url("/v1/audio/speech"),
            json!({"model": "tts-1", "voice": "alloy", "input": text}),
        );
        let answer = send(req).await;
        (answer, started.elapsed())
    }

    async fn shared(&self) -> Value {
        let status = send(
            Request::get(self.url("/status"))
                .body(full_body(""))
                .unwrap(),
        )
        .await;
        status.json()["policy"]["shared"].clone()
    }

    /// Waits until this instance sees Redis `up` (or not), 5 s at most.
    async fn until_shared_up(&self, up: bool) {
        for _ in 0..250 {
            if self.shared().await["up"] == up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("shared state never became up={up}: {}", self.shared().await);
    }

    /// Log lines so far.
    fn lines(&mut self) -> Vec<String> {
        while let Ok(line) = self.log.try_recv() {
            self.seen.push(line);
        }
        self.seen.clone()
    }
}

/// Two daemons on the config at `file`, both connected to its Redis.
async fn two_on(file: &std::path::Path) -> (Instance, Instance) {
    let a = tokio::task::block_in_place(|| Instance::start(file));
    let b = tokio::task::block_in_place(|| Instance::start(file));
    a.until_shared_up(true).await;
    b.until_shared_up(true).await;
    (a, b)
}

/// The instance a request `i` of an alternating run goes to: `a`, then `b`, in turn.
fn either<'a>(a: &'a Instance, b: &'a Instance, i: usize) -> &'a Instance {
    if i % 2 == 0 {
        a
    } else {
        b
    }
}

fn config(dir: &std::path::Path, upstream: &str, redis: &str, extra: &str) -> std::path::PathBuf {
    let file = dir.join("voxgate.toml");
    std::fs::write(
        &file,
        format!(
            "{}\n[shared]\nredis = \"{redis}\"\ntimeout = \"50ms\"\nconnect_timeout = \"500ms\"\n{extra}",
            single_upstream(upstream, "")
        ),
    )
    .unwrap();
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_across_two_instances_lets_exactly_n_through() {
    let redis = RedisServer::start();
    let up = Scripted::always(Reply::ok("audio/pcm", "PCM")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = config(
        dir.path(),
        &up.url(),
        &redis.url(),
        "[limits]\nrequests = \"6/min\"\n",
    );
    let (a, b) = two_on(&file).await;
    let mut passed = 0;
    for i in 0..16 {
        let (answer, _) = either(&a, &b, i).speak("hi").await;
        match answer.status {
            200 => passed += 1,
            429 => assert!(answer.header("retry-after").is_some()),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(passed, 6, "6 a minute across both, not 6 each");
    assert_eq!(up.count(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_entry_made_through_one_is_a_hit_through_the_other() {
    let redis = RedisServer::start();
    let up = Scripted::always(Reply::ok("audio/mpeg", "SHARED-MP3")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = config(dir.path(), &up.url(), &redis.url(), "[cache]\n");
    let (a, b) = two_on(&file).await;
    let (first, _) = a.speak("made once").await;
    assert_eq!(first.header("x-voxgate-cache"), Some("miss"));
    // The shared copy is written behind the answer: give it a moment.
    let mut verdict = None;
    for _ in 0..50 {
        let (answer, _) = b.speak("made once").await;
        verdict = answer.header("x-voxgate-cache").map(str::to_string);
        if verdict.as_deref() == Some("hit") {
            assert_eq!(answer.body, first.body);
            assert_eq!(answer.header("content-type"), Some("audio/mpeg"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(verdict.as_deref(), Some("hit"));
    // b's memory has it now, and a's always had.
    assert_eq!(
        b.speak("made once").await.0.header("x-voxgate-cache"),
        Some("hit")
    );
    // Each miss before b's hit went upstream; the hit did not.
    let calls = up.count();
    b.speak("made once").await;
    assert_eq!(up.count(), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_slowed_and_restarted_costs_no_request_more_than_the_timeout() {
    let mut redis = RedisServer::start();
    let up = Scripted::always(Reply::ok("audio/pcm", "PCM")).await;
    let dir = tempfile::tempdir().unwrap();
    let file = config(
        dir.path(),
        &up.url(),
        &redis.url(),
        "[limits]\nrequests = \"3/min\"\n",
    );
    let (mut a, b) = two_on(&file).await;
    for instance in [&a, &b] {
        assert_eq!(instance.speak("x").await.0.status, 200);
    }

    // Killed: every request is answered; none waits on Redis longer than the timeout
    // (50 ms) plus what this busy machine adds; limits are each instance's own.
    redis.kill();
    let mut slowest = Duration::ZERO;
    let mut statuses = Vec::new();
    for i in 0..20 {
        let (answer, took) = either(&a, &b, i).speak("x").await;
        statuses.push(answer.status);
        slowest = slowest.max(took);
    }
    assert!(slowest < Duration::from_millis(500), "slowest {slowest:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    // Each instance alone allows its own 3.
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        6,
        "{statuses:?}"
    );
    a.until_shared_up(false).await;
    let shared = a.shared().await;
    assert!(shared["outages"].as_u64() >= Some(1), "{shared}");
    assert!(shared["fallbacks"].as_u64() >= Some(1), "{shared}");
    let warned = a
        .lines()
        .iter()
        .filter(|l| l.contains("unavailable") && l.contains("WARN"))
        .count();
    assert_eq!(warned, 1, "one warning per outage: {:?}", a.lines());

    // Back: shared limits again (Redis restarted empty: a fresh 3 across both).
    tokio::task::block_in_place(|| redis.restart());
    a.until_shared_up(true).await;
    b.until_shared_up(true).await;
    let mut passed = 0;
    for i in 0..8 {
        let (answer, _) = either(&a, &b, i).speak("y").await;
        passed += usize::from(answer.status == 200);
    }
    assert_eq!(passed, 3);

    // Slowed: a request during `DEBUG SLEEP` does not wait for it.
    let port = redis.port;
    let sleeper = tokio::task::spawn_blocking(move || {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        use std::io::{Read, Write};
        conn.write_all(b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$3\r\n0.6\r\n")
            .unwrap();
        let mut reply = [0u8; 16];
        let _ = conn.read(&mut reply);
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (answer, took) = b.speak("z").await;
    assert!(
        took < Duration::from_millis(400),
        "took {took:?} while Redis slept"
    );
    assert!(answer.status == 200 || answer.status == 429);
    sleeper.await.unwrap();
    b.until_shared_up(true).await;
    for mut instance in [a, b] {
        tokio::task::block_in_place(|| stop_with_sigterm(&mut instance.daemon));
    }
}
