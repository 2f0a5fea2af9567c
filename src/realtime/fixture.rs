//! Test fixture of the real-time unit tests: an application state over a fresh SQLite
//! file and the socket credentials of a new conversation. Compiled for tests only; it
//! sets up through the store and posts through `channel::push`, like a socket would.

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::SocketAuth;
use super::channel::{NEW_ACTIVITY, push};
use crate::config::Config;
use crate::delivery::DeliveryWaker;
use crate::domain::ChannelType;
use crate::http::state::AppState;
use crate::ingest::Ingestor;
use crate::pubsub::PubSub;
use crate::store::{NewChannel, NewConversation, Store, StoreOptions};

/// A state over a fresh SQLite file whose PubSub buffers `capacity` events, and a
/// socket's credentials for a new conversation.
pub(super) async fn fixture(capacity: usize) -> (AppState, SocketAuth, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(format!("sqlite://{}", dir.path().join("t.db").display()));
    let store = Store::connect(&config.database_url, &StoreOptions::default())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let mut state = AppState::new(
        config,
        store.clone(),
        b"realtime unit tests",
        CancellationToken::new(),
        CancellationToken::new(),
    );
    state.pubsub = PubSub::local(capacity);
    state.ingest = Ingestor::new(
        store.clone(),
        state.adapters.clone(),
        state.pubsub.clone(),
        DeliveryWaker::default(),
    );
    let tenant = store.insert_tenant("t", "hash", "prefix").await.unwrap();
    let channel = store
        .insert_channel(
            tenant.id,
            NewChannel {
                name: "web".into(),
                kind: ChannelType::Websocket,
                secret: crate::auth::generate_channel_secret(),
                config: json!({}),
            },
        )
        .await
        .unwrap();
    let conversation = store
        .insert_conversation(
            tenant.id,
            NewConversation {
                channel_id: channel.id,
                external_id: None,
                metadata: json!({}),
            },
        )
        .await
        .unwrap();
    let auth = SocketAuth {
        tenant_id: tenant.id,
        channel_id: channel.id,
        conversation_id: conversation.id,
        user_id: "u".into(),
    };
    (state, auth, dir)
}

/// Posts `n` messages on the conversation as the socket's client.
pub(super) async fn post(state: &AppState, auth: &SocketAuth, n: usize) {
    for i in 0..n {
        push(state, auth, NEW_ACTIVITY, json!({"text": format!("m{i}")}))
            .await
            .unwrap();
    }
}
