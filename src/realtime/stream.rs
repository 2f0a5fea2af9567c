//! The stream of one joined `conversation:<id>` topic: replays the store after the
//! client's watermark, then forwards live PubSub events, filling any gap (or a lagged
//! subscription, or one told to resynchronise) from the store, so that each activity
//! reaches the socket exactly once and in `seq` order (docs/design.md#real-time).
//!
//! A stream is spawned by the session after `channel::join` granted the topic and runs
//! until the session drops it. It only reads the store and writes encoded frames into
//! the session's bounded outbound queue: it never touches the socket, never writes to
//! the store, and never buffers without bound (a slow socket is asked to close).

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::SocketAuth;
use super::channel::{DELIVERY_STATUS, NEW_ACTIVITY, TYPING};
use super::frame::{Frame, PHX_ERROR, Payload, Ref, Vsn};
use crate::domain::Activity;
use crate::http::state::AppState;
use crate::pubsub::{Event, Subscription};

/// Activities read from the store per query while replaying or filling a gap.
const REPLAY_PAGE: i64 = 200;

/// Why a stream stopped on its own.
#[derive(Debug)]
pub(super) enum StreamEnd {
    /// The session is gone (its queue closed).
    SessionGone,
    /// The subscription lagged while the session's queue was full; the session must
    /// close the socket so the client resumes from its watermark.
    Overloaded,
    /// The store failed; `phx_error` was sent so the client rejoins.
    Failed,
}

/// One joined channel instance: replays, then streams live events, into the session's
/// bounded outbound queue.
pub(super) struct Stream {
    pub state: AppState,
    pub auth: SocketAuth,
    pub vsn: Vsn,
    pub topic: String,
    pub join_ref: Option<Ref>,
    pub subscription: Subscription,
    /// The `seq` of the last activity delivered (or known to the client).
    pub last: i64,
    /// Encoded frames for the socket, in order.
    pub out: mpsc::Sender<String>,
    /// Cancelled to ask the session to close with 1013.
    pub overloaded: CancellationToken,
}

impl Stream {
    /// Runs until the session drops it or something ends it.
    pub async fn run(mut self) -> StreamEnd {
        match self.serve().await {
            Ok(end) | Err(end) => end,
        }
    }

    async fn serve(&mut self) -> Result<StreamEnd, StreamEnd> {
        self.catch_up().await?;
        loop {
            match self.subscription.recv().await {
                Ok(event) => match &*event {
                    Event::Activity(activity) => {
                        if activity.seq > self.last + 1 {
                            // Missed or not yet seen: the store has everything committed.
                            self.catch_up().await?;
                        }
                        if activity.seq == self.last + 1 {
                            self.deliver(activity).await?;
                        }
                    }
                    Event::Typing { sender, .. } if *sender != self.auth.user_id => {
                        let frame = Frame::push(
                            self.join_ref.clone(),
                            &self.topic,
                            TYPING,
                            Payload::Json(json!({ "sender": sender })),
                        );
                        // Ephemeral: under pressure a typing signal is dropped, not queued.
                        if let Err(mpsc::error::TrySendError::Closed(_)) =
                            self.out.try_send(frame.encode(self.vsn))
                        {
                            return Err(StreamEnd::SessionGone);
                        }
                    }
                    Event::Typing { .. } => {}
                    Event::DeliveryStatus {
                        delivery_id,
                        activity_id,
                        channel_id,
                        status,
                        error,
                        ..
                    } => {
                        let mut payload = json!({
                            "delivery_id": delivery_id,
                            "activity_id": activity_id,
                            "channel_id": channel_id,
                            "status": status,
                        });
                        if let (Some(error), Value::Object(map)) = (error, &mut payload) {
                            map.insert("error".into(), json!(error));
                        }
                        let frame = Frame::push(
                            self.join_ref.clone(),
                            &self.topic,
                            DELIVERY_STATUS,
                            Payload::Json(payload),
                        );
                        self.out
                            .send(frame.encode(self.vsn))
                            .await
                            .map_err(|_| StreamEnd::SessionGone)?;
                    }
                    // Events may have been lost on the way from another node.
                    Event::Resync => self.catch_up().await?,
                },
                Err(RecvError::Lagged(skipped)) => {
                    crate::metrics::record_pubsub_lagged();
                    if self.out.capacity() == 0 {
                        tracing::info!(topic = %self.topic, skipped, "socket too slow for its conversation");
                        self.overloaded.cancel();
                        return Ok(StreamEnd::Overloaded);
                    }
                    self.catch_up().await?;
                }
                // Every sender is gone: only when the node's PubSub is dropped.
                Err(RecvError::Closed) => return Ok(StreamEnd::SessionGone),
            }
        }
    }

