//! Operations endpoints: liveness, readiness and Prometheus metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::state::AppState;
use crate::domain::Timestamp;

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
    // Known down: answered at once. Otherwise asked, for at most a second.
    let ready = state.store.is_available()
        && match tokio::time::timeout(crate::store::PROBE_TIMEOUT, state.store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness check failed");
                false
            }
            Err(_) => {
                tracing::warn!("readiness check: the database did not answer in time");
                false
            }
        };
    if ready {
        return (StatusCode::OK, axum::Json(HealthOut { status: "ready" }));
    }
    state.store.report_unavailable();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(HealthOut {
            status: "database_unavailable",
        }),
    )
}

/// How long a scrape waits for the queue-depth sample before answering without it.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Prometheus metrics of this node, in the text exposition format. Queue depth, channel
/// health and pool usage are sampled now; a database too slow to answer leaves the
/// queue depth and channel health at their previous sample rather than failing the
/// scrape.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    crate::metrics::record_pool(&state.store.pool_stats());
    crate::metrics::record_connections(state.connections.open(), state.connections.max());
    let sampled = tokio::time::timeout(SAMPLE_TIMEOUT, async {
        tokio::try_join!(
            state.store.queue_depth(Timestamp::now()),
            state.store.count_channels_by_health(),
        )
    })
    .await;
    match sampled {
        Ok(Ok((depth, health))) => {
            crate::metrics::record_queue_depth(&depth);
            crate::metrics::record_channel_health(&health);
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot sample the delivery queue"),
        Err(_) => tracing::warn!("sampling the delivery queue timed out"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}
