//! The long-poll transport (docs/protocols.md#long-poll), for clients without WebSocket:
//! `GET /socket/longpoll` opens a session or polls it for messages, `POST` sends it a
//! batch of messages.
//!
//! A session is a [`session`](super::session) loop like a WebSocket's, fed through two
//! bounded queues instead of a socket: frames from `POST`s go in, encoded frames wait
//! for the next poll. It lives on the node that opened it, in this node's
//! [`Sessions`], named by a random token; a request naming a session this node does
//! not hold is answered `410`, and the client opens a new one and rejoins, resuming
//! after its last activity. A session nobody polls for the idle timeout ends.
//!
//! Every answer carries the Phoenix long-poll `status` the client acts on in its JSON
//! body (`410` with a token for a new session, `200` with messages, `204` for none,
//! `403` refused, `410` gone, `500` retry); failures also carry our `error` object and
//! a matching HTTP status. This module moves frames only: it never interprets them
//! beyond checking that they parse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::extract::{RawQuery, Request, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::frame::{Frame, Vsn};
use super::session::{self, Gone, Incoming, Transport};
use super::{Connect, authenticate, client_ip};
use crate::config::Config;
use crate::http::error::{ApiError, ErrorObject};
use crate::http::extract::read_body;
use crate::http::listener::Admission;
use crate::http::state::AppState;

/// Session tokens start with this, so they are told apart from client tokens, which
/// the JS client sends under the same `token` query parameter.
const SESSION_PREFIX: &str = "lps_";
/// Most messages one `POST` may carry (the JS client's batch size).
const MAX_BATCH: usize = 100;
/// A poll answers with what is waiting, up to about this many bytes.
const MAX_POLL_BYTES: usize = 1024 * 1024;
/// The header newer clients send the session token in.
const SESSION_HEADER: &str = "x-phoenix-longpoll-token";
/// The header carrying the client token when the client's `authToken` option is used.
const AUTH_HEADER: &str = "x-phoenix-authtoken";

/// The long-poll sessions this node holds, by token.
pub(super) struct Sessions {
    /// Random per process, the start of every token this node issues: a token of
    /// another node (or of this node before a restart) is recognised as such.
    node: String,
    open: Mutex<HashMap<String, Arc<Handle>>>,
}

/// The request side of one session.
struct Handle {
    vsn: Vsn,
    /// Frames of `POST`s, and polls as signs of life, towards the session loop.
    incoming: mpsc::Sender<Incoming>,
    /// Encoded frames for the next poll; one poll at a time reads them.
    outgoing: tokio::sync::Mutex<mpsc::Receiver<String>>,
}

impl Sessions {
    fn new() -> Self {
        Self {
            node: hex::encode(rand::random::<[u8; 8]>()),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Handle>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a session under a new unguessable token.
    fn insert(self: &Arc<Self>, handle: Handle) -> Registered {
        let secret = hex::encode(rand::random::<[u8; 24]>());
        let token = format!("{SESSION_PREFIX}{}{secret}", self.node);
        self.lock().insert(token.clone(), Arc::new(handle));
        Registered {
            sessions: self.clone(),
            token,
        }
    }

    /// The session a token names.
    ///
    /// # Errors
    /// `410 session_gone`, or `410 session_on_another_node` for a token this node
    /// process did not issue.
    fn get(&self, token: &str) -> Result<Arc<Handle>, ApiError> {
        if let Some(handle) = self.lock().get(token) {
            return Ok(handle.clone());
        }
        let ours = token
            .strip_prefix(SESSION_PREFIX)
            .is_some_and(|rest| rest.starts_with(&self.node));
        if !ours {
            tracing::info!(
                "long-poll request for a session this node did not open: \
                 is the load balancer routing each client to one node?"
            );
        }
        Err(ApiError::longpoll_session_gone(!ours))
    }
}

/// A session's place in [`Sessions`], given up when the session loop ends.
struct Registered {
    sessions: Arc<Sessions>,
    token: String,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.token);
    }
}

