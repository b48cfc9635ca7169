//! Policy: who may use voxgate, how much, and at what cost.
//!
//! - [`rate`]   rates (`60/min`, `200MiB/day`) and the GCRA limiter.
//! - [`cache`]  the TTS cache: a memory tier, an optional disk tier, and coalescing of
//!   concurrent identical misses.
//! - [`audio`]  an upload's duration from its container's header, for pricing by minute.
//! - [`cost`]   prices (`price = {…}`, OpenAI's list) and what a request cost.
//! - [`keys`]   client keys: which client a presented key is, in constant time.
//! - [`quota`]  the limiters of a configuration, per client and global, and what one
//!   request took (refunds, `x-ratelimit-*` headers).
//! - [`shared`] limits and the TTS cache in Redis, shared by many instances (local when down).
//!
//! Nothing here reads the configuration: `config` parses into these types, and the
//! gateway builds them from it (`gateway/policy.rs`) and calls them from its phases.

pub mod audio;
pub mod cache;
pub mod cost;
pub mod keys;
pub mod quota;
pub mod rate;
pub mod shared;
