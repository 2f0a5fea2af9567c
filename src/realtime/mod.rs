//! Real-time edge: Phoenix Channels over WebSocket and over long-poll (docs/design.md#real-time, docs/protocols.md#phoenix-channels).
//!
//! Stage 1 of the flow, beside `http`. This module authenticates a connect request,
//! the same way for both transports, and refuses it (403 with a reason, no session)
//! before anything is opened. [`websocket`] upgrades and [`longpoll`] keeps sessions
//! between HTTP requests; both hand their frames to one tracked [`session`] loop per
//! client, so the protocol is spoken by one piece of code. [`frame`] is the wire
//! format, [`channel`] the meaning of `conversation:<id>` topics and [`stream`] the
//! replay and live events of one joined topic. Nothing here writes activities except
//! through `ingest`.

mod channel;
#[cfg(test)]
mod fixture;
pub mod frame;
mod longpoll;
mod session;
mod stream;
mod websocket;

use std::net::IpAddr;

use axum::http::{Extensions, HeaderMap};
use utoipa_axum::router::OpenApiRouter;

use crate::config::Config;
use crate::domain::{ChannelId, ConversationId, TenantId};
use crate::http::error::ApiError;
use crate::http::extract::Caller;
use crate::http::listener::{AddressSlot, Refused};
use crate::http::state::AppState;
use frame::Vsn;

/// Who a socket belongs to: the claims of its client token, checked at connect.
#[derive(Debug, Clone)]
pub(crate) struct SocketAuth {
    pub tenant_id: TenantId,
    pub channel_id: ChannelId,
    /// The one conversation the socket may join.
    pub conversation_id: ConversationId,
    /// The token's subject: the sender of everything the socket posts.
    pub user_id: String,
}

/// What a connect request carries, whatever its transport.
struct Connect<'a> {
    transport: &'static str,
    token: Option<String>,
    vsn: Option<&'a str>,
    client_ip: Option<IpAddr>,
}

/// Checks a connect request: its `vsn` and its client token.
///
/// # Errors
/// The refusal to answer, logged here with its reason (never the token): `403` with
/// `missing_token`, `unsupported_version`, `invalid_token`, `token_expired`,
/// `tenant_inactive` or `channel_inactive`; a store failure stays a 500.
async fn authenticate(
    state: &AppState,
    connect: Connect<'_>,
) -> Result<(SocketAuth, Vsn), ApiError> {
    let client_ip = connect
        .client_ip
        .map_or_else(|| "-".to_owned(), |ip| ip.to_string());
    let refused = |err: ApiError| {
        tracing::info!(
            transport = connect.transport,
            code = err.code,
            client_ip,
            "socket connect refused: {}",
            err.message
        );
        err.connect_refused()
    };
    let Some(vsn) = Vsn::from_param(connect.vsn) else {
        return Err(refused(ApiError::unsupported_socket_version()));
    };
    let Some(token) = connect.token.filter(|t| !t.is_empty()) else {
        return Err(refused(ApiError::missing_socket_token()));
    };
    match state.authenticate_client_token(&token).await {
        Ok(Caller::Client {
            tenant_id,
            channel_id,
            conversation_id,
            user_id,
        }) => Ok((
            SocketAuth {
                tenant_id,
                channel_id,
                conversation_id,
                user_id,
            },
            vsn,
        )),
        // Client tokens authenticate as nothing else; kept apart should that change.
        Ok(_) => Err(refused(ApiError::unauthorized(
            "invalid_token",
            "this kind of token cannot be used here",
        ))),
        Err(e) if e.status.is_server_error() => Err(e),
        Err(e) => Err(refused(e)),
    }
}

/// A connection through a trusted proxy counts against its forwarded client's address
/// cap, which its connection (the proxy's) was not counted against.
fn forwarded_slot(
    state: &AppState,
    extensions: &Extensions,
    headers: &HeaderMap,
) -> Result<Option<AddressSlot>, Refused> {
    let Some((peer, client)) = state.peer_and_client(extensions, headers) else {
        return Ok(None);
    };
    state.connections.admit_forwarded(peer, client)
}

/// The client address of a connect request, for logs and caps.
fn client_ip(state: &AppState, extensions: &Extensions, headers: &HeaderMap) -> Option<IpAddr> {
    state
        .peer_and_client(extensions, headers)
        .map(|(_, client)| client)
}

/// The socket endpoints, `/socket/websocket` and `/socket/longpoll`, with their
/// OpenAPI paths. Sessions are tracked by `AppState::tasks`, so shutdown can wait for
/// them after closing them (1012 on a WebSocket, `410` on the next poll).
pub fn router(config: &Config) -> OpenApiRouter<AppState> {
    websocket::router().merge(longpoll::router(config))
}