/// The session loop's side of a long-poll session.
pub(super) struct LongPollTransport {
    incoming: mpsc::Receiver<Incoming>,
    outgoing: mpsc::Sender<String>,
    _registered: Registered,
    _admission: Admission,
}

impl Transport for LongPollTransport {
    async fn recv(&mut self) -> Incoming {
        // The registry holds the sender for as long as the session is registered.
        match self.incoming.recv().await {
            Some(incoming) => incoming,
            None => Incoming::End(session::Exit::Gone),
        }
    }

    async fn send(&mut self, text: String) -> Result<(), Gone> {
        self.outgoing.send(text).await.map_err(|_| Gone)
    }

    async fn close(&mut self, code: u16, reason: &'static str) {
        // No frame to send: the session ends, and its next request is answered 410.
        tracing::debug!(code, reason, "long-poll session ends");
    }
}

/// What a long-poll request names: its session, or what opens one.
#[derive(Debug, Default, PartialEq)]
struct Params {
    session: Option<String>,
    auth_token: Option<String>,
    vsn: Option<String>,
}

impl Params {
    /// Reads the query and headers. The JS client sends its socket params (often the
    /// client token as `token`) on every request and appends the session token as
    /// another `token`, so the two are told apart by the session prefix.
    fn parse(query: Option<&str>, headers: &HeaderMap) -> Self {
        let mut params = Params::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match key.as_ref() {
                "token" if value.starts_with(SESSION_PREFIX) => {
                    params.session = Some(value.into_owned());
                }
                "token" if !value.is_empty() && params.auth_token.is_none() => {
                    params.auth_token = Some(value.into_owned());
                }
                "vsn" => params.vsn = Some(value.into_owned()),
                _ => {}
            }
        }
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        params.session = params.session.or_else(|| header(SESSION_HEADER));
        params.auth_token = params.auth_token.or_else(|| header(AUTH_HEADER));
        params
    }
}

/// A long-poll answer the client reads.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct PollBody {
    /// What the client does next: `410` with a `token` = session opened (poll with
    /// it), `200` = `messages` arrived, `204` = none arrived within the window; on a
    /// `POST`, `200` = accepted.
    status: u16,
    /// The session token, to send back as the `token` query parameter.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// Each a Phoenix message encoded as JSON text, in the order the server sent them.
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<String>>,
}

/// A failed long-poll request, as the client reads it.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct PollError {
    /// What the Phoenix client does: `403` stop (connect refused), `410` open a new
    /// session and rejoin, anything else retry with a new session.
    status: u16,
    error: ErrorObject,
}

fn answer(body: PollBody) -> Response {
    let mut response = axum::Json(body).into_response();
    no_store(&mut response);
    response
}

fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// An error as a long-poll answer: its HTTP status and error object, with the
/// Phoenix status that makes the client do the right thing.
fn failure(err: ApiError) -> Response {
    let status = match err.status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => 403,
        StatusCode::GONE => 410,
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => err.status.as_u16(),
        _ => 500,
    };
    let body = PollError {
        status,
        error: err.body().error,
    };
    let mut response = (err.status, axum::Json(body)).into_response();
    if let Some(secs) = err.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, secs.into());
    }
    no_store(&mut response);
    response
}

/// `GET /socket/longpoll`: without a session token, authenticates like the WebSocket
/// connect and opens a session (`status` 410 with its `token`); with one, waits up to
/// `CONVERGER_LONGPOLL_WINDOW_SECS` for the session's messages (docs/protocols.md#long-poll).
#[utoipa::path(get, path = "/socket/longpoll", tag = "realtime",
    params(
        ("token" = Option<String>, Query, description = "To open a session: the client token (or send it as `X-Phoenix-AuthToken`). To poll: also the session token (`lps_...`, or send it as `X-Phoenix-Longpoll-Token`)"),
        ("vsn" = Option<String>, Query, description = "`2.0.0` for array frames, `1.0.0` (the default) for object frames; read when the session opens"),
    ),
    responses(
        (status = 200, description = "`status` 410 with `token`: session opened. `status` 200 with `messages`, or 204 with none", body = PollBody),
        (status = 403, description = "Connect refused (`status` 403): `missing_token`, `unsupported_version`, `invalid_token`, `token_expired`, `tenant_inactive`, `channel_inactive`", body = PollError),
        (status = 410, description = "`session_gone` or `session_on_another_node` (`status` 410): open a new session and rejoin", body = PollError),
        (status = 429, description = "`too_many_connections` from this client address (`status` 500: retry)", body = PollError),
        (status = 503, description = "`too_many_connections` on this node (`status` 500: retry)", body = PollError),
        (status = 500, description = "`internal_error` (`status` 500)", body = PollError),
    ))]
