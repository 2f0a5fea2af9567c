//! The single mapping from errors to HTTP responses.
//!
//! Every error body is `{"error":{"code","message","details"?}}` with a stable
//! snake_case `code`. Internal errors answer a generic message and are logged in full.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::listener::Refused;
use crate::domain::FieldError;
use crate::ingest::IngestError;
use crate::operations::OpError;
use crate::store::StoreError;

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds a rate-limited client should wait (`Retry-After`).
    pub retry_after: Option<u64>,
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// The error body, for the OpenAPI document.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

/// The object inside an error body.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorObject {
    /// Stable, machine-readable, snake_case.
    pub code: String,
    /// For humans; may change between versions.
    pub message: String,
    /// Structured context, e.g. `{"fields": [{"field", "message"}]}` for validation.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// 429 with `Retry-After` (whole seconds, at least 1).
    pub fn rate_limited(wait: std::time::Duration, what: &str) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many {what}; retry in {} s", secs.max(1)),
        );
        err.retry_after = Some(secs.max(1));
        err
    }

    /// A connection refused at a connection cap: 503 when the node is full, 429 when
    /// the client's address is, both with `Retry-After: 1`.
    pub fn too_many_connections(refused: Refused) -> Self {
        let status = match refused {
            Refused::Node => StatusCode::SERVICE_UNAVAILABLE,
            Refused::Address => StatusCode::TOO_MANY_REQUESTS,
        };
        let mut err = Self::new(status, "too_many_connections", refused.message());
        err.retry_after = Some(1);
        err
    }

    /// 503 `store_unavailable` with `Retry-After: 1`: the database is out of reach
    /// right now; the same request may be sent again.
    pub fn store_unavailable() -> Self {
        let mut err = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the database is unavailable; retry shortly (a retry with the same idempotency key never writes twice)",
        );
        err.retry_after = Some(1);
        err
    }

    /// The body of this error, as its response carries it.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorObject {
                code: self.code.to_owned(),
                message: self.message.clone(),
                details: self.details.clone(),
            },
        }
    }

    /// Adds structured details.
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// 404 for a missing row, or one of another tenant (never 403: existence must not leak).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// Maps a store error, `NotFound` becoming a 404 naming `what`:
    /// `.map_err(ApiError::not_found_as("channel"))`.
    pub fn not_found_as(what: &'static str) -> impl Fn(StoreError) -> ApiError {
        move |e| match e {
            StoreError::NotFound => ApiError::not_found(what),
            other => other.into(),
        }
    }

    /// 422 naming every broken rule.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            crate::operations::summary(&errors),
        )
        .with_details(json!({ "fields": errors }))
    }

    /// 422 for one field.
    pub fn invalid_field(field: &str, message: &str) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }

    /// 401: no usable credential.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 403: a valid credential that may not do this.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 409: the request conflicts with the current state of a resource.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 400 for a plain-HTTP request that cannot be redirected to HTTPS (no usable host
    /// to redirect to), with `CONVERGER_FORCE_HTTPS` on.
    pub fn https_required() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "https_required",
            "this server is reached over HTTPS only",
        )
    }

    /// A refused socket connect (WebSocket upgrade or new long-poll session): 403
    /// whatever the credential's problem, as Phoenix clients expect, keeping its code.
    pub fn connect_refused(mut self) -> Self {
        if self.status.is_client_error() {
            self.status = StatusCode::FORBIDDEN;
        }
        self
    }

    /// A socket connect without a client token.
    pub fn missing_socket_token() -> Self {
        Self::forbidden(
            "missing_token",
            "send a client token as the `token` query parameter (or in the \
             `Sec-WebSocket-Protocol` or `X-Phoenix-AuthToken` header)",
        )
    }

    /// A socket connect with a `vsn` that names no serializer spoken here.
    pub fn unsupported_socket_version() -> Self {
        Self::forbidden(
            "unsupported_version",
            "`vsn` must be 2.0.0 (array frames) or 1.0.0 (object frames, the default)",
        )
    }

    /// 400: a request to the WebSocket endpoint that is not a WebSocket upgrade.
    pub fn websocket_required(detail: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "websocket_required",
            format!(
                "this endpoint speaks WebSocket only ({detail}); plain HTTP clients use /socket/longpoll"
            ),
        )
    }

    /// 410: a long-poll request for a session this node does not hold (ended, expired,
    /// or never opened here); the client opens a new one and rejoins.
    pub fn longpoll_session_gone(elsewhere: bool) -> Self {
        if elsewhere {
            Self::new(
                StatusCode::GONE,
                "session_on_another_node",
                "this long-poll session was opened on another node (or before a restart); \
                 route a client's long-poll requests to one node",
            )
        } else {
            Self::new(
                StatusCode::GONE,
                "session_gone",
                "this long-poll session has ended or expired; open a new one",
            )
        }
    }

    /// 400: a long-poll batch with a line that is not a Phoenix message.
    pub fn invalid_frame(line: usize, problem: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_frame",
            format!("message {line} of the batch: {problem}"),
        )
        .with_details(json!({ "line": line }))
    }

    /// 413: a body, or one message of it, over a limit.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 500 with a generic message; `cause` is logged, never sent.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred; it has been logged",
        )
    }
}

