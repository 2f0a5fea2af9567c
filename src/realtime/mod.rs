//! Real-time edge: the Phoenix Channels WebSocket endpoint (DESIGN.md §3 "Real time",
//! protocols.md §1).
//!
//! Stage 1 of the flow, beside `http`. This module authenticates the upgrade request
//! and hands the socket to a tracked [`session`]; [`frame`] is the wire format,
//! [`channel`] the meaning of `conversation:<id>` topics and [`stream`] the replay and
//! live events of one joined topic. It never writes activities except through
//! `ingest`, and refuses a connection (403, no socket) before upgrading rather than
//! after.

mod channel;
#[cfg(test)]
mod fixture;
pub mod frame;
mod session;
mod stream;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;

/// Read buffer of one socket, in bytes: every idle socket holds it. Phoenix frames of
/// chat are a few hundred bytes; a larger one grows the buffer of its socket.
const SOCKET_READ_BUFFER: usize = 2 * 1024;
use axum::extract::{RawQuery, State};
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::domain::{ChannelId, ConversationId, TenantId};
use crate::http::error::ApiError;
use crate::http::extract::Caller;
use crate::http::listener::{AddressSlot, Refused};
use crate::http::state::AppState;
use frame::Vsn;

/// Prefix of the subprotocol carrying the token (Phoenix ≥ 1.8 `authToken`).
const TOKEN_PROTOCOL_PREFIX: &str = "base64url.bearer.phx.";
/// The subprotocol answered when the client offers it.
const PHOENIX_PROTOCOL: &str = "phoenix";
/// Despite its name the token subprotocol uses the standard alphabet, unpadded.
const TOKEN_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

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

/// The token and `vsn` of a connect request: query parameters first, then the
/// `Sec-WebSocket-Protocol` token.
fn connect_params(query: Option<&str>, headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let (mut token, mut vsn) = (None, None);
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "token" => token = Some(value.into_owned()),
            "vsn" => vsn = Some(value.into_owned()),
            _ => {}
        }
    }
    let token = token
        .filter(|t| !t.is_empty())
        .or_else(|| protocol_token(headers));
    (token, vsn)
}

/// The token of a `base64url.bearer.phx.<B64>` subprotocol, if one is offered.
fn protocol_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(TOKEN_PROTOCOL_PREFIX))
        .and_then(|b64| TOKEN_BASE64.decode(b64).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// `GET /socket/websocket`: authenticates with a client token, then upgrades
/// (DESIGN.md §4: client tokens; protocols.md §1.1).
async fn connect(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    extensions: Extensions,
    upgrade: WebSocketUpgrade,
) -> Response {
    let slot = match forwarded_slot(&state, &extensions, &headers) {
        Ok(slot) => slot,
        Err(refused) => return ApiError::too_many_connections(refused).into_response(),
    };
    let (token, vsn) = connect_params(query.as_deref(), &headers);
    let Some(vsn) = Vsn::from_param(vsn.as_deref()) else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let Some(token) = token else {
        return StatusCode::FORBIDDEN.into_response();
    };
    let auth = match state.authenticate_client_token(&token).await {
        Ok(Caller::Client {
            tenant_id,
            channel_id,
            conversation_id,
            user_id,
        }) => SocketAuth {
            tenant_id,
            channel_id,
            conversation_id,
            user_id,
        },
        Ok(_) => return StatusCode::FORBIDDEN.into_response(),
        Err(e) if e.status.is_server_error() => return e.into_response(),
        Err(e) => {
            tracing::debug!(code = e.code, "socket connect refused");
            return StatusCode::FORBIDDEN.into_response();
        }
    };
    let max_frame = state.config.socket_max_frame_bytes;
    let tracker = state.tasks.clone();
    // The session outlives the upgrade request but keeps its id, for its logs and for
    // the activities its client pushes.
    let request_id =
        crate::telemetry::current_request_id().unwrap_or_else(crate::telemetry::new_request_id);
    upgrade
        .protocols([PHOENIX_PROTOCOL])
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        // tungstenite's 128 KiB default buffers would dominate an idle socket's memory;
        // chat frames are small, and larger ones are read in several chunks.
        .read_buffer_size(SOCKET_READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| {
            let span =
                tracing::info_span!("socket", conversation_id = %auth.conversation_id, request_id);
            tracker.track_future(crate::telemetry::with_request_id(
                request_id,
                tracing::Instrument::instrument(
                    async move {
                        session::run(socket, state, auth, vsn).await;
                        drop(slot);
                    },
                    span,
                ),
            ))
        })
}

/// A socket through a trusted proxy counts against its forwarded client's address
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

/// The WebSocket endpoint. Sessions are tracked by `AppState::tasks`, so shutdown can
/// wait for them after closing them with 1012.
pub fn router() -> Router<AppState> {
    Router::new().route("/socket/websocket", get(connect))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_query_or_subprotocol() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            connect_params(Some("token=a%2Eb&vsn=2.0.0&user%5Bid%5D=7"), &headers),
            (Some("a.b".into()), Some("2.0.0".into()))
        );
        // btoa("tok+/?") without padding, standard alphabet.
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode("tok?>?");
        assert!(b64.contains('/') || b64.contains('+'));
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            format!("phoenix, {TOKEN_PROTOCOL_PREFIX}{b64}")
                .parse()
                .unwrap(),
        );
        assert_eq!(
            connect_params(Some("vsn=2.0.0"), &headers),
            (Some("tok?>?".into()), Some("2.0.0".into()))
        );
        assert_eq!(connect_params(None, &headers).0.as_deref(), Some("tok?>?"));
        assert_eq!(connect_params(None, &HeaderMap::new()), (None, None));
    }
}
