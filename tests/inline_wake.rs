//! hyper hands a request body to voxgate through a channel whose use wakes the
//! connection's own task. The server takes that wake-up at once for a small body, instead
//! of putting the connection behind every other ready one, and leaves an upload's to the
//! run queue (`src/server/inline_wake.rs`). One test in a binary of its own: the count of wake-ups
//! taken is process-wide, and nothing else may add to it meanwhile.

mod support;

use serde_json::json;
use support::*;

async fn check() {
    let up = Scripted::always(Reply::ok("application/json", "{\"text\":\"ok\"}")).await;
    let proxy = Proxy::start(&format!(
        "[upstreams.a]\nurl = \"{}\"\n[[routes]]\nto = [\"a\"]\n",
        up.url()
    ))
    .await;

    // A request whose body the client's stack sends apart from its head wakes the
    // connection from the socket, not during its poll: rare (about 1 run in 60 of 3
    // requests), so most of 10 requests, not all, must have theirs taken at once.
    let before = voxgate::server::inline_wake::taken();
    for _ in 0..10 {
        let speech = json!({"model": "tts-1", "input": "Hello", "voice": "alloy"});
        let answer = send(speech_request(&proxy.url("/v1/audio/speech"), speech)).await;
        assert_eq!(answer.status, 200);
    }
    let taken = voxgate::server::inline_wake::taken() - before;
    assert!(
        taken >= 7,
        "{taken} wake-ups taken at once for 10 small requests"
    );

    let before = voxgate::server::inline_wake::taken();
    let audio = vec![7u8; 1 << 20];
    let body = form(&[
        ("file", Some("a.wav"), &audio),
        ("model", None, b"whisper-1"),
    ]);
    let answer = transcribe(&proxy, body).await;
    assert_eq!(answer.status, 200);
    assert!(
        up.last().body.len() > 1 << 20,
        "the upload went through whole"
    );
    assert_eq!(
        voxgate::server::inline_wake::taken(),
        before,
        "an upload's hand-overs go through the run queue"
    );
}

#[test]
fn small_bodies_are_handed_over_at_once_and_uploads_are_not() {
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    current.block_on(check());
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    multi.block_on(check());
}
