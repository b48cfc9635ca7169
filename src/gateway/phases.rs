//! The request path. Every request goes through the same named phases, top to bottom:
//!
//! ```text
//!   admit      under the in-flight limit, or 503 + retry-after        (here)
//!   classify   Host and Transfer-Encoding checked; path + method → an API operation |
//!              voxgate's own answer (classify.rs, admin.rs, ui.rs, discovery.rs;
//!              400/404/405/501); a /v1 request's client key checked   (authenticate,
//!              policy.rs; 401)
//!   meter_request  one request from the limits; an upload whose length (policy.rs; 429)
//!              is already over refused unread
//!   intake     read the body within limits → Payload                  (request/intake.rs;
//!              400/408/413/415)
//!   route      facts from the payload → first matching route          (route.rs; 404)
//!   permit     the client may use this route and model                (policy.rs; 403)
//!   lookup     speech the TTS cache holds answered here               (policy.rs)
//!   meter_units  speech characters or upload bytes from the limits    (policy.rs; 429)
//!   forward    upstreams in order, fallback before any byte           (forward.rs; 400/500/502/504)
//!   respond    the upstream's answer made the client's, priced,       (respond.rs; 502)
//!              streamed (and into the cache)
//!   observe    the record closed when the response is over            (telemetry/)
//! ```
//!
//! Each phase is a function over the request's [`Context`] that goes on with what it made
//! (`Ok`) or stops the request with voxgate's own answer or a refusal ([`Stop`], `Err`);
//! the last one hands back the upstream's answer to stream. `Gateway::phases` is the
//! sequence, one line a phase, so adding a phase is adding a function and a line. The
//! observers (the access log, the metrics) are told once, from `observe`, however the
//! request ended.

use std::borrow::Cow;

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, Request, Response, Version};
use http_body::Body;
use http_body_util::BodyExt;

use crate::body::{BoxError, ProxyBody};
use crate::gateway::classify::{check_head, classify as target_of, Target};
use crate::gateway::forward::{forward as try_upstreams, RequestHead, Served};
use crate::gateway::policy::{
    authenticate, lookup, meter_discovery, meter_request, meter_units, permit, Admitted,
};
use crate::gateway::request_id::request_id;
use crate::gateway::respond::respond;
use crate::gateway::{
    admin, discovery, ui, Admission, Api, Context, Gateway, GatewayError, Handled, Listener,
    Origin, Runtime, Step, Stop,
};
use crate::request::intake::{read_form, read_json, read_raw, TrackedBody};
use crate::request::payload::Payload;
use crate::route::{Operation, RequestFacts, RouteConfig};
use crate::telemetry::observe::{ObservedBody, Trace};
use crate::telemetry::record::RequestRecord;
use crate::upstream::{ClientRequest, REQUEST_ID_HEADER_NAME};

impl Gateway {
    /// Answers one request, which came from `origin`. Never fails: every error becomes an
    /// OpenAI-shaped response.
    pub async fn handle<B>(&self, request: Request<B>, origin: Origin) -> Handled
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let runtime = self.runtime.load_full();
        let id = request_id(request.headers());
        // Built in place: the record is a few hundred bytes, and every move is a copy.
        let mut cx = Context {
            runtime: &runtime,
            listener: origin.listener,
            trace: Trace::new(
                RequestRecord::new(
                    id.clone(),
                    request.method().clone(),
                    request.uri().path().to_string(),
                    origin.peer,
                ),
                self.observers.clone(),
            ),
            id,
            admitted: Default::default(),
        };
        cx.trace.record.labels = Some(runtime.labels.clone());
        let (head, body) = request.into_parts();
        let mut body = TrackedBody::new(body);
        let end = self.phases(&mut cx, &head, &mut body).await;
        // A request voxgate refused itself reached no upstream: it costs nothing.
        if let Err(Stop::Refused(_)) = end {
            cx.admitted.quota.refund();
        }
        // An HTTP/1 answer given before the body was read to its end closes the
        // connection, and says so (RFC 9112 §9.6): the rest of the body cannot be told
        // from a next request. The server lingers on such a close (server/linger.rs).
        // HTTP/2 ends the stream instead, and has no Connection header.
        // (An upstream's answer comes only after the whole body was read: never closing.)
        let closes = head.version < Version::HTTP_2 && !body.ended() && end.is_err();
        Handled {
            response: observe(cx.trace, cx.id, end, closes, &cx.admitted),
            closes,
        }
    }

    /// The request path, one phase a line.
    async fn phases<B>(
        &self,
        cx: &mut Context<'_>,
        head: &Parts,
        body: B,
    ) -> Step<Response<ProxyBody>>
    where
        B: Body<Data = Bytes> + Send + Unpin,
        B::Error: Into<BoxError>,
    {
        // Probes are never shed: a busy instance is alive and ready, and a liveness probe
        // answered 503 would have it restarted.
        let probe = matches!(head.uri.path(), "/health" | "/ready");
        let _admitted = match probe {
            true => None,
            false => Some(self.admit(cx)?),
        };
        // A body framed by its Content-Length had no Transfer-Encoding to check.
        let length_framed = body.size_hint().exact().is_some();
        let api = self.classify(cx, head, length_framed).await?;
        meter_request(cx, &api, head).await?;
        let payload = intake(cx, &api, head, body).await?;
        let route = route(cx, &api, head, &payload)?;
        permit(cx, route, &payload)?;
        let cache = lookup(cx, &api, head, route, &payload).await?;
        meter_units(cx, &api, &payload).await?;
        let served = forward(cx, &api, head, route, &payload).await?;
        respond(cx, &api, route, served, payload, cache).await
    }

    /// admit: a request over `max_in_flight` is shed at once, not queued.
    fn admit(&self, cx: &Context<'_>) -> Step<Admission<'_>> {
        let limit = cx.runtime.config.server.max_in_flight as usize;
        Admission::enter(&self.in_flight, limit).ok_or(Stop::Refused(GatewayError::Overloaded(
            "too many requests in flight",
        )))
    }
}

