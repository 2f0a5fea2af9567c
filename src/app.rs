//! Composition root: builds the store, PubSub, ingest and state once, serves HTTP or
//! HTTPS, and drains on shutdown.
//!
//! # Shutdown
//!
//! The token given to [`run`] starts it (SIGTERM or Ctrl-C in `main`). In order:
//!
//! 1. Draining: `/ready` answers 503 `shutting_down`, everything else is served as
//!    before, for `CONVERGER_SHUTDOWN_DELAY_SECS`, so load balancers route elsewhere.
//! 2. Stopping: the listener closes (new connections are refused), sockets are closed
//!    with 1012 (reconnect, probably to another node), workers claim nothing more.
//!    In-flight requests and delivery attempts get `CONVERGER_SHUTDOWN_TIMEOUT_SECS`.
//! 3. At that deadline whatever is left is abandoned: connections are dropped, and
//!    delivery attempts still waiting on a receiver give their leases back without
//!    counting as attempts, so another node delivers them at once.
//! 4. The store is closed and `run` returns `Ok`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use base64::Engine;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use utoipa_axum::router::OpenApiRouter;

use crate::config::Config;
use crate::delivery::{DeliveryEngine, DeliverySettings, OpsSenderSettings};
use crate::egress::EgressClient;
use crate::http::listener::{ConnectionLimits, LimitAcceptor};
use crate::http::{self, state::AppState};
use crate::secrets::{Keyring, SecretKey};
use crate::store::{Reseal, Sealer, Store, StoreOptions};

/// How often each node looks for operational events to send.
const OPS_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How often the pruner runs when a retention is configured.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
/// After the shutdown deadline: how long abandoned attempts get to give their leases
/// back (one short write each) before the node stops regardless.
const RELEASE_GRACE: Duration = Duration::from_secs(5);

/// Installs aws-lc-rs as the process's rustls crypto provider. sqlx compiles ring into
/// rustls besides aws-lc-rs, and rustls config builders that are not given a provider
/// panic when two are compiled in and none is installed. Idempotent: a provider that is
/// already installed (by an earlier call, or by a program embedding this crate) stays.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The TLS configuration of `CONVERGER_TLS_CERT` and `CONVERGER_TLS_KEY`, if set.
///
/// # Errors
/// A file cannot be read, holds no usable certificate or key, or the two do not match.
pub async fn load_tls(config: &Config) -> anyhow::Result<Option<RustlsConfig>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    install_crypto_provider();
    let tls = RustlsConfig::from_pem_file(cert, key)
        .await
        .with_context(|| {
            format!(
                "cannot use the TLS certificate {} with the key {}",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Some(tls))
}

/// Connects to the database named by the config, applies pending migrations, and
/// encrypts channel credentials still stored in plaintext (checking on the way that
/// every stored one opens with the configured keys).
///
/// # Errors
/// The database cannot be reached or migrated, the encryption key cannot be read or
/// created, or a stored credential does not open with the configured keys.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let options = StoreOptions {
        max_connections: config.database_max_connections,
        ..StoreOptions::default()
    };
    let store = Store::connect(&config.database_url, &options)
        .await
        .with_context(|| {
            format!(
                "cannot open the database {}",
                crate::store::redact_url(&config.database_url)
            )
        })?;
    store.migrate().await.context("cannot apply migrations")?;
    let adapters = crate::adapters::Adapters::new();
    let sealer = Sealer::new(secret_keys(config)?, move |kind, config| {
        adapters.credentials(kind, config)
    });
    let store = store.with_sealer(sealer);
    let sealed = store
        .seal_channels(Reseal::Plaintext)
        .await
        .context("cannot read the stored channel secrets")?;
    if sealed > 0 {
        tracing::info!(
            channels = sealed,
            "encrypted channel secrets stored in plaintext"
        );
    }
    Ok(store)
}

