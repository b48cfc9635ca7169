//! Client keys: which configured client a request's key belongs to.
//!
//! Only each key's SHA-256 is kept. A presented key is hashed and compared with every
//! client's digest in constant time, all of them every time, so neither the time taken
//! nor an early exit tells how much of a guess was right.

use http::header::AUTHORIZATION;
use http::HeaderMap;
use sha2::{Digest, Sha256};

/// The keys of the configured clients, by client index.
#[derive(Debug, Default)]
pub struct Keys {
    digests: Vec<[u8; 32]>,
}

impl Keys {
    pub fn new(digests: Vec<[u8; 32]>) -> Keys {
        Keys { digests }
    }

    /// No client configured: requests need no key.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The index of the client whose key `presented` is.
    pub fn find(&self, presented: &[u8]) -> Option<usize> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = usize::MAX;
        for (i, known) in self.digests.iter().enumerate() {
            let same = constant_time_eq(&digest, known);
            // Branch-free select: keeps the last match, looks at every key.
            let mask = (same as usize).wrapping_neg();
            found = (i & mask) | (found & !mask);
        }
        (found != usize::MAX).then_some(found)
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// The key a request presents, as OpenAI-compatible clients send it: `Authorization:
/// Bearer <key>` (the SDKs), else `api-key` (Azure-style clients) or `x-api-key`.
pub fn presented(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(value) = headers.get(AUTHORIZATION) {
        let value = value.as_bytes();
        let scheme = b"bearer ";
        if value.len() > scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme) {
            let key = value[scheme.len()..].trim_ascii();
            return (!key.is_empty()).then_some(key);
        }
        return None;
    }
    ["api-key", "x-api-key"]
        .iter()
        .find_map(|name| headers.get(*name))
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Keys {
        Keys::new(list.iter().map(|k| Sha256::digest(k).into()).collect())
    }

    #[test]
    fn a_key_finds_its_client_and_nothing_else_does() {
        let keys = keys(&["alpha-key", "dummy-key-for-local", "gamma"]);
        assert_eq!(keys.find(b"alpha-key"), Some(0));
        assert_eq!(keys.find(b"dummy-key-for-local"), Some(1));
        assert_eq!(keys.find(b"gamma"), Some(2));
        assert_eq!(keys.find(b"gamm"), None);
        assert_eq!(keys.find(b"alpha-key "), None);
        assert_eq!(keys.find(b""), None);
        assert!(Keys::default().is_empty());
    }

    #[test]
    fn the_key_is_read_from_the_headers_clients_send() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert("x-api-key", "k3".parse().unwrap());
        assert_eq!(presented(&h), Some(&b"k3"[..]));
        h.insert("api-key", "k2".parse().unwrap());
        assert_eq!(presented(&h), Some(&b"k2"[..]));
        h.insert(AUTHORIZATION, "Bearer  k1 ".parse().unwrap());
        assert_eq!(presented(&h), Some(&b"k1"[..]));
        h.insert(AUTHORIZATION, "bearer k1".parse().unwrap());
        assert_eq!(presented(&h), Some(&b"k1"[..]));
        // Another scheme is not a key, and Authorization is not passed over for others.
        h.insert(AUTHORIZATION, "Basic azE6".parse().unwrap());
        assert_eq!(presented(&h), None);
        h.insert(AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(presented(&h), None);
    }
}