impl Gateway {
    /// classify: what the request is. voxgate's own endpoints are answered here; an API
    /// request goes on.
    async fn classify(&self, cx: &mut Context<'_>, head: &Parts, length_framed: bool) -> Step<Api> {
        check_head(head.version, &head.headers, length_framed).map_err(GatewayError::from)?;
        let target = target_of(&head.method, head.uri.path())?;
        let operational = matches!(
            target,
            Target::Health
                | Target::Root
                | Target::Ready
                | Target::Status
                | Target::Metrics
                | Target::Ui
                | Target::Reload
        );
        let admin_elsewhere = cx.runtime.config.server.admin_listen.is_some();
        let allowed = match cx.listener {
            Listener::Admin => operational,
            // Reloading over HTTP is for the admin listener only: the API port may face
            // clients that must not be able to make voxgate re-read its files.
            Listener::Public => {
                !(matches!(target, Target::Reload)
                    || admin_elsewhere
                        && matches!(
                            target,
                            Target::Ready | Target::Status | Target::Metrics | Target::Ui
                        ))
            }
        };
        if !allowed {
            return Err(GatewayError::NotFound(head.uri.path().to_string()).into());
        }
        if matches!(target, Target::Api(_) | Target::Discovery(_)) {
            authenticate(cx, &head.headers)?;
        }
        if matches!(target, Target::Discovery(_)) {
            meter_discovery(cx).await?;
        }
        let runtime = cx.runtime;
        let local = match target {
            Target::Api(api) => {
                cx.trace.record.endpoint = api.operation.name();
                return Ok(api);
            }
            // `/` is the status page where only people look (the admin listener), and
            // the health answer on the API listener, where load balancers do.
            Target::Root if cx.listener == Listener::Admin => ui::page(),
            Target::Health | Target::Root => admin::health(),
            Target::Ready => admin::readiness(runtime),
            Target::Status => admin::status(runtime, self.reloads(), &self.recent_errors),
            Target::Ui => ui::page(),
            Target::Metrics => admin::metrics(self.metrics_page(runtime)),
            // Boxed: a reload's future is large, and classify's own would grow by it for
            // every request (every state of the request path is moved and copied).
            Target::Reload => admin::reloaded(Box::pin(self.reload("POST /reload")).await),
            Target::Discovery(listing) => {
                let routes = runtime.router.routes();
                let list =
                    discovery::answer(listing, &runtime.upstreams, routes, &head.headers, &cx.id)
                        .await;
                admin::json_response(http::StatusCode::OK, &list)
            }
        };
        Err(Stop::answered(local))
    }
}

