//! TEMPORARY stub (replaced by the policy-cache branch).
use crate::body::ProxyBody;
use std::sync::Arc;
pub type Key = [u8; 32];
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    pub memory_bytes: u64,
    pub dir: Option<std::path::PathBuf>,
    pub disk_bytes: u64,
    pub ttl: std::time::Duration,
    pub max_entry_bytes: u64,
}
#[derive(Debug)]
pub struct Entry {
    pub content_type: http::HeaderValue,
    pub body: bytes::Bytes,
    pub stored_at: std::time::SystemTime,
}
#[derive(Debug, Default, Clone, Copy)]
pub struct CacheStats {
    pub memory_bytes: u64,
    pub memory_entries: u64,
    pub disk_bytes: u64,
    pub disk_entries: u64,
}
pub struct Cache {
    settings: CacheSettings,
}
impl Cache {
    pub fn open(settings: CacheSettings) -> std::io::Result<Cache> {
        Ok(Cache { settings })
    }
    pub fn settings(&self) -> &CacheSettings {
        &self.settings
    }
    pub async fn get(&self, _key: &Key) -> Option<Arc<Entry>> {
        None
    }
    pub fn insert(&self, _key: Key, _entry: Entry) {}
    pub fn join(&self, _key: Key) -> Join {
        Join::Leader(Flight)
    }
    pub fn stats(&self) -> CacheStats {
        CacheStats::default()
    }
}
pub enum Join {
    Leader(Flight),
    Follower(Waiter),
}
pub struct Flight;
impl Flight {
    pub fn answered(self, _ct: http::HeaderValue, body: ProxyBody) -> ProxyBody {
        body
    }
}
pub struct Waiter;
impl Waiter {
    pub async fn wait(self) -> Option<(http::HeaderValue, ProxyBody)> {
        None
    }
}
