//! `voxgate explain`, run as the binary: for every shipped configuration it explains a
//! speech and a transcription request; for two of them, the request it says each upstream
//! gets is checked against what a scripted upstream behind an in-process voxgate on the
//! same file actually receives for the same client request — same method, path and
//! headers, the same body byte for byte. `--live` reads a running voxgate's ejections.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use http::Request;
use serde_json::Value;
use support::*;
use voxgate::config::Config;

const KEY: &str = "sk-explain-secret-never-printed";
/// What explain's client sends as its key (`voxgate::gateway::explain::CLIENT_KEY`).
const CLIENT_KEY: &str = voxgate::gateway::explain::CLIENT_KEY;

fn voxgate() -> Command {
    let mut c = voxgate_bin();
    c.env("OPENAI_API_KEY", KEY);
    c
}

/// Runs `voxgate explain --config FILE ARGS…`: exit code, stdout, stderr.
fn explain(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = voxgate()
        .arg("explain")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !stdout.contains(KEY) && !stderr.contains(KEY),
        "a key was printed"
    );
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// `config` as a file explain can load here: a `spill_dir` that does not exist on this
/// machine (the packaging's /var/cache/voxgate) is pointed at the temp dir.
fn loadable(config: &Path) -> PathBuf {
    let text = std::fs::read_to_string(config).unwrap();
    let missing = text.lines().any(|l| {
        l.trim_start().starts_with("spill_dir")
            && l.split('"').nth(1).is_some_and(|d| !Path::new(d).is_dir())
    });
    if !missing {
        return config.to_path_buf();
    }
    let tmp = std::env::temp_dir().display().to_string();
    let text: Vec<String> = text
        .lines()
        .map(|l| match l.trim_start().starts_with("spill_dir") {
            true => format!("spill_dir = \"{tmp}\""),
            false => l.to_string(),
        })
        .collect();
    let name = config.file_name().unwrap().to_string_lossy();
    let parent = config
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy();
    temp_file(&format!("{parent}-{name}"), text.join("\n").as_bytes())
}

/// The configuration as the binary loads it, with the key set in its environment.
fn load(config: &Path) -> Config {
    let text = std::fs::read_to_string(config).unwrap();
    let env = |name: &str| (name == "OPENAI_API_KEY").then(|| KEY.to_string());
    Config::from_toml_with_env(&text, &config.display().to_string(), &env)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `explain --json`, parsed; asserts the exit code agrees with the outcome.
fn explain_json(config: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, stdout, stderr) = explain(config, &all);
    let json: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{}: {e}: {stdout} {stderr}", config.display()));
    let taken = ["routed", "answered"].contains(&json["outcome"]["kind"].as_str().unwrap());
    assert_eq!(code, if taken { 0 } else { 1 }, "{json:#}");
    json
}

