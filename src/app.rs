//! Composition root: builds the store, PubSub, ingest and state once, serves, and
//! drains on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::adapters::Adapters;
use crate::admin::{AdminAccess, parse_cidrs};
use crate::auth::JwtKeys;
use crate::config::Config;
use crate::delivery::{DeliveryEngine, DeliverySettings, DeliveryWaker};
use crate::http::{self, state::AppState};
use crate::ingest::Ingestor;
use crate::pubsub::PubSub;
use crate::store::{Store, StoreOptions};

/// Events a slow subscriber may fall behind before it lags and resynchronises.
const PUBSUB_CAPACITY: usize = 1024;
/// How long shutdown waits for tracked tasks (sockets closing) before giving up.
/// How often the pruner runs when a retention is configured.
const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connects to the database named by the config and applies pending migrations.
///
/// # Errors
/// The database cannot be reached or migrated.
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
    Ok(store)
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
    match std::fs::read_to_string(&path) {
        Ok(secret) if !secret.trim().is_empty() => return Ok(secret.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let secret = random();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, secret.as_bytes())?;
    tracing::info!(path = %path.display(), "generated a JWT secret for this SQLite installation");
    Ok(secret.into_bytes())
}

/// Builds the application state over an open store. On PostgreSQL this starts the
/// PubSub's listener and notifier on the state's task tracker.
///
/// # Errors
/// The JWT secret cannot be read or created.
pub fn build_state(
    config: Config,
    store: Store,
    shutdown: CancellationToken,
) -> anyhow::Result<AppState> {
    let secret = jwt_secret(&config)?;
    let jwt = JwtKeys::new(&secret);
    let admin = AdminAccess::new(
        parse_cidrs(&config.admin_allowed_ips).map_err(anyhow::Error::msg)?,
        parse_cidrs(&config.trusted_proxies).map_err(anyhow::Error::msg)?,
        config.admin_password.clone(),
        &secret,
        config.public_url.starts_with("https://"),
    );
    let adapters = Adapters::new();
    let tasks = TaskTracker::new();
    let pubsub = PubSub::for_store(&store, PUBSUB_CAPACITY, &shutdown, &tasks);
    let waker = DeliveryWaker::default();
    let ingest = Ingestor::new(
        store.clone(),
        adapters.clone(),
        pubsub.clone(),
        waker.clone(),
    );
    Ok(AppState {
        limits: Arc::new(crate::http::limits::RateLimits::new(&config)),
        admin: Arc::new(admin),
        waker,
        config: Arc::new(config),
        store,
        adapters,
        pubsub,
        ingest,
        jwt,
        shutdown,
        tasks,
    })
}

/// Runs a node on an already-bound listener until `shutdown` is cancelled, then
/// finishes in-flight requests and closes the database.
///
/// # Errors
/// Invalid config, an unreachable database, or a failing listener.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Err(problems) = config.validate() {
        anyhow::bail!("invalid configuration:\n  {}", problems.join("\n  "));
    }
    let store = open_store(&config).await?;
    let state = build_state(config, store.clone(), shutdown.clone())?;
    let tasks = state.tasks.clone();
    if state.config.delivery_enabled {
        let settings = DeliverySettings {
            concurrency: state.config.delivery_concurrency,
            backoff_scale: state.config.delivery_backoff_scale,
            lease: Duration::from_secs(state.config.delivery_lease_secs),
            ..DeliverySettings::default()
        };
        let engine = DeliveryEngine::new(
            store.clone(),
            state.adapters.clone(),
            state.ingest.clone(),
            state.waker.clone(),
            settings,
        );
        tasks.spawn(engine.run(shutdown.clone(), tasks.clone()));
    }
    {
        let limits = state.limits.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(crate::http::limits::RETAIN_INTERVAL) => limits.retain_recent(),
                }
            }
        });
    }
    crate::metrics::install();
    {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(crate::metrics::UPKEEP_INTERVAL) => crate::metrics::upkeep(),
                }
            }
        });
    }
    if let Some(days) = state.config.prune_after_days {
        tasks.spawn(crate::delivery::run_pruner(
            store.clone(),
            Duration::from_secs(days * 86_400),
            PRUNE_INTERVAL,
            shutdown.clone(),
        ));
    }
    let app = http::router(state);
    tracing::info!(addr = %listener.local_addr()?, backend = ?store.backend(), "converger listening");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
    .context("server failed")?;
    // Upgraded sockets outlive their HTTP connection: wait for them to close.
    tasks.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(remaining = tasks.len(), "tasks still running at shutdown");
    }
    store.close().await;
    tracing::info!("converger stopped");
    Ok(())
}
