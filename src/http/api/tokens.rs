//! Client tokens (docs/design.md#authentication): one conversation, one user, one hour; refreshed by
//! the client before it expires, as Direct Line's `tokens/refresh`.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::auth::CLIENT_TOKEN_TTL_SECS;
use crate::domain::{ConversationId, ConversationStatus, check_no_nul};
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::{ApiJson, Caller, ClientIp};
use crate::http::state::AppState;

/// Longest user id, in characters.
const MAX_USER_ID_CHARS: usize = 255;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenIn {
    pub conversation_id: ConversationId,
    /// Becomes the `sender` of everything the token posts.
    pub user_id: String,
}

/// Bare, without the `data` envelope, as the original API answered.
#[derive(Serialize, ToSchema)]
pub struct TokenOut {
    pub token: String,
    /// Seconds until the token expires.
    pub expires_in: i64,
}

fn closed() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conversation_closed",
        "the conversation is closed",
    )
}

/// Issue a client token for a conversation (channel token of its channel, or API key).
/// Issuance is limited per tenant for the API key, whose application issues tokens for
/// all its users, and per address for channel tokens.
#[utoipa::path(post, path = "/tokens", tag = "tokens", request_body = TokenIn,
    security(("api_key" = []), ("channel_token" = [])),
    responses((status = 201, body = TokenOut), (status = 404, body = crate::http::error::ErrorBody),
              (status = 409, body = crate::http::error::ErrorBody, description = "`conversation_closed`"),
              (status = 429, description = "`rate_limited`: more than the token issuance limit of the tenant (API key) or of the address (channel token)", body = crate::http::error::ErrorBody)))]
async fn create_token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    caller: Caller,
    ApiJson(body): ApiJson<TokenIn>,
) -> ApiResult<(StatusCode, axum::Json<TokenOut>)> {
    match &caller {
        Caller::Client { .. } => {
            return Err(ApiError::forbidden(
                "insufficient_scope",
                "client tokens cannot issue tokens; refresh one with POST /tokens/refresh",
            ));
        }
        Caller::Tenant { tenant_id } => state.limits.check_tenant_token_issue(*tenant_id)?,
        Caller::Channel { .. } => {
            if let Some(ip) = ip {
                state.limits.check_token_issue(ip)?;
            }
        }
    }
    let user_id = body.user_id.trim();
    if user_id.is_empty() || user_id.chars().count() > MAX_USER_ID_CHARS {
        return Err(ApiError::invalid_field(
            "user_id",
            &format!("must be 1 to {MAX_USER_ID_CHARS} characters"),
        ));
    }
    check_no_nul("user_id", user_id).map_err(|e| ApiError::validation(vec![e]))?;
    let conversation = state
        .visible_conversation(&caller, body.conversation_id)
        .await?;
    if conversation.status == ConversationStatus::Closed {
        return Err(closed());
    }
    let token = state.jwt.issue_client_token(
        conversation.tenant_id,
        conversation.channel_id,
        conversation.id,
        user_id,
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(TokenOut {
            token,
            expires_in: CLIENT_TOKEN_TTL_SECS,
        }),
    ))
}

/// Exchange a live client token for a new one of the same conversation and user with a
/// fresh expiry (Direct Line `tokens/refresh`). An expired token cannot be refreshed:
/// the application issues a new one.
#[utoipa::path(post, path = "/tokens/refresh", tag = "tokens",
    security(("client_token" = [])),
    responses((status = 200, body = TokenOut),
              (status = 401, body = crate::http::error::ErrorBody, description = "`token_expired`, `invalid_token`, `unauthorized`"),
              (status = 403, body = crate::http::error::ErrorBody, description = "`tenant_inactive`, `channel_inactive`; `insufficient_scope` for an API key or channel token"),
              (status = 404, body = crate::http::error::ErrorBody, description = "`not_found`: the token's conversation is gone"),
              (status = 409, body = crate::http::error::ErrorBody, description = "`conversation_closed`")))]
async fn refresh_token(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<axum::Json<TokenOut>> {
    let Caller::Client {
        conversation_id,
        user_id,
        ..
    } = &caller
    else {
        return Err(ApiError::forbidden(
            "insufficient_scope",
            "only a client token can be refreshed; issue one with POST /tokens",
        ));
    };
    let conversation = state
        .visible_conversation(&caller, *conversation_id)
        .await?;
    if conversation.status == ConversationStatus::Closed {
        return Err(closed());
    }
    let token = state.jwt.issue_client_token(
        conversation.tenant_id,
        conversation.channel_id,
        conversation.id,
        user_id,
    );
    Ok(axum::Json(TokenOut {
        token,
        expires_in: CLIENT_TOKEN_TTL_SECS,
    }))
}

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_token))
        .routes(routes!(refresh_token))
}