/// intake: the body read within limits, JSON or multipart or raw by the operation.
async fn intake<B>(cx: &mut Context<'_>, api: &Api, head: &Parts, body: B) -> Step<Payload>
where
    B: Body<Data = Bytes> + Send + Unpin,
    B::Error: Into<BoxError>,
{
    let limits = &cx.runtime.limits;
    let headers = &head.headers;
    let read = match api.operation {
        Operation::Speech => read_json(body, headers, limits).await,
        Operation::Transcriptions | Operation::Translations => {
            read_form(body, headers, limits).await
        }
        Operation::Other => read_raw(body, headers, limits).await,
    };
    let (payload, bytes_in) = read.map_err(GatewayError::from)?;
    let record = &mut cx.trace.record;
    record.bytes_in = bytes_in;
    record.billed_units = payload.billed_units();
    record.model = payload.model().map(str::to_string);
    record.voice = payload.voice().map(str::to_string);
    Ok(payload)
}

/// route: the first route whose match takes the request's facts.
fn route<'r>(
    cx: &mut Context<'r>,
    api: &Api,
    head: &Parts,
    payload: &Payload,
) -> Step<&'r RouteConfig> {
    let facts = RequestFacts {
        operation: api.operation,
        method: &head.method,
        path: &api.path,
        model: payload.model(),
        voice: payload.voice(),
        response_format: payload.response_format(),
        stream: payload.stream(),
    };
    let runtime: &'r Runtime = cx.runtime;
    let Some((index, route)) = runtime.router.find(&facts) else {
        return Err(GatewayError::NoRoute {
            endpoint: api.operation.name(),
            model: payload.model().unwrap_or_default().to_string(),
        }
        .into());
    };
    cx.trace.record.route = Some(route.line);
    cx.trace.record.route_index = Some(index as u32);
    Ok(route)
}

/// forward: the route's upstreams in order until one answers (`forward.rs`).
async fn forward(
    cx: &mut Context<'_>,
    api: &Api,
    head: &Parts,
    route: &RouteConfig,
    payload: &Payload,
) -> Step<Served> {
    let path_and_query: Cow<str> = match head.uri.query() {
        Some(q) => format!("{}?{q}", api.path).into(),
        None => api.path.as_str().into(),
    };
    let request = RequestHead {
        operation: api.operation,
        client: ClientRequest {
            method: &head.method,
            path_and_query: &path_and_query,
            headers: &head.headers,
            request_id: &cx.id,
        },
    };
    let runtime = cx.runtime;
    let outcome = try_upstreams(
        &runtime.upstreams,
        &runtime.retry_budget,
        route,
        payload,
        &request,
        &mut cx.trace.record,
    )
    .await;
    // A request that failed on every upstream is given back what it took of the limits.
    match outcome {
        Ok(served) if served.response.status().is_server_error() => {
            cx.admitted.quota.refund();
            Ok(served)
        }
        Ok(served) => Ok(served),
        Err(e) => {
            cx.admitted.quota.refund();
            Err(Stop::Refused(GatewayError::Upstreams(e)))
        }
    }
}

/// An answer streamed from elsewhere than voxgate itself (an upstream, the cache): the
/// trace closes at the end of its body.
fn streaming(
    mut trace: Trace,
    streamed: Response<ProxyBody>,
    admitted: &Admitted,
) -> Response<ProxyBody> {
    trace.record.status = streamed.status().as_u16();
    trace.record.cache = admitted.cache;
    let (mut parts, body) = streamed.into_parts();
    admitted.write_headers(&mut parts.headers);
    Response::from_parts(parts, ObservedBody::new(body, trace).boxed())
}

/// observe: the answer goes out, and the trace closes when it is over: at the end of the
/// body for a streamed one, at once for voxgate's own.
fn observe(
    mut trace: Trace,
    id: HeaderValue,
    end: Step<Response<ProxyBody>>,
    closing: bool,
    admitted: &Admitted,
) -> Response<ProxyBody> {
    let mut response = match end {
        // An upstream's answer comes only after the whole body was read: never closing.
        Ok(streamed) => return streaming(trace, streamed, admitted),
        Err(Stop::Streamed(streamed)) => return streaming(trace, *streamed, admitted),
        Err(Stop::Answered(response)) => *response,
        Err(Stop::Refused(e)) => {
            let api = e.api_error();
            trace.record.error = Some(api.message.clone());
            api.into_response()
        }
    };
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID_HEADER_NAME.clone(), id);
    admitted.write_headers(headers);
    trace.record.cache = admitted.cache;
    if closing {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    trace.record.status = response.status().as_u16();
    trace.finish(response.body().size_hint().exact().unwrap_or(0));
    response
}
