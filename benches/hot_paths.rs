//! The pure hot parts of the request path, measured alone:
//! rule matching with 10/100/1000 routes (the match is the last route: worst case),
//! speech JSON inspection and rewrite, and multipart inspection with `model` before and
//! after a 25 MiB file (openai-python's and openai-node's orders).
//!
//! `cargo bench --bench hot_paths`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{header, HeaderMap, HeaderValue, Method};
use http_body_util::Full;
use voxgate::config::Config;
use voxgate::request::intake::{read_form, read_json, IntakeLimits};
use voxgate::request::payload::Edits;
use voxgate::request::replay::{MemoryBudget, ReplayLimits};
use voxgate::route::{Operation, RequestFacts, Router};

fn router(routes: usize) -> Router {
    let mut text = String::from("[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n");
    for i in 0..routes - 1 {
        text.push_str(&format!(
            "[[routes]]\nmatch = {{ endpoint = \"speech\", model = \"model-{i}\", voice = [\"v{i}_*\", \"exact-{i}\"] }}\nto = [\"a\"]\n"
        ));
    }
    text.push_str(
        "[[routes]]\nmatch = { endpoint = \"speech\", voice = \"af_*\" }\nto = [\"a\"]\n",
    );
    let config = Config::from_toml_with_env(&text, "bench", &|_| None).expect("bench config");
    Router::new(config.routes)
}

fn rule_matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for n in [10, 100, 1000] {
        let r = router(n);
        let facts = RequestFacts {
            operation: Operation::Speech,
            method: &Method::POST,
            path: "/v1/audio/speech",
            model: Some("tts-1"),
            voice: Some("af_sky"),
            response_format: Some("pcm"),
            stream: false,
        };
        group.bench_with_input(BenchmarkId::from_parameter(n), &facts, |b, f| {
            b.iter(|| black_box(r.find(black_box(f)).map(|(i, _)| i)))
        });
    }
    group.finish();
}

fn limits() -> IntakeLimits {
    IntakeLimits {
        max_body_bytes: 32 << 20,
        max_json_bytes: 1 << 20,
        idle_timeout: Duration::from_secs(30),
        replay: ReplayLimits {
            memory_per_request: 64 << 20,
            budget: Arc::new(MemoryBudget::new(64 << 20)),
            spill_dir: None,
        },
    }
}

fn json_inspection(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let body = Bytes::from_static(
        br#"{"model":"tts-1","input":"Hello from voxgate, this is a short sentence to speak.","voice":"af_sky","response_format":"pcm","speed":1.0}"#,
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let limits = limits();
    let none = Default::default();
    let voices = [("af_sky".to_string(), "nova".to_string())]
        .into_iter()
        .collect();
    let mut group = c.benchmark_group("json");
    group.bench_function("inspect", |b| {
        b.iter(|| {
            let (p, _) = rt
                .block_on(read_json(Full::new(body.clone()), &headers, &limits))
                .expect("valid");
            black_box(p.model().map(str::len))
        })
    });
    let (payload, _) = rt
        .block_on(read_json(Full::new(body.clone()), &headers, &limits))
        .expect("valid");
    group.bench_function("render_unchanged", |b| {
        let edits = Edits::plain(&[], &none, &none);
        b.iter(|| black_box(payload.render(&edits)))
    });
    group.bench_function("render_voice_mapped", |b| {
        let edits = Edits::plain(&[], &none, &voices);
        b.iter(|| black_box(payload.render(&edits)))
    });
    group.finish();
}

fn form(model_first: bool, audio: &[u8]) -> Bytes {
    let boundary = "bench-boundary";
    let text = |name: &str, value: &str| {
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        )
        .into_bytes()
    };
    let mut file = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
    )
    .into_bytes();
    file.extend_from_slice(audio);
    file.extend_from_slice(b"\r\n");
    let fields = [text("model", "whisper-1"), text("response_format", "text")].concat();
    let mut out = if model_first {
        [fields, file].concat()
    } else {
        [file, fields].concat()
    };
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    Bytes::from(out)
}

fn multipart_inspection(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let audio = vec![0x5au8; 25 * 1024 * 1024];
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("multipart/form-data; boundary=bench-boundary"),
    );
    let limits = limits();
    let mut group = c.benchmark_group("multipart_25MiB");
    group.sample_size(10);
    for (name, model_first) in [("model_first", true), ("model_after_file", false)] {
        let body = form(model_first, &audio);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                // Delivered in 64 KiB pieces, as a socket would.
                let pieces: Vec<Bytes> = (0..body.len())
                    .step_by(65_536)
                    .map(|i| body.slice(i..(i + 65_536).min(body.len())))
                    .collect();
                let stream = futures_util::stream::iter(
                    pieces
                        .into_iter()
                        .map(|p| Ok::<_, std::convert::Infallible>(http_body::Frame::data(p))),
                );
                let (p, _) = rt
                    .block_on(read_form(
                        http_body_util::StreamBody::new(stream),
                        &headers,
                        &limits,
                    ))
                    .expect("valid");
                black_box(p.model().map(str::len))
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    rule_matching,
    json_inspection,
    multipart_inspection
);
criterion_main!(benches);