async fn poll(
    State(state): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let params = Params::parse(query.as_deref(), &headers);
    let Some(token) = params.session.clone() else {
        return open(&state, &sessions, params, &extensions, &headers).await;
    };
    match sessions.get(&token) {
        Ok(handle) => handle.poll(&state, token).await,
        Err(gone) => failure(gone),
    }
}

/// Opens a session for an authenticated client and starts its loop.
async fn open(
    state: &AppState,
    sessions: &Arc<Sessions>,
    params: Params,
    extensions: &Extensions,
    headers: &HeaderMap,
) -> Response {
    let client_ip = client_ip(state, extensions, headers);
    let admission = match state.connections.admit_session(client_ip) {
        Ok(admission) => admission,
        Err(refused) => return failure(ApiError::too_many_connections(refused)),
    };
    let connect = Connect {
        transport: "longpoll",
        token: params.auth_token,
        vsn: params.vsn.as_deref(),
        client_ip,
    };
    let (auth, vsn) = match authenticate(state, connect).await {
        Ok(granted) => granted,
        Err(refusal) => return failure(refusal),
    };
    // A full batch fits, so a POST waits only while the session is busy.
    let (incoming_tx, incoming) = mpsc::channel(MAX_BATCH + 1);
    let (outgoing, outgoing_rx) = mpsc::channel(state.config.socket_outbound_queue.max(1));
    let registered = sessions.insert(Handle {
        vsn,
        incoming: incoming_tx,
        outgoing: tokio::sync::Mutex::new(outgoing_rx),
    });
    let token = registered.token.clone();
    let transport = LongPollTransport {
        incoming,
        outgoing,
        _registered: registered,
        _admission: admission,
    };
    let request_id =
        crate::telemetry::current_request_id().unwrap_or_else(crate::telemetry::new_request_id);
    let span = tracing::info_span!("socket", transport = "longpoll", conversation_id = %auth.conversation_id, request_id);
    let state = state.clone();
    state.tasks.clone().spawn(crate::telemetry::with_request_id(
        request_id,
        tracing::Instrument::instrument(session::run(transport, state, auth, vsn), span),
    ));
    answer(PollBody {
        status: 410,
        token: Some(token),
        messages: Some(Vec::new()),
    })
}

impl Handle {
    /// Waits up to the window for messages, then answers with all that are waiting.
    async fn poll(&self, state: &AppState, token: String) -> Response {
        let window = Duration::from_secs(state.config.longpoll_window_secs);
        let deadline = Instant::now() + window;
        // A poll keeps the session alive for as long as it may wait, and from its end.
        let _ = self.incoming.try_send(Incoming::Alive { busy: window });
        let none = |token| {
            answer(PollBody {
                status: 204,
                token: Some(token),
                messages: Some(Vec::new()),
            })
        };
        let mut outgoing = tokio::select! {
            guard = self.outgoing.lock() => guard,
            // Another poll of this session is waiting (clients poll one at a time).
            () = tokio::time::sleep_until(deadline) => return none(token),
        };
        let first = tokio::select! {
            first = outgoing.recv() => first,
            () = tokio::time::sleep_until(deadline) => None,
        };
        let Some(first) = first else {
            let _ = self.incoming.try_send(Incoming::Alive {
                busy: Duration::ZERO,
            });
            if outgoing.is_closed() && outgoing.is_empty() {
                return failure(ApiError::longpoll_session_gone(false));
            }
            return none(token);
        };
        let mut size = first.len();
        let mut messages = vec![first];
        while size < MAX_POLL_BYTES {
            let Ok(next) = outgoing.try_recv() else { break };
            size += next.len();
            messages.push(next);
        }
        drop(outgoing);
        let _ = self.incoming.try_send(Incoming::Alive {
            busy: Duration::ZERO,
        });
        answer(PollBody {
            status: 200,
            token: Some(token),
            messages: Some(messages),
        })
    }
}

