//! What voxgate tells about the requests it served: each request's [`record`], the
//! [`observe`]rs told once when its response is over — the [`access_log`], the
//! [`metrics`] and the status page's [`recent_errors`] — and the metrics' [`labels`],
//! resolved when a configuration is compiled.
pub mod access_log;
pub mod labels;
pub mod metrics;
pub mod observe;
pub mod recent_errors;
pub mod record;
