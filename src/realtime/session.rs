//! The per-connection loop: one task per WebSocket or long-poll session, `select!` over
//! client frames, the outbound queue fed by joined channels, the idle timer and
//! shutdown.
//!
//! It owns the set of joined topics and applies the protocol's bookkeeping (replies,
//! refs, `phx_close`, limits), the same for every [`Transport`]: a transport only moves
//! frames (`websocket`, `longpoll`). What a join or a push means is decided in
//! `channel`, a joined topic's events come from its `stream`; the wire format is
//! `frame`'s. Nothing here touches the store directly.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::SocketAuth;
use super::channel;
use super::frame::{Frame, Ref, Vsn};
use super::stream::{Stream, StreamEnd};
use crate::http::state::AppState;

/// Close codes (RFC 6455 §7.4 and the IANA registry). None is 1000, which the JS client
/// takes as "stay disconnected". A long-poll session has no close frame: it ends, and
/// its next request is answered `410`, which the client treats alike.
pub(super) mod close_code {
    /// Idle: no frame within the timeout.
    pub const GOING_AWAY: u16 = 1001;
    /// A binary frame: only JSON text frames are spoken here.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame that is not a Phoenix message.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame over `socket_max_frame_bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The node is shutting down: reconnect, probably to another node.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The socket fell behind its conversations with a full outbound queue, or its
    /// client stopped reading: reconnect and rejoin with the last activity seen,
    /// which replays what was missed.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Topic of heartbeats.
const PHOENIX: &str = "phoenix";
/// How long the closing frame may take to go out; a client that does not read gets
/// its connection dropped without one.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// A token bucket: `rate` messages per second with bursts of `rate`.
#[derive(Debug)]
struct RateLimiter {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl RateLimiter {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: rate,
            refilled: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    fn try_acquire(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A joined channel instance.
struct JoinedTopic {
    join_ref: Option<Ref>,
    stream: AbortHandle,
    _open: crate::metrics::Open,
}

/// Why the loop ended, and how to close the connection.
#[derive(Debug)]
pub(super) enum Exit {
    /// The client closed or the connection dropped: nothing to send.
    Gone,
    Close(u16, &'static str),
}

/// What a transport received from its client.
pub(super) enum Incoming {
    /// A text frame, parsed by the session.
    Text(Utf8Bytes),
    /// A frame the transport parsed already (a long-poll batch is checked whole before
    /// any of it is served).
    Frame(Frame),
    /// The client is there without sending a frame (a ping, a long poll), and may stay
    /// silent for `busy` before the idle timeout starts counting again.
    Alive { busy: Duration },
    /// The client is gone, or broke the transport's rules.
    End(Exit),
}

/// How frames reach and leave one client: a WebSocket, or a long-poll session's
/// buffers. The session speaks the protocol; a transport only moves its frames.
pub(super) trait Transport: Send {
    /// The next thing from the client. Cancel-safe: it is one branch of a `select!`.
    fn recv(&mut self) -> impl Future<Output = Incoming> + Send;
    /// Sends one encoded frame, waiting while the client does not take it.
    ///
    /// # Errors
    /// The client is gone.
    fn send(&mut self, text: String) -> impl Future<Output = Result<(), Gone>> + Send;
    /// Ends the connection with a close code and reason.
    fn close(&mut self, code: u16, reason: &'static str) -> impl Future<Output = ()> + Send;
}

/// The client of a transport is gone.
#[derive(Debug)]
pub(super) struct Gone;

struct Session<T> {
    state: AppState,
    auth: SocketAuth,
    vsn: Vsn,
    transport: T,
    joined: HashMap<String, JoinedTopic>,
    streams: JoinSet<(String, Option<Ref>, StreamEnd)>,
    out_tx: mpsc::Sender<String>,
    out_rx: mpsc::Receiver<String>,
    overloaded: CancellationToken,
    limiter: RateLimiter,
    /// Longest wait for one frame to go out (`CONVERGER_SOCKET_SEND_TIMEOUT_SECS`).
    send_timeout: Duration,
    _open: crate::metrics::Open,
}

/// Serves one connection until the client leaves, it idles out, it falls behind, or
/// the node shuts down.
pub(super) async fn run<T: Transport>(transport: T, state: AppState, auth: SocketAuth, vsn: Vsn) {
    let (out_tx, out_rx) = mpsc::channel(state.config.socket_outbound_queue.max(1));
    let limiter = RateLimiter::new(state.config.socket_push_rate);
    let send_timeout = Duration::from_secs(state.config.socket_send_timeout_secs);
    let mut session = Session {
        state,
        auth,
        vsn,
        transport,
        joined: HashMap::new(),
        streams: JoinSet::new(),
        out_tx,
        out_rx,
        overloaded: CancellationToken::new(),
        limiter,
        send_timeout,
        _open: crate::metrics::Open::connection(),
    };
    let exit = session.serve().await;
    session.streams.abort_all();
    if let Exit::Close(code, reason) = exit {
        tracing::debug!(code, reason, "closing socket");
        let close = session.transport.close(code, reason);
        let _ = tokio::time::timeout(CLOSE_SEND_TIMEOUT, close).await;
    }
}

impl<T: Transport> Session<T> {
    async fn serve(&mut self) -> Exit {
        let idle = Duration::from_secs(self.state.config.socket_idle_timeout_secs);
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer);
        let shutdown = self.state.shutdown.clone();
        let overloaded = self.overloaded.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Exit::Close(close_code::SERVICE_RESTART, "server restart"),
                _ = overloaded.cancelled() => return Exit::Close(close_code::TRY_AGAIN_LATER, "try again later"),
                _ = &mut idle_timer => return Exit::Close(close_code::GOING_AWAY, "idle timeout"),
                incoming = self.transport.recv() => {
                    let busy = match &incoming {
                        Incoming::Alive { busy } => *busy,
                        _ => Duration::ZERO,
                    };
                    idle_timer.as_mut().reset(Instant::now() + busy + idle);
                    let frame = match incoming {
                        Incoming::Text(text) => parse(self.vsn, text.as_str()),
                        Incoming::Frame(frame) => Ok(frame),
                        Incoming::Alive { .. } => continue,
                        Incoming::End(exit) => return exit,
                    };
                    // One call site for both kinds of frame: its future is part of every
                    // idle session's.
                    let outcome = match frame {
                        Ok(frame) => self.on_frame(frame).await,
                        Err(exit) => Err(exit),
                    };
                    if let Err(exit) = outcome {
                        return exit;
                    }
                }
                Some(text) = self.out_rx.recv() => {
                    if let Err(exit) = self.write(text).await {
                        return exit;
                    }
                }
                Some(ended) = self.streams.join_next(), if !self.streams.is_empty() => {
                    // Aborted streams were already forgotten; one that ended on its own
                    // is no longer joined.
                    if let Ok((topic, join_ref, end)) = ended {
                        tracing::debug!(%topic, ?end, "channel stream ended");
                        if self.joined.get(&topic).is_some_and(|j| j.join_ref == join_ref) {
                            self.joined.remove(&topic);
                        }
                    }
                }
            }
        }
    }

    async fn send(&mut self, frame: Frame) -> Result<(), Exit> {
        self.write(frame.encode(self.vsn)).await
    }

    /// Writes one message, waiting at most `send_timeout` for a client that does not
    /// read, and not at all once the node shuts down: a stalled client must not park
    /// the session away from its shutdown, overload and idle branches.
    async fn write(&mut self, text: String) -> Result<(), Exit> {
        let shutdown = self.state.shutdown.clone();
        tokio::select! {
            sent = tokio::time::timeout(self.send_timeout, self.transport.send(text)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(Gone)) => Err(Exit::Gone),
                Err(_) => {
                    tracing::debug!(timeout_secs = self.send_timeout.as_secs(), "client stopped reading");
                    Err(Exit::Close(close_code::TRY_AGAIN_LATER, "client not reading"))
                }
            },
            () = shutdown.cancelled() => Err(Exit::Close(close_code::SERVICE_RESTART, "server restart")),
        }
    }

