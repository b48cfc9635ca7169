//! Policy: who may use voxgate, how much, and at what cost.
//!
//! - [`rate`]   rates (`60/min`, `200MiB/day`) and the GCRA limiter.
//! - [`cache`]  the TTS cache: a memory tier, an optional disk tier, and coalescing of
//!   concurrent identical misses.
//! - [`audio`]  an upload's duration from its container's header, for pricing by minute.

pub mod audio;
pub mod cache;
pub mod rate;
