//! Upstreams: the connections to each configured server, and how a request is sent to it.
//!
//! Each upstream keeps its own connections ([`crate::upstream::connections`]: keep-alive; rustls
//! with webpki roots for https, HTTP/2 when ALPN agrees) with its own connect timeout.
//! [`Upstream::send`] builds the request for this upstream — path appended to its URL,
//! hop-by-hop headers dropped, Authorization replaced or removed — and reports the result
//! as an [`UpstreamError`] that knows what kind of failure it was, so the fallback policy
//! can decide without strings.

pub mod connections;
pub mod error;
pub mod h1;
pub mod health;
pub mod pool;
pub mod tls;

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::config::UpstreamConfig;
use crate::request::outgoing::Segment;
use crate::upstream::connections::{Connections, UpstreamBody, UpstreamRequest};
use crate::upstream::error::UpstreamError;
use crate::upstream::health::run_checks;
use crate::upstream::pool::Pool;
use crate::upstream::tls::tls_config;
use std::sync::Arc;

/// Response header naming the upstream that answered.
pub const UPSTREAM_HEADER: &str = "x-voxgate-upstream";
pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub static REQUEST_ID_HEADER_NAME: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
pub static UPSTREAM_HEADER_NAME: HeaderName = HeaderName::from_static(UPSTREAM_HEADER);

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1; Upgrade and
/// the old Keep-Alive and Proxy-Connection too).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    // One match on the name's text instead of nine comparisons, two of them with custom
    // names: this runs for every header of every request and answer.
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The header names that a Connection header lists: hop-by-hop too.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// Removes hop-by-hop headers, including those the Connection header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them (a Connection header listing others is one of
    // them): one look at each name costs less than a removal, a hash and a probe, for
    // each of the nine.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut gone = connection_named(headers);
    gone.extend(headers.keys().filter(|name| is_hop_by_hop(name)).cloned());
    for name in &gone {
        headers.remove(name);
    }
}

/// A request as the client sent it, with the path this upstream gets: what
/// [`Upstream::send`] adapts for the upstream (its own key, no hop-by-hop headers).
#[derive(Debug, Clone, Copy)]
pub struct ClientRequest<'a> {
    pub method: &'a Method,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub request_id: &'a HeaderValue,
}