    async fn reply(
        &mut self,
        join_ref: Option<Ref>,
        frame: &Frame,
        result: Result<Value, Value>,
    ) -> Result<(), Exit> {
        let (status, response) = match result {
            Ok(response) => ("ok", response),
            Err(response) => ("error", response),
        };
        let reply = Frame::reply(
            join_ref,
            frame.msg_ref.clone(),
            &frame.topic,
            status,
            response,
        );
        self.send(reply).await
    }

    async fn unmatched(&mut self, frame: &Frame) -> Result<(), Exit> {
        self.reply(None, frame, Err(json!({ "reason": "unmatched topic" })))
            .await
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), Exit> {
        if frame.topic == PHOENIX {
            return if frame.event == "heartbeat" {
                self.reply(None, &frame, Ok(json!({}))).await
            } else {
                self.unmatched(&frame).await
            };
        }
        if !self.limiter.try_acquire() {
            return self
                .reply(
                    frame.join_ref.clone(),
                    &frame,
                    Err(json!({ "reason": "rate_limited" })),
                )
                .await;
        }
        // Boxed: these wait on the store, and their futures would otherwise be part of
        // every idle socket's session, several KiB each, for the life of the socket.
        match frame.event.as_str() {
            "phx_join" => Box::pin(self.on_join(frame)).await,
            "phx_leave" => Box::pin(self.on_leave(frame)).await,
            _ => Box::pin(self.on_push(frame)).await,
        }
    }

    /// Forgets a joined topic and stops its stream.
    fn forget(&mut self, topic: &str) -> Option<JoinedTopic> {
        let joined = self.joined.remove(topic)?;
        joined.stream.abort();
        Some(joined)
    }