/// The keys encrypting channel credentials: configured, or (SQLite only) generated
/// once and kept next to the database file. A generated key that is kept there
/// still opens what it encrypted after `CONVERGER_SECRET_KEY` is set.
fn secret_keys(config: &Config) -> anyhow::Result<Keyring> {
    let parse = |key: &str| {
        SecretKey::from_base64(key).map_err(|e| anyhow::anyhow!("CONVERGER_SECRET_KEY {e}"))
    };
    let mut previous = config
        .previous_secret_keys()
        .map(parse)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let path = config.sqlite_secret_key_path();
    let current = match (&config.secret_key, &path) {
        (Some(key), _) => {
            if let Some(path) = &path
                && let Some(kept) = read_key_file(path)?
            {
                previous.push(parse(&kept).with_context(|| format!("in {}", path.display()))?);
            }
            Some(parse(key)?)
        }
        (None, Some(path)) => {
            let kept = kept_key(path, "an encryption key for channel secrets", || {
                SecretKey::generate().to_base64()
            })?;
            Some(parse(&kept).with_context(|| format!("in {}", path.display()))?)
        }
        (None, None) => {
            if crate::store::Backend::from_url(&config.database_url)
                == Some(crate::store::Backend::Postgres)
            {
                tracing::warn!(
                    "no CONVERGER_SECRET_KEY: channel secrets and credentials are stored \
                     unencrypted; set it in production"
                );
            }
            None
        }
    };
    Ok(Keyring::new(current, previous))
}

/// The JWT key: configured, or (SQLite only) generated once and kept next to the
/// database file so tokens survive restarts.
fn jwt_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = &config.jwt_secret {
        return Ok(secret.as_bytes().to_vec());
    }
    let random = || {
        let bytes: [u8; 48] = rand::random();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let Some(path) = config.sqlite_jwt_secret_path() else {
        tracing::warn!("no CONVERGER_JWT_SECRET: using a random key; tokens end with this process");
        return Ok(random().into_bytes());
    };
    Ok(kept_key(&path, "a JWT secret", random)?.into_bytes())
}

/// The key kept in the file at `path`, if there is one and it is not blank.
fn read_key_file(path: &std::path::Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(key) if !key.trim().is_empty() => Ok(Some(key.trim().to_owned())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The key kept at `path` for an SQLite installation: read, or made by `generate` and
/// written there, readable by the owner only. A file created meanwhile by another
/// process wins, so every process of the installation uses the same key.
fn kept_key(
    path: &std::path::Path,
    what: &str,
    generate: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    if let Some(key) = read_key_file(path)? {
        return Ok(key);
    }
    let key = generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return read_key_file(path)?
                .with_context(|| format!("{} exists but holds no key", path.display()));
        }
        Err(e) => return Err(e).with_context(|| format!("cannot write {}", path.display())),
    };
    std::io::Write::write_all(&mut file, key.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated {what} for this SQLite installation");
    Ok(key)
}

/// Builds the application state over an open store. On PostgreSQL this starts the
/// PubSub's listener (stopped by `shutdown`) and notifier on the state's task tracker.
/// `draining` and `shutdown` are the first two steps of the node's shutdown (see the
/// module docs).
///
/// # Errors
/// The JWT secret cannot be read or created.
pub fn build_state(
    config: Config,
    store: Store,
    draining: CancellationToken,
    shutdown: CancellationToken,
) -> anyhow::Result<AppState> {
    let secret = jwt_secret(&config)?;
    Ok(AppState::new(config, store, &secret, draining, shutdown))
}

/// Runs a node on an already-bound listener, over TLS when the config names a
/// certificate, until `shutdown` is cancelled; then shuts down in the steps of the
/// module docs and closes the database.
///
/// # Errors
/// Invalid config, an unusable certificate, an unreachable database, or a failing
/// listener.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Err(problems) = config.validate() {
        anyhow::bail!("invalid configuration:\n  {}", problems.join("\n  "));
    }
    let store = open_store(&config).await?;
    run_with_store(config, store, listener, shutdown).await
}

