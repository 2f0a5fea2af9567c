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
