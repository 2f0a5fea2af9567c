//! Operations endpoints: liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct HealthOut {
    /// `ok`, `ready`, `shutting_down` or `database_unavailable`.
    pub status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = HealthOut)))]
async fn health() -> axum::Json<HealthOut> {
    axum::Json(HealthOut { status: "ok" })
}

/// Readiness: the database answers and the node is not shutting down. From the
/// shutdown signal on it answers 503, so that load balancers route elsewhere before
/// the node stops accepting connections.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = HealthOut), (status = 503, body = HealthOut)))]
async fn ready(State(state): State<AppState>) -> (StatusCode, axum::Json<HealthOut>) {
    if state.draining.is_cancelled() || state.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(HealthOut {
                status: "shutting_down",
            }),
        );
    }
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, axum::Json(HealthOut { status: "ready" })),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(HealthOut {
                    status: "database_unavailable",
                }),
            )
        }
    }
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
}
