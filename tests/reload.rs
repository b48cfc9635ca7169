//! Hot reload: SIGHUP, `POST /reload`, `voxgate reload`, the file watcher; what survives a
//! reload and what does not; and systemd's notification protocol on a real socket.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use support::daemon::{start_with, stop_with_sigterm};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_voxgate");

/// Speech and transcriptions answered as `name` (the audio is the name's bytes).
async fn engine(name: &'static str) -> Scripted {
    Scripted::start(move |r: &Received| {
        if r.path.ends_with("/transcriptions") {
            Reply::json(200, serde_json::json!({ "text": name }))
        } else {
            Reply::ok("audio/pcm", name)
        }
    })
    .await
}

/// Upstreams `a` and `b` always; speech to `speech_to`; transcriptions to `a` with `c`
/// (health-checked once an hour, failing: down from its first check) behind it.
fn variant(a: &Scripted, b: &Scripted, c: &Scripted, speech_to: &str, extra: &str) -> String {
    format!(
        "[upstreams.a]\nurl = \"{}\"\n\n[upstreams.b]\nurl = \"{}\"\n\n\
         [upstreams.c]\nurl = \"{}\"\nhealth = {{ path = \"/health\", interval = \"1h\", fall = 1 }}\n\n\
         [[routes]]\nmatch = {{ endpoint = \"speech\" }}\nto = [\"{speech_to}\"]\n\n\
         [[routes]]\nto = [\"a\", \"c\"]\n{extra}",
        a.url(),
        b.url(),
        c.url()
    )
}

fn hangup(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn status(base: &str) -> serde_json::Value {
    send(
        Request::get(format!("{base}/status"))
            .body(full_body(""))
            .unwrap(),
    )
    .await
    .json()
}

/// Waits (10 s at most) until `succeeded + failed` reloads reach `count`.
async fn reloads_reach(base: &str, count: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(base).await;
        let r = &s["config"]["reloads"];
        let done = r["succeeded"].as_u64().unwrap() + r["failed"].as_u64().unwrap();
        if done >= count {
            return s;
        }
        assert!(Instant::now() < deadline, "reload {count} not done: {s}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn speech_upstream(base: &str) -> (u16, Option<String>, Bytes) {
    let answer = send(speech_request(
        &format!("{base}/v1/audio/speech"),
        serde_json::json!({"model": "tts-1", "voice": "alloy", "input": "hi"}),
    ))
    .await;
    let upstream = answer.header("x-voxgate-upstream").map(str::to_string);
    (answer.status, upstream, answer.body)
}

/// Requests sent in a loop until `stop`: speech and transcription in turn, on kept-alive
/// connections. Returns (succeeded, failures).
async fn steady_load(
    base: String,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
) {
    let client = client();
    let mut turn = 0u64;
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        let request = if turn % 2 == 0 {
            speech_request(
                &format!("{base}/v1/audio/speech"),
                serde_json::json!({"model": "tts-1", "voice": "alloy", "input": "hello"}),
            )
        } else {
            post(
                &format!("{base}/v1/audio/transcriptions"),
                &form_content_type(),
                full_body(form(&[
                    ("model", None, b"whisper-1"),
                    ("file", Some("a.wav"), &noise(4096)),
                ])),
            )
        };
        let outcome =
            match tokio::time::timeout(Duration::from_secs(10), client.request(request)).await {
                Err(_) => Err("no answer within 10 s".to_string()),
                Ok(Err(e)) => Err(format!("transport: {e}")),
                Ok(Ok(response)) => {
                    let status = response.status();
                    match response.into_body().collect().await {
                        Ok(body) if status == 200 => {
                            let body = body.to_bytes();
                            if body.is_empty() {
                                Err("empty body".to_string())
                            } else {
                                Ok(())
                            }
                        }
                        Ok(body) => Err(format!("{status}: {:?}", body.to_bytes())),
                        Err(e) => Err(format!("body broke: {e}")),
                    }
                }
            };
        match outcome {
            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                failures.lock().unwrap().push(e);
                0
            }
        };
    }
}

