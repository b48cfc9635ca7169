//! The access log: one structured line per request (target `voxgate::access`), written by
//! an [`Observer`] when the response is over. Headers are never logged: that is how no key
//! ends up in a log.

use crate::policy::quota::Unit;
use crate::telemetry::observe::Observer;
use crate::telemetry::record::{End, RequestRecord};

/// Writes each finished request as a `tracing` event at INFO.
#[derive(Debug, Default)]
pub struct AccessLog;

impl Observer for AccessLog {
    fn request_ended(&self, record: &RequestRecord, end: &End) {
        let total_ms = end.total.as_secs_f64() * 1000.0;
        let ttfb_ms = end.ttfb.map(|t| t.as_secs_f64() * 1000.0);
        let served_by = record.served_by.as_ref();
        tracing::info!(
            target: "voxgate::access",
            request_id = %record.request_id.to_str().unwrap_or_default(),
            client = %record.client,
            client_name = record.caller.as_ref().map(|(name, _)| &**name),
            method = %record.method,
            path = %record.path,
            endpoint = record.endpoint,
            model = record.model.as_deref(),
            voice = record.voice.as_deref(),
            route_line = record.route,
            attempts = %record.attempts_text(),
            upstream = record.upstream.as_deref(),
            upstream_url = served_by.map(|p| tracing::field::display(&p.endpoint().url)),
            status = record.status,
            bytes_in = record.bytes_in,
            bytes_out = end.bytes_out,
            ttfb_ms,
            total_ms,
            ending = end.ending.name(),
            error = record.error.as_deref(),
            cache = record.cache,
            limited = record.limited.map(Unit::name),
            cost_usd = (record.cost_nanos > 0).then(|| record.cost_nanos as f64 / 1e9),
            cost_avoided_usd = record.avoided.map(|(n, _)| n as f64 / 1e9),
            "request"
        );
    }
}
