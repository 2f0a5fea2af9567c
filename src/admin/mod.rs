//! The operator's admin panel at `/admin` (docs/design.md#authentication, docs/design.md#api): server-rendered pages
//! and a JSON API under `/admin/api`, both behind the guard (`guard.rs`).
//!
//! An edge like the REST API: it reads the store and changes tenants, channels,
//! routes, conversations and deliveries only through [`crate::operations`], the same
//! functions the REST API and the CLI call, so every rule holds the same everywhere.
//! Activities are never written here.

mod api;
mod forms;
mod guard;
mod ops_feed;
mod pages;

use axum::Router;
use axum::http::header;
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use utoipa_axum::router::OpenApiRouter;

use crate::http::state::AppState;

pub use guard::AdminContext;

const CSS: &str = include_str!("static/admin.css");
const JS: &str = include_str!("static/admin.js");

async fn css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS)
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
}

/// The JSON admin API, with its OpenAPI paths (mounted at `/admin/api`).
pub fn api_router() -> OpenApiRouter<AppState> {
    api::router()
}

/// Every `/admin` route behind the guard; `api` is [`api_router`] after OpenAPI
/// collection.
pub fn router(state: AppState, api: Router<AppState>) -> Router<AppState> {
    Router::new()
        .route("/admin", get(pages::dashboard))
        .route("/admin/login", get(pages::login_form).post(pages::login))
        .route("/admin/logout", post(pages::logout))
        .route("/admin/static/admin.css", get(css))
        .route("/admin/static/admin.js", get(js))
        .route(
            "/admin/tenants",
            get(pages::tenants).post(pages::create_tenant),
        )
        .route("/admin/tenants/{id}/status", post(pages::set_tenant_status))
        .route(
            "/admin/tenants/{id}/rotate_key",
            post(pages::rotate_tenant_key),
        )
        .route("/admin/channels", get(pages::channels))
        .route(
            "/admin/channels/new",
            get(pages::new_channel).post(pages::create_channel),
        )
        .route("/admin/channels/{id}", get(pages::channel))
        .route(
            "/admin/channels/{id}/status",
            post(pages::set_channel_status),
        )
        .route(
            "/admin/channels/{id}/rotate_secret",
            post(pages::rotate_channel_secret),
        )
        .route(
            "/admin/channels/{id}/retry_failed",
            post(pages::retry_channel_failures),
        )
        .route("/admin/channels/{id}/pause", post(pages::pause_channel))
        .route("/admin/channels/{id}/resume", post(pages::resume_channel))
        .route(
            "/admin/channels/{id}/replay",
            post(pages::replay_channel_failures),
        )
        .route(
            "/admin/channels/{id}/config",
            post(pages::edit_channel_config),
        )
        .route(
            "/admin/routes",
            get(pages::routes).post(pages::create_route),
        )
        .route("/admin/routes/{id}/delete", post(pages::delete_route))
        .route("/admin/conversations", get(pages::conversations))
        .route("/admin/conversations/{id}", get(pages::conversation))
        .route(
            "/admin/conversations/{id}/close",
            post(pages::close_conversation),
        )
        .route(
            "/admin/conversations/{id}/reopen",
            post(pages::reopen_conversation),
        )
        .route("/admin/deliveries", get(pages::deliveries))
        .route("/admin/deliveries/{id}/retry", post(pages::retry_delivery))
        .route("/admin/ops-events/socket", get(ops_feed::socket))
        .merge(api)
        .route_layer(middleware::from_fn_with_state(state, guard::guard))
}
