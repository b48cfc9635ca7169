//! Body inspection on arbitrary bytes, delivered in arbitrary pieces: JSON (speech) and
//! multipart (uploads) must answer Ok or a clean error, never panic or hang.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use voxgate::intake::{read_form, read_json, IntakeLimits};
use voxgate::payload::Edits;
use voxgate::spool::{MemoryBudget, SpoolLimits};

fn limits() -> IntakeLimits {
    IntakeLimits {
        max_body_bytes: 1 << 20,
        max_json_bytes: 1 << 16,
        idle_timeout: Duration::from_secs(5),
        spool: SpoolLimits {
            memory_per_request: 1 << 12,
            budget: Arc::new(MemoryBudget::new(1 << 16)),
            spill_dir: None,
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // The selector picks the body kind and the piece size.
    let piece = usize::from(selector >> 1).max(1);
    let pieces: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> = rest
        .chunks(piece)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(pieces));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut headers = HeaderMap::new();
    let none = Default::default();
    let edits = Edits { set: &[], model_map: &none, voice_map: &none };
    runtime.block_on(async {
        let result = if selector & 1 == 0 {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            read_json(body, &headers, &limits()).await
        } else {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("multipart/form-data; boundary=B"),
            );
            read_form(body, &headers, &limits()).await
        };
        match result {
            Ok((payload, _)) => {
                let _ = (payload.model(), payload.voice(), payload.stream());
                let _ = payload.render(&edits);
            }
            Err(e) => {
                let _ = e.api_error();
            }
        }
    });
});
