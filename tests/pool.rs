//! Upstream pools over real sockets: active health checks, passive ejection, backups,
//! weights, and the operational endpoints `/ready` and `/status`.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use serde_json::{json, Value};
use support::*;
use tokio::time::Instant;

/// An upstream whose `/health` answers 200 while `healthy` is set, 503 otherwise, and whose
/// API answers `name`.
async fn switchable(name: &'static str, healthy: Arc<AtomicBool>) -> Scripted {
    Scripted::start(move |r| match r.path.as_str() {
        "/health" if healthy.load(Ordering::SeqCst) => Reply::json(200, json!({"status": "ok"})),
        "/health" => Reply::status(503),
        _ => Reply::ok("audio/pcm", name),
    })
    .await
}

const FAST_CHECKS: &str =
    "health = { interval = \"50ms\", timeout = \"200ms\", rise = 2, fall = 2 }";

async fn speech(proxy: &Proxy) -> Answer {
    send(speech_request(
        &proxy.url("/v1/audio/speech"),
        json!({"model": "tts-1", "input": "hi", "voice": "af_sky"}),
    ))
    .await
}

async fn get(proxy: &Proxy, path: &str) -> Answer {
    send(Request::get(proxy.url(path)).body(full_body("")).unwrap()).await
}

/// Polls `/status` until `upstream`'s availability is `up`, or fails after 5 s.
async fn wait_until(proxy: &Proxy, upstream: &str, up: bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let status = get(proxy, "/status").await.json();
        let pool = status["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == upstream)
            .cloned()
            .unwrap();
        if pool["up"] == up {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{upstream} did not become up={up} within 5 s");
}

fn api_requests(s: &Scripted) -> usize {
    s.received().iter().filter(|r| r.path != "/health").count()
}

#[tokio::test(start_paused = true)]
async fn killing_and_restarting_an_upstream_flips_its_health_within_rise_and_fall() {
    let healthy = Arc::new(AtomicBool::new(true));
    let kokoro = switchable("kokoro", healthy.clone()).await;
    let addr = kokoro.addr;
    let fallback = Scripted::always(Reply::ok("audio/pcm", "openai")).await;
    let config = format!(
        "[upstreams.kokoro]\nurl = \"{}\"\n{FAST_CHECKS}\n[upstreams.openai]\nurl = \"{}\"\n\
         [[routes]]\nto = [\"kokoro\", \"openai\"]\n",
        kokoro.url(),
        fallback.url()
    );
    let proxy = Proxy::start(&config).await;
    assert_eq!(&speech(&proxy).await.body[..], b"kokoro");

    drop(kokoro);
    // fall = 2 checks 50 ms apart, plus the check in flight.
    let took = wait_until(&proxy, "kokoro", false).await;
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(&speech(&proxy).await.body[..], b"openai");
    assert_eq!(
        get(&proxy, "/ready").await.status,
        200,
        "openai still serves the route"
    );

    let _kokoro = Scripted::start_on(addr, |r| match r.path.as_str() {
        "/health" => Reply::json(200, json!({"status": "ok"})),
        _ => Reply::ok("audio/pcm", "kokoro again"),
    })
    .await;
    wait_until(&proxy, "kokoro", true).await;
    assert_eq!(&speech(&proxy).await.body[..], b"kokoro again");
}

#[tokio::test]
async fn once_an_endpoint_is_ejected_requests_reach_the_fallback_without_touching_it() {
    // Accepts, then closes without answering: a broken box.
    let broken = Scripted::always(Reply::Close).await;
    let fallback = Scripted::always(Reply::ok("audio/pcm", "fallback")).await;
    let config = format!(
        "[upstreams.a]\nurl = \"{}\"\n[upstreams.b]\nurl = \"{}\"\n[[routes]]\nto = [\"a\", \"b\"]\n",
        broken.url(),
        fallback.url()
    );
    let proxy = Proxy::start(&config).await;
    assert_eq!(speech(&proxy).await.status, 200);
    let after_first = broken.connections();
    assert!(after_first >= 1);
    for _ in 0..20 {
        let r = speech(&proxy).await;
        assert_eq!(&r.body[..], b"fallback");
    }
    assert_eq!(
        broken.connections(),
        after_first,
        "no connection attempt reached the ejected endpoint"
    );
    let status = get(&proxy, "/status").await.json();
    let a = &status["upstreams"][0]["endpoints"][0];
    assert_eq!(a["available"], false);
    assert_eq!(a["ejections_total"], 1);
    assert!(a["ejected_until"].as_f64().is_some_and(|s| s > 0.0), "{a}");
    assert_eq!(a["health"], "unchecked", "no active checks: {a}");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_primary_costs_one_per_try_timeout_then_nothing() {
    let hanging = Scripted::always(Reply::Hang).await;
    let fallback = Scripted::always(Reply::ok("audio/pcm", "fallback")).await;
    let config = format!(
        "[upstreams.a]\nurl = \"{}\"\nresponse_timeout = \"300ms\"\n[upstreams.b]\nurl = \"{}\"\n\
         [[routes]]\nto = [\"a\", \"b\"]\n",
        hanging.url(),
        fallback.url()
    );
    let proxy = Proxy::start(&config).await;
    let start = Instant::now();
    assert_eq!(speech(&proxy).await.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300));
    let start = Instant::now();
    for _ in 0..10 {
        assert_eq!(&speech(&proxy).await.body[..], b"fallback");
    }
    assert!(
        start.elapsed() < Duration::from_millis(1000),
        "ten requests after the ejection took {:?}",
        start.elapsed()
    );
    assert_eq!(hanging.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn backup_endpoints_get_nothing_while_a_primary_is_healthy_and_everything_when_none_is() {
    let healthy = Arc::new(AtomicBool::new(true));
    let primary = switchable("primary", healthy.clone()).await;
    let backup = switchable("backup", Arc::new(AtomicBool::new(true))).await;
    let config = format!(
        "[upstreams.kokoro]\nendpoints = [\"{}\", {{ url = \"{}\", backup = true }}]\n{FAST_CHECKS}\n\
         [[routes]]\nto = [\"kokoro\"]\n",
        primary.url(),
        backup.url()
    );
    let proxy = Proxy::start(&config).await;
    for _ in 0..10 {
        assert_eq!(&speech(&proxy).await.body[..], b"primary");
    }
    assert_eq!(api_requests(&backup), 0);

    healthy.store(false, Ordering::SeqCst);
    let start = Instant::now();
    loop {
        let status = get(&proxy, "/status").await.json();
        if status["upstreams"][0]["endpoints"][0]["available"] == false {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "primary never went down"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = api_requests(&primary);
    for _ in 0..10 {
        assert_eq!(&speech(&proxy).await.body[..], b"backup");
    }
    assert_eq!(api_requests(&primary), before);
    assert_eq!(api_requests(&backup), 10);
}

#[tokio::test]
async fn weights_are_respected() {
    let light = Scripted::always(Reply::ok("audio/pcm", "light")).await;
    let heavy = Scripted::always(Reply::ok("audio/pcm", "heavy")).await;
    let config = format!(
        "[upstreams.kokoro]\nendpoints = [{{ url = \"{}\", weight = 1 }}, {{ url = \"{}\", weight = 3 }}]\n\
         [[routes]]\nto = [\"kokoro\"]\n",
        light.url(),
        heavy.url()
    );
    let proxy = Proxy::start(&config).await;
    for _ in 0..200 {
        assert_eq!(speech(&proxy).await.status, 200);
    }
    // Weighted round robin is exact over whole rounds: 1 in 4.
    assert_eq!((light.count(), heavy.count()), (50, 150));
}

#[tokio::test(start_paused = true)]
async fn when_everything_is_marked_down_requests_are_tried_anyway() {
    let healthy = Arc::new(AtomicBool::new(false));
    let kokoro = switchable("still works", healthy).await;
    let config = format!(
        "[upstreams.kokoro]\nurl = \"{}\"\n{FAST_CHECKS}\n[[routes]]\nto = [\"kokoro\"]\n",
        kokoro.url()
    );
    let proxy = Proxy::start(&config).await;
    wait_until(&proxy, "kokoro", false).await;
    let r = speech(&proxy).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"still works"[..]));
}

#[tokio::test(start_paused = true)]
async fn ready_says_which_route_has_no_available_upstream() {
    let healthy = Arc::new(AtomicBool::new(true));
    let kokoro = switchable("kokoro", healthy.clone()).await;
    let config = format!(
        "[upstreams.kokoro]\nurl = \"{}\"\n{FAST_CHECKS}\n[[routes]]\nmatch = {{ endpoint = \"speech\" }}\nto = [\"kokoro\"]\n",
        kokoro.url()
    );
    let proxy = Proxy::start(&config).await;
    let r = get(&proxy, "/ready").await;
    assert_eq!(
        (r.status, r.json()["ready"].clone()),
        (200, Value::Bool(true))
    );

    healthy.store(false, Ordering::SeqCst);
    wait_until(&proxy, "kokoro", false).await;
    let r = get(&proxy, "/ready").await;
    assert_eq!(r.status, 503);
    let reason = r.json()["reasons"][0].as_str().unwrap().to_string();
    assert!(
        reason.contains("line 4") && reason.contains("kokoro"),
        "{reason}"
    );

    let status = get(&proxy, "/status").await.json();
    let endpoint = &status["upstreams"][0]["endpoints"][0];
    assert_eq!(endpoint["health"], "down");
    assert_eq!(endpoint["available"], false);
    assert!(endpoint["ejected_until"].is_null());
    assert_eq!(endpoint["last_check"]["ok"], false);
    assert_eq!(endpoint["last_check"]["detail"], "status 503");
}

#[tokio::test(start_paused = true)]
async fn the_retry_budget_caps_fallback_attempts_when_every_upstream_fails() {
    let a = Scripted::always(Reply::Hang).await;
    let b = Scripted::always(Reply::Hang).await;
    let config = format!(
        "[server]\nretry_budget_percent = 0\nretry_budget_min = 1\n\
         [upstreams.a]\nurl = \"{}\"\nresponse_timeout = \"300ms\"\neject_after = 0\n\
         [upstreams.b]\nurl = \"{}\"\nresponse_timeout = \"300ms\"\neject_after = 0\n\
         [[routes]]\nto = [\"a\", \"b\"]\n",
        a.url(),
        b.url()
    );
    let proxy = Proxy::start(&config).await;
    let answers = futures_util::future::join_all((0..8).map(|_| speech(&proxy))).await;
    assert!(
        answers.iter().all(|r| r.status == 504),
        "every attempt timed out"
    );
    assert_eq!(a.count(), 8, "every request tried the primary");
    assert_eq!(
        b.count(),
        1,
        "one fallback at a time, and the first held it"
    );
    let refused = answers
        .iter()
        .filter(|r| r.error_message().contains("retry budget exhausted"))
        .count();
    assert_eq!(refused, 7);
}

#[tokio::test]
async fn falling_back_from_a_refused_connection_needs_no_budget() {
    let dead = refused_addr().await;
    let b = Scripted::always(Reply::ok("audio/pcm", "fallback")).await;
    let config = format!(
        "[server]\nretry_budget_percent = 0\nretry_budget_min = 0\n\
         [upstreams.a]\nurl = \"http://{dead}\"\neject_after = 0\n\
         [upstreams.b]\nurl = \"{}\"\n[[routes]]\nto = [\"a\", \"b\"]\n",
        b.url()
    );
    let proxy = Proxy::start(&config).await;
    let answers = futures_util::future::join_all((0..16).map(|_| speech(&proxy))).await;
    assert!(
        answers.iter().all(|r| r.status == 200),
        "nothing was sent to a dead box"
    );
    assert_eq!(b.count(), 16);
}

#[tokio::test(start_paused = true)]
async fn a_route_deadline_bounds_every_attempt_together() {
    let a = Scripted::always(Reply::Hang).await;
    let b = Scripted::always(Reply::Hang).await;
    let config = format!(
        "[upstreams.a]\nurl = \"{}\"\nresponse_timeout = \"600ms\"\n\
         [upstreams.b]\nurl = \"{}\"\nresponse_timeout = \"600ms\"\n\
         [[routes]]\nto = [\"a\", \"b\"]\ndeadline = \"800ms\"\n",
        a.url(),
        b.url()
    );
    let proxy = Proxy::start(&config).await;
    let start = Instant::now();
    let r = speech(&proxy).await;
    let took = start.elapsed();
    assert_eq!(r.status, 504);
    assert!(
        took >= Duration::from_millis(790) && took < Duration::from_millis(1100),
        "600 ms for a, then what is left of 800 ms for b (not 600 more); took {took:?}"
    );
    assert_eq!((a.count(), b.count()), (1, 1));
}

#[tokio::test]
async fn with_an_admin_listener_ready_and_status_leave_the_public_one() {
    let up = Scripted::always(Reply::ok("audio/pcm", "ok")).await;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let config = format!(
        "[server]\nadmin_listen = \"{admin_addr}\"\n{}",
        support::single_upstream(&up.url(), "")
    );
    let proxy = Proxy::start(&config).await;
    tokio::spawn(voxgate::server::run_admin(
        admin,
        proxy.gateway.clone(),
        std::future::pending::<()>(),
    ));
    assert_eq!(get(&proxy, "/status").await.status, 404);
    assert_eq!(get(&proxy, "/ready").await.status, 404);
    assert_eq!(get(&proxy, "/health").await.status, 200);
    assert_eq!(speech(&proxy).await.status, 200);

    let on_admin = |path: &str| {
        send(
            Request::get(format!("http://{admin_addr}{path}"))
                .body(full_body(""))
                .unwrap(),
        )
    };
    let status = on_admin("/status").await;
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["upstreams"][0]["name"], "a");
    assert_eq!(on_admin("/ready").await.status, 200);
    assert_eq!(on_admin("/health").await.status, 200);
    assert_eq!(
        on_admin("/v1/models").await.status,
        404,
        "no API on the admin listener"
    );
}
