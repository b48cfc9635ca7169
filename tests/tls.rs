//! Inbound TLS (`[server] tls`): HTTP/2 and HTTP/1.1 by ALPN, streaming over TLS,
//! certificates re-read on reload, and a bad pair refused at load with its place.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use support::pki::TestCa;
use support::*;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use voxgate::config::Config;

fn config(upstream: &str, cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "[server]\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n{}",
        cert.display(),
        key.display(),
        single_upstream(upstream, "")
    )
}

/// A TLS connection to `proxy` trusting `ca`, offering `alpn`.
async fn connect_tls(proxy: &Proxy, ca: &TestCa, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(ca.client(alpn)));
    let tcp = connect(proxy.addr).await;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .expect("handshake within 10 s")
        .expect("the handshake succeeds with the test CA")
}

fn peer_certificate(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn speech(proxy: &Proxy) -> Request<Full<Bytes>> {
    let body = serde_json::json!({"model": "tts-1", "voice": "alloy", "input": "hi"}).to_string();
    Request::post(format!(
        "https://localhost:{}/v1/audio/speech",
        proxy.addr.port()
    ))
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(body)))
    .unwrap()
}

/// Sends a speech request over HTTP/2 on `stream`; the audio's chunks as they came.
async fn speech_over_h2(proxy: &Proxy, stream: TlsStream<TcpStream>) -> Vec<Bytes> {
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = send.send_request(speech(proxy)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let mut body = response.into_body();
    let mut chunks = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            chunks.push(data);
        }
    }
    chunks
}

#[tokio::test]
async fn h2_is_negotiated_by_alpn_and_audio_streams_through() {
    let chunks: Vec<Bytes> = (0..4u8).map(|i| Bytes::from(vec![i; 2048])).collect();
    let upstream = Scripted::always(Reply::Chunks {
        status: 200,
        content_type: "audio/pcm",
        chunks: chunks.clone(),
        delay: Duration::from_millis(30),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.leaf(dir.path(), "server");
    let proxy = Proxy::start(&config(&upstream.url(), &leaf.cert, &leaf.key)).await;

    let stream = connect_tls(&proxy, &ca, &[b"h2", b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(peer_certificate(&stream), leaf.der);
    let got = speech_over_h2(&proxy, stream).await;
    assert_eq!(got.concat(), chunks.concat(), "the audio arrives whole");
    assert!(
        got.len() > 1,
        "streamed, not buffered: {} piece(s)",
        got.len()
    );
    assert_eq!(upstream.last().json()["input"], "hi");
}

#[tokio::test]
async fn http1_is_served_to_a_client_that_offers_only_it() {
    let upstream = Scripted::always(Reply::ok("audio/pcm", "pcm")).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.leaf(dir.path(), "server");
    let proxy = Proxy::start(&config(&upstream.url(), &leaf.cert, &leaf.key)).await;

    let stream = connect_tls(&proxy, &ca, &[b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    for _ in 0..2 {
        // Twice on one connection: kept alive over TLS. (hyper's connection-level client
        // adds no Host, and HTTP/1.1 needs one.)
        let mut request = speech(&proxy);
        let host = format!("localhost:{}", proxy.addr.port());
        request
            .headers_mut()
            .insert(http::header::HOST, host.parse().unwrap());
        let response = send.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_11);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "pcm");
    }
    assert_eq!(upstream.count(), 2);
}

#[tokio::test]
async fn a_plain_http_request_to_the_tls_port_reaches_no_upstream() {
    let upstream = Scripted::always(Reply::ok("audio/pcm", "pcm")).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.leaf(dir.path(), "server");
    let proxy = Proxy::start(&config(&upstream.url(), &leaf.cert, &leaf.key)).await;
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client().request(
            Request::post(proxy.url("/v1/audio/speech"))
                .header("content-type", "application/json")
                .body(full_body(r#"{"model":"tts-1","voice":"a","input":"x"}"#))
                .unwrap(),
        ),
    )
    .await
    .expect("an answer or an error within 10 s");
    assert!(
        answer.is_err(),
        "plain HTTP gets no HTTP answer: {answer:?}"
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn a_reload_serves_renewed_certificates_on_new_connections() {
    let upstream = Scripted::always(Reply::ok("audio/pcm", "pcm")).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let first = ca.leaf(dir.path(), "server");
    let file = dir.path().join("voxgate.toml");
    std::fs::write(&file, config(&upstream.url(), &first.cert, &first.key)).unwrap();
    let proxy = Proxy::start_from_file(&file).await;

    let before = connect_tls(&proxy, &ca, &[b"h2"]).await;
    assert_eq!(peer_certificate(&before), first.der);
    // Renewal writes new files over the old ones; the config file is unchanged.
    let renewed = ca.leaf(dir.path(), "server");
    assert_ne!(renewed.der, first.der);
    let reloaded = proxy.gateway.reload("test").await.expect("reloads");
    assert_eq!(reloaded.kept, ["a"], "the upstream is untouched");

    let after = connect_tls(&proxy, &ca, &[b"h2"]).await;
    assert_eq!(peer_certificate(&after), renewed.der);
    assert_eq!(speech_over_h2(&proxy, after).await.concat(), b"pcm");
    // The connection made before the reload keeps working.
    assert_eq!(speech_over_h2(&proxy, before).await.concat(), b"pcm");
}

#[test]
fn a_key_that_does_not_fit_the_certificate_is_refused_at_load_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let one = ca.leaf(dir.path(), "one");
    let two = ca.leaf(dir.path(), "two");
    let text = config("http://127.0.0.1:1", &one.cert, &two.key);
    let error = Config::from_toml(&text, "voxgate.toml")
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("voxgate.toml:2:"), "{error}");
    assert!(
        error.contains("`tls.key` does not fit `tls.cert`"),
        "{error}"
    );

    let missing = config("http://127.0.0.1:1", &dir.path().join("nope.pem"), &one.key);
    let error = Config::from_toml(&missing, "voxgate.toml")
        .unwrap_err()
        .to_string();
    assert!(error.contains("`tls.cert` cannot be read"), "{error}");

    let swapped = config("http://127.0.0.1:1", &one.key, &one.cert);
    let error = Config::from_toml(&swapped, "voxgate.toml")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("`tls.cert` holds no PEM certificate"),
        "{error}"
    );
    assert!(
        error.contains("`tls.key` cannot be read as a PEM private key"),
        "{error}"
    );
}

#[test]
fn tls_paths_may_name_an_environment_variable_as_systemd_credentials_need() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    ca.leaf(dir.path(), "tls");
    let text = "[server]\ntls = { cert = \"${CREDENTIALS_DIRECTORY}/tls.pem\", key = \"${CREDENTIALS_DIRECTORY}/tls.key\" }\n[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n[[routes]]\nto = [\"a\"]\n";
    let credentials = dir.path().display().to_string();
    let env = |name: &str| (name == "CREDENTIALS_DIRECTORY").then(|| credentials.clone());
    let config = Config::from_toml_with_env(text, "voxgate.toml", &env).unwrap();
    let tls = config.server.tls.unwrap();
    assert_eq!(tls.cert, dir.path().join("tls.pem"));
    let unset = Config::from_toml_with_env(text, "voxgate.toml", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(unset.contains("CREDENTIALS_DIRECTORY"), "{unset}");
}