    /// Delivers every stored activity after `last`, page by page, in `seq` order.
    async fn catch_up(&mut self) -> Result<(), StreamEnd> {
        loop {
            let page = match self
                .state
                .store
                .list_activities(
                    self.auth.tenant_id,
                    self.auth.conversation_id,
                    self.last,
                    REPLAY_PAGE,
                )
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(topic = %self.topic, error = %e, "cannot replay activities");
                    let frame = Frame::push(
                        self.join_ref.clone(),
                        &self.topic,
                        PHX_ERROR,
                        Payload::Json(json!({ "reason": "internal_error" })),
                    );
                    let _ = self.out.send(frame.encode(self.vsn)).await;
                    return Err(StreamEnd::Failed);
                }
            };
            let full = page.len() as i64 >= REPLAY_PAGE;
            for activity in &page {
                if activity.seq > self.last {
                    self.deliver(activity).await?;
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn deliver(&mut self, activity: &Activity) -> Result<(), StreamEnd> {
        let payload = Payload::serialize(activity);
        let frame = Frame::push(self.join_ref.clone(), &self.topic, NEW_ACTIVITY, payload);
        self.out
            .send(frame.encode(self.vsn))
            .await
            .map_err(|_| StreamEnd::SessionGone)?;
        self.last = activity.seq;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::DeliveryWaker;
    use crate::ingest::Ingestor;
    use crate::pubsub::PubSub;
    use crate::realtime::channel::{Joined, join};
    use crate::realtime::fixture::{fixture, post};

    fn stream(
        state: &AppState,
        auth: &SocketAuth,
        joined: Joined,
        out: mpsc::Sender<String>,
    ) -> (Stream, CancellationToken) {
        let overloaded = CancellationToken::new();
        let stream = Stream {
            state: state.clone(),
            auth: auth.clone(),
            vsn: Vsn::V2,
            topic: "conversation:x".into(),
            join_ref: Some(Ref::from("1")),
            subscription: joined.subscription,
            last: joined.after,
            out,
            overloaded: overloaded.clone(),
        };
        (stream, overloaded)
    }

    fn seq_of(frame: &str) -> i64 {
        let v: Value = serde_json::from_str(frame).unwrap();
        v[4]["seq"].as_i64().unwrap()
    }

    #[tokio::test]
    async fn lagging_subscription_is_filled_from_the_store() {
        let (state, auth, _dir) = fixture(2).await;
        post(&state, &auth, 3).await;
        let joined = join(
            &state,
            &auth,
            Some(auth.conversation_id),
            &json!({"last_seq": 1}),
        )
        .await
        .unwrap();
        assert_eq!((joined.watermark, joined.after), (3, 1));
        // Ten events into a buffer of two, before the stream reads any.
        post(&state, &auth, 10).await;
        let (tx, mut rx) = mpsc::channel(64);
        let (stream, overloaded) = stream(&state, &auth, joined, tx);
        let task = tokio::spawn(stream.run());
        let mut seen = Vec::new();
        while seen.len() < 12 {
            seen.push(seq_of(&rx.recv().await.unwrap()));
        }
        assert_eq!(seen, (2..=13).collect::<Vec<_>>());
        post(&state, &auth, 1).await;
        assert_eq!(seq_of(&rx.recv().await.unwrap()), 14);
        assert!(!overloaded.is_cancelled());
        task.abort();
    }

    #[tokio::test]
    async fn resync_fills_what_never_reached_the_subscription() {
        let (mut state, auth, _dir) = fixture(8).await;
        let joined = join(&state, &auth, Some(auth.conversation_id), &json!({}))
            .await
            .unwrap();
        let (tx, mut rx) = mpsc::channel(64);
        let (stream, _) = stream(&state, &auth, joined, tx);
        let task = tokio::spawn(stream.run());
        // Activities published where this subscription cannot see them, as when a
        // notification from another node is lost.
        let subscribed = state.pubsub.clone();
        state.ingest = Ingestor::new(
            state.store.clone(),
            state.adapters.clone(),
            PubSub::local(8),
            DeliveryWaker::default(),
        );
        post(&state, &auth, 3).await;
        subscribed.publish(auth.conversation_id, Event::Resync);
        let mut seen = Vec::new();
        while seen.len() < 3 {
            seen.push(seq_of(&rx.recv().await.unwrap()));
        }
        assert_eq!(seen, [1, 2, 3]);
        // A resync with nothing new delivers nothing twice.
        subscribed.publish(auth.conversation_id, Event::Resync);
        state.ingest = Ingestor::new(
            state.store.clone(),
            state.adapters.clone(),
            subscribed,
            DeliveryWaker::default(),
        );
        post(&state, &auth, 1).await;
        assert_eq!(seq_of(&rx.recv().await.unwrap()), 4);
        task.abort();
    }

    #[tokio::test]
    async fn lagging_with_a_full_queue_asks_the_session_to_close() {
        let (state, auth, _dir) = fixture(2).await;
        let mut joined = join(&state, &auth, Some(auth.conversation_id), &json!({}))
            .await
            .unwrap();
        post(&state, &auth, 5).await;
        // The client already has these (say, from REST): nothing to catch up on, so the
        // stream reaches the lagged subscription with a full queue.
        joined.after = 5;
        let (tx, _rx) = mpsc::channel(1);
        tx.send("queued".into()).await.unwrap();
        let (stream, overloaded) = stream(&state, &auth, joined, tx);
        assert!(matches!(stream.run().await, StreamEnd::Overloaded));
        assert!(overloaded.is_cancelled());
    }
}