pub struct Upstream {
    pub config: UpstreamConfig,
    pub pool: Arc<Pool>,
    connections: Arc<Connections>,
    authorization: Option<HeaderValue>,
    /// The name as a response header value, made once; `None` if it cannot be one.
    name_header: Option<HeaderValue>,
    /// The active health-check tasks and the idle-connection sweep, stopped with the
    /// upstream.
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.config.name)
            .field("endpoints", &self.config.endpoints.len())
            .finish_non_exhaustive()
    }
}

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Upstream {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(&config))
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let urls: Vec<_> = config.endpoints.iter().map(|e| &e.url).collect();
        // Every endpoint URL was checked at load to have a host.
        let connections = Arc::new(
            Connections::new(https, &urls, config.keepalive_timeout)
                .unwrap_or_else(|e| panic!("upstream `{}`: {e}", config.name)),
        );
        let authorization = config.api_key.as_ref().and_then(|key| {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", key.expose())).ok()?;
            value.set_sensitive(true);
            Some(value)
        });
        let pool = Arc::new(Pool::new(
            &config.name,
            &config.endpoints,
            config.balance,
            config.health.as_ref(),
            &config.ejection,
        ));
        let mut tasks = Vec::new();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let sweep = Connections::sweep_while_alive(
                Arc::downgrade(&connections),
                config.keepalive_timeout,
            );
            tasks.push(runtime.spawn(sweep).abort_handle());
            if let Some(check) = &config.health {
                for index in 0..pool.endpoints.len() {
                    let task = run_checks(
                        Arc::downgrade(&pool),
                        index,
                        connections.clone(),
                        check.clone(),
                        authorization.clone(),
                    );
                    tasks.push(runtime.spawn(task).abort_handle());
                }
            }
        }
        Upstream {
            name_header: HeaderValue::from_str(&config.name).ok(),
            config,
            pool,
            connections,
            authorization,
            tasks,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The name as a header value, for the response's `x-voxgate-upstream`.
    pub fn name_header(&self) -> Option<&HeaderValue> {
        self.name_header.as_ref()
    }

    /// The headers this upstream gets, each given to `emit`: the client's end-to-end
    /// headers, with Authorization replaced by ours, passed on, or removed, as
    /// configured. (Host and Content-Length come from the connection.)
    ///
    /// What travels is picked in one pass, in the client's order; for HTTP/1 it is
    /// written straight into the request head, with no header map built. (`explain`
    /// shows what this picks.)
    pub(crate) fn headers(
        &self,
        client: &HeaderMap,
        request_id: &HeaderValue,
        emit: &mut dyn FnMut(&HeaderName, &HeaderValue),
    ) {
        let named = connection_named(client);
        let ours = self.authorization.as_ref();
        let drop_authorization = ours.is_some() || !self.config.pass_client_key;
        for (name, value) in client {
            let stays = !(is_hop_by_hop(name)
                || name == header::HOST
                || name == header::CONTENT_LENGTH
                || name == header::EXPECT
                || *name == REQUEST_ID_HEADER_NAME
                // The key in any of the headers clients send it in (`api-key`, `x-api-key`:
                // Azure-style and Anthropic-style clients).
                || (drop_authorization
                    && (name == header::AUTHORIZATION || name == "api-key" || name == "x-api-key"))
                // The client's organization and project belong to the client's key, not ours.
                || (ours.is_some() && (name == "openai-organization" || name == "openai-project"))
                || named.contains(name));
            if stays {
                emit(name, value);
            }
        }
        if let Some(ours) = ours {
            emit(&header::AUTHORIZATION, ours);
        }
        emit(&REQUEST_ID_HEADER_NAME, request_id);
    }

    /// Sends `request` to endpoint `index`; resolves when response headers arrive, or
    /// the attempt fails, or `timeout` passes. `body` makes the request body: called once,
    /// and once more only if a kept connection turned out closed and the request is sent
    /// again (so that no copy is kept for that rare case).
    pub async fn send(
        &self,
        index: usize,
        timeout: Duration,
        request: &ClientRequest<'_>,
        body: impl Fn() -> Vec<Segment> + Sync,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let headers = |emit: &mut dyn FnMut(&HeaderName, &HeaderValue)| {
            self.headers(request.headers, request.request_id, emit)
        };
        let request = UpstreamRequest {
            method: request.method,
            path_and_query: request.path_and_query,
            headers: &headers,
            body: &body,
        };
        match tokio::time::timeout(timeout, self.connections.send(index, &request)).await {
            Err(_) => Err(UpstreamError::timeout(timeout)),
            Ok(result) => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Secret};
    use http_body_util::BodyExt;

    fn upstream(url: &str, key: Option<&str>, pass: bool) -> Upstream {
        let text = format!("[upstreams.u]\nurl = \"{url}\"\n[[routes]]\nto = [\"u\"]\n");
        let mut config = Config::from_toml_with_env(&text, "t", &|_| None)
            .unwrap()
            .upstreams
            .remove(0);
        config.api_key = key.map(Secret::new);
        config.pass_client_key = pass;
        Upstream::new(config)
    }

    #[test]
    fn hop_by_hop_names_are_exactly_these() {
        let hop = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ];
        for name in hop {
            assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        let others = [
            "host",
            "content-type",
            "authorization",
            "x-request-id",
            "tea",
            "t",
        ];
        for name in others {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
        // Answers lose the same names, and those their Connection header lists.
        let mut answer = HeaderMap::new();
        for name in hop.iter().chain(&others) {
            answer.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
        }
        answer.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-private"),
        );
        answer.insert("x-private", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut answer);
        let mut left: Vec<&str> = answer.keys().map(|n| n.as_str()).collect();
        left.sort_unstable();
        let mut expected = others.to_vec();
        expected.sort_unstable();
        assert_eq!(left, expected);
    }

    /// What `headers` gives, as a map.
    fn sent(u: &Upstream, client: &HeaderMap, id: &HeaderValue) -> HeaderMap {
        let mut map = HeaderMap::new();
        u.headers(client, id, &mut |name, value| {
            map.append(name.clone(), value.clone());
        });
        map
    }

    fn client_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer client"),
        );
        h.insert(header::HOST, HeaderValue::from_static("voxgate"));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("api-key", HeaderValue::from_static("client-azure"));
        h.insert("x-api-key", HeaderValue::from_static("client-x"));
        h.insert(
            "openai-organization",
            HeaderValue::from_static("org-client"),
        );
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/octet-stream"),
        );
        h
    }

    #[test]
    fn authorization_is_replaced_stripped_or_passed() {
        let id = HeaderValue::from_static("req-1");
        let h = sent(
            &upstream("http://a", Some("sk-up"), false),
            &client_headers(),
            &id,
        );
        assert_eq!(h[header::AUTHORIZATION], "Bearer sk-up");
        assert!(h[header::AUTHORIZATION].is_sensitive());
        assert!(
            h.get("openai-organization").is_none(),
            "goes with the client's key"
        );
        for name in ["api-key", "x-api-key"] {
            assert!(h.get(name).is_none(), "{name} is the client's key too");
        }
        let h = sent(&upstream("http://a", None, false), &client_headers(), &id);
        assert!(h.get(header::AUTHORIZATION).is_none());
        assert!(h.get("api-key").is_none() && h.get("x-api-key").is_none());
        let h = sent(&upstream("http://a", None, true), &client_headers(), &id);
        assert_eq!(h[header::AUTHORIZATION], "Bearer client");
        assert_eq!(h["api-key"], "client-azure");
        assert_eq!(h["openai-organization"], "org-client");
    }

    /// A request that meets a kept connection the server closed as it went out is sent
    /// again on a new connection: the client sees the answer, not an error (see
    /// connections::tests::a_kept_connection_closed_as_the_request_goes_out_is_stale).
    #[tokio::test]
    async fn a_request_on_a_just_closed_connection_is_sent_again() {
        let (url, accepted) = crate::upstream::connections::tests::closing_server();
        let u = upstream(&url.to_string(), None, false);
        let id = HeaderValue::from_static("req-1");
        for round in 0..2 {
            let response = u
                .send(
                    0,
                    Duration::from_secs(5),
                    &ClientRequest {
                        method: &Method::POST,
                        path_and_query: "/v1/audio/speech",
                        headers: &HeaderMap::new(),
                        request_id: &id,
                    },
                    || vec![Segment::Bytes("{}".into())],
                )
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body, "ok");
            std::thread::sleep(Duration::from_millis(150));
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn hop_by_hop_headers_do_not_travel() {
        let id = HeaderValue::from_static("req-1");
        let h = sent(&upstream("http://a", None, false), &client_headers(), &id);
        for gone in ["connection", "x-private", "transfer-encoding", "host"] {
            assert!(h.get(gone).is_none(), "{gone}");
        }
        assert_eq!(h[header::ACCEPT], "application/octet-stream");
        assert!(
            h.get(header::CONTENT_LENGTH).is_none(),
            "framing is the connection's"
        );
        assert_eq!(h[REQUEST_ID_HEADER], "req-1");
    }
}
