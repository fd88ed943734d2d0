//! groundcrew's HTTP API: a poem-openapi service that authenticates, validates, writes and
//! enqueues. Everything testable lives here; `main.rs` only parses flags and runs it.
//!
//! Adding a route family: write `routes/<family>.rs` with a `pub struct <Family>Api;` whose
//! `#[OpenApi(tag = "Tag::<Family>")]` impl holds the operations, add the tag to [`Tag`], and
//! add the struct to the tuple in [`openapi_service`]. Handlers take `Data<&ApiState>`, the
//! caller (`BearerAuth`) and, when they enqueue, the [`request_id::RequestId`]; their errors
//! are declared with [`route_error!`]; creating POSTs go through [`idempotency::begin`].

pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod idempotency;
pub mod rate_limit;
pub mod request_id;
pub mod routes;

use std::{sync::Arc, time::Instant};

use groundcrew_jobs::{Services, telemetry};
use poem::{
    Endpoint, EndpointExt, IntoResponse, Request, Response, Route, Server,
    http::{Method, StatusCode},
    listener::{Acceptor, TcpListener},
    middleware::{CatchPanic, Compression, Cors},
};
use poem_openapi::{OpenApiService, OperationId, Tags};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::Verifier,
    config::ApiConfig,
    error::{ApiError, shape_errors},
    rate_limit::RateLimiter,
};

/// What every handler reaches through `Data<&ApiState>`. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub services: Services,
    pub config: Arc<ApiConfig>,
    pub verifier: Arc<Verifier>,
    pub limiter: RateLimiter,
}

impl ApiState {
    pub fn new(services: Services, config: ApiConfig) -> Result<Self, String> {
        Ok(ApiState {
            verifier: Arc::new(Verifier::new(&config.auth)?),
            limiter: RateLimiter::new(config.rate_limits, &services.broker),
            config: Arc::new(config),
            services,
        })
    }
}

#[derive(Tags)]
pub enum Tag {
    /// Probes, metrics and the spec.
    Service,
    /// The caller's profile and other users' public profiles.
    Profiles,
    /// Queues, dead jobs, schedules and workers (admin; read-only routes also `ops_read`).
    Ops,
    /// Sports events and results, picks, pick stats and the ROI leaderboard.
    Picks,
    /// Deal escrows, their moves and ledger; referrals and payout accounts.
    Escrow,
    /// Identity and age verification.
    Verification,
    /// Signed events from third parties (payments, identity, sports data).
    Webhooks,
    /// Follows, blocks, posts and the home feed.
    Feed,
    /// Push devices, notification preferences and the caller's notifications.
    Notifications,
    /// Photo and video uploads and their renditions.
    Media,
}

/// The documented API. Route families add their `…Api` struct to this tuple.
pub fn openapi_service() -> OpenApiService<impl poem_openapi::OpenApi, ()> {
    OpenApiService::new(
        (
            routes::service::ServiceApi,
            routes::profiles::ProfilesApi,
            routes::ops::OpsApi,
            routes::picks::PicksApi,
            routes::escrow::EscrowApi,
            routes::verification::VerificationApi,
            routes::webhooks::WebhooksApi,
            routes::feed::FeedApi,
            routes::notify::NotifyApi,
            routes::media::MediaApi,
        ),
        "groundcrew",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "The background-work platform behind social apps. Errors share one shape: \
         `{\"error\": {\"code\", \"message\", \"details\"}}`.",
    )
    .extra_request_header::<Option<String>, _>(
        poem_openapi::ExtraHeader::new("X-Request-Id").description(
            "Correlates logs and the jobs the request enqueues; generated when absent.",
        ),
    )
    .extra_response_header::<String, _>(
        poem_openapi::ExtraHeader::new("X-Request-Id").description("The request's id."),
    )
}

/// The spec as committed in `openapi/openapi.json`.
pub fn spec_json() -> String {
    openapi_service().spec()
}

/// The whole HTTP application: routes, `/docs`, `/openapi.json`, and the edge middleware.
pub fn build_app(state: ApiState) -> impl Endpoint {
    let api = openapi_service();
    let docs = api.swagger_ui();
    let spec = api.spec_endpoint();
    let body_limit = state.config.body_limit;
    let cors = cors(&state.config.cors_origins);
    Route::new()
        .nest("/", api)
        .nest("/docs", docs)
        .at("/openapi.json", spec)
        .around(rate_limit::limit_requests)
        .around(move |ep, req| limit_body(ep, req, body_limit))
        .around(shape_errors)
        .around(record_request)
        .around(request_id::assign)
        .with(Compression::new())
        .with_if(cors.is_some(), cors.unwrap_or_default())
        .with(
            CatchPanic::new()
                .with_handler(|_| poem::error::ResponseError::as_response(&ApiError::internal())),
        )
        .data(state)
}

fn cors(origins: &[String]) -> Option<Cors> {
    if origins.is_empty() {
        return None;
    }
    Some(
        Cors::new()
            .allow_origins(origins.iter().map(String::as_str))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                "authorization",
                "content-type",
                "idempotency-key",
                "x-request-id",
            ])
            .expose_headers(["x-request-id", "retry-after"]),
    )
}

/// Refuses bodies over the limit: by `Content-Length` up front, and by reading at most the
/// limit when the body is streamed without one. Uploads (`POST /v1/media`) are exempt: that
/// route streams them into storage under the media limits, which are far larger.
async fn limit_body<E: Endpoint>(ep: E, mut req: Request, limit: usize) -> poem::Result<Response> {
    if req.method() == Method::POST && req.uri().path() == "/v1/media" {
        return ep.call(req).await.map(IntoResponse::into_response);
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(len) if len > limit => return Err(too_large().into()),
        Some(_) => {}
        None if req
            .headers()
            .contains_key(poem::http::header::TRANSFER_ENCODING) =>
        {
            let bytes = req
                .take_body()
                .into_bytes_limit(limit)
                .await
                .map_err(|_| too_large())?;
            req.set_body(bytes);
        }
        None => {}
    }
    ep.call(req).await.map(IntoResponse::into_response)
}

/// `groundcrew_http_requests_total{route,status}` and the latency histogram; the route is the
/// operation id, so paths with ids do not explode the label set.
async fn record_request<E: Endpoint>(ep: E, req: Request) -> poem::Result<Response> {
    let started = Instant::now();
    let method = req.method().to_string();
    let resp = ep.call(req).await?.into_response();
    let route = resp.data::<OperationId>().map(|op| op.0).unwrap_or("other");
    let status = resp.status().as_u16().to_string();
    metrics::counter!("groundcrew_http_requests_total", "route" => route, "method" => method.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("groundcrew_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
    Ok(resp)
}

/// Serves the app on `acceptor` until `stop`, letting in-flight requests finish.
pub async fn serve(
    state: ApiState,
    acceptor: impl Acceptor + 'static,
    stop: CancellationToken,
) -> std::io::Result<()> {
    telemetry::metrics();
    Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(
            build_app(state),
            stop.cancelled_owned(),
            Some(std::time::Duration::from_secs(10)),
        )
        .await
}

/// Binds `addr`; separate from [`serve`] so tests can bind port 0 and learn the port.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<impl Acceptor + 'static> {
    poem::listener::Listener::into_acceptor(TcpListener::bind(addr)).await
}
