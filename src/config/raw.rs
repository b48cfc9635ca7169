//! The configuration file's shape, as serde reads it: nothing is checked here beyond
//! types and key names (`deny_unknown_fields`), and every value keeps its span so that
//! validation can point at it.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use toml::Spanned;

use super::{Balance, LogFormat};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    #[serde(default)]
    pub(super) routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub(super) clients: Vec<Spanned<RawClient>>,
    pub(super) limits: Option<RawLimits>,
    pub(super) cache: Option<Spanned<RawCache>>,
    pub(super) shared: Option<Spanned<RawShared>>,
}

/// `[shared]`: limits and cache shared between instances through Redis.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShared {
    pub(super) redis: Spanned<String>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) connect_timeout: Option<Spanned<String>>,
    pub(super) max_entry_bytes: Option<Spanned<toml::Value>>,
    pub(super) prefix: Option<Spanned<String>>,
}

/// `[[clients]]`: who may call voxgate, with what key, for what, and how much.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClient {
    pub(super) name: Spanned<String>,
    pub(super) key: Option<Spanned<String>>,
    pub(super) key_sha256: Option<Spanned<String>>,
    pub(super) routes: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) models: Option<Spanned<toml::Value>>,
    pub(super) limits: Option<RawLimits>,
}

/// `[limits]` (everyone together) or a client's `limits = { … }`: rates such as
/// `"60/min"`, `"200MiB/day"`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) requests: Option<Spanned<String>>,
    pub(super) tts_chars: Option<Spanned<String>>,
    pub(super) stt_bytes: Option<Spanned<String>>,
}

/// `[cache]`: the TTS cache.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) memory_bytes: Option<Spanned<toml::Value>>,
    pub(super) dir: Option<Spanned<String>>,
    pub(super) disk_bytes: Option<Spanned<toml::Value>>,
    pub(super) ttl: Option<Spanned<String>>,
    pub(super) max_entry_bytes: Option<Spanned<toml::Value>>,
    pub(super) charge_hits: Option<bool>,
}

/// An upstream's `price = { … }`, in US dollars.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPrice {
    pub(super) tts_per_million_chars: Option<Spanned<f64>>,
    pub(super) stt_per_minute: Option<Spanned<f64>>,
    pub(super) stt_per_mib: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) max_body_bytes: Option<Spanned<i64>>,
    pub(super) max_json_bytes: Option<Spanned<i64>>,
    pub(super) replay_memory_per_request: Option<Spanned<i64>>,
    pub(super) replay_memory_total: Option<Spanned<i64>>,
    pub(super) spill_dir: Option<Spanned<String>>,
    pub(super) header_read_timeout: Option<Spanned<String>>,
    pub(super) body_read_timeout: Option<Spanned<String>>,
    pub(super) shutdown_grace: Option<Spanned<String>>,
    pub(super) retry_budget_percent: Option<Spanned<i64>>,
    pub(super) retry_budget_min: Option<Spanned<i64>>,
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) max_in_flight: Option<Spanned<i64>>,
    pub(super) threads: Option<Spanned<i64>>,
    pub(super) admin_listen: Option<Spanned<String>>,
    pub(super) watch_config: Option<bool>,
    pub(super) tls: Option<Spanned<RawTls>>,
    pub(super) lingering_time: Option<Spanned<String>>,
    /// A number of bytes, or a string with a unit (`"25MiB"`).
    pub(super) lingering_bytes: Option<Spanned<toml::Value>>,
}

/// `[server] tls = { cert = "…", key = "…" }`: PEM files.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: Spanned<String>,
    pub(super) key: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<LogFormat>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) url: Option<Spanned<String>>,
    pub(super) endpoints: Option<Spanned<Vec<Spanned<toml::Value>>>>,
    pub(super) balance: Option<Balance>,
    pub(super) health: Option<Spanned<RawHealth>>,
    pub(super) eject_after: Option<Spanned<i64>>,
    pub(super) eject_time: Option<Spanned<String>>,
    pub(super) eject_time_max: Option<Spanned<String>>,
    pub(super) max_ejected_percent: Option<Spanned<i64>>,
    pub(super) connect_timeout: Option<Spanned<String>>,
    pub(super) response_timeout: Option<Spanned<String>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) keepalive_timeout: Option<Spanned<String>>,
    pub(super) api_key: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) pass_client_key: bool,
    #[serde(default)]
    pub(super) voice_map: HashMap<String, String>,
    #[serde(default)]
    pub(super) model_map: HashMap<String, String>,
    pub(super) tls_verify: Option<bool>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) kind: Option<Spanned<String>>,
    pub(super) paths: Option<Spanned<HashMap<String, String>>>,
    pub(super) sse_speech: Option<bool>,
    pub(super) sse_transcription: Option<bool>,
    pub(super) voice_objects: Option<bool>,
    pub(super) blends: Option<bool>,
    pub(super) drop_language: Option<Vec<String>>,
    pub(super) drop_fields: Option<Spanned<HashMap<String, Vec<String>>>>,
    pub(super) translate_field: Option<bool>,
    pub(super) lists_models: Option<Spanned<String>>,
    pub(super) lists_voices: Option<Spanned<String>>,
    pub(super) models: Option<Vec<String>>,
    pub(super) only_listed_models: Option<bool>,
    pub(super) voices: Option<Vec<String>>,
    pub(super) voice_by_gender: Option<Spanned<HashMap<String, String>>>,
    pub(super) price: Option<Spanned<RawPrice>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    /// `false` turns off the check a `kind` brings.
    pub(super) enabled: Option<bool>,
    pub(super) method: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) interval: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) rise: Option<Spanned<i64>>,
    pub(super) fall: Option<Spanned<i64>>,
    pub(super) expect: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) name: Option<Spanned<String>>,
    #[serde(rename = "match", default)]
    pub(super) matches: RawMatch,
    pub(super) to: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(super) set: BTreeMap<String, Spanned<toml::Value>>,
    pub(super) fallback_on: Option<Spanned<Vec<Spanned<toml::Value>>>>,
    pub(super) deadline: Option<Spanned<String>>,
    /// `false`: this route's speech is never cached.
    pub(super) cache: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMatch {
    pub(super) endpoint: Option<Spanned<toml::Value>>,
    pub(super) method: Option<Spanned<toml::Value>>,
    pub(super) path: Option<Spanned<toml::Value>>,
    pub(super) model: Option<Spanned<toml::Value>>,
    pub(super) voice: Option<Spanned<toml::Value>>,
    pub(super) response_format: Option<Spanned<toml::Value>>,
    pub(super) stream: Option<bool>,
}
