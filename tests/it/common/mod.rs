//! The integration-test harness: a real server on a random port over a fresh database
//! per test (SQLite temp file, or a PostgreSQL database created for the test and
//! dropped afterwards, also when the test fails).

#![allow(dead_code)]

pub mod longpoll;
pub mod node;
pub mod proxy;
pub mod sink;
pub mod socket;

use std::time::Duration;

use converger::Config;
use converger::auth::{JwtKeys, generate_api_key};
use converger::domain::TenantId;
use converger::store::Store;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Where `CONVERGER_TEST_DATABASE_URL` points: a PostgreSQL server whose user may
/// create databases. Read when the tests are compiled (build.rs sets the
/// `postgres_tests` cfg) and again when they run.
pub const PG_URL_VAR: &str = "CONVERGER_TEST_DATABASE_URL";

/// Loopback networks, opened to outbound delivery where tests run local receivers.
pub const LOOPBACK: &str = "127.0.0.0/8,::1/128";

/// The JWT secret of every test server, so tests can mint tokens of their own.
pub const JWT_SECRET: &str = "integration-test-jwt-secret-0123456789abcdef";

/// The key encrypting channel secrets on every test server and node (base64 of
/// `integration-test-secret-key-0123`), so that both backends run encrypted.
pub const SECRET_KEY: &str = "aW50ZWdyYXRpb24tdGVzdC1zZWNyZXQta2V5LTAxMjM=";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server of the `postgres` variants, if the variable names one.
pub fn postgres_url() -> Option<String> {
    std::env::var(PG_URL_VAR).ok().filter(|s| !s.is_empty())
}

/// Generates a `sqlite` test for each async fn taking a `Backend`, and a `postgres`
/// one when the tests were compiled with `CONVERGER_TEST_DATABASE_URL` set. Without
/// it the `postgres` variants do not exist, and the one test
/// [`postgres_variants_not_run_set_CONVERGER_TEST_DATABASE_URL`] says so in its name.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(crate::common::Backend::Sqlite).await;
            }

            #[cfg(postgres_tests)]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(crate::common::Backend::Postgres).await;
            }
        }
    )*};
}
pub(crate) use both_backends;

/// Like [`both_backends!`] for tests of what only PostgreSQL does (several nodes on
/// one database, LISTEN/NOTIFY): the `postgres` variant alone, called with
/// `Backend::Postgres`.
macro_rules! postgres_only {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[cfg(postgres_tests)]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(crate::common::Backend::Postgres).await;
            }

            // Keeps the test and its helpers compiled, and free of dead-code
            // warnings, when the variant is not generated.
            #[cfg(not(postgres_tests))]
            #[allow(dead_code)]
            fn postgres() {
                let _ = super::$name;
            }
        }
    )*};
}
pub(crate) use postgres_only;

/// Stands in for every `postgres` variant when the tests were compiled without
/// `CONVERGER_TEST_DATABASE_URL`, so that `cargo test` names what it did not run.
#[cfg(not(postgres_tests))]
#[allow(non_snake_case)]
#[test]
fn postgres_variants_not_run_set_CONVERGER_TEST_DATABASE_URL() {
    assert_eq!(
        postgres_url(),
        None,
        "{PG_URL_VAR} is set now but was not when the tests were compiled: rebuild with cargo"
    );
}

/// A database that exists for one test.
pub enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    /// A fresh database with one tenant, for tests that run `converger` processes
    /// over it: the database, its URL, a store on it and the tenant's API key.
    pub async fn with_tenant(backend: Backend) -> (Self, String, Store, String) {
        let (db, url) = TestDb::create(backend).await;
        let store = converger::app::open_store(&Config::new(url.clone()))
            .await
            .unwrap();
        let key = generate_api_key();
        store
            .insert_tenant("acme", &key.hash, &key.prefix)
            .await
            .unwrap();
        (db, url, store, key.key)
    }

    /// Creates a fresh database; returns it (dropped with the value) and its URL.
    pub async fn create(backend: Backend) -> (Self, String) {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("converger.db").display());
                (TestDb::Sqlite(dir), url)
            }
            Backend::Postgres => {
                let admin_url = postgres_url().unwrap_or_else(|| {
                    panic!("{PG_URL_VAR} was set when the tests were compiled but is unset now")
                });
                let name = format!("converger_test_{}", uuid::Uuid::now_v7().simple());
                let mut conn = connect_admin(&admin_url).await;
                sqlx::Executor::execute(
                    &mut conn,
                    sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")),
                )
                .await
                .expect("create test database");
                let mut url = url::Url::parse(&admin_url).expect("PostgreSQL URL");
                url.set_path(&name);
                (TestDb::Postgres { admin_url, name }, url.to_string())
            }
        }
    }
}

