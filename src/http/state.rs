//! The one application state, built once by the composition root (`app.rs`) and
//! passed to every handler.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limits::RateLimits;
use super::listener::ConnectionLimits;
use crate::access::{self, SessionSigner};
use crate::adapters::Adapters;
use crate::auth::JwtKeys;
use crate::config::Config;
use crate::delivery::NodeIdentity;
use crate::egress::EgressPolicy;
use crate::ingest::{DeliveryWaker, Ingestor};
use crate::pubsub::PubSub;
use crate::store::Store;

/// Events a slow subscriber may fall behind before it lags and resynchronises from
/// the store. Each conversation with subscribers allocates this many slots (about 40
/// bytes each) up front, and in one-to-one chat that is one conversation per socket;
/// a stream task takes events off within microseconds, so a burst this long on one
/// conversation is rare, and costs one query when it happens.
const PUBSUB_CAPACITY: usize = 64;

/// Cheap handles to everything a request may need. Never global: two servers (or two
/// backends) can run in one process, as the tests do.
#[derive(Clone)]
pub struct AppState {
    /// Rate limiters of this node.
    pub limits: Arc<RateLimits>,
    /// Connection caps of this node, shared with its acceptor.
    pub connections: Arc<ConnectionLimits>,
    /// Signs and checks admin sessions; the admin allow-list and the trusted proxies
    /// are in `config`.
    pub admin: Arc<SessionSigner>,
    /// Wakes this node's delivery workers.
    pub waker: DeliveryWaker,
    /// This node in the node registry; its delivery leases carry its id.
    pub node: Arc<NodeIdentity>,
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
    /// The client address of a request, for rate limits: the TCP peer, or what a
    /// trusted proxy says. Clients whose forwarded address cannot be read share the
    /// proxy's address, so a junk `X-Forwarded-For` never escapes the limits.
    pub fn client_ip(&self, request_parts: &Parts) -> Option<IpAddr> {
        self.peer_and_client(&request_parts.extensions, &request_parts.headers)
            .map(|(_, client)| client)
    }

    /// The TCP peer of a request and its client address as [`AppState::client_ip`]
    /// reads it; `None` without connection info (a router served without it).
    pub fn peer_and_client(
        &self,
        extensions: &Extensions,
        headers: &HeaderMap,
    ) -> Option<(IpAddr, IpAddr)> {
        let peer = extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
        let client = access::client_ip(peer, headers, &self.config.trusted_proxies).unwrap_or(peer);
        Some((peer, client))
    }
}

impl AppState {
    /// The state of a node over an open store, with its signing keys derived from
    /// `secret`. On PostgreSQL this starts the PubSub's listener (stopped by
    /// `shutdown`) and notifier on the state's task tracker.
    pub fn new(
        config: Config,
        store: Store,
        secret: &[u8],
        draining: CancellationToken,
        shutdown: CancellationToken,
    ) -> Self {
        let admin = SessionSigner::new(
            config.admin_password.clone(),
            secret,
            config.public_url.starts_with("https://"),
        );
        let adapters = Adapters::with_egress(EgressPolicy::new(config.egress_allow.clone()));
        let tasks = TaskTracker::new();
        let pubsub = PubSub::for_store(&store, PUBSUB_CAPACITY, &shutdown, &tasks);
        let waker = DeliveryWaker::default();
        let ingest = Ingestor::new(
            store.clone(),
            adapters.clone(),
            pubsub.clone(),
            waker.clone(),
        );
        Self {
            limits: Arc::new(RateLimits::new(&config)),
            connections: Arc::new(ConnectionLimits::new(&config)),
            admin: Arc::new(admin),
            waker,
            node: Arc::new(NodeIdentity::new(config.delivery_enabled)),
            config: Arc::new(config),
            store,
            adapters,
            pubsub,
            ingest,
            jwt: JwtKeys::new(secret),
            draining,
            shutdown,
            tasks,
        }
    }
}
