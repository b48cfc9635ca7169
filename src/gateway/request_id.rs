//! Request ids: the client's `x-request-id` if it sent a sane one, else a new one.
//!
//! A new id is a counter mixed with a per-process random key (`vg-` and 22 hex digits):
//! unique within the process, not guessable across processes, and made without a system
//! call or a lock (a UUID v4 reads the OS's random source for each one).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use crate::upstream::REQUEST_ID_HEADER_NAME;

/// Appends `value` in lowercase hex, at least `width` digits.
fn push_hex(out: &mut Vec<u8>, value: u64, width: u32) {
    let digits = (u64::BITS - value.leading_zeros()).div_ceil(4).max(width);
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(value >> (i * 4)) as usize & 0xf]);
    }
}

/// A request id: the client's if it sent a sane one, else a new one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: OnceLock<RandomState> = OnceLock::new();
    if let Some(v) = headers.get(&REQUEST_ID_HEADER_NAME) {
        let ok = (1..=128).contains(&v.len()) && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
        if ok {
            return v.clone();
        }
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hash = SEED.get_or_init(RandomState::new).hash_one(n);
    // `vg-{hash:016x}{n:06x}`, written without the formatting machinery and handed to the
    // header value as it is, without a copy.
    let mut id = Vec::with_capacity(3 + 16 + 16);
    id.extend_from_slice(b"vg-");
    push_hex(&mut id, hash, 16);
    push_hex(&mut id, n, 6);
    HeaderValue::from_maybe_shared(Bytes::from(id))
        .unwrap_or_else(|_| HeaderValue::from_static("vg-unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::REQUEST_ID_HEADER;

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut h = http::HeaderMap::new();
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        let made = request_id(&h);
        assert!(made.to_str().unwrap().starts_with("vg-"));
        assert_ne!(
            request_id(&http::HeaderMap::new()),
            request_id(&http::HeaderMap::new())
        );
    }

    #[test]
    fn hex_is_written_as_format_writes_it() {
        for (value, width) in [(0, 6), (0x1f, 6), (0xabcdef1, 6), (u64::MAX, 16), (7, 16)] {
            let mut out = Vec::new();
            push_hex(&mut out, value, width);
            let expected = format!("{value:0width$x}", width = width as usize);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }
}