fn shipped_configs() -> Vec<PathBuf> {
    tomls_in(&[
        "config",
        "examples",
        "packaging/docker",
        "packaging/systemd",
    ])
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("voxgate-explain-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A small WAV-like file (not valid audio: nobody decodes it here).
fn clip() -> (PathBuf, Vec<u8>) {
    let mut bytes = b"RIFF\x24\x00\x00\x00WAVEfmt ".to_vec();
    bytes.extend(noise(3000));
    (temp_file("clip.wav", &bytes), bytes)
}

/// A body's bytes from explain's pieces, each file's bytes put back.
fn reassemble(body: &Value, file: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in body["pieces"].as_array().unwrap() {
        if let Some(text) = piece["text"].as_str() {
            out.extend_from_slice(text.as_bytes());
        } else if let Some(b64) = piece["base64"].as_str() {
            out.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap(),
            );
        } else {
            assert_eq!(piece["file"]["bytes"], file.len(), "{piece}");
            out.extend_from_slice(file);
        }
    }
    assert_eq!(out.len() as u64, body["length"].as_u64().unwrap());
    out
}

#[test]
fn every_shipped_config_explains_speech_and_transcriptions() {
    let (clip, _) = clip();
    let file = format!("file=@{}", clip.display());
    let files = shipped_configs();
    assert!(files.len() >= 9, "{files:?}");
    let mut routed = 0;
    for config in &files {
        let config = &loadable(config);
        let routes = load(config).routes.len();
        let speech = ["speech", "model=tts-1", "voice=af_sky", "input=hi"];
        let stt = ["transcriptions", "model=whisper-1", "language=auto", &file];
        let translate = ["translations", "model=whisper-1", &file];
        for args in [&speech[..], &stt[..], &translate[..]] {
            let json = explain_json(config, args);
            if json["outcome"]["kind"] == "routed" {
                routed += 1;
                let tried: Vec<&Value> = json["upstreams"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|u| u["attempt"].is_u64())
                    .collect();
                assert!(!tried.is_empty(), "{json:#}");
                for u in tried {
                    let request = &u["request"];
                    assert!(
                        request["url"].as_str().unwrap().starts_with("http"),
                        "{u:#}"
                    );
                    assert!(request["body"]["length"].as_u64().unwrap() > 0);
                }
            } else {
                assert_eq!(json["outcome"]["kind"], "no_route", "{json:#}");
                assert_eq!(
                    json["routes_not_matching"].as_array().unwrap().len(),
                    routes,
                    "every route says why it does not match: {json:#}"
                );
            }
            // The text form runs the same, with the same exit code.
            let (code, text, _) = explain(config, args);
            assert_eq!(code == 0, json["outcome"]["kind"] == "routed");
            assert!(text.contains("/v1/audio/"), "{text}");
        }
    }
    assert!(routed >= 20, "only {routed} requests routed");
}

#[test]
fn the_text_names_the_route_the_upstreams_and_what_each_gets() {
    let (code, text, _) = explain(
        &repo("config/local-first.toml"),
        &[
            "speech",
            "model=tts-1",
            "voice=af_sky",
            "input=hi",
            "lang_code:=\"a\"",
        ],
    );
    assert_eq!(code, 0, "{text}");
    for expected in [
        "route at line",
        "match = { endpoint = \"speech\" }",
        "1. kokoro (kind kokoro): first",
        "   POST http://127.0.0.1:8880/v1/audio/speech",
        "2. openai (kind openai): fallback",
        "   POST https://api.openai.com/v1/audio/speech",
        "     authorization: Bearer <redacted>",
        "\"voice\": \"nova\"",
        "\"lang_code\": \"a\"",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn routes_that_do_not_match_say_why_and_no_route_exits_1() {
    let json = explain_json(
        &repo("config/model-router.toml"),
        &["speech", "model=gpt-4o-mini-tts", "voice=alloy", "input=hi"],
    );
    assert_eq!(json["outcome"]["kind"], "routed");
    assert_eq!(json["routes_not_matching"], Value::Array(vec![]));
    let json = explain_json(
        &repo("config/model-router.toml"),
        &["speech", "model=tts-1", "voice=alloy", "input=hi"],
    );
    let why = &json["routes_not_matching"][0]["why"][0];
    assert_eq!(
        why, "model wants tts-1-hd | gpt-4o-*, the request has `tts-1`",
        "{json:#}"
    );
    assert_eq!(
        json["route"]["set"][0],
        serde_json::json!(["model", "kokoro"])
    );

    let json = explain_json(
        &repo("examples/kokoro-pool.toml"),
        &[
            "transcriptions",
            "model=whisper-1",
            &format!("file=@{}", clip().0.display()),
        ],
    );
    assert_eq!(json["outcome"]["status"], 404);
}

#[test]
fn an_upstream_that_cannot_take_the_request_is_shown_with_why() {
    let json = explain_json(
        &repo("config/local-first.toml"),
        &["speech", "model=gpt-4o-tts", "voice=nova", "input=hi"],
    );
    let kokoro = &json["upstreams"][0];
    assert_eq!(kokoro["attempt"], Value::Null);
    assert!(
        kokoro["unsuitable"]
            .as_str()
            .unwrap()
            .contains("serves only the models kokoro, tts-1"),
        "{kokoro:#}"
    );
    assert!(kokoro["request"].is_null(), "nothing would be sent there");
    assert_eq!(json["upstreams"][1]["tried"], "first");
    // With no other upstream, voxgate answers 400 and explain exits 1.
    let alone = temp_file(
        "kokoro-alone.toml",
        b"[upstreams.k]\nkind = \"kokoro\"\nurl = \"http://127.0.0.1:8880\"\n[[routes]]\nto = [\"k\"]\n",
    );
    let json = explain_json(
        &alone,
        &["speech", "model=gpt-4o-tts", "voice=nova", "input=hi"],
    );
    assert_eq!(json["outcome"]["kind"], "refused");
    assert_eq!(json["outcome"]["status"], 400);
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    let config = repo("config/default.toml");
    for (args, says) in [
        (
            &["speak", "model=x"][..],
            "speech, transcriptions, translations, other",
        ),
        (&["speech", "model"], "not key=value"),
        (
            &["transcriptions", "model=whisper-1", "file=@-"],
            "standard input",
        ),
        (
            &[
                "transcriptions",
                "model=whisper-1",
                "file=@/nonexistent/clip.wav",
            ],
            "cannot read `/nonexistent/clip.wav`",
        ),
        (&["other", "GET"], "method and a path"),
    ] {
        let (code, stdout, stderr) = explain(&config, args);
        assert_eq!(code, 2, "{args:?}: {stdout}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn discovery_and_refusals_are_explained_too() {
    let config = repo("config/local-first.toml");
    let json = explain_json(&config, &["other", "GET", "/v1/models"]);
    assert_eq!(json["outcome"]["kind"], "answered", "{json:#}");
    let asked: Vec<&str> = json["lists"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(asked, ["kokoro", "openai", "whisper"]);
    assert_eq!(
        json["lists"][1]["request"]["url"],
        "https://api.openai.com/v1/models"
    );
    // Another `other` request is routed.
    let json = explain_json(&config, &["other", "GET", "/v1/models/tts-1"]);
    assert_eq!(
        json["upstreams"][0]["request"]["url"],
        "https://api.openai.com/v1/models/tts-1"
    );
    // A speech body without a voice is refused by the intake, as the server refuses it.
    let json = explain_json(&config, &["speech", "model=tts-1", "input=hi"]);
    assert_eq!(json["outcome"]["kind"], "refused");
    assert_eq!(json["outcome"]["status"], 400);
    assert!(json["outcome"]["message"]
        .as_str()
        .unwrap()
        .contains("voice"));
}

/// `config`'s text with its upstream addresses pointed at scripted ones and the key
/// written in, as a file.
fn pointed(config: &str, swaps: &[(&str, &str)]) -> (PathBuf, Config) {
    let mut text = std::fs::read_to_string(repo(config)).unwrap();
    for (theirs, ours) in swaps {
        assert!(text.contains(theirs), "{config} no longer names {theirs}");
        text = text.replace(theirs, ours);
    }
    text = text.replace("${OPENAI_API_KEY:-}", KEY);
    let name = config.replace('/', "-");
    let path = temp_file(&name, text.as_bytes());
    let parsed = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    (path, parsed)
}

/// An engine that answers its health check, 503 to everything else when `fail`, 200
/// otherwise.
async fn engine(fail: bool) -> Scripted {
    Scripted::start(move |r: &Received| match (r.method.as_str(), fail) {
        ("GET", _) => Reply::json(200, serde_json::json!({ "status": "ok" })),
        (_, true) => Reply::status(503),
        (_, false) => Reply::json(200, serde_json::json!({ "text": "ok" })),
    })
    .await
}

/// Sends the client request explain describes to `proxy`.
async fn send_as_explained(proxy: &Proxy, client: &Value, file: &[u8]) -> Answer {
    let mut request = Request::builder()
        .method(client["method"].as_str().unwrap())
        .uri(proxy.url(client["path"].as_str().unwrap()));
    for pair in client["headers"].as_array().unwrap() {
        let (name, value) = (pair[0].as_str().unwrap(), pair[1].as_str().unwrap());
        let value = if name == "authorization" {
            assert_eq!(value, "<client key>");
            CLIENT_KEY
        } else {
            value
        };
        request = request.header(name, value);
    }
    let body = reassemble(&client["body"], file);
    send(request.body(full_body(body)).unwrap()).await
}

/// Asserts that `got` is the request explain said `upstream` would get: method, URL, every
/// header (the request id aside, keys as configured) and the body, byte for byte.
fn assert_received_as_explained(upstream: &Value, got: &Received, at: &str, file: &[u8]) {
    let request = &upstream["request"];
    assert_eq!(got.method, request["method"].as_str().unwrap());
    assert_eq!(
        format!("{at}{}", got.path),
        request["url"].as_str().unwrap()
    );
    let mut explained: Vec<(String, String)> = Vec::new();
    for pair in request["headers"].as_array().unwrap() {
        let name = pair[0].as_str().unwrap().to_string();
        let value = match pair[1].as_str().unwrap() {
            "<client key>" => CLIENT_KEY.to_string(),
            "Bearer <redacted>" => format!("Bearer {KEY}"),
            v => v.to_string(),
        };
        if name != "x-request-id" {
            explained.push((name, value));
        }
    }
    let mut received: Vec<(String, String)> = got
        .headers
        .iter()
        .filter(|(n, _)| n.as_str() != "x-request-id")
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect();
    explained.sort();
    received.sort();
    assert_eq!(received, explained, "headers of {}", upstream["name"]);
    assert!(got.header("x-request-id").is_some());
    let body = reassemble(&request["body"], file);
    assert_eq!(
        got.body, body,
        "{}: the body explain printed is the body sent",
        upstream["name"]
    );
}

#[tokio::test]
async fn local_first_upstreams_receive_exactly_what_explain_says() {
    let kokoro = engine(false).await;
    let whisper = engine(true).await;
    let openai = engine(false).await;
    let (path, config) = pointed(
        "config/local-first.toml",
        &[
            ("http://127.0.0.1:8880", &kokoro.url()),
            ("http://127.0.0.1:2022", &whisper.url()),
            ("https://api.openai.com", &openai.url()),
        ],
    );
    let proxy = Proxy::start_with(config).await;
    let (clip, bytes) = clip();
    let file = format!("file=@{}", clip.display());
    let cases: [(&[&str], &Scripted, usize); 3] = [
        // Speech to Kokoro, with a Kokoro extra and a voice object.
        (
            &[
                "speech",
                "model=tts-1",
                "voice:={\"id\":\"af_bella\"}",
                "input=Hello there",
                "lang_code=a",
                "speed:=1.1",
            ],
            &kokoro,
            0,
        ),
        // Whisper answers 503: the transcription goes on to OpenAI, without language=auto.
        (
            &[
                "transcriptions",
                "model=whisper-1",
                "language=auto",
                "response_format=text",
                &file,
            ],
            &openai,
            1,
        ),
        (
            &[
                "translations",
                "model=whisper-1",
                &file,
                "prompt=names: Ada",
            ],
            &openai,
            1,
        ),
    ];
    let mut explained = Vec::new();
    for (args, upstream, attempt) in cases {
        let path = path.clone();
        let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let json = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = owned.iter().map(String::as_str).collect();
            explain_json(&path, &args)
        })
        .await
        .unwrap();
        let answer = send_as_explained(&proxy, &json["client"], &bytes).await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        let upstream_json = &json["upstreams"][attempt];
        assert_eq!(upstream_json["attempt"], attempt + 1);
        let url = upstream_json["request"]["url"].as_str().unwrap();
        let got = upstream.last_to(&url[upstream.url().len()..]);
        assert_received_as_explained(upstream_json, &got, &upstream.url(), &bytes);
        explained.push(json);
    }
    // What whisper got before its 503 was what explain said too (the first upload; the
    // second may find it ejected and go straight on).
    let posts: Vec<Received> = whisper
        .received()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert!(!posts.is_empty());
    for (got, json) in posts.iter().zip(&explained[1..]) {
        assert_received_as_explained(&json["upstreams"][0], got, &whisper.url(), &bytes);
    }
    let translate = &explained[2]["upstreams"][0]["request"]["body"]["parts"][3];
    assert_eq!(
        translate["name"], "translate",
        "whisper.cpp is told to translate"
    );
    assert_eq!(translate["value"], "true");
}

#[tokio::test]
async fn model_router_sets_and_maps_exactly_as_explained() {
    let kokoro = engine(false).await;
    let whisper = engine(false).await;
    let openai = engine(false).await;
    let (path, config) = pointed(
        "config/model-router.toml",
        &[
            ("http://127.0.0.1:8880", &kokoro.url()),
            ("http://127.0.0.1:2022", &whisper.url()),
            ("https://api.openai.com", &openai.url()),
        ],
    );
    let proxy = Proxy::start_with(config).await;
    let (clip, bytes) = clip();
    let file = format!("file=@{}", clip.display());
    let cases: [(Vec<String>, &Scripted); 3] = [
        (
            [
                "speech",
                "model=tts-1",
                "voice=alloy",
                "input=Hi",
                "response_format=pcm",
            ]
            .map(String::from)
            .to_vec(),
            &kokoro,
        ),
        (
            [
                "speech",
                "model=gpt-4o-mini-tts",
                "voice=af_sky",
                "input=Hi",
                "instructions=calm",
            ]
            .map(String::from)
            .to_vec(),
            &openai,
        ),
        (
            vec![
                "transcriptions".into(),
                file.clone(),
                "model=whisper-1".into(),
                "stream=true".into(),
            ],
            &whisper,
        ),
    ];
    for (args, upstream) in cases {
        let path = path.clone();
        let json = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            explain_json(&path, &args)
        })
        .await
        .unwrap();
        let answer = send_as_explained(&proxy, &json["client"], &bytes).await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        let explained = &json["upstreams"][0];
        let url = explained["request"]["url"].as_str().unwrap();
        let got = upstream.last_to(&url[upstream.url().len()..]);
        assert_received_as_explained(explained, &got, &upstream.url(), &bytes);
    }
}

#[tokio::test]
async fn live_shows_an_ejected_upstream_skipped() {
    let dead = refused_addr().await;
    let good = engine(false).await;
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let text = format!(
        "[server]\nadmin_listen = \"{admin_addr}\"\n\n\
         [upstreams.local]\nurl = \"http://{dead}\"\neject_after = 1\neject_time = \"5m\"\n\n\
         [upstreams.cloud]\nurl = \"{}\"\n\n\
         [[routes]]\nto = [\"local\", \"cloud\"]\n",
        good.url()
    );
    let path = temp_file("live.toml", text.as_bytes());
    let proxy = Proxy::start(&text).await;
    tokio::spawn(voxgate::server::run_admin(
        admin,
        proxy.gateway.clone(),
        std::future::pending::<()>(),
    ));
    let speak = ["speech", "model=tts-1", "voice=alloy", "input=hi"].map(String::from);
    // Before any failure: local first.
    let live = format!("http://{admin_addr}");
    let args: Vec<String> = ["--live".to_string(), live.clone()]
        .into_iter()
        .chain(speak.clone())
        .collect();
    let (p, a) = (path.clone(), args.clone());
    let before = tokio::task::spawn_blocking(move || {
        explain_json(&p, &a.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert_eq!(before["upstreams"][0]["tried"], "first", "{before:#}");
    assert_eq!(before["upstreams"][0]["endpoints"][0]["state"], "available");

    // A request finds local refusing connections: it is ejected, cloud answers.
    let json = tokio::task::spawn_blocking({
        let p = path.clone();
        move || explain_json(&p, &["speech", "model=tts-1", "voice=alloy", "input=hi"])
    })
    .await
    .unwrap();
    let answer = send_as_explained(&proxy, &json["client"], b"").await;
    assert_eq!(answer.status, 200);

    let (p, a) = (path.clone(), args.clone());
    let after = tokio::task::spawn_blocking(move || {
        explain_json(&p, &a.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert_eq!(after["live"], live.as_str());
    let local = &after["upstreams"][0];
    assert_eq!(local["up"], false, "{after:#}");
    assert!(
        local["tried"].as_str().unwrap().starts_with("skipped"),
        "{local:#}"
    );
    assert!(
        local["endpoints"][0]["state"]
            .as_str()
            .unwrap()
            .starts_with("ejected for"),
        "{local:#}"
    );
    assert_eq!(after["upstreams"][1]["tried"], "first");
    assert_eq!(after["upstreams"][1]["attempt"], 1);

    let text = tokio::task::spawn_blocking(move || {
        explain(&path, &args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    assert!(
        text.1.contains("-  local (kind generic, down): skipped"),
        "{}",
        text.1
    );
    assert!(text.1.contains("ejected for"), "{}", text.1);
}

/// `explain --live` against something that is not there: a usage error, exit 2.
#[tokio::test]
async fn live_against_nothing_is_an_error() {
    let dead = refused_addr().await;
    let out = tokio::task::spawn_blocking(move || {
        explain(
            &repo("config/default.toml"),
            &[
                "--live",
                &format!("http://{dead}"),
                "speech",
                "model=tts-1",
                "voice=alloy",
                "input=hi",
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(out.0, 2);
    assert!(out.2.contains("cannot reach"), "{}", out.2);
}

/// The example in the README's "Explaining a request" is what the binary prints.
#[test]
fn the_readme_example_is_what_explain_prints() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let command =
        "voxgate explain --config config/model-router.toml speech model=tts-1 voice=alloy input=hi";
    let out = voxgate()
        .current_dir(repo(""))
        .args(command.split(' ').skip(1))
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let shown = format!("$ {command}\n{printed}```");
    assert!(
        readme.contains(&shown),
        "the README's example is out of date; it prints:\n{printed}"
    );
}