/// Marks a response that failed because the database was out of reach, so the
/// availability layer ([`super::availability`]) can have the store probed.
#[derive(Debug, Clone, Copy)]
pub struct StoreUnavailable;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.code == "store_unavailable" {
            response.extensions_mut().insert(StoreUnavailable);
        }
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => ApiError::not_found("resource"),
            StoreError::Conflict { constraint } => match constraint.as_str() {
                "conversations_channel_id_external_id_key" => ApiError::new(
                    StatusCode::CONFLICT,
                    "conversation_exists",
                    "an active conversation with this external_id exists on the channel",
                ),
                "routes_source_target_key" => ApiError::new(
                    StatusCode::CONFLICT,
                    "route_exists",
                    "a route between these channels exists",
                ),
                "routes_acyclic" => ApiError::new(
                    StatusCode::CONFLICT,
                    "route_cycle",
                    "this route would close a cycle of routes between the tenant's channels",
                ),
                "foreign_key" => ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "a referenced resource does not exist any more",
                ),
                _ => ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("the request conflicts with existing data ({constraint})"),
                ),
            },
            StoreError::Unavailable(e) => {
                // Logged once per outage by the store's probe; per request only here.
                tracing::debug!(error = %e, "database unavailable");
                ApiError::store_unavailable()
            }
            other => ApiError::internal(&other),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(err: IngestError) -> Self {
        match err {
            IngestError::Invalid(errors) => ApiError::validation(errors),
            IngestError::ConversationNotFound => ApiError::not_found("conversation"),
            IngestError::ConversationClosed => ApiError::new(
                StatusCode::CONFLICT,
                "conversation_closed",
                "the conversation is closed and accepts no new activities",
            ),
            IngestError::ChannelInactive => {
                ApiError::forbidden("channel_inactive", "the conversation's channel is inactive")
            }
            IngestError::IdempotencyConflict { existing } => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "this idempotency key was already used for a different activity",
            )
            .with_details(json!({ "activity_id": existing.id })),
            IngestError::Store(e) => e.into(),
        }
    }
}

impl From<OpError> for ApiError {
    fn from(err: OpError) -> Self {
        match err {
            OpError::NotFound(what) => ApiError::not_found(what),
            OpError::Invalid(errors) => ApiError::validation(errors),
            OpError::TenantExists(name) => ApiError::conflict(
                "tenant_exists",
                format!(
                    "a tenant called `{name}` exists already (names are compared without case)"
                ),
            ),
            OpError::DeliveryNotFailed { status } => ApiError::conflict(
                "delivery_not_failed",
                format!("only failed or pending deliveries can be retried; this one is {status}"),
            )
            .with_details(json!({ "status": status })),
            OpError::DeliveryInFlight => ApiError::conflict(
                "delivery_in_flight",
                "an attempt of this delivery is under way; retry once it has ended",
            ),
            OpError::ConversationActive => ApiError::conflict(
                "conversation_active",
                "the conversation is active; only a closed conversation can be reopened",
            ),
            OpError::ConversationExists { holder } => {
                let err = ApiError::conflict(
                    "conversation_exists",
                    "another active conversation with this external_id exists on the \
                     channel; close it first",
                );
                match holder {
                    Some(id) => err.with_details(json!({ "conversation_id": id })),
                    None => err,
                }
            }
            OpError::Store(e) => e.into(),
        }
    }
}
