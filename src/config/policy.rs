//! The policy part of the configuration: `[[clients]]`, `[limits]`, `[cache]`, and each
//! upstream's `price`; typed here and validated by the same [`Validator`] as the rest
//! (every mistake with its line and column, no secret quoted).

use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};
use toml::Spanned;

use super::raw::{RawCache, RawClient, RawLimits, RawPrice, RawShared};
use super::validate::Validator;
use super::Secret;
use crate::policy::cache::CacheSettings;
use crate::policy::cost::{Price, Pricing};
use crate::policy::quota::Limits;
use crate::policy::rate::{parse_rate, Rate};
use crate::policy::shared::{redact_url, SharedSettings};
use crate::route::{Pattern, RouteConfig};

/// One caller voxgate knows by its key.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub name: String,
    /// SHA-256 of the key: the key itself is not kept.
    pub key_sha256: [u8; 32],
    /// Names of the routes it may use; all when `None`.
    pub routes: Option<Vec<String>>,
    /// Models it may ask for; all when `None`.
    pub models: Option<Pattern>,
    pub limits: Limits,
}

/// `[cache]`: where and how much speech is kept.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub settings: CacheSettings,
    /// Whether a hit counts against `tts_chars` limits (it costs nothing upstream).
    pub charge_hits: bool,
}

/// `[shared]`: where the state shared by several instances lives.
#[derive(Clone, PartialEq)]
pub struct SharedConfig {
    /// `redis://[:password@]host:port/db` or `rediss://…`; holds a password: never shown.
    pub redis: Secret,
    /// Longest wait on Redis for one request; then that request uses local state.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Cache entries larger than this stay in the local tiers only.
    pub max_entry_bytes: u64,
    /// Prefix of every key voxgate writes.
    pub prefix: String,
}