/// `POST /socket/longpoll`: hands a batch of messages to the session, in order. The
/// batch is checked whole first: a line that is not a message refuses all of it.
/// Replies come with the next polls.
#[utoipa::path(post, path = "/socket/longpoll", tag = "realtime",
    params(
        ("token" = String, Query, description = "The session token (or send it as `X-Phoenix-Longpoll-Token`)"),
    ),
    request_body(content = String, content_type = "application/x-ndjson",
        description = "Up to 100 Phoenix messages, one JSON text per line; any other content type carries one message"),
    responses(
        (status = 200, description = "`status` 200: accepted", body = PollBody),
        (status = 400, description = "`invalid_frame`: a line is not a message of the session's `vsn` (binary messages are not supported)", body = PollError),
        (status = 410, description = "`session_gone` or `session_on_another_node` (`status` 410)", body = PollError),
        (status = 413, description = "`payload_too_large`: over `CONVERGER_MAX_BODY_BYTES`, a message over `CONVERGER_SOCKET_MAX_FRAME_BYTES`, or more than 100 messages", body = PollError),
        (status = 500, description = "`internal_error`", body = PollError),
    ))]
async fn send(
    State(state): State<AppState>,
    Extension(sessions): Extension<Arc<Sessions>>,
    request: Request,
) -> Response {
    let params = Params::parse(request.uri().query(), request.headers());
    let handle = match params.session.as_deref().map(|token| sessions.get(token)) {
        Some(Ok(handle)) => handle,
        Some(Err(gone)) => return failure(gone),
        None => return failure(ApiError::longpoll_session_gone(false)),
    };
    let ndjson = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    let body = match read_body(request, &state).await {
        Ok(body) => body,
        Err(e) => return failure(e),
    };
    let frames = match parse_batch(
        handle.vsn,
        &body,
        ndjson,
        state.config.socket_max_frame_bytes,
    ) {
        Ok(frames) => frames,
        Err(e) => return failure(e),
    };
    for frame in frames {
        if handle.incoming.send(Incoming::Frame(frame)).await.is_err() {
            return failure(ApiError::longpoll_session_gone(false));
        }
    }
    answer(PollBody {
        status: 200,
        token: None,
        messages: None,
    })
}

/// The messages of a `POST` body: one per non-empty line of an NDJSON body, else the
/// whole body.
///
/// # Errors
/// `413 payload_too_large` for more than [`MAX_BATCH`] messages or one over
/// `max_frame` bytes; `400 invalid_frame` naming the first line that is not a message
/// of `vsn` (base64 binary messages included: only text frames are spoken here).
fn parse_batch(
    vsn: Vsn,
    body: &[u8],
    ndjson: bool,
    max_frame: usize,
) -> Result<Vec<Frame>, ApiError> {
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::invalid_frame(1, "not UTF-8 text"))?;
    let lines: Vec<&str> = if ndjson {
        text.split('\n')
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        Some(text.trim())
            .into_iter()
            .filter(|l| !l.is_empty())
            .collect()
    };
    if lines.len() > MAX_BATCH {
        return Err(ApiError::payload_too_large(format!(
            "at most {MAX_BATCH} messages per request"
        )));
    }
    lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            if line.len() > max_frame {
                return Err(ApiError::payload_too_large(format!(
                    "message {} is larger than {max_frame} bytes",
                    i + 1
                )));
            }
            if !line.starts_with(['[', '{']) {
                return Err(ApiError::invalid_frame(
                    i + 1,
                    "binary messages are not supported",
                ));
            }
            Frame::parse(vsn, line).map_err(|e| ApiError::invalid_frame(i + 1, &e.to_string()))
        })
        .collect()
}

