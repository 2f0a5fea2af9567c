//! The WebSocket transport: `GET /socket/websocket` authenticates, then upgrades and
//! hands the socket to a [`session`](super::session) (docs/protocols.md#connecting).
//!
//! It refuses a connect before upgrading, never after, and moves frames only: what
//! they mean is the session's business.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{Extensions, HeaderMap, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::session::{self, Exit, Gone, Incoming, Transport, close_code};
use super::{Connect, authenticate, client_ip, forwarded_slot};
use crate::http::error::ApiError;
use crate::http::state::AppState;

/// Read buffer of one socket, in bytes: every idle socket holds it. Phoenix frames of
/// chat are a few hundred bytes; a larger one grows the buffer of its socket.
const SOCKET_READ_BUFFER: usize = 2 * 1024;
/// Prefix of the subprotocol carrying the token (Phoenix ≥ 1.8 `authToken`).
const TOKEN_PROTOCOL_PREFIX: &str = "base64url.bearer.phx.";
/// The subprotocol answered when the client offers it.
const PHOENIX_PROTOCOL: &str = "phoenix";
/// Despite its name the token subprotocol uses the standard alphabet, unpadded.
const TOKEN_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

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
/// (docs/design.md#authentication: client tokens; docs/protocols.md#connecting). A refusal is answered before the
/// upgrade, with a JSON error body that WebSocket clients cannot read but people and
/// logs can.
#[utoipa::path(get, path = "/socket/websocket", tag = "realtime",
    params(
        ("token" = Option<String>, Query, description = "Client token (or offer the subprotocol `base64url.bearer.phx.<base64 of the token>` beside `phoenix`)"),
        ("vsn" = Option<String>, Query, description = "`2.0.0` for array frames, `1.0.0` (the default) for object frames"),
    ),
    responses(
        (status = 101, description = "Switched to the Phoenix Channels protocol (see docs/realtime.md)"),
        (status = 400, description = "`websocket_required`: not a WebSocket upgrade request", body = crate::http::error::ErrorBody),
        (status = 403, description = "Connect refused: `missing_token`, `unsupported_version`, `invalid_token`, `token_expired`, `tenant_inactive`, `channel_inactive`", body = crate::http::error::ErrorBody),
        (status = 429, description = "`too_many_connections` from this client address", body = crate::http::error::ErrorBody),
        (status = 500, description = "`internal_error`", body = crate::http::error::ErrorBody),
    ))]
async fn connect(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    extensions: Extensions,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return ApiError::websocket_required(&rejection.body_text()).into_response();
        }
    };
    let slot = match forwarded_slot(&state, &extensions, &headers) {
        Ok(slot) => slot,
        Err(refused) => return ApiError::too_many_connections(refused).into_response(),
    };
    let (token, vsn) = connect_params(query.as_deref(), &headers);
    let connect = Connect {
        transport: "websocket",
        token,
        vsn: vsn.as_deref(),
        client_ip: client_ip(&state, &extensions, &headers),
    };
    let (auth, vsn) = match authenticate(&state, connect).await {
        Ok(granted) => granted,
        Err(refusal) => return refusal.into_response(),
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
                        session::run(WebSocketTransport(socket), state, auth, vsn).await;
                        drop(slot);
                    },
                    span,
                ),
            ))
        })
}

/// An upgraded socket, as a session's transport.
pub(super) struct WebSocketTransport(pub WebSocket);

impl Transport for WebSocketTransport {
    async fn recv(&mut self) -> Incoming {
        match self.0.recv().await {
            None | Some(Ok(Message::Close(_))) => Incoming::End(Exit::Gone),
            Some(Err(e)) => Incoming::End(receive_error(e)),
            Some(Ok(Message::Text(text))) => Incoming::Text(text),
            Some(Ok(Message::Binary(_))) => Incoming::End(Exit::Close(
                close_code::UNSUPPORTED_DATA,
                "binary frames are not supported",
            )),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Alive {
                busy: std::time::Duration::ZERO,
            },
        }
    }

    async fn send(&mut self, text: String) -> Result<(), Gone> {
        self.0
            .send(Message::Text(text.into()))
            .await
            .map_err(|_| Gone)
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = self.0.send(Message::Close(Some(frame))).await;
    }
}

fn receive_error(err: axum::Error) -> Exit {
    match err.into_inner().downcast::<tungstenite::Error>() {
        Ok(e) if matches!(*e, tungstenite::Error::Capacity(_)) => {
            Exit::Close(close_code::MESSAGE_TOO_BIG, "frame too large")
        }
        _ => Exit::Gone,
    }
}

/// `GET /socket/websocket`.
pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(connect))
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
