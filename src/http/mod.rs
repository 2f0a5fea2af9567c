//! HTTP edge: decode, authenticate, then call `ingest` or read the store.
//!
//! Stage 1 of the flow. Handlers never write activities themselves, and
//! [`error`] is the only place that chooses status codes.
//!
//! [`router`] serves the REST API and the operations routes, and wraps the routes of
//! the other edges (WebSocket, admin panel) that the composition root hands it in the
//! same layers; this module does not import those edges.

pub mod api;
pub mod error;
pub mod extract;
pub mod https;
pub mod inbound;
pub mod limits;
pub mod listener;
pub mod openapi;
pub mod ops;
pub mod state;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::telemetry;
use error::{ApiError, StoreUnavailable};
use state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The API and operations routes, and their OpenAPI document.
pub fn api_with_openapi(state: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (v1, v1_doc) = OpenApiRouter::new()
        .nest("/api/v1", api::router().merge(inbound::router()))
        .split_for_parts();
    // The 405 fallback is set before the layers so that CORS also sees (and answers)
    // preflight requests for methods a route does not have.
    let v1 = v1
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_by_ip,
        ))
        .layer(cors(state.config.cors_origins.as_deref()));
    let (routes, mut doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(ops::router())
        .split_for_parts();
    doc.merge(v1_doc);
    (routes.merge(v1), doc)
}

/// CORS for the API and the long-poll socket: the configured origins (or any, with
/// `*`), the credential, idempotency and Phoenix long-poll headers, and
/// `x-request-id`/`retry-after` readable by scripts. Without configured origins, no
/// CORS headers are sent and browsers keep cross-origin calls out.
pub fn cors(origins: Option<&str>) -> CorsLayer {
    let Some(origins) = origins.map(str::trim).filter(|o| !o.is_empty()) else {
        return CorsLayer::new();
    };
    let allow_origin = if origins == "*" {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .split(',')
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-channel-token"),
            HeaderName::from_static("x-idempotency-key"),
            HeaderName::from_static("x-phoenix-authtoken"),
            HeaderName::from_static("x-phoenix-longpoll-token"),
            REQUEST_ID,
        ])
        .expose_headers([REQUEST_ID, header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(3600))
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// 405 with our error body, for routes that set their own fallback (so that layers
/// around them, such as CORS, also see methods they do not have).
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept this method",
    )
}

/// Middleware: gives the request an id (the client's `x-request-id` when it is safe to
/// log, else a new one), serves it with that id current for logs and ingest, and
/// returns the id in the response.
async fn request_id(
    mut request: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| telemetry::valid_request_id(id))
        .map_or_else(telemetry::new_request_id, str::to_owned);
    // Valid ids are visible ASCII, so this never fails.
    let value = HeaderValue::from_str(&id).ok();
    if let Some(value) = &value {
        request.headers_mut().insert(REQUEST_ID, value.clone());
    }
    let mut response = telemetry::with_request_id(id, next.run(request)).await;
    if let Some(value) = value {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Middleware: the per-IP limit of the API.
async fn limit_by_ip(
    State(state): State<AppState>,
    request: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    if let Some(ip) = state.client_ip(&parts)
        && let Err(e) = state.limits.check_ip(ip)
    {
        return e.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}

/// Middleware: counts the request and its latency by method, route template and status.
async fn count_request(
    request: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(String::new, |p| p.as_str().to_owned());
    let response = next.run(request).await;
    crate::metrics::record_http_request(
        method.as_str(),
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal(&"handler panicked").into_response()
}

/// The whole HTTP application: the API and operations routes, `edges` (the routes of
/// the other edges, mounted by the composition root) and `/openapi.json`, the API's
/// document with `edges_doc` merged in. Layers, outermost first: request id (set, then
/// returned in the response), trace span carrying it, panic guard, body limit, HTTPS
/// redirect and HSTS, and per matched route the request metrics.
pub fn router(
    state: AppState,
    edges: Router<AppState>,
    edges_doc: utoipa::openapi::OpenApi,
) -> Router {
    let (routes, mut doc) = api_with_openapi(&state);
    doc.merge(edges_doc);
    openapi::document_common_errors(&mut doc);
    let doc = Arc::new(doc);
    let max_body = state.config.max_body_bytes;
    routes
        .merge(edges)
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        // The API reference: Swagger UI over the document above, assets built in.
        .merge(Router::from(
            utoipa_swagger_ui::SwaggerUi::new("/docs")
                .config(utoipa_swagger_ui::Config::from("/openapi.json")),
        ))
        .route(
            "/",
            get(|| async { axum::response::Redirect::temporary("/docs/") }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            availability,
        ))
        // After routing, so requests are counted by route template, not path.
        .route_layer(axum::middleware::from_fn(count_request))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), https::enforce))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let request_id = req
                        .headers()
                        .get(&REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id)
                })
                // One line per request at INFO: the access log, with the request id.
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
                // A 5xx is not always an error of this node; internal errors log
                // themselves at ERROR.
                .on_failure(log_failure),
        )
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

/// A 5xx answer, at WARN; but not a 503, which says the node is draining or its
/// database is out of reach: each of those is logged once where it starts, and an
/// outage would otherwise log a warning per request on top of the access log.
fn log_failure(class: ServerErrorsFailureClass, latency: std::time::Duration, _: &tracing::Span) {
    if matches!(
        class,
        ServerErrorsFailureClass::StatusCode(StatusCode::SERVICE_UNAVAILABLE)
    ) {
        return;
    }
    tracing::warn!(classification = %class, latency_ms = latency.as_millis(), "response failed");
}

/// Refuses requests that need the database at once while it is known to be out of
/// reach (`503 store_unavailable`, see `store/health.rs`), instead of letting each
/// wait for the pool's timeout; and has the store probed when a request fails that
/// way. Liveness, readiness, metrics, the spec, its page and static assets do not
/// need it.
async fn availability(
    State(state): State<AppState>,
    request: Request<axum::body::Body>,
    next: axum::middleware::Next,
) -> Response {
    const WITHOUT_STORE: &[&str] = &["/", "/health", "/ready", "/metrics", "/openapi.json"];
    let path = request.uri().path();
    let needs_store = !WITHOUT_STORE.contains(&path)
        && !path.starts_with("/admin/static/")
        && !path.starts_with("/docs");
    if needs_store && !state.store.is_available() {
        return ApiError::store_unavailable().into_response();
    }
    let response = next.run(request).await;
    if response.extensions().get::<StoreUnavailable>().is_some() {
        state.store.report_unavailable();
    }
    response
}
