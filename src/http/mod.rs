//! HTTP edge: decode, authenticate, then call `ingest` or read the store.
//!
//! Stage 1 of the flow. Handlers never write activities themselves, and
//! [`error`] is the only place that chooses status codes.

pub mod api;
pub mod error;
pub mod extract;
pub mod inbound;
pub mod openapi;
pub mod ops;
pub mod state;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use error::ApiError;
use state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The API and operations routes, the admin API routes, and their OpenAPI document.
pub fn api_with_openapi() -> (Router<AppState>, Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut doc) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/api/v1", api::router().merge(inbound::router()))
        .merge(ops::router())
        .split_for_parts();
    // The admin API sits behind the admin guard, so it is kept apart from the rest.
    let (admin_api, admin_doc) = OpenApiRouter::new()
        .nest("/admin/api", crate::admin::api_router())
        .split_for_parts();
    doc.merge(admin_doc);
    (routes, admin_api, doc)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept this method",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal(&"handler panicked").into_response()
}

/// The whole HTTP application. Layers, outermost first: request id (set, then
/// propagated to the response), trace span carrying it, panic guard, body limit.
pub fn router(state: AppState) -> Router {
    let (routes, admin_api, doc) = api_with_openapi();
    let doc = Arc::new(doc);
    let max_body = state.config.max_body_bytes;
    routes
        .merge(crate::realtime::router())
        .merge(crate::admin::router(state.clone(), admin_api))
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let request_id = req
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}