/// [`run`] over a store already opened with [`open_store`] from a validated `config`
/// (the `serve` command opens it first, to say which database it serves).
///
/// # Errors
/// An unusable certificate or a failing listener.
pub async fn run_with_store(
    config: Config,
    store: Store,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    install_crypto_provider();
    let tls = match load_tls(&config).await {
        Ok(tls) => tls,
        Err(e) => {
            store.close().await;
            return Err(e);
        }
    };
    // The later steps of shutdown. Cancelled also when this future is dropped before
    // reaching them, so that no task outlives an aborted `run`.
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    let _stop_on_exit = (stop.clone().drop_guard(), abort.clone().drop_guard());
    let state = build_state(config, store.clone(), shutdown.clone(), stop.clone())?;
    let tasks = state.tasks.clone();
    if state.config.delivery_enabled {
        let engine = DeliveryEngine::new(
            state.node.clone(),
            store.clone(),
            state.adapters.clone(),
            state.ingest.clone(),
            state.waker.clone(),
            DeliverySettings::from_config(&state.config),
            &tasks,
        );
        tasks.spawn(engine.run(stop.clone(), abort.clone(), tasks.clone()));
        let http = EgressClient::new(state.adapters.egress().clone())
            .map_err(|e| anyhow::anyhow!("the TLS backend of the ops event client failed: {e}"))?;
        tasks.spawn(crate::delivery::run_ops_sender(
            store.clone(),
            http,
            OpsSenderSettings {
                poll_interval: OPS_POLL_INTERVAL,
                backoff_scale: state.config.delivery_backoff_scale,
            },
            stop.clone(),
        ));
    }
    // Outside the tracker: the node keeps beating while the tasks drain, so that its
    // leases stay its own until it has given them back, and leaves the registry last.
    let beat_stop = CancellationToken::new();
    let _beat_stop_on_exit = beat_stop.clone().drop_guard();
    let heartbeat = tokio::spawn(crate::delivery::run_heartbeat(
        store.clone(),
        state.node.clone(),
        Duration::from_secs(state.config.node_heartbeat_secs),
        state.waker.clone(),
        beat_stop.clone(),
    ));
    let limits = state.limits.clone();
    every(
        &tasks,
        &stop,
        crate::http::limits::RETAIN_INTERVAL,
        move || {
            limits.retain_recent();
        },
    );
    crate::metrics::install();
    every(
        &tasks,
        &stop,
        crate::metrics::UPKEEP_INTERVAL,
        crate::metrics::upkeep,
    );
    if let Some(days) = state.config.prune_after_days {
        tasks.spawn(crate::delivery::run_pruner(
            store.clone(),
            Duration::from_secs(days * 86_400),
            PRUNE_INTERVAL,
            stop.clone(),
        ));
    }
    if let Some(idle) = state.config.conversation_idle_close() {
        tasks.spawn(crate::operations::conversations::run_idle_closer(
            state.ingest.clone(),
            idle,
            Duration::from_secs(state.config.conversation_idle_check_secs),
            stop.clone(),
        ));
    }
    if state.config.force_https && !state.config.public_url.starts_with("https://") {
        tracing::warn!(
            "CONVERGER_FORCE_HTTPS without an https CONVERGER_PUBLIC_URL: plain-HTTP requests \
             are redirected to the host they name"
        );
    }
    let delay = Duration::from_secs(state.config.shutdown_delay_secs);
    let timeout = Duration::from_secs(state.config.shutdown_timeout_secs);
    let header_timeout = Duration::from_secs(state.config.header_read_timeout_secs);
    let connections = state.connections.clone();
    tracing::info!(
        max_connections = connections.max(),
        per_ip = state.config.max_connections_per_ip,
        "connection caps"
    );
    let app = app_router(state);
    let addr = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let https = tls.is_some();
    let mut server = serve(
        listener,
        app,
        Listening {
            tls,
            connections,
            header_timeout,
        },
        handle.clone(),
    );
    tracing::info!(%addr, https, backend = ?store.backend(), "converger listening");

    let mut served = tokio::select! {
        () = shutdown.cancelled() => None,
        ended = &mut server => Some(ended),
    };
    if served.is_none() {
        tracing::info!(
            delay_secs = delay.as_secs(),
            "shutting down: /ready answers 503"
        );
        tokio::time::sleep(delay).await;
    }

    tracing::info!(
        timeout_secs = timeout.as_secs(),
        "closing the listener and sockets; waiting for requests and deliveries in flight"
    );
    let deadline = Instant::now() + timeout;
    stop.cancel();
    handle.graceful_shutdown(Some(timeout));
    // Upgraded sockets and delivery attempts outlive their HTTP connections: they are
    // waited for on the tracker.
    tasks.close();
    let drained = tokio::time::timeout_at(deadline, async {
        if served.is_none() {
            served = Some((&mut server).await);
        }
        tasks.wait().await;
    })
    .await
    .is_ok();
    if !drained {
        tracing::warn!(
            tasks = tasks.len(),
            connections = handle.connection_count(),
            "shutdown deadline reached: abandoning what is left"
        );
        abort.cancel();
        handle.shutdown();
        server.abort();
        if tokio::time::timeout(RELEASE_GRACE, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(remaining = tasks.len(), "tasks still running at exit");
        }
    }
    beat_stop.cancel();
    if tokio::time::timeout(RELEASE_GRACE, heartbeat)
        .await
        .is_err()
    {
        tracing::warn!("the node registry was not told this node stopped; its row ages out");
    }
    store.close().await;
    tracing::info!("converger stopped");
    match served {
        Some(Ok(Err(e))) => Err(e).context("server failed"),
        Some(Err(e)) if e.is_panic() => Err(anyhow::anyhow!("the server task panicked")),
        _ => Ok(()),
    }
}

