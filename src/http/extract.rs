//! Extractors: our own `Json`, `Query` and `Path` whose rejections use the error
//! envelope, and authentication as types (`Caller`, `TenantAuth`).
//!
//! Handlers get a `TenantId` only from these extractors, never from the request body.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::state::AppState;
use crate::auth::{self, JwtKeys, TokenError};
use crate::domain::{
    ChannelId, ChannelStatus, Conversation, ConversationId, TenantId, TenantStatus,
};
use crate::store::StoreError;

/// A JSON body. Syntax errors are 400 `invalid_json`; a body of the wrong shape is 422
/// `validation_failed` naming the field; a body over the limit is 413.
pub struct ApiJson<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// Parses JSON with the path of the field that failed, for 422 details.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let field = if path == "." { "body".to_owned() } else { path };
                ApiError::invalid_field(&field, &inner.to_string())
            }
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {inner}"),
            ),
        }
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    Ok(value)
}

/// Reads a body, mapping the body limit to 413.
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large("the request body is larger than allowed")
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                rejection.body_text(),
            )
        }
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Query parameters; malformed ones are 400 `invalid_query`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|rejection| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    rejection.body_text(),
                )
            })
    }
}

/// Path parameters; an id that is not a UUID is 400 `invalid_id` on every route.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|rejection| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", rejection.body_text())
            })
    }
}

/// Who is calling, after authentication and the active-status checks of docs/design.md#authentication.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A tenant API key: everything of the tenant.
    Tenant { tenant_id: TenantId },
    /// A channel token: conversations of one channel.
    Channel {
        tenant_id: TenantId,
        channel_id: ChannelId,
    },
    /// A client token: one conversation, as one user.
    Client {
        tenant_id: TenantId,
        channel_id: ChannelId,
        conversation_id: ConversationId,
        user_id: String,
    },
}

impl Caller {
    /// The tenant every query of this request is scoped to.
    pub fn tenant_id(&self) -> TenantId {
        match self {
            Caller::Tenant { tenant_id }
            | Caller::Channel { tenant_id, .. }
            | Caller::Client { tenant_id, .. } => *tenant_id,
        }
    }