impl std::fmt::Debug for SharedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConfig")
            .field("redis", &redact_url(self.redis.expose()))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Validator<'_> {
    /// A rate written `N/min` (with a size unit on N where `sizes`).
    fn rate(&mut self, value: Option<Spanned<String>>, key: &str, sizes: bool) -> Option<Rate> {
        let value = value?;
        match parse_rate(value.get_ref(), sizes) {
            Ok(rate) => Some(rate),
            Err(e) => {
                let example = if sizes {
                    "\"200MiB/day\""
                } else {
                    "\"60/min\""
                };
                self.error(
                    value.span(),
                    format!("`{key}` is not a rate such as {example}: {e}"),
                );
                None
            }
        }
    }

    pub(super) fn limits(&mut self, raw: Option<RawLimits>) -> Limits {
        let Some(raw) = raw else {
            return Limits::default();
        };
        Limits {
            requests: self.rate(raw.requests, "requests", false),
            tts_chars: self.rate(raw.tts_chars, "tts_chars", false),
            stt_bytes: self.rate(raw.stt_bytes, "stt_bytes", true),
        }
    }

    /// `[[clients]]`, checked against the routes they name and against each other.
    pub(super) fn clients(
        &mut self,
        raw: Vec<Spanned<RawClient>>,
        routes: &[RouteConfig],
    ) -> Vec<ClientConfig> {
        let mut clients: Vec<ClientConfig> = Vec::with_capacity(raw.len());
        for client in raw {
            let span = client.span();
            let client = client.into_inner();
            let name = client.name.get_ref().trim().to_string();
            let plain = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
            if !plain {
                self.error(
                    client.name.span(),
                    "a client `name` is 1 to 64 letters, digits, `-`, `_`, `.` or `@`",
                );
            } else if clients.iter().any(|c| c.name == name) {
                self.error(
                    client.name.span(),
                    format!("two clients are named `{name}`"),
                );
            }
            let Some(key_sha256) = self.client_key(&client, span) else {
                continue;
            };
            if clients.iter().any(|c| c.key_sha256 == key_sha256) {
                // Which client would a request be? The message names the other one,
                // never the key.
                if let Some(other) = clients.iter().find(|c| c.key_sha256 == key_sha256) {
                    let other = other.name.clone();
                    let at = client.key.as_ref().or(client.key_sha256.as_ref());
                    let at = at.map_or(client.name.span(), |k| k.span());
                    self.error(at, format!("this key is also client `{other}`'s"));
                }
            }
            let allowed_routes = client.routes.map(|list| {
                let mut names = Vec::new();
                for route in list.into_inner() {
                    let wanted = route.get_ref();
                    if routes
                        .iter()
                        .any(|r| r.name.as_deref() == Some(wanted.as_str()))
                    {
                        names.push(wanted.clone());
                    } else {
                        let named: Vec<&str> =
                            routes.iter().filter_map(|r| r.name.as_deref()).collect();
                        let known = match named.is_empty() {
                            true => "no route has a `name`".to_string(),
                            false => format!("named routes: {}", named.join(", ")),
                        };
                        self.error(
                            route.span(),
                            format!("no route is named `{wanted}` ({known})"),
                        );
                    }
                }
                names
            });
            let models = self.pattern(client.models, "models");
            let limits = self.limits(client.limits);
            clients.push(ClientConfig {
                name,
                key_sha256,
                routes: allowed_routes,
                models,
                limits,
            });
        }
        clients
    }

    /// The SHA-256 of a client's key: `key` (usually `${ENV}`) hashed, or `key_sha256`.
    fn client_key(&mut self, client: &RawClient, span: std::ops::Range<usize>) -> Option<[u8; 32]> {
        match (&client.key, &client.key_sha256) {
            (Some(key), None) => {
                let text = self.expand(key, "key");
                if text.is_empty() {
                    self.error(key.span(), "`key` is empty");
                    return None;
                }
                if text.bytes().any(|b| !b.is_ascii_graphic()) {
                    self.error(
                        key.span(),
                        "`key` must be printable ASCII without spaces (it travels in a header)",
                    );
                    return None;
                }
                Some(Sha256::digest(text.as_bytes()).into())
            }
            (None, Some(hex)) => {
                let digest = parse_hex32(hex.get_ref().trim());
                if digest.is_none() {
                    self.error(
                        hex.span(),
                        "`key_sha256` must be 64 hexadecimal digits (`printf %s \"$KEY\" | sha256sum`)",
                    );
                }
                digest
            }
            (Some(key), Some(_)) => {
                self.error(key.span(), "write `key` or `key_sha256`, not both");
                None
            }
            (None, None) => {
                self.error(
                    span,
                    "a client needs `key = \"${ENV_VAR}\"` or `key_sha256`",
                );
                None
            }
        }
    }

    pub(super) fn cache(&mut self, raw: Option<Spanned<RawCache>>) -> Option<CacheConfig> {
        let raw = raw?.into_inner();
        let memory_bytes = self.byte_size(raw.memory_bytes, "memory_bytes", 64 * 1_048_576);
        let dir = raw
            .dir
            .map(|d| (PathBuf::from(self.expand(&d, "dir")), d.span()));
        let disk_bytes = match (&dir, raw.disk_bytes) {
            (Some(_), bytes) => self.byte_size(bytes, "disk_bytes", 1 << 30),
            (None, Some(bytes)) => {
                self.error(bytes.span(), "`disk_bytes` needs a `dir` for the disk tier");
                0
            }
            (None, None) => 0,
        };
        if let Some((path, span)) = &dir {
            // Checked now: a directory the cache cannot write would fail every store.
            if let Err(e) =
                std::fs::create_dir_all(path).and_then(|()| tempfile::tempfile_in(path).map(drop))
            {
                self.error(span.clone(), format!("cache `dir` cannot hold files: {e}"));
            }
        }
        Some(CacheConfig {
            settings: CacheSettings {
                memory_bytes,
                dir: dir.map(|(path, _)| path),
                disk_bytes,
                ttl: self.duration(raw.ttl, "ttl", Duration::from_secs(7 * 24 * 3600)),
                max_entry_bytes: self.byte_size(
                    raw.max_entry_bytes,
                    "max_entry_bytes",
                    32 * 1_048_576,
                ),
            },
            charge_hits: raw.charge_hits.unwrap_or(false),
        })
    }

    pub(super) fn shared(&mut self, raw: Option<Spanned<RawShared>>) -> Option<SharedConfig> {
        let raw = raw?.into_inner();
        let url = self.expand(&raw.redis, "redis");
        let settings_check = SharedSettings {
            url: url.clone(),
            timeout: Duration::ZERO,
            connect_timeout: Duration::ZERO,
            max_entry_bytes: 0,
            prefix: String::new(),
        };
        let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
        let refused = match settings_check.validate() {
            Err(why) => Some(why),
            Ok(()) if !scheme_ok => Some("not redis:// or rediss://".to_string()),
            Ok(()) => None,
        };
        if let Some(why) = refused {
            // `validate` never quotes the password.
            self.error(
                raw.redis.span(),
                format!("`redis` must be a URL such as \"redis://127.0.0.1:6379/0\" or \"rediss://:${{REDIS_PASSWORD}}@host:6380\" ({why})"),
            );
        }
        let prefix = raw
            .prefix
            .map_or_else(|| "voxgate:".to_string(), |p| p.into_inner());
        Some(SharedConfig {
            redis: Secret::new(url),
            timeout: self.duration(raw.timeout, "timeout", Duration::from_millis(20)),
            connect_timeout: self.duration(
                raw.connect_timeout,
                "connect_timeout",
                Duration::from_secs(1),
            ),
            max_entry_bytes: self.byte_size(raw.max_entry_bytes, "max_entry_bytes", 1_048_576),
            prefix,
        })
    }

    /// `price = { … }`; the `openai` kind is priced by OpenAI's list without one.
    pub(super) fn pricing(&mut self, raw: Option<Spanned<RawPrice>>, openai: bool) -> Pricing {
        let Some(raw) = raw else {
            return if openai {
                Pricing::OpenAi
            } else {
                Pricing::Free
            };
        };
        let span = raw.span();
        let raw = raw.into_inner();
        let mut dollars = |value: Option<Spanned<f64>>, key: &str| -> Option<f64> {
            let value = value?;
            let n = *value.get_ref();
            if n.is_finite() && n >= 0.0 {
                Some(n)
            } else {
                self.error(
                    value.span(),
                    format!("`{key}` must be a price of 0 or more"),
                );
                None
            }
        };
        let tts = dollars(raw.tts_per_million_chars, "tts_per_million_chars");
        let minute = dollars(raw.stt_per_minute, "stt_per_minute");
        let mib = dollars(raw.stt_per_mib, "stt_per_mib");
        if tts.is_none() && minute.is_none() && mib.is_none() {
            self.error(
                span,
                "`price` needs `tts_per_million_chars`, `stt_per_minute` or `stt_per_mib`",
            );
        }
        Pricing::Flat(Price {
            tts_per_million_chars: tts.unwrap_or(0.0),
            stt_per_minute: minute.unwrap_or(0.0),
            stt_per_mib: mib.or(minute).unwrap_or(0.0),
        })
    }
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}
