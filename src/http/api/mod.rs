//! The REST API under `/api/v1` (docs/design.md#api): one router per resource.

mod activities;
mod channels;
mod conversations;
mod deliveries;
mod ops_events;
mod routes;
mod tokens;

pub(crate) use channels::{ChannelCreated, ChannelOut};

use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;

use super::state::AppState;

/// Default and largest page sizes of list endpoints.
pub(crate) const DEFAULT_LIMIT: i64 = 50;
pub(crate) const MAX_LIMIT: i64 = 500;

/// The success envelope: `{"data": ...}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Data<T> {
    pub data: T,
}

impl<T> Data<T> {
    pub fn new(data: T) -> axum::Json<Self> {
        axum::Json(Self { data })
    }
}

/// A page of a keyset-paginated list; pass `next_cursor` back as `cursor` for the next.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page whose cursor is the key of its last item when the page is full.
    pub fn new(data: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> axum::Json<Self> {
        let next_cursor = if data.len() as i64 >= limit {
            data.last().map(key)
        } else {
            None
        };
        axum::Json(Self { data, next_cursor })
    }
}

/// Clamps a requested page size.
pub(crate) fn page_limit(requested: Option<i64>) -> i64 {
    requested.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
}

/// The v1 API, with its OpenAPI paths.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(channels::router())
        .merge(routes::router())
        .merge(conversations::router())
        .merge(activities::router())
        .merge(deliveries::router())
        .merge(tokens::router())
        .merge(ops_events::router())
}
