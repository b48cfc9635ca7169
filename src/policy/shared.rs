//! TEMPORARY stub (replaced by the shared-redis branch).
use crate::policy::rate::{Denied, Rate, Snapshot};
use std::sync::Arc;
use std::time::Duration;
#[derive(Clone, PartialEq, Debug)]
pub struct SharedSettings {
    pub url: String,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_entry_bytes: u64,
    pub prefix: String,
}
#[derive(Debug)]
pub struct Unavailable;
#[derive(Debug)]
pub struct Shared {
    settings: SharedSettings,
}
#[derive(Debug, Clone)]
pub struct SharedStatus {
    pub up: bool,
    pub since: std::time::SystemTime,
    pub outages: u64,
    pub fallbacks: u64,
    pub last_error: Option<String>,
}
impl Shared {
    pub fn start(settings: SharedSettings) -> Arc<Shared> {
        Arc::new(Shared { settings })
    }
    pub fn settings(&self) -> &SharedSettings {
        &self.settings
    }
    pub async fn take(
        &self,
        _key: &str,
        _rate: Rate,
        _cost: u64,
    ) -> Result<Result<Snapshot, Denied>, Unavailable> {
        Err(Unavailable)
    }
    pub async fn check(
        &self,
        _key: &str,
        _rate: Rate,
        _cost: u64,
    ) -> Result<Result<Snapshot, Denied>, Unavailable> {
        Err(Unavailable)
    }
    pub async fn refund(&self, _key: &str, _rate: Rate, _cost: u64) {}
    pub async fn cache_get(
        &self,
        _key: &[u8; 32],
    ) -> Result<Option<(http::HeaderValue, bytes::Bytes)>, Unavailable> {
        Err(Unavailable)
    }
    pub fn cache_put(
        &self,
        _key: [u8; 32],
        _ct: http::HeaderValue,
        _body: bytes::Bytes,
        _ttl: Duration,
    ) {
    }
    pub fn status(&self) -> SharedStatus {
        SharedStatus {
            up: false,
            since: std::time::SystemTime::now(),
            outages: 0,
            fallbacks: 0,
            last_error: None,
        }
    }
    pub fn note_fallback(&self) {}
}