/// The acceptance test: 50 SIGHUP reloads of the real daemon while speech and
/// transcription requests go through without pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_fail_no_request_and_keep_unchanged_upstreams() {
    let (a, b) = (engine("A").await, engine("B").await);
    let c = Scripted::always(Reply::status(503)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("voxgate.toml");
    std::fs::write(&file, variant(&a, &b, &c, "a", "")).unwrap();
    let (mut daemon, address, _log, _) = start_with(Command::new(BIN), &file);
    let base = format!("http://{address}");
    let pid = daemon.id();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(steady_load(
                base.clone(),
                stop.clone(),
                ok.clone(),
                failures.clone(),
            ))
        })
        .collect();

    let mut expected = "a";
    for i in 1..=50u64 {
        let broken = i == 25;
        let target = if i % 2 == 0 { "a" } else { "b" };
        let extra = if broken {
            "\n[[routes]]\nto = [\"nowhere\"]\n"
        } else {
            ""
        };
        std::fs::write(&file, variant(&a, &b, &c, target, extra)).unwrap();
        hangup(pid);
        let s = reloads_reach(&base, i).await;
        if broken {
            assert_eq!(s["config"]["reloads"]["failed"], 1, "{s}");
            let message = s["config"]["last_reload_error"]["message"]
                .as_str()
                .unwrap();
            assert!(
                message.contains("voxgate.toml:19:"),
                "file:line:col: {message}"
            );
            assert!(message.contains("nowhere"), "{message}");
        } else {
            expected = target;
            assert!(s["config"]["last_reload_error"].is_null(), "{s}");
        }
        // The next request follows the configuration serving now.
        let (status, upstream, body) = speech_upstream(&base).await;
        assert_eq!(status, 200);
        assert_eq!(upstream.as_deref(), Some(expected), "after reload {i}");
        assert_eq!(body, expected.to_uppercase());
    }
    let s = status(&base).await;
    assert_eq!(s["config"]["reloads"]["succeeded"], 49);
    assert_eq!(s["config"]["reloads"]["failed"], 1);

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let served = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:?}",
        failures.len(),
        served
    );
    assert!(
        served >= 100,
        "the load kept going through the reloads: {served}"
    );
    // Unchanged upstreams kept their connections: 3 clients, 2 upstreams, no new
    // connection per reload (50 reloads would have made 50 or more).
    let connections = a.connections() + b.connections();
    eprintln!(
        "{served} requests through 50 reloads, none failed; {connections} connections to a and b"
    );
    assert!(connections <= 12, "{connections} connections to a and b");
    // …and their health checks: c was checked once (1h interval), not once per reload,
    // and is still down.
    assert_eq!(c.count(), 1, "c's checks were not restarted");
    let endpoint = &s["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "c")
        .unwrap()["endpoints"][0];
    assert_eq!(endpoint["health"], "down", "{endpoint}");
    stop_with_sigterm(&mut daemon);
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn a_changed_upstream_keeps_its_endpoints_ejections_and_a_removed_one_drains() {
    let a = engine("A").await;
    let chunks: Vec<Bytes> = (0..4u8).map(|i| Bytes::from(vec![b'0' + i; 64])).collect();
    let slow = Scripted::always(Reply::Chunks {
        status: 200,
        content_type: "audio/pcm",
        chunks: chunks.clone(),
        delay: Duration::from_millis(100),
    })
    .await;
    let dead = refused_addr().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("voxgate.toml");
    let config = |dead_timeout: &str, with_slow: bool| {
        let mut text = format!(
            "[upstreams.a]\nurl = \"{}\"\n\n\
             [upstreams.dead]\nurl = \"http://{dead}\"\neject_after = 1\neject_time = \"1h\"\nconnect_timeout = \"{dead_timeout}\"\n\n",
            a.url()
        );
        if with_slow {
            text.push_str(&format!("[upstreams.slow]\nurl = \"{}\"\n\n", slow.url()));
            text.push_str("[[routes]]\nmatch = { model = \"slow\" }\nto = [\"slow\"]\n\n");
        }
        text.push_str("[[routes]]\nto = [\"dead\", \"a\"]\n");
        text
    };
    write(&file, &config("1s", true));
    let proxy = Proxy::start_from_file(&file).await;
    // One failed attempt ejects `dead` for an hour; the request falls back to a.
    let (code, upstream, _) = speech_upstream(&format!("http://{}", proxy.addr)).await;
    assert_eq!((code, upstream.as_deref()), (200, Some("a")));

    // A stream through `slow` is under way when `slow` is removed.
    let streaming = tokio::spawn(send(speech_request(
        &proxy.url("/v1/audio/speech"),
        serde_json::json!({"model": "slow", "voice": "v", "input": "long"}),
    )));
    tokio::time::sleep(Duration::from_millis(150)).await;
    write(&file, &config("2s", false));
    let reloaded = proxy.gateway.reload("test").await.unwrap();
    assert_eq!(reloaded.kept, ["a"]);
    assert_eq!(reloaded.changed, ["dead"]);
    assert_eq!(reloaded.removed, ["slow"]);

    // The changed upstream is a new one, but its endpoint is still ejected.
    let s = status(&format!("http://{}", proxy.addr)).await;
    let dead_status = s["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "dead")
        .unwrap()
        .clone();
    let endpoint = &dead_status["endpoints"][0];
    assert!(
        endpoint["ejected_until"].as_f64().unwrap() > 200.0, // one hour, capped by eject_time_max (5 min)
        "{endpoint}"
    );
    assert_eq!(endpoint["available"], false);

    // The stream started before the reload ends whole, on the configuration it began with.
    let answer = streaming.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, chunks.concat());
    // The model `slow` has no route of its own now: the catch-all takes it.
    let answer = send(speech_request(
        &proxy.url("/v1/audio/speech"),
        serde_json::json!({"model": "slow", "voice": "v", "input": "again"}),
    ))
    .await;
    assert_eq!(answer.header("x-voxgate-upstream"), Some("a"));
    // The removed upstream's kept-alive connection is closed once nothing uses it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while slow.closed() < slow.connections() {
        assert!(
            Instant::now() < deadline,
            "slow's connection was not closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(slow.count(), 1);
}

#[tokio::test]
async fn settings_that_need_a_restart_are_named_and_the_rest_applies() {
    let (a, b) = (engine("A").await, engine("B").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("voxgate.toml");
    let two = |server: &str, to: &str| {
        format!(
            "[server]\n{server}\n[upstreams.a]\nurl = \"{}\"\n[upstreams.b]\nurl = \"{}\"\n[[routes]]\nto = [\"{to}\"]\n",
            a.url(),
            b.url()
        )
    };
    write(
        &file,
        &two("max_connections = 100\nmax_in_flight = 10", "a"),
    );
    let proxy = Proxy::start_from_file(&file).await;
    write(
        &file,
        &two(
            "max_connections = 200\nthreads = 3\nmax_in_flight = 20",
            "b",
        ),
    );
    let reloaded = proxy.gateway.reload("test").await.unwrap();
    assert_eq!(
        reloaded.needs_restart,
        ["server.threads", "server.max_connections"]
    );
    let runtime = proxy.gateway.runtime();
    assert_eq!(runtime.config.server.max_connections, 100, "kept");
    assert_eq!(runtime.config.server.threads, None, "kept");
    assert_eq!(runtime.config.server.max_in_flight, 20, "applied");
    let (_, upstream, _) = speech_upstream(&format!("http://{}", proxy.addr)).await;
    assert_eq!(upstream.as_deref(), Some("b"));
}

#[tokio::test]
async fn a_bad_file_changes_nothing_and_says_where_it_is_wrong() {
    let a = engine("A").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("voxgate.toml");
    let good = single_upstream(&a.url(), "");
    write(&file, &good);
    let proxy = Proxy::start_from_file(&file).await;
    let before = proxy.gateway.runtime();
    write(
        &file,
        &format!("{good}\n[server]\nmax_body_bytes = \"lots\"\n"),
    );
    let error = proxy.gateway.reload("test").await.unwrap_err();
    assert!(error.contains("voxgate.toml:"), "{error}");
    assert!(
        Arc::ptr_eq(&before, &proxy.gateway.runtime()),
        "nothing swapped"
    );
    let history = proxy.gateway.reloads().history();
    assert_eq!((history.succeeded, history.failed), (0, 1));
    // Unreadable, too.
    std::fs::remove_file(&file).unwrap();
    let error = proxy.gateway.reload("test").await.unwrap_err();
    assert!(error.contains("voxgate.toml"), "{error}");
    let (status, upstream, _) = speech_upstream(&format!("http://{}", proxy.addr)).await;
    assert_eq!((status, upstream.as_deref()), (200, Some("a")));
    // A good file again clears the error.
    write(&file, &good);
    proxy.gateway.reload("test").await.unwrap();
    assert!(proxy.gateway.reloads().history().last_error.is_none());
}

#[tokio::test]
async fn the_watcher_reloads_a_saved_file_once_and_ignores_saves_that_change_nothing() {
    let (a, b) = (engine("A").await, engine("B").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("voxgate.toml");
    let routed = |to: &str| {
        format!(
            "[upstreams.a]\nurl = \"{}\"\n[upstreams.b]\nurl = \"{}\"\n[[routes]]\nto = [\"{to}\"]\n",
            a.url(),
            b.url()
        )
    };
    write(&file, &routed("a"));
    let proxy = Proxy::start_from_file(&file).await;
    let _watcher = voxgate::service::watch::watch(&file, proxy.gateway.clone()).unwrap();
    let base = format!("http://{}", proxy.addr);

    // An editor's save: a new file written beside, then renamed over the old one, after
    // a moment where the file is half-written.
    write(&file, "[upstreams.a]\nurl = ");
    let swap = dir.path().join(".voxgate.toml.swp");
    write(&swap, &routed("b"));
    std::fs::rename(&swap, &file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while speech_upstream(&base).await.1.as_deref() != Some("b") {
        assert!(Instant::now() < deadline, "the saved file was not loaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(voxgate::service::watch::SETTLE * 3).await;
    let history = proxy.gateway.reloads().history();
    assert_eq!(
        (history.succeeded, history.failed),
        (1, 0),
        "one reload, no half-file"
    );

    // Touching the file, or writing the same bytes, reloads nothing.
    write(&file, &routed("b"));
    write(&dir.path().join("neighbour.txt"), "x");
    tokio::time::sleep(voxgate::service::watch::SETTLE * 4).await;
    assert_eq!(proxy.gateway.reloads().history().succeeded, 1);
}

/// The daemon with an admin listener: `voxgate reload --admin` and `--pid-file`, and
/// `POST /reload` refused on the API listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voxgate_reload_by_admin_url_and_by_pid_file() {
    let (a, b) = (engine("A").await, engine("B").await);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("voxgate.toml");
    let pid_file = dir.path().join("voxgate.pid");
    let admin_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let routed = |to: &str| {
        format!(
            "[server]\nadmin_listen = \"127.0.0.1:{admin_port}\"\n[upstreams.a]\nurl = \"{}\"\n[upstreams.b]\nurl = \"{}\"\n[[routes]]\nto = [\"{to}\"]\n",
            a.url(),
            b.url()
        )
    };
    write(&file, &routed("a"));
    let mut command = Command::new(BIN);
    command.arg("--pid-file").arg(&pid_file);
    let (mut daemon, address, _log, _) = start_with(command, &file);
    let base = format!("http://{address}");
    let admin = format!("http://127.0.0.1:{admin_port}");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(pid, daemon.id());

    let public = send(
        Request::post(format!("{base}/reload"))
            .body(full_body(""))
            .unwrap(),
    )
    .await;
    assert_eq!(public.status, 404, "no reloading over the API listener");

    write(&file, &routed("b"));
    let out = Command::new(BIN)
        .args(["reload", "--admin", &admin])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["reloaded"], true);
    assert_eq!(printed["upstreams"]["kept"], serde_json::json!(["a", "b"]));
    assert_eq!(speech_upstream(&base).await.1.as_deref(), Some("b"));

    write(
        &file,
        &format!("{}\n[[routes]]\nto = [\"x\"]\n", routed("a")),
    );
    let out = Command::new(BIN)
        .args(["reload", "--admin", &admin])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("NOT reloaded"), "{stderr}");
    assert!(
        stderr.contains("voxgate.toml:11:"),
        "file:line:col: {stderr}"
    );
    assert_eq!(speech_upstream(&base).await.1.as_deref(), Some("b"));

    write(&file, &routed("a"));
    let out = Command::new(BIN)
        .arg("--pid-file")
        .arg(&pid_file)
        .arg("reload")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    reloads_reach(&admin, 3).await;
    assert_eq!(speech_upstream(&base).await.1.as_deref(), Some("a"));

    stop_with_sigterm(&mut daemon);
    assert!(!pid_file.exists(), "the pid file is removed on exit");
}

/// Reads datagrams until one starts with `prefix` (10 s at most); returns it and the ones
/// before it.
fn until(socket: &UnixDatagram, prefix: &str) -> (String, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut before = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "no {prefix} within 10 s: {before:?}"
        );
        match socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                if message.starts_with(prefix) {
                    return (message, before);
                }
                before.push(message);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn systemd_hears_ready_reloading_watchdog_and_stopping_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let manager = UnixDatagram::bind(&socket_path).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let file = dir.path().join("voxgate.toml");
    write(&file, &single_upstream("http://127.0.0.1:1", ""));
    let mut command = Command::new(BIN);
    command
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000");
    let started = Instant::now();
    let (mut daemon, _address, _log, _) = start_with(command, &file);

    let (ready, before) = until(&manager, "READY=1");
    assert!(before.is_empty(), "READY=1 comes first: {before:?}");
    assert!(
        ready.contains("\nSTATUS=serving 1 route(s) over 1 upstream(s)"),
        "{ready}"
    );

    // Watchdog pings every 200 ms (half of WATCHDOG_USEC).
    let (_, _) = until(&manager, "WATCHDOG=1");
    let (_, _) = until(&manager, "WATCHDOG=1");
    assert!(started.elapsed() < Duration::from_secs(5));

    hangup(daemon.id());
    let (reloading, _) = until(&manager, "RELOADING=1");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .expect("MONOTONIC_USEC");
    assert!(usec > 0);
    let (ready, between) = until(&manager, "READY=1");
    assert!(
        between.iter().all(|m| m == "WATCHDOG=1"),
        "nothing else between RELOADING and READY: {between:?}"
    );
    assert!(ready.contains("STATUS=serving"), "{ready}");

    // A failed reload is READY again too, and says so in STATUS.
    write(&file, "[[routes]]\nto = [\"gone\"]\n");
    hangup(daemon.id());
    until(&manager, "RELOADING=1");
    let (ready, _) = until(&manager, "READY=1");
    assert!(ready.contains("last reload FAILED: "), "{ready}");

    let kill = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let (stopping, _) = until(&manager, "STOPPING=1");
    assert!(stopping.contains("STATUS="), "{stopping}");
    let status = daemon.wait().unwrap();
    assert!(status.success());
}
