//! The one application state, built in `app.rs` and passed to every handler.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limits::RateLimits;
use crate::access::{self, SessionSigner};
use crate::adapters::Adapters;
use crate::auth::JwtKeys;
use crate::config::Config;
use crate::ingest::{DeliveryWaker, Ingestor};
use crate::pubsub::PubSub;
use crate::store::Store;

/// Cheap handles to everything a request may need. Never global: two servers (or two
/// backends) can run in one process, as the tests do.
#[derive(Clone)]
pub struct AppState {
    /// Rate limiters of this node.
    pub limits: Arc<RateLimits>,
    /// Signs and checks admin sessions; the admin allow-list and the trusted proxies
    /// are in `config`.
    pub admin: Arc<SessionSigner>,
    /// Wakes this node's delivery workers.
    pub waker: DeliveryWaker,
    pub config: Arc<Config>,
    pub store: Store,
    pub adapters: Adapters,
    pub pubsub: PubSub,
    pub ingest: Ingestor,
    pub jwt: JwtKeys,
    /// Cancelled at the shutdown signal: `/ready` answers 503 from then on, while the
    /// node goes on serving for `CONVERGER_SHUTDOWN_DELAY_SECS`.
    pub draining: CancellationToken,
    /// Cancelled when the node stops serving, after that delay: the listener closes,
    /// sockets are closed with 1012, workers claim nothing more, background loops end.
    pub shutdown: CancellationToken,
    /// Long-lived tasks outside the request cycle (WebSocket sessions), which must
    /// watch `shutdown` themselves; the node waits for them before it stops.
    pub tasks: TaskTracker,
}

impl AppState {
    /// The client address of a request: the TCP peer, or what a trusted proxy says.
    pub fn client_ip(&self, request_parts: &Parts) -> Option<IpAddr> {
        let peer = request_parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()?
            .0
            .ip();
        Some(access::client_ip(
            peer,
            &request_parts.headers,
            &self.config.trusted_proxies,
        ))
    }
}