async fn connect_admin(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{PG_URL_VAR} is set but PostgreSQL is unreachable: {e}"))
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { admin_url, name } = self {
            let (admin_url, db) = (admin_url.clone(), name.clone());
            // Drop runs inside the test's runtime: do the async work on a thread of its own.
            let dropped = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let mut conn = connect_admin(&admin_url).await;
                    sqlx::Executor::execute(
                        &mut conn,
                        sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")),
                    )
                    .await
                    .map(|_| ())
                })
            })
            .join();
            if !matches!(dropped, Ok(Ok(()))) {
                eprintln!("could not drop test database {name}: {dropped:?}");
            }
        }
    }
}

/// A running server with one tenant.
pub struct TestApp {
    pub base: String,
    /// The server's database, for starting more nodes on it.
    pub database_url: String,
    pub backend: Backend,
    pub api_key: String,
    pub tenant_id: TenantId,
    /// A second handle on the server's database, for set-up and checks.
    pub store: Store,
    pub jwt: JwtKeys,
    /// Trusts the server's certificate when it serves TLS.
    pub http: reqwest::Client,
    /// PEM of the certificate the server presents, when it serves TLS
    /// (`Config::tls_cert`); `base` is then `https://...`.
    pub tls_cert_pem: Option<Vec<u8>>,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    // Last: dropped after the server has been told to stop.
    _db: TestDb,
}

/// Backoff scale of servers whose retries come in milliseconds: 30 s becomes 30 ms.
pub const FAST_RETRIES: f64 = 0.001;

impl TestApp {
    /// Starts a server on `127.0.0.1:0` over a fresh database and creates a tenant.
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// A server whose retries come in milliseconds ([`FAST_RETRIES`]) and whose
    /// channels' breakers open only after `breaker_failures` failures in a row, so
    /// that a test sees the retry schedule alone (`control.rs` tests the breaker).
    pub async fn with_fast_retries(backend: Backend, breaker_failures: u32) -> Self {
        Self::start_with(backend, |c| {
            c.delivery_backoff_scale = FAST_RETRIES;
            c.breaker_failures = breaker_failures;
        })
        .await
    }

