//! What voxgate tells about the requests it served: each request's [`record`], the
//! [`observe`]rs told once when its response is over — the [`access_log`] and the
//! [`metrics`] — and the metrics' [`labels`], resolved when a configuration is compiled.
pub mod access_log;
pub mod labels;
pub mod metrics;
pub mod observe;
pub mod record;