    async fn on_join(&mut self, frame: Frame) -> Result<(), Exit> {
        let Some(conversation) = channel::conversation_topic(&frame.topic) else {
            return self.unmatched(&frame).await;
        };
        // The JS client uses the join's own ref as join_ref; V1 clients may send none.
        let join_ref = frame.join_ref.clone().or_else(|| frame.msg_ref.clone());
        if let Some(old) = self.forget(&frame.topic) {
            self.send(Frame::close(old.join_ref, &frame.topic)).await?;
        }
        if self.joined.len() >= self.state.config.socket_max_channels {
            return self
                .reply(
                    join_ref,
                    &frame,
                    Err(json!({ "reason": "too many channels joined" })),
                )
                .await;
        }
        let params = frame.payload.to_value();
        let joined = match channel::join(&self.state, &self.auth, conversation, &params).await {
            Ok(joined) => joined,
            Err(refusal) => return self.reply(join_ref, &frame, Err(refusal.0)).await,
        };
        // Counted from before the reply, so whoever got the reply sees the topic counted.
        let open = crate::metrics::Open::topic();
        // The reply goes out before the stream starts, so replayed activities follow it.
        self.reply(
            join_ref.clone(),
            &frame,
            Ok(json!({ "last_seq": joined.watermark })),
        )
        .await?;
        let stream = Stream {
            state: self.state.clone(),
            auth: self.auth.clone(),
            vsn: self.vsn,
            topic: frame.topic.clone(),
            join_ref: join_ref.clone(),
            subscription: joined.subscription,
            last: joined.after,
            out: self.out_tx.clone(),
            overloaded: self.overloaded.clone(),
        };
        let (topic, stream_ref) = (frame.topic.clone(), join_ref.clone());
        let handle = self
            .streams
            .spawn(async move { (topic, stream_ref, stream.run().await) });
        self.joined.insert(
            frame.topic,
            JoinedTopic {
                join_ref,
                stream: handle,
                _open: open,
            },
        );
        Ok(())
    }

    async fn on_leave(&mut self, frame: Frame) -> Result<(), Exit> {
        let Some(current) = self.joined.get(&frame.topic) else {
            return self
                .reply(frame.join_ref.clone(), &frame, Ok(json!({})))
                .await;
        };
        if frame.join_ref.is_some() && frame.join_ref != current.join_ref {
            return Ok(());
        }
        let join_ref = current.join_ref.clone();
        self.forget(&frame.topic);
        self.reply(join_ref.clone(), &frame, Ok(json!({}))).await?;
        self.send(Frame::close(join_ref, &frame.topic)).await
    }

    async fn on_push(&mut self, frame: Frame) -> Result<(), Exit> {
        let Some(current) = self.joined.get(&frame.topic) else {
            return self.unmatched(&frame).await;
        };
        if frame.join_ref.is_some() && frame.join_ref != current.join_ref {
            // A message of an earlier instance of this channel: dropped, as Phoenix does.
            return Ok(());
        }
        let join_ref = current.join_ref.clone();
        let result = channel::push(
            &self.state,
            &self.auth,
            &frame.event,
            frame.payload.to_value(),
        )
        .await
        .map_err(|refusal| refusal.0);
        self.reply(join_ref, &frame, result).await
    }
}

/// A client's text frame; one that is not a Phoenix message closes the connection.
fn parse(vsn: Vsn, text: &str) -> Result<Frame, Exit> {
    Frame::parse(vsn, text).map_err(|e| {
        tracing::debug!(error = %e, "malformed frame");
        Exit::Close(close_code::INVALID_PAYLOAD, "malformed frame")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_allows_bursts_then_refills() {
        let mut limiter = RateLimiter::new(5);
        for _ in 0..5 {
            assert!(limiter.try_acquire());
        }
        assert!(!limiter.try_acquire());
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..5 {
            assert!(limiter.try_acquire());
        }
        assert!(!limiter.try_acquire());
    }
}

/// Every idle socket holds its session's future (and each joined topic its stream's)
/// for as long as it is open, so their sizes are a memory budget. Work that waits on
/// the store is boxed and only allocated while it runs.
#[cfg(test)]
mod footprint {
    fn future_size<F, A, B, C, D, R>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D) -> R,
    {
        std::mem::size_of::<R>()
    }

    fn stream_future_size<F, A, R>(_: F) -> usize
    where
        F: FnOnce(A) -> R,
    {
        std::mem::size_of::<R>()
    }

    #[test]
    fn idle_sessions_and_streams_stay_small() {
        let session = future_size(super::run::<super::super::websocket::WebSocketTransport>);
        assert!(
            session <= 4096,
            "a socket's session future takes {session} bytes"
        );
        let session = future_size(super::run::<super::super::longpoll::LongPollTransport>);
        assert!(
            session <= 4096,
            "a long-poll session future takes {session} bytes"
        );
        let stream = stream_future_size(super::super::stream::Stream::run);
        assert!(stream <= 2048, "a stream's future takes {stream} bytes");
    }
}