    /// Like [`TestApp::start`], with config changes. With a TLS certificate configured
    /// the server speaks HTTPS, and the app's clients trust that certificate only.
    pub async fn start_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> Self {
        let (db, url) = TestDb::create(backend).await;
        let mut config = Config::new(url.clone());
        config.jwt_secret = Some(JWT_SECRET.into());
        config.secret_key = Some(SECRET_KEY.into());
        config.database_max_connections = 8;
        // Sinks and fake providers listen on loopback, which the egress policy closes
        // by default.
        config.egress_allow = converger::access::parse_cidrs(LOOPBACK).unwrap();
        configure(&mut config);
        let store = converger::app::open_store(&config)
            .await
            .expect("open store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let tls_cert_pem = config
            .tls_cert
            .as_ref()
            .map(|path| std::fs::read(path).expect("read the server certificate"));
        let scheme = if tls_cert_pem.is_some() {
            "https"
        } else {
            "http"
        };
        let base = format!("{scheme}://{}", listener.local_addr().expect("addr"));
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if let Some(pem) = &tls_cert_pem {
            let cert = reqwest::Certificate::from_pem(pem).expect("PEM certificate");
            http = http.tls_certs_only([cert]);
        }
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(converger::run(config, listener, shutdown.clone()));
        let mut app = TestApp {
            base,
            database_url: url,
            backend,
            api_key: String::new(),
            tenant_id: TenantId::new(),
            store,
            jwt: JwtKeys::new(JWT_SECRET.as_bytes()),
            http: http.build().expect("client"),
            tls_cert_pem,
            shutdown,
            server: Some(server),
            _db: db,
        };
        let (tenant_id, api_key) = app.create_tenant("acme").await;
        app.tenant_id = tenant_id;
        app.api_key = api_key;
        app.wait_ready().await;
        app
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.http.get(format!("{}/ready", self.base)).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server did not become ready");
    }

    /// Creates another tenant; returns its id and API key.
    pub async fn create_tenant(&self, name: &str) -> (TenantId, String) {
        let key = generate_api_key();
        let tenant = self
            .store
            .insert_tenant(name, &key.hash, &key.prefix)
            .await
            .expect("insert tenant");
        (tenant.id, key.key)
    }

    /// A request with no credentials.
    pub fn anon(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// A request with this app's tenant API key.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.with_key(&self.api_key, method, path)
    }

    /// A request with a given API key.
    pub fn with_key(&self, key: &str, method: Method, path: &str) -> RequestBuilder {
        self.anon(method, path).header("x-api-key", key)
    }

    /// A request with a bearer token.
    pub fn with_bearer(&self, token: &str, method: Method, path: &str) -> RequestBuilder {
        self.anon(method, path).bearer_auth(token)
    }

    /// Creates a channel with the tenant key; returns its JSON (`data`).
    pub async fn create_channel(&self, kind: &str, config: Value) -> Value {
        self.create_channel_as(&self.api_key, kind, config).await
    }

    /// Creates a channel with a given key.
    pub async fn create_channel_as(&self, key: &str, kind: &str, config: Value) -> Value {
        let resp = self
            .with_key(key, Method::POST, "/api/v1/channels")
            .json(&json!({"name": format!("{kind} channel"), "type": kind, "config": config}))
            .send()
            .await
            .expect("request");
        expect_data(resp, StatusCode::CREATED).await
    }

    /// A `websocket` channel, which delivers nothing: the simplest home for a conversation.
    pub async fn websocket_channel(&self) -> Value {
        self.create_channel("websocket", json!({})).await
    }

    /// Creates a conversation on a channel with the tenant key.
    pub async fn create_conversation(&self, channel_id: &str, external_id: Option<&str>) -> Value {
        let resp = self
            .req(Method::POST, "/api/v1/conversations")
            .json(&json!({"channel_id": channel_id, "external_id": external_id}))
            .send()
            .await
            .expect("request");
        expect_data(resp, StatusCode::CREATED).await
    }

    /// Posts an activity with the tenant key.
    pub async fn post_activity(&self, conversation_id: &str, body: Value) -> Response {
        self.req(
            Method::POST,
            &format!("/api/v1/conversations/{conversation_id}/activities"),
        )
        .json(&body)
        .send()
        .await
        .expect("request")
    }

    /// Every activity of a conversation, read with the tenant key.
    pub async fn activities(&self, conversation_id: &str) -> Vec<Value> {
        let resp = self
            .req(
                Method::GET,
                &format!("/api/v1/conversations/{conversation_id}/activities?limit=500"),
            )
            .send()
            .await
            .expect("request");
        expect_data(resp, StatusCode::OK)
            .await
            .as_array()
            .expect("array")
            .clone()
    }
}

impl TestApp {
    /// An outbound message of this app's tenant, for tests that call the store itself.
    pub fn append_of(
        &self,
        conversation_id: converger::domain::ConversationId,
        text: &str,
        idempotency_key: Option<&str>,
        targets: Vec<converger::domain::ChannelId>,
    ) -> converger::store::ActivityAppend {
        use converger::domain::{ActivityType, Direction, NewActivity};
        converger::store::ActivityAppend {
            tenant_id: self.tenant_id,
            conversation_id,
            activity: NewActivity {
                kind: ActivityType::Message,
                direction: Direction::Outbound,
                sender: "app".into(),
                text: Some(text.into()),
                attachments: json!([]),
                metadata: json!({}),
                idempotency_key: idempotency_key.map(str::to_owned),
            },
            targets,
            request_id: None,
        }
    }

