//! Active health checks: each endpoint of an upstream with `health` configured is asked
//! its check path every `interval`, and its pool is told the result.

use std::sync::{Arc, Weak};

use http::header::{self, HeaderName, HeaderValue};
use http_body_util::BodyExt;

use crate::config::HealthCheck;
use crate::upstream::connections::{Connections, UpstreamRequest};
use crate::upstream::error::describe;
use crate::upstream::pool::Pool;

/// Checks one endpoint every `interval` for as long as its pool exists.
pub async fn run_checks(
    pool: Weak<Pool>,
    index: usize,
    connections: Arc<Connections>,
    check: HealthCheck,
    authorization: Option<HeaderValue>,
) {
    loop {
        if pool.strong_count() == 0 {
            return;
        }
        let headers = |emit: &mut dyn FnMut(&HeaderName, &HeaderValue)| {
            if let Some(auth) = &authorization {
                emit(&header::AUTHORIZATION, auth);
            }
        };
        let request = UpstreamRequest {
            method: &check.method,
            path_and_query: &check.path,
            headers: &headers,
            body: &Vec::new,
        };
        let probe = async {
            let response = connections
                .send(index, &request)
                .await
                .map_err(|e| e.message().to_string())?;
            let status = response.status().as_u16();
            // Read a little of the body, so a server that sends headers and then
            // hangs is not counted as healthy.
            let mut body = response.into_body();
            let mut read = 0;
            while read < 64 * 1024 {
                match body.frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                    Some(Err(e)) => return Err(describe(&e)),
                    None => break,
                }
            }
            Ok(status)
        };
        let outcome = match tokio::time::timeout(check.timeout, probe).await {
            Err(_) => Err(format!("no answer within {:?}", check.timeout)),
            Ok(result) => result,
        };
        let (ok, detail) = match outcome {
            Ok(status) => (
                (check.expect.0..=check.expect.1).contains(&status),
                format!("status {status}"),
            ),
            Err(e) => (false, e),
        };
        match pool.upgrade() {
            Some(pool) => pool.checked(index, ok, detail),
            None => return,
        }
        tokio::time::sleep(check.interval).await;
    }
}