    /// Whether this caller may see a conversation of its tenant. Out of scope answers
    /// 404, like another tenant's row.
    pub fn may_access(&self, conversation: &Conversation) -> bool {
        match self {
            Caller::Tenant { tenant_id } => conversation.tenant_id == *tenant_id,
            Caller::Channel {
                tenant_id,
                channel_id,
            } => conversation.tenant_id == *tenant_id && conversation.channel_id == *channel_id,
            Caller::Client {
                tenant_id,
                conversation_id,
                ..
            } => conversation.tenant_id == *tenant_id && conversation.id == *conversation_id,
        }
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = header_str(headers, header::AUTHORIZATION.as_str())?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn token_error(err: TokenError) -> ApiError {
    match err {
        TokenError::Expired => ApiError::unauthorized("token_expired", "the token has expired"),
        TokenError::Invalid => ApiError::unauthorized("invalid_token", "the token is not valid"),
        TokenError::WrongType => {
            ApiError::unauthorized("invalid_token", "this kind of token cannot be used here")
        }
    }
}

impl AppState {
    /// Authenticates a tenant API key.
    pub async fn authenticate_api_key(&self, key: &str) -> Result<Caller, ApiError> {
        let tenant = match self
            .store
            .get_tenant_by_key_hash(&auth::hash_api_key(key))
            .await
        {
            Ok(t) => t,
            Err(StoreError::NotFound) => {
                return Err(ApiError::unauthorized(
                    "invalid_api_key",
                    "the API key is not valid",
                ));
            }
            Err(e) => return Err(e.into()),
        };
        if tenant.status != TenantStatus::Active {
            return Err(ApiError::forbidden(
                "tenant_inactive",
                "the tenant is inactive",
            ));
        }
        Ok(Caller::Tenant {
            tenant_id: tenant.id,
        })
    }

    /// Checks that a token's tenant and channel exist and are active; returns the
    /// channel's current secret.
    async fn check_token_scope(
        &self,
        tenant_id: TenantId,
        channel_id: ChannelId,
    ) -> Result<String, ApiError> {
        let (tenant, channel) = match tokio::try_join!(
            self.store.get_tenant(tenant_id),
            self.store.get_channel(tenant_id, channel_id)
        ) {
            Ok(found) => found,
            Err(StoreError::NotFound) => {
                return Err(ApiError::unauthorized(
                    "invalid_token",
                    "the token is not valid",
                ));
            }
            Err(e) => return Err(e.into()),
        };
        if tenant.status != TenantStatus::Active {
            return Err(ApiError::forbidden(
                "tenant_inactive",
                "the tenant is inactive",
            ));
        }
        if channel.status != ChannelStatus::Active {
            return Err(ApiError::forbidden(
                "channel_inactive",
                "the channel is inactive",
            ));
        }
        Ok(channel.secret)
    }

    /// Authenticates a channel token.
    pub async fn authenticate_channel_token(&self, token: &str) -> Result<Caller, ApiError> {
        let claims = self.jwt.verify_channel_token(token).map_err(token_error)?;
        let secret = self
            .check_token_scope(claims.tenant_id, claims.channel_id)
            .await?;
        if auth::secret_fingerprint(&secret) != claims.secret_fingerprint {
            return Err(ApiError::unauthorized(
                "invalid_token",
                "the token was revoked by rotating the channel secret",
            ));
        }
        Ok(Caller::Channel {
            tenant_id: claims.tenant_id,
            channel_id: claims.channel_id,
        })
    }

    /// Authenticates a client token.
    pub async fn authenticate_client_token(&self, token: &str) -> Result<Caller, ApiError> {
        let claims = self.jwt.verify_client_token(token).map_err(token_error)?;
        self.check_token_scope(claims.tenant_id, claims.channel_id)
            .await?;
        Ok(Caller::Client {
            tenant_id: claims.tenant_id,
            channel_id: claims.channel_id,
            conversation_id: claims.conversation_id,
            user_id: claims.user_id,
        })
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = authenticate(parts, state).await?;
        state.limits.check_tenant(caller.tenant_id())?;
        Ok(caller)
    }
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Caller, ApiError> {
    {
        let headers = &parts.headers;
        if let Some(key) = header_str(headers, "x-api-key") {
            return state.authenticate_api_key(key).await;
        }
        if let Some(token) = header_str(headers, "x-channel-token") {
            return state.authenticate_channel_token(token).await;
        }
        match bearer(headers) {
            Some(credential) if JwtKeys::looks_like_jwt(credential) => {
                match state.authenticate_client_token(credential).await {
                    // A channel token sent as a bearer token works as well.
                    Err(e) if e.code == "invalid_token" => state
                        .authenticate_channel_token(credential)
                        .await
                        .map_err(|_| e),
                    other => other,
                }
            }
            Some(key) => state.authenticate_api_key(key).await,
            None => Err(ApiError::unauthorized(
                "unauthorized",
                "send an API key (`x-api-key` or `Authorization: Bearer`), a channel token \
                 (`x-channel-token`) or a client token (`Authorization: Bearer`)",
            )),
        }
    }
}

/// The client's address (the TCP peer, or what a trusted proxy forwarded).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<std::net::IpAddr>);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(state.client_ip(parts)))
    }
}

/// A caller authenticated with the tenant's API key; routes that manage the tenant's
/// resources take this.
#[derive(Debug, Clone, Copy)]
pub struct TenantAuth {
    pub tenant_id: TenantId,
}

impl FromRequestParts<AppState> for TenantAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, state).await? {
            Caller::Tenant { tenant_id } => Ok(TenantAuth { tenant_id }),
            _ => Err(ApiError::forbidden(
                "api_key_required",
                "this route needs the tenant's API key",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/vnd.api+json".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!is_json(&h));
    }

    #[test]
    fn json_errors_are_classified() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct In {
            n: u32,
        }
        assert_eq!(parse_json::<In>(b"{").unwrap_err().code, "invalid_json");
        assert_eq!(
            parse_json::<In>(br#"{"n": 1} x"#).unwrap_err().code,
            "invalid_json"
        );
        let err = parse_json::<In>(br#"{"n": "x"}"#).unwrap_err();
        assert_eq!(
            (err.code, err.status),
            ("validation_failed", StatusCode::UNPROCESSABLE_ENTITY)
        );
        assert_eq!(err.details.unwrap()["fields"][0]["field"], "n");
    }
}