    /// How many activities the database holds for a conversation, read past the API.
    pub async fn activities_count_direct(&self, conversation_id: &str) -> usize {
        self.store
            .list_activities(
                self.tenant_id,
                conversation_id.parse().expect("uuid"),
                0,
                10_000,
            )
            .await
            .expect("list")
            .len()
    }
}

impl TestApp {
    /// Sets a delivery's state past the API and the worker, for states the worker would
    /// take long to reach: `failed` after 5 attempts with `last_error = 'boom'`, or
    /// `delivered`. Either is final, so the worker leaves the row alone afterwards. As
    /// the worker does, the row gives up its head flag to the next pending delivery of
    /// its conversation and channel.
    pub async fn set_delivery_status_direct(&self, delivery_id: &str, status: &str) {
        const FAILED: &str = "UPDATE deliveries SET status = 'failed', head = FALSE, attempts = 5, \
             last_error = 'boom', next_attempt_at = NULL, locked_until = NULL WHERE id = $1";
        const DELIVERED: &str = "UPDATE deliveries SET status = 'delivered', head = FALSE, \
             attempts = 1, last_error = NULL, next_attempt_at = NULL, locked_until = NULL \
             WHERE id = $1";
        const PROMOTE: &str = "UPDATE deliveries SET head = TRUE WHERE id = (\
             SELECT n.id FROM deliveries d JOIN deliveries n ON n.conversation_id = d.conversation_id \
             AND n.channel_id = d.channel_id AND n.status = 'pending' \
             WHERE d.id = $1 ORDER BY n.seq LIMIT 1)";
        let sql = match status {
            "failed" => FAILED,
            "delivered" => DELIVERED,
            other => panic!("no direct update to status {other}"),
        };
        let id: converger::domain::DeliveryId = delivery_id.parse().expect("delivery id");
        let updated = match &self.store {
            Store::Sqlite { writer, .. } => {
                let mut tx = writer.begin().await.expect("begin");
                let n = sqlx::query(sql).bind(id).execute(&mut *tx).await;
                sqlx::query(PROMOTE)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .expect("promote");
                tx.commit().await.expect("commit");
                n.map(|r| r.rows_affected())
            }
            Store::Postgres(pool, _) => {
                let mut tx = pool.begin().await.expect("begin");
                let n = sqlx::query(sql).bind(id).execute(&mut *tx).await;
                sqlx::query(PROMOTE)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .expect("promote");
                tx.commit().await.expect("commit");
                n.map(|r| r.rows_affected())
            }
        }
        .expect("update delivery");
        assert_eq!(updated, 1, "delivery {delivery_id} not found");
    }
}

impl TestApp {
    /// Tells the server to shut down, without waiting.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shuts the server down and waits for it; panics if it failed.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.expect("server task").expect("server");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Asserts the status and returns the body's `data`.
#[track_caller]
pub fn expect_data(resp: Response, status: StatusCode) -> impl Future<Output = Value> {
    let caller = std::panic::Location::caller();
    async move {
        let got = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(got, status, "at {caller}: unexpected status, body {body}");
        body.get("data").cloned().unwrap_or(body)
    }
}

/// Asserts an error answer: status and `error.code`; returns the error object.
#[track_caller]
pub fn expect_error(resp: Response, status: StatusCode, code: &str) -> impl Future<Output = Value> {
    let caller = std::panic::Location::caller();
    let code = code.to_owned();
    async move {
        let got = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(got, status, "at {caller}: unexpected status, body {body}");
        assert_eq!(
            body["error"]["code"],
            code.as_str(),
            "at {caller}: body {body}"
        );
        assert!(
            body["error"]["message"].is_string(),
            "at {caller}: body {body}"
        );
        body["error"].clone()
    }
}

/// Polls `check` every 20 ms until it returns `Some`; panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A JSON string field as `&str`.
pub fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is not a string in {v}"))
}