/// `GET` and `POST /socket/longpoll`, with this node's sessions and the API's CORS.
pub(super) fn router(config: &Config) -> OpenApiRouter<AppState> {
    let (schemas, paths, methods) = routes!(poll, send);
    // Set before the CORS layer, so that CORS answers preflight requests (OPTIONS).
    let methods = methods.fallback(crate::http::method_not_allowed);
    OpenApiRouter::new()
        .routes((schemas, paths, methods))
        .layer(Extension(Arc::new(Sessions::new())))
        .layer(crate::http::cors(config.cors_origins.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_and_client_tokens_are_told_apart() {
        let mut headers = HeaderMap::new();
        // What phoenix.js sends: socket params, vsn, then the session token.
        let p = Params::parse(Some("token=eyJ.client&vsn=2.0.0&token=lps_abc"), &headers);
        assert_eq!(
            p,
            Params {
                session: Some("lps_abc".into()),
                auth_token: Some("eyJ.client".into()),
                vsn: Some("2.0.0".into()),
            }
        );
        // Its first request, before it has a session: an empty trailing parameter.
        let p = Params::parse(Some("token=eyJ.client&vsn=2.0.0&"), &headers);
        assert_eq!(
            (p.session, p.auth_token.as_deref()),
            (None, Some("eyJ.client"))
        );
        headers.insert(AUTH_HEADER, "eyJ.header".parse().unwrap());
        headers.insert(SESSION_HEADER, "lps_def".parse().unwrap());
        let p = Params::parse(Some("vsn=2.0.0"), &headers);
        assert_eq!(p.session.as_deref(), Some("lps_def"));
        assert_eq!(p.auth_token.as_deref(), Some("eyJ.header"));
    }

    #[test]
    fn batches_are_checked_whole() {
        let ok = "[null,\"1\",\"phoenix\",\"heartbeat\",{}]";
        let body = format!("{ok}\n\n{ok}\r\n");
        assert_eq!(
            parse_batch(Vsn::V2, body.as_bytes(), true, 1024)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            parse_batch(Vsn::V2, ok.as_bytes(), false, 1024)
                .unwrap()
                .len(),
            1
        );
        assert!(parse_batch(Vsn::V2, b"", true, 1024).unwrap().is_empty());
        let err = |body: &str, ndjson, max| {
            parse_batch(Vsn::V2, body.as_bytes(), ndjson, max).unwrap_err()
        };
        let bad = err(&format!("{ok}\n[1,2]"), true, 1024);
        assert_eq!(
            (bad.code, bad.details.unwrap()["line"].clone()),
            ("invalid_frame", 2.into())
        );
        assert_eq!(err("AAEC", true, 1024).code, "invalid_frame");
        assert_eq!(
            err(&format!("{ok}\n{ok}"), false, 1024).code,
            "invalid_frame"
        );
        assert_eq!(err(ok, true, 10).code, "payload_too_large");
        let many = vec![ok; MAX_BATCH + 1].join("\n");
        assert_eq!(err(&many, true, 1024).code, "payload_too_large");
        // A V1 session reads object frames.
        let v1 = r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}"#;
        assert_eq!(
            parse_batch(Vsn::V1, v1.as_bytes(), true, 1024)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(err(v1, true, 1024).code, "invalid_frame");
    }

    #[test]
    fn tokens_name_their_node() {
        let sessions = Arc::new(Sessions::new());
        let (incoming, _rx) = mpsc::channel(1);
        let (_tx, outgoing) = mpsc::channel(1);
        let registered = sessions.insert(Handle {
            vsn: Vsn::V2,
            incoming,
            outgoing: tokio::sync::Mutex::new(outgoing),
        });
        let token = registered.token.clone();
        assert!(token.starts_with(SESSION_PREFIX));
        assert!(sessions.get(&token).is_ok());
        drop(registered);
        assert_eq!(sessions.get(&token).err().unwrap().code, "session_gone");
        let other = Sessions::new();
        assert_eq!(
            other.get(&token).err().unwrap().code,
            "session_on_another_node"
        );
        assert_eq!(
            other.get("lps_x").err().unwrap().code,
            "session_on_another_node"
        );
    }
}
