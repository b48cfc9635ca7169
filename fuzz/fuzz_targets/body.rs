//! Body inspection on arbitrary bytes, delivered in arbitrary pieces: JSON (speech) and
//! multipart (uploads) must answer Ok or a clean error, never panic or hang. What is
//! accepted is then rendered for every upstream kind and endpoint, with its dialect's
//! edits (voice mapping, fields left out, stream conversion): never a panic either.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use voxgate::request::intake::{read_form, read_json, IntakeLimits};
use voxgate::engine::dialect::{Convert, Dialect, Kind};
use voxgate::request::payload::{Edits, Payload};
use voxgate::route::Operation;
use voxgate::request::replay::{MemoryBudget, ReplayLimits};

fn limits() -> IntakeLimits {
    IntakeLimits {
        max_body_bytes: 1 << 20,
        max_json_bytes: 1 << 16,
        idle_timeout: Duration::from_secs(5),
        replay: ReplayLimits {
            memory_per_request: 1 << 12,
            budget: Arc::new(MemoryBudget::new(1 << 16)),
            spill_dir: None,
        },
    }
}

type Maps = HashMap<String, String>;

/// Every kind's dialect with its preset's maps, built once.
fn dialects() -> &'static [(Dialect, Maps, Maps)] {
    static DIALECTS: OnceLock<Vec<(Dialect, Maps, Maps)>> = OnceLock::new();
    DIALECTS.get_or_init(|| {
        Kind::ALL
            .iter()
            .map(|&kind| {
                let mut dialect = Dialect { kind, ..Dialect::default() };
                let (mut models, mut voices) = (HashMap::new(), HashMap::new());
                if let Ok(preset) = kind.preset() {
                    dialect.overlay(preset, &mut models, &mut voices);
                }
                (dialect, models, voices)
            })
            .collect()
    })
}

fn render_everywhere(payload: &Payload) {
    let _ = payload.render(&Edits::plain(&[], &HashMap::new(), &HashMap::new()));
    for (dialect, models, voices) in dialects() {
        for endpoint in [Operation::Speech, Operation::Transcriptions, Operation::Translations] {
            let convert = dialect
                .conversion(endpoint, payload.stream(), payload.response_format())
                .unwrap_or(Convert::None);
            let edits = Edits {
                set: &[],
                model_map: models,
                voice_map: voices,
                dialect,
                drop_fields: dialect.dropped(endpoint),
                convert,
                translate: endpoint == Operation::Translations && dialect.translate_field,
            };
            let _ = payload.refusal(&edits);
            let _ = payload.render(&edits);
        }
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
                render_everywhere(&payload);
            }
            Err(e) => {
                let _ = e.api_error();
            }
        }
    });
});
