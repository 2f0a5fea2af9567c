//! The one application state, built in `app.rs` and passed to every handler.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::adapters::Adapters;
use crate::auth::JwtKeys;
use crate::config::Config;
use crate::ingest::Ingestor;
use crate::pubsub::PubSub;
use crate::store::Store;

/// Cheap handles to everything a request may need. Never global: two servers (or two
/// backends) can run in one process, as the tests do.
#[derive(Clone)]
pub struct AppState {
    /// Rate limiters of this node.
    pub limits: Arc<super::limits::RateLimits>,
    /// The admin panel's access rules.
    pub admin: Arc<crate::admin::AdminAccess>,
    /// Wakes this node's delivery workers.
    pub waker: crate::delivery::DeliveryWaker,
    pub config: Arc<Config>,
    pub store: Store,
    pub adapters: Adapters,
    pub pubsub: PubSub,
    pub ingest: Ingestor,
    pub jwt: JwtKeys,
    /// Cancelled when the node starts shutting down.
    pub shutdown: CancellationToken,
    /// Long-lived tasks outside the request cycle (WebSocket sessions), which must
    /// watch `shutdown` themselves; the node waits for them before it stops.
    pub tasks: TaskTracker,
}