/// The whole HTTP application: the REST edge ([`http::router`]) around the other two,
/// the socket endpoints and the admin panel, whose paths join the OpenAPI document.
pub fn app_router(state: AppState) -> axum::Router {
    // The admin API sits behind the admin guard, so it is kept apart from the REST API.
    let (admin_api, admin_doc) = OpenApiRouter::new()
        .nest("/admin/api", crate::admin::api_router())
        .split_for_parts();
    let (sockets, sockets_doc) = crate::realtime::router(&state.config).split_for_parts();
    let mut edges_doc = admin_doc;
    edges_doc.merge(sockets_doc);
    let edges = sockets.merge(crate::admin::router(state.clone(), admin_api));
    http::router(state, edges, edges_doc)
}

/// Runs `chore` every `interval` on `tasks` until `stop`.
fn every(
    tasks: &TaskTracker,
    stop: &CancellationToken,
    interval: Duration,
    chore: impl Fn() + Send + 'static,
) {
    let stop = stop.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(interval) => chore(),
            }
        }
    });
}

/// How a node serves its listener.
struct Listening {
    tls: Option<RustlsConfig>,
    connections: Arc<ConnectionLimits>,
    /// For a request's head, and for HTTP/1 the wait for the next request.
    header_timeout: Duration,
}

/// Serves `app` on `listener`, through TLS when configured, until `handle` says
/// otherwise. Plain and TLS take one path, so shutdown treats them alike, and every
/// connection passes the connection caps and idle timer first ([`LimitAcceptor`]).
/// Connections carry the peer's address (`ConnectInfo<SocketAddr>`) for rate limits,
/// trusted proxies and the admin guard.
fn serve(
    listener: TcpListener,
    app: axum::Router,
    listening: Listening,
    handle: axum_server::Handle<SocketAddr>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let Listening {
        tls,
        connections,
        header_timeout,
    } = listening;
    let make_service = app.into_make_service_with_connect_info::<SocketAddr>();
    let mut server = axum_server::Server::from_listener(listener)
        .handle(handle)
        // Covers protocol detection and the first request's head, HTTP/2 included.
        .first_request_timeout(header_timeout);
    server
        .http_builder()
        .http1()
        .header_read_timeout(header_timeout);
    let limited = LimitAcceptor::new(connections, tls.is_none());
    match tls {
        Some(tls) => tokio::spawn(
            server
                .acceptor(RustlsAcceptor::new(tls).acceptor(limited))
                .serve(make_service),
        ),
        None => tokio::spawn(server.acceptor(limited).serve(make_service)),
    }
}
